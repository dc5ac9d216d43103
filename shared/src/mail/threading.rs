//! Thread markers: the unforgeable ticket reference send-notifications stamps into outgoing mail,
//! and the checks the parser runs before it trusts one in a reply.
//!
//! A reference is `<ticket>.<16 hex>` where the hex is the first 8 bytes of
//! HMAC-SHA256(thread key, ticket). It travels in three places so that at least one survives the
//! customer's mail client and Exchange: the `[ref:<reference>]` body footer (text and HTML, quoted
//! back in replies), the `X-Mailbridge-Ref` header, and the Message-ID (`message_id_for`), which
//! replies carry in In-Reply-To/References. The subject carries the plain `[Ticket#<ticket>]` tag,
//! which anyone can type, so the parser trusts it last.

use hmac::{Hmac, Mac};
use regex::Regex;
use sha2::Sha256;
use std::borrow::Cow;
use std::sync::LazyLock;

/// Header that carries the reference on outgoing mail (Graph may drop custom headers; the footer
/// and Message-ID are the other carriers).
pub const REFERENCE_HEADER: &str = "X-Mailbridge-Ref";

/// Number of hex characters of the HMAC kept in a reference (64 bits).
const HMAC_HEX_LEN: usize = 16;

/// A ticket id we accept in a reference: what a helpdesk uses as ticket number (no dots, so the
/// reference splits unambiguously).
static TICKET_ID: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^[A-Za-z0-9_-]{1,64}$").expect("static regex"));

/// Reference candidates anywhere in text: `<ticket>.<16 hex>`.
static REFERENCE_IN_TEXT: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"([A-Za-z0-9_-]{1,64})\.([0-9a-fA-F]{16})\b").expect("static regex")
});

/// The footer marker `[ref:<reference>]`, tolerant of spaces mail clients insert.
static FOOTER_MARKER: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?i)\[\s*ref\s*:\s*([A-Za-z0-9_-]{1,64})\s*\.\s*([0-9a-f]{16})\s*\]")
        .expect("static regex")
});

fn hmac_hex(ticket: &str, key: &[u8]) -> String {
    // HMAC accepts keys of any length, so `new_from_slice` cannot fail.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(ticket.as_bytes());
    let tag = mac.finalize().into_bytes();
    hex::encode(&tag[..HMAC_HEX_LEN / 2])
}

/// The reference for `ticket` under `key`: `<ticket>.<16 hex of HMAC-SHA256(key, ticket)>`.
pub fn ticket_reference(ticket: &str, key: &[u8]) -> String {
    format!("{ticket}.{}", hmac_hex(ticket, key))
}

/// Checks a reference (`<ticket>.<hmac16>`) against `key`; returns the ticket when it is genuine.
/// The comparison is constant-time.
pub fn verify_reference(reference: &str, key: &[u8]) -> Option<String> {
    let (ticket, tag) = reference.trim().rsplit_once('.')?;
    if !TICKET_ID.is_match(ticket) || tag.len() != HMAC_HEX_LEN {
        return None;
    }
    let tag = hex::decode(tag.to_ascii_lowercase()).ok()?;
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(ticket.as_bytes());
    mac.verify_truncated_left(&tag).ok()?;
    Some(ticket.to_string())
}

/// The subject with the `[Ticket#<ticket>]` tag in front, unless the subject already carries it.
pub fn subject_with_ticket(subject: &str, ticket: &str) -> String {
    let tag = format!("[Ticket#{ticket}]");
    if subject.contains(&tag) {
        subject.to_string()
    } else if subject.trim().is_empty() {
        tag
    } else {
        format!("{tag} {}", subject.trim_start())
    }
}

/// The plain-text footer line carrying the reference (append it to the text body).
pub fn body_footer_text(reference: &str) -> String {
    format!("\n\n[ref:{reference}]\n")
}

/// The HTML footer carrying the reference (append it before `</body>` or at the end).
pub fn body_footer_html(reference: &str) -> String {
    format!("<div style=\"color:#9a9a9a;font-size:10px;margin-top:16px\">[ref:{reference}]</div>")
}

/// A fresh Message-ID embedding the reference, with angle brackets:
/// `<mb.<reference>.<random>@<domain>>`. Replies carry it back in In-Reply-To/References.
pub fn message_id_for(reference: &str, domain: &str) -> String {
    message_id_with_unique(
        reference,
        &uuid::Uuid::new_v4().simple().to_string(),
        domain,
    )
}

/// Like [`message_id_for`], but deterministic: `unique` (e.g. the notification id) makes the
/// Message-ID unique, so a retried send reuses the same Message-ID.
pub fn message_id_with_unique(reference: &str, unique: &str, domain: &str) -> String {
    let unique: String = unique
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
        .collect();
    format!("<mb.{reference}.{unique}@{domain}>")
}

