//! A throwaway django-helpdesk (PyPI `django-helpdesk`, its REST API on) on 127.0.0.1: the real
//! helpdesk the django-helpdesk ticket sink is tested against.
//!
//! The Django project is `infra/helpdesks/django/` (settings, urls, `seed.py`), run with the
//! Python of the helpdesk venv (`<repo>/.local/venv-helpdesk`, or `$MAILBRIDGE_HELPDESK_VENV`)
//! that `bash infra/scripts/install-prerequisites.sh` creates from
//! `infra/requirements-helpdesk.txt`.
//!
//! Migrating takes seconds, so it happens once per machine: `manage.py migrate` + `seed.py` into
//! a template SQLite file under the runs folder ([`Template`]); each instance copies it into its
//! own folder and starts
//! `manage.py runserver 127.0.0.1:<free port> --noreload` (one process, `PR_SET_PDEATHSIG`), so
//! tests get independent helpdesks in about a second each. The seed (see `seed.py`): staff user
//! `mailbridge` with an API token and a password, non-staff user `customer`, queues `support`
//! (id 1) and `billing` (id 2), and the custom field `mailbridge_key`.
//!
//! [`DjangoHelpdesk`] also carries a small API client for test assertions (what the helpdesk
//! itself shows: tickets, follow-ups, attachment bytes, the mail it sent).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::Value;

/// The Django project, relative to the repository root.
pub const PROJECT_DIR: &str = "infra/helpdesks/django";
/// The staff user the API token belongs to.
pub const STAFF_USER: &str = "mailbridge";
/// A user without staff rights (the API answers 403).
pub const NON_STAFF_USER: &str = "customer";
/// The custom field the seed creates for mailbridge's idempotency key.
pub const KEY_FIELD: &str = "mailbridge_key";
/// The seeded queues: slug and id.
pub const QUEUES: [(&str, u64); 2] = [("support", 1), ("billing", 2)];

/// The venv with django-helpdesk: `$MAILBRIDGE_HELPDESK_VENV`, else `<repo>/.local/venv-helpdesk`
/// of the repository found at run time, else that of the compile-time checkout.
pub fn venv_dir() -> PathBuf {
    if let Some(venv) = std::env::var_os("MAILBRIDGE_HELPDESK_VENV") {
        return PathBuf::from(venv);
    }
    let primary = crate::repo_root().join(".local/venv-helpdesk");
    if primary.join("bin/python").exists() {
        return primary;
    }
    let compiled = crate::compile_time_repo_root().join(".local/venv-helpdesk");
    if compiled.join("bin/python").exists() {
        return compiled;
    }
    primary
}

fn project_dir() -> PathBuf {
    crate::repo_root().join(PROJECT_DIR)
}

/// The migrated and seeded database every instance starts from (made once per process).
#[derive(Clone)]
struct Template {
    db: PathBuf,
    token: String,
    password: String,
}

fn random_hex(bytes: usize) -> String {
    (0..bytes)
        .map(|_| format!("{:02x}", rand::random::<u8>()))
        .collect()
}

/// The environment of every `manage.py` call for the instance in `dir` using database `db`.
fn django_env(command: &mut Command, dir: &Path, db: &Path, secret_key: &str) {
    command
        .current_dir(project_dir())
        .env("DJANGO_SETTINGS_MODULE", "settings")
        .env("MAILBRIDGE_HELPDESK_DB", db)
        .env("MAILBRIDGE_HELPDESK_MEDIA", dir.join("media"))
        .env("MAILBRIDGE_HELPDESK_MAIL_DIR", dir.join("sent-mail"))
        .env("MAILBRIDGE_HELPDESK_SECRET_KEY", secret_key)
        // no __pycache__ in the repository's project folder
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("PYTHONUNBUFFERED", "1");
}

