//! Lambda Runtime API emulator: runs a real `bootstrap` binary and hands it events.
//!
//! Serves the runtime interface the `lambda_runtime` crate talks to
//! (`GET /2018-06-01/runtime/invocation/next`, `POST .../invocation/{id}/response`,
//! `POST .../invocation/{id}/error`, `POST /2018-06-01/runtime/init/error`) on 127.0.0.1, spawns
//! the binary with the environment Lambda gives a function (clean environment plus the caller's
//! variables), and keeps it warm across invocations like a Lambda sandbox does.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use local_stack::runtime_api::{FunctionConfig, RuntimeApi};
//! let api = RuntimeApi::start().await?;
//! let function = FunctionConfig::new("send-notifications", "/path/to/bootstrap");
//! api.spawn_function(&function)?;
//! let first = api.invoke(serde_json::json!({"Records": []}), std::time::Duration::from_secs(30)).await?;
//! println!("init took {:?}", first.init_duration);
//! let second = api.invoke(serde_json::json!({"Records": []}), std::time::Duration::from_secs(30)).await?;
//! api.shutdown();
//! # Ok(()) }
//! ```

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use axum::Router;
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tokio::sync::{Notify, mpsc, oneshot};

/// How a function process is started.
#[derive(Clone, Debug)]
pub struct FunctionConfig {
    /// `AWS_LAMBDA_FUNCTION_NAME`.
    pub name: String,
    /// The bootstrap executable.
    pub binary: PathBuf,
    /// Extra environment (the process gets a clean environment: PATH, the Lambda variables and
    /// these).
    pub env: Vec<(String, String)>,
    /// `AWS_LAMBDA_FUNCTION_MEMORY_SIZE` (MB).
    pub memory_mb: u32,
    /// Where stdout/stderr go (default: a temp file under the run folder).
    pub log_path: Option<PathBuf>,
}

impl FunctionConfig {
    /// A function named `name` running `binary`, 128 MB, no extra environment.
    pub fn new(name: &str, binary: impl Into<PathBuf>) -> Self {
        FunctionConfig {
            name: name.to_string(),
            binary: binary.into(),
            env: Vec::new(),
            memory_mb: 128,
            log_path: None,
        }
    }

    /// Add environment variables.
    pub fn with_env<K: Into<String>, V: Into<String>>(
        mut self,
        env: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        self.env
            .extend(env.into_iter().map(|(k, v)| (k.into(), v.into())));
        self
    }
}

/// What one invocation produced.
#[derive(Debug)]
pub struct InvocationOutcome {
    /// `Lambda-Runtime-Aws-Request-Id` handed to the function.
    pub request_id: String,
    /// The response or error the function posted, or why there is none.
    pub result: InvocationResult,
    /// From handing out the event (`/next`) to the response/error.
    pub duration: Duration,
    /// Process spawn → first `/next` (only on the first invocation of a process: a cold start).
    pub init_duration: Option<Duration>,
    /// The process's stdout/stderr file (its logs, including earlier invocations).
    pub log_path: Option<PathBuf>,
}

impl InvocationOutcome {
    /// The process's logs (stdout/stderr) so far.
    pub fn logs(&self) -> String {
        self.log_path
            .as_ref()
            .and_then(|p| std::fs::read_to_string(p).ok())
            .unwrap_or_default()
    }

    /// The response body as JSON, or an error describing what happened instead.
    pub fn into_response(self) -> anyhow::Result<serde_json::Value> {
        match self.result {
            InvocationResult::Response(value) => Ok(value),
            other => bail!("invocation {} did not succeed: {other:?}", self.request_id),
        }
    }
}

