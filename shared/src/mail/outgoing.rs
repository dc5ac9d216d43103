//! Outgoing raw messages: what a helpdesk hands `mailbridge sendmail` and send-notifications
//! passes to Graph's MIME `sendMail` as it is.
//!
//! [`read_outgoing`] checks that the bytes are an RFC 5322 message (a header section of
//! `Name: value` fields, then the body) and reads what sending needs from the header: the From
//! address, the recipients (To, Cc, Bcc), the Message-ID and the subject. The MIME decoding is
//! mail-parser's; only the field syntax of the header section is checked here, because
//! mail-parser reads any bytes as *some* message.
//!
//! [`stamp_reference`] adds the signed thread marker: the `X-Mailbridge-Ref` header always, and
//! the `[ref:...]` body footer only where appending bytes cannot break anything: a single
//! `text/plain` or `text/html` part in 7bit/8bit (identity) transfer encoding with an
//! ASCII-compatible charset. A multipart message (attachments, alternatives, `multipart/signed`),
//! a quoted-printable or base64 body and a UTF-16 body keep their bytes: re-encoding them would
//! invalidate signatures and risks changing what the helpdesk wrote. The header and the
//! helpdesk's own Message-ID (which replies carry in In-Reply-To) are carriers enough.

use mail_parser::{HeaderName, MessageParser, MimeHeaders as _};

/// What the header of an outgoing message says.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OutgoingHeaders {
    /// The address of the first `From:` mailbox.
    pub from: Option<String>,
    /// The display name of the first `From:` mailbox.
    pub from_name: Option<String>,
    /// Every address in To, Cc and Bcc, in order (duplicates kept).
    pub recipients: Vec<String>,
    /// Whether the message has a `Bcc:` field (Graph sends to it and drops it).
    pub has_bcc: bool,
    /// The Message-ID without angle brackets.
    pub message_id: Option<String>,
    /// The decoded subject.
    pub subject: Option<String>,
    /// Where the body starts (the byte after the blank line), or the length when there is none.
    pub body_offset: usize,
}

/// Why bytes are not a message that can be sent.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum OutgoingMessageError {
    /// Nothing, or only blank lines.
    #[error("the message is empty")]
    Empty,
    /// A line of the header section is neither a `Name: value` field nor a folded continuation.
    #[error(
        "header line {line} is not a header field (`Name: value`) nor a folded continuation: {text:?}; a message must start with its header fields, then a blank line, then the body"
    )]
    BadHeaderLine {
        /// 1-based line number.
        line: usize,
        /// The start of the line (at most 60 characters).
        text: String,
    },
    /// No header field the message needs could be read.
    #[error("the message has no header fields mail-parser can read")]
    Unreadable,
}

