//! The notification queue message: the public contract of send-notifications, and its validation.
//!
//! A producer puts one JSON document per SQS message, of one of two kinds ([`QueueMessage`]):
//! - a [`Notification`] (no `kind` field): the mail described field by field, sent with Graph's
//!   JSON `sendMail`; a file too large for a queue message travels as a reference to an S3
//!   object (`content_ref`), and a message over Graph's request limit goes through a draft;
//! - a [`MimeNotification`] (`"kind": "mime"`): a complete RFC 5322 message as a helpdesk wrote it
//!   (what `mailbridge sendmail` enqueues), inline in base64 or, when larger than a queue message
//!   may be, as a reference to an S3 object; sent with Graph's MIME `sendMail`, so every header
//!   the helpdesk set (Message-ID, In-Reply-To, References) reaches the recipient.
//!
//! `shared/schemas/notification.schema.json` is the same contract as a JSON Schema (a test checks
//! both agree on sample messages). Parsing is strict (unknown fields are refused) and validation
//! reports *every* problem, each naming the field (a JSON path such as `to[2].address`) and the
//! rule it breaks.
//!
//! # Implementation Notes
//! - Header injection: CR and LF are refused in the subject, display names, addresses, header
//!   names/values and attachment names/content ids. Graph builds the MIME itself, but the Graph
//!   stand-in and any future SMTP path would not, and a CR/LF in a subject is never intended.
//! - Size: what the queue message carries is bounded like one Graph request (about 4 MB):
//!   inline attachments at most 3 MiB of raw bytes in total (base64 inflates by 4/3), the
//!   request estimated and kept under [`MAX_REQUEST_BYTES`]. Attachments by `content_ref` are
//!   bounded only by Graph (150 MB each) and, when sent, by the mailbox's send size.

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};

/// The only message version this code understands.
pub const CURRENT_VERSION: u32 = 1;
/// At most this many recipients in `to` + `cc` + `bcc` (Exchange Online's per-message limit).
pub const MAX_RECIPIENTS: usize = 500;
/// Raw (decoded) bytes of all attachments together.
pub const MAX_ATTACHMENT_BYTES: usize = 3 * 1024 * 1024;

/// Graph's largest attachment (upload sessions take files "between 3 MB and 150 MB"): the
/// most a `content_ref` attachment may be. Here, not in `graph_draft`, because the queue-message
/// checks are built without the Graph client (the fuzz crate).
pub const GRAPH_MAX_ATTACHMENT_BYTES: usize = 150 * 1024 * 1024;
/// Estimated size of the Graph sendMail request built from a message.
pub const MAX_REQUEST_BYTES: usize = 4_000_000;
/// Subject length in characters.
pub const MAX_SUBJECT_CHARS: usize = 998;
/// Custom headers per message: Graph refuses a `sendMail` whose `internetMessageHeaders` has
/// more than 5 entries (`400 InvalidInternetMessageHeaderCollection`). mailbridge's own
/// `X-Mailbridge-Ref` counts too; it is left out (the reference still travels in the body
/// footer and the Message-ID) when the notification's headers already use all five.
pub const MAX_HEADERS: usize = 5;
/// The largest SQS message body (SQS's maximum, and moto's): a MIME notification whose raw
/// message does not fit inline goes by S3 reference.
pub const MAX_QUEUE_MESSAGE_BYTES: usize = 1024 * 1024;
/// The largest raw message a MIME notification may carry: 150 MB, the largest send size
/// Exchange Online allows a mailbox. Up to Graph's request limit (about 4 MB as base64) it goes
/// out with one MIME `sendMail`, above through a draft with its attachments uploaded; the
/// stack's own limit (`MAILBRIDGE_MAX_MESSAGE_BYTES`, Exchange's default 35 MB) parks larger ones.
pub const MAX_MIME_MESSAGE_BYTES: usize = 150 * 1024 * 1024;
/// Attachments per message.
pub const MAX_ATTACHMENTS: usize = 50;

