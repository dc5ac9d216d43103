//! The poller's unit tests: the poll loop against in-memory doubles of its ports (mailbox,
//! state table, sinks). The same scenarios run against Dovecot, moto and the stand-ins in
//! `tests/tests/poll_mailboxes/`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use mailbridge::imap::{ImapError, ListedMessage, SearchScope, SelectedFolder, Uid};
use mailbridge::ticket_sink::{
    DeliveryPlan, SinkCheck, TicketPayload, TicketReceipt, TicketSink, TicketSinkError,
};
use mailbridge::token::{AccessToken, ScriptedTokens, TokenError};
use secrecy::SecretString;
use tokio::time::Instant;

use mailbridge::mailbox::{ConfigError, MailboxConfig};
use mailbridge::state_table::{
    DedupeRecord, InFlightMail, MailboxLease, MailboxOutcome, MailboxStatus, StateStore, StoreError,
};

use crate::convert::ParseContext;
use crate::poll::{PollDeps, poll_once};
use crate::ports::{Mailbox, MailboxConnector, MailboxError, SinkFactory};

#[derive(Clone, Debug)]
struct Message {
    uid: Uid,
    raw: Vec<u8>,
    seen: bool,
    /// INTERNALDATE: set on delivery, kept by MOVE.
    received_at: chrono::DateTime<chrono::Utc>,
}

#[derive(Default)]
struct ServerState {
    /// user → folder → messages
    folders: HashMap<String, HashMap<String, Vec<Message>>>,
    next_uid: Uid,
    /// drop the connection after this many more commands (per connect)
    drop_after: Option<u32>,
    auth_fails_for: Vec<String>,
}

#[derive(Clone, Default)]
struct FakeServer(Arc<Mutex<ServerState>>);

impl FakeServer {
    fn deliver(&self, user: &str, raw: &[u8]) {
        let mut s = self.0.lock().unwrap();
        s.next_uid += 1;
        let uid = s.next_uid;
        s.folders
            .entry(user.into())
            .or_default()
            .entry("INBOX".into())
            .or_default()
            .push(Message {
                uid,
                raw: raw.to_vec(),
                seen: false,
                received_at: chrono::DateTime::from_timestamp(1_700_000_000 + i64::from(uid), 0)
                    .expect("valid timestamp"),
            });
    }
    fn count(&self, user: &str, folder: &str) -> usize {
        let s = self.0.lock().unwrap();
        s.folders
            .get(user)
            .and_then(|f| f.get(folder))
            .map_or(0, |m| m.len())
    }
    fn seen(&self, user: &str, folder: &str) -> usize {
        let s = self.0.lock().unwrap();
        s.folders
            .get(user)
            .and_then(|f| f.get(folder))
            .map_or(0, |m| m.iter().filter(|m| m.seen).count())
    }
}

struct FakeMailbox {
    server: FakeServer,
    user: String,
    folder: String,
    budget: Option<u32>,
    round_trips: u64,
}

impl FakeMailbox {
    fn op(&mut self) -> Result<(), ImapError> {
        self.round_trips += 1;
        if let Some(b) = self.budget.as_mut() {
            if *b == 0 {
                return Err(ImapError::ConnectionLost {
                    operation: "fake",
                    detail: "dropped".into(),
                });
            }
            *b -= 1;
        }
        Ok(())
    }
    fn with_folder<T>(&self, f: impl FnOnce(&mut Vec<Message>) -> T) -> T {
        let mut s = self.server.0.lock().unwrap();
        let folder = s
            .folders
            .entry(self.user.clone())
            .or_default()
            .entry(self.folder.clone())
            .or_default();
        f(folder)
    }
    fn take(&self, uid: Uid) -> Option<Message> {
        self.with_folder(|f| {
            let i = f.iter().position(|m| m.uid == uid)?;
            Some(f.remove(i))
        })
    }
}

#[async_trait]
impl Mailbox for FakeMailbox {
    async fn select(&mut self, folder: &str) -> Result<SelectedFolder, MailboxError> {
        self.op()?;
        self.folder = folder.into();
        let exists = self.with_folder(|f| f.len() as u32);
        Ok(SelectedFolder {
            uid_validity: 1,
            exists,
        })
    }
    async fn search(
        &mut self,
        scope: SearchScope,
        since: Option<chrono::DateTime<chrono::Utc>>,
    ) -> Result<Vec<Uid>, MailboxError> {
        self.op()?;
        // as coarse as IMAP's SINCE: by the day
        let day = since.map(|at| at.date_naive());
        Ok(self.with_folder(|f| {
            f.iter()
                .filter(|m| scope == SearchScope::Undeleted || !m.seen)
                .filter(|m| day.is_none_or(|day| m.received_at.date_naive() >= day))
                .map(|m| m.uid)
                .collect()
        }))
    }
    async fn list_messages(&mut self, uids: &[Uid]) -> Result<Vec<ListedMessage>, MailboxError> {
        self.op()?;
        Ok(self.with_folder(|f| {
            f.iter()
                .filter(|m| uids.contains(&m.uid))
                .map(|m| ListedMessage {
                    uid: m.uid,
                    size: m.raw.len() as u32,
                    received_at: Some(m.received_at),
                })
                .collect()
        }))
    }
    async fn fetch_raw(&mut self, uid: Uid) -> Result<Option<Vec<u8>>, MailboxError> {
        self.op()?;
        Ok(self.with_folder(|f| f.iter().find(|m| m.uid == uid).map(|m| m.raw.clone())))
    }
    async fn fetch_header(&mut self, uid: Uid) -> Result<Option<Vec<u8>>, MailboxError> {
        self.op()?;
        Ok(self.with_folder(|f| {
            f.iter().find(|m| m.uid == uid).map(|m| {
                let (_, start) = crate::dedupe::split_headers(&m.raw);
                m.raw[..start].to_vec()
            })
        }))
    }
    async fn move_to(&mut self, uid: Uid, folder: &str) -> Result<(), MailboxError> {
        self.op()?;
        if let Some(m) = self.take(uid) {
            let mut s = self.server.0.lock().unwrap();
            s.folders
                .entry(self.user.clone())
                .or_default()
                .entry(folder.into())
                .or_default()
                .push(m);
        }
        Ok(())
    }
    async fn mark_seen(&mut self, uid: Uid) -> Result<(), MailboxError> {
        self.op()?;
        self.with_folder(|f| {
            if let Some(m) = f.iter_mut().find(|m| m.uid == uid) {
                m.seen = true;
            }
        });
        Ok(())
    }
    async fn delete(&mut self, uid: Uid) -> Result<(), MailboxError> {
        self.op()?;
        self.take(uid);
        Ok(())
    }
    fn round_trips(&self) -> u64 {
        self.round_trips
    }
    async fn logout(self: Box<Self>) {}
}

#[async_trait]
impl MailboxConnector for FakeServer {
    async fn connect(
        &self,
        config: &MailboxConfig,
        _token: &SecretString,
    ) -> Result<Box<dyn Mailbox>, MailboxError> {
        let budget = {
            let s = self.0.lock().unwrap();
            if s.auth_fails_for.contains(&config.user) {
                return Err(ImapError::AuthenticateFailed {
                    user: config.user.clone(),
                    detail: "AUTHENTICATE failed.".into(),
                }
                .into());
            }
            s.drop_after
        };
        Ok(Box::new(FakeMailbox {
            server: self.clone(),
            user: config.user.clone(),
            folder: "INBOX".into(),
            budget,
            round_trips: 0,
        }))
    }
}

