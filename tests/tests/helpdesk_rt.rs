//! The RT ticket sink against a real Request Tracker 5 on 127.0.0.1 (a throwaway instance from
//! the local stack), fed by the real poller from Dovecot: every assertion reads what RT itself
//! then shows through its REST 2.0 API.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use local_stack::request_tracker::{self, RequestTracker, RtClient};
use mailbridge::retry::RetryPolicy;
use mailbridge::state_table::MailboxStatus;
use mailbridge::ticket_sink::{
    DeliveryPlan, SenderCheck, SinkConfig, TICKET_PAYLOAD_SCHEMA, TicketPayload, TicketSink,
    TicketSinkError,
};
use mailbridge_tests::mail::{HELPDESK, customer_mail, customer_mail_with_attachments};
use mailbridge_tests::poller::ImapPoller;
use mailbridge_tests::{dynamodb, new_password_account, put_secret, stack, unique};
use poll_mailboxes::PollDeps;
use serde_json::{Value, json};
use tokio::time::Instant;

const PASSWORD: &str = "correct horse battery staple";
/// The shared instance's `$rtname` (RtOptions::default()).
const RT_NAME: &str = "mailbridge.test";

fn fast_retry() -> RetryPolicy {
    RetryPolicy {
        initial_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(500),
        max_attempts: 3,
        attempt_timeout: Duration::from_secs(20),
    }
}

fn soon() -> Instant {
    Instant::now() + Duration::from_secs(60)
}

/// One queue in the shared RT, a state table, one IMAP user with its account, and poller deps.
struct RtWorld {
    rt: &'static RequestTracker,
    root: RtClient,
    queue: String,
    table: String,
    user: String,
    account: String,
    secret: String,
    deps: PollDeps,
}

impl RtWorld {
    async fn new() -> RtWorld {
        // the local stack first: logging, and loopback targets allowed
        stack();
        let rt = request_tracker::shared();
        let root = rt.root_client();
        let queue = unique("q");
        root.create_queue(&queue).await.unwrap();
        let secret = format!("mailbridge/{}", unique("rt-api"));
        put_secret(&secret, &rt.adapter_token_secret())
            .await
            .unwrap();

        let account = new_password_account("helpdesk", PASSWORD).await.unwrap();
        let user = account.upn.clone();
        let account = account.account().to_owned();
        let table = mailbridge_tests::create_state_table("rt").await.unwrap();
        let deps = ImapPoller {
            table: &table,
            thread_key: b"rt-test-thread-key",
            max_concurrent_mailboxes: 2,
            sink_retry: fast_retry(),
        }
        .deps();
        let world = RtWorld {
            rt,
            root,
            queue,
            table,
            user,
            account,
            secret,
            deps,
        };
        world.mailbox(json!({})).await;
        world
    }

    /// The `sink` object of the mailbox: RT, this world's queue and secret, plus `extra`.
    fn sink_json(&self, extra: Value) -> Value {
        let mut sink = json!({
            "kind": "rt",
            "url": self.rt.base_url,
            "secret": self.secret,
            "queue": self.queue,
            "rt_name": RT_NAME,
        });
        for (k, v) in extra.as_object().unwrap() {
            sink[k] = v.clone();
        }
        sink
    }

    /// (Re)write the mailbox `helpdesk` with the sink fields `extra`.
    async fn mailbox(&self, extra: Value) {
        mailbridge_tests::poller::put_stack_mailbox(
            &self.table,
            "helpdesk",
            &self.user,
            &self.account,
            json!({"sink": self.sink_json(extra)}),
        )
        .await;
    }

    /// A sink built from this world's config and secret (what `mailbridge check` uses).
    fn sink(&self, extra: Value) -> Arc<dyn TicketSink> {
        let config = SinkConfig::from_json(&self.sink_json(extra)).unwrap();
        config
            .build(
                reqwest::Client::new(),
                Some(&self.rt.adapter_token_secret()),
                fast_retry(),
            )
            .unwrap()
    }

    async fn poll(&self) -> poll_mailboxes::PollReport {
        poll_mailboxes::poll_once(&self.deps, None, Instant::now() + Duration::from_secs(90))
            .await
            .unwrap()
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

    async fn tickets(&self) -> Vec<String> {
        self.root.tickets_in_queue(&self.queue).await.unwrap()
    }
}

fn status<'a>(report: &'a poll_mailboxes::PollReport, name: &str) -> &'a MailboxStatus {
    report
        .mailboxes
        .iter()
        .find(|s| s.mailbox == name)
        .unwrap_or_else(|| panic!("no status for {name}: {report:?}"))
}

