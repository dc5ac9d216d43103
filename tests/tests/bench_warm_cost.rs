//! Benchmark (ignored by default; prints numbers, never asserts timings): the warm invocation
//! cost of the real `bootstrap` binaries under the Lambda Runtime API emulator, with every
//! stand-in at zero latency.
//!
//! ```sh
//! cargo test -p mailbridge-tests --test bench_warm_cost -- --ignored --nocapture
//! MAILBRIDGE_BENCH_BINS=DIR cargo test ...   # use already-built bootstraps (e.g. release)
//! ```
//!
//! Per invocation it records the CPU time the bootstrap process used (user + system, all
//! threads, from `/proc/<pid>/task/*/schedstat`), the wall time, the AWS calls it made per
//! operation (the function's `AWS_ENDPOINT_URL` is a counting proxy in front of moto) and the
//! token-endpoint requests (counted by the identity stand-in). `bench:` lines are the results.

use std::path::PathBuf;
use std::time::Duration;

use local_stack::aws_calls::{AwsCallCounter, CallCounts, summarize};
use local_stack::identity::{AppRegistration, UserAccount};
use local_stack::runtime_api::{FunctionConfig, InvocationOutcome, RuntimeApi, workspace_binary};
use mailbridge::token::AccountSecret;
use mailbridge_tests::{
    create_queue_with_dlq, create_state_table, dynamodb, put_secret, sqs, stack, unique,
    unique_user,
};
use serde_json::{Value, json};

const PASSWORD: &str = "correct horse battery staple";
const RUNS: usize = 7;

/// `$MAILBRIDGE_BENCH_BINS/<name>` when set, else the workspace build of `<name>`.
async fn bootstrap(name: &'static str) -> PathBuf {
    if let Some(dir) = std::env::var_os("MAILBRIDGE_BENCH_BINS") {
        return PathBuf::from(dir).join(name);
    }
    tokio::task::spawn_blocking(move || workspace_binary(name, name))
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("build {name}: {e:#}"))
}

/// The moto environment with the endpoint replaced by the counting proxy.
fn aws_env(counter: &AwsCallCounter) -> Vec<(String, String)> {
    stack()
        .moto()
        .env()
        .into_iter()
        .map(|(k, v)| {
            if k == "AWS_ENDPOINT_URL" {
                (k, counter.endpoint_url.clone())
            } else {
                (k, v)
            }
        })
        .collect()
}

/// One measured invocation.
struct Sample {
    cpu_ms: f64,
    wall_ms: f64,
    calls: CallCounts,
    token_requests: usize,
    log_bytes: u64,
    response: Value,
}

/// Print the `bench:` line of a cold start: init (wall and CPU) and the first invocation.
fn report_cold_start(
    function: &str,
    first: &str,
    init: Duration,
    init_cpu: Duration,
    cold: &Sample,
) {
    println!(
        "bench: {function} cold start: init {:.1} ms (CPU {:.1} ms); {first} CPU {:.1} ms, wall {:.1} ms, AWS calls: {}, token requests: {}",
        init.as_secs_f64() * 1e3,
        init_cpu.as_secs_f64() * 1e3,
        cold.cpu_ms,
        cold.wall_ms,
        summarize(&cold.calls),
        cold.token_requests
    );
}

fn log_size(api: &RuntimeApi) -> u64 {
    api.log_path()
        .and_then(|p| std::fs::metadata(p).ok())
        .map(|m| m.len())
        .unwrap_or(0)
}

