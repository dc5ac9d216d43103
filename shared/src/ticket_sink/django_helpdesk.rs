//! django-helpdesk through its REST API.
//!
//! Configuration (`sink` of a mailbox): `url` (the API root, e.g.
//! `https://helpdesk.example.com/helpdesk/api/`), `secret` (credentials), `queue` (the queue's
//! slug), `machine_mail`, and ticket defaults. The adapter itself is still to be written:
//! `build` refuses until it is.

use std::sync::Arc;

use regex::Regex;
use serde::Serialize;

use super::TicketSink;
use super::config::{MachineMail, SinkConfigError, SinkFields};
use crate::retry::RetryPolicy;

/// A mailbox's django-helpdesk settings.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DjangoHelpdeskConfig {
    /// The API root.
    pub url: String,
    /// Secret with the API credentials.
    pub secret: String,
    /// The queue's slug (its subject tag is `[<slug>-<id>]`).
    pub queue: String,
    /// What threaded machine mail becomes.
    pub machine_mail: MachineMail,
}

impl DjangoHelpdeskConfig {
    /// Read and validate the `django-helpdesk` fields of a `sink` object.
    pub fn from_fields(fields: &mut SinkFields<'_>) -> Result<Self, SinkConfigError> {
        Ok(DjangoHelpdeskConfig {
            url: fields.url("url")?,
            secret: fields.required("secret")?,
            queue: fields.required("queue")?,
            machine_mail: fields.machine_mail()?,
        })
    }

    /// `[<queue-slug>-<id>]`, as django-helpdesk writes it in subjects.
    pub fn subject_patterns(&self) -> Vec<Regex> {
        let pattern = format!(
            r"(?i)\[\s*{}-(?P<ticket>\d+)\s*\]",
            regex::escape(&self.queue)
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
            "sink kind django-helpdesk (secret {secret_name}): the django-helpdesk adapter is not available in this build"
        ))
    }
}
