//! Deploy assets agree with the code: the `infra/events/` files are what the functions accept, and
//! `template.yaml` gives each function the environment it reads.
//!
//! The events are also run through the real `bootstrap` binaries by the sender's and poller's tests;
//! these checks are the cheap, offline half (no local stack needed).

use std::path::PathBuf;

use aws_lambda_events::event::sqs::SqsEvent;
use mailbridge::notification::Notification;

fn repo_file(relative: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// The Rust sources of one folder of the repository, one after the other.
fn repo_folder_sources(relative: &str) -> String {
    let folder = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(relative);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&folder)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", folder.display()))
        .map(|entry| entry.expect("a folder entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "rs"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no Rust sources in {}", folder.display());
    files
        .iter()
        .map(|path| {
            std::fs::read_to_string(path)
                .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
        })
        .collect()
}

fn json_file(relative: &str) -> serde_json::Value {
    serde_json::from_str(&repo_file(relative))
        .unwrap_or_else(|e| panic!("{relative} is not valid JSON: {e}"))
}

/// The lines of one top-level resource of template.yaml (from `  Name:` to the next resource).
fn template_resource(template: &str, name: &str) -> String {
    let header = format!("  {name}:");
    let mut lines = template.lines().skip_while(|l| *l != header);
    let first = lines
        .next()
        .unwrap_or_else(|| panic!("template.yaml has no resource {name}"));
    let is_next_resource =
        |l: &str| l.starts_with("  ") && !l.starts_with("   ") && l.trim_end().ends_with(':');
    let is_next_section = |l: &str| !l.is_empty() && !l.starts_with(' ');
    let rest = lines.take_while(|l| !is_next_resource(l) && !is_next_section(l));
    std::iter::once(first)
        .chain(rest)
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn the_sqs_batch_event_is_a_lambda_sqs_event_whose_bodies_are_valid_notifications() {
    let event: SqsEvent =
        serde_json::from_value(json_file("infra/events/sqs-notification-batch.json"))
            .expect("sqs-notification-batch.json must deserialize as aws_lambda_events SqsEvent");
    assert!(
        event.records.len() >= 3,
        "the batch should show several shapes"
    );
    let mut ids = Vec::new();
    for record in &event.records {
        let message_id = record
            .message_id
            .clone()
            .expect("every record has a messageId");
        assert_eq!(record.event_source.as_deref(), Some("aws:sqs"));
        assert!(
            record.attributes.contains_key("ApproximateReceiveCount"),
            "record {message_id} lacks the SQS system attributes"
        );
        let body = record.body.as_deref().expect("every record has a body");
        let notification = Notification::parse(body, &message_id).unwrap_or_else(|e| {
            panic!("record {message_id}: body is not a valid notification: {e}")
        });
        ids.push(notification.id().to_owned());
    }
    assert!(
        ids.iter().any(|id| event
            .records
            .iter()
            .any(|r| r.message_id.as_deref() == Some(id))),
        "one record leaves out `id`, so the SQS message id is the idempotency key"
    );
}

#[test]
fn the_single_notification_for_send_message_is_valid() {
    let body = repo_file("infra/events/notification.json");
    let notification =
        Notification::parse(&body, "cli-test").expect("notification.json must be valid");
    assert!(notification.ticket_number.is_some() && !notification.attachments.is_empty());
}

#[test]
fn the_schedule_input_in_the_template_matches_the_schedule_event_file() {
    let template = repo_file("template.yaml");
    let poller = template_resource(&template, "PollMailboxesFunction");
    // the folded `Input: >-` block: its indented lines up to the next key
    let mut input = String::new();
    let mut lines = poller.lines().skip_while(|l| l.trim() != "Input: >-");
    lines.next().expect("the schedule has an Input");
    for line in lines {
        if line.trim_end().ends_with(':') || line.trim_start().starts_with('#') {
            break;
        }
        input.push_str(line.trim());
        input.push(' ');
    }
    let input: serde_json::Value = serde_json::from_str(&input)
        .unwrap_or_else(|e| panic!("schedule Input is not JSON ({e}): {input}"));
    let sample = json_file("infra/events/poll-schedule.json");
    let keys = |v: &serde_json::Value| {
        let mut k: Vec<String> = v.as_object().expect("object").keys().cloned().collect();
        k.sort();
        k
    };
    assert_eq!(keys(&input), keys(&sample));
    assert_eq!(input["source"], sample["source"]);
    assert!(
        input.get("mailboxes").is_none(),
        "a scheduled run polls every mailbox"
    );
}

#[test]
fn the_poller_reads_the_schedule_event_as_all_mailboxes_and_the_manual_event_as_named_ones() {
    use poll_mailboxes::handler::{PollRequest, parse_event};
    let scheduled = parse_event(&json_file("infra/events/poll-schedule.json"))
        .expect("the poller accepts the schedule event");
    assert_eq!(scheduled, PollRequest::All);
    let manual = parse_event(&json_file("infra/events/poll-manual.json"))
        .expect("the poller accepts the manual event");
    match manual {
        PollRequest::Named(names) => assert_eq!(names.len(), 2, "{names:?}"),
        PollRequest::All => panic!("the manual event names mailboxes"),
    }
}

/// The single-quoted argument after `flag` in each shell command of docs/deploy.md (a fenced block may
/// continue it over several lines).
fn deploy_guide_quoted_arguments(flag: &str) -> Vec<String> {
    let guide = repo_file("docs/deploy.md");
    let needle = format!("{flag} '");
    guide
        .match_indices(&needle)
        .map(|(at, _)| {
            let rest = &guide[at + needle.len()..];
            let end = rest
                .find('\'')
                .unwrap_or_else(|| panic!("docs/deploy.md: unterminated {flag} '...'"));
            rest[..end].to_owned()
        })
        .collect()
}

#[test]
fn the_deploy_guide_send_message_example_is_a_valid_notification() {
    let bodies = deploy_guide_quoted_arguments("--message-body");
    assert!(
        !bodies.is_empty(),
        "the deploy guide shows an inline `aws sqs send-message --message-body '...'`"
    );
    for body in bodies {
        Notification::parse(&body, "readme-example").unwrap_or_else(|e| {
            panic!("docs/deploy.md send-message body is not a valid notification ({e}):\n{body}")
        });
    }
}

#[test]
fn the_deploy_guide_manual_poll_payload_is_accepted_by_the_poller() {
    use poll_mailboxes::handler::{PollRequest, parse_event};
    let payloads = deploy_guide_quoted_arguments("--payload");
    assert!(
        !payloads.is_empty(),
        "the deploy guide shows a manual `aws lambda invoke --payload`"
    );
    for payload in payloads {
        let event: serde_json::Value = serde_json::from_str(&payload)
            .unwrap_or_else(|e| panic!("docs/deploy.md --payload is not JSON ({e}): {payload}"));
        match parse_event(&event) {
            Ok(PollRequest::Named(names)) => assert!(!names.is_empty(), "{payload}"),
            other => {
                panic!("docs/deploy.md --payload {payload} should name mailboxes, got {other:?}")
            }
        }
    }
}

#[test]
fn the_template_gives_each_function_the_environment_it_reads() {
    let template = repo_file("template.yaml");
    let both = [
        "RUST_LOG",
        "MAILBRIDGE_STATE_TABLE",
        "MAILBRIDGE_SECRET_PREFIX",
        "MAILBRIDGE_THREAD_KEY_SECRET",
        // sendMail, and the mailboxes read through Graph
        "MAILBRIDGE_GRAPH_URL",
        // "false" in Lambda: loopback and plain http targets refused
        "MAILBRIDGE_ALLOW_LOCAL_TARGETS",
    ];
    let sender_only = [
        "MAILBRIDGE_DLQ_URL",
        "MAILBRIDGE_MAX_IN_FLIGHT_PER_MAILBOX",
        "MAILBRIDGE_REAUTH_VISIBILITY_SECONDS",
        "MAILBRIDGE_MESSAGE_BUCKET",
        "MAILBRIDGE_MAX_MESSAGE_BYTES",
    ];
    let poller_only = [
        "MAILBRIDGE_MAX_CONCURRENT_MAILBOXES",
        "MAILBRIDGE_SINK_HOSTS",
        "MAILBRIDGE_IMAP_HOSTS",
    ];
    let sender = template_resource(&template, "SendNotificationsFunction");
    let poller = template_resource(&template, "PollMailboxesFunction");
    let has = |section: &str, var: &str| {
        section
            .lines()
            .any(|l| l.trim_start().starts_with(&format!("{var}:")))
    };
    for var in both.iter().chain(&sender_only) {
        assert!(has(&sender, var), "SendNotificationsFunction lacks {var}");
    }
    for var in both.iter().chain(&poller_only) {
        assert!(has(&poller, var), "PollMailboxesFunction lacks {var}");
    }
    for var in sender_only {
        assert!(
            !has(&poller, var),
            "PollMailboxesFunction should not get {var}"
        );
    }
    for section in [&sender, &poller] {
        for needle in [
            "Runtime: provided.al2023",
            "Architectures: [arm64]",
            "Handler: bootstrap",
            "BuildMethod: rust-cargolambda",
            "LogFormat: JSON",
        ] {
            assert!(section.contains(needle), "a function lacks `{needle}`");
        }
    }
    assert!(sender.contains("FunctionResponseTypes: [ReportBatchItemFailures]"));
    assert!(poller.contains("Type: ScheduleV2"));
}

/// The IAM statements of a role in template.yaml, by `Sid`: each the statement's own lines.
fn role_statements(template: &str, role: &str) -> Vec<(String, String)> {
    let resource = template_resource(template, role);
    let mut statements: Vec<(String, String)> = Vec::new();
    for line in resource.lines() {
        if let Some(sid) = line.trim_start().strip_prefix("- Sid: ") {
            statements.push((sid.trim().to_string(), String::new()));
        } else if let Some((_, body)) = statements.last_mut() {
            if line.trim_start().starts_with("- PolicyName:") {
                break;
            }
            body.push_str(line.trim());
            body.push('\n');
        }
    }
    assert!(!statements.is_empty(), "{role} has no IAM statements");
    statements
}

/// The statements of `role` with this effect that name `action`.
fn statements_with<'a>(
    statements: &'a [(String, String)],
    effect: &str,
    action: &str,
) -> Vec<&'a (String, String)> {
    statements
        .iter()
        .filter(|(_, body)| body.contains(&format!("Effect: {effect}\n")) && body.contains(action))
        .collect()
}

