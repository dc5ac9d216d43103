//! Microsoft Graph stand-in: `POST /v1.0/me/sendMail` and `/v1.0/users/{id}/sendMail`, and
//! the draft route for large messages (drafts, attachments, upload sessions, send: [`drafts`]).
//!
//! Strict like Graph:
//! - the bearer token must be a live access token issued by the identity stand-in for this
//!   Graph's audience (`https://graph.microsoft.com`, or a national cloud's Graph host given to
//!   [`GraphStandIn::start_for_audience`]) with `Mail.Send` (an IMAP-audience, unknown or expired token → 401
//!   `InvalidAuthenticationToken`; no `Mail.Send` → 403 `ErrorAccessDenied`);
//! - sending from another mailbox, as Exchange Online rules it: `/users/{id}/sendMail` for a
//!   mailbox other than the token's user needs `Mail.Send.Shared` in the token and Full Access
//!   on the mailbox ([`GraphStandIn::grant_full_access`]), else 403 `ErrorAccessDenied`, and Send
//!   As on it; `/me/sendMail` with a `from` (or MIME `From:`) other than the user needs only Send
//!   As ([`GraphStandIn::grant_send_as`]); without it 403 `ErrorSendAsDenied` with Microsoft's
//!   message. The rights are judged before the message's content (recipients...);
//! - the body is checked against the message resource: unknown property → 400
//!   `RequestBodyRead`, a header not starting with `X-` → 400 `InvalidInternetMessageHeader`,
//!   more than 5 custom headers → 400 `InvalidInternetMessageHeaderCollection`, no valid
//!   recipient → 400 `ErrorInvalidRecipients`, a request over 4 MB → 413;
//! - MIME format: `Content-Type: text/plain` and a base64 body (line breaks allowed, as in
//!   Microsoft's example); anything else that is not base64 → 400
//!   `ErrorMimeContentInvalidBase64String`. Recipients come from To/Cc/Bcc; a `From:` other
//!   than the mailbox needs a send-as grant like JSON's `from`. The delivered copy has its Bcc
//!   field removed and a Message-ID/Date added only when missing, as Exchange does. A body
//!   that is neither JSON nor text/plain → 415;
//! - at most 4 concurrent requests per mailbox, beyond that 429 `ApplicationThrottled` with
//!   `Retry-After`;
//! - `202 Accepted` with an empty body on success; every answer has a `request-id` header.
//!   Each accepted mail records whether Graph would keep it in Sent Items (`saveToSentItems`).
//!
//! Test controls are scoped per mailbox (the sending mailbox's address, case-insensitive), and
//! reachable over HTTP too ([`crate::graph_control`], `/_control/...`):
//! latency, 503 bursts, 429 bursts, connection resets, REST API disabled, "accept, then fail"
//! (the mail is accepted and delivered, then the answer is a 504 or a dropped connection, as
//! Graph has been seen to do), sending quota errors and a full mailbox. Accepted messages are
//! recorded per mailbox; with a [`MailDrop`] each is also built into a real MIME message and
//! delivered to the mailbox (Dovecot) of each recipient a test asked for
//! ([`GraphStandIn::deliver_mail_for`], or `POST /_control/deliver-to`), so replies can flow back
//! through the poller. Mail for every other recipient is only recorded: mailboxes no test reads
//! never grow.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use base64::Engine as _;
use serde::Deserialize;

use crate::MailDrop;
use crate::identity::IdentityStandIn;

mod batch;
mod drafts;
mod mailbox;
mod subscriptions;
pub use batch::MAX_BATCH_REQUESTS;
pub use drafts::{
    DEFAULT_MAX_SEND_BYTES, DEFAULT_UPLOAD_SESSION_LIFETIME, DraftFault, DraftStep,
    MAX_CHUNK_BYTES, MAX_UPLOAD_SESSION_BYTES, MIN_UPLOAD_SESSION_BYTES,
};
pub use mailbox::{
    DEFAULT_DELTA_PAGE_SIZE, DEFAULT_FOLDER_PAGE_SIZE, DELETED_ITEMS, MESSAGE_SIZE_PROPERTY,
    MailStore, StoredSummary,
};
pub use subscriptions::{SentNotification, SubscriptionView};

/// Graph's concurrency limit per mailbox.
pub const MAX_CONCURRENT_PER_MAILBOX: usize = 4;
/// Requests above this many bytes get 413.
pub const MAX_REQUEST_BYTES: usize = 4 * 1024 * 1024;

/// The audience of tokens for the global Microsoft Graph.
pub const GLOBAL_GRAPH_AUDIENCE: &str = "https://graph.microsoft.com";
/// Custom `internetMessageHeaders` per message.
pub const MAX_INTERNET_MESSAGE_HEADERS: usize = 5;

/// Handle to a running Graph stand-in. Cheap to clone; all clones share state.
#[derive(Clone)]
pub struct GraphStandIn {
    /// e.g. `http://127.0.0.1:41236` (Graph v1.0 lives at `{base_url}/v1.0`).
    pub base_url: String,
    state: Arc<StandInState>,
}

impl std::fmt::Debug for GraphStandIn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GraphStandIn")
            .field("base_url", &self.base_url)
            .finish()
    }
}

/// One message the stand-in accepted (202).
#[derive(Clone, Debug)]
pub struct AcceptedMail {
    /// The sending mailbox (lowercase).
    pub mailbox: String,
    /// The token's user.
    pub upn: String,
    /// `me` or `users/{id}`.
    pub path: String,
    /// The request body as sent.
    pub request: serde_json::Value,
    /// The `request-id` the stand-in answered with.
    pub request_id: String,
    /// The MIME message built from it (what the mail drop received).
    pub mime: Vec<u8>,
    /// Whether Graph keeps a copy in the mailbox's Sent Items: the JSON body's
    /// `saveToSentItems` (default true); always true for MIME and for a sent draft.
    pub save_to_sent_items: bool,
}

#[derive(Default)]
struct MailboxControls {
    latency: Duration,
    fail_503: u32,
    retry_after_503: Option<u64>,
    throttle_429: u32,
    retry_after_429: u64,
    resets: u32,
    rest_disabled: bool,
    accept_then_fail: u32,
    accept_then_fail_how: AcceptThenFail,
    quota: u32,
    quota_code: String,
    quota_retry_after: Option<u64>,
    mailbox_full: bool,
    /// Requests still let through before the hold point closes (`None`: no hold).
    pass_before_hold: Option<u32>,
}

