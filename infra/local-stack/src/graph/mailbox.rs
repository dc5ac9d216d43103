//! The mail-reading side of the Graph stand-in, backed by a real mail store (Dovecot over IMAP,
//! [`MailStore`]): what a client that reads a mailbox through Graph instead of IMAP
//! calls.
//!
//! | request | answers |
//! |---|---|
//! | `GET …/mailFolders/{folder}/messages/delta` | a round of delta sync: pages (`@odata.nextLink`, `$skiptoken`) then `@odata.deltaLink` (`$deltatoken`) |
//! | `GET …/messages/{id}/$value` | the raw MIME (`text/plain`) |
//! | `POST …/messages/{id}/move` `{"destinationId"}` | 201 with the moved message (a new id) |
//! | `PATCH …/messages/{id}` `{"isRead"}` | 200 with the message |
//! | `DELETE …/messages/{id}` | 204; the message goes to Deleted Items, as Outlook does |
//! | `GET`/`POST …/mailFolders`, `…/mailFolders/{folder}/childFolders` | folders, `$filter=displayName eq '…'`, `$top` paging; create (409 `ErrorFolderExists` when taken) |
//! | `POST /v1.0/$batch` | any of the above, up to 20 in a JSON batch ([`super::batch`]) |
//!
//! `…` is `/v1.0/me` or `/v1.0/users/{id|userPrincipalName}`. Strict like Graph (the `message:
//! delta`, `message: move`, `Get MIME content of a message`, `mailFolder` pages and "Use delta
//! query"):
//! - a live Graph token; reading needs `Mail.Read` or `Mail.ReadWrite`, changing needs
//!   `Mail.ReadWrite`; another user's mailbox needs the `.Shared` permission and Full Access on
//!   it ([`GraphStandIn::grant_full_access`]), else 403 `ErrorAccessDenied`;
//! - delta: only `$select`, `$top`, `$expand`, `$filter=receivedDateTime ge|gt …`,
//!   `$orderby=receivedDateTime desc` and `changeType` (else 400); page size from
//!   `Prefer: odata.maxpagesize` or `$top`, default 10; a page carries `@odata.nextLink` or
//!   `@odata.deltaLink`, never both; later rounds return new messages, messages whose read
//!   state changed, and `{"id", "@removed": {"reason": "deleted"}}` for messages moved out or
//!   deleted. An unknown or expired state token ([`GraphStandIn::expire_delta_tokens`], or the
//!   folder's store recreated) → 410 Gone, `SyncStateNotFound`, with a `Location` header
//!   holding the initial query, as "Synchronization reset" documents. The size
//!   (`PidTagMessageSize`) comes with `$expand=singleValueExtendedProperties($filter=id eq
//!   'Integer 0x0E08')`;
//! - ids are opaque; a malformed one → 400 `ErrorInvalidIdMalformed`, a message gone → 404
//!   `ErrorItemNotFound`; bodies must be `application/json` (else 415) with known properties
//!   only (else 400 `RequestBodyRead`);
//! - the faults of the send side apply per mailbox (429/503 with `Retry-After`, resets, REST
//!   disabled, latency), at most 4 concurrent requests per mailbox (beyond: 429
//!   `ApplicationThrottled`); [`GraphStandIn::remove_before_fetch`] expunges a message just
//!   before its `$value` is read (a message removed between listing and fetch).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use serde::Deserialize;

use super::{GraphStandIn, MAX_CONCURRENT_PER_MAILBOX, StandInState, graph_error, throttled};

/// Messages per delta page when the client asks for no size.
pub const DEFAULT_DELTA_PAGE_SIZE: usize = 10;
/// Folders per page when the client asks for no size.
pub const DEFAULT_FOLDER_PAGE_SIZE: usize = 10;
/// The folder Graph's `DELETE` moves a message to.
pub const DELETED_ITEMS: &str = "Deleted Items";
/// `PidTagMessageSize` as Graph names the extended property.
pub const MESSAGE_SIZE_PROPERTY: &str = "Integer 0x0E08";

const MESSAGE_ID_PREFIX: &str = "AAMkAGIs";
const FOLDER_ID_PREFIX: &str = "AQMkAGIs";

/// One message of a folder, as the store lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredSummary {
    /// IMAP UID in the folder.
    pub uid: u32,
    /// `\Seen` set.
    pub seen: bool,
    /// Size in bytes with CRLF line ends (what `$value` returns).
    pub size: u64,
    /// When the mailbox received it.
    pub received: chrono::DateTime<chrono::Utc>,
}

/// The mail store behind the reading routes (Dovecot's:
/// [`crate::dovecot::graph_store::ImapStore`]). A message is named by its folder, the folder's
/// UIDVALIDITY and its UID; a look-up with a UIDVALIDITY the folder no longer has finds nothing.
#[async_trait::async_trait]
pub trait MailStore: crate::MailDrop {
    /// `user`'s folder names (the store's full names, `.`-separated).
    async fn folder_names(&self, user: &str) -> anyhow::Result<Vec<String>>;
    /// Create `folder` (no error when it exists).
    async fn create_folder(&self, user: &str, folder: &str) -> anyhow::Result<()>;
    /// The folder's UIDVALIDITY (changes when the folder is recreated) and every message of it
    /// in UID order; None when there is no such folder.
    async fn summaries(
        &self,
        user: &str,
        folder: &str,
    ) -> anyhow::Result<Option<(u32, Vec<StoredSummary>)>>;
    /// One message, None when there is no such folder, UIDVALIDITY or UID.
    async fn summary(
        &self,
        user: &str,
        folder: &str,
        uid_validity: u32,
        uid: u32,
    ) -> anyhow::Result<Option<StoredSummary>>;
    /// The raw message (CRLF), None when there is no such folder, UIDVALIDITY or UID
    /// ([`MailStore::messages`] of one UID).
    async fn message(
        &self,
        user: &str,
        folder: &str,
        uid_validity: u32,
        uid: u32,
    ) -> anyhow::Result<Option<Vec<u8>>> {
        let mut read = self.messages(user, folder, uid_validity, &[uid]).await?;
        Ok(read.pop().flatten())
    }
    /// Several raw messages of a folder together: for each of `uids`, in that order, the
    /// message, None when there is no such folder, UIDVALIDITY or UID.
    async fn messages(
        &self,
        user: &str,
        folder: &str,
        uid_validity: u32,
        uids: &[u32],
    ) -> anyhow::Result<Vec<Option<Vec<u8>>>>;
    /// Move messages to `dest` together: for each of `uids`, in that order, `dest`'s
    /// UIDVALIDITY and the message there; None for a UID with no such message (or named a
    /// second time: it moves once), and for all when there is no folder `dest`.
    async fn move_messages(
        &self,
        user: &str,
        folder: &str,
        uid_validity: u32,
        uids: &[u32],
        dest: &str,
    ) -> anyhow::Result<Vec<Option<(u32, StoredSummary)>>>;
    /// Move one message ([`MailStore::move_messages`] of one UID).
    async fn move_message(
        &self,
        user: &str,
        folder: &str,
        uid_validity: u32,
        uid: u32,
        dest: &str,
    ) -> anyhow::Result<Option<(u32, StoredSummary)>> {
        let mut moved = self
            .move_messages(user, folder, uid_validity, &[uid], dest)
            .await?;
        Ok(moved.pop().flatten())
    }
    /// Set or clear `\Seen`.
    async fn set_seen(&self, user: &str, folder: &str, uid: u32, seen: bool) -> anyhow::Result<()>;
    /// Remove one message for good.
    async fn expunge(&self, user: &str, folder: &str, uid: u32) -> anyhow::Result<()>;
}

