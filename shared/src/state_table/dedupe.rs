//! Dedupe records, `mail#<mailbox>#<hash>`: which mails already became tickets
//! ([`DedupeRecord`], with a TTL).

use std::collections::HashMap;
use std::time::Duration;

use aws_sdk_dynamodb::types::{AttributeValue, KeysAndAttributes, PutRequest, WriteRequest};
use serde::{Deserialize, Serialize};

use super::item::{Item, item_from, item_to, sdk_err, store_err};
use super::{DynamoStateStore, StoreError};

/// A dedupe record: this mail already became a ticket.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DedupeRecord {
    /// `mail#<mailbox>#<hash>`.
    pub pk: String,
    /// The ticket id the API returned, if any.
    pub ticket_id: Option<String>,
    /// Message-ID, if the mail had one.
    pub message_id: Option<String>,
    /// UIDVALIDITY and UID it had when ticketed (for diagnostics).
    pub uid_validity: u32,
    /// UID when ticketed.
    pub uid: u32,
    /// When (RFC 3339).
    pub created_at: String,
    /// TTL (epoch seconds).
    pub expires_at: i64,
}

impl DynamoStateStore {
    pub(super) async fn read_dedupe(&self, pk: &str) -> Result<Option<DedupeRecord>, StoreError> {
        let item = self.get("GetItem dedupe", pk).await?;
        Ok(item.as_ref().and_then(item_to))
    }

    pub(super) async fn write_dedupe(&self, record: &DedupeRecord) -> Result<(), StoreError> {
        self.client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item_from(&record.pk, record)))
            .send()
            .await
            .map_err(|e| sdk_err("PutItem dedupe", e))?;
        Ok(())
    }

    /// The dedupe records of `pks` that exist, by `pk`: `BatchGetItem` (strongly consistent),
    /// 100 keys per call, unprocessed keys asked again.
    pub(super) async fn read_dedupes(
        &self,
        pks: &[String],
    ) -> Result<HashMap<String, DedupeRecord>, StoreError> {
        let mut found = HashMap::new();
        for chunk in pks.chunks(100) {
            let keys: Vec<Item> = chunk
                .iter()
                .map(|pk| HashMap::from([("pk".to_string(), AttributeValue::S(pk.clone()))]))
                .collect();
            let mut request = Some(
                KeysAndAttributes::builder()
                    .set_keys(Some(keys))
                    .consistent_read(true)
                    .build()
                    .map_err(|e| store_err("BatchGetItem dedupe", e))?,
            );
            let mut attempt = 0;
            while let Some(keys) = request.take() {
                let output = self
                    .client
                    .batch_get_item()
                    .request_items(&self.table, keys)
                    .send()
                    .await
                    .map_err(|e| sdk_err("BatchGetItem dedupe", e))?;
                for item in output
                    .responses
                    .unwrap_or_default()
                    .remove(&self.table)
                    .unwrap_or_default()
                {
                    if let Some(record) = item_to::<DedupeRecord>(&item) {
                        found.insert(record.pk.clone(), record);
                    }
                }
                request = output
                    .unprocessed_keys
                    .and_then(|mut u| u.remove(&self.table))
                    .filter(|rest| !rest.keys().is_empty());
                if request.is_some() {
                    attempt += 1;
                    if attempt > 8 {
                        return Err(store_err(
                            "BatchGetItem dedupe",
                            "keys left unprocessed after 8 attempts (throttled)",
                        ));
                    }
                    tokio::time::sleep(Duration::from_millis(50 << attempt.min(4))).await;
                }
            }
        }
        Ok(found)
    }

    /// Write dedupe records: `BatchWriteItem`, 25 per call, unprocessed items written again.
    pub(super) async fn write_dedupes(&self, records: &[DedupeRecord]) -> Result<(), StoreError> {
        if let [one] = records {
            return self.write_dedupe(one).await;
        }
        // 25 items per BatchWriteItem (DynamoDB's limit); the chunks side by side.
        futures::future::try_join_all(
            records
                .chunks(25)
                .map(|chunk| self.write_dedupe_chunk(chunk)),
        )
        .await?;
        Ok(())
    }

    async fn write_dedupe_chunk(&self, chunk: &[DedupeRecord]) -> Result<(), StoreError> {
        let mut requests: Vec<WriteRequest> = chunk
            .iter()
            .map(|record| {
                PutRequest::builder()
                    .set_item(Some(item_from(&record.pk, record)))
                    .build()
                    .map(|put| WriteRequest::builder().put_request(put).build())
                    .map_err(|e| store_err("BatchWriteItem dedupe", e))
            })
            .collect::<Result<_, _>>()?;
        let mut attempt = 0;
        while !requests.is_empty() {
            let output = self
                .client
                .batch_write_item()
                .request_items(&self.table, requests)
                .send()
                .await
                .map_err(|e| sdk_err("BatchWriteItem dedupe", e))?;
            requests = output
                .unprocessed_items
                .and_then(|mut u| u.remove(&self.table))
                .unwrap_or_default();
            if !requests.is_empty() {
                attempt += 1;
                if attempt > 8 {
                    return Err(store_err(
                        "BatchWriteItem dedupe",
                        "items left unprocessed after 8 attempts (throttled)",
                    ));
                }
                tokio::time::sleep(Duration::from_millis(50 << attempt.min(4))).await;
            }
        }
        Ok(())
    }
}
