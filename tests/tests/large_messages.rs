//! Large outgoing messages of the JSON kind, end to end: attachments stored in the message
//! bucket (moto S3) and referenced by `content_ref`, sent by the send-notifications batch logic
//! through the Graph stand-in (one `sendMail`, or the draft route with upload sessions) into the
//! recipient's Dovecot mailbox; the send size limit (the stack's, or the account's own
//! `max_message_bytes`); and the draft route's faults as Graph produces them.

use std::time::Duration;

use base64::Engine as _;
use mail_parser::MimeHeaders as _;
use mailbridge::message_store::{MessageStore as _, S3MessageStore};
use mailbridge::notification::ObjectRef;
use mailbridge_tests::sender::Sender;
use mailbridge_tests::{
    bucket_keys, create_bucket, create_queue_with_dlq, create_state_table, sqs, stack, unique,
    wait_for_inbox,
};
use send_notifications::settings::BatchSettings;
use send_notifications::{BatchReport, Outcome, process_batch};

const THREAD_KEY: &str = "large-messages-test-thread-key-01";

/// One test's world: an account at the identity stand-in (with `Mail.ReadWrite` for the draft
/// route), a queue pair, a bucket, a state table.
struct World {
    upn: String,
    account: String,
    queue_url: String,
    queue_arn: String,
    dlq_url: String,
    bucket: String,
    table: String,
}

impl World {
    async fn new() -> World {
        let account = mailbridge_tests::new_password_account_consented(
            "helpdesk",
            "pw-large-1",
            &["Mail.ReadWrite"],
        )
        .await
        .expect("account");
        let (queue_url, dlq_url) = create_queue_with_dlq(&unique("large"), 5).await.unwrap();
        World {
            upn: account.upn,
            account: account.secret_name,
            queue_arn: mailbridge_tests::queue_arn(&queue_url).await.unwrap(),
            queue_url,
            dlq_url,
            bucket: create_bucket("files").await.unwrap(),
            table: create_state_table("large-state").await.unwrap(),
        }
    }

    /// Store `bytes` in the bucket, as a producer does before it enqueues the reference.
    async fn store(&self, bytes: &[u8]) -> ObjectRef {
        S3MessageStore::new(mailbridge_tests::s3())
            .put(&self.bucket, &format!("files/{}", unique("f")), bytes)
            .await
            .unwrap()
    }

    /// A JSON notification to `to` with one file by reference and a small one inline.
    fn notification(&self, to: &str, file: &ObjectRef, ticket: &str) -> serde_json::Value {
        serde_json::json!({
            "version": 1,
            "id": unique("n"),
            "account": self.account,
            "to": [{"address": to}],
            "subject": "Your logs",
            "body": {"content_type": "text", "content": "The logs you asked for are attached."},
            "ticket_number": ticket,
            "attachments": [
                {"name": "notes.txt", "content_type": "text/plain",
                 "content_base64": base64::engine::general_purpose::STANDARD.encode("see the zip")},
                {"name": "logs.bin", "content_type": "application/octet-stream", "content_ref": file}
            ]
        })
    }

    async fn enqueue(&self, notification: &serde_json::Value) {
        sqs()
            .send_message()
            .queue_url(&self.queue_url)
            .message_body(notification.to_string())
            .send()
            .await
            .unwrap();
    }