/// Every byte value, so a lossy text conversion anywhere shows.
fn binary_bytes() -> Vec<u8> {
    (0..=255u8).cycle().take(3000).collect()
}

const PDF: &[u8] = b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj << >> endobj\ntrailer << >>\n%%EOF\n";

fn mail_with_attachments(id: &str, subject: &str) -> Vec<u8> {
    customer_mail_with_attachments(
        HELPDESK,
        id,
        subject,
        "The scanner jams on page two. Grüße!",
        &[
            ("report.pdf", "application/pdf", PDF),
            ("dump.bin", "application/octet-stream", &binary_bytes()),
        ],
    )
}

fn id_of(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The `Type`s of a ticket's transactions that carry mail: Create, Correspond, Comment.
async fn message_transactions(root: &RtClient, ticket: &str) -> Vec<String> {
    root.history(ticket)
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.kind)
        .filter(|k| matches!(k.as_str(), "Create" | "Correspond" | "Comment"))
        .collect()
}

/// The MIME parts of the mail transactions (Create, Correspond, Comment) of a ticket: not the
/// records of the mail RT sent itself (its autoreply is on the ticket too).
async fn message_parts(root: &RtClient, ticket: &str) -> Vec<request_tracker::RtAttachment> {
    let mail_transactions: Vec<String> = root
        .history(ticket)
        .await
        .unwrap()
        .into_iter()
        .filter(|t| matches!(t.kind.as_str(), "Create" | "Correspond" | "Comment"))
        .map(|t| t.id)
        .collect();
    root.attachments(ticket)
        .await
        .unwrap()
        .into_iter()
        .filter(|a| mail_transactions.contains(&a.transaction))
        .collect()
}

/// The text of the body parts (no file name) of a ticket's mail, joined.
async fn body_text(root: &RtClient, ticket: &str) -> String {
    message_parts(root, ticket)
        .await
        .into_iter()
        .filter(|a| a.filename.is_empty() && a.content_type.starts_with("text/"))
        .map(|a| String::from_utf8_lossy(&a.content).into_owned())
        .collect::<Vec<_>>()
        .join("\n----\n")
}

/// Delete the poller's dedupe records (`mail#...`): as if the run died after the helpdesk
/// accepted the mail and before mailbridge recorded it.
async fn lose_the_dedupe_records(table: &str) {
    use aws_sdk_dynamodb::types::AttributeValue;
    let client = dynamodb();
    let items = client.scan().table_name(table).send().await.unwrap();
    let mut deleted = 0;
    for item in items.items() {
        let Some(AttributeValue::S(pk)) = item.get("pk") else {
            continue;
        };
        if pk.starts_with("mail#") {
            client
                .delete_item()
                .table_name(table)
                .key("pk", AttributeValue::S(pk.clone()))
                .send()
                .await
                .unwrap();
            deleted += 1;
        }
    }
    assert!(deleted > 0, "no dedupe record to lose in {table}");
}

#[tokio::test]
async fn a_new_mail_opens_a_ticket_with_queue_requestor_subject_body_and_attachment_bytes() {
    let w = RtWorld::new().await;
    w.deliver(&mail_with_attachments("att", "Scanner jams"));
    let report = w.poll().await;
    assert_eq!(
        status(&report, "helpdesk").outcome,
        mailbridge::state_table::MailboxOutcome::Ok,
        "{report:?}"
    );
    assert_eq!(report.tickets_created, 1, "{report:?}");
    assert_eq!(w.count("INBOX"), 0, "the mail is moved once RT has it");

    let tickets = w.tickets().await;
    assert_eq!(tickets.len(), 1, "one ticket in queue {}", w.queue);
    let ticket = w.root.ticket(&tickets[0]).await.unwrap();
    let queue = w
        .root
        .get(&format!("queue/{}", id_of(&ticket["Queue"]["id"])))
        .await
        .unwrap();
    assert_eq!(queue["Name"], w.queue.as_str());
    assert_eq!(ticket["Subject"], "Scanner jams");
    let requestors: Vec<String> = ticket["Requestor"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| id_of(&r["id"]))
        .collect();
    assert_eq!(requestors, ["ann@customer.example"]);
    assert_eq!(message_transactions(&w.root, &tickets[0]).await, ["Create"]);
    let body = body_text(&w.root, &tickets[0]).await;
    assert!(
        body.contains("The scanner jams on page two. Grüße!"),
        "{body}"
    );

    let files: Vec<_> = message_parts(&w.root, &tickets[0])
        .await
        .into_iter()
        .filter(|a| !a.filename.is_empty())
        .collect();
    let names: Vec<&str> = files.iter().map(|a| a.filename.as_str()).collect();
    assert_eq!(names, ["report.pdf", "dump.bin"]);
    assert_eq!(files[0].content_type, "application/pdf");
    assert_eq!(files[0].content, PDF);
    assert_eq!(files[1].content_type, "application/octet-stream");
    assert_eq!(files[1].content, binary_bytes());
}

