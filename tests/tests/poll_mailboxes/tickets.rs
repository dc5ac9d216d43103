//! Mail in Dovecot becomes tickets: exactly one per mail, moved afterwards; Outlook `winmail.dat`
//! expanded; a reused Message-ID; malformed and oversize mail parked with a ticket and a note; a
//! reply posted after its original's ticket; mail before `since` left alone.

use super::*;

#[tokio::test]
async fn mail_delivered_into_dovecot_becomes_exactly_one_ticket_and_is_moved() {
    let p = Poller::new(stack().dovecot().clone()).await;
    let user = unique_user("helpdesk");
    let account = p.account(&user).await;
    p.mailbox("helpdesk", &user, &account, serde_json::json!({}))
        .await;
    let attachment_mail = format!(
        "From: Bob <bob@customer.example>\r\nTo: {user}\r\nSubject: Scanner report\r\nMessage-ID: <att@customer.example>\r\n\
         MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\n\
         See attached.\r\n--b\r\nContent-Type: application/pdf; name=\"r.pdf\"\r\nContent-Disposition: attachment; filename=\"r.pdf\"\r\n\
         Content-Transfer-Encoding: base64\r\n\r\nJVBERi0xLjQK\r\n--b--\r\n"
    );
    let delivered_from = chrono::Utc::now().timestamp();
    p.deliver(&user, &mail("one", "Printer on fire", "Please help."));
    p.deliver(&user, attachment_mail.as_bytes());
    let delivered_until = chrono::Utc::now().timestamp();
    // Polled well after delivery: `received_at` must be Dovecot's INTERNALDATE (the delivery,
    // whole seconds), not the poll time.
    tokio::time::sleep(Duration::from_millis(2100)).await;

    let report = p.poll().await;
    assert_eq!(
        status(&report, "helpdesk").outcome,
        mailbridge::state_table::MailboxOutcome::Ok,
        "{report:?}"
    );
    assert_eq!(report.tickets_created, 2);
    let tickets = p.tickets();
    assert_eq!(tickets.len(), 2);
    let first = &tickets[0].body;
    let received_at = chrono::DateTime::parse_from_rfc3339(first["received_at"].as_str().unwrap())
        .unwrap()
        .timestamp();
    assert!(
        (delivered_from..=delivered_until).contains(&received_at),
        "received_at {} is not the delivery time ({delivered_from}..={delivered_until})",
        first["received_at"]
    );
    assert_eq!(first["schema"], "mailbridge.ticket-payload/1");
    assert_eq!(first["mailbox"], "helpdesk");
    assert_eq!(first["draft"]["subject"], "Printer on fire");
    assert_eq!(first["draft"]["from"]["address"], "ann@customer.example");
    assert_eq!(
        tickets[0].idempotency_key,
        first["idempotency_key"].as_str().unwrap()
    );
    let attachment = &tickets[1].body["attachments"][0];
    assert_eq!(attachment["filename"], "r.pdf");
    assert_eq!(attachment["content_base64"], "JVBERi0xLjQK");

    assert_eq!(p.count(&user, "INBOX"), 0);
    let processed = p.dovecot.list_messages(&user, "Processed").unwrap();
    assert_eq!(processed.len(), 2);
    assert!(
        processed.iter().all(|m| !m.is_seen()),
        "BODY.PEEK[] must not set \\Seen"
    );
    let again = p.poll().await;
    assert_eq!(again.tickets_created, 0);
    assert_eq!(p.tickets().len(), 2);
    let stored = DynamoStateStore::new(dynamodb(), &p.table)
        .get_status("helpdesk")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.outcome, mailbridge::state_table::MailboxOutcome::Ok);
    assert!(stored.uid_validity.is_some());
}

