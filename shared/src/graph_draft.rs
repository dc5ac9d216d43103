//! Graph's draft route, for a message too large for one request (Graph's request limit is about
//! 4 MB, the base64 MIME or JSON body included):
//!
//! 1. `POST {mailbox}/messages` creates the draft, from MIME (`Content-Type: text/plain`, the
//!    message without its large attachments, base64) or from the JSON message resource → 201
//!    with the draft's `id` and `internetMessageId`. When the draft's `internetMessageId` is not
//!    the one the message carries, `PATCH {mailbox}/messages/{id}` sets it (writable while the
//!    message is a draft).
//! 2. Each attachment: under [`UPLOAD_SESSION_MIN_BYTES`] one `POST …/attachments` (a
//!    `fileAttachment` with `contentBytes`); from there `POST
//!    …/attachments/createUploadSession` (`AttachmentItem`: name, size, type) → 201 with a
//!    pre-authenticated `uploadUrl`, then `PUT` the bytes in order to that URL, **without** an
//!    `Authorization` header, in chunks of [`UPLOAD_CHUNK_BYTES`] with `Content-Range: bytes
//!    {start}-{end}/{total}` → 200 with `nextExpectedRanges` until the last chunk → 201.
//! 3. `POST {mailbox}/messages/{id}/send` → 202: from here on the mail may be out.
//!
//! Each step Graph refuses for now (429, 503, a connection that never opened; for steps that do
//! no harm twice also other 5xx and lost answers) is retried on the same draft through
//! [`crate::retry`] — Graph's `Retry-After` in full, within the caller's deadline. An upload
//! session that expired (404 on a chunk) is replaced by a new one for that attachment; a chunk
//! the session already has (416) moves on to the range it names. After a lost answer to `send`
//! (a 5xx, a dropped connection) the draft is looked at: gone from Drafts, it was
//! sent (not sent again); still a draft, it is sent again — the mail never goes out twice.
//!
//! A failure where nothing was sent deletes the draft (best effort) and reports
//! [`DraftFailure::reached_send`] = false: a retry starts over. Only when the answer to `send` was
//! lost and the draft could not be looked at is `reached_send` true. The route needs
//! `Mail.ReadWrite` on top of `Mail.Send` (without it Graph answers 403 `ErrorAccessDenied` at
//! step 1). Sources: Microsoft Graph "Attach large files to Outlook messages or events",
//! `attachment: createUploadSession`, `user: Create message` (MIME format).

use std::time::Duration;

use base64::Engine as _;
use secrecy::ExposeSecret as _;
use serde::Deserialize;

use tokio::time::Instant;

use crate::graph::{GraphClient, GraphError, GraphMessage, SendAs, SendReceipt, error_from_answer};
use crate::retry::Verdict;
use crate::token::AccessToken;

/// Attachments from this size go through an upload session; Graph refuses a session for a
/// smaller file (`ErrorAttachmentSizeShouldNotBeLessThanMinimumSize`, "under 3 MB").
pub const UPLOAD_SESSION_MIN_BYTES: usize = 3_000_000;
/// Bytes per upload `PUT`: 10 × 320 KiB. Graph asks for ranges "up to 4 MB each time"; a
/// multiple of 320 KiB also satisfies the OneDrive-style session rule should Outlook adopt it.
pub const UPLOAD_CHUNK_BYTES: usize = 10 * 320 * 1024;
// Chunks are a multiple of 320 KiB and under 4 MB; an attachment just under the upload-session
// minimum still fits one `POST …/attachments` as base64.
const _: () = assert!(
    UPLOAD_CHUNK_BYTES.is_multiple_of(320 * 1024)
        && UPLOAD_CHUNK_BYTES < 4_000_000
        && UPLOAD_SESSION_MIN_BYTES.div_ceil(3) * 4 <= 4_000_000
);

/// Graph's largest attachment (upload sessions take files "between 3 MB and 150 MB").
pub use crate::notification::GRAPH_MAX_ATTACHMENT_BYTES as MAX_ATTACHMENT_BYTES;

