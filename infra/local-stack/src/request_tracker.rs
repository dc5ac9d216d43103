//! A throwaway Request Tracker 5 (Debian `request-tracker5`) on 127.0.0.1: its own folder, SQLite
//! file and port, served by `rt-server` with Starlet, REST 2.0 at `<base_url>/REST/2.0`.
//!
//! Follows the tested recipe (`local-stack.md` §7): RT reads the instance's `RT_SiteConfig.pm`
//! from `$RT_SITE_CONFIG` and an empty `$RT_SITE_CONFIG_DIR` keeps the global (debconf) settings
//! out, so nothing in `/etc` or `/var` is used or written.
//!
//! Creating and seeding a database takes RT several seconds (`rt-setup-database-5` and one Perl
//! start per seeding run), so it happens once per machine and RT version: the initialised, seeded
//! SQLite file is kept as a template under [`crate::runs_parent`] (`rt-template-<hash>/`) and each
//! instance starts from a copy (~0.5 MB). The template holds:
//! - the `root` user (password in [`RequestTracker::root_password`]);
//! - the account mailbridge uses, [`ADAPTER_USER`], with a password and an auth token, and
//!   system-wide exactly the rights the RT ticket sink needs ([`ADAPTER_RIGHTS`]);
//! - the ticket custom field [`KEY_FIELD`] (free-form, many values) applied to every queue: where
//!   the RT ticket sink keeps the idempotency keys of the mails it delivered.
//!
//! Queues and users for a test are created through REST 2.0 as root ([`RtClient`]); rights,
//! tokens and custom fields through RT's Perl API ([`RequestTracker::seed`]). Outgoing mail goes to
//! `mbox` files in the instance's var folder unless [`RtOptions::site_config_extra`] says otherwise
//! (e.g. `Set($MailCommand, 'sendmailpipe'); Set($SendmailPath, '/path/to/mailbridge-sendmail');`).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use base64::Engine as _;
use serde_json::{Value, json};
use sha2::Digest as _;

/// `rt-setup-database-5` (Debian `request-tracker5`).
pub const SETUP_DATABASE_BIN: &str = "/usr/sbin/rt-setup-database-5";
/// `rt-server` (Debian `request-tracker5`; Starlet from `rt5-standalone`).
pub const SERVER_BIN: &str = "/usr/share/request-tracker5/libexec/rt-server";
/// RT's Perl libraries.
pub const LIB_DIR: &str = "/usr/share/request-tracker5/lib";
/// The account the RT ticket sink logs in as (seeded in every instance).
pub const ADAPTER_USER: &str = "mailbridge";
/// The rights [`ADAPTER_USER`] holds system-wide: what the RT ticket sink needs (see the RT
/// section of `docs/helpdesks.md`).
pub const ADAPTER_RIGHTS: &[&str] = &[
    "SeeQueue",
    "CreateTicket",
    "ShowTicket",
    "ReplyToTicket",
    "CommentOnTicket",
    "SeeCustomField",
    "ModifyCustomField",
];
/// The ticket custom field holding the idempotency keys (applied to every queue).
pub const KEY_FIELD: &str = "Mailbridge-Key";

const SEED_SCRIPT: &str = include_str!("request_tracker_seed.pl");

/// Start options.
#[derive(Clone, Debug)]
pub struct RtOptions {
    /// `$rtname`: the tag in RT's subjects, `[<rtname> #12]`.
    pub rtname: String,
    /// `$Organization` (RT's Message-IDs and `References`).
    pub organization: String,
    /// `$CorrespondAddress` (also the From of RT's mail).
    pub correspond_address: String,
    /// Starlet workers (`--max-workers`).
    pub workers: u32,
    /// Perl appended to the generated `RT_SiteConfig.pm` (later `Set` calls win), e.g.
    /// `Set($MailCommand, 'sendmailpipe'); Set($SendmailPath, '/path/sendmail');`.
    pub site_config_extra: String,
}