#[tokio::test]
async fn an_html_mail_lands_as_html_and_text_when_configured() {
    let w = RtWorld::new().await;
    let html_mail = |id: &str| {
        format!(
            "From: ann@customer.example\r\nTo: helpdesk@example.com\r\nSubject: Styled {id}\r\nMessage-ID: <{id}@customer.example>\r\n\
             MIME-Version: 1.0\r\nContent-Type: multipart/alternative; boundary=a\r\n\r\n\
             --a\r\nContent-Type: text/plain\r\n\r\nThe *printer* is down.\r\n\
             --a\r\nContent-Type: text/html\r\n\r\n<p>The <b>printer</b> is down.</p>\r\n--a--\r\n"
        )
        .into_bytes()
    };
    w.deliver(&html_mail("html-1"));
    w.poll().await;
    w.mailbox(json!({"body": "text"})).await;
    w.deliver(&html_mail("html-2"));
    w.poll().await;
    let tickets = w.tickets().await;
    assert_eq!(tickets.len(), 2);
    let parts = |ticket: String| {
        let root = w.root.clone();
        async move {
            message_parts(&root, &ticket)
                .await
                .into_iter()
                .filter(|a| a.filename.is_empty() && a.content_type.starts_with("text/"))
                .map(|a| {
                    (
                        a.content_type,
                        String::from_utf8_lossy(&a.content).into_owned(),
                    )
                })
                .collect::<Vec<_>>()
        }
    };
    let first = parts(tickets[0].clone()).await;
    assert!(
        first
            .iter()
            .any(|(t, c)| t == "text/html" && c.contains("<b>printer</b>")),
        "{first:?}"
    );
    let second = parts(tickets[1].clone()).await;
    assert!(second.iter().all(|(t, _)| t == "text/plain"), "{second:?}");
    assert!(
        second
            .iter()
            .any(|(_, c)| c.contains("The *printer* is down.")),
        "{second:?}"
    );
}

/// RT stores the HTML it is given and renders it to agents: it gets the sanitised HTML, never
/// the sender's scripts, event handlers, forms or remote images; `cid:` images stay.
#[tokio::test]
async fn an_html_mail_reaches_rt_sanitised() {
    let w = RtWorld::new().await;
    let html = "<p onmouseover=\"alert(1)\">The <b>printer</b> is down.</p>\
        <script>alert(document.cookie)</script>\
        <img src=\"https://tracker.example/open.gif?u=7\" alt=\"logo\">\
        <img src=\"cid:shot@customer.example\" alt=\"screenshot\">\
        <a href=\"javascript:alert(2)\">details</a>\
        <form action=\"https://evil.example/\"><input name=\"password\"></form>";
    let raw = format!(
        "From: ann@customer.example\r\nTo: helpdesk@example.com\r\nSubject: Styled\r\n\
         Message-ID: <xss-1@customer.example>\r\nMIME-Version: 1.0\r\n\
         Content-Type: text/html; charset=utf-8\r\n\r\n{html}\r\n"
    );
    w.deliver(raw.as_bytes());
    let report = w.poll().await;
    assert_eq!(
        status(&report, "helpdesk").outcome,
        mailbridge::state_table::MailboxOutcome::Ok,
        "{report:?}"
    );
    let tickets = w.tickets().await;
    assert_eq!(tickets.len(), 1);
    let stored: Vec<String> = message_parts(&w.root, &tickets[0])
        .await
        .into_iter()
        .filter(|a| a.content_type == "text/html")
        .map(|a| String::from_utf8_lossy(&a.content).into_owned())
        .collect();
    assert_eq!(stored.len(), 1, "{stored:?}");
    let stored = &stored[0];
    assert!(stored.contains("<b>printer</b>"), "{stored}");
    assert!(
        stored.contains("src=\"cid:shot@customer.example\""),
        "{stored}"
    );
    for gone in [
        "onmouseover",
        "<script",
        "document.cookie",
        "tracker.example",
        "javascript:",
        "<form",
        "<input",
    ] {
        assert!(!stored.contains(gone), "{gone} reached RT: {stored}");
    }
}

