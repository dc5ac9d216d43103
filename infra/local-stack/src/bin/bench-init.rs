//! `bench-init`: cold-start (init) time of each function's `bootstrap` next to a hello-world
//! `lambda_runtime` floor, built with the same cargo profile, under the Lambda Runtime API
//! emulator.
//!
//! ```sh
//! bash infra/bench/init-time.sh                 # release profile, 20 starts per binary
//! bash infra/bench/init-time.sh --profile bench --starts 30
//! bash infra/bench/init-time.sh --before DIR    # also DIR's two bootstraps (an older build)
//! ```
//!
//! Steps: `cargo build --profile <p> -p <package>` for `send-notifications`, `poll-mailboxes` and
//! `hello-lambda` (each with its own feature set, as `infra/scripts/build-lambdas.sh` builds the
//! deployed bootstraps), copy the executables to a run folder (release and bench share `target/release`), start moto (the
//! functions' `AWS_ENDPOINT_URL`, so nothing in init can reach the network), then start every
//! binary `--starts` times, interleaved (round r starts the binaries in a rotated order, so load
//! noise from other processes hits all of them alike). Each start gets the environment a real
//! Lambda gives (function name, memory size, log group, region, session credentials, ...) plus
//! the function's own variables.
//!
//! Per start it records: spawn → first `GET /2018-06-01/runtime/invocation/next` (wall), the CPU
//! time the process used until then (`/proc/<pid>/task/*/schedstat`; less sensitive to other
//! load than wall time), its RSS, and the AWS API requests moto served meanwhile (network in
//! init). The first start of each binary is also invoked once with a benign event to prove the
//! environment is complete. Prints median / p90 / min per binary and the ratio to the floor.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Parser;
use local_stack::moto::Moto;
use local_stack::runtime_api::{FunctionConfig, InvocationResult, RuntimeApi};

#[derive(Parser, Debug)]
#[command(about = "Init time of the Lambda bootstraps vs a hello-world floor")]
struct Args {
    /// Cargo profile for all binaries (`release` = what is deployed; `bench` = thin LTO, quicker).
    #[arg(long, default_value = "release")]
    profile: String,
    /// Starts per binary (the issue asks for at least 20).
    #[arg(long, default_value_t = 20)]
    starts: usize,
    /// Use the executables already in this folder (`hello-lambda`, `send-notifications`,
    /// `poll-mailboxes`) instead of building.
    #[arg(long)]
    bins_dir: Option<PathBuf>,
    /// Also copy the built executables into this folder (for `infra/scripts/bench.sh`'s
    /// warm-cost run, `MAILBRIDGE_BENCH_BINS`).
    #[arg(long)]
    bins_out: Option<PathBuf>,
    /// Also start the `send-notifications` and `poll-mailboxes` in this folder (e.g. built from
    /// an earlier commit), interleaved with the others in the same run: a before/after
    /// comparison under the same machine load.
    #[arg(long)]
    before: Option<PathBuf>,
    /// `AWS_LAMBDA_FUNCTION_MEMORY_SIZE` given to every function.
    #[arg(long, default_value_t = 128)]
    memory_mb: u32,
}

const FLOOR: &str = "hello-lambda";
const BINARIES: [&str; 3] = [FLOOR, "send-notifications", "poll-mailboxes"];

#[derive(Default)]
struct Samples {
    wall_ms: Vec<f64>,
    cpu_ms: Vec<f64>,
    rss_kib: Vec<f64>,
    aws_requests: Vec<f64>,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let run_dir = local_stack::default_run_dir("bench-init")?;
    let bins = match &args.bins_dir {
        Some(dir) => dir.clone(),
        None => build(&args.profile, &run_dir.join("bootstraps"))?,
    };
    for name in BINARIES {
        let path = bins.join(name);
        if !path.is_file() {
            bail!("{} is missing", path.display());
        }
        if let Some(out) = &args.bins_out {
            std::fs::create_dir_all(out)?;
            std::fs::copy(&path, out.join(name))
                .with_context(|| format!("copy {} into {}", path.display(), out.display()))?;
        }
    }

