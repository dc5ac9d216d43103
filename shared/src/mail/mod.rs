//! Mail → ticket draft: a pure function from raw RFC 5322 bytes to a ticket draft.
//!
//! [`parse`] never panics and never does I/O: the poller, the operator CLI (`mailbridge parse`)
//! and the tests all call it. MIME decoding is `mail-parser`'s; this module adds what a
//! helpdesk needs on top. A mail flows through it one way, in stages:
//!
//! 1. `normalize`: line ends, 8-bit bytes in headers and other damage repaired before parsing;
//! 2. headers (here): subject, addresses, dates and ids, with the requester found even when
//!    `From` is odd or missing (`originator`);
//! 3. `body`: the MIME walk, which parts are the text and HTML bodies and which attachments,
//!    with Outlook `winmail.dat` (TNEF) parts expanded into their files by the [`tnef`] reader and
//!    each file's name made safe by `attachment_names`;
//! 4. analysis: machine mail (`auto`), bounce details (`bounce`), the new part of a reply
//!    (`reply`), readable text for HTML-only mail (`html`), an HTML body safe to render in a
//!    helpdesk (`sanitize`) and thread detection through our HMAC-signed markers ([`threading`]);
//!    `draft` holds the types they fill.
//!
//! `codec` holds the decoders every stage shares (charsets, encoded words, lenient base64,
//! percent-encoding, header unfolding), so no stage reaches back into another.
//!
//! The other direction, a helpdesk's raw outgoing message, is read and stamped with the thread
//! marker by [`outgoing`], and split for Graph's draft route when it is too large for one request
//! by [`large`].

mod attachment_names;
mod auto;
mod body;
mod bounce;
mod codec;
mod draft;
mod html;
pub mod large;
mod normalize;
mod originator;
pub mod outgoing;
mod reply;
mod sanitize;
pub mod threading;
pub mod tnef;

pub use auto::{AutoReason, AutoReasonError, MachineMailKind};
pub use draft::{
    Attachment, Bounce, MailAddress, ParseError, ParseOptions, ThreadSource, TicketDraft,
};

use codec::unfold;
use mail_parser::{Address, HeaderName, HeaderValue, Message, MessageParser, MimeHeaders};

/// The MIME parser, configured to parse only the header fields the draft uses (MIME fields,
/// subject, addresses, date, ids) and to skip the rest: `Received:` chains, DKIM/ARC
/// signatures and list headers were a third of mail-parser's time, and the machine-mail rules
/// read every field raw anyway (`Message::headers_raw`, which still lists skipped fields).
static PARSER: std::sync::LazyLock<MessageParser> = std::sync::LazyLock::new(|| {
    MessageParser::new()
        .header_content_type(HeaderName::ContentType)
        .header_content_type(HeaderName::ContentDisposition)
        .header_id(HeaderName::ContentId)
        .header_text(HeaderName::ContentTransferEncoding)
        .header_text(HeaderName::Subject)
        .header_address(HeaderName::From)
        .header_address(HeaderName::Sender)
        .header_address(HeaderName::To)
        .header_address(HeaderName::Cc)
        .header_address(HeaderName::ReplyTo)
        .header_date(HeaderName::Date)
        .header_id(HeaderName::MessageId)
        .header_id(HeaderName::InReplyTo)
        .header_id(HeaderName::References)
        .default_header_ignore()
});

/// Turns one raw message into a ticket draft. Any input yields a draft or a [`ParseError`];
/// LF, CRLF and bare-CR line ends give the same draft.
pub fn parse(raw: &[u8], opts: &ParseOptions) -> Result<TicketDraft, ParseError> {
    parse_inner(raw, opts, false).map(|parsed| parsed.draft)
}

/// A draft together with the decoded content of each of its attachments.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParsedMail {
    /// The ticket draft, exactly as [`parse`] returns it.
    pub draft: TicketDraft,
    /// Decoded bytes of `draft.attachments[i]`, same order and length as the list.
    pub attachment_contents: Vec<Vec<u8>>,
}

/// Like [`parse`], and also returns every attachment's decoded content (for the ticket API),
/// in the order of `draft.attachments`. Costs one extra copy of the attachment bytes.
pub fn parse_with_attachments(raw: &[u8], opts: &ParseOptions) -> Result<ParsedMail, ParseError> {
    parse_inner(raw, opts, true)
}

