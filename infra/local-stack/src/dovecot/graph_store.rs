//! The Graph stand-in's mail store: Dovecot's real store, read and changed over long-lived IMAP
//! sessions ([`ImapStore`]).
//!
//! The stand-in logs in as Dovecot's master user ([`Dovecot::master_login`]: `LOGIN
//! <user>*graph-stand-in <password>` on the plain loopback port), so it reaches every user's
//! mail without their token and without going through the identity stand-in (whose
//! introspection faults belong to the tests of the IMAP path). Up to [`SESSIONS_PER_USER`]
//! sessions per user are kept open (Graph admits 4 requests per mailbox at once) and reused;
//! one idle for [`IDLE_SESSION_LIFETIME`] is closed. Each operation first brings its folder up to
//! date: `SELECT`, or `NOOP` when the session has it selected already (a delta round always
//! selects afresh), which shows what other sessions, `doveadm` and deliveries changed meanwhile;
//! then one or two more commands: `UID FETCH` of the summaries or the text, `UID MOVE` of one
//! message or of several (those a `$batch` moves together; the new UIDs from its `COPYUID`),
//! `UID STORE`, `UID EXPUNGE`. A session found broken (Dovecot dropped
//! it, or ended it because its selected folder got another UIDVALIDITY) is replaced once.
//!
//! Folder names travel in IMAP's modified UTF-7 (RFC 3501 §5.1.3); the store speaks UTF-8.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_imap::error::Error as ImapError;
use async_imap::imap_proto::{Response, ResponseCode, Status, UidSetMember};
use async_imap::types::{Fetch, Flag, UnsolicitedResponse};
use futures::TryStreamExt as _;
use futures::future::BoxFuture;
use tokio::net::TcpStream;

use super::Dovecot;
use crate::graph::{MailStore, StoredSummary};

/// Sessions kept open per user (the Graph stand-in admits 4 requests per mailbox at once).
pub const SESSIONS_PER_USER: usize = crate::graph::MAX_CONCURRENT_PER_MAILBOX;
/// A session unused this long is closed.
pub const IDLE_SESSION_LIFETIME: Duration = Duration::from_secs(60);
/// One operation (a 27 MB message in a dev-profile build included) takes at most this long.
const OPERATION_TIMEOUT: Duration = Duration::from_secs(120);

const SUMMARY_ITEMS: &str = "(UID FLAGS RFC822.SIZE INTERNALDATE)";

/// An IMAP session and the folder it has selected, with that folder's UIDVALIDITY.
struct Session {
    imap: async_imap::Session<TcpStream>,
    selected: Option<(String, u32)>,
}

impl std::ops::Deref for Session {
    type Target = async_imap::Session<TcpStream>;

    fn deref(&self) -> &Self::Target {
        &self.imap
    }
}

impl std::ops::DerefMut for Session {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.imap
    }
}

/// Dovecot's store over pooled IMAP sessions: the Graph stand-in's [`MailStore`].
pub struct ImapStore {
    dovecot: Arc<Dovecot>,
    users: Mutex<HashMap<String, Arc<UserSessions>>>,
    logins: AtomicU64,
}

struct UserSessions {
    idle: Mutex<Vec<(Session, Instant)>>,
    permits: Arc<tokio::sync::Semaphore>,
}

impl UserSessions {
    fn take_idle(&self) -> Option<Session> {
        let mut idle = self.idle.lock().expect("lock");
        idle.retain(|(_, since)| since.elapsed() < IDLE_SESSION_LIFETIME);
        idle.pop().map(|(session, _)| session)
    }

    fn put_back(&self, session: Session) {
        self.idle
            .lock()
            .expect("lock")
            .push((session, Instant::now()));
    }

    fn close_idle(&self) {
        self.idle
            .lock()
            .expect("lock")
            .retain(|(_, since)| since.elapsed() < IDLE_SESSION_LIFETIME);
    }
}

impl std::fmt::Debug for ImapStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImapStore")
            .field("dovecot", &self.dovecot)
            .field("logins", &self.logins)
            .finish()
    }
}

/// What an operation does with a session: its future borrows the session only.
type Operation<'o, T> =
    dyn Fn(&mut Session) -> BoxFuture<'_, Result<T, ImapError>> + Send + Sync + 'o;

impl ImapStore {
    /// A store over `dovecot`'s mail (no session is opened before the first operation).
    pub fn new(dovecot: Arc<Dovecot>) -> ImapStore {
        ImapStore {
            dovecot,
            users: Mutex::default(),
            logins: AtomicU64::new(0),
        }
    }

