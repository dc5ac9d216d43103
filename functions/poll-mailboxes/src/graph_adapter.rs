//! The [`Mailbox`] of a mailbox read through Microsoft Graph (`protocol: graph`), for tenants
//! that switched IMAP off. The poll loop runs on it unchanged: the same lease, dedupe, parser,
//! machine-mail policy, ticket sinks and "after-action only once the ticket was accepted".
//!
//! Graph has string ids where IMAP has UIDs, and delta rounds where IMAP has SEARCH. The sync
//! state of each mailbox (`GraphSyncState`, item `graph-sync#<mailbox>` of the state table)
//! bridges the two:
//! - the `@odata.deltaLink` of the last round;
//! - the messages in the polled folder still to be handled (`pending`), each with a UID this
//!   side gives it (ascending in order of arrival, never reused under the state's
//!   `uid_validity`), so the loop's UID order, `retry_last_uids` and the mail-in-flight record
//!   work as with IMAP.
//!
//! `select` runs a delta round from the stored link (or a full round: first run, an expired or
//! invalid token → Graph's 410 `SyncStateNotFound`, or a `pending` list too long to store) and
//! saves the new link with `pending` before any mail is touched. A full round keeps the UIDs of
//! messages it already knew. Nothing here decides whether a mail became a ticket: the dedupe
//! records do, so a resync or a run that died after the ticket and before the move opens no
//! second ticket. Handled mail leaves `pending` (moved, deleted, or read under `mark_seen`);
//! a run that dies before saving leaves it to the next round, whose `@removed` entries drop it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt as _;
use mailbridge::error::{Classify, ErrorClass};
use mailbridge::graph::GraphError;
use mailbridge::graph_mail::{DeltaChange, DeltaStart, GraphMailbox, MAX_CONCURRENT_REQUESTS};
use mailbridge::imap::{ListedMessage, RawMailSender, SearchScope, SelectedFolder, Uid};
use mailbridge::mailbox::{AfterAction, MailboxConfig, Protocol};
use mailbridge::state_table::{GraphSyncState, GraphSyncStore, PendingMessage, StoreError};
use mailbridge::token::AccessToken;
use secrecy::SecretString;
use tokio::time::Instant;

use crate::ports::{Mailbox, MailboxConnector, MailboxError};

/// Most pending messages kept with a delta link: beyond it (a DynamoDB item holds 400 KB) the
/// link is not stored and the next run makes a full round, which lists the folder anyway, so
/// nothing is lost: the messages kept keep their UIDs, the others get new ones after them (in
/// order of arrival), and a backlog of any size drains run after run.
pub const MAX_PENDING_WITH_LINK: usize = 1000;

/// Mail up to this size (as the delta round gave it) is read through JSON batches, whose
/// answers carry it base64-encoded; larger mail, or of no known size, with a request of its own.
pub const BATCH_READ_MAIL_BYTES: u64 = 256 * 1024;
/// Mail read through one JSON batch, at most (its answer is about a third larger).
pub const BATCH_READ_BYTES: u64 = 1024 * 1024;

/// Opens Graph mailboxes.
pub struct GraphConnector {
    http: reqwest::Client,
    base_url: String,
    sync: Arc<dyn GraphSyncStore>,
    timeout: Duration,
    max_pending_with_link: usize,
}

impl std::fmt::Debug for GraphConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GraphConnector")
            .field("base_url", &self.base_url)
            .finish()
    }
}

impl GraphConnector {
    /// Graph at `base_url` (`https://graph.microsoft.com/v1.0`), sync states in `sync`,
    /// `timeout` per request attempt.
    pub fn new(
        http: reqwest::Client,
        base_url: &str,
        sync: Arc<dyn GraphSyncStore>,
        timeout: Duration,
    ) -> Self {
        GraphConnector {
            http,
            base_url: base_url.to_owned(),
            sync,
            timeout,
            max_pending_with_link: MAX_PENDING_WITH_LINK,
        }
    }

