//! Mailbox configurations: `mailbox#<name>` (one attribute per field of the mailbox, see
//! docs/mailboxes.md) and `mailbox-index` (attribute `names`, a string set listing the configured
//! mailboxes), so a run reads the list with one `GetItem` and the configs with `BatchGetItem`
//! (100 per call) instead of scanning a table that also holds every dedupe record.
//! [`put_mailbox_config`] and [`delete_mailbox_config`] keep both in one transaction (the CLI
//! uses them).

use std::collections::HashMap;

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::types::{AttributeValue, KeysAndAttributes, Put, TransactWriteItem, Update};

use super::item::{Item, item_to_json, json_to_attr, sdk_err, store_err};
use super::{DynamoStateStore, StoreError};
use crate::mailbox::{ConfigError, MailboxConfig, TargetPolicy};

/// Partition key of the mailbox index item.
pub const MAILBOX_INDEX_KEY: &str = "mailbox-index";

impl DynamoStateStore {
    /// Names listed in the mailbox index.
    pub async fn mailbox_names(&self) -> Result<Vec<String>, StoreError> {
        let item = self.get("GetItem mailbox-index", MAILBOX_INDEX_KEY).await?;
        let mut names = match item.as_ref().and_then(|i| i.get("names")) {
            Some(AttributeValue::Ss(names)) => names.clone(),
            Some(AttributeValue::L(list)) => {
                list.iter().filter_map(|v| v.as_s().ok().cloned()).collect()
            }
            _ => Vec::new(),
        };
        names.sort();
        names.dedup();
        Ok(names)
    }

    pub(super) async fn read_mailboxes(
        &self,
        names: Option<&[String]>,
    ) -> Result<Vec<Result<MailboxConfig, ConfigError>>, StoreError> {
        let names: Vec<String> = match names {
            Some(names) => names.to_vec(),
            None => self.mailbox_names().await?,
        };
        let mut found: HashMap<String, Item> = HashMap::new();
        for chunk in names.chunks(100) {
            let keys: Vec<Item> = chunk
                .iter()
                .map(|n| {
                    HashMap::from([("pk".to_string(), AttributeValue::S(format!("mailbox#{n}")))])
                })
                .collect();
            let mut request = KeysAndAttributes::builder()
                .set_keys(Some(keys))
                .consistent_read(true)
                .build()
                .map_err(|e| store_err("BatchGetItem mailbox", e))?;
            for _attempt in 0..8 {
                let output = self
                    .client
                    .batch_get_item()
                    .request_items(&self.table, request.clone())
                    .send()
                    .await
                    .map_err(|e| sdk_err("BatchGetItem mailbox", e))?;
                for item in output
                    .responses
                    .unwrap_or_default()
                    .remove(&self.table)
                    .unwrap_or_default()
                {
                    if let Some(AttributeValue::S(pk)) = item.get("pk")
                        && let Some(name) = pk.strip_prefix("mailbox#")
                    {
                        found.insert(name.to_string(), item);
                    }
                }
                match output
                    .unprocessed_keys
                    .and_then(|mut u| u.remove(&self.table))
                {
                    Some(rest) if !rest.keys().is_empty() => {
                        request = rest;
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    }
                    _ => break,
                }
            }
        }
        Ok(names
            .iter()
            .map(|name| match found.get(name) {
                None => Err(ConfigError {
                    mailbox: name.clone(),
                    field: "(item)".into(),
                    problem: format!("no item mailbox#{name} in the state table"),
                }),
                Some(item) => {
                    let config = MailboxConfig::from_json(name, &item_to_json(item))?;
                    if let Some(targets) = &self.targets {
                        targets.check(&config)?;
                    }
                    Ok(config)
                }
            })
            .collect())
    }
}

/// Add or replace a mailbox configuration (validated first, its hosts checked against
/// `targets`) and list it in the index, atomically. `fields` is the JSON object of the mailbox
/// fields of docs/mailboxes.md.
pub async fn put_mailbox_config(
    client: &Client,
    table: &str,
    name: &str,
    fields: &serde_json::Value,
    targets: &TargetPolicy,
) -> Result<MailboxConfig, PutConfigError> {
    let config = MailboxConfig::from_json(name, fields).map_err(PutConfigError::Invalid)?;
    targets.check(&config).map_err(PutConfigError::Invalid)?;
    write_mailbox_item(client, table, name, fields)
        .await
        .map_err(PutConfigError::Store)?;
    Ok(config)
}

/// Write a mailbox's item and list it in the index, in one transaction.
async fn write_mailbox_item(
    client: &Client,
    table: &str,
    name: &str,
    fields: &serde_json::Value,
) -> Result<(), StoreError> {
    let mut item: HashMap<String, AttributeValue> = fields
        .as_object()
        .map(|o| {
            o.iter()
                .filter(|(k, v)| k.as_str() != "pk" && !v.is_null())
                .map(|(k, v)| (k.clone(), json_to_attr(v)))
                .collect()
        })
        .unwrap_or_default();
    item.insert("pk".into(), AttributeValue::S(format!("mailbox#{name}")));
    item.insert("name".into(), AttributeValue::S(name.to_string()));
    let put = Put::builder()
        .table_name(table)
        .set_item(Some(item))
        .build()
        .map_err(|e| store_err("TransactWriteItems", e))?;
    let index = Update::builder()
        .table_name(table)
        .key("pk", AttributeValue::S(MAILBOX_INDEX_KEY.into()))
        .update_expression("ADD #names :name")
        .expression_attribute_names("#names", "names")
        .expression_attribute_values(":name", AttributeValue::Ss(vec![name.to_string()]))
        .build()
        .map_err(|e| store_err("TransactWriteItems", e))?;
    client
        .transact_write_items()
        .transact_items(TransactWriteItem::builder().put(put).build())
        .transact_items(TransactWriteItem::builder().update(index).build())
        .send()
        .await
        .map_err(|e| sdk_err("TransactWriteItems mailbox", e))?;
    Ok(())
}

/// Remove a mailbox configuration and its index entry.
pub async fn delete_mailbox_config(
    client: &Client,
    table: &str,
    name: &str,
) -> Result<(), StoreError> {
    client
        .delete_item()
        .table_name(table)
        .key("pk", AttributeValue::S(format!("mailbox#{name}")))
        .send()
        .await
        .map_err(|e| sdk_err("DeleteItem mailbox", e))?;
    client
        .update_item()
        .table_name(table)
        .key("pk", AttributeValue::S(MAILBOX_INDEX_KEY.into()))
        .update_expression("DELETE #names :name")
        .expression_attribute_names("#names", "names")
        .expression_attribute_values(":name", AttributeValue::Ss(vec![name.to_string()]))
        .send()
        .await
        .map_err(|e| sdk_err("UpdateItem mailbox-index", e))?;
    Ok(())
}

/// Why a mailbox configuration was not stored.
#[derive(Debug, thiserror::Error)]
pub enum PutConfigError {
    /// It does not validate.
    #[error(transparent)]
    Invalid(ConfigError),
    /// DynamoDB failed.
    #[error(transparent)]
    Store(StoreError),
}
