//! The per-mailbox `sink` object: which helpdesk a mailbox's mail goes to, how to reach it, and
//! the defaults of its tickets. Stored in the mailbox's item in the state table:
//!
//! ```json
//! {"kind": "webhook", "url": "https://psa.example.com/api/mail-tickets", "secret": "psa-webhook"}
//! {"kind": "rt", "url": "https://rt.example.com", "secret": "rt-api", "queue": "General", "rt_name": "example.com"}
//! {"kind": "django-helpdesk", "url": "https://helpdesk.example.com/helpdesk/api/", "secret": "hd-api", "queue": "support"}
//! ```
//!
//! `secret` names a Secrets Manager secret with the credentials (never the mailbox item). Each
//! adapter owns its fields and their validation (`request_tracker.rs`, `django_helpdesk.rs`);
//! this file dispatches on `kind` and holds what they share. A mailbox item without `sink` but
//! with the older `ticket_api_url` / `ticket_api_secret` fields is a webhook.

use std::sync::Arc;

use regex::Regex;
use serde::Serialize;

use super::django_helpdesk::DjangoHelpdeskConfig;
use super::request_tracker::RtConfig;
use super::{TicketSink, WebhookAuth, WebhookTicketSink};
use crate::retry::RetryPolicy;

/// A `sink` field that is missing or wrong: the field (`sink.queue`) and what is wrong.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("field `{field}` {problem}")]
pub struct SinkConfigError {
    /// The field, `sink.<name>`.
    pub field: String,
    /// What is wrong.
    pub problem: String,
}

/// The helpdesk kinds, as `kind` names them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum SinkKind {
    /// `webhook`.
    #[serde(rename = "webhook")]
    Webhook,
    /// `rt`: Request Tracker 5.
    #[serde(rename = "rt")]
    RequestTracker,
    /// `django-helpdesk`.
    #[serde(rename = "django-helpdesk")]
    DjangoHelpdesk,
}

impl SinkKind {
    /// The configuration value.
    pub fn as_str(self) -> &'static str {
        match self {
            SinkKind::Webhook => "webhook",
            SinkKind::RequestTracker => "rt",
            SinkKind::DjangoHelpdesk => "django-helpdesk",
        }
    }
}

/// What machine mail (auto-replies, bounces) that threads to a ticket becomes there.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MachineMail {
    /// An internal comment on the ticket (default: the customer is not answered, agents see it).
    #[default]
    Comment,
    /// Correspondence, like a reply from the requestor.
    Correspond,
}

/// What a human reply becomes when its sender is not among the participants of the ticket it
/// names (the thread marker or subject tag proves the ticket, not the sender: a forwarded
/// notification, a quoted thread, or a typed subject tag reach anyone).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NonParticipant {
    /// An internal comment on the ticket, with a note naming the sender (default): agents see
    /// it, the helpdesk does not mail a stranger's text to the customer, the stranger is not
    /// added to the ticket, a closed ticket stays closed.
    #[default]
    Comment,
    /// Correspondence, like a participant's reply (trust the thread reference alone).
    Correspond,
    /// A new ticket, with a note naming the ticket the mail referred to.
    NewTicket,
}

/// Where a mailbox's tickets go.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind")]
pub enum SinkConfig {
    /// The generic JSON webhook.
    #[serde(rename = "webhook")]
    Webhook {
        /// Target URL (https; http only on loopback).
        url: String,
        /// Secret with the webhook's auth header (none: no auth header).
        secret: Option<String>,
    },
    /// Request Tracker 5 (REST 2.0).
    #[serde(rename = "rt")]
    RequestTracker(RtConfig),
    /// django-helpdesk (its REST API).
    #[serde(rename = "django-helpdesk")]
    DjangoHelpdesk(DjangoHelpdeskConfig),
}

