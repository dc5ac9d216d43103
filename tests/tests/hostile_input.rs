//! Hostile and malformed input: header injection and oversized fields in queue
//! messages, service URL validation, and redirects that would carry credentials or mail to
//! another host.
//!
//! The validator tests need no servers. The redirect tests run two tiny local HTTP servers: the
//! configured one answers every request with a redirect to the second, which records whatever
//! reaches it. The production HTTP clients must not follow (no request, header or body may reach
//! the second server).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use mailbridge::graph::{GraphClient, MailSender as _, MessageExtras, OutgoingMail};
use mailbridge::notification::{Notification, NotificationError};
use mailbridge::retry::RetryPolicy;
use mailbridge::ticket_sink::{
    TICKET_PAYLOAD_SCHEMA, TicketPayload, TicketSink as _, WebhookAuth, WebhookTicketSink,
};
use mailbridge::token::{AccessToken, Audience};
use serde_json::{Value, json};
use tokio::time::Instant;

fn valid() -> Value {
    json!({
        "version": 1,
        "id": "n-1",
        "account": "mailbridge/contoso",
        "from": "helpdesk@contoso.example",
        "to": [{"address": "customer@example.com", "name": "A Customer"}],
        "cc": [{"address": "cc@example.com", "name": "Cc Person"}],
        "bcc": [{"address": "bcc@example.com", "name": "Bcc Person"}],
        "reply_to": [{"address": "reply@example.com", "name": "Replies"}],
        "subject": "Your ticket was updated",
        "body": {"content_type": "html", "content": "<p>Hello</p><img src=\"cid:logo\">"},
        "attachments": [
            {"name": "log.txt", "content_type": "text/plain", "content_base64": "aGVsbG8="},
            {"name": "logo.png", "content_type": "image/png", "content_base64": "aGVsbG8=",
             "inline": true, "content_id": "logo"}
        ],
        "headers": {"X-Helpdesk": "1"},
        "ticket_number": "1234"
    })
}

/// The violations of `value`, as (field, rule); panics when it parses.
fn violations(value: &Value) -> Vec<(String, String)> {
    match Notification::parse(&value.to_string(), "sqs-1") {
        Err(NotificationError::Invalid(v)) => v.into_iter().map(|v| (v.field, v.rule)).collect(),
        Err(other) => vec![("<parse>".into(), other.to_string())],
        Ok(n) => panic!("accepted: {n:?}"),
    }
}

/// Set the string at a JSON pointer.
fn with(pointer: &str, value: Value) -> Value {
    let mut j = valid();
    *j.pointer_mut(pointer)
        .unwrap_or_else(|| panic!("no {pointer} in the sample")) = value;
    j
}

#[test]
fn the_sample_is_valid() {
    Notification::parse(&valid().to_string(), "sqs-1").expect("valid sample");
}

#[test]
fn cr_lf_and_crlf_are_refused_in_every_header_bound_field() {
    let fields = [
        ("/subject", "subject"),
        ("/from", "from"),
        ("/to/0/name", "to[0].name"),
        ("/to/0/address", "to[0].address"),
        ("/cc/0/name", "cc[0].name"),
        ("/cc/0/address", "cc[0].address"),
        ("/bcc/0/name", "bcc[0].name"),
        ("/bcc/0/address", "bcc[0].address"),
        ("/reply_to/0/name", "reply_to[0].name"),
        ("/reply_to/0/address", "reply_to[0].address"),
        ("/attachments/0/name", "attachments[0].name"),
        ("/attachments/1/content_id", "attachments[1].content_id"),
        ("/headers/X-Helpdesk", "headers.X-Helpdesk"),
        ("/id", "id"),
        ("/ticket_number", "ticket_number"),
    ];
    for (pointer, field) in fields {
        for injection in [
            "\r\nBcc: evil@attacker.example",
            "\nBcc: x@y.z",
            "\rX-Evil: 1",
        ] {
            let original = valid()
                .pointer(pointer)
                .unwrap()
                .as_str()
                .unwrap()
                .to_owned();
            let j = with(pointer, Value::String(format!("{original}{injection}")));
            let v = violations(&j);
            assert!(
                v.iter().any(|(f, _)| f == field),
                "{field} with {injection:?} not refused: {v:?}"
            );
        }
    }
}