/// The delta rounds and faults of the reading routes.
#[derive(Default)]
pub(super) struct MailState {
    /// `$deltatoken` → what the client had when the round ended.
    delta_tokens: Mutex<HashMap<String, Snapshot>>,
    /// `$skiptoken` → the rest of a round.
    pages: Mutex<HashMap<String, PendingPages>>,
    /// Per mailbox: `$value` reads still to be preceded by expunging the message.
    remove_before_fetch: Mutex<HashMap<String, u32>>,
    /// Per mailbox: the most requests seen in flight at once.
    max_in_flight: Mutex<HashMap<String, usize>>,
    /// Per mailbox: reading requests answered (any status).
    requests: Mutex<HashMap<String, u64>>,
}

#[derive(Clone, Debug)]
struct Snapshot {
    mailbox: String,
    folder: String,
    uid_validity: u32,
    query: DeltaQuery,
    /// UID → seen, as the client knows the folder.
    known: BTreeMap<u32, bool>,
}

struct PendingPages {
    mailbox: String,
    rest: Vec<serde_json::Value>,
    page_size: usize,
    end: Snapshot,
}

#[derive(Clone, Debug, Default)]
struct DeltaQuery {
    select: Option<Vec<String>>,
    expand_size: bool,
    received_after: Option<(chrono::DateTime<chrono::Utc>, bool)>,
    change_type: Option<String>,
    top: Option<usize>,
    /// The initial query string, for the `Location` of a 410.
    initial: String,
}

impl GraphStandIn {
    /// Every delta token issued for `mailbox`'s folders stops working: the next round with one
    /// answers 410 Gone (`SyncStateNotFound`), as when Exchange's token cache dropped it.
    pub fn expire_delta_tokens(&self, mailbox: &str) {
        let mailbox = mailbox.to_ascii_lowercase();
        self.state
            .mail
            .delta_tokens
            .lock()
            .expect("lock")
            .retain(|_, s| s.mailbox != mailbox);
        self.state
            .mail
            .pages
            .lock()
            .expect("lock")
            .retain(|_, p| p.mailbox != mailbox);
    }

    /// The next `count` `$value` reads in `mailbox` find their message gone: it is expunged
    /// just before (what a person deleting it between the client's listing and fetch does).
    pub fn remove_before_fetch(&self, mailbox: &str, count: u32) {
        self.state
            .mail
            .remove_before_fetch
            .lock()
            .expect("lock")
            .insert(mailbox.to_ascii_lowercase(), count);
    }

    /// The most reading requests for `mailbox` that were in flight at once.
    pub fn max_mail_requests_in_flight(&self, mailbox: &str) -> usize {
        self.state
            .mail
            .max_in_flight
            .lock()
            .expect("lock")
            .get(&mailbox.to_ascii_lowercase())
            .copied()
            .unwrap_or(0)
    }

    /// Reading requests (delta, `$value`, move, PATCH, DELETE, folders) that reached `mailbox`.
    pub fn mail_request_count(&self, mailbox: &str) -> u64 {
        self.state
            .mail
            .requests
            .lock()
            .expect("lock")
            .get(&mailbox.to_ascii_lowercase())
            .copied()
            .unwrap_or(0)
    }
}

/// A store message id (`true`) rather than a draft's.
pub(super) fn is_stored_id(id: &str) -> bool {
    id.starts_with(MESSAGE_ID_PREFIX)
}

fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
}

pub(super) fn message_id(folder: &str, uid_validity: u32, uid: u32) -> String {
    format!(
        "{MESSAGE_ID_PREFIX}{}",
        b64().encode(format!("{folder}\n{uid_validity}\n{uid}"))
    )
}

fn parse_message_id(id: &str) -> Option<(String, u32, u32)> {
    let raw = b64().decode(id.strip_prefix(MESSAGE_ID_PREFIX)?).ok()?;
    let text = String::from_utf8(raw).ok()?;
    let mut parts = text.rsplitn(3, '\n');
    let uid = parts.next()?.parse().ok()?;
    let uid_validity = parts.next()?.parse().ok()?;
    Some((parts.next()?.to_owned(), uid_validity, uid))
}

fn folder_id(folder: &str) -> String {
    format!("{FOLDER_ID_PREFIX}{}", b64().encode(folder))
}

/// The store folder a path's folder segment names: a well-known name or an id. `Ok(None)`: the
/// root (`msgfolderroot`).
pub(super) fn folder_from_segment(segment: &str) -> Result<Option<String>, ()> {
    let well_known = match segment.to_ascii_lowercase().as_str() {
        "msgfolderroot" => return Ok(None),
        "inbox" => Some("INBOX"),
        "drafts" => Some("Drafts"),
        "sentitems" => Some("Sent Items"),
        "deleteditems" => Some(DELETED_ITEMS),
        "junkemail" => Some("Junk Email"),
        "archive" => Some("Archive"),
        _ => None,
    };
    if let Some(name) = well_known {
        return Ok(Some(name.to_owned()));
    }
    let raw = segment.strip_prefix(FOLDER_ID_PREFIX).ok_or(())?;
    if raw.is_empty() {
        return Ok(None);
    }
    let name = String::from_utf8(b64().decode(raw).map_err(|_| ())?).map_err(|_| ())?;
    Ok(Some(name))
}

fn display_name(folder: &str) -> String {
    if folder.eq_ignore_ascii_case("INBOX") {
        return "Inbox".into();
    }
    folder.rsplit('.').next().unwrap_or(folder).to_owned()
}

fn parent_of(folder: &str) -> Option<&str> {
    folder.rsplit_once('.').map(|(parent, _)| parent)
}

fn item_not_found(rid: &str) -> Response {
    graph_error(
        StatusCode::NOT_FOUND,
        "ErrorItemNotFound",
        "The specified object was not found in the store.",
        rid,
    )
}

fn malformed_id(rid: &str) -> Response {
    graph_error(
        StatusCode::BAD_REQUEST,
        "ErrorInvalidIdMalformed",
        "Id is malformed.",
        rid,
    )
}

fn bad_request(rid: &str, message: &str) -> Response {
    graph_error(StatusCode::BAD_REQUEST, "BadRequest", message, rid)
}

fn store_failed(rid: &str, e: &anyhow::Error) -> Response {
    graph_error(
        StatusCode::INTERNAL_SERVER_ERROR,
        "ErrorInternalServerError",
        &format!("graph stand-in: the mail store failed: {e:#}"),
        rid,
    )
}

/// What a route needs of the token.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Need {
    Read,
    Write,
}

