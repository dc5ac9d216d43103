//! The whole loop with a real helpdesk: a throwaway Request Tracker 5 whose outgoing mail goes
//! through `mailbridge sendmail` (RT's `$MailCommand = 'sendmailpipe'`, `$SendmailPath` a
//! wrapper that runs the mailbridge binary as `sendmail`), exactly as docs/outbound.md tells an
//! operator to configure it.
//!
//! agent's reply in RT (REST 2.0 correspond) → RT runs `mailbridge sendmail` → SQS (moto) →
//! send-notifications (the batch logic) → Graph stand-in → the customer's Dovecot mailbox, with
//! RT's Message-ID, In-Reply-To, References and subject tag as RT wrote them → the customer's
//! answer (threaded on those headers) lands in the helpdesk mailbox → poll-mailboxes → a
//! correspondence on the SAME RT ticket, read back through RT's REST API.
//!
//! Every link is asserted where it hands over, so a broken one fails the test at that link.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use local_stack::identity::{AppRegistration, UserAccount};
use local_stack::request_tracker::{RequestTracker, RtOptions};
use mailbridge::retry::RetryPolicy;
use mailbridge::state_table::{DynamoStateStore, put_mailbox_config};
use mailbridge::token::AccountSecret;
use mailbridge_tests::sender::Sender;
use mailbridge_tests::{
    create_queue_with_dlq, create_state_table, dynamodb, put_secret, stack, unique, unique_user,
};
use poll_mailboxes::PollDeps;
use poll_mailboxes::convert::ParseContext;
use poll_mailboxes::imap_adapter::ImapConnector;
use poll_mailboxes::sinks::SecretsSinkFactory;
use send_notifications::process_batch;
use send_notifications::settings::BatchSettings;
use serde_json::{Value, json};
use tokio::time::Instant;

const PASSWORD: &str = "correct horse battery staple";
/// The key both functions use for the signed thread marker.
const THREAD_KEY: &str = "helpdesk-loop-thread-key-0123456";
const RT_NAME: &str = "loop.example";

