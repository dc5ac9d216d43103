//! `mailbridge sendmail`: a drop-in for the `sendmail` command line that helpdesks call (Request
//! Tracker, osTicket, FreeScout, Zammad, PHP's `mail()`...). The message comes on stdin; it is
//! checked and enqueued, unchanged but for a Message-ID/Date/From it lacks, as a MIME
//! notification (`mailbridge::notification::MimeNotification`) for send-notifications, which
//! sends it with Graph's MIME `sendMail`. Also runs when the binary is invoked as `sendmail`.
//!
//! Options understood (the common sendmail subset): `-t` (recipients from To/Cc/Bcc, plus any
//! given as arguments), `-i` / `-oi` (a line with a single `.` does not end the message), `-f
//! ADDR` / `-r ADDR` (envelope sender: the From when the message has none), `-F NAME` (its
//! display name), `-C FILE` (this command's config file), `--`; accepted and ignored: `-bm`,
//! `-odb`/`-odi`/`-oem`/other `-o`/`-O` options, `-B TYPE`, `-N DSN`, `-R RET`, `-V ENVID`,
//! `-v`, `-L TAG`. Anything else (`-bs` SMTP on stdin, `-bp`, `-q`...) is a usage error.
//!
//! Recipients: Graph sends to the message's To/Cc/Bcc. Without `-t` the arguments are the
//! recipients: any that the header does not name are added as `Bcc:`, and a header recipient
//! that is not among the arguments is refused (Graph would send it a copy sendmail would not).
//!
//! Exit codes are sendmail's (sysexits.h): 0 queued; 64 `EX_USAGE` bad command line; 65
//! `EX_DATAERR` a message that can never be sent (malformed, no sender, no usable recipient,
//! over the size limit); 74 `EX_IOERR` stdin unreadable; 75 `EX_TEMPFAIL` AWS could not be
//! reached or refused for now: nothing was queued and the helpdesk keeps the mail and retries;
//! 78 `EX_CONFIG` the configuration is incomplete (no queue URL or account).
//!
//! Configuration: the environment (`MAILBRIDGE_QUEUE_URL`, `MAILBRIDGE_ACCOUNT`,
//! `MAILBRIDGE_BUCKET`, `MAILBRIDGE_TICKET_PATTERN`, the standard `AWS_*` variables) or a config
//! file (`-C FILE`, `$MAILBRIDGE_SENDMAIL_CONFIG`, else `/etc/mailbridge/sendmail.conf` when it
//! exists) with `key = value` lines: `queue_url`, `account`, `bucket`, `ticket_pattern`,
//! `region`, `endpoint_url`, `profile`. The environment wins over the file. Web servers often
//! clear the environment of PHP and Perl children, which is why the file exists.

use std::collections::BTreeMap;
use std::io::Read as _;
use std::path::PathBuf;
use std::time::Duration;

use base64::Engine as _;
use mailbridge::mail::outgoing::read_outgoing;
use mailbridge::message_store::{MessageStore as _, S3MessageStore, s3_client};
use mailbridge::notification::{
    CURRENT_VERSION, MAX_MIME_MESSAGE_BYTES, MAX_QUEUE_MESSAGE_BYTES, MimeKind, MimeNotification,
};
use sha2::Digest as _;

/// sysexits.h codes.
pub mod exit {
    /// Queued.
    pub const OK: u8 = 0;
    /// Bad command line.
    pub const USAGE: u8 = 64;
    /// A message that can never be sent.
    pub const DATAERR: u8 = 65;
    /// stdin could not be read.
    pub const IOERR: u8 = 74;
    /// Try again later; nothing was queued.
    pub const TEMPFAIL: u8 = 75;
    /// The configuration is incomplete.
    pub const CONFIG: u8 = 78;
}

/// A failure with its exit code and one line for stderr.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct SendmailError {
    /// sysexits code.
    pub code: u8,
    /// What is wrong.
    pub message: String,
}

fn fail(code: u8, message: impl Into<String>) -> SendmailError {
    SendmailError {
        code,
        message: message.into(),
    }
}

/// The parsed command line.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct SendmailArgs {
    /// `-t`.
    pub recipients_from_header: bool,
    /// `-i` / `-oi`.
    pub ignore_dots: bool,
    /// `-f` / `-r`.
    pub sender: Option<String>,
    /// `-F`.
    pub full_name: Option<String>,
    /// `-C`.
    pub config_file: Option<PathBuf>,
    /// `-v`.
    pub verbose: bool,
    /// The arguments that are recipients.
    pub recipients: Vec<String>,
}

