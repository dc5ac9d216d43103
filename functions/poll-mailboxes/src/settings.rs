//! The function's [`Settings`], from the environment. (Mailbox configurations, read from the
//! state table, are `mailbridge::mailbox`.)

use std::time::Duration;

pub use mailbridge::config::SettingsError;

/// The function's settings, read once per cold start.
#[derive(Clone, Debug)]
pub struct Settings {
    /// `MAILBRIDGE_STATE_TABLE`.
    pub state_table: String,
    /// `MAILBRIDGE_THREAD_KEY_SECRET`: secret holding the thread-marker HMAC key (plain string).
    pub thread_key_secret: String,
    /// `MAILBRIDGE_MAX_CONCURRENT_MAILBOXES` (default 8).
    pub max_concurrent_mailboxes: usize,
    /// `MAILBRIDGE_POLL_DEADLINE_MARGIN_SECONDS` (default 20): stop starting new messages when
    /// less than this is left of the invocation.
    pub deadline_margin: Duration,
    /// `MAILBRIDGE_IMAP_TIMEOUT_SECONDS` (default 30): per IMAP operation.
    pub imap_timeout: Duration,
    /// `MAILBRIDGE_GRAPH_URL` (default `https://graph.microsoft.com/v1.0`): where mailboxes with
    /// `protocol: graph` are read.
    pub graph_url: String,
    /// `MAILBRIDGE_IMAP_CA_FILE`: extra PEM trust anchors for IMAP TLS (private CA).
    pub imap_ca_file: Option<std::path::PathBuf>,
    /// `MAILBRIDGE_DEDUPE_TTL_DAYS` (default 30): how long dedupe records live.
    pub dedupe_ttl: Duration,
    /// `AWS_LAMBDA_FUNCTION_MEMORY_SIZE` (MB, set by Lambda): bounds the mail read whole
    /// ([`crate::memory`]). None outside Lambda: no bound beyond each mailbox's own.
    pub function_memory_mb: Option<u64>,
    /// `MAILBRIDGE_NOTIFICATION_URL`: the receive-notifications Function URL that Graph
    /// subscriptions of mailboxes with `push: true` notify (docs/push.md). Unset: no push
    /// subscriptions are made. https only (http on loopback with `MAILBRIDGE_ALLOW_LOCAL_TARGETS`).
    pub notification_url: Option<String>,
    /// `MAILBRIDGE_IMAP_HOSTS`, `MAILBRIDGE_SINK_HOSTS`, `MAILBRIDGE_ALLOW_LOCAL_TARGETS`: where
    /// mailbox configurations may point (`mailbridge::mailbox::targets`).
    pub targets: mailbridge::mailbox::TargetPolicy,
    /// `MAILBRIDGE_SECRET_PREFIX`, `MAILBRIDGE_TOKEN_WRITE_BACK_SECONDS`: the token layer's.
    pub tokens: mailbridge::token::TokenServiceConfig,
}

impl Settings {
    /// Read the process environment.
    pub fn from_env() -> Result<Self, SettingsError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Read from a variable lookup; every missing or invalid variable is named at once.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, SettingsError> {
        let mut env = mailbridge::config::EnvReader::new(get);
        let state_table = env.required("MAILBRIDGE_STATE_TABLE", "the DynamoDB state table name");
        let thread_key_secret = env.required(
            "MAILBRIDGE_THREAD_KEY_SECRET",
            "the secret holding the thread-marker HMAC key",
        );
        let targets = mailbridge::mailbox::TargetPolicy::from_env(&mut env);
        let function_memory_mb = env
            .get("AWS_LAMBDA_FUNCTION_MEMORY_SIZE")
            .is_some()
            .then(|| env.number("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", 128, 128..=10_240));
        let notification_url = env.get("MAILBRIDGE_NOTIFICATION_URL").filter(|v| {
            let problem = match url::Url::parse(v) {
                Err(e) => format!("{v:?} is not a URL ({e})"),
                Ok(url) if url.scheme() == "https" => return true,
                Ok(url) if url.scheme() == "http" && targets.allows_local() => return true,
                Ok(_) => format!("{v:?} must be an https URL (Graph notifies https only)"),
            };
            env.problem("MAILBRIDGE_NOTIFICATION_URL", problem);
            false
        });
        let graph_url = env
            .get("MAILBRIDGE_GRAPH_URL")
            .unwrap_or_else(|| mailbridge::graph::DEFAULT_GRAPH_URL.to_owned());
        if let Err(e) = mailbridge::graph::GraphClient::new(&graph_url) {
            env.problem("MAILBRIDGE_GRAPH_URL", e);
        }
        let settings = Settings {
            max_concurrent_mailboxes: env.number("MAILBRIDGE_MAX_CONCURRENT_MAILBOXES", 8, 1..=256),
            deadline_margin: env.seconds(
                "MAILBRIDGE_POLL_DEADLINE_MARGIN_SECONDS",
                Duration::from_secs(20),
                1..=600,
            ),
            imap_timeout: env.seconds(
                "MAILBRIDGE_IMAP_TIMEOUT_SECONDS",
                Duration::from_secs(30),
                1..=600,
            ),
            imap_ca_file: env.get("MAILBRIDGE_IMAP_CA_FILE").map(Into::into),
            dedupe_ttl: Duration::from_secs(
                env.number("MAILBRIDGE_DEDUPE_TTL_DAYS", 30, 1..=3650) * 86_400,
            ),
            tokens: mailbridge::token::TokenServiceConfig::from_env_reader(&mut env),
            notification_url,
            function_memory_mb,
            targets,
            state_table,
            thread_key_secret,
            graph_url,
        };
        env.finish(settings)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_name_every_missing_or_invalid_variable() {
        let err = Settings::from_lookup(|_| None).unwrap_err().to_string();
        for name in ["MAILBRIDGE_STATE_TABLE", "MAILBRIDGE_THREAD_KEY_SECRET"] {
            assert!(err.contains(&format!("{name}: is required")), "{err}");
        }
        let err = Settings::from_lookup(|k| match k {
            "MAILBRIDGE_STATE_TABLE" | "MAILBRIDGE_THREAD_KEY_SECRET" => Some("t".into()),
            "MAILBRIDGE_MAX_CONCURRENT_MAILBOXES" => Some("0".into()),
            "MAILBRIDGE_NOTIFICATION_URL" => Some("ftp://x".into()),
            _ => None,
        })
        .unwrap_err();
        assert_eq!(err.problems.len(), 2, "{err}");
        for name in [
            "MAILBRIDGE_MAX_CONCURRENT_MAILBOXES",
            "MAILBRIDGE_NOTIFICATION_URL",
        ] {
            let named = |p: &String| p.starts_with(&format!("{name}: "));
            assert!(err.problems.iter().any(named), "{name}: {err}");
        }
        let ok = Settings::from_lookup(|k| {
            matches!(k, "MAILBRIDGE_STATE_TABLE" | "MAILBRIDGE_THREAD_KEY_SECRET")
                .then(|| "t".into())
        })
        .unwrap();
        assert_eq!(ok.max_concurrent_mailboxes, 8);
    }
}
