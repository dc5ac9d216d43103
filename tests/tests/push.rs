//! Push end to end: the real receive-notifications bootstrap behind a Function URL (the local
//! stack's emulator), the real poll-mailboxes bootstrap, the Graph stand-in's subscriptions and
//! notifications over Dovecot, moto (state table, poll-request queue, secrets) and the ticket API
//! stand-in. The test plays Lambda's SQS event source: it receives the poll requests from the
//! queue and hands them to the poller as the SQS event Lambda would.

use std::sync::Arc;
use std::time::Duration;

use local_stack::function_url::FunctionUrl;
use local_stack::identity::{AppRegistration, UserAccount};
use local_stack::runtime_api::{FunctionConfig, RuntimeApi, workspace_binary};
use mailbridge::push::{DynamoPushStore, SubscriptionRecord, SubscriptionStore};
use mailbridge::state_table::put_mailbox_config;
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
    /// The receiver behind its Function URL, with a state table and a poll-request queue of its own.
    async fn start() -> Push {
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
                "0".to_string(),
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
            tenant,
            client_id,
            sink: unique("sink"),
        }
    }

    /// The real poller, keeping subscriptions that notify the receiver's URL.
    async fn with_poller(mut self) -> Push {
        let thread_key_secret = unique("thread-key");
        put_secret(&thread_key_secret, "0123456789abcdef0123456789abcdef")
            .await
            .unwrap();
        let mut env = stack().moto().env();
        env.extend([
            ("MAILBRIDGE_STATE_TABLE".to_string(), self.table.clone()),
            (
                "MAILBRIDGE_ALLOW_LOCAL_TARGETS".to_string(),
                "true".to_string(),
            ),
            (
                "MAILBRIDGE_THREAD_KEY_SECRET".to_string(),
                thread_key_secret,
            ),
            (
                "MAILBRIDGE_SECRET_PREFIX".to_string(),
                "mailbridge/".to_string(),
            ),
            ("MAILBRIDGE_GRAPH_URL".to_string(), stack().graph().v1_url()),
            ("MAILBRIDGE_NOTIFICATION_URL".to_string(), self.url.clone()),
            ("RUST_LOG".to_string(), "info".to_string()),
        ]);
        let api = RuntimeApi::start().await.expect("runtime api");
        api.spawn_function(
            &FunctionConfig::new("poll-mailboxes", binary("poll-mailboxes").await).with_env(env),
        )
        .expect("spawn the poller");
        self.poller = Some(api);
        self
    }

    /// A Graph mailbox with `push: true`; its address.
    async fn mailbox(&self, name: &str) -> String {
        let user = unique_user(name);
        self.mailbox_for(name, &user, None).await;
        user
    }

    /// Store (or replace) mailbox `name` on `user`, polling `folder` (None: the default).
    async fn mailbox_for(&self, name: &str, user: &str, folder: Option<&str>) {
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
            "push": true,
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

    fn store(&self) -> DynamoPushStore {
        DynamoPushStore::new(dynamodb(), &self.table)
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
        let schedule: Value = serde_json::from_str(
            &std::fs::read_to_string(
                local_stack::repo_root().join("infra/events/poll-schedule.json"),
            )
            .unwrap(),
        )
        .unwrap();
        self.invoke_poller(schedule).await
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
        let cli = tokio::task::spawn_blocking(|| workspace_binary("mailbridge-cli", "mailbridge"))
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("{e:#}"));
        let output = tokio::process::Command::new(cli)
            .args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(stack().moto().env())
            .env("MAILBRIDGE_SECRET_PREFIX", "mailbridge/")
            .env("MAILBRIDGE_STATE_TABLE", &self.table)
            .env("MAILBRIDGE_ALLOW_LOCAL_TARGETS", "true")
            .env("MAILBRIDGE_GRAPH_URL", stack().graph().v1_url())
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
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
