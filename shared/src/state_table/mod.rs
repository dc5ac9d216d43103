//! The DynamoDB state table: one table for every record both functions and the operator CLI
//! keep, one file per record kind.
//!
//! The table (env `MAILBRIDGE_STATE_TABLE`) has partition key `pk` (S) and TTL attribute
//! `expires_at` (N, epoch seconds). Its items, by `pk`:
//!
//! | `pk` | record | file |
//! |---|---|---|
//! | `notification#<id>` | a notification's idempotency record: claimed, sent | [`idempotency`] |
//! | `mail#<mailbox>#<hash>` | a mail that became a ticket ([`DedupeRecord`]) | [`dedupe`] |
//! | `mail#<mailbox>#sender#<hash>#<YYYYMMDDHH>` | one sender's mails in a clock hour | [`sender_quota`] |
//! | `mailbox#<name>` | a mailbox's configuration, one attribute per field | [`mailboxes`] |
//! | `mailbox-index` | the names of the configured mailboxes (string set `names`) | [`mailboxes`] |
//! | `mailbox-status#<name>` | the last run's outcome ([`MailboxStatus`]) | [`status`] |
//! | `mailbox-lease#<name>` | which run works on a mailbox that has mail | [`lease`] |
//! | `graph-sync#<mailbox>` | a Graph mailbox's sync state ([`GraphSyncState`]) | [`graph_sync`] |
//! | `subscription#<id>` | a Graph subscription ([`SubscriptionRecord`]) | [`subscription`] |
//! | `mailbox-subscription#<mailbox>` | the same record, found by mailbox | [`subscription`] |
//! | `subscription-index` | the mailboxes with a subscription (string set `mailboxes`) | [`subscription`] |
//! | `poll-request#<mailbox>` | the poll-request gate ([`PollGate`]) | [`poll_request`] |
//!
//! Leases (notifications, mailboxes) are taken one way, [`lease`]: a conditional put that
//! returns the item it replaced, given back by a delete conditioned on the lease token.
//!
//! [`store`] holds [`DynamoStateStore`], the poller's store ([`StateStore`]), which is also the
//! adapter of the push ports ([`SubscriptionStore`], [`PollGate`]); [`item`] the conversion
//! between records and DynamoDB attributes.

pub mod dedupe;
pub mod graph_sync;
pub mod idempotency;
pub mod item;
pub mod lease;
pub mod mailboxes;
pub mod poll_request;
pub mod sender_quota;
pub mod status;
pub mod store;
pub mod subscription;

pub use dedupe::DedupeRecord;
pub use graph_sync::{GraphSyncState, GraphSyncStore, PendingMessage};
pub use idempotency::{
    Claim, DEFAULT_COMPLETED_TTL, DynamoIdempotencyStore, IdempotencyStore,
    InMemoryIdempotencyStore, notification_key,
};
pub use lease::{InFlightMail, LeaseRecord, MailboxLease};
pub use mailboxes::{MAILBOX_INDEX_KEY, PutConfigError, delete_mailbox_config, put_mailbox_config};
pub use poll_request::{GATE_STALE_AFTER, PollGate, poll_request_key};
pub use status::{MailboxOutcome, MailboxStatus, STATUS_HEARTBEAT};
pub use store::DynamoStateStore;
pub use subscription::{
    SUBSCRIPTION_INDEX_KEY, SubscriptionRecord, SubscriptionStore, mailbox_subscription_key,
    subscription_key,
};

use async_trait::async_trait;

use crate::mailbox::{ConfigError, MailboxConfig};

/// The state table could not be read or written (what the SDK said, or an item that is not what
/// this code writes). Transient: the caller leaves its work for the next run or a retry.
#[derive(Clone, Debug, thiserror::Error)]
#[error("state table {operation} failed: {detail}")]
pub struct StoreError {
    /// What was attempted, with the table when the caller knows it
    /// (`mailbridge-state: claim notification#123`).
    pub operation: String,
    /// What failed.
    pub detail: String,
}

impl crate::error::Classify for StoreError {
    fn class(&self) -> crate::error::ErrorClass {
        crate::error::ErrorClass::Transient
    }
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
    /// The dedupe records of `pks` that exist, by `pk` (one round trip per 100 keys).
    async fn get_dedupes(
        &self,
        pks: &[String],
    ) -> Result<std::collections::HashMap<String, DedupeRecord>, StoreError> {
        let mut found = std::collections::HashMap::new();
        for pk in pks {
            if let Some(record) = self.get_dedupe(pk).await? {
                found.insert(pk.clone(), record);
            }
        }
        Ok(found)
    }
    /// Write dedupe records (one round trip per 25).
    async fn put_dedupes(&self, records: &[DedupeRecord]) -> Result<(), StoreError> {
        for record in records {
            self.put_dedupe(record).await?;
        }
        Ok(())
    }
    /// Take up to `wanted` units of the per-sender quota item `pk` (created on first use,
    /// expiring at `expires_at`), whose count never passes `max`: all of them when they fit,
    /// else what is left, 0 when the quota is used up. One conditional update, two when only
    /// some fit ([`sender_quota::take_what_fits`]). Returns the units taken.
    async fn take_sender_quota(
        &self,
        pk: &str,
        wanted: u32,
        max: u32,
        expires_at: i64,
    ) -> Result<u32, StoreError>;
    /// Give back `units` taken from the per-sender quota item `pk` and not used.
    async fn give_back_sender_quota(&self, pk: &str, units: u32) -> Result<(), StoreError>;
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
