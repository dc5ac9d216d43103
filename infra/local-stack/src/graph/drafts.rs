//! The draft route of the Graph stand-in, for messages too large for one request:
//! `POST /v1.0/{me|users/{id}}/messages` (a draft from JSON or from base64 MIME), `PATCH` and
//! `DELETE` of a draft, `POST …/messages/{id}/attachments` (a `fileAttachment`),
//! `POST …/messages/{id}/attachments/createUploadSession`, the `PUT`s to the session's
//! `uploadUrl`, and `POST …/messages/{id}/send`, which delivers the draft with its attachments
//! like `sendMail` does.
//!
//! Strict like Graph (Microsoft's "Attach large files to Outlook messages or events" and the
//! `attachment: createUploadSession`, `uploadSession` pages):
//! - drafts need `Mail.ReadWrite` (another mailbox: `Mail.ReadWrite.Shared` and a grant), else
//!   403 `ErrorAccessDenied`; every request body over 4 MB → 413;
//! - an upload session for a file under 3 MB → 400
//!   `ErrorAttachmentSizeShouldNotBeLessThanMinimumSize`, over 150 MB → 400
//!   `ErrorAttachmentSizeShouldNotBeGreaterThanMaximumSize`;
//! - an attachment or a send that takes the message over the mailbox's send size (Exchange
//!   Online's default 35 MB, [`DEFAULT_MAX_SEND_BYTES`], [`GraphStandIn::set_max_send_bytes`])
//!   → 413 `ErrorMessageSizeExceeded` "The message exceeds the maximum supported size.";
//! - upload `PUT`s: no `Authorization` header (the URL is pre-authenticated; with one → 401),
//!   `Content-Type: application/octet-stream`, `Content-Range: bytes {start}-{end}/{total}`
//!   whose total is the announced size and whose start is the next expected byte (else 416 with
//!   `nextExpectedRanges`), a body of exactly that length and at most 4 MB (else 400/413), before
//!   the session's `expirationDateTime` (after it, and for an unknown session, 404
//!   `ErrorItemNotFound`). A middle chunk answers 200 with `nextExpectedRanges`, the last 201
//!   with a `Location` header. Chunk sizes need not be multiples of 320 KiB (that is OneDrive's
//!   rule; Microsoft's own Outlook example uploads 2,097,152 bytes first).
//!
//! The size of a message is counted as Exchange sees it: the MIME of the draft plus each
//! attachment in base64.
//!
//! `GET …/messages/{id}` answers the draft while it is one and 404 once it was sent (Exchange
//! moves a sent draft to Sent Items, under another id): how a client tells, after a lost answer
//! to `send`, whether the mail went out. Faults per mailbox and step
//! ([`GraphStandIn::draft_fault`]): 429 with `Retry-After` and 503 on create draft,
//! createUploadSession, an upload chunk or send (nothing done), "accept, then fail" on send (sent,
//! then 504), an upload session that expired (404 on the chunk). Every request is recorded with
//! its arrival time ([`GraphStandIn::request_log`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, post, put};
use base64::Engine as _;
use serde::Deserialize;

use super::{
    AcceptedMail, FileAttachment, GraphStandIn, MAX_REQUEST_BYTES, MailboxPath, Message,
    StandInState, graph_error, mime_submission, wrap_base64,
};

/// Exchange Online's default `MaxSendSize`: 35 MB (36,700,160 bytes).
pub const DEFAULT_MAX_SEND_BYTES: usize = 35 * 1024 * 1024;
/// Upload sessions take files from 3 MB ...
pub const MIN_UPLOAD_SESSION_BYTES: usize = 3_000_000;
/// ... to 150 MB.
pub const MAX_UPLOAD_SESSION_BYTES: usize = 150 * 1024 * 1024;
/// Bytes per upload `PUT` ("up to 4 MB each time").
pub const MAX_CHUNK_BYTES: usize = 4 * 1024 * 1024;
/// How long an upload session's URL works (Graph's are about 15 minutes to a day; tests
/// shorten it with [`GraphStandIn::set_upload_session_lifetime`]).
pub const DEFAULT_UPLOAD_SESSION_LIFETIME: Duration = Duration::from_secs(15 * 60);

/// The drafts, upload sessions and send sizes of the stand-in.
#[derive(Default)]
pub(super) struct Drafts {
    drafts: Mutex<HashMap<String, Draft>>,
    uploads: Mutex<HashMap<String, Upload>>,
    max_send: Mutex<HashMap<String, usize>>,
    upload_lifetime: Mutex<Option<Duration>>,
    faults: Mutex<HashMap<(String, DraftStep), Vec<DraftFault>>>,
}

/// A step of the draft route a fault can be put on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DraftStep {
    /// `POST …/messages`.
    CreateDraft,
    /// `POST …/attachments/createUploadSession`.
    CreateUploadSession,
    /// A `PUT` to an upload session's URL.
    UploadChunk,
    /// `POST …/messages/{id}/send`.
    SendDraft,
}

