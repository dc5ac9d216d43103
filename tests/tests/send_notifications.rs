//! send-notifications against real servers: moto (SQS queue + DLQ, DynamoDB state table,
//! Secrets Manager), the identity stand-in (tokens) and the Graph stand-in (sendMail).
//!
//! Each test owns a tenant, app, user, account secret, queue pair and state table; faults are
//! injected only for the test's own mailboxes, so tests run in parallel on the shared stack.
//! The batch logic runs in-process (the library), except in the `bootstrap` test, which runs the
//! real binary under the Lambda Runtime API emulator.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use aws_lambda_events::event::sqs::SqsEvent;
use local_stack::graph::GraphStandIn;
use local_stack::identity::{IdentityStandIn, UserAccount};
use mailbridge::graph::{GraphClient, GraphError, MailSender, MessageExtras, OutgoingMail};
use mailbridge::notification::Notification;
use mailbridge::token::store::{SecretStoreError, SecretValue};
use mailbridge::token::{
    AccessToken, AccessTokenSource, Audience, SecretStore, SecretsManagerStore, TokenService,
    TokenServiceConfig,
};
use mailbridge_tests::parked::parked_messages;
use mailbridge_tests::sender::Sender;
use mailbridge_tests::{
    create_queue_with_dlq, create_state_table, put_secret, sqs, stack, unique, unique_user,
};
use secrecy::SecretString;
use send_notifications::settings::BatchSettings;
use send_notifications::{BatchReport, Deps, Outcome, process_batch};
use serde_json::{Value, json};
use tokio::time::Instant;

const PASSWORD: &str = "correct horse battery staple";
const THREAD_KEY: &str = "mailbridge-test-thread-key-32byt";

/// Counts Secrets Manager reads made through the token layer.
struct CountingStore {
    inner: SecretsManagerStore,
    gets: AtomicUsize,
}

#[async_trait]
impl SecretStore for CountingStore {
    async fn get(&self, name: &str) -> Result<SecretValue, SecretStoreError> {
        self.gets.fetch_add(1, Ordering::SeqCst);
        self.inner.get(name).await
    }
    async fn put(
        &self,
        name: &str,
        value: &SecretString,
        token: &str,
    ) -> Result<String, SecretStoreError> {
        self.inner.put(name, value, token).await
    }
    async fn create(&self, name: &str, value: &SecretString) -> Result<String, SecretStoreError> {
        self.inner.create(name, value).await
    }
    async fn replace(
        &self,
        name: &str,
        value: &SecretString,
        token: &str,
        expected_version: &str,
    ) -> Result<String, SecretStoreError> {
        self.inner
            .replace(name, value, token, expected_version)
            .await
    }
}

/// One test's world.
struct World {
    idp: IdentityStandIn,
    graph: GraphStandIn,
    tenant: String,
    client_id: String,
    upn: String,
    account: String,
    queue_url: String,
    queue_arn: String,
    dlq_url: String,
    table: String,
    thread_key_secret: String,
    store: Arc<CountingStore>,
    tokens: Arc<TokenService>,
}

impl World {
    async fn new() -> World {
        let stack = stack();
        let idp = stack.identity().clone();
        let graph = stack.graph().clone();
        let mailbridge_tests::PasswordAccount {
            tenant,
            client_id,
            upn,
            secret_name: account,
        } = mailbridge_tests::new_password_account("sender", PASSWORD)
            .await
            .expect("account secret");
        // Shared mailboxes here are sent through `/users/{mailbox}` (Graph's per-mailbox limits
        // and the stand-in's faults are the mailbox's own); shared_mailbox.rs tests both routes.
        mailbridge_tests::set_shared_mailbox_route(
            &account,
            mailbridge::send_rights::SharedMailboxRoute::FullAccess,
        )
        .await
        .expect("route");
        let thread_key_secret = unique("mailbridge/thread-key");
        put_secret(&thread_key_secret, THREAD_KEY)
            .await
            .expect("thread key");
        let (queue_url, dlq_url) = create_queue_with_dlq(&unique("notify"), 5)
            .await
            .expect("queues");
        let queue_arn = mailbridge_tests::queue_arn(&queue_url)
            .await
            .expect("queue arn");
        let table = create_state_table("state").await.expect("state table");
        let store = Arc::new(CountingStore {
            inner: SecretsManagerStore::from_conf(&stack.moto().sdk_config()),
            gets: AtomicUsize::new(0),
        });
        let tokens = Arc::new(TokenService::new(
            store.clone(),
            mailbridge::token::IdentityClient::new(
                mailbridge::http::default_client().expect("http client"),
            ),
            TokenServiceConfig {
                default_timeout: Duration::from_secs(10),
                ..TokenServiceConfig::default()
            },
        ));
        World {
            idp,
            graph,
            tenant,
            client_id,
            upn,
            account,
            queue_url,
            queue_arn,
            dlq_url,
            table,
            thread_key_secret,
            store,
            tokens,
        }
    }

    fn deps(&self, settings: BatchSettings) -> Deps {
        Sender {
            tokens: self.tokens.clone(),
            graph_url: self.graph.v1_url(),
            table: &self.table,
            dlq_url: &self.dlq_url,
            thread_key: THREAD_KEY,
        }
        .deps(settings)
    }

    /// A shared mailbox this world's user has Full Access and Send As on.
    fn shared_mailbox(&self, name: &str) -> String {
        let mailbox = unique_user(name);
        self.graph.grant_full_access(&self.upn, &mailbox);
        self.graph.grant_send_as(&self.upn, &mailbox);
        mailbox
    }

    fn notification(&self, subject: &str) -> Value {
        json!({
            "version": 1,
            "account": self.account,
            "to": [{"address": "customer@example.com", "name": "A Customer"}],
            "subject": subject,
            "body": {"content_type": "text", "content": "Your ticket was updated."}
        })
    }

    async fn enqueue(&self, bodies: &[Value]) {
        for body in bodies {
            sqs()
                .send_message()
                .queue_url(&self.queue_url)
                .message_body(body.to_string())
                .send()
                .await
                .expect("send message");
        }
    }

    /// Receive up to `n` messages from the real queue and build the SQS event Lambda would send.
    async fn receive_event(&self, n: usize) -> SqsEvent {
        mailbridge_tests::receive_sqs_event(&self.queue_url, &self.queue_arn, n).await
    }

    async fn run(&self, event: SqsEvent, budget: Duration, settings: BatchSettings) -> BatchReport {
        process_batch(event, Instant::now() + budget, &self.deps(settings)).await
    }

    /// Everything parked in the DLQ: (body, attributes).
    async fn parked(&self, expected: usize) -> Vec<(Value, HashMap<String, String>)> {
        parked_messages(&self.dlq_url, expected)
            .await
            .into_iter()
            .map(|m| {
                let body = serde_json::from_str(&m.body).unwrap_or(Value::Null);
                (body, m.attributes)
            })
            .collect()
    }

    fn sqs_id_of(event: &SqsEvent, subject: &str) -> String {
        event
            .records
            .iter()
            .find(|r| r.body.as_deref().unwrap_or_default().contains(subject))
            .and_then(|r| r.message_id.clone())
            .expect("message with that subject")
    }
}

