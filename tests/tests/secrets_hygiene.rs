//! Secrets hygiene: the whole flow against the local stack with every log line captured
//! at TRACE, then a search of the logs, the reports, the DLQ and every returned error for the
//! secret values the flow handled.
//!
//! Flow: an account secret with only a password (ROPC bootstrap), a notification sent through
//! send-notifications' library to the Graph stand-in (which delivers it into Dovecot), a forced
//! refresh with the stored refresh token, then poll-mailboxes' library reads that mail over IMAPS
//! with XOAUTH2 and posts it to the ticket API stand-in with an API key read from Secrets
//! Manager. Error paths on the way: a wrong password (needs re-auth), a malformed account secret
//! and malformed ticket API secrets, each holding a secret value that must not be echoed.
//!
//! Secret values searched for: passwords, every access and refresh token the token layer handed
//! out or stored (recorded by wrappers around the ports), the XOAUTH2 SASL string (base64) of each
//! IMAP token, the ticket API key and the thread-marker key. The captured logs are the JSON the
//! functions write in production, at TRACE for every crate, including `log` records of
//! dependencies (async-imap, rustls...) through the `tracing-log` bridge.
//!
//! This file installs its own global subscriber for that test. The second test,
//! [`the_cli_writes_no_secret_to_disk`], runs the operator CLI as child processes (their
//! files and output are searched, not this process's logs), so sharing the capture is harmless.

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use aws_lambda_events::event::sqs::SqsEvent;
use base64::Engine as _;
use local_stack::identity::{AppRegistration, RequestFilter, UserAccount};
use mailbridge::retry::RetryPolicy;
use mailbridge::state_table::{DynamoStateStore, put_mailbox_config};
use mailbridge::thread_key::ThreadKey;
use mailbridge::ticket_sink::WebhookAuth;
use mailbridge::token::store::{SecretStoreError, SecretValue};
use mailbridge::token::{
    AccessToken, AccessTokenSource, AccountSecret, Audience, IdentityClient, SecretStore,
    SecretsManagerStore, TokenError, TokenService, TokenServiceConfig,
};
use mailbridge_tests::sender::Sender;
use mailbridge_tests::{create_queue_with_dlq, create_state_table, put_secret, sqs, unique};
use poll_mailboxes::PollDeps;
use poll_mailboxes::convert::ParseContext;
use poll_mailboxes::imap_adapter::ImapConnector;
use poll_mailboxes::sinks::SecretsSinkFactory;
use secrecy::{ExposeSecret as _, SecretString};
use send_notifications::settings::BatchSettings;
use send_notifications::{Outcome, process_batch};
use serde_json::{Value, json};
use tokio::time::Instant;

/// Everything every subscriber layer wrote, as bytes.
fn captured_logs() -> &'static Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let logs = Arc::new(Mutex::new(Vec::new()));
        let sink = logs.clone();
        tracing_subscriber::fmt()
            .json()
            // Production's filter (mailbridge::telemetry) with the most verbose RUST_LOG an
            // operator could set, including an explicit TRACE for the capped targets.
            .with_env_filter(mailbridge::telemetry::log_filter("trace,async_imap=trace"))
            .with_writer(move || CaptureWriter(sink.clone()))
            .try_init()
            .expect("the hygiene test installs the only global subscriber of this binary");
        logs
    })
}

struct CaptureWriter(Arc<Mutex<Vec<u8>>>);

impl Write for CaptureWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Every secret value the flow handled.
#[derive(Default)]
struct Secrets(Mutex<Vec<(String, String)>>);

impl Secrets {
    fn add(&self, what: impl Into<String>, value: &str) {
        if value.len() >= 8 {
            self.0
                .lock()
                .unwrap()
                .push((what.into(), value.to_string()));
        }
    }
    /// Record the password and refresh token inside an account secret JSON (when it parses).
    fn add_account_json(&self, json: &str) {
        if let Ok(v) = serde_json::from_str::<Value>(json) {
            for field in ["password", "refresh_token"] {
                if let Some(s) = v.get(field).and_then(Value::as_str) {
                    self.add(field, s);
                }
            }
        }
    }
    fn all(&self) -> Vec<(String, String)> {
        self.0.lock().unwrap().clone()
    }
}

