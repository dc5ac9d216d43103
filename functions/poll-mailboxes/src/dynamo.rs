//! The state table adapter (DynamoDB): dedupe records, mailbox status, mailbox configuration.
//!
//! Items (partition key `pk`, TTL attribute `expires_at`):
//! - `mailbox#<name>`: one mailbox's configuration, one attribute per field (see docs/mailboxes.md).
//! - `mailbox-index`: attribute `names` (string set) listing the configured mailboxes, so a run
//!   reads the list with one `GetItem` and the configs with `BatchGetItem` (100 per call) instead
//!   of scanning a table that also holds every dedupe record. [`put_mailbox_config`] and
//!   [`delete_mailbox_config`] keep both in one transaction (the CLI uses them).
//! - `mailbox-status#<name>`: the last run's outcome ([`MailboxStatus`]). A warm process
//!   remembers the last status (it reads one from the table only once), and an idle run whose
//!   status differs from the last written one only in timing fields (`last_run_at`,
//!   `duration_ms`, `imap_round_trips`, `last_success_at`) is written at most every
//!   [`STATUS_HEARTBEAT`]. Without that, 50 mailboxes polled every minute cost ~2.2 M status
//!   writes and reads a month. The heartbeat metric comes from the remembered status, so it is
//!   exact; the table's `last_success_at` may lag by up to [`STATUS_HEARTBEAT`].
//! - `mail#<mailbox>#<hash>`: dedupe records ([`DedupeRecord`]) with a TTL.
//! - `mail#<mailbox>#sender#<hash of the address>#<YYYYMMDDHH>`: the per-sender quota's count
//!   for one clock hour (attribute `mails`), expiring an hour after it.
//! - `mailbox-lease#<name>`: which run is working on a mailbox that has mail, since and until
//!   when (`lease_token`, `started_at`, `lease_expires_at`); taken only when a search found
//!   mail, so idle runs cost no write. Deleted when the run ends; a run that was killed leaves
//!   it behind, which is how `mailbridge status` can tell a run that never reported
//!   ([`DynamoStateStore::get_mailbox_lease`]). While the run reads a mail, `in_flight_uid` /
//!   `in_flight_uid_validity` name it, so a lease taken over with these still set names the
//!   mail a killed run was reading (the next run parks it unread).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::types::{AttributeValue, KeysAndAttributes, Put, TransactWriteItem, Update};
use mailbridge::aws::LazyClient;

use crate::config::{ConfigError, MailboxConfig};
use crate::ports::{
    DedupeRecord, InFlightMail, LeaseRecord, MailboxLease, MailboxStatus, StateStore, StoreError,
};

/// Partition key of the mailbox index item.
pub const MAILBOX_INDEX_KEY: &str = "mailbox-index";

/// An idle mailbox's unchanged status is rewritten at least this often, so `last_run_at` in
/// the table (what `mailbridge status` shows) is at most this old while the poller runs.
pub const STATUS_HEARTBEAT: Duration = Duration::from_secs(600);

/// Per mailbox: the status this process last wrote (with when) or read (no time).
type StatusCache = Arc<Mutex<HashMap<String, (MailboxStatus, Option<Instant>)>>>;

/// DynamoDB-backed [`StateStore`].
#[derive(Clone, Debug)]
pub struct DynamoStateStore {
    client: LazyClient<Client>,
    table: String,
    statuses: StatusCache,
    targets: Option<crate::targets::TargetPolicy>,
}

impl DynamoStateStore {
    /// Use `table` through `client` (a client, or a [`LazyClient`] built on first use).
    pub fn new(client: impl Into<LazyClient<Client>>, table: impl Into<String>) -> Self {
        DynamoStateStore {
            client: client.into(),
            table: table.into(),
            statuses: Arc::default(),
            targets: None,
        }
    }

    /// Also refuse, on every read, configurations that point where `targets` does not allow
    /// (the operator CLI reads through this; the poll loop checks them itself).
    pub fn with_targets(mut self, targets: crate::targets::TargetPolicy) -> Self {
        self.targets = Some(targets);
        self
    }
}