/// What a step answers instead of doing its work (what Graph has been seen to do).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "how", rename_all = "snake_case")]
pub enum DraftFault {
    /// 429 `ApplicationThrottled` with `Retry-After`; nothing done.
    Throttle429 {
        /// `Retry-After` seconds.
        retry_after_secs: u64,
    },
    /// 503 `ServiceUnavailable` (with `Retry-After` when given); nothing done.
    Fail503 {
        /// `Retry-After` seconds, if any.
        #[serde(default)]
        retry_after_secs: Option<u64>,
    },
    /// `send draft` only: the mail is sent (delivered, the draft gone), then the answer is a
    /// 504, as if it was lost on the way back.
    AcceptThenFail,
    /// `upload chunk` only: the upload session has expired (404 `ErrorItemNotFound`, the
    /// session gone; the draft stays).
    ExpireSession,
}

impl GraphStandIn {
    /// The next `count` requests of `step` for `mailbox` answer with `fault`.
    pub fn draft_fault(&self, mailbox: &str, step: DraftStep, fault: DraftFault, count: u32) {
        self.state.drafts.faults.lock().expect("lock").insert(
            (mailbox.to_ascii_lowercase(), step),
            vec![fault; count as usize],
        );
    }
}

/// The fault the next `step` request of `mailbox` gets, if one is set.
fn take_fault(state: &StandInState, mailbox: &str, step: DraftStep) -> Option<DraftFault> {
    state
        .drafts
        .faults
        .lock()
        .expect("lock")
        .get_mut(&(mailbox.to_owned(), step))
        .and_then(Vec::pop)
}

/// The answer of a 429 or 503 fault (nothing was done).
fn refused_by_fault(fault: DraftFault, rid: &str) -> Option<Response> {
    match fault {
        DraftFault::Throttle429 { retry_after_secs } => {
            Some(super::throttled(rid, retry_after_secs))
        }
        DraftFault::Fail503 { retry_after_secs } => {
            let mut r = graph_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "ServiceUnavailable",
                "Service is temporarily unavailable.",
                rid,
            );
            if let Some(s) = retry_after_secs {
                r.headers_mut().insert("retry-after", HeaderValue::from(s));
            }
            Some(r)
        }
        DraftFault::AcceptThenFail | DraftFault::ExpireSession => None,
    }
}

struct Draft {
    mailbox: String,
    /// The draft as MIME (from MIME as given; from JSON as Exchange would write it).
    mime: Vec<u8>,
    attachments: Vec<Attached>,
}

#[derive(Clone)]
struct Attached {
    name: String,
    content_type: String,
    content_id: Option<String>,
    inline: bool,
    bytes: Vec<u8>,
}

struct Upload {
    draft: String,
    mailbox: String,
    item: Attached,
    size: usize,
    expires: chrono::DateTime<chrono::Utc>,
}

impl Draft {
    /// The message size as Exchange counts it: the MIME plus each attachment in base64.
    fn size(&self) -> usize {
        self.mime.len()
            + self
                .attachments
                .iter()
                .map(|a| a.bytes.len().div_ceil(3) * 4 + 300)
                .sum::<usize>()
    }
}

impl GraphStandIn {
    /// `mailbox` may send messages of at most `bytes` (Exchange's `MaxSendSize`).
    pub fn set_max_send_bytes(&self, mailbox: &str, bytes: usize) {
        self.state
            .drafts
            .max_send
            .lock()
            .expect("lock")
            .insert(mailbox.to_ascii_lowercase(), bytes);
    }

    /// Upload sessions created from now on expire after `lifetime`.
    pub fn set_upload_session_lifetime(&self, lifetime: Duration) {
        *self.state.drafts.upload_lifetime.lock().expect("lock") = Some(lifetime);
    }

    /// Drafts left in `mailbox`'s Drafts folder (not sent, not deleted).
    pub fn draft_count(&self, mailbox: &str) -> usize {
        let mailbox = mailbox.to_ascii_lowercase();
        self.state
            .drafts
            .drafts
            .lock()
            .expect("lock")
            .values()
            .filter(|d| d.mailbox == mailbox)
            .count()
    }
}

pub(super) fn routes() -> Router<Arc<StandInState>> {
    Router::new()
        .route("/v1.0/me/messages", post(create_draft))
        .route("/v1.0/users/{id}/messages", post(create_draft))
        .route(
            "/v1.0/me/messages/{mid}",
            delete(delete_message).patch(patch_message).get(get_message),
        )
        .route(
            "/v1.0/users/{id}/messages/{mid}",
            delete(delete_message).patch(patch_message).get(get_message),
        )
        .route(
            "/v1.0/me/messages/{mid}/{*action}",
            post(message_action).get(message_action),
        )
        .route(
            "/v1.0/users/{id}/messages/{mid}/{*action}",
            post(message_action).get(message_action),
        )
        .route("/upload/{session}", put(upload).delete(cancel_upload))
}

type S = State<Arc<StandInState>>;

/// `/messages/{mid}` under `/me` (no `id`) or `/users/{id}`.
#[derive(Deserialize)]
struct MessagePath {
    id: Option<String>,
    mid: String,
}

/// `/messages/{mid}/{*action}` under `/me` (no `id`) or `/users/{id}`.
#[derive(Deserialize)]
struct ActionPath {
    id: Option<String>,
    mid: String,
    action: String,
}

async fn create_draft(
    State(s): S,
    Path(MailboxPath { id }): Path<MailboxPath>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    with_auth(&s, id, &headers, "create draft", |s, mailbox, rid| {
        create(s, mailbox, &headers, &body, rid)
    })
}