/// A hold point per mailbox: requests wait at it until the test releases them.
#[derive(Default)]
struct HoldPoint {
    released: Option<tokio::sync::watch::Sender<bool>>,
    held: usize,
}

/// How an "accept, then fail" fault answers after the mail was accepted and delivered.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AcceptThenFail {
    /// `504 Gateway Timeout` with Graph's error body.
    #[default]
    GatewayTimeout,
    /// The connection is closed without an answer.
    DropConnection,
}

struct StandInState {
    identity: IdentityStandIn,
    /// The audience a token must be for (`https://graph.microsoft.com`, or a national cloud's
    /// Graph host).
    audience: String,
    mail_drop: Option<Arc<dyn MailDrop>>,
    /// The same store, read by the mail-reading routes ([`mailbox`]).
    mail_store: Option<Arc<dyn MailStore>>,
    mail: mailbox::MailState,
    /// Recipients (lower case) whose mail is delivered into `mail_drop`.
    deliver_to: Mutex<HashSet<String>>,
    controls: Mutex<HashMap<String, MailboxControls>>,
    in_flight: Mutex<HashMap<String, usize>>,
    send_as: Mutex<HashSet<(String, String)>>,
    full_access: Mutex<HashSet<(String, String)>>,
    accepted: Mutex<Vec<AcceptedMail>>,
    requests: Mutex<HashMap<String, u64>>,
    holds: Mutex<HashMap<String, HoldPoint>>,
    drafts: drafts::Drafts,
    subscriptions: subscriptions::SubscriptionState,
    log: Mutex<Vec<RecordedRequest>>,
}

/// One request that reached a mailbox (sendMail or a step of the draft route), with when it
/// arrived: tests judge waits (a `Retry-After` honoured) by these times, not by wall-clock
/// budgets of their own.
#[derive(Clone, Debug)]
pub struct RecordedRequest {
    /// The mailbox (lowercase).
    pub mailbox: String,
    /// `sendMail`, `create draft`, `get draft`, `add attachment`, `createUploadSession`,
    /// `upload chunk`, `send draft`, `delete draft`.
    pub what: &'static str,
    /// When it arrived.
    pub at: std::time::Instant,
    /// The status answered.
    pub status: u16,
}

impl StandInState {
    fn record(&self, mailbox: &str, what: &'static str, at: std::time::Instant, status: u16) {
        self.log.lock().expect("lock").push(RecordedRequest {
            mailbox: mailbox.to_owned(),
            what,
            at,
            status,
        });
    }
}

impl StandInState {
    /// Deliver `mime` in the background to those of `recipients` a test asked for.
    fn deliver(&self, recipients: Vec<String>, mime: Vec<u8>) {
        let Some(drop) = self.mail_drop.clone() else {
            return;
        };
        let wanted: Vec<String> = {
            let deliver_to = self.deliver_to.lock().expect("lock");
            recipients
                .into_iter()
                .filter(|r| deliver_to.contains(&r.to_lowercase()))
                .collect()
        };
        if wanted.is_empty() {
            return;
        }
        tokio::spawn(async move {
            for r in wanted {
                if let Err(e) = drop.deliver(&r, mime.clone()).await {
                    tracing::warn!(recipient = %r, error = %e, "graph stand-in: delivery into the mail drop failed");
                }
            }
        });
    }
}

impl GraphStandIn {
    /// Bind 127.0.0.1:0 and serve on the current tokio runtime. Tokens are checked against
    /// `identity`; sent mail is delivered into `mail_store` (Dovecot) when given, and the
    /// mail-reading routes read it.
    pub async fn start(
        identity: IdentityStandIn,
        mail_store: Option<Arc<dyn MailStore>>,
    ) -> anyhow::Result<Self> {
        Self::start_for_audience(identity, mail_store, GLOBAL_GRAPH_AUDIENCE).await
    }

