//! django-helpdesk through its REST API (`/helpdesk/api/`, django-helpdesk 2.6).
//!
//! Configuration (`sink` of a mailbox):
//!
//! ```json
//! {"kind": "django-helpdesk", "url": "https://helpdesk.example.com/helpdesk/api/",
//!  "secret": "helpdesk-api", "queue": "support", "queue_id": 1,
//!  "priority": 3, "assigned_to": 7, "custom_fields": {"contract": "gold"},
//!  "key_field": "mailbridge_key", "thread_queues": ["billing"], "machine_mail": "comment",
//!  "non_participant": "comment"}
//! ```
//!
//! `queue` is the queue's slug (its subject tag is `[<slug>-<ticket id>]`) and `queue_id` its
//! number (the API names queues only by number and shows no slugs, so both are needed).
//! The secret is `{"type": "token", "token": "..."}` (`Authorization: Token ...`, DRF's
//! token authentication) or `{"type": "basic", "username": "...", "password": "..."}`; the API
//! answers only staff users.
//!
//! # Calls
//! - new ticket: `GET followups/?page=last` (and earlier pages: the search for an earlier
//!   delivery, below), `POST tickets/` (JSON: queue, title, description, submitter_email,
//!   priority, assigned_to, `custom_<key_field>` = the idempotency key, `custom_<name>`), then one
//!   `POST followups-attachments/` per attachment (multipart) onto the ticket's opening follow-up.
//! - reply / machine mail: `GET tickets/<id>/` (exists? merged into another? already has this
//!   mail? is the sender a participant?), `POST followups/` (JSON: ticket, comment, public,
//!   new_status), then the attachments onto that follow-up. Never a follow-up `title`:
//!   django-helpdesk renames the ticket to it.
//! - a reply whose sender is not a participant (the ticket's `submitter_email`, or an address in
//!   the `email_recipients` of one of its follow-ups, the addresses the helpdesk mailed about
//!   it; the API lists no CCs otherwise): an internal follow-up with a note naming the sender
//!   (`non_participant`: `comment`, the default), a public one (`correspond`) or a new ticket
//!   (`new_ticket`). The thread reference proves the ticket, not the sender.
//! - check: `OPTIONS tickets/` (credentials, staff, the custom fields exist and are long
//!   enough) and a `POST tickets/` without a title (rejected by validation before anything is
//!   written) that names the queue, owner and custom field values: the answer's field errors say
//!   which of them the helpdesk does not accept.
//!
//! # No duplicates without idempotency keys
//! django-helpdesk has no idempotency keys and its API filters tickets by nothing but status.
//! Everything mailbridge writes ends with the line `mailbridge-key: <key>`: a ticket's
//! description (which django-helpdesk copies into the ticket's opening follow-up) and each
//! follow-up; the ticket also keeps the key in a custom field (`key_field`). Before opening a
//! ticket the adapter reads the follow-ups newest first (`?page=last`, then earlier pages) until
//! it finds the key line or reaches follow-ups written before the mail arrived (an hour of clock
//! margin); before adding a follow-up it reads the ticket's follow-ups. An attachment that is
//! already there (same name and size) is not uploaded again. Writes are never retried blind
//! within a run: a write whose answer was lost is found by the search on the next run. (The
//! follow-up list, not the ticket list: django-helpdesk 2.6 loads the custom fields of every
//! ticket it has for each ticket-list or ticket request, so those cost it in proportion to its
//! size; the follow-up list costs it only the page.)
//!
//! # The helpdesk's quirks handled here
//! - A follow-up's comment is rendered as a Django template before it is stored: `{{ x }}`
//!   vanishes, `{# #}` is dropped and a lone `{%` or `%}` makes the API answer 500. Every brace
//!   is sent as a template literal (`{{ "{" }}`), so the stored text is the mail's text.
//! - `description` is required in practice (the API answers 500 without it) and `title` is at
//!   most 200 characters.
//! - Attachments are checked against the helpdesk's `HELPDESK_VALID_EXTENSIONS`; a refused one
//!   (400) is listed, with the helpdesk's answer, in an internal follow-up on the ticket, and the
//!   rest of the mail is delivered.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;
use base64::Engine as _;
use regex::Regex;
use secrecy::{ExposeSecret as _, SecretString};
use serde::Serialize;
use serde_json::{Value, json};
use tokio::time::Instant;

use super::config::{MachineMail, NonParticipant, SinkConfigError, SinkFields};
use super::{
    DeliveryPlan, SenderCheck, SinkCheck, TicketPayload, TicketReceipt, TicketSink, TicketSinkError,
};
use crate::retry::{RetryPolicy, excerpt, send_with_retry};

/// The custom field the idempotency key goes in, unless `key_field` says otherwise.
pub const DEFAULT_KEY_FIELD: &str = "mailbridge_key";
/// django-helpdesk's longest ticket title.
const TITLE_MAX_CHARS: usize = 200;
/// Tickets per page when searching for an earlier delivery.
const SEARCH_PAGE_SIZE: u32 = 50;
/// How far before the mail's arrival the search still looks (clock differences between the mail
/// server and the helpdesk).
const SEARCH_CLOCK_MARGIN: chrono::TimeDelta = chrono::TimeDelta::hours(1);
/// django-helpdesk's status numbers.
const STATUS_CLOSED: u64 = 4;
const STATUS_REOPENED: u64 = 2;

/// A mailbox's django-helpdesk settings.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DjangoHelpdeskConfig {
    /// The API root, e.g. `https://helpdesk.example.com/helpdesk/api/`.
    pub url: String,
    /// Secret with the API credentials.
    pub secret: String,
    /// The queue's slug (its subject tag is `[<slug>-<id>]`).
    pub queue: String,
    /// The queue's number (what the API takes).
    pub queue_id: u64,
    /// Ticket priority, 1 (critical) to 5 (very low); default 3.
    pub priority: u8,
    /// The user number new tickets are assigned to.
    pub assigned_to: Option<u64>,
    /// Values of the helpdesk's custom fields on new tickets, by field name.
    pub custom_fields: BTreeMap<String, String>,
    /// The custom field holding the idempotency key (a text field of at least 64 characters).
    pub key_field: String,
    /// More queue slugs whose subject tags thread (tickets moved to another queue).
    pub thread_queues: Vec<String>,
    /// What threaded machine mail becomes.
    pub machine_mail: MachineMail,
    /// What a reply becomes when its sender is not a participant of the ticket.
    pub non_participant: NonParticipant,
}

