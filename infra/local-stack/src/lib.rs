//! The local stack: real servers on 127.0.0.1 for tests and the demo.
//!
//! - [`moto`]: moto in server mode (SQS, Secrets Manager, DynamoDB), a Python subprocess.
//! - [`aws_fault_proxy`]: a proxy in front of moto that throttles calls on one secret.
//! - [`dovecot`]: a throwaway Dovecot (IMAPS, oauth2 passdb) from a generated config.
//! - [`django_helpdesk`]: a throwaway django-helpdesk (Django on SQLite, REST API on), started
//!   per test from a template database migrated once per process.
//! - [`http_fault_proxy`]: an HTTP proxy that drops the answer to a chosen call (or fakes a 5xx).
//! - [`identity`]: the Microsoft identity platform stand-in (token, devicecode, introspection).
//! - [`graph`]: the Microsoft Graph `sendMail` stand-in ([`graph_control`]: its HTTP controls).
//! - [`ticket_api`]: the helpdesk ticket API stand-in ([`ticket_api_control`]: its HTTP controls).
//! - [`request_tracker`]: a throwaway Request Tracker 5 (the real helpdesk), started on first use.
//! - [`runtime_api`]: a Lambda Runtime API emulator to run the real `bootstrap` binaries.
//! - [`tcp_fault_proxy`]: a TCP proxy that cuts a (TLS) connection at a chosen point.
//! - [`tls_endpoint`]: an HTTPS endpoint with an untrusted or wrongly named certificate.
//! - [`aws_calls`]: a counting proxy in front of moto (AWS calls per operation, for benchmarks).
//!
//! [`LocalStack::shared`] starts everything once per process (per test binary) on a dedicated
//! background thread with its own tokio runtime, so the servers outlive each `#[tokio::test]`
//! runtime. Child processes (moto, Dovecot, bootstraps) are spawned through [`spawn_child`], from
//! one long-lived thread, with `PR_SET_PDEATHSIG`: they die with the test process even though
//! statics are never dropped.

pub mod aws_calls;
pub mod aws_fault_proxy;
pub mod django_helpdesk;
pub mod dovecot;
pub mod function_url;
pub mod graph;
pub mod graph_control;
pub mod http_fault_proxy;
pub mod identity;
pub mod moto;
pub mod request_tracker;
pub mod runtime_api;
pub mod tcp_fault_proxy;
pub mod ticket_api;
pub mod ticket_api_control;
pub mod tls_endpoint;
mod upstream;

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock, mpsc};

/// Somewhere a stand-in can put a message for a mailbox (the Graph stand-in delivers the mail it
/// "sends" into Dovecot through this, so a test can read it back over IMAP).
pub trait MailDrop: Send + Sync {
    /// Deliver the raw RFC 5322 message `raw` into `recipient`'s INBOX. Dovecot's implementation
    /// awaits `doveadm save` as a child process (no thread of the blocking pool waits on it).
    fn deliver(
        &self,
        recipient: &str,
        raw: Vec<u8>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = anyhow::Result<()>> + Send + 'static>>;
}

/// The whole local stack. Get the process-wide one with [`LocalStack::shared`].
///
/// Each component is reached through an accessor that panics with the component's start error,
/// so one broken component fails only the tests that use it.
pub struct LocalStack {
    run_dir: PathBuf,
    runtime: tokio::runtime::Handle,
    moto: Result<moto::Moto, String>,
    identity: Result<identity::IdentityStandIn, String>,
    dovecot: Result<Arc<dovecot::Dovecot>, String>,
    graph: Result<graph::GraphStandIn, String>,
    tickets: Result<ticket_api::TicketApiStandIn, String>,
}

static SHARED: OnceLock<LocalStack> = OnceLock::new();

impl LocalStack {
    /// The process-wide stack, started on first use (moto, identity, Dovecot, Graph, ticket API).
    pub fn shared() -> &'static LocalStack {
        SHARED.get_or_init(|| {
            let run_dir = default_run_dir("stack").expect("create the local stack's run folder");
            Self::start_on_own_thread(run_dir)
        })
    }

    /// Start a stack in `run_dir` on a new background thread owning a multi-thread tokio runtime.
    /// The thread (and the servers) live until the process exits.
    pub fn start_on_own_thread(run_dir: PathBuf) -> LocalStack {
        let (tx, rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("local-stack".into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .thread_name("local-stack-rt")
                    .enable_all()
                    .build()
                    .expect("build the local stack's tokio runtime");
                let handle = runtime.handle().clone();
                runtime.block_on(async move {
                    let stack = LocalStack::start(run_dir, handle).await;
                    let _ = tx.send(stack);
                    std::future::pending::<()>().await;
                });
            })
            .expect("spawn the local stack thread");
        rx.recv()
            .expect("the local stack thread died while starting")
    }

