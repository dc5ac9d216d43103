//! HTTP test controls of the ticket API stand-in, so faults can be injected into a running local
//! stack from another process (by hand with curl, from `sam local invoke` runs, from the demo),
//! not only from inside a test: the same controls as the [`TicketApiStandIn`] methods, under
//! `/_control/...` on the stand-in's own port. [`TicketApiControl`] is the client.
//!
//! | route | body / query | does |
//! |---|---|---|
//! | `POST /_control/faults` | `{"sink": "...", "fault": "...", ...}` ([`TicketApiFault`]) | inject a fault on one sink |
//! | `GET /_control/tickets?sink=...` | | the tickets recorded on `sink` ([`TicketView`]) |
//! | `GET /_control/requests?sink=...` | | `{"sink", "requests"}`: requests that reached it (any answer) |
//! | `GET /_control/health` | | `ok` |
//!
//! Faults are scoped to one sink (the path segment of `/sinks/<sink>/tickets`), as the methods
//! are: tests share the stand-in. An unknown `fault` or a missing field is a 422 naming it.

use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};

use crate::ticket_api::TicketApiStandIn;

/// A fault on one sink: the JSON body of `POST /_control/faults` is
/// `{"sink": "...", "fault": "<name>", <its fields>}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "fault", rename_all = "snake_case", deny_unknown_fields)]
pub enum TicketApiFault {
    /// 401 unless header `name` equals `value` ([`TicketApiStandIn::require_header`]).
    RequireHeader {
        /// Header name.
        name: String,
        /// Its required value.
        value: String,
    },
    /// The next `count` requests get HTTP `status`, a 5xx ([`TicketApiStandIn::fail_next`]).
    FailNext {
        /// How many.
        count: u32,
        /// The status (e.g. 503).
        status: u16,
    },
    /// The next `count` requests get 429 ([`TicketApiStandIn::throttle_next`]).
    ThrottleNext {
        /// How many.
        count: u32,
        /// `Retry-After` seconds.
        retry_after_secs: u64,
    },
    /// The next `count` requests are rejected with HTTP `status`, a 4xx
    /// ([`TicketApiStandIn::reject_next`]).
    RejectNext {
        /// How many.
        count: u32,
        /// The status (e.g. 422).
        status: u16,
    },
    /// 503 for every request while `down` ([`TicketApiStandIn::set_down`]).
    Down {
        /// On or off.
        down: bool,
    },
    /// Every answer takes this long ([`TicketApiStandIn::set_latency`]).
    Latency {
        /// Milliseconds.
        ms: u64,
    },
    /// Requests after the first `count` wait unanswered until `release_held`
    /// ([`TicketApiStandIn::hold_requests_after`]).
    HoldRequestsAfter {
        /// How many pass.
        count: u64,
    },
    /// Let held requests through ([`TicketApiStandIn::release_held`]).
    ReleaseHeld,
    /// Record the next `count` tickets, then drop the connection unanswered
    /// ([`TicketApiStandIn::drop_response_next`]).
    DropResponseNext {
        /// How many.
        count: u32,
    },
}

impl TicketApiFault {
    /// Apply to `sink` of `tickets` (what the HTTP route does). A status outside the fault's
    /// class (5xx for `fail_next`, 4xx for `reject_next`) is refused with the reason.
    pub fn apply(&self, tickets: &TicketApiStandIn, sink: &str) -> Result<(), String> {
        match self {
            TicketApiFault::RequireHeader { name, value } => {
                tickets.require_header(sink, name, value)
            }
            TicketApiFault::FailNext { count, status } => {
                if !(500..=599).contains(status) {
                    return Err(format!("fail_next: status must be a 5xx, got {status}"));
                }
                tickets.fail_next(sink, *count, *status)
            }
            TicketApiFault::ThrottleNext {
                count,
                retry_after_secs,
            } => tickets.throttle_next(sink, *count, *retry_after_secs),
            TicketApiFault::RejectNext { count, status } => {
                if !(400..=499).contains(status) {
                    return Err(format!("reject_next: status must be a 4xx, got {status}"));
                }
                tickets.reject_next(sink, *count, *status)
            }
            TicketApiFault::Down { down } => tickets.set_down(sink, *down),
            TicketApiFault::Latency { ms } => tickets.set_latency(sink, Duration::from_millis(*ms)),
            TicketApiFault::HoldRequestsAfter { count } => {
                tickets.hold_requests_after(sink, *count)
            }
            TicketApiFault::ReleaseHeld => tickets.release_held(sink),
            TicketApiFault::DropResponseNext { count } => tickets.drop_response_next(sink, *count),
        }
        Ok(())
    }
}

