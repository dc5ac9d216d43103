//! Reading a mailbox through Microsoft Graph (for tenants that switched IMAP off): delta sync of
//! one folder, the raw MIME of a message, and the after-actions (move, mark read, delete), plus
//! finding or creating a folder by display name.
//!
//! - Delta: `GET /users/{mailbox}/mailFolders/{folder}/messages/delta` with `$select` of what the
//!   poller needs and the size (`PidTagMessageSize`, through `$expand` of the extended property)
//!   on the first request of a round; then the `@odata.nextLink` pages until the
//!   `@odata.deltaLink`, which is kept for the next round. A 410 Gone, or an error code
//!   `SyncStateNotFound`/`SyncStateInvalid`/`resyncRequired`, means the state token is no
//!   longer valid ([`GraphError::is_sync_reset`]): the caller starts a full round.
//! - `GET /users/{mailbox}/messages/{id}/$value`: the message as MIME; 404 → it is gone. Small
//!   mail goes in JSON batches ([`GraphMailbox::mime_many`]), which answer it base64-encoded.
//! - `POST …/messages/{id}/move` `{destinationId}`, `PATCH …/messages/{id}` `{isRead: true}`,
//!   `DELETE …/messages/{id}`; a 404 means the message is no longer there (already moved). Many
//!   moves go as JSON batches (`POST /$batch`, [`MAX_BATCH_REQUESTS`] each,
//!   [`GraphMailbox::move_many`]): one round trip, each move still its own request for Graph's
//!   limits and answered on its own.
//! - Folders: `GET …/mailFolders/{parent}/childFolders?$filter=displayName eq '…'` per path
//!   segment (`/` separates nested folders), created with `POST` when missing (a 409 from a
//!   concurrent creation is looked up again).
//!
//! Errors are [`GraphError`] (the sendMail client's classification). 429, 5xx and transport
//! failures are retried through the shared retry loop ([`crate::retry`]): after `Retry-After`
//! (never less) or a backoff, until the attempts or the deadline run out;
//! every request holds one of the mailbox's 4 slots ([`MAX_CONCURRENT_REQUESTS`], Outlook's
//! concurrency limit per app and mailbox).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use secrecy::ExposeSecret as _;
use tokio::sync::Semaphore;
use tokio::time::Instant;

use crate::graph::{GraphConfigError, GraphError, error_from_answer};
use crate::retry::{RetryPolicy, Verdict};
use crate::token::AccessToken;

/// Outlook's limit of concurrent requests per app and mailbox.
pub const MAX_CONCURRENT_REQUESTS: usize = 4;
/// Largest MIME answer read: above the largest `max_message_bytes` a mailbox may set (150 MiB;
/// the poller asks only for messages whose size is within its limit).
pub const MAX_MIME_ANSWER_BYTES: usize = 151 * 1024 * 1024;
/// Messages per delta page asked for (`Prefer: odata.maxpagesize`).
pub const DELTA_PAGE_SIZE: usize = 100;
/// `PidTagMessageSize` as a Graph single-value extended property.
pub const MESSAGE_SIZE_PROPERTY: &str = "Integer 0x0E08";
/// Requests in one JSON batch (`POST /$batch`): Graph takes at most 20.
pub const MAX_BATCH_REQUESTS: usize = 20;

/// One change of a delta round.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeltaChange {
    /// A message in the folder (new, or changed: read state).
    Message(DeltaMessage),
    /// The message left the folder (moved or deleted).
    Removed {
        /// Its id.
        id: String,
    },
}

/// A message as the delta round lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeltaMessage {
    /// Graph id.
    pub id: String,
    /// When the mailbox received it.
    pub received_at: Option<chrono::DateTime<chrono::Utc>>,
    /// Read.
    pub is_read: bool,
    /// Size in bytes (`PidTagMessageSize`), when given.
    pub size: Option<u64>,
}

/// A finished delta round: its changes (in the order Graph gave them) and the link for the next.
#[derive(Clone, Debug, Default)]
pub struct DeltaRound {
    /// Changes.
    pub changes: Vec<DeltaChange>,
    /// `@odata.deltaLink`.
    pub delta_link: String,
    /// Requests it took.
    pub requests: u32,
}

/// Where a delta round starts.
#[derive(Clone, Debug)]
pub enum DeltaStart<'a> {
    /// A full round of the folder (`folder` is an id or a well-known name like `inbox`).
    Full {
        /// Folder id or well-known name.
        folder: &'a str,
        /// Only messages received at or after this time (`$filter=receivedDateTime ge …`).
        since: Option<chrono::DateTime<chrono::Utc>>,
    },
    /// The `@odata.deltaLink` of the last round.
    Link(&'a str),
}

impl GraphError {
    /// The delta state token is no longer valid: 410 Gone, or Graph's sync-state codes.
    pub fn is_sync_reset(&self) -> bool {
        match self {
            GraphError::Rejected { status, code, .. } => {
                *status == 410
                    || ["syncstatenotfound", "syncstateinvalid", "resyncrequired"]
                        .contains(&code.to_ascii_lowercase().as_str())
            }
            _ => false,
        }
    }

    /// 404 `ErrorItemNotFound` (or any 404 that is not the mailbox): the item is not there.
    pub fn is_item_not_found(&self) -> bool {
        matches!(self, GraphError::Rejected { status: 404, code, .. } if code != "MailboxNotEnabledForRESTAPI")
    }
}

