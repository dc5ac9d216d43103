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
}

impl Settings {
    /// Read from a variable lookup (the process environment in `main`).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, SettingsError> {
        let number = |name: &'static str, default: u64, min: u64, max: u64| match get(name)
            .filter(|v| !v.trim().is_empty())
        {
            None => Ok(default),
            Some(v) => match v.trim().parse::<u64>() {
                Ok(n) if (min..=max).contains(&n) => Ok(n),
                _ => Err(SettingsError {
                    name,
                    problem: format!("{v:?} is not a whole number between {min} and {max}"),
                }),
            },
        };
        let state_table = get("MAILBRIDGE_STATE_TABLE")
            .filter(|v| !v.trim().is_empty())
            .ok_or(SettingsError {
                name: "MAILBRIDGE_STATE_TABLE",
                problem: "is required (the DynamoDB state table name)".into(),
            })?;
        let thread_key_secret = get("MAILBRIDGE_THREAD_KEY_SECRET")
            .filter(|v| !v.trim().is_empty())
            .ok_or(SettingsError {
                name: "MAILBRIDGE_THREAD_KEY_SECRET",
                problem: "is required (the secret holding the thread-marker HMAC key)".into(),
            })?;
        let targets = mailbridge::mailbox::TargetPolicy::from_lookup(&get)?;
        let function_memory_mb =
            match get("AWS_LAMBDA_FUNCTION_MEMORY_SIZE").filter(|v| !v.trim().is_empty()) {
                None => None,
                Some(_) => Some(number("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", 128, 128, 10_240)?),
            };
        let notification_url = match get("MAILBRIDGE_NOTIFICATION_URL")
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
        {
            None => None,
            Some(v) => {
                let bad = |problem: &str| SettingsError {
                    name: "MAILBRIDGE_NOTIFICATION_URL",
                    problem: format!("{v:?} {problem}"),
                };
                let url = url::Url::parse(&v).map_err(|e| bad(&format!("is not a URL ({e})")))?;
                match url.scheme() {
                    "https" => {}
                    "http" if targets.allows_local() => {}
                    _ => return Err(bad("must be an https URL (Graph notifies https only)")),
                }
                Some(v)
            }
        };
        Ok(Settings {
            notification_url,
            function_memory_mb,
            targets,
            state_table,
            thread_key_secret,
            max_concurrent_mailboxes: number("MAILBRIDGE_MAX_CONCURRENT_MAILBOXES", 8, 1, 256)?
                as usize,
            deadline_margin: Duration::from_secs(number(
                "MAILBRIDGE_POLL_DEADLINE_MARGIN_SECONDS",
                20,
                1,
                600,
            )?),
            imap_timeout: Duration::from_secs(number(
                "MAILBRIDGE_IMAP_TIMEOUT_SECONDS",
                30,
                1,
                600,
            )?),
            graph_url: get("MAILBRIDGE_GRAPH_URL")
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
                .unwrap_or_else(|| mailbridge::graph::DEFAULT_GRAPH_URL.to_owned()),
            imap_ca_file: get("MAILBRIDGE_IMAP_CA_FILE")
                .filter(|v| !v.trim().is_empty())
                .map(Into::into),
            dedupe_ttl: Duration::from_secs(
                number("MAILBRIDGE_DEDUPE_TTL_DAYS", 30, 1, 3650)? * 86_400,
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_name_the_variable() {
        let err = Settings::from_lookup(|_| None).unwrap_err();
        assert_eq!(err.name, "MAILBRIDGE_STATE_TABLE");
        let err = Settings::from_lookup(|k| match k {
            "MAILBRIDGE_STATE_TABLE" | "MAILBRIDGE_THREAD_KEY_SECRET" => Some("t".into()),
            "MAILBRIDGE_MAX_CONCURRENT_MAILBOXES" => Some("0".into()),
            _ => None,
        })
        .unwrap_err();
        assert_eq!(err.name, "MAILBRIDGE_MAX_CONCURRENT_MAILBOXES");
        let err = Settings::from_lookup(|k| (k == "MAILBRIDGE_STATE_TABLE").then(|| "t".into()))
            .unwrap_err();
        assert_eq!(err.name, "MAILBRIDGE_THREAD_KEY_SECRET");
        let ok = Settings::from_lookup(|k| {
            matches!(k, "MAILBRIDGE_STATE_TABLE" | "MAILBRIDGE_THREAD_KEY_SECRET")
                .then(|| "t".into())
        })
        .unwrap();
        assert_eq!(ok.max_concurrent_mailboxes, 8);
    }
}
