//! Machine-mail detection: the union of Request Tracker's, osTicket's, Zammad's and FreeScout's
//! rules (RFC 3834 `Auto-Submitted`, `Precedence`, `X-Auto-Response-Suppress`, `X-Autoreply`
//! and friends, `X-Loop`, list headers, null return path, mailer-daemon, DSN/MDN reports,
//! Exchange out-of-office markers, auto-reply subjects) plus our own loop detection.
//!
//! The first matching rule wins; rules are ordered from most to least specific so the reason
//! names the best category: `loop`, `bounce`, `read_receipt`, `feedback_report`,
//! `delivery_report`, `out_of_office`, `auto_reply`, `auto_generated`, `mailing_list`, `bulk`.

use super::codec::unfold_value;
use super::threading;
use regex::Regex;
use std::borrow::Cow;
use std::sync::LazyLock;

/// The header fields of the top-level message, borrowed from it. Names are looked up ASCII
/// case-insensitively (callers pass lower-case names); values are unfolded and trimmed when
/// read, so the many fields no rule asks about (Received, DKIM-Signature, ...) cost nothing.
pub(crate) struct Headers<'a>(Vec<(&'a str, &'a str)>);

impl<'a> Headers<'a> {
    pub(crate) fn new(raw: impl Iterator<Item = (&'a str, &'a str)>) -> Self {
        Self(raw.map(|(n, v)| (n.trim(), v)).collect())
    }

    /// Every value of the field `name` (lower-case).
    pub(crate) fn all<'s>(&'s self, name: &'s str) -> impl Iterator<Item = Cow<'a, str>> + 's {
        self.0
            .iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| unfold_value(v))
    }

    /// The first value of the field `name` (lower-case).
    pub(crate) fn first(&self, name: &str) -> Option<Cow<'a, str>> {
        self.0
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| unfold_value(v))
    }

    fn has(&self, name: &str) -> bool {
        self.0.iter().any(|(n, _)| n.eq_ignore_ascii_case(name))
    }
}

/// What the rules look at besides the headers.
pub(crate) struct Evidence<'a> {
    pub headers: &'a Headers<'a>,
    pub from_address: Option<&'a str>,
    pub subject: &'a str,
    pub message_id: Option<&'a str>,
    /// `report-type` of a top-level `multipart/report`, lower-cased.
    pub report_type: Option<String>,
    /// Whether any leaf is a `message/delivery-status`.
    pub has_delivery_status: bool,
    /// Whether any leaf is a `message/disposition-notification`.
    pub has_disposition_notification: bool,
    /// Whether a message or its headers come back inside this one (`message/rfc822`,
    /// `text/rfc822-headers`).
    pub has_returned_message: bool,
    /// The text body (for DSN fields written into the text).
    pub body_text: &'a str,
    pub own_addresses: &'a [String],
    pub thread_key: Option<&'a [u8]>,
}

static AUTO_REPLY_SUBJECT: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r"(?i)^\s*(automatic reply|auto[- ]?reply|autoreply|auto[- ]?response|automatische antwort|abwesenheitsnotiz|r[ée]ponse automatique|respuesta autom[áa]tica|risposta automatica|automatisch antwoord|autosvar|automaattinen vastaus|resposta autom[áa]tica|odpowied[źz] automatyczna|automatick[áa] odpov[ěe][ďd]|out of (the )?office( reply| autoreply)?|i am out of the office|abwesend|vacation reply)(\s*[:\-(]|\s*$)",
    )
    .expect("static regex")
});

static VACATION_WORDS: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?i)vacation|out of (the )?office|abwesen|absent|cong[ée]s|ausencia|ferie|automatic reply|automatische antwort|r[ée]ponse automatique")
        .expect("static regex")
});

static BOUNCE_SUBJECT: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r"(?i)^\s*(\[\s*)?(undeliver(able|ed)( mail| message)?|undelivered mail returned to sender|delivery status notification( \(failure\)| \(delay\))?|delivery (failure|failed|has failed)|mail delivery (failed|failure|subsystem)|returned mail|failure notice|non remis|unzustellbar|nicht zustellbar|message not delivered|mail system error|warning: could not send message|delivery notification|returned to sender|bounced?(\s*\]|\s*:|\s+(mail|message|notification)\b|\s*$)|non[- ]?deliver(y|able)( report| notification| message)?\b|non recapitabile|no se puede entregar|onbestelbaar|olevererbart|kézbesíthetetlen|nedoručitelné|não entregue)",
    )
    .expect("static regex")
});

