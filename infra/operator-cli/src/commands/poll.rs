//! `mailbridge poll --dry-run [MAILBOX...]`: what the poller would turn into tickets, without
//! posting or moving anything.
//!
//! It runs poll-mailboxes' own loop ([`poll_mailboxes::poll_once`]) — same token, IMAP, size
//! check, `BODY.PEEK[]` fetch (never sets `\Seen`), parser, dedupe lookup — over dry-run
//! adapters of its ports:
//! - the ticket sink records the payload instead of delivering it, and asks the mailbox's real
//!   helpdesk adapter which call it would become (`plan`: create, or correspond / comment on
//!   which ticket; reads only);
//! - the mailbox records the after-action (move / mark seen / delete) instead of doing it;
//! - the state store reads (mailbox configs, dedupe records) but writes nothing (no dedupe
//!   records, no `mailbox-status`).
//!
//! So a mail shown as "ticket" here is exactly what the next real run would post, and one shown
//! as "duplicate" already has a ticket (the real run would only apply the after-action).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Result, bail};
use async_trait::async_trait;
use mailbridge::imap::{ListedMessage, SearchScope, SelectedFolder, Uid};
use mailbridge::mailbox::MailboxConfig;
use mailbridge::state_table::{
    DedupeRecord, GraphSyncState, GraphSyncStore, MailboxStatus, StateStore, StoreError,
};
use mailbridge::ticket_sink::{
    DeliveryPlan, SinkCheck, TicketPayload, TicketReceipt, TicketSink, TicketSinkError,
};
use poll_mailboxes::convert::ParseContext;
use poll_mailboxes::graph_adapter::{GraphConnector, ProtocolConnector};
use poll_mailboxes::imap_adapter::ImapConnector;
use poll_mailboxes::ports::{Mailbox, MailboxConnector, MailboxError, SinkFactory};
use poll_mailboxes::sinks::SecretsSinkFactory;
use poll_mailboxes::{PollDeps, poll_once};
use secrecy::SecretString;
use serde::Serialize;

use super::context::{Context, Exit, print_json, stderr_is_terminal};

/// Arguments of `mailbridge poll`.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Only --dry-run is offered: real polls are the poll-mailboxes Lambda's job.
Nothing is posted, moved, flagged or recorded; mail is read with BODY.PEEK (stays unread).")]
pub struct PollArgs {
    /// Show what would happen without posting tickets or touching mail (required).
    #[arg(long)]
    pub dry_run: bool,
    /// Mailbox names (default: every configured mailbox).
    #[arg(value_name = "MAILBOX")]
    pub mailboxes: Vec<String>,
    /// Seconds allowed for the whole preview.
    #[arg(long, default_value_t = 300, value_name = "SECONDS")]
    pub timeout: u64,
}

/// What would happen to one mail.
#[derive(Clone, Debug, Default, Serialize)]
pub struct MailPlan {
    /// IMAP UID.
    pub uid: Uid,
    /// `RFC822.SIZE`.
    pub size: Option<u32>,
    /// `ticket`, `ticket_with_problem`, `duplicate`, or `skip_auto_generated` (machine mail
    /// that threads to no ticket: set aside in the auto-generated folder, no ticket).
    pub action: String,
    /// Subject (from the draft).
    pub subject: Option<String>,
    /// From address (from the draft).
    pub from: Option<String>,
    /// Ticket number found in the mail (a reply to an existing ticket).
    pub ticket_number: Option<String>,
    /// The helpdesk call the mail would become (e.g. "correspond on ticket 12").
    pub helpdesk_call: Option<String>,
    /// Machine mail reason (auto-reply, bounce...).
    pub auto_reason: Option<mailbridge::mail::AutoReason>,
    /// Attachments in the ticket.
    pub attachments: usize,
    /// Why the ticket carries a problem note.
    pub problem: Option<String>,
    /// The after-action the real run would apply.
    pub then: Option<String>,
    /// The payload that would be POSTed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payload: Option<serde_json::Value>,
}

#[derive(Default)]
struct MailboxLog {
    current_uid: Option<Uid>,
    sizes: BTreeMap<Uid, u32>,
    mails: BTreeMap<Uid, MailPlan>,
    /// The UIDs read with each Message-ID, oldest first: the poller reads a window of mail
    /// before it posts any of it, so a payload is matched to its mail by its Message-ID, not by
    /// the mail read last.
    read_with_message_id: HashMap<Option<String>, VecDeque<Uid>>,
}

