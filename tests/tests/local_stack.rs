//! The local stack itself: moto through the real AWS SDK clients, Dovecot XOAUTH2 over IMAPS,
//! and the Lambda Runtime API emulator with a real bootstrap.

use mailbridge_tests::{
    create_queue, create_state_table, dynamodb, get_secret, put_secret, sqs, stack, unique,
};

#[tokio::test]
async fn moto_sqs_roundtrip_through_the_sdk() {
    let queue_url = create_queue(&unique("stack-sqs")).await.unwrap();
    let client = sqs();
    client
        .send_message()
        .queue_url(&queue_url)
        .message_body(r#"{"hello":"world"}"#)
        .send()
        .await
        .unwrap();
    let received = client
        .receive_message()
        .queue_url(&queue_url)
        .max_number_of_messages(10)
        .wait_time_seconds(1)
        .send()
        .await
        .unwrap();
    let messages = received.messages();
    assert_eq!(messages.len(), 1, "one message back: {messages:?}");
    assert_eq!(messages[0].body(), Some(r#"{"hello":"world"}"#));
    client
        .delete_message()
        .queue_url(&queue_url)
        .receipt_handle(messages[0].receipt_handle().unwrap())
        .send()
        .await
        .unwrap();
}

#[tokio::test]
async fn moto_secrets_manager_roundtrip_through_the_sdk() {
    let name = format!("mailbridge/{}", unique("stack-secret"));
    put_secret(&name, r#"{"v":1}"#).await.unwrap();
    assert_eq!(get_secret(&name).await.unwrap(), r#"{"v":1}"#);
    put_secret(&name, r#"{"v":2}"#).await.unwrap();
    assert_eq!(get_secret(&name).await.unwrap(), r#"{"v":2}"#);
}

#[tokio::test]
async fn moto_dynamodb_state_table_roundtrip_through_the_sdk() {
    use aws_sdk_dynamodb::types::AttributeValue;
    let table = create_state_table("stack-state").await.unwrap();
    // idempotent
    local_stack::moto::ensure_state_table(&dynamodb(), &table)
        .await
        .unwrap();
    let client = dynamodb();
    let ttl = client
        .describe_time_to_live()
        .table_name(&table)
        .send()
        .await
        .unwrap();
    assert_eq!(
        ttl.time_to_live_description()
            .and_then(|d| d.attribute_name()),
        Some("expires_at")
    );
    client
        .put_item()
        .table_name(&table)
        .item("pk", AttributeValue::S("notification#1".into()))
        .item("expires_at", AttributeValue::N("4102444800".into()))
        .condition_expression("attribute_not_exists(pk)")
        .send()
        .await
        .unwrap();
    let again = client
        .put_item()
        .table_name(&table)
        .item("pk", AttributeValue::S("notification#1".into()))
        .condition_expression("attribute_not_exists(pk)")
        .send()
        .await;
    assert!(
        again
            .unwrap_err()
            .into_service_error()
            .is_conditional_check_failed_exception(),
        "second conditional put must fail"
    );
    let item = client
        .get_item()
        .table_name(&table)
        .key("pk", AttributeValue::S("notification#1".into()))
        .consistent_read(true)
        .send()
        .await
        .unwrap();
    assert!(item.item().is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moto_conditional_writes_of_one_item_are_atomic_as_on_aws() {
    // DynamoDB serializes writes to an item: of concurrent `attribute_not_exists(pk)` puts of
    // one new key exactly one wins. Idempotency claims and leases rest on it (two copies of one
    // notification in one batch claim concurrently). moto alone checks, then writes, on
    // parallel request threads: without the fidelity lock a round now and then has two winners
    // (rare: seen in 1 of 5 runs of this test; the lock makes it impossible by construction).
    use aws_sdk_dynamodb::types::AttributeValue;
    let table = create_state_table("stack-atomic").await.unwrap();
    let client = dynamodb();
    let mut rounds_with_other_than_one_winner = Vec::new();
    for round in 0..200 {
        let key = format!("claim#{round}");
        let puts = (0..8).map(|writer| {
            let client = client.clone();
            let table = table.clone();
            let key = key.clone();
            tokio::spawn(async move {
                client
                    .put_item()
                    .table_name(&table)
                    .item("pk", AttributeValue::S(key))
                    .item("writer", AttributeValue::N(writer.to_string()))
                    .condition_expression("attribute_not_exists(pk)")
                    .send()
                    .await
            })
        });
        let mut winners = 0;
        for put in futures::future::join_all(puts).await {
            match put.unwrap() {
                Ok(_) => winners += 1,
                Err(e) => assert!(
                    e.as_service_error()
                        .is_some_and(|e| e.is_conditional_check_failed_exception()),
                    "a losing put must fail its condition, not otherwise: {e:?}"
                ),
            }
        }
        if winners != 1 {
            rounds_with_other_than_one_winner.push((round, winners));
        }
    }
    assert!(
        rounds_with_other_than_one_winner.is_empty(),
        "(round, winners) where a conditional put was not atomic: {rounds_with_other_than_one_winner:?}"
    );
}

#[test]
fn moto_env_points_child_processes_at_moto() {
    let env = stack().moto().env();
    let endpoint = env
        .iter()
        .find(|(k, _)| k == "AWS_ENDPOINT_URL")
        .map(|(_, v)| v.clone())
        .unwrap();
    assert_eq!(endpoint, stack().moto().endpoint_url);
    assert!(
        env.iter()
            .any(|(k, v)| k == "AWS_REGION" && v == "us-east-1")
    );
}

/// A minimal RFC 7662 introspection endpoint for the Dovecot harness tests (independent of the
/// identity stand-in): `tokens` maps token → e-mail, `grants` maps (token, mailbox) → allowed;
/// every request's URI and body is recorded. `/introspect` answers the token alone (Dovecot's
/// first oauth2 passdb); `/introspect/mailbox` the token and the login user in the
/// password-grant form of the second one (a token response, or `400 invalid_grant`).
#[derive(Clone, Default)]
struct FakeIntrospection {
    tokens: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, String>>>,
    grants: std::sync::Arc<std::sync::Mutex<Vec<(String, String)>>>,
    requests: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl FakeIntrospection {
    async fn serve(&self) -> String {
        use axum::extract::{Query, State};
        async fn introspect(
            State(fake): State<FakeIntrospection>,
            Query(query): Query<std::collections::HashMap<String, String>>,
            uri: axum::http::Uri,
            body: String,
        ) -> axum::Json<serde_json::Value> {
            fake.requests.lock().unwrap().push(format!("{uri} {body}"));
            let form: std::collections::HashMap<String, String> =
                url::form_urlencoded::parse(body.as_bytes())
                    .into_owned()
                    .collect();
            let field = |name: &str| query.get(name).or_else(|| form.get(name)).cloned();
            let token = field("token").unwrap_or_default();
            let Some(email) = fake.tokens.lock().unwrap().get(&token).cloned() else {
                return axum::Json(serde_json::json!({"active": false}));
            };
            // a delegate asking for a mailbox it was granted: answer with that mailbox
            let email = match field("user") {
                Some(user)
                    if fake
                        .grants
                        .lock()
                        .unwrap()
                        .contains(&(token.clone(), user.to_lowercase())) =>
                {
                    user.to_lowercase()
                }
                _ => email,
            };
            axum::Json(serde_json::json!({"active": true, "email": email}))
        }
        async fn mailbox(
            State(fake): State<FakeIntrospection>,
            body: String,
        ) -> axum::response::Response {
            use axum::response::IntoResponse as _;
            fake.requests
                .lock()
                .unwrap()
                .push(format!("/introspect/mailbox {body}"));
            let form: std::collections::HashMap<String, String> =
                url::form_urlencoded::parse(body.as_bytes())
                    .into_owned()
                    .collect();
            let token = form.get("password").cloned().unwrap_or_default();
            let user = form
                .get("username")
                .cloned()
                .unwrap_or_default()
                .to_lowercase();
            let owner = fake.tokens.lock().unwrap().get(&token).cloned();
            let granted = fake
                .grants
                .lock()
                .unwrap()
                .contains(&(token.clone(), user.clone()));
            if owner.as_deref() == Some(user.as_str()) || (owner.is_some() && granted) {
                axum::Json(serde_json::json!({
                    "access_token": token, "token_type": "Bearer", "active": true, "email": user,
                }))
                .into_response()
            } else {
                (
                    axum::http::StatusCode::BAD_REQUEST,
                    axum::Json(serde_json::json!({"error": "invalid_grant"})),
                )
                    .into_response()
            }
        }
        let app = axum::Router::new()
            .route(
                "/introspect",
                axum::routing::get(introspect).post(introspect),
            )
            .route("/introspect/mailbox", axum::routing::post(mailbox))
            .with_state(self.clone());
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
            .await
            .unwrap();
        let url = format!("http://{}/introspect", listener.local_addr().unwrap());
        // serve on the stack's long-lived runtime: Dovecot may call after this test's runtime ends
        stack().runtime().spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        url
    }
}

#[tokio::test]
async fn dovecot_xoauth2_over_imaps_own_and_shared_mailbox() {
    let fake = FakeIntrospection::default();
    let url = fake.serve().await;
    let dovecot = mailbridge_tests::start_private_dovecot("dovecot-xoauth2", &url)
        .await
        .unwrap();
    let user = mailbridge_tests::unique_user("helpdesk");
    let shared = mailbridge_tests::unique_user("shared");
    fake.tokens
        .lock()
        .unwrap()
        .insert("good-token".into(), user.clone());
    fake.grants
        .lock()
        .unwrap()
        .push(("good-token".into(), shared.clone()));

    // good token, own mailbox
    let mut session = mailbridge_tests::imap_login_xoauth2(&dovecot, &user, "good-token")
        .await
        .unwrap();
    let inbox = session.select("INBOX").await.unwrap();
    assert_eq!(inbox.exists, 0);
    session.logout().await.unwrap();
    let seen = fake.requests.lock().unwrap().clone();
    assert!(
        seen.iter().any(|r| r.contains("token=good-token")),
        "Dovecot introspected the token: {seen:?}"
    );

    // OAUTHBEARER with the same token
    let mut session = mailbridge_tests::imap_login_oauthbearer(&dovecot, &user, "good-token")
        .await
        .unwrap();
    session.logout().await.unwrap();
    assert!(
        mailbridge_tests::imap_login_oauthbearer(&dovecot, &user, "bad-token")
            .await
            .is_err()
    );

    // unknown token
    let err = mailbridge_tests::imap_login_xoauth2(&dovecot, &user, "bad-token")
        .await
        .unwrap_err();
    assert!(format!("{err}").contains("AUTHENTICATIONFAILED"), "{err}");

    // shared mailbox with the delegate's token
    let mut session = mailbridge_tests::imap_login_xoauth2(&dovecot, &shared, "good-token")
        .await
        .unwrap();
    session.select("INBOX").await.unwrap();
    session.logout().await.unwrap();
    // a mailbox the token was not granted
    let other = mailbridge_tests::unique_user("other");
    assert!(
        mailbridge_tests::imap_login_xoauth2(&dovecot, &other, "good-token")
            .await
            .is_err()
    );
}

#[tokio::test]
async fn dovecot_deliver_status_list_uidvalidity_and_restart() {
    use futures::TryStreamExt;
    let fake = FakeIntrospection::default();
    let url = fake.serve().await;
    let dovecot = mailbridge_tests::start_private_dovecot("dovecot-admin", &url)
        .await
        .unwrap();
    let user = mailbridge_tests::unique_user("helpdesk");
    fake.tokens
        .lock()
        .unwrap()
        .insert("admin-token".into(), user.clone());
    let raw = b"From: a@example.com\r\nTo: helpdesk@example.com\r\nSubject: hello\r\nMessage-ID: <m1@example.com>\r\n\r\nbody line\r\n";
    dovecot_arc(&dovecot)
        .deliver(&user, raw.to_vec())
        .await
        .unwrap();
    dovecot.deliver_to(&user, "Archive", raw).unwrap();

    let status = dovecot.mailbox_status(&user, "INBOX").unwrap();
    assert_eq!((status.messages, status.unseen, status.uidnext), (1, 1, 2));
    let listed = dovecot.list_messages(&user, "INBOX").unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].uid, 1);
    assert!(!listed[0].is_seen());
    assert_eq!(
        listed[0].raw,
        raw.to_vec(),
        "stored text is the delivered message"
    );
    assert_eq!(
        dovecot.mailbox_status(&user, "Archive").unwrap().messages,
        1
    );

    // the same message over IMAP
    let mut session = mailbridge_tests::imap_login_xoauth2(&dovecot, &user, "admin-token")
        .await
        .unwrap();
    let mailbox = session.select("INBOX").await.unwrap();
    assert_eq!(mailbox.uid_validity, Some(status.uidvalidity));
    let fetched: Vec<_> = session
        .uid_fetch("1", "(UID BODY.PEEK[])")
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    assert_eq!(fetched[0].body(), Some(&raw[..]));
    session.logout().await.unwrap();

    dovecot
        .set_uidvalidity(&user, "INBOX", status.uidvalidity + 7)
        .unwrap();
    assert_eq!(
        dovecot.mailbox_status(&user, "INBOX").unwrap().uidvalidity,
        status.uidvalidity + 7
    );

    // stop: logins fail; restart: same ports, same mail
    dovecot.stop();
    assert!(!dovecot.is_running());
    assert!(mailbridge_tests::imaps_connect(&dovecot).await.is_err());
    dovecot.restart().unwrap();
    let mut session = mailbridge_tests::imap_login_xoauth2(&dovecot, &user, "admin-token")
        .await
        .unwrap();
    assert_eq!(session.select("INBOX").await.unwrap().exists, 1);
    session.logout().await.unwrap();
    dovecot.expunge_all(&user, "INBOX").unwrap();
    assert_eq!(dovecot.mailbox_status(&user, "INBOX").unwrap().messages, 0);
}

fn dovecot_arc(dovecot: &local_stack::dovecot::Dovecot) -> &dyn local_stack::MailDrop {
    dovecot
}

#[tokio::test]
async fn runtime_api_runs_a_real_bootstrap_warm_across_invocations() {
    use local_stack::runtime_api::{FunctionConfig, InvocationResult, RuntimeApi};
    use std::time::Duration;
    let binary =
        local_stack::runtime_api::workspace_binary("mailbridge-local-stack", "echo-bootstrap")
            .unwrap();
    let api = RuntimeApi::start().await.unwrap();
    api.spawn_function(&FunctionConfig::new("echo", &binary))
        .unwrap();

    let first = api
        .invoke(serde_json::json!({"n": 1}), Duration::from_secs(60))
        .await
        .unwrap();
    println!(
        "cold start: init {:?}, first invocation {:?}",
        first.init_duration, first.duration
    );
    assert!(
        first.init_duration.is_some(),
        "first invocation is a cold start: {first:?}"
    );
    let first_id = first.request_id.clone();
    let body = first.into_response().unwrap();
    assert_eq!(body["echo"]["n"], 1, "answer: {body}");
    assert_eq!(
        body["request_id"],
        first_id.as_str(),
        "request id header reached the handler"
    );

    let second = api
        .invoke(serde_json::json!({"n": 2}), Duration::from_secs(60))
        .await
        .unwrap();
    assert!(second.init_duration.is_none(), "same process: warm");
    assert_ne!(second.request_id, first_id);
    println!("warm invocation {:?}", second.duration);
    assert!(
        matches!(second.result, InvocationResult::Response(ref v) if v["echo"]["n"] == 2),
        "{second:?}"
    );

    // a function error is reported, and the process stays warm
    let failed = api
        .invoke(serde_json::json!({"fail": "boom"}), Duration::from_secs(60))
        .await
        .unwrap();
    assert!(
        matches!(failed.result, InvocationResult::FunctionError { ref error_type, ref error_message, .. }
            if error_type == "EchoFailure" && error_message == "boom"),
        "{failed:?}"
    );
    let after = api
        .invoke(serde_json::json!({"n": 3}), Duration::from_secs(60))
        .await
        .unwrap();
    assert!(
        after.init_duration.is_none(),
        "still warm after a function error"
    );

    // timeout: the sandbox is reset; the next process is a cold start again
    let slow = api
        .invoke(
            serde_json::json!({"sleep_ms": 5000}),
            Duration::from_millis(500),
        )
        .await
        .unwrap();
    assert!(
        matches!(slow.result, InvocationResult::TimedOut),
        "{slow:?}"
    );
    let died = api
        .invoke(serde_json::json!({"n": 4}), Duration::from_secs(5))
        .await;
    assert!(
        died.is_err(),
        "no process after a timeout until spawn_function"
    );
    api.spawn_function(&FunctionConfig::new("echo", &binary))
        .unwrap();
    let exited = api
        .invoke(serde_json::json!({"exit": 3}), Duration::from_secs(60))
        .await
        .unwrap();
    assert!(
        matches!(exited.result, InvocationResult::ProcessExited(_)),
        "{exited:?}"
    );
    api.shutdown();
}

#[tokio::test]
async fn runtime_api_runs_the_real_send_notifications_bootstrap() {
    use local_stack::runtime_api::{InvocationResult, invoke_binary};
    // without its configuration the real function must refuse to start and say what is missing
    let binary =
        local_stack::runtime_api::workspace_binary("send-notifications", "send-notifications")
            .unwrap();
    let outcome = invoke_binary(
        &binary,
        &stack().moto().env(),
        serde_json::json!({"Records": []}),
        std::time::Duration::from_secs(60),
    )
    .await
    .unwrap();
    assert!(
        matches!(
            outcome.result,
            InvocationResult::ProcessExited(_) | InvocationResult::InitError { .. }
        ),
        "{outcome:?}"
    );
    let logs = outcome.logs();
    assert!(
        logs.contains("MAILBRIDGE_"),
        "the startup error names the missing variable: {logs}"
    );
}

#[tokio::test]
async fn runtime_api_reports_a_process_that_exits_without_answering() {
    use local_stack::runtime_api::{InvocationResult, invoke_binary};
    let outcome = invoke_binary(
        std::path::Path::new("/bin/false"),
        &[],
        serde_json::json!({}),
        std::time::Duration::from_secs(20),
    )
    .await
    .unwrap();
    assert!(
        matches!(outcome.result, InvocationResult::ProcessExited(_)),
        "{outcome:?}"
    );
}

#[tokio::test]
async fn dovecot_accepts_an_imap_token_from_the_identity_stand_in_and_rejects_a_graph_token() {
    use local_stack::identity::{AppRegistration, UserAccount};
    use std::time::Duration;
    let stack = stack();
    let identity = stack.identity();
    let dovecot = stack.dovecot();
    let tenant = unique("tenant");
    let client_id = uuid::Uuid::new_v4().to_string();
    let user = mailbridge_tests::unique_user("helpdesk");
    let shared = mailbridge_tests::unique_user("shared");
    identity.register_app(AppRegistration::mailbridge(&tenant, &client_id));
    identity.register_user(UserAccount::new(&tenant, &user, "pw"));
    let imap_token = identity.mint_access_token(
        &tenant,
        &client_id,
        &user,
        "https://outlook.office.com",
        &["IMAP.AccessAsUser.All"],
        Duration::from_secs(3600),
    );
    let graph_token = identity.mint_access_token(
        &tenant,
        &client_id,
        &user,
        "https://graph.microsoft.com",
        &["Mail.Send"],
        Duration::from_secs(3600),
    );

    let mut session = mailbridge_tests::imap_login_xoauth2(dovecot, &user, &imap_token)
        .await
        .expect("an IMAP-audience token logs in");
    session.select("INBOX").await.unwrap();
    session.logout().await.unwrap();

    let err = mailbridge_tests::imap_login_xoauth2(dovecot, &user, &graph_token)
        .await
        .expect_err("a Graph-audience token must be rejected by IMAP");
    assert!(format!("{err}").contains("AUTHENTICATIONFAILED"), "{err}");

    // a token of one user does not open another user's mailbox
    assert!(
        mailbridge_tests::imap_login_xoauth2(dovecot, &shared, &imap_token)
            .await
            .is_err()
    );
    // ...until that user grants access to it (shared mailbox)
    identity.grant_mailbox_access(&user, &shared);
    let mut session = mailbridge_tests::imap_login_xoauth2(dovecot, &shared, &imap_token)
        .await
        .expect("a delegate's token opens a shared mailbox it was granted");
    session.select("INBOX").await.unwrap();
    session.logout().await.unwrap();

    // revoked access tokens stop working at the next login (auth cache off)
    identity.revoke_access_tokens(&user);
    assert!(
        mailbridge_tests::imap_login_xoauth2(dovecot, &user, &imap_token)
            .await
            .is_err()
    );
}

#[tokio::test]
async fn the_graph_stand_in_takes_faults_over_http_from_another_process() {
    use local_stack::graph_control::{GraphControl, GraphFault};
    let graph = stack().graph();
    // only the URL, as a demo or a `sam local invoke` run in another process has it
    let control = GraphControl::new(&graph.base_url);
    let tenant = format!("{}.onmicrosoft.com", unique("tenant"));
    let upn = mailbridge_tests::unique_user("controlled");
    let token = stack().identity().mint_access_token(
        &tenant,
        &uuid::Uuid::new_v4().to_string(),
        &upn,
        "https://graph.microsoft.com",
        &["Mail.Send"],
        std::time::Duration::from_secs(600),
    );
    control
        .inject(
            &upn,
            GraphFault::Throttle429 {
                count: 1,
                retry_after_secs: 7,
            },
        )
        .await
        .unwrap();
    let send = || {
        reqwest::Client::new()
            .post(format!("{}/me/sendMail", graph.v1_url()))
            .bearer_auth(&token)
            .json(&serde_json::json!({"message": {
                "subject": "controlled",
                "body": {"contentType": "Text", "content": "hi"},
                "toRecipients": [{"emailAddress": {"address": "customer@example.com"}}]
            }}))
            .send()
    };
    let throttled = send().await.unwrap();
    assert_eq!(throttled.status(), 429);
    assert_eq!(throttled.headers()["retry-after"], "7");
    let accepted = send().await.unwrap();
    assert_eq!(accepted.status(), 202, "the fault was for one request");
    assert_eq!(control.request_count(&upn).await.unwrap(), 2);
    let mails = control.accepted(&upn).await.unwrap();
    assert_eq!(mails.len(), 1);
    assert_eq!(mails[0].request["message"]["subject"], "controlled");
    assert!(!mails[0].mime_base64.is_empty());
    // a fault the stand-in does not know is refused, naming it
    let refused = reqwest::Client::new()
        .post(format!("{}/_control/faults", graph.base_url))
        .json(&serde_json::json!({"mailbox": upn, "fault": "melt_down"}))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 422);
    assert!(refused.text().await.unwrap().contains("melt_down"));
}

#[tokio::test]
async fn the_ticket_api_stand_in_takes_faults_over_http_from_another_process() {
    use local_stack::ticket_api_control::{TicketApiControl, TicketApiFault};
    let tickets = stack().tickets();
    let control = TicketApiControl::new(&tickets.base_url);
    let sink = unique("controlled-sink");
    control
        .inject(
            &sink,
            TicketApiFault::FailNext {
                count: 1,
                status: 503,
            },
        )
        .await
        .unwrap();
    let post = || {
        reqwest::Client::new()
            .post(tickets.sink_url(&sink))
            .header("content-type", "application/json")
            .body("{}")
            .send()
    };
    assert_eq!(post().await.unwrap().status(), 503, "the injected 503");
    assert_eq!(
        post().await.unwrap().status(),
        400,
        "then the stand-in's own rules (no Idempotency-Key)"
    );
    control
        .inject(&sink, TicketApiFault::Down { down: true })
        .await
        .unwrap();
    assert_eq!(post().await.unwrap().status(), 503);
    control
        .inject(&sink, TicketApiFault::Down { down: false })
        .await
        .unwrap();
    assert_eq!(control.requests(&sink).await.unwrap(), 3);
    assert!(control.tickets(&sink).await.unwrap().is_empty());
    // a status outside the fault's class is refused with the reason
    let e = control
        .inject(
            &sink,
            TicketApiFault::RejectNext {
                count: 1,
                status: 503,
            },
        )
        .await
        .unwrap_err();
    assert!(e.to_string().contains("must be a 4xx"), "{e}");
}

/// The Graph stand-in delivers sent mail into Dovecot only for the recipients a test asked for
/// (here over HTTP, as another process would): mailboxes nobody reads never grow. The recipient
/// nobody asked for comes first, and one mail is delivered recipient after recipient, so once
/// the asked-for copy is there the other would be too.
#[tokio::test]
async fn the_graph_stand_in_delivers_only_to_the_recipients_a_test_asked_for() {
    use local_stack::graph_control::GraphControl;
    let graph = stack().graph();
    let control = GraphControl::new(&graph.base_url);
    let upn = mailbridge_tests::unique_user("sender");
    let ignored = mailbridge_tests::unique_user("nobody-reads");
    let wanted = mailbridge_tests::unique_user("reader");
    control.deliver_mail_for(&wanted).await.unwrap();
    let token = stack().identity().mint_access_token(
        &format!("{}.onmicrosoft.com", unique("tenant")),
        &uuid::Uuid::new_v4().to_string(),
        &upn,
        "https://graph.microsoft.com",
        &["Mail.Send"],
        std::time::Duration::from_secs(600),
    );
    let sent = reqwest::Client::new()
        .post(format!("{}/me/sendMail", graph.v1_url()))
        .bearer_auth(&token)
        .json(&serde_json::json!({"message": {
            "subject": "to two",
            "body": {"contentType": "Text", "content": "hi"},
            "toRecipients": [
                {"emailAddress": {"address": ignored}},
                {"emailAddress": {"address": wanted}}
            ]
        }}))
        .send()
        .await
        .unwrap();
    assert_eq!(sent.status(), 202);
    let dovecot = stack().dovecot();
    let mut arrived = Vec::new();
    for _ in 0..300 {
        arrived = dovecot.list_messages(&wanted, "INBOX").unwrap_or_default();
        if !arrived.is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(arrived.len(), 1, "the asked-for recipient got the mail");
    assert!(
        !dovecot.home_of(&ignored).exists(),
        "no mailbox was made for a recipient nobody reads"
    );
    assert_eq!(graph.accepted(&upn).len(), 1, "still recorded");
}

/// A plain-port IMAP client of `dovecot`, greeting read.
async fn plain_imap_client(
    dovecot: &local_stack::dovecot::Dovecot,
) -> async_imap::Client<tokio::net::TcpStream> {
    let stream = tokio::net::TcpStream::connect(("127.0.0.1", dovecot.imap_port))
        .await
        .unwrap();
    let mut client = async_imap::Client::new(stream);
    client.read_response().await.unwrap().unwrap();
    client
}

/// Dovecot takes a password from its master user only (the Graph stand-in's login to every
/// user's mail); users log in with tokens, as before.
#[tokio::test]
async fn dovecot_takes_a_password_login_from_its_master_user_only() {
    let fake = FakeIntrospection::default();
    let url = fake.serve().await;
    let dovecot = mailbridge_tests::start_private_dovecot("dovecot-master", &url)
        .await
        .unwrap();
    let user = mailbridge_tests::unique_user("helpdesk");
    dovecot
        .deliver_to(&user, "INBOX", b"Subject: hello\r\n\r\nbody\r\n")
        .unwrap();
    let (login, password) = dovecot.master_login(&user);
    let mut session = plain_imap_client(&dovecot)
        .await
        .login(&login, password)
        .await
        .map_err(|(e, _)| e)
        .unwrap();
    assert_eq!(session.select("INBOX").await.unwrap().exists, 1);
    session.logout().await.unwrap();
    for (name, secret) in [
        (login.as_str(), "wrong"),
        (user.as_str(), password),
        (user.as_str(), "anything"),
    ] {
        let refused = plain_imap_client(&dovecot)
            .await
            .login(name, secret)
            .await
            .is_err();
        assert!(refused, "LOGIN {name} with a password must be refused");
    }
}

/// The Graph stand-in's mail store reads and changes Dovecot's mail over at most 4 long-lived
/// IMAP sessions per user, speaks modified UTF-7 folder names, takes a moved message's new UID
/// from `COPYUID`, and logs in again when Dovecot dropped its sessions.
#[tokio::test]
async fn the_graph_mail_store_reuses_few_imap_sessions_and_logs_in_again_when_dropped() {
    use local_stack::dovecot::graph_store::{ImapStore, SESSIONS_PER_USER};
    use local_stack::graph::MailStore as _;
    let fake = FakeIntrospection::default();
    let url = fake.serve().await;
    let dovecot = std::sync::Arc::new(
        mailbridge_tests::start_private_dovecot("graph-store", &url)
            .await
            .unwrap(),
    );
    let store = ImapStore::new(dovecot.clone());
    let user = mailbridge_tests::unique_user("graph-store");
    let mails: Vec<Vec<u8>> = (0..6)
        .map(|i| {
            format!("Subject: mail {i}\r\nMessage-ID: <m{i}@example.com>\r\n\r\nbody {i}\r\n")
                .into_bytes()
        })
        .collect();
    for raw in &mails {
        dovecot.deliver_to(&user, "INBOX", raw).unwrap();
    }
    let (validity, listed) = store.summaries(&user, "INBOX").await.unwrap().unwrap();
    assert_eq!(
        validity,
        dovecot.mailbox_status(&user, "INBOX").unwrap().uidvalidity
    );
    let uids: Vec<u32> = listed.iter().map(|m| m.uid).collect();
    assert_eq!(uids, [1, 2, 3, 4, 5, 6]);
    assert!(listed.iter().all(|m| !m.seen));
    assert_eq!(listed[0].size, mails[0].len() as u64);

    // 48 reads at once: the sessions are reused, never more than 4
    let reads = futures::future::join_all(
        (0..48).map(|i| store.message(&user, "INBOX", validity, uids[i % 6])),
    )
    .await;
    for (i, read) in reads.into_iter().enumerate() {
        assert_eq!(read.unwrap().as_deref(), Some(&mails[i % 6][..]));
    }
    let logins = store.logins();
    assert!(
        (1..=SESSIONS_PER_USER as u64).contains(&logins),
        "{logins} logins for 49 operations"
    );
    // another UIDVALIDITY, no such UID, no such folder: nothing
    assert_eq!(
        store
            .message(&user, "INBOX", validity + 1, 1)
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        store.summary(&user, "INBOX", validity, 99).await.unwrap(),
        None
    );
    assert_eq!(store.summaries(&user, "Nowhere").await.unwrap(), None);

    // a folder name beyond ASCII: modified UTF-7 on the wire, UTF-8 in the store
    store.create_folder(&user, "Erledigt ✓ & so").await.unwrap();
    store.create_folder(&user, "Erledigt ✓ & so").await.unwrap();
    assert!(
        dovecot
            .folders(&user)
            .unwrap()
            .contains(&"Erledigt ✓ & so".to_owned())
    );
    assert!(
        store
            .folder_names(&user)
            .await
            .unwrap()
            .contains(&"Erledigt ✓ & so".to_owned())
    );

    // a move: nowhere (nothing moves), then the new UID from COPYUID, flags and date kept
    let nowhere = store
        .move_message(&user, "INBOX", validity, 1, "Nowhere")
        .await
        .unwrap();
    assert!(nowhere.is_none(), "no such folder: {nowhere:?}");
    store.set_seen(&user, "INBOX", 1, true).await.unwrap();
    let (dest_validity, moved) = store
        .move_message(&user, "INBOX", validity, 1, "Erledigt ✓ & so")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        dest_validity,
        dovecot
            .mailbox_status(&user, "Erledigt ✓ & so")
            .unwrap()
            .uidvalidity
    );
    assert_eq!((moved.uid, moved.seen), (1, true));
    assert_eq!(moved.received, listed[0].received);
    assert_eq!(
        store
            .message(&user, "Erledigt ✓ & so", dest_validity, moved.uid)
            .await
            .unwrap()
            .as_deref(),
        Some(&mails[0][..])
    );
    let again = store
        .move_message(&user, "INBOX", validity, 1, "Erledigt ✓ & so")
        .await
        .unwrap();
    assert!(again.is_none(), "a message moved away is gone: {again:?}");
    store.expunge(&user, "INBOX", 2).await.unwrap();
    assert_eq!(
        store.summary(&user, "INBOX", validity, 2).await.unwrap(),
        None
    );

    // Dovecot drops the pooled sessions (`doveadm kick`): the next operation logs in again
    let before = store.logins();
    dovecot.doveadm(&["kick", &user], None).unwrap();
    let (_, left) = store.summaries(&user, "INBOX").await.unwrap().unwrap();
    assert_eq!(left.iter().map(|m| m.uid).collect::<Vec<_>>(), [3, 4, 5, 6]);
    assert!(store.logins() > before);

    // another client changes the folder a pooled session keeps selected: the next operation
    // sees it (an expunge; a new UIDVALIDITY, after which Dovecot ends that session)
    assert!(
        store
            .summary(&user, "INBOX", validity, 3)
            .await
            .unwrap()
            .is_some()
    );
    dovecot
        .doveadm(
            &["expunge", "-u", &user, "mailbox", "INBOX", "uid", "3"],
            None,
        )
        .unwrap();
    assert_eq!(
        store.summary(&user, "INBOX", validity, 3).await.unwrap(),
        None
    );
    assert!(
        store
            .summary(&user, "INBOX", validity, 4)
            .await
            .unwrap()
            .is_some()
    );
    dovecot
        .set_uidvalidity(&user, "INBOX", validity + 7)
        .unwrap();
    assert_eq!(
        store.summary(&user, "INBOX", validity, 4).await.unwrap(),
        None
    );
    let renewed = store
        .summary(&user, "INBOX", validity + 7, 4)
        .await
        .unwrap();
    assert_eq!(renewed.map(|m| m.uid), Some(4));
}
