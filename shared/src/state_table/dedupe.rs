//! Mail records: which mails already became tickets, and how many mails one sender sent.
//!
//! - `mail#<mailbox>#<hash>`: a dedupe record ([`DedupeRecord`]) with a TTL.
//! - `mail#<mailbox>#sender#<hash of the address>#<YYYYMMDDHH>`: the per-sender quota's count
//!   for one clock hour (attribute `mails`), expiring an hour after it.

use serde::{Deserialize, Serialize};

use super::item::{item_from, item_to, n, s, sdk_err};
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

    pub(super) async fn count_sender_mail(
        &self,
        pk: &str,
        max: u32,
        expires_at: i64,
    ) -> Result<bool, StoreError> {
        let counted = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(pk))
            .update_expression("ADD mails :one SET expires_at = :expires")
            .condition_expression("attribute_not_exists(mails) OR mails < :max")
            .expression_attribute_values(":one", n(1))
            .expression_attribute_values(":max", n(max))
            .expression_attribute_values(":expires", n(expires_at))
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
}
