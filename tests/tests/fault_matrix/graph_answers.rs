//! Graph's unhappy answers on the send path: 503s and connection resets inside a batch, a sending
//! quota and a full sender mailbox.

use super::*;

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