/// A stored message's id goes to the mail-reading routes, any other to the drafts.
async fn get_message(
    State(s): S,
    method: Method,
    Path(MessagePath { id, mid }): Path<MessagePath>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
) -> Response {
    if super::mailbox::is_stored_id(&mid) {
        return super::mailbox::message_route(s, method, id, mid, None, q, headers, Bytes::new())
            .await;
    }
    with_auth(&s, id, &headers, "get draft", |s, mailbox, rid| {
        get(s, mailbox, &mid, rid)
    })
}

async fn delete_message(
    State(s): S,
    method: Method,
    Path(MessagePath { id, mid }): Path<MessagePath>,
    headers: HeaderMap,
) -> Response {
    if super::mailbox::is_stored_id(&mid) {
        return super::mailbox::message_route(
            s,
            method,
            id,
            mid,
            None,
            None,
            headers,
            Bytes::new(),
        )
        .await;
    }
    with_auth(&s, id, &headers, "delete draft", |s, mailbox, rid| {
        remove(s, mailbox, &mid, rid)
    })
}

async fn patch_message(
    State(s): S,
    method: Method,
    Path(MessagePath { id, mid }): Path<MessagePath>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if super::mailbox::is_stored_id(&mid) {
        return super::mailbox::message_route(s, method, id, mid, None, None, headers, body).await;
    }
    with_auth(
        &s,
        id,
        &headers,
        "set internetMessageId",
        |s, mailbox, rid| patch(s, mailbox, &mid, &body, rid),
    )
}

async fn message_action(
    State(s): S,
    method: Method,
    Path(ActionPath { id, mid, action }): Path<ActionPath>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if super::mailbox::is_stored_id(&mid) || method == Method::GET {
        return super::mailbox::message_route(s, method, id, mid, Some(action), q, headers, body)
            .await;
    }
    let base = format!("http://{}", host(&headers));
    with_auth(&s, id, &headers, action_name(&action), |s, mailbox, rid| {
        draft_action(s, mailbox, &mid, &action, &body, &base, rid)
    })
}

fn action_name(action: &str) -> &'static str {
    match action {
        "attachments" => "add attachment",
        "attachments/createUploadSession" => "createUploadSession",
        "send" => "send draft",
        _ => "unknown action",
    }
}

fn host(headers: &HeaderMap) -> String {
    headers
        .get("host")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("127.0.0.1")
        .to_owned()
}

fn with_request_id(mut response: Response, rid: &str) -> Response {
    response
        .headers_mut()
        .insert("request-id", HeaderValue::from_str(rid).expect("uuid"));
    response
}

/// The token check of every Graph request here: a live Graph token with `Mail.ReadWrite`
/// (another mailbox: `Mail.ReadWrite.Shared` and a send-as grant).
fn with_auth(
    state: &Arc<StandInState>,
    user_path: Option<String>,
    headers: &HeaderMap,
    what: &'static str,
    f: impl FnOnce(&Arc<StandInState>, &str, &str) -> Response,
) -> Response {
    let arrived = std::time::Instant::now();
    let rid = uuid::Uuid::new_v4().to_string();
    let unauthorized = |message: &str| {
        graph_error(
            StatusCode::UNAUTHORIZED,
            "InvalidAuthenticationToken",
            message,
            &rid,
        )
    };
    let token = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty());
    let response = match token.and_then(|t| state.identity.lookup_access_token(t)) {
        None => unauthorized("Access token validation failure. Invalid or expired token."),
        Some(issued) if issued.expires_at <= chrono::Utc::now() => {
            unauthorized("Lifetime validation failed, the token is expired.")
        }
        Some(issued) if issued.audience.trim_end_matches('/') != state.audience => {
            unauthorized("Access token validation failure. Invalid audience.")
        }
        Some(issued) if issued.app_only => {
            // An application permission: no `/me`; Mail.ReadWrite on any mailbox named in
            // the path (sending the draft also takes Mail.Send), as Graph has it.
            let scoped = user_path
                .as_deref()
                .zip(token)
                .map(|(id, t)| state.identity.exchange_app_permissions(t, id))
                .unwrap_or_default();
            let role = |p: &str| {
                issued
                    .roles
                    .iter()
                    .chain(scoped.iter())
                    .any(|r| r.eq_ignore_ascii_case(p))
            };
            match user_path.as_deref() {
                None => graph_error(
                    StatusCode::BAD_REQUEST,
                    "BadRequest",
                    "/me request is only valid with delegated authentication flow.",
                    &rid,
                ),
                Some(id)
                    if role("Mail.ReadWrite") && (what != "send draft" || role("Mail.Send")) =>
                {
                    let mailbox = id.to_ascii_lowercase();
                    let response = f(state, &mailbox, &rid);
                    state.record(&mailbox, what, arrived, response.status().as_u16());
                    response
                }
                Some(_) => graph_error(
                    StatusCode::FORBIDDEN,
                    "ErrorAccessDenied",
                    "Access is denied. Check credentials and try again.",
                    &rid,
                ),
            }
        }
        Some(issued) => {
            let upn = issued.upn.to_ascii_lowercase();
            let mailbox = user_path
                .as_deref()
                .map(str::to_ascii_lowercase)
                .unwrap_or_else(|| upn.clone());
            let has = |p: &str| {
                issued.scopes.iter().any(|s| {
                    s.rsplit('/')
                        .next()
                        .is_some_and(|s| s.eq_ignore_ascii_case(p))
                })
            };
            let own = mailbox == upn;
            let allowed = if own {
                has("Mail.ReadWrite")
            } else {
                has("Mail.ReadWrite.Shared")
                    && state
                        .send_as
                        .lock()
                        .expect("lock")
                        .contains(&(upn.clone(), mailbox.clone()))
            };
            if allowed {
                let response = f(state, &mailbox, &rid);
                state.record(&mailbox, what, arrived, response.status().as_u16());
                response
            } else {
                graph_error(
                    StatusCode::FORBIDDEN,
                    "ErrorAccessDenied",
                    "Access is denied. Check credentials and try again.",
                    &rid,
                )
            }
        }
    };
    with_request_id(response, &rid)
}

