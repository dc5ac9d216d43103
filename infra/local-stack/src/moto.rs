//! moto in server mode (SQS, Secrets Manager, DynamoDB) as a child process on 127.0.0.1.
//!
//! The binary comes from the project venv (`<repo>/.local/venv`, or `$MAILBRIDGE_VENV`), created
//! by `bash infra/scripts/install-prerequisites.sh`. State is global to the process: tests use
//! unique queue/secret/table names instead of resetting.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType,
    TimeToLiveSpecification,
};

/// Region every local client uses.
pub const REGION: &str = "us-east-1";
/// Static test credentials (moto accepts anything).
pub const ACCESS_KEY_ID: &str = "test";
/// Static test credentials (moto accepts anything).
pub const SECRET_ACCESS_KEY: &str = "test";
/// The account id moto always uses.
pub const ACCOUNT_ID: &str = "123456789012";

/// Python that starts moto_server with its deviations from AWS that mailbridge relies on fixed.
const MOTO_FIDELITY: &str = include_str!("moto_fidelity.py");

/// A running moto server. The process is killed on drop and when this process exits.
pub struct Moto {
    /// e.g. `http://127.0.0.1:41235`.
    pub endpoint_url: String,
    /// The port moto listens on.
    pub port: u16,
    /// moto's stdout/stderr.
    pub log_path: PathBuf,
    child: Mutex<Option<Child>>,
}

impl std::fmt::Debug for Moto {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Moto")
            .field("endpoint_url", &self.endpoint_url)
            .finish()
    }
}

/// The project venv holding moto: `$MAILBRIDGE_VENV`, else `<repo>/.local/venv` of the
/// repository found at run time ([`crate::repo_root`]), else that of the compile-time checkout.
pub fn venv_dir() -> PathBuf {
    if let Some(venv) = std::env::var_os("MAILBRIDGE_VENV") {
        return PathBuf::from(venv);
    }
    let primary = crate::repo_root().join(".local/venv");
    if primary.join("bin/moto_server").exists() {
        return primary;
    }
    let compiled = crate::compile_time_repo_root().join(".local/venv");
    if compiled.join("bin/moto_server").exists() {
        return compiled;
    }
    primary
}

impl Moto {
    /// Start `moto_server` on a free port, logging to `<run_dir>/moto.log`; returns once it
    /// answers HTTP.
    pub async fn start(run_dir: &Path) -> anyhow::Result<Moto> {
        let bin = venv_dir().join("bin/moto_server");
        if !bin.exists() {
            bail!(
                "moto is not installed: {} is missing. Run `bash infra/scripts/install-prerequisites.sh` \
                 from the repository root (it creates the venv with moto[server]; set MAILBRIDGE_VENV \
                 to use another venv)",
                bin.display()
            );
        }
        std::fs::create_dir_all(run_dir)
            .with_context(|| format!("create run folder {}", run_dir.display()))?;
        let mut last_error = None;
        for attempt in 1..=3 {
            match Self::start_once(&bin, run_dir, attempt).await {
                Ok(moto) => return Ok(moto),
                Err(e) => {
                    tracing::warn!(attempt, error = %format!("{e:#}"), "moto start failed");
                    last_error = Some(e);
                }
            }
        }
        Err(last_error.expect("at least one attempt"))
    }

    async fn start_once(bin: &Path, run_dir: &Path, attempt: u32) -> anyhow::Result<Moto> {
        let port = crate::free_port()?;
        let log_path = run_dir.join(if attempt == 1 {
            "moto.log".to_string()
        } else {
            format!("moto-{attempt}.log")
        });
        let log = std::fs::File::create(&log_path)?;
        // moto_server's own entry point, behind the fidelity patches (moto_fidelity.py).
        let python = bin.with_file_name("python");
        let mut command = Command::new(&python);
        command
            .args(["-c", MOTO_FIDELITY])
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let child = crate::spawn_child(command, libc::SIGKILL)
            .with_context(|| format!("spawn {}", bin.display()))?;
        let moto = Moto {
            endpoint_url: format!("http://127.0.0.1:{port}"),
            port,
            log_path,
            child: Mutex::new(Some(child)),
        };
        moto.wait_ready(Duration::from_secs(30)).await?;
        tracing::info!(endpoint = %moto.endpoint_url, "moto ready");
        Ok(moto)
    }

