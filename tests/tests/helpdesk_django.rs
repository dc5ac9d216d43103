//! The django-helpdesk ticket sink against a real django-helpdesk (PyPI, REST API on, SQLite) on
//! 127.0.0.1, started per test by the local stack (`local_stack::django_helpdesk`), through the
//! real poller (Dovecot with XOAUTH2, the state table in moto). Every assertion is on what the
//! helpdesk itself shows through its API.

use std::sync::Arc;
use std::time::Duration;

use local_stack::django_helpdesk::{DjangoHelpdesk, NON_STAFF_USER};
use local_stack::http_fault_proxy::{HttpFault, HttpFaultProxy};
use mailbridge::retry::RetryPolicy;
use mailbridge::state_table::MailboxStatus;
use mailbridge::ticket_sink::{
    DeliveryPlan, SenderCheck, SinkConfig, TICKET_PAYLOAD_SCHEMA, TicketPayload, TicketSink,
    TicketSinkError,
};
use mailbridge_tests::mail::customer_mail_with_attachments;
use mailbridge_tests::poller::ImapPoller;
use mailbridge_tests::{init_tracing, new_password_account, put_secret, stack, unique};
use poll_mailboxes::PollDeps;
use serde_json::{Value, json};
use tokio::time::Instant;

const PASSWORD: &str = "correct horse battery staple";

async fn helpdesk(label: &str) -> DjangoHelpdesk {
    init_tracing();
    let dir = local_stack::default_run_dir(label).expect("run folder");
    DjangoHelpdesk::start(&dir).await.unwrap_or_else(|e| {
        panic!("django-helpdesk did not start: {e:#}");
    })
}

fn fast_retry() -> RetryPolicy {
    RetryPolicy {
        initial_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(200),
        max_attempts: 3,
        attempt_timeout: Duration::from_secs(20),
    }
}

/// One mailbox on the shared Dovecot whose sink is a django-helpdesk, and the poller around it.
struct World {
    hd: DjangoHelpdesk,
    user: String,
    table: String,
    secret: String,
    deps: PollDeps,
}

impl World {
    /// A mailbox `helpdesk` on a fresh helpdesk, with `sink` fields over the defaults (queue
    /// support, the staff token).
    async fn new(label: &str, sink: Value) -> World {
        let hd = helpdesk(label).await;
        let secret = hd.token_secret_json();
        Self::with_helpdesk(hd, sink, &secret).await
    }

    /// The mailbox on `hd`, its sink's secret holding `secret_json`.
    async fn with_helpdesk(hd: DjangoHelpdesk, sink: Value, secret_json: &str) -> World {
        let table = mailbridge_tests::create_state_table("hd").await.unwrap();
        let deps = ImapPoller {
            table: &table,
            thread_key: b"helpdesk-django-thread-key",
            max_concurrent_mailboxes: 4,
            sink_retry: fast_retry(),
        }
        .deps();
        // the mailbox's IMAP account
        let account = new_password_account("hd", PASSWORD).await.unwrap();
        let user = account.upn.clone();
        let account = account.account().to_owned();
        // the helpdesk credentials
        let secret = unique("hd-api");
        put_secret(&secret, secret_json).await.unwrap();
        let world = World {
            hd,
            user,
            table,
            secret,
            deps,
        };
        let mut sink_fields = json!({
            "kind": "django-helpdesk",
            "url": world.hd.api_url,
            "secret": world.secret,
            "queue": "support",
            "queue_id": 1,
        });
        for (k, v) in sink.as_object().unwrap() {
            sink_fields[k] = v.clone();
        }
        mailbridge_tests::poller::put_stack_mailbox(
            &world.table,
            "helpdesk",
            &world.user,
            &account,
            json!({
                "sink": sink_fields,
                // the benchmark's 200 mails (from one sender) in one run
                "max_messages_per_run": 1000,
                "max_mails_per_sender_per_hour": 0,
            }),
        )
        .await;
        world
    }

    fn deliver(&self, raw: &[u8]) {
        stack()
            .dovecot()
            .deliver_to(&self.user, "INBOX", raw)
            .unwrap();
    }

    fn count(&self, folder: &str) -> usize {
        stack()
            .dovecot()
            .list_messages(&self.user, folder)
            .map(|m| m.len())
            .unwrap_or(0)
    }

    async fn poll(&self) -> poll_mailboxes::PollReport {
        poll_mailboxes::poll_once(&self.deps, None, Instant::now() + Duration::from_secs(90))
            .await
            .unwrap()
    }