/// The venv's Python, once checked that it imports django-helpdesk.
fn python() -> anyhow::Result<PathBuf> {
    static PYTHON: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    PYTHON
        .get_or_init(|| checked_python().map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(anyhow::Error::msg)
}

fn checked_python() -> anyhow::Result<PathBuf> {
    let python = venv_dir().join("bin/python");
    let installed = python.exists()
        && Command::new(&python)
            .args(["-c", "import helpdesk, rest_framework"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
    if !installed {
        bail!(
            "django-helpdesk is not installed: {} cannot import helpdesk. Run `bash \
             infra/scripts/install-prerequisites.sh` from the repository root (it creates the venv \
             from infra/requirements-helpdesk.txt; set MAILBRIDGE_HELPDESK_VENV to use another venv)",
            python.display()
        );
    }
    Ok(python)
}

fn run_checked(mut command: Command, what: &str) -> anyhow::Result<String> {
    let output = command
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("run {what}"))?;
    if !output.status.success() {
        bail!(
            "{what} failed ({}):\n{}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// The template's tag: a hash of what shapes the database (the pinned packages, the project,
/// the seed), so a change builds a new one.
fn template_tag() -> anyhow::Result<String> {
    use sha2::Digest as _;
    let mut hasher = sha2::Sha256::new();
    let root = crate::repo_root();
    for file in [
        "infra/requirements-helpdesk.txt".to_string(),
        format!("{PROJECT_DIR}/settings.py"),
        format!("{PROJECT_DIR}/seed.py"),
    ] {
        hasher.update(std::fs::read(root.join(&file)).with_context(|| format!("read {file}"))?);
    }
    hasher.update(venv_dir().as_os_str().as_encoded_bytes());
    Ok(hex::encode(&hasher.finalize()[..8]))
}

/// The migrated and seeded database, built on first use and then shared by every process on the
/// machine (cargo nextest runs each test in its own process):
/// `<runs_parent>/django-template-<tag>/{template.sqlite3,secrets.json}`.
fn make_template() -> anyhow::Result<Template> {
    let parent = crate::runs_parent();
    let dir = parent.join(format!("django-template-{}", template_tag()?));
    let read = |dir: &Path| -> anyhow::Result<Template> {
        let secrets: Value = serde_json::from_slice(&std::fs::read(dir.join("secrets.json"))?)?;
        let field = |name: &str| secrets[name].as_str().unwrap_or_default().to_string();
        Ok(Template {
            db: dir.join("template.sqlite3"),
            token: field("token"),
            password: field("password"),
        })
    };
    if dir.join("secrets.json").is_file() {
        return read(&dir);
    }
    let python = python()?;
    std::fs::create_dir_all(&parent)?;
    let building = tempfile::Builder::new()
        .prefix("django-template-building-")
        .tempdir_in(&parent)?;
    let work = building.path();
    for sub in ["media", "sent-mail"] {
        std::fs::create_dir_all(work.join(sub))?;
    }
    let db = work.join("template.sqlite3");
    let secret_key = random_hex(32);
    let started = Instant::now();
    let mut migrate = Command::new(&python);
    migrate.args(["manage.py", "migrate", "--noinput", "-v", "0"]);
    django_env(&mut migrate, work, &db, &secret_key);
    run_checked(migrate, "django-helpdesk `manage.py migrate`")?;
    let token = random_hex(20);
    let password = random_hex(12);
    let mut seed = Command::new(&python);
    seed.arg("seed.py")
        .env("MAILBRIDGE_HELPDESK_TOKEN", &token)
        .env("MAILBRIDGE_HELPDESK_PASSWORD", &password);
    django_env(&mut seed, work, &db, &secret_key);
    let seeded = run_checked(seed, "django-helpdesk seed.py")?;
    std::fs::write(
        work.join("secrets.json"),
        serde_json::to_vec(&serde_json::json!({"token": token, "password": password}))?,
    )?;
    tracing::info!(took = ?started.elapsed(), seeded = seeded.trim(), "django-helpdesk template built");
    let built = building.keep();
    // another process may have finished the same template first: then use theirs
    if std::fs::rename(&built, &dir).is_err() {
        let _ = std::fs::remove_dir_all(&built);
    }
    read(&dir)
}

fn template() -> anyhow::Result<Template> {
    static TEMPLATE: OnceLock<Result<Template, String>> = OnceLock::new();
    TEMPLATE
        .get_or_init(|| make_template().map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(anyhow::Error::msg)
}

/// A running django-helpdesk. Stopped on drop and when this process exits.
pub struct DjangoHelpdesk {
    /// e.g. `http://127.0.0.1:41235`.
    pub base_url: String,
    /// The REST API root, `<base_url>/helpdesk/api/` (what a mailbox's `sink.url` names).
    pub api_url: String,
    /// The port it listens on.
    pub port: u16,
    /// The instance folder: `db.sqlite3`, `media/`, `sent-mail/`, `runserver.log`.
    pub dir: PathBuf,
    /// runserver's output (one line per request).
    pub log_path: PathBuf,
    /// API token of [`STAFF_USER`].
    pub token: String,
    /// Password of [`STAFF_USER`] and [`NON_STAFF_USER`].
    pub password: String,
    secret_key: String,
    http: reqwest::Client,
    child: Mutex<Option<Child>>,
}

impl std::fmt::Debug for DjangoHelpdesk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DjangoHelpdesk")
            .field("api_url", &self.api_url)
            .field("dir", &self.dir)
            .finish()
    }
}

impl DjangoHelpdesk {
    /// Start an instance in `dir` (created) from the process's template database; returns once
    /// its API answers.
    pub async fn start(dir: &Path) -> anyhow::Result<DjangoHelpdesk> {
        let template = tokio::task::spawn_blocking(template)
            .await
            .context("django-helpdesk template task panicked")??;
        std::fs::create_dir_all(dir.join("media"))?;
        std::fs::create_dir_all(dir.join("sent-mail"))?;
        std::fs::copy(&template.db, dir.join("db.sqlite3"))
            .with_context(|| format!("copy the template database into {}", dir.display()))?;
        let mut last_error = None;
        for attempt in 1..=3 {
            let port = crate::free_port()?;
            let base_url = format!("http://127.0.0.1:{port}");
            let helpdesk = DjangoHelpdesk {
                api_url: format!("{base_url}/helpdesk/api/"),
                base_url,
                port,
                dir: dir.to_path_buf(),
                log_path: dir.join("runserver.log"),
                token: template.token.clone(),
                password: template.password.clone(),
                secret_key: random_hex(32),
                http: reqwest::Client::builder()
                    .timeout(Duration::from_secs(30))
                    .build()?,
                child: Mutex::new(None),
            };
            match helpdesk.launch().await {
                Ok(()) => {
                    tracing::info!(api = %helpdesk.api_url, "django-helpdesk ready");
                    return Ok(helpdesk);
                }
                Err(e) => {
                    tracing::warn!(attempt, error = %format!("{e:#}"), "django-helpdesk start failed");
                    helpdesk.stop();
                    last_error = Some(e);
                }
            }
        }
        Err(last_error.expect("at least one attempt"))
    }

    /// Start (again) on this instance's port with its database.
    async fn launch(&self) -> anyhow::Result<()> {
        let python = python()?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)?;
        let mut command = Command::new(&python);
        command
            .args([
                "manage.py",
                "runserver",
                &format!("127.0.0.1:{}", self.port),
                "--noreload",
            ])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        django_env(
            &mut command,
            &self.dir,
            &self.dir.join("db.sqlite3"),
            &self.secret_key,
        );
        let child = crate::spawn_child(command, libc::SIGKILL)
            .with_context(|| format!("spawn {} manage.py runserver", python.display()))?;
        *self.child.lock().expect("django-helpdesk child lock") = Some(child);
        self.wait_ready(Duration::from_secs(60)).await
    }

    async fn wait_ready(&self, timeout: Duration) -> anyhow::Result<()> {
        let url = format!("{}tickets/?page_size=1", self.api_url);
        let started = Instant::now();
        loop {
            if let Some(status) = self.exit_status() {
                bail!(
                    "django-helpdesk runserver exited ({status}) before it was ready; log {}:\n{}",
                    self.log_path.display(),
                    crate::log_tail(&self.log_path, 30)
                );
            }
            if let Ok(resp) = self.get(&url).send().await
                && resp.status().is_success()
            {
                return Ok(());
            }
            if started.elapsed() > timeout {
                bail!(
                    "django-helpdesk did not answer {url} within {timeout:?}; log {}:\n{}",
                    self.log_path.display(),
                    crate::log_tail(&self.log_path, 30)
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn exit_status(&self) -> Option<std::process::ExitStatus> {
        let mut guard = self.child.lock().expect("django-helpdesk child lock");
        guard.as_mut().and_then(|c| c.try_wait().ok().flatten())
    }

    /// Stop the server (the database stays): the helpdesk is down until [`Self::restart`].
    pub fn stop(&self) {
        if let Some(mut child) = self
            .child
            .lock()
            .expect("django-helpdesk child lock")
            .take()
        {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Start it again on the same port with the same database.
    pub async fn restart(&self) -> anyhow::Result<()> {
        self.stop();
        self.launch().await
    }

    /// CPU time (user + system) the runserver process has used so far, for benchmarks.
    pub fn cpu_time(&self) -> Option<Duration> {
        let pid = self
            .child
            .lock()
            .expect("django-helpdesk child lock")
            .as_ref()?
            .id();
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // fields after the command name (which is in parentheses and may contain spaces)
        let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
        let ticks: u64 =
            fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
        // SAFETY: sysconf has no preconditions.
        let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        (per_second > 0).then(|| Duration::from_secs_f64(ticks as f64 / per_second as f64))
    }

    /// The secret JSON of the ticket sink for the staff user's API token.
    pub fn token_secret_json(&self) -> String {
        serde_json::json!({"type": "token", "token": self.token}).to_string()
    }

    /// The secret JSON of the ticket sink for HTTP Basic as `user` with the seeded password.
    pub fn basic_secret_json(&self, user: &str) -> String {
        serde_json::json!({"type": "basic", "username": user, "password": self.password})
            .to_string()
    }

    fn get(&self, url: &str) -> reqwest::RequestBuilder {
        self.http
            .get(url)
            .header("Authorization", format!("Token {}", self.token))
    }

    async fn get_json(&self, url: &str) -> anyhow::Result<Value> {
        let resp = self.get(url).send().await?;
        let status = resp.status();
        let body = resp.text().await?;
        if !status.is_success() {
            bail!("GET {url}: HTTP {status}: {body}");
        }
        Ok(serde_json::from_str(&body)?)
    }

    /// Every ticket, as the API shows it (all pages, oldest first).
    pub async fn tickets(&self) -> anyhow::Result<Vec<Value>> {
        let mut url = Some(format!("{}tickets/?page_size=100", self.api_url));
        let mut tickets = Vec::new();
        while let Some(next) = url {
            let page = self.get_json(&next).await?;
            tickets.extend(page["results"].as_array().cloned().unwrap_or_default());
            url = page["next"].as_str().map(str::to_string);
        }
        Ok(tickets)
    }

    /// One ticket with its follow-ups and their attachments.
    pub async fn ticket(&self, id: u64) -> anyhow::Result<Value> {
        self.get_json(&format!("{}tickets/{id}/", self.api_url))
            .await
    }

    /// Change a ticket (as an agent would through the API), e.g. `{"status": 4}` to close it.
    pub async fn patch_ticket(&self, id: u64, fields: Value) -> anyhow::Result<Value> {
        let url = format!("{}tickets/{id}/", self.api_url);
        let resp = self
            .http
            .patch(&url)
            .header("Authorization", format!("Token {}", self.token))
            .json(&fields)
            .send()
            .await?;
        let status = resp.status();
        let body = resp.text().await?;
        if !status.is_success() {
            bail!("PATCH {url}: HTTP {status}: {body}");
        }
        Ok(serde_json::from_str(&body)?)
    }

    /// The bytes of an attachment, by the `file` URL the API shows.
    pub async fn file_bytes(&self, file_url: &str) -> anyhow::Result<Vec<u8>> {
        let resp = self.get(file_url).send().await?;
        let status = resp.status();
        if !status.is_success() {
            bail!("GET {file_url}: HTTP {status}");
        }
        Ok(resp.bytes().await?.to_vec())
    }

    /// The mail the helpdesk sent (acknowledgements, updates), as written by Django's file
    /// backend: one file per connection, oldest first.
    pub fn sent_mail(&self) -> Vec<String> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(self.dir.join("sent-mail"))
            .map(|entries| entries.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        files.sort();
        files
            .iter()
            .filter_map(|p| std::fs::read_to_string(p).ok())
            .collect()
    }

    /// The API requests runserver logged (e.g. `"POST /helpdesk/api/tickets/ HTTP/1.1" 201`).
    pub fn request_log(&self) -> Vec<String> {
        std::fs::read_to_string(&self.log_path)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("\"") && l.contains("HTTP/1.1"))
            .map(str::to_string)
            .collect()
    }
}

impl Drop for DjangoHelpdesk {
    fn drop(&mut self) {
        self.stop();
    }
}