/// The Graph client for one mailbox's mail, for one run: at most
/// [`MAX_CONCURRENT_REQUESTS`] requests at a time.
#[derive(Clone)]
pub struct GraphMailbox {
    http: reqwest::Client,
    base: url::Url,
    mailbox: String,
    token: AccessToken,
    policy: RetryPolicy,
    slots: Arc<Semaphore>,
    requests: Arc<std::sync::atomic::AtomicU64>,
}

impl std::fmt::Debug for GraphMailbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GraphMailbox")
            .field("base", &self.base.as_str())
            .field("mailbox", &self.mailbox)
            .finish()
    }
}

pub(crate) enum Body {
    None,
    Json(serde_json::Value),
}

/// A failed attempt of a request: Graph's error, and whether another attempt may be made (429,
/// 5xx and transport failures may be retried; an answer that could not be read may not).
struct FailedAttempt {
    error: GraphError,
    retryable: bool,
}

impl FailedAttempt {
    fn retryable(error: GraphError) -> Self {
        FailedAttempt {
            error,
            retryable: true,
        }
    }

    fn last(error: GraphError) -> Self {
        FailedAttempt {
            error,
            retryable: false,
        }
    }
}

impl GraphMailbox {
    /// `base_url` like `https://graph.microsoft.com/v1.0` (plain http only for loopback);
    /// `mailbox` the address (`/users/{mailbox}`); `token` a Graph token with `Mail.ReadWrite`
    /// (another user's mailbox: `Mail.ReadWrite.Shared`).
    pub fn new(
        http: reqwest::Client,
        base_url: &str,
        mailbox: &str,
        token: AccessToken,
        policy: RetryPolicy,
    ) -> Result<Self, GraphConfigError> {
        let client = crate::graph::GraphClient::with_http(http, base_url)?;
        Ok(GraphMailbox {
            http: client.http,
            base: client.base_url,
            mailbox: mailbox.to_owned(),
            token,
            policy,
            slots: Arc::new(Semaphore::new(MAX_CONCURRENT_REQUESTS)),
            requests: Arc::default(),
        })
    }

    /// Graph's root (`…/v1.0`).
    pub(crate) fn base_url(&self) -> &url::Url {
        &self.base
    }

    /// The mailbox's address.
    pub fn mailbox_address(&self) -> &str {
        &self.mailbox
    }

    /// Requests sent so far (each attempt counts).
    pub fn requests(&self) -> u64 {
        self.requests.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// `{base}/users/{mailbox}/{segments…}`.
    fn url(&self, segments: &[&str]) -> url::Url {
        let mut url = self.base.clone();
        {
            let mut path = url.path_segments_mut().expect("checked in with_http");
            path.pop_if_empty().push("users").push(&self.mailbox);
            for s in segments {
                path.push(s);
            }
        }
        url
    }

    /// [`Self::call_capped`] for answers other than a message's MIME: at most
    /// [`crate::http::MAX_ANSWER_BYTES`].
    pub(crate) async fn call(
        &self,
        method: reqwest::Method,
        url: url::Url,
        body: Body,
        prefer: Option<&str>,
        deadline: Instant,
    ) -> Result<(u16, bytes::Bytes), GraphError> {
        self.call_capped(
            method,
            url,
            body,
            prefer,
            deadline,
            crate::http::MAX_ANSWER_BYTES,
        )
        .await
    }

    /// Send with retries of 429/5xx/transport failures; the answer's status and body, read up to
    /// `limit` bytes (a longer answer is refused, not retried).
    async fn call_capped(
        &self,
        method: reqwest::Method,
        url: url::Url,
        body: Body,
        prefer: Option<&str>,
        deadline: Instant,
        limit: usize,
    ) -> Result<(u16, bytes::Bytes), GraphError> {
        let _slot = self.slots.acquire().await.expect("never closed");
        self.with_retries(deadline, || {
            self.attempt(&method, &url, &body, prefer, deadline, limit)
        })
        .await
    }

    /// `attempt` until it succeeds, through the shared retry loop: 429, 5xx and transport
    /// failures again after `Retry-After` (never less) or a backoff.
    async fn with_retries<T, F, Fut>(&self, deadline: Instant, attempt: F) -> Result<T, GraphError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, FailedAttempt>>,
    {
        let result =
            crate::retry::retry(&self.policy, deadline, attempt, |failed: &FailedAttempt| {
                let retryable = failed.retryable
                    && matches!(
                        failed.error,
                        GraphError::Throttled { .. }
                            | GraphError::Unavailable { .. }
                            | GraphError::Transport { .. }
                    );
                if retryable {
                    tracing::debug!(
                        mailbox = %self.mailbox,
                        code = failed.error.code(),
                        "Graph request failed in a retryable way"
                    );
                    Verdict::Retry {
                        after: failed.error.retry_after(),
                    }
                } else {
                    Verdict::Stop
                }
            })
            .await;
        result
            .map(|(answer, _attempts)| answer)
            .map_err(|failure| failure.error.error)
    }

    /// One attempt of [`Self::call_capped`].
    async fn attempt(
        &self,
        method: &reqwest::Method,
        url: &url::Url,
        body: &Body,
        prefer: Option<&str>,
        deadline: Instant,
        limit: usize,
    ) -> Result<(u16, bytes::Bytes), FailedAttempt> {
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Err(FailedAttempt::retryable(GraphError::Transport {
                detail: "deadline reached before the request".into(),
                timed_out: true,
                after_request: false,
            }));
        }
        let mut request = self
            .http
            .request(method.clone(), url.clone())
            .bearer_auth(self.token.secret.expose_secret())
            .timeout(remaining.min(self.policy.attempt_timeout));
        if let Some(p) = prefer {
            request = request.header("prefer", p);
        }
        if let Body::Json(v) = body {
            request = request.json(v);
        }
        self.requests
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let response = request
            .send()
            .await
            .map_err(|e| FailedAttempt::retryable(GraphError::transport(&e)))?;
        let status = response.status().as_u16();
        let request_id = crate::graph::request_id(response.headers());
        let retry_after = crate::retry::retry_after(response.headers());
        // An answer that cannot be read whole is not asked for again.
        let bytes = match crate::http::read_body(response, limit).await {
            Ok(body) => bytes::Bytes::from(body),
            Err(e @ crate::http::BodyError::TooLarge { .. }) => {
                return Err(FailedAttempt::last(GraphError::Rejected {
                    status,
                    code: "AnswerTooLarge".into(),
                    message: e.to_string(),
                    request_id,
                }));
            }
            Err(e) => {
                return Err(FailedAttempt::last(GraphError::Transport {
                    detail: e.to_string(),
                    timed_out: false,
                    after_request: true,
                }));
            }
        };
        if (200..300).contains(&status) {
            return Ok((status, bytes));
        }
        Err(FailedAttempt::retryable(error_from_answer(
            status,
            request_id,
            retry_after,
            &bytes,
        )))
    }

