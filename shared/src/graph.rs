//! Microsoft Graph `sendMail` client (the mail sender adapter).
//!
//! [`MailSender`] is the port send-notifications talks to; [`GraphClient`] implements it with
//! `POST {base}/me/sendMail` or `POST {base}/users/{from}/sendMail`, a JSON `message` resource and
//! `saveToSentItems`. Success is `202 Accepted` with an empty body. Every answer's `request-id`
//! header is captured (it is what Microsoft support asks for), and we send a `client-request-id`.
//!
//! [`MailSender::send_mime`] sends a complete RFC 5322 message instead: the same endpoints with
//! `Content-Type: text/plain` and the message base64-encoded as the body (Graph's MIME format);
//! every header of the message travels as it is.
//!
//! Errors are classified ([`crate::error::Classify`]): 429 and 5xx are transient (with the
//! `Retry-After` delay when given), 401 means the token was refused, 400/403/404/413 are
//! permanent (bad message, `ErrorAccessDenied`, `ErrorSendAsDenied`, `MailboxNotEnabledForRESTAPI`,
//! too large), transport failures and timeouts are transient. Two kinds are told apart by code,
//! whatever the status: a sending quota of the mailbox (message rate, daily recipients:
//! [`GraphError::SendingQuota`], transient but for hours) and a full sender mailbox
//! (`ErrorQuotaExceeded`, permanent until someone makes room).

use crate::error::{Classify, ErrorClass, error_chain};
use crate::notification::{BodyType, Importance, Notification, Recipient};
use crate::token::AccessToken;
use async_trait::async_trait;
use secrecy::ExposeSecret as _;
use serde::Serialize;
use std::time::Duration;

/// Graph v1.0 in the global cloud.
pub const DEFAULT_GRAPH_URL: &str = "https://graph.microsoft.com/v1.0";

/// Port: something that submits one mail with a bearer token.
#[async_trait]
pub trait MailSender: Send + Sync {
    /// Submit `mail`. `timeout` bounds the whole HTTP exchange.
    async fn send_mail(
        &self,
        token: &AccessToken,
        mail: &OutgoingMail,
        timeout: Duration,
    ) -> Result<SendReceipt, GraphError>;

    /// Submit a raw RFC 5322 message (Graph's MIME format). `timeout` bounds the exchange.
    async fn send_mime(
        &self,
        token: &AccessToken,
        mail: &OutgoingMime,
        timeout: Duration,
    ) -> Result<SendReceipt, GraphError>;

    /// Send a message too large for one request through a draft: create it, add the
    /// attachments (upload sessions from 3 MB), send it ([`crate::graph_draft`]); each step
    /// retried where Graph says it may be, all of it before `deadline`.
    async fn send_draft(
        &self,
        token: &AccessToken,
        mail: &crate::graph_draft::DraftMail,
        deadline: tokio::time::Instant,
    ) -> Result<SendReceipt, crate::graph_draft::DraftFailure>;
}

/// One MIME sendMail request: the mailbox plus the raw message.
#[derive(Clone, Debug)]
pub struct OutgoingMime {
    /// `/me` (the From of the message says who sends) or `/users/{id}`.
    pub send_as: SendAs,
    /// The RFC 5322 message, as it goes out.
    pub mime: Vec<u8>,
}

impl OutgoingMime {
    /// The request body: the message in standard base64 (Graph's MIME format).
    pub fn request_body(&self) -> String {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(&self.mime)
    }
}

/// Graph codes for a mailbox's sending quota (Exchange Online's message rate and daily recipient
/// limits; the names Exchange uses for them). Sending resumes by itself after minutes to a day.
pub const SENDING_QUOTA_CODES: &[&str] = &[
    "ErrorExceededMessageLimit",
    "ErrorSubmissionQuotaExceeded",
    "ErrorMessageRateLimitExceeded",
    "ErrorRecipientRateLimitExceeded",
];

/// Graph's code for a sender mailbox that is full (nothing can be saved or sent from it).
pub const MAILBOX_FULL_CODE: &str = "ErrorQuotaExceeded";

/// Which mailbox sends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SendAs {
    /// The signed-in user of the token (`/me/sendMail`).
    Me,
    /// A shared mailbox or another user (`/users/{id}/sendMail`; needs Send As rights).
    User(String),
}

/// One sendMail request: the mailbox plus the JSON body.
#[derive(Clone, Debug)]
pub struct OutgoingMail {
    /// `/me` or `/users/{id}`.
    pub send_as: SendAs,
    /// The request body (`message`, `saveToSentItems`).
    pub request: SendMailRequest,
}

