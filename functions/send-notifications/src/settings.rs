//! Typed settings for send-notifications, parsed from the environment once per cold start.
//!
//! Every missing or invalid variable is reported at once, each naming the variable
//! ([`mailbridge::config::EnvReader`]).

use std::time::Duration;

/// Everything the handler needs to know from the environment.
#[derive(Clone, Debug)]
pub struct Settings {
    /// `MAILBRIDGE_STATE_TABLE`: the DynamoDB state table (idempotency records).
    pub state_table: String,
    /// `MAILBRIDGE_DLQ_URL`: where permanent failures are parked.
    pub dlq_url: String,
    /// `MAILBRIDGE_THREAD_KEY_SECRET`: secret holding the HMAC key for ticket thread markers.
    pub thread_key_secret: String,
    /// `MAILBRIDGE_GRAPH_URL` (default `https://graph.microsoft.com/v1.0`; national clouds differ).
    pub graph_url: String,
    /// Limits and timings used by the batch logic.
    pub batch: BatchSettings,
    /// `MAILBRIDGE_SECRET_PREFIX`, `MAILBRIDGE_TOKEN_WRITE_BACK_SECONDS`: the token layer's.
    pub tokens: mailbridge::token::TokenServiceConfig,
}

/// The knobs of the batch logic (plain values so tests can build them).
#[derive(Clone, Debug)]
pub struct BatchSettings {
    /// `MAILBRIDGE_MAX_IN_FLIGHT_PER_MAILBOX` (default 4: Graph's per-mailbox concurrency limit).
    pub max_in_flight_per_mailbox: usize,
    /// At most this many sends in flight per invocation, all mailboxes together.
    pub max_in_flight_total: usize,
    /// `MAILBRIDGE_REAUTH_VISIBILITY_SECONDS` (default 3600, at most 43200): how long a message of an
    /// account that needs re-consent stays invisible before it is tried again.
    pub reauth_visibility: Duration,
    /// Do not start a send when less than this is left before the invocation deadline.
    pub safety_margin: Duration,
    /// Upper bound of one Graph request.
    pub send_timeout: Duration,
    /// How many times one message may wait out a `Retry-After` within an invocation.
    pub max_retry_after_waits: u32,
    /// Lifetime of a completed idempotency record.
    pub completed_ttl: Duration,
    /// `MAILBRIDGE_MESSAGE_BUCKET`: the stack's message bucket. When set, a notification whose
    /// stored message names another bucket is parked (`message-object`) without reading it.
    pub message_bucket: Option<String>,
    /// `MAILBRIDGE_MAX_MESSAGE_BYTES` (default 36,700,160: Exchange Online's default
    /// `MaxSendSize` of 35 MB; at most 157,286,400, the largest Exchange Online allows): a
    /// larger message is parked as `too-large` before anything is sent.
    pub max_message_bytes: usize,
    /// `MAILBRIDGE_QUOTA_VISIBILITY_SECONDS` (default 10800, at most 43200): how long a
    /// notification waits when its mailbox hit the daily recipient limit and Graph gave no
    /// `Retry-After`. With the default 10 receives that covers Exchange's 24 h window.
    pub quota_visibility: Duration,
}

/// Exchange Online's default `MaxSendSize`: 35 MB (36,700,160 bytes).
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 35 * 1024 * 1024;
/// The largest `MaxSendSize` Exchange Online allows: 150 MB.
pub const LARGEST_MAX_MESSAGE_BYTES: usize = 150 * 1024 * 1024;

impl Default for BatchSettings {
    fn default() -> Self {
        BatchSettings {
            max_in_flight_per_mailbox: 4,
            max_in_flight_total: 32,
            reauth_visibility: Duration::from_secs(3600),
            safety_margin: Duration::from_secs(3),
            send_timeout: Duration::from_secs(20),
            max_retry_after_waits: 3,
            completed_ttl: mailbridge::state_table::DEFAULT_COMPLETED_TTL,
            quota_visibility: Duration::from_secs(10800),
            message_bucket: None,
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
        }
    }
}