    /// Start every component on the CURRENT runtime (`runtime` must be its handle and must
    /// outlive the stack). Components that fail are recorded and reported by their accessor.
    pub async fn start(run_dir: PathBuf, runtime: tokio::runtime::Handle) -> LocalStack {
        let moto = moto::Moto::start(&run_dir)
            .await
            .map_err(|e| format!("{e:#}"));
        if let Err(e) = &moto {
            tracing::error!(error = %e, "moto did not start");
        }
        let identity = identity::IdentityStandIn::start()
            .await
            .map_err(|e| format!("{e:#}"));
        let introspection_url = match &identity {
            Ok(identity) => identity.introspection_url(),
            Err(e) => {
                tracing::error!(error = %e, "identity stand-in did not start");
                // Dovecot still starts; every login then fails as "temporarily unavailable".
                "http://127.0.0.1:9/introspect".to_string()
            }
        };
        let dovecot = dovecot::Dovecot::start(&run_dir.join("dovecot"), &introspection_url)
            .await
            .map(Arc::new)
            .map_err(|e| format!("{e:#}"));
        if let Err(e) = &dovecot {
            tracing::error!(error = %e, "dovecot did not start");
        }
        let graph = match (&identity, &dovecot) {
            (Ok(identity), dovecot) => {
                let drop = dovecot.as_ref().ok().map(|d| {
                    Arc::new(dovecot::graph_store::ImapStore::new(d.clone()))
                        as Arc<dyn graph::MailStore>
                });
                graph::GraphStandIn::start(identity.clone(), drop)
                    .await
                    .map_err(|e| format!("{e:#}"))
            }
            (Err(e), _) => Err(format!("needs the identity stand-in, which failed: {e}")),
        };
        let tickets = ticket_api::TicketApiStandIn::start()
            .await
            .map_err(|e| format!("{e:#}"));
        LocalStack {
            run_dir,
            runtime,
            moto,
            identity,
            dovecot,
            graph,
            tickets,
        }
    }

    /// The run folder: logs and data of every component (kept after the run for debugging).
    pub fn run_dir(&self) -> &Path {
        &self.run_dir
    }

    /// The stack's long-lived tokio runtime (spawn server-side tasks here, not on a test runtime).
    pub fn runtime(&self) -> &tokio::runtime::Handle {
        &self.runtime
    }

    /// moto (SQS, Secrets Manager, DynamoDB). Panics if it did not start.
    pub fn moto(&self) -> &moto::Moto {
        component("moto", &self.moto)
    }

    /// The identity platform stand-in. Panics if it did not start.
    pub fn identity(&self) -> &identity::IdentityStandIn {
        component("identity stand-in", &self.identity)
    }

    /// The shared Dovecot instance. Panics if it did not start.
    pub fn dovecot(&self) -> &Arc<dovecot::Dovecot> {
        component("dovecot", &self.dovecot)
    }

    /// The Graph stand-in. Panics if it did not start.
    pub fn graph(&self) -> &graph::GraphStandIn {
        component("graph stand-in", &self.graph)
    }

    /// The ticket API stand-in. Panics if it did not start.
    pub fn tickets(&self) -> &ticket_api::TicketApiStandIn {
        component("ticket API stand-in", &self.tickets)
    }

    /// moto, or its start error.
    pub fn try_moto(&self) -> Result<&moto::Moto, &str> {
        self.moto.as_ref().map_err(String::as_str)
    }

    /// The identity stand-in, or its start error.
    pub fn try_identity(&self) -> Result<&identity::IdentityStandIn, &str> {
        self.identity.as_ref().map_err(String::as_str)
    }

    /// The shared Dovecot, or its start error.
    pub fn try_dovecot(&self) -> Result<&Arc<dovecot::Dovecot>, &str> {
        self.dovecot.as_ref().map_err(String::as_str)
    }

    /// The Graph stand-in, or its start error.
    pub fn try_graph(&self) -> Result<&graph::GraphStandIn, &str> {
        self.graph.as_ref().map_err(String::as_str)
    }

    /// The ticket API stand-in, or its start error.
    pub fn try_tickets(&self) -> Result<&ticket_api::TicketApiStandIn, &str> {
        self.tickets.as_ref().map_err(String::as_str)
    }

