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
