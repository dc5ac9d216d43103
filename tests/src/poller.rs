//! The real poller over IMAP against the local stack, in plain code (no Lambda): tokens from the
//! identity stand-in, mail from Dovecot, the state table and sink secrets in moto. [`ImapPoller`]
//! is the helpdesk tests' poller on the shared tenant; [`Poller`] brings its own tenant, state
//! table and ticket sink path (the poller tests).

use std::sync::Arc;
use std::time::Duration;

use local_stack::dovecot::Dovecot;
use local_stack::identity::{AppRegistration, UserAccount};
use mailbridge::retry::RetryPolicy;
use mailbridge::state_table::{DynamoStateStore, put_mailbox_config};
use mailbridge::token::Audience;
use mailbridge::token::identity::{IdentityClient, default_retry_policy};
use mailbridge::token::secret::AccountSecret;
use mailbridge::token::service::{TokenService, TokenServiceConfig};
use mailbridge::token::store::SecretsManagerStore;
use poll_mailboxes::PollDeps;
use poll_mailboxes::convert::ParseContext;
use poll_mailboxes::imap_adapter::ImapConnector;
use poll_mailboxes::sinks::SecretsSinkFactory;
use secrecy::ExposeSecret as _;
use tokio::time::Instant;

use crate::{dynamodb, put_secret, stack, unique};

/// What sets one test's poller apart.
#[derive(Clone, Debug)]
pub struct ImapPoller<'a> {
    /// The state table.
    pub table: &'a str,
    /// The thread-marker key.
    pub thread_key: &'a [u8],
    /// How many mailboxes one run polls at once.
    pub max_concurrent_mailboxes: usize,
    /// The ticket sinks' retry policy.
    pub sink_retry: RetryPolicy,
}

impl ImapPoller<'_> {
    /// The poller's dependencies (sign-in retries quickly: 50 ms to 400 ms).
    pub fn deps(&self) -> PollDeps {
        poll_deps(
            stack().dovecot(),
            self.table,
            self.thread_key,
            self.sink_retry.clone(),
            self.max_concurrent_mailboxes,
            Duration::from_secs(2),
        )
    }
}

/// The poller's dependencies against `dovecot` and the state table `table`: the production
/// token layer (account secrets in moto, sign-in retried quickly), the IMAP connector trusting
/// the stack's CA, the ticket sinks with `sink_retry`, no memory limit.
fn poll_deps(
    dovecot: &Dovecot,
    table: &str,
    thread_key: &[u8],
    sink_retry: RetryPolicy,
    max_concurrent_mailboxes: usize,
    deadline_margin: Duration,
) -> PollDeps {
    let aws = stack().moto().sdk_config();
    let tokens = TokenService::new(
        Arc::new(SecretsManagerStore::from_conf(&aws)),
        identity_client(),
        TokenServiceConfig {
            default_timeout: Duration::from_secs(10),
            ..TokenServiceConfig::default()
        },
    );
    PollDeps {
        tokens: Arc::new(tokens),
        connector: Arc::new(
            ImapConnector::new(Some(&dovecot.ca_pem_path), Duration::from_secs(10)).unwrap(),
        ),
        state: Arc::new(DynamoStateStore::new(dynamodb(), table)),
        sinks: Arc::new(SecretsSinkFactory::new(
            reqwest::Client::new(),
            aws_sdk_secretsmanager::Client::new(&aws),
            sink_retry,
        )),
        parse: ParseContext {
            thread_key: Some(thread_key.to_vec()),
        },
        max_concurrent_mailboxes,
        deadline_margin,
        dedupe_ttl: Duration::from_secs(86_400),
        targets: mailbridge::mailbox::TargetPolicy::local(),
        memory: Arc::new(poll_mailboxes::memory::MemoryBudget::unlimited()),
    }
}

/// The identity client of the poller tests: sign-in retried quickly (50 ms to 400 ms).
pub fn identity_client() -> IdentityClient {
    IdentityClient::new(mailbridge::http::default_client().expect("http client")).with_retry_policy(
        RetryPolicy {
            initial_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_millis(400),
            ..default_retry_policy()
        },
    )
}

