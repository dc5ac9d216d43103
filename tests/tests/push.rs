//! Push end to end: the real receive-notifications bootstrap behind a Function URL (the local
//! stack's emulator), the real poll-mailboxes bootstrap, the Graph stand-in's subscriptions and
//! notifications over Dovecot, moto (state table, poll-request queue, secrets) and the ticket API
//! stand-in. The test plays Lambda's SQS event source: it receives the poll requests from the
//! queue and hands them to the poller as the SQS event Lambda would.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use local_stack::function_url::FunctionUrl;
use local_stack::identity::{AppRegistration, UserAccount};
use local_stack::runtime_api::{FunctionConfig, RuntimeApi, workspace_binary};
use mailbridge::state_table::put_mailbox_config;
use mailbridge::state_table::{DynamoStateStore, SubscriptionRecord, SubscriptionStore};
use mailbridge::token::secret::AccountSecret;
use mailbridge_tests::{dynamodb, put_secret, sqs, stack, unique, unique_user};
use serde_json::{Value, json};

const PASSWORD: &str = "correct horse battery staple";
const GRAPH_MAIL: &str = "https://graph.microsoft.com/Mail.ReadWrite";

struct Push {
    table: String,
    queue_url: String,
    queue_arn: String,
    receiver: Arc<RuntimeApi>,
    url: String,
    poller: Option<RuntimeApi>,
    poller_env: Vec<(String, String)>,
    tenant: String,
    client_id: String,
    sink: String,
}

async fn binary(name: &'static str) -> std::path::PathBuf {
    tokio::task::spawn_blocking(move || workspace_binary(name, name))
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("{e:#}"))
}

impl Push {
    /// The receiver behind its Function URL, with a state table and a poll-request queue of its
    /// own; poll requests wait no time in the queue.
    async fn start() -> Push {
        Push::start_with_delay(0).await
    }

    /// [`Push::start`] with poll requests waiting `delay_seconds` in the queue
    /// (`MAILBRIDGE_POLL_REQUEST_DELAY_SECONDS`; the template's is 2).
    async fn start_with_delay(delay_seconds: u32) -> Push {
        stack().graph().allow_local_notification_urls();
        let table = mailbridge_tests::create_state_table("push").await.unwrap();
        let queue_url = mailbridge_tests::create_queue(&unique("poll-requests"))
            .await
            .unwrap();
        let queue_arn = mailbridge_tests::queue_arn(&queue_url).await.unwrap();
        let mut env = stack().moto().env();
        env.extend([
            ("MAILBRIDGE_STATE_TABLE".to_string(), table.clone()),
            (
                "MAILBRIDGE_POLL_REQUEST_QUEUE_URL".to_string(),
                queue_url.clone(),
            ),
            (
                "MAILBRIDGE_POLL_REQUEST_DELAY_SECONDS".to_string(),
                delay_seconds.to_string(),
            ),
            ("RUST_LOG".to_string(), "info".to_string()),
        ]);
        let receiver = Arc::new(RuntimeApi::start().await.expect("runtime api"));
        receiver
            .spawn_function(
                &FunctionConfig::new(
                    "receive-notifications",
                    binary("receive-notifications").await,
                )
                .with_env(env),
            )
            .expect("spawn the receiver");
        let url = FunctionUrl::start(receiver.clone()).await.unwrap().url;
        let idp = stack().identity();
        let tenant = format!("{}.onmicrosoft.com", unique("tenant"));
        let client_id = uuid::Uuid::new_v4().to_string();
        let mut app = AppRegistration::mailbridge(&tenant, &client_id);
        app.consented_scopes = vec![GRAPH_MAIL.to_string()];
        idp.register_app(app);
        Push {
            table,
            queue_url,
            queue_arn,
            receiver,
            url,
            poller: None,
            poller_env: Vec::new(),
            tenant,
            client_id,
            sink: unique("sink"),
        }
    }

