//! One poll tick: [`poll_once`] polls every configured mailbox (bounded concurrency) and reports
//! what happened to each; [`poll_mailbox`] is the per-mailbox loop.
//!
//! Per mailbox: IMAP-audience token → connect + `AUTHENTICATE XOAUTH2` → SELECT → UID SEARCH →
//! sizes in one round trip → for each message in UID order: size check, `BODY.PEEK[]`, convert,
//! dedupe lookup, POST with `Idempotency-Key`, dedupe record, and only then the after-action.
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

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use futures::StreamExt as _;
use mailbridge::error::{Classify as _, ErrorClass};
use mailbridge::imap::{ImapError, SearchScope, Uid};
use mailbridge::ticket_api::{TICKET_PAYLOAD_SCHEMA, TicketApiError, TicketPayload, TicketSink};
use mailbridge::token::{AccessTokenSource, Audience, TokenError};
use serde::Serialize;
use tokio::time::Instant;

use crate::config::{AfterAction, MailboxConfig};
use crate::convert::{self, ParseContext};
use crate::dedupe::{self, DedupeKey};
use crate::ports::{
    DedupeRecord, Mailbox, MailboxConnector, MailboxStatus, SinkFactory, StateStore, StoreError,
};

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
    /// Mailboxes that failed (any reason, including re-auth and bad config).
    pub mailboxes_failed: u32,
    /// Mailboxes whose account needs re-authentication.
    pub accounts_need_reauth: u32,
}

impl PollReport {
    /// `Processed(n)` / `Empty`, STYLE point 8.
    pub fn outcome(&self) -> PollOutcome {
        if self.tickets_created + self.parked == 0 {
            PollOutcome::Empty
        } else {
            PollOutcome::Processed(self.tickets_created + self.parked)
        }
    }
}