    /// One delta round from `start` through every page.
    pub async fn delta(
        &self,
        start: DeltaStart<'_>,
        deadline: Instant,
    ) -> Result<DeltaRound, GraphError> {
        let mut next = match start {
            DeltaStart::Link(link) => url::Url::parse(link).map_err(|e| GraphError::Rejected {
                status: 410,
                code: "SyncStateInvalid".into(),
                message: format!("the stored delta link is not a URL: {e}"),
                request_id: None,
            })?,
            DeltaStart::Full { folder, since } => {
                let mut url = self.url(&["mailFolders", folder, "messages", "delta"]);
                {
                    let mut q = url.query_pairs_mut();
                    q.append_pair("$select", "receivedDateTime,isRead");
                    q.append_pair(
                        "$expand",
                        &format!(
                            "singleValueExtendedProperties($filter=id eq '{MESSAGE_SIZE_PROPERTY}')"
                        ),
                    );
                    if let Some(since) = since {
                        q.append_pair(
                            "$filter",
                            &format!("receivedDateTime ge {}", since.format("%Y-%m-%dT%H:%M:%SZ")),
                        );
                    }
                }
                url
            }
        };
        // The links Graph hands out must stay on Graph: the token goes with them.
        let same_origin = |u: &url::Url| u.origin() == self.base.origin();
        let prefer = format!("odata.maxpagesize={DELTA_PAGE_SIZE}");
        let mut round = DeltaRound::default();
        loop {
            if !same_origin(&next) {
                return Err(GraphError::Rejected {
                    status: 410,
                    code: "SyncStateInvalid".into(),
                    message: format!(
                        "the delta link points at {}, not at Graph ({})",
                        next.origin().ascii_serialization(),
                        self.base.origin().ascii_serialization()
                    ),
                    request_id: None,
                });
            }
            let (_, body) = self
                .call(
                    reqwest::Method::GET,
                    next.clone(),
                    Body::None,
                    Some(&prefer),
                    deadline,
                )
                .await?;
            round.requests += 1;
            let page: DeltaPage = serde_json::from_slice(&body).map_err(|e| bad_answer(&e))?;
            for item in page.value {
                round.changes.push(item.into_change());
            }
            match (page.next_link, page.delta_link) {
                (Some(link), _) => {
                    next = url::Url::parse(&link).map_err(|e| bad_answer(&e))?;
                }
                (None, Some(link)) => {
                    round.delta_link = link;
                    return Ok(round);
                }
                (None, None) => {
                    return Err(GraphError::Rejected {
                        status: 200,
                        code: "NoDeltaLink".into(),
                        message: "a delta page had neither @odata.nextLink nor @odata.deltaLink"
                            .into(),
                        request_id: None,
                    });
                }
            }
        }
    }

