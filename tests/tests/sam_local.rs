//! `sam local invoke` as a tested path: the real SAM CLI and AWS's Runtime Interface Emulator
//! run both bootstraps in Docker (`infra/scripts/sam-local.sh`) against the shared local stack.
//!
//! One test, three invocations through `sam local invoke`: send-notifications sends a batch
//! through the Graph stand-in into Dovecot; poll-mailboxes turns the customer's reply into a
//! ticket threaded by its verified marker; the same batch again is found to be duplicates and
//! nothing is sent twice. The bootstraps are the debug ones the test run builds (`cargo build
//! --workspace --bins`); the function containers run on the host's network, so they reach the
//! stack on 127.0.0.1.
//!
//! Needs Docker (Debian's docker.io, a daemon is started when none runs) and, offline, debootstrap
//! for the base image: `bash infra/scripts/install-prerequisites.sh`. Without them the test fails
//! with the script's message saying what to install; it never skips.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use local_stack::runtime_api::workspace_binary;
use mailbridge_tests::{
    create_queue_with_dlq, create_state_table, dynamodb, new_password_account, put_secret,
    queue_arn, receive_sqs_event, sqs, stack, unique,
};
use serde_json::{Value, json};

const PASSWORD: &str = "sam-local password";

/// `bash infra/scripts/sam-local.sh invoke <function> ...` with the local stack's AWS settings;
/// returns the function's response (the last line SAM prints on stdout) and SAM's log.
async fn sam_local_invoke(
    function: &str,
    event: &Path,
    env_vars: &Path,
    bootstraps: &Path,
    work: &Path,
) -> (Value, String) {
    let mut command = Command::new("bash");
    command
        .current_dir(local_stack::repo_root())
        .arg("infra/scripts/sam-local.sh")
        .args(["invoke", function, "--event"])
        .arg(event)
        .arg("--env-vars")
        .arg(env_vars)
        .arg("--bootstraps")
        .arg(bootstraps)
        .arg("--work")
        .arg(work)
        .envs(stack().moto().env());
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .unwrap()
        .expect("run bash infra/scripts/sam-local.sh");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let log = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(
        output.status.success(),
        "sam-local.sh invoke {function} failed ({}):\n{log}\n{stdout}",
        output.status
    );
    let response = stdout
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .and_then(|l| serde_json::from_str(l).ok())
        .unwrap_or_else(|| panic!("no JSON response from {function}:\n{stdout}\n{log}"));
    (response, log)
}

