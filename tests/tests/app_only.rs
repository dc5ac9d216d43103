//! App-only accounts (client credentials: a certificate or a client secret, no user) against
//! real servers: moto Secrets Manager, the identity stand-in (which verifies client assertions
//! like Entra ID), the Graph stand-in and Dovecot; sending and polling through the real
//! bootstraps under the Lambda Runtime API emulator.
//!
//! Each test owns its tenant, app, mailbox and account secret, so tests run in parallel.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use local_stack::identity::{AppRegistration, IdentityStandIn, app_certificate};
use mailbridge::error::{Classify, ErrorClass};
use mailbridge::token::app_credential::{AppCertificate, AppCredential};
use mailbridge::token::{
    AccessTokenSource, AccountSecret, Audience, IdentityClient, SecretsManagerStore, TokenError,
    TokenService, TokenServiceConfig,
};
use mailbridge_tests::parked::parked_messages;
use mailbridge_tests::{get_secret, put_secret, stack, unique, unique_user};
use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;

/// One test's world: a tenant with an app-only app registration and a mailbox.
struct World {
    idp: IdentityStandIn,
    tenant: String,
    client_id: String,
    mailbox: String,
    secret_name: String,
    /// The certificate the app registration knows, and its key.
    certificate: (String, String),
}

impl World {
    /// An app authenticating with a certificate valid for a year.
    async fn new() -> World {
        Self::with_certificate_days(365).await
    }

    /// An app authenticating with a certificate valid for `days` more days.
    async fn with_certificate_days(days: i64) -> World {
        let idp = stack().identity().clone();
        let tenant = format!("{}.onmicrosoft.com", unique("tenant"));
        let client_id = uuid::Uuid::new_v4().to_string();
        let certificate = app_certificate("mailbridge", Utc::now() + chrono::Duration::days(days))
            .expect("certificate");
        idp.register_app(AppRegistration::app_only_with_certificate(
            &tenant,
            &client_id,
            &certificate.0,
        ));
        World {
            idp,
            tenant,
            client_id,
            mailbox: unique_user("helpdesk"),
            secret_name: format!("mailbridge/{}", unique("app")),
            certificate,
        }
    }

    fn credential(&self) -> AppCredential {
        AppCredential::Certificate(Box::new(
            AppCertificate::from_pem(
                &self.certificate.0,
                SecretString::from(self.certificate.1.clone()),
            )
            .expect("certificate and key"),
        ))
    }

    fn account(&self, credential: AppCredential) -> AccountSecret {
        let mut a =
            AccountSecret::new_app_only(&self.tenant, &self.client_id, &self.mailbox, credential);
        a.authority_host = self.idp.base_url.clone();
        a
    }

    async fn write_secret(&self, account: &AccountSecret) {
        put_secret(&self.secret_name, &account.to_json())
            .await
            .expect("write secret");
    }

    fn service(&self) -> TokenService {
        TokenService::new(
            Arc::new(SecretsManagerStore::from_conf(&stack().moto().sdk_config())),
            IdentityClient::new(mailbridge::http::default_client().expect("http client")),
            TokenServiceConfig {
                default_timeout: Duration::from_secs(10),
                ..TokenServiceConfig::default()
            },
        )
    }

    fn token_endpoint(&self) -> String {
        format!("{}/{}/oauth2/v2.0/token", self.idp.base_url, self.tenant)
    }

    /// A client credentials request for Graph with `assertion`.
    async fn with_assertion(&self, assertion: &str) -> (u16, Value) {
        let r = reqwest::Client::new()
            .post(self.token_endpoint())
            .form(&[
                ("client_id", self.client_id.as_str()),
                ("grant_type", "client_credentials"),
                ("scope", "https://graph.microsoft.com/.default"),
                (
                    "client_assertion_type",
                    "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                ),
                ("client_assertion", assertion),
            ])
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json().await.unwrap())
    }
}

fn cert_of(pem: &(String, String)) -> AppCertificate {
    AppCertificate::from_pem(&pem.0, SecretString::from(pem.1.clone())).expect("certificate")
}

