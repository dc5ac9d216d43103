//! Notification idempotency records (`notification#<id>`), modelled on Powertools' idempotency
//! utility:
//!
//! - [`IdempotencyStore::claim`] writes an `in_progress` record with a lease (conditional put:
//!   only if no record exists, the previous lease ran out, or the record expired). A record that is
//!   `completed` means "already sent": the caller must not send again.
//! - [`IdempotencyStore::complete`] turns it into `completed` with a TTL (default 14 days, the
//!   longest SQS retention, so every redelivery of the same notification finds it).
//! - [`IdempotencyStore::release`] deletes an `in_progress` record we own after a failure that
//!   did not send, so the retry can claim it immediately.
//!
//! Each record carries a hash of the message, so an id reused for a *different* message is told
//! apart from a redelivery ([`Claim::CompletedWithDifferentPayload`]).

use async_trait::async_trait;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use super::StoreError;
use super::item::{Item, get_n, get_s, n, s};
use super::lease::{Taken, give_back, take};

/// The state of an idempotency key after a claim attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Claim {
    /// We hold the lease; go ahead and send. Pass the token to `complete`/`release`.
    Acquired {
        /// Identifies our lease.
        lease_token: String,
    },
    /// We hold the lease, but an earlier attempt claimed this notification and neither
    /// completed nor released it before its lease ran out: it crashed or timed out after the
    /// claim, possibly after Graph accepted the mail. Sending now is right (nothing else will),
    /// but the recipient may get a second copy; callers log and count it.
    Resumed {
        /// Identifies our lease.
        lease_token: String,
        /// When the unfinished attempt's lease ran out (epoch seconds).
        previous_lease_expires_at: i64,
    },
    /// Already sent (a redelivery). Do not send again.
    Completed {
        /// Graph `request-id` of the send that completed it, when recorded.
        graph_request_id: Option<String>,
    },
    /// The same id was sent before with a different message.
    CompletedWithDifferentPayload,
    /// Another invocation holds a live lease (it may be sending right now).
    InProgress {
        /// When that lease runs out (epoch seconds).
        lease_expires_at: i64,
    },
}

/// Port: idempotency records for notifications.
#[async_trait]
pub trait IdempotencyStore: Send + Sync {
    /// Try to take the key for `lease` (conditional write).
    async fn claim(
        &self,
        id: &str,
        payload_hash: &str,
        lease: Duration,
    ) -> Result<Claim, StoreError>;
    /// Claim several keys (`(id, payload_hash)`) with one lease; one result per key, in order.
    /// Stores that can do it in one round trip override this (DynamoDB: one transaction).
    async fn claim_many(
        &self,
        keys: &[(String, String)],
        lease: Duration,
    ) -> Vec<Result<Claim, StoreError>> {
        futures::future::join_all(keys.iter().map(|(id, hash)| self.claim(id, hash, lease))).await
    }

    /// Mark the key as sent; the record lives for `ttl`.
    async fn complete(
        &self,
        id: &str,
        payload_hash: &str,
        lease_token: &str,
        graph_request_id: Option<&str>,
        ttl: Duration,
    ) -> Result<(), StoreError>;
    /// Drop our in-progress record (nothing was sent), so a retry can claim it at once.
    async fn release(&self, id: &str, lease_token: &str) -> Result<(), StoreError>;
}

const IN_PROGRESS: &str = "in_progress";
/// A claim succeeds when there is no record, the lease ran out, or the record expired.
const CLAIM_CONDITION: &str = "attribute_not_exists(pk) OR (#status = :in_progress AND lease_expires_at < :now) OR expires_at < :now";
/// The batch transaction only takes keys without any record; anything else (a redelivery, a
/// lease held elsewhere or run out) is settled by [`IdempotencyStore::claim`] alone, which can
/// tell a fresh claim from one taking over an unfinished attempt.
const NEW_CLAIM_CONDITION: &str = "attribute_not_exists(pk)";
const COMPLETED: &str = "completed";