impl SinkConfig {
    /// Validate a `sink` object.
    pub fn from_json(value: &serde_json::Value) -> Result<Self, SinkConfigError> {
        let object = value.as_object().ok_or_else(|| SinkConfigError {
            field: "sink".into(),
            problem: "must be an object with a `kind`".into(),
        })?;
        let mut fields = SinkFields::new(object);
        let kind = fields.required("kind")?;
        let config = match kind.as_str() {
            "webhook" => SinkConfig::Webhook {
                url: fields.url("url")?,
                secret: fields.string("secret")?,
            },
            "rt" => SinkConfig::RequestTracker(RtConfig::from_fields(&mut fields)?),
            "django-helpdesk" => {
                SinkConfig::DjangoHelpdesk(DjangoHelpdeskConfig::from_fields(&mut fields)?)
            }
            other => {
                return Err(SinkConfigError {
                    field: "sink.kind".into(),
                    problem: format!(
                        "is {other:?}; must be \"webhook\", \"rt\" or \"django-helpdesk\""
                    ),
                });
            }
        };
        fields.refuse_unknown()?;
        Ok(config)
    }

    /// The older top-level `ticket_api_url` / `ticket_api_secret` pair as a webhook sink.
    pub fn webhook(url: &str, secret: Option<String>) -> Result<Self, SinkConfigError> {
        validate_target_url(url).map_err(|problem| SinkConfigError {
            field: "ticket_api_url".into(),
            problem,
        })?;
        Ok(SinkConfig::Webhook {
            url: url.to_string(),
            secret,
        })
    }

    /// The kind.
    pub fn kind(&self) -> SinkKind {
        match self {
            SinkConfig::Webhook { .. } => SinkKind::Webhook,
            SinkConfig::RequestTracker(_) => SinkKind::RequestTracker,
            SinkConfig::DjangoHelpdesk(_) => SinkKind::DjangoHelpdesk,
        }
    }

    /// The helpdesk's URL (logs, errors, the sink cache key).
    pub fn url(&self) -> &str {
        match self {
            SinkConfig::Webhook { url, .. } => url,
            SinkConfig::RequestTracker(rt) => &rt.url,
            SinkConfig::DjangoHelpdesk(hd) => &hd.url,
        }
    }

    /// The credential secret's name, if any.
    pub fn secret(&self) -> Option<&str> {
        match self {
            SinkConfig::Webhook { secret, .. } => secret.as_deref(),
            SinkConfig::RequestTracker(rt) => Some(&rt.secret),
            SinkConfig::DjangoHelpdesk(hd) => Some(&hd.secret),
        }
    }

    /// The helpdesk's own ticket-number tags in subjects (e.g. `[rtname #123]`), tried by the
    /// parser after the signed layers and the default `[Ticket#N]`.
    pub fn subject_patterns(&self) -> Vec<Regex> {
        match self {
            SinkConfig::Webhook { .. } => Vec::new(),
            SinkConfig::RequestTracker(rt) => rt.subject_patterns(),
            SinkConfig::DjangoHelpdesk(hd) => hd.subject_patterns(),
        }
    }

    /// The adapter, with the credentials read from the secret (`secret_json`: its string value;
    /// None when the sink names no secret). Errors name the secret and the field, never a value.
    pub fn build(
        &self,
        http: reqwest::Client,
        secret_json: Option<&str>,
        retry: RetryPolicy,
    ) -> Result<Arc<dyn TicketSink>, String> {
        let secret_name = self.secret().unwrap_or_default();
        match self {
            SinkConfig::Webhook { url, .. } => {
                let auth = match secret_json {
                    None => WebhookAuth::None,
                    Some(json) => WebhookAuth::from_secret_json(secret_name, json)?,
                };
                Ok(Arc::new(WebhookTicketSink::new(
                    http,
                    url.clone(),
                    auth,
                    retry,
                )))
            }
            SinkConfig::RequestTracker(rt) => {
                let json = secret_json
                    .ok_or_else(|| format!("secret {secret_name}: no value was read"))?;
                rt.build(http, secret_name, json, retry)
            }
            SinkConfig::DjangoHelpdesk(hd) => {
                let json = secret_json
                    .ok_or_else(|| format!("secret {secret_name}: no value was read"))?;
                hd.build(http, secret_name, json, retry)
            }
        }
    }
}

/// Reads the fields of a `sink` object; every error names `sink.<field>`, and fields nobody
/// read are refused at the end (a typo is an error, not a silently ignored setting).
pub struct SinkFields<'a> {
    object: &'a serde_json::Map<String, serde_json::Value>,
    read: Vec<&'static str>,
}