/// The first genuine ticket reference in `text` (a footer `[ref:...]` marker), if any.
pub fn find_footer_marker(text: &str, key: &[u8]) -> Option<String> {
    if !contains_ref(text) {
        return None;
    }
    FOOTER_MARKER.captures_iter(text).find_map(|c| {
        let reference = format!("{}.{}", &c[1], &c[2]);
        verify_reference(&reference, key)
    })
}

/// `text` without the genuine footer markers in it (quoted from our notifications), so that the
/// helpdesk does not store them and mail them on to everyone the ticket's answers reach. A line
/// that holds nothing but the marker (and quote prefixes, spaces) goes as a whole; elsewhere the
/// marker alone. A marker that does not verify under `key` is the sender's text and stays.
pub fn strip_footer_markers<'t>(text: &'t str, key: &[u8]) -> Cow<'t, str> {
    if !contains_ref(text) {
        return Cow::Borrowed(text);
    }
    let mut cuts: Vec<(usize, usize)> = Vec::new();
    for c in FOOTER_MARKER.captures_iter(text) {
        let reference = format!("{}.{}", &c[1], &c[2]);
        if verify_reference(&reference, key).is_none() {
            continue;
        }
        let whole = c.get(0).expect("group 0 is the match");
        let line_start = text[..whole.start()].rfind('\n').map_or(0, |nl| nl + 1);
        let line_end = text[whole.end()..]
            .find('\n')
            .map_or(text.len(), |nl| whole.end() + nl + 1);
        let only_marker = text[line_start..whole.start()]
            .chars()
            .chain(text[whole.end()..line_end].chars())
            .all(|ch| ch == '>' || ch.is_whitespace());
        let cut = if only_marker {
            (line_start, line_end)
        } else {
            (whole.start(), whole.end())
        };
        match cuts.last_mut() {
            Some(last) if cut.0 < last.1 => last.1 = last.1.max(cut.1),
            _ => cuts.push(cut),
        }
    }
    if cuts.is_empty() {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len());
    let mut from = 0;
    for (start, end) in cuts {
        out.push_str(&text[from..start]);
        from = end;
    }
    out.push_str(&text[from..]);
    Cow::Owned(out)
}

/// The first genuine reference embedded in a header value or Message-ID (`X-Mailbridge-Ref`,
/// `mb.<reference>.<unique>@domain`).
pub fn find_reference_in_id(id: &str, key: &[u8]) -> Option<String> {
    if !may_hold_reference(id.as_bytes()) {
        return None;
    }
    REFERENCE_IN_TEXT.captures_iter(id).find_map(|c| {
        let reference = format!("{}.{}", &c[1], &c[2]);
        verify_reference(&reference, key)
    })
}

/// Whether `text` holds a `[`, then optional whitespace, then "ref" in any case: the start of
/// every [`FOOTER_MARKER`] match (`\[\s*ref`; no non-ASCII character folds into "ref", and the
/// regex's Unicode `\s` is `char::is_whitespace`). `[` is rare in text, so the SIMD search
/// for it skips almost everything.
fn contains_ref(text: &str) -> bool {
    memchr::memchr_iter(b'[', text.as_bytes()).any(|open| {
        text[open + 1..]
            .trim_start()
            .as_bytes()
            .get(..3)
            .is_some_and(|word| word.eq_ignore_ascii_case(b"ref"))
    })
}