/// A request let through: its mailbox, request id, concurrency slot (a request of a `$batch`
/// runs in one of the batch's slots) and store.
pub(super) struct Admitted {
    pub(super) mailbox: String,
    pub(super) rid: String,
    pub(super) store: Arc<dyn MailStore>,
    _slot: Option<super::Slot>,
}

/// Where a request's concurrency slot comes from.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum SlotFrom {
    /// Its own: taken here (429 when the mailbox has none free).
    Own,
    /// The `$batch` it is part of, which holds the mailbox's slots it runs in.
    Batch,
}

/// Token, permissions, faults and the concurrency limit, in Graph's order.
pub(super) async fn admit(
    state: &Arc<StandInState>,
    user_path: Option<&str>,
    headers: &HeaderMap,
    need: Need,
) -> Result<Admitted, Response> {
    admit_with(state, user_path, headers, need, SlotFrom::Own).await
}

/// [`admit`], the slot from `slot`.
pub(super) async fn admit_with(
    state: &Arc<StandInState>,
    user_path: Option<&str>,
    headers: &HeaderMap,
    need: Need,
    slot: SlotFrom,
) -> Result<Admitted, Response> {
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
    let Some(token) = token else {
        return Err(unauthorized("Access token is empty."));
    };
    let Some(issued) = state.identity.lookup_access_token(token) else {
        return Err(unauthorized(
            "Access token validation failure. Invalid or expired token.",
        ));
    };
    if issued.expires_at <= chrono::Utc::now() {
        return Err(unauthorized(
            "Lifetime validation failed, the token is expired.",
        ));
    }
    if issued.audience.trim_end_matches('/') != state.audience {
        return Err(unauthorized(
            "Access token validation failure. Invalid audience.",
        ));
    }
    let granted = |permission: &str| {
        issued.scopes.iter().any(|s| {
            s.rsplit('/')
                .next()
                .is_some_and(|s| s.eq_ignore_ascii_case(permission))
        })
    };
    if issued.app_only {
        // Application permissions: no `/me` (no user); Mail.Read (reading) or Mail.ReadWrite
        // (also moving, flagging, deleting) on the mailbox named in the path. There are no
        // `.Shared` application permissions: an app reads any mailbox it is not scoped out of.
        let Some(id) = user_path else {
            return Err(graph_error(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                "/me request is only valid with delegated authentication flow.",
                &rid,
            ));
        };
        let scoped = state.identity.exchange_app_permissions(token, id);
        let role = |p: &str| {
            issued
                .roles
                .iter()
                .chain(scoped.iter())
                .any(|r| r.eq_ignore_ascii_case(p))
        };
        let permitted = match need {
            Need::Read => role("Mail.Read") || role("Mail.ReadWrite"),
            Need::Write => role("Mail.ReadWrite"),
        };
        if !permitted {
            return Err(graph_error(
                StatusCode::FORBIDDEN,
                "ErrorAccessDenied",
                "Access is denied. Check credentials and try again.",
                &rid,
            ));
        }
        return admitted(state, id.to_ascii_lowercase(), rid, slot).await;
    }
    let upn = issued.upn.to_ascii_lowercase();
    let mailbox = user_path.map_or_else(|| upn.clone(), str::to_ascii_lowercase);
    let own = mailbox == upn;
    let suffix = if own { "" } else { ".Shared" };
    let permitted = match need {
        Need::Read => {
            granted(&format!("Mail.Read{suffix}")) || granted(&format!("Mail.ReadWrite{suffix}"))
        }
        Need::Write => granted(&format!("Mail.ReadWrite{suffix}")),
    };
    let rights = own
        || state
            .full_access
            .lock()
            .expect("lock")
            .contains(&(upn.clone(), mailbox.clone()));
    if !permitted || !rights {
        return Err(graph_error(
            StatusCode::FORBIDDEN,
            "ErrorAccessDenied",
            "Access is denied. Check credentials and try again.",
            &rid,
        ));
    }
    admitted(state, mailbox, rid, slot).await
}

/// The mailbox a request path names: the user in `/users/{id}/…`, else the token's user
/// (`/me`); None when the token is not one of this Graph's.
pub(super) fn mailbox_of(
    state: &StandInState,
    user_path: Option<&str>,
    headers: &HeaderMap,
) -> Option<String> {
    if let Some(id) = user_path {
        return Some(id.to_ascii_lowercase());
    }
    let token = headers
        .get("authorization")?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")?
        .trim();
    let issued = state.identity.lookup_access_token(token)?;
    Some(issued.upn.to_ascii_lowercase())
}

/// One of `mailbox`'s concurrency slots; None when all are taken (429 `ApplicationThrottled`).
pub(super) fn take_slot(state: &Arc<StandInState>, mailbox: &str) -> Option<super::Slot> {
    let mut in_flight = state.in_flight.lock().expect("lock");
    let n = in_flight.entry(mailbox.to_owned()).or_default();
    if *n >= MAX_CONCURRENT_PER_MAILBOX {
        return None;
    }
    *n += 1;
    let now = *n;
    drop(in_flight);
    let mut max = state.mail.max_in_flight.lock().expect("lock");
    let seen = max.entry(mailbox.to_owned()).or_default();
    *seen = (*seen).max(now);
    Some(super::Slot {
        state: state.clone(),
        mailbox: mailbox.to_owned(),
    })
}

/// Faults and the concurrency limit of `mailbox`, once the token is judged.
async fn admitted(
    state: &Arc<StandInState>,
    mailbox: String,
    rid: String,
    slot: SlotFrom,
) -> Result<Admitted, Response> {
    *state
        .mail
        .requests
        .lock()
        .expect("lock")
        .entry(mailbox.clone())
        .or_default() += 1;
    let (latency, fault) = {
        let mut controls = state.controls.lock().expect("lock");
        let c = controls.entry(mailbox.clone()).or_default();
        let fault = if c.rest_disabled {
            Some(super::Fault::RestDisabled)
        } else if c.resets > 0 {
            c.resets -= 1;
            Some(super::Fault::Reset)
        } else if c.fail_503 > 0 {
            c.fail_503 -= 1;
            Some(super::Fault::Unavailable(c.retry_after_503))
        } else if c.throttle_429 > 0 {
            c.throttle_429 -= 1;
            Some(super::Fault::Throttled(c.retry_after_429))
        } else {
            None
        };
        (c.latency, fault)
    };
    match fault {
        Some(super::Fault::RestDisabled) => {
            return Err(graph_error(
                StatusCode::NOT_FOUND,
                "MailboxNotEnabledForRESTAPI",
                "The mailbox is either inactive, soft-deleted, or is hosted on-premise.",
                &rid,
            ));
        }
        Some(super::Fault::Reset) => {
            std::panic::resume_unwind(Box::new("graph stand-in: injected connection reset"));
        }
        Some(super::Fault::Unavailable(retry_after)) => {
            let mut r = graph_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "ServiceUnavailable",
                "Service is temporarily unavailable.",
                &rid,
            );
            if let Some(s) = retry_after {
                r.headers_mut().insert("retry-after", HeaderValue::from(s));
            }
            return Err(r);
        }
        Some(super::Fault::Throttled(retry_after)) => return Err(throttled(&rid, retry_after)),
        _ => {}
    }
    let slot = match slot {
        SlotFrom::Own => Some(take_slot(state, &mailbox).ok_or_else(|| throttled(&rid, 1))?),
        SlotFrom::Batch => None,
    };
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let Some(store) = state.mail_store.clone() else {
        return Err(graph_error(
            StatusCode::NOT_IMPLEMENTED,
            "NotImplemented",
            "graph stand-in: started without a mail store (Dovecot), so mail cannot be read",
            &rid,
        ));
    };
    Ok(Admitted {
        mailbox,
        rid,
        store,
        _slot: slot,
    })
}

