//! What the poller hands a sink for each mail: [`TicketPayload`]. It is also the generic
//! webhook's JSON body, described by `shared/schemas/ticket-payload.schema.json`.

use serde::{Deserialize, Serialize};

use crate::mail::TicketDraft;

/// Schema identifier carried in every payload.
pub const TICKET_PAYLOAD_SCHEMA: &str = "mailbridge.ticket-payload/1";
/// The published JSON Schema of the payload (`shared/schemas/ticket-payload.schema.json`).
pub const TICKET_PAYLOAD_JSON_SCHEMA: &str =
    include_str!("../../schemas/ticket-payload.schema.json");
/// The published JSON Schema of the draft a payload carries (`ticket-draft.schema.json`).
pub const TICKET_DRAFT_JSON_SCHEMA: &str = include_str!("../../schemas/ticket-draft.schema.json");

/// One attachment in the payload: content inline (base64) when under the cap, metadata only beyond.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct TicketAttachment {
    /// Decoded file name, if any.
    pub filename: Option<String>,
    /// MIME type, e.g. `application/pdf`.
    pub content_type: String,
    /// Decoded size in bytes.
    pub size: u64,
    /// Shown inline in the body (e.g. a `cid:` image).
    pub inline: bool,
    /// `Content-ID` without angle brackets.
    pub content_id: Option<String>,
    /// Base64 content, or null when it was left out.
    pub content_base64: Option<String>,
    /// Why the content was left out (e.g. over the attachment cap).
    pub omitted_reason: Option<String>,
}

/// One mail, ready for the helpdesk. See `shared/schemas/ticket-payload.schema.json`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct TicketPayload {
    /// Always [`TICKET_PAYLOAD_SCHEMA`].
    pub schema: String,
    /// The mailbox name (configuration key) the mail came from.
    pub mailbox: String,
    /// The mailbox address.
    pub mailbox_address: String,
    /// When the mailbox received the mail: its IMAP INTERNALDATE (the poll time if the server
    /// gave none). The same on every attempt, so a retried delivery repeats its payload exactly.
    pub received_at: chrono::DateTime<chrono::Utc>,
    /// The dedupe key; equal to the `Idempotency-Key` header of the webhook.
    pub idempotency_key: String,
    /// The ticket draft (see `ticket-draft.schema.json`); a best-effort draft when parsing failed.
    pub draft: TicketDraft,
    /// Attachments with content up to the cap.
    pub attachments: Vec<TicketAttachment>,
    /// Set when the mail could not be fully read (unparseable, over the size cap): what happened.
    pub problem: Option<String>,
    /// The raw RFC 5322 message, base64, attached for problem mails when under the cap.
    pub raw_message_base64: Option<String>,
}

impl TicketPayload {
    /// The ticket this mail names (empty counts as none): the signed layers' `ticket_number`,
    /// else the subject's `subject_ticket_number`. Neither proves who sent the mail (anyone can
    /// type a subject tag; anyone forwarded a notification holds its marker): the RT and
    /// django-helpdesk sinks check the sender against the ticket's participants.
    pub fn named_ticket(&self) -> Option<&str> {
        fn nonempty(t: &Option<String>) -> Option<&str> {
            t.as_deref().map(str::trim).filter(|t| !t.is_empty())
        }
        nonempty(&self.draft.ticket_number).or_else(|| nonempty(&self.draft.subject_ticket_number))
    }

    /// The requestor: `From`, else the first `Reply-To` address; None when the mail names no one.
    pub fn requestor(&self) -> Option<&str> {
        self.draft
            .from
            .as_ref()
            .map(|a| a.address.as_str())
            .filter(|a| a.contains('@'))
            .or_else(|| {
                self.draft
                    .reply_to
                    .iter()
                    .map(|a| a.address.as_str())
                    .find(|a| a.contains('@'))
            })
    }