    let moto = Moto::start(&run_dir).await.context("start moto")?;
    let aws = moto.sdk_config();
    let table = format!("bench-init-{}", std::process::id());
    local_stack::moto::ensure_state_table(&aws_sdk_dynamodb::Client::new(&aws), &table).await?;
    let thread_key_secret = format!("mailbridge-bench/thread-key-{}", std::process::id());
    aws_sdk_secretsmanager::Client::new(&aws)
        .create_secret()
        .name(&thread_key_secret)
        .secret_string("bench-thread-key-0123456789abcdef")
        .send()
        .await
        .context("create the thread key secret")?;
    // the functions reach moto through a counting proxy: AWS calls made in init, per operation
    let counter = local_stack::aws_calls::AwsCallCounter::start(&moto.endpoint_url).await?;
    let dlq_url = format!(
        "{}/{}/bench-init-dlq",
        moto.endpoint_url,
        local_stack::moto::ACCOUNT_ID
    );

    // What Lambda puts in a function's environment (beyond what the emulator sets itself),
    // with the endpoint pointing at moto: region, session credentials, no profile files.
    let lambda_aws_env: Vec<(String, String)> = vec![
        ("AWS_REGION".into(), local_stack::moto::REGION.into()),
        (
            "AWS_DEFAULT_REGION".into(),
            local_stack::moto::REGION.into(),
        ),
        ("AWS_ACCESS_KEY_ID".into(), "ASIABENCHINIT0000000".into()),
        (
            "AWS_SECRET_ACCESS_KEY".into(),
            "bench-init-secret-access-key".into(),
        ),
        (
            "AWS_SESSION_TOKEN".into(),
            "bench-init-session-token".into(),
        ),
        ("AWS_ENDPOINT_URL".into(), counter.endpoint_url.clone()),
        ("RUST_LOG".into(), "info".into()),
    ];
    let function_env = |name: &str| -> Vec<(String, String)> {
        let mut env = lambda_aws_env.clone();
        let common = [
            ("MAILBRIDGE_STATE_TABLE", table.as_str()),
            ("MAILBRIDGE_SECRET_PREFIX", "mailbridge-bench/"),
            ("MAILBRIDGE_THREAD_KEY_SECRET", thread_key_secret.as_str()),
        ];
        match name {
            "send-notifications" => {
                env.extend(common.iter().map(|(k, v)| (k.to_string(), v.to_string())));
                env.push(("MAILBRIDGE_DLQ_URL".into(), dlq_url.clone()));
            }
            "poll-mailboxes" => {
                env.extend(common.iter().map(|(k, v)| (k.to_string(), v.to_string())));
            }
            _ => {}
        }
        env
    };
    let validation_event = |name: &str| match name {
        "send-notifications" => serde_json::json!({"Records": []}),
        "poll-mailboxes" => serde_json::json!({
            "version": "0", "id": "bench", "detail-type": "Scheduled Event", "source": "aws.scheduler",
            "account": local_stack::moto::ACCOUNT_ID, "time": "2026-11-29T00:00:00Z",
            "region": local_stack::moto::REGION, "resources": [], "detail": {}
        }),
        _ => serde_json::json!({"hello": "bench"}),
    };

    // (label, function name, executable): the floor first.
    let mut starts: Vec<(String, &str, PathBuf)> = BINARIES
        .iter()
        .map(|name| (name.to_string(), *name, bins.join(name)))
        .collect();
    if let Some(before) = &args.before {
        for name in &BINARIES[1..] {
            let path = before.join(name);
            if !path.is_file() {
                bail!("{} is missing", path.display());
            }
            starts.push((format!("before: {name}"), *name, path));
        }
    }

    let api = RuntimeApi::start().await?;
    let mut samples: Vec<Samples> = starts.iter().map(|_| Samples::default()).collect();
    let load_before = load_average();
    println!(
        "bench-init: profile {}, {} starts per binary, {} MB, binaries in {}",
        args.profile,
        args.starts,
        args.memory_mb,
        bins.display()
    );
    println!("load average before: {load_before}");
    for round in 0..args.starts {
        for offset in 0..starts.len() {
            let index = (round + offset) % starts.len();
            let (label, name, path) = &starts[index];
            let name = *name;
            let mut function = FunctionConfig::new(name, path).with_env(function_env(name));
            function.memory_mb = args.memory_mb;
            let log_name = format!("{}-{round}.log", label.replace(": ", "-"));
            function.log_path = Some(run_dir.join(&log_name));
            let calls_before = counter.counts();
            api.spawn_function(&function)?;
            let init = api
                .wait_for_init(Duration::from_secs(30))
                .await
                .with_context(|| {
                    format!(
                        "{label} start {round}; log:\n{}",
                        local_stack::log_tail(&run_dir.join(&log_name), 20)
                    )
                })?;
            let cpu = api.function_cpu_time().unwrap_or_default();
            let (rss, _) = api.function_memory_kib().unwrap_or_default();
            let calls = counter.since(&calls_before);
            let requests: u64 = calls.values().sum();
            if round == 0 {
                println!(
                    "{label}: AWS calls in init: {}",
                    local_stack::aws_calls::summarize(&calls)
                );
            }
            if round == 0 {
                let outcome = api
                    .invoke(validation_event(name), Duration::from_secs(60))
                    .await?;
                if !matches!(outcome.result, InvocationResult::Response(_)) {
                    bail!(
                        "{label}: the validation invocation failed: {:?}\nlog:\n{}",
                        outcome.result,
                        outcome.logs()
                    );
                }
            }
            api.shutdown();
            let s = &mut samples[index];
            s.wall_ms.push(init.as_secs_f64() * 1e3);
            s.cpu_ms.push(cpu.as_secs_f64() * 1e3);
            s.rss_kib.push(rss as f64);
            s.aws_requests.push(requests as f64);
        }
    }
    let load_after = load_average();

