//! The JSON Schema `shared/schemas/ticket-sink.schema.json` and the Rust validation of a
//! mailbox's `sink` object (`mailbridge::ticket_sink::SinkConfig::from_json`) agree on sample
//! objects: each is accepted by both or refused by both.

use mailbridge::ticket_sink::SinkConfig;
use serde_json::{Value, json};

fn schema() -> jsonschema::Validator {
    let text = include_str!("../schemas/ticket-sink.schema.json");
    let schema: Value = serde_json::from_str(text).expect("schema is JSON");
    jsonschema::draft202012::new(&schema).expect("schema compiles")
}

fn samples() -> Vec<(Value, bool)> {
    let rt = json!({"kind": "rt", "url": "https://rt.example.com", "secret": "rt-api",
        "queue": "General", "rt_name": "example.com"});
    let django = json!({"kind": "django-helpdesk", "url": "https://hd.example.com/helpdesk/api/",
        "secret": "hd-api", "queue": "support", "queue_id": 1});
    let with = |base: &Value, key: &str, value: Value| {
        let mut v = base.clone();
        v[key] = value;
        v
    };
    let without = |base: &Value, key: &str| {
        let mut v = base.clone();
        v.as_object_mut().unwrap().remove(key);
        v
    };
    vec![
        (
            json!({"kind": "webhook", "url": "https://psa.example.com/api/t"}),
            true,
        ),
        (
            json!({"kind": "webhook", "url": "https://psa.example.com/api/t", "secret": "s"}),
            true,
        ),
        (
            json!({"kind": "webhook", "url": "http://127.0.0.1:8080/t"}),
            true,
        ),
        (
            json!({"kind": "webhook", "url": "http://psa.example.com/t"}),
            false,
        ),
        (json!({"kind": "webhook"}), false),
        (
            json!({"kind": "webhook", "url": "https://psa.example.com/t", "queue": "x"}),
            false,
        ),
        (
            json!({"kind": "zendesk", "url": "https://z.example.com"}),
            false,
        ),
        (json!({"url": "https://psa.example.com/t"}), false),
        (rt.clone(), true),
        (with(&rt, "machine_mail", json!("correspond")), true),
        (with(&rt, "machine_mail", json!("ignore")), false),
        (with(&rt, "non_participant", json!("new_ticket")), true),
        (with(&rt, "non_participant", json!("reply")), false),
        (without(&rt, "queue"), false),
        (without(&rt, "rt_name"), false),
        (without(&rt, "secret"), false),
        (with(&rt, "queue", json!(5)), false),
        (with(&rt, "url", json!("ftp://rt.example.com")), false),
        (with(&rt, "colour", json!("blue")), false),
        (with(&rt, "priority", json!(20)), true),
        (with(&rt, "priority", json!(-1)), false),
        (with(&rt, "priority", json!(1000)), false),
        (with(&rt, "owner", json!("alice")), true),
        (
            with(&rt, "custom_fields", json!({"Customer": "ACME", "Tier": 2})),
            true,
        ),
        (
            with(&rt, "custom_fields", json!({"Customer": ["ACME"]})),
            false,
        ),
        (with(&rt, "custom_fields", json!("Customer=ACME")), false),
        (with(&rt, "key_field", json!("Mail-Key")), true),
        (with(&rt, "body", json!("text")), true),
        (with(&rt, "body", json!("rtf")), false),
        (django.clone(), true),
        (with(&django, "machine_mail", json!("comment")), true),
        (with(&django, "non_participant", json!("correspond")), true),
        (with(&django, "non_participant", json!(true)), false),
        (without(&django, "queue"), false),
        (without(&django, "queue_id"), false),
        (with(&django, "queue_id", json!(0)), false),
        (with(&django, "queue", json!("Support Desk")), false),
        (with(&django, "priority", json!(1)), true),
        (with(&django, "priority", json!(6)), false),
        (with(&django, "assigned_to", json!(7)), true),
        (
            with(
                &django,
                "custom_fields",
                json!({"contract": "gold", "seats": 5}),
            ),
            true,
        ),
        (
            with(&django, "custom_fields", json!({"contract": ["gold"]})),
            false,
        ),
        (with(&django, "key_field", json!("mail_key")), true),
        (with(&django, "key_field", json!("a b")), false),
        (with(&django, "thread_queues", json!(["billing"])), true),
        (with(&django, "thread_queues", json!("billing")), false),
        (with(&django, "rt_name", json!("x")), false),
    ]
}

#[test]
fn schema_and_rust_agree_on_every_sample() {
    let schema = schema();
    for (sample, valid) in samples() {
        let by_schema = schema.is_valid(&sample);
        let by_rust = SinkConfig::from_json(&sample);
        assert_eq!(by_schema, valid, "schema on {sample}");
        assert_eq!(
            by_rust.is_ok(),
            valid,
            "Rust on {sample}: {:?}",
            by_rust.err()
        );
    }
}
