//! The receiver's logic against in-memory ports.

use std::collections::HashMap;
use std::sync::Mutex;

use mailbridge::push::client_state_sha256;
use serde_json::json;

use super::*;

#[derive(Default)]
struct Fakes {
    subscriptions: Mutex<HashMap<String, SubscriptionRecord>>,
    lookups: Mutex<u32>,
    armed: Mutex<HashMap<String, bool>>,
    queued: Mutex<Vec<(PollRequestMessage, Duration)>>,
    queue_fails: Mutex<bool>,
}

#[async_trait]
impl SubscriptionStore for Fakes {
    async fn subscription(&self, id: &str) -> Result<Option<SubscriptionRecord>, StoreError> {
        *self.lookups.lock().unwrap() += 1;
        Ok(self.subscriptions.lock().unwrap().get(id).cloned())
    }
    async fn subscription_of(&self, _: &str) -> Result<Option<SubscriptionRecord>, StoreError> {
        unreachable!("the receiver looks subscriptions up by id")
    }
    async fn put_subscription(&self, _: &SubscriptionRecord) -> Result<(), StoreError> {
        unreachable!("the receiver never writes subscriptions")
    }
    async fn delete_subscription(&self, _: &SubscriptionRecord) -> Result<(), StoreError> {
        unreachable!("the receiver never writes subscriptions")
    }
    async fn subscribed_mailboxes(&self) -> Result<Vec<String>, StoreError> {
        unreachable!("the receiver looks subscriptions up by id")
    }
}

#[async_trait]
impl PollGate for Fakes {
    async fn arm(&self, mailbox: &str) -> Result<bool, StoreError> {
        let mut armed = self.armed.lock().unwrap();
        let was = armed.insert(mailbox.to_owned(), true).unwrap_or(false);
        Ok(!was)
    }
    async fn disarm(&self, mailbox: &str) -> Result<(), StoreError> {
        self.armed.lock().unwrap().insert(mailbox.to_owned(), false);
        Ok(())
    }
}

#[async_trait]
impl PollQueue for Fakes {
    async fn enqueue(&self, message: &PollRequestMessage, delay: Duration) -> Result<(), String> {
        if *self.queue_fails.lock().unwrap() {
            return Err("queue unavailable".into());
        }
        self.queued.lock().unwrap().push((message.clone(), delay));
        Ok(())
    }
}

const SECRET: &str = "the-client-state-secret";

fn setup() -> (Arc<Fakes>, Receiver) {
    let fakes = Arc::new(Fakes::default());
    for (id, mailbox) in [("sub-1", "helpdesk"), ("sub-2", "sales")] {
        fakes.subscriptions.lock().unwrap().insert(
            id.into(),
            SubscriptionRecord {
                id: id.into(),
                mailbox: mailbox.into(),
                account: "contoso".into(),
                user: format!("{mailbox}@contoso.com"),
                client_state_sha256: client_state_sha256(SECRET),
                resource: format!("/users/{mailbox}@contoso.com/mailFolders('inbox')/messages"),
                folder: "INBOX".into(),
                expires_at: 0,
            },
        );
    }
    let receiver = Receiver {
        subscriptions: fakes.clone(),
        gate: fakes.clone(),
        queue: fakes.clone(),
        poll_delay: Duration::from_secs(2),
    };
    (fakes, receiver)
}

fn post(body: serde_json::Value) -> Request {
    Request {
        method: "POST".into(),
        raw_query: String::new(),
        body: body.to_string().into_bytes(),
    }
}

fn created(subscription: &str, client_state: &str) -> serde_json::Value {
    json!({
        "subscriptionId": subscription,
        "subscriptionExpirationDateTime": "2026-12-10T11:00:00Z",
        "clientState": client_state,
        "changeType": "created",
        "resource": "Users/x/Messages/AAMk",
        "tenantId": "84bd8158-6d4d-4958-8b9f-9d6445542f95",
        "resourceData": {"@odata.type": "#Microsoft.Graph.Message", "id": "AAMk"}
    })
}

#[tokio::test]
async fn the_handshake_echoes_the_decoded_token_and_touches_nothing() {
    let (fakes, receiver) = setup();
    let request = Request {
        method: "POST".into(),
        raw_query: "validationToken=Validation%3A+Testing+client+application+%3Cscript%3E".into(),
        body: Vec::new(),
    };
    let (response, outcome) = receiver.receive(&request).await;
    assert_eq!(response.status, 200);
    assert_eq!(response.content_type, "text/plain; charset=utf-8");
    assert_eq!(
        response.body,
        "Validation: Testing client application <script>"
    );
    assert!(outcome.validation);
    assert_eq!(*fakes.lookups.lock().unwrap(), 0);
    assert!(fakes.queued.lock().unwrap().is_empty());
    let empty = Request {
        raw_query: "validationToken=".into(),
        ..request
    };
    assert_eq!(receiver.receive(&empty).await.0.status, 400);
}