    async fn tickets(&self) -> Vec<Value> {
        self.hd.tickets().await.unwrap()
    }

    async fn ticket(&self, id: u64) -> Value {
        self.hd.ticket(id).await.unwrap()
    }
}

fn status(report: &poll_mailboxes::PollReport) -> &MailboxStatus {
    report
        .mailboxes
        .iter()
        .find(|s| s.mailbox == "helpdesk")
        .unwrap_or_else(|| panic!("no status for the mailbox: {report:?}"))
}

/// A mail from Ann to the support mailbox with a text body and `attachments` (name, content
/// type, bytes).
fn mail_to_support(
    id: &str,
    subject: &str,
    body: &str,
    attachments: &[(&str, &str, &[u8])],
) -> Vec<u8> {
    customer_mail_with_attachments("support@example.com", id, subject, body, attachments)
}

/// Every follow-up attachment of a ticket: (filename, mime type, bytes), by name.
async fn attachments(hd: &DjangoHelpdesk, ticket: &Value) -> Vec<(String, String, Vec<u8>)> {
    let mut files = Vec::new();
    for followup in ticket["followup_set"].as_array().unwrap() {
        for a in followup["followupattachment_set"].as_array().unwrap() {
            let bytes = hd.file_bytes(a["file"].as_str().unwrap()).await.unwrap();
            files.push((
                a["filename"].as_str().unwrap().to_string(),
                a["mime_type"].as_str().unwrap().to_string(),
                bytes,
            ));
        }
    }
    files.sort();
    files
}

const PDF: &[u8] = b"%PDF-1.4\n1 0 obj <<>> endobj\ntrailer <<>>\n%%EOF\n";
const PNG: &[u8] = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x06\x00\x00\x00\x1f\x15\xc4\x89";

#[tokio::test]
async fn a_new_mail_opens_a_ticket_with_requestor_text_and_every_attachment() {
    let w = World::new("hd-new", json!({"priority": 2})).await;
    w.deliver(&mail_to_support(
        "new-1",
        "Printer on fire",
        "The printer on floor 2 is on fire.\r\nTemplates stay: {{ name }} {% if %} {# x #}",
        &[
            ("report.pdf", "application/pdf", PDF),
            ("photo.png", "image/png", PNG),
        ],
    ));
    let report = w.poll().await;
    assert_eq!(
        status(&report).outcome,
        mailbridge::state_table::MailboxOutcome::Ok,
        "{report:?}"
    );
    assert_eq!(report.tickets_created, 1);
    assert_eq!(w.count("INBOX"), 0);
    assert_eq!(w.count("Processed"), 1);

    let tickets = w.tickets().await;
    assert_eq!(tickets.len(), 1);
    let ticket = w.ticket(tickets[0]["id"].as_u64().unwrap()).await;
    assert_eq!(ticket["queue"], 1);
    assert_eq!(ticket["title"], "Printer on fire");
    assert_eq!(ticket["submitter_email"], "ann@customer.example");
    assert_eq!(ticket["priority"], 2);
    let description = ticket["description"].as_str().unwrap();
    assert!(
        description.contains("The printer on floor 2 is on fire.")
            && description.contains("{{ name }} {% if %} {# x #}"),
        "{description}"
    );
    assert_eq!(
        ticket["custom_mailbridge_key"].as_str().map(str::len),
        Some(64),
        "the idempotency key is kept on the ticket: {ticket}"
    );
    let files = attachments(&w.hd, &ticket).await;
    assert_eq!(
        files,
        vec![
            ("photo.png".into(), "image/png".into(), PNG.to_vec()),
            ("report.pdf".into(), "application/pdf".into(), PDF.to_vec()),
        ]
    );
    // the helpdesk acknowledged the ticket to the requestor, with its subject tag
    let sent = w.hd.sent_mail().join("\n");
    assert!(sent.contains("ann@customer.example"), "{sent}");
    assert!(sent.contains("[support-1]"), "{sent}");
}