/// An Outlook `winmail.dat` (TNEF) reaches the ticket API as the files inside
/// it, each with its bytes; a TNEF that cannot be fully expanded is posted as the winmail.dat
/// itself, byte for byte.
#[tokio::test]
async fn winmail_dat_reaches_the_ticket_api_as_the_files_inside_it() {
    use base64::Engine as _;
    let p = Poller::new(stack().dovecot().clone()).await;
    let user = unique_user("helpdesk");
    let account = p.account(&user).await;
    p.mailbox("helpdesk", &user, &account, serde_json::json!({}))
        .await;
    p.deliver(&user, &corpus_mail("401-tnef-outlook-two-files.eml"));
    p.deliver(&user, &corpus_mail("404-tnef-garbage-at-end-kept.eml"));

    let report = p.poll().await;
    assert_eq!(
        status(&report, "helpdesk").outcome,
        mailbridge::state_table::MailboxOutcome::Ok,
        "{report:?}"
    );
    assert_eq!(report.tickets_created, 2, "{report:?}");
    let tickets = p.tickets();
    let by_subject = |subject: &str| {
        tickets
            .iter()
            .find(|t| t.body["draft"]["subject"] == subject)
            .unwrap_or_else(|| panic!("no ticket {subject:?}"))
            .body
            .clone()
    };
    let decode = |a: &serde_json::Value| {
        base64::engine::general_purpose::STANDARD
            .decode(a["content_base64"].as_str().expect("content posted"))
            .unwrap()
    };
    let expanded = by_subject("Printer log files attached");
    let files = expanded["attachments"].as_array().unwrap();
    let names: Vec<&str> = files
        .iter()
        .map(|a| a["filename"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["AUTHORS", "README"]);
    assert_eq!(decode(&files[0]).len(), 244);
    assert!(decode(&files[0]).starts_with(b"\n                              Authors of tnef"));
    assert_eq!(decode(&files[1]).len(), 893);
    assert_eq!(
        expanded["draft"]["attachments"].as_array().unwrap().len(),
        2
    );

    let kept = by_subject("Winmail with trailing garbage");
    let files = kept["attachments"].as_array().unwrap();
    assert_eq!(files.len(), 1);
    assert_eq!(files[0]["filename"], "winmail.dat");
    assert_eq!(files[0]["content_type"], "application/ms-tnef");
    let raw =
        std::fs::read(local_stack::repo_root().join("tests/fixtures/tnef/garbage-at-end.tnef"))
            .unwrap();
    assert_eq!(decode(&files[0]), raw);
}

#[tokio::test]
async fn reused_message_id_makes_two_tickets_and_the_same_mail_twice_makes_one() {
    let p = Poller::new(stack().dovecot().clone()).await;
    let user = unique_user("dupes");
    let account = p.account(&user).await;
    p.mailbox("dupes", &user, &account, serde_json::json!({}))
        .await;
    p.deliver(&user, &mail("reused", "Alarm", "disk full on srv1"));
    p.deliver(&user, &mail("reused", "Alarm", "disk full on srv2"));
    p.deliver(&user, &mail("twice", "Same", "identical"));
    let report = p.poll().await;
    assert_eq!(report.tickets_created, 3);
    // the same mail arrives again later (e.g. a re-sent copy)
    p.deliver(&user, &mail("twice", "Same", "identical"));
    let report = p.poll().await;
    assert_eq!(report.tickets_created, 0);
    assert_eq!(status(&report, "dupes").duplicates, 1);
    assert_eq!(p.tickets().len(), 3);
    assert_eq!(p.count(&user, "Processed"), 4);
}

#[tokio::test]
async fn malformed_and_oversize_mail_are_parked_with_a_ticket_and_a_note() {
    let p = Poller::new(stack().dovecot().clone()).await;
    let user = unique_user("poison");
    let account = p.account(&user).await;
    p.mailbox(
        "poison",
        &user,
        &account,
        serde_json::json!({"max_message_bytes": 8192}),
    )
    .await;
    p.deliver(
        &user,
        b"\x00\x01\x02 this is not a mail at all\r\n\r\n\xff\xfe",
    );
    let mut big = mail("big", "Huge log", "");
    big.extend(std::iter::repeat_n(b'A', 20_000));
    p.deliver(&user, &big);
    p.deliver(&user, &mail("fine", "Fine", "ok"));
    let report = p.poll().await;
    let s = status(&report, "poison");
    assert_eq!((s.parked, s.tickets_created), (2, 1), "{s:?}");
    assert_eq!(p.count(&user, "mailbridge-failed"), 2);
    assert_eq!(p.count(&user, "Processed"), 1);
    let tickets = p.tickets();
    let garbage = tickets
        .iter()
        .find(|t| !t.body["raw_message_base64"].is_null())
        .expect("the unparseable mail's ticket carries the raw mail");
    assert!(
        garbage.body["problem"]
            .as_str()
            .unwrap()
            .contains("could not parse")
    );
    let oversize = tickets
        .iter()
        .find(|t| t.body["draft"]["subject"] == "Huge log")
        .unwrap();
    assert!(
        oversize.body["problem"]
            .as_str()
            .unwrap()
            .contains("over the 8192-byte limit")
    );
    assert!(oversize.body["raw_message_base64"].is_null());
}

/// Tickets of different conversations are posted side by side, those of one conversation one
/// after the other in the order of arrival: a reply that arrives right after its original is
/// posted only once the original's ticket was made (so the helpdesk threads it into that ticket
/// instead of opening a new one), however slow the original's POST, while unrelated mail is
/// not held back by it.
#[tokio::test]
async fn a_reply_right_after_its_original_is_posted_after_the_originals_ticket() {
    let p = Poller::new(stack().dovecot().clone()).await;
    let user = unique_user("order");
    let account = p.account(&user).await;
    p.mailbox(
        "order",
        &user,
        &account,
        serde_json::json!({"max_mails_per_sender_per_hour": 0}),
    )
    .await;
    // The run posts one ticket alone until the API took one: a quick one first.
    p.deliver(&user, &mail("other-0", "Other 0", "quick"));
    p.deliver(&user, &mail("original", "Printer on fire", "SLOW-TO-POST"));
    let reply = String::from_utf8(mail("reply", "Re: Printer on fire", "It is out now."))
        .unwrap()
        .replace(
            "MIME-Version",
            "In-Reply-To: <original@customer.example>\r\nReferences: <original@customer.example>\r\nMIME-Version",
        );
    p.deliver(&user, reply.as_bytes());
    for i in 1..3 {
        p.deliver(
            &user,
            &mail(&format!("other-{i}"), &format!("Other {i}"), "quick"),
        );
    }
    stack().tickets().slow_payloads_containing(
        &p.sink,
        "SLOW-TO-POST",
        Duration::from_millis(1500),
    );
    let report = p.poll().await;
    let s = status(&report, "order");
    assert_eq!((s.outcome.as_str(), s.tickets_created), ("ok", 5), "{s:?}");
    let ticketed: Vec<String> = p
        .tickets()
        .iter()
        .map(|t| t.body["draft"]["subject"].as_str().unwrap().to_owned())
        .collect();
    let at = |subject: &str| ticketed.iter().position(|t| t == subject).unwrap();
    assert!(
        at("Printer on fire") < at("Re: Printer on fire"),
        "the reply was posted before its original's ticket was made: {ticketed:?}"
    );
    assert!(
        at("Other 1") < at("Printer on fire") && at("Other 2") < at("Printer on fire"),
        "unrelated mail waited for a slow POST of another conversation: {ticketed:?}"
    );
    assert_eq!(
        (p.count(&user, "INBOX"), p.count(&user, "Processed")),
        (0, 5)
    );
}

/// `since`: mail received before it is left untouched, to the second (IMAP's SINCE is by the
/// day, so a mail earlier on the same day is found by the search and must still be left).
#[tokio::test]
async fn mail_received_before_since_is_left_untouched() {
    let p = Poller::new(stack().dovecot().clone()).await;
    let user = unique_user("since");
    let account = p.account(&user).await;
    let now = chrono::Utc::now();
    let since = now - chrono::Duration::minutes(30);
    p.mailbox(
        "since",
        &user,
        &account,
        serde_json::json!({"since": since.to_rfc3339()}),
    )
    .await;
    let dovecot = &p.dovecot;
    dovecot
        .deliver_received_at(
            &user,
            &mail("last-week", "Old backlog", "Dealt with long ago."),
            now - chrono::Duration::days(7),
        )
        .unwrap();
    dovecot
        .deliver_received_at(
            &user,
            &mail("this-morning", "Just before", "Dealt with already."),
            since - chrono::Duration::seconds(5),
        )
        .unwrap();
    p.deliver(&user, &mail("new", "New request", "Please help."));

    let report = p.poll().await;
    let s = status(&report, "since");
    assert_eq!((s.outcome.as_str(), s.tickets_created), ("ok", 1), "{s:?}");
    let subjects: Vec<_> = p
        .tickets()
        .iter()
        .map(|t| t.body["draft"]["subject"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(subjects, ["New request"]);
    let left = p.dovecot.list_messages(&user, "INBOX").unwrap();
    assert_eq!(left.len(), 2, "the older mail stays in the folder");
    assert!(left.iter().all(|m| !m.is_seen()), "and is not even read");
    // And stays so run after run.
    let again = p.poll().await;
    assert_eq!(again.tickets_created, 0);
    assert_eq!(p.count(&user, "INBOX"), 2);
}
