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
//! A failure before step 3 deletes the draft (best effort) and reports
//! [`DraftFailure::reached_send`] = false: nothing was sent, a retry starts over. The route needs
//! `Mail.ReadWrite` on top of `Mail.Send` (without it Graph answers 403 `ErrorAccessDenied` at
//! step 1). Sources: Microsoft Graph "Attach large files to Outlook messages or events",
//! `attachment: createUploadSession`, `user: Create message` (MIME format).

use std::time::Duration;

use base64::Engine as _;
use secrecy::ExposeSecret as _;
use serde::Deserialize;

use crate::graph::{
    GraphClient, GraphError, GraphMessage, SendAs, SendReceipt, error_from_answer,
    parse_retry_after, transport_detail,
};
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
pub const MAX_ATTACHMENT_BYTES: usize = 150 * 1024 * 1024;

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
    /// Whether the `send` request went out: only then may the mail have been sent.
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

/// An answer: status, `request-id`, `Retry-After`, `Location`, body.
struct Answer {
    status: u16,
    request_id: Option<String>,
    retry_after: Option<Duration>,
    location: Option<String>,
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
        .map_err(|e| GraphError::Transport {
            timed_out: e.is_timeout(),
            after_request: e.is_timeout() || (!e.is_connect() && e.is_request()),
            detail: transport_detail(&e),
        })?;
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let status = response.status().as_u16();
    let request_id = header("request-id");
    let retry_after = header("retry-after").as_deref().and_then(parse_retry_after);
    let location = header("location");
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
        location,
        body,
    })
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

/// The draft route (see the module documentation).
pub async fn send_draft(
    client: &GraphClient,
    token: &AccessToken,
    mail: &DraftMail,
    timeout: Duration,
) -> Result<SendReceipt, DraftFailure> {
    let failed = |step: &str, error: GraphError| DraftFailure {
        step: step.to_owned(),
        error,
        reached_send: false,
    };
    // 1. the draft
    let create = client.http.post(messages_url(client, &mail.send_as, &[]));
    let create = match &mail.content {
        DraftContent::Mime(raw) => create
            .header(reqwest::header::CONTENT_TYPE, "text/plain")
            .body(base64::engine::general_purpose::STANDARD.encode(raw)),
        DraftContent::Json(message) => create.json(message),
    };
    let answer = call(create, Some(token), timeout)
        .await
        .map_err(|e| failed("create draft", e))?;
    if answer.status != 201 {
        return Err(failed("create draft", answer.error()));
    }
    let draft: CreatedMessage = answer
        .json("create draft")
        .map_err(|e| failed("create draft", e))?;
    let result = fill_and_send(client, token, mail, &draft, timeout).await;
    if let Err(f) = &result
        && !f.reached_send
    {
        // nothing was sent: leave no half-built draft behind
        let delete = client
            .http
            .delete(messages_url(client, &mail.send_as, &[&draft.id]));
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
    client: &GraphClient,
    token: &AccessToken,
    mail: &DraftMail,
    draft: &CreatedMessage,
    timeout: Duration,
) -> Result<SendReceipt, DraftFailure> {
    let failed = |step: String, error: GraphError| DraftFailure {
        step,
        error,
        reached_send: false,
    };
    if let Some(wanted) = &mail.internet_message_id
        && draft.internet_message_id.as_deref() != Some(wanted.as_str())
    {
        let patch = client
            .http
            .patch(messages_url(client, &mail.send_as, &[&draft.id]))
            .json(&serde_json::json!({ "internetMessageId": wanted }));
        let answer = call(patch, Some(token), timeout)
            .await
            .map_err(|e| failed("set internetMessageId".into(), e))?;
        if answer.status != 200 {
            return Err(failed("set internetMessageId".into(), answer.error()));
        }
    }
    for attachment in &mail.attachments {
        let step = format!(
            "attach {:?} ({} bytes)",
            attachment.name,
            attachment.bytes.len()
        );
        attach(client, token, mail, draft, attachment, timeout)
            .await
            .map_err(|e| failed(step, e))?;
    }
    let send = client
        .http
        .post(messages_url(client, &mail.send_as, &[&draft.id, "send"]))
        .header(reqwest::header::CONTENT_LENGTH, "0");
    let answer = call(send, Some(token), timeout)
        .await
        .map_err(|error| DraftFailure {
            step: "send draft".into(),
            error,
            reached_send: true,
        })?;
    if answer.status == 202 || answer.status == 200 {
        return Ok(SendReceipt {
            request_id: answer.request_id,
            client_request_id: String::new(),
        });
    }
    Err(DraftFailure {
        step: "send draft".into(),
        error: answer.error(),
        reached_send: true,
    })
}

async fn attach(
    client: &GraphClient,
    token: &AccessToken,
    mail: &DraftMail,
    draft: &CreatedMessage,
    attachment: &DraftAttachment,
    timeout: Duration,
) -> Result<(), GraphError> {
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
        let post = client
            .http
            .post(messages_url(
                client,
                &mail.send_as,
                &[&draft.id, "attachments"],
            ))
            .json(&body);
        let answer = call(post, Some(token), timeout).await?;
        return if answer.status == 201 {
            Ok(())
        } else {
            Err(answer.error())
        };
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
    let create = client
        .http
        .post(messages_url(
            client,
            &mail.send_as,
            &[&draft.id, "attachments", "createUploadSession"],
        ))
        .json(&serde_json::json!({ "AttachmentItem": item }));
    let answer = call(create, Some(token), timeout).await?;
    if answer.status != 201 {
        return Err(answer.error());
    }
    let session: UploadSession = answer.json("createUploadSession")?;
    let upload_url = checked_upload_url(client, &session.upload_url)?;
    let mut start = next_start(&session.next_expected_ranges).unwrap_or(0);
    loop {
        let end = (start + UPLOAD_CHUNK_BYTES).min(size);
        let put = client
            .http
            .put(upload_url.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
            .header(
                reqwest::header::CONTENT_RANGE,
                format!("bytes {start}-{}/{size}", end - 1),
            )
            .body(attachment.bytes[start..end].to_vec());
        // no Authorization: the URL carries its own token
        let answer = call(put, None, timeout).await?;
        match answer.status {
            201 => return Ok(()),
            200 => {
                let progress: UploadSession = match answer.json::<serde_json::Value>("upload") {
                    Ok(v) => UploadSession {
                        upload_url: String::new(),
                        next_expected_ranges: v
                            .get("nextExpectedRanges")
                            .and_then(|r| serde_json::from_value(r.clone()).ok())
                            .unwrap_or_default(),
                    },
                    Err(e) => return Err(e),
                };
                let next = next_start(&progress.next_expected_ranges).unwrap_or(end);
                if next <= start || next >= size {
                    return Err(GraphError::Rejected {
                        status: 200,
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
            _ => return Err(answer.error()),
        }
        let _ = answer.location;
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
        let local = GraphClient::new("http://127.0.0.1:8080/v1.0").unwrap();
        assert!(checked_upload_url(&local, "http://127.0.0.1:9/upload").is_ok());
        assert!(checked_upload_url(&local, "http://example.com/upload").is_err());
    }
}
