//! Posting a read window: one dedupe lookup for the window, each sender's hourly quota (one
//! state table call per sender for the window), the ticket POSTs (conversations side by side,
//! each in the order of arrival, gated by how the ticket API is doing), and one dedupe write for
//! the tickets made.

use futures::StreamExt as _;
use mailbridge::mailbox::MailboxConfig;
use mailbridge::state_table::{DedupeRecord, StoreError};
use mailbridge::ticket_sink::{TicketPayload, TicketSink, TicketSinkError};
use tokio::time::Instant;

use super::PollDeps;
use super::after_actions::Handled;
use super::mailbox_run::Stop;
use super::windows::ReadMail;

/// Ticket POSTs of one mailbox in flight at once (each of a different conversation).
const POSTS_IN_FLIGHT: usize = 4;

/// The ticket API as one mailbox's run sees it. A run posts one ticket at a time until the API
/// accepted one, then up to [`POSTS_IN_FLIGHT`]; after two failures with no success between
/// them no further POST is started (the API itself is failing: the rest waits for the next
/// run). So an API that is down sees two POSTs per run, as when they went one by one.
pub(super) struct PostGate {
    slots: tokio::sync::Semaphore,
    opened: std::sync::atomic::AtomicBool,
    failures_in_a_row: std::sync::atomic::AtomicU32,
}

impl PostGate {
    pub(super) fn new() -> Self {
        PostGate {
            slots: tokio::sync::Semaphore::new(1),
            opened: Default::default(),
            failures_in_a_row: Default::default(),
        }
    }

    pub(super) fn api_failing(&self) -> bool {
        self.failures_in_a_row
            .load(std::sync::atomic::Ordering::SeqCst)
            >= 2
    }

    fn taken(&self) {
        self.failures_in_a_row
            .store(0, std::sync::atomic::Ordering::SeqCst);
        if !self.opened.swap(true, std::sync::atomic::Ordering::SeqCst) {
            self.slots.add_permits(POSTS_IN_FLIGHT - 1);
        }
    }

