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
//!
//! Subscriptions ([`maintain_subscriptions`], in each scheduled run, after the polls): every
//! enabled mailbox with `push: true` gets a Graph subscription to messages created in its
//! folder, renewed when less than [`RENEW_WITHIN`] of it is left, created again when Graph no
//! longer knows it, replaced when the mailbox now polls another folder or address; the
//! subscriptions of mailboxes removed (or no longer `push`) are deleted (`mailbridge mailbox
//! remove` deletes its mailbox's at once, through [`delete_subscription`]). A
//! lifecycle event from the queue is acted on before its mailbox is polled:
//! `reauthorizationRequired` renews the subscription, `subscriptionRemoved` creates a new one.
//! A subscription that could not be created or renewed is counted
//! (`PushSubscriptionsFailed`, its alarm); the scheduled poll goes on regardless.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use mailbridge::graph::GraphError;
use mailbridge::graph_subscriptions::CreatedSubscription;
use mailbridge::push::{LifecycleEvent, PollRequestMessage};
use mailbridge::token::{AccessToken, Audience};
use serde::Serialize;
use tokio::time::Instant;

use crate::handler::EventError;
use crate::poll::{PollDeps, PollReport, poll_once};
use mailbridge::mailbox::{MailboxConfig, Protocol};
use mailbridge::state_table::{PollGate, StoreError, SubscriptionRecord, SubscriptionStore};

/// How long a new (or renewed) subscription lives: 10 minutes under Graph's 10,080.
pub const SUBSCRIPTION_LIFETIME: Duration =
    Duration::from_secs((mailbridge::push::MAX_SUBSCRIPTION_MINUTES as u64 - 10) * 60);

/// A subscription is renewed when less than this is left of it.
pub const RENEW_WITHIN: Duration = Duration::from_secs(3 * 24 * 3600);

/// What the poller needs for push.
#[derive(Clone)]
pub struct PushDeps {
    /// The poll-request gates.
    pub gate: Arc<dyn PollGate>,
    /// Subscription upkeep; None when no notification URL is configured.
    pub subscriptions: Option<SubscriptionDeps>,
}

/// What subscription upkeep needs.
#[derive(Clone)]
pub struct SubscriptionDeps {
    /// The subscription records.
    pub store: Arc<dyn SubscriptionStore>,
    /// Graph's `/subscriptions`.
    pub api: Arc<dyn SubscriptionApi>,
    /// The receive-notifications Function URL.
    pub notification_url: String,
}

/// Port: Graph's `/subscriptions` for one mailbox.
#[async_trait]
pub trait SubscriptionApi: Send + Sync {
    /// The resource to subscribe to: new messages in the mailbox's folder.
    async fn resource(
        &self,
        config: &MailboxConfig,
        token: &AccessToken,
        deadline: Instant,
    ) -> Result<String, GraphError>;
    /// Create a subscription.
    #[allow(clippy::too_many_arguments)]
    async fn create(
        &self,
        user: &str,
        token: &AccessToken,
        resource: &str,
        notification_url: &str,
        client_state: &str,
        expires: DateTime<Utc>,
        deadline: Instant,
    ) -> Result<CreatedSubscription, GraphError>;
    /// Renew one until `expires`.
    async fn renew(
        &self,
        user: &str,
        token: &AccessToken,
        id: &str,
        expires: DateTime<Utc>,
        deadline: Instant,
    ) -> Result<DateTime<Utc>, GraphError>;
    /// Delete one (gone already is fine).
    async fn delete(
        &self,
        user: &str,
        token: &AccessToken,
        id: &str,
        deadline: Instant,
    ) -> Result<(), GraphError>;
}

/// The token audience a mailbox's subscription is made with: a Graph mailbox's own; for an
/// IMAP mailbox, Graph's mail-reading audience of the same account.
pub fn subscription_audience(config: &MailboxConfig) -> Audience {
    match config.protocol {
        Protocol::Graph => crate::poll::mailbox_audience(config),
        Protocol::Imap => Audience::GraphMailbox,
    }
}