    /// Keep at most `max` pending messages with the delta link (default
    /// [`MAX_PENDING_WITH_LINK`]; tests reach the cap with a few mails).
    pub fn with_max_pending_with_link(mut self, max: usize) -> Self {
        self.max_pending_with_link = max.max(1);
        self
    }
}

/// Why a mailbox read through Graph could not be opened, read or changed. What a person must
/// fix (consent, Full Access, a licence, the folder) is named by the poll loop from these.
#[derive(Debug, thiserror::Error)]
pub enum GraphMailboxError {
    /// Graph answered an operation on the mailbox with an error (or did not answer).
    #[error("Graph {operation} for mailbox {user} failed: {error}")]
    Request {
        /// What was asked (`delta`, `move`, ...).
        operation: &'static str,
        /// The mailbox's address.
        user: String,
        /// Graph's answer.
        error: GraphError,
    },
    /// The Graph client could not be built for the mailbox (the Graph URL).
    #[error("Graph at {url} cannot be used: {detail}")]
    Client {
        /// The Graph base URL.
        url: String,
        /// What is wrong with it.
        detail: String,
    },
    /// A folder of the mailbox is not there (the polled one) or could not be created (a target
    /// of the after-actions).
    #[error("Graph folder {folder:?} of mailbox {user}: {detail}")]
    NoSuchFolder {
        /// The mailbox's address.
        user: String,
        /// The folder's display-name path.
        folder: String,
        /// Why it is not there.
        detail: &'static str,
    },
    /// The mailbox's sync state (delta link, messages still to handle) in the state table could
    /// not be read or stored.
    #[error("Graph sync state of mailbox {mailbox}: could not {operation}: {error}")]
    SyncState {
        /// The mailbox's configuration name.
        mailbox: String,
        /// `read` or `store`.
        operation: &'static str,
        /// The state table's answer.
        error: StoreError,
    },
}

impl GraphMailboxError {
    fn request(operation: &'static str, user: &str, error: GraphError) -> Self {
        GraphMailboxError::Request {
            operation,
            user: user.to_owned(),
            error,
        }
    }

    /// Graph refused the access token (401) or the mailbox to this token (403): a fresh token
    /// may do, or the consent or Full Access is missing.
    pub fn token_refused(&self) -> bool {
        matches!(
            self,
            GraphMailboxError::Request {
                error: GraphError::Unauthorized { .. } | GraphError::Rejected { status: 403, .. },
                ..
            }
        )
    }

    /// Graph's `MailboxNotEnabledForRESTAPI`: the mailbox has no Exchange Online licence, is
    /// inactive or on-premises.
    pub fn mailbox_not_enabled(&self) -> bool {
        matches!(
            self,
            GraphMailboxError::Request { error: GraphError::Rejected { code, .. }, .. }
                if code == "MailboxNotEnabledForRESTAPI"
        )
    }
}

impl Classify for GraphMailboxError {
    /// A missing folder waits for a person; anything else is tried again on the next run (a
    /// refused token is refreshed first, and the account's own state says when it needs a
    /// person).
    fn class(&self) -> ErrorClass {
        match self {
            GraphMailboxError::NoSuchFolder { .. } => ErrorClass::Permanent,
            GraphMailboxError::Request { .. }
            | GraphMailboxError::Client { .. }
            | GraphMailboxError::SyncState { .. } => ErrorClass::Transient,
        }
    }
}

