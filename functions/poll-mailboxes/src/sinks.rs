//! The real [`SinkFactory`]: a [`WebhookTicketSink`] per (URL, credential secret), credentials
//! read from Secrets Manager once per cold start.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use mailbridge::aws::LazyClient;
use mailbridge::ticket_api::{RetryPolicy, TicketApiAuth, TicketSink, WebhookTicketSink};
use tokio::sync::Mutex;

use crate::config::MailboxConfig;
use crate::ports::SinkFactory;

/// (target URL, credential secret name).
type SinkKey = (String, Option<String>);

/// Webhook sinks with credentials from Secrets Manager.
pub struct WebhookSinkFactory {
    http: reqwest::Client,
    secrets: LazyClient<aws_sdk_secretsmanager::Client>,
    retry: RetryPolicy,
    cache: Mutex<HashMap<SinkKey, Arc<dyn TicketSink>>>,
}

impl WebhookSinkFactory {
    /// Build with a shared HTTP client and Secrets Manager client.
    pub fn new(
        http: reqwest::Client,
        secrets: impl Into<LazyClient<aws_sdk_secretsmanager::Client>>,
        retry: RetryPolicy,
    ) -> Self {
        WebhookSinkFactory {
            http,
            secrets: secrets.into(),
            retry,
            cache: Mutex::new(HashMap::new()),
        }
    }
}

#[async_trait]
impl SinkFactory for WebhookSinkFactory {
    async fn sink_for(&self, config: &MailboxConfig) -> Result<Arc<dyn TicketSink>, String> {
        let key = (
            config.ticket_api_url.clone(),
            config.ticket_api_secret.clone(),
        );
        let mut cache = self.cache.lock().await;
        if let Some(sink) = cache.get(&key) {
            return Ok(sink.clone());
        }
        let auth = match &config.ticket_api_secret {
            None => TicketApiAuth::None,
            Some(secret) => {
                let value = self
                    .secrets
                    .get_secret_value()
                    .secret_id(secret)
                    .version_stage("AWSCURRENT")
                    .send()
                    .await
                    .map_err(|e| {
                        format!(
                            "mailbox {}: cannot read ticket_api_secret {secret}: {}",
                            config.name,
                            aws_sdk_secretsmanager::error::DisplayErrorContext(&e)
                        )
                    })?;
                let text = value.secret_string().ok_or_else(|| {
                    format!(
                        "mailbox {}: ticket_api_secret {secret} has no string value",
                        config.name
                    )
                })?;
                TicketApiAuth::from_secret_json(secret, text)
                    .map_err(|e| format!("mailbox {}: {e}", config.name))?
            }
        };
        let sink: Arc<dyn TicketSink> = Arc::new(WebhookTicketSink::new(
            self.http.clone(),
            config.ticket_api_url.clone(),
            auth,
            self.retry.clone(),
        ));
        cache.insert(key, sink.clone());
        Ok(sink)
    }
}
