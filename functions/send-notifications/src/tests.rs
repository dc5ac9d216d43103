//! Unit tests of the batch logic against in-memory fakes of every port.

use crate::batch::{Deps, Outcome, process_batch};
use crate::ports::{ParkError, ParkReason, Parking, Visibility, VisibilityError};
use crate::settings::BatchSettings;
use async_trait::async_trait;
use aws_lambda_events::event::sqs::{SqsEvent, SqsMessage};
use mailbridge::graph::{GraphError, MailSender, OutgoingMail, OutgoingMime, SendAs, SendReceipt};
use mailbridge::message_store::{InMemoryMessageStore, MessageStore as _};
use mailbridge::state_table::InMemoryIdempotencyStore;
use mailbridge::thread_key::ThreadKey;
use mailbridge::token::{AccessToken, ScriptedTokens, TokenError};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

type ScriptedError = fn() -> GraphError;

/// Scripted Graph: per subject, a queue of errors to return before succeeding.
#[derive(Default)]
struct FakeGraph {
    latency: Duration,
    script: Mutex<HashMap<String, VecDeque<ScriptedError>>>,
    sent: Mutex<Vec<(SendAs, String, String)>>,
    in_flight: Mutex<HashMap<String, usize>>,
    max_in_flight: Mutex<HashMap<String, usize>>,
    /// Raw messages accepted through the MIME format.
    mimes: Mutex<Vec<Vec<u8>>>,
    /// Messages sent through the draft route.
    drafts: Mutex<Vec<mailbridge::graph_draft::DraftMail>>,
}

impl FakeGraph {
    fn answer(
        &self,
        send_as: &SendAs,
        subject: String,
        token: &AccessToken,
    ) -> Result<SendReceipt, GraphError> {
        use secrecy::ExposeSecret as _;
        let scripted = self
            .script
            .lock()
            .unwrap()
            .get_mut(&subject)
            .and_then(|q| q.pop_front());
        if let Some(make) = scripted {
            return Err(make());
        }
        self.sent.lock().unwrap().push((
            send_as.clone(),
            subject,
            token.secret.expose_secret().to_owned(),
        ));
        Ok(SendReceipt {
            request_id: Some("req-1".into()),
            client_request_id: "c".into(),
        })
    }
}

#[async_trait]
impl MailSender for FakeGraph {
    async fn send_mail(
        &self,
        token: &AccessToken,
        mail: &OutgoingMail,
        _timeout: Duration,
    ) -> Result<SendReceipt, GraphError> {
        let key = format!("{:?}", mail.send_as);
        {
            let mut f = self.in_flight.lock().unwrap();
            let now = f.entry(key.clone()).or_default();
            *now += 1;
            let mut max = self.max_in_flight.lock().unwrap();
            let m = max.entry(key.clone()).or_default();
            *m = (*m).max(*now);
        }
        tokio::time::sleep(self.latency).await;
        *self.in_flight.lock().unwrap().get_mut(&key).unwrap() -= 1;
        let subject = mail.request.message.subject.clone();
        self.answer(&mail.send_as, subject, token)
    }

    async fn send_mime(
        &self,
        token: &AccessToken,
        mail: &OutgoingMime,
        _timeout: Duration,
    ) -> Result<SendReceipt, GraphError> {
        let subject = mailbridge::mail::outgoing::read_outgoing(&mail.mime)
            .expect("send-notifications sends only checked messages")
            .subject
            .unwrap_or_default();
        let answer = self.answer(&mail.send_as, subject, token);
        if answer.is_ok() {
            self.mimes.lock().unwrap().push(mail.mime.clone());
        }
        answer
    }

    async fn send_draft(
        &self,
        token: &AccessToken,
        mail: &mailbridge::graph_draft::DraftMail,
        _deadline: tokio::time::Instant,
    ) -> Result<SendReceipt, mailbridge::graph_draft::DraftFailure> {
        let subject = match &mail.content {
            mailbridge::graph_draft::DraftContent::Mime(raw) => {
                mailbridge::mail::outgoing::read_outgoing(raw)
                    .expect("a checked message")
                    .subject
                    .unwrap_or_default()
            }
            mailbridge::graph_draft::DraftContent::Json(m) => m.subject.clone(),
        };
        let answer = self.answer(&mail.send_as, subject, token).map_err(|error| {
            mailbridge::graph_draft::DraftFailure {
                step: "send draft".into(),
                error,
                reached_send: true,
            }
        });
        if answer.is_ok() {
            self.drafts.lock().unwrap().push(mail.clone());
        }
        answer
    }
}

