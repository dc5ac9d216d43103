//! One poll tick: [`poll_once`] polls every configured mailbox (bounded concurrency) and reports
//! what happened to each; [`poll_mailbox`] is the per-mailbox loop.
//!
//! Per mailbox: IMAP-audience token → connect + `AUTHENTICATE XOAUTH2` → SELECT → UID SEARCH →
//! sizes and INTERNALDATEs in one round trip → for each message in UID order: size check,
//! `BODY.PEEK[]`, convert, dedupe lookup, POST with `Idempotency-Key`, dedupe record, and only
//! then the after-action.
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

enum Handled {
    Ticketed,
    Duplicate,
    Parked,
    SkippedAutoGenerated,
    Held,
    Vanished,
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
    if let Some(killer) = interrupted
        && killer.uid_validity == uid_validity
        && let Some(at) = uids.iter().position(|u| *u == killer.uid)
    {
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
    // A ticket API failure on one mail may be that mail's own (a payload the API always answers
    // 5xx or times out on): the next mail is tried. A second failure in a row means the API
    // itself is failing: stop, the rest waits for the next run.
    let mut left_in_place: Option<TicketSinkError> = None;
    let mut failed_in_a_row = 0;
    // Mail left for the next run when stopping at `index`: this one and the rest of the list,
    // those beyond max_messages_per_run, and those the ticket API did not take so far.
    let deferred_from = |index: usize, status: &MailboxStatus| {
        (listed.len() - index) as u32 + beyond_limit + status.retry_last_uids.len() as u32
    };
    for (index, message) in listed.iter().copied().enumerate() {
        let uid = message.uid;
        if Instant::now() >= stop_starting_at {
            status.deferred = deferred_from(index, status);
            status.outcome = MailboxOutcome::Partial;
            status.reason = Some(match &left_in_place {
                None => "deadline approaching; the rest waits for the next run".into(),
                Some(e) => format!(
                    "deadline approaching; the rest waits for the next run (UIDs {:?} left in place: {e})",
                    status.retry_last_uids
                ),
            });
            return Ok(());
        }
        match handle_message(
            deps,
            config,
            mailbox,
            sink,
            (uid_validity, lease),
            message,
            post_deadline,
        )
        .await
        {
            Ok(handled) => {
                failed_in_a_row = 0;
                match handled {
                    Handled::Ticketed => status.tickets_created += 1,
                    Handled::Duplicate => status.duplicates += 1,
                    Handled::Parked => status.parked += 1,
                    Handled::SkippedAutoGenerated => status.skipped_auto_generated += 1,
                    Handled::Held => status.held += 1,
                    Handled::Vanished => tracing::warn!(
                        mailbox = %config.name,
                        uid,
                        "the server returned no message for this UID (expunged meanwhile?); skipped"
                    ),
                }
            }
            Err(Stop::TicketApi(e)) => {
                // Counted before this one joins `retry_last_uids` (it is in the rest of the list).
                let deferred = deferred_from(index, status);
                status.retry_last_uids.push(uid);
                failed_in_a_row += 1;
                if failed_in_a_row >= 2 {
                    status.deferred = deferred;
                    return Err(Stop::TicketApi(e));
                }
                tracing::warn!(
                    mailbox = %config.name,
                    uid,
                    reason = %e,
                    "ticket API did not take this mail; left in place, trying the next one (it goes after the others next run)"
                );
                left_in_place = Some(e);
            }
            Err(stop) => {
                status.deferred = deferred_from(index, status);
                return Err(stop);
            }
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

#[allow(clippy::too_many_arguments)]
async fn handle_message(
    deps: &PollDeps,
    config: &MailboxConfig,
    mailbox: &mut dyn Mailbox,
    sink: &dyn TicketSink,
    (uid_validity, lease): (u32, &str),
    message: ListedMessage,
    post_deadline: Instant,
) -> Result<Handled, Stop> {
    let uid = message.uid;
    let size = u64::from(message.size);
    let limit = config
        .max_message_bytes
        .min(deps.memory.max_message_bytes());
    // Its share of the memory while it is read, then its name in the state table: a run that
    // dies reading it leaves the name for the next run, which parks it unread.
    let _reading = deps
        .memory
        .reserve(if size > limit { 0 } else { size })
        .await;
    deps.state
        .mark_in_flight(&config.name, lease, InFlightMail { uid_validity, uid })
        .await
        .map_err(Stop::Store)?;
    // INTERNALDATE, when the server gave one: the same on every attempt, so a retried POST
    // carries the same payload under the same Idempotency-Key, and a helpdesk's SLA clock
    // starts when the mail arrived, not when it was polled.
    let received_at = message.received_at.unwrap_or_else(chrono::Utc::now);
    let prepared = if size > limit {
        let Some(header_block) = mailbox.fetch_header(uid).await.map_err(Stop::Imap)? else {
            return Ok(Handled::Vanished);
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
        let Some(raw) = mailbox.fetch_raw(uid).await.map_err(Stop::Imap)? else {
            return Ok(Handled::Vanished);
        };
        prepare(deps, config, received_at, Some(&raw), None, (size, limit))
        // `raw` is dropped here: one message in memory at a time.
    };
    if let Some(auto_reason) = &prepared.skip_auto_generated {
        // Moved, never deleted: an operator can still read it. No ticket, no dedupe record
        // needed: once moved it is out of the polled folder, and a crash before the move just
        // makes the next run decide the same again.
        mailbox
            .move_to(uid, &config.auto_generated_folder)
            .await
            .map_err(Stop::Imap)?;
        tracing::info!(
            mailbox = %config.name,
            uid,
            message_id = prepared.key.message_id.as_deref().unwrap_or(""),
            auto_reason = %auto_reason,
            folder = %config.auto_generated_folder,
            "machine mail threads to no ticket (or is a loop): not posted, moved to the auto-generated folder"
        );
        return Ok(Handled::SkippedAutoGenerated);
    }
    let pk = prepared.key.item_key(&config.name);
    let existing = deps.state.get_dedupe(&pk).await.map_err(Stop::Store)?;
    let target_folder_on_problem = config.failed_folder.as_str();
    if let Some(record) = existing {
        tracing::info!(
            mailbox = %config.name,
            uid,
            ticket_id = record.ticket_id.as_deref().unwrap_or(""),
            "mail already ticketed (duplicate or after-action not applied last run)"
        );
        apply_after(
            config,
            mailbox,
            uid,
            prepared.problem,
            target_folder_on_problem,
        )
        .await?;
        return Ok(Handled::Duplicate);
    }
    if !within_sender_quota(deps, config, &prepared.payload).await? {
        mailbox
            .move_to(uid, &config.held_folder)
            .await
            .map_err(Stop::Imap)?;
        tracing::warn!(
            mailbox = %config.name,
            uid,
            sender = prepared.payload.draft.from.as_ref().map_or("", |a| a.address.as_str()),
            quota = config.max_mails_per_sender_per_hour,
            folder = %config.held_folder,
            "sender over its hourly quota (a flood or a mail loop?): held, no ticket; move it back to the polled folder to post it"
        );
        return Ok(Handled::Held);
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
            mailbox
                .move_to(uid, &config.failed_folder)
                .await
                .map_err(Stop::Imap)?;
            return Ok(Handled::Parked);
        }
        Err(e) => return Err(Stop::TicketApi(e)),
    };
    drop(prepared.payload);
    let now = chrono::Utc::now();
    let record = DedupeRecord {
        pk,
        ticket_id: receipt.ticket_id.clone(),
        message_id: prepared.key.message_id.clone(),
        uid_validity,
        uid,
        created_at: now.to_rfc3339(),
        expires_at: now.timestamp() + deps.dedupe_ttl.as_secs() as i64,
    };
    deps.state.put_dedupe(&record).await.map_err(Stop::Store)?;
    apply_after(
        config,
        mailbox,
        uid,
        prepared.problem,
        target_folder_on_problem,
    )
    .await?;
    if prepared.problem {
        tracing::warn!(
            mailbox = %config.name,
            uid,
            ticket_id = receipt.ticket_id.as_deref().unwrap_or(""),
            folder = %config.failed_folder,
            "mail could not be fully read: ticket created with a note, mail parked"
        );
        Ok(Handled::Parked)
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
        Ok(Handled::Duplicate)
    } else {
        tracing::info!(
            mailbox = %config.name,
            uid,
            ticket_id = receipt.ticket_id.as_deref().unwrap_or(""),
            action = %receipt.action,
            sender = receipt.sender.as_str(),
            "mail delivered to the helpdesk"
        );
        Ok(Handled::Ticketed)
    }
}

/// Count this mail against its sender's quota for the current clock hour (one item per mailbox,
/// sender and hour). A mail counted and then not delivered (the helpdesk down) counts again when
/// it is tried again: the quota errs towards holding a flood.
async fn within_sender_quota(
    deps: &PollDeps,
    config: &MailboxConfig,
    payload: &TicketPayload,
) -> Result<bool, Stop> {
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
    deps.state
        .take_sender_quota(&pk, max, expires_at)
        .await
        .map_err(Stop::Store)
}

async fn apply_after(
    config: &MailboxConfig,
    mailbox: &mut dyn Mailbox,
    uid: Uid,
    problem: bool,
    failed_folder: &str,
) -> Result<(), Stop> {
    let result = if problem {
        mailbox.move_to(uid, failed_folder).await
    } else {
        match &config.after_action {
            AfterAction::Move(folder) => mailbox.move_to(uid, folder).await,
            AfterAction::MarkSeen => mailbox.mark_seen(uid).await,
            AfterAction::Delete => mailbox.delete(uid).await,
        }
    };
    result.map_err(Stop::Imap)
}
