//! Raw mail → ticket payload pieces: the ticket draft (from the shared parser) and the
//! attachments with their content up to the cap.
//!
//! [`parse_draft`] is the one place the MIME → draft conversion is called, so swapping the
//! parser is a one-line change.

use base64::Engine as _;
use mailbridge::mail::{MailAddress, TicketDraft};
use mailbridge::ticket_sink::TicketAttachment;

use crate::dedupe::{self, HeaderField};

/// What the parser needs besides the bytes.
#[derive(Clone, Debug, Default)]
pub struct ParseContext {
    /// HMAC key of the thread markers (from `MAILBRIDGE_THREAD_KEY_SECRET`), if configured.
    pub thread_key: Option<Vec<u8>>,
}

/// Turn raw bytes into the ticket draft (`mailbridge::mail::parse`), or say why it cannot be
/// parsed. The mailbox's own address counts as "own mail" for loop detection; `subject_patterns`
/// are the mailbox helpdesk's own ticket tags (e.g. `[rtname #123]`), tried after `[Ticket#N]`.
pub fn parse_draft(
    raw: &[u8],
    own_address: &str,
    subject_patterns: &[regex::Regex],
    context: &ParseContext,
) -> Result<TicketDraft, String> {
    let mut options = mailbridge::mail::ParseOptions {
        thread_key: context.thread_key.clone(),
        own_addresses: vec![own_address.to_string()],
        ..Default::default()
    };
    options
        .subject_ticket_patterns
        .extend(subject_patterns.iter().cloned());
    mailbridge::mail::parse(raw, &options).map_err(|e| e.to_string())
}

/// [`parse_draft`] and the decoded content of each attachment, from one parse (what the poller
/// posts; parsing twice cost a second pass and a second peak of memory).
pub fn parse_mail(
    raw: &[u8],
    own_address: &str,
    subject_patterns: &[regex::Regex],
    context: &ParseContext,
) -> Result<mailbridge::mail::ParsedMail, String> {
    let mut options = mailbridge::mail::ParseOptions {
        thread_key: context.thread_key.clone(),
        own_addresses: vec![own_address.to_string()],
        ..Default::default()
    };
    options
        .subject_ticket_patterns
        .extend(subject_patterns.iter().cloned());
    mailbridge::mail::parse_with_attachments(raw, &options).map_err(|e| e.to_string())
}

/// A best-effort draft from header fields alone (oversize or unparseable mail).
pub fn draft_from_headers(fields: &[HeaderField], note: &str) -> TicketDraft {
    let get = |name| dedupe::header(fields, name).map(str::to_string);
    let address = |value: &str| -> MailAddress {
        let address = match (value.rfind('<'), value.rfind('>')) {
            (Some(start), Some(end)) if start < end => value[start + 1..end].trim().to_string(),
            _ => value.trim().to_string(),
        };
        let name = value
            .find('<')
            .map(|i| value[..i].trim().trim_matches('"').to_string())
            .filter(|n| !n.is_empty());
        MailAddress { name, address }
    };
    let list = |value: Option<String>| -> Vec<MailAddress> {
        value
            .map(|v| {
                v.split(',')
                    .filter(|s| s.contains('@'))
                    .map(address)
                    .collect()
            })
            .unwrap_or_default()
    };
    let date = get("date").and_then(|d| {
        chrono::DateTime::parse_from_rfc2822(d.trim())
            .ok()
            .map(|d| d.to_rfc3339())
    });
    TicketDraft {
        message_id: dedupe::message_id(fields),
        subject: get("subject").unwrap_or_default(),
        from: get("from").map(|f| address(&f)),
        to: list(get("to")),
        cc: list(get("cc")),
        reply_to: list(get("reply-to")),
        date,
        in_reply_to: get("in-reply-to").map(|v| v.trim().trim_matches(['<', '>']).to_string()),
        references: get("references")
            .map(|v| {
                v.split_whitespace()
                    .map(|r| r.trim_matches(['<', '>']).to_string())
                    .collect()
            })
            .unwrap_or_default(),
        body_text: note.to_string(),
        reply_text: note.to_string(),
        ..Default::default()
    }
}

