//! Push: the state-table records behind Graph change notifications (docs/push.md).
//!
//! Items in the state table (partition key `pk`):
//! - `subscription#<id>`: one Graph subscription ([`SubscriptionRecord`]): the mailbox it is
//!   for, the SHA-256 of its `clientState` secret (the secret itself is stored nowhere: only
//!   Graph and the hash know it), the subscribed resource and when it expires. The notification
//!   receiver reads these, and nothing else.
//! - `mailbox-subscription#<mailbox>`: the same record under the mailbox's name, so the poller
//!   finds it by mailbox, and `subscription-index` (string set `mailboxes`): the mailboxes that
//!   have one, so a scheduled run finds the subscriptions of removed mailboxes. All three are
//!   written and deleted together (one transaction).
//! - `poll-request#<mailbox>`: the poll-request gate ([`PollGate`]). `queued_at` is set while a
//!   "poll this mailbox now" request waits in the queue and no poll has taken it yet.
//!
//! The gate is how a burst of notifications becomes one poll without losing a "look now": the
//! receiver arms it with a conditional write and enqueues a request only when it was not armed
//! already; the poller disarms it *before* it lists the mailbox. A notification that arrives
//! after the poll started listing finds the gate disarmed, arms it again and enqueues another
//! request, so the mail it announces is seen by a poll that starts after it. A gate armed longer
//! than [`GATE_STALE_AFTER`] (its request lost: enqueue failed after the write, poller never
//! started) counts as disarmed.

use std::collections::HashMap;

use async_trait::async_trait;
use aws_sdk_dynamodb::types::{AttributeValue, Delete, Put, TransactWriteItem, Update};
use base64::Engine as _;
use sha2::Digest as _;

use crate::aws::LazyClient;
use crate::state_table::StateError;

/// A gate armed this long (seconds) without a poll taking it counts as disarmed.
pub const GATE_STALE_AFTER: i64 = 300;

/// Graph's longest subscription to Outlook messages without resource data: 10,080 minutes.
pub const MAX_SUBSCRIPTION_MINUTES: i64 = 10_080;

/// The longest `clientState` Graph accepts (characters).
pub const MAX_CLIENT_STATE_CHARS: usize = 128;

/// One Graph subscription, as the state table keeps it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubscriptionRecord {
    /// Graph's subscription id.
    pub id: String,
    /// The mailbox (configuration name) it watches.
    pub mailbox: String,
    /// The account (token) it was created with: what deletes it after the mailbox is gone.
    pub account: String,
    /// The mailbox's address.
    pub user: String,
    /// Hex SHA-256 of the subscription's `clientState`.
    pub client_state_sha256: String,
    /// The subscribed resource, e.g. `/users/helpdesk@contoso.com/mailFolders('inbox')/messages`.
    pub resource: String,
    /// The mailbox's `folder` setting the resource was made for (empty in records written
    /// before it was kept): a subscription whose folder or user no longer matches the mailbox
    /// is replaced.
    pub folder: String,
    /// When Graph ends it unless renewed (epoch seconds).
    pub expires_at: i64,
}

/// The lifecycle events Graph sends for Outlook subscriptions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum LifecycleEvent {
    /// Reauthorize (renew) the subscription or notifications stop.
    ReauthorizationRequired,
    /// Graph removed the subscription: create a new one, then resync.
    SubscriptionRemoved,
    /// Some notifications were not delivered: resync.
    Missed,
}

impl LifecycleEvent {
    /// Graph's name for it.
    pub fn as_str(self) -> &'static str {
        match self {
            LifecycleEvent::ReauthorizationRequired => "reauthorizationRequired",
            LifecycleEvent::SubscriptionRemoved => "subscriptionRemoved",
            LifecycleEvent::Missed => "missed",
        }
    }
}

/// The body of one message on the poll-request queue: poll `mailbox` now, after doing what a
/// lifecycle event asks of its subscription.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PollRequestMessage {
    /// The mailbox to poll (configuration name).
    pub mailbox: String,
    /// A lifecycle event to act on before polling.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lifecycle: Option<LifecycleEvent>,
    /// The subscription the lifecycle event is about.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subscription_id: Option<String>,
}