/// One notification to send. Field names are the wire format (snake_case JSON).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Notification {
    /// Message format version; must be 1.
    pub version: u32,
    /// Idempotency key. When absent, the SQS message id is used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Name of the account secret whose delegated token sends the mail.
    pub account: String,
    /// Send as this (shared) mailbox via `/users/{from}/sendMail`; otherwise `/me/sendMail`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// Primary recipients.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub to: Vec<Recipient>,
    /// Carbon-copy recipients.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cc: Vec<Recipient>,
    /// Blind carbon-copy recipients.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub bcc: Vec<Recipient>,
    /// Where replies should go.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reply_to: Vec<Recipient>,
    /// Subject line (no CR/LF).
    pub subject: String,
    /// The body.
    pub body: Body,
    /// `low`, `normal` (default) or `high`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub importance: Option<Importance>,
    /// File attachments.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attachments: Vec<Attachment>,
    /// Extra internet message headers; names must start with `X-`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// Helpdesk ticket number: stamps `[Ticket#N]` and a signed reference so replies thread back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ticket_number: Option<String>,
    /// Keep a copy in Sent Items (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub save_to_sent_items: Option<bool>,
}

/// A mail address with an optional display name.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recipient {
    /// `user@example.com`.
    pub address: String,
    /// Display name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// The message body.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Body {
    /// `text` or `html`.
    pub content_type: BodyType,
    /// The content.
    pub content: String,
}

/// Body content type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BodyType {
    /// Plain text.
    Text,
    /// HTML.
    Html,
}

/// Message importance.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Importance {
    /// Low.
    Low,
    /// Normal.
    Normal,
    /// High.
    High,
}

/// A file attachment, base64 in the message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Attachment {
    /// File name shown to the recipient.
    pub name: String,
    /// MIME type, e.g. `application/pdf`.
    pub content_type: String,
    /// Standard base64 (RFC 4648 §4, with padding) of the file bytes, in the queue message.
    /// Exactly one of `content_base64` and `content_ref`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_base64: Option<String>,
    /// The file as an S3 object in the stack's message bucket: for a file too large for a queue
    /// message (up to Graph's 150 MB per attachment). Deleted once the mail is sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_ref: Option<ObjectRef>,
    /// Shown inline (referenced from the HTML body as `cid:<content_id>`).
    #[serde(default)]
    pub inline: bool,
    /// Content-ID for inline attachments (without angle brackets).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_id: Option<String>,
}

/// One broken rule: which field, and what the rule is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Violation {
    /// JSON path of the field, e.g. `to[0].address`.
    pub field: String,
    /// The rule it breaks, in words.
    pub rule: String,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.rule)
    }
}

/// Why a queue message cannot be sent. Always permanent: retrying the same bytes cannot help.
#[derive(Debug, thiserror::Error)]
pub enum NotificationError {
    /// Not JSON, or JSON that does not fit the contract's shape (serde names the field).
    #[error("notification is not valid JSON for the contract: {0}")]
    Malformed(String),
    /// Well-formed JSON breaking one or more rules.
    #[error("notification breaks {} rule(s): {}", .0.len(), join_violations(.0))]
    Invalid(Vec<Violation>),
}