    /// The real poller, keeping subscriptions that notify the receiver's URL.
    async fn with_poller(mut self) -> Push {
        let mut env = mailbridge_tests::poller::bootstrap_env(&self.table, "info").await;
        env.extend([
            ("MAILBRIDGE_GRAPH_URL".to_string(), stack().graph().v1_url()),
            ("MAILBRIDGE_NOTIFICATION_URL".to_string(), self.url.clone()),
        ]);
        self.poller_env = env;
        self.poller = Some(self.spawn_poller().await);
        self
    }

    /// One more poller process (another Lambda execution environment), set up like the first.
    async fn spawn_poller(&self) -> RuntimeApi {
        assert!(!self.poller_env.is_empty(), "with_poller first");
        let api = RuntimeApi::start().await.expect("runtime api");
        api.spawn_function(
            &FunctionConfig::new("poll-mailboxes", binary("poll-mailboxes").await)
                .with_env(self.poller_env.clone()),
        )
        .expect("spawn the poller");
        api
    }

    /// A Graph mailbox with `push: true`; its address.
    async fn mailbox(&self, name: &str) -> String {
        let user = unique_user(name);
        self.mailbox_for(name, &user, None).await;
        user
    }

    /// Store (or replace) mailbox `name` on `user` with `push: true`, polling `folder` (None:
    /// the default).
    async fn mailbox_for(&self, name: &str, user: &str, folder: Option<&str>) {
        self.mailbox_with(name, user, folder, true).await
    }

    /// Store (or replace) mailbox `name` on `user`, polling `folder`, pushed or not.
    async fn mailbox_with(&self, name: &str, user: &str, folder: Option<&str>, push: bool) {
        let idp = stack().identity();
        idp.register_user(UserAccount::new(&self.tenant, user, PASSWORD));
        let mut secret = AccountSecret::new(&self.tenant, &self.client_id, user);
        secret.authority_host = idp.base_url.clone();
        secret.password = Some(PASSWORD.into());
        let account = format!("{}-{name}", self.sink);
        put_secret(&format!("mailbridge/{account}"), &secret.to_json())
            .await
            .unwrap();
        let mut config = json!({
            "user": user,
            "account": account,
            "protocol": "graph",
            "push": push,
            "ticket_api_url": stack().tickets().sink_url(&self.sink),
        });
        if let Some(folder) = folder {
            config["folder"] = json!(folder);
        }
        put_mailbox_config(
            &dynamodb(),
            &self.table,
            name,
            &config,
            &mailbridge::mailbox::TargetPolicy::local(),
        )
        .await
        .unwrap();
    }

    fn store(&self) -> DynamoStateStore {
        DynamoStateStore::new(dynamodb(), &self.table)
    }

    async fn post(&self, query: &str, body: Value) -> (u16, String, String) {
        let response = reqwest::Client::new()
            .post(format!("{}{query}", self.url))
            .json(&body)
            .send()
            .await
            .expect("the function URL answers");
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        (status, content_type, response.text().await.unwrap())
    }

    /// Every poll request now in the queue (deleted), waiting up to `wait` for the first.
    async fn drain_queue(&self, wait: Duration) -> Vec<aws_sdk_sqs::types::Message> {
        let mut messages = Vec::new();
        let until = std::time::Instant::now() + wait;
        loop {
            let out = sqs()
                .receive_message()
                .queue_url(&self.queue_url)
                .max_number_of_messages(10)
                .wait_time_seconds(1)
                .send()
                .await
                .unwrap();
            let got = out.messages().to_vec();
            for m in &got {
                sqs()
                    .delete_message()
                    .queue_url(&self.queue_url)
                    .receipt_handle(m.receipt_handle().unwrap())
                    .send()
                    .await
                    .unwrap();
            }
            let empty = got.is_empty();
            messages.extend(got);
            if (empty && !messages.is_empty()) || std::time::Instant::now() >= until {
                return messages;
            }
        }
    }

    /// Hand `messages` to the poller as Lambda's SQS event source would; its answer.
    async fn poll_requests(&self, messages: &[aws_sdk_sqs::types::Message]) -> Value {
        let mut event = aws_lambda_events::event::sqs::SqsEvent::default();
        event.records = messages
            .iter()
            .map(|m| mailbridge_tests::sqs_event_record(m, &self.queue_arn))
            .collect();
        self.invoke_poller(serde_json::to_value(event).unwrap())
            .await
    }

