//! Bounce details: the failed recipient, the status code and the Message-ID of the mail that
//! bounced, from `message/delivery-status` (RFC 3464), the returned headers, and — for MTAs
//! that send no DSN (qmail, old Exim) — the bounce text itself.

use super::auto::Headers;
use super::codec::strip_angles;
use super::draft::{Bounce, MailAddress};
use regex::Regex;
use std::borrow::Cow;
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

/// Fields of a delivery-status body: per-message block, then per-recipient blocks. Names are
/// trimmed but not case-folded (compare them with `eq_ignore_ascii_case`); a value is borrowed
/// unless a continuation line extends it.
fn dsn_fields(text: &str) -> Vec<(&str, Cow<'_, str>)> {
    let mut out: Vec<(&str, Cow<'_, str>)> = Vec::with_capacity(16);
    for line in text.lines() {
        if line.starts_with([' ', '\t']) {
            if let Some((_, value)) = out.last_mut() {
                let value = value.to_mut();
                value.push(' ');
                value.push_str(line.trim());
            }
            continue;
        }
        if let Some((name, value)) = line.split_once(':') {
            out.push((name.trim(), Cow::Borrowed(value.trim())));
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

/// The Message-ID of the first `Message-ID:` line in `text` (a header block or the quoted copy).
fn message_id_in(text: &str) -> Option<String> {
    // No match starts before that line: see `message_id_search_start`.
    let start = message_id_search_start(text)?;
    let line = MESSAGE_ID_LINE.find_at(text, start)?.as_str();
    // The capture group is what follows the colon (the name and the spaces hold none) up to
    // the match's end; `find` spares the capture engine, which cost more than the search.
    let (_, id) = line.split_once(':')?;
    Some(strip_angles(id).to_string())
}

/// Where [`MESSAGE_ID_LINE`] needs to start searching: the start of the first line that begins
/// with spaces and "Message-I" in any case, or `None` when no line does (then the regex cannot
/// match). Candidates are found by their "age-i" (no non-ASCII character folds into it), then
/// the line's start is checked with [`is_message_id_prefix`]. A match starting on an earlier
/// (blank) line, through `^\s*`, is found from this line's start too, with the same capture.
fn message_id_search_start(text: &str) -> Option<usize> {
    let bytes = text.as_bytes();
    memchr::memchr_iter(b'-', bytes).find_map(|dash| {
        if dash < 3
            || !bytes[dash - 3..dash].eq_ignore_ascii_case(b"age")
            || !bytes
                .get(dash + 1)
                .is_some_and(|b| b.eq_ignore_ascii_case(&b'i'))
        {
            return None;
        }
        let line_start = memchr::memrchr(b'\n', &bytes[..dash]).map_or(0, |nl| nl + 1);
        is_message_id_prefix(&text[line_start..dash - 3]).then_some(line_start)
    })
}

/// Whether the text before "age-I" on a line is what `^\s*(?i)Mess` matches: whitespace, then
/// "mess" in any case, where Unicode case folding also lets `ſ` (long s) stand for `s`.
fn is_message_id_prefix(before_age: &str) -> bool {
    let mut chars = before_age.trim_start().chars();
    "mess".chars().all(|wanted| {
        chars
            .next()
            .is_some_and(|c| c.to_ascii_lowercase() == wanted || (wanted == 's' && c == 'ſ'))
    }) && chars.next().is_none()
}

/// Builds the bounce details from the DSN parts, returned header blocks and the body text.
/// `addressees` are the bounce's own recipients (the sender of the mail that bounced): an
/// address of theirs in the bounce text is never the one that failed.
pub(crate) fn extract(
    delivery_status: &[String],
    returned_headers: &[String],
    body_text: &str,
    headers: &Headers,
    addressees: &[MailAddress],
) -> Bounce {
    // One block per recipient; prefer the first whose action is "failed".
    let mut blocks: Vec<RecipientBlock> = Vec::new();
    for dsn in delivery_status {
        let mut current = RecipientBlock::default();
        for (name, value) in dsn_fields(dsn) {
            let is_final = name.eq_ignore_ascii_case("final-recipient");
            if is_final || name.eq_ignore_ascii_case("original-recipient") {
                if current.recipient.is_some() && (current.status.is_some() || current.failed) {
                    blocks.push(std::mem::take(&mut current));
                }
                if is_final || current.recipient.is_none() {
                    current.recipient = address_value(&value).or(current.recipient);
                }
            } else if name.eq_ignore_ascii_case("status") {
                current.status = status_in(&value).or(current.status);
            } else if name.eq_ignore_ascii_case("action") {
                current.failed = value
                    .as_bytes()
                    .get(..6)
                    .is_some_and(|v| v.eq_ignore_ascii_case(b"failed"));
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
                !l.starts_with("mailer-daemon")
                    && !l.starts_with("postmaster")
                    && !addressees.iter().any(|t| t.address.eq_ignore_ascii_case(a))
            });
    }
    if status.is_none() {
        status = status_in(human);
    }
    let original_message_id = returned_headers
        .iter()
        .find_map(|h| message_id_in(h))
        .or_else(|| quoted.and_then(message_id_in))
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
    match find_copy_marker(text) {
        Some((start, end)) => {
            let line_start = text[..start].rfind('\n').map_or(0, |p| p + 1);
            let line_end = text[end..].find('\n').map_or(text.len(), |p| end + p);
            (&text[..line_start], Some(&text[line_end..]))
        }
        None => (text, None),
    }
}

static COPY_MARKER: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?i)(below this line is a copy of the message|this is a copy of the message|original message follows|returned message follows|undelivered message follows|--- original message ---|original message headers|message headers follow|------ ?this is a copy)")
        .expect("static regex")
});

/// Words every [`COPY_MARKER`] alternative holds, rarer in bounce texts than the words the
/// marker starts with ("this", "message" are everywhere; "following" too, hence "ge follow"
/// for "message follows" and "rs follow" for "headers follow"). Case-insensitive like the
/// marker, so the `ſ` that folds to `s` is covered in both.
static COPY_MARKER_WORDS: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?i)copy|ge follow|rs follow|original message").expect("static regex")
});