#[tokio::test]
async fn a_reply_with_the_subject_tag_is_a_follow_up_on_the_same_ticket() {
    let w = World::new("hd-reply", json!({})).await;
    w.deliver(&mail_to_support(
        "first",
        "VPN down",
        "The VPN is down.",
        &[],
    ));
    assert_eq!(w.poll().await.tickets_created, 1);
    let id = w.tickets().await[0]["id"].as_u64().unwrap();

    // the customer answers the helpdesk's acknowledgement: [support-<id>] in the subject
    w.deliver(&mail_to_support(
        "second",
        &format!("Re: [support-{id}] VPN down"),
        "Still down, see the log. {{ not a template }} 100%}\r\n\r\nOn Sat, someone wrote:\r\n> The VPN is down.",
        &[("vpn.txt", "text/plain", b"log line 1\nlog line 2\n")],
    ));
    let report = w.poll().await;
    assert_eq!(
        status(&report).outcome,
        mailbridge::state_table::MailboxOutcome::Ok,
        "{report:?}"
    );
    let tickets = w.tickets().await;
    assert_eq!(tickets.len(), 1, "a reply must not open a ticket");
    let ticket = w.ticket(id).await;
    assert_eq!(
        ticket["title"], "VPN down",
        "a follow-up must not rename the ticket"
    );
    let followups = ticket["followup_set"].as_array().unwrap();
    assert_eq!(followups.len(), 2, "{ticket}");
    let reply = &followups[1];
    assert_eq!(reply["public"], true);
    let comment = reply["comment"].as_str().unwrap();
    assert!(
        comment.contains("Ann Example <ann@customer.example> wrote:")
            && comment.contains("Still down, see the log. {{ not a template }} 100%}"),
        "the reply's text is stored as written: {comment}"
    );
    assert!(
        !comment.contains("> The VPN is down."),
        "quoted history is left out: {comment}"
    );
    let files = attachments(&w.hd, &ticket).await;
    assert_eq!(
        files,
        vec![(
            "vpn.txt".into(),
            "text/plain".into(),
            b"log line 1\nlog line 2\n".to_vec()
        )]
    );
}

#[tokio::test]
async fn a_reply_to_a_ticket_that_does_not_exist_opens_a_new_ticket() {
    let w = World::new("hd-missing", json!({})).await;
    w.deliver(&mail_to_support(
        "lost",
        "Re: [support-77] old thing",
        "Is this still open?",
        &[],
    ));
    let report = w.poll().await;
    assert_eq!(
        status(&report).outcome,
        mailbridge::state_table::MailboxOutcome::Ok,
        "{report:?}"
    );
    let tickets = w.tickets().await;
    assert_eq!(tickets.len(), 1);
    assert_eq!(tickets[0]["title"], "Re: [support-77] old thing");
}

#[tokio::test]
async fn a_reply_to_a_closed_ticket_reopens_it_and_machine_mail_is_an_internal_note() {
    let w = World::new("hd-machine", json!({})).await;
    w.deliver(&mail_to_support(
        "open",
        "Order 1234",
        "Where is my order?",
        &[],
    ));
    assert_eq!(w.poll().await.tickets_created, 1);
    let id = w.tickets().await[0]["id"].as_u64().unwrap();
    w.hd.patch_ticket(id, json!({"status": 4})).await.unwrap();

    let auto_reply = format!(
        "From: Ann Example <ann@customer.example>\r\nTo: support@example.com\r\n\
         Subject: Automatic reply: [support-{id}] Order 1234\r\nAuto-Submitted: auto-replied\r\n\
         Message-ID: <ooo@customer.example>\r\nContent-Type: text/plain\r\n\r\nI am out of office.\r\n"
    );
    w.deliver(auto_reply.as_bytes());
    let report = w.poll().await;
    assert_eq!(
        status(&report).outcome,
        mailbridge::state_table::MailboxOutcome::Ok,
        "{report:?}"
    );
    let ticket = w.ticket(id).await;
    assert_eq!(
        ticket["status"], 4,
        "an auto-reply does not reopen: {ticket}"
    );
    let note = &ticket["followup_set"].as_array().unwrap()[1];
    assert_eq!(
        note["public"], false,
        "machine mail is an internal comment: {note}"
    );
    assert!(
        note["comment"]
            .as_str()
            .unwrap()
            .contains("I am out of office.")
    );

    w.deliver(&mail_to_support(
        "again",
        &format!("Re: [support-{id}] Order 1234"),
        "It never came.",
        &[],
    ));
    w.poll().await;
    let ticket = w.ticket(id).await;
    assert_eq!(
        ticket["status"], 2,
        "a person's reply reopens a closed ticket: {ticket}"
    );
    assert_eq!(w.tickets().await.len(), 1);

    // unthreaded machine mail never reaches the helpdesk
    let bounce_like = "From: MAILER-DAEMON@example.net\r\nTo: support@example.com\r\nSubject: Undelivered Mail\r\n\
         Auto-Submitted: auto-replied\r\nMessage-ID: <md@example.net>\r\nContent-Type: text/plain\r\n\r\nx\r\n";
    w.deliver(bounce_like.as_bytes());
    let report = w.poll().await;
    assert_eq!(report.skipped_auto_generated, 1, "{report:?}");
    assert_eq!(w.tickets().await.len(), 1);
}