impl Default for RtOptions {
    fn default() -> Self {
        RtOptions {
            rtname: "mailbridge.test".into(),
            organization: "mailbridge.test".into(),
            correspond_address: "rt@mailbridge.test".into(),
            workers: 2,
            site_config_extra: String::new(),
        }
    }
}

/// Writes `dir/sendmail`, the program RT's `$SendmailPath` names (docs/outbound.md): it runs
/// `cli sendmail` with `env` exported (a web server's children get none of the operator's
/// environment) and appends its stderr to `dir/sendmail.log`.
pub fn write_sendmail_wrapper(
    dir: &Path,
    cli: &Path,
    env: &[(String, String)],
) -> std::io::Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt as _;
    let quote = |s: &str| format!("'{}'", s.replace('\'', r"'\''"));
    let mut script = String::from("#!/bin/sh\n");
    for (name, value) in env {
        script.push_str(&format!("export {name}={}\n", quote(value)));
    }
    script.push_str(&format!(
        "exec {} sendmail \"$@\" 2>>{}\n",
        quote(&cli.display().to_string()),
        quote(&dir.join("sendmail.log").display().to_string())
    ));
    let path = dir.join("sendmail");
    std::fs::write(&path, script)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
    Ok(path)
}

/// What the template's seeding created (kept next to its SQLite file).
#[derive(Clone, serde::Serialize, serde::Deserialize)]
struct TemplateSecrets {
    root_password: String,
    adapter_password: String,
    adapter_token: String,
}

/// A running RT instance. Stopped on drop and when this process exits.
pub struct RequestTracker {
    /// e.g. `http://127.0.0.1:41235` (RT's `$WebBaseURL`; `$WebPath` is empty).
    pub base_url: String,
    /// The port rt-server listens on.
    pub port: u16,
    /// The instance folder: `RT_SiteConfig.pm`, `rt.db`, `var/` (mbox files), `rt.log`.
    pub dir: PathBuf,
    /// rt-server's output (RT logs warnings and errors to STDERR).
    pub log_path: PathBuf,
    /// The options it was started with.
    pub options: RtOptions,
    /// Password of RT's `root` (basic auth).
    pub root_password: String,
    /// Password of [`ADAPTER_USER`].
    pub adapter_password: String,
    /// Auth token of [`ADAPTER_USER`] (`Authorization: token <this>`).
    pub adapter_token: String,
    child: Mutex<Option<Child>>,
}

impl std::fmt::Debug for RequestTracker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestTracker")
            .field("base_url", &self.base_url)
            .field("dir", &self.dir)
            .finish()
    }
}

/// The process-wide instance (default options, folder `request-tracker/` under the shared local
/// stack's run folder), started on first use: only tests that need RT pay for it.
pub fn shared() -> &'static RequestTracker {
    static SHARED: OnceLock<Result<RequestTracker, String>> = OnceLock::new();
    let started = SHARED.get_or_init(|| {
        let dir = crate::LocalStack::shared()
            .run_dir()
            .join("request-tracker");
        RequestTracker::start_blocking(&dir, RtOptions::default()).map_err(|e| format!("{e:#}"))
    });
    match started {
        Ok(rt) => rt,
        Err(e) => panic!("local stack: Request Tracker is not available: {e}"),
    }
}

/// Fails with what to install when RT's Debian packages are missing.
pub fn check_installed() -> anyhow::Result<()> {
    for bin in [SETUP_DATABASE_BIN, SERVER_BIN] {
        if !Path::new(bin).exists() {
            bail!(
                "Request Tracker 5 is not installed ({bin} is missing). Run `bash infra/scripts/install-prerequisites.sh` \
                 from the repository root (it installs the Debian packages request-tracker5, rt5-db-sqlite, rt5-standalone)"
            );
        }
    }
    Ok(())
}

impl RequestTracker {
    /// Start an instance in `dir` (created; an earlier database there is replaced).
    pub async fn start(dir: &Path, options: RtOptions) -> anyhow::Result<RequestTracker> {
        let dir = dir.to_path_buf();
        tokio::task::spawn_blocking(move || Self::start_blocking(&dir, options))
            .await
            .context("request tracker start task panicked")?
    }