async fn messages_in(user: &str, folder: &str) -> Vec<local_stack::dovecot::StoredMessage> {
    let (dovecot, user, folder) = (
        stack().dovecot().clone(),
        user.to_owned(),
        folder.to_owned(),
    );
    tokio::task::spawn_blocking(move || dovecot.list_messages(&user, &folder).unwrap_or_default())
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sam_local_invoke_runs_both_functions_against_the_local_stack() {
    let bootstraps: PathBuf = tokio::task::spawn_blocking(|| {
        workspace_binary("send-notifications", "send-notifications")
            .and_then(|_| workspace_binary("poll-mailboxes", "poll-mailboxes"))
    })
    .await
    .unwrap()
    .expect("build the bootstraps")
    .parent()
    .unwrap()
    .to_path_buf();
    let work = tempfile::tempdir().unwrap();

    // The world: an account (ROPC at the identity stand-in), the thread-marker key, a state
    // table, the notification queue and its DLQ, a customer mailbox and a helpdesk mailbox.
    let account = new_password_account("sam-helpdesk", PASSWORD)
        .await
        .unwrap();
    let thread_key_secret = unique("sam-thread-key");
    put_secret(&thread_key_secret, &format!("{}-key", unique("sam")))
        .await
        .unwrap();
    let table = create_state_table("sam-state").await.unwrap();
    let (queue_url, dlq_url) = create_queue_with_dlq(&unique("sam-notifications"), 5)
        .await
        .unwrap();
    let arn = queue_arn(&queue_url).await.unwrap();
    let customer = mailbridge_tests::mail_recipient("sam-customer");
    let ticket = "7301";
    let sink = unique("sam-sink");
    let mailbox = unique("sam-mailbox");
    let env_vars = json!({
        "SendNotificationsFunction": {
            "AWS_ENDPOINT_URL": stack().moto().endpoint_url,
            "MAILBRIDGE_STATE_TABLE": table,
            "MAILBRIDGE_DLQ_URL": dlq_url,
            "MAILBRIDGE_THREAD_KEY_SECRET": thread_key_secret,
            "MAILBRIDGE_GRAPH_URL": stack().graph().v1_url(),
            // the Graph and identity stand-ins listen on loopback
            "MAILBRIDGE_ALLOW_LOCAL_TARGETS": "true",
        },
        "PollMailboxesFunction": {
            "AWS_ENDPOINT_URL": stack().moto().endpoint_url,
            "MAILBRIDGE_STATE_TABLE": table,
            "MAILBRIDGE_THREAD_KEY_SECRET": thread_key_secret,
            // a host path: the script copies it under the function's CodeUri (/var/task)
            "MAILBRIDGE_IMAP_CA_FILE": stack().dovecot().ca_pem_path,
            // Dovecot and the ticket stand-in listen on loopback
            "MAILBRIDGE_ALLOW_LOCAL_TARGETS": "true",
        },
    });
    let env_file = work.path().join("env-vars.json");
    std::fs::write(&env_file, env_vars.to_string()).unwrap();

    // 1. A batch sent: the notification goes through the Graph stand-in into Dovecot.
    let notification = json!({
        "version": 1,
        "id": unique("sam-notification"),
        "account": account.secret_name,
        "to": [{"address": customer, "name": "A Customer"}],
        "subject": "Your ticket was updated",
        "body": {"content_type": "text", "content": "A technician visits tomorrow at 10:00."},
        "ticket_number": ticket,
    });
    sqs()
        .send_message()
        .queue_url(&queue_url)
        .message_body(notification.to_string())
        .send()
        .await
        .unwrap();
    let batch = receive_sqs_event(&queue_url, &arn, 1).await;
    let batch_file = work.path().join("batch.json");
    std::fs::write(&batch_file, serde_json::to_string(&batch).unwrap()).unwrap();
    let (response, log) = sam_local_invoke(
        "SendNotificationsFunction",
        &batch_file,
        &env_file,
        &bootstraps,
        work.path(),
    )
    .await;
    assert_eq!(response, json!({"batchItemFailures": []}), "{log}");
    assert!(
        log.contains("\"NotificationsSent\":1"),
        "the EMF line of the run in the container: {log}"
    );
    assert_eq!(stack().graph().accepted(&account.upn).len(), 1);
    let delivered = messages_in(&customer, "INBOX").await;
    assert_eq!(delivered.len(), 1, "delivered into the customer's mailbox");
    let sent = mail_parser::MessageParser::default()
        .parse(&delivered[0].raw)
        .unwrap();
    let sent_id = sent.message_id().unwrap().to_owned();
    let sent_text = sent.body_text(0).unwrap().into_owned();
    assert!(
        sent_text.contains(&format!("[ref:{ticket}.")),
        "{sent_text}"
    );

    // 2. A poll that makes a ticket: the customer's reply, threaded by the verified marker.
    let quoted: String = sent_text.lines().map(|l| format!("> {l}\r\n")).collect();
    let reply = format!(
        "From: A Customer <{customer}>\r\nTo: {upn}\r\nSubject: Re: {subject}\r\n\
         Date: {date}\r\nMessage-ID: <{id}@customer.example>\r\nIn-Reply-To: <{sent_id}>\r\n\
         References: <{sent_id}>\r\nMIME-Version: 1.0\r\n\
         Content-Type: text/plain; charset=utf-8\r\n\r\n10:00 works, thanks.\r\n\r\n{quoted}",
        upn = account.upn,
        subject = sent.subject().unwrap_or_default(),
        date = chrono::Utc::now().to_rfc2822(),
        id = unique("sam-reply"),
    );
    let (dovecot, upn) = (stack().dovecot().clone(), account.upn.clone());
    tokio::task::spawn_blocking(move || dovecot.deliver_to(&upn, "INBOX", reply.as_bytes()))
        .await
        .unwrap()
        .unwrap();
    mailbridge::state_table::put_mailbox_config(
        &dynamodb(),
        &table,
        &mailbox,
        &json!({
            "user": account.upn,
            "account": &account.secret_name["mailbridge/".len()..],
            "host": "localhost",
            "port": stack().dovecot().imaps_port,
            "ticket_api_url": stack().tickets().sink_url(&sink),
        }),
        &mailbridge::mailbox::TargetPolicy::local(),
    )
    .await
    .unwrap();
    let poll_event = work.path().join("poll.json");
    std::fs::write(
        &poll_event,
        json!({"source": "mailbridge.manual", "mailboxes": [mailbox]}).to_string(),
    )
    .unwrap();
    let (report, log) = sam_local_invoke(
        "PollMailboxesFunction",
        &poll_event,
        &env_file,
        &bootstraps,
        work.path(),
    )
    .await;
    assert_eq!(report["tickets_created"], 1, "{report}\n{log}");
    let tickets = stack().tickets().tickets(&sink);
    assert_eq!(tickets.len(), 1, "{log}");
    let draft = &tickets[0].body["draft"];
    assert_eq!(draft["ticket_number"], ticket, "{draft}");
    assert!(
        matches!(
            draft["thread_source"].as_str(),
            Some("marker" | "references")
        ),
        "threaded by the HMAC-verified marker, not just the subject: {draft}"
    );
    assert_eq!(messages_in(&account.upn, "Processed").await.len(), 1);

    // 3. A rerun that finds the duplicates: the same batch again sends nothing.
    let (response, log) = sam_local_invoke(
        "SendNotificationsFunction",
        &batch_file,
        &env_file,
        &bootstraps,
        work.path(),
    )
    .await;
    assert_eq!(response, json!({"batchItemFailures": []}), "{log}");
    assert!(
        log.contains("\"outcome\":\"duplicate\""),
        "the rerun names the duplicate: {log}"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        stack().graph().accepted(&account.upn).len(),
        1,
        "not sent twice"
    );
    assert_eq!(messages_in(&customer, "INBOX").await.len(), 1);
}