/// The result part of an [`InvocationOutcome`].
#[derive(Debug)]
pub enum InvocationResult {
    /// `POST /invocation/{id}/response` (parsed as JSON; a non-JSON body becomes a JSON string).
    Response(serde_json::Value),
    /// `POST /invocation/{id}/error`: the function reported an error.
    FunctionError {
        /// `errorType` (or the `Lambda-Runtime-Function-Error-Type` header).
        error_type: String,
        /// `errorMessage`.
        error_message: String,
        /// The whole body.
        body: serde_json::Value,
    },
    /// `POST /runtime/init/error`: initialisation failed (the process is stopped).
    InitError {
        /// `errorType`.
        error_type: String,
        /// `errorMessage`.
        error_message: String,
    },
    /// The process exited without answering.
    ProcessExited(String),
    /// No answer within the timeout (the process is stopped, as Lambda resets the sandbox).
    TimedOut,
}

struct Pending {
    request_id: String,
    event: serde_json::Value,
    deadline: Duration,
    handed_out: oneshot::Sender<Instant>,
}

#[derive(Default)]
struct Shared {
    waiting: Mutex<HashMap<String, oneshot::Sender<InvocationResult>>>,
    init_error: Mutex<Option<(String, String)>>,
    init_error_notify: Notify,
    first_next: Mutex<Option<Instant>>,
    first_next_notify: Notify,
    spawned_at: Mutex<Option<Instant>>,
    init_reported: Mutex<bool>,
    function_name: Mutex<String>,
}

struct Process {
    child: Child,
}

/// A Runtime API endpoint serving one function process at a time.
pub struct RuntimeApi {
    /// `127.0.0.1:<port>` (the value of `AWS_LAMBDA_RUNTIME_API`).
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    events: mpsc::UnboundedSender<Pending>,
    process: Mutex<Option<Process>>,
    last_log: Mutex<Option<PathBuf>>,
    server: tokio::task::JoinHandle<()>,
    log_dir: PathBuf,
}

