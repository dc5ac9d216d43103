//! Configuration helpers: typed settings from the environment, URL validation.
//!
//! Every error names the variable or field that is wrong and what is wrong with it, so a
//! misconfigured Lambda fails at cold start with a message an operator can act on.

use std::str::FromStr;
use std::time::Duration;

/// A configuration value is missing or invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// A required environment variable is not set (or is empty).
    #[error("environment variable {name} is required but not set")]
    Missing {
        /// The variable's name.
        name: String,
    },
    /// A value is present but unusable.
    #[error("{field}: {problem}")]
    Invalid {
        /// The environment variable or field name.
        field: String,
        /// What is wrong, including the offending value when it is not a secret.
        problem: String,
    },
}

/// A missing or invalid environment variable, read through a lookup (a function's settings,
/// the mailbox target policy).
#[derive(Debug, thiserror::Error)]
#[error("environment variable {name}: {problem}")]
pub struct SettingsError {
    /// Variable name.
    pub name: &'static str,
    /// What is wrong.
    pub problem: String,
}

impl crate::error::Classify for ConfigError {
    fn class(&self) -> crate::error::ErrorClass {
        crate::error::ErrorClass::Permanent
    }
}

fn lookup(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// A required string variable.
pub fn env_required(name: &str) -> Result<String, ConfigError> {
    lookup(name).ok_or_else(|| ConfigError::Missing {
        name: name.to_owned(),
    })
}

/// An optional string variable with a default.
pub fn env_or(name: &str, default: &str) -> String {
    lookup(name).unwrap_or_else(|| default.to_owned())
}

/// An optional variable parsed with `FromStr`, with a default when unset.
pub fn env_parse_or<T>(name: &str, default: T) -> Result<T, ConfigError>
where
    T: FromStr,
    T::Err: std::fmt::Display,
{
    match lookup(name) {
        None => Ok(default),
        Some(raw) => raw.trim().parse::<T>().map_err(|e| ConfigError::Invalid {
            field: name.to_owned(),
            problem: format!("cannot parse {raw:?}: {e}"),
        }),
    }
}

/// An optional positive integer (>= 1) with a default.
pub fn env_positive_or(name: &str, default: u64) -> Result<u64, ConfigError> {
    let value = env_parse_or::<u64>(name, default)?;
    if value == 0 {
        return Err(ConfigError::Invalid {
            field: name.to_owned(),
            problem: "must be at least 1".to_owned(),
        });
    }
    Ok(value)
}

/// An optional duration in whole seconds with a default.
pub fn env_seconds_or(name: &str, default: Duration) -> Result<Duration, ConfigError> {
    Ok(Duration::from_secs(env_parse_or::<u64>(
        name,
        default.as_secs(),
    )?))
}

/// An optional boolean (`true/false/1/0/yes/no`) with a default.
pub fn env_bool_or(name: &str, default: bool) -> Result<bool, ConfigError> {
    match lookup(name) {
        None => Ok(default),
        Some(raw) => match raw.trim().to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "on" => Ok(true),
            "false" | "0" | "no" | "off" => Ok(false),
            _ => Err(ConfigError::Invalid {
                field: name.to_owned(),
                problem: format!("expected true or false, got {raw:?}"),
            }),
        },
    }
}

/// Environment variable: `true` (or `1`) lets configured targets be plain `http://` or loopback
/// hosts (`localhost`, 127.0.0.0/8, `::1`): mailbox configurations, an account secret's
/// `authority_host`, `MAILBRIDGE_GRAPH_URL`. Only the local stack and the tests set it; inside
/// Lambda 127.0.0.1:9001 is the Runtime API.
pub const ALLOW_LOCAL_TARGETS_VAR: &str = "MAILBRIDGE_ALLOW_LOCAL_TARGETS";

static LOCAL_TARGETS_ALLOWED_HERE: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

/// Let this process use loopback and plain http service URLs whatever the environment says: the
/// test harness and the local stack call it (their stand-ins listen on loopback). A deployed
/// function never does.
pub fn allow_local_targets_in_this_process() {
    LOCAL_TARGETS_ALLOWED_HERE.store(true, std::sync::atomic::Ordering::Relaxed);
}

/// Whether this process lets service URLs be plain http or loopback: [`ALLOW_LOCAL_TARGETS_VAR`]
/// (read from the environment once) or [`allow_local_targets_in_this_process`].
pub fn local_targets_allowed() -> bool {
    static FROM_ENV: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    LOCAL_TARGETS_ALLOWED_HERE.load(std::sync::atomic::Ordering::Relaxed)
        || *FROM_ENV.get_or_init(|| {
            matches!(
                std::env::var(ALLOW_LOCAL_TARGETS_VAR)
                    .as_deref()
                    .map(str::trim),
                Ok("true") | Ok("1")
            )
        })
}

