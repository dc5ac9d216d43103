//! The mails of one mailbox's run, a window at a time: which mails form a window (in order, within
//! the memory budget, a large mail or a suspect alone), reading a window (named as the mail in
//! flight first), and the pipeline that reads the next window while the tickets of the one before
//! are posted. A mail an earlier run died reading is parked here, unread.

use std::collections::HashMap;
use std::sync::Arc;

use mailbridge::imap::{ListedMessage, Uid};
use mailbridge::mailbox::MailboxConfig;
use mailbridge::state_table::{InFlightMail, MailboxOutcome, MailboxStatus};
use mailbridge::ticket_sink::{TicketSink, TicketSinkError};
use tokio::sync::SemaphorePermit;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::PollDeps;
use super::after_actions::{PostOutcome, settle_window};
use super::delivery::{PostGate, deliver_window};
use super::mailbox_run::Stop;
use super::payload::{MailContext, Prepared, prepare};
use crate::ports::Mailbox;

/// Mails read and delivered together: one in-flight mark, one dedupe lookup, one dedupe write
/// (per 25) and one after-action command per folder for the whole window.
const WINDOW_MAILS: usize = 32;

#[allow(clippy::too_many_arguments)]
pub(super) async fn work_on(
    deps: &PollDeps,
    config: &MailboxConfig,
    deadline: Instant,
    mailbox: &mut dyn Mailbox,
    status: &mut MailboxStatus,
    sink: &dyn TicketSink,
    (uid_validity, lease, interrupted): (u32, &str, Option<InFlightMail>),
    retry_last: Vec<Uid>,
    mut uids: Vec<Uid>,
) -> Result<(), Stop> {
    // A mail an earlier run was reading when it died (out of memory, a panic outside the
    // parser's guard, the timeout) is not read again: it could end this run the same way, for
    // every mailbox, run after run. It goes to the failed folder unread, with the reason logged.
    // A window of small mails is read again one mail at a time (each named alone), so that
    // the one that ends a run is known the next time.
    let mut one_by_one: Vec<Uid> = Vec::new();
    if let Some(killer) = interrupted
        && killer.uid_validity == uid_validity
    {
        if !killer.is_one_mail() {
            one_by_one = uids
                .iter()
                .copied()
                .filter(|u| (killer.uid..=killer.last_uid).contains(u))
                .collect();
            tracing::warn!(
                mailbox = %config.name,
                first_uid = killer.uid,
                last_uid = killer.last_uid,
                "a run ended while reading this window of mails: they are read one by one this time"
            );
        } else if let Some(at) = uids.iter().position(|u| *u == killer.uid) {
            uids.remove(at);
            mailbox
                .move_to(killer.uid, &config.failed_folder)
                .await
                .map_err(Stop::Mailbox)?;
            status.parked += 1;
            tracing::error!(
                mailbox = %config.name,
                uid = killer.uid,
                folder = %config.failed_folder,
                "a run ended while reading this mail (out of memory, a crash or the timeout): parked unread in the failed folder, no ticket made, so it cannot end every run"
            );
            if uids.is_empty() {
                return Ok(());
            }
        }
    }
    let total = uids.len();
    // Stable: UID order otherwise. Before the cut, so a small max_messages_per_run cannot
    // keep picking the same failing mail.
    uids.sort_by_key(|uid| retry_last.contains(uid));
    uids.truncate(config.max_messages_per_run as usize);
    let beyond_limit = (total - uids.len()) as u32;
    let mut listed = mailbox.list_messages(&uids).await.map_err(Stop::Mailbox)?;
    listed.sort_by_key(|m| retry_last.contains(&m.uid)); // listed in UID order
    let stop_starting_at = deadline
        .checked_sub(deps.deadline_margin)
        .unwrap_or_else(Instant::now);
    // The POST may use most of the margin, leaving time for the after-action.
    let post_deadline = deadline
        .checked_sub(deps.deadline_margin / 3)
        .unwrap_or_else(Instant::now);
    let limit = config
        .max_message_bytes
        .min(deps.memory.max_message_bytes());
    // A ticket API failure on one mail may be that mail's own (a payload the API always answers
    // 5xx or times out on): the next mail is tried. A second failure in a row means the API
    // itself is failing: stop, the rest waits for the next run.
    let mut left_in_place: Option<TicketSinkError> = None;
    let gate = PostGate::new();
    // Mail left for the next run when stopping at `index`: this one and the rest of the list,
    // those beyond max_messages_per_run, and those the ticket API did not take so far.
    let deferred_from = |index: usize, status: &MailboxStatus| {
        (listed.len() - index) as u32 + beyond_limit + status.retry_last_uids.len() as u32
    };
    // The pipeline: while one window's tickets are posted, the next window is read (fetched and
    // parsed) on the connection; then the first is settled (its after-actions) and the next one
    // posted. Two windows at most, both within the memory budget.
    let mut index = 0;
    let mut in_hand: Option<(ReadWindow<'_>, usize)> = None;
    loop {
        let deadline_near = Instant::now() >= stop_starting_at;
        let next = if index < listed.len() && !deadline_near {
            next_window(
                deps,
                &listed[index..],
                limit,
                &one_by_one,
                in_hand.is_none(),
            )
            .await
        } else {
            None
        };
        if in_hand.is_none() && next.is_none() {
            if index < listed.len() {
                status.deferred = deferred_from(index, status);
                status.outcome = MailboxOutcome::Partial;
                status.reason = Some(deadline_reason(&left_in_place, status));
                return Ok(());
            }
            break;
        }
        let next_first = index;
        index += next.as_ref().map_or(0, Vec::len);
        let step_started = Instant::now();
        let next_mails = next.as_ref().map_or(0, Vec::len);
        let ((read_next, read_took), (delivered, deliver_took)) = tokio::join!(
            async {
                let read = match next {
                    Some(window) => Some(
                        read_window(deps, config, mailbox, (uid_validity, lease), window, limit)
                            .await,
                    ),
                    None => None,
                };
                (read, step_started.elapsed())
            },
            async {
                let delivered = match &in_hand {
                    Some((read, _)) => Some(
                        deliver_window(
                            deps,
                            config,
                            (sink, &gate),
                            uid_validity,
                            &read.mails,
                            (stop_starting_at, post_deadline),
                        )
                        .await,
                    ),
                    None => None,
                };
                (delivered, step_started.elapsed())
            }
        );
        let settle_started = Instant::now();
        if let (Some((read, first)), Some(delivered)) = (in_hand.take(), delivered) {
            let outcomes = match delivered {
                Ok(delivered) => {
                    settle_window(config, mailbox, status, &read.mails, delivered).await
                }
                Err(stop) => Err(stop),
            }
            .inspect_err(|_| status.deferred = deferred_from(first, status))?;
            drop(read);
            // In the order of arrival: what the ticket API made of each mail.
            let (mut not_started, mut not_tried) = (0, 0);
            for (uid, outcome) in outcomes {
                match outcome {
                    PostOutcome::Accepted => {}
                    PostOutcome::NotStarted => not_started += 1,
                    PostOutcome::NotTried => not_tried += 1,
                    PostOutcome::HeldBack => status.retry_last_uids.push(uid),
                    PostOutcome::Failed(e) => {
                        status.retry_last_uids.push(uid);
                        tracing::warn!(
                            mailbox = %config.name,
                            uid,
                            reason = %e,
                            "ticket API did not take this mail; left in place, trying the next one (it goes after the others next run)"
                        );
                        left_in_place = Some(e);
                    }
                }
            }
            // Left for the next run when stopping here: the window read ahead and the rest.
            let rest = deferred_from(next_first, status) + not_started + not_tried;
            if gate.api_failing() {
                status.deferred = rest;
                return Err(Stop::TicketApi(
                    left_in_place.expect("a failure was recorded"),
                ));
            }
            if not_started > 0 {
                status.deferred = rest;
                status.outcome = MailboxOutcome::Partial;
                status.reason = Some(deadline_reason(&left_in_place, status));
                return Ok(());
            }
        }
        tracing::debug!(
            mailbox = %config.name,
            read_mails = next_mails,
            read_ms = read_took.as_millis() as u64,
            deliver_ms = deliver_took.as_millis() as u64,
            settle_ms = settle_started.elapsed().as_millis() as u64,
            "a window read while the one before was posted and settled"
        );
        match read_next {
            Some(Ok(read)) => in_hand = Some((read, next_first)),
            Some(Err(stop)) => {
                status.deferred = deferred_from(next_first, status);
                return Err(stop);
            }
            None => {}
        }
    }
    status.deferred = beyond_limit + status.retry_last_uids.len() as u32;
    if let Some(e) = left_in_place {
        return Err(Stop::TicketApi(e));
    }
    if beyond_limit > 0 {
        status.outcome = MailboxOutcome::Partial;
        status.reason = Some(format!(
            "max_messages_per_run ({}) reached; the rest waits for the next run",
            config.max_messages_per_run
        ));
    }
    Ok(())
}

/// A mail of the window, read.
pub(super) struct ReadMail {
    pub(super) uid: Uid,
    pub(super) prepared: Prepared,
}

/// The next window: mails in order while they are small, not to be read one by one, and fit
/// the memory budget beside each other. Its first mail waits for its share when `may_wait`
/// (nothing else of this mailbox holds memory); otherwise None when it does not fit now.
async fn next_window<'b>(
    deps: &'b PollDeps,
    listed: &[ListedMessage],
    limit: u64,
    one_by_one: &[Uid],
    may_wait: bool,
) -> Option<Vec<(ListedMessage, SemaphorePermit<'b>)>> {
    let mut window: Vec<(ListedMessage, SemaphorePermit<'b>)> = Vec::new();
    for message in listed {
        let size = u64::from(message.size);
        let reads = if size > limit { 0 } else { size };
        let alone =
            size <= limit && deps.memory.reads_alone(size) || one_by_one.contains(&message.uid);
        if window.is_empty() {
            let share = if may_wait {
                deps.memory.reserve(reads).await
            } else {
                deps.memory.try_reserve(reads)?
            };
            window.push((*message, share));
            if alone {
                break;
            }
            continue;
        }
        if alone || window.len() >= WINDOW_MAILS {
            break;
        }
        match deps.memory.try_reserve(reads) {
            Some(share) => window.push((*message, share)),
            None => break,
        }
    }
    (!window.is_empty()).then_some(window)
}

/// A window read: its mails (those that vanished left out) and their memory shares, kept until
/// the window is settled (the payloads live until then).
struct ReadWindow<'b> {
    mails: Vec<ReadMail>,
    _shares: Vec<SemaphorePermit<'b>>,
}

