//! Fault-matrix rows not covered by the function helpers' tests (see RELIABILITY.md):
//! the DLQ unavailable while a message must be parked, a folder whose UIDVALIDITY changed with
//! already-ticketed mail restored into it, a configured folder that does not exist, and a
//! malformed ticket API secret, Graph 503s and connection resets inside a batch, an IMAP
//! server whose certificate is not trusted, Secrets Manager throttling (through
//! `local_stack::aws_fault_proxy`), poll-mailboxes' cold start with a bad variable, and
//! send-notifications' cold start with an empty endpoint or an unreachable Secrets Manager.
//!
//! Each test owns its queue, table, tenant, IMAP user and ticket sink path, so they run in
//! parallel on the shared stack.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use aws_lambda_events::event::sqs::{SqsEvent, SqsMessage};
use mailbridge::graph::GraphClient;
use mailbridge::retry::RetryPolicy;
use mailbridge::state_table::DynamoIdempotencyStore;
use mailbridge::state_table::MailboxStatus;
use mailbridge::state_table::{DynamoStateStore, put_mailbox_config};
use mailbridge::thread_key::ThreadKey;
use mailbridge::token::{
    AccountSecret, IdentityClient, SecretsManagerStore, TokenService, TokenServiceConfig,
};
use mailbridge_tests::{
    create_queue_with_dlq, create_state_table, dynamodb, put_secret, sqs, stack, unique,
};
use poll_mailboxes::convert::ParseContext;
use poll_mailboxes::imap_adapter::ImapConnector;
use poll_mailboxes::sinks::SecretsSinkFactory;
use poll_mailboxes::{PollDeps, PollReport};
use send_notifications::ports::{SqsParking, SqsVisibility};
use send_notifications::settings::BatchSettings;
use send_notifications::{Deps, Outcome, process_batch};
use serde_json::json;
use tokio::time::Instant;

const PASSWORD: &str = "fault-matrix password";

fn token_service() -> Arc<TokenService> {
    Arc::new(TokenService::new(
        Arc::new(SecretsManagerStore::from_conf(&stack().moto().sdk_config())),
        IdentityClient::new(mailbridge::http::default_client().unwrap()),
        TokenServiceConfig {
            default_timeout: Duration::from_secs(10),
            ..TokenServiceConfig::default()
        },
    ))
}

/// An account secret (password only) for a new user of a new tenant; returns (upn, account).
async fn new_account(prefix: &str) -> (String, String) {
    let account = mailbridge_tests::new_password_account(prefix, PASSWORD)
        .await
        .unwrap();
    let short = account.secret_name["mailbridge/".len()..].to_owned();
    (account.upn, short)
}

#[tokio::test]
async fn dlq_unavailable_the_message_is_reported_failed_and_stays_on_the_queue() {
    let (queue_url, dlq_url) = create_queue_with_dlq(&unique("fm-dlq"), 5).await.unwrap();
    let arn = mailbridge_tests::queue_arn(&queue_url).await.unwrap();
    let invalid = json!({
        "version": 1,
        "account": "mailbridge/whoever",
        "to": [{"address": "a@example.com\r\nBcc: evil@attacker.example"}],
        "subject": "invalid, must be parked",
        "body": {"content_type": "text", "content": "x"}
    });
    sqs()
        .send_message()
        .queue_url(&queue_url)
        .message_body(invalid.to_string())
        .send()
        .await
        .unwrap();
    let received = sqs()
        .receive_message()
        .queue_url(&queue_url)
        .wait_time_seconds(2)
        .visibility_timeout(1)
        .send()
        .await
        .unwrap();
    let m = &received.messages()[0];
    let mut record = SqsMessage::default();
    record.message_id = m.message_id().map(str::to_owned);
    record.receipt_handle = m.receipt_handle().map(str::to_owned);
    record.body = m.body().map(str::to_owned);
    record.event_source_arn = Some(arn);
    record.attributes = HashMap::new();
    let mut event = SqsEvent::default();
    event.records = vec![record];
    let message_id = m.message_id().unwrap().to_owned();

    // The DLQ goes away (deleted, or the role lost sqs:SendMessage).
    sqs()
        .delete_queue()
        .queue_url(&dlq_url)
        .send()
        .await
        .unwrap();

    let aws = stack().moto().sdk_config();
    let sqs_client = aws_sdk_sqs::Client::new(&aws);
    let table = create_state_table("fm-dlq").await.unwrap();
    let deps = Deps {
        tokens: token_service(),
        mail: Arc::new(GraphClient::new(&stack().graph().v1_url()).unwrap()),
        idempotency: Arc::new(DynamoIdempotencyStore::new(
            aws_sdk_dynamodb::Client::new(&aws),
            table,
        )),
        messages: Arc::new(mailbridge::message_store::S3MessageStore::new(
            mailbridge_tests::s3(),
        )),
        parking: Arc::new(SqsParking::new(sqs_client.clone(), dlq_url.clone())),
        visibility: Arc::new(SqsVisibility::new(sqs_client)),
        thread_key: ThreadKey::from_secret_value("fault-matrix-thread-key").unwrap(),
        settings: BatchSettings::default(),
    };
    let report = process_batch(event, Instant::now() + Duration::from_secs(30), &deps).await;
    let outcome = &report.messages[0].outcome;
    let Outcome::ParkFailed { reason } = outcome else {
        panic!("expected ParkFailed, got {outcome:?}");
    };
    assert!(
        reason.contains("to[0].address"),
        "names the bad field: {reason}"
    );
    let failures: Vec<&str> = report
        .response
        .batch_item_failures
        .iter()
        .map(|f| f.item_identifier.as_str())
        .collect();
    assert_eq!(failures, [message_id.as_str()], "reported, so SQS keeps it");

    // Not lost: SQS delivers it again once the visibility timeout passes.
    let mut again = Vec::new();
    for _ in 0..5 {
        let out = sqs()
            .receive_message()
            .queue_url(&queue_url)
            .wait_time_seconds(2)
            .send()
            .await
            .unwrap();
        again.extend(
            out.messages()
                .iter()
                .filter_map(|m| m.message_id().map(str::to_owned)),
        );
        if !again.is_empty() {
            break;
        }
    }
    assert_eq!(again, [message_id], "the message is still on the queue");
}

/// A state table, a ticket sink path and poller deps against the shared Dovecot.
struct Poller {
    table: String,
    sink: String,
    deps: PollDeps,
}

impl Poller {
    async fn new() -> Poller {
        let aws = stack().moto().sdk_config();
        let table = create_state_table("fm-poll").await.unwrap();
        let dovecot = stack().dovecot();
        let deps = PollDeps {
            tokens: token_service(),
            connector: Arc::new(
                ImapConnector::new(Some(&dovecot.ca_pem_path), Duration::from_secs(10)).unwrap(),
            ),
            state: Arc::new(DynamoStateStore::new(dynamodb(), &table)),
            sinks: Arc::new(SecretsSinkFactory::new(
                mailbridge::http::default_client().unwrap(),
                aws_sdk_secretsmanager::Client::new(&aws),
                RetryPolicy {
                    initial_backoff: Duration::from_millis(20),
                    max_backoff: Duration::from_millis(500),
                    max_attempts: 3,
                    attempt_timeout: Duration::from_secs(5),
                },
            )),
            parse: ParseContext { thread_key: None },
            max_concurrent_mailboxes: 4,
            deadline_margin: Duration::from_secs(2),
            dedupe_ttl: Duration::from_secs(3600),
            targets: mailbridge::mailbox::TargetPolicy::local(),
            memory: std::sync::Arc::new(poll_mailboxes::memory::MemoryBudget::unlimited()),
        };
        Poller {
            table,
            sink: unique("fm-sink"),
            deps,
        }
    }

    async fn mailbox(&self, name: &str, user: &str, account: &str, extra: serde_json::Value) {
        let mut fields = json!({
            "user": user,
            "account": account,
            "host": "localhost",
            "port": stack().dovecot().imaps_port,
            "ticket_api_url": stack().tickets().sink_url(&self.sink),
        });
        for (k, v) in extra.as_object().unwrap() {
            fields[k] = v.clone();
        }
        put_mailbox_config(
            &dynamodb(),
            &self.table,
            name,
            &fields,
            &mailbridge::mailbox::TargetPolicy::local(),
        )
        .await
        .unwrap();
    }

    async fn poll(&self) -> PollReport {
        poll_mailboxes::poll_once(&self.deps, None, Instant::now() + Duration::from_secs(60))
            .await
            .unwrap()
    }
}

fn status<'a>(report: &'a PollReport, name: &str) -> &'a MailboxStatus {
    report
        .mailboxes
        .iter()
        .find(|s| s.mailbox == name)
        .unwrap_or_else(|| panic!("no status for {name}: {report:?}"))
}

