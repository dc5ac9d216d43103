//! A throwaway Dovecot instance: generated config, CA and server cert, IMAPS on a free port,
//! oauth2 passdb pointed at the identity stand-in's introspection endpoint.
//!
//! Follows the tested recipe (`local-stack.md` §2): anvil auth penalty off,
//! `auth_failure_delay = 0`, stale `run/` removed before each start, maildirs owned by
//! `nobody:nogroup`, readiness = the `* OK` greeting, leaf certificate with `CA:FALSE`.
//! Several independent instances can run at once (each has its own folder and ports), so
//! fault tests can stop/restart their own instance without touching the shared one.
//!
//! Token check: the `oauth2` passdb POSTs `token=...` to the identity stand-in's introspection
//! endpoint and requires `{"active": true, "email": <login user>}`. Dovecot 2.3.19 sends ONLY the
//! token (it does not expand `%u` in `introspection_url`: the URL is used verbatim and a `%u`
//! in it makes the auth process panic), so the introspection endpoint cannot know which mailbox
//! is being opened. For the logins that need it — a shared mailbox (a delegate logs in as
//! `user=shared@...` with their own token) and an app-only token (granted some mailboxes) — a
//! second `oauth2` passdb runs when the first fails, in its password-grant mode: it POSTs
//! `grant_type=password&username=<login user>&password=<token>` to `<introspection URL>/mailbox`
//! and accepts the login when the answer is active with `email` equal to the login user (a
//! refusal is `400 invalid_grant`: a failed login, not a server fault). Tokens are not parsed
//! by Dovecot: without `local_validation_key_dict` it validates a JWT-shaped token online like
//! any other. (A `checkpassword` passdb did this before; it cannot: Dovecot caps its
//! `user\0password\0` input at 512 bytes, `CHECKPASSWORD_MAX_REQUEST_LEN`, and refuses a
//! JWT-shaped token as "Username+password combination too long".)

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

pub mod graph_store;

/// The Dovecot master binary (Debian `dovecot-core`).
pub const DOVECOT_BIN: &str = "/usr/sbin/dovecot";
/// `doveadm` (Debian `dovecot-core`).
pub const DOVEADM_BIN: &str = "/usr/bin/doveadm";
/// The master user the Graph stand-in logs in as ([`Dovecot::master_login`]).
pub const MASTER_USER: &str = "graph-stand-in";

/// A running Dovecot instance. Stopped on drop and when this process exits.
pub struct Dovecot {
    /// IMAPS port on 127.0.0.1 (certificate for `localhost` and `127.0.0.1`).
    pub imaps_port: u16,
    /// Plain IMAP port on 127.0.0.1 (XOAUTH2 allowed without TLS, loopback only).
    pub imap_port: u16,
    /// PEM of the CA that signed the server certificate (clients trust it explicitly).
    pub ca_pem_path: PathBuf,
    /// The instance folder: `dovecot.conf`, `tls/`, `mail/`, `log/`, `run/`, `state/`.
    pub dir: PathBuf,
    /// The generated `dovecot.conf`.
    pub conf_path: PathBuf,
    /// Dovecot's log file.
    pub log_path: PathBuf,
    /// The introspection URL as written into the config.
    pub introspection_url: String,
    /// The master user's password ([`MASTER_USER`]), random per instance.
    master_password: String,
    child: Mutex<Option<Child>>,
    /// The two ports, leased until the instance is dropped (see [`crate::PortLease`]).
    _port_leases: [crate::PortLease; 2],
}

impl std::fmt::Debug for Dovecot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dovecot")
            .field("imaps_port", &self.imaps_port)
            .field("imap_port", &self.imap_port)
            .field("dir", &self.dir)
            .finish()
    }
}

/// `doveadm mailbox status` of one folder.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MailboxStatus {
    /// Number of messages.
    pub messages: u32,
    /// Messages without `\Seen`.
    pub unseen: u32,
    /// UIDVALIDITY.
    pub uidvalidity: u32,
    /// Next UID to be assigned.
    pub uidnext: u32,
}

/// One message stored in a folder.
#[derive(Clone, Debug)]
pub struct StoredMessage {
    /// IMAP UID.
    pub uid: u32,
    /// Flags, e.g. `\Seen`.
    pub flags: Vec<String>,
    /// The full RFC 5322 message.
    pub raw: Vec<u8>,
}