/// Read a window: name it as the mail in flight, fetch its mails together and parse them.
async fn read_window<'b>(
    deps: &PollDeps,
    config: &MailboxConfig,
    mailbox: &mut dyn Mailbox,
    (uid_validity, lease): (u32, &str),
    window: Vec<(ListedMessage, SemaphorePermit<'b>)>,
    limit: u64,
) -> Result<ReadWindow<'b>, Stop> {
    let (Some((first, _)), Some((last, _))) = (window.first(), window.last()) else {
        return Ok(ReadWindow {
            mails: Vec::new(),
            _shares: Vec::new(),
        });
    };
    // Its name in the state table before any byte is read: a run that dies reading it leaves
    // the name for the next run.
    deps.state
        .mark_in_flight(
            &config.name,
            lease,
            InFlightMail {
                uid_validity,
                uid: first.uid,
                last_uid: last.uid,
            },
        )
        .await
        .map_err(Stop::Store)?;
    // The mails read whole, fetched together (one round trip over IMAP, side by side over
    // Graph), each parsed as soon as it arrived, off the async threads (a large mail takes
    // milliseconds of CPU) and one per CPU at most: the fetch and the posts of the window
    // before go on meanwhile. Each mail's memory share is already held.
    let listed: HashMap<Uid, ListedMessage> = window
        .iter()
        .map(|(m, _)| (m.uid, *m))
        .filter(|(_, m)| u64::from(m.size) <= limit)
        .collect();
    let whole: Vec<Uid> = window
        .iter()
        .map(|(m, _)| m.uid)
        .filter(|uid| listed.contains_key(uid))
        .collect();
    let context = Arc::new(MailContext::new(config, &deps.parse));
    let listed = Arc::new(std::sync::Mutex::new(listed));
    let (to_parse, arrived) = tokio::sync::mpsc::unbounded_channel::<(Uid, Vec<u8>)>();
    let arrived = Arc::new(std::sync::Mutex::new(arrived));
    // A few long-lived parse threads rather than a thread per mail: each thread that allocates
    // keeps a malloc arena of its own, and the process's peak memory grows with them.
    let workers: Vec<JoinHandle<Vec<(Uid, ReadMail)>>> = (0..parse_threads().min(whole.len()))
        .map(|_| {
            let (context, listed, arrived) = (context.clone(), listed.clone(), arrived.clone());
            tokio::task::spawn_blocking(move || {
                let mut parsed = Vec::new();
                loop {
                    // One thread waits for the next mail at a time; the others parse.
                    let next = arrived.lock().expect("never poisoned").blocking_recv();
                    let Some((uid, raw)) = next else {
                        return parsed; // the fetch is over
                    };
                    let Some(message) = listed.lock().expect("never poisoned").remove(&uid) else {
                        continue; // not asked for, or handed over twice
                    };
                    // `raw` is dropped after this: only the payload waits for the posts.
                    let mail = read_mail(&context, message, Read::Whole(raw), limit);
                    parsed.push((uid, mail));
                }
            })
        })
        .collect();
    let fetched = mailbox.fetch_raw_each(&whole, to_parse).await;
    let mut parsed: HashMap<Uid, ReadMail> = HashMap::with_capacity(window.len());
    for worker in workers {
        parsed.extend(
            worker
                .await
                .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic())),
        );
    }
    fetched.map_err(Stop::Mailbox)?;
    // Mail over the limit: its header block.
    for (message, _) in window.iter().filter(|(m, _)| u64::from(m.size) > limit) {
        if let Some(block) = mailbox
            .fetch_header(message.uid)
            .await
            .map_err(Stop::Mailbox)?
        {
            let mail = read_mail(&context, *message, Read::HeaderBlock(block), limit);
            parsed.insert(message.uid, mail);
        }
    }
    // In the order of the window.
    let mut mails = Vec::with_capacity(window.len());
    let mut shares = Vec::with_capacity(window.len());
    for (message, share) in window {
        shares.push(share);
        match parsed.remove(&message.uid) {
            Some(mail) => mails.push(mail),
            None => vanished(config, message.uid),
        }
    }
    Ok(ReadWindow {
        mails,
        _shares: shares,
    })
}

