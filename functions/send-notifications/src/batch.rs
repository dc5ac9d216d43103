//! One SQS batch → Graph sends → `SqsBatchResponse`.
//!
//! [`process_batch`] runs the messages of a batch concurrently (at most
//! `max_in_flight_per_mailbox` per sending mailbox and `max_in_flight_total` overall) and
//! [`process_message`] decides each message's [`Outcome`]:
//!
//! | outcome | what happens | in `batchItemFailures` |
//! |---|---|---|
//! | `Sent` | Graph answered 202; idempotency record completed | no |
//! | `Duplicate` | a completed record exists: a redelivery, not sent again | no |
//! | `Parked` | permanent (invalid message, Graph 400/403/404/413, bad account secret): moved to the DLQ with the reason as attributes | no (yes if parking failed) |
//! | `Retry` | transient (429/5xx/timeouts/token endpoint down/another invocation holds the lease) | yes |
//! | `NeedsReauth` | the account's grant is unusable: `ChangeMessageVisibility` to the long delay | yes |
//! | `NotStarted` | too little time left before the deadline | yes |
//!
//! # Implementation Notes
//! - 401 from Graph: the cached token is invalidated, a fresh one fetched, and the send retried
//!   exactly once. A second 401 means the grant no longer works for Graph (needs re-auth).
//! - `Retry-After` (429/503) is waited out, holding the mailbox's slot, only when the wait plus a
//!   send fits before `deadline - safety_margin`; otherwise the item fails fast.
//! - Idempotency window: the record is completed right after Graph's 202. If the process dies
//!   between the 202 and that write (or the write fails), the in-progress lease (remaining
//!   invocation time + 60 s) keeps redeliveries off until it runs out; a redelivery after that
//!   sends again ([`Claim::Resumed`]: logged as "resending a notification whose earlier attempt
//!   never finished", metric `NotificationsResentAfterUnfinishedClaim`). A Graph timeout is ambiguous (the mail may have been accepted) and is retried:
//!   at-least-once, with the same Message-ID so receivers can collapse it. Its claim is kept,
//!   not released, so that redelivery is a [`Claim::Resumed`] too (logged and counted).

use crate::metrics::BatchMetrics;
use crate::ports::{ParkReason, Parking, Visibility};
use crate::settings::BatchSettings;
use crate::thread::{ThreadKey, stamp};
use aws_lambda_events::event::sqs::{BatchItemFailure, SqsBatchResponse, SqsEvent, SqsMessage};
use mailbridge::error::{Classify, ErrorClass};
use mailbridge::graph::{GraphError, MailSender, OutgoingMail};
use mailbridge::notification::Notification;
use mailbridge::state::{Claim, IdempotencyStore, StateError};
use mailbridge::token::{AccessToken, AccessTokenSource, Audience, TokenError};
use sha2::Digest as _;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

/// The ports one batch needs. Built once per cold start in `main`.
pub struct Deps {
    /// Delegated Graph access tokens per account.
    pub tokens: Arc<dyn AccessTokenSource>,
    /// Graph sendMail.
    pub mail: Arc<dyn MailSender>,
    /// Idempotency records.
    pub idempotency: Arc<dyn IdempotencyStore>,
    /// The DLQ.
    pub parking: Arc<dyn Parking>,
    /// ChangeMessageVisibility.
    pub visibility: Arc<dyn Visibility>,
    /// HMAC key for ticket references.
    pub thread_key: ThreadKey,
    /// Limits and timings.
    pub settings: BatchSettings,
}

/// What became of one message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Graph accepted it.
    Sent {
        /// Graph `request-id`.
        graph_request_id: Option<String>,
    },
    /// Already sent by an earlier delivery.
    Duplicate,
    /// Parked in the DLQ (permanent failure).
    Parked {
        /// Why.
        reason: ParkReason,
    },
    /// Permanent failure, but parking failed: reported as a batch item failure.
    ParkFailed {
        /// Why it should have been parked, and why parking failed.
        reason: String,
    },
    /// Transient failure: SQS delivers it again.
    Retry {
        /// Why.
        reason: String,
        /// Graph `request-id`, when Graph answered.
        graph_request_id: Option<String>,
    },
    /// The account needs a person; the message waits `reauth_visibility`.
    NeedsReauth {
        /// Why (AADSTS code / Graph error).
        reason: String,
    },
    /// Not started: the invocation deadline is too close.
    NotStarted,
}

impl Outcome {
    /// Whether SQS must deliver the message again (it goes into `batchItemFailures`).
    pub fn is_failure(&self) -> bool {
        !matches!(
            self,
            Outcome::Sent { .. } | Outcome::Duplicate | Outcome::Parked { .. }
        )
    }