/// The thread marker proves the ticket, not the sender: a stranger's mail with a genuine marker
/// (a forwarded notification) is an internal follow-up with a note and does not reopen the
/// ticket; the submitter's own reply, in any letter case, is public and reopens it.
/// `non_participant` chooses, and the receipt says what was found.
#[tokio::test]
async fn a_strangers_reply_with_a_valid_marker_is_an_internal_note_and_reopens_nothing() {
    let w = World::new("hd-stranger", json!({})).await;
    w.deliver(&mail_to_support(
        "open",
        "Invoice 77",
        "The invoice is wrong.",
        &[],
    ));
    assert_eq!(w.poll().await.tickets_created, 1);
    let id = w.tickets().await[0]["id"].as_u64().unwrap();
    w.hd.patch_ticket(id, json!({"status": 4})).await.unwrap();
    let marker = mailbridge::mail::threading::body_footer_text(
        &mailbridge::mail::threading::ticket_reference(
            &id.to_string(),
            b"helpdesk-django-thread-key",
        ),
    );
    let stranger = format!(
        "From: Mallory <mallory@evil.example>\r\nTo: support@example.com\r\nSubject: Re: Invoice 77\r\n\
         Message-ID: <fwd-1@evil.example>\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n\
         Please pay to my account instead.\r\n{marker}"
    );
    w.deliver(stranger.as_bytes());
    let report = w.poll().await;
    assert_eq!(
        status(&report).outcome,
        mailbridge::state_table::MailboxOutcome::Ok,
        "{report:?}"
    );
    assert_eq!(w.tickets().await.len(), 1, "no new ticket");
    let ticket = w.ticket(id).await;
    assert_eq!(ticket["status"], 4, "a stranger does not reopen: {ticket}");
    let note = &ticket["followup_set"].as_array().unwrap()[1];
    assert_eq!(note["public"], false, "{note}");
    let comment = note["comment"].as_str().unwrap();
    assert!(
        comment.contains("The sender mallory@evil.example is not the submitter of this ticket"),
        "{comment}"
    );
    assert!(
        !comment.contains("[ref:"),
        "the marker is not stored: {comment}"
    );

    // The submitter, her address in other letters, with the marker: public, reopens.
    let own = format!(
        "From: Ann <ANN@Customer.Example>\r\nTo: support@example.com\r\nSubject: Re: Invoice 77\r\n\
         Message-ID: <own-1@customer.example>\r\nContent-Type: text/plain\r\n\r\nStill wrong.\r\n{marker}"
    );
    w.deliver(own.as_bytes());
    w.poll().await;
    let ticket = w.ticket(id).await;
    assert_eq!(ticket["status"], 2, "{ticket}");
    assert_eq!(
        ticket["followup_set"].as_array().unwrap()[2]["public"],
        true
    );

    // Per sink: the plan and the receipt.
    let payload = |key: &str, from: &str| TicketPayload {
        schema: TICKET_PAYLOAD_SCHEMA.into(),
        mailbox: "helpdesk".into(),
        mailbox_address: "support@example.com".into(),
        received_at: chrono::Utc::now(),
        idempotency_key: key.into(),
        draft: mailbridge::mail::TicketDraft {
            subject: "Re: Invoice 77".into(),
            from: Some(mailbridge::mail::MailAddress {
                name: None,
                address: from.into(),
            }),
            body_text: "About the invoice.".into(),
            ticket_number: Some(id.to_string()),
            ..Default::default()
        },
        attachments: Vec::new(),
        problem: None,
        raw_message_base64: None,
    };
    let deadline = || Instant::now() + Duration::from_secs(60);
    let stranger = payload("p1", "mallory@evil.example");
    assert_eq!(
        sink(&w.hd, json!({}))
            .plan(&stranger, deadline())
            .await
            .unwrap(),
        DeliveryPlan::Comment {
            ticket: id.to_string()
        }
    );
    assert_eq!(
        sink(&w.hd, json!({"non_participant": "correspond"}))
            .plan(&stranger, deadline())
            .await
            .unwrap(),
        DeliveryPlan::Reply {
            ticket: id.to_string()
        }
    );
    let key = unique("key");
    let receipt = sink(&w.hd, json!({"non_participant": "new_ticket"}))
        .deliver(&payload(&key, "mallory@evil.example"), &key, deadline())
        .await
        .unwrap();
    assert!(
        matches!(receipt.action, DeliveryPlan::NewTicket { .. }),
        "{receipt:?}"
    );
    assert_eq!(receipt.sender, SenderCheck::NotParticipant);
    let opened: u64 = receipt.ticket_id.unwrap().parse().unwrap();
    let description = w.ticket(opened).await["description"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        description.contains(&format!("This mail names ticket {id}, but its sender")),
        "{description}"
    );
    let key = unique("key");
    let receipt = sink(&w.hd, json!({}))
        .deliver(&payload(&key, "ann@customer.example"), &key, deadline())
        .await
        .unwrap();
    assert_eq!(receipt.sender, SenderCheck::Participant);
    assert_eq!(
        receipt.action,
        DeliveryPlan::Reply {
            ticket: id.to_string()
        }
    );
}