    /// Blocking variant of [`RequestTracker::start`].
    pub fn start_blocking(dir: &Path, options: RtOptions) -> anyhow::Result<RequestTracker> {
        check_installed()?;
        let template = ensure_template()?;
        let secrets: TemplateSecrets = serde_json::from_slice(
            &std::fs::read(template.join("secrets.json")).context("read the RT template")?,
        )?;
        for sub in ["var", "mason", "sessions", "site-config.d"] {
            std::fs::create_dir_all(dir.join(sub))
                .with_context(|| format!("create {}", dir.join(sub).display()))?;
        }
        std::fs::copy(template.join("rt.db"), dir.join("rt.db"))
            .context("copy the RT template database")?;
        let mut last_error = None;
        for attempt in 1..=3 {
            let port = crate::free_port()?;
            std::fs::write(
                dir.join("RT_SiteConfig.pm"),
                site_config(dir, port, &options),
            )?;
            let rt = RequestTracker {
                base_url: format!("http://127.0.0.1:{port}"),
                port,
                dir: dir.to_path_buf(),
                log_path: dir.join("rt.log"),
                options: options.clone(),
                root_password: secrets.root_password.clone(),
                adapter_password: secrets.adapter_password.clone(),
                adapter_token: secrets.adapter_token.clone(),
                child: Mutex::new(None),
            };
            match rt.launch() {
                Ok(()) => {
                    tracing::info!(base_url = %rt.base_url, dir = %dir.display(), "request tracker ready");
                    return Ok(rt);
                }
                Err(e) => {
                    tracing::warn!(attempt, error = %format!("{e:#}"), "request tracker start failed");
                    rt.stop();
                    last_error = Some(e);
                }
            }
        }
        Err(last_error.expect("at least one attempt"))
    }

