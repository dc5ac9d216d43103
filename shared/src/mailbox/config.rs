//! Mailbox configuration: the typed [`MailboxConfig`] and its validation from a JSON object
//! (what a `mailbox#<name>` item in the state table holds).
//!
//! Every field is checked; an error names the mailbox and the field and says what is wrong. A
//! bad mailbox is reported on its own and never stops the others.

use crate::ticket_sink::SinkConfig;
use serde::Serialize;

/// Default IMAP host (Exchange Online).
pub const DEFAULT_HOST: &str = "outlook.office365.com";
/// Default IMAP port (implicit TLS).
pub const DEFAULT_PORT: u16 = 993;
/// Default folder polled.
pub const DEFAULT_FOLDER: &str = "INBOX";
/// Default folder processed mail is moved to.
pub const DEFAULT_PROCESSED_FOLDER: &str = "Processed";
/// Folder for mail that could not be fully read or that the ticket API rejected.
pub const DEFAULT_FAILED_FOLDER: &str = "mailbridge-failed";
/// Folder for machine mail (auto-replies, bounces, lists, loops) that threads to no ticket: it
/// opens no ticket and is moved here, never deleted.
pub const DEFAULT_AUTO_GENERATED_FOLDER: &str = "mailbridge-auto-generated";
/// Default folder for mail held back by the per-sender quota.
pub const DEFAULT_HELD_FOLDER: &str = "mailbridge-held";
/// Default per-sender quota: mails from one address that may reach the helpdesk per hour and
/// mailbox. A person does not write 100 mails an hour to a helpdesk; a loop or a flood does.
pub const DEFAULT_MAX_MAILS_PER_SENDER_PER_HOUR: u32 = 100;
/// Default messages per mailbox per run.
pub const DEFAULT_MAX_MESSAGES_PER_RUN: u32 = 200;
/// Default largest message fetched whole (bytes).
pub const DEFAULT_MAX_MESSAGE_BYTES: u64 = 32 * 1024 * 1024;
/// Default cap on attachment content sent inline (base64) per ticket (decoded bytes).
pub const DEFAULT_MAX_ATTACHMENT_BYTES: u64 = 10 * 1024 * 1024;

/// What to do with a mail once the ticket API accepted its ticket.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AfterAction {
    /// Move it to this folder (created if missing).
    Move(String),
    /// Set `\Seen` and leave it (only unseen mail is polled then).
    MarkSeen,
    /// Delete it (flag `\Deleted` + expunge that one message).
    Delete,
}

/// What to do with mailing-list and bulk mail (`auto_reason` `mailing_list: …` / `bulk: …`) that
/// threads to no ticket.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ListMail {
    /// Set it aside in the auto-generated folder, no ticket (default: newsletters and list
    /// traffic sent to a helpdesk address are not requests).
    #[default]
    SetAside,
    /// Open tickets for it: for a helpdesk address that is itself a list or group (a Google
    /// Group, an M365 distribution group adding `List-Id`, a web form sending with
    /// `Precedence: bulk`). Auto-replies, bounces, reports and own-mail loops are still set aside.
    Ticket,
}

impl ListMail {
    /// The configuration value (`set_aside` / `ticket`).
    pub fn as_str(self) -> &'static str {
        match self {
            ListMail::SetAside => "set_aside",
            ListMail::Ticket => "ticket",
        }
    }

    /// Parse the configuration value.
    pub fn parse(value: &str) -> Result<Self, String> {
        match value {
            "set_aside" => Ok(ListMail::SetAside),
            "ticket" => Ok(ListMail::Ticket),
            other => Err(format!("is {other:?}; must be \"set_aside\" or \"ticket\"")),
        }
    }
}

/// How a mailbox is read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    /// IMAP with XOAUTH2 (the default).
    #[default]
    Imap,
    /// Microsoft Graph (delta sync of the folder), for tenants that switched IMAP off.
    Graph,
}

impl Protocol {
    /// The configuration value (`imap` / `graph`).
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Imap => "imap",
            Protocol::Graph => "graph",
        }
    }
}