/// Bounce subjects in Japanese, Chinese and Korean mail systems (carriers' Shift_JIS and
/// ISO-2022-JP bounces among them): words no greeting or question starts with, searched
/// anywhere in the subject.
static LOCALIZED_BOUNCE_SUBJECT: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r"(不達|未達|(配信|送信|配送|配達)(不能|エラー|失敗|不可)|エラーメール|返送メール|宛先不明|(送信|配信|配達)できませんでした|届きませんでした|系统退信|退信通知|无法投递|投递失败|邮件退回|반송|전송 실패|배달 실패)",
    )
    .expect("static regex")
});

/// The fields of an RFC 3464 per-recipient block written into the text itself (mailers that
/// send a DSN without its `message/delivery-status` part): a `Final-Recipient` line with an
/// address and a `Status` line with a class 4 or 5 code, each at the start of a line (so not
/// quoted). Two plain line patterns, both required (see [`has_dsn_fields_in_text`]).
static DSN_RECIPIENT_LINE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?im)^[ \t]*final-recipient[ \t]*:[^\n@]*@").expect("static regex")
});
static DSN_STATUS_LINE: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"(?im)^[ \t]*status[ \t]*:[ \t]*[45]\.\d").expect("static regex"));

fn has_dsn_fields_in_text(text: &str) -> bool {
    DSN_RECIPIENT_LINE.is_match(text) && DSN_STATUS_LINE.is_match(text)
}

static FEEDBACK_SUBJECT: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?i)^\s*(complaint about message from|abuse report|spam report|fbl report)")
        .expect("static regex")
});

/// Whether an originator address reads like a mail system's rather than a person's.
fn system_sender(address: &str) -> bool {
    let l = address.to_ascii_lowercase();
    [
        "daemon",
        "postmaster",
        "mailer",
        "bounce",
        "no-reply",
        "noreply",
        "mail-delivery",
    ]
    .iter()
    .any(|w| l.contains(w))
}

fn daemon_sender(address: &str) -> bool {
    let local = address
        .rsplit_once('@')
        .map_or(address, |(l, _)| l)
        .to_ascii_lowercase();
    matches!(
        local.as_str(),
        "mailer-daemon" | "mailer_daemon" | "postmaster" | "mail-daemon" | "maildaemon"
    ) || local.starts_with("mailer-daemon")
}

fn token_in(value: &str, tokens: &[&str]) -> bool {
    let v = value.trim().to_ascii_lowercase();
    tokens
        .iter()
        .any(|t| v == *t || v.starts_with(&format!("{t};")) || v.starts_with(&format!("{t} ")))
}

fn own(address: &str, own_addresses: &[String]) -> bool {
    own_addresses
        .iter()
        .any(|o| !o.trim().is_empty() && address.trim().eq_ignore_ascii_case(o.trim()))
}

