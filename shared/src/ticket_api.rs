//! The helpdesk ticket API client (the ticket sink adapter).
//!
//! [`TicketSink`] is the port the poller posts tickets through; [`WebhookTicketSink`] is the
//! default adapter, a generic JSON webhook: `POST <url>` with the [`TicketPayload`] as JSON
//! (schema: `shared/schemas/ticket-payload.schema.json`), an `Idempotency-Key` header, and an
//! auth header taken from a secret ([`TicketApiAuth`]). A PSA-specific adapter implements the same
//! trait.
//!
//! # Retry policy
//! 429 (honouring `Retry-After`), 5xx, timeouts and connection errors are retried with
//! exponential backoff while the caller's deadline allows; then [`TicketApiError::Unavailable`]
//! (transient: leave the mail where it is, try next run). 401/403/404/408/409 mean the API or its
//! credentials are misconfigured or busy, not that the mail is bad: also transient. Other 4xx (400,
//! 413, 422...) mean this payload will never be accepted: [`TicketApiError::Rejected`] (permanent:
//! park the mail with the reason).

use std::time::Duration;

use async_trait::async_trait;
use secrecy::{ExposeSecret as _, SecretString};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::error::{Classify, ErrorClass};

/// Schema identifier carried in every payload.
pub const TICKET_PAYLOAD_SCHEMA: &str = "mailbridge.ticket-payload/1";

/// One attachment in the payload: content inline (base64) when under the cap, metadata only beyond.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct TicketAttachment {
    /// Decoded file name, if any.
    pub filename: Option<String>,
    /// MIME type, e.g. `application/pdf`.
    pub content_type: String,
    /// Decoded size in bytes.
    pub size: u64,
    /// Shown inline in the body (e.g. a `cid:` image).
    pub inline: bool,
    /// `Content-ID` without angle brackets.
    pub content_id: Option<String>,
    /// Base64 content, or null when it was left out.
    pub content_base64: Option<String>,
    /// Why the content was left out (e.g. over the attachment cap).
    pub omitted_reason: Option<String>,
}

/// The JSON body POSTed for each mail. See `shared/schemas/ticket-payload.schema.json`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct TicketPayload {
    /// Always [`TICKET_PAYLOAD_SCHEMA`].
    pub schema: String,
    /// The mailbox name (configuration key) the mail came from.
    pub mailbox: String,
    /// The mailbox address.
    pub mailbox_address: String,
    /// When the mailbox received the mail: its IMAP INTERNALDATE (the poll time if the server
    /// gave none). The same on every attempt, so a retried POST repeats its payload exactly.
    pub received_at: chrono::DateTime<chrono::Utc>,
    /// The dedupe key; equal to the `Idempotency-Key` header.
    pub idempotency_key: String,
    /// The ticket draft (see `ticket-draft.schema.json`); a best-effort draft when parsing failed.
    pub draft: serde_json::Value,
    /// Attachments with content up to the cap.
    pub attachments: Vec<TicketAttachment>,
    /// Set when the mail could not be fully read (unparseable, over the size cap): what happened.
    pub problem: Option<String>,
    /// The raw RFC 5322 message, base64, attached for problem mails when under the cap.
    pub raw_message_base64: Option<String>,
}

/// What the API said when it accepted a ticket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TicketReceipt {
    /// HTTP status (200/201/202).
    pub status: u16,
    /// The ticket id from the response (`id` or `ticket_id`), when there is one.
    pub ticket_id: Option<String>,
    /// Attempts it took.
    pub attempts: u32,
}

