//! CloudWatch metrics for one invocation: one EMF line (`mailbridge::telemetry::EmfLine`) on
//! stdout, namespace `Mailbridge`, dimension `Function`.

use mailbridge::telemetry::EmfLine;
use serde_json::Value;

/// Counts of one batch.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BatchMetrics {
    /// Accepted by Graph (202).
    pub sent: u64,
    /// Redeliveries recognised by the idempotency record (not sent again).
    pub duplicates: u64,
    /// Parked in the DLQ as permanent failures.
    pub parked: u64,
    /// Reported in `batchItemFailures` (SQS delivers them again).
    pub retried: u64,
    /// 429 answers from Graph (each one counts, also when waited out).
    pub throttled: u64,
    /// Distinct accounts found needing re-authentication.
    pub accounts_need_reauth: u64,
    /// Sent after taking over an earlier attempt that never finished (possible duplicate).
    pub resent_after_unfinished_claim: u64,
    /// Sends repeated within an invocation after an answer that may mean Graph had accepted the
    /// mail (5xx, connection dropped after the request): possible duplicates.
    pub resent_after_ambiguous_answer: u64,
    /// Delayed because the sending mailbox is over a sending quota.
    pub quota_delayed: u64,
}

impl BatchMetrics {
    /// The EMF document (one JSON object; print it as one line).
    pub fn emf(&self, function_name: &str) -> Value {
        let metrics = [
            ("NotificationsSent", self.sent),
            ("NotificationsParked", self.parked),
            ("NotificationsRetried", self.retried),
            ("GraphThrottled", self.throttled),
            ("AccountNeedsReauth", self.accounts_need_reauth),
            (
                "NotificationsResentAfterUnfinishedClaim",
                self.resent_after_unfinished_claim,
            ),
            (
                "NotificationsResentAfterAmbiguousAnswer",
                self.resent_after_ambiguous_answer,
            ),
            ("NotificationsDelayedBySendingQuota", self.quota_delayed),
        ];
        EmfLine::new(chrono::Utc::now().timestamp_millis())
            .metrics(("Function", function_name), "Count", &metrics)
            .property("NotificationsDuplicate", self.duplicates)
            .to_json()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emf_names_every_metric_with_its_value() {
        let m = BatchMetrics {
            sent: 3,
            parked: 1,
            retried: 2,
            throttled: 4,
            accounts_need_reauth: 1,
            duplicates: 0,
            resent_after_unfinished_claim: 1,
            resent_after_ambiguous_answer: 2,
            quota_delayed: 1,
        };
        let doc = m.emf("send-notifications");
        let defs = &doc["_aws"]["CloudWatchMetrics"][0];
        assert_eq!(defs["Namespace"], "Mailbridge");
        assert_eq!(defs["Dimensions"][0][0], "Function");
        for def in defs["Metrics"].as_array().unwrap() {
            let name = def["Name"].as_str().unwrap();
            assert!(doc[name].is_u64(), "{name} has no value");
        }
        assert_eq!(doc["GraphThrottled"], 4);
        assert_eq!(doc["Function"], "send-notifications");
    }
}
