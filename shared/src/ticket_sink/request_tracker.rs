//! Request Tracker 5 through its REST 2.0 API (`<url>/REST/2.0/`).
//!
//! Configuration (`sink` of a mailbox, kind `rt`): `url` (RT's web root), `secret` (credentials:
//! `{"type":"token","token":"..."}` or `{"type":"basic","username":"...","password":"..."}`),
//! `queue`, `rt_name` (RT's `$rtname`, for the `[rtname #123]` subject tag), and optionally
//! `machine_mail`, `non_participant`, `priority`, `owner`, `custom_fields` (ticket custom fields of new tickets, by
//! name), `key_field` (default `Mailbridge-Key`) and `body` (`html`, the default, or `text`).
//!
//! # Calls
//! - a new mail: `POST /ticket` (Queue, Requestor, Subject, Content, Attachments, the defaults);
//! - a reply (the draft names a ticket RT has) from a requestor, Cc or AdminCc of the ticket
//!   (a TicketSQL search for the sender among them): `POST /ticket/{id}/correspond`;
//! - a reply from anyone else (the thread reference proves the ticket, not the sender):
//!   `POST /ticket/{id}/comment` with a note naming the sender (`non_participant`: `comment`,
//!   the default), correspondence (`correspond`) or a new ticket (`new_ticket`);
//! - machine mail about a ticket: `POST /ticket/{id}/comment` (or correspond, per `machine_mail`);
//!   machine mail about a ticket RT does not have is refused (parked), never a new ticket;
//! - a ticket number RT does not have (deleted, or someone else's number), or one the account may
//!   not see: a new ticket.
//!
//! With a token, the first delivery of a sink logs in to RT's web UI once and sends RT's session
//! cookie along with the token from then on: RT checks a token with bcrypt on every request
//! (~1 s of RT's CPU per call on a busy server), a session it does not (BENCHMARKS.md).
//!
//! # No duplicates
//! RT has no idempotency keys, so the adapter keeps its own: every ticket carries the keys of the
//! mails delivered to it in the ticket custom field `key_field` (free-form, many values), set in
//! the same request that creates the ticket or adds the message. Before writing, a TicketSQL
//! search for the key finds an earlier delivery (a crash or lost answer after RT accepted it):
//! then nothing is written and the receipt says `replayed`. Writes are sent once per delivery
//! (a timed-out write is not retried blindly: the next delivery searches first); reads are
//! retried ([`crate::retry`]). The custom field must exist and apply to the queue: checked before
//! the first write of each sink (RT ignores custom fields it does not know without an error).
//! What is left: two mailboxes adding replies to the SAME ticket at the same moment can each
//! write the key list without the other's key (RT replaces a custom field's values as a whole);
//! a retry of the mail whose key was lost then adds its reply a second time.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
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

/// The default ticket custom field holding the idempotency keys.
pub const DEFAULT_KEY_FIELD: &str = "Mailbridge-Key";

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
    /// What a reply becomes when its sender is not a requestor, Cc or AdminCc of the ticket.
    pub non_participant: NonParticipant,
    /// Priority of new tickets (RT's default when absent).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub priority: Option<u64>,
    /// Owner of new tickets, an RT user name (Nobody when absent).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// Ticket custom fields of new tickets, by name.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub custom_fields: BTreeMap<String, String>,
    /// The ticket custom field holding the keys of the mails delivered to a ticket.
    pub key_field: String,
    /// Send the sanitised HTML body (`html`) when the mail has one, or always the text (`text`).
    pub body: RtBody,
}

/// Which body RT gets.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RtBody {
    /// The HTML body (`text/html`, the draft's `body_html_sanitized`) when the mail has one,
    /// else the text.
    #[default]
    Html,
    /// Always the text body (`text/plain`).
    Text,
}

impl RtConfig {
    /// Read and validate the `rt` fields of a `sink` object.
    pub fn from_fields(fields: &mut SinkFields<'_>) -> Result<Self, SinkConfigError> {
        let url = fields.url("url")?;
        let secret = fields.required("secret")?;
        let queue = fields.required("queue")?;
        let rt_name = fields.required("rt_name")?;
        let machine_mail = fields.machine_mail()?;
        let non_participant = fields.non_participant()?;
        let priority = fields.number("priority", 0, 999)?;
        let owner = fields.string("owner")?;
        let custom_fields = fields.string_map("custom_fields")?;
        let key_field = fields
            .string("key_field")?
            .unwrap_or_else(|| DEFAULT_KEY_FIELD.to_string());
        if custom_fields.contains_key(&key_field) {
            return Err(SinkFields::error(
                "custom_fields",
                format!("sets {key_field:?}, the field mailbridge keeps its keys in (key_field)"),
            ));
        }
        let body = match fields.string("body")?.as_deref() {
            None | Some("html") => RtBody::Html,
            Some("text") => RtBody::Text,
            Some(other) => {
                return Err(SinkFields::error(
                    "body",
                    format!("is {other:?}; must be \"html\" or \"text\""),
                ));
            }
        };
        Ok(RtConfig {
            url,
            secret,
            queue,
            rt_name,
            machine_mail,
            non_participant,
            priority,
            owner,
            custom_fields,
            key_field,
            body,
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
        http: reqwest::Client,
        secret_name: &str,
        secret_json: &str,
        retry: RetryPolicy,
    ) -> Result<Arc<dyn TicketSink>, String> {
        let auth = RtAuth::from_secret_json(secret_name, secret_json)?;
        Ok(Arc::new(RtTicketSink::new(http, self.clone(), auth, retry)))
    }
}

/// How the adapter logs in to RT, read from the sink's secret (JSON).
///
/// `{"type":"token","token":"1-23-abc..."}` → `Authorization: token ...` (an RT auth token of
/// the account, made under its preferences / "Auth Tokens"); `{"type":"basic","username":"...",
/// "password":"..."}` → HTTP basic auth.
#[derive(Clone)]
pub enum RtAuth {
    /// An RT auth token.
    Token(SecretString),
    /// User name and password.
    Basic {
        /// RT user name.
        username: String,
        /// Its password.
        password: SecretString,
    },
}

impl std::fmt::Debug for RtAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RtAuth::Token(_) => f.write_str("Token([redacted])"),
            RtAuth::Basic { username, .. } => write!(f, "Basic({username}, [redacted])"),
        }
    }
}

