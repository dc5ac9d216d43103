//! poll-mailboxes against real servers: the ticket API stand-in (webhook client), moto
//! (DynamoDB state table), Dovecot with XOAUTH2 (the identity stand-in introspects tokens), and
//! the real `bootstrap` binary under the Lambda Runtime API emulator.

use std::time::Duration;

use mailbridge::error::{Classify as _, ErrorClass};
use mailbridge::retry::RetryPolicy;
use mailbridge::state_table::{DedupeRecord, MailboxStatus, StateStore};
use mailbridge::state_table::{DynamoStateStore, put_mailbox_config};
use mailbridge::ticket_sink::{
    TICKET_PAYLOAD_SCHEMA, TicketPayload, TicketSink, TicketSinkError, WebhookAuth,
    WebhookTicketSink,
};
use mailbridge_tests::{dynamodb, stack, unique};
use tokio::time::Instant;

fn fast_retry() -> RetryPolicy {
    RetryPolicy {
        initial_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_secs(2),
        max_attempts: 5,
        attempt_timeout: Duration::from_secs(5),
    }
}

/// A valid idempotency key (64 hex, as the poller makes them) named by `label`.
fn hex_key(label: &str) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(label.as_bytes()))
}

/// The same payload for the same `label` on every call (a retry repeats it byte for byte).
fn payload(label: &str) -> TicketPayload {
    TicketPayload {
        schema: TICKET_PAYLOAD_SCHEMA.into(),
        mailbox: "m".into(),
        mailbox_address: "m@example.com".into(),
        received_at: "2026-11-28T10:00:00Z".parse().unwrap(),
        idempotency_key: hex_key(label),
        draft: mailbridge::mail::TicketDraft {
            subject: "hello".into(),
            ..Default::default()
        },
        attachments: Vec::new(),
        problem: None,
        raw_message_base64: None,
    }
}

fn sink(url: String, auth: WebhookAuth) -> WebhookTicketSink {
    WebhookTicketSink::new(reqwest::Client::new(), url, auth, fast_retry())
}

fn soon() -> Instant {
    Instant::now() + Duration::from_secs(20)
}