#[tokio::test]
async fn a_lost_answer_after_the_helpdesk_opened_the_ticket_never_opens_a_second_one() {
    let hd = helpdesk("hd-lost").await;
    let proxy = HttpFaultProxy::start(&hd.base_url).await.unwrap();
    let via_proxy = format!("{}/helpdesk/api/", proxy.base_url);
    let secret = hd.token_secret_json();
    let w = World::with_helpdesk(hd, json!({"url": via_proxy}), &secret).await;
    proxy.arm("POST", "/helpdesk/api/tickets/", HttpFault::DropAnswer, 1);
    w.deliver(&mail_to_support(
        "lost-answer",
        "Disk full",
        "The disk is full.",
        &[("df.txt", "text/plain", b"100%\n")],
    ));
    let first = w.poll().await;
    assert_ne!(
        status(&first).outcome,
        mailbridge::state_table::MailboxOutcome::Ok,
        "{first:?}"
    );
    assert_eq!(first.tickets_created, 0);
    assert_eq!(
        w.count("INBOX"),
        1,
        "the mail stays until the ticket is known"
    );
    assert!(!proxy.armed());
    assert_eq!(
        w.tickets().await.len(),
        1,
        "the helpdesk did open the ticket"
    );

    let second = w.poll().await;
    assert_eq!(
        status(&second).outcome,
        mailbridge::state_table::MailboxOutcome::Ok,
        "{second:?}"
    );
    assert_eq!(w.count("INBOX"), 0);
    assert_eq!(w.count("Processed"), 1);
    let tickets = w.tickets().await;
    assert_eq!(
        tickets.len(),
        1,
        "found and recorded, not opened again: {tickets:?}"
    );
    let creates = proxy
        .log()
        .iter()
        .filter(|l| l.starts_with("POST /helpdesk/api/tickets/ "))
        .count();
    assert_eq!(creates, 1, "{:?}", proxy.log());
    // and the attachments the first run never got to were added by the second
    let ticket = w.ticket(tickets[0]["id"].as_u64().unwrap()).await;
    let files = attachments(&w.hd, &ticket).await;
    assert_eq!(
        files,
        vec![("df.txt".into(), "text/plain".into(), b"100%\n".to_vec())]
    );
    // a third run has nothing to do
    let third = w.poll().await;
    assert_eq!(third.tickets_created, 0);
    assert_eq!(w.tickets().await.len(), 1);
}

#[tokio::test]
async fn a_lost_answer_to_a_follow_up_never_adds_it_twice() {
    let hd = helpdesk("hd-lost-reply").await;
    let proxy = HttpFaultProxy::start(&hd.base_url).await.unwrap();
    let via_proxy = format!("{}/helpdesk/api/", proxy.base_url);
    let secret = hd.token_secret_json();
    let w = World::with_helpdesk(hd, json!({"url": via_proxy}), &secret).await;
    w.deliver(&mail_to_support("t", "Laptop", "My laptop is slow.", &[]));
    assert_eq!(w.poll().await.tickets_created, 1);
    let id = w.tickets().await[0]["id"].as_u64().unwrap();
    proxy.arm("POST", "/helpdesk/api/followups/", HttpFault::DropAnswer, 1);
    w.deliver(&mail_to_support(
        "r",
        &format!("Re: [support-{id}] Laptop"),
        "Now it is fast.",
        &[],
    ));
    let first = w.poll().await;
    assert_ne!(
        status(&first).outcome,
        mailbridge::state_table::MailboxOutcome::Ok,
        "{first:?}"
    );
    assert_eq!(w.count("INBOX"), 1);
    let second = w.poll().await;
    assert_eq!(
        status(&second).outcome,
        mailbridge::state_table::MailboxOutcome::Ok,
        "{second:?}"
    );
    assert_eq!(w.count("INBOX"), 0);
    let ticket = w.ticket(id).await;
    let replies = ticket["followup_set"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| {
            f["comment"]
                .as_str()
                .unwrap_or("")
                .contains("Now it is fast.")
        })
        .count();
    assert_eq!(replies, 1, "{ticket}");
}