impl RuntimeApi {
    /// Serve on a free 127.0.0.1 port, on the current tokio runtime.
    pub async fn start() -> anyhow::Result<RuntimeApi> {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared::default());
        let (events, rx) = mpsc::unbounded_channel();
        let state = ServerState {
            shared: shared.clone(),
            events: Arc::new(tokio::sync::Mutex::new(rx)),
        };
        let app = Router::new()
            .route("/2018-06-01/runtime/invocation/next", get(next_invocation))
            .route(
                "/2018-06-01/runtime/invocation/{id}/response",
                post(invocation_response),
            )
            .route(
                "/2018-06-01/runtime/invocation/{id}/error",
                post(invocation_error),
            )
            .route("/2018-06-01/runtime/init/error", post(init_error))
            .with_state(state);
        let server = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::error!(error = %e, "runtime API server stopped");
            }
        });
        let log_dir = crate::default_run_dir("lambda")?;
        Ok(RuntimeApi {
            addr,
            shared,
            events,
            process: Mutex::new(None),
            last_log: Mutex::new(None),
            server,
            log_dir,
        })
    }

    /// Spawn the function process (stopping a previous one). It connects to this API and waits
    /// for events; the init time is measured from here to its first `/next`.
    pub fn spawn_function(&self, function: &FunctionConfig) -> anyhow::Result<()> {
        self.shutdown();
        if !function.binary.exists() {
            bail!(
                "function binary {} does not exist (build it first, e.g. `cargo build -p <crate> --bin {}`)",
                function.binary.display(),
                function.name
            );
        }
        *self.shared.init_error.lock().expect("lock") = None;
        *self.shared.first_next.lock().expect("lock") = None;
        *self.shared.function_name.lock().expect("lock") = function.name.clone();
        let log_path = function.log_path.clone().unwrap_or_else(|| {
            self.log_dir
                .join(format!("{}-{}.log", function.name, uuid::Uuid::new_v4()))
        });
        let log = std::fs::File::create(&log_path)
            .with_context(|| format!("create {}", log_path.display()))?;
        let mut command = Command::new(&function.binary);
        command
            .env_clear()
            .current_dir(function.binary.parent().unwrap_or(Path::new("/")))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let path = std::env::var("PATH").unwrap_or_else(|_| "/usr/bin:/bin".into());
        let name = &function.name;
        let lambda_env: Vec<(String, String)> = vec![
            ("PATH".into(), path),
            ("LANG".into(), "en_US.UTF-8".into()),
            ("TZ".into(), ":UTC".into()),
            ("AWS_LAMBDA_RUNTIME_API".into(), self.addr.to_string()),
            ("AWS_LAMBDA_FUNCTION_NAME".into(), name.clone()),
            ("AWS_LAMBDA_FUNCTION_VERSION".into(), "$LATEST".into()),
            (
                "AWS_LAMBDA_FUNCTION_MEMORY_SIZE".into(),
                function.memory_mb.to_string(),
            ),
            (
                "AWS_LAMBDA_LOG_GROUP_NAME".into(),
                format!("/aws/lambda/{name}"),
            ),
            (
                "AWS_LAMBDA_LOG_STREAM_NAME".into(),
                format!("local/[$LATEST]{}", uuid::Uuid::new_v4().simple()),
            ),
            ("AWS_LAMBDA_INITIALIZATION_TYPE".into(), "on-demand".into()),
            (
                "AWS_EXECUTION_ENV".into(),
                "AWS_Lambda_provided.al2023".into(),
            ),
            ("_HANDLER".into(), "bootstrap".into()),
            (
                "LAMBDA_TASK_ROOT".into(),
                function
                    .binary
                    .parent()
                    .unwrap_or(Path::new("/"))
                    .display()
                    .to_string(),
            ),
            ("LAMBDA_RUNTIME_DIR".into(), "/var/runtime".into()),
        ];
        for (k, v) in lambda_env.iter().chain(function.env.iter()) {
            command.env(k, v);
        }
        let spawned_at = Instant::now();
        let child = crate::spawn_child(command, libc::SIGKILL)
            .with_context(|| format!("spawn {}", function.binary.display()))?;
        *self.shared.spawned_at.lock().expect("lock") = Some(spawned_at);
        *self.shared.init_reported.lock().expect("lock") = false;
        *self.last_log.lock().expect("lock") = Some(log_path.clone());
        *self.process.lock().expect("lock") = Some(Process { child });
        Ok(())
    }

    /// OS process id of the running function process, if any (benchmarks read its peak RSS from
    /// `/proc/<pid>/status`).
    pub fn function_pid(&self) -> Option<u32> {
        self.process
            .lock()
            .expect("lock")
            .as_ref()
            .map(|p| p.child.id())
    }

    /// SIGKILL the function process now, as Lambda ends a function at its timeout or out of
    /// memory: nothing of it runs any more (no answer, no cleanup). The invocation in flight
    /// ends as [`InvocationResult::ProcessExited`].
    pub fn kill_function(&self) -> anyhow::Result<()> {
        let pid = self.function_pid().context("no function process to kill")?;
        // SAFETY: kill(2) on the pid of our own child process, which has not been reaped (the
        // `Child` is still held), so the pid cannot belong to another process.
        if unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) } != 0 {
            bail!("kill -9 {pid}: {}", std::io::Error::last_os_error());
        }
        Ok(())
    }

    /// Wait (at most `timeout`) until the running process makes its first `/next` request and
    /// return its init time (spawn → first `/next`), without handing it an event. Does not
    /// consume the init time: the next [`RuntimeApi::invoke`] still reports it. Fails when the
    /// process reports an init error or exits first.
    pub async fn wait_for_init(&self, timeout: Duration) -> anyhow::Result<Duration> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.shared.first_next_notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let first_next = *self.shared.first_next.lock().expect("lock");
            let spawned_at = *self.shared.spawned_at.lock().expect("lock");
            if let (Some(first_next), Some(spawned_at)) = (first_next, spawned_at) {
                return Ok(first_next.saturating_duration_since(spawned_at));
            }
            if let Some((error_type, error_message)) =
                self.shared.init_error.lock().expect("lock").clone()
            {
                bail!("init error {error_type}: {error_message}");
            }
            if let Some(status) = self.exit_status() {
                bail!("the function process exited during init ({status})");
            }
            if self.process.lock().expect("lock").is_none() {
                bail!("no function process: call spawn_function first");
            }
            tokio::select! {
                _ = &mut notified => {}
                _ = tokio::time::sleep(Duration::from_millis(20)) => {}
                _ = tokio::time::sleep_until(deadline) => bail!("no /next request within {timeout:?}"),
            }
        }
    }

    /// CPU time (user + system, all live threads) the running function process has used so far,
    /// from `/proc/<pid>/task/*/schedstat` (nanosecond resolution; Linux only). Benchmarks read
    /// it before and after invocations to get the CPU cost of a warm invocation.
    pub fn function_cpu_time(&self) -> Option<Duration> {
        let pid = self.function_pid()?;
        let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
        let mut total_ns: u64 = 0;
        for task in tasks.flatten() {
            let Ok(text) = std::fs::read_to_string(task.path().join("schedstat")) else {
                continue;
            };
            total_ns += text
                .split_whitespace()
                .next()
                .and_then(|ns| ns.parse::<u64>().ok())
                .unwrap_or(0);
        }
        Some(Duration::from_nanos(total_ns))
    }

    /// `(VmRSS, VmHWM)` of the running function process in KiB, from `/proc/<pid>/status`.
    pub fn function_memory_kib(&self) -> Option<(u64, u64)> {
        let pid = self.function_pid()?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let field = |name: &str| {
            status
                .lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
        };
        Some((field("VmRSS:")?, field("VmHWM:")?))
    }

    /// Hand `event` to the running function and wait (at most `timeout`) for its answer.
    pub async fn invoke(
        &self,
        event: serde_json::Value,
        timeout: Duration,
    ) -> anyhow::Result<InvocationOutcome> {
        if self.process.lock().expect("lock").is_none() {
            bail!("no function process: call spawn_function first");
        }
        let request_id = uuid::Uuid::new_v4().to_string();
        let (reply_tx, mut reply_rx) = oneshot::channel();
        let (handed_tx, mut handed_rx) = oneshot::channel();
        self.shared
            .waiting
            .lock()
            .expect("lock")
            .insert(request_id.clone(), reply_tx);
        self.events
            .send(Pending {
                request_id: request_id.clone(),
                event,
                deadline: timeout,
                handed_out: handed_tx,
            })
            .map_err(|_| anyhow::anyhow!("runtime API server is gone"))?;
        let started = Instant::now();
        let deadline = tokio::time::Instant::now() + timeout;
        let mut handed_out_at: Option<Instant> = None;
        let result = loop {
            tokio::select! {
                result = &mut reply_rx => {
                    break result.unwrap_or(InvocationResult::ProcessExited("reply channel dropped".into()));
                }
                at = &mut handed_rx, if handed_out_at.is_none() => {
                    handed_out_at = Some(at.unwrap_or_else(|_| Instant::now()));
                }
                _ = self.shared.init_error_notify.notified() => {
                    if let Some((error_type, error_message)) = self.shared.init_error.lock().expect("lock").clone() {
                        self.shutdown();
                        break InvocationResult::InitError { error_type, error_message };
                    }
                }
                _ = tokio::time::sleep_until(deadline) => {
                    self.shutdown();
                    break InvocationResult::TimedOut;
                }
                _ = tokio::time::sleep(Duration::from_millis(50)) => {
                    if let Some(status) = self.exit_status() {
                        // a last answer may still be in flight
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        if let Ok(result) = reply_rx.try_recv() {
                            break result;
                        }
                        self.shutdown();
                        break InvocationResult::ProcessExited(status);
                    }
                }
            }
        };
        self.shared
            .waiting
            .lock()
            .expect("lock")
            .remove(&request_id);
        let init_duration = self.take_init_duration();
        let duration = handed_out_at
            .map(|at| at.elapsed())
            .unwrap_or_else(|| started.elapsed());
        Ok(InvocationOutcome {
            request_id,
            result,
            duration,
            init_duration,
            log_path: self.log_path(),
        })
    }

    fn take_init_duration(&self) -> Option<Duration> {
        let mut reported = self.shared.init_reported.lock().expect("lock");
        if *reported {
            return None;
        }
        let first_next = (*self.shared.first_next.lock().expect("lock"))?;
        let spawned_at = (*self.shared.spawned_at.lock().expect("lock"))?;
        *reported = true;
        Some(first_next.saturating_duration_since(spawned_at))
    }

    fn exit_status(&self) -> Option<String> {
        let mut process = self.process.lock().expect("lock");
        let process = process.as_mut()?;
        match process.child.try_wait() {
            Ok(Some(status)) => Some(status.to_string()),
            Ok(None) => None,
            Err(e) => Some(e.to_string()),
        }
    }

    /// The running (or last) process's stdout/stderr so far (the function's logs).
    pub fn logs(&self) -> String {
        self.log_path()
            .and_then(|p| std::fs::read_to_string(p).ok())
            .unwrap_or_default()
    }

    /// Path of the running (or last) process's log file.
    pub fn log_path(&self) -> Option<PathBuf> {
        self.last_log.lock().expect("lock").clone()
    }

    /// Stop the function process (the API keeps serving; spawn another with
    /// [`RuntimeApi::spawn_function`]).
    pub fn shutdown(&self) {
        if let Some(mut process) = self.process.lock().expect("lock").take() {
            let _ = process.child.kill();
            let _ = process.child.wait();
        }
    }
}

