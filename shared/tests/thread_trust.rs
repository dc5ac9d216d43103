//! What a thread reference may prove, with crafted mails: a marker a reader does not see is not
//! read, returned headers count only in bounces and delivery reports, a subject number never
//! becomes the signed `ticket_number`, and genuine markers leave the text fields.

use mailbridge::mail::threading::{body_footer_html, body_footer_text, ticket_reference};
use mailbridge::mail::{ParseOptions, ThreadSource, TicketDraft, parse};

const KEY: &[u8] = b"thread-trust-test-key";

fn options() -> ParseOptions {
    ParseOptions {
        thread_key: Some(KEY.to_vec()),
        own_addresses: vec!["helpdesk@example.com".into()],
        ..ParseOptions::default()
    }
}

fn draft(raw: String) -> TicketDraft {
    parse(raw.as_bytes(), &options()).expect("a draft")
}

fn html_mail(html: &str) -> String {
    format!(
        "From: Mallory <mallory@evil.example>\r\nTo: helpdesk@example.com\r\n\
         Subject: Please add this\r\nMessage-ID: <m1@evil.example>\r\nMIME-Version: 1.0\r\n\
         Content-Type: text/html; charset=utf-8\r\n\r\n{html}\r\n"
    )
}

fn alternative_mail(text: &str, html: &str) -> String {
    format!(
        "From: Mallory <mallory@evil.example>\r\nTo: helpdesk@example.com\r\n\
         Subject: Please add this\r\nMessage-ID: <m2@evil.example>\r\nMIME-Version: 1.0\r\n\
         Content-Type: multipart/alternative; boundary=\"b\"\r\n\r\n\
         --b\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n{text}\r\n\
         --b\r\nContent-Type: text/html; charset=utf-8\r\n\r\n{html}\r\n--b--\r\n"
    )
}

#[test]
fn a_marker_a_reader_does_not_see_threads_nothing() {
    let reference = ticket_reference("4711", KEY);
    let hidden = [
        format!("<p>Hello</p><div style=\"display:none\">[ref:{reference}]</div>"),
        format!("<p>Hello</p><span hidden>[ref:{reference}]</span>"),
        format!("<p>Hello</p><!-- [ref:{reference}] -->"),
        format!("<p title=\"[ref:{reference}]\">Hello</p>"),
        format!("<p>Hello</p><style>/* [ref:{reference}] */</style>"),
    ];
    for html in &hidden {
        for raw in [html_mail(html), alternative_mail("Hello", html)] {
            let d = draft(raw);
            assert_eq!(
                (d.ticket_number.as_deref(), d.thread_source),
                (None, None),
                "{html}"
            );
        }
    }
    // The marker the reader does see still threads, from either body.
    let shown = format!("<p>Hello</p>{}", body_footer_html(&reference));
    for raw in [html_mail(&shown), alternative_mail("Hello", &shown)] {
        let d = draft(raw);
        assert_eq!(d.ticket_number.as_deref(), Some("4711"));
        assert_eq!(d.thread_source, Some(ThreadSource::Marker));
    }
}

fn with_returned_headers(content_type: &str, report: &str, reference: &str) -> String {
    let delivery_status = if content_type.starts_with("multipart/report") {
        "--b\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.example\r\n\r\n\
         Final-Recipient: rfc822; gone@customer.example\r\nAction: failed\r\nStatus: 5.1.1\r\n"
    } else {
        ""
    };
    let subject = if delivery_status.is_empty() {
        "Fwd: Your ticket"
    } else {
        "Returned mail"
    };
    format!(
        "From: {report}\r\nTo: helpdesk@example.com\r\nSubject: {subject}\r\n\
         Message-ID: <r1@mx.example>\r\nMIME-Version: 1.0\r\n\
         Content-Type: {content_type}; boundary=\"b\"\r\n\r\n\
         --b\r\nContent-Type: text/plain\r\n\r\nHere is the message.\r\n{delivery_status}\
         --b\r\nContent-Type: text/rfc822-headers\r\n\r\n\
         From: helpdesk@example.com\r\nTo: gone@customer.example\r\nSubject: Your ticket\r\n\
         Message-ID: <mb.{reference}.n1@example.com>\r\n--b--\r\n"
    )
}