/// Why a ticket was not created.
#[derive(Debug, thiserror::Error)]
pub enum TicketApiError {
    /// The API refused this payload for good (400, 413, 422...). Park the mail with this reason.
    #[error("ticket API {url} rejected the ticket with HTTP {status}: {body}")]
    Rejected {
        /// Target URL.
        url: String,
        /// HTTP status.
        status: u16,
        /// Start of the response body.
        body: String,
    },
    /// Down, throttled, misconfigured credentials or out of time: leave the mail and retry next run.
    #[error("ticket API {url} unavailable after {attempts} attempt(s): {detail}")]
    Unavailable {
        /// Target URL.
        url: String,
        /// Attempts made.
        attempts: u32,
        /// The last problem.
        detail: String,
    },
    /// The payload could not be serialised (a bug).
    #[error("ticket payload could not be encoded: {0}")]
    Encode(String),
}

impl Classify for TicketApiError {
    fn class(&self) -> ErrorClass {
        match self {
            TicketApiError::Rejected { .. } | TicketApiError::Encode(_) => ErrorClass::Permanent,
            TicketApiError::Unavailable { .. } => ErrorClass::Transient,
        }
    }
}

/// Port: where tickets go.
#[async_trait]
pub trait TicketSink: Send + Sync {
    /// Create one ticket. `idempotency_key` is stable for the mail, so a retry after a lost
    /// response does not create a second ticket. Give up (transient) at `deadline`.
    async fn create_ticket(
        &self,
        payload: &TicketPayload,
        idempotency_key: &str,
        deadline: Instant,
    ) -> Result<TicketReceipt, TicketApiError>;
}

/// How the webhook authenticates, read from a Secrets Manager secret (JSON).
///
/// `{"type":"bearer","token":"..."}` → `Authorization: Bearer ...`;
/// `{"type":"api_key","header":"X-API-Key","key":"..."}` → that header;
/// `{"type":"none"}` → nothing.
#[derive(Clone)]
pub enum TicketApiAuth {
    /// No auth header.
    None,
    /// `Authorization: Bearer <token>`.
    Bearer(SecretString),
    /// A custom header carrying an API key.
    ApiKey {
        /// Header name.
        header: String,
        /// Key value.
        key: SecretString,
    },
}

impl std::fmt::Debug for TicketApiAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TicketApiAuth::None => f.write_str("None"),
            TicketApiAuth::Bearer(_) => f.write_str("Bearer([redacted])"),
            TicketApiAuth::ApiKey { header, .. } => write!(f, "ApiKey({header}: [redacted])"),
        }
    }
}

impl TicketApiAuth {
    /// Parse the secret's JSON; the error names the field and never echoes the value.
    pub fn from_secret_json(secret_name: &str, json: &str) -> Result<Self, String> {
        let value: serde_json::Value = serde_json::from_str(json)
            .map_err(|_| format!("secret {secret_name}: not valid JSON"))?;
        let field = |name: &str| -> Result<String, String> {
            value
                .get(name)
                .and_then(|v| v.as_str())
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .ok_or_else(|| format!("secret {secret_name}: field `{name}` missing or empty"))
        };
        match field("type")?.as_str() {
            "none" => Ok(TicketApiAuth::None),
            "bearer" => Ok(TicketApiAuth::Bearer(SecretString::from(field("token")?))),
            "api_key" => {
                let header = field("header")?;
                reqwest::header::HeaderName::from_bytes(header.as_bytes()).map_err(|_| {
                    format!("secret {secret_name}: field `header` is not a valid header name")
                })?;
                Ok(TicketApiAuth::ApiKey {
                    header,
                    key: SecretString::from(field("key")?),
                })
            }
            // The value is not echoed: a key pasted into the wrong field must not reach a log.
            _ => Err(format!(
                "secret {secret_name}: field `type` must be \"bearer\", \"api_key\" or \"none\""
            )),
        }
    }
}

/// Retry tuning for [`WebhookTicketSink`].
#[derive(Clone, Debug)]
pub struct RetryPolicy {
    /// First backoff.
    pub initial_backoff: Duration,
    /// Largest backoff (also caps `Retry-After`).
    pub max_backoff: Duration,
    /// Most attempts per ticket.
    pub max_attempts: u32,
    /// Timeout of one HTTP attempt (also bounded by the deadline).
    pub attempt_timeout: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            initial_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(20),
            max_attempts: 6,
            attempt_timeout: Duration::from_secs(30),
        }
    }
}