const SECRET_ARN: &str =
    "arn:${AWS::Partition}:secretsmanager:${AWS::Region}:${AWS::AccountId}:secret:";

#[test]
fn the_sender_may_read_account_grants_and_the_thread_key_but_no_ticket_api_credentials() {
    let template = repo_file("template.yaml");
    let sender = role_statements(&template, "SendNotificationsRole");
    let account_prefix = format!("{SECRET_ARN}${{SecretPrefix}}*");
    let sink_prefix = format!("{SECRET_ARN}${{SinkSecretPrefix}}*");
    let exact_thread_key = format!("{SECRET_ARN}${{ThreadKeySecretName}}-??????");

    let allowed_writes = statements_with(&sender, "Allow", "secretsmanager:PutSecretValue");
    assert_eq!(allowed_writes.len(), 1, "{allowed_writes:?}");
    assert!(allowed_writes[0].1.contains(&account_prefix));
    for (sid, body) in statements_with(&sender, "Allow", "secretsmanager:") {
        assert!(
            !body.contains("SinkSecretPrefix"),
            "{sid} lets the sender near ticket-API credentials"
        );
        assert!(
            !body.contains("${ThreadKeySecretName}*"),
            "{sid}: the thread key must be named exactly (`-??????`), not as a prefix"
        );
    }
    let denied = statements_with(&sender, "Deny", "secretsmanager:GetSecretValue");
    assert!(
        denied.iter().any(|(_, body)| body.contains(&sink_prefix)),
        "the sender is not denied the ticket-API credentials (they may lie under SecretPrefix)"
    );
    let thread_key_read = statements_with(&sender, "Allow", "secretsmanager:GetSecretValue")
        .into_iter()
        .any(|(_, body)| {
            body.contains("!Ref ThreadKeySecret\n") && body.contains(&exact_thread_key)
        });
    assert!(
        thread_key_read,
        "the sender cannot read the thread key by its exact name"
    );
}