#[test]
fn crlf_in_a_header_name_is_refused() {
    let mut j = valid();
    j["headers"] = json!({"X-Evil\r\nBcc": "x@y.z"});
    let v = violations(&j);
    assert!(v.iter().any(|(f, _)| f.starts_with("headers.")), "{v:?}");
}

#[test]
fn other_control_characters_are_refused_in_header_lines_and_tab_is_allowed() {
    for bad in ["\u{0}", "\u{7}", "\u{1b}[31m", "\u{7f}", "\u{85}"] {
        for (pointer, field) in [
            ("/subject", "subject"),
            ("/to/0/name", "to[0].name"),
            ("/headers/X-Helpdesk", "headers.X-Helpdesk"),
        ] {
            let v = violations(&with(pointer, Value::String(format!("a{bad}b"))));
            assert!(
                v.iter().any(|(f, _)| f == field),
                "{field} with {bad:?}: {v:?}"
            );
        }
    }
    Notification::parse(
        &with("/subject", "Status:\tresolved".into()).to_string(),
        "sqs-1",
    )
    .expect("a tab is allowed in a subject");
    Notification::parse(
        &with("/subject", "Ticket ✓ — ünïcödé 日本語".into()).to_string(),
        "sqs-1",
    )
    .expect("unicode subjects are allowed");
}

#[test]
fn path_separators_in_attachment_names_are_refused() {
    for name in ["../../etc/passwd", "C:\\Windows\\evil.exe", "a/b.txt"] {
        let v = violations(&with("/attachments/0/name", name.into()));
        assert!(
            v.iter().any(|(f, _)| f == "attachments[0].name"),
            "{name}: {v:?}"
        );
    }
}

#[test]
fn display_names_smuggling_addresses_are_refused_in_the_address_field() {
    for address in [
        "Evil <evil@attacker.example>",
        "a@example.com, b@example.com",
        "a@example.com;b@example.com",
        "\"quoted\"@example.com",
        "a b@example.com",
        "a@exa mple.com",
        "@example.com",
        "a@",
    ] {
        let v = violations(&with("/to/0/address", address.into()));
        assert!(
            v.iter().any(|(f, _)| f == "to[0].address"),
            "{address}: {v:?}"
        );
    }
}

#[test]
fn oversized_fields_are_refused_with_the_limit_in_the_message() {
    let long = |n: usize| "x".repeat(n);
    let cases: Vec<(Value, &str, &str)> = vec![
        (with("/subject", long(999).into()), "subject", "998"),
        (with("/to/0/name", long(257).into()), "to[0].name", "256"),
        (
            with("/attachments/0/name", long(256).into()),
            "attachments[0].name",
            "255",
        ),
        (
            with("/headers/X-Helpdesk", long(999).into()),
            "headers.X-Helpdesk",
            "998",
        ),
        (
            with("/to/0/address", format!("{}@example.com", long(400)).into()),
            "to[0].address",
            "mail address",
        ),
        (with("/id", long(129).into()), "id", "128"),
        (
            with("/ticket_number", long(33).into()),
            "ticket_number",
            "32",
        ),
        (
            with("/attachments/1/content_id", long(256).into()),
            "attachments[1].content_id",
            "255",
        ),
    ];
    for (j, field, limit) in cases {
        let v = violations(&j);
        let hit = v.iter().find(|(f, _)| f == field);
        assert!(
            hit.is_some_and(|(_, rule)| rule.contains(limit)),
            "{field}: expected a rule naming {limit}: {v:?}"
        );
    }

    let mut j = valid();
    j["headers"] = (0..6)
        .map(|i| (format!("X-H{i}"), Value::String("v".into())))
        .collect::<serde_json::Map<_, _>>()
        .into();
    assert!(
        violations(&j)
            .iter()
            .any(|(f, r)| f == "headers" && r.contains("at most 5") && r.contains("Graph"))
    );

    let mut j = valid();
    j["attachments"] = (0..51)
        .map(|i| json!({"name": format!("f{i}.txt"), "content_type": "text/plain", "content_base64": "aGk="}))
        .collect::<Vec<_>>()
        .into();
    assert!(
        violations(&j)
            .iter()
            .any(|(f, r)| f == "attachments" && r.contains("50"))
    );

    let mut j = valid();
    j["to"] = (0..501)
        .map(|i| json!({"address": format!("r{i}@example.com")}))
        .collect::<Vec<_>>()
        .into();
    assert!(
        violations(&j)
            .iter()
            .any(|(f, r)| f == "to" && r.contains("500"))
    );

    // A body that makes the Graph request bigger than Graph accepts.
    let j = with(
        "/body/content",
        long(mailbridge::notification::MAX_REQUEST_BYTES).into(),
    );
    let v = violations(&j);
    assert!(
        v.iter()
            .any(|(f, r)| f == "body.content" && r.contains("bytes")),
        "{v:?}"
    );
}

