//! Crashes and ambiguous answers on the send path: a crash after the claim, a crash after Graph
//! accepted before the record, a Graph timeout after acceptance, Graph accepting then failing.

use super::*;

/// Everything written through `tracing` while a future runs, as text.
#[derive(Clone, Default)]
struct LogCapture(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for LogCapture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl LogCapture {
    fn subscriber(&self) -> impl tracing::Subscriber + Send + Sync + use<> {
        let sink = self.clone();
        tracing_subscriber::fmt()
            .json()
            .with_max_level(tracing::Level::INFO)
            .with_writer(move || sink.clone())
            .finish()
    }
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

/// Run a batch as a "process" that crashes once `crashed()` holds: the task is aborted there,
/// as a killed Lambda would stop, leaving whatever state it had written.
/// The claim's lease runs out (simulated in the state table) and SQS redelivers the batch:
/// the report and the logs of that invocation.
async fn redeliver_after_the_lease(
    idempotency: &CrashingIdempotency,
    event: &SqsEvent,
    deps: &Deps,
) -> (send_notifications::BatchReport, LogCapture) {
    use tracing::instrument::WithSubscriber as _;
    idempotency.expire_leases().await;
    let logs = LogCapture::default();
    let report = process_batch(
        event.clone(),
        Instant::now() + Duration::from_secs(30),
        deps,
    )
    .with_subscriber(logs.subscriber())
    .await;
    (report, logs)
}

/// After an ambiguous first attempt (Graph has the mail, the claim was kept): an early
/// redelivery, while the lease lives, sends nothing; the one after the lease is a named resend
/// (log line and metric) with the same Message-ID. `what` labels the assertions.
async fn the_claim_holds_then_one_named_resend_follows(
    what: &str,
    graph: &local_stack::graph::GraphStandIn,
    upn: &str,
    idempotency: &CrashingIdempotency,
    event: &SqsEvent,
    deps: &Deps,
) -> send_notifications::BatchReport {
    let report = process_batch(
        event.clone(),
        Instant::now() + Duration::from_secs(30),
        deps,
    )
    .await;
    assert!(
        matches!(&report.messages[0].outcome, Outcome::Retry { reason, .. } if reason.contains("another invocation")),
        "{what}: the claim of the unfinished attempt must be kept: {report:?}"
    );
    assert_eq!(
        graph.accepted(upn).len(),
        1,
        "{what}: no silent second copy"
    );

    let (report, logs) = redeliver_after_the_lease(idempotency, event, deps).await;
    assert!(
        matches!(report.messages[0].outcome, Outcome::Sent { .. }),
        "{what}: {report:?}"
    );
    assert!(report.messages[0].resumed_unfinished_claim, "{what}");
    assert_eq!(report.metrics.resent_after_unfinished_claim, 1, "{what}");
    assert!(
        logs.text()
            .contains("resending a notification whose earlier attempt never finished"),
        "{what}: {}",
        logs.text()
    );
    let ids: Vec<_> = graph
        .accepted(upn)
        .iter()
        .map(|a| a.request["message"]["internetMessageId"].clone())
        .collect();
    assert_eq!(ids.len(), 2, "{what}: exactly one duplicate");
    assert_eq!(
        ids[0], ids[1],
        "{what}: both copies carry the same Message-ID"
    );
    report
}

async fn run_until_crash(deps: Arc<Deps>, event: SqsEvent, crashed: impl Fn() -> bool) {
    let task = tokio::spawn(async move {
        process_batch(event, Instant::now() + Duration::from_secs(60), &deps).await
    });
    // Polled, not slept: up to 60 s for a loaded machine to reach the crash point.
    for _ in 0..3000 {
        if crashed() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(crashed(), "the crash point was never reached");
    task.abort();
    let _ = task.await;
}

/// SQS row "redelivery after a crash that leaves a live lease": the process dies after the
/// claim, before Graph. A redelivery while the lease lives is reported for retry (not sent,
/// not sent twice); once the lease has run out the redelivery takes it over, says so, and the
/// notification is sent exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_after_the_claim_leaves_a_live_lease_the_redelivery_waits_then_sends_once() {
    let (upn, account) = new_account("fm-crash-claim").await;
    let graph = stack().graph();
    // Outlives the crash and the first redelivery on any machine; its end is simulated.
    let lease = Duration::from_secs(600);
    let (idempotency, mail) = crash_points(lease).await;
    let deps = sqs_deps(idempotency.clone(), mail.clone()).await;
    let body = json!({
        "version": 1,
        "account": format!("mailbridge/{account}"),
        "to": [{"address": "customer@example.com"}],
        "subject": "crash after the claim",
        "body": {"content_type": "text", "content": "x"}
    });
    let event = event_for(std::slice::from_ref(&body)).await;

    // 1. Crash between the claim and Graph.
    mail.hang.store(true, std::sync::atomic::Ordering::SeqCst);
    let entered = mail.clone();
    run_until_crash(deps.clone(), event.clone(), move || {
        entered.entered.load(std::sync::atomic::Ordering::SeqCst) > 0
    })
    .await;
    mail.hang.store(false, std::sync::atomic::Ordering::SeqCst);
    assert_eq!(graph.accepted(&upn).len(), 0);

    // 2. Redelivered while the lease lives: retried, nothing sent.
    let report = process_batch(
        event.clone(),
        Instant::now() + Duration::from_secs(30),
        &deps,
    )
    .await;
    let outcome = &report.messages[0].outcome;
    assert!(
        matches!(outcome, Outcome::Retry { reason, .. } if reason.contains("another invocation is sending this notification")),
        "{outcome:?}"
    );
    assert_eq!(report.response.batch_item_failures.len(), 1);
    assert_eq!(
        graph.accepted(&upn).len(),
        0,
        "not sent while the lease lives"
    );

    // 3. The lease runs out: the redelivery resumes, logs it, sends once.
    let (report, logs) = redeliver_after_the_lease(&idempotency, &event, &deps).await;
    assert!(
        matches!(report.messages[0].outcome, Outcome::Sent { .. }),
        "{report:?}"
    );
    assert!(report.messages[0].resumed_unfinished_claim);
    assert_eq!(report.metrics.resent_after_unfinished_claim, 1);
    assert_eq!(
        report.metrics.emf("send-notifications")["NotificationsResentAfterUnfinishedClaim"],
        1
    );
    assert!(
        logs.text()
            .contains("resending a notification whose earlier attempt never finished"),
        "{}",
        logs.text()
    );
    assert_eq!(graph.accepted(&upn).len(), 1, "sent exactly once");

    // 4. Any later redelivery is a duplicate.
    let report = process_batch(event, Instant::now() + Duration::from_secs(30), &deps).await;
    assert!(
        matches!(report.messages[0].outcome, Outcome::Duplicate),
        "{report:?}"
    );
    assert_eq!(graph.accepted(&upn).len(), 1);
}

/// SQS row "redelivery after Graph 202, before the idempotency record": the process dies
/// after Graph accepted two notifications (one with a ticket number, one without) and before
/// their completion records. While the lease lives a redelivery sends nothing. After it, the
/// redelivery cannot know the mail went out (sendMail has no idempotency key; Mail.Send cannot
/// read Sent Items), so it sends again: exactly one duplicate each, named in the log and the
/// `NotificationsResentAfterUnfinishedClaim` metric, and both copies carry the same
/// deterministic internetMessageId so the receiving server can merge them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_after_graph_accepted_before_the_record_gives_at_most_one_duplicate_with_the_same_message_id()
 {
    let (upn, account) = new_account("fm-crash-202").await;
    let graph = stack().graph();
    // Outlives the crash and the first redelivery on any machine; its end is simulated.
    let lease = Duration::from_secs(600);
    let (idempotency, mail) = crash_points(lease).await;
    let deps = sqs_deps(idempotency.clone(), mail).await;
    let subjects = ["crash after 202 (ticket)", "crash after 202 (plain)"];
    let bodies = [
        json!({
            "version": 1,
            "account": format!("mailbridge/{account}"),
            "to": [{"address": "customer@example.com"}],
            "subject": subjects[0],
            "ticket_number": "4711",
            "body": {"content_type": "text", "content": "x"}
        }),
        json!({
            "version": 1,
            "account": format!("mailbridge/{account}"),
            "to": [{"address": "customer@example.com"}],
            "subject": subjects[1],
            "body": {"content_type": "text", "content": "x"}
        }),
    ];
    let event = event_for(&bodies).await;
    let copies = |subject: &str| -> Vec<String> {
        graph
            .accepted(&upn)
            .iter()
            .filter(|a| {
                a.request["message"]["subject"]
                    .as_str()
                    .is_some_and(|s| s.ends_with(subject))
            })
            .map(|a| {
                a.request["message"]["internetMessageId"]
                    .as_str()
                    .unwrap_or("(none)")
                    .to_string()
            })
            .collect()
    };

    // 1. Graph accepts both; the process dies before either completion record.
    idempotency
        .hang_in_complete
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let hung = idempotency.clone();
    run_until_crash(deps.clone(), event.clone(), move || {
        hung.hung.load(std::sync::atomic::Ordering::SeqCst) == 2
    })
    .await;
    idempotency
        .hang_in_complete
        .store(false, std::sync::atomic::Ordering::SeqCst);
    for subject in subjects {
        assert_eq!(copies(subject).len(), 1, "{subject}: accepted by Graph");
    }

    // 2. Redelivered while the lease lives: nothing sent twice.
    let report = process_batch(
        event.clone(),
        Instant::now() + Duration::from_secs(30),
        &deps,
    )
    .await;
    assert_eq!(report.response.batch_item_failures.len(), 2, "{report:?}");
    for subject in subjects {
        assert_eq!(
            copies(subject).len(),
            1,
            "{subject}: not resent under a live lease"
        );
    }

    // 3. After the lease: resent once each, named, with the same Message-ID.
    let (report, logs) = redeliver_after_the_lease(&idempotency, &event, &deps).await;
    assert!(report.response.batch_item_failures.is_empty(), "{report:?}");
    assert_eq!(report.metrics.sent, 2);
    assert_eq!(report.metrics.resent_after_unfinished_claim, 2);
    let resend_lines = logs
        .text()
        .lines()
        .filter(|l| l.contains("resending a notification whose earlier attempt never finished"))
        .count();
    assert_eq!(resend_lines, 2, "{}", logs.text());
    for subject in subjects {
        let ids = copies(subject);
        assert_eq!(ids.len(), 2, "{subject}: exactly one duplicate");
        assert!(
            ids[0].starts_with("<mb."),
            "{subject}: deterministic id {ids:?}"
        );
        assert_eq!(
            ids[0], ids[1],
            "{subject}: both copies carry the same Message-ID"
        );
    }

    // 4. Completed now: later redeliveries are duplicates.
    let report = process_batch(event, Instant::now() + Duration::from_secs(30), &deps).await;
    assert_eq!(report.metrics.duplicates, 2, "{report:?}");
    for subject in subjects {
        assert_eq!(copies(subject).len(), 2);
    }
}

/// SQS row "Graph timed out (the 202 may have been sent)": a timeout is ambiguous, so the
/// notification is retried, but its claim is kept. A redelivery while the lease lives sends
/// nothing; the one after it (SQS redelivers after the visibility timeout, longer than the
/// lease) is a named resend — log line and `NotificationsResentAfterUnfinishedClaim` — with
/// the same Message-ID, never a silent second copy. (Before: the claim was released on the
/// timeout, and the redelivery sent a second copy as if it were the first.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graph_timeout_after_acceptance_keeps_the_claim_and_the_resend_is_named() {
    let (upn, account) = new_account("fm-timeout").await;
    let graph = stack().graph();
    let lease = Duration::from_secs(600);
    let (idempotency, mail) = crash_points(lease).await;
    let deps = sqs_deps(idempotency.clone(), mail.clone()).await;
    let body = json!({
        "version": 1,
        "account": format!("mailbridge/{account}"),
        "to": [{"address": "customer@example.com"}],
        "subject": "answer lost",
        "body": {"content_type": "text", "content": "x"}
    });
    let event = event_for(std::slice::from_ref(&body)).await;

    // 1. Graph accepts it, the answer is lost: retried, with the reason saying it may be out.
    mail.lose_answer
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let report = process_batch(
        event.clone(),
        Instant::now() + Duration::from_secs(30),
        &deps,
    )
    .await;
    mail.lose_answer
        .store(false, std::sync::atomic::Ordering::SeqCst);
    assert!(
        matches!(&report.messages[0].outcome, Outcome::Retry { reason, .. } if reason.contains("may have accepted")),
        "{report:?}"
    );
    assert_eq!(report.response.batch_item_failures.len(), 1);
    assert_eq!(graph.accepted(&upn).len(), 1, "Graph has it");

    // 2. An early redelivery (the lease still lives) sends nothing; 3. after the lease: one
    // named resend with the same Message-ID.
    the_claim_holds_then_one_named_resend_follows(
        "answer lost",
        graph,
        &upn,
        &idempotency,
        &event,
        &deps,
    )
    .await;

    // 4. Completed: later redeliveries are duplicates.
    let report = process_batch(event, Instant::now() + Duration::from_secs(30), &deps).await;
    assert!(
        matches!(report.messages[0].outcome, Outcome::Duplicate),
        "{report:?}"
    );
    assert_eq!(graph.accepted(&upn).len(), 2);
}

/// Graph row "accept, then fail", made by the stand-in itself: the mail is accepted and
/// delivered, then the answer is a 504 (once, no Retry-After) or the connection drops. Both keep
/// the claim; the redelivery after the lease is the one named resend, with the same Message-ID;
/// a 504 with a Retry-After that fits is resent within the invocation and counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graph_accepting_then_failing_keeps_the_claim_and_every_resend_is_named() {
    use local_stack::graph::AcceptThenFail;
    for how in [
        AcceptThenFail::GatewayTimeout,
        AcceptThenFail::DropConnection,
    ] {
        let (upn, account) = new_account("fm-accept-fail").await;
        let graph = stack().graph();
        let (idempotency, _) = crash_points(Duration::from_secs(600)).await;
        let mail = Arc::new(HangingSender {
            inner: GraphClient::new(&graph.v1_url()).unwrap(),
            hang: false.into(),
            entered: 0.into(),
            lose_answer: false.into(),
        });
        let deps = sqs_deps(idempotency.clone(), mail).await;
        let body = json!({
            "version": 1,
            "account": format!("mailbridge/{account}"),
            "to": [{"address": "customer@example.com"}],
            "subject": format!("accepted then {how:?}"),
            "body": {"content_type": "text", "content": "x"}
        });
        let event = event_for(std::slice::from_ref(&body)).await;
        graph.accept_then_fail(&upn, 1, how);
        let report = process_batch(
            event.clone(),
            Instant::now() + Duration::from_secs(30),
            &deps,
        )
        .await;
        assert!(
            matches!(report.messages[0].outcome, Outcome::Retry { .. }),
            "{how:?}: {report:?}"
        );
        assert_eq!(graph.accepted(&upn).len(), 1, "{how:?}: Graph has it");
        // an early redelivery sends nothing; after the lease: one named resend, same Message-ID
        the_claim_holds_then_one_named_resend_follows(
            &format!("{how:?}"),
            graph,
            &upn,
            &idempotency,
            &event,
            &deps,
        )
        .await;
    }

    // A 504 that asks to wait 1 s: resent in the same invocation, named and counted.
    let (upn, account) = new_account("fm-accept-fail-wait").await;
    let graph = stack().graph();
    let (idempotency, mail) = crash_points(Duration::from_secs(600)).await;
    let deps = sqs_deps(idempotency, mail).await;
    let event = event_for(&[json!({
        "version": 1,
        "account": format!("mailbridge/{account}"),
        "to": [{"address": "customer@example.com"}],
        "subject": "503 then resent",
        "body": {"content_type": "text", "content": "x"}
    })])
    .await;
    graph.fail_503(&upn, 1, Some(1));
    use tracing::instrument::WithSubscriber as _;
    let logs = LogCapture::default();
    let report = process_batch(event, Instant::now() + Duration::from_secs(30), &deps)
        .with_subscriber(logs.subscriber())
        .await;
    assert!(
        matches!(report.messages[0].outcome, Outcome::Sent { .. }),
        "{report:?}"
    );
    assert_eq!(report.metrics.resent_after_ambiguous_answer, 1);
    assert!(
        logs.text()
            .contains("resending after an answer that may mean Graph accepted the mail"),
        "{}",
        logs.text()
    );
}