#[tokio::test]
async fn webhook_posts_with_idempotency_key_and_bearer_auth() {
    let api = stack().tickets();
    let path = unique("sink");
    api.require_header(&path, "authorization", "Bearer s3cret");
    let auth = WebhookAuth::from_secret_json("t", r#"{"type":"bearer","token":"s3cret"}"#).unwrap();
    let client = sink(api.sink_url(&path), auth);
    let first = client
        .deliver(&payload("k1"), &hex_key("k1"), soon())
        .await
        .unwrap();
    let again = client
        .deliver(&payload("k1"), &hex_key("k1"), soon())
        .await
        .unwrap();
    assert_eq!(first.ticket_id, again.ticket_id, "same key, same ticket");
    assert!(!first.replayed);
    assert!(
        again.replayed,
        "the receiver said Idempotent-Replayed: not a new ticket"
    );
    let tickets = api.tickets(&path);
    assert_eq!(tickets.len(), 1);
    assert_eq!(tickets[0].idempotency_key, hex_key("k1"));
    assert_eq!(tickets[0].body["draft"]["subject"], "hello");

    let wrong = sink(api.sink_url(&path), WebhookAuth::None);
    let err = wrong
        .deliver(&payload("k2"), &hex_key("k2"), soon())
        .await
        .unwrap_err();
    assert_eq!(
        err.class(),
        ErrorClass::Transient,
        "bad credentials never park mail: {err}"
    );
    assert!(err.to_string().contains("401"), "{err}");
}

/// The stand-in is as strict as a careful receiver: the schema, a required key equal to the
/// payload's, and one payload per key.
#[tokio::test]
async fn the_ticket_api_stand_in_refuses_what_a_strict_receiver_refuses() {
    let api = stack().tickets();
    let path = unique("sink");
    let http = reqwest::Client::new();
    let post = |body: serde_json::Value, key: Option<String>| {
        let mut request = http.post(api.sink_url(&path)).json(&body);
        if let Some(key) = key {
            request = request.header("Idempotency-Key", key);
        }
        request.send()
    };
    let valid = serde_json::to_value(payload("s1")).unwrap();
    let no_key = post(valid.clone(), None).await.unwrap();
    assert_eq!(no_key.status().as_u16(), 400);
    let mut invalid = valid.clone();
    invalid["draft"]["subject"] = serde_json::json!(42);
    let answer = post(invalid, Some(hex_key("s1"))).await.unwrap();
    assert_eq!(answer.status().as_u16(), 422);
    assert!(answer.text().await.unwrap().contains("/draft/subject"));
    let other_key = post(valid.clone(), Some(hex_key("s2"))).await.unwrap();
    assert_eq!(
        other_key.status().as_u16(),
        422,
        "header and payload keys differ"
    );
    assert_eq!(
        post(valid.clone(), Some(hex_key("s1")))
            .await
            .unwrap()
            .status()
            .as_u16(),
        201
    );
    // Same key, another body: the client broke its promise.
    let sink_client = sink(api.sink_url(&path), WebhookAuth::None);
    let mut changed_payload = payload("s1");
    changed_payload.draft.subject = "changed".into();
    let err = sink_client
        .deliver(&changed_payload, &hex_key("s1"), soon())
        .await
        .unwrap_err();
    assert!(
        matches!(err, TicketSinkError::Rejected { status: 422, .. }),
        "{err}"
    );
    assert_eq!(api.tickets(&path).len(), 1);
}

#[tokio::test]
async fn webhook_api_key_header_from_the_secret() {
    let api = stack().tickets();
    let path = unique("sink");
    api.require_header(&path, "x-api-key", "k-123");
    let auth = WebhookAuth::from_secret_json(
        "t",
        r#"{"type":"api_key","header":"X-API-Key","key":"k-123"}"#,
    )
    .unwrap();
    sink(api.sink_url(&path), auth)
        .deliver(&payload("a"), &hex_key("a"), soon())
        .await
        .unwrap();
    assert_eq!(api.tickets(&path).len(), 1);
}

#[tokio::test]
async fn webhook_retries_429_after_retry_after_and_5xx_with_backoff() {
    let api = stack().tickets();
    let path = unique("sink");
    api.throttle_next(&path, 1, 1);
    api.fail_next(&path, 2, 503);
    let receipt = sink(api.sink_url(&path), WebhookAuth::None)
        .deliver(&payload("r"), &hex_key("r"), soon())
        .await
        .unwrap();
    assert_eq!(receipt.attempts, 4);
    assert_eq!(api.tickets(&path).len(), 1);
    assert_eq!(api.requests(&path), 4);
}

#[tokio::test]
async fn webhook_4xx_is_permanent_and_a_down_api_gives_up_at_the_deadline() {
    let api = stack().tickets();
    let path = unique("sink");
    api.reject_next(&path, 1, 422);
    let client = sink(api.sink_url(&path), WebhookAuth::None);
    let err = client
        .deliver(&payload("x"), &hex_key("x"), soon())
        .await
        .unwrap_err();
    assert!(
        matches!(err, TicketSinkError::Rejected { status: 422, .. }),
        "{err}"
    );
    assert_eq!(err.class(), ErrorClass::Permanent);

    // Down until the deadline: the error counts the attempts the stand-in saw (one cut short by
    // the deadline may not have reached it; that a wait past
    // the deadline gives up at once is proven on paused time in `retry`'s unit tests).
    api.set_down(&path, true);
    let before = api.requests(&path);
    let err = client
        .deliver(
            &payload("y"),
            &hex_key("y"),
            Instant::now() + Duration::from_secs(1),
        )
        .await
        .unwrap_err();
    let seen = api.requests(&path) - before;
    assert!(
        matches!(err, TicketSinkError::Unavailable { attempts, .. } if seen >= 1 && (seen == u64::from(attempts) || seen + 1 == u64::from(attempts))),
        "{seen} attempts seen: {err}"
    );
    assert!(api.tickets(&path).is_empty());
}

#[tokio::test]
async fn webhook_lost_response_is_retried_with_the_same_key_and_makes_one_ticket() {
    let api = stack().tickets();
    let path = unique("sink");
    api.drop_response_next(&path, 1);
    let receipt = sink(api.sink_url(&path), WebhookAuth::None)
        .deliver(&payload("d"), &hex_key("d"), soon())
        .await
        .unwrap();
    assert_eq!(receipt.attempts, 2);
    assert_eq!(api.tickets(&path).len(), 1);
}

fn mailbox_fields(user: &str, url: &str) -> serde_json::Value {
    serde_json::json!({"user": user, "account": "acct", "ticket_api_url": url})
}

#[tokio::test]
async fn mailbox_configs_load_from_the_state_table_and_a_bad_one_is_named() {
    let table = mailbridge_tests::create_state_table("poll").await.unwrap();
    let client = dynamodb();
    let url = "https://psa.example.com/api/tickets";
    let targets = mailbridge::mailbox::TargetPolicy::local()
        .with_sink_hosts(&["psa.example.com"])
        .unwrap();
    put_mailbox_config(
        &client,
        &table,
        "sales",
        &mailbox_fields("sales@example.com", url),
        &targets,
    )
    .await
    .unwrap();
    put_mailbox_config(
        &client,
        &table,
        "support",
        &mailbox_fields("support@example.com", url),
        &targets,
    )
    .await
    .unwrap();
    // An operator edits an item by hand and breaks it.
    client
        .update_item()
        .table_name(&table)
        .key(
            "pk",
            aws_sdk_dynamodb::types::AttributeValue::S("mailbox#support".into()),
        )
        .update_expression("SET #p = :p")
        .expression_attribute_names("#p", "port")
        .expression_attribute_values(
            ":p",
            aws_sdk_dynamodb::types::AttributeValue::S("imaps".into()),
        )
        .send()
        .await
        .unwrap();
    let err = put_mailbox_config(
        &client,
        &table,
        "bad",
        &serde_json::json!({"user": "x"}),
        &targets,
    )
    .await
    .unwrap_err();
    assert!(
        err.to_string().contains("mailbox bad: field `user`"),
        "{err}"
    );
    // A ticket API host off the allowlist is refused before anything is written.
    let err = put_mailbox_config(
        &client,
        &table,
        "elsewhere",
        &mailbox_fields("x@example.com", "https://collector.attacker.example/t"),
        &targets,
    )
    .await
    .unwrap_err();
    assert!(
        err.to_string().contains("\"collector.attacker.example\"")
            && err.to_string().contains("MAILBRIDGE_SINK_HOSTS"),
        "{err}"
    );
    // Read with a deployment that no longer allows psa.example.com: refused on read too.
    let strict = DynamoStateStore::new(client.clone(), &table)
        .with_targets(mailbridge::mailbox::TargetPolicy::from_lookup(|_| None).unwrap());
    let refused = strict
        .load_mailboxes(Some(&["sales".to_string()]))
        .await
        .unwrap();
    assert_eq!(refused[0].as_ref().unwrap_err().field, "sink.url");

    let store = DynamoStateStore::new(client.clone(), &table);
    let loaded = store.load_mailboxes(None).await.unwrap();
    assert_eq!(loaded.len(), 2, "nothing of `elsewhere` was stored");
    let sales = loaded[0].as_ref().unwrap();
    assert_eq!(sales.name, "sales");
    assert_eq!(sales.host, "outlook.office365.com");
    let support = loaded[1].as_ref().unwrap_err();
    assert_eq!(
        (support.mailbox.as_str(), support.field.as_str()),
        ("support", "port")
    );

    let named = store
        .load_mailboxes(Some(&["sales".to_string(), "ghost".to_string()]))
        .await
        .unwrap();
    assert!(named[0].is_ok());
    assert!(
        named[1]
            .as_ref()
            .unwrap_err()
            .to_string()
            .contains("mailbox#ghost")
    );

    mailbridge::state_table::delete_mailbox_config(&client, &table, "sales")
        .await
        .unwrap();
    assert_eq!(
        store.mailbox_names().await.unwrap(),
        vec!["support".to_string()]
    );
}

#[tokio::test]
async fn dedupe_and_status_records_round_trip_with_a_ttl() {
    let table = mailbridge_tests::create_state_table("poll").await.unwrap();
    let store = DynamoStateStore::new(dynamodb(), &table);
    let record = DedupeRecord {
        pk: "mail#m#abc".into(),
        ticket_id: Some("T-1".into()),
        message_id: None,
        uid_validity: 9,
        uid: 3,
        created_at: chrono::Utc::now().to_rfc3339(),
        expires_at: chrono::Utc::now().timestamp() + 3600,
    };
    assert!(store.get_dedupe(&record.pk).await.unwrap().is_none());
    store.put_dedupe(&record).await.unwrap();
    assert_eq!(store.get_dedupe(&record.pk).await.unwrap(), Some(record));
    let status = MailboxStatus {
        mailbox: "m".into(),
        outcome: mailbridge::state_table::MailboxOutcome::NeedsReauth,
        reason: Some("AADSTS70008".into()),
        last_run_at: chrono::Utc::now().to_rfc3339(),
        duration_ms: 1,
        tickets_created: 0,
        parked: 0,
        duplicates: 0,
        skipped_auto_generated: 0,
        held: 0,
        deferred: 0,
        uid_validity: None,
        imap_round_trips: 0,
        retry_last_uids: Vec::new(),
        last_success_at: Some("2026-11-27T23:55:00+00:00".into()),
        first_run_at: Some("2026-11-01T08:00:00+00:00".into()),
    };
    store.put_status(&status).await.unwrap();
    assert_eq!(store.get_status("m").await.unwrap(), Some(status));
}

// ---------------------------------------------------------------------------------------------
// The whole poller: Dovecot (XOAUTH2 via the identity stand-in), moto, ticket API stand-in, and
// the real token layer (account secrets in moto, tokens from the identity stand-in).

use std::sync::Arc;

use local_stack::dovecot::Dovecot;
use local_stack::identity::{AppRegistration, UserAccount};
use mailbridge::token::Audience;
use mailbridge::token::identity::{IdentityClient, default_retry_policy};
use mailbridge::token::secret::AccountSecret;
use mailbridge::token::service::{TokenService, TokenServiceConfig};
use mailbridge::token::store::SecretsManagerStore;
use mailbridge_tests::{put_secret, unique_user};
use poll_mailboxes::PollDeps;
use poll_mailboxes::convert::ParseContext;
use poll_mailboxes::imap_adapter::ImapConnector;
use poll_mailboxes::sinks::SecretsSinkFactory;
use secrecy::ExposeSecret as _;

const PASSWORD: &str = "correct horse battery staple";

fn identity_client() -> IdentityClient {
    IdentityClient::new(mailbridge::http::default_client().expect("http client")).with_retry_policy(
        RetryPolicy {
            initial_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_millis(400),
            ..default_retry_policy()
        },
    )
}

/// One tenant + app, a state table, a ticket sink path, and poller deps wired to `dovecot`.
struct Poller {
    tenant: String,
    client_id: String,
    table: String,
    sink: String,
    dovecot: Arc<Dovecot>,
    deps: PollDeps,
}

impl Poller {
    async fn new(dovecot: Arc<Dovecot>) -> Poller {
        Self::with_margin(dovecot, Duration::from_secs(2)).await
    }

    async fn with_margin(dovecot: Arc<Dovecot>, deadline_margin: Duration) -> Poller {
        let stack = stack();
        let idp = stack.identity();
        let tenant = format!("{}.onmicrosoft.com", unique("tenant"));
        let client_id = uuid::Uuid::new_v4().to_string();
        idp.register_app(AppRegistration::mailbridge(&tenant, &client_id));
        let table = mailbridge_tests::create_state_table("poll").await.unwrap();
        let aws = stack.moto().sdk_config();
        let tokens = TokenService::new(
            Arc::new(SecretsManagerStore::from_conf(&aws)),
            identity_client(),
            TokenServiceConfig {
                default_timeout: Duration::from_secs(10),
                ..TokenServiceConfig::default()
            },
        );
        let deps = PollDeps {
            tokens: Arc::new(tokens),
            connector: Arc::new(
                ImapConnector::new(Some(&dovecot.ca_pem_path), Duration::from_secs(10)).unwrap(),
            ),
            state: Arc::new(DynamoStateStore::new(dynamodb(), &table)),
            sinks: Arc::new(SecretsSinkFactory::new(
                reqwest::Client::new(),
                aws_sdk_secretsmanager::Client::new(&aws),
                fast_retry(),
            )),
            parse: ParseContext {
                thread_key: Some(b"poll-test-thread-key".to_vec()),
            },
            max_concurrent_mailboxes: 4,
            deadline_margin,
            dedupe_ttl: Duration::from_secs(86_400),
            targets: mailbridge::mailbox::TargetPolicy::local(),
            memory: std::sync::Arc::new(poll_mailboxes::memory::MemoryBudget::unlimited()),
        };
        Poller {
            tenant,
            client_id,
            table,
            sink: unique("sink"),
            dovecot,
            deps,
        }
    }

    fn account_secret(&self, upn: &str) -> AccountSecret {
        let mut a = AccountSecret::new(&self.tenant, &self.client_id, upn);
        a.authority_host = stack().identity().base_url.clone();
        a
    }

    /// A user with a password-only account secret (ROPC bootstrap); returns the account name.
    async fn account(&self, upn: &str) -> String {
        stack()
            .identity()
            .register_user(UserAccount::new(&self.tenant, upn, PASSWORD));
        let account = unique("acct");
        let mut secret = self.account_secret(upn);
        secret.password = Some(PASSWORD.into());
        put_secret(&format!("mailbridge/{account}"), &secret.to_json())
            .await
            .unwrap();
        account
    }

    /// A user whose secret holds only a refresh token (as after a device-code login).
    async fn account_with_refresh_token(&self, upn: &str) -> String {
        stack()
            .identity()
            .register_user(UserAccount::new(&self.tenant, upn, PASSWORD));
        let mut secret = self.account_secret(upn);
        let tokens = identity_client()
            .password(&secret, Audience::Imap, &PASSWORD.into())
            .await
            .expect("seed a refresh token");
        let refresh = tokens.refresh_token.expect("refresh token");
        secret.refresh_token = Some(refresh.expose_secret().to_string().into());
        secret.refresh_token_stored_at = Some(chrono::Utc::now());
        let account = unique("acct");
        put_secret(&format!("mailbridge/{account}"), &secret.to_json())
            .await
            .unwrap();
        account
    }

    async fn mailbox(&self, name: &str, user: &str, account: &str, extra: serde_json::Value) {
        let mut fields = serde_json::json!({
            "user": user,
            "account": account,
            "host": "localhost",
            "port": self.dovecot.imaps_port,
            "ticket_api_url": stack().tickets().sink_url(&self.sink),
        });
        for (k, v) in extra.as_object().unwrap() {
            if v.is_null() {
                fields.as_object_mut().unwrap().remove(k);
            } else {
                fields[k] = v.clone();
            }
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

    async fn poll(&self) -> poll_mailboxes::PollReport {
        self.poll_until(Instant::now() + Duration::from_secs(60))
            .await
    }

    async fn poll_until(&self, deadline: Instant) -> poll_mailboxes::PollReport {
        poll_mailboxes::poll_once(&self.deps, None, deadline)
            .await
            .unwrap()
    }

    fn tickets(&self) -> Vec<local_stack::ticket_api::RecordedTicket> {
        stack().tickets().tickets(&self.sink)
    }

    /// The number of mails in `user`'s `folder`; a failing `doveadm` (a folder that does not
    /// exist, a broken instance) fails the test instead of reading as 0.
    fn count(&self, user: &str, folder: &str) -> usize {
        self.dovecot
            .list_messages(user, folder)
            .unwrap_or_else(|e| panic!("count the mail in {user}/{folder}: {e:#}"))
            .len()
    }

    fn deliver(&self, user: &str, raw: &[u8]) {
        self.dovecot.deliver_to(user, "INBOX", raw).unwrap();
    }
}

fn mail(id: &str, subject: &str, body: &str) -> Vec<u8> {
    format!(
        "From: Ann Example <ann@customer.example>\r\nTo: helpdesk@example.com\r\nSubject: {subject}\r\n\
         Date: Sat, 28 Nov 2026 10:00:00 +0000\r\nMessage-ID: <{id}@customer.example>\r\n\
         MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n{body}\r\n"
    )
    .into_bytes()
}

fn status<'a>(report: &'a poll_mailboxes::PollReport, name: &str) -> &'a MailboxStatus {
    report
        .mailboxes
        .iter()
        .find(|s| s.mailbox == name)
        .unwrap_or_else(|| panic!("no status for {name}: {report:?}"))
}

/// A flood (or a mail loop) from one address: past `max_mails_per_sender_per_hour` its mail is
/// held in a folder of its own, unticketed, counted in the status; other senders' mail and mail
/// already counted go on; nothing is deleted, and a held mail moved back is posted.
#[tokio::test]
async fn a_flood_from_one_sender_is_held_past_its_hourly_quota_and_nothing_is_lost() {
    // The quota counts per clock hour: start well inside one so both polls share it.
    let into_hour = chrono::Utc::now().timestamp() % 3600;
    if into_hour > 3600 - 90 {
        tokio::time::sleep(Duration::from_secs((3600 - into_hour + 1) as u64)).await;
    }
    let p = Poller::new(stack().dovecot().clone()).await;
    let user = unique_user("flooded");
    let account = p.account(&user).await;
    p.mailbox(
        "flooded",
        &user,
        &account,
        serde_json::json!({"max_mails_per_sender_per_hour": 3}),
    )
    .await;
    for i in 0..5 {
        p.deliver(
            &user,
            &mail(&format!("flood-{i}"), &format!("Flood {i}"), "x"),
        );
    }
    let other = "From: Bob <bob@customer.example>\r\nTo: helpdesk@example.com\r\nSubject: Real problem\r\n\
         Message-ID: <real@customer.example>\r\n\r\nHelp.\r\n";
    p.deliver(&user, other.as_bytes());

    let report = p.poll().await;
    let flooded = status(&report, "flooded");
    assert_eq!(
        flooded.outcome,
        mailbridge::state_table::MailboxOutcome::Ok,
        "{report:?}"
    );
    assert_eq!(
        (flooded.tickets_created, flooded.held),
        (4, 2),
        "{flooded:?}"
    );
    assert_eq!(report.held, 2);
    let senders: Vec<String> = p
        .tickets()
        .iter()
        .map(|t| {
            t.body["draft"]["from"]["address"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(
        senders
            .iter()
            .filter(|s| *s == "ann@customer.example")
            .count(),
        3
    );
    assert!(senders.contains(&"bob@customer.example".to_string()));
    assert_eq!(p.count(&user, "INBOX"), 0);
    assert_eq!(p.count(&user, "mailbridge-held"), 2, "held, not lost");

    // Still over the quota this hour: more from the same sender is held too, with no ticket.
    p.deliver(&user, &mail("flood-5", "Flood 5", "x"));
    let again = p.poll().await;
    assert_eq!(status(&again, "flooded").held, 1, "{again:?}");
    assert_eq!(p.tickets().len(), 4);
    assert_eq!(p.count(&user, "mailbridge-held"), 3);
}

/// Tickets of different conversations are posted side by side, those of one conversation one
/// after the other in the order of arrival: a reply that arrives right after its original is
/// posted only once the original's ticket was made (so the helpdesk threads it into that ticket
/// instead of opening a new one), however slow the original's POST, while unrelated mail is
/// not held back by it.
#[tokio::test]
async fn a_reply_right_after_its_original_is_posted_after_the_originals_ticket() {
    let p = Poller::new(stack().dovecot().clone()).await;
    let user = unique_user("order");
    let account = p.account(&user).await;
    p.mailbox(
        "order",
        &user,
        &account,
        serde_json::json!({"max_mails_per_sender_per_hour": 0}),
    )
    .await;
    // The run posts one ticket alone until the API took one: a quick one first.
    p.deliver(&user, &mail("other-0", "Other 0", "quick"));
    p.deliver(&user, &mail("original", "Printer on fire", "SLOW-TO-POST"));
    let reply = String::from_utf8(mail("reply", "Re: Printer on fire", "It is out now."))
        .unwrap()
        .replace(
            "MIME-Version",
            "In-Reply-To: <original@customer.example>\r\nReferences: <original@customer.example>\r\nMIME-Version",
        );
    p.deliver(&user, reply.as_bytes());
    for i in 1..3 {
        p.deliver(
            &user,
            &mail(&format!("other-{i}"), &format!("Other {i}"), "quick"),
        );
    }
    stack().tickets().slow_payloads_containing(
        &p.sink,
        "SLOW-TO-POST",
        Duration::from_millis(1500),
    );
    let report = p.poll().await;
    let s = status(&report, "order");
    assert_eq!((s.outcome.as_str(), s.tickets_created), ("ok", 5), "{s:?}");
    let ticketed: Vec<String> = p
        .tickets()
        .iter()
        .map(|t| t.body["draft"]["subject"].as_str().unwrap().to_owned())
        .collect();
    let at = |subject: &str| ticketed.iter().position(|t| t == subject).unwrap();
    assert!(
        at("Printer on fire") < at("Re: Printer on fire"),
        "the reply was posted before its original's ticket was made: {ticketed:?}"
    );
    assert!(
        at("Other 1") < at("Printer on fire") && at("Other 2") < at("Printer on fire"),
        "unrelated mail waited for a slow POST of another conversation: {ticketed:?}"
    );
    assert_eq!(
        (p.count(&user, "INBOX"), p.count(&user, "Processed")),
        (0, 5)
    );
}

/// `since`: mail received before it is left untouched, to the second (IMAP's SINCE is by the
/// day, so a mail earlier on the same day is found by the search and must still be left).
#[tokio::test]
async fn mail_received_before_since_is_left_untouched() {
    let p = Poller::new(stack().dovecot().clone()).await;
    let user = unique_user("since");
    let account = p.account(&user).await;
    let now = chrono::Utc::now();
    let since = now - chrono::Duration::minutes(30);
    p.mailbox(
        "since",
        &user,
        &account,
        serde_json::json!({"since": since.to_rfc3339()}),
    )
    .await;
    let dovecot = &p.dovecot;
    dovecot
        .deliver_received_at(
            &user,
            &mail("last-week", "Old backlog", "Dealt with long ago."),
            now - chrono::Duration::days(7),
        )
        .unwrap();
    dovecot
        .deliver_received_at(
            &user,
            &mail("this-morning", "Just before", "Dealt with already."),
            since - chrono::Duration::seconds(5),
        )
        .unwrap();
    p.deliver(&user, &mail("new", "New request", "Please help."));

    let report = p.poll().await;
    let s = status(&report, "since");
    assert_eq!((s.outcome.as_str(), s.tickets_created), ("ok", 1), "{s:?}");
    let subjects: Vec<_> = p
        .tickets()
        .iter()
        .map(|t| t.body["draft"]["subject"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(subjects, ["New request"]);
    let left = p.dovecot.list_messages(&user, "INBOX").unwrap();
    assert_eq!(left.len(), 2, "the older mail stays in the folder");
    assert!(left.iter().all(|m| !m.is_seen()), "and is not even read");
    // And stays so run after run.
    let again = p.poll().await;
    assert_eq!(again.tickets_created, 0);
    assert_eq!(p.count(&user, "INBOX"), 2);
}

#[tokio::test]
async fn mail_delivered_into_dovecot_becomes_exactly_one_ticket_and_is_moved() {
    let p = Poller::new(stack().dovecot().clone()).await;
    let user = unique_user("helpdesk");
    let account = p.account(&user).await;
    p.mailbox("helpdesk", &user, &account, serde_json::json!({}))
        .await;
    let attachment_mail = format!(
        "From: Bob <bob@customer.example>\r\nTo: {user}\r\nSubject: Scanner report\r\nMessage-ID: <att@customer.example>\r\n\
         MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\n\
         See attached.\r\n--b\r\nContent-Type: application/pdf; name=\"r.pdf\"\r\nContent-Disposition: attachment; filename=\"r.pdf\"\r\n\
         Content-Transfer-Encoding: base64\r\n\r\nJVBERi0xLjQK\r\n--b--\r\n"
    );
    let delivered_from = chrono::Utc::now().timestamp();
    p.deliver(&user, &mail("one", "Printer on fire", "Please help."));
    p.deliver(&user, attachment_mail.as_bytes());
    let delivered_until = chrono::Utc::now().timestamp();
    // Polled well after delivery: `received_at` must be Dovecot's INTERNALDATE (the delivery,
    // whole seconds), not the poll time.
    tokio::time::sleep(Duration::from_millis(2100)).await;

    let report = p.poll().await;
    assert_eq!(
        status(&report, "helpdesk").outcome,
        mailbridge::state_table::MailboxOutcome::Ok,
        "{report:?}"
    );
    assert_eq!(report.tickets_created, 2);
    let tickets = p.tickets();
    assert_eq!(tickets.len(), 2);
    let first = &tickets[0].body;
    let received_at = chrono::DateTime::parse_from_rfc3339(first["received_at"].as_str().unwrap())
        .unwrap()
        .timestamp();
    assert!(
        (delivered_from..=delivered_until).contains(&received_at),
        "received_at {} is not the delivery time ({delivered_from}..={delivered_until})",
        first["received_at"]
    );
    assert_eq!(first["schema"], "mailbridge.ticket-payload/1");
    assert_eq!(first["mailbox"], "helpdesk");
    assert_eq!(first["draft"]["subject"], "Printer on fire");
    assert_eq!(first["draft"]["from"]["address"], "ann@customer.example");
    assert_eq!(
        tickets[0].idempotency_key,
        first["idempotency_key"].as_str().unwrap()
    );
    let attachment = &tickets[1].body["attachments"][0];
    assert_eq!(attachment["filename"], "r.pdf");
    assert_eq!(attachment["content_base64"], "JVBERi0xLjQK");

    assert_eq!(p.count(&user, "INBOX"), 0);
    let processed = p.dovecot.list_messages(&user, "Processed").unwrap();
    assert_eq!(processed.len(), 2);
    assert!(
        processed.iter().all(|m| !m.is_seen()),
        "BODY.PEEK[] must not set \\Seen"
    );
    let again = p.poll().await;
    assert_eq!(again.tickets_created, 0);
    assert_eq!(p.tickets().len(), 2);
    let stored = DynamoStateStore::new(dynamodb(), &p.table)
        .get_status("helpdesk")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.outcome, mailbridge::state_table::MailboxOutcome::Ok);
    assert!(stored.uid_validity.is_some());
}

fn corpus_mail(name: &str) -> Vec<u8> {
    let path = local_stack::repo_root()
        .join("tests/fixtures/mail")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// An Outlook `winmail.dat` (TNEF) reaches the ticket API as the files inside
/// it, each with its bytes; a TNEF that cannot be fully expanded is posted as the winmail.dat
/// itself, byte for byte.
#[tokio::test]
async fn winmail_dat_reaches_the_ticket_api_as_the_files_inside_it() {
    use base64::Engine as _;
    let p = Poller::new(stack().dovecot().clone()).await;
    let user = unique_user("helpdesk");
    let account = p.account(&user).await;
    p.mailbox("helpdesk", &user, &account, serde_json::json!({}))
        .await;
    p.deliver(&user, &corpus_mail("401-tnef-outlook-two-files.eml"));
    p.deliver(&user, &corpus_mail("404-tnef-garbage-at-end-kept.eml"));

    let report = p.poll().await;
    assert_eq!(
        status(&report, "helpdesk").outcome,
        mailbridge::state_table::MailboxOutcome::Ok,
        "{report:?}"
    );
    assert_eq!(report.tickets_created, 2, "{report:?}");
    let tickets = p.tickets();
    let by_subject = |subject: &str| {
        tickets
            .iter()
            .find(|t| t.body["draft"]["subject"] == subject)
            .unwrap_or_else(|| panic!("no ticket {subject:?}"))
            .body
            .clone()
    };
    let decode = |a: &serde_json::Value| {
        base64::engine::general_purpose::STANDARD
            .decode(a["content_base64"].as_str().expect("content posted"))
            .unwrap()
    };
    let expanded = by_subject("Printer log files attached");
    let files = expanded["attachments"].as_array().unwrap();
    let names: Vec<&str> = files
        .iter()
        .map(|a| a["filename"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["AUTHORS", "README"]);
    assert_eq!(decode(&files[0]).len(), 244);
    assert!(decode(&files[0]).starts_with(b"\n                              Authors of tnef"));
    assert_eq!(decode(&files[1]).len(), 893);
    assert_eq!(
        expanded["draft"]["attachments"].as_array().unwrap().len(),
        2
    );

    let kept = by_subject("Winmail with trailing garbage");
    let files = kept["attachments"].as_array().unwrap();
    assert_eq!(files.len(), 1);
    assert_eq!(files[0]["filename"], "winmail.dat");
    assert_eq!(files[0]["content_type"], "application/ms-tnef");
    let raw =
        std::fs::read(local_stack::repo_root().join("tests/fixtures/tnef/garbage-at-end.tnef"))
            .unwrap();
    assert_eq!(decode(&files[0]), raw);
}

/// Auto-replies, bounces and list mail never open a ticket. Machine mail that threads
/// to a ticket is posted to it (flagged `auto_generated`); the rest is moved, unticketed, to the
/// auto-generated folder and counted. Nothing is deleted, nothing is sent.
#[tokio::test]
async fn machine_mail_never_opens_a_ticket_and_threaded_machine_mail_reaches_its_ticket() {
    let p = Poller::new(stack().dovecot().clone()).await;
    let user = unique_user("helpdesk");
    let account = p.account(&user).await;
    // `delete` after-action: machine mail must still be moved, never deleted.
    p.mailbox(
        "helpdesk",
        &user,
        &account,
        serde_json::json!({"after_action": "delete"}),
    )
    .await;
    // Threaded (by the subject's ticket number, or the NDR's returned Message-ID): posted.
    p.deliver(&user, &corpus_mail("305-gmail-vacation-responder.eml"));
    p.deliver(&user, &corpus_mail("307-office365-ndr-bounce.eml"));
    // Unthreaded: set aside.
    p.deliver(&user, &corpus_mail("306-autoresponder-ticket-receipt.eml"));
    p.deliver(&user, &corpus_mail("317-mailing-list-post.eml"));
    p.deliver(&user, &corpus_mail("229-sisimai-lhost-postfix-14.eml"));
    // A person.
    p.deliver(&user, &mail("human", "Printer on fire", "Please help."));

    let report = p.poll().await;
    let s = status(&report, "helpdesk");
    assert_eq!(
        s.outcome,
        mailbridge::state_table::MailboxOutcome::Ok,
        "{report:?}"
    );
    assert_eq!(report.tickets_created, 3, "{report:?}");
    assert_eq!(report.skipped_auto_generated, 3, "{report:?}");
    assert_eq!(s.skipped_auto_generated, 3);
    let tickets = p.tickets();
    assert_eq!(tickets.len(), 3);
    let mut threaded: Vec<(String, bool)> = tickets
        .iter()
        .map(|t| {
            (
                // the signed layers' number, else the subject's (kept apart)
                t.body["draft"]["ticket_number"]
                    .as_str()
                    .or(t.body["draft"]["subject_ticket_number"].as_str())
                    .unwrap_or("-")
                    .to_string(),
                t.body["draft"]["auto_generated"].as_bool().unwrap(),
            )
        })
        .collect();
    threaded.sort();
    assert_eq!(
        threaded,
        [
            ("-".to_string(), false),
            ("3100".to_string(), true),
            ("4711".to_string(), true)
        ]
    );
    // Nothing lost: the three set-aside mails are in the folder, the rest deleted after their
    // tickets, nothing left in INBOX.
    assert_eq!(p.count(&user, "INBOX"), 0);
    assert_eq!(p.count(&user, "mailbridge-auto-generated"), 3);
    let stored = DynamoStateStore::new(dynamodb(), &p.table)
        .get_status("helpdesk")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.skipped_auto_generated, 3);
    // A second run: nothing new.
    let again = p.poll().await;
    assert_eq!(again.tickets_created + again.skipped_auto_generated, 0);
    assert_eq!(p.tickets().len(), 3);
}

/// A helpdesk address that is itself a list or group (a Google Group relaying customer mail with
/// `List-Id`): by default its list mail is set aside like a newsletter; with `list_mail: ticket`
/// it opens tickets, while an out-of-office relayed through the same group is still set aside.
#[tokio::test]
async fn list_mail_opens_tickets_only_on_a_mailbox_with_list_mail_ticket() {
    let p = Poller::new(stack().dovecot().clone()).await;
    let group_post = |user: &str| {
        format!(
            "From: Dana Customer <dana@customer.example>\r\nTo: {user}\r\nSubject: VPN drops every hour\r\nMessage-ID: <{}@customer.example>\r\nList-Id: <support.contoso.example>\r\nPrecedence: list\r\nMailing-list: list {user}; contact support+owners@contoso.example\r\nList-Unsubscribe: <mailto:support+unsubscribe@contoso.example>\r\n\r\nSince Monday the VPN drops every hour.\r\n",
            unique("group-post")
        )
        .into_bytes()
    };
    let relayed_ooo = |user: &str| {
        format!(
            "From: Bob Away <bob@customer.example>\r\nTo: {user}\r\nSubject: Automatic reply: VPN drops every hour\r\nMessage-ID: <{}@customer.example>\r\nAuto-Submitted: auto-replied\r\nList-Id: <support.contoso.example>\r\n\r\nI am away until Monday.\r\n",
            unique("ooo")
        )
        .into_bytes()
    };
    let mut users = Vec::new();
    for (name, setting) in [("group-default", None), ("group-ticket", Some("ticket"))] {
        let user = unique_user(name);
        let account = p.account(&user).await;
        let extra = match setting {
            Some(value) => serde_json::json!({ "list_mail": value }),
            None => serde_json::json!({}),
        };
        p.mailbox(name, &user, &account, extra).await;
        p.deliver(&user, &group_post(&user));
        p.deliver(&user, &corpus_mail("317-mailing-list-post.eml"));
        p.deliver(&user, &relayed_ooo(&user));
        users.push(user);
    }
    let report = p.poll().await;
    let default = status(&report, "group-default");
    assert_eq!(
        default.outcome,
        mailbridge::state_table::MailboxOutcome::Ok,
        "{report:?}"
    );
    assert_eq!(
        (default.tickets_created, default.skipped_auto_generated),
        (0, 3),
        "{default:?}"
    );
    assert_eq!(p.count(&users[0], "mailbridge-auto-generated"), 3);
    let ticket = status(&report, "group-ticket");
    assert_eq!(
        ticket.outcome,
        mailbridge::state_table::MailboxOutcome::Ok,
        "{report:?}"
    );
    assert_eq!(
        (ticket.tickets_created, ticket.skipped_auto_generated),
        (2, 1),
        "the relayed out-of-office is still set aside: {ticket:?}"
    );
    assert_eq!(p.count(&users[1], "mailbridge-auto-generated"), 1);
    assert_eq!(p.count(&users[1], "Processed"), 2);
    assert_eq!(p.count(&users[1], "INBOX"), 0);
    let mut tickets: Vec<_> = p
        .tickets()
        .iter()
        .map(|t| {
            assert_eq!(t.body["mailbox"], "group-ticket");
            assert_eq!(
                t.body["draft"]["auto_generated"], true,
                "the helpdesk can tell"
            );
            (
                t.body["draft"]["subject"].as_str().unwrap().to_string(),
                t.body["draft"]["auto_reason"]
                    .as_str()
                    .unwrap()
                    .split(':')
                    .next()
                    .unwrap()
                    .to_string(),
            )
        })
        .collect();
    tickets.sort();
    assert_eq!(
        tickets,
        [
            (
                "VPN drops every hour".to_string(),
                "mailing_list".to_string()
            ),
            (
                "[vendor-announce] Security update 4.2.1 released".to_string(),
                "mailing_list".to_string()
            ),
        ]
    );
    let again = p.poll().await;
    assert_eq!(again.tickets_created + again.skipped_auto_generated, 0);
}

/// `mark_seen` polls only unseen mail: a mail a person read before the first run is never
/// ticketed, and the next run does not even fetch the mail it marked (no duplicates counted).
/// `delete` expunges the mail: it is in no folder afterwards (a move would leave it in one).
#[tokio::test]
async fn mark_seen_and_delete_after_actions() {
    let p = Poller::new(stack().dovecot().clone()).await;
    let seen_user = unique_user("seen");
    let gone_user = unique_user("gone");
    let a = p.account(&seen_user).await;
    let b = p.account(&gone_user).await;
    p.mailbox(
        "seen",
        &seen_user,
        &a,
        serde_json::json!({"after_action": "mark_seen"}),
    )
    .await;
    p.mailbox(
        "gone",
        &gone_user,
        &b,
        serde_json::json!({"after_action": "delete"}),
    )
    .await;
    p.deliver(&seen_user, &mail("s0", "Already read", "x"));
    let read_uid = p.dovecot.list_messages(&seen_user, "INBOX").unwrap()[0].uid;
    p.dovecot
        .add_flags(&seen_user, "INBOX", read_uid, "\\Seen")
        .unwrap();
    p.deliver(&seen_user, &mail("s1", "Seen me", "x"));
    p.deliver(&gone_user, &mail("d1", "Delete me", "x"));
    let first = p.poll().await;
    assert_eq!(status(&first, "seen").tickets_created, 1, "{first:?}");
    assert_eq!(status(&first, "gone").tickets_created, 1, "{first:?}");
    let second = p.poll().await;
    let seen = status(&second, "seen");
    assert_eq!(
        (seen.tickets_created, seen.duplicates),
        (0, 0),
        "the second run must not fetch the mail the first one marked: {seen:?}"
    );
    let mut subjects: Vec<String> = p
        .tickets()
        .iter()
        .map(|t| t.body["draft"]["subject"].as_str().unwrap().to_string())
        .collect();
    subjects.sort();
    assert_eq!(subjects, ["Delete me", "Seen me"]);
    let inbox = p.dovecot.list_messages(&seen_user, "INBOX").unwrap();
    assert_eq!(inbox.len(), 2, "mark_seen leaves the mail in place");
    assert!(inbox.iter().all(|m| m.is_seen()), "{inbox:?}");
    assert_eq!(p.count(&gone_user, "INBOX"), 0);
    let folders = p.dovecot.folders(&gone_user).unwrap();
    for folder in &folders {
        assert_eq!(
            p.count(&gone_user, folder),
            0,
            "a deleted mail is in no folder, but {folder} holds one (of {folders:?})"
        );
    }
}

/// What Dovecot 2.3 advertises after login, without `MOVE`.
const DOVECOT_CAPABILITY_WITHOUT_MOVE: &str = "IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE IDLE \
    SORT SORT=DISPLAY THREAD=REFERENCES THREAD=REFS THREAD=ORDEREDSUBJECT MULTIAPPEND URL-PARTIAL \
    CATENATE UNSELECT CHILDREN NAMESPACE UIDPLUS LIST-EXTENDED I18NLEVEL=1 CONDSTORE QRESYNC \
    ESEARCH ESORT SEARCHRES WITHIN CONTEXT=SEARCH LIST-STATUS BINARY SNIPPET=FUZZY SPECIAL-USE";

/// Servers without `MOVE`: `UID COPY` + `\Deleted` + `UID EXPUNGE`, which leaves mail that a
/// person flagged `\Deleted` where it is. Run on a Dovecot whose CAPABILITY leaves out `MOVE`;
/// the same mails on the shared Dovecot (which has `MOVE`) take two IMAP commands fewer per mail,
/// so the test also fails if the fallback is not what ran.
#[tokio::test]
async fn without_move_the_poller_copies_and_expunges_only_its_own_mail() {
    let no_move = Arc::new(
        local_stack::dovecot::Dovecot::start_with_settings(
            &local_stack::default_run_dir("no-move").unwrap(),
            &stack().identity().introspection_url(),
            &format!("imap_capability = {DOVECOT_CAPABILITY_WITHOUT_MOVE}\n"),
        )
        .await
        .unwrap(),
    );
    let mut round_trips = Vec::new();
    for dovecot in [no_move.clone(), stack().dovecot().clone()] {
        let p = Poller::new(dovecot).await;
        let user = unique_user("nomove");
        let account = p.account(&user).await;
        p.mailbox("nomove", &user, &account, serde_json::json!({}))
            .await;
        p.dovecot.create_folder(&user, "Processed").unwrap();
        // A mail a person deleted but did not expunge: a plain EXPUNGE would remove it too.
        p.deliver(&user, &mail("kept", "Deleted by a person", "x"));
        let kept_uid = p.dovecot.list_messages(&user, "INBOX").unwrap()[0].uid;
        p.dovecot
            .add_flags(&user, "INBOX", kept_uid, "\\Deleted")
            .unwrap();
        for n in 0..3 {
            p.deliver(&user, &mail(&format!("m{n}"), &format!("Mail {n}"), "x"));
        }
        let report = p.poll().await;
        let s = status(&report, "nomove");
        assert_eq!((s.outcome.as_str(), s.tickets_created), ("ok", 3), "{s:?}");
        assert_eq!(p.count(&user, "Processed"), 3);
        let inbox = p.dovecot.list_messages(&user, "INBOX").unwrap();
        assert_eq!(
            inbox.iter().map(|m| m.uid).collect::<Vec<_>>(),
            [kept_uid],
            "only the person's deleted mail is left, still there"
        );
        round_trips.push(s.imap_round_trips);
    }
    assert_eq!(
        round_trips[0],
        round_trips[1] + 2,
        "without MOVE the window's mails take one UID COPY, UID STORE and UID EXPUNGE (of their \
         set) instead of one UID MOVE (no MOVE, MOVE): {round_trips:?}"
    );
}

#[tokio::test]
async fn ticket_api_down_for_one_run_then_the_ticket_is_created_next_run() {
    let p = Poller::new(stack().dovecot().clone()).await;
    let user = unique_user("down");
    let account = p.account(&user).await;
    p.mailbox("down", &user, &account, serde_json::json!({}))
        .await;
    p.deliver(&user, &mail("d1", "First", "x"));
    p.deliver(&user, &mail("d2", "Second", "y"));
    stack().tickets().set_down(&p.sink, true);
    let report = p.poll_until(Instant::now() + Duration::from_secs(8)).await;
    let s = status(&report, "down");
    assert_eq!(
        s.outcome,
        mailbridge::state_table::MailboxOutcome::Partial,
        "{s:?}"
    );
    assert_eq!(s.deferred, 2);
    assert_eq!(
        p.count(&user, "INBOX"),
        2,
        "nothing moved while the API is down"
    );
    stack().tickets().set_down(&p.sink, false);
    let report = p.poll().await;
    assert_eq!(report.tickets_created, 2);
    assert_eq!(p.tickets().len(), 2);
    assert_eq!(p.count(&user, "Processed"), 2);
    assert_eq!(p.poll().await.tickets_created, 0);
}

#[tokio::test]
async fn reused_message_id_makes_two_tickets_and_the_same_mail_twice_makes_one() {
    let p = Poller::new(stack().dovecot().clone()).await;
    let user = unique_user("dupes");
    let account = p.account(&user).await;
    p.mailbox("dupes", &user, &account, serde_json::json!({}))
        .await;
    p.deliver(&user, &mail("reused", "Alarm", "disk full on srv1"));
    p.deliver(&user, &mail("reused", "Alarm", "disk full on srv2"));
    p.deliver(&user, &mail("twice", "Same", "identical"));
    let report = p.poll().await;
    assert_eq!(report.tickets_created, 3);
    // the same mail arrives again later (e.g. a re-sent copy)
    p.deliver(&user, &mail("twice", "Same", "identical"));
    let report = p.poll().await;
    assert_eq!(report.tickets_created, 0);
    assert_eq!(status(&report, "dupes").duplicates, 1);
    assert_eq!(p.tickets().len(), 3);
    assert_eq!(p.count(&user, "Processed"), 4);
}

#[tokio::test]
async fn malformed_and_oversize_mail_are_parked_with_a_ticket_and_a_note() {
    let p = Poller::new(stack().dovecot().clone()).await;
    let user = unique_user("poison");
    let account = p.account(&user).await;
    p.mailbox(
        "poison",
        &user,
        &account,
        serde_json::json!({"max_message_bytes": 8192}),
    )
    .await;
    p.deliver(
        &user,
        b"\x00\x01\x02 this is not a mail at all\r\n\r\n\xff\xfe",
    );
    let mut big = mail("big", "Huge log", "");
    big.extend(std::iter::repeat_n(b'A', 20_000));
    p.deliver(&user, &big);
    p.deliver(&user, &mail("fine", "Fine", "ok"));
    let report = p.poll().await;
    let s = status(&report, "poison");
    assert_eq!((s.parked, s.tickets_created), (2, 1), "{s:?}");
    assert_eq!(p.count(&user, "mailbridge-failed"), 2);
    assert_eq!(p.count(&user, "Processed"), 1);
    let tickets = p.tickets();
    let garbage = tickets
        .iter()
        .find(|t| !t.body["raw_message_base64"].is_null())
        .expect("the unparseable mail's ticket carries the raw mail");
    assert!(
        garbage.body["problem"]
            .as_str()
            .unwrap()
            .contains("could not parse")
    );
    let oversize = tickets
        .iter()
        .find(|t| t.body["draft"]["subject"] == "Huge log")
        .unwrap();
    assert!(
        oversize.body["problem"]
            .as_str()
            .unwrap()
            .contains("over the 8192-byte limit")
    );
    assert!(oversize.body["raw_message_base64"].is_null());
}

#[tokio::test]
async fn a_revoked_grant_is_a_clear_per_mailbox_error_and_other_mailboxes_are_polled() {
    let p = Poller::new(stack().dovecot().clone()).await;
    let revoked_user = unique_user("revoked");
    let good_user = unique_user("good");
    let revoked = p.account_with_refresh_token(&revoked_user).await;
    let good = p.account(&good_user).await;
    p.mailbox("revoked", &revoked_user, &revoked, serde_json::json!({}))
        .await;
    p.mailbox("good", &good_user, &good, serde_json::json!({}))
        .await;
    // a mailbox whose configuration an operator broke
    dynamodb()
        .put_item()
        .table_name(&p.table)
        .item(
            "pk",
            aws_sdk_dynamodb::types::AttributeValue::S("mailbox#broken".into()),
        )
        .item(
            "user",
            aws_sdk_dynamodb::types::AttributeValue::S("broken".into()),
        )
        .send()
        .await
        .unwrap();
    dynamodb()
        .update_item()
        .table_name(&p.table)
        .key(
            "pk",
            aws_sdk_dynamodb::types::AttributeValue::S("mailbox-index".into()),
        )
        .update_expression("ADD #n :n")
        .expression_attribute_names("#n", "names")
        .expression_attribute_values(
            ":n",
            aws_sdk_dynamodb::types::AttributeValue::Ss(vec!["broken".into()]),
        )
        .send()
        .await
        .unwrap();
    stack()
        .identity()
        .revoke_refresh_tokens(&revoked_user)
        .unwrap();
    p.deliver(&revoked_user, &mail("r1", "Waiting", "x"));
    p.deliver(&good_user, &mail("g1", "Fine", "x"));

    let report = p.poll().await;
    let r = status(&report, "revoked");
    assert_eq!(
        r.outcome,
        mailbridge::state_table::MailboxOutcome::NeedsReauth,
        "{r:?}"
    );
    assert!(r.reason.as_deref().unwrap().contains(&revoked), "{r:?}");
    assert_eq!(
        status(&report, "broken").outcome,
        mailbridge::state_table::MailboxOutcome::ConfigError
    );
    assert!(
        status(&report, "broken")
            .reason
            .as_deref()
            .unwrap()
            .contains("field `user`")
    );
    assert_eq!(
        status(&report, "good").outcome,
        mailbridge::state_table::MailboxOutcome::Ok
    );
    assert_eq!(report.tickets_created, 1);
    assert_eq!(report.accounts_need_reauth, 1);
    assert_eq!(report.mailboxes_failed, 2);
    assert_eq!(
        p.count(&revoked_user, "INBOX"),
        1,
        "the mail waits for re-consent"
    );
}

#[tokio::test]
async fn a_stuck_mailbox_keeps_its_last_success_and_ages_the_heartbeat() {
    let p = Poller::new(stack().dovecot().clone()).await;
    let steady_user = unique_user("steady");
    let stuck_user = unique_user("stuck");
    let steady = p.account(&steady_user).await;
    let stuck = p.account(&stuck_user).await;
    // the stuck mailbox posts to a ticket API of its own, which goes down after the first run
    let stuck_sink = unique("stuck-sink");
    p.mailbox("steady", &steady_user, &steady, serde_json::json!({}))
        .await;
    p.mailbox(
        "stuck",
        &stuck_user,
        &stuck,
        serde_json::json!({"ticket_api_url": stack().tickets().sink_url(&stuck_sink)}),
    )
    .await;
    p.deliver(&stuck_user, &mail("st1", "Before the outage", "x"));

    let first = p.poll().await;
    let stuck_first = status(&first, "stuck").clone();
    assert_eq!(
        stuck_first.outcome,
        mailbridge::state_table::MailboxOutcome::Ok,
        "{stuck_first:?}"
    );
    assert_eq!(
        stuck_first.last_success_at.as_deref(),
        Some(stuck_first.last_run_at.as_str()),
        "a successful run is its own last success"
    );
    assert_eq!(
        stuck_first.first_run_at.as_deref(),
        Some(stuck_first.last_run_at.as_str())
    );

    // Whole seconds apart, so an age measured from the wrong run shows.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    stack().tickets().set_down(&stuck_sink, true);
    p.deliver(&stuck_user, &mail("st2", "During the outage", "y"));
    let second = p.poll().await;
    stack().tickets().set_down(&stuck_sink, false);
    let stuck_second = status(&second, "stuck");
    assert_eq!(
        stuck_second.outcome,
        mailbridge::state_table::MailboxOutcome::Partial,
        "{stuck_second:?}"
    );
    assert_eq!(
        stuck_second.last_success_at, stuck_first.last_success_at,
        "a run whose mail the ticket API did not take is no success: {stuck_second:?}"
    );
    assert_eq!(stuck_second.first_run_at, stuck_first.first_run_at);
    let steady_second = status(&second, "steady");
    assert_eq!(
        steady_second.last_success_at.as_deref(),
        Some(steady_second.last_run_at.as_str())
    );
    // the heartbeat is the stuck mailbox's age, not the steady one's
    let since_first = (chrono::Utc::now()
        - chrono::DateTime::parse_from_rfc3339(&stuck_first.last_run_at)
            .unwrap()
            .with_timezone(&chrono::Utc))
    .num_seconds() as u64;
    assert!(
        second.oldest_success_age_seconds >= 2 && second.oldest_success_age_seconds <= since_first,
        "heartbeat {} s, the stuck mailbox last succeeded {since_first} s ago",
        second.oldest_success_age_seconds
    );
    // what `mailbridge status` reads: the table has it too
    let stored = DynamoStateStore::new(dynamodb(), &p.table)
        .get_status("stuck")
        .await
        .unwrap()
        .expect("status written");
    assert_eq!(stored.last_success_at, stuck_first.last_success_at);

    // back up: the next run succeeds and the mail is ticketed
    let third = p.poll().await;
    let stuck_third = status(&third, "stuck");
    assert_eq!(
        stuck_third.outcome,
        mailbridge::state_table::MailboxOutcome::Ok,
        "{stuck_third:?}"
    );
    assert_eq!(
        stuck_third.last_success_at.as_deref(),
        Some(stuck_third.last_run_at.as_str())
    );
    assert_eq!(stack().tickets().tickets(&stuck_sink).len(), 2);
}

#[tokio::test]
async fn access_revoked_at_the_imap_server_is_authenticate_failed_for_that_mailbox() {
    let p = Poller::new(stack().dovecot().clone()).await;
    let user = unique_user("denied");
    let account = p.account(&user).await;
    // The account logs in as a shared mailbox it was never granted.
    let shared = unique_user("not-granted");
    p.mailbox("denied", &shared, &account, serde_json::json!({}))
        .await;
    p.deliver(&shared, &mail("x", "x", "x"));
    let report = p.poll().await;
    let s = status(&report, "denied");
    assert_eq!(
        s.outcome,
        mailbridge::state_table::MailboxOutcome::Failed,
        "{s:?}"
    );
    let reason = s.reason.as_deref().unwrap();
    assert!(reason.contains("AUTHENTICATE XOAUTH2 failed"), "{reason}");
    assert!(reason.contains("FullAccess"), "{reason}");
    assert_eq!(p.count(&shared, "INBOX"), 1);
}

#[tokio::test]
async fn a_shared_mailbox_is_polled_with_a_delegates_token() {
    let p = Poller::new(stack().dovecot().clone()).await;
    let delegate = unique_user("agent");
    let shared = unique_user("support-shared");
    let account = p.account(&delegate).await;
    stack().identity().grant_mailbox_access(&delegate, &shared);
    p.mailbox("support", &shared, &account, serde_json::json!({}))
        .await;
    p.deliver(&shared, &mail("s1", "Shared mailbox mail", "x"));
    let report = p.poll().await;
    assert_eq!(
        status(&report, "support").outcome,
        mailbridge::state_table::MailboxOutcome::Ok,
        "{report:?}"
    );
    assert_eq!(p.tickets().len(), 1);
    assert_eq!(p.tickets()[0].body["mailbox_address"], shared.as_str());
    assert_eq!(p.count(&shared, "Processed"), 1);
}

/// Two runs overlap on one mailbox (EventBridge delivered the tick twice, an operator's manual
/// run during a scheduled one, a run outlasting the interval). While the first run's POST of a
/// mail is in flight, the second run must not POST the same mail again: on a ticket API that
/// ignores `Idempotency-Key` that second POST is a second ticket. (Before: the second run found
/// no dedupe record yet and POSTed it too.) The second run leaves the mailbox to the first,
/// says so, and is not counted as a failure; the mail becomes one ticket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlapping_runs_never_post_the_same_mail_twice() {
    let p = Poller::new(stack().dovecot().clone()).await;
    let user = unique_user("overlap");
    let account = p.account(&user).await;
    p.mailbox("overlap", &user, &account, serde_json::json!({}))
        .await;
    p.deliver(&user, &mail("ov1", "Overlap 1", "x"));
    // Run 1's POST is held at the ticket API: run 1 is mid-mail. (A long attempt timeout, so
    // run 1 never re-POSTs while it waits, however slow run 2 is on a loaded machine.)
    let mut deps = p.deps.clone();
    deps.sinks = Arc::new(SecretsSinkFactory::new(
        reqwest::Client::new(),
        aws_sdk_secretsmanager::Client::new(&stack().moto().sdk_config()),
        RetryPolicy {
            attempt_timeout: Duration::from_secs(120),
            ..fast_retry()
        },
    ));
    stack().tickets().hold_requests_after(&p.sink, 0);
    let first = {
        let deps = deps.clone();
        tokio::spawn(async move {
            poll_mailboxes::poll_once(&deps, None, Instant::now() + Duration::from_secs(60))
                .await
                .unwrap()
        })
    };
    let held_until = Instant::now() + Duration::from_secs(60);
    while stack().tickets().requests(&p.sink) < 1 {
        assert!(Instant::now() < held_until, "run 1 never POSTed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Run 2 while run 1 works on the mail. A second POST would be held too, so wait for
    // either run 2's end or a second POST, whichever comes first.
    let second = {
        let deps = deps.clone();
        tokio::spawn(async move {
            poll_mailboxes::poll_once(&deps, None, Instant::now() + Duration::from_secs(30))
                .await
                .unwrap()
        })
    };
    let limit = Instant::now() + Duration::from_secs(40);
    while !second.is_finished() && stack().tickets().requests(&p.sink) < 2 && Instant::now() < limit
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let posts_while_overlapping = stack().tickets().requests(&p.sink);
    stack().tickets().release_held(&p.sink);
    let second = second.await.unwrap();
    let first = first.await.unwrap();
    assert_eq!(
        posts_while_overlapping, 1,
        "the overlapping run POSTed the mail a second time"
    );
    let s2 = status(&second, "overlap");
    assert_eq!(
        s2.outcome,
        mailbridge::state_table::MailboxOutcome::Partial,
        "{s2:?}"
    );
    assert!(
        s2.reason
            .as_deref()
            .unwrap()
            .contains("another run is polling this mailbox"),
        "{s2:?}"
    );
    assert_eq!(second.mailboxes_failed, 0);
    assert_eq!(
        s2.last_success_at, None,
        "leaving the mail to another run is no successful poll: {s2:?}"
    );
    assert_eq!(status(&first, "overlap").tickets_created, 1, "{first:?}");
    assert_eq!(p.tickets().len(), 1);
    assert_eq!(stack().tickets().requests(&p.sink), 1);
    assert_eq!(p.count(&user, "INBOX"), 0);
    // The lease is given back: the next run works normally.
    p.deliver(&user, &mail("ov2", "Overlap 2", "x"));
    let report = p.poll().await;
    assert_eq!(status(&report, "overlap").tickets_created, 1, "{report:?}");
}

#[tokio::test]
async fn near_the_deadline_the_remaining_mail_waits_for_the_next_run() {
    let p = Poller::with_margin(stack().dovecot().clone(), Duration::from_secs(3)).await;
    let user = unique_user("deadline");
    let account = p.account(&user).await;
    p.mailbox("deadline", &user, &account, serde_json::json!({}))
        .await;
    // One conversation (each mail answers the first), so its tickets are posted one after the
    // other: different conversations would be posted side by side.
    for i in 0..6 {
        let raw = String::from_utf8(mail(&format!("dl{i}"), &format!("Mail {i}"), "x")).unwrap();
        let raw = if i == 0 {
            raw
        } else {
            raw.replace(
                "MIME-Version",
                "In-Reply-To: <dl0@customer.example>\r\nMIME-Version",
            )
        };
        p.deliver(&user, raw.as_bytes());
    }
    // A concrete point instead of a race with the machine's load: the 2nd POST is held until
    // the "stop starting new mail" point (deadline - 3 s margin) has passed, then answered.
    // So mails 1 and 2 are ticketed and mails 3..6 are not started.
    let margin = Duration::from_secs(3);
    let deadline = Instant::now() + margin + Duration::from_secs(10);
    stack().tickets().hold_requests_after(&p.sink, 1);
    let sink = p.sink.clone();
    let releaser = tokio::spawn(async move {
        // Mail 1 has 10 s to be ticketed; if the 2nd POST never comes the counts below fail.
        while stack().tickets().requests(&sink) < 2 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep_until(deadline - margin + Duration::from_millis(100)).await;
        stack().tickets().release_held(&sink);
    });
    let report = p.poll_until(deadline).await;
    releaser.await.unwrap();
    let s = status(&report, "deadline");
    assert_eq!(
        s.outcome,
        mailbridge::state_table::MailboxOutcome::Partial,
        "{s:?}"
    );
    assert_eq!((s.tickets_created, s.deferred), (2, 4), "{s:?}");
    assert_eq!(p.count(&user, "INBOX") as u32, s.deferred);
    p.poll().await;
    assert_eq!(p.tickets().len(), 6);
    assert_eq!(p.count(&user, "Processed"), 6);
}

#[tokio::test]
async fn dovecot_restarted_mid_run_then_the_next_run_completes_without_loss_or_duplicates() {
    let stack = stack();
    let dovecot = Arc::new(
        mailbridge_tests::start_private_dovecot(
            "poll-restart",
            &stack.identity().introspection_url(),
        )
        .await
        .unwrap(),
    );
    let p = Poller::new(dovecot.clone()).await;
    let user = unique_user("restart");
    let account = p.account(&user).await;
    p.mailbox("restart", &user, &account, serde_json::json!({}))
        .await;
    for i in 0..8 {
        p.deliver(&user, &mail(&format!("rs{i}"), &format!("Mail {i}"), "x"));
    }
    // A concrete stop point, whatever the machine's load: the 4th POST is held unanswered at the
    // ticket API; Dovecot is kicked and stopped while the poller waits for it; then the answers
    // go out. The 8 mails are one window: all are ticketed (the helpdesk accepted them), and the
    // window's UID MOVE meets a dead connection, so none is moved.
    stack.tickets().hold_requests_after(&p.sink, 3);
    let sink = p.sink.clone();
    let killer = {
        let dovecot = dovecot.clone();
        let user = user.clone();
        tokio::spawn(async move {
            let held = tokio::time::Instant::now() + Duration::from_secs(120);
            while stack.tickets().requests(&sink) < 4 {
                assert!(
                    tokio::time::Instant::now() < held,
                    "the 4th ticket POST never arrived"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            tokio::task::spawn_blocking(move || {
                // Dovecot keeps logged-in sessions across a master restart by default: kick
                // them, then stop the server.
                dovecot.doveadm(&["kick", &user], None).unwrap();
                dovecot.stop();
            })
            .await
            .unwrap();
            stack.tickets().release_held(&sink);
        })
    };
    let report = p.poll().await;
    killer.await.unwrap();
    let s = status(&report, "restart");
    assert_eq!(
        s.outcome,
        mailbridge::state_table::MailboxOutcome::Failed,
        "{s:?}"
    );
    assert!(
        s.reason.as_deref().unwrap_or("").contains("UID MOVE"),
        "the status names the IMAP step that failed: {s:?}"
    );
    assert_eq!(s.tickets_created, 0, "none moved: {s:?}");
    assert_eq!(s.deferred, 8, "the whole window: {s:?}");
    assert_eq!(p.tickets().len(), 8, "all accepted before the cut");
    let d = dovecot.clone();
    tokio::task::spawn_blocking(move || d.restart())
        .await
        .unwrap()
        .unwrap();
    let report = p.poll().await;
    let s = status(&report, "restart");
    assert_eq!(
        s.outcome,
        mailbridge::state_table::MailboxOutcome::Ok,
        "{report:?}"
    );
    assert_eq!(
        (s.tickets_created, s.duplicates),
        (0, 8),
        "the accepted-but-unmoved mails are only moved, not ticketed again: {s:?}"
    );
    let tickets = p.tickets();
    assert_eq!(tickets.len(), 8, "every mail exactly one ticket");
    let mut keys: Vec<_> = tickets.iter().map(|t| t.idempotency_key.clone()).collect();
    keys.sort();
    keys.dedup();
    assert_eq!(keys.len(), 8);
    assert_eq!(p.count(&user, "INBOX"), 0);
    assert_eq!(p.count(&user, "Processed"), 8);
}

/// The real `bootstrap` (the `poll-mailboxes` binary) under the Lambda Runtime API emulator with
/// the committed scheduler event, then warm with a manual event.
#[tokio::test]
async fn the_bootstrap_binary_polls_on_a_scheduler_event() {
    use local_stack::runtime_api::{FunctionConfig, RuntimeApi, workspace_binary};
    let binary =
        tokio::task::spawn_blocking(|| workspace_binary("poll-mailboxes", "poll-mailboxes"))
            .await
            .unwrap()
            .expect("build the poll-mailboxes binary");
    let p = Poller::new(stack().dovecot().clone()).await;
    let user = unique_user("bootstrap");
    let account = p.account(&user).await;
    p.mailbox("bootstrap", &user, &account, serde_json::json!({}))
        .await;
    p.deliver(&user, &mail("b1", "Via the bootstrap", "x"));
    let thread_key_secret = unique("thread-key");
    put_secret(&thread_key_secret, "0123456789abcdef0123456789abcdef")
        .await
        .unwrap();
    let mut env = stack().moto().env();
    env.extend([
        ("MAILBRIDGE_STATE_TABLE".to_string(), p.table.clone()),
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
        (
            "MAILBRIDGE_IMAP_CA_FILE".to_string(),
            p.dovecot.ca_pem_path.display().to_string(),
        ),
        ("RUST_LOG".to_string(), "info".to_string()),
    ]);
    let api = RuntimeApi::start().await.expect("runtime api");
    api.spawn_function(&FunctionConfig::new("poll-mailboxes", binary).with_env(env))
        .expect("spawn bootstrap");
    let schedule: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(local_stack::repo_root().join("infra/events/poll-schedule.json"))
            .unwrap(),
    )
    .unwrap();
    let outcome = api.invoke(schedule, Duration::from_secs(60)).await.unwrap();
    assert!(
        outcome.init_duration.is_some(),
        "first invocation is a cold start"
    );
    let report = outcome
        .into_response()
        .unwrap_or_else(|e| panic!("{e:#}\n{}", api.logs()));
    assert_eq!(report["tickets_created"], 1, "{report}");
    assert_eq!(p.tickets().len(), 1);
    assert_eq!(p.count(&user, "Processed"), 1);

    p.deliver(&user, &mail("b2", "Manual run", "y"));
    p.deliver(&user, &corpus_mail("306-autoresponder-ticket-receipt.eml"));
    let manual = serde_json::json!({"source": "mailbridge.manual", "mailboxes": [user]});
    let outcome = api.invoke(manual, Duration::from_secs(60)).await.unwrap();
    assert!(outcome.init_duration.is_none(), "warm");
    let report = outcome.into_response().unwrap();
    assert_eq!(report["tickets_created"], 1, "{report}");
    assert_eq!(p.tickets().len(), 2);
    let logs = api.logs();
    assert!(
        logs.contains("\"TicketsCreated\":1"),
        "EMF metrics line: {logs}"
    );
    assert_eq!(report["skipped_auto_generated"], 1, "{report}");
    assert!(
        logs.contains("\"MailSkippedAutoGenerated\":1"),
        "EMF metrics line: {logs}"
    );
    assert!(
        logs.contains("auto_reply: X-Autorespond yes")
            && logs.contains("not posted, moved to the auto-generated folder"),
        "the skip names its reason: {logs}"
    );
    assert_eq!(p.count(&user, "mailbridge-auto-generated"), 1);
    // The heartbeat is in the scheduled run's metrics line only: a manual run of some
    // mailboxes proves nothing about the others or about the schedule.
    let metric_lines: Vec<serde_json::Value> = logs
        .lines()
        .filter(|l| l.contains("\"_aws\""))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert_eq!(metric_lines.len(), 2, "{logs}");
    let heartbeat = poll_mailboxes::handler::HEARTBEAT_METRIC;
    assert!(metric_lines[0][heartbeat].is_u64(), "{}", metric_lines[0]);
    assert!(metric_lines[0][poll_mailboxes::handler::HEARTBEAT_DIMENSION].is_string());
    assert!(
        metric_lines[1].get(heartbeat).is_none(),
        "{}",
        metric_lines[1]
    );
    api.shutdown();
}

/// Deterministic pseudo-random numbers for the benchmark's mail generator (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn range(&mut self, low: usize, high: usize) -> usize {
        low + (self.next() as usize) % (high - low)
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(n + 8);
        while out.len() < n {
            out.extend_from_slice(&self.next().to_le_bytes());
        }
        out.truncate(n);
        out
    }
}

fn base64_lines(data: &[u8]) -> String {
    use base64::Engine as _;
    let encoded = base64::engine::general_purpose::STANDARD.encode(data);
    let mut out = String::with_capacity(encoded.len() + encoded.len() / 76 * 2 + 2);
    for chunk in encoded.as_bytes().chunks(76) {
        out.push_str(std::str::from_utf8(chunk).unwrap());
        out.push_str("\r\n");
    }
    out
}

const WORDS: &[&str] = &[
    "printer",
    "server",
    "invoice",
    "password",
    "reset",
    "outlook",
    "cannot",
    "login",
    "error",
    "urgent",
    "please",
    "thanks",
    "the",
    "a",
    "is",
    "not",
    "working",
    "since",
    "yesterday",
    "morning",
    "attached",
    "screenshot",
    "VPN",
    "disk",
    "backup",
    "failed",
    "ticket",
    "user",
];

/// A helpdesk-like mail: text + HTML alternative; some with a PDF/PNG attachment.
fn realistic_mail(rng: &mut Rng, i: usize, to: &str, attachment: Option<usize>) -> Vec<u8> {
    let words = rng.range(60, 1200);
    let mut text = String::new();
    for w in 0..words {
        text.push_str(WORDS[rng.range(0, WORDS.len())]);
        text.push(if w % 14 == 13 { '\n' } else { ' ' });
    }
    let html = format!(
        "<html><body><p>{}</p><p>Regards,<br>Customer {i}</p></body></html>",
        text.replace('\n', "</p><p>")
    );
    let alternative = format!(
        "Content-Type: multipart/alternative; boundary=alt{i}\r\n\r\n--alt{i}\r\n\
         Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n{}\r\n--alt{i}\r\n\
         Content-Type: text/html; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n{html}\r\n--alt{i}--\r\n",
        text.replace('\n', "\r\n")
    );
    let headers = format!(
        "Received: from mx.customer.example by mail.example.com; Sat, 28 Nov 2026 10:00:00 +0000\r\n\
         From: Customer {i} <customer{i}@customer.example>\r\nTo: {to}\r\n\
         Subject: Issue #{i}: {} {}\r\nDate: Sat, 28 Nov 2026 10:{:02}:00 +0000\r\n\
         Message-ID: <bench-{i}@customer.example>\r\nMIME-Version: 1.0\r\n",
        WORDS[rng.range(0, WORDS.len())],
        WORDS[rng.range(0, WORDS.len())],
        i % 60
    );
    match attachment {
        None => format!("{headers}{alternative}").into_bytes(),
        Some(size) => {
            let data = rng.bytes(size);
            format!(
                "{headers}Content-Type: multipart/mixed; boundary=mix{i}\r\n\r\n--mix{i}\r\n{alternative}--mix{i}\r\n\
                 Content-Type: application/pdf; name=\"report-{i}.pdf\"\r\n\
                 Content-Disposition: attachment; filename=\"report-{i}.pdf\"\r\n\
                 Content-Transfer-Encoding: base64\r\n\r\n{}--mix{i}--\r\n",
                base64_lines(&data)
            )
            .into_bytes()
        }
    }
}

/// CPU time (user + system) a process used so far, and that of its children it waited for
/// (the doveadm processes of the Graph stand-in), from `/proc/<pid>/stat` (ticks of 10 ms).
fn cpu_seconds(pid: &str) -> Option<(f64, f64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // after the command name in parentheses: utime, stime, cutime, cstime are fields 14..=17
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let tick = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok());
    Some((
        (tick(11)? + tick(12)?) as f64 / 100.0,
        (tick(13)? + tick(14)?) as f64 / 100.0,
    ))
}

fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// What one run of the real bootstrap at 128 MB over a mailbox of generated mails measured.
struct BootstrapRun {
    handled: u64,
    wall: Duration,
    init: Option<Duration>,
    /// `VmHWM` of the bootstrap process, KiB.
    peak_rss_kib: Option<u64>,
    imap_round_trips: u64,
    outcome: serde_json::Value,
    mails: usize,
    total_bytes: usize,
    /// CPU seconds of the bootstrap (init and the run).
    poller_cpu: Option<f64>,
    /// CPU seconds of this test process during the run (the ticket API and Graph stand-ins), and
    /// of the doveadm processes the Graph stand-in ran; moto and Dovecot are not counted.
    stand_ins_cpu: Option<(f64, f64)>,
}

/// `small` helpdesk-like mails (10 % with a 0.3–1 MB attachment, 20 % with a 20–300 KB one) plus
/// one with a `big_attachment`-byte attachment in the middle, delivered into a private Dovecot and
/// polled by `binary` (the real bootstrap) under the Runtime API emulator with
/// `AWS_LAMBDA_FUNCTION_MEMORY_SIZE=memory_mb`, the production token layer, the state table on
/// moto and the ticket API stand-in. Asserts that every mail became a ticket; returns the run and
/// the big mail's ticket. With `graph`, the mailbox is read through the Graph stand-in (over the
/// stack's Dovecot, where the mail is delivered then) instead of IMAP.
async fn poll_generated_mails(
    binary: std::path::PathBuf,
    label: &str,
    small: usize,
    big_attachment: usize,
    memory_mb: u32,
    graph: bool,
) -> (BootstrapRun, local_stack::ticket_api::RecordedTicket) {
    use local_stack::runtime_api::{FunctionConfig, RuntimeApi};
    let dovecot = if graph {
        stack().dovecot().clone()
    } else {
        Arc::new(
            mailbridge_tests::start_private_dovecot(label, &stack().identity().introspection_url())
                .await
                .unwrap(),
        )
    };
    let p = Poller::new(dovecot.clone()).await;
    let user = unique_user(label);
    let account = p.account(&user).await;
    // up to 1000 generated mails from few senders in one run
    let mut fields =
        serde_json::json!({"max_messages_per_run": 5000, "max_mails_per_sender_per_hour": 0});
    if graph {
        let mut app = AppRegistration::mailbridge(&p.tenant, &p.client_id);
        app.consented_scopes
            .push("https://graph.microsoft.com/Mail.ReadWrite".to_owned());
        stack().identity().register_app(app);
        fields["protocol"] = "graph".into();
        fields["host"] = serde_json::Value::Null;
        fields["port"] = serde_json::Value::Null;
    }
    p.mailbox(label, &user, &account, fields).await;

    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut mails = Vec::with_capacity(small + 1);
    for i in 0..small {
        let attachment = match i % 10 {
            0 => Some(rng.range(300_000, 1_000_000)),
            1 | 2 => Some(rng.range(20_000, 300_000)),
            _ => None,
        };
        mails.push(realistic_mail(&mut rng, i, &user, attachment));
    }
    let big_index = small;
    mails.insert(
        small / 2,
        realistic_mail(&mut rng, big_index, &user, Some(big_attachment)),
    );
    let total_bytes: usize = mails.iter().map(Vec::len).sum();
    let deliver_started = std::time::Instant::now();
    let mails = Arc::new(mails);
    let mut workers = Vec::new();
    for w in 0..4 {
        let (dovecot, mails, user) = (dovecot.clone(), mails.clone(), user.clone());
        workers.push(tokio::task::spawn_blocking(move || {
            for (i, raw) in mails.iter().enumerate() {
                if i % 4 == w {
                    dovecot.deliver_to(&user, "INBOX", raw).unwrap();
                }
            }
        }));
    }
    for w in workers {
        w.await.unwrap();
    }
    println!(
        "bench: delivered {} mails, {:.1} MB, in {:.1} s",
        mails.len(),
        total_bytes as f64 / 1e6,
        deliver_started.elapsed().as_secs_f64()
    );

    let thread_key_secret = unique("thread-key");
    put_secret(&thread_key_secret, "0123456789abcdef0123456789abcdef")
        .await
        .unwrap();
    let mut env = stack().moto().env();
    env.extend([
        ("MAILBRIDGE_STATE_TABLE".to_string(), p.table.clone()),
        (
            "MAILBRIDGE_ALLOW_LOCAL_TARGETS".to_string(),
            "true".to_string(),
        ),
        (
            "MAILBRIDGE_THREAD_KEY_SECRET".to_string(),
            thread_key_secret,
        ),
        (
            "MAILBRIDGE_IMAP_CA_FILE".to_string(),
            dovecot.ca_pem_path.display().to_string(),
        ),
        ("RUST_LOG".to_string(), "warn".to_string()),
        ("MAILBRIDGE_GRAPH_URL".to_string(), stack().graph().v1_url()),
    ]);
    let api = RuntimeApi::start().await.expect("runtime api");
    let mut function = FunctionConfig::new("poll-mailboxes", binary).with_env(env);
    function.memory_mb = memory_mb;
    api.spawn_function(&function).expect("spawn bootstrap");
    let pid = api.function_pid().expect("function pid");
    let stand_ins_cpu_before = cpu_seconds("self");
    let outcome = api
        .invoke(
            serde_json::json!({"source": "mailbridge.schedule"}),
            Duration::from_secs(900),
        )
        .await
        .unwrap();
    let poller_cpu = cpu_seconds(&pid.to_string()).map(|(own, _)| own);
    let stand_ins_cpu = cpu_seconds("self")
        .zip(stand_ins_cpu_before)
        .map(|(after, before)| (after.0 - before.0, after.1 - before.1));
    let wall = outcome.duration;
    let init = outcome.init_duration;
    let peak_rss_kib = peak_rss_kib(pid);
    let report = outcome
        .into_response()
        .unwrap_or_else(|e| panic!("{e:#}\n{}", api.logs()));
    api.shutdown();
    let s = &report["mailboxes"][0];
    let handled = s["tickets_created"].as_u64().unwrap() + s["parked"].as_u64().unwrap();
    let run = BootstrapRun {
        handled,
        wall,
        init,
        peak_rss_kib,
        imap_round_trips: s["imap_round_trips"].as_u64().unwrap(),
        outcome: s["outcome"].clone(),
        mails: mails.len(),
        total_bytes,
        poller_cpu,
        stand_ins_cpu,
    };
    assert_eq!(handled, mails.len() as u64, "{report}");
    assert_eq!(p.tickets().len(), mails.len());
    let big = p
        .tickets()
        .into_iter()
        .find(|t| {
            t.body["draft"]["subject"]
                .as_str()
                .unwrap_or("")
                .starts_with(&format!("Issue #{big_index}:"))
        })
        .expect("the big mail became a ticket");
    (run, big)
}

/// A Lambda's memory in KiB: Lambda's "MB" are MiB.
const fn lambda_kib(memory_mb: u64) -> u64 {
    memory_mb * 1024
}

/// The largest mail the poller reads whole at `memory_mb`: (M − 48 MiB) / 6 (its `memory`
/// module; 128 MB: 13.3 MiB, 256 MB: 34.7 MiB).
fn max_whole_mail_bytes(memory_mb: u64) -> u64 {
    (memory_mb - 48) * 1024 * 1024 / 6
}

/// The 20 MiB attachment of the memory checks: 27 MB on the wire (base64).
const BIG_ATTACHMENT: usize = 20 * 1024 * 1024;

/// The real bootstrap (this build's) at `memory_mb`, `small` ordinary mails and the big one.
async fn poll_the_big_mail(
    label: &str,
    small: usize,
    memory_mb: u32,
) -> (BootstrapRun, serde_json::Value) {
    let binary = tokio::task::spawn_blocking(|| {
        local_stack::runtime_api::workspace_binary("poll-mailboxes", "poll-mailboxes")
    })
    .await
    .unwrap()
    .expect("the poll-mailboxes binary");
    let (run, big) =
        poll_generated_mails(binary, label, small, BIG_ATTACHMENT, memory_mb, false).await;
    let rss = run.peak_rss_kib.expect("VmHWM of the bootstrap");
    println!(
        "peak RSS {:.1} MiB at {memory_mb} MB polling {} mails ({:.1} MB) in {:.1} s",
        rss as f64 / 1024.0,
        run.mails,
        run.total_bytes as f64 / 1e6,
        run.wall.as_secs_f64()
    );
    assert!(
        rss < lambda_kib(u64::from(memory_mb)),
        "peak RSS {:.1} MiB is over a {memory_mb} MB Lambda",
        rss as f64 / 1024.0
    );
    (run, big.body)
}

/// The memory bound with the full read, checked on every test run: at 256 MB the poller reads
/// the mail with a 20 MiB attachment (27 MB on the wire, under 256 MB's 34.7 MiB limit) whole,
/// among 40 ordinary ones, and stays under 256 MB. Peak RSS is set by the largest mail in flight
/// (one at a time), not by the number of mails, so this is the benchmark scaled to CI's time.
#[tokio::test]
async fn the_bootstrap_reads_a_27_mb_mail_whole_within_256_mb() {
    let (run, big) = poll_the_big_mail("poll-rss-256", 40, 256).await;
    assert!(run.total_bytes as u64 > 27_000_000);
    assert!(BIG_ATTACHMENT as u64 * 4 / 3 < max_whole_mail_bytes(256));
    assert!(
        big["problem"].is_null(),
        "read whole, not header-only: {}",
        big["problem"]
    );
    let attachment = &big["attachments"][0];
    assert_eq!(
        attachment["size"].as_u64(),
        Some(BIG_ATTACHMENT as u64),
        "the attachment was decoded: {attachment}"
    );
    assert!(
        attachment["content_base64"].is_null() && !attachment["omitted_reason"].is_null(),
        "over the attachment cap: listed without content: {attachment}"
    );
}

/// The memory bound at 128 MB: the same mail is over 128 MB's limit (13.3 MiB), so the poller
/// reads only its headers (a ticket that says so and names the memory setting) and stays under
/// 128 MB with the ordinary mails around it.
#[tokio::test]
async fn the_bootstrap_at_128_mb_makes_a_27_mb_mail_a_header_only_ticket_within_128_mb() {
    let (_run, big) = poll_the_big_mail("poll-rss-128", 20, 128).await;
    assert!(BIG_ATTACHMENT as u64 > max_whole_mail_bytes(128));
    let problem = big["problem"].as_str().unwrap_or_default();
    assert!(
        problem.contains("only its headers were read") && problem.contains("PollMemorySize"),
        "{problem}"
    );
    assert_eq!(big["attachments"].as_array().map(Vec::len), Some(0));
}

/// Benchmark (prints numbers; recorded in BENCHMARKS.md): 1,000 realistic mails plus one with a
/// 20 MB attachment in one mailbox, polled by the real bootstrap (bench profile) at 128 MB, read
/// over IMAP and then (the same mails, a new mailbox) through Graph, in the same run.
/// Run: `cargo build --profile bench --workspace --bins && cargo test --profile bench -p mailbridge-tests --test poll_mailboxes -- --ignored --nocapture bench_`
#[tokio::test]
#[ignore = "benchmark: run explicitly (see BENCHMARKS.md)"]
async fn bench_poll_1000_mails_and_a_20_mb_attachment() {
    // The bootstrap of this test's profile (bench: thin LTO), built beforehand, or the one
    // MAILBRIDGE_BENCH_POLLER names (a bench-profile bootstrap measured by a dev-profile test);
    // MAILBRIDGE_BENCH_BASELINE_POLLER: an earlier build, run over IMAP first, side by side.
    let binary = match std::env::var_os("MAILBRIDGE_BENCH_POLLER") {
        Some(path) => std::path::PathBuf::from(path),
        None => local_stack::runtime_api::workspace_binary("poll-mailboxes", "poll-mailboxes")
            .expect("the poll-mailboxes binary"),
    };
    let baseline =
        std::env::var_os("MAILBRIDGE_BENCH_BASELINE_POLLER").map(std::path::PathBuf::from);
    let load = || {
        std::fs::read_to_string("/proc/loadavg")
            .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
            .unwrap_or_default()
    };
    let runs = baseline
        .iter()
        .map(|b| ("IMAP", "baseline", b, false))
        .chain([
            ("IMAP", "this build", &binary, false),
            ("Graph", "this build", &binary, true),
        ]);
    for (protocol, build, binary, graph) in runs {
        let label = format!("poll-bench-{}", protocol.to_lowercase());
        let load_before = load();
        let (run, _big) =
            poll_generated_mails(binary.clone(), &label, 1000, BIG_ATTACHMENT, 128, graph).await;
        println!(
            "bench {protocol} ({build}): {} mails in {:.2} s = {:.1} mails/s; init {:?}; peak RSS {:.1} MiB \
             (limit 128); {protocol} round trips {} = {:.2} per mail; outcome {}; CPU s: poller {:?}, \
             stand-ins (own, their doveadm) {:?}; load average {load_before} before, {} after",
            run.handled,
            run.wall.as_secs_f64(),
            run.handled as f64 / run.wall.as_secs_f64(),
            run.init,
            run.peak_rss_kib.unwrap_or(0) as f64 / 1024.0,
            run.imap_round_trips,
            run.imap_round_trips as f64 / run.handled as f64,
            run.outcome,
            run.poller_cpu,
            run.stand_ins_cpu,
            load()
        );
        assert!(
            run.peak_rss_kib.unwrap_or(u64::MAX) < lambda_kib(128),
            "{protocol}: peak RSS {:?} KiB is over a 128 MB Lambda",
            run.peak_rss_kib
        );
    }
}

#[tokio::test]
async fn a_uidvalidity_change_does_not_duplicate_tickets() {
    let p = Poller::new(stack().dovecot().clone()).await;
    let user = unique_user("uidv");
    let account = p.account(&user).await;
    p.mailbox(
        "uidv",
        &user,
        &account,
        serde_json::json!({"after_action": "mark_seen"}),
    )
    .await;
    p.deliver(&user, &mail("u1", "Before the rebuild", "x"));
    let report = p.poll().await;
    assert_eq!(report.tickets_created, 1);
    let before = status(&report, "uidv").uid_validity.unwrap();
    // The server rebuilds the folder: new UIDVALIDITY, and the flags are lost.
    p.dovecot
        .doveadm(
            &[
                "flags", "remove", "-u", &user, "\\Seen", "mailbox", "INBOX", "all",
            ],
            None,
        )
        .unwrap();
    p.dovecot
        .set_uidvalidity(&user, "INBOX", before + 1000)
        .unwrap();
    let report = p.poll().await;
    let s = status(&report, "uidv");
    assert_eq!(s.uid_validity, Some(before + 1000));
    assert_eq!((s.tickets_created, s.duplicates), (0, 1), "{s:?}");
    assert_eq!(p.tickets().len(), 1);
    assert!(p.dovecot.list_messages(&user, "INBOX").unwrap()[0].is_seen());
}

/// A mail whose reading kills the process (SIGKILL, as Lambda's out-of-memory kill does) while
/// its UID is marked in flight: the next run, in a fresh process, parks it unread in the failed
/// folder and tickets the mail behind it.
#[tokio::test]
async fn a_mail_that_killed_the_bootstrap_is_parked_by_the_next_run() {
    use local_stack::runtime_api::{
        FunctionConfig, InvocationResult, RuntimeApi, workspace_binary,
    };
    let binary =
        tokio::task::spawn_blocking(|| workspace_binary("poll-mailboxes", "poll-mailboxes"))
            .await
            .unwrap()
            .expect("build the poll-mailboxes binary");
    let p = Poller::new(stack().dovecot().clone()).await;
    let user = unique_user("crash");
    let account = p.account(&user).await;
    let name = unique("crash");
    p.mailbox(&name, &user, &account, serde_json::json!({}))
        .await;
    p.deliver(&user, &mail("c1", "Before", "x"));
    // Large enough that reading it takes a while in a debug build: the test kills it then.
    let big_body = "Grüße, the quick brown fox jumps over the lazy dog.\r\n".repeat(200_000);
    p.deliver(&user, &mail("c2", "The killer", &big_body));
    p.deliver(&user, &mail("c3", "After", "z"));
    let thread_key_secret = unique("thread-key");
    put_secret(&thread_key_secret, "0123456789abcdef0123456789abcdef")
        .await
        .unwrap();
    let mut env = stack().moto().env();
    env.extend([
        ("MAILBRIDGE_STATE_TABLE".to_string(), p.table.clone()),
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
        (
            "MAILBRIDGE_IMAP_CA_FILE".to_string(),
            p.dovecot.ca_pem_path.display().to_string(),
        ),
        ("RUST_LOG".to_string(), "info".to_string()),
    ]);
    let mut function = FunctionConfig::new("poll-mailboxes", binary).with_env(env);
    function.memory_mb = 512;
    let api = RuntimeApi::start().await.expect("runtime api");
    api.spawn_function(&function).expect("spawn bootstrap");
    let event = serde_json::json!({"source": "mailbridge.manual", "mailboxes": [name.clone()]});
    let lease_key = format!("mailbox-lease#{name}");
    let table = p.table.clone();
    let pid = api.function_pid().expect("running");
    let killer = tokio::spawn(async move {
        let deadline = Instant::now() + Duration::from_secs(120);
        while Instant::now() < deadline {
            let item = dynamodb()
                .get_item()
                .table_name(&table)
                .key(
                    "pk",
                    aws_sdk_dynamodb::types::AttributeValue::S(lease_key.clone()),
                )
                .consistent_read(true)
                .send()
                .await
                .unwrap()
                .item;
            let in_flight = item
                .as_ref()
                .and_then(|i| i.get("in_flight_uid"))
                .and_then(|v| v.as_n().ok())
                .cloned();
            if in_flight.as_deref() == Some("2") {
                std::process::Command::new("kill")
                    .args(["-9", &pid.to_string()])
                    .status()
                    .unwrap();
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    });
    // A short invocation (the poller keeps a 20 s margin): its lease runs out soon after, as
    // it does before the next tick.
    let first = api
        .invoke(event.clone(), Duration::from_secs(35))
        .await
        .unwrap();
    assert!(killer.await.unwrap(), "the killer mail was never in flight");
    assert!(
        matches!(first.result, InvocationResult::ProcessExited(_)),
        "{:?}",
        first.result
    );
    assert_eq!(p.count(&user, "mailbridge-failed"), 0);

    // The killed run never released its lease: wait until it runs out.
    let held_until: i64 = dynamodb()
        .get_item()
        .table_name(&p.table)
        .key(
            "pk",
            aws_sdk_dynamodb::types::AttributeValue::S(format!("mailbox-lease#{name}")),
        )
        .consistent_read(true)
        .send()
        .await
        .unwrap()
        .item
        .and_then(|i| {
            i.get("lease_expires_at")
                .and_then(|v| v.as_n().ok())
                .cloned()
        })
        .and_then(|n| n.parse().ok())
        .expect("the killed run's lease is left behind");
    let wait = (held_until + 2 - chrono::Utc::now().timestamp()).max(0) as u64;
    tokio::time::sleep(Duration::from_secs(wait)).await;
    // A fresh process, as Lambda starts after a kill.
    api.spawn_function(&function).expect("respawn bootstrap");
    let second = api.invoke(event, Duration::from_secs(120)).await.unwrap();
    let report = second
        .into_response()
        .unwrap_or_else(|e| panic!("{e:#}\n{}", api.logs()));
    assert_eq!(report["parked"], 1, "{report}");
    assert_eq!(
        p.count(&user, "mailbridge-failed"),
        1,
        "the killer is parked"
    );
    assert_eq!(p.count(&user, "INBOX"), 0);
    let subjects: Vec<String> = p
        .tickets()
        .iter()
        .map(|t| {
            t.body["draft"]["subject"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
        .collect();
    assert!(subjects.contains(&"After".to_string()), "{subjects:?}");
    assert!(
        !subjects.contains(&"The killer".to_string()),
        "{subjects:?}"
    );
    assert!(
        api.logs().contains("a run ended while reading this mail"),
        "{}",
        api.logs()
    );
    api.shutdown();
}

/// Ticket API row "one mail the API always fails on", against Dovecot, moto and the stand-in:
/// every POST of one mail's payload answers 503, however often it is retried. The mails behind
/// it become tickets in the same run; it stays in the INBOX, named in the status, and the next
/// run tries the new mail first and it last.
#[tokio::test]
async fn a_mail_the_ticket_api_always_fails_on_does_not_block_the_mail_behind_it() {
    let p = Poller::new(stack().dovecot().clone()).await;
    let user = unique_user("poison");
    let account = p.account(&user).await;
    p.mailbox("poison", &user, &account, serde_json::json!({}))
        .await;
    let poison = unique("poison-word");
    p.deliver(&user, &mail("p1", "Poisoned", &poison));
    p.deliver(&user, &mail("p2", "Second", "fine"));
    p.deliver(&user, &mail("p3", "Third", "fine"));
    stack()
        .tickets()
        .fail_payloads_containing(&p.sink, &poison, 503);
    let report = p.poll().await;
    let s = status(&report, "poison");
    assert_eq!(s.tickets_created, 2, "{s:?}");
    assert_eq!(
        s.outcome,
        mailbridge::state_table::MailboxOutcome::Partial,
        "{s:?}"
    );
    assert_eq!(s.retry_last_uids, vec![1], "{s:?}");
    assert!(
        s.reason.as_deref().unwrap_or_default().contains("UIDs [1]"),
        "{s:?}"
    );
    assert_eq!(p.count(&user, "INBOX"), 1, "left in place");
    assert_eq!(p.count(&user, "Processed"), 2);

    // Next run: the new mail first, the failing one after it (still failing, still there).
    p.deliver(&user, &mail("p4", "Fourth", "fine"));
    let before = stack().tickets().requests(&p.sink);
    let report = p.poll().await;
    let s = status(&report, "poison");
    assert_eq!(s.tickets_created, 1, "{s:?}");
    assert_eq!(s.retry_last_uids, vec![1], "{s:?}");
    let subjects: Vec<String> = p
        .tickets()
        .iter()
        .map(|t| {
            t.body["draft"]["subject"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        })
        .collect();
    assert_eq!(subjects, ["Second", "Third", "Fourth"]);
    assert!(
        stack().tickets().requests(&p.sink) > before + 1,
        "the poisoned one was tried"
    );
    assert_eq!(p.count(&user, "INBOX"), 1);
}

/// Ticket API row "refusing (401/403/404) raises the alarm", against the stand-in: a run whose
/// mail the API refuses leaves the mail and counts for `MailboxPollFailed`; the next run, with
/// the API accepting again, tickets it and counts nothing.
#[tokio::test]
async fn a_ticket_api_refusing_with_401_403_404_leaves_the_mail_and_counts_for_the_alarm() {
    for refusal in [401u16, 403, 404] {
        let p = Poller::new(stack().dovecot().clone()).await;
        let user = unique_user("refused");
        let account = p.account(&user).await;
        p.mailbox("refused", &user, &account, serde_json::json!({}))
            .await;
        p.deliver(&user, &mail("r1", "Refused", "x"));
        stack().tickets().reject_next(&p.sink, 1, refusal);
        let report = p.poll().await;
        assert_eq!(report.mailboxes_failed, 1, "{refusal}: {report:?}");
        assert_eq!(report.tickets_created, 0, "{refusal}");
        let s = status(&report, "refused");
        assert_eq!(
            s.outcome,
            mailbridge::state_table::MailboxOutcome::Partial,
            "{refusal}: {s:?}"
        );
        assert_eq!(p.count(&user, "INBOX"), 1, "{refusal}: the mail stays");
        assert_eq!(
            p.count(&user, "mailbridge-failed"),
            0,
            "{refusal}: not parked"
        );
        let report = p.poll().await;
        assert_eq!(report.tickets_created, 1, "{refusal}: {report:?}");
        assert_eq!(report.mailboxes_failed, 0, "{refusal}");
        assert_eq!(p.count(&user, "INBOX"), 0, "{refusal}");
    }
}

/// Ticket API row "400/413/422 → failed folder", against Dovecot and the stand-in: the mail the
/// API rejects as bad is moved to the failed folder (no ticket), and the mail behind it is
/// ticketed in the same run.
#[tokio::test]
async fn a_mail_the_ticket_api_rejects_goes_to_the_failed_folder_and_the_rest_is_ticketed() {
    for rejection in [400u16, 413, 422] {
        let p = Poller::new(stack().dovecot().clone()).await;
        let user = unique_user("rejected");
        let account = p.account(&user).await;
        p.mailbox("rejected", &user, &account, serde_json::json!({}))
            .await;
        p.deliver(&user, &mail("j1", "Rejected", "x"));
        p.deliver(&user, &mail("j2", "Accepted", "y"));
        stack().tickets().reject_next(&p.sink, 1, rejection);
        let report = p.poll().await;
        let s = status(&report, "rejected");
        assert_eq!(s.tickets_created, 1, "{rejection}: {s:?}");
        assert_eq!(s.parked, 1, "{rejection}: {s:?}");
        assert_eq!(p.count(&user, "INBOX"), 0, "{rejection}");
        assert_eq!(p.count(&user, "Processed"), 1, "{rejection}");
        let failed = p.dovecot.list_messages(&user, "mailbridge-failed").unwrap();
        assert_eq!(failed.len(), 1, "{rejection}");
        assert!(
            String::from_utf8_lossy(&failed[0].raw).contains("Subject: Rejected"),
            "{rejection}"
        );
        assert_eq!(p.tickets().len(), 1, "{rejection}");
        assert_eq!(p.tickets()[0].body["draft"]["subject"], "Accepted");
    }
}
