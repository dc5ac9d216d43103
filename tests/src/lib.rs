//! Helpers shared by the integration tests in `tests/tests/`.
//!
//! Every test binary shares one [`stack()`] (started on first use on its own runtime thread);
//! tests isolate themselves with [`unique`] names for queues, secrets, tables and IMAP users.
//! [`cli`] finds the operator CLI binary; [`mail`] builds customer mail; [`parked`] reads a dead-letter queue; [`poller`]
//! builds the real IMAP poller; [`measured_poll`] runs the real poller bootstrap over generated
//! mail and measures it; [`process_cpu`] says where a benchmark's CPU went, per process tree;
//! [`sender`] the real send-notifications.

pub mod cli;
pub mod mail;
pub mod measured_poll;
pub mod parked;
pub mod poller;
pub mod process_cpu;
pub mod sender;

use std::sync::Once;
use std::sync::atomic::{AtomicU64, Ordering};

pub use local_stack::LocalStack;

/// The process-wide local stack (moto, identity, Dovecot, Graph and ticket API stand-ins).
/// Also initialises test logging.
pub fn stack() -> &'static LocalStack {
    init_tracing();
    // the stand-ins listen on loopback: service URLs pointing at them are allowed here
    mailbridge::config::allow_local_targets_in_this_process();
    LocalStack::shared()
}

/// A name unique within this machine and run: `<prefix>-<pid>-<counter>-<random>`, using only
/// `[a-z0-9-]` (valid for SQS queues, secrets, DynamoDB tables and as an e-mail local part).
pub fn unique(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let random = &uuid::Uuid::new_v4().simple().to_string()[..6];
    format!("{prefix}-{}-{n}-{random}", std::process::id())
}

/// A unique IMAP/M365 user name, e.g. `helpdesk-1234-0-ab12cd@example.com`.
pub fn unique_user(prefix: &str) -> String {
    format!("{}@example.com", unique(prefix))
}

/// A unique recipient address whose mail the Graph stand-in delivers into Dovecot, for a test
/// that reads it back over IMAP (mail to any other recipient is only recorded).
pub fn mail_recipient(prefix: &str) -> String {
    let address = unique_user(prefix);
    stack().graph().deliver_mail_for(&address);
    address
}

/// Test logging to the test's captured output; level from `RUST_LOG` (default `info`).
pub fn init_tracing() {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_test_writer()
            .try_init();
    });
}

/// AWS SDK config for the shared moto (build clients inside the test's runtime).
pub fn aws_config() -> aws_config::SdkConfig {
    stack().moto().sdk_config()
}

/// SQS client on the shared moto.
pub fn sqs() -> aws_sdk_sqs::Client {
    aws_sdk_sqs::Client::new(&aws_config())
}

/// Secrets Manager client on the shared moto.
pub fn secrets() -> aws_sdk_secretsmanager::Client {
    aws_sdk_secretsmanager::Client::new(&aws_config())
}

/// DynamoDB client on the shared moto.
pub fn dynamodb() -> aws_sdk_dynamodb::Client {
    aws_sdk_dynamodb::Client::new(&aws_config())
}

/// S3 client on the shared moto (path-style, as the functions build it against an endpoint).
pub fn s3() -> aws_sdk_s3::Client {
    mailbridge::message_store::s3_client(&aws_config())
}

/// Create a bucket with a unique name (`prefix`) on the shared moto and return its name.
pub async fn create_bucket(prefix: &str) -> anyhow::Result<String> {
    let name = unique(prefix);
    s3().create_bucket()
        .bucket(&name)
        .send()
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "create bucket {name}: {}",
                mailbridge::error::error_chain(&e)
            )
        })?;
    Ok(name)
}

/// The keys in `bucket`.
pub async fn bucket_keys(bucket: &str) -> anyhow::Result<Vec<String>> {
    let out = s3()
        .list_objects_v2()
        .bucket(bucket)
        .send()
        .await
        .map_err(|e| anyhow::anyhow!("list {bucket}: {}", mailbridge::error::error_chain(&e)))?;
    Ok(out
        .contents()
        .iter()
        .filter_map(|o| o.key().map(str::to_owned))
        .collect())
}