#[test]
fn the_poller_reads_ticket_api_credentials_but_writes_only_account_grants() {
    let template = repo_file("template.yaml");
    let poller = role_statements(&template, "PollMailboxesRole");
    let account_prefix = format!("{SECRET_ARN}${{SecretPrefix}}*");
    let sink_prefix = format!("{SECRET_ARN}${{SinkSecretPrefix}}*");

    let allowed_writes = statements_with(&poller, "Allow", "secretsmanager:PutSecretValue");
    assert_eq!(allowed_writes.len(), 1, "{allowed_writes:?}");
    assert!(allowed_writes[0].1.contains(&account_prefix));
    assert!(
        statements_with(&poller, "Allow", "secretsmanager:GetSecretValue")
            .iter()
            .any(|(_, body)| body.contains(&sink_prefix)),
        "the poller cannot read the ticket-API credentials"
    );
    assert!(
        statements_with(&poller, "Deny", "secretsmanager:PutSecretValue")
            .iter()
            .any(|(_, body)| body.contains(&sink_prefix)),
        "the poller is not denied writing ticket-API credentials (they may lie under SecretPrefix)"
    );
}

#[test]
fn neither_function_may_overwrite_the_thread_key_even_inside_the_account_prefix() {
    // With the default stack name the generated key is `mailbridge/thread-marker-key`, inside the
    // default SecretPrefix `mailbridge/` that both roles may write.
    let template = repo_file("template.yaml");
    let exact_thread_key = format!("{SECRET_ARN}${{ThreadKeySecretName}}-??????");
    for role in ["SendNotificationsRole", "PollMailboxesRole"] {
        let statements = role_statements(&template, role);
        let denied = statements_with(&statements, "Deny", "secretsmanager:PutSecretValue")
            .into_iter()
            .any(|(_, body)| {
                body.contains("!Ref ThreadKeySecret\n") && body.contains(&exact_thread_key)
            });
        assert!(denied, "{role} may overwrite the thread key");
    }
}

/// The `dynamodb:LeadingKeys` patterns of a statement (empty when it has no such condition).
fn leading_keys(body: &str) -> Vec<String> {
    let Some(line) = body
        .lines()
        .find(|l| l.starts_with("dynamodb:LeadingKeys:"))
    else {
        return Vec::new();
    };
    assert!(
        body.contains("ForAllValues:StringLike:"),
        "LeadingKeys must be a ForAllValues:StringLike condition:\n{body}"
    );
    let list = line["dynamodb:LeadingKeys:".len()..].trim();
    list.trim_start_matches('[')
        .trim_end_matches(']')
        .split(',')
        .map(|k| k.trim().trim_matches('"').to_string())
        .collect()
}