fn too_large(rid: &str, bytes: usize) -> Option<Response> {
    (bytes > MAX_REQUEST_BYTES).then(|| {
        graph_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "RequestEntityTooLarge",
            &format!("The request is {bytes} bytes; the maximum is {MAX_REQUEST_BYTES}."),
            rid,
        )
    })
}

fn max_send(state: &StandInState, mailbox: &str) -> usize {
    state
        .drafts
        .max_send
        .lock()
        .expect("lock")
        .get(mailbox)
        .copied()
        .unwrap_or(DEFAULT_MAX_SEND_BYTES)
}

fn size_exceeded(rid: &str) -> Response {
    graph_error(
        StatusCode::PAYLOAD_TOO_LARGE,
        "ErrorMessageSizeExceeded",
        "The message exceeds the maximum supported size.",
        rid,
    )
}

fn create(
    state: &Arc<StandInState>,
    mailbox: &str,
    headers: &HeaderMap,
    body: &[u8],
    rid: &str,
) -> Response {
    if let Some(r) = too_large(rid, body.len()) {
        return r;
    }
    if let Some(r) =
        take_fault(state, mailbox, DraftStep::CreateDraft).and_then(|f| refused_by_fault(f, rid))
    {
        return r;
    }
    let content_type = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_ascii_lowercase();
    let mime = if content_type.starts_with("text/plain") {
        // the same checks as a MIME sendMail (base64, recipients)
        if let Err((status, code, message)) = mime_submission(body) {
            return graph_error(status, code, &message, rid);
        }
        let compact: Vec<u8> = body
            .iter()
            .copied()
            .filter(|b| !matches!(b, b'\r' | b'\n'))
            .collect();
        let raw = base64::engine::general_purpose::STANDARD
            .decode(&compact)
            .unwrap_or_default();
        with_message_id(&raw)
    } else if content_type.starts_with("application/json") {
        let message: Message = match serde_json::from_slice(body) {
            Ok(m) => m,
            Err(e) => {
                return graph_error(
                    StatusCode::BAD_REQUEST,
                    "RequestBodyRead",
                    &e.to_string(),
                    rid,
                );
            }
        };
        if let Err((code, message)) = message.check() {
            return graph_error(StatusCode::BAD_REQUEST, code, &message, rid);
        }
        message.to_mime(mailbox)
    } else {
        return graph_error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UnsupportedMediaType",
            "Use application/json or text/plain (MIME).",
            rid,
        );
    };
    let draft = Draft {
        mailbox: mailbox.to_owned(),
        mime,
        attachments: Vec::new(),
    };
    if draft.size() > max_send(state, mailbox) {
        return size_exceeded(rid);
    }
    let id = format!("AAMkAD{}=", uuid::Uuid::new_v4().simple());
    let answer = draft_json(&id, &draft);
    state.drafts.drafts.lock().expect("lock").insert(id, draft);
    (StatusCode::CREATED, axum::Json(answer)).into_response()
}

fn draft_json(id: &str, draft: &Draft) -> serde_json::Value {
    let parsed = mail_parser::MessageParser::default().parse(&draft.mime);
    serde_json::json!({
        "id": id,
        "isDraft": true,
        "subject": parsed.as_ref().and_then(|m| m.subject()).unwrap_or_default(),
        "internetMessageId": parsed
            .as_ref()
            .and_then(|m| m.message_id())
            .map(|m| format!("<{m}>")),
        "hasAttachments": !draft.attachments.is_empty(),
    })
}

/// A Message-ID is assigned when the draft is created (Exchange keeps a given one).
fn with_message_id(raw: &[u8]) -> Vec<u8> {
    let has = mail_parser::MessageParser::default()
        .parse(raw)
        .is_some_and(|m| m.message_id().is_some());
    if has {
        return raw.to_vec();
    }
    let mut out = format!(
        "Message-ID: <{}@graph-stand-in.local>\r\n",
        uuid::Uuid::new_v4().simple()
    )
    .into_bytes();
    out.extend_from_slice(raw);
    out
}

/// `GET …/messages/{id}`: the draft while it is one; once sent it has moved to Sent Items under
/// another id, so the draft's id answers 404 (as Exchange's ids do when an item changes folder).
fn get(state: &Arc<StandInState>, mailbox: &str, mid: &str, rid: &str) -> Response {
    let drafts = state.drafts.drafts.lock().expect("lock");
    match drafts.get(mid) {
        Some(d) if d.mailbox == mailbox => {
            (StatusCode::OK, axum::Json(draft_json(mid, d))).into_response()
        }
        _ => not_found(rid),
    }
}

