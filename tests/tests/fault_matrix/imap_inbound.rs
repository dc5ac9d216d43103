//! IMAP faults on the inbound path: a UIDVALIDITY change with restored mail, a missing folder,
//! and the connection cut mid-FETCH and mid-MOVE.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uidvalidity_change_with_restored_mail_makes_no_duplicate_tickets() {
    let p = Poller::new().await;
    let dovecot = stack().dovecot();
    let (user, account) = new_account("fm-uidvalidity").await;
    p.mailbox("uv", &user, &account, json!({})).await;
    let first = mail(&unique("uv-1"), "Printer on fire");
    dovecot.deliver_to(&user, "INBOX", &first).unwrap();
    let report = p.poll().await;
    assert_eq!(
        status(&report, "uv").outcome,
        mailbridge::state_table::MailboxOutcome::Ok,
        "{report:?}"
    );
    assert_eq!(stack().tickets().tickets(&p.sink).len(), 1);
    let before = dovecot.mailbox_status(&user, "INBOX").unwrap().uidvalidity;

    // The folder is rebuilt/restored: new UIDVALIDITY, the already-ticketed mail is back in the
    // INBOX with a new UID, next to one genuinely new mail.
    dovecot
        .set_uidvalidity(&user, "INBOX", before.wrapping_add(1000))
        .unwrap();
    dovecot.deliver_to(&user, "INBOX", &first).unwrap();
    dovecot
        .deliver_to(&user, "INBOX", &mail(&unique("uv-2"), "Scanner jammed"))
        .unwrap();
    let report = p.poll().await;
    let s = status(&report, "uv");
    assert_eq!(
        s.outcome,
        mailbridge::state_table::MailboxOutcome::Ok,
        "{report:?}"
    );
    assert_eq!(s.tickets_created, 1, "only the new mail: {s:?}");
    assert_eq!(s.duplicates, 1, "the restored mail is a duplicate: {s:?}");
    assert_ne!(s.uid_validity, Some(before), "{s:?}");
    let tickets = stack().tickets().tickets(&p.sink);
    assert_eq!(tickets.len(), 2, "no second ticket for the restored mail");
    assert_eq!(dovecot.list_messages(&user, "INBOX").unwrap().len(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_folder_fails_that_mailbox_with_its_name_and_the_others_are_polled() {
    let p = Poller::new().await;
    let dovecot = stack().dovecot();
    let (user, account) = new_account("fm-folder").await;
    p.mailbox(
        "nofolder",
        &user,
        &account,
        json!({"folder": "Helpdesk/DoesNotExist"}),
    )
    .await;
    let (good_user, good_account) = new_account("fm-folder-good").await;
    p.mailbox("good", &good_user, &good_account, json!({}))
        .await;
    dovecot
        .deliver_to(&user, "INBOX", &mail(&unique("nf"), "stays put"))
        .unwrap();
    dovecot
        .deliver_to(&good_user, "INBOX", &mail(&unique("g"), "gets a ticket"))
        .unwrap();
    let report = p.poll().await;
    let s = status(&report, "nofolder");
    assert_eq!(
        s.outcome,
        mailbridge::state_table::MailboxOutcome::Failed,
        "{report:?}"
    );
    let reason = s.reason.as_deref().unwrap_or_default();
    assert!(reason.contains("Helpdesk/DoesNotExist"), "{reason}");
    assert_eq!(
        status(&report, "good").outcome,
        mailbridge::state_table::MailboxOutcome::Ok,
        "{report:?}"
    );
    assert_eq!(stack().tickets().tickets(&p.sink).len(), 1);
    assert_eq!(report.mailboxes_failed, 1);
    assert_eq!(dovecot.list_messages(&user, "INBOX").unwrap().len(), 1);
}

/// A mail of about `kib` KiB (a base64 attachment), so its FETCH response is large enough for
/// the TCP proxy to cut inside it.
fn big_mail(id: &str, subject: &str, kib: usize) -> Vec<u8> {
    let line = "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVphYmNkZWZnaGlqa2xtbm9wcXJzdHV2d3h5ejAxMjM0\r\n";
    let attachment = line.repeat(kib * 1024 / line.len());
    format!(
        "From: Ann Example <ann@customer.example>\r\nTo: helpdesk@example.com\r\nSubject: {subject}\r\n\
         Date: Sat, 28 Nov 2026 10:00:00 +0000\r\nMessage-ID: <{id}@customer.example>\r\n\
         MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n\
         Content-Type: text/plain\r\n\r\nLog attached.\r\n--b\r\nContent-Type: application/octet-stream; name=log.bin\r\n\
         Content-Disposition: attachment; filename=log.bin\r\nContent-Transfer-Encoding: base64\r\n\r\n{attachment}--b--\r\n"
    )
    .into_bytes()
}

/// IMAP row "connection killed mid-FETCH / mid-MOVE", at chosen points: a TCP proxy between the
/// poller and Dovecot (TLS passes through) cuts the connection
/// 1. in the middle of the big first mail's `BODY.PEEK[]` response (the three mails are one
///    window, fetched in one `UID FETCH`),
/// 2. at the window's `UID MOVE` after their tickets were accepted, before Dovecot sees it,
/// 3. at the `UID MOVE` again, after Dovecot moved the mails but before the client saw the OK.
///
/// Each run names the IMAP step in the mailbox status; then a clean run. Every mail becomes
/// exactly one ticket, none is lost, and mail moved without an acknowledgement is not ticketed
/// again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imap_cut_mid_fetch_and_mid_move_then_every_mail_is_exactly_one_ticket() {
    use local_stack::tcp_fault_proxy::{CutRule, TcpFaultProxy};
    let p = Poller::new().await;
    let dovecot = stack().dovecot();
    let proxy = TcpFaultProxy::start(std::net::SocketAddr::from((
        [127, 0, 0, 1],
        dovecot.imaps_port,
    )))
    .await
    .unwrap();
    let (user, account) = new_account("fm-imap-cut").await;
    p.mailbox("cut", &user, &account, json!({"port": proxy.port}))
        .await;
    // The folder exists, so the first client write after the fetch is the MOVE itself (not a
    // MOVE answered NO [TRYCREATE], then CREATE).
    dovecot.create_folder(&user, "Processed").unwrap();
    let big = big_mail(&unique("cut-big"), "Big log file", 300);
    dovecot.deliver_to(&user, "INBOX", &big).unwrap();
    for (i, subject) in ["Second mail", "Third mail"].iter().enumerate() {
        dovecot
            .deliver_to(&user, "INBOX", &mail(&unique(&format!("cut-{i}")), subject))
            .unwrap();
    }
    let count = |folder: &str| dovecot.list_messages(&user, folder).map_or(0, |m| m.len());
    let tickets = || stack().tickets().tickets(&p.sink);
    let big_len = big.len() as u64;

    // 1. Mid-FETCH of the big mail.
    proxy.arm(CutRule::ServerSent { bytes: big_len / 2 });
    let report = p.poll().await;
    let s = status(&report, "cut");
    assert!(
        !proxy.armed(),
        "the cut point was reached: {:?}",
        proxy.stats()
    );
    assert_eq!(
        s.outcome,
        mailbridge::state_table::MailboxOutcome::Failed,
        "{s:?}"
    );
    assert!(
        s.reason
            .as_deref()
            .unwrap_or("")
            .contains("UID FETCH BODY.PEEK"),
        "the status names the IMAP step: {s:?}"
    );
    assert!(tickets().is_empty());
    assert_eq!(count("INBOX"), 3);

    // 2. The MOVE after the big mail's ticket never reaches Dovecot.
    proxy.arm(CutRule::ClientWriteAfterServerSent {
        bytes: big_len,
        forward: false,
    });
    let report = p.poll().await;
    let s = status(&report, "cut");
    assert!(!proxy.armed(), "{:?}", proxy.stats());
    assert_eq!(
        s.outcome,
        mailbridge::state_table::MailboxOutcome::Failed,
        "{s:?}"
    );
    assert!(
        s.reason.as_deref().unwrap_or("").contains("UID MOVE"),
        "{s:?}"
    );
    assert_eq!(tickets().len(), 3, "the window's tickets");
    assert_eq!(count("INBOX"), 3, "nothing moved");

    // 3. The MOVE reaches Dovecot, its OK does not reach the poller.
    proxy.arm(CutRule::ClientWriteAfterServerSent {
        bytes: big_len,
        forward: true,
    });
    let report = p.poll().await;
    let s = status(&report, "cut");
    assert!(!proxy.armed(), "{:?}", proxy.stats());
    assert_eq!(
        s.outcome,
        mailbridge::state_table::MailboxOutcome::Failed,
        "{s:?}"
    );
    assert!(
        s.reason.as_deref().unwrap_or("").contains("UID MOVE"),
        "{s:?}"
    );
    assert_eq!(
        tickets().len(),
        3,
        "recognised by their dedupe records: no second ticket"
    );
    assert_eq!(count("INBOX"), 0, "moved although unacknowledged");
    assert_eq!(count("Processed"), 3);

    // 4. A clean run: nothing left, nothing posted again.
    let report = p.poll().await;
    assert_eq!(
        status(&report, "cut").outcome,
        mailbridge::state_table::MailboxOutcome::Ok,
        "{report:?}"
    );
    let mut subjects: Vec<String> = tickets()
        .iter()
        .map(|t| t.body["draft"]["subject"].as_str().unwrap().to_string())
        .collect();
    subjects.sort();
    assert_eq!(subjects, ["Big log file", "Second mail", "Third mail"]);
    assert_eq!(count("INBOX"), 0);
    assert_eq!(count("Processed"), 3);
    assert_eq!(proxy.stats().cuts.len(), 3, "{:?}", proxy.stats());
}