impl RtAuth {
    /// Parse the secret's JSON; errors name the secret and the field, never a value.
    pub fn from_secret_json(secret_name: &str, json: &str) -> Result<Self, String> {
        let secret = super::SecretJson::parse(secret_name, json)?;
        let field = |name: &str| secret.field(name);
        let auth = match field("type")?.as_str() {
            "token" => RtAuth::Token(SecretString::from(field("token")?)),
            "basic" => RtAuth::Basic {
                username: field("username")?,
                password: SecretString::from(field("password")?),
            },
            _ => {
                return Err(format!(
                    "secret {secret_name}: field `type` must be \"token\" or \"basic\""
                ));
            }
        };
        let header_ok = match &auth {
            RtAuth::Token(token) => {
                reqwest::header::HeaderValue::from_str(token.expose_secret()).is_ok()
            }
            RtAuth::Basic { username, .. } => !username.contains(':'),
        };
        if !header_ok {
            return Err(format!(
                "secret {secret_name}: the credentials contain characters an HTTP header cannot carry"
            ));
        }
        Ok(auth)
    }

    fn apply(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match self {
            RtAuth::Token(token) => {
                let mut value = reqwest::header::HeaderValue::from_str(&format!(
                    "token {}",
                    token.expose_secret()
                ))
                .unwrap_or_else(|_| reqwest::header::HeaderValue::from_static("token"));
                value.set_sensitive(true);
                request.header(reqwest::header::AUTHORIZATION, value)
            }
            RtAuth::Basic { username, password } => {
                request.basic_auth(username, Some(password.expose_secret()))
            }
        }
    }
}

/// The Request Tracker adapter.
#[derive(Debug)]
pub struct RtTicketSink {
    http: reqwest::Client,
    config: RtConfig,
    rest: String,
    auth: RtAuth,
    retry: RetryPolicy,
    /// Set once the queue and the key field were found (before the first write).
    ready: tokio::sync::OnceCell<()>,
    /// RT's session cookie, when a web login with the token gave one (see [`Self::open_session`]).
    session: std::sync::RwLock<Option<reqwest::header::HeaderValue>>,
}

/// What RT says about a ticket number.
enum TicketLookup {
    /// The ticket exists (not deleted); the keys already on it.
    Exists { keys: Vec<String> },
    /// RT has no such ticket, it is deleted, or the account may not see it.
    Missing { why: String },
}

/// A message to add to a ticket: which, as `correspond` or `comment`, the keys already on it,
/// and a note for the agents in front of it.
struct OnTicket<'a> {
    ticket: &'a str,
    kind: &'static str,
    keys: Vec<String>,
    note: Option<&'a str>,
}

/// What one delivery writes, decided before writing.
struct Decision {
    plan: DeliveryPlan,
    /// For a message on a ticket: the keys already on it.
    keys: Vec<String>,
    sender: SenderCheck,
    /// For the agents, in front of the message (a non-participant's mail).
    note: Option<String>,
}

/// One answered call: status, parsed body (`null` when not JSON), raw start, attempts.
struct Answer {
    status: u16,
    json: Value,
    text: String,
}

impl RtTicketSink {
    /// An adapter for `config` logging in with `auth`.
    pub fn new(http: reqwest::Client, config: RtConfig, auth: RtAuth, retry: RetryPolicy) -> Self {
        let rest = format!("{}/REST/2.0", config.url.trim_end_matches('/'));
        RtTicketSink {
            http,
            config,
            rest,
            auth,
            retry,
            ready: tokio::sync::OnceCell::new(),
            session: std::sync::RwLock::new(None),
        }
    }

    fn target(&self) -> String {
        self.config.url.clone()
    }