/// Parse a sendmail command line (without the program name).
pub fn parse_args(args: &[String]) -> Result<SendmailArgs, SendmailError> {
    let mut parsed = SendmailArgs::default();
    let mut i = 0;
    // the value of an option: glued (`-fuser@x`) or the next argument (`-f user@x`)
    let value = |i: &mut usize, glued: &str, option: &str| -> Result<String, SendmailError> {
        if !glued.is_empty() {
            return Ok(glued.to_owned());
        }
        *i += 1;
        args.get(*i)
            .cloned()
            .ok_or_else(|| fail(exit::USAGE, format!("option {option} needs a value")))
    };
    while i < args.len() {
        let arg = &args[i];
        if arg == "--" {
            parsed.recipients.extend(args[i + 1..].iter().cloned());
            break;
        }
        let Some(option) = arg.strip_prefix('-').filter(|o| !o.is_empty()) else {
            parsed.recipients.push(arg.clone());
            i += 1;
            continue;
        };
        let (flag, rest) = option.split_at(1);
        match flag {
            "t" if rest.is_empty() => parsed.recipients_from_header = true,
            "i" if rest.is_empty() => parsed.ignore_dots = true,
            "v" if rest.is_empty() => parsed.verbose = true,
            "o" if rest == "i" => parsed.ignore_dots = true,
            // other -oX / -OOption=value: queueing and delivery modes; Graph decides those
            "o" | "O" => {}
            "b" if rest == "m" => {}
            "b" => {
                return Err(fail(
                    exit::USAGE,
                    format!(
                        "-b{rest} is not supported: only -bm (read a message from stdin); use -t -i for helpdesks that speak SMTP to sendmail (-bs)"
                    ),
                ));
            }
            "f" | "r" => parsed.sender = Some(value(&mut i, rest, arg)?),
            "F" => parsed.full_name = Some(value(&mut i, rest, arg)?),
            "C" => parsed.config_file = Some(PathBuf::from(value(&mut i, rest, arg)?)),
            // DSN and body-type options: accepted, Exchange decides
            "B" | "N" | "R" | "V" | "L" => {
                value(&mut i, rest, arg)?;
            }
            _ => {
                return Err(fail(
                    exit::USAGE,
                    format!(
                        "unknown option {arg}; supported: -t -i -oi -f ADDR -F NAME -C FILE -v --"
                    ),
                ));
            }
        }
        i += 1;
    }
    Ok(parsed)
}

/// Settings from the environment and the config file.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SendmailConfig {
    /// The notification queue.
    pub queue_url: Option<String>,
    /// The account secret name.
    pub account: Option<String>,
    /// The message bucket (for messages larger than a queue message).
    pub bucket: Option<String>,
    /// A regex whose first group is the ticket number in the subject.
    pub ticket_pattern: Option<String>,
    /// AWS region.
    pub region: Option<String>,
    /// AWS endpoint override.
    pub endpoint_url: Option<String>,
    /// AWS profile.
    pub profile: Option<String>,
}

/// The default config file.
pub const DEFAULT_CONFIG_FILE: &str = "/etc/mailbridge/sendmail.conf";

