//! IMAP over implicit TLS with SASL XOAUTH2 (the mailbox adapter).
//!
//! [`connect_tls`] opens a TCP + rustls connection verified against the webpki roots plus,
//! optionally, extra trust anchors from a PEM file (a private CA, or the local stack's Dovecot CA).
//! [`ImapConnection::authenticate_xoauth2`] logs in over any `AsyncRead + AsyncWrite` stream, so
//! unit tests drive it with an in-memory duplex stream and a scripted server. Every operation runs
//! under a timeout; after a timeout or I/O error the connection is marked broken and every further
//! call fails fast with [`ImapError::ConnectionLost`].
//!
//! # Implementation notes
//! - XOAUTH2 is sent as SASL-IR (`AUTHENTICATE XOAUTH2 <base64>`) when the server advertises
//!   `SASL-IR` (Exchange Online and Dovecot do); otherwise the credentials answer the first empty
//!   continuation. On failure the server sends a base64 JSON error challenge, which the client
//!   answers with an empty line before the final `NO` arrives.
//! - Message bodies are fetched with `BODY.PEEK[]`, which never sets `\Seen`.
//! - After-actions use `UID MOVE` when `MOVE` is advertised, else `UID COPY` + `\Deleted` +
//!   `UID EXPUNGE` (`UIDPLUS`), so other messages flagged `\Deleted` by a person are left alone.
//!   A missing target folder is created on the first failure and the action retried once.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use async_imap::imap_proto::{Capability, Response};
use base64::Engine as _;
use futures::TryStreamExt as _;
use secrecy::{ExposeSecret as _, SecretString};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use crate::error::{Classify, ErrorClass};

/// Exchange Online's answer (to SELECT and friends) when IMAP is disabled for the mailbox or the
/// mailbox cannot be reached, after a successful XOAUTH2 login.
pub const NOT_CONNECTED_MARKER: &str = "User is authenticated but not connected";

/// An IMAP UID.
pub type Uid = u32;

/// Why an IMAP operation failed. Messages name the host/user/folder and what went wrong.
#[derive(Debug, thiserror::Error)]
pub enum ImapError {
    /// TCP connect failed (DNS, refused, unreachable).
    #[error("cannot connect to IMAP server {host}:{port}: {detail}")]
    Connect {
        /// Host name.
        host: String,
        /// Port.
        port: u16,
        /// What failed.
        detail: String,
    },
    /// TLS setup or certificate verification failed.
    #[error("TLS with IMAP server {host} failed: {detail}")]
    Tls {
        /// Host name.
        host: String,
        /// What failed (e.g. the certificate is not trusted).
        detail: String,
    },
    /// The extra CA file could not be read or holds no certificate.
    #[error("IMAP CA file {path}: {detail}")]
    CaFile {
        /// The PEM file path.
        path: String,
        /// What is wrong.
        detail: String,
    },
    /// The server does not offer XOAUTH2.
    #[error("IMAP server does not advertise AUTH=XOAUTH2 (capabilities: {capabilities})")]
    NoXoauth2 {
        /// What it did advertise.
        capabilities: String,
    },
    /// `AUTHENTICATE XOAUTH2` answered NO: the token is not accepted for this login user (consent
    /// for IMAP.AccessAsUser.All missing, wrong audience, token revoked, or — for a shared mailbox —
    /// the signing-in user lacks FullAccess on it).
    #[error("AUTHENTICATE XOAUTH2 failed for {user}: {detail}")]
    AuthenticateFailed {
        /// The login user (`user=` in XOAUTH2).
        user: String,
        /// The server's text.
        detail: String,
    },
    /// Exchange's "User is authenticated but not connected": IMAP is disabled for the mailbox, or
    /// the mailbox is not reachable right now.
    #[error(
        "{user}: \"User is authenticated but not connected\" (IMAP disabled for this mailbox, or the mailbox is unavailable)"
    )]
    NotConnected {
        /// The login user.
        user: String,
    },
    /// An operation did not finish in time; the connection is abandoned.
    #[error("IMAP {operation} timed out after {seconds} s")]
    Timeout {
        /// The operation.
        operation: &'static str,
        /// The timeout.
        seconds: u64,
    },
    /// The connection dropped (or was abandoned after an earlier error).
    #[error("IMAP connection lost during {operation}: {detail}")]
    ConnectionLost {
        /// The operation.
        operation: &'static str,
        /// What happened.
        detail: String,
    },
    /// The folder does not exist or cannot be selected.
    #[error("cannot select IMAP folder {folder:?}: {detail}")]
    NoSuchFolder {
        /// Folder name.
        folder: String,
        /// The server's text.
        detail: String,
    },
    /// The server answered NO/BAD or something unexpected.
    #[error("IMAP {operation} failed: {detail}")]
    Command {
        /// The operation.
        operation: &'static str,
        /// The server's text.
        detail: String,
    },
}