/// Default lifetime of a completed record: SQS's longest retention (14 days).
pub const DEFAULT_COMPLETED_TTL: Duration = Duration::from_secs(14 * 24 * 3600);

fn now_epoch() -> i64 {
    chrono::Utc::now().timestamp()
}

/// The partition key of a notification's idempotency record.
pub fn notification_key(id: &str) -> String {
    format!("notification#{id}")
}

/// DynamoDB implementation.
///
/// Round trips are what a batch waits for, so: [`IdempotencyStore::claim_many`] claims a whole
/// batch in one `TransactWriteItems` (falling back to one conditional put per key when any
/// condition fails), and [`IdempotencyStore::complete`] group-commits: while one `BatchWriteItem`
/// is in flight, completions arriving meanwhile queue up and go out together in the next one.
pub struct DynamoIdempotencyStore {
    client: crate::aws::LazyClient<aws_sdk_dynamodb::Client>,
    table: String,
    completions: Mutex<CompletionQueue>,
}

/// A completed record waiting to be written, and who to tell when it is.
type PendingCompletion = (Item, tokio::sync::oneshot::Sender<Result<(), StoreError>>);

#[derive(Default)]
struct CompletionQueue {
    pending: Vec<PendingCompletion>,
    flushing: bool,
}

impl std::fmt::Debug for DynamoIdempotencyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DynamoIdempotencyStore")
            .field("table", &self.table)
            .finish_non_exhaustive()
    }
}

impl DynamoIdempotencyStore {
    /// Use `table` (the state table) through `client` (a client, or a
    /// [`crate::aws::LazyClient`] built on first use).
    pub fn new(
        client: impl Into<crate::aws::LazyClient<aws_sdk_dynamodb::Client>>,
        table: impl Into<String>,
    ) -> Self {
        DynamoIdempotencyStore {
            client: client.into(),
            table: table.into(),
            completions: Mutex::new(CompletionQueue::default()),
        }
    }

    fn claim_item(
        &self,
        id: &str,
        payload_hash: &str,
        lease_token: &str,
        lease_expires_at: i64,
    ) -> Item {
        HashMap::from([
            ("pk".to_owned(), s(notification_key(id))),
            ("status".to_owned(), s(IN_PROGRESS)),
            ("payload_hash".to_owned(), s(payload_hash)),
            ("lease_token".to_owned(), s(lease_token)),
            ("lease_expires_at".to_owned(), n(lease_expires_at)),
            // keep abandoned leases a day for inspection, then TTL them
            ("expires_at".to_owned(), n(lease_expires_at + 24 * 3600)),
        ])
    }

    /// Write queued completions until the queue is empty (called by the one flushing caller).
    async fn flush_completions(&self) {
        loop {
            let batch: Vec<_> = {
                let mut queue = self.completions.lock().expect("lock");
                if queue.pending.is_empty() {
                    queue.flushing = false;
                    return;
                }
                let take = queue.pending.len().min(25);
                queue.pending.drain(..take).collect()
            };
            let requests: Vec<_> = batch
                .iter()
                .filter_map(|(item, _)| {
                    aws_sdk_dynamodb::types::PutRequest::builder()
                        .set_item(Some(item.clone()))
                        .build()
                        .ok()
                        .map(|put| {
                            aws_sdk_dynamodb::types::WriteRequest::builder()
                                .put_request(put)
                                .build()
                        })
                })
                .collect();
            let written = if batch.len() == 1 {
                self.client
                    .put_item()
                    .table_name(&self.table)
                    .set_item(Some(batch[0].0.clone()))
                    .send()
                    .await
                    .map(|_| Vec::new())
                    .map_err(|e| e.into_service_error().to_string())
            } else {
                self.client
                    .batch_write_item()
                    .request_items(&self.table, requests)
                    .send()
                    .await
                    .map(|out| {
                        out.unprocessed_items
                            .and_then(|mut u| u.remove(&self.table))
                            .unwrap_or_default()
                    })
                    .map_err(|e| e.into_service_error().to_string())
            };
            for (item, done) in batch {
                let key = item
                    .get("pk")
                    .and_then(|v| v.as_s().ok())
                    .cloned()
                    .unwrap_or_default();
                let result = match &written {
                    Err(detail) => Err(self.error(format!("complete {key}"), detail)),
                    Ok(unprocessed)
                        if unprocessed.iter().any(|w| {
                            w.put_request()
                                .is_some_and(|p| p.item().get("pk") == item.get("pk"))
                        }) =>
                    {
                        // throttled inside the batch: one more try on its own
                        self.client
                            .put_item()
                            .table_name(&self.table)
                            .set_item(Some(item))
                            .send()
                            .await
                            .map(|_| ())
                            .map_err(|e| {
                                self.error(format!("complete {key}"), e.into_service_error())
                            })
                    }
                    Ok(_) => Ok(()),
                };
                let _ = done.send(result);
            }
        }
    }