/// The span of the first [`COPY_MARKER`] match. A marker lies within one line, so only the
/// lines holding one of the [`COPY_MARKER_WORDS`] are searched for it.
fn find_copy_marker(text: &str) -> Option<(usize, usize)> {
    let mut from = 0;
    while let Some(word) = COPY_MARKER_WORDS.find_at(text, from) {
        let line_start = text[..word.start()].rfind('\n').map_or(0, |p| p + 1);
        let line_end = text[word.end()..]
            .find('\n')
            .map_or(text.len(), |p| word.end() + p);
        if let Some(m) = COPY_MARKER.find(&text[line_start..line_end]) {
            return Some((line_start + m.start(), line_start + m.end()));
        }
        from = line_end;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mail::test_texts;

    fn crafted() -> Vec<String> {
        [
            "Message-ID: <a@b.example>",
            "  message-id:\n <folded@b.example>",
            "\n\n \nMeſſage-Id: <long-s@x.example>",
            "X-Message-ID: <no@x>\nMessage-ID: <yes@x>",
            "h=from:message-id:date;\nMessage-Id: <after-dkim@x>",
            "Message-ID:   \nMessage-ID: <second@x>",
            "MESSAGE-ID : <upper@x> trailing",
            "Message-Id: bare@host more",
            "\r\nMessage-ID: <crlf@x>\r\n",
            "Message-ID: no-at-sign\n",
            "message-i",
            "-i",
            "Message-\u{130}D: <dotted-capital-i@x>",
            "Message-\u{131}d: <dotless-i@x>",
            "\u{212A}Message-ID: <kelvin@x>",
            "The following message follows.\n------ This is a copy of the message, including all the headers. ------\nx",
            "the following recipients\nReturned meſſage follows:\nx",
            "a\nMESSAGE HEADERS FOLLOW\n",
            "--- Original Message ---\n",
            "the original message was received\nOriginal message headers:\n",
            "Below this line is a copy of the message.\n",
            "------this is a copy\n",
            "copy\nfollow\noriginal message\n",
        ]
        .map(str::to_string)
        .to_vec()
    }

    /// `message_id_in` (a search started at the first plausible line, without the capture
    /// engine) answers what the capture of a search over the whole text answers.
    #[test]
    fn message_id_in_agrees_with_the_regex_capture() {
        let mut found = 0;
        for text in crafted().into_iter().chain(test_texts()) {
            let expected = MESSAGE_ID_LINE
                .captures(&text)
                .map(|c| strip_angles(&c[1]).to_string());
            found += usize::from(expected.is_some());
            assert_eq!(message_id_in(&text), expected, "{text:?}");
        }
        assert!(found > 100, "the texts hold Message-IDs ({found})");
        assert_eq!(
            message_id_in("Meſſage-Id: <long-s@x.example>").as_deref(),
            Some("long-s@x.example")
        );
    }

    /// `find_copy_marker` (the marker searched only on lines with one of its words) finds what
    /// the marker regex finds over the whole text.
    #[test]
    fn copy_marker_search_agrees_with_the_regex() {
        let mut found = 0;
        for text in crafted().into_iter().chain(test_texts()) {
            let expected = COPY_MARKER.find(&text).map(|m| (m.start(), m.end()));
            found += usize::from(expected.is_some());
            assert_eq!(find_copy_marker(&text), expected, "{text:?}");
        }
        assert!(found > 10, "the texts hold copy markers ({found})");
    }

    #[test]
    fn dsn_fields_are_borrowed_and_continued() {
        let fields = dsn_fields("Final-Recipient: rfc822;\n  a@b.example\nAction: failed\n");
        assert_eq!(fields[0].0, "Final-Recipient");
        assert_eq!(fields[0].1, "rfc822; a@b.example");
        assert!(matches!(fields[1].1, Cow::Borrowed("failed")));
    }
}
