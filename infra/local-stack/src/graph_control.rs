//! HTTP test controls of the Graph stand-in, so faults can be injected into a running local
//! stack from another process (by hand with curl, from `sam local invoke` runs, from the demo),
//! not only from inside a test: the same controls as the [`GraphStandIn`] methods, under
//! `/_control/...` on the stand-in's own port. [`GraphControl`] is the client.
//!
//! | route | body / query | does |
//! |---|---|---|
//! | `POST /_control/faults` | `{"mailbox": "...", "fault": "...", ...}` ([`GraphFault`]) | inject a fault for one mailbox (sending, and reading: latency, 503, 429, resets, REST disabled apply to the mail-reading routes too) |
//! | `POST /_control/send-as` | `{"user": "...", "mailbox": "..."}` | let `user` send as `mailbox` |
//! | `GET /_control/accepted?mailbox=...` | | the mails accepted for `mailbox` ([`AcceptedMailView`]) |
//! | `GET /_control/requests?mailbox=...` | | `{"mailbox", "requests"}`: sendMail calls that reached it |
//! | `GET /_control/health` | | `ok` |
//!
//! Faults are scoped to one mailbox (case-insensitive), as the methods are: tests share the
//! stand-in. An unknown `fault` or a missing field is a 422 naming it.

use axum::Json;
use axum::Router;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use serde::{Deserialize, Serialize};

use crate::graph::{AcceptThenFail, GraphStandIn};

/// A fault for one sending mailbox: the JSON body of `POST /_control/faults` is
/// `{"mailbox": "...", "fault": "<name>", <its fields>}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "fault", rename_all = "snake_case", deny_unknown_fields)]
pub enum GraphFault {
    /// Every request takes this long ([`GraphStandIn::set_latency`]).
    Latency {
        /// Milliseconds.
        ms: u64,
    },
    /// The next `count` requests get 503 ([`GraphStandIn::fail_503`]).
    Fail503 {
        /// How many.
        count: u32,
        /// `Retry-After` seconds, if any.
        #[serde(default)]
        retry_after_secs: Option<u64>,
    },
    /// The next `count` requests get 429 ([`GraphStandIn::throttle_429`]).
    Throttle429 {
        /// How many.
        count: u32,
        /// `Retry-After` seconds.
        retry_after_secs: u64,
    },
    /// The next `count` connections are dropped unanswered ([`GraphStandIn::reset_connections`]).
    ResetConnections {
        /// How many.
        count: u32,
    },
    /// 404 `MailboxNotEnabledForRESTAPI` from now on ([`GraphStandIn::disable_rest_api`]).
    DisableRestApi,
    /// The next `count` mails are accepted, then the answer fails
    /// ([`GraphStandIn::accept_then_fail`]).
    AcceptThenFail {
        /// How many.
        count: u32,
        /// `gateway_timeout` (504, the default) or `drop_connection`.
        #[serde(default)]
        how: AcceptThenFailHow,
    },
    /// The next `count` requests are over a sending quota ([`GraphStandIn::sending_quota`]).
    SendingQuota {
        /// How many.
        count: u32,
        /// Graph's error code, e.g. `ErrorExceededMessageLimit`.
        code: String,
        /// `Retry-After` seconds, if any.
        #[serde(default)]
        retry_after_secs: Option<u64>,
    },
    /// The mailbox is full: 403 `ErrorQuotaExceeded` ([`GraphStandIn::fill_mailbox`]).
    FillMailbox,
    /// Every delta token of the mailbox expires: the next round with one answers 410 Gone
    /// `SyncStateNotFound` ([`GraphStandIn::expire_delta_tokens`]).
    ExpireDeltaTokens,
    /// The next `count` `$value` reads find their message expunged just before
    /// ([`GraphStandIn::remove_before_fetch`]).
    RemoveBeforeFetch {
        /// How many.
        count: u32,
    },
    /// The next `count` requests of one step of the draft route answer with `draft_fault`
    /// ([`GraphStandIn::draft_fault`]), e.g. `{"fault": "draft", "step": "upload_chunk",
    /// "draft_fault": {"how": "expire_session"}, "count": 1}`.
    Draft {
        /// The step.
        step: crate::graph::DraftStep,
        /// What it answers.
        draft_fault: crate::graph::DraftFault,
        /// How many.
        count: u32,
    },
}