fn with_rid(mut response: Response, rid: &str) -> Response {
    response.headers_mut().insert(
        "request-id",
        HeaderValue::from_str(rid).unwrap_or(HeaderValue::from_static("-")),
    );
    response
}

/// The folder routes (the message routes share their paths with the drafts and come through
/// [`message_route`]).
pub(super) fn routes() -> Router<Arc<StandInState>> {
    use axum::routing::get;
    Router::new()
        .route("/v1.0/me/mailFolders", get(folders).post(folders))
        .route("/v1.0/me/mailFolders/{*rest}", get(folders).post(folders))
        .route("/v1.0/users/{id}/mailFolders", get(folders).post(folders))
        .route(
            "/v1.0/users/{id}/mailFolders/{*rest}",
            get(folders).post(folders),
        )
}

type S = State<Arc<StandInState>>;

/// The parameters of the folder routes: the user (None on `/me`) and the path after
/// `mailFolders/`.
#[derive(serde::Deserialize)]
struct FolderPath {
    id: Option<String>,
    rest: Option<String>,
}

async fn folders(
    State(s): S,
    method: Method,
    path: Option<Path<FolderPath>>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let FolderPath { id, rest } = path.map_or(
        FolderPath {
            id: None,
            rest: None,
        },
        |p| p.0,
    );
    let mut segments = vec!["mailFolders".to_owned()];
    if let Some(rest) = rest {
        segments.extend(rest.split('/').map(str::to_owned));
    }
    run(s, method, id, segments, q, headers, body).await
}

/// A request on `…/messages/{mid}[/{action}]` for a stored message (not a draft).
#[allow(clippy::too_many_arguments)]
pub(super) async fn message_route(
    state: Arc<StandInState>,
    method: Method,
    user_path: Option<String>,
    mid: String,
    action: Option<String>,
    raw_query: Option<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut segments = vec!["messages".to_owned(), mid];
    segments.extend(action);
    run(state, method, user_path, segments, raw_query, headers, body).await
}

async fn run(
    state: Arc<StandInState>,
    method: Method,
    user_path: Option<String>,
    segments: Vec<String>,
    raw_query: Option<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let raw_query = raw_query.unwrap_or_default();
    let query: HashMap<String, String> = url::form_urlencoded::parse(raw_query.as_bytes())
        .into_owned()
        .collect();
    let request = RouteRequest {
        method,
        user_path,
        segments,
        query,
        raw_query,
        headers,
        body,
    };
    dispatch(state, request).await
}

/// A request on a reading route, as the routes and each request of a `$batch` hand it over.
#[derive(Clone)]
pub(super) struct RouteRequest {
    pub(super) method: Method,
    /// `{id}` of `/users/{id}/`; None for `/me/`.
    pub(super) user_path: Option<String>,
    /// The path after `/v1.0/me/` or `/v1.0/users/{id}/`.
    pub(super) segments: Vec<String>,
    pub(super) query: HashMap<String, String>,
    pub(super) raw_query: String,
    pub(super) headers: HeaderMap,
    pub(super) body: Bytes,
}

/// Every reading route: admitted (token, permissions, throttling), then run.
pub(super) async fn dispatch(state: Arc<StandInState>, request: RouteRequest) -> Response {
    let need = if request.method == Method::GET {
        Need::Read
    } else {
        Need::Write
    };
    let admitted = match admit(&state, request.user_path.as_deref(), &request.headers, need).await {
        Ok(a) => a,
        Err(r) => return r,
    };
    execute(&state, &admitted, request).await
}

/// A reading route's work once the request was admitted; its answer carries the request id.
pub(super) async fn execute(
    state: &Arc<StandInState>,
    admitted: &Admitted,
    request: RouteRequest,
) -> Response {
    let RouteRequest {
        method,
        user_path,
        segments,
        query,
        raw_query,
        headers,
        body,
    } = request;
    let segs: Vec<&str> = segments.iter().map(String::as_str).collect();
    let rid = admitted.rid.clone();
    let base = format!(
        "http://{}/v1.0/{}",
        headers
            .get("host")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("127.0.0.1"),
        user_path
            .as_deref()
            .map_or_else(|| "me".to_owned(), |u| format!("users/{u}"))
    );
    if matches!(method, Method::POST | Method::PATCH) {
        let content_type = headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_ascii_lowercase();
        if !content_type.starts_with("application/json") {
            return with_rid(
                graph_error(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "UnsupportedMediaType",
                    &format!(
                        "Content-Type {content_type:?} is not supported; use application/json."
                    ),
                    &rid,
                ),
                &rid,
            );
        }
    }
    let response = match (&method, segs.as_slice()) {
        (&Method::GET, ["mailFolders", folder, "messages", "delta"]) => {
            delta(state, admitted, &base, folder, &query, &raw_query, &headers).await
        }
        (&Method::GET, ["messages", id, "$value"])
        | (&Method::GET, ["mailFolders", _, "messages", id, "$value"]) => {
            value(state, admitted, id).await
        }
        (&Method::GET, ["messages", id]) | (&Method::GET, ["mailFolders", _, "messages", id]) => {
            get_message(admitted, id, &query).await
        }
        (&Method::POST, ["messages", id, "move"])
        | (&Method::POST, ["mailFolders", _, "messages", id, "move"]) => {
            move_message(admitted, id, &body).await
        }
        (&Method::PATCH, ["messages", id])
        | (&Method::PATCH, ["mailFolders", _, "messages", id]) => {
            patch_message(admitted, id, &body).await
        }
        (&Method::DELETE, ["messages", id])
        | (&Method::DELETE, ["mailFolders", _, "messages", id]) => {
            delete_message(admitted, id).await
        }
        (&Method::GET, ["mailFolders"]) => list_folders(admitted, &base, None, &query).await,
        (&Method::GET, ["mailFolders", folder, "childFolders"]) => {
            match folder_from_segment(folder) {
                Ok(parent) => list_folders(admitted, &base, Some(parent), &query).await,
                Err(()) => malformed_id(&rid),
            }
        }
        (&Method::GET, ["mailFolders", folder]) => get_folder(admitted, folder).await,
        (&Method::POST, ["mailFolders"]) => create_folder(admitted, None, &body).await,
        (&Method::POST, ["mailFolders", folder, "childFolders"]) => {
            match folder_from_segment(folder) {
                Ok(parent) => create_folder(admitted, parent, &body).await,
                Err(()) => malformed_id(&rid),
            }
        }
        _ => bad_request(
            &rid,
            &format!(
                "Resource not found for the segment '{}'.",
                segs.last().copied().unwrap_or_default()
            ),
        ),
    };
    with_rid(response, &rid)
}