/// The ticket sinks' retry policy of the poller tests: 20 ms to 2 s, five attempts.
pub fn fast_retry() -> RetryPolicy {
    RetryPolicy {
        initial_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_secs(2),
        max_attempts: 5,
        attempt_timeout: Duration::from_secs(5),
    }
}

/// The environment of the real poll-mailboxes bootstrap on the local stack: moto, the state
/// table `table`, a new thread-key secret, local targets allowed, account secrets under
/// `mailbridge/`, and `RUST_LOG=log`. A test adds what only it needs (the IMAP CA file, the
/// Graph URL, ...).
pub async fn bootstrap_env(table: &str, log: &str) -> Vec<(String, String)> {
    let thread_key_secret = unique("thread-key");
    put_secret(&thread_key_secret, "0123456789abcdef0123456789abcdef")
        .await
        .unwrap();
    let mut env = stack().moto().env();
    env.extend([
        ("MAILBRIDGE_STATE_TABLE".to_string(), table.to_string()),
        (
            "MAILBRIDGE_ALLOW_LOCAL_TARGETS".to_string(),
            "true".to_string(),
        ),
        (
            "MAILBRIDGE_THREAD_KEY_SECRET".to_string(),
            thread_key_secret,
        ),
        (
            "MAILBRIDGE_SECRET_PREFIX".to_string(),
            "mailbridge/".to_string(),
        ),
        ("RUST_LOG".to_string(), log.to_string()),
    ]);
    env
}

/// Write mailbox `name` of the state table `table` (local targets allowed): the fields of
/// `config`, with those of `extra` over them (a null in `extra` removes the field).
pub async fn put_mailbox(
    table: &str,
    name: &str,
    mut config: serde_json::Value,
    extra: serde_json::Value,
) {
    let fields = config
        .as_object_mut()
        .expect("the configuration is an object");
    for (k, v) in extra.as_object().expect("extra fields are an object") {
        if v.is_null() {
            fields.remove(k);
        } else {
            fields.insert(k.clone(), v.clone());
        }
    }
    put_mailbox_config(
        &dynamodb(),
        table,
        name,
        &config,
        &mailbridge::mailbox::TargetPolicy::local(),
    )
    .await
    .unwrap();
}

/// Write mailbox `name` of the state table `table`: `user` on the stack's Dovecot read with
/// `account`'s secret, plus `fields` (the sink, limits, ...).
pub async fn put_stack_mailbox(
    table: &str,
    name: &str,
    user: &str,
    account: &str,
    fields: serde_json::Value,
) {
    let config = serde_json::json!({
        "user": user,
        "account": account,
        "host": "localhost",
        "port": stack().dovecot().imaps_port,
    });
    put_mailbox(table, name, config, fields).await;
}

/// The password of every user a [`Poller`] registers.
pub const PASSWORD: &str = "correct horse battery staple";

/// One tenant + app, a state table, a ticket sink path, and poller deps wired to `dovecot`.
pub struct Poller {
    /// The tenant its accounts sign in to.
    pub tenant: String,
    /// Its app registration in that tenant.
    pub client_id: String,
    /// Its state table.
    pub table: String,
    /// Its ticket sink path at the ticket API stand-in.
    pub sink: String,
    /// The Dovecot its mailboxes are on.
    pub dovecot: Arc<Dovecot>,
    /// The poller's dependencies.
    pub deps: PollDeps,
}

impl Poller {
    /// A poller that stops starting new mail 2 s before the deadline.
    pub async fn new(dovecot: Arc<Dovecot>) -> Poller {
        Self::with_margin(dovecot, Duration::from_secs(2)).await
    }