    /// Short name for logs.
    pub fn name(&self) -> &'static str {
        match self {
            Outcome::Sent { .. } => "sent",
            Outcome::Duplicate => "duplicate",
            Outcome::Parked { .. } => "parked",
            Outcome::ParkFailed { .. } => "park_failed",
            Outcome::Retry { .. } => "retry",
            Outcome::NeedsReauth { .. } => "needs_reauth",
            Outcome::NotStarted => "not_started",
        }
    }
}

/// The result of one message.
#[derive(Clone, Debug)]
pub struct MessageReport {
    /// SQS message id.
    pub sqs_message_id: String,
    /// Notification id, when the message parsed.
    pub notification_id: Option<String>,
    /// Account, when the message parsed.
    pub account: Option<String>,
    /// What happened.
    pub outcome: Outcome,
    /// How many 429s were seen.
    pub throttled: u32,
    /// The claim took over an earlier attempt that never finished (crashed or timed out after
    /// its claim, maybe after Graph accepted the mail): if this one is sent, the recipient may
    /// have two copies (with the same Message-ID).
    pub resumed_unfinished_claim: bool,
}

/// The result of one batch.
#[derive(Clone, Debug)]
pub struct BatchReport {
    /// For Lambda (`ReportBatchItemFailures`).
    pub response: SqsBatchResponse,
    /// One per record, in event order.
    pub messages: Vec<MessageReport>,
    /// Counts for EMF.
    pub metrics: BatchMetrics,
}

/// Per-mailbox and overall concurrency limits for one batch.
struct Limits {
    per_mailbox: HashMap<String, Arc<Semaphore>>,
    total: Arc<Semaphore>,
}

/// Process a batch. `deadline` is the invocation's deadline.
pub async fn process_batch(event: SqsEvent, deadline: Instant, deps: &Deps) -> BatchReport {
    // Parse first (pure): the sending mailbox decides which limiter a message waits for.
    let parsed: Vec<(SqsMessage, Result<Notification, String>)> = event
        .records
        .into_iter()
        .map(|m| {
            let id = m.message_id.clone().unwrap_or_default();
            let parsed = Notification::parse(m.body.as_deref().unwrap_or_default(), &id)
                .map_err(|e| e.to_string());
            (m, parsed)
        })
        .collect();
    let mut limits = Limits {
        per_mailbox: HashMap::new(),
        total: Arc::new(Semaphore::new(deps.settings.max_in_flight_total.max(1))),
    };
    for (_, n) in &parsed {
        if let Ok(n) = n {
            limits
                .per_mailbox
                .entry(n.sending_mailbox())
                .or_insert_with(|| {
                    Arc::new(Semaphore::new(
                        deps.settings.max_in_flight_per_mailbox.max(1),
                    ))
                });
        }
    }
    let limits = &limits;
    let claims = claim_all(&parsed, deadline, deps).await;
    let reports =
        futures::future::join_all(parsed.iter().zip(claims).map(|((message, parsed), claim)| {
            process_message(message, parsed, claim, deadline, deps, limits)
        }))
        .await;

    let mut metrics = BatchMetrics::default();
    let mut reauth_accounts = HashSet::new();
    let mut response = SqsBatchResponse::default();
    for report in &reports {
        metrics.throttled += u64::from(report.throttled);
        match &report.outcome {
            Outcome::Sent { .. } => {
                metrics.sent += 1;
                if report.resumed_unfinished_claim {
                    metrics.resent_after_unfinished_claim += 1;
                }
            }
            Outcome::Duplicate => metrics.duplicates += 1,
            Outcome::Parked { .. } => metrics.parked += 1,
            Outcome::NeedsReauth { .. } => {
                reauth_accounts.insert(report.account.clone().unwrap_or_default());
            }
            _ => {}
        }
        if report.outcome.is_failure() {
            metrics.retried += 1;
            let mut failure = BatchItemFailure::default();
            failure.item_identifier = report.sqs_message_id.clone();
            response.batch_item_failures.push(failure);
        }
    }
    metrics.accounts_need_reauth = reauth_accounts.len() as u64;
    BatchReport {
        response,
        messages: reports,
        metrics,
    }
}

/// A message's idempotency claim, made for the whole batch at once (one round trip to the store
/// where it supports that), before any message waits for a mailbox slot.
type ClaimResult = Option<(String, Result<Claim, StateError>)>;