impl<'a> SinkFields<'a> {
    fn new(object: &'a serde_json::Map<String, serde_json::Value>) -> Self {
        SinkFields {
            object,
            read: Vec::new(),
        }
    }

    /// An error for `sink.<field>`.
    pub fn error(field: &str, problem: impl Into<String>) -> SinkConfigError {
        SinkConfigError {
            field: format!("sink.{field}"),
            problem: problem.into(),
        }
    }

    /// The raw value of a field, if present and not null.
    pub fn value(&mut self, field: &'static str) -> Option<&'a serde_json::Value> {
        self.read.push(field);
        self.object.get(field).filter(|v| !v.is_null())
    }

    /// An optional string (trimmed; empty counts as absent).
    pub fn string(&mut self, field: &'static str) -> Result<Option<String>, SinkConfigError> {
        match self.value(field) {
            None => Ok(None),
            Some(serde_json::Value::String(s)) => {
                let s = s.trim();
                if s.chars().any(char::is_control) {
                    return Err(Self::error(field, "contains control characters"));
                }
                Ok((!s.is_empty()).then(|| s.to_string()))
            }
            Some(_) => Err(Self::error(field, "must be a string")),
        }
    }

    /// A required string.
    pub fn required(&mut self, field: &'static str) -> Result<String, SinkConfigError> {
        self.string(field)?
            .ok_or_else(|| Self::error(field, "is required"))
    }

    /// A required URL: https, or http on loopback hosts; no credentials in it.
    pub fn url(&mut self, field: &'static str) -> Result<String, SinkConfigError> {
        let url = self.required(field)?;
        validate_target_url(&url).map_err(|p| Self::error(field, p))?;
        Ok(url)
    }

    /// An optional whole number within `min..=max` (a JSON number or a numeric string).
    pub fn number(
        &mut self,
        field: &'static str,
        min: u64,
        max: u64,
    ) -> Result<Option<u64>, SinkConfigError> {
        let n = match self.value(field) {
            None => return Ok(None),
            Some(serde_json::Value::Number(n)) => n.as_u64(),
            Some(serde_json::Value::String(s)) => s.trim().parse::<u64>().ok(),
            Some(_) => None,
        }
        .ok_or_else(|| Self::error(field, "must be a whole number"))?;
        if !(min..=max).contains(&n) {
            return Err(Self::error(
                field,
                format!("is {n}; must be between {min} and {max}"),
            ));
        }
        Ok(Some(n))
    }

    /// An optional object of string values (custom fields by name).
    pub fn string_map(
        &mut self,
        field: &'static str,
    ) -> Result<std::collections::BTreeMap<String, String>, SinkConfigError> {
        let Some(value) = self.value(field) else {
            return Ok(Default::default());
        };
        let object = value
            .as_object()
            .ok_or_else(|| Self::error(field, "must be an object of strings"))?;
        object
            .iter()
            .map(|(k, v)| match v {
                serde_json::Value::String(s) if !s.chars().any(char::is_control) => {
                    Ok((k.clone(), s.clone()))
                }
                serde_json::Value::Number(n) => Ok((k.clone(), n.to_string())),
                _ => Err(Self::error(
                    field,
                    format!("entry {k:?} must be a string without control characters"),
                )),
            })
            .collect()
    }

    /// `machine_mail`: `comment` (default) or `correspond`.
    pub fn machine_mail(&mut self) -> Result<MachineMail, SinkConfigError> {
        match self.string("machine_mail")?.as_deref() {
            None | Some("comment") => Ok(MachineMail::Comment),
            Some("correspond") => Ok(MachineMail::Correspond),
            Some(other) => Err(Self::error(
                "machine_mail",
                format!("is {other:?}; must be \"comment\" or \"correspond\""),
            )),
        }
    }

    /// `non_participant`: `comment` (default), `correspond` or `new_ticket`.
    pub fn non_participant(&mut self) -> Result<NonParticipant, SinkConfigError> {
        match self.string("non_participant")?.as_deref() {
            None | Some("comment") => Ok(NonParticipant::Comment),
            Some("correspond") => Ok(NonParticipant::Correspond),
            Some("new_ticket") => Ok(NonParticipant::NewTicket),
            Some(other) => Err(Self::error(
                "non_participant",
                format!("is {other:?}; must be \"comment\", \"correspond\" or \"new_ticket\""),
            )),
        }
    }

    fn refuse_unknown(&self) -> Result<(), SinkConfigError> {
        match self
            .object
            .keys()
            .find(|k| k.as_str() != "kind" && !self.read.contains(&k.as_str()))
        {
            Some(unknown) => Err(Self::error(
                unknown,
                "is not a field of this sink kind (typo?)",
            )),
            None => Ok(()),
        }
    }
}

/// A credential secret's JSON, read field by field: every error names the secret and the field
/// and never echoes a value (a key pasted into the wrong field must not reach a log).
pub struct SecretJson<'a> {
    name: &'a str,
    value: serde_json::Value,
}