#[test]
fn each_function_may_touch_only_its_own_state_table_items() {
    let template = repo_file("template.yaml");
    let writes = [
        "dynamodb:PutItem",
        "dynamodb:UpdateItem",
        "dynamodb:DeleteItem",
        "dynamodb:BatchWriteItem",
    ];
    let cases = [
        (
            "SendNotificationsRole",
            vec!["notification#*"],
            vec!["notification#*"],
        ),
        (
            "PollMailboxesRole",
            vec![
                "mailbox-lease#*",
                "mailbox-status#*",
                "mail#*",
                "subscription#*",
                "mailbox-subscription#*",
                "subscription-index",
                "poll-request#*",
            ],
            vec![
                "mailbox-index",
                "mailbox#*",
                "mailbox-lease#*",
                "mailbox-status#*",
                "mail#*",
                "subscription#*",
                "mailbox-subscription#*",
                "subscription-index",
                "poll-request#*",
            ],
        ),
        // reads subscription records, arms poll-request gates: nothing else
        (
            "ReceiveNotificationsRole",
            vec!["poll-request#*"],
            vec!["subscription#*"],
        ),
    ];
    for (role, may_write, may_read) in cases {
        let statements = role_statements(&template, role);
        let dynamo: Vec<_> = statements
            .iter()
            .filter(|(_, body)| body.contains("dynamodb:"))
            .collect();
        assert!(!dynamo.is_empty(), "{role} has no DynamoDB statement");
        for (sid, body) in dynamo {
            assert!(body.contains("Effect: Allow\n"), "{role} {sid}");
            let keys = leading_keys(body);
            assert!(
                !keys.is_empty(),
                "{role} {sid} is not limited by dynamodb:LeadingKeys"
            );
            let allowed = if writes.iter().any(|w| body.contains(w)) {
                &may_write
            } else {
                &may_read
            };
            for key in &keys {
                assert!(
                    allowed.contains(&key.as_str()),
                    "{role} {sid} reaches items {key}, which are not its own"
                );
            }
        }
    }
}

/// The statements of a resource's `PolicyDocument` (a bucket policy, a managed policy), by `Sid`.
fn document_statements(template: &str, resource: &str) -> Vec<(String, String)> {
    let resource = template_resource(template, resource);
    let mut statements: Vec<(String, String)> = Vec::new();
    for line in resource.lines() {
        if let Some(sid) = line.trim_start().strip_prefix("- Sid: ") {
            statements.push((sid.trim().to_string(), String::new()));
        } else if let Some((_, body)) = statements.last_mut() {
            body.push_str(line.trim());
            body.push('\n');
        }
    }
    assert!(!statements.is_empty(), "{resource} has no statements");
    statements
}

#[test]
fn the_message_bucket_is_private_encrypted_tls_only_and_expires_what_it_keeps() {
    let template = repo_file("template.yaml");
    let bucket = template_resource(&template, "MessageBucket");
    for needle in [
        "SSEAlgorithm: AES256",
        "BlockPublicAcls: true",
        "BlockPublicPolicy: true",
        "IgnorePublicAcls: true",
        "RestrictPublicBuckets: true",
        "ObjectOwnership: BucketOwnerEnforced",
        "Status: Enabled",
        "DaysAfterInitiation: 1",
    ] {
        assert!(bucket.contains(needle), "MessageBucket lacks `{needle}`");
    }
    assert!(
        !bucket.contains("VersioningConfiguration"),
        "versioning would keep deleted message bodies"
    );
    // A notification lives at most MessageRetentionPeriod in the queue, and a parked one (a new
    // message in the DLQ) as long again there: its object must outlive both, and no longer.
    let retention_days = |queue: &str| -> u64 {
        let section = template_resource(&template, queue);
        let line = section
            .lines()
            .find_map(|l| l.trim().strip_prefix("MessageRetentionPeriod: "))
            .unwrap_or_else(|| panic!("{queue} has no MessageRetentionPeriod"));
        line.trim().parse::<u64>().unwrap() / 86_400
    };
    let expiry: u64 = bucket
        .lines()
        .find_map(|l| l.trim().strip_prefix("ExpirationInDays: "))
        .expect("the bucket expires objects")
        .trim()
        .parse()
        .unwrap();
    let kept = retention_days("NotificationQueue") + retention_days("NotificationDeadLetterQueue");
    assert!(
        expiry > kept && expiry <= kept + 2,
        "objects expire after {expiry} days; queue + DLQ keep a notification {kept} days"
    );
    let policy = document_statements(&template, "MessageBucketPolicy");
    let tls = policy
        .iter()
        .find(|(_, body)| body.contains("aws:SecureTransport: \"false\""))
        .expect("the bucket policy denies requests without TLS");
    for needle in [
        "Effect: Deny",
        "Principal: \"*\"",
        "Action: \"s3:*\"",
        "- !GetAtt MessageBucket.Arn",
        "- !Sub \"${MessageBucket.Arn}/*\"",
    ] {
        assert!(
            tls.1.contains(needle),
            "{} lacks `{needle}`:\n{}",
            tls.0,
            tls.1
        );
    }
}