impl MailboxLog {
    /// The mail a payload was built from.
    fn uid_of(&mut self, payload: &TicketPayload) -> Option<Uid> {
        self.read_with_message_id
            .get_mut(&payload.draft.message_id)
            .and_then(VecDeque::pop_front)
            .or(self.current_uid)
    }
}

/// Per mailbox, what the dry run saw.
#[derive(Default, Clone)]
struct DryRunLog(Arc<Mutex<BTreeMap<String, MailboxLog>>>);

impl DryRunLog {
    fn with<T>(&self, mailbox: &str, f: impl FnOnce(&mut MailboxLog) -> T) -> T {
        let mut all = self.0.lock().expect("dry-run log lock");
        f(all.entry(mailbox.to_owned()).or_default())
    }
}

struct DryRunMailbox {
    inner: Box<dyn Mailbox>,
    name: String,
    /// The mailbox address (own mail for loop detection when re-parsing).
    user: String,
    /// The mailbox helpdesk's subject tags (when re-parsing).
    subject_patterns: Vec<regex::Regex>,
    auto_generated_folder: String,
    parse: ParseContext,
    log: DryRunLog,
    progress: bool,
}

impl DryRunMailbox {
    fn reading(&mut self, uid: Uid) {
        let (index, total) = self.log.with(&self.name, |l| {
            l.current_uid = Some(uid);
            let size = l.sizes.get(&uid).copied();
            l.mails.entry(uid).or_insert_with(|| MailPlan {
                uid,
                size,
                ..MailPlan::default()
            });
            (
                l.sizes.keys().position(|u| *u == uid).map_or(0, |p| p + 1),
                l.sizes.len(),
            )
        });
        if self.progress {
            if stderr_is_terminal() {
                eprint!(
                    "\r{}: reading mail {index}/{total} (UID {uid})   ",
                    self.name
                );
            } else if index == 1 || index == total || index % 50 == 0 {
                eprintln!("{}: reading mail {index}/{total}", self.name);
            }
        }
    }

    /// Note what a mail says as soon as it is read (machine mail set aside builds no payload),
    /// and its Message-ID, which matches it to its payload later.
    fn read(&mut self, uid: Uid, bytes: &[u8]) {
        let Ok(draft) = poll_mailboxes::convert::parse_draft(
            bytes,
            &self.user,
            &self.subject_patterns,
            &self.parse,
        ) else {
            return;
        };
        self.log.with(&self.name, |l| {
            l.read_with_message_id
                .entry(draft.message_id.clone())
                .or_default()
                .push_back(uid);
            let plan = l.mails.entry(uid).or_insert_with(|| MailPlan {
                uid,
                ..MailPlan::default()
            });
            if plan.subject.is_none() {
                plan.subject = Some(draft.subject);
                plan.from = draft.from.map(|a| a.address);
                plan.ticket_number = draft.ticket_number;
                plan.auto_reason = draft.auto_reason;
            }
        });
    }

    fn then(&mut self, uid: Uid, what: String) {
        let set_aside = what == format!("move to {}", self.auto_generated_folder);
        self.log.with(&self.name, |l| {
            let plan = l.mails.entry(uid).or_insert_with(|| MailPlan {
                uid,
                ..MailPlan::default()
            });
            if plan.action.is_empty() {
                // No ticket was posted: either it already has one, or it is machine mail the
                // poller sets aside unticketed.
                plan.action = if set_aside {
                    "skip_auto_generated".into()
                } else {
                    "duplicate".into()
                };
            }
            plan.then = Some(what);
        });
    }
}

