//! poll-mailboxes against real servers: the ticket API stand-in (webhook client), moto
//! (DynamoDB state table), Dovecot with XOAUTH2 (the identity stand-in introspects tokens), and
//! the real `bootstrap` binary under the Lambda Runtime API emulator.

use std::time::Duration;

use mailbridge::error::{Classify as _, ErrorClass};
use mailbridge::ticket_api::{
    RetryPolicy, TICKET_PAYLOAD_SCHEMA, TicketApiAuth, TicketApiError, TicketPayload, TicketSink,
    WebhookTicketSink,
};
use mailbridge_tests::{dynamodb, stack, unique};
use poll_mailboxes::dynamo::{DynamoStateStore, put_mailbox_config};
use poll_mailboxes::ports::{DedupeRecord, MailboxStatus, StateStore};
use tokio::time::Instant;

fn fast_retry() -> RetryPolicy {
    RetryPolicy {
        initial_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_secs(2),
        max_attempts: 5,
        attempt_timeout: Duration::from_secs(5),
    }
}

fn payload(key: &str) -> TicketPayload {
    TicketPayload {
        schema: TICKET_PAYLOAD_SCHEMA.into(),
        mailbox: "m".into(),
        mailbox_address: "m@example.com".into(),
        received_at: chrono::Utc::now(),
        idempotency_key: key.into(),
        draft: serde_json::json!({"subject": "hello"}),
        attachments: Vec::new(),
        problem: None,
        raw_message_base64: None,
    }
}

fn sink(url: String, auth: TicketApiAuth) -> WebhookTicketSink {
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
    let auth =
        TicketApiAuth::from_secret_json("t", r#"{"type":"bearer","token":"s3cret"}"#).unwrap();
    let client = sink(api.sink_url(&path), auth);
    let first = client
        .create_ticket(&payload("k1"), "k1", soon())
        .await
        .unwrap();
    let again = client
        .create_ticket(&payload("k1"), "k1", soon())
        .await
        .unwrap();
    assert_eq!(first.ticket_id, again.ticket_id, "same key, same ticket");
    let tickets = api.tickets(&path);
    assert_eq!(tickets.len(), 1);
    assert_eq!(tickets[0].idempotency_key, "k1");
    assert_eq!(tickets[0].body["draft"]["subject"], "hello");

    let wrong = sink(api.sink_url(&path), TicketApiAuth::None);
    let err = wrong
        .create_ticket(&payload("k2"), "k2", soon())
        .await
        .unwrap_err();
    assert_eq!(
        err.class(),
        ErrorClass::Transient,
        "bad credentials never park mail: {err}"
    );
    assert!(err.to_string().contains("401"), "{err}");
}

#[tokio::test]
async fn webhook_api_key_header_from_the_secret() {
    let api = stack().tickets();
    let path = unique("sink");
    api.require_header(&path, "x-api-key", "k-123");
    let auth = TicketApiAuth::from_secret_json(
        "t",
        r#"{"type":"api_key","header":"X-API-Key","key":"k-123"}"#,
    )
    .unwrap();
    sink(api.sink_url(&path), auth)
        .create_ticket(&payload("a"), "a", soon())
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
    let receipt = sink(api.sink_url(&path), TicketApiAuth::None)
        .create_ticket(&payload("r"), "r", soon())
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
    let client = sink(api.sink_url(&path), TicketApiAuth::None);
    let err = client
        .create_ticket(&payload("x"), "x", soon())
        .await
        .unwrap_err();
    assert!(
        matches!(err, TicketApiError::Rejected { status: 422, .. }),
        "{err}"
    );
    assert_eq!(err.class(), ErrorClass::Permanent);

    api.set_down(&path, true);
    let started = Instant::now();
    let err = client
        .create_ticket(&payload("y"), "y", Instant::now() + Duration::from_secs(1))
        .await
        .unwrap_err();
    assert!(matches!(err, TicketApiError::Unavailable { .. }), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "gave up near the deadline"
    );
    assert!(api.tickets(&path).is_empty());
}

#[tokio::test]
async fn webhook_lost_response_is_retried_with_the_same_key_and_makes_one_ticket() {
    let api = stack().tickets();
    let path = unique("sink");
    api.drop_response_next(&path, 1);
    let receipt = sink(api.sink_url(&path), TicketApiAuth::None)
        .create_ticket(&payload("d"), "d", soon())
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
    put_mailbox_config(
        &client,
        &table,
        "sales",
        &mailbox_fields("sales@example.com", url),
    )
    .await
    .unwrap();
    put_mailbox_config(
        &client,
        &table,
        "support",
        &mailbox_fields("support@example.com", url),
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
    let err = put_mailbox_config(&client, &table, "bad", &serde_json::json!({"user": "x"}))
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("mailbox bad: field `user`"),
        "{err}"
    );

    let store = DynamoStateStore::new(client.clone(), &table);
    let loaded = store.load_mailboxes(None).await.unwrap();
    assert_eq!(loaded.len(), 2);
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

    poll_mailboxes::dynamo::delete_mailbox_config(&client, &table, "sales")
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
        outcome: "needs_reauth".into(),
        reason: Some("AADSTS70008".into()),
        last_run_at: chrono::Utc::now().to_rfc3339(),
        duration_ms: 1,
        tickets_created: 0,
        parked: 0,
        duplicates: 0,
        deferred: 0,
        uid_validity: None,
        imap_round_trips: 0,
    };
    store.put_status(&status).await.unwrap();
    assert_eq!(store.get_status("m").await.unwrap(), Some(status));
}