#[tokio::test]
async fn refused_credentials_leave_the_mail_and_the_status_says_so() {
    let hd = helpdesk("hd-creds").await;
    let wrong_token = json!({"type": "token", "token": "not-the-token"}).to_string();
    let w = World::with_helpdesk(hd, json!({}), &wrong_token).await;
    w.deliver(&mail_to_support("c1", "Hello", "Anyone there?", &[]));
    let report = w.poll().await;
    let s = status(&report);
    assert_ne!(
        s.outcome,
        mailbridge::state_table::MailboxOutcome::Ok,
        "{report:?}"
    );
    assert_eq!(
        report.mailboxes_failed, 1,
        "the MailboxPollFailed alarm counts it"
    );
    let reason = s.reason.as_deref().unwrap_or_default();
    assert!(
        reason.contains("credentials") && reason.contains("401"),
        "{reason}"
    );
    assert_eq!(w.count("INBOX"), 1, "the mail stays");
    assert!(w.tickets().await.is_empty());

    // a user without staff rights: 403, same outcome
    let hd = helpdesk("hd-creds-staff").await;
    let non_staff = hd.basic_secret_json(NON_STAFF_USER);
    let w = World::with_helpdesk(hd, json!({}), &non_staff).await;
    w.deliver(&mail_to_support("c2", "Hello", "Anyone there?", &[]));
    let report = w.poll().await;
    assert_eq!(report.mailboxes_failed, 1, "{report:?}");
    let reason = status(&report).reason.clone().unwrap_or_default();
    assert!(reason.contains("403"), "{reason}");
    assert_eq!(w.count("INBOX"), 1);
    assert!(w.tickets().await.is_empty());
}

#[tokio::test]
async fn an_unknown_queue_parks_the_mail_with_the_helpdesks_answer() {
    let w = World::new("hd-queue", json!({"queue_id": 99})).await;
    w.deliver(&mail_to_support("q1", "Hello", "Which queue?", &[]));
    let report = w.poll().await;
    assert_eq!(report.parked, 1, "{report:?}");
    assert_eq!(w.count("INBOX"), 0);
    assert_eq!(w.count("mailbridge-failed"), 1);
    assert!(w.tickets().await.is_empty());
}

#[tokio::test]
async fn a_helpdesk_that_is_down_keeps_the_mail_until_it_is_back() {
    let w = World::new("hd-down", json!({})).await;
    w.hd.stop();
    w.deliver(&mail_to_support("d1", "Outage", "Everything is down.", &[]));
    let report = w.poll().await;
    assert_ne!(
        status(&report).outcome,
        mailbridge::state_table::MailboxOutcome::Ok,
        "{report:?}"
    );
    assert_eq!(report.mailboxes_failed, 1);
    assert_eq!(w.count("INBOX"), 1);
    w.hd.restart().await.unwrap();
    let report = w.poll().await;
    assert_eq!(
        status(&report).outcome,
        mailbridge::state_table::MailboxOutcome::Ok,
        "{report:?}"
    );
    assert_eq!(report.tickets_created, 1);
    assert_eq!(w.tickets().await.len(), 1);
}