    fn launch(&self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)?;
        let mut command = Command::new(SERVER_BIN);
        command
            .args(["--server", "Starlet", "--host", "127.0.0.1", "--port"])
            .arg(self.port.to_string())
            .arg("--max-workers")
            .arg(self.options.workers.to_string())
            .envs(instance_env(&self.dir))
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let child = crate::spawn_child(command, libc::SIGTERM).context("spawn rt-server")?;
        *self.child.lock().expect("rt child lock") = Some(child);
        self.wait_ready(Duration::from_secs(60))
    }

    fn wait_ready(&self, timeout: Duration) -> anyhow::Result<()> {
        let started = Instant::now();
        let url = format!("{}/REST/2.0/rt", self.base_url);
        let auth = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD
                .encode(format!("root:{}", self.root_password))
        );
        let mut last: String;
        loop {
            if let Some(status) = self.exit_status() {
                bail!(
                    "rt-server exited ({status}) before it was ready; {}:\n{}",
                    self.log_path.display(),
                    crate::log_tail(&self.log_path, 20)
                );
            }
            match http_get_status(self.port, "/REST/2.0/rt", &auth) {
                Ok(200) => return Ok(()),
                Ok(status) => last = format!("HTTP {status}"),
                Err(e) => last = e.to_string(),
            }
            if started.elapsed() > timeout {
                bail!(
                    "rt-server did not answer {url} within {timeout:?} (last: {last}); {}:\n{}",
                    self.log_path.display(),
                    crate::log_tail(&self.log_path, 20)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn exit_status(&self) -> Option<std::process::ExitStatus> {
        let mut guard = self.child.lock().expect("rt child lock");
        guard.as_mut().and_then(|c| c.try_wait().ok().flatten())
    }

    /// True while rt-server runs.
    pub fn is_running(&self) -> bool {
        let mut guard = self.child.lock().expect("rt child lock");
        guard
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Stop rt-server (SIGTERM to the master, which stops its workers; SIGKILL after 5 s). The
    /// database stays; [`RequestTracker::restart`] serves it again on the same port.
    pub fn stop(&self) {
        let Some(child) = self.child.lock().expect("rt child lock").take() else {
            return;
        };
        crate::terminate_child(child);
        // workers may hold the listening socket a moment longer
        let deadline = Instant::now() + Duration::from_secs(5);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok()
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stop (if running) and serve the same database again on the same port.
    pub fn restart(&self) -> anyhow::Result<()> {
        self.stop();
        let mut last_error = None;
        for _ in 0..20 {
            match self.launch() {
                Ok(()) => return Ok(()),
                Err(e) => {
                    self.stop();
                    last_error = Some(e);
                    std::thread::sleep(Duration::from_millis(250));
                }
            }
        }
        Err(last_error.expect("at least one attempt"))
    }

    /// `<base_url>/REST/2.0`.
    pub fn rest_url(&self) -> String {
        format!("{}/REST/2.0", self.base_url)
    }

    /// A REST 2.0 client logged in as `root` (basic auth): for seeding and assertions.
    pub fn root_client(&self) -> RtClient {
        RtClient::new(
            &self.rest_url(),
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD
                    .encode(format!("root:{}", self.root_password))
            ),
        )
    }

    /// The secret JSON the RT ticket sink reads for [`ADAPTER_USER`]'s token.
    pub fn adapter_token_secret(&self) -> String {
        json!({"type": "token", "token": self.adapter_token}).to_string()
    }

    /// The secret JSON for [`ADAPTER_USER`] with basic auth.
    pub fn adapter_basic_secret(&self) -> String {
        json!({"type": "basic", "username": ADAPTER_USER, "password": self.adapter_password})
            .to_string()
    }

    /// Run seeding operations through RT's Perl API (see `request_tracker_seed.pl` for the
    /// operations); returns one result per operation. Blocking, about a second (RT's start-up).
    pub fn seed(&self, ops: &Value) -> anyhow::Result<Vec<Value>> {
        run_seed(&self.dir, ops)
    }

    /// A new auth token for `user` (Perl API; blocking).
    pub fn create_token(&self, user: &str) -> anyhow::Result<String> {
        let out = self.seed(&json!([{"op": "token", "user": user}]))?;
        out.first()
            .and_then(|r| r["token"].as_str())
            .map(str::to_string)
            .context("the seed script returned no token")
    }

    /// Outgoing mail RT wrote to its `mbox` files (with the default `$MailCommand`), in order.
    pub fn outgoing_mbox(&self) -> String {
        let mut files: Vec<PathBuf> = std::fs::read_dir(self.dir.join("var"))
            .map(|entries| {
                entries
                    .flatten()
                    .map(|e| e.path())
                    .filter(|p| p.extension().is_some_and(|x| x == "mbox"))
                    .collect()
            })
            .unwrap_or_default();
        files.sort();
        files
            .iter()
            .map(|p| std::fs::read_to_string(p).unwrap_or_default())
            .collect()
    }
}

impl Drop for RequestTracker {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The environment that points RT's tools at the instance in `dir`.
fn instance_env(dir: &Path) -> Vec<(String, String)> {
    vec![
        (
            "RT_SITE_CONFIG".into(),
            dir.join("RT_SiteConfig.pm").display().to_string(),
        ),
        (
            "RT_SITE_CONFIG_DIR".into(),
            dir.join("site-config.d").display().to_string(),
        ),
    ]
}

/// A Perl single-quoted string literal.
fn perl_quote(s: &str) -> String {
    format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'"))
}

fn site_config(dir: &Path, port: u16, options: &RtOptions) -> String {
    let path = |sub: &str| perl_quote(&dir.join(sub).display().to_string());
    format!(
        "# generated by the mailbridge local stack: a throwaway instance\n\
         Set($rtname, {rtname});\n\
         Set($Organization, {organization});\n\
         Set($CorrespondAddress, {correspond});\n\
         Set($CommentAddress, {correspond});\n\
         Set($OwnerEmail, {correspond});\n\
         Set($WebDomain, '127.0.0.1');\n\
         Set($WebPort, {port});\n\
         Set($WebPath, '');\n\
         Set($WebBaseURL, 'http://127.0.0.1:{port}');\n\
         Set($DatabaseType, 'SQLite');\n\
         Set($DatabaseName, {db});\n\
         Set($LogToSTDERR, 'warning');\n\
         Set($LogToFile, undef);\n\
         Set($LogToSyslog, undef);\n\
         Set($Timezone, 'UTC');\n\
         Set($MailCommand, 'mbox');\n\
         $RT::VarPath = {var};\n\
         $RT::MasonDataDir = {mason};\n\
         $RT::MasonSessionDir = {sessions};\n\
         {extra}\n\
         1;\n",
        rtname = perl_quote(&options.rtname),
        organization = perl_quote(&options.organization),
        correspond = perl_quote(&options.correspond_address),
        db = path("rt.db"),
        var = path("var"),
        mason = path("mason"),
        sessions = path("sessions"),
        extra = options.site_config_extra,
    )
}

fn run_seed(dir: &Path, ops: &Value) -> anyhow::Result<Vec<Value>> {
    use std::io::Write as _;
    let script = dir.join("seed.pl");
    std::fs::write(&script, SEED_SCRIPT)?;
    let mut child = Command::new("perl")
        .arg(&script)
        .envs(instance_env(dir))
        .current_dir(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("spawn perl for RT seeding")?;
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(ops.to_string().as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "RT seeding failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().last().unwrap_or("");
    serde_json::from_str(line).with_context(|| format!("RT seeding printed no JSON: {stdout}"))
}

/// The seeded template database (built on first use, then shared by every instance on the
/// machine): `<runs_parent>/rt-template-<hash of RT version and seed>/{rt.db,secrets.json}`.
fn ensure_template() -> anyhow::Result<PathBuf> {
    let version = std::fs::read_to_string("/usr/share/request-tracker5/lib/RT.pm")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.contains("$VERSION"))
                .map(str::to_string)
        })
        .unwrap_or_default();
    let mut hasher = sha2::Sha256::new();
    hasher.update(version.as_bytes());
    hasher.update(SEED_SCRIPT.as_bytes());
    hasher.update(ADAPTER_RIGHTS.join(",").as_bytes());
    hasher.update(KEY_FIELD.as_bytes());
    let tag = hex::encode(&hasher.finalize()[..8]);
    let parent = crate::runs_parent();
    let template = parent.join(format!("rt-template-{tag}"));
    if template.join("secrets.json").is_file() {
        return Ok(template);
    }
    std::fs::create_dir_all(&parent)?;
    let building = tempfile::Builder::new()
        .prefix("rt-template-building-")
        .tempdir_in(&parent)?;
    let dir = building.path();
    for sub in ["var", "mason", "sessions", "site-config.d"] {
        std::fs::create_dir_all(dir.join(sub))?;
    }
    std::fs::write(
        dir.join("RT_SiteConfig.pm"),
        site_config(dir, 9, &RtOptions::default()),
    )?;
    let secrets = TemplateSecrets {
        root_password: random_password(),
        adapter_password: random_password(),
        adapter_token: String::new(),
    };
    std::fs::write(dir.join("root-password"), &secrets.root_password)?;
    let started = Instant::now();
    let out = Command::new(SETUP_DATABASE_BIN)
        .args(["--action", "init", "--root-password-file"])
        .arg(dir.join("root-password"))
        .envs(instance_env(dir))
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .context("run rt-setup-database-5")?;
    if !out.status.success() {
        bail!(
            "rt-setup-database-5 --action init failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let seeded = run_seed(
        dir,
        &json!([
            {"op": "user", "name": ADAPTER_USER, "email": "mailbridge@mailbridge.test",
             "password": secrets.adapter_password},
            {"op": "grant", "user": ADAPTER_USER, "rights": ADAPTER_RIGHTS},
            {"op": "custom_field", "name": KEY_FIELD, "max_values": 0},
            {"op": "token", "user": ADAPTER_USER},
        ]),
    )?;
    let secrets = TemplateSecrets {
        adapter_token: seeded[3]["token"]
            .as_str()
            .context("the seed script returned no token")?
            .to_string(),
        ..secrets
    };
    std::fs::write(dir.join("secrets.json"), serde_json::to_vec(&secrets)?)?;
    tracing::info!(
        seconds = started.elapsed().as_secs_f64(),
        "request tracker template database built"
    );
    let built = building.keep();
    // another process may have finished the same template first: then use theirs
    if std::fs::rename(&built, &template).is_err() {
        let _ = std::fs::remove_dir_all(&built);
        if !template.join("secrets.json").is_file() {
            bail!("could not move the RT template into {}", template.display());
        }
    }
    Ok(template)
}

fn random_password() -> String {
    use rand::Rng as _;
    let bytes: [u8; 12] = rand::rng().random();
    hex::encode(bytes)
}

/// GET `path` on 127.0.0.1:`port` with an Authorization header over plain HTTP/1.0; returns the
/// status (blocking; readiness polls run outside any runtime).
fn http_get_status(port: u16, path: &str, authorization: &str) -> std::io::Result<u16> {
    use std::io::{Read as _, Write as _};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        stream,
        "GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\nAuthorization: {authorization}\r\n\r\n"
    )?;
    let mut head = [0u8; 64];
    let n = stream.read(&mut head)?;
    let line = String::from_utf8_lossy(&head[..n]);
    line.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("no HTTP status line: {line:?}")))
}

/// One attachment as RT stores it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RtAttachment {
    /// RT's attachment id.
    pub id: String,
    /// The transaction it belongs to.
    pub transaction: String,
    /// `Filename` (empty for body parts).
    pub filename: String,
    /// `ContentType`.
    pub content_type: String,
    /// The decoded bytes.
    pub content: Vec<u8>,
}