#[derive(Default)]
struct FakeParking {
    fail: bool,
    parked: Mutex<Vec<(String, ParkReason)>>,
}

#[async_trait]
impl Parking for FakeParking {
    async fn park(&self, body: &str, reason: &ParkReason) -> Result<(), ParkError> {
        if self.fail {
            return Err(ParkError {
                queue: "dlq".into(),
                detail: "AccessDenied".into(),
            });
        }
        self.parked
            .lock()
            .unwrap()
            .push((body.to_owned(), reason.clone()));
        Ok(())
    }
}

#[derive(Default)]
struct FakeVisibility {
    delays: Mutex<Vec<(String, i32)>>,
}

#[async_trait]
impl Visibility for FakeVisibility {
    async fn delay(&self, _arn: &str, handle: &str, seconds: i32) -> Result<(), VisibilityError> {
        self.delays
            .lock()
            .unwrap()
            .push((handle.to_owned(), seconds));
        Ok(())
    }
}

struct Harness {
    tokens: Arc<ScriptedTokens>,
    graph: Arc<FakeGraph>,
    store: Arc<InMemoryIdempotencyStore>,
    messages: Arc<InMemoryMessageStore>,
    parking: Arc<FakeParking>,
    visibility: Arc<FakeVisibility>,
    settings: BatchSettings,
}

impl Harness {
    fn new() -> Self {
        Harness {
            tokens: Arc::default(),
            graph: Arc::default(),
            store: Arc::default(),
            messages: Arc::default(),
            parking: Arc::default(),
            visibility: Arc::default(),
            settings: BatchSettings {
                safety_margin: Duration::from_secs(1),
                ..Default::default()
            },
        }
    }
    fn deps(&self) -> Deps {
        Deps {
            tokens: self.tokens.clone(),
            mail: self.graph.clone(),
            idempotency: self.store.clone(),
            messages: self.messages.clone(),
            parking: self.parking.clone(),
            visibility: self.visibility.clone(),
            thread_key: ThreadKey::new(b"test-key".to_vec()),
            settings: self.settings.clone(),
        }
    }
    fn script(&self, subject: &str, errors: Vec<ScriptedError>) {
        self.graph
            .script
            .lock()
            .unwrap()
            .insert(subject.to_owned(), errors.into());
    }
    async fn run(&self, messages: Vec<SqsMessage>, budget: Duration) -> crate::BatchReport {
        let mut event = SqsEvent::default();
        event.records = messages;
        process_batch(event, Instant::now() + budget, &self.deps()).await
    }
}

fn message(id: &str, body: serde_json::Value) -> SqsMessage {
    let mut m = SqsMessage::default();
    m.message_id = Some(id.to_owned());
    m.receipt_handle = Some(format!("rh-{id}"));
    m.body = Some(body.to_string());
    m.event_source_arn = Some("arn:aws:sqs:eu-west-1:123456789012:notifications".into());
    m
}

fn notification(subject: &str) -> serde_json::Value {
    serde_json::json!({
        "version": 1, "account": "mailbridge/contoso",
        "to": [{"address": "customer@example.com"}],
        "subject": subject, "body": {"content_type": "text", "content": "hello"}
    })
}

fn failures(report: &crate::BatchReport) -> Vec<String> {
    let mut ids: Vec<_> = report
        .response
        .batch_item_failures
        .iter()
        .map(|f| f.item_identifier.clone())
        .collect();
    ids.sort();
    ids
}

fn throttled() -> GraphError {
    GraphError::Throttled {
        retry_after: Some(Duration::from_secs(2)),
        code: "TooManyRequests".into(),
        request_id: Some("r429".into()),
    }
}
fn throttled_long() -> GraphError {
    GraphError::Throttled {
        retry_after: Some(Duration::from_secs(600)),
        code: "TooManyRequests".into(),
        request_id: None,
    }
}
fn unauthorized() -> GraphError {
    GraphError::Unauthorized {
        code: "InvalidAuthenticationToken".into(),
        message: "expired".into(),
        request_id: None,
    }
}
fn send_as_denied() -> GraphError {
    GraphError::Rejected {
        status: 403,
        code: "ErrorSendAsDenied".into(),
        message: "no".into(),
        request_id: Some("r403".into()),
    }
}