/// The reason the mail is machine mail, or `None` for human mail.
pub(crate) fn classify(e: &Evidence<'_>) -> Option<String> {
    let h = e.headers;
    // 1. Our own mail coming back: a loop.
    if let Some(from) = e.from_address
        && own(from, e.own_addresses)
    {
        return Some(format!("loop: sent from own address {from}"));
    }
    for x_loop in h.all("x-loop") {
        if e.own_addresses.iter().any(|o| {
            !o.trim().is_empty()
                && x_loop
                    .to_ascii_lowercase()
                    .contains(&o.trim().to_ascii_lowercase())
        }) {
            return Some(format!("loop: X-Loop names own address ({x_loop})"));
        }
    }
    if let Some(key) = e.thread_key {
        if h.all(&threading::REFERENCE_HEADER.to_ascii_lowercase())
            .any(|v| threading::verify_reference(&v, key).is_some())
        {
            return Some("loop: carries our X-Mailbridge-Ref header (own notification)".into());
        }
        if let Some(id) = e.message_id
            && id.starts_with("mb.")
            && threading::find_reference_in_id(id, key).is_some()
        {
            return Some("loop: Message-ID is one of our own notifications".into());
        }
    }
    if h.has("x-rt-loop-prevention") {
        return Some("loop: X-RT-Loop-Prevention".into());
    }

    // 2. Reports: DSN (bounce or delay), MDN, ARF.
    match e.report_type.as_deref() {
        Some("delivery-status") | Some("global-delivery-status") => {
            return Some("bounce: multipart/report; report-type=delivery-status".into());
        }
        Some("disposition-notification") | Some("global-disposition-notification") => {
            return Some(
                "read_receipt: multipart/report; report-type=disposition-notification".into(),
            );
        }
        Some("feedback-report") => {
            return Some("feedback_report: multipart/report; report-type=feedback-report".into());
        }
        Some(other) => {
            return Some(format!(
                "delivery_report: multipart/report; report-type={other}"
            ));
        }
        None => {}
    }
    if FEEDBACK_SUBJECT.is_match(e.subject) {
        return Some(format!("feedback_report: subject \"{}\"", e.subject.trim()));
    }
    if e.has_delivery_status {
        return Some("bounce: message/delivery-status part".into());
    }
    if e.has_disposition_notification {
        return Some("read_receipt: message/disposition-notification part".into());
    }
    if e.report_type.is_some() {
        return Some("delivery_report: multipart/report".into());
    }
    if let Some(rcpt) = h.first("x-failed-recipients") {
        return Some(format!("bounce: X-Failed-Recipients {rcpt}"));
    }
    if let Some(from) = e.from_address
        && daemon_sender(from)
    {
        return Some(format!("bounce: sent by {from}"));
    }
    if let Some(from) = h.first("from")
        && from.to_ascii_lowercase().contains("mailer-daemon")
    {
        return Some("bounce: sent by MAILER-DAEMON".into());
    }
    // The envelope sender of a bounce delivered locally (`Return-Path: <MAILER-DAEMON>`).
    if let Some(envelope) = h.all("return-path").find(|v| {
        let address = v.trim().trim_matches(['<', '>']).trim();
        !address.is_empty() && daemon_sender(address)
    }) {
        return Some(format!("bounce: Return-Path {}", envelope.trim()));
    }
    let null_sender = h
        .all("return-path")
        .any(|v| v.trim().trim_matches(['<', '>']).trim().is_empty() || v.trim() == "<>");
    let bounce_subject =
        BOUNCE_SUBJECT.is_match(e.subject) || LOCALIZED_BOUNCE_SUBJECT.is_match(e.subject);
    if null_sender && bounce_subject {
        return Some(format!(
            "bounce: Return-Path <> and subject \"{}\"",
            e.subject.trim()
        ));
    }
    // A bounce subject from a mail system's address, or with the returned message attached
    // (a person forwarding a bounce writes `Fw:` before it).
    if bounce_subject && (e.from_address.is_none_or(system_sender) || e.has_returned_message) {
        return Some(format!("bounce: subject \"{}\"", e.subject.trim()));
    }
    if has_dsn_fields_in_text(e.body_text) {
        return Some("bounce: delivery status fields (Final-Recipient, Status) in the text".into());
    }

    // 3. Out of office.
    let auto_submitted = h.first("auto-submitted").map(|v| v.to_ascii_lowercase());
    if h.has("x-ms-exchange-inbox-rules-loop")
        && h.all("x-auto-response-suppress")
            .any(|v| v.eq_ignore_ascii_case("all"))
    {
        return Some("out_of_office: Exchange (X-MS-Exchange-Inbox-Rules-Loop)".into());
    }
    if let Some(src) = h.first("x-ms-exchange-generated-message-source") {
        return Some(format!(
            "out_of_office: X-MS-Exchange-Generated-Message-Source {src}"
        ));
    }
    if let Some(a) = &auto_submitted {
        if a.starts_with("auto-replied") && (a.contains("vacation") || a.contains("owner-email=")) {
            return Some(format!("out_of_office: Auto-Submitted {a}"));
        }
        if a.starts_with("vacation") {
            return Some(format!("out_of_office: Auto-Submitted {a}"));
        }
        if a.starts_with("auto-replied") && VACATION_WORDS.is_match(e.subject) {
            return Some(format!(
                "out_of_office: Auto-Submitted {a} with subject \"{}\"",
                e.subject.trim()
            ));
        }
    }
    if AUTO_REPLY_SUBJECT.is_match(e.subject) {
        let kind = if VACATION_WORDS.is_match(e.subject) {
            "out_of_office"
        } else {
            "auto_reply"
        };
        return Some(format!("{kind}: subject \"{}\"", e.subject.trim()));
    }

    // 4. Auto-replies and other generated mail.
    for name in [
        "x-autoreply",
        "x-autorespond",
        "x-autoresponse",
        "x-autoreply-from",
        "x-mail-autoreply",
        "x-autoresponder",
    ] {
        if let Some(v) = h.first(name) {
            if name == "x-autoreply" && v.eq_ignore_ascii_case("no") {
                continue;
            }
            return Some(format!("auto_reply: {} {v}", canonical(name)));
        }
    }
    if let Some(a) = &auto_submitted
        && a.trim() != "no"
        && !a.trim().is_empty()
    {
        let kind = if a.starts_with("auto-replied") {
            "auto_reply"
        } else {
            "auto_generated"
        };
        return Some(format!("{kind}: Auto-Submitted {a}"));
    }
    if let Some(v) = h.all("x-auto-response-suppress").find(|v| {
        let v = v.to_ascii_lowercase();
        v.split([',', ' ']).any(|t| t == "all" || t == "autoreply")
    }) {
        return Some(format!("auto_generated: X-Auto-Response-Suppress {v}"));
    }
    if let Some(v) = h.first("x-autogenerated")
        && v.eq_ignore_ascii_case("reply")
    {
        return Some("auto_reply: X-Autogenerated reply".into());
    }
    if let Some(v) = h.first("x-amazon-mail-relay-type")
        && v.eq_ignore_ascii_case("notification")
    {
        return Some("auto_generated: X-AMAZON-MAIL-RELAY-TYPE notification".into());
    }
    if let Some(v) = h.first("x-fc-machinegenerated")
        && v.eq_ignore_ascii_case("true")
    {
        return Some("auto_generated: X-FC-MachineGenerated true".into());
    }
    if h.has("x-amz-sns-message-id") {
        return Some("auto_generated: Amazon SNS notification (x-amz-sns-message-id)".into());
    }
    if let Some(v) = h.first("x-loop") {
        return Some(format!("auto_generated: X-Loop {v}"));
    }
    if let Some(v) = h.first("list-id") {
        return Some(format!("mailing_list: List-Id {v}"));
    }
    for name in ["precedence", "x-precedence"] {
        if let Some(v) = h.first(name)
            && token_in(&v, &["bulk", "junk", "list", "auto_reply", "auto-reply"])
        {
            let kind = if token_in(&v, &["list"]) {
                "mailing_list"
            } else if token_in(&v, &["auto_reply", "auto-reply"]) {
                "auto_reply"
            } else {
                "bulk"
            };
            return Some(format!("{kind}: {} {v}", canonical(name)));
        }
    }
    if null_sender {
        return Some("auto_generated: Return-Path <>".into());
    }

    // 5. Bulk mail.
    if h.has("list-unsubscribe") {
        return Some("bulk: List-Unsubscribe".into());
    }
    None
}

