//! The small traits the poll loop runs on. Real adapters: [`crate::imap_adapter`] (IMAP),
//! [`crate::dynamo`] (DynamoDB), `mailbridge::ticket_sink` (helpdesk adapters), the shared token layer.
//! Unit tests use in-memory fakes.

use std::sync::Arc;

use async_trait::async_trait;
use mailbridge::imap::{ImapError, ListedMessage, SearchScope, SelectedFolder, Uid};
use mailbridge::ticket_sink::TicketSink;
use secrecy::SecretString;
use serde::{Deserialize, Serialize};

use crate::config::{ConfigError, MailboxConfig};

/// One logged-in mailbox connection (one message in flight at a time).
#[async_trait]
pub trait Mailbox: Send {
    /// Select the folder.
    async fn select(&mut self, folder: &str) -> Result<SelectedFolder, ImapError>;
    /// UIDs in the selected folder, ascending.
    async fn search(&mut self, scope: SearchScope) -> Result<Vec<Uid>, ImapError>;
    /// `RFC822.SIZE` of each UID (one round trip), ascending by UID.
    async fn list_messages(&mut self, uids: &[Uid]) -> Result<Vec<ListedMessage>, ImapError>;
    /// The whole raw message (`BODY.PEEK[]`), None when it vanished.
    async fn fetch_raw(&mut self, uid: Uid) -> Result<Option<Vec<u8>>, ImapError>;
    /// The header block only, None when it vanished.
    async fn fetch_header(&mut self, uid: Uid) -> Result<Option<Vec<u8>>, ImapError>;
    /// Move to a folder (created if missing).
    async fn move_to(&mut self, uid: Uid, folder: &str) -> Result<(), ImapError>;
    /// Set `\Seen`.
    async fn mark_seen(&mut self, uid: Uid) -> Result<(), ImapError>;
    /// Delete this one message.
    async fn delete(&mut self, uid: Uid) -> Result<(), ImapError>;
    /// Commands sent so far.
    fn round_trips(&self) -> u64;
    /// Log out (best effort).
    async fn logout(self: Box<Self>);
}

/// Opens mailbox connections.
#[async_trait]
pub trait MailboxConnector: Send + Sync {
    /// Connect (TLS) and `AUTHENTICATE XOAUTH2` as `config.user` with `access_token`.
    async fn connect(
        &self,
        config: &MailboxConfig,
        access_token: &SecretString,
    ) -> Result<Box<dyn Mailbox>, ImapError>;
}

/// A DynamoDB (or other) store failure: transient for the mailbox.
#[derive(Debug, thiserror::Error)]
#[error("state table {operation} failed: {detail}")]
pub struct StoreError {
    /// What was attempted.
    pub operation: &'static str,
    /// What failed.
    pub detail: String,
}

/// A dedupe record: this mail already became a ticket.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DedupeRecord {
    /// `mail#<mailbox>#<hash>`.
    pub pk: String,
    /// The ticket id the API returned, if any.
    pub ticket_id: Option<String>,
    /// Message-ID, if the mail had one.
    pub message_id: Option<String>,
    /// UIDVALIDITY and UID it had when ticketed (for diagnostics).
    pub uid_validity: u32,
    /// UID when ticketed.
    pub uid: u32,
    /// When (RFC 3339).
    pub created_at: String,
    /// TTL (epoch seconds).
    pub expires_at: i64,
}

/// The last run of one mailbox, for `mailbridge status`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MailboxStatus {
    /// Mailbox name.
    pub mailbox: String,
    /// `ok`, `partial` (stopped early: deadline, ticket API down), `failed`, `needs_reauth`,
    /// `config_error` or `disabled`.
    pub outcome: String,
    /// Why, when not `ok`.
    pub reason: Option<String>,
    /// Run start (RFC 3339).
    pub last_run_at: String,
    /// Run duration.
    pub duration_ms: u64,
    /// Tickets created this run.
    pub tickets_created: u32,
    /// Mails parked (failed folder) this run.
    pub parked: u32,
    /// Duplicates found (after-action applied, no new ticket).
    pub duplicates: u32,
    /// Machine mail that threads to no ticket: moved to `auto_generated_folder`, no ticket.
    #[serde(default)]
    pub skipped_auto_generated: u32,
    /// Mail over the per-sender quota: moved to `held_folder`, no ticket.
    #[serde(default)]
    pub held: u32,
    /// Mails left for the next run.
    pub deferred: u32,
    /// UIDVALIDITY of the folder.
    pub uid_validity: Option<u32>,
    /// IMAP commands sent.
    pub imap_round_trips: u64,
    /// UIDs (under `uid_validity`) of mails the ticket API did not take this run (down, 401/403,
    /// or failing on that one payload): they stay where they are, and the next run tries them
    /// after the other mails, so one such mail never holds up the mail behind it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub retry_last_uids: Vec<u32>,
    /// Start (RFC 3339) of the last run that polled this mailbox successfully (this run when it
    /// did): carried over by runs that did not. None: never polled successfully.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_success_at: Option<String>,
    /// Start (RFC 3339) of the first run recorded for this mailbox: the heartbeat counts a
    /// mailbox that never succeeded from here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_run_at: Option<String>,
}

