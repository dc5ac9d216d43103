//! Where a mailbox configuration may point: [`TargetPolicy`].
//!
//! A mailbox's IMAP `host` receives the account's IMAP access token, and its ticket API (the
//! sink URL) receives every parsed mail and the ticket-API credentials. Whoever can write a
//! `mailbox#` item could otherwise send both anywhere, so each host must be on an allowlist of the
//! deployment: IMAP hosts default to Microsoft's ([`MICROSOFT_IMAP_HOSTS`]), ticket API hosts
//! have no default (each deployment names its helpdesks). The same check runs when a
//! configuration is written (`mailbridge mailbox add`, [`crate::state_table::put_mailbox_config`]) and
//! when the poller reads it (a refused mailbox is a per-mailbox `config_error`).
//!
//! Plain `http://` and loopback hosts (`localhost`, 127.0.0.0/8, `::1`) are refused unless
//! `MAILBRIDGE_ALLOW_LOCAL_TARGETS` is true: inside Lambda, 127.0.0.1:9001 is the Runtime API.
//! Only the local stack, the demo and the tests set it.

use super::config::{ConfigError, MailboxConfig};
use crate::config::{EnvReader, SettingsError};

/// IMAP hosts allowed by default: Exchange Online worldwide (also GCC), US Government GCC High,
/// US Government DoD, and Microsoft 365 operated by 21Vianet.
pub const MICROSOFT_IMAP_HOSTS: &[&str] = &[
    "outlook.office365.com",
    "outlook.office365.us",
    "outlook-dod.office365.us",
    "partner.outlook.cn",
];

/// Environment variable: the allowed IMAP hosts (comma-separated; `*.example.com` allows the
/// subdomains of example.com). Unset or empty: [`MICROSOFT_IMAP_HOSTS`].
pub const IMAP_HOSTS_VAR: &str = "MAILBRIDGE_IMAP_HOSTS";
/// Environment variable: the allowed ticket API hosts (same form). Unset: none.
pub const SINK_HOSTS_VAR: &str = "MAILBRIDGE_SINK_HOSTS";
/// Environment variable: `true` allows plain http and loopback hosts (local stack, tests).
pub const ALLOW_LOCAL_VAR: &str = crate::config::ALLOW_LOCAL_TARGETS_VAR;

/// One allowlist entry: a host name, or `*.domain` for every subdomain of `domain`.
#[derive(Clone, Debug, PartialEq, Eq)]
enum HostPattern {
    Exact(String),
    Subdomains(String),
}

impl HostPattern {
    fn parse(entry: &str) -> Result<Self, String> {
        let entry = entry.trim().trim_end_matches('.').to_ascii_lowercase();
        let (pattern, name) = match entry.strip_prefix("*.") {
            Some(domain) => (HostPattern::Subdomains(domain.to_string()), domain),
            None => (HostPattern::Exact(entry.clone()), entry.as_str()),
        };
        let valid = !name.is_empty()
            && name.len() <= 253
            && name.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && label
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            });
        // `*.com` would allow a whole top-level domain.
        let too_wide = matches!(pattern, HostPattern::Subdomains(_)) && !name.contains('.');
        if !valid || too_wide {
            return Err(format!(
                "{entry:?} is not a host name or `*.domain` (no scheme, port, path or bare `*`)"
            ));
        }
        Ok(pattern)
    }

    fn matches(&self, host: &str) -> bool {
        match self {
            HostPattern::Exact(name) => host == name,
            HostPattern::Subdomains(domain) => host
                .strip_suffix(domain.as_str())
                .is_some_and(|rest| rest.len() > 1 && rest.ends_with('.')),
        }
    }

    fn as_string(&self) -> String {
        match self {
            HostPattern::Exact(name) => name.clone(),
            HostPattern::Subdomains(domain) => format!("*.{domain}"),
        }
    }
}

/// The hosts mailbox configurations may point at (see the module docs).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TargetPolicy {
    imap_hosts: Vec<HostPattern>,
    sink_hosts: Vec<HostPattern>,
    allow_local: bool,
}