fn remove(state: &Arc<StandInState>, mailbox: &str, mid: &str, rid: &str) -> Response {
    let mut drafts = state.drafts.drafts.lock().expect("lock");
    match drafts.get(mid) {
        Some(d) if d.mailbox == mailbox => {
            drafts.remove(mid);
            StatusCode::NO_CONTENT.into_response()
        }
        _ => not_found(rid),
    }
}

fn not_found(rid: &str) -> Response {
    graph_error(
        StatusCode::NOT_FOUND,
        "ErrorItemNotFound",
        "The specified object was not found in the store.",
        rid,
    )
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct DraftPatch {
    internet_message_id: String,
}

fn patch(state: &Arc<StandInState>, mailbox: &str, mid: &str, body: &[u8], rid: &str) -> Response {
    let patch: DraftPatch = match serde_json::from_slice(body) {
        Ok(p) => p,
        Err(e) => {
            return graph_error(
                StatusCode::BAD_REQUEST,
                "RequestBodyRead",
                &e.to_string(),
                rid,
            );
        }
    };
    let id = patch.internet_message_id.trim();
    if !(id.starts_with('<') && id.ends_with('>') && id.contains('@')) || id.contains(['\r', '\n'])
    {
        return graph_error(
            StatusCode::BAD_REQUEST,
            "ErrorInvalidInternetMessageId",
            "The internet message id is not valid.",
            rid,
        );
    }
    let mut drafts = state.drafts.drafts.lock().expect("lock");
    let Some(draft) = drafts.get_mut(mid).filter(|d| d.mailbox == mailbox) else {
        return not_found(rid);
    };
    let mut mime = format!("Message-ID: {id}\r\n").into_bytes();
    mime.extend_from_slice(&without_field(&draft.mime, b"message-id:"));
    draft.mime = mime;
    let answer = draft_json(mid, draft);
    (StatusCode::OK, axum::Json(answer)).into_response()
}

fn draft_action(
    state: &Arc<StandInState>,
    mailbox: &str,
    mid: &str,
    action: &str,
    body: &[u8],
    base: &str,
    rid: &str,
) -> Response {
    if let Some(r) = too_large(rid, body.len()) {
        return r;
    }
    match action {
        "attachments" => add_attachment(state, mailbox, mid, body, rid),
        "attachments/createUploadSession" => create_session(state, mailbox, mid, body, base, rid),
        "send" => send(state, mailbox, mid, rid),
        _ => graph_error(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            &format!("Resource not found for the segment '{action}'."),
            rid,
        ),
    }
}

fn add_attachment(
    state: &Arc<StandInState>,
    mailbox: &str,
    mid: &str,
    body: &[u8],
    rid: &str,
) -> Response {
    let a: FileAttachment = match serde_json::from_slice(body) {
        Ok(a) => a,
        Err(e) => {
            return graph_error(
                StatusCode::BAD_REQUEST,
                "RequestBodyRead",
                &e.to_string(),
                rid,
            );
        }
    };
    if a.odata_type != "#microsoft.graph.fileAttachment" {
        return graph_error(
            StatusCode::BAD_REQUEST,
            "ErrorInvalidAttachmentType",
            "Only #microsoft.graph.fileAttachment is supported here.",
            rid,
        );
    }
    let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(&a.content_bytes) else {
        return graph_error(
            StatusCode::BAD_REQUEST,
            "ErrorInvalidRequest",
            "contentBytes is not base64.",
            rid,
        );
    };
    let max = max_send(state, mailbox);
    let mut drafts = state.drafts.drafts.lock().expect("lock");
    let Some(draft) = drafts.get_mut(mid).filter(|d| d.mailbox == mailbox) else {
        return not_found(rid);
    };
    draft.attachments.push(Attached {
        name: a.name,
        content_type: a
            .content_type
            .unwrap_or_else(|| "application/octet-stream".into()),
        content_id: a.content_id,
        inline: a.is_inline,
        bytes,
    });
    if draft.size() > max {
        draft.attachments.pop();
        return size_exceeded(rid);
    }
    let id = format!("AAMkADatt{}=", uuid::Uuid::new_v4().simple());
    (
        StatusCode::CREATED,
        axum::Json(serde_json::json!({"@odata.type": "#microsoft.graph.fileAttachment", "id": id})),
    )
        .into_response()
}

#[derive(Deserialize)]
struct SessionRequest {
    #[serde(rename = "AttachmentItem", alias = "attachmentItem")]
    item: AttachmentItem,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct AttachmentItem {
    attachment_type: String,
    name: String,
    size: usize,
    #[serde(default)]
    content_type: Option<String>,
    #[serde(default)]
    is_inline: bool,
    #[serde(default)]
    content_id: Option<String>,
}

fn create_session(
    state: &Arc<StandInState>,
    mailbox: &str,
    mid: &str,
    body: &[u8],
    base: &str,
    rid: &str,
) -> Response {
    let request: SessionRequest = match serde_json::from_slice(body) {
        Ok(r) => r,
        Err(e) => {
            return graph_error(
                StatusCode::BAD_REQUEST,
                "RequestBodyRead",
                &e.to_string(),
                rid,
            );
        }
    };
    if let Some(r) = take_fault(state, mailbox, DraftStep::CreateUploadSession)
        .and_then(|f| refused_by_fault(f, rid))
    {
        return r;
    }
    let item = request.item;
    if item.attachment_type != "file" {
        return graph_error(
            StatusCode::BAD_REQUEST,
            "ErrorInvalidRequest",
            "attachmentType must be file for a message.",
            rid,
        );
    }
    if item.size < MIN_UPLOAD_SESSION_BYTES {
        return graph_error(
            StatusCode::BAD_REQUEST,
            "ErrorAttachmentSizeShouldNotBeLessThanMinimumSize",
            "Attachment size should not be less than the minimum size for an upload session (3 MB).",
            rid,
        );
    }
    if item.size > MAX_UPLOAD_SESSION_BYTES {
        return graph_error(
            StatusCode::BAD_REQUEST,
            "ErrorAttachmentSizeShouldNotBeGreaterThanMaximumSize",
            "Attachment size should not be greater than 150 MB.",
            rid,
        );
    }
    let max = max_send(state, mailbox);
    {
        let drafts = state.drafts.drafts.lock().expect("lock");
        let Some(draft) = drafts.get(mid).filter(|d| d.mailbox == mailbox) else {
            return not_found(rid);
        };
        if draft.size() + item.size.div_ceil(3) * 4 > max {
            return size_exceeded(rid);
        }
    }
    let lifetime = state
        .drafts
        .upload_lifetime
        .lock()
        .expect("lock")
        .unwrap_or(DEFAULT_UPLOAD_SESSION_LIFETIME);
    let expires = chrono::Utc::now() + chrono::Duration::from_std(lifetime).unwrap_or_default();
    let session = uuid::Uuid::new_v4().simple().to_string();
    state.drafts.uploads.lock().expect("lock").insert(
        session.clone(),
        Upload {
            draft: mid.to_owned(),
            mailbox: mailbox.to_owned(),
            item: Attached {
                name: item.name,
                content_type: item
                    .content_type
                    .unwrap_or_else(|| "application/octet-stream".into()),
                content_id: item.content_id,
                inline: item.is_inline,
                bytes: Vec::with_capacity(item.size),
            },
            size: item.size,
            expires,
        },
    );
    (
        StatusCode::CREATED,
        axum::Json(serde_json::json!({
            "@odata.context": "https://graph.microsoft.com/v1.0/$metadata#microsoft.graph.uploadSession",
            "uploadUrl": format!("{base}/upload/{session}?authtoken={}", uuid::Uuid::new_v4().simple()),
            "expirationDateTime": expires.to_rfc3339(),
            "nextExpectedRanges": ["0-"],
        })),
    )
        .into_response()
}

/// `Content-Range: bytes {start}-{end}/{total}`.
fn content_range(headers: &HeaderMap) -> Option<(usize, usize, usize)> {
    let v = headers.get("content-range")?.to_str().ok()?;
    let (range, total) = v.strip_prefix("bytes ")?.split_once('/')?;
    let (start, end) = range.split_once('-')?;
    Some((start.parse().ok()?, end.parse().ok()?, total.parse().ok()?))
}

async fn upload(
    State(state): S,
    Path(session): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let arrived = std::time::Instant::now();
    let rid = uuid::Uuid::new_v4().to_string();
    let mailbox = state
        .drafts
        .uploads
        .lock()
        .expect("lock")
        .get(&session)
        .map(|u| u.mailbox.clone());
    let response = upload_chunk(&state, &session, &headers, &body, &rid);
    if let Some(mailbox) = mailbox {
        state.record(
            &mailbox,
            "upload chunk",
            arrived,
            response.status().as_u16(),
        );
    }
    with_request_id(response, &rid)
}

fn upload_chunk(
    state: &Arc<StandInState>,
    session: &str,
    headers: &HeaderMap,
    body: &[u8],
    rid: &str,
) -> Response {
    let bad =
        |code: &str, message: String| graph_error(StatusCode::BAD_REQUEST, code, &message, rid);
    if headers.contains_key("authorization") {
        return graph_error(
            StatusCode::UNAUTHORIZED,
            "InvalidAuthenticationToken",
            "The upload URL is pre-authenticated; do not send an Authorization header.",
            rid,
        );
    }
    let mut uploads = state.drafts.uploads.lock().expect("lock");
    let Some(upload) = uploads.get_mut(session) else {
        return not_found(rid);
    };
    match take_fault(state, &upload.mailbox.clone(), DraftStep::UploadChunk) {
        Some(DraftFault::ExpireSession) => upload.expires = chrono::Utc::now(),
        Some(fault) => {
            if let Some(r) = refused_by_fault(fault, rid) {
                return r;
            }
        }
        None => {}
    }
    if upload.expires <= chrono::Utc::now() {
        uploads.remove(session);
        return graph_error(
            StatusCode::NOT_FOUND,
            "ErrorItemNotFound",
            "The upload session has expired.",
            rid,
        );
    }
    let content_type = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if !content_type.eq_ignore_ascii_case("application/octet-stream") {
        return graph_error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UnsupportedMediaType",
            "Content-Type must be application/octet-stream.",
            rid,
        );
    }
    let Some((start, end, total)) = content_range(headers) else {
        return bad(
            "InvalidContentRange",
            "Content-Range must be `bytes {start}-{end}/{total}`.".into(),
        );
    };
    if total != upload.size {
        return bad(
            "InvalidContentRange",
            format!(
                "The total {total} is not the session's size {}.",
                upload.size
            ),
        );
    }
    if end < start || end >= total {
        return bad(
            "InvalidContentRange",
            format!(
                "The range {start}-{end} does not lie within 0-{}.",
                total - 1
            ),
        );
    }
    if body.len() > MAX_CHUNK_BYTES {
        return graph_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "RequestEntityTooLarge",
            &format!(
                "A chunk may carry at most {MAX_CHUNK_BYTES} bytes; this one {}.",
                body.len()
            ),
            rid,
        );
    }
    if body.len() != end - start + 1 {
        return bad(
            "InvalidContentRange",
            format!(
                "Content-Range names {} bytes, the body has {}.",
                end - start + 1,
                body.len()
            ),
        );
    }
    let expected = upload.item.bytes.len();
    if start != expected {
        let mut r = graph_error(
            StatusCode::RANGE_NOT_SATISFIABLE,
            "InvalidRange",
            &format!("The next expected byte is {expected}."),
            rid,
        );
        *r.body_mut() = axum::body::Body::from(
            serde_json::json!({"error": {"code": "InvalidRange", "message": format!("The next expected byte is {expected}.")}, "nextExpectedRanges": [format!("{expected}-")]}).to_string(),
        );
        return r;
    }
    upload.item.bytes.extend_from_slice(body);
    if upload.item.bytes.len() < upload.size {
        let next = upload.item.bytes.len();
        return (
            StatusCode::OK,
            axum::Json(serde_json::json!({
                "expirationDateTime": upload.expires.to_rfc3339(),
                "nextExpectedRanges": [format!("{next}")],
            })),
        )
            .into_response();
    }
    let done = uploads.remove(session).expect("present");
    drop(uploads);
    let max = max_send(state, &done.mailbox);
    let mut drafts = state.drafts.drafts.lock().expect("lock");
    let Some(draft) = drafts.get_mut(&done.draft) else {
        return not_found(rid);
    };
    draft.attachments.push(done.item);
    if draft.size() > max {
        draft.attachments.pop();
        return size_exceeded(rid);
    }
    let mut r = StatusCode::CREATED.into_response();
    if let Ok(v) = HeaderValue::from_str(&format!(
        "https://outlook.office.com/api/v2.0/Users('{}')/Messages('{}')/Attachments('AAMkADatt{}=')",
        done.mailbox,
        done.draft,
        uuid::Uuid::new_v4().simple()
    )) {
        r.headers_mut().insert("location", v);
    }
    r
}

