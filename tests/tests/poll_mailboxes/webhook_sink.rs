//! The webhook ticket sink against the ticket API stand-in: the `Idempotency-Key` and
//! authentication it sends, retries (429 after `Retry-After`, 5xx with backoff, a lost answer),
//! what is permanent, and the stand-in's own strictness.

use super::*;

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