    fn failed(&self) {
        self.failures_in_a_row
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// What the delivery of a window decided, per mail (index into the window) in the order of
/// arrival; and a state table failure that stops the mailbox once the window is settled.
pub(super) type Deliveries = (Vec<(usize, Delivery)>, Option<StoreError>);

/// Deliver a read window: look its dedupe records up at once, take each sender's quota for the
/// window, post the tickets (conversations side by side, each in the order of arrival), give
/// back the quota of mails not tried, write the dedupe records at once.
pub(super) async fn deliver_window(
    deps: &PollDeps,
    config: &MailboxConfig,
    (sink, gate): (&dyn TicketSink, &PostGate),
    uid_validity: u32,
    read: &[ReadMail],
    (stop_starting_at, post_deadline): (Instant, Instant),
) -> Result<Deliveries, Stop> {
    // Machine mail that must not open a ticket is moved with the window's after-actions; the
    // rest is looked up in the dedupe records, all at once.
    let pks: Vec<String> = read
        .iter()
        .filter(|m| m.prepared.skip_auto_generated.is_none())
        .map(|m| m.prepared.key.item_key(&config.name))
        .collect();
    let known = if pks.is_empty() {
        Default::default()
    } else {
        deps.state.get_dedupes(&pks).await.map_err(Stop::Store)?
    };
    let ids: Vec<Vec<String>> = read
        .iter()
        .map(|m| {
            crate::conversation::conversation_ids(&m.prepared.payload.draft, &m.prepared.key.hash)
        })
        .collect();
    let conversations = crate::conversation::conversations(&ids);
    let quota = WindowQuota::take(deps, config, read, &known).await;
    let (known, quota) = (&known, &quota);
    // Each conversation in order; up to POSTS_IN_FLIGHT conversations at once.
    let delivered: Vec<Vec<(usize, Delivery)>> = futures::stream::iter(conversations)
        .map(|conversation| async move {
            let mut results = Vec::with_capacity(conversation.len());
            // Once a mail of the conversation is not taken, the rest of it waits with it.
            let mut blocked: Option<fn() -> Delivery> = None;
            let mut accepted_here: Vec<&str> = Vec::new();
            for i in conversation {
                let mail = &read[i];
                let delivery = if let Some(same_as_before) = blocked {
                    same_as_before()
                } else if Instant::now() >= stop_starting_at {
                    Delivery::NotStarted
                } else {
                    let pk = mail.prepared.key.item_key(&config.name);
                    let already = known.contains_key(&pk)
                        || accepted_here.contains(&mail.prepared.key.hash.as_str());
                    let _slot = gate.slots.acquire().await.expect("never closed");
                    if gate.api_failing() {
                        Delivery::NotTried
                    } else {
                        let delivery = deliver_one(
                            config,
                            sink,
                            mail,
                            already,
                            || quota.within(i),
                            post_deadline,
                        )
                        .await;
                        match &delivery {
                            Delivery::Posted { .. } | Delivery::Rejected => gate.taken(),
                            Delivery::Failed(_) => gate.failed(),
                            _ => {}
                        }
                        delivery
                    }
                };
                match &delivery {
                    Delivery::Failed(_) | Delivery::Stopped(_) | Delivery::HeldBack => {
                        blocked = Some(|| Delivery::HeldBack)
                    }
                    Delivery::NotStarted => blocked = Some(|| Delivery::NotStarted),
                    Delivery::NotTried => blocked = Some(|| Delivery::NotTried),
                    Delivery::Posted { .. } => accepted_here.push(mail.prepared.key.hash.as_str()),
                    _ => {}
                }
                results.push((i, delivery));
            }
            results
        })
        .buffer_unordered(POSTS_IN_FLIGHT)
        .collect()
        .await;
    let mut delivered: Vec<(usize, Delivery)> = delivered.into_iter().flatten().collect();
    delivered.sort_by_key(|(i, _)| *i);
    quota.give_back_unused(deps, config, &delivered).await;
    // The dedupe records of the tickets made, then the after-actions: a mail leaves the folder
    // only once its ticket was accepted and recorded.
    let now = chrono::Utc::now();
    let records: Vec<DedupeRecord> = delivered
        .iter()
        .filter_map(|(i, d)| match d {
            Delivery::Posted { ticket_id, .. } => Some((&read[*i], ticket_id)),
            _ => None,
        })
        .map(|(mail, ticket_id)| DedupeRecord {
            pk: mail.prepared.key.item_key(&config.name),
            ticket_id: ticket_id.clone(),
            message_id: mail.prepared.key.message_id.clone(),
            uid_validity,
            uid: mail.uid,
            created_at: now.to_rfc3339(),
            expires_at: now.timestamp() + deps.dedupe_ttl.as_secs() as i64,
        })
        .collect();
    let stopped = delivered
        .iter()
        .position(|(_, d)| matches!(d, Delivery::Stopped(_)))
        .and_then(
            |at| match std::mem::replace(&mut delivered[at].1, Delivery::HeldBack) {
                Delivery::Stopped(e) => Some(e),
                _ => None,
            },
        );
    if !records.is_empty() {
        deps.state
            .put_dedupes(&records)
            .await
            .map_err(Stop::Store)?;
    }
    Ok((delivered, stopped))
}

/// What became of one mail of a window before its after-action.
pub(super) enum Delivery {
    /// Machine mail that opens no ticket.
    AutoGenerated,
    /// Already ticketed (a dedupe record, or the same mail earlier in the window).
    Duplicate,
    /// Over its sender's quota.
    Held,
    /// The helpdesk refused it for good.
    Rejected,
    /// The ticket API took it.
    Posted {
        handled: Handled,
        ticket_id: Option<String>,
    },
    /// The ticket API did not take it.
    Failed(TicketSinkError),
    /// Behind a mail of its conversation that was not taken.
    HeldBack,
    /// Not started: the deadline is near (this mail and the rest of its conversation).
    NotStarted,
    /// Not started: the ticket API is failing (this mail and the rest of its conversation).
    NotTried,
    /// The state table failed (the sender quota): the mailbox stops after this window.
    Stopped(StoreError),
}

/// The sender quota and the POST of one mail (its dedupe lookup was done for the window, its
/// sender's quota taken for the window: `within_quota`).
async fn deliver_one(
    config: &MailboxConfig,
    sink: &dyn TicketSink,
    mail: &ReadMail,
    already_ticketed: bool,
    within_quota: impl FnOnce() -> Result<bool, StoreError>,
    post_deadline: Instant,
) -> Delivery {
    let (uid, prepared) = (mail.uid, &mail.prepared);
    if let Some(auto_reason) = &prepared.skip_auto_generated {
        // Moved, never deleted: an operator can still read it. No ticket, no dedupe record
        // needed: once moved it is out of the polled folder, and a crash before the move just
        // makes the next run decide the same again.
        tracing::info!(
            mailbox = %config.name,
            uid,
            message_id = prepared.key.message_id.as_deref().unwrap_or(""),
            auto_reason = %auto_reason,
            folder = %config.auto_generated_folder,
            "machine mail threads to no ticket (or is a loop): not posted, moved to the auto-generated folder"
        );
        return Delivery::AutoGenerated;
    }
    if already_ticketed {
        tracing::info!(
            mailbox = %config.name,
            uid,
            "mail already ticketed (duplicate or after-action not applied last run)"
        );
        return Delivery::Duplicate;
    }
    match within_quota() {
        Ok(true) => {}
        Ok(false) => {
            tracing::warn!(
                mailbox = %config.name,
                uid,
                sender = prepared.payload.draft.from.as_ref().map_or("", |a| a.address.as_str()),
                quota = config.max_mails_per_sender_per_hour,
                folder = %config.held_folder,
                "sender over its hourly quota (a flood or a mail loop?): held, no ticket; move it back to the polled folder to post it"
            );
            return Delivery::Held;
        }
        Err(e) => return Delivery::Stopped(e),
    }
    let receipt = match sink
        .deliver(&prepared.payload, &prepared.key.hash, post_deadline)
        .await
    {
        Ok(receipt) => receipt,
        Err(e) if e.parks_the_mail() => {
            tracing::error!(
                mailbox = %config.name,
                uid,
                reason = %e,
                folder = %config.failed_folder,
                "the helpdesk rejected the mail; parked in the failed folder"
            );
            return Delivery::Rejected;
        }
        Err(e) => return Delivery::Failed(e),
    };
    let handled = if prepared.problem {
        tracing::warn!(
            mailbox = %config.name,
            uid,
            ticket_id = receipt.ticket_id.as_deref().unwrap_or(""),
            folder = %config.failed_folder,
            "mail could not be fully read: ticket created with a note, mail parked"
        );
        Handled::Parked
    } else if receipt.replayed {
        // The helpdesk already had this mail (a crash or lost answer after it accepted it):
        // nothing new was created, so it is not counted as a new ticket.
        tracing::info!(
            mailbox = %config.name,
            uid,
            ticket_id = receipt.ticket_id.as_deref().unwrap_or(""),
            action = %receipt.action,
            "the helpdesk already had this mail; recorded, nothing new created"
        );
        Handled::Duplicate
    } else {
        tracing::info!(
            mailbox = %config.name,
            uid,
            ticket_id = receipt.ticket_id.as_deref().unwrap_or(""),
            action = %receipt.action,
            sender = receipt.sender.as_str(),
            "mail delivered to the helpdesk"
        );
        Handled::Ticketed
    };
    Delivery::Posted {
        handled,
        ticket_id: receipt.ticket_id,
    }
}

/// The window's share of each sender's hourly quota (one item per mailbox, sender and clock
/// hour), taken before its POSTs: one state table call per sender (two when only some of its
/// mails fit), senders side by side. The first mails of a sender in the order of arrival get
/// the units, the rest are over the quota. Machine mail set aside and mails already ticketed
/// need none. A unit counts a mail tried (its POST, whatever came of it): a mail counted and
/// then not delivered (the helpdesk down) counts again when it is tried again, so the quota errs
/// towards holding a flood; the units of mails not tried (the deadline, the ticket API failing,
/// behind a mail of their conversation, a copy of a mail just ticketed) are given back.
struct WindowQuota {
    /// Per mail of the window: its sender (index into `senders`) when it needs a unit.
    sender_of: Vec<Option<usize>>,
    senders: Vec<SenderShare>,
}

/// One sender's mails in a window and the units taken for them.
struct SenderShare {
    pk: String,
    /// The window's mails of this sender that need a unit, in the order of arrival.
    mails: Vec<usize>,
    /// Units taken: the first `taken` of `mails` are within the quota. A failed call leaves
    /// them all out, and the mailbox stops after the window.
    taken: Result<u32, StoreError>,
}

impl WindowQuota {
    async fn take(
        deps: &PollDeps,
        config: &MailboxConfig,
        read: &[ReadMail],
        known: &std::collections::HashMap<String, DedupeRecord>,
    ) -> WindowQuota {
        let max = config.max_mails_per_sender_per_hour;
        let mut quota = WindowQuota {
            sender_of: vec![None; read.len()],
            senders: Vec::new(),
        };
        if max == 0 {
            return quota;
        }
        let now = chrono::Utc::now();
        for (i, mail) in read.iter().enumerate() {
            if mail.prepared.skip_auto_generated.is_some()
                || known.contains_key(&mail.prepared.key.item_key(&config.name))
            {
                continue;
            }
            let pk = sender_quota_key(config, &mail.prepared.payload, now);
            let at = match quota.senders.iter().position(|s| s.pk == pk) {
                Some(at) => at,
                None => {
                    quota.senders.push(SenderShare {
                        pk,
                        mails: Vec::new(),
                        taken: Ok(0),
                    });
                    quota.senders.len() - 1
                }
            };
            quota.senders[at].mails.push(i);
            quota.sender_of[i] = Some(at);
        }
        let expires_at = now.timestamp() + 2 * 3600;
        let taken = futures::future::join_all(quota.senders.iter().map(|sender| {
            let wanted = u32::try_from(sender.mails.len()).unwrap_or(u32::MAX);
            deps.state
                .take_sender_quota(&sender.pk, wanted, max, expires_at)
        }))
        .await;
        for (sender, taken) in quota.senders.iter_mut().zip(taken) {
            sender.taken = taken;
        }
        quota
    }

    /// Whether mail `i` of the window is within its sender's quota (a mail that needs no unit
    /// is), or the state table failure that left it out.
    fn within(&self, i: usize) -> Result<bool, StoreError> {
        let Some(at) = self.sender_of[i] else {
            return Ok(true);
        };
        let sender = &self.senders[at];
        let taken = sender.taken.clone()?;
        let rank = sender
            .mails
            .iter()
            .position(|&m| m == i)
            .unwrap_or(usize::MAX);
        Ok(rank < taken as usize)
    }

    /// Give back the units of mails within the quota that were not tried (best effort: a unit
    /// not given back errs towards holding).
    async fn give_back_unused(
        &self,
        deps: &PollDeps,
        config: &MailboxConfig,
        delivered: &[(usize, Delivery)],
    ) {
        let tried = |i: &usize| {
            delivered
                .binary_search_by_key(i, |(at, _)| *at)
                .is_ok_and(|at| {
                    matches!(
                        delivered[at].1,
                        Delivery::Posted { .. } | Delivery::Rejected | Delivery::Failed(_)
                    )
                })
        };
        let unused: Vec<(&str, u32)> = self
            .senders
            .iter()
            .filter_map(|sender| {
                let taken = *sender.taken.as_ref().ok()?;
                let used = sender
                    .mails
                    .iter()
                    .take(taken as usize)
                    .filter(|i| tried(i));
                let unused = taken - used.count() as u32;
                (unused > 0).then_some((sender.pk.as_str(), unused))
            })
            .collect();
        let given_back = futures::future::join_all(
            unused
                .iter()
                .map(|(pk, units)| deps.state.give_back_sender_quota(pk, *units)),
        )
        .await;
        for ((_, units), result) in unused.iter().zip(given_back) {
            if let Err(e) = result {
                tracing::warn!(
                    mailbox = %config.name,
                    units,
                    error = %e,
                    "the sender quota of mails not tried could not be given back: they count this hour"
                );
            }
        }
    }
}

/// The quota item of a mail's sender for the clock hour of `now`: the `From` address in lower
/// case (empty without one), hashed.
fn sender_quota_key(
    config: &MailboxConfig,
    payload: &TicketPayload,
    now: chrono::DateTime<chrono::Utc>,
) -> String {
    use sha2::Digest as _;
    let sender = payload
        .draft
        .from
        .as_ref()
        .map(|a| a.address.to_ascii_lowercase())
        .unwrap_or_default();
    let hour = now.format("%Y%m%d%H");
    let sender_hash = hex::encode(&sha2::Sha256::digest(sender.as_bytes())[..16]);
    format!("mail#{}#sender#{sender_hash}#{hour}", config.name)
}
