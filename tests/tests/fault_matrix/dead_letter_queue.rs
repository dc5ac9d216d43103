//! The dead-letter queue unavailable while a notification must be parked.

use super::*;

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