impl StoredMessage {
    /// True when the message has `\Seen`.
    pub fn is_seen(&self) -> bool {
        self.flags.iter().any(|f| f.eq_ignore_ascii_case("\\Seen"))
    }
}

impl Dovecot {
    /// Start an instance in `dir` (created; its `run/` is wiped) validating tokens at
    /// `introspection_url` (RFC 7662, POST).
    pub async fn start(dir: &Path, introspection_url: &str) -> anyhow::Result<Dovecot> {
        Self::start_with_settings(dir, introspection_url, "").await
    }

    /// Like [`Dovecot::start`], with `settings` (lines of `dovecot.conf`) appended to the
    /// generated config, e.g. an `imap_capability` that leaves out `MOVE`.
    pub async fn start_with_settings(
        dir: &Path,
        introspection_url: &str,
        settings: &str,
    ) -> anyhow::Result<Dovecot> {
        let dir = dir.to_path_buf();
        let introspection_url = introspection_url.to_string();
        let settings = settings.to_string();
        tokio::task::spawn_blocking(move || {
            Self::start_blocking_with_settings(&dir, &introspection_url, &settings)
        })
        .await
        .context("dovecot start task panicked")?
    }

    /// Blocking variant of [`Dovecot::start`].
    pub fn start_blocking(dir: &Path, introspection_url: &str) -> anyhow::Result<Dovecot> {
        Self::start_blocking_with_settings(dir, introspection_url, "")
    }

    /// Blocking variant of [`Dovecot::start_with_settings`].
    pub fn start_blocking_with_settings(
        dir: &Path,
        introspection_url: &str,
        settings: &str,
    ) -> anyhow::Result<Dovecot> {
        for bin in [DOVECOT_BIN, DOVEADM_BIN] {
            if !Path::new(bin).exists() {
                bail!(
                    "Dovecot is not installed ({bin} is missing). Run `bash infra/scripts/install-prerequisites.sh` \
                     from the repository root (it installs the Debian package dovecot-imapd)"
                );
            }
        }
        make_dir_world_traversable(dir)?;
        for sub in ["tls", "log", "state", "mail"] {
            make_dir_world_traversable(&dir.join(sub))?;
        }
        let mail_dir = dir.join("mail");
        chown_to_mail_user(&mail_dir)?;
        let ca_pem_path = write_certificates(&dir.join("tls"))?;
        let conf_path = dir.join("dovecot.conf");
        let log_path = dir.join("log/dovecot.log");
        let master_password = format!("{:032x}", rand::random::<u128>());
        let mut last_error = None;
        for attempt in 1..=3 {
            // leased for the instance's life: a restart finds its ports still its own
            let (imap, imaps) = (crate::lease_port()?, crate::lease_port()?);
            let (imap_port, imaps_port) = (imap.port, imaps.port);
            write_config(
                dir,
                imap_port,
                imaps_port,
                introspection_url,
                settings,
                &master_password,
            )?;
            let dovecot = Dovecot {
                imaps_port,
                imap_port,
                ca_pem_path: ca_pem_path.clone(),
                dir: dir.to_path_buf(),
                conf_path: conf_path.clone(),
                log_path: log_path.clone(),
                introspection_url: introspection_url.to_string(),
                master_password: master_password.clone(),
                child: Mutex::new(None),
                _port_leases: [imap, imaps],
            };
            match dovecot.launch() {
                Ok(()) => {
                    tracing::info!(imaps_port, imap_port, dir = %dir.display(), "dovecot ready");
                    return Ok(dovecot);
                }
                Err(e) => {
                    tracing::warn!(attempt, error = %format!("{e:#}"), "dovecot start failed");
                    dovecot.stop();
                    last_error = Some(e);
                }
            }
        }
        Err(last_error.unwrap_or_else(|| anyhow::anyhow!("no free ports for dovecot")))
    }

