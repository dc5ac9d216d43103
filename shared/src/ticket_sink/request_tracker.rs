//! Request Tracker 5 through its REST 2.0 API.
//!
//! Configuration (`sink` of a mailbox): `url` (RT's web root), `secret` (credentials), `queue`,
//! `rt_name` (RT's `$rtname`, for the `[rtname #123]` subject tag), `machine_mail`, and ticket
//! defaults. The adapter itself is still to be written: `build` refuses until it is.

use std::sync::Arc;

use regex::Regex;
use serde::Serialize;

use super::TicketSink;
use super::config::{MachineMail, SinkConfigError, SinkFields};
use crate::retry::RetryPolicy;

/// A mailbox's Request Tracker settings.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RtConfig {
    /// RT's web root, e.g. `https://rt.example.com` (REST 2.0 lives under `/REST/2.0/`).
    pub url: String,
    /// Secret with the API credentials.
    pub secret: String,
    /// Queue new tickets go to.
    pub queue: String,
    /// RT's `$rtname`: its subject tag is `[<rt_name> #<id>]`.
    pub rt_name: String,
    /// What threaded machine mail becomes.
    pub machine_mail: MachineMail,
}

impl RtConfig {
    /// Read and validate the `rt` fields of a `sink` object.
    pub fn from_fields(fields: &mut SinkFields<'_>) -> Result<Self, SinkConfigError> {
        Ok(RtConfig {
            url: fields.url("url")?,
            secret: fields.required("secret")?,
            queue: fields.required("queue")?,
            rt_name: fields.required("rt_name")?,
            machine_mail: fields.machine_mail()?,
        })
    }

    /// `[<rt_name> #<id>]`, as RT writes it in subjects.
    pub fn subject_patterns(&self) -> Vec<Regex> {
        let pattern = format!(
            r"(?i)\[\s*{}\s+#\s*(?P<ticket>\d+)\s*\]",
            regex::escape(&self.rt_name)
        );
        Regex::new(&pattern).into_iter().collect()
    }

    /// The adapter.
    pub fn build(
        &self,
        _http: reqwest::Client,
        secret_name: &str,
        _secret_json: &str,
        _retry: RetryPolicy,
    ) -> Result<Arc<dyn TicketSink>, String> {
        Err(format!(
            "sink kind rt (secret {secret_name}): the Request Tracker adapter is not available in this build"
        ))
    }
}
