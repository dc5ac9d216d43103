//! Golden tests of the mail parser: every `tests/fixtures/mail/NNN-*.eml` must give exactly the
//! draft in the `.json` beside it (reviewed by hand), and its LF, CRLF and bare-CR variants must
//! give the same draft.
//!
//! On a mismatch the test writes `NNN-*.json.new` next to the snapshot and fails with a diff.
//! `UPDATE_SNAPSHOTS=1 cargo test -p mailbridge-shared --test parse_corpus` rewrites the
//! snapshots (review the git diff before committing).

use mailbridge::mail::{ParseOptions, TicketDraft, parse, parse_with_attachments};
use std::path::{Path, PathBuf};

/// The HMAC key the hand-written fixtures' markers were made with.
const TEST_THREAD_KEY: &[u8] = b"mailbridge-test-thread-key";
/// The helpdesk's own address in the hand-written fixtures.
const OWN_ADDRESS: &str = "helpdesk@mailbridge.test";

fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/mail")
}

fn fixtures() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(fixtures_dir())
        .expect("tests/fixtures/mail exists")
        .map(|e| e.expect("readable dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "eml"))
        .collect();
    files.sort();
    files
}

fn options() -> ParseOptions {
    ParseOptions {
        thread_key: Some(TEST_THREAD_KEY.to_vec()),
        own_addresses: vec![OWN_ADDRESS.to_string()],
        ..ParseOptions::default()
    }
}

/// The snapshot text of one parse: the pretty draft, or `{"error": "..."}`.
fn render(result: &Result<TicketDraft, mailbridge::mail::ParseError>) -> String {
    let value = match result {
        Ok(draft) => serde_json::to_value(draft).expect("draft serialises"),
        Err(error) => serde_json::json!({ "error": error.to_string() }),
    };
    let mut text = serde_json::to_string_pretty(&value).expect("json");
    text.push('\n');
    text
}

fn to_lf(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        if raw[i] == b'\r' {
            out.push(b'\n');
            if raw.get(i + 1) == Some(&b'\n') {
                i += 1;
            }
        } else {
            out.push(raw[i]);
        }
        i += 1;
    }
    out
}

fn clip(line: &str) -> String {
    if line.chars().count() <= 160 {
        line.to_string()
    } else {
        format!("{}…", line.chars().take(160).collect::<String>())
    }
}

