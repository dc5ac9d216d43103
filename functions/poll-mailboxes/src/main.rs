//! Lambda glue only: build clients once per cold start, then hand each event to the library.
//!
//! Environment: see `poll_mailboxes::settings::Settings` (`MAILBRIDGE_STATE_TABLE`,
//! `MAILBRIDGE_THREAD_KEY_SECRET`, `MAILBRIDGE_MAX_CONCURRENT_MAILBOXES`, ...), the token layer's
//! `MAILBRIDGE_SECRET_PREFIX`, and the standard AWS variables. A missing or invalid variable stops
//! the cold start with an error naming it. No network in init; the thread key is read by the
//! first invocation (`mailbridge::lambda`, which also gives the error shapes).

use lambda_runtime::LambdaEvent;
use mailbridge::lambda::{Function, FunctionError};
use poll_mailboxes::handler::{HandlerError, handle_event};
use poll_mailboxes::production::Poller;
use poll_mailboxes::settings::Settings;

/// Init: settings and clients, no network.
async fn prepare() -> Result<Poller, FunctionError> {
    let settings = Settings::from_env().map_err(FunctionError::configuration)?;
    let aws = mailbridge::aws::load_config()
        .await
        .map_err(FunctionError::configuration)?;
    Poller::production(settings, &aws)
}

async fn poll(
    poller: &Poller,
    event: LambdaEvent<serde_json::Value>,
) -> Result<serde_json::Value, FunctionError> {
    let deadline = mailbridge::lambda::deadline(&event.context);
    let deps = poller.deps.get().await?;
    let answer = handle_event(deps, Some(&poller.push), &event.payload, deadline)
        .await
        .map_err(|e| match e {
            HandlerError::Event(_) => FunctionError::new("InvalidEvent", e),
            HandlerError::Store(_) => FunctionError::new("StateTableUnavailable", e),
        });
    let expiries = deps.tokens.credential_expiries();
    if let Some(line) =
        mailbridge::token::expiry::emf_line("poll-mailboxes", &expiries, chrono::Utc::now())
    {
        println!("{line}");
    }
    answer
}

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    let function = Function {
        name: "poll-mailboxes",
        doing: "poll",
    };
    mailbridge::lambda::run(function, prepare(), poll).await
}