#[tokio::test]
async fn a_certificate_account_gets_graph_and_imap_tokens_without_a_user() {
    let w = World::new().await;
    let account = w.account(w.credential());
    assert_eq!(
        account.scope_for(Audience::Graph),
        "https://graph.microsoft.com/.default"
    );
    assert_eq!(
        account.scope_for(Audience::Imap),
        "https://outlook.office365.com/.default"
    );
    w.write_secret(&account).await;
    // The stored secret says its mode and keeps the key; nothing of a user.
    let stored: Value = serde_json::from_str(&get_secret(&w.secret_name).await.unwrap()).unwrap();
    assert_eq!(stored["mode"], "app_only");
    assert!(
        stored["certificate"]
            .as_str()
            .unwrap()
            .contains("BEGIN CERTIFICATE")
    );
    assert!(stored.get("refresh_token").is_none() && stored.get("password").is_none());

    let service = w.service();
    let graph = service
        .access_token(&w.secret_name, Audience::Graph)
        .await
        .expect("graph token");
    assert_eq!(graph.app_only_mailbox.as_deref(), Some(w.mailbox.as_str()));
    assert_eq!(
        graph.scopes,
        vec!["Mail.Send".to_owned()],
        "the roles claim"
    );
    let issued = w
        .idp
        .lookup_access_token(graph.secret.expose_secret())
        .unwrap();
    assert!(issued.app_only && issued.upn.is_empty());
    assert_eq!(issued.audience, "https://graph.microsoft.com");
    let imap = service
        .access_token(&w.secret_name, Audience::Imap)
        .await
        .expect("imap token");
    let issued = w
        .idp
        .lookup_access_token(imap.secret.expose_secret())
        .unwrap();
    assert_eq!(issued.audience, "https://outlook.office365.com");
    assert_eq!(issued.roles, vec!["IMAP.AccessAsApp".to_owned()]);
    // Cached: a second call makes no token request.
    let again = service
        .access_token(&w.secret_name, Audience::Graph)
        .await
        .unwrap();
    assert_eq!(again.secret.expose_secret(), graph.secret.expose_secret());
}

#[tokio::test]
async fn bad_client_assertions_are_refused_with_entras_error_codes() {
    let w = World::new().await;
    let cert = cert_of(&w.certificate);
    let now = Utc::now();
    let endpoint = w.token_endpoint();
    let code = |body: &Value| body["error_codes"][0].as_u64();

    // A good one works once; the same assertion again is a replay.
    let good = cert.client_assertion(&w.client_id, &endpoint, now).unwrap();
    let (s, body) = w.with_assertion(good.expose_secret()).await;
    assert_eq!(s, 200, "{body}");
    let (s, body) = w.with_assertion(good.expose_secret()).await;
    assert_eq!((s, code(&body)), (401, Some(50027)), "{body}");

    // Signed with a certificate the app registration does not know.
    let other = cert_of(&app_certificate("other", now + chrono::Duration::days(30)).unwrap());
    let a = other
        .client_assertion(&w.client_id, &endpoint, now)
        .unwrap();
    let (s, body) = w.with_assertion(a.expose_secret()).await;
    assert_eq!((s, code(&body)), (401, Some(700027)), "{body}");
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .contains("The key was not found")
    );

    // The registered certificate's thumbprint, but another key's signature.
    let a = other
        .client_assertion(&w.client_id, &endpoint, now)
        .unwrap();
    let forged = {
        let parts: Vec<&str> = a.expose_secret().split('.').collect();
        let good_parts: Vec<String> = cert
            .client_assertion(&w.client_id, &endpoint, now)
            .unwrap()
            .expose_secret()
            .split('.')
            .map(str::to_owned)
            .collect();
        format!("{}.{}.{}", good_parts[0], good_parts[1], parts[2])
    };
    let (s, body) = w.with_assertion(&forged).await;
    assert_eq!((s, code(&body)), (401, Some(700027)), "{body}");
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .contains("verify the signature failed"),
        "{body}"
    );

    // Addressed to another token endpoint (aud), or naming another client (iss/sub).
    let a = cert
        .client_assertion(
            &w.client_id,
            "https://login.microsoftonline.com/contoso.com/oauth2/v2.0/token",
            now,
        )
        .unwrap();
    let (s, body) = w.with_assertion(a.expose_secret()).await;
    assert_eq!((s, code(&body)), (401, Some(700023)), "{body}");
    let a = cert
        .client_assertion(&uuid::Uuid::new_v4().to_string(), &endpoint, now)
        .unwrap();
    let (s, body) = w.with_assertion(a.expose_secret()).await;
    assert_eq!((s, code(&body)), (401, Some(700021)), "{body}");

    // Expired (issued an hour ago, valid 10 minutes) or not yet valid (an hour ahead).
    for at in [
        now - chrono::Duration::hours(1),
        now + chrono::Duration::hours(1),
    ] {
        let a = cert.client_assertion(&w.client_id, &endpoint, at).unwrap();
        let (s, body) = w.with_assertion(a.expose_secret()).await;
        assert_eq!((s, code(&body)), (401, Some(700024)), "{body}");
    }

    // The certificate itself expired (notAfter passed): the key is refused.
    let expired_pem = app_certificate("expired", now - chrono::Duration::days(2)).unwrap();
    let mut app =
        AppRegistration::app_only_with_certificate(&w.tenant, &w.client_id, &w.certificate.0);
    app.certificates.push(expired_pem.0.clone());
    w.idp.register_app(app);
    let a = cert_of(&expired_pem)
        .client_assertion(&w.client_id, &endpoint, now)
        .unwrap();
    let (s, body) = w.with_assertion(a.expose_secret()).await;
    assert_eq!((s, code(&body)), (401, Some(700027)), "{body}");
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .contains("expired"),
        "{body}"
    );
}