/// The generic JSON webhook adapter.
#[derive(Clone, Debug)]
pub struct WebhookTicketSink {
    client: reqwest::Client,
    url: String,
    auth: TicketApiAuth,
    retry: RetryPolicy,
}

impl WebhookTicketSink {
    /// A sink posting to `url` (already validated: https, or http on loopback).
    pub fn new(
        client: reqwest::Client,
        url: String,
        auth: TicketApiAuth,
        retry: RetryPolicy,
    ) -> Self {
        WebhookTicketSink {
            client,
            url,
            auth,
            retry,
        }
    }

    /// The target URL.
    pub fn url(&self) -> &str {
        &self.url
    }
}

fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let value = headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let when = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    let delta = when.with_timezone(&chrono::Utc) - chrono::Utc::now();
    Some(delta.to_std().unwrap_or(Duration::ZERO))
}

fn excerpt(body: &str) -> String {
    let trimmed: String = body.chars().take(300).collect();
    trimmed.replace(['\r', '\n'], " ")
}

#[async_trait]
impl TicketSink for WebhookTicketSink {
    async fn create_ticket(
        &self,
        payload: &TicketPayload,
        idempotency_key: &str,
        deadline: Instant,
    ) -> Result<TicketReceipt, TicketApiError> {
        let body = bytes::Bytes::from(
            serde_json::to_vec(payload).map_err(|e| TicketApiError::Encode(e.to_string()))?,
        );
        let mut backoff = self.retry.initial_backoff;
        let mut attempts = 0;
        let unavailable = |attempts, detail| TicketApiError::Unavailable {
            url: self.url.clone(),
            attempts,
            detail,
        };
        loop {
            attempts += 1;
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err(unavailable(attempts - 1, "deadline reached".into()));
            }
            let mut request = self
                .client
                .post(&self.url)
                .timeout(remaining.min(self.retry.attempt_timeout))
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .header("Idempotency-Key", idempotency_key)
                .body(body.clone());
            request = match &self.auth {
                TicketApiAuth::None => request,
                TicketApiAuth::Bearer(token) => request.bearer_auth(token.expose_secret()),
                TicketApiAuth::ApiKey { header, key } => {
                    request.header(header.as_str(), key.expose_secret())
                }
            };
            let (detail, wait_hint) = match request.send().await {
                Ok(response) => {
                    let status = response.status();
                    if status.is_success() {
                        let text = response.text().await.unwrap_or_default();
                        let ticket_id = serde_json::from_str::<serde_json::Value>(&text)
                            .ok()
                            .and_then(|v| {
                                let id = v.get("id").or_else(|| v.get("ticket_id"))?;
                                Some(match id {
                                    serde_json::Value::String(s) => s.clone(),
                                    other => other.to_string(),
                                })
                            });
                        return Ok(TicketReceipt {
                            status: status.as_u16(),
                            ticket_id,
                            attempts,
                        });
                    }
                    let hint = retry_after(response.headers());
                    let code = status.as_u16();
                    let text = excerpt(&response.text().await.unwrap_or_default());
                    let retryable = status.is_server_error()
                        || matches!(code, 401 | 403 | 404 | 408 | 409 | 425 | 429);
                    if !retryable {
                        return Err(TicketApiError::Rejected {
                            url: self.url.clone(),
                            status: code,
                            body: text,
                        });
                    }
                    if matches!(code, 401 | 403 | 404) {
                        // Credentials or URL wrong: retrying now will not help; next run might.
                        return Err(unavailable(
                            attempts,
                            format!(
                                "HTTP {code} (check the target URL and its credential secret): {text}"
                            ),
                        ));
                    }
                    (format!("HTTP {code}: {text}"), hint)
                }
                Err(e) if e.is_timeout() => ("request timed out".to_string(), None),
                Err(e) => (format!("request failed: {}", error_chain(&e)), None),
            };
            if attempts >= self.retry.max_attempts {
                return Err(unavailable(attempts, detail));
            }
            let wait = wait_hint.unwrap_or(backoff).min(self.retry.max_backoff);
            if Instant::now() + wait >= deadline {
                return Err(unavailable(
                    attempts,
                    format!("{detail} (no time left to retry before the deadline)"),
                ));
            }
            tokio::time::sleep(wait).await;
            backoff = (backoff * 2).min(self.retry.max_backoff);
        }
    }
}

