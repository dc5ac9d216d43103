//! A read mail → what is posted for it: the ticket payload and its dedupe key; for a mail that
//! could not be read whole (unparseable, over the size limit) a payload from its headers with a
//! note saying why; for machine mail that opens no ticket, the reason it is set aside.

use base64::Engine as _;
use mailbridge::mail::AutoReason;
use mailbridge::mailbox::MailboxConfig;
use mailbridge::ticket_sink::{TICKET_PAYLOAD_SCHEMA, TicketPayload};

use crate::convert::{self, ParseContext};
use crate::dedupe::{self, DedupeKey};

pub(super) struct Prepared {
    pub(super) key: DedupeKey,
    pub(super) payload: TicketPayload,
    pub(super) problem: bool,
    /// Machine mail that must not open a ticket: its `auto_reason`.
    pub(super) skip_auto_generated: Option<AutoReason>,
}

/// What converting a mail of a mailbox needs: built once per window, shared by the threads
/// that parse its mails.
pub(super) struct MailContext {
    config: MailboxConfig,
    /// The mailbox's helpdesk's own ticket tags in subjects (compiled once per window).
    subject_patterns: Vec<regex::Regex>,
    parse: ParseContext,
}

impl MailContext {
    pub(super) fn new(config: &MailboxConfig, parse: &ParseContext) -> Self {
        MailContext {
            subject_patterns: config.sink.subject_patterns(),
            config: config.clone(),
            parse: parse.clone(),
        }
    }
}

pub(super) fn prepare(
    MailContext {
        config,
        subject_patterns,
        parse,
    }: &MailContext,
    received_at: chrono::DateTime<chrono::Utc>,
    raw: Option<&[u8]>,
    header_block: Option<&[u8]>,
    (size, limit): (u64, u64),
) -> Prepared {
    let payload =
        |key: &DedupeKey, draft, attachments, problem: Option<String>, raw64| TicketPayload {
            schema: TICKET_PAYLOAD_SCHEMA.to_string(),
            mailbox: config.name.clone(),
            mailbox_address: config.user.clone(),
            received_at,
            idempotency_key: key.hash.clone(),
            draft,
            attachments,
            problem,
            raw_message_base64: raw64,
        };
    match (raw, header_block) {
        (Some(raw), _) => {
            let key = dedupe::key_for_raw(&config.name, raw);
            // One parse gives the draft and the attachment contents.
            match convert::parse_mail(raw, &config.user, subject_patterns, parse) {
                Ok(mailbridge::mail::ParsedMail {
                    draft,
                    attachment_contents,
                }) => {
                    if let Some(reason) = crate::machine_mail::unticketed_auto_generated_reason(
                        &draft,
                        config.list_mail,
                    ) {
                        // Not posted: no attachment contents needed.
                        return Prepared {
                            payload: payload(&key, draft, Vec::new(), None, None),
                            key,
                            problem: false,
                            skip_auto_generated: Some(reason),
                        };
                    }
                    let attachments = convert::attachments_with_content(
                        &draft,
                        attachment_contents,
                        config.max_attachment_bytes,
                    );
                    Prepared {
                        payload: payload(&key, draft, attachments, None, None),
                        key,
                        problem: false,
                        skip_auto_generated: None,
                    }
                }
                Err(reason) => {
                    let (fields, _) = dedupe::split_headers(raw);
                    let attach_raw = (raw.len() as u64) <= config.max_attachment_bytes;
                    let note = format!(
                        "mailbridge could not parse this mail ({reason}); {}",
                        if attach_raw {
                            "the raw message is attached"
                        } else {
                            "the raw message is over the attachment cap and was not attached"
                        }
                    );
                    let draft = convert::draft_from_headers(&fields, &note);
                    let raw64 =
                        attach_raw.then(|| base64::engine::general_purpose::STANDARD.encode(raw));
                    Prepared {
                        payload: payload(&key, draft, Vec::new(), Some(note), raw64),
                        key,
                        problem: true,
                        skip_auto_generated: None,
                    }
                }
            }
        }
        (None, header_block) => {
            let header_block = header_block.unwrap_or_default();
            let key = dedupe::key_for_header_only(&config.name, header_block, size);
            let (fields, _) = dedupe::split_headers(header_block);
            let by_memory = if limit < config.max_message_bytes {
                " (the poller's memory allows no more: raise PollMemorySize)"
            } else {
                ""
            };
            let note = format!(
                "this mail is {size} bytes, over the {limit}-byte limit of mailbox {}{by_memory}: only its headers were read; the full mail is in folder {:?}",
                config.name, config.failed_folder
            );
            let draft = convert::draft_from_headers(&fields, &note);
            Prepared {
                payload: payload(&key, draft, Vec::new(), Some(note), None),
                key,
                problem: true,
                skip_auto_generated: None,
            }
        }
    }
}