/// What subscription upkeep did in one run.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct SubscriptionReport {
    /// Subscriptions created.
    pub created: u32,
    /// Renewed.
    pub renewed: u32,
    /// Deleted (mailbox removed or push turned off).
    pub deleted: u32,
    /// Mailboxes whose subscription could not be created, renewed or deleted.
    pub failed: u32,
}

impl SubscriptionReport {
    /// One CloudWatch EMF line (namespace `Mailbridge`, dimension `Function`).
    pub fn emf_line(&self, timestamp_ms: i64) -> String {
        let metrics = [
            ("PushSubscriptionsCreated", self.created),
            ("PushSubscriptionsRenewed", self.renewed),
            ("PushSubscriptionsDeleted", self.deleted),
            ("PushSubscriptionsFailed", self.failed),
        ];
        mailbridge::telemetry::EmfLine::new(timestamp_ms)
            .metrics(
                ("Function", "poll-mailboxes"),
                "Count",
                &metrics.map(|(name, value)| (name, u64::from(value))),
            )
            .to_string()
    }
}

impl SubscriptionReport {
    /// Count a subscription that could not be `what` (created, renewed, ...), and log why.
    fn fail(&mut self, what: &str, mailbox: &str, e: &dyn std::fmt::Display) {
        tracing::error!(mailbox, error = %e, "push subscription could not be {what}; the scheduled poll still runs");
        self.failed += 1;
    }
}

/// A token for `config`'s subscription.
async fn subscription_token(
    deps: &PollDeps,
    config: &MailboxConfig,
) -> Result<AccessToken, String> {
    deps.tokens
        .access_token(&config.account, subscription_audience(config))
        .await
        .map_err(|e| e.to_string())
}

/// When a subscription made (or renewed) now should end.
fn new_expiry() -> DateTime<Utc> {
    Utc::now() + chrono::Duration::from_std(SUBSCRIPTION_LIFETIME).expect("a few days fit")
}

/// Create `config`'s subscription and store its record.
async fn create(
    deps: &PollDeps,
    subs: &SubscriptionDeps,
    config: &MailboxConfig,
    deadline: Instant,
) -> Result<SubscriptionRecord, String> {
    let token = subscription_token(deps, config).await?;
    let resource = subs
        .api
        .resource(config, &token, deadline)
        .await
        .map_err(|e| e.to_string())?;
    let client_state = mailbridge::push::new_client_state();
    let created = subs
        .api
        .create(
            &config.user,
            &token,
            &resource,
            &subs.notification_url,
            &client_state,
            new_expiry(),
            deadline,
        )
        .await
        .map_err(|e| e.to_string())?;
    let record = SubscriptionRecord {
        id: created.id,
        mailbox: config.name.clone(),
        account: config.account.clone(),
        user: config.user.clone(),
        client_state_sha256: mailbridge::push::client_state_sha256(&client_state),
        resource,
        folder: config.folder.clone(),
        expires_at: created.expires_at.timestamp(),
    };
    subs.store
        .put_subscription(&record)
        .await
        .map_err(|e| e.to_string())?;
    tracing::info!(mailbox = %config.name, subscription = %record.id, expires_at = record.expires_at, "push subscription created");
    Ok(record)
}

/// [`create`], counted in `report`.
async fn create_counted(
    deps: &PollDeps,
    subs: &SubscriptionDeps,
    config: &MailboxConfig,
    report: &mut SubscriptionReport,
    deadline: Instant,
) {
    match create(deps, subs, config, deadline).await {
        Ok(_) => report.created += 1,
        Err(e) => report.fail("created", &config.name, &e),
    }
}