/// How an `accept_then_fail` fault answers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AcceptThenFailHow {
    /// 504 with Graph's error body.
    #[default]
    GatewayTimeout,
    /// The connection closed without an answer.
    DropConnection,
}

impl GraphFault {
    /// Apply to `mailbox` of `graph` (what the HTTP route does).
    pub fn apply(&self, graph: &GraphStandIn, mailbox: &str) {
        match self {
            GraphFault::Latency { ms } => {
                graph.set_latency(mailbox, std::time::Duration::from_millis(*ms))
            }
            GraphFault::Fail503 {
                count,
                retry_after_secs,
            } => graph.fail_503(mailbox, *count, *retry_after_secs),
            GraphFault::Throttle429 {
                count,
                retry_after_secs,
            } => graph.throttle_429(mailbox, *count, *retry_after_secs),
            GraphFault::ResetConnections { count } => graph.reset_connections(mailbox, *count),
            GraphFault::DisableRestApi => graph.disable_rest_api(mailbox),
            GraphFault::AcceptThenFail { count, how } => graph.accept_then_fail(
                mailbox,
                *count,
                match how {
                    AcceptThenFailHow::GatewayTimeout => AcceptThenFail::GatewayTimeout,
                    AcceptThenFailHow::DropConnection => AcceptThenFail::DropConnection,
                },
            ),
            GraphFault::SendingQuota {
                count,
                code,
                retry_after_secs,
            } => graph.sending_quota(mailbox, *count, code, *retry_after_secs),
            GraphFault::FillMailbox => graph.fill_mailbox(mailbox),
            GraphFault::ExpireDeltaTokens => graph.expire_delta_tokens(mailbox),
            GraphFault::RemoveBeforeFetch { count } => graph.remove_before_fetch(mailbox, *count),
            GraphFault::Draft {
                step,
                draft_fault,
                count,
            } => graph.draft_fault(mailbox, *step, *draft_fault, *count),
        }
    }
}

/// Body of `POST /_control/faults`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct GraphFaultRequest {
    /// The sending mailbox.
    pub mailbox: String,
    /// The fault and its fields.
    #[serde(flatten)]
    pub fault: GraphFault,
}

/// Body of `POST /_control/send-as`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SendAsGrant {
    /// Who signs in.
    pub user: String,
    /// The mailbox they may send as.
    pub mailbox: String,
}

/// One accepted mail, as `GET /_control/accepted` lists it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AcceptedMailView {
    /// The sending mailbox (lowercase).
    pub mailbox: String,
    /// The token's user.
    pub upn: String,
    /// `me` or `users/{id}`.
    pub path: String,
    /// The request body as sent.
    pub request: serde_json::Value,
    /// The `request-id` answered.
    pub request_id: String,
    /// The MIME message built from it, base64.
    pub mime_base64: String,
    /// See [`crate::graph::AcceptedMail::save_to_sent_items`].
    #[serde(default = "saved_by_default")]
    pub save_to_sent_items: bool,
}

fn saved_by_default() -> bool {
    true
}

/// Body of `POST /_control/deliver-to`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeliverTo {
    /// The recipient whose mail is delivered into its Dovecot INBOX from now on.
    pub recipient: String,
}

#[derive(Deserialize)]
struct MailboxQuery {
    mailbox: String,
}

/// The `/_control/...` routes for `graph` (merged into the stand-in's router).
pub fn routes(graph: GraphStandIn) -> Router {
    Router::new()
        .route("/_control/faults", post(inject))
        .route("/_control/send-as", post(send_as))
        .route("/_control/deliver-to", post(deliver_to))
        .route("/_control/accepted", get(accepted))
        .route("/_control/requests", get(requests))
        .route("/_control/health", get(|| async { "ok" }))
        .with_state(graph)
}

fn refused(e: axum::extract::rejection::JsonRejection) -> Response {
    (
        StatusCode::UNPROCESSABLE_ENTITY,
        Json(serde_json::json!({"ok": false, "error": e.body_text()})),
    )
        .into_response()
}

async fn inject(
    State(graph): State<GraphStandIn>,
    body: Result<Json<GraphFaultRequest>, axum::extract::rejection::JsonRejection>,
) -> Response {
    match body {
        Ok(Json(request)) => {
            request.fault.apply(&graph, &request.mailbox);
            Json(serde_json::json!({"ok": true})).into_response()
        }
        Err(e) => refused(e),
    }
}