impl Drop for RuntimeApi {
    fn drop(&mut self) {
        self.shutdown();
        self.server.abort();
    }
}

/// One-shot: start an API, spawn `binary` with `env`, invoke it once with `event`, stop it.
pub async fn invoke_binary(
    binary: &Path,
    env: &[(String, String)],
    event: serde_json::Value,
    timeout: Duration,
) -> anyhow::Result<InvocationOutcome> {
    let api = RuntimeApi::start().await?;
    let name = binary
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "function".into());
    let function = FunctionConfig::new(&name, binary).with_env(env.iter().cloned());
    api.spawn_function(&function)?;
    let outcome = api.invoke(event, timeout).await;
    api.shutdown();
    outcome
}

#[derive(Clone)]
struct ServerState {
    shared: Arc<Shared>,
    events: Arc<tokio::sync::Mutex<mpsc::UnboundedReceiver<Pending>>>,
}

async fn next_invocation(State(state): State<ServerState>) -> Response {
    {
        let mut first = state.shared.first_next.lock().expect("lock");
        if first.is_none() {
            *first = Some(Instant::now());
            state.shared.first_next_notify.notify_waiters();
        }
    }
    let pending = {
        let mut events = state.events.lock().await;
        events.recv().await
    };
    let Some(pending) = pending else {
        return (StatusCode::GONE, "runtime API shutting down").into_response();
    };
    let _ = pending.handed_out.send(Instant::now());
    let deadline_ms = (chrono::Utc::now()
        + chrono::Duration::from_std(pending.deadline).unwrap_or_default())
    .timestamp_millis();
    let name = state.shared.function_name.lock().expect("lock").clone();
    let mut headers = HeaderMap::new();
    let mut set = |name: &'static str, value: String| {
        if let Ok(v) = HeaderValue::from_str(&value) {
            headers.insert(name, v);
        }
    };
    set("lambda-runtime-aws-request-id", pending.request_id.clone());
    set("lambda-runtime-deadline-ms", deadline_ms.to_string());
    set(
        "lambda-runtime-invoked-function-arn",
        format!(
            "arn:aws:lambda:{}:{}:function:{name}",
            crate::moto::REGION,
            crate::moto::ACCOUNT_ID
        ),
    );
    set(
        "lambda-runtime-trace-id",
        format!(
            "Root=1-{:08x}-{};Parent={};Sampled=0",
            chrono::Utc::now().timestamp(),
            &uuid::Uuid::new_v4().simple().to_string()[..24],
            &uuid::Uuid::new_v4().simple().to_string()[..16]
        ),
    );
    set("content-type", "application/json".into());
    (StatusCode::OK, headers, pending.event.to_string()).into_response()
}