    fn error(&self, operation: String, e: impl std::fmt::Display) -> StoreError {
        super::item::store_err_in(&self.table, operation, e)
    }
}

#[async_trait]
impl IdempotencyStore for DynamoIdempotencyStore {
    async fn claim(
        &self,
        id: &str,
        payload_hash: &str,
        lease: Duration,
    ) -> Result<Claim, StoreError> {
        let key = notification_key(id);
        let now = now_epoch();
        let lease_expires_at = now + lease.as_secs() as i64;
        let lease_token = uuid::Uuid::new_v4().to_string();
        let put = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(self.claim_item(
                id,
                payload_hash,
                &lease_token,
                lease_expires_at,
            )))
            .condition_expression(CLAIM_CONDITION)
            .expression_attribute_names("#status", "status")
            .expression_attribute_values(":in_progress", s(IN_PROGRESS))
            .expression_attribute_values(":now", n(now));
        match take(put).await {
            // The record we replaced, if any: an in-progress one is an unfinished attempt.
            Ok(Taken::Replaced(previous)) => {
                return Ok(match get_s(&previous, "status") {
                    Some(IN_PROGRESS) => Claim::Resumed {
                        lease_token,
                        previous_lease_expires_at: get_n(&previous, "lease_expires_at")
                            .unwrap_or(0),
                    },
                    _ => Claim::Acquired { lease_token },
                });
            }
            Ok(Taken::Refused) => {}
            Err(e) => return Err(self.error(format!("claim {key}"), e.into_service_error())),
        }
        let existing = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("pk", s(&key))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| self.error(format!("read {key}"), e.into_service_error()))?;
        let Some(item) = existing.item else {
            // deleted between our put and get (a release): the caller may retry later
            return Ok(Claim::InProgress {
                lease_expires_at: now,
            });
        };
        match get_s(&item, "status") {
            Some(COMPLETED) => {
                if get_s(&item, "payload_hash").is_some_and(|h| h != payload_hash) {
                    Ok(Claim::CompletedWithDifferentPayload)
                } else {
                    Ok(Claim::Completed {
                        graph_request_id: get_s(&item, "graph_request_id").map(str::to_owned),
                    })
                }
            }
            _ => Ok(Claim::InProgress {
                lease_expires_at: get_n(&item, "lease_expires_at").unwrap_or(now),
            }),
        }
    }

    async fn claim_many(
        &self,
        keys: &[(String, String)],
        lease: Duration,
    ) -> Vec<Result<Claim, StoreError>> {
        // Distinct ids go into one transaction (DynamoDB refuses two operations on one item in
        // a transaction, and allows 100 per transaction); repeats are claimed afterwards.
        let mut seen = std::collections::HashSet::new();
        let first: Vec<bool> = keys.iter().map(|(id, _)| seen.insert(id.clone())).collect();
        let distinct = first.iter().filter(|f| **f).count();
        if !(2..=100).contains(&distinct) {
            return futures::future::join_all(
                keys.iter().map(|(id, hash)| self.claim(id, hash, lease)),
            )
            .await;
        }
        let now = now_epoch();
        let lease_expires_at = now + lease.as_secs() as i64;
        let mut tokens = Vec::new();
        let mut transaction = self.client.transact_write_items();
        for ((id, hash), is_first) in keys.iter().zip(&first) {
            if !is_first {
                continue;
            }
            let token = uuid::Uuid::new_v4().to_string();
            let put = aws_sdk_dynamodb::types::Put::builder()
                .table_name(&self.table)
                .set_item(Some(self.claim_item(id, hash, &token, lease_expires_at)))
                .condition_expression(NEW_CLAIM_CONDITION)
                .build();
            match put {
                Ok(put) => {
                    transaction = transaction.transact_items(
                        aws_sdk_dynamodb::types::TransactWriteItem::builder()
                            .put(put)
                            .build(),
                    );
                    tokens.push(token);
                }
                Err(_) => tokens.push(String::new()),
            }
        }
        let all_acquired = !tokens.iter().any(String::is_empty) && transaction.send().await.is_ok();
        if all_acquired {
            let mut tokens = tokens.into_iter();
            // a repeat of an id claimed above finds that copy holding the lease
            return first
                .iter()
                .map(|is_first| {
                    Ok(if *is_first {
                        Claim::Acquired {
                            lease_token: tokens.next().unwrap_or_default(),
                        }
                    } else {
                        Claim::InProgress { lease_expires_at }
                    })
                })
                .collect();
        }
        // some condition failed (a redelivery, a lease held elsewhere): settle each key alone
        futures::future::join_all(keys.iter().map(|(id, hash)| self.claim(id, hash, lease))).await
    }

    async fn complete(
        &self,
        id: &str,
        payload_hash: &str,
        _lease_token: &str,
        graph_request_id: Option<&str>,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        let now = now_epoch();
        let mut item = HashMap::from([
            ("pk".to_owned(), s(notification_key(id))),
            ("status".to_owned(), s(COMPLETED)),
            ("payload_hash".to_owned(), s(payload_hash)),
            ("completed_at".to_owned(), n(now)),
            ("expires_at".to_owned(), n(now + ttl.as_secs() as i64)),
        ]);
        if let Some(rid) = graph_request_id {
            item.insert("graph_request_id".to_owned(), s(rid));
        }
        let (done, result) = tokio::sync::oneshot::channel();
        let lead = {
            let mut queue = self.completions.lock().expect("lock");
            queue.pending.push((item, done));
            !std::mem::replace(&mut queue.flushing, true)
        };
        if lead {
            self.flush_completions().await;
        }
        result.await.unwrap_or_else(|_| {
            Err(self.error(
                format!("complete {}", notification_key(id)),
                "the flushing caller went away",
            ))
        })
    }

    async fn release(&self, id: &str, lease_token: &str) -> Result<(), StoreError> {
        let key = notification_key(id);
        give_back(
            self.client
                .delete_item()
                .table_name(&self.table)
                .key("pk", s(&key))
                .condition_expression("#status = :in_progress AND lease_token = :token")
                .expression_attribute_names("#status", "status")
                .expression_attribute_values(":in_progress", s(IN_PROGRESS))
                .expression_attribute_values(":token", s(lease_token)),
        )
        .await
        .map_err(|e| self.error(format!("release {key}"), e.into_service_error()))
    }
}

