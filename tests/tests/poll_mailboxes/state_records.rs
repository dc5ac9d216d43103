//! The poller's records in the state table (moto): mailbox configurations (a bad one named, not
//! fatal), dedupe and status records with their TTL.

use super::*;

fn mailbox_fields(user: &str, url: &str) -> serde_json::Value {
    serde_json::json!({"user": user, "account": "acct", "ticket_api_url": url})
}

#[tokio::test]
async fn mailbox_configs_load_from_the_state_table_and_a_bad_one_is_named() {
    let table = mailbridge_tests::create_state_table("poll").await.unwrap();
    let client = dynamodb();
    let url = "https://psa.example.com/api/tickets";
    let targets = mailbridge::mailbox::TargetPolicy::local()
        .with_sink_hosts(&["psa.example.com"])
        .unwrap();
    put_mailbox_config(
        &client,
        &table,
        "sales",
        &mailbox_fields("sales@example.com", url),
        &targets,
    )
    .await
    .unwrap();
    put_mailbox_config(
        &client,
        &table,
        "support",
        &mailbox_fields("support@example.com", url),
        &targets,
    )
    .await
    .unwrap();
    // An operator edits an item by hand and breaks it.
    client
        .update_item()
        .table_name(&table)
        .key(
            "pk",
            aws_sdk_dynamodb::types::AttributeValue::S("mailbox#support".into()),
        )
        .update_expression("SET #p = :p")
        .expression_attribute_names("#p", "port")
        .expression_attribute_values(
            ":p",
            aws_sdk_dynamodb::types::AttributeValue::S("imaps".into()),
        )
        .send()
        .await
        .unwrap();
    let err = put_mailbox_config(
        &client,
        &table,
        "bad",
        &serde_json::json!({"user": "x"}),
        &targets,
    )
    .await
    .unwrap_err();
    assert!(
        err.to_string().contains("mailbox bad: field `user`"),
        "{err}"
    );
    // A ticket API host off the allowlist is refused before anything is written.
    let err = put_mailbox_config(
        &client,
        &table,
        "elsewhere",
        &mailbox_fields("x@example.com", "https://collector.attacker.example/t"),
        &targets,
    )
    .await
    .unwrap_err();
    assert!(
        err.to_string().contains("\"collector.attacker.example\"")
            && err.to_string().contains("MAILBRIDGE_SINK_HOSTS"),
        "{err}"
    );
    // Read with a deployment that no longer allows psa.example.com: refused on read too.
    let strict = DynamoStateStore::new(client.clone(), &table)
        .with_targets(mailbridge::mailbox::TargetPolicy::from_lookup(|_| None).unwrap());
    let refused = strict
        .load_mailboxes(Some(&["sales".to_string()]))
        .await
        .unwrap();
    assert_eq!(refused[0].as_ref().unwrap_err().field, "sink.url");

    let store = DynamoStateStore::new(client.clone(), &table);
    let loaded = store.load_mailboxes(None).await.unwrap();
    assert_eq!(loaded.len(), 2, "nothing of `elsewhere` was stored");
    let sales = loaded[0].as_ref().unwrap();
    assert_eq!(sales.name, "sales");
    assert_eq!(sales.host, "outlook.office365.com");
    let support = loaded[1].as_ref().unwrap_err();
    assert_eq!(
        (support.mailbox.as_str(), support.field.as_str()),
        ("support", "port")
    );

    let named = store
        .load_mailboxes(Some(&["sales".to_string(), "ghost".to_string()]))
        .await
        .unwrap();
    assert!(named[0].is_ok());
    assert!(
        named[1]
            .as_ref()
            .unwrap_err()
            .to_string()
            .contains("mailbox#ghost")
    );

    mailbridge::state_table::delete_mailbox_config(&client, &table, "sales")
        .await
        .unwrap();
    assert_eq!(
        store.mailbox_names().await.unwrap(),
        vec!["support".to_string()]
    );
}

