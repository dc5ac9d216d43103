//! Push, the poller's side (docs/push.md): poll requests from the queue the
//! receive-notifications function fills.
//!
//! An SQS event carries poll requests ([`PollRequestMessage`]). Before the run lists any
//! mailbox, each requested mailbox's poll-request gate is disarmed ([`PollGate::disarm`]): a
//! notification arriving from then on enqueues a new request instead of joining this one, so
//! mail it announces is seen by a poll that starts after it. The mailboxes are then polled like
//! a manual run of those names (same lease, so never at the same time as a scheduled run of the
//! same mailbox). A request whose mailbox could not be finished (another run held its lease,
//! the ticket API failed for a while, the deadline came) is reported as a batch item failure:
//! SQS delivers it again after the queue's visibility timeout. A mailbox that failed outright
//! (needs a person, misconfigured) is not retried from the queue: the schedule and its alarms
//! deal with it.

use std::sync::Arc;

use mailbridge::push::{PollGate, PollRequestMessage};
use serde::Serialize;
use tokio::time::Instant;

use crate::handler::EventError;
use crate::poll::{PollDeps, PollReport, poll_once};
use crate::ports::StoreError;

/// What the poller needs for push.
#[derive(Clone)]
pub struct PushDeps {
    /// The poll-request gates.
    pub gate: Arc<dyn PollGate>,
}

/// One record of a queue event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueuedPoll {
    /// SQS `messageId` (what a batch item failure names).
    pub message_id: String,
    /// The request, or why its body is unreadable.
    pub request: Result<PollRequestMessage, String>,
}

/// Whether `event` is an SQS event (`Records` from `aws:sqs`).
pub fn is_queue_event(event: &serde_json::Value) -> bool {
    event["Records"]
        .as_array()
        .is_some_and(|r| !r.is_empty() && r.iter().all(|r| r["eventSource"] == "aws:sqs"))
}

/// The poll requests of an SQS event.
pub fn parse_queue_event(event: &serde_json::Value) -> Result<Vec<QueuedPoll>, EventError> {
    let records = event["Records"]
        .as_array()
        .ok_or_else(|| EventError("expected SQS `Records`".into()))?;
    records
        .iter()
        .enumerate()
        .map(|(i, record)| {
            let message_id = record["messageId"]
                .as_str()
                .filter(|id| !id.is_empty())
                .ok_or_else(|| EventError(format!("SQS record {i} has no messageId")))?
                .to_owned();
            let request = record["body"]
                .as_str()
                .ok_or_else(|| "no body".to_owned())
                .and_then(|body| {
                    serde_json::from_str::<PollRequestMessage>(body).map_err(|e| e.to_string())
                });
            Ok(QueuedPoll {
                message_id,
                request,
            })
        })
        .collect()
}

/// The answer to a queue event: the run's report and the records to deliver again.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct QueueRunReport {
    /// The poll of the requested mailboxes.
    #[serde(flatten)]
    pub report: PollReport,
    /// SQS partial batch response: the records SQS delivers again.
    #[serde(rename = "batchItemFailures")]
    pub batch_item_failures: Vec<BatchItemFailure>,
}

/// One record to deliver again.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct BatchItemFailure {
    /// Its SQS `messageId`.
    #[serde(rename = "itemIdentifier")]
    pub item_identifier: String,
}

/// Run the poll requests of one queue event.
pub async fn run_queued(
    deps: &PollDeps,
    push: &PushDeps,
    polls: &[QueuedPoll],
    deadline: Instant,
) -> Result<QueueRunReport, StoreError> {
    let mut names: Vec<String> = Vec::new();
    for poll in polls {
        match &poll.request {
            Ok(request) => names.push(request.mailbox.clone()),
            Err(problem) => tracing::error!(
                message_id = %poll.message_id,
                problem = %problem,
                "unreadable poll request dropped (the scheduled poll covers every mailbox)"
            ),
        }
    }
    names.sort();
    names.dedup();
    if names.is_empty() {
        return Ok(QueueRunReport::default());
    }
    // Taken before listing: a notification from now on asks for a poll of its own.
    for name in &names {
        if let Err(e) = push.gate.disarm(name).await {
            tracing::warn!(mailbox = %name, error = %e, "could not disarm the poll-request gate; notifications coalesce into this run until it goes stale");
        }
    }
    let report = poll_once(deps, Some(&names), deadline).await?;
    let unfinished = |mailbox: &str| {
        report.mailboxes.iter().any(|status| {
            status.mailbox == mailbox && (status.outcome == "partial" || status.deferred > 0)
        })
    };
    let batch_item_failures = polls
        .iter()
        .filter(|p| matches!(&p.request, Ok(r) if unfinished(&r.mailbox)))
        .map(|p| BatchItemFailure {
            item_identifier: p.message_id.clone(),
        })
        .collect();
    Ok(QueueRunReport {
        report,
        batch_item_failures,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn queue_events_are_told_from_schedules_and_read() {
        let event = json!({"Records": [
            {"messageId": "m1", "eventSource": "aws:sqs", "body": "{\"mailbox\":\"helpdesk\"}"},
            {"messageId": "m2", "eventSource": "aws:sqs", "body": "not json"},
        ]});
        assert!(is_queue_event(&event));
        assert!(!is_queue_event(&json!({"mailboxes": ["a"]})));
        assert!(!is_queue_event(&json!({"Records": []})));
        let polls = parse_queue_event(&event).unwrap();
        assert_eq!(polls[0].request.as_ref().unwrap().mailbox, "helpdesk");
        assert!(polls[1].request.is_err());
        assert!(parse_queue_event(&json!({"Records": [{"eventSource": "aws:sqs"}]})).is_err());
    }

    #[test]
    fn the_answer_is_a_partial_batch_response() {
        let answer = QueueRunReport {
            batch_item_failures: vec![BatchItemFailure {
                item_identifier: "m1".into(),
            }],
            ..Default::default()
        };
        let json = serde_json::to_value(&answer).unwrap();
        assert_eq!(json["batchItemFailures"], json!([{"itemIdentifier": "m1"}]));
        assert_eq!(json["tickets_created"], 0);
    }
}