#[tokio::test]
async fn a_refused_credential_holds_the_account_with_a_fix_and_never_retries_blindly() {
    let w = World::new().await;
    // An expired client secret: AADSTS7000222, a person must add a new one.
    let mut app = AppRegistration::app_only(&w.tenant, &w.client_id, "current-secret");
    app.expired_client_secrets.push("old-secret".to_owned());
    w.idp.register_app(app);
    let account = w.account(AppCredential::ClientSecret {
        secret: SecretString::from("old-secret"),
        expires_at: Some(Utc::now() - chrono::Duration::days(1)),
    });
    w.write_secret(&account).await;
    let err = w
        .service()
        .access_token(&w.secret_name, Audience::Graph)
        .await
        .unwrap_err();
    assert_eq!(err.class(), ErrorClass::NeedsReauth, "{err}");
    let TokenError::NeedsReauth { reason, .. } = &err else {
        panic!("{err:?}")
    };
    assert!(
        reason.contains("AADSTS7000222") && reason.contains("mailbridge login --app"),
        "{reason}"
    );
    let stored =
        AccountSecret::parse(&w.secret_name, &get_secret(&w.secret_name).await.unwrap()).unwrap();
    assert!(
        stored.status.applies_to(Audience::Imap),
        "every audience waits"
    );

    // The current secret works once stored (and the status reset, as `login --app` does).
    let account = w.account(AppCredential::ClientSecret {
        secret: SecretString::from("current-secret"),
        expires_at: Some(Utc::now() + chrono::Duration::days(300)),
    });
    w.write_secret(&account).await;
    let token = w
        .service()
        .access_token(&w.secret_name, Audience::Graph)
        .await
        .expect("token with the current secret");
    assert_eq!(token.scopes, vec!["Mail.Send".to_owned()]);
}

