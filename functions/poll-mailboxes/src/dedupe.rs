//! Dedupe keys: which mails are "the same mail".
//!
//! Senders do reuse Message-IDs (broken mailers, templates), so a Message-ID alone is not enough:
//! the key is the Message-ID **plus a content hash** (From, To, Cc, Subject, Date and the body,
//! but not trace headers like `Received`, so the same mail delivered twice by two routes is one
//! mail). A mail without a Message-ID is keyed by the hash of its raw bytes. Keys are scoped to
//! the mailbox. The key doubles as the ticket API `Idempotency-Key`.

use sha2::{Digest as _, Sha256};

/// The header fields that make up the content hash, besides the body.
const CONTENT_HEADERS: &[&str] = &["from", "to", "cc", "subject", "date"];

/// One unfolded header field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeaderField {
    /// Lower-case name.
    pub name: String,
    /// Unfolded raw value (not RFC 2047-decoded), trimmed.
    pub value: String,
}

/// Split a raw message into its unfolded header fields and the offset where the body starts.
/// Tolerates LF and CRLF; stops at the first empty line (or the end).
pub fn split_headers(raw: &[u8]) -> (Vec<HeaderField>, usize) {
    let mut fields: Vec<HeaderField> = Vec::new();
    let mut pos = 0;
    while pos < raw.len() {
        let end = raw[pos..]
            .iter()
            .position(|&b| b == b'\n')
            .map(|i| pos + i + 1)
            .unwrap_or(raw.len());
        let line = &raw[pos..end];
        let trimmed = trim_eol(line);
        if trimmed.is_empty() {
            return (fields, end);
        }
        if matches!(trimmed[0], b' ' | b'\t') {
            if let Some(last) = fields.last_mut() {
                last.value.push(' ');
                last.value.push_str(String::from_utf8_lossy(trimmed).trim());
            }
        } else if let Some(colon) = trimmed.iter().position(|&b| b == b':') {
            let name = String::from_utf8_lossy(&trimmed[..colon])
                .trim()
                .to_ascii_lowercase();
            let value = String::from_utf8_lossy(&trimmed[colon + 1..])
                .trim()
                .to_string();
            fields.push(HeaderField { name, value });
        } else if fields.is_empty() {
            // Not a header at all (e.g. an mbox "From " line or garbage): keep scanning.
        }
        pos = end;
    }
    (fields, raw.len())
}

fn trim_eol(line: &[u8]) -> &[u8] {
    let mut end = line.len();
    while end > 0 && matches!(line[end - 1], b'\n' | b'\r') {
        end -= 1;
    }
    &line[..end]
}

/// The first value of a header field.
pub fn header<'a>(fields: &'a [HeaderField], name: &str) -> Option<&'a str> {
    fields
        .iter()
        .find(|f| f.name == name)
        .map(|f| f.value.as_str())
}

/// The Message-ID without angle brackets, if the mail has a non-empty one.
pub fn message_id(fields: &[HeaderField]) -> Option<String> {
    let value = header(fields, "message-id")?;
    let id = value.trim().trim_start_matches('<');
    let id = id.split('>').next().unwrap_or("").trim();
    (!id.is_empty()).then(|| id.to_string())
}

/// A computed dedupe key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DedupeKey {
    /// 64 hex characters: the `Idempotency-Key` and the item key suffix.
    pub hash: String,
    /// The Message-ID it was derived from, if any.
    pub message_id: Option<String>,
}

impl DedupeKey {
    /// The state table partition key: `mail#<mailbox>#<hash>`.
    pub fn item_key(&self, mailbox: &str) -> String {
        format!("mail#{mailbox}#{}", self.hash)
    }
}

/// Hash the body so that the same text with LF or CRLF line ends, with or without trailing
/// blank lines, is the same body: without its CRs and its trailing line ends. In place, piece by
/// piece between CRs (no copy of a body of many megabytes).
fn hash_normalised_body(hasher: &mut Sha256, body: &[u8]) {
    let end = body
        .iter()
        .rposition(|&b| b != b'\r' && b != b'\n')
        .map_or(0, |last| last + 1);
    for piece in body[..end].split(|&b| b == b'\r') {
        hasher.update(piece);
    }
}

