//! The JSON Schema `shared/schemas/notification.schema.json` and the Rust validation agree on
//! sample messages: each sample is accepted by both or refused by both (except the documented
//! cross-field rules the schema cannot express, which only Rust enforces).

use base64::Engine as _;
use mailbridge::notification::{MAX_ATTACHMENT_BYTES, Notification};
use serde_json::{Value, json};

fn schema() -> jsonschema::Validator {
    let text = include_str!("../schemas/notification.schema.json");
    let schema: Value = serde_json::from_str(text).expect("schema is JSON");
    jsonschema::draft202012::new(&schema).expect("schema compiles")
}

fn base() -> Value {
    json!({
        "version": 1,
        "account": "mailbridge/contoso",
        "to": [{"address": "customer@example.com", "name": "Customer"}],
        "subject": "Ticket updated",
        "body": {"content_type": "text", "content": "Hello\r\nthere"}
    })
}

fn with(path: &[&str], value: Value) -> Value {
    let mut v = base();
    let mut cursor = &mut v;
    for (i, key) in path.iter().enumerate() {
        if i + 1 == path.len() {
            cursor[*key] = value.clone();
        } else {
            cursor = &mut cursor[*key];
        }
    }
    v
}

fn samples() -> Vec<(&'static str, Value, bool)> {
    let attachment = json!({"name": "a.pdf", "content_type": "application/pdf", "content_base64": "JVBERi0xLjQK"});
    let mut full = base();
    full["id"] = "ticket-42-update-7".into();
    full["from"] = "support@contoso.com".into();
    full["cc"] = json!([{"address": "cc@example.org"}]);
    full["bcc"] = json!([{"address": "audit@contoso.com"}]);
    full["reply_to"] = json!([{"address": "support@contoso.com", "name": "Support"}]);
    full["importance"] = "high".into();
    full["attachments"] = json!([attachment, {"name": "logo.png", "content_type": "image/png", "content_base64": "iVBORw0KGgo=", "inline": true, "content_id": "logo@contoso"}]);
    full["headers"] = json!({"X-Helpdesk-Ticket": "42", "x-lower": "ok"});
    full["ticket_number"] = "42".into();
    full["save_to_sent_items"] = false.into();
    full["body"] =
        json!({"content_type": "html", "content": "<p>Hi <img src=\"cid:logo@contoso\"></p>"});
    vec![
        ("minimal", base(), true),
        ("every field", full, true),
        (
            "only bcc",
            {
                let mut v = base();
                v.as_object_mut().unwrap().remove("to");
                v["bcc"] = json!([{"address": "b@example.com"}]);
                v
            },
            true,
        ),
        ("wrong version", with(&["version"], json!(2)), false),
        (
            "missing account",
            {
                let mut v = base();
                v.as_object_mut().unwrap().remove("account");
                v
            },
            false,
        ),
        ("unknown field", with(&["priority"], json!("high")), false),
        ("no recipients", with(&["to"], json!([])), false),
        (
            "address with display name",
            with(&["to"], json!([{"address": "A <a@example.com>"}])),
            false,
        ),
        (
            "address without domain dot",
            with(&["to"], json!([{"address": "a@localhost"}])),
            false,
        ),
        (
            "CRLF in subject",
            with(&["subject"], json!("Hi\r\nBcc: x@example.com")),
            false,
        ),
        ("blank subject", with(&["subject"], json!("   ")), false),
        (
            "LF in recipient name",
            with(
                &["to"],
                json!([{"address": "a@example.com", "name": "A\nB"}]),
            ),
            false,
        ),
        (
            "CR in address",
            with(&["to"], json!([{"address": "a@example.com\r"}])),
            false,
        ),
        (
            "unknown body type",
            with(&["body", "content_type"], json!("markdown")),
            false,
        ),
        (
            "NUL in body",
            with(&["body", "content"], json!("a\u{0}b")),
            false,
        ),
        (
            "bad importance",
            with(&["importance"], json!("urgent")),
            false,
        ),
        (
            "attachment name with CRLF",
            with(
                &["attachments"],
                json!([{"name": "a\r\n.pdf", "content_type": "application/pdf", "content_base64": "AAAA"}]),
            ),
            false,
        ),
        (
            "attachment name with slash",
            with(
                &["attachments"],
                json!([{"name": "../a.pdf", "content_type": "application/pdf", "content_base64": "AAAA"}]),
            ),
            false,
        ),
        (
            "attachment bad base64",
            with(
                &["attachments"],
                json!([{"name": "a.pdf", "content_type": "application/pdf", "content_base64": "not base64!"}]),
            ),
            false,
        ),
        (
            "attachment bad mime type",
            with(
                &["attachments"],
                json!([{"name": "a.pdf", "content_type": "pdf", "content_base64": "AAAA"}]),
            ),
            false,
        ),
        (
            "inline without content id",
            with(
                &["attachments"],
                json!([{"name": "a.png", "content_type": "image/png", "content_base64": "AAAA", "inline": true}]),
            ),
            false,
        ),
        (
            "non-X header",
            with(
                &["headers"],
                json!({"List-Unsubscribe": "<mailto:u@example.com>"}),
            ),
            false,
        ),
        (
            "reserved header",
            with(&["headers"], json!({"X-Mailbridge-Ref": "forged"})),
            false,
        ),
        (
            "header value with LF",
            with(&["headers"], json!({"X-A": "1\nBcc: x@example.com"})),
            false,
        ),
        (
            "ticket number with space",
            with(&["ticket_number"], json!("12 34")),
            false,
        ),
        ("empty id", with(&["id"], json!("")), false),
        (
            "account with space",
            with(&["account"], json!("my account")),
            false,
        ),
        (
            "from not an address",
            with(&["from"], json!("support")),
            false,
        ),
    ]
}