/// Create a queue named `name` and return its URL.
pub async fn create_queue(name: &str) -> anyhow::Result<String> {
    let out = sqs()
        .create_queue()
        .queue_name(name)
        .send()
        .await
        .map_err(|e| anyhow::anyhow!("create queue {name}: {}", e.into_service_error()))?;
    out.queue_url
        .ok_or_else(|| anyhow::anyhow!("create queue {name}: no QueueUrl in the answer"))
}

/// Create a queue with a dead-letter queue (`maxReceiveCount` receives before redrive).
/// Returns `(queue_url, dlq_url)`.
/// The ARN of the queue at `url` (what an event source mapping and the Lambda event carry).
pub async fn queue_arn(url: &str) -> anyhow::Result<String> {
    use aws_sdk_sqs::types::QueueAttributeName;
    let attrs = sqs()
        .get_queue_attributes()
        .queue_url(url)
        .attribute_names(QueueAttributeName::QueueArn)
        .send()
        .await
        .map_err(|e| anyhow::anyhow!("get queue arn of {url}: {}", e.into_service_error()))?;
    attrs
        .attributes()
        .and_then(|a| a.get(&QueueAttributeName::QueueArn))
        .cloned()
        .ok_or_else(|| anyhow::anyhow!("queue {url} has no QueueArn"))
}

pub async fn create_queue_with_dlq(
    name: &str,
    max_receive_count: u32,
) -> anyhow::Result<(String, String)> {
    use aws_sdk_sqs::types::QueueAttributeName;
    let client = sqs();
    let dlq_url = create_queue(&format!("{name}-dlq")).await?;
    let dlq_arn = queue_arn(&dlq_url).await?;
    let redrive = serde_json::json!({
        "deadLetterTargetArn": dlq_arn,
        "maxReceiveCount": max_receive_count.to_string(),
    })
    .to_string();
    let out = client
        .create_queue()
        .queue_name(name)
        .attributes(QueueAttributeName::RedrivePolicy, redrive)
        .send()
        .await
        .map_err(|e| anyhow::anyhow!("create queue {name}: {}", e.into_service_error()))?;
    let url = out
        .queue_url
        .ok_or_else(|| anyhow::anyhow!("create queue {name}: no QueueUrl"))?;
    Ok((url, dlq_url))
}

/// A user of a new tenant registered at the identity stand-in (with mailbridge's app), and the
/// account secret `secret_name` (`mailbridge/<unique>`) holding its password, as the operator's
/// ROPC bootstrap leaves it.
#[derive(Debug, Clone)]
pub struct PasswordAccount {
    /// `<unique>.onmicrosoft.com`.
    pub tenant: String,
    /// The app registration's client id.
    pub client_id: String,
    /// The user's UPN.
    pub upn: String,
    /// The Secrets Manager secret, `mailbridge/<unique>`.
    pub secret_name: String,
}

impl PasswordAccount {
    /// The account's name, as a mailbox's `account` field names it (the secret's name without
    /// `mailbridge/`).
    pub fn account(&self) -> &str {
        self.secret_name.trim_start_matches("mailbridge/")
    }
}

/// Register a new tenant, app and user (`user_prefix`, `password`) and store its account secret.
pub async fn new_password_account(
    user_prefix: &str,
    password: &str,
) -> anyhow::Result<PasswordAccount> {
    new_password_account_consented(user_prefix, password, &[]).await
}