fn parse_inner(
    raw: &[u8],
    opts: &ParseOptions,
    keep_contents: bool,
) -> Result<ParsedMail, ParseError> {
    let normalized = normalize::normalize(raw)?;
    let data = normalized.data.as_ref();
    // mail-parser can panic on some inconsistent MIME trees (found by the proptests, see
    // tests/parse_props.proptest-regressions). `parse` promises a draft or an error for any
    // input, and the release profile keeps `panic = "unwind"`, so the panic is caught here
    // and reported as `InconsistentMime` (the poller then files the raw mail with a note).
    let built = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let message = PARSER.parse(data).ok_or(ParseError::Unparseable)?;
        if message.parts.is_empty() {
            return Err(ParseError::Unparseable);
        }
        // The MIME tree is dropped at the end of this closure, before the reply text
        // copies the body.
        Ok(build_draft(
            &message,
            data,
            normalized.charset_hint,
            opts,
            keep_contents,
        ))
    }));
    let (mut draft, contents) = built.map_err(|_| ParseError::InconsistentMime)??;
    draft.reply_text = reply::reply_text(&draft.body_text);
    draft.body_html_sanitized =
        draft
            .body_html
            .as_deref()
            .and_then(sanitize::sanitize)
            .map(|html| match opts.thread_key.as_deref() {
                Some(key) => threading::strip_footer_markers(&html, key).into_owned(),
                None => html,
            });
    Ok(ParsedMail {
        draft,
        attachment_contents: contents.unwrap_or_default(),
    })
}

fn build_draft(
    message: &Message<'_>,
    raw: &[u8],
    charset_hint: Option<&'static encoding_rs::Encoding>,
    opts: &ParseOptions,
    keep_contents: bool,
) -> (TicketDraft, Option<Vec<Vec<u8>>>) {
    let headers = auto::Headers::new(message.headers_raw());
    // Our own RFC 2047 decoding of the raw Subject when it has encoded-words (see
    // `codec::decode_encoded_words` for what mail-parser gets wrong there).
    let subject = headers
        .first("subject")
        .and_then(|raw| codec::decode_encoded_words(&raw))
        .or_else(|| message.subject().map(str::to_string))
        .map(|s| unfold(&codec::fix_embedded_iso_2022_jp(&s)))
        .unwrap_or_default();
    let from = originator::originator(message, &headers);
    let message_id = message
        .message_id()
        .map(|id| codec::strip_angles(id).to_string())
        .filter(|id| !id.is_empty());
    let in_reply_to = ids(message.in_reply_to()).into_iter().next();
    let references = ids(message.references());
    let date = message
        .date()
        .and_then(|d| {
            chrono::DateTime::parse_from_rfc3339(&d.to_rfc3339())
                .ok()
                .map(|d| d.to_rfc3339())
        })
        .or_else(|| headers.first("date").and_then(|d| obsolete_date(&d)));

    let mut bodies = body::collect(message, raw, charset_hint, keep_contents);
    // Whether `body_text` is the HTML body's displayed text (no text/plain body).
    let mut html_only = bodies.text_parts.is_empty() && bodies.html.is_some();
    let body_text = if !bodies.text_parts.is_empty() {
        join_texts(std::mem::take(&mut bodies.text_parts))
    } else if let Some(html) = &bodies.html {
        html::html_to_text(html)
    } else {
        String::new()
    };
    // A mail whose only body is inside its winmail.dat (TNEF): that body.
    let body_text = if body_text.trim().is_empty() && bodies.html.is_none() {
        bodies.html = bodies.tnef_body_html.take();
        match (bodies.tnef_body_text.take(), &bodies.html) {
            (Some(text), _) => text.trim_end().to_string(),
            (None, Some(html)) => {
                html_only = true;
                html::html_to_text(html)
            }
            (None, None) => body_text,
        }
    } else {
        body_text
    };

    let root = message.root_part();
    let report_type = root
        .content_type()
        .filter(|ct| {
            ct.ctype().eq_ignore_ascii_case("multipart")
                && ct
                    .subtype()
                    .is_some_and(|s| s.eq_ignore_ascii_case("report"))
        })
        .map(|ct| {
            ct.attribute("report-type")
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        });
    let has_disposition_notification = bodies.attachments.iter().any(|a| {
        a.content_type == "message/disposition-notification"
            || a.content_type == "message/global-disposition-notification"
    });
    let evidence = auto::Evidence {
        headers: &headers,
        from_address: from
            .as_ref()
            .map(|f| f.address.as_str())
            .filter(|a| !a.is_empty()),
        subject: &subject,
        message_id: message_id.as_deref(),
        report_type,
        has_delivery_status: !bodies.delivery_status.is_empty(),
        has_disposition_notification,
        has_returned_message: !bodies.returned_headers.is_empty(),
        body_text: &body_text,
        own_addresses: &opts.own_addresses,
        thread_key: opts.thread_key.as_deref(),
    };
    let auto_reason = auto::classify(&evidence);
    let to = message.to().map(addresses).unwrap_or_default();
    let bounce = auto_reason
        .as_ref()
        .filter(|r| r.kind == MachineMailKind::Bounce)
        .map(|_| {
            bounce::extract(
                &bodies.delivery_status,
                &bodies.returned_headers,
                &body_text,
                &headers,
                &to,
            )
        });

    // A bounce or delivery report names the mail it reports on in its returned headers; in any
    // other mail those are a forwarded message's (or a crafted part's), not a reply to ours.
    let is_report = auto_reason.as_ref().is_some_and(|r| r.kind.is_report());
    let (ticket_number, thread_source) = match opts.thread_key.as_deref() {
        Some(key) => signed_thread(
            key,
            &SignedLayers {
                headers: &headers,
                in_reply_to: in_reply_to.as_deref(),
                references: &references,
                body_text: &body_text,
                // HTML-only mail: `body_text` is already the HTML's displayed text.
                body_html: bodies.html.as_deref().filter(|_| !html_only),
                returned_headers: if is_report {
                    &bodies.returned_headers
                } else {
                    &[]
                },
            },
        ),
        None => (None, None),
    };
    let subject_ticket_number = subject_ticket(opts, &subject);
    let body_text = match opts.thread_key.as_deref() {
        Some(key) => match threading::strip_footer_markers(&body_text, key) {
            std::borrow::Cow::Owned(stripped) => stripped,
            std::borrow::Cow::Borrowed(_) => body_text,
        },
        None => body_text,
    };

    let draft = TicketDraft {
        message_id,
        subject,
        from,
        to,
        cc: message.cc().map(addresses).unwrap_or_default(),
        reply_to: message.reply_to().map(addresses).unwrap_or_default(),
        date,
        in_reply_to,
        references,
        body_text,
        body_html: bodies.html,
        // Filled in by `parse` once the MIME tree is freed.
        body_html_sanitized: None,
        reply_text: String::new(),
        attachments: bodies.attachments,
        auto_generated: auto_reason.is_some(),
        auto_reason,
        bounce,
        ticket_number,
        thread_source,
        subject_ticket_number,
    };
    (draft, bodies.contents)
}