    let floor_wall = median(&samples[0].wall_ms);
    let floor_cpu = median(&samples[0].cpu_ms);
    println!();
    println!(
        "| binary | init median ms | p90 ms | min ms | × floor (median) | CPU median ms | × floor (CPU) | RSS after init MiB | AWS requests in init | size MiB |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (index, (label, _, path)) in starts.iter().enumerate() {
        let s = &samples[index];
        let wall = median(&s.wall_ms);
        let cpu = median(&s.cpu_ms);
        let size = std::fs::metadata(path)
            .map(|m| m.len() as f64 / 1_048_576.0)
            .unwrap_or(0.0);
        println!(
            "| {label} | {wall:.1} | {:.1} | {:.1} | {:.2} | {cpu:.1} | {:.2} | {:.1} | {} | {size:.1} |",
            percentile(&s.wall_ms, 0.9),
            min(&s.wall_ms),
            wall / floor_wall,
            cpu / floor_cpu,
            median(&s.rss_kib) / 1024.0,
            median(&s.aws_requests),
        );
    }
    println!();
    println!("load average after: {load_after}");
    println!("logs: {}", run_dir.display());
    Ok(())
}

/// Build the three binaries with `profile`, one `cargo build -p <package>` each as
/// `infra/scripts/build-lambdas.sh` builds the deployed bootstraps (one package's feature set
/// per binary, not the whole workspace's), and copy them into `out` (release and bench both write
/// to `target/release`, so the copies keep each run's binaries apart).
fn build(profile: &str, out: &Path) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(out)?;
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    eprintln!("bench-init: building {BINARIES:?} with --profile {profile} ...");
    let started = std::time::Instant::now();
    for name in BINARIES {
        let output = Command::new(&cargo)
            .current_dir(local_stack::repo_root())
            .args([
                "build",
                "--profile",
                profile,
                "-p",
                name,
                "--bin",
                name,
                "--message-format=json-render-diagnostics",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .output()
            .context("run cargo build")?;
        if !output.status.success() {
            bail!(
                "cargo build --profile {profile} -p {name} failed ({})",
                output.status
            );
        }
        let executable = String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
            .find_map(|message| {
                let target = message.pointer("/target/name")?.as_str()?;
                let exe = message.get("executable")?.as_str()?;
                (target == name).then(|| exe.to_owned())
            })
            .with_context(|| format!("cargo build -p {name} reported no executable"))?;
        std::fs::copy(&executable, out.join(name))
            .with_context(|| format!("copy {executable} into {}", out.display()))?;
    }
    eprintln!(
        "bench-init: built in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    Ok(out.to_path_buf())
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

fn sorted(values: &[f64]) -> Vec<f64> {
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    v
}

fn median(values: &[f64]) -> f64 {
    percentile(values, 0.5)
}

fn percentile(values: &[f64], p: f64) -> f64 {
    let v = sorted(values);
    if v.is_empty() {
        return f64::NAN;
    }
    if p == 0.5 && v.len().is_multiple_of(2) {
        return (v[v.len() / 2 - 1] + v[v.len() / 2]) / 2.0;
    }
    let rank = ((p * v.len() as f64).ceil() as usize).clamp(1, v.len());
    v[rank - 1]
}

fn min(values: &[f64]) -> f64 {
    values.iter().copied().fold(f64::INFINITY, f64::min)
}