    /// Like [`GraphStandIn::start`], as the Graph of the cloud whose tokens are for `audience`
    /// (e.g. `https://graph.microsoft.us`, US Government L4): a token for any other Graph host
    /// is refused with 401 `InvalidAuthenticationToken`, as each national cloud's Graph does.
    pub async fn start_for_audience(
        identity: IdentityStandIn,
        mail_store: Option<Arc<dyn MailStore>>,
        audience: &str,
    ) -> anyhow::Result<Self> {
        let state = Arc::new(StandInState {
            identity,
            audience: audience.trim_end_matches('/').to_owned(),
            mail_drop: mail_store.clone().map(|s| s as Arc<dyn MailDrop>),
            mail_store,
            mail: mailbox::MailState::default(),
            deliver_to: Mutex::default(),
            controls: Mutex::default(),
            in_flight: Mutex::default(),
            send_as: Mutex::default(),
            full_access: Mutex::default(),
            accepted: Mutex::default(),
            requests: Mutex::default(),
            holds: Mutex::default(),
            drafts: drafts::Drafts::default(),
            subscriptions: subscriptions::SubscriptionState::default(),
            log: Mutex::default(),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let base_url = format!("http://{}", listener.local_addr()?);
        let stand_in = GraphStandIn { base_url, state };
        let app = Router::new()
            .route("/v1.0/me/sendMail", post(send_mail))
            .route("/v1.0/users/{id}/sendMail", post(send_mail))
            .merge(drafts::routes())
            .merge(mailbox::routes())
            .merge(batch::routes())
            .merge(subscriptions::routes())
            .layer(DefaultBodyLimit::max(3 * MAX_REQUEST_BYTES))
            .with_state(stand_in.state.clone())
            // the test controls over HTTP, for a stack in another process
            .merge(crate::graph_control::routes(stand_in.clone()));
        tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::error!(error = %e, "graph stand-in stopped");
            }
        });
        Ok(stand_in)
    }

    /// Graph's v1.0 root (what `MAILBRIDGE_GRAPH_URL` points at).
    pub fn v1_url(&self) -> String {
        format!("{}/v1.0", self.base_url)
    }

    fn with_controls(&self, mailbox: &str, f: impl FnOnce(&mut MailboxControls)) {
        let mut controls = self.state.controls.lock().expect("lock");
        f(controls.entry(mailbox.to_ascii_lowercase()).or_default());
    }

    /// Deliver the mail sent to `recipient` from now on into its mailbox (Dovecot's INBOX), for
    /// a test that reads it back. Mail to recipients nobody asked for is only recorded.
    pub fn deliver_mail_for(&self, recipient: &str) {
        self.state
            .deliver_to
            .lock()
            .expect("lock")
            .insert(recipient.to_lowercase());
    }

    /// Every request for `mailbox` takes `latency` (while holding one of its 4 slots).
    pub fn set_latency(&self, mailbox: &str, latency: Duration) {
        self.with_controls(mailbox, |c| c.latency = latency);
    }

    /// The next `count` requests for `mailbox` get 503 (with `Retry-After` when given).
    pub fn fail_503(&self, mailbox: &str, count: u32, retry_after_secs: Option<u64>) {
        self.with_controls(mailbox, |c| {
            c.fail_503 = count;
            c.retry_after_503 = retry_after_secs;
        });
    }

    /// The next `count` requests for `mailbox` get 429 with `Retry-After: retry_after_secs`.
    pub fn throttle_429(&self, mailbox: &str, count: u32, retry_after_secs: u64) {
        self.with_controls(mailbox, |c| {
            c.throttle_429 = count;
            c.retry_after_429 = retry_after_secs;
        });
    }

    /// The next `count` requests for `mailbox` have their connection dropped without an answer.
    pub fn reset_connections(&self, mailbox: &str, count: u32) {
        self.with_controls(mailbox, |c| c.resets = count);
    }

    /// `mailbox` answers 404 `MailboxNotEnabledForRESTAPI` (no Exchange Online licence).
    pub fn disable_rest_api(&self, mailbox: &str) {
        self.with_controls(mailbox, |c| c.rest_disabled = true);
    }

    /// The next `count` requests for `mailbox` are accepted (recorded, delivered) and then
    /// answered with a failure: what a client sees when Graph queued the mail but the answer
    /// was lost.
    pub fn accept_then_fail(&self, mailbox: &str, count: u32, how: AcceptThenFail) {
        self.with_controls(mailbox, |c| {
            c.accept_then_fail = count;
            c.accept_then_fail_how = how;
        });
    }

    /// The next `count` requests for `mailbox` are refused for its sending quota with `code`
    /// (e.g. `ErrorExceededMessageLimit`, `ErrorSubmissionQuotaExceeded`): 429, with
    /// `Retry-After` when given.
    pub fn sending_quota(&self, mailbox: &str, count: u32, code: &str, retry_after: Option<u64>) {
        self.with_controls(mailbox, |c| {
            c.quota = count;
            c.quota_code = code.to_owned();
            c.quota_retry_after = retry_after;
        });
    }

    /// A hold point: after the next `pass` requests, requests for `mailbox` wait (each in one
    /// of its 4 slots) until [`GraphStandIn::release`]. Tests order events with it instead of
    /// with latencies and wall-clock budgets.
    pub fn hold_after(&self, mailbox: &str, pass: u32) {
        let (released, _) = tokio::sync::watch::channel(false);
        self.state.holds.lock().expect("lock").insert(
            mailbox.to_ascii_lowercase(),
            HoldPoint {
                released: Some(released),
                held: 0,
            },
        );
        self.with_controls(mailbox, |c| c.pass_before_hold = Some(pass));
    }

    /// Open `mailbox`'s hold point: the waiting requests go on, later ones pass.
    pub fn release(&self, mailbox: &str) {
        self.with_controls(mailbox, |c| c.pass_before_hold = None);
        if let Some(hold) = self
            .state
            .holds
            .lock()
            .expect("lock")
            .get_mut(&mailbox.to_ascii_lowercase())
            && let Some(released) = &hold.released
        {
            released.send_replace(true);
        }
    }

    /// How many requests for `mailbox` wait at its hold point now.
    pub fn held(&self, mailbox: &str) -> usize {
        self.state
            .holds
            .lock()
            .expect("lock")
            .get(&mailbox.to_ascii_lowercase())
            .map_or(0, |h| h.held)
    }

    /// `mailbox` is full: every send answers 403 `ErrorQuotaExceeded`.
    pub fn fill_mailbox(&self, mailbox: &str) {
        self.with_controls(mailbox, |c| c.mailbox_full = true);
    }

    /// Give `user` Send As on `mailbox`: `/me/sendMail` with `from: mailbox` (and, with Full
    /// Access too, `/users/{mailbox}/sendMail`).
    pub fn grant_send_as(&self, user: &str, mailbox: &str) {
        self.state
            .send_as
            .lock()
            .expect("lock")
            .insert((user.to_ascii_lowercase(), mailbox.to_ascii_lowercase()));
    }

    /// Give `user` Full Access on `mailbox` (what `/users/{mailbox}/sendMail` needs besides
    /// Send As and `Mail.Send.Shared`).
    pub fn grant_full_access(&self, user: &str, mailbox: &str) {
        self.state
            .full_access
            .lock()
            .expect("lock")
            .insert((user.to_ascii_lowercase(), mailbox.to_ascii_lowercase()));
    }

    /// Messages accepted for `mailbox`, in order.
    pub fn accepted(&self, mailbox: &str) -> Vec<AcceptedMail> {
        let mailbox = mailbox.to_ascii_lowercase();
        self.state
            .accepted
            .lock()
            .expect("lock")
            .iter()
            .filter(|m| m.mailbox == mailbox)
            .cloned()
            .collect()
    }

    /// The requests that reached `mailbox` (sendMail and the draft route's), in arrival order.
    pub fn request_log(&self, mailbox: &str) -> Vec<RecordedRequest> {
        let mailbox = mailbox.to_ascii_lowercase();
        self.state
            .log
            .lock()
            .expect("lock")
            .iter()
            .filter(|r| r.mailbox == mailbox)
            .cloned()
            .collect()
    }

    /// All sendMail requests that reached `mailbox` (any answer).
    pub fn request_count(&self, mailbox: &str) -> u64 {
        self.state
            .requests
            .lock()
            .expect("lock")
            .get(&mailbox.to_ascii_lowercase())
            .copied()
            .unwrap_or(0)
    }
}