impl Classify for ImapError {
    fn class(&self) -> ErrorClass {
        match self {
            ImapError::Tls { .. }
            | ImapError::CaFile { .. }
            | ImapError::NoXoauth2 { .. }
            | ImapError::NoSuchFolder { .. } => ErrorClass::Permanent,
            // A failed AUTHENTICATE with a fresh token, "authenticated but not connected" and
            // dropped connections are retried on the next run; the log line says what a person
            // may have to fix.
            ImapError::AuthenticateFailed { .. }
            | ImapError::NotConnected { .. }
            | ImapError::Connect { .. }
            | ImapError::Timeout { .. }
            | ImapError::ConnectionLost { .. }
            | ImapError::Command { .. } => ErrorClass::Transient,
        }
    }
}

/// Where to connect and how patient to be.
#[derive(Clone, Debug)]
pub struct ImapEndpoint {
    /// Host name (also the TLS server name).
    pub host: String,
    /// Port (993 for implicit TLS).
    pub port: u16,
    /// Per-operation timeout (connect, login, each command).
    pub timeout: Duration,
}

/// Build a rustls client config trusting the webpki roots plus the certificates in `extra_ca_pem`.
pub fn tls_config(extra_ca_pem: Option<&Path>) -> Result<Arc<rustls::ClientConfig>, ImapError> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = extra_ca_pem {
        use rustls_pki_types::pem::PemObject as _;
        let ca_err = |detail: String| ImapError::CaFile {
            path: path.display().to_string(),
            detail,
        };
        let certs = rustls_pki_types::CertificateDer::pem_file_iter(path)
            .map_err(|e| ca_err(e.to_string()))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| ca_err(e.to_string()))?;
        if certs.is_empty() {
            return Err(ca_err("no PEM certificate in the file".into()));
        }
        for cert in certs {
            roots.add(cert).map_err(|e| ca_err(e.to_string()))?;
        }
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ImapError::Tls {
            host: String::new(),
            detail: e.to_string(),
        })?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// Open TCP + TLS (implicit TLS, certificate verified) to the endpoint.
pub async fn connect_tls(
    endpoint: &ImapEndpoint,
    tls: Arc<rustls::ClientConfig>,
) -> Result<TlsStream<TcpStream>, ImapError> {
    let seconds = endpoint.timeout.as_secs();
    let tcp = tokio::time::timeout(
        endpoint.timeout,
        TcpStream::connect((endpoint.host.as_str(), endpoint.port)),
    )
    .await
    .map_err(|_| ImapError::Timeout {
        operation: "connect",
        seconds,
    })?
    .map_err(|e| ImapError::Connect {
        host: endpoint.host.clone(),
        port: endpoint.port,
        detail: e.to_string(),
    })?;
    let _ = tcp.set_nodelay(true);
    let server_name =
        rustls_pki_types::ServerName::try_from(endpoint.host.clone()).map_err(|e| {
            ImapError::Tls {
                host: endpoint.host.clone(),
                detail: format!("invalid server name: {e}"),
            }
        })?;
    let connector = tokio_rustls::TlsConnector::from(tls);
    tokio::time::timeout(endpoint.timeout, connector.connect(server_name, tcp))
        .await
        .map_err(|_| ImapError::Timeout {
            operation: "TLS handshake",
            seconds,
        })?
        .map_err(|e| ImapError::Tls {
            host: endpoint.host.clone(),
            detail: e.to_string(),
        })
}

/// The XOAUTH2 initial client response: `user=<login>^Aauth=Bearer <token>^A^A`.
pub fn xoauth2_initial_response(user: &str, token: &str) -> String {
    format!("user={user}\x01auth=Bearer {token}\x01\x01")
}

/// SASL XOAUTH2 authenticator: credentials on the first (empty) challenge unless already sent as
/// SASL-IR; an empty answer to the server's JSON error challenge.
struct Xoauth2 {
    initial: Option<String>,
}

impl async_imap::Authenticator for Xoauth2 {
    type Response = String;
    fn process(&mut self, challenge: &[u8]) -> String {
        if challenge.is_empty() {
            self.initial.take().unwrap_or_default()
        } else {
            // {"status":"401","schemes":"bearer","scope":"..."}: answer empty, then NO follows.
            String::new()
        }
    }
}