#[test]
fn a_message_that_is_not_a_notification_is_a_clear_error_not_a_panic() {
    for body in [
        "",
        "null",
        "[]",
        "{",
        "\u{0}",
        "{\"version\": 1}",
        "{\"version\": \"1\", \"account\": 5}",
        &"[".repeat(10_000),
        &format!("{{\"subject\": \"{}\"}}", "a".repeat(300_000)),
    ] {
        let err = Notification::parse(body, "sqs-1").expect_err("not a notification");
        assert!(!err.to_string().is_empty());
    }
}

#[test]
fn ticket_api_urls_must_be_https_outside_loopback_and_carry_no_credentials() {
    use mailbridge::ticket_sink::validate_target_url;
    assert!(validate_target_url("https://psa.example.com/api/tickets").is_ok());
    assert!(validate_target_url("http://127.0.0.1:8080/t").is_ok());
    assert!(validate_target_url("http://[::1]:8080/t").is_ok());
    for bad in [
        "http://psa.example.com/api/tickets",
        "http://localhost.attacker.example/t",
        "http://127.0.0.1.nip.io/t",
        "ftp://psa.example.com/t",
        "file:///etc/passwd",
        "https://user:password@psa.example.com/t",
        "https://apikey@psa.example.com/t",
        "not a url",
    ] {
        assert!(validate_target_url(bad).is_err(), "{bad} accepted");
    }
    let err = mailbridge::mailbox::MailboxConfig::from_json(
        "helpdesk",
        &json!({"user": "helpdesk@contoso.com", "account": "contoso",
                "ticket_api_url": "https://user:s3cr3t-pw@psa.example.com/t"}),
    )
    .unwrap_err();
    assert_eq!(err.field, "ticket_api_url");
    assert!(!err.to_string().contains("s3cr3t-pw"), "{err}");
}

#[test]
fn graph_and_identity_urls_must_be_https_outside_loopback() {
    // without the setting (production) a loopback Graph URL is refused, with it accepted
    assert!(mailbridge::config::validate_service_url_in("http://127.0.0.1:1", "f", false).is_err());
    // its servers listen on loopback
    mailbridge::config::allow_local_targets_in_this_process();
    assert!(GraphClient::new("https://graph.microsoft.com/v1.0").is_ok());
    assert!(GraphClient::new("http://127.0.0.1:1/v1.0").is_ok());
    for bad in [
        "http://graph.microsoft.com/v1.0",
        "http://localhost.attacker.example/v1.0",
        "ftp://graph.microsoft.com",
        "mailto:x@y.z",
    ] {
        assert!(GraphClient::new(bad).is_err(), "{bad} accepted");
    }
    use mailbridge::config::validate_service_url;
    for bad in [
        "http://login.microsoftonline.com",
        "https://user:pw@login.microsoftonline.com",
        "http://127.0.0.1.attacker.example",
    ] {
        assert!(
            validate_service_url(bad, "authority_host").is_err(),
            "{bad} accepted"
        );
    }
}

