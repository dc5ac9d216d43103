//! A mailbox of generated helpdesk-like mails polled by the real bootstrap under the Lambda
//! Runtime API emulator, measured: wall time, peak RSS, CPU, round trips. The poller's memory
//! checks (tests/tests/poll_mailboxes/memory_bound.rs) and its benchmark (tests/tests/bench_poll.rs)
//! run it.

use std::sync::Arc;
use std::time::Duration;

use local_stack::identity::AppRegistration;

use crate::poller::Poller;
use crate::{stack, unique_user};

/// Deterministic pseudo-random numbers for the benchmark's mail generator (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn range(&mut self, low: usize, high: usize) -> usize {
        low + (self.next() as usize) % (high - low)
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(n + 8);
        while out.len() < n {
            out.extend_from_slice(&self.next().to_le_bytes());
        }
        out.truncate(n);
        out
    }
}

fn base64_lines(data: &[u8]) -> String {
    use base64::Engine as _;
    let encoded = base64::engine::general_purpose::STANDARD.encode(data);
    let mut out = String::with_capacity(encoded.len() + encoded.len() / 76 * 2 + 2);
    for chunk in encoded.as_bytes().chunks(76) {
        out.push_str(std::str::from_utf8(chunk).unwrap());
        out.push_str("\r\n");
    }
    out
}

const WORDS: &[&str] = &[
    "printer",
    "server",
    "invoice",
    "password",
    "reset",
    "outlook",
    "cannot",
    "login",
    "error",
    "urgent",
    "please",
    "thanks",
    "the",
    "a",
    "is",
    "not",
    "working",
    "since",
    "yesterday",
    "morning",
    "attached",
    "screenshot",
    "VPN",
    "disk",
    "backup",
    "failed",
    "ticket",
    "user",
];

/// A helpdesk-like mail: text + HTML alternative; some with a PDF/PNG attachment.
fn realistic_mail(rng: &mut Rng, i: usize, to: &str, attachment: Option<usize>) -> Vec<u8> {
    let words = rng.range(60, 1200);
    let mut text = String::new();
    for w in 0..words {
        text.push_str(WORDS[rng.range(0, WORDS.len())]);
        text.push(if w % 14 == 13 { '\n' } else { ' ' });
    }
    let html = format!(
        "<html><body><p>{}</p><p>Regards,<br>Customer {i}</p></body></html>",
        text.replace('\n', "</p><p>")
    );
    let alternative = format!(
        "Content-Type: multipart/alternative; boundary=alt{i}\r\n\r\n--alt{i}\r\n\
         Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n{}\r\n--alt{i}\r\n\
         Content-Type: text/html; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n{html}\r\n--alt{i}--\r\n",
        text.replace('\n', "\r\n")
    );
    let headers = format!(
        "Received: from mx.customer.example by mail.example.com; Sat, 28 Nov 2026 10:00:00 +0000\r\n\
         From: Customer {i} <customer{i}@customer.example>\r\nTo: {to}\r\n\
         Subject: Issue #{i}: {} {}\r\nDate: Sat, 28 Nov 2026 10:{:02}:00 +0000\r\n\
         Message-ID: <bench-{i}@customer.example>\r\nMIME-Version: 1.0\r\n",
        WORDS[rng.range(0, WORDS.len())],
        WORDS[rng.range(0, WORDS.len())],
        i % 60
    );
    match attachment {
        None => format!("{headers}{alternative}").into_bytes(),
        Some(size) => {
            let data = rng.bytes(size);
            format!(
                "{headers}Content-Type: multipart/mixed; boundary=mix{i}\r\n\r\n--mix{i}\r\n{alternative}--mix{i}\r\n\
                 Content-Type: application/pdf; name=\"report-{i}.pdf\"\r\n\
                 Content-Disposition: attachment; filename=\"report-{i}.pdf\"\r\n\
                 Content-Transfer-Encoding: base64\r\n\r\n{}--mix{i}--\r\n",
                base64_lines(&data)
            )
            .into_bytes()
        }
    }
}

/// CPU time (user + system) a process used so far, from `/proc/<pid>/stat` (ticks of 10 ms).
fn cpu_seconds(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // after the command name in parentheses: utime, stime are fields 14 and 15
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let tick = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok());
    Some((tick(11)? + tick(12)?) as f64 / 100.0)
}

fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// What one run of the real bootstrap at 128 MB over a mailbox of generated mails measured.
pub struct BootstrapRun {
    /// Mails ticketed or parked.
    pub handled: u64,
    /// The invocation's wall time.
    pub wall: Duration,
    /// Its init duration (a cold start).
    pub init: Option<Duration>,
    /// `VmHWM` of the bootstrap process, KiB.
    pub peak_rss_kib: Option<u64>,
    /// Round trips to the mail server (IMAP commands or Graph requests).
    pub imap_round_trips: u64,
    /// The mailbox's outcome in the report.
    pub outcome: serde_json::Value,
    /// Mails delivered.
    pub mails: usize,
    /// Their size in bytes.
    pub total_bytes: usize,
    /// CPU seconds of the bootstrap (init and the run).
    pub poller_cpu: Option<f64>,
    /// CPU seconds during the run of this test process (the ticket API, identity and Graph
    /// stand-ins, the AWS call counter), the tools it ran (the Graph stand-in's doveadm) and
    /// each process tree it started (the bootstrap, moto, Dovecot).
    pub cpu_by_process: Vec<crate::process_cpu::TreeCpu>,
    /// The bootstrap's AWS calls (moto) during the run, per operation.
    pub aws_calls: local_stack::aws_calls::CallCounts,
    /// The windows the run read its mail in (from the poller's debug log).
    pub windows: WindowSteps,
}

/// The windows of a run, from the poller's per-window debug line: how many, their mails, and
/// the median time of each step (reading the next window while posting the one before, then
/// settling it).
#[derive(Debug, Default)]
pub struct WindowSteps {
    /// Windows read.
    pub windows: usize,
    /// Mails per window, on average.
    pub mails_per_window: f64,
    /// Median milliseconds: reading a window (in-flight mark, fetch, parse).
    pub read_ms: u64,
    /// Median milliseconds: posting a window (dedupe lookup, POSTs, dedupe write).
    pub deliver_ms: u64,
    /// Median milliseconds: settling a window (its after-actions), after both.
    pub settle_ms: u64,
}

impl WindowSteps {
    /// From the bootstrap's JSON log lines.
    pub fn from_log(log: &str) -> Self {
        let steps: Vec<serde_json::Map<String, serde_json::Value>> = log
            .lines()
            .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
            .filter_map(|line| line.get("fields").and_then(|f| f.as_object()).cloned())
            .filter(|fields| fields.contains_key("read_mails"))
            .collect();
        let median = |name: &str| {
            let mut values: Vec<u64> = steps
                .iter()
                .filter(|f| f["read_mails"].as_u64() > Some(0) || name != "read_ms")
                .filter_map(|f| f.get(name).and_then(|v| v.as_u64()))
                .collect();
            values.sort_unstable();
            values.get(values.len() / 2).copied().unwrap_or(0)
        };
        let read: Vec<u64> = steps
            .iter()
            .filter_map(|f| f["read_mails"].as_u64())
            .filter(|n| *n > 0)
            .collect();
        WindowSteps {
            windows: read.len(),
            mails_per_window: read.iter().sum::<u64>() as f64 / read.len().max(1) as f64,
            read_ms: median("read_ms"),
            deliver_ms: median("deliver_ms"),
            settle_ms: median("settle_ms"),
        }
    }
}