/// The sendMail JSON body.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SendMailRequest {
    /// The message resource.
    pub message: GraphMessage,
    /// Only sent when false (Graph's default is true).
    #[serde(skip_serializing_if = "is_true")]
    pub save_to_sent_items: bool,
}

fn is_true(b: &bool) -> bool {
    *b
}

/// The subset of Graph's `message` resource we write.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GraphMessage {
    /// Subject.
    pub subject: String,
    /// Body.
    pub body: GraphBody,
    /// To.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub to_recipients: Vec<GraphRecipient>,
    /// Cc.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub cc_recipients: Vec<GraphRecipient>,
    /// Bcc.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub bcc_recipients: Vec<GraphRecipient>,
    /// Reply-To.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub reply_to: Vec<GraphRecipient>,
    /// From (only for send-as; must match the `/users/{id}` mailbox).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<GraphRecipient>,
    /// `low` / `normal` / `high`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub importance: Option<&'static str>,
    /// File attachments.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub attachments: Vec<GraphAttachment>,
    /// `X-` headers.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub internet_message_headers: Vec<GraphHeader>,
    /// The RFC 5322 Message-ID (writable while the message is a draft, which sendMail's is).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub internet_message_id: Option<String>,
}

/// `itemBody`.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GraphBody {
    /// `text` or `html`.
    pub content_type: &'static str,
    /// The content.
    pub content: String,
}

/// `recipient`.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GraphRecipient {
    /// `emailAddress`.
    pub email_address: GraphEmailAddress,
}

/// `emailAddress`.
#[derive(Clone, Debug, Serialize)]
pub struct GraphEmailAddress {
    /// Address.
    pub address: String,
    /// Display name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// `fileAttachment`.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GraphAttachment {
    /// Always `#microsoft.graph.fileAttachment`.
    #[serde(rename = "@odata.type")]
    pub odata_type: &'static str,
    /// File name.
    pub name: String,
    /// MIME type.
    pub content_type: String,
    /// base64.
    pub content_bytes: String,
    /// Inline (cid:) attachment.
    pub is_inline: bool,
    /// Content-ID.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content_id: Option<String>,
}

/// `internetMessageHeader`.
#[derive(Clone, Debug, Serialize)]
pub struct GraphHeader {
    /// Name (`X-...`).
    pub name: String,
    /// Value.
    pub value: String,
}

/// What mailbridge adds on top of the queue message (thread marker, Message-ID).
#[derive(Clone, Debug, Default)]
pub struct MessageExtras {
    /// Subject to use instead of the notification's (e.g. with `[Ticket#N]`).
    pub subject: Option<String>,
    /// Body content to use instead of the notification's (e.g. with a reference footer).
    pub body_content: Option<String>,
    /// Extra `X-` headers (e.g. `X-Mailbridge-Ref`).
    pub headers: Vec<(String, String)>,
    /// `internetMessageId`, with angle brackets.
    pub internet_message_id: Option<String>,
}

fn recipients(list: &[Recipient]) -> Vec<GraphRecipient> {
    list.iter()
        .map(|r| GraphRecipient {
            email_address: GraphEmailAddress {
                address: r.address.clone(),
                name: r.name.clone(),
            },
        })
        .collect()
}

