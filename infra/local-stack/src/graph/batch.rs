//! `POST /v1.0/$batch`: JSON batching of the mail-reading routes ([`super::mailbox`]), strict
//! like Graph's ("Combine multiple HTTP requests using JSON batching", and Outlook's limits in
//! "Microsoft Graph throttling limits"):
//! - the body is `{"requests": [...]}` with 1 to [`MAX_BATCH_REQUESTS`] requests, each with an
//!   `id` (unique within the batch, compared without case), a `method` and a `url` relative to
//!   the version (`/me/…`, `/users/{id}/…`), optional `headers` (with `Content-Type` whenever
//!   there is a `body`), `body` (JSON) and `dependsOn` (ids of the batch, no cycle); anything
//!   else is 400 `BadRequest` for the whole batch, a body that is not JSON 415;
//! - the batch's `Authorization` goes with every request, and each request is judged on its own
//!   (token, permissions, the mailbox's faults: 429/503 with `Retry-After` are per request) and
//!   answers in `responses` with its `id`, `status`, `headers` and `body` (JSON; a body that is
//!   not, like `$value`'s MIME, base64-encoded), in any order; the batch itself is 200;
//! - Graph hands a mailbox at most 4 requests of a batch at a time, and each counts against the
//!   mailbox's 4 concurrent requests: the batch takes the mailbox's free slots (k) for its run;
//!   of the requests handed over first (up to 4, or 1 when `dependsOn` sequences the batch), all
//!   but k get 429 `ApplicationThrottled` with `Retry-After` (all of the mailbox's requests when
//!   k = 0); the others run through the k slots;
//! - a request whose `dependsOn` names one that did not succeed gets 424 `FailedDependency`;
//! - only the mail-reading routes run inside a batch here (sendMail, drafts and subscriptions:
//!   400, naming the stand-in's limit).
//!
//! Moves of messages of one folder to one destination that run side by side are one store
//! operation (one IMAP `UID MOVE`), and so are `$value` reads of one folder (one `UID FETCH`);
//! each still answers as a request of its own.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use percent_encoding::percent_decode_str;
use serde::Deserialize;

use super::mailbox::{self, Admitted, MoveRequest, Need, RouteRequest, SlotFrom};
use super::{MAX_CONCURRENT_PER_MAILBOX, StandInState, graph_error, throttled};

/// Most requests in one batch.
pub const MAX_BATCH_REQUESTS: usize = 20;