    /// The raw MIME of message `id`; None when it is gone (404).
    pub async fn mime(&self, id: &str, deadline: Instant) -> Result<Option<Vec<u8>>, GraphError> {
        let url = self.url(&["messages", id, "$value"]);
        match self
            .call_capped(
                reqwest::Method::GET,
                url,
                Body::None,
                None,
                deadline,
                MAX_MIME_ANSWER_BYTES,
            )
            .await
        {
            // the answer's own buffer, not a copy of it
            Ok((_, body)) => Ok(Some(Vec::from(body))),
            Err(e) if e.is_item_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// `GET …/mailFolders/inbox`: proves the token opens the mailbox.
    pub async fn delta_probe(&self, deadline: Instant) -> Result<(), GraphError> {
        let url = self.url(&["mailFolders", "inbox"]);
        self.call(reqwest::Method::GET, url, Body::None, None, deadline)
            .await
            .map(|_| ())
    }

    /// The header block of message `id` (`internetMessageHeaders`, written back as RFC 5322
    /// fields), for mail too large to read whole; None when it is gone.
    pub async fn header_block(
        &self,
        id: &str,
        deadline: Instant,
    ) -> Result<Option<Vec<u8>>, GraphError> {
        let mut url = self.url(&["messages", id]);
        url.query_pairs_mut()
            .append_pair("$select", "internetMessageHeaders");
        let body = match self
            .call(reqwest::Method::GET, url, Body::None, None, deadline)
            .await
        {
            Ok((_, body)) => body,
            Err(e) if e.is_item_not_found() => return Ok(None),
            Err(e) => return Err(e),
        };
        #[derive(serde::Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Headers {
            #[serde(default)]
            internet_message_headers: Vec<Header>,
        }
        #[derive(serde::Deserialize)]
        struct Header {
            name: String,
            value: String,
        }
        let headers: Headers = serde_json::from_slice(&body).map_err(|e| bad_answer(&e))?;
        let mut block = Vec::new();
        for h in headers.internet_message_headers {
            if h.name.is_empty() || h.name.contains([':', '\r', '\n']) {
                continue;
            }
            block.extend_from_slice(h.name.as_bytes());
            block.extend_from_slice(b": ");
            block.extend_from_slice(h.value.replace(['\r', '\n'], " ").as_bytes());
            block.extend_from_slice(b"\r\n");
        }
        block.extend_from_slice(b"\r\n");
        Ok(Some(block))
    }

    /// Move message `id` to folder `destination` (an id); false when the message was not there.
    pub async fn move_to(
        &self,
        id: &str,
        destination: &str,
        deadline: Instant,
    ) -> Result<bool, GraphError> {
        let url = self.url(&["messages", id, "move"]);
        let body = Body::Json(serde_json::json!({ "destinationId": destination }));
        not_found_is_false(
            self.call(reqwest::Method::POST, url, body, None, deadline)
                .await,
        )
    }

    /// Move messages `ids` to folder `destination` (an id) through JSON batches of up to
    /// [`MAX_BATCH_REQUESTS`] moves ([`Self::batched`]): for each id, in that order, whether it
    /// moved (false: it was no longer there), or Graph's error.
    pub async fn move_many(
        &self,
        ids: &[String],
        destination: &str,
        deadline: Instant,
    ) -> Vec<Result<bool, GraphError>> {
        let calls: Vec<BatchCall> = ids
            .iter()
            .map(|id| BatchCall {
                method: "POST",
                url: self.url(&["messages", id, "move"]),
                body: Some(serde_json::json!({ "destinationId": destination })),
            })
            .collect();
        let answers = self
            .batched(&calls, deadline, crate::http::MAX_ANSWER_BYTES)
            .await;
        answers
            .into_iter()
            .map(|answer| not_found_is_false(answer.map(|_| (200, bytes::Bytes::new()))))
            .collect()
    }

    /// The raw MIME of messages `ids` (each None when it is gone) through JSON batches
    /// ([`Self::batched`]) of up to [`MAX_BATCH_REQUESTS`] and at most `max_batch_bytes` of mail
    /// (`sizes`, as the delta round gave them) each: Graph answers `$value` inside a batch
    /// base64-encoded. For small mail: one round trip for many.
    pub async fn mime_many(
        &self,
        ids: &[(String, u64)],
        max_batch_bytes: u64,
        deadline: Instant,
    ) -> Vec<Result<Option<Vec<u8>>, GraphError>> {
        use base64::Engine as _;
        let mut out = Vec::with_capacity(ids.len());
        let mut start = 0;
        while start < ids.len() {
            // as many as fit the byte budget (at least one), at most a batch
            let mut end = start + 1;
            let mut bytes = ids[start].1;
            while end < ids.len()
                && end - start < MAX_BATCH_REQUESTS
                && bytes + ids[end].1 <= max_batch_bytes
            {
                bytes += ids[end].1;
                end += 1;
            }
            let calls: Vec<BatchCall> = ids[start..end]
                .iter()
                .map(|(id, _)| BatchCall {
                    method: "GET",
                    url: self.url(&["messages", id, "$value"]),
                    body: None,
                })
                .collect();
            // base64 and the JSON around it: a third more than the mail, and room
            let limit = (bytes as usize).saturating_mul(3) / 2 + crate::http::MAX_ANSWER_BYTES;
            for answer in self.batched(&calls, deadline, limit).await {
                out.push(match answer {
                    Ok(Some(serde_json::Value::String(encoded))) => {
                        base64::engine::general_purpose::STANDARD
                            .decode(encoded)
                            .map(Some)
                            .map_err(|e| bad_answer(&format!("a $value in a batch: {e}")))
                    }
                    Ok(_) => Err(bad_answer(
                        &"a $value in a batch came without its base64 body",
                    )),
                    Err(e) if e.is_item_not_found() => Ok(None),
                    Err(e) => Err(e),
                });
            }
            start = end;
        }
        out
    }

    /// Send `calls` as JSON batches (`POST /$batch`) of up to [`MAX_BATCH_REQUESTS`]: for each
    /// call, in order, the body of its 2xx answer (None when empty) or Graph's error. A batch
    /// holds all the mailbox's slots while it runs: Graph hands up to 4 of its requests to the
    /// mailbox at once, each counting against the mailbox's 4 concurrent requests. Calls
    /// answered 429, 503 or another 5xx inside a batch go again in the next batch, after their
    /// `Retry-After` (never less) or a backoff; so does a batch that failed as a whole; until the
    /// policy's attempts or the deadline run out, as a request of their own would. An answer
    /// over `limit` bytes is refused.
    async fn batched(
        &self,
        calls: &[BatchCall],
        deadline: Instant,
        limit: usize,
    ) -> Vec<Result<Option<serde_json::Value>, GraphError>> {
        let mut out = Vec::with_capacity(calls.len());
        for chunk in calls.chunks(MAX_BATCH_REQUESTS) {
            let mut answers = self.one_batch(chunk, deadline, limit).await;
            out.extend((0..chunk.len()).map(|i| {
                answers.remove(&i).unwrap_or_else(|| {
                    Err(bad_answer(&"the batch answered nothing for this request"))
                })
            }));
        }
        out
    }

    /// One batch (at most [`MAX_BATCH_REQUESTS`] calls), with its retries: each call's answer
    /// by its position.
    async fn one_batch(
        &self,
        calls: &[BatchCall],
        deadline: Instant,
        limit: usize,
    ) -> HashMap<usize, Result<Option<serde_json::Value>, GraphError>> {
        use std::sync::Mutex;
        let base_path = self.base.path().trim_end_matches('/').to_owned();
        let requests: Vec<serde_json::Value> = calls
            .iter()
            .enumerate()
            .map(|(i, call)| {
                let relative = call
                    .url
                    .path()
                    .strip_prefix(&base_path)
                    .unwrap_or(call.url.path());
                let mut request = serde_json::json!({
                    "id": i.to_string(),
                    "method": call.method,
                    "url": relative,
                });
                if let Some(body) = &call.body {
                    request["headers"] = serde_json::json!({"Content-Type": "application/json"});
                    request["body"] = body.clone();
                }
                request
            })
            .collect();
        let mut batch_url = self.base.clone();
        batch_url
            .path_segments_mut()
            .expect("checked in with_http")
            .pop_if_empty()
            .push("$batch");
        type Answers = HashMap<usize, Result<Option<serde_json::Value>, GraphError>>;
        // calls still to make, and the last error of each
        let pending: Mutex<Vec<usize>> = Mutex::new((0..calls.len()).collect());
        let done: Mutex<Answers> = Mutex::default();
        let last_errors: Mutex<HashMap<usize, GraphError>> = Mutex::default();
        let attempt = || async {
            let now: Vec<usize> = pending.lock().expect("lock").clone();
            let body = Body::Json(serde_json::json!({
                "requests": now.iter().map(|&i| requests[i].clone()).collect::<Vec<_>>(),
            }));
            let answer = {
                let _slots = self
                    .slots
                    .acquire_many(MAX_CONCURRENT_REQUESTS as u32)
                    .await
                    .expect("never closed");
                self.attempt(
                    &reqwest::Method::POST,
                    &batch_url,
                    &body,
                    None,
                    deadline,
                    limit,
                )
                .await
            };
            let (_, bytes) = answer?;
            let answers: BatchAnswer =
                serde_json::from_slice(&bytes).map_err(|e| FailedAttempt::last(bad_answer(&e)))?;
            drop(bytes);
            let mut again = Vec::new();
            let mut answered: HashMap<usize, BatchItemAnswer> = answers
                .responses
                .into_iter()
                .filter_map(|a| Some((a.id.parse::<usize>().ok()?, a)))
                .collect();
            for i in now {
                let Some(a) = answered.remove(&i) else {
                    last_errors.lock().expect("lock").insert(
                        i,
                        GraphError::Unavailable {
                            status: 200,
                            retry_after: None,
                            code: "NoBatchAnswer".into(),
                            message: "the batch answered nothing for this request".into(),
                            request_id: None,
                        },
                    );
                    again.push(i);
                    continue;
                };
                if (200..300).contains(&a.status) {
                    done.lock().expect("lock").insert(i, Ok(a.body));
                    continue;
                }
                let header = |name: &str| {
                    a.headers
                        .iter()
                        .find(|(k, _)| k.eq_ignore_ascii_case(name))
                        .map(|(_, v)| v.clone())
                };
                let retry_after = header("retry-after")
                    .as_deref()
                    .and_then(crate::retry::parse_retry_after);
                let body = a.body.as_ref().map(ToString::to_string).unwrap_or_default();
                let error =
                    error_from_answer(a.status, header("request-id"), retry_after, body.as_bytes());
                if matches!(
                    error,
                    GraphError::Throttled { .. } | GraphError::Unavailable { .. }
                ) {
                    last_errors.lock().expect("lock").insert(i, error);
                    again.push(i);
                } else {
                    done.lock().expect("lock").insert(i, Err(error));
                }
            }
            // the longest wait any of them was asked for, as the batch's
            let waits = again
                .iter()
                .filter_map(|i| {
                    last_errors
                        .lock()
                        .expect("lock")
                        .get(i)
                        .and_then(GraphError::retry_after)
                })
                .max();
            let retry = again.is_empty().then_some(()).ok_or_else(|| {
                FailedAttempt::retryable(GraphError::Throttled {
                    retry_after: waits,
                    code: "BatchRequestsToRetry".into(),
                    request_id: None,
                })
            });
            *pending.lock().expect("lock") = again;
            retry
        };
        let outcome = self.with_retries(deadline, attempt).await;
        let mut done = done.into_inner().expect("lock");
        let mut last_errors = last_errors.into_inner().expect("lock");
        if let Err(error) = outcome {
            // what was not answered for good keeps its own last error, or the batch's
            let mut error = Some(error);
            for i in pending.into_inner().expect("lock") {
                let e = last_errors
                    .remove(&i)
                    .or_else(|| error.take())
                    .unwrap_or_else(|| bad_answer(&"the batch failed"));
                done.insert(i, Err(e));
            }
        }
        done
    }

    /// Mark message `id` read; false when it was not there.
    pub async fn mark_read(&self, id: &str, deadline: Instant) -> Result<bool, GraphError> {
        let url = self.url(&["messages", id]);
        let body = Body::Json(serde_json::json!({ "isRead": true }));
        not_found_is_false(
            self.call(reqwest::Method::PATCH, url, body, None, deadline)
                .await,
        )
    }

    /// Delete message `id` (Outlook moves it to Deleted Items); false when it was not there.
    pub async fn delete(&self, id: &str, deadline: Instant) -> Result<bool, GraphError> {
        let url = self.url(&["messages", id]);
        not_found_is_false(
            self.call(reqwest::Method::DELETE, url, Body::None, None, deadline)
                .await,
        )
    }

    /// The id of the folder at `path` (display names separated by `/`, from the top of the
    /// mailbox); created when `create` and missing. None: missing and not created.
    pub async fn folder_id(
        &self,
        path: &str,
        create: bool,
        deadline: Instant,
    ) -> Result<Option<String>, GraphError> {
        if path.eq_ignore_ascii_case("INBOX") {
            return Ok(Some("inbox".into()));
        }
        let mut parent = "msgfolderroot".to_owned();
        for name in path.split('/').map(str::trim).filter(|s| !s.is_empty()) {
            let found = match self.child_folder(&parent, name, deadline).await? {
                Some(id) => id,
                None if create => match self.create_child(&parent, name, deadline).await {
                    Ok(id) => id,
                    // Created meanwhile (another run): look it up again.
                    Err(GraphError::Rejected { status: 409, .. }) => self
                        .child_folder(&parent, name, deadline)
                        .await?
                        .ok_or_else(|| GraphError::Rejected {
                            status: 409,
                            code: "ErrorFolderExists".into(),
                            message: format!(
                                "folder {name:?} exists but cannot be found by display name"
                            ),
                            request_id: None,
                        })?,
                    Err(e) => return Err(e),
                },
                None => return Ok(None),
            };
            parent = found;
        }
        Ok(Some(parent))
    }

    async fn child_folder(
        &self,
        parent: &str,
        name: &str,
        deadline: Instant,
    ) -> Result<Option<String>, GraphError> {
        let mut url = self.url(&["mailFolders", parent, "childFolders"]);
        url.query_pairs_mut().append_pair(
            "$filter",
            &format!("displayName eq '{}'", name.replace('\'', "''")),
        );
        let (_, body) = self
            .call(reqwest::Method::GET, url, Body::None, None, deadline)
            .await?;
        let page: FolderPage = serde_json::from_slice(&body).map_err(|e| bad_answer(&e))?;
        Ok(page
            .value
            .into_iter()
            .find(|f| f.display_name.eq_ignore_ascii_case(name))
            .map(|f| f.id))
    }

    async fn create_child(
        &self,
        parent: &str,
        name: &str,
        deadline: Instant,
    ) -> Result<String, GraphError> {
        let url = self.url(&["mailFolders", parent, "childFolders"]);
        let body = Body::Json(serde_json::json!({ "displayName": name }));
        let (_, body) = self
            .call(reqwest::Method::POST, url, body, None, deadline)
            .await?;
        let folder: Folder = serde_json::from_slice(&body).map_err(|e| bad_answer(&e))?;
        Ok(folder.id)
    }
}

fn not_found_is_false(result: Result<(u16, bytes::Bytes), GraphError>) -> Result<bool, GraphError> {
    match result {
        Ok(_) => Ok(true),
        Err(e) if e.is_item_not_found() => Ok(false),
        Err(e) => Err(e),
    }
}

pub(crate) fn bad_answer(e: &dyn std::fmt::Display) -> GraphError {
    GraphError::Unavailable {
        status: 200,
        retry_after: None,
        code: "UnreadableAnswer".into(),
        message: format!("Graph's answer could not be read: {e}"),
        request_id: None,
    }
}

/// One request of a JSON batch.
struct BatchCall {
    method: &'static str,
    /// Its URL as a request of its own would have it (the batch sends it relative).
    url: url::Url,
    body: Option<serde_json::Value>,
}

/// The answer to a `$batch`: each request's own answer.
#[derive(serde::Deserialize)]
struct BatchAnswer {
    #[serde(default)]
    responses: Vec<BatchItemAnswer>,
}

#[derive(serde::Deserialize)]
struct BatchItemAnswer {
    id: String,
    status: u16,
    #[serde(default)]
    headers: HashMap<String, String>,
    body: Option<serde_json::Value>,
}

#[derive(serde::Deserialize)]
struct DeltaPage {
    #[serde(default)]
    value: Vec<DeltaItem>,
    #[serde(rename = "@odata.nextLink")]
    next_link: Option<String>,
    #[serde(rename = "@odata.deltaLink")]
    delta_link: Option<String>,
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct DeltaItem {
    id: String,
    #[serde(rename = "@removed")]
    removed: Option<serde_json::Value>,
    received_date_time: Option<String>,
    is_read: Option<bool>,
    #[serde(default)]
    single_value_extended_properties: Vec<ExtendedProperty>,
}

#[derive(serde::Deserialize)]
struct ExtendedProperty {
    id: String,
    value: Option<String>,
}

impl DeltaItem {
    fn into_change(self) -> DeltaChange {
        if self.removed.is_some() {
            return DeltaChange::Removed { id: self.id };
        }
        let size = self
            .single_value_extended_properties
            .iter()
            .find(|p| {
                // Graph answers the tag in its own spelling (`Integer 0xe08`)
                let normal = |s: &str| {
                    s.to_ascii_lowercase()
                        .replace("0x0e08", "0xe08")
                        .split_whitespace()
                        .collect::<Vec<_>>()
                        .join(" ")
                };
                normal(&p.id) == normal(MESSAGE_SIZE_PROPERTY)
            })
            .and_then(|p| p.value.as_deref()?.trim().parse().ok());
        DeltaChange::Message(DeltaMessage {
            id: self.id,
            received_at: self
                .received_date_time
                .as_deref()
                .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                .map(|t| t.with_timezone(&chrono::Utc)),
            is_read: self.is_read.unwrap_or(false),
            size,
        })
    }
}

#[derive(serde::Deserialize)]
struct FolderPage {
    #[serde(default)]
    value: Vec<Folder>,
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct Folder {
    id: String,
    #[serde(default)]
    display_name: String,
}

/// Retry policy for mailbox reads: like the default, with room for `Retry-After`.
pub fn default_policy() -> RetryPolicy {
    RetryPolicy {
        initial_backoff: Duration::from_millis(200),
        max_backoff: Duration::from_secs(20),
        max_attempts: 6,
        attempt_timeout: Duration::from_secs(60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A loopback server that answers each request with the next of `answers`; returns its
    /// base URL and, at the end, when each request arrived.
    async fn scripted_graph(
        answers: Vec<&'static str>,
    ) -> (String, tokio::task::JoinHandle<Vec<std::time::Instant>>) {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}/v1.0", listener.local_addr().unwrap());
        let server = tokio::spawn(async move {
            let mut arrivals = Vec::new();
            for answer in answers {
                let (mut socket, _) = listener.accept().await.unwrap();
                arrivals.push(std::time::Instant::now());
                let mut buffer = [0u8; 4096];
                let _ = socket.read(&mut buffer).await.unwrap();
                socket.write_all(answer.as_bytes()).await.unwrap();
                socket.shutdown().await.ok();
            }
            arrivals
        });
        (base, server)
    }

    /// A scripted `200 OK` answer with a JSON body.
    fn ok_json(body: &str) -> &'static str {
        Box::leak(
            format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            )
            .into_boxed_str(),
        )
    }