async fn measured(
    api: &RuntimeApi,
    counter: &AwsCallCounter,
    token_count: impl Fn() -> usize,
    event: Value,
) -> Sample {
    let cpu_before = api.function_cpu_time().expect("bootstrap running");
    let calls_before = counter.counts();
    let tokens_before = token_count();
    let log_before = log_size(api);
    let outcome: InvocationOutcome = api
        .invoke(event, Duration::from_secs(120))
        .await
        .expect("invoke");
    let cpu_after = api.function_cpu_time().expect("bootstrap running");
    let wall_ms = outcome.duration.as_secs_f64() * 1e3;
    let response = outcome
        .into_response()
        .unwrap_or_else(|e| panic!("{e:#}\n{}", api.logs()));
    Sample {
        cpu_ms: (cpu_after - cpu_before).as_secs_f64() * 1e3,
        wall_ms,
        calls: counter.since(&calls_before),
        token_requests: token_count() - tokens_before,
        log_bytes: log_size(api) - log_before,
        response,
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    let n = values.len();
    if n.is_multiple_of(2) {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    } else {
        values[n / 2]
    }
}

fn report(label: &str, samples: &[Sample], items: usize) {
    let cpu = median(samples.iter().map(|s| s.cpu_ms).collect());
    let wall = median(samples.iter().map(|s| s.wall_ms).collect());
    let mut calls = CallCounts::new();
    for s in samples {
        for (op, n) in &s.calls {
            *calls.entry(op.clone()).or_default() += n;
        }
    }
    let per_run: CallCounts = calls
        .into_iter()
        .map(|(op, n)| (op, n / samples.len() as u64))
        .collect();
    let tokens: usize = samples.iter().map(|s| s.token_requests).sum();
    let log_bytes = median(samples.iter().map(|s| s.log_bytes as f64).collect());
    println!(
        "bench: {label}: {} runs; CPU median {cpu:.2} ms per invocation = {:.3} ms per item ({items} items); wall median {wall:.1} ms; AWS calls per invocation: {}; token requests in all runs: {tokens}; log output {log_bytes:.0} bytes per invocation",
        samples.len(),
        cpu / items.max(1) as f64,
        summarize(&per_run),
    );
}

fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------------------------
// send-notifications

struct SendWorld {
    upn: String,
    account: String,
    queue_url: String,
    queue_arn: String,
    dlq_url: String,
    table: String,
    thread_key_secret: String,
}

impl SendWorld {
    async fn new() -> SendWorld {
        let mailbridge_tests::PasswordAccount {
            upn,
            secret_name: account,
            ..
        } = mailbridge_tests::new_password_account("bench-sender", PASSWORD)
            .await
            .unwrap();
        let thread_key_secret = unique("mailbridge/thread-key");
        put_secret(&thread_key_secret, "mailbridge-bench-thread-key-32by")
            .await
            .unwrap();
        let (queue_url, dlq_url) = create_queue_with_dlq(&unique("bench-notify"), 5)
            .await
            .unwrap();
        let queue_arn = mailbridge_tests::queue_arn(&queue_url).await.unwrap();
        let table = create_state_table("bench-state").await.unwrap();
        SendWorld {
            upn,
            account,
            queue_url,
            queue_arn,
            dlq_url,
            table,
            thread_key_secret,
        }
    }

    /// Enqueue `n` notifications, receive them back and build the Lambda event.
    async fn event(&self, n: usize) -> Value {
        for i in 0..n {
            let body = json!({
                "version": 1,
                "account": self.account,
                "to": [{"address": "customer@example.com", "name": "A Customer"}],
                "subject": format!("Ticket update {i}"),
                "body": {"content_type": "text", "content": "Your ticket was updated.\n\nRegards, the helpdesk"},
                "ticket_number": format!("{}", 4700 + i),
            });
            sqs()
                .send_message()
                .queue_url(&self.queue_url)
                .message_body(body.to_string())
                .send()
                .await
                .unwrap();
        }
        let event = mailbridge_tests::receive_sqs_event(&self.queue_url, &self.queue_arn, n).await;
        serde_json::to_value(&event).unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run explicitly (see BENCHMARKS.md)"]
async fn bench_warm_cost_send_notifications() {
    let binary = bootstrap("send-notifications").await;
    let w = SendWorld::new().await;
    let graph = stack().graph().clone();
    graph.set_latency(&w.upn, Duration::ZERO);
    let idp = stack().identity().clone();
    let counter = AwsCallCounter::start(&stack().moto().endpoint_url)
        .await
        .unwrap();
    let mut env = aws_env(&counter);
    env.extend([
        ("MAILBRIDGE_STATE_TABLE".to_owned(), w.table.clone()),
        ("MAILBRIDGE_DLQ_URL".to_owned(), w.dlq_url.clone()),
        (
            "MAILBRIDGE_THREAD_KEY_SECRET".to_owned(),
            w.thread_key_secret.clone(),
        ),
        ("MAILBRIDGE_GRAPH_URL".to_owned(), graph.v1_url()),
        (
            "MAILBRIDGE_ALLOW_LOCAL_TARGETS".to_owned(),
            "true".to_owned(),
        ),
        ("RUST_LOG".to_owned(), "info".to_owned()),
    ]);
    let api = RuntimeApi::start().await.unwrap();
    api.spawn_function(&FunctionConfig::new("send-notifications", &binary).with_env(env))
        .unwrap();
    let init = api.wait_for_init(Duration::from_secs(30)).await.unwrap();
    let init_cpu = api.function_cpu_time().unwrap();
    let upn = w.upn.clone();
    let tokens = || idp.token_request_count(&upn);
    println!(
        "bench: send-notifications binary {} ({:.1} MiB); load average {}",
        binary.display(),
        std::fs::metadata(&binary).unwrap().len() as f64 / 1_048_576.0,
        load()
    );
    let event = w.event(1).await;
    let cold = measured(&api, &counter, &tokens, event).await;
    assert_eq!(
        cold.response["batchItemFailures"],
        json!([]),
        "{}",
        api.logs()
    );
    report_cold_start(
        "send-notifications",
        "first invocation (1 notification)",
        init,
        init_cpu,
        &cold,
    );
    for n in [1usize, 10] {
        let mut samples = Vec::new();
        for _ in 0..RUNS {
            let event = w.event(n).await;
            let sample = measured(&api, &counter, &tokens, event).await;
            assert_eq!(
                sample.response["batchItemFailures"],
                json!([]),
                "{}",
                api.logs()
            );
            samples.push(sample);
        }
        report(
            &format!("send-notifications warm, batch of {n}"),
            &samples,
            n,
        );
    }
    let sent = graph.accepted(&w.upn).len();
    assert_eq!(sent, 1 + RUNS * 11, "every notification sent once");
    let (rss, hwm) = api.function_memory_kib().unwrap();
    println!(
        "bench: send-notifications memory after the runs: RSS {:.1} MiB, peak {:.1} MiB; load average {}",
        rss as f64 / 1024.0,
        hwm as f64 / 1024.0,
        load()
    );
    api.shutdown();
}

// ---------------------------------------------------------------------------------------------
// poll-mailboxes

fn mail(id: &str, subject: &str) -> Vec<u8> {
    mailbridge_tests::mail::customer_mail(
        id,
        subject,
        "Hello helpdesk,\r\n\r\nthe printer on the second floor shows error 0x80070005 \
         again since this morning. Could you have a look?\r\n\r\nThanks,\r\nAnn",
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run explicitly (see BENCHMARKS.md)"]
async fn bench_warm_cost_poll_mailboxes() {
    let binary = bootstrap("poll-mailboxes").await;
    let idp = stack().identity().clone();
    let dovecot = stack().dovecot().clone();
    let tickets = stack().tickets();
    let tenant = format!("{}.onmicrosoft.com", unique("tenant"));
    let client_id = uuid::Uuid::new_v4().to_string();
    idp.register_app(AppRegistration::mailbridge(&tenant, &client_id));
    let table = create_state_table("bench-poll").await.unwrap();
    let sink = unique("bench-sink");
    let thread_key_secret = unique("thread-key");
    put_secret(&thread_key_secret, "0123456789abcdef0123456789abcdef")
        .await
        .unwrap();
    // mailboxes: one account (user) each, like separate helpdesk mailboxes
    let mut users = Vec::new();
    let add_mailbox = |n: usize| {
        let idp = idp.clone();
        let tenant = tenant.clone();
        let client_id = client_id.clone();
        let table = table.clone();
        let sink_url = tickets.sink_url(&sink);
        let port = dovecot.imaps_port;
        async move {
            let user = unique_user(&format!("bench-poll{n}"));
            idp.register_user(UserAccount::new(&tenant, &user, PASSWORD));
            let account = unique("acct");
            let mut secret = AccountSecret::new(&tenant, &client_id, &user);
            secret.authority_host = idp.base_url.clone();
            secret.password = Some(PASSWORD.into());
            put_secret(&format!("mailbridge/{account}"), &secret.to_json())
                .await
                .unwrap();
            let fields = json!({
                "user": user,
                "account": account,
                "host": "localhost",
                "port": port,
                "ticket_api_url": sink_url,
            });
            mailbridge::state_table::put_mailbox_config(
                &dynamodb(),
                &table,
                &format!("bench{n}"),
                &fields,
                &mailbridge::mailbox::TargetPolicy::local(),
            )
            .await
            .unwrap();
            user
        }
    };
    users.push(add_mailbox(0).await);
    let counter = AwsCallCounter::start(&stack().moto().endpoint_url)
        .await
        .unwrap();
    let mut env = aws_env(&counter);
    env.extend([
        ("MAILBRIDGE_STATE_TABLE".to_owned(), table.clone()),
        (
            "MAILBRIDGE_ALLOW_LOCAL_TARGETS".to_owned(),
            "true".to_owned(),
        ),
        ("MAILBRIDGE_THREAD_KEY_SECRET".to_owned(), thread_key_secret),
        (
            "MAILBRIDGE_SECRET_PREFIX".to_owned(),
            "mailbridge/".to_owned(),
        ),
        (
            "MAILBRIDGE_IMAP_CA_FILE".to_owned(),
            dovecot.ca_pem_path.display().to_string(),
        ),
        ("RUST_LOG".to_owned(), "info".to_owned()),
    ]);
    let api = RuntimeApi::start().await.unwrap();
    api.spawn_function(&FunctionConfig::new("poll-mailboxes", &binary).with_env(env))
        .unwrap();
    let init = api.wait_for_init(Duration::from_secs(30)).await.unwrap();
    let init_cpu = api.function_cpu_time().unwrap();
    let schedule: Value = serde_json::from_str(
        &std::fs::read_to_string(local_stack::repo_root().join("infra/events/poll-schedule.json"))
            .unwrap(),
    )
    .unwrap();
    let all_tokens = {
        let idp = idp.clone();
        let users = std::sync::Arc::new(std::sync::Mutex::new(users.clone()));
        let users_for_count = users.clone();
        (
            move || {
                users_for_count
                    .lock()
                    .unwrap()
                    .iter()
                    .map(|u| idp.token_request_count(u))
                    .sum::<usize>()
            },
            users,
        )
    };
    let (tokens, token_users) = all_tokens;
    println!(
        "bench: poll-mailboxes binary {} ({:.1} MiB); load average {}",
        binary.display(),
        std::fs::metadata(&binary).unwrap().len() as f64 / 1_048_576.0,
        load()
    );
    let cold = measured(&api, &counter, &tokens, schedule.clone()).await;
    report_cold_start(
        "poll-mailboxes",
        "first run (1 mailbox, no mail)",
        init,
        init_cpu,
        &cold,
    );

    // idle runs: one mailbox, nothing new
    let mut idle = Vec::new();
    for _ in 0..RUNS {
        idle.push(measured(&api, &counter, &tokens, schedule.clone()).await);
    }
    report("poll-mailboxes warm idle run, 1 mailbox", &idle, 1);

    // runs with new mail
    const MAILS: usize = 20;
    let mut busy = Vec::new();
    for run in 0..3 {
        for i in 0..MAILS {
            dovecot
                .deliver_to(
                    &users[0],
                    "INBOX",
                    &mail(&format!("bench-{run}-{i}"), &format!("Printer {run}/{i}")),
                )
                .unwrap();
        }
        let sample = measured(&api, &counter, &tokens, schedule.clone()).await;
        assert_eq!(
            sample.response["tickets_created"], MAILS,
            "{}",
            sample.response
        );
        busy.push(sample);
    }
    report(
        &format!("poll-mailboxes warm run with {MAILS} new mails, 1 mailbox"),
        &busy,
        MAILS,
    );
    let idle_cpu = median(idle.iter().map(|s| s.cpu_ms).collect());
    let busy_cpu = median(busy.iter().map(|s| s.cpu_ms).collect());
    println!(
        "bench: poll-mailboxes CPU per polled mail (run with mail minus idle run, / {MAILS}): {:.3} ms",
        (busy_cpu - idle_cpu) / MAILS as f64
    );

    // idle runs over 10 mailboxes: what each mailbox costs per run when nothing is new
    for n in 1..10 {
        let user = add_mailbox(n).await;
        token_users.lock().unwrap().push(user.clone());
        users.push(user);
    }
    // first run over the new mailboxes logs them in (token requests); then measure
    measured(&api, &counter, &tokens, schedule.clone()).await;
    let mut idle10 = Vec::new();
    for _ in 0..RUNS {
        idle10.push(measured(&api, &counter, &tokens, schedule.clone()).await);
    }
    report("poll-mailboxes warm idle run, 10 mailboxes", &idle10, 10);
    let (rss, hwm) = api.function_memory_kib().unwrap();
    println!(
        "bench: poll-mailboxes memory after the runs: RSS {:.1} MiB, peak {:.1} MiB; load average {}",
        rss as f64 / 1024.0,
        hwm as f64 / 1024.0,
        load()
    );
    api.shutdown();
}