fn is_slug(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

impl DjangoHelpdeskConfig {
    /// Read and validate the `django-helpdesk` fields of a `sink` object.
    pub fn from_fields(fields: &mut SinkFields<'_>) -> Result<Self, SinkConfigError> {
        let url = fields.url("url")?;
        let secret = fields.required("secret")?;
        let queue = fields.required("queue")?;
        if !is_slug(&queue) {
            return Err(SinkFields::error(
                "queue",
                "must be the queue's slug (letters, digits, - and _), as in its subject tag [slug-123]",
            ));
        }
        let queue_id = fields
            .number("queue_id", 1, u64::from(u32::MAX))?
            .ok_or_else(|| {
                SinkFields::error(
                    "queue_id",
                    "is required: the queue's number (the API names queues by number)",
                )
            })?;
        let priority = fields.number("priority", 1, 5)?.unwrap_or(3) as u8;
        let assigned_to = fields.number("assigned_to", 1, u64::from(u32::MAX))?;
        let key_field = fields
            .string("key_field")?
            .unwrap_or_else(|| DEFAULT_KEY_FIELD.to_string());
        if !is_slug(&key_field) {
            return Err(SinkFields::error(
                "key_field",
                "must be a custom field name (letters, digits, - and _)",
            ));
        }
        let custom_fields = fields.string_map("custom_fields")?;
        if let Some(bad) = custom_fields.keys().find(|k| !is_slug(k)) {
            return Err(SinkFields::error(
                "custom_fields",
                format!("has {bad:?}, which is not a custom field name (letters, digits, - and _)"),
            ));
        }
        if custom_fields.contains_key(&key_field) {
            return Err(SinkFields::error(
                "custom_fields",
                format!("sets {key_field:?}, the field mailbridge keeps its key in"),
            ));
        }
        let thread_queues = match fields.value("thread_queues") {
            None => Vec::new(),
            Some(Value::Array(items)) => items
                .iter()
                .map(|item| match item.as_str().map(str::trim) {
                    Some(slug) if is_slug(slug) => Ok(slug.to_string()),
                    _ => Err(SinkFields::error(
                        "thread_queues",
                        "must be a list of queue slugs",
                    )),
                })
                .collect::<Result<_, _>>()?,
            Some(_) => {
                return Err(SinkFields::error(
                    "thread_queues",
                    "must be a list of queue slugs",
                ));
            }
        };
        Ok(DjangoHelpdeskConfig {
            url,
            secret,
            queue,
            queue_id,
            priority,
            assigned_to,
            custom_fields,
            key_field,
            thread_queues,
            machine_mail: fields.machine_mail()?,
            non_participant: fields.non_participant()?,
        })
    }

    /// `[<queue-slug>-<id>]` for the queue and `thread_queues`, as django-helpdesk writes it in
    /// subjects (the id is the ticket's, unique across queues).
    pub fn subject_patterns(&self) -> Vec<Regex> {
        let slugs: Vec<String> = std::iter::once(&self.queue)
            .chain(&self.thread_queues)
            .map(|s| regex::escape(s))
            .collect();
        let pattern = format!(r"(?i)\[\s*(?:{})-(?P<ticket>\d+)\s*\]", slugs.join("|"));
        Regex::new(&pattern).into_iter().collect()
    }

    /// The adapter.
    pub fn build(
        &self,
        http: reqwest::Client,
        secret_name: &str,
        secret_json: &str,
        retry: RetryPolicy,
    ) -> Result<Arc<dyn TicketSink>, String> {
        let auth = DjangoAuth::from_secret_json(secret_name, secret_json)?;
        Ok(Arc::new(DjangoHelpdeskSink::new(
            http,
            self.clone(),
            auth,
            retry,
        )))
    }
}

/// How the adapter authenticates, from the sink's secret (JSON).
#[derive(Clone)]
pub enum DjangoAuth {
    /// `Authorization: Token <token>` (DRF token authentication).
    Token(SecretString),
    /// HTTP Basic.
    Basic {
        /// The user name.
        username: String,
        /// The password.
        password: SecretString,
    },
}

impl std::fmt::Debug for DjangoAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DjangoAuth::Token(_) => f.write_str("Token([redacted])"),
            DjangoAuth::Basic { username, .. } => write!(f, "Basic({username}, [redacted])"),
        }
    }
}

impl DjangoAuth {
    /// Parse the secret's JSON; errors name the field and never echo a value.
    pub fn from_secret_json(secret_name: &str, json: &str) -> Result<Self, String> {
        let secret = super::SecretJson::parse(secret_name, json)?;
        let field = |name: &str| secret.field(name);
        match field("type")?.as_str() {
            "token" => Ok(DjangoAuth::Token(field("token")?.into())),
            "basic" => Ok(DjangoAuth::Basic {
                username: field("username")?,
                password: field("password")?.into(),
            }),
            _ => Err(format!(
                "secret {secret_name}: field `type` must be \"token\" or \"basic\""
            )),
        }
    }
}

/// The django-helpdesk adapter.
pub struct DjangoHelpdeskSink {
    http: reqwest::Client,
    api: String,
    config: DjangoHelpdeskConfig,
    auth: DjangoAuth,
    retry: RetryPolicy,
    /// `OPTIONS tickets/` showed the key field (checked once per adapter).
    key_field_seen: AtomicBool,
}

impl std::fmt::Debug for DjangoHelpdeskSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DjangoHelpdeskSink")
            .field("api", &self.api)
            .field("queue", &self.config.queue)
            .field("auth", &self.auth)
            .finish()
    }
}

/// A ticket as the API shows it (the fields the adapter reads).
struct Ticket {
    id: u64,
    status: u64,
    json: Value,
}

impl Ticket {
    fn from_json(json: Value) -> Option<Ticket> {
        Some(Ticket {
            id: json.get("id")?.as_u64()?,
            status: json.get("status").and_then(Value::as_u64).unwrap_or(0),
            json,
        })
    }

    fn followups(&self) -> &[Value] {
        self.json
            .get("followup_set")
            .and_then(Value::as_array)
            .map_or(&[], Vec::as_slice)
    }

    /// The follow-up the ticket's own attachments go on: the opening one.
    fn opening_followup(&self) -> Option<&Value> {
        self.followups()
            .iter()
            .min_by_key(|f| f.get("id").and_then(Value::as_u64).unwrap_or(u64::MAX))
    }