    /// Backoff capped at 50 ms: a wait longer than that is Graph's `Retry-After`.
    fn quick_backoff() -> RetryPolicy {
        RetryPolicy {
            initial_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(50),
            max_attempts: 3,
            attempt_timeout: Duration::from_secs(5),
        }
    }

    fn mailbox_at(base: &str, policy: RetryPolicy) -> GraphMailbox {
        crate::config::allow_local_targets_in_this_process();
        let token = AccessToken::new(
            "token".to_owned().into(),
            chrono::Utc::now() + chrono::Duration::minutes(5),
            crate::token::Audience::GraphMailbox,
        );
        GraphMailbox::new(
            reqwest::Client::new(),
            base,
            "ann@example.com",
            token,
            policy,
        )
        .unwrap()
    }

    /// Graph answers 429 with `Retry-After: 2`, then 200: the second request must not start
    /// before the two seconds are up, even with a backoff cap of 50 ms.
    #[tokio::test]
    async fn graphs_retry_after_is_never_undercut() {
        let (base, server) = scripted_graph(vec![
            "HTTP/1.1 429 Too Many Requests\r\nRetry-After: 2\r\nContent-Type: application/json\r\nContent-Length: 71\r\nConnection: close\r\n\r\n{\"error\":{\"code\":\"ApplicationThrottled\",\"message\":\"Too many requests\"}}",
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}",
        ])
        .await;
        let mailbox = mailbox_at(&base, quick_backoff());
        let (status, _) = mailbox
            .call(
                reqwest::Method::GET,
                mailbox.url(&["messages"]),
                Body::None,
                None,
                Instant::now() + Duration::from_secs(10),
            )
            .await
            .unwrap();
        assert_eq!(status, 200);
        assert_eq!(mailbox.requests(), 2);
        let arrivals = server.await.unwrap();
        let waited = arrivals[1] - arrivals[0];
        assert!(
            waited >= Duration::from_secs(2),
            "the second request came {waited:?} after the first; Graph asked for 2 s"
        );
    }

