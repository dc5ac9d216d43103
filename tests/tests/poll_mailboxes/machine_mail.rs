//! Mail that must not open a ticket: auto-replies, bounces and list mail set aside (threaded
//! machine mail reaches its ticket), list mail on a helpdesk address that is itself a list, and a
//! flood from one sender held past its hourly quota.

use super::*;

/// Auto-replies, bounces and list mail never open a ticket. Machine mail that threads
/// to a ticket is posted to it (flagged `auto_generated`); the rest is moved, unticketed, to the
/// auto-generated folder and counted. Nothing is deleted, nothing is sent.
#[tokio::test]
async fn machine_mail_never_opens_a_ticket_and_threaded_machine_mail_reaches_its_ticket() {
    let p = Poller::new(stack().dovecot().clone()).await;
    let user = unique_user("helpdesk");
    let account = p.account(&user).await;
    // `delete` after-action: machine mail must still be moved, never deleted.
    p.mailbox(
        "helpdesk",
        &user,
        &account,
        serde_json::json!({"after_action": "delete"}),
    )
    .await;
    // Threaded (by the subject's ticket number, or the NDR's returned Message-ID): posted.
    p.deliver(&user, &corpus_mail("305-gmail-vacation-responder.eml"));
    p.deliver(&user, &corpus_mail("307-office365-ndr-bounce.eml"));
    // Unthreaded: set aside.
    p.deliver(&user, &corpus_mail("306-autoresponder-ticket-receipt.eml"));
    p.deliver(&user, &corpus_mail("317-mailing-list-post.eml"));
    p.deliver(&user, &corpus_mail("229-sisimai-lhost-postfix-14.eml"));
    // A person.
    p.deliver(&user, &mail("human", "Printer on fire", "Please help."));

    let report = p.poll().await;
    let s = status(&report, "helpdesk");
    assert_eq!(
        s.outcome,
        mailbridge::state_table::MailboxOutcome::Ok,
        "{report:?}"
    );
    assert_eq!(report.tickets_created, 3, "{report:?}");
    assert_eq!(report.skipped_auto_generated, 3, "{report:?}");
    assert_eq!(s.skipped_auto_generated, 3);
    let tickets = p.tickets();
    assert_eq!(tickets.len(), 3);
    let mut threaded: Vec<(String, bool)> = tickets
        .iter()
        .map(|t| {
            (
                // the signed layers' number, else the subject's (kept apart)
                t.body["draft"]["ticket_number"]
                    .as_str()
                    .or(t.body["draft"]["subject_ticket_number"].as_str())
                    .unwrap_or("-")
                    .to_string(),
                t.body["draft"]["auto_generated"].as_bool().unwrap(),
            )
        })
        .collect();
    threaded.sort();
    assert_eq!(
        threaded,
        [
            ("-".to_string(), false),
            ("3100".to_string(), true),
            ("4711".to_string(), true)
        ]
    );
    // Nothing lost: the three set-aside mails are in the folder, the rest deleted after their
    // tickets, nothing left in INBOX.
    assert_eq!(p.count(&user, "INBOX"), 0);
    assert_eq!(p.count(&user, "mailbridge-auto-generated"), 3);
    let stored = DynamoStateStore::new(dynamodb(), &p.table)
        .get_status("helpdesk")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.skipped_auto_generated, 3);
    // A second run: nothing new.
    let again = p.poll().await;
    assert_eq!(again.tickets_created + again.skipped_auto_generated, 0);
    assert_eq!(p.tickets().len(), 3);
}

