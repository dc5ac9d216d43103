//! The poll-request gate of each mailbox (docs/push.md): `poll-request#<mailbox>`, whose
//! `queued_at` (N, epoch seconds) is set while a "poll this mailbox now" request waits in the
//! queue and no poll has taken it yet ([`PollGate`]).
//!
//! The gate is how a burst of notifications becomes one poll without losing a "look now": the
//! receiver arms it with a conditional write and enqueues a request only when it was not armed
//! already; the poller disarms it *before* it lists the mailbox. A notification that arrives
//! after the poll started listing finds the gate disarmed, arms it again and enqueues another
//! request, so the mail it announces is seen by a poll that starts after it. A gate armed longer
//! than [`GATE_STALE_AFTER`] (its request lost: enqueue failed after the write, poller never
//! started) counts as disarmed.

use async_trait::async_trait;

use super::item::{n, s, store_err_in};
use super::{DynamoStateStore, StoreError};

/// A gate armed this long (seconds) without a poll taking it counts as disarmed.
pub const GATE_STALE_AFTER: i64 = 300;

/// Partition key of a mailbox's poll-request gate.
pub fn poll_request_key(mailbox: &str) -> String {
    format!("poll-request#{mailbox}")
}

/// Port: the poll-request gate of each mailbox.
#[async_trait]
pub trait PollGate: Send + Sync {
    /// Arm `mailbox`'s gate. True: it was not armed (or was stale), so the caller must enqueue a
    /// request; false: a queued request no poll has taken yet will see the mail.
    async fn arm(&self, mailbox: &str) -> Result<bool, StoreError>;
    /// Disarm it: a poll is about to list the mailbox (or an enqueue failed after arming).
    async fn disarm(&self, mailbox: &str) -> Result<(), StoreError>;
}

#[async_trait]
impl PollGate for DynamoStateStore {
    async fn arm(&self, mailbox: &str) -> Result<bool, StoreError> {
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
                    Err(store_err_in(
                        &self.table,
                        format!("arm poll-request#{mailbox}"),
                        e,
                    ))
                }
            }
        }
    }

    async fn disarm(&self, mailbox: &str) -> Result<(), StoreError> {
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
                    Err(store_err_in(
                        &self.table,
                        format!("disarm poll-request#{mailbox}"),
                        e,
                    ))
                }
            })
    }
}