/// What the draft is created from.
#[derive(Clone, Debug)]
pub enum DraftContent {
    /// A raw RFC 5322 message (without the attachments listed separately).
    Mime(Vec<u8>),
    /// The JSON message resource (without the attachments listed separately).
    Json(Box<GraphMessage>),
}

/// One attachment added to the draft after it is created.
#[derive(Clone, Debug)]
pub struct DraftAttachment {
    /// File name.
    pub name: String,
    /// MIME type.
    pub content_type: String,
    /// Content-ID (without angle brackets), for inline parts.
    pub content_id: Option<String>,
    /// Shown inline.
    pub inline: bool,
    /// The file's bytes.
    pub bytes: Vec<u8>,
}

/// A message sent through a draft.
#[derive(Clone, Debug)]
pub struct DraftMail {
    /// The mailbox whose Drafts folder holds it (`/me` or `/users/{id}`).
    pub send_as: SendAs,
    /// The message without [`DraftMail::attachments`].
    pub content: DraftContent,
    /// Attachments added one by one.
    pub attachments: Vec<DraftAttachment>,
    /// The Message-ID the sent mail must carry (with angle brackets), when known.
    pub internet_message_id: Option<String>,
}

impl DraftMail {
    /// Bytes of the draft request plus every attachment: what travels to Graph.
    pub fn upload_bytes(&self) -> usize {
        let content = match &self.content {
            DraftContent::Mime(raw) => raw.len().div_ceil(3) * 4,
            DraftContent::Json(_) => 0,
        };
        content
            + self
                .attachments
                .iter()
                .map(|a| a.bytes.len())
                .sum::<usize>()
    }
}

/// The draft route failed.
#[derive(Debug, thiserror::Error)]
#[error("{step}: {error}")]
pub struct DraftFailure {
    /// Which step (`create draft`, `upload attachment "x"`, `send draft`...).
    pub step: String,
    /// Graph's answer or the transport failure.
    pub error: GraphError,
    /// Whether the mail may have been sent: the answer to `send` was lost and the draft could
    /// not be looked at. False for every failure known to have sent nothing (the draft is then
    /// deleted).
    pub reached_send: bool,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct CreatedMessage {
    id: String,
    #[serde(default)]
    internet_message_id: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct UploadSession {
    upload_url: String,
    #[serde(default)]
    next_expected_ranges: Vec<String>,
}

/// An answer: status, `request-id`, `Retry-After`, body.
struct Answer {
    status: u16,
    request_id: Option<String>,
    retry_after: Option<Duration>,
    body: Vec<u8>,
}

impl Answer {
    fn error(self) -> GraphError {
        error_from_answer(self.status, self.request_id, self.retry_after, &self.body)
    }
    fn json<T: serde::de::DeserializeOwned>(&self, what: &str) -> Result<T, GraphError> {
        serde_json::from_slice(&self.body).map_err(|e| GraphError::Rejected {
            status: self.status,
            code: "UnexpectedAnswer".into(),
            message: format!("{what}: the answer is not the documented JSON ({e})"),
            request_id: self.request_id.clone(),
        })
    }
}

async fn call(
    request: reqwest::RequestBuilder,
    token: Option<&AccessToken>,
    timeout: Duration,
) -> Result<Answer, GraphError> {
    if timeout.is_zero() {
        return Err(GraphError::Transport {
            detail: "the deadline was reached before the request".into(),
            timed_out: true,
            after_request: false,
        });
    }
    let request = match token {
        Some(token) => request
            .bearer_auth(token.secret.expose_secret())
            .header("client-request-id", uuid::Uuid::new_v4().to_string()),
        None => request,
    };
    let response = request
        .timeout(timeout)
        .send()
        .await
        .map_err(|e| GraphError::transport(&e))?;
    let status = response.status().as_u16();
    let request_id = crate::graph::request_id(response.headers());
    let retry_after = crate::retry::retry_after(response.headers());
    // Graph answered: whatever was asked may have happened (`after_request`).
    let body = crate::http::read_body(response, crate::http::MAX_ANSWER_BYTES)
        .await
        .map_err(|e| GraphError::Transport {
            timed_out: false,
            after_request: true,
            detail: format!("HTTP {status}: {e}"),
        })?;
    Ok(Answer {
        status,
        request_id,
        retry_after,
        body,
    })
}

/// Whether a step may be sent again after a failure that may have followed its effect.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Repeat {
    /// Doing it twice does no harm (set a property, open another upload session, a chunk the
    /// session confirms by its ranges, a read): retried after any 429, 5xx or transport failure.
    Harmless,
    /// Doing it twice leaves a trace (a second draft, an attachment twice): retried only when
    /// Graph said it did nothing (429, 503) or the connection never opened.
    Once,
}

/// What Graph said about a failed step: retry (after its `Retry-After`), or not.
fn verdict(error: &GraphError, repeat: Repeat) -> Verdict {
    let retry = Verdict::Retry {
        after: error.retry_after(),
    };
    match error {
        GraphError::Throttled { .. } => retry,
        GraphError::Unavailable { status: 503, .. } => retry,
        GraphError::Unavailable { .. } if repeat == Repeat::Harmless => retry,
        GraphError::Transport {
            after_request: false,
            ..
        } => retry,
        GraphError::Transport { .. } if repeat == Repeat::Harmless => retry,
        _ => Verdict::Stop,
    }
}

fn messages_url(client: &GraphClient, send_as: &SendAs, rest: &[&str]) -> url::Url {
    let mut url = client.base_url.clone();
    {
        let mut segments = url.path_segments_mut().expect("checked in with_http");
        segments.pop_if_empty();
        match send_as {
            SendAs::Me => {
                segments.push("me");
            }
            SendAs::User(id) => {
                segments.push("users").push(id);
            }
        }
        segments.push("messages");
        for s in rest {
            segments.push(s);
        }
    }
    url
}

/// One run of the draft route: the client, the token, the mail, the deadline.
struct Route<'a> {
    client: &'a GraphClient,
    token: &'a AccessToken,
    mail: &'a DraftMail,
    deadline: Instant,
}