pub use mailbridge::config::SettingsError;

impl Settings {
    /// Read the process environment.
    pub fn from_env() -> Result<Self, SettingsError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Read variables through `lookup` (testable without touching the process environment).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, SettingsError> {
        let mut env = mailbridge::config::EnvReader::new(lookup);
        let state_table = env.required("MAILBRIDGE_STATE_TABLE", "the DynamoDB state table name");
        let dlq_url = env.required(
            "MAILBRIDGE_DLQ_URL",
            "the dead-letter queue failed notifications are parked on",
        );
        let thread_key_secret = env.required(
            "MAILBRIDGE_THREAD_KEY_SECRET",
            "the secret holding the thread-marker HMAC key",
        );
        let graph_url = env
            .get("MAILBRIDGE_GRAPH_URL")
            .unwrap_or_else(|| mailbridge::graph::DEFAULT_GRAPH_URL.to_owned());
        if let Err(e) = mailbridge::graph::GraphClient::new(&graph_url) {
            env.problem("MAILBRIDGE_GRAPH_URL", e);
        }
        let defaults = BatchSettings::default();
        let batch = BatchSettings {
            max_in_flight_per_mailbox: env.number(
                "MAILBRIDGE_MAX_IN_FLIGHT_PER_MAILBOX",
                defaults.max_in_flight_per_mailbox,
                1..=64,
            ),
            // SQS's longest visibility timeout: 43,200 s
            reauth_visibility: env.seconds(
                "MAILBRIDGE_REAUTH_VISIBILITY_SECONDS",
                defaults.reauth_visibility,
                0..=43_200,
            ),
            quota_visibility: env.seconds(
                "MAILBRIDGE_QUOTA_VISIBILITY_SECONDS",
                defaults.quota_visibility,
                60..=43_200,
            ),
            // Exchange Online's largest MaxSendSize
            max_message_bytes: env.number(
                "MAILBRIDGE_MAX_MESSAGE_BYTES",
                defaults.max_message_bytes,
                1_000_000..=LARGEST_MAX_MESSAGE_BYTES,
            ),
            message_bucket: env.get("MAILBRIDGE_MESSAGE_BUCKET"),
            ..defaults
        };
        let tokens = mailbridge::token::TokenServiceConfig::from_env_reader(&mut env);
        env.finish(Settings {
            state_table,
            dlq_url,
            thread_key_secret,
            graph_url,
            batch,
            tokens,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_missing_or_bad_variable_is_named() {
        let err = Settings::from_lookup(|name| match name {
            "MAILBRIDGE_MAX_IN_FLIGHT_PER_MAILBOX" => Some("0".into()),
            "MAILBRIDGE_REAUTH_VISIBILITY_SECONDS" => Some("99999".into()),
            _ => None,
        })
        .unwrap_err()
        .to_string();
        for name in [
            "MAILBRIDGE_STATE_TABLE",
            "MAILBRIDGE_DLQ_URL",
            "MAILBRIDGE_THREAD_KEY_SECRET",
            "MAILBRIDGE_MAX_IN_FLIGHT_PER_MAILBOX",
            "MAILBRIDGE_REAUTH_VISIBILITY_SECONDS",
        ] {
            assert!(err.contains(name), "{name} not in {err}");
        }
    }

    #[test]
    fn defaults_apply() {
        let s = Settings::from_lookup(|name| match name {
            "MAILBRIDGE_STATE_TABLE" => Some("t".into()),
            "MAILBRIDGE_DLQ_URL" => Some("http://127.0.0.1/q".into()),
            "MAILBRIDGE_THREAD_KEY_SECRET" => Some("k".into()),
            _ => None,
        })
        .unwrap();
        assert_eq!(s.batch.max_in_flight_per_mailbox, 4);
        assert_eq!(s.batch.reauth_visibility, Duration::from_secs(3600));
    }
}
