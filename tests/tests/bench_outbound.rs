//! Outbound benchmarks (ignored: they print numbers, they assert nothing about time). Run with
//! `bash infra/scripts/bench.sh outbound`, or:
//!
//! ```sh
//! cargo test --profile bench -p mailbridge-tests --test bench_outbound -- --ignored --nocapture --test-threads 1
//! ```
//!
//! - `bench_sendmail_entry_latency`: wall time of `mailbridge sendmail -oi -t` as a helpdesk runs
//!   it (a new process per mail, the message on stdin) until it exits 0, which it does once SQS
//!   (moto on 127.0.0.1) accepted the queue message: p50 / p95 / max over 40 runs after 3 warm-ups.
//! - `bench_send_notifications_cpu_mime_vs_json`: CPU time of send-notifications' batch logic per
//!   notification, MIME vs JSON kind, for the same reply (a 4 KB text, and with a 200 KiB
//!   attachment), in batches of 10: parse, validate, claim, stamp the thread marker, build and
//!   serialise the Graph request (JSON body, or the base64 MIME body), complete the record. The
//!   ports are in memory (no network), so this is the handler's own CPU, measured on the one
//!   thread of a current-thread runtime (`/proc/thread-self/schedstat`).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use aws_lambda_events::event::sqs::{SqsEvent, SqsMessage};
use base64::Engine as _;
use mailbridge::graph::{GraphError, MailSender, OutgoingMail, OutgoingMime, SendReceipt};
use mailbridge::thread_key::ThreadKey;
use mailbridge::token::{AccessToken, AccessTokenSource, Audience, TokenError};
use send_notifications::ports::{ParkError, ParkReason, Parking, Visibility, VisibilityError};
use send_notifications::settings::BatchSettings;
use send_notifications::{Deps, process_batch};
use serde_json::json;

fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// An RT-style reply of about `text_bytes` of text, plus an attachment of `attachment_bytes`.
fn rt_reply(from: &str, to: &str, n: usize, text_bytes: usize, attachment_bytes: usize) -> String {
    let text: String = "Please update the VPN client to 7.2 and restart. "
        .chars()
        .cycle()
        .take(text_bytes)
        .collect::<String>()
        .as_bytes()
        .chunks(72)
        .map(|l| format!("{}\n", String::from_utf8_lossy(l)))
        .collect();
    let head = format!(
        "From: Support <{from}>\nTo: <{to}>\nSubject: [support.example #{n}] VPN drops every hour\n\
         Message-ID: <rt-5.0.3-{n}-bench@support.example>\nIn-Reply-To: <cust-{n}@example.com>\n\
         References: <cust-{n}@example.com>\nDate: Sun, 06 Dec 2026 10:00:00 +0000\n\
         Precedence: bulk\nRT-Ticket: support.example #{n}\nMIME-Version: 1.0\n"
    );
    if attachment_bytes == 0 {
        return format!(
            "{head}Content-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: 8bit\n\n{text}"
        );
    }
    let data: Vec<u8> = (0..attachment_bytes).map(|i| (i % 251) as u8).collect();
    let b64 = base64::engine::general_purpose::STANDARD.encode(data);
    let wrapped: String = b64
        .as_bytes()
        .chunks(76)
        .map(|l| format!("{}\n", std::str::from_utf8(l).unwrap()))
        .collect();
    format!(
        "{head}Content-Type: multipart/mixed; boundary=\"b\"\n\n--b\nContent-Type: text/plain; charset=utf-8\n\n{text}--b\n\
         Content-Type: application/octet-stream; name=log.bin\nContent-Transfer-Encoding: base64\n\n{wrapped}--b--\n"
    )
}

// ---- send-notifications with in-memory ports ----

struct StaticTokens;

#[async_trait]
impl AccessTokenSource for StaticTokens {
    async fn access_token(&self, _: &str, audience: Audience) -> Result<AccessToken, TokenError> {
        Ok(AccessToken::new(
            "bench-token".to_string().into(),
            chrono::Utc::now() + chrono::Duration::hours(1),
            audience,
        ))
    }
    fn invalidate(&self, _: &str, _: Audience) {}
}