/// Renew `record`; when Graph no longer knows it, create a new one.
async fn renew(
    deps: &PollDeps,
    subs: &SubscriptionDeps,
    config: &MailboxConfig,
    record: &SubscriptionRecord,
    report: &mut SubscriptionReport,
    deadline: Instant,
) {
    // Some(renewed record), or None when Graph no longer knows the subscription.
    let renewed = async {
        let token = subscription_token(deps, config).await?;
        match subs
            .api
            .renew(&config.user, &token, &record.id, new_expiry(), deadline)
            .await
        {
            Ok(expires_at) => {
                let renewed = SubscriptionRecord {
                    expires_at: expires_at.timestamp(),
                    ..record.clone()
                };
                subs.store
                    .put_subscription(&renewed)
                    .await
                    .map_err(|e| e.to_string())?;
                Ok(Some(renewed))
            }
            Err(e) if e.is_item_not_found() => Ok(None),
            Err(e) => Err(e.to_string()),
        }
    }
    .await;
    match renewed {
        Ok(Some(renewed)) => {
            tracing::info!(mailbox = %config.name, subscription = %record.id, expires_at = renewed.expires_at, "push subscription renewed");
            report.renewed += 1;
        }
        Ok(None) => {
            tracing::warn!(mailbox = %config.name, subscription = %record.id, "Graph no longer knows the subscription; creating a new one");
            recreate(deps, subs, config, record, report, deadline).await;
        }
        Err(e) => report.fail("renewed", &config.name, &e),
    }
}

async fn recreate(
    deps: &PollDeps,
    subs: &SubscriptionDeps,
    config: &MailboxConfig,
    record: &SubscriptionRecord,
    report: &mut SubscriptionReport,
    deadline: Instant,
) {
    if let Err(e) = subs.store.delete_subscription(record).await {
        report.fail("recreated", &config.name, &e);
        return;
    }
    create_counted(deps, subs, config, report, deadline).await;
}

/// Delete `record`'s subscription in Graph (gone there already is fine), then its records.
/// `token` is a Graph token of the account that made it (`record.account`). Used by the
/// scheduled run and by `mailbridge mailbox remove`.
pub async fn delete_subscription(
    api: &dyn SubscriptionApi,
    store: &dyn SubscriptionStore,
    record: &SubscriptionRecord,
    token: &AccessToken,
    deadline: Instant,
) -> Result<(), String> {
    api.delete(&record.user, token, &record.id, deadline)
        .await
        .map_err(|e| e.to_string())?;
    store
        .delete_subscription(record)
        .await
        .map_err(|e| e.to_string())
}

/// Delete `record`'s subscription with a token of its account.
async fn delete_with_token(
    deps: &PollDeps,
    subs: &SubscriptionDeps,
    record: &SubscriptionRecord,
    deadline: Instant,
) -> Result<(), String> {
    let token = deps
        .tokens
        .access_token(&record.account, Audience::GraphMailbox)
        .await
        .map_err(|e| e.to_string())?;
    delete_subscription(
        subs.api.as_ref(),
        subs.store.as_ref(),
        record,
        &token,
        deadline,
    )
    .await
}

/// Delete the subscription of a mailbox that is gone or no longer `push`.
async fn retire(
    deps: &PollDeps,
    subs: &SubscriptionDeps,
    record: &SubscriptionRecord,
    report: &mut SubscriptionReport,
    deadline: Instant,
) {
    match delete_with_token(deps, subs, record, deadline).await {
        Ok(()) => {
            tracing::info!(mailbox = %record.mailbox, subscription = %record.id, "push subscription deleted with its mailbox");
            report.deleted += 1;
        }
        Err(e) => report.fail("deleted", &record.mailbox, &e),
    }
}

/// Whether `record` was made for what `config` polls now (its folder and address: both are
/// named in the subscribed resource).
fn matches_config(record: &SubscriptionRecord, config: &MailboxConfig) -> bool {
    record.folder == config.folder && record.user.eq_ignore_ascii_case(&config.user)
}