fn message_json(
    folder: &str,
    uid_validity: u32,
    m: &StoredSummary,
    select: Option<&[String]>,
    expand_size: bool,
) -> serde_json::Value {
    let wanted = |p: &str| select.is_none_or(|s| s.iter().any(|x| x.eq_ignore_ascii_case(p)));
    let mut o = serde_json::Map::new();
    o.insert(
        "@odata.type".into(),
        serde_json::Value::from("#microsoft.graph.message"),
    );
    o.insert(
        "id".into(),
        serde_json::Value::from(message_id(folder, uid_validity, m.uid)),
    );
    if wanted("receivedDateTime") {
        o.insert(
            "receivedDateTime".into(),
            serde_json::Value::from(m.received.format("%Y-%m-%dT%H:%M:%SZ").to_string()),
        );
    }
    if wanted("isRead") {
        o.insert("isRead".into(), serde_json::Value::from(m.seen));
    }
    if wanted("parentFolderId") {
        o.insert(
            "parentFolderId".into(),
            serde_json::Value::from(folder_id(folder)),
        );
    }
    if expand_size {
        o.insert(
            "singleValueExtendedProperties".into(),
            serde_json::json!([{"id": "Integer 0xe08", "value": m.size.to_string()}]),
        );
    }
    serde_json::Value::Object(o)
}

fn parse_delta_query(query: &HashMap<String, String>, raw: &str) -> Result<DeltaQuery, String> {
    let mut q = DeltaQuery {
        initial: raw.to_owned(),
        ..DeltaQuery::default()
    };
    for (key, value) in query {
        match key.as_str() {
            "$select" => {
                q.select = Some(value.split(',').map(|s| s.trim().to_owned()).collect());
            }
            "$top" => {
                q.top = Some(
                    value
                        .parse::<usize>()
                        .ok()
                        .filter(|n| *n > 0)
                        .ok_or_else(|| format!("Invalid $top value '{value}'."))?,
                );
            }
            "$expand" => {
                let normalized: String = value.chars().filter(|c| !c.is_whitespace()).collect();
                if normalized.eq_ignore_ascii_case(
                    "singleValueExtendedProperties($filter=ideq'Integer0x0E08')",
                ) {
                    q.expand_size = true;
                } else {
                    return Err(format!(
                        "graph stand-in: $expand {value:?} is not modelled (only singleValueExtendedProperties($filter=id eq '{MESSAGE_SIZE_PROPERTY}'))"
                    ));
                }
            }
            "$filter" => {
                let mut words = value.split_whitespace();
                let (Some(field), Some(op), Some(at), None) =
                    (words.next(), words.next(), words.next(), words.next())
                else {
                    return Err(
                        "The only supported $filter is receivedDateTime ge|gt {value}.".into(),
                    );
                };
                let strict = match (field, op.to_ascii_lowercase().as_str()) {
                    ("receivedDateTime", "ge") => false,
                    ("receivedDateTime", "gt") => true,
                    _ => {
                        return Err(
                            "The only supported $filter is receivedDateTime ge|gt {value}.".into(),
                        );
                    }
                };
                let at = chrono::DateTime::parse_from_rfc3339(at)
                    .map_err(|_| format!("Invalid date {at:?} in $filter."))?
                    .with_timezone(&chrono::Utc);
                q.received_after = Some((at, strict));
            }
            "$orderby" => {
                let normalized: Vec<&str> = value.split_whitespace().collect();
                if normalized != ["receivedDateTime", "desc"] {
                    return Err("The only supported $orderby is receivedDateTime desc.".into());
                }
            }
            "changeType" => match value.as_str() {
                "created" | "updated" | "deleted" => q.change_type = Some(value.clone()),
                other => return Err(format!("Invalid changeType '{other}'.")),
            },
            other => {
                return Err(format!(
                    "Query option '{other}' is not allowed on a delta query for messages."
                ));
            }
        }
    }
    Ok(q)
}

fn page_size(headers: &HeaderMap, query: &DeltaQuery) -> (usize, bool) {
    let preferred = headers
        .get_all("prefer")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .find_map(|p| {
            p.trim()
                .strip_prefix("odata.maxpagesize=")
                .and_then(|n| n.trim().parse::<usize>().ok())
        })
        .filter(|n| *n > 0);
    match (preferred, query.top) {
        (Some(n), _) => (n, true),
        (None, Some(n)) => (n, false),
        (None, None) => (DEFAULT_DELTA_PAGE_SIZE, false),
    }
}

fn sync_state_not_found(rid: &str, base: &str, segment: &str, initial: &str) -> Response {
    let mut r = graph_error(
        StatusCode::GONE,
        "SyncStateNotFound",
        "The sync state generation is not found. The delta token is expired and data must be synchronized again.",
        rid,
    );
    let location = if initial.is_empty() {
        format!("{base}/mailFolders/{segment}/messages/delta?$deltatoken=")
    } else {
        format!("{base}/mailFolders/{segment}/messages/delta?{initial}&$deltatoken=")
    };
    if let Ok(v) = HeaderValue::from_str(&location) {
        r.headers_mut().insert("location", v);
    }
    r
}