impl Route<'_> {
    fn url(&self, rest: &[&str]) -> url::Url {
        messages_url(self.client, &self.mail.send_as, rest)
    }

    /// One step: the request `build` makes, retried per [`verdict`] within the policy and the
    /// deadline, until Graph answers one of `done` (handed back) or refuses for good.
    async fn step(
        &self,
        repeat: Repeat,
        done: &[u16],
        authorized: bool,
        mut build: impl FnMut() -> reqwest::RequestBuilder,
    ) -> Result<Answer, GraphError> {
        let policy = &self.client.retry;
        let result = crate::retry::retry(
            policy,
            self.deadline,
            || {
                let request = build();
                let timeout = self
                    .deadline
                    .saturating_duration_since(Instant::now())
                    .min(policy.attempt_timeout);
                async move {
                    let answer = call(request, authorized.then_some(self.token), timeout).await?;
                    if done.contains(&answer.status) {
                        Ok(answer)
                    } else {
                        Err(answer.error())
                    }
                }
            },
            |e| verdict(e, repeat),
        )
        .await;
        result.map(|(answer, _)| answer).map_err(|f| f.error)
    }

    /// Is the draft still one? After a lost answer to `send`: a draft that is gone was sent
    /// (Exchange moves it to Sent Items, under another id).
    async fn draft_state(&self, id: &str) -> Result<DraftState, GraphError> {
        let answer = self
            .step(Repeat::Harmless, &[200, 404], true, || {
                self.client
                    .http
                    .get(self.url(&[id]))
                    .query(&[("$select", "isDraft")])
            })
            .await?;
        if answer.status == 404 {
            return Ok(DraftState::Sent);
        }
        let draft: serde_json::Value = answer.json("get draft")?;
        Ok(match draft.get("isDraft").and_then(|d| d.as_bool()) {
            Some(false) => DraftState::Sent,
            _ => DraftState::Draft,
        })
    }
}