/// Serialises each request as the real client does, then answers 202.
#[derive(Default)]
struct SerialisingSender {
    bytes: AtomicUsize,
}

#[async_trait]
impl MailSender for SerialisingSender {
    async fn send_mail(
        &self,
        _: &AccessToken,
        mail: &OutgoingMail,
        _: Duration,
    ) -> Result<SendReceipt, GraphError> {
        let body = serde_json::to_vec(&mail.request).expect("serialise");
        self.bytes.fetch_add(body.len(), Ordering::Relaxed);
        Ok(SendReceipt::default())
    }
    async fn send_mime(
        &self,
        _: &AccessToken,
        mail: &OutgoingMime,
        _: Duration,
    ) -> Result<SendReceipt, GraphError> {
        self.bytes
            .fetch_add(mail.request_body().len(), Ordering::Relaxed);
        Ok(SendReceipt::default())
    }
    async fn send_draft(
        &self,
        _: &AccessToken,
        _: &mailbridge::graph_draft::DraftMail,
        _: tokio::time::Instant,
    ) -> Result<SendReceipt, mailbridge::graph_draft::DraftFailure> {
        panic!("the benchmark's messages fit one request");
    }
}

struct NoParking;

#[async_trait]
impl Parking for NoParking {
    async fn park(&self, _: &str, reason: &ParkReason) -> Result<(), ParkError> {
        panic!("a benchmark notification was parked: {reason:?}");
    }
}

struct NoDelay;

#[async_trait]
impl Visibility for NoDelay {
    async fn delay(&self, _: &str, _: &str, _: i32) -> Result<(), VisibilityError> {
        Ok(())
    }
}

/// CPU nanoseconds this thread has run (Linux `schedstat`).
fn thread_cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/thread-self/schedstat").expect("schedstat");
    Duration::from_nanos(stat.split_whitespace().next().unwrap().parse().unwrap())
}

fn batch(bodies: &[String], round: usize) -> SqsEvent {
    let mut event = SqsEvent::default();
    event.records = bodies
        .iter()
        .enumerate()
        .map(|(i, body)| {
            let mut m = SqsMessage::default();
            m.message_id = Some(format!("m-{round}-{i}"));
            m.receipt_handle = Some(format!("r-{round}-{i}"));
            m.body = Some(body.replace("{ID}", &format!("{round}-{i}")));
            m.event_source_arn = Some("arn:aws:sqs:us-east-1:123456789012:notify".into());
            m
        })
        .collect();
    event
}

/// CPU per notification over `rounds` batches of 10 of `body` (with `{ID}` made unique).
fn cpu_per_notification(body: &str, rounds: usize) -> Duration {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let deps = Deps {
        tokens: Arc::new(StaticTokens),
        mail: Arc::new(SerialisingSender::default()),
        idempotency: Arc::new(mailbridge::state_table::InMemoryIdempotencyStore::default()),
        messages: Arc::new(mailbridge::message_store::InMemoryMessageStore::default()),
        parking: Arc::new(NoParking),
        visibility: Arc::new(NoDelay),
        thread_key: ThreadKey::from_secret_value("bench-thread-key-0123456789abcdef").unwrap(),
        settings: BatchSettings::default(),
    };
    let bodies = vec![body.to_owned(); 10];
    runtime.block_on(async {
        // warm-up
        for round in 0..3 {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
            let report = process_batch(batch(&bodies, round), deadline, &deps).await;
            assert_eq!(report.metrics.sent, 10, "{:?}", report.messages);
        }
        let start = thread_cpu();
        for round in 3..3 + rounds {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
            let report = process_batch(batch(&bodies, round), deadline, &deps).await;
            assert_eq!(report.metrics.sent, 10);
        }
        (thread_cpu() - start) / (rounds as u32 * 10)
    })
}