/// Whether `new` says nothing `old` did not, apart from the timing of the run.
fn same_news(old: &MailboxStatus, new: &MailboxStatus) -> bool {
    let timeless = |s: &MailboxStatus| MailboxStatus {
        last_run_at: String::new(),
        duration_ms: 0,
        imap_round_trips: 0,
        last_success_at: None,
        ..s.clone()
    };
    timeless(old) == timeless(new)
}

fn store_err(operation: &'static str, e: impl std::fmt::Display) -> StoreError {
    StoreError {
        operation,
        detail: e.to_string(),
    }
}

fn sdk_err<E, R>(operation: &'static str, e: aws_sdk_dynamodb::error::SdkError<E, R>) -> StoreError
where
    E: std::error::Error + 'static,
    R: std::fmt::Debug,
{
    use std::error::Error as _;
    let mut detail = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        detail.push_str(": ");
        detail.push_str(&s.to_string());
        source = s.source();
    }
    StoreError { operation, detail }
}

/// DynamoDB attribute → JSON (S, N, BOOL, NULL, M, L, SS, NS).
pub fn attr_to_json(value: &AttributeValue) -> serde_json::Value {
    match value {
        AttributeValue::S(s) => serde_json::Value::String(s.clone()),
        AttributeValue::N(n) => serde_json::from_str::<serde_json::Number>(n)
            .map(serde_json::Value::Number)
            .unwrap_or_else(|_| serde_json::Value::String(n.clone())),
        AttributeValue::Bool(b) => serde_json::Value::Bool(*b),
        AttributeValue::Null(_) => serde_json::Value::Null,
        AttributeValue::M(m) => serde_json::Value::Object(
            m.iter()
                .map(|(k, v)| (k.clone(), attr_to_json(v)))
                .collect(),
        ),
        AttributeValue::L(l) => serde_json::Value::Array(l.iter().map(attr_to_json).collect()),
        AttributeValue::Ss(ss) => {
            serde_json::Value::Array(ss.iter().cloned().map(serde_json::Value::String).collect())
        }
        AttributeValue::Ns(ns) => {
            serde_json::Value::Array(ns.iter().cloned().map(serde_json::Value::String).collect())
        }
        _ => serde_json::Value::Null,
    }
}

/// JSON → DynamoDB attribute.
pub fn json_to_attr(value: &serde_json::Value) -> AttributeValue {
    match value {
        serde_json::Value::Null => AttributeValue::Null(true),
        serde_json::Value::Bool(b) => AttributeValue::Bool(*b),
        serde_json::Value::Number(n) => AttributeValue::N(n.to_string()),
        serde_json::Value::String(s) => AttributeValue::S(s.clone()),
        serde_json::Value::Array(a) => AttributeValue::L(a.iter().map(json_to_attr).collect()),
        serde_json::Value::Object(o) => AttributeValue::M(
            o.iter()
                .map(|(k, v)| (k.clone(), json_to_attr(v)))
                .collect(),
        ),
    }
}

fn item_from<T: serde::Serialize>(pk: &str, value: &T) -> HashMap<String, AttributeValue> {
    let mut item: HashMap<String, AttributeValue> = match serde_json::to_value(value) {
        Ok(serde_json::Value::Object(o)) => o
            .iter()
            .filter(|(_, v)| !v.is_null())
            .map(|(k, v)| (k.clone(), json_to_attr(v)))
            .collect(),
        _ => HashMap::new(),
    };
    item.insert("pk".into(), AttributeValue::S(pk.to_string()));
    item
}

fn item_to<T: serde::de::DeserializeOwned>(item: &HashMap<String, AttributeValue>) -> Option<T> {
    let object: serde_json::Map<String, serde_json::Value> = item
        .iter()
        .map(|(k, v)| (k.clone(), attr_to_json(v)))
        .collect();
    serde_json::from_value(serde_json::Value::Object(object)).ok()
}