#[tokio::test]
async fn a_reply_with_rts_subject_tag_is_correspondence_on_the_same_ticket() {
    let w = RtWorld::new().await;
    w.deliver(&customer_mail("first", "Printer on fire", "Please help."));
    w.poll().await;
    let tickets = w.tickets().await;
    assert_eq!(tickets.len(), 1);
    let n = &tickets[0];

    w.deliver(&customer_mail(
        "reply",
        &format!("Re: [{RT_NAME} #{n}] Printer on fire"),
        "It is still burning.",
    ));
    let report = w.poll().await;
    assert_eq!(
        status(&report, "helpdesk").outcome,
        mailbridge::state_table::MailboxOutcome::Ok,
        "{report:?}"
    );
    assert_eq!(w.tickets().await, tickets, "no new ticket for a reply");
    assert_eq!(
        message_transactions(&w.root, n).await,
        ["Create", "Correspond"]
    );
    let body = body_text(&w.root, n).await;
    assert!(body.contains("It is still burning."), "{body}");
    assert_eq!(w.count("INBOX"), 0);

    // A number RT does not have (deleted, or another system's): a new ticket, not lost.
    w.deliver(&customer_mail(
        "stranger",
        &format!("Re: [{RT_NAME} #987654321] Old thing"),
        "About that old thing.",
    ));
    w.poll().await;
    let now = w.tickets().await;
    assert_eq!(now.len(), 2, "{now:?}");
    assert_eq!(message_transactions(&w.root, &now[1]).await, ["Create"]);
}

/// The thread marker proves the ticket, not the sender: a stranger's mail carrying a genuine
/// marker (a forwarded notification) becomes a comment with a note, never correspondence that
/// RT would mail to the requestor; the requestor's own reply, in any letter case, is
/// correspondence. `non_participant` chooses, and the receipt says what was found.
#[tokio::test]
async fn a_strangers_reply_with_a_valid_marker_is_a_comment_not_correspondence() {
    let w = RtWorld::new().await;
    w.deliver(&customer_mail("owner", "VPN down", "Nothing connects."));
    w.poll().await;
    let tickets = w.tickets().await;
    let n = tickets[0].clone();
    let marker = mailbridge::mail::threading::body_footer_text(
        &mailbridge::mail::threading::ticket_reference(&n, b"rt-test-thread-key"),
    );
    let stranger = format!(
        "From: Mallory <mallory@evil.example>\r\nTo: helpdesk@example.com\r\nSubject: Re: VPN down\r\n\
         Message-ID: <fwd-1@evil.example>\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n\
         Please send the VPN password to me instead.\r\n{marker}"
    );
    w.deliver(stranger.as_bytes());
    let report = w.poll().await;
    assert_eq!(
        status(&report, "helpdesk").outcome,
        mailbridge::state_table::MailboxOutcome::Ok,
        "{report:?}"
    );
    assert_eq!(w.tickets().await, tickets, "no new ticket");
    assert_eq!(
        message_transactions(&w.root, &n).await,
        ["Create", "Comment"]
    );
    let text = body_text(&w.root, &n).await;
    assert!(
        text.contains("The sender mallory@evil.example is not a requestor, Cc or AdminCc"),
        "{text}"
    );
    assert!(!text.contains("[ref:"), "the marker is not stored: {text}");

    // The requestor, her address in other letters, by the subject tag: correspondence.
    let own = format!(
        "From: Ann <ANN@Customer.Example>\r\nTo: helpdesk@example.com\r\n\
         Subject: Re: [{RT_NAME} #{n}] VPN down\r\nMessage-ID: <own-1@customer.example>\r\n\
         Content-Type: text/plain\r\n\r\nIt works again.\r\n"
    );
    w.deliver(own.as_bytes());
    w.poll().await;
    assert_eq!(
        message_transactions(&w.root, &n).await,
        ["Create", "Comment", "Correspond"]
    );

    // Per sink: the plan and the receipt.
    let from_stranger = |key: &str| {
        let mut p = payload(key, "Re: VPN down", Some(&n), false);
        p.draft.from = Some(mailbridge::mail::MailAddress {
            name: None,
            address: "mallory@evil.example".into(),
        });
        p
    };
    let comment = DeliveryPlan::Comment { ticket: n.clone() };
    assert_eq!(
        w.sink(json!({}))
            .plan(&from_stranger("p1"), soon())
            .await
            .unwrap(),
        comment
    );
    assert_eq!(
        w.sink(json!({"non_participant": "correspond"}))
            .plan(&from_stranger("p2"), soon())
            .await
            .unwrap(),
        DeliveryPlan::Reply { ticket: n.clone() }
    );
    let new_ticket_sink = w.sink(json!({"non_participant": "new_ticket"}));
    let key = unique("key");
    let receipt = new_ticket_sink
        .deliver(&from_stranger(&key), &key, soon())
        .await
        .unwrap();
    assert!(
        matches!(receipt.action, DeliveryPlan::NewTicket { .. }),
        "{receipt:?}"
    );
    assert_eq!(receipt.sender, SenderCheck::NotParticipant);
    let opened = receipt.ticket_id.unwrap();
    assert_ne!(opened, n);
    let text = body_text(&w.root, &opened).await;
    assert!(
        text.contains(&format!("This mail names ticket {n}, but its sender")),
        "{text}"
    );
    let key = unique("key");
    let own = payload(&key, "Re: VPN down", Some(&n), false);
    let receipt = w.sink(json!({})).deliver(&own, &key, soon()).await.unwrap();
    assert_eq!(receipt.sender, SenderCheck::Participant);
    assert_eq!(receipt.action, DeliveryPlan::Reply { ticket: n.clone() });
}