#[async_trait]
impl Mailbox for DryRunMailbox {
    async fn select(&mut self, folder: &str) -> Result<SelectedFolder, MailboxError> {
        // EXAMINE would be stricter, but SELECT alone changes nothing either: only STORE,
        // MOVE, EXPUNGE and a fetch without PEEK do, and none of those reach the server here.
        self.inner.select(folder).await
    }
    async fn search(
        &mut self,
        scope: SearchScope,
        since: Option<chrono::DateTime<chrono::Utc>>,
    ) -> Result<Vec<Uid>, MailboxError> {
        self.inner.search(scope, since).await
    }
    async fn list_messages(&mut self, uids: &[Uid]) -> Result<Vec<ListedMessage>, MailboxError> {
        let listed = self.inner.list_messages(uids).await?;
        self.log.with(&self.name, |l| {
            l.sizes.extend(listed.iter().map(|m| (m.uid, m.size)));
        });
        Ok(listed)
    }
    async fn fetch_raw(&mut self, uid: Uid) -> Result<Option<Vec<u8>>, MailboxError> {
        self.reading(uid);
        let raw = self.inner.fetch_raw(uid).await?;
        if let Some(raw) = &raw {
            self.read(uid, raw);
        }
        Ok(raw)
    }
    async fn fetch_header(&mut self, uid: Uid) -> Result<Option<Vec<u8>>, MailboxError> {
        self.reading(uid);
        let header = self.inner.fetch_header(uid).await?;
        if let Some(header) = &header {
            self.read(uid, header);
        }
        Ok(header)
    }
    async fn move_to(&mut self, uid: Uid, folder: &str) -> Result<(), MailboxError> {
        self.then(uid, format!("move to {folder}"));
        Ok(())
    }
    async fn mark_seen(&mut self, uid: Uid) -> Result<(), MailboxError> {
        self.then(uid, "mark seen".into());
        Ok(())
    }
    async fn delete(&mut self, uid: Uid) -> Result<(), MailboxError> {
        self.then(uid, "delete".into());
        Ok(())
    }
    fn round_trips(&self) -> u64 {
        self.inner.round_trips()
    }
    async fn logout(self: Box<Self>) {
        if self.progress && stderr_is_terminal() {
            eprintln!();
        }
        self.inner.logout().await
    }
}

struct DryRunConnector {
    inner: Arc<dyn MailboxConnector>,
    parse: ParseContext,
    log: DryRunLog,
    progress: bool,
}

#[async_trait]
impl MailboxConnector for DryRunConnector {
    async fn connect(
        &self,
        config: &MailboxConfig,
        access_token: &SecretString,
    ) -> Result<Box<dyn Mailbox>, MailboxError> {
        let inner = self.inner.connect(config, access_token).await?;
        Ok(Box::new(DryRunMailbox {
            inner,
            name: config.name.clone(),
            user: config.user.clone(),
            subject_patterns: config.sink.subject_patterns(),
            auto_generated_folder: config.auto_generated_folder.clone(),
            parse: self.parse.clone(),
            log: self.log.clone(),
            progress: self.progress,
        }))
    }
}

/// A Graph mailbox's sync state is read, never written: a dry run leaves the next real round
/// where it was.
struct ReadOnlyGraphSync<S>(S);

#[async_trait]
impl<S: GraphSyncStore> GraphSyncStore for ReadOnlyGraphSync<S> {
    async fn get_graph_sync(&self, mailbox: &str) -> Result<Option<GraphSyncState>, StoreError> {
        self.0.get_graph_sync(mailbox).await
    }
    async fn put_graph_sync(
        &self,
        _mailbox: &str,
        _state: &GraphSyncState,
    ) -> Result<(), StoreError> {
        Ok(())
    }
}

/// Reads pass through; writes are dropped.
struct ReadOnlyState<S>(S);

#[async_trait]
impl<S: StateStore> StateStore for ReadOnlyState<S> {
    async fn acquire_mailbox_lease(
        &self,
        _mailbox: &str,
        _until: i64,
    ) -> Result<mailbridge::state_table::MailboxLease, StoreError> {
        // A dry run changes nothing, so it needs no lease and never holds up a real run.
        Ok(mailbridge::state_table::MailboxLease::Acquired {
            token: "dry-run".into(),
            interrupted: None,
        })
    }
    async fn release_mailbox_lease(&self, _mailbox: &str, _token: &str) -> Result<(), StoreError> {
        Ok(())
    }
    async fn mark_in_flight(
        &self,
        _mailbox: &str,
        _token: &str,
        _mail: mailbridge::state_table::InFlightMail,
    ) -> Result<(), StoreError> {
        Ok(())
    }
    async fn get_dedupe(&self, pk: &str) -> Result<Option<DedupeRecord>, StoreError> {
        self.0.get_dedupe(pk).await
    }
    async fn put_dedupe(&self, _record: &DedupeRecord) -> Result<(), StoreError> {
        Ok(())
    }
    async fn take_sender_quota(
        &self,
        _pk: &str,
        wanted: u32,
        _max: u32,
        _expires_at: i64,
    ) -> Result<u32, StoreError> {
        // Counts nothing: a dry run shows every mail as it would go within the quota.
        Ok(wanted)
    }
    async fn give_back_sender_quota(&self, _pk: &str, _units: u32) -> Result<(), StoreError> {
        Ok(())
    }
    async fn get_status(&self, mailbox: &str) -> Result<Option<MailboxStatus>, StoreError> {
        self.0.get_status(mailbox).await
    }
    async fn put_status(&self, _status: &MailboxStatus) -> Result<(), StoreError> {
        Ok(())
    }
    async fn load_mailboxes(
        &self,
        names: Option<&[String]>,
    ) -> Result<Vec<Result<MailboxConfig, mailbridge::mailbox::ConfigError>>, StoreError> {
        self.0.load_mailboxes(names).await
    }
}

