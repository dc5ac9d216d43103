//! The operator CLI binary the tests run, and its environment on the local stack.

use std::path::PathBuf;

/// The `mailbridge` binary: `$MAILBRIDGE_CLI_BIN` when set (e.g. a release build to test),
/// else the workspace build, built first if needed.
pub fn binary() -> PathBuf {
    if let Some(path) = std::env::var_os("MAILBRIDGE_CLI_BIN") {
        return PathBuf::from(path);
    }
    local_stack::runtime_api::workspace_binary("mailbridge-cli", "mailbridge")
        .expect("build the mailbridge CLI")
}

/// The CLI with a clean environment pointed at the local stack: moto, the state table `table`,
/// account secrets under `secret_prefix`, local targets allowed, the Graph stand-in and the
/// stack's Dovecot CA; stdin closed, output captured, killed with the test. A test adds what is
/// its own (more variables, a working directory).
pub fn command_on_stack(
    args: &[&str],
    secret_prefix: &str,
    table: &str,
) -> tokio::process::Command {
    let stack = crate::stack();
    let mut command = tokio::process::Command::new(binary());
    command
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(stack.moto().env())
        .env("MAILBRIDGE_SECRET_PREFIX", secret_prefix)
        .env("MAILBRIDGE_STATE_TABLE", table)
        .env("MAILBRIDGE_ALLOW_LOCAL_TARGETS", "true")
        .env("MAILBRIDGE_GRAPH_URL", stack.graph().v1_url())
        .env("MAILBRIDGE_IMAP_CA_FILE", &stack.dovecot().ca_pem_path)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    command
}