fn mail(id: &str, subject: &str) -> Vec<u8> {
    format!(
        "From: Ann Example <ann@customer.example>\r\nTo: helpdesk@example.com\r\nSubject: {subject}\r\n\
         Date: Sat, 28 Nov 2026 10:00:00 +0000\r\nMessage-ID: <{id}@customer.example>\r\n\
         MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nPlease help.\r\n"
    )
    .into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uidvalidity_change_with_restored_mail_makes_no_duplicate_tickets() {
    let p = Poller::new().await;
    let dovecot = stack().dovecot();
    let (user, account) = new_account("fm-uidvalidity").await;
    p.mailbox("uv", &user, &account, json!({})).await;
    let first = mail(&unique("uv-1"), "Printer on fire");
    dovecot.deliver_to(&user, "INBOX", &first).unwrap();
    let report = p.poll().await;
    assert_eq!(
        status(&report, "uv").outcome,
        mailbridge::state_table::MailboxOutcome::Ok,
        "{report:?}"
    );
    assert_eq!(stack().tickets().tickets(&p.sink).len(), 1);
    let before = dovecot.mailbox_status(&user, "INBOX").unwrap().uidvalidity;

    // The folder is rebuilt/restored: new UIDVALIDITY, the already-ticketed mail is back in the
    // INBOX with a new UID, next to one genuinely new mail.
    dovecot
        .set_uidvalidity(&user, "INBOX", before.wrapping_add(1000))
        .unwrap();
    dovecot.deliver_to(&user, "INBOX", &first).unwrap();
    dovecot
        .deliver_to(&user, "INBOX", &mail(&unique("uv-2"), "Scanner jammed"))
        .unwrap();
    let report = p.poll().await;
    let s = status(&report, "uv");
    assert_eq!(
        s.outcome,
        mailbridge::state_table::MailboxOutcome::Ok,
        "{report:?}"
    );
    assert_eq!(s.tickets_created, 1, "only the new mail: {s:?}");
    assert_eq!(s.duplicates, 1, "the restored mail is a duplicate: {s:?}");
    assert_ne!(s.uid_validity, Some(before), "{s:?}");
    let tickets = stack().tickets().tickets(&p.sink);
    assert_eq!(tickets.len(), 2, "no second ticket for the restored mail");
    assert_eq!(dovecot.list_messages(&user, "INBOX").unwrap().len(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_folder_fails_that_mailbox_with_its_name_and_the_others_are_polled() {
    let p = Poller::new().await;
    let dovecot = stack().dovecot();
    let (user, account) = new_account("fm-folder").await;
    p.mailbox(
        "nofolder",
        &user,
        &account,
        json!({"folder": "Helpdesk/DoesNotExist"}),
    )
    .await;
    let (good_user, good_account) = new_account("fm-folder-good").await;
    p.mailbox("good", &good_user, &good_account, json!({}))
        .await;
    dovecot
        .deliver_to(&user, "INBOX", &mail(&unique("nf"), "stays put"))
        .unwrap();
    dovecot
        .deliver_to(&good_user, "INBOX", &mail(&unique("g"), "gets a ticket"))
        .unwrap();
    let report = p.poll().await;
    let s = status(&report, "nofolder");
    assert_eq!(
        s.outcome,
        mailbridge::state_table::MailboxOutcome::Failed,
        "{report:?}"
    );
    let reason = s.reason.as_deref().unwrap_or_default();
    assert!(reason.contains("Helpdesk/DoesNotExist"), "{reason}");
    assert_eq!(
        status(&report, "good").outcome,
        mailbridge::state_table::MailboxOutcome::Ok,
        "{report:?}"
    );
    assert_eq!(stack().tickets().tickets(&p.sink).len(), 1);
    assert_eq!(report.mailboxes_failed, 1);
    assert_eq!(dovecot.list_messages(&user, "INBOX").unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_or_missing_ticket_api_secret_leaves_the_mail_and_names_the_secret() {
    let p = Poller::new().await;
    let dovecot = stack().dovecot();
    let (user, account) = new_account("fm-tsecret").await;
    let malformed = format!("mailbridge/ticket-api/{}", unique("fm-malformed"));
    put_secret(&malformed, r#"{"type":"api_key","header":"X-API-Key""#)
        .await
        .unwrap();
    let missing = format!("mailbridge/ticket-api/{}", unique("fm-missing"));
    p.mailbox(
        "malformed",
        &user,
        &account,
        json!({"ticket_api_secret": malformed}),
    )
    .await;
    let (other_user, other_account) = new_account("fm-tsecret-missing").await;
    p.mailbox(
        "missing",
        &other_user,
        &other_account,
        json!({"ticket_api_secret": missing}),
    )
    .await;
    dovecot
        .deliver_to(&user, "INBOX", &mail(&unique("ts"), "waits"))
        .unwrap();
    dovecot
        .deliver_to(&other_user, "INBOX", &mail(&unique("ts2"), "waits too"))
        .unwrap();
    let report = p.poll().await;
    for (name, secret, upn) in [
        ("malformed", &malformed, &user),
        ("missing", &missing, &other_user),
    ] {
        let s = status(&report, name);
        assert_ne!(
            s.outcome,
            mailbridge::state_table::MailboxOutcome::Ok,
            "{report:?}"
        );
        let reason = s.reason.as_deref().unwrap_or_default();
        assert!(reason.contains(secret.as_str()), "{name}: {reason}");
        assert_eq!(
            dovecot.list_messages(upn, "INBOX").unwrap().len(),
            1,
            "{name}: the mail waits in the INBOX"
        );
    }
    assert!(stack().tickets().tickets(&p.sink).is_empty());
}

/// Build the SQS event for `bodies` sent to a fresh queue (records as Lambda delivers them).
async fn event_for(bodies: &[serde_json::Value]) -> SqsEvent {
    let (queue_url, _dlq) = create_queue_with_dlq(&unique("fm-graph"), 5).await.unwrap();
    for body in bodies {
        sqs()
            .send_message()
            .queue_url(&queue_url)
            .message_body(body.to_string())
            .send()
            .await
            .unwrap();
    }
    let mut records = Vec::new();
    for _ in 0..20 {
        if records.len() >= bodies.len() {
            break;
        }
        let out = sqs()
            .receive_message()
            .queue_url(&queue_url)
            .max_number_of_messages(10)
            .wait_time_seconds(1)
            .send()
            .await
            .unwrap();
        for m in out.messages() {
            let mut record = SqsMessage::default();
            record.message_id = m.message_id().map(str::to_owned);
            record.receipt_handle = m.receipt_handle().map(str::to_owned);
            record.body = m.body().map(str::to_owned);
            records.push(record);
        }
    }
    assert_eq!(records.len(), bodies.len());
    let mut event = SqsEvent::default();
    event.records = records;
    event
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graph_503_and_connection_resets_in_a_batch_lose_nothing_and_send_nothing_twice() {
    let (upn, account) = new_account("fm-graph").await;
    let graph = stack().graph();
    let aws = stack().moto().sdk_config();
    let (_q, dlq_url) = create_queue_with_dlq(&unique("fm-graph-park"), 5)
        .await
        .unwrap();
    let sqs_client = aws_sdk_sqs::Client::new(&aws);
    // A 503 or a reset after the request may follow an accepted mail: the claim is kept and
    // the redelivery waits for the lease (simulated to run out below).
    let table = create_state_table("fm-graph").await.unwrap();
    let idempotency = Arc::new(CrashingIdempotency {
        inner: DynamoIdempotencyStore::new(aws_sdk_dynamodb::Client::new(&aws), table.clone()),
        table,
        lease: Duration::from_secs(600),
        hang_in_complete: false.into(),
        hung: 0.into(),
    });
    let deps = Deps {
        tokens: token_service(),
        mail: Arc::new(GraphClient::new(&graph.v1_url()).unwrap()),
        idempotency: idempotency.clone(),
        messages: Arc::new(mailbridge::message_store::S3MessageStore::new(
            mailbridge_tests::s3(),
        )),
        parking: Arc::new(SqsParking::new(sqs_client.clone(), dlq_url)),
        visibility: Arc::new(SqsVisibility::new(sqs_client)),
        thread_key: ThreadKey::from_secret_value("fault-matrix-thread-key").unwrap(),
        settings: BatchSettings {
            safety_margin: Duration::from_secs(1),
            ..BatchSettings::default()
        },
    };
    let subjects: Vec<String> = (0..4).map(|i| format!("graph fault {i}")).collect();
    let bodies: Vec<serde_json::Value> = subjects
        .iter()
        .map(|s| {
            json!({
                "version": 1,
                "account": format!("mailbridge/{account}"),
                "to": [{"address": "customer@example.com"}],
                "subject": s,
                "body": {"content_type": "text", "content": "x"}
            })
        })
        .collect();
    let event = event_for(&bodies).await;
    graph.fail_503(&upn, 2, None);
    graph.reset_connections(&upn, 1);

    let accepted = |subject: &str| {
        graph
            .accepted(&upn)
            .iter()
            .filter(|a| a.request["message"]["subject"] == subject)
            .count()
    };
    let report = process_batch(
        event.clone(),
        Instant::now() + Duration::from_secs(30),
        &deps,
    )
    .await;
    let failed: Vec<String> = report
        .response
        .batch_item_failures
        .iter()
        .map(|f| f.item_identifier.clone())
        .collect();
    for (record, subject) in event.records.iter().zip(&subjects) {
        let id = record.message_id.clone().unwrap();
        let sent = accepted(subject);
        assert!(sent <= 1, "{subject} sent {sent} times");
        assert!(
            (sent == 1) != failed.contains(&id),
            "{subject}: sent {sent}, reported failed {}: {report:?}",
            failed.contains(&id)
        );
    }
    // Three requests met a fault (two 503s, one reset); each item is sent or reported.
    assert!(
        graph.request_count(&upn) >= 4 && !failed.is_empty(),
        "the faults were hit: {} requests, failed {failed:?}",
        graph.request_count(&upn)
    );

    // SQS redelivers the whole batch after its visibility timeout (longer than the lease):
    // what was sent is a duplicate, the rest is sent now.
    idempotency.expire_leases().await;
    let report = process_batch(
        event.clone(),
        Instant::now() + Duration::from_secs(30),
        &deps,
    )
    .await;
    assert!(report.response.batch_item_failures.is_empty(), "{report:?}");
    for subject in &subjects {
        assert_eq!(accepted(subject), 1, "{subject} exactly once");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_imap_server_with_an_untrusted_certificate_is_refused_and_the_mail_stays() {
    let mut p = Poller::new().await;
    // The production connector without the local stack's CA: only the OS trust store.
    p.deps.connector = Arc::new(ImapConnector::new(None, Duration::from_secs(10)).unwrap());
    let dovecot = stack().dovecot();
    let (user, account) = new_account("fm-tls").await;
    p.mailbox("untrusted", &user, &account, json!({})).await;
    dovecot
        .deliver_to(
            &user,
            "INBOX",
            &mail(&unique("tls"), "not over an unverified link"),
        )
        .unwrap();
    let report = p.poll().await;
    let s = status(&report, "untrusted");
    assert_eq!(
        s.outcome,
        mailbridge::state_table::MailboxOutcome::Failed,
        "{report:?}"
    );
    let reason = s.reason.as_deref().unwrap_or_default();
    assert!(
        reason.contains("TLS") && reason.contains("certificate"),
        "names the TLS problem: {reason}"
    );
    assert!(stack().tickets().tickets(&p.sink).is_empty());
    assert_eq!(dovecot.list_messages(&user, "INBOX").unwrap().len(), 1);
}

/// Lambda row "cold start with a missing config value", for poll-mailboxes: the real bootstrap
/// under the Runtime API emulator, once per bad variable. Init must fail (the function never
/// asks for an event, so no mail is touched) and the log must name the variable.
#[tokio::test]
async fn poll_mailboxes_cold_start_with_a_missing_or_invalid_variable_names_it() {
    use local_stack::runtime_api::{InvocationResult, invoke_binary, workspace_binary};
    let binary =
        tokio::task::spawn_blocking(|| workspace_binary("poll-mailboxes", "poll-mailboxes"))
            .await
            .unwrap()
            .expect("build the poll-mailboxes binary");
    let thread_key_secret = unique("fm-thread-key");
    put_secret(&thread_key_secret, "0123456789abcdef0123456789abcdef")
        .await
        .unwrap();
    // send-notifications refuses a key shorter than 16 bytes; the poller, which verifies the
    // same markers, must too (one loader for both).
    let short_thread_key_secret = unique("fm-short-thread-key");
    put_secret(&short_thread_key_secret, "0123456789abcde")
        .await
        .unwrap();
    let good = |name: &str| -> Option<String> {
        match name {
            "MAILBRIDGE_STATE_TABLE" => Some("fm-cold-start-table".into()),
            "MAILBRIDGE_THREAD_KEY_SECRET" => Some(thread_key_secret.clone()),
            _ => None,
        }
    };
    // (variable, value: None = unset, what the log must also say, fails at init)
    // The thread key is read on the first invocation (no network in init), so a secret that does
    // not exist fails that invocation, with the same naming, and the next invocation retries.
    let cases: [(&str, Option<&str>, &str, bool); 9] = [
        ("MAILBRIDGE_STATE_TABLE", None, "is required", true),
        // the AWS SDK would panic ("URL was unset")
        ("AWS_ENDPOINT_URL", Some(""), "is set but empty", true),
        ("MAILBRIDGE_THREAD_KEY_SECRET", None, "is required", true),
        (
            "MAILBRIDGE_THREAD_KEY_SECRET",
            Some("fm-no-such-secret"),
            "cannot read it",
            false,
        ),
        (
            "MAILBRIDGE_THREAD_KEY_SECRET",
            Some(short_thread_key_secret.as_str()),
            "at least 16 bytes (got 15)",
            false,
        ),
        (
            "MAILBRIDGE_MAX_CONCURRENT_MAILBOXES",
            Some("0"),
            "between 1 and 256",
            true,
        ),
        (
            "MAILBRIDGE_IMAP_TIMEOUT_SECONDS",
            Some("soon"),
            "not a whole number",
            true,
        ),
        (
            "MAILBRIDGE_IMAP_CA_FILE",
            Some("/nonexistent/ca.pem"),
            "/nonexistent/ca.pem",
            true,
        ),
        // production (the setting unset, as in Lambda) refuses a loopback Graph URL: inside
        // Lambda 127.0.0.1:9001 is the Runtime API
        (
            "MAILBRIDGE_GRAPH_URL",
            Some("http://127.0.0.1:9/v1.0"),
            "MAILBRIDGE_ALLOW_LOCAL_TARGETS",
            true,
        ),
    ];
    for (variable, value, detail, at_init) in cases {
        let mut env = stack().moto().env();
        for name in ["MAILBRIDGE_STATE_TABLE", "MAILBRIDGE_THREAD_KEY_SECRET"] {
            if name != variable
                && let Some(v) = good(name)
            {
                env.push((name.into(), v));
            }
        }
        if let Some(v) = value {
            env.push((variable.into(), v.into()));
        }
        env.push(("RUST_LOG".into(), "info".into()));
        let outcome = invoke_binary(
            &binary,
            &env,
            json!({"source": "aws.scheduler"}),
            Duration::from_secs(60),
        )
        .await
        .unwrap();
        let expected_line = if at_init {
            assert!(
                matches!(
                    outcome.result,
                    InvocationResult::ProcessExited(_) | InvocationResult::InitError { .. }
                ),
                "{variable}={value:?}: init must fail: {outcome:?}"
            );
            "poll-mailboxes cannot start"
        } else {
            match &outcome.result {
                InvocationResult::FunctionError {
                    error_type,
                    error_message,
                    ..
                } => {
                    assert_eq!(error_type, "ThreadKeyUnavailable", "{outcome:?}");
                    assert!(
                        error_message.contains(variable) && error_message.contains(detail),
                        "{variable}={value:?}: the invocation error names the variable: {error_message}"
                    );
                }
                other => panic!("{variable}={value:?}: the invocation must fail: {other:?}"),
            }
            "poll-mailboxes cannot poll"
        };
        let logs = outcome.logs();
        let error_line = logs
            .lines()
            .find(|l| l.contains(expected_line))
            .unwrap_or_else(|| panic!("{variable}: no startup error line: {logs}"));
        assert!(
            error_line.contains(variable) && error_line.contains(detail),
            "{variable}={value:?}: the startup error names the variable and the problem: {error_line}"
        );
        assert!(
            error_line.contains("\"level\":\"ERROR\""),
            "a JSON error line: {error_line}"
        );
    }
}

/// The real send-notifications bootstrap, its path, and its environment on the shared moto with
/// `AWS_ENDPOINT_URL` replaced by `endpoint`.
async fn send_notifications_with_endpoint(
    endpoint: &str,
    thread_key_secret: &str,
) -> (std::path::PathBuf, Vec<(String, String)>) {
    let binary = tokio::task::spawn_blocking(|| {
        local_stack::runtime_api::workspace_binary("send-notifications", "send-notifications")
    })
    .await
    .unwrap()
    .expect("build the send-notifications binary");
    let mut env: Vec<(String, String)> = stack()
        .moto()
        .env()
        .into_iter()
        .filter(|(k, _)| k != "AWS_ENDPOINT_URL")
        .collect();
    env.extend([
        ("MAILBRIDGE_STATE_TABLE".into(), "fm-send-table".into()),
        ("MAILBRIDGE_DLQ_URL".into(), "http://127.0.0.1:9/dlq".into()),
        (
            "MAILBRIDGE_THREAD_KEY_SECRET".into(),
            thread_key_secret.into(),
        ),
        ("AWS_ENDPOINT_URL".into(), endpoint.into()),
        ("RUST_LOG".into(), "info".into()),
    ]);
    (binary, env)
}

fn one_record_sqs_event() -> serde_json::Value {
    json!({"Records": [{"messageId": "m-1", "receiptHandle": "r-1", "body": "{}",
        "eventSource": "aws:sqs", "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:q"}]})
}

/// An empty `AWS_ENDPOINT_URL` (what SAM local passes for a variable it cannot resolve) stops
/// send-notifications' cold start with an error line naming the variable; the AWS SDK itself
/// would panic ("URL was unset") on the first call.
#[tokio::test]
async fn send_notifications_cold_start_with_an_empty_endpoint_url_names_it() {
    use local_stack::runtime_api::{InvocationResult, invoke_binary};
    let (binary, env) = send_notifications_with_endpoint("", "fm-unused-thread-key").await;
    let outcome = invoke_binary(
        &binary,
        &env,
        one_record_sqs_event(),
        Duration::from_secs(60),
    )
    .await
    .unwrap();
    let logs = outcome.logs();
    assert!(
        matches!(
            outcome.result,
            InvocationResult::ProcessExited(_) | InvocationResult::InitError { .. }
        ),
        "init must fail, before any event is taken: {outcome:?}\n{logs}"
    );
    assert!(
        logs.lines()
            .any(|l| l.contains("send-notifications cannot start")
                && l.contains("AWS_ENDPOINT_URL is set but empty")),
        "the startup error line names the variable: {logs}"
    );
}

/// A thread-key read that cannot reach Secrets Manager fails the invocation with
/// `ThreadKeyUnavailable` and the whole cause, in the error and in the JSON log line the
/// `SendNotificationsErrors` alarm tells operators to read (not the SDK's bare "unhandled
/// error").
#[tokio::test]
async fn send_notifications_names_the_cause_when_the_thread_key_cannot_be_read() {
    use local_stack::runtime_api::{InvocationResult, invoke_binary};
    // Nothing listens on this port: every Secrets Manager call is refused.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let unreachable = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let thread_key_secret = unique("fm-send-thread-key");
    let (binary, env) = send_notifications_with_endpoint(&unreachable, &thread_key_secret).await;
    let outcome = invoke_binary(
        &binary,
        &env,
        one_record_sqs_event(),
        Duration::from_secs(60),
    )
    .await
    .unwrap();
    let logs = outcome.logs();
    match &outcome.result {
        InvocationResult::FunctionError {
            error_type,
            error_message,
            ..
        } => {
            assert_eq!(error_type, "ThreadKeyUnavailable", "{outcome:?}");
            assert!(
                error_message.starts_with(&format!(
                    "MAILBRIDGE_THREAD_KEY_SECRET {thread_key_secret}: cannot read it: dispatch failure"
                )) && error_message.contains("Connection refused"),
                "the error carries the whole cause: {error_message}"
            );
        }
        other => panic!("the invocation must fail: {other:?}\n{logs}"),
    }
    let line = logs
        .lines()
        .find(|l| l.contains("send-notifications cannot handle the batch"))
        .unwrap_or_else(|| panic!("no error line: {logs}"));
    assert!(
        line.contains("Connection refused") && !line.contains("unhandled error"),
        "the log line names the cause: {line}"
    );
}

/// A Secrets Manager client that goes through the fault proxy (everything else reaches moto).
async fn throttling_proxy() -> (
    local_stack::aws_fault_proxy::AwsFaultProxy,
    aws_sdk_secretsmanager::Client,
) {
    let proxy = local_stack::aws_fault_proxy::AwsFaultProxy::start(&stack().moto().endpoint_url)
        .await
        .unwrap();
    let sdk = stack().moto().sdk_config();
    let conf = aws_sdk_secretsmanager::config::Builder::from(&sdk)
        .endpoint_url(&proxy.endpoint_url)
        .build();
    (proxy, aws_sdk_secretsmanager::Client::from_conf(conf))
}

fn token_service_over(client: aws_sdk_secretsmanager::Client) -> Arc<TokenService> {
    Arc::new(TokenService::new(
        Arc::new(SecretsManagerStore::new(client)),
        IdentityClient::new(mailbridge::http::default_client().unwrap()),
        TokenServiceConfig {
            default_timeout: Duration::from_secs(20),
            ..TokenServiceConfig::default()
        },
    ))
}

async fn stored_account(name: &str) -> AccountSecret {
    AccountSecret::parse(name, &mailbridge_tests::get_secret(name).await.unwrap()).unwrap()
}

fn gaps_ms(calls: &[local_stack::aws_fault_proxy::ProxyCall], operation: &str) -> Vec<u128> {
    let at: Vec<_> = calls
        .iter()
        .filter(|c| c.operation == operation)
        .map(|c| c.at)
        .collect();
    at.windows(2).map(|w| (w[1] - w[0]).as_millis()).collect()
}

/// Secrets Manager row "throttling", short burst: the first two `GetSecretValue` and the first
/// two `PutSecretValue` calls on the account secret answer `ThrottlingException`. The token
/// layer (through the SDK's standard retry: 3 attempts, exponential backoff with jitter) gets
/// the token, writes the rotated refresh token back, and never touches the account status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_manager_throttling_burst_is_retried_with_backoff_and_never_needs_reauth() {
    let (proxy, client) = throttling_proxy().await;
    let (_upn, account) = new_account("fm-throttle").await;
    let name = format!("mailbridge/{account}");
    proxy.throttle("GetSecretValue", &name, 2);
    proxy.throttle("PutSecretValue", &name, 2);
    let tokens = token_service_over(client);
    let token = tokens
        .access_token_until(
            &account,
            mailbridge::token::Audience::Graph,
            Instant::now() + Duration::from_secs(30),
        )
        .await
        .expect("throttling is retried within the deadline");
    assert!(!secrecy::ExposeSecret::expose_secret(&token.secret).is_empty());
    let (gets, gets_throttled) = proxy.count("GetSecretValue", &name);
    let (puts, puts_throttled) = proxy.count("PutSecretValue", &name);
    assert_eq!(gets_throttled, 2, "the burst was hit");
    assert_eq!(puts_throttled, 2, "the burst was hit");
    assert!(gets >= 3 && puts == 3, "retried: {gets} gets, {puts} puts");
    let calls = proxy.calls(&name);
    println!(
        "backoff between GetSecretValue attempts: {:?} ms; PutSecretValue: {:?} ms",
        gaps_ms(&calls, "GetSecretValue"),
        gaps_ms(&calls, "PutSecretValue")
    );
    // The write-back got through (ROPC bootstrap → refresh token stored) and the account is ok.
    let stored = stored_account(&name).await;
    assert!(stored.refresh_token.is_some(), "rotated token written back");
    assert_eq!(
        stored.status.state,
        mailbridge::token::AccountState::Ok,
        "throttling never marks the account"
    );
}

/// Secrets Manager row "throttling", sustained: every `GetSecretValue` on the account secret is
/// throttled. send-notifications reports the item for retry (`batchItemFailures`, reason naming
/// `ThrottlingException`), sends nothing, parks nothing, and the account is not marked; the
/// poller leaves the mail and names the throttling in the mailbox status. Once the throttling
/// stops, the redelivered notification is sent exactly once and the mail becomes one ticket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_manager_throttling_past_the_retries_retries_the_notification_and_leaves_the_mail()
{
    let (proxy, client) = throttling_proxy().await;
    let (upn, account) = new_account("fm-throttle-long").await;
    let name = format!("mailbridge/{account}");
    proxy.throttle("GetSecretValue", &name, u32::MAX);
    let tokens = token_service_over(client.clone());

    // --- send-notifications
    let graph = stack().graph();
    let aws = stack().moto().sdk_config();
    let (_q, dlq_url) = create_queue_with_dlq(&unique("fm-throttle-park"), 5)
        .await
        .unwrap();
    let sqs_client = aws_sdk_sqs::Client::new(&aws);
    let deps = Deps {
        tokens: tokens.clone(),
        mail: Arc::new(GraphClient::new(&graph.v1_url()).unwrap()),
        idempotency: Arc::new(DynamoIdempotencyStore::new(
            aws_sdk_dynamodb::Client::new(&aws),
            create_state_table("fm-throttle").await.unwrap(),
        )),
        messages: Arc::new(mailbridge::message_store::S3MessageStore::new(
            mailbridge_tests::s3(),
        )),
        parking: Arc::new(SqsParking::new(sqs_client.clone(), dlq_url.clone())),
        visibility: Arc::new(SqsVisibility::new(sqs_client)),
        thread_key: ThreadKey::from_secret_value("fault-matrix-thread-key").unwrap(),
        settings: BatchSettings {
            safety_margin: Duration::from_secs(1),
            ..BatchSettings::default()
        },
    };
    let body = json!({
        "version": 1,
        "account": name,
        "to": [{"address": "customer@example.com"}],
        "subject": "throttled secret",
        "body": {"content_type": "text", "content": "x"}
    });
    let event = event_for(std::slice::from_ref(&body)).await;
    let report = process_batch(
        event.clone(),
        Instant::now() + Duration::from_secs(30),
        &deps,
    )
    .await;
    let outcome = &report.messages[0].outcome;
    let Outcome::Retry { reason, .. } = outcome else {
        panic!("throttling is transient: expected Retry, got {outcome:?}");
    };
    assert!(
        reason.contains("ThrottlingException") && reason.contains(&name),
        "the reason names the fault and the secret: {reason}"
    );
    assert_eq!(report.response.batch_item_failures.len(), 1, "{report:?}");
    assert_eq!(graph.accepted(&upn).len(), 0, "nothing sent");
    let (gets, _) = proxy.count("GetSecretValue", &name);
    assert!(gets >= 3, "the SDK retried before giving up: {gets} calls");
    println!(
        "backoff between throttled GetSecretValue attempts: {:?} ms",
        gaps_ms(&proxy.calls(&name), "GetSecretValue")
    );

    // --- poll-mailboxes, same account: the mailbox fails this run, the mail stays.
    let p = Poller::new().await;
    let p = Poller {
        deps: PollDeps {
            tokens: tokens.clone(),
            ..p.deps
        },
        ..p
    };
    p.mailbox("throttled", &upn, &account, json!({})).await;
    let dovecot = stack().dovecot();
    dovecot
        .deliver_to(&upn, "INBOX", &mail(&unique("thr"), "Throttled secret"))
        .unwrap();
    let report = p.poll().await;
    let s = status(&report, "throttled");
    assert_eq!(
        s.outcome,
        mailbridge::state_table::MailboxOutcome::Failed,
        "{s:?}"
    );
    assert!(
        s.reason
            .as_deref()
            .unwrap_or("")
            .contains("ThrottlingException"),
        "{s:?}"
    );
    assert_eq!(dovecot.list_messages(&upn, "INBOX").unwrap().len(), 1);
    assert!(stack().tickets().tickets(&p.sink).is_empty());
    assert_eq!(
        stored_account(&name).await.status.state,
        mailbridge::token::AccountState::Ok,
        "throttling never marks the account"
    );

    // --- The throttling stops: the redelivery is sent once, the next poll makes one ticket.
    proxy.stop_throttling(&name);
    let report = process_batch(event, Instant::now() + Duration::from_secs(30), &deps).await;
    assert!(report.response.batch_item_failures.is_empty(), "{report:?}");
    assert_eq!(graph.accepted(&upn).len(), 1, "sent exactly once");
    let report = p.poll().await;
    assert_eq!(
        status(&report, "throttled").tickets_created,
        1,
        "{report:?}"
    );
    assert_eq!(stack().tickets().tickets(&p.sink).len(), 1);
    assert_eq!(dovecot.list_messages(&upn, "INBOX").unwrap().len(), 0);
}

/// Crash injection through the idempotency port: claims with a fixed `lease` (long, so "while
/// the lease lives" holds on any machine), [`CrashingIdempotency::expire_leases`] for "the lease
/// ran out" (production leases are the invocation's remaining time + 60 s), and an optional
/// hang in `complete` (the process dies after Graph's 202, before the record).
struct CrashingIdempotency {
    inner: DynamoIdempotencyStore,
    table: String,
    lease: Duration,
    hang_in_complete: std::sync::atomic::AtomicBool,
    hung: std::sync::atomic::AtomicUsize,
}

#[async_trait::async_trait]
impl mailbridge::state_table::IdempotencyStore for CrashingIdempotency {
    async fn claim(
        &self,
        id: &str,
        payload_hash: &str,
        _lease: Duration,
    ) -> Result<mailbridge::state_table::Claim, mailbridge::state_table::StateError> {
        self.inner.claim(id, payload_hash, self.lease).await
    }
    async fn claim_many(
        &self,
        keys: &[(String, String)],
        _lease: Duration,
    ) -> Vec<Result<mailbridge::state_table::Claim, mailbridge::state_table::StateError>> {
        self.inner.claim_many(keys, self.lease).await
    }
    async fn complete(
        &self,
        id: &str,
        payload_hash: &str,
        lease_token: &str,
        graph_request_id: Option<&str>,
        ttl: Duration,
    ) -> Result<(), mailbridge::state_table::StateError> {
        if self
            .hang_in_complete
            .load(std::sync::atomic::Ordering::SeqCst)
        {
            self.hung.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            std::future::pending::<()>().await;
        }
        self.inner
            .complete(id, payload_hash, lease_token, graph_request_id, ttl)
            .await
    }
    async fn release(
        &self,
        id: &str,
        lease_token: &str,
    ) -> Result<(), mailbridge::state_table::StateError> {
        self.inner.release(id, lease_token).await
    }
}

impl CrashingIdempotency {
    /// "The lease ran out", without racing the clock: every in-progress claim in this test's
    /// table gets a lease that ended 10 s ago, which is what DynamoDB's claim condition
    /// (`lease_expires_at < now`) sees once a real lease has run out.
    async fn expire_leases(&self) {
        use aws_sdk_dynamodb::types::AttributeValue;
        let client = dynamodb();
        let items = client
            .scan()
            .table_name(&self.table)
            .send()
            .await
            .unwrap()
            .items
            .unwrap_or_default();
        let past = chrono::Utc::now().timestamp() - 10;
        let mut expired = 0;
        for item in items {
            if item
                .get("status")
                .and_then(|v| v.as_s().ok())
                .map(String::as_str)
                != Some("in_progress")
            {
                continue;
            }
            client
                .update_item()
                .table_name(&self.table)
                .key("pk", item["pk"].clone())
                .update_expression("SET lease_expires_at = :past")
                .expression_attribute_values(":past", AttributeValue::N(past.to_string()))
                .send()
                .await
                .unwrap();
            expired += 1;
        }
        assert!(expired > 0, "no in-progress claim to expire");
    }
}

/// Crash injection through the mail port: hangs before reaching Graph while `hang` is set;
/// while `lose_answer` is set, Graph gets the request and accepts it, but the answer is lost
/// (the client sees the timeout it would see when the 202 never arrives).
struct HangingSender {
    inner: GraphClient,
    hang: std::sync::atomic::AtomicBool,
    entered: std::sync::atomic::AtomicUsize,
    lose_answer: std::sync::atomic::AtomicBool,
}

#[async_trait::async_trait]
impl mailbridge::graph::MailSender for HangingSender {
    async fn send_mail(
        &self,
        token: &mailbridge::token::AccessToken,
        mail: &mailbridge::graph::OutgoingMail,
        timeout: Duration,
    ) -> Result<mailbridge::graph::SendReceipt, mailbridge::graph::GraphError> {
        if self.hang.load(std::sync::atomic::Ordering::SeqCst) {
            self.entered
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            std::future::pending::<()>().await;
        }
        let sent = self.inner.send_mail(token, mail, timeout).await;
        if sent.is_ok() && self.lose_answer.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(mailbridge::graph::GraphError::Transport {
                detail: "operation timed out".into(),
                timed_out: true,
                after_request: true,
            });
        }
        sent
    }

    async fn send_mime(
        &self,
        token: &mailbridge::token::AccessToken,
        mail: &mailbridge::graph::OutgoingMime,
        timeout: Duration,
    ) -> Result<mailbridge::graph::SendReceipt, mailbridge::graph::GraphError> {
        self.inner.send_mime(token, mail, timeout).await
    }

    async fn send_draft(
        &self,
        token: &mailbridge::token::AccessToken,
        mail: &mailbridge::graph_draft::DraftMail,
        deadline: tokio::time::Instant,
    ) -> Result<mailbridge::graph::SendReceipt, mailbridge::graph_draft::DraftFailure> {
        self.inner.send_draft(token, mail, deadline).await
    }
}

/// Everything written through `tracing` while a future runs, as text.
#[derive(Clone, Default)]
struct LogCapture(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for LogCapture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl LogCapture {
    fn subscriber(&self) -> impl tracing::Subscriber + Send + Sync + use<> {
        let sink = self.clone();
        tracing_subscriber::fmt()
            .json()
            .with_max_level(tracing::Level::INFO)
            .with_writer(move || sink.clone())
            .finish()
    }
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

async fn sqs_deps(idempotency: Arc<CrashingIdempotency>, mail: Arc<HangingSender>) -> Arc<Deps> {
    let aws = stack().moto().sdk_config();
    let (_q, dlq_url) = create_queue_with_dlq(&unique("fm-crash-park"), 5)
        .await
        .unwrap();
    let sqs_client = aws_sdk_sqs::Client::new(&aws);
    Arc::new(Deps {
        tokens: token_service(),
        mail,
        idempotency,
        messages: Arc::new(mailbridge::message_store::S3MessageStore::new(
            mailbridge_tests::s3(),
        )),
        parking: Arc::new(SqsParking::new(sqs_client.clone(), dlq_url)),
        visibility: Arc::new(SqsVisibility::new(sqs_client)),
        thread_key: ThreadKey::from_secret_value("fault-matrix-thread-key").unwrap(),
        settings: BatchSettings {
            safety_margin: Duration::from_secs(1),
            ..BatchSettings::default()
        },
    })
}

async fn crash_points(lease: Duration) -> (Arc<CrashingIdempotency>, Arc<HangingSender>) {
    let aws = stack().moto().sdk_config();
    let table = create_state_table("fm-crash").await.unwrap();
    let idempotency = Arc::new(CrashingIdempotency {
        inner: DynamoIdempotencyStore::new(aws_sdk_dynamodb::Client::new(&aws), table.clone()),
        table,
        lease,
        hang_in_complete: false.into(),
        hung: 0.into(),
    });
    let mail = Arc::new(HangingSender {
        inner: GraphClient::new(&stack().graph().v1_url()).unwrap(),
        hang: false.into(),
        entered: 0.into(),
        lose_answer: false.into(),
    });
    (idempotency, mail)
}

/// Run a batch as a "process" that crashes once `crashed()` holds: the task is aborted there,
/// as a killed Lambda would stop, leaving whatever state it had written.
/// The claim's lease runs out (simulated in the state table) and SQS redelivers the batch:
/// the report and the logs of that invocation.
async fn redeliver_after_the_lease(
    idempotency: &CrashingIdempotency,
    event: &SqsEvent,
    deps: &Deps,
) -> (send_notifications::BatchReport, LogCapture) {
    use tracing::instrument::WithSubscriber as _;
    idempotency.expire_leases().await;
    let logs = LogCapture::default();
    let report = process_batch(
        event.clone(),
        Instant::now() + Duration::from_secs(30),
        deps,
    )
    .with_subscriber(logs.subscriber())
    .await;
    (report, logs)
}

async fn run_until_crash(deps: Arc<Deps>, event: SqsEvent, crashed: impl Fn() -> bool) {
    let task = tokio::spawn(async move {
        process_batch(event, Instant::now() + Duration::from_secs(60), &deps).await
    });
    // Polled, not slept: up to 60 s for a loaded machine to reach the crash point.
    for _ in 0..3000 {
        if crashed() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(crashed(), "the crash point was never reached");
    task.abort();
    let _ = task.await;
}

/// SQS row "redelivery after a crash that leaves a live lease": the process dies after the
/// claim, before Graph. A redelivery while the lease lives is reported for retry (not sent,
/// not sent twice); once the lease has run out the redelivery takes it over, says so, and the
/// notification is sent exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_after_the_claim_leaves_a_live_lease_the_redelivery_waits_then_sends_once() {
    let (upn, account) = new_account("fm-crash-claim").await;
    let graph = stack().graph();
    // Outlives the crash and the first redelivery on any machine; its end is simulated.
    let lease = Duration::from_secs(600);
    let (idempotency, mail) = crash_points(lease).await;
    let deps = sqs_deps(idempotency.clone(), mail.clone()).await;
    let body = json!({
        "version": 1,
        "account": format!("mailbridge/{account}"),
        "to": [{"address": "customer@example.com"}],
        "subject": "crash after the claim",
        "body": {"content_type": "text", "content": "x"}
    });
    let event = event_for(std::slice::from_ref(&body)).await;

    // 1. Crash between the claim and Graph.
    mail.hang.store(true, std::sync::atomic::Ordering::SeqCst);
    let entered = mail.clone();
    run_until_crash(deps.clone(), event.clone(), move || {
        entered.entered.load(std::sync::atomic::Ordering::SeqCst) > 0
    })
    .await;
    mail.hang.store(false, std::sync::atomic::Ordering::SeqCst);
    assert_eq!(graph.accepted(&upn).len(), 0);

    // 2. Redelivered while the lease lives: retried, nothing sent.
    let report = process_batch(
        event.clone(),
        Instant::now() + Duration::from_secs(30),
        &deps,
    )
    .await;
    let outcome = &report.messages[0].outcome;
    assert!(
        matches!(outcome, Outcome::Retry { reason, .. } if reason.contains("another invocation is sending this notification")),
        "{outcome:?}"
    );
    assert_eq!(report.response.batch_item_failures.len(), 1);
    assert_eq!(
        graph.accepted(&upn).len(),
        0,
        "not sent while the lease lives"
    );

    // 3. The lease runs out: the redelivery resumes, logs it, sends once.
    let (report, logs) = redeliver_after_the_lease(&idempotency, &event, &deps).await;
    assert!(
        matches!(report.messages[0].outcome, Outcome::Sent { .. }),
        "{report:?}"
    );
    assert!(report.messages[0].resumed_unfinished_claim);
    assert_eq!(report.metrics.resent_after_unfinished_claim, 1);
    assert_eq!(
        report.metrics.emf("send-notifications")["NotificationsResentAfterUnfinishedClaim"],
        1
    );
    assert!(
        logs.text()
            .contains("resending a notification whose earlier attempt never finished"),
        "{}",
        logs.text()
    );
    assert_eq!(graph.accepted(&upn).len(), 1, "sent exactly once");

    // 4. Any later redelivery is a duplicate.
    let report = process_batch(event, Instant::now() + Duration::from_secs(30), &deps).await;
    assert!(
        matches!(report.messages[0].outcome, Outcome::Duplicate),
        "{report:?}"
    );
    assert_eq!(graph.accepted(&upn).len(), 1);
}

/// SQS row "redelivery after Graph 202, before the idempotency record": the process dies
/// after Graph accepted two notifications (one with a ticket number, one without) and before
/// their completion records. While the lease lives a redelivery sends nothing. After it, the
/// redelivery cannot know the mail went out (sendMail has no idempotency key; Mail.Send cannot
/// read Sent Items), so it sends again: exactly one duplicate each, named in the log and the
/// `NotificationsResentAfterUnfinishedClaim` metric, and both copies carry the same
/// deterministic internetMessageId so the receiving server can merge them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_after_graph_accepted_before_the_record_gives_at_most_one_duplicate_with_the_same_message_id()
 {
    let (upn, account) = new_account("fm-crash-202").await;
    let graph = stack().graph();
    // Outlives the crash and the first redelivery on any machine; its end is simulated.
    let lease = Duration::from_secs(600);
    let (idempotency, mail) = crash_points(lease).await;
    let deps = sqs_deps(idempotency.clone(), mail).await;
    let subjects = ["crash after 202 (ticket)", "crash after 202 (plain)"];
    let bodies = [
        json!({
            "version": 1,
            "account": format!("mailbridge/{account}"),
            "to": [{"address": "customer@example.com"}],
            "subject": subjects[0],
            "ticket_number": "4711",
            "body": {"content_type": "text", "content": "x"}
        }),
        json!({
            "version": 1,
            "account": format!("mailbridge/{account}"),
            "to": [{"address": "customer@example.com"}],
            "subject": subjects[1],
            "body": {"content_type": "text", "content": "x"}
        }),
    ];
    let event = event_for(&bodies).await;
    let copies = |subject: &str| -> Vec<String> {
        graph
            .accepted(&upn)
            .iter()
            .filter(|a| {
                a.request["message"]["subject"]
                    .as_str()
                    .is_some_and(|s| s.ends_with(subject))
            })
            .map(|a| {
                a.request["message"]["internetMessageId"]
                    .as_str()
                    .unwrap_or("(none)")
                    .to_string()
            })
            .collect()
    };

    // 1. Graph accepts both; the process dies before either completion record.
    idempotency
        .hang_in_complete
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let hung = idempotency.clone();
    run_until_crash(deps.clone(), event.clone(), move || {
        hung.hung.load(std::sync::atomic::Ordering::SeqCst) == 2
    })
    .await;
    idempotency
        .hang_in_complete
        .store(false, std::sync::atomic::Ordering::SeqCst);
    for subject in subjects {
        assert_eq!(copies(subject).len(), 1, "{subject}: accepted by Graph");
    }

    // 2. Redelivered while the lease lives: nothing sent twice.
    let report = process_batch(
        event.clone(),
        Instant::now() + Duration::from_secs(30),
        &deps,
    )
    .await;
    assert_eq!(report.response.batch_item_failures.len(), 2, "{report:?}");
    for subject in subjects {
        assert_eq!(
            copies(subject).len(),
            1,
            "{subject}: not resent under a live lease"
        );
    }

    // 3. After the lease: resent once each, named, with the same Message-ID.
    let (report, logs) = redeliver_after_the_lease(&idempotency, &event, &deps).await;
    assert!(report.response.batch_item_failures.is_empty(), "{report:?}");
    assert_eq!(report.metrics.sent, 2);
    assert_eq!(report.metrics.resent_after_unfinished_claim, 2);
    let resend_lines = logs
        .text()
        .lines()
        .filter(|l| l.contains("resending a notification whose earlier attempt never finished"))
        .count();
    assert_eq!(resend_lines, 2, "{}", logs.text());
    for subject in subjects {
        let ids = copies(subject);
        assert_eq!(ids.len(), 2, "{subject}: exactly one duplicate");
        assert!(
            ids[0].starts_with("<mb."),
            "{subject}: deterministic id {ids:?}"
        );
        assert_eq!(
            ids[0], ids[1],
            "{subject}: both copies carry the same Message-ID"
        );
    }

    // 4. Completed now: later redeliveries are duplicates.
    let report = process_batch(event, Instant::now() + Duration::from_secs(30), &deps).await;
    assert_eq!(report.metrics.duplicates, 2, "{report:?}");
    for subject in subjects {
        assert_eq!(copies(subject).len(), 2);
    }
}

/// SQS row "Graph timed out (the 202 may have been sent)": a timeout is ambiguous, so the
/// notification is retried, but its claim is kept. A redelivery while the lease lives sends
/// nothing; the one after it (SQS redelivers after the visibility timeout, longer than the
/// lease) is a named resend — log line and `NotificationsResentAfterUnfinishedClaim` — with
/// the same Message-ID, never a silent second copy. (Before: the claim was released on the
/// timeout, and the redelivery sent a second copy as if it were the first.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graph_timeout_after_acceptance_keeps_the_claim_and_the_resend_is_named() {
    let (upn, account) = new_account("fm-timeout").await;
    let graph = stack().graph();
    let lease = Duration::from_secs(600);
    let (idempotency, mail) = crash_points(lease).await;
    let deps = sqs_deps(idempotency.clone(), mail.clone()).await;
    let body = json!({
        "version": 1,
        "account": format!("mailbridge/{account}"),
        "to": [{"address": "customer@example.com"}],
        "subject": "answer lost",
        "body": {"content_type": "text", "content": "x"}
    });
    let event = event_for(std::slice::from_ref(&body)).await;

    // 1. Graph accepts it, the answer is lost: retried, with the reason saying it may be out.
    mail.lose_answer
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let report = process_batch(
        event.clone(),
        Instant::now() + Duration::from_secs(30),
        &deps,
    )
    .await;
    mail.lose_answer
        .store(false, std::sync::atomic::Ordering::SeqCst);
    assert!(
        matches!(&report.messages[0].outcome, Outcome::Retry { reason, .. } if reason.contains("may have accepted")),
        "{report:?}"
    );
    assert_eq!(report.response.batch_item_failures.len(), 1);
    assert_eq!(graph.accepted(&upn).len(), 1, "Graph has it");

    // 2. An early redelivery (the lease still lives) sends nothing.
    let report = process_batch(
        event.clone(),
        Instant::now() + Duration::from_secs(30),
        &deps,
    )
    .await;
    assert!(
        matches!(&report.messages[0].outcome, Outcome::Retry { reason, .. } if reason.contains("another invocation")),
        "the claim of the timed-out attempt must be kept: {report:?}"
    );
    assert_eq!(graph.accepted(&upn).len(), 1, "no silent second copy");

    // 3. After the lease: one named resend with the same Message-ID.
    let (report, logs) = redeliver_after_the_lease(&idempotency, &event, &deps).await;
    assert!(
        matches!(report.messages[0].outcome, Outcome::Sent { .. }),
        "{report:?}"
    );
    assert!(report.messages[0].resumed_unfinished_claim);
    assert_eq!(report.metrics.resent_after_unfinished_claim, 1);
    assert!(
        logs.text()
            .contains("resending a notification whose earlier attempt never finished"),
        "{}",
        logs.text()
    );
    let ids: Vec<_> = graph
        .accepted(&upn)
        .iter()
        .map(|a| a.request["message"]["internetMessageId"].clone())
        .collect();
    assert_eq!(ids.len(), 2, "exactly one duplicate");
    assert_eq!(ids[0], ids[1], "both copies carry the same Message-ID");

    // 4. Completed: later redeliveries are duplicates.
    let report = process_batch(event, Instant::now() + Duration::from_secs(30), &deps).await;
    assert!(
        matches!(report.messages[0].outcome, Outcome::Duplicate),
        "{report:?}"
    );
    assert_eq!(graph.accepted(&upn).len(), 2);
}

/// Graph row "accept, then fail", made by the stand-in itself: the mail is accepted and
/// delivered, then the answer is a 504 (once, no Retry-After) or the connection drops. Both keep
/// the claim; the redelivery after the lease is the one named resend, with the same Message-ID;
/// a 504 with a Retry-After that fits is resent within the invocation and counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graph_accepting_then_failing_keeps_the_claim_and_every_resend_is_named() {
    use local_stack::graph::AcceptThenFail;
    for how in [
        AcceptThenFail::GatewayTimeout,
        AcceptThenFail::DropConnection,
    ] {
        let (upn, account) = new_account("fm-accept-fail").await;
        let graph = stack().graph();
        let (idempotency, _) = crash_points(Duration::from_secs(600)).await;
        let mail = Arc::new(HangingSender {
            inner: GraphClient::new(&graph.v1_url()).unwrap(),
            hang: false.into(),
            entered: 0.into(),
            lose_answer: false.into(),
        });
        let deps = sqs_deps(idempotency.clone(), mail).await;
        let body = json!({
            "version": 1,
            "account": format!("mailbridge/{account}"),
            "to": [{"address": "customer@example.com"}],
            "subject": format!("accepted then {how:?}"),
            "body": {"content_type": "text", "content": "x"}
        });
        let event = event_for(std::slice::from_ref(&body)).await;
        graph.accept_then_fail(&upn, 1, how);
        let report = process_batch(
            event.clone(),
            Instant::now() + Duration::from_secs(30),
            &deps,
        )
        .await;
        assert!(
            matches!(report.messages[0].outcome, Outcome::Retry { .. }),
            "{how:?}: {report:?}"
        );
        assert_eq!(graph.accepted(&upn).len(), 1, "{how:?}: Graph has it");
        // an early redelivery sends nothing
        let report = process_batch(
            event.clone(),
            Instant::now() + Duration::from_secs(30),
            &deps,
        )
        .await;
        assert!(
            matches!(&report.messages[0].outcome, Outcome::Retry { reason, .. } if reason.contains("another invocation")),
            "{how:?}: the claim is kept: {report:?}"
        );
        assert_eq!(graph.accepted(&upn).len(), 1, "{how:?}: no silent copy");
        // after the lease: one named resend, same Message-ID
        let (report, logs) = redeliver_after_the_lease(&idempotency, &event, &deps).await;
        assert!(
            matches!(report.messages[0].outcome, Outcome::Sent { .. }),
            "{report:?}"
        );
        assert_eq!(report.metrics.resent_after_unfinished_claim, 1);
        assert!(
            logs.text()
                .contains("resending a notification whose earlier attempt never finished"),
            "{}",
            logs.text()
        );
        let ids: Vec<_> = graph
            .accepted(&upn)
            .iter()
            .map(|a| a.request["message"]["internetMessageId"].clone())
            .collect();
        assert_eq!(ids.len(), 2);
        assert_eq!(ids[0], ids[1]);
    }

    // A 504 that asks to wait 1 s: resent in the same invocation, named and counted.
    let (upn, account) = new_account("fm-accept-fail-wait").await;
    let graph = stack().graph();
    let (idempotency, mail) = crash_points(Duration::from_secs(600)).await;
    let deps = sqs_deps(idempotency, mail).await;
    let event = event_for(&[json!({
        "version": 1,
        "account": format!("mailbridge/{account}"),
        "to": [{"address": "customer@example.com"}],
        "subject": "503 then resent",
        "body": {"content_type": "text", "content": "x"}
    })])
    .await;
    graph.fail_503(&upn, 1, Some(1));
    use tracing::instrument::WithSubscriber as _;
    let logs = LogCapture::default();
    let report = process_batch(event, Instant::now() + Duration::from_secs(30), &deps)
        .with_subscriber(logs.subscriber())
        .await;
    assert!(
        matches!(report.messages[0].outcome, Outcome::Sent { .. }),
        "{report:?}"
    );
    assert_eq!(report.metrics.resent_after_ambiguous_answer, 1);
    assert!(
        logs.text()
            .contains("resending after an answer that may mean Graph accepted the mail"),
        "{}",
        logs.text()
    );
}

/// Graph rows "sending quota" and "sender mailbox full", against the stand-in: the quota
/// delays the message (ChangeMessageVisibility on the real queue) and never parks it; the full
/// mailbox parks it with that reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sending_quota_delays_and_a_full_sender_mailbox_parks() {
    let (upn, account) = new_account("fm-quota").await;
    let graph = stack().graph();
    let (idempotency, mail) = crash_points(Duration::from_secs(600)).await;
    let deps = sqs_deps(idempotency, mail).await;
    let notification = |subject: &str| {
        json!({
            "version": 1,
            "account": format!("mailbridge/{account}"),
            "to": [{"address": "customer@example.com"}],
            "subject": subject,
            "body": {"content_type": "text", "content": "x"}
        })
    };
    let event = event_for(&[notification("over quota")]).await;
    graph.sending_quota(&upn, 1, "ErrorSubmissionQuotaExceeded", None);
    let report = process_batch(event, Instant::now() + Duration::from_secs(30), &deps).await;
    assert!(
        matches!(
            report.messages[0].outcome,
            Outcome::Delayed {
                visibility_seconds: 10800,
                ..
            }
        ),
        "{report:?}"
    );
    assert_eq!(report.metrics.parked, 0);
    assert_eq!(report.response.batch_item_failures.len(), 1);
    assert!(graph.accepted(&upn).is_empty());

    graph.fill_mailbox(&upn);
    let event = event_for(&[notification("mailbox full")]).await;
    let report = process_batch(event, Instant::now() + Duration::from_secs(30), &deps).await;
    match &report.messages[0].outcome {
        Outcome::Parked { reason } => {
            assert_eq!(reason.kind, "sender-mailbox-full");
            assert_eq!(reason.graph_code.as_deref(), Some("ErrorQuotaExceeded"));
        }
        other => panic!("{other:?}"),
    }
}

/// A mail of about `kib` KiB (a base64 attachment), so its FETCH response is large enough for
/// the TCP proxy to cut inside it.
fn big_mail(id: &str, subject: &str, kib: usize) -> Vec<u8> {
    let line = "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVphYmNkZWZnaGlqa2xtbm9wcXJzdHV2d3h5ejAxMjM0\r\n";
    let attachment = line.repeat(kib * 1024 / line.len());
    format!(
        "From: Ann Example <ann@customer.example>\r\nTo: helpdesk@example.com\r\nSubject: {subject}\r\n\
         Date: Sat, 28 Nov 2026 10:00:00 +0000\r\nMessage-ID: <{id}@customer.example>\r\n\
         MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n\
         Content-Type: text/plain\r\n\r\nLog attached.\r\n--b\r\nContent-Type: application/octet-stream; name=log.bin\r\n\
         Content-Disposition: attachment; filename=log.bin\r\nContent-Transfer-Encoding: base64\r\n\r\n{attachment}--b--\r\n"
    )
    .into_bytes()
}

/// IMAP row "connection killed mid-FETCH / mid-MOVE", at chosen points: a TCP proxy between the
/// poller and Dovecot (TLS passes through) cuts the connection
/// 1. in the middle of the big first mail's `BODY.PEEK[]` response,
/// 2. at the `UID MOVE` after its ticket was accepted, before Dovecot sees it,
/// 3. at the `UID MOVE` again, after Dovecot moved the mail but before the client saw the OK.
///
/// Each run names the IMAP step in the mailbox status; then a clean run. Every mail becomes
/// exactly one ticket, none is lost, and the mail moved without an acknowledgement is not
/// ticketed again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imap_cut_mid_fetch_and_mid_move_then_every_mail_is_exactly_one_ticket() {
    use local_stack::tcp_fault_proxy::{CutRule, TcpFaultProxy};
    let p = Poller::new().await;
    let dovecot = stack().dovecot();
    let proxy = TcpFaultProxy::start(std::net::SocketAddr::from((
        [127, 0, 0, 1],
        dovecot.imaps_port,
    )))
    .await
    .unwrap();
    let (user, account) = new_account("fm-imap-cut").await;
    p.mailbox("cut", &user, &account, json!({"port": proxy.port}))
        .await;
    // The folder exists, so the first client write after the fetch is the MOVE itself (not a
    // MOVE answered NO [TRYCREATE], then CREATE).
    dovecot.create_folder(&user, "Processed").unwrap();
    let big = big_mail(&unique("cut-big"), "Big log file", 300);
    dovecot.deliver_to(&user, "INBOX", &big).unwrap();
    for (i, subject) in ["Second mail", "Third mail"].iter().enumerate() {
        dovecot
            .deliver_to(&user, "INBOX", &mail(&unique(&format!("cut-{i}")), subject))
            .unwrap();
    }
    let count = |folder: &str| dovecot.list_messages(&user, folder).map_or(0, |m| m.len());
    let tickets = || stack().tickets().tickets(&p.sink);
    let big_len = big.len() as u64;

    // 1. Mid-FETCH of the big mail.
    proxy.arm(CutRule::ServerSent { bytes: big_len / 2 });
    let report = p.poll().await;
    let s = status(&report, "cut");
    assert!(
        !proxy.armed(),
        "the cut point was reached: {:?}",
        proxy.stats()
    );
    assert_eq!(
        s.outcome,
        mailbridge::state_table::MailboxOutcome::Failed,
        "{s:?}"
    );
    assert!(
        s.reason
            .as_deref()
            .unwrap_or("")
            .contains("UID FETCH BODY.PEEK"),
        "the status names the IMAP step: {s:?}"
    );
    assert!(tickets().is_empty());
    assert_eq!(count("INBOX"), 3);

    // 2. The MOVE after the big mail's ticket never reaches Dovecot.
    proxy.arm(CutRule::ClientWriteAfterServerSent {
        bytes: big_len,
        forward: false,
    });
    let report = p.poll().await;
    let s = status(&report, "cut");
    assert!(!proxy.armed(), "{:?}", proxy.stats());
    assert_eq!(
        s.outcome,
        mailbridge::state_table::MailboxOutcome::Failed,
        "{s:?}"
    );
    assert!(
        s.reason.as_deref().unwrap_or("").contains("UID MOVE"),
        "{s:?}"
    );
    assert_eq!(tickets().len(), 1, "the big mail's ticket");
    assert_eq!(count("INBOX"), 3, "nothing moved");

    // 3. The MOVE reaches Dovecot, its OK does not reach the poller.
    proxy.arm(CutRule::ClientWriteAfterServerSent {
        bytes: big_len,
        forward: true,
    });
    let report = p.poll().await;
    let s = status(&report, "cut");
    assert!(!proxy.armed(), "{:?}", proxy.stats());
    assert_eq!(
        s.outcome,
        mailbridge::state_table::MailboxOutcome::Failed,
        "{s:?}"
    );
    assert!(
        s.reason.as_deref().unwrap_or("").contains("UID MOVE"),
        "{s:?}"
    );
    assert_eq!(
        tickets().len(),
        1,
        "recognised by its dedupe record: no second ticket for the big mail"
    );
    assert_eq!(count("INBOX"), 2, "moved although unacknowledged");
    assert_eq!(count("Processed"), 1);

    // 4. A clean run finishes the rest.
    let report = p.poll().await;
    assert_eq!(
        status(&report, "cut").outcome,
        mailbridge::state_table::MailboxOutcome::Ok,
        "{report:?}"
    );
    let mut subjects: Vec<String> = tickets()
        .iter()
        .map(|t| t.body["draft"]["subject"].as_str().unwrap().to_string())
        .collect();
    subjects.sort();
    assert_eq!(subjects, ["Big log file", "Second mail", "Third mail"]);
    assert_eq!(count("INBOX"), 0);
    assert_eq!(count("Processed"), 3);
    assert_eq!(proxy.stats().cuts.len(), 3, "{:?}", proxy.stats());
}

fn client_trusting(ca_pem: &str) -> reqwest::Client {
    mailbridge::http::client(&mailbridge::http::HttpOptions {
        extra_root_certs_pem: vec![ca_pem.as_bytes().to_vec()],
        ..Default::default()
    })
    .unwrap()
}

/// One notification through `process_batch` with `mail` as the Graph client and an account
/// whose identity platform is `authority_host`; returns the outcome.
async fn send_one_through(
    mail: GraphClient,
    identity_http: reqwest::Client,
    authority_host: Option<String>,
    label: &str,
) -> Outcome {
    let (_upn, account) = new_account("fm-tls").await;
    let name = format!("mailbridge/{account}");
    if let Some(host) = authority_host {
        let mut secret =
            AccountSecret::parse(&name, &mailbridge_tests::get_secret(&name).await.unwrap())
                .unwrap();
        secret.authority_host = host;
        put_secret(&name, &secret.to_json()).await.unwrap();
    }
    let aws = stack().moto().sdk_config();
    let (_q, dlq_url) = create_queue_with_dlq(&unique("fm-tls-park"), 5)
        .await
        .unwrap();
    let sqs_client = aws_sdk_sqs::Client::new(&aws);
    let deps = Deps {
        tokens: Arc::new(TokenService::new(
            Arc::new(SecretsManagerStore::from_conf(&aws)),
            IdentityClient::new(identity_http),
            TokenServiceConfig {
                default_timeout: Duration::from_secs(4),
                ..TokenServiceConfig::default()
            },
        )),
        mail: Arc::new(mail),
        idempotency: Arc::new(DynamoIdempotencyStore::new(
            aws_sdk_dynamodb::Client::new(&aws),
            create_state_table("fm-tls").await.unwrap(),
        )),
        messages: Arc::new(mailbridge::message_store::S3MessageStore::new(
            mailbridge_tests::s3(),
        )),
        parking: Arc::new(SqsParking::new(sqs_client.clone(), dlq_url)),
        visibility: Arc::new(SqsVisibility::new(sqs_client)),
        thread_key: ThreadKey::from_secret_value("fault-matrix-thread-key").unwrap(),
        settings: BatchSettings {
            safety_margin: Duration::from_secs(1),
            ..BatchSettings::default()
        },
    };
    let event = event_for(&[json!({
        "version": 1,
        "account": name,
        "to": [{"address": "customer@example.com"}],
        "subject": format!("tls {label}"),
        "body": {"content_type": "text", "content": "x"}
    })])
    .await;
    let report = process_batch(event, Instant::now() + Duration::from_secs(20), &deps).await;
    let outcome = report.messages[0].outcome.clone();
    assert_eq!(
        report.response.batch_item_failures.len(),
        usize::from(outcome.is_failure()),
        "{report:?}"
    );
    outcome
}

/// TLS row "HTTPS verification and host names": HTTPS endpoints on 127.0.0.1 whose certificate
/// comes from a CA the client does not trust, or from a trusted CA but for `wrong.example`.
/// The ticket API client, the Graph client and the identity client each refuse before sending
/// anything, the error names the TLS failure (`UnknownIssuer`, `certificate not valid for name "localhost"`), the
/// notification is retried (never parked, never sent, the account never marked), and a mail
/// whose ticket API is behind such a certificate stays in the INBOX. A control endpoint with a
/// trusted certificate for the right name gets through the handshake and answers 503, so the
/// refusals are the certificate's doing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_with_an_untrusted_ca_or_a_wrong_host_name_is_refused_and_nothing_is_lost() {
    // its servers listen on loopback
    mailbridge::config::allow_local_targets_in_this_process();
    use local_stack::tls_endpoint::TlsEndpoint;
    let untrusted = TlsEndpoint::start(&["localhost", "127.0.0.1"])
        .await
        .unwrap();
    let wrong_name = TlsEndpoint::start(&["wrong.example"]).await.unwrap();
    let control = TlsEndpoint::start(&["localhost", "127.0.0.1"])
        .await
        .unwrap();
    let cases: [(&str, &TlsEndpoint, reqwest::Client, Option<&str>); 3] = [
        (
            "untrusted CA",
            &untrusted,
            mailbridge::http::default_client().unwrap(),
            Some("UnknownIssuer"),
        ),
        (
            "wrong host name",
            &wrong_name,
            client_trusting(&wrong_name.ca_pem),
            Some("not valid for name \"localhost\""),
        ),
        ("control", &control, client_trusting(&control.ca_pem), None),
    ];
    for (label, endpoint, http, tls_failure) in cases {
        let names_tls = |text: &str| match tls_failure {
            Some(kind) => {
                assert!(
                    text.contains("certificate") && text.contains(kind),
                    "{label}: the error names the TLS failure ({kind}): {text}"
                );
            }
            None => assert!(
                !text.contains("certificate"),
                "{label}: the control passes TLS: {text}"
            ),
        };

        // Ticket API client.
        let sink = mailbridge::ticket_sink::WebhookTicketSink::new(
            http.clone(),
            format!("{}/tickets", endpoint.url("localhost")),
            mailbridge::ticket_sink::WebhookAuth::None,
            RetryPolicy {
                initial_backoff: Duration::from_millis(20),
                max_backoff: Duration::from_millis(100),
                max_attempts: 2,
                attempt_timeout: Duration::from_secs(5),
            },
        );
        let payload = mailbridge::ticket_sink::TicketPayload {
            schema: mailbridge::ticket_sink::TICKET_PAYLOAD_SCHEMA.into(),
            mailbox: "m".into(),
            mailbox_address: "m@example.com".into(),
            received_at: chrono::Utc::now(),
            idempotency_key: "k".repeat(64),
            draft: mailbridge::mail::TicketDraft {
                subject: "tls".into(),
                ..Default::default()
            },
            attachments: Vec::new(),
            problem: None,
            raw_message_base64: None,
        };
        use mailbridge::ticket_sink::TicketSink as _;
        let err = sink
            .deliver(
                &payload,
                &"k".repeat(64),
                Instant::now() + Duration::from_secs(10),
            )
            .await
            .expect_err("no ticket over this endpoint");
        names_tls(&err.to_string());

        // Graph client (the account's identity platform is the working stand-in).
        let graph =
            GraphClient::with_http(http.clone(), &format!("{}/v1.0", endpoint.url("localhost")))
                .unwrap();
        let outcome = send_one_through(
            graph,
            mailbridge::http::default_client().unwrap(),
            None,
            label,
        )
        .await;
        let Outcome::Retry { reason, .. } = &outcome else {
            panic!("{label}: Graph behind this certificate must be retried: {outcome:?}");
        };
        names_tls(reason);

        // Identity client (the account's authority is this endpoint).
        let outcome = send_one_through(
            GraphClient::new(&stack().graph().v1_url()).unwrap(),
            http.clone(),
            Some(endpoint.url("localhost")),
            label,
        )
        .await;
        let Outcome::Retry { reason, .. } = &outcome else {
            panic!("{label}: a token endpoint behind this certificate is transient: {outcome:?}");
        };
        names_tls(reason);

        if tls_failure.is_some() {
            assert_eq!(
                endpoint.handshakes(),
                0,
                "{label}: the client refused every handshake"
            );
            assert_eq!(endpoint.requests(), 0, "{label}: nothing was sent");
        } else {
            assert!(
                endpoint.requests() >= 3,
                "{label}: the control got the requests"
            );
        }
    }

    // The poller: the mail stays in the INBOX, the mailbox status names the TLS failure.
    let p = Poller::new().await;
    let dovecot = stack().dovecot();
    let (user, account) = new_account("fm-tls-poll").await;
    p.mailbox(
        "tls",
        &user,
        &account,
        json!({"ticket_api_url": format!("{}/tickets", untrusted.url("localhost"))}),
    )
    .await;
    dovecot
        .deliver_to(
            &user,
            "INBOX",
            &mail(&unique("tls"), "Behind a bad certificate"),
        )
        .unwrap();
    let report = p.poll().await;
    let s = status(&report, "tls");
    assert_eq!(
        s.outcome,
        mailbridge::state_table::MailboxOutcome::Partial,
        "{s:?}"
    );
    let reason = s.reason.as_deref().unwrap_or("");
    assert!(reason.contains("UnknownIssuer"), "{s:?}");
    assert_eq!(
        dovecot.list_messages(&user, "INBOX").unwrap().len(),
        1,
        "the mail stays"
    );
    assert_eq!(untrusted.requests(), 0);
}

/// Secrets Manager row "account secret deleted while the poller runs": the account secret is
/// deleted (scheduled for deletion, Secrets Manager's default) between two runs of a warm
/// poller. While the cached IMAP token lives, mail is still ticketed; once a fresh token is
/// needed the mailbox fails with a reason naming the secret and the deletion, the mail stays;
/// after `RestoreSecret` the next run tickets it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_account_secret_deleted_while_the_poller_runs_leaves_the_mail_and_names_the_secret() {
    let p = Poller::new().await;
    let dovecot = stack().dovecot();
    let (user, account) = new_account("fm-deleted").await;
    let name = format!("mailbridge/{account}");
    p.mailbox("deleted", &user, &account, json!({})).await;
    let tickets = || stack().tickets().tickets(&p.sink).len();
    let inbox = || dovecot.list_messages(&user, "INBOX").unwrap().len();

    dovecot
        .deliver_to(
            &user,
            "INBOX",
            &mail(&unique("del-1"), "Before the deletion"),
        )
        .unwrap();
    assert_eq!(status(&p.poll().await, "deleted").tickets_created, 1);

    mailbridge_tests::secrets()
        .delete_secret()
        .secret_id(&name)
        .send()
        .await
        .unwrap();
    // Warm: the cached token still logs in.
    dovecot
        .deliver_to(
            &user,
            "INBOX",
            &mail(&unique("del-2"), "Token still cached"),
        )
        .unwrap();
    let report = p.poll().await;
    assert_eq!(
        status(&report, "deleted").outcome,
        mailbridge::state_table::MailboxOutcome::Ok,
        "{report:?}"
    );
    assert_eq!(tickets(), 2);

    // The token runs out (forced): the secret must be read again.
    p.deps
        .tokens
        .invalidate(&account, mailbridge::token::Audience::Imap);
    dovecot
        .deliver_to(
            &user,
            "INBOX",
            &mail(&unique("del-3"), "After the deletion"),
        )
        .unwrap();
    let report = p.poll().await;
    let s = status(&report, "deleted");
    assert_eq!(
        s.outcome,
        mailbridge::state_table::MailboxOutcome::Failed,
        "{s:?}"
    );
    let reason = s.reason.as_deref().unwrap_or("");
    assert!(
        reason.contains(&name) && reason.contains("deletion"),
        "the reason names the secret and its deletion: {reason}"
    );
    assert_eq!(inbox(), 1, "the mail stays");
    assert_eq!(tickets(), 2);

    mailbridge_tests::secrets()
        .restore_secret()
        .secret_id(&name)
        .send()
        .await
        .unwrap();
    let report = p.poll().await;
    assert_eq!(
        status(&report, "deleted").outcome,
        mailbridge::state_table::MailboxOutcome::Ok,
        "{report:?}"
    );
    assert_eq!(tickets(), 3, "each mail exactly one ticket");
    assert_eq!(inbox(), 0);
}