pub(super) fn routes() -> Router<Arc<StandInState>> {
    Router::new().route("/v1.0/$batch", axum::routing::post(batch))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchBody {
    requests: Vec<BatchRequest>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct BatchRequest {
    id: String,
    method: String,
    url: String,
    #[serde(default)]
    headers: HashMap<String, String>,
    #[serde(default)]
    body: Option<serde_json::Value>,
    #[serde(default)]
    depends_on: Vec<String>,
}

/// Moves that run together: of one mailbox's folder at one UIDVALIDITY to one destination.
type MoveGroup = (String, String, u32, String);
/// `$value` reads that run together: of one mailbox's folder at one UIDVALIDITY.
type ReadGroup = (String, String, u32);
/// A stored message: its folder, the folder's UIDVALIDITY and its UID.
type StoredMessage = (String, u32, u32);

/// One request of the batch, read.
struct Item {
    id: String,
    request: RouteRequest,
    /// Positions of the requests it depends on.
    depends_on: Vec<usize>,
}

fn bad_batch(rid: &str, message: &str) -> Response {
    graph_error(StatusCode::BAD_REQUEST, "BadRequest", message, rid)
}

async fn batch(
    State(state): State<Arc<StandInState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let rid = uuid::Uuid::new_v4().to_string();
    let mut response = answer(&state, &headers, &body, &rid).await;
    if let Ok(v) = HeaderValue::from_str(&rid) {
        response.headers_mut().insert("request-id", v);
    }
    response
}

async fn answer(
    state: &Arc<StandInState>,
    headers: &HeaderMap,
    body: &[u8],
    rid: &str,
) -> Response {
    let content_type = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_ascii_lowercase();
    if !content_type.starts_with("application/json") {
        return graph_error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UnsupportedMediaType",
            &format!("Content-Type {content_type:?} is not supported; use application/json."),
            rid,
        );
    }
    let requests = match serde_json::from_slice::<BatchBody>(body) {
        Ok(b) => b.requests,
        Err(e) => return bad_batch(rid, &format!("Invalid batch payload format: {e}")),
    };
    if requests.is_empty() {
        return bad_batch(
            rid,
            "Invalid batch payload format: the batch has no requests.",
        );
    }
    if requests.len() > MAX_BATCH_REQUESTS {
        return bad_batch(
            rid,
            &format!(
                "Invalid batch payload format: {} requests; a batch holds at most {MAX_BATCH_REQUESTS}.",
                requests.len()
            ),
        );
    }
    let mut position = HashMap::new();
    for (i, r) in requests.iter().enumerate() {
        if r.id.trim().is_empty() {
            return bad_batch(rid, "Invalid batch payload format: a request has no id.");
        }
        if position.insert(r.id.to_ascii_lowercase(), i).is_some() {
            return bad_batch(
                rid,
                &format!(
                    "Invalid batch payload format: request id {:?} is used twice.",
                    r.id
                ),
            );
        }
    }
    let mut items = Vec::with_capacity(requests.len());
    let mut answers: Vec<Option<Response>> = Vec::with_capacity(requests.len());
    for r in requests {
        let mut depends_on = Vec::new();
        for d in &r.depends_on {
            match position.get(&d.to_ascii_lowercase()) {
                Some(&p) if !r.id.eq_ignore_ascii_case(d) => depends_on.push(p),
                _ => {
                    return bad_batch(
                        rid,
                        &format!(
                            "Invalid batch payload format: request {:?} depends on {d:?}, which is not another request of the batch.",
                            r.id
                        ),
                    );
                }
            }
        }
        let (item, refused) = read_item(r, depends_on, headers);
        items.push(item);
        answers.push(refused);
    }
    if has_cycle(&items) {
        return bad_batch(
            rid,
            "Invalid batch payload format: the requests' dependsOn form a cycle.",
        );
    }
    let sequenced = items.iter().any(|i| !i.depends_on.is_empty());

    // The mailboxes' slots the batch runs in; the requests Graph could not hand over: 429.
    let mut lanes: HashMap<String, Vec<super::Slot>> = HashMap::new();
    let mut by_mailbox: HashMap<String, Vec<usize>> = HashMap::new();
    for (i, item) in items.iter().enumerate() {
        if answers[i].is_none()
            && let Some(m) = mailbox::mailbox_of(
                state,
                item.request.user_path.as_deref(),
                &item.request.headers,
            )
        {
            by_mailbox.entry(m).or_default().push(i);
        }
    }
    for (mailbox, positions) in &by_mailbox {
        let mut slots = Vec::new();
        while slots.len() < MAX_CONCURRENT_PER_MAILBOX {
            match mailbox::take_slot(state, mailbox) {
                Some(slot) => slots.push(slot),
                None => break,
            }
        }
        let first = positions.len().min(if sequenced {
            1
        } else {
            MAX_CONCURRENT_PER_MAILBOX
        });
        let refused = if slots.is_empty() {
            positions.len()
        } else {
            first.saturating_sub(slots.len())
        };
        for &i in positions.iter().take(refused) {
            let item_rid = uuid::Uuid::new_v4().to_string();
            answers[i] = Some(with_rid(throttled(&item_rid, 1), &item_rid));
        }
        lanes.insert(mailbox.clone(), slots);
    }

    // Run what is ready, round by round (a request after those it depends on).
    let mut statuses: Vec<Option<StatusCode>> = answers
        .iter()
        .map(|a| a.as_ref().map(Response::status))
        .collect();
    loop {
        let ready: Vec<usize> = (0..items.len())
            .filter(|&i| answers[i].is_none())
            .filter(|&i| items[i].depends_on.iter().all(|&d| statuses[d].is_some()))
            .collect();
        if ready.is_empty() {
            break;
        }
        let mut admitted: Vec<(usize, Admitted)> = Vec::new();
        for &i in &ready {
            let item = &items[i];
            if item
                .depends_on
                .iter()
                .any(|&d| !statuses[d].is_some_and(|s| s.is_success()))
            {
                let item_rid = uuid::Uuid::new_v4().to_string();
                let failed = graph_error(
                    StatusCode::FAILED_DEPENDENCY,
                    "FailedDependency",
                    "A request this request depends on did not succeed.",
                    &item_rid,
                );
                answers[i] = Some(with_rid(failed, &item_rid));
                continue;
            }
            let need = if item.request.method == Method::GET {
                Need::Read
            } else {
                Need::Write
            };
            match mailbox::admit_with(
                state,
                item.request.user_path.as_deref(),
                &item.request.headers,
                need,
                SlotFrom::Batch,
            )
            .await
            {
                Ok(a) => admitted.push((i, a)),
                Err(r) => {
                    let item_rid = uuid::Uuid::new_v4().to_string();
                    answers[i] = Some(with_rid(r, &item_rid));
                }
            }
        }
        // Moves of one folder to one destination together, reads of one folder together;
        // everything else one by one.
        let mut moves: HashMap<MoveGroup, Vec<(usize, MoveRequest)>> = HashMap::new();
        let mut reads: HashMap<ReadGroup, Vec<(usize, StoredMessage)>> = HashMap::new();
        let mut single = Vec::new();
        for (i, a) in &admitted {
            let item = &items[*i];
            if let Some(m) = mailbox::move_request(
                &item.request.method,
                &item.request.segments,
                &item.request.headers,
                &item.request.body,
            ) {
                moves
                    .entry((
                        a.mailbox.clone(),
                        m.folder.clone(),
                        m.uid_validity,
                        m.dest.clone(),
                    ))
                    .or_default()
                    .push((*i, m));
            } else if let Some(r) = mailbox::value_request(
                state,
                &a.mailbox,
                &item.request.method,
                &item.request.segments,
            ) {
                reads
                    .entry((a.mailbox.clone(), r.0.clone(), r.1))
                    .or_default()
                    .push((*i, r));
            } else {
                single.push(*i);
            }
        }
        let admitted_at: HashMap<usize, &Admitted> =
            admitted.iter().map(|(i, a)| (*i, a)).collect();
        for group in moves.values() {
            let requests: Vec<(&Admitted, &MoveRequest)> =
                group.iter().map(|(i, m)| (admitted_at[i], m)).collect();
            let responses = mailbox::move_together(&requests).await;
            for ((i, _), response) in group.iter().zip(responses) {
                answers[*i] = Some(response);
            }
        }
        for group in reads.values() {
            let requests: Vec<(&Admitted, &StoredMessage)> =
                group.iter().map(|(i, r)| (admitted_at[i], r)).collect();
            let responses = mailbox::values_together(&requests).await;
            for ((i, _), response) in group.iter().zip(responses) {
                answers[*i] = Some(response);
            }
        }
        for i in single {
            let item = &items[i];
            let response = mailbox::execute(state, admitted_at[&i], item.request.clone()).await;
            answers[i] = Some(response);
        }
        drop(admitted_at);
        drop(admitted);
        for &i in &ready {
            statuses[i] = answers[i].as_ref().map(Response::status);
        }
    }
    drop(lanes);

    let mut responses = Vec::with_capacity(items.len());
    for (item, answer) in items.iter().zip(answers) {
        let answer = answer.expect("every request of a batch without cycles is answered");
        responses.push(response_json(&item.id, answer).await);
    }
    axum::Json(serde_json::json!({ "responses": responses })).into_response()
}

/// A request of the batch as the routes take it, or its answer when it cannot be run.
fn read_item(
    r: BatchRequest,
    depends_on: Vec<usize>,
    batch_headers: &HeaderMap,
) -> (Item, Option<Response>) {
    let mut item = Item {
        id: r.id,
        request: RouteRequest {
            method: Method::GET,
            user_path: None,
            segments: Vec::new(),
            query: HashMap::new(),
            raw_query: String::new(),
            headers: HeaderMap::new(),
            body: Bytes::new(),
        },
        depends_on,
    };
    let item_rid = uuid::Uuid::new_v4().to_string();
    let refuse = |item: Item, message: String| {
        let r = with_rid(bad_batch(&item_rid, &message), &item_rid);
        (item, Some(r))
    };
    item.request.method = match Method::from_bytes(r.method.to_ascii_uppercase().as_bytes()) {
        Ok(m) if [Method::GET, Method::POST, Method::PATCH, Method::DELETE].contains(&m) => m,
        _ => {
            return refuse(
                item,
                format!("Invalid method {:?} in a batch request.", r.method),
            );
        }
    };
    for name in ["authorization", "host"] {
        if let Some(v) = batch_headers.get(name) {
            item.request.headers.insert(name, v.clone());
        }
    }
    for (name, value) in &r.headers {
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) else {
            return refuse(item, format!("Invalid header {name:?} in a batch request."));
        };
        if name != "authorization" {
            item.request.headers.insert(name, value);
        }
    }
    if let Some(body) = &r.body {
        if !item.request.headers.contains_key("content-type") {
            return refuse(
                item,
                "A batch request with a body must have a Content-Type header.".into(),
            );
        }
        item.request.body = Bytes::from(serde_json::to_vec(body).expect("a JSON value serialises"));
    }
    let url = r.url.trim();
    if url.contains("://") {
        return refuse(
            item,
            format!(
                "Invalid request URL {url:?}: a batch request's url is relative to the version (/me/..., /users/{{id}}/...)."
            ),
        );
    }
    let url = url.strip_prefix('/').unwrap_or(url);
    let (path, query) = url.split_once('?').unwrap_or((url, ""));
    let mut segments: Vec<String> = path
        .split('/')
        .map(|segment| percent_decode_str(segment).decode_utf8_lossy().into_owned())
        .collect();
    match segments.first().map(String::as_str) {
        Some("me") => {
            segments.remove(0);
        }
        Some("users") if segments.len() > 1 => {
            item.request.user_path = Some(segments[1].clone());
            segments.drain(..2);
        }
        _ => {
            return refuse(
                item,
                format!(
                    "graph stand-in: {url:?} inside $batch is not modelled (only /me/... and /users/{{id}}/... mail requests)"
                ),
            );
        }
    }
    if !matches!(
        segments.first().map(String::as_str),
        Some("messages" | "mailFolders")
    ) {
        return refuse(
            item,
            format!(
                "graph stand-in: {url:?} inside $batch is not modelled (only the mail-reading routes: messages, mailFolders)"
            ),
        );
    }
    item.request.segments = segments;
    item.request.raw_query = query.to_owned();
    item.request.query = url::form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .collect();
    (item, None)
}