#[tokio::test]
async fn a_notification_asks_for_one_delayed_poll_and_answers_202() {
    let (fakes, receiver) = setup();
    let (response, outcome) = receiver
        .receive(&post(json!({"value": [created("sub-1", SECRET)]})))
        .await;
    assert_eq!(response.status, 202, "{response:?}");
    assert_eq!(outcome.polls_requested, 1);
    let queued = fakes.queued.lock().unwrap().clone();
    assert_eq!(
        queued,
        vec![(
            PollRequestMessage {
                mailbox: "helpdesk".into(),
                lifecycle: None,
                subscription_id: None
            },
            Duration::from_secs(2)
        )]
    );
}

#[tokio::test]
async fn a_storm_for_one_mailbox_is_one_poll_until_the_poller_disarms_the_gate() {
    let (fakes, receiver) = setup();
    for _ in 0..100 {
        let (response, _) = receiver
            .receive(&post(json!({"value": [created("sub-1", SECRET)]})))
            .await;
        assert_eq!(response.status, 202);
    }
    assert_eq!(fakes.queued.lock().unwrap().len(), 1);
    // the poller takes the request (before listing); a later notification asks again
    fakes.disarm("helpdesk").await.unwrap();
    receiver
        .receive(&post(json!({"value": [created("sub-1", SECRET)]})))
        .await;
    assert_eq!(fakes.queued.lock().unwrap().len(), 2);
}

#[tokio::test]
async fn forged_or_unknown_notifications_are_403_and_do_nothing() {
    let (fakes, receiver) = setup();
    for body in [
        json!({"value": [created("sub-1", "guessed")]}),
        json!({"value": [created("sub-404", SECRET)]}),
        json!({"value": [{"subscriptionId": "sub-1", "changeType": "created"}]}),
    ] {
        let (response, outcome) = receiver.receive(&post(body)).await;
        assert_eq!(response.status, 403, "{response:?}");
        assert_eq!(outcome.rejected, 1);
    }
    assert!(fakes.queued.lock().unwrap().is_empty());
    assert!(fakes.armed.lock().unwrap().is_empty());
    // a batch mixing one authentic notification with forged ones (a change and a lifecycle
    // event of another mailbox, an unknown subscription) acts on the authentic one only
    let (response, outcome) = receiver
        .receive(&post(json!({"value": [
            created("sub-2", "guessed"),
            {"subscriptionId": "sub-2", "clientState": "guessed", "lifecycleEvent": "subscriptionRemoved"},
            created("sub-404", SECRET),
            created("sub-1", SECRET),
        ]})))
        .await;
    assert_eq!(response.status, 202);
    assert_eq!((outcome.accepted, outcome.rejected), (1, 3));
    assert_eq!((outcome.lifecycle, outcome.polls_requested), (0, 1));
    let queued = fakes.queued.lock().unwrap().clone();
    assert_eq!(queued.len(), 1);
    assert_eq!(queued[0].0.mailbox, "helpdesk");
    assert_eq!(queued[0].0.lifecycle, None);
    let armed: Vec<String> = fakes.armed.lock().unwrap().keys().cloned().collect();
    assert_eq!(armed, ["helpdesk"], "the forged notifications arm no gate");
}

#[tokio::test]
async fn malformed_oversized_and_non_post_requests_are_refused_before_any_lookup() {
    let (fakes, receiver) = setup();
    let malformed = Request {
        body: b"{\"value\": [".to_vec(),
        ..post(json!({}))
    };
    assert_eq!(receiver.receive(&malformed).await.0.status, 400);
    assert_eq!(receiver.receive(&post(json!({"x": 1}))).await.0.status, 400);
    let oversized = Request {
        body: vec![b' '; MAX_BODY_BYTES + 1],
        ..post(json!({}))
    };
    assert_eq!(receiver.receive(&oversized).await.0.status, 413);
    let get = Request {
        method: "GET".into(),
        ..post(json!({"value": [created("sub-1", SECRET)]}))
    };
    assert_eq!(receiver.receive(&get).await.0.status, 405);
    let many: Vec<_> = (0..=MAX_SUBSCRIPTIONS_PER_REQUEST)
        .map(|i| created(&format!("s{i}"), SECRET))
        .collect();
    assert_eq!(
        receiver
            .receive(&post(json!({ "value": many })))
            .await
            .0
            .status,
        400
    );
    assert_eq!(*fakes.lookups.lock().unwrap(), 0);
    assert!(fakes.queued.lock().unwrap().is_empty());
}