#[test]
fn schema_and_rust_validation_agree_on_samples() {
    let schema = schema();
    let samples = samples();
    assert!(samples.len() > 20);
    for (name, sample, expected_valid) in samples {
        let schema_ok = schema.is_valid(&sample);
        let rust = Notification::parse(&sample.to_string(), "sqs-message-id");
        assert_eq!(schema_ok, expected_valid, "schema on sample {name:?}");
        assert_eq!(
            rust.is_ok(),
            expected_valid,
            "rust on sample {name:?}: {:?}",
            rust.err().map(|e| e.to_string())
        );
    }
}

#[test]
fn cross_field_limits_are_enforced_by_rust_only_and_documented_in_the_schema() {
    let schema = schema();
    let text = include_str!("../schemas/notification.schema.json");
    assert!(text.contains("at most 500 recipients") && text.contains("3145728"));
    // 300 to + 300 cc: each list is fine for the schema, the total is not.
    let mut many = base();
    many["to"] = (0..300)
        .map(|i| json!({"address": format!("t{i}@example.com")}))
        .collect();
    many["cc"] = (0..300)
        .map(|i| json!({"address": format!("c{i}@example.com")}))
        .collect();
    assert!(schema.is_valid(&many));
    let err = Notification::parse(&many.to_string(), "m")
        .unwrap_err()
        .to_string();
    assert!(err.contains("500"), "{err}");
    // Two attachments of 2 MiB each: each fits the schema's per-item bound, together too big.
    let two_mib =
        base64::engine::general_purpose::STANDARD.encode(vec![7u8; MAX_ATTACHMENT_BYTES * 2 / 3]);
    let mut big = base();
    big["attachments"] = json!([
        {"name": "a.bin", "content_type": "application/octet-stream", "content_base64": two_mib},
        {"name": "b.bin", "content_type": "application/octet-stream", "content_base64": two_mib},
    ]);
    assert!(schema.is_valid(&big));
    let err = Notification::parse(&big.to_string(), "m")
        .unwrap_err()
        .to_string();
    assert!(err.contains("attachments"), "{err}");
}
