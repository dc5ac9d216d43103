//! The ticket draft (the parser's output, printed by `mailbridge parse` and posted by the poller),
//! the parse options and the parse error. Field names are the contract of
//! `shared/schemas/ticket-draft.schema.json`.

use crate::error::{Classify, ErrorClass};
use regex::Regex;
use serde::{Deserialize, Serialize};

/// One mail address with its display name.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MailAddress {
    /// Decoded display name, `null` when the header has none.
    pub name: Option<String>,
    /// The address (`local@domain`), as written. Only in `from` can it be less: the address
    /// text of an odd originator as written (a bare local part such as `MAILER-DAEMON`), or
    /// empty when the originator has a name only (`"Support" <>`, an empty group).
    pub address: String,
}

/// One attachment: every leaf that is not a body part.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    /// Decoded filename (Content-Disposition `filename`, else Content-Type `name`), reduced to
    /// its last path component without control characters (RFC 2183 2.3: a suggested name
    /// carries no directory); `null` when the part has none.
    pub filename: Option<String>,
    /// Lower-case `type/subtype`.
    pub content_type: String,
    /// Size of the decoded content in bytes.
    pub size: u64,
    /// Whether the part is meant to be shown inline (Content-Disposition `inline`, or no
    /// disposition and a Content-ID, like the images of `multipart/related`).
    pub inline: bool,
    /// Content-ID without angle brackets (what `cid:` URLs in the HTML refer to).
    pub content_id: Option<String>,
}

/// What a delivery status notification says about the mail that bounced.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bounce {
    /// Message-ID (no angle brackets) of the mail that could not be delivered.
    pub original_message_id: Option<String>,
    /// The recipient that failed (Final-Recipient / Original-Recipient / X-Failed-Recipients).
    pub recipient: Option<String>,
    /// The RFC 3463 status code, e.g. `5.1.1`.
    pub status: Option<String>,
}

/// Which signed layer found the ticket a reply belongs to, most trusted first. A subject match
/// is not one of them: it goes to [`TicketDraft::subject_ticket_number`].
///
/// Both layers prove the same thing: the ticket number was issued by this deployment (the mail
/// answers, quotes or forwards a notification mailbridge sent about that ticket). Neither proves
/// who sent the mail: everyone who received or was forwarded the notification holds the marker.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ThreadSource {
    /// A verified (HMAC) reference in the `X-Mailbridge-Ref` header or in the text as a reader
    /// sees it (the text body, or the displayed text of the HTML: not inside hidden elements,
    /// comments or attributes).
    Marker,
    /// A verified reference inside a Message-ID in In-Reply-To / References, or, for a bounce
    /// or delivery report only, in the returned headers of the mail it reports on.
    References,
}