impl SendmailConfig {
    /// Read `file` (when given or the default exists), then let `env` override it.
    pub fn load(
        file: Option<&std::path::Path>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, SendmailError> {
        let explicit = file
            .map(PathBuf::from)
            .or_else(|| env("MAILBRIDGE_SENDMAIL_CONFIG").map(PathBuf::from));
        let path = explicit.clone().or_else(|| {
            let default = PathBuf::from(DEFAULT_CONFIG_FILE);
            default.exists().then_some(default)
        });
        let mut values = BTreeMap::new();
        if let Some(path) = &path {
            let text = std::fs::read_to_string(path).map_err(|e| {
                fail(
                    exit::CONFIG,
                    format!("cannot read the config file {}: {e}", path.display()),
                )
            })?;
            for (n, line) in text.lines().enumerate() {
                let line = line.trim();
                if line.is_empty() || line.starts_with('#') {
                    continue;
                }
                let Some((key, value)) = line.split_once('=') else {
                    return Err(fail(
                        exit::CONFIG,
                        format!("{} line {}: expected `key = value`", path.display(), n + 1),
                    ));
                };
                let key = key.trim().to_ascii_lowercase();
                const KEYS: &[&str] = &[
                    "queue_url",
                    "account",
                    "bucket",
                    "ticket_pattern",
                    "region",
                    "endpoint_url",
                    "profile",
                ];
                if !KEYS.contains(&key.as_str()) {
                    return Err(fail(
                        exit::CONFIG,
                        format!(
                            "{} line {}: unknown key {key:?}; known: {}",
                            path.display(),
                            n + 1,
                            KEYS.join(", ")
                        ),
                    ));
                }
                values.insert(key, value.trim().trim_matches('"').to_owned());
            }
        }
        let pick = |env_name: &str, key: &str| {
            env(env_name)
                .filter(|v| !v.trim().is_empty())
                .or_else(|| values.get(key).cloned().filter(|v| !v.is_empty()))
        };
        Ok(SendmailConfig {
            queue_url: pick("MAILBRIDGE_QUEUE_URL", "queue_url"),
            account: pick("MAILBRIDGE_ACCOUNT", "account"),
            bucket: pick("MAILBRIDGE_BUCKET", "bucket"),
            ticket_pattern: pick("MAILBRIDGE_TICKET_PATTERN", "ticket_pattern"),
            region: pick("AWS_REGION", "region"),
            endpoint_url: pick("AWS_ENDPOINT_URL", "endpoint_url"),
            profile: pick("AWS_PROFILE", "profile"),
        })
    }
}

/// Read the message from `input`: up to a line with a single `.` unless `ignore_dots`, without
/// a leading mbox `From ` line. Refuses more than `limit` bytes without reading them all.
pub fn read_message(
    mut input: impl std::io::Read,
    ignore_dots: bool,
    limit: usize,
) -> Result<Vec<u8>, SendmailError> {
    let mut raw = Vec::new();
    (&mut input)
        .take(limit as u64 + 1)
        .read_to_end(&mut raw)
        .map_err(|e| {
            fail(
                exit::IOERR,
                format!("cannot read the message from stdin: {e}"),
            )
        })?;
    if raw.len() > limit {
        let mut rest = 0u64;
        let mut sink = [0u8; 64 * 1024];
        loop {
            match input.read(&mut sink) {
                Ok(0) | Err(_) => break,
                Ok(n) => rest += n as u64,
            }
        }
        return Err(fail(
            exit::DATAERR,
            format!(
                "the message is {} bytes; mailbridge sends at most {limit} (the largest send size an Exchange Online mailbox can have)",
                raw.len() as u64 + rest
            ),
        ));
    }
    if raw.starts_with(b"From ") {
        let end = memchr_newline(&raw).map_or(raw.len(), |i| i + 1);
        raw.drain(..end);
    }
    if !ignore_dots {
        let mut offset = 0;
        while offset < raw.len() {
            let end = memchr_newline(&raw[offset..]).map_or(raw.len(), |i| offset + i + 1);
            let line = &raw[offset..end];
            if line == b".\n" || line == b".\r\n" || line == b"." {
                raw.truncate(offset);
                break;
            }
            offset = end;
        }
    }
    Ok(raw)
}

fn memchr_newline(bytes: &[u8]) -> Option<usize> {
    bytes.iter().position(|&b| b == b'\n')
}

fn plausible_address(a: &str) -> bool {
    match a.rsplit_once('@') {
        Some((local, domain)) => {
            !local.is_empty()
                && domain.contains('.')
                && !domain.starts_with('.')
                && !domain.ends_with('.')
                && !a
                    .chars()
                    .any(|c| c.is_whitespace() || c.is_control() || "<>,;\"".contains(c))
        }
        None => false,
    }
}

/// The message ready to enqueue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prepared {
    /// The message as it goes out.
    pub raw: Vec<u8>,
    /// The From address.
    pub from: String,
    /// The idempotency id, from the Message-ID.
    pub id: String,
    /// The ticket number found in the subject.
    pub ticket_number: Option<String>,
}