/// As [`new_password_account`], with the app also consented for `extra` Graph permissions
/// (e.g. `Mail.ReadWrite`, which the draft route for large messages needs).
pub async fn new_password_account_consented(
    user_prefix: &str,
    password: &str,
    extra: &[&str],
) -> anyhow::Result<PasswordAccount> {
    let idp = stack().identity();
    let tenant = format!("{}.onmicrosoft.com", unique("tenant"));
    let client_id = uuid::Uuid::new_v4().to_string();
    let upn = unique_user(user_prefix);
    let mut app = local_stack::identity::AppRegistration::mailbridge(&tenant, &client_id);
    app.consented_scopes.extend(
        extra
            .iter()
            .map(|p| format!("https://graph.microsoft.com/{p}")),
    );
    idp.register_app(app);
    idp.register_user(local_stack::identity::UserAccount::new(
        &tenant, &upn, password,
    ));
    let secret_name = format!("mailbridge/{}", unique("acct"));
    let mut secret = mailbridge::token::AccountSecret::new(&tenant, &client_id, &upn);
    secret.authority_host = idp.base_url.clone();
    secret.password = Some(password.to_owned().into());
    put_secret(&secret_name, &secret.to_json()).await?;
    Ok(PasswordAccount {
        tenant,
        client_id,
        upn,
        secret_name,
    })
}

/// Set the account secret's `shared_mailbox_route` (`send_as` or `full_access`).
pub async fn set_shared_mailbox_route(
    secret_name: &str,
    route: mailbridge::send_rights::SharedMailboxRoute,
) -> anyhow::Result<()> {
    let json = get_secret(secret_name).await?;
    let mut secret = mailbridge::token::AccountSecret::parse(secret_name, &json)?;
    secret.shared_mailbox_route = route;
    put_secret(secret_name, &secret.to_json()).await
}

/// Create (or overwrite) the secret `name` with the string `value`.
pub async fn put_secret(name: &str, value: &str) -> anyhow::Result<()> {
    let client = secrets();
    let created = client
        .create_secret()
        .name(name)
        .secret_string(value)
        .send()
        .await;
    match created {
        Ok(_) => Ok(()),
        Err(e)
            if e.as_service_error()
                .is_some_and(|s| s.is_resource_exists_exception()) =>
        {
            client
                .put_secret_value()
                .secret_id(name)
                .secret_string(value)
                .send()
                .await
                .map_err(|e| anyhow::anyhow!("put secret {name}: {}", e.into_service_error()))?;
            Ok(())
        }
        Err(e) => Err(anyhow::anyhow!(
            "create secret {name}: {}",
            e.into_service_error()
        )),
    }
}

/// Read the current string value of secret `name`.
pub async fn get_secret(name: &str) -> anyhow::Result<String> {
    let out = secrets()
        .get_secret_value()
        .secret_id(name)
        .version_stage("AWSCURRENT")
        .send()
        .await
        .map_err(|e| anyhow::anyhow!("get secret {name}: {}", e.into_service_error()))?;
    out.secret_string
        .ok_or_else(|| anyhow::anyhow!("secret {name} has no SecretString"))
}

/// Create a fresh state table (unique name with `prefix`) and return its name.
pub async fn create_state_table(prefix: &str) -> anyhow::Result<String> {
    let name = unique(prefix);
    local_stack::moto::ensure_state_table(&dynamodb(), &name).await?;
    Ok(name)
}

/// An IMAP session over TLS to a local Dovecot.
pub type ImapSession = async_imap::Session<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;

/// SASL XOAUTH2 (`user=<user>^Aauth=Bearer <token>^A^A`; answers the error challenge with an
/// empty response so the server's final NO arrives).
pub struct XOAuth2 {
    /// Login user (the mailbox).
    pub user: String,
    /// Bearer access token.
    pub token: String,
    sent: bool,
}

impl XOAuth2 {
    /// Authenticator for `user` with `token`.
    pub fn new(user: &str, token: &str) -> Self {
        XOAuth2 {
            user: user.to_string(),
            token: token.to_string(),
            sent: false,
        }
    }
}

impl async_imap::Authenticator for XOAuth2 {
    type Response = String;
    fn process(&mut self, _challenge: &[u8]) -> String {
        if self.sent {
            String::new()
        } else {
            self.sent = true;
            format!("user={}\x01auth=Bearer {}\x01\x01", self.user, self.token)
        }
    }
}

/// SASL OAUTHBEARER (RFC 7628: `n,a=<user>,^Aauth=Bearer <token>^A^A`).
pub struct OAuthBearer {
    /// Login user (the mailbox).
    pub user: String,
    /// Bearer access token.
    pub token: String,
    sent: bool,
}

