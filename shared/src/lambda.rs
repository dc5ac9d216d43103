//! What both functions' `main.rs` share: the Lambda loop around a cold start and a handler, the
//! error shape Lambda reports, the thread key read on the first invocation, and the deadline.
//!
//! A function is `run(Function { .. }, prepare(), handle)`: JSON logs; `prepare` builds the
//! settings and clients with no network (a failure is logged as `<name> cannot start` and ends
//! the process, which Lambda reports as an init error); then each event goes to `handle`, and a
//! failed invocation is logged as `<name> cannot <doing>` and reported with its stable
//! `errorType` ([`FunctionError`]).

use std::future::Future;

use lambda_runtime::{Diagnostic, LambdaEvent, service_fn};

/// A failure as Lambda reports it: a stable `errorType` (CloudWatch, the Lambda console, the
/// alarms) and the message naming the cause.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct FunctionError {
    /// `errorType`, e.g. `ConfigurationError`, `ThreadKeyUnavailable`.
    pub error_type: &'static str,
    /// `errorMessage`: the whole cause.
    pub message: String,
}

impl FunctionError {
    /// An error of type `error_type` saying `cause`.
    pub fn new(error_type: &'static str, cause: impl std::fmt::Display) -> Self {
        FunctionError {
            error_type,
            message: cause.to_string(),
        }
    }

    /// A missing or invalid setting, or a client that cannot be built.
    pub fn configuration(cause: impl std::fmt::Display) -> Self {
        Self::new("ConfigurationError", cause)
    }
}

impl From<FunctionError> for Diagnostic {
    fn from(e: FunctionError) -> Diagnostic {
        Diagnostic {
            error_type: e.error_type.into(),
            error_message: e.message,
        }
    }
}

/// A function's dependencies that need the thread key: built by the first invocation, which
/// reads the key (one Secrets Manager call, kept out of init), and kept for the process. A
/// failed read fails that invocation with `ThreadKeyUnavailable`; the next one tries again.
pub struct WithThreadKey<T> {
    secrets: crate::aws::LazyClient<aws_sdk_secretsmanager::Client>,
    secret_name: String,
    build: Box<dyn Fn(crate::thread_key::ThreadKey) -> T + Send + Sync>,
    built: tokio::sync::OnceCell<T>,
}

impl<T> WithThreadKey<T> {
    /// `build` makes the dependencies from the key named `secret_name` in `secrets`.
    pub fn new(
        secrets: crate::aws::LazyClient<aws_sdk_secretsmanager::Client>,
        secret_name: impl Into<String>,
        build: impl Fn(crate::thread_key::ThreadKey) -> T + Send + Sync + 'static,
    ) -> Self {
        WithThreadKey {
            secrets,
            secret_name: secret_name.into(),
            build: Box::new(build),
            built: tokio::sync::OnceCell::new(),
        }
    }

    /// The dependencies, built on the first successful call.
    pub async fn get(&self) -> Result<&T, FunctionError> {
        self.built
            .get_or_try_init(|| async {
                crate::thread_key::load(&self.secrets, &self.secret_name)
                    .await
                    .map(&self.build)
                    .map_err(|e| FunctionError::new("ThreadKeyUnavailable", e))
            })
            .await
    }
}

/// Lambda's deadline (`Context::deadline`, epoch milliseconds) as a monotonic instant.
pub fn deadline(context: &lambda_runtime::Context) -> tokio::time::Instant {
    let now_ms = chrono::Utc::now().timestamp_millis().max(0) as u64;
    let left = std::time::Duration::from_millis(context.deadline.saturating_sub(now_ms));
    tokio::time::Instant::now() + left
}

/// How a function names itself in its log lines.
#[derive(Clone, Copy, Debug)]
pub struct Function {
    /// e.g. `poll-mailboxes`.
    pub name: &'static str,
    /// What an invocation does, for `<name> cannot <doing>` (e.g. `poll`).
    pub doing: &'static str,
}

/// Run the function: JSON logging, the cold start `prepare`, then every event through `handle`
/// with what `prepare` built (kept for the life of the process).
pub async fn run<P, E, R, H, Fut>(
    function: Function,
    prepare: impl Future<Output = Result<P, FunctionError>>,
    handle: H,
) -> Result<(), lambda_runtime::Error>
where
    P: Sync + 'static,
    E: serde::de::DeserializeOwned + Send + 'static,
    R: serde::Serialize,
    H: Fn(&'static P, LambdaEvent<E>) -> Fut,
    Fut: Future<Output = Result<R, FunctionError>>,
{
    crate::telemetry::init_json_logging();
    let prepared: &'static P = match prepare.await {
        // lives as long as the process, like the clients and caches it holds
        Ok(prepared) => Box::leak(Box::new(prepared)),
        Err(e) => {
            tracing::error!(error = %e, error_type = e.error_type, "{} cannot start", function.name);
            return Err(e.into());
        }
    };
    let handle = &handle;
    lambda_runtime::run(service_fn(move |event: LambdaEvent<E>| async move {
        handle(prepared, event).await.map_err(|e| {
            tracing::error!(
                error = %e,
                error_type = e.error_type,
                "{} cannot {}",
                function.name,
                function.doing
            );
            Diagnostic::from(e)
        })
    }))
    .await
}