enum DraftState {
    /// Still in Drafts: not sent.
    Draft,
    /// Sent (gone from Drafts, or no longer a draft).
    Sent,
}

/// The draft route (see the module documentation).
pub async fn send_draft(
    client: &GraphClient,
    token: &AccessToken,
    mail: &DraftMail,
    deadline: Instant,
) -> Result<SendReceipt, DraftFailure> {
    let route = Route {
        client,
        token,
        mail,
        deadline,
    };
    let failed = |step: &str, error: GraphError| DraftFailure {
        step: step.to_owned(),
        error,
        reached_send: false,
    };
    // 1. the draft
    let answer = route
        .step(Repeat::Once, &[201], true, || {
            let create = client.http.post(route.url(&[]));
            match &mail.content {
                DraftContent::Mime(raw) => create
                    .header(reqwest::header::CONTENT_TYPE, "text/plain")
                    .body(base64::engine::general_purpose::STANDARD.encode(raw)),
                DraftContent::Json(message) => create.json(message),
            }
        })
        .await
        .map_err(|e| failed("create draft", e))?;
    let draft: CreatedMessage = answer
        .json("create draft")
        .map_err(|e| failed("create draft", e))?;
    let result = fill_and_send(&route, &draft).await;
    if let Err(f) = &result
        && !f.reached_send
    {
        // nothing was sent: leave no half-built draft behind
        let delete = client.http.delete(route.url(&[&draft.id]));
        match call(delete, Some(token), Duration::from_secs(10)).await {
            Ok(a) if a.status == 204 || a.status == 404 => {}
            Ok(a) => {
                tracing::warn!(
                    status = a.status,
                    "could not delete the unsent draft; it stays in the mailbox's Drafts folder"
                )
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not delete the unsent draft; it stays in the mailbox's Drafts folder")
            }
        }
    }
    result
}

async fn fill_and_send(
    route: &Route<'_>,
    draft: &CreatedMessage,
) -> Result<SendReceipt, DraftFailure> {
    let failed = |step: String, error: GraphError| DraftFailure {
        step,
        error,
        reached_send: false,
    };
    let client = route.client;
    if let Some(wanted) = &route.mail.internet_message_id
        && draft.internet_message_id.as_deref() != Some(wanted.as_str())
    {
        route
            .step(Repeat::Harmless, &[200], true, || {
                client
                    .http
                    .patch(route.url(&[&draft.id]))
                    .json(&serde_json::json!({ "internetMessageId": wanted }))
            })
            .await
            .map_err(|e| failed("set internetMessageId".into(), e))?;
    }
    for attachment in &route.mail.attachments {
        let step = format!(
            "attach {:?} ({} bytes)",
            attachment.name,
            attachment.bytes.len()
        );
        attach(route, draft, attachment)
            .await
            .map_err(|e| failed(step, e))?;
    }
    send(route, draft).await
}

/// How one `send` attempt ended, for the retry loop.
enum SendError {
    /// Graph did not send it (429, no connection, or a 5xx or lost answer with the draft still
    /// in Drafts): the same draft may be sent again.
    NotSent(GraphError),
    /// Graph refused it for good: nothing was sent.
    Refused(GraphError),
    /// The answer was lost and whether the draft went out cannot be told.
    Unknown(GraphError),
}

