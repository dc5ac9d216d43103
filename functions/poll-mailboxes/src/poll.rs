//! One poll tick: [`poll_once`] polls every configured mailbox (bounded concurrency) and reports
//! what happened to each; [`poll_mailbox`] is the per-mailbox loop.
//!
//! Per mailbox: IMAP-audience token → connect + `AUTHENTICATE XOAUTH2` → SELECT → UID SEARCH →
//! sizes and INTERNALDATEs in one round trip → the messages in UID order, a window at a time
//! ([`WINDOW_MAILS`], bounded by the memory budget; a large mail alone): the window named as
//! the mail in flight, its mails fetched together and converted, one dedupe lookup, the POSTs
//! with `Idempotency-Key` (conversations side by side, each in order of arrival:
//! [`crate::conversation`]), one dedupe write, and only then the after-actions, one command
//! per folder (docs/mailboxes.md, "Windows and the order of tickets").
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

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use futures::StreamExt as _;
use mailbridge::error::{Classify as _, ErrorClass};
use mailbridge::imap::{ImapError, ListedMessage, SearchScope, Uid};
use mailbridge::mail::AutoReason;
use mailbridge::ticket_sink::{TICKET_PAYLOAD_SCHEMA, TicketPayload, TicketSink, TicketSinkError};
use mailbridge::token::{AccessTokenSource, Audience, TokenError};
use serde::Serialize;
use tokio::sync::SemaphorePermit;
use tokio::time::Instant;

use mailbridge::mailbox::{AfterAction, MailboxConfig, Protocol, TargetPolicy};
use mailbridge::state_table::{
    DedupeRecord, InFlightMail, MailboxLease, MailboxOutcome, MailboxStatus, StateStore, StoreError,
};

use crate::convert::{self, ParseContext};
use crate::dedupe::{self, DedupeKey};
use crate::ports::{Mailbox, MailboxConnector, SinkFactory};

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

/// How far a run got with a mailbox it reached.
enum Progress {
    /// It worked on the mailbox (or found nothing to do).
    Worked,
    /// Another run holds the mailbox's lease: its mail is left to that run.
    LeaseHeldElsewhere,
}

/// Why a mailbox stopped early.
enum Stop {
    Setup(String),
    Imap(ImapError),
    TicketApi(TicketSinkError),
    Store(StoreError),
}

#[derive(Clone, Copy)]
enum Handled {
    Ticketed,
    Duplicate,
    Parked,
    SkippedAutoGenerated,
    Held,
}

async fn connect(
    deps: &PollDeps,
    config: &MailboxConfig,
) -> Result<Box<dyn Mailbox>, (MailboxOutcome, String)> {
    let token_failure = |e: TokenError| {
        let outcome = if e.class() == ErrorClass::NeedsReauth {
            MailboxOutcome::NeedsReauth
        } else {
            MailboxOutcome::Failed
        };
        (outcome, e.to_string())
    };
    let audience = mailbox_audience(config);
    let token = deps
        .tokens
        .access_token(&config.account, audience)
        .await
        .map_err(token_failure)?;
    match deps.connector.connect(config, &token.secret).await {
        Ok(mailbox) => Ok(mailbox),
        Err(ImapError::AuthenticateFailed { .. }) => {
            // The cached token may be stale or revoked: refresh once and retry.
            deps.tokens.invalidate(&config.account, audience);
            let token = deps
                .tokens
                .access_token(&config.account, audience)
                .await
                .map_err(token_failure)?;
            deps.connector
                .connect(config, &token.secret)
                .await
                .map_err(|e| (MailboxOutcome::Failed, mailbox_reason(config, &e)))
        }
        Err(e) => Err((MailboxOutcome::Failed, mailbox_reason(config, &e))),
    }
}

/// The token audience a mailbox is read with: IMAP, or Graph with `Mail.ReadWrite` (and
/// `Mail.ReadWrite.Shared` for a shared mailbox). Only Graph mailboxes ask for the Graph mail
/// permissions.
pub fn mailbox_audience(config: &MailboxConfig) -> Audience {
    match (config.protocol, config.shared) {
        (Protocol::Imap, _) => Audience::Imap,
        (Protocol::Graph, false) => Audience::GraphMailbox,
        (Protocol::Graph, true) => Audience::GraphSharedMailbox,
    }
}

fn mailbox_reason(config: &MailboxConfig, error: &ImapError) -> String {
    if config.protocol == Protocol::Imap {
        return imap_reason(error);
    }
    match error {
        ImapError::AuthenticateFailed { .. } => format!(
            "{error} — check that the account consented to Mail.ReadWrite (Microsoft Graph, delegated), and for a shared mailbox (`shared: true`) to Mail.ReadWrite.Shared with Full Access on the mailbox"
        ),
        ImapError::NotConnected { .. } => format!(
            "{error} — Graph answered MailboxNotEnabledForRESTAPI: the mailbox has no Exchange Online licence, is inactive or on-premises"
        ),
        _ => error.to_string(),
    }
}

fn imap_reason(error: &ImapError) -> String {
    match error {
        ImapError::AuthenticateFailed { .. } => format!(
            "{error} — check that the account consented to IMAP.AccessAsUser.All, that IMAP is enabled for the mailbox, and for a shared mailbox that the signing-in user has FullAccess"
        ),
        ImapError::NotConnected { .. } => format!(
            "{error} — enable IMAP for this mailbox (Exchange admin center → mailbox → Email apps) or check the mailbox exists"
        ),
        _ => error.to_string(),
    }
}

