//! `mailbridge sendmail` run AS A PROCESS, the way a helpdesk runs its `sendmail` command: the
//! message on stdin, options on the command line, configuration from the environment or a
//! config file, against moto (SQS, S3). What it queued is then sent by the send-notifications
//! batch logic through the Graph stand-in into the customer's Dovecot mailbox.

use std::process::Stdio;
use std::time::Duration;

use mailbridge_tests::sender::Sender;
use mailbridge_tests::{
    bucket_keys, create_bucket, create_queue_with_dlq, create_state_table, sqs, stack, unique,
    wait_for_inbox,
};
use send_notifications::process_batch;
use send_notifications::settings::BatchSettings;
use tokio::io::AsyncWriteExt as _;

const THREAD_KEY: &str = "sendmail-test-thread-key-0123456";

/// One test's world: an account at the identity stand-in, a queue pair, a bucket.
struct World {
    upn: String,
    account: String,
    queue_url: String,
    queue_arn: String,
    dlq_url: String,
    bucket: String,
}

struct Run {
    code: i32,
    stderr: String,
}

impl World {
    async fn new() -> World {
        // Mail.ReadWrite: messages over Graph's request limit go through a draft
        let account = mailbridge_tests::new_password_account_consented(
            "helpdesk",
            "pw-sendmail-1",
            &["Mail.ReadWrite"],
        )
        .await
        .expect("account");
        let (queue_url, dlq_url) = create_queue_with_dlq(&unique("sendmail"), 5).await.unwrap();
        let queue_arn = mailbridge_tests::queue_arn(&queue_url).await.unwrap();
        World {
            upn: account.upn,
            account: account.secret_name,
            queue_url,
            queue_arn,
            dlq_url,
            bucket: create_bucket("messages").await.unwrap(),
        }
    }