fn settings() -> BatchSettings {
    BatchSettings {
        safety_margin: Duration::from_secs(1),
        ..BatchSettings::default()
    }
}

fn failures(report: &BatchReport) -> Vec<String> {
    let mut ids: Vec<String> = report
        .response
        .batch_item_failures
        .iter()
        .map(|f| f.item_identifier.clone())
        .collect();
    ids.sort();
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn happy_path_html_with_attachments_and_ticket_marker_is_sent_and_recorded() {
    let w = World::new().await;
    let customer = unique_user("customer");
    let mut n = w.notification("Your ticket was updated");
    n["to"] = json!([{"address": customer, "name": "A Customer"}]);
    n["id"] = "ticket-77-update-1".into();
    n["ticket_number"] = "77".into();
    n["body"] = json!({"content_type": "html", "content": "<html><body><p>Hi <img src=\"cid:logo\"></p></body></html>"});
    n["cc"] = json!([{"address": "cc@example.org"}]);
    n["importance"] = "high".into();
    n["headers"] = json!({"X-Helpdesk": "psa"});
    n["attachments"] = json!([
        {"name": "report.pdf", "content_type": "application/pdf", "content_base64": "JVBERi0xLjQKJcfsj6IK"},
        {"name": "logo.png", "content_type": "image/png", "content_base64": "iVBORw0KGgo=", "inline": true, "content_id": "logo"}
    ]);
    w.enqueue(&[n]).await;
    let event = w.receive_event(1).await;
    let report = w.run(event, Duration::from_secs(30), settings()).await;
    assert!(failures(&report).is_empty(), "{:?}", report.messages);
    assert_eq!(report.metrics.sent, 1);
    let accepted = w.graph.accepted(&w.upn);
    assert_eq!(accepted.len(), 1);
    let m = &accepted[0].request["message"];
    assert_eq!(m["subject"], "[Ticket#77] Your ticket was updated");
    assert_eq!(m["importance"], "high");
    assert_eq!(m["attachments"].as_array().unwrap().len(), 2);
    let reference = m["internetMessageHeaders"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["name"] == "X-Mailbridge-Ref")
        .expect("reference header")["value"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(reference.starts_with("77."));
    assert!(
        m["body"]["content"]
            .as_str()
            .unwrap()
            .contains(&format!("[ref:{reference}]"))
    );
    let message_id = m["internetMessageId"].as_str().unwrap();
    assert!(message_id.contains(&reference), "{message_id}");
    // the parser recognises the marker in the MIME the stand-in built
    let key = THREAD_KEY.as_bytes();
    let parsed = mail_parser::MessageParser::default()
        .parse(&accepted[0].mime)
        .unwrap();
    assert_eq!(
        mailbridge::mail::threading::find_reference_in_id(parsed.message_id().unwrap(), key),
        Some("77".into())
    );
    assert_eq!(parsed.attachment_count(), 2);
    // the idempotency record is completed, with Graph's request-id
    let item = mailbridge_tests::dynamodb()
        .get_item()
        .table_name(&w.table)
        .key(
            "pk",
            aws_sdk_dynamodb::types::AttributeValue::S("notification#ticket-77-update-1".into()),
        )
        .send()
        .await
        .unwrap()
        .item
        .expect("idempotency record");
    assert_eq!(item["status"].as_s().unwrap(), "completed");
    assert_eq!(
        item["graph_request_id"].as_s().unwrap(),
        &accepted[0].request_id
    );
}

/// Graph refuses more than five custom headers per message (400
/// `InvalidInternetMessageHeaderCollection`, which the stand-in answers too). A notification
/// that already uses all five is sent without mailbridge's reference header, not parked; the
/// reference still travels in the footer and the Message-ID.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_helpdesk_headers_leave_out_the_reference_header_and_the_mail_is_still_sent() {
    let w = World::new().await;
    let mut n = w.notification("Five headers of its own");
    n["ticket_number"] = "78".into();
    n["headers"] = json!({
        "X-Helpdesk": "psa",
        "X-Helpdesk-Queue": "support",
        "X-Helpdesk-Ticket": "78",
        "X-Helpdesk-Agent": "agent-7",
        "X-Helpdesk-Kind": "reply"
    });
    w.enqueue(&[n]).await;
    let event = w.receive_event(1).await;
    let report = w.run(event, Duration::from_secs(30), settings()).await;
    assert!(failures(&report).is_empty(), "{:?}", report.messages);
    assert_eq!(report.metrics.sent, 1, "{:?}", report.messages);
    assert_eq!(report.metrics.parked, 0, "{:?}", report.messages);
    let accepted = w.graph.accepted(&w.upn);
    assert_eq!(accepted.len(), 1);
    let m = &accepted[0].request["message"];
    let names: Vec<&str> = m["internetMessageHeaders"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["name"].as_str().unwrap())
        .collect();
    assert_eq!(names.len(), 5, "{names:?}");
    assert!(!names.contains(&"X-Mailbridge-Ref"), "{names:?}");
    let body = m["body"]["content"].as_str().unwrap();
    assert!(body.contains("[ref:78."), "{body}");
    let message_id = m["internetMessageId"].as_str().unwrap();
    assert!(message_id.contains("78."), "{message_id}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mixed_batch_reports_exactly_the_throttled_item_and_parks_the_invalid_ones_with_reasons()
{
    let w = World::new().await;
    let busy = w.shared_mailbox("busy");
    w.graph.throttle_429(&busy, 10, 600);
    let noperm = unique_user("not-granted");
    let mut throttled = w.notification("throttled one");
    throttled["from"] = busy.clone().into();
    let mut invalid = w.notification("invalid one");
    invalid["id"] = "ticket-9-reply-2".into();
    invalid["to"] = json!([{"address": "customer@example.com\r\nBcc: evil@example.com"}]);
    let mut denied = w.notification("denied one");
    denied["from"] = noperm.clone().into();
    w.enqueue(&[
        w.notification("valid one"),
        invalid,
        throttled,
        denied,
        json!({"not": "a notification"}),
    ])
    .await;
    let event = w.receive_event(5).await;
    let throttled_id = World::sqs_id_of(&event, "throttled one");
    let invalid_id = World::sqs_id_of(&event, "invalid one");
    let report = w.run(event, Duration::from_secs(30), settings()).await;
    assert_eq!(failures(&report), vec![throttled_id]);
    assert_eq!(report.metrics.sent, 1);
    assert_eq!(report.metrics.parked, 3);
    assert_eq!(report.metrics.throttled, 1);
    assert_eq!(w.graph.accepted(&w.upn).len(), 1);
    let parked = w.parked(3).await;
    assert_eq!(parked.len(), 3);
    let by_kind = |kind: &str| {
        parked
            .iter()
            .filter(|(_, a)| a["mailbridge.kind"] == kind)
            .collect::<Vec<_>>()
    };
    let invalid_parked = by_kind("invalid-message");
    assert_eq!(invalid_parked.len(), 2);
    let crlf = invalid_parked
        .iter()
        .find(|(_, a)| a["mailbridge.sqs-message-id"] == invalid_id)
        .expect("the CRLF one is parked");
    assert_eq!(crlf.1["mailbridge.field"], "to[0].address");
    assert!(
        crlf.1["mailbridge.reason"].contains("CR or LF"),
        "{:?}",
        crlf.1
    );
    assert_eq!(
        crlf.0["subject"], "invalid one",
        "the original body is kept"
    );
    // named by what could be read, in the DLQ and in the report the log line is made from
    assert_eq!(crlf.1["mailbridge.notification-id"], "ticket-9-reply-2");
    assert_eq!(crlf.1["mailbridge.account"], w.account.as_str());
    let logged = report
        .messages
        .iter()
        .find(|m| m.sqs_message_id == invalid_id)
        .expect("reported");
    assert_eq!(logged.notification_id.as_deref(), Some("ticket-9-reply-2"));
    assert_eq!(logged.account.as_deref(), Some(w.account.as_str()));
    // nothing readable: no id attribute, rather than a made-up one
    let unreadable = invalid_parked
        .iter()
        .find(|(_, a)| a["mailbridge.sqs-message-id"] != invalid_id)
        .expect("the non-notification is parked");
    assert!(
        !unreadable.1.contains_key("mailbridge.notification-id"),
        "{:?}",
        unreadable.1
    );
    let graph_parked = by_kind("graph-rejected");
    assert_eq!(
        graph_parked[0].1["mailbridge.graph-code"],
        "ErrorAccessDenied"
    );
    assert!(!graph_parked[0].1["mailbridge.graph-request-id"].is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_is_honoured_within_the_deadline() {
    let w = World::new().await;
    let mailbox = w.shared_mailbox("throttled");
    w.graph.throttle_429(&mailbox, 2, 1);
    let mut n = w.notification("eventually sent");
    n["from"] = mailbox.clone().into();
    w.enqueue(&[n]).await;
    let event = w.receive_event(1).await;
    let started = std::time::Instant::now();
    let report = w.run(event, Duration::from_secs(30), settings()).await;
    assert!(failures(&report).is_empty(), "{:?}", report.messages);
    assert_eq!(report.metrics.throttled, 2);
    assert_eq!(w.graph.request_count(&mailbox), 3);
    assert_eq!(w.graph.accepted(&mailbox).len(), 1);
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "waited out Retry-After twice"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_revoked_mid_batch_is_refreshed_once_and_every_message_is_sent() {
    let w = World::new().await;
    // warm the cache, then revoke while a slow batch is in flight
    let warm = w
        .tokens
        .access_token_until(
            &w.account,
            Audience::Graph,
            Instant::now() + Duration::from_secs(10),
        )
        .await;
    assert!(warm.is_ok(), "{warm:?}");
    w.graph.set_latency(&w.upn, Duration::from_millis(400));
    let subjects: Vec<String> = (0..6).map(|i| format!("mid-batch {i}")).collect();
    w.enqueue(
        &subjects
            .iter()
            .map(|s| w.notification(s))
            .collect::<Vec<_>>(),
    )
    .await;
    let event = w.receive_event(6).await;
    let idp = w.idp.clone();
    let upn = w.upn.clone();
    let revoker = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(150)).await;
        idp.revoke_access_tokens(&upn);
    });
    let before = w.idp.token_request_count(&w.upn);
    let report = w.run(event, Duration::from_secs(30), settings()).await;
    revoker.await.unwrap();
    assert!(failures(&report).is_empty(), "{:?}", report.messages);
    assert_eq!(w.graph.accepted(&w.upn).len(), 6);
    let refreshes = w.idp.token_request_count(&w.upn) - before;
    assert!(
        (1..=2).contains(&refreshes),
        "the 401s caused {refreshes} token requests"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_notification_delivered_twice_is_sent_once() {
    let w = World::new().await;
    let mut n = w.notification("only once");
    n["id"] = unique("notification").into();
    w.enqueue(&[n.clone(), n.clone()]).await;
    // both copies in one batch: one sends, the other waits for the lease (reported, retried)
    let event = w.receive_event(2).await;
    let report = w.run(event, Duration::from_secs(30), settings()).await;
    assert_eq!(report.metrics.sent, 1);
    assert_eq!(failures(&report).len(), 1);
    // redelivery of the failed copy, next to a new notification: the batch claim (one
    // transaction) fails on the sent one, each is then settled on its own
    w.enqueue(&[n, w.notification("a new one")]).await;
    let event = w.receive_event(2).await;
    let report = w.run(event, Duration::from_secs(30), settings()).await;
    assert!(failures(&report).is_empty(), "{:?}", report.messages);
    assert_eq!(report.metrics.duplicates, 1);
    assert_eq!(report.metrics.sent, 1);
    let subjects: Vec<String> = w
        .graph
        .accepted(&w.upn)
        .iter()
        .map(|a| {
            a.request["message"]["subject"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        })
        .collect();
    assert_eq!(subjects, vec!["only once", "a new one"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_the_deadline_comes_mid_batch_the_unsent_items_are_reported() {
    let w = World::new().await;
    // The first send goes through; the second waits at the stand-in's hold point until after
    // the run: the deadline comes while it is in flight, whatever the machine's load.
    w.graph.hold_after(&w.upn, 1);
    let subjects: Vec<String> = (0..5).map(|i| format!("deadline {i}")).collect();
    w.enqueue(
        &subjects
            .iter()
            .map(|s| w.notification(s))
            .collect::<Vec<_>>(),
    )
    .await;
    let event = w.receive_event(5).await;
    let records: Vec<(String, String)> = event
        .records
        .iter()
        .map(|r| (r.message_id.clone().unwrap(), r.body.clone().unwrap()))
        .collect();
    let settings = BatchSettings {
        max_in_flight_per_mailbox: 1,
        ..settings()
    };
    let report = w.run(event, Duration::from_secs(5), settings).await;
    let sent = w.graph.accepted(&w.upn).len();
    let failed = failures(&report);
    assert_eq!(
        (sent, failed.len()),
        (1, 4),
        "one sent; the one in flight at the deadline and the three behind it reported"
    );
    // Every item is sent or reported (a send whose answer came too late is both: the ambiguous
    // timeout the README documents).
    let accepted: Vec<String> = w
        .graph
        .accepted(&w.upn)
        .iter()
        .map(|a| {
            a.request["message"]["subject"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        })
        .collect();
    for (id, body) in &records {
        let subject = serde_json::from_str::<Value>(body).unwrap()["subject"]
            .as_str()
            .unwrap()
            .to_owned();
        assert!(
            accepted.contains(&subject) || failed.contains(id),
            "{subject} was neither sent nor reported"
        );
    }
    assert_eq!(report.metrics.sent as usize, sent);
    assert_eq!(
        report
            .messages
            .iter()
            .filter(|m| m.outcome == Outcome::NotStarted)
            .count(),
        3,
        "{:?}",
        report.messages
    );
    w.graph.release(&w.upn);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graph_permanent_errors_are_parked_and_an_account_needing_reauth_waits_long() {
    let w = World::new().await;
    let disabled = w.shared_mailbox("onprem");
    w.graph.disable_rest_api(&disabled);
    let mut n = w.notification("to an on-prem mailbox");
    n["from"] = disabled.into();
    w.enqueue(&[n]).await;
    let event = w.receive_event(1).await;
    let receipt = event.records[0].receipt_handle.clone().unwrap();
    let report = w.run(event, Duration::from_secs(30), settings()).await;
    assert!(failures(&report).is_empty());
    // Done (parked): Lambda's event source deletes it from the queue.
    sqs()
        .delete_message()
        .queue_url(&w.queue_url)
        .receipt_handle(receipt)
        .send()
        .await
        .unwrap();
    let parked = w.parked(1).await;
    assert_eq!(
        parked[0].1["mailbridge.graph-code"],
        "MailboxNotEnabledForRESTAPI"
    );

    // The user's password is changed and refresh tokens revoked: the account needs a person.
    let mut user = UserAccount::new(&w.tenant, &w.upn, "a new password");
    user.mfa_required = true;
    w.idp.register_user(user);
    w.idp.revoke_refresh_tokens(&w.upn).ok();
    w.idp.revoke_access_tokens(&w.upn);
    w.tokens.invalidate(&w.account, Audience::Graph);
    // Received with a short visibility, as Lambda's event source does with the function's
    // timeout: unless the handler changes it to the long delay, the message is back after it.
    const RECEIVE_VISIBILITY: Duration = Duration::from_secs(6);
    sqs()
        .set_queue_attributes()
        .queue_url(&w.queue_url)
        .attributes(
            aws_sdk_sqs::types::QueueAttributeName::VisibilityTimeout,
            RECEIVE_VISIBILITY.as_secs().to_string(),
        )
        .send()
        .await
        .unwrap();
    w.enqueue(&[w.notification("needs reauth")]).await;
    let event = w.receive_event(1).await;
    let received = std::time::Instant::now();
    let report = w.run(event, Duration::from_secs(30), settings()).await;
    assert!(
        received.elapsed() < RECEIVE_VISIBILITY,
        "the run took {:?}, longer than the receive visibility: the check below would prove nothing",
        received.elapsed()
    );
    assert_eq!(failures(&report).len(), 1);
    assert!(
        matches!(report.messages[0].outcome, Outcome::NeedsReauth { .. }),
        "{:?}",
        report.messages[0]
    );
    assert_eq!(report.metrics.accounts_need_reauth, 1);
    // The message stays in flight (not deleted, not parked) and invisible past the receive
    // visibility: SQS took the change to the long delay.
    tokio::time::sleep(
        RECEIVE_VISIBILITY.saturating_sub(received.elapsed()) + Duration::from_secs(1),
    )
    .await;
    let again = sqs()
        .receive_message()
        .queue_url(&w.queue_url)
        .wait_time_seconds(1)
        .send()
        .await
        .unwrap();
    assert!(
        again.messages().is_empty(),
        "the message came back after the receive visibility: the long delay was not applied"
    );
    let counts = sqs()
        .get_queue_attributes()
        .queue_url(&w.queue_url)
        .attribute_names(
            aws_sdk_sqs::types::QueueAttributeName::ApproximateNumberOfMessagesNotVisible,
        )
        .attribute_names(aws_sdk_sqs::types::QueueAttributeName::ApproximateNumberOfMessages)
        .send()
        .await
        .unwrap();
    let count = |name| counts.attributes().and_then(|a| a.get(&name)).cloned();
    assert_eq!(
        (
            count(aws_sdk_sqs::types::QueueAttributeName::ApproximateNumberOfMessagesNotVisible),
            count(aws_sdk_sqs::types::QueueAttributeName::ApproximateNumberOfMessages)
        ),
        (Some("1".to_string()), Some("0".to_string())),
        "one message in flight, none visible"
    );
    let _ = &w.client_id;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_graph_stand_in_is_strict_like_graph() {
    let w = World::new().await;
    let graph = GraphClient::new(&w.graph.v1_url()).unwrap();
    let n = Notification::parse(&w.notification("strict").to_string(), "m").unwrap();
    let mail = OutgoingMail::from_notification(&n, MessageExtras::default());
    let token = |audience: &str, scopes: &[&str]| {
        AccessToken::new(
            w.idp
                .mint_access_token(
                    &w.tenant,
                    &w.client_id,
                    &w.upn,
                    audience,
                    scopes,
                    Duration::from_secs(600),
                )
                .into(),
            chrono::Utc::now() + chrono::Duration::minutes(10),
            Audience::Graph,
        )
    };
    let graph_token = token("https://graph.microsoft.com", &["Mail.Send"]);
    let t = Duration::from_secs(10);
    // an IMAP-audience token is refused
    let imap = token("https://outlook.office.com", &["IMAP.AccessAsUser.All"]);
    let e = graph.send_mail(&imap, &mail, t).await.unwrap_err();
    assert!(
        matches!(&e, GraphError::Unauthorized { code, .. } if code == "InvalidAuthenticationToken"),
        "{e}"
    );
    // a Graph token without Mail.Send is refused
    let e = graph
        .send_mail(
            &token("https://graph.microsoft.com", &["User.Read"]),
            &mail,
            t,
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&e, GraphError::Rejected { status: 403, code, .. } if code == "ErrorAccessDenied"),
        "{e}"
    );
    // a non-X- header
    let mut bad = mail.clone();
    bad.request
        .message
        .internet_message_headers
        .push(mailbridge::graph::GraphHeader {
            name: "List-Unsubscribe".into(),
            value: "<mailto:u@example.com>".into(),
        });
    let e = graph.send_mail(&graph_token, &bad, t).await.unwrap_err();
    assert!(
        matches!(&e, GraphError::Rejected { status: 400, code, .. } if code == "InvalidInternetMessageHeader"),
        "{e}"
    );
    assert!(e.request_id().is_some());
    // an unknown property, and a request over 4 MB (raw HTTP: our client cannot produce them)
    let http = reqwest::Client::new();
    let url = format!("{}/me/sendMail", w.graph.v1_url());
    let secret = |t: &AccessToken| secrecy::ExposeSecret::expose_secret(&t.secret).to_owned();
    let r = http
        .post(&url)
        .bearer_auth(secret(&graph_token))
        .json(&json!({"message": {"subject": "x", "toRecipients": [{"emailAddress": {"address": "a@example.com"}}], "colour": "red"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    let r = http
        .post(&url)
        .bearer_auth(secret(&graph_token))
        .json(&json!({"message": {"subject": "x", "toRecipients": [{"emailAddress": {"address": "a@example.com"}}], "body": {"contentType": "text", "content": "x".repeat(4_300_000)}}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 413);
    // five concurrent requests to one mailbox: four take its slots and wait at the hold point,
    // so the first answer is the fifth's, throttled with Retry-After; then the four go through
    w.graph.hold_after(&w.upn, 0);
    let mut sends: futures::stream::FuturesUnordered<_> = (0..5)
        .map(|_| graph.send_mail(&graph_token, &mail, t))
        .collect();
    let first = futures::StreamExt::next(&mut sends).await.unwrap();
    assert_eq!(w.graph.held(&w.upn), 4);
    let throttled = first.unwrap_err();
    assert!(
        matches!(throttled, GraphError::Throttled { .. }),
        "{throttled}"
    );
    assert_eq!(throttled.retry_after(), Some(Duration::from_secs(1)));
    w.graph.release(&w.upn);
    let rest: Vec<_> = futures::StreamExt::collect(sends).await;
    assert!(rest.iter().all(Result::is_ok), "{rest:?}");
    // a 503 burst, then a connection reset: transient
    w.graph.fail_503(&w.upn, 1, Some(2));
    let e = graph.send_mail(&graph_token, &mail, t).await.unwrap_err();
    assert!(
        matches!(e, GraphError::Unavailable { status: 503, .. })
            && e.retry_after() == Some(Duration::from_secs(2)),
        "{e}"
    );
    w.graph.reset_connections(&w.upn, 1);
    let e = graph.send_mail(&graph_token, &mail, t).await.unwrap_err();
    assert!(matches!(e, GraphError::Transport { .. }), "{e}");
    // and then it works
    graph.send_mail(&graph_token, &mail, t).await.unwrap();
}

/// The real `bootstrap` (the `send-notifications` binary) under the Lambda Runtime API emulator,
/// with an SQS event built from messages received from the moto queue. Warm invocations reuse the
/// cached token: the account secret is deleted after the cold invocation and sending still works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bootstrap_binary_sends_a_batch_from_the_real_queue() {
    use local_stack::runtime_api::{FunctionConfig, RuntimeApi, workspace_binary};
    let w = World::new().await;
    let binary = tokio::task::spawn_blocking(|| {
        workspace_binary("send-notifications", "send-notifications")
    })
    .await
    .unwrap()
    .expect("build send-notifications");
    let moto = stack().moto();
    let mut env: Vec<(String, String)> = moto.env().into_iter().collect();
    env.extend([
        ("MAILBRIDGE_STATE_TABLE".to_owned(), w.table.clone()),
        ("MAILBRIDGE_DLQ_URL".to_owned(), w.dlq_url.clone()),
        (
            "MAILBRIDGE_THREAD_KEY_SECRET".to_owned(),
            w.thread_key_secret.clone(),
        ),
        ("MAILBRIDGE_GRAPH_URL".to_owned(), w.graph.v1_url()),
        (
            "MAILBRIDGE_ALLOW_LOCAL_TARGETS".to_owned(),
            "true".to_owned(),
        ),
        ("RUST_LOG".to_owned(), "info".to_owned()),
    ]);
    let api = RuntimeApi::start().await.expect("runtime api");
    api.spawn_function(&FunctionConfig::new("send-notifications", binary).with_env(env))
        .expect("spawn bootstrap");

    let mut invalid = w.notification("bootstrap invalid");
    invalid["headers"] = json!({"Bcc": "evil@example.com"});
    w.enqueue(&[
        w.notification("bootstrap 1"),
        w.notification("bootstrap 2"),
        invalid,
    ])
    .await;
    let event = w.receive_event(3).await;
    let outcome = api
        .invoke(
            serde_json::to_value(&event).unwrap(),
            Duration::from_secs(30),
        )
        .await
        .expect("invoke");
    assert!(
        outcome.init_duration.is_some(),
        "first invocation is a cold start"
    );
    let response = outcome
        .into_response()
        .unwrap_or_else(|e| panic!("{e}\n{}", api.logs()));
    assert_eq!(response["batchItemFailures"], json!([]), "{}", api.logs());
    assert_eq!(w.graph.accepted(&w.upn).len(), 2);
    assert_eq!(w.parked(1).await.len(), 1);
    let logs = api.logs();
    assert!(logs.contains("\"NotificationsSent\":2"), "EMF line: {logs}");
    assert!(!logs.contains(PASSWORD));

    // Warm: the account secret is gone, but the cached token still sends (no Secrets Manager
    // read, no token request).
    mailbridge_tests::secrets()
        .delete_secret()
        .secret_id(&w.account)
        .force_delete_without_recovery(true)
        .send()
        .await
        .unwrap();
    let tokens_before = w.idp.token_request_count(&w.upn);
    w.enqueue(&[w.notification("bootstrap warm")]).await;
    let event = w.receive_event(1).await;
    let outcome = api
        .invoke(
            serde_json::to_value(&event).unwrap(),
            Duration::from_secs(30),
        )
        .await
        .expect("invoke warm");
    assert!(outcome.init_duration.is_none(), "second invocation is warm");
    let response = outcome.into_response().unwrap();
    assert_eq!(response["batchItemFailures"], json!([]), "{}", api.logs());
    assert_eq!(w.graph.accepted(&w.upn).len(), 3);
    assert_eq!(w.idp.token_request_count(&w.upn), tokens_before);
    api.shutdown();
}

/// Benchmark (prints numbers; no timing assertions). Stand-in latency L = 100 ms:
/// a batch of 10 to one mailbox (target <= 3.2 L), 10 mailboxes (target <= 1.2 L), and warm
/// batches with a live cached token (0 Secrets Manager reads, 0 token requests).
///
/// Like a warm Lambda, one set of clients serves every batch. Each shape runs once to warm the
/// connection pool, then `RUNS` times; the median is printed, once with the DynamoDB (moto)
/// idempotency store and once with the in-memory store, which shows what the state table costs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn benchmark_batch_latency_and_warm_calls() {
    const RUNS: usize = 5;
    let latency = Duration::from_millis(100);
    let w = World::new().await;
    w.graph.set_latency(&w.upn, latency);
    let mailboxes: Vec<String> = (0..10)
        .map(|i| w.shared_mailbox(&format!("bench{i}")))
        .collect();
    for m in &mailboxes {
        w.graph.set_latency(m, latency);
    }
    let moto_deps = w.deps(settings());
    let mut memory_deps = w.deps(settings());
    memory_deps.idempotency =
        Arc::new(mailbridge::state_table::InMemoryIdempotencyStore::default());

    let one_mailbox = |tag: String| -> Vec<Value> {
        (0..10)
            .map(|i| w.notification(&format!("one mailbox {tag} {i}")))
            .collect()
    };
    let ten_mailboxes = |tag: String| -> Vec<Value> {
        mailboxes
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let mut n = w.notification(&format!("ten mailboxes {tag} {i}"));
                n["from"] = m.clone().into();
                n
            })
            .collect()
    };
    // warm-up: token cache (one Secrets Manager read + one token request) and connections
    for deps in [&moto_deps, &memory_deps] {
        for batch in [one_mailbox("warm".into()), ten_mailboxes("warm".into())] {
            w.enqueue(&batch).await;
            let event = w.receive_event(10).await;
            let report = process_batch(event, Instant::now() + Duration::from_secs(30), deps).await;
            assert!(failures(&report).is_empty(), "{:?}", report.messages);
        }
    }
    let (sm_before, tokens_before) = (
        w.store.gets.load(Ordering::SeqCst),
        w.idp.token_request_count(&w.upn),
    );
    let mut results = Vec::new();
    let mut failed = 0;
    for (store, deps) in [("DynamoDB (moto)", &moto_deps), ("in-memory", &memory_deps)] {
        for (shape, make) in [
            (
                "10 to one mailbox",
                &one_mailbox as &dyn Fn(String) -> Vec<Value>,
            ),
            ("10 mailboxes", &ten_mailboxes),
        ] {
            let mut times = Vec::new();
            for run in 0..RUNS {
                w.enqueue(&make(format!("{store} {run}"))).await;
                let event = w.receive_event(10).await;
                let started = std::time::Instant::now();
                let report =
                    process_batch(event, Instant::now() + Duration::from_secs(30), deps).await;
                times.push(started.elapsed());
                // no assertion: a loaded machine may time a send out; it is counted and printed
                failed += failures(&report).len();
            }
            times.sort();
            results.push((store, shape, times[RUNS / 2], times[0], times[RUNS - 1]));
        }
    }
    let sm_calls = w.store.gets.load(Ordering::SeqCst) - sm_before;
    let token_calls = w.idp.token_request_count(&w.upn) - tokens_before;
    let l = latency.as_secs_f64();
    for (store, shape, median, min, max) in &results {
        println!(
            "BENCH send-notifications | idempotency store {store:<15} | {shape:<17} | median {:>4.0} ms = {:.2} L (min {:.2} L, max {:.2} L) | L = {} ms, {RUNS} runs",
            median.as_secs_f64() * 1000.0,
            median.as_secs_f64() / l,
            min.as_secs_f64() / l,
            max.as_secs_f64() / l,
            latency.as_millis(),
        );
    }
    println!(
        "BENCH send-notifications | warm batches ({}): {sm_calls} Secrets Manager reads, {token_calls} token requests, {failed} items not sent",
        4 * RUNS
    );
    assert_eq!(sm_calls, 0, "a warm batch reads no secret");
    assert_eq!(token_calls, 0, "a warm batch requests no token");
}

// ---- MIME notifications (what `mailbridge sendmail` enqueues) ----

/// A helpdesk's reply as it would hand it to sendmail: its own Message-ID, threading headers and
/// subject tag, `attachment_bytes` of attachment.
fn helpdesk_reply(from: &str, to: &str, tag: &str, attachment_bytes: usize) -> Vec<u8> {
    use base64::Engine as _;
    let mut raw = format!(
        "From: Helpdesk <{from}>\r\nTo: <{to}>\r\nBcc: <audit-{tag}@example.com>\r\nSubject: [helpdesk #{tag}] Re: printer jam\r\nMessage-ID: <rt-{tag}@helpdesk.example>\r\nIn-Reply-To: <customer-{tag}@example.com>\r\nReferences: <customer-{tag}@example.com>\r\nMIME-Version: 1.0\r\n"
    );
    if attachment_bytes == 0 {
        raw.push_str("Content-Type: text/plain; charset=utf-8\r\n\r\nWe replaced the fuser.\r\n");
        return raw.into_bytes();
    }
    raw.push_str("Content-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n--b1\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nLog attached.\r\n--b1\r\nContent-Type: application/octet-stream; name=\"log.bin\"\r\nContent-Disposition: attachment; filename=\"log.bin\"\r\nContent-Transfer-Encoding: base64\r\n\r\n");
    let bytes: Vec<u8> = (0..attachment_bytes).map(|i| (i * 7 % 251) as u8).collect();
    let encoded = base64::engine::general_purpose::STANDARD.encode(bytes);
    for line in encoded.as_bytes().chunks(76) {
        raw.push_str(std::str::from_utf8(line).unwrap());
        raw.push_str("\r\n");
    }
    raw.push_str("--b1--\r\n");
    raw.into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mime_reply_reaches_the_customer_with_the_helpdesks_threading_headers_and_the_marker() {
    use base64::Engine as _;
    let w = World::new().await;
    let customer = mailbridge_tests::mail_recipient("customer");
    let tag = unique("t");
    w.graph
        .deliver_mail_for(&format!("audit-{tag}@example.com"));
    let raw = helpdesk_reply(&w.upn, &customer, &tag, 0);
    w.enqueue(&[json!({
        "version": 1, "kind": "mime", "account": w.account, "from": w.upn,
        "ticket_number": "88",
        "raw_base64": base64::engine::general_purpose::STANDARD.encode(&raw)
    })])
    .await;
    let event = w.receive_event(1).await;
    let report = w.run(event, Duration::from_secs(30), settings()).await;
    assert!(failures(&report).is_empty(), "{:?}", report.messages);
    assert_eq!(report.metrics.sent, 1);
    let accepted = w.graph.accepted(&w.upn);
    assert_eq!(accepted.len(), 1);
    assert_eq!(
        accepted[0].request["mime"], true,
        "sent in Graph's MIME format"
    );
    let delivered = &mailbridge_tests::wait_for_inbox(&customer, 1).await[0].raw;
    let parsed = mail_parser::MessageParser::default()
        .parse(delivered)
        .unwrap();
    assert_eq!(
        parsed.message_id(),
        Some(format!("rt-{tag}@helpdesk.example").as_str())
    );
    assert_eq!(
        parsed.in_reply_to().as_text(),
        Some(format!("customer-{tag}@example.com").as_str())
    );
    assert_eq!(
        parsed.subject(),
        Some(format!("[helpdesk #{tag}] Re: printer jam").as_str())
    );
    let text = String::from_utf8_lossy(delivered);
    assert!(!text.contains("audit-"), "Bcc is not delivered: {text}");
    let reference = mailbridge::mail::threading::ticket_reference("88", THREAD_KEY.as_bytes());
    assert!(
        text.contains(&format!("X-Mailbridge-Ref: {reference}")),
        "{text}"
    );
    assert!(
        text.contains(&format!("[ref:{reference}]")),
        "footer in the single text part"
    );
    // the Bcc recipient got it too
    assert_eq!(
        mailbridge_tests::wait_for_inbox(&format!("audit-{tag}@example.com"), 1)
            .await
            .len(),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_two_mib_message_travels_by_s3_reference_and_its_object_is_deleted_once_sent() {
    use mailbridge::message_store::MessageStore as _;
    let w = World::new().await;
    let bucket = mailbridge_tests::create_bucket("messages").await.unwrap();
    let customer = mailbridge_tests::mail_recipient("customer");
    let tag = unique("t");
    let raw = helpdesk_reply(&w.upn, &customer, &tag, 2 * 1024 * 1024);
    let store = mailbridge::message_store::S3MessageStore::new(mailbridge_tests::s3());
    let object = store
        .put(&bucket, &format!("out/{tag}.eml"), &raw)
        .await
        .unwrap();
    assert_eq!(object.size as usize, raw.len());
    w.enqueue(&[json!({
        "version": 1, "kind": "mime", "account": w.account, "from": w.upn,
        "raw_ref": object
    })])
    .await;
    let event = w.receive_event(1).await;
    let report = w.run(event, Duration::from_secs(60), settings()).await;
    assert!(failures(&report).is_empty(), "{:?}", report.messages);
    assert_eq!(report.metrics.sent, 1);
    let delivered = &mailbridge_tests::wait_for_inbox(&customer, 1).await[0].raw;
    let parsed = mail_parser::MessageParser::default()
        .parse(delivered)
        .unwrap();
    assert_eq!(
        parsed.attachment(0).unwrap().contents().len(),
        2 * 1024 * 1024
    );
    assert!(
        mailbridge_tests::bucket_keys(&bucket)
            .await
            .unwrap()
            .is_empty(),
        "the object is deleted after the send"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_graph_stand_in_is_strict_about_the_mime_format() {
    let w = World::new().await;
    let token = w
        .tokens
        .access_token(&w.account, Audience::Graph)
        .await
        .unwrap();
    use secrecy::ExposeSecret as _;
    let http = reqwest::Client::new();
    let url = format!("{}/me/sendMail", w.graph.v1_url());
    let post = |content_type: &'static str, body: String| {
        http.post(&url)
            .bearer_auth(token.secret.expose_secret())
            .header("content-type", content_type)
            .body(body)
            .send()
    };
    let code = |r: reqwest::Response| async move {
        let status = r.status().as_u16();
        let body: Value = r.json().await.unwrap_or_default();
        (
            status,
            body["error"]["code"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        )
    };
    use base64::Engine as _;
    let mime = base64::engine::general_purpose::STANDARD.encode(helpdesk_reply(
        &w.upn,
        &unique_user("c"),
        "s",
        0,
    ));
    // not base64
    let r = post("text/plain", "From: x@example.com\r\n\r\nraw MIME".into())
        .await
        .unwrap();
    assert_eq!(
        code(r).await,
        (400, "ErrorMimeContentInvalidBase64String".into())
    );
    // MIME sent as JSON
    let r = post("application/json", mime.clone()).await.unwrap();
    assert_eq!(code(r).await.0, 400);
    // neither JSON nor text/plain
    let r = post("message/rfc822", mime.clone()).await.unwrap();
    assert_eq!(code(r).await.0, 415);
    // no recipient
    let nobody = base64::engine::general_purpose::STANDARD
        .encode(format!("From: <{}>\r\nSubject: x\r\n\r\nx\r\n", w.upn));
    let r = post("text/plain", nobody).await.unwrap();
    assert_eq!(code(r).await, (400, "ErrorInvalidRecipients".into()));
    // a From the user may not send as
    let other = base64::engine::general_purpose::STANDARD
        .encode("From: <boss@example.com>\r\nTo: <c@example.com>\r\n\r\nx\r\n");
    let r = post("text/plain", other).await.unwrap();
    assert_eq!(code(r).await, (403, "ErrorSendAsDenied".into()));
    // over 4 MB
    let r = post("text/plain", "QUFB".repeat(1_100_000)).await.unwrap();
    assert_eq!(code(r).await.0, 413);
    // and the real thing, wrapped at 76 like Microsoft's example
    let wrapped: Vec<&str> = mime
        .as_bytes()
        .chunks(76)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    let r = post("text/plain", wrapped.join("\r\n")).await.unwrap();
    assert_eq!(r.status().as_u16(), 202);
    assert_eq!(w.graph.accepted(&w.upn).len(), 1);
}

/// A tenant in a national cloud (US Government L4): the account secret's `graph_host` is
/// `https://graph.microsoft.us` and the deployment's Graph is that cloud's (a stand-in that takes
/// only tokens for graph.microsoft.us). The notification goes out with a token for that audience;
/// the global Graph refuses the same token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_national_cloud_account_sends_through_its_own_graph_host() {
    const US_GRAPH: &str = "https://graph.microsoft.us";
    let mut w = World::new().await;
    let mut app = local_stack::identity::AppRegistration::mailbridge(&w.tenant, &w.client_id);
    for scope in &mut app.consented_scopes {
        *scope = scope.replace("https://graph.microsoft.com", US_GRAPH);
    }
    w.idp.register_app(app);
    let json = mailbridge_tests::get_secret(&w.account).await.unwrap();
    let mut secret = mailbridge::token::AccountSecret::parse(&w.account, &json).unwrap();
    secret.graph_host = US_GRAPH.to_owned();
    put_secret(&w.account, &secret.to_json()).await.unwrap();
    w.graph = GraphStandIn::start_for_audience(w.idp.clone(), None, US_GRAPH)
        .await
        .expect("the US Graph stand-in");

    w.enqueue(&[w.notification("national cloud")]).await;
    let event = w.receive_event(1).await;
    let report = w.run(event, Duration::from_secs(30), settings()).await;
    assert!(failures(&report).is_empty(), "{:?}", report.messages);
    assert_eq!(report.metrics.sent, 1);
    assert_eq!(
        w.graph.accepted(&w.upn).len(),
        1,
        "sent through the US Graph"
    );

    let token = w
        .tokens
        .access_token(&w.account, Audience::Graph)
        .await
        .unwrap();
    let global = reqwest::Client::new()
        .post(format!("{}/me/sendMail", stack().graph().v1_url()))
        .bearer_auth(secrecy::ExposeSecret::expose_secret(&token.secret))
        .json(&json!({"message": {
            "subject": "wrong cloud",
            "body": {"contentType": "Text", "content": "x"},
            "toRecipients": [{"emailAddress": {"address": "customer@example.com"}}]
        }}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        global.status(),
        401,
        "a US token is not for the global Graph"
    );
}

/// `saveToSentItems` reaches Graph as the notification asks: false when it says so, Graph's
/// default (a copy in Sent Items) otherwise.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn save_to_sent_items_reaches_graph_as_the_notification_asks() {
    let w = World::new().await;
    let mut unsaved = w.notification("not saved");
    unsaved["save_to_sent_items"] = json!(false);
    w.enqueue(&[w.notification("saved"), unsaved]).await;
    let event = w.receive_event(2).await;
    let report = w.run(event, Duration::from_secs(30), settings()).await;
    assert!(failures(&report).is_empty(), "{:?}", report.messages);
    let saved: HashMap<String, bool> = w
        .graph
        .accepted(&w.upn)
        .into_iter()
        .map(|m| {
            (
                m.request["message"]["subject"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                m.save_to_sent_items,
            )
        })
        .collect();
    assert_eq!(saved.get("saved"), Some(&true), "{saved:?}");
    assert_eq!(saved.get("not saved"), Some(&false), "{saved:?}");
}

/// In-progress claims of the state table `table`: (key, `lease_expires_at` epoch seconds).
async fn in_progress_claims(table: &str) -> Vec<(String, i64)> {
    let items = mailbridge_tests::dynamodb()
        .scan()
        .table_name(table)
        .send()
        .await
        .unwrap()
        .items
        .unwrap_or_default();
    items
        .into_iter()
        .filter(|i| {
            i.get("status")
                .and_then(|v| v.as_s().ok())
                .map(String::as_str)
                == Some("in_progress")
        })
        .map(|i| {
            (
                i["pk"].as_s().unwrap().clone(),
                i["lease_expires_at"].as_n().unwrap().parse().unwrap(),
            )
        })
        .collect()
}

/// Claims whose record says the send finished.
async fn completed_claims(table: &str) -> usize {
    let items = mailbridge_tests::dynamodb()
        .scan()
        .table_name(table)
        .send()
        .await
        .unwrap()
        .items
        .unwrap_or_default();
    items
        .iter()
        .filter(|i| {
            i.get("status")
                .and_then(|v| v.as_s().ok())
                .map(String::as_str)
                == Some("completed")
        })
        .count()
}

/// "The lease ran out", without waiting for it: each in-progress claim's lease is set to have
/// ended 10 s ago, which is what the claim condition (`lease_expires_at < now`) sees once the
/// real lease has passed.
async fn expire_claims(table: &str) {
    use aws_sdk_dynamodb::types::AttributeValue;
    let past = chrono::Utc::now().timestamp() - 10;
    for (pk, _) in in_progress_claims(table).await {
        mailbridge_tests::dynamodb()
            .update_item()
            .table_name(table)
            .key("pk", AttributeValue::S(pk))
            .update_expression("SET lease_expires_at = :past")
            .expression_attribute_values(":past", AttributeValue::N(past.to_string()))
            .send()
            .await
            .unwrap();
    }
}

/// The real send-notifications bootstrap is killed (SIGKILL, under the Runtime API emulator)
/// mid-batch: two of five notifications were accepted by Graph and recorded, the other three
/// are claimed and their requests wait at the Graph stand-in's hold point. The claims carry the
/// production lease (the invocation's deadline + 60 s), so a redelivery while it lives sends
/// nothing and retries those three; after it (its end simulated in the state table) a fresh
/// process sends them, each resend named in the log and in
/// `NotificationsResentAfterUnfinishedClaim`. Nothing is lost, and the only copies beyond one
/// are those named resends of mail Graph may have accepted from the killed process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bootstrap_killed_mid_batch_loses_nothing_and_names_every_resend() {
    use local_stack::runtime_api::{
        FunctionConfig, InvocationResult, RuntimeApi, workspace_binary,
    };
    const TIMEOUT: Duration = Duration::from_secs(30);
    let w = World::new().await;
    let binary = tokio::task::spawn_blocking(|| {
        workspace_binary("send-notifications", "send-notifications")
    })
    .await
    .unwrap()
    .expect("the send-notifications binary");
    let mut env: Vec<(String, String)> = stack().moto().env().into_iter().collect();
    env.extend([
        ("MAILBRIDGE_STATE_TABLE".to_owned(), w.table.clone()),
        ("MAILBRIDGE_DLQ_URL".to_owned(), w.dlq_url.clone()),
        (
            "MAILBRIDGE_THREAD_KEY_SECRET".to_owned(),
            w.thread_key_secret.clone(),
        ),
        ("MAILBRIDGE_GRAPH_URL".to_owned(), w.graph.v1_url()),
        (
            "MAILBRIDGE_ALLOW_LOCAL_TARGETS".to_owned(),
            "true".to_owned(),
        ),
        ("RUST_LOG".to_owned(), "info".to_owned()),
    ]);
    let function = FunctionConfig::new("send-notifications", binary).with_env(env);
    let subjects: Vec<String> = (1..=5).map(|i| format!("crash {i}")).collect();
    let bodies: Vec<Value> = subjects.iter().map(|s| w.notification(s)).collect();
    w.enqueue(&bodies).await;
    let event = serde_json::to_value(w.receive_event(5).await).unwrap();

    // 1. The first process: two sends pass, the next wait at the hold point; kill it there.
    w.graph.hold_after(&w.upn, 2);
    let first = RuntimeApi::start().await.expect("runtime api");
    first.spawn_function(&function).expect("spawn bootstrap");
    let invoked_at = chrono::Utc::now().timestamp();
    let invocation = {
        let (first, event) = (Arc::new(first), event.clone());
        let api = first.clone();
        (
            first,
            tokio::spawn(async move { api.invoke(event, TIMEOUT).await }),
        )
    };
    let (first, running) = invocation;
    let mut waited = 0;
    while (w.graph.held(&w.upn) == 0 || completed_claims(&w.table).await < 2) && waited < 600 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        waited += 1;
    }
    assert!(
        w.graph.held(&w.upn) > 0,
        "a send reached the hold point: {} accepted\n{}",
        w.graph.accepted(&w.upn).len(),
        first.logs()
    );
    assert_eq!(
        completed_claims(&w.table).await,
        2,
        "two sends recorded\n{}",
        first.logs()
    );
    first.kill_function().expect("kill -9");
    let outcome = running.await.unwrap().expect("the invocation ends");
    assert!(
        matches!(outcome.result, InvocationResult::ProcessExited(_)),
        "{outcome:?}"
    );
    // What the killed process had in flight is Graph's to accept or not, as on a real crash.
    w.graph.release(&w.upn);

    // 2. The production lease: the deadline of the killed invocation + 60 s, on each of the
    // three claims it could not finish.
    let claims = in_progress_claims(&w.table).await;
    assert_eq!(claims.len(), 3, "{claims:?}");
    let expected = invoked_at + TIMEOUT.as_secs() as i64 + 60;
    for (pk, lease_expires_at) in &claims {
        assert!(
            (lease_expires_at - expected).abs() <= 3,
            "{pk}: lease until {lease_expires_at}, expected deadline + 60 s = {expected}"
        );
    }

    // 3. Redelivered while the lease lives (a fresh process): nothing is sent; the three are
    // retried, the two sent ones are duplicates.
    let accepted_after_crash = w.graph.accepted(&w.upn).len();
    let second = RuntimeApi::start().await.expect("runtime api");
    second.spawn_function(&function).expect("spawn bootstrap");
    let response = second
        .invoke(event.clone(), TIMEOUT)
        .await
        .unwrap()
        .into_response()
        .unwrap_or_else(|e| panic!("{e}\n{}", second.logs()));
    assert_eq!(
        response["batchItemFailures"].as_array().map(Vec::len),
        Some(3),
        "{response}"
    );
    assert_eq!(w.graph.accepted(&w.upn).len(), accepted_after_crash);

    // 4. After the lease: the three are sent, each resend named.
    expire_claims(&w.table).await;
    let response = second
        .invoke(event.clone(), TIMEOUT)
        .await
        .unwrap()
        .into_response()
        .unwrap();
    assert_eq!(
        response["batchItemFailures"],
        json!([]),
        "{}",
        second.logs()
    );
    let logs = second.logs();
    assert!(
        logs.contains("\"NotificationsResentAfterUnfinishedClaim\":3"),
        "{logs}"
    );
    assert_eq!(
        logs.matches("resending a notification whose earlier attempt never finished")
            .count(),
        3,
        "{logs}"
    );

    // 5. Nothing lost, no unnamed copy, nothing parked; a further redelivery sends nothing.
    let mut copies: HashMap<String, usize> = HashMap::new();
    for mail in w.graph.accepted(&w.upn) {
        let subject = mail.request["message"]["subject"]
            .as_str()
            .unwrap_or_default();
        *copies.entry(subject.to_owned()).or_default() += 1;
    }
    let extra: usize = copies.values().map(|n| n - 1).sum();
    for subject in &subjects {
        assert!(
            copies.get(subject).is_some_and(|n| *n >= 1),
            "{subject} lost: {copies:?}"
        );
    }
    assert_eq!(
        extra,
        accepted_after_crash - 2,
        "the only second copies are of sends the killed process had made: {copies:?}"
    );
    assert!(extra <= 3);
    let response = second
        .invoke(event, TIMEOUT)
        .await
        .unwrap()
        .into_response()
        .unwrap();
    assert_eq!(response["batchItemFailures"], json!([]));
    assert_eq!(w.graph.accepted(&w.upn).len(), 5 + extra);
    assert!(w.parked(0).await.is_empty());
    second.shutdown();
}