impl OutgoingMail {
    /// Build the Graph request for a validated notification. An attachment stored as an S3
    /// object (`content_ref`) gets empty `contentBytes`: the caller reads the object and sets
    /// them (or sends through a draft).
    pub fn from_notification(n: &Notification, extras: MessageExtras) -> Self {
        let send_as = match &n.from {
            Some(from) => SendAs::User(from.clone()),
            None => SendAs::Me,
        };
        let mut headers: Vec<GraphHeader> = n
            .headers
            .iter()
            .map(|(name, value)| GraphHeader {
                name: name.clone(),
                value: value.clone(),
            })
            .collect();
        headers.extend(
            extras
                .headers
                .into_iter()
                .map(|(name, value)| GraphHeader { name, value }),
        );
        let message = GraphMessage {
            subject: extras.subject.unwrap_or_else(|| n.subject.clone()),
            body: GraphBody {
                content_type: match n.body.content_type {
                    BodyType::Text => "text",
                    BodyType::Html => "html",
                },
                content: extras
                    .body_content
                    .unwrap_or_else(|| n.body.content.clone()),
            },
            to_recipients: recipients(&n.to),
            cc_recipients: recipients(&n.cc),
            bcc_recipients: recipients(&n.bcc),
            reply_to: recipients(&n.reply_to),
            from: n.from.as_ref().map(|address| GraphRecipient {
                email_address: GraphEmailAddress {
                    address: address.clone(),
                    name: None,
                },
            }),
            importance: n.importance.map(|i| match i {
                Importance::Low => "low",
                Importance::Normal => "normal",
                Importance::High => "high",
            }),
            attachments: n
                .attachments
                .iter()
                .map(|a| GraphAttachment {
                    odata_type: "#microsoft.graph.fileAttachment",
                    name: a.name.clone(),
                    content_type: a.content_type.clone(),
                    // a file by `content_ref` is read by the sender, which fills this in
                    content_bytes: a.content_base64.clone().unwrap_or_default(),
                    is_inline: a.inline,
                    content_id: a.content_id.clone(),
                })
                .collect(),
            internet_message_headers: headers,
            internet_message_id: extras.internet_message_id,
        };
        OutgoingMail {
            send_as,
            request: SendMailRequest {
                message,
                save_to_sent_items: n.save_to_sent_items.unwrap_or(true),
            },
        }
    }
}

/// A 202 from Graph.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SendReceipt {
    /// Graph's `request-id` response header.
    pub request_id: Option<String>,
    /// The `client-request-id` we sent.
    pub client_request_id: String,
}

/// Why Graph did not accept the mail.
#[derive(Debug, thiserror::Error)]
pub enum GraphError {
    /// 429: too many requests for this mailbox/app.
    #[error(
        "Graph throttled the request (429 {code}), retry after {retry_after:?} [request-id {request_id:?}]"
    )]
    Throttled {
        /// `Retry-After`, when given.
        retry_after: Option<Duration>,
        /// Graph error code.
        code: String,
        /// `request-id`.
        request_id: Option<String>,
    },
    /// 5xx: Graph unavailable.
    #[error(
        "Graph unavailable ({status} {code}: {message}), retry after {retry_after:?} [request-id {request_id:?}]"
    )]
    Unavailable {
        /// HTTP status.
        status: u16,
        /// `Retry-After`, when given.
        retry_after: Option<Duration>,
        /// Graph error code.
        code: String,
        /// Graph error message.
        message: String,
        /// `request-id`.
        request_id: Option<String>,
    },
    /// 401: the access token was refused.
    #[error("Graph refused the access token (401 {code}: {message}) [request-id {request_id:?}]")]
    Unauthorized {
        /// Graph error code (e.g. `InvalidAuthenticationToken`).
        code: String,
        /// Graph error message.
        message: String,
        /// `request-id`.
        request_id: Option<String>,
    },
    /// 4xx other than 401/408/429: the request (a message sent, a mailbox read) or the mailbox's
    /// permissions are wrong.
    #[error("Graph rejected the request ({status} {code}: {message}) [request-id {request_id:?}]")]
    Rejected {
        /// HTTP status.
        status: u16,
        /// Graph error code (`ErrorAccessDenied`, `ErrorSendAsDenied`, `MailboxNotEnabledForRESTAPI`...).
        code: String,
        /// Graph error message.
        message: String,
        /// `request-id`.
        request_id: Option<String>,
    },
    /// The mailbox is over a sending quota (message rate or recipients per day): the same mail
    /// goes through once the window has passed.
    #[error(
        "the sending mailbox is over its sending quota ({status} {code}: {message}) [request-id {request_id:?}]"
    )]
    SendingQuota {
        /// HTTP status.
        status: u16,
        /// Graph error code (see [`SENDING_QUOTA_CODES`]).
        code: String,
        /// Graph error message.
        message: String,
        /// `Retry-After`, when given.
        retry_after: Option<Duration>,
        /// `request-id`.
        request_id: Option<String>,
    },
    /// No answer: connection refused/reset, timeout. The mail may or may not have been accepted.
    #[error("Graph request failed before an answer: {detail}")]
    Transport {
        /// What failed (no secrets).
        detail: String,
        /// Whether it was a timeout (the request may have been processed).
        timed_out: bool,
        /// Whether the whole request had been written when it failed: Graph may have accepted
        /// the mail (a dropped connection after the request, a timeout).
        after_request: bool,
    },
}