#[async_trait]
impl MailboxConnector for GraphConnector {
    async fn connect(
        &self,
        config: &MailboxConfig,
        access_token: &SecretString,
    ) -> Result<Box<dyn Mailbox>, MailboxError> {
        let token = AccessToken::new(
            access_token.clone(),
            chrono::Utc::now() + chrono::Duration::minutes(5),
            mailbridge::token::Audience::Graph,
        );
        let mut policy = mailbridge::graph_mail::default_policy();
        policy.attempt_timeout = self.timeout;
        let client = GraphMailbox::new(
            self.http.clone(),
            &self.base_url,
            &config.user,
            token,
            policy,
        )
        .map_err(|e| GraphMailboxError::Client {
            url: self.base_url.clone(),
            detail: e.to_string(),
        })?;
        // The polled folder, found now: a refused token shows here, where the loop refreshes
        // it once.
        let deadline = Instant::now() + self.timeout * 4;
        let folder = client
            .folder_id(&config.folder, false, deadline)
            .await
            .map_err(|e| GraphMailboxError::request("find folder", &config.user, e))?
            .ok_or_else(|| GraphMailboxError::NoSuchFolder {
                user: config.user.clone(),
                folder: config.folder.clone(),
                detail: "no folder with this display name in the mailbox",
            })?;
        if folder == "inbox" {
            // well-known name: still prove the token opens the mailbox
            client
                .delta_probe(deadline)
                .await
                .map_err(|e| GraphMailboxError::request("open mailbox", &config.user, e))?;
        }
        Ok(Box::new(GraphSession {
            client,
            user: config.user.clone(),
            name: config.name.clone(),
            unread_only: config.after_action == AfterAction::MarkSeen,
            since: config.since,
            folder_id: folder,
            folders: HashMap::new(),
            sync: self.sync.clone(),
            state: GraphSyncState::default(),
            selected: false,
            max_pending_with_link: self.max_pending_with_link,
            timeout: self.timeout,
        }))
    }
}

struct GraphSession {
    client: GraphMailbox,
    user: String,
    name: String,
    /// `mark_seen`: read mail is done with.
    unread_only: bool,
    /// Mail received before this is left alone (the mailbox's `since`).
    since: Option<chrono::DateTime<chrono::Utc>>,
    folder_id: String,
    /// Display-name path → folder id (found or created this run).
    folders: HashMap<String, String>,
    sync: Arc<dyn GraphSyncStore>,
    state: GraphSyncState,
    /// `state` was read (and the round run) this session: only then is it saved at logout.
    selected: bool,
    max_pending_with_link: usize,
    timeout: Duration,
}

impl GraphSession {
    fn deadline(&self) -> Instant {
        Instant::now() + self.timeout * 6
    }

    fn err(&self, operation: &'static str, e: GraphError) -> MailboxError {
        GraphMailboxError::request(operation, &self.user, e).into()
    }

    fn id_of(&self, uid: Uid) -> Option<String> {
        self.state
            .pending
            .iter()
            .find(|m| m.uid == uid)
            .map(|m| m.id.clone())
    }

    fn forget(&mut self, uid: Uid) {
        self.state.pending.retain(|m| m.uid != uid);
    }

    async fn save(&self) -> Result<(), StoreError> {
        let mut state = self.state.clone();
        if state.pending.len() > self.max_pending_with_link {
            // Too many to store with the link: the next run lists the folder in full.
            state.delta_link = None;
            state.pending.truncate(self.max_pending_with_link);
        }
        self.sync.put_graph_sync(&self.name, &state).await
    }