/// One mailbox to poll.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct MailboxConfig {
    /// The configuration key (`mailbox#<name>`), used in logs, dedupe keys and status.
    pub name: String,
    /// Polled at all.
    pub enabled: bool,
    /// IMAP (default) or Graph.
    pub protocol: Protocol,
    /// Graph only: `user` is a shared mailbox (or another user's) that the account's user opens
    /// with Full Access, so the token carries `Mail.ReadWrite.Shared`.
    pub shared: bool,
    /// Push: subscribe to Graph change notifications for `folder` and poll when one arrives
    /// (docs/push.md). For an IMAP mailbox the account needs Graph read rights too.
    pub push: bool,
    /// IMAP host.
    pub host: String,
    /// IMAP port (implicit TLS).
    pub port: u16,
    /// Login user: the mailbox address (for a shared mailbox, the shared address).
    pub user: String,
    /// The account secret whose token logs in (for a shared mailbox, a delegate's account).
    pub account: String,
    /// Folder polled.
    pub folder: String,
    /// What to do after the ticket was accepted.
    pub after_action: AfterAction,
    /// Where unreadable / oversize / rejected mail goes.
    pub failed_folder: String,
    /// Where machine mail that threads to no ticket (or is an own-mail loop) goes, unticketed.
    pub auto_generated_folder: String,
    /// Whether unthreaded mailing-list / bulk mail opens tickets or is set aside.
    pub list_mail: ListMail,
    /// Mails from one sender address that may reach the helpdesk per clock hour (0: no
    /// quota). The rest of that hour's mail from the address goes to `held_folder`.
    pub max_mails_per_sender_per_hour: u32,
    /// Where mail over the per-sender quota goes, unticketed (move it back to post it).
    pub held_folder: String,
    /// Most messages handled per run.
    pub max_messages_per_run: u32,
    /// Mail received before this instant is ignored: left where it is, never read (a mailbox
    /// added with a full folder whose old mail is already dealt with).
    pub since: Option<chrono::DateTime<chrono::Utc>>,
    /// Larger messages are not fetched whole: a ticket is made from their headers.
    pub max_message_bytes: u64,
    /// Attachment content (decoded bytes) sent inline per ticket; beyond it metadata only.
    pub max_attachment_bytes: u64,
    /// Where the tickets go: the helpdesk adapter, its URL, credential secret and defaults
    /// (the `sink` object, or the older `ticket_api_url` / `ticket_api_secret` pair: a webhook).
    pub sink: SinkConfig,
}

/// A mailbox whose configuration is unusable: which one, which field, what is wrong.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("mailbox {mailbox}: field `{field}` {problem}")]
pub struct ConfigError {
    /// Mailbox name.
    pub mailbox: String,
    /// Field name.
    pub field: String,
    /// What is wrong.
    pub problem: String,
}

#[cfg(test)]
use crate::ticket_sink::validate_target_url;

fn valid_folder(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("is empty".into());
    }
    if name.chars().any(|c| c.is_control()) {
        return Err("contains control characters".into());
    }
    Ok(())
}

