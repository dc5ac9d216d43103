//! Where tickets go: the [`TicketSink`] port and one adapter per helpdesk.
//!
//! The poller hands each mail to the sink of its mailbox as a [`TicketPayload`] (the typed ticket
//! draft, attachment contents, the idempotency key); the sink decides which helpdesk call it
//! becomes ([`DeliveryPlan`]: a new ticket, or correspondence / a comment on the ticket the draft
//! names) and makes it. Each mailbox picks its adapter in its configuration ([`SinkConfig`]), with
//! its credentials in a Secrets Manager secret.
//!
//! | file | what |
//! |---|---|
//! | `payload.rs` | [`TicketPayload`], [`TicketAttachment`]: what the poller hands over (and the webhook's JSON body) |
//! | `config.rs` | [`SinkConfig`]: the per-mailbox `sink` object, validated, and the adapter it builds |
//! | `webhook.rs` | the generic JSON webhook (`Idempotency-Key` semantics left to the receiver) |
//! | `request_tracker.rs` | Request Tracker 5 through its REST 2.0 API |
//! | `django_helpdesk.rs` | django-helpdesk through its REST API |
//!
//! Every adapter sends its HTTP requests through [`crate::retry::send_with_retry`].
//!
//! # Errors
//! [`TicketSinkError`] says what the poller does with the mail: `Rejected` and `Encode` park it
//! in the failed folder (this mail will never be accepted); everything else leaves it where it is
//! for the next run, with a mailbox status that says why.

mod config;
pub mod django_helpdesk;
mod payload;
pub mod request_tracker;
mod webhook;

use async_trait::async_trait;
use tokio::time::Instant;

use crate::error::{Classify, ErrorClass};

pub use config::{
    MachineMail, NonParticipant, SecretJson, SinkConfig, SinkConfigError, SinkFields, SinkKind,
    validate_target_url,
};
pub use payload::{
    TICKET_DRAFT_JSON_SCHEMA, TICKET_PAYLOAD_JSON_SCHEMA, TICKET_PAYLOAD_SCHEMA, TicketAttachment,
    TicketPayload,
};
pub use webhook::{WebhookAuth, WebhookTicketSink};

/// Which helpdesk call a mail becomes.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum DeliveryPlan {
    /// Open a new ticket (in this queue, when the helpdesk has queues).
    NewTicket {
        /// The queue, as the helpdesk names it.
        queue: Option<String>,
    },
    /// Add the mail to an existing ticket as correspondence (a reply from the requestor).
    Reply {
        /// The ticket.
        ticket: String,
    },
    /// Add the mail to an existing ticket as an internal comment (machine mail about it).
    Comment {
        /// The ticket.
        ticket: String,
    },
    /// Hand the payload to a webhook, which decides itself.
    Webhook {
        /// The target URL.
        url: String,
    },
}

impl std::fmt::Display for DeliveryPlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeliveryPlan::NewTicket { queue: Some(queue) } => {
                write!(f, "create a ticket in queue {queue}")
            }
            DeliveryPlan::NewTicket { queue: None } => f.write_str("create a ticket"),
            DeliveryPlan::Reply { ticket } => write!(f, "correspond on ticket {ticket}"),
            DeliveryPlan::Comment { ticket } => write!(f, "comment on ticket {ticket}"),
            DeliveryPlan::Webhook { url } => write!(f, "POST the ticket payload to {url}"),
        }
    }
}

/// What the helpdesk did with a mail.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TicketReceipt {
    /// What was done.
    pub action: DeliveryPlan,
    /// The ticket the mail is on now, when the helpdesk says.
    pub ticket_id: Option<String>,
    /// HTTP attempts it took (all calls together).
    pub attempts: u32,
    /// An earlier delivery of the same mail was found (a crash or lost answer after the helpdesk
    /// accepted it): nothing new was created this time.
    pub replayed: bool,
    /// Whether the sender was among the participants of the ticket the mail names.
    pub sender: SenderCheck,
}

/// Whether a mail's sender is among the participants of the ticket it names: the thread
/// reference proves which ticket a mail belongs to, never who sent it, so the sinks that can ask
/// the helpdesk do (the RT and django-helpdesk adapters), and a non-participant's reply becomes
/// what the sink's `non_participant` says.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SenderCheck {
    /// Not checked: the mail names no ticket the helpdesk has, or the sink cannot ask (webhook:
    /// the receiver must check).
    NotChecked,
    /// The sender is a participant (RT: a requestor, Cc or AdminCc; django-helpdesk: the
    /// submitter, or an address the helpdesk mailed about the ticket).
    Participant,
    /// The sender is not a participant (or the mail names no sender address).
    NotParticipant,
}