impl TargetPolicy {
    /// From the environment: [`IMAP_HOSTS_VAR`], [`SINK_HOSTS_VAR`], [`ALLOW_LOCAL_VAR`]
    /// (problems are noted in `env`).
    pub fn from_env<F: Fn(&str) -> Option<String>>(env: &mut EnvReader<F>) -> Self {
        let mut list = |name: &'static str| -> Option<Vec<HostPattern>> {
            let value = env.get(name)?;
            let mut hosts = Vec::new();
            for entry in value
                .split([',', ' ', '\n', '\t'])
                .filter(|e| !e.trim().is_empty())
            {
                match HostPattern::parse(entry) {
                    Ok(host) => hosts.push(host),
                    Err(problem) => env.problem(name, problem),
                }
            }
            Some(hosts)
        };
        let imap_hosts = list(IMAP_HOSTS_VAR).unwrap_or_else(|| {
            MICROSOFT_IMAP_HOSTS
                .iter()
                .map(|h| HostPattern::Exact((*h).to_string()))
                .collect()
        });
        let sink_hosts = list(SINK_HOSTS_VAR).unwrap_or_default();
        TargetPolicy {
            imap_hosts,
            sink_hosts,
            allow_local: env.flag(ALLOW_LOCAL_VAR, false),
        }
    }

    /// [`TargetPolicy::from_env`] over a variable lookup alone.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, SettingsError> {
        let mut env = EnvReader::new(get);
        let policy = Self::from_env(&mut env);
        env.finish(policy)
    }

    /// The policy of the local stack and the tests: Microsoft's IMAP hosts, no ticket API host,
    /// loopback and plain http allowed.
    pub fn local() -> Self {
        TargetPolicy::from_lookup(|k| (k == ALLOW_LOCAL_VAR).then(|| "true".into()))
            .expect("the local policy is valid")
    }

    /// Whether plain http and loopback hosts are allowed ([`ALLOW_LOCAL_VAR`]).
    pub fn allows_local(&self) -> bool {
        self.allow_local
    }

    /// Also allow these ticket API hosts (entries as in [`SINK_HOSTS_VAR`]).
    pub fn with_sink_hosts(mut self, hosts: &[&str]) -> Result<Self, String> {
        for host in hosts {
            self.sink_hosts.push(HostPattern::parse(host)?);
        }
        Ok(self)
    }

    /// Refuse a configuration that points anywhere not allowed; the error names the mailbox,
    /// the field, the host and the setting that would allow it.
    pub fn check(&self, config: &MailboxConfig) -> Result<(), ConfigError> {
        let err = |field: &str, problem: String| ConfigError {
            mailbox: config.name.clone(),
            field: field.to_string(),
            problem,
        };
        let imap_host = config.host.trim_end_matches('.').to_ascii_lowercase();
        let imap_is_loopback = match url::Host::parse(&imap_host) {
            Ok(url::Host::Domain(d)) => crate::config::is_loopback_host(&url::Host::Domain(&d)),
            Ok(url::Host::Ipv4(ip)) => ip.is_loopback(),
            Ok(url::Host::Ipv6(ip)) => ip.is_loopback(),
            Err(_) => false,
        };
        if imap_is_loopback {
            if !self.allow_local {
                return Err(err("host", self.local_refused(&imap_host)));
            }
        } else if !self.imap_hosts.iter().any(|p| p.matches(&imap_host)) {
            return Err(err(
                "host",
                format!(
                    "is {imap_host:?}, not an allowed IMAP host (the account's access token is sent to it); allowed: {}. To poll it, add it to {IMAP_HOSTS_VAR} (template parameter ImapHosts)",
                    Self::list(&self.imap_hosts)
                ),
            ));
        }
        let url = url::Url::parse(config.sink.url())
            .map_err(|e| err("sink.url", format!("is not a URL ({e})")))?;
        let Some(host) = url.host() else {
            return Err(err("sink.url", "has no host".into()));
        };
        let sink_host = host.to_string().to_ascii_lowercase();
        if url.scheme() != "https" || crate::config::is_loopback_host(&host) {
            if !self.allow_local {
                return Err(err(
                    "sink.url",
                    format!(
                        "{}; ticket APIs must be https on an allowed host",
                        self.local_refused(&format!("{}://{sink_host}", url.scheme()))
                    ),
                ));
            }
            return Ok(());
        }
        if !self.sink_hosts.iter().any(|p| p.matches(&sink_host)) {
            return Err(err(
                "sink.url",
                format!(
                    "has host {sink_host:?}, not an allowed ticket API host (every mail of the mailbox and the ticket-API credentials are sent to it); allowed: {}. To use it, add it to {SINK_HOSTS_VAR} (template parameter TicketApiHosts)",
                    Self::list(&self.sink_hosts)
                ),
            ));
        }
        Ok(())
    }

    fn local_refused(&self, what: &str) -> String {
        format!(
            "is {what:?}: plain http and loopback hosts are allowed only with {ALLOW_LOCAL_VAR}=true (local stack and tests; inside Lambda 127.0.0.1:9001 is the Runtime API)"
        )
    }

    fn list(patterns: &[HostPattern]) -> String {
        if patterns.is_empty() {
            return "none".into();
        }
        patterns
            .iter()
            .map(HostPattern::as_string)
            .collect::<Vec<_>>()
            .join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn config(host: &str, sink_url: &str) -> MailboxConfig {
        MailboxConfig::from_json(
            "helpdesk",
            &json!({"user": "helpdesk@contoso.com", "account": "contoso", "host": host,
                "sink": {"kind": "webhook", "url": sink_url}}),
        )
        .unwrap()
    }

    fn policy(vars: &[(&str, &str)]) -> TargetPolicy {
        TargetPolicy::from_lookup(|k| {
            vars.iter()
                .find(|(name, _)| *name == k)
                .map(|(_, v)| v.to_string())
        })
        .unwrap()
    }

    #[test]
    fn microsoft_imap_hosts_are_the_default_and_others_are_named_with_the_setting() {
        let p = policy(&[(SINK_HOSTS_VAR, "psa.example.com")]);
        for host in MICROSOFT_IMAP_HOSTS {
            p.check(&config(host, "https://psa.example.com/t")).unwrap();
        }
        p.check(&config(
            "OUTLOOK.office365.com.",
            "https://psa.example.com/t",
        ))
        .unwrap();
        let err = p
            .check(&config(
                "imap.attacker.example",
                "https://psa.example.com/t",
            ))
            .unwrap_err();
        assert_eq!(err.field, "host");
        let text = err.to_string();
        assert!(text.contains("\"imap.attacker.example\""), "{text}");
        assert!(text.contains("MAILBRIDGE_IMAP_HOSTS"), "{text}");
        assert!(text.contains("ImapHosts"), "{text}");
        // a longer name that only ends like an allowed one
        assert!(
            p.check(&config(
                "evil-outlook.office365.com",
                "https://psa.example.com/t"
            ))
            .is_err()
        );
    }

    #[test]
    fn ticket_api_hosts_have_no_default() {
        let p = policy(&[]);
        let err = p
            .check(&config(
                "outlook.office365.com",
                "https://psa.example.com/t",
            ))
            .unwrap_err();
        assert_eq!(err.field, "sink.url");
        let text = err.to_string();
        assert!(text.contains("\"psa.example.com\""), "{text}");
        assert!(text.contains("allowed: none"), "{text}");
        assert!(text.contains("MAILBRIDGE_SINK_HOSTS"), "{text}");
        assert!(text.contains("TicketApiHosts"), "{text}");
    }

    #[test]
    fn a_wildcard_allows_subdomains_only() {
        let p = policy(&[
            (SINK_HOSTS_VAR, "*.helpdesk.example.com, rt.example.org"),
            (IMAP_HOSTS_VAR, "imap.example.net"),
        ]);
        let imap = "imap.example.net";
        p.check(&config(imap, "https://eu.helpdesk.example.com/api"))
            .unwrap();
        p.check(&config(imap, "https://a.b.helpdesk.example.com/api"))
            .unwrap();
        p.check(&config(imap, "https://rt.example.org:8443/REST/2.0"))
            .unwrap();
        for bad in [
            "https://helpdesk.example.com/api",
            "https://evilhelpdesk.example.com/api",
            "https://helpdesk.example.com.attacker.example/api",
            "https://www.rt.example.org/api",
        ] {
            assert!(p.check(&config(imap, bad)).is_err(), "{bad} accepted");
        }
        // the IMAP list replaces the default
        assert!(
            p.check(&config("outlook.office365.com", "https://rt.example.org/"))
                .is_err()
        );
    }

    #[test]
    fn loopback_and_plain_http_need_the_local_setting() {
        let strict = policy(&[(SINK_HOSTS_VAR, "localhost,127.0.0.1,psa.example.com")]);
        let local = TargetPolicy::local()
            .with_sink_hosts(&["psa.example.com"])
            .unwrap();
        for (host, url) in [
            ("127.0.0.1", "https://psa.example.com/t"),
            ("localhost", "https://psa.example.com/t"),
            (
                "outlook.office365.com",
                "http://127.0.0.1:9001/2018-06-01/runtime/invocation/next",
            ),
            ("outlook.office365.com", "http://localhost:8080/t"),
            ("outlook.office365.com", "https://127.0.0.1:8443/t"),
            ("outlook.office365.com", "http://[::1]:8080/t"),
        ] {
            let cfg = MailboxConfig::from_json(
                "m",
                &json!({"user": "u@contoso.com", "account": "a", "host": host,
                    "sink": {"kind": "webhook", "url": url}}),
            )
            .unwrap();
            let err = strict.check(&cfg).unwrap_err();
            assert!(
                err.to_string()
                    .contains("MAILBRIDGE_ALLOW_LOCAL_TARGETS=true"),
                "{host} {url}: {err}"
            );
            local.check(&cfg).unwrap();
        }
    }

    #[test]
    fn bad_entries_and_values_name_the_variable() {
        for (name, value) in [
            (SINK_HOSTS_VAR, "https://psa.example.com"),
            (SINK_HOSTS_VAR, "psa.example.com:443"),
            (SINK_HOSTS_VAR, "*"),
            (SINK_HOSTS_VAR, "*.com"),
            (IMAP_HOSTS_VAR, "imap.example.com/x"),
            (ALLOW_LOCAL_VAR, "yes please"),
        ] {
            let err =
                TargetPolicy::from_lookup(|k| (k == name).then(|| value.to_string())).unwrap_err();
            assert_eq!(err.problems.len(), 1, "{value}: {err}");
            assert!(err.problems[0].starts_with(&format!("{name}: ")), "{err}");
        }
    }
}