#[tokio::test(start_paused = true)]
async fn a_mixed_batch_reports_exactly_the_transient_failures_and_parks_the_invalid_ones() {
    let h = Harness::new();
    h.script("throttled for long", vec![throttled_long]);
    h.script("denied", vec![send_as_denied]);
    let mut invalid = notification("x");
    invalid["subject"] = "a\r\nBcc: x@example.com".into();
    let report = h
        .run(
            vec![
                message("ok", notification("fine")),
                message("bad", invalid),
                message("slow", notification("throttled for long")),
                message("denied", notification("denied")),
                message("junk", serde_json::json!("not an object")),
            ],
            Duration::from_secs(60),
        )
        .await;
    assert_eq!(failures(&report), vec!["slow"]);
    let parked = h.parking.parked.lock().unwrap();
    let kinds: Vec<_> = parked
        .iter()
        .map(|(_, r)| (r.sqs_message_id.as_str(), r.kind.as_str(), r.field.clone()))
        .collect();
    assert!(
        kinds.contains(&("bad", "invalid-message", Some("subject".into()))),
        "{kinds:?}"
    );
    assert!(
        kinds.contains(&("junk", "invalid-message", None)),
        "{kinds:?}"
    );
    let denied = parked
        .iter()
        .find(|(_, r)| r.sqs_message_id == "denied")
        .unwrap();
    assert_eq!(denied.1.graph_code.as_deref(), Some("ErrorSendAsDenied"));
    assert_eq!(denied.1.graph_request_id.as_deref(), Some("r403"));
    assert_eq!(report.metrics.sent, 1);
    assert_eq!(report.metrics.parked, 3);
    assert_eq!(report.metrics.retried, 1);
    assert_eq!(report.metrics.throttled, 1);
    // the failed send released its lease: a retry can claim it at once
    assert!(!h.store.is_completed("slow"));
}