/// In-memory implementation (unit tests, local experiments). Same semantics as DynamoDB's.
#[derive(Debug, Default)]
pub struct InMemoryIdempotencyStore {
    records: Mutex<HashMap<String, MemoryRecord>>,
}

#[derive(Clone, Debug)]
struct MemoryRecord {
    completed: bool,
    payload_hash: String,
    lease_token: String,
    lease_expires_at: i64,
    graph_request_id: Option<String>,
}

impl InMemoryIdempotencyStore {
    /// Whether `id` is recorded as completed.
    pub fn is_completed(&self, id: &str) -> bool {
        self.records
            .lock()
            .expect("lock")
            .get(id)
            .is_some_and(|r| r.completed)
    }
}

#[async_trait]
impl IdempotencyStore for InMemoryIdempotencyStore {
    async fn claim(
        &self,
        id: &str,
        payload_hash: &str,
        lease: Duration,
    ) -> Result<Claim, StoreError> {
        let now = now_epoch();
        let mut records = self.records.lock().expect("lock");
        let mut previous_lease_expires_at = None;
        if let Some(r) = records.get(id) {
            if r.completed {
                return Ok(if r.payload_hash == payload_hash {
                    Claim::Completed {
                        graph_request_id: r.graph_request_id.clone(),
                    }
                } else {
                    Claim::CompletedWithDifferentPayload
                });
            }
            if r.lease_expires_at >= now {
                return Ok(Claim::InProgress {
                    lease_expires_at: r.lease_expires_at,
                });
            }
            previous_lease_expires_at = Some(r.lease_expires_at);
        }
        let lease_token = uuid::Uuid::new_v4().to_string();
        records.insert(
            id.to_owned(),
            MemoryRecord {
                completed: false,
                payload_hash: payload_hash.to_owned(),
                lease_token: lease_token.clone(),
                lease_expires_at: now + lease.as_secs() as i64,
                graph_request_id: None,
            },
        );
        Ok(match previous_lease_expires_at {
            Some(previous_lease_expires_at) => Claim::Resumed {
                lease_token,
                previous_lease_expires_at,
            },
            None => Claim::Acquired { lease_token },
        })
    }

