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
//! | `Delayed` | the sending mailbox is over a sending quota (message rate, recipients per day): `ChangeMessageVisibility` to `Retry-After` or the quota delay | yes |
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
//!   The same holds for every answer that may follow an accepted mail: a 5xx, and a connection
//!   that broke after the request was written. Graph answering 504 for a mail it queued and
//!   delivered is reported publicly; a resend within the invocation after such an answer (a
//!   `Retry-After` that fits) is logged as "resending after an answer that may mean Graph
//!   accepted the mail" and counted (`NotificationsResentAfterAmbiguousAnswer`).
//! - Both queue kinds ([`QueueMessage`]) share this logic. A MIME notification's raw message is
//!   read (inline, or from the message store with its size and SHA-256 checked), checked
//!   (header syntax, From agrees with `from`, at least one recipient, Graph's request limit),
//!   stamped with the thread marker when it has a ticket number, and sent with Graph's MIME
//!   `sendMail`. A JSON notification's attachments by `content_ref` are read from the message
//!   store the same way. Either kind over Graph's request limit goes through a draft
//!   ([`mailbridge::graph_draft`]), over the send size limit (the account's
//!   `max_message_bytes`, else `MAILBRIDGE_MAX_MESSAGE_BYTES`) it is parked as `too-large`. The
//!   stored objects are deleted once the mail is sent; a parked notification keeps them for a
//!   redrive (the bucket's lifecycle rule removes them with the DLQ's retention).

