//! The poller when the ticket API fails: down for a run, always failing on one mail, refusing
//! (401/403/404, which raises the alarm) or rejecting a mail (the failed folder): the mail stays or
//! is parked, the rest goes on.

use super::*;

#[tokio::test]
async fn ticket_api_down_for_one_run_then_the_ticket_is_created_next_run() {
    let p = Poller::new(stack().dovecot().clone()).await;
    let user = unique_user("down");
    let account = p.account(&user).await;
    p.mailbox("down", &user, &account, serde_json::json!({}))
        .await;
    p.deliver(&user, &mail("d1", "First", "x"));
    p.deliver(&user, &mail("d2", "Second", "y"));
    stack().tickets().set_down(&p.sink, true);
    let report = p.poll_until(Instant::now() + Duration::from_secs(8)).await;
    let s = status(&report, "down");
    assert_eq!(
        s.outcome,
        mailbridge::state_table::MailboxOutcome::Partial,
        "{s:?}"
    );
    assert_eq!(s.deferred, 2);
    assert_eq!(
        p.count(&user, "INBOX"),
        2,
        "nothing moved while the API is down"
    );
    stack().tickets().set_down(&p.sink, false);
    let report = p.poll().await;
    assert_eq!(report.tickets_created, 2);
    assert_eq!(p.tickets().len(), 2);
    assert_eq!(p.count(&user, "Processed"), 2);
    assert_eq!(p.poll().await.tickets_created, 0);
}

/// Ticket API row "one mail the API always fails on", against Dovecot, moto and the stand-in:
/// every POST of one mail's payload answers 503, however often it is retried. The mails behind
/// it become tickets in the same run; it stays in the INBOX, named in the status, and the next
/// run tries the new mail first and it last.
#[tokio::test]
async fn a_mail_the_ticket_api_always_fails_on_does_not_block_the_mail_behind_it() {
    let p = Poller::new(stack().dovecot().clone()).await;
    let user = unique_user("poison");
    let account = p.account(&user).await;
    p.mailbox("poison", &user, &account, serde_json::json!({}))
        .await;
    let poison = unique("poison-word");
    p.deliver(&user, &mail("p1", "Poisoned", &poison));
    p.deliver(&user, &mail("p2", "Second", "fine"));
    p.deliver(&user, &mail("p3", "Third", "fine"));
    stack()
        .tickets()
        .fail_payloads_containing(&p.sink, &poison, 503);
    let report = p.poll().await;
    let s = status(&report, "poison");
    assert_eq!(s.tickets_created, 2, "{s:?}");
    assert_eq!(
        s.outcome,
        mailbridge::state_table::MailboxOutcome::Partial,
        "{s:?}"
    );
    assert_eq!(s.retry_last_uids, vec![1], "{s:?}");
    assert!(
        s.reason.as_deref().unwrap_or_default().contains("UIDs [1]"),
        "{s:?}"
    );
    assert_eq!(p.count(&user, "INBOX"), 1, "left in place");
    assert_eq!(p.count(&user, "Processed"), 2);

    // Next run: the new mail first, the failing one after it (still failing, still there).
    p.deliver(&user, &mail("p4", "Fourth", "fine"));
    let before = stack().tickets().requests(&p.sink);
    let report = p.poll().await;
    let s = status(&report, "poison");
    assert_eq!(s.tickets_created, 1, "{s:?}");
    assert_eq!(s.retry_last_uids, vec![1], "{s:?}");
    let subjects: Vec<String> = p
        .tickets()
        .iter()
        .map(|t| {
            t.body["draft"]["subject"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        })
        .collect();
    assert_eq!(subjects, ["Second", "Third", "Fourth"]);
    assert!(
        stack().tickets().requests(&p.sink) > before + 1,
        "the poisoned one was tried"
    );
    assert_eq!(p.count(&user, "INBOX"), 1);
}

/// Ticket API row "refusing (401/403/404) raises the alarm", against the stand-in: a run whose
/// mail the API refuses leaves the mail and counts for `MailboxPollFailed`; the next run, with
/// the API accepting again, tickets it and counts nothing.
#[tokio::test]
async fn a_ticket_api_refusing_with_401_403_404_leaves_the_mail_and_counts_for_the_alarm() {
    for refusal in [401u16, 403, 404] {
        let p = Poller::new(stack().dovecot().clone()).await;
        let user = unique_user("refused");
        let account = p.account(&user).await;
        p.mailbox("refused", &user, &account, serde_json::json!({}))
            .await;
        p.deliver(&user, &mail("r1", "Refused", "x"));
        stack().tickets().reject_next(&p.sink, 1, refusal);
        let report = p.poll().await;
        assert_eq!(report.mailboxes_failed, 1, "{refusal}: {report:?}");
        assert_eq!(report.tickets_created, 0, "{refusal}");
        let s = status(&report, "refused");
        assert_eq!(
            s.outcome,
            mailbridge::state_table::MailboxOutcome::Partial,
            "{refusal}: {s:?}"
        );
        assert_eq!(p.count(&user, "INBOX"), 1, "{refusal}: the mail stays");
        assert_eq!(
            p.count(&user, "mailbridge-failed"),
            0,
            "{refusal}: not parked"
        );
        let report = p.poll().await;
        assert_eq!(report.tickets_created, 1, "{refusal}: {report:?}");
        assert_eq!(report.mailboxes_failed, 0, "{refusal}");
        assert_eq!(p.count(&user, "INBOX"), 0, "{refusal}");
    }
}

/// Ticket API row "400/413/422 → failed folder", against Dovecot and the stand-in: the mail the
/// API rejects as bad is moved to the failed folder (no ticket), and the mail behind it is
/// ticketed in the same run.
#[tokio::test]
async fn a_mail_the_ticket_api_rejects_goes_to_the_failed_folder_and_the_rest_is_ticketed() {
    for rejection in [400u16, 413, 422] {
        let p = Poller::new(stack().dovecot().clone()).await;
        let user = unique_user("rejected");
        let account = p.account(&user).await;
        p.mailbox("rejected", &user, &account, serde_json::json!({}))
            .await;
        p.deliver(&user, &mail("j1", "Rejected", "x"));
        p.deliver(&user, &mail("j2", "Accepted", "y"));
        stack().tickets().reject_next(&p.sink, 1, rejection);
        let report = p.poll().await;
        let s = status(&report, "rejected");
        assert_eq!(s.tickets_created, 1, "{rejection}: {s:?}");
        assert_eq!(s.parked, 1, "{rejection}: {s:?}");
        assert_eq!(p.count(&user, "INBOX"), 0, "{rejection}");
        assert_eq!(p.count(&user, "Processed"), 1, "{rejection}");
        let failed = p.dovecot.list_messages(&user, "mailbridge-failed").unwrap();
        assert_eq!(failed.len(), 1, "{rejection}");
        assert!(
            String::from_utf8_lossy(&failed[0].raw).contains("Subject: Rejected"),
            "{rejection}"
        );
        assert_eq!(p.tickets().len(), 1, "{rejection}");
        assert_eq!(p.tickets()[0].body["draft"]["subject"], "Accepted");
    }
}