    /// Spawn `dovecot -F -c <conf>` and wait for the greeting.
    fn launch(&self) -> anyhow::Result<()> {
        // pitfall 3: stale sockets from an earlier run make auth wait 5 s
        let run = self.dir.join("run");
        if run.exists() {
            std::fs::remove_dir_all(&run).with_context(|| format!("remove {}", run.display()))?;
        }
        let console = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("log/console.log"))?;
        let mut command = Command::new(DOVECOT_BIN);
        command
            .arg("-F")
            .arg("-c")
            .arg(&self.conf_path)
            .stdin(Stdio::null())
            .stdout(console.try_clone()?)
            .stderr(console);
        let child = crate::spawn_child(command, libc::SIGTERM).context("spawn dovecot")?;
        *self.child.lock().expect("dovecot child lock") = Some(child);
        self.wait_for_greeting(Duration::from_secs(20))
    }

    fn wait_for_greeting(&self, timeout: Duration) -> anyhow::Result<()> {
        let started = Instant::now();
        let mut last: String;
        loop {
            if let Some(status) = self.exit_status() {
                bail!(
                    "dovecot exited ({status}) before it was ready; {}:\n{}\n{}",
                    self.log_path.display(),
                    crate::log_tail(&self.dir.join("log/console.log"), 10),
                    crate::log_tail(&self.log_path, 20)
                );
            }
            match greeting(self.imap_port) {
                Ok(line) if line.starts_with("* OK") => return Ok(()),
                Ok(line) => last = line,
                Err(e) => last = e.to_string(),
            }
            if started.elapsed() > timeout {
                bail!(
                    "dovecot sent no `* OK` greeting on port {} within {timeout:?} (last: {last}); {}:\n{}",
                    self.imap_port,
                    self.log_path.display(),
                    crate::log_tail(&self.log_path, 20)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn exit_status(&self) -> Option<std::process::ExitStatus> {
        let mut guard = self.child.lock().expect("dovecot child lock");
        guard.as_mut().and_then(|c| c.try_wait().ok().flatten())
    }

    /// The master process's pid while it runs (its children serve the logins).
    pub fn pid(&self) -> Option<u32> {
        let mut guard = self.child.lock().expect("dovecot child lock");
        let child = guard.as_mut()?;
        matches!(child.try_wait(), Ok(None)).then(|| child.id())
    }

    /// True while the master process runs.
    pub fn is_running(&self) -> bool {
        let mut guard = self.child.lock().expect("dovecot child lock");
        guard
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Stop the instance (SIGTERM to the master, which stops its children; SIGKILL after 5 s).
    /// Mail, config and the port leases stay; [`Dovecot::restart`] brings it back on the same
    /// ports, which nothing else could take meanwhile.
    pub fn stop(&self) {
        let Some(child) = self.child.lock().expect("dovecot child lock").take() else {
            return;
        };
        crate::terminate_child(child);
        // the listeners belong to child processes that exit right after the master
        let deadline = Instant::now() + Duration::from_secs(5);
        while greeting(self.imap_port).is_ok() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stop (if running) and start again with the same ports, config and mail.
    pub fn restart(&self) -> anyhow::Result<()> {
        self.stop();
        let mut last_error = None;
        // the old listeners may take a moment to release the ports
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

    /// One-line description: ports and CA path.
    pub fn describe(&self) -> String {
        format!(
            "imaps://localhost:{} (plain imap {}), CA {}, log {}",
            self.imaps_port,
            self.imap_port,
            self.ca_pem_path.display(),
            self.log_path.display()
        )
    }

    /// The login name and password that open `user`'s mail as the master user, with IMAP
    /// `LOGIN` on the plain port (what the Graph stand-in's mail store does).
    pub fn master_login(&self, user: &str) -> (String, &str) {
        (format!("{user}*{MASTER_USER}"), &self.master_password)
    }

    /// The folder holding `user`'s Maildir (Dovecot lower-cases the user name).
    pub fn home_of(&self, user: &str) -> PathBuf {
        self.dir.join("mail").join(user.to_lowercase())
    }

    /// Run `doveadm -c <conf> <args>` (with `stdin` piped in when given); returns stdout.
    pub fn doveadm(&self, args: &[&str], stdin: Option<&[u8]>) -> anyhow::Result<String> {
        let mut command = Command::new(DOVEADM_BIN);
        command
            .arg("-c")
            .arg(&self.conf_path)
            .args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command.spawn().context("spawn doveadm")?;
        if let Some(input) = stdin {
            let mut pipe = child.stdin.take().expect("piped stdin");
            pipe.write_all(input).context("write to doveadm")?;
        }
        let out = child.wait_with_output().context("wait for doveadm")?;
        if !out.status.success() {
            bail!(
                "doveadm {} failed ({}): {}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Put `raw` into `user`'s `folder` (created if missing) with `doveadm save`.
    pub fn deliver_to(&self, user: &str, folder: &str, raw: &[u8]) -> anyhow::Result<()> {
        if !folder.eq_ignore_ascii_case("INBOX") {
            self.create_folder(user, folder)?;
        }
        self.doveadm(&["save", "-u", user, "-m", folder], Some(raw))
            .with_context(|| format!("deliver a message to {user}/{folder}"))?;
        Ok(())
    }

    /// Put `raw` into `user`'s INBOX as received at `received` (its INTERNALDATE, Graph's
    /// `receivedDateTime`): the way a maildir delivery agent delivers (a file written in
    /// `tmp/`, renamed into `new/`), with the file's modification time, which is what Dovecot
    /// reports as the received date of maildir mail, set first. (`doveadm save` has no date.)
    pub fn deliver_received_at(
        &self,
        user: &str,
        raw: &[u8],
        received: chrono::DateTime<chrono::Utc>,
    ) -> anyhow::Result<()> {
        // the user's Maildir exists once something was saved or the folder listed
        self.mailbox_status(user, "INBOX")?;
        let maildir = self.home_of(user).join("Maildir");
        let name = format!(
            "{}.M{}P{}.mailbridge-test",
            received.timestamp(),
            uuid::Uuid::new_v4().simple(),
            std::process::id()
        );
        let tmp = maildir.join("tmp").join(&name);
        std::fs::write(&tmp, raw).with_context(|| format!("write {}", tmp.display()))?;
        let file = std::fs::File::options().write(true).open(&tmp)?;
        file.set_modified(received.into())
            .with_context(|| format!("set the mtime of {}", tmp.display()))?;
        drop(file);
        let (uid, gid, ..) = mail_user();
        // SAFETY: plain libc call.
        if unsafe { libc::geteuid() } == 0 {
            std::os::unix::fs::chown(&tmp, Some(uid), Some(gid))
                .with_context(|| format!("chown {}", tmp.display()))?;
        }
        let new = maildir.join("new").join(&name);
        std::fs::rename(&tmp, &new).with_context(|| format!("move into {}", new.display()))?;
        Ok(())
    }

    /// Create `folder` for `user` (no error if it exists).
    pub fn create_folder(&self, user: &str, folder: &str) -> anyhow::Result<()> {
        match self.doveadm(&["mailbox", "create", "-u", user, folder], None) {
            Ok(_) => Ok(()),
            Err(e) if format!("{e}").contains("already exists") => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// The names of `user`'s folders (`doveadm mailbox list`).
    pub fn folders(&self, user: &str) -> anyhow::Result<Vec<String>> {
        let out = self.doveadm(&["mailbox", "list", "-u", user], None)?;
        Ok(out
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect())
    }

    /// Add `flags` (e.g. `\Seen`) to message `uid` of `user`'s `folder`, as a mail client would.
    pub fn add_flags(&self, user: &str, folder: &str, uid: u32, flags: &str) -> anyhow::Result<()> {
        let uid = uid.to_string();
        self.doveadm(
            &[
                "flags", "add", "-u", user, flags, "mailbox", folder, "uid", &uid,
            ],
            None,
        )?;
        Ok(())
    }

    /// `doveadm mailbox status` of `user`'s `folder`.
    pub fn mailbox_status(&self, user: &str, folder: &str) -> anyhow::Result<MailboxStatus> {
        let out = self.doveadm(
            &[
                "-f",
                "flow",
                "mailbox",
                "status",
                "-u",
                user,
                "messages unseen uidvalidity uidnext",
                folder,
            ],
            None,
        )?;
        let field = |name: &str| -> anyhow::Result<u32> {
            out.split_whitespace()
                .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
                .with_context(|| format!("no {name} in doveadm mailbox status output: {out}"))?
                .parse()
                .with_context(|| format!("bad {name} in doveadm output: {out}"))
        };
        Ok(MailboxStatus {
            messages: field("messages")?,
            unseen: field("unseen")?,
            uidvalidity: field("uidvalidity")?,
            uidnext: field("uidnext")?,
        })
    }

    /// Change the UIDVALIDITY of `user`'s `folder` (simulates a mailbox rebuilt by the server).
    pub fn set_uidvalidity(
        &self,
        user: &str,
        folder: &str,
        uidvalidity: u32,
    ) -> anyhow::Result<()> {
        self.doveadm(
            &[
                "mailbox",
                "update",
                "-u",
                user,
                "--uid-validity",
                &uidvalidity.to_string(),
                folder,
            ],
            None,
        )?;
        Ok(())
    }

    /// Every message in `user`'s `folder`, in UID order, with flags and full text.
    pub fn list_messages(&self, user: &str, folder: &str) -> anyhow::Result<Vec<StoredMessage>> {
        let listing = self.doveadm(
            &[
                "-f",
                "tab",
                "fetch",
                "-u",
                user,
                "uid flags",
                "mailbox",
                folder,
                "all",
            ],
            None,
        )?;
        let mut messages = Vec::new();
        for line in listing.lines().skip(1) {
            let mut cols = line.splitn(2, '\t');
            let Some(uid) = cols.next().and_then(|u| u.trim().parse::<u32>().ok()) else {
                continue;
            };
            let flags = cols
                .next()
                .unwrap_or("")
                .split_whitespace()
                .map(str::to_string)
                .collect();
            let raw = self.fetch_raw(user, folder, uid)?;
            messages.push(StoredMessage { uid, flags, raw });
        }
        Ok(messages)
    }

    /// The full text of message `uid` in `user`'s `folder` (CRLF line endings, as over IMAP).
    pub fn fetch_raw(&self, user: &str, folder: &str, uid: u32) -> anyhow::Result<Vec<u8>> {
        let mut command = Command::new(DOVEADM_BIN);
        command
            .arg("-c")
            .arg(&self.conf_path)
            .args([
                "-f", "pager", "fetch", "-u", user, "text", "mailbox", folder,
            ])
            .arg("uid")
            .arg(uid.to_string())
            .stdin(Stdio::null());
        let out = command.output().context("run doveadm fetch")?;
        if !out.status.success() {
            bail!(
                "doveadm fetch text of {user}/{folder} uid {uid} failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        // pager format: "text:\n<message>\n\x0c\n"
        let body = out.stdout;
        let body = body.strip_prefix(b"text:\n").unwrap_or(&body).to_vec();
        let mut body = body;
        if body.ends_with(b"\x0c\n") {
            body.truncate(body.len() - 2);
        }
        // maildir stores LF line endings; give CRLF, as an IMAP client sees it
        let mut crlf = Vec::with_capacity(body.len() + body.len() / 40);
        for (i, byte) in body.iter().enumerate() {
            if *byte == b'\n' && (i == 0 || body[i - 1] != b'\r') {
                crlf.push(b'\r');
            }
            crlf.push(*byte);
        }
        Ok(crlf)
    }

    /// Remove every message from `user`'s `folder`.
    pub fn expunge_all(&self, user: &str, folder: &str) -> anyhow::Result<()> {
        self.doveadm(&["expunge", "-u", user, "mailbox", folder, "all"], None)?;
        Ok(())
    }

    /// A rustls client config trusting only this instance's CA (verification on).
    pub fn rustls_client_config(&self) -> anyhow::Result<std::sync::Arc<rustls::ClientConfig>> {
        use rustls::pki_types::{CertificateDer, pem::PemObject};
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(&self.ca_pem_path)
            .with_context(|| format!("read {}", self.ca_pem_path.display()))?
        {
            roots.add(cert?)?;
        }
        let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(std::sync::Arc::new(config))
    }
}

impl crate::MailDrop for Dovecot {
    fn deliver(
        &self,
        recipient: &str,
        raw: Vec<u8>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = anyhow::Result<()>> + Send + 'static>>
    {
        let conf_path = self.conf_path.clone();
        let user = recipient.to_owned();
        Box::pin(async move {
            use tokio::io::AsyncWriteExt as _;
            let mut child = tokio::process::Command::new(DOVEADM_BIN)
                .arg("-c")
                .arg(&conf_path)
                .args(["save", "-u", &user, "-m", "INBOX"])
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .kill_on_drop(true)
                .spawn()
                .context("spawn doveadm save")?;
            let mut stdin = child.stdin.take().expect("piped stdin");
            stdin.write_all(&raw).await.context("write to doveadm")?;
            drop(stdin);
            let out = child.wait_with_output().await.context("wait for doveadm")?;
            if !out.status.success() {
                bail!(
                    "doveadm save -u {user} -m INBOX failed ({}): {}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
            Ok(())
        })
    }
}

impl Drop for Dovecot {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Connect to the plain port and read the first line.
fn greeting(port: u16) -> std::io::Result<String> {
    let stream = TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_millis(500),
    )?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line)?;
    Ok(line)
}

fn make_dir_world_traversable(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))
        .with_context(|| format!("chmod 755 {}", dir.display()))?;
    Ok(())
}

/// uid/gid the mail processes run as: `nobody:nogroup` when root (pitfall 6: uid 0 is refused
/// for mail), else the current user.
fn mail_user() -> (u32, u32, String, String) {
    // SAFETY: plain libc calls without pointers.
    let euid = unsafe { libc::geteuid() };
    if euid == 0 {
        (65534, 65534, "nobody".into(), "nogroup".into())
    } else {
        // SAFETY: as above.
        let egid = unsafe { libc::getegid() };
        let name = std::env::var("USER").unwrap_or_else(|_| euid.to_string());
        (euid, egid, name.clone(), name)
    }
}

/// uid and gid of the system account `name`, if there is one.
fn system_user(name: &str) -> Option<(u32, u32)> {
    let name = std::ffi::CString::new(name).ok()?;
    // SAFETY: getpwnam(3) with a valid C string; the entry is read at once, before any other
    // call could reuse its static buffer.
    let entry = unsafe { libc::getpwnam(name.as_ptr()) };
    if entry.is_null() {
        return None;
    }
    // SAFETY: non-null pointer returned by getpwnam.
    let entry = unsafe { &*entry };
    Some((entry.pw_uid, entry.pw_gid))
}

fn chown_to_mail_user(dir: &Path) -> anyhow::Result<()> {
    let (uid, gid, ..) = mail_user();
    // SAFETY: plain libc call, only as root; the path is a valid C string.
    if unsafe { libc::geteuid() } == 0 {
        std::os::unix::fs::chown(dir, Some(uid), Some(gid))
            .with_context(|| format!("chown {uid}:{gid} {}", dir.display()))?;
    }
    Ok(())
}

/// Generate a CA and a `localhost`/`127.0.0.1` server certificate (CA:FALSE, serverAuth) signed
/// by it, unless present. Returns the CA PEM path.
fn write_certificates(tls: &Path) -> anyhow::Result<PathBuf> {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose, SanType,
    };
    let ca_path = tls.join("ca.crt");
    let cert_path = tls.join("server.crt");
    let key_path = tls.join("server.key");
    if ca_path.exists() && cert_path.exists() && key_path.exists() {
        return Ok(ca_path);
    }
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "mailbridge local-stack test CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_key = KeyPair::generate()?;
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca_params, ca_key);

    let mut leaf = CertificateParams::new(vec!["localhost".to_string()])?;
    leaf.subject_alt_names
        .push(SanType::IpAddress(std::net::IpAddr::from([127, 0, 0, 1])));
    leaf.distinguished_name
        .push(DnType::CommonName, "localhost");
    leaf.is_ca = IsCa::ExplicitNoCa;
    leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let leaf_key = KeyPair::generate()?;
    let leaf_cert = leaf.signed_by(&leaf_key, &issuer)?;

    std::fs::write(&ca_path, ca_cert.pem())?;
    std::fs::write(&cert_path, leaf_cert.pem())?;
    std::fs::write(&key_path, leaf_key.serialize_pem())?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(ca_path)
}

fn write_config(
    dir: &Path,
    imap_port: u16,
    imaps_port: u16,
    introspection_url: &str,
    settings: &str,
    master_password: &str,
) -> anyhow::Result<()> {
    let d = dir.display();
    let (_, _, user, group) = mail_user();
    let debug = if std::env::var_os("MAILBRIDGE_DOVECOT_DEBUG").is_some() {
        "yes"
    } else {
        "no"
    };
    let ssl_dh = if Path::new("/usr/share/dovecot/dh.pem").exists() {
        "ssl_dh = </usr/share/dovecot/dh.pem\n"
    } else {
        ""
    };
    let non_root = if user == "nobody" {
        String::new()
    } else {
        // running unprivileged: every service runs as the current user
        format!(
            "default_internal_user = {user}\ndefault_login_user = {user}\n\
             first_valid_uid = 1\nfirst_valid_gid = 1\n"
        )
    };
    let conf = format!(
        r#"# Throwaway Dovecot instance generated by mailbridge's local stack. Nothing from /etc/dovecot.
instance_name = mailbridge-{imap_port}
base_dir  = {d}/run
state_dir = {d}/state
log_path  = {d}/log/dovecot.log
{non_root}
protocols = imap
listen = 127.0.0.1

ssl = yes
ssl_cert = <{d}/tls/server.crt
ssl_key  = <{d}/tls/server.key
{ssl_dh}ssl_min_protocol = TLSv1.2
disable_plaintext_auth = no

auth_mechanisms = xoauth2 oauthbearer plain
auth_master_user_separator = *
auth_verbose = yes
auth_debug = {debug}
auth_cache_size = 0
auth_failure_delay = 0

# The Graph stand-in reads and changes every user's mail as this master user
# (`LOGIN <user>*{MASTER_USER} <password>`). PLAIN logs in nobody else: the oauth2 passdbs
# take only xoauth2 and oauthbearer.
passdb {{
  driver = passwd-file
  master = yes
  mechanisms = plain
  args = {d}/master-users
}}

passdb {{
  driver = oauth2
  mechanisms = xoauth2 oauthbearer
  args = {d}/dovecot-oauth2.conf.ext
}}
# shared mailboxes and app-only tokens: introspection with the login user (runs only when the
# first oauth2 passdb failed)
passdb {{
  driver = oauth2
  mechanisms = xoauth2 oauthbearer
  args = {d}/dovecot-oauth2-mailbox.conf.ext
}}
userdb {{
  driver = static
  args = uid={user} gid={group} home={d}/mail/%Lu allow_all_users=yes
}}
mail_location = maildir:~/Maildir
# Only Dovecot changes cur/ (deliveries from outside land in new/, which is still scanned): a
# session rescans cur/ only when its mtime changes unexpectedly, not after every other
# session's change. No fsync: a throwaway store that outlives no crash.
maildir_very_dirty_syncs = yes
mail_fsync = never

service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {imap_port}
  }}
  inet_listener imaps {{
    address = 127.0.0.1
    port = {imaps_port}
    ssl = yes
  }}
}}

# no per-IP auth penalty (anvil would delay every login after failures: 2, 4, 8, 15 s)
service anvil {{
  unix_listener anvil-auth-penalty {{
    mode = 0
  }}
}}
{settings}
"#
    );
    std::fs::write(dir.join("dovecot.conf"), conf)?;
    let master_users = dir.join("master-users");
    std::fs::write(
        &master_users,
        format!("{MASTER_USER}:{{PLAIN}}{master_password}\n"),
    )?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&master_users, std::fs::Permissions::from_mode(0o600))?;
    }
    // as root the auth process runs as Dovecot's internal user: the file is its own
    if user == "nobody"
        && let Some((uid, gid)) = system_user("dovecot")
    {
        std::os::unix::fs::chown(&master_users, Some(uid), Some(gid))
            .with_context(|| format!("chown {}", master_users.display()))?;
    }
    let mode = "post";
    let oauth2 = format!(
        "# oauth2 passdb -> identity stand-in (RFC 7662 introspection)\n\
         introspection_mode = {mode}\n\
         introspection_url = {introspection_url}\n\
         username_attribute = email\n\
         active_attribute = active\n\
         active_value = true\n\
         timeout_msecs = 5000\n\
         debug = {debug}\n"
    );
    std::fs::write(dir.join("dovecot-oauth2.conf.ext"), oauth2)?;
    let mailbox_check = format!(
        "# oauth2 passdb in password-grant mode -> identity stand-in: token + login user\n\
         use_grant_password = yes\n\
         grant_url = {introspection_url}/mailbox\n\
         client_id = dovecot\n\
         username_attribute = email\n\
         active_attribute = active\n\
         active_value = true\n\
         timeout_msecs = 5000\n\
         debug = {debug}\n"
    );
    std::fs::write(dir.join("dovecot-oauth2-mailbox.conf.ext"), mailbox_check)?;
    Ok(())
}
