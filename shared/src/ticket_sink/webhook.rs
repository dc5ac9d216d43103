//! The generic JSON webhook: `POST <url>` with the [`TicketPayload`] as JSON (schema:
//! `shared/schemas/ticket-payload.schema.json`), an `Idempotency-Key` header, and an auth header
//! taken from a secret ([`WebhookAuth`]). The receiver decides between a new ticket and a reply
//! (the draft's signed `ticket_number`; the subject's `subject_ticket_number` only once it has
//! checked the sender, as neither proves who sent the mail) and must honour `Idempotency-Key`.
//!
//! # Answers
//! 2xx accepts (`{"id": …}` or `{"ticket_id": …}` is kept as the ticket id); a receiver that
//! answers a repeated `Idempotency-Key` from its record says so with `Idempotent-Replayed: true`
//! (the convention of idempotent HTTP APIs), and the mail is then not counted as a new ticket. 429, 5xx and
//! timeouts are retried ([`crate::retry`]); then the mail stays for the next run. 401/403: the
//! credentials are refused; 404: the URL is wrong; 409: the same key is still being processed —
//! all leave the mail in place. Other 4xx (400, 413, 422...) mean this payload will never be
//! accepted: the mail is parked.

use async_trait::async_trait;
use secrecy::{ExposeSecret as _, SecretString};
use tokio::time::Instant;

use super::{DeliveryPlan, SinkCheck, TicketPayload, TicketReceipt, TicketSink, TicketSinkError};
use crate::retry::{RetryPolicy, excerpt, send_with_retry};

/// How the webhook authenticates, read from a Secrets Manager secret (JSON).
///
/// `{"type":"bearer","token":"..."}` → `Authorization: Bearer ...`;
/// `{"type":"api_key","header":"X-API-Key","key":"..."}` → that header;
/// `{"type":"none"}` → nothing.
#[derive(Clone)]
pub enum WebhookAuth {
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

impl std::fmt::Debug for WebhookAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WebhookAuth::None => f.write_str("None"),
            WebhookAuth::Bearer(_) => f.write_str("Bearer([redacted])"),
            WebhookAuth::ApiKey { header, .. } => write!(f, "ApiKey({header}: [redacted])"),
        }
    }
}