/// Records what would be delivered, and which helpdesk call it would become.
struct RecordingSink {
    log: DryRunLog,
    /// The mailbox's real adapter, asked only for its plan (reads, never writes).
    real: Arc<dyn TicketSink>,
}

#[async_trait]
impl TicketSink for RecordingSink {
    async fn plan(
        &self,
        payload: &TicketPayload,
        deadline: tokio::time::Instant,
    ) -> Result<DeliveryPlan, TicketSinkError> {
        self.real.plan(payload, deadline).await
    }

    async fn check(&self, deadline: tokio::time::Instant) -> Result<SinkCheck, TicketSinkError> {
        self.real.check(deadline).await
    }

    async fn deliver(
        &self,
        payload: &TicketPayload,
        _idempotency_key: &str,
        deadline: tokio::time::Instant,
    ) -> Result<TicketReceipt, TicketSinkError> {
        let json =
            serde_json::to_value(payload).map_err(|e| TicketSinkError::Encode(e.to_string()))?;
        let call = match self.real.plan(payload, deadline).await {
            Ok(plan) => plan.to_string(),
            Err(e) => format!("unknown: {e}"),
        };
        self.log.with(&payload.mailbox, |l| {
            let Some(uid) = l.uid_of(payload) else { return };
            let plan = l.mails.entry(uid).or_default();
            plan.uid = uid;
            plan.action = if payload.problem.is_some() {
                "ticket_with_problem".into()
            } else {
                "ticket".into()
            };
            plan.subject = Some(payload.draft.subject.clone());
            plan.from = payload.draft.from.as_ref().map(|a| a.address.clone());
            // the signed number, else the subject's (the sink threads on either)
            plan.ticket_number = payload.named_ticket().map(str::to_string);
            plan.auto_reason = payload.draft.auto_reason.clone();
            plan.helpdesk_call = Some(call);
            plan.attachments = payload.attachments.len();
            plan.problem = payload.problem.clone();
            plan.payload = Some(json);
        });
        Ok(TicketReceipt {
            action: DeliveryPlan::NewTicket { queue: None },
            ticket_id: None,
            attempts: 0,
            replayed: false,
            sender: mailbridge::ticket_sink::SenderCheck::NotChecked,
        })
    }
}

struct RecordingSinks {
    log: DryRunLog,
    real: SecretsSinkFactory,
}

#[async_trait]
impl SinkFactory for RecordingSinks {
    async fn sink_for(&self, config: &MailboxConfig) -> Result<Arc<dyn TicketSink>, String> {
        Ok(Arc::new(RecordingSink {
            log: self.log.clone(),
            real: self.real.sink_for(config).await?,
        }))
    }
}

/// One mailbox's preview.
#[derive(Clone, Debug, Serialize)]
pub struct MailboxPreview {
    /// Mailbox name.
    pub mailbox: String,
    /// How the run went (`ok`, `partial`, `failed`, `needs_reauth`, `config_error`, `disabled`).
    pub outcome: mailbridge::state_table::MailboxOutcome,
    /// Why, when not ok.
    pub reason: Option<String>,
    /// Mails that would become tickets.
    pub would_create: usize,
    /// Mails already ticketed.
    pub duplicates: usize,
    /// Left for a later run (max_messages_per_run / time).
    pub deferred: u32,
    /// The mails.
    pub mails: Vec<MailPlan>,
}