/// Step 3: `POST …/send`, and after a lost answer a look at the draft: gone means sent (the
/// mail is never sent twice), still a draft means not sent (sent again, the same draft).
async fn send(route: &Route<'_>, draft: &CreatedMessage) -> Result<SendReceipt, DraftFailure> {
    let policy = &route.client.retry;
    let result = crate::retry::retry(
        policy,
        route.deadline,
        || async {
            let timeout = route
                .deadline
                .saturating_duration_since(Instant::now())
                .min(policy.attempt_timeout);
            let request = route
                .client
                .http
                .post(route.url(&[&draft.id, "send"]))
                .header(reqwest::header::CONTENT_LENGTH, "0");
            let error = match call(request, Some(route.token), timeout).await {
                Ok(a) if a.status == 202 || a.status == 200 => {
                    return Ok(SendReceipt {
                        request_id: a.request_id,
                        client_request_id: String::new(),
                    });
                }
                Ok(a) => a.error(),
                Err(e) => e,
            };
            // a 5xx may follow an accepted mail (Graph has answered 504 for mail it
            // delivered), and so may a dropped connection: look before sending again
            match &error {
                GraphError::Unavailable { .. } => {}
                GraphError::Transport {
                    after_request: true,
                    ..
                } => {}
                _ if verdict(&error, Repeat::Once) != Verdict::Stop => {
                    return Err(SendError::NotSent(error));
                }
                _ => return Err(SendError::Refused(error)),
            }
            // the answer may have followed the send: look at the draft
            match route.draft_state(&draft.id).await {
                Ok(DraftState::Sent) => {
                    tracing::info!(
                        error = %error,
                        "Graph's answer to send was lost, but the draft has left Drafts: it was sent (not sent again)"
                    );
                    Ok(SendReceipt {
                        request_id: error.request_id().map(str::to_owned),
                        client_request_id: String::new(),
                    })
                }
                Ok(DraftState::Draft) => Err(SendError::NotSent(error)),
                Err(look) => {
                    tracing::warn!(error = %look, "after a lost answer to send, the draft could not be looked at");
                    Err(SendError::Unknown(error))
                }
            }
        },
        |e| match e {
            SendError::NotSent(error) => Verdict::Retry {
                after: error.retry_after(),
            },
            _ => Verdict::Stop,
        },
    )
    .await;
    let failure = match result {
        Ok((receipt, _)) => return Ok(receipt),
        Err(failure) => failure,
    };
    let (error, reached_send) = match failure.error {
        SendError::NotSent(e) | SendError::Refused(e) => (e, false),
        SendError::Unknown(e) => (e, true),
    };
    Err(DraftFailure {
        step: "send draft".into(),
        error,
        reached_send,
    })
}

/// The most upload sessions one attachment may take (a session that expired is replaced).
const MAX_UPLOAD_SESSIONS: u32 = 3;