impl MailboxConfig {
    /// Validate a mailbox from its JSON object (the item's attributes; `pk` and unknown
    /// attributes starting with `_` are ignored).
    pub fn from_json(name: &str, value: &serde_json::Value) -> Result<Self, ConfigError> {
        let err = |field: &str, problem: String| ConfigError {
            mailbox: name.to_string(),
            field: field.to_string(),
            problem,
        };
        if name.is_empty()
            || name.len() > 128
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '@'))
        {
            return Err(err(
                "name",
                "must be 1-128 characters of A-Z a-z 0-9 - _ . @".into(),
            ));
        }
        let object = value
            .as_object()
            .ok_or_else(|| err("(item)", "is not an object".into()))?;
        const KNOWN: &[&str] = &[
            "pk",
            "name",
            "enabled",
            "protocol",
            "shared",
            "push",
            "host",
            "port",
            "user",
            "account",
            "folder",
            "after_action",
            "processed_folder",
            "failed_folder",
            "auto_generated_folder",
            "list_mail",
            "max_mails_per_sender_per_hour",
            "held_folder",
            "max_messages_per_run",
            "since",
            "max_message_bytes",
            "max_attachment_bytes",
            "sink",
            "ticket_api_url",
            "ticket_api_secret",
            "expires_at",
        ];
        if let Some(unknown) = object
            .keys()
            .find(|k| !k.starts_with('_') && !KNOWN.contains(&k.as_str()))
        {
            return Err(err(unknown, "is not a known field (typo?)".into()));
        }
        let string = |field: &str| -> Result<Option<String>, ConfigError> {
            match object.get(field) {
                None | Some(serde_json::Value::Null) => Ok(None),
                Some(serde_json::Value::String(s)) => Ok(Some(s.trim().to_string())),
                Some(_) => Err(err(field, "must be a string".into())),
            }
        };
        let required = |field: &str| -> Result<String, ConfigError> {
            match string(field)? {
                Some(s) if !s.is_empty() => Ok(s),
                _ => Err(err(field, "is required".into())),
            }
        };
        let number = |field: &str, min: u64, max: u64, default: u64| -> Result<u64, ConfigError> {
            let n = match object.get(field) {
                None | Some(serde_json::Value::Null) => return Ok(default),
                Some(serde_json::Value::Number(n)) => n.as_u64(),
                Some(serde_json::Value::String(s)) => s.trim().parse::<u64>().ok(),
                Some(_) => None,
            }
            .ok_or_else(|| err(field, "must be a whole number".into()))?;
            if n < min || n > max {
                return Err(err(
                    field,
                    format!("is {n}; must be between {min} and {max}"),
                ));
            }
            Ok(n)
        };
        if let Some(given) = string("name")?
            && given != name
        {
            return Err(err(
                "name",
                format!("is {given:?} but the item key says {name:?}"),
            ));
        }
        let enabled = match object.get("enabled") {
            None | Some(serde_json::Value::Null) => true,
            Some(serde_json::Value::Bool(b)) => *b,
            Some(_) => return Err(err("enabled", "must be true or false".into())),
        };
        let protocol = match string("protocol")?.as_deref() {
            None | Some("") | Some("imap") => Protocol::Imap,
            Some("graph") => Protocol::Graph,
            Some(other) => {
                return Err(err(
                    "protocol",
                    format!("is {other:?}; must be \"imap\" or \"graph\""),
                ));
            }
        };
        let shared = match object.get("shared") {
            None | Some(serde_json::Value::Null) => false,
            Some(serde_json::Value::Bool(b)) => *b,
            Some(_) => return Err(err("shared", "must be true or false".into())),
        };
        let push = match object.get("push") {
            None | Some(serde_json::Value::Null) => false,
            Some(serde_json::Value::Bool(b)) => *b,
            Some(_) => return Err(err("push", "must be true or false".into())),
        };
        if shared && protocol == Protocol::Imap {
            return Err(err(
                "shared",
                "applies to protocol \"graph\" only (over IMAP a shared mailbox is just its address in `user`)".into(),
            ));
        }
        if protocol == Protocol::Graph
            && (object.contains_key("host") || object.contains_key("port"))
        {
            return Err(err(
                if object.contains_key("host") { "host" } else { "port" },
                "is an IMAP setting; a mailbox with protocol \"graph\" is read through Microsoft Graph (MAILBRIDGE_GRAPH_URL)".into(),
            ));
        }
        let host = string("host")?
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| DEFAULT_HOST.to_string());
        if host.contains(['/', ':', ' ']) {
            return Err(err(
                "host",
                "must be a bare host name (no scheme, port or path)".into(),
            ));
        }
        let port = number("port", 1, 65535, DEFAULT_PORT as u64)? as u16;
        let user = required("user")?;
        if !user.contains('@') || user.contains(char::is_whitespace) {
            return Err(err(
                "user",
                "must be the mailbox address (user@domain)".into(),
            ));
        }
        let account = required("account")?;
        let folder = string("folder")?.unwrap_or_else(|| DEFAULT_FOLDER.to_string());
        valid_folder(&folder).map_err(|p| err("folder", p))?;
        let processed_folder =
            string("processed_folder")?.unwrap_or_else(|| DEFAULT_PROCESSED_FOLDER.to_string());
        valid_folder(&processed_folder).map_err(|p| err("processed_folder", p))?;
        let failed_folder =
            string("failed_folder")?.unwrap_or_else(|| DEFAULT_FAILED_FOLDER.to_string());
        valid_folder(&failed_folder).map_err(|p| err("failed_folder", p))?;
        if failed_folder.eq_ignore_ascii_case(&folder) {
            return Err(err("failed_folder", "must differ from `folder`".into()));
        }
        let auto_generated_folder = string("auto_generated_folder")?
            .unwrap_or_else(|| DEFAULT_AUTO_GENERATED_FOLDER.to_string());
        valid_folder(&auto_generated_folder).map_err(|p| err("auto_generated_folder", p))?;
        if auto_generated_folder.eq_ignore_ascii_case(&folder) {
            return Err(err(
                "auto_generated_folder",
                "must differ from `folder`".into(),
            ));
        }
        let held_folder = string("held_folder")?.unwrap_or_else(|| DEFAULT_HELD_FOLDER.to_string());
        valid_folder(&held_folder).map_err(|p| err("held_folder", p))?;
        if held_folder.eq_ignore_ascii_case(&folder) {
            return Err(err("held_folder", "must differ from `folder`".into()));
        }
        let max_mails_per_sender_per_hour = number(
            "max_mails_per_sender_per_hour",
            0,
            1_000_000,
            u64::from(DEFAULT_MAX_MAILS_PER_SENDER_PER_HOUR),
        )? as u32;
        let list_mail = match string("list_mail")?.as_deref() {
            None | Some("") => ListMail::default(),
            Some(value) => ListMail::parse(value).map_err(|p| err("list_mail", p))?,
        };
        let after_action = match string("after_action")?.as_deref() {
            None | Some("") | Some("move") => {
                if processed_folder.eq_ignore_ascii_case(&folder) {
                    return Err(err("processed_folder", "must differ from `folder`".into()));
                }
                AfterAction::Move(processed_folder)
            }
            Some("mark_seen") => AfterAction::MarkSeen,
            Some("delete") => AfterAction::Delete,
            Some(other) => {
                return Err(err(
                    "after_action",
                    format!("is {other:?}; must be \"move\", \"mark_seen\" or \"delete\""),
                ));
            }
        };
        let max_messages_per_run = number(
            "max_messages_per_run",
            1,
            100_000,
            DEFAULT_MAX_MESSAGES_PER_RUN as u64,
        )? as u32;
        let since = string("since")?
            .filter(|s| !s.is_empty())
            .map(|s| parse_since(&s).map_err(|p| err("since", p)))
            .transpose()?;
        let max_message_bytes = number(
            "max_message_bytes",
            1024,
            150 * 1024 * 1024,
            DEFAULT_MAX_MESSAGE_BYTES,
        )?;
        let max_attachment_bytes = number(
            "max_attachment_bytes",
            0,
            100 * 1024 * 1024,
            DEFAULT_MAX_ATTACHMENT_BYTES,
        )?;
        let legacy_url = string("ticket_api_url")?.filter(|s| !s.is_empty());
        let legacy_secret = string("ticket_api_secret")?.filter(|s| !s.is_empty());
        let sink = match (object.get("sink").filter(|v| !v.is_null()), legacy_url) {
            (Some(_), Some(_)) => {
                return Err(err(
                    "ticket_api_url",
                    "must not be set together with `sink` (put the URL in the sink)".into(),
                ));
            }
            (Some(sink), None) => {
                if legacy_secret.is_some() {
                    return Err(err(
                        "ticket_api_secret",
                        "must not be set together with `sink` (put the secret in the sink)".into(),
                    ));
                }
                SinkConfig::from_json(sink).map_err(|e| err(&e.field, e.problem))?
            }
            (None, Some(url)) => {
                SinkConfig::webhook(&url, legacy_secret).map_err(|e| err(&e.field, e.problem))?
            }
            (None, None) => {
                return Err(err(
                    "sink",
                    "is required (or the older `ticket_api_url` of a webhook)".into(),
                ));
            }
        };
        Ok(MailboxConfig {
            name: name.to_string(),
            enabled,
            protocol,
            shared,
            push,
            host,
            port,
            user,
            account,
            folder,
            after_action,
            failed_folder,
            auto_generated_folder,
            list_mail,
            max_mails_per_sender_per_hour,
            held_folder,
            max_messages_per_run,
            since,
            max_message_bytes,
            max_attachment_bytes,
            sink,
        })
    }
}