fn join_violations(violations: &[Violation]) -> String {
    violations
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

impl NotificationError {
    /// The first offending field (for the DLQ `field` attribute), when known.
    pub fn first_field(&self) -> Option<&str> {
        match self {
            NotificationError::Malformed(_) => None,
            NotificationError::Invalid(v) => v.first().map(|v| v.field.as_str()),
        }
    }
}

impl crate::error::Classify for NotificationError {
    fn class(&self) -> crate::error::ErrorClass {
        crate::error::ErrorClass::Permanent
    }
}

impl Notification {
    /// Parse and validate a queue message body. `sqs_message_id` becomes the id when none is given.
    pub fn parse(body: &str, sqs_message_id: &str) -> Result<Self, NotificationError> {
        let mut notification: Notification =
            serde_json::from_str(body).map_err(|e| NotificationError::Malformed(e.to_string()))?;
        if notification.id.is_none() {
            notification.id = Some(sqs_message_id.to_owned());
        }
        notification.validate()?;
        Ok(notification)
    }

    /// The idempotency key (the given `id`; after [`Notification::parse`] always present).
    pub fn id(&self) -> &str {
        self.id.as_deref().unwrap_or_default()
    }

    /// The sending mailbox key used for per-mailbox concurrency: `from` when set, else the account.
    pub fn sending_mailbox(&self) -> String {
        match &self.from {
            Some(from) => format!("{}|{}", self.account, from.to_ascii_lowercase()),
            None => format!("{}|me", self.account),
        }
    }

    /// Decoded bytes of the attachments carried in the queue message (invalid base64 counts as
    /// its encoded length).
    pub fn attachment_bytes(&self) -> usize {
        self.attachments
            .iter()
            .filter_map(|a| a.content_base64.as_deref())
            .map(decoded_len)
            .sum()
    }

    /// Bytes of the attachments stored as S3 objects.
    pub fn referenced_attachment_bytes(&self) -> u64 {
        self.object_refs().map(|r| r.size).sum()
    }

    /// The S3 objects the attachments reference.
    pub fn object_refs(&self) -> impl Iterator<Item = &ObjectRef> {
        self.attachments
            .iter()
            .filter_map(|a| a.content_ref.as_ref())
    }

    /// The size of the message as Exchange counts it against a mailbox's send size: the
    /// request estimate ([`Notification::estimated_request_bytes`]) plus every referenced
    /// attachment in base64.
    pub fn message_bytes(&self) -> usize {
        self.estimated_request_bytes()
            + self
                .attachments
                .iter()
                .filter_map(|a| {
                    a.content_ref
                        .as_ref()
                        .map(|r| (r.size as usize).div_ceil(3) * 4 + a.name.len() + 160)
                })
                .sum::<usize>()
    }

    /// Check every rule; report all violations at once.
    pub fn validate(&self) -> Result<(), NotificationError> {
        use patterns as p;
        let mut v = Rules::default();
        check_envelope(
            &mut v,
            self.version,
            self.id.as_deref(),
            &self.account,
            self.ticket_number.as_deref(),
        );
        if let Some(from) = &self.from {
            check_address(&mut v, "from", from);
        }
        let total = self.to.len() + self.cc.len() + self.bcc.len();
        if total == 0 {
            v.push("to", "at least one recipient is required in to, cc or bcc");
        } else if total > MAX_RECIPIENTS {
            v.push(
                "to",
                format!("to + cc + bcc must not exceed {MAX_RECIPIENTS} recipients (got {total})"),
            );
        }
        for (list, name) in [
            (&self.to, "to"),
            (&self.cc, "cc"),
            (&self.bcc, "bcc"),
            (&self.reply_to, "reply_to"),
        ] {
            for (i, r) in list.iter().enumerate() {
                check_address(&mut v, &format!("{name}[{i}].address"), &r.address);
                if let Some(n) = &r.name {
                    check_line(&mut v, &format!("{name}[{i}].name"), n, 256);
                }
            }
        }
        if !matches(p::NOT_BLANK, &self.subject) {
            v.push("subject", "must not be empty");
        }
        check_line(&mut v, "subject", &self.subject, MAX_SUBJECT_CHARS);
        if !matches(p::NO_NUL, &self.body.content) {
            v.push("body.content", "must not contain NUL characters");
        }
        if self.attachments.len() > MAX_ATTACHMENTS {
            v.push(
                "attachments",
                format!("at most {MAX_ATTACHMENTS} attachments"),
            );
        }
        for (i, a) in self.attachments.iter().enumerate() {
            let f = |s: &str| format!("attachments[{i}].{s}");
            if !matches(p::NOT_BLANK, &a.name) {
                v.push(f("name"), "must not be empty");
            }
            check_line(&mut v, &f("name"), &a.name, 255);
            if !matches(p::FILE_NAME, &a.name) {
                v.push(f("name"), "must be a file name without / or \\");
            }
            if !matches(p::MIME_TYPE, &a.content_type) {
                v.push(f("content_type"), "must be a MIME type like type/subtype");
            }
            match (&a.content_base64, &a.content_ref) {
                (Some(_), Some(_)) | (None, None) => v.push(
                    f("content_base64"),
                    "exactly one of content_base64 (the file inline) and content_ref (an S3 object) is required",
                ),
                (Some(b64), None) => {
                    if base64::engine::general_purpose::STANDARD
                        .decode(b64)
                        .is_err()
                    {
                        v.push(
                            f("content_base64"),
                            "must be standard base64 (A-Z a-z 0-9 + /, = padding, no line breaks)",
                        );
                    }
                }
                (None, Some(r)) => {
                    check_object_ref(&mut v, &f("content_ref"), r);
                    if r.size > GRAPH_MAX_ATTACHMENT_BYTES as u64 {
                        v.push(
                            f("content_ref.size"),
                            format!(
                                "must be at most {} bytes (Graph's largest attachment; got {})",
                                GRAPH_MAX_ATTACHMENT_BYTES,
                                r.size
                            ),
                        );
                    }
                }
            }
            match &a.content_id {
                Some(cid) if !matches(p::CONTENT_ID, cid) => v.push(
                    f("content_id"),
                    "must be 1 to 255 characters without spaces, quotes, < > or line breaks",
                ),
                Some(_) => {}
                None if a.inline => v.push(f("content_id"), "is required when inline is true"),
                None => {}
            }
        }
        let raw = self.attachment_bytes();
        if raw > MAX_ATTACHMENT_BYTES {
            v.push(
                "attachments",
                format!(
                    "decoded attachments in the queue message must total at most {MAX_ATTACHMENT_BYTES} bytes (got {raw}); larger files go by content_ref"
                ),
            );
        }
        let total = raw as u64 + self.referenced_attachment_bytes();
        if total > MAX_MIME_MESSAGE_BYTES as u64 {
            v.push(
                "attachments",
                format!(
                    "attachments must total at most {MAX_MIME_MESSAGE_BYTES} bytes (the largest send size Exchange Online allows; got {total})"
                ),
            );
        }
        if self.headers.len() > MAX_HEADERS {
            v.push(
                "headers",
                format!(
                    "at most {MAX_HEADERS} headers (Graph's limit per message; got {})",
                    self.headers.len()
                ),
            );
        }
        for (name, value) in &self.headers {
            let field = format!("headers.{name}");
            if !matches(p::HEADER_NAME, name) {
                v.push(
                    &field,
                    "header names must start with X- (Graph refuses others) and be at most 76 printable ASCII characters without ':'",
                );
            }
            if matches(p::RESERVED_HEADER, name) {
                v.push(
                    &field,
                    "X-Mailbridge-* headers are set by mailbridge and must not be given",
                );
            }
            check_line(&mut v, &field, value, 998);
        }
        let estimate = self.estimated_request_bytes();
        if estimate > MAX_REQUEST_BYTES {
            v.push(
                "body.content",
                format!(
                    "the Graph request would be about {estimate} bytes; Graph's limit is about {MAX_REQUEST_BYTES}"
                ),
            );
        }
        v.finish()
    }

    /// A generous estimate of the Graph request size: JSON of this message with its base64
    /// attachments (those in the queue message; see [`Notification::message_bytes`] for all).
    pub fn estimated_request_bytes(&self) -> usize {
        let recipients: usize = [&self.to, &self.cc, &self.bcc, &self.reply_to]
            .iter()
            .flat_map(|l| l.iter())
            .map(|r| r.address.len() + r.name.as_ref().map_or(0, String::len) + 64)
            .sum();
        let attachments: usize = self
            .attachments
            .iter()
            .filter_map(|a| {
                a.content_base64
                    .as_ref()
                    .map(|b| b.len() + a.name.len() + a.content_type.len() + 160)
            })
            .sum();
        let headers: usize = self
            .headers
            .iter()
            .map(|(k, v)| k.len() + v.len() + 32)
            .sum();
        // Body escaping can at most double typical text; count it 1.1x plus a fixed envelope.
        self.body.content.len() * 11 / 10
            + self.subject.len()
            + recipients
            + attachments
            + headers
            + 1024
    }
}

/// The kind tag of a [`MimeNotification`] (`"kind": "mime"`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MimeKind {
    /// A raw RFC 5322 message.
    Mime,
}

