//! Ticket threading for outgoing mail: when a notification carries `ticket_number`, stamp
//! `[Ticket#N]` into the subject, a signed reference `[ref:<ticket>.<hmac16>]` into a body footer,
//! the `X-Mailbridge-Ref` header, and a Message-ID embedding the reference (Graph lets sendMail
//! set `internetMessageId`: the message is a draft when sendMail creates it). Replies then thread
//! back through In-Reply-To/References, the footer or the subject, in that order of trust.
//!
//! Graph takes at most 5 custom headers per message and mailbridge's counts: when the
//! notification's own headers already use all five, `X-Mailbridge-Ref` is left out (the footer
//! and the Message-ID carry the reference) instead of the whole mail being refused.

use crate::graph::MessageExtras;
use crate::notification::{BodyType, Notification};
use crate::thread_key::ThreadKey;

/// The header carrying the signed reference.
pub const REF_HEADER: &str = crate::mail::threading::REFERENCE_HEADER;

/// What to change in the outgoing message for `n`. Without a ticket number only the
/// deterministic `internetMessageId` (see [`plain_message_id`]).
pub fn stamp(key: &ThreadKey, n: &Notification) -> MessageExtras {
    let domain = n
        .from
        .as_deref()
        .and_then(|a| a.rsplit_once('@').map(|(_, d)| d.to_owned()))
        .unwrap_or_else(|| "mailbridge.invalid".to_owned());
    let Some(ticket) = n.ticket_number.as_deref() else {
        return MessageExtras {
            internet_message_id: Some(plain_message_id(n.id(), &domain)),
            ..MessageExtras::default()
        };
    };
    use crate::mail::threading as t;
    let reference = t::ticket_reference(ticket, key.expose());
    let subject = t::subject_with_ticket(&n.subject, ticket);
    let body = match n.body.content_type {
        BodyType::Text => format!("{}{}", n.body.content, t::body_footer_text(&reference)),
        BodyType::Html => insert_html_footer(&n.body.content, &t::body_footer_html(&reference)),
    };
    let headers = if n.headers.len() < crate::notification::MAX_HEADERS {
        vec![(REF_HEADER.to_owned(), reference.clone())]
    } else {
        Vec::new()
    };
    MessageExtras {
        subject: Some(subject),
        body_content: Some(body),
        headers,
        // deterministic per notification: a retried send reuses the Message-ID
        internet_message_id: Some(t::message_id_with_unique(&reference, n.id(), &domain)),
    }
}

/// The Message-ID of a notification without a ticket: `<mb.n.<32 hex of SHA-256(id)>@domain>`.
/// Deterministic per notification id, so when a send must be repeated after an attempt whose
/// outcome is unknown (a crash after Graph's 202, a timeout), both copies carry the same
/// Message-ID and the receiving server or client can collapse them.
pub fn plain_message_id(notification_id: &str, domain: &str) -> String {
    use sha2::Digest as _;
    let digest = sha2::Sha256::digest(notification_id.as_bytes());
    let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
    format!("<mb.n.{hex}@{domain}>")
}

/// Put the footer before `</body>` when there is one, else append it.
fn insert_html_footer(html: &str, footer: &str) -> String {
    match html.to_ascii_lowercase().rfind("</body>") {
        Some(at) => format!("{}{}{}", &html[..at], footer, &html[at..]),
        None => format!("{html}{footer}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn notification(body_type: &str, content: &str) -> Notification {
        Notification::parse(
            &serde_json::json!({
                "version": 1, "account": "a", "from": "support@contoso.com",
                "to": [{"address": "c@example.com"}], "subject": "Update",
                "body": {"content_type": body_type, "content": content},
                "ticket_number": "4711"
            })
            .to_string(),
            "sqs-1",
        )
        .unwrap()
    }

    #[test]
    fn a_ticket_is_stamped_in_subject_footer_header_and_message_id() {
        let key = ThreadKey::new(b"k".to_vec());
        let extras = stamp(
            &key,
            &notification("html", "<html><body><p>x</p></body></html>"),
        );
        assert!(extras.subject.as_deref().unwrap().contains("[Ticket#4711]"));
        let (name, reference) = &extras.headers[0];
        assert_eq!(name, REF_HEADER);
        assert!(reference.starts_with("4711."));
        let body = extras.body_content.unwrap();
        assert!(body.contains(reference.as_str()));
        assert!(body.ends_with("</body></html>"));
        let mid = extras.internet_message_id.unwrap();
        assert!(mid.starts_with('<') && mid.ends_with('>') && mid.contains(reference.as_str()));
    }

    #[test]
    fn five_own_headers_leave_no_room_for_the_reference_header_but_footer_and_id_carry_it() {
        let mut n = notification("text", "x");
        for i in 0..crate::notification::MAX_HEADERS {
            n.headers.insert(format!("X-H{i}"), "v".into());
        }
        let extras = stamp(&ThreadKey::new(b"k".to_vec()), &n);
        assert!(extras.headers.is_empty());
        let reference = crate::mail::threading::ticket_reference("4711", b"k");
        assert!(extras.body_content.unwrap().contains(&reference));
        assert!(extras.internet_message_id.unwrap().contains(&reference));
    }

    #[test]
    fn the_key_secret_is_a_plain_string_of_at_least_16_bytes() {
        let key = ThreadKey::from_secret_value("0123456789abcdef-key").unwrap();
        assert_eq!(key.expose(), b"0123456789abcdef-key");
        assert!(ThreadKey::from_secret_value("short").is_err());
    }

    #[test]
    fn no_ticket_no_changes() {
        let mut n = notification("text", "x");
        n.ticket_number = None;
        let extras = stamp(&ThreadKey::new(b"k".to_vec()), &n);
        assert!(extras.subject.is_none() && extras.headers.is_empty());
        assert!(extras.body_content.is_none());
        // but a deterministic Message-ID, so a repeated send can be collapsed by receivers
        let again = stamp(&ThreadKey::new(b"k".to_vec()), &n);
        let mid = extras.internet_message_id.unwrap();
        assert_eq!(Some(mid.clone()), again.internet_message_id);
        assert!(mid.starts_with("<mb.n.") && mid.ends_with('>'), "{mid}");
    }
}
