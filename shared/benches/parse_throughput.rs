//! Parse throughput of `mailbridge::mail::parse` (MB/s, mails/s) on a mail corpus, side by side
//! with Python's stdlib `email` doing the same work in the same run
//! (`infra/bench/parse_python.py`): `py` = compat32 parse and MIME walk only (the baseline the
//! issue names), `pyfull` = compat32 plus the rest of the draft work (HTML to text, machine-mail
//! rules, bounce details, reply stripping, marker checks), `py(default)` = policy.default parse.
//!
//! `cargo bench -p mailbridge-shared --bench parse_throughput [-- DIR ...]`
//! Default corpus: `tests/fixtures/mail`; other folders of .eml files as arguments. Single-threaded on both sides. Prints numbers; asserts nothing.
//!
//! Throughput is per second of CPU time of the measuring thread (both sides), so that a machine
//! shared with other builds slows neither side's number; wall-clock MB/s is printed as well.
//! Each side runs until it has used 3 s of CPU (`MAILBRIDGE_BENCH_SECONDS` to change).

use mailbridge::mail::{ParseOptions, parse};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// CPU time each side runs per corpus; `MAILBRIDGE_BENCH_SECONDS` overrides it (short rounds,
/// repeated and alternated between builds, give steadier A/B comparisons on a shared machine).
fn min_time() -> Duration {
    std::env::var("MAILBRIDGE_BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .map_or(Duration::from_secs(3), Duration::from_secs_f64)
}

fn load(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut files: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.is_file()
                    && (p.extension().is_some_and(|e| e == "eml") || p.extension().is_none())
            })
            .collect(),
        Err(_) => return Vec::new(),
    };
    files.sort();
    files
        .into_iter()
        .filter_map(|p| std::fs::read(&p).ok().map(|raw| (p, raw)))
        .filter(|(_, raw)| !raw.is_empty())
        .collect()
}

/// CPU time (user + system) of the calling thread, from `/proc/thread-self/stat` (clock ticks
/// of 10 ms; runs last seconds, so that is fine). `None` off Linux.
fn thread_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").ok()?;
    // Fields after the command name (which may hold spaces) start at field 3 (state).
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

struct Measured {
    files: usize,
    bytes: usize,
    /// CPU seconds (wall seconds where CPU time is unavailable).
    seconds: f64,
    wall_seconds: f64,
    iterations: usize,
}

impl Measured {
    fn mb_per_s(&self) -> f64 {
        (self.bytes * self.iterations) as f64 / self.seconds / 1e6
    }
    fn wall_mb_per_s(&self) -> f64 {
        (self.bytes * self.iterations) as f64 / self.wall_seconds / 1e6
    }
    fn mails_per_s(&self) -> f64 {
        (self.files * self.iterations) as f64 / self.seconds
    }
}

fn bench_rust(mails: &[Vec<u8>]) -> Measured {
    let opts = bench_options();
    for raw in mails {
        let _ = std::hint::black_box(parse(raw, &opts));
    }
    let start = Instant::now();
    let cpu_start = thread_cpu_seconds();
    let cpu_elapsed = || match (cpu_start, thread_cpu_seconds()) {
        (Some(a), Some(b)) => b - a,
        _ => start.elapsed().as_secs_f64(),
    };
    let mut iterations = 0;
    let min_time = min_time().as_secs_f64();
    // `MAILBRIDGE_BENCH_ITERATIONS=n`: exactly n passes, for instruction counts under
    // `valgrind --tool=callgrind` (deterministic, unlike CPU time on a shared machine).
    let fixed: Option<usize> = std::env::var("MAILBRIDGE_BENCH_ITERATIONS")
        .ok()
        .and_then(|s| s.parse().ok());
    while fixed.map_or(cpu_elapsed() < min_time, |n| iterations < n) {
        for raw in mails {
            let _ = std::hint::black_box(parse(std::hint::black_box(raw), &opts));
        }
        iterations += 1;
    }
    Measured {
        files: mails.len(),
        bytes: mails.iter().map(Vec::len).sum(),
        seconds: cpu_elapsed(),
        wall_seconds: start.elapsed().as_secs_f64(),
        iterations,
    }
}