    async fn wait_ready(&self, timeout: Duration) -> anyhow::Result<()> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()?;
        let url = format!("{}/moto-api/", self.endpoint_url);
        let started = Instant::now();
        loop {
            if let Some(status) = self.exit_status() {
                bail!(
                    "moto_server exited ({status}) before it was ready; log {}:\n{}",
                    self.log_path.display(),
                    crate::log_tail(&self.log_path, 20)
                );
            }
            if let Ok(resp) = http.get(&url).send().await
                && resp.status().is_success()
            {
                return Ok(());
            }
            if started.elapsed() > timeout {
                bail!(
                    "moto_server did not answer {url} within {timeout:?}; log {}:\n{}",
                    self.log_path.display(),
                    crate::log_tail(&self.log_path, 20)
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn exit_status(&self) -> Option<std::process::ExitStatus> {
        let mut guard = self.child.lock().expect("moto child lock");
        guard.as_mut().and_then(|c| c.try_wait().ok().flatten())
    }

    /// An AWS SDK config pointing at this moto: endpoint override, region `us-east-1`, static
    /// test credentials. Build clients from it inside the runtime that uses them.
    pub fn sdk_config(&self) -> aws_config::SdkConfig {
        use aws_sdk_sqs::config::{Credentials, Region, SharedCredentialsProvider};
        aws_config::SdkConfig::builder()
            .behavior_version(aws_config::BehaviorVersion::latest())
            .endpoint_url(&self.endpoint_url)
            .region(Region::new(REGION))
            .credentials_provider(SharedCredentialsProvider::new(Credentials::new(
                ACCESS_KEY_ID,
                SECRET_ACCESS_KEY,
                None,
                None,
                "local-stack-static",
            )))
            .build()
    }

    /// Environment variables that point a child process (a Lambda bootstrap, the CLI) at moto
    /// through the standard AWS config chain.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            ("AWS_ENDPOINT_URL".into(), self.endpoint_url.clone()),
            ("AWS_REGION".into(), REGION.into()),
            ("AWS_DEFAULT_REGION".into(), REGION.into()),
            ("AWS_ACCESS_KEY_ID".into(), ACCESS_KEY_ID.into()),
            ("AWS_SECRET_ACCESS_KEY".into(), SECRET_ACCESS_KEY.into()),
            // never read ~/.aws of whoever runs the tests
            ("AWS_CONFIG_FILE".into(), "/dev/null".into()),
            ("AWS_SHARED_CREDENTIALS_FILE".into(), "/dev/null".into()),
            ("AWS_EC2_METADATA_DISABLED".into(), "true".into()),
        ]
    }

    /// Stop the server now (also happens on drop).
    pub fn stop(&self) {
        if let Some(mut child) = self.child.lock().expect("moto child lock").take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Create the state table `name` (partition key `pk` S, on-demand, TTL on `expires_at`) unless
/// it exists.
pub async fn ensure_state_table(
    client: &aws_sdk_dynamodb::Client,
    name: &str,
) -> anyhow::Result<()> {
    let created = client
        .create_table()
        .table_name(name)
        .attribute_definitions(
            AttributeDefinition::builder()
                .attribute_name("pk")
                .attribute_type(ScalarAttributeType::S)
                .build()?,
        )
        .key_schema(
            KeySchemaElement::builder()
                .attribute_name("pk")
                .key_type(KeyType::Hash)
                .build()?,
        )
        .billing_mode(BillingMode::PayPerRequest)
        .send()
        .await;
    match created {
        Ok(_) => {}
        Err(e)
            if e.as_service_error()
                .is_some_and(|s| s.is_resource_in_use_exception()) =>
        {
            return Ok(());
        }
        Err(e) => {
            return Err(anyhow::Error::new(e.into_service_error()))
                .with_context(|| format!("create DynamoDB table {name}"));
        }
    }
    client
        .update_time_to_live()
        .table_name(name)
        .time_to_live_specification(
            TimeToLiveSpecification::builder()
                .enabled(true)
                .attribute_name("expires_at")
                .build()?,
        )
        .send()
        .await
        .map_err(|e| anyhow::Error::new(e.into_service_error()))
        .with_context(|| format!("enable TTL on DynamoDB table {name}"))?;
    Ok(())
}
