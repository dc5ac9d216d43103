//! The real [`SinkFactory`]: each mailbox's ticket sink (webhook, Request Tracker,
//! django-helpdesk) built from its `sink` configuration, credentials read from Secrets Manager
//! once per cold start and shared by the mailboxes that name the same sink.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use mailbridge::aws::LazyClient;
use mailbridge::retry::RetryPolicy;
use mailbridge::ticket_sink::{SinkConfig, TicketSink};
use tokio::sync::Mutex;

use crate::ports::SinkFactory;
use mailbridge::mailbox::MailboxConfig;

/// Sinks with credentials from Secrets Manager, cached by their whole configuration.
pub struct SecretsSinkFactory {
    http: reqwest::Client,
    secrets: LazyClient<aws_sdk_secretsmanager::Client>,
    retry: RetryPolicy,
    cache: Mutex<HashMap<String, Arc<dyn TicketSink>>>,
}

impl SecretsSinkFactory {
    /// Build with a shared HTTP client and Secrets Manager client.
    pub fn new(
        http: reqwest::Client,
        secrets: impl Into<LazyClient<aws_sdk_secretsmanager::Client>>,
        retry: RetryPolicy,
    ) -> Self {
        SecretsSinkFactory {
            http,
            secrets: secrets.into(),
            retry,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// The sink of `sink` (not cached): what `mailbridge mailbox add` checks before storing.
    pub async fn build(&self, sink: &SinkConfig) -> Result<Arc<dyn TicketSink>, String> {
        let secret_json = match sink.secret() {
            None => None,
            Some(secret) => Some(read_secret(&self.secrets, secret).await?),
        };
        sink.build(
            self.http.clone(),
            secret_json.as_deref(),
            self.retry.clone(),
        )
    }
}

async fn read_secret(
    secrets: &LazyClient<aws_sdk_secretsmanager::Client>,
    secret: &str,
) -> Result<String, String> {
    let value = secrets
        .get_secret_value()
        .secret_id(secret)
        .version_stage("AWSCURRENT")
        .send()
        .await
        .map_err(|e| {
            format!(
                "cannot read the sink's credential secret {secret}: {}",
                mailbridge::error::error_chain(&e)
            )
        })?;
    value
        .secret_string()
        .map(str::to_string)
        .ok_or_else(|| format!("the sink's credential secret {secret} has no string value"))
}

#[async_trait]
impl SinkFactory for SecretsSinkFactory {
    async fn sink_for(&self, config: &MailboxConfig) -> Result<Arc<dyn TicketSink>, String> {
        let key = serde_json::to_string(&config.sink).unwrap_or_default();
        let mut cache = self.cache.lock().await;
        if let Some(sink) = cache.get(&key) {
            return Ok(sink.clone());
        }
        let sink = self
            .build(&config.sink)
            .await
            .map_err(|e| format!("mailbox {}: {e}", config.name))?;
        cache.insert(key, sink.clone());
        Ok(sink)
    }
}