impl MailboxStatus {
    /// Whether this run polled the mailbox successfully: it reached the mailbox and every mail
    /// it took on went somewhere (`ok`, or `partial` only because of the deadline or
    /// `max_messages_per_run`). A ticket API not taking mail, a lease held by another run, a
    /// failure, `needs_reauth`, `config_error` and `disabled` are not.
    pub fn succeeded(&self, lease_held_elsewhere: bool) -> bool {
        match self.outcome.as_str() {
            "ok" => true,
            "partial" => self.retry_last_uids.is_empty() && !lease_held_elsewhere,
            _ => false,
        }
    }

    /// Carry the history fields over from the mailbox's `previous` status: `first_run_at`
    /// always, `last_success_at` unless this run succeeded (then it is this run's start).
    pub fn carry_history(&mut self, previous: Option<&MailboxStatus>, succeeded: bool) {
        self.first_run_at = previous
            .and_then(|p| {
                p.first_run_at
                    .clone()
                    .or_else(|| Some(p.last_run_at.clone()))
            })
            .or_else(|| Some(self.last_run_at.clone()));
        self.last_success_at = if succeeded {
            Some(self.last_run_at.clone())
        } else {
            previous.and_then(|p| p.last_success_at.clone())
        };
    }

    /// Seconds from the last successful poll (or, never successful, from the first recorded run)
    /// to `now`; None when neither time is readable.
    pub fn seconds_without_success(&self, now: chrono::DateTime<chrono::Utc>) -> Option<i64> {
        let since = self
            .last_success_at
            .as_deref()
            .or(self.first_run_at.as_deref())?;
        let since = chrono::DateTime::parse_from_rfc3339(since).ok()?;
        Some(
            (now - since.with_timezone(&chrono::Utc))
                .num_seconds()
                .max(0),
        )
    }
}

/// The answer to a mailbox lease request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MailboxLease {
    /// This run holds the mailbox; pass the token to `release_mailbox_lease`.
    Acquired {
        /// The lease token.
        token: String,
        /// The mail an earlier run was reading when it ended without releasing the lease
        /// (killed: out of memory, a panic outside the parser's guard, the timeout).
        interrupted: Option<InFlightMail>,
    },
    /// Another run holds it until then (epoch seconds).
    Held(i64),
}

/// The mail a run is reading (fetch, parse, delivery), remembered in the state table before
/// its bytes are fetched, so that a run that dies on it leaves its name behind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InFlightMail {
    /// UIDVALIDITY of the folder.
    pub uid_validity: u32,
    /// The mail's UID.
    pub uid: u32,
}

/// A stored mailbox lease (see `DynamoStateStore::get_mailbox_lease`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRecord {
    /// When the run that took it took it (RFC 3339; None for leases written before this was
    /// recorded).
    pub started_at: Option<String>,
    /// Until when it holds the mailbox (epoch seconds).
    pub until: i64,
}

/// The state table, as the poll loop needs it.
#[async_trait]
pub trait StateStore: Send + Sync {
    /// Take `mailbox` for this run until `until` (epoch seconds): overlapping runs (a duplicate
    /// scheduler delivery, a manual run during a scheduled one, a run outlasting the interval)
    /// must not work on the same mail at once, or both POST it (two tickets wherever the ticket
    /// API ignores `Idempotency-Key`). A lease that ran out (a killed run) is taken over.
    async fn acquire_mailbox_lease(
        &self,
        mailbox: &str,
        until: i64,
    ) -> Result<MailboxLease, StoreError>;
    /// Give the lease back (best effort: it runs out by itself). This also forgets the mail in
    /// flight: the run ended normally.
    async fn release_mailbox_lease(&self, mailbox: &str, token: &str) -> Result<(), StoreError>;
    /// Remember, under the lease `token`, the mail this run is about to fetch and parse (the
    /// next mark replaces it; releasing the lease forgets it).
    async fn mark_in_flight(
        &self,
        mailbox: &str,
        token: &str,
        mail: InFlightMail,
    ) -> Result<(), StoreError>;
    /// Look up a dedupe record.
    async fn get_dedupe(&self, pk: &str) -> Result<Option<DedupeRecord>, StoreError>;
    /// Write a dedupe record.
    async fn put_dedupe(&self, record: &DedupeRecord) -> Result<(), StoreError>;
    /// Count one mail against a per-sender quota item `pk` (created on first use, expiring at
    /// `expires_at`): true when it was under `max` and is now counted, false when the quota is
    /// used up (nothing counted).
    async fn take_sender_quota(
        &self,
        pk: &str,
        max: u32,
        expires_at: i64,
    ) -> Result<bool, StoreError>;
    /// Read a mailbox's last status (UIDVALIDITY comparison).
    async fn get_status(&self, mailbox: &str) -> Result<Option<MailboxStatus>, StoreError>;
    /// Write a mailbox's last status.
    async fn put_status(&self, status: &MailboxStatus) -> Result<(), StoreError>;
    /// Load mailbox configurations: all (None) or the named ones. Each entry is a config or the
    /// reason that one mailbox is unusable.
    async fn load_mailboxes(
        &self,
        names: Option<&[String]>,
    ) -> Result<Vec<Result<MailboxConfig, ConfigError>>, StoreError>;
}

/// Builds (and caches) the ticket sink of a mailbox's target.
#[async_trait]
pub trait SinkFactory: Send + Sync {
    /// The sink for this mailbox (URL + credential secret). Error: why it cannot be built.
    async fn sink_for(&self, config: &MailboxConfig) -> Result<Arc<dyn TicketSink>, String>;
}
