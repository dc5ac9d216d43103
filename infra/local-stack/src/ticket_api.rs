//! Helpdesk ticket API stand-in: records tickets, honours `Idempotency-Key`, test controls.
//!
//! `POST {base_url}/sinks/<sink>/tickets` with a JSON body creates a ticket (201 `{"id":"T-<n>"}`).
//! It is as strict as a careful webhook receiver (the contract of
//! `shared/schemas/ticket-payload.schema.json`), never more lenient:
//! - the body must be valid against the published schema (with the draft schema it refers to):
//!   422 with the first problems otherwise;
//! - `Idempotency-Key` is required (400 without it) and must equal the payload's
//!   `idempotency_key`;
//! - a repeated key with the same body returns the first answer again (200,
//!   `Idempotent-Replayed: true`) and records nothing new; the same key with a different body is
//!   a client bug: 422.
//!
//! Everything is per *sink* (a path segment the test owns), so tests running in parallel against
//! one stand-in never see each other's tickets or faults:
//! - [`TicketApiStandIn::require_header`]: answer 401 unless a header has a value;
//! - [`TicketApiStandIn::fail_next`] (5xx), [`TicketApiStandIn::throttle_next`] (429 +
//!   `Retry-After`), [`TicketApiStandIn::reject_next`] (4xx), [`TicketApiStandIn::set_down`]
//!   (503 until turned off), [`TicketApiStandIn::set_latency`],
//!   [`TicketApiStandIn::drop_response_next`] (record the ticket, then close the connection without
//!   answering: the client cannot know it was accepted);
//! - [`TicketApiStandIn::hold_requests_after`] / [`TicketApiStandIn::release_held`]: requests past
//!   the n-th wait (unanswered) until released, so a test can act at an exact point of a run.
//!
//! The same controls answer over HTTP ([`crate::ticket_api_control`], `/_control/...`), so a
//! stack in another process can be driven.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use sha2::Digest as _;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;

/// A ticket the stand-in accepted.
#[derive(Clone, Debug)]
pub struct RecordedTicket {
    /// The `Idempotency-Key` header (empty when absent).
    pub idempotency_key: String,
    /// The JSON body.
    pub body: serde_json::Value,
    /// The id it was given.
    pub id: String,
    /// When it was accepted (what a time-to-ticket benchmark measures to).
    pub accepted_at: std::time::Instant,
}

#[derive(Default)]
struct SinkState {
    tickets: Vec<RecordedTicket>,
    /// Per idempotency key: SHA-256 of the body it came with, and the answer given.
    answers: HashMap<String, ([u8; 32], String)>,
    requests: u64,
    fail_next: u32,
    fail_status: u16,
    throttle_next: u32,
    retry_after_seconds: u64,
    reject_next: u32,
    reject_status: u16,
    down: bool,
    latency: Duration,
    drop_next: u32,
    required_header: Option<(String, String)>,
    /// Every request whose body contains this text gets this status ("one mail the API always
    /// fails on").
    poison: Option<(String, u16)>,
    /// Requests numbered above this wait until [`TicketApiStandIn::release_held`].
    hold_after: Option<u64>,
    /// Every request whose body contains this text is answered (and its ticket made) only
    /// after this delay: one slow mail among quick ones.
    slow: Option<(String, Duration)>,
}

#[derive(Default)]
struct Shared {
    sinks: HashMap<String, SinkState>,
    next_id: u64,
}

/// Handle to a running ticket API stand-in. Cheap to clone; all clones share state.
#[derive(Clone)]
pub struct TicketApiStandIn {
    /// e.g. `http://127.0.0.1:41234`.
    pub base_url: String,
    shared: Arc<Mutex<Shared>>,
}

impl std::fmt::Debug for TicketApiStandIn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TicketApiStandIn")
            .field("base_url", &self.base_url)
            .finish()
    }
}

enum Decision {
    Answer(StatusCode, HeaderMap, String),
    Drop,
}

