//! A raw outgoing message too large for one Graph request, split for Graph's draft route: the
//! message without its largest attachments (small enough to create the draft from MIME), and
//! those attachments decoded, to be added to the draft one by one (a single `POST` each under
//! 3 MB, an upload session above).
//!
//! Only leaf parts that mail-parser counts as attachments are detached, largest first, until the
//! rest fits. Each is cut out of the raw bytes together with its boundary delimiter line; every
//! other byte (the header, the text parts, other attachments) stays as the helpdesk wrote it. A
//! multipart left without parts gets an empty `text/plain` part (an empty multipart is not
//! valid MIME). Signed or encrypted messages (`multipart/signed`, `application/pkcs7-mime`)
//! are refused: detaching a part would break the signature.

use mail_parser::{MessageParser, MimeHeaders as _, PartType};

/// One attachment taken out of the message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DetachedAttachment {
    /// File name (`attachment` when the part names none).
    pub name: String,
    /// `type/subtype`.
    pub content_type: String,
    /// Content-ID without angle brackets.
    pub content_id: Option<String>,
    /// Shown inline (`Content-Disposition: inline`).
    pub inline: bool,
    /// The decoded bytes.
    pub bytes: Vec<u8>,
}

/// The message that fits, and what was taken out of it.
#[derive(Clone, Debug)]
pub struct SplitMessage {
    /// The raw message without the detached parts.
    pub message: Vec<u8>,
    /// The detached attachments, in the order they appeared.
    pub attachments: Vec<DetachedAttachment>,
}

/// Why a message cannot be split to fit.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SplitError {
    /// Not a MIME message mail-parser can read.
    #[error("the message cannot be parsed as MIME")]
    Unparsable,
    /// A signed or encrypted message must go out byte for byte.
    #[error(
        "the message is signed or encrypted ({0}); taking attachments out would break it, and as a whole it is over Graph's request limit"
    )]
    Signed(String),
    /// Even without every attachment the message is too large for one request.
    #[error(
        "without its {detachable} attachment(s) the message is still {remaining} bytes; one Graph request carries at most {max} bytes of MIME"
    )]
    StillTooLarge {
        /// Attachments that could be taken out.
        detachable: usize,
        /// Size of what remains.
        remaining: usize,
        /// The limit.
        max: usize,
    },
}