    async fn scheduled_run(&self) -> Value {
        self.invoke_poller(schedule_event()).await
    }

    async fn invoke_poller(&self, event: Value) -> Value {
        let api = self.poller.as_ref().expect("with_poller");
        api.invoke(event, Duration::from_secs(60))
            .await
            .unwrap()
            .into_response()
            .unwrap_or_else(|e| panic!("{e:#}\n{}", api.logs()))
    }

    /// Run the operator CLI `mailbridge` against this deployment's table and secrets.
    async fn cli(&self, args: &[&str]) -> std::process::Output {
        let output = mailbridge_tests::cli::command_on_stack(args, "mailbridge/", &self.table)
            .output()
            .await
            .expect("run mailbridge");
        eprintln!(
            "$ mailbridge {}\n--- exit {:?}\n--- stdout\n{}--- stderr\n{}",
            args.join(" "),
            output.status.code(),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        output
    }

    fn poller_logs(&self) -> String {
        self.poller.as_ref().map(|p| p.logs()).unwrap_or_default()
    }
}

/// The event EventBridge Scheduler sends the poller (infra/events/poll-schedule.json).
fn schedule_event() -> Value {
    serde_json::from_str(
        &std::fs::read_to_string(local_stack::repo_root().join("infra/events/poll-schedule.json"))
            .unwrap(),
    )
    .unwrap()
}

fn notification(subscription: &str, client_state: &str) -> Value {
    json!({"value": [{
        "subscriptionId": subscription,
        "subscriptionExpirationDateTime": "2026-12-10T11:00:00Z",
        "clientState": client_state,
        "changeType": "created",
        "resource": "Users/x/Messages/AAMk",
        "tenantId": "84bd8158-6d4d-4958-8b9f-9d6445542f95",
        "resourceData": {"@odata.type": "#Microsoft.Graph.Message", "id": "AAMk"}
    }]})
}

fn mail(subject: &str) -> Vec<u8> {
    format!(
        "From: Customer <customer@example.com>\r\nTo: help@contoso.com\r\nSubject: {subject}\r\nMessage-ID: <{}@example.com>\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nPlease help with {subject}.\r\n",
        uuid::Uuid::new_v4()
    )
    .into_bytes()
}

/// The receiver bootstrap behind its URL: the handshake, forged and unknown notifications
/// (403, nothing queued), and a storm of 100 notifications for one mailbox (one poll request).
#[tokio::test(flavor = "multi_thread")]
async fn the_receiver_echoes_the_handshake_refuses_forgeries_and_coalesces_a_storm() {
    let push = Push::start().await;
    let secret = mailbridge::push::new_client_state();
    push.store()
        .put_subscription(&SubscriptionRecord {
            id: "sub-storm".into(),
            mailbox: "helpdesk".into(),
            account: "acct".into(),
            user: "helpdesk@contoso.com".into(),
            client_state_sha256: mailbridge::push::client_state_sha256(&secret),
            resource: "/users/helpdesk@contoso.com/mailFolders('inbox')/messages".into(),
            folder: "INBOX".into(),
            expires_at: chrono::Utc::now().timestamp() + 3600,
        })
        .await
        .unwrap();

    let (status, content_type, body) = push
        .post(
            "?validationToken=Validation%3A+Testing+client+application+reachability+%26+more",
            Value::Null,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(content_type.starts_with("text/plain"), "{content_type}");
    assert_eq!(
        body,
        "Validation: Testing client application reachability & more"
    );

    for (what, body) in [
        ("a forged clientState", notification("sub-storm", "guessed")),
        ("an unknown subscription", notification("sub-404", &secret)),
    ] {
        let (status, _, answer) = push.post("", body).await;
        assert_eq!(status, 403, "{what}: {answer}");
    }
    let (status, _, _) = push.post("", json!({"value": "not a collection"})).await;
    assert_eq!(status, 400);
    assert!(
        push.drain_queue(Duration::from_secs(2)).await.is_empty(),
        "refused notifications queue nothing"
    );
    let gate = dynamodb()
        .get_item()
        .table_name(&push.table)
        .key(
            "pk",
            aws_sdk_dynamodb::types::AttributeValue::S("poll-request#helpdesk".into()),
        )
        .send()
        .await
        .unwrap();
    assert!(gate.item.is_none(), "refused notifications write nothing");

    let storm: Vec<_> = (0..100)
        .map(|_| {
            let body = notification("sub-storm", &secret);
            let push = &push;
            async move { push.post("", body).await.0 }
        })
        .collect();
    let statuses = futures::future::join_all(storm).await;
    assert!(statuses.iter().all(|s| *s == 202), "{statuses:?}");
    let requests = push.drain_queue(Duration::from_secs(5)).await;
    assert_eq!(
        requests.len(),
        1,
        "100 notifications, one poll request: {} requests",
        requests.len()
    );
    assert_eq!(requests[0].body(), Some(r#"{"mailbox":"helpdesk"}"#));
}

/// Mail delivered into the mailbox → the stand-in notifies → the receiver queues a poll
/// request → the poller (handed the SQS event) opens the ticket. The subscription itself was
/// made by the scheduled run, through the validation handshake with the real receiver.
#[tokio::test(flavor = "multi_thread")]
async fn delivered_mail_becomes_a_ticket_through_notification_receiver_and_poller() {
    let push = Push::start().await.with_poller().await;
    let user = push.mailbox("pushed").await;
    let first = push.scheduled_run().await;
    assert_eq!(first["mailboxes"][0]["outcome"], "ok", "{first}");
    let logs = push.poller_logs();
    assert!(logs.contains("\"PushSubscriptionsCreated\":1"), "{logs}");
    let subscriptions = stack().graph().subscriptions(&user);
    assert_eq!(subscriptions.len(), 1, "{subscriptions:?}");
    assert!(subscriptions[0].resource.contains("mailFolders('inbox')"));

    stack()
        .dovecot()
        .deliver_to(&user, "INBOX", &mail("Pushed mail"))
        .unwrap();
    let requests = push.drain_queue(Duration::from_secs(20)).await;
    assert_eq!(requests.len(), 1, "{}", push.receiver.logs());
    let sent = stack().graph().sent_notifications(&user);
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert_eq!(sent[0].status, Some(202));
    let answer = push.poll_requests(&requests).await;
    assert_eq!(answer["tickets_created"], 1, "{answer}");
    assert_eq!(answer["batchItemFailures"], json!([]));
    let tickets = stack().tickets().tickets(&push.sink);
    assert_eq!(tickets.len(), 1);

    // Graph removes the subscription: the poller, told through the receiver, makes a new one.
    let old = subscriptions[0].id.clone();
    let status = stack()
        .graph()
        .send_lifecycle(&old, "subscriptionRemoved")
        .await
        .unwrap();
    assert_eq!(status, 202);
    let requests = push.drain_queue(Duration::from_secs(10)).await;
    assert_eq!(requests.len(), 1);
    push.poll_requests(&requests).await;
    let now = stack().graph().subscriptions(&user);
    assert_eq!(now.len(), 1, "{now:?}\n{}", push.poller_logs());
    assert_ne!(now[0].id, old);
    let record = push
        .store()
        .subscription_of("pushed")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(record.id, now[0].id);
}

/// A notification Graph never delivered costs one schedule period, not the mail; a renewal
/// Graph refuses is counted for the alarm, and the next run renews.
#[tokio::test(flavor = "multi_thread")]
async fn a_missed_notification_is_recovered_by_the_schedule_and_renewal_failures_are_counted() {
    let push = Push::start().await.with_poller().await;
    let user = push.mailbox("missed").await;
    push.scheduled_run().await;
    assert_eq!(stack().graph().subscriptions(&user).len(), 1);

    stack().graph().drop_notifications(&user, 1);
    stack()
        .dovecot()
        .deliver_to(&user, "INBOX", &mail("Never announced"))
        .unwrap();
    // the stand-in sees the mail and drops its notification
    for _ in 0..50 {
        if !stack().graph().sent_notifications(&user).is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(stack().graph().sent_notifications(&user)[0].dropped);
    assert!(push.drain_queue(Duration::from_secs(2)).await.is_empty());
    assert!(stack().tickets().tickets(&push.sink).is_empty());
    let run = push.scheduled_run().await;
    assert_eq!(run["tickets_created"], 1, "{run}");

    // the subscription is near its end and Graph refuses the renewal
    let record = push
        .store()
        .subscription_of("missed")
        .await
        .unwrap()
        .unwrap();
    push.store()
        .put_subscription(&SubscriptionRecord {
            expires_at: chrono::Utc::now().timestamp() + 3600,
            ..record.clone()
        })
        .await
        .unwrap();
    stack().graph().fail_subscription_updates(&user, 1);
    push.scheduled_run().await;
    let logs = push.poller_logs();
    assert!(logs.contains("\"PushSubscriptionsFailed\":1"), "{logs}");
    push.scheduled_run().await;
    let logs = push.poller_logs();
    assert!(logs.contains("\"PushSubscriptionsRenewed\":1"), "{logs}");
    let renewed = push
        .store()
        .subscription_of("missed")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(renewed.id, record.id);
    assert!(renewed.expires_at > chrono::Utc::now().timestamp() + 6 * 86_400);
}

/// `mailbridge mailbox remove` deletes the mailbox's subscription in Graph at once: no
/// notification for it queues a poll request after the command returns.
#[tokio::test(flavor = "multi_thread")]
async fn removing_a_mailbox_deletes_its_graph_subscription_at_once() {
    let push = Push::start().await.with_poller().await;
    let user = push.mailbox("leaving").await;
    push.scheduled_run().await;
    let subscription = stack().graph().subscriptions(&user);
    assert_eq!(subscription.len(), 1, "{}", push.poller_logs());

    let out = push.cli(&["mailbox", "remove", "leaving", "--json"]).await;
    assert_eq!(out.status.code(), Some(0));
    assert!(
        stack().graph().subscriptions(&user).is_empty(),
        "the subscription is gone in Graph"
    );
    let answer: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        answer["push_subscription"]["id"],
        subscription[0].id.as_str()
    );
    assert_eq!(answer["push_subscription"]["deleted"], true, "{answer}");
    assert_eq!(push.store().subscription_of("leaving").await.unwrap(), None);
    assert!(
        !push
            .store()
            .subscribed_mailboxes()
            .await
            .unwrap()
            .contains(&"leaving".to_string())
    );
    stack()
        .dovecot()
        .deliver_to(&user, "INBOX", &mail("After the mailbox left"))
        .unwrap();
    assert!(push.drain_queue(Duration::from_secs(3)).await.is_empty());
    assert!(stack().graph().sent_notifications(&user).is_empty());
}

/// A mailbox that now polls another folder gets a subscription to that folder at the next
/// scheduled run (the resource names the folder); the old one is deleted in Graph.
#[tokio::test(flavor = "multi_thread")]
async fn changing_the_polled_folder_replaces_the_subscription() {
    let push = Push::start().await.with_poller().await;
    let user = unique_user("moving");
    push.mailbox_for("moving", &user, None).await;
    push.scheduled_run().await;
    let before = stack().graph().subscriptions(&user);
    assert_eq!(before.len(), 1, "{}", push.poller_logs());
    assert!(before[0].resource.contains("mailFolders('inbox')"));

    stack().dovecot().create_folder(&user, "Support").unwrap();
    push.mailbox_for("moving", &user, Some("Support")).await;
    push.scheduled_run().await;
    let after = stack().graph().subscriptions(&user);
    assert_eq!(after.len(), 1, "the old subscription is deleted: {after:?}");
    assert_ne!(after[0].id, before[0].id, "{}", push.poller_logs());
    assert!(
        !after[0].resource.contains("mailFolders('inbox')"),
        "{}",
        after[0].resource
    );
    let record = push
        .store()
        .subscription_of("moving")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (record.id.as_str(), record.folder.as_str()),
        (after[0].id.as_str(), "Support")
    );

    // mail in the new folder is announced and becomes a ticket
    stack()
        .dovecot()
        .deliver_to(&user, "Support", &mail("Filed under support"))
        .unwrap();
    let requests = push.drain_queue(Duration::from_secs(20)).await;
    assert_eq!(requests.len(), 1, "{}", push.receiver.logs());
    let answer = push.poll_requests(&requests).await;
    assert_eq!(
        answer["tickets_created"],
        1,
        "{answer}\n{}",
        push.poller_logs()
    );
}

/// A whole number from the environment, else `default`.
fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{name}={v:?}: not a number"))
        })
        .unwrap_or(default)
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// Nearest-rank percentile `p` (0–100) of `sorted`, in seconds.
fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil().max(1.0) as usize;
    sorted[rank.min(sorted.len()) - 1].as_secs_f64()
}