impl GraphError {
    /// Graph's `request-id`, when an answer came.
    pub fn request_id(&self) -> Option<&str> {
        match self {
            GraphError::Throttled { request_id, .. }
            | GraphError::Unavailable { request_id, .. }
            | GraphError::Unauthorized { request_id, .. }
            | GraphError::Rejected { request_id, .. }
            | GraphError::SendingQuota { request_id, .. } => request_id.as_deref(),
            GraphError::Transport { .. } => None,
        }
    }

    /// The server's requested delay, when it gave one.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            GraphError::Throttled { retry_after, .. }
            | GraphError::Unavailable { retry_after, .. }
            | GraphError::SendingQuota { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// Graph's error code (`ErrorSendAsDenied`...) or a short description of the failure.
    pub fn code(&self) -> &str {
        match self {
            GraphError::Throttled { code, .. }
            | GraphError::Unavailable { code, .. }
            | GraphError::Unauthorized { code, .. }
            | GraphError::Rejected { code, .. }
            | GraphError::SendingQuota { code, .. } => code,
            GraphError::Transport {
                timed_out: true, ..
            } => "Timeout",
            GraphError::Transport { .. } => "TransportError",
        }
    }
}

impl Classify for GraphError {
    fn class(&self) -> ErrorClass {
        match self {
            GraphError::Throttled { .. }
            | GraphError::Unavailable { .. }
            | GraphError::SendingQuota { .. }
            | GraphError::Transport { .. } => ErrorClass::Transient,
            // A 401 that survives a fresh token: the grant no longer works for Graph.
            GraphError::Unauthorized { .. } => ErrorClass::NeedsReauth,
            GraphError::Rejected { .. } => ErrorClass::Permanent,
        }
    }
}

/// The draft route's default retry policy: a step refused with 429 or 5xx is tried again up to
/// 5 times (Graph's `Retry-After` honoured in full, within the deadline); an upload chunk may
/// take up to a minute.
pub fn draft_retry_policy() -> crate::retry::RetryPolicy {
    crate::retry::RetryPolicy {
        initial_backoff: Duration::from_millis(500),
        max_backoff: Duration::from_secs(10),
        max_attempts: 5,
        attempt_timeout: Duration::from_secs(60),
    }
}

/// Configuration problems when building the client.
#[derive(Debug, thiserror::Error)]
pub enum GraphConfigError {
    /// The base URL is unusable.
    #[error("Graph base URL {url:?}: {problem}")]
    BadUrl {
        /// The URL given.
        url: String,
        /// What is wrong.
        problem: String,
    },
    /// reqwest could not build a client.
    #[error("cannot build the HTTP client for Graph: {0}")]
    Client(String),
}

/// The real Graph client.
#[derive(Clone, Debug)]
pub struct GraphClient {
    pub(crate) http: reqwest::Client,
    pub(crate) base_url: url::Url,
    /// How the draft route retries a step Graph refused for now ([`crate::retry`]).
    pub(crate) retry: crate::retry::RetryPolicy,
}

impl GraphClient {
    /// `base_url` like `https://graph.microsoft.com/v1.0`; plain http only for loopback hosts.
    ///
    /// The HTTP client is [`crate::http::default_client`]: TLS verification on and **no
    /// redirects followed** (a redirected POST would be re-sent, or turned into a GET whose 2xx
    /// looked like a sent mail, at another host).
    pub fn new(base_url: &str) -> Result<Self, GraphConfigError> {
        let http =
            crate::http::default_client().map_err(|e| GraphConfigError::Client(e.to_string()))?;
        Self::with_http(http, base_url)
    }

    /// As [`GraphClient::new`] with a caller-built reqwest client.
    pub fn with_http(http: reqwest::Client, base_url: &str) -> Result<Self, GraphConfigError> {
        let bad = |problem: &str| GraphConfigError::BadUrl {
            url: base_url.to_owned(),
            problem: problem.to_owned(),
        };
        let url = url::Url::parse(base_url.trim_end_matches('/'))
            .map_err(|e| bad(&format!("not a URL ({e})")))?;
        let loopback = matches!(
            url.host(),
            Some(url::Host::Ipv4(ip)) if ip.is_loopback()
        ) || matches!(url.host(), Some(url::Host::Ipv6(ip)) if ip.is_loopback())
            || url.host_str() == Some("localhost");
        if loopback && !crate::config::local_targets_allowed() {
            return Err(bad(&format!(
                "is a loopback host: allowed only with {}=true (local stack and tests)",
                crate::config::ALLOW_LOCAL_TARGETS_VAR
            )));
        }
        match url.scheme() {
            "https" => {}
            "http" if loopback => {}
            "http" => {
                return Err(bad(
                    "must use https (http is allowed only for loopback hosts)",
                ));
            }
            _ => return Err(bad("must be an https URL")),
        }
        if url.cannot_be_a_base() {
            return Err(bad("cannot be a base URL"));
        }
        Ok(GraphClient {
            http,
            base_url: url,
            retry: draft_retry_policy(),
        })
    }