/// What reached the redirect target.
#[derive(Clone, Default)]
struct Seen(Arc<Mutex<Vec<String>>>);

/// Start the redirect target (records everything) and the redirecting server (answers every
/// request with `status` and `Location: <target>/stolen`). Returns (redirecting base URL, seen).
async fn redirect_pair(status: u16) -> (String, Seen) {
    let seen = Seen::default();
    let target = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let target_url = format!("http://{}", target.local_addr().unwrap());
    let app = axum::Router::new()
        .fallback(
            |State(seen): State<Seen>, headers: HeaderMap, body: String| async move {
                seen.0.lock().unwrap().push(format!("{headers:?} {body}"));
                (StatusCode::ACCEPTED, "{\"id\": \"stolen\"}")
            },
        )
        .with_state(seen.clone());
    tokio::spawn(async move { axum::serve(target, app).await });

    let redirector = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", redirector.local_addr().unwrap());
    let location = format!("{target_url}/stolen");
    let app = axum::Router::new().fallback(move || {
        let location = location.clone();
        async move {
            (
                StatusCode::from_u16(status).unwrap(),
                [("location", location)],
                "",
            )
        }
    });
    tokio::spawn(async move { axum::serve(redirector, app).await });
    (base, seen)
}

#[tokio::test]
async fn the_ticket_sink_does_not_follow_redirects_with_the_api_key_or_the_mail() {
    for status in [301, 302, 307, 308] {
        let (base, seen) = redirect_pair(status).await;
        let auth = WebhookAuth::from_secret_json(
            "t",
            r#"{"type":"api_key","header":"X-API-Key","key":"k-redirect-secret"}"#,
        )
        .unwrap();
        let sink = WebhookTicketSink::new(
            mailbridge::http::default_client().unwrap(),
            format!("{base}/tickets"),
            auth,
            RetryPolicy {
                initial_backoff: Duration::from_millis(10),
                max_backoff: Duration::from_millis(50),
                max_attempts: 2,
                attempt_timeout: Duration::from_secs(5),
            },
        );
        let payload = TicketPayload {
            schema: TICKET_PAYLOAD_SCHEMA.into(),
            mailbox: "m".into(),
            mailbox_address: "m@example.com".into(),
            received_at: chrono::Utc::now(),
            idempotency_key: "k".into(),
            draft: mailbridge::mail::TicketDraft {
                subject: "confidential".into(),
                ..Default::default()
            },
            attachments: Vec::new(),
            problem: None,
            raw_message_base64: None,
        };
        let result = sink
            .deliver(&payload, "k", Instant::now() + Duration::from_secs(10))
            .await;
        let err = result.expect_err("a redirect is not a created ticket");
        assert!(err.to_string().contains(&status.to_string()), "{err}");
        assert!(
            seen.0.lock().unwrap().is_empty(),
            "HTTP {status}: the redirect target got {:?}",
            seen.0.lock().unwrap()
        );
    }
}

#[tokio::test]
async fn the_graph_client_does_not_follow_redirects_with_the_token_or_the_mail() {
    // its servers listen on loopback
    mailbridge::config::allow_local_targets_in_this_process();
    let notification = Notification::parse(
        &json!({
            "version": 1,
            "account": "mailbridge/contoso",
            "to": [{"address": "customer@example.com"}],
            "subject": "confidential",
            "body": {"content_type": "text", "content": "confidential body"}
        })
        .to_string(),
        "sqs-1",
    )
    .unwrap();
    let mail = OutgoingMail::from_notification(&notification, MessageExtras::default());
    let token = AccessToken::new(
        "graph-token-redirect-secret".to_string().into(),
        chrono::Utc::now() + chrono::Duration::hours(1),
        Audience::Graph,
    );
    for status in [301, 302, 307, 308] {
        let (base, seen) = redirect_pair(status).await;
        let graph = GraphClient::new(&format!("{base}/v1.0")).unwrap();
        let result = graph
            .send_mail(&token, &mail, Duration::from_secs(10))
            .await;
        let err = result.expect_err("a redirect is not a sent mail");
        assert!(err.to_string().contains(&status.to_string()), "{err}");
        assert!(
            seen.0.lock().unwrap().is_empty(),
            "HTTP {status}: the redirect target got {:?}",
            seen.0.lock().unwrap()
        );
    }
}

