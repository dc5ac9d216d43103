//! The heartbeat: a mailbox that stopped making tickets keeps its last success and ages the
//! run's oldest-success figure.

use super::*;

#[tokio::test]
async fn a_stuck_mailbox_keeps_its_last_success_and_ages_the_heartbeat() {
    let p = Poller::new(stack().dovecot().clone()).await;
    let steady_user = unique_user("steady");
    let stuck_user = unique_user("stuck");
    let steady = p.account(&steady_user).await;
    let stuck = p.account(&stuck_user).await;
    // the stuck mailbox posts to a ticket API of its own, which goes down after the first run
    let stuck_sink = unique("stuck-sink");
    p.mailbox("steady", &steady_user, &steady, serde_json::json!({}))
        .await;
    p.mailbox(
        "stuck",
        &stuck_user,
        &stuck,
        serde_json::json!({"ticket_api_url": stack().tickets().sink_url(&stuck_sink)}),
    )
    .await;
    p.deliver(&stuck_user, &mail("st1", "Before the outage", "x"));

    let first = p.poll().await;
    let stuck_first = status(&first, "stuck").clone();
    assert_eq!(
        stuck_first.outcome,
        mailbridge::state_table::MailboxOutcome::Ok,
        "{stuck_first:?}"
    );
    assert_eq!(
        stuck_first.last_success_at.as_deref(),
        Some(stuck_first.last_run_at.as_str()),
        "a successful run is its own last success"
    );
    assert_eq!(
        stuck_first.first_run_at.as_deref(),
        Some(stuck_first.last_run_at.as_str())
    );

    // Whole seconds apart, so an age measured from the wrong run shows.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    stack().tickets().set_down(&stuck_sink, true);
    p.deliver(&stuck_user, &mail("st2", "During the outage", "y"));
    let second = p.poll().await;
    stack().tickets().set_down(&stuck_sink, false);
    let stuck_second = status(&second, "stuck");
    assert_eq!(
        stuck_second.outcome,
        mailbridge::state_table::MailboxOutcome::Partial,
        "{stuck_second:?}"
    );
    assert_eq!(
        stuck_second.last_success_at, stuck_first.last_success_at,
        "a run whose mail the ticket API did not take is no success: {stuck_second:?}"
    );
    assert_eq!(stuck_second.first_run_at, stuck_first.first_run_at);
    let steady_second = status(&second, "steady");
    assert_eq!(
        steady_second.last_success_at.as_deref(),
        Some(steady_second.last_run_at.as_str())
    );
    // the heartbeat is the stuck mailbox's age, not the steady one's
    let since_first = (chrono::Utc::now()
        - chrono::DateTime::parse_from_rfc3339(&stuck_first.last_run_at)
            .unwrap()
            .with_timezone(&chrono::Utc))
    .num_seconds() as u64;
    assert!(
        second.oldest_success_age_seconds >= 2 && second.oldest_success_age_seconds <= since_first,
        "heartbeat {} s, the stuck mailbox last succeeded {since_first} s ago",
        second.oldest_success_age_seconds
    );
    // what `mailbridge status` reads: the table has it too
    let stored = DynamoStateStore::new(dynamodb(), &p.table)
        .get_status("stuck")
        .await
        .unwrap()
        .expect("status written");
    assert_eq!(stored.last_success_at, stuck_first.last_success_at);

    // back up: the next run succeeds and the mail is ticketed
    let third = p.poll().await;
    let stuck_third = status(&third, "stuck");
    assert_eq!(
        stuck_third.outcome,
        mailbridge::state_table::MailboxOutcome::Ok,
        "{stuck_third:?}"
    );
    assert_eq!(
        stuck_third.last_success_at.as_deref(),
        Some(stuck_third.last_run_at.as_str())
    );
    assert_eq!(stack().tickets().tickets(&stuck_sink).len(), 2);
}