/// A small line diff (LCS) of expected vs actual, for the failure message.
fn diff(expected: &str, actual: &str) -> String {
    let a: Vec<&str> = expected.lines().collect();
    let b: Vec<&str> = actual.lines().collect();
    if a.len() * b.len() > 4_000_000 {
        return format!("(too large to diff: {} vs {} lines)", a.len(), b.len());
    }
    let mut lcs = vec![vec![0u32; b.len() + 1]; a.len() + 1];
    for i in (0..a.len()).rev() {
        for j in (0..b.len()).rev() {
            lcs[i][j] = if a[i] == b[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let (mut i, mut j, mut out, mut shown) = (0, 0, String::new(), 0);
    while (i < a.len() || j < b.len()) && shown < 60 {
        if i < a.len() && j < b.len() && a[i] == b[j] {
            i += 1;
            j += 1;
        } else if j < b.len() && (i == a.len() || lcs[i][j + 1] >= lcs[i + 1][j]) {
            out.push_str(&format!("+{:>4} {}\n", j + 1, clip(b[j])));
            j += 1;
            shown += 1;
        } else {
            out.push_str(&format!("-{:>4} {}\n", i + 1, clip(a[i])));
            i += 1;
            shown += 1;
        }
    }
    out
}

#[test]
fn every_fixture_matches_its_reviewed_snapshot() {
    let update = std::env::var("UPDATE_SNAPSHOTS").is_ok_and(|v| v == "1");
    let files = fixtures();
    assert!(
        !files.is_empty(),
        "no fixtures found in {}",
        fixtures_dir().display()
    );
    let opts = options();
    let mut failures = Vec::new();
    for eml in &files {
        let raw = std::fs::read(eml).expect("fixture readable");
        let actual = render(&parse(&raw, &opts));
        let snapshot = eml.with_extension("json");
        let new_file = eml.with_extension("json.new");
        if update {
            std::fs::write(&snapshot, &actual).expect("write snapshot");
            let _ = std::fs::remove_file(&new_file);
            continue;
        }
        match std::fs::read_to_string(&snapshot) {
            Ok(expected) if expected == actual => {
                let _ = std::fs::remove_file(&new_file);
            }
            Ok(expected) => {
                std::fs::write(&new_file, &actual).expect("write .new");
                failures.push(format!(
                    "{}: draft differs from snapshot (actual in {}):\n{}",
                    eml.display(),
                    new_file.display(),
                    diff(&expected, &actual)
                ));
            }
            Err(_) => {
                std::fs::write(&new_file, &actual).expect("write .new");
                failures.push(format!(
                    "{}: no snapshot; review {} and rename it to .json (or run with UPDATE_SNAPSHOTS=1)",
                    eml.display(),
                    new_file.display()
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} fixtures differ:\n\n{}",
        failures.len(),
        files.len(),
        failures.join("\n")
    );
}

#[test]
fn lf_crlf_and_bare_cr_variants_give_the_same_draft() {
    let files = fixtures();
    assert!(!files.is_empty());
    let opts = options();
    for eml in &files {
        let raw = std::fs::read(eml).expect("fixture readable");
        let lf = to_lf(&raw);
        let crlf: Vec<u8> = lf
            .iter()
            .flat_map(|&b| {
                if b == b'\n' {
                    vec![b'\r', b'\n']
                } else {
                    vec![b]
                }
            })
            .collect();
        let cr: Vec<u8> = lf
            .iter()
            .map(|&b| if b == b'\n' { b'\r' } else { b })
            .collect();
        let from_lf = parse(&lf, &opts);
        assert_eq!(
            from_lf,
            parse(&crlf, &opts),
            "{}: CRLF differs from LF",
            eml.display()
        );
        assert_eq!(
            from_lf,
            parse(&cr, &opts),
            "{}: bare CR differs from LF",
            eml.display()
        );
        assert_eq!(
            from_lf,
            parse(&raw, &opts),
            "{}: original differs from LF",
            eml.display()
        );
    }
}

#[test]
fn snapshots_are_valid_drafts_for_the_schema_field_names() {
    // Every snapshot that is not an error round-trips through TicketDraft unchanged, so the
    // JSON field names are exactly the contract's.
    for eml in fixtures() {
        let Ok(text) = std::fs::read_to_string(eml.with_extension("json")) else {
            continue;
        };
        let value: serde_json::Value = serde_json::from_str(&text).expect("snapshot is JSON");
        if value.get("error").is_some() {
            continue;
        }
        let draft: TicketDraft =
            serde_json::from_value(value.clone()).expect("snapshot is a draft");
        assert_eq!(
            serde_json::to_value(&draft).expect("json"),
            value,
            "{}",
            eml.display()
        );
    }
}

#[test]
fn attachment_contents_match_the_listed_attachments() {
    let opts = options();
    let mut with_attachments = 0;
    for eml in fixtures() {
        let raw = std::fs::read(&eml).expect("fixture readable");
        let Ok(parsed) = parse_with_attachments(&raw, &opts) else {
            continue;
        };
        assert_eq!(
            Ok(&parsed.draft),
            parse(&raw, &opts).as_ref(),
            "{}",
            eml.display()
        );
        let listed = &parsed.draft.attachments;
        assert_eq!(
            listed.len(),
            parsed.attachment_contents.len(),
            "{}",
            eml.display()
        );
        for (a, content) in listed.iter().zip(&parsed.attachment_contents) {
            assert_eq!(
                a.size,
                content.len() as u64,
                "{}: {:?}",
                eml.display(),
                a.filename
            );
        }
        with_attachments += usize::from(!listed.is_empty());
    }
    assert!(
        with_attachments > 10,
        "fixtures with attachments: {with_attachments}"
    );
}