/// A complete RFC 5322 message to send as it is (Graph's MIME `sendMail`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MimeNotification {
    /// Message format version; must be 1.
    pub version: u32,
    /// Always `mime`.
    pub kind: MimeKind,
    /// Idempotency key. `mailbridge sendmail` derives it from the message's Message-ID, so a
    /// helpdesk that hands the same message over twice gets one mail out. When absent, the SQS
    /// message id is used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Name of the account secret whose delegated token sends the mail.
    pub account: String,
    /// The address of the message's `From:` (the sending mailbox: the account's own, or a shared
    /// mailbox it may send as). send-notifications checks that the message agrees.
    pub from: String,
    /// Helpdesk ticket number: adds the signed `X-Mailbridge-Ref` header (and the body footer
    /// where the message's structure allows it) so replies thread back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ticket_number: Option<String>,
    /// The raw message, standard base64. Exactly one of `raw_base64` and `raw_ref`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raw_base64: Option<String>,
    /// The raw message as an S3 object (a message too large for a queue message).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raw_ref: Option<ObjectRef>,
}

/// An S3 object holding a raw message, with what it must be.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ObjectRef {
    /// Bucket name.
    pub bucket: String,
    /// Object key.
    pub key: String,
    /// Size in bytes.
    pub size: u64,
    /// SHA-256 of the object, 64 lowercase hex characters.
    pub sha256: String,
}