#[tokio::test]
async fn threaded_machine_mail_is_a_comment_and_unthreaded_machine_mail_opens_nothing() {
    let w = RtWorld::new().await;
    w.deliver(&customer_mail("human", "Password reset", "I forgot it."));
    w.poll().await;
    let tickets = w.tickets().await;
    let n = &tickets[0];
    let auto_reply = |id: &str, subject: &str| {
        format!(
            "From: Ann Example <ann@customer.example>\r\nTo: helpdesk@example.com\r\nSubject: {subject}\r\n\
             Auto-Submitted: auto-replied\r\nMessage-ID: <{id}@customer.example>\r\n\
             MIME-Version: 1.0\r\nContent-Type: text/plain\r\n\r\nI am out of the office until Monday.\r\n"
        )
        .into_bytes()
    };
    w.deliver(&auto_reply(
        "ooo-1",
        &format!("Out of office: Re: [{RT_NAME} #{n}] Password reset"),
    ));
    w.deliver(&auto_reply("ooo-2", "Out of office"));
    let report = w.poll().await;
    assert_eq!(
        status(&report, "helpdesk").outcome,
        mailbridge::state_table::MailboxOutcome::Ok,
        "{report:?}"
    );
    assert_eq!(report.skipped_auto_generated, 1, "{report:?}");
    assert_eq!(
        w.tickets().await,
        tickets,
        "machine mail never opens a ticket"
    );
    assert_eq!(
        message_transactions(&w.root, n).await,
        ["Create", "Comment"]
    );

    // `machine_mail: correspond` makes it correspondence instead.
    w.mailbox(json!({"machine_mail": "correspond"})).await;
    w.deliver(&auto_reply(
        "ooo-3",
        &format!("Auto: [{RT_NAME} #{n}] Password reset"),
    ));
    w.poll().await;
    assert_eq!(
        message_transactions(&w.root, n).await,
        ["Create", "Comment", "Correspond"]
    );
}

#[tokio::test]
async fn a_crash_after_rt_accepted_the_mail_finds_the_first_ticket_instead_of_opening_another() {
    let w = RtWorld::new().await;
    let raw = customer_mail("crash", "Server down", "Nothing answers.");
    w.deliver(&raw);
    let first = w.poll().await;
    assert_eq!(first.tickets_created, 1);
    let tickets = w.tickets().await;
    assert_eq!(tickets.len(), 1);

    // The run died after RT took the ticket: mailbridge recorded nothing, the mail is still in
    // the INBOX. The next run hands the same mail (same key) to the sink again.
    lose_the_dedupe_records(&w.table).await;
    w.deliver(&raw);
    let again = w.poll().await;
    assert_eq!(
        status(&again, "helpdesk").outcome,
        mailbridge::state_table::MailboxOutcome::Ok,
        "{again:?}"
    );
    assert_eq!(
        again.tickets_created, 0,
        "a replayed delivery is not a new ticket"
    );
    assert_eq!(
        w.tickets().await,
        tickets,
        "RT still has exactly one ticket"
    );
    assert_eq!(
        w.count("INBOX"),
        0,
        "and the mail is moved like a delivered one"
    );

    // The same for a reply: one correspondence, however often it is handed over.
    let n = &tickets[0];
    let reply = customer_mail(
        "crash-reply",
        &format!("Re: [{RT_NAME} #{n}] Server down"),
        "Still down.",
    );
    w.deliver(&reply);
    w.poll().await;
    lose_the_dedupe_records(&w.table).await;
    w.deliver(&reply);
    w.poll().await;
    assert_eq!(
        message_transactions(&w.root, n).await,
        ["Create", "Correspond"]
    );
}