    /// Apply a round's changes; `full`: the round listed the whole folder.
    fn apply(&mut self, changes: Vec<DeltaChange>, full: bool) {
        let mut known: HashMap<String, PendingMessage> = std::mem::take(&mut self.state.pending)
            .into_iter()
            .map(|m| (m.id.clone(), m))
            .collect();
        let mut listed: Vec<PendingMessage> = Vec::new();
        let mut fresh = Vec::new();
        for change in changes {
            match change {
                DeltaChange::Removed { id } => {
                    known.remove(&id);
                    listed.retain(|m| m.id != id);
                    fresh.retain(|m: &mailbridge::graph_mail::DeltaMessage| m.id != id);
                }
                DeltaChange::Message(m)
                    if (m.is_read && self.unread_only)
                        || self
                            .since
                            .is_some_and(|since| m.received_at.is_some_and(|at| at < since)) =>
                {
                    known.remove(&m.id);
                    listed.retain(|p| p.id != m.id);
                    fresh.retain(|f: &mailbridge::graph_mail::DeltaMessage| f.id != m.id);
                }
                DeltaChange::Message(m) => match known.remove(&m.id) {
                    Some(mut p) => {
                        p.size = m.size.or(p.size);
                        p.received_at = m.received_at.or(p.received_at);
                        listed.push(p);
                    }
                    None if listed.iter().any(|p| p.id == m.id) => {}
                    None => {
                        fresh.retain(|f: &mailbridge::graph_mail::DeltaMessage| f.id != m.id);
                        fresh.push(m);
                    }
                },
            }
        }
        if !full {
            // an incremental round: what it did not mention is unchanged
            listed.extend(known.into_values());
        }
        // New mail gets UIDs in order of arrival.
        // Stable: mail received in the same second (Graph's times are to the second) keeps the
        // order the round listed it in; ids are opaque and say nothing about order.
        fresh.sort_by_key(|m| m.received_at);
        for m in fresh {
            listed.push(PendingMessage {
                uid: self.state.next_uid,
                id: m.id,
                received_at: m.received_at,
                size: m.size,
            });
            self.state.next_uid += 1;
        }
        listed.sort_by_key(|m| m.uid);
        self.state.pending = listed;
    }

    async fn resolve(&mut self, path: &str) -> Result<String, MailboxError> {
        if let Some(id) = self.folders.get(path) {
            return Ok(id.clone());
        }
        let id = self
            .client
            .folder_id(path, true, self.deadline())
            .await
            .map_err(|e| self.err("find or create folder", e))?
            .ok_or_else(|| GraphMailboxError::NoSuchFolder {
                user: self.user.clone(),
                folder: path.to_owned(),
                detail: "could not be created",
            })?;
        self.folders.insert(path.to_owned(), id.clone());
        Ok(id)
    }
}

#[async_trait]
impl Mailbox for GraphSession {
    async fn select(&mut self, _folder: &str) -> Result<SelectedFolder, MailboxError> {
        let stored = self
            .sync
            .get_graph_sync(&self.name)
            .await
            .map_err(|error| GraphMailboxError::SyncState {
                mailbox: self.name.clone(),
                operation: "read",
                error,
            })?;
        self.selected = true;
        let fresh = |previous: u32| GraphSyncState {
            // any non-zero value, never the previous one: a new state starts new UIDs
            uid_validity: (chrono::Utc::now().timestamp() as u32)
                .max(previous.wrapping_add(1))
                .max(1),
            next_uid: 1,
            delta_link: None,
            pending: Vec::new(),
            folder_id: None,
        };
        self.state = match stored {
            Some(state)
                if state
                    .folder_id
                    .as_ref()
                    .is_none_or(|id| *id == self.folder_id) =>
            {
                state
            }
            Some(state) => {
                tracing::warn!(
                    mailbox = %self.name,
                    "the polled folder changed: its Graph sync starts over in the new folder (mail left in the old one is no longer polled)"
                );
                fresh(state.uid_validity)
            }
            None => fresh(0),
        };
        self.state.folder_id = Some(self.folder_id.clone());
        let link = self.state.delta_link.clone();
        let round = match &link {
            Some(link) => match self
                .client
                .delta(DeltaStart::Link(link), self.deadline())
                .await
            {
                Ok(round) => Some(round),
                Err(e) if e.is_sync_reset() => {
                    tracing::warn!(
                        mailbox = %self.name,
                        code = e.code(),
                        "Graph delta token expired or invalid: full resync of the folder (the dedupe records keep it from opening tickets twice)"
                    );
                    None
                }
                Err(e) => return Err(self.err("delta", e)),
            },
            None => None,
        };
        match round {
            Some(round) => {
                self.apply(round.changes, false);
                self.state.delta_link = Some(round.delta_link);
            }
            None => {
                let round = self
                    .client
                    .delta(
                        DeltaStart::Full {
                            folder: &self.folder_id,
                            since: self.since,
                        },
                        self.deadline(),
                    )
                    .await
                    .map_err(|e| self.err("delta (full)", e))?;
                self.apply(round.changes, true);
                self.state.delta_link = Some(round.delta_link);
            }
        }
        if self.state.pending.len() > self.max_pending_with_link {
            tracing::info!(
                mailbox = %self.name,
                waiting = self.state.pending.len(),
                kept_with_the_delta_link = self.max_pending_with_link,
                "more mail waits in the folder than is kept with the delta link: unless this run drains it, the next run lists the folder in full (nothing is lost)"
            );
        }
        self.save()
            .await
            .map_err(|error| GraphMailboxError::SyncState {
                mailbox: self.name.clone(),
                operation: "store",
                error,
            })?;
        Ok(SelectedFolder {
            uid_validity: self.state.uid_validity,
            exists: self.state.pending.len() as u32,
        })
    }