/// Check the message against the command line and complete it (From, Message-ID, Date, Bcc
/// for argument recipients the header lacks).
pub fn prepare(
    raw: Vec<u8>,
    args: &SendmailArgs,
    ticket_pattern: Option<&regex::Regex>,
) -> Result<Prepared, SendmailError> {
    let headers = read_outgoing(&raw)
        .map_err(|e| fail(exit::DATAERR, format!("the message is malformed: {e}")))?;
    let eol: &str = if raw.windows(2).any(|w| w == b"\r\n") {
        "\r\n"
    } else {
        "\n"
    };
    let mut added: Vec<String> = Vec::new();
    let from = match (&headers.from, &args.sender) {
        (Some(from), _) => from.clone(),
        (None, Some(sender)) => {
            match &args.full_name {
                Some(name) => {
                    added.push(format!("From: \"{}\" <{sender}>", name.replace('"', "'")))
                }
                None => added.push(format!("From: <{sender}>")),
            }
            sender.clone()
        }
        (None, None) => {
            return Err(fail(
                exit::DATAERR,
                "the message has no sender: no From: field and no -f ADDRESS",
            ));
        }
    };
    if !plausible_address(&from) {
        return Err(fail(
            exit::DATAERR,
            format!("the sender {from:?} is not a mail address"),
        ));
    }
    let lower = |list: &[String]| -> Vec<String> {
        list.iter().map(|a| a.trim().to_ascii_lowercase()).collect()
    };
    let header_recipients = lower(&headers.recipients);
    let argument_recipients = lower(&args.recipients);
    if let Some(bad) = header_recipients
        .iter()
        .chain(&argument_recipients)
        .find(|a| !plausible_address(a))
    {
        return Err(fail(
            exit::DATAERR,
            format!("{bad:?} is not a usable recipient address"),
        ));
    }
    if !args.recipients_from_header {
        if argument_recipients.is_empty() {
            return Err(fail(
                exit::USAGE,
                "no recipients: give them as arguments or use -t to take them from the message",
            ));
        }
        if let Some(extra) = header_recipients
            .iter()
            .find(|h| !argument_recipients.contains(h))
        {
            return Err(fail(
                exit::DATAERR,
                format!(
                    "the message addresses {extra} in To/Cc/Bcc but not on the command line; Graph sends to every header recipient, so list it or use -t"
                ),
            ));
        }
    }
    let mut bcc: Vec<&String> = argument_recipients
        .iter()
        .filter(|a| !header_recipients.contains(a))
        .collect();
    bcc.dedup();
    if !bcc.is_empty() {
        added.push(format!(
            "Bcc: {}",
            bcc.iter()
                .map(|a| a.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    if header_recipients.is_empty() && bcc.is_empty() {
        return Err(fail(
            exit::DATAERR,
            "the message has no recipient in To, Cc or Bcc",
        ));
    }
    let message_id = match &headers.message_id {
        Some(id) => id.clone(),
        None => {
            let domain = from
                .rsplit_once('@')
                .map_or("mailbridge.invalid", |(_, d)| d);
            let id = format!("mb.sendmail.{}@{domain}", uuid::Uuid::new_v4().simple());
            added.push(format!("Message-ID: <{id}>"));
            id
        }
    };
    if !raw_has_field(&raw[..headers.body_offset], b"date") {
        added.push(format!("Date: {}", chrono::Utc::now().to_rfc2822()));
    }
    let mut out = Vec::with_capacity(raw.len() + 256);
    for line in &added {
        out.extend_from_slice(line.as_bytes());
        out.extend_from_slice(eol.as_bytes());
    }
    out.extend_from_slice(&raw);
    let digest = sha2::Sha256::digest(message_id.as_bytes());
    let id = format!("mid.{}", hex::encode(&digest[..16]));
    let ticket_number = match (ticket_pattern, &headers.subject) {
        (Some(re), Some(subject)) => re
            .captures(subject)
            .and_then(|c| c.get(1))
            .map(|m| m.as_str().to_owned())
            .filter(|t| {
                !t.is_empty()
                    && t.len() <= 32
                    && t.chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            }),
        _ => None,
    };
    Ok(Prepared {
        raw: out,
        from,
        id,
        ticket_number,
    })
}

/// Whether the header section has a field `name` (lowercase).
fn raw_has_field(header: &[u8], name: &[u8]) -> bool {
    header.split(|&b| b == b'\n').any(|line| {
        line.len() > name.len()
            && line[..name.len()].eq_ignore_ascii_case(name)
            && line[name.len()] == b':'
    })
}

/// Run `sendmail` with `args` (without the program name), reading the message from stdin.
/// Returns the exit code; errors are printed as one line on stderr.
pub fn main(args: &[String]) -> u8 {
    match run(args) {
        Ok(()) => exit::OK,
        Err(e) => {
            eprintln!(
                "mailbridge sendmail: {}",
                e.message.replace(['\r', '\n'], " ")
            );
            e.code
        }
    }
}

fn run(args: &[String]) -> Result<(), SendmailError> {
    let args = parse_args(args)?;
    let config = SendmailConfig::load(args.config_file.as_deref(), |n| std::env::var(n).ok())?;
    let queue_url = config.queue_url.clone().ok_or_else(|| {
        fail(
            exit::CONFIG,
            format!(
                "no queue: set MAILBRIDGE_QUEUE_URL or queue_url in {DEFAULT_CONFIG_FILE} (or -C FILE)"
            ),
        )
    })?;
    let account = config.account.clone().ok_or_else(|| {
        fail(
            exit::CONFIG,
            format!(
                "no account: set MAILBRIDGE_ACCOUNT (the account secret's name) or account in {DEFAULT_CONFIG_FILE}"
            ),
        )
    })?;
    let ticket_pattern = match &config.ticket_pattern {
        Some(p) => Some(regex::Regex::new(p).map_err(|e| {
            fail(
                exit::CONFIG,
                format!("MAILBRIDGE_TICKET_PATTERN {p:?}: {e}"),
            )
        })?),
        None => None,
    };
    let raw = read_message(
        std::io::stdin().lock(),
        args.ignore_dots,
        MAX_SENDMAIL_BYTES,
    )?;
    let prepared = prepare(raw, &args, ticket_pattern.as_ref())?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| fail(exit::TEMPFAIL, format!("cannot start: {e}")))?;
    let queued = runtime.block_on(enqueue(&config, &queue_url, &account, prepared))?;
    if args.verbose {
        eprintln!("mailbridge sendmail: queued {queued}");
    }
    Ok(())
}

/// The largest message accepted: the largest send size any Exchange Online mailbox can have,
/// less room for the thread marker send-notifications may add. The stack's own limit
/// (`MaxMessageBytes`, 35 MB by default) is applied by send-notifications, which parks a larger
/// message naming its size and the limit.
pub const MAX_SENDMAIL_BYTES: usize = MAX_MIME_MESSAGE_BYTES - 1024;

async fn aws_config(config: &SendmailConfig) -> aws_config::SdkConfig {
    let timeouts = aws_config::timeout::TimeoutConfig::builder()
        .connect_timeout(Duration::from_secs(5))
        .operation_attempt_timeout(Duration::from_secs(20))
        .operation_timeout(Duration::from_secs(45))
        .build();
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .timeout_config(timeouts)
        .retry_config(aws_config::retry::RetryConfig::standard().with_max_attempts(3));
    if let Some(region) = &config.region {
        loader = loader.region(aws_config::Region::new(region.clone()));
    }
    if let Some(url) = &config.endpoint_url {
        loader = loader.endpoint_url(url);
    }
    if let Some(profile) = &config.profile {
        loader = loader.profile_name(profile);
    }
    loader.load().await
}

/// Put the notification on the queue (the message in S3 first when it does not fit). Any AWS
/// failure is `EX_TEMPFAIL`: nothing is queued (a stored object is removed again) and the
/// helpdesk tries again.
async fn enqueue(
    config: &SendmailConfig,
    queue_url: &str,
    account: &str,
    prepared: Prepared,
) -> Result<String, SendmailError> {
    let aws = aws_config(config).await;
    let mut notification = MimeNotification {
        version: CURRENT_VERSION,
        kind: MimeKind::Mime,
        id: Some(prepared.id.clone()),
        account: account.to_owned(),
        from: prepared.from.clone(),
        ticket_number: prepared.ticket_number.clone(),
        raw_base64: Some(base64::engine::general_purpose::STANDARD.encode(&prepared.raw)),
        raw_ref: None,
    };
    notification
        .validate()
        .map_err(|e| fail(exit::DATAERR, format!("the notification is not valid: {e}")))?;
    let mut body = serde_json::to_string(&notification).expect("serialisable");
    let mut stored = None;
    if body.len() > MAX_QUEUE_MESSAGE_BYTES {
        let Some(bucket) = &config.bucket else {
            return Err(fail(
                exit::DATAERR,
                format!(
                    "the message is {} bytes, over what a queue message carries ({MAX_QUEUE_MESSAGE_BYTES} bytes as base64 JSON), and no bucket is configured (MAILBRIDGE_BUCKET, the stack's MessageBucketName output)",
                    prepared.raw.len()
                ),
            ));
        };
        let store = S3MessageStore::new(s3_client(&aws));
        let key = format!(
            "outgoing/{}/{}.eml",
            chrono::Utc::now().format("%Y-%m-%d"),
            uuid::Uuid::new_v4()
        );
        let object = store
            .put(bucket, &key, &prepared.raw)
            .await
            .map_err(|e| fail(exit::TEMPFAIL, e.to_string()))?;
        notification.raw_base64 = None;
        notification.raw_ref = Some(object.clone());
        body = serde_json::to_string(&notification).expect("serialisable");
        stored = Some((store, object));
    }
    let sent = aws_sdk_sqs::Client::new(&aws)
        .send_message()
        .queue_url(queue_url)
        .message_body(body)
        .send()
        .await;
    match sent {
        Ok(out) => Ok(format!(
            "{} (SQS message {})",
            prepared.id,
            out.message_id().unwrap_or_default()
        )),
        Err(e) => {
            if let Some((store, object)) = stored
                && let Err(cleanup) = store.delete(&object).await
            {
                eprintln!("mailbridge sendmail: could not remove the stored message: {cleanup}");
            }
            Err(fail(
                exit::TEMPFAIL,
                format!(
                    "SendMessage to {queue_url}: {}; nothing was queued, try again later",
                    mailbridge::error::error_chain(&e)
                ),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Result<SendmailArgs, SendmailError> {
        parse_args(&list.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn the_command_lines_helpdesks_use_parse() {
        // RT: $SendmailArguments "-oi -ENOT" is not sendmail syntax; RT's default is "-oi -t"
        let a = args(&["-oi", "-t", "-f", "rt@contoso.com"]).unwrap();
        assert!(a.ignore_dots && a.recipients_from_header);
        assert_eq!(a.sender.as_deref(), Some("rt@contoso.com"));
        // PHP mail(): sendmail_path "sendmail -t -i"
        let a = args(&["-t", "-i", "-fhelp@contoso.com"]).unwrap();
        assert_eq!(a.sender.as_deref(), Some("help@contoso.com"));
        // Ruby's mail gem (Zammad): -i -f sender -- recipients
        let a = args(&[
            "-i",
            "-f",
            "z@contoso.com",
            "--",
            "a@example.com",
            "-b@example.com",
        ])
        .unwrap();
        assert_eq!(a.recipients, ["a@example.com", "-b@example.com"]);
        let a = args(&["-odi", "-oem", "-FSupport Team", "c@example.com", "-v"]).unwrap();
        assert_eq!(a.full_name.as_deref(), Some("Support Team"));
        assert_eq!(a.recipients, ["c@example.com"]);
    }

    #[test]
    fn unsupported_options_are_usage_errors_naming_the_option() {
        for bad in [&["-bs"][..], &["-q"], &["-f"], &["-X", "/tmp/log"]] {
            let e = args(bad).unwrap_err();
            assert_eq!(e.code, exit::USAGE, "{bad:?}");
            assert!(
                e.message.contains(bad[0]) || e.message.contains("needs a value"),
                "{e}"
            );
        }
    }

    #[test]
    fn a_dot_line_ends_the_message_unless_i_and_an_mbox_from_line_is_dropped() {
        let input =
            b"From someone Sat Dec  5 10:00:00 2026\nFrom: a@example.com\n\nline\n.\nafter\n";
        let raw = read_message(&input[..], false, 1000).unwrap();
        assert_eq!(raw, b"From: a@example.com\n\nline\n");
        let raw = read_message(&input[..], true, 1000).unwrap();
        assert!(raw.ends_with(b".\nafter\n"));
        let e = read_message(&[b'x'; 2000][..], true, 1000).unwrap_err();
        assert_eq!(e.code, exit::DATAERR);
        assert!(e.message.contains("2000 bytes"), "{e}");
    }

    fn message(header: &str) -> Vec<u8> {
        format!("{header}Subject: [contoso #42] printer\n\nbody\n").into_bytes()
    }

    #[test]
    fn a_message_is_completed_and_its_id_comes_from_the_message_id() {
        let a = args(&["-f", "help@contoso.com", "-F", "Help Desk", "c@example.com"]).unwrap();
        let re = regex::Regex::new(r"\[contoso #(\d+)\]").unwrap();
        let p = prepare(message("To: c@example.com\n"), &a, Some(&re)).unwrap();
        let text = String::from_utf8(p.raw.clone()).unwrap();
        assert!(
            text.starts_with("From: \"Help Desk\" <help@contoso.com>\n"),
            "{text}"
        );
        assert!(text.contains("Message-ID: <mb.sendmail."));
        assert!(text.contains("\nDate: "));
        assert_eq!(p.from, "help@contoso.com");
        assert_eq!(p.ticket_number.as_deref(), Some("42"));
        // the same Message-ID gives the same id: a helpdesk's retry is one mail
        let with_id = message(
            "From: help@contoso.com\nTo: c@example.com\nMessage-ID: <x@y.z>\nDate: Sat, 5 Dec 2026 10:00:00 +0000\n",
        );
        let one = prepare(with_id.clone(), &a, None).unwrap();
        let two = prepare(with_id.clone(), &a, None).unwrap();
        assert_eq!(one.id, two.id);
        assert!(one.id.starts_with("mid."));
        assert_eq!(one.raw, with_id, "nothing added to a complete message");
    }

    #[test]
    fn recipients_on_the_command_line_and_in_the_header_must_agree() {
        let a = args(&["c@example.com", "audit@example.com"]).unwrap();
        let p = prepare(
            message("From: h@contoso.com\nTo: c@example.com\n"),
            &a,
            None,
        )
        .unwrap();
        assert!(
            String::from_utf8(p.raw)
                .unwrap()
                .contains("Bcc: audit@example.com\n")
        );
        let e = prepare(
            message("From: h@contoso.com\nTo: c@example.com, other@example.com\n"),
            &args(&["c@example.com"]).unwrap(),
            None,
        )
        .unwrap_err();
        assert_eq!(e.code, exit::DATAERR);
        assert!(e.message.contains("other@example.com"), "{e}");
        let e = prepare(
            message("From: h@contoso.com\n"),
            &args(&["-t"]).unwrap(),
            None,
        )
        .unwrap_err();
        assert_eq!(e.code, exit::DATAERR);
        assert!(e.message.contains("no recipient"), "{e}");
        let e = prepare(
            message("From: h@contoso.com\nTo: c@example.com\n"),
            &args(&[]).unwrap(),
            None,
        )
        .unwrap_err();
        assert_eq!(e.code, exit::USAGE);
    }

    #[test]
    fn no_sender_and_malformed_messages_are_data_errors() {
        let e = prepare(
            message("To: c@example.com\n"),
            &args(&["-t"]).unwrap(),
            None,
        )
        .unwrap_err();
        assert_eq!(e.code, exit::DATAERR);
        assert!(e.message.contains("no sender"), "{e}");
        let e = prepare(
            b"hello, this is not mail\n".to_vec(),
            &args(&["-t"]).unwrap(),
            None,
        )
        .unwrap_err();
        assert_eq!(e.code, exit::DATAERR);
        assert!(e.message.contains("malformed"), "{e}");
    }

    #[test]
    fn the_config_file_is_read_and_the_environment_wins() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sendmail.conf");
        std::fs::write(
            &path,
            "# mailbridge\nqueue_url = https://sqs.eu-west-1.amazonaws.com/1/q\naccount = mailbridge/contoso\nregion = eu-west-1\n",
        )
        .unwrap();
        let c = SendmailConfig::load(Some(&path), |n| {
            (n == "MAILBRIDGE_ACCOUNT").then(|| "mailbridge/other".to_owned())
        })
        .unwrap();
        assert_eq!(
            c.queue_url.as_deref(),
            Some("https://sqs.eu-west-1.amazonaws.com/1/q")
        );
        assert_eq!(c.account.as_deref(), Some("mailbridge/other"));
        assert_eq!(c.region.as_deref(), Some("eu-west-1"));
        std::fs::write(&path, "queue = x\n").unwrap();
        let e = SendmailConfig::load(Some(&path), |_| None).unwrap_err();
        assert_eq!(e.code, exit::CONFIG);
        assert!(e.message.contains("unknown key"), "{e}");
    }
}