/// Run `mailbridge poll --dry-run`.
pub async fn run(ctx: &Context, args: PollArgs) -> Result<Exit> {
    if !args.dry_run {
        bail!(
            "only `mailbridge poll --dry-run` is offered; real polls run in the poll-mailboxes Lambda (invoke it with a manual event to poll now)"
        );
    }
    let state = ctx.state_store().await?;
    let log = DryRunLog::default();
    let tokens = ctx.token_service().await?.clone();
    let graph_url = ctx
        .global
        .graph_url
        .clone()
        .filter(|u| !u.trim().is_empty())
        .unwrap_or_else(|| mailbridge::graph::DEFAULT_GRAPH_URL.to_owned());
    let connector = ProtocolConnector {
        imap: Arc::new(ImapConnector::new(
            ctx.global.imap_ca_file.as_deref(),
            Duration::from_secs(30),
        )?),
        graph: Arc::new(GraphConnector::new(
            mailbridge::http::default_client()?,
            graph_url.trim_end_matches('/'),
            Arc::new(ReadOnlyGraphSync(ctx.state_store().await?)),
            Duration::from_secs(30),
        )),
    };
    let thread_key = ctx.thread_key().await?;
    let deps = PollDeps {
        tokens: Arc::new(tokens),
        connector: Arc::new(DryRunConnector {
            inner: Arc::new(connector),
            parse: ParseContext {
                thread_key: thread_key.clone(),
            },
            log: log.clone(),
            progress: true,
        }),
        state: Arc::new(ReadOnlyState(state)),
        sinks: Arc::new(RecordingSinks {
            log: log.clone(),
            real: ctx.sink_factory().await?,
        }),
        parse: ParseContext { thread_key },
        max_concurrent_mailboxes: 4,
        deadline_margin: Duration::from_secs(5),
        dedupe_ttl: Duration::from_secs(86_400),
        targets: ctx.targets()?,
        memory: Arc::new(poll_mailboxes::memory::MemoryBudget::unlimited()),
    };
    let names = (!args.mailboxes.is_empty()).then_some(args.mailboxes.as_slice());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(args.timeout.max(10));
    let report = poll_once(&deps, names, deadline).await?;
    let mut previews = Vec::new();
    for status in &report.mailboxes {
        let mails: Vec<MailPlan> = log.with(&status.mailbox, |l| {
            l.mails
                .values()
                .filter(|m| !m.action.is_empty())
                .cloned()
                .collect()
        });
        previews.push(MailboxPreview {
            mailbox: status.mailbox.clone(),
            outcome: status.outcome,
            reason: status.reason.clone(),
            would_create: mails
                .iter()
                .filter(|m| m.action.starts_with("ticket"))
                .count(),
            duplicates: mails.iter().filter(|m| m.action == "duplicate").count(),
            deferred: status.deferred,
            mails,
        });
    }
    let failed = previews.iter().any(|p| {
        matches!(
            p.outcome.as_str(),
            "failed" | "needs_reauth" | "config_error"
        )
    });
    if ctx.json() {
        print_json(&serde_json::json!({ "dry_run": true, "mailboxes": previews }));
    } else {
        print_human(&previews);
    }
    Ok(if failed { Exit::Problems } else { Exit::Ok })
}

fn print_human(previews: &[MailboxPreview]) {
    if previews.is_empty() {
        println!("no mailboxes configured");
    }
    for p in previews {
        let mark = match p.outcome.as_str() {
            "ok" => "✓",
            "partial" | "disabled" => "~",
            _ => "✗",
        };
        println!(
            "{mark} mailbox {} — {}: {} ticket(s) would be created, {} already ticketed{}",
            p.mailbox,
            p.outcome,
            p.would_create,
            p.duplicates,
            if p.deferred > 0 {
                format!(", {} left for a later run", p.deferred)
            } else {
                String::new()
            }
        );
        if let Some(reason) = &p.reason {
            println!("    reason: {reason}");
        }
        for m in &p.mails {
            let what = match m.action.as_str() {
                "ticket" => "new ticket".to_owned(),
                "ticket_with_problem" => "ticket with a problem note".to_owned(),
                "duplicate" => "already ticketed".to_owned(),
                "skip_auto_generated" => {
                    "no ticket (machine mail threading to no ticket)".to_owned()
                }
                other => other.to_owned(),
            };
            let reply = match (&m.helpdesk_call, &m.ticket_number) {
                (Some(call), _) => format!(" [helpdesk: {call}]"),
                (None, Some(t)) => format!(" [reply to ticket {t}]"),
                (None, None) => String::new(),
            };
            let auto = m
                .auto_reason
                .as_ref()
                .map(|a| format!(" [machine mail: {a}]"))
                .unwrap_or_default();
            println!(
                "    UID {}: {what} — {:?} from {}{reply}{auto}{}; then: {}",
                m.uid,
                m.subject.as_deref().unwrap_or(""),
                m.from.as_deref().unwrap_or("?"),
                if m.attachments > 0 {
                    format!(", {} attachment(s)", m.attachments)
                } else {
                    String::new()
                },
                m.then.as_deref().unwrap_or("nothing")
            );
            if let Some(problem) = &m.problem {
                println!("        note: {problem}");
            }
        }
    }
    println!("(dry run: nothing was posted, moved, flagged or recorded)");
}