#[test]
fn the_secret_schema_says_the_mode_and_refuses_mixed_credentials() {
    let (cert, key) = app_certificate("schema", Utc::now() + chrono::Duration::days(30)).unwrap();
    let (_, other_key) = app_certificate("other", Utc::now() + chrono::Duration::days(30)).unwrap();
    let base = serde_json::json!({
        "schema_version": 1,
        "tenant_id": "contoso.onmicrosoft.com",
        "client_id": "11111111-2222-3333-4444-555555555555",
        "username": "helpdesk@contoso.com",
        "mode": "app_only",
    });
    let parse = |extra: Value| {
        let mut v = base.clone();
        for (k, x) in extra.as_object().unwrap() {
            v[k] = x.clone();
        }
        AccountSecret::parse("mailbridge/acme", &v.to_string())
    };
    let ok = parse(serde_json::json!({"certificate": cert, "private_key": key})).unwrap();
    let Some(AppCredential::Certificate(c)) = &ok.app_only else {
        panic!("certificate")
    };
    assert!(c.not_after > Utc::now() + chrono::Duration::days(28));
    assert!(
        !format!("{ok:?}").contains("PRIVATE KEY"),
        "Debug redacts the key"
    );
    let again = AccountSecret::parse("x", &ok.to_json()).unwrap();
    assert!(matches!(
        again.app_only,
        Some(AppCredential::Certificate(_))
    ));
    let ok = parse(serde_json::json!({
        "client_secret": "s3cret", "client_secret_expires_at": "2027-06-01T00:00:00Z"
    }))
    .unwrap();
    assert_eq!(
        ok.app_only.as_ref().and_then(AppCredential::expires_at),
        Some("2027-06-01T00:00:00Z".parse().unwrap())
    );
    for (extra, field) in [
        (serde_json::json!({}), "client_secret"),
        (serde_json::json!({"certificate": cert}), "private_key"),
        (
            serde_json::json!({"certificate": cert, "private_key": other_key}),
            "private_key",
        ),
        (
            serde_json::json!({"certificate": "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", "private_key": key}),
            "certificate",
        ),
        (
            serde_json::json!({"client_secret": "s", "certificate": cert, "private_key": key}),
            "client_secret",
        ),
        (
            serde_json::json!({"client_secret": "s", "refresh_token": "rt", "refresh_token_stored_at": "2026-01-01T00:00:00Z"}),
            "refresh_token",
        ),
        (
            serde_json::json!({"client_secret": "s", "password": "p"}),
            "password",
        ),
        (
            serde_json::json!({"mode": "app", "client_secret": "s"}),
            "mode",
        ),
        (
            serde_json::json!({"mode": "delegated", "client_secret": "s"}),
            "client_secret",
        ),
    ] {
        let err = parse(extra.clone()).unwrap_err().to_string();
        assert!(
            err.contains("mailbridge/acme") && err.contains(&format!("`{field}`")),
            "{extra}: {err}"
        );
        assert!(
            !err.contains("PRIVATE KEY") && !err.contains("s3cret"),
            "{err}"
        );
    }
}

/// The queue, state table and thread key a send-notifications bootstrap runs with.
struct SendWorld {
    queue_url: String,
    queue_arn: String,
    dlq_url: String,
    table: String,
    thread_key_secret: String,
}

impl SendWorld {
    async fn new() -> SendWorld {
        let thread_key_secret = unique("mailbridge/thread-key");
        put_secret(&thread_key_secret, "mailbridge-test-thread-key-32byt")
            .await
            .expect("thread key");
        let (queue_url, dlq_url) = mailbridge_tests::create_queue_with_dlq(&unique("notify"), 5)
            .await
            .expect("queues");
        let queue_arn = mailbridge_tests::queue_arn(&queue_url)
            .await
            .expect("queue arn");
        let table = mailbridge_tests::create_state_table("state")
            .await
            .expect("state table");
        SendWorld {
            queue_url,
            queue_arn,
            dlq_url,
            table,
            thread_key_secret,
        }
    }

    fn env(&self) -> Vec<(String, String)> {
        let mut env: Vec<(String, String)> = stack().moto().env().into_iter().collect();
        env.extend([
            ("MAILBRIDGE_STATE_TABLE".to_owned(), self.table.clone()),
            ("MAILBRIDGE_DLQ_URL".to_owned(), self.dlq_url.clone()),
            (
                "MAILBRIDGE_THREAD_KEY_SECRET".to_owned(),
                self.thread_key_secret.clone(),
            ),
            ("MAILBRIDGE_GRAPH_URL".to_owned(), stack().graph().v1_url()),
            (
                "MAILBRIDGE_ALLOW_LOCAL_TARGETS".to_owned(),
                "true".to_owned(),
            ),
            ("RUST_LOG".to_owned(), "info".to_owned()),
        ]);
        env
    }

    async fn enqueue(&self, bodies: &[Value]) -> aws_lambda_events::event::sqs::SqsEvent {
        for body in bodies {
            mailbridge_tests::sqs()
                .send_message()
                .queue_url(&self.queue_url)
                .message_body(body.to_string())
                .send()
                .await
                .expect("enqueue");
        }
        mailbridge_tests::receive_sqs_event(&self.queue_url, &self.queue_arn, bodies.len()).await
    }

    /// The park reasons (`mailbridge.reason`) of the parked messages (at least `expected`,
    /// waiting up to ~10 s).
    async fn parked(&self, expected: usize) -> Vec<String> {
        parked_messages(&self.dlq_url, expected)
            .await
            .into_iter()
            .map(|m| {
                m.attributes
                    .get("mailbridge.reason")
                    .cloned()
                    .unwrap_or_default()
            })
            .collect()
    }
}