#[test]
#[ignore = "benchmark: prints numbers"]
fn bench_send_notifications_cpu_mime_vs_json() {
    let from = "support@contoso.example";
    let to = "customer@example.com";
    println!(
        "bench: send-notifications CPU per notification (batches of 10, in-memory ports), load {}",
        load()
    );
    for (label, attachment) in [
        ("4 KB text", 0usize),
        ("4 KB text + 200 KiB attachment", 200 * 1024),
    ] {
        let raw = rt_reply(from, to, 4711, 4096, attachment);
        let mime = json!({
            "version": 1, "kind": "mime", "id": "mime-{ID}", "account": "mailbridge/bench",
            "from": from, "ticket_number": "4711",
            "raw_base64": base64::engine::general_purpose::STANDARD.encode(&raw),
        })
        .to_string();
        let text = raw.split_once("\n\n").map(|(_, b)| b).unwrap_or_default();
        let text = text.split("--b").nth(1).map_or(text, |part| {
            part.split_once("\n\n").map_or(part, |(_, b)| b)
        });
        let mut json_n = json!({
            "version": 1, "id": "json-{ID}", "account": "mailbridge/bench", "from": from,
            "to": [{"address": to}], "subject": "VPN drops every hour", "ticket_number": "4711",
            "body": {"content_type": "text", "content": text},
        });
        if attachment > 0 {
            let data: Vec<u8> = (0..attachment).map(|i| (i % 251) as u8).collect();
            json_n["attachments"] = json!([{
                "name": "log.bin", "content_type": "application/octet-stream",
                "content_base64": base64::engine::general_purpose::STANDARD.encode(data),
            }]);
        }
        let json_n = json_n.to_string();
        let rounds = if attachment > 0 { 40 } else { 200 };
        // interleaved, three times each, so load changes hit both kinds alike
        let mut mime_cpu = Vec::new();
        let mut json_cpu = Vec::new();
        for _ in 0..3 {
            mime_cpu.push(cpu_per_notification(&mime, rounds));
            json_cpu.push(cpu_per_notification(&json_n, rounds));
        }
        mime_cpu.sort();
        json_cpu.sort();
        println!(
            "bench: {label}: MIME {:.1} µs, JSON {:.1} µs per notification (median of 3 × {} notifications; min {:.1} / {:.1} µs)",
            mime_cpu[1].as_secs_f64() * 1e6,
            json_cpu[1].as_secs_f64() * 1e6,
            rounds * 10,
            mime_cpu[0].as_secs_f64() * 1e6,
            json_cpu[0].as_secs_f64() * 1e6,
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: prints numbers"]
async fn bench_sendmail_entry_latency() {
    let stack = mailbridge_tests::stack();
    let binary = mailbridge_tests::cli::binary();
    let queue_url = mailbridge_tests::create_queue(&mailbridge_tests::unique("bench-sendmail"))
        .await
        .unwrap();
    let raw = rt_reply(
        "support@contoso.example",
        "customer@example.com",
        4711,
        4096,
        0,
    );
    let mut samples = Vec::new();
    for i in 0..43 {
        let started = Instant::now();
        let mut child = tokio::process::Command::new(&binary)
            .args(["sendmail", "-oi", "-t"])
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(stack.moto().env())
            .env("MAILBRIDGE_QUEUE_URL", &queue_url)
            .env("MAILBRIDGE_ACCOUNT", "mailbridge/bench")
            .env("MAILBRIDGE_SENDMAIL_CONFIG", "/dev/null")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn sendmail");
        // each run a new Message-ID, so each is a new queue message
        let message = raw.replace("-bench@", &format!("-bench{i}@"));
        {
            use tokio::io::AsyncWriteExt as _;
            let mut stdin = child.stdin.take().unwrap();
            stdin.write_all(message.as_bytes()).await.unwrap();
        }
        let out = child.wait_with_output().await.unwrap();
        let took = started.elapsed();
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        if i >= 3 {
            samples.push(took);
        }
    }
    samples.sort();
    println!(
        "bench: mailbridge sendmail entry latency (4 KB RT reply, spawn → exit 0 = SQS accepted, moto on 127.0.0.1; {}): p50 {:.1} ms, p95 {:.1} ms, max {:.1} ms over {} runs, load {}",
        binary.display(),
        percentile(&samples, 0.5).as_secs_f64() * 1e3,
        percentile(&samples, 0.95).as_secs_f64() * 1e3,
        samples.last().unwrap().as_secs_f64() * 1e3,
        samples.len(),
        load()
    );
}
