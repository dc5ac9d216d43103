//! TLS verification: an IMAP server with an untrusted certificate, HTTPS endpoints with an
//! untrusted CA or a wrong host name.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_imap_server_with_an_untrusted_certificate_is_refused_and_the_mail_stays() {
    let mut p = Poller::new().await;
    // The production connector without the local stack's CA: only the OS trust store.
    p.deps.connector = Arc::new(ImapConnector::new(None, Duration::from_secs(10)).unwrap());
    let dovecot = stack().dovecot();
    let (user, account) = new_account("fm-tls").await;
    p.mailbox("untrusted", &user, &account, json!({})).await;
    dovecot
        .deliver_to(
            &user,
            "INBOX",
            &mail(&unique("tls"), "not over an unverified link"),
        )
        .unwrap();
    let report = p.poll().await;
    let s = status(&report, "untrusted");
    assert_eq!(
        s.outcome,
        mailbridge::state_table::MailboxOutcome::Failed,
        "{report:?}"
    );
    let reason = s.reason.as_deref().unwrap_or_default();
    assert!(
        reason.contains("TLS") && reason.contains("certificate"),
        "names the TLS problem: {reason}"
    );
    assert!(stack().tickets().tickets(&p.sink).is_empty());
    assert_eq!(dovecot.list_messages(&user, "INBOX").unwrap().len(), 1);
}

fn client_trusting(ca_pem: &str) -> reqwest::Client {
    mailbridge::http::client(&mailbridge::http::HttpOptions {
        extra_root_certs_pem: vec![ca_pem.as_bytes().to_vec()],
        ..Default::default()
    })
    .unwrap()
}

/// One notification through `process_batch` with `mail` as the Graph client and an account
/// whose identity platform is `authority_host`; returns the outcome.
async fn send_one_through(
    mail: GraphClient,
    identity_http: reqwest::Client,
    authority_host: Option<String>,
    label: &str,
) -> Outcome {
    let (_upn, account) = new_account("fm-tls").await;
    let name = format!("mailbridge/{account}");
    if let Some(host) = authority_host {
        let mut secret =
            AccountSecret::parse(&name, &mailbridge_tests::get_secret(&name).await.unwrap())
                .unwrap();
        secret.authority_host = host;
        put_secret(&name, &secret.to_json()).await.unwrap();
    }
    let aws = stack().moto().sdk_config();
    let (_q, dlq_url) = create_queue_with_dlq(&unique("fm-tls-park"), 5)
        .await
        .unwrap();
    let sqs_client = aws_sdk_sqs::Client::new(&aws);
    let deps = Deps {
        tokens: Arc::new(TokenService::new(
            Arc::new(SecretsManagerStore::from_conf(&aws)),
            IdentityClient::new(identity_http),
            TokenServiceConfig {
                default_timeout: Duration::from_secs(4),
                ..TokenServiceConfig::default()
            },
        )),
        mail: Arc::new(mail),
        idempotency: Arc::new(DynamoIdempotencyStore::new(
            aws_sdk_dynamodb::Client::new(&aws),
            create_state_table("fm-tls").await.unwrap(),
        )),
        messages: Arc::new(mailbridge::message_store::S3MessageStore::new(
            mailbridge_tests::s3(),
        )),
        parking: Arc::new(SqsParking::new(sqs_client.clone(), dlq_url)),
        visibility: Arc::new(SqsVisibility::new(sqs_client)),
        thread_key: ThreadKey::from_secret_value("fault-matrix-thread-key").unwrap(),
        settings: BatchSettings {
            safety_margin: Duration::from_secs(1),
            ..BatchSettings::default()
        },
    };
    let event = event_for(&[json!({
        "version": 1,
        "account": name,
        "to": [{"address": "customer@example.com"}],
        "subject": format!("tls {label}"),
        "body": {"content_type": "text", "content": "x"}
    })])
    .await;
    let report = process_batch(event, Instant::now() + Duration::from_secs(20), &deps).await;
    let outcome = report.messages[0].outcome.clone();
    assert_eq!(
        report.response.batch_item_failures.len(),
        usize::from(outcome.is_failure()),
        "{report:?}"
    );
    outcome
}