/// Poll one mailbox; never fails: the status says what happened. `previous` is the mailbox's
/// last recorded status (history fields, UIDVALIDITY, UIDs to try last).
pub async fn poll_mailbox(
    deps: &PollDeps,
    config: &MailboxConfig,
    deadline: Instant,
    previous: Option<&MailboxStatus>,
) -> MailboxStatus {
    let started = chrono::Utc::now();
    let clock = Instant::now();
    let mut status = new_status(&config.name, started);
    let finish = |mut status: MailboxStatus, lease_held_elsewhere: bool| {
        status.duration_ms = clock.elapsed().as_millis() as u64;
        let succeeded = status.succeeded(lease_held_elsewhere);
        status.carry_history(previous, succeeded);
        match status.outcome {
            MailboxOutcome::Ok => tracing::info!(
                mailbox = %status.mailbox,
                tickets = status.tickets_created,
                parked = status.parked,
                duplicates = status.duplicates,
                skipped_auto_generated = status.skipped_auto_generated,
                "mailbox polled"
            ),
            MailboxOutcome::Partial => tracing::warn!(
                mailbox = %status.mailbox,
                reason = status.reason.as_deref().unwrap_or(""),
                deferred = status.deferred,
                "mailbox partly polled; the rest waits for the next run"
            ),
            _ => tracing::error!(
                mailbox = %status.mailbox,
                outcome = %status.outcome,
                reason = status.reason.as_deref().unwrap_or(""),
                "mailbox poll failed"
            ),
        }
        status
    };
    let mut mailbox = match connect(deps, config).await {
        Ok(m) => m,
        Err((outcome, reason)) => {
            status.outcome = outcome;
            status.reason = Some(reason);
            return finish(status, false);
        }
    };
    let result = run_mailbox(
        deps,
        config,
        deadline,
        mailbox.as_mut(),
        &mut status,
        previous,
    )
    .await;
    status.imap_round_trips = mailbox.round_trips();
    let lease_held_elsewhere = matches!(result, Ok(Progress::LeaseHeldElsewhere));
    if let Err(stop) = result {
        match stop {
            Stop::Setup(reason) => {
                status.outcome = MailboxOutcome::Failed;
                status.reason = Some(reason);
            }
            Stop::Imap(e) => {
                status.outcome = MailboxOutcome::Failed;
                status.reason = Some(mailbox_reason(config, &e));
            }
            Stop::Store(e) => {
                status.outcome = MailboxOutcome::Failed;
                status.reason = Some(e.to_string());
            }
            Stop::TicketApi(e) => {
                status.outcome = MailboxOutcome::Partial;
                status.reason = Some(if status.retry_last_uids.is_empty() {
                    format!("mail left in place for the next run: {e}")
                } else {
                    format!(
                        "mail left in place for the next run (UIDs {:?} are tried after the others next time): {e}",
                        status.retry_last_uids
                    )
                });
            }
        }
    }
    mailbox.logout().await;
    finish(status, lease_held_elsewhere)
}

async fn run_mailbox(
    deps: &PollDeps,
    config: &MailboxConfig,
    deadline: Instant,
    mailbox: &mut dyn Mailbox,
    status: &mut MailboxStatus,
    previous: Option<&MailboxStatus>,
) -> Result<Progress, Stop> {
    let sink = deps.sinks.sink_for(config).await.map_err(Stop::Setup)?;
    // A mailbox whose listing writes state (Graph's delta round) lists under the lease;
    // an IMAP mailbox takes it only once there is mail, so an idle poll writes nothing.
    let mut lease = None;
    if mailbox.lists_under_lease() {
        match take_lease(deps, config, deadline, status, 0).await? {
            Some(taken) => lease = Some(taken),
            None => return Ok(Progress::LeaseHeldElsewhere),
        }
    }
    let result = list_and_work(
        deps,
        config,
        deadline,
        mailbox,
        status,
        previous,
        sink.as_ref(),
        &mut lease,
    )
    .await;
    if let Some((token, _)) = &lease
        && let Err(e) = deps.state.release_mailbox_lease(&config.name, token).await
    {
        tracing::warn!(mailbox = %config.name, error = %e, "could not release the mailbox lease; it runs out at the deadline");
    }
    result
}

