//! Secrets faults: Secrets Manager throttling (through `local_stack::aws_fault_proxy`), a
//! malformed or missing ticket API secret, an account secret deleted while the poller runs.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_or_missing_ticket_api_secret_leaves_the_mail_and_names_the_secret() {
    let p = Poller::new().await;
    let dovecot = stack().dovecot();
    let (user, account) = new_account("fm-tsecret").await;
    let malformed = format!("mailbridge/ticket-api/{}", unique("fm-malformed"));
    put_secret(&malformed, r#"{"type":"api_key","header":"X-API-Key""#)
        .await
        .unwrap();
    let missing = format!("mailbridge/ticket-api/{}", unique("fm-missing"));
    p.mailbox(
        "malformed",
        &user,
        &account,
        json!({"ticket_api_secret": malformed}),
    )
    .await;
    let (other_user, other_account) = new_account("fm-tsecret-missing").await;
    p.mailbox(
        "missing",
        &other_user,
        &other_account,
        json!({"ticket_api_secret": missing}),
    )
    .await;
    dovecot
        .deliver_to(&user, "INBOX", &mail(&unique("ts"), "waits"))
        .unwrap();
    dovecot
        .deliver_to(&other_user, "INBOX", &mail(&unique("ts2"), "waits too"))
        .unwrap();
    let report = p.poll().await;
    for (name, secret, upn) in [
        ("malformed", &malformed, &user),
        ("missing", &missing, &other_user),
    ] {
        let s = status(&report, name);
        assert_ne!(
            s.outcome,
            mailbridge::state_table::MailboxOutcome::Ok,
            "{report:?}"
        );
        let reason = s.reason.as_deref().unwrap_or_default();
        assert!(reason.contains(secret.as_str()), "{name}: {reason}");
        assert_eq!(
            dovecot.list_messages(upn, "INBOX").unwrap().len(),
            1,
            "{name}: the mail waits in the INBOX"
        );
    }
    assert!(stack().tickets().tickets(&p.sink).is_empty());
}

/// A Secrets Manager client that goes through the fault proxy (everything else reaches moto).
async fn throttling_proxy() -> (
    local_stack::aws_fault_proxy::AwsFaultProxy,
    aws_sdk_secretsmanager::Client,
) {
    let proxy = local_stack::aws_fault_proxy::AwsFaultProxy::start(&stack().moto().endpoint_url)
        .await
        .unwrap();
    let sdk = stack().moto().sdk_config();
    let conf = aws_sdk_secretsmanager::config::Builder::from(&sdk)
        .endpoint_url(&proxy.endpoint_url)
        .build();
    (proxy, aws_sdk_secretsmanager::Client::from_conf(conf))
}

fn token_service_over(client: aws_sdk_secretsmanager::Client) -> Arc<TokenService> {
    Arc::new(TokenService::new(
        Arc::new(SecretsManagerStore::new(client)),
        IdentityClient::new(mailbridge::http::default_client().unwrap()),
        TokenServiceConfig {
            default_timeout: Duration::from_secs(20),
            ..TokenServiceConfig::default()
        },
    ))
}

async fn stored_account(name: &str) -> AccountSecret {
    AccountSecret::parse(name, &mailbridge_tests::get_secret(name).await.unwrap()).unwrap()
}

fn gaps_ms(calls: &[local_stack::aws_fault_proxy::ProxyCall], operation: &str) -> Vec<u128> {
    let at: Vec<_> = calls
        .iter()
        .filter(|c| c.operation == operation)
        .map(|c| c.at)
        .collect();
    at.windows(2).map(|w| (w[1] - w[0]).as_millis()).collect()
}