async fn invocation_response(
    State(state): State<ServerState>,
    UrlPath(id): UrlPath<String>,
    body: axum::body::Bytes,
) -> Response {
    let value = serde_json::from_slice(&body)
        .unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(&body).into()));
    complete(&state, &id, InvocationResult::Response(value))
}

async fn invocation_error(
    State(state): State<ServerState>,
    UrlPath(id): UrlPath<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let (error_type, error_message, body) = parse_error(&headers, &body);
    complete(
        &state,
        &id,
        InvocationResult::FunctionError {
            error_type,
            error_message,
            body,
        },
    )
}

async fn init_error(
    State(state): State<ServerState>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let (error_type, error_message, _) = parse_error(&headers, &body);
    tracing::warn!(%error_type, %error_message, "function reported an init error");
    *state.shared.init_error.lock().expect("lock") = Some((error_type, error_message));
    state.shared.init_error_notify.notify_waiters();
    state.shared.init_error_notify.notify_one();
    (
        StatusCode::ACCEPTED,
        axum::Json(serde_json::json!({"status": "OK"})),
    )
        .into_response()
}

fn parse_error(headers: &HeaderMap, body: &[u8]) -> (String, String, serde_json::Value) {
    let body: serde_json::Value = serde_json::from_slice(body)
        .unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(body).into()));
    let error_type = body
        .get("errorType")
        .and_then(|v| v.as_str())
        .map(str::to_string)
        .or_else(|| {
            headers
                .get("lambda-runtime-function-error-type")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        })
        .unwrap_or_else(|| "Unknown".into());
    let error_message = body
        .get("errorMessage")
        .and_then(|v| v.as_str())
        .unwrap_or_default()
        .to_string();
    (error_type, error_message, body)
}