/// Take attachments out of `raw`, largest first, until the rest is at most `max_message_bytes`.
pub fn split_for_request(raw: &[u8], max_message_bytes: usize) -> Result<SplitMessage, SplitError> {
    let message = MessageParser::default()
        .parse(raw)
        .ok_or(SplitError::Unparsable)?;
    if let Some(ct) = message.parts.first().and_then(|p| p.content_type()) {
        let full = format!(
            "{}/{}",
            ct.ctype().to_ascii_lowercase(),
            ct.subtype().unwrap_or_default().to_ascii_lowercase()
        );
        if matches!(
            full.as_str(),
            "multipart/signed"
                | "multipart/encrypted"
                | "application/pkcs7-mime"
                | "application/x-pkcs7-mime"
        ) {
            return Err(SplitError::Signed(full));
        }
    }
    // parent multipart of every part, and its boundary
    let mut parent = vec![None; message.parts.len()];
    for (i, part) in message.parts.iter().enumerate() {
        if let PartType::Multipart(children) = &part.body {
            for &c in children {
                if let Some(slot) = parent.get_mut(c as usize) {
                    *slot = Some(i);
                }
            }
        }
    }
    let boundary = |i: usize| -> Option<String> {
        message.parts[i]
            .content_type()
            .and_then(|ct| ct.attribute("boundary"))
            .map(str::to_owned)
    };
    // candidates: attachments directly inside a multipart, largest first
    let mut candidates: Vec<(usize, usize, std::ops::Range<usize>)> = Vec::new();
    for &id in &message.attachments {
        let id = id as usize;
        let part = &message.parts[id];
        if matches!(part.body, PartType::Multipart(_) | PartType::Message(_)) {
            continue;
        }
        let Some(p) = parent[id] else { continue };
        let Some(b) = boundary(p) else { continue };
        if let Some(range) = part_range(raw, part.offset_header as usize, &b) {
            candidates.push((id, p, range));
        }
    }
    candidates.sort_by_key(|(_, _, r)| std::cmp::Reverse(r.len()));
    let mut size = raw.len();
    let mut chosen = Vec::new();
    for candidate in &candidates {
        if size <= max_message_bytes {
            break;
        }
        size -= candidate.2.len();
        chosen.push(candidate.clone());
    }
    if size > max_message_bytes {
        return Err(SplitError::StillTooLarge {
            detachable: candidates.len(),
            remaining: size,
            max: max_message_bytes,
        });
    }
    // multiparts whose every child is detached keep an empty text part
    let mut emptied: Vec<usize> = Vec::new();
    for (_, p, _) in &chosen {
        if let PartType::Multipart(children) = &message.parts[*p].body
            && children
                .iter()
                .all(|c| chosen.iter().any(|(id, _, _)| *id == *c as usize))
            && !emptied.contains(p)
        {
            emptied.push(*p);
        }
    }
    let eol: &[u8] = if raw.windows(2).any(|w| w == b"\r\n") {
        b"\r\n"
    } else {
        b"\n"
    };
    chosen.sort_by_key(|(_, _, r)| r.start);
    let mut out = Vec::with_capacity(size + 128);
    let mut at = 0;
    let mut placeheld: Vec<usize> = Vec::new();
    for (_, p, range) in &chosen {
        out.extend_from_slice(&raw[at..range.start]);
        if emptied.contains(p) && !placeheld.contains(p) {
            placeheld.push(*p);
            let b = boundary(*p).unwrap_or_default();
            for line in [
                format!("--{b}").as_bytes(),
                b"Content-Type: text/plain; charset=us-ascii",
                b"",
                b"",
            ] {
                out.extend_from_slice(line);
                out.extend_from_slice(eol);
            }
        }
        at = range.end;
    }
    out.extend_from_slice(&raw[at..]);
    let mut by_position = chosen.clone();
    by_position.sort_by_key(|(id, _, _)| *id);
    let attachments = by_position
        .into_iter()
        .map(|(id, _, _)| {
            let part = &message.parts[id];
            DetachedAttachment {
                name: part
                    .attachment_name()
                    .filter(|n| !n.trim().is_empty())
                    .unwrap_or("attachment")
                    .to_owned(),
                content_type: part
                    .content_type()
                    .map(|ct| match ct.subtype() {
                        Some(sub) => format!("{}/{sub}", ct.ctype()),
                        None => ct.ctype().to_owned(),
                    })
                    .unwrap_or_else(|| "application/octet-stream".to_owned()),
                content_id: part
                    .content_id()
                    .map(|c| c.trim_matches(['<', '>']).to_owned()),
                inline: part.content_disposition().is_some_and(|d| d.is_inline()),
                bytes: part.contents().to_vec(),
            }
        })
        .collect();
    Ok(SplitMessage {
        message: out,
        attachments,
    })
}