fn has_cycle(items: &[Item]) -> bool {
    // Kahn: what cannot be ordered is on a cycle
    let mut done: HashSet<usize> = HashSet::new();
    loop {
        let next: Vec<usize> = (0..items.len())
            .filter(|i| !done.contains(i))
            .filter(|&i| items[i].depends_on.iter().all(|d| done.contains(d)))
            .collect();
        if next.is_empty() {
            return done.len() < items.len();
        }
        done.extend(next);
    }
}

fn with_rid(mut response: Response, rid: &str) -> Response {
    if !response.headers().contains_key("request-id")
        && let Ok(v) = HeaderValue::from_str(rid)
    {
        response.headers_mut().insert("request-id", v);
    }
    response
}

/// A request's answer as an entry of `responses`.
async fn response_json(id: &str, response: Response) -> serde_json::Value {
    let status = response.status().as_u16();
    let mut headers = serde_json::Map::new();
    for (name, value) in response.headers() {
        if name != "content-length" {
            headers.insert(
                name.to_string(),
                serde_json::Value::from(value.to_str().unwrap_or_default()),
            );
        }
    }
    let json = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .unwrap_or_default();
    let mut entry = serde_json::json!({"id": id, "status": status, "headers": headers});
    if !bytes.is_empty() {
        entry["body"] = if json {
            serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null)
        } else {
            serde_json::Value::from(base64::engine::general_purpose::STANDARD.encode(&bytes))
        };
    }
    entry
}