/// A mailbox's `since`: an RFC 3339 date-time (`2026-12-01T08:00:00Z`, any offset) or a date
/// (`2026-12-01`, midnight UTC).
pub fn parse_since(value: &str) -> Result<chrono::DateTime<chrono::Utc>, String> {
    let value = value.trim();
    if let Ok(at) = chrono::DateTime::parse_from_rfc3339(value) {
        return Ok(at.to_utc());
    }
    if let Ok(day) = chrono::NaiveDate::parse_from_str(value, "%Y-%m-%d") {
        return Ok(day.and_time(chrono::NaiveTime::MIN).and_utc());
    }
    Err(format!(
        "is {value:?}; must be a date (2026-12-01, midnight UTC) or an RFC 3339 date-time (2026-12-01T08:00:00Z)"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn minimal() -> serde_json::Value {
        json!({"user": "helpdesk@contoso.com", "account": "contoso", "ticket_api_url": "https://psa.example.com/api/tickets"})
    }

    #[test]
    fn since_is_a_date_or_a_date_time_and_anything_else_is_named() {
        assert_eq!(
            MailboxConfig::from_json("helpdesk", &minimal())
                .unwrap()
                .since,
            None
        );
        let mut with = minimal();
        with["since"] = json!("2026-12-01");
        let cfg = MailboxConfig::from_json("helpdesk", &with).unwrap();
        assert_eq!(cfg.since.unwrap().to_rfc3339(), "2026-12-01T00:00:00+00:00");
        with["since"] = json!("2026-12-01T09:30:00+01:00");
        let cfg = MailboxConfig::from_json("helpdesk", &with).unwrap();
        assert_eq!(cfg.since.unwrap().to_rfc3339(), "2026-12-01T08:30:00+00:00");
        for bad in [json!("yesterday"), json!("01.12.2026"), json!(20261201)] {
            with["since"] = bad.clone();
            let e = MailboxConfig::from_json("helpdesk", &with).unwrap_err();
            assert_eq!(e.field, "since", "{bad}: {e}");
        }
    }

    #[test]
    fn protocol_is_imap_by_default_and_graph_when_asked() {
        let cfg = MailboxConfig::from_json("helpdesk", &minimal()).unwrap();
        assert_eq!((cfg.protocol, cfg.shared), (Protocol::Imap, false));
        let mut graph = minimal();
        graph["protocol"] = json!("graph");
        graph["shared"] = json!(true);
        let cfg = MailboxConfig::from_json("helpdesk", &graph).unwrap();
        assert_eq!((cfg.protocol, cfg.shared), (Protocol::Graph, true));
        let problem = |v: serde_json::Value| MailboxConfig::from_json("helpdesk", &v).unwrap_err();
        let mut bad = minimal();
        bad["protocol"] = json!("pop3");
        assert_eq!(problem(bad).field, "protocol");
        let mut imap_shared = minimal();
        imap_shared["shared"] = json!(true);
        assert_eq!(problem(imap_shared).field, "shared");
        let mut graph_host = minimal();
        graph_host["protocol"] = json!("graph");
        graph_host["host"] = json!("outlook.office365.com");
        let e = problem(graph_host);
        assert_eq!(e.field, "host");
        assert!(e.to_string().contains("Microsoft Graph"), "{e}");
    }

    #[test]
    fn defaults_are_filled_in() {
        let cfg = MailboxConfig::from_json("helpdesk", &minimal()).unwrap();
        assert_eq!(cfg.host, "outlook.office365.com");
        assert_eq!(cfg.port, 993);
        assert_eq!(cfg.folder, "INBOX");
        assert_eq!(cfg.after_action, AfterAction::Move("Processed".into()));
        assert_eq!(cfg.failed_folder, "mailbridge-failed");
        assert_eq!(cfg.auto_generated_folder, "mailbridge-auto-generated");
        assert_eq!(cfg.list_mail, ListMail::SetAside);
        assert!(cfg.enabled);
        assert_eq!(
            cfg.sink,
            SinkConfig::Webhook {
                url: "https://psa.example.com/api/tickets".into(),
                secret: None
            }
        );
    }

    #[test]
    fn a_sink_object_or_the_older_webhook_fields_but_not_both() {
        let mut item = minimal();
        item["sink"] = json!({"kind": "rt", "url": "https://rt.example.com", "secret": "rt-api",
            "queue": "General", "rt_name": "example.com"});
        let err = MailboxConfig::from_json("m", &item).unwrap_err();
        assert_eq!(err.field, "ticket_api_url", "{err}");
        item.as_object_mut().unwrap().remove("ticket_api_url");
        let cfg = MailboxConfig::from_json("m", &item).unwrap();
        assert_eq!(
            cfg.sink.kind(),
            crate::ticket_sink::SinkKind::RequestTracker
        );
        assert_eq!(cfg.sink.secret(), Some("rt-api"));
        // The helpdesk's own subject tag threads replies for this mailbox.
        assert!(
            cfg.sink
                .subject_patterns()
                .iter()
                .any(|p| p.is_match("Re: [example.com #42] Printer"))
        );
        item["sink"]["queue"] = json!(7);
        let err = MailboxConfig::from_json("m", &item).unwrap_err();
        assert_eq!(err.field, "sink.queue", "{err}");
        item.as_object_mut().unwrap().remove("sink");
        let err = MailboxConfig::from_json("m", &item).unwrap_err();
        assert_eq!(err.field, "sink", "{err}");
    }

    #[test]
    fn list_mail_is_set_aside_or_ticket() {
        for (value, expected) in [
            (json!("ticket"), ListMail::Ticket),
            (json!("set_aside"), ListMail::SetAside),
            (json!(null), ListMail::SetAside),
        ] {
            let mut item = minimal();
            item["list_mail"] = value;
            let cfg = MailboxConfig::from_json("lists", &item).unwrap();
            assert_eq!(cfg.list_mail, expected);
            assert_eq!(ListMail::parse(expected.as_str()), Ok(expected));
        }
        let mut item = minimal();
        item["list_mail"] = json!("always");
        let err = MailboxConfig::from_json("lists", &item).unwrap_err();
        assert_eq!(
            err.to_string(),
            "mailbox lists: field `list_mail` is \"always\"; must be \"set_aside\" or \"ticket\""
        );
    }

    #[test]
    fn each_bad_field_is_named_with_the_mailbox() {
        let cases = [
            ("user", json!("not-an-address"), "user"),
            ("port", json!(70000), "port"),
            ("port", json!("abc"), "port"),
            ("after_action", json!("archive"), "after_action"),
            (
                "ticket_api_url",
                json!("http://psa.example.com/t"),
                "ticket_api_url",
            ),
            ("ticket_api_url", json!("ftp://x"), "ticket_api_url"),
            ("max_message_bytes", json!(10), "max_message_bytes"),
            ("folder", json!(""), "folder"),
            ("auto_generated_folder", json!(""), "auto_generated_folder"),
            (
                "auto_generated_folder",
                json!("inbox"),
                "auto_generated_folder",
            ),
            ("list_mail", json!("tickets"), "list_mail"),
            ("list_mail", json!(true), "list_mail"),
            ("enabled", json!("yes"), "enabled"),
            ("host", json!("imaps://outlook.office365.com"), "host"),
            ("colour", json!("blue"), "colour"),
        ];
        for (field, value, expected) in cases {
            let mut item = minimal();
            item[field] = value;
            let err = MailboxConfig::from_json("sales", &item).unwrap_err();
            assert_eq!(err.mailbox, "sales");
            assert_eq!(err.field, expected, "{err}");
            assert!(
                err.to_string().starts_with("mailbox sales: field `"),
                "{err}"
            );
        }
        let mut item = minimal();
        item.as_object_mut().unwrap().remove("account");
        let err = MailboxConfig::from_json("sales", &item).unwrap_err();
        assert_eq!(err.field, "account");
    }

    #[test]
    fn loopback_http_is_allowed_for_the_local_stack() {
        assert!(validate_target_url("http://127.0.0.1:8080/t").is_ok());
        assert!(validate_target_url("http://localhost/t").is_ok());
        assert!(validate_target_url("http://10.0.0.1/t").is_err());
    }
}