/// Where a MIME notification's raw message is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RawMessage<'a> {
    /// Base64 in the queue message.
    Inline(&'a str),
    /// An S3 object.
    Object(&'a ObjectRef),
}

impl MimeNotification {
    /// The idempotency key (the given `id`; after [`QueueMessage::parse`] always present).
    pub fn id(&self) -> &str {
        self.id.as_deref().unwrap_or_default()
    }

    /// Where the raw message is (validation guarantees exactly one).
    pub fn raw(&self) -> RawMessage<'_> {
        match (&self.raw_base64, &self.raw_ref) {
            (_, Some(r)) => RawMessage::Object(r),
            (Some(b), None) => RawMessage::Inline(b),
            (None, None) => RawMessage::Inline(""),
        }
    }

    /// Size of the raw message in bytes.
    pub fn raw_size(&self) -> u64 {
        match self.raw() {
            RawMessage::Inline(b) => decoded_len(b) as u64,
            RawMessage::Object(r) => r.size,
        }
    }

    /// Check every rule; report all violations at once.
    pub fn validate(&self) -> Result<(), NotificationError> {
        let mut v = Rules::default();
        check_envelope(
            &mut v,
            self.version,
            self.id.as_deref(),
            &self.account,
            self.ticket_number.as_deref(),
        );
        check_address(&mut v, "from", &self.from);
        match (&self.raw_base64, &self.raw_ref) {
            (Some(_), Some(_)) | (None, None) => v.push(
                "raw_base64",
                "exactly one of raw_base64 (the message inline) and raw_ref (an S3 object) is required",
            ),
            (Some(b64), None) => {
                if b64.is_empty() {
                    v.push("raw_base64", "must not be empty");
                } else if base64::engine::general_purpose::STANDARD
                    .decode(b64)
                    .is_err()
                {
                    v.push(
                        "raw_base64",
                        "must be standard base64 (A-Z a-z 0-9 + /, = padding, no line breaks)",
                    );
                }
            }
            (None, Some(r)) => check_object_ref(&mut v, "raw_ref", r),
        }
        v.finish()
    }
}

/// One queue message of either kind.
#[derive(Clone, Debug, PartialEq)]
pub enum QueueMessage {
    /// The field-by-field JSON notification.
    Json(Notification),
    /// A raw RFC 5322 message.
    Mime(MimeNotification),
}

impl QueueMessage {
    /// Parse and validate a queue message body of either kind (`"kind": "mime"` selects the MIME
    /// kind). `sqs_message_id` becomes the id when none is given.
    pub fn parse(body: &str, sqs_message_id: &str) -> Result<Self, NotificationError> {
        #[derive(Deserialize)]
        struct Peek {
            #[serde(default)]
            kind: Option<serde_json::Value>,
        }
        let peek: Peek =
            serde_json::from_str(body).map_err(|e| NotificationError::Malformed(e.to_string()))?;
        match peek.kind {
            None => Notification::parse(body, sqs_message_id).map(QueueMessage::Json),
            Some(serde_json::Value::String(k)) if k == "mime" => {
                let mut n: MimeNotification = serde_json::from_str(body)
                    .map_err(|e| NotificationError::Malformed(e.to_string()))?;
                if n.id.is_none() {
                    n.id = Some(sqs_message_id.to_owned());
                }
                n.validate()?;
                Ok(QueueMessage::Mime(n))
            }
            Some(other) => Err(NotificationError::Invalid(vec![Violation {
                field: "kind".into(),
                rule: format!(
                    "must be \"mime\" (a raw message) or absent (a JSON notification); got {other}"
                ),
            }])),
        }
    }

    /// The idempotency key.
    pub fn id(&self) -> &str {
        match self {
            QueueMessage::Json(n) => n.id(),
            QueueMessage::Mime(n) => n.id(),
        }
    }

    /// The account secret name.
    pub fn account(&self) -> &str {
        match self {
            QueueMessage::Json(n) => &n.account,
            QueueMessage::Mime(n) => &n.account,
        }
    }

    /// The sending mailbox when it is not the account's own (JSON `from`; for MIME, the From
    /// address, which may be the account's own: the route decides with the token's user).
    pub fn from(&self) -> Option<&str> {
        match self {
            QueueMessage::Json(n) => n.from.as_deref(),
            QueueMessage::Mime(n) => Some(&n.from),
        }
    }

    /// The per-mailbox concurrency key: the account and the sending address.
    pub fn sending_mailbox(&self) -> String {
        match self {
            QueueMessage::Json(n) => n.sending_mailbox(),
            QueueMessage::Mime(n) => format!("{}|{}", n.account, n.from.to_ascii_lowercase()),
        }
    }