    async fn search(
        &mut self,
        _scope: SearchScope,
        _since: Option<chrono::DateTime<chrono::Utc>>,
    ) -> Result<Vec<Uid>, MailboxError> {
        // `pending` holds only unread mail under mark_seen (read mail left it).
        Ok(self.state.pending.iter().map(|m| m.uid).collect())
    }

    async fn list_messages(&mut self, uids: &[Uid]) -> Result<Vec<ListedMessage>, MailboxError> {
        Ok(self
            .state
            .pending
            .iter()
            .filter(|m| uids.contains(&m.uid))
            .map(|m| ListedMessage {
                uid: m.uid,
                size: m.size.unwrap_or(0).min(u64::from(u32::MAX)) as u32,
                received_at: m.received_at,
            })
            .collect())
    }

    async fn fetch_raw(&mut self, uid: Uid) -> Result<Option<Vec<u8>>, MailboxError> {
        let Some(id) = self.id_of(uid) else {
            return Ok(None);
        };
        match self.client.mime(&id, self.deadline()).await {
            Ok(Some(raw)) => Ok(Some(raw)),
            Ok(None) => {
                self.forget(uid);
                Ok(None)
            }
            Err(e) => Err(self.err("fetch $value", e)),
        }
    }

    async fn fetch_header(&mut self, uid: Uid) -> Result<Option<Vec<u8>>, MailboxError> {
        let Some(id) = self.id_of(uid) else {
            return Ok(None);
        };
        match self.client.header_block(&id, self.deadline()).await {
            Ok(Some(block)) => Ok(Some(block)),
            Ok(None) => {
                self.forget(uid);
                Ok(None)
            }
            Err(e) => Err(self.err("fetch headers", e)),
        }
    }

    async fn move_to(&mut self, uid: Uid, folder: &str) -> Result<(), MailboxError> {
        let Some(id) = self.id_of(uid) else {
            return Ok(());
        };
        let destination = self.resolve(folder).await?;
        let moved = self
            .client
            .move_to(&id, &destination, self.deadline())
            .await
            .map_err(|e| self.err("move", e))?;
        if !moved {
            tracing::warn!(mailbox = %self.name, uid, "message no longer in the folder when moving it (moved meanwhile)");
        }
        self.forget(uid);
        Ok(())
    }