async fn cancel_upload(State(state): S, Path(session): Path<String>) -> Response {
    match state.drafts.uploads.lock().expect("lock").remove(&session) {
        Some(_) => StatusCode::NO_CONTENT.into_response(),
        None => not_found(&uuid::Uuid::new_v4().to_string()),
    }
}

fn send(state: &Arc<StandInState>, mailbox: &str, mid: &str, rid: &str) -> Response {
    let fault = take_fault(state, mailbox, DraftStep::SendDraft);
    if let Some(r) = fault.and_then(|f| refused_by_fault(f, rid)) {
        return r;
    }
    let answer = send_now(state, mailbox, mid, rid);
    if fault == Some(DraftFault::AcceptThenFail) && answer.status() == StatusCode::ACCEPTED {
        return graph_error(StatusCode::GATEWAY_TIMEOUT, "UnknownError", "", rid);
    }
    answer
}

fn send_now(state: &Arc<StandInState>, mailbox: &str, mid: &str, rid: &str) -> Response {
    let max = max_send(state, mailbox);
    let draft = {
        let mut drafts = state.drafts.drafts.lock().expect("lock");
        match drafts.get(mid) {
            Some(d) if d.mailbox == mailbox => {
                if d.size() > max {
                    return size_exceeded(rid);
                }
                drafts.remove(mid).expect("present")
            }
            _ => return not_found(rid),
        }
    };
    let assembled = with_attachments(&draft.mime, &draft.attachments);
    let encoded = base64::engine::general_purpose::STANDARD.encode(&assembled);
    let submission = match mime_submission(encoded.as_bytes()) {
        Ok(s) => s,
        Err((status, code, message)) => return graph_error(status, code, &message, rid),
    };
    if let Some(from) = &submission.from
        && from.to_ascii_lowercase() != mailbox
    {
        return graph_error(
            StatusCode::FORBIDDEN,
            "ErrorSendAsDenied",
            "The user account which was used to submit this request does not have the right to send mail on behalf of the specified sending account.",
            rid,
        );
    }
    let mime = submission.mime;
    state.accepted.lock().expect("lock").push(AcceptedMail {
        mailbox: mailbox.to_owned(),
        upn: mailbox.to_owned(),
        path: format!("messages/{mid}/send"),
        request: serde_json::json!({"draft": mid, "attachments": draft.attachments.len(), "bytes": assembled.len()}),
        request_id: rid.to_owned(),
        mime: mime.clone(),
        save_to_sent_items: true,
    });
    state.deliver(submission.recipients, mime);
    StatusCode::ACCEPTED.into_response()
}