    /// What can still be read from a body that does not parse as a queue message, so that a
    /// parked message is named in the log and the DLQ: its `id` and `account` when each is a
    /// string that passes its own rule (the other fields may be what is wrong). Not a JSON
    /// object, or the field missing or invalid: None.
    pub fn readable_names(body: &str) -> ReadableNames {
        let value: Option<serde_json::Value> = serde_json::from_str(body).ok();
        let field = |name: &str, pattern: &'static str| {
            value
                .as_ref()
                .and_then(|v| v.get(name))
                .and_then(|v| v.as_str())
                .filter(|s| matches(pattern, s))
                .map(str::to_owned)
        };
        ReadableNames {
            id: field("id", patterns::ID),
            account: field("account", patterns::ACCOUNT),
        }
    }

    /// The first offending field of a body that does not parse (for the DLQ `field` attribute).
    pub fn first_invalid_field(body: &str) -> Option<String> {
        QueueMessage::parse(body, "x")
            .err()
            .and_then(|e| e.first_field().map(str::to_owned))
    }
}

/// The names [`QueueMessage::readable_names`] could read from an invalid body.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReadableNames {
    /// The notification's `id`, when given and valid.
    pub id: Option<String>,
    /// The account secret name, when given and valid.
    pub account: Option<String>,
}

#[derive(Default)]
struct Rules(Vec<Violation>);

impl Rules {
    fn push(&mut self, field: impl Into<String>, rule: impl Into<String>) {
        self.0.push(Violation {
            field: field.into(),
            rule: rule.into(),
        });
    }
    fn finish(self) -> Result<(), NotificationError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(NotificationError::Invalid(self.0))
        }
    }
}

/// Patterns shared with `shared/schemas/notification.schema.json` (same strings, so both agree).
pub mod patterns {
    /// Mail address: `local@domain.tld`, ASCII domain (IDN in punycode), no spaces or brackets.
    pub const ADDRESS: &str = r#"^[^\s@<>,;"()\[\]\\\x00-\x1f\x7f]{1,64}@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)+$"#;
    /// One header-safe line: no CR, LF or control characters other than tab.
    pub const LINE: &str = r"^[^\x00-\x08\x0a-\x1f\x7f-\x9f]*$";
    /// Something other than whitespace.
    pub const NOT_BLANK: &str = r"\S";
    /// Notification id.
    pub const ID: &str = r"^[^\s\x00-\x1f\x7f-\x9f]{1,128}$";
    /// Secrets Manager name.
    pub const ACCOUNT: &str = r"^[A-Za-z0-9/_+=.@-]{1,512}$";
    /// MIME type.
    pub const MIME_TYPE: &str = r"^[A-Za-z0-9!#$&^_.+-]{1,127}/[A-Za-z0-9!#$&^_.+-]{1,127}$";
    /// Content-ID without angle brackets.
    pub const CONTENT_ID: &str = r#"^[^\s\x00-\x1f\x7f<>"]{1,255}$"#;
    /// Ticket number.
    pub const TICKET_NUMBER: &str = r"^[A-Za-z0-9_-]{1,32}$";
    /// Custom header name: `X-` then printable ASCII without `:` (at most 76 characters).
    pub const HEADER_NAME: &str = r"^[Xx]-[!-9;-~]{1,74}$";
    /// Header names mailbridge sets itself (`X-Mailbridge-*`, any case).
    pub const RESERVED_HEADER: &str = r"^[Xx]-[Mm][Aa][Ii][Ll][Bb][Rr][Ii][Dd][Gg][Ee]-";
    /// File name: no path separators.
    pub const FILE_NAME: &str = r"^[^/\\]*$";
    /// Body content: no NUL.
    pub const NO_NUL: &str = r"^[^\x00]*$";
    /// S3 bucket name (the general-purpose bucket rules, simplified).
    pub const BUCKET: &str = r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$";
    /// SHA-256 as lowercase hex.
    pub const SHA256: &str = r"^[0-9a-f]{64}$";
}

fn matches(pattern: &'static str, value: &str) -> bool {
    use std::sync::{LazyLock, Mutex};
    static CACHE: LazyLock<Mutex<HashMap<&'static str, regex::Regex>>> =
        LazyLock::new(Default::default);
    let mut cache = CACHE.lock().unwrap_or_else(|e| e.into_inner());
    cache
        .entry(pattern)
        .or_insert_with(|| regex::Regex::new(pattern).expect("patterns are valid"))
        .is_match(value)
}