/// The mailbox a route's path names: `/users/{id}/...` gives `id`, `/me/...` none (the token's
/// user), so one handler serves both routes of an operation.
#[derive(Deserialize)]
struct MailboxPath {
    id: Option<String>,
}

async fn send_mail(
    State(state): State<Arc<StandInState>>,
    Path(MailboxPath { id }): Path<MailboxPath>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    handle(state, id, headers, body).await
}

fn graph_error(status: StatusCode, code: &str, message: &str, request_id: &str) -> Response {
    let body = serde_json::json!({
        "error": {
            "code": code,
            "message": message,
            "innerError": {
                "date": chrono::Utc::now().to_rfc3339(),
                "request-id": request_id,
                "client-request-id": request_id,
            }
        }
    });
    (status, axum::Json(body)).into_response()
}

/// Releases a mailbox's concurrency slot when the request ends.
struct Slot {
    state: Arc<StandInState>,
    mailbox: String,
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(n) = self
            .state
            .in_flight
            .lock()
            .expect("lock")
            .get_mut(&self.mailbox)
        {
            *n = n.saturating_sub(1);
        }
    }
}

/// Counts a request out of its hold point (answered, or dropped with its connection).
struct Unheld {
    state: Arc<StandInState>,
    mailbox: String,
}

impl Drop for Unheld {
    fn drop(&mut self) {
        if let Some(point) = self
            .state
            .holds
            .lock()
            .expect("lock")
            .get_mut(&self.mailbox)
        {
            point.held = point.held.saturating_sub(1);
        }
    }
}

