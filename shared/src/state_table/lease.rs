//! Leases: who may work on something right now, for how long.
//!
//! One way to take and give back a lease, used by both kinds: [`take`] is a conditional put that
//! returns the item it replaced (the caller's condition says when a lease may be taken: no item,
//! or the previous lease ran out), [`give_back`] deletes the item only while it still carries our
//! token.
//!
//! - `notification#<id>` ([`super::idempotency`]): a notification being sent.
//! - `mailbox-lease#<name>`: which run is working on a mailbox that has mail, since and until
//!   when (`lease_token`, `started_at`, `lease_expires_at`); taken only when a search found
//!   mail, so idle runs cost no write. Deleted when the run ends; a run that was killed leaves
//!   it behind, which is how `mailbridge status` can tell a run that never reported
//!   ([`DynamoStateStore::get_mailbox_lease`]). While the run reads mail, `in_flight_uid` /
//!   `in_flight_uid_last` / `in_flight_uid_validity` name it (one mail, or a window of small
//!   ones), so a lease taken over with these still set names the mail a killed run was reading
//!   (the next run parks a single mail unread, and reads a window's mails one by one).

use aws_sdk_dynamodb::config::http::HttpResponse;
use aws_sdk_dynamodb::error::SdkError;
use aws_sdk_dynamodb::operation::delete_item::{
    DeleteItemError, builders::DeleteItemFluentBuilder,
};
use aws_sdk_dynamodb::operation::put_item::{PutItemError, builders::PutItemFluentBuilder};
use serde::{Deserialize, Serialize};

use super::item::{Item, get_n, get_s, n, s, sdk_err};
use super::{DynamoStateStore, StoreError};

/// What a conditional lease put found.
pub(crate) enum Taken {
    /// Ours now; the item it replaced (empty when there was none).
    Replaced(Item),
    /// The condition failed: someone else's lease (or a record that may not be taken).
    Refused,
}

/// Take a lease: `put` (item and condition set by the caller) returning the item it replaced.
pub(crate) async fn take(
    put: PutItemFluentBuilder,
) -> Result<Taken, SdkError<PutItemError, HttpResponse>> {
    match put
        .return_values(aws_sdk_dynamodb::types::ReturnValue::AllOld)
        .send()
        .await
    {
        Ok(output) => Ok(Taken::Replaced(output.attributes.unwrap_or_default())),
        Err(e)
            if e.as_service_error()
                .is_some_and(|s| s.is_conditional_check_failed_exception()) =>
        {
            Ok(Taken::Refused)
        }
        Err(e) => Err(e),
    }
}

/// Give a lease back: `delete` (key and a condition on our token set by the caller). A failed
/// condition is success: the lease was taken over after it ran out, or is gone, so nothing of
/// ours is left to drop.
pub(crate) async fn give_back(
    delete: DeleteItemFluentBuilder,
) -> Result<(), SdkError<DeleteItemError, HttpResponse>> {
    match delete.send().await {
        Ok(_) => Ok(()),
        Err(e)
            if e.as_service_error()
                .is_some_and(|s| s.is_conditional_check_failed_exception()) =>
        {
            Ok(())
        }
        Err(e) => Err(e),
    }
}

/// The answer to a mailbox lease request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MailboxLease {
    /// This run holds the mailbox; pass the token to `release_mailbox_lease`.
    Acquired {
        /// The lease token.
        token: String,
        /// The mail an earlier run was reading when it ended without releasing the lease
        /// (killed: out of memory, a panic outside the parser's guard, the timeout).
        interrupted: Option<InFlightMail>,
    },
    /// Another run holds it until then (epoch seconds).
    Held(i64),
}

/// The mail a run is reading (fetch, parse, delivery), remembered in the state table before
/// its bytes are fetched, so that a run that dies on it leaves its name behind. The poller reads
/// small mails a window at a time and names the window (`uid` through `last_uid`, one write per
/// window); a large mail is always a window of its own, named alone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InFlightMail {
    /// UIDVALIDITY of the folder.
    pub uid_validity: u32,
    /// The mail's UID (the window's first).
    pub uid: u32,
    /// The window's last UID (`uid` when one mail is in flight).
    pub last_uid: u32,
}

impl InFlightMail {
    /// One mail in flight.
    pub fn one(uid_validity: u32, uid: u32) -> Self {
        InFlightMail {
            uid_validity,
            uid,
            last_uid: uid,
        }
    }