/// Cheap necessary condition for a `REFERENCE_IN_TEXT` match: some `.` preceded by a ticket
/// character and followed by 16 hex digits that are not followed by an ASCII word character
/// (`\b`). Whole returned header blocks of bounces pass through here, and most hold no
/// candidate at all, so the regex (and the HMAC per candidate) is skipped.
fn may_hold_reference(text: &[u8]) -> bool {
    let ticket_char = |b: u8| b.is_ascii_alphanumeric() || b == b'_' || b == b'-';
    for dot in memchr::memchr_iter(b'.', text) {
        if dot == 0 || !ticket_char(text[dot - 1]) {
            continue;
        }
        let Some(tag) = text.get(dot + 1..dot + 17) else {
            return false;
        };
        if tag.iter().all(u8::is_ascii_hexdigit)
            && !text
                .get(dot + 17)
                .is_some_and(|&b| b.is_ascii_alphanumeric() || b == b'_')
        {
            return true;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &[u8] = b"thread-key-for-tests";

    #[test]
    fn reference_has_ticket_and_sixteen_hex_and_verifies() {
        let r = ticket_reference("4711", KEY);
        let (ticket, tag) = r.split_once('.').unwrap();
        assert_eq!(ticket, "4711");
        assert_eq!(tag.len(), 16);
        assert!(tag.chars().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(verify_reference(&r, KEY).as_deref(), Some("4711"));
    }

    #[test]
    fn forged_or_foreign_references_are_rejected() {
        let r = ticket_reference("4711", KEY);
        assert_eq!(verify_reference(&r, b"other key"), None);
        let forged = r.replace("4711", "4712");
        assert_eq!(verify_reference(&forged, KEY), None);
        assert_eq!(verify_reference("4711.0000000000000000", KEY), None);
        assert_eq!(verify_reference("garbage", KEY), None);
    }

    #[test]
    fn footer_marker_is_found_in_quoted_reply_text() {
        let r = ticket_reference("88", KEY);
        let reply = format!(
            "Thanks!\n\n> Your ticket was updated.\n> {}",
            body_footer_text(&r)
        );
        assert_eq!(find_footer_marker(&reply, KEY).as_deref(), Some("88"));
        let html = format!("<p>hi</p><blockquote>{}</blockquote>", body_footer_html(&r));
        assert_eq!(find_footer_marker(&html, KEY).as_deref(), Some("88"));
    }

    #[test]
    fn genuine_markers_leave_the_text_and_forged_ones_stay() {
        let r = ticket_reference("88", KEY);
        let reply = format!("Thanks!\n\n> Your ticket was updated.\n> [ref:{r}]\n>\n");
        assert_eq!(
            strip_footer_markers(&reply, KEY),
            "Thanks!\n\n> Your ticket was updated.\n>\n"
        );
        let inline = format!("see [ ref: {} ] above", r.replace('.', " . "));
        assert_eq!(strip_footer_markers(&inline, KEY), "see  above");
        let at_end = format!("Thanks\n[ref:{r}]");
        assert_eq!(strip_footer_markers(&at_end, KEY), "Thanks\n");
        let forged = "Please attach this.\n[ref:4711.deadbeefdeadbeef]\n";
        assert!(matches!(
            strip_footer_markers(forged, KEY),
            Cow::Borrowed(t) if t == forged
        ));
        let twice = format!("[ref:{r}] [ref:{r}]\nrest");
        assert_eq!(strip_footer_markers(&twice, KEY), " \nrest");
    }

    #[test]
    fn message_id_embeds_a_verifiable_reference() {
        let r = ticket_reference("123", KEY);
        let id = message_id_for(&r, "mail.example.com");
        assert!(id.starts_with("<mb.123.") && id.ends_with("@mail.example.com>"));
        assert_eq!(find_reference_in_id(&id, KEY).as_deref(), Some("123"));
        assert_ne!(id, message_id_for(&r, "mail.example.com"));
        assert_eq!(
            message_id_with_unique(&r, "n-1", "d"),
            message_id_with_unique(&r, "n-1", "d")
        );
    }

    /// The pre-checks never rule out a text their regex matches (crafted texts and the
    /// fixture mails, whole and in parts).
    #[test]
    fn pre_checks_never_reject_a_regex_match() {
        let reference = ticket_reference("4711", KEY);
        let crafted = [
            format!("[ref:{reference}]"),
            format!("x [ \u{2003}REF :  {} ]", reference.replace('.', " . ")),
            format!("[\nRef:{reference}]"),
            format!("<mb.{reference}.abc@example.com>"),
            reference.clone(),
            "a.0123456789abcdef".to_string(),
            "a.0123456789abcdefg".to_string(),
            "a.0123456789abcde".to_string(),
            ".0123456789abcdef x-y.0123456789ABCDEF".to_string(),
            "[re".to_string(),
            "[".to_string(),
        ];
        let mut matches = (0, 0);
        for text in crafted.into_iter().chain(crate::mail::test_texts()) {
            if FOOTER_MARKER.is_match(&text) {
                matches.0 += 1;
                assert!(contains_ref(&text), "{text:?}");
            }
            if REFERENCE_IN_TEXT.is_match(&text) {
                matches.1 += 1;
                assert!(may_hold_reference(text.as_bytes()), "{text:?}");
            }
        }
        assert!(matches.0 >= 3 && matches.1 >= 5, "{matches:?}");
        assert!(!contains_ref("[re") && !contains_ref("ref: no bracket"));
        assert!(!may_hold_reference(b"a.0123456789abcdefg mail.example.com"));
    }

    #[test]
    fn subject_gets_the_tag_once() {
        assert_eq!(subject_with_ticket("Printer", "5"), "[Ticket#5] Printer");
        assert_eq!(
            subject_with_ticket("RE: [Ticket#5] Printer", "5"),
            "RE: [Ticket#5] Printer"
        );
        assert_eq!(subject_with_ticket("", "5"), "[Ticket#5]");
    }
}
