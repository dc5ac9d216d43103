//! The JSON Schema `shared/schemas/notification.schema.json` and the Rust validation agree on
//! sample messages: each sample is accepted by both or refused by both (except the documented
//! cross-field rules the schema cannot express, which only Rust enforces).

use base64::Engine as _;
use mailbridge::notification::{MAX_ATTACHMENT_BYTES, Notification, QueueMessage};
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
        (
            "six headers (Graph takes five)",
            with(
                &["headers"],
                json!({"X-1": "a", "X-2": "b", "X-3": "c", "X-4": "d", "X-5": "e", "X-6": "f"}),
            ),
            false,
        ),
        ("five headers", with(&["headers"], json!({"X-1": "a", "X-2": "b", "X-3": "c", "X-4": "d", "X-5": "e"})), true),
        (
            "attachment by reference",
            with(
                &["attachments"],
                json!([{"name": "big.zip", "content_type": "application/zip", "content_ref": file_ref()}]),
            ),
            true,
        ),
        (
            "attachment both inline and by reference",
            with(
                &["attachments"],
                json!([{"name": "big.zip", "content_type": "application/zip", "content_base64": "AAAA", "content_ref": file_ref()}]),
            ),
            false,
        ),
        (
            "attachment neither inline nor by reference",
            with(
                &["attachments"],
                json!([{"name": "big.zip", "content_type": "application/zip"}]),
            ),
            false,
        ),
        (
            "attachment reference with a bad hash",
            with(&["attachments"], {
                let mut r = file_ref();
                r["sha256"] = "ABC".into();
                json!([{"name": "big.zip", "content_type": "application/zip", "content_ref": r}])
            }),
            false,
        ),
        (
            "attachment reference over Graph's 150 MB",
            with(&["attachments"], {
                let mut r = file_ref();
                r["size"] = 157_286_401u64.into();
                json!([{"name": "big.zip", "content_type": "application/zip", "content_ref": r}])
            }),
            false,
        ),
    ]
    .into_iter()
    .chain(mime_samples())
    .collect()
}

fn file_ref() -> Value {
    json!({"bucket": "mailbridge-messages", "key": "files/1.zip", "size": 20_971_520, "sha256": "b".repeat(64)})
}

fn mime_base() -> Value {
    json!({
        "version": 1,
        "kind": "mime",
        "account": "mailbridge/contoso",
        "from": "support@contoso.com",
        "raw_base64": base64::engine::general_purpose::STANDARD
            .encode("From: support@contoso.com\r\nTo: c@example.com\r\nSubject: x\r\n\r\nhi\r\n")
    })
}

fn mime_with(key: &str, value: Value) -> Value {
    let mut v = mime_base();
    v[key] = value;
    v
}

fn mime_samples() -> Vec<(&'static str, Value, bool)> {
    let object = json!({"bucket": "mailbridge-messages", "key": "out/1.eml", "size": 2_097_152, "sha256": "a".repeat(64)});
    let by_ref = {
        let mut v = mime_base();
        v.as_object_mut().unwrap().remove("raw_base64");
        v["raw_ref"] = object.clone();
        v
    };
    let mut full = mime_base();
    full["id"] = "mid.0123456789abcdef".into();
    full["ticket_number"] = "42".into();
    vec![
        ("mime minimal", mime_base(), true),
        ("mime every field", full, true),
        ("mime by reference", by_ref.clone(), true),
        (
            "mime both inline and reference",
            mime_with("raw_ref", object.clone()),
            false,
        ),
        (
            "mime neither inline nor reference",
            {
                let mut v = mime_base();
                v.as_object_mut().unwrap().remove("raw_base64");
                v
            },
            false,
        ),
        (
            "mime bad base64",
            mime_with("raw_base64", json!("not base64!")),
            false,
        ),
        (
            "mime empty base64",
            mime_with("raw_base64", json!("")),
            false,
        ),
        (
            "mime without from",
            {
                let mut v = mime_base();
                v.as_object_mut().unwrap().remove("from");
                v
            },
            false,
        ),
        (
            "mime from not an address",
            mime_with("from", json!("Support <s@contoso.com>")),
            false,
        ),
        (
            "mime unknown field",
            mime_with("to", json!([{"address": "c@example.com"}])),
            false,
        ),
        ("unknown kind", mime_with("kind", json!("smtp")), false),
        (
            "mime bad ticket",
            mime_with("ticket_number", json!("1 2")),
            false,
        ),
        (
            "mime reference with a bad hash",
            {
                let mut v = by_ref.clone();
                v["raw_ref"]["sha256"] = "ABC".into();
                v
            },
            false,
        ),
        (
            "mime reference with an upper-case bucket",
            {
                let mut v = by_ref.clone();
                v["raw_ref"]["bucket"] = "Mailbridge".into();
                v
            },
            false,
        ),
        (
            "mime reference of size 0",
            {
                let mut v = by_ref;
                v["raw_ref"]["size"] = 0.into();
                v
            },
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
        let rust = QueueMessage::parse(&sample.to_string(), "sqs-message-id");
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