/// Body of `POST /_control/faults`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TicketApiFaultRequest {
    /// The sink.
    pub sink: String,
    /// The fault and its fields.
    #[serde(flatten)]
    pub fault: TicketApiFault,
}

/// One recorded ticket, as `GET /_control/tickets` lists it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TicketView {
    /// The id it was given.
    pub id: String,
    /// Its `Idempotency-Key`.
    pub idempotency_key: String,
    /// The JSON body.
    pub body: serde_json::Value,
}

#[derive(Deserialize)]
struct SinkQuery {
    sink: String,
}

/// The `/_control/...` routes for `tickets` (merged into the stand-in's router).
pub fn routes(tickets: TicketApiStandIn) -> Router {
    Router::new()
        .route("/_control/faults", post(inject))
        .route("/_control/tickets", get(list_tickets))
        .route("/_control/requests", get(requests))
        .route("/_control/health", get(|| async { "ok" }))
        .with_state(tickets)
}

fn refused(status: StatusCode, error: String) -> Response {
    (
        status,
        Json(serde_json::json!({"ok": false, "error": error})),
    )
        .into_response()
}

async fn inject(
    State(tickets): State<TicketApiStandIn>,
    body: Result<Json<TicketApiFaultRequest>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let request = match body {
        Ok(Json(request)) => request,
        Err(e) => return refused(StatusCode::UNPROCESSABLE_ENTITY, e.body_text()),
    };
    match request.fault.apply(&tickets, &request.sink) {
        Ok(()) => Json(serde_json::json!({"ok": true})).into_response(),
        Err(e) => refused(StatusCode::UNPROCESSABLE_ENTITY, e),
    }
}

async fn list_tickets(
    State(tickets): State<TicketApiStandIn>,
    Query(q): Query<SinkQuery>,
) -> Response {
    let views: Vec<TicketView> = tickets
        .tickets(&q.sink)
        .into_iter()
        .map(|t| TicketView {
            id: t.id,
            idempotency_key: t.idempotency_key,
            body: t.body,
        })
        .collect();
    Json(views).into_response()
}

async fn requests(State(tickets): State<TicketApiStandIn>, Query(q): Query<SinkQuery>) -> Response {
    let count = tickets.requests(&q.sink);
    Json(serde_json::json!({"sink": q.sink, "requests": count})).into_response()
}

/// Drives a ticket API stand-in over HTTP (`/_control/...`), for a stack in another process.
#[derive(Clone, Debug)]
pub struct TicketApiControl {
    /// The stand-in's base URL.
    pub base_url: String,
    http: reqwest::Client,
}

impl TicketApiControl {
    /// Control the stand-in at `base_url`.
    pub fn new(base_url: &str) -> Self {
        Self {
            base_url: base_url.trim_end_matches('/').to_owned(),
            http: reqwest::Client::new(),
        }
    }

    /// Inject `fault` on `sink`.
    pub async fn inject(&self, sink: &str, fault: TicketApiFault) -> anyhow::Result<()> {
        let response = self
            .http
            .post(format!("{}/_control/faults", self.base_url))
            .json(&TicketApiFaultRequest {
                sink: sink.to_owned(),
                fault,
            })
            .send()
            .await?;
        let status = response.status();
        if !status.is_success() {
            anyhow::bail!(
                "faults: HTTP {status}: {}",
                response.text().await.unwrap_or_default()
            );
        }
        Ok(())
    }

    /// See [`TicketApiStandIn::tickets`].
    pub async fn tickets(&self, sink: &str) -> anyhow::Result<Vec<TicketView>> {
        Ok(self
            .http
            .get(format!("{}/_control/tickets", self.base_url))
            .query(&[("sink", sink)])
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?)
    }

    /// See [`TicketApiStandIn::requests`].
    pub async fn requests(&self, sink: &str) -> anyhow::Result<u64> {
        let answer: serde_json::Value = self
            .http
            .get(format!("{}/_control/requests", self.base_url))
            .query(&[("sink", sink)])
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        answer["requests"]
            .as_u64()
            .ok_or_else(|| anyhow::anyhow!("requests: no count in {answer}"))
    }
}
