//! Nothing lost, nothing ticketed twice when a run is cut short or doubled: overlapping runs, the
//! deadline, Dovecot restarted mid-run, a folder rebuilt with a new UIDVALIDITY, a mail whose
//! reading killed the process.

use super::*;

/// Two runs overlap on one mailbox (EventBridge delivered the tick twice, an operator's manual
/// run during a scheduled one, a run outlasting the interval). While the first run's POST of a
/// mail is in flight, the second run must not POST the same mail again: on a ticket API that
/// ignores `Idempotency-Key` that second POST is a second ticket. (Before: the second run found
/// no dedupe record yet and POSTed it too.) The second run leaves the mailbox to the first,
/// says so, and is not counted as a failure; the mail becomes one ticket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlapping_runs_never_post_the_same_mail_twice() {
    let p = Poller::new(stack().dovecot().clone()).await;
    let user = unique_user("overlap");
    let account = p.account(&user).await;
    p.mailbox("overlap", &user, &account, serde_json::json!({}))
        .await;
    p.deliver(&user, &mail("ov1", "Overlap 1", "x"));
    // Run 1's POST is held at the ticket API: run 1 is mid-mail. (A long attempt timeout, so
    // run 1 never re-POSTs while it waits, however slow run 2 is on a loaded machine.)
    let mut deps = p.deps.clone();
    deps.sinks = Arc::new(SecretsSinkFactory::new(
        reqwest::Client::new(),
        aws_sdk_secretsmanager::Client::new(&stack().moto().sdk_config()),
        RetryPolicy {
            attempt_timeout: Duration::from_secs(120),
            ..fast_retry()
        },
    ));
    stack().tickets().hold_requests_after(&p.sink, 0);
    let first = {
        let deps = deps.clone();
        tokio::spawn(async move {
            poll_mailboxes::poll_once(&deps, None, Instant::now() + Duration::from_secs(60))
                .await
                .unwrap()
        })
    };
    let held_until = Instant::now() + Duration::from_secs(60);
    while stack().tickets().requests(&p.sink) < 1 {
        assert!(Instant::now() < held_until, "run 1 never POSTed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Run 2 while run 1 works on the mail. A second POST would be held too, so wait for
    // either run 2's end or a second POST, whichever comes first.
    let second = {
        let deps = deps.clone();
        tokio::spawn(async move {
            poll_mailboxes::poll_once(&deps, None, Instant::now() + Duration::from_secs(30))
                .await
                .unwrap()
        })
    };
    let limit = Instant::now() + Duration::from_secs(40);
    while !second.is_finished() && stack().tickets().requests(&p.sink) < 2 && Instant::now() < limit
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let posts_while_overlapping = stack().tickets().requests(&p.sink);
    stack().tickets().release_held(&p.sink);
    let second = second.await.unwrap();
    let first = first.await.unwrap();
    assert_eq!(
        posts_while_overlapping, 1,
        "the overlapping run POSTed the mail a second time"
    );
    let s2 = status(&second, "overlap");
    assert_eq!(
        s2.outcome,
        mailbridge::state_table::MailboxOutcome::Partial,
        "{s2:?}"
    );
    assert!(
        s2.reason
            .as_deref()
            .unwrap()
            .contains("another run is polling this mailbox"),
        "{s2:?}"
    );
    assert_eq!(second.mailboxes_failed, 0);
    assert_eq!(
        s2.last_success_at, None,
        "leaving the mail to another run is no successful poll: {s2:?}"
    );
    assert_eq!(status(&first, "overlap").tickets_created, 1, "{first:?}");
    assert_eq!(p.tickets().len(), 1);
    assert_eq!(stack().tickets().requests(&p.sink), 1);
    assert_eq!(p.count(&user, "INBOX"), 0);
    // The lease is given back: the next run works normally.
    p.deliver(&user, &mail("ov2", "Overlap 2", "x"));
    let report = p.poll().await;
    assert_eq!(status(&report, "overlap").tickets_created, 1, "{report:?}");
}

#[tokio::test]
async fn near_the_deadline_the_remaining_mail_waits_for_the_next_run() {
    let p = Poller::with_margin(stack().dovecot().clone(), Duration::from_secs(3)).await;
    let user = unique_user("deadline");
    let account = p.account(&user).await;
    p.mailbox("deadline", &user, &account, serde_json::json!({}))
        .await;
    // One conversation (each mail answers the first), so its tickets are posted one after the
    // other: different conversations would be posted side by side.
    for i in 0..6 {
        let raw = String::from_utf8(mail(&format!("dl{i}"), &format!("Mail {i}"), "x")).unwrap();
        let raw = if i == 0 {
            raw
        } else {
            raw.replace(
                "MIME-Version",
                "In-Reply-To: <dl0@customer.example>\r\nMIME-Version",
            )
        };
        p.deliver(&user, raw.as_bytes());
    }
    // A concrete point instead of a race with the machine's load: the 2nd POST is held until
    // the "stop starting new mail" point (deadline - 3 s margin) has passed, then answered.
    // So mails 1 and 2 are ticketed and mails 3..6 are not started.
    let margin = Duration::from_secs(3);
    let deadline = Instant::now() + margin + Duration::from_secs(10);
    stack().tickets().hold_requests_after(&p.sink, 1);
    let sink = p.sink.clone();
    let releaser = tokio::spawn(async move {
        // Mail 1 has 10 s to be ticketed; if the 2nd POST never comes the counts below fail.
        while stack().tickets().requests(&sink) < 2 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep_until(deadline - margin + Duration::from_millis(100)).await;
        stack().tickets().release_held(&sink);
    });
    let report = p.poll_until(deadline).await;
    releaser.await.unwrap();
    let s = status(&report, "deadline");
    assert_eq!(
        s.outcome,
        mailbridge::state_table::MailboxOutcome::Partial,
        "{s:?}"
    );
    assert_eq!((s.tickets_created, s.deferred), (2, 4), "{s:?}");
    assert_eq!(p.count(&user, "INBOX") as u32, s.deferred);
    p.poll().await;
    assert_eq!(p.tickets().len(), 6);
    assert_eq!(p.count(&user, "Processed"), 6);
}

#[tokio::test]
async fn dovecot_restarted_mid_run_then_the_next_run_completes_without_loss_or_duplicates() {
    let stack = stack();
    let dovecot = Arc::new(
        mailbridge_tests::start_private_dovecot(
            "poll-restart",
            &stack.identity().introspection_url(),
        )
        .await
        .unwrap(),
    );
    let p = Poller::new(dovecot.clone()).await;
    let user = unique_user("restart");
    let account = p.account(&user).await;
    p.mailbox("restart", &user, &account, serde_json::json!({}))
        .await;
    for i in 0..8 {
        p.deliver(&user, &mail(&format!("rs{i}"), &format!("Mail {i}"), "x"));
    }
    // A concrete stop point, whatever the machine's load: the 4th POST is held unanswered at the
    // ticket API; Dovecot is kicked and stopped while the poller waits for it; then the answers
    // go out. The 8 mails are one window: all are ticketed (the helpdesk accepted them), and the
    // window's UID MOVE meets a dead connection, so none is moved.
    stack.tickets().hold_requests_after(&p.sink, 3);
    let sink = p.sink.clone();
    let killer = {
        let dovecot = dovecot.clone();
        let user = user.clone();
        tokio::spawn(async move {
            let held = tokio::time::Instant::now() + Duration::from_secs(120);
            while stack.tickets().requests(&sink) < 4 {
                assert!(
                    tokio::time::Instant::now() < held,
                    "the 4th ticket POST never arrived"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            tokio::task::spawn_blocking(move || {
                // Dovecot keeps logged-in sessions across a master restart by default: kick
                // them, then stop the server.
                dovecot.doveadm(&["kick", &user], None).unwrap();
                dovecot.stop();
            })
            .await
            .unwrap();
            stack.tickets().release_held(&sink);
        })
    };
    let report = p.poll().await;
    killer.await.unwrap();
    let s = status(&report, "restart");
    assert_eq!(
        s.outcome,
        mailbridge::state_table::MailboxOutcome::Failed,
        "{s:?}"
    );
    assert!(
        s.reason.as_deref().unwrap_or("").contains("UID MOVE"),
        "the status names the IMAP step that failed: {s:?}"
    );
    assert_eq!(s.tickets_created, 0, "none moved: {s:?}");
    assert_eq!(s.deferred, 8, "the whole window: {s:?}");
    assert_eq!(p.tickets().len(), 8, "all accepted before the cut");
    let d = dovecot.clone();
    tokio::task::spawn_blocking(move || d.restart())
        .await
        .unwrap()
        .unwrap();
    let report = p.poll().await;
    let s = status(&report, "restart");
    assert_eq!(
        s.outcome,
        mailbridge::state_table::MailboxOutcome::Ok,
        "{report:?}"
    );
    assert_eq!(
        (s.tickets_created, s.duplicates),
        (0, 8),
        "the accepted-but-unmoved mails are only moved, not ticketed again: {s:?}"
    );
    let tickets = p.tickets();
    assert_eq!(tickets.len(), 8, "every mail exactly one ticket");
    let mut keys: Vec<_> = tickets.iter().map(|t| t.idempotency_key.clone()).collect();
    keys.sort();
    keys.dedup();
    assert_eq!(keys.len(), 8);
    assert_eq!(p.count(&user, "INBOX"), 0);
    assert_eq!(p.count(&user, "Processed"), 8);
}

#[tokio::test]
async fn a_uidvalidity_change_does_not_duplicate_tickets() {
    let p = Poller::new(stack().dovecot().clone()).await;
    let user = unique_user("uidv");
    let account = p.account(&user).await;
    p.mailbox(
        "uidv",
        &user,
        &account,
        serde_json::json!({"after_action": "mark_seen"}),
    )
    .await;
    p.deliver(&user, &mail("u1", "Before the rebuild", "x"));
    let report = p.poll().await;
    assert_eq!(report.tickets_created, 1);
    let before = status(&report, "uidv").uid_validity.unwrap();
    // The server rebuilds the folder: new UIDVALIDITY, and the flags are lost.
    p.dovecot
        .doveadm(
            &[
                "flags", "remove", "-u", &user, "\\Seen", "mailbox", "INBOX", "all",
            ],
            None,
        )
        .unwrap();
    p.dovecot
        .set_uidvalidity(&user, "INBOX", before + 1000)
        .unwrap();
    let report = p.poll().await;
    let s = status(&report, "uidv");
    assert_eq!(s.uid_validity, Some(before + 1000));
    assert_eq!((s.tickets_created, s.duplicates), (0, 1), "{s:?}");
    assert_eq!(p.tickets().len(), 1);
    assert!(p.dovecot.list_messages(&user, "INBOX").unwrap()[0].is_seen());
}

/// A mail whose reading kills the process (SIGKILL, as Lambda's out-of-memory kill does) while
/// its UID is marked in flight: the next run, in a fresh process, parks it unread in the failed
/// folder and tickets the mail behind it.
#[tokio::test]
async fn a_mail_that_killed_the_bootstrap_is_parked_by_the_next_run() {
    use local_stack::runtime_api::{
        FunctionConfig, InvocationResult, RuntimeApi, workspace_binary,
    };
    let binary =
        tokio::task::spawn_blocking(|| workspace_binary("poll-mailboxes", "poll-mailboxes"))
            .await
            .unwrap()
            .expect("build the poll-mailboxes binary");
    let p = Poller::new(stack().dovecot().clone()).await;
    let user = unique_user("crash");
    let account = p.account(&user).await;
    let name = unique("crash");
    p.mailbox(&name, &user, &account, serde_json::json!({}))
        .await;
    p.deliver(&user, &mail("c1", "Before", "x"));
    // Large enough that reading it takes a while in a debug build: the test kills it then.
    let big_body = "Grüße, the quick brown fox jumps over the lazy dog.\r\n".repeat(200_000);
    p.deliver(&user, &mail("c2", "The killer", &big_body));
    p.deliver(&user, &mail("c3", "After", "z"));
    let mut env = mailbridge_tests::poller::bootstrap_env(&p.table, "info").await;
    env.push((
        "MAILBRIDGE_IMAP_CA_FILE".to_string(),
        p.dovecot.ca_pem_path.display().to_string(),
    ));
    let mut function = FunctionConfig::new("poll-mailboxes", binary).with_env(env);
    function.memory_mb = 512;
    let api = RuntimeApi::start().await.expect("runtime api");
    api.spawn_function(&function).expect("spawn bootstrap");
    let event = serde_json::json!({"source": "mailbridge.manual", "mailboxes": [name.clone()]});
    let lease_key = format!("mailbox-lease#{name}");
    let table = p.table.clone();
    let pid = api.function_pid().expect("running");
    let killer = tokio::spawn(async move {
        let deadline = Instant::now() + Duration::from_secs(120);
        while Instant::now() < deadline {
            let item = dynamodb()
                .get_item()
                .table_name(&table)
                .key(
                    "pk",
                    aws_sdk_dynamodb::types::AttributeValue::S(lease_key.clone()),
                )
                .consistent_read(true)
                .send()
                .await
                .unwrap()
                .item;
            let in_flight = item
                .as_ref()
                .and_then(|i| i.get("in_flight_uid"))
                .and_then(|v| v.as_n().ok())
                .cloned();
            if in_flight.as_deref() == Some("2") {
                std::process::Command::new("kill")
                    .args(["-9", &pid.to_string()])
                    .status()
                    .unwrap();
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    });
    // A short invocation (the poller keeps a 20 s margin): its lease runs out soon after, as
    // it does before the next tick.
    let first = api
        .invoke(event.clone(), Duration::from_secs(35))
        .await
        .unwrap();
    assert!(killer.await.unwrap(), "the killer mail was never in flight");
    assert!(
        matches!(first.result, InvocationResult::ProcessExited(_)),
        "{:?}",
        first.result
    );
    assert_eq!(p.count(&user, "mailbridge-failed"), 0);

    // The killed run never released its lease: wait until it runs out.
    let held_until: i64 = dynamodb()
        .get_item()
        .table_name(&p.table)
        .key(
            "pk",
            aws_sdk_dynamodb::types::AttributeValue::S(format!("mailbox-lease#{name}")),
        )
        .consistent_read(true)
        .send()
        .await
        .unwrap()
        .item
        .and_then(|i| {
            i.get("lease_expires_at")
                .and_then(|v| v.as_n().ok())
                .cloned()
        })
        .and_then(|n| n.parse().ok())
        .expect("the killed run's lease is left behind");
    let wait = (held_until + 2 - chrono::Utc::now().timestamp()).max(0) as u64;
    tokio::time::sleep(Duration::from_secs(wait)).await;
    // A fresh process, as Lambda starts after a kill.
    api.spawn_function(&function).expect("respawn bootstrap");
    let second = api.invoke(event, Duration::from_secs(120)).await.unwrap();
    let report = second
        .into_response()
        .unwrap_or_else(|e| panic!("{e:#}\n{}", api.logs()));
    assert_eq!(report["parked"], 1, "{report}");
    assert_eq!(
        p.count(&user, "mailbridge-failed"),
        1,
        "the killer is parked"
    );
    assert_eq!(p.count(&user, "INBOX"), 0);
    let subjects: Vec<String> = p
        .tickets()
        .iter()
        .map(|t| {
            t.body["draft"]["subject"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
        .collect();
    assert!(subjects.contains(&"After".to_string()), "{subjects:?}");
    assert!(
        !subjects.contains(&"The killer".to_string()),
        "{subjects:?}"
    );
    assert!(
        api.logs().contains("a run ended while reading this mail"),
        "{}",
        api.logs()
    );
    api.shutdown();
}
