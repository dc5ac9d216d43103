//! Graph subscriptions (docs/push.md), three items written and deleted together (one
//! transaction):
//!
//! - `subscription#<id>`: one subscription ([`SubscriptionRecord`]): the mailbox it is for, the
//!   SHA-256 of its `clientState` secret (the secret itself is stored nowhere: only Graph and
//!   the hash know it), the subscribed resource and when it expires. The notification receiver
//!   reads these, and nothing else.
//! - `mailbox-subscription#<mailbox>`: the same record under the mailbox's name, so the poller
//!   finds it by mailbox.
//! - `subscription-index` (string set `mailboxes`): the mailboxes that have one, so a scheduled
//!   run finds the subscriptions of removed mailboxes.

use async_trait::async_trait;
use aws_sdk_dynamodb::types::{AttributeValue, Delete, Put, TransactWriteItem, Update};
use serde::{Deserialize, Serialize};

use super::item::{Item, item_from, item_to, n, s, store_err_in};
use super::{DynamoStateStore, StoreError};

/// One Graph subscription, as the state table keeps it (its serde form is the item's
/// attributes).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubscriptionRecord {
    /// Graph's subscription id.
    #[serde(rename = "subscription_id")]
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
    #[serde(default)]
    pub folder: String,
    /// When Graph ends it unless renewed (epoch seconds). The item's `expires_at` is the
    /// table's TTL, a day later.
    #[serde(rename = "subscription_expires_at")]
    pub expires_at: i64,
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

/// Port: the subscription records.
#[async_trait]
pub trait SubscriptionStore: Send + Sync {
    /// The record of subscription `id`, if there is one.
    async fn subscription(&self, id: &str) -> Result<Option<SubscriptionRecord>, StoreError>;
    /// The record of `mailbox`'s subscription, if it has one.
    async fn subscription_of(
        &self,
        mailbox: &str,
    ) -> Result<Option<SubscriptionRecord>, StoreError>;
    /// Store (or replace) a record and its mailbox pointer.
    async fn put_subscription(&self, record: &SubscriptionRecord) -> Result<(), StoreError>;
    /// Remove a record and its mailbox pointer.
    async fn delete_subscription(&self, record: &SubscriptionRecord) -> Result<(), StoreError>;
    /// The mailboxes that have a subscription record.
    async fn subscribed_mailboxes(&self) -> Result<Vec<String>, StoreError>;
}

impl DynamoStateStore {
    /// One subscription item by `pk`, read consistently.
    async fn subscription_item(&self, pk: &str) -> Result<Option<Item>, StoreError> {
        self.read_item(pk)
            .await
            .map_err(|e| store_err_in(&self.table, format!("get {pk}"), e.into_service_error()))
    }
}

/// The item of `record` under `pk`.
fn item_of(pk: &str, record: &SubscriptionRecord) -> Item {
    let mut item = item_from(pk, record);
    // Graph forgets an expired subscription; the table does a day later (TTL).
    item.insert("expires_at".to_owned(), n(record.expires_at + 24 * 3600));
    item
}

#[async_trait]
impl SubscriptionStore for DynamoStateStore {
    async fn subscription(&self, id: &str) -> Result<Option<SubscriptionRecord>, StoreError> {
        Ok(self
            .subscription_item(&subscription_key(id))
            .await?
            .as_ref()
            .and_then(item_to))
    }

    async fn subscription_of(
        &self,
        mailbox: &str,
    ) -> Result<Option<SubscriptionRecord>, StoreError> {
        Ok(self
            .subscription_item(&mailbox_subscription_key(mailbox))
            .await?
            .as_ref()
            .and_then(item_to))
    }

    async fn put_subscription(&self, record: &SubscriptionRecord) -> Result<(), StoreError> {
        let operation = || format!("put subscription#{}", record.id);
        let put = |pk: String| {
            Put::builder()
                .table_name(&self.table)
                .set_item(Some(item_of(&pk, record)))
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
        .map_err(|e| store_err_in(&self.table, operation(), e))?;
        self.client
            .transact_write_items()
            .set_transact_items(Some(items))
            .send()
            .await
            .map(|_| ())
            .map_err(|e| store_err_in(&self.table, operation(), e.into_service_error()))
    }

    async fn subscribed_mailboxes(&self) -> Result<Vec<String>, StoreError> {
        let mut names: Vec<String> = self
            .subscription_item(SUBSCRIPTION_INDEX_KEY)
            .await?
            .and_then(|item| item.get("mailboxes").and_then(|v| v.as_ss().ok()).cloned())
            .unwrap_or_default();
        names.sort();
        Ok(names)
    }

    async fn delete_subscription(&self, record: &SubscriptionRecord) -> Result<(), StoreError> {
        let operation = || format!("delete subscription#{}", record.id);
        let items = [
            Delete::builder()
                .table_name(&self.table)
                .key("pk", s(subscription_key(&record.id)))
                .build()
                .map(|d| TransactWriteItem::builder().delete(d).build()),
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
            // The pointer only while it still names this subscription (a newer one may replace
            // it).
            Delete::builder()
                .table_name(&self.table)
                .key("pk", s(mailbox_subscription_key(&record.mailbox)))
                .condition_expression("attribute_not_exists(pk) OR subscription_id = :id")
                .expression_attribute_values(":id", s(&record.id))
                .build()
                .map(|d| TransactWriteItem::builder().delete(d).build()),
        ]
        .into_iter()
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| store_err_in(&self.table, operation(), e))?;
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
                            store_err_in(&self.table, operation(), e.into_service_error())
                        });
                }
                Err(store_err_in(&self.table, operation(), e))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The attributes (names and types) the records had before they were serde types: items
    /// already in the table still read, new ones are written the same.
    #[test]
    fn records_keep_their_attributes() {
        let record = SubscriptionRecord {
            id: "sub-1".into(),
            mailbox: "helpdesk".into(),
            account: "contoso".into(),
            user: "helpdesk@contoso.com".into(),
            client_state_sha256: "ab".repeat(32),
            resource: "/users/helpdesk@contoso.com/mailFolders('inbox')/messages".into(),
            folder: "INBOX".into(),
            expires_at: 1_800_000_000,
        };
        let item = &item_of("subscription#sub-1", &record);
        let expected: Item = [
            ("pk", s("subscription#sub-1")),
            ("subscription_id", s("sub-1")),
            ("mailbox", s("helpdesk")),
            ("account", s("contoso")),
            ("user", s("helpdesk@contoso.com")),
            ("client_state_sha256", s("ab".repeat(32))),
            ("resource", s(&record.resource)),
            ("folder", s("INBOX")),
            ("subscription_expires_at", n(1_800_000_000)),
            ("expires_at", n(1_800_086_400)),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        assert_eq!(item, &expected);
        assert_eq!(item_to::<SubscriptionRecord>(item), Some(record.clone()));
        // written before `folder` was kept
        let mut old = expected.clone();
        old.remove("folder");
        assert_eq!(
            item_to::<SubscriptionRecord>(&old),
            Some(SubscriptionRecord {
                folder: String::new(),
                ..record
            })
        );
        old.remove("subscription_expires_at");
        assert_eq!(item_to::<SubscriptionRecord>(&old), None);
    }
}