    /// Whether `address` is a participant: the ticket's submitter, or an address the helpdesk
    /// mailed about one of its follow-ups (`email_recipients`: the submitter, its CCs, the
    /// queue's CC addresses and the assigned agent, as far as they were notified). The API shows
    /// no other list of the ticket's CCs.
    fn has_participant(&self, address: &str) -> bool {
        let same = |value: &Value| {
            value
                .as_str()
                .is_some_and(|a| a.trim().eq_ignore_ascii_case(address.trim()))
        };
        self.json.get("submitter_email").is_some_and(same)
            || self.followups().iter().any(|f| {
                f.get("email_recipients")
                    .and_then(Value::as_array)
                    .is_some_and(|recipients| recipients.iter().any(same))
            })
    }

    /// The follow-up whose comment ends with `marker` (an earlier delivery of this mail).
    fn followup_with(&self, marker: &str) -> Option<&Value> {
        self.followups().iter().find(|f| {
            f.get("comment")
                .and_then(Value::as_str)
                .is_some_and(|c| c.lines().any(|line| line.trim() == marker))
        })
    }
}

/// An attachment ready to upload.
struct Upload {
    filename: String,
    content_type: String,
    bytes: Vec<u8>,
}

/// The line that marks a follow-up as this mail's (the key of its delivery).
fn key_marker(key: &str) -> String {
    format!("mailbridge-key: {key}")
}

/// The line that marks the note listing the attachments the helpdesk refused.
fn refused_note_marker(key: &str) -> String {
    format!("mailbridge-key: {key} (refused attachments)")
}