/// A single header-safe line: no CR, LF or other control characters, at most `max` characters.
fn check_line(v: &mut Rules, field: &str, value: &str, max: usize) {
    if value.contains(['\r', '\n']) {
        v.push(field, "must not contain CR or LF (header injection)");
    } else if !matches(patterns::LINE, value) {
        v.push(field, "must not contain control characters");
    }
    let n = value.chars().count();
    if n > max {
        v.push(field, format!("must be at most {max} characters (got {n})"));
    }
}

/// An S3 object reference: bucket and key names, a size, a SHA-256.
fn check_object_ref(v: &mut Rules, field: &str, r: &ObjectRef) {
    use patterns as p;
    if !matches(p::BUCKET, &r.bucket) {
        v.push(
            format!("{field}.bucket"),
            "must be an S3 bucket name: 3 to 63 lowercase letters, digits, . or -",
        );
    }
    if r.key.is_empty() || r.key.len() > 1024 || !matches(p::LINE, &r.key) {
        v.push(
            format!("{field}.key"),
            "must be an S3 key: 1 to 1024 bytes without control characters",
        );
    }
    if r.size == 0 {
        v.push(
            format!("{field}.size"),
            "must be the object's size in bytes (> 0)",
        );
    }
    if !matches(p::SHA256, &r.sha256) {
        v.push(
            format!("{field}.sha256"),
            "must be the object's SHA-256 as 64 lowercase hex characters",
        );
    }
}

/// The rules both kinds share: version, id, account, ticket number.
fn check_envelope(
    v: &mut Rules,
    version: u32,
    id: Option<&str>,
    account: &str,
    ticket_number: Option<&str>,
) {
    use patterns as p;
    if version != CURRENT_VERSION {
        v.push("version", format!("must be {CURRENT_VERSION}"));
    }
    if let Some(id) = id
        && !matches(p::ID, id)
    {
        v.push(
            "id",
            "must be 1 to 128 characters without whitespace or control characters",
        );
    }
    if !matches(p::ACCOUNT, account) {
        v.push(
            "account",
            "must be an account secret name: 1 to 512 ASCII letters, digits or /_+=.@-",
        );
    }
    if let Some(t) = ticket_number
        && !matches(p::TICKET_NUMBER, t)
    {
        v.push(
            "ticket_number",
            "must be 1 to 32 ASCII letters, digits, - or _",
        );
    }
}

/// A pragmatic addr-spec check (see [`patterns::ADDRESS`]), at most 320 characters.
fn check_address(v: &mut Rules, field: &str, address: &str) {
    if address.contains(['\r', '\n']) {
        v.push(field, "must not contain CR or LF (header injection)");
    } else if address.chars().count() > 320 || !matches(patterns::ADDRESS, address) {
        v.push(
            field,
            "must be a mail address like user@example.com (no display name, spaces or brackets; IDN domains in punycode)",
        );
    }
}