#[test]
fn returned_headers_thread_bounces_only() {
    let reference = ticket_reference("88", KEY);
    let bounce = draft(with_returned_headers(
        "multipart/report; report-type=delivery-status",
        "Mail Delivery System <MAILER-DAEMON@mx.example>",
        &reference,
    ));
    assert!(
        bounce
            .auto_reason
            .as_ref()
            .is_some_and(|r| r.kind == mailbridge::mail::MachineMailKind::Bounce),
        "{bounce:?}"
    );
    assert_eq!(bounce.ticket_number.as_deref(), Some("88"));
    assert_eq!(bounce.thread_source, Some(ThreadSource::References));

    // The returned headers in a person's mail (multipart/mixed, no delivery status): a
    // forwarded or crafted header block, not read for threading.
    let crafted = draft(with_returned_headers(
        "multipart/mixed",
        "Mallory <mallory@evil.example>",
        &reference,
    ));
    assert!(!crafted.auto_generated, "{crafted:?}");
    assert_eq!((crafted.ticket_number, crafted.thread_source), (None, None));
}

#[test]
fn a_subject_number_never_sets_the_signed_ticket_number() {
    let plain = |subject: &str, body: &str| {
        format!(
            "From: Ann <ann@customer.example>\r\nTo: helpdesk@example.com\r\nSubject: {subject}\r\n\
             Message-ID: <s1@customer.example>\r\n\r\n{body}\r\n"
        )
    };
    let d = draft(plain("Re: [Ticket#42] Printer", "Still broken."));
    assert_eq!(d.ticket_number, None);
    assert_eq!(d.thread_source, None);
    assert_eq!(d.subject_ticket_number.as_deref(), Some("42"));

    // Without a thread key, too.
    let unkeyed = parse(
        plain("Re: [Ticket#42] Printer", "x").as_bytes(),
        &ParseOptions::default(),
    )
    .unwrap();
    assert_eq!(
        (
            unkeyed.ticket_number,
            unkeyed.subject_ticket_number.as_deref()
        ),
        (None, Some("42"))
    );

    // Both: each in its own field.
    let marker = body_footer_text(&ticket_reference("7", KEY));
    let both = draft(plain(
        "Re: [Ticket#42] Printer",
        &format!("Fixed.\r\n{marker}"),
    ));
    assert_eq!(both.ticket_number.as_deref(), Some("7"));
    assert_eq!(both.thread_source, Some(ThreadSource::Marker));
    assert_eq!(both.subject_ticket_number.as_deref(), Some("42"));
}

#[test]
fn genuine_markers_leave_every_text_field_and_forged_ones_stay() {
    let reference = ticket_reference("1042", KEY);
    let text = format!(
        "Thanks, it works.\r\n\r\nOn Monday Helpdesk wrote:\r\n> Please retry.\r\n> [ref:{reference}]\r\n"
    );
    let html = format!(
        "<p>Thanks, it works.</p><blockquote><p>Please retry.</p>{}</blockquote>",
        body_footer_html(&reference)
    );
    let d = draft(alternative_mail(&text, &html));
    assert_eq!(d.ticket_number.as_deref(), Some("1042"));
    for (field, value) in [
        ("body_text", d.body_text.as_str()),
        ("reply_text", d.reply_text.as_str()),
        (
            "body_html_sanitized",
            d.body_html_sanitized.as_deref().unwrap(),
        ),
    ] {
        assert!(!value.contains(&reference), "{field}: {value}");
        assert!(!value.contains("[ref:"), "{field}: {value}");
    }
    assert!(d.body_text.contains("> Please retry."), "{}", d.body_text);
    assert!(
        d.body_html.as_deref().unwrap().contains(&reference),
        "the raw HTML is as sent"
    );

    let forged = draft(alternative_mail(
        "See [ref:1042.0123456789abcdef]",
        "<p>See</p>",
    ));
    assert_eq!(forged.ticket_number, None);
    assert!(forged.body_text.contains("[ref:1042.0123456789abcdef]"));
}