    /// One REST call. Reads go through the full retry policy; writes (`write`) are sent once:
    /// a write that timed out may have been done, and only a search can tell (the next delivery
    /// does it). 401 is mapped here; every other answer goes back to the caller.
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
        write: bool,
        deadline: Instant,
        attempts: &mut u32,
    ) -> Result<Answer, TicketSinkError> {
        let url = format!("{}/{}", self.rest, path);
        let body = match body {
            Some(b) => Some(bytes::Bytes::from(
                serde_json::to_vec(b).map_err(|e| TicketSinkError::Encode(e.to_string()))?,
            )),
            None => None,
        };
        let policy = if write {
            RetryPolicy {
                max_attempts: 1,
                ..self.retry.clone()
            }
        } else {
            self.retry.clone()
        };
        let answered = loop {
            let with_session = self.session_cookie().is_some();
            let answered = send_with_retry(&policy, deadline, || {
                let mut request = self
                    .http
                    .request(method.clone(), &url)
                    .header(reqwest::header::ACCEPT, "application/json");
                if let Some(body) = &body {
                    request = request
                        .header(reqwest::header::CONTENT_TYPE, "application/json")
                        .body(body.clone());
                }
                self.with_session(self.auth.apply(request))
            })
            .await
            .map_err(|gave_up| {
                *attempts += gave_up.attempts;
                TicketSinkError::gave_up(&self.target(), gave_up)
            })?;
            *attempts += answered.attempts;
            // A session RT no longer knows is answered with a redirect to its login page (the
            // client follows it): forget the session and ask again with the token alone.
            if with_session && answered.response.url().as_str() != url {
                tracing::debug!("RT's session ended: continuing with the token alone");
                if let Ok(mut session) = self.session.write() {
                    *session = None;
                }
                continue;
            }
            break answered;
        };
        let status = answered.response.status().as_u16();
        let text =
            match crate::http::read_text(answered.response, crate::http::MAX_ANSWER_BYTES).await {
                Ok(text) => text,
                Err(e @ crate::http::BodyError::TooLarge { .. }) => {
                    return Err(TicketSinkError::Unavailable {
                        target: self.target(),
                        attempts: *attempts,
                        detail: format!("{method} {path}: HTTP {status}: {e}"),
                    });
                }
                Err(_) => String::new(),
            };
        if status == 401 {
            return Err(TicketSinkError::CredentialsRefused {
                target: self.target(),
                status,
                detail: format!("RT answered {}", excerpt(&text)),
            });
        }
        let json = serde_json::from_str(&text).unwrap_or(Value::Null);
        Ok(Answer { status, json, text })
    }

    /// An answer the caller did not expect, as an error: 403 → credentials (the account lacks a
    /// right), 404 → configuration, anything else → unavailable (the mail stays).
    fn unexpected(&self, what: &str, answer: &Answer, attempts: u32) -> TicketSinkError {
        let detail = format!("{what}: HTTP {}: {}", answer.status, excerpt(&answer.text));
        match answer.status {
            403 => TicketSinkError::CredentialsRefused {
                target: self.target(),
                status: 403,
                detail,
            },
            404 => TicketSinkError::Config {
                target: self.target(),
                detail: format!(
                    "{detail} (is `url` RT's web root, with REST 2.0 under /REST/2.0?)"
                ),
            },
            _ => TicketSinkError::Unavailable {
                target: self.target(),
                attempts,
                detail,
            },
        }
    }

    /// The queue exists for this account, and the key field and the default custom fields apply
    /// to it; the owner exists.
    async fn check_queue(
        &self,
        deadline: Instant,
        attempts: &mut u32,
    ) -> Result<(), TicketSinkError> {
        let queue = &self.config.queue;
        let answer = self
            .call(
                reqwest::Method::GET,
                &format!("queue/{}", path_segment(queue)),
                None,
                false,
                deadline,
                attempts,
            )
            .await?;
        if answer.status == 404 || answer.status == 403 {
            return Err(TicketSinkError::Config {
                target: self.target(),
                detail: format!(
                    "queue {queue:?} does not exist in RT, or the account may not see it (right SeeQueue); fix `sink.queue` or the account's rights"
                ),
            });
        }
        if answer.status != 200 || !answer.json.is_object() {
            return Err(self.unexpected(&format!("reading queue {queue}"), &answer, *attempts));
        }
        if answer.json["Disabled"].as_str() == Some("1") || answer.json["Disabled"] == json!(1) {
            return Err(TicketSinkError::Config {
                target: self.target(),
                detail: format!("queue {queue:?} is disabled in RT"),
            });
        }
        let fields: Vec<&str> = answer.json["TicketCustomFields"]
            .as_array()
            .map(|a| a.iter().filter_map(|f| f["name"].as_str()).collect())
            .unwrap_or_default();
        let key_field = &self.config.key_field;
        if !fields.contains(&key_field.as_str()) {
            return Err(TicketSinkError::Config {
                target: self.target(),
                detail: format!(
                    "the ticket custom field {key_field:?} (where mailbridge keeps the keys that prevent duplicate tickets) does not apply to queue {queue:?}, or the account may not see it: create it in RT (Admin > Custom Fields: applies to Tickets, type \"Enter multiple values\"), apply it to the queue, and grant the account SeeCustomField and ModifyCustomField on it"
                ),
            });
        }
        for name in self.config.custom_fields.keys() {
            if !fields.contains(&name.as_str()) {
                return Err(TicketSinkError::Config {
                    target: self.target(),
                    detail: format!(
                        "`sink.custom_fields` sets {name:?}, which is not a ticket custom field of queue {queue:?} (or the account may not see it)"
                    ),
                });
            }
        }
        if let Some(owner) = &self.config.owner {
            let answer = self
                .call(
                    reqwest::Method::GET,
                    &format!("user/{}", path_segment(owner)),
                    None,
                    false,
                    deadline,
                    attempts,
                )
                .await?;
            if answer.status == 404 {
                return Err(TicketSinkError::Config {
                    target: self.target(),
                    detail: format!("`sink.owner` {owner:?} is not an RT user"),
                });
            }
        }
        Ok(())
    }

    /// The session cookie (and the `Referer` RT's CSRF check wants for writes with a cookie) on
    /// top of the credentials. RT tries the cookie first; when it is refused (expired, or `url`
    /// is not RT's own `$WebURL` so the `Referer` does not match) it falls back to the token.
    fn with_session(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match self.session_cookie() {
            Some(cookie) => request.header(reqwest::header::COOKIE, cookie).header(
                reqwest::header::REFERER,
                format!("{}/", self.config.url.trim_end_matches('/')),
            ),
            None => request,
        }
    }

    fn session_cookie(&self) -> Option<reqwest::header::HeaderValue> {
        self.session.read().ok().and_then(|s| s.clone())
    }

    /// Log in to RT's web UI once with the token and keep the session cookie. RT checks a token
    /// (or a password) with bcrypt on EVERY request — about 0.25 s of RT's CPU on a quiet server,
    /// 1 s on a busy one — and a session skips that: a search then takes 30 ms instead of 1 s.
    /// Best effort: without a cookie every call still carries the token.
    async fn open_session(&self, deadline: Instant) {
        if !matches!(self.auth, RtAuth::Token(_)) {
            return;
        }
        let url = format!("{}/", self.config.url.trim_end_matches('/'));
        let policy = RetryPolicy {
            max_attempts: 1,
            ..self.retry.clone()
        };
        let Ok(answered) =
            send_with_retry(&policy, deadline, || self.auth.apply(self.http.get(&url))).await
        else {
            return;
        };
        let cookie = answered
            .response
            .headers()
            .get_all(reqwest::header::SET_COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .filter_map(|v| v.split(';').next())
            .find(|pair| pair.trim_start().starts_with("RT_SID_"))
            .and_then(|pair| reqwest::header::HeaderValue::from_str(pair.trim()).ok());
        if let Some(mut cookie) = cookie {
            cookie.set_sensitive(true);
            // RT hands out a cookie for a refused login too: keep it only if REST 2.0 takes it
            // on its own (a session RT does not know is redirected to the login page).
            let rt = format!("{}/rt", self.rest);
            let verified = send_with_retry(&policy, deadline, || {
                self.http
                    .get(&rt)
                    .header(reqwest::header::COOKIE, cookie.clone())
            })
            .await;
            let logged_in = match verified {
                Ok(answered) if answered.response.url().as_str() == rt => {
                    crate::http::read_body(answered.response, crate::http::MAX_ANSWER_BYTES)
                        .await
                        .ok()
                        .and_then(|body| serde_json::from_slice::<Value>(&body).ok())
                        .is_some_and(|v| v.get("Version").is_some())
                }
                _ => false,
            };
            if logged_in && let Ok(mut session) = self.session.write() {
                *session = Some(cookie);
            }
        } else {
            tracing::debug!(status = %answered.response.status(), "RT gave no session cookie: every call is checked with the token");
        }
    }

    async fn ensure_ready(
        &self,
        deadline: Instant,
        attempts: &mut u32,
    ) -> Result<(), TicketSinkError> {
        if self.ready.initialized() {
            return Ok(());
        }
        self.open_session(deadline).await;
        self.check_queue(deadline, attempts).await?;
        let _ = self.ready.set(());
        Ok(())
    }

    /// The ticket an earlier delivery of `key` went to.
    async fn find_key(
        &self,
        key: &str,
        deadline: Instant,
        attempts: &mut u32,
    ) -> Result<Option<String>, TicketSinkError> {
        let query = format!(
            "CF.{{{}}} = '{}'",
            self.config.key_field,
            ticket_sql_escape(key)
        );
        let path = format!(
            "tickets?query={}&orderby=id&order=ASC&per_page=1",
            url::form_urlencoded::byte_serialize(query.as_bytes()).collect::<String>()
        );
        let answer = self
            .call(reqwest::Method::GET, &path, None, false, deadline, attempts)
            .await?;
        if answer.status != 200 {
            return Err(self.unexpected("searching for an earlier delivery", &answer, *attempts));
        }
        Ok(answer.json["items"]
            .as_array()
            .and_then(|items| items.first())
            .and_then(|item| id_string(&item["id"])))
    }

    async fn lookup_ticket(
        &self,
        ticket: &str,
        deadline: Instant,
        attempts: &mut u32,
    ) -> Result<TicketLookup, TicketSinkError> {
        if ticket.is_empty() || !ticket.bytes().all(|b| b.is_ascii_digit()) || ticket.len() > 18 {
            return Ok(TicketLookup::Missing {
                why: format!("{ticket:?} is not an RT ticket number"),
            });
        }
        let answer = self
            .call(
                reqwest::Method::GET,
                &format!("ticket/{ticket}"),
                None,
                false,
                deadline,
                attempts,
            )
            .await?;
        match answer.status {
            200 => {
                if answer.json["Status"].as_str() == Some("deleted") {
                    return Ok(TicketLookup::Missing {
                        why: format!("ticket {ticket} is deleted"),
                    });
                }
                let keys = answer.json["CustomFields"]
                    .as_array()
                    .and_then(|fields| {
                        fields
                            .iter()
                            .find(|f| f["name"].as_str() == Some(self.config.key_field.as_str()))
                    })
                    .and_then(|f| f["values"].as_array())
                    .map(|values| {
                        values
                            .iter()
                            .filter_map(|v| v.as_str().map(str::to_string))
                            .collect()
                    })
                    .unwrap_or_default();
                Ok(TicketLookup::Exists { keys })
            }
            404 => Ok(TicketLookup::Missing {
                why: format!("RT has no ticket {ticket}"),
            }),
            403 => Ok(TicketLookup::Missing {
                why: format!("the account may not see ticket {ticket}"),
            }),
            _ => Err(self.unexpected(&format!("reading ticket {ticket}"), &answer, *attempts)),
        }
    }

    /// Whether the sender is a requestor, Cc or AdminCc of `ticket` (members of a group in those
    /// roles included): one TicketSQL search, which RT answers from its watcher tables whatever
    /// the user's name, in any case of the address.
    async fn sender_check(
        &self,
        ticket: &str,
        payload: &TicketPayload,
        deadline: Instant,
        attempts: &mut u32,
    ) -> Result<SenderCheck, TicketSinkError> {
        let Some(sender) = payload.requestor() else {
            return Ok(SenderCheck::NotParticipant);
        };
        let address = ticket_sql_escape(sender);
        let query = format!(
            "id = {ticket} AND ( Requestor.EmailAddress = '{address}' OR Cc.EmailAddress = '{address}' OR AdminCc.EmailAddress = '{address}' )"
        );
        let path = format!(
            "tickets?query={}&per_page=1",
            url::form_urlencoded::byte_serialize(query.as_bytes()).collect::<String>()
        );
        let answer = self
            .call(reqwest::Method::GET, &path, None, false, deadline, attempts)
            .await?;
        if answer.status != 200 {
            return Err(self.unexpected(
                &format!("reading the watchers of ticket {ticket}"),
                &answer,
                *attempts,
            ));
        }
        let found = answer.json["items"]
            .as_array()
            .is_some_and(|items| !items.is_empty());
        Ok(if found {
            SenderCheck::Participant
        } else {
            SenderCheck::NotParticipant
        })
    }

    /// What a mail on an existing ticket becomes, and the note for the agents in front of it.
    fn on_ticket(
        &self,
        ticket: &str,
        payload: &TicketPayload,
        sender: SenderCheck,
    ) -> (DeliveryPlan, Option<String>) {
        let machine = payload.draft.auto_generated;
        let ticket = ticket.to_string();
        let stranger = sender == SenderCheck::NotParticipant
            && self.config.non_participant != NonParticipant::Correspond;
        if stranger && !machine {
            let who = payload.requestor().unwrap_or("(no address)");
            if self.config.non_participant == NonParticipant::NewTicket {
                let note = format!(
                    "[mailbridge] This mail names ticket {ticket}, but its sender {who} is not a requestor, Cc or AdminCc of that ticket: opened as a new ticket."
                );
                let queue = Some(self.config.queue.clone());
                return (DeliveryPlan::NewTicket { queue }, Some(note));
            }
            let note = format!(
                "[mailbridge] The sender {who} is not a requestor, Cc or AdminCc of this ticket: added as a comment, not as correspondence (the thread reference proves the ticket, not the sender)."
            );
            return (DeliveryPlan::Comment { ticket }, Some(note));
        }
        if machine && (stranger || self.config.machine_mail == MachineMail::Comment) {
            (DeliveryPlan::Comment { ticket }, None)
        } else {
            (DeliveryPlan::Reply { ticket }, None)
        }
    }

    /// What the mail becomes, with the keys already on its ticket and the sender check.
    async fn decide(
        &self,
        payload: &TicketPayload,
        deadline: Instant,
        attempts: &mut u32,
    ) -> Result<Decision, TicketSinkError> {
        let machine = payload.draft.auto_generated;
        if let Some(ticket) = payload.named_ticket() {
            match self.lookup_ticket(ticket, deadline, attempts).await? {
                TicketLookup::Exists { keys } => {
                    let sender = self
                        .sender_check(ticket, payload, deadline, attempts)
                        .await?;
                    let (plan, note) = self.on_ticket(ticket, payload, sender);
                    let keys = if matches!(plan, DeliveryPlan::NewTicket { .. }) {
                        Vec::new()
                    } else {
                        keys
                    };
                    return Ok(Decision {
                        plan,
                        keys,
                        sender,
                        note,
                    });
                }
                TicketLookup::Missing { why } if machine => {
                    return Err(TicketSinkError::Rejected {
                        target: self.target(),
                        status: 404,
                        body: format!(
                            "machine mail ({}) about a ticket RT does not have: {why}; machine mail never opens a ticket",
                            payload.draft.auto_reason_text()
                        ),
                    });
                }
                TicketLookup::Missing { why } => {
                    tracing::info!(mailbox = %payload.mailbox, %why, "the mail names a ticket RT does not have: opening a new ticket");
                }
            }
        } else if machine {
            return Err(TicketSinkError::Rejected {
                target: self.target(),
                status: 422,
                body: format!(
                    "machine mail ({}) names no ticket; machine mail never opens a ticket",
                    payload.draft.auto_reason_text()
                ),
            });
        }
        Ok(Decision {
            plan: DeliveryPlan::NewTicket {
                queue: Some(self.config.queue.clone()),
            },
            keys: Vec::new(),
            sender: SenderCheck::NotChecked,
            note: None,
        })
    }

    /// Content, ContentType and Attachments of the mail, in RT's REST 2.0 form.
    fn message_fields(
        &self,
        payload: &TicketPayload,
        note: Option<&str>,
    ) -> serde_json::Map<String, Value> {
        let mut notes = Vec::new();
        let mut attachments = Vec::new();
        for (i, a) in payload.attachments.iter().enumerate() {
            let name = a
                .filename
                .clone()
                .filter(|n| !n.trim().is_empty())
                .unwrap_or_else(|| {
                    format!("attachment-{}{}", i + 1, extension_for(&a.content_type))
                });
            match &a.content_base64 {
                // RT refuses an attachment with empty content (FileContent is required)
                Some(content) if !content.is_empty() => attachments.push(json!({
                    "FileName": name,
                    "FileType": a.content_type,
                    "FileContent": content,
                })),
                Some(_) => notes.push(format!(
                    "- {name} ({}, 0 bytes): empty file",
                    a.content_type
                )),
                None => notes.push(format!(
                    "- {name} ({}, {} bytes): {}",
                    a.content_type,
                    a.size,
                    a.omitted_reason
                        .as_deref()
                        .unwrap_or("content not included")
                )),
            }
        }
        if let Some(raw) = &payload.raw_message_base64 {
            attachments.push(json!({
                "FileName": "original-message.eml",
                "FileType": "application/octet-stream",
                "FileContent": raw,
            }));
        }
        let mut note_text = String::new();
        if !notes.is_empty() {
            note_text = format!(
                "[mailbridge] attachments not included:\n{}\n",
                notes.join("\n")
            );
        }
        // The sanitised HTML, never the sender's own (scripts, handlers, remote images); a mail
        // whose HTML could not be sanitised (too large) gets its text.
        let html = payload
            .draft
            .body_html_sanitized
            .as_deref()
            .filter(|h| !h.trim().is_empty() && self.config.body == RtBody::Html);
        let (content, content_type) = match html {
            Some(html) => {
                let mut content = String::new();
                if let Some(note) = note {
                    content.push_str(&format!("<p>{}</p>\n", html_escape(note)));
                }
                if let Some(problem) = &payload.problem {
                    content.push_str(&format!("<p>[mailbridge] {}</p>\n", html_escape(problem)));
                }
                content.push_str(html);
                if !note_text.is_empty() {
                    content.push_str(&format!("\n<pre>{}</pre>", html_escape(&note_text)));
                }
                (content, "text/html")
            }
            None => {
                let mut content = String::new();
                if let Some(note) = note {
                    content.push_str(note);
                    content.push_str("\n\n");
                }
                if let Some(problem) = &payload.problem {
                    content.push_str(&format!("[mailbridge] {problem}\n\n"));
                }
                content.push_str(&payload.draft.body_text);
                if !note_text.is_empty() {
                    content.push_str("\n\n");
                    content.push_str(&note_text);
                }
                if content.trim().is_empty() {
                    content = "[mailbridge] the mail has no text".to_string();
                }
                (content, "text/plain")
            }
        };
        let mut fields = serde_json::Map::new();
        fields.insert("Content".into(), json!(content));
        fields.insert("ContentType".into(), json!(content_type));
        if !attachments.is_empty() {
            fields.insert("Attachments".into(), Value::Array(attachments));
        }
        fields
    }

    async fn create(
        &self,
        payload: &TicketPayload,
        key: &str,
        note: Option<&str>,
        deadline: Instant,
        attempts: &mut u32,
    ) -> Result<String, TicketSinkError> {
        let mut body = self.message_fields(payload, note);
        body.insert("Queue".into(), json!(self.config.queue));
        body.insert("Subject".into(), json!(payload.draft.subject));
        if let Some(requestor) = payload.requestor() {
            body.insert("Requestor".into(), json!(requestor));
        }
        if let Some(priority) = self.config.priority {
            body.insert("Priority".into(), json!(priority));
        }
        if let Some(owner) = &self.config.owner {
            body.insert("Owner".into(), json!(owner));
        }
        let mut custom_fields: serde_json::Map<String, Value> = self
            .config
            .custom_fields
            .iter()
            .map(|(k, v)| (k.clone(), json!(v)))
            .collect();
        custom_fields.insert(self.config.key_field.clone(), json!([key]));
        body.insert("CustomFields".into(), Value::Object(custom_fields));
        let answer = self
            .call(
                reqwest::Method::POST,
                "ticket",
                Some(&Value::Object(body)),
                true,
                deadline,
                attempts,
            )
            .await?;
        match answer.status {
            200 | 201 => {
                id_string(&answer.json["id"]).ok_or_else(|| TicketSinkError::Unavailable {
                    target: self.target(),
                    attempts: *attempts,
                    detail: format!(
                        "RT created a ticket but named no id: {}",
                        excerpt(&answer.text)
                    ),
                })
            }
            403 => {
                // RT answers 403 both for a missing right and for a queue that is gone (deleted
                // or disabled since this sink checked it): tell them apart.
                self.check_queue(deadline, attempts).await?;
                Err(TicketSinkError::CredentialsRefused {
                    target: self.target(),
                    status: 403,
                    detail: format!(
                        "creating a ticket in queue {:?}: {} (the account needs CreateTicket on it)",
                        self.config.queue,
                        rt_message(&answer)
                    ),
                })
            }
            400 | 413 | 422 => Err(TicketSinkError::Rejected {
                target: self.target(),
                status: answer.status,
                body: rt_message(&answer),
            }),
            _ => Err(self.unexpected("creating a ticket", &answer, *attempts)),
        }
    }

    async fn add_message(
        &self,
        payload: &TicketPayload,
        key: &str,
        on: OnTicket<'_>,
        deadline: Instant,
        attempts: &mut u32,
    ) -> Result<(), TicketSinkError> {
        let OnTicket {
            ticket,
            kind,
            keys,
            note,
        } = on;
        let mut body = self.message_fields(payload, note);
        if !payload.draft.subject.is_empty() {
            body.insert("Subject".into(), json!(payload.draft.subject));
        }
        let mut keys = keys;
        keys.push(key.to_string());
        body.insert(
            "CustomFields".into(),
            json!({ self.config.key_field.clone(): keys }),
        );
        let answer = self
            .call(
                reqwest::Method::POST,
                &format!("ticket/{ticket}/{kind}"),
                Some(&Value::Object(body)),
                true,
                deadline,
                attempts,
            )
            .await?;
        match answer.status {
            200 | 201 => {
                if !answer.text.contains(key) {
                    tracing::warn!(
                        ticket,
                        answer = %excerpt(&answer.text),
                        "RT added the message but did not confirm the key: a retry of this mail could add it again (does the account have ModifyCustomField?)"
                    );
                }
                Ok(())
            }
            403 => Err(TicketSinkError::CredentialsRefused {
                target: self.target(),
                status: 403,
                detail: format!(
                    "adding a {kind} to ticket {ticket}: {} (the account needs ReplyToTicket and CommentOnTicket)",
                    rt_message(&answer)
                ),
            }),
            400 | 413 | 422 => Err(TicketSinkError::Rejected {
                target: self.target(),
                status: answer.status,
                body: format!("{kind} on ticket {ticket}: {}", rt_message(&answer)),
            }),
            _ => Err(self.unexpected(
                &format!("adding a {kind} to ticket {ticket}"),
                &answer,
                *attempts,
            )),
        }
    }
}