async fn attach(
    route: &Route<'_>,
    draft: &CreatedMessage,
    attachment: &DraftAttachment,
) -> Result<(), GraphError> {
    let client = route.client;
    let size = attachment.bytes.len();
    if size < UPLOAD_SESSION_MIN_BYTES {
        let mut body = serde_json::json!({
            "@odata.type": "#microsoft.graph.fileAttachment",
            "name": attachment.name,
            "contentType": attachment.content_type,
            "contentBytes": base64::engine::general_purpose::STANDARD.encode(&attachment.bytes),
            "isInline": attachment.inline,
        });
        if let Some(cid) = &attachment.content_id {
            body["contentId"] = cid.clone().into();
        }
        route
            .step(Repeat::Once, &[201], true, || {
                client
                    .http
                    .post(route.url(&[&draft.id, "attachments"]))
                    .json(&body)
            })
            .await?;
        return Ok(());
    }
    let mut item = serde_json::json!({
        "attachmentType": "file",
        "name": attachment.name,
        "size": size,
        "contentType": attachment.content_type,
        "isInline": attachment.inline,
    });
    if let Some(cid) = &attachment.content_id {
        item["contentId"] = cid.clone().into();
    }
    let mut sessions = 0;
    'session: loop {
        sessions += 1;
        let answer = route
            .step(Repeat::Harmless, &[201], true, || {
                client
                    .http
                    .post(route.url(&[&draft.id, "attachments", "createUploadSession"]))
                    .json(&serde_json::json!({ "AttachmentItem": item }))
            })
            .await?;
        let session: UploadSession = answer.json("createUploadSession")?;
        let upload_url = checked_upload_url(client, &session.upload_url)?;
        let mut start = next_start(&session.next_expected_ranges).unwrap_or(0);
        loop {
            let end = (start + UPLOAD_CHUNK_BYTES).min(size);
            // no Authorization: the URL carries its own token. 416: the session already has
            // these bytes (an answer was lost) and names the next; 404: the session expired.
            let answer = route
                .step(Repeat::Harmless, &[200, 201, 404, 416], false, || {
                    client
                        .http
                        .put(upload_url.clone())
                        .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
                        .header(
                            reqwest::header::CONTENT_RANGE,
                            format!("bytes {start}-{}/{size}", end - 1),
                        )
                        .body(attachment.bytes[start..end].to_vec())
                })
                .await?;
            match answer.status {
                201 => return Ok(()),
                404 if sessions < MAX_UPLOAD_SESSIONS => {
                    tracing::info!(
                        attachment = %attachment.name,
                        "the upload session expired; uploading the attachment again in a new one"
                    );
                    continue 'session;
                }
                404 => return Err(answer.error()),
                _ => {
                    let ranges = answer
                        .json::<serde_json::Value>("upload")
                        .ok()
                        .and_then(|v| v.get("nextExpectedRanges").cloned())
                        .and_then(|r| serde_json::from_value::<Vec<String>>(r).ok())
                        .unwrap_or_default();
                    let next = match (answer.status, next_start(&ranges)) {
                        (_, Some(next)) => next,
                        (200, None) => end,
                        (_, None) => return Err(answer.error()),
                    };
                    if next == start || next >= size {
                        return Err(GraphError::Rejected {
                            status: answer.status,
                            code: "UnexpectedAnswer".into(),
                            message: format!(
                                "upload session: after bytes {start}-{} the server expects byte {next} of {size}",
                                end - 1
                            ),
                            request_id: answer.request_id,
                        });
                    }
                    start = next;
                }
            }
        }
    }
}

/// The start of the first range in `nextExpectedRanges` (`"2097152"` or `"2097152-3483321"`).
fn next_start(ranges: &[String]) -> Option<usize> {
    ranges
        .first()
        .and_then(|r| r.split('-').next())
        .and_then(|s| s.trim().parse().ok())
}

/// The upload URL must be https (http only on a loopback host, like the Graph URL itself): the
/// attachment's bytes go there without our token, to whatever host Graph names.
fn checked_upload_url(client: &GraphClient, url: &str) -> Result<url::Url, GraphError> {
    let bad = |why: &str| GraphError::Rejected {
        status: 201,
        code: "UnexpectedAnswer".into(),
        message: format!("createUploadSession: uploadUrl {why}"),
        request_id: None,
    };
    let parsed = url::Url::parse(url).map_err(|_| bad("is not a URL"))?;
    let loopback = |u: &url::Url| match u.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(d)) => d == "localhost",
        None => false,
    };
    match parsed.scheme() {
        "https" => Ok(parsed),
        "http" if loopback(&parsed) && loopback(&client.base_url) => Ok(parsed),
        _ => Err(bad("is not https")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_expected_ranges_and_upload_urls_are_read_carefully() {
        assert_eq!(next_start(&["2097152".into()]), Some(2097152));
        assert_eq!(next_start(&["12-99".into()]), Some(12));
        assert_eq!(next_start(&[]), None);
        let graph = GraphClient::new("https://graph.microsoft.com/v1.0").unwrap();
        assert!(checked_upload_url(&graph, "https://outlook.office.com/api/x?authtoken=1").is_ok());
        assert!(checked_upload_url(&graph, "http://127.0.0.1:9/upload").is_err());
        crate::config::allow_local_targets_in_this_process();
        let local = GraphClient::new("http://127.0.0.1:8080/v1.0").unwrap();
        assert!(checked_upload_url(&local, "http://127.0.0.1:9/upload").is_ok());
        assert!(checked_upload_url(&local, "http://example.com/upload").is_err());
    }
}