fn payload_hash(message: &SqsMessage) -> String {
    hex::encode(sha2::Sha256::digest(
        message.body.as_deref().unwrap_or_default().as_bytes(),
    ))
}

async fn claim_all(
    parsed: &[(SqsMessage, Result<Notification, String>)],
    deadline: Instant,
    deps: &Deps,
) -> Vec<ClaimResult> {
    if remaining(deadline) <= deps.settings.safety_margin {
        return parsed.iter().map(|_| None).collect();
    }
    let wanted: Vec<(usize, String, String)> = parsed
        .iter()
        .enumerate()
        .filter_map(|(i, (m, n))| {
            n.as_ref()
                .ok()
                .map(|n| (i, n.id().to_owned(), payload_hash(m)))
        })
        .collect();
    let keys: Vec<(String, String)> = wanted
        .iter()
        .map(|(_, id, hash)| (id.clone(), hash.clone()))
        .collect();
    let lease = remaining(deadline) + Duration::from_secs(60);
    let results = deps.idempotency.claim_many(&keys, lease).await;
    let mut claims: Vec<ClaimResult> = parsed.iter().map(|_| None).collect();
    for ((i, _, hash), result) in wanted.into_iter().zip(results) {
        claims[i] = Some((hash, result));
    }
    claims
}

fn remaining(deadline: Instant) -> Duration {
    deadline.saturating_duration_since(Instant::now())
}

async fn process_message(
    message: &SqsMessage,
    parsed: &Result<Notification, String>,
    claim: ClaimResult,
    deadline: Instant,
    deps: &Deps,
    limits: &Limits,
) -> MessageReport {
    let sqs_message_id = message.message_id.clone().unwrap_or_default();
    let (notification_id, account) = match parsed {
        Ok(n) => (Some(n.id().to_owned()), Some(n.account.clone())),
        Err(_) => (None, None),
    };
    let mut report = MessageReport {
        sqs_message_id,
        notification_id,
        account,
        outcome: Outcome::NotStarted,
        throttled: 0,
        resumed_unfinished_claim: matches!(claim, Some((_, Ok(Claim::Resumed { .. })))),
    };
    report.outcome = decide(
        message,
        parsed,
        claim,
        deadline,
        deps,
        limits,
        &mut report.throttled,
    )
    .await;
    log_outcome(&report, parsed.as_ref().ok());
    report
}

fn log_outcome(report: &MessageReport, n: Option<&Notification>) {
    let (graph_request_id, reason): (Option<&str>, Option<&str>) = match &report.outcome {
        Outcome::Sent { graph_request_id } => (graph_request_id.as_deref(), None),
        Outcome::Parked { reason } => (reason.graph_request_id.as_deref(), Some(&reason.reason)),
        Outcome::Retry {
            reason,
            graph_request_id,
        } => (graph_request_id.as_deref(), Some(reason)),
        Outcome::ParkFailed { reason } | Outcome::NeedsReauth { reason } => (None, Some(reason)),
        Outcome::Duplicate | Outcome::NotStarted => (None, None),
    };
    let mailbox = n.map(|n| n.from.as_deref().unwrap_or("me"));
    let level_warn =
        report.outcome.is_failure() || matches!(report.outcome, Outcome::Parked { .. });
    if level_warn {
        tracing::warn!(
            sqs_message_id = %report.sqs_message_id,
            notification_id = report.notification_id.as_deref(),
            account = report.account.as_deref(),
            mailbox,
            outcome = report.outcome.name(),
            graph_request_id,
            throttled = report.throttled,
            reason,
            "notification not sent"
        );
    } else {
        tracing::info!(
            sqs_message_id = %report.sqs_message_id,
            notification_id = report.notification_id.as_deref(),
            account = report.account.as_deref(),
            mailbox,
            outcome = report.outcome.name(),
            graph_request_id,
            throttled = report.throttled,
            "notification processed"
        );
    }
}

/// Park `message` for `reason`; a parking failure turns into a reported failure.
async fn park(deps: &Deps, message: &SqsMessage, reason: ParkReason) -> Outcome {
    match deps
        .parking
        .park(message.body.as_deref().unwrap_or_default(), &reason)
        .await
    {
        Ok(()) => Outcome::Parked { reason },
        Err(e) => Outcome::ParkFailed {
            reason: format!("{}; {e}", reason.reason),
        },
    }
}

fn base_reason(
    message: &SqsMessage,
    n: Option<&Notification>,
    kind: &str,
    reason: String,
) -> ParkReason {
    ParkReason {
        kind: kind.to_owned(),
        reason,
        sqs_message_id: message.message_id.clone().unwrap_or_default(),
        notification_id: n.map(|n| n.id().to_owned()),
        account: n.map(|n| n.account.clone()),
        ..ParkReason::default()
    }
}