impl DynamoStateStore {
    async fn get(
        &self,
        operation: &'static str,
        pk: &str,
    ) -> Result<Option<HashMap<String, AttributeValue>>, StoreError> {
        let output = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("pk", AttributeValue::S(pk.to_string()))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| sdk_err(operation, e))?;
        Ok(output.item)
    }

    /// The mailbox's lease item, if one is stored: a run working on the mailbox now, or one
    /// that never ended properly (killed, timed out) and left it behind (kept a day past its
    /// end, then removed by TTL). Released leases are deleted.
    pub async fn get_mailbox_lease(
        &self,
        mailbox: &str,
    ) -> Result<Option<LeaseRecord>, StoreError> {
        let item = self
            .get("GetItem mailbox-lease", &format!("mailbox-lease#{mailbox}"))
            .await?;
        Ok(item.map(|item| LeaseRecord {
            started_at: item.get("started_at").and_then(|v| v.as_s().ok()).cloned(),
            until: item
                .get("lease_expires_at")
                .and_then(|v| v.as_n().ok())
                .and_then(|n| n.parse().ok())
                .unwrap_or(0),
        }))
    }

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
}

#[async_trait]
impl StateStore for DynamoStateStore {
    async fn acquire_mailbox_lease(
        &self,
        mailbox: &str,
        until: i64,
    ) -> Result<MailboxLease, StoreError> {
        let pk = format!("mailbox-lease#{mailbox}");
        let token = uuid::Uuid::new_v4().to_string();
        let now = chrono::Utc::now().timestamp();
        let put = self
            .client
            .put_item()
            .table_name(&self.table)
            .item("pk", AttributeValue::S(pk.clone()))
            .item("lease_token", AttributeValue::S(token.clone()))
            .item("lease_expires_at", AttributeValue::N(until.to_string()))
            .item(
                "started_at",
                AttributeValue::S(chrono::Utc::now().to_rfc3339()),
            )
            // a day for inspection, then TTL
            .item(
                "expires_at",
                AttributeValue::N((until + 86_400).to_string()),
            )
            .condition_expression("attribute_not_exists(pk) OR lease_expires_at < :now")
            .expression_attribute_values(":now", AttributeValue::N(now.to_string()))
            .return_values(aws_sdk_dynamodb::types::ReturnValue::AllOld)
            .send()
            .await;
        match put {
            Ok(output) => {
                let old = output.attributes.unwrap_or_default();
                let number =
                    |name: &str| -> Option<u32> { old.get(name)?.as_n().ok()?.parse().ok() };
                let interrupted = match (number("in_flight_uid_validity"), number("in_flight_uid"))
                {
                    (Some(uid_validity), Some(uid)) => Some(InFlightMail { uid_validity, uid }),
                    _ => None,
                };
                Ok(MailboxLease::Acquired { token, interrupted })
            }
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_conditional_check_failed_exception()) =>
            {
                let held = self.get("GetItem mailbox-lease", &pk).await?;
                let until = held
                    .as_ref()
                    .and_then(|i| i.get("lease_expires_at"))
                    .and_then(|v| v.as_n().ok())
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(now);
                Ok(MailboxLease::Held(until))
            }
            Err(e) => Err(sdk_err("PutItem mailbox-lease", e)),
        }
    }

    async fn release_mailbox_lease(&self, mailbox: &str, token: &str) -> Result<(), StoreError> {
        let deleted = self
            .client
            .delete_item()
            .table_name(&self.table)
            .key("pk", AttributeValue::S(format!("mailbox-lease#{mailbox}")))
            .condition_expression("lease_token = :token")
            .expression_attribute_values(":token", AttributeValue::S(token.to_string()))
            .send()
            .await;
        match deleted {
            Ok(_) => Ok(()),
            // taken over after it ran out, or gone: nothing of ours to drop
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_conditional_check_failed_exception()) =>
            {
                Ok(())
            }
            Err(e) => Err(sdk_err("DeleteItem mailbox-lease", e)),
        }
    }

    async fn mark_in_flight(
        &self,
        mailbox: &str,
        token: &str,
        mail: InFlightMail,
    ) -> Result<(), StoreError> {
        self.client
            .update_item()
            .table_name(&self.table)
            .key("pk", AttributeValue::S(format!("mailbox-lease#{mailbox}")))
            .update_expression("SET in_flight_uid = :uid, in_flight_uid_validity = :validity")
            .condition_expression("lease_token = :token")
            .expression_attribute_values(":uid", AttributeValue::N(mail.uid.to_string()))
            .expression_attribute_values(
                ":validity",
                AttributeValue::N(mail.uid_validity.to_string()),
            )
            .expression_attribute_values(":token", AttributeValue::S(token.to_string()))
            .send()
            .await
            .map_err(|e| sdk_err("UpdateItem mailbox-lease (in flight)", e))?;
        Ok(())
    }

    async fn get_dedupe(&self, pk: &str) -> Result<Option<DedupeRecord>, StoreError> {
        let item = self.get("GetItem dedupe", pk).await?;
        Ok(item.as_ref().and_then(item_to))
    }

    async fn put_dedupe(&self, record: &DedupeRecord) -> Result<(), StoreError> {
        self.client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item_from(&record.pk, record)))
            .send()
            .await
            .map_err(|e| sdk_err("PutItem dedupe", e))?;
        Ok(())
    }

    async fn take_sender_quota(
        &self,
        pk: &str,
        max: u32,
        expires_at: i64,
    ) -> Result<bool, StoreError> {
        let counted = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", AttributeValue::S(pk.to_string()))
            .update_expression("ADD mails :one SET expires_at = :expires")
            .condition_expression("attribute_not_exists(mails) OR mails < :max")
            .expression_attribute_values(":one", AttributeValue::N("1".into()))
            .expression_attribute_values(":max", AttributeValue::N(max.to_string()))
            .expression_attribute_values(":expires", AttributeValue::N(expires_at.to_string()))
            .send()
            .await;
        match counted {
            Ok(_) => Ok(true),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_conditional_check_failed_exception()) =>
            {
                Ok(false)
            }
            Err(e) => Err(sdk_err("UpdateItem sender quota", e)),
        }
    }

    async fn get_status(&self, mailbox: &str) -> Result<Option<MailboxStatus>, StoreError> {
        if let Some((status, _)) = self.statuses.lock().expect("status cache").get(mailbox) {
            return Ok(Some(status.clone()));
        }
        let item = self
            .get(
                "GetItem mailbox-status",
                &format!("mailbox-status#{mailbox}"),
            )
            .await?;
        let status: Option<MailboxStatus> = item.as_ref().and_then(item_to);
        if let Some(status) = &status {
            self.statuses
                .lock()
                .expect("status cache")
                .insert(mailbox.to_string(), (status.clone(), None));
        }
        Ok(status)
    }

    async fn put_status(&self, status: &MailboxStatus) -> Result<(), StoreError> {
        {
            let mut statuses = self.statuses.lock().expect("status cache");
            if let Some((written, Some(at))) = statuses.get_mut(&status.mailbox)
                && at.elapsed() < STATUS_HEARTBEAT
                && same_news(written, status)
            {
                // Not written, but remembered (with the time of the last write): the next
                // run carries over its history fields.
                *written = status.clone();
                return Ok(());
            }
        }
        self.client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item_from(
                &format!("mailbox-status#{}", status.mailbox),
                status,
            )))
            .send()
            .await
            .map_err(|e| sdk_err("PutItem mailbox-status", e))?;
        self.statuses.lock().expect("status cache").insert(
            status.mailbox.clone(),
            (status.clone(), Some(Instant::now())),
        );
        Ok(())
    }

    async fn load_mailboxes(
        &self,
        names: Option<&[String]>,
    ) -> Result<Vec<Result<MailboxConfig, ConfigError>>, StoreError> {
        let names: Vec<String> = match names {
            Some(names) => names.to_vec(),
            None => self.mailbox_names().await?,
        };
        let mut found: HashMap<String, HashMap<String, AttributeValue>> = HashMap::new();
        for chunk in names.chunks(100) {
            let keys: Vec<HashMap<String, AttributeValue>> = chunk
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
                    let object: serde_json::Map<String, serde_json::Value> = item
                        .iter()
                        .map(|(k, v)| (k.clone(), attr_to_json(v)))
                        .collect();
                    let config =
                        MailboxConfig::from_json(name, &serde_json::Value::Object(object))?;
                    if let Some(targets) = &self.targets {
                        targets.check(&config)?;
                    }
                    Ok(config)
                }
            })
            .collect())
    }
}