async fn handle(
    state: Arc<StandInState>,
    user_path: Option<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let request_id = uuid::Uuid::new_v4().to_string();
    let client_request_id = headers
        .get("client-request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let mut response = answer(&state, user_path, &headers, body, &request_id).await;
    let h = response.headers_mut();
    h.insert(
        "request-id",
        HeaderValue::from_str(&request_id).expect("uuid"),
    );
    if let Some(c) = client_request_id.and_then(|c| HeaderValue::from_str(&c).ok()) {
        h.insert("client-request-id", c);
    }
    response
}

async fn answer(
    state: &Arc<StandInState>,
    user_path: Option<String>,
    headers: &HeaderMap,
    body: Bytes,
    rid: &str,
) -> Response {
    // 1. the bearer token
    let token = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let Some(token) = token.filter(|t| !t.is_empty()) else {
        return graph_error(
            StatusCode::UNAUTHORIZED,
            "InvalidAuthenticationToken",
            "Access token is empty.",
            rid,
        );
    };
    let Some(issued) = state.identity.lookup_access_token(token) else {
        return graph_error(
            StatusCode::UNAUTHORIZED,
            "InvalidAuthenticationToken",
            "Access token validation failure. Invalid or expired token.",
            rid,
        );
    };
    if issued.expires_at <= chrono::Utc::now() {
        return graph_error(
            StatusCode::UNAUTHORIZED,
            "InvalidAuthenticationToken",
            "Lifetime validation failed, the token is expired.",
            rid,
        );
    }
    if issued.audience.trim_end_matches('/') != state.audience {
        return graph_error(
            StatusCode::UNAUTHORIZED,
            "InvalidAuthenticationToken",
            "Access token validation failure. Invalid audience.",
            rid,
        );
    }
    let granted = |permission: &str| {
        issued.scopes.iter().any(|s| {
            s.rsplit('/')
                .next()
                .is_some_and(|s| s.eq_ignore_ascii_case(permission))
        })
    };
    let access_denied = || {
        graph_error(
            StatusCode::FORBIDDEN,
            "ErrorAccessDenied",
            "Access is denied. Check credentials and try again.",
            rid,
        )
    };
    // An app-only token (client credentials) has no user, so no `/me`; its `Mail.Send`
    // application permission (`roles`) sends as the mailbox named in the path, which then
    // stands in for the user below.
    let upn = if issued.app_only {
        let Some(id) = &user_path else {
            return graph_error(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                "/me request is only valid with delegated authentication flow.",
                rid,
            );
        };
        // The Mail.Send application permission (every mailbox), or Exchange RBAC for
        // Applications' "Application Mail.Send" on this mailbox.
        if !issued
            .roles
            .iter()
            .any(|r| r.eq_ignore_ascii_case("Mail.Send"))
            && !state
                .identity
                .exchange_app_permissions(token, id)
                .iter()
                .any(|r| r.eq_ignore_ascii_case("Mail.Send"))
        {
            return access_denied();
        }
        id.to_ascii_lowercase()
    } else {
        if !granted("Mail.Send") && !granted("Mail.Send.Shared") {
            return access_denied();
        }
        issued.upn.to_ascii_lowercase()
    };
    let (mailbox, path) = match &user_path {
        None => (upn.clone(), "me".to_owned()),
        Some(id) => (id.to_ascii_lowercase(), format!("users/{id}")),
    };
    let holds = |rights: &Mutex<HashSet<(String, String)>>, target: &str| {
        target == upn
            || rights
                .lock()
                .expect("lock")
                .contains(&(upn.clone(), target.to_owned()))
    };
    // Another user's mailbox in the path: the delegated Mail.Send.Shared permission, then Full
    // Access on the mailbox (both answer ErrorAccessDenied, as Graph does).
    if mailbox != upn && (!granted("Mail.Send.Shared") || !holds(&state.full_access, &mailbox)) {
        return access_denied();
    }
    *state
        .requests
        .lock()
        .expect("lock")
        .entry(mailbox.clone())
        .or_default() += 1;
    let arrived = std::time::Instant::now();
    let response = answer_for_mailbox(state, &mailbox, upn, path, headers, body, rid).await;
    state.record(&mailbox, "sendMail", arrived, response.status().as_u16());
    response
}

/// [`answer`] once the token and the path's mailbox are judged.
#[allow(clippy::too_many_arguments)]
async fn answer_for_mailbox(
    state: &Arc<StandInState>,
    mailbox: &str,
    upn: String,
    path: String,
    headers: &HeaderMap,
    body: Bytes,
    rid: &str,
) -> Response {
    let mailbox = mailbox.to_owned();
    let may_send_as = |target: &str| {
        target == upn
            || state
                .send_as
                .lock()
                .expect("lock")
                .contains(&(upn.clone(), target.to_owned()))
    };

    // 2. scoped fault injection
    let (latency, fault, hold) = {
        let mut controls = state.controls.lock().expect("lock");
        let c = controls.entry(mailbox.clone()).or_default();
        let hold = match &mut c.pass_before_hold {
            Some(0) => true,
            Some(pass) => {
                *pass -= 1;
                false
            }
            None => false,
        };
        let fault = if c.rest_disabled {
            Some(Fault::RestDisabled)
        } else if c.mailbox_full {
            Some(Fault::MailboxFull)
        } else if c.quota > 0 {
            c.quota -= 1;
            Some(Fault::Quota(c.quota_code.clone(), c.quota_retry_after))
        } else if c.resets > 0 {
            c.resets -= 1;
            Some(Fault::Reset)
        } else if c.fail_503 > 0 {
            c.fail_503 -= 1;
            Some(Fault::Unavailable(c.retry_after_503))
        } else if c.throttle_429 > 0 {
            c.throttle_429 -= 1;
            Some(Fault::Throttled(c.retry_after_429))
        } else {
            None
        };
        (c.latency, fault, hold)
    };
    match fault {
        Some(Fault::RestDisabled) => {
            return graph_error(
                StatusCode::NOT_FOUND,
                "MailboxNotEnabledForRESTAPI",
                "The mailbox is either inactive, soft-deleted, or is hosted on-premise.",
                rid,
            );
        }
        Some(Fault::Reset) => {
            // Unwind the connection task without running the panic hook: hyper drops the socket
            // and the client sees the connection closed before any answer.
            std::panic::resume_unwind(Box::new("graph stand-in: injected connection reset"));
        }
        Some(Fault::Unavailable(retry_after)) => {
            let mut r = graph_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "ServiceUnavailable",
                "Service is temporarily unavailable.",
                rid,
            );
            if let Some(s) = retry_after {
                r.headers_mut().insert("retry-after", HeaderValue::from(s));
            }
            return r;
        }
        Some(Fault::Throttled(retry_after)) => {
            return throttled(rid, retry_after);
        }
        Some(Fault::MailboxFull) => {
            return graph_error(
                StatusCode::FORBIDDEN,
                "ErrorQuotaExceeded",
                "The process failed to get the correct properties.: The mailbox is full.",
                rid,
            );
        }
        Some(Fault::Quota(code, retry_after)) => {
            let mut r = graph_error(
                StatusCode::TOO_MANY_REQUESTS,
                &code,
                "The message can't be submitted because the sender's submission quota was exceeded.",
                rid,
            );
            if let Some(s) = retry_after {
                r.headers_mut().insert("retry-after", HeaderValue::from(s));
            }
            return r;
        }
        None => {}
    }

    // 3. per-mailbox concurrency
    let _slot = {
        let mut in_flight = state.in_flight.lock().expect("lock");
        let n = in_flight.entry(mailbox.clone()).or_default();
        if *n >= MAX_CONCURRENT_PER_MAILBOX {
            drop(in_flight);
            return throttled(rid, 1);
        }
        *n += 1;
        Slot {
            state: state.clone(),
            mailbox: mailbox.clone(),
        }
    };
    if hold {
        let released = {
            let mut holds = state.holds.lock().expect("lock");
            let point = holds.entry(mailbox.clone()).or_default();
            point.held += 1;
            point.released.as_ref().map(|r| r.subscribe())
        };
        let _unheld = Unheld {
            state: state.clone(),
            mailbox: mailbox.clone(),
        };
        if let Some(mut released) = released {
            let _ = released.wait_for(|open| *open).await;
        }
    }
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }

    // 4. the request body
    if body.len() > MAX_REQUEST_BYTES {
        return graph_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "RequestEntityTooLarge",
            &format!(
                "The request is {} bytes; the maximum is {MAX_REQUEST_BYTES}.",
                body.len()
            ),
            rid,
        );
    }
    let content_type = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_ascii_lowercase();
    // Send As, judged before the message's content: `/me` (or the user's own `/users/{id}`)
    // sends as any mailbox the user has Send As on; another user's `/users/{id}` only as that
    // mailbox. A message without a sender is from the path's mailbox.
    let sender_allowed = |from: Option<&str>| {
        let sender = from.map_or_else(|| mailbox.clone(), str::to_ascii_lowercase);
        (mailbox == upn || sender == mailbox) && may_send_as(&sender)
    };
    let send_as_denied = || {
        graph_error(
            StatusCode::FORBIDDEN,
            "ErrorSendAsDenied",
            "The user account which was used to submit this request does not have the right to send mail on behalf of the specified sending account. Cannot submit message.",
            rid,
        )
    };
    if !sender_allowed(claimed_sender(&content_type, &body).as_deref()) {
        return send_as_denied();
    }
    let submission = if content_type.starts_with("application/json") {
        json_submission(&body, &mailbox)
    } else if content_type.starts_with("text/plain") {
        mime_submission(&body)
    } else {
        Err((
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UnsupportedMediaType",
            format!(
                "Content-Type {content_type:?} is not supported; use application/json or text/plain (MIME)."
            ),
        ))
    };
    let submission = match submission {
        Ok(s) => s,
        Err((status, code, message)) => return graph_error(status, code, &message, rid),
    };
    if !sender_allowed(submission.from.as_deref()) {
        return send_as_denied();
    }

    // 5. accept
    let Submission {
        mime,
        request,
        recipients,
        save_to_sent_items,
        ..
    } = submission;
    state.accepted.lock().expect("lock").push(AcceptedMail {
        mailbox: mailbox.clone(),
        upn,
        path,
        request,
        request_id: rid.to_owned(),
        mime: mime.clone(),
        save_to_sent_items,
    });
    state.deliver(recipients, mime);

    // 6. "accept, then fail"
    let after_accept = {
        let mut controls = state.controls.lock().expect("lock");
        let c = controls.entry(mailbox.clone()).or_default();
        (c.accept_then_fail > 0).then(|| {
            c.accept_then_fail -= 1;
            c.accept_then_fail_how
        })
    };
    match after_accept {
        Some(AcceptThenFail::GatewayTimeout) => {
            graph_error(StatusCode::GATEWAY_TIMEOUT, "UnknownError", "", rid)
        }
        Some(AcceptThenFail::DropConnection) => std::panic::resume_unwind(Box::new(
            "graph stand-in: connection dropped after accepting",
        )),
        None => StatusCode::ACCEPTED.into_response(),
    }
}