fn payload(key: &str, subject: &str, ticket: Option<&str>, auto: bool) -> TicketPayload {
    TicketPayload {
        schema: TICKET_PAYLOAD_SCHEMA.into(),
        mailbox: "helpdesk".into(),
        mailbox_address: "helpdesk@example.com".into(),
        received_at: chrono::Utc::now(),
        idempotency_key: key.into(),
        draft: mailbridge::mail::TicketDraft {
            subject: subject.into(),
            from: Some(mailbridge::mail::MailAddress {
                name: Some("Ann".into()),
                address: "ann@customer.example".into(),
            }),
            body_text: "Hello RT.".into(),
            ticket_number: ticket.map(str::to_string),
            auto_generated: auto,
            ..Default::default()
        },
        attachments: Vec::new(),
        problem: None,
        raw_message_base64: None,
    }
}

#[tokio::test]
async fn a_lost_answer_is_replayed_not_repeated_and_plan_names_the_call() {
    let w = RtWorld::new().await;
    let sink = w.sink(json!({}));
    let key = unique("key");
    let new = payload(&key, "Lost answer", None, false);
    assert_eq!(
        sink.plan(&new, soon()).await.unwrap(),
        DeliveryPlan::NewTicket {
            queue: Some(w.queue.clone())
        }
    );
    let first = sink.deliver(&new, &key, soon()).await.unwrap();
    assert!(!first.replayed);
    let n = first.ticket_id.clone().unwrap();
    let second = sink.deliver(&new, &key, soon()).await.unwrap();
    assert!(second.replayed, "{second:?}");
    assert_eq!(second.ticket_id.as_deref(), Some(n.as_str()));
    assert_eq!(w.tickets().await, std::slice::from_ref(&n));

    let reply_key = unique("key");
    let reply = payload(&reply_key, "Re: Lost answer", Some(&n), false);
    assert_eq!(
        sink.plan(&reply, soon()).await.unwrap(),
        DeliveryPlan::Reply { ticket: n.clone() }
    );
    let machine = payload(&unique("key"), "Auto", Some(&n), true);
    assert_eq!(
        sink.plan(&machine, soon()).await.unwrap(),
        DeliveryPlan::Comment { ticket: n.clone() }
    );
    let stranger = payload(&unique("key"), "Re: x", Some("987654321"), false);
    assert!(matches!(
        sink.plan(&stranger, soon()).await.unwrap(),
        DeliveryPlan::NewTicket { .. }
    ));
    for _ in 0..2 {
        sink.deliver(&reply, &reply_key, soon()).await.unwrap();
    }
    assert_eq!(
        message_transactions(&w.root, &n).await,
        ["Create", "Correspond"]
    );
    // machine mail about a ticket RT does not have is refused (parked), never a new ticket
    let orphan = payload(&unique("key"), "Undeliverable", Some("987654321"), true);
    let err = sink
        .deliver(&orphan, &orphan.idempotency_key, soon())
        .await
        .unwrap_err();
    assert!(matches!(err, TicketSinkError::Rejected { .. }), "{err}");
    assert_eq!(w.tickets().await, [n]);
}

#[tokio::test]
async fn check_reports_rt_the_queue_and_the_key_field_and_names_what_is_wrong() {
    let w = RtWorld::new().await;
    let ok = w.sink(json!({})).check(soon()).await.unwrap();
    assert!(ok.summary.contains("RT 5."), "{}", ok.summary);
    assert!(ok.summary.contains(&w.queue), "{}", ok.summary);

    let err = w
        .sink(json!({"queue": "no-such-queue"}))
        .check(soon())
        .await
        .unwrap_err();
    assert!(matches!(err, TicketSinkError::Config { .. }), "{err}");
    assert!(err.to_string().contains("no-such-queue"), "{err}");
    let err = w
        .sink(json!({"key_field": "No-Such-Field"}))
        .check(soon())
        .await
        .unwrap_err();
    assert!(matches!(err, TicketSinkError::Config { .. }), "{err}");
    assert!(err.to_string().contains("No-Such-Field"), "{err}");
    let err = w
        .sink(json!({"custom_fields": {"Customer": "ACME"}}))
        .check(soon())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("Customer"), "{err}");
    let err = w
        .sink(json!({"owner": "nobody-like-this"}))
        .check(soon())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("nobody-like-this"), "{err}");

    let bad = SinkConfig::from_json(&w.sink_json(json!({})))
        .unwrap()
        .build(
            reqwest::Client::new(),
            Some(r#"{"type":"token","token":"1-2-0123456789abcdef"}"#),
            fast_retry(),
        )
        .unwrap();
    let err = bad.check(soon()).await.unwrap_err();
    assert!(
        matches!(err, TicketSinkError::CredentialsRefused { status: 401, .. }),
        "{err}"
    );
    // basic auth works as well as a token
    let basic = SinkConfig::from_json(&w.sink_json(json!({})))
        .unwrap()
        .build(
            reqwest::Client::new(),
            Some(&w.rt.adapter_basic_secret()),
            fast_retry(),
        )
        .unwrap();
    basic.check(soon()).await.unwrap();
}

