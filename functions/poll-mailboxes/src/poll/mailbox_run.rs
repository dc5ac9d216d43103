//! One mailbox's run: its token and connection (refreshed once when the server refuses it), its
//! lease (one run at a time per mailbox), the folder's listing, and the status the run ends with:
//! every way it can stop becomes an outcome and a reason an operator reads in `status`.

use mailbridge::error::{Classify as _, ErrorClass};
use mailbridge::imap::{ImapError, SearchScope, Uid};
use mailbridge::mailbox::{AfterAction, MailboxConfig, Protocol};
use mailbridge::state_table::{
    InFlightMail, MailboxLease, MailboxOutcome, MailboxStatus, StoreError,
};
use mailbridge::ticket_sink::{TicketSink, TicketSinkError};
use mailbridge::token::{Audience, TokenError};
use tokio::time::Instant;

use super::windows::work_on;
use super::{PollDeps, new_status};
use crate::ports::{Mailbox, MailboxError};

/// How far a run got with a mailbox it reached.
enum Progress {
    /// It worked on the mailbox (or found nothing to do).
    Worked,
    /// Another run holds the mailbox's lease: its mail is left to that run.
    LeaseHeldElsewhere,
}

/// Why a mailbox stopped early.
pub(super) enum Stop {
    Setup(String),
    Mailbox(MailboxError),
    TicketApi(TicketSinkError),
    Store(StoreError),
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
        Err(e) if e.token_refused() => {
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
                .map_err(|e| (MailboxOutcome::Failed, mailbox_reason(&e)))
        }
        Err(e) => Err((MailboxOutcome::Failed, mailbox_reason(&e))),
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

/// The reason an operator reads in `status`: the error, and what to check when a person can fix
/// it, for the protocol the mailbox is read with.
fn mailbox_reason(error: &MailboxError) -> String {
    match error {
        MailboxError::Imap(e @ ImapError::AuthenticateFailed { .. }) => format!(
            "{e} — check that the account consented to IMAP.AccessAsUser.All, that IMAP is enabled for the mailbox, and for a shared mailbox that the signing-in user has FullAccess"
        ),
        MailboxError::Imap(e @ ImapError::NotConnected { .. }) => format!(
            "{e} — enable IMAP for this mailbox (Exchange admin center → mailbox → Email apps) or check the mailbox exists"
        ),
        MailboxError::Graph(e) if e.token_refused() => format!(
            "{e} — check that the account consented to Mail.ReadWrite (Microsoft Graph, delegated), and for a shared mailbox (`shared: true`) to Mail.ReadWrite.Shared with Full Access on the mailbox"
        ),
        MailboxError::Graph(e) if e.mailbox_not_enabled() => {
            format!("{e} — the mailbox has no Exchange Online licence, is inactive or on-premises")
        }
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
            Stop::Mailbox(e) => {
                status.outcome = MailboxOutcome::Failed;
                status.reason = Some(mailbox_reason(&e));
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
    let folder = mailbox
        .select(&config.folder)
        .await
        .map_err(Stop::Mailbox)?;
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
        .map_err(Stop::Mailbox)?;
    if let Some(since) = config.since
        && !uids.is_empty()
    {
        // The search may be by the day: the exact time decides. Older mail is left as it is.
        let listed = mailbox.list_messages(&uids).await.map_err(Stop::Mailbox)?;
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