/// `small` helpdesk-like mails (10 % with a 0.3–1 MB attachment, 20 % with a 20–300 KB one) plus
/// one with a `big_attachment`-byte attachment in the middle, delivered into a private Dovecot and
/// polled by `binary` (the real bootstrap) under the Runtime API emulator with
/// `AWS_LAMBDA_FUNCTION_MEMORY_SIZE=memory_mb`, the production token layer, the state table on
/// moto and the ticket API stand-in. Asserts that every mail became a ticket; returns the run and
/// the big mail's ticket. With `graph`, the mailbox is read through the Graph stand-in (over the
/// stack's Dovecot, where the mail is delivered then) instead of IMAP.
pub async fn poll_generated_mails(
    binary: std::path::PathBuf,
    label: &str,
    small: usize,
    big_attachment: usize,
    memory_mb: u32,
    graph: bool,
) -> (BootstrapRun, local_stack::ticket_api::RecordedTicket) {
    use local_stack::runtime_api::{FunctionConfig, RuntimeApi};
    let dovecot = if graph {
        stack().dovecot().clone()
    } else {
        Arc::new(
            crate::start_private_dovecot(label, &stack().identity().introspection_url())
                .await
                .unwrap(),
        )
    };
    let p = Poller::new(dovecot.clone()).await;
    let user = unique_user(label);
    let account = p.account(&user).await;
    // up to 1000 generated mails from few senders in one run
    let mut fields =
        serde_json::json!({"max_messages_per_run": 5000, "max_mails_per_sender_per_hour": 0});
    if graph {
        let mut app = AppRegistration::mailbridge(&p.tenant, &p.client_id);
        app.consented_scopes
            .push("https://graph.microsoft.com/Mail.ReadWrite".to_owned());
        stack().identity().register_app(app);
        fields["protocol"] = "graph".into();
        fields["host"] = serde_json::Value::Null;
        fields["port"] = serde_json::Value::Null;
    }
    p.mailbox(label, &user, &account, fields).await;

    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut mails = Vec::with_capacity(small + 1);
    for i in 0..small {
        let attachment = match i % 10 {
            0 => Some(rng.range(300_000, 1_000_000)),
            1 | 2 => Some(rng.range(20_000, 300_000)),
            _ => None,
        };
        mails.push(realistic_mail(&mut rng, i, &user, attachment));
    }
    let big_index = small;
    mails.insert(
        small / 2,
        realistic_mail(&mut rng, big_index, &user, Some(big_attachment)),
    );
    let total_bytes: usize = mails.iter().map(Vec::len).sum();
    let deliver_started = std::time::Instant::now();
    let mails = Arc::new(mails);
    let mut workers = Vec::new();
    for w in 0..4 {
        let (dovecot, mails, user) = (dovecot.clone(), mails.clone(), user.clone());
        workers.push(tokio::task::spawn_blocking(move || {
            for (i, raw) in mails.iter().enumerate() {
                if i % 4 == w {
                    dovecot.deliver_to(&user, "INBOX", raw).unwrap();
                }
            }
        }));
    }
    for w in workers {
        w.await.unwrap();
    }
    println!(
        "bench: delivered {} mails, {:.1} MB, in {:.1} s",
        mails.len(),
        total_bytes as f64 / 1e6,
        deliver_started.elapsed().as_secs_f64()
    );

    // The poller's per-window line (debug) for the window figures.
    let mut env =
        crate::poller::bootstrap_env(&p.table, "warn,poll_mailboxes::poll::windows=debug").await;
    // The bootstrap reaches moto through a counting proxy: its AWS calls per operation.
    let aws_calls = local_stack::aws_calls::AwsCallCounter::start(&stack().moto().endpoint_url)
        .await
        .expect("AWS call counter");
    for (key, value) in &mut env {
        if key == "AWS_ENDPOINT_URL" {
            *value = aws_calls.endpoint_url.clone();
        }
    }
    env.extend([
        (
            "MAILBRIDGE_IMAP_CA_FILE".to_string(),
            dovecot.ca_pem_path.display().to_string(),
        ),
        ("MAILBRIDGE_GRAPH_URL".to_string(), stack().graph().v1_url()),
    ]);
    let api = RuntimeApi::start().await.expect("runtime api");
    let mut function = FunctionConfig::new("poll-mailboxes", binary).with_env(env);
    function.memory_mb = memory_mb;
    api.spawn_function(&function).expect("spawn bootstrap");
    let pid = api.function_pid().expect("function pid");
    let cpu_before = crate::process_cpu::CpuSnapshot::now();
    let calls_before = aws_calls.counts();
    let outcome = api
        .invoke(
            serde_json::json!({"source": "mailbridge.schedule"}),
            Duration::from_secs(900),
        )
        .await
        .unwrap();
    let poller_cpu = cpu_seconds(&pid.to_string());
    let cpu_by_process = crate::process_cpu::CpuSnapshot::now().since(&cpu_before);
    let aws_calls = aws_calls.since(&calls_before);
    let wall = outcome.duration;
    let init = outcome.init_duration;
    let peak_rss_kib = peak_rss_kib(pid);
    let windows = WindowSteps::from_log(&api.logs());
    let report = outcome
        .into_response()
        .unwrap_or_else(|e| panic!("{e:#}\n{}", api.logs()));
    api.shutdown();
    let s = &report["mailboxes"][0];
    let handled = s["tickets_created"].as_u64().unwrap() + s["parked"].as_u64().unwrap();
    let run = BootstrapRun {
        handled,
        wall,
        init,
        peak_rss_kib,
        imap_round_trips: s["imap_round_trips"].as_u64().unwrap(),
        outcome: s["outcome"].clone(),
        mails: mails.len(),
        total_bytes,
        poller_cpu,
        cpu_by_process,
        aws_calls,
        windows,
    };
    assert_eq!(handled, mails.len() as u64, "{report}");
    assert_eq!(p.tickets().len(), mails.len());
    let big = p
        .tickets()
        .into_iter()
        .find(|t| {
            t.body["draft"]["subject"]
                .as_str()
                .unwrap_or("")
                .starts_with(&format!("Issue #{big_index}:"))
        })
        .expect("the big mail became a ticket");
    (run, big)
}

/// A Lambda's memory in KiB: Lambda's "MB" are MiB.
pub const fn lambda_kib(memory_mb: u64) -> u64 {
    memory_mb * 1024
}

/// The 20 MiB attachment of the memory checks: 27 MB on the wire (base64).
pub const BIG_ATTACHMENT: usize = 20 * 1024 * 1024;