    /// Change how the draft route retries its steps (default [`draft_retry_policy`]).
    pub fn with_retry_policy(mut self, retry: crate::retry::RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// The sendMail URL for a mailbox.
    pub fn send_mail_url(&self, send_as: &SendAs) -> url::Url {
        let mut url = self.base_url.clone();
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
            segments.push("sendMail");
        }
        url
    }
}

#[derive(serde::Deserialize, Default)]
struct ErrorEnvelope {
    #[serde(default)]
    error: ErrorBody,
}

#[derive(serde::Deserialize, Default)]
struct ErrorBody {
    #[serde(default)]
    code: String,
    #[serde(default)]
    message: String,
    #[serde(default, rename = "innerError")]
    inner_error: Option<InnerError>,
}

#[derive(serde::Deserialize, Default)]
struct InnerError {
    #[serde(default, rename = "request-id")]
    request_id: Option<String>,
}

#[async_trait]
impl MailSender for GraphClient {
    async fn send_mail(
        &self,
        token: &AccessToken,
        mail: &OutgoingMail,
        timeout: Duration,
    ) -> Result<SendReceipt, GraphError> {
        let request = self
            .http
            .post(self.send_mail_url(&mail.send_as))
            .json(&mail.request);
        self.submit(token, request, timeout).await
    }

    async fn send_mime(
        &self,
        token: &AccessToken,
        mail: &OutgoingMime,
        timeout: Duration,
    ) -> Result<SendReceipt, GraphError> {
        let request = self
            .http
            .post(self.send_mail_url(&mail.send_as))
            .header(reqwest::header::CONTENT_TYPE, "text/plain")
            .body(mail.request_body());
        self.submit(token, request, timeout).await
    }