/// One message as `UID FETCH (UID RFC822.SIZE INTERNALDATE)` lists it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ListedMessage {
    /// The message's UID in the selected folder.
    pub uid: Uid,
    /// `RFC822.SIZE`: the raw message's size in bytes.
    pub size: u32,
    /// `INTERNALDATE`: when the mailbox received the message (RFC 3501 2.3.3), which does not
    /// change between polls; `None` when the server sent none.
    pub received_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// Where whole raw messages go as they arrive: `(uid, raw)`.
pub type RawMailSender = tokio::sync::mpsc::UnboundedSender<(Uid, Vec<u8>)>;

/// Selected folder facts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SelectedFolder {
    /// UIDVALIDITY (0 when the server sent none).
    pub uid_validity: u32,
    /// Number of messages.
    pub exists: u32,
}

/// What to search for in the selected folder.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SearchScope {
    /// Every message not flagged `\Deleted`.
    Undeleted,
    /// Only unseen messages not flagged `\Deleted`.
    UnseenUndeleted,
}

/// A logged-in IMAP session over stream `S`.
pub struct ImapConnection<S>
where
    S: AsyncRead + AsyncWrite + Unpin + std::fmt::Debug + Send,
{
    session: async_imap::Session<S>,
    capabilities: HashSet<String>,
    timeout: Duration,
    user: String,
    broken: Option<String>,
    round_trips: u64,
}

impl<S> std::fmt::Debug for ImapConnection<S>
where
    S: AsyncRead + AsyncWrite + Unpin + std::fmt::Debug + Send,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImapConnection")
            .field("user", &self.user)
            .field("capabilities", &self.capabilities)
            .field("broken", &self.broken)
            .finish()
    }
}

fn classify_command_error(
    operation: &'static str,
    user: &str,
    error: async_imap::error::Error,
) -> ImapError {
    use async_imap::error::Error as E;
    let text = error.to_string();
    if text.contains(NOT_CONNECTED_MARKER) {
        return ImapError::NotConnected {
            user: user.to_string(),
        };
    }
    match error {
        E::Io(e) => ImapError::ConnectionLost {
            operation,
            detail: e.to_string(),
        },
        E::ConnectionLost => ImapError::ConnectionLost {
            operation,
            detail: "server closed the connection".into(),
        },
        _ => ImapError::Command {
            operation,
            detail: text,
        },
    }
}

fn capability_names<'a>(caps: impl Iterator<Item = &'a Capability<'a>>) -> HashSet<String> {
    caps.map(|c| match c {
        Capability::Imap4rev1 => "IMAP4REV1".to_string(),
        Capability::Auth(m) => format!("AUTH={}", m.to_ascii_uppercase()),
        Capability::Atom(a) => a.to_ascii_uppercase(),
    })
    .collect()
}