/// The sender a request body names (JSON `message.from`, or the MIME `From:`), read leniently
/// so the rights can be judged before the body is validated.
fn claimed_sender(content_type: &str, body: &[u8]) -> Option<String> {
    if content_type.starts_with("application/json") {
        let value: serde_json::Value = serde_json::from_slice(body).ok()?;
        return value["message"]["from"]["emailAddress"]["address"]
            .as_str()
            .map(str::to_owned);
    }
    let compact: Vec<u8> = body
        .iter()
        .copied()
        .filter(|b| !matches!(b, b'\r' | b'\n'))
        .collect();
    let raw = base64::engine::general_purpose::STANDARD
        .decode(&compact)
        .ok()?;
    let message = mail_parser::MessageParser::default().parse_headers(&raw)?;
    message
        .from()
        .and_then(|a| a.first())
        .and_then(|a| a.address())
        .map(str::to_owned)
}

/// A request that passed the body checks: who it claims to be from, who gets it, and the MIME
/// that is delivered.
struct Submission {
    /// The sender when it is not the mailbox itself by default (`from`, or the MIME `From:`).
    from: Option<String>,
    recipients: Vec<String>,
    mime: Vec<u8>,
    request: serde_json::Value,
    save_to_sent_items: bool,
}

type BodyError = (StatusCode, &'static str, String);

fn json_submission(body: &[u8], mailbox: &str) -> Result<Submission, BodyError> {
    let request: SendMailBody = serde_json::from_slice(body)
        .map_err(|e| (StatusCode::BAD_REQUEST, "RequestBodyRead", e.to_string()))?;
    request
        .message
        .check()
        .map_err(|(code, message)| (StatusCode::BAD_REQUEST, code, message))?;
    Ok(Submission {
        from: request
            .message
            .from
            .as_ref()
            .map(|f| f.email_address.address.clone()),
        recipients: request.message.all_recipients(),
        mime: request.message.to_mime(mailbox),
        request: serde_json::from_slice(body).unwrap_or_default(),
        save_to_sent_items: request.save_to_sent_items.unwrap_or(true),
    })
}

/// Graph's MIME format: the body is the base64 of an RFC 5322 message.
fn mime_submission(body: &[u8]) -> Result<Submission, BodyError> {
    let invalid = || {
        (
            StatusCode::BAD_REQUEST,
            "ErrorMimeContentInvalidBase64String",
            "Invalid base64 string for MIME content.".to_owned(),
        )
    };
    let compact: Vec<u8> = body
        .iter()
        .copied()
        .filter(|b| !matches!(b, b'\r' | b'\n'))
        .collect();
    let raw = base64::engine::general_purpose::STANDARD
        .decode(&compact)
        .map_err(|_| invalid())?;
    let message = mail_parser::MessageParser::default()
        .parse(&raw)
        .ok_or_else(invalid)?;
    let addresses = |a: Option<&mail_parser::Address>| -> Vec<String> {
        a.map(|a| {
            a.iter()
                .filter_map(|a| a.address())
                .map(|a| a.to_ascii_lowercase())
                .collect()
        })
        .unwrap_or_default()
    };
    let mut recipients = addresses(message.to());
    recipients.extend(addresses(message.cc()));
    recipients.extend(addresses(message.bcc()));
    if recipients.is_empty() {
        return Err((
            StatusCode::BAD_REQUEST,
            "ErrorInvalidRecipients",
            "At least one recipient isn't valid.".into(),
        ));
    }
    if recipients.len() > 500 {
        return Err((
            StatusCode::BAD_REQUEST,
            "ErrorExceededMaxRecipientLimit",
            "The message has too many recipients.".into(),
        ));
    }
    if let Some(bad) = recipients.iter().find(|r| !plausible_address(r)) {
        return Err((
            StatusCode::BAD_REQUEST,
            "ErrorInvalidRecipients",
            format!("At least one recipient isn't valid., Recipient '{bad}' isn't resolved."),
        ));
    }
    let from = message
        .from()
        .and_then(|a| a.first())
        .and_then(|a| a.address())
        .map(str::to_owned);
    let mut delivered = Vec::with_capacity(raw.len() + 128);
    let eol: &[u8] = if raw.windows(2).any(|w| w == b"\r\n") {
        b"\r\n"
    } else {
        b"\n"
    };
    if message.message_id().is_none() {
        delivered.extend_from_slice(
            format!(
                "Message-ID: <{}@graph-stand-in.local>",
                uuid::Uuid::new_v4().simple()
            )
            .as_bytes(),
        );
        delivered.extend_from_slice(eol);
    }
    if message.date().is_none() {
        delivered
            .extend_from_slice(format!("Date: {}", chrono::Utc::now().to_rfc2822()).as_bytes());
        delivered.extend_from_slice(eol);
    }
    delivered.extend_from_slice(&without_bcc(&raw));
    Ok(Submission {
        from,
        recipients,
        mime: delivered,
        request: serde_json::json!({"mime": true, "bytes": raw.len()}),
        save_to_sent_items: true,
    })
}

/// The message without its Bcc field (and that field's folded lines).
fn without_bcc(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len());
    let mut in_bcc = false;
    let mut offset = 0;
    while offset < raw.len() {
        let end = raw[offset..]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(raw.len(), |i| offset + i + 1);
        let line = &raw[offset..end];
        if line == b"\n" || line == b"\r\n" {
            out.extend_from_slice(&raw[offset..]);
            return out;
        }
        let folded = matches!(line.first(), Some(b' ' | b'\t'));
        if !folded {
            in_bcc = line.len() >= 4 && line[..4].eq_ignore_ascii_case(b"bcc:");
        }
        if !in_bcc {
            out.extend_from_slice(line);
        }
        offset = end;
    }
    out
}

enum Fault {
    RestDisabled,
    Reset,
    Unavailable(Option<u64>),
    Throttled(u64),
    MailboxFull,
    Quota(String, Option<u64>),
}