    /// Run `program args` with `stdin`, the moto environment and this world's configuration.
    async fn sendmail_as(
        &self,
        program: &std::path::Path,
        args: &[&str],
        stdin: &[u8],
        env: &[(&str, String)],
    ) -> Run {
        let mut command = tokio::process::Command::new(program);
        command
            .args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(stack().moto().env())
            .env("MAILBRIDGE_QUEUE_URL", &self.queue_url)
            .env("MAILBRIDGE_ACCOUNT", &self.account)
            .env("MAILBRIDGE_BUCKET", &self.bucket)
            .env("MAILBRIDGE_SENDMAIL_CONFIG", "/dev/null")
            .envs(env.iter().map(|(k, v)| (k.to_string(), v.clone())))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = command.spawn().expect("spawn sendmail");
        let mut input = child.stdin.take().unwrap();
        let data = stdin.to_vec();
        let writer = tokio::spawn(async move {
            // a child that stops reading (a refused message) closes the pipe: not an error here
            let _ = input.write_all(&data).await;
            drop(input);
        });
        let out = tokio::time::timeout(Duration::from_secs(120), child.wait_with_output())
            .await
            .expect("sendmail finished within 120 s")
            .unwrap();
        writer.await.unwrap();
        Run {
            code: out.status.code().unwrap_or(-1),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    async fn sendmail(&self, args: &[&str], stdin: &[u8]) -> Run {
        let mut full = vec!["sendmail"];
        full.extend_from_slice(args);
        self.sendmail_as(&mailbridge_tests::cli::binary(), &full, stdin, &[])
            .await
    }

    /// What is on the queue now (bodies), left there.
    async fn queued(&self) -> Vec<serde_json::Value> {
        let out = sqs()
            .receive_message()
            .queue_url(&self.queue_url)
            .max_number_of_messages(10)
            .visibility_timeout(0)
            .wait_time_seconds(1)
            .send()
            .await
            .unwrap();
        out.messages()
            .iter()
            .map(|m| serde_json::from_str(m.body().unwrap()).unwrap())
            .collect()
    }

    /// Run send-notifications over everything queued.
    async fn send_queued(&self, n: usize) -> send_notifications::BatchReport {
        self.send_queued_with(n, BatchSettings::default()).await
    }

    /// Run send-notifications over everything queued, with `settings`.
    async fn send_queued_with(
        &self,
        n: usize,
        settings: BatchSettings,
    ) -> send_notifications::BatchReport {
        let event = mailbridge_tests::receive_sqs_event(&self.queue_url, &self.queue_arn, n).await;
        let table = create_state_table("sendmail-state").await.unwrap();
        let deps = Sender::on_stack(&table, &self.dlq_url, THREAD_KEY).deps(BatchSettings {
            safety_margin: Duration::from_secs(1),
            message_bucket: Some(self.bucket.clone()),
            ..settings
        });
        process_batch(
            event,
            tokio::time::Instant::now() + Duration::from_secs(120),
            &deps,
        )
        .await
    }
}

/// A helpdesk reply of about `size` bytes (an attachment makes up the size), LF line ends as a
/// Unix program writes them.
fn reply(from: &str, to: &str, tag: &str, size: usize) -> Vec<u8> {
    use base64::Engine as _;
    let mut raw = format!(
        "From: Helpdesk <{from}>\nTo: <{to}>\nSubject: [helpdesk #{tag}] Re: VPN\nMessage-ID: <rt-{tag}@helpdesk.example>\nIn-Reply-To: <cust-{tag}@example.com>\nReferences: <cust-{tag}@example.com>\nMIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=\"b\"\n\n--b\nContent-Type: text/plain\n\nSee the log.\n--b\nContent-Type: application/octet-stream; name=log.bin\nContent-Transfer-Encoding: base64\n\n"
    );
    let bytes: Vec<u8> = (0..size * 3 / 4).map(|i| (i % 253) as u8).collect();
    for line in base64::engine::general_purpose::STANDARD
        .encode(bytes)
        .as_bytes()
        .chunks(76)
    {
        raw.push_str(std::str::from_utf8(line).unwrap());
        raw.push('\n');
    }
    raw.push_str("--b--\n");
    raw.into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_200_kib_reply_is_queued_inline_and_reaches_the_customer_with_its_headers() {
    let w = World::new().await;
    let customer = mailbridge_tests::mail_recipient("customer");
    let tag = unique("t");
    let raw = reply(&w.upn, &customer, &tag, 200 * 1024);
    let run = w.sendmail(&["-oi", "-t", "-f", &w.upn], &raw).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let queued = w.queued().await;
    assert_eq!(queued.len(), 1);
    assert_eq!(queued[0]["kind"], "mime");
    assert!(queued[0]["raw_base64"].is_string(), "inline");
    assert!(queued[0]["id"].as_str().unwrap().starts_with("mid."));
    let report = w.send_queued(1).await;
    assert_eq!(report.metrics.sent, 1, "{:?}", report.messages);
    let delivered = &wait_for_inbox(&customer, 1).await[0].raw;
    let parsed = mail_parser::MessageParser::default()
        .parse(delivered)
        .unwrap();
    assert_eq!(
        parsed.message_id(),
        Some(format!("rt-{tag}@helpdesk.example").as_str())
    );
    assert_eq!(
        parsed.references().as_text(),
        Some(format!("cust-{tag}@example.com").as_str())
    );
    assert_eq!(
        parsed.attachment(0).unwrap().contents().len(),
        200 * 1024 * 3 / 4
    );
}

/// The delivered message carries the helpdesk's headers and its attachment whole.
fn assert_arrived_whole(delivered: &[u8], tag: &str, size: usize) {
    let parsed = mail_parser::MessageParser::default()
        .parse(delivered)
        .unwrap();
    assert_eq!(
        parsed.message_id(),
        Some(format!("rt-{tag}@helpdesk.example").as_str())
    );
    assert_eq!(
        parsed.in_reply_to().as_text(),
        Some(format!("cust-{tag}@example.com").as_str())
    );
    assert_eq!(
        parsed.references().as_text(),
        Some(format!("cust-{tag}@example.com").as_str())
    );
    assert_eq!(
        parsed.subject(),
        Some(format!("[helpdesk #{tag}] Re: VPN").as_str())
    );
    let attachment = parsed.attachment(0).expect("the attachment arrived");
    let bytes = attachment.contents();
    assert_eq!(bytes.len(), size * 3 / 4);
    assert!(
        bytes.iter().enumerate().all(|(i, b)| *b == (i % 253) as u8),
        "the attachment's bytes are the helpdesk's"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_2_mib_reply_goes_by_s3_in_one_mime_request_and_its_object_is_deleted() {
    let w = World::new().await;
    let customer = mailbridge_tests::mail_recipient("customer");
    let tag = unique("t");
    let run = w
        .sendmail(
            &["-i", "-f", &w.upn, "--", &customer],
            &reply(&w.upn, &customer, &tag, 2 * 1024 * 1024),
        )
        .await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let queued = w.queued().await;
    assert_eq!(queued.len(), 1);
    assert!(queued[0]["raw_ref"]["key"].is_string(), "{:?}", queued[0]);
    assert_eq!(bucket_keys(&w.bucket).await.unwrap().len(), 1);
    let report = w.send_queued(1).await;
    assert_eq!(report.metrics.sent, 1, "{:?}", report.messages);
    let accepted = stack().graph().accepted(&w.upn);
    assert_eq!(accepted.len(), 1);
    assert_eq!(accepted[0].path, "me", "one MIME sendMail");
    assert_arrived_whole(
        &wait_for_inbox(&customer, 1).await[0].raw,
        &tag,
        2 * 1024 * 1024,
    );
    assert!(
        bucket_keys(&w.bucket).await.unwrap().is_empty(),
        "deleted once sent"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_20_mib_reply_goes_through_a_draft_and_upload_session_and_arrives_whole() {
    let w = World::new().await;
    let customer = mailbridge_tests::mail_recipient("customer");
    let tag = unique("t");
    let size = 20 * 1024 * 1024;
    let run = w
        .sendmail(&["-oi", "-t"], &reply(&w.upn, &customer, &tag, size))
        .await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let report = w.send_queued(1).await;
    assert_eq!(report.metrics.sent, 1, "{:?}", report.messages);
    let accepted = stack().graph().accepted(&w.upn);
    assert_eq!(accepted.len(), 1);
    assert!(
        accepted[0].path.starts_with("messages/") && accepted[0].path.ends_with("/send"),
        "sent as a draft: {}",
        accepted[0].path
    );
    assert_eq!(accepted[0].request["attachments"], 1);
    assert_eq!(stack().graph().draft_count(&w.upn), 0, "no draft left");
    assert_arrived_whole(&wait_for_inbox(&customer, 1).await[0].raw, &tag, size);
    assert!(bucket_keys(&w.bucket).await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_40_mib_reply_is_parked_naming_size_and_limit_and_a_redrive_sends_it() {
    let w = World::new().await;
    let customer = mailbridge_tests::mail_recipient("customer");
    let tag = unique("t");
    let size = 40 * 1024 * 1024;
    let raw = reply(&w.upn, &customer, &tag, size);
    let run = w.sendmail(&["-oi", "-t"], &raw).await;
    assert_eq!(
        run.code, 0,
        "queued: the stack's limit decides: {}",
        run.stderr
    );
    let report = w.send_queued(1).await;
    assert_eq!(report.metrics.parked, 1, "{:?}", report.messages);
    let send_notifications::Outcome::Parked { reason } = &report.messages[0].outcome else {
        panic!("{:?}", report.messages[0]);
    };
    assert_eq!(reason.kind, "too-large");
    let limit = send_notifications::settings::DEFAULT_MAX_MESSAGE_BYTES;
    let named_size: usize = reason
        .reason
        .strip_prefix("the message is ")
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("names the size: {}", reason.reason));
    assert!(
        named_size >= raw.len() && named_size < raw.len() + 200,
        "{named_size} vs {}",
        raw.len()
    );
    assert!(
        reason.reason.contains(&format!("at most {limit} bytes")),
        "names the limit: {}",
        reason.reason
    );
    assert_eq!(stack().graph().request_count(&w.upn), 0, "nothing sent");
    assert!(stack().graph().accepted(&w.upn).is_empty());
    assert_eq!(stack().graph().draft_count(&w.upn), 0);
    // the parked notification keeps its object: once the mailbox may send 45 MiB, a redrive
    // of the DLQ message sends it, and only then is the object deleted
    assert_eq!(bucket_keys(&w.bucket).await.unwrap().len(), 1);
    let parked = mailbridge_tests::parked::take_parked(&w.dlq_url, 1).await;
    assert_eq!(parked.len(), 1);
    sqs()
        .send_message()
        .queue_url(&w.queue_url)
        .message_body(&parked[0])
        .send()
        .await
        .unwrap();
    stack().graph().set_max_send_bytes(&w.upn, 45 * 1024 * 1024);
    let report = w
        .send_queued_with(
            1,
            BatchSettings {
                max_message_bytes: 45 * 1024 * 1024,
                ..BatchSettings::default()
            },
        )
        .await;
    assert_eq!(report.metrics.sent, 1, "{:?}", report.messages);
    assert_eq!(stack().graph().accepted(&w.upn).len(), 1);
    assert!(bucket_keys(&w.bucket).await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_exits_65_or_64_and_queues_nothing() {
    let w = World::new().await;
    let customer = mailbridge_tests::mail_recipient("customer");
    let cases: [(&[&str], &[u8], i32, &str); 5] = [
        (
            &["-t"],
            b"this is not a mail message\nat all\n",
            65,
            "malformed",
        ),
        (
            &["-t"],
            b"To: c@example.com\nSubject: x\n\nbody\n",
            65,
            "no sender",
        ),
        (
            &["-t", "-f", "h@contoso.com"],
            b"Subject: nobody\n\nbody\n",
            65,
            "no recipient",
        ),
        (&["-bs"], b"", 64, "-bs"),
        (&["-t", "-Q"], b"", 64, "unknown option"),
    ];
    for (args, input, code, says) in cases {
        let run = w.sendmail(args, input).await;
        assert_eq!(run.code, code, "{args:?}: {}", run.stderr);
        assert!(run.stderr.contains(says), "{args:?}: {}", run.stderr);
        assert_eq!(run.stderr.lines().count(), 1, "one line: {}", run.stderr);
    }
    let _ = customer;
    assert!(w.queued().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aws_unreachable_exits_75_and_a_retry_later_queues_the_message_once() {
    let w = World::new().await;
    let customer = mailbridge_tests::mail_recipient("customer");
    let raw = reply(&w.upn, &customer, &unique("t"), 1024);
    // nothing listens on port 9 of 127.0.0.1
    let run = w
        .sendmail_as(
            &mailbridge_tests::cli::binary(),
            &["sendmail", "-t", "-i"],
            &raw,
            &[("AWS_ENDPOINT_URL", "http://127.0.0.1:9".to_owned())],
        )
        .await;
    assert_eq!(run.code, 75, "{}", run.stderr);
    assert!(run.stderr.contains("try again later"), "{}", run.stderr);
    assert!(w.queued().await.is_empty());
    // the helpdesk retries once AWS is back: queued, and sent once
    let run = w.sendmail(&["-t", "-i"], &raw).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let report = w.send_queued(1).await;
    assert_eq!(report.metrics.sent, 1, "{:?}", report.messages);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invoked_as_sendmail_with_a_config_file_it_queues_with_the_ticket_number() {
    let w = World::new().await;
    let dir = tempfile::tempdir().unwrap();
    let link = dir.path().join("sendmail");
    std::os::unix::fs::symlink(mailbridge_tests::cli::binary(), &link).unwrap();
    let config = dir.path().join("sendmail.conf");
    std::fs::write(
        &config,
        format!(
            "# as a helpdesk host would have it\nqueue_url = {}\naccount = {}\nticket_pattern = \\[helpdesk #([A-Za-z0-9-]+)\\]\n",
            w.queue_url, w.account
        ),
    )
    .unwrap();
    let customer = mailbridge_tests::mail_recipient("customer");
    let raw = reply(&w.upn, &customer, "4711", 512);
    let run = w
        .sendmail_as(
            &link,
            &["-oi", "-t", "-C", config.to_str().unwrap()],
            &raw,
            &[
                ("MAILBRIDGE_QUEUE_URL", String::new()),
                ("MAILBRIDGE_ACCOUNT", String::new()),
            ],
        )
        .await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let queued = w.queued().await;
    assert_eq!(queued.len(), 1);
    assert_eq!(queued[0]["ticket_number"], "4711");
    assert_eq!(queued[0]["from"], w.upn.as_str());
    let report = w.send_queued(1).await;
    assert_eq!(report.metrics.sent, 1, "{:?}", report.messages);
    let delivered =
        String::from_utf8_lossy(&wait_for_inbox(&customer, 1).await[0].raw).into_owned();
    let reference = mailbridge::mail::threading::ticket_reference("4711", THREAD_KEY.as_bytes());
    assert!(
        delivered.contains(&format!("X-Mailbridge-Ref: {reference}")),
        "{delivered}"
    );
}