async fn decide(
    message: &SqsMessage,
    parsed: &Result<Notification, String>,
    claim: ClaimResult,
    deadline: Instant,
    deps: &Deps,
    limits: &Limits,
    throttled: &mut u32,
) -> Outcome {
    let margin = deps.settings.safety_margin;
    if remaining(deadline) <= margin {
        return Outcome::NotStarted;
    }
    let n = match parsed {
        Ok(n) => n,
        Err(reason) => {
            let mut r = base_reason(message, None, "invalid-message", reason.clone());
            r.field = Notification::parse(message.body.as_deref().unwrap_or_default(), "x")
                .err()
                .and_then(|e| e.first_field().map(str::to_owned));
            return park(deps, message, r).await;
        }
    };
    let Some((payload_hash, claim)) = claim else {
        return Outcome::NotStarted;
    };
    let lease_token = match claim {
        Ok(Claim::Acquired { lease_token }) => lease_token,
        Ok(Claim::Resumed {
            lease_token,
            previous_lease_expires_at,
        }) => {
            // Graph's sendMail has no idempotency key and Mail.Send cannot read Sent Items, so
            // whether the unfinished attempt reached Graph is unknowable: send (at least once),
            // and say so. The deterministic internetMessageId lets receivers merge two copies.
            tracing::warn!(
                sqs_message_id = message.message_id.as_deref().unwrap_or_default(),
                notification_id = n.id(),
                account = %n.account,
                previous_lease_expires_at,
                "resending a notification whose earlier attempt never finished (crashed or timed out after its claim; if that attempt reached Graph the recipient gets a second copy with the same Message-ID)"
            );
            lease_token
        }
        Ok(Claim::Completed { .. }) => return Outcome::Duplicate,
        Ok(Claim::CompletedWithDifferentPayload) => {
            let r = base_reason(
                message,
                Some(n),
                "id-reused",
                format!(
                    "id: notification id {:?} was already sent with a different message; use a new id",
                    n.id()
                ),
            );
            return park(
                deps,
                message,
                ParkReason {
                    field: Some("id".into()),
                    ..r
                },
            )
            .await;
        }
        Ok(Claim::InProgress { lease_expires_at }) => {
            return Outcome::Retry {
                reason: format!(
                    "another invocation is sending this notification (lease until {lease_expires_at})"
                ),
                graph_request_id: None,
            };
        }
        Err(e) => {
            return Outcome::Retry {
                reason: e.to_string(),
                graph_request_id: None,
            };
        }
    };

    // Claimed (all messages of the batch claim concurrently); now wait for a slot of this
    // mailbox and an overall slot, but never past the safety margin. The slots are freed as
    // soon as Graph has answered, before the record is completed.
    let mailbox_limit = limits.per_mailbox[&n.sending_mailbox()].clone();
    let start_by = deadline.checked_sub(margin).unwrap_or(deadline);
    let permits = tokio::time::timeout_at(start_by, async {
        let mailbox = mailbox_limit.acquire_owned().await;
        let total = limits.total.clone().acquire_owned().await;
        (mailbox, total)
    })
    .await;
    let mut maybe_accepted = false;
    let outcome = match permits {
        Ok((Ok(mailbox), Ok(total))) if remaining(deadline) > margin => {
            send_claimed(
                message,
                n,
                deadline,
                deps,
                throttled,
                &mut maybe_accepted,
                (mailbox, total),
            )
            .await
        }
        _ => Outcome::NotStarted,
    };
    match &outcome {
        Outcome::Sent { graph_request_id } => {
            if let Err(e) = deps
                .idempotency
                .complete(
                    n.id(),
                    &payload_hash,
                    &lease_token,
                    graph_request_id.as_deref(),
                    deps.settings.completed_ttl,
                )
                .await
            {
                // The mail is out; reporting a failure would send it again. The in-progress
                // lease still guards redeliveries until it runs out.
                tracing::error!(notification_id = n.id(), error = %e, "sent, but the idempotency record could not be completed");
            }
        }
        // Graph timed out: it may have accepted the mail. The claim is kept (not released), so
        // the redelivery, which SQS makes after the visibility timeout (longer than the lease),
        // is a `Claim::Resumed`: logged as a resend and counted, like a crash after the 202.
        // Releasing it would make that possible second copy silent.
        _ if maybe_accepted => {}
        _ => {
            if let Err(e) = deps.idempotency.release(n.id(), &lease_token).await {
                tracing::warn!(notification_id = n.id(), error = %e, "could not release the idempotency lease; a retry waits for it to run out");
            }
        }
    }
    outcome
}