#[tokio::test]
async fn refused_credentials_leave_the_mail_and_the_status_says_so() {
    let w = RtWorld::new().await;
    put_secret(
        &w.secret,
        r#"{"type":"token","token":"1-2-0123456789abcdef"}"#,
    )
    .await
    .unwrap();
    w.deliver(&customer_mail("refused", "Hello", "Anyone?"));
    let report = w.poll().await;
    let s = status(&report, "helpdesk");
    assert_ne!(
        s.outcome,
        mailbridge::state_table::MailboxOutcome::Ok,
        "{report:?}"
    );
    let reason = s.reason.clone().unwrap_or_default();
    assert!(reason.contains("credentials"), "{reason}");
    assert!(
        report.mailboxes_failed >= 1,
        "the MailboxPollFailed alarm counts it: {report:?}"
    );
    assert_eq!(w.count("INBOX"), 1, "the mail stays");
    assert!(w.tickets().await.is_empty());
}

#[tokio::test]
async fn an_unknown_queue_leaves_the_mail_and_the_status_names_the_queue() {
    let w = RtWorld::new().await;
    w.mailbox(json!({"queue": "no-such-queue"})).await;
    w.deliver(&customer_mail("unknown-queue", "Hello", "Anyone?"));
    let report = w.poll().await;
    let s = status(&report, "helpdesk");
    assert_ne!(
        s.outcome,
        mailbridge::state_table::MailboxOutcome::Ok,
        "{report:?}"
    );
    let reason = s.reason.clone().unwrap_or_default();
    assert!(reason.contains("no-such-queue"), "{reason}");
    assert_eq!(
        w.count("INBOX"),
        1,
        "the mail stays until the queue is fixed"
    );
    assert_eq!(
        w.count("mailbridge-failed"),
        0,
        "not parked: fixing the config delivers it"
    );

    w.mailbox(json!({})).await;
    w.poll().await;
    assert_eq!(w.tickets().await.len(), 1);
    assert_eq!(w.count("INBOX"), 0);
}

#[tokio::test]
async fn rt_down_leaves_the_mail_for_the_next_run() {
    let w = RtWorld::new().await;
    let closed = format!("http://127.0.0.1:{}", local_stack::free_port().unwrap());
    w.mailbox(json!({"url": closed})).await;
    w.deliver(&customer_mail("down", "Hello", "Anyone?"));
    let report = w.poll().await;
    assert_ne!(
        status(&report, "helpdesk").outcome,
        mailbridge::state_table::MailboxOutcome::Ok,
        "{report:?}"
    );
    assert_eq!(w.count("INBOX"), 1, "the mail stays");

    w.mailbox(json!({})).await;
    let report = w.poll().await;
    assert_eq!(
        status(&report, "helpdesk").outcome,
        mailbridge::state_table::MailboxOutcome::Ok,
        "{report:?}"
    );
    assert_eq!(w.tickets().await.len(), 1);
    assert_eq!(w.count("INBOX"), 0);
}

#[tokio::test]
async fn rt_instance_serves_rest_2_with_the_seeded_account() {
    let rt = request_tracker::shared();
    let root = rt.root_client();
    let version = root.get("rt").await.unwrap();
    assert!(
        version["Version"].as_str().unwrap().starts_with("5."),
        "{version}"
    );
    let queue = mailbridge_tests::unique("rt-smoke");
    root.create_queue(&queue).await.unwrap();
    let adapter =
        request_tracker::RtClient::new(&rt.rest_url(), format!("token {}", rt.adapter_token));
    let q = adapter.get(&format!("queue/{queue}")).await.unwrap();
    let fields: Vec<&str> = q["TicketCustomFields"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|f| f["name"].as_str())
        .collect();
    assert_eq!(fields, [request_tracker::KEY_FIELD]);
}