/// The ticket draft one mail turns into.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TicketDraft {
    /// Message-ID without angle brackets.
    pub message_id: Option<String>,
    /// Decoded, unfolded subject; empty when the mail has none.
    pub subject: String,
    /// The author: `From`, else `Sender`, else `Reply-To`, else the envelope sender
    /// (`Return-Path`), read leniently (a name-only or address-less originator is kept, see
    /// [`MailAddress::address`]); `null` only when none of them has a name or address text.
    pub from: Option<MailAddress>,
    /// `To` recipients.
    pub to: Vec<MailAddress>,
    /// `Cc` recipients.
    pub cc: Vec<MailAddress>,
    /// `Reply-To` addresses.
    pub reply_to: Vec<MailAddress>,
    /// `Date` as RFC 3339; `null` when missing or unparseable.
    pub date: Option<String>,
    /// First Message-ID of In-Reply-To, without angle brackets.
    pub in_reply_to: Option<String>,
    /// Message-IDs of References, oldest first, without angle brackets.
    pub references: Vec<String>,
    /// The text body: inline text/plain leaves joined in order, or text derived from the HTML.
    /// Verified thread markers (`[ref:…]`, quoted from our notifications) are taken out.
    pub body_text: String,
    /// The HTML body exactly as the mail has it, when it has one. **Untrusted**: scripts, event
    /// handlers, forms and remote images are all still there; show it only sandboxed, or show
    /// [`Self::body_html_sanitized`] instead.
    pub body_html: Option<String>,
    /// `body_html` passed through an allowlist sanitiser (`ammonia`): no scripts, event handlers,
    /// forms, frames, styles sheets or remote images; links only to web, mail and phone
    /// addresses; inline `cid:` images kept. What a helpdesk may render. `null` when the mail has
    /// no HTML body, or one too large to sanitise (see `mail::sanitize`).
    pub body_html_sanitized: Option<String>,
    /// The new part of a reply (quoted history and signature removed); equals `body_text`
    /// when nothing can be told apart.
    pub reply_text: String,
    /// Every leaf that is not a body part.
    pub attachments: Vec<Attachment>,
    /// Machine mail: auto-replies, out-of-office, bounces, receipts, lists, bulk, own loops.
    pub auto_generated: bool,
    /// Why the mail counts as machine mail: its kind and evidence, written `<kind>: <evidence>`
    /// (kind one of `loop`, `bounce`, `delivery_report`, `read_receipt`, `feedback_report`,
    /// `out_of_office`, `auto_reply`, `auto_generated`, `mailing_list`, `bulk`).
    pub auto_reason: Option<super::auto::AutoReason>,
    /// For bounces: what the delivery report says.
    pub bounce: Option<Bounce>,
    /// The ticket this mail belongs to, found by a signed layer (a verified marker or
    /// reference): proves the ticket was issued by this deployment, not who the sender is.
    pub ticket_number: Option<String>,
    /// Which signed layer found `ticket_number`.
    pub thread_source: Option<ThreadSource>,
    /// A ticket number in the subject (`[Ticket#123]` or the helpdesk's own tag). Anyone can
    /// type it: it is kept apart from `ticket_number` so that a consumer reading only that one
    /// never threads on it. Set whenever the subject has one, whatever the signed layers found.
    pub subject_ticket_number: Option<String>,
}

impl TicketDraft {
    /// What to tell a person about machine mail: its `auto_reason`, or "auto-generated".
    pub fn auto_reason_text(&self) -> String {
        self.auto_reason
            .as_ref()
            .map_or_else(|| "auto-generated".to_owned(), ToString::to_string)
    }
}

/// Options of [`crate::mail::parse`].
#[derive(Clone, Debug)]
pub struct ParseOptions {
    /// HMAC key of the thread markers; without it no marker or reference is trusted.
    pub thread_key: Option<Vec<u8>>,
    /// Subject patterns with the ticket number in the capture group named `ticket`, or else in
    /// the first capture group. Default: `[Ticket#N]`.
    pub subject_ticket_patterns: Vec<Regex>,
    /// The helpdesk's own mailbox addresses: mail from them (or with an `X-Loop` naming them)
    /// is a loop.
    pub own_addresses: Vec<String>,
}

impl ParseOptions {
    /// The default subject pattern: `[Ticket#123]` (case-insensitive, spaces tolerated).
    pub fn default_subject_pattern() -> Regex {
        Regex::new(r"(?i)\[\s*Ticket\s*#\s*(?P<ticket>[A-Za-z0-9_-]+)\s*\]").expect("static regex")
    }
}

impl Default for ParseOptions {
    fn default() -> Self {
        Self {
            thread_key: None,
            subject_ticket_patterns: vec![Self::default_subject_pattern()],
            own_addresses: Vec::new(),
        }
    }
}

/// Why a byte string could not be turned into a ticket draft.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum ParseError {
    /// Zero bytes, or only whitespace.
    #[error("the input is empty")]
    Empty,
    /// No line that looks like a header field (`Name: value`) near the start, and the
    /// content is binary (text without a header is parsed as a body-only message).
    #[error(
        "not a mail message: no header field in the first {scanned} bytes and the content is binary"
    )]
    NoHeaders {
        /// How many bytes were searched.
        scanned: usize,
    },
    /// More MIME parts than the parser accepts (memory bound).
    #[error("too many MIME parts (more than {limit} boundary lines)")]
    TooManyParts {
        /// The limit.
        limit: usize,
    },
    /// The MIME parser gave up.
    #[error("the MIME structure could not be parsed")]
    Unparseable,
    /// The MIME structure is so inconsistent that the MIME parser itself failed on it
    /// (a panic inside `mail-parser`, caught: one poison mail must not take the poller down).
    #[error("the MIME structure is inconsistent (the MIME parser failed on it)")]
    InconsistentMime,
}

impl Classify for ParseError {
    fn class(&self) -> ErrorClass {
        ErrorClass::Permanent
    }
}
