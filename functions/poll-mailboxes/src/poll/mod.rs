//! One poll tick: [`poll_once`] polls every configured mailbox (bounded concurrency) and reports
//! what happened to each; [`poll_mailbox`] is the per-mailbox loop.
//!
//! Per mailbox: IMAP-audience token → connect + `AUTHENTICATE XOAUTH2` → SELECT → UID SEARCH →
//! sizes and INTERNALDATEs in one round trip → the messages in UID order, a window at a time
//! (`windows::WINDOW_MAILS`, bounded by the memory budget; a large mail alone): the window named
//! as the mail in flight, its mails fetched together and converted, one dedupe lookup, one
//! sender-quota update per sender, the POSTs with `Idempotency-Key` (conversations side by side,
//! each in order of arrival: [`crate::conversation`]), one dedupe write, and only then the
//! after-actions, one command per folder (docs/mailboxes.md, "Windows and the order of
//! tickets").
//!
//! The files, in the order a mail meets them:
//! - here: the tick over all mailboxes, its dependencies ([`PollDeps`]) and report;
//! - `mailbox_run`: one mailbox's run: token and connection, lease, the listing, and the
//!   status it ends with;
//! - `windows`: the mails a run works on, a window at a time (which mails form a window, reading
//!   it, and the pipeline that reads the next window while the one before is posted);
//! - `payload`: a read mail → its ticket payload and dedupe key (or a note on what could not be
//!   read, or the reason machine mail is set aside);
//! - `delivery`: posting a window: dedupe lookup, sender quota, the POSTs, dedupe records;
//! - `after_actions`: settling a window: the after-actions, one command per folder, and the
//!   counts.
//!
//! # Nothing is lost
//! - Ticket API down / throttled beyond the deadline: the mail is left as it was, the mailbox
//!   stops for this run (the next mails would fail the same way) and the next run retries.
//! - Unparseable or oversize mail: a ticket with what could be read and a `problem` note (the raw
//!   mail attached when under the attachment cap), then moved to the failed folder.
//! - Ticket API rejects a payload (4xx): the mail is moved to the failed folder with the reason
//!   logged, so one poison mail never blocks the rest.
//! - Connection dropped at any point: nothing after the last completed step happened; a mail
//!   whose ticket was accepted but not yet moved has a dedupe record, so the next run only applies
//!   the after-action. If the record write itself was lost, the retried POST carries the same
//!   `Idempotency-Key`.
//! - UIDVALIDITY changes (folder recreated) do not matter: dedupe is by content, not UID.
//!
//! # Machine mail never opens a ticket
//! See [`crate::machine_mail`]: what is set aside instead of posted, and why.

mod after_actions;
mod delivery;
mod mailbox_run;
mod payload;
mod windows;

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use mailbridge::token::AccessTokenSource;
use serde::Serialize;
use tokio::time::Instant;

use mailbridge::mailbox::{MailboxConfig, TargetPolicy};
use mailbridge::state_table::{MailboxOutcome, MailboxStatus, StateStore, StoreError};

use crate::convert::ParseContext;
use crate::ports::{MailboxConnector, SinkFactory};

pub use mailbox_run::{mailbox_audience, poll_mailbox};

/// Everything a tick needs, built once per cold start.
#[derive(Clone)]
pub struct PollDeps {
    /// Access tokens (IMAP audience).
    pub tokens: Arc<dyn AccessTokenSource>,
    /// IMAP connections.
    pub connector: Arc<dyn MailboxConnector>,
    /// The state table.
    pub state: Arc<dyn StateStore>,
    /// Ticket sinks per target.
    pub sinks: Arc<dyn SinkFactory>,
    /// Parser inputs.
    pub parse: ParseContext,
    /// Mailboxes polled at once.
    pub max_concurrent_mailboxes: usize,
    /// Stop starting new messages when less than this is left before the deadline.
    pub deadline_margin: Duration,
    /// Dedupe record lifetime.
    pub dedupe_ttl: Duration,
    /// The hosts a mailbox configuration may point at (checked again on every read).
    pub targets: TargetPolicy,
    /// How large a mail may be read whole, and how much of the memory mails read at once
    /// may take (from `AWS_LAMBDA_FUNCTION_MEMORY_SIZE`).
    pub memory: Arc<crate::memory::MemoryBudget>,
}

/// What one tick did.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct PollReport {
    /// One status per mailbox considered (also written to the state table).
    pub mailboxes: Vec<MailboxStatus>,
    /// Tickets created.
    pub tickets_created: u32,
    /// Mails parked in the failed folder.
    pub parked: u32,
    /// Machine mail moved to the auto-generated folder without a ticket.
    pub skipped_auto_generated: u32,
    /// Mail over its sender's quota, moved to the held folder without a ticket.
    pub held: u32,
    /// Mailboxes that failed (any reason, including re-auth, bad config, and a ticket API that
    /// did not take their mail).
    pub mailboxes_failed: u32,
    /// Mailboxes whose account needs re-authentication.
    pub accounts_need_reauth: u32,
    /// The heartbeat: over the enabled mailboxes this run considered (an invalid configuration
    /// counts as enabled), the longest time in seconds since one was last polled successfully
    /// (never successful: since its first recorded run). 0 when there are none.
    pub oldest_success_age_seconds: u64,
}

impl PollReport {
    /// `Processed(n)` / `Empty`, STYLE point 8.
    pub fn outcome(&self) -> PollOutcome {
        let handled = self.tickets_created + self.parked + self.skipped_auto_generated + self.held;
        if handled == 0 {
            PollOutcome::Empty
        } else {
            PollOutcome::Processed(handled)
        }
    }
}