/// The message without the header field `name` (lowercase, with its colon) and its folded lines.
fn without_field(raw: &[u8], name: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len());
    let mut skipping = false;
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
        if !matches!(line.first(), Some(b' ' | b'\t')) {
            skipping = line.len() >= name.len() && line[..name.len()].eq_ignore_ascii_case(name);
        }
        if !skipping {
            out.extend_from_slice(line);
        }
        offset = end;
    }
    out
}

/// The draft's MIME with the attachments added as parts of a `multipart/mixed`: into the
/// existing one, or around the whole body when the message is not `multipart/mixed`.
fn with_attachments(raw: &[u8], attachments: &[Attached]) -> Vec<u8> {
    if attachments.is_empty() {
        return raw.to_vec();
    }
    let mut parts = String::new();
    let part_for = |boundary: &str, a: &Attached| {
        let name = a.name.replace(['"', '\r', '\n'], "_");
        let mut p = format!(
            "--{boundary}\r\nContent-Type: {}; name=\"{name}\"\r\nContent-Disposition: {}; filename=\"{name}\"\r\n",
            a.content_type,
            if a.inline { "inline" } else { "attachment" }
        );
        if let Some(cid) = &a.content_id {
            p.push_str(&format!("Content-ID: <{cid}>\r\n"));
        }
        p.push_str("Content-Transfer-Encoding: base64\r\n\r\n");
        p.push_str(&wrap_base64(&a.bytes));
        p
    };
    let parsed = mail_parser::MessageParser::default().parse(raw);
    let mixed_boundary = parsed.as_ref().and_then(|m| {
        use mail_parser::MimeHeaders as _;
        let ct = m.parts.first()?.content_type()?;
        (ct.ctype().eq_ignore_ascii_case("multipart")
            && ct
                .subtype()
                .is_some_and(|s| s.eq_ignore_ascii_case("mixed")))
        .then(|| ct.attribute("boundary").map(str::to_owned))
        .flatten()
    });
    if let Some(boundary) = mixed_boundary {
        let closing = format!("--{boundary}--");
        if let Some(at) = find_line(raw, closing.as_bytes()) {
            for a in attachments {
                parts.push_str(&part_for(&boundary, a));
            }
            let mut out = raw[..at].to_vec();
            out.extend_from_slice(parts.as_bytes());
            out.extend_from_slice(&raw[at..]);
            return out;
        }
    }
    // wrap: the top-level Content-* fields move into the first part
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| (p + 2, p + 4))
        .or_else(|| {
            raw.windows(2)
                .position(|w| w == b"\n\n")
                .map(|p| (p + 1, p + 2))
        })
        .unwrap_or((raw.len(), raw.len()));
    let header = &raw[..split.0];
    let body = &raw[split.1..];
    let content_fields_removed = without_field(
        &without_field(header, b"content-type:"),
        b"content-transfer-encoding:",
    );
    let mut content_fields = Vec::new();
    for name in [&b"content-type:"[..], b"content-transfer-encoding:"] {
        let other = without_field(header, name);
        // the field's lines are what `without_field` removed
        let mut kept = header.to_vec();
        for line in other.split_inclusive(|&b| b == b'\n') {
            if let Some(p) = find_sub(&kept, line) {
                kept.drain(p..p + line.len());
            }
        }
        content_fields.extend_from_slice(&kept);
    }
    let boundary = format!("=_mixed_{}", uuid::Uuid::new_v4().simple());
    for a in attachments {
        parts.push_str(&part_for(&boundary, a));
    }
    let mut out = content_fields_removed;
    out.extend_from_slice(
        format!("Content-Type: multipart/mixed; boundary=\"{boundary}\"\r\n\r\n--{boundary}\r\n")
            .as_bytes(),
    );
    out.extend_from_slice(&content_fields);
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(parts.as_bytes());
    out.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    out
}