async fn delta(
    state: &Arc<StandInState>,
    admitted: &Admitted,
    base: &str,
    segment: &str,
    query: &HashMap<String, String>,
    raw_query: &str,
    headers: &HeaderMap,
) -> Response {
    let rid = &admitted.rid;
    let mailbox = admitted.mailbox.clone();
    let folder = match folder_from_segment(segment) {
        Ok(Some(folder)) => folder,
        Ok(None) => return bad_request(rid, "The root folder has no messages to track."),
        Err(()) => return malformed_id(rid),
    };
    let page_link = |token_kind: &str, token: &str| {
        format!("{base}/mailFolders/{segment}/messages/delta?{token_kind}={token}")
    };
    // A page of a round already under way.
    if let Some(skip) = query.get("$skiptoken") {
        let pending = state.mail.pages.lock().expect("lock").remove(skip);
        let Some(pending) = pending.filter(|p| p.mailbox == mailbox) else {
            return sync_state_not_found(rid, base, segment, "");
        };
        return page(state, pending, &page_link);
    }
    let (previous, query) = match query.get("$deltatoken") {
        Some(token) => {
            let snapshot = state
                .mail
                .delta_tokens
                .lock()
                .expect("lock")
                .get(token)
                .cloned();
            match snapshot.filter(|s| s.mailbox == mailbox && s.folder == folder) {
                Some(s) => {
                    let q = s.query.clone();
                    (Some(s), q)
                }
                None => return sync_state_not_found(rid, base, segment, ""),
            }
        }
        None => match parse_delta_query(query, raw_query) {
            Ok(q) => (None, q),
            Err(message) => return bad_request(rid, &message),
        },
    };
    let listed = admitted.store.summaries(&mailbox, &folder).await;
    let (uid_validity, messages) = match listed {
        Ok(Some(listed)) => listed,
        Ok(None) => return item_not_found(rid),
        Err(e) => return store_failed(rid, &e),
    };
    if let Some(p) = &previous
        && p.uid_validity != uid_validity
    {
        return sync_state_not_found(rid, base, segment, &p.query.initial);
    }
    let tracked: Vec<&StoredSummary> = messages
        .iter()
        .filter(|m| match query.received_after {
            Some((at, true)) => m.received > at,
            Some((at, false)) => m.received >= at,
            None => true,
        })
        .collect();
    let select = query.select.as_deref();
    let mut changes = Vec::new();
    let want =
        |kind: &str| previous.is_none() || query.change_type.as_deref().is_none_or(|c| c == kind);
    for m in &tracked {
        let known = previous.as_ref().and_then(|p| p.known.get(&m.uid));
        let changed = match known {
            None => want("created"),
            Some(seen) => *seen != m.seen && want("updated"),
        };
        if changed {
            changes.push(message_json(
                &folder,
                uid_validity,
                m,
                select,
                query.expand_size,
            ));
        }
    }
    if let Some(p) = &previous
        && want("deleted")
    {
        for uid in p.known.keys() {
            if !tracked.iter().any(|m| m.uid == *uid) {
                changes.push(serde_json::json!({
                    "@odata.type": "#microsoft.graph.message",
                    "id": message_id(&folder, uid_validity, *uid),
                    "@removed": {"reason": "deleted"},
                }));
            }
        }
    }
    let (size, preferred) = page_size(headers, &query);
    let end = Snapshot {
        mailbox: mailbox.clone(),
        folder,
        uid_validity,
        known: tracked.iter().map(|m| (m.uid, m.seen)).collect(),
        query,
    };
    let mut response = page(
        state,
        PendingPages {
            mailbox,
            rest: changes,
            page_size: size,
            end,
        },
        &page_link,
    );
    if preferred {
        response.headers_mut().insert(
            "preference-applied",
            HeaderValue::from_str(&format!("odata.maxpagesize={size}")).expect("ascii"),
        );
    }
    response
}

fn page(
    state: &Arc<StandInState>,
    mut pending: PendingPages,
    link: &dyn Fn(&str, &str) -> String,
) -> Response {
    let take = pending.page_size.min(pending.rest.len());
    let value: Vec<serde_json::Value> = pending.rest.drain(..take).collect();
    let token = uuid::Uuid::new_v4().simple().to_string();
    let body = if pending.rest.is_empty() {
        let link = link("$deltatoken", &token);
        state
            .mail
            .delta_tokens
            .lock()
            .expect("lock")
            .insert(token, pending.end);
        serde_json::json!({"@odata.deltaLink": link, "value": value})
    } else {
        let link = link("$skiptoken", &token);
        state
            .mail
            .pages
            .lock()
            .expect("lock")
            .insert(token, pending);
        serde_json::json!({"@odata.nextLink": link, "value": value})
    };
    (StatusCode::OK, axum::Json(body)).into_response()
}

async fn summary_of(
    admitted: &Admitted,
    folder: &str,
    uid_validity: u32,
    uid: u32,
) -> Result<Option<StoredSummary>, anyhow::Error> {
    admitted
        .store
        .summary(&admitted.mailbox, folder, uid_validity, uid)
        .await
}

async fn value(state: &Arc<StandInState>, admitted: &Admitted, id: &str) -> Response {
    let rid = &admitted.rid;
    let Some((folder, uid_validity, uid)) = parse_message_id(id) else {
        return malformed_id(rid);
    };
    let remove_first = {
        let mut remove = state.mail.remove_before_fetch.lock().expect("lock");
        match remove.get_mut(&admitted.mailbox) {
            Some(n) if *n > 0 => {
                *n -= 1;
                true
            }
            _ => false,
        }
    };
    let (store, user) = (&admitted.store, &admitted.mailbox);
    if remove_first && let Err(e) = store.expunge(user, &folder, uid).await {
        return store_failed(rid, &e);
    }
    match store.message(user, &folder, uid_validity, uid).await {
        Ok(Some(raw)) => {
            let mut r = (StatusCode::OK, raw).into_response();
            r.headers_mut()
                .insert("content-type", HeaderValue::from_static("text/plain"));
            r
        }
        Ok(None) => item_not_found(rid),
        Err(e) => store_failed(rid, &e),
    }
}

async fn get_message(admitted: &Admitted, id: &str, query: &HashMap<String, String>) -> Response {
    let rid = &admitted.rid;
    let Some((folder, uid_validity, uid)) = parse_message_id(id) else {
        return malformed_id(rid);
    };
    let headers_only = query
        .get("$select")
        .is_some_and(|s| s.split(',').any(|p| p.trim() == "internetMessageHeaders"));
    if headers_only {
        let raw = admitted
            .store
            .message(&admitted.mailbox, &folder, uid_validity, uid)
            .await;
        return match raw {
            Ok(Some(raw)) => axum::Json(serde_json::json!({
                "id": id,
                "internetMessageHeaders": header_fields(&raw),
            }))
            .into_response(),
            Ok(None) => item_not_found(rid),
            Err(e) => store_failed(rid, &e),
        };
    }
    match summary_of(admitted, &folder, uid_validity, uid).await {
        Ok(Some(m)) => {
            axum::Json(message_json(&folder, uid_validity, &m, None, false)).into_response()
        }
        Ok(None) => item_not_found(rid),
        Err(e) => store_failed(rid, &e),
    }
}

/// The message's header fields as Graph lists them (`{name, value}`, folded lines joined).
fn header_fields(raw: &[u8]) -> Vec<serde_json::Value> {
    let text = String::from_utf8_lossy(raw);
    let head = text
        .split("\r\n\r\n")
        .next()
        .unwrap_or_default()
        .replace("\r\n ", " ")
        .replace("\r\n\t", " ");
    head.split("\r\n")
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| serde_json::json!({"name": name.trim(), "value": value.trim()}))
        .collect()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct MoveBody {
    destination_id: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct MessagePatch {
    is_read: bool,
}

fn body_error(rid: &str, e: &serde_json::Error) -> Response {
    graph_error(
        StatusCode::BAD_REQUEST,
        "RequestBodyRead",
        &e.to_string(),
        rid,
    )
}

/// Move the message at `id` to store folder `dest`; answers like Graph's move (201, new id).
async fn move_to(admitted: &Admitted, id: &str, dest: String) -> Response {
    let rid = &admitted.rid;
    let Some((folder, uid_validity, uid)) = parse_message_id(id) else {
        return malformed_id(rid);
    };
    let (store, user) = (&admitted.store, &admitted.mailbox);
    match store
        .move_message(user, &folder, uid_validity, uid, &dest)
        .await
    {
        Ok(Some((validity, moved))) => (
            StatusCode::CREATED,
            axum::Json(message_json(&dest, validity, &moved, None, false)),
        )
            .into_response(),
        Ok(None) => item_not_found(rid),
        Err(e) => store_failed(rid, &e),
    }
}

/// A `…/messages/{id}/move` request that a `$batch` may run together with others.
pub(super) struct MoveRequest {
    pub(super) folder: String,
    pub(super) uid_validity: u32,
    pub(super) uid: u32,
    pub(super) dest: String,
}

/// The move a request asks for, when it is a well-formed one (anything else, a move with
/// something wrong included, gets its answer from [`execute`]).
pub(super) fn move_request(
    method: &Method,
    segments: &[String],
    headers: &HeaderMap,
    body: &[u8],
) -> Option<MoveRequest> {
    let segs: Vec<&str> = segments.iter().map(String::as_str).collect();
    let id = match (method, segs.as_slice()) {
        (&Method::POST, ["messages", id, "move"])
        | (&Method::POST, ["mailFolders", _, "messages", id, "move"]) => *id,
        _ => return None,
    };
    let json = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.to_ascii_lowercase().starts_with("application/json"));
    if !json {
        return None;
    }
    let request: MoveBody = serde_json::from_slice(body).ok()?;
    let dest = folder_from_segment(&request.destination_id).ok()??;
    let (folder, uid_validity, uid) = parse_message_id(id)?;
    Some(MoveRequest {
        folder,
        uid_validity,
        uid,
        dest,
    })
}