/// A sink that times the adapter's calls: the time spent in `deliver` is the helpdesk's share
/// (plus JSON encoding, microseconds).
struct TimedSink {
    inner: Arc<dyn TicketSink>,
    spent: Arc<std::sync::Mutex<Duration>>,
}

#[async_trait::async_trait]
impl TicketSink for TimedSink {
    async fn plan(
        &self,
        payload: &TicketPayload,
        deadline: Instant,
    ) -> Result<DeliveryPlan, TicketSinkError> {
        self.inner.plan(payload, deadline).await
    }

    async fn deliver(
        &self,
        payload: &TicketPayload,
        key: &str,
        deadline: Instant,
    ) -> Result<mailbridge::ticket_sink::TicketReceipt, TicketSinkError> {
        let started = std::time::Instant::now();
        let result = self.inner.deliver(payload, key, deadline).await;
        *self.spent.lock().unwrap() += started.elapsed();
        result
    }

    async fn check(
        &self,
        deadline: Instant,
    ) -> Result<mailbridge::ticket_sink::SinkCheck, TicketSinkError> {
        self.inner.check(deadline).await
    }
}

struct TimedSinks {
    inner: Arc<dyn poll_mailboxes::ports::SinkFactory>,
    spent: Arc<std::sync::Mutex<Duration>>,
}

#[async_trait::async_trait]
impl poll_mailboxes::ports::SinkFactory for TimedSinks {
    async fn sink_for(
        &self,
        config: &mailbridge::mailbox::MailboxConfig,
    ) -> Result<Arc<dyn TicketSink>, String> {
        Ok(Arc::new(TimedSink {
            inner: self.inner.sink_for(config).await?,
            spent: self.spent.clone(),
        }))
    }
}

/// Benchmark (prints numbers; recorded in BENCHMARKS.md): 200 mails in one mailbox (text, a fifth
/// with a 40 KB PDF), one poll into the shared RT; tickets per second and RT's share of the time.
/// Run: `cargo test -p mailbridge-tests --test helpdesk_rt -- --ignored --nocapture bench_`
#[tokio::test]
#[ignore = "benchmark: run explicitly (see BENCHMARKS.md)"]
async fn bench_rt_200_mails_from_one_mailbox() {
    let mut w = RtWorld::new().await;
    let spent = Arc::new(std::sync::Mutex::new(Duration::ZERO));
    w.deps.sinks = Arc::new(TimedSinks {
        inner: w.deps.sinks.clone(),
        spent: spent.clone(),
    });
    w.mailbox(json!({})).await;
    let pdf: Vec<u8> = (0..40_000u32).map(|i| (i * 7 % 251) as u8).collect();
    for i in 0..200 {
        let raw = if i % 5 == 0 {
            format!(
                "From: Customer {i} <c{i}@customer.example>\r\nTo: helpdesk@example.com\r\nSubject: Bench {i}\r\n\
                 Message-ID: <bench-{i}@customer.example>\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n\
                 --b\r\nContent-Type: text/plain\r\n\r\nMail {i}: the attached report shows the problem.\r\n\
                 --b\r\nContent-Type: application/pdf; name=\"r{i}.pdf\"\r\nContent-Disposition: attachment; filename=\"r{i}.pdf\"\r\n\
                 Content-Transfer-Encoding: base64\r\n\r\n{}\r\n--b--\r\n",
                base64::engine::general_purpose::STANDARD.encode(&pdf)
            )
            .into_bytes()
        } else {
            customer_mail(
                &format!("bench-{i}"),
                &format!("Bench {i}"),
                &"The printer on floor 3 is jammed again and nobody can print. ".repeat(12),
            )
        };
        w.deliver(&raw);
    }
    let started = std::time::Instant::now();
    let report =
        poll_mailboxes::poll_once(&w.deps, None, Instant::now() + Duration::from_secs(900))
            .await
            .unwrap();
    let wall = started.elapsed();
    assert_eq!(report.tickets_created, 200, "{report:?}");
    assert_eq!(w.tickets().await.len(), 200);
    let in_rt = *spent.lock().unwrap();
    println!(
        "bench: rt 200 mails: {:.1} s wall, {:.2} tickets/s, RT (deliver) {:.1} s = {:.0} % of the wall time, {:.0} ms per ticket in RT",
        wall.as_secs_f64(),
        200.0 / wall.as_secs_f64(),
        in_rt.as_secs_f64(),
        100.0 * in_rt.as_secs_f64() / wall.as_secs_f64(),
        in_rt.as_secs_f64() * 1000.0 / 200.0
    );
    println!(
        "bench: machine load {}",
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );
}