    async fn send_draft(
        &self,
        token: &AccessToken,
        mail: &crate::graph_draft::DraftMail,
        deadline: tokio::time::Instant,
    ) -> Result<SendReceipt, crate::graph_draft::DraftFailure> {
        crate::graph_draft::send_draft(self, token, mail, deadline).await
    }
}

impl GraphClient {
    /// Send a prepared sendMail request and turn the answer into a receipt or a [`GraphError`].
    async fn submit(
        &self,
        token: &AccessToken,
        request: reqwest::RequestBuilder,
        timeout: Duration,
    ) -> Result<SendReceipt, GraphError> {
        let client_request_id = uuid::Uuid::new_v4().to_string();
        let response = request
            .bearer_auth(token.secret.expose_secret())
            .header("client-request-id", &client_request_id)
            .header("return-client-request-id", "true")
            .timeout(timeout)
            .send()
            .await
            .map_err(|e| GraphError::transport(&e))?;
        let status = response.status().as_u16();
        let request_id = request_id(response.headers());
        let retry_after = crate::retry::retry_after(response.headers());
        if status == 202 || status == 200 {
            return Ok(SendReceipt {
                request_id,
                client_request_id,
            });
        }
        let body = crate::http::read_excerpt(response).await;
        Err(error_from_answer(
            status,
            request_id,
            retry_after,
            body.as_bytes(),
        ))
    }
}

impl GraphError {
    /// A request that got no HTTP answer. A timeout, or a connection that broke without a
    /// status line after the body went out (reqwest reports the latter as a request error from
    /// hyper's IncompleteMessage), may mean Graph did what was asked (`after_request`); a failure
    /// to connect cannot.
    pub(crate) fn transport(e: &reqwest::Error) -> Self {
        GraphError::Transport {
            timed_out: e.is_timeout(),
            after_request: e.is_timeout() || (!e.is_connect() && e.is_request()),
            detail: error_chain(e),
        }
    }
}

/// Graph's `request-id` answer header (what Microsoft support asks for).
pub(crate) fn request_id(headers: &reqwest::header::HeaderMap) -> Option<String> {
    headers
        .get("request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// Graph's answer `status` with error `body` as a [`GraphError`].
pub(crate) fn error_from_answer(
    status: u16,
    mut request_id: Option<String>,
    retry_after: Option<Duration>,
    body: &[u8],
) -> GraphError {
    let envelope: ErrorEnvelope = serde_json::from_slice(body).unwrap_or_default();
    let ErrorBody {
        code,
        message,
        inner_error,
    } = envelope.error;
    if request_id.is_none() {
        request_id = inner_error.and_then(|i| i.request_id);
    }
    let code = if code.is_empty() {
        format!("HTTP{status}")
    } else {
        code
    };
    let message: String = message.chars().take(500).collect();
    if SENDING_QUOTA_CODES.contains(&code.as_str()) {
        return GraphError::SendingQuota {
            status,
            code,
            message,
            retry_after,
            request_id,
        };
    }
    if code == MAILBOX_FULL_CODE {
        return GraphError::Rejected {
            status,
            code,
            message,
            request_id,
        };
    }
    match status {
        429 => GraphError::Throttled {
            retry_after,
            code,
            request_id,
        },
        401 => GraphError::Unauthorized {
            code,
            message,
            request_id,
        },
        408 | 500..=599 => GraphError::Unavailable {
            status,
            retry_after,
            code,
            message,
            request_id,
        },
        _ => GraphError::Rejected {
            status,
            code,
            message,
            request_id,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn notification() -> Notification {
        Notification::parse(
            &serde_json::json!({
                "version": 1, "account": "a", "from": "shared@contoso.com",
                "to": [{"address": "c@example.com", "name": "C"}],
                "subject": "S", "body": {"content_type": "html", "content": "<b>x</b>"},
                "importance": "high", "save_to_sent_items": false,
                "attachments": [{"name": "i.png", "content_type": "image/png", "content_base64": "AAAA", "inline": true, "content_id": "img1"}],
                "headers": {"X-A": "1"}
            })
            .to_string(),
            "m1",
        )
        .unwrap()
    }

    #[test]
    fn the_message_resource_uses_graph_names() {
        let extras = MessageExtras {
            headers: vec![("X-Mailbridge-Ref".into(), "r".into())],
            internet_message_id: Some("<a@b>".into()),
            ..Default::default()
        };
        let mail = OutgoingMail::from_notification(&notification(), extras);
        assert_eq!(mail.send_as, SendAs::User("shared@contoso.com".into()));
        let json = serde_json::to_value(&mail.request).unwrap();
        assert_eq!(json["saveToSentItems"], false);
        let m = &json["message"];
        assert_eq!(
            m["toRecipients"][0]["emailAddress"]["address"],
            "c@example.com"
        );
        assert_eq!(m["body"]["contentType"], "html");
        assert_eq!(m["importance"], "high");
        assert_eq!(
            m["attachments"][0]["@odata.type"],
            "#microsoft.graph.fileAttachment"
        );
        assert_eq!(m["attachments"][0]["contentBytes"], "AAAA");
        assert_eq!(m["attachments"][0]["isInline"], true);
        assert_eq!(m["internetMessageHeaders"][1]["name"], "X-Mailbridge-Ref");
        assert_eq!(m["internetMessageId"], "<a@b>");
        assert_eq!(m["from"]["emailAddress"]["address"], "shared@contoso.com");
        assert!(m.get("ccRecipients").is_none());
    }

    #[test]
    fn save_to_sent_items_is_omitted_when_true() {
        let mut n = notification();
        n.save_to_sent_items = None;
        let mail = OutgoingMail::from_notification(&n, MessageExtras::default());
        let json = serde_json::to_value(&mail.request).unwrap();
        assert!(json.get("saveToSentItems").is_none());
    }

    #[test]
    fn urls_for_me_and_send_as() {
        crate::config::allow_local_targets_in_this_process();
        let c = GraphClient::new("http://127.0.0.1:8080/v1.0/").unwrap();
        assert_eq!(
            c.send_mail_url(&SendAs::Me).as_str(),
            "http://127.0.0.1:8080/v1.0/me/sendMail"
        );
        assert_eq!(
            c.send_mail_url(&SendAs::User("a b@c.com".into())).as_str(),
            "http://127.0.0.1:8080/v1.0/users/a%20b@c.com/sendMail"
        );
    }

    #[test]
    fn plain_http_is_refused_except_for_loopback() {
        assert!(GraphClient::new("http://graph.example.com/v1.0").is_err());
        assert!(GraphClient::new("https://graph.microsoft.com/v1.0").is_ok());
        // loopback only where the process allows local targets (the tests and the local stack;
        // that production refuses it is proven on the real bootstrap, whose process never does)
        crate::config::allow_local_targets_in_this_process();
        assert!(GraphClient::new("http://localhost:1/v1.0").is_ok());
    }
}
