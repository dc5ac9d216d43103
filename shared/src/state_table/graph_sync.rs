//! A Graph mailbox's sync state: `graph-sync#<mailbox>`, the state ([`GraphSyncState`]) as one
//! JSON string (attribute `state`).

use async_trait::async_trait;
use aws_sdk_dynamodb::types::AttributeValue;
use serde::{Deserialize, Serialize};

use super::item::{s, sdk_err, store_err};
use super::{DynamoStateStore, StoreError};

/// What a mailbox's Graph sync remembers between runs.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GraphSyncState {
    /// Changes when the UIDs below start over (a new state).
    pub uid_validity: u32,
    /// The next UID to give.
    pub next_uid: u32,
    /// `@odata.deltaLink` of the last round, if it could be kept.
    pub delta_link: Option<String>,
    /// Messages in the folder still to be handled, ascending by UID.
    pub pending: Vec<PendingMessage>,
    /// The Graph id of the folder the link and `pending` belong to (None in states written
    /// before it was kept). When the mailbox's folder changes, the sync starts over there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub folder_id: Option<String>,
}

/// One message still to be handled.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingMessage {
    /// The UID this side gave it.
    pub uid: u32,
    /// Graph id.
    pub id: String,
    /// When the mailbox received it.
    pub received_at: Option<chrono::DateTime<chrono::Utc>>,
    /// Size in bytes, when Graph gave it.
    pub size: Option<u64>,
}

/// Where the sync states live (the state table).
#[async_trait]
pub trait GraphSyncStore: Send + Sync {
    /// The mailbox's sync state, if any.
    async fn get_graph_sync(&self, mailbox: &str) -> Result<Option<GraphSyncState>, StoreError>;
    /// Replace it.
    async fn put_graph_sync(&self, mailbox: &str, state: &GraphSyncState)
    -> Result<(), StoreError>;
}

#[async_trait]
impl GraphSyncStore for DynamoStateStore {
    async fn get_graph_sync(&self, mailbox: &str) -> Result<Option<GraphSyncState>, StoreError> {
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
        state: &GraphSyncState,
    ) -> Result<(), StoreError> {
        let json = serde_json::to_string(state).map_err(|e| store_err("PutItem graph-sync", e))?;
        self.client
            .put_item()
            .table_name(&self.table)
            .item("pk", s(format!("graph-sync#{mailbox}")))
            .item("state", s(json))
            .send()
            .await
            .map_err(|e| sdk_err("PutItem graph-sync", e))?;
        Ok(())
    }
}