/// The Secrets Manager adapter, recording the secret values it reads and writes.
struct RecordingStore {
    inner: SecretsManagerStore,
    seen: Arc<Secrets>,
}

#[async_trait]
impl SecretStore for RecordingStore {
    async fn get(&self, name: &str) -> Result<SecretValue, SecretStoreError> {
        let value = self.inner.get(name).await?;
        self.seen.add_account_json(value.value.expose_secret());
        Ok(value)
    }
    async fn put(
        &self,
        name: &str,
        value: &SecretString,
        token: &str,
    ) -> Result<String, SecretStoreError> {
        self.seen.add_account_json(value.expose_secret());
        self.inner.put(name, value, token).await
    }
    async fn create(&self, name: &str, value: &SecretString) -> Result<String, SecretStoreError> {
        self.seen.add_account_json(value.expose_secret());
        self.inner.create(name, value).await
    }
    async fn replace(
        &self,
        name: &str,
        value: &SecretString,
        token: &str,
        expected_version: &str,
    ) -> Result<String, SecretStoreError> {
        self.seen.add_account_json(value.expose_secret());
        self.inner
            .replace(name, value, token, expected_version)
            .await
    }
}

/// The token service, recording every access token it hands out (and the XOAUTH2 string an IMAP
/// token becomes on the wire).
struct RecordingTokens {
    inner: Arc<TokenService>,
    seen: Arc<Secrets>,
    imap_user: String,
    errors: Arc<Mutex<Vec<String>>>,
}

#[async_trait]
impl AccessTokenSource for RecordingTokens {
    async fn access_token(
        &self,
        account: &str,
        audience: Audience,
    ) -> Result<AccessToken, TokenError> {
        match self.inner.access_token(account, audience).await {
            Ok(token) => {
                let value = token.secret.expose_secret();
                self.seen.add(format!("{audience:?} access token"), value);
                if audience == Audience::Imap {
                    let sasl = format!("user={}\x01auth=Bearer {value}\x01\x01", self.imap_user);
                    self.seen.add(
                        "XOAUTH2 string (base64)",
                        &base64::engine::general_purpose::STANDARD.encode(sasl),
                    );
                }
                Ok(token)
            }
            Err(e) => {
                self.errors.lock().unwrap().push(format!("{e} | {e:?}"));
                Err(e)
            }
        }
    }
    fn invalidate(&self, account: &str, audience: Audience) {
        self.inner.invalidate(account, audience)
    }
}

fn random_secret(label: &str) -> String {
    format!("{label}-{}", uuid::Uuid::new_v4().simple())
}

async fn queue_arn(url: &str) -> String {
    mailbridge_tests::queue_arn(url).await.expect("queue arn")
}

/// Receive `n` messages from `queue_url` as the SQS event Lambda would deliver.
async fn receive_event(queue_url: &str, arn: &str, n: usize) -> SqsEvent {
    mailbridge_tests::receive_sqs_event(queue_url, arn, n).await
}