/// One transaction of a ticket's history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RtTransaction {
    /// Transaction id.
    pub id: String,
    /// `Create`, `Correspond`, `Comment`, `CustomField`, ...
    pub kind: String,
}

/// A small REST 2.0 client for seeding and test assertions (not the product's adapter).
#[derive(Clone)]
pub struct RtClient {
    http: reqwest::Client,
    rest_url: String,
    authorization: String,
}

impl RtClient {
    /// A client for `rest_url` (`.../REST/2.0`) sending `authorization` verbatim.
    pub fn new(rest_url: &str, authorization: String) -> RtClient {
        RtClient {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .expect("build an HTTP client"),
            rest_url: rest_url.trim_end_matches('/').to_string(),
            authorization,
        }
    }

    /// GET `path` (relative to REST 2.0); the JSON body of a 2xx answer.
    pub async fn get(&self, path: &str) -> anyhow::Result<Value> {
        let (status, body) = self.get_status(path).await?;
        if !(200..300).contains(&status) {
            bail!("GET {path}: HTTP {status}: {body}");
        }
        Ok(body)
    }

    /// GET `path`: status and JSON body (`null` when not JSON).
    pub async fn get_status(&self, path: &str) -> anyhow::Result<(u16, Value)> {
        let resp = self
            .http
            .get(format!(
                "{}/{}",
                self.rest_url,
                path.trim_start_matches('/')
            ))
            .header("Authorization", &self.authorization)
            .send()
            .await
            .with_context(|| format!("GET {path}"))?;
        let status = resp.status().as_u16();
        let text = resp.text().await?;
        Ok((status, serde_json::from_str(&text).unwrap_or(Value::Null)))
    }