use crate::metrics::BatchMetrics;
use crate::ports::{ParkReason, Parking, Visibility};
use crate::settings::BatchSettings;
use aws_lambda_events::event::sqs::{BatchItemFailure, SqsBatchResponse, SqsEvent, SqsMessage};
use mailbridge::error::{Classify, ErrorClass};
use mailbridge::graph::{GraphError, MailSender, OutgoingMail, OutgoingMime, SendAs, SendReceipt};
use mailbridge::graph_draft::{DraftAttachment, DraftContent, DraftFailure, DraftMail};
use mailbridge::message_store::{MessageStore, MessageStoreError};
use mailbridge::notification::{
    MimeNotification, Notification, ObjectRef, QueueMessage, RawMessage,
};
use mailbridge::state_table::{Claim, IdempotencyStore, StoreError};
use mailbridge::thread_key::ThreadKey;
use mailbridge::thread_stamp::stamp;
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
    /// Raw messages sent by S3 reference.
    pub messages: Arc<dyn MessageStore>,
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
    /// The sending mailbox is over a sending quota; the message waits `visibility_seconds`.
    Delayed {
        /// Why (Graph's code and message).
        reason: String,
        /// Graph `request-id`.
        graph_request_id: Option<String>,
        /// How long the message stays invisible.
        visibility_seconds: i32,
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
            Outcome::Delayed { .. } => "delayed",
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
    /// Sent again within this invocation after an answer that may mean Graph had accepted it
    /// (a 5xx, a connection dropped after the request): the recipient may have two copies.
    pub resent_after_ambiguous_answer: u32,
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

/// Per-mailbox and overall concurrency limits for one batch. The mailbox is the one Graph
/// counts: the account's user for `/me/sendMail` (also when `from` is a shared mailbox on the
/// `send_as` route), the shared mailbox for `/users/{mailbox}/sendMail`.
struct Limits {
    per_mailbox: std::sync::Mutex<HashMap<String, Arc<Semaphore>>>,
    per_mailbox_max: usize,
    total: Arc<Semaphore>,
}

impl Limits {
    /// The limiter of the Graph mailbox `n` is sent through with `token`'s route.
    fn for_mailbox(&self, n: &QueueMessage, token: &AccessToken) -> Arc<Semaphore> {
        let mailbox = match token.send_endpoint(n.from()) {
            SendAs::Me => "me".to_owned(),
            SendAs::User(mailbox) => mailbox.to_ascii_lowercase(),
        };
        self.per_mailbox
            .lock()
            .expect("limits lock")
            .entry(format!("{}|{mailbox}", n.account()))
            .or_insert_with(|| Arc::new(Semaphore::new(self.per_mailbox_max)))
            .clone()
    }
}

/// Process a batch. `deadline` is the invocation's deadline.
pub async fn process_batch(event: SqsEvent, deadline: Instant, deps: &Deps) -> BatchReport {
    // Parse first (pure): the sending mailbox decides which limiter a message waits for.
    let parsed: Vec<(SqsMessage, Result<QueueMessage, String>)> = event
        .records
        .into_iter()
        .map(|m| {
            let id = m.message_id.clone().unwrap_or_default();
            let parsed = QueueMessage::parse(m.body.as_deref().unwrap_or_default(), &id)
                .map_err(|e| e.to_string());
            (m, parsed)
        })
        .collect();
    let limits = &Limits {
        per_mailbox: Default::default(),
        per_mailbox_max: deps.settings.max_in_flight_per_mailbox.max(1),
        total: Arc::new(Semaphore::new(deps.settings.max_in_flight_total.max(1))),
    };
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
        metrics.resent_after_ambiguous_answer += u64::from(report.resent_after_ambiguous_answer);
        match &report.outcome {
            Outcome::Sent { .. } => {
                metrics.sent += 1;
                if report.resumed_unfinished_claim {
                    metrics.resent_after_unfinished_claim += 1;
                }
            }
            Outcome::Duplicate => metrics.duplicates += 1,
            Outcome::Parked { .. } => metrics.parked += 1,
            Outcome::Delayed { .. } => metrics.quota_delayed += 1,
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
type ClaimResult = Option<(String, Result<Claim, StoreError>)>;

/// What the idempotency record remembers of the payload: the SHA-256 of the queue message, or
/// for a message stored by reference the object's (the same message enqueued twice under
/// different keys is the same payload).
fn payload_hash(message: &SqsMessage, parsed: &QueueMessage) -> String {
    match parsed {
        QueueMessage::Mime(MimeNotification {
            raw_ref: Some(object),
            ..
        }) => object.sha256.clone(),
        _ => hex::encode(sha2::Sha256::digest(
            message.body.as_deref().unwrap_or_default().as_bytes(),
        )),
    }
}

async fn claim_all(
    parsed: &[(SqsMessage, Result<QueueMessage, String>)],
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
                .map(|n| (i, n.id().to_owned(), payload_hash(m, n)))
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
    parsed: &Result<QueueMessage, String>,
    claim: ClaimResult,
    deadline: Instant,
    deps: &Deps,
    limits: &Limits,
) -> MessageReport {
    let sqs_message_id = message.message_id.clone().unwrap_or_default();
    let (notification_id, account) = match parsed {
        Ok(n) => (Some(n.id().to_owned()), Some(n.account().to_owned())),
        Err(_) => {
            let readable =
                QueueMessage::readable_names(message.body.as_deref().unwrap_or_default());
            (readable.id, readable.account)
        }
    };
    let mut report = MessageReport {
        sqs_message_id,
        notification_id,
        account,
        outcome: Outcome::NotStarted,
        throttled: 0,
        resumed_unfinished_claim: matches!(claim, Some((_, Ok(Claim::Resumed { .. })))),
        resent_after_ambiguous_answer: 0,
    };
    let mut counts = SendCounts::default();
    report.outcome = decide(message, parsed, claim, deadline, deps, limits, &mut counts).await;
    report.throttled = counts.throttled;
    report.resent_after_ambiguous_answer = counts.resent_after_ambiguous_answer;
    log_outcome(&report, parsed.as_ref().ok());
    report
}

fn log_outcome(report: &MessageReport, n: Option<&QueueMessage>) {
    let (graph_request_id, reason): (Option<&str>, Option<&str>) = match &report.outcome {
        Outcome::Sent { graph_request_id } => (graph_request_id.as_deref(), None),
        Outcome::Parked { reason } => (reason.graph_request_id.as_deref(), Some(&reason.reason)),
        Outcome::Retry {
            reason,
            graph_request_id,
        }
        | Outcome::Delayed {
            reason,
            graph_request_id,
            ..
        } => (graph_request_id.as_deref(), Some(reason)),
        Outcome::ParkFailed { reason } | Outcome::NeedsReauth { reason } => (None, Some(reason)),
        Outcome::Duplicate | Outcome::NotStarted => (None, None),
    };
    let mailbox = n.map(|n| n.from().unwrap_or("me"));
    let kind = n.map(|n| match n {
        QueueMessage::Json(_) => "json",
        QueueMessage::Mime(_) => "mime",
    });
    let level_warn =
        report.outcome.is_failure() || matches!(report.outcome, Outcome::Parked { .. });
    if level_warn {
        tracing::warn!(
            sqs_message_id = %report.sqs_message_id,
            notification_id = report.notification_id.as_deref(),
            account = report.account.as_deref(),
            mailbox,
            kind,
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
            kind,
            outcome = report.outcome.name(),
            graph_request_id,
            throttled = report.throttled,
            resent_after_ambiguous_answer = report.resent_after_ambiguous_answer,
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
    n: Option<&QueueMessage>,
    kind: &str,
    reason: String,
) -> ParkReason {
    ParkReason {
        kind: kind.to_owned(),
        reason,
        sqs_message_id: message.message_id.clone().unwrap_or_default(),
        notification_id: n.map(|n| n.id().to_owned()),
        account: n.map(|n| n.account().to_owned()),
        ..ParkReason::default()
    }
}

/// What happened on the way to Graph, for the report and the metrics.
#[derive(Default)]
struct SendCounts {
    throttled: u32,
    resent_after_ambiguous_answer: u32,
}

async fn decide(
    message: &SqsMessage,
    parsed: &Result<QueueMessage, String>,
    claim: ClaimResult,
    deadline: Instant,
    deps: &Deps,
    limits: &Limits,
    counts: &mut SendCounts,
) -> Outcome {
    let margin = deps.settings.safety_margin;
    if remaining(deadline) <= margin {
        return Outcome::NotStarted;
    }
    let n = match parsed {
        Ok(n) => n,
        Err(reason) => {
            let body = message.body.as_deref().unwrap_or_default();
            let mut r = base_reason(message, None, "invalid-message", reason.clone());
            r.field = QueueMessage::first_invalid_field(body);
            // Named in the DLQ by what could still be read, so the sender can find its own
            // notification.
            let readable = QueueMessage::readable_names(body);
            r.notification_id = readable.id;
            r.account = readable.account;
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
                account = n.account(),
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

    // Claimed (all messages of the batch claim concurrently); the token says the account's
    // route, so which Graph mailbox the send counts against. Now wait for a slot of that
    // mailbox and an overall slot, but never past the safety margin. The slots are freed as
    // soon as Graph has answered, before the record is completed.
    let mut maybe_accepted = false;
    let outcome = match token(deps, message, n).await {
        Err(outcome) => outcome,
        Ok(token) => {
            let mailbox_limit = limits.for_mailbox(n, &token);
            let start_by = deadline.checked_sub(margin).unwrap_or(deadline);
            let permits = tokio::time::timeout_at(start_by, async {
                let mailbox = mailbox_limit.acquire_owned().await;
                let total = limits.total.clone().acquire_owned().await;
                (mailbox, total)
            })
            .await;
            match permits {
                Ok((Ok(mailbox), Ok(total))) if remaining(deadline) > margin => {
                    send_claimed(
                        message,
                        n,
                        token,
                        deadline,
                        deps,
                        counts,
                        &mut maybe_accepted,
                        (mailbox, total),
                    )
                    .await
                }
                _ => Outcome::NotStarted,
            }
        }
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
            delete_stored_objects(deps, n).await;
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

/// The request(s) a queue message becomes.
enum Prepared {
    Json(Box<OutgoingMail>),
    Mime(OutgoingMime),
    /// Too large for one request: Graph's draft route (create, attach, send).
    Draft(Box<DraftMail>),
}

/// A failed submission, and whether the request that sends (sendMail, or the draft's `send`)
/// went out: only then may Graph have accepted the mail.
struct Failed {
    error: GraphError,
    reached_send: bool,
}

impl Prepared {
    async fn submit(
        &self,
        deps: &Deps,
        token: &AccessToken,
        timeout: Duration,
        left: Duration,
    ) -> Result<SendReceipt, Failed> {
        let sent = |error| Failed {
            error,
            reached_send: true,
        };
        match self {
            Prepared::Json(mail) => deps
                .mail
                .send_mail(token, mail, timeout)
                .await
                .map_err(sent),
            Prepared::Mime(mail) => deps
                .mail
                .send_mime(token, mail, timeout)
                .await
                .map_err(sent),
            Prepared::Draft(mail) => {
                // each step is bounded by the draft route's own policy; all of them by the
                // time left
                deps.mail
                    .send_draft(token, mail, Instant::now() + left)
                    .await
                    .map_err(|f| Failed {
                        reached_send: f.reached_send,
                        error: with_step(f),
                    })
            }
        }
    }
}

/// The draft route's error, its message naming the step that failed.
fn with_step(failure: DraftFailure) -> GraphError {
    let DraftFailure { step, error, .. } = failure;
    match error {
        GraphError::Rejected {
            status,
            code,
            message,
            request_id,
        } => GraphError::Rejected {
            status,
            code,
            message: format!("{step}: {message}"),
            request_id,
        },
        GraphError::Unavailable {
            status,
            retry_after,
            code,
            message,
            request_id,
        } => GraphError::Unavailable {
            status,
            retry_after,
            code,
            message: format!("{step}: {message}"),
            request_id,
        },
        GraphError::Transport {
            detail,
            timed_out,
            after_request,
        } => GraphError::Transport {
            detail: format!("{step}: {detail}"),
            timed_out,
            after_request,
        },
        other => other,
    }
}

/// A sent notification's stored objects (a MIME message's `raw_ref`, a JSON notification's
/// attachments by `content_ref`) are not needed any more. A failed delete is only logged: the
/// bucket's lifecycle rule removes the object later.
async fn delete_stored_objects(deps: &Deps, n: &QueueMessage) {
    let objects: Vec<&ObjectRef> = match n {
        QueueMessage::Mime(m) => m.raw_ref.iter().collect(),
        QueueMessage::Json(j) => j.object_refs().collect(),
    };
    for object in objects {
        if let Err(e) = deps.messages.delete(object).await {
            tracing::warn!(notification_id = n.id(), error = %e, "sent, but a stored object could not be deleted; the bucket's lifecycle rule removes it");
        }
    }
}

/// Read a stored object the notification references (`field` names it), checked against this
/// stack's bucket, its size and SHA-256. S3 unavailable: retried; anything else: parked.
async fn read_object(
    deps: &Deps,
    message: &SqsMessage,
    q: &QueueMessage,
    object: &ObjectRef,
    field: &str,
) -> Result<Vec<u8>, Outcome> {
    if let Some(bucket) = &deps.settings.message_bucket
        && *bucket != object.bucket
    {
        let reason = format!(
            "{field}.bucket: {:?} is not this stack's message bucket ({bucket:?}); the object was not read",
            object.bucket
        );
        let mut r = base_reason(message, Some(q), "message-object", reason);
        r.field = Some(format!("{field}.bucket"));
        return Err(park(deps, message, r).await);
    }
    match deps.messages.get(object).await {
        Ok(raw) => Ok(raw),
        Err(e @ MessageStoreError::Unavailable { .. }) => Err(Outcome::Retry {
            reason: e.to_string(),
            graph_request_id: None,
        }),
        Err(e) => {
            let mut r = base_reason(message, Some(q), "message-object", format!("{field}: {e}"));
            r.field = Some(field.to_owned());
            Err(park(deps, message, r).await)
        }
    }
}

/// The send size limit of the account behind `token`: its own `max_message_bytes` when set,
/// else the stack's, with the name of the setting for the park reason.
fn send_size_limit(deps: &Deps, token: &AccessToken) -> (usize, &'static str) {
    match token.max_message_bytes {
        Some(limit) => (
            limit,
            "the account's max_message_bytes, its mailbox's MaxSendSize",
        ),
        None => (
            deps.settings.max_message_bytes,
            "MAILBRIDGE_MAX_MESSAGE_BYTES, Exchange Online's MaxSendSize",
        ),
    }
}

/// The park reason of a message over the send size limit.
fn over_limit(size: usize, limit: usize, setting: &str) -> String {
    format!(
        "the message is {size} bytes; the sending mailbox accepts at most {limit} bytes ({setting}); nothing was sent"
    )
}

/// Turn the queue message into the Graph request (for MIME: read, check and stamp the raw
/// message). An `Err` is the outcome (parked or retried).
/// The endpoint follows the account's shared mailbox route (`token.shared_mailbox_route`); an
/// app-only account always names the mailbox (`/users/{from or its mailbox}`).
async fn prepare(
    deps: &Deps,
    message: &SqsMessage,
    q: &QueueMessage,
    token: &AccessToken,
) -> Result<Prepared, Outcome> {
    let send_as = token.send_endpoint(q.from());
    match q {
        QueueMessage::Json(n) => prepare_json(deps, message, q, n, send_as, token).await,
        QueueMessage::Mime(n) => prepare_mime(deps, message, q, n, send_as, token).await,
    }
}

/// A JSON notification: its attachments by `content_ref` read from the message store; up to
/// Graph's request limit one JSON `sendMail`, above through a draft (the message resource
/// without attachments, then each attachment), above the send size limit parked.
async fn prepare_json(
    deps: &Deps,
    message: &SqsMessage,
    q: &QueueMessage,
    n: &Notification,
    send_as: SendAs,
    token: &AccessToken,
) -> Result<Prepared, Outcome> {
    use base64::Engine as _;
    let extras = stamp(&deps.thread_key, n);
    let mut mail = OutgoingMail::from_notification(n, extras);
    mail.send_as = send_as;
    let size = n.message_bytes();
    let (limit, setting) = send_size_limit(deps, token);
    if size > limit {
        let mut r = base_reason(
            message,
            Some(q),
            "too-large",
            over_limit(size, limit, setting),
        );
        r.field = Some("attachments".into());
        return Err(park(deps, message, r).await);
    }
    // the files by reference, in attachment order
    let mut files: Vec<Option<Vec<u8>>> = Vec::with_capacity(n.attachments.len());
    for (i, a) in n.attachments.iter().enumerate() {
        files.push(match &a.content_ref {
            Some(object) => Some(
                read_object(
                    deps,
                    message,
                    q,
                    object,
                    &format!("attachments[{i}].content_ref"),
                )
                .await?,
            ),
            None => None,
        });
    }
    if size <= MAX_GRAPH_REQUEST_BYTES {
        for (attachment, file) in mail.request.message.attachments.iter_mut().zip(files) {
            if let Some(bytes) = file {
                attachment.content_bytes = base64::engine::general_purpose::STANDARD.encode(bytes);
            }
        }
        return Ok(Prepared::Json(Box::new(mail)));
    }
    tracing::debug!(
        notification_id = n.id(),
        bytes = size,
        attachments = n.attachments.len(),
        "over Graph's request limit: sending through a draft"
    );
    let mut resource = mail.request.message;
    let attachments = std::mem::take(&mut resource.attachments)
        .into_iter()
        .zip(files)
        .map(|(a, file)| DraftAttachment {
            bytes: file.unwrap_or_else(|| {
                base64::engine::general_purpose::STANDARD
                    .decode(&a.content_bytes)
                    .unwrap_or_default()
            }),
            name: a.name,
            content_type: a.content_type,
            content_id: a.content_id,
            inline: a.is_inline,
        })
        .collect();
    Ok(Prepared::Draft(Box::new(DraftMail {
        send_as: mail.send_as,
        internet_message_id: resource.internet_message_id.clone(),
        content: DraftContent::Json(Box::new(resource)),
        attachments,
    })))
}

async fn prepare_mime(
    deps: &Deps,
    message: &SqsMessage,
    q: &QueueMessage,
    n: &MimeNotification,
    send_as: SendAs,
    token: &AccessToken,
) -> Result<Prepared, Outcome> {
    use base64::Engine as _;
    use mailbridge::mail::outgoing;
    let invalid = |field: &str, reason: String| {
        let mut r = base_reason(message, Some(q), "invalid-message", reason);
        r.field = Some(field.to_owned());
        r
    };
    let (raw, field) = match n.raw() {
        RawMessage::Inline(b64) => (
            base64::engine::general_purpose::STANDARD
                .decode(b64)
                .unwrap_or_default(),
            "raw_base64",
        ),
        RawMessage::Object(object) => (
            read_object(deps, message, q, object, "raw_ref").await?,
            "raw_ref",
        ),
    };
    let headers = match outgoing::read_outgoing(&raw) {
        Ok(h) => h,
        Err(e) => return Err(park(deps, message, invalid(field, format!("{field}: {e}"))).await),
    };
    let from_agrees = headers
        .from
        .as_deref()
        .is_some_and(|f| f.eq_ignore_ascii_case(&n.from));
    if !from_agrees {
        let reason = format!(
            "from: {:?} is not the message's From address ({:?})",
            n.from, headers.from
        );
        return Err(park(deps, message, invalid("from", reason)).await);
    }
    if headers.recipients.is_empty() {
        let reason = format!("{field}: the message names no recipient in To, Cc or Bcc");
        return Err(park(deps, message, invalid(field, reason)).await);
    }
    let raw = match &n.ticket_number {
        Some(ticket) => {
            let reference =
                mailbridge::mail::threading::ticket_reference(ticket, deps.thread_key.expose());
            let stamped = outgoing::stamp_reference(&raw, &reference);
            tracing::debug!(
                notification_id = n.id(),
                footer = stamped.footer,
                "thread marker stamped"
            );
            stamped.raw
        }
        None => raw,
    };
    let too_large = |reason: String| {
        let mut r = base_reason(message, Some(q), "too-large", reason);
        r.field = Some(field.to_owned());
        r
    };
    let size = raw.len();
    let (limit, setting) = send_size_limit(deps, token);
    if size > limit {
        return Err(park(deps, message, too_large(over_limit(size, limit, setting))).await);
    }
    let mail = OutgoingMime { send_as, mime: raw };
    if mail.mime.len().div_ceil(3) * 4 <= MAX_GRAPH_REQUEST_BYTES {
        return Ok(Prepared::Mime(mail));
    }
    // Over Graph's request limit: a draft from the message without its largest attachments,
    // which are then added one by one (upload sessions from 3 MB).
    let split = match mailbridge::mail::large::split_for_request(&mail.mime, MAX_DRAFT_MIME_BYTES) {
        Ok(split) => split,
        Err(e) => {
            let reason = format!(
                "the message is {size} bytes, {} as a base64 MIME request (Graph's request limit is {MAX_GRAPH_REQUEST_BYTES}), and it cannot go through a draft: {e}",
                size.div_ceil(3) * 4
            );
            return Err(park(deps, message, too_large(reason)).await);
        }
    };
    if let Some(a) = split
        .attachments
        .iter()
        .find(|a| a.bytes.len() > mailbridge::graph_draft::MAX_ATTACHMENT_BYTES)
    {
        let reason = format!(
            "attachment {:?} is {} bytes; Graph takes attachments of at most {} bytes",
            a.name,
            a.bytes.len(),
            mailbridge::graph_draft::MAX_ATTACHMENT_BYTES
        );
        return Err(park(deps, message, too_large(reason)).await);
    }
    tracing::debug!(
        notification_id = n.id(),
        bytes = size,
        attachments = split.attachments.len(),
        "over Graph's request limit: sending through a draft"
    );
    Ok(Prepared::Draft(Box::new(DraftMail {
        send_as: mail.send_as,
        content: DraftContent::Mime(split.message),
        attachments: split
            .attachments
            .into_iter()
            .map(|a| DraftAttachment {
                name: a.name,
                content_type: a.content_type,
                content_id: a.content_id,
                inline: a.inline,
                bytes: a.bytes,
            })
            .collect(),
        internet_message_id: headers.message_id.as_ref().map(|id| format!("<{id}>")),
    })))
}

/// Graph's request size limit (about 4 MB; the body of a MIME `sendMail` is the base64 message).
pub const MAX_GRAPH_REQUEST_BYTES: usize = 4_000_000;

/// The largest MIME a draft is created from: its base64 (4/3) stays under Graph's request limit.
pub const MAX_DRAFT_MIME_BYTES: usize = 2_900_000;

/// Send with `token`, with the 401 refresh-once and `Retry-After` rules. The idempotency lease is held.
#[allow(clippy::too_many_arguments)]
async fn send_claimed(
    message: &SqsMessage,
    n: &QueueMessage,
    mut token: AccessToken,
    deadline: Instant,
    deps: &Deps,
    counts: &mut SendCounts,
    maybe_accepted: &mut bool,
    slots: (OwnedSemaphorePermit, OwnedSemaphorePermit),
) -> Outcome {
    let _slots = slots;
    let settings = &deps.settings;
    let request = match prepare(deps, message, n, &token).await {
        Ok(request) => request,
        Err(outcome) => return outcome,
    };
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
        if *maybe_accepted {
            counts.resent_after_ambiguous_answer += 1;
            tracing::warn!(
                sqs_message_id = message.message_id.as_deref().unwrap_or_default(),
                notification_id = n.id(),
                account = n.account(),
                "resending after an answer that may mean Graph accepted the mail (5xx or a connection dropped after the request); the recipient may get two copies with the same Message-ID"
            );
        }
        let (error, reached_send) = match request.submit(deps, &token, timeout, left).await {
            Ok(receipt) => {
                return Outcome::Sent {
                    graph_request_id: receipt.request_id,
                };
            }
            Err(Failed {
                error,
                reached_send,
            }) => (error, reached_send),
        };
        if matches!(error, GraphError::Throttled { .. }) {
            counts.throttled += 1;
        }
        match &error {
            GraphError::Transport {
                after_request: true,
                ..
            } if reached_send => {
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
            // A 5xx may come after Graph queued the mail: a resend is named, the claim kept.
            GraphError::Unavailable { .. } if reached_send => *maybe_accepted = true,
            GraphError::SendingQuota { .. } => {
                return delayed_for_quota(deps, message, &error).await;
            }
            _ => {}
        }
        match (&error, error.class()) {
            (GraphError::Unauthorized { .. }, _) if !refreshed => {
                refreshed = true;
                deps.tokens.invalidate(n.account(), Audience::Graph);
                token = match self::token(deps, message, n).await {
                    Ok(t) => t,
                    Err(outcome) => return outcome,
                };
            }
            (_, ErrorClass::Transient) => {
                // Graph's Retry-After (read by mailbridge::retry) in full, when the wait and a
                // send still fit before the deadline; else the queue delivers it again
                let send_by = deadline
                    .checked_sub(settings.safety_margin + Duration::from_millis(500))
                    .unwrap_or(deadline);
                let fits = error.retry_after().filter(|wait| {
                    waits < settings.max_retry_after_waits
                        && mailbridge::retry::wait_fits(*wait, send_by)
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
                let kind = match error.code() {
                    mailbridge::graph::MAILBOX_FULL_CODE => "sender-mailbox-full",
                    // the mailbox's own MaxSendSize is below MAILBRIDGE_MAX_MESSAGE_BYTES
                    "ErrorMessageSizeExceeded" => "too-large",
                    _ => "graph-rejected",
                };
                let missing = match &token.app_only_mailbox {
                    Some(mailbox) => mailbridge::send_rights::diagnose_app_only(
                        error.code(),
                        n.from().unwrap_or(mailbox),
                        &token.scopes,
                    ),
                    None => n.from().and_then(|from| {
                        mailbridge::send_rights::diagnose(
                            error.code(),
                            token.shared_mailbox_route,
                            from,
                            &token.scopes,
                        )
                    }),
                };
                let reason = match missing {
                    Some(right) => format!("{error}; {right}"),
                    None => error.to_string(),
                };
                let mut r = base_reason(message, Some(n), kind, reason);
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

/// A sending quota: the message waits (invisible) until the quota's window has likely passed:
/// Graph's `Retry-After` when given, else a few minutes for the message rate and
/// `quota_visibility` for the daily recipient limit. Never parked for it.
async fn delayed_for_quota(deps: &Deps, message: &SqsMessage, error: &GraphError) -> Outcome {
    let per_minute = matches!(
        error.code(),
        "ErrorExceededMessageLimit" | "ErrorMessageRateLimitExceeded"
    );
    let wait = error.retry_after().unwrap_or(if per_minute {
        Duration::from_secs(300)
    } else {
        deps.settings.quota_visibility
    });
    let seconds = i32::try_from(wait.as_secs().clamp(60, 43200)).unwrap_or(43200);
    if let (Some(arn), Some(handle)) = (&message.event_source_arn, &message.receipt_handle)
        && let Err(e) = deps.visibility.delay(arn, handle, seconds).await
    {
        tracing::warn!(error = %e, "could not delay a message whose mailbox is over its sending quota");
    }
    Outcome::Delayed {
        reason: format!("{error}; tried again in {seconds} s"),
        graph_request_id: error.request_id().map(str::to_owned),
        visibility_seconds: seconds,
    }
}

async fn token(
    deps: &Deps,
    message: &SqsMessage,
    n: &QueueMessage,
) -> Result<AccessToken, Outcome> {
    match deps.tokens.access_token(n.account(), Audience::Graph).await {
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
