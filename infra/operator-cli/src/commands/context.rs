//! What every subcommand shares: the global options, the exit codes, AWS and token-layer
//! wiring (Secrets Manager store, [`TokenService`], state table), and small output helpers.
//!
//! Everything AWS comes from the standard environment (`AWS_REGION`, credentials,
//! `AWS_ENDPOINT_URL`) or `--endpoint-url`, exactly as the Lambdas load it, so the CLI reaches
//! real AWS and the local stack alike.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context as _, Result, bail};
use mailbridge::token::{
    AccountSecret, IdentityClient, SecretStore, SecretStoreError, SecretsManagerStore,
    TokenService, TokenServiceConfig,
};
use secrecy::ExposeSecret as _;
use tokio::sync::OnceCell;

/// Process exit codes (documented in `--help` and docs/operator-cli.md).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Exit {
    /// Success.
    Ok = 0,
    /// An error (printed as one line on stderr).
    Error = 1,
    /// `check` / `status` found problems.
    Problems = 3,
    /// `login` did not complete.
    LoginIncomplete = 4,
}

/// An error that maps to a specific exit code (others exit with 1).
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct ExitError {
    /// The exit code.
    pub exit: Exit,
    /// One line for stderr.
    pub message: String,
}

/// Options every subcommand accepts.
#[derive(Debug, Clone, clap::Args)]
pub struct GlobalArgs {
    /// Print machine-readable JSON on stdout (progress and prompts still go to stderr).
    #[arg(long, global = true)]
    pub json: bool,
    /// AWS endpoint override for Secrets Manager, SQS and DynamoDB (e.g. moto on
    /// http://127.0.0.1:5000). Default: the standard AWS environment.
    #[arg(long, global = true, value_name = "URL")]
    pub endpoint_url: Option<String>,
    /// Prefix of account secret names; an account `contoso` is the secret `<prefix>contoso`.
    #[arg(
        long,
        global = true,
        env = "MAILBRIDGE_SECRET_PREFIX",
        default_value = "mailbridge/",
        value_name = "PREFIX"
    )]
    pub secret_prefix: String,
    /// The DynamoDB state table (mailbox configurations, last-run status, dedupe records).
    #[arg(
        long,
        global = true,
        env = "MAILBRIDGE_STATE_TABLE",
        value_name = "TABLE"
    )]
    pub state_table: Option<String>,
    /// Microsoft Graph v1.0 root. Default: the account secret's `graph_host` + `/v1.0`.
    #[arg(long, global = true, env = "MAILBRIDGE_GRAPH_URL", value_name = "URL")]
    pub graph_url: Option<String>,
    /// Extra PEM trust anchors for IMAP TLS (a private CA); verification always stays on.
    #[arg(
        long,
        global = true,
        env = "MAILBRIDGE_IMAP_CA_FILE",
        value_name = "PEM"
    )]
    pub imap_ca_file: Option<PathBuf>,
}

/// Shared wiring, built lazily (a command that needs no AWS never loads credentials).
pub struct Context {
    /// The global options.
    pub global: GlobalArgs,
    aws: OnceCell<aws_config::SdkConfig>,
    tokens: OnceCell<TokenService>,
}

impl Context {
    /// Wrap the global options.
    pub fn new(global: GlobalArgs) -> Self {
        Context {
            global,
            aws: OnceCell::new(),
            tokens: OnceCell::new(),
        }
    }

    /// `--json` given.
    pub fn json(&self) -> bool {
        self.global.json
    }

    /// The AWS config: standard environment, plus `--endpoint-url` when given.
    pub async fn aws(&self) -> &aws_config::SdkConfig {
        self.aws
            .get_or_init(|| async {
                let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
                if let Some(url) = &self.global.endpoint_url {
                    loader = loader.endpoint_url(url);
                }
                loader.load().await
            })
            .await
    }