/// The mailbox now polls another folder (or address): delete the old subscription, which
/// watches the wrong folder, and create one for the new.
async fn replace(
    deps: &PollDeps,
    subs: &SubscriptionDeps,
    config: &MailboxConfig,
    record: &SubscriptionRecord,
    report: &mut SubscriptionReport,
    deadline: Instant,
) {
    tracing::info!(mailbox = %config.name, subscription = %record.id, old_folder = %record.folder, folder = %config.folder, "the mailbox's folder or address changed; replacing its push subscription");
    if let Err(e) = delete_with_token(deps, subs, record, deadline).await {
        report.fail("replaced", &config.name, &e);
        return;
    }
    report.deleted += 1;
    create_counted(deps, subs, config, report, deadline).await;
}

/// Subscription upkeep for every configured mailbox (a scheduled run).
pub async fn maintain_subscriptions(
    deps: &PollDeps,
    subs: &SubscriptionDeps,
    deadline: Instant,
) -> Result<SubscriptionReport, StoreError> {
    let mut report = SubscriptionReport::default();
    let configs: Vec<MailboxConfig> = deps
        .state
        .load_mailboxes(None)
        .await?
        .into_iter()
        .filter_map(Result::ok)
        .filter(|c| deps.targets.check(c).is_ok())
        .collect();
    let wanted: Vec<&MailboxConfig> = configs.iter().filter(|c| c.enabled && c.push).collect();
    let now = Utc::now().timestamp();
    for config in &wanted {
        if Instant::now() >= deadline {
            break;
        }
        match subs.store.subscription_of(&config.name).await {
            Ok(None) => create_counted(deps, subs, config, &mut report, deadline).await,
            Ok(Some(record)) if !matches_config(&record, config) => {
                replace(deps, subs, config, &record, &mut report, deadline).await;
            }
            Ok(Some(record)) if record.expires_at - now < RENEW_WITHIN.as_secs() as i64 => {
                renew(deps, subs, config, &record, &mut report, deadline).await;
            }
            Ok(Some(_)) => {}
            Err(e) => report.fail("read", &config.name, &e),
        }
    }
    for name in subs.store.subscribed_mailboxes().await? {
        if wanted.iter().any(|c| c.name == name) {
            continue;
        }
        if let Some(record) = subs.store.subscription_of(&name).await? {
            retire(deps, subs, &record, &mut report, deadline).await;
        }
    }
    Ok(report)
}

/// Act on a lifecycle event before the mailbox is polled.
async fn on_lifecycle(
    deps: &PollDeps,
    subs: &SubscriptionDeps,
    request: &PollRequestMessage,
    report: &mut SubscriptionReport,
    deadline: Instant,
) {
    let Some(event) = request.lifecycle else {
        return;
    };
    let config = match deps
        .state
        .load_mailboxes(Some(std::slice::from_ref(&request.mailbox)))
        .await
    {
        Ok(configs) => configs.into_iter().find_map(Result::ok),
        Err(e) => {
            tracing::warn!(mailbox = %request.mailbox, error = %e, "could not read the mailbox for its lifecycle event");
            None
        }
    };
    let record = subs
        .store
        .subscription_of(&request.mailbox)
        .await
        .ok()
        .flatten()
        .filter(|r| Some(&r.id) == request.subscription_id.as_ref());
    let (Some(config), Some(record)) = (config, record) else {
        tracing::info!(mailbox = %request.mailbox, event = event.as_str(), "lifecycle event for a subscription no longer current; nothing to do");
        return;
    };
    match event {
        LifecycleEvent::ReauthorizationRequired => {
            renew(deps, subs, &config, &record, report, deadline).await
        }
        LifecycleEvent::SubscriptionRemoved => {
            recreate(deps, subs, &config, &record, report, deadline).await
        }
        LifecycleEvent::Missed => {}
    }
}

/// The real [`SubscriptionApi`]: Graph through [`mailbridge::graph_mail::GraphMailbox`].
#[derive(Clone, Debug)]
pub struct GraphSubscriptionApi {
    http: reqwest::Client,
    base_url: String,
    timeout: Duration,
}

impl GraphSubscriptionApi {
    /// Graph at `base_url` (`MAILBRIDGE_GRAPH_URL`), `timeout` per attempt.
    pub fn new(http: reqwest::Client, base_url: &str, timeout: Duration) -> Self {
        GraphSubscriptionApi {
            http,
            base_url: base_url.to_owned(),
            timeout,
        }
    }