/// A fresh `clientState` secret: 32 random bytes, base64url (43 characters).
pub fn new_client_state() -> String {
    let bytes: [u8; 32] = rand::random();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Hex SHA-256 of a `clientState`.
pub fn client_state_sha256(client_state: &str) -> String {
    hex::encode(sha2::Sha256::digest(client_state.as_bytes()))
}

/// Whether `given` is the `clientState` whose hash is `expected_sha256`, compared in constant
/// time (of the hashes: how long the comparison takes says nothing about the secret).
pub fn client_state_matches(expected_sha256: &str, given: &str) -> bool {
    use subtle::ConstantTimeEq as _;
    let given = sha2::Sha256::digest(given.as_bytes());
    match hex::decode(expected_sha256) {
        Ok(expected) if expected.len() == given.len() => expected.ct_eq(given.as_slice()).into(),
        _ => false,
    }
}

/// Partition key of a subscription's record.
pub fn subscription_key(id: &str) -> String {
    format!("subscription#{id}")
}

/// Partition key of a mailbox's subscription pointer.
pub fn mailbox_subscription_key(mailbox: &str) -> String {
    format!("mailbox-subscription#{mailbox}")
}

/// Partition key of the list of mailboxes with a subscription.
pub const SUBSCRIPTION_INDEX_KEY: &str = "subscription-index";

/// Partition key of a mailbox's poll-request gate.
pub fn poll_request_key(mailbox: &str) -> String {
    format!("poll-request#{mailbox}")
}

/// Port: the subscription records.
#[async_trait]
pub trait SubscriptionStore: Send + Sync {
    /// The record of subscription `id`, if there is one.
    async fn subscription(&self, id: &str) -> Result<Option<SubscriptionRecord>, StateError>;
    /// The record of `mailbox`'s subscription, if it has one.
    async fn subscription_of(
        &self,
        mailbox: &str,
    ) -> Result<Option<SubscriptionRecord>, StateError>;
    /// Store (or replace) a record and its mailbox pointer.
    async fn put_subscription(&self, record: &SubscriptionRecord) -> Result<(), StateError>;
    /// Remove a record and its mailbox pointer.
    async fn delete_subscription(&self, record: &SubscriptionRecord) -> Result<(), StateError>;
    /// The mailboxes that have a subscription record.
    async fn subscribed_mailboxes(&self) -> Result<Vec<String>, StateError>;
}

/// Port: the poll-request gate of each mailbox.
#[async_trait]
pub trait PollGate: Send + Sync {
    /// Arm `mailbox`'s gate. True: it was not armed (or was stale), so the caller must enqueue a
    /// request; false: a queued request no poll has taken yet will see the mail.
    async fn arm(&self, mailbox: &str) -> Result<bool, StateError>;
    /// Disarm it: a poll is about to list the mailbox (or an enqueue failed after arming).
    async fn disarm(&self, mailbox: &str) -> Result<(), StateError>;
}

/// The DynamoDB adapter of [`SubscriptionStore`] and [`PollGate`].
#[derive(Clone, Debug)]
pub struct DynamoPushStore {
    client: LazyClient<aws_sdk_dynamodb::Client>,
    table: String,
}

impl DynamoPushStore {
    /// Use `table` (the state table) through `client`.
    pub fn new(
        client: impl Into<LazyClient<aws_sdk_dynamodb::Client>>,
        table: impl Into<String>,
    ) -> Self {
        DynamoPushStore {
            client: client.into(),
            table: table.into(),
        }
    }

    fn error(&self, operation: String, e: impl std::fmt::Display) -> StateError {
        StateError {
            table: self.table.clone(),
            operation,
            detail: e.to_string(),
        }
    }

    async fn get(&self, pk: &str) -> Result<Option<HashMap<String, AttributeValue>>, StateError> {
        self.client
            .get_item()
            .table_name(&self.table)
            .key("pk", s(pk))
            .consistent_read(true)
            .send()
            .await
            .map(|out| out.item)
            .map_err(|e| self.error(format!("get {pk}"), e.into_service_error()))
    }
}

fn s(v: impl Into<String>) -> AttributeValue {
    AttributeValue::S(v.into())
}

fn n(v: i64) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

fn text(item: &HashMap<String, AttributeValue>, name: &str) -> Option<String> {
    item.get(name).and_then(|v| v.as_s().ok()).cloned()
}

fn record_from(item: &HashMap<String, AttributeValue>) -> Option<SubscriptionRecord> {
    Some(SubscriptionRecord {
        id: text(item, "subscription_id")?,
        mailbox: text(item, "mailbox")?,
        account: text(item, "account")?,
        user: text(item, "user")?,
        client_state_sha256: text(item, "client_state_sha256")?,
        resource: text(item, "resource")?,
        folder: text(item, "folder").unwrap_or_default(),
        expires_at: item
            .get("subscription_expires_at")
            .and_then(|v| v.as_n().ok())
            .and_then(|v| v.parse().ok())?,
    })
}

#[async_trait]
impl SubscriptionStore for DynamoPushStore {
    async fn subscription(&self, id: &str) -> Result<Option<SubscriptionRecord>, StateError> {
        Ok(self
            .get(&subscription_key(id))
            .await?
            .as_ref()
            .and_then(record_from))
    }

    async fn subscription_of(
        &self,
        mailbox: &str,
    ) -> Result<Option<SubscriptionRecord>, StateError> {
        Ok(self
            .get(&mailbox_subscription_key(mailbox))
            .await?
            .as_ref()
            .and_then(record_from))
    }

    async fn put_subscription(&self, record: &SubscriptionRecord) -> Result<(), StateError> {
        let item = |pk: String| {
            let mut item = HashMap::from([
                ("pk".to_owned(), s(pk)),
                ("subscription_id".to_owned(), s(&record.id)),
                ("mailbox".to_owned(), s(&record.mailbox)),
                ("account".to_owned(), s(&record.account)),
                ("user".to_owned(), s(&record.user)),
                (
                    "client_state_sha256".to_owned(),
                    s(&record.client_state_sha256),
                ),
                ("resource".to_owned(), s(&record.resource)),
                ("folder".to_owned(), s(&record.folder)),
                ("subscription_expires_at".to_owned(), n(record.expires_at)),
            ]);
            // Graph forgets an expired subscription; the table does a day later (TTL).
            item.insert("expires_at".to_owned(), n(record.expires_at + 24 * 3600));
            item
        };
        let put = |pk: String| {
            Put::builder()
                .table_name(&self.table)
                .set_item(Some(item(pk)))
                .build()
                .map(|p| TransactWriteItem::builder().put(p).build())
        };
        let index = Update::builder()
            .table_name(&self.table)
            .key("pk", s(SUBSCRIPTION_INDEX_KEY))
            .update_expression("ADD mailboxes :name")
            .expression_attribute_values(":name", AttributeValue::Ss(vec![record.mailbox.clone()]))
            .build()
            .map(|u| TransactWriteItem::builder().update(u).build());
        let items = [
            put(subscription_key(&record.id)),
            put(mailbox_subscription_key(&record.mailbox)),
            index,
        ]
        .into_iter()
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| self.error(format!("put subscription#{}", record.id), e))?;
        self.client
            .transact_write_items()
            .set_transact_items(Some(items))
            .send()
            .await
            .map(|_| ())
            .map_err(|e| {
                self.error(
                    format!("put subscription#{}", record.id),
                    e.into_service_error(),
                )
            })
    }

    async fn subscribed_mailboxes(&self) -> Result<Vec<String>, StateError> {
        self.index().await
    }

    async fn delete_subscription(&self, record: &SubscriptionRecord) -> Result<(), StateError> {
        let delete = |pk: String| {
            Delete::builder()
                .table_name(&self.table)
                .key("pk", s(pk))
                .build()
                .map(|d| TransactWriteItem::builder().delete(d).build())
        };
        let mut items = vec![
            delete(subscription_key(&record.id)),
            Update::builder()
                .table_name(&self.table)
                .key("pk", s(SUBSCRIPTION_INDEX_KEY))
                .update_expression("DELETE mailboxes :name")
                .expression_attribute_values(
                    ":name",
                    AttributeValue::Ss(vec![record.mailbox.clone()]),
                )
                .build()
                .map(|u| TransactWriteItem::builder().update(u).build()),
        ];
        // The pointer only while it still names this subscription (a newer one may replace it).
        items.push(
            Delete::builder()
                .table_name(&self.table)
                .key("pk", s(mailbox_subscription_key(&record.mailbox)))
                .condition_expression("attribute_not_exists(pk) OR subscription_id = :id")
                .expression_attribute_values(":id", s(&record.id))
                .build()
                .map(|d| TransactWriteItem::builder().delete(d).build()),
        );
        let items = items
            .into_iter()
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| self.error(format!("delete subscription#{}", record.id), e))?;
        match self
            .client
            .transact_write_items()
            .set_transact_items(Some(items))
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e) => {
                let e = e.into_service_error();
                if e.is_transaction_canceled_exception() {
                    // the pointer names a newer subscription (the index keeps the mailbox):
                    // remove this one's record alone
                    return self
                        .client
                        .delete_item()
                        .table_name(&self.table)
                        .key("pk", s(subscription_key(&record.id)))
                        .send()
                        .await
                        .map(|_| ())
                        .map_err(|e| {
                            self.error(
                                format!("delete subscription#{}", record.id),
                                e.into_service_error(),
                            )
                        });
                }
                Err(self.error(format!("delete subscription#{}", record.id), e))
            }
        }
    }
}

