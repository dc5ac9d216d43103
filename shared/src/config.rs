//! Configuration helpers: typed settings from the environment, URL validation.
//!
//! Every error names the variable or field that is wrong and what is wrong with it, so a
//! misconfigured Lambda fails at cold start with a message an operator can act on.

use std::str::FromStr;
use std::time::Duration;

/// A configured value (a URL, a secret's field) is unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct ConfigError {
    /// The environment variable or field name.
    pub field: String,
    /// What is wrong, including the offending value when it is not a secret.
    pub problem: String,
}

/// A function's environment is unusable: every missing or invalid variable, each named, so one
/// cold start reports all of them.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("environment: {}", .problems.join("; "))]
pub struct SettingsError {
    /// One entry per problem, each starting with the variable's name.
    pub problems: Vec<String>,
}

/// Reads variables through a lookup (the process environment in `main`, a map in tests) and
/// collects what is wrong with them: each function's settings are read with one of these and
/// end with [`EnvReader::finish`]. A variable set to blank space counts as unset.
pub struct EnvReader<F> {
    get: F,
    problems: Vec<String>,
}

impl<F: Fn(&str) -> Option<String>> EnvReader<F> {
    /// A reader over `get`.
    pub fn new(get: F) -> Self {
        EnvReader {
            get,
            problems: Vec::new(),
        }
    }

    /// The variable's value, trimmed; None when unset or blank.
    pub fn get(&self, name: &str) -> Option<String> {
        (self.get)(name)
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
    }

    /// Note a problem with `name`'s value (`problem` says what is wrong).
    pub fn problem(&mut self, name: &str, problem: impl std::fmt::Display) {
        self.problems.push(format!("{name}: {problem}"));
    }

    /// A required variable; `what` says what it holds (for the message when it is missing).
    pub fn required(&mut self, name: &str, what: &str) -> String {
        self.get(name).unwrap_or_else(|| {
            self.problem(name, format_args!("is required ({what})"));
            String::new()
        })
    }

    /// An optional whole number in `range`, `default` when unset.
    pub fn number<T>(&mut self, name: &str, default: T, range: std::ops::RangeInclusive<T>) -> T
    where
        T: FromStr + PartialOrd + std::fmt::Display + Copy,
    {
        let Some(raw) = self.get(name) else {
            return default;
        };
        match raw.parse::<T>() {
            Ok(n) if range.contains(&n) => n,
            _ => {
                self.problem(
                    name,
                    format_args!(
                        "{raw:?} is not a whole number from {} to {}",
                        range.start(),
                        range.end()
                    ),
                );
                default
            }
        }
    }

    /// An optional duration in whole seconds within `range` (seconds), `default` when unset.
    pub fn seconds(
        &mut self,
        name: &str,
        default: Duration,
        range: std::ops::RangeInclusive<u64>,
    ) -> Duration {
        Duration::from_secs(self.number(name, default.as_secs(), range))
    }

    /// An optional `true`/`false` (also `1`/`0`), `default` when unset.
    pub fn flag(&mut self, name: &str, default: bool) -> bool {
        match self.get(name).as_deref() {
            None => default,
            Some("true") | Some("1") => true,
            Some("false") | Some("0") => false,
            Some(other) => {
                self.problem(name, format_args!("{other:?} is not true or false"));
                default
            }
        }
    }

    /// `value` when no variable was missing or invalid, else every problem.
    pub fn finish<T>(self, value: T) -> Result<T, SettingsError> {
        if self.problems.is_empty() {
            Ok(value)
        } else {
            Err(SettingsError {
                problems: self.problems,
            })
        }
    }
}

impl crate::error::Classify for ConfigError {
    fn class(&self) -> crate::error::ErrorClass {
        crate::error::ErrorClass::Permanent
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
    let invalid = |problem: String| ConfigError {
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
    fn the_env_reader_names_every_missing_or_invalid_variable_at_once() {
        let vars = [("N", "70"), ("B", "maybe"), ("S", " 5 "), ("BLANK", "  ")];
        let mut env = EnvReader::new(|k: &str| {
            vars.iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        });
        assert_eq!(env.required("BLANK", "a table"), "");
        assert_eq!(env.number("N", 8u32, 1..=64), 8);
        assert!(env.flag("B", true));
        assert_eq!(
            env.seconds("S", Duration::from_secs(1), 1..=10),
            Duration::from_secs(5)
        );
        assert_eq!(env.number("UNSET", 3u64, 1..=9), 3);
        let e = env.finish(()).unwrap_err();
        assert_eq!(
            e.to_string(),
            "environment: BLANK: is required (a table); N: \"70\" is not a whole number from 1 \
             to 64; B: \"maybe\" is not true or false"
        );
        let mut ok = EnvReader::new(|_: &str| None);
        assert!(!ok.flag("X", false));
        assert_eq!(ok.finish(7).unwrap(), 7);
    }

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