fn complete(state: &ServerState, id: &str, result: InvocationResult) -> Response {
    match state.shared.waiting.lock().expect("lock").remove(id) {
        Some(reply) => {
            let _ = reply.send(result);
            (
                StatusCode::ACCEPTED,
                axum::Json(serde_json::json!({"status": "OK"})),
            )
                .into_response()
        }
        None => (
            StatusCode::BAD_REQUEST,
            axum::Json(serde_json::json!({
                "errorMessage": format!("unknown or already answered request id {id}"),
                "errorType": "InvalidRequestID"
            })),
        )
            .into_response(),
    }
}

/// Path of a workspace binary (`<target>/<profile>/<name>`), which must already be built:
/// `infra/scripts/test.sh` runs `cargo build --workspace --bins` before the tests (a test never
/// runs cargo itself). The target/profile directory is taken from the running executable when it
/// lives in `<target>/<profile>/deps/` (a test), else from [`crate::target_dir`] + `debug`. A
/// missing binary is an error naming the command that builds it; one older than the running test
/// executable gets a warning (it may predate the code under test). `package` names the binary's
/// package in messages.
pub fn workspace_binary(package: &str, name: &str) -> anyhow::Result<PathBuf> {
    let test_exe = std::env::current_exe().ok();
    let profile_dir = test_exe
        .as_deref()
        .and_then(|exe| {
            let deps = exe.parent()?;
            (deps.file_name()? == "deps").then(|| deps.parent().map(Path::to_path_buf))?
        })
        .unwrap_or_else(|| crate::target_dir().join("debug"));
    let path = profile_dir.join(name);
    let build = match profile_dir.file_name().and_then(|p| p.to_str()) {
        Some("debug") | None => "cargo build --workspace --bins".to_owned(),
        Some(profile) => format!("cargo build --workspace --bins --profile {profile}"),
    };
    let built = std::fs::metadata(&path)
        .and_then(|m| m.modified())
        .map_err(|e| {
            anyhow::anyhow!(
                "{} ({name} of {package}) is not built ({e}): run `{build}` first \
                 (infra/scripts/test.sh does)",
                path.display()
            )
        })?;
    let test_built = test_exe
        .and_then(|exe| std::fs::metadata(exe).ok())
        .and_then(|m| m.modified().ok());
    if test_built.is_some_and(|test_built| built < test_built) {
        tracing::warn!(
            binary = %path.display(),
            "the binary is older than this test executable: if you changed its code, run `{build}`"
        );
    }
    Ok(path)
}