/// Attachment contents for the draft's attachments (`contents`: the decoded bytes from the same
/// parse, in the order of `draft.attachments`), base64 while the running total stays under
/// `cap` (decoded bytes); beyond it metadata only with the reason.
pub fn attachments_with_content(
    draft: &TicketDraft,
    contents: Vec<Vec<u8>>,
    cap: u64,
) -> Vec<TicketAttachment> {
    let listed: Vec<TicketAttachment> = draft
        .attachments
        .iter()
        .map(|a| TicketAttachment {
            filename: a.filename.clone(),
            content_type: a.content_type.clone(),
            size: a.size,
            inline: a.inline,
            content_id: a.content_id.clone(),
            content_base64: None,
            omitted_reason: None,
        })
        .collect();
    if listed.is_empty() {
        return listed;
    }
    let total_wanted: u64 = listed.iter().map(|a| a.size).sum();
    // The contents come from the same parse as the draft, in the order of its list, so that
    // files the parser takes out of other parts (winmail.dat/TNEF, uuencode) carry their bytes.
    let contents = (contents.len() == listed.len()).then_some(contents);
    let Some(contents) = contents else {
        return listed
            .into_iter()
            .map(|mut a| {
                a.omitted_reason = Some("content could not be extracted".into());
                a
            })
            .collect();
    };
    let mut budget = cap;
    let mut out = Vec::with_capacity(listed.len());
    for (mut attachment, content) in listed.into_iter().zip(contents) {
        if attachment.size > budget {
            attachment.omitted_reason = Some(format!(
                "attachment content over the {cap}-byte cap per ticket (attachments total {total_wanted} bytes); metadata only"
            ));
            out.push(attachment);
            continue;
        }
        if content.len() as u64 == attachment.size {
            budget -= attachment.size;
            attachment.content_base64 =
                Some(base64::engine::general_purpose::STANDARD.encode(&content));
        } else {
            attachment.omitted_reason =
                Some("content could not be located in the MIME structure".into());
        }
        out.push(attachment);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAIL: &str = "From: Ann <ann@example.com>\r\nTo: helpdesk@example.com\r\nSubject: Printer\r\nMessage-ID: <p1@example.com>\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nIt is broken.\r\n--b\r\nContent-Type: application/pdf; name=\"a.pdf\"\r\nContent-Disposition: attachment; filename=\"a.pdf\"\r\nContent-Transfer-Encoding: base64\r\n\r\nJVBERi0xLjQK\r\n--b\r\nContent-Type: application/octet-stream; name=\"big.bin\"\r\nContent-Disposition: attachment; filename=\"big.bin\"\r\nContent-Transfer-Encoding: base64\r\n\r\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\r\n--b--\r\n";

    #[test]
    fn draft_and_attachments_under_the_cap_carry_content() {
        let draft = parse_draft(
            MAIL.as_bytes(),
            "helpdesk@example.com",
            &[],
            &ParseContext::default(),
        )
        .unwrap();
        assert_eq!(draft.subject, "Printer");
        assert_eq!(draft.message_id.as_deref(), Some("p1@example.com"));
        let parsed = parse_mail(
            MAIL.as_bytes(),
            "helpdesk@example.com",
            &[],
            &ParseContext::default(),
        )
        .unwrap();
        assert_eq!(parsed.draft, draft, "one parse gives the same draft");
        let attachments = attachments_with_content(&draft, parsed.attachment_contents, 20);
        assert_eq!(attachments.len(), 2, "{attachments:?}");
        assert_eq!(attachments[0].filename.as_deref(), Some("a.pdf"));
        assert_eq!(
            attachments[0].content_base64.as_deref(),
            Some("JVBERi0xLjQK")
        );
        assert!(attachments[1].content_base64.is_none());
        assert!(
            attachments[1]
                .omitted_reason
                .as_deref()
                .unwrap()
                .contains("cap")
        );
    }

    #[test]
    fn files_inside_a_winmail_dat_carry_their_content() {
        let raw = include_bytes!("../../../tests/fixtures/mail/401-tnef-outlook-two-files.eml");
        let parsed = parse_mail(
            raw,
            "helpdesk@mailbridge.test",
            &[],
            &ParseContext::default(),
        )
        .unwrap();
        let attachments =
            attachments_with_content(&parsed.draft, parsed.attachment_contents, 1_000_000);
        let names: Vec<_> = attachments.iter().map(|a| a.filename.as_deref()).collect();
        assert_eq!(names, [Some("AUTHORS"), Some("README")]);
        let authors = base64::engine::general_purpose::STANDARD
            .decode(attachments[0].content_base64.as_deref().unwrap())
            .unwrap();
        assert_eq!(authors.len(), 244);
        assert!(authors.starts_with(b"\n                              Authors of tnef"));
        assert!(attachments.iter().all(|a| a.omitted_reason.is_none()));
    }

    #[test]
    fn header_only_draft_keeps_sender_and_subject() {
        let (fields, _) = dedupe::split_headers(b"From: \"Bob B\" <bob@example.com>\r\nSubject: Huge\r\nMessage-ID: <h@x>\r\nDate: Sat, 28 Nov 2026 10:00:00 +0000\r\n\r\n");
        let draft = draft_from_headers(&fields, "note");
        let from = draft.from.unwrap();
        assert_eq!(from.address, "bob@example.com");
        assert_eq!(from.name.as_deref(), Some("Bob B"));
        assert_eq!(draft.subject, "Huge");
        assert_eq!(draft.message_id.as_deref(), Some("h@x"));
        assert_eq!(draft.body_text, "note");
        assert!(draft.date.unwrap().starts_with("2026-11-28T10:00:00"));
    }
}