    /// Moves go out as one `$batch`; a move Graph throttled inside it goes again in the next
    /// batch, alone and not before its `Retry-After`; a 404 inside is "no longer there".
    #[tokio::test]
    async fn moves_in_a_batch_send_again_only_what_was_throttled_after_its_retry_after() {
        let (base, server) = scripted_graph(vec![
            ok_json(
                r#"{"responses":[
                {"id":"2","status":404,"headers":{},"body":{"error":{"code":"ErrorItemNotFound","message":"gone"}}},
                {"id":"0","status":201,"headers":{"Content-Type":"application/json"},"body":{"id":"n0"}},
                {"id":"1","status":429,"headers":{"Retry-After":"2"},"body":{"error":{"code":"ApplicationThrottled","message":"busy"}}}]}"#,
            ),
            ok_json(r#"{"responses":[{"id":"1","status":201,"headers":{},"body":{"id":"n1"}}]}"#),
        ])
        .await;
        let mailbox = mailbox_at(&base, quick_backoff());
        let ids: Vec<String> = ["a", "b", "c"].into_iter().map(String::from).collect();
        let moved = mailbox
            .move_many(&ids, "processed", Instant::now() + Duration::from_secs(20))
            .await;
        let moved: Vec<bool> = moved.into_iter().map(Result::unwrap).collect();
        assert_eq!(moved, [true, true, false]);
        assert_eq!(
            mailbox.requests(),
            2,
            "one batch, then the throttled move alone"
        );
        let arrivals = server.await.unwrap();
        let waited = arrivals[1] - arrivals[0];
        assert!(
            waited >= Duration::from_secs(2),
            "the throttled move went again {waited:?} after the batch; Graph asked for 2 s"
        );
    }