fn header<'a>(message: &'a mail_parser::Message<'a>, name: &str) -> Option<String> {
    message
        .header_raw(name)
        .map(|v| v.split_whitespace().collect::<Vec<_>>().join(" "))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agents_reply_reaches_the_customer_and_the_answer_lands_on_the_same_rt_ticket() {
    local_stack::request_tracker::check_installed().expect("Request Tracker 5");
    let stack = stack();
    let aws = stack.moto().sdk_config();
    let dir = tempfile::tempdir().unwrap();

    // The helpdesk's Microsoft 365 account: its mailbox receives the customers' mail (polled
    // over IMAP) and is RT's correspond address (the From of RT's mail, sent through Graph).
    let idp = stack.identity();
    let tenant = format!("{}.onmicrosoft.com", unique("tenant"));
    let client_id = uuid::Uuid::new_v4().to_string();
    idp.register_app(AppRegistration::mailbridge(&tenant, &client_id));
    let helpdesk = unique_user("helpdesk");
    idp.register_user(UserAccount::new(&tenant, &helpdesk, PASSWORD));
    let mut secret = AccountSecret::new(&tenant, &client_id, &helpdesk);
    secret.authority_host = idp.base_url.clone();
    secret.password = Some(PASSWORD.into());
    let account = format!("mailbridge/{}", unique("loop"));
    put_secret(&account, &secret.to_json()).await.unwrap();
    let (queue_url, dlq_url) = create_queue_with_dlq(&unique("loop"), 5).await.unwrap();
    let queue_arn = mailbridge_tests::queue_arn(&queue_url).await.unwrap();

    // RT, configured as docs/outbound.md says.
    let mut env = stack.moto().env();
    env.extend([
        ("MAILBRIDGE_SENDMAIL_CONFIG".into(), "/dev/null".into()),
        ("MAILBRIDGE_QUEUE_URL".into(), queue_url.clone()),
        ("MAILBRIDGE_ACCOUNT".into(), account.clone()),
        (
            "MAILBRIDGE_TICKET_PATTERN".into(),
            format!(r"\[{} #(\d+)\]", RT_NAME.replace('.', r"\.")),
        ),
    ]);
    let sendmail = local_stack::request_tracker::write_sendmail_wrapper(
        dir.path(),
        &mailbridge_tests::cli::binary(),
        &env,
    )
    .expect("write the sendmail wrapper");
    let rt = RequestTracker::start(
        &dir.path().join("rt"),
        RtOptions {
            rtname: RT_NAME.into(),
            organization: RT_NAME.into(),
            correspond_address: helpdesk.clone(),
            site_config_extra: format!(
                "Set($MailCommand, 'sendmailpipe');\nSet($SendmailPath, '{}');\nSet($SendmailArguments, '-oi -t');\n",
                sendmail.display()
            ),
            ..RtOptions::default()
        },
    )
    .await
    .expect("start Request Tracker");
    let root = rt.root_client();
    let queue = unique("support");
    root.create_queue(&queue).await.unwrap();

    // A ticket of a customer (RT mails its autoreply through mailbridge too).
    let customer = mailbridge_tests::mail_recipient("customer");
    let created = root
        .post(
            "ticket",
            &json!({"Queue": queue, "Subject": "VPN drops every hour", "Requestor": customer,
                    "Content": "My VPN drops every hour.", "ContentType": "text/plain"}),
        )
        .await
        .unwrap();
    let ticket = match &created["id"] {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };

    // 1. The agent answers in RT.
    let agent_words = unique("agent-says");
    root.post(
        &format!("ticket/{ticket}/correspond"),
        &json!({"Content": format!("Please update the client. {agent_words}"), "ContentType": "text/plain"}),
    )
    .await
    .unwrap();

    // 2. RT ran `mailbridge sendmail`: the autoreply and the reply are on the queue, as RT wrote
    //    them.
    let event = mailbridge_tests::receive_sqs_event(&queue_url, &queue_arn, 2).await;
    let log = std::fs::read_to_string(dir.path().join("sendmail.log")).unwrap_or_default();
    let queued: Vec<Value> = event
        .records
        .iter()
        .map(|r| serde_json::from_str(r.body.as_deref().unwrap()).unwrap())
        .collect();
    let rt_raw: Vec<Vec<u8>> = queued
        .iter()
        .map(|q| {
            assert_eq!(q["kind"], "mime", "{q}");
            assert_eq!(q["from"], helpdesk.as_str(), "{q}");
            assert_eq!(q["ticket_number"], ticket.as_str(), "{q}");
            base64::engine::general_purpose::STANDARD
                .decode(q["raw_base64"].as_str().expect("inline"))
                .unwrap()
        })
        .collect();
    let parser = mail_parser::MessageParser::default();
    let rt_reply_raw = rt_raw
        .iter()
        .find(|raw| String::from_utf8_lossy(raw).contains(&agent_words))
        .unwrap_or_else(|| panic!("the agent's reply was not queued (sendmail log: {log})"));
    let rt_reply = parser.parse(rt_reply_raw).unwrap();

    // 3. send-notifications sends both through Graph.
    let send_table = create_state_table("loop-send").await.unwrap();
    let deps = Sender::on_stack(&send_table, &dlq_url, THREAD_KEY).deps(BatchSettings {
        safety_margin: Duration::from_secs(1),
        ..BatchSettings::default()
    });
    let report = process_batch(event, Instant::now() + Duration::from_secs(60), &deps).await;
    assert_eq!(report.metrics.sent, 2, "{:?}", report.messages);

    // 4. The customer's mailbox has RT's reply with RT's headers as RT wrote them.
    let inbox = mailbridge_tests::wait_for_inbox(&customer, 2).await;
    let received_raw = inbox
        .iter()
        .map(|m| &m.raw)
        .find(|raw| {
            parser
                .parse(raw)
                .and_then(|m| m.message_id().map(str::to_owned))
                .as_deref()
                == rt_reply.message_id()
        })
        .unwrap_or_else(|| panic!("the reply with RT's Message-ID did not arrive"));
    let received = parser.parse(received_raw).unwrap();
    for name in ["Message-ID", "In-Reply-To", "References", "Subject", "From"] {
        assert_eq!(
            header(&received, name),
            header(&rt_reply, name),
            "{name} as RT wrote it"
        );
    }
    let subject = received.subject().unwrap_or_default().to_owned();
    assert!(
        subject.contains(&format!("[{RT_NAME} #{ticket}]")),
        "RT's subject tag: {subject}"
    );
    let references = header(&received, "References").expect("RT's References");
    assert!(!references.is_empty());

    // 5. The customer answers, threaded on RT's headers, into the helpdesk mailbox.
    let customer_words = unique("customer-says");
    let rt_message_id = header(&received, "Message-ID").unwrap();
    let answer = format!(
        "From: A Customer <{customer}>\r\nTo: <{helpdesk}>\r\nSubject: Re: {subject}\r\n\
         Date: Sun, 06 Dec 2026 10:00:00 +0000\r\nMessage-ID: <{}@customer.example>\r\n\
         In-Reply-To: {rt_message_id}\r\nReferences: {references} {rt_message_id}\r\n\
         MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n\
         Updated, it still drops. {customer_words}\r\n\r\n> Please update the client.\r\n",
        unique("answer")
    );
    stack
        .dovecot()
        .deliver_to(&helpdesk, "INBOX", answer.as_bytes())
        .unwrap();

    // 6. poll-mailboxes delivers it to RT.
    let table = create_state_table("loop-poll").await.unwrap();
    let rt_secret = format!("mailbridge/{}", unique("rt-api"));
    put_secret(&rt_secret, &rt.adapter_token_secret())
        .await
        .unwrap();
    put_mailbox_config(
        &dynamodb(),
        &table,
        "helpdesk",
        &json!({
            "user": helpdesk,
            "account": account.trim_start_matches("mailbridge/"),
            "host": "localhost",
            "port": stack.dovecot().imaps_port,
            "sink": {"kind": "rt", "url": rt.base_url, "secret": rt_secret, "queue": queue, "rt_name": RT_NAME},
        }),
        &mailbridge::mailbox::TargetPolicy::local(),
    )
    .await
    .unwrap();
    let poll = PollDeps {
        tokens: deps.tokens.clone(),
        connector: Arc::new(
            ImapConnector::new(Some(&stack.dovecot().ca_pem_path), Duration::from_secs(10))
                .unwrap(),
        ),
        state: Arc::new(DynamoStateStore::new(dynamodb(), &table)),
        sinks: Arc::new(SecretsSinkFactory::new(
            reqwest::Client::new(),
            aws_sdk_secretsmanager::Client::new(&aws),
            RetryPolicy {
                initial_backoff: Duration::from_millis(20),
                max_backoff: Duration::from_millis(500),
                max_attempts: 3,
                attempt_timeout: Duration::from_secs(20),
            },
        )),
        parse: ParseContext {
            thread_key: Some(THREAD_KEY.as_bytes().to_vec()),
        },
        max_concurrent_mailboxes: 1,
        deadline_margin: Duration::from_secs(2),
        dedupe_ttl: Duration::from_secs(86_400),
        targets: mailbridge::mailbox::TargetPolicy::local(),
        memory: Arc::new(poll_mailboxes::memory::MemoryBudget::unlimited()),
    };
    let polled = poll_mailboxes::poll_once(&poll, None, Instant::now() + Duration::from_secs(90))
        .await
        .unwrap();
    assert_eq!(
        polled.mailboxes[0].outcome,
        mailbridge::state_table::MailboxOutcome::Ok,
        "{polled:?}"
    );
    assert_eq!(polled.mailboxes[0].parked, 0, "{polled:?}");

    // 7. RT shows the customer's answer as correspondence on the same ticket.
    assert_eq!(
        root.tickets_in_queue(&queue).await.unwrap(),
        vec![ticket.clone()],
        "still one ticket"
    );
    let correspondence: Vec<String> = root
        .history(&ticket)
        .await
        .unwrap()
        .into_iter()
        .filter(|t| t.kind == "Correspond")
        .map(|t| t.id)
        .collect();
    let on_ticket = root
        .attachments(&ticket)
        .await
        .unwrap()
        .into_iter()
        .filter(|a| correspondence.contains(&a.transaction))
        .any(|a| String::from_utf8_lossy(&a.content).contains(&customer_words));
    assert!(
        on_ticket,
        "the customer's answer is correspondence on ticket {ticket}"
    );
}