impl OAuthBearer {
    /// Authenticator for `user` with `token`.
    pub fn new(user: &str, token: &str) -> Self {
        OAuthBearer {
            user: user.to_string(),
            token: token.to_string(),
            sent: false,
        }
    }
}

impl async_imap::Authenticator for OAuthBearer {
    type Response = String;
    fn process(&mut self, _challenge: &[u8]) -> String {
        if self.sent {
            // RFC 7628: answer the error challenge with a single ^A
            "\x01".to_string()
        } else {
            self.sent = true;
            format!("n,a={},\x01auth=Bearer {}\x01\x01", self.user, self.token)
        }
    }
}

/// Connect to `dovecot`'s IMAPS port (server name `localhost`, only its CA trusted) and read
/// the greeting.
pub async fn imaps_connect(
    dovecot: &local_stack::dovecot::Dovecot,
) -> anyhow::Result<async_imap::Client<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>> {
    let tls = tokio_rustls::TlsConnector::from(dovecot.rustls_client_config()?);
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", dovecot.imaps_port)).await?;
    let server_name = rustls::pki_types::ServerName::try_from("localhost")?;
    let stream = tls.connect(server_name, tcp).await?;
    let mut client = async_imap::Client::new(stream);
    let greeting = client
        .read_response()
        .await?
        .ok_or_else(|| anyhow::anyhow!("dovecot closed the connection before the greeting"))?;
    tracing::debug!(greeting = ?greeting.parsed(), "imap greeting");
    Ok(client)
}

/// Log in to `dovecot` over IMAPS with XOAUTH2.
pub async fn imap_login_xoauth2(
    dovecot: &local_stack::dovecot::Dovecot,
    user: &str,
    token: &str,
) -> anyhow::Result<ImapSession> {
    let client = imaps_connect(dovecot).await?;
    client
        .authenticate("XOAUTH2", XOAuth2::new(user, token))
        .await
        .map_err(|(e, _)| anyhow::anyhow!("XOAUTH2 login as {user} failed: {e}"))
}

/// Log in to `dovecot` over IMAPS with OAUTHBEARER.
pub async fn imap_login_oauthbearer(
    dovecot: &local_stack::dovecot::Dovecot,
    user: &str,
    token: &str,
) -> anyhow::Result<ImapSession> {
    let client = imaps_connect(dovecot).await?;
    client
        .authenticate("OAUTHBEARER", OAuthBearer::new(user, token))
        .await
        .map_err(|(e, _)| anyhow::anyhow!("OAUTHBEARER login as {user} failed: {e}"))
}

