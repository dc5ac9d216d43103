//! The Lambda event → one tick → the response, plus EMF metrics.
//!
//! Events: an EventBridge Scheduler (or legacy scheduled rule) event polls every configured
//! mailbox; a manual event `{"mailboxes": ["name", ...]}` polls only those now. Any other JSON
//! object polls everything (schedulers differ in what payload they send).

use serde::Deserialize;
use tokio::time::Instant;

use crate::poll::{PollDeps, PollReport, poll_once};
use crate::ports::StoreError;

/// What to poll.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PollRequest {
    /// Every configured mailbox.
    All,
    /// Only these.
    Named(Vec<String>),
}

/// An event that is neither a schedule nor a valid manual request.
#[derive(Debug, thiserror::Error)]
#[error("invalid event: {0}")]
pub struct EventError(pub String);

#[derive(Deserialize)]
struct Manual {
    mailboxes: Option<serde_json::Value>,
}

/// Read the event.
pub fn parse_event(event: &serde_json::Value) -> Result<PollRequest, EventError> {
    if !event.is_object() {
        return if event.is_null() {
            Ok(PollRequest::All)
        } else {
            Err(EventError("expected a JSON object".into()))
        };
    }
    let manual: Manual =
        serde_json::from_value(event.clone()).map_err(|e| EventError(e.to_string()))?;
    match manual.mailboxes {
        None | Some(serde_json::Value::Null) => Ok(PollRequest::All),
        Some(serde_json::Value::Array(items)) => {
            let mut names = Vec::with_capacity(items.len());
            for item in items {
                match item {
                    serde_json::Value::String(s) if !s.trim().is_empty() => {
                        names.push(s.trim().to_string())
                    }
                    other => {
                        return Err(EventError(format!(
                            "`mailboxes` must be a list of mailbox names; found {other}"
                        )));
                    }
                }
            }
            if names.is_empty() {
                return Err(EventError("`mailboxes` is empty".into()));
            }
            names.sort();
            names.dedup();
            Ok(PollRequest::Named(names))
        }
        Some(other) => Err(EventError(format!(
            "`mailboxes` must be a list of mailbox names; found {other}"
        ))),
    }
}

/// Why a tick failed as a whole (per-mailbox problems are in the report instead).
#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    /// Bad event.
    #[error(transparent)]
    Event(#[from] EventError),
    /// The mailbox list could not be read.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Handle one invocation; emits the metrics line.
pub async fn handle(
    deps: &PollDeps,
    event: &serde_json::Value,
    deadline: Instant,
) -> Result<PollReport, HandlerError> {
    let request = parse_event(event)?;
    let names = match &request {
        PollRequest::All => None,
        PollRequest::Named(names) => Some(names.as_slice()),
    };
    let report = poll_once(deps, names, deadline).await?;
    println!(
        "{}",
        emf_line(&report, chrono::Utc::now().timestamp_millis())
    );
    Ok(report)
}

/// One CloudWatch EMF line (namespace `Mailbridge`, dimension `Function`).
pub fn emf_line(report: &PollReport, timestamp_ms: i64) -> String {
    serde_json::json!({
        "_aws": {
            "Timestamp": timestamp_ms,
            "CloudWatchMetrics": [{
                "Namespace": "Mailbridge",
                "Dimensions": [["Function"]],
                "Metrics": [
                    {"Name": "TicketsCreated", "Unit": "Count"},
                    {"Name": "MailParked", "Unit": "Count"},
                    {"Name": "MailboxPollFailed", "Unit": "Count"},
                    {"Name": "AccountNeedsReauth", "Unit": "Count"}
                ]
            }]
        },
        "Function": "poll-mailboxes",
        "TicketsCreated": report.tickets_created,
        "MailParked": report.parked,
        "MailboxPollFailed": report.mailboxes_failed,
        "AccountNeedsReauth": report.accounts_need_reauth,
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn scheduler_and_manual_events_are_understood() {
        let scheduled = json!({"version":"0","id":"x","detail-type":"Scheduled Event","source":"aws.scheduler","detail":{}});
        assert_eq!(parse_event(&scheduled).unwrap(), PollRequest::All);
        assert_eq!(parse_event(&json!({})).unwrap(), PollRequest::All);
        assert_eq!(
            parse_event(&json!({"mailboxes": ["b", "a", "a"]})).unwrap(),
            PollRequest::Named(vec!["a".into(), "b".into()])
        );
        assert!(parse_event(&json!({"mailboxes": "a"})).is_err());
        assert!(parse_event(&json!({"mailboxes": []})).is_err());
        assert!(parse_event(&json!([1])).is_err());
    }

    #[test]
    fn the_committed_event_samples_parse() {
        let schedule: serde_json::Value =
            serde_json::from_str(include_str!("../../../infra/events/poll-schedule.json")).unwrap();
        assert_eq!(parse_event(&schedule).unwrap(), PollRequest::All);
        let manual: serde_json::Value =
            serde_json::from_str(include_str!("../../../infra/events/poll-manual.json")).unwrap();
        assert!(matches!(parse_event(&manual).unwrap(), PollRequest::Named(n) if n.len() == 2));
    }

    #[test]
    fn emf_line_names_the_agreed_metrics() {
        let report = PollReport {
            tickets_created: 3,
            mailboxes_failed: 1,
            ..Default::default()
        };
        let line: serde_json::Value = serde_json::from_str(&emf_line(&report, 1)).unwrap();
        assert_eq!(line["TicketsCreated"], 3);
        assert_eq!(line["MailboxPollFailed"], 1);
        assert_eq!(
            line["_aws"]["CloudWatchMetrics"][0]["Namespace"],
            "Mailbridge"
        );
    }
}