#[tokio::test]
async fn an_attachment_type_the_helpdesk_refuses_is_listed_in_a_note_and_the_rest_is_delivered() {
    let w = World::new("hd-ext", json!({})).await;
    w.deliver(&mail_to_support(
        "z1",
        "Logs",
        "Logs attached.",
        &[
            (
                "logs.zip",
                "application/zip",
                b"PK\x03\x04 not really a zip",
            ),
            ("readme.txt", "text/plain", b"read me\n"),
        ],
    ));
    let report = w.poll().await;
    assert_eq!(
        status(&report).outcome,
        mailbridge::state_table::MailboxOutcome::Ok,
        "{report:?}"
    );
    assert_eq!(report.tickets_created, 1);
    let id = w.tickets().await[0]["id"].as_u64().unwrap();
    let ticket = w.ticket(id).await;
    let files = attachments(&w.hd, &ticket).await;
    assert_eq!(
        files,
        vec![(
            "readme.txt".into(),
            "text/plain".into(),
            b"read me\n".to_vec()
        )]
    );
    let notes: Vec<&Value> = ticket["followup_set"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["comment"].as_str().unwrap_or("").contains("logs.zip"))
        .collect();
    assert_eq!(notes.len(), 1, "{ticket}");
    assert_eq!(notes[0]["public"], false);
    let note = notes[0]["comment"].as_str().unwrap();
    assert!(note.contains("Unsupported file extension: .zip"), "{note}");
    assert_eq!(w.count("Processed"), 1);
}

fn sink(hd: &DjangoHelpdesk, fields: Value) -> Arc<dyn TicketSink> {
    let mut sink = json!({
        "kind": "django-helpdesk",
        "url": hd.api_url,
        "secret": "unused",
        "queue": "support",
        "queue_id": 1,
    });
    for (k, v) in fields.as_object().unwrap() {
        sink[k] = v.clone();
    }
    SinkConfig::from_json(&sink)
        .unwrap()
        .build(
            reqwest::Client::new(),
            Some(&hd.token_secret_json()),
            fast_retry(),
        )
        .unwrap()
}

