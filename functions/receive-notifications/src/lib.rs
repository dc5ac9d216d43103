//! receive-notifications: Microsoft Graph change notifications in, "poll mailbox X now" out.
//!
//! The function sits behind a Lambda Function URL (docs/push.md). [`Receiver::receive`] is the
//! whole logic, on plain requests and answers; `main.rs` only translates the Function URL event.
//!
//! - `POST ?validationToken=…`: the validation handshake. The URL-decoded token comes back as
//!   `text/plain` with 200, nothing else is read or written (Graph allows 10 s for it).
//! - `POST` with a change-notification collection: every notification must name a
//!   subscription the state table knows ([`mailbridge::state_table::SubscriptionStore`]) and carry its
//!   `clientState` (compared in constant time with the stored hash). Notifications that do not
//!   are dropped, counted and logged (their subscription ids, never a clientState); a batch
//!   mixing authentic and other notifications is answered 202 and only the authentic ones are
//!   acted on (Graph puts notifications of several subscriptions in one POST, and would deliver
//!   the authentic ones again for hours after any other answer); when none is authentic the
//!   answer is 403 and nothing was done, the
//!   same 403 for an unknown subscription and a wrong secret (a caller learns nothing about
//!   which subscriptions exist). An oversized body is 413, malformed JSON 400, both before any
//!   lookup.
//! - Each authentic change notification (and `missed`) asks for a poll of its mailbox through
//!   the poll-request gate ([`mailbridge::state_table::PollGate`]): only the notification that arms the
//!   gate enqueues a request, so a burst for one mailbox is one poll, and the poller disarms the
//!   gate before it lists the mailbox, so a notification arriving during a poll leads to another.
//!   `reauthorizationRequired` and `subscriptionRemoved` are enqueued as they are (rare; the
//!   poller renews or recreates the subscription, then polls). Answer: 202.
//! - A state table or queue failure is 503: Graph delivers the notification again (for up to
//!   4 hours), and the scheduled poll runs anyway.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use mailbridge::error::{Classify, ErrorClass};
use mailbridge::push::{LifecycleEvent, PollRequestMessage, client_state_matches};
use mailbridge::state_table::{PollGate, StoreError, SubscriptionRecord, SubscriptionStore};
use serde::Deserialize;

/// The largest request body read (bytes). Graph batches notifications; a basic Outlook
/// notification is under 1 KB.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// The most distinct subscriptions one request may name (each is one state-table read).
pub const MAX_SUBSCRIPTIONS_PER_REQUEST: usize = 200;

/// The most rejected notifications named in the log line of one request.
pub const MAX_REJECTED_LOGGED: usize = 10;

/// The longest validation token echoed (characters).
pub const MAX_VALIDATION_TOKEN_CHARS: usize = 4096;

/// One HTTP request, as the Function URL hands it over.
#[derive(Clone, Debug, Default)]
pub struct Request {
    /// `POST`, `GET`...
    pub method: String,
    /// The raw (still URL-encoded) query string, without `?`.
    pub raw_query: String,
    /// The body.
    pub body: Vec<u8>,
}

/// The answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    /// HTTP status.
    pub status: u16,
    /// `Content-Type`.
    pub content_type: &'static str,
    /// Body.
    pub body: String,
}

impl Response {
    fn text(status: u16, body: impl Into<String>) -> Self {
        Response {
            status,
            content_type: "text/plain; charset=utf-8",
            body: body.into(),
        }
    }
}