    /// Token-layer settings: the environment (`MAILBRIDGE_TOKEN_WRITE_BACK_SECONDS`) plus the
    /// `--secret-prefix`.
    pub fn token_config(&self) -> Result<TokenServiceConfig> {
        let mut config = TokenServiceConfig::from_env()?;
        config.secret_prefix = self.global.secret_prefix.clone();
        Ok(config)
    }

    /// The account secret name for `account` (prefix added unless already there).
    pub fn secret_name(&self, account: &str) -> String {
        if account.starts_with(&self.global.secret_prefix) {
            account.to_owned()
        } else {
            format!("{}{account}", self.global.secret_prefix)
        }
    }

    /// The account name shown to the operator (secret name without the prefix).
    pub fn account_name<'a>(&self, secret_name: &'a str) -> &'a str {
        secret_name
            .strip_prefix(&self.global.secret_prefix)
            .unwrap_or(secret_name)
    }

    /// Secrets Manager as the token layer's store.
    pub async fn secret_store(&self) -> Arc<SecretsManagerStore> {
        Arc::new(SecretsManagerStore::from_conf(self.aws().await))
    }

    /// The poller's own sink factory: each mailbox's helpdesk adapter with its credentials from
    /// Secrets Manager.
    pub async fn sink_factory(&self) -> Result<poll_mailboxes::sinks::SecretsSinkFactory> {
        Ok(poll_mailboxes::sinks::SecretsSinkFactory::new(
            mailbridge::http::default_client()?,
            mailbridge::aws::LazyClient::new(self.aws().await, aws_sdk_secretsmanager::Client::new),
            mailbridge::retry::RetryPolicy::default(),
        ))
    }

    /// The identity platform client (hosts come from each account secret).
    pub fn identity_client(&self) -> Result<IdentityClient> {
        Ok(IdentityClient::new(mailbridge::http::default_client()?))
    }

    /// The production token service (one per process: its cache is shared by all checks).
    pub async fn token_service(&self) -> Result<&TokenService> {
        self.tokens
            .get_or_try_init(|| async {
                let store: Arc<dyn SecretStore> = self.secret_store().await;
                Ok(TokenService::new(
                    store,
                    self.identity_client()?,
                    self.token_config()?,
                ))
            })
            .await
    }

    /// Read and parse an account secret. `Ok(None)` when it does not exist.
    pub async fn read_account(&self, secret_name: &str) -> Result<Option<AccountSecret>> {
        let store = self.secret_store().await;
        match store.get(secret_name).await {
            Ok(value) => Ok(Some(AccountSecret::parse(
                secret_name,
                value.value.expose_secret(),
            )?)),
            Err(SecretStoreError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// The state table name, or a clear error naming the option and variable.
    pub fn state_table(&self) -> Result<&str> {
        match self.global.state_table.as_deref() {
            Some(t) if !t.trim().is_empty() => Ok(t),
            _ => bail!(
                "no state table: pass --state-table TABLE or set MAILBRIDGE_STATE_TABLE (the DynamoDB table of the deployment)"
            ),
        }
    }

    /// DynamoDB client.
    pub async fn dynamodb(&self) -> aws_sdk_dynamodb::Client {
        aws_sdk_dynamodb::Client::new(self.aws().await)
    }

    /// The state table adapter of poll-mailboxes.
    pub async fn state_store(&self) -> Result<mailbridge::state_table::DynamoStateStore> {
        let table = self.state_table()?.to_owned();
        Ok(
            mailbridge::state_table::DynamoStateStore::new(self.dynamodb().await, table)
                .with_targets(self.targets()?),
        )
    }

    /// Where mailbox configurations may point: the same variables the poller reads
    /// (`MAILBRIDGE_IMAP_HOSTS`, `MAILBRIDGE_SINK_HOSTS`, `MAILBRIDGE_ALLOW_LOCAL_TARGETS`), so a
    /// configuration the CLI stores is one the poller accepts.
    pub fn targets(&self) -> Result<mailbridge::mailbox::TargetPolicy> {
        Ok(mailbridge::mailbox::TargetPolicy::from_lookup(|k| {
            std::env::var(k).ok()
        })?)
    }

    /// Graph v1.0 root for `account`: `--graph-url` / `MAILBRIDGE_GRAPH_URL`, else the
    /// account's `graph_host` + `/v1.0`.
    pub fn graph_url(&self, account: &AccountSecret) -> String {
        match &self.global.graph_url {
            Some(url) if !url.trim().is_empty() => url.trim_end_matches('/').to_owned(),
            _ => format!("{}/v1.0", account.graph_host.trim_end_matches('/')),
        }
    }

    /// rustls config for IMAP: webpki roots plus `--imap-ca-file`.
    pub fn imap_tls(&self) -> Result<Arc<rustls::ClientConfig>> {
        mailbridge::imap::tls_config(self.global.imap_ca_file.as_deref())
            .context("IMAP TLS configuration")
    }
}

/// Environment variable naming the secret that holds the thread-marker HMAC key (as the
/// functions read it).
pub const THREAD_KEY_SECRET_ENV: &str = "MAILBRIDGE_THREAD_KEY_SECRET";

impl Context {
    /// The thread-marker HMAC key, as the functions use it: the string value of the secret named
    /// by `MAILBRIDGE_THREAD_KEY_SECRET`, else `MAILBRIDGE_THREAD_KEY` (hex, as `mailbridge
    /// parse` reads it), else none.
    pub async fn thread_key(&self) -> Result<Option<Vec<u8>>> {
        if let Some(name) = std::env::var(THREAD_KEY_SECRET_ENV)
            .ok()
            .filter(|v| !v.trim().is_empty())
        {
            let client = aws_sdk_secretsmanager::Client::new(self.aws().await);
            let out = client
                .get_secret_value()
                .secret_id(&name)
                .version_stage("AWSCURRENT")
                .send()
                .await
                .map_err(|e| {
                    anyhow::anyhow!(
                        "{THREAD_KEY_SECRET_ENV} {name}: cannot read it: {}",
                        mailbridge::error::error_chain(&e)
                    )
                })?;
            let value = out.secret_string().with_context(|| {
                format!("{THREAD_KEY_SECRET_ENV} {name}: the secret has no string value")
            })?;
            let key = mailbridge::thread_key::ThreadKey::from_secret_value(value)
                .map_err(|e| anyhow::anyhow!("{THREAD_KEY_SECRET_ENV} {name}: {e}"))?;
            return Ok(Some(key.expose().to_vec()));
        }
        match std::env::var(super::parse::THREAD_KEY_ENV) {
            Ok(hex_key) if !hex_key.trim().is_empty() => {
                Ok(Some(hex::decode(hex_key.trim()).with_context(|| {
                    format!("{} is not hex", super::parse::THREAD_KEY_ENV)
                })?))
            }
            _ => Ok(None),
        }
    }
}

/// Logs (tracing) go to stderr only when `RUST_LOG` is set; the CLI's own output says what
/// happened.
pub fn init_logging() {
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .try_init();
    }
}

/// Print one JSON value on stdout.
pub fn print_json(value: &serde_json::Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string())
    );
}

/// "3 d 4 h", "25 min", "40 s".
pub fn human_duration(d: chrono::Duration) -> String {
    let secs = d.num_seconds().max(0);
    if secs >= 86_400 {
        format!("{} d {} h", secs / 86_400, (secs % 86_400) / 3600)
    } else if secs >= 3600 {
        format!("{} h {} min", secs / 3600, (secs % 3600) / 60)
    } else if secs >= 60 {
        format!("{} min", secs / 60)
    } else {
        format!("{secs} s")
    }
}

/// Whether stderr is a terminal (progress is redrawn in place there, printed as lines
/// otherwise).
pub fn stderr_is_terminal() -> bool {
    use std::io::IsTerminal as _;
    std::io::stderr().is_terminal()
}
