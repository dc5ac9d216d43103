//! Bounce details: the failed recipient, the status code and the Message-ID of the mail that
//! bounced, from `message/delivery-status` (RFC 3464), the returned headers, and — for MTAs
//! that send no DSN (qmail, old Exim) — the bounce text itself.

use super::auto::Headers;
use super::body::strip_angles;
use super::draft::Bounce;
use regex::Regex;
use std::sync::LazyLock;

static STATUS_IN_TEXT: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"\b([245]\.\d{1,3}\.\d{1,3})\b").expect("static regex"));
static ADDRESS_IN_TEXT: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"<?([A-Za-z0-9._%+=/!#$&'*?^`{|}~-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,})>?")
        .expect("static regex")
});
static MESSAGE_ID_LINE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?im)^\s*Message-I[dD]\s*:\s*(<[^>\s]+>|\S+@\S+)").expect("static regex")
});

/// The first status code in `text` (the whole match is group 1: `\b` has no width).
fn status_in(text: &str) -> Option<String> {
    STATUS_IN_TEXT.find(text).map(|m| m.as_str().to_string())
}

/// Fields of a delivery-status body: per-message block, then per-recipient blocks.
fn dsn_fields(text: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for line in text.lines() {
        if line.starts_with([' ', '\t']) {
            if let Some(last) = out.last_mut() {
                last.1.push(' ');
                last.1.push_str(line.trim());
            }
            continue;
        }
        if let Some((name, value)) = line.split_once(':') {
            out.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
        }
    }
    out
}

#[derive(Default)]
struct RecipientBlock {
    recipient: Option<String>,
    status: Option<String>,
    failed: bool,
}

/// `rfc822; user@example.com` → `user@example.com`.
fn address_value(v: &str) -> Option<String> {
    let v = v.split_once(';').map_or(v, |(_, a)| a);
    let v = strip_angles(v);
    (!v.is_empty()).then(|| v.to_string())
}

/// Builds the bounce details from the DSN parts, returned header blocks and the body text.
pub(crate) fn extract(
    delivery_status: &[String],
    returned_headers: &[String],
    body_text: &str,
    headers: &Headers,
) -> Bounce {
    // One block per recipient; prefer the first whose action is "failed".
    let mut blocks: Vec<RecipientBlock> = Vec::new();
    for dsn in delivery_status {
        let mut current = RecipientBlock::default();
        for (name, value) in dsn_fields(dsn) {
            match name.as_str() {
                "final-recipient" | "original-recipient" => {
                    if current.recipient.is_some() && (current.status.is_some() || current.failed) {
                        blocks.push(std::mem::take(&mut current));
                    }
                    if name == "final-recipient" || current.recipient.is_none() {
                        current.recipient = address_value(&value).or(current.recipient);
                    }
                }
                "status" => {
                    current.status = status_in(&value).or(current.status);
                }
                "action" => current.failed = value.to_ascii_lowercase().starts_with("failed"),
                _ => {}
            }
        }
        if current.recipient.is_some() || current.status.is_some() {
            blocks.push(current);
        }
    }
    let chosen = blocks
        .iter()
        .position(|b| b.failed)
        .or((!blocks.is_empty()).then_some(0))
        .map(|i| blocks.swap_remove(i))
        .unwrap_or_default();
    let mut recipient = chosen.recipient;
    let mut status = chosen.status;
    if recipient.is_none() {
        recipient = headers
            .first("x-failed-recipients")
            .and_then(|v| v.split(',').next().map(|v| strip_angles(v).to_string()))
            .filter(|v| !v.is_empty());
    }
    // Non-DSN bounces: the first address and status code of the bounce text.
    let (human, quoted) = split_returned_copy(body_text);
    if recipient.is_none() {
        // The match is group 1 with at most one `<` before and one `>` after it (neither is
        // in group 1's character classes), so no capture search is needed.
        recipient = ADDRESS_IN_TEXT
            .find_iter(human)
            .map(|m| {
                let a = m.as_str();
                let a = a.strip_prefix('<').unwrap_or(a);
                a.strip_suffix('>').unwrap_or(a).to_string()
            })
            .find(|a| {
                let l = a.to_ascii_lowercase();
                !l.starts_with("mailer-daemon") && !l.starts_with("postmaster")
            });
    }
    if status.is_none() {
        status = status_in(human);
    }
    let original_message_id = returned_headers
        .iter()
        .find_map(|h| {
            MESSAGE_ID_LINE
                .captures(h)
                .map(|c| strip_angles(&c[1]).to_string())
        })
        .or_else(|| {
            quoted.and_then(|q| {
                MESSAGE_ID_LINE
                    .captures(q)
                    .map(|c| strip_angles(&c[1]).to_string())
            })
        })
        .filter(|id| !id.is_empty());
    Bounce {
        original_message_id,
        recipient,
        status,
    }
}

/// Splits a bounce text into the MTA's explanation and the returned copy of the message
/// (after "Below this line is a copy of the message", "------ This is a copy of the
/// message", "Original message follows" and the like).
fn split_returned_copy(text: &str) -> (&str, Option<&str>) {
    static COPY_MARKER: LazyLock<Regex> = LazyLock::new(|| {
        Regex::new(r"(?i)(below this line is a copy of the message|this is a copy of the message|original message follows|returned message follows|undelivered message follows|--- original message ---|original message headers|message headers follow|------ ?this is a copy)")
            .expect("static regex")
    });
    match COPY_MARKER.find(text) {
        Some(m) => {
            let line_start = text[..m.start()].rfind('\n').map_or(0, |p| p + 1);
            let line_end = text[m.end()..]
                .find('\n')
                .map_or(text.len(), |p| m.end() + p);
            (&text[..line_start], Some(&text[line_end..]))
        }
        None => (text, None),
    }
}