#[test]
fn the_sender_may_only_read_and_delete_stored_messages_and_the_sendmail_host_only_write_them() {
    let template = repo_file("template.yaml");
    let objects = "Resource: !Sub \"${MessageBucket.Arn}/*\"";
    let s3_of = |statements: &[(String, String)]| -> Vec<(String, String)> {
        statements
            .iter()
            .filter(|(_, body)| body.contains("s3:"))
            .cloned()
            .collect()
    };
    let sender = s3_of(&role_statements(&template, "SendNotificationsRole"));
    assert_eq!(sender.len(), 1, "{sender:?}");
    assert!(sender[0].1.contains("Effect: Allow\n"));
    assert!(
        sender[0]
            .1
            .contains("Action: [s3:GetObject, s3:DeleteObject]\n"),
        "{:?}",
        sender[0]
    );
    assert!(sender[0].1.contains(objects), "{:?}", sender[0]);
    assert!(
        template_resource(&template, "PollMailboxesRole")
            .lines()
            .all(|l| !l.contains("s3:")),
        "the poller has no business with stored messages"
    );
    // Besides these, only the queue's KMS key when one is given (checked with the queues).
    let host: Vec<_> = document_statements(&template, "SendmailHostPolicy")
        .into_iter()
        .filter(|(_, body)| !body.contains("Resource: !Ref QueueKmsKeyArn"))
        .collect();
    assert!(
        template_resource(&template, "SendmailHostPolicy")
            .contains("Type: AWS::IAM::ManagedPolicy")
    );
    let actions: Vec<&str> = host
        .iter()
        .filter_map(|(_, body)| {
            assert!(body.contains("Effect: Allow\n"), "{body}");
            body.lines().find_map(|l| l.strip_prefix("Action: "))
        })
        .collect();
    assert_eq!(actions, ["sqs:SendMessage", "s3:PutObject"], "{host:?}");
    assert!(
        host[0]
            .1
            .contains("Resource: !GetAtt NotificationQueue.Arn\n")
    );
    assert!(host[1].1.contains(objects), "{:?}", host[1]);
    for name in ["MessageBucketName", "SendmailHostPolicyArn"] {
        let outputs = template.split("\nOutputs:\n").nth(1).expect("Outputs");
        assert!(
            outputs.contains(&format!("\n  {name}:\n")),
            "the stack does not output {name} (sendmail's configuration needs it)"
        );
    }
}

/// The Mailbridge metrics the functions emit: (metric, dimension name, dimension value) for
/// every dimension set of every EMF directive, read from the functions' own EMF lines.
fn emitted_metrics() -> Vec<(String, String, String)> {
    let poller = poll_mailboxes::handler::emf_line(
        &poll_mailboxes::PollReport::default(),
        Some("${PollMailboxesFunction}".into()),
        0,
    );
    let sender = send_notifications::metrics::BatchMetrics::default()
        .emf("send-notifications")
        .to_string();
    let mut emitted = Vec::new();
    for line in [poller, sender] {
        let line: serde_json::Value = serde_json::from_str(&line).unwrap();
        for directive in line["_aws"]["CloudWatchMetrics"].as_array().unwrap() {
            assert_eq!(directive["Namespace"], "Mailbridge");
            for set in directive["Dimensions"].as_array().unwrap() {
                let [dimension] = set.as_array().unwrap().as_slice() else {
                    panic!("one dimension per set: {set}");
                };
                let dimension = dimension.as_str().unwrap();
                for metric in directive["Metrics"].as_array().unwrap() {
                    emitted.push((
                        metric["Name"].as_str().unwrap().to_owned(),
                        dimension.to_owned(),
                        line[dimension].as_str().unwrap().to_owned(),
                    ));
                }
            }
        }
    }
    emitted
}

/// The value of `key: value` on the first line of `section` that has it.
fn yaml_value(section: &str, key: &str) -> String {
    section
        .lines()
        .find_map(|l| l.trim_start().strip_prefix(&format!("{key}:")))
        .unwrap_or_else(|| panic!("no `{key}:` in\n{section}"))
        .trim()
        .to_owned()
}

#[test]
fn the_heartbeat_alarm_watches_what_the_poller_emits_and_missing_data_breaches() {
    let template = repo_file("template.yaml");
    let alarm = template_resource(&template, "PollHeartbeatAlarm");
    // Missing data is the schedule stopped or the function dying before it reports.
    assert_eq!(yaml_value(&alarm, "TreatMissingData"), "breaching");
    assert_eq!(yaml_value(&alarm, "Namespace"), "Mailbridge");
    let metric = yaml_value(&alarm, "MetricName");
    assert_eq!(metric, poll_mailboxes::handler::HEARTBEAT_METRIC);
    // This deployment's poller only: another stack's heartbeat must not keep it quiet.
    assert_eq!(
        yaml_value(&alarm, "- Name"),
        poll_mailboxes::handler::HEARTBEAT_DIMENSION
    );
    assert_eq!(yaml_value(&alarm, "Value"), "!Ref PollMailboxesFunction");
    assert!(
        emitted_metrics().contains(&(
            metric,
            poll_mailboxes::handler::HEARTBEAT_DIMENSION.to_owned(),
            "${PollMailboxesFunction}".to_owned()
        )),
        "the poller's EMF line carries the heartbeat with the alarm's dimension"
    );
    assert_eq!(yaml_value(&alarm, "Statistic"), "Maximum");
    assert_eq!(
        yaml_value(&alarm, "ComparisonOperator"),
        "GreaterThanThreshold"
    );
    assert_eq!(yaml_value(&alarm, "Threshold"), "!Ref HeartbeatSeconds");
    assert_eq!(yaml_value(&alarm, "Period"), "!Ref HeartbeatSeconds");
    assert_eq!(yaml_value(&alarm, "EvaluationPeriods"), "1");
    assert!(alarm.contains("AlarmActions: !If [HasAlarmTopic"));

    // Every allowed period is one CloudWatch accepts, and the default spans several runs of the
    // default schedule (one late run must not look like a stopped schedule).
    let parameter = template_resource(&template, "HeartbeatSeconds");
    let allowed: Vec<u64> = yaml_value(&parameter, "AllowedValues")
        .trim_matches(['[', ']'])
        .split(',')
        .map(|v| v.trim().parse().unwrap())
        .collect();
    assert!(
        allowed
            .iter()
            .all(|p| p % 60 == 0 && *p >= 600 && *p <= 86_400)
    );
    let default: u64 = yaml_value(&parameter, "Default").parse().unwrap();
    assert!(allowed.contains(&default));
    let schedule = template_resource(&template, "PollSchedule");
    let minutes: u64 = yaml_value(&schedule, "Default")
        .trim_start_matches("rate(")
        .trim_end_matches(" minutes)")
        .parse()
        .expect("the default schedule is rate(N minutes)");
    assert!(
        default >= 3 * minutes * 60,
        "HeartbeatSeconds {default} is under 3 schedule periods"
    );
}

