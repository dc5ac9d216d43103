//! What send-notifications parked: the messages on a dead-letter queue.

use std::collections::HashMap;

use aws_sdk_sqs::types::Message;

/// The messages on the dead-letter queue `dlq_url`, left there (they come back after their
/// visibility timeout): at least `expected`, waiting up to ~10 s for them.
pub async fn receive_parked(dlq_url: &str, expected: usize) -> Vec<Message> {
    let mut out = Vec::new();
    for _ in 0..10 {
        if out.len() >= expected {
            break;
        }
        let received = crate::sqs()
            .receive_message()
            .queue_url(dlq_url)
            .max_number_of_messages(10)
            .message_attribute_names("All")
            .wait_time_seconds(1)
            .send()
            .await
            .expect("receive DLQ");
        out.extend(received.messages.unwrap_or_default());
    }
    out
}

/// One parked message.
#[derive(Clone, Debug)]
pub struct ParkedMessage {
    /// Its body (empty when it had none).
    pub body: String,
    /// Its message attributes' string values (`mailbridge.reason`, ...).
    pub attributes: HashMap<String, String>,
}

impl From<&Message> for ParkedMessage {
    fn from(m: &Message) -> Self {
        let attributes = m
            .message_attributes()
            .map(|a| {
                a.iter()
                    .map(|(k, v)| (k.clone(), v.string_value().unwrap_or_default().to_owned()))
                    .collect()
            })
            .unwrap_or_default();
        ParkedMessage {
            body: m.body().unwrap_or_default().to_owned(),
            attributes,
        }
    }
}

/// [`receive_parked`], as bodies and attributes.
pub async fn parked_messages(dlq_url: &str, expected: usize) -> Vec<ParkedMessage> {
    receive_parked(dlq_url, expected)
        .await
        .iter()
        .map(ParkedMessage::from)
        .collect()
}

/// The bodies of the parked messages on `dlq_url`, taken off the queue (deleted): at least
/// `expected`, waiting up to ~10 s for them.
pub async fn take_parked(dlq_url: &str, expected: usize) -> Vec<String> {
    let mut bodies = Vec::new();
    for m in receive_parked(dlq_url, expected).await {
        bodies.push(m.body().unwrap_or_default().to_owned());
        crate::sqs()
            .delete_message()
            .queue_url(dlq_url)
            .receipt_handle(m.receipt_handle().unwrap_or_default())
            .send()
            .await
            .expect("delete from DLQ");
    }
    bodies
}