/// The Graph sync state of a mailbox: item `graph-sync#<mailbox>`, the state as one JSON string
/// (`state`).
#[async_trait::async_trait]
impl crate::graph_adapter::GraphSyncStore for DynamoStateStore {
    async fn get_graph_sync(
        &self,
        mailbox: &str,
    ) -> Result<Option<crate::graph_adapter::GraphSyncState>, StoreError> {
        let item = self
            .get("GetItem graph-sync", &format!("graph-sync#{mailbox}"))
            .await?;
        match item.as_ref().and_then(|i| i.get("state")) {
            Some(AttributeValue::S(json)) => serde_json::from_str(json)
                .map(Some)
                .map_err(|e| store_err("GetItem graph-sync", format!("unreadable state: {e}"))),
            _ => Ok(None),
        }
    }

    async fn put_graph_sync(
        &self,
        mailbox: &str,
        state: &crate::graph_adapter::GraphSyncState,
    ) -> Result<(), StoreError> {
        let json = serde_json::to_string(state).map_err(|e| store_err("PutItem graph-sync", e))?;
        self.client
            .put_item()
            .table_name(&self.table)
            .item("pk", AttributeValue::S(format!("graph-sync#{mailbox}")))
            .item("state", AttributeValue::S(json))
            .send()
            .await
            .map_err(|e| sdk_err("PutItem graph-sync", e))?;
        Ok(())
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
    targets: &crate::targets::TargetPolicy,
) -> Result<MailboxConfig, PutConfigError> {
    let config = MailboxConfig::from_json(name, fields).map_err(PutConfigError::Invalid)?;
    targets.check(&config).map_err(PutConfigError::Invalid)?;
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
        .map_err(|e| PutConfigError::Store(store_err("TransactWriteItems", e)))?;
    let index = Update::builder()
        .table_name(table)
        .key("pk", AttributeValue::S(MAILBOX_INDEX_KEY.into()))
        .update_expression("ADD #names :name")
        .expression_attribute_names("#names", "names")
        .expression_attribute_values(":name", AttributeValue::Ss(vec![name.to_string()]))
        .build()
        .map_err(|e| PutConfigError::Store(store_err("TransactWriteItems", e)))?;
    client
        .transact_write_items()
        .transact_items(TransactWriteItem::builder().put(put).build())
        .transact_items(TransactWriteItem::builder().update(index).build())
        .send()
        .await
        .map_err(|e| PutConfigError::Store(sdk_err("TransactWriteItems mailbox", e)))?;
    Ok(config)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_timing_fields_make_an_idle_status_the_same_news() {
        let idle = MailboxStatus {
            mailbox: "m".into(),
            outcome: "ok".into(),
            reason: None,
            last_run_at: "2026-11-28T00:00:00Z".into(),
            duration_ms: 5,
            tickets_created: 0,
            parked: 0,
            duplicates: 0,
            skipped_auto_generated: 0,
            held: 0,
            deferred: 0,
            uid_validity: Some(7),
            imap_round_trips: 5,
            retry_last_uids: Vec::new(),
            last_success_at: None,
            first_run_at: None,
        };
        let later = MailboxStatus {
            last_run_at: "2026-11-28T00:01:00Z".into(),
            duration_ms: 9,
            imap_round_trips: 6,
            ..idle.clone()
        };
        assert!(same_news(&idle, &later));
        let ticket = MailboxStatus {
            tickets_created: 1,
            ..later.clone()
        };
        assert!(!same_news(&idle, &ticket));
        let failed = MailboxStatus {
            outcome: "failed".into(),
            reason: Some("connect".into()),
            ..later
        };
        assert!(!same_news(&idle, &failed));
    }

    #[test]
    fn status_round_trips_through_attributes() {
        let status = MailboxStatus {
            mailbox: "m".into(),
            outcome: "ok".into(),
            reason: None,
            last_run_at: "2026-11-28T00:00:00Z".into(),
            duration_ms: 5,
            tickets_created: 2,
            parked: 0,
            duplicates: 1,
            skipped_auto_generated: 0,
            held: 0,
            deferred: 0,
            uid_validity: Some(7),
            imap_round_trips: 9,
            retry_last_uids: vec![3],
            last_success_at: Some("2026-11-27T23:55:00Z".into()),
            first_run_at: Some("2026-11-01T08:00:00Z".into()),
        };
        let item = item_from("mailbox-status#m", &status);
        assert_eq!(
            item.get("pk"),
            Some(&AttributeValue::S("mailbox-status#m".into()))
        );
        let back: MailboxStatus = item_to(&item).unwrap();
        assert_eq!(back, status);
    }
}