/// The messages in `user`'s INBOX of the shared Dovecot once there are at least `at_least` (the
/// Graph stand-in delivers in the background): waits up to 60 s, then fails naming the user.
pub async fn wait_for_inbox(
    user: &str,
    at_least: usize,
) -> Vec<local_stack::dovecot::StoredMessage> {
    let dovecot = stack().dovecot();
    for _ in 0..600 {
        let messages = dovecot.list_messages(user, "INBOX").unwrap_or_default();
        if messages.len() >= at_least {
            return messages;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("{user}'s INBOX did not get {at_least} message(s) within 60 s");
}

/// Start a private Dovecot instance (for tests that stop/restart it or need their own
/// introspection endpoint) in a fresh run folder.
pub async fn start_private_dovecot(
    label: &str,
    introspection_url: &str,
) -> anyhow::Result<local_stack::dovecot::Dovecot> {
    let dir = local_stack::default_run_dir(label)?;
    local_stack::dovecot::Dovecot::start(&dir, introspection_url).await
}

/// Receive `n` messages from the queue at `queue_url` (ARN `queue_arn`) as the SQS event Lambda's
/// event source would deliver them; panics when fewer than `n` arrive within about 30 s.
pub async fn receive_sqs_event(
    queue_url: &str,
    queue_arn: &str,
    n: usize,
) -> aws_lambda_events::event::sqs::SqsEvent {
    let mut records = Vec::new();
    for _ in 0..30 {
        if records.len() >= n {
            break;
        }
        let out = sqs()
            .receive_message()
            .queue_url(queue_url)
            .max_number_of_messages((n - records.len()).min(10) as i32)
            .message_system_attribute_names(aws_sdk_sqs::types::MessageSystemAttributeName::All)
            .wait_time_seconds(1)
            .send()
            .await
            .expect("receive");
        for m in out.messages() {
            records.push(sqs_event_record(m, queue_arn));
        }
    }
    assert_eq!(records.len(), n, "messages received from the queue");
    let mut event = aws_lambda_events::event::sqs::SqsEvent::default();
    event.records = records;
    event
}

/// The record Lambda's SQS event source would deliver for `message`, received from the queue
/// whose ARN is `queue_arn` (message id, receipt handle, body, MD5, system attributes).
pub fn sqs_event_record(
    message: &aws_sdk_sqs::types::Message,
    queue_arn: &str,
) -> aws_lambda_events::event::sqs::SqsMessage {
    let mut record = aws_lambda_events::event::sqs::SqsMessage::default();
    record.message_id = message.message_id().map(str::to_owned);
    record.receipt_handle = message.receipt_handle().map(str::to_owned);
    record.body = message.body().map(str::to_owned);
    record.md5_of_body = message.md5_of_body().map(str::to_owned);
    record.attributes = message
        .attributes()
        .map(|a| {
            a.iter()
                .map(|(k, v)| (k.as_str().to_owned(), v.clone()))
                .collect::<std::collections::HashMap<_, _>>()
        })
        .unwrap_or_default();
    record.event_source = Some("aws:sqs".into());
    record.event_source_arn = Some(queue_arn.to_owned());
    record.aws_region = Some("us-east-1".into());
    record
}

/// What the identity stand-in's sign-in page did with a posted form.
#[derive(Debug)]
pub enum SignInPage {
    /// Sent the browser on to the redirect URI (with a code or an error).
    Redirect(String),
    /// Showed a page instead (an error page: its status and text).
    Page(u16, String),
}

/// A test playing the browser of a browser sign-in: open `authorize_url` on the identity
/// stand-in, fill in its sign-in form as `login`/`password`, press Accept (`accept`) or Cancel,
/// and return where the page sends the browser next. Redirects are not followed.
pub async fn browser_sign_in(
    authorize_url: &str,
    login: &str,
    password: &str,
    accept: bool,
) -> anyhow::Result<SignInPage> {
    let http = browser_http();
    let page = http.get(authorize_url).send().await?;
    let status = page.status().as_u16();
    if let Some(location) = page.headers().get("location") {
        return Ok(SignInPage::Redirect(location.to_str()?.to_owned()));
    }
    let html = page.text().await?;
    if status != 200 {
        return Ok(SignInPage::Page(status, html));
    }
    let attribute = |marker: &str| -> anyhow::Result<String> {
        let start = html
            .find(marker)
            .ok_or_else(|| anyhow::anyhow!("no {marker} in the sign-in page: {html}"))?
            + marker.len();
        let end = html[start..]
            .find('"')
            .ok_or_else(|| anyhow::anyhow!("unterminated {marker}"))?;
        Ok(html[start..start + end].replace("&amp;", "&"))
    };
    let action = attribute("action=\"")?;
    let flow = attribute("name=\"flow\" value=\"")?;
    let base = url::Url::parse(authorize_url)?;
    let target = base.join(&action)?;
    let posted = http
        .post(target)
        .form(&[
            ("flow", flow.as_str()),
            ("login", login),
            ("passwd", password),
            ("consent", if accept { "accept" } else { "decline" }),
        ])
        .send()
        .await?;
    let status = posted.status().as_u16();
    if let Some(location) = posted.headers().get("location") {
        return Ok(SignInPage::Redirect(location.to_str()?.to_owned()));
    }
    Ok(SignInPage::Page(status, posted.text().await?))
}

/// The browser's HTTP client: no redirects followed (the test looks at each hop).
pub fn browser_http() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("HTTP client")
}
