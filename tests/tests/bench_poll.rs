//! Benchmark of the poller (prints numbers; recorded in BENCHMARKS.md, run by
//! `infra/scripts/bench.sh poller`): the real bootstrap over a mailbox of generated mails, over IMAP
//! and through Graph.

use mailbridge_tests::measured_poll::{BIG_ATTACHMENT, lambda_kib, poll_generated_mails};

/// Benchmark (prints numbers; recorded in BENCHMARKS.md): 1,000 realistic mails plus one with a
/// 20 MB attachment in one mailbox, polled by the real bootstrap (bench profile) at 128 MB, read
/// over IMAP and then (the same mails, a new mailbox) through Graph, in the same run.
/// Run: `cargo build --profile bench --workspace --bins && cargo test --profile bench -p mailbridge-tests --test bench_poll -- --ignored --nocapture`
#[tokio::test]
#[ignore = "benchmark: run explicitly (see BENCHMARKS.md)"]
async fn bench_poll_1000_mails_and_a_20_mb_attachment() {
    // The bootstrap of this test's profile (bench: thin LTO), built beforehand, or the one
    // MAILBRIDGE_BENCH_POLLER names (a bench-profile bootstrap measured by a dev-profile test);
    // MAILBRIDGE_BENCH_BASELINE_POLLER: an earlier build, run over IMAP first, side by side.
    let binary = match std::env::var_os("MAILBRIDGE_BENCH_POLLER") {
        Some(path) => std::path::PathBuf::from(path),
        None => local_stack::runtime_api::workspace_binary("poll-mailboxes", "poll-mailboxes")
            .expect("the poll-mailboxes binary"),
    };
    let baseline =
        std::env::var_os("MAILBRIDGE_BENCH_BASELINE_POLLER").map(std::path::PathBuf::from);
    let load = || {
        std::fs::read_to_string("/proc/loadavg")
            .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
            .unwrap_or_default()
    };
    // MAILBRIDGE_BENCH_ROUNDS: the IMAP runs (baseline, this build) repeated, alternating, on a
    // machine whose load varies; MAILBRIDGE_BENCH_GRAPH=0 leaves the Graph run out.
    let rounds: usize = std::env::var("MAILBRIDGE_BENCH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(1);
    let graph = std::env::var("MAILBRIDGE_BENCH_GRAPH").as_deref() != Ok("0");
    let imap_round = baseline
        .iter()
        .map(|b| ("IMAP", "baseline", b, false))
        .chain([("IMAP", "this build", &binary, false)]);
    let runs = std::iter::repeat_n(imap_round, rounds)
        .flatten()
        .chain(graph.then_some(("Graph", "this build", &binary, true)));
    for (protocol, build, binary, graph) in runs {
        let label = format!("poll-bench-{}", protocol.to_lowercase());
        let load_before = load();
        let (run, _big) =
            poll_generated_mails(binary.clone(), &label, 1000, BIG_ATTACHMENT, 128, graph).await;
        println!(
            "bench {protocol} ({build}): {} mails in {:.2} s = {:.1} mails/s; init {:?}; peak RSS {:.1} MiB \
             (limit 128); {protocol} round trips {} = {:.2} per mail; outcome {}; CPU s: poller {:?} \
             (with its init); during the run, by process tree: {}; the poller's AWS calls: {} \
             ({:.3} per mail); {:?}; load average {load_before} before, {} after",
            run.handled,
            run.wall.as_secs_f64(),
            run.handled as f64 / run.wall.as_secs_f64(),
            run.init,
            run.peak_rss_kib.unwrap_or(0) as f64 / 1024.0,
            run.imap_round_trips,
            run.imap_round_trips as f64 / run.handled as f64,
            run.outcome,
            run.poller_cpu,
            mailbridge_tests::process_cpu::describe(&run.cpu_by_process),
            local_stack::aws_calls::summarize(&run.aws_calls),
            run.aws_calls.values().sum::<u64>() as f64 / run.handled as f64,
            run.windows,
            load()
        );
        assert!(
            run.peak_rss_kib.unwrap_or(u64::MAX) < lambda_kib(128),
            "{protocol}: peak RSS {:?} KiB is over a 128 MB Lambda",
            run.peak_rss_kib
        );
    }
}