/// Key for a mail whose whole raw message was read.
pub fn key_for_raw(mailbox: &str, raw: &[u8]) -> DedupeKey {
    let (fields, body_start) = split_headers(raw);
    let mut hasher = Sha256::new();
    hasher.update(b"mailbridge-dedupe-v1\0");
    hasher.update(mailbox.as_bytes());
    hasher.update(b"\0");
    match message_id(&fields) {
        Some(id) => {
            hasher.update(b"mid\0");
            hasher.update(id.as_bytes());
            hasher.update(b"\0");
            for name in CONTENT_HEADERS {
                hasher.update(name.as_bytes());
                hasher.update(b":");
                for field in fields.iter().filter(|f| f.name == *name) {
                    hasher.update(field.value.as_bytes());
                    hasher.update(b"\n");
                }
            }
            hasher.update(b"\0");
            hash_normalised_body(&mut hasher, &raw[body_start.min(raw.len())..]);
            DedupeKey {
                hash: hex::encode(hasher.finalize()),
                message_id: Some(id),
            }
        }
        None => {
            hasher.update(b"raw\0");
            hasher.update(raw);
            DedupeKey {
                hash: hex::encode(hasher.finalize()),
                message_id: None,
            }
        }
    }
}

/// Key for an oversize mail of which only the header block (and the size) was read.
pub fn key_for_header_only(mailbox: &str, header_block: &[u8], size: u64) -> DedupeKey {
    let (fields, _) = split_headers(header_block);
    let mut hasher = Sha256::new();
    hasher.update(b"mailbridge-dedupe-v1\0");
    hasher.update(mailbox.as_bytes());
    hasher.update(b"\0header-only\0");
    hasher.update(size.to_string().as_bytes());
    hasher.update(b"\0");
    let message_id = message_id(&fields);
    match &message_id {
        Some(id) => {
            hasher.update(id.as_bytes());
            for name in CONTENT_HEADERS {
                for field in fields.iter().filter(|f| f.name == *name) {
                    hasher.update(field.value.as_bytes());
                    hasher.update(b"\n");
                }
            }
        }
        None => hasher.update(header_block),
    }
    DedupeKey {
        hash: hex::encode(hasher.finalize()),
        message_id,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAIL: &[u8] = b"Received: from a by b\r\nMessage-ID: <abc@x>\r\nFrom: A <a@x>\r\nSubject: Hi\r\n there\r\n\r\nBody\r\n";

    #[test]
    fn headers_unfold_and_body_offset_is_found() {
        let (fields, start) = split_headers(MAIL);
        assert_eq!(header(&fields, "subject"), Some("Hi there"));
        assert_eq!(message_id(&fields).as_deref(), Some("abc@x"));
        assert_eq!(&MAIL[start..], b"Body\r\n");
    }

    #[test]
    fn same_content_via_another_route_is_the_same_mail() {
        let other_route = [b"Received: from c by d\r\n".as_slice(), MAIL].concat();
        assert_eq!(key_for_raw("m", MAIL), key_for_raw("m", &other_route));
        let lf = String::from_utf8_lossy(MAIL).replace("\r\n", "\n");
        assert_eq!(key_for_raw("m", MAIL), key_for_raw("m", lf.as_bytes()));
    }

    #[test]
    fn reused_message_id_with_other_content_is_another_mail() {
        let other = String::from_utf8_lossy(MAIL).replace("Body", "Other body");
        assert_ne!(key_for_raw("m", MAIL), key_for_raw("m", other.as_bytes()));
    }

    #[test]
    fn keys_are_scoped_to_the_mailbox() {
        assert_ne!(key_for_raw("a", MAIL), key_for_raw("b", MAIL));
        assert_eq!(
            key_for_raw("a", MAIL).item_key("a").len(),
            "mail#a#".len() + 64
        );
    }

    /// Keys are stored (dedupe records) and sent (`Idempotency-Key`): the same mail must keep
    /// its key across versions, or mail ticketed before an upgrade is ticketed again after it.
    #[test]
    fn keys_stay_what_they_were() {
        let crlf_trailing = [MAIL, b"\r\n\r\n".as_slice()].concat();
        let bare_cr =
            b"Message-ID: <cr@x>\r\nFrom: a@x\r\n\r\nLine\rwith a bare CR\r\n\n\r".as_slice();
        let keys: Vec<String> = [MAIL, crlf_trailing.as_slice(), bare_cr]
            .iter()
            .map(|raw| key_for_raw("m", raw).hash)
            .collect();
        assert_eq!(
            keys,
            [
                "bccb0da95ee5b0ef05817a278e4e0e80b21b491d7f2a3f8376ecf24784658766",
                "bccb0da95ee5b0ef05817a278e4e0e80b21b491d7f2a3f8376ecf24784658766",
                "77246f6214d59a3caddbdf29239d559ab674b244d18ab9e5b7154c1daefb4676",
            ]
        );
    }

    #[test]
    fn without_message_id_the_raw_bytes_decide() {
        let a = b"From: a@x\r\n\r\nBody\r\n";
        let b = b"Received: x\r\nFrom: a@x\r\n\r\nBody\r\n";
        assert_eq!(key_for_raw("m", a).message_id, None);
        assert_ne!(key_for_raw("m", a), key_for_raw("m", b));
        assert_eq!(key_for_raw("m", a), key_for_raw("m", a));
    }
}