/// Token → send, with the 401 refresh-once and `Retry-After` rules. The idempotency lease is held.
async fn send_claimed(
    message: &SqsMessage,
    n: &Notification,
    deadline: Instant,
    deps: &Deps,
    throttled: &mut u32,
    maybe_accepted: &mut bool,
    slots: (OwnedSemaphorePermit, OwnedSemaphorePermit),
) -> Outcome {
    let _slots = slots;
    let settings = &deps.settings;
    let mut token = match token(deps, message, n).await {
        Ok(t) => t,
        Err(outcome) => return outcome,
    };
    let extras = stamp(&deps.thread_key, n);
    let mail = OutgoingMail::from_notification(n, extras);
    let mut refreshed = false;
    let mut waits = 0;
    loop {
        let left = remaining(deadline).saturating_sub(settings.safety_margin / 2);
        if left.is_zero() {
            return Outcome::Retry {
                reason: "invocation deadline reached before the send could start".into(),
                graph_request_id: None,
            };
        }
        let timeout = settings.send_timeout.min(left);
        let error = match deps.mail.send_mail(&token, &mail, timeout).await {
            Ok(receipt) => {
                return Outcome::Sent {
                    graph_request_id: receipt.request_id,
                };
            }
            Err(e) => e,
        };
        if matches!(error, GraphError::Throttled { .. }) {
            *throttled += 1;
        }
        if matches!(
            error,
            GraphError::Transport {
                timed_out: true,
                ..
            }
        ) {
            // The request went out and no answer came: Graph may have accepted it. Retried
            // (at least once), never parked, and the claim stays so a resend is named.
            *maybe_accepted = true;
            return Outcome::Retry {
                reason: format!(
                    "{error}; Graph may have accepted it, so the redelivery is logged as a resend"
                ),
                graph_request_id: None,
            };
        }
        match (&error, error.class()) {
            (GraphError::Unauthorized { .. }, _) if !refreshed => {
                refreshed = true;
                deps.tokens.invalidate(&n.account, Audience::Graph);
                token = match self::token(deps, message, n).await {
                    Ok(t) => t,
                    Err(outcome) => return outcome,
                };
            }
            (_, ErrorClass::Transient) => {
                let fits = error.retry_after().filter(|wait| {
                    waits < settings.max_retry_after_waits
                        && *wait + settings.safety_margin + Duration::from_millis(500)
                            < remaining(deadline)
                });
                match fits {
                    Some(wait) => {
                        waits += 1;
                        tokio::time::sleep(wait).await;
                    }
                    None => {
                        return Outcome::Retry {
                            reason: error.to_string(),
                            graph_request_id: error.request_id().map(str::to_owned),
                        };
                    }
                }
            }
            (_, ErrorClass::Permanent) => {
                let mut r = base_reason(message, Some(n), "graph-rejected", error.to_string());
                r.graph_code = Some(error.code().to_owned());
                r.graph_request_id = error.request_id().map(str::to_owned);
                return park(deps, message, r).await;
            }
            (_, ErrorClass::NeedsReauth) => {
                return needs_reauth(deps, message, error.to_string()).await;
            }
        }
    }
}

async fn token(
    deps: &Deps,
    message: &SqsMessage,
    n: &Notification,
) -> Result<AccessToken, Outcome> {
    match deps.tokens.access_token(&n.account, Audience::Graph).await {
        Ok(t) => Ok(t),
        Err(e @ TokenError::NeedsReauth { .. }) => {
            Err(needs_reauth(deps, message, e.to_string()).await)
        }
        Err(e @ TokenError::BadSecret { .. }) => {
            let mut r = base_reason(message, Some(n), "bad-account-secret", e.to_string());
            r.field = Some("account".into());
            Err(park(deps, message, r).await)
        }
        Err(e) => Err(Outcome::Retry {
            reason: e.to_string(),
            graph_request_id: None,
        }),
    }
}

async fn needs_reauth(deps: &Deps, message: &SqsMessage, reason: String) -> Outcome {
    let seconds = i32::try_from(deps.settings.reauth_visibility.as_secs()).unwrap_or(43200);
    if let (Some(arn), Some(handle)) = (&message.event_source_arn, &message.receipt_handle)
        && let Err(e) = deps.visibility.delay(arn, handle, seconds).await
    {
        tracing::warn!(error = %e, "could not delay a message of an account that needs re-auth");
    }
    Outcome::NeedsReauth { reason }
}