    /// IMAP logins made so far (sessions opened), over all users.
    pub fn logins(&self) -> u64 {
        self.logins.load(Ordering::Relaxed)
    }

    fn sessions_of(&self, user: &str) -> Arc<UserSessions> {
        self.users
            .lock()
            .expect("lock")
            .entry(user.to_ascii_lowercase())
            .or_insert_with(|| {
                Arc::new(UserSessions {
                    idle: Mutex::default(),
                    permits: Arc::new(tokio::sync::Semaphore::new(SESSIONS_PER_USER)),
                })
            })
            .clone()
    }

    async fn login(&self, user: &str) -> anyhow::Result<Session> {
        // a good moment to close what every other user left idle
        let all: Vec<Arc<UserSessions>> =
            self.users.lock().expect("lock").values().cloned().collect();
        for sessions in all {
            sessions.close_idle();
        }
        let port = self.dovecot.imap_port;
        let stream = TcpStream::connect(("127.0.0.1", port))
            .await
            .with_context(|| format!("connect to Dovecot's IMAP port {port}"))?;
        let mut client = async_imap::Client::new(stream);
        client
            .read_response()
            .await
            .context("read Dovecot's greeting")?
            .context("Dovecot closed the connection before its greeting")?;
        let (login, password) = self.dovecot.master_login(user);
        let session = client
            .login(&login, password)
            .await
            .map_err(|(e, _)| e)
            .with_context(|| format!("log in to Dovecot as {login}"))?;
        self.logins.fetch_add(1, Ordering::Relaxed);
        Ok(Session {
            imap: session,
            selected: None,
        })
    }

    /// Run `op` on one of `user`'s sessions (a pooled one, or a new one; a pooled one found
    /// broken is replaced once).
    async fn run<T: Send>(
        &self,
        user: &str,
        what: &str,
        op: &Operation<'_, T>,
    ) -> anyhow::Result<T> {
        let sessions = self.sessions_of(user);
        let _permit = sessions
            .permits
            .clone()
            .acquire_owned()
            .await
            .context("the session pool is closed")?;
        if let Some(mut session) = sessions.take_idle() {
            match tokio::time::timeout(OPERATION_TIMEOUT, op(&mut session)).await {
                Ok(Ok(value)) => {
                    sessions.put_back(session);
                    return Ok(value);
                }
                Ok(Err(e)) if !is_broken(&e) => {
                    sessions.put_back(session);
                    return Err(anyhow::Error::new(e).context(format!("{what} for {user}")));
                }
                // broken (Dovecot restarted, the session timed out): a new session below
                Ok(Err(e)) => {
                    tracing::debug!(user, error = %e, "graph store: pooled IMAP session broken");
                }
                Err(_) => {
                    anyhow::bail!("{what} for {user}: no answer within {OPERATION_TIMEOUT:?}")
                }
            }
        }
        let mut session = self.login(user).await?;
        match tokio::time::timeout(OPERATION_TIMEOUT, op(&mut session)).await {
            Ok(Ok(value)) => {
                sessions.put_back(session);
                Ok(value)
            }
            Ok(Err(e)) => {
                if !is_broken(&e) {
                    sessions.put_back(session);
                }
                Err(anyhow::Error::new(e).context(format!("{what} for {user}")))
            }
            Err(_) => anyhow::bail!("{what} for {user}: no answer within {OPERATION_TIMEOUT:?}"),
        }
    }
}

/// The session cannot be used any more (as opposed to a NO or BAD answer).
fn is_broken(e: &ImapError) -> bool {
    matches!(
        e,
        ImapError::Io(_) | ImapError::ConnectionLost | ImapError::Parse(_)
    )
}

/// A NO answer saying the folder does not exist.
fn is_missing_folder(e: &ImapError) -> bool {
    match e {
        ImapError::No(text) => {
            let text = text.to_ascii_lowercase();
            text.contains("nonexistent") || text.contains("doesn't exist")
        }
        _ => false,
    }
}