    /// One line per component: name and endpoint, or its start error.
    pub fn summary(&self) -> Vec<(String, Result<String, String>)> {
        vec![
            (
                "moto".into(),
                self.moto
                    .as_ref()
                    .map(|m| m.endpoint_url.clone())
                    .map_err(Clone::clone),
            ),
            (
                "identity".into(),
                self.identity
                    .as_ref()
                    .map(|i| i.base_url.clone())
                    .map_err(Clone::clone),
            ),
            (
                "dovecot".into(),
                self.dovecot
                    .as_ref()
                    .map(|d| d.describe())
                    .map_err(Clone::clone),
            ),
            (
                "graph".into(),
                self.graph
                    .as_ref()
                    .map(|g| g.base_url.clone())
                    .map_err(Clone::clone),
            ),
            (
                "tickets".into(),
                self.tickets
                    .as_ref()
                    .map(|t| t.base_url.clone())
                    .map_err(Clone::clone),
            ),
        ]
    }
}

fn component<'a, T>(name: &str, started: &'a Result<T, String>) -> &'a T {
    match started {
        Ok(c) => c,
        Err(e) => panic!("local stack: {name} is not available: {e}"),
    }
}

/// The repository root, found at RUN time: the nearest ancestor holding
/// `infra/local-stack/Cargo.toml` of `$CARGO_MANIFEST_DIR` (cargo sets it for tests and
/// `cargo run`), else of the current directory, else the compile-time location of this crate.
/// (Run time first: with a build cache shared by several checkouts, the compiled crate may come
/// from another checkout.)
pub fn repo_root() -> PathBuf {
    fn find_from(start: &Path) -> Option<PathBuf> {
        start
            .ancestors()
            .find(|dir| dir.join("infra/local-stack/Cargo.toml").is_file())
            .map(Path::to_path_buf)
    }
    std::env::var_os("CARGO_MANIFEST_DIR")
        .and_then(|dir| find_from(Path::new(&dir)))
        .or_else(|| std::env::current_dir().ok().and_then(|dir| find_from(&dir)))
        .unwrap_or_else(compile_time_repo_root)
}

/// Where this crate's sources were when it was compiled (`<repo>/infra/local-stack/../..`).
pub fn compile_time_repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .expect("infra/local-stack has a grandparent")
        .to_path_buf()
}

/// Directory of the cargo build output (`$CARGO_TARGET_DIR`, else `<repo>/target`).
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target"))
}

/// Parent of all run folders: `$MAILBRIDGE_RUN_DIR`, default `<tmp>/mailbridge-local-stack`.
/// (Not under the cargo target dir: that may sit in a private home folder, and Dovecot's
/// unprivileged processes must be able to reach the maildirs.)
pub fn runs_parent() -> PathBuf {
    std::env::var_os("MAILBRIDGE_RUN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("mailbridge-local-stack"))
}

/// A fresh run folder `<runs_parent>/<label>-<pid>-<random>` (mode 755), kept after the run so
/// logs can be read. Folders of earlier runs whose process is gone are removed.
pub fn default_run_dir(label: &str) -> anyhow::Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let parent = runs_parent();
    std::fs::create_dir_all(&parent)?;
    std::fs::set_permissions(&parent, std::fs::Permissions::from_mode(0o755))?;
    remove_stale_runs(&parent);
    let dir = tempfile::Builder::new()
        .prefix(&format!("{label}-{}-", std::process::id()))
        .tempdir_in(&parent)?
        .keep();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))?;
    Ok(dir)
}

/// Remove run folders (`<label>-<pid>-<random>`) whose process no longer exists and that are
/// older than ten minutes.
fn remove_stale_runs(parent: &Path) {
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .split('-')
            .rev()
            .nth(1)
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        let old = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > std::time::Duration::from_secs(600));
        if old && !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> std::io::Result<u16> {
    let listener = std::net::TcpListener::bind(("127.0.0.1", 0))?;
    Ok(listener.local_addr()?.port())
}

/// A TCP port on 127.0.0.1 held for a server that must come back on the same port after a
/// restart (Dovecot). [`free_port`] is not enough there: between the stop and the restart, the
/// kernel may hand the freed port to any outgoing connection (ports from 0 come from the same
/// ephemeral range) or another local stack may pick it. A lease is taken outside the ephemeral
/// range (`/proc/sys/net/ipv4/ip_local_port_range`), so no outgoing connection ever gets it, and
/// under an exclusive file lock every local stack on the machine respects, held until the lease
/// is dropped.
#[derive(Debug)]
pub struct PortLease {
    /// The port.
    pub port: u16,
    _lock: std::fs::File,
}

/// Lowest port a lease is taken from.
const LEASED_PORTS_FROM: u16 = 10_000;

