//! The real [`Mailbox`] / [`MailboxConnector`]: `mailbridge::imap` over implicit TLS.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use mailbridge::imap::{
    self, ImapConnection, ImapEndpoint, ImapError, ListedMessage, RawMailSender, SearchScope,
    SelectedFolder, Uid,
};
use secrecy::SecretString;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::ports::{Mailbox, MailboxConnector, MailboxError};
use mailbridge::mailbox::MailboxConfig;

/// Connects to each mailbox's host with one shared rustls config.
#[derive(Clone)]
pub struct ImapConnector {
    tls: Arc<rustls::ClientConfig>,
    timeout: Duration,
}

impl std::fmt::Debug for ImapConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImapConnector")
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl ImapConnector {
    /// Trust the webpki roots plus the PEM file `extra_ca` (if any); `timeout` per operation.
    pub fn new(extra_ca: Option<&std::path::Path>, timeout: Duration) -> Result<Self, ImapError> {
        Ok(ImapConnector {
            tls: imap::tls_config(extra_ca)?,
            timeout,
        })
    }
}

#[async_trait]
impl MailboxConnector for ImapConnector {
    async fn connect(
        &self,
        config: &MailboxConfig,
        access_token: &SecretString,
    ) -> Result<Box<dyn Mailbox>, MailboxError> {
        let endpoint = ImapEndpoint {
            host: config.host.clone(),
            port: config.port,
            timeout: self.timeout,
        };
        let connection =
            imap::connect_and_login(&endpoint, self.tls.clone(), &config.user, access_token)
                .await?;
        Ok(Box::new(connection))
    }
}

#[async_trait]
impl<S> Mailbox for ImapConnection<S>
where
    S: AsyncRead + AsyncWrite + Unpin + std::fmt::Debug + Send + Sync + 'static,
{
    async fn select(&mut self, folder: &str) -> Result<SelectedFolder, MailboxError> {
        Ok(ImapConnection::select(self, folder).await?)
    }
    async fn search(
        &mut self,
        scope: SearchScope,
        since: Option<chrono::DateTime<chrono::Utc>>,
    ) -> Result<Vec<Uid>, MailboxError> {
        // SINCE compares the day of INTERNALDATE in its own zone (up to 14 hours off UTC):
        // a day early finds every mail at or after `since`.
        let day = since.map(|at| (at - chrono::Duration::days(1)).date_naive());
        Ok(ImapConnection::search(self, scope, day).await?)
    }
    async fn list_messages(&mut self, uids: &[Uid]) -> Result<Vec<ListedMessage>, MailboxError> {
        Ok(ImapConnection::list_messages(self, uids).await?)
    }
    async fn fetch_raw(&mut self, uid: Uid) -> Result<Option<Vec<u8>>, MailboxError> {
        Ok(ImapConnection::fetch_raw(self, uid).await?)
    }
    async fn fetch_raw_each(
        &mut self,
        uids: &[Uid],
        to: RawMailSender,
    ) -> Result<(), MailboxError> {
        Ok(ImapConnection::fetch_raw_each(self, uids, to).await?)
    }
    async fn fetch_header(&mut self, uid: Uid) -> Result<Option<Vec<u8>>, MailboxError> {
        Ok(ImapConnection::fetch_header(self, uid).await?)
    }
    async fn move_to(&mut self, uid: Uid, folder: &str) -> Result<(), MailboxError> {
        Ok(ImapConnection::move_to(self, uid, folder).await?)
    }
    async fn move_many(&mut self, uids: &[Uid], folder: &str) -> Result<(), MailboxError> {
        Ok(ImapConnection::move_many(self, uids, folder).await?)
    }
    async fn mark_seen(&mut self, uid: Uid) -> Result<(), MailboxError> {
        Ok(ImapConnection::mark_seen(self, uid).await?)
    }
    async fn delete(&mut self, uid: Uid) -> Result<(), MailboxError> {
        Ok(ImapConnection::delete(self, uid).await?)
    }
    fn round_trips(&self) -> u64 {
        ImapConnection::round_trips(self)
    }
    async fn logout(self: Box<Self>) {
        ImapConnection::logout(*self).await
    }
}