/// Check the header section's syntax and read the sending facts.
pub fn read_outgoing(raw: &[u8]) -> Result<OutgoingHeaders, OutgoingMessageError> {
    let body_offset = check_header_section(raw)?;
    let message = MessageParser::new()
        .parse_headers(raw)
        .ok_or(OutgoingMessageError::Unreadable)?;
    let first_from = message.from().and_then(|a| a.first());
    let addresses = |field: Option<&mail_parser::Address>| -> Vec<String> {
        field
            .map(|a| {
                a.iter()
                    .filter_map(|a| a.address())
                    .map(|a| a.trim().to_owned())
                    .filter(|a| !a.is_empty())
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut recipients = addresses(message.to());
    recipients.extend(addresses(message.cc()));
    recipients.extend(addresses(message.bcc()));
    Ok(OutgoingHeaders {
        from: first_from
            .and_then(|a| a.address())
            .map(|a| a.trim().to_owned()),
        from_name: first_from
            .and_then(|a| a.name())
            .map(|n| n.trim().to_owned())
            .filter(|n| !n.is_empty()),
        recipients,
        has_bcc: message.header(HeaderName::Bcc).is_some(),
        message_id: message.message_id().map(str::to_owned),
        subject: message.subject().map(str::to_owned),
        body_offset,
    })
}

/// The header section must be `Name: value` fields (with folded continuation lines) up to a
/// blank line or the end. Returns the body's offset.
fn check_header_section(raw: &[u8]) -> Result<usize, OutgoingMessageError> {
    if raw.iter().all(|b| b.is_ascii_whitespace()) {
        return Err(OutgoingMessageError::Empty);
    }
    let mut offset = 0;
    let mut line_no = 0;
    while offset < raw.len() {
        let end = memchr::memchr(b'\n', &raw[offset..]).map_or(raw.len(), |i| offset + i + 1);
        let line = &raw[offset..end];
        line_no += 1;
        let content = line.strip_suffix(b"\n").unwrap_or(line);
        let content = content.strip_suffix(b"\r").unwrap_or(content);
        if content.is_empty() {
            return Ok(end);
        }
        let folded = matches!(content[0], b' ' | b'\t');
        let field = content
            .iter()
            .position(|&b| b == b':')
            .is_some_and(|colon| {
                colon > 0 && content[..colon].iter().all(|b| (33..=126).contains(b))
            });
        if !(field || (folded && line_no > 1)) {
            let text: String = String::from_utf8_lossy(content).chars().take(60).collect();
            return Err(OutgoingMessageError::BadHeaderLine {
                line: line_no,
                text,
            });
        }
        offset = end;
    }
    Ok(raw.len())
}

/// A message with the thread marker added.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stamped {
    /// The message to send.
    pub raw: Vec<u8>,
    /// Whether the `[ref:...]` footer went into the body (else only the header).
    pub footer: bool,
}

/// Add `X-Mailbridge-Ref: <reference>` at the top of the header and, where safe (see the module
/// documentation), the `[ref:<reference>]` footer at the end of the body (before `</body>` in
/// HTML). `raw` must have passed [`read_outgoing`].
pub fn stamp_reference(raw: &[u8], reference: &str) -> Stamped {
    let eol: &[u8] = if raw.windows(2).any(|w| w == b"\r\n") {
        b"\r\n"
    } else {
        b"\n"
    };
    let header = format!("{}: {reference}", super::threading::REFERENCE_HEADER);
    let mut out = Vec::with_capacity(raw.len() + 200);
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(eol);
    let Some((body_start, body_end, html)) = footer_slot(raw) else {
        out.extend_from_slice(raw);
        return Stamped {
            raw: out,
            footer: false,
        };
    };
    let body = &raw[body_start..body_end];
    let insert_at = if html {
        let lower = body.to_ascii_lowercase();
        memchr::memmem::rfind(&lower, b"</body>").map_or(body_end, |i| body_start + i)
    } else {
        body_end
    };
    let footer = if html {
        super::threading::body_footer_html(reference).into_bytes()
    } else {
        let text = super::threading::body_footer_text(reference);
        let text = if eol == b"\r\n" {
            text.replace('\n', "\r\n")
        } else {
            text
        };
        text.into_bytes()
    };
    out.extend_from_slice(&raw[..insert_at]);
    out.extend_from_slice(&footer);
    out.extend_from_slice(&raw[insert_at..]);
    Stamped {
        raw: out,
        footer: true,
    }
}

/// The body range of a single text part the footer may be appended to, and whether it is HTML.
fn footer_slot(raw: &[u8]) -> Option<(usize, usize, bool)> {
    let message = MessageParser::new().parse(raw)?;
    if message.parts.len() != 1 {
        return None;
    }
    let part = message.root_part();
    let html = match part.content_type() {
        None => false,
        Some(ct) => {
            let subtype = ct.subtype().unwrap_or_default();
            if !ct.ctype().eq_ignore_ascii_case("text") {
                return None;
            }
            if subtype.eq_ignore_ascii_case("html") {
                true
            } else if subtype.eq_ignore_ascii_case("plain") {
                false
            } else {
                return None;
            }
        }
    };
    let charset_ok = part
        .content_type()
        .and_then(|ct| ct.attribute("charset"))
        .is_none_or(|c| {
            let c = c.to_ascii_lowercase();
            !(c.starts_with("utf-16")
                || c.starts_with("utf-32")
                || c.starts_with("utf-7")
                || c.starts_with("iso-2022")
                || c.starts_with("ucs"))
        });
    let identity_encoding = message
        .header_raw(HeaderName::ContentTransferEncoding)
        .is_none_or(|e| matches!(e.trim().to_ascii_lowercase().as_str(), "7bit" | "8bit"));
    if !(charset_ok && identity_encoding) {
        return None;
    }
    let start = part.raw_body_offset() as usize;
    let end = (part.raw_end_offset() as usize).min(raw.len());
    (start <= end).then_some((start, end, html))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PLAIN: &[u8] = b"From: Support <support@contoso.com>\nTo: a@example.com, \"B\" <b@example.com>\nCc: c@example.com\nBcc: hidden@example.com\nMessage-ID: <rt-1-2@contoso.com>\nIn-Reply-To: <orig@example.com>\nSubject: [contoso #12] Re: printer\n\nHello,\nfixed.\n";

    #[test]
    fn the_header_gives_sender_recipients_message_id_and_subject() {
        let h = read_outgoing(PLAIN).unwrap();
        assert_eq!(h.from.as_deref(), Some("support@contoso.com"));
        assert_eq!(h.from_name.as_deref(), Some("Support"));
        assert_eq!(
            h.recipients,
            [
                "a@example.com",
                "b@example.com",
                "c@example.com",
                "hidden@example.com"
            ]
        );
        assert!(h.has_bcc);
        assert_eq!(h.message_id.as_deref(), Some("rt-1-2@contoso.com"));
        assert_eq!(h.subject.as_deref(), Some("[contoso #12] Re: printer"));
        assert_eq!(&PLAIN[h.body_offset..], b"Hello,\nfixed.\n");
    }

    #[test]
    fn bytes_that_are_not_a_header_section_are_refused_with_the_line() {
        let err =
            read_outgoing(b"Hello there, this is no mail\nFrom: a@example.com\n\nx").unwrap_err();
        assert!(
            matches!(err, OutgoingMessageError::BadHeaderLine { line: 1, .. }),
            "{err}"
        );
        let err = read_outgoing(b"From: a@example.com\nnot a field\n\nx").unwrap_err();
        assert!(
            matches!(err, OutgoingMessageError::BadHeaderLine { line: 2, .. }),
            "{err}"
        );
        assert_eq!(
            read_outgoing(b"\n\n").unwrap_err(),
            OutgoingMessageError::Empty
        );
        // folded lines are fine, CRLF too
        let h = read_outgoing(b"From: a@example.com\r\nSubject: a\r\n  b\r\n\r\nx").unwrap();
        assert_eq!(h.subject.as_deref(), Some("a b"));
    }

    #[test]
    fn a_plain_single_part_gets_header_and_footer() {
        let s = stamp_reference(PLAIN, "12.0123456789abcdef");
        assert!(s.footer);
        let text = String::from_utf8(s.raw).unwrap();
        assert!(text.starts_with("X-Mailbridge-Ref: 12.0123456789abcdef\n"));
        assert!(
            text.ends_with("fixed.\n\n\n[ref:12.0123456789abcdef]\n"),
            "{text}"
        );
        // still a valid message with the same facts
        let h = read_outgoing(text.as_bytes()).unwrap();
        assert_eq!(h.message_id.as_deref(), Some("rt-1-2@contoso.com"));
    }

    #[test]
    fn html_gets_the_footer_before_the_closing_body_tag() {
        let raw = b"From: s@contoso.com\r\nTo: a@example.com\r\nContent-Type: text/html; charset=utf-8\r\n\r\n<html><body><p>Hi</p></BODY></html>\r\n";
        let s = stamp_reference(raw, "7.0123456789abcdef");
        let text = String::from_utf8(s.raw).unwrap();
        assert!(s.footer);
        assert!(
            text.contains("[ref:7.0123456789abcdef]</div></BODY></html>"),
            "{text}"
        );
        assert!(text.starts_with("X-Mailbridge-Ref: 7.0123456789abcdef\r\n"));
    }

    #[test]
    fn multipart_signed_quoted_printable_and_utf16_bodies_keep_their_bytes() {
        let multipart = b"From: s@contoso.com\nTo: a@example.com\nContent-Type: multipart/signed; boundary=b; protocol=\"application/pgp-signature\"\n\n--b\nContent-Type: text/plain\n\nsigned\n--b\nContent-Type: application/pgp-signature\n\nSIG\n--b--\n";
        let qp = b"From: s@contoso.com\nTo: a@example.com\nContent-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: quoted-printable\n\nGr=C3=BC=C3=9Fe\n";
        let utf16 = b"From: s@contoso.com\nTo: a@example.com\nContent-Type: text/plain; charset=utf-16le\n\nx\x00\n\x00";
        for raw in [&multipart[..], &qp[..], &utf16[..]] {
            let s = stamp_reference(raw, "1.0123456789abcdef");
            assert!(!s.footer);
            let header = b"X-Mailbridge-Ref: 1.0123456789abcdef\n";
            assert_eq!(&s.raw[..header.len()], header);
            assert_eq!(
                &s.raw[header.len()..],
                raw,
                "the message itself is unchanged"
            );
        }
    }
}