/// reqwest's message plus its causes: the top level alone ("error sending request for url")
/// hides what went wrong (a refused connection, `invalid peer certificate: UnknownIssuer`).
fn error_chain(e: &reqwest::Error) -> String {
    let mut detail = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        detail.push_str(": ");
        detail.push_str(&s.to_string());
        source = s.source();
    }
    detail
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auth_secret_forms_parse_and_errors_name_the_field() {
        assert!(matches!(
            TicketApiAuth::from_secret_json("s", r#"{"type":"bearer","token":"t"}"#),
            Ok(TicketApiAuth::Bearer(_))
        ));
        assert!(matches!(
            TicketApiAuth::from_secret_json(
                "s",
                r#"{"type":"api_key","header":"X-Key","key":"k"}"#
            ),
            Ok(TicketApiAuth::ApiKey { .. })
        ));
        let err = TicketApiAuth::from_secret_json("helpdesk", r#"{"type":"bearer"}"#).unwrap_err();
        assert!(err.contains("helpdesk") && err.contains("`token`"), "{err}");
        let err = TicketApiAuth::from_secret_json(
            "h",
            r#"{"type":"api_key","header":"bad header","key":"k"}"#,
        )
        .unwrap_err();
        assert!(err.contains("`header`"), "{err}");
        let debug = format!(
            "{:?}",
            TicketApiAuth::from_secret_json("s", r#"{"type":"bearer","token":"sekrit"}"#).unwrap()
        );
        assert!(!debug.contains("sekrit"));
    }

    #[test]
    fn payload_fields_match_the_json_schema() {
        let schema: serde_json::Value =
            serde_json::from_str(include_str!("../schemas/ticket-payload.schema.json")).unwrap();
        let payload = TicketPayload {
            schema: TICKET_PAYLOAD_SCHEMA.into(),
            mailbox: "m".into(),
            mailbox_address: "m@x".into(),
            received_at: chrono::Utc::now(),
            idempotency_key: "0".repeat(64),
            draft: serde_json::json!({}),
            attachments: vec![TicketAttachment {
                filename: None,
                content_type: "text/plain".into(),
                size: 1,
                inline: false,
                content_id: None,
                content_base64: None,
                omitted_reason: None,
            }],
            problem: None,
            raw_message_base64: None,
        };
        let value = serde_json::to_value(&payload).unwrap();
        let keys = |v: &serde_json::Value| {
            let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
            k.sort();
            k
        };
        let required = |v: &serde_json::Value| {
            let mut k: Vec<String> = v["required"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| s.as_str().unwrap().to_string())
                .collect();
            k.sort();
            k
        };
        assert_eq!(keys(&value), required(&schema));
        assert_eq!(keys(&schema["properties"]), required(&schema));
        let item_schema = &schema["properties"]["attachments"]["items"];
        assert_eq!(keys(&value["attachments"][0]), required(item_schema));
        assert_eq!(
            schema["properties"]["schema"]["const"],
            TICKET_PAYLOAD_SCHEMA
        );
    }

    #[test]
    fn retry_after_accepts_seconds_and_http_dates() {
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert(reqwest::header::RETRY_AFTER, "3".parse().unwrap());
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(3)));
        headers.insert(
            reqwest::header::RETRY_AFTER,
            "Wed, 21 Oct 2015 07:28:00 GMT".parse().unwrap(),
        );
        assert_eq!(retry_after(&headers), Some(Duration::ZERO));
    }
}