    /// A poller that stops starting new mail `deadline_margin` before the deadline.
    pub async fn with_margin(dovecot: Arc<Dovecot>, deadline_margin: Duration) -> Poller {
        let idp = stack().identity();
        let tenant = format!("{}.onmicrosoft.com", unique("tenant"));
        let client_id = uuid::Uuid::new_v4().to_string();
        idp.register_app(AppRegistration::mailbridge(&tenant, &client_id));
        let table = crate::create_state_table("poll").await.unwrap();
        let deps = poll_deps(
            &dovecot,
            &table,
            b"poll-test-thread-key",
            fast_retry(),
            4,
            deadline_margin,
        );
        Poller {
            tenant,
            client_id,
            table,
            sink: unique("sink"),
            dovecot,
            deps,
        }
    }

    /// An account secret for `upn` in this poller's tenant, without credentials.
    pub fn account_secret(&self, upn: &str) -> AccountSecret {
        let mut a = AccountSecret::new(&self.tenant, &self.client_id, upn);
        a.authority_host = stack().identity().base_url.clone();
        a
    }

    /// A user with a password-only account secret (ROPC bootstrap); returns the account name.
    pub async fn account(&self, upn: &str) -> String {
        stack()
            .identity()
            .register_user(UserAccount::new(&self.tenant, upn, PASSWORD));
        let account = unique("acct");
        let mut secret = self.account_secret(upn);
        secret.password = Some(PASSWORD.into());
        put_secret(&format!("mailbridge/{account}"), &secret.to_json())
            .await
            .unwrap();
        account
    }

    /// A user whose secret holds only a refresh token (as after a device-code login).
    pub async fn account_with_refresh_token(&self, upn: &str) -> String {
        stack()
            .identity()
            .register_user(UserAccount::new(&self.tenant, upn, PASSWORD));
        let mut secret = self.account_secret(upn);
        let tokens = identity_client()
            .password(&secret, Audience::Imap, &PASSWORD.into())
            .await
            .expect("seed a refresh token");
        let refresh = tokens.refresh_token.expect("refresh token");
        secret.refresh_token = Some(refresh.expose_secret().to_string().into());
        secret.refresh_token_stored_at = Some(chrono::Utc::now());
        let account = unique("acct");
        put_secret(&format!("mailbridge/{account}"), &secret.to_json())
            .await
            .unwrap();
        account
    }

    /// Configure mailbox `name` for `user` on this Dovecot, posting to this poller's ticket sink
    /// path; `extra` overrides or (null) removes fields.
    pub async fn mailbox(&self, name: &str, user: &str, account: &str, extra: serde_json::Value) {
        let config = serde_json::json!({
            "user": user,
            "account": account,
            "host": "localhost",
            "port": self.dovecot.imaps_port,
            "ticket_api_url": stack().tickets().sink_url(&self.sink),
        });
        put_mailbox(&self.table, name, config, extra).await;
    }

    /// One run, with a minute to go.
    pub async fn poll(&self) -> poll_mailboxes::PollReport {
        self.poll_until(Instant::now() + Duration::from_secs(60))
            .await
    }

    /// One run that ends by `deadline`.
    pub async fn poll_until(&self, deadline: Instant) -> poll_mailboxes::PollReport {
        poll_mailboxes::poll_once(&self.deps, None, deadline)
            .await
            .unwrap()
    }

    /// The tickets the stand-in made on this poller's sink path.
    pub fn tickets(&self) -> Vec<local_stack::ticket_api::RecordedTicket> {
        stack().tickets().tickets(&self.sink)
    }

    /// The number of mails in `user`'s `folder`; a failing `doveadm` (a folder that does not
    /// exist, a broken instance) fails the test instead of reading as 0.
    pub fn count(&self, user: &str, folder: &str) -> usize {
        self.dovecot
            .list_messages(user, folder)
            .unwrap_or_else(|e| panic!("count the mail in {user}/{folder}: {e:#}"))
            .len()
    }

    /// Deliver `raw` into `user`'s INBOX.
    pub fn deliver(&self, user: &str, raw: &[u8]) {
        self.dovecot.deliver_to(user, "INBOX", raw).unwrap();
    }
}