#[async_trait]
impl TicketSink for RtTicketSink {
    async fn plan(
        &self,
        payload: &TicketPayload,
        deadline: Instant,
    ) -> Result<DeliveryPlan, TicketSinkError> {
        let mut attempts = 0;
        Ok(self.decide(payload, deadline, &mut attempts).await?.plan)
    }

    async fn deliver(
        &self,
        payload: &TicketPayload,
        idempotency_key: &str,
        deadline: Instant,
    ) -> Result<TicketReceipt, TicketSinkError> {
        let mut attempts = 0;
        self.ensure_ready(deadline, &mut attempts).await?;
        if let Some(ticket) = self
            .find_key(idempotency_key, deadline, &mut attempts)
            .await?
        {
            let (action, sender) = match payload.named_ticket() {
                Some(named) if named == ticket => {
                    let sender = self
                        .sender_check(&ticket, payload, deadline, &mut attempts)
                        .await?;
                    (self.on_ticket(&ticket, payload, sender).0, sender)
                }
                _ => (
                    DeliveryPlan::NewTicket {
                        queue: Some(self.config.queue.clone()),
                    },
                    SenderCheck::NotChecked,
                ),
            };
            tracing::info!(
                mailbox = %payload.mailbox,
                ticket = %ticket,
                "RT already has this mail (an earlier delivery was accepted): nothing new written"
            );
            return Ok(TicketReceipt {
                action,
                ticket_id: Some(ticket),
                attempts,
                replayed: true,
                sender,
            });
        }
        let Decision {
            plan,
            keys,
            sender,
            note,
        } = self.decide(payload, deadline, &mut attempts).await?;
        let note = note.as_deref();
        let ticket_id = match &plan {
            DeliveryPlan::NewTicket { .. } => {
                self.create(payload, idempotency_key, note, deadline, &mut attempts)
                    .await?
            }
            DeliveryPlan::Reply { ticket } | DeliveryPlan::Comment { ticket } => {
                let kind = if matches!(plan, DeliveryPlan::Reply { .. }) {
                    "correspond"
                } else {
                    "comment"
                };
                let on = OnTicket {
                    ticket,
                    kind,
                    keys,
                    note,
                };
                self.add_message(payload, idempotency_key, on, deadline, &mut attempts)
                    .await?;
                ticket.clone()
            }
            DeliveryPlan::Webhook { .. } => {
                unreachable!("the RT adapter never plans a webhook call")
            }
        };
        Ok(TicketReceipt {
            action: plan,
            ticket_id: Some(ticket_id),
            attempts,
            replayed: false,
            sender,
        })
    }