/// What a flooding server sent: bytes of body written before the client hung up.
#[derive(Clone, Default)]
struct Flooded(Arc<std::sync::atomic::AtomicU64>);

impl Flooded {
    fn bytes(&self) -> u64 {
        self.0.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// Offered by [`flooding_server`]: far more than any client may read, small enough that a client
/// without a cap reads it all quickly (and the test sees that) instead of running out of memory.
const FLOOD_BYTES: u64 = 256 * 1024 * 1024;

/// A server that answers every request with `status` and a JSON-whitespace body of
/// [`FLOOD_BYTES`], chunked (no length known in advance) or with its `Content-Length`.
async fn flooding_server(status: u16, chunked: bool) -> (String, Flooded) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let flooded = Flooded::default();
    let counter = flooded.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            let counter = counter.clone();
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buf = [0u8; 4096];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match socket.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                let framing = if chunked {
                    "Transfer-Encoding: chunked".to_string()
                } else {
                    format!("Content-Length: {FLOOD_BYTES}")
                };
                let head = format!(
                    "HTTP/1.1 {status} Flood\r\nContent-Type: application/json\r\n{framing}\r\n\r\n"
                );
                if socket.write_all(head.as_bytes()).await.is_err() {
                    return;
                }
                let piece = vec![b' '; 1024 * 1024];
                let mut sent = 0u64;
                while sent < FLOOD_BYTES {
                    let written = if chunked {
                        let frame = format!("{:x}\r\n", piece.len());
                        socket.write_all(frame.as_bytes()).await.is_ok()
                            && socket.write_all(&piece).await.is_ok()
                            && socket.write_all(b"\r\n").await.is_ok()
                    } else {
                        socket.write_all(&piece).await.is_ok()
                    };
                    if !written {
                        return;
                    }
                    sent += piece.len() as u64;
                    counter
                        .0
                        .fetch_add(piece.len() as u64, std::sync::atomic::Ordering::SeqCst);
                }
                if chunked {
                    let _ = socket.write_all(b"0\r\n\r\n").await;
                }
            });
        }
    });
    (base, flooded)
}

/// A client that stopped at the cap: what the server got out before the client hung up is
/// the cap plus what the two sockets' buffers hold, nowhere near the flood.
fn assert_stopped_reading(what: &str, flooded: &Flooded) {
    let limit = (mailbridge::http::MAX_ANSWER_BYTES + 32 * 1024 * 1024) as u64;
    assert!(
        flooded.bytes() <= limit,
        "{what}: the client read {} MiB of a {} MiB answer (cap {} MiB)",
        flooded.bytes() >> 20,
        FLOOD_BYTES >> 20,
        mailbridge::http::MAX_ANSWER_BYTES >> 20
    );
}

fn one_attempt() -> RetryPolicy {
    RetryPolicy {
        initial_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(50),
        max_attempts: 1,
        attempt_timeout: Duration::from_secs(60),
    }
}

fn flood_payload() -> TicketPayload {
    TicketPayload {
        schema: TICKET_PAYLOAD_SCHEMA.into(),
        mailbox: "m".into(),
        mailbox_address: "m@example.com".into(),
        received_at: chrono::Utc::now(),
        idempotency_key: "k".into(),
        draft: mailbridge::mail::TicketDraft {
            subject: "flood".into(),
            ..Default::default()
        },
        attachments: Vec::new(),
        problem: None,
        raw_message_base64: None,
    }
}