#[tokio::test]
async fn dedupe_and_status_records_round_trip_with_a_ttl() {
    let table = mailbridge_tests::create_state_table("poll").await.unwrap();
    let store = DynamoStateStore::new(dynamodb(), &table);
    let record = DedupeRecord {
        pk: "mail#m#abc".into(),
        ticket_id: Some("T-1".into()),
        message_id: None,
        uid_validity: 9,
        uid: 3,
        created_at: chrono::Utc::now().to_rfc3339(),
        expires_at: chrono::Utc::now().timestamp() + 3600,
    };
    assert!(store.get_dedupe(&record.pk).await.unwrap().is_none());
    store.put_dedupe(&record).await.unwrap();
    assert_eq!(store.get_dedupe(&record.pk).await.unwrap(), Some(record));
    let status = MailboxStatus {
        mailbox: "m".into(),
        outcome: mailbridge::state_table::MailboxOutcome::NeedsReauth,
        reason: Some("AADSTS70008".into()),
        last_run_at: chrono::Utc::now().to_rfc3339(),
        duration_ms: 1,
        tickets_created: 0,
        parked: 0,
        duplicates: 0,
        skipped_auto_generated: 0,
        held: 0,
        deferred: 0,
        uid_validity: None,
        imap_round_trips: 0,
        retry_last_uids: Vec::new(),
        last_success_at: Some("2026-11-27T23:55:00+00:00".into()),
        first_run_at: Some("2026-11-01T08:00:00+00:00".into()),
    };
    store.put_status(&status).await.unwrap();
    assert_eq!(store.get_status("m").await.unwrap(), Some(status));
}

/// The per-sender quota item: a share taken in one conditional update (what is left when not
/// all fit, read from the refused update), units given back, never below zero.
#[tokio::test]
async fn a_sender_quota_gives_what_is_left_and_takes_back_what_was_not_used() {
    let table = mailbridge_tests::create_state_table("poll").await.unwrap();
    let store = DynamoStateStore::new(dynamodb(), &table);
    let pk = "mail#m#sender#abc#2026120617";
    let expires_at = chrono::Utc::now().timestamp() + 7200;
    let mails = || async {
        let item = dynamodb()
            .get_item()
            .table_name(&table)
            .key("pk", aws_sdk_dynamodb::types::AttributeValue::S(pk.into()))
            .consistent_read(true)
            .send()
            .await
            .unwrap()
            .item
            .expect("the quota item");
        let mails = item["mails"].as_n().unwrap().parse::<i64>().unwrap();
        assert_eq!(item["expires_at"].as_n().unwrap(), &expires_at.to_string());
        mails
    };
    assert_eq!(
        store.take_sender_quota(pk, 2, 5, expires_at).await.unwrap(),
        2
    );
    assert_eq!(mails().await, 2);
    // 4 wanted, 3 left.
    assert_eq!(
        store.take_sender_quota(pk, 4, 5, expires_at).await.unwrap(),
        3
    );
    assert_eq!(mails().await, 5);
    assert_eq!(
        store.take_sender_quota(pk, 1, 5, expires_at).await.unwrap(),
        0
    );
    store.give_back_sender_quota(pk, 2).await.unwrap();
    assert_eq!(mails().await, 3);
    assert_eq!(
        store.take_sender_quota(pk, 9, 5, expires_at).await.unwrap(),
        2
    );
    assert_eq!(mails().await, 5);
    // More than is counted (the hour's item reset by hand): left as it is.
    store.give_back_sender_quota(pk, 6).await.unwrap();
    assert_eq!(mails().await, 5);
    // An item that is not there (expired) is not created by a give-back.
    let gone = "mail#m#sender#def#2026120617";
    store.give_back_sender_quota(gone, 1).await.unwrap();
    let item = dynamodb()
        .get_item()
        .table_name(&table)
        .key(
            "pk",
            aws_sdk_dynamodb::types::AttributeValue::S(gone.into()),
        )
        .send()
        .await
        .unwrap()
        .item;
    assert!(item.is_none(), "{item:?}");
}