fn notification(account: &str, subject: &str, from: Option<&str>) -> Value {
    let mut n = serde_json::json!({
        "version": 1,
        "account": account,
        "to": [{"address": "customer@example.com", "name": "A Customer"}],
        "subject": subject,
        "body": {"content_type": "text", "content": "Your ticket was updated."}
    });
    if let Some(from) = from {
        n["from"] = from.into();
    }
    n
}

/// App-only sending through the real send-notifications bootstrap: `/users/{mailbox}/sendMail`
/// (never `/me`, which Graph refuses to an app) with a token minted from the certificate. An
/// app scoped by Exchange RBAC for Applications (no `roles` in its token) sends from the
/// mailboxes of its management scope, and a mail from outside the scope is parked saying which
/// role assignment to extend. Its certificate expires in 10 days: the invocation reports
/// `AppCredentialDaysLeft` (the alarm's metric) and logs the fix, and the account still sends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bootstrap_sends_app_only_through_users_mailbox() {
    use local_stack::identity::ExchangeAppRoleAssignment;
    use local_stack::runtime_api::{FunctionConfig, RuntimeApi, workspace_binary};
    let w = World::new().await;
    w.write_secret(&w.account(w.credential())).await;
    // A second app-only account: no Mail.Send application permission in Entra, but Exchange
    // RBAC for Applications grants "Application Mail.Send" on its own mailbox only.
    let scoped = World::with_certificate_days(10).await;
    let mut app = AppRegistration::app_only_with_certificate(
        &scoped.tenant,
        &scoped.client_id,
        &scoped.certificate.0,
    );
    app.application_permissions.clear();
    app.exchange_service_principal = Some(app.service_principal_id.clone());
    app.exchange_role_assignments
        .push(ExchangeAppRoleAssignment {
            role: "Application Mail.Send".to_owned(),
            mailboxes: vec![scoped.mailbox.clone()],
        });
    scoped.idp.register_app(app);
    scoped
        .write_secret(&scoped.account(scoped.credential()))
        .await;
    let outside = unique_user("outside");

    let s = SendWorld::new().await;
    let binary = tokio::task::spawn_blocking(|| {
        workspace_binary("send-notifications", "send-notifications")
    })
    .await
    .unwrap()
    .expect("build send-notifications");
    let api = RuntimeApi::start().await.expect("runtime api");
    api.spawn_function(&FunctionConfig::new("send-notifications", binary).with_env(s.env()))
        .expect("spawn bootstrap");
    let event = s
        .enqueue(&[
            notification(&w.secret_name, "app-only 1", None),
            notification(&scoped.secret_name, "rbac scoped", None),
            notification(&scoped.secret_name, "rbac outside", Some(&outside)),
        ])
        .await;
    let outcome = api
        .invoke(
            serde_json::to_value(&event).unwrap(),
            Duration::from_secs(30),
        )
        .await
        .expect("invoke");
    let response = outcome
        .into_response()
        .unwrap_or_else(|e| panic!("{e}\n{}", api.logs()));
    assert_eq!(
        response["batchItemFailures"],
        serde_json::json!([]),
        "{}",
        api.logs()
    );
    let graph = stack().graph();
    let sent = graph.accepted(&w.mailbox);
    assert_eq!(sent.len(), 1, "{}", api.logs());
    assert_eq!(sent[0].path, format!("users/{}", w.mailbox));
    assert_eq!(graph.accepted(&scoped.mailbox).len(), 1, "{}", api.logs());
    assert!(graph.accepted(&outside).is_empty());
    let parked = s.parked(1).await;
    assert_eq!(parked.len(), 1, "{}", api.logs());
    let reason = &parked[0];
    assert!(
        reason.contains("Application Mail.Send") && reason.contains(&outside),
        "{reason}"
    );
    let logs = api.logs();
    assert!(!logs.contains("PRIVATE KEY") && !logs.contains(&w.certificate.1[40..80]));
    let expiry: Value = logs
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|l| l.get(mailbridge::token::expiry::METRIC).is_some())
        .unwrap_or_else(|| panic!("no {} line: {logs}", mailbridge::token::expiry::METRIC));
    let days = expiry[mailbridge::token::expiry::METRIC].as_i64().unwrap();
    assert!((8..=10).contains(&days), "{expiry}");
    assert_eq!(expiry["Account"], scoped.secret_name.as_str());
    assert!(
        logs.contains("days left") && logs.contains("mailbridge login --app"),
        "the warning names the fix: {logs}"
    );
    api.shutdown();
}