/// A broken or hostile server answering with hundreds of MiB (here 256 MiB; the same for 1 GB)
/// must not take the function's memory: the identity platform, Graph and every ticket sink read
/// at most `mailbridge::http::MAX_ANSWER_BYTES` of an answer.
#[tokio::test]
async fn a_server_answering_with_hundreds_of_mib_is_cut_off_at_the_cap() {
    // its servers listen on loopback
    mailbridge::config::allow_local_targets_in_this_process();
    let too_large = format!("larger than {} bytes", mailbridge::http::MAX_ANSWER_BYTES);
    for chunked in [true, false] {
        let framing = if chunked { "chunked" } else { "Content-Length" };

        // Identity platform: a 200 token answer.
        let (base, flooded) = flooding_server(200, chunked).await;
        let identity = mailbridge::token::identity::IdentityClient::new(
            mailbridge::http::default_client().unwrap(),
        );
        let err = identity
            .token_request(
                &format!("{base}/tenant/oauth2/v2.0/token"),
                &[("grant_type", "refresh_token")],
            )
            .await
            .expect_err("no token in a flood");
        assert!(
            format!("{err:?}").contains(&too_large),
            "{framing}: {err:?}"
        );
        assert_stopped_reading(&format!("identity ({framing})"), &flooded);

        // Graph sendMail: an error answer (only an excerpt is read).
        let (base, flooded) = flooding_server(400, chunked).await;
        let notification = Notification::parse(
            &json!({"version": 1, "account": "mailbridge/contoso",
                    "to": [{"address": "customer@example.com"}], "subject": "s",
                    "body": {"content_type": "text", "content": "b"}})
            .to_string(),
            "sqs-1",
        )
        .unwrap();
        let mail = OutgoingMail::from_notification(&notification, MessageExtras::default());
        let token = AccessToken::new(
            "graph-token".to_string().into(),
            chrono::Utc::now() + chrono::Duration::hours(1),
            Audience::Graph,
        );
        let graph = GraphClient::new(&format!("{base}/v1.0")).unwrap();
        graph
            .send_mail(&token, &mail, Duration::from_secs(60))
            .await
            .expect_err("a 400 is no sent mail");
        assert_stopped_reading(&format!("Graph sendMail ({framing})"), &flooded);

        // Graph mail (protocol: graph): a 200 answer to a mailbox read.
        let (base, flooded) = flooding_server(200, chunked).await;
        let mailbox = mailbridge::graph_mail::GraphMailbox::new(
            mailbridge::http::default_client().unwrap(),
            &format!("{base}/v1.0"),
            "helpdesk@example.com",
            token.clone(),
            one_attempt(),
        )
        .unwrap();
        let err = mailbox
            .delta_probe(Instant::now() + Duration::from_secs(60))
            .await
            .expect_err("no mailbox in a flood");
        assert!(
            format!("{err:?}").contains(&too_large),
            "{framing}: {err:?}"
        );
        assert_stopped_reading(&format!("Graph mail ({framing})"), &flooded);

        // Ticket sinks: a webhook (error answer), RT and django-helpdesk (their first GET).
        let sinks = [
            (json!({"kind": "webhook"}), 422, None),
            (
                json!({"kind": "rt", "secret": "s", "queue": "General", "rt_name": "example"}),
                200,
                Some(r#"{"type":"token","token":"1-2-abc"}"#),
            ),
            (
                json!({"kind": "django-helpdesk", "secret": "s", "queue": "support", "queue_id": 1}),
                200,
                Some(r#"{"type":"token","token":"t0k"}"#),
            ),
        ];
        for (mut config, status, secret) in sinks {
            let (base, flooded) = flooding_server(status, chunked).await;
            config["url"] = json!(format!("{base}/helpdesk"));
            let kind = config["kind"].as_str().unwrap().to_string();
            let sink = mailbridge::ticket_sink::SinkConfig::from_json(&config)
                .unwrap()
                .build(
                    mailbridge::http::default_client().unwrap(),
                    secret,
                    one_attempt(),
                )
                .unwrap();
            let err = sink
                .deliver(
                    &flood_payload(),
                    "k",
                    Instant::now() + Duration::from_secs(120),
                )
                .await
                .expect_err("no ticket from a flood");
            if kind != "webhook" {
                assert!(
                    err.to_string().contains(&too_large),
                    "{kind} ({framing}): {err}"
                );
            }
            assert_stopped_reading(&format!("{kind} ({framing})"), &flooded);
        }
    }
}