    async fn check(&self, deadline: Instant) -> Result<SinkCheck, TicketSinkError> {
        let mut attempts = 0;
        let answer = self
            .call(
                reqwest::Method::GET,
                "rt",
                None,
                false,
                deadline,
                &mut attempts,
            )
            .await?;
        if answer.status != 200 {
            return Err(self.unexpected("reading RT's version", &answer, attempts));
        }
        let version = answer.json["Version"].as_str().unwrap_or("?").to_string();
        self.check_queue(deadline, &mut attempts).await?;
        let _ = self.ready.set(());
        Ok(SinkCheck {
            summary: format!(
                "RT {version} at {}: credentials accepted, queue {} exists with custom field {}",
                self.config.url, self.config.queue, self.config.key_field
            ),
        })
    }
}

/// RT's error message (`{"message": ...}`), or the start of the answer.
fn rt_message(answer: &Answer) -> String {
    answer.json["message"]
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| format!("HTTP {}: {}", answer.status, excerpt(&answer.text)))
}

fn id_string(value: &Value) -> Option<String> {
    match value {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// A TicketSQL string literal's content: `\` and `'` escaped.
fn ticket_sql_escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('\'', "\\'")
}

/// A path segment, percent-encoded (queue and user names may hold spaces).
fn path_segment(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// A file name extension for a nameless attachment.
fn extension_for(content_type: &str) -> &'static str {
    match content_type.to_ascii_lowercase().as_str() {
        "text/plain" => ".txt",
        "text/html" => ".html",
        "text/calendar" => ".ics",
        "message/rfc822" => ".eml",
        "application/pdf" => ".pdf",
        "image/png" => ".png",
        "image/jpeg" => ".jpg",
        "image/gif" => ".gif",
        _ => ".bin",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: Value) -> Result<RtConfig, SinkConfigError> {
        let mut object = json!({"kind": "rt", "url": "https://rt.example.com", "secret": "rt-api",
            "queue": "General", "rt_name": "example.com"});
        for (k, v) in extra.as_object().unwrap() {
            object[k] = v.clone();
        }
        match super::super::SinkConfig::from_json(&object)? {
            super::super::SinkConfig::RequestTracker(rt) => Ok(rt),
            other => panic!("not rt: {other:?}"),
        }
    }

    #[test]
    fn config_defaults_and_errors_name_the_field() {
        let rt = config(json!({})).unwrap();
        assert_eq!(rt.key_field, DEFAULT_KEY_FIELD);
        assert_eq!(rt.body, RtBody::Html);
        assert_eq!(rt.machine_mail, MachineMail::Comment);
        let rt = config(
            json!({"priority": 20, "owner": "alice", "custom_fields": {"Customer": "ACME"},
            "body": "text", "machine_mail": "correspond", "key_field": "Mail-Key"}),
        )
        .unwrap();
        assert_eq!(rt.priority, Some(20));
        assert_eq!(rt.custom_fields["Customer"], "ACME");
        assert_eq!(rt.body, RtBody::Text);
        assert_eq!(
            config(json!({"body": "rtf"})).unwrap_err().field,
            "sink.body"
        );
        assert_eq!(
            config(json!({"priority": -1})).unwrap_err().field,
            "sink.priority"
        );
        assert_eq!(
            config(json!({"custom_fields": {"Mailbridge-Key": "x"}}))
                .unwrap_err()
                .field,
            "sink.custom_fields"
        );
        assert_eq!(config(json!({"quue": "x"})).unwrap_err().field, "sink.quue");
    }

    #[test]
    fn the_subject_tag_is_rts_own() {
        let rt = config(json!({})).unwrap();
        let patterns = rt.subject_patterns();
        let find = |s: &str| {
            patterns
                .iter()
                .find_map(|p| p.captures(s))
                .map(|c| c["ticket"].to_string())
        };
        assert_eq!(
            find("Re: [example.com #123] Printer").as_deref(),
            Some("123")
        );
        assert_eq!(find("AW: [EXAMPLE.COM #7] x").as_deref(), Some("7"));
        assert_eq!(find("[exampleXcom #7] x"), None, "the dot is literal");
        assert_eq!(find("[other.org #7] x"), None);
    }

    #[test]
    fn secret_forms_parse_and_never_echo_a_value() {
        assert!(matches!(
            RtAuth::from_secret_json("s", r#"{"type":"token","token":"1-2-abc"}"#),
            Ok(RtAuth::Token(_))
        ));
        let basic =
            RtAuth::from_secret_json("s", r#"{"type":"basic","username":"mb","password":"pw"}"#)
                .unwrap();
        assert_eq!(format!("{basic:?}"), "Basic(mb, [redacted])");
        let err = RtAuth::from_secret_json("s", r#"{"type":"hunter2-token"}"#).unwrap_err();
        assert!(!err.contains("hunter2"), "{err}");
        let err = RtAuth::from_secret_json("s", r#"{"type":"token"}"#).unwrap_err();
        assert!(err.contains("`token`"), "{err}");
        let err = RtAuth::from_secret_json("s", "{not json: hunter2").unwrap_err();
        assert!(!err.contains("hunter2"), "{err}");
        let err = RtAuth::from_secret_json("s", r#"{"type":"token","token":"a\nb"}"#).unwrap_err();
        assert!(err.contains("header"), "{err}");
    }

    #[test]
    fn ticket_sql_literals_are_escaped() {
        assert_eq!(ticket_sql_escape("a'b\\c"), "a\\'b\\\\c");
        assert_eq!(path_segment("IT Support"), "IT%20Support");
    }
}