async fn create_ticket(
    State(shared): State<Arc<Mutex<Shared>>>,
    Path(sink): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (latency, number) = {
        let mut guard = shared.lock().expect("stand-in state");
        let state = guard.sinks.entry(sink.clone()).or_default();
        state.requests += 1;
        let slow = state.slow.as_ref().and_then(|(needle, delay)| {
            body.windows(needle.len().max(1))
                .any(|w| w == needle.as_bytes())
                .then_some(*delay)
        });
        (state.latency + slow.unwrap_or_default(), state.requests)
    };
    loop {
        let held = {
            let guard = shared.lock().expect("stand-in state");
            guard
                .sinks
                .get(&sink)
                .and_then(|s| s.hold_after)
                .is_some_and(|after| number > after)
        };
        if !held {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let decision = {
        let mut guard = shared.lock().expect("stand-in state");
        guard.next_id += 1;
        let next_id = guard.next_id;
        let state = guard.sinks.entry(sink).or_default();
        decide(state, &headers, &body, next_id)
    };
    match decision {
        Decision::Answer(status, extra, text) => {
            let mut response = (status, text).into_response();
            response.headers_mut().extend(extra);
            response
                .headers_mut()
                .insert("content-type", "application/json".parse().expect("static"));
            response
        }
        // Unwinding out of the handler makes hyper drop the connection without a response.
        Decision::Drop => std::panic::resume_unwind(Box::new(
            "ticket API stand-in: dropping the response on purpose (drop_response_next)",
        )),
    }
}

fn decide(state: &mut SinkState, headers: &HeaderMap, body: &[u8], next_id: u64) -> Decision {
    let json = |status: StatusCode, value: serde_json::Value| {
        Decision::Answer(status, HeaderMap::new(), value.to_string())
    };
    if let Some((name, value)) = &state.required_header
        && headers.get(name.as_str()).and_then(|v| v.to_str().ok()) != Some(value.as_str())
    {
        return json(
            StatusCode::UNAUTHORIZED,
            serde_json::json!({"error": "missing or wrong credentials"}),
        );
    }
    if state.down {
        return json(
            StatusCode::SERVICE_UNAVAILABLE,
            serde_json::json!({"error": "down for maintenance"}),
        );
    }
    if let Some((needle, status)) = &state.poison
        && body
            .windows(needle.len().max(1))
            .any(|w| w == needle.as_bytes())
    {
        let status = StatusCode::from_u16(*status).unwrap_or(StatusCode::BAD_GATEWAY);
        return json(
            status,
            serde_json::json!({"error": "this payload always fails"}),
        );
    }
    if state.fail_next > 0 {
        state.fail_next -= 1;
        let status = StatusCode::from_u16(state.fail_status).unwrap_or(StatusCode::BAD_GATEWAY);
        return json(status, serde_json::json!({"error": "injected failure"}));
    }
    if state.throttle_next > 0 {
        state.throttle_next -= 1;
        let mut extra = HeaderMap::new();
        extra.insert(
            "retry-after",
            state
                .retry_after_seconds
                .to_string()
                .parse()
                .expect("digits"),
        );
        return Decision::Answer(
            StatusCode::TOO_MANY_REQUESTS,
            extra,
            serde_json::json!({"error": "slow down"}).to_string(),
        );
    }
    if state.reject_next > 0 {
        state.reject_next -= 1;
        let status = StatusCode::from_u16(state.reject_status).unwrap_or(StatusCode::BAD_REQUEST);
        return json(
            status,
            serde_json::json!({"error": "ticket rejected by test control"}),
        );
    }
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(body) else {
        return json(
            StatusCode::BAD_REQUEST,
            serde_json::json!({"error": "body is not JSON"}),
        );
    };
    let key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    if key.is_empty() {
        return json(
            StatusCode::BAD_REQUEST,
            serde_json::json!({"error": "the Idempotency-Key header is required"}),
        );
    }
    let problems: Vec<String> = PAYLOAD_SCHEMA
        .iter_errors(&value)
        .take(5)
        .map(|e| format!("{}: {e}", e.instance_path()))
        .collect();
    if !problems.is_empty() {
        return json(
            StatusCode::UNPROCESSABLE_ENTITY,
            serde_json::json!({"error": "the body does not match ticket-payload.schema.json", "problems": problems}),
        );
    }
    if value["idempotency_key"].as_str() != Some(key.as_str()) {
        return json(
            StatusCode::UNPROCESSABLE_ENTITY,
            serde_json::json!({"error": "Idempotency-Key differs from the payload's idempotency_key"}),
        );
    }
    let digest: [u8; 32] = sha2::Sha256::digest(body).into();
    if let Some((first_digest, previous)) = state.answers.get(&key) {
        if *first_digest != digest {
            return json(
                StatusCode::UNPROCESSABLE_ENTITY,
                serde_json::json!({"error": "this Idempotency-Key was used with a different payload"}),
            );
        }
        let mut replayed = HeaderMap::new();
        replayed.insert("idempotent-replayed", "true".parse().expect("static"));
        return Decision::Answer(StatusCode::OK, replayed, previous.clone());
    }
    let id = format!("T-{next_id}");
    let answer = serde_json::json!({"id": id}).to_string();
    state.tickets.push(RecordedTicket {
        idempotency_key: key.clone(),
        body: value,
        id,
        accepted_at: std::time::Instant::now(),
    });
    state.answers.insert(key, (digest, answer.clone()));
    if state.drop_next > 0 {
        state.drop_next -= 1;
        return Decision::Drop;
    }
    Decision::Answer(StatusCode::CREATED, HeaderMap::new(), answer)
}

/// `shared/schemas/ticket-payload.schema.json`, with the draft schema it refers to.
static PAYLOAD_SCHEMA: LazyLock<jsonschema::Validator> = LazyLock::new(|| {
    let parse = |text: &str| -> serde_json::Value {
        serde_json::from_str(text).expect("the published schemas are JSON")
    };
    let draft = parse(mailbridge::ticket_sink::TICKET_DRAFT_JSON_SCHEMA);
    let payload = parse(mailbridge::ticket_sink::TICKET_PAYLOAD_JSON_SCHEMA);
    let registry = jsonschema::Registry::new()
        .add(
            "https://mailbridge.invalid/schemas/ticket-draft.schema.json",
            draft,
        )
        .and_then(|r| r.prepare())
        .expect("the draft schema registers");
    let registry: &'static jsonschema::Registry<'static> = Box::leak(Box::new(registry));
    jsonschema::options()
        .with_registry(registry)
        .build(&payload)
        .expect("the payload schema compiles")
});

impl TicketApiStandIn {
    /// Bind 127.0.0.1:0 and serve on the current tokio runtime.
    pub async fn start() -> anyhow::Result<Self> {
        let shared = Arc::new(Mutex::new(Shared::default()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let base_url = format!("http://{}", listener.local_addr()?);
        let stand_in = TicketApiStandIn {
            base_url,
            shared: shared.clone(),
        };
        let app = Router::new()
            .route("/sinks/{sink}/tickets", post(create_ticket))
            .layer(DefaultBodyLimit::max(256 * 1024 * 1024))
            .with_state(shared)
            // the test controls over HTTP, for a stack in another process
            .merge(crate::ticket_api_control::routes(stand_in.clone()));
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(stand_in)
    }

    /// The URL to POST tickets for `sink` to.
    pub fn sink_url(&self, sink: &str) -> String {
        format!("{}/sinks/{sink}/tickets", self.base_url)
    }

    fn with_sink<T>(&self, sink: &str, f: impl FnOnce(&mut SinkState) -> T) -> T {
        let mut guard = self.shared.lock().expect("stand-in state");
        f(guard.sinks.entry(sink.to_string()).or_default())
    }

    /// Tickets accepted on `sink` (each idempotency key once), in arrival order.
    pub fn tickets(&self, sink: &str) -> Vec<RecordedTicket> {
        self.with_sink(sink, |s| s.tickets.clone())
    }

    /// Requests received on `sink` (including failed and repeated ones).
    pub fn requests(&self, sink: &str) -> u64 {
        self.with_sink(sink, |s| s.requests)
    }

    /// Answer 401 unless header `name` equals `value`.
    pub fn require_header(&self, sink: &str, name: &str, value: &str) {
        let (name, value) = (name.to_ascii_lowercase(), value.to_string());
        self.with_sink(sink, |s| s.required_header = Some((name, value)));
    }

    /// Answer the next `count` requests with HTTP `status` (5xx).
    pub fn fail_next(&self, sink: &str, count: u32, status: u16) {
        self.with_sink(sink, |s| {
            s.fail_next = count;
            s.fail_status = status;
        });
    }

    /// Answer every request whose body contains `needle` with `status` (e.g. 503), however
    /// often it is retried: one mail the API always fails on.
    pub fn fail_payloads_containing(&self, sink: &str, needle: &str, status: u16) {
        let needle = needle.to_owned();
        self.with_sink(sink, |s| s.poison = Some((needle, status)));
    }

    /// Answer the next `count` requests with 429 and `Retry-After: retry_after_seconds`.
    pub fn throttle_next(&self, sink: &str, count: u32, retry_after_seconds: u64) {
        self.with_sink(sink, |s| {
            s.throttle_next = count;
            s.retry_after_seconds = retry_after_seconds;
        });
    }

    /// Reject the next `count` requests with HTTP `status` (4xx).
    pub fn reject_next(&self, sink: &str, count: u32, status: u16) {
        self.with_sink(sink, |s| {
            s.reject_next = count;
            s.reject_status = status;
        });
    }

    /// Answer every request with 503 while `down`.
    pub fn set_down(&self, sink: &str, down: bool) {
        self.with_sink(sink, |s| s.down = down);
    }

    /// Make every request whose body contains `needle` wait `delay` before its ticket is made
    /// and answered.
    pub fn slow_payloads_containing(&self, sink: &str, needle: &str, delay: Duration) {
        let needle = needle.to_owned();
        self.with_sink(sink, |s| s.slow = Some((needle, delay)));
    }

    /// Delay every answer on `sink`.
    pub fn set_latency(&self, sink: &str, latency: Duration) {
        self.with_sink(sink, |s| s.latency = latency);
    }

    /// Make every request on `sink` after the first `count` wait, unanswered, until
    /// [`TicketApiStandIn::release_held`] (it is counted by [`TicketApiStandIn::requests`] when it
    /// arrives, so a test can wait for it).
    pub fn hold_requests_after(&self, sink: &str, count: u64) {
        self.with_sink(sink, |s| s.hold_after = Some(count));
    }

    /// Let held requests on `sink` (and every later one) through.
    pub fn release_held(&self, sink: &str) {
        self.with_sink(sink, |s| s.hold_after = None);
    }

    /// Record the next `count` tickets, then drop the connection instead of answering.
    pub fn drop_response_next(&self, sink: &str, count: u32) {
        self.with_sink(sink, |s| s.drop_next = count);
    }
}