/// Secrets Manager row "throttling", short burst: the first two `GetSecretValue` and the first
/// two `PutSecretValue` calls on the account secret answer `ThrottlingException`. The token
/// layer (through the SDK's standard retry: 3 attempts, exponential backoff with jitter) gets
/// the token, writes the rotated refresh token back, and never touches the account status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_manager_throttling_burst_is_retried_with_backoff_and_never_needs_reauth() {
    let (proxy, client) = throttling_proxy().await;
    let (_upn, account) = new_account("fm-throttle").await;
    let name = format!("mailbridge/{account}");
    proxy.throttle("GetSecretValue", &name, 2);
    proxy.throttle("PutSecretValue", &name, 2);
    let tokens = token_service_over(client);
    let token = tokens
        .access_token_until(
            &account,
            mailbridge::token::Audience::Graph,
            Instant::now() + Duration::from_secs(30),
        )
        .await
        .expect("throttling is retried within the deadline");
    assert!(!secrecy::ExposeSecret::expose_secret(&token.secret).is_empty());
    let (gets, gets_throttled) = proxy.count("GetSecretValue", &name);
    let (puts, puts_throttled) = proxy.count("PutSecretValue", &name);
    assert_eq!(gets_throttled, 2, "the burst was hit");
    assert_eq!(puts_throttled, 2, "the burst was hit");
    assert!(gets >= 3 && puts == 3, "retried: {gets} gets, {puts} puts");
    let calls = proxy.calls(&name);
    println!(
        "backoff between GetSecretValue attempts: {:?} ms; PutSecretValue: {:?} ms",
        gaps_ms(&calls, "GetSecretValue"),
        gaps_ms(&calls, "PutSecretValue")
    );
    // The write-back got through (ROPC bootstrap → refresh token stored) and the account is ok.
    let stored = stored_account(&name).await;
    assert!(stored.refresh_token.is_some(), "rotated token written back");
    assert_eq!(
        stored.status.state,
        mailbridge::token::AccountState::Ok,
        "throttling never marks the account"
    );
}

/// Secrets Manager row "throttling", sustained: every `GetSecretValue` on the account secret is
/// throttled. send-notifications reports the item for retry (`batchItemFailures`, reason naming
/// `ThrottlingException`), sends nothing, parks nothing, and the account is not marked; the
/// poller leaves the mail and names the throttling in the mailbox status. Once the throttling
/// stops, the redelivered notification is sent exactly once and the mail becomes one ticket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_manager_throttling_past_the_retries_retries_the_notification_and_leaves_the_mail()
{
    let (proxy, client) = throttling_proxy().await;
    let (upn, account) = new_account("fm-throttle-long").await;
    let name = format!("mailbridge/{account}");
    proxy.throttle("GetSecretValue", &name, u32::MAX);
    let tokens = token_service_over(client.clone());

    // --- send-notifications
    let graph = stack().graph();
    let aws = stack().moto().sdk_config();
    let (_q, dlq_url) = create_queue_with_dlq(&unique("fm-throttle-park"), 5)
        .await
        .unwrap();
    let sqs_client = aws_sdk_sqs::Client::new(&aws);
    let deps = Deps {
        tokens: tokens.clone(),
        mail: Arc::new(GraphClient::new(&graph.v1_url()).unwrap()),
        idempotency: Arc::new(DynamoIdempotencyStore::new(
            aws_sdk_dynamodb::Client::new(&aws),
            create_state_table("fm-throttle").await.unwrap(),
        )),
        messages: Arc::new(mailbridge::message_store::S3MessageStore::new(
            mailbridge_tests::s3(),
        )),
        parking: Arc::new(SqsParking::new(sqs_client.clone(), dlq_url.clone())),
        visibility: Arc::new(SqsVisibility::new(sqs_client)),
        thread_key: ThreadKey::from_secret_value("fault-matrix-thread-key").unwrap(),
        settings: BatchSettings {
            safety_margin: Duration::from_secs(1),
            ..BatchSettings::default()
        },
    };
    let body = json!({
        "version": 1,
        "account": name,
        "to": [{"address": "customer@example.com"}],
        "subject": "throttled secret",
        "body": {"content_type": "text", "content": "x"}
    });
    let event = event_for(std::slice::from_ref(&body)).await;
    let report = process_batch(
        event.clone(),
        Instant::now() + Duration::from_secs(30),
        &deps,
    )
    .await;
    let outcome = &report.messages[0].outcome;
    let Outcome::Retry { reason, .. } = outcome else {
        panic!("throttling is transient: expected Retry, got {outcome:?}");
    };
    assert!(
        reason.contains("ThrottlingException") && reason.contains(&name),
        "the reason names the fault and the secret: {reason}"
    );
    assert_eq!(report.response.batch_item_failures.len(), 1, "{report:?}");
    assert_eq!(graph.accepted(&upn).len(), 0, "nothing sent");
    let (gets, _) = proxy.count("GetSecretValue", &name);
    assert!(gets >= 3, "the SDK retried before giving up: {gets} calls");
    println!(
        "backoff between throttled GetSecretValue attempts: {:?} ms",
        gaps_ms(&proxy.calls(&name), "GetSecretValue")
    );

    // --- poll-mailboxes, same account: the mailbox fails this run, the mail stays.
    let p = Poller::new().await;
    let p = Poller {
        deps: PollDeps {
            tokens: tokens.clone(),
            ..p.deps
        },
        ..p
    };
    p.mailbox("throttled", &upn, &account, json!({})).await;
    let dovecot = stack().dovecot();
    dovecot
        .deliver_to(&upn, "INBOX", &mail(&unique("thr"), "Throttled secret"))
        .unwrap();
    let report = p.poll().await;
    let s = status(&report, "throttled");
    assert_eq!(
        s.outcome,
        mailbridge::state_table::MailboxOutcome::Failed,
        "{s:?}"
    );
    assert!(
        s.reason
            .as_deref()
            .unwrap_or("")
            .contains("ThrottlingException"),
        "{s:?}"
    );
    assert_eq!(dovecot.list_messages(&upn, "INBOX").unwrap().len(), 1);
    assert!(stack().tickets().tickets(&p.sink).is_empty());
    assert_eq!(
        stored_account(&name).await.status.state,
        mailbridge::token::AccountState::Ok,
        "throttling never marks the account"
    );

    // --- The throttling stops: the redelivery is sent once, the next poll makes one ticket.
    proxy.stop_throttling(&name);
    let report = process_batch(event, Instant::now() + Duration::from_secs(30), &deps).await;
    assert!(report.response.batch_item_failures.is_empty(), "{report:?}");
    assert_eq!(graph.accepted(&upn).len(), 1, "sent exactly once");
    let report = p.poll().await;
    assert_eq!(
        status(&report, "throttled").tickets_created,
        1,
        "{report:?}"
    );
    assert_eq!(stack().tickets().tickets(&p.sink).len(), 1);
    assert_eq!(dovecot.list_messages(&upn, "INBOX").unwrap().len(), 0);
}