/// TLS row "HTTPS verification and host names": HTTPS endpoints on 127.0.0.1 whose certificate
/// comes from a CA the client does not trust, or from a trusted CA but for `wrong.example`.
/// The ticket API client, the Graph client and the identity client each refuse before sending
/// anything, the error names the TLS failure (`UnknownIssuer`, `certificate not valid for name "localhost"`), the
/// notification is retried (never parked, never sent, the account never marked), and a mail
/// whose ticket API is behind such a certificate stays in the INBOX. A control endpoint with a
/// trusted certificate for the right name gets through the handshake and answers 503, so the
/// refusals are the certificate's doing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_with_an_untrusted_ca_or_a_wrong_host_name_is_refused_and_nothing_is_lost() {
    // its servers listen on loopback
    mailbridge::config::allow_local_targets_in_this_process();
    use local_stack::tls_endpoint::TlsEndpoint;
    let untrusted = TlsEndpoint::start(&["localhost", "127.0.0.1"])
        .await
        .unwrap();
    let wrong_name = TlsEndpoint::start(&["wrong.example"]).await.unwrap();
    let control = TlsEndpoint::start(&["localhost", "127.0.0.1"])
        .await
        .unwrap();
    let cases: [(&str, &TlsEndpoint, reqwest::Client, Option<&str>); 3] = [
        (
            "untrusted CA",
            &untrusted,
            mailbridge::http::default_client().unwrap(),
            Some("UnknownIssuer"),
        ),
        (
            "wrong host name",
            &wrong_name,
            client_trusting(&wrong_name.ca_pem),
            Some("not valid for name \"localhost\""),
        ),
        ("control", &control, client_trusting(&control.ca_pem), None),
    ];
    for (label, endpoint, http, tls_failure) in cases {
        let names_tls = |text: &str| match tls_failure {
            Some(kind) => {
                assert!(
                    text.contains("certificate") && text.contains(kind),
                    "{label}: the error names the TLS failure ({kind}): {text}"
                );
            }
            None => assert!(
                !text.contains("certificate"),
                "{label}: the control passes TLS: {text}"
            ),
        };

        // Ticket API client.
        let sink = mailbridge::ticket_sink::WebhookTicketSink::new(
            http.clone(),
            format!("{}/tickets", endpoint.url("localhost")),
            mailbridge::ticket_sink::WebhookAuth::None,
            RetryPolicy {
                initial_backoff: Duration::from_millis(20),
                max_backoff: Duration::from_millis(100),
                max_attempts: 2,
                attempt_timeout: Duration::from_secs(5),
            },
        );
        let payload = mailbridge::ticket_sink::TicketPayload {
            schema: mailbridge::ticket_sink::TICKET_PAYLOAD_SCHEMA.into(),
            mailbox: "m".into(),
            mailbox_address: "m@example.com".into(),
            received_at: chrono::Utc::now(),
            idempotency_key: "k".repeat(64),
            draft: mailbridge::mail::TicketDraft {
                subject: "tls".into(),
                ..Default::default()
            },
            attachments: Vec::new(),
            problem: None,
            raw_message_base64: None,
        };
        use mailbridge::ticket_sink::TicketSink as _;
        let err = sink
            .deliver(
                &payload,
                &"k".repeat(64),
                Instant::now() + Duration::from_secs(10),
            )
            .await
            .expect_err("no ticket over this endpoint");
        names_tls(&err.to_string());

        // Graph client (the account's identity platform is the working stand-in).
        let graph =
            GraphClient::with_http(http.clone(), &format!("{}/v1.0", endpoint.url("localhost")))
                .unwrap();
        let outcome = send_one_through(
            graph,
            mailbridge::http::default_client().unwrap(),
            None,
            label,
        )
        .await;
        let Outcome::Retry { reason, .. } = &outcome else {
            panic!("{label}: Graph behind this certificate must be retried: {outcome:?}");
        };
        names_tls(reason);

        // Identity client (the account's authority is this endpoint).
        let outcome = send_one_through(
            GraphClient::new(&stack().graph().v1_url()).unwrap(),
            http.clone(),
            Some(endpoint.url("localhost")),
            label,
        )
        .await;
        let Outcome::Retry { reason, .. } = &outcome else {
            panic!("{label}: a token endpoint behind this certificate is transient: {outcome:?}");
        };
        names_tls(reason);

        if tls_failure.is_some() {
            assert_eq!(
                endpoint.handshakes(),
                0,
                "{label}: the client refused every handshake"
            );
            assert_eq!(endpoint.requests(), 0, "{label}: nothing was sent");
        } else {
            assert!(
                endpoint.requests() >= 3,
                "{label}: the control got the requests"
            );
        }
    }

    // The poller: the mail stays in the INBOX, the mailbox status names the TLS failure.
    let p = Poller::new().await;
    let dovecot = stack().dovecot();
    let (user, account) = new_account("fm-tls-poll").await;
    p.mailbox(
        "tls",
        &user,
        &account,
        json!({"ticket_api_url": format!("{}/tickets", untrusted.url("localhost"))}),
    )
    .await;
    dovecot
        .deliver_to(
            &user,
            "INBOX",
            &mail(&unique("tls"), "Behind a bad certificate"),
        )
        .unwrap();
    let report = p.poll().await;
    let s = status(&report, "tls");
    assert_eq!(
        s.outcome,
        mailbridge::state_table::MailboxOutcome::Partial,
        "{s:?}"
    );
    let reason = s.reason.as_deref().unwrap_or("");
    assert!(reason.contains("UnknownIssuer"), "{s:?}");
    assert_eq!(
        dovecot.list_messages(&user, "INBOX").unwrap().len(),
        1,
        "the mail stays"
    );
    assert_eq!(untrusted.requests(), 0);
}