#[tokio::test]
async fn check_names_what_the_helpdesk_does_not_accept() {
    let hd = helpdesk("hd-check").await;
    let soon = || Instant::now() + Duration::from_secs(30);
    let ok = sink(&hd, json!({})).check(soon()).await.unwrap();
    assert!(
        ok.summary.contains("queue support (id 1)"),
        "{}",
        ok.summary
    );
    let err = sink(&hd, json!({"queue_id": 99}))
        .check(soon())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, TicketSinkError::Config { detail, .. } if detail.contains("queue") && detail.contains("99")),
        "{err}"
    );
    let err = sink(&hd, json!({"assigned_to": 42}))
        .check(soon())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("assigned_to"), "{err}");
    let err = sink(&hd, json!({"key_field": "no_such_field"}))
        .check(soon())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("no_such_field"), "{err}");
    let wrong = SinkConfig::from_json(&json!({
        "kind": "django-helpdesk", "url": hd.api_url, "secret": "s", "queue": "support", "queue_id": 1,
    }))
    .unwrap()
    .build(reqwest::Client::new(), Some(r#"{"type":"token","token":"wrong"}"#), fast_retry())
    .unwrap();
    let err = wrong.check(soon()).await.unwrap_err();
    assert!(
        matches!(err, TicketSinkError::CredentialsRefused { status: 401, .. }),
        "{err}"
    );
    assert!(
        hd.tickets().await.unwrap().is_empty(),
        "check writes nothing"
    );
}
#[tokio::test]
async fn the_local_helpdesk_answers_staff_only_and_the_proxy_can_drop_an_answer() {
    let hd = helpdesk("hd-smoke").await;
    let http = reqwest::Client::new();
    let tickets = format!("{}tickets/", hd.api_url);
    let token = format!("Token {}", hd.token);
    let ok = http
        .get(&tickets)
        .header("Authorization", &token)
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    let non_staff = http
        .get(&tickets)
        .basic_auth(NON_STAFF_USER, Some(&hd.password))
        .send()
        .await
        .unwrap();
    assert_eq!(non_staff.status(), 403);

    let proxy = HttpFaultProxy::start(&hd.base_url).await.unwrap();
    proxy.arm("POST", "/helpdesk/api/tickets/", HttpFault::DropAnswer, 1);
    let through = format!("{}/helpdesk/api/tickets/", proxy.base_url);
    let ticket = serde_json::json!({"queue": 1, "title": "t", "description": "d", "priority": 3});
    let lost = http
        .post(&through)
        .header("Authorization", &token)
        .json(&ticket)
        .timeout(Duration::from_secs(20))
        .send()
        .await;
    assert!(lost.is_err(), "the answer must be lost: {lost:?}");
    assert_eq!(
        hd.tickets().await.unwrap().len(),
        1,
        "the ticket was created"
    );
    let passed = http
        .post(&through)
        .header("Authorization", &token)
        .json(&ticket)
        .send()
        .await
        .unwrap();
    assert_eq!(passed.status(), 201);
    assert_eq!(hd.tickets().await.unwrap().len(), 2);
    assert!(!proxy.armed());
}

/// Benchmark (BENCHMARKS.md, "django-helpdesk"): 200 mails in one mailbox, one poll, tickets per
/// second into the real helpdesk, and the helpdesk's own share of the time (its answers timed at
/// a pass-through proxy in front of it, and its CPU time).
#[tokio::test]
#[ignore = "benchmark: run with --ignored --nocapture"]
async fn bench_200_mails_into_django_helpdesk() {
    const MAILS: usize = 200;
    let hd = helpdesk("hd-bench").await;
    let proxy = HttpFaultProxy::start(&hd.base_url).await.unwrap();
    let secret = hd.token_secret_json();
    let w = World::with_helpdesk(
        hd,
        json!({"url": format!("{}/helpdesk/api/", proxy.base_url)}),
        &secret,
    )
    .await;
    for i in 0..MAILS {
        let body = format!(
            "Mail {i}: the printer in room {} is jammed again.\r\n",
            i % 17
        )
        .repeat(1 + i % 20);
        let attachments: &[(&str, &str, &[u8])] = if i % 5 == 0 {
            &[("report.pdf", "application/pdf", PDF)]
        } else {
            &[]
        };
        w.deliver(&mail_to_support(
            &format!("bench-{i}"),
            &format!("Printer {i}"),
            &body,
            attachments,
        ));
    }
    let cpu_before = w.hd.cpu_time().unwrap_or_default();
    let started = std::time::Instant::now();
    let report =
        poll_mailboxes::poll_once(&w.deps, None, Instant::now() + Duration::from_secs(1200))
            .await
            .unwrap();
    let wall = started.elapsed();
    let cpu = w.hd.cpu_time().unwrap_or_default() - cpu_before;
    assert_eq!(
        status(&report).outcome,
        mailbridge::state_table::MailboxOutcome::Ok,
        "{report:?}"
    );
    assert_eq!(report.tickets_created as usize, MAILS);
    assert_eq!(w.tickets().await.len(), MAILS);
    let calls = proxy.upstream_calls();
    let helpdesk: Duration = calls.iter().map(|c| c.elapsed).sum();
    println!(
        "bench: django-helpdesk: {MAILS} mails -> {} tickets in {:.1} s = {:.2} tickets/s",
        report.tickets_created,
        wall.as_secs_f64(),
        MAILS as f64 / wall.as_secs_f64()
    );
    println!(
        "bench: helpdesk answering: {:.1} s = {:.0} % of the wall time ({} calls, {:.1} per ticket); helpdesk CPU {:.1} s",
        helpdesk.as_secs_f64(),
        100.0 * helpdesk.as_secs_f64() / wall.as_secs_f64(),
        calls.len(),
        calls.len() as f64 / MAILS as f64,
        cpu.as_secs_f64()
    );
    let mut kinds: Vec<(String, usize, Duration)> = Vec::new();
    for c in &calls {
        let kind = format!(
            "{} {}",
            c.method,
            if c.path.starts_with("/helpdesk/api/tickets/") && c.path.len() > 22 {
                "/helpdesk/api/tickets/<id>/"
            } else {
                c.path.as_str()
            }
        );
        match kinds.iter_mut().find(|(k, _, _)| *k == kind) {
            Some((_, n, total)) => {
                *n += 1;
                *total += c.elapsed;
            }
            None => kinds.push((kind, 1, c.elapsed)),
        }
    }
    for (kind, n, total) in &kinds {
        println!(
            "bench:   {kind}: {n} calls, {:.1} ms each, {:.1} s",
            total.as_secs_f64() * 1000.0 / *n as f64,
            total.as_secs_f64()
        );
    }
    // the ticket list (the search before each new ticket) slows down as the helpdesk grows
    let lists: Vec<&_> = calls
        .iter()
        .filter(|c| c.method == "GET" && c.path == "/helpdesk/api/tickets/")
        .collect();
    if lists.len() >= 100 {
        let mean = |part: &[&local_stack::http_fault_proxy::UpstreamCall]| {
            part.iter().map(|c| c.elapsed.as_secs_f64()).sum::<f64>() * 1000.0 / part.len() as f64
        };
        println!(
            "bench:   ticket list: first 50 {:.1} ms each, last 50 {:.1} ms each",
            mean(&lists[..50]),
            mean(&lists[lists.len() - 50..])
        );
    }
}