/// A `…/messages/{id}/$value` request that a `$batch` may run together with others: the
/// message's folder, UIDVALIDITY and UID. None for anything else, and while the mailbox has
/// messages to remove before their fetch ([`GraphStandIn::remove_before_fetch`]: those run one by
/// one).
pub(super) fn value_request(
    state: &StandInState,
    mailbox: &str,
    method: &Method,
    segments: &[String],
) -> Option<(String, u32, u32)> {
    let segs: Vec<&str> = segments.iter().map(String::as_str).collect();
    let id = match (method, segs.as_slice()) {
        (&Method::GET, ["messages", id, "$value"])
        | (&Method::GET, ["mailFolders", _, "messages", id, "$value"]) => *id,
        _ => return None,
    };
    let removing = state
        .mail
        .remove_before_fetch
        .lock()
        .expect("lock")
        .get(mailbox)
        .is_some_and(|n| *n > 0);
    if removing {
        return None;
    }
    parse_message_id(id)
}

/// `$value` reads of messages of one folder of one mailbox, as one store operation: each request
/// answers as a read of its own ([`value`]) would.
pub(super) async fn values_together(
    requests: &[(&Admitted, &(String, u32, u32))],
) -> Vec<Response> {
    let Some((first, (folder, uid_validity, _))) = requests.first() else {
        return Vec::new();
    };
    let uids: Vec<u32> = requests.iter().map(|(_, (_, _, uid))| *uid).collect();
    let read = first
        .store
        .messages(&first.mailbox, folder, *uid_validity, &uids)
        .await;
    let mut read = read.map(Vec::into_iter);
    requests
        .iter()
        .map(|(admitted, _)| {
            let rid = &admitted.rid;
            let response = match &mut read {
                Ok(messages) => match messages.next().flatten() {
                    Some(raw) => {
                        let mut r = (StatusCode::OK, raw).into_response();
                        r.headers_mut()
                            .insert("content-type", HeaderValue::from_static("text/plain"));
                        r
                    }
                    None => item_not_found(rid),
                },
                Err(e) => store_failed(rid, e),
            };
            with_rid(response, rid)
        })
        .collect()
}

/// Moves of messages of one folder of one mailbox to one destination, as one store operation:
/// each request answers as a move of its own ([`move_to`]) would.
pub(super) async fn move_together(requests: &[(&Admitted, &MoveRequest)]) -> Vec<Response> {
    let Some((first, m)) = requests.first() else {
        return Vec::new();
    };
    let uids: Vec<u32> = requests.iter().map(|(_, m)| m.uid).collect();
    let moved = first
        .store
        .move_messages(&first.mailbox, &m.folder, m.uid_validity, &uids, &m.dest)
        .await;
    requests
        .iter()
        .enumerate()
        .map(|(i, (admitted, _))| {
            let rid = &admitted.rid;
            let response = match &moved {
                Ok(moved) => match &moved[i] {
                    Some((validity, message)) => (
                        StatusCode::CREATED,
                        axum::Json(message_json(&m.dest, *validity, message, None, false)),
                    )
                        .into_response(),
                    None => item_not_found(rid),
                },
                Err(e) => store_failed(rid, e),
            };
            with_rid(response, rid)
        })
        .collect()
}

async fn move_message(admitted: &Admitted, id: &str, body: &[u8]) -> Response {
    let rid = &admitted.rid;
    let request: MoveBody = match serde_json::from_slice(body) {
        Ok(b) => b,
        Err(e) => return body_error(rid, &e),
    };
    let dest = match folder_from_segment(&request.destination_id) {
        Ok(Some(dest)) => dest,
        Ok(None) => return bad_request(rid, "A message cannot be moved to the root folder."),
        Err(()) => return malformed_id(rid),
    };
    move_to(admitted, id, dest).await
}

async fn patch_message(admitted: &Admitted, id: &str, body: &[u8]) -> Response {
    let rid = &admitted.rid;
    let patch: MessagePatch = match serde_json::from_slice(body) {
        Ok(p) => p,
        Err(e) => return body_error(rid, &e),
    };
    let Some((folder, uid_validity, uid)) = parse_message_id(id) else {
        return malformed_id(rid);
    };
    match summary_of(admitted, &folder, uid_validity, uid).await {
        Ok(Some(_)) => {}
        Ok(None) => return item_not_found(rid),
        Err(e) => return store_failed(rid, &e),
    }
    if let Err(e) = admitted
        .store
        .set_seen(&admitted.mailbox, &folder, uid, patch.is_read)
        .await
    {
        return store_failed(rid, &e);
    }
    match summary_of(admitted, &folder, uid_validity, uid).await {
        Ok(Some(m)) => {
            axum::Json(message_json(&folder, uid_validity, &m, None, false)).into_response()
        }
        Ok(None) => item_not_found(rid),
        Err(e) => store_failed(rid, &e),
    }
}

async fn delete_message(admitted: &Admitted, id: &str) -> Response {
    if let Err(e) = admitted
        .store
        .create_folder(&admitted.mailbox, DELETED_ITEMS)
        .await
    {
        return store_failed(&admitted.rid, &e);
    }
    let moved = move_to(admitted, id, DELETED_ITEMS.to_owned()).await;
    if moved.status() == StatusCode::CREATED {
        StatusCode::NO_CONTENT.into_response()
    } else {
        moved
    }
}

fn folder_json(folder: &str, all: &[String]) -> serde_json::Value {
    let children = all
        .iter()
        .filter(|f| parent_of(f).is_some_and(|p| p.eq_ignore_ascii_case(folder)))
        .count();
    serde_json::json!({
        "id": folder_id(folder),
        "displayName": display_name(folder),
        "parentFolderId": folder_id(parent_of(folder).unwrap_or("")),
        "childFolderCount": children,
        "isHidden": false,
    })
}