/// Everything in the DLQ, bodies and attributes, as text.
async fn dlq_text(dlq_url: &str, expected: usize) -> String {
    let parked = mailbridge_tests::parked::receive_parked(dlq_url, expected).await;
    assert_eq!(parked.len(), expected, "parked messages");
    parked.iter().map(|m| format!("{m:?}\n")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_secret_value_reaches_logs_errors_or_debug_output() {
    let logs = captured_logs();
    let stack = mailbridge_tests::stack();
    let idp = stack.identity().clone();
    let graph = stack.graph().clone();
    let dovecot = stack.dovecot().clone();
    let aws = stack.moto().sdk_config();
    let seen = Arc::new(Secrets::default());
    let errors: Arc<Mutex<Vec<String>>> = Arc::default();
    let record_error = |text: String| errors.lock().unwrap().push(text);

    // One tenant, a good user (password only: ROPC bootstrap) and a user whose secret holds a
    // wrong password.
    let tenant = format!("{}.onmicrosoft.com", unique("tenant"));
    let client_id = uuid::Uuid::new_v4().to_string();
    idp.register_app(AppRegistration::mailbridge(&tenant, &client_id));
    let upn = mailbridge_tests::mail_recipient("hygiene");
    let password = random_secret("pw");
    idp.register_user(UserAccount::new(&tenant, &upn, &password));
    let other_upn = mailbridge_tests::unique_user("hygiene-other");
    let other_password = random_secret("pw-other");
    let wrong_password = random_secret("pw-wrong");
    idp.register_user(UserAccount::new(&tenant, &other_upn, &other_password));
    seen.add("password", &password);
    seen.add("password", &other_password);
    seen.add("password", &wrong_password);

    let short_account = unique("acct");
    let account = format!("mailbridge/{short_account}");
    let mut secret = AccountSecret::new(&tenant, &client_id, &upn);
    secret.authority_host = idp.base_url.clone();
    secret.password = Some(password.clone().into());
    put_secret(&account, &secret.to_json()).await.unwrap();

    let wrong_account = format!("mailbridge/{}", unique("acct-wrong"));
    let mut wrong = AccountSecret::new(&tenant, &client_id, &other_upn);
    wrong.authority_host = idp.base_url.clone();
    wrong.password = Some(wrong_password.clone().into());
    put_secret(&wrong_account, &wrong.to_json()).await.unwrap();

    // Malformed account secret: truncated JSON that holds a password.
    let malformed_account = format!("mailbridge/{}", unique("acct-malformed"));
    let malformed_password = random_secret("pw-malformed");
    seen.add("password", &malformed_password);
    put_secret(
        &malformed_account,
        &format!(r#"{{"tenant_id": "{tenant}", "password": "{malformed_password}", "client_id": "#),
    )
    .await
    .unwrap();
    // Well-formed JSON with a field of the wrong type next to the password.
    let mistyped_account = format!("mailbridge/{}", unique("acct-mistyped"));
    let mistyped_password = random_secret("pw-mistyped");
    seen.add("password", &mistyped_password);
    put_secret(
        &mistyped_account,
        &json!({"tenant_id": tenant, "client_id": 5, "username": upn,
                "password": mistyped_password, "refresh_token": ["rt", mistyped_password]})
        .to_string(),
    )
    .await
    .unwrap();

    let thread_key = random_secret("thread-key");
    seen.add("thread key", &thread_key);
    let api_key = random_secret("api-key");
    seen.add("ticket API key", &api_key);

    let service = Arc::new(TokenService::new(
        Arc::new(RecordingStore {
            inner: SecretsManagerStore::from_conf(&aws),
            seen: seen.clone(),
        }),
        IdentityClient::new(mailbridge::http::default_client().unwrap()),
        TokenServiceConfig {
            default_timeout: Duration::from_secs(10),
            // Every rotated refresh token goes through the store, so the recorder sees it.
            write_back_interval: Duration::ZERO,
            ..TokenServiceConfig::default()
        },
    ));
    let tokens = Arc::new(RecordingTokens {
        inner: service.clone(),
        seen: seen.clone(),
        imap_user: upn.clone(),
        errors: errors.clone(),
    });

    // --- send-notifications: one good notification (to the helpdesk mailbox itself, so the Graph
    // stand-in delivers it into Dovecot for the poller), one for the wrong password, one for each
    // malformed secret.
    let (queue_url, dlq_url) = create_queue_with_dlq(&unique("hygiene"), 5).await.unwrap();
    let arn = queue_arn(&queue_url).await;
    let table = create_state_table("hygiene").await.unwrap();
    let notification = |account: &str, subject: &str| {
        json!({
            "version": 1,
            "account": account,
            "to": [{"address": upn, "name": "Helpdesk"}],
            "subject": subject,
            "body": {"content_type": "text", "content": "Printer on fire, please help."},
            "ticket_number": "4711",
        })
    };
    for (acct, subject) in [
        (account.as_str(), "hygiene good"),
        (wrong_account.as_str(), "hygiene wrong password"),
        (malformed_account.as_str(), "hygiene malformed secret"),
        (mistyped_account.as_str(), "hygiene mistyped secret"),
    ] {
        sqs()
            .send_message()
            .queue_url(&queue_url)
            .message_body(notification(acct, subject).to_string())
            .send()
            .await
            .unwrap();
    }
    let event = receive_event(&queue_url, &arn, 4).await;
    let deps = Sender {
        tokens: tokens.clone(),
        graph_url: graph.v1_url(),
        table: &table,
        dlq_url: &dlq_url,
        thread_key: &thread_key,
    }
    .deps(BatchSettings {
        safety_margin: Duration::from_secs(1),
        ..BatchSettings::default()
    });
    let report = process_batch(event, Instant::now() + Duration::from_secs(60), &deps).await;
    let outcomes: Vec<&str> = report.messages.iter().map(|m| m.outcome.name()).collect();
    assert!(
        matches!(report.messages[0].outcome, Outcome::Sent { .. }),
        "{report:?}"
    );
    let mut sorted = outcomes.clone();
    sorted.sort();
    assert_eq!(
        sorted,
        ["needs_reauth", "parked", "parked", "sent"],
        "{report:?}"
    );
    record_error(format!("{report:?}"));
    record_error(format!("{:?}", report.response));
    let parked = dlq_text(&dlq_url, 2).await;
    assert!(parked.contains(&malformed_account), "{parked}");
    record_error(parked);

    // --- A forced refresh: forget the cached Graph token, the next one comes from the stored
    // refresh token (rotated and written back).
    let refreshes_before = idp
        .requests(&RequestFilter {
            grant_type: Some("refresh_token".into()),
            user: Some(upn.clone()),
            ..RequestFilter::default()
        })
        .len();
    tokens.invalidate(&account, Audience::Graph);
    tokens
        .access_token(&account, Audience::Graph)
        .await
        .expect("refreshed Graph token");
    let refreshes = idp
        .requests(&RequestFilter {
            grant_type: Some("refresh_token".into()),
            user: Some(upn.clone()),
            ..RequestFilter::default()
        })
        .len();
    assert!(
        refreshes > refreshes_before,
        "the token came from a refresh-token grant"
    );

    // --- poll-mailboxes: the delivered notification becomes a ticket posted with the API key;
    // a second mailbox on the wrong-password account fails with a re-auth status.
    let sink = unique("hygiene-sink");
    stack.tickets().require_header(&sink, "x-api-key", &api_key);
    let ticket_secret = format!("mailbridge/ticket-api/{}", unique("hygiene"));
    put_secret(
        &ticket_secret,
        &json!({"type": "api_key", "header": "X-API-Key", "key": api_key}).to_string(),
    )
    .await
    .unwrap();
    let poll_table = create_state_table("hygiene-poll").await.unwrap();
    for (name, user, acct) in [
        ("helpdesk", upn.as_str(), short_account.as_str()),
        ("other", other_upn.as_str(), wrong_account.as_str()),
    ] {
        put_mailbox_config(
            &mailbridge_tests::dynamodb(),
            &poll_table,
            name,
            &json!({
                "user": user,
                "account": acct,
                "host": "localhost",
                "port": dovecot.imaps_port,
                "ticket_api_url": stack.tickets().sink_url(&sink),
                "ticket_api_secret": ticket_secret,
            }),
            &mailbridge::mailbox::TargetPolicy::local(),
        )
        .await
        .unwrap();
    }
    let poll_deps = PollDeps {
        tokens: tokens.clone(),
        connector: Arc::new(
            ImapConnector::new(Some(&dovecot.ca_pem_path), Duration::from_secs(10)).unwrap(),
        ),
        state: Arc::new(DynamoStateStore::new(
            mailbridge_tests::dynamodb(),
            &poll_table,
        )),
        sinks: Arc::new(SecretsSinkFactory::new(
            reqwest::Client::new(),
            aws_sdk_secretsmanager::Client::new(&aws),
            RetryPolicy {
                initial_backoff: Duration::from_millis(20),
                max_backoff: Duration::from_secs(1),
                max_attempts: 3,
                attempt_timeout: Duration::from_secs(5),
            },
        )),
        parse: ParseContext {
            thread_key: Some(thread_key.as_bytes().to_vec()),
        },
        max_concurrent_mailboxes: 2,
        deadline_margin: Duration::from_secs(2),
        dedupe_ttl: Duration::from_secs(3600),
        targets: mailbridge::mailbox::TargetPolicy::local(),
        memory: std::sync::Arc::new(poll_mailboxes::memory::MemoryBudget::unlimited()),
    };
    // The notification above reaches the helpdesk mailbox from its own address: a mail loop,
    // which the poller sets aside without a ticket. A customer's reply makes the ticket.
    dovecot
        .deliver_to(
            &upn,
            "INBOX",
            b"From: Customer <customer@example.org>\r\nTo: Helpdesk <helpdesk@example.org>\r\n\
              Subject: Re: [Ticket#4711] hygiene good\r\nMessage-ID: <hygiene-reply@example.org>\r\n\
              \r\nStill on fire.\r\n",
        )
        .unwrap();
    let poll =
        poll_mailboxes::poll_once(&poll_deps, None, Instant::now() + Duration::from_secs(60))
            .await
            .expect("poll");
    let status = |name: &str| {
        poll.mailboxes
            .iter()
            .find(|s| s.mailbox == name)
            .unwrap_or_else(|| panic!("no status for {name}: {poll:?}"))
    };
    assert_eq!(
        status("helpdesk").outcome,
        mailbridge::state_table::MailboxOutcome::Ok,
        "{poll:?}"
    );
    assert_eq!(
        status("other").outcome,
        mailbridge::state_table::MailboxOutcome::NeedsReauth,
        "{poll:?}"
    );
    let tickets = stack.tickets().tickets(&sink);
    assert_eq!(tickets.len(), 1, "{poll:?}");
    assert_eq!(
        tickets[0].body["draft"]["subject"],
        "Re: [Ticket#4711] hygiene good"
    );
    assert_eq!(status("helpdesk").skipped_auto_generated, 1, "{poll:?}");
    record_error(format!("{poll:?}"));
    record_error(serde_json::to_string(&poll).unwrap());

    // --- Malformed ticket API secrets: the parse errors name the field, never the key.
    for json in [
        format!(r#"{{"type":"api_key","header":"X-API-Key","key":"{api_key}""#),
        format!(r#"{{"type":"api_key","header":"{api_key}\n","key":"{api_key}"}}"#),
        format!(r#"{{"type":"{api_key}","token":"{api_key}"}}"#),
        format!(r#"{{"type":"bearer","token":["{api_key}"]}}"#),
    ] {
        let err = WebhookAuth::from_secret_json(&ticket_secret, &json).unwrap_err();
        assert!(err.contains(&ticket_secret), "{err}");
        record_error(err);
    }

    // --- Debug of secret-holding types redacts.
    let mut full = AccountSecret::new(&tenant, &client_id, &upn);
    full.password = Some(password.clone().into());
    full.refresh_token = Some(random_secret("rt-debug").into());
    seen.add(
        "refresh token (debug)",
        full.refresh_token.as_ref().unwrap().expose_secret(),
    );
    let graph_token = tokens
        .access_token(&account, Audience::Graph)
        .await
        .unwrap();
    let imap_token = tokens.access_token(&account, Audience::Imap).await.unwrap();
    let tr = IdentityClient::new(mailbridge::http::default_client().unwrap())
        .password(&secret, Audience::Imap, &password.clone().into())
        .await
        .expect("token response");
    seen.add("access token (debug)", tr.access_token.expose_secret());
    if let Some(rt) = &tr.refresh_token {
        seen.add("refresh token (debug)", rt.expose_secret());
    }
    let debug_outputs = [
        format!("{full:?}"),
        format!("{graph_token:?}"),
        format!("{imap_token:?}"),
        format!("{tr:?}"),
        format!(
            "{:?}",
            SecretValue {
                value: secret.to_json().into(),
                version_id: "v1".into()
            }
        ),
        format!(
            "{:?}",
            WebhookAuth::from_secret_json(
                "t",
                &json!({"type": "bearer", "token": api_key}).to_string()
            )
            .unwrap()
        ),
        format!(
            "{:?}",
            WebhookAuth::from_secret_json(
                "t",
                &json!({"type": "api_key", "header": "X-API-Key", "key": api_key}).to_string()
            )
            .unwrap()
        ),
        format!("{:?}", ThreadKey::from_secret_value(&thread_key).unwrap()),
        format!("{service:?}"),
        format!(
            "{:?}",
            ImapConnector::new(None, Duration::from_secs(1)).unwrap()
        ),
    ];
    for d in &debug_outputs {
        assert!(!d.is_empty());
        record_error(d.clone());
    }
    assert!(
        debug_outputs[0].contains("[redacted]"),
        "{}",
        debug_outputs[0]
    );

    // --- The search.
    let log_text = String::from_utf8_lossy(&logs.lock().unwrap()).into_owned();
    assert!(
        log_text.contains("TRACE") && log_text.contains(&short_account),
        "the capture saw the flow's logs at TRACE"
    );
    let secrets = seen.all();
    let kinds: std::collections::BTreeSet<&str> =
        secrets.iter().map(|(what, _)| what.as_str()).collect();
    for expected in [
        "password",
        "refresh_token",
        "Graph access token",
        "Imap access token",
        "XOAUTH2 string (base64)",
        "ticket API key",
        "thread key",
    ] {
        assert!(
            kinds.contains(expected),
            "the flow handled a {expected}: {kinds:?}"
        );
    }
    let error_text = errors.lock().unwrap().join("\n");
    let mut leaks = Vec::new();
    for (what, value) in &secrets {
        if log_text.contains(value.as_str()) {
            let at = log_text.find(value.as_str()).unwrap();
            let start = log_text[..at].rfind('\n').map_or(0, |i| i + 1);
            let end = log_text[at..].find('\n').map_or(log_text.len(), |i| at + i);
            leaks.push(format!(
                "{what} in the logs: {}",
                &log_text[start..end.min(start + 600)]
            ));
        }
        if let Some(at) = error_text.find(value.as_str()) {
            let start = error_text[..at].rfind('\n').map_or(0, |i| i + 1);
            let end = error_text[at..]
                .find('\n')
                .map_or(error_text.len(), |i| at + i);
            leaks.push(format!(
                "{what} in an error/report/Debug output: {}",
                &error_text[start..end.min(start + 600)]
            ));
        }
    }
    eprintln!(
        "secrets hygiene: searched {} secret values in {} bytes of TRACE logs and {} bytes of errors/reports",
        secrets.len(),
        log_text.len(),
        error_text.len()
    );
    assert!(
        leaks.is_empty(),
        "secret values leaked:\n{}",
        leaks.join("\n")
    );
}

/// Every regular file under `dir` (recursively), skipping what cannot be read.
fn files_under(
    dir: &std::path::Path,
    modified_since: Option<std::time::SystemTime>,
) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(meta) = entry.metadata() else { continue };
            if meta.is_dir() {
                stack.push(entry.path());
            } else if meta.is_file()
                && modified_since.is_none_or(|t| meta.modified().is_ok_and(|m| m >= t))
            {
                out.push(entry.path());
            }
        }
    }
    out
}

/// Secrets hygiene: "secrets never written to disk by the CLI except through Secrets
/// Manager". The operator CLI runs as a process with `HOME`, `TMPDIR` and every `XDG_*`
/// directory in a fresh temp dir and its working directory in another: `login` with a password
/// on stdin (ROPC), `login` by device code, `status`, `mailbox add/list/remove`, `check`,
/// `poll --dry-run`, `send --direct` and `send` to a queue. Afterwards every file under both
/// dirs, and every file under `/tmp` written during the run, is searched for the password,
/// every access and refresh token the identity stand-in issued to the user, and the XOAUTH2
/// string of each access token. The secrets are in Secrets Manager (moto) only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_writes_no_secret_to_disk() {
    let started = std::time::SystemTime::now();
    // The other test's capture must be the global subscriber whichever test starts first.
    captured_logs();
    let stack = mailbridge_tests::stack();
    let idp = stack.identity().clone();
    let tenant = format!("{}.onmicrosoft.com", unique("tenant"));
    let client_id = uuid::Uuid::new_v4().to_string();
    let upn = mailbridge_tests::unique_user("cli-disk");
    let password = random_secret("cli-password");
    idp.register_app(AppRegistration::mailbridge(&tenant, &client_id));
    idp.register_user(UserAccount::new(&tenant, &upn, &password));
    let prefix = format!("{}/", unique("cli-disk"));
    let table = create_state_table("cli-disk").await.unwrap();
    let queue_url = mailbridge_tests::create_queue(&unique("cli-disk"))
        .await
        .unwrap();
    let home = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    for sub in ["tmp", "config", "cache", "data", "state", "runtime"] {
        std::fs::create_dir_all(home.path().join(sub)).unwrap();
    }
    let command = |args: &[&str]| {
        let mut command = mailbridge_tests::cli::command_on_stack(args, &prefix, &table);
        command
            .current_dir(work.path())
            .env("HOME", home.path())
            .env("TMPDIR", home.path().join("tmp"))
            .env("XDG_CONFIG_HOME", home.path().join("config"))
            .env("XDG_CACHE_HOME", home.path().join("cache"))
            .env("XDG_DATA_HOME", home.path().join("data"))
            .env("XDG_STATE_HOME", home.path().join("state"))
            .env("XDG_RUNTIME_DIR", home.path().join("runtime"));
        command
    };
    let mut outputs = String::new();
    let finish = |out: std::process::Output, args: &[&str], outputs: &mut String| {
        let text = format!(
            "$ mailbridge {}\nexit {:?}\n{}{}",
            args.join(" "),
            out.status.code(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        outputs.push_str(&text);
        assert_eq!(out.status.code(), Some(0), "{text}");
    };
    let login = |account: &str| {
        vec![
            "login".to_string(),
            "--account".into(),
            account.into(),
            "--tenant".into(),
            tenant.clone(),
            "--client-id".into(),
            client_id.clone(),
            "--user".into(),
            upn.clone(),
            "--authority-host".into(),
            idp.base_url.clone(),
            "--imap-host".into(),
            format!("localhost:{}", stack.dovecot().imaps_port),
        ]
    };

    // login with the password on stdin (ROPC)
    let mut args = login("ropc");
    args.push("--password-stdin".into());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut child = command(&args)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use tokio::io::AsyncWriteExt as _;
        let mut pipe = child.stdin.take().unwrap();
        pipe.write_all(format!("{password}\n").as_bytes())
            .await
            .unwrap();
    }
    let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    finish(out, &args, &mut outputs);

    // login by device code, approved through the identity stand-in's control
    let mut args = login("device");
    args.push("--device-code".into());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let child = command(&args).spawn().unwrap();
    let mut approved = false;
    for _ in 0..300 {
        if let Some(code) = idp
            .device_codes(&tenant)
            .into_iter()
            .find(|c| c.state == "pending")
        {
            idp.approve_device_code(&code.user_code, &upn).unwrap();
            approved = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert!(
        approved,
        "the CLI asked for a device code: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    finish(out, &args, &mut outputs);

    // the other commands
    stack
        .dovecot()
        .deliver_to(
            &upn,
            "INBOX",
            b"From: Alice <alice@example.com>\r\nSubject: disk check\r\nMessage-ID: <disk@example.com>\r\n\r\nhello\r\n",
        )
        .unwrap();
    // Machine mail: the dry run says the poller would set it aside without a ticket.
    stack
        .dovecot()
        .deliver_to(
            &upn,
            "INBOX",
            &std::fs::read(
                local_stack::repo_root()
                    .join("tests/fixtures/mail/306-autoresponder-ticket-receipt.eml"),
            )
            .unwrap(),
        )
        .unwrap();
    let port = stack.dovecot().imaps_port.to_string();
    let sink_url = stack.tickets().sink_url(&unique("cli-disk-sink"));
    let commands: Vec<Vec<&str>> = vec![
        vec!["status", "--json"],
        vec![
            "mailbox",
            "add",
            "inbox",
            "--user",
            &upn,
            "--account",
            "ropc",
            "--host",
            "localhost",
            "--port",
            &port,
            "--ticket-api-url",
            &sink_url,
        ],
        vec!["mailbox", "list", "--json"],
        vec!["check", "--json", "inbox"],
        vec!["poll", "--dry-run", "--json", "inbox"],
        vec![
            "send",
            "--json",
            "--direct",
            "--account",
            "device",
            "--to",
            "customer@example.com",
            "--subject",
            "disk check",
            "--body",
            "hi",
        ],
        vec![
            "send",
            "--account",
            "ropc",
            "--to",
            "customer@example.com",
            "--subject",
            "disk check",
            "--body",
            "hi",
            "--queue-url",
            &queue_url,
        ],
        vec!["mailbox", "remove", "inbox"],
    ];
    for args in &commands {
        let out = tokio::time::timeout(
            Duration::from_secs(60),
            command(args).spawn().unwrap().wait_with_output(),
        )
        .await
        .unwrap()
        .unwrap();
        if args[0] == "poll" {
            let preview: Value = serde_json::from_slice(&out.stdout).unwrap();
            let mut actions: Vec<&str> = preview["mailboxes"][0]["mails"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| m["action"].as_str().unwrap())
                .collect();
            actions.sort();
            assert_eq!(actions, ["skip_auto_generated", "ticket"], "{preview:#}");
        }
        finish(out, args, &mut outputs);
    }

    // What must not be on disk (nor in the CLI's output).
    let mut secrets: Vec<String> = vec![password.clone()];
    let tokens = idp.issued_token_values(&upn);
    assert!(
        tokens.len() >= 4,
        "both logins and the commands got tokens: {}",
        tokens.len()
    );
    for token in &tokens {
        secrets.push(token.clone());
        secrets.push(
            base64::engine::general_purpose::STANDARD
                .encode(format!("user={upn}\x01auth=Bearer {token}\x01\x01")),
        );
    }
    for account in ["ropc", "device"] {
        let stored: Value = serde_json::from_str(
            &mailbridge_tests::get_secret(&format!("{prefix}{account}"))
                .await
                .unwrap(),
        )
        .unwrap();
        let refresh = stored["refresh_token"]
            .as_str()
            .expect("stored in Secrets Manager");
        assert!(tokens.iter().any(|t| t == refresh));
        assert!(stored.get("password").is_none_or(Value::is_null) || account == "ropc");
    }
    for secret in &secrets {
        assert!(
            !outputs.contains(secret.as_str()),
            "a secret value reached the CLI's output"
        );
    }
    let leaks = |files: &[std::path::PathBuf]| -> Vec<std::path::PathBuf> {
        files
            .iter()
            .filter(|file| {
                let content = std::fs::read(file)
                    .map(|b| String::from_utf8_lossy(&b).into_owned())
                    .unwrap_or_default();
                secrets.iter().any(|secret| {
                    content.contains(secret.as_str())
                        || file.to_string_lossy().contains(secret.as_str())
                })
            })
            .cloned()
            .collect()
    };
    let mut scanned = Vec::new();
    for (dir, since) in [
        (home.path().to_path_buf(), None),
        (work.path().to_path_buf(), None),
        (std::env::temp_dir(), Some(started)),
    ] {
        scanned.extend(files_under(&dir, since));
    }
    assert_eq!(
        leaks(&scanned),
        Vec::<std::path::PathBuf>::new(),
        "secret values on disk"
    );
    // The search can fail: a file holding the refresh token is found.
    let probe = work.path().join("probe.txt");
    std::fs::write(&probe, format!("x{}x", tokens[0])).unwrap();
    assert_eq!(leaks(&files_under(work.path(), None)), vec![probe]);
    let in_home_or_work: Vec<_> = scanned
        .iter()
        .filter(|f| f.starts_with(home.path()) || f.starts_with(work.path()))
        .collect();
    println!(
        "{} secret values searched in {} files ({} under HOME/TMPDIR/XDG_* or the working directory: {:?})",
        secrets.len(),
        scanned.len(),
        in_home_or_work.len(),
        in_home_or_work
    );
}