impl WebhookAuth {
    /// Parse the secret's JSON; the error names the field and never echoes the value.
    pub fn from_secret_json(secret_name: &str, json: &str) -> Result<Self, String> {
        let secret = super::SecretJson::parse(secret_name, json)?;
        let field = |name: &str| secret.field(name);
        match field("type")?.as_str() {
            "none" => Ok(WebhookAuth::None),
            "bearer" => Ok(WebhookAuth::Bearer(SecretString::from(field("token")?))),
            "api_key" => {
                let header = field("header")?;
                reqwest::header::HeaderName::from_bytes(header.as_bytes()).map_err(|_| {
                    format!("secret {secret_name}: field `header` is not a valid header name")
                })?;
                Ok(WebhookAuth::ApiKey {
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

    fn apply(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match self {
            WebhookAuth::None => request,
            WebhookAuth::Bearer(token) => request.bearer_auth(token.expose_secret()),
            WebhookAuth::ApiKey { header, key } => {
                request.header(header.as_str(), key.expose_secret())
            }
        }
    }
}

/// The generic JSON webhook adapter.
#[derive(Clone, Debug)]
pub struct WebhookTicketSink {
    client: reqwest::Client,
    url: String,
    auth: WebhookAuth,
    retry: RetryPolicy,
}

impl WebhookTicketSink {
    /// A sink posting to `url` (already validated: https, or http on loopback).
    pub fn new(
        client: reqwest::Client,
        url: String,
        auth: WebhookAuth,
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

#[async_trait]
impl TicketSink for WebhookTicketSink {
    async fn plan(
        &self,
        _payload: &TicketPayload,
        _deadline: Instant,
    ) -> Result<DeliveryPlan, TicketSinkError> {
        Ok(DeliveryPlan::Webhook {
            url: self.url.clone(),
        })
    }

    async fn deliver(
        &self,
        payload: &TicketPayload,
        idempotency_key: &str,
        deadline: Instant,
    ) -> Result<TicketReceipt, TicketSinkError> {
        let body = bytes::Bytes::from(
            serde_json::to_vec(payload).map_err(|e| TicketSinkError::Encode(e.to_string()))?,
        );
        let answered = send_with_retry(&self.retry, deadline, || {
            self.auth.apply(
                self.client
                    .post(&self.url)
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .header("Idempotency-Key", idempotency_key)
                    .body(body.clone()),
            )
        })
        .await
        .map_err(|gave_up| TicketSinkError::gave_up(&self.url, gave_up))?;
        let status = answered.response.status();
        let replayed = answered
            .response
            .headers()
            .get("idempotent-replayed")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("true"));
        let text = if status.is_success() {
            // Only the ticket id is read from a success answer: one too large to read is still
            // an accepted mail, without an id.
            crate::http::read_text(answered.response, crate::http::MAX_ANSWER_BYTES)
                .await
                .unwrap_or_else(|e| {
                    tracing::warn!(target_url = %self.url, error = %e, "webhook answer not read; no ticket id");
                    String::new()
                })
        } else {
            crate::http::read_excerpt(answered.response).await
        };
        if status.is_success() {
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
                action: DeliveryPlan::Webhook {
                    url: self.url.clone(),
                },
                ticket_id,
                attempts: answered.attempts,
                replayed,
                // the receiver has the ticket's participants, not mailbridge
                sender: super::SenderCheck::NotChecked,
            });
        }
        let code = status.as_u16();
        let body = excerpt(&text);
        Err(match code {
            401 | 403 => TicketSinkError::CredentialsRefused {
                target: self.url.clone(),
                status: code,
                detail: body,
            },
            404 => TicketSinkError::Config {
                target: self.url.clone(),
                detail: format!("HTTP 404 (check the webhook URL): {body}"),
            },
            409 => TicketSinkError::Unavailable {
                target: self.url.clone(),
                attempts: answered.attempts,
                detail: format!("HTTP 409 (the same Idempotency-Key is still in progress): {body}"),
            },
            _ => TicketSinkError::Rejected {
                target: self.url.clone(),
                status: code,
                body,
            },
        })
    }

    async fn check(&self, deadline: Instant) -> Result<SinkCheck, TicketSinkError> {
        // A webhook has no read call of its own: an OPTIONS request shows the URL is reached
        // and served (any HTTP answer but 401/403/404), without creating anything.
        let policy = RetryPolicy {
            max_attempts: 2,
            ..self.retry.clone()
        };
        let answered = send_with_retry(&policy, deadline, || {
            self.auth
                .apply(self.client.request(reqwest::Method::OPTIONS, &self.url))
        })
        .await
        .map_err(|gave_up| TicketSinkError::gave_up(&self.url, gave_up))?;
        let code = answered.response.status().as_u16();
        match code {
            401 | 403 => Err(TicketSinkError::CredentialsRefused {
                target: self.url.clone(),
                status: code,
                detail: "the webhook refused the credentials".into(),
            }),
            404 => Err(TicketSinkError::Config {
                target: self.url.clone(),
                detail: "HTTP 404: nothing is served at this URL".into(),
            }),
            _ => Ok(SinkCheck {
                summary: format!("webhook {} answers (HTTP {code})", self.url),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auth_secret_forms_parse_and_errors_name_the_field() {
        assert!(matches!(
            WebhookAuth::from_secret_json("s", r#"{"type":"bearer","token":"t"}"#),
            Ok(WebhookAuth::Bearer(_))
        ));
        assert!(matches!(
            WebhookAuth::from_secret_json("s", r#"{"type":"api_key","header":"X-Key","key":"k"}"#),
            Ok(WebhookAuth::ApiKey { .. })
        ));
        let err = WebhookAuth::from_secret_json("helpdesk", r#"{"type":"bearer"}"#).unwrap_err();
        assert!(err.contains("helpdesk") && err.contains("`token`"), "{err}");
        let err = WebhookAuth::from_secret_json(
            "h",
            r#"{"type":"api_key","header":"bad header","key":"k"}"#,
        )
        .unwrap_err();
        assert!(err.contains("`header`"), "{err}");
        let debug = format!(
            "{:?}",
            WebhookAuth::from_secret_json("s", r#"{"type":"bearer","token":"sekrit"}"#).unwrap()
        );
        assert!(!debug.contains("sekrit"));
    }
}
