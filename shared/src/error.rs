//! The error taxonomy every layer maps into: what the caller should do about a failure.

use serde::Serialize;

/// What a failure means for the work item that hit it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorClass {
    /// Retrying will not help: the input or the configuration is wrong. Park it (DLQ, failed folder).
    Permanent,
    /// Try again later, with backoff: throttling, 5xx, timeouts, a server restarting.
    Transient,
    /// The account's OAuth2 grant is unusable until a person re-consents or logs in again.
    NeedsReauth,
}

/// Implemented by every error enum of the library so callers can decide retry vs park.
pub trait Classify {
    /// The class of this error.
    fn class(&self) -> ErrorClass;
}

/// An error's message followed by each of its causes, `": "`-separated. The top level alone
/// often hides what went wrong: reqwest says "error sending request for url" (the cause is a
/// refused connection or `invalid peer certificate: UnknownIssuer`), the AWS SDK says "service
/// error".
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("error sending request")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn error_chain_names_every_cause() {
        let inner =
            std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "connection refused");
        assert_eq!(
            error_chain(&Outer(inner)),
            "error sending request: connection refused"
        );
    }
}