/// The dashboard body (the `!Sub |` JSON) with every `${...}` replaced by a placeholder,
/// parsed; panics on a `${...}` that names nothing the template defines.
fn dashboard_body(template: &str) -> serde_json::Value {
    let dashboard = template_resource(template, "OperationsDashboard");
    let body: Vec<&str> = dashboard
        .lines()
        .skip_while(|l| !l.trim_start().starts_with("DashboardBody: !Sub |"))
        .skip(1)
        .collect();
    let mut text = body.join("\n");
    while let Some(start) = text.find("${") {
        let end = start + text[start..].find('}').expect("closing brace");
        let name = text[start + 2..end].to_owned();
        let logical = name.split('.').next().unwrap();
        assert!(
            logical.starts_with("AWS::") || template.contains(&format!("\n  {logical}:\n")),
            "the dashboard names ${{{name}}}, which the template does not define"
        );
        let value = if name == "HeartbeatSeconds" {
            "1200".to_owned()
        } else {
            format!("<{name}>")
        };
        text.replace_range(start..=end, &value);
    }
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("the dashboard body is not JSON: {e}"))
}

#[test]
fn the_dashboard_shows_what_an_admin_needs_from_metrics_that_exist() {
    let template = repo_file("template.yaml");
    let body = dashboard_body(&template);
    let emitted: Vec<(String, String, String)> = emitted_metrics()
        .into_iter()
        .map(|(m, d, v)| {
            (
                m,
                d,
                v.replace("${PollMailboxesFunction}", "<PollMailboxesFunction>"),
            )
        })
        .collect();
    let mut shown = Vec::new();
    let mut queries = Vec::new();
    for widget in body["widgets"].as_array().unwrap() {
        let properties = &widget["properties"];
        assert!(properties["title"].is_string(), "{widget}");
        if widget["type"] == "log" {
            queries.push(properties["query"].as_str().unwrap().to_owned());
            continue;
        }
        for row in properties["metrics"].as_array().unwrap() {
            let row = row.as_array().unwrap();
            let text = |i: usize| row[i].as_str().unwrap().to_owned();
            let (namespace, metric, dimension, value) = (text(0), text(1), text(2), text(3));
            if namespace == "Mailbridge" {
                assert!(
                    emitted.contains(&(metric.clone(), dimension.clone(), value.clone())),
                    "the dashboard shows {metric} {dimension}={value}, which no function emits"
                );
            }
            shown.push(format!("{namespace}/{metric}/{value}"));
        }
    }
    for wanted in [
        "Mailbridge/NotificationsSent/send-notifications",
        "Mailbridge/NotificationsParked/send-notifications",
        "Mailbridge/TicketsCreated/poll-mailboxes",
        "Mailbridge/MailboxPollFailed/poll-mailboxes",
        "Mailbridge/AccountNeedsReauth/poll-mailboxes",
        "Mailbridge/AccountNeedsReauth/send-notifications",
        "Mailbridge/OldestMailboxSuccessAgeSeconds/<PollMailboxesFunction>",
        "AWS/SQS/ApproximateAgeOfOldestMessage/<NotificationQueue.QueueName>",
        "AWS/Lambda/Errors/<SendNotificationsFunction>",
        "AWS/Lambda/Errors/<PollMailboxesFunction>",
        "AWS/Lambda/Duration/<SendNotificationsFunction>",
        "AWS/Lambda/Duration/<PollMailboxesFunction>",
    ] {
        assert!(
            shown.iter().any(|s| s == wanted),
            "the dashboard lacks {wanted}"
        );
    }
    // Failed polls per mailbox: a Logs Insights table over the poller's own log lines.
    let [per_mailbox] = queries.as_slice() else {
        panic!("one log widget: {queries:?}");
    };
    assert!(per_mailbox.starts_with("SOURCE '<PollMailboxesLogGroup>'"));
    assert!(per_mailbox.contains("by fields.mailbox"));
    let poller = repo_folder_sources("functions/poll-mailboxes/src/poll");
    for message in [
        "mailbox poll failed",
        "mailbox partly polled; the rest waits for the next run",
    ] {
        assert!(
            per_mailbox.contains(&format!("'{message}'")),
            "{per_mailbox}"
        );
        assert!(
            poller.contains(&format!("\"{message}\"")),
            "the poller no longer logs {message:?}"
        );
    }
}