/// The short answer of a tick.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PollOutcome {
    /// This many mails became tickets, were parked, or (machine mail) were set aside unticketed.
    Processed(u32),
    /// Nothing to do.
    Empty,
}

/// Poll all configured mailboxes (or only `names`) once.
pub async fn poll_once(
    deps: &PollDeps,
    names: Option<&[String]>,
    deadline: Instant,
) -> Result<PollReport, StoreError> {
    let mut configs = deps.state.load_mailboxes(None).await?;
    // Whoever can write the state table must not be able to send the account's token or the
    // mail anywhere: the allowlists are checked on every read, not only when the CLI wrote it.
    for entry in &mut configs {
        if let Ok(config) = entry
            && let Err(refused) = deps.targets.check(config)
        {
            *entry = Err(refused);
        }
    }
    if let Some(wanted) = names {
        // A manual run may name mailboxes by configuration name or by address.
        let matches = |entry: &Result<MailboxConfig, mailbridge::mailbox::ConfigError>, w: &str| {
            match entry {
                Ok(c) => c.name == w || c.user.eq_ignore_ascii_case(w),
                Err(e) => e.mailbox == w,
            }
        };
        let unknown: Vec<_> = wanted
            .iter()
            .filter(|w| !configs.iter().any(|c| matches(c, w)))
            .map(|w| {
                Err(mailbridge::mailbox::ConfigError {
                    mailbox: w.clone(),
                    field: "(name)".into(),
                    problem: "matches no configured mailbox (name or address)".into(),
                })
            })
            .collect();
        configs.retain(|c| wanted.iter().any(|w| matches(c, w)));
        configs.extend(unknown);
    }
    let concurrency = deps.max_concurrent_mailboxes.max(1);
    let statuses: Vec<(MailboxStatus, bool)> = futures::stream::iter(configs)
        .map(|entry| async move {
            let started = chrono::Utc::now();
            let name = match &entry {
                Ok(config) => config.name.as_str(),
                Err(config_error) => config_error.mailbox.as_str(),
            };
            // The last run's status: its history fields carry over, its UIDVALIDITY and
            // left-in-place UIDs steer this run.
            let previous = deps.state.get_status(name).await.unwrap_or_else(|e| {
                tracing::warn!(mailbox = %name, error = %e, "could not read the last mailbox status");
                None
            });
            let counts_for_heartbeat = !matches!(&entry, Ok(config) if !config.enabled);
            let status = match entry {
                Ok(config) if !config.enabled => {
                    let mut status = new_status(&config.name, started);
                    status.outcome = MailboxOutcome::Disabled;
                    status.carry_history(previous.as_ref(), false);
                    status
                }
                Ok(config) => poll_mailbox(deps, &config, deadline, previous.as_ref()).await,
                Err(config_error) => {
                    tracing::error!(
                        mailbox = %config_error.mailbox,
                        field = %config_error.field,
                        reason = %config_error,
                        "mailbox configuration invalid; skipped"
                    );
                    let mut status = new_status(&config_error.mailbox, started);
                    status.outcome = MailboxOutcome::ConfigError;
                    status.reason = Some(config_error.to_string());
                    status.carry_history(previous.as_ref(), false);
                    status
                }
            };
            if let Err(e) = deps.state.put_status(&status).await {
                tracing::warn!(mailbox = %status.mailbox, error = %e, "could not record mailbox status");
            }
            (status, counts_for_heartbeat)
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    let mut report = PollReport::default();
    let now = chrono::Utc::now();
    for (status, counts_for_heartbeat) in statuses {
        if counts_for_heartbeat {
            // Unreadable times (never the case for statuses written by this code) count as
            // "no success": a heartbeat must err towards alarming.
            let age = status
                .seconds_without_success(now)
                .map_or(u64::MAX, |s| s as u64);
            report.oldest_success_age_seconds = report.oldest_success_age_seconds.max(age);
        }
        report.tickets_created += status.tickets_created;
        report.parked += status.parked;
        report.skipped_auto_generated += status.skipped_auto_generated;
        report.held += status.held;
        // `partial` because the ticket API failed on mail (down, 401/403/404, a payload it
        // keeps failing on) is a failure too: mail is not becoming tickets, and the
        // MailboxPollFailed alarm must say so. (`partial` at the deadline or at
        // max_messages_per_run is not.)
        let ticket_api_failing =
            status.outcome == MailboxOutcome::Partial && !status.retry_last_uids.is_empty();
        if ticket_api_failing
            || matches!(
                status.outcome,
                MailboxOutcome::Failed | MailboxOutcome::NeedsReauth | MailboxOutcome::ConfigError
            )
        {
            report.mailboxes_failed += 1;
        }
        if status.outcome == MailboxOutcome::NeedsReauth {
            report.accounts_need_reauth += 1;
        }
        report.mailboxes.push(status);
    }
    report.mailboxes.sort_by(|a, b| a.mailbox.cmp(&b.mailbox));
    Ok(report)
}

fn new_status(mailbox: &str, started: chrono::DateTime<chrono::Utc>) -> MailboxStatus {
    MailboxStatus {
        mailbox: mailbox.to_string(),
        outcome: MailboxOutcome::Ok,
        reason: None,
        last_run_at: started.to_rfc3339(),
        duration_ms: 0,
        tickets_created: 0,
        parked: 0,
        duplicates: 0,
        skipped_auto_generated: 0,
        held: 0,
        deferred: 0,
        uid_validity: None,
        imap_round_trips: 0,
        retry_last_uids: Vec::new(),
        last_success_at: None,
        first_run_at: None,
    }
}