/// The byte range of the part whose header starts at `header_start`, from its delimiter line
/// (`--boundary`) to the start of the next delimiter line (the closing one included there).
fn part_range(raw: &[u8], header_start: usize, boundary: &str) -> Option<std::ops::Range<usize>> {
    let delimiter = format!("--{boundary}");
    let delimiter = delimiter.as_bytes();
    let at_line_start = |p: usize| p == 0 || raw[p - 1] == b'\n';
    let is_delimiter = |p: usize| at_line_start(p) && raw[p..].starts_with(delimiter);
    let start = (0..header_start.min(raw.len()))
        .rev()
        .find(|&p| is_delimiter(p))?;
    let end = (header_start..raw.len()).find(|&p| is_delimiter(p))?;
    Some(start..end)
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;

    fn message(attachments: &[(&str, usize)]) -> Vec<u8> {
        let mut raw = String::from(
            "From: a@contoso.com\r\nTo: c@example.com\r\nSubject: logs\r\nMessage-ID: <m1@contoso.com>\r\nIn-Reply-To: <c1@example.com>\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b1\"\r\n\r\npreamble\r\n--b1\r\nContent-Type: text/plain\r\n\r\nSee attached.\r\n",
        );
        for (name, size) in attachments {
            let bytes: Vec<u8> = (0..*size).map(|i| (i % 251) as u8).collect();
            raw.push_str(&format!(
                "--b1\r\nContent-Type: application/octet-stream; name=\"{name}\"\r\nContent-Disposition: attachment; filename=\"{name}\"\r\nContent-Transfer-Encoding: base64\r\n\r\n"
            ));
            for line in base64::engine::general_purpose::STANDARD
                .encode(bytes)
                .as_bytes()
                .chunks(76)
            {
                raw.push_str(std::str::from_utf8(line).unwrap());
                raw.push_str("\r\n");
            }
        }
        raw.push_str("--b1--\r\n");
        raw.into_bytes()
    }

    #[test]
    fn the_largest_attachments_go_until_the_rest_fits_and_every_other_byte_stays() {
        let raw = message(&[
            ("small.txt", 1000),
            ("big.bin", 300_000),
            ("mid.bin", 100_000),
        ]);
        let split = split_for_request(&raw, 200_000).unwrap();
        assert_eq!(split.attachments.len(), 1);
        let a = &split.attachments[0];
        assert_eq!(a.name, "big.bin");
        assert_eq!(a.content_type, "application/octet-stream");
        assert_eq!(a.bytes.len(), 300_000);
        assert!(
            a.bytes
                .iter()
                .enumerate()
                .all(|(i, b)| *b == (i % 251) as u8)
        );
        assert!(split.message.len() <= 200_000);
        let rest = MessageParser::default().parse(&split.message).unwrap();
        assert_eq!(rest.message_id(), Some("m1@contoso.com"));
        assert_eq!(rest.in_reply_to().as_text(), Some("c1@example.com"));
        let names: Vec<_> = rest
            .attachments()
            .filter_map(|p| p.attachment_name())
            .collect();
        assert_eq!(names, ["small.txt", "mid.bin"]);
        assert_eq!(rest.body_text(0).as_deref(), Some("See attached."));
        // what remains is the original with the one part's bytes cut out
        let original = String::from_utf8(raw.clone()).unwrap();
        let kept = String::from_utf8(split.message).unwrap();
        let cut = original.len() - kept.len();
        assert!(cut > 400_000 && cut < 415_000, "{cut}");
        assert!(kept.ends_with("--b1--\r\n"));
    }

    #[test]
    fn a_message_that_fits_keeps_everything_and_one_that_cannot_is_refused_naming_sizes() {
        let raw = message(&[("a.bin", 1000)]);
        let split = split_for_request(&raw, 1_000_000).unwrap();
        assert!(split.attachments.is_empty());
        assert_eq!(split.message, raw);
        let err = split_for_request(&raw, 100).unwrap_err();
        assert!(
            matches!(
                err,
                SplitError::StillTooLarge {
                    detachable: 1,
                    max: 100,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn a_multipart_left_empty_gets_an_empty_text_part_and_signed_mail_is_refused() {
        let raw = b"From: a@contoso.com\nTo: c@example.com\nSubject: s\nContent-Type: multipart/mixed; boundary=x\n\n--x\nContent-Type: application/pdf; name=a.pdf\nContent-Disposition: attachment\nContent-Transfer-Encoding: base64\n\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\n--x--\n";
        let split = split_for_request(raw, 150).unwrap();
        assert_eq!(split.attachments[0].bytes, vec![0u8; 48]);
        let rest = MessageParser::default().parse(&split.message).unwrap();
        assert_eq!(rest.attachment_count(), 0);
        assert!(String::from_utf8_lossy(&split.message).contains("--x\nContent-Type: text/plain"));
        let signed = b"From: a@contoso.com\nTo: c@example.com\nContent-Type: multipart/signed; boundary=s; protocol=\"application/pkcs7-signature\"\n\n--s\nContent-Type: text/plain\n\nhi\n--s--\n";
        assert!(matches!(
            split_for_request(signed, 10),
            Err(SplitError::Signed(_))
        ));
    }
}