#[derive(Default)]
struct FakeState {
    dedupe: Mutex<HashMap<String, DedupeRecord>>,
    statuses: Mutex<HashMap<String, MailboxStatus>>,
    configs: Mutex<Vec<Result<MailboxConfig, ConfigError>>>,
    /// mailbox → (lease token, until)
    leases: Mutex<HashMap<String, (String, i64)>>,
    /// mailbox → the mail marked in flight (kept when a run "dies" without releasing)
    in_flight: Mutex<HashMap<String, InFlightMail>>,
    /// every mark, in order
    in_flight_marks: Mutex<Vec<InFlightMail>>,
    /// per-sender quota item → mails counted
    sender_quota: Mutex<HashMap<String, u32>>,
}

#[async_trait]
impl StateStore for FakeState {
    async fn acquire_mailbox_lease(
        &self,
        mailbox: &str,
        until: i64,
    ) -> Result<MailboxLease, StoreError> {
        let mut leases = self.leases.lock().unwrap();
        let now = chrono::Utc::now().timestamp();
        match leases.get(mailbox) {
            Some((_, held_until)) if *held_until >= now => Ok(MailboxLease::Held(*held_until)),
            _ => {
                let token = format!("lease-{mailbox}-{until}-{}", leases.len());
                leases.insert(mailbox.to_string(), (token.clone(), until));
                let interrupted = self.in_flight.lock().unwrap().remove(mailbox);
                Ok(MailboxLease::Acquired { token, interrupted })
            }
        }
    }
    async fn release_mailbox_lease(&self, mailbox: &str, token: &str) -> Result<(), StoreError> {
        let mut leases = self.leases.lock().unwrap();
        if leases.get(mailbox).is_some_and(|(t, _)| t == token) {
            leases.remove(mailbox);
            self.in_flight.lock().unwrap().remove(mailbox);
        }
        Ok(())
    }
    async fn mark_in_flight(
        &self,
        mailbox: &str,
        _token: &str,
        mail: InFlightMail,
    ) -> Result<(), StoreError> {
        self.in_flight
            .lock()
            .unwrap()
            .insert(mailbox.to_string(), mail);
        self.in_flight_marks.lock().unwrap().push(mail);
        Ok(())
    }
    async fn get_dedupe(&self, pk: &str) -> Result<Option<DedupeRecord>, StoreError> {
        Ok(self.dedupe.lock().unwrap().get(pk).cloned())
    }
    async fn put_dedupe(&self, record: &DedupeRecord) -> Result<(), StoreError> {
        self.dedupe
            .lock()
            .unwrap()
            .insert(record.pk.clone(), record.clone());
        Ok(())
    }
    async fn take_sender_quota(
        &self,
        pk: &str,
        wanted: u32,
        max: u32,
        _expires_at: i64,
    ) -> Result<u32, StoreError> {
        // The state table's conditional add, on a count in memory.
        mailbridge::state_table::sender_quota::take_what_fits(wanted, max, |units| {
            let mut quota = self.sender_quota.lock().unwrap();
            let counted = quota.entry(pk.to_string()).or_default();
            let answer = if *counted <= max - units {
                *counted += units;
                None
            } else {
                Some(*counted)
            };
            async move { Ok(answer) }
        })
        .await
    }
    async fn give_back_sender_quota(&self, pk: &str, units: u32) -> Result<(), StoreError> {
        if let Some(counted) = self.sender_quota.lock().unwrap().get_mut(pk) {
            *counted = counted.saturating_sub(units);
        }
        Ok(())
    }
    async fn get_status(&self, mailbox: &str) -> Result<Option<MailboxStatus>, StoreError> {
        Ok(self.statuses.lock().unwrap().get(mailbox).cloned())
    }
    async fn put_status(&self, status: &MailboxStatus) -> Result<(), StoreError> {
        self.statuses
            .lock()
            .unwrap()
            .insert(status.mailbox.clone(), status.clone());
        Ok(())
    }
    async fn load_mailboxes(
        &self,
        names: Option<&[String]>,
    ) -> Result<Vec<Result<MailboxConfig, ConfigError>>, StoreError> {
        let all = self.configs.lock().unwrap().clone();
        Ok(all
            .into_iter()
            .filter(|c| {
                let name = match c {
                    Ok(c) => &c.name,
                    Err(e) => &e.mailbox,
                };
                names.is_none_or(|n| n.contains(name))
            })
            .collect())
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum SinkMode {
    Accept,
    Down,
    Reject,
}

struct FakeSink {
    mode: Mutex<SinkMode>,
    tickets: Mutex<Vec<(String, TicketPayload)>>,
    /// Subjects the API always answers 5xx for (a payload that breaks the helpdesk), whatever
    /// the mode; and how many POSTs it got.
    poison_subjects: Mutex<Vec<String>>,
    posts: Mutex<u32>,
    /// `received_at` of every POST, failed ones included.
    received_at_posted: Mutex<Vec<chrono::DateTime<chrono::Utc>>>,
}

#[async_trait]
impl TicketSink for FakeSink {
    async fn plan(
        &self,
        _payload: &TicketPayload,
        _deadline: Instant,
    ) -> Result<DeliveryPlan, TicketSinkError> {
        Ok(DeliveryPlan::NewTicket { queue: None })
    }

    async fn check(&self, _deadline: Instant) -> Result<SinkCheck, TicketSinkError> {
        Ok(SinkCheck {
            summary: "fake".into(),
        })
    }

    async fn deliver(
        &self,
        payload: &TicketPayload,
        key: &str,
        _deadline: Instant,
    ) -> Result<TicketReceipt, TicketSinkError> {
        *self.posts.lock().unwrap() += 1;
        self.received_at_posted
            .lock()
            .unwrap()
            .push(payload.received_at);
        let subject = payload.draft.subject.as_str();
        if self
            .poison_subjects
            .lock()
            .unwrap()
            .iter()
            .any(|p| p == subject)
        {
            return Err(TicketSinkError::Unavailable {
                target: "fake".into(),
                attempts: 6,
                detail: "HTTP 500: internal error".into(),
            });
        }
        match *self.mode.lock().unwrap() {
            SinkMode::Down => Err(TicketSinkError::Unavailable {
                target: "fake".into(),
                attempts: 1,
                detail: "503".into(),
            }),
            SinkMode::Reject => Err(TicketSinkError::Rejected {
                target: "fake".into(),
                status: 422,
                body: "no".into(),
            }),
            SinkMode::Accept => {
                let mut tickets = self.tickets.lock().unwrap();
                let replayed = tickets.iter().any(|(k, _)| k == key);
                if !replayed {
                    tickets.push((key.to_string(), payload.clone()));
                }
                Ok(TicketReceipt {
                    action: DeliveryPlan::NewTicket { queue: None },
                    ticket_id: Some(format!("T-{}", tickets.len())),
                    attempts: 1,
                    replayed,
                    sender: mailbridge::ticket_sink::SenderCheck::NotChecked,
                })
            }
        }
    }
}

struct FakeSinks(Arc<FakeSink>);

#[async_trait]
impl SinkFactory for FakeSinks {
    async fn sink_for(&self, _config: &MailboxConfig) -> Result<Arc<dyn TicketSink>, String> {
        Ok(self.0.clone())
    }
}

struct World {
    server: FakeServer,
    state: Arc<FakeState>,
    sink: Arc<FakeSink>,
    deps: PollDeps,
}

fn mailbox(name: &str, user: &str, extra: serde_json::Value) -> MailboxConfig {
    let mut item = serde_json::json!({"user": user, "account": format!("acct-{name}"), "ticket_api_url": "https://psa.example.com/t"});
    for (k, v) in extra.as_object().unwrap() {
        item[k] = v.clone();
    }
    MailboxConfig::from_json(name, &item).unwrap()
}

/// The common world: one mailbox "help" (help@example.com) with the default settings.
fn help_world() -> World {
    world(
        vec![Ok(mailbox(
            "help",
            "help@example.com",
            serde_json::json!({}),
        ))],
        ScriptedTokens::default(),
    )
}

fn world(configs: Vec<Result<MailboxConfig, ConfigError>>, tokens: ScriptedTokens) -> World {
    let server = FakeServer::default();
    let state = Arc::new(FakeState::default());
    *state.configs.lock().unwrap() = configs;
    let sink = Arc::new(FakeSink {
        mode: Mutex::new(SinkMode::Accept),
        tickets: Mutex::new(Vec::new()),
        received_at_posted: Mutex::new(Vec::new()),
        poison_subjects: Mutex::new(Vec::new()),
        posts: Mutex::new(0),
    });
    let deps = PollDeps {
        tokens: Arc::new(tokens),
        connector: Arc::new(server.clone()),
        state: state.clone(),
        sinks: Arc::new(FakeSinks(sink.clone())),
        parse: ParseContext::default(),
        max_concurrent_mailboxes: 4,
        deadline_margin: Duration::from_secs(5),
        dedupe_ttl: Duration::from_secs(86_400),
        targets: mailbridge::mailbox::TargetPolicy::local()
            .with_sink_hosts(&["psa.example.com"])
            .unwrap(),
        memory: Arc::new(crate::memory::MemoryBudget::unlimited()),
    };
    World {
        server,
        state,
        sink,
        deps,
    }
}

fn mail(id: &str, body: &str) -> Vec<u8> {
    format!("From: Ann <ann@example.com>\r\nTo: help@example.com\r\nSubject: Issue {id}\r\nMessage-ID: <{id}@example.com>\r\n\r\n{body}\r\n").into_bytes()
}

fn later() -> Instant {
    Instant::now() + Duration::from_secs(300)
}

#[tokio::test]
async fn a_mail_becomes_exactly_one_ticket_and_is_moved() {
    let w = help_world();
    w.server
        .deliver("help@example.com", &mail("a", "printer broken"));
    let report = poll_once(&w.deps, None, later()).await.unwrap();
    assert_eq!(report.tickets_created, 1);
    assert_eq!(w.server.count("help@example.com", "INBOX"), 0);
    assert_eq!(w.server.count("help@example.com", "Processed"), 1);
    let tickets = w.sink.tickets.lock().unwrap().clone();
    assert_eq!(tickets.len(), 1);
    assert_eq!(tickets[0].1.draft.subject, "Issue a");
    assert_eq!(tickets[0].1.idempotency_key, tickets[0].0);
    let again = poll_once(&w.deps, None, later()).await.unwrap();
    assert_eq!(again.outcome(), crate::PollOutcome::Empty);
    assert_eq!(
        w.state.statuses.lock().unwrap()["help"].outcome,
        MailboxOutcome::Ok
    );
}

#[tokio::test]
async fn ticket_api_down_leaves_the_mail_for_the_next_run() {
    let w = help_world();
    w.server.deliver("help@example.com", &mail("a", "x"));
    w.server.deliver("help@example.com", &mail("b", "y"));
    *w.sink.mode.lock().unwrap() = SinkMode::Down;
    let report = poll_once(&w.deps, None, later()).await.unwrap();
    assert_eq!(report.tickets_created, 0);
    assert_eq!(report.mailboxes[0].outcome, MailboxOutcome::Partial);
    assert_eq!(report.mailboxes[0].deferred, 2);
    // Counted for the MailboxPollFailed alarm ("ticket API refusing"): no ticket is made.
    assert_eq!(report.mailboxes_failed, 1, "{report:?}");
    assert_eq!(w.server.count("help@example.com", "INBOX"), 2);
    *w.sink.mode.lock().unwrap() = SinkMode::Accept;
    let report = poll_once(&w.deps, None, later()).await.unwrap();
    assert_eq!(report.tickets_created, 2);
    assert_eq!(report.mailboxes_failed, 0);
    assert_eq!(w.sink.tickets.lock().unwrap().len(), 2);
    assert_eq!(w.server.count("help@example.com", "Processed"), 2);
}

/// The sender quota counts the mails tried, as when each mail took its own unit: a window takes
/// its sender's units before its POSTs and gives back those of mails never tried (the ticket API
/// failing), while a mail tried and not delivered counts again when it is tried again.
#[tokio::test]
async fn the_quota_of_mails_not_tried_is_given_back() {
    let w = help_world();
    for id in ["a", "b", "c", "d", "e"] {
        w.server.deliver("help@example.com", &mail(id, "x"));
    }
    let counted = || -> u32 { w.state.sender_quota.lock().unwrap().values().sum() };
    *w.sink.mode.lock().unwrap() = SinkMode::Down;
    let report = poll_once(&w.deps, None, later()).await.unwrap();
    assert_eq!(report.mailboxes[0].deferred, 5, "{report:?}");
    // Two POSTs failed (the API is failing after two in a row), three never tried.
    assert_eq!(counted(), 2);
    *w.sink.mode.lock().unwrap() = SinkMode::Accept;
    let report = poll_once(&w.deps, None, later()).await.unwrap();
    assert_eq!(report.tickets_created, 5);
    assert_eq!(counted(), 7);
}

/// `received_at` is the mail's INTERNALDATE, the same on every attempt: a POST retried by a later
/// run carries the same payload under the same Idempotency-Key (a strict API answers 422 to a
/// key reused with another payload), and the helpdesk's SLA clock starts when the mail arrived.
/// (Before: the time of each poll.)
#[tokio::test]
async fn received_at_is_the_internaldate_on_every_attempt() {
    let w = help_world();
    w.server.deliver("help@example.com", &mail("a", "x"));
    *w.sink.mode.lock().unwrap() = SinkMode::Down;
    poll_once(&w.deps, None, later()).await.unwrap();
    *w.sink.mode.lock().unwrap() = SinkMode::Accept;
    let report = poll_once(&w.deps, None, later()).await.unwrap();
    assert_eq!(report.tickets_created, 1);
    let internal_date = chrono::DateTime::from_timestamp(1_700_000_001, 0).unwrap();
    assert_eq!(
        *w.sink.received_at_posted.lock().unwrap(),
        vec![internal_date, internal_date]
    );
}

/// A mail the ticket API always fails on with a transient error (5xx, a timeout on its payload)
/// stays in place but does not hold up the mail behind it: the next mail is tried in the same
/// run, and the next run tries it after the others. (Before: every run stopped at it, so no
/// mail of that mailbox was ever ticketed again.)
#[tokio::test]
async fn a_mail_the_ticket_api_keeps_failing_on_does_not_block_the_mail_behind_it() {
    let w = help_world();
    for id in ["poison", "b", "c"] {
        w.server.deliver("help@example.com", &mail(id, "x"));
    }
    w.sink
        .poison_subjects
        .lock()
        .unwrap()
        .push("Issue poison".into());
    let report = poll_once(&w.deps, None, later()).await.unwrap();
    let status = &report.mailboxes[0];
    assert_eq!(report.tickets_created, 2, "{report:?}");
    assert_eq!(status.outcome, MailboxOutcome::Partial);
    assert_eq!(status.deferred, 1);
    assert_eq!(status.retry_last_uids, vec![1]);
    assert!(
        status.reason.as_deref().unwrap().contains("UIDs [1]"),
        "{status:?}"
    );
    assert_eq!(
        w.server.count("help@example.com", "INBOX"),
        1,
        "left in place"
    );

    // Next run: the new mail goes first, the failing one after it.
    w.server.deliver("help@example.com", &mail("d", "x"));
    *w.sink.posts.lock().unwrap() = 0;
    let report = poll_once(&w.deps, None, later()).await.unwrap();
    assert_eq!(report.tickets_created, 1, "{report:?}");
    assert_eq!(*w.sink.posts.lock().unwrap(), 2);
    assert_eq!(
        w.sink
            .tickets
            .lock()
            .unwrap()
            .last()
            .unwrap()
            .1
            .draft
            .subject,
        "Issue d"
    );

    // The API is down for everything: two failures in a row stop the run (no third POST).
    w.server.deliver("help@example.com", &mail("e", "x"));
    w.server.deliver("help@example.com", &mail("f", "x"));
    *w.sink.mode.lock().unwrap() = SinkMode::Down;
    *w.sink.posts.lock().unwrap() = 0;
    let report = poll_once(&w.deps, None, later()).await.unwrap();
    assert_eq!(*w.sink.posts.lock().unwrap(), 2, "{report:?}");
    assert_eq!(report.mailboxes[0].deferred, 3, "{report:?}");

    // Fixed: everything becomes exactly one ticket.
    *w.sink.mode.lock().unwrap() = SinkMode::Accept;
    w.sink.poison_subjects.lock().unwrap().clear();
    let report = poll_once(&w.deps, None, later()).await.unwrap();
    assert_eq!(report.tickets_created, 3, "{report:?}");
    assert_eq!(report.mailboxes[0].outcome, MailboxOutcome::Ok);
    assert!(report.mailboxes[0].retry_last_uids.is_empty());
    assert_eq!(w.server.count("help@example.com", "INBOX"), 0);
    assert_eq!(w.sink.tickets.lock().unwrap().len(), 6);
}

/// The same with `max_messages_per_run: 1`: the failing mail is put last before the cut, so
/// the run after it takes the next mail instead of the same failing one again.
#[tokio::test]
async fn a_failing_mail_is_put_last_before_the_per_run_limit() {
    let w = world(
        vec![Ok(mailbox(
            "help",
            "help@example.com",
            serde_json::json!({"max_messages_per_run": 1}),
        ))],
        ScriptedTokens::default(),
    );
    for id in ["poison", "b"] {
        w.server.deliver("help@example.com", &mail(id, "x"));
    }
    w.sink
        .poison_subjects
        .lock()
        .unwrap()
        .push("Issue poison".into());
    let report = poll_once(&w.deps, None, later()).await.unwrap();
    assert_eq!(report.tickets_created, 0);
    assert_eq!(report.mailboxes[0].deferred, 2, "{report:?}");
    let report = poll_once(&w.deps, None, later()).await.unwrap();
    assert_eq!(report.tickets_created, 1, "{report:?}");
    assert_eq!(w.server.count("help@example.com", "INBOX"), 1);
}

#[tokio::test]
async fn reused_message_id_gives_two_tickets_and_the_same_mail_twice_gives_one() {
    let w = help_world();
    w.server
        .deliver("help@example.com", &mail("same", "first content"));
    w.server
        .deliver("help@example.com", &mail("same", "second content"));
    w.server
        .deliver("help@example.com", &mail("twice", "identical"));
    w.server
        .deliver("help@example.com", &mail("twice", "identical"));
    let report = poll_once(&w.deps, None, later()).await.unwrap();
    assert_eq!(report.tickets_created, 3);
    assert_eq!(report.mailboxes[0].duplicates, 1);
    assert_eq!(w.sink.tickets.lock().unwrap().len(), 3);
    assert_eq!(w.server.count("help@example.com", "Processed"), 4);
}

#[tokio::test]
async fn malformed_and_oversize_mail_get_a_ticket_with_a_note_and_are_parked() {
    let w = world(
        vec![Ok(mailbox(
            "help",
            "help@example.com",
            serde_json::json!({"max_message_bytes": 2048}),
        ))],
        ScriptedTokens::default(),
    );
    w.server.deliver(
        "help@example.com",
        b"\x00\x01garbage without any header\r\n",
    );
    let mut big = mail("big", "");
    big.extend(std::iter::repeat_n(b'x', 4096));
    w.server.deliver("help@example.com", &big);
    w.server.deliver("help@example.com", &mail("fine", "ok"));
    let report = poll_once(&w.deps, None, later()).await.unwrap();
    assert_eq!(report.parked, 2, "{report:?}");
    assert_eq!(report.tickets_created, 1);
    assert_eq!(w.server.count("help@example.com", "mailbridge-failed"), 2);
    let tickets = w.sink.tickets.lock().unwrap().clone();
    let garbage = &tickets[0].1;
    assert!(
        garbage
            .problem
            .as_deref()
            .unwrap()
            .contains("could not parse")
    );
    assert!(garbage.raw_message_base64.is_some());
    let oversize = &tickets[1].1;
    assert!(
        oversize
            .problem
            .as_deref()
            .unwrap()
            .contains("over the 2048-byte limit")
    );
    assert_eq!(oversize.draft.subject, "Issue big");
    assert!(oversize.raw_message_base64.is_none());
}

#[tokio::test]
async fn a_rejected_mail_is_parked_without_blocking_the_rest() {
    let w = help_world();
    w.server.deliver("help@example.com", &mail("a", "x"));
    *w.sink.mode.lock().unwrap() = SinkMode::Reject;
    let report = poll_once(&w.deps, None, later()).await.unwrap();
    assert_eq!(report.parked, 1);
    assert_eq!(w.server.count("help@example.com", "mailbridge-failed"), 1);
}

#[tokio::test]
async fn auth_problems_are_per_mailbox_and_the_others_are_polled() {
    let tokens = ScriptedTokens::default();
    tokens.fail("acct-expired", |account| TokenError::NeedsReauth {
        account: account.into(),
        reason: "AADSTS70008: refresh token expired".into(),
    });
    let bad_config =
        MailboxConfig::from_json("broken", &serde_json::json!({"user": "x"})).unwrap_err();
    let w = world(
        vec![
            Ok(mailbox(
                "expired",
                "expired@example.com",
                serde_json::json!({}),
            )),
            Ok(mailbox(
                "denied",
                "denied@example.com",
                serde_json::json!({}),
            )),
            Err(bad_config),
            Ok(mailbox("good", "good@example.com", serde_json::json!({}))),
        ],
        tokens,
    );
    w.server.0.lock().unwrap().auth_fails_for = vec!["denied@example.com".into()];
    for user in [
        "expired@example.com",
        "denied@example.com",
        "good@example.com",
    ] {
        w.server.deliver(user, &mail(user, "x"));
    }
    let report = poll_once(&w.deps, None, later()).await.unwrap();
    assert_eq!(report.tickets_created, 1);
    assert_eq!(report.mailboxes_failed, 3);
    assert_eq!(report.accounts_need_reauth, 1);
    let by_name: HashMap<_, _> = report
        .mailboxes
        .iter()
        .map(|s| (s.mailbox.as_str(), s))
        .collect();
    assert_eq!(by_name["expired"].outcome, MailboxOutcome::NeedsReauth);
    assert!(
        by_name["expired"]
            .reason
            .as_deref()
            .unwrap()
            .contains("AADSTS70008")
    );
    assert_eq!(by_name["denied"].outcome, MailboxOutcome::Failed);
    assert!(
        by_name["denied"]
            .reason
            .as_deref()
            .unwrap()
            .contains("IMAP.AccessAsUser.All")
    );
    assert_eq!(by_name["broken"].outcome, MailboxOutcome::ConfigError);
    assert!(
        by_name["broken"]
            .reason
            .as_deref()
            .unwrap()
            .contains("field `user`")
    );
    assert_eq!(by_name["good"].outcome, MailboxOutcome::Ok);
}

#[tokio::test]
async fn a_dropped_connection_is_resumed_next_run_without_loss_or_duplicates() {
    let w = help_world();
    for i in 0..5 {
        w.server
            .deliver("help@example.com", &mail(&format!("m{i}"), "x"));
    }
    // select, search, sizes, then fetch+move per mail: drop in the middle of the third mail's
    // move (after its ticket was accepted and recorded).
    for budget in [7, 3, 8] {
        w.server.0.lock().unwrap().drop_after = Some(budget);
        let report = poll_once(&w.deps, None, later()).await.unwrap();
        assert_eq!(
            report.mailboxes[0].outcome,
            MailboxOutcome::Failed,
            "{report:?}"
        );
    }
    w.server.0.lock().unwrap().drop_after = None;
    poll_once(&w.deps, None, later()).await.unwrap();
    assert_eq!(w.server.count("help@example.com", "INBOX"), 0);
    assert_eq!(w.server.count("help@example.com", "Processed"), 5);
    assert_eq!(w.sink.tickets.lock().unwrap().len(), 5);
}

#[tokio::test]
async fn near_the_deadline_no_new_mail_is_started() {
    let w = help_world();
    w.server.deliver("help@example.com", &mail("a", "x"));
    let report = poll_once(&w.deps, None, Instant::now() + Duration::from_secs(2))
        .await
        .unwrap();
    assert_eq!(report.tickets_created, 0);
    assert_eq!(report.mailboxes[0].outcome, MailboxOutcome::Partial);
    assert_eq!(report.mailboxes[0].deferred, 1);
    assert_eq!(report.mailboxes_failed, 0, "the deadline is no failure");
    assert_eq!(w.server.count("help@example.com", "INBOX"), 1);
}

#[tokio::test]
async fn mark_seen_mode_only_polls_unseen_mail() {
    let w = world(
        vec![Ok(mailbox(
            "help",
            "help@example.com",
            serde_json::json!({"after_action": "mark_seen"}),
        ))],
        ScriptedTokens::default(),
    );
    w.server.deliver("help@example.com", &mail("a", "x"));
    poll_once(&w.deps, None, later()).await.unwrap();
    poll_once(&w.deps, None, later()).await.unwrap();
    assert_eq!(w.sink.tickets.lock().unwrap().len(), 1);
    assert_eq!(w.server.seen("help@example.com", "INBOX"), 1);
}

#[tokio::test]
async fn a_manual_event_polls_only_the_named_mailboxes() {
    let w = world(
        vec![
            Ok(mailbox("a", "a@example.com", serde_json::json!({}))),
            Ok(mailbox("b", "b@example.com", serde_json::json!({}))),
        ],
        ScriptedTokens::default(),
    );
    w.server.deliver("a@example.com", &mail("1", "x"));
    w.server.deliver("b@example.com", &mail("2", "x"));
    let report = crate::handler::handle(&w.deps, &serde_json::json!({"mailboxes": ["b"]}), later())
        .await
        .unwrap();
    assert_eq!(report.mailboxes.len(), 1);
    assert_eq!(w.server.count("a@example.com", "INBOX"), 1);
    assert_eq!(w.server.count("b@example.com", "INBOX"), 0);
    // by address, and an unknown name is reported, not ignored
    let report = crate::handler::handle(
        &w.deps,
        &serde_json::json!({"mailboxes": ["A@example.com", "nobody"]}),
        later(),
    )
    .await
    .unwrap();
    assert_eq!(report.mailboxes.len(), 2);
    assert_eq!(w.server.count("a@example.com", "INBOX"), 0);
    let unknown = report
        .mailboxes
        .iter()
        .find(|s| s.mailbox == "nobody")
        .unwrap();
    assert_eq!(unknown.outcome, MailboxOutcome::ConfigError);
}

fn machine_mail(id: &str, from: &str, subject: &str, extra_headers: &str) -> Vec<u8> {
    format!("From: {from}\r\nTo: help@example.com\r\nSubject: {subject}\r\nMessage-ID: <{id}@example.com>\r\n{extra_headers}\r\nThis is an automatic message.\r\n").into_bytes()
}

#[tokio::test]
async fn machine_mail_opens_no_ticket_and_is_set_aside_unless_it_threads_to_one() {
    for after_action in ["move", "mark_seen", "delete"] {
        let w = world(
            vec![Ok(mailbox(
                "help",
                "help@example.com",
                serde_json::json!({"after_action": after_action}),
            ))],
            ScriptedTokens::default(),
        );
        let user = "help@example.com";
        // Unthreaded out-of-office and bounce: never a ticket.
        w.server.deliver(
            user,
            &machine_mail(
                "ooo",
                "Bob <bob@example.com>",
                "Automatic reply: printer",
                "Auto-Submitted: auto-replied\r\n",
            ),
        );
        w.server.deliver(
            user,
            &machine_mail(
                "bounce",
                "Mail Delivery System <MAILER-DAEMON@example.com>",
                "Undelivered Mail Returned to Sender",
                "Return-Path: <>\r\nAuto-Submitted: auto-replied\r\n",
            ),
        );
        // Our own mail coming back, even with a ticket number: a loop, never posted.
        w.server.deliver(
            user,
            &machine_mail(
                "loop",
                "Helpdesk <help@example.com>",
                "[Ticket#77] Your request",
                "",
            ),
        );
        // An out-of-office answering a ticket notification: posted to that ticket.
        w.server.deliver(
            user,
            &machine_mail(
                "ooo-threaded",
                "Carol <carol@example.com>",
                "Automatic reply: [Ticket#4711] Your printer",
                "Auto-Submitted: auto-replied\r\n",
            ),
        );
        // A person's mail: a ticket as always.
        w.server
            .deliver(user, &mail("human", "the printer is on fire"));

        let report = poll_once(&w.deps, None, later()).await.unwrap();
        assert_eq!(
            report.skipped_auto_generated, 3,
            "{after_action}: {report:?}"
        );
        assert_eq!(report.tickets_created, 2, "{after_action}: {report:?}");
        assert_eq!(report.outcome(), crate::PollOutcome::Processed(5));
        assert_eq!(report.mailboxes[0].skipped_auto_generated, 3);
        let tickets = w.sink.tickets.lock().unwrap().clone();
        let subjects: Vec<_> = tickets
            .iter()
            .map(|(_, p)| p.draft.subject.clone())
            .collect();
        assert_eq!(
            subjects,
            ["Automatic reply: [Ticket#4711] Your printer", "Issue human"],
            "{after_action}"
        );
        let threaded = &tickets[0].1.draft;
        assert!(threaded.auto_generated);
        // threaded by the subject tag, which is kept apart from the signed `ticket_number`
        assert_eq!(threaded.subject_ticket_number.as_deref(), Some("4711"));
        assert_eq!(threaded.ticket_number, None);
        // Set aside, never deleted, whatever the after-action.
        assert_eq!(
            w.server.count(user, "mailbridge-auto-generated"),
            3,
            "{after_action}"
        );
        let again = poll_once(&w.deps, None, later()).await.unwrap();
        assert_eq!(again.skipped_auto_generated, 0);
        assert_eq!(again.tickets_created, 0);
        assert_eq!(w.sink.tickets.lock().unwrap().len(), 2);
    }
}

#[tokio::test]
async fn a_drop_while_setting_machine_mail_aside_loses_nothing() {
    let w = world(
        vec![Ok(mailbox(
            "help",
            "help@example.com",
            serde_json::json!({"auto_generated_folder": "Robots"}),
        ))],
        ScriptedTokens::default(),
    );
    let user = "help@example.com";
    w.server.deliver(
        user,
        &machine_mail(
            "ooo",
            "Bob <bob@example.com>",
            "Out of office",
            "Auto-Submitted: auto-replied\r\n",
        ),
    );
    // select, search, sizes, fetch: the MOVE is the fifth command and fails.
    w.server.0.lock().unwrap().drop_after = Some(4);
    let report = poll_once(&w.deps, None, later()).await.unwrap();
    assert_eq!(report.mailboxes[0].outcome, MailboxOutcome::Failed);
    assert_eq!(w.server.count(user, "INBOX"), 1);
    w.server.0.lock().unwrap().drop_after = None;
    let report = poll_once(&w.deps, None, later()).await.unwrap();
    assert_eq!(report.skipped_auto_generated, 1);
    assert_eq!(w.server.count(user, "INBOX"), 0);
    assert_eq!(w.server.count(user, "Robots"), 1);
    assert!(w.sink.tickets.lock().unwrap().is_empty());
}

#[test]
fn list_mail_ticket_lets_only_list_and_bulk_mail_through() {
    use crate::machine_mail::unticketed_auto_generated_reason;
    use mailbridge::mailbox::ListMail;
    let draft = |reason: &str, ticket: Option<&str>| mailbridge::mail::TicketDraft {
        auto_generated: true,
        auto_reason: Some(reason.parse().expect("a known kind")),
        ticket_number: ticket.map(str::to_string),
        ..Default::default()
    };
    let list_or_bulk = [
        "mailing_list: List-Id <helpdesk.contoso.com>",
        "mailing_list: Precedence list",
        "bulk: Precedence bulk",
        "bulk: List-Unsubscribe",
    ];
    for reason in list_or_bulk {
        assert_eq!(
            unticketed_auto_generated_reason(&draft(reason, None), ListMail::SetAside)
                .map(|r| r.to_string())
                .as_deref(),
            Some(reason)
        );
        assert_eq!(
            unticketed_auto_generated_reason(&draft(reason, None), ListMail::Ticket),
            None,
            "{reason}"
        );
    }
    // Never opened by `list_mail: ticket`: auto-replies, bounces, reports, other machine mail,
    // and loops (not even with a ticket number).
    let never = [
        "auto_reply: Auto-Submitted auto-replied",
        "auto_reply: Precedence auto_reply",
        "out_of_office: X-MS-Exchange-Inbox-Rules-Loop",
        "bounce: sent by MAILER-DAEMON",
        "delivery_report: multipart/report",
        "auto_generated: Return-Path <>",
        "auto_generated: X-Loop helpdesk@contoso.com",
        "loop: sent from own address helpdesk@contoso.com",
    ];
    for reason in never {
        for setting in [ListMail::SetAside, ListMail::Ticket] {
            assert_eq!(
                unticketed_auto_generated_reason(&draft(reason, None), setting)
                    .map(|r| r.to_string())
                    .as_deref(),
                Some(reason),
                "{reason} {setting:?}"
            );
        }
    }
    let own_loop = draft(
        "loop: sent from own address helpdesk@contoso.com",
        Some("7"),
    );
    assert!(unticketed_auto_generated_reason(&own_loop, ListMail::Ticket).is_some());
    // Threaded machine mail and person mail are posted whatever the setting.
    let threaded = draft("auto_reply: Auto-Submitted auto-replied", Some("7"));
    let person = mailbridge::mail::TicketDraft::default();
    for setting in [ListMail::SetAside, ListMail::Ticket] {
        assert_eq!(unticketed_auto_generated_reason(&threaded, setting), None);
        assert_eq!(unticketed_auto_generated_reason(&person, setting), None);
    }
}

#[tokio::test]
async fn a_list_helpdesk_address_tickets_list_mail_but_still_sets_auto_replies_aside() {
    for (setting, tickets, set_aside) in [
        (None, 1, 3),
        (Some("set_aside"), 1, 3),
        (Some("ticket"), 3, 1),
    ] {
        let extra = match setting {
            Some(value) => serde_json::json!({"list_mail": value}),
            None => serde_json::json!({}),
        };
        let w = world(
            vec![Ok(mailbox("group", "group@example.com", extra))],
            ScriptedTokens::default(),
        );
        let user = "group@example.com";
        // A Google Group post and a web form sending with `Precedence: bulk`.
        w.server.deliver(
            user,
            &machine_mail(
                "group-post",
                "Dana <dana@example.org>",
                "VPN drops every hour",
                "List-Id: <support.example.com>\r\nList-Unsubscribe: <mailto:support+unsubscribe@example.com>\r\n",
            ),
        );
        w.server.deliver(
            user,
            &machine_mail(
                "web-form",
                "Web form <noreply@example.com>",
                "Contact form: printer jammed",
                "Precedence: bulk\r\n",
            ),
        );
        // An out-of-office reaching the group: still set aside.
        w.server.deliver(
            user,
            &machine_mail(
                "ooo",
                "Bob <bob@example.com>",
                "Automatic reply: VPN",
                "Auto-Submitted: auto-replied\r\nList-Id: <support.example.com>\r\n",
            ),
        );
        w.server.deliver(user, &mail("human", "a person writes"));
        let report = poll_once(&w.deps, None, later()).await.unwrap();
        assert_eq!(report.tickets_created, tickets, "{setting:?}: {report:?}");
        assert_eq!(report.skipped_auto_generated, set_aside, "{setting:?}");
        assert_eq!(
            w.server.count(user, "mailbridge-auto-generated"),
            set_aside as usize,
            "{setting:?}"
        );
        if setting == Some("ticket") {
            let posted = w.sink.tickets.lock().unwrap().clone();
            let list_post = posted
                .iter()
                .find(|(_, p)| p.draft.subject == "VPN drops every hour")
                .expect("the group post is ticketed");
            // The helpdesk still sees that it came through a list.
            assert!(list_post.1.draft.auto_generated);
            assert!(
                list_post.1.draft.auto_reason.as_ref().unwrap().kind
                    == mailbridge::mail::MachineMailKind::MailingList,
                "{:?}",
                list_post.1.draft
            );
        }
    }
}

#[tokio::test]
async fn a_config_pointing_at_a_host_off_the_allowlists_is_refused_when_read() {
    // Written straight into the table (not through the CLI): the poll run checks it again.
    let w = world(
        vec![
            Ok(mailbox(
                "stolen-token",
                "a@example.com",
                serde_json::json!({"host": "imap.attacker.example"}),
            )),
            Ok(mailbox(
                "stolen-mail",
                "b@example.com",
                serde_json::json!({"ticket_api_url": "https://collector.attacker.example/t"}),
            )),
            Ok(mailbox("good", "c@example.com", serde_json::json!({}))),
        ],
        ScriptedTokens::default(),
    );
    for user in ["a@example.com", "b@example.com", "c@example.com"] {
        w.server.deliver(user, &mail(user, "hello"));
    }
    let report = poll_once(&w.deps, None, Instant::now() + Duration::from_secs(30))
        .await
        .unwrap();
    let by_name: HashMap<_, _> = report
        .mailboxes
        .iter()
        .map(|s| (s.mailbox.as_str(), s))
        .collect();
    for (name, field, host) in [
        ("stolen-token", "`host`", "imap.attacker.example"),
        ("stolen-mail", "`sink.url`", "collector.attacker.example"),
    ] {
        let status = by_name[name];
        assert_eq!(status.outcome, MailboxOutcome::ConfigError, "{status:?}");
        let reason = status.reason.as_deref().unwrap();
        assert!(reason.contains(field) && reason.contains(host), "{reason}");
    }
    assert_eq!(by_name["good"].outcome, MailboxOutcome::Ok);
    // Only the good mailbox's mail went anywhere; the others stay in their inboxes.
    assert_eq!(w.sink.tickets.lock().unwrap().len(), 1);
    assert_eq!(w.server.count("a@example.com", "INBOX"), 1);
    assert_eq!(w.server.count("b@example.com", "INBOX"), 1);
}

#[tokio::test]
async fn a_mail_a_run_died_reading_is_parked_unread_and_the_others_go_on() {
    let w = help_world();
    for i in 0..3 {
        w.server
            .deliver("help@example.com", &mail(&format!("m{i}"), "hello"));
    }
    // A run took the lease, marked the second mail in flight, and died (no release).
    let poison = 2;
    let token = match w
        .deps
        .state
        .acquire_mailbox_lease("help", chrono::Utc::now().timestamp() - 1)
        .await
        .unwrap()
    {
        MailboxLease::Acquired { token, interrupted } => {
            assert_eq!(interrupted, None);
            token
        }
        MailboxLease::Held(_) => panic!("free"),
    };
    let uid_validity = {
        let mut mailbox = w
            .server
            .connect(
                &mailbox("help", "help@example.com", serde_json::json!({})),
                &SecretString::from("t"),
            )
            .await
            .unwrap();
        mailbox.select("INBOX").await.unwrap().uid_validity
    };
    w.deps
        .state
        .mark_in_flight("help", &token, InFlightMail::one(uid_validity, poison))
        .await
        .unwrap();

    let report = poll_once(&w.deps, None, Instant::now() + Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(report.tickets_created, 2, "{report:?}");
    assert_eq!(report.parked, 1, "{report:?}");
    assert_eq!(w.sink.tickets.lock().unwrap().len(), 2);
    assert_eq!(w.server.count("help@example.com", "mailbridge-failed"), 1);
    assert_eq!(w.server.count("help@example.com", "Processed"), 2);
    // The next run has nothing left to park: the normal end of a run forgets the mark.
    let again = poll_once(&w.deps, None, Instant::now() + Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!((again.parked, again.tickets_created), (0, 0));
}

/// A window of small mails a run died in: none is parked (which one ended the run is not
/// known); they are read again one at a time, each named alone, so the one that ends a run is
/// known the next time.
#[tokio::test]
async fn a_window_a_run_died_in_is_read_again_one_mail_at_a_time() {
    let w = help_world();
    for i in 0..3 {
        w.server
            .deliver("help@example.com", &mail(&format!("m{i}"), "hello"));
    }
    w.server
        .deliver("help@example.com", &mail("after", "hello"));
    let token = match w
        .deps
        .state
        .acquire_mailbox_lease("help", chrono::Utc::now().timestamp() - 1)
        .await
        .unwrap()
    {
        MailboxLease::Acquired { token, .. } => token,
        MailboxLease::Held(_) => panic!("free"),
    };
    let uid_validity = {
        let mut mailbox = w
            .server
            .connect(
                &mailbox("help", "help@example.com", serde_json::json!({})),
                &SecretString::from("t"),
            )
            .await
            .unwrap();
        mailbox.select("INBOX").await.unwrap().uid_validity
    };
    let window = InFlightMail {
        uid_validity,
        uid: 1,
        last_uid: 3,
    };
    w.deps
        .state
        .mark_in_flight("help", &token, window)
        .await
        .unwrap();
    let report = poll_once(&w.deps, None, Instant::now() + Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(
        (report.tickets_created, report.parked),
        (4, 0),
        "{report:?}"
    );
    let marks = w.state.in_flight_marks.lock().unwrap().clone();
    assert_eq!(
        marks[1..],
        [
            InFlightMail::one(uid_validity, 1),
            InFlightMail::one(uid_validity, 2),
            InFlightMail::one(uid_validity, 3),
            InFlightMail::one(uid_validity, 4),
        ],
        "each mail of the window named alone, then the rest as a window"
    );
}

/// Records the gates a queued run disarms.
#[derive(Default)]
struct FakeGate {
    disarmed: Mutex<Vec<String>>,
}

#[async_trait]
impl mailbridge::state_table::PollGate for FakeGate {
    async fn arm(&self, _: &str) -> Result<bool, mailbridge::state_table::StoreError> {
        unreachable!("only the receiver arms gates")
    }
    async fn disarm(&self, mailbox: &str) -> Result<(), mailbridge::state_table::StoreError> {
        self.disarmed.lock().unwrap().push(mailbox.to_owned());
        Ok(())
    }
}

#[tokio::test]
async fn a_queued_poll_request_held_off_by_the_lease_is_delivered_again() {
    let w = help_world();
    let gate = Arc::new(FakeGate::default());
    let push = crate::push::PushDeps {
        gate: gate.clone(),
        subscriptions: None,
    };
    w.server.deliver("help@example.com", &mail("a", "x"));
    let event = serde_json::json!({"Records": [
        {"messageId": "m1", "eventSource": "aws:sqs", "body": "{\"mailbox\":\"help\"}"},
        {"messageId": "m2", "eventSource": "aws:sqs", "body": "{\"mailbox\":\"help\"}"},
        {"messageId": "m3", "eventSource": "aws:sqs", "body": "garbage"},
    ]});
    // a scheduled run holds the mailbox
    let held = w
        .state
        .acquire_mailbox_lease("help", chrono::Utc::now().timestamp() + 60)
        .await
        .unwrap();
    let answer = crate::handler::handle_event(&w.deps, Some(&push), &event, later())
        .await
        .unwrap();
    assert_eq!(
        answer["batchItemFailures"],
        serde_json::json!([{"itemIdentifier": "m1"}, {"itemIdentifier": "m2"}])
    );
    assert_eq!(*gate.disarmed.lock().unwrap(), vec!["help".to_owned()]);
    assert!(w.sink.tickets.lock().unwrap().is_empty());
    let MailboxLease::Acquired { token, .. } = held else {
        panic!("the lease was free")
    };
    w.state.release_mailbox_lease("help", &token).await.unwrap();
    let answer = crate::handler::handle_event(&w.deps, Some(&push), &event, later())
        .await
        .unwrap();
    assert_eq!(answer["batchItemFailures"], serde_json::json!([]));
    assert_eq!(answer["tickets_created"], 1);
    assert_eq!(w.sink.tickets.lock().unwrap().len(), 1);
    // without push deps a queue event is an error, not a silent full run
    assert!(
        crate::handler::handle_event(&w.deps, None, &event, later())
            .await
            .is_err()
    );
}

/// Subscription records and Graph's `/subscriptions` in memory.
#[derive(Default)]
struct FakeSubscriptions {
    records: Mutex<HashMap<String, mailbridge::state_table::SubscriptionRecord>>,
    graph: Mutex<HashMap<String, chrono::DateTime<chrono::Utc>>>,
    renewals_fail: Mutex<bool>,
    next: Mutex<u32>,
}

#[async_trait]
impl mailbridge::state_table::SubscriptionStore for FakeSubscriptions {
    async fn subscription(
        &self,
        id: &str,
    ) -> Result<
        Option<mailbridge::state_table::SubscriptionRecord>,
        mailbridge::state_table::StoreError,
    > {
        Ok(self
            .records
            .lock()
            .unwrap()
            .values()
            .find(|r| r.id == id)
            .cloned())
    }
    async fn subscription_of(
        &self,
        mailbox: &str,
    ) -> Result<
        Option<mailbridge::state_table::SubscriptionRecord>,
        mailbridge::state_table::StoreError,
    > {
        Ok(self.records.lock().unwrap().get(mailbox).cloned())
    }
    async fn put_subscription(
        &self,
        record: &mailbridge::state_table::SubscriptionRecord,
    ) -> Result<(), mailbridge::state_table::StoreError> {
        self.records
            .lock()
            .unwrap()
            .insert(record.mailbox.clone(), record.clone());
        Ok(())
    }
    async fn delete_subscription(
        &self,
        record: &mailbridge::state_table::SubscriptionRecord,
    ) -> Result<(), mailbridge::state_table::StoreError> {
        self.records.lock().unwrap().remove(&record.mailbox);
        Ok(())
    }
    async fn subscribed_mailboxes(
        &self,
    ) -> Result<Vec<String>, mailbridge::state_table::StoreError> {
        Ok(self.records.lock().unwrap().keys().cloned().collect())
    }
}

#[async_trait]
impl crate::push::SubscriptionApi for FakeSubscriptions {
    async fn resource(
        &self,
        config: &MailboxConfig,
        _: &AccessToken,
        _: Instant,
    ) -> Result<String, mailbridge::graph::GraphError> {
        Ok(format!(
            "/users/{}/mailFolders('inbox')/messages",
            config.user
        ))
    }
    async fn create(
        &self,
        _: &str,
        _: &AccessToken,
        _: &str,
        url: &str,
        client_state: &str,
        expires: chrono::DateTime<chrono::Utc>,
        _: Instant,
    ) -> Result<mailbridge::graph_subscriptions::CreatedSubscription, mailbridge::graph::GraphError>
    {
        assert!(url.starts_with("https://"));
        assert_eq!(client_state.len(), 43);
        let mut next = self.next.lock().unwrap();
        *next += 1;
        let id = format!("sub-{next}");
        self.graph.lock().unwrap().insert(id.clone(), expires);
        Ok(mailbridge::graph_subscriptions::CreatedSubscription {
            id,
            expires_at: expires,
        })
    }
    async fn renew(
        &self,
        _: &str,
        _: &AccessToken,
        id: &str,
        expires: chrono::DateTime<chrono::Utc>,
        _: Instant,
    ) -> Result<chrono::DateTime<chrono::Utc>, mailbridge::graph::GraphError> {
        if *self.renewals_fail.lock().unwrap() {
            return Err(mailbridge::graph::GraphError::Rejected {
                status: 403,
                code: "ExtensionError".into(),
                message: "Operation: Update; Exception: [Status Code: Forbidden]".into(),
                request_id: None,
            });
        }
        match self.graph.lock().unwrap().get_mut(id) {
            Some(at) => {
                *at = expires;
                Ok(expires)
            }
            None => Err(mailbridge::graph::GraphError::Rejected {
                status: 404,
                code: "ResourceNotFound".into(),
                message: "subscription not found".into(),
                request_id: None,
            }),
        }
    }
    async fn delete(
        &self,
        _: &str,
        _: &AccessToken,
        id: &str,
        _: Instant,
    ) -> Result<(), mailbridge::graph::GraphError> {
        self.graph.lock().unwrap().remove(id);
        Ok(())
    }
}

#[tokio::test]
async fn scheduled_runs_create_renew_recreate_and_delete_push_subscriptions() {
    let w = world(
        vec![
            Ok(mailbox(
                "help",
                "help@example.com",
                serde_json::json!({"push": true}),
            )),
            Ok(mailbox("quiet", "quiet@example.com", serde_json::json!({}))),
        ],
        ScriptedTokens::default(),
    );
    let fake = Arc::new(FakeSubscriptions::default());
    let subs = crate::push::SubscriptionDeps {
        store: fake.clone(),
        api: fake.clone(),
        notification_url: "https://abc.lambda-url.eu-west-1.on.aws/".into(),
    };
    let run = || crate::push::maintain_subscriptions(&w.deps, &subs, later());
    let report = run().await.unwrap();
    assert_eq!((report.created, report.failed), (1, 0));
    let first = fake.records.lock().unwrap()["help"].clone();
    assert_eq!(first.id, "sub-1");
    // a quiet second run does nothing
    assert_eq!(run().await.unwrap(), Default::default());
    // near its expiry it is renewed; a failed renewal is counted and tried again next run
    fake.records
        .lock()
        .unwrap()
        .get_mut("help")
        .unwrap()
        .expires_at = chrono::Utc::now().timestamp() + 3600;
    *fake.renewals_fail.lock().unwrap() = true;
    assert_eq!(run().await.unwrap().failed, 1);
    *fake.renewals_fail.lock().unwrap() = false;
    let report = run().await.unwrap();
    assert_eq!((report.renewed, report.failed), (1, 0));
    assert!(
        fake.records.lock().unwrap()["help"].expires_at
            > chrono::Utc::now().timestamp() + 86_400 * 6
    );
    // Graph forgot it (subscriptionRemoved, or expired): renewing creates a new one
    fake.graph.lock().unwrap().clear();
    fake.records
        .lock()
        .unwrap()
        .get_mut("help")
        .unwrap()
        .expires_at = chrono::Utc::now().timestamp() + 3600;
    let report = run().await.unwrap();
    assert_eq!((report.created, report.failed), (1, 0));
    assert_eq!(fake.records.lock().unwrap()["help"].id, "sub-2");
    // the mailbox is removed: its subscription is deleted in Graph and in the table
    let _removed = w.state.configs.lock().unwrap().remove(0);
    let report = run().await.unwrap();
    assert_eq!(report.deleted, 1);
    assert!(fake.records.lock().unwrap().is_empty());
    assert!(fake.graph.lock().unwrap().is_empty());
}