/// Where the signed layers may carry a thread reference.
struct SignedLayers<'a> {
    headers: &'a auto::Headers<'a>,
    in_reply_to: Option<&'a str>,
    references: &'a [String],
    body_text: &'a str,
    /// The HTML body, when `body_text` is not already its displayed text.
    body_html: Option<&'a str>,
    /// Returned header blocks, for bounces and delivery reports only.
    returned_headers: &'a [String],
}

/// Thread detection through the signed layers, in order of trust: a verified marker (header,
/// text footer, or the HTML's displayed text: a marker in a hidden element, a comment or an
/// attribute is not read), then a verified reference in In-Reply-To/References or in the
/// returned headers of a report.
fn signed_thread(key: &[u8], layers: &SignedLayers<'_>) -> (Option<String>, Option<ThreadSource>) {
    let header_ref = layers
        .headers
        .all(&threading::REFERENCE_HEADER.to_ascii_lowercase())
        .find_map(|v| threading::verify_reference(&v, key));
    let marker = header_ref
        .or_else(|| threading::find_footer_marker(layers.body_text, key))
        .or_else(|| {
            // Rendering costs a pass over the HTML: only when it may hold a marker at all.
            layers
                .body_html
                .filter(|html| threading::find_footer_marker(html, key).is_some())
                .and_then(|html| threading::find_footer_marker(&html::html_to_text(html), key))
        });
    if let Some(ticket) = marker {
        return (Some(ticket), Some(ThreadSource::Marker));
    }
    let by_reference = layers
        .in_reply_to
        .into_iter()
        .chain(layers.references.iter().rev().map(String::as_str))
        .find_map(|id| threading::find_reference_in_id(id, key))
        .or_else(|| {
            // A bounce of our own notification: the returned headers carry our Message-ID.
            layers
                .returned_headers
                .iter()
                .find_map(|h| threading::find_reference_in_id(h, key))
        });
    match by_reference {
        Some(ticket) => (Some(ticket), Some(ThreadSource::References)),
        None => (None, None),
    }
}

/// The ticket number in the subject, by the configured patterns (first match wins).
fn subject_ticket(opts: &ParseOptions, subject: &str) -> Option<String> {
    opts.subject_ticket_patterns.iter().find_map(|pattern| {
        let c = pattern.captures(subject)?;
        let m = c.name("ticket").or_else(|| c.get(1)).or_else(|| c.get(0))?;
        let ticket = m.as_str().trim();
        (!ticket.is_empty()).then(|| ticket.to_string())
    })
}

