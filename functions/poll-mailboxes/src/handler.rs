//! The Lambda event → one tick → the response, plus EMF metrics.
//!
//! Events: an EventBridge Scheduler (or legacy scheduled rule) event polls every configured
//! mailbox; a manual event `{"mailboxes": ["name", ...]}` polls only those now; an SQS event
//! from the poll-request queue polls the mailboxes its requests name ([`crate::push`]). Any other
//! JSON object polls everything (schedulers differ in what payload they send).

use serde::Deserialize;
use tokio::time::Instant;

use crate::poll::{PollDeps, PollReport, poll_once};
use mailbridge::state_table::StoreError;
use mailbridge::telemetry::EmfLine;

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

/// Handle one invocation of the Lambda function: a queue event through [`crate::push`], any
/// other through [`handle`]. The answer is the run's report (plus `batchItemFailures` for a
/// queue event).
pub async fn handle_event(
    deps: &PollDeps,
    push: Option<&crate::push::PushDeps>,
    event: &serde_json::Value,
    deadline: Instant,
) -> Result<serde_json::Value, HandlerError> {
    if !crate::push::is_queue_event(event) {
        let report = handle(deps, event, deadline).await?;
        // A scheduled run keeps the push subscriptions, after its polls.
        if let (Ok(PollRequest::All), Some(subs)) = (
            parse_event(event),
            push.and_then(|p| p.subscriptions.as_ref()),
        ) {
            match crate::push::maintain_subscriptions(deps, subs, deadline).await {
                Ok(upkeep) => {
                    println!("{}", upkeep.emf_line(chrono::Utc::now().timestamp_millis()))
                }
                Err(e) => {
                    tracing::error!(error = %e, "push subscriptions not kept this run");
                    println!(
                        "{}",
                        crate::push::SubscriptionReport {
                            failed: 1,
                            ..Default::default()
                        }
                        .emf_line(chrono::Utc::now().timestamp_millis())
                    );
                }
            }
        }
        return Ok(serde_json::to_value(&report).unwrap_or_default());
    }
    let push = push.ok_or_else(|| {
        EventError("an SQS event, but this build of the poller takes no poll requests".into())
    })?;
    let polls = crate::push::parse_queue_event(event)?;
    let answer = crate::push::run_queued(deps, push, &polls, deadline).await?;
    println!(
        "{}",
        emf_line(&answer.report, None, chrono::Utc::now().timestamp_millis())
    );
    Ok(serde_json::to_value(&answer).unwrap_or_default())
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
        emf_line(
            &report,
            (request == PollRequest::All).then(deployment_function_name),
            chrono::Utc::now().timestamp_millis()
        )
    );
    Ok(report)
}

/// The heartbeat metric: seconds since some enabled mailbox was last polled successfully (the
/// oldest). Emitted only by runs that poll every mailbox (the schedule's), so that the
/// heartbeat alarm sees missing data when the schedule stops, whatever manual runs do. Its
/// dimension is [`HEARTBEAT_DIMENSION`] (this deployment's function name), not `Function`:
/// two stacks in one account and region must not beat each other's heart.
pub const HEARTBEAT_METRIC: &str = "OldestMailboxSuccessAgeSeconds";

/// The heartbeat's dimension: the Lambda function's name (`AWS_LAMBDA_FUNCTION_NAME`).
pub const HEARTBEAT_DIMENSION: &str = "FunctionName";

/// This deployment's function name (`AWS_LAMBDA_FUNCTION_NAME`, set by Lambda), or
/// `poll-mailboxes` outside Lambda.
pub fn deployment_function_name() -> String {
    std::env::var("AWS_LAMBDA_FUNCTION_NAME")
        .ok()
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| "poll-mailboxes".to_owned())
}

/// The names of the Count metrics in every line.
pub const COUNT_METRICS: [&str; 5] = [
    "TicketsCreated",
    "MailParked",
    "MailSkippedAutoGenerated",
    "MailboxPollFailed",
    "AccountNeedsReauth",
];

/// One CloudWatch EMF line (namespace `Mailbridge`, dimension `Function`). `heartbeat_of`: the
/// run polled every configured mailbox, so the line carries the heartbeat metric too, for the
/// deployment of this function name.
pub fn emf_line(report: &PollReport, heartbeat_of: Option<String>, timestamp_ms: i64) -> String {
    let counts: Vec<(&str, u64)> = COUNT_METRICS
        .into_iter()
        .zip(
            [
                report.tickets_created,
                report.parked,
                report.skipped_auto_generated,
                report.mailboxes_failed,
                report.accounts_need_reauth,
            ]
            .map(u64::from),
        )
        .collect();
    let mut line =
        EmfLine::new(timestamp_ms).metrics(("Function", "poll-mailboxes"), "Count", &counts);
    if let Some(function_name) = heartbeat_of {
        line = line.metrics(
            (HEARTBEAT_DIMENSION, &function_name),
            "Seconds",
            &[(HEARTBEAT_METRIC, report.oldest_success_age_seconds)],
        );
    }
    line.to_string()
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
            oldest_success_age_seconds: 1_234,
            ..Default::default()
        };
        let line: serde_json::Value =
            serde_json::from_str(&emf_line(&report, Some("stack-poller".into()), 1)).unwrap();
        assert_eq!(line["TicketsCreated"], 3);
        assert_eq!(line["MailboxPollFailed"], 1);
        assert_eq!(line["MailSkippedAutoGenerated"], 0);
        assert_eq!(line[HEARTBEAT_METRIC], 1_234);
        assert_eq!(line[HEARTBEAT_DIMENSION], "stack-poller");
        // every value has its definition, every definition its value, every dimension a value
        let mut defined = Vec::new();
        for directive in line["_aws"]["CloudWatchMetrics"].as_array().unwrap() {
            assert_eq!(directive["Namespace"], "Mailbridge");
            for set in directive["Dimensions"].as_array().unwrap() {
                for dimension in set.as_array().unwrap() {
                    assert!(line[dimension.as_str().unwrap()].is_string(), "{line}");
                }
            }
            for m in directive["Metrics"].as_array().unwrap() {
                defined.push(m["Name"].as_str().unwrap().to_owned());
            }
        }
        assert_eq!(defined.len(), 6);
        for name in defined {
            assert!(line[&name].is_u64(), "{name} has no value: {line}");
        }
    }

    #[test]
    fn only_runs_of_every_mailbox_beat_the_heartbeat() {
        let report = PollReport {
            oldest_success_age_seconds: 7,
            ..Default::default()
        };
        let manual: serde_json::Value = serde_json::from_str(&emf_line(&report, None, 1)).unwrap();
        assert!(manual.get(HEARTBEAT_METRIC).is_none(), "{manual}");
        assert!(
            !manual["_aws"].to_string().contains(HEARTBEAT_METRIC),
            "{manual}"
        );
        assert_eq!(manual["TicketsCreated"], 0);
    }
}
