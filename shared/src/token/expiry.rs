//! Expiring app-only credentials: a certificate past its `notAfter` or a client secret past its
//! end date stops every token request, and only a person can add a new one. The functions say
//! so early: from [`WARN_DAYS`] days before, every token minted with such a credential logs a
//! warning, and the invocation's metric [`METRIC`] (days left, the smallest over the accounts it
//! used) lets the `AppCredentialExpiringAlarm` fire; `mailbridge check` says it too.

use chrono::{DateTime, Utc};

/// How many days before the end date the warning starts.
pub const WARN_DAYS: i64 = 14;
/// The EMF metric: whole days until the soonest-expiring app-only credential used in the
/// invocation (namespace `Mailbridge`, dimension `Function`).
pub const METRIC: &str = "AppCredentialDaysLeft";

/// When one account's app-only credential stops working.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CredentialExpiry {
    /// The account secret's name.
    pub account: String,
    /// `client secret`, `certificate <thumbprint>`.
    pub credential: String,
    /// The certificate's `notAfter`, the secret's `client_secret_expires_at`.
    pub expires_at: DateTime<Utc>,
}

impl CredentialExpiry {
    /// Whole days left at `now` (negative once expired).
    pub fn days_left(&self, now: DateTime<Utc>) -> i64 {
        (self.expires_at - now).num_days()
    }

    /// The operator warning when it expires within [`WARN_DAYS`] days (or has expired).
    pub fn warning(&self, now: DateTime<Utc>) -> Option<String> {
        let days = self.days_left(now);
        (days <= WARN_DAYS).then(|| {
            let when = self.expires_at.format("%Y-%m-%d %H:%M UTC");
            let state = if self.expires_at <= now {
                format!("expired on {when}")
            } else {
                format!("expires on {when} ({days} days left)")
            };
            format!(
                "account {}: its {} {state}; add a new one to the app registration (Certificates & secrets) and store it with `mailbridge login --app`",
                self.account, self.credential
            )
        })
    }
}

/// The EMF line with [`METRIC`] for the soonest of `expiries`, or `None` when there are none.
pub fn emf_line(
    function: &str,
    expiries: &[CredentialExpiry],
    now: DateTime<Utc>,
) -> Option<String> {
    let soonest = expiries.iter().min_by_key(|e| e.expires_at)?;
    Some(
        serde_json::json!({
            "_aws": {
                "Timestamp": now.timestamp_millis(),
                "CloudWatchMetrics": [{
                    "Namespace": "Mailbridge",
                    "Dimensions": [["Function"]],
                    "Metrics": [{"Name": METRIC, "Unit": "Count"}],
                }],
            },
            "Function": function,
            METRIC: soonest.days_left(now),
            "Account": soonest.account,
        })
        .to_string(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_warning_starts_fourteen_days_before_and_the_metric_takes_the_soonest() {
        let now: DateTime<Utc> = "2026-12-01T00:00:00Z".parse().unwrap();
        let at = |days: i64| CredentialExpiry {
            account: format!("mailbridge/a{days}"),
            credential: "client secret".into(),
            expires_at: now + chrono::Duration::days(days) + chrono::Duration::hours(1),
        };
        assert_eq!(at(15).warning(now), None);
        let w = at(14).warning(now).unwrap();
        assert!(
            w.contains("14 days left") && w.contains("mailbridge login --app"),
            "{w}"
        );
        assert!(at(-1).warning(now).unwrap().contains("expired on"));
        assert_eq!(emf_line("f", &[], now), None);
        let line: serde_json::Value =
            serde_json::from_str(&emf_line("f", &[at(40), at(3)], now).unwrap()).unwrap();
        assert_eq!(line[METRIC], 3);
        assert_eq!(line["Account"], "mailbridge/a3");
    }
}