impl<'a> SecretJson<'a> {
    /// Parse the secret `name`'s string value.
    pub fn parse(name: &'a str, json: &str) -> Result<Self, String> {
        let value =
            serde_json::from_str(json).map_err(|_| format!("secret {name}: not valid JSON"))?;
        Ok(SecretJson { name, value })
    }

    /// A non-empty string field.
    pub fn field(&self, field: &str) -> Result<String, String> {
        self.value
            .get(field)
            .and_then(serde_json::Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .ok_or_else(|| format!("secret {}: field `{field}` missing or empty", self.name))
    }
}

/// Check a target URL: https anywhere, http only on loopback hosts, no `user:password@`
/// (credentials belong in the secret; a URL is logged and shown in errors).
pub fn validate_target_url(url: &str) -> Result<(), String> {
    let parsed = url::Url::parse(url).map_err(|e| format!("is not a URL ({e})"))?;
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(
            "must not contain credentials (user:password@); put them in the sink's secret".into(),
        );
    }
    match parsed.scheme() {
        "https" => Ok(()),
        "http" => {
            let loopback = match parsed.host() {
                Some(url::Host::Domain(d)) => d == "localhost",
                Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
                Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
                None => false,
            };
            if loopback {
                Ok(())
            } else {
                Err("must be https (http is allowed only for localhost/127.0.0.1)".into())
            }
        }
        other => Err(format!("has scheme {other:?}; must be https")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn kinds_dispatch_and_errors_name_the_field() {
        let webhook = SinkConfig::from_json(
            &json!({"kind": "webhook", "url": "https://psa.example.com/t", "secret": "s"}),
        )
        .unwrap();
        assert_eq!(webhook.kind(), SinkKind::Webhook);
        assert_eq!(webhook.secret(), Some("s"));
        let err = SinkConfig::from_json(&json!({"kind": "zendesk"})).unwrap_err();
        assert_eq!(err.field, "sink.kind");
        let err = SinkConfig::from_json(&json!({"kind": "webhook"})).unwrap_err();
        assert_eq!(err.field, "sink.url");
        let err =
            SinkConfig::from_json(&json!({"kind": "webhook", "url": "http://psa.example.com/"}))
                .unwrap_err();
        assert!(err.problem.contains("https"), "{err}");
        let err = SinkConfig::from_json(
            &json!({"kind": "webhook", "url": "https://psa.example.com/", "secert": "s"}),
        )
        .unwrap_err();
        assert_eq!(err.field, "sink.secert");
        assert!(SinkConfig::from_json(&json!("webhook")).is_err());
    }

    #[test]
    fn the_sink_serialises_with_its_kind() {
        let sink = SinkConfig::webhook("https://psa.example.com/t", None).unwrap();
        assert_eq!(
            serde_json::to_value(&sink).unwrap(),
            json!({"kind": "webhook", "url": "https://psa.example.com/t", "secret": null})
        );
    }

    #[test]
    fn target_urls_are_https_or_loopback_http_without_credentials() {
        assert!(validate_target_url("https://psa.example.com/x").is_ok());
        assert!(validate_target_url("http://127.0.0.1:8080/x").is_ok());
        assert!(validate_target_url("http://localhost/x").is_ok());
        assert!(validate_target_url("http://psa.example.com/x").is_err());
        assert!(validate_target_url("https://u:p@psa.example.com/x").is_err());
        assert!(validate_target_url("ftp://psa.example.com/x").is_err());
    }
}