/// Why a request was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum ReceiveError {
    /// Not a POST.
    #[error("method {0} not allowed: Graph POSTs notifications and validation requests")]
    MethodNotAllowed(String),
    /// Body over [`MAX_BODY_BYTES`].
    #[error("request body of {0} bytes is over the {MAX_BODY_BYTES}-byte limit")]
    TooLarge(usize),
    /// Not a change-notification collection.
    #[error("not a change-notification collection: {0}")]
    Malformed(String),
    /// A validation token that is empty or too long.
    #[error("validationToken {0}")]
    BadValidationToken(&'static str),
    /// No notification named a known subscription with its clientState.
    #[error("no notification carried a known subscription and its clientState ({0} rejected)")]
    NotAuthentic(usize),
    /// The state table failed.
    #[error(transparent)]
    State(#[from] StoreError),
    /// The poll-request queue failed.
    #[error("poll-request queue: {0}")]
    Queue(String),
}

impl Classify for ReceiveError {
    fn class(&self) -> ErrorClass {
        match self {
            ReceiveError::State(_) | ReceiveError::Queue(_) => ErrorClass::Transient,
            _ => ErrorClass::Permanent,
        }
    }
}

impl ReceiveError {
    /// The HTTP status it is answered with.
    pub fn status(&self) -> u16 {
        match self {
            ReceiveError::MethodNotAllowed(_) => 405,
            ReceiveError::TooLarge(_) => 413,
            ReceiveError::Malformed(_) | ReceiveError::BadValidationToken(_) => 400,
            ReceiveError::NotAuthentic(_) => 403,
            ReceiveError::State(_) | ReceiveError::Queue(_) => 503,
        }
    }

    /// The answer: a short text; a transient failure names no internals.
    pub fn response(&self) -> Response {
        match self.class() {
            ErrorClass::Transient => Response::text(503, "temporarily unavailable; retry"),
            _ => Response::text(self.status(), self.to_string()),
        }
    }
}

/// Port: the poll-request queue.
#[async_trait]
pub trait PollQueue: Send + Sync {
    /// Enqueue `message`, delivered after `delay`.
    async fn enqueue(&self, message: &PollRequestMessage, delay: Duration) -> Result<(), String>;
}

/// What one request did, for the metrics line.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Outcome {
    /// Authentic notifications.
    pub accepted: u64,
    /// Notifications dropped: unknown subscription or wrong clientState.
    pub rejected: u64,
    /// Poll requests enqueued.
    pub polls_requested: u64,
    /// Notifications whose mailbox already had a request queued.
    pub coalesced: u64,
    /// Lifecycle notifications among the accepted.
    pub lifecycle: u64,
    /// The request was a validation handshake.
    pub validation: bool,
}

/// The receiver and its ports.
#[derive(Clone)]
pub struct Receiver {
    /// Subscription records.
    pub subscriptions: Arc<dyn SubscriptionStore>,
    /// The poll-request gate.
    pub gate: Arc<dyn PollGate>,
    /// The poll-request queue.
    pub queue: Arc<dyn PollQueue>,
    /// How long a poll request waits in the queue before a poll takes it: notifications for the
    /// same mailbox arriving meanwhile join it.
    pub poll_delay: Duration,
}

#[derive(Deserialize)]
struct Collection {
    value: Vec<Notification>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Notification {
    subscription_id: String,
    #[serde(default)]
    client_state: Option<String>,
    #[serde(default)]
    lifecycle_event: Option<String>,
}

/// What an authentic notification asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ask {
    Poll,
    Lifecycle(LifecycleEvent),
}

fn validation_token(raw_query: &str) -> Option<String> {
    url::form_urlencoded::parse(raw_query.as_bytes())
        .find(|(k, _)| k == "validationToken")
        .map(|(_, v)| v.into_owned())
}

impl Receiver {
    /// Handle one request. Every path answers; the outcome says what was done.
    pub async fn receive(&self, request: &Request) -> (Response, Outcome) {
        let mut outcome = Outcome::default();
        match self.try_receive(request, &mut outcome).await {
            Ok(response) => (response, outcome),
            Err(e) => {
                match e.class() {
                    ErrorClass::Transient => {
                        tracing::error!(error = %e, "notifications not taken; Graph delivers them again")
                    }
                    _ => tracing::warn!(status = e.status(), error = %e, "request refused"),
                }
                (e.response(), outcome)
            }
        }
    }