    /// Whether exactly one mail was in flight.
    pub fn is_one_mail(&self) -> bool {
        self.uid == self.last_uid
    }
}

/// A stored mailbox lease (see [`DynamoStateStore::get_mailbox_lease`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRecord {
    /// When the run that took it took it (RFC 3339; None for leases written before this was
    /// recorded).
    pub started_at: Option<String>,
    /// Until when it holds the mailbox (epoch seconds).
    pub until: i64,
}

fn mailbox_lease_key(mailbox: &str) -> String {
    format!("mailbox-lease#{mailbox}")
}

impl DynamoStateStore {
    /// The mailbox's lease item, if one is stored: a run working on the mailbox now, or one
    /// that never ended properly (killed, timed out) and left it behind (kept a day past its
    /// end, then removed by TTL). Released leases are deleted.
    pub async fn get_mailbox_lease(
        &self,
        mailbox: &str,
    ) -> Result<Option<LeaseRecord>, StoreError> {
        let item = self
            .get("GetItem mailbox-lease", &mailbox_lease_key(mailbox))
            .await?;
        Ok(item.map(|item| LeaseRecord {
            started_at: get_s(&item, "started_at").map(str::to_owned),
            until: get_n(&item, "lease_expires_at").unwrap_or(0),
        }))
    }

    pub(super) async fn acquire_lease(
        &self,
        mailbox: &str,
        until: i64,
    ) -> Result<MailboxLease, StoreError> {
        let pk = mailbox_lease_key(mailbox);
        let token = uuid::Uuid::new_v4().to_string();
        let now = chrono::Utc::now().timestamp();
        let put = self
            .client
            .put_item()
            .table_name(&self.table)
            .item("pk", s(pk.clone()))
            .item("lease_token", s(token.clone()))
            .item("lease_expires_at", n(until))
            .item("started_at", s(chrono::Utc::now().to_rfc3339()))
            // a day for inspection, then TTL
            .item("expires_at", n(until + 86_400))
            .condition_expression("attribute_not_exists(pk) OR lease_expires_at < :now")
            .expression_attribute_values(":now", n(now));
        match take(put)
            .await
            .map_err(|e| sdk_err("PutItem mailbox-lease", e))?
        {
            Taken::Replaced(old) => {
                let interrupted = match (
                    get_n(&old, "in_flight_uid_validity"),
                    get_n(&old, "in_flight_uid"),
                ) {
                    (Some(uid_validity), Some(uid)) => Some(InFlightMail {
                        uid_validity,
                        uid,
                        // written before windows: one mail
                        last_uid: get_n(&old, "in_flight_uid_last").unwrap_or(uid),
                    }),
                    _ => None,
                };
                Ok(MailboxLease::Acquired { token, interrupted })
            }
            Taken::Refused => {
                let held = self.get("GetItem mailbox-lease", &pk).await?;
                let until = held
                    .as_ref()
                    .and_then(|i| get_n(i, "lease_expires_at"))
                    .unwrap_or(now);
                Ok(MailboxLease::Held(until))
            }
        }
    }

    pub(super) async fn release_lease(&self, mailbox: &str, token: &str) -> Result<(), StoreError> {
        give_back(
            self.client
                .delete_item()
                .table_name(&self.table)
                .key("pk", s(mailbox_lease_key(mailbox)))
                .condition_expression("lease_token = :token")
                .expression_attribute_values(":token", s(token)),
        )
        .await
        .map_err(|e| sdk_err("DeleteItem mailbox-lease", e))
    }

    pub(super) async fn mark_lease_in_flight(
        &self,
        mailbox: &str,
        token: &str,
        mail: InFlightMail,
    ) -> Result<(), StoreError> {
        self.client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(mailbox_lease_key(mailbox)))
            .update_expression(
                "SET in_flight_uid = :uid, in_flight_uid_last = :last, in_flight_uid_validity = :validity",
            )
            .condition_expression("lease_token = :token")
            .expression_attribute_values(":uid", n(mail.uid))
            .expression_attribute_values(":last", n(mail.last_uid))
            .expression_attribute_values(":validity", n(mail.uid_validity))
            .expression_attribute_values(":token", s(token))
            .send()
            .await
            .map_err(|e| sdk_err("UpdateItem mailbox-lease (in flight)", e))?;
        Ok(())
    }
}