impl<S> ImapConnection<S>
where
    S: AsyncRead + AsyncWrite + Unpin + std::fmt::Debug + Send,
{
    /// Read the greeting, learn the capabilities, and `AUTHENTICATE XOAUTH2` as `user` (the mailbox
    /// address; for a shared mailbox the shared address with a delegate's token).
    pub async fn authenticate_xoauth2(
        stream: S,
        user: &str,
        access_token: &SecretString,
        timeout: Duration,
    ) -> Result<Self, ImapError> {
        let seconds = timeout.as_secs();
        let to = |operation| ImapError::Timeout { operation, seconds };
        let lost = |operation, detail: String| ImapError::ConnectionLost { operation, detail };
        let mut client = async_imap::Client::new(stream);
        let greeting = tokio::time::timeout(timeout, client.read_response())
            .await
            .map_err(|_| to("greeting"))?
            .map_err(|e| lost("greeting", e.to_string()))?
            .ok_or_else(|| lost("greeting", "closed before greeting".into()))?;
        let mut round_trips = 0;
        let mut pre_auth_caps = match greeting.parsed() {
            Response::Data {
                code: Some(async_imap::imap_proto::ResponseCode::Capabilities(caps)),
                ..
            } => Some(capability_names(caps.iter())),
            Response::Data {
                status: async_imap::imap_proto::Status::Bye,
                information,
                ..
            } => {
                return Err(lost(
                    "greeting",
                    format!("server said BYE: {}", information.as_deref().unwrap_or("")),
                ));
            }
            _ => None,
        };
        if pre_auth_caps.is_none() {
            // Exchange's greeting carries no capabilities: ask (own tag, responses read here).
            round_trips += 1;
            let stream = client.get_mut();
            tokio::time::timeout(timeout, async {
                stream.write_all(b"mbcap CAPABILITY\r\n").await?;
                stream.flush().await
            })
            .await
            .map_err(|_| to("CAPABILITY"))?
            .map_err(|e| lost("CAPABILITY", e.to_string()))?;
            let mut caps = HashSet::new();
            loop {
                let response = tokio::time::timeout(timeout, client.read_response())
                    .await
                    .map_err(|_| to("CAPABILITY"))?
                    .map_err(|e| lost("CAPABILITY", e.to_string()))?
                    .ok_or_else(|| lost("CAPABILITY", "closed".into()))?;
                match response.parsed() {
                    Response::Capabilities(list) => caps.extend(capability_names(list.iter())),
                    Response::Done { tag, .. } if tag.0 == "mbcap" => break,
                    _ => {}
                }
            }
            pre_auth_caps = Some(caps);
        }
        let caps = pre_auth_caps.unwrap_or_default();
        if !caps.contains("AUTH=XOAUTH2") {
            let mut list: Vec<_> = caps.into_iter().collect();
            list.sort();
            return Err(ImapError::NoXoauth2 {
                capabilities: list.join(" "),
            });
        }
        let initial = xoauth2_initial_response(user, access_token.expose_secret());
        let (command, authenticator) = if caps.contains("SASL-IR") {
            let encoded = base64::engine::general_purpose::STANDARD.encode(initial.as_bytes());
            (format!("XOAUTH2 {encoded}"), Xoauth2 { initial: None })
        } else {
            (
                "XOAUTH2".to_string(),
                Xoauth2 {
                    initial: Some(initial),
                },
            )
        };
        round_trips += 1;
        let session = tokio::time::timeout(timeout, client.authenticate(command, authenticator))
            .await
            .map_err(|_| to("AUTHENTICATE"))?
            .map_err(|(e, _client)| match e {
                async_imap::error::Error::No(detail) | async_imap::error::Error::Bad(detail) => {
                    if detail.contains(NOT_CONNECTED_MARKER) {
                        ImapError::NotConnected {
                            user: user.to_string(),
                        }
                    } else {
                        ImapError::AuthenticateFailed {
                            user: user.to_string(),
                            detail,
                        }
                    }
                }
                other => classify_command_error("AUTHENTICATE", user, other),
            })?;
        let mut connection = ImapConnection {
            session,
            capabilities: HashSet::new(),
            timeout,
            user: user.to_string(),
            broken: None,
            round_trips,
        };
        // Exchange adds MOVE only after login: ask again.
        let post_auth = connection
            .run("CAPABILITY", |s| Box::pin(s.capabilities()))
            .await?;
        connection.capabilities = post_auth
            .iter()
            .map(|c| match c {
                async_imap::types::Capability::Imap4rev1 => "IMAP4REV1".to_string(),
                async_imap::types::Capability::Auth(m) => {
                    format!("AUTH={}", m.to_ascii_uppercase())
                }
                async_imap::types::Capability::Atom(a) => a.to_ascii_uppercase(),
            })
            .collect();
        Ok(connection)
    }

    /// Capabilities advertised after login (upper-case names, `AUTH=` mechanisms included).
    pub fn capabilities(&self) -> &HashSet<String> {
        &self.capabilities
    }

    /// Whether `UID MOVE` is available.
    pub fn has_move(&self) -> bool {
        self.capabilities.contains("MOVE")
    }

    /// Commands sent so far (each one is one client → server → client round trip).
    pub fn round_trips(&self) -> u64 {
        self.round_trips
    }

    /// Run one command future under the timeout; mark the connection broken on I/O failure.
    async fn run<'s, T>(
        &'s mut self,
        operation: &'static str,
        command: impl for<'a> FnOnce(
            &'a mut async_imap::Session<S>,
        ) -> std::pin::Pin<
            Box<dyn std::future::Future<Output = async_imap::error::Result<T>> + Send + 'a>,
        >,
    ) -> Result<T, ImapError> {
        if let Some(reason) = &self.broken {
            return Err(ImapError::ConnectionLost {
                operation,
                detail: format!("connection already abandoned: {reason}"),
            });
        }
        self.round_trips += 1;
        let result = tokio::time::timeout(self.timeout, command(&mut self.session)).await;
        // Unilateral responses (EXISTS, EXPUNGE...) pile up in a bounded channel: drop them.
        while self.session.unsolicited_responses.try_recv().is_ok() {}
        match result {
            Err(_) => {
                self.broken = Some(format!("{operation} timed out"));
                Err(ImapError::Timeout {
                    operation,
                    seconds: self.timeout.as_secs(),
                })
            }
            Ok(Err(e)) => {
                let error = classify_command_error(operation, &self.user, e);
                if matches!(error, ImapError::ConnectionLost { .. }) {
                    self.broken = Some(error.to_string());
                }
                Err(error)
            }
            Ok(Ok(value)) => Ok(value),
        }
    }

    /// `SELECT` the folder (read-write) and report UIDVALIDITY.
    pub async fn select(&mut self, folder: &str) -> Result<SelectedFolder, ImapError> {
        let folder_owned = folder.to_string();
        let result = self
            .run("SELECT", move |s| {
                Box::pin(async move { s.select(&folder_owned).await })
            })
            .await;
        match result {
            Ok(mailbox) => Ok(SelectedFolder {
                uid_validity: mailbox.uid_validity.unwrap_or(0),
                exists: mailbox.exists,
            }),
            Err(ImapError::Command { detail, .. }) => Err(ImapError::NoSuchFolder {
                folder: folder.to_string(),
                detail,
            }),
            Err(other) => Err(other),
        }
    }

    /// `UID SEARCH` in the selected folder; UIDs ascending. With `since`, only mail whose
    /// INTERNALDATE falls on that day or later (`SINCE`: the date of the INTERNALDATE in its own
    /// time zone, so the caller asks a day early and filters the exact time itself).
    pub async fn search(
        &mut self,
        scope: SearchScope,
        since: Option<chrono::NaiveDate>,
    ) -> Result<Vec<Uid>, ImapError> {
        let mut query = match scope {
            SearchScope::Undeleted => "UNDELETED",
            SearchScope::UnseenUndeleted => "UNSEEN UNDELETED",
        }
        .to_string();
        if let Some(day) = since {
            query.push_str(&format!(" SINCE {}", day.format("%-d-%b-%Y")));
        }
        let found = self
            .run("UID SEARCH", move |s| Box::pin(s.uid_search(query)))
            .await?;
        let mut uids: Vec<Uid> = found.into_iter().collect();
        uids.sort_unstable();
        Ok(uids)
    }

    /// `UID FETCH <set> (UID RFC822.SIZE INTERNALDATE)` for many UIDs in one round trip, in
    /// ascending UID order. UIDs that vanished meanwhile are simply absent.
    pub async fn list_messages(&mut self, uids: &[Uid]) -> Result<Vec<ListedMessage>, ImapError> {
        if uids.is_empty() {
            return Ok(Vec::new());
        }
        let set = uid_set(uids);
        let mut listed = self
            .run("UID FETCH RFC822.SIZE INTERNALDATE", move |s| {
                Box::pin(async move {
                    let stream = s.uid_fetch(&set, "(UID RFC822.SIZE INTERNALDATE)").await?;
                    let fetches: Vec<_> = stream.try_collect().await?;
                    Ok(fetches
                        .iter()
                        .filter_map(|f| {
                            Some(ListedMessage {
                                uid: f.uid?,
                                size: f.size?,
                                received_at: f.internal_date().map(|d| d.to_utc()),
                            })
                        })
                        .collect::<Vec<_>>())
                })
            })
            .await?;
        listed.sort_unstable_by_key(|m| m.uid);
        listed.dedup_by_key(|m| m.uid);
        Ok(listed)
    }

    /// `UID FETCH <uid> BODY.PEEK[]`: the whole raw message (None if it vanished). Does not set
    /// `\Seen`.
    pub async fn fetch_raw(&mut self, uid: Uid) -> Result<Option<Vec<u8>>, ImapError> {
        self.fetch_section(uid, "BODY.PEEK[]", false).await
    }

    /// `UID FETCH <set> BODY.PEEK[]`: whole raw messages in one round trip, each handed to `to`
    /// as soon as it arrived (a UID never handed over vanished). Does not set `\Seen`.
    pub async fn fetch_raw_each(
        &mut self,
        uids: &[Uid],
        to: RawMailSender,
    ) -> Result<(), ImapError> {
        if uids.is_empty() {
            return Ok(());
        }
        let set = uid_set(uids);
        self.run("UID FETCH BODY.PEEK", move |s| {
            Box::pin(async move {
                let mut stream = s.uid_fetch(&set, "BODY.PEEK[]").await?;
                // Drain to the end (the tagged OK) before the next command, even once the
                // receiver is gone.
                while let Some(fetch) = stream.try_next().await? {
                    if let (Some(uid), Some(body)) = (fetch.uid, fetch.body()) {
                        let _ = to.send((uid, body.to_vec()));
                    }
                }
                Ok(())
            })
        })
        .await
    }

    /// `UID FETCH <uid> BODY.PEEK[HEADER]`: the header block only (None if it vanished).
    pub async fn fetch_header(&mut self, uid: Uid) -> Result<Option<Vec<u8>>, ImapError> {
        self.fetch_section(uid, "BODY.PEEK[HEADER]", true).await
    }

    async fn fetch_section(
        &mut self,
        uid: Uid,
        query: &'static str,
        header: bool,
    ) -> Result<Option<Vec<u8>>, ImapError> {
        self.run("UID FETCH BODY.PEEK", move |s| {
            Box::pin(async move {
                let mut stream = s.uid_fetch(uid.to_string(), query).await?;
                let mut found = None;
                // Drain to the end (the tagged OK) before the next command.
                while let Some(fetch) = stream.try_next().await? {
                    if fetch.uid == Some(uid) || fetch.uid.is_none() {
                        let bytes = if header { fetch.header() } else { fetch.body() };
                        if let Some(bytes) = bytes {
                            found = Some(bytes.to_vec());
                        }
                    }
                }
                Ok(found)
            })
        })
        .await
    }

    /// Move one message to `folder`, creating the folder when missing.
    pub async fn move_to(&mut self, uid: Uid, folder: &str) -> Result<(), ImapError> {
        self.move_many(&[uid], folder).await
    }

    /// Move these messages to `folder` with one `UID MOVE <set>` (RFC 6851), creating the
    /// folder when missing. UIDs that vanished meanwhile are skipped by the server.
    pub async fn move_many(&mut self, uids: &[Uid], folder: &str) -> Result<(), ImapError> {
        if uids.is_empty() {
            return Ok(());
        }
        let set = uid_set(uids);
        match self.move_once(&set, folder).await {
            Err(ImapError::Command { .. }) => {
                // Most likely [TRYCREATE]: create and retry once. A failing CREATE (it exists
                // after all) is fine; the retry tells.
                let _ = self.create_folder(folder).await;
                self.move_once(&set, folder).await
            }
            other => other,
        }
    }

    async fn move_once(&mut self, set: &str, folder: &str) -> Result<(), ImapError> {
        let folder_owned = folder.to_string();
        let set_owned = set.to_string();
        if self.has_move() {
            self.run("UID MOVE", move |s| {
                Box::pin(async move { s.uid_mv(&set_owned, &folder_owned).await })
            })
            .await
        } else {
            self.run("UID COPY", move |s| {
                Box::pin(async move { s.uid_copy(&set_owned, &folder_owned).await })
            })
            .await?;
            self.delete_set(set).await
        }
    }

    /// `CREATE` a folder.
    pub async fn create_folder(&mut self, folder: &str) -> Result<(), ImapError> {
        let folder_owned = folder.to_string();
        self.run("CREATE", move |s| {
            Box::pin(async move { s.create(&folder_owned).await })
        })
        .await
    }

    /// Set `\Seen` on one message.
    pub async fn mark_seen(&mut self, uid: Uid) -> Result<(), ImapError> {
        self.run("UID STORE +FLAGS (\\Seen)", move |s| {
            Box::pin(async move {
                let stream = s
                    .uid_store(uid.to_string(), "+FLAGS.SILENT (\\Seen)")
                    .await?;
                let _: Vec<_> = stream.try_collect().await?;
                Ok(())
            })
        })
        .await
    }

    /// Flag one message `\Deleted` and expunge only it (`UID EXPUNGE` when `UIDPLUS` is there).
    pub async fn delete(&mut self, uid: Uid) -> Result<(), ImapError> {
        self.delete_set(&uid.to_string()).await
    }

    async fn delete_set(&mut self, set: &str) -> Result<(), ImapError> {
        let (set, set_again) = (set.to_string(), set.to_string());
        self.run("UID STORE +FLAGS (\\Deleted)", move |s| {
            Box::pin(async move {
                let stream = s.uid_store(&set, "+FLAGS.SILENT (\\Deleted)").await?;
                let _: Vec<_> = stream.try_collect().await?;
                Ok(())
            })
        })
        .await?;
        if self.capabilities.contains("UIDPLUS") {
            self.run("UID EXPUNGE", move |s| {
                Box::pin(async move {
                    let stream = s.uid_expunge(&set_again).await?;
                    let _: Vec<_> = stream.try_collect().await?;
                    Ok(())
                })
            })
            .await
        } else {
            self.run("EXPUNGE", move |s| {
                Box::pin(async move {
                    let stream = s.expunge().await?;
                    let _: Vec<_> = stream.try_collect().await?;
                    Ok(())
                })
            })
            .await
        }
    }

    /// `LOGOUT` (best effort).
    pub async fn logout(mut self) {
        if self.broken.is_none() {
            let _ = self
                .run("LOGOUT", |s| Box::pin(async move { s.logout().await }))
                .await;
        }
    }
}