/// Secrets Manager row "account secret deleted while the poller runs": the account secret is
/// deleted (scheduled for deletion, Secrets Manager's default) between two runs of a warm
/// poller. While the cached IMAP token lives, mail is still ticketed; once a fresh token is
/// needed the mailbox fails with a reason naming the secret and the deletion, the mail stays;
/// after `RestoreSecret` the next run tickets it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_account_secret_deleted_while_the_poller_runs_leaves_the_mail_and_names_the_secret() {
    let p = Poller::new().await;
    let dovecot = stack().dovecot();
    let (user, account) = new_account("fm-deleted").await;
    let name = format!("mailbridge/{account}");
    p.mailbox("deleted", &user, &account, json!({})).await;
    let tickets = || stack().tickets().tickets(&p.sink).len();
    let inbox = || dovecot.list_messages(&user, "INBOX").unwrap().len();

    dovecot
        .deliver_to(
            &user,
            "INBOX",
            &mail(&unique("del-1"), "Before the deletion"),
        )
        .unwrap();
    assert_eq!(status(&p.poll().await, "deleted").tickets_created, 1);

    mailbridge_tests::secrets()
        .delete_secret()
        .secret_id(&name)
        .send()
        .await
        .unwrap();
    // Warm: the cached token still logs in.
    dovecot
        .deliver_to(
            &user,
            "INBOX",
            &mail(&unique("del-2"), "Token still cached"),
        )
        .unwrap();
    let report = p.poll().await;
    assert_eq!(
        status(&report, "deleted").outcome,
        mailbridge::state_table::MailboxOutcome::Ok,
        "{report:?}"
    );
    assert_eq!(tickets(), 2);

    // The token runs out (forced): the secret must be read again.
    p.deps
        .tokens
        .invalidate(&account, mailbridge::token::Audience::Imap);
    dovecot
        .deliver_to(
            &user,
            "INBOX",
            &mail(&unique("del-3"), "After the deletion"),
        )
        .unwrap();
    let report = p.poll().await;
    let s = status(&report, "deleted");
    assert_eq!(
        s.outcome,
        mailbridge::state_table::MailboxOutcome::Failed,
        "{s:?}"
    );
    let reason = s.reason.as_deref().unwrap_or("");
    assert!(
        reason.contains(&name) && reason.contains("deletion"),
        "the reason names the secret and its deletion: {reason}"
    );
    assert_eq!(inbox(), 1, "the mail stays");
    assert_eq!(tickets(), 2);

    mailbridge_tests::secrets()
        .restore_secret()
        .secret_id(&name)
        .send()
        .await
        .unwrap();
    let report = p.poll().await;
    assert_eq!(
        status(&report, "deleted").outcome,
        mailbridge::state_table::MailboxOutcome::Ok,
        "{report:?}"
    );
    assert_eq!(tickets(), 3, "each mail exactly one ticket");
    assert_eq!(inbox(), 0);
}