#[tokio::test(start_paused = true)]
async fn retry_after_is_honoured_when_it_fits_the_deadline() {
    let h = Harness::new();
    h.script("busy", vec![throttled, throttled]);
    let started = Instant::now();
    let report = h
        .run(
            vec![message("m", notification("busy"))],
            Duration::from_secs(30),
        )
        .await;
    assert!(failures(&report).is_empty());
    assert_eq!(report.metrics.throttled, 2);
    assert!(Instant::now() - started >= Duration::from_secs(4));
    assert_eq!(h.graph.sent.lock().unwrap().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn retry_after_beyond_the_deadline_fails_fast() {
    let h = Harness::new();
    h.script("busy", vec![throttled]);
    let started = Instant::now();
    let report = h
        .run(
            vec![message("m", notification("busy"))],
            Duration::from_secs(3),
        )
        .await;
    assert_eq!(failures(&report), vec!["m"]);
    assert!(Instant::now() - started < Duration::from_secs(2));
}

#[tokio::test(start_paused = true)]
async fn a_401_invalidates_the_token_refreshes_once_and_retries_once() {
    let h = Harness::new();
    h.script("expired", vec![unauthorized]);
    let report = h
        .run(
            vec![message("m", notification("expired"))],
            Duration::from_secs(30),
        )
        .await;
    assert!(failures(&report).is_empty());
    assert_eq!(h.tokens.invalidations.load(Ordering::SeqCst), 1);
    assert_eq!(h.tokens.calls.load(Ordering::SeqCst), 2);
    assert_eq!(
        h.graph.sent.lock().unwrap()[0].2,
        "token-1",
        "sent with the refreshed token"
    );

    let h = Harness::new();
    h.script("refused", vec![unauthorized, unauthorized]);
    let report = h
        .run(
            vec![message("m", notification("refused"))],
            Duration::from_secs(30),
        )
        .await;
    assert_eq!(failures(&report), vec!["m"]);
    assert!(matches!(
        report.messages[0].outcome,
        Outcome::NeedsReauth { .. }
    ));
    assert_eq!(
        h.tokens.invalidations.load(Ordering::SeqCst),
        1,
        "only one refresh"
    );
}

#[tokio::test(start_paused = true)]
async fn an_account_needing_reauth_fails_with_a_long_visibility_delay() {
    let h = Harness::new();
    h.tokens
        .failing
        .lock()
        .unwrap()
        .insert("mailbridge/contoso".into(), |a| TokenError::NeedsReauth {
            account: a.into(),
            reason: "AADSTS700082: refresh token expired".into(),
        });
    let report = h
        .run(
            vec![
                message("a", notification("x")),
                message("b", notification("y")),
            ],
            Duration::from_secs(30),
        )
        .await;
    assert_eq!(failures(&report), vec!["a", "b"]);
    assert_eq!(report.metrics.accounts_need_reauth, 1);
    let delays = h.visibility.delays.lock().unwrap();
    assert_eq!(delays.len(), 2);
    assert!(delays.iter().all(|(_, s)| *s == 3600));
    assert!(h.parking.parked.lock().unwrap().is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_bad_account_secret_is_parked_and_a_token_outage_is_retried() {
    let h = Harness::new();
    h.tokens
        .failing
        .lock()
        .unwrap()
        .insert("mailbridge/contoso".into(), |a| TokenError::BadSecret {
            secret: a.into(),
            problem: "refresh_token is missing".into(),
        });
    let report = h
        .run(
            vec![message("a", notification("x"))],
            Duration::from_secs(30),
        )
        .await;
    assert!(failures(&report).is_empty());
    assert_eq!(
        h.parking.parked.lock().unwrap()[0].1.kind,
        "bad-account-secret"
    );

    let h = Harness::new();
    h.tokens
        .failing
        .lock()
        .unwrap()
        .insert("mailbridge/contoso".into(), |a| TokenError::Transient {
            account: a.into(),
            detail: "token endpoint 503".into(),
        });
    let report = h
        .run(
            vec![message("a", notification("x"))],
            Duration::from_secs(30),
        )
        .await;
    assert_eq!(failures(&report), vec!["a"]);
}

#[tokio::test(start_paused = true)]
async fn when_parking_fails_the_item_is_reported_as_failed() {
    let mut h = Harness::new();
    h.parking = Arc::new(FakeParking {
        fail: true,
        ..Default::default()
    });
    let report = h
        .run(
            vec![message("bad", serde_json::json!({"version": 1}))],
            Duration::from_secs(30),
        )
        .await;
    assert_eq!(failures(&report), vec!["bad"]);
    assert!(matches!(
        report.messages[0].outcome,
        Outcome::ParkFailed { .. }
    ));
}

#[tokio::test(start_paused = true)]
async fn a_redelivered_notification_is_not_sent_twice() {
    let h = Harness::new();
    let mut n = notification("once");
    n["id"] = "notification-1".into();
    let report = h
        .run(vec![message("first", n.clone())], Duration::from_secs(30))
        .await;
    assert!(failures(&report).is_empty());
    let report = h
        .run(vec![message("second", n.clone())], Duration::from_secs(30))
        .await;
    assert!(failures(&report).is_empty());
    assert_eq!(report.messages[0].outcome, Outcome::Duplicate);
    assert_eq!(h.graph.sent.lock().unwrap().len(), 1);
    // same id, different content: parked, not sent
    n["subject"] = "something else".into();
    let report = h
        .run(vec![message("third", n)], Duration::from_secs(30))
        .await;
    assert_eq!(h.parking.parked.lock().unwrap()[0].1.kind, "id-reused");
    assert!(failures(&report).is_empty());
}

#[tokio::test(start_paused = true)]
async fn at_most_n_sends_are_in_flight_per_mailbox() {
    let mut h = Harness::new();
    h.graph = Arc::new(FakeGraph {
        latency: Duration::from_millis(100),
        ..Default::default()
    });
    // `/users/{mailbox}/sendMail`: the shared mailbox is a Graph mailbox of its own
    h.tokens = Arc::new(ScriptedTokens {
        route: mailbridge::send_rights::SharedMailboxRoute::FullAccess,
        ..Default::default()
    });
    let mut messages = Vec::new();
    for i in 0..10 {
        messages.push(message(&format!("me{i}"), notification(&format!("me {i}"))));
        let mut shared = notification(&format!("shared {i}"));
        shared["from"] = "support@contoso.com".into();
        messages.push(message(&format!("sh{i}"), shared));
    }
    let started = Instant::now();
    let report = h.run(messages, Duration::from_secs(30)).await;
    assert!(failures(&report).is_empty());
    let max = h.graph.max_in_flight.lock().unwrap().clone();
    assert_eq!(max.values().copied().collect::<Vec<_>>(), vec![4, 4]);
    // 10 per mailbox at 4 in flight = 3 waves; both mailboxes in parallel
    let elapsed = Instant::now() - started;
    assert!(
        elapsed >= Duration::from_millis(300) && elapsed < Duration::from_millis(400),
        "{elapsed:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn on_the_send_as_route_a_shared_from_shares_the_users_graph_mailbox_limit() {
    // `/me/sendMail` with `from`: Graph counts every send against the user's own mailbox
    let mut h = Harness::new();
    h.graph = Arc::new(FakeGraph {
        latency: Duration::from_millis(100),
        ..Default::default()
    });
    let mut messages = Vec::new();
    for i in 0..6 {
        messages.push(message(&format!("me{i}"), notification(&format!("me {i}"))));
        let mut shared = notification(&format!("shared {i}"));
        shared["from"] = "support@contoso.com".into();
        messages.push(message(&format!("sh{i}"), shared));
    }
    let started = Instant::now();
    let report = h.run(messages, Duration::from_secs(30)).await;
    assert!(failures(&report).is_empty());
    let max = h.graph.max_in_flight.lock().unwrap().clone();
    assert_eq!(max.values().copied().collect::<Vec<_>>(), vec![4]);
    // 12 through one mailbox at 4 in flight = 3 waves
    let elapsed = Instant::now() - started;
    assert!(
        elapsed >= Duration::from_millis(300) && elapsed < Duration::from_millis(400),
        "{elapsed:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn near_the_deadline_nothing_new_starts_and_the_rest_is_reported() {
    let mut h = Harness::new();
    h.graph = Arc::new(FakeGraph {
        latency: Duration::from_millis(800),
        ..Default::default()
    });
    h.settings.max_in_flight_per_mailbox = 1;
    let messages: Vec<_> = (0..5)
        .map(|i| message(&format!("m{i}"), notification(&format!("s{i}"))))
        .collect();
    // 2.5 s budget, 1 s margin, 0.8 s per send, one at a time: m0 and m1 start, the rest must not.
    let report = h.run(messages, Duration::from_millis(2500)).await;
    assert_eq!(report.metrics.sent, 2);
    assert_eq!(failures(&report), vec!["m2", "m3", "m4"]);
    assert!(
        report.messages[2..]
            .iter()
            .all(|m| m.outcome == Outcome::NotStarted)
    );
}

#[tokio::test(start_paused = true)]
async fn ticket_mail_is_stamped_before_sending() {
    let h = Harness::new();
    let mut n = notification("Update");
    n["ticket_number"] = "4711".into();
    let report = h.run(vec![message("m", n)], Duration::from_secs(30)).await;
    assert!(failures(&report).is_empty());
    assert_eq!(h.graph.sent.lock().unwrap()[0].1, "[Ticket#4711] Update");
}

// ---- MIME notifications and the send-path faults ----

const RT_REPLY: &str = "From: Support <support@contoso.com>\nTo: customer@example.com\nMessage-ID: <rt-5.0-12-1@contoso.com>\nIn-Reply-To: <customer-1@example.com>\nReferences: <customer-1@example.com>\nSubject: [contoso #12] Re: printer\n\nFixed it.\n";

fn mime_notification(raw: &str) -> serde_json::Value {
    use base64::Engine as _;
    serde_json::json!({
        "version": 1, "kind": "mime", "account": "mailbridge/contoso",
        "from": "support@contoso.com", "ticket_number": "12",
        "raw_base64": base64::engine::general_purpose::STANDARD.encode(raw)
    })
}

#[tokio::test(start_paused = true)]
async fn a_mime_notification_goes_out_as_mime_with_its_headers_and_the_thread_marker() {
    let h = Harness::new();
    let report = h
        .run(
            vec![message("m1", mime_notification(RT_REPLY))],
            Duration::from_secs(30),
        )
        .await;
    assert!(failures(&report).is_empty(), "{:?}", report.messages);
    let mimes = h.graph.mimes.lock().unwrap().clone();
    assert_eq!(mimes.len(), 1);
    let sent = String::from_utf8(mimes[0].clone()).unwrap();
    let reference = mailbridge::mail::threading::ticket_reference("12", b"test-key");
    assert!(
        sent.starts_with(&format!("X-Mailbridge-Ref: {reference}\n")),
        "{sent}"
    );
    for kept in [
        "Message-ID: <rt-5.0-12-1@contoso.com>",
        "In-Reply-To: <customer-1@example.com>",
        "Subject: [contoso #12] Re: printer",
    ] {
        assert!(sent.contains(kept), "{kept} kept in {sent}");
    }
    assert!(
        sent.ends_with(&format!("[ref:{reference}]\n")),
        "footer in a plain single part"
    );
    assert_eq!(h.graph.sent.lock().unwrap()[0].0, SendAs::Me);
}

#[tokio::test(start_paused = true)]
async fn a_mime_notification_by_reference_is_read_checked_sent_and_its_object_deleted() {
    let h = Harness::new();
    let object = h
        .messages
        .put("mailbridge-messages", "m/1.eml", RT_REPLY.as_bytes())
        .await
        .unwrap();
    let mut by_ref = mime_notification(RT_REPLY);
    by_ref.as_object_mut().unwrap().remove("raw_base64");
    by_ref["raw_ref"] = serde_json::to_value(&object).unwrap();
    let mut missing = by_ref.clone();
    missing["raw_ref"]["key"] = "m/gone.eml".into();
    missing["id"] = "other".into();
    let report = h
        .run(
            vec![message("r1", by_ref), message("r2", missing)],
            Duration::from_secs(30),
        )
        .await;
    assert!(failures(&report).is_empty(), "{:?}", report.messages);
    assert_eq!(h.graph.mimes.lock().unwrap().len(), 1);
    assert!(
        h.messages.is_empty(),
        "the sent message's object is deleted"
    );
    let parked = h.parking.parked.lock().unwrap().clone();
    assert_eq!(parked.len(), 1);
    assert_eq!(parked[0].1.kind, "message-object");
    assert!(
        parked[0].1.reason.contains("does not exist"),
        "{:?}",
        parked[0].1
    );
}

#[tokio::test(start_paused = true)]
async fn a_stored_message_in_another_bucket_is_parked_unread() {
    let mut h = Harness::new();
    h.settings.message_bucket = Some("mailbridge-messages".into());
    let object = h
        .messages
        .put("someone-elses-bucket", "m/1.eml", RT_REPLY.as_bytes())
        .await
        .unwrap();
    let mut by_ref = mime_notification(RT_REPLY);
    by_ref.as_object_mut().unwrap().remove("raw_base64");
    by_ref["raw_ref"] = serde_json::to_value(&object).unwrap();
    let report = h
        .run(vec![message("r1", by_ref)], Duration::from_secs(30))
        .await;
    assert_eq!(report.metrics.parked, 1, "{:?}", report.messages);
    let parked = h.parking.parked.lock().unwrap().clone();
    assert_eq!(parked[0].1.kind, "message-object");
    assert_eq!(parked[0].1.field.as_deref(), Some("raw_ref.bucket"));
    assert!(
        parked[0].1.reason.contains("someone-elses-bucket")
            && parked[0].1.reason.contains("mailbridge-messages"),
        "{:?}",
        parked[0].1
    );
    assert!(h.graph.mimes.lock().unwrap().is_empty());
    assert_eq!(h.messages.len(), 1, "neither read nor deleted");
}

#[tokio::test(start_paused = true)]
async fn a_mime_message_whose_from_or_recipients_do_not_fit_is_parked_naming_why() {
    let h = Harness::new();
    let mut other_from = mime_notification(RT_REPLY);
    other_from["from"] = "someone@contoso.com".into();
    let no_recipient = mime_notification("From: support@contoso.com\nSubject: nobody\n\nx\n");
    let garbage = mime_notification("this is not a mail\n\nat all");
    let report = h
        .run(
            vec![
                message("a", other_from),
                message("b", no_recipient),
                message("c", garbage),
            ],
            Duration::from_secs(30),
        )
        .await;
    assert_eq!(report.metrics.parked, 3, "{:?}", report.messages);
    let parked = h.parking.parked.lock().unwrap().clone();
    let reason = |field: &str| {
        parked
            .iter()
            .find(|(_, r)| r.field.as_deref() == Some(field) && r.sqs_message_id != "c")
            .map(|(_, r)| r.reason.clone())
    };
    assert!(
        reason("from")
            .unwrap()
            .contains("is not the message's From")
    );
    assert!(reason("raw_base64").unwrap().contains("no recipient"));
    let garbage = parked
        .iter()
        .find(|(_, r)| r.sqs_message_id == "c")
        .unwrap();
    assert!(
        garbage.1.reason.contains("header line 1"),
        "{:?}",
        garbage.1
    );
    assert!(h.graph.mimes.lock().unwrap().is_empty());
}

fn gateway_timeout() -> GraphError {
    GraphError::Unavailable {
        status: 504,
        retry_after: Some(Duration::from_secs(1)),
        code: "UnknownError".into(),
        message: String::new(),
        request_id: Some("r504".into()),
    }
}

#[tokio::test(start_paused = true)]
async fn a_resend_after_a_5xx_is_counted_and_a_5xx_without_a_resend_keeps_the_claim() {
    let h = Harness::new();
    h.script("maybe sent", vec![gateway_timeout]);
    let report = h
        .run(
            vec![message("a", notification("maybe sent"))],
            Duration::from_secs(30),
        )
        .await;
    assert!(failures(&report).is_empty());
    assert_eq!(report.metrics.resent_after_ambiguous_answer, 1);
    assert_eq!(report.messages[0].resent_after_ambiguous_answer, 1);

    // no time to wait: retried by SQS, and the claim is kept, so the redelivery waits for the
    // lease instead of sending a silent second copy
    h.script("maybe sent too", vec![gateway_timeout]);
    let mut settings = h.settings.clone();
    settings.max_retry_after_waits = 0;
    let h2 = Harness { settings, ..h };
    let report = h2
        .run(
            vec![message("b", notification("maybe sent too"))],
            Duration::from_secs(30),
        )
        .await;
    assert_eq!(failures(&report), vec!["b".to_owned()]);
    let again = h2
        .run(
            vec![message("b", notification("maybe sent too"))],
            Duration::from_secs(30),
        )
        .await;
    assert!(
        matches!(&again.messages[0].outcome, Outcome::Retry { reason, .. } if reason.contains("another invocation")),
        "{:?}",
        again.messages[0].outcome
    );
}

fn daily_quota() -> GraphError {
    GraphError::SendingQuota {
        status: 429,
        code: "ErrorSubmissionQuotaExceeded".into(),
        message: "over the daily recipient limit".into(),
        retry_after: None,
        request_id: Some("rq".into()),
    }
}

fn message_rate() -> GraphError {
    GraphError::SendingQuota {
        status: 429,
        code: "ErrorExceededMessageLimit".into(),
        message: "30 messages per minute".into(),
        retry_after: None,
        request_id: None,
    }
}

fn mailbox_full() -> GraphError {
    GraphError::Rejected {
        status: 403,
        code: "ErrorQuotaExceeded".into(),
        message: "The mailbox is full.".into(),
        request_id: Some("rf".into()),
    }
}

#[tokio::test(start_paused = true)]
async fn sending_quotas_delay_the_message_and_a_full_mailbox_parks_it() {
    let h = Harness::new();
    h.script("daily", vec![daily_quota]);
    h.script("rate", vec![message_rate]);
    h.script("full", vec![mailbox_full]);
    let report = h
        .run(
            vec![
                message("d", notification("daily")),
                message("r", notification("rate")),
                message("f", notification("full")),
            ],
            Duration::from_secs(30),
        )
        .await;
    assert_eq!(failures(&report), vec!["d".to_owned(), "r".to_owned()]);
    assert_eq!(report.metrics.quota_delayed, 2);
    assert_eq!(report.metrics.parked, 1);
    let mut delays = h.visibility.delays.lock().unwrap().clone();
    delays.sort();
    assert_eq!(
        delays,
        vec![("rh-d".to_owned(), 10800), ("rh-r".to_owned(), 300)]
    );
    let parked = h.parking.parked.lock().unwrap().clone();
    assert_eq!(parked[0].1.kind, "sender-mailbox-full");
    assert_eq!(
        parked[0].1.graph_code.as_deref(),
        Some("ErrorQuotaExceeded")
    );
}