    async fn fetch_raw_each(
        &mut self,
        uids: &[Uid],
        to: RawMailSender,
    ) -> Result<(), MailboxError> {
        let deadline = self.deadline();
        let client = &self.client;
        // Small mail of a known size through JSON batches (many in one round trip); the rest
        // with a request each, side by side, as many as Graph lets one mailbox have in flight.
        // Each mail is handed over as soon as its answer is in.
        let mut small: Vec<(Uid, (String, u64))> = Vec::new();
        let mut single: Vec<(Uid, String)> = Vec::new();
        let mut vanished = Vec::new();
        for uid in uids {
            let Some(m) = self.state.pending.iter().find(|m| m.uid == *uid) else {
                vanished.push(*uid);
                continue;
            };
            match m.size {
                Some(size) if size <= BATCH_READ_MAIL_BYTES => {
                    small.push((*uid, (m.id.clone(), size)));
                }
                _ => single.push((*uid, m.id.clone())),
            }
        }
        let mut failed = None;
        let ids: Vec<(String, u64)> = small.iter().map(|(_, id)| id.clone()).collect();
        let read = client.mime_many(&ids, BATCH_READ_BYTES, deadline).await;
        for ((uid, _), result) in small.iter().zip(read) {
            match result {
                Ok(Some(raw)) => {
                    let _ = to.send((*uid, raw));
                }
                Ok(None) => vanished.push(*uid),
                Err(e) => {
                    failed.get_or_insert(e);
                }
            }
        }
        if failed.is_none() {
            let mut read = futures::stream::iter(single)
                .map(|(uid, id)| async move { (uid, client.mime(&id, deadline).await) })
                .buffer_unordered(MAX_CONCURRENT_REQUESTS);
            while let Some((uid, result)) = read.next().await {
                match result {
                    Ok(Some(raw)) => {
                        let _ = to.send((uid, raw));
                    }
                    Ok(None) => vanished.push(uid),
                    Err(e) => {
                        failed = Some(e);
                        break;
                    }
                }
            }
        }
        for uid in vanished {
            self.forget(uid);
        }
        match failed {
            Some(e) => Err(self.err("fetch $value", e)),
            None => Ok(()),
        }
    }

    async fn move_many(&mut self, uids: &[Uid], folder: &str) -> Result<(), MailboxError> {
        let destination = self.resolve(folder).await?;
        // JSON batches of up to 20 moves (one request each for Graph's limits, one round trip)
        let (uids, ids): (Vec<Uid>, Vec<String>) = uids
            .iter()
            .filter_map(|u| self.id_of(*u).map(|id| (*u, id)))
            .unzip();
        let moved = self
            .client
            .move_many(&ids, &destination, self.deadline())
            .await;
        let mut failed = None;
        for (uid, result) in uids.into_iter().zip(moved) {
            match result {
                Ok(moved) => {
                    if !moved {
                        tracing::warn!(mailbox = %self.name, uid, "message no longer in the folder when moving it (moved meanwhile)");
                    }
                    self.forget(uid);
                }
                Err(e) => failed = failed.or(Some(e)),
            }
        }
        match failed {
            Some(e) => Err(self.err("move", e)),
            None => Ok(()),
        }
    }

    async fn mark_seen(&mut self, uid: Uid) -> Result<(), MailboxError> {
        let Some(id) = self.id_of(uid) else {
            return Ok(());
        };
        self.client
            .mark_read(&id, self.deadline())
            .await
            .map_err(|e| self.err("mark read", e))?;
        self.forget(uid);
        Ok(())
    }

    async fn delete(&mut self, uid: Uid) -> Result<(), MailboxError> {
        let Some(id) = self.id_of(uid) else {
            return Ok(());
        };
        self.client
            .delete(&id, self.deadline())
            .await
            .map_err(|e| self.err("delete", e))?;
        self.forget(uid);
        Ok(())
    }

    fn round_trips(&self) -> u64 {
        self.client.requests()
    }

    fn lists_under_lease(&self) -> bool {
        true
    }

    async fn logout(self: Box<Self>) {
        if !self.selected {
            return;
        }
        if let Err(e) = self.save().await {
            tracing::warn!(mailbox = %self.name, error = %e, "could not store the Graph sync state; the next round replays from the last stored link");
        }
    }
}

/// Picks the IMAP or the Graph connector by the mailbox's `protocol`.
pub struct ProtocolConnector {
    /// IMAP mailboxes.
    pub imap: Arc<dyn MailboxConnector>,
    /// Graph mailboxes.
    pub graph: Arc<dyn MailboxConnector>,
}

#[async_trait]
impl MailboxConnector for ProtocolConnector {
    async fn connect(
        &self,
        config: &MailboxConfig,
        access_token: &SecretString,
    ) -> Result<Box<dyn Mailbox>, MailboxError> {
        match config.protocol {
            Protocol::Imap => self.imap.connect(config, access_token).await,
            Protocol::Graph => self.graph.connect(config, access_token).await,
        }
    }
}