/// The comment as django-helpdesk must receive it to store `text` unchanged: it renders
/// follow-up comments as Django templates, so every brace becomes a template literal
/// (`{{ "{" }}`). The result has no `{%` or `%}` (which django-helpdesk rewrites first).
pub fn template_literal(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for ch in text.chars() {
        match ch {
            '{' => out.push_str(r#"{{ "{" }}"#),
            '}' => out.push_str(r#"{{ "}" }}"#),
            other => out.push(other),
        }
    }
    out
}

/// The ticket title: the subject on one line, at most 200 characters, `(no subject)` if empty.
pub fn ticket_title(subject: &str) -> String {
    let one_line = subject.split_whitespace().collect::<Vec<_>>().join(" ");
    if one_line.is_empty() {
        return "(no subject)".to_string();
    }
    one_line.chars().take(TITLE_MAX_CHARS).collect()
}

/// `Name <address>`, the address, or a placeholder.
fn sender(payload: &TicketPayload) -> String {
    match &payload.draft.from {
        Some(from) => match from.name.as_deref().map(str::trim) {
            Some(name) if !name.is_empty() => format!("{name} <{}>", from.address),
            _ => from.address.clone(),
        },
        None => "(no sender)".to_string(),
    }
}

/// The files to upload: every attachment with content, and the raw message of a problem mail.
fn uploads(payload: &TicketPayload) -> Result<Vec<Upload>, TicketSinkError> {
    let engine = base64::engine::general_purpose::STANDARD;
    let mut uploads = Vec::new();
    for (i, attachment) in payload.attachments.iter().enumerate() {
        let Some(content) = &attachment.content_base64 else {
            continue;
        };
        let bytes = engine
            .decode(content)
            .map_err(|e| TicketSinkError::Encode(format!("attachment {i}: base64: {e}")))?;
        let filename = attachment
            .filename
            .as_deref()
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .map_or_else(|| format!("attachment-{}", i + 1), str::to_string);
        uploads.push(Upload {
            filename,
            content_type: attachment.content_type.clone(),
            bytes,
        });
    }
    if let Some(raw) = &payload.raw_message_base64 {
        let bytes = engine
            .decode(raw)
            .map_err(|e| TicketSinkError::Encode(format!("raw message: base64: {e}")))?;
        uploads.push(Upload {
            filename: "original-message.eml".into(),
            content_type: "message/rfc822".into(),
            bytes,
        });
    }
    Ok(uploads)
}

/// A write is sent once per run: its answer may be lost after the helpdesk acted on it, and only
/// the search for an earlier delivery (next run) may tell.
fn once(policy: &RetryPolicy) -> RetryPolicy {
    RetryPolicy {
        max_attempts: 1,
        ..policy.clone()
    }
}

/// The helpdesk's field errors (`{"queue": ["Invalid pk ..."]}`) as `field: message` pairs.
fn field_errors(body: &str) -> BTreeMap<String, String> {
    let Ok(Value::Object(map)) = serde_json::from_str::<Value>(body) else {
        return BTreeMap::new();
    };
    map.into_iter()
        .map(|(field, messages)| {
            let text = match messages {
                Value::Array(items) => items
                    .iter()
                    .map(|m| m.as_str().map_or_else(|| m.to_string(), str::to_string))
                    .collect::<Vec<_>>()
                    .join(" "),
                other => other.to_string(),
            };
            (field, text)
        })
        .collect()
}

impl DjangoHelpdeskSink {
    /// The adapter for `config`, authenticating with `auth`.
    pub fn new(
        http: reqwest::Client,
        config: DjangoHelpdeskConfig,
        auth: DjangoAuth,
        retry: RetryPolicy,
    ) -> Self {
        let api = if config.url.ends_with('/') {
            config.url.clone()
        } else {
            format!("{}/", config.url)
        };
        DjangoHelpdeskSink {
            http,
            api,
            config,
            auth,
            retry,
            key_field_seen: AtomicBool::new(false),
        }
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let request = self
            .http
            .request(method, format!("{}{path}", self.api))
            .header(reqwest::header::ACCEPT, "application/json");
        match &self.auth {
            DjangoAuth::Token(token) => request.header(
                reqwest::header::AUTHORIZATION,
                format!("Token {}", token.expose_secret()),
            ),
            DjangoAuth::Basic { username, password } => {
                request.basic_auth(username, Some(password.expose_secret()))
            }
        }
    }

    /// Send (retrying per `policy`) and read the answer: 401/403 are `CredentialsRefused`,
    /// giving up is `Unavailable`; every other status is the caller's to read.
    async fn call(
        &self,
        policy: &RetryPolicy,
        deadline: Instant,
        attempts: &mut u32,
        what: &str,
        build: impl FnMut() -> reqwest::RequestBuilder,
    ) -> Result<(reqwest::StatusCode, String), TicketSinkError> {
        let answered = send_with_retry(policy, deadline, build)
            .await
            .map_err(|gave_up| {
                *attempts += gave_up.attempts;
                TicketSinkError::Unavailable {
                    target: self.api.clone(),
                    attempts: *attempts,
                    detail: format!("{what}: {}", gave_up.detail),
                }
            })?;
        *attempts += answered.attempts;
        let status = answered.response.status();
        let body = crate::http::read_text(answered.response, crate::http::MAX_ANSWER_BYTES)
            .await
            .map_err(|e| TicketSinkError::Unavailable {
                target: self.api.clone(),
                attempts: *attempts,
                detail: format!("{what}: {e}"),
            })?;
        if matches!(status.as_u16(), 401 | 403) {
            return Err(TicketSinkError::CredentialsRefused {
                target: self.api.clone(),
                status: status.as_u16(),
                detail: format!("{what}: {}", excerpt(&body)),
            });
        }
        Ok((status, body))
    }

    /// A 2xx answer's JSON; anything else as the error it means for a read.
    fn read_json(
        &self,
        what: &str,
        status: reqwest::StatusCode,
        body: &str,
    ) -> Result<Value, TicketSinkError> {
        if !status.is_success() {
            return Err(self.config_error(format!(
                "{what}: HTTP {}: {} (is `url` the django-helpdesk API root, e.g. https://helpdesk.example.com/helpdesk/api/?)",
                status.as_u16(),
                excerpt(body)
            )));
        }
        serde_json::from_str(body).map_err(|_| {
            self.config_error(format!(
                "{what}: the answer is not JSON ({}); is `url` the django-helpdesk API root?",
                excerpt(body)
            ))
        })
    }

    fn config_error(&self, detail: String) -> TicketSinkError {
        TicketSinkError::Config {
            target: self.api.clone(),
            detail,
        }
    }

    fn rejected(&self, status: reqwest::StatusCode, what: &str, body: &str) -> TicketSinkError {
        TicketSinkError::Rejected {
            target: self.api.clone(),
            status: status.as_u16(),
            body: format!("{what}: {}", excerpt(body)),
        }
    }

    /// `OPTIONS tickets/`: the fields a new ticket may have (staff with create rights only).
    async fn ticket_fields(
        &self,
        deadline: Instant,
        attempts: &mut u32,
    ) -> Result<serde_json::Map<String, Value>, TicketSinkError> {
        let what = "OPTIONS tickets/";
        let (status, body) = self
            .call(&self.retry, deadline, attempts, what, || {
                self.request(reqwest::Method::OPTIONS, "tickets/")
            })
            .await?;
        let meta = self.read_json(what, status, &body)?;
        meta.pointer("/actions/POST")
            .and_then(Value::as_object)
            .cloned()
            .ok_or_else(|| {
                self.config_error(format!(
                    "{what}: the API offers no ticket creation to this user (is it a staff user?)"
                ))
            })
    }

    /// The key field exists and holds a key (64 characters); other custom fields exist.
    fn check_fields(&self, fields: &serde_json::Map<String, Value>) -> Result<(), TicketSinkError> {
        let key_field = format!("custom_{}", self.config.key_field);
        let Some(key) = fields.get(&key_field) else {
            return Err(self.config_error(format!(
                "the helpdesk has no custom field `{}`: create it (Admin → Helpdesk → Custom fields: \
                 name {}, type Text, max length 100, staff only) or set `sink.key_field`",
                self.config.key_field, self.config.key_field
            )));
        };
        if let Some(max) = key.get("max_length").and_then(Value::as_u64)
            && max < 64
        {
            return Err(self.config_error(format!(
                "custom field `{}` holds at most {max} characters; the key needs 64",
                self.config.key_field
            )));
        }
        if let Some(missing) = self
            .config
            .custom_fields
            .keys()
            .find(|name| !fields.contains_key(&format!("custom_{name}")))
        {
            return Err(self.config_error(format!(
                "the helpdesk has no custom field `{missing}` (sink.custom_fields)"
            )));
        }
        Ok(())
    }

    async fn ensure_key_field(
        &self,
        deadline: Instant,
        attempts: &mut u32,
    ) -> Result<(), TicketSinkError> {
        if self.key_field_seen.load(Ordering::Relaxed) {
            return Ok(());
        }
        let fields = self.ticket_fields(deadline, attempts).await?;
        self.check_fields(&fields)?;
        self.key_field_seen.store(true, Ordering::Relaxed);
        Ok(())
    }

    /// The ticket `number` names, following merges; None when there is none.
    async fn target_ticket(
        &self,
        number: &str,
        deadline: Instant,
        attempts: &mut u32,
    ) -> Result<Option<Ticket>, TicketSinkError> {
        let Ok(mut id) = number.trim().parse::<u64>() else {
            return Ok(None);
        };
        // django-helpdesk merges a ticket into another; mail about it belongs to the survivor.
        for _ in 0..5 {
            let what = format!("GET tickets/{id}/");
            let (status, body) = self
                .call(&self.retry, deadline, attempts, &what, || {
                    self.request(reqwest::Method::GET, &format!("tickets/{id}/"))
                })
                .await?;
            if status == reqwest::StatusCode::NOT_FOUND && body.contains("\"detail\"") {
                return Ok(None);
            }
            let json = self.read_json(&what, status, &body)?;
            let ticket = Ticket::from_json(json)
                .ok_or_else(|| self.config_error(format!("{what}: no ticket id in the answer")))?;
            match ticket.json.get("merged_to").and_then(Value::as_u64) {
                Some(into) if into != ticket.id => id = into,
                _ => return Ok(Some(ticket)),
            }
        }
        Ok(None)
    }

    /// An earlier delivery of the mail with `key`: the follow-up whose comment has the key line
    /// (a ticket's opening follow-up is its description, which ends with it), among the
    /// follow-ups written since the mail arrived, newest first. The follow-up list, unlike the
    /// ticket list, costs the helpdesk only the page it returns.
    async fn find_followup_by_key(
        &self,
        key: &str,
        received_at: chrono::DateTime<chrono::Utc>,
        deadline: Instant,
        attempts: &mut u32,
    ) -> Result<Option<Value>, TicketSinkError> {
        let marker = key_marker(key);
        let cutoff = received_at - SEARCH_CLOCK_MARGIN;
        let mut page: Option<u64> = None;
        loop {
            let which = page.map_or_else(|| "last".to_string(), |p| p.to_string());
            let path = format!("followups/?page={which}&page_size={SEARCH_PAGE_SIZE}");
            let what = format!("GET {path}");
            let (status, body) = self
                .call(&self.retry, deadline, attempts, &what, || {
                    self.request(reqwest::Method::GET, &path)
                })
                .await?;
            let json = self.read_json(&what, status, &body)?;
            let results = json
                .get("results")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            // oldest first (django-helpdesk orders follow-ups by date)
            for followup in results.into_iter().rev() {
                if followup
                    .get("comment")
                    .and_then(Value::as_str)
                    .is_some_and(|c| c.lines().any(|line| line.trim() == marker))
                {
                    return Ok(Some(followup));
                }
                let written = followup
                    .get("date")
                    .and_then(Value::as_str)
                    .and_then(|d| chrono::DateTime::parse_from_rfc3339(d).ok());
                if written.is_some_and(|d| d < cutoff) {
                    return Ok(None);
                }
            }
            let current = match page {
                Some(p) => p,
                None => {
                    let count = json.get("count").and_then(Value::as_u64).unwrap_or(0);
                    count.div_ceil(u64::from(SEARCH_PAGE_SIZE)).max(1)
                }
            };
            if current <= 1 {
                return Ok(None);
            }
            page = Some(current - 1);
        }
    }

    /// Upload the files the follow-up does not have yet (same name and size); returns the ones
    /// the helpdesk refused, with its answer.
    async fn attach(
        &self,
        followup: &Value,
        uploads: &[Upload],
        deadline: Instant,
        attempts: &mut u32,
    ) -> Result<Vec<(String, String)>, TicketSinkError> {
        let followup_id = followup.get("id").and_then(Value::as_u64).ok_or_else(|| {
            self.config_error("a follow-up without an id in the answer".to_string())
        })?;
        // An earlier, interrupted delivery may have uploaded some already (each counts once).
        let mut present: Vec<(String, u64)> = followup
            .get("followupattachment_set")
            .and_then(Value::as_array)
            .map(|set| {
                set.iter()
                    .filter_map(|a| {
                        Some((
                            a.get("filename")?.as_str()?.to_string(),
                            a.get("size")?.as_u64()?,
                        ))
                    })
                    .collect()
            })
            .unwrap_or_default();
        let mut refused = Vec::new();
        let write = once(&self.retry);
        for upload in uploads {
            let size = upload.bytes.len() as u64;
            if let Some(i) = present
                .iter()
                .position(|(name, s)| *name == upload.filename && *s == size)
            {
                present.swap_remove(i);
                continue;
            }
            let what = format!("POST followups-attachments/ ({})", upload.filename);
            let (status, body) = self
                .call(&write, deadline, attempts, &what, || {
                    let part = || {
                        reqwest::multipart::Part::bytes(upload.bytes.clone())
                            .file_name(upload.filename.clone())
                    };
                    // a content type reqwest cannot parse goes only in `mime_type`
                    let file = part()
                        .mime_str(&upload.content_type)
                        .unwrap_or_else(|_| part());
                    let form = reqwest::multipart::Form::new()
                        .text("followup", followup_id.to_string())
                        .text("filename", upload.filename.clone())
                        .text("mime_type", upload.content_type.clone())
                        .text("size", size.to_string())
                        .part("file", file);
                    self.request(reqwest::Method::POST, "followups-attachments/")
                        .multipart(form)
                })
                .await?;
            match status.as_u16() {
                200..=299 => {}
                400 | 413 | 415 | 422 => {
                    tracing::warn!(
                        helpdesk = %self.api,
                        file = %upload.filename,
                        status = status.as_u16(),
                        answer = %excerpt(&body),
                        "the helpdesk refused an attachment; listed in a note on the ticket"
                    );
                    refused.push((
                        format!(
                            "{} ({}, {size} bytes)",
                            upload.filename, upload.content_type
                        ),
                        format!("HTTP {}: {}", status.as_u16(), excerpt(&body)),
                    ));
                }
                _ => {
                    return Err(self.config_error(format!(
                        "{what}: HTTP {}: {}",
                        status.as_u16(),
                        excerpt(&body)
                    )));
                }
            }
        }
        Ok(refused)
    }

    /// POST a follow-up (comment sent as a template literal); its JSON.
    async fn post_followup(
        &self,
        ticket: u64,
        comment: &str,
        public: bool,
        new_status: Option<u64>,
        deadline: Instant,
        attempts: &mut u32,
    ) -> Result<Value, TicketSinkError> {
        let mut body = json!({
            "ticket": ticket,
            "comment": template_literal(comment),
            "public": public,
        });
        if let Some(status) = new_status {
            body["new_status"] = json!(status);
        }
        let what = format!("POST followups/ (ticket {ticket})");
        let (status, answer) = self
            .call(&once(&self.retry), deadline, attempts, &what, || {
                self.request(reqwest::Method::POST, "followups/")
                    .json(&body)
            })
            .await?;
        match status.as_u16() {
            200..=299 => serde_json::from_str(&answer)
                .map_err(|_| self.config_error(format!("{what}: the answer is not JSON"))),
            404 => Err(self.config_error(format!(
                "{what}: HTTP 404: {} (is `url` the django-helpdesk API root?)",
                excerpt(&answer)
            ))),
            _ => Err(self.rejected(status, &what, &answer)),
        }
    }

    /// After the mail's record (ticket or follow-up) exists: its attachments, and a note on the
    /// ticket listing the ones the helpdesk refused (once).
    async fn complete(
        &self,
        ticket: u64,
        followup: &Value,
        key: &str,
        payload: &TicketPayload,
        deadline: Instant,
        attempts: &mut u32,
    ) -> Result<(), TicketSinkError> {
        let uploads = uploads(payload)?;
        let refused = self.attach(followup, &uploads, deadline, attempts).await?;
        if refused.is_empty() {
            return Ok(());
        }
        let marker = refused_note_marker(key);
        // The note may exist from an earlier, interrupted delivery.
        if let Some(current) = self
            .target_ticket(&ticket.to_string(), deadline, attempts)
            .await?
            && current.followup_with(&marker).is_some()
        {
            return Ok(());
        }
        let list: Vec<String> = refused
            .iter()
            .map(|(file, answer)| format!("- {file}: {answer}"))
            .collect();
        let note = format!(
            "[mailbridge] The helpdesk refused these attachments of the mail from {} (Message-ID {}); \
             they are in the original mail only:\n{}\n\n{marker}",
            sender(payload),
            payload.draft.message_id.as_deref().unwrap_or("none"),
            list.join("\n"),
        );
        self.post_followup(ticket, &note, false, None, deadline, attempts)
            .await?;
        Ok(())
    }

    async fn open_ticket(
        &self,
        payload: &TicketPayload,
        key: &str,
        note: Option<&str>,
        deadline: Instant,
        attempts: &mut u32,
    ) -> Result<TicketReceipt, TicketSinkError> {
        let action = DeliveryPlan::NewTicket {
            queue: Some(self.config.queue.clone()),
        };
        if let Some(earlier) = self
            .find_followup_by_key(key, payload.received_at, deadline, attempts)
            .await?
        {
            let ticket = earlier
                .get("ticket")
                .and_then(Value::as_u64)
                .ok_or_else(|| {
                    self.config_error("GET followups/: a follow-up without its ticket".to_string())
                })?;
            tracing::info!(
                helpdesk = %self.api,
                ticket,
                "an earlier delivery of this mail opened the ticket; completing it, not opening another"
            );
            self.complete(ticket, &earlier, key, payload, deadline, attempts)
                .await?;
            return Ok(TicketReceipt {
                action,
                ticket_id: Some(ticket.to_string()),
                attempts: *attempts,
                replayed: true,
                sender: SenderCheck::NotChecked,
            });
        }
        let mut text = payload.body_text_with_notes();
        if text.trim().is_empty() {
            text = "(no text)".to_string();
        }
        if let Some(note) = note {
            text = format!("{note}\n\n{text}");
        }
        // the key line makes the opening follow-up (a copy of the description) findable
        let description = format!("{}\n\n{}", text.trim_end(), key_marker(key));
        let mut ticket = json!({
            "queue": self.config.queue_id,
            "title": ticket_title(&payload.draft.subject),
            "description": description,
            "priority": self.config.priority,
            format!("custom_{}", self.config.key_field): key,
        });
        if let Some(requestor) = payload.requestor() {
            ticket["submitter_email"] = json!(requestor);
        }
        if let Some(owner) = self.config.assigned_to {
            ticket["assigned_to"] = json!(owner);
        }
        for (name, value) in &self.config.custom_fields {
            ticket[format!("custom_{name}")] = json!(value);
        }
        let what = "POST tickets/";
        let (mut status, mut answer) = self
            .call(&once(&self.retry), deadline, attempts, what, || {
                self.request(reqwest::Method::POST, "tickets/")
                    .json(&ticket)
            })
            .await?;
        // An address the helpdesk does not take as an e-mail (nothing was created): open the
        // ticket without a submitter and say so in the text.
        if status == reqwest::StatusCode::BAD_REQUEST
            && ticket.get("submitter_email").is_some()
            && field_errors(&answer).keys().all(|f| f == "submitter_email")
        {
            let address = ticket["submitter_email"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            ticket.as_object_mut().map(|t| t.remove("submitter_email"));
            ticket["description"] = json!(format!(
                "[mailbridge] The helpdesk did not accept the sender address {address:?} as the \
                 submitter's e-mail ({}).\n\n{description}",
                excerpt(&answer)
            ));
            (status, answer) = self
                .call(&once(&self.retry), deadline, attempts, what, || {
                    self.request(reqwest::Method::POST, "tickets/")
                        .json(&ticket)
                })
                .await?;
        }
        let created = match status.as_u16() {
            200..=299 => Ticket::from_json(
                serde_json::from_str(&answer)
                    .map_err(|_| self.config_error(format!("{what}: the answer is not JSON")))?,
            )
            .ok_or_else(|| self.config_error(format!("{what}: no ticket id in the answer")))?,
            404 => {
                return Err(self.config_error(format!(
                    "{what}: HTTP 404: {} (is `url` the django-helpdesk API root?)",
                    excerpt(&answer)
                )));
            }
            _ => return Err(self.rejected(status, what, &answer)),
        };
        if created
            .json
            .get(format!("custom_{}", self.config.key_field))
            != Some(&json!(key))
        {
            tracing::warn!(
                helpdesk = %self.api,
                ticket = created.id,
                field = %self.config.key_field,
                "the new ticket does not show the key in its custom field: a lost answer could not be matched"
            );
        }
        if let Some(opening) = created.opening_followup() {
            self.complete(created.id, opening, key, payload, deadline, attempts)
                .await?;
        }
        Ok(TicketReceipt {
            action,
            ticket_id: Some(created.id.to_string()),
            attempts: *attempts,
            replayed: false,
            sender: SenderCheck::NotChecked,
        })
    }

    /// The text of a follow-up: who wrote, the new part of the mail, notes, and the key line.
    fn followup_text(&self, payload: &TicketPayload, key: &str, note: Option<&str>) -> String {
        let draft = &payload.draft;
        let new_part = if draft.reply_text.trim().is_empty() {
            &draft.body_text
        } else {
            &draft.reply_text
        };
        let text = payload.text_with_notes(new_part);
        let note = note.map(|n| format!("{n}\n\n")).unwrap_or_default();
        format!(
            "{note}{} wrote:\n\n{}\n\n{}",
            sender(payload),
            text.trim_end(),
            key_marker(key)
        )
    }

    /// Adds the mail to `ticket` as `action` says (`Reply`: a public follow-up, `Comment`: an
    /// internal one), with `note` for the agents in front of it.
    #[allow(clippy::too_many_arguments)]
    async fn add_to_ticket(
        &self,
        payload: &TicketPayload,
        key: &str,
        ticket: Ticket,
        action: DeliveryPlan,
        note: Option<&str>,
        sender: SenderCheck,
        deadline: Instant,
        attempts: &mut u32,
    ) -> Result<TicketReceipt, TicketSinkError> {
        let machine = payload.draft.auto_generated;
        let public = matches!(action, DeliveryPlan::Reply { .. });
        if let Some(earlier) = ticket.followup_with(&key_marker(key)) {
            tracing::info!(
                helpdesk = %self.api,
                ticket = ticket.id,
                "an earlier delivery of this mail added it to the ticket; completing it, not adding it again"
            );
            let earlier = earlier.clone();
            self.complete(ticket.id, &earlier, key, payload, deadline, attempts)
                .await?;
            return Ok(TicketReceipt {
                action,
                ticket_id: Some(ticket.id.to_string()),
                attempts: *attempts,
                replayed: true,
                sender,
            });
        }
        // A person writing to a closed ticket reopens it, as django-helpdesk's own mail import
        // does; an internal follow-up (machine mail, a non-participant's mail) does not.
        let new_status =
            (!machine && public && ticket.status == STATUS_CLOSED).then_some(STATUS_REOPENED);
        let followup = self
            .post_followup(
                ticket.id,
                &self.followup_text(payload, key, note),
                public,
                new_status,
                deadline,
                attempts,
            )
            .await?;
        self.complete(ticket.id, &followup, key, payload, deadline, attempts)
            .await?;
        Ok(TicketReceipt {
            action,
            ticket_id: Some(ticket.id.to_string()),
            attempts: *attempts,
            replayed: false,
            sender,
        })
    }

    /// Whether the mail's sender is a participant of `ticket` (see [`Ticket::has_participant`]).
    fn sender_check(ticket: &Ticket, payload: &TicketPayload) -> SenderCheck {
        match payload.requestor() {
            Some(sender) if ticket.has_participant(sender) => SenderCheck::Participant,
            _ => SenderCheck::NotParticipant,
        }
    }

    /// What a mail on an existing ticket becomes: the plan (`Reply` = public follow-up,
    /// `Comment` = internal one, `NewTicket`), and the note for the agents in front of it.
    fn on_ticket(
        &self,
        ticket: &Ticket,
        payload: &TicketPayload,
        sender: SenderCheck,
    ) -> (DeliveryPlan, Option<String>) {
        let machine = payload.draft.auto_generated;
        let id = ticket.id.to_string();
        let stranger = sender == SenderCheck::NotParticipant
            && self.config.non_participant != NonParticipant::Correspond;
        if stranger && !machine {
            let who = payload.requestor().unwrap_or("(no address)");
            if self.config.non_participant == NonParticipant::NewTicket {
                let note = format!(
                    "[mailbridge] This mail names ticket {id}, but its sender {who} is not the submitter of that ticket nor an address the helpdesk mailed about it: opened as a new ticket."
                );
                let queue = Some(self.config.queue.clone());
                return (DeliveryPlan::NewTicket { queue }, Some(note));
            }
            let note = format!(
                "[mailbridge] The sender {who} is not the submitter of this ticket nor an address the helpdesk mailed about it: added as an internal follow-up, not a public one (the thread reference proves the ticket, not the sender)."
            );
            return (DeliveryPlan::Comment { ticket: id }, Some(note));
        }
        if machine && (stranger || self.config.machine_mail == MachineMail::Comment) {
            (DeliveryPlan::Comment { ticket: id }, None)
        } else {
            (DeliveryPlan::Reply { ticket: id }, None)
        }
    }

    fn machine_mail_without_ticket(&self, payload: &TicketPayload) -> TicketSinkError {
        TicketSinkError::Rejected {
            target: self.api.clone(),
            status: 404,
            body: format!(
                "machine mail ({}) names no ticket that exists (ticket {}); machine mail never opens a ticket",
                payload.draft.auto_reason_text(),
                payload.named_ticket().unwrap_or("none")
            ),
        }
    }
}

#[async_trait]
impl TicketSink for DjangoHelpdeskSink {
    async fn plan(
        &self,
        payload: &TicketPayload,
        deadline: Instant,
    ) -> Result<DeliveryPlan, TicketSinkError> {
        let mut attempts = 0;
        let machine = payload.draft.auto_generated;
        if let Some(number) = payload.named_ticket()
            && let Some(ticket) = self.target_ticket(number, deadline, &mut attempts).await?
        {
            let sender = Self::sender_check(&ticket, payload);
            return Ok(self.on_ticket(&ticket, payload, sender).0);
        }
        if machine {
            return Err(self.machine_mail_without_ticket(payload));
        }
        Ok(DeliveryPlan::NewTicket {
            queue: Some(self.config.queue.clone()),
        })
    }

    async fn deliver(
        &self,
        payload: &TicketPayload,
        idempotency_key: &str,
        deadline: Instant,
    ) -> Result<TicketReceipt, TicketSinkError> {
        let mut attempts = 0;
        self.ensure_key_field(deadline, &mut attempts).await?;
        if let Some(number) = payload.named_ticket() {
            match self.target_ticket(number, deadline, &mut attempts).await? {
                Some(ticket) => {
                    let sender = Self::sender_check(&ticket, payload);
                    let (action, note) = self.on_ticket(&ticket, payload, sender);
                    if matches!(action, DeliveryPlan::NewTicket { .. }) {
                        let mut receipt = self
                            .open_ticket(
                                payload,
                                idempotency_key,
                                note.as_deref(),
                                deadline,
                                &mut attempts,
                            )
                            .await?;
                        receipt.sender = sender;
                        return Ok(receipt);
                    }
                    return self
                        .add_to_ticket(
                            payload,
                            idempotency_key,
                            ticket,
                            action,
                            note.as_deref(),
                            sender,
                            deadline,
                            &mut attempts,
                        )
                        .await;
                }
                None if payload.draft.auto_generated => {
                    return Err(self.machine_mail_without_ticket(payload));
                }
                None => tracing::info!(
                    helpdesk = %self.api,
                    ticket = number,
                    "the ticket the mail names does not exist; opening a new one"
                ),
            }
        } else if payload.draft.auto_generated {
            return Err(self.machine_mail_without_ticket(payload));
        }
        self.open_ticket(payload, idempotency_key, None, deadline, &mut attempts)
            .await
    }

    async fn check(&self, deadline: Instant) -> Result<SinkCheck, TicketSinkError> {
        let mut attempts = 0;
        let fields = self.ticket_fields(deadline, &mut attempts).await?;
        self.check_fields(&fields)?;
        // Validation without a write: no title, so the helpdesk creates nothing and names every
        // other field it does not accept (queue, owner, priority, custom field values).
        let mut probe = json!({
            "queue": self.config.queue_id,
            "priority": self.config.priority,
        });
        if let Some(owner) = self.config.assigned_to {
            probe["assigned_to"] = json!(owner);
        }
        for (name, value) in &self.config.custom_fields {
            probe[format!("custom_{name}")] = json!(value);
        }
        let what = "POST tickets/ (validation only: no title)";
        let (status, body) = self
            .call(&self.retry, deadline, &mut attempts, what, || {
                self.request(reqwest::Method::POST, "tickets/").json(&probe)
            })
            .await?;
        if status != reqwest::StatusCode::BAD_REQUEST {
            return Err(self.config_error(format!(
                "{what}: expected HTTP 400 (title required), got HTTP {}: {}",
                status.as_u16(),
                excerpt(&body)
            )));
        }
        let problems: Vec<String> = field_errors(&body)
            .into_iter()
            .filter(|(field, _)| field != "title" && field != "description")
            .map(|(field, message)| {
                let hint = match field.as_str() {
                    "queue" => format!(" (sink.queue_id {})", self.config.queue_id),
                    "assigned_to" => " (sink.assigned_to)".to_string(),
                    "priority" => " (sink.priority)".to_string(),
                    _ => " (sink.custom_fields)".to_string(),
                };
                format!("{field}: {message}{hint}")
            })
            .collect();
        if !problems.is_empty() {
            return Err(self.config_error(format!(
                "the helpdesk does not accept this mailbox's ticket defaults: {}",
                problems.join("; ")
            )));
        }
        Ok(SinkCheck {
            summary: format!(
                "django-helpdesk at {}: credentials accepted (staff), queue {} (id {}) takes tickets, custom field {} present",
                self.api, self.config.queue, self.config.queue_id, self.config.key_field
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(sink: Value) -> Result<DjangoHelpdeskConfig, SinkConfigError> {
        match super::super::SinkConfig::from_json(&sink)? {
            super::super::SinkConfig::DjangoHelpdesk(config) => Ok(config),
            other => panic!("not a django-helpdesk sink: {other:?}"),
        }
    }

    fn minimal() -> Value {
        json!({"kind": "django-helpdesk", "url": "https://hd.example.com/helpdesk/api/",
               "secret": "hd-api", "queue": "support", "queue_id": 1})
    }

    #[test]
    fn config_defaults_and_every_field() {
        let c = config(minimal()).unwrap();
        assert_eq!(
            (c.queue.as_str(), c.queue_id, c.priority),
            ("support", 1, 3)
        );
        assert_eq!(c.key_field, DEFAULT_KEY_FIELD);
        assert_eq!(c.machine_mail, MachineMail::Comment);
        let mut all = minimal();
        for (k, v) in [
            ("priority", json!(1)),
            ("assigned_to", json!("7")),
            ("custom_fields", json!({"contract": "gold", "seats": 5})),
            ("key_field", json!("mail_key")),
            ("thread_queues", json!(["billing", "sales_2"])),
            ("machine_mail", json!("correspond")),
        ] {
            all[k] = v;
        }
        let c = config(all).unwrap();
        assert_eq!(c.priority, 1);
        assert_eq!(c.assigned_to, Some(7));
        assert_eq!(c.custom_fields["seats"], "5");
        assert_eq!(c.key_field, "mail_key");
        assert_eq!(c.thread_queues, ["billing", "sales_2"]);
        assert_eq!(c.machine_mail, MachineMail::Correspond);
    }

    #[test]
    fn config_errors_name_the_field() {
        for (field, value, named) in [
            ("queue_id", Value::Null, "sink.queue_id"),
            ("queue_id", json!(0), "sink.queue_id"),
            ("queue", json!("Support Desk"), "sink.queue"),
            ("priority", json!(6), "sink.priority"),
            ("key_field", json!("a b"), "sink.key_field"),
            ("thread_queues", json!("billing"), "sink.thread_queues"),
            (
                "custom_fields",
                json!({"mailbridge_key": "x"}),
                "sink.custom_fields",
            ),
            ("queue_slug", json!("x"), "sink.queue_slug"),
        ] {
            let mut sink = minimal();
            sink[field] = value;
            let err = config(sink).unwrap_err();
            assert_eq!(err.field, named, "{field}: {err}");
        }
    }

    #[test]
    fn subject_tags_of_the_queue_and_thread_queues_give_the_ticket() {
        let mut sink = minimal();
        sink["thread_queues"] = json!(["billing"]);
        let patterns = config(sink).unwrap().subject_patterns();
        let ticket = |subject: &str| {
            patterns
                .iter()
                .find_map(|p| p.captures(subject).map(|c| c["ticket"].to_string()))
        };
        assert_eq!(ticket("Re: [support-12] Printer").as_deref(), Some("12"));
        assert_eq!(ticket("AW: [Billing-7] Invoice").as_deref(), Some("7"));
        assert_eq!(ticket("[sales-3] other queue"), None);
        assert_eq!(ticket("[support-x] no number"), None);
    }

    #[test]
    fn secrets_are_token_or_basic_and_never_echoed() {
        assert!(matches!(
            DjangoAuth::from_secret_json("s", r#"{"type":"token","token":"t0k"}"#),
            Ok(DjangoAuth::Token(_))
        ));
        let basic = DjangoAuth::from_secret_json(
            "s",
            r#"{"type":"basic","username":"mb","password":"pw1"}"#,
        )
        .unwrap();
        assert_eq!(format!("{basic:?}"), "Basic(mb, [redacted])");
        let err =
            DjangoAuth::from_secret_json("s", r#"{"type":"bearer","token":"t0k"}"#).unwrap_err();
        assert!(!err.contains("t0k") && err.contains("type"), "{err}");
        let err =
            DjangoAuth::from_secret_json("s", r#"{"type":"basic","username":"mb"}"#).unwrap_err();
        assert!(err.contains("password"), "{err}");
    }

    #[test]
    fn participants_are_the_submitter_and_the_addresses_the_helpdesk_mailed() {
        let ticket = Ticket::from_json(json!({"id": 5, "status": 1,
            "submitter_email": "Ann@Customer.example",
            "followup_set": [{"id": 1, "email_recipients": null},
                {"id": 2, "email_recipients": ["bob@customer.example", "it-cc@example.com"]}]}))
        .unwrap();
        assert!(ticket.has_participant("ann@customer.example"));
        assert!(ticket.has_participant("BOB@customer.example"));
        assert!(ticket.has_participant("it-cc@example.com"));
        assert!(!ticket.has_participant("mallory@evil.example"));
        let bare = Ticket::from_json(json!({"id": 6, "submitter_email": null})).unwrap();
        assert!(!bare.has_participant("ann@customer.example"));
    }

    #[test]
    fn template_literals_leave_no_template_syntax() {
        let text = "{{ x }} {% if %} {# c #} }} {{{ %} 100%} {\"a\": {}}";
        let sent = template_literal(text);
        assert!(!sent.contains("{%") && !sent.contains("%}") && !sent.contains("{#"));
        // what Django renders: every `{{ "c" }}` becomes c
        let rendered = sent
            .replace(r#"{{ "{" }}"#, "{")
            .replace(r#"{{ "}" }}"#, "}");
        assert_eq!(rendered, text);
        assert_eq!(template_literal("plain text"), "plain text");
    }

    #[test]
    fn titles_are_one_line_and_at_most_200_characters() {
        assert_eq!(ticket_title("  Printer\r\n on   fire "), "Printer on fire");
        assert_eq!(ticket_title(" "), "(no subject)");
        let long = "é".repeat(300);
        assert_eq!(ticket_title(&long).chars().count(), 200);
    }

    #[test]
    fn field_errors_read_the_helpdesks_answer() {
        let errors = field_errors(
            r#"{"queue":["Invalid pk \"99\" - object does not exist."],"title":["This field is required."]}"#,
        );
        assert_eq!(errors.len(), 2);
        assert!(errors["queue"].contains("99"));
        assert!(field_errors("<html>").is_empty());
    }
}
