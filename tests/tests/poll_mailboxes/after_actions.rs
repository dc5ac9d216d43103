//! What happens to a mail once its ticket exists: `mark_seen`, `delete`, and the `UID COPY` +
//! expunge fallback on a server without `MOVE`.

use super::*;

/// `mark_seen` polls only unseen mail: a mail a person read before the first run is never
/// ticketed, and the next run does not even fetch the mail it marked (no duplicates counted).
/// `delete` expunges the mail: it is in no folder afterwards (a move would leave it in one).
#[tokio::test]
async fn mark_seen_and_delete_after_actions() {
    let p = Poller::new(stack().dovecot().clone()).await;
    let seen_user = unique_user("seen");
    let gone_user = unique_user("gone");
    let a = p.account(&seen_user).await;
    let b = p.account(&gone_user).await;
    p.mailbox(
        "seen",
        &seen_user,
        &a,
        serde_json::json!({"after_action": "mark_seen"}),
    )
    .await;
    p.mailbox(
        "gone",
        &gone_user,
        &b,
        serde_json::json!({"after_action": "delete"}),
    )
    .await;
    p.deliver(&seen_user, &mail("s0", "Already read", "x"));
    let read_uid = p.dovecot.list_messages(&seen_user, "INBOX").unwrap()[0].uid;
    p.dovecot
        .add_flags(&seen_user, "INBOX", read_uid, "\\Seen")
        .unwrap();
    p.deliver(&seen_user, &mail("s1", "Seen me", "x"));
    p.deliver(&gone_user, &mail("d1", "Delete me", "x"));
    let first = p.poll().await;
    assert_eq!(status(&first, "seen").tickets_created, 1, "{first:?}");
    assert_eq!(status(&first, "gone").tickets_created, 1, "{first:?}");
    let second = p.poll().await;
    let seen = status(&second, "seen");
    assert_eq!(
        (seen.tickets_created, seen.duplicates),
        (0, 0),
        "the second run must not fetch the mail the first one marked: {seen:?}"
    );
    let mut subjects: Vec<String> = p
        .tickets()
        .iter()
        .map(|t| t.body["draft"]["subject"].as_str().unwrap().to_string())
        .collect();
    subjects.sort();
    assert_eq!(subjects, ["Delete me", "Seen me"]);
    let inbox = p.dovecot.list_messages(&seen_user, "INBOX").unwrap();
    assert_eq!(inbox.len(), 2, "mark_seen leaves the mail in place");
    assert!(inbox.iter().all(|m| m.is_seen()), "{inbox:?}");
    assert_eq!(p.count(&gone_user, "INBOX"), 0);
    let folders = p.dovecot.folders(&gone_user).unwrap();
    for folder in &folders {
        assert_eq!(
            p.count(&gone_user, folder),
            0,
            "a deleted mail is in no folder, but {folder} holds one (of {folders:?})"
        );
    }
}

/// What Dovecot 2.3 advertises after login, without `MOVE`.
const DOVECOT_CAPABILITY_WITHOUT_MOVE: &str = "IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE IDLE \
    SORT SORT=DISPLAY THREAD=REFERENCES THREAD=REFS THREAD=ORDEREDSUBJECT MULTIAPPEND URL-PARTIAL \
    CATENATE UNSELECT CHILDREN NAMESPACE UIDPLUS LIST-EXTENDED I18NLEVEL=1 CONDSTORE QRESYNC \
    ESEARCH ESORT SEARCHRES WITHIN CONTEXT=SEARCH LIST-STATUS BINARY SNIPPET=FUZZY SPECIAL-USE";

/// Servers without `MOVE`: `UID COPY` + `\Deleted` + `UID EXPUNGE`, which leaves mail that a
/// person flagged `\Deleted` where it is. Run on a Dovecot whose CAPABILITY leaves out `MOVE`;
/// the same mails on the shared Dovecot (which has `MOVE`) take two IMAP commands fewer per mail,
/// so the test also fails if the fallback is not what ran.
#[tokio::test]
async fn without_move_the_poller_copies_and_expunges_only_its_own_mail() {
    let no_move = Arc::new(
        local_stack::dovecot::Dovecot::start_with_settings(
            &local_stack::default_run_dir("no-move").unwrap(),
            &stack().identity().introspection_url(),
            &format!("imap_capability = {DOVECOT_CAPABILITY_WITHOUT_MOVE}\n"),
        )
        .await
        .unwrap(),
    );
    let mut round_trips = Vec::new();
    for dovecot in [no_move.clone(), stack().dovecot().clone()] {
        let p = Poller::new(dovecot).await;
        let user = unique_user("nomove");
        let account = p.account(&user).await;
        p.mailbox("nomove", &user, &account, serde_json::json!({}))
            .await;
        p.dovecot.create_folder(&user, "Processed").unwrap();
        // A mail a person deleted but did not expunge: a plain EXPUNGE would remove it too.
        p.deliver(&user, &mail("kept", "Deleted by a person", "x"));
        let kept_uid = p.dovecot.list_messages(&user, "INBOX").unwrap()[0].uid;
        p.dovecot
            .add_flags(&user, "INBOX", kept_uid, "\\Deleted")
            .unwrap();
        for n in 0..3 {
            p.deliver(&user, &mail(&format!("m{n}"), &format!("Mail {n}"), "x"));
        }
        let report = p.poll().await;
        let s = status(&report, "nomove");
        assert_eq!((s.outcome.as_str(), s.tickets_created), ("ok", 3), "{s:?}");
        assert_eq!(p.count(&user, "Processed"), 3);
        let inbox = p.dovecot.list_messages(&user, "INBOX").unwrap();
        assert_eq!(
            inbox.iter().map(|m| m.uid).collect::<Vec<_>>(),
            [kept_uid],
            "only the person's deleted mail is left, still there"
        );
        round_trips.push(s.imap_round_trips);
    }
    assert_eq!(
        round_trips[0],
        round_trips[1] + 2,
        "without MOVE the window's mails take one UID COPY, UID STORE and UID EXPUNGE (of their \
         set) instead of one UID MOVE (no MOVE, MOVE): {round_trips:?}"
    );
}
