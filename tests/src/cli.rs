//! The operator CLI binary the tests run.

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