/// A `Date` that mail-parser rejects, in the obsolete RFC 5322 forms old clients still send
/// (two-digit year, no seconds, `EST`-style zone names): chrono's RFC 2822 parser reads them.
fn obsolete_date(value: &str) -> Option<String> {
    let value = value.split('(').next().unwrap_or(value).trim();
    if let Ok(d) = chrono::DateTime::parse_from_rfc2822(value) {
        return Some(d.to_rfc3339());
    }
    // No seconds (`10:00 EST`): chrono wants them.
    static HH_MM: std::sync::LazyLock<regex::Regex> = std::sync::LazyLock::new(|| {
        regex::Regex::new(r"(\s\d{1,2}:\d{2})(\s+[+\-A-Za-z])").expect("static regex")
    });
    let with_seconds = HH_MM.replace(value, "${1}:00${2}");
    chrono::DateTime::parse_from_rfc2822(&with_seconds)
        .ok()
        .map(|d| d.to_rfc3339())
}

fn addresses(address: &Address<'_>) -> Vec<MailAddress> {
    let list: Vec<&mail_parser::Addr<'_>> = match address {
        Address::List(list) => list.iter().collect(),
        Address::Group(groups) => groups.iter().flat_map(|g| g.addresses.iter()).collect(),
    };
    list.into_iter()
        .filter_map(|a| {
            let address = a.address.as_deref()?.trim();
            if address.is_empty() || !address.contains('@') {
                return None;
            }
            let name = a
                .name
                .as_deref()
                .map(|n| {
                    unfold(&codec::fix_embedded_iso_2022_jp(n))
                        .trim_matches(['"', '\'', ' '])
                        .to_string()
                })
                .filter(|n| !n.is_empty());
            Some(MailAddress {
                name,
                address: address.to_string(),
            })
        })
        .collect()
}

fn ids(value: &HeaderValue<'_>) -> Vec<String> {
    let raw: Vec<&str> = match value {
        HeaderValue::Text(t) => vec![t.as_ref()],
        HeaderValue::TextList(l) => l.iter().map(|t| t.as_ref()).collect(),
        _ => Vec::new(),
    };
    raw.into_iter()
        .map(|id| codec::strip_angles(id).to_string())
        .filter(|id| !id.is_empty() && !id.contains(char::is_whitespace))
        .collect()
}

fn join_texts(parts: Vec<String>) -> String {
    let mut out = String::new();
    for mut p in parts {
        // Drop trailing whitespace and leading blank lines; keep the first line's indentation.
        let end = p.trim_end().len();
        p.truncate(end);
        let start = match p.find(|c: char| !c.is_whitespace()) {
            Some(first) => p[..first].rfind('\n').map_or(0, |nl| nl + 1),
            None => continue,
        };
        if out.is_empty() {
            p.drain(..start);
            out = p;
        } else {
            out.push_str("\n\n");
            out.push_str(&p[start..]);
        }
    }
    out
}

/// Haystacks for the tests that pin the cheap pre-checks of the mail modules to the regexes
/// they guard: the fixture mails (`tests/fixtures/mail/*.eml`) as text, plus the `.eml`
/// files of any directories listed in `MAILBRIDGE_TEST_MAIL_DIRS` (`:`-separated; e.g. a bounce
/// corpus), each whole and cut at its blank lines (header blocks, bodies).
#[cfg(test)]
pub(crate) fn test_texts() -> Vec<String> {
    let mut dirs =
        vec![std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/mail")];
    if let Ok(extra) = std::env::var("MAILBRIDGE_TEST_MAIL_DIRS") {
        dirs.extend(extra.split(':').filter(|d| !d.is_empty()).map(Into::into));
    }
    let mut texts = Vec::new();
    for dir in dirs {
        for entry in std::fs::read_dir(&dir).expect("mail directory exists") {
            let path = entry.expect("directory entry").path();
            if path.extension().is_some_and(|e| e == "eml") {
                let text =
                    String::from_utf8_lossy(&std::fs::read(&path).expect("readable")).into_owned();
                texts.extend(text.split("\n\n").map(str::to_string));
                texts.extend(text.split("\r\n\r\n").map(str::to_string));
                texts.push(text);
            }
        }
    }
    assert!(texts.len() > 300, "the fixture mails are there");
    texts
}

#[cfg(test)]
mod tests {
    use super::obsolete_date;

    #[test]
    fn obsolete_dates_are_read() {
        assert_eq!(
            obsolete_date("2 Feb 24 10:00 EST").as_deref(),
            Some("2024-02-02T10:00:00-05:00")
        );
        assert_eq!(
            obsolete_date("Fri, 2 Feb 2024 10:00:30 GMT (comment)").as_deref(),
            Some("2024-02-02T10:00:30+00:00")
        );
        assert_eq!(obsolete_date("yesterday"), None);
    }
}