    async fn complete(
        &self,
        id: &str,
        payload_hash: &str,
        lease_token: &str,
        graph_request_id: Option<&str>,
        _ttl: Duration,
    ) -> Result<(), StoreError> {
        self.records.lock().expect("lock").insert(
            id.to_owned(),
            MemoryRecord {
                completed: true,
                payload_hash: payload_hash.to_owned(),
                lease_token: lease_token.to_owned(),
                lease_expires_at: 0,
                graph_request_id: graph_request_id.map(str::to_owned),
            },
        );
        Ok(())
    }

    async fn release(&self, id: &str, lease_token: &str) -> Result<(), StoreError> {
        let mut records = self.records.lock().expect("lock");
        if records
            .get(id)
            .is_some_and(|r| !r.completed && r.lease_token == lease_token)
        {
            records.remove(id);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn memory_store_claims_completes_and_releases_like_dynamodb() {
        let store = InMemoryIdempotencyStore::default();
        let lease = Duration::from_secs(60);
        let Claim::Acquired { lease_token } = store.claim("a", "h", lease).await.unwrap() else {
            panic!("first claim must be acquired")
        };
        assert!(matches!(
            store.claim("a", "h", lease).await.unwrap(),
            Claim::InProgress { .. }
        ));
        store.release("a", "someone-else").await.unwrap();
        assert!(matches!(
            store.claim("a", "h", lease).await.unwrap(),
            Claim::InProgress { .. }
        ));
        store.release("a", &lease_token).await.unwrap();
        let Claim::Acquired { lease_token } = store.claim("a", "h", lease).await.unwrap() else {
            panic!("claim after release must be acquired")
        };
        store
            .complete("a", "h", &lease_token, Some("rid"), lease)
            .await
            .unwrap();
        assert_eq!(
            store.claim("a", "h", lease).await.unwrap(),
            Claim::Completed {
                graph_request_id: Some("rid".into())
            }
        );
        assert_eq!(
            store.claim("a", "other", lease).await.unwrap(),
            Claim::CompletedWithDifferentPayload
        );
    }
}