/// `MAILBRIDGE_BENCH_PER_MAIL=1`: one line per mail, `microseconds-per-parse bytes path`, to find
/// the mails that cost the most (compare with `parse_python.py --per-mail`).
fn per_mail(paths: &[PathBuf], mails: &[Vec<u8>]) {
    let opts = bench_options();
    // One untimed pass first: the parser's lazily built regexes are built once per process,
    // and would otherwise be charged to whichever mail first needs each one.
    for raw in mails {
        let _ = std::hint::black_box(parse(raw, &opts));
    }
    for (path, raw) in paths.iter().zip(mails) {
        let start = Instant::now();
        let mut n = 0u32;
        while start.elapsed() < Duration::from_millis(20) || n < 5 {
            let _ = std::hint::black_box(parse(std::hint::black_box(raw), &opts));
            n += 1;
        }
        let micros = start.elapsed().as_secs_f64() * 1e6 / f64::from(n);
        println!("{micros:.1} {} {}", raw.len(), path.display());
    }
}

fn bench_options() -> ParseOptions {
    ParseOptions {
        thread_key: Some(b"bench-thread-key".to_vec()),
        own_addresses: vec!["helpdesk@mailbridge.test".into()],
        ..ParseOptions::default()
    }
}

/// Python's (MB/s, mails/s) per CPU second, and its wall-clock MB/s.
fn bench_python(dir: &Path, policy: &str, work: &str) -> Option<(f64, f64, f64)> {
    if std::env::var_os("MAILBRIDGE_BENCH_RUST_ONLY").is_some() {
        return None;
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../infra/bench/parse_python.py");
    let out = Command::new("python3")
        .arg(script)
        .args(["--min-seconds", &min_time().as_secs_f64().to_string()])
        .args(["--policy", policy, "--work", work])
        .arg(dir)
        .output()
        .ok()?;
    let line = String::from_utf8_lossy(&out.stdout);
    let v: serde_json::Value = serde_json::from_str(line.trim()).ok()?;
    Some((
        v["mb_per_s"].as_f64()?,
        v["mails_per_s"].as_f64()?,
        v["wall_mb_per_s"].as_f64()?,
    ))
}

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let dirs: Vec<PathBuf> = if args.is_empty() {
        vec![root.join("tests/fixtures/mail")]
    } else {
        args.iter().map(PathBuf::from).collect()
    };
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!("parse throughput, single thread ({cores} cores available)");
    println!(
        "{:<20} {:>5} {:>5} {:>9} {:>11} {:>8} {:>9} {:>6} {:>8} {:>6} {:>11} {:>9} {:>7}",
        "corpus",
        "files",
        "KiB",
        "rust MB/s",
        "rust mail/s",
        "py MB/s",
        "py mail/s",
        "ratio",
        "pyfull",
        "ratio",
        "py(default)",
        "rust wall",
        "py wall"
    );
    for dir in dirs {
        let (paths, mails): (Vec<PathBuf>, Vec<Vec<u8>>) = load(&dir).into_iter().unzip();
        if mails.is_empty() {
            continue;
        }
        if std::env::var_os("MAILBRIDGE_BENCH_PER_MAIL").is_some() {
            per_mail(&paths, &mails);
            continue;
        }
        let rust = bench_rust(&mails);
        let py = bench_python(&dir, "compat32", "parse");
        let py_full = bench_python(&dir, "compat32", "full");
        let py_default = bench_python(&dir, "default", "parse");
        let name = dir
            .canonicalize()
            .unwrap_or(dir.clone())
            .display()
            .to_string();
        let name = name
            .rsplit("/")
            .take(2)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("/");
        match py {
            Some((py_mb, py_mails, py_wall)) => {
                let full = py_full.map_or(f64::NAN, |p| p.0);
                println!(
                    "{:<20} {:>5} {:>5} {:>9.1} {:>11.0} {:>8.2} {:>9.0} {:>5.1}x {:>8.2} {:>5.1}x {:>11.2} {:>9.1} {:>7.2}",
                    name,
                    rust.files,
                    rust.bytes / 1024,
                    rust.mb_per_s(),
                    rust.mails_per_s(),
                    py_mb,
                    py_mails,
                    rust.mb_per_s() / py_mb,
                    full,
                    rust.mb_per_s() / full,
                    py_default.map_or(f64::NAN, |p| p.0),
                    rust.wall_mb_per_s(),
                    py_wall,
                )
            }
            None => println!(
                "{:<22} {:>5} {:>6} {:>10.1} {:>11.0}   (python3 not available) {:>9.1}",
                name,
                rust.files,
                rust.bytes / 1024,
                rust.mb_per_s(),
                rust.mails_per_s(),
                rust.wall_mb_per_s(),
            ),
        }
    }
}
