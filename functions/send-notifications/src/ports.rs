//! The ports the batch logic needs beyond the shared ones (token source, mail sender,
//! idempotency store), and their SQS adapters: parking a message in the DLQ, and delaying a
//! message with `ChangeMessageVisibility`.

use async_trait::async_trait;
use aws_sdk_sqs::types::MessageAttributeValue;
use mailbridge::aws::LazyClient;
use std::collections::HashMap;
use std::sync::Mutex;

/// Why a message is parked, written as DLQ message attributes (`mailbridge.*`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ParkReason {
    /// Short machine-readable kind: `invalid-message`, `graph-rejected`, `bad-account-secret`,
    /// `id-reused`.
    pub kind: String,
    /// Human-readable reason (names the field / Graph error code).
    pub reason: String,
    /// The offending field, when known.
    pub field: Option<String>,
    /// The source queue's message id.
    pub sqs_message_id: String,
    /// The notification id, when the message parsed.
    pub notification_id: Option<String>,
    /// The account, when the message parsed.
    pub account: Option<String>,
    /// Graph's error code and request-id, when Graph answered.
    pub graph_code: Option<String>,
    /// Graph's `request-id`.
    pub graph_request_id: Option<String>,
}

impl ParkReason {
    /// The attributes as name → value (at most 10, SQS's limit).
    pub fn attributes(&self) -> Vec<(&'static str, String)> {
        let mut a = vec![
            ("mailbridge.kind", self.kind.clone()),
            ("mailbridge.reason", truncate(&self.reason, 2048)),
            ("mailbridge.sqs-message-id", self.sqs_message_id.clone()),
            ("mailbridge.parked-at", chrono::Utc::now().to_rfc3339()),
        ];
        let optional = [
            ("mailbridge.field", &self.field),
            ("mailbridge.notification-id", &self.notification_id),
            ("mailbridge.account", &self.account),
            ("mailbridge.graph-code", &self.graph_code),
            ("mailbridge.graph-request-id", &self.graph_request_id),
        ];
        for (name, value) in optional {
            if let Some(v) = value.as_ref().filter(|v| !v.is_empty()) {
                a.push((name, truncate(v, 512)));
            }
        }
        a
    }
}

fn truncate(s: &str, max: usize) -> String {
    s.chars().take(max).collect()
}

/// Parking failed (the item must then be reported as failed, never dropped).
#[derive(Debug, thiserror::Error)]
#[error("cannot park message in DLQ {queue}: {detail}")]
pub struct ParkError {
    /// DLQ URL.
    pub queue: String,
    /// What SQS said.
    pub detail: String,
}

/// Port: put a message that can never succeed somewhere a person will look.
#[async_trait]
pub trait Parking: Send + Sync {
    /// Store `body` with `reason`.
    async fn park(&self, body: &str, reason: &ParkReason) -> Result<(), ParkError>;
}

/// `ChangeMessageVisibility` failed.
#[derive(Debug, thiserror::Error)]
#[error("cannot change visibility of a message of {queue_arn}: {detail}")]
pub struct VisibilityError {
    /// Source queue ARN.
    pub queue_arn: String,
    /// What SQS said.
    pub detail: String,
}

/// Port: keep a message invisible for a while (a failed item then waits that long).
#[async_trait]
pub trait Visibility: Send + Sync {
    /// Set the visibility timeout of the message behind `receipt_handle`.
    async fn delay(
        &self,
        queue_arn: &str,
        receipt_handle: &str,
        seconds: i32,
    ) -> Result<(), VisibilityError>;
}

/// The DLQ adapter: `SendMessage` with the reason as message attributes.
#[derive(Clone, Debug)]
pub struct SqsParking {
    client: LazyClient<aws_sdk_sqs::Client>,
    dlq_url: String,
}

impl SqsParking {
    /// Park into `dlq_url`.
    pub fn new(
        client: impl Into<LazyClient<aws_sdk_sqs::Client>>,
        dlq_url: impl Into<String>,
    ) -> Self {
        SqsParking {
            client: client.into(),
            dlq_url: dlq_url.into(),
        }
    }
}

#[async_trait]
impl Parking for SqsParking {
    async fn park(&self, body: &str, reason: &ParkReason) -> Result<(), ParkError> {
        let mut request = self
            .client
            .send_message()
            .queue_url(&self.dlq_url)
            .message_body(if body.is_empty() { "(empty)" } else { body });
        for (name, value) in reason.attributes() {
            let value = MessageAttributeValue::builder()
                .data_type("String")
                .string_value(value)
                .build()
                .map_err(|e| ParkError {
                    queue: self.dlq_url.clone(),
                    detail: e.to_string(),
                })?;
            request = request.message_attributes(name, value);
        }
        request.send().await.map_err(|e| ParkError {
            queue: self.dlq_url.clone(),
            detail: mailbridge::error::error_chain(&e),
        })?;
        Ok(())
    }
}

/// The visibility adapter. Resolves the queue URL from the event's ARN (`GetQueueUrl`, cached).
#[derive(Debug)]
pub struct SqsVisibility {
    client: LazyClient<aws_sdk_sqs::Client>,
    urls: Mutex<HashMap<String, String>>,
}

impl SqsVisibility {
    /// Use `client` (a client, or a [`LazyClient`] built on first use).
    pub fn new(client: impl Into<LazyClient<aws_sdk_sqs::Client>>) -> Self {
        SqsVisibility {
            client: client.into(),
            urls: Mutex::new(HashMap::new()),
        }
    }

    async fn queue_url(&self, queue_arn: &str) -> Result<String, VisibilityError> {
        if let Some(url) = self.urls.lock().expect("lock").get(queue_arn) {
            return Ok(url.clone());
        }
        let err = |detail: String| VisibilityError {
            queue_arn: queue_arn.to_owned(),
            detail,
        };
        // arn:aws:sqs:<region>:<account>:<name>
        let parts: Vec<&str> = queue_arn.split(':').collect();
        let [_, _, "sqs", _, account, name] = parts.as_slice() else {
            return Err(err("not an SQS queue ARN".into()));
        };
        let url = self
            .client
            .get_queue_url()
            .queue_name(*name)
            .queue_owner_aws_account_id(*account)
            .send()
            .await
            .map_err(|e| err(mailbridge::error::error_chain(&e)))?
            .queue_url
            .ok_or_else(|| err("GetQueueUrl returned no URL".into()))?;
        self.urls
            .lock()
            .expect("lock")
            .insert(queue_arn.to_owned(), url.clone());
        Ok(url)
    }
}

#[async_trait]
impl Visibility for SqsVisibility {
    async fn delay(
        &self,
        queue_arn: &str,
        receipt_handle: &str,
        seconds: i32,
    ) -> Result<(), VisibilityError> {
        let url = self.queue_url(queue_arn).await?;
        self.client
            .change_message_visibility()
            .queue_url(url)
            .receipt_handle(receipt_handle)
            .visibility_timeout(seconds)
            .send()
            .await
            .map_err(|e| VisibilityError {
                queue_arn: queue_arn.to_owned(),
                detail: mailbridge::error::error_chain(&e),
            })?;
        Ok(())
    }
}