fn summary(mut times: Vec<Duration>) -> String {
    times.sort();
    format!(
        "n={} p50 {:.1} s, p95 {:.1} s, max {:.1} s",
        times.len(),
        percentile(&times, 50.0),
        percentile(&times, 95.0),
        percentile(&times, 100.0)
    )
}

/// Sleep until `at`; false when `stop` was set first (checked every 200 ms).
async fn sleep_until_unless(at: tokio::time::Instant, stop: &AtomicBool) -> bool {
    loop {
        if stop.load(Ordering::SeqCst) {
            return false;
        }
        let now = tokio::time::Instant::now();
        if now >= at {
            return true;
        }
        tokio::time::sleep((at - now).min(Duration::from_millis(200))).await;
    }
}

/// What the emulated SQS event source saw.
#[derive(Default, Debug)]
struct EventSourceStats {
    invocations: u64,
    records: u64,
    batch_item_failures: u64,
    tickets: u64,
    invocation_times: Vec<Duration>,
}

/// Lambda's SQS event source for the poll-request queue, as template.yaml configures it: batches
/// of up to 10, a record the poller reports as failed is left on the queue and comes back after
/// the visibility timeout (PollTimeout, 240 s), the others are deleted. One of these per unit of
/// `ScalingConfig.MaximumConcurrency`.
async fn sqs_event_source(
    poller: &RuntimeApi,
    queue_url: &str,
    queue_arn: &str,
    stop: &AtomicBool,
    stats: &std::sync::Mutex<EventSourceStats>,
) {
    const VISIBILITY_TIMEOUT_SECONDS: i32 = 240;
    while !stop.load(Ordering::SeqCst) {
        let out = sqs()
            .receive_message()
            .queue_url(queue_url)
            .max_number_of_messages(10)
            .wait_time_seconds(1)
            .visibility_timeout(VISIBILITY_TIMEOUT_SECONDS)
            .send()
            .await
            .expect("receive poll requests");
        let messages = out.messages().to_vec();
        if messages.is_empty() {
            continue;
        }
        let mut event = aws_lambda_events::event::sqs::SqsEvent::default();
        event.records = messages
            .iter()
            .map(|m| mailbridge_tests::sqs_event_record(m, queue_arn))
            .collect();
        let started = std::time::Instant::now();
        let answer = poller
            .invoke(
                serde_json::to_value(event).unwrap(),
                Duration::from_secs(VISIBILITY_TIMEOUT_SECONDS as u64),
            )
            .await
            .unwrap()
            .into_response()
            .unwrap_or_else(|e| panic!("{e:#}\n{}", poller.logs()));
        let took = started.elapsed();
        let failed: Vec<&str> = answer["batchItemFailures"]
            .as_array()
            .map(|f| {
                f.iter()
                    .filter_map(|i| i["itemIdentifier"].as_str())
                    .collect()
            })
            .unwrap_or_default();
        for m in &messages {
            if !failed.contains(&m.message_id().unwrap_or_default()) {
                sqs()
                    .delete_message()
                    .queue_url(queue_url)
                    .receipt_handle(m.receipt_handle().unwrap())
                    .send()
                    .await
                    .expect("delete a handled poll request");
            }
        }
        let mut stats = stats.lock().unwrap();
        stats.invocations += 1;
        stats.records += messages.len() as u64;
        stats.batch_item_failures += failed.len() as u64;
        stats.tickets += answer["tickets_created"].as_u64().unwrap_or(0);
        stats.invocation_times.push(took);
    }
}