    /// Run send-notifications over `n` queued messages with `settings`.
    async fn send_queued(&self, n: usize, settings: BatchSettings) -> BatchReport {
        let event = mailbridge_tests::receive_sqs_event(&self.queue_url, &self.queue_arn, n).await;
        let deps = Sender::on_stack(&self.table, &self.dlq_url, THREAD_KEY).deps(BatchSettings {
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

    /// Set the account secret's `max_message_bytes`.
    async fn set_max_message_bytes(&self, bytes: usize) {
        let json = mailbridge_tests::get_secret(&self.account).await.unwrap();
        let mut secret = mailbridge::token::AccountSecret::parse(&self.account, &json).unwrap();
        secret.max_message_bytes = Some(bytes);
        mailbridge_tests::put_secret(&self.account, &secret.to_json())
            .await
            .unwrap();
    }
}

/// Bytes that show any reordering or loss.
fn file(size: usize) -> Vec<u8> {
    (0..size).map(|i| (i % 251) as u8).collect()
}

/// The delivered message has both attachments whole and the ticket's thread marker.
fn assert_arrived_whole(delivered: &[u8], size: usize, ticket: &str) {
    let parsed = mail_parser::MessageParser::default()
        .parse(delivered)
        .unwrap();
    assert_eq!(
        parsed.subject(),
        Some(format!("[Ticket#{ticket}] Your logs").as_str())
    );
    let attachments: Vec<_> = parsed.attachments().collect();
    assert_eq!(attachments.len(), 2, "both attachments arrived");
    let notes = attachments
        .iter()
        .find(|a| a.attachment_name() == Some("notes.txt"))
        .expect("notes.txt");
    assert_eq!(notes.contents(), b"see the zip");
    let logs = attachments
        .iter()
        .find(|a| a.attachment_name() == Some("logs.bin"))
        .expect("logs.bin");
    assert_eq!(logs.contents().len(), size);
    assert!(
        logs.contents() == file(size).as_slice(),
        "the file's bytes are the producer's"
    );
}

fn parked_reason(report: &BatchReport) -> &send_notifications::ports::ParkReason {
    match &report.messages[0].outcome {
        Outcome::Parked { reason } => reason,
        other => panic!("expected parked, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_1_mib_json_attachment_by_reference_goes_in_one_send_mail_and_its_object_is_deleted() {
    let w = World::new().await;
    let customer = mailbridge_tests::mail_recipient("customer");
    let size = 1024 * 1024;
    let object = w.store(&file(size)).await;
    w.enqueue(&w.notification(&customer, &object, "7001")).await;
    let report = w.send_queued(1, BatchSettings::default()).await;
    assert_eq!(report.metrics.sent, 1, "{:?}", report.messages);
    let accepted = stack().graph().accepted(&w.upn);
    assert_eq!(accepted.len(), 1);
    assert_eq!(accepted[0].path, "me", "one JSON sendMail");
    assert_arrived_whole(&wait_for_inbox(&customer, 1).await[0].raw, size, "7001");
    assert!(
        bucket_keys(&w.bucket).await.unwrap().is_empty(),
        "deleted once sent"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_20_mib_json_attachment_goes_through_a_draft_and_upload_session_and_arrives_whole() {
    let w = World::new().await;
    let customer = mailbridge_tests::mail_recipient("customer");
    let size = 20 * 1024 * 1024;
    let object = w.store(&file(size)).await;
    w.enqueue(&w.notification(&customer, &object, "7002")).await;
    let report = w.send_queued(1, BatchSettings::default()).await;
    assert_eq!(report.metrics.sent, 1, "{:?}", report.messages);
    let accepted = stack().graph().accepted(&w.upn);
    assert_eq!(accepted.len(), 1);
    assert!(
        accepted[0].path.starts_with("messages/") && accepted[0].path.ends_with("/send"),
        "sent as a draft: {}",
        accepted[0].path
    );
    assert_eq!(accepted[0].request["attachments"], 2);
    assert_eq!(stack().graph().draft_count(&w.upn), 0, "no draft left");
    assert_arrived_whole(&wait_for_inbox(&customer, 1).await[0].raw, size, "7002");
    assert!(
        bucket_keys(&w.bucket).await.unwrap().is_empty(),
        "deleted once sent"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_json_notification_over_the_send_size_limit_is_parked_naming_size_and_limit() {
    let w = World::new().await;
    let customer = mailbridge_tests::mail_recipient("customer");
    let object = w.store(&file(6 * 1024 * 1024)).await;
    w.enqueue(&w.notification(&customer, &object, "7003")).await;
    let report = w
        .send_queued(
            1,
            BatchSettings {
                max_message_bytes: 5_000_000,
                ..BatchSettings::default()
            },
        )
        .await;
    assert_eq!(report.metrics.parked, 1, "{:?}", report.messages);
    let reason = parked_reason(&report);
    assert_eq!(reason.kind, "too-large");
    let named_size: usize = reason
        .reason
        .strip_prefix("the message is ")
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("names the size: {}", reason.reason));
    // as Exchange counts it: the file in base64
    let base64_size = (6 * 1024 * 1024usize).div_ceil(3) * 4;
    assert!(
        named_size > base64_size && named_size < base64_size + 4096,
        "{named_size} vs {base64_size}"
    );
    assert!(
        reason.reason.contains("at most 5000000 bytes")
            && reason.reason.contains("MAILBRIDGE_MAX_MESSAGE_BYTES"),
        "names the limit: {}",
        reason.reason
    );
    assert_eq!(stack().graph().request_count(&w.upn), 0, "nothing sent");
    assert_eq!(stack().graph().draft_count(&w.upn), 0);
    // kept for a redrive once the limit is raised (the lifecycle rule removes it otherwise)
    assert_eq!(bucket_keys(&w.bucket).await.unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_accounts_max_message_bytes_overrides_the_stacks_limit() {
    let w = World::new().await;
    w.set_max_message_bytes(2_000_000).await;
    let customer = mailbridge_tests::mail_recipient("customer");
    // 1.6 MiB: under the stack's 35 MB and under Graph's request limit, over the account's 2 MB
    let object = w.store(&file(1_600_000)).await;
    w.enqueue(&w.notification(&customer, &object, "7004")).await;
    let report = w.send_queued(1, BatchSettings::default()).await;
    assert_eq!(report.metrics.parked, 1, "{:?}", report.messages);
    let reason = parked_reason(&report);
    assert_eq!(reason.kind, "too-large");
    assert!(
        reason.reason.contains("at most 2000000 bytes")
            && reason.reason.contains("the account's max_message_bytes"),
        "names the account's limit: {}",
        reason.reason
    );
    assert_eq!(stack().graph().request_count(&w.upn), 0, "nothing sent");
    // raised above the message: the same notification goes out
    w.set_max_message_bytes(3_000_000).await;
    let parked = mailbridge_tests::parked::take_parked(&w.dlq_url, 1)
        .await
        .remove(0);
    w.enqueue(&serde_json::from_str(&parked).unwrap()).await;
    let report = w.send_queued(1, BatchSettings::default()).await;
    assert_eq!(report.metrics.sent, 1, "{:?}", report.messages);
    assert!(bucket_keys(&w.bucket).await.unwrap().is_empty());
}

// ---- the draft route's faults, as Graph produces them ----

use local_stack::graph::{DraftFault, DraftStep, RecordedRequest};

/// A 4 MiB file: over Graph's request limit as base64 (a draft), over 3 MB (an upload session
/// of two chunks).
const DRAFT_FILE: usize = 4 * 1024 * 1024;

impl World {
    /// Queue a notification with a [`DRAFT_FILE`] and send it; the recipient.
    async fn send_through_a_draft(&self, ticket: &str) -> (String, BatchReport) {
        let customer = mailbridge_tests::mail_recipient("customer");
        let object = self.store(&file(DRAFT_FILE)).await;
        self.enqueue(&self.notification(&customer, &object, ticket))
            .await;
        (
            customer,
            self.send_queued(1, BatchSettings::default()).await,
        )
    }

    /// The requests of one kind that reached this world's mailbox, in order.
    fn requests(&self, what: &str) -> Vec<RecordedRequest> {
        stack()
            .graph()
            .request_log(&self.upn)
            .into_iter()
            .filter(|r| r.what == what)
            .collect()
    }

    fn statuses(&self, what: &str) -> Vec<u16> {
        self.requests(what).iter().map(|r| r.status).collect()
    }

    /// Sent once, through one draft, nothing left behind, arrived whole and once.
    async fn assert_sent_once(&self, customer: &str, report: &BatchReport, ticket: &str) {
        assert_eq!(report.metrics.sent, 1, "{:?}", report.messages);
        assert_eq!(
            report.messages[0].resent_after_ambiguous_answer, 0,
            "{:?}",
            report.messages
        );
        assert_eq!(stack().graph().accepted(&self.upn).len(), 1, "one copy out");
        assert_eq!(
            self.statuses("create draft"),
            vec![201],
            "one draft, reused"
        );
        assert_eq!(stack().graph().draft_count(&self.upn), 0, "no draft left");
        let delivered = wait_for_inbox(customer, 1).await;
        assert_arrived_whole(&delivered[0].raw, DRAFT_FILE, ticket);
        assert!(bucket_keys(&self.bucket).await.unwrap().is_empty());
    }
}

/// The time between the first request of `what` (refused) and the next one.
fn gap(requests: &[RecordedRequest]) -> Duration {
    assert!(requests.len() >= 2, "{requests:?}");
    requests[1].at - requests[0].at
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_on_create_upload_session_is_waited_out_and_the_draft_reused() {
    let w = World::new().await;
    stack().graph().draft_fault(
        &w.upn,
        DraftStep::CreateUploadSession,
        DraftFault::Throttle429 {
            retry_after_secs: 2,
        },
        1,
    );
    let (customer, report) = w.send_through_a_draft("7101").await;
    w.assert_sent_once(&customer, &report, "7101").await;
    assert_eq!(w.statuses("createUploadSession"), vec![429, 201]);
    // Graph's Retry-After is never undercut: the stand-in's own arrival times
    let waited = gap(&w.requests("createUploadSession"));
    assert!(
        waited >= Duration::from_secs(2),
        "asked to wait 2 s, came back after {waited:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_on_create_draft_is_waited_out() {
    let w = World::new().await;
    stack().graph().draft_fault(
        &w.upn,
        DraftStep::CreateDraft,
        DraftFault::Throttle429 {
            retry_after_secs: 1,
        },
        1,
    );
    let (customer, report) = w.send_through_a_draft("7102").await;
    assert_eq!(report.metrics.sent, 1, "{:?}", report.messages);
    assert_eq!(w.statuses("create draft"), vec![429, 201]);
    assert!(gap(&w.requests("create draft")) >= Duration::from_secs(1));
    assert_eq!(stack().graph().accepted(&w.upn).len(), 1);
    assert_eq!(stack().graph().draft_count(&w.upn), 0);
    assert_arrived_whole(
        &wait_for_inbox(&customer, 1).await[0].raw,
        DRAFT_FILE,
        "7102",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_503_on_an_upload_chunk_is_retried_and_the_upload_goes_on() {
    let w = World::new().await;
    stack().graph().draft_fault(
        &w.upn,
        DraftStep::UploadChunk,
        DraftFault::Fail503 {
            retry_after_secs: Some(1),
        },
        1,
    );
    let (customer, report) = w.send_through_a_draft("7103").await;
    w.assert_sent_once(&customer, &report, "7103").await;
    assert_eq!(w.statuses("createUploadSession"), vec![201], "same session");
    assert_eq!(w.statuses("upload chunk"), vec![503, 200, 201]);
    assert!(gap(&w.requests("upload chunk")) >= Duration::from_secs(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_upload_session_is_replaced_and_the_mail_arrives_once() {
    let w = World::new().await;
    stack()
        .graph()
        .draft_fault(&w.upn, DraftStep::UploadChunk, DraftFault::ExpireSession, 1);
    let (customer, report) = w.send_through_a_draft("7104").await;
    w.assert_sent_once(&customer, &report, "7104").await;
    assert_eq!(
        w.statuses("createUploadSession"),
        vec![201, 201],
        "a new session for the attachment, on the same draft"
    );
    assert_eq!(w.statuses("upload chunk"), vec![404, 200, 201]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accept_then_fail_on_send_is_recognised_and_the_mail_delivered_once() {
    let w = World::new().await;
    stack()
        .graph()
        .draft_fault(&w.upn, DraftStep::SendDraft, DraftFault::AcceptThenFail, 1);
    let (customer, report) = w.send_through_a_draft("7105").await;
    w.assert_sent_once(&customer, &report, "7105").await;
    // the lost answer: the draft is gone from Drafts, so it was sent; never sent again
    assert_eq!(w.statuses("send draft"), vec![504]);
    assert_eq!(w.statuses("get draft"), vec![404]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_503_on_send_leaves_the_draft_which_is_sent_once_after_the_wait() {
    let w = World::new().await;
    stack().graph().draft_fault(
        &w.upn,
        DraftStep::SendDraft,
        DraftFault::Fail503 {
            retry_after_secs: Some(1),
        },
        1,
    );
    let (customer, report) = w.send_through_a_draft("7106").await;
    w.assert_sent_once(&customer, &report, "7106").await;
    // the draft is still a draft: not sent, so sending it again cannot make a second copy
    assert_eq!(w.statuses("get draft"), vec![200]);
    assert_eq!(w.statuses("send draft"), vec![503, 202]);
    assert!(gap(&w.requests("send draft")) >= Duration::from_secs(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draft_step_refused_for_good_is_parked_naming_the_step_and_leaves_no_draft() {
    let w = World::new().await;
    // the mailbox's own MaxSendSize is below the message: Graph refuses the upload session
    stack().graph().set_max_send_bytes(&w.upn, 3_500_000);
    let (_, report) = w.send_through_a_draft("7107").await;
    assert_eq!(report.metrics.parked, 1, "{:?}", report.messages);
    let reason = parked_reason(&report);
    assert_eq!(reason.kind, "too-large");
    assert_eq!(
        reason.graph_code.as_deref(),
        Some("ErrorMessageSizeExceeded")
    );
    assert!(
        reason.reason.contains("attach \"logs.bin\""),
        "names the step: {}",
        reason.reason
    );
    assert!(stack().graph().accepted(&w.upn).is_empty());
    assert_eq!(
        stack().graph().draft_count(&w.upn),
        0,
        "the draft was deleted"
    );
    assert!(w.statuses("send draft").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_on_send_mail_is_waited_out_for_the_time_graph_asked() {
    let w = World::new().await;
    let customer = mailbridge_tests::mail_recipient("customer");
    let object = w.store(b"small").await;
    stack().graph().throttle_429(&w.upn, 1, 2);
    w.enqueue(&w.notification(&customer, &object, "7108")).await;
    let report = w.send_queued(1, BatchSettings::default()).await;
    assert_eq!(report.metrics.sent, 1, "{:?}", report.messages);
    assert_eq!(w.statuses("sendMail"), vec![429, 202]);
    let waited = gap(&w.requests("sendMail"));
    assert!(
        waited >= Duration::from_secs(2),
        "asked to wait 2 s, came back after {waited:?}"
    );
}