fn canonical(name: &str) -> String {
    name.split('-')
        .map(|w| {
            let mut c = w.chars();
            c.next()
                .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                .unwrap_or_default()
        })
        .collect::<Vec<_>>()
        .join("-")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounce_subjects_are_recognised_and_others_are_not() {
        let bounce = |s: &str| BOUNCE_SUBJECT.is_match(s) || LOCALIZED_BOUNCE_SUBJECT.is_match(s);
        for subject in [
            "[BOUNCE]",
            "[BOUNCE] Quarterly report",
            "Bounce: Quarterly report",
            "Bounced mail",
            "Non-delivery report: Quarterly report",
            "Undeliverable: Quarterly report",
            "Mail System Error - Returned Mail",
            "メール送信エラーのお知らせ",
            "【重要】メールが届きませんでした",
            "不達通知",
            "系统退信",
            "Non recapitabile: Report",
        ] {
            assert!(bounce(subject), "{subject:?}");
        }
        for subject in [
            "Bounce house rental for Friday",
            "Re: Undeliverable: Quarterly report",
            "FW: [BOUNCE] Quarterly report",
            "Printer does not bounce the paper",
            "メールの設定について",
        ] {
            assert!(!bounce(subject), "{subject:?}");
        }
    }

    #[test]
    fn dsn_fields_count_only_at_line_starts() {
        let dsn = "Final-Recipient: rfc822; a@b.example\nAction: failed\nStatus: 5.1.1\n";
        assert!(has_dsn_fields_in_text(dsn));
        assert!(has_dsn_fields_in_text(&format!("text\n\n  {dsn}")));
        let quoted = format!("> {}", dsn.trim_end().replace('\n', "\n> "));
        assert!(!has_dsn_fields_in_text(&quoted));
        assert!(!has_dsn_fields_in_text(
            "Final-Recipient: rfc822; a@b.example\nStatus: 2.0.0\n"
        ));
        assert!(!has_dsn_fields_in_text(
            "Status: 5.1.1\nno recipient line\n"
        ));
    }
}