fn find_line(raw: &[u8], line: &[u8]) -> Option<usize> {
    (0..raw.len()).find(|&p| (p == 0 || raw[p - 1] == b'\n') && raw[p..].starts_with(line))
}

fn find_sub(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() {
        return None;
    }
    hay.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attached(name: &str, n: usize) -> Attached {
        Attached {
            name: name.into(),
            content_type: "application/octet-stream".into(),
            content_id: None,
            inline: false,
            bytes: vec![7u8; n],
        }
    }

    #[test]
    fn attachments_join_a_mixed_message_or_wrap_a_single_part_one() {
        let mixed = b"From: a@b.c\r\nTo: c@d.e\r\nContent-Type: multipart/mixed; boundary=\"b\"\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nhi\r\n--b--\r\n";
        let out = with_attachments(mixed, &[attached("x.bin", 10)]);
        let m = mail_parser::MessageParser::default().parse(&out).unwrap();
        assert_eq!(m.attachment_count(), 1);
        assert_eq!(m.attachment(0).unwrap().contents(), &[7u8; 10]);
        assert_eq!(m.body_text(0).as_deref(), Some("hi"));
        let single = b"From: a@b.c\r\nTo: c@d.e\r\nSubject: s\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\nhello\r\n";
        let out = with_attachments(single, &[attached("y.bin", 5)]);
        let m = mail_parser::MessageParser::default().parse(&out).unwrap();
        assert_eq!(m.subject(), Some("s"));
        assert_eq!(m.attachment_count(), 1);
        assert_eq!(m.body_text(0).as_deref(), Some("hello\r\n"));
    }

    #[test]
    fn content_ranges_parse_only_in_the_documented_form() {
        let mut h = HeaderMap::new();
        h.insert(
            "content-range",
            HeaderValue::from_static("bytes 0-2097151/3483322"),
        );
        assert_eq!(content_range(&h), Some((0, 2097151, 3483322)));
        h.insert("content-range", HeaderValue::from_static("0-10/11"));
        assert_eq!(content_range(&h), None);
    }
}
