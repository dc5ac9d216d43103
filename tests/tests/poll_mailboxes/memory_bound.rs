//! The memory bound, checked on every run: the real bootstrap reads a 27 MB mail whole at 256 MB
//! and makes it a header-only ticket at 128 MB, staying under the function's memory.

use mailbridge_tests::measured_poll::{
    BIG_ATTACHMENT, BootstrapRun, lambda_kib, poll_generated_mails,
};

/// The largest mail the poller reads whole at `memory_mb`: (M − 48 MiB) / 6 (its `memory`
/// module; 128 MB: 13.3 MiB, 256 MB: 34.7 MiB).
fn max_whole_mail_bytes(memory_mb: u64) -> u64 {
    (memory_mb - 48) * 1024 * 1024 / 6
}

/// The real bootstrap (this build's) at `memory_mb`, `small` ordinary mails and the big one.
async fn poll_the_big_mail(
    label: &str,
    small: usize,
    memory_mb: u32,
) -> (BootstrapRun, serde_json::Value) {
    let binary = tokio::task::spawn_blocking(|| {
        local_stack::runtime_api::workspace_binary("poll-mailboxes", "poll-mailboxes")
    })
    .await
    .unwrap()
    .expect("the poll-mailboxes binary");
    let (run, big) =
        poll_generated_mails(binary, label, small, BIG_ATTACHMENT, memory_mb, false).await;
    let rss = run.peak_rss_kib.expect("VmHWM of the bootstrap");
    println!(
        "peak RSS {:.1} MiB at {memory_mb} MB polling {} mails ({:.1} MB) in {:.1} s",
        rss as f64 / 1024.0,
        run.mails,
        run.total_bytes as f64 / 1e6,
        run.wall.as_secs_f64()
    );
    assert!(
        rss < lambda_kib(u64::from(memory_mb)),
        "peak RSS {:.1} MiB is over a {memory_mb} MB Lambda",
        rss as f64 / 1024.0
    );
    (run, big.body)
}

/// The memory bound with the full read, checked on every test run: at 256 MB the poller reads
/// the mail with a 20 MiB attachment (27 MB on the wire, under 256 MB's 34.7 MiB limit) whole,
/// among 40 ordinary ones, and stays under 256 MB. Peak RSS is set by the largest mail in flight
/// (one at a time), not by the number of mails, so this is the benchmark scaled to CI's time.
#[tokio::test]
async fn the_bootstrap_reads_a_27_mb_mail_whole_within_256_mb() {
    let (run, big) = poll_the_big_mail("poll-rss-256", 40, 256).await;
    assert!(run.total_bytes as u64 > 27_000_000);
    assert!(BIG_ATTACHMENT as u64 * 4 / 3 < max_whole_mail_bytes(256));
    assert!(
        big["problem"].is_null(),
        "read whole, not header-only: {}",
        big["problem"]
    );
    let attachment = &big["attachments"][0];
    assert_eq!(
        attachment["size"].as_u64(),
        Some(BIG_ATTACHMENT as u64),
        "the attachment was decoded: {attachment}"
    );
    assert!(
        attachment["content_base64"].is_null() && !attachment["omitted_reason"].is_null(),
        "over the attachment cap: listed without content: {attachment}"
    );
}

/// The memory bound at 128 MB: the same mail is over 128 MB's limit (13.3 MiB), so the poller
/// reads only its headers (a ticket that says so and names the memory setting) and stays under
/// 128 MB with the ordinary mails around it.
#[tokio::test]
async fn the_bootstrap_at_128_mb_makes_a_27_mb_mail_a_header_only_ticket_within_128_mb() {
    let (_run, big) = poll_the_big_mail("poll-rss-128", 20, 128).await;
    assert!(BIG_ATTACHMENT as u64 > max_whole_mail_bytes(128));
    let problem = big["problem"].as_str().unwrap_or_default();
    assert!(
        problem.contains("only its headers were read") && problem.contains("PollMemorySize"),
        "{problem}"
    );
    assert_eq!(big["attachments"].as_array().map(Vec::len), Some(0));
}