    async fn try_receive(
        &self,
        request: &Request,
        outcome: &mut Outcome,
    ) -> Result<Response, ReceiveError> {
        if !request.method.eq_ignore_ascii_case("POST") {
            return Err(ReceiveError::MethodNotAllowed(request.method.clone()));
        }
        if let Some(token) = validation_token(&request.raw_query) {
            if token.is_empty() {
                return Err(ReceiveError::BadValidationToken("is empty"));
            }
            if token.chars().count() > MAX_VALIDATION_TOKEN_CHARS {
                return Err(ReceiveError::BadValidationToken("is too long"));
            }
            outcome.validation = true;
            return Ok(Response::text(200, token));
        }
        if request.body.len() > MAX_BODY_BYTES {
            return Err(ReceiveError::TooLarge(request.body.len()));
        }
        let collection: Collection = serde_json::from_slice(&request.body)
            .map_err(|e| ReceiveError::Malformed(e.to_string()))?;
        let ids: std::collections::BTreeSet<&str> = collection
            .value
            .iter()
            .map(|n| n.subscription_id.as_str())
            .collect();
        if ids.len() > MAX_SUBSCRIPTIONS_PER_REQUEST {
            return Err(ReceiveError::Malformed(format!(
                "names {} subscriptions; at most {MAX_SUBSCRIPTIONS_PER_REQUEST} are read per request",
                ids.len()
            )));
        }
        // Look every subscription up first; nothing is done before all are checked.
        let mut records: HashMap<&str, Option<SubscriptionRecord>> = HashMap::new();
        for id in ids {
            let record = if id.is_empty() || id.len() > 256 {
                None
            } else {
                self.subscriptions.subscription(id).await?
            };
            records.insert(id, record);
        }
        // mailbox → what its notifications ask for (polls coalesce, lifecycle events do not)
        let mut asks: BTreeMap<String, Vec<(Ask, String)>> = BTreeMap::new();
        let mut rejected: Vec<String> = Vec::new();
        for n in &collection.value {
            let authentic = records
                .get(n.subscription_id.as_str())
                .and_then(Option::as_ref)
                .filter(|r| {
                    n.client_state
                        .as_deref()
                        .is_some_and(|given| client_state_matches(&r.client_state_sha256, given))
                });
            let Some(record) = authentic else {
                outcome.rejected += 1;
                if rejected.len() < MAX_REJECTED_LOGGED {
                    let known = records
                        .get(n.subscription_id.as_str())
                        .is_some_and(Option::is_some);
                    // the id as sent (the caller's text), cut short; never the clientState
                    let id: String = n.subscription_id.chars().take(64).collect();
                    rejected.push(if known {
                        format!("{id} (wrong clientState)")
                    } else {
                        format!("{id} (unknown subscription)")
                    });
                }
                continue;
            };
            outcome.accepted += 1;
            let ask = match n.lifecycle_event.as_deref() {
                None => Ask::Poll,
                Some(event) => {
                    outcome.lifecycle += 1;
                    match event {
                        "reauthorizationRequired" => {
                            Ask::Lifecycle(LifecycleEvent::ReauthorizationRequired)
                        }
                        "subscriptionRemoved" => {
                            Ask::Lifecycle(LifecycleEvent::SubscriptionRemoved)
                        }
                        "missed" => Ask::Poll,
                        other => {
                            // a newer event: looking costs one poll, ignoring it may cost mail
                            tracing::warn!(event = other, subscription = %record.id, "unknown lifecycle event; polling the mailbox");
                            Ask::Poll
                        }
                    }
                }
            };
            asks.entry(record.mailbox.clone())
                .or_default()
                .push((ask, record.id.clone()));
        }
        if outcome.rejected > 0 {
            tracing::warn!(
                rejected = outcome.rejected,
                accepted = outcome.accepted,
                subscriptions = ?rejected,
                "notifications with an unknown subscription or a wrong clientState dropped; nothing done for them"
            );
        }
        if outcome.accepted == 0 {
            return Err(ReceiveError::NotAuthentic(outcome.rejected as usize));
        }
        for (mailbox, mut wants) in asks {
            wants.sort_by_key(|(ask, _)| matches!(ask, Ask::Poll));
            wants.dedup();
            let mut polled = false;
            for (ask, subscription_id) in wants {
                match ask {
                    Ask::Lifecycle(event) => {
                        let message = PollRequestMessage {
                            mailbox: mailbox.clone(),
                            lifecycle: Some(event),
                            subscription_id: Some(subscription_id),
                        };
                        self.queue
                            .enqueue(&message, Duration::ZERO)
                            .await
                            .map_err(ReceiveError::Queue)?;
                        tracing::info!(mailbox = %mailbox, event = event.as_str(), "lifecycle event queued for the poller");
                        outcome.polls_requested += 1;
                        // the poller polls after acting on it: a plain poll would only repeat it
                        polled = true;
                    }
                    Ask::Poll if polled => outcome.coalesced += 1,
                    Ask::Poll => {
                        polled = true;
                        if self.request_poll(&mailbox).await? {
                            outcome.polls_requested += 1;
                        } else {
                            outcome.coalesced += 1;
                        }
                    }
                }
            }
        }
        Ok(Response::text(202, ""))
    }

