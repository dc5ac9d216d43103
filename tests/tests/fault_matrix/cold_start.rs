//! Cold starts: poll-mailboxes with a missing or invalid variable, send-notifications with an
//! empty endpoint or an unreachable Secrets Manager.

use super::*;

/// Lambda row "cold start with a missing config value", for poll-mailboxes: the real bootstrap
/// under the Runtime API emulator, once per bad variable. Init must fail (the function never
/// asks for an event, so no mail is touched) and the log must name the variable.
#[tokio::test]
async fn poll_mailboxes_cold_start_with_a_missing_or_invalid_variable_names_it() {
    use local_stack::runtime_api::{InvocationResult, invoke_binary, workspace_binary};
    let binary =
        tokio::task::spawn_blocking(|| workspace_binary("poll-mailboxes", "poll-mailboxes"))
            .await
            .unwrap()
            .expect("build the poll-mailboxes binary");
    let thread_key_secret = unique("fm-thread-key");
    put_secret(&thread_key_secret, "0123456789abcdef0123456789abcdef")
        .await
        .unwrap();
    // send-notifications refuses a key shorter than 16 bytes; the poller, which verifies the
    // same markers, must too (one loader for both).
    let short_thread_key_secret = unique("fm-short-thread-key");
    put_secret(&short_thread_key_secret, "0123456789abcde")
        .await
        .unwrap();
    let good = |name: &str| -> Option<String> {
        match name {
            "MAILBRIDGE_STATE_TABLE" => Some("fm-cold-start-table".into()),
            "MAILBRIDGE_THREAD_KEY_SECRET" => Some(thread_key_secret.clone()),
            _ => None,
        }
    };
    // (variable, value: None = unset, what the log must also say, fails at init)
    // The thread key is read on the first invocation (no network in init), so a secret that does
    // not exist fails that invocation, with the same naming, and the next invocation retries.
    let cases: [(&str, Option<&str>, &str, bool); 9] = [
        ("MAILBRIDGE_STATE_TABLE", None, "is required", true),
        // the AWS SDK would panic ("URL was unset")
        ("AWS_ENDPOINT_URL", Some(""), "is set but empty", true),
        ("MAILBRIDGE_THREAD_KEY_SECRET", None, "is required", true),
        (
            "MAILBRIDGE_THREAD_KEY_SECRET",
            Some("fm-no-such-secret"),
            "cannot read it",
            false,
        ),
        (
            "MAILBRIDGE_THREAD_KEY_SECRET",
            Some(short_thread_key_secret.as_str()),
            "at least 16 bytes (got 15)",
            false,
        ),
        (
            "MAILBRIDGE_MAX_CONCURRENT_MAILBOXES",
            Some("0"),
            "from 1 to 256",
            true,
        ),
        (
            "MAILBRIDGE_IMAP_TIMEOUT_SECONDS",
            Some("soon"),
            "not a whole number",
            true,
        ),
        (
            "MAILBRIDGE_IMAP_CA_FILE",
            Some("/nonexistent/ca.pem"),
            "/nonexistent/ca.pem",
            true,
        ),
        // production (the setting unset, as in Lambda) refuses a loopback Graph URL: inside
        // Lambda 127.0.0.1:9001 is the Runtime API
        (
            "MAILBRIDGE_GRAPH_URL",
            Some("http://127.0.0.1:9/v1.0"),
            "MAILBRIDGE_ALLOW_LOCAL_TARGETS",
            true,
        ),
    ];
    for (variable, value, detail, at_init) in cases {
        let mut env = stack().moto().env();
        for name in ["MAILBRIDGE_STATE_TABLE", "MAILBRIDGE_THREAD_KEY_SECRET"] {
            if name != variable
                && let Some(v) = good(name)
            {
                env.push((name.into(), v));
            }
        }
        if let Some(v) = value {
            env.push((variable.into(), v.into()));
        }
        env.push(("RUST_LOG".into(), "info".into()));
        let outcome = invoke_binary(
            &binary,
            &env,
            json!({"source": "aws.scheduler"}),
            Duration::from_secs(60),
        )
        .await
        .unwrap();
        let expected_line = if at_init {
            assert!(
                matches!(
                    outcome.result,
                    InvocationResult::ProcessExited(_) | InvocationResult::InitError { .. }
                ),
                "{variable}={value:?}: init must fail: {outcome:?}"
            );
            "poll-mailboxes cannot start"
        } else {
            match &outcome.result {
                InvocationResult::FunctionError {
                    error_type,
                    error_message,
                    ..
                } => {
                    assert_eq!(error_type, "ThreadKeyUnavailable", "{outcome:?}");
                    assert!(
                        error_message.contains(variable) && error_message.contains(detail),
                        "{variable}={value:?}: the invocation error names the variable: {error_message}"
                    );
                }
                other => panic!("{variable}={value:?}: the invocation must fail: {other:?}"),
            }
            "poll-mailboxes cannot poll"
        };
        let logs = outcome.logs();
        let error_line = logs
            .lines()
            .find(|l| l.contains(expected_line))
            .unwrap_or_else(|| panic!("{variable}: no startup error line: {logs}"));
        assert!(
            error_line.contains(variable) && error_line.contains(detail),
            "{variable}={value:?}: the startup error names the variable and the problem: {error_line}"
        );
        assert!(
            error_line.contains("\"level\":\"ERROR\""),
            "a JSON error line: {error_line}"
        );
    }
}