/// True for `localhost`, `127.0.0.0/8` and `::1`.
pub fn is_loopback_host(host: &url::Host<&str>) -> bool {
    match host {
        url::Host::Domain(d) => d.eq_ignore_ascii_case("localhost"),
        url::Host::Ipv4(ip) => ip.is_loopback(),
        url::Host::Ipv6(ip) => ip.is_loopback(),
    }
}

/// Validate the base URL of a service mailbridge talks to (identity platform, Graph, ticket API).
///
/// `https` is required and loopback hosts are refused, unless this process allows local targets
/// ([`local_targets_allowed`]; then plain `http` is accepted for loopback hosts: the local
/// stand-ins). No credentials, query or fragment. Returns the parsed URL. `field` names the
/// variable or secret field in the error message.
pub fn validate_service_url(url: &str, field: &str) -> Result<url::Url, ConfigError> {
    validate_service_url_in(url, field, local_targets_allowed())
}

/// [`validate_service_url`] with the local-targets setting given.
pub fn validate_service_url_in(
    url: &str,
    field: &str,
    allow_local: bool,
) -> Result<url::Url, ConfigError> {
    let invalid = |problem: String| ConfigError::Invalid {
        field: field.to_owned(),
        problem,
    };
    let parsed = url::Url::parse(url.trim())
        .map_err(|e| invalid(format!("{url:?} is not a valid URL: {e}")))?;
    let host = parsed
        .host()
        .ok_or_else(|| invalid(format!("{url:?} has no host")))?;
    if is_loopback_host(&host) && !allow_local {
        return Err(invalid(format!(
            "{url:?} is a loopback host: allowed only with {ALLOW_LOCAL_TARGETS_VAR}=true (local stack and tests; inside Lambda 127.0.0.1:9001 is the Runtime API)"
        )));
    }
    match parsed.scheme() {
        "https" => {}
        "http" if is_loopback_host(&host) => {}
        "http" => {
            return Err(invalid(format!(
                "{url:?} must use https (plain http is only allowed for loopback hosts)"
            )));
        }
        other => {
            return Err(invalid(format!(
                "{url:?} has scheme {other:?}; expected https"
            )));
        }
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(invalid(
            "the URL must not contain credentials (user:password@)".to_owned(),
        ));
    }
    if parsed.query().is_some() || parsed.fragment().is_some() {
        return Err(invalid(format!(
            "{url:?} must not have a query or fragment"
        )));
    }
    Ok(parsed)
}

/// [`validate_service_url`] and return it as a string without a trailing slash, ready for
/// `format!("{base}/path")`.
pub fn service_base_url(url: &str, field: &str) -> Result<String, ConfigError> {
    let parsed = validate_service_url(url, field)?;
    Ok(parsed.as_str().trim_end_matches('/').to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn https_urls_are_accepted() {
        assert!(
            validate_service_url("https://login.microsoftonline.com", "authority_host").is_ok()
        );
        assert_eq!(
            service_base_url("https://graph.microsoft.us/", "graph_host").unwrap(),
            "https://graph.microsoft.us"
        );
    }

    #[test]
    fn http_is_only_accepted_for_loopback_hosts() {
        for ok in [
            "http://127.0.0.1:4000",
            "http://localhost:80/x",
            "http://[::1]:9",
            "http://127.0.0.2",
        ] {
            assert!(validate_service_url_in(ok, "f", true).is_ok(), "{ok}");
            let refused = validate_service_url_in(ok, "f", false).unwrap_err();
            assert!(
                refused.to_string().contains(ALLOW_LOCAL_TARGETS_VAR),
                "{ok}: {refused}"
            );
        }
        assert!(validate_service_url_in("https://127.0.0.1:4000", "f", false).is_err());
        let err = validate_service_url("http://login.example.com", "authority_host").unwrap_err();
        assert!(err.to_string().starts_with("authority_host:"), "{err}");
        assert!(err.to_string().contains("https"), "{err}");
        assert!(validate_service_url("http://localhost.evil.com", "f").is_err());
        assert!(validate_service_url("http://127.0.0.1.nip.io", "f").is_err());
    }

    #[test]
    fn other_schemes_credentials_and_garbage_are_rejected() {
        for bad in [
            "ftp://x.example",
            "https://user:pw@x.example",
            "not a url",
            "https://x.example/?a=b",
            "file:///etc/passwd",
        ] {
            let err = validate_service_url(bad, "ticket_api_url").unwrap_err();
            assert!(err.to_string().contains("ticket_api_url"), "{bad}: {err}");
        }
    }
}