    /// Ask for a poll of `mailbox` through its gate; true when a request was enqueued.
    async fn request_poll(&self, mailbox: &str) -> Result<bool, ReceiveError> {
        if !self.gate.arm(mailbox).await? {
            tracing::debug!(mailbox, "a poll request is already queued");
            return Ok(false);
        }
        let message = PollRequestMessage {
            mailbox: mailbox.to_owned(),
            lifecycle: None,
            subscription_id: None,
        };
        if let Err(e) = self.queue.enqueue(&message, self.poll_delay).await {
            // Nothing is queued: open the gate again, so Graph's redelivery can enqueue.
            if let Err(disarm) = self.gate.disarm(mailbox).await {
                tracing::warn!(mailbox, error = %disarm, "could not disarm the poll-request gate; it counts as disarmed after its stale time");
            }
            return Err(ReceiveError::Queue(e));
        }
        tracing::info!(mailbox, "poll requested");
        Ok(true)
    }
}

/// The SQS adapter of [`PollQueue`].
#[derive(Clone, Debug)]
pub struct SqsPollQueue {
    client: mailbridge::aws::LazyClient<aws_sdk_sqs::Client>,
    queue_url: String,
}

impl SqsPollQueue {
    /// Send to `queue_url` through `client`.
    pub fn new(
        client: impl Into<mailbridge::aws::LazyClient<aws_sdk_sqs::Client>>,
        queue_url: impl Into<String>,
    ) -> Self {
        SqsPollQueue {
            client: client.into(),
            queue_url: queue_url.into(),
        }
    }
}

#[async_trait]
impl PollQueue for SqsPollQueue {
    async fn enqueue(&self, message: &PollRequestMessage, delay: Duration) -> Result<(), String> {
        let body = serde_json::to_string(message).map_err(|e| e.to_string())?;
        self.client
            .send_message()
            .queue_url(&self.queue_url)
            .message_body(body)
            .delay_seconds(delay.as_secs().min(900) as i32)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| {
                let e = e.into_service_error();
                format!("{e}: {e:?}")
            })
    }
}

/// The function's settings, read once per cold start.
#[derive(Clone, Debug)]
pub struct Settings {
    /// `MAILBRIDGE_STATE_TABLE`.
    pub state_table: String,
    /// `MAILBRIDGE_POLL_REQUEST_QUEUE_URL`: the queue the poller takes poll requests from.
    pub poll_request_queue_url: String,
    /// `MAILBRIDGE_POLL_REQUEST_DELAY_SECONDS` (default 2, 0-900): see [`Receiver::poll_delay`].
    pub poll_delay: Duration,
}

pub use mailbridge::config::SettingsError;

impl Settings {
    /// Read the process environment.
    pub fn from_env() -> Result<Self, SettingsError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Read from a variable lookup; every missing or invalid variable is named at once.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, SettingsError> {
        let mut env = mailbridge::config::EnvReader::new(get);
        let settings = Settings {
            state_table: env.required("MAILBRIDGE_STATE_TABLE", "the DynamoDB state table name"),
            poll_request_queue_url: env.required(
                "MAILBRIDGE_POLL_REQUEST_QUEUE_URL",
                "the URL of the SQS queue the poller takes poll requests from",
            ),
            // SQS's longest message delay: 900 s
            poll_delay: env.seconds(
                "MAILBRIDGE_POLL_REQUEST_DELAY_SECONDS",
                Duration::from_secs(2),
                0..=900,
            ),
        };
        env.finish(settings)
    }
}

/// One CloudWatch EMF line (namespace `Mailbridge`, dimension `Function`).
pub fn emf_line(outcome: &Outcome, status: u16, timestamp_ms: i64) -> String {
    let metrics = [
        ("NotificationsAccepted", outcome.accepted),
        ("NotificationsRejected", outcome.rejected),
        ("PollRequestsQueued", outcome.polls_requested),
        ("PollRequestsCoalesced", outcome.coalesced),
        ("LifecycleNotifications", outcome.lifecycle),
        ("NotificationRequestsFailed", u64::from(status >= 500)),
    ];
    mailbridge::telemetry::EmfLine::new(timestamp_ms)
        .metrics(("Function", "receive-notifications"), "Count", &metrics)
        .property("status", status)
        .to_string()
}

#[cfg(test)]
mod tests;