/// App-only IMAP through the real poll-mailboxes bootstrap: XOAUTH2 with a token for
/// `https://outlook.office365.com/.default` (client secret here), the user being the mailbox.
/// Dovecot's introspection lets it in only to mailboxes granted to the service principal in
/// Exchange (New-ServicePrincipal with the Enterprise application's object id, then
/// Add-MailboxPermission): the granted mailbox is ticketed, the other one fails and waits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bootstrap_polls_app_only_over_imap_only_where_exchange_grants_it() {
    use local_stack::runtime_api::{FunctionConfig, RuntimeApi, workspace_binary};
    let binary =
        tokio::task::spawn_blocking(|| workspace_binary("poll-mailboxes", "poll-mailboxes"))
            .await
            .unwrap()
            .expect("build the poll-mailboxes binary");
    let w = World::new().await;
    let not_granted = unique_user("not-granted");
    w.idp.register_app(
        AppRegistration::app_only(&w.tenant, &w.client_id, "imap-app-secret")
            .with_exchange_mailbox_access(&[&w.mailbox]),
    );
    w.write_secret(&w.account(AppCredential::ClientSecret {
        secret: SecretString::from("imap-app-secret"),
        expires_at: Some(Utc::now() + chrono::Duration::days(200)),
    }))
    .await;
    let account = w.secret_name.trim_start_matches("mailbridge/").to_owned();
    let dovecot = stack().dovecot().clone();
    let table = mailbridge_tests::create_state_table("poll").await.unwrap();
    let sink = unique("sink");
    for (name, user) in [("granted", &w.mailbox), ("not-granted", &not_granted)] {
        mailbridge::state_table::put_mailbox_config(
            &mailbridge_tests::dynamodb(),
            &table,
            name,
            &serde_json::json!({
                "user": user,
                "account": account,
                "host": "localhost",
                "port": dovecot.imaps_port,
                "ticket_api_url": stack().tickets().sink_url(&sink),
            }),
            &mailbridge::mailbox::TargetPolicy::local(),
        )
        .await
        .unwrap();
    }
    let raw = mailbridge_tests::mail::customer_mail("app-only-1", "App-only poll", "Please help.");
    dovecot.deliver_to(&w.mailbox, "INBOX", &raw).unwrap();
    dovecot.deliver_to(&not_granted, "INBOX", &raw).unwrap();
    let mut env = mailbridge_tests::poller::bootstrap_env(&table, "info").await;
    env.push((
        "MAILBRIDGE_IMAP_CA_FILE".to_string(),
        dovecot.ca_pem_path.display().to_string(),
    ));
    let api = RuntimeApi::start().await.expect("runtime api");
    api.spawn_function(&FunctionConfig::new("poll-mailboxes", binary).with_env(env))
        .expect("spawn bootstrap");
    let schedule: Value = serde_json::from_str(
        &std::fs::read_to_string(local_stack::repo_root().join("infra/events/poll-schedule.json"))
            .unwrap(),
    )
    .unwrap();
    let outcome = api.invoke(schedule, Duration::from_secs(60)).await.unwrap();
    let report = outcome
        .into_response()
        .unwrap_or_else(|e| panic!("{e:#}\n{}", api.logs()));
    assert_eq!(report["tickets_created"], 1, "{report}\n{}", api.logs());
    assert_eq!(stack().tickets().tickets(&sink).len(), 1);
    let status = |name: &str| {
        report["mailboxes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["mailbox"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("no status for {name}: {report}"))
    };
    assert_eq!(status("granted")["outcome"], "ok", "{report}");
    assert_eq!(status("not-granted")["outcome"], "failed", "{report}");
    // Nothing lost: the refused mailbox keeps its mail for when access is granted.
    assert_eq!(
        dovecot.list_messages(&not_granted, "INBOX").unwrap().len(),
        1
    );
    assert_eq!(dovecot.list_messages(&w.mailbox, "INBOX").unwrap().len(), 0);
    let logs = api.logs();
    assert!(!logs.contains("imap-app-secret"), "{logs}");
    api.shutdown();
}