#[tokio::test]
async fn lifecycle_events_go_to_the_poller_as_they_are() {
    let (fakes, receiver) = setup();
    let lifecycle = |event: &str| {
        json!({"subscriptionId": "sub-1", "clientState": SECRET, "lifecycleEvent": event,
               "subscriptionExpirationDateTime": "2026-12-10T11:00:00Z", "tenantId": "t"})
    };
    let (response, outcome) = receiver
        .receive(&post(json!({"value": [
            lifecycle("reauthorizationRequired"),
            created("sub-1", SECRET),
        ]})))
        .await;
    assert_eq!(response.status, 202);
    assert_eq!(outcome.lifecycle, 1);
    let queued = fakes.queued.lock().unwrap().clone();
    assert_eq!(
        queued.len(),
        1,
        "the poller polls after renewing: {queued:?}"
    );
    assert_eq!(
        queued[0].0.lifecycle,
        Some(LifecycleEvent::ReauthorizationRequired)
    );
    assert_eq!(queued[0].0.subscription_id.as_deref(), Some("sub-1"));
    assert_eq!(queued[0].1, Duration::ZERO);
    // `missed` is a poll through the gate
    receiver
        .receive(&post(json!({"value": [lifecycle("missed")]})))
        .await;
    let queued = fakes.queued.lock().unwrap().clone();
    assert_eq!(queued.len(), 2);
    assert_eq!(queued[1].0.lifecycle, None);
}

#[tokio::test]
async fn a_queue_failure_is_503_and_reopens_the_gate() {
    let (fakes, receiver) = setup();
    *fakes.queue_fails.lock().unwrap() = true;
    let (response, _) = receiver
        .receive(&post(json!({"value": [created("sub-1", SECRET)]})))
        .await;
    assert_eq!(response.status, 503);
    assert!(!response.body.contains("queue unavailable"));
    assert_eq!(fakes.armed.lock().unwrap().get("helpdesk"), Some(&false));
    *fakes.queue_fails.lock().unwrap() = false;
    let (response, _) = receiver
        .receive(&post(json!({"value": [created("sub-1", SECRET)]})))
        .await;
    assert_eq!(response.status, 202);
    assert_eq!(fakes.queued.lock().unwrap().len(), 1);
}

#[test]
fn settings_name_what_is_missing() {
    let env = |pairs: &'static [(&'static str, &'static str)]| {
        move |k: &str| {
            pairs
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        }
    };
    let e = Settings::from_lookup(env(&[("MAILBRIDGE_STATE_TABLE", "t")])).unwrap_err();
    assert_eq!(e.problems.len(), 1, "{e}");
    assert!(
        e.problems[0].starts_with("MAILBRIDGE_POLL_REQUEST_QUEUE_URL: is required"),
        "{e}"
    );
    let s = Settings::from_lookup(env(&[
        ("MAILBRIDGE_STATE_TABLE", "t"),
        ("MAILBRIDGE_POLL_REQUEST_QUEUE_URL", "http://q"),
    ]))
    .unwrap();
    assert_eq!(s.poll_delay, Duration::from_secs(2));
    let e = Settings::from_lookup(env(&[
        ("MAILBRIDGE_STATE_TABLE", "t"),
        ("MAILBRIDGE_POLL_REQUEST_QUEUE_URL", "http://q"),
        ("MAILBRIDGE_POLL_REQUEST_DELAY_SECONDS", "901"),
    ]))
    .unwrap_err();
    assert_eq!(e.problems.len(), 1, "{e}");
    assert!(
        e.problems[0].starts_with("MAILBRIDGE_POLL_REQUEST_DELAY_SECONDS: "),
        "{e}"
    );
}

#[test]
fn the_metrics_line_defines_what_it_carries() {
    let outcome = Outcome {
        accepted: 3,
        rejected: 1,
        polls_requested: 1,
        coalesced: 2,
        ..Default::default()
    };
    let line: serde_json::Value = serde_json::from_str(&emf_line(&outcome, 202, 1)).unwrap();
    assert_eq!(line["PollRequestsCoalesced"], 2);
    assert_eq!(line["NotificationRequestsFailed"], 0);
    for m in line["_aws"]["CloudWatchMetrics"][0]["Metrics"]
        .as_array()
        .unwrap()
    {
        assert!(line[m["Name"].as_str().unwrap()].is_u64(), "{line}");
    }
}

#[test]
fn the_metrics_line_is_the_emf_document_it_always_was() {
    let outcome = Outcome {
        accepted: 3,
        rejected: 1,
        polls_requested: 1,
        coalesced: 2,
        lifecycle: 4,
        ..Default::default()
    };
    let line: serde_json::Value =
        serde_json::from_str(&emf_line(&outcome, 503, 1_700_000_000_000)).unwrap();
    let metric = |name: &str| json!({"Name": name, "Unit": "Count"});
    assert_eq!(
        line,
        json!({
            "Function": "receive-notifications",
            "status": 503,
            "NotificationsAccepted": 3,
            "NotificationsRejected": 1,
            "PollRequestsQueued": 1,
            "PollRequestsCoalesced": 2,
            "LifecycleNotifications": 4,
            "NotificationRequestsFailed": 1,
            "_aws": {
                "Timestamp": 1_700_000_000_000_i64,
                "CloudWatchMetrics": [{
                    "Namespace": "Mailbridge",
                    "Dimensions": [["Function"]],
                    "Metrics": (["NotificationsAccepted", "NotificationsRejected", "PollRequestsQueued", "PollRequestsCoalesced", "LifecycleNotifications", "NotificationRequestsFailed"].map(metric)),
                }],
            },
        })
    );
}