impl DynamoPushStore {
    async fn index(&self) -> Result<Vec<String>, StateError> {
        let mut names: Vec<String> = self
            .get(SUBSCRIPTION_INDEX_KEY)
            .await?
            .and_then(|item| item.get("mailboxes").and_then(|v| v.as_ss().ok()).cloned())
            .unwrap_or_default();
        names.sort();
        Ok(names)
    }
}

#[async_trait]
impl PollGate for DynamoPushStore {
    async fn arm(&self, mailbox: &str) -> Result<bool, StateError> {
        let now = chrono::Utc::now().timestamp();
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(poll_request_key(mailbox)))
            .update_expression("SET queued_at = :now, expires_at = :expires")
            .condition_expression("attribute_not_exists(queued_at) OR queued_at < :stale")
            .expression_attribute_values(":now", n(now))
            .expression_attribute_values(":stale", n(now - GATE_STALE_AFTER))
            // the item itself goes a day after its last use
            .expression_attribute_values(":expires", n(now + 24 * 3600))
            .send()
            .await;
        match result {
            Ok(_) => Ok(true),
            Err(e) => {
                let e = e.into_service_error();
                if e.is_conditional_check_failed_exception() {
                    Ok(false)
                } else {
                    Err(self.error(format!("arm poll-request#{mailbox}"), e))
                }
            }
        }
    }

    async fn disarm(&self, mailbox: &str) -> Result<(), StateError> {
        self.client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(poll_request_key(mailbox)))
            .update_expression("REMOVE queued_at")
            .condition_expression("attribute_exists(pk)")
            .send()
            .await
            .map(|_| ())
            .or_else(|e| {
                let e = e.into_service_error();
                if e.is_conditional_check_failed_exception() {
                    Ok(())
                } else {
                    Err(self.error(format!("disarm poll-request#{mailbox}"), e))
                }
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_state_is_checked_against_its_hash() {
        let secret = new_client_state();
        assert!(secret.len() <= MAX_CLIENT_STATE_CHARS);
        assert_eq!(secret.len(), 43);
        let hash = client_state_sha256(&secret);
        assert!(client_state_matches(&hash, &secret));
        assert!(!client_state_matches(&hash, &format!("{secret}x")));
        assert!(!client_state_matches(&hash, ""));
        assert!(!client_state_matches("not hex", &secret));
        assert_ne!(new_client_state(), secret);
    }

    #[test]
    fn poll_request_messages_round_trip() {
        let plain = PollRequestMessage {
            mailbox: "helpdesk".into(),
            lifecycle: None,
            subscription_id: None,
        };
        let json = serde_json::to_string(&plain).unwrap();
        assert_eq!(json, r#"{"mailbox":"helpdesk"}"#);
        let removed: PollRequestMessage = serde_json::from_str(
            r#"{"mailbox":"m","lifecycle":"subscriptionRemoved","subscription_id":"s"}"#,
        )
        .unwrap();
        assert_eq!(removed.lifecycle, Some(LifecycleEvent::SubscriptionRemoved));
        assert!(serde_json::from_str::<PollRequestMessage>(r#"{"mailbox":"m","x":1}"#).is_err());
    }
}
