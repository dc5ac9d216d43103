//! Signing in to the mailbox: a revoked grant or access revoked at the IMAP server fails only that
//! mailbox, with a clear reason; a shared mailbox is read with a delegate's token.

use super::*;

#[tokio::test]
async fn a_revoked_grant_is_a_clear_per_mailbox_error_and_other_mailboxes_are_polled() {
    let p = Poller::new(stack().dovecot().clone()).await;
    let revoked_user = unique_user("revoked");
    let good_user = unique_user("good");
    let revoked = p.account_with_refresh_token(&revoked_user).await;
    let good = p.account(&good_user).await;
    p.mailbox("revoked", &revoked_user, &revoked, serde_json::json!({}))
        .await;
    p.mailbox("good", &good_user, &good, serde_json::json!({}))
        .await;
    // a mailbox whose configuration an operator broke
    dynamodb()
        .put_item()
        .table_name(&p.table)
        .item(
            "pk",
            aws_sdk_dynamodb::types::AttributeValue::S("mailbox#broken".into()),
        )
        .item(
            "user",
            aws_sdk_dynamodb::types::AttributeValue::S("broken".into()),
        )
        .send()
        .await
        .unwrap();
    dynamodb()
        .update_item()
        .table_name(&p.table)
        .key(
            "pk",
            aws_sdk_dynamodb::types::AttributeValue::S("mailbox-index".into()),
        )
        .update_expression("ADD #n :n")
        .expression_attribute_names("#n", "names")
        .expression_attribute_values(
            ":n",
            aws_sdk_dynamodb::types::AttributeValue::Ss(vec!["broken".into()]),
        )
        .send()
        .await
        .unwrap();
    stack()
        .identity()
        .revoke_refresh_tokens(&revoked_user)
        .unwrap();
    p.deliver(&revoked_user, &mail("r1", "Waiting", "x"));
    p.deliver(&good_user, &mail("g1", "Fine", "x"));

    let report = p.poll().await;
    let r = status(&report, "revoked");
    assert_eq!(
        r.outcome,
        mailbridge::state_table::MailboxOutcome::NeedsReauth,
        "{r:?}"
    );
    assert!(r.reason.as_deref().unwrap().contains(&revoked), "{r:?}");
    assert_eq!(
        status(&report, "broken").outcome,
        mailbridge::state_table::MailboxOutcome::ConfigError
    );
    assert!(
        status(&report, "broken")
            .reason
            .as_deref()
            .unwrap()
            .contains("field `user`")
    );
    assert_eq!(
        status(&report, "good").outcome,
        mailbridge::state_table::MailboxOutcome::Ok
    );
    assert_eq!(report.tickets_created, 1);
    assert_eq!(report.accounts_need_reauth, 1);
    assert_eq!(report.mailboxes_failed, 2);
    assert_eq!(
        p.count(&revoked_user, "INBOX"),
        1,
        "the mail waits for re-consent"
    );
}

#[tokio::test]
async fn access_revoked_at_the_imap_server_is_authenticate_failed_for_that_mailbox() {
    let p = Poller::new(stack().dovecot().clone()).await;
    let user = unique_user("denied");
    let account = p.account(&user).await;
    // The account logs in as a shared mailbox it was never granted.
    let shared = unique_user("not-granted");
    p.mailbox("denied", &shared, &account, serde_json::json!({}))
        .await;
    p.deliver(&shared, &mail("x", "x", "x"));
    let report = p.poll().await;
    let s = status(&report, "denied");
    assert_eq!(
        s.outcome,
        mailbridge::state_table::MailboxOutcome::Failed,
        "{s:?}"
    );
    let reason = s.reason.as_deref().unwrap();
    assert!(reason.contains("AUTHENTICATE XOAUTH2 failed"), "{reason}");
    assert!(reason.contains("FullAccess"), "{reason}");
    assert_eq!(p.count(&shared, "INBOX"), 1);
}

#[tokio::test]
async fn a_shared_mailbox_is_polled_with_a_delegates_token() {
    let p = Poller::new(stack().dovecot().clone()).await;
    let delegate = unique_user("agent");
    let shared = unique_user("support-shared");
    let account = p.account(&delegate).await;
    stack().identity().grant_mailbox_access(&delegate, &shared);
    p.mailbox("support", &shared, &account, serde_json::json!({}))
        .await;
    p.deliver(&shared, &mail("s1", "Shared mailbox mail", "x"));
    let report = p.poll().await;
    assert_eq!(
        status(&report, "support").outcome,
        mailbridge::state_table::MailboxOutcome::Ok,
        "{report:?}"
    );
    assert_eq!(p.tickets().len(), 1);
    assert_eq!(p.tickets()[0].body["mailbox_address"], shared.as_str());
    assert_eq!(p.count(&shared, "Processed"), 1);
}