fn decoded_len(b64: &str) -> usize {
    let pad = b64.bytes().rev().take_while(|&b| b == b'=').count();
    (b64.len() / 4 * 3).saturating_sub(pad.min(2))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_invalid_body_is_still_named_by_its_valid_id_and_account() {
        let mut body = valid_json();
        body["id"] = "ticket-9-reply-2".into();
        body["to"] = serde_json::json!([{"address": "a@example.com\r\nBcc: b@example.com"}]);
        assert!(QueueMessage::parse(&body.to_string(), "sqs-1").is_err());
        let names = QueueMessage::readable_names(&body.to_string());
        assert_eq!(names.id.as_deref(), Some("ticket-9-reply-2"));
        assert_eq!(
            names.account.as_deref(),
            Some("mailbridge/contoso-helpdesk")
        );
        // an id or account that breaks its own rule is not a name
        body["id"] = "two words".into();
        body["account"] = serde_json::json!(7);
        assert_eq!(
            QueueMessage::readable_names(&body.to_string()),
            ReadableNames::default()
        );
        assert_eq!(
            QueueMessage::readable_names("not json"),
            ReadableNames::default()
        );
        assert_eq!(
            QueueMessage::readable_names("[1]"),
            ReadableNames::default()
        );
    }

    fn valid_json() -> serde_json::Value {
        serde_json::json!({
            "version": 1,
            "account": "mailbridge/contoso-helpdesk",
            "to": [{"address": "customer@example.com", "name": "A Customer"}],
            "subject": "Your ticket was updated",
            "body": {"content_type": "html", "content": "<p>Hello</p>"},
            "attachments": [{"name": "log.txt", "content_type": "text/plain", "content_base64": "aGVsbG8="}],
            "headers": {"X-Helpdesk": "1"},
            "ticket_number": "1234"
        })
    }

    fn violations(value: serde_json::Value) -> Vec<Violation> {
        match Notification::parse(&value.to_string(), "sqs-1") {
            Err(NotificationError::Invalid(v)) => v,
            other => panic!("expected violations, got {other:?}"),
        }
    }

    #[test]
    fn a_valid_message_parses_and_takes_the_sqs_id_as_default_id() {
        let n = Notification::parse(&valid_json().to_string(), "sqs-1").unwrap();
        assert_eq!(n.id(), "sqs-1");
        assert_eq!(n.attachment_bytes(), 5);
        assert_eq!(n.sending_mailbox(), "mailbridge/contoso-helpdesk|me");
    }

    #[test]
    fn an_unknown_field_is_refused_and_named() {
        let mut j = valid_json();
        j["sender"] = "x".into();
        let err = Notification::parse(&j.to_string(), "sqs-1").unwrap_err();
        assert!(err.to_string().contains("unknown field `sender`"), "{err}");
    }

    #[test]
    fn crlf_in_subject_names_and_attachment_names_is_header_injection() {
        let mut j = valid_json();
        j["subject"] = "Hi\r\nBcc: evil@example.com".into();
        j["to"][0]["name"] = "A\nB".into();
        j["attachments"][0]["name"] = "a\r.txt".into();
        j["to"][0]["address"] = "a@example.com\r\nBcc: x@y.z".into();
        let v = violations(j);
        let fields: Vec<_> = v.iter().map(|v| v.field.as_str()).collect();
        assert!(fields.contains(&"subject"));
        assert!(fields.contains(&"to[0].name"));
        assert!(fields.contains(&"to[0].address"));
        assert!(fields.contains(&"attachments[0].name"));
        assert!(v.iter().all(|v| v.rule.contains("CR or LF")), "{v:?}");
    }

    #[test]
    fn no_recipients_and_too_many_recipients_are_refused() {
        let mut j = valid_json();
        j["to"] = serde_json::json!([]);
        assert_eq!(violations(j.clone())[0].field, "to");
        let many: Vec<_> = (0..501)
            .map(|i| serde_json::json!({"address": format!("u{i}@example.com")}))
            .collect();
        j["to"] = many.into();
        assert!(violations(j)[0].rule.contains("500"));
    }

    #[test]
    fn non_x_headers_and_reserved_headers_are_refused() {
        let mut j = valid_json();
        j["headers"] = serde_json::json!({"List-Unsubscribe": "x", "X-Mailbridge-Ref": "y"});
        let v = violations(j);
        assert!(
            v.iter()
                .any(|v| v.field == "headers.List-Unsubscribe" && v.rule.contains("X-"))
        );
        assert!(v.iter().any(|v| v.field == "headers.X-Mailbridge-Ref"));
    }

    #[test]
    fn attachments_over_three_mib_are_refused() {
        let big =
            base64::engine::general_purpose::STANDARD.encode(vec![0u8; MAX_ATTACHMENT_BYTES + 1]);
        let mut j = valid_json();
        j["attachments"][0]["content_base64"] = big.into();
        let v = violations(j);
        assert!(
            v.iter()
                .any(|v| v.field == "attachments" && v.rule.contains("bytes"))
        );
    }

    #[test]
    fn bad_base64_inline_without_cid_bad_address_and_version_are_each_named() {
        let mut j = valid_json();
        j["version"] = 2.into();
        j["from"] = "not an address".into();
        j["attachments"][0]["content_base64"] = "@@@".into();
        j["attachments"][0]["inline"] = true.into();
        j["ticket_number"] = "12 34".into();
        let fields: Vec<_> = violations(j).into_iter().map(|v| v.field).collect();
        for f in [
            "version",
            "from",
            "attachments[0].content_base64",
            "attachments[0].content_id",
            "ticket_number",
        ] {
            assert!(fields.iter().any(|x| x == f), "{f} missing from {fields:?}");
        }
    }

    #[test]
    fn the_sending_mailbox_key_separates_shared_mailboxes() {
        let mut j = valid_json();
        j["from"] = "Support@Contoso.com".into();
        let n = Notification::parse(&j.to_string(), "m").unwrap();
        assert_eq!(
            n.sending_mailbox(),
            "mailbridge/contoso-helpdesk|support@contoso.com"
        );
    }
}