    /// `$value` reads through batches: the base64 body decoded, a 404 is "gone", and a batch
    /// holds no more mail than the byte budget (600 KB + 600 KB do not share a 1 MiB batch).
    #[tokio::test]
    async fn mime_reads_in_batches_decode_base64_and_keep_to_the_byte_budget() {
        let (base, server) = scripted_graph(vec![
            ok_json(r#"{"responses":[{"id":"0","status":200,"headers":{"Content-Type":"text/plain"},"body":"RnJvbTogYQ0KDQpoaQ=="}]}"#),
            ok_json(
                r#"{"responses":[
                {"id":"1","status":404,"headers":{},"body":{"error":{"code":"ErrorItemNotFound","message":"gone"}}},
                {"id":"0","status":200,"headers":{"Content-Type":"text/plain"},"body":"aGk="}]}"#,
            ),
        ])
        .await;
        let mailbox = mailbox_at(&base, default_policy());
        let ids = vec![
            ("a".to_owned(), 600_000),
            ("b".to_owned(), 600_000),
            ("c".to_owned(), 10),
        ];
        let read = mailbox
            .mime_many(&ids, 1024 * 1024, Instant::now() + Duration::from_secs(20))
            .await;
        let read: Vec<Option<Vec<u8>>> = read.into_iter().map(Result::unwrap).collect();
        assert_eq!(
            read,
            [
                Some(b"From: a\r\n\r\nhi".to_vec()),
                Some(b"hi".to_vec()),
                None
            ]
        );
        assert_eq!(mailbox.requests(), 2);
        server.await.unwrap();
    }

    /// A `Retry-After` that would end past the deadline: no second request, Graph's answer back
    /// at once.
    #[tokio::test]
    async fn a_retry_after_past_the_deadline_gives_up_at_once() {
        let (base, _server) = scripted_graph(vec![
            "HTTP/1.1 503 Service Unavailable\r\nRetry-After: 3600\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        ])
        .await;
        let mailbox = mailbox_at(&base, default_policy());
        let started = Instant::now();
        let error = mailbox
            .call(
                reqwest::Method::GET,
                mailbox.url(&["messages"]),
                Body::None,
                None,
                Instant::now() + Duration::from_secs(30),
            )
            .await
            .unwrap_err();
        assert!(matches!(error, GraphError::Unavailable { .. }), "{error:?}");
        assert_eq!(mailbox.requests(), 1);
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn delta_items_become_changes() {
        let page: DeltaPage = serde_json::from_value(serde_json::json!({
            "@odata.deltaLink": "https://graph.microsoft.com/v1.0/x?$deltatoken=1",
            "value": [
                {"id": "a", "receivedDateTime": "2026-12-01T10:00:00Z", "isRead": false,
                 "singleValueExtendedProperties": [{"id": "Integer 0xe08", "value": "1234"}]},
                {"id": "b", "@removed": {"reason": "deleted"}}
            ]
        }))
        .unwrap();
        let changes: Vec<_> = page.value.into_iter().map(DeltaItem::into_change).collect();
        assert_eq!(
            changes[0],
            DeltaChange::Message(DeltaMessage {
                id: "a".into(),
                received_at: Some("2026-12-01T10:00:00Z".parse().unwrap()),
                is_read: false,
                size: Some(1234),
            })
        );
        assert_eq!(changes[1], DeltaChange::Removed { id: "b".into() });
    }

    #[test]
    fn sync_reset_is_410_or_the_sync_state_codes() {
        let rejected = |status, code: &str| GraphError::Rejected {
            status,
            code: code.into(),
            message: String::new(),
            request_id: None,
        };
        assert!(rejected(410, "SyncStateNotFound").is_sync_reset());
        assert!(rejected(400, "syncStateNotFound").is_sync_reset());
        assert!(!rejected(400, "BadRequest").is_sync_reset());
        assert!(rejected(404, "ErrorItemNotFound").is_item_not_found());
        assert!(!rejected(404, "MailboxNotEnabledForRESTAPI").is_item_not_found());
    }
}
