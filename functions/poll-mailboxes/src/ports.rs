//! The small traits the poll loop runs on. Real adapters: [`crate::imap_adapter`] (IMAP),
//! [`crate::graph_adapter`] (Graph), `mailbridge::state_table` (DynamoDB, which also holds the
//! state store's port), `mailbridge::ticket_sink` (helpdesk adapters), the shared token layer.
//! Unit tests use in-memory fakes.

use std::sync::Arc;

use async_trait::async_trait;
use mailbridge::error::{Classify, ErrorClass};
use mailbridge::imap::{ImapError, ListedMessage, RawMailSender, SearchScope, SelectedFolder, Uid};
use mailbridge::mailbox::MailboxConfig;
use mailbridge::ticket_sink::TicketSink;
use secrecy::SecretString;

use crate::graph_adapter::GraphMailboxError;

/// Why a mailbox could not be opened, read or changed, in the words of the protocol it is read
/// with: an operator reading `status` for a Graph mailbox sees Graph's answer, not IMAP's.
#[derive(Debug, thiserror::Error)]
pub enum MailboxError {
    /// Over IMAP.
    #[error(transparent)]
    Imap(#[from] ImapError),
    /// Through Microsoft Graph.
    #[error(transparent)]
    Graph(#[from] GraphMailboxError),
}

impl MailboxError {
    /// The server refused the access token: a fresh one may do (the loop refreshes it once).
    pub fn token_refused(&self) -> bool {
        match self {
            MailboxError::Imap(e) => matches!(e, ImapError::AuthenticateFailed { .. }),
            MailboxError::Graph(e) => e.token_refused(),
        }
    }
}

impl Classify for MailboxError {
    fn class(&self) -> ErrorClass {
        match self {
            MailboxError::Imap(e) => e.class(),
            MailboxError::Graph(e) => e.class(),
        }
    }
}

/// One logged-in mailbox connection (one message in flight at a time).
#[async_trait]
pub trait Mailbox: Send {
    /// Select the folder.
    async fn select(&mut self, folder: &str) -> Result<SelectedFolder, MailboxError>;
    /// UIDs in the selected folder, ascending; with `since`, at least every mail received at or
    /// after it (a coarser search may return older mail too: the caller filters on the
    /// `received_at` of [`Mailbox::list_messages`]).
    async fn search(
        &mut self,
        scope: SearchScope,
        since: Option<chrono::DateTime<chrono::Utc>>,
    ) -> Result<Vec<Uid>, MailboxError>;
    /// `RFC822.SIZE` of each UID (one round trip), ascending by UID.
    async fn list_messages(&mut self, uids: &[Uid]) -> Result<Vec<ListedMessage>, MailboxError>;
    /// The whole raw message (`BODY.PEEK[]`), None when it vanished.
    async fn fetch_raw(&mut self, uid: Uid) -> Result<Option<Vec<u8>>, MailboxError>;
    /// Whole raw messages, each handed to `to` as soon as it arrived (a UID never handed over
    /// vanished), fetched in as few round trips or as many requests side by side as the
    /// protocol allows.
    async fn fetch_raw_each(
        &mut self,
        uids: &[Uid],
        to: RawMailSender,
    ) -> Result<(), MailboxError> {
        for uid in uids {
            if let Some(raw) = self.fetch_raw(*uid).await? {
                let _ = to.send((*uid, raw));
            }
        }
        Ok(())
    }
    /// The header block only, None when it vanished.
    async fn fetch_header(&mut self, uid: Uid) -> Result<Option<Vec<u8>>, MailboxError>;
    /// Move to a folder (created if missing).
    async fn move_to(&mut self, uid: Uid, folder: &str) -> Result<(), MailboxError>;
    /// Move these (ascending) to a folder (created if missing), in as few commands as the
    /// protocol allows.
    async fn move_many(&mut self, uids: &[Uid], folder: &str) -> Result<(), MailboxError> {
        for uid in uids {
            self.move_to(*uid, folder).await?;
        }
        Ok(())
    }
    /// Set `\Seen`.
    async fn mark_seen(&mut self, uid: Uid) -> Result<(), MailboxError>;
    /// Delete this one message.
    async fn delete(&mut self, uid: Uid) -> Result<(), MailboxError>;
    /// Commands sent so far.
    fn round_trips(&self) -> u64;
    /// Whether `select` and `search` write state of their own (Graph: the delta link and the
    /// messages still to handle), so that they must run under the mailbox lease, like the work
    /// on the mail. IMAP only reads there: its lease is taken once there is mail.
    fn lists_under_lease(&self) -> bool {
        false
    }
    /// Log out (best effort).
    async fn logout(self: Box<Self>);
}

/// Opens mailbox connections.
#[async_trait]
pub trait MailboxConnector: Send + Sync {
    /// Connect (TLS) and `AUTHENTICATE XOAUTH2` as `config.user` with `access_token`.
    async fn connect(
        &self,
        config: &MailboxConfig,
        access_token: &SecretString,
    ) -> Result<Box<dyn Mailbox>, MailboxError>;
}

/// Builds (and caches) the ticket sink of a mailbox's target.
#[async_trait]
pub trait SinkFactory: Send + Sync {
    /// The sink for this mailbox (URL + credential secret). Error: why it cannot be built.
    async fn sink_for(&self, config: &MailboxConfig) -> Result<Arc<dyn TicketSink>, String>;
}
