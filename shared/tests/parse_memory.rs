//! Bounded memory: parsing a 50 MB message (generated here, not committed) allocates at most a
//! small multiple of its size. A counting global allocator measures the peak heap use during
//! `parse` exactly, independent of the allocator's RSS behaviour.

use mailbridge::mail::{ParseOptions, parse};
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

struct Counting;

static CURRENT: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);
/// One measurement at a time (tests in this binary run in parallel threads).
static MEASURE: Mutex<()> = Mutex::new(());

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let now = CURRENT.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        CURRENT.fetch_sub(layout.size(), Ordering::Relaxed);
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            if new_size > layout.size() {
                let grow = new_size - layout.size();
                let now = CURRENT.fetch_add(grow, Ordering::Relaxed) + grow;
                PEAK.fetch_max(now, Ordering::Relaxed);
            } else {
                CURRENT.fetch_sub(layout.size() - new_size, Ordering::Relaxed);
            }
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const TARGET: usize = 50 * 1024 * 1024;
/// Allowed peak heap growth during `parse`, as a multiple of the message size.
const MAX_FACTOR: f64 = 4.0;

/// Peak extra heap bytes while parsing `raw`, and whether it parsed.
fn peak_during_parse(raw: &[u8]) -> (usize, bool) {
    let opts = ParseOptions::default();
    let baseline = CURRENT.load(Ordering::SeqCst);
    PEAK.store(baseline, Ordering::SeqCst);
    let result = parse(raw, &opts);
    let peak = PEAK.load(Ordering::SeqCst);
    let ok = result.is_ok();
    drop(result);
    (peak.saturating_sub(baseline), ok)
}

fn check(name: &str, raw: &[u8]) {
    let _guard = MEASURE.lock().unwrap_or_else(|p| p.into_inner());
    let (peak, ok) = peak_during_parse(raw);
    let factor = peak as f64 / raw.len() as f64;
    println!(
        "{name}: message {} bytes, peak extra heap {} bytes ({factor:.2}x)",
        raw.len(),
        peak
    );
    assert!(ok, "{name}: must parse");
    assert!(
        factor <= MAX_FACTOR,
        "{name}: parse used {factor:.2}x the message size (limit {MAX_FACTOR}x)"
    );
}

fn header(content_type: &str) -> String {
    format!(
        "From: Big Sender <big@example.com>\r\nTo: helpdesk@mailbridge.test\r\nSubject: big\r\n\
         Message-ID: <big@example.com>\r\nMIME-Version: 1.0\r\nContent-Type: {content_type}\r\n\r\n"
    )
}

#[test]
fn fifty_megabyte_base64_attachment_stays_within_a_small_multiple() {
    let mut raw = header("multipart/mixed; boundary=\"big\"").into_bytes();
    raw.extend_from_slice(
        b"--big\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nsee attachment\r\n",
    );
    raw.extend_from_slice(
        b"--big\r\nContent-Type: application/octet-stream\r\nContent-Disposition: attachment; filename=\"big.bin\"\r\nContent-Transfer-Encoding: base64\r\n\r\n",
    );
    let line = b"QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVphYmNkZWZnaGlqa2xtbm9wcXJzdHV2d3h5ejAxMjM0\r\n";
    while raw.len() < TARGET {
        raw.extend_from_slice(line);
    }
    raw.extend_from_slice(b"--big--\r\n");
    check("base64 attachment", &raw);
}

#[test]
fn fifty_megabyte_text_body_stays_within_a_small_multiple() {
    let mut raw = header("text/plain; charset=utf-8").into_bytes();
    let line = "Grüße, the quick brown fox jumps over the lazy dog. > not a quote\r\n".as_bytes();
    while raw.len() < TARGET {
        raw.extend_from_slice(line);
    }
    check("text body", &raw);
}

#[test]
fn fifty_megabyte_html_only_body_stays_within_a_small_multiple() {
    let mut raw = header("text/html; charset=utf-8").into_bytes();
    raw.extend_from_slice(b"<html><body>");
    let line = b"<p>The <b>quick</b> brown fox jumps over the lazy dog.</p>\r\n";
    while raw.len() < TARGET {
        raw.extend_from_slice(line);
    }
    raw.extend_from_slice(b"</body></html>\r\n");
    check("html-only body", &raw);
}

#[test]
fn thousands_of_small_parts_stay_within_a_small_multiple() {
    // 5,000 parts of ~200 bytes: below the part limit, so a real draft.
    let mut raw = header("multipart/mixed; boundary=\"p\"").into_bytes();
    raw.extend_from_slice(b"--p\r\nContent-Type: text/plain\r\n\r\nhello\r\n");
    let filler = "x".repeat(50 * 1024);
    for n in 0..5_000 {
        raw.extend_from_slice(
            format!("--p\r\nContent-Type: image/png; name=\"i{n}.png\"\r\nContent-ID: <i{n}@x>\r\nContent-Transfer-Encoding: base64\r\n\r\niVBORw0KGgo=\r\n")
                .as_bytes(),
        );
        if n % 500 == 0 {
            // Some bulk so the message is not all MIME overhead.
            raw.extend_from_slice(b"--p\r\nContent-Type: text/plain; name=\"fill.txt\"\r\n\r\n");
            raw.extend_from_slice(filler.as_bytes());
            raw.extend_from_slice(b"\r\n");
        }
    }
    raw.extend_from_slice(b"--p--\r\n");
    let _guard = MEASURE.lock().unwrap_or_else(|p| p.into_inner());
    let (peak, ok) = peak_during_parse(&raw);
    println!(
        "5,000 parts: message {} bytes, peak extra heap {peak} bytes",
        raw.len()
    );
    assert!(ok);
    // MIME bookkeeping per part is a few KiB in mail-parser: bounded in absolute terms.
    assert!(peak < 64 * 1024 * 1024, "5,000 parts took {peak} bytes");
}

#[test]
fn too_many_parts_are_refused_cheaply() {
    let mut raw = header("multipart/mixed; boundary=\"p\"").into_bytes();
    let mut n = 0;
    while raw.len() < TARGET / 5 {
        raw.extend_from_slice(
            format!("--p\r\nContent-Type: image/png; name=\"i{n}.png\"\r\nContent-ID: <i{n}@x>\r\nContent-Transfer-Encoding: base64\r\n\r\niVBORw0KGgo=\r\n")
                .as_bytes(),
        );
        n += 1;
    }
    raw.extend_from_slice(b"--p--\r\n");
    let _guard = MEASURE.lock().unwrap_or_else(|p| p.into_inner());
    let (peak, ok) = peak_during_parse(&raw);
    println!(
        "{n} parts: message {} bytes, peak extra heap {peak} bytes",
        raw.len()
    );
    assert!(!ok, "more parts than the limit must be refused");
    assert!(peak as f64 <= MAX_FACTOR * raw.len() as f64);
}