/// Lease a free port (see [`PortLease`]).
pub fn lease_port() -> anyhow::Result<PortLease> {
    let ephemeral_from = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32_768);
    anyhow::ensure!(
        ephemeral_from > LEASED_PORTS_FROM + 1_000,
        "the ephemeral port range starts at {ephemeral_from}: no room below it for leased ports"
    );
    for _ in 0..200 {
        let port = rand::random_range(LEASED_PORTS_FROM..ephemeral_from);
        if let Some(lease) = try_lease_port(port)? {
            return Ok(lease);
        }
    }
    anyhow::bail!("no free port between {LEASED_PORTS_FROM} and {ephemeral_from} after 200 tries")
}

/// Lease `port` if no other lease holds it and it can be bound now.
fn try_lease_port(port: u16) -> anyhow::Result<Option<PortLease>> {
    let dir = std::env::temp_dir().join("mailbridge-port-leases");
    std::fs::create_dir_all(&dir)?;
    let lock = std::fs::File::create(dir.join(format!("{port}.lock")))?;
    match lock.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => return Ok(None),
        Err(std::fs::TryLockError::Error(e)) => return Err(e.into()),
    }
    if std::net::TcpListener::bind(("127.0.0.1", port)).is_err() {
        return Ok(None);
    }
    Ok(Some(PortLease { port, _lock: lock }))
}

type SpawnJob = Box<dyn FnOnce() + Send>;

/// Spawn a child process from one long-lived thread, with `PR_SET_PDEATHSIG(signal)` so the child
/// gets `signal` when this process exits. (Linux delivers the death signal when the THREAD that
/// forked the child exits, so spawning from a short-lived test thread would kill it too early.)
pub fn spawn_child(
    mut command: std::process::Command,
    death_signal: libc::c_int,
) -> std::io::Result<std::process::Child> {
    use std::os::unix::process::CommandExt;
    static SPAWNER: OnceLock<mpsc::Sender<SpawnJob>> = OnceLock::new();
    let spawner = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnJob>();
        std::thread::Builder::new()
            .name("local-stack-spawner".into())
            .spawn(move || {
                for job in rx {
                    job();
                }
            })
            .expect("spawn the child-process spawner thread");
        tx
    });
    // SAFETY: the pre_exec closure only calls async-signal-safe functions (prctl, getppid).
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(
                libc::PR_SET_PDEATHSIG,
                death_signal as libc::c_ulong,
                0,
                0,
                0,
            ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            // the parent may already be gone (then no signal would ever come)
            if libc::getppid() == 1 {
                return Err(std::io::Error::other(
                    "parent exited before the child started",
                ));
            }
            Ok(())
        });
    }
    let (tx, rx) = mpsc::channel();
    spawner
        .send(Box::new(move || {
            let _ = tx.send(command.spawn());
        }))
        .map_err(|_| std::io::Error::other("the spawner thread is gone"))?;
    rx.recv()
        .map_err(|_| std::io::Error::other("the spawner thread dropped the request"))?
}

/// Stop a server we started: SIGTERM (a master process stops its workers), SIGKILL when it is
/// still there after 5 s, and reap it.
pub(crate) fn terminate_child(mut child: std::process::Child) {
    // SAFETY: plain kill(2) on our own child's pid.
    unsafe {
        libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        match child.try_wait() {
            Ok(Some(_)) | Err(_) => break,
            Ok(None) if std::time::Instant::now() > deadline => {
                let _ = child.kill();
                let _ = child.wait();
                break;
            }
            Ok(None) => std::thread::sleep(std::time::Duration::from_millis(20)),
        }
    }
}

/// Last `lines` lines of a log file (for error messages); empty when unreadable.
pub fn log_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Serve `501 Not Implemented` on a free 127.0.0.1 port (placeholder stand-ins); returns the
/// base URL.
pub async fn serve_not_implemented(what: &'static str) -> anyhow::Result<String> {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
    let base_url = format!("http://{}", listener.local_addr()?);
    let app = axum::Router::new().fallback(move || async move {
        (
            axum::http::StatusCode::NOT_IMPLEMENTED,
            format!("{what} is not implemented yet"),
        )
    });
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, what, "placeholder server stopped");
        }
    });
    Ok(base_url)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_leased_port_is_outside_the_ephemeral_range_and_held_until_dropped() {
        let lease = lease_port().unwrap();
        let ephemeral_from: u16 = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap()
            .parse()
            .unwrap();
        assert!((LEASED_PORTS_FROM..ephemeral_from).contains(&lease.port));
        assert!(
            try_lease_port(lease.port).unwrap().is_none(),
            "held while leased"
        );
        let port = lease.port;
        drop(lease);
        assert!(
            try_lease_port(port).unwrap().is_some(),
            "free after the drop"
        );
    }
}