/// A mail fetched → what is posted for it.
fn read_mail(mail: &MailContext, message: ListedMessage, read: Read, limit: u64) -> ReadMail {
    let size = u64::from(message.size);
    // INTERNALDATE, when the server gave one: the same on every attempt, so a retried POST
    // carries the same payload under the same Idempotency-Key, and a helpdesk's SLA clock starts
    // when the mail arrived, not when it was polled.
    let received_at = message.received_at.unwrap_or_else(chrono::Utc::now);
    let prepared = match read {
        // `raw` is dropped after this: only the payload waits for the window's POSTs.
        Read::Whole(raw) => prepare(mail, received_at, Some(&raw), None, (size, limit)),
        Read::HeaderBlock(block) => prepare(mail, received_at, None, Some(&block), (size, limit)),
    };
    ReadMail {
        uid: message.uid,
        prepared,
    }
}

/// Mails of a window parsed at once: one per CPU the process may use (read once: it looks
/// at the cgroup's CPU quota).
fn parse_threads() -> usize {
    static THREADS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *THREADS
        .get_or_init(|| std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get))
}

/// What a mail of a window is read from.
enum Read {
    /// The whole mail.
    Whole(Vec<u8>),
    /// The header block of a mail over the size limit.
    HeaderBlock(Vec<u8>),
}

fn deadline_reason(left_in_place: &Option<TicketSinkError>, status: &MailboxStatus) -> String {
    match left_in_place {
        None => "deadline approaching; the rest waits for the next run".into(),
        Some(e) => format!(
            "deadline approaching; the rest waits for the next run (UIDs {:?} left in place: {e})",
            status.retry_last_uids
        ),
    }
}

fn vanished(config: &MailboxConfig, uid: Uid) {
    tracing::warn!(
        mailbox = %config.name,
        uid,
        "the server returned no message for this UID (expunged meanwhile?); skipped"
    );
}