/// The lines of one parameter of template.yaml (from `  Name:` to the next parameter).
fn template_parameter(template: &str, name: &str) -> String {
    let parameters: String = template
        .lines()
        .skip_while(|l| *l != "Parameters:")
        .skip(1)
        .take_while(|l| l.is_empty() || l.starts_with(' '))
        .collect::<Vec<_>>()
        .join("\n");
    template_resource(&format!("Parameters:\n{parameters}\n"), name)
}

#[test]
fn config_targets_are_allowlisted_and_loopback_stays_refused_in_lambda() {
    use mailbridge::mailbox::targets::{
        ALLOW_LOCAL_VAR, IMAP_HOSTS_VAR, MICROSOFT_IMAP_HOSTS, SINK_HOSTS_VAR,
    };
    let template = repo_file("template.yaml");
    let poller = template_resource(&template, "PollMailboxesFunction");
    let env = |var: &str| -> String {
        poller
            .lines()
            .find_map(|l| l.trim().strip_prefix(&format!("{var}: ")))
            .unwrap_or_else(|| panic!("PollMailboxesFunction lacks {var}"))
            .to_string()
    };
    assert_eq!(env(SINK_HOSTS_VAR), "!Ref TicketApiHosts");
    assert_eq!(env(IMAP_HOSTS_VAR), "!Ref ImapHosts");
    assert_eq!(
        env(ALLOW_LOCAL_VAR),
        "\"false\"",
        "inside Lambda 127.0.0.1:9001 is the Runtime API: loopback targets must stay refused"
    );
    // The ticket API hosts are the deployment's own: no default, `sam deploy --guided` asks.
    let sink_hosts = template_parameter(&template, "TicketApiHosts");
    assert!(
        !sink_hosts.contains("Default:"),
        "TicketApiHosts must have no default:\n{sink_hosts}"
    );
    // The IMAP default is the code's default: Microsoft's hosts, sovereign clouds included.
    let imap_hosts = template_parameter(&template, "ImapHosts");
    let default = imap_hosts
        .lines()
        .find_map(|l| l.trim().strip_prefix("Default: "))
        .expect("ImapHosts has a default");
    assert_eq!(default.split(',').collect::<Vec<_>>(), MICROSOFT_IMAP_HOSTS);
}

#[test]
fn secret_prefixes_must_end_with_a_slash() {
    // `prefix*` in IAM also matches unrelated longer names (`mailbridge*` matches
    // `mailbridge-ticket-api/...`), so a prefix is a folder.
    let template = repo_file("template.yaml");
    for name in ["SecretPrefix", "SinkSecretPrefix"] {
        let parameter = template_parameter(&template, name);
        let pattern = parameter
            .lines()
            .find_map(|l| l.trim().strip_prefix("AllowedPattern: "))
            .unwrap_or_else(|| panic!("{name} has no AllowedPattern"))
            .trim_matches('"')
            .to_string();
        assert!(
            pattern.starts_with('^') && pattern.ends_with("/$"),
            "{name} may be a prefix without a closing `/`: {pattern}"
        );
    }
}

#[test]
fn the_queues_take_an_optional_kms_key_that_every_reader_and_writer_may_use() {
    // Parked notifications keep bodies and attachments in the DLQ for 14 days: a customer managed
    // key lets an account decide (and log) who may read them.
    let template = repo_file("template.yaml");
    let key = template_parameter(&template, "QueueKmsKeyArn");
    assert!(key.contains("Default: \"\""), "opt-in:\n{key}");
    for queue in [
        "NotificationQueue",
        "NotificationDeadLetterQueue",
        "PollDeadLetterQueue",
    ] {
        let section = template_resource(&template, queue);
        for needle in [
            "KmsMasterKeyId: !If [HasQueueKmsKey, !Ref QueueKmsKeyArn, !Ref AWS::NoValue]",
            "SqsManagedSseEnabled: !If [HasQueueKmsKey, !Ref AWS::NoValue, true]",
            "MessageRetentionPeriod: 1209600",
        ] {
            assert!(section.contains(needle), "{queue} lacks `{needle}`");
        }
    }
    // Who sends to or receives from a queue needs the key: the sender (receives, parks), the
    // poller and the scheduler (poll DLQ), the sendmail host (enqueues). Only when a key is given.
    let kms_statement = |resource: &str, statements: Vec<(String, String)>, actions: &[&str]| {
        let section = template_resource(&template, resource);
        let (sid, body) = statements
            .iter()
            .find(|(_, body)| body.contains("Resource: !Ref QueueKmsKeyArn"))
            .unwrap_or_else(|| panic!("{resource} may not use the queue key"));
        for action in actions {
            assert!(body.contains(action), "{resource} {sid} lacks {action}");
        }
        let lines: Vec<&str> = section.lines().map(str::trim).collect();
        let at = lines
            .iter()
            .position(|l| *l == format!("- Sid: {sid}"))
            .unwrap();
        assert_eq!(
            lines[at - 1],
            "- HasQueueKmsKey",
            "{resource} {sid} must exist only when QueueKmsKeyArn is set"
        );
    };
    let both = ["kms:GenerateDataKey", "kms:Decrypt"];
    kms_statement(
        "SendNotificationsRole",
        role_statements(&template, "SendNotificationsRole"),
        &both,
    );
    for role in ["PollMailboxesRole", "PollScheduleRole"] {
        kms_statement(
            role,
            role_statements(&template, role),
            &["kms:GenerateDataKey"],
        );
    }
    kms_statement(
        "SendmailHostPolicy",
        document_statements(&template, "SendmailHostPolicy"),
        &["kms:GenerateDataKey"],
    );
    let security = repo_file("SECURITY.md");
    assert!(
        security.contains("QueueKmsKeyArn"),
        "SECURITY.md must say how to encrypt the queues with a key of your own"
    );
}