/// The real send-notifications bootstrap, its path, and its environment on the shared moto with
/// `AWS_ENDPOINT_URL` replaced by `endpoint`.
async fn send_notifications_with_endpoint(
    endpoint: &str,
    thread_key_secret: &str,
) -> (std::path::PathBuf, Vec<(String, String)>) {
    let binary = tokio::task::spawn_blocking(|| {
        local_stack::runtime_api::workspace_binary("send-notifications", "send-notifications")
    })
    .await
    .unwrap()
    .expect("build the send-notifications binary");
    let mut env: Vec<(String, String)> = stack()
        .moto()
        .env()
        .into_iter()
        .filter(|(k, _)| k != "AWS_ENDPOINT_URL")
        .collect();
    env.extend([
        ("MAILBRIDGE_STATE_TABLE".into(), "fm-send-table".into()),
        ("MAILBRIDGE_DLQ_URL".into(), "http://127.0.0.1:9/dlq".into()),
        (
            "MAILBRIDGE_THREAD_KEY_SECRET".into(),
            thread_key_secret.into(),
        ),
        ("AWS_ENDPOINT_URL".into(), endpoint.into()),
        ("RUST_LOG".into(), "info".into()),
    ]);
    (binary, env)
}

fn one_record_sqs_event() -> serde_json::Value {
    json!({"Records": [{"messageId": "m-1", "receiptHandle": "r-1", "body": "{}",
        "eventSource": "aws:sqs", "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:q"}]})
}

/// An empty `AWS_ENDPOINT_URL` (what SAM local passes for a variable it cannot resolve) stops
/// send-notifications' cold start with an error line naming the variable; the AWS SDK itself
/// would panic ("URL was unset") on the first call.
#[tokio::test]
async fn send_notifications_cold_start_with_an_empty_endpoint_url_names_it() {
    use local_stack::runtime_api::{InvocationResult, invoke_binary};
    let (binary, env) = send_notifications_with_endpoint("", "fm-unused-thread-key").await;
    let outcome = invoke_binary(
        &binary,
        &env,
        one_record_sqs_event(),
        Duration::from_secs(60),
    )
    .await
    .unwrap();
    let logs = outcome.logs();
    assert!(
        matches!(
            outcome.result,
            InvocationResult::ProcessExited(_) | InvocationResult::InitError { .. }
        ),
        "init must fail, before any event is taken: {outcome:?}\n{logs}"
    );
    assert!(
        logs.lines()
            .any(|l| l.contains("send-notifications cannot start")
                && l.contains("AWS_ENDPOINT_URL is set but empty")),
        "the startup error line names the variable: {logs}"
    );
}

/// A thread-key read that cannot reach Secrets Manager fails the invocation with
/// `ThreadKeyUnavailable` and the whole cause, in the error and in the JSON log line the
/// `SendNotificationsErrors` alarm tells operators to read (not the SDK's bare "unhandled
/// error").
#[tokio::test]
async fn send_notifications_names_the_cause_when_the_thread_key_cannot_be_read() {
    use local_stack::runtime_api::{InvocationResult, invoke_binary};
    // Nothing listens on this port: every Secrets Manager call is refused.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let unreachable = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let thread_key_secret = unique("fm-send-thread-key");
    let (binary, env) = send_notifications_with_endpoint(&unreachable, &thread_key_secret).await;
    let outcome = invoke_binary(
        &binary,
        &env,
        one_record_sqs_event(),
        Duration::from_secs(60),
    )
    .await
    .unwrap();
    let logs = outcome.logs();
    match &outcome.result {
        InvocationResult::FunctionError {
            error_type,
            error_message,
            ..
        } => {
            assert_eq!(error_type, "ThreadKeyUnavailable", "{outcome:?}");
            assert!(
                error_message.starts_with(&format!(
                    "MAILBRIDGE_THREAD_KEY_SECRET {thread_key_secret}: cannot read it: dispatch failure"
                )) && error_message.contains("Connection refused"),
                "the error carries the whole cause: {error_message}"
            );
        }
        other => panic!("the invocation must fail: {other:?}\n{logs}"),
    }
    let line = logs
        .lines()
        .find(|l| l.contains("send-notifications cannot handle the batch"))
        .unwrap_or_else(|| panic!("no error line: {logs}"));
    assert!(
        line.contains("Connection refused") && !line.contains("unhandled error"),
        "the log line names the cause: {line}"
    );
}