impl SenderCheck {
    /// The value logged.
    pub fn as_str(self) -> &'static str {
        match self {
            SenderCheck::NotChecked => "not_checked",
            SenderCheck::Participant => "participant",
            SenderCheck::NotParticipant => "not_participant",
        }
    }
}

/// What [`TicketSink::check`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SinkCheck {
    /// One line: what was reached, as whom, which queue.
    pub summary: String,
}

/// Why a mail did not reach the helpdesk.
#[derive(Debug, thiserror::Error)]
pub enum TicketSinkError {
    /// The helpdesk refused this mail for good (400, 413, 422...): park it with this reason.
    #[error("{target} rejected the ticket with HTTP {status}: {body}")]
    Rejected {
        /// The helpdesk (URL).
        target: String,
        /// HTTP status.
        status: u16,
        /// Start of the helpdesk's answer.
        body: String,
    },
    /// Down, throttled, failing or out of time: the mail stays and the next run retries.
    #[error("{target} unavailable after {attempts} attempt(s): {detail}")]
    Unavailable {
        /// The helpdesk (URL).
        target: String,
        /// Attempts made.
        attempts: u32,
        /// The last problem.
        detail: String,
    },
    /// The credentials were refused (401/403): the mail stays; a person must fix the secret or
    /// the rights of its user in the helpdesk.
    #[error(
        "{target} refused the credentials (HTTP {status}): {detail} — check the sink's credential secret and the rights of its user in the helpdesk"
    )]
    CredentialsRefused {
        /// The helpdesk (URL).
        target: String,
        /// HTTP status.
        status: u16,
        /// What the helpdesk said.
        detail: String,
    },
    /// The sink's configuration does not match the helpdesk (an unknown queue, a missing custom
    /// field, a wrong URL): the mail stays until a person fixes the mailbox's `sink`.
    #[error("{target}: {detail}")]
    Config {
        /// The helpdesk (URL).
        target: String,
        /// What is wrong and what to fix.
        detail: String,
    },
    /// The request could not be built (a bug).
    #[error("ticket could not be encoded: {0}")]
    Encode(String),
}

impl TicketSinkError {
    /// Whether the mail must be parked (it will never be accepted) rather than left in place.
    pub fn parks_the_mail(&self) -> bool {
        matches!(
            self,
            TicketSinkError::Rejected { .. } | TicketSinkError::Encode(_)
        )
    }

    /// An [`crate::retry::GaveUp`] as `Unavailable`.
    pub fn gave_up(target: &str, gave_up: crate::retry::GaveUp) -> Self {
        TicketSinkError::Unavailable {
            target: target.to_string(),
            attempts: gave_up.attempts,
            detail: gave_up.detail,
        }
    }
}

impl Classify for TicketSinkError {
    fn class(&self) -> ErrorClass {
        if self.parks_the_mail() {
            ErrorClass::Permanent
        } else {
            ErrorClass::Transient
        }
    }
}

/// Port: the helpdesk a mailbox's mail goes to.
#[async_trait]
pub trait TicketSink: Send + Sync {
    /// Which helpdesk call `payload` becomes. Writes nothing; may read from the helpdesk (does
    /// the ticket the draft names exist?). `mailbridge poll --dry-run` shows it.
    async fn plan(
        &self,
        payload: &TicketPayload,
        deadline: Instant,
    ) -> Result<DeliveryPlan, TicketSinkError>;

    /// Deliver one mail: open a ticket, or add it to the ticket its draft names. Idempotent per
    /// `idempotency_key` (the payload's): a retry after a lost answer or a crash after the
    /// helpdesk accepted it creates nothing new (the receipt says `replayed`). Give up
    /// (transient) at `deadline`.
    async fn deliver(
        &self,
        payload: &TicketPayload,
        idempotency_key: &str,
        deadline: Instant,
    ) -> Result<TicketReceipt, TicketSinkError>;

    /// Reach the helpdesk, authenticate, and check the configured queue (for `mailbridge check`
    /// and `mailbridge mailbox add`).
    async fn check(&self, deadline: Instant) -> Result<SinkCheck, TicketSinkError>;
}
