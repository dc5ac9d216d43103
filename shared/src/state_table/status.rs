//! Mailbox status: `mailbox-status#<name>`, the last run's outcome ([`MailboxStatus`]).
//!
//! A warm process remembers the last status (it reads one from the table only once), and an
//! idle run whose status differs from the last written one only in timing fields
//! (`last_run_at`, `duration_ms`, `imap_round_trips`, `last_success_at`) is written at most
//! every [`STATUS_HEARTBEAT`]. Without that, 50 mailboxes polled every minute cost ~2.2 M status
//! writes and reads a month. The heartbeat metric comes from the remembered status, so it is
//! exact; the table's `last_success_at` may lag by up to [`STATUS_HEARTBEAT`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::item::{item_from, item_to, sdk_err};
use super::{DynamoStateStore, StoreError};

/// An idle mailbox's unchanged status is rewritten at least this often, so `last_run_at` in
/// the table (what `mailbridge status` shows) is at most this old while the poller runs.
pub const STATUS_HEARTBEAT: Duration = Duration::from_secs(600);

/// Per mailbox: the status this process last wrote (with when) or read (no time).
pub(super) type StatusCache = Arc<Mutex<HashMap<String, (MailboxStatus, Option<Instant>)>>>;

/// How one mailbox's run ended (stored as its snake_case name).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MailboxOutcome {
    /// Every mail it took on went somewhere.
    Ok,
    /// Stopped early (the deadline, `max_messages_per_run`, a ticket API not taking mail, a
    /// lease held by another run): the rest is left for the next run.
    Partial,
    /// The mailbox could not be polled (connect, login, a folder, the state table).
    Failed,
    /// The account's sign-in must be renewed by a person.
    NeedsReauth,
    /// The mailbox's configuration is unusable (or points where it may not).
    ConfigError,
    /// `enabled: false`.
    Disabled,
}

impl MailboxOutcome {
    /// The stored name: `ok`, `partial`, `failed`, `needs_reauth`, `config_error`, `disabled`.
    pub fn as_str(self) -> &'static str {
        match self {
            MailboxOutcome::Ok => "ok",
            MailboxOutcome::Partial => "partial",
            MailboxOutcome::Failed => "failed",
            MailboxOutcome::NeedsReauth => "needs_reauth",
            MailboxOutcome::ConfigError => "config_error",
            MailboxOutcome::Disabled => "disabled",
        }
    }
}

impl std::fmt::Display for MailboxOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The last run of one mailbox, for `mailbridge status`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MailboxStatus {
    /// Mailbox name.
    pub mailbox: String,
    /// How the run ended.
    pub outcome: MailboxOutcome,
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
        match self.outcome {
            MailboxOutcome::Ok => true,
            MailboxOutcome::Partial => self.retry_last_uids.is_empty() && !lease_held_elsewhere,
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

/// Whether `new` says nothing `old` did not, apart from the timing of the run.
fn same_news(old: &MailboxStatus, new: &MailboxStatus) -> bool {
    let timeless = |s: &MailboxStatus| MailboxStatus {
        last_run_at: String::new(),
        duration_ms: 0,
        imap_round_trips: 0,
        last_success_at: None,
        ..s.clone()
    };
    timeless(old) == timeless(new)
}

impl DynamoStateStore {
    pub(super) async fn read_status(
        &self,
        mailbox: &str,
    ) -> Result<Option<MailboxStatus>, StoreError> {
        if let Some((status, _)) = self.statuses.lock().expect("status cache").get(mailbox) {
            return Ok(Some(status.clone()));
        }
        let item = self
            .get(
                "GetItem mailbox-status",
                &format!("mailbox-status#{mailbox}"),
            )
            .await?;
        let status: Option<MailboxStatus> = item.as_ref().and_then(item_to);
        if let Some(status) = &status {
            self.statuses
                .lock()
                .expect("status cache")
                .insert(mailbox.to_string(), (status.clone(), None));
        }
        Ok(status)
    }

    pub(super) async fn write_status(&self, status: &MailboxStatus) -> Result<(), StoreError> {
        {
            let mut statuses = self.statuses.lock().expect("status cache");
            if let Some((written, Some(at))) = statuses.get_mut(&status.mailbox)
                && at.elapsed() < STATUS_HEARTBEAT
                && same_news(written, status)
            {
                // Not written, but remembered (with the time of the last write): the next
                // run carries over its history fields.
                *written = status.clone();
                return Ok(());
            }
        }
        self.client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item_from(
                &format!("mailbox-status#{}", status.mailbox),
                status,
            )))
            .send()
            .await
            .map_err(|e| sdk_err("PutItem mailbox-status", e))?;
        self.statuses.lock().expect("status cache").insert(
            status.mailbox.clone(),
            (status.clone(), Some(Instant::now())),
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_dynamodb::types::AttributeValue;

    #[test]
    fn only_timing_fields_make_an_idle_status_the_same_news() {
        let idle = MailboxStatus {
            mailbox: "m".into(),
            outcome: MailboxOutcome::Ok,
            reason: None,
            last_run_at: "2026-11-28T00:00:00Z".into(),
            duration_ms: 5,
            tickets_created: 0,
            parked: 0,
            duplicates: 0,
            skipped_auto_generated: 0,
            held: 0,
            deferred: 0,
            uid_validity: Some(7),
            imap_round_trips: 5,
            retry_last_uids: Vec::new(),
            last_success_at: None,
            first_run_at: None,
        };
        let later = MailboxStatus {
            last_run_at: "2026-11-28T00:01:00Z".into(),
            duration_ms: 9,
            imap_round_trips: 6,
            ..idle.clone()
        };
        assert!(same_news(&idle, &later));
        let ticket = MailboxStatus {
            tickets_created: 1,
            ..later.clone()
        };
        assert!(!same_news(&idle, &ticket));
        let failed = MailboxStatus {
            outcome: MailboxOutcome::Failed,
            reason: Some("connect".into()),
            ..later
        };
        assert!(!same_news(&idle, &failed));
    }

    #[test]
    fn status_round_trips_through_attributes() {
        let status = MailboxStatus {
            mailbox: "m".into(),
            outcome: MailboxOutcome::Ok,
            reason: None,
            last_run_at: "2026-11-28T00:00:00Z".into(),
            duration_ms: 5,
            tickets_created: 2,
            parked: 0,
            duplicates: 1,
            skipped_auto_generated: 0,
            held: 0,
            deferred: 0,
            uid_validity: Some(7),
            imap_round_trips: 9,
            retry_last_uids: vec![3],
            last_success_at: Some("2026-11-27T23:55:00Z".into()),
            first_run_at: Some("2026-11-01T08:00:00Z".into()),
        };
        let item = item_from("mailbox-status#m", &status);
        assert_eq!(
            item.get("pk"),
            Some(&AttributeValue::S("mailbox-status#m".into()))
        );
        assert_eq!(item.get("outcome"), Some(&AttributeValue::S("ok".into())));
        let back: MailboxStatus = item_to(&item).unwrap();
        assert_eq!(back, status);
    }
}
