//! Structured JSON logging via `tracing`.
//!
//! Some dependencies write credentials at DEBUG/TRACE: async-imap traces every command it
//! encodes, including `AUTHENTICATE XOAUTH2 <base64>` whose argument is the access token. Those
//! targets ([`SECRET_BEARING_TARGETS`]) are capped at INFO whatever `RUST_LOG` says, so turning
//! on TRACE to debug a mailbox never puts a token in CloudWatch.

use tracing_subscriber::EnvFilter;

/// Log targets capped at INFO because they log secrets at lower levels.
pub const SECRET_BEARING_TARGETS: &[&str] = &["async_imap"];

/// The filter for `spec` (`RUST_LOG` syntax; `info` when invalid) with the secret-bearing
/// targets capped at INFO (the cap overrides a directive for the same target in `spec`).
pub fn log_filter(spec: &str) -> EnvFilter {
    let mut filter = EnvFilter::try_new(spec).unwrap_or_else(|_| EnvFilter::new("info"));
    for target in SECRET_BEARING_TARGETS {
        filter = filter.add_directive(
            format!("{target}=info")
                .parse()
                .expect("a target=level directive parses"),
        );
    }
    filter
}

/// Install the JSON subscriber (level from `RUST_LOG`, default `info`, see [`log_filter`]).
/// Safe to call twice.
pub fn init_json_logging() {
    let spec = std::env::var("RUST_LOG").unwrap_or_else(|_| "info".to_owned());
    let _ = tracing_subscriber::fmt()
        .json()
        .with_env_filter(log_filter(&spec))
        .with_current_span(false)
        .without_time()
        .with_target(false)
        .try_init();
}