/// The short answer of a tick.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PollOutcome {
    /// This many mails became tickets (or were parked with one).
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
    if let Some(wanted) = names {
        // A manual run may name mailboxes by configuration name or by address.
        let matches =
            |entry: &Result<MailboxConfig, crate::config::ConfigError>, w: &str| match entry {
                Ok(c) => c.name == w || c.user.eq_ignore_ascii_case(w),
                Err(e) => e.mailbox == w,
            };
        let unknown: Vec<_> = wanted
            .iter()
            .filter(|w| !configs.iter().any(|c| matches(c, w)))
            .map(|w| {
                Err(crate::config::ConfigError {
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
    let statuses: Vec<MailboxStatus> = futures::stream::iter(configs)
        .map(|entry| async move {
            let started = chrono::Utc::now();
            let status = match entry {
                Ok(config) if !config.enabled => {
                    let mut status = new_status(&config.name, started);
                    status.outcome = "disabled".into();
                    status
                }
                Ok(config) => poll_mailbox(deps, &config, deadline).await,
                Err(config_error) => {
                    tracing::error!(
                        mailbox = %config_error.mailbox,
                        field = %config_error.field,
                        reason = %config_error,
                        "mailbox configuration invalid; skipped"
                    );
                    let mut status = new_status(&config_error.mailbox, started);
                    status.outcome = "config_error".into();
                    status.reason = Some(config_error.to_string());
                    status
                }
            };
            if let Err(e) = deps.state.put_status(&status).await {
                tracing::warn!(mailbox = %status.mailbox, error = %e, "could not record mailbox status");
            }
            status
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    let mut report = PollReport::default();
    for status in statuses {
        report.tickets_created += status.tickets_created;
        report.parked += status.parked;
        if matches!(
            status.outcome.as_str(),
            "failed" | "needs_reauth" | "config_error"
        ) {
            report.mailboxes_failed += 1;
        }
        if status.outcome == "needs_reauth" {
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
        outcome: "ok".into(),
        reason: None,
        last_run_at: started.to_rfc3339(),
        duration_ms: 0,
        tickets_created: 0,
        parked: 0,
        duplicates: 0,
        deferred: 0,
        uid_validity: None,
        imap_round_trips: 0,
    }
}

/// Why a mailbox stopped early.
enum Stop {
    Setup(String),
    Imap(ImapError),
    TicketApi(TicketApiError),
    Store(StoreError),
}

enum Handled {
    Ticketed,
    Duplicate,
    Parked,
    Vanished,
}

async fn connect(
    deps: &PollDeps,
    config: &MailboxConfig,
) -> Result<Box<dyn Mailbox>, (String, String)> {
    let token_failure = |e: TokenError| {
        let outcome = if e.class() == ErrorClass::NeedsReauth {
            "needs_reauth"
        } else {
            "failed"
        };
        (outcome.to_string(), e.to_string())
    };
    let token = deps
        .tokens
        .access_token(&config.account, Audience::Imap)
        .await
        .map_err(token_failure)?;
    match deps.connector.connect(config, &token.secret).await {
        Ok(mailbox) => Ok(mailbox),
        Err(ImapError::AuthenticateFailed { .. }) => {
            // The cached token may be stale or revoked: refresh once and retry.
            deps.tokens.invalidate(&config.account, Audience::Imap);
            let token = deps
                .tokens
                .access_token(&config.account, Audience::Imap)
                .await
                .map_err(token_failure)?;
            deps.connector
                .connect(config, &token.secret)
                .await
                .map_err(|e| ("failed".to_string(), imap_reason(&e)))
        }
        Err(e) => Err(("failed".to_string(), imap_reason(&e))),
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

/// Poll one mailbox; never fails: the status says what happened.
pub async fn poll_mailbox(
    deps: &PollDeps,
    config: &MailboxConfig,
    deadline: Instant,
) -> MailboxStatus {
    let started = chrono::Utc::now();
    let clock = Instant::now();
    let mut status = new_status(&config.name, started);
    let finish = |mut status: MailboxStatus| {
        status.duration_ms = clock.elapsed().as_millis() as u64;
        match status.outcome.as_str() {
            "ok" => tracing::info!(
                mailbox = %status.mailbox,
                tickets = status.tickets_created,
                parked = status.parked,
                duplicates = status.duplicates,
                "mailbox polled"
            ),
            "partial" => tracing::warn!(
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
            return finish(status);
        }
    };
    let result = run_mailbox(deps, config, deadline, mailbox.as_mut(), &mut status).await;
    status.imap_round_trips = mailbox.round_trips();
    if let Err(stop) = result {
        match stop {
            Stop::Setup(reason) => {
                status.outcome = "failed".into();
                status.reason = Some(reason);
            }
            Stop::Imap(e) => {
                status.outcome = "failed".into();
                status.reason = Some(imap_reason(&e));
            }
            Stop::Store(e) => {
                status.outcome = "failed".into();
                status.reason = Some(e.to_string());
            }
            Stop::TicketApi(e) => {
                status.outcome = "partial".into();
                status.reason = Some(format!("mail left in place for the next run: {e}"));
            }
        }
    }
    mailbox.logout().await;
    finish(status)
}

async fn run_mailbox(
    deps: &PollDeps,
    config: &MailboxConfig,
    deadline: Instant,
    mailbox: &mut dyn Mailbox,
    status: &mut MailboxStatus,
) -> Result<(), Stop> {
    let sink = deps.sinks.sink_for(config).await.map_err(Stop::Setup)?;
    let folder = mailbox.select(&config.folder).await.map_err(Stop::Imap)?;
    status.uid_validity = Some(folder.uid_validity);
    if let Ok(Some(previous)) = deps.state.get_status(&config.name).await
        && let Some(old) = previous.uid_validity
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
        return Ok(());
    }
    let scope = match config.after_action {
        AfterAction::MarkSeen => SearchScope::UnseenUndeleted,
        _ => SearchScope::Undeleted,
    };
    let mut uids = mailbox.search(scope).await.map_err(Stop::Imap)?;
    let total = uids.len();
    uids.truncate(config.max_messages_per_run as usize);
    let beyond_limit = (total - uids.len()) as u32;
    let sizes = mailbox.sizes(&uids).await.map_err(Stop::Imap)?;
    let stop_starting_at = deadline
        .checked_sub(deps.deadline_margin)
        .unwrap_or_else(Instant::now);
    // The POST may use most of the margin, leaving time for the after-action.
    let post_deadline = deadline
        .checked_sub(deps.deadline_margin / 3)
        .unwrap_or_else(Instant::now);
    for (index, (uid, size)) in sizes.iter().copied().enumerate() {
        if Instant::now() >= stop_starting_at {
            status.deferred = (sizes.len() - index) as u32 + beyond_limit;
            status.outcome = "partial".into();
            status.reason = Some("deadline approaching; the rest waits for the next run".into());
            return Ok(());
        }
        match handle_message(
            deps,
            config,
            mailbox,
            sink.as_ref(),
            folder.uid_validity,
            uid,
            size as u64,
            post_deadline,
        )
        .await
        {
            Ok(Handled::Ticketed) => status.tickets_created += 1,
            Ok(Handled::Duplicate) => status.duplicates += 1,
            Ok(Handled::Parked) => status.parked += 1,
            Ok(Handled::Vanished) => {}
            Err(stop) => {
                status.deferred = (sizes.len() - index) as u32 + beyond_limit;
                return Err(stop);
            }
        }
    }
    status.deferred = beyond_limit;
    if beyond_limit > 0 {
        status.outcome = "partial".into();
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
}

fn prepare(
    deps: &PollDeps,
    config: &MailboxConfig,
    raw: Option<&[u8]>,
    header_block: Option<&[u8]>,
    size: u64,
) -> Prepared {
    let now = chrono::Utc::now();
    let payload =
        |key: &DedupeKey, draft, attachments, problem: Option<String>, raw64| TicketPayload {
            schema: TICKET_PAYLOAD_SCHEMA.to_string(),
            mailbox: config.name.clone(),
            mailbox_address: config.user.clone(),
            received_at: now,
            idempotency_key: key.hash.clone(),
            draft,
            attachments,
            problem,
            raw_message_base64: raw64,
        };
    match (raw, header_block) {
        (Some(raw), _) => {
            let key = dedupe::key_for_raw(&config.name, raw);
            match convert::parse_draft(raw, &config.user, &deps.parse) {
                Ok(draft) => {
                    let attachments =
                        convert::attachments_with_content(raw, &draft, config.max_attachment_bytes);
                    Prepared {
                        payload: payload(&key, draft, attachments, None, None),
                        key,
                        problem: false,
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
                    }
                }
            }
        }
        (None, header_block) => {
            let header_block = header_block.unwrap_or_default();
            let key = dedupe::key_for_header_only(&config.name, header_block, size);
            let (fields, _) = dedupe::split_headers(header_block);
            let note = format!(
                "this mail is {size} bytes, over the {}-byte limit of mailbox {}: only its headers were read; the full mail is in folder {:?}",
                config.max_message_bytes, config.name, config.failed_folder
            );
            let draft = convert::draft_from_headers(&fields, &note);
            Prepared {
                payload: payload(&key, draft, Vec::new(), Some(note), None),
                key,
                problem: true,
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
    uid_validity: u32,
    uid: Uid,
    size: u64,
    post_deadline: Instant,
) -> Result<Handled, Stop> {
    let prepared = if size > config.max_message_bytes {
        let Some(header_block) = mailbox.fetch_header(uid).await.map_err(Stop::Imap)? else {
            return Ok(Handled::Vanished);
        };
        prepare(deps, config, None, Some(&header_block), size)
    } else {
        let Some(raw) = mailbox.fetch_raw(uid).await.map_err(Stop::Imap)? else {
            return Ok(Handled::Vanished);
        };
        prepare(deps, config, Some(&raw), None, size)
        // `raw` is dropped here: one message in memory at a time.
    };
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
    let receipt = match sink
        .create_ticket(&prepared.payload, &prepared.key.hash, post_deadline)
        .await
    {
        Ok(receipt) => receipt,
        Err(e @ TicketApiError::Rejected { .. }) | Err(e @ TicketApiError::Encode(_)) => {
            tracing::error!(
                mailbox = %config.name,
                uid,
                reason = %e,
                folder = %config.failed_folder,
                "ticket API rejected the mail; parked in the failed folder"
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
    } else {
        tracing::info!(
            mailbox = %config.name,
            uid,
            ticket_id = receipt.ticket_id.as_deref().unwrap_or(""),
            "ticket created"
        );
        Ok(Handled::Ticketed)
    }
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