/// A helpdesk address that is itself a list or group (a Google Group relaying customer mail with
/// `List-Id`): by default its list mail is set aside like a newsletter; with `list_mail: ticket`
/// it opens tickets, while an out-of-office relayed through the same group is still set aside.
#[tokio::test]
async fn list_mail_opens_tickets_only_on_a_mailbox_with_list_mail_ticket() {
    let p = Poller::new(stack().dovecot().clone()).await;
    let group_post = |user: &str| {
        format!(
            "From: Dana Customer <dana@customer.example>\r\nTo: {user}\r\nSubject: VPN drops every hour\r\nMessage-ID: <{}@customer.example>\r\nList-Id: <support.contoso.example>\r\nPrecedence: list\r\nMailing-list: list {user}; contact support+owners@contoso.example\r\nList-Unsubscribe: <mailto:support+unsubscribe@contoso.example>\r\n\r\nSince Monday the VPN drops every hour.\r\n",
            unique("group-post")
        )
        .into_bytes()
    };
    let relayed_ooo = |user: &str| {
        format!(
            "From: Bob Away <bob@customer.example>\r\nTo: {user}\r\nSubject: Automatic reply: VPN drops every hour\r\nMessage-ID: <{}@customer.example>\r\nAuto-Submitted: auto-replied\r\nList-Id: <support.contoso.example>\r\n\r\nI am away until Monday.\r\n",
            unique("ooo")
        )
        .into_bytes()
    };
    let mut users = Vec::new();
    for (name, setting) in [("group-default", None), ("group-ticket", Some("ticket"))] {
        let user = unique_user(name);
        let account = p.account(&user).await;
        let extra = match setting {
            Some(value) => serde_json::json!({ "list_mail": value }),
            None => serde_json::json!({}),
        };
        p.mailbox(name, &user, &account, extra).await;
        p.deliver(&user, &group_post(&user));
        p.deliver(&user, &corpus_mail("317-mailing-list-post.eml"));
        p.deliver(&user, &relayed_ooo(&user));
        users.push(user);
    }
    let report = p.poll().await;
    let default = status(&report, "group-default");
    assert_eq!(
        default.outcome,
        mailbridge::state_table::MailboxOutcome::Ok,
        "{report:?}"
    );
    assert_eq!(
        (default.tickets_created, default.skipped_auto_generated),
        (0, 3),
        "{default:?}"
    );
    assert_eq!(p.count(&users[0], "mailbridge-auto-generated"), 3);
    let ticket = status(&report, "group-ticket");
    assert_eq!(
        ticket.outcome,
        mailbridge::state_table::MailboxOutcome::Ok,
        "{report:?}"
    );
    assert_eq!(
        (ticket.tickets_created, ticket.skipped_auto_generated),
        (2, 1),
        "the relayed out-of-office is still set aside: {ticket:?}"
    );
    assert_eq!(p.count(&users[1], "mailbridge-auto-generated"), 1);
    assert_eq!(p.count(&users[1], "Processed"), 2);
    assert_eq!(p.count(&users[1], "INBOX"), 0);
    let mut tickets: Vec<_> = p
        .tickets()
        .iter()
        .map(|t| {
            assert_eq!(t.body["mailbox"], "group-ticket");
            assert_eq!(
                t.body["draft"]["auto_generated"], true,
                "the helpdesk can tell"
            );
            (
                t.body["draft"]["subject"].as_str().unwrap().to_string(),
                t.body["draft"]["auto_reason"]
                    .as_str()
                    .unwrap()
                    .split(':')
                    .next()
                    .unwrap()
                    .to_string(),
            )
        })
        .collect();
    tickets.sort();
    assert_eq!(
        tickets,
        [
            (
                "VPN drops every hour".to_string(),
                "mailing_list".to_string()
            ),
            (
                "[vendor-announce] Security update 4.2.1 released".to_string(),
                "mailing_list".to_string()
            ),
        ]
    );
    let again = p.poll().await;
    assert_eq!(again.tickets_created + again.skipped_auto_generated, 0);
}