async fn folder_names(admitted: &Admitted) -> anyhow::Result<Vec<String>> {
    admitted.store.folder_names(&admitted.mailbox).await
}

fn parse_display_name_filter(filter: &str) -> Result<String, ()> {
    let rest = filter.trim().strip_prefix("displayName").ok_or(())?;
    let rest = rest.trim_start().strip_prefix("eq").ok_or(())?.trim();
    let inner = rest
        .strip_prefix('\'')
        .and_then(|r| r.strip_suffix('\''))
        .ok_or(())?;
    // OData escapes a quote by doubling it
    if inner.replace("''", "").contains('\'') {
        return Err(());
    }
    Ok(inner.replace("''", "'"))
}

async fn list_folders(
    admitted: &Admitted,
    base: &str,
    parent: Option<Option<String>>,
    query: &HashMap<String, String>,
) -> Response {
    let rid = &admitted.rid;
    let mut wanted_name = None;
    let mut top = DEFAULT_FOLDER_PAGE_SIZE;
    let mut skip = 0usize;
    for (key, value) in query {
        match key.as_str() {
            "$filter" => match parse_display_name_filter(value) {
                Ok(name) => wanted_name = Some(name),
                Err(()) => {
                    return bad_request(
                        rid,
                        &format!(
                            "graph stand-in: $filter {value:?} is not modelled (only displayName eq '...')"
                        ),
                    );
                }
            },
            "$top" => match value.parse::<usize>() {
                Ok(n) if n > 0 => top = n,
                _ => return bad_request(rid, &format!("Invalid $top value '{value}'.")),
            },
            "$skip" => match value.parse::<usize>() {
                Ok(n) => skip = n,
                _ => return bad_request(rid, &format!("Invalid $skip value '{value}'.")),
            },
            "includeHiddenFolders" | "$select" => {}
            other => return bad_request(rid, &format!("Query option '{other}' is not allowed.")),
        }
    }
    let all = match folder_names(admitted).await {
        Ok(all) => all,
        Err(e) => return store_failed(rid, &e),
    };
    let parent = parent.flatten();
    if let Some(p) = &parent
        && !all.iter().any(|f| f.eq_ignore_ascii_case(p))
    {
        return item_not_found(rid);
    }
    let mut matching: Vec<&String> = all
        .iter()
        .filter(|f| match (&parent, parent_of(f)) {
            (None, None) => true,
            (Some(p), Some(q)) => p.eq_ignore_ascii_case(q),
            _ => false,
        })
        .filter(|f| {
            wanted_name
                .as_deref()
                .is_none_or(|n| display_name(f).eq_ignore_ascii_case(n))
        })
        .collect();
    matching.sort();
    let page: Vec<serde_json::Value> = matching
        .iter()
        .skip(skip)
        .take(top)
        .map(|f| folder_json(f, &all))
        .collect();
    let mut body = serde_json::json!({"value": page});
    if skip + top < matching.len() {
        let path = match &parent {
            None => "mailFolders".to_owned(),
            Some(p) => format!("mailFolders/{}/childFolders", folder_id(p)),
        };
        let mut next = format!("{base}/{path}?$top={top}&$skip={}", skip + top);
        if let Some(f) = query.get("$filter") {
            next.push_str(&format!("&$filter={}", url_encode(f)));
        }
        body["@odata.nextLink"] = serde_json::Value::from(next);
    }
    axum::Json(body).into_response()
}

fn url_encode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

async fn get_folder(admitted: &Admitted, segment: &str) -> Response {
    let rid = &admitted.rid;
    let folder = match folder_from_segment(segment) {
        Ok(Some(f)) => f,
        Ok(None) => String::new(),
        Err(()) => return malformed_id(rid),
    };
    let all = match folder_names(admitted).await {
        Ok(all) => all,
        Err(e) => return store_failed(rid, &e),
    };
    if folder.is_empty() {
        return axum::Json(serde_json::json!({
            "id": folder_id(""),
            "displayName": "Top of Information Store",
            "childFolderCount": all.iter().filter(|f| parent_of(f).is_none()).count(),
        }))
        .into_response();
    }
    match all.iter().find(|f| f.eq_ignore_ascii_case(&folder)) {
        Some(f) => axum::Json(folder_json(f, &all)).into_response(),
        None => item_not_found(rid),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct NewFolder {
    display_name: String,
    #[serde(default)]
    #[allow(dead_code)]
    is_hidden: Option<bool>,
}

async fn create_folder(admitted: &Admitted, parent: Option<String>, body: &[u8]) -> Response {
    let rid = &admitted.rid;
    let request: NewFolder = match serde_json::from_slice(body) {
        Ok(b) => b,
        Err(e) => return body_error(rid, &e),
    };
    let name = request.display_name.trim();
    if name.is_empty() || name.contains(['.', '/']) || name.chars().any(char::is_control) {
        return graph_error(
            StatusCode::BAD_REQUEST,
            "ErrorInvalidRequest",
            &format!(
                "graph stand-in: display name {name:?} is empty or holds '.', '/' or control characters (the mail store's separators)"
            ),
            rid,
        );
    }
    let all = match folder_names(admitted).await {
        Ok(all) => all,
        Err(e) => return store_failed(rid, &e),
    };
    if let Some(p) = &parent
        && !all.iter().any(|f| f.eq_ignore_ascii_case(p))
    {
        return item_not_found(rid);
    }
    let full = match &parent {
        Some(p) => format!("{p}.{name}"),
        None => name.to_owned(),
    };
    if all.iter().any(|f| f.eq_ignore_ascii_case(&full)) {
        return graph_error(
            StatusCode::CONFLICT,
            "ErrorFolderExists",
            "A folder with the specified name already exists.",
            rid,
        );
    }
    if let Err(e) = admitted.store.create_folder(&admitted.mailbox, &full).await {
        return store_failed(rid, &e);
    }
    let mut all = all;
    all.push(full.clone());
    (StatusCode::CREATED, axum::Json(folder_json(&full, &all))).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_are_opaque() {
        let id = message_id("Processed.Sub", 7, 42);
        assert!(is_stored_id(&id));
        assert_eq!(parse_message_id(&id), Some(("Processed.Sub".into(), 7, 42)));
        assert_eq!(parse_message_id("AAMkAGIsnotbase64!"), None);
        assert_eq!(
            folder_from_segment(&folder_id("mailbridge-failed")),
            Ok(Some("mailbridge-failed".into()))
        );
        assert_eq!(folder_from_segment("Inbox"), Ok(Some("INBOX".into())));
        assert_eq!(folder_from_segment("msgfolderroot"), Ok(None));
        assert_eq!(folder_from_segment("garbage"), Err(()));
    }

    #[test]
    fn display_name_filter_is_parsed_like_odata() {
        assert_eq!(
            parse_display_name_filter("displayName eq 'Processed'"),
            Ok("Processed".into())
        );
        assert_eq!(
            parse_display_name_filter("displayName eq 'It''s'"),
            Ok("It's".into())
        );
        assert!(parse_display_name_filter("startswith(displayName,'P')").is_err());
    }
}