/// Select `folder`: its UIDVALIDITY and message count (None when the session kept the folder
/// selected and `fresh` was not asked for), or None when there is no such folder. A folder the
/// session has selected already is only synchronised (`NOOP`: what other sessions, `doveadm`
/// and deliveries changed shows, expunged messages included); Dovecot ends a session whose
/// selected folder got another UIDVALIDITY, so a new session selects it afresh.
async fn open(
    session: &mut Session,
    folder: &str,
    fresh: bool,
) -> Result<Option<(u32, Option<u32>)>, ImapError> {
    if !fresh
        && let Some((selected, validity)) = &session.selected
        && selected == folder
    {
        let validity = *validity;
        if let Err(e) = session.imap.noop().await {
            session.selected = None;
            tracing::debug!(error = %e, "graph store: NOOP failed, the session is dropped");
            return Err(ImapError::ConnectionLost);
        }
        return Ok(Some((validity, None)));
    }
    session.selected = None;
    match session.imap.select(encode_folder_name(folder)).await {
        Ok(mailbox) => {
            let validity = mailbox.uid_validity.unwrap_or(0);
            session.selected = Some((folder.to_owned(), validity));
            Ok(Some((validity, Some(mailbox.exists))))
        }
        Err(e) if is_missing_folder(&e) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Open `folder` when its UIDVALIDITY is `uid_validity`.
async fn open_at(
    session: &mut Session,
    folder: &str,
    uid_validity: u32,
) -> Result<bool, ImapError> {
    Ok(open(session, folder, false)
        .await?
        .is_some_and(|(validity, _)| validity == uid_validity))
}

async fn fetch(session: &mut Session, set: &str, items: &str) -> Result<Vec<Fetch>, ImapError> {
    session.uid_fetch(set, items).await?.try_collect().await
}

fn summary_of(fetch: &Fetch) -> Result<StoredSummary, ImapError> {
    let missing = |what: &str| ImapError::Bad(format!("Dovecot's FETCH answer has no {what}"));
    Ok(StoredSummary {
        uid: fetch.uid.ok_or_else(|| missing("UID"))?,
        seen: fetch.flags().any(|f| f == Flag::Seen),
        size: u64::from(fetch.size.ok_or_else(|| missing("RFC822.SIZE"))?),
        received: fetch
            .internal_date()
            .ok_or_else(|| missing("INTERNALDATE"))?
            .with_timezone(&chrono::Utc),
    })
}

async fn summary_in_open(
    session: &mut Session,
    uid: u32,
) -> Result<Option<StoredSummary>, ImapError> {
    fetch(session, &uid.to_string(), SUMMARY_ITEMS)
        .await?
        .iter()
        .filter(|f| f.uid == Some(uid))
        .map(summary_of)
        .next()
        .transpose()
}

/// An IMAP sequence set of `uids` (`4,7,9`).
fn uid_set(uids: &[u32]) -> String {
    uids.iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

fn uids_of(set: &[UidSetMember]) -> Vec<u32> {
    set.iter()
        .flat_map(|member| match member {
            UidSetMember::Uid(uid) => *uid..=*uid,
            UidSetMember::UidRange(range) => range.clone(),
        })
        .collect()
}

/// The `COPYUID` among the answers a session set aside: the destination's UIDVALIDITY and each
/// source UID with its destination UID (RFC 4315 §3: the two sets name them in the same order).
fn copied_uids(session: &Session) -> Option<(u32, Vec<(u32, u32)>)> {
    let mut found = None;
    while let Ok(answer) = session.unsolicited_responses.try_recv() {
        if let UnsolicitedResponse::Other(data) = answer
            && let Response::Data {
                status: Status::Ok,
                code: Some(ResponseCode::CopyUid(validity, source, destination)),
                ..
            } = data.parsed()
        {
            let pairs = uids_of(source).into_iter().zip(uids_of(destination));
            found = Some((*validity, pairs.collect()));
        }
    }
    found
}

#[async_trait::async_trait]
impl MailStore for ImapStore {
    async fn folder_names(&self, user: &str) -> anyhow::Result<Vec<String>> {
        self.run(user, "list folders", &|s| {
            Box::pin(async move {
                let names: Vec<async_imap::types::Name> =
                    s.list(Some(""), Some("*")).await?.try_collect().await?;
                Ok(names.iter().map(|n| decode_folder_name(n.name())).collect())
            })
        })
        .await
    }

    async fn create_folder(&self, user: &str, folder: &str) -> anyhow::Result<()> {
        let name = encode_folder_name(folder);
        self.run(user, "create a folder", &|s| {
            let name = name.clone();
            Box::pin(async move {
                match s.create(&name).await {
                    Err(ImapError::No(text))
                        if text.to_ascii_lowercase().contains("already exists")
                            || text.to_ascii_lowercase().contains("alreadyexists") =>
                    {
                        Ok(())
                    }
                    other => other,
                }
            })
        })
        .await
    }

    async fn summaries(
        &self,
        user: &str,
        folder: &str,
    ) -> anyhow::Result<Option<(u32, Vec<StoredSummary>)>> {
        self.run(user, "list a folder", &|s| {
            let folder = folder.to_owned();
            Box::pin(async move {
                let Some((validity, exists)) = open(s, &folder, true).await? else {
                    return Ok(None);
                };
                let mut summaries = if exists == Some(0) {
                    Vec::new()
                } else {
                    fetch(s, "1:*", SUMMARY_ITEMS)
                        .await?
                        .iter()
                        .map(summary_of)
                        .collect::<Result<Vec<_>, _>>()?
                };
                summaries.sort_by_key(|m| m.uid);
                summaries.dedup_by_key(|m| m.uid);
                Ok(Some((validity, summaries)))
            })
        })
        .await
    }

    async fn summary(
        &self,
        user: &str,
        folder: &str,
        uid_validity: u32,
        uid: u32,
    ) -> anyhow::Result<Option<StoredSummary>> {
        self.run(user, "look a message up", &|s| {
            let folder = folder.to_owned();
            Box::pin(async move {
                if !open_at(s, &folder, uid_validity).await? {
                    return Ok(None);
                }
                summary_in_open(s, uid).await
            })
        })
        .await
    }

    async fn messages(
        &self,
        user: &str,
        folder: &str,
        uid_validity: u32,
        uids: &[u32],
    ) -> anyhow::Result<Vec<Option<Vec<u8>>>> {
        self.run(user, "read messages", &|s| {
            let (folder, uids) = (folder.to_owned(), uids.to_vec());
            Box::pin(async move {
                if uids.is_empty() || !open_at(s, &folder, uid_validity).await? {
                    return Ok(uids.iter().map(|_| None).collect());
                }
                let mut bodies: HashMap<u32, Vec<u8>> =
                    fetch(s, &uid_set(&uids), "(UID BODY.PEEK[])")
                        .await?
                        .iter()
                        .filter_map(|f| Some((f.uid?, f.body()?.to_vec())))
                        .collect();
                // a UID named twice is read twice, as two requests would
                Ok(uids
                    .iter()
                    .enumerate()
                    .map(|(at, uid)| {
                        if uids[at + 1..].contains(uid) {
                            bodies.get(uid).cloned()
                        } else {
                            bodies.remove(uid)
                        }
                    })
                    .collect())
            })
        })
        .await
    }

    async fn move_messages(
        &self,
        user: &str,
        folder: &str,
        uid_validity: u32,
        uids: &[u32],
        dest: &str,
    ) -> anyhow::Result<Vec<Option<(u32, StoredSummary)>>> {
        let dest = encode_folder_name(dest);
        self.run(user, "move messages", &|s| {
            let (folder, dest, uids) = (folder.to_owned(), dest.clone(), uids.to_vec());
            Box::pin(async move {
                let none = || uids.iter().map(|_| None).collect::<Vec<_>>();
                if uids.is_empty() || !open_at(s, &folder, uid_validity).await? {
                    return Ok(none());
                }
                let set = uid_set(&uids);
                let found: HashMap<u32, StoredSummary> = fetch(s, &set, SUMMARY_ITEMS)
                    .await?
                    .iter()
                    .filter(|f| f.uid.is_some_and(|uid| uids.contains(&uid)))
                    .map(|f| summary_of(f).map(|m| (m.uid, m)))
                    .collect::<Result<_, _>>()?;
                if found.is_empty() {
                    return Ok(none());
                }
                let mut present: Vec<u32> = found.keys().copied().collect();
                present.sort_unstable();
                // what earlier commands set aside must not be read as this move's COPYUID
                while s.unsolicited_responses.try_recv().is_ok() {}
                match s.uid_mv(uid_set(&present), &dest).await {
                    // no such destination (`NO [TRYCREATE]`): nothing moved
                    Err(ImapError::No(text)) if text.to_ascii_lowercase().contains("trycreate") => {
                        return Ok(none());
                    }
                    other => other?,
                }
                let Some((validity, pairs)) = copied_uids(s) else {
                    return Ok(none());
                };
                let mut moved: HashMap<u32, u32> = pairs.into_iter().collect();
                // moving keeps flags and the received date: each message as the source had it
                Ok(uids
                    .iter()
                    .map(|uid| {
                        let new_uid = moved.remove(uid)?;
                        let summary = found.get(uid)?.clone();
                        Some((
                            validity,
                            StoredSummary {
                                uid: new_uid,
                                ..summary
                            },
                        ))
                    })
                    .collect())
            })
        })
        .await
    }

    async fn set_seen(&self, user: &str, folder: &str, uid: u32, seen: bool) -> anyhow::Result<()> {
        let change = if seen {
            "+FLAGS.SILENT"
        } else {
            "-FLAGS.SILENT"
        };
        self.run(user, "flag a message", &|s| {
            let folder = folder.to_owned();
            Box::pin(async move {
                if open(s, &folder, false).await?.is_none() {
                    return Ok(());
                }
                let _: Vec<Fetch> = s
                    .uid_store(uid.to_string(), format!("{change} (\\Seen)"))
                    .await?
                    .try_collect()
                    .await?;
                Ok(())
            })
        })
        .await
    }

    async fn expunge(&self, user: &str, folder: &str, uid: u32) -> anyhow::Result<()> {
        self.run(user, "expunge a message", &|s| {
            let folder = folder.to_owned();
            Box::pin(async move {
                if open(s, &folder, false).await?.is_none() {
                    return Ok(());
                }
                let _: Vec<Fetch> = s
                    .uid_store(uid.to_string(), "+FLAGS.SILENT (\\Deleted)")
                    .await?
                    .try_collect()
                    .await?;
                let _: Vec<u32> = s.uid_expunge(uid.to_string()).await?.try_collect().await?;
                Ok(())
            })
        })
        .await
    }
}

impl crate::MailDrop for ImapStore {
    fn deliver(
        &self,
        recipient: &str,
        raw: Vec<u8>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = anyhow::Result<()>> + Send + 'static>>
    {
        self.dovecot.deliver(recipient, raw)
    }
}

fn mutf7() -> base64::engine::GeneralPurpose {
    base64::engine::GeneralPurpose::new(
        &base64::alphabet::IMAP_MUTF7,
        base64::engine::GeneralPurposeConfig::new()
            .with_encode_padding(false)
            .with_decode_padding_mode(base64::engine::DecodePaddingMode::RequireNone),
    )
}

/// A folder name in IMAP's modified UTF-7: printable ASCII stays, `&` is `&-`, any other run is
/// `&<base64 of UTF-16BE, `,` for `/`>-`.
pub fn encode_folder_name(name: &str) -> String {
    use base64::Engine as _;
    let mut out = String::with_capacity(name.len());
    let mut run: Vec<u16> = Vec::new();
    let flush = |run: &mut Vec<u16>, out: &mut String| {
        if !run.is_empty() {
            let bytes: Vec<u8> = run.iter().flat_map(|u| u.to_be_bytes()).collect();
            out.push('&');
            out.push_str(&mutf7().encode(bytes));
            out.push('-');
            run.clear();
        }
    };
    for c in name.chars() {
        if (' '..='~').contains(&c) {
            flush(&mut run, &mut out);
            out.push(c);
            if c == '&' {
                out.push('-');
            }
        } else {
            let mut units = [0u16; 2];
            run.extend_from_slice(c.encode_utf16(&mut units));
        }
    }
    flush(&mut run, &mut out);
    out
}

/// The UTF-8 name of a modified UTF-7 folder name (a malformed one is kept as it is).
pub fn decode_folder_name(name: &str) -> String {
    use base64::Engine as _;
    let mut out = String::with_capacity(name.len());
    let mut rest = name;
    while let Some(start) = rest.find('&') {
        out.push_str(&rest[..start]);
        let after = &rest[start + 1..];
        let Some(end) = after.find('-') else {
            return name.to_owned();
        };
        let encoded = &after[..end];
        if encoded.is_empty() {
            out.push('&');
        } else {
            let Ok(bytes) = mutf7().decode(encoded) else {
                return name.to_owned();
            };
            let units: Vec<u16> = bytes
                .chunks_exact(2)
                .map(|pair| u16::from_be_bytes([pair[0], pair[1]]))
                .collect();
            let Ok(text) = String::from_utf16(&units) else {
                return name.to_owned();
            };
            out.push_str(&text);
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folder_names_use_modified_utf7() {
        // RFC 3501 §5.1.3's example, and `&`
        assert_eq!(
            encode_folder_name("~peter/mail/台北/日本語"),
            "~peter/mail/&U,BTFw-/&ZeVnLIqe-"
        );
        assert_eq!(encode_folder_name("R&D"), "R&-D");
        assert_eq!(encode_folder_name("Erledigt ✓"), "Erledigt &JxM-");
        for name in [
            "~peter/mail/台北/日本語",
            "R&D",
            "Erledigt ✓",
            "Inbox",
            "Ünïcödé & more",
        ] {
            assert_eq!(decode_folder_name(&encode_folder_name(name)), name);
        }
        assert_eq!(decode_folder_name("broken &abc"), "broken &abc");
    }
}