/// Compress sorted UIDs into an IMAP sequence set (`1:3,7,9:10`).
pub fn uid_set(uids: &[Uid]) -> String {
    let mut sorted = uids.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let mut out = String::new();
    let mut i = 0;
    while i < sorted.len() {
        let start = sorted[i];
        let mut end = start;
        while i + 1 < sorted.len() && sorted[i + 1] == end + 1 {
            i += 1;
            end = sorted[i];
        }
        if !out.is_empty() {
            out.push(',');
        }
        if start == end {
            out.push_str(&start.to_string());
        } else {
            out.push_str(&format!("{start}:{end}"));
        }
        i += 1;
    }
    out
}

/// Connect with TLS and log in: the production entry point.
pub async fn connect_and_login(
    endpoint: &ImapEndpoint,
    tls: Arc<rustls::ClientConfig>,
    user: &str,
    access_token: &SecretString,
) -> Result<ImapConnection<TlsStream<TcpStream>>, ImapError> {
    let stream = connect_tls(endpoint, tls).await?;
    ImapConnection::authenticate_xoauth2(stream, user, access_token, endpoint.timeout).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncBufReadExt as _, BufReader};

    #[test]
    fn xoauth2_string_matches_the_microsoft_example() {
        let raw = xoauth2_initial_response(
            "test@contoso.onmicrosoft.com",
            "EwBAAl3BAAUFFpUAo7J3Ve0bjLBWZWCclRC3EoAA",
        );
        let encoded = base64::engine::general_purpose::STANDARD.encode(raw);
        assert_eq!(
            encoded,
            "dXNlcj10ZXN0QGNvbnRvc28ub25taWNyb3NvZnQuY29tAWF1dGg9QmVhcmVyIEV3QkFBbDNCQUFVRkZwVUFvN0ozVmUwYmpMQldaV0NjbFJDM0VvQUEBAQ=="
        );
    }

    #[test]
    fn uid_sets_are_compressed() {
        assert_eq!(uid_set(&[1, 2, 3, 7, 9, 10]), "1:3,7,9:10");
        assert_eq!(uid_set(&[5]), "5");
        assert_eq!(uid_set(&[4, 2, 3, 3]), "2:4");
    }

    /// A scripted server: for each client line, the reply lines (tag `{tag}` substituted).
    async fn scripted_server(
        server: tokio::io::DuplexStream,
        greeting: &'static str,
        script: Vec<(&'static str, Vec<&'static str>)>,
    ) -> Vec<String> {
        let (read, mut write) = tokio::io::split(server);
        let mut reader = BufReader::new(read);
        write.write_all(greeting.as_bytes()).await.unwrap();
        let mut seen = Vec::new();
        let mut last_tag = String::new();
        for (expect_prefix, replies) in script {
            let mut line = String::new();
            if reader.read_line(&mut line).await.unwrap() == 0 {
                break;
            }
            let line = line.trim_end().to_string();
            // SASL continuation lines (base64 or empty) carry no tag: answer with the command's.
            if line.contains(' ') {
                last_tag = line.split(' ').next().unwrap_or("").to_string();
            }
            let tag = last_tag.clone();
            assert!(
                line.contains(expect_prefix),
                "client sent {line:?}, expected {expect_prefix:?}"
            );
            seen.push(line);
            for reply in replies {
                write
                    .write_all(reply.replace("{tag}", &tag).as_bytes())
                    .await
                    .unwrap();
            }
        }
        seen
    }

    #[tokio::test]
    async fn sasl_ir_login_then_error_challenge_is_answered_with_an_empty_line() {
        let (client, server) = tokio::io::duplex(64 * 1024);
        let server = tokio::spawn(scripted_server(
            server,
            "* OK [CAPABILITY IMAP4rev1 SASL-IR AUTH=XOAUTH2] ready\r\n",
            vec![
                (
                    "AUTHENTICATE XOAUTH2 ",
                    vec!["+ eyJzdGF0dXMiOiI0MDEiLCJzY2hlbWVzIjoiYmVhcmVyIn0=\r\n"],
                ),
                ("", vec!["{tag} NO AUTHENTICATE failed.\r\n"]),
            ],
        ));
        let token = SecretString::from("tok");
        let err = ImapConnection::authenticate_xoauth2(
            client,
            "a@example.com",
            &token,
            Duration::from_secs(5),
        )
        .await
        .unwrap_err();
        assert!(
            matches!(err, ImapError::AuthenticateFailed { ref user, .. } if user == "a@example.com"),
            "{err:?}"
        );
        let seen = server.await.unwrap();
        assert_eq!(
            seen[1], "",
            "the JSON challenge must be answered with an empty line"
        );
        let ir = seen[0].rsplit(' ').next().unwrap();
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(ir)
            .unwrap();
        assert_eq!(decoded, b"user=a@example.com\x01auth=Bearer tok\x01\x01");
    }

    #[tokio::test]
    async fn login_asks_for_capabilities_when_the_greeting_has_none_and_detects_move() {
        let (client, server) = tokio::io::duplex(64 * 1024);
        let server = tokio::spawn(scripted_server(
            server,
            "* OK The Microsoft Exchange IMAP4 service is ready.\r\n",
            vec![
                (
                    "CAPABILITY",
                    vec![
                        "* CAPABILITY IMAP4 IMAP4rev1 AUTH=XOAUTH2 UIDPLUS\r\n",
                        "{tag} OK CAPABILITY completed.\r\n",
                    ],
                ),
                // no SASL-IR advertised: plain AUTHENTICATE, credentials on the continuation
                ("AUTHENTICATE XOAUTH2", vec!["+ \r\n"]),
                ("dXNlcj1", vec!["{tag} OK AUTHENTICATE completed.\r\n"]),
                (
                    "CAPABILITY",
                    vec![
                        "* CAPABILITY IMAP4 IMAP4rev1 MOVE UIDPLUS IDLE\r\n",
                        "{tag} OK CAPABILITY completed.\r\n",
                    ],
                ),
                (
                    "SELECT",
                    vec![
                        "* 2 EXISTS\r\n",
                        "* OK [UIDVALIDITY 14] UIDVALIDITY value\r\n",
                        "{tag} OK [READ-WRITE] SELECT completed.\r\n",
                    ],
                ),
                (
                    "UID FETCH 3 BODY.PEEK[]",
                    vec![
                        "* 1 FETCH (UID 3 BODY[] {5}\r\nhello)\r\n",
                        "{tag} OK FETCH completed.\r\n",
                    ],
                ),
                (
                    "UID MOVE 3 \"Processed\"",
                    vec!["{tag} OK MOVE completed.\r\n"],
                ),
            ],
        ));
        let token = SecretString::from("tok");
        let mut conn = ImapConnection::authenticate_xoauth2(
            client,
            "shared@example.com",
            &token,
            Duration::from_secs(5),
        )
        .await
        .unwrap();
        assert!(conn.has_move());
        let folder = conn.select("INBOX").await.unwrap();
        assert_eq!(folder.uid_validity, 14);
        assert_eq!(conn.fetch_raw(3).await.unwrap().unwrap(), b"hello");
        conn.move_to(3, "Processed").await.unwrap();
        server.await.unwrap();
    }

    #[tokio::test]
    async fn not_connected_is_recognised_and_a_dropped_connection_fails_fast_afterwards() {
        let (client, server) = tokio::io::duplex(64 * 1024);
        let server = tokio::spawn(scripted_server(
            server,
            "* OK [CAPABILITY IMAP4rev1 SASL-IR AUTH=XOAUTH2] ready\r\n",
            vec![
                ("AUTHENTICATE", vec!["{tag} OK done\r\n"]),
                (
                    "CAPABILITY",
                    vec!["* CAPABILITY IMAP4rev1\r\n", "{tag} OK done\r\n"],
                ),
                (
                    "SELECT",
                    vec!["{tag} NO User is authenticated but not connected.\r\n"],
                ),
                // then the server goes away
            ],
        ));
        let token = SecretString::from("tok");
        let mut conn = ImapConnection::authenticate_xoauth2(
            client,
            "a@example.com",
            &token,
            Duration::from_secs(5),
        )
        .await
        .unwrap();
        let err = conn.select("INBOX").await.unwrap_err();
        assert!(matches!(err, ImapError::NotConnected { .. }), "{err:?}");
        server.await.unwrap();
        let err = conn.search(SearchScope::Undeleted, None).await.unwrap_err();
        assert!(matches!(err, ImapError::ConnectionLost { .. }), "{err:?}");
        assert_eq!(err.class(), ErrorClass::Transient);
        let err = conn.fetch_raw(1).await.unwrap_err();
        assert!(matches!(err, ImapError::ConnectionLost { .. }), "{err:?}");
    }

    #[test]
    fn a_missing_ca_file_is_named() {
        let err = tls_config(Some(Path::new("/nonexistent/ca.pem"))).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/ca.pem"), "{err}");
    }
}