    fn mailbox(
        &self,
        user: &str,
        token: &AccessToken,
    ) -> Result<mailbridge::graph_mail::GraphMailbox, GraphError> {
        let mut policy = mailbridge::graph_mail::default_policy();
        policy.attempt_timeout = self.timeout;
        mailbridge::graph_mail::GraphMailbox::new(
            self.http.clone(),
            &self.base_url,
            user,
            token.clone(),
            policy,
        )
        .map_err(|e| GraphError::Rejected {
            status: 0,
            code: "Configuration".into(),
            message: e.to_string(),
            request_id: None,
        })
    }
}

#[async_trait]
impl SubscriptionApi for GraphSubscriptionApi {
    async fn resource(
        &self,
        config: &MailboxConfig,
        token: &AccessToken,
        deadline: Instant,
    ) -> Result<String, GraphError> {
        let mailbox = self.mailbox(&config.user, token)?;
        let folder = mailbox
            .folder_id(&config.folder, false, deadline)
            .await?
            .ok_or_else(|| GraphError::Rejected {
                status: 404,
                code: "ErrorItemNotFound".into(),
                message: format!("no folder {:?} in the mailbox (Graph)", config.folder),
                request_id: None,
            })?;
        Ok(mailbox.messages_resource(&folder))
    }

    async fn create(
        &self,
        user: &str,
        token: &AccessToken,
        resource: &str,
        notification_url: &str,
        client_state: &str,
        expires: DateTime<Utc>,
        deadline: Instant,
    ) -> Result<CreatedSubscription, GraphError> {
        self.mailbox(user, token)?
            .create_subscription(resource, notification_url, client_state, expires, deadline)
            .await
    }

    async fn renew(
        &self,
        user: &str,
        token: &AccessToken,
        id: &str,
        expires: DateTime<Utc>,
        deadline: Instant,
    ) -> Result<DateTime<Utc>, GraphError> {
        self.mailbox(user, token)?
            .renew_subscription(id, expires, deadline)
            .await
    }

    async fn delete(
        &self,
        user: &str,
        token: &AccessToken,
        id: &str,
        deadline: Instant,
    ) -> Result<(), GraphError> {
        self.mailbox(user, token)?
            .delete_subscription(id, deadline)
            .await
    }
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
    if let Some(subs) = &push.subscriptions {
        let mut report = SubscriptionReport::default();
        for poll in polls {
            if let Ok(request) = &poll.request {
                on_lifecycle(deps, subs, request, &mut report, deadline).await;
            }
        }
        if report != SubscriptionReport::default() {
            println!("{}", report.emf_line(Utc::now().timestamp_millis()));
        }
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
            status.mailbox == mailbox
                && (status.outcome == mailbridge::state_table::MailboxOutcome::Partial
                    || status.deferred > 0)
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
    fn the_subscription_metrics_line_is_the_emf_document_it_always_was() {
        let report = SubscriptionReport {
            created: 1,
            renewed: 2,
            deleted: 3,
            failed: 4,
        };
        let line: serde_json::Value =
            serde_json::from_str(&report.emf_line(1_700_000_000_000)).unwrap();
        let metric = |name: &str| json!({"Name": name, "Unit": "Count"});
        assert_eq!(
            line,
            json!({
                "Function": "poll-mailboxes",
                "PushSubscriptionsCreated": 1,
                "PushSubscriptionsRenewed": 2,
                "PushSubscriptionsDeleted": 3,
                "PushSubscriptionsFailed": 4,
                "_aws": {
                    "Timestamp": 1_700_000_000_000_i64,
                    "CloudWatchMetrics": [{
                        "Namespace": "Mailbridge",
                        "Dimensions": [["Function"]],
                        "Metrics": (["PushSubscriptionsCreated", "PushSubscriptionsRenewed", "PushSubscriptionsDeleted", "PushSubscriptionsFailed"].map(metric)),
                    }],
                },
            })
        );
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
