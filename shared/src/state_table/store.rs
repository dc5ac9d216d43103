//! [`DynamoStateStore`]: the poller's [`StateStore`] on DynamoDB (the operator CLI reads through
//! it too). Each record kind's reads and writes are in its own file; this is the struct and the
//! port.

use async_trait::async_trait;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::error::SdkError;
use aws_sdk_dynamodb::operation::get_item::GetItemError;
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;

use super::item::{Item, s, sdk_err};
use super::status::StatusCache;
use super::{DedupeRecord, InFlightMail, MailboxLease, MailboxStatus, StateStore, StoreError};
use crate::aws::LazyClient;
use crate::mailbox::{ConfigError, MailboxConfig, TargetPolicy};

/// DynamoDB-backed [`StateStore`].
#[derive(Clone, Debug)]
pub struct DynamoStateStore {
    pub(super) client: LazyClient<Client>,
    pub(super) table: String,
    pub(super) statuses: StatusCache,
    pub(super) targets: Option<TargetPolicy>,
}

impl DynamoStateStore {
    /// Use `table` through `client` (a client, or a [`LazyClient`] built on first use).
    pub fn new(client: impl Into<LazyClient<Client>>, table: impl Into<String>) -> Self {
        DynamoStateStore {
            client: client.into(),
            table: table.into(),
            statuses: StatusCache::default(),
            targets: None,
        }
    }

    /// Also refuse, on every read, configurations that point where `targets` does not allow
    /// (the operator CLI reads through this; the poll loop checks them itself).
    pub fn with_targets(mut self, targets: TargetPolicy) -> Self {
        self.targets = Some(targets);
        self
    }

    /// One item by `pk`, read consistently.
    pub(super) async fn get(
        &self,
        operation: &'static str,
        pk: &str,
    ) -> Result<Option<Item>, StoreError> {
        self.read_item(pk).await.map_err(|e| sdk_err(operation, e))
    }

    /// One item by `pk`, read consistently, with the SDK's error.
    pub(super) async fn read_item(
        &self,
        pk: &str,
    ) -> Result<Option<Item>, SdkError<GetItemError, HttpResponse>> {
        let output = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("pk", s(pk))
            .consistent_read(true)
            .send()
            .await?;
        Ok(output.item)
    }
}

#[async_trait]
impl StateStore for DynamoStateStore {
    async fn acquire_mailbox_lease(
        &self,
        mailbox: &str,
        until: i64,
    ) -> Result<MailboxLease, StoreError> {
        self.acquire_lease(mailbox, until).await
    }

    async fn release_mailbox_lease(&self, mailbox: &str, token: &str) -> Result<(), StoreError> {
        self.release_lease(mailbox, token).await
    }

    async fn mark_in_flight(
        &self,
        mailbox: &str,
        token: &str,
        mail: InFlightMail,
    ) -> Result<(), StoreError> {
        self.mark_lease_in_flight(mailbox, token, mail).await
    }

    async fn get_dedupe(&self, pk: &str) -> Result<Option<DedupeRecord>, StoreError> {
        self.read_dedupe(pk).await
    }

    async fn put_dedupe(&self, record: &DedupeRecord) -> Result<(), StoreError> {
        self.write_dedupe(record).await
    }

    async fn get_dedupes(
        &self,
        pks: &[String],
    ) -> Result<std::collections::HashMap<String, DedupeRecord>, StoreError> {
        self.read_dedupes(pks).await
    }

    async fn put_dedupes(&self, records: &[DedupeRecord]) -> Result<(), StoreError> {
        self.write_dedupes(records).await
    }

    async fn take_sender_quota(
        &self,
        pk: &str,
        wanted: u32,
        max: u32,
        expires_at: i64,
    ) -> Result<u32, StoreError> {
        self.take_sender_units(pk, wanted, max, expires_at).await
    }

    async fn give_back_sender_quota(&self, pk: &str, units: u32) -> Result<(), StoreError> {
        self.give_back_sender_units(pk, units).await
    }

    async fn get_status(&self, mailbox: &str) -> Result<Option<MailboxStatus>, StoreError> {
        self.read_status(mailbox).await
    }

    async fn put_status(&self, status: &MailboxStatus) -> Result<(), StoreError> {
        self.write_status(status).await
    }

    async fn load_mailboxes(
        &self,
        names: Option<&[String]>,
    ) -> Result<Vec<Result<MailboxConfig, ConfigError>>, StoreError> {
        self.read_mailboxes(names).await
    }
}