/// The mailbox's lease until this invocation's deadline (when Lambda would have stopped it),
/// with the mail an earlier run died reading; None when another run holds it (`status` says
/// so, with `waiting` mails left to that run).
async fn take_lease(
    deps: &PollDeps,
    config: &MailboxConfig,
    deadline: Instant,
    status: &mut MailboxStatus,
    waiting: usize,
) -> Result<Option<(String, Option<InFlightMail>)>, Stop> {
    let until = chrono::Utc::now().timestamp()
        + deadline.saturating_duration_since(Instant::now()).as_secs() as i64
        + 5;
    match deps
        .state
        .acquire_mailbox_lease(&config.name, until)
        .await
        .map_err(Stop::Store)?
    {
        MailboxLease::Acquired { token, interrupted } => Ok(Some((token, interrupted))),
        MailboxLease::Held(held_until) => {
            status.outcome = MailboxOutcome::Partial;
            status.deferred = waiting as u32;
            status.reason = Some(format!(
                "another run is polling this mailbox (lease until {}); its mail is left to that run",
                chrono::DateTime::from_timestamp(held_until, 0)
                    .map(|t| t.to_rfc3339())
                    .unwrap_or_else(|| held_until.to_string())
            ));
            Ok(None)
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn list_and_work(
    deps: &PollDeps,
    config: &MailboxConfig,
    deadline: Instant,
    mailbox: &mut dyn Mailbox,
    status: &mut MailboxStatus,
    previous: Option<&MailboxStatus>,
    sink: &dyn TicketSink,
    lease: &mut Option<(String, Option<InFlightMail>)>,
) -> Result<Progress, Stop> {
    let folder = mailbox.select(&config.folder).await.map_err(Stop::Imap)?;
    status.uid_validity = Some(folder.uid_validity);
    if let Some(old) = previous.and_then(|p| p.uid_validity)
        && old != folder.uid_validity
    {
        tracing::warn!(
            mailbox = %config.name,
            old_uid_validity = old,
            new_uid_validity = folder.uid_validity,
            "UIDVALIDITY changed (folder recreated or restored); dedupe records prevent duplicate tickets"
        );
    }
    if folder.exists == 0 {
        return Ok(Progress::Worked);
    }
    // Mails the last run could not finish (same UIDVALIDITY) go after the others.
    let retry_last: Vec<Uid> = previous
        .filter(|p| p.uid_validity == Some(folder.uid_validity))
        .map(|p| p.retry_last_uids.clone())
        .unwrap_or_default();
    let scope = match config.after_action {
        AfterAction::MarkSeen => SearchScope::UnseenUndeleted,
        _ => SearchScope::Undeleted,
    };
    let mut uids = mailbox
        .search(scope, config.since)
        .await
        .map_err(Stop::Imap)?;
    if let Some(since) = config.since
        && !uids.is_empty()
    {
        // The search may be by the day: the exact time decides. Older mail is left as it is.
        let listed = mailbox.list_messages(&uids).await.map_err(Stop::Imap)?;
        let before = uids.len();
        uids = listed
            .iter()
            .filter(|m| m.received_at.is_none_or(|at| at >= since))
            .map(|m| m.uid)
            .collect();
        if uids.len() < before {
            tracing::debug!(
                mailbox = %config.name,
                ignored = before - uids.len(),
                since = %since.to_rfc3339(),
                "mail received before the mailbox's `since` left untouched"
            );
        }
    }
    if uids.is_empty() {
        return Ok(Progress::Worked);
    }
    // Mail to work on: only one run at a time may (see `StateStore::acquire_mailbox_lease`).
    if lease.is_none() {
        match take_lease(deps, config, deadline, status, uids.len()).await? {
            Some(taken) => *lease = Some(taken),
            None => return Ok(Progress::LeaseHeldElsewhere),
        }
    }
    let (token, interrupted) = lease.as_ref().expect("taken above");
    work_on(
        deps,
        config,
        deadline,
        mailbox,
        status,
        sink,
        (folder.uid_validity, token, *interrupted),
        retry_last,
        uids,
    )
    .await
    .map(|()| Progress::Worked)
}

/// Mails read and delivered together: one in-flight mark, one dedupe lookup, one dedupe write
/// (per 25) and one after-action command per folder for the whole window.
const WINDOW_MAILS: usize = 32;
/// A mail read whole above this size is a window of its own, named alone as the mail in
/// flight: a mail large enough to end a run (memory, time) is parked by the next run unread.
const ALONE_ABOVE_BYTES: u64 = 1024 * 1024;
/// Ticket POSTs of one mailbox in flight at once (each of a different conversation).
const POSTS_IN_FLIGHT: usize = 4;

/// The ticket API as one mailbox's run sees it. A run posts one ticket at a time until the API
/// accepted one, then up to [`POSTS_IN_FLIGHT`]; after two failures with no success between
/// them no further POST is started (the API itself is failing: the rest waits for the next
/// run). So an API that is down sees two POSTs per run, as when they went one by one.
struct PostGate {
    slots: tokio::sync::Semaphore,
    opened: std::sync::atomic::AtomicBool,
    failures_in_a_row: std::sync::atomic::AtomicU32,
}

impl PostGate {
    fn new() -> Self {
        PostGate {
            slots: tokio::sync::Semaphore::new(1),
            opened: Default::default(),
            failures_in_a_row: Default::default(),
        }
    }

    fn api_failing(&self) -> bool {
        self.failures_in_a_row
            .load(std::sync::atomic::Ordering::SeqCst)
            >= 2
    }

    fn taken(&self) {
        self.failures_in_a_row
            .store(0, std::sync::atomic::Ordering::SeqCst);
        if !self.opened.swap(true, std::sync::atomic::Ordering::SeqCst) {
            self.slots.add_permits(POSTS_IN_FLIGHT - 1);
        }
    }

    fn failed(&self) {
        self.failures_in_a_row
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
}

#[allow(clippy::too_many_arguments)]
async fn work_on(
    deps: &PollDeps,
    config: &MailboxConfig,
    deadline: Instant,
    mailbox: &mut dyn Mailbox,
    status: &mut MailboxStatus,
    sink: &dyn TicketSink,
    (uid_validity, lease, interrupted): (u32, &str, Option<InFlightMail>),
    retry_last: Vec<Uid>,
    mut uids: Vec<Uid>,
) -> Result<(), Stop> {
    // A mail an earlier run was reading when it died (out of memory, a panic outside the
    // parser's guard, the timeout) is not read again: it could end this run the same way, for
    // every mailbox, run after run. It goes to the failed folder unread, with the reason logged.
    // A window of small mails is read again one mail at a time (each named alone), so that
    // the one that ends a run is known the next time.
    let mut one_by_one: Vec<Uid> = Vec::new();
    if let Some(killer) = interrupted
        && killer.uid_validity == uid_validity
    {
        if !killer.is_one_mail() {
            one_by_one = uids
                .iter()
                .copied()
                .filter(|u| (killer.uid..=killer.last_uid).contains(u))
                .collect();
            tracing::warn!(
                mailbox = %config.name,
                first_uid = killer.uid,
                last_uid = killer.last_uid,
                "a run ended while reading this window of mails: they are read one by one this time"
            );
        } else if let Some(at) = uids.iter().position(|u| *u == killer.uid) {
            uids.remove(at);
            mailbox
                .move_to(killer.uid, &config.failed_folder)
                .await
                .map_err(Stop::Imap)?;
            status.parked += 1;
            tracing::error!(
                mailbox = %config.name,
                uid = killer.uid,
                folder = %config.failed_folder,
                "a run ended while reading this mail (out of memory, a crash or the timeout): parked unread in the failed folder, no ticket made, so it cannot end every run"
            );
            if uids.is_empty() {
                return Ok(());
            }
        }
    }
    let total = uids.len();
    // Stable: UID order otherwise. Before the cut, so a small max_messages_per_run cannot
    // keep picking the same failing mail.
    uids.sort_by_key(|uid| retry_last.contains(uid));
    uids.truncate(config.max_messages_per_run as usize);
    let beyond_limit = (total - uids.len()) as u32;
    let mut listed = mailbox.list_messages(&uids).await.map_err(Stop::Imap)?;
    listed.sort_by_key(|m| retry_last.contains(&m.uid)); // listed in UID order
    let stop_starting_at = deadline
        .checked_sub(deps.deadline_margin)
        .unwrap_or_else(Instant::now);
    // The POST may use most of the margin, leaving time for the after-action.
    let post_deadline = deadline
        .checked_sub(deps.deadline_margin / 3)
        .unwrap_or_else(Instant::now);
    let limit = config
        .max_message_bytes
        .min(deps.memory.max_message_bytes());
    // A ticket API failure on one mail may be that mail's own (a payload the API always answers
    // 5xx or times out on): the next mail is tried. A second failure in a row means the API
    // itself is failing: stop, the rest waits for the next run.
    let mut left_in_place: Option<TicketSinkError> = None;
    let gate = PostGate::new();
    // Mail left for the next run when stopping at `index`: this one and the rest of the list,
    // those beyond max_messages_per_run, and those the ticket API did not take so far.
    let deferred_from = |index: usize, status: &MailboxStatus| {
        (listed.len() - index) as u32 + beyond_limit + status.retry_last_uids.len() as u32
    };
    // The pipeline: while one window's tickets are posted, the next window is read (fetched and
    // parsed) on the connection; then the first is settled (its after-actions) and the next one
    // posted. Two windows at most, both within the memory budget.
    let mut index = 0;
    let mut in_hand: Option<(ReadWindow<'_>, usize)> = None;
    loop {
        let deadline_near = Instant::now() >= stop_starting_at;
        let next = if index < listed.len() && !deadline_near {
            next_window(
                deps,
                &listed[index..],
                limit,
                &one_by_one,
                in_hand.is_none(),
            )
            .await
        } else {
            None
        };
        if in_hand.is_none() && next.is_none() {
            if index < listed.len() {
                status.deferred = deferred_from(index, status);
                status.outcome = MailboxOutcome::Partial;
                status.reason = Some(deadline_reason(&left_in_place, status));
                return Ok(());
            }
            break;
        }
        let next_first = index;
        index += next.as_ref().map_or(0, Vec::len);
        let (read_next, delivered) = tokio::join!(
            async {
                match next {
                    Some(window) => Some(
                        read_window(deps, config, mailbox, (uid_validity, lease), window, limit)
                            .await,
                    ),
                    None => None,
                }
            },
            async {
                match &in_hand {
                    Some((read, _)) => Some(
                        deliver_window(
                            deps,
                            config,
                            (sink, &gate),
                            uid_validity,
                            &read.mails,
                            (stop_starting_at, post_deadline),
                        )
                        .await,
                    ),
                    None => None,
                }
            }
        );
        if let (Some((read, first)), Some(delivered)) = (in_hand.take(), delivered) {
            let outcomes = match delivered {
                Ok(delivered) => {
                    settle_window(config, mailbox, status, &read.mails, delivered).await
                }
                Err(stop) => Err(stop),
            }
            .inspect_err(|_| status.deferred = deferred_from(first, status))?;
            drop(read);
            // In the order of arrival: what the ticket API made of each mail.
            let (mut not_started, mut not_tried) = (0, 0);
            for (uid, outcome) in outcomes {
                match outcome {
                    PostOutcome::Accepted => {}
                    PostOutcome::NotStarted => not_started += 1,
                    PostOutcome::NotTried => not_tried += 1,
                    PostOutcome::HeldBack => status.retry_last_uids.push(uid),
                    PostOutcome::Failed(e) => {
                        status.retry_last_uids.push(uid);
                        tracing::warn!(
                            mailbox = %config.name,
                            uid,
                            reason = %e,
                            "ticket API did not take this mail; left in place, trying the next one (it goes after the others next run)"
                        );
                        left_in_place = Some(e);
                    }
                }
            }
            // Left for the next run when stopping here: the window read ahead and the rest.
            let rest = deferred_from(next_first, status) + not_started + not_tried;
            if gate.api_failing() {
                status.deferred = rest;
                return Err(Stop::TicketApi(
                    left_in_place.expect("a failure was recorded"),
                ));
            }
            if not_started > 0 {
                status.deferred = rest;
                status.outcome = MailboxOutcome::Partial;
                status.reason = Some(deadline_reason(&left_in_place, status));
                return Ok(());
            }
        }
        match read_next {
            Some(Ok(read)) => in_hand = Some((read, next_first)),
            Some(Err(stop)) => {
                status.deferred = deferred_from(next_first, status);
                return Err(stop);
            }
            None => {}
        }
    }
    status.deferred = beyond_limit + status.retry_last_uids.len() as u32;
    if let Some(e) = left_in_place {
        return Err(Stop::TicketApi(e));
    }
    if beyond_limit > 0 {
        status.outcome = MailboxOutcome::Partial;
        status.reason = Some(format!(
            "max_messages_per_run ({}) reached; the rest waits for the next run",
            config.max_messages_per_run
        ));
    }
    Ok(())
}

/// What became of a mail of a window, for the failures-in-a-row rule and the next run.
enum PostOutcome {
    /// Settled: accepted, or a duplicate, held, parked, set aside as machine mail.
    Accepted,
    /// Not taken (down, throttled, failing on it): left in place.
    Failed(TicketSinkError),
    /// Not posted because a mail before it in its conversation was not taken: left in place
    /// with it, and tried after it next run.
    HeldBack,
    /// Not posted: the deadline is near. Left in place for the next run.
    NotStarted,
    /// Not posted: the ticket API is failing (two failures in a row). Left in place.
    NotTried,
}

/// Where a mail goes once its window was delivered.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Then {
    /// The mailbox's after-action.
    AfterAction,
    /// Into this folder (failed, held, auto-generated).
    MoveTo(String),
}

/// A mail of the window, read.
struct ReadMail {
    uid: Uid,
    prepared: Prepared,
}

/// The next window: mails in order while they are small, not to be read one by one, and fit
/// the memory budget beside each other. Its first mail waits for its share when `may_wait`
/// (nothing else of this mailbox holds memory); otherwise None when it does not fit now.
async fn next_window<'b>(
    deps: &'b PollDeps,
    listed: &[ListedMessage],
    limit: u64,
    one_by_one: &[Uid],
    may_wait: bool,
) -> Option<Vec<(ListedMessage, SemaphorePermit<'b>)>> {
    let mut window: Vec<(ListedMessage, SemaphorePermit<'b>)> = Vec::new();
    for message in listed {
        let size = u64::from(message.size);
        let reads = if size > limit { 0 } else { size };
        let alone = size > ALONE_ABOVE_BYTES && size <= limit || one_by_one.contains(&message.uid);
        if window.is_empty() {
            let share = if may_wait {
                deps.memory.reserve(reads).await
            } else {
                deps.memory.try_reserve(reads)?
            };
            window.push((*message, share));
            if alone {
                break;
            }
            continue;
        }
        if alone || window.len() >= WINDOW_MAILS {
            break;
        }
        match deps.memory.try_reserve(reads) {
            Some(share) => window.push((*message, share)),
            None => break,
        }
    }
    (!window.is_empty()).then_some(window)
}

/// A window read: its mails (those that vanished left out) and their memory shares, kept until
/// the window is settled (the payloads live until then).
struct ReadWindow<'b> {
    mails: Vec<ReadMail>,
    _shares: Vec<SemaphorePermit<'b>>,
}

/// Read a window: name it as the mail in flight, fetch its mails together and parse them.
async fn read_window<'b>(
    deps: &PollDeps,
    config: &MailboxConfig,
    mailbox: &mut dyn Mailbox,
    (uid_validity, lease): (u32, &str),
    window: Vec<(ListedMessage, SemaphorePermit<'b>)>,
    limit: u64,
) -> Result<ReadWindow<'b>, Stop> {
    let (Some((first, _)), Some((last, _))) = (window.first(), window.last()) else {
        return Ok(ReadWindow {
            mails: Vec::new(),
            _shares: Vec::new(),
        });
    };
    // Its name in the state table before any byte is read: a run that dies reading it leaves
    // the name for the next run.
    deps.state
        .mark_in_flight(
            &config.name,
            lease,
            InFlightMail {
                uid_validity,
                uid: first.uid,
                last_uid: last.uid,
            },
        )
        .await
        .map_err(Stop::Store)?;
    // The mails read whole, fetched together (one round trip over IMAP, side by side over Graph).
    let whole: Vec<Uid> = window
        .iter()
        .filter(|(m, _)| u64::from(m.size) <= limit)
        .map(|(m, _)| m.uid)
        .collect();
    let mut raws: std::collections::HashMap<Uid, Option<Vec<u8>>> = mailbox
        .fetch_raw_many(&whole)
        .await
        .map_err(Stop::Imap)?
        .into_iter()
        .collect();
    let mut read: Vec<ReadMail> = Vec::with_capacity(window.len());
    let mut shares = Vec::with_capacity(window.len());
    for (message, share) in window {
        shares.push(share);
        let uid = message.uid;
        let size = u64::from(message.size);
        // INTERNALDATE, when the server gave one: the same on every attempt, so a retried POST
        // carries the same payload under the same Idempotency-Key, and a helpdesk's SLA clock
        // starts when the mail arrived, not when it was polled.
        let received_at = message.received_at.unwrap_or_else(chrono::Utc::now);
        let prepared = if size > limit {
            let Some(header_block) = mailbox.fetch_header(uid).await.map_err(Stop::Imap)? else {
                vanished(config, uid);
                continue;
            };
            prepare(
                deps,
                config,
                received_at,
                None,
                Some(&header_block),
                (size, limit),
            )
        } else {
            let Some(raw) = raws.remove(&uid).flatten() else {
                vanished(config, uid);
                continue;
            };
            prepare(deps, config, received_at, Some(&raw), None, (size, limit))
            // `raw` is dropped here: only the payload waits for the window's POSTs.
        };
        read.push(ReadMail { uid, prepared });
    }
    Ok(ReadWindow {
        mails: read,
        _shares: shares,
    })
}

/// What the delivery of a window decided, per mail (index into the window) in the order of
/// arrival; and a state table failure that stops the mailbox once the window is settled.
type Deliveries = (Vec<(usize, Delivery)>, Option<StoreError>);

/// Deliver a read window: look its dedupe records up at once, post the tickets (conversations
/// side by side, each in the order of arrival), write the dedupe records at once.
async fn deliver_window(
    deps: &PollDeps,
    config: &MailboxConfig,
    (sink, gate): (&dyn TicketSink, &PostGate),
    uid_validity: u32,
    read: &[ReadMail],
    (stop_starting_at, post_deadline): (Instant, Instant),
) -> Result<Deliveries, Stop> {
    // Machine mail that must not open a ticket is moved with the window's after-actions; the
    // rest is looked up in the dedupe records, all at once.
    let pks: Vec<String> = read
        .iter()
        .filter(|m| m.prepared.skip_auto_generated.is_none())
        .map(|m| m.prepared.key.item_key(&config.name))
        .collect();
    let known = if pks.is_empty() {
        Default::default()
    } else {
        deps.state.get_dedupes(&pks).await.map_err(Stop::Store)?
    };
    let ids: Vec<Vec<String>> = read
        .iter()
        .map(|m| {
            crate::conversation::conversation_ids(&m.prepared.payload.draft, &m.prepared.key.hash)
        })
        .collect();
    let conversations = crate::conversation::conversations(&ids);
    let known = &known;
    // Each conversation in order; up to POSTS_IN_FLIGHT conversations at once.
    let delivered: Vec<Vec<(usize, Delivery)>> = futures::stream::iter(conversations)
        .map(|conversation| async move {
            let mut results = Vec::with_capacity(conversation.len());
            // Once a mail of the conversation is not taken, the rest of it waits with it.
            let mut blocked: Option<fn() -> Delivery> = None;
            let mut accepted_here: Vec<&str> = Vec::new();
            for i in conversation {
                let mail = &read[i];
                let delivery = if let Some(same_as_before) = blocked {
                    same_as_before()
                } else if Instant::now() >= stop_starting_at {
                    Delivery::NotStarted
                } else {
                    let pk = mail.prepared.key.item_key(&config.name);
                    let already = known.contains_key(&pk)
                        || accepted_here.contains(&mail.prepared.key.hash.as_str());
                    let _slot = gate.slots.acquire().await.expect("never closed");
                    if gate.api_failing() {
                        Delivery::NotTried
                    } else {
                        let delivery =
                            deliver_one(deps, config, sink, mail, already, post_deadline).await;
                        match &delivery {
                            Delivery::Posted { .. } | Delivery::Rejected => gate.taken(),
                            Delivery::Failed(_) => gate.failed(),
                            _ => {}
                        }
                        delivery
                    }
                };
                match &delivery {
                    Delivery::Failed(_) | Delivery::Stopped(_) | Delivery::HeldBack => {
                        blocked = Some(|| Delivery::HeldBack)
                    }
                    Delivery::NotStarted => blocked = Some(|| Delivery::NotStarted),
                    Delivery::NotTried => blocked = Some(|| Delivery::NotTried),
                    Delivery::Posted { .. } => accepted_here.push(mail.prepared.key.hash.as_str()),
                    _ => {}
                }
                results.push((i, delivery));
            }
            results
        })
        .buffer_unordered(POSTS_IN_FLIGHT)
        .collect()
        .await;
    let mut delivered: Vec<(usize, Delivery)> = delivered.into_iter().flatten().collect();
    delivered.sort_by_key(|(i, _)| *i);
    // The dedupe records of the tickets made, then the after-actions: a mail leaves the folder
    // only once its ticket was accepted and recorded.
    let now = chrono::Utc::now();
    let records: Vec<DedupeRecord> = delivered
        .iter()
        .filter_map(|(i, d)| match d {
            Delivery::Posted { ticket_id, .. } => Some((&read[*i], ticket_id)),
            _ => None,
        })
        .map(|(mail, ticket_id)| DedupeRecord {
            pk: mail.prepared.key.item_key(&config.name),
            ticket_id: ticket_id.clone(),
            message_id: mail.prepared.key.message_id.clone(),
            uid_validity,
            uid: mail.uid,
            created_at: now.to_rfc3339(),
            expires_at: now.timestamp() + deps.dedupe_ttl.as_secs() as i64,
        })
        .collect();
    let stopped = delivered
        .iter()
        .position(|(_, d)| matches!(d, Delivery::Stopped(_)))
        .and_then(
            |at| match std::mem::replace(&mut delivered[at].1, Delivery::HeldBack) {
                Delivery::Stopped(e) => Some(e),
                _ => None,
            },
        );
    if !records.is_empty() {
        deps.state
            .put_dedupes(&records)
            .await
            .map_err(Stop::Store)?;
    }
    Ok((delivered, stopped))
}

/// Settle a delivered window: the after-actions, one command per folder, each mail counted once
/// its after-action was applied. Returns what became of each mail, in the order of arrival.
async fn settle_window(
    config: &MailboxConfig,
    mailbox: &mut dyn Mailbox,
    status: &mut MailboxStatus,
    read: &[ReadMail],
    (delivered, stopped): Deliveries,
) -> Result<Vec<(Uid, PostOutcome)>, Stop> {
    // The after-actions: the mails settled, by where they go.
    let mut settled: Vec<(Then, Uid, Handled)> = Vec::new();
    for (i, delivery) in &delivered {
        let mail = &read[*i];
        let problem_or = |then: Then| {
            if mail.prepared.problem {
                Then::MoveTo(config.failed_folder.clone())
            } else {
                then
            }
        };
        match delivery {
            Delivery::AutoGenerated => settled.push((
                Then::MoveTo(config.auto_generated_folder.clone()),
                mail.uid,
                Handled::SkippedAutoGenerated,
            )),
            Delivery::Duplicate => {
                settled.push((problem_or(Then::AfterAction), mail.uid, Handled::Duplicate))
            }
            Delivery::Held => settled.push((
                Then::MoveTo(config.held_folder.clone()),
                mail.uid,
                Handled::Held,
            )),
            Delivery::Rejected => settled.push((
                Then::MoveTo(config.failed_folder.clone()),
                mail.uid,
                Handled::Parked,
            )),
            Delivery::Posted { handled, .. } => {
                settled.push((problem_or(Then::AfterAction), mail.uid, *handled))
            }
            Delivery::Failed(_)
            | Delivery::HeldBack
            | Delivery::NotStarted
            | Delivery::NotTried
            | Delivery::Stopped(_) => {}
        }
    }
    let mut destinations: Vec<&Then> = Vec::new();
    for (then, _, _) in &settled {
        if !destinations.contains(&then) {
            destinations.push(then);
        }
    }
    for then in destinations {
        let uids: Vec<Uid> = settled
            .iter()
            .filter(|(t, _, _)| t == then)
            .map(|(_, uid, _)| *uid)
            .collect();
        apply_after(config, mailbox, &uids, then).await?;
        for (_, _, handled) in settled.iter().filter(|(t, _, _)| t == then) {
            count(status, *handled);
        }
    }
    if let Some(e) = stopped {
        return Err(Stop::Store(e));
    }
    Ok(delivered
        .into_iter()
        .filter_map(|(i, d)| {
            let outcome = match d {
                Delivery::Failed(e) => PostOutcome::Failed(e),
                Delivery::HeldBack => PostOutcome::HeldBack,
                Delivery::NotStarted => PostOutcome::NotStarted,
                Delivery::NotTried => PostOutcome::NotTried,
                Delivery::Stopped(_) => return None,
                _ => PostOutcome::Accepted,
            };
            Some((read[i].uid, outcome))
        })
        .collect())
}

fn deadline_reason(left_in_place: &Option<TicketSinkError>, status: &MailboxStatus) -> String {
    match left_in_place {
        None => "deadline approaching; the rest waits for the next run".into(),
        Some(e) => format!(
            "deadline approaching; the rest waits for the next run (UIDs {:?} left in place: {e})",
            status.retry_last_uids
        ),
    }
}

fn vanished(config: &MailboxConfig, uid: Uid) {
    tracing::warn!(
        mailbox = %config.name,
        uid,
        "the server returned no message for this UID (expunged meanwhile?); skipped"
    );
}

fn count(status: &mut MailboxStatus, handled: Handled) {
    match handled {
        Handled::Ticketed => status.tickets_created += 1,
        Handled::Duplicate => status.duplicates += 1,
        Handled::Parked => status.parked += 1,
        Handled::SkippedAutoGenerated => status.skipped_auto_generated += 1,
        Handled::Held => status.held += 1,
    }
}

/// What became of one mail of a window before its after-action.
enum Delivery {
    /// Machine mail that opens no ticket.
    AutoGenerated,
    /// Already ticketed (a dedupe record, or the same mail earlier in the window).
    Duplicate,
    /// Over its sender's quota.
    Held,
    /// The helpdesk refused it for good.
    Rejected,
    /// The ticket API took it.
    Posted {
        handled: Handled,
        ticket_id: Option<String>,
    },
    /// The ticket API did not take it.
    Failed(TicketSinkError),
    /// Behind a mail of its conversation that was not taken.
    HeldBack,
    /// Not started: the deadline is near (this mail and the rest of its conversation).
    NotStarted,
    /// Not started: the ticket API is failing (this mail and the rest of its conversation).
    NotTried,
    /// The state table failed (the sender quota): the mailbox stops after this window.
    Stopped(StoreError),
}

/// The sender quota and the POST of one mail (its dedupe lookup was done for the window).
async fn deliver_one(
    deps: &PollDeps,
    config: &MailboxConfig,
    sink: &dyn TicketSink,
    mail: &ReadMail,
    already_ticketed: bool,
    post_deadline: Instant,
) -> Delivery {
    let (uid, prepared) = (mail.uid, &mail.prepared);
    if let Some(auto_reason) = &prepared.skip_auto_generated {
        // Moved, never deleted: an operator can still read it. No ticket, no dedupe record
        // needed: once moved it is out of the polled folder, and a crash before the move just
        // makes the next run decide the same again.
        tracing::info!(
            mailbox = %config.name,
            uid,
            message_id = prepared.key.message_id.as_deref().unwrap_or(""),
            auto_reason = %auto_reason,
            folder = %config.auto_generated_folder,
            "machine mail threads to no ticket (or is a loop): not posted, moved to the auto-generated folder"
        );
        return Delivery::AutoGenerated;
    }
    if already_ticketed {
        tracing::info!(
            mailbox = %config.name,
            uid,
            "mail already ticketed (duplicate or after-action not applied last run)"
        );
        return Delivery::Duplicate;
    }
    match within_sender_quota(deps, config, &prepared.payload).await {
        Ok(true) => {}
        Ok(false) => {
            tracing::warn!(
                mailbox = %config.name,
                uid,
                sender = prepared.payload.draft.from.as_ref().map_or("", |a| a.address.as_str()),
                quota = config.max_mails_per_sender_per_hour,
                folder = %config.held_folder,
                "sender over its hourly quota (a flood or a mail loop?): held, no ticket; move it back to the polled folder to post it"
            );
            return Delivery::Held;
        }
        Err(e) => return Delivery::Stopped(e),
    }
    let receipt = match sink
        .deliver(&prepared.payload, &prepared.key.hash, post_deadline)
        .await
    {
        Ok(receipt) => receipt,
        Err(e) if e.parks_the_mail() => {
            tracing::error!(
                mailbox = %config.name,
                uid,
                reason = %e,
                folder = %config.failed_folder,
                "the helpdesk rejected the mail; parked in the failed folder"
            );
            return Delivery::Rejected;
        }
        Err(e) => return Delivery::Failed(e),
    };
    let handled = if prepared.problem {
        tracing::warn!(
            mailbox = %config.name,
            uid,
            ticket_id = receipt.ticket_id.as_deref().unwrap_or(""),
            folder = %config.failed_folder,
            "mail could not be fully read: ticket created with a note, mail parked"
        );
        Handled::Parked
    } else if receipt.replayed {
        // The helpdesk already had this mail (a crash or lost answer after it accepted it):
        // nothing new was created, so it is not counted as a new ticket.
        tracing::info!(
            mailbox = %config.name,
            uid,
            ticket_id = receipt.ticket_id.as_deref().unwrap_or(""),
            action = %receipt.action,
            "the helpdesk already had this mail; recorded, nothing new created"
        );
        Handled::Duplicate
    } else {
        tracing::info!(
            mailbox = %config.name,
            uid,
            ticket_id = receipt.ticket_id.as_deref().unwrap_or(""),
            action = %receipt.action,
            sender = receipt.sender.as_str(),
            "mail delivered to the helpdesk"
        );
        Handled::Ticketed
    };
    Delivery::Posted {
        handled,
        ticket_id: receipt.ticket_id,
    }
}

struct Prepared {
    key: DedupeKey,
    payload: TicketPayload,
    problem: bool,
    /// Machine mail that must not open a ticket: its `auto_reason`.
    skip_auto_generated: Option<AutoReason>,
}

fn prepare(
    deps: &PollDeps,
    config: &MailboxConfig,
    received_at: chrono::DateTime<chrono::Utc>,
    raw: Option<&[u8]>,
    header_block: Option<&[u8]>,
    (size, limit): (u64, u64),
) -> Prepared {
    let payload =
        |key: &DedupeKey, draft, attachments, problem: Option<String>, raw64| TicketPayload {
            schema: TICKET_PAYLOAD_SCHEMA.to_string(),
            mailbox: config.name.clone(),
            mailbox_address: config.user.clone(),
            received_at,
            idempotency_key: key.hash.clone(),
            draft,
            attachments,
            problem,
            raw_message_base64: raw64,
        };
    match (raw, header_block) {
        (Some(raw), _) => {
            let key = dedupe::key_for_raw(&config.name, raw);
            // One parse gives the draft and the attachment contents.
            match convert::parse_mail(
                raw,
                &config.user,
                &config.sink.subject_patterns(),
                &deps.parse,
            ) {
                Ok(mailbridge::mail::ParsedMail {
                    draft,
                    attachment_contents,
                }) => {
                    if let Some(reason) = crate::machine_mail::unticketed_auto_generated_reason(
                        &draft,
                        config.list_mail,
                    ) {
                        // Not posted: no attachment contents needed.
                        return Prepared {
                            payload: payload(&key, draft, Vec::new(), None, None),
                            key,
                            problem: false,
                            skip_auto_generated: Some(reason),
                        };
                    }
                    let attachments = convert::attachments_with_content(
                        &draft,
                        attachment_contents,
                        config.max_attachment_bytes,
                    );
                    Prepared {
                        payload: payload(&key, draft, attachments, None, None),
                        key,
                        problem: false,
                        skip_auto_generated: None,
                    }
                }
                Err(reason) => {
                    let (fields, _) = dedupe::split_headers(raw);
                    let attach_raw = (raw.len() as u64) <= config.max_attachment_bytes;
                    let note = format!(
                        "mailbridge could not parse this mail ({reason}); {}",
                        if attach_raw {
                            "the raw message is attached"
                        } else {
                            "the raw message is over the attachment cap and was not attached"
                        }
                    );
                    let draft = convert::draft_from_headers(&fields, &note);
                    let raw64 =
                        attach_raw.then(|| base64::engine::general_purpose::STANDARD.encode(raw));
                    Prepared {
                        payload: payload(&key, draft, Vec::new(), Some(note), raw64),
                        key,
                        problem: true,
                        skip_auto_generated: None,
                    }
                }
            }
        }
        (None, header_block) => {
            let header_block = header_block.unwrap_or_default();
            let key = dedupe::key_for_header_only(&config.name, header_block, size);
            let (fields, _) = dedupe::split_headers(header_block);
            let by_memory = if limit < config.max_message_bytes {
                " (the poller's memory allows no more: raise PollMemorySize)"
            } else {
                ""
            };
            let note = format!(
                "this mail is {size} bytes, over the {limit}-byte limit of mailbox {}{by_memory}: only its headers were read; the full mail is in folder {:?}",
                config.name, config.failed_folder
            );
            let draft = convert::draft_from_headers(&fields, &note);
            Prepared {
                payload: payload(&key, draft, Vec::new(), Some(note), None),
                key,
                problem: true,
                skip_auto_generated: None,
            }
        }
    }
}

/// Count this mail against its sender's quota for the current clock hour (one item per mailbox,
/// sender and hour). A mail counted and then not delivered (the helpdesk down) counts again when
/// it is tried again: the quota errs towards holding a flood.
async fn within_sender_quota(
    deps: &PollDeps,
    config: &MailboxConfig,
    payload: &TicketPayload,
) -> Result<bool, StoreError> {
    use sha2::Digest as _;
    let max = config.max_mails_per_sender_per_hour;
    if max == 0 {
        return Ok(true);
    }
    let sender = payload
        .draft
        .from
        .as_ref()
        .map(|a| a.address.to_ascii_lowercase())
        .unwrap_or_default();
    let now = chrono::Utc::now();
    let hour = now.format("%Y%m%d%H");
    let sender_hash = hex::encode(&sha2::Sha256::digest(sender.as_bytes())[..16]);
    let pk = format!("mail#{}#sender#{sender_hash}#{hour}", config.name);
    let expires_at = now.timestamp() + 2 * 3600;
    deps.state.take_sender_quota(&pk, max, expires_at).await
}

async fn apply_after(
    config: &MailboxConfig,
    mailbox: &mut dyn Mailbox,
    uids: &[Uid],
    then: &Then,
) -> Result<(), Stop> {
    let result = match (then, &config.after_action) {
        (Then::MoveTo(folder), _) | (Then::AfterAction, AfterAction::Move(folder)) => {
            mailbox.move_many(uids, folder).await
        }
        (Then::AfterAction, AfterAction::MarkSeen) => {
            let mut result = Ok(());
            for uid in uids {
                result = mailbox.mark_seen(*uid).await;
                if result.is_err() {
                    break;
                }
            }
            result
        }
        (Then::AfterAction, AfterAction::Delete) => {
            let mut result = Ok(());
            for uid in uids {
                result = mailbox.delete(*uid).await;
                if result.is_err() {
                    break;
                }
            }
            result
        }
    };
    result.map_err(Stop::Imap)
}