/// A flood (or a mail loop) from one address: past `max_mails_per_sender_per_hour` its mail is
/// held in a folder of its own, unticketed, counted in the status; other senders' mail and mail
/// already counted go on; nothing is deleted, and a held mail moved back is posted.
#[tokio::test]
async fn a_flood_from_one_sender_is_held_past_its_hourly_quota_and_nothing_is_lost() {
    // The quota counts per clock hour: start well inside one so both polls share it.
    let into_hour = chrono::Utc::now().timestamp() % 3600;
    if into_hour > 3600 - 90 {
        tokio::time::sleep(Duration::from_secs((3600 - into_hour + 1) as u64)).await;
    }
    let p = Poller::new(stack().dovecot().clone()).await;
    let user = unique_user("flooded");
    let account = p.account(&user).await;
    p.mailbox(
        "flooded",
        &user,
        &account,
        serde_json::json!({"max_mails_per_sender_per_hour": 3}),
    )
    .await;
    for i in 0..5 {
        p.deliver(
            &user,
            &mail(&format!("flood-{i}"), &format!("Flood {i}"), "x"),
        );
    }
    let other = "From: Bob <bob@customer.example>\r\nTo: helpdesk@example.com\r\nSubject: Real problem\r\n\
         Message-ID: <real@customer.example>\r\n\r\nHelp.\r\n";
    p.deliver(&user, other.as_bytes());

    let report = p.poll().await;
    let flooded = status(&report, "flooded");
    assert_eq!(
        flooded.outcome,
        mailbridge::state_table::MailboxOutcome::Ok,
        "{report:?}"
    );
    assert_eq!(
        (flooded.tickets_created, flooded.held),
        (4, 2),
        "{flooded:?}"
    );
    assert_eq!(report.held, 2);
    let senders: Vec<String> = p
        .tickets()
        .iter()
        .map(|t| {
            t.body["draft"]["from"]["address"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(
        senders
            .iter()
            .filter(|s| *s == "ann@customer.example")
            .count(),
        3
    );
    assert!(senders.contains(&"bob@customer.example".to_string()));
    assert_eq!(p.count(&user, "INBOX"), 0);
    assert_eq!(p.count(&user, "mailbridge-held"), 2, "held, not lost");

    // Still over the quota this hour: more from the same sender is held too, with no ticket.
    p.deliver(&user, &mail("flood-5", "Flood 5", "x"));
    let again = p.poll().await;
    assert_eq!(status(&again, "flooded").held, 1, "{again:?}");
    assert_eq!(p.tickets().len(), 4);
    assert_eq!(p.count(&user, "mailbridge-held"), 3);
}

/// A window takes each sender's quota at once: one state table update per sender for the window,
/// not one per mail (counted by a proxy in front of moto, against the same mails polled with the
/// quota off), the first mails in the order of arrival ticketed and the rest held; a sender
/// with some of the quota left gets what is left.
#[tokio::test]
async fn a_window_takes_each_senders_quota_in_one_update_and_holds_the_latest_mails() {
    let into_hour = chrono::Utc::now().timestamp() % 3600;
    if into_hour > 3600 - 90 {
        tokio::time::sleep(Duration::from_secs((3600 - into_hour + 1) as u64)).await;
    }
    let counter = local_stack::aws_calls::AwsCallCounter::start(&stack().moto().endpoint_url)
        .await
        .unwrap();
    let mut p = Poller::new(stack().dovecot().clone()).await;
    let counted = aws_sdk_dynamodb::config::Builder::from(&stack().moto().sdk_config())
        .endpoint_url(&counter.endpoint_url)
        .build();
    p.deps.state = Arc::new(DynamoStateStore::new(
        aws_sdk_dynamodb::Client::from_conf(counted),
        &p.table,
    ));
    let bob = |id: &str, subject: &str| {
        format!(
            "From: Bob <bob@customer.example>\r\nTo: helpdesk@example.com\r\nSubject: {subject}\r\n\
             Message-ID: <{id}@customer.example>\r\n\r\nHelp.\r\n"
        )
        .into_bytes()
    };
    // The same mails in a mailbox with the quota off and in one with a quota of 3.
    let mut users = Vec::new();
    for (name, quota) in [("unlimited", 0), ("limited", 3)] {
        let user = unique_user(name);
        let account = p.account(&user).await;
        p.mailbox(
            name,
            &user,
            &account,
            serde_json::json!({"max_mails_per_sender_per_hour": quota}),
        )
        .await;
        users.push((name, user));
    }
    // UpdateItem calls of one run of mailbox `name`, and its status.
    let poll = |name: &'static str| {
        let (p, counter) = (&p, &counter);
        async move {
            let before = counter.counts();
            let report = poll_mailboxes::poll_once(
                &p.deps,
                Some(&[name.to_string()]),
                Instant::now() + Duration::from_secs(60),
            )
            .await
            .unwrap();
            let updates = counter
                .since(&before)
                .get("DynamoDB_20120810.UpdateItem")
                .copied()
                .unwrap_or(0);
            (updates, status(&report, name).clone())
        }
    };
    let subjects = |sender: &str| -> Vec<String> {
        let mut subjects: Vec<String> = p
            .tickets()
            .iter()
            .filter(|t| t.body["draft"]["from"]["address"] == sender)
            .map(|t| t.body["draft"]["subject"].as_str().unwrap().to_string())
            .collect();
        subjects.sort();
        subjects
    };

    // One window: five mails from Ann, two from Bob.
    for (name, user) in &users {
        for i in 0..5 {
            p.deliver(
                user,
                &mail(&format!("{name}-ann-{i}"), &format!("{name} Ann {i}"), "x"),
            );
        }
        for i in 0..2 {
            p.deliver(
                user,
                &bob(&format!("{name}-bob-{i}"), &format!("{name} Bob {i}")),
            );
        }
    }
    let (updates_off, unlimited) = poll("unlimited").await;
    assert_eq!(unlimited.tickets_created, 7, "{unlimited:?}");
    let (updates_on, limited) = poll("limited").await;
    assert_eq!(
        (limited.tickets_created, limited.held),
        (5, 2),
        "{limited:?}"
    );
    assert_eq!(
        updates_on - updates_off,
        2,
        "one quota update per sender for the window ({updates_on} UpdateItem calls with the quota, {updates_off} without)"
    );
    let ann = subjects("ann@customer.example");
    let ann: Vec<&String> = ann.iter().filter(|s| s.starts_with("limited")).collect();
    assert_eq!(
        ann,
        ["limited Ann 0", "limited Ann 1", "limited Ann 2"],
        "the first mails in the order of arrival are ticketed"
    );
    let limited_user = &users[1].1;
    assert_eq!(p.count(limited_user, "mailbridge-held"), 2);

    // Next window: Ann's quota is used up (one refused update), Bob has one of three left
    // (a refused update that finds the count, then one that takes what is left).
    for (name, user) in &users {
        p.deliver(
            user,
            &mail(&format!("{name}-ann-5"), &format!("{name} Ann 5"), "x"),
        );
        for i in 2..4 {
            p.deliver(
                user,
                &bob(&format!("{name}-bob-{i}"), &format!("{name} Bob {i}")),
            );
        }
    }
    let (updates_off, unlimited) = poll("unlimited").await;
    assert_eq!(unlimited.tickets_created, 3, "{unlimited:?}");
    let (updates_on, limited) = poll("limited").await;
    assert_eq!(
        (limited.tickets_created, limited.held),
        (1, 2),
        "{limited:?}"
    );
    assert_eq!(updates_on - updates_off, 3, "{updates_on} vs {updates_off}");
    let bob_tickets = subjects("bob@customer.example");
    let bob_tickets: Vec<&String> = bob_tickets
        .iter()
        .filter(|s| s.starts_with("limited"))
        .collect();
    assert_eq!(
        bob_tickets,
        ["limited Bob 0", "limited Bob 1", "limited Bob 2"]
    );
    assert_eq!(
        p.count(limited_user, "mailbridge-held"),
        4,
        "held, not lost"
    );
    assert_eq!(p.count(limited_user, "INBOX"), 0);
}
