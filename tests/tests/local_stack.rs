//! The local stack itself: moto through the real AWS SDK clients, Dovecot XOAUTH2 over IMAPS,
//! and the Lambda Runtime API emulator with a real bootstrap.

use mailbridge_tests::{
    create_queue, create_state_table, dynamodb, get_secret, put_secret, sqs, stack, unique,
};

#[tokio::test]
async fn moto_sqs_roundtrip_through_the_sdk() {
    let queue_url = create_queue(&unique("stack-sqs")).await.unwrap();
    let client = sqs();
    client
        .send_message()
        .queue_url(&queue_url)
        .message_body(r#"{"hello":"world"}"#)
        .send()
        .await
        .unwrap();
    let received = client
        .receive_message()
        .queue_url(&queue_url)
        .max_number_of_messages(10)
        .wait_time_seconds(1)
        .send()
        .await
        .unwrap();
    let messages = received.messages();
    assert_eq!(messages.len(), 1, "one message back: {messages:?}");
    assert_eq!(messages[0].body(), Some(r#"{"hello":"world"}"#));
    client
        .delete_message()
        .queue_url(&queue_url)
        .receipt_handle(messages[0].receipt_handle().unwrap())
        .send()
        .await
        .unwrap();
}

#[tokio::test]
async fn moto_secrets_manager_roundtrip_through_the_sdk() {
    let name = format!("mailbridge/{}", unique("stack-secret"));
    put_secret(&name, r#"{"v":1}"#).await.unwrap();
    assert_eq!(get_secret(&name).await.unwrap(), r#"{"v":1}"#);
    put_secret(&name, r#"{"v":2}"#).await.unwrap();
    assert_eq!(get_secret(&name).await.unwrap(), r#"{"v":2}"#);
}

#[tokio::test]
async fn moto_dynamodb_state_table_roundtrip_through_the_sdk() {
    use aws_sdk_dynamodb::types::AttributeValue;
    let table = create_state_table("stack-state").await.unwrap();
    // idempotent
    local_stack::moto::ensure_state_table(&dynamodb(), &table)
        .await
        .unwrap();
    let client = dynamodb();
    let ttl = client
        .describe_time_to_live()
        .table_name(&table)
        .send()
        .await
        .unwrap();
    assert_eq!(
        ttl.time_to_live_description()
            .and_then(|d| d.attribute_name()),
        Some("expires_at")
    );
    client
        .put_item()
        .table_name(&table)
        .item("pk", AttributeValue::S("notification#1".into()))
        .item("expires_at", AttributeValue::N("4102444800".into()))
        .condition_expression("attribute_not_exists(pk)")
        .send()
        .await
        .unwrap();
    let again = client
        .put_item()
        .table_name(&table)
        .item("pk", AttributeValue::S("notification#1".into()))
        .condition_expression("attribute_not_exists(pk)")
        .send()
        .await;
    assert!(
        again
            .unwrap_err()
            .into_service_error()
            .is_conditional_check_failed_exception(),
        "second conditional put must fail"
    );
    let item = client
        .get_item()
        .table_name(&table)
        .key("pk", AttributeValue::S("notification#1".into()))
        .consistent_read(true)
        .send()
        .await
        .unwrap();
    assert!(item.item().is_some());
}

#[test]
fn moto_env_points_child_processes_at_moto() {
    let env = stack().moto().env();
    let endpoint = env
        .iter()
        .find(|(k, _)| k == "AWS_ENDPOINT_URL")
        .map(|(_, v)| v.clone())
        .unwrap();
    assert_eq!(endpoint, stack().moto().endpoint_url);
    assert!(
        env.iter()
            .any(|(k, v)| k == "AWS_REGION" && v == "us-east-1")
    );
}