fn throttled(rid: &str, retry_after: u64) -> Response {
    let mut r = graph_error(
        StatusCode::TOO_MANY_REQUESTS,
        "ApplicationThrottled",
        "Application is over its MailboxConcurrency limit.",
        rid,
    );
    r.headers_mut()
        .insert("retry-after", HeaderValue::from(retry_after));
    r
}

// ---- the message resource (writable properties only; anything else is refused) ----

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct SendMailBody {
    message: Message,
    #[serde(default)]
    save_to_sent_items: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Message {
    #[serde(default)]
    subject: Option<String>,
    #[serde(default)]
    body: Option<ItemBody>,
    #[serde(default)]
    to_recipients: Vec<Recipient>,
    #[serde(default)]
    cc_recipients: Vec<Recipient>,
    #[serde(default)]
    bcc_recipients: Vec<Recipient>,
    #[serde(default)]
    reply_to: Vec<Recipient>,
    #[serde(default)]
    from: Option<Recipient>,
    #[serde(default)]
    #[allow(dead_code)]
    sender: Option<Recipient>,
    #[serde(default)]
    importance: Option<String>,
    #[serde(default)]
    attachments: Vec<FileAttachment>,
    #[serde(default)]
    internet_message_headers: Vec<InternetMessageHeader>,
    #[serde(default)]
    internet_message_id: Option<String>,
    #[serde(default)]
    #[allow(dead_code)]
    categories: Vec<String>,
    #[serde(default)]
    #[allow(dead_code)]
    is_delivery_receipt_requested: Option<bool>,
    #[serde(default)]
    #[allow(dead_code)]
    is_read_receipt_requested: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ItemBody {
    content_type: String,
    content: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Recipient {
    email_address: EmailAddress,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EmailAddress {
    address: String,
    #[serde(default)]
    name: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct FileAttachment {
    #[serde(rename = "@odata.type")]
    odata_type: String,
    name: String,
    #[serde(default)]
    content_type: Option<String>,
    content_bytes: String,
    #[serde(default)]
    is_inline: bool,
    #[serde(default)]
    content_id: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InternetMessageHeader {
    name: String,
    value: String,
}

fn plausible_address(a: &str) -> bool {
    match a.rsplit_once('@') {
        Some((l, d)) => {
            !l.is_empty()
                && d.contains('.')
                && !a.chars().any(|c| c.is_whitespace() || c.is_control())
        }
        None => false,
    }
}

impl Message {
    fn check(&self) -> Result<(), (&'static str, String)> {
        let all: Vec<&Recipient> = self
            .to_recipients
            .iter()
            .chain(&self.cc_recipients)
            .chain(&self.bcc_recipients)
            .collect();
        if all.is_empty() {
            return Err((
                "ErrorInvalidRecipients",
                "At least one recipient isn't valid.".into(),
            ));
        }
        if all.len() > 500 {
            return Err((
                "ErrorExceededMaxRecipientLimit",
                "The message has too many recipients.".into(),
            ));
        }
        for r in all
            .iter()
            .chain(self.reply_to.iter().collect::<Vec<_>>().iter())
        {
            if !plausible_address(&r.email_address.address) {
                return Err((
                    "ErrorInvalidRecipients",
                    format!(
                        "At least one recipient isn't valid., Recipient '{}' isn't resolved.",
                        r.email_address.address
                    ),
                ));
            }
        }
        if let Some(b) = &self.body
            && !matches!(
                b.content_type.to_ascii_lowercase().as_str(),
                "text" | "html"
            )
        {
            return Err((
                "RequestBodyRead",
                format!("Requested value '{}' was not found.", b.content_type),
            ));
        }
        if let Some(i) = &self.importance
            && !matches!(i.to_ascii_lowercase().as_str(), "low" | "normal" | "high")
        {
            return Err((
                "RequestBodyRead",
                format!("Requested value '{i}' was not found."),
            ));
        }
        if self.internet_message_headers.len() > MAX_INTERNET_MESSAGE_HEADERS {
            return Err((
                "InvalidInternetMessageHeaderCollection",
                format!(
                    "Maximum number of headers in one message should be less than or equal to {MAX_INTERNET_MESSAGE_HEADERS}."
                ),
            ));
        }
        for h in &self.internet_message_headers {
            if !(h.name.starts_with("x-") || h.name.starts_with("X-")) {
                return Err((
                    "InvalidInternetMessageHeader",
                    format!(
                        "The internet message header name '{}' should start with 'x-' or 'X-'.",
                        h.name
                    ),
                ));
            }
            if h.value.contains(['\r', '\n']) || h.name.contains(['\r', '\n', ':', ' ']) {
                return Err((
                    "InvalidInternetMessageHeader",
                    format!("The internet message header '{}' is not valid.", h.name),
                ));
            }
        }
        if let Some(id) = &self.internet_message_id
            && !(id.starts_with('<')
                && id.ends_with('>')
                && id.contains('@')
                && !id.contains(['\r', '\n', ' ']))
        {
            return Err((
                "InvalidInternetMessageId",
                format!("The internet message id '{id}' is not valid."),
            ));
        }
        for a in &self.attachments {
            if a.odata_type != "#microsoft.graph.fileAttachment" {
                return Err((
                    "RequestBodyRead",
                    format!("Unsupported attachment type '{}'.", a.odata_type),
                ));
            }
            if base64::engine::general_purpose::STANDARD
                .decode(&a.content_bytes)
                .is_err()
            {
                return Err((
                    "ErrorInvalidRequest",
                    format!("The attachment '{}' has invalid contentBytes.", a.name),
                ));
            }
        }
        Ok(())
    }

    fn all_recipients(&self) -> Vec<String> {
        self.to_recipients
            .iter()
            .chain(&self.cc_recipients)
            .chain(&self.bcc_recipients)
            .map(|r| r.email_address.address.to_ascii_lowercase())
            .collect()
    }

    /// A real RFC 5322 / MIME message, as Exchange would put on the wire (Bcc omitted).
    fn to_mime(&self, mailbox: &str) -> Vec<u8> {
        let mut out = String::new();
        let from = self
            .from
            .as_ref()
            .map(|r| mailbox_header(&r.email_address))
            .unwrap_or_else(|| format!("<{mailbox}>"));
        out.push_str(&format!("From: {from}\r\n"));
        for (name, list) in [
            ("To", &self.to_recipients),
            ("Cc", &self.cc_recipients),
            ("Reply-To", &self.reply_to),
        ] {
            if !list.is_empty() {
                let v: Vec<String> = list
                    .iter()
                    .map(|r| mailbox_header(&r.email_address))
                    .collect();
                out.push_str(&format!("{name}: {}\r\n", v.join(", ")));
            }
        }
        out.push_str(&format!(
            "Subject: {}\r\n",
            encode_word(self.subject.as_deref().unwrap_or_default())
        ));
        out.push_str(&format!("Date: {}\r\n", chrono::Utc::now().to_rfc2822()));
        let message_id = self
            .internet_message_id
            .clone()
            .unwrap_or_else(|| format!("<{}@graph-stand-in.local>", uuid::Uuid::new_v4().simple()));
        out.push_str(&format!("Message-ID: {message_id}\r\n"));
        if let Some(i) = &self.importance {
            out.push_str(&format!("Importance: {i}\r\n"));
        }
        for h in &self.internet_message_headers {
            out.push_str(&format!("{}: {}\r\n", h.name, h.value));
        }
        out.push_str("MIME-Version: 1.0\r\n");
        let (ct, content) = match &self.body {
            Some(b) if b.content_type.eq_ignore_ascii_case("html") => {
                ("text/html", b.content.as_str())
            }
            Some(b) => ("text/plain", b.content.as_str()),
            None => ("text/plain", ""),
        };
        let body_part = format!(
            "Content-Type: {ct}; charset=utf-8\r\nContent-Transfer-Encoding: base64\r\n\r\n{}",
            wrap_base64(content.as_bytes())
        );
        if self.attachments.is_empty() {
            out.push_str(&body_part);
        } else {
            let boundary = format!("=_graph_{}", uuid::Uuid::new_v4().simple());
            out.push_str(&format!(
                "Content-Type: multipart/mixed; boundary=\"{boundary}\"\r\n\r\n"
            ));
            out.push_str(&format!("--{boundary}\r\n{body_part}"));
            for a in &self.attachments {
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(&a.content_bytes)
                    .unwrap_or_default();
                let name = encode_word(&a.name).replace('"', "'");
                out.push_str(&format!("--{boundary}\r\n"));
                out.push_str(&format!(
                    "Content-Type: {}; name=\"{name}\"\r\n",
                    a.content_type
                        .as_deref()
                        .unwrap_or("application/octet-stream")
                ));
                out.push_str(&format!(
                    "Content-Disposition: {}; filename=\"{name}\"\r\n",
                    if a.is_inline { "inline" } else { "attachment" }
                ));
                if let Some(cid) = &a.content_id {
                    out.push_str(&format!("Content-ID: <{cid}>\r\n"));
                }
                out.push_str("Content-Transfer-Encoding: base64\r\n\r\n");
                out.push_str(&wrap_base64(&bytes));
            }
            out.push_str(&format!("--{boundary}--\r\n"));
        }
        out.into_bytes()
    }
}

fn mailbox_header(a: &EmailAddress) -> String {
    match &a.name {
        Some(n) if !n.is_empty() => format!("{} <{}>", encode_word(n), a.address),
        _ => format!("<{}>", a.address),
    }
}

/// RFC 2047 encoded word for non-ASCII (or quote-needing) text.
fn encode_word(s: &str) -> String {
    if s.is_ascii() && !s.contains(['"', '\r', '\n']) {
        s.to_owned()
    } else {
        format!(
            "=?utf-8?B?{}?=",
            base64::engine::general_purpose::STANDARD.encode(s.as_bytes())
        )
    }
}

fn wrap_base64(bytes: &[u8]) -> String {
    let encoded = base64::engine::general_purpose::STANDARD.encode(bytes);
    let mut out = String::with_capacity(encoded.len() + encoded.len() / 76 * 2 + 2);
    for chunk in encoded.as_bytes().chunks(76) {
        out.push_str(std::str::from_utf8(chunk).expect("base64 is ASCII"));
        out.push_str("\r\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mime_carries_subject_headers_message_id_and_attachments() {
        let m: Message = serde_json::from_value(serde_json::json!({
            "subject": "[Ticket#1] Grüße",
            "body": {"contentType": "html", "content": "<p>Hi</p>"},
            "toRecipients": [{"emailAddress": {"address": "c@example.com", "name": "C"}}],
            "bccRecipients": [{"emailAddress": {"address": "hidden@example.com"}}],
            "internetMessageHeaders": [{"name": "X-Mailbridge-Ref", "value": "1.abcdef0123456789"}],
            "internetMessageId": "<mb.1.abc@contoso.com>",
            "attachments": [{"@odata.type": "#microsoft.graph.fileAttachment", "name": "a.txt", "contentType": "text/plain", "contentBytes": "aGVsbG8="}]
        }))
        .unwrap();
        m.check().unwrap();
        let raw = m.to_mime("support@contoso.com");
        let parsed = mail_parser::MessageParser::default().parse(&raw).unwrap();
        assert_eq!(parsed.subject(), Some("[Ticket#1] Grüße"));
        assert_eq!(parsed.message_id(), Some("mb.1.abc@contoso.com"));
        assert_eq!(parsed.attachment_count(), 1);
        assert_eq!(parsed.body_html(0).as_deref(), Some("<p>Hi</p>"));
        assert!(!String::from_utf8_lossy(&raw).contains("hidden@example.com"));
        assert_eq!(m.all_recipients().len(), 2);
    }

    #[test]
    fn non_x_headers_unknown_properties_and_no_recipients_are_refused() {
        let m: Message = serde_json::from_value(serde_json::json!({
            "toRecipients": [{"emailAddress": {"address": "c@example.com"}}],
            "internetMessageHeaders": [{"name": "List-Unsubscribe", "value": "x"}]
        }))
        .unwrap();
        assert_eq!(m.check().unwrap_err().0, "InvalidInternetMessageHeader");
        let unknown = serde_json::from_value::<Message>(serde_json::json!({"subjectLine": "x"}));
        assert!(unknown.is_err());
        let m: Message = serde_json::from_value(serde_json::json!({"subject": "x"})).unwrap();
        assert_eq!(m.check().unwrap_err().0, "ErrorInvalidRecipients");
    }
}