async fn send_as(
    State(graph): State<GraphStandIn>,
    body: Result<Json<SendAsGrant>, axum::extract::rejection::JsonRejection>,
) -> Response {
    match body {
        Ok(Json(grant)) => {
            graph.grant_send_as(&grant.user, &grant.mailbox);
            Json(serde_json::json!({"ok": true})).into_response()
        }
        Err(e) => refused(e),
    }
}

async fn deliver_to(
    State(graph): State<GraphStandIn>,
    body: Result<Json<DeliverTo>, axum::extract::rejection::JsonRejection>,
) -> Response {
    match body {
        Ok(Json(request)) => {
            graph.deliver_mail_for(&request.recipient);
            Json(serde_json::json!({"ok": true})).into_response()
        }
        Err(e) => refused(e),
    }
}

async fn accepted(State(graph): State<GraphStandIn>, Query(q): Query<MailboxQuery>) -> Response {
    let mails: Vec<AcceptedMailView> = graph
        .accepted(&q.mailbox)
        .into_iter()
        .map(|m| AcceptedMailView {
            mailbox: m.mailbox,
            upn: m.upn,
            path: m.path,
            request: m.request,
            request_id: m.request_id,
            mime_base64: base64::engine::general_purpose::STANDARD.encode(&m.mime),
            save_to_sent_items: m.save_to_sent_items,
        })
        .collect();
    Json(mails).into_response()
}

async fn requests(State(graph): State<GraphStandIn>, Query(q): Query<MailboxQuery>) -> Response {
    let count = graph.request_count(&q.mailbox);
    Json(serde_json::json!({"mailbox": q.mailbox, "requests": count})).into_response()
}

/// Drives a Graph stand-in over HTTP (`/_control/...`), for a stack in another process.
#[derive(Clone, Debug)]
pub struct GraphControl {
    /// The stand-in's base URL (not `/v1.0`).
    pub base_url: String,
    http: reqwest::Client,
}

impl GraphControl {
    /// Control the stand-in at `base_url`.
    pub fn new(base_url: &str) -> Self {
        Self {
            base_url: base_url.trim_end_matches('/').to_owned(),
            http: reqwest::Client::new(),
        }
    }

    async fn post<T: Serialize>(&self, path: &str, body: &T) -> anyhow::Result<()> {
        let response = self
            .http
            .post(format!("{}/_control/{path}", self.base_url))
            .json(body)
            .send()
            .await?;
        let status = response.status();
        if !status.is_success() {
            anyhow::bail!(
                "{path}: HTTP {status}: {}",
                response.text().await.unwrap_or_default()
            );
        }
        Ok(())
    }

    async fn get<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        mailbox: &str,
    ) -> anyhow::Result<T> {
        let response = self
            .http
            .get(format!("{}/_control/{path}", self.base_url))
            .query(&[("mailbox", mailbox)])
            .send()
            .await?
            .error_for_status()?;
        Ok(response.json().await?)
    }

    /// Inject `fault` for `mailbox`.
    pub async fn inject(&self, mailbox: &str, fault: GraphFault) -> anyhow::Result<()> {
        self.post(
            "faults",
            &GraphFaultRequest {
                mailbox: mailbox.to_owned(),
                fault,
            },
        )
        .await
    }

    /// See [`GraphStandIn::grant_send_as`].
    pub async fn grant_send_as(&self, user: &str, mailbox: &str) -> anyhow::Result<()> {
        self.post(
            "send-as",
            &SendAsGrant {
                user: user.to_owned(),
                mailbox: mailbox.to_owned(),
            },
        )
        .await
    }

    /// See [`GraphStandIn::deliver_mail_for`].
    pub async fn deliver_mail_for(&self, recipient: &str) -> anyhow::Result<()> {
        self.post(
            "deliver-to",
            &DeliverTo {
                recipient: recipient.to_owned(),
            },
        )
        .await
    }

    /// See [`GraphStandIn::accepted`].
    pub async fn accepted(&self, mailbox: &str) -> anyhow::Result<Vec<AcceptedMailView>> {
        self.get("accepted", mailbox).await
    }

    /// See [`GraphStandIn::request_count`].
    pub async fn request_count(&self, mailbox: &str) -> anyhow::Result<u64> {
        let answer: serde_json::Value = self.get("requests", mailbox).await?;
        answer["requests"]
            .as_u64()
            .ok_or_else(|| anyhow::anyhow!("requests: no count in {answer}"))
    }
}