    /// POST `body` as JSON to `path`; the JSON body of a 2xx answer.
    pub async fn post(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        let resp = self
            .http
            .post(format!(
                "{}/{}",
                self.rest_url,
                path.trim_start_matches('/')
            ))
            .header("Authorization", &self.authorization)
            .json(body)
            .send()
            .await
            .with_context(|| format!("POST {path}"))?;
        let status = resp.status().as_u16();
        let text = resp.text().await?;
        if !(200..300).contains(&status) {
            bail!("POST {path}: HTTP {status}: {text}");
        }
        Ok(serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// Create a queue (as root); returns its id.
    pub async fn create_queue(&self, name: &str) -> anyhow::Result<String> {
        let created = self.post("queue", &json!({"Name": name})).await?;
        id_of(&created)
    }

    /// Disable a queue (RT's way of deleting one).
    pub async fn disable_queue(&self, name: &str) -> anyhow::Result<()> {
        let resp = self
            .http
            .put(format!("{}/queue/{name}", self.rest_url))
            .header("Authorization", &self.authorization)
            .json(&json!({"Disabled": 1}))
            .send()
            .await?;
        if !resp.status().is_success() {
            bail!("disable queue {name}: HTTP {}", resp.status());
        }
        Ok(())
    }

    /// The ticket record (`Queue`, `Requestor`, `Subject`, `CustomFields`, ...).
    pub async fn ticket(&self, id: &str) -> anyhow::Result<Value> {
        self.get(&format!("ticket/{id}")).await
    }

    /// Ids of the tickets matching the TicketSQL `query`, ascending.
    pub async fn search(&self, query: &str) -> anyhow::Result<Vec<String>> {
        let mut ids = Vec::new();
        let mut page = 1;
        loop {
            let url = format!(
                "tickets?query={}&orderby=id&order=ASC&per_page=100&page={page}",
                url::form_urlencoded::byte_serialize(query.as_bytes()).collect::<String>()
            );
            let found = self.get(&url).await?;
            let items = found["items"].as_array().cloned().unwrap_or_default();
            for item in &items {
                ids.push(id_of(item)?);
            }
            if items.len() < 100 {
                return Ok(ids);
            }
            page += 1;
        }
    }

    /// Ids of every ticket in `queue`.
    pub async fn tickets_in_queue(&self, queue: &str) -> anyhow::Result<Vec<String>> {
        self.search(&format!("Queue = '{queue}'")).await
    }

    /// The ticket's transactions, oldest first.
    pub async fn history(&self, id: &str) -> anyhow::Result<Vec<RtTransaction>> {
        let found = self
            .get(&format!("ticket/{id}/history?fields=Type&per_page=100"))
            .await?;
        Ok(found["items"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .map(|t| RtTransaction {
                id: t["id"].as_str().unwrap_or_default().to_string(),
                kind: t["Type"].as_str().unwrap_or_default().to_string(),
            })
            .collect())
    }

    /// Every attachment (MIME part) of the ticket with its bytes, oldest first. (Each is read
    /// from `/attachment/{id}`: the collection's `Content` field of RT 5.0.3 re-encodes the
    /// bytes of binary parts stored as quoted-printable as UTF-8.)
    pub async fn attachments(&self, id: &str) -> anyhow::Result<Vec<RtAttachment>> {
        let found = self
            .get(&format!("ticket/{id}/attachments?per_page=100"))
            .await?;
        let mut out = Vec::new();
        for item in found["items"].as_array().cloned().unwrap_or_default() {
            let attachment_id = id_of(&item)?;
            let full = self.get(&format!("attachment/{attachment_id}")).await?;
            let content = full["Content"].as_str().unwrap_or_default();
            let content = base64::engine::general_purpose::STANDARD
                .decode(content.replace(['\n', '\r'], ""))
                .with_context(|| format!("attachment {attachment_id}: Content is not base64"))?;
            out.push(RtAttachment {
                id: attachment_id,
                transaction: full["TransactionId"]["id"]
                    .as_str()
                    .map(str::to_string)
                    .unwrap_or_default(),
                filename: full["Filename"].as_str().unwrap_or_default().to_string(),
                content_type: full["ContentType"].as_str().unwrap_or_default().to_string(),
                content,
            });
        }
        Ok(out)
    }
}

fn id_of(record: &Value) -> anyhow::Result<String> {
    match &record["id"] {
        Value::String(s) => Ok(s.clone()),
        Value::Number(n) => Ok(n.to_string()),
        other => bail!("no id in {record} ({other})"),
    }
}