/// Time to ticket (mail delivered into the mailbox → ticket accepted by the ticket API), push vs
/// scheduled polling, in one run: two Graph mailboxes of one deployment, `pushed` (`push: true`)
/// and `scheduled`; every mail arrives in both at the same moment, at random times (uniform,
/// seeded) over the window. Everything runs through the real bootstraps: the Graph stand-in's
/// watcher notifies the receiver behind the Function URL emulator, which queues poll requests
/// (2 s delay, as deployed); two poller processes play the SQS event source (MaximumConcurrency
/// 2); a third gets the scheduled event every period (the whole deployment, so the pushed
/// mailbox keeps its safety net, as deployed).
///
/// Run: `cargo build --workspace --bins && cargo test -p mailbridge-tests --test push -- --ignored --nocapture bench_`
/// (MAILBRIDGE_BENCH_MAILS, _WINDOW_SECONDS, _SCHEDULE_SECONDS, _SEED change the defaults
/// 200, 270, 60, 22).
#[tokio::test(flavor = "multi_thread")]
#[ignore = "benchmark: run explicitly (see BENCHMARKS.md)"]
async fn bench_time_to_ticket_push_vs_schedule() {
    use rand::{Rng as _, SeedableRng as _};
    let mails = env_number("MAILBRIDGE_BENCH_MAILS", 200) as usize;
    let window = Duration::from_secs(env_number("MAILBRIDGE_BENCH_WINDOW_SECONDS", 270));
    let period = Duration::from_secs(env_number("MAILBRIDGE_BENCH_SCHEDULE_SECONDS", 60));
    let mut rng = rand::rngs::StdRng::seed_from_u64(env_number("MAILBRIDGE_BENCH_SEED", 22));
    let load_before = load_average();

    let push = Push::start_with_delay(2).await.with_poller().await;
    let (pushed, scheduled) = (unique_user("pushed"), unique_user("scheduled"));
    push.mailbox_with("pushed", &pushed, None, true).await;
    push.mailbox_with("scheduled", &scheduled, None, false)
        .await;
    let first = push.scheduled_run().await;
    assert_eq!(first["mailboxes_failed"], 0, "{first}");
    assert_eq!(stack().graph().subscriptions(&pushed).len(), 1);
    assert!(stack().graph().subscriptions(&scheduled).is_empty());
    let sources = [push.spawn_poller().await, push.spawn_poller().await];
    let schedule_poller = push.spawn_poller().await;

    let mut offsets: Vec<Duration> = (0..mails)
        .map(|_| window.mul_f64(rng.random::<f64>()))
        .collect();
    offsets.sort();
    let phase = period.mul_f64(rng.random::<f64>());
    let stop = AtomicBool::new(false);
    let source_stats = std::sync::Mutex::new(EventSourceStats::default());
    let schedule_stats = std::sync::Mutex::new((0u64, 0u64)); // runs, pushed-mailbox tickets
    let delivered: std::sync::Mutex<HashMap<(usize, &str), std::time::Instant>> =
        Default::default();
    let t0 = tokio::time::Instant::now();

    let deliver_all = async {
        for (i, offset) in offsets.iter().enumerate() {
            tokio::time::sleep_until(t0 + *offset).await;
            for (kind, user) in [("pushed", &pushed), ("scheduled", &scheduled)] {
                let user = user.clone();
                // one customer each: the per-sender quota (100 an hour) is not what is measured
                let raw = String::from_utf8(mail(&format!("bench-{i:04}-{kind}")))
                    .unwrap()
                    .replace("customer@example.com", &format!("customer-{i}@example.com"))
                    .into_bytes();
                tokio::task::spawn_blocking(move || {
                    stack().dovecot().deliver_to(&user, "INBOX", &raw)
                })
                .await
                .unwrap()
                .expect("deliver");
                delivered
                    .lock()
                    .unwrap()
                    .insert((i, kind), std::time::Instant::now());
            }
        }
    };
    let schedule = async {
        let mut k = 0u32;
        while sleep_until_unless(t0 + phase + period * k, &stop).await {
            let run = schedule_poller
                .invoke(schedule_event(), Duration::from_secs(240))
                .await
                .unwrap()
                .into_response()
                .unwrap_or_else(|e| panic!("{e:#}"));
            let pushed_tickets = run["mailboxes"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|m| m["mailbox"] == "pushed")
                .filter_map(|m| m["tickets_created"].as_u64())
                .sum::<u64>();
            let mut stats = schedule_stats.lock().unwrap();
            stats.0 += 1;
            stats.1 += pushed_tickets;
            k += 1;
        }
    };
    let wait_for_tickets = async {
        deliver_all.await;
        let give_up = tokio::time::Instant::now() + period + Duration::from_secs(120);
        while tokio::time::Instant::now() < give_up
            && stack().tickets().tickets(&push.sink).len() < 2 * mails
        {
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        stop.store(true, Ordering::SeqCst);
    };
    let event_sources = futures::future::join_all(
        sources
            .iter()
            .map(|p| sqs_event_source(p, &push.queue_url, &push.queue_arn, &stop, &source_stats)),
    );
    tokio::join!(wait_for_tickets, schedule, event_sources);
    let load_after = load_average();

    let delivered = delivered.into_inner().unwrap();
    let mut times: HashMap<&str, Vec<Duration>> = HashMap::new();
    let mut seen = std::collections::HashSet::new();
    for ticket in stack().tickets().tickets(&push.sink) {
        let body = ticket.body.to_string();
        let Some(at) = body.find("bench-") else {
            continue;
        };
        let marker = &body[at + "bench-".len()..];
        let Ok(i) = marker[..4].parse::<usize>() else {
            continue;
        };
        let kind = if marker[4..].starts_with("-pushed") {
            "pushed"
        } else {
            "scheduled"
        };
        if !seen.insert((i, kind)) {
            continue;
        }
        let mailed = delivered[&(i, kind)];
        times
            .entry(kind)
            .or_default()
            .push(ticket.accepted_at.saturating_duration_since(mailed));
    }
    // delivery → the stand-in's notification answered by the receiver (one per mail, in order)
    let mut announced: Vec<std::time::Instant> = stack()
        .graph()
        .sent_notifications(&pushed)
        .iter()
        .filter(|n| n.kind == "created")
        .map(|n| n.at)
        .collect();
    announced.sort();
    let notify_times: Vec<Duration> = (0..mails)
        .zip(announced.iter())
        .map(|(i, at)| at.saturating_duration_since(delivered[&(i, "pushed")]))
        .collect();
    let source = source_stats.into_inner().unwrap();
    let (runs, schedule_pushed_tickets) = schedule_stats.into_inner().unwrap();

    println!(
        "bench: time to ticket over {mails} mails at random times in {} s (seeded), dev profile, load {load_before} before / {load_after} after",
        window.as_secs()
    );
    println!(
        "bench: push (stand-in notification → receiver → queue, 2 s delay → poller): {}",
        summary(times.remove("pushed").unwrap_or_default())
    );
    println!(
        "bench: scheduled polling every {} s (first run {:.1} s into the window): {}",
        period.as_secs(),
        phase.as_secs_f64(),
        summary(times.remove("scheduled").unwrap_or_default())
    );
    println!(
        "bench: push detail: delivery → notification answered {} ({} notifications); {} poller invocations from the queue ({} records, {} batch item failures, {} tickets, invocation {}); {} scheduled runs opened {} of the pushed mailbox's tickets",
        summary(notify_times),
        announced.len(),
        source.invocations,
        source.records,
        source.batch_item_failures,
        source.tickets,
        summary(source.invocation_times),
        runs,
        schedule_pushed_tickets,
    );
}
