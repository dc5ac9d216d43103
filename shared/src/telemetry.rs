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

/// The CloudWatch namespace of every mailbridge metric.
pub const METRICS_NAMESPACE: &str = "Mailbridge";

/// One CloudWatch Embedded Metric Format (EMF) line: metrics, each group under its one
/// dimension, plus plain properties. Printed on stdout, CloudWatch Logs turns it into metrics: no
/// API call, no agent.
#[derive(Clone, Debug)]
pub struct EmfLine {
    timestamp_ms: i64,
    directives: Vec<serde_json::Value>,
    fields: serde_json::Map<String, serde_json::Value>,
}

impl EmfLine {
    /// An empty line stamped `timestamp_ms` (epoch milliseconds).
    pub fn new(timestamp_ms: i64) -> Self {
        EmfLine {
            timestamp_ms,
            directives: Vec::new(),
            fields: serde_json::Map::new(),
        }
    }

    /// Metrics of one `unit` (`Count`, `Seconds`) under the dimension `(name, value)`.
    pub fn metrics(mut self, dimension: (&str, &str), unit: &str, values: &[(&str, u64)]) -> Self {
        self.directives.push(serde_json::json!({
            "Namespace": METRICS_NAMESPACE,
            "Dimensions": [[dimension.0]],
            "Metrics": values
                .iter()
                .map(|(name, _)| serde_json::json!({"Name": name, "Unit": unit}))
                .collect::<Vec<_>>(),
        }));
        self.fields.insert(dimension.0.into(), dimension.1.into());
        for (name, value) in values {
            self.fields.insert((*name).into(), (*value).into());
        }
        self
    }

    /// A value that is logged with the line but is no metric.
    pub fn property(mut self, name: &str, value: impl Into<serde_json::Value>) -> Self {
        self.fields.insert(name.into(), value.into());
        self
    }

    /// The EMF document (one JSON object).
    pub fn to_json(&self) -> serde_json::Value {
        let mut doc = self.fields.clone();
        doc.insert(
            "_aws".into(),
            serde_json::json!({
                "Timestamp": self.timestamp_ms,
                "CloudWatchMetrics": self.directives,
            }),
        );
        serde_json::Value::Object(doc)
    }
}

impl std::fmt::Display for EmfLine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.to_json())
    }
}