#[test]
fn the_mail_parked_alarm_says_what_to_do_for_every_reason_a_mail_is_parked() {
    let template = repo_file("template.yaml");
    let alarm = template_resource(&template, "MailParkedAlarm");
    let description: String = alarm
        .lines()
        .skip_while(|l| !l.contains("AlarmDescription: >-"))
        .skip(1)
        .take_while(|l| l.starts_with("        "))
        .map(str::trim)
        .collect::<Vec<_>>()
        .join(" ");
    let poller = repo_folder_sources("functions/poll-mailboxes/src/poll");
    let operations = repo_file("docs/operations.md");
    // The start of each log line that goes with a parked mail (MailParked counts them).
    for reason in [
        "the helpdesk rejected the mail",
        "a run ended while reading this mail",
        "mail could not be fully read",
    ] {
        assert!(
            poller.contains(&format!("\"{reason}")),
            "the poller (functions/poll-mailboxes/src/poll/) no longer logs {reason:?}: update the alarm and this test"
        );
        assert!(
            description.contains(reason),
            "MailParkedAlarm does not name {reason:?}:\n{description}"
        );
        assert!(
            operations.contains(reason),
            "docs/operations.md does not name {reason:?}"
        );
    }
    for step in ["move the mail back", "PollMemorySize", "NO ticket made"] {
        assert!(description.contains(step), "{step:?}:\n{description}");
    }
}

#[test]
fn a_secret_a_function_may_not_write_it_may_not_restage_either() {
    // The refresh-token write-back is conditional (a new version staged, then AWSCURRENT moved
    // from the version read), so it needs UpdateSecretVersionStage where it may write; where
    // writes are denied, moving AWSCURRENT (back to an older key or credential) is denied too.
    let template = repo_file("template.yaml");
    for role in ["SendNotificationsRole", "PollMailboxesRole"] {
        let statements = role_statements(&template, role);
        for effect in ["Allow", "Deny"] {
            let writes = statements_with(&statements, effect, "secretsmanager:PutSecretValue");
            assert!(!writes.is_empty(), "{role}: no {effect} of writes");
            for (sid, body) in writes {
                assert!(
                    body.contains("secretsmanager:UpdateSecretVersionStage"),
                    "{role} {sid}: {effect} PutSecretValue without UpdateSecretVersionStage"
                );
            }
        }
        for (sid, body) in statements_with(&statements, "Allow", "UpdateSecretVersionStage") {
            assert!(
                body.contains("${SecretPrefix}*") && !body.contains("SinkSecretPrefix"),
                "{role} {sid}: only account grants are written back"
            );
        }
    }
}

/// An app-only certificate or client secret reaches a person 14 days before its end date: the
/// alarm reads the smallest days-left of the metric the token layer's EMF line carries, at the
/// token layer's own warning threshold; no app-only account (no data) is no alarm.
#[test]
fn the_app_credential_alarm_fires_when_the_token_layer_starts_warning() {
    use mailbridge::token::expiry::{CredentialExpiry, METRIC, WARN_DAYS, emf_line};
    let template = repo_file("template.yaml");
    let alarm = template_resource(&template, "AppCredentialExpiringAlarm");
    assert_eq!(
        yaml_value(&alarm, "Expression"),
        format!(
            "SELECT MIN({METRIC}) FROM {}",
            mailbridge::telemetry::METRICS_NAMESPACE
        )
    );
    assert_eq!(yaml_value(&alarm, "Threshold"), WARN_DAYS.to_string());
    assert_eq!(
        yaml_value(&alarm, "ComparisonOperator"),
        "LessThanOrEqualToThreshold"
    );
    assert_eq!(yaml_value(&alarm, "TreatMissingData"), "notBreaching");
    assert!(alarm.contains("AlarmActions: !If [HasAlarmTopic"));

    let now = chrono::Utc::now();
    let line = emf_line(
        "poll-mailboxes",
        &[CredentialExpiry {
            account: "mailbridge/app".into(),
            credential: "client secret".into(),
            expires_at: now + chrono::Duration::days(WARN_DAYS),
        }],
        now,
    )
    .expect("an EMF line for an app-only account");
    let line: serde_json::Value = serde_json::from_str(&line).unwrap();
    let directive = &line["_aws"]["CloudWatchMetrics"][0];
    assert_eq!(
        directive["Namespace"],
        mailbridge::telemetry::METRICS_NAMESPACE
    );
    assert_eq!(directive["Metrics"][0]["Name"], METRIC);
    assert_eq!(line[METRIC], WARN_DAYS, "{line}");
}