    /// The text for the helpdesk: the draft's text body, with the problem note in front (an
    /// unreadable or oversize mail) and a list of attachments whose content was left out.
    pub fn body_text_with_notes(&self) -> String {
        self.text_with_notes(&self.draft.body_text)
    }

    /// `body` (e.g. the draft's `reply_text`, for a reply) with the same notes around it as
    /// [`Self::body_text_with_notes`].
    pub fn text_with_notes(&self, body: &str) -> String {
        let mut text = String::new();
        if let Some(problem) = &self.problem {
            text.push_str("[mailbridge] ");
            text.push_str(problem);
            text.push_str("\n\n");
        }
        text.push_str(body);
        let omitted: Vec<String> = self
            .attachments
            .iter()
            .filter(|a| a.content_base64.is_none())
            .map(|a| {
                format!(
                    "- {} ({}, {} bytes): {}",
                    a.filename.as_deref().unwrap_or("(no name)"),
                    a.content_type,
                    a.size,
                    a.omitted_reason
                        .as_deref()
                        .unwrap_or("content not included")
                )
            })
            .collect();
        if !omitted.is_empty() {
            text.push_str("\n\n[mailbridge] attachments not included:\n");
            text.push_str(&omitted.join("\n"));
            text.push('\n');
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_fields_match_the_json_schema() {
        let schema: serde_json::Value = serde_json::from_str(TICKET_PAYLOAD_JSON_SCHEMA).unwrap();
        let payload = TicketPayload {
            schema: TICKET_PAYLOAD_SCHEMA.into(),
            mailbox: "m".into(),
            mailbox_address: "m@x".into(),
            received_at: chrono::Utc::now(),
            idempotency_key: "0".repeat(64),
            draft: TicketDraft::default(),
            attachments: vec![TicketAttachment {
                filename: None,
                content_type: "text/plain".into(),
                size: 1,
                inline: false,
                content_id: None,
                content_base64: None,
                omitted_reason: None,
            }],
            problem: None,
            raw_message_base64: None,
        };
        let value = serde_json::to_value(&payload).unwrap();
        let keys = |v: &serde_json::Value| {
            let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
            k.sort();
            k
        };
        let required = |v: &serde_json::Value| {
            let mut k: Vec<String> = v["required"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| s.as_str().unwrap().to_string())
                .collect();
            k.sort();
            k
        };
        assert_eq!(keys(&value), required(&schema));
        assert_eq!(keys(&schema["properties"]), required(&schema));
        let item_schema = &schema["properties"]["attachments"]["items"];
        assert_eq!(keys(&value["attachments"][0]), required(item_schema));
        assert_eq!(
            schema["properties"]["schema"]["const"],
            TICKET_PAYLOAD_SCHEMA
        );
    }

    #[test]
    fn omitted_attachments_and_problems_are_named_in_the_text() {
        let mut payload: TicketPayload = serde_json::from_value(serde_json::json!({
            "schema": TICKET_PAYLOAD_SCHEMA, "mailbox": "m", "mailbox_address": "m@x",
            "received_at": "2026-01-01T00:00:00Z", "idempotency_key": "k",
            "draft": serde_json::to_value(TicketDraft { body_text: "Hello".into(), ..Default::default() }).unwrap(),
            "attachments": [{"filename": "big.iso", "content_type": "application/octet-stream", "size": 99,
                "inline": false, "content_id": null, "content_base64": null, "omitted_reason": "over the cap"}],
            "problem": null, "raw_message_base64": null
        }))
        .unwrap();
        let text = payload.body_text_with_notes();
        assert!(text.starts_with("Hello"), "{text}");
        assert!(
            text.contains("big.iso (application/octet-stream, 99 bytes): over the cap"),
            "{text}"
        );
        payload.problem = Some("too big".into());
        assert!(
            payload
                .body_text_with_notes()
                .starts_with("[mailbridge] too big\n\nHello")
        );
    }
}
