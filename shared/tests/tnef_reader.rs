//! The TNEF (`winmail.dat`) reader on real files: `tests/fixtures/tnef/*.tnef` (see the README
//! there for where each comes from). Expected names, sizes and SHA-256 prefixes were
//! cross-checked against Python's `tnefparse` 1.4.0 on the same files.
#![cfg(feature = "mail")]

use mailbridge::mail::tnef;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/tnef")
}

fn load(name: &str) -> Vec<u8> {
    std::fs::read(fixtures_dir().join(name)).expect("fixture exists")
}

fn sha12(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))[..12].to_string()
}

/// (filename, size, first 12 hex digits of SHA-256, content type, content id)
type Expected = (
    &'static str,
    usize,
    &'static str,
    &'static str,
    Option<&'static str>,
);

fn check(name: &str, complete: bool, expected: &[Expected]) -> Vec<u8> {
    let bytes = load(name);
    let tnef = tnef::read(&bytes).unwrap_or_else(|| panic!("{name}: not read as TNEF"));
    assert_eq!(tnef.complete, complete, "{name}: complete");
    let got: Vec<(String, usize, String, String, Option<String>)> = tnef
        .attachments
        .iter()
        .map(|a| {
            (
                a.filename.clone().unwrap_or_default(),
                a.data.len(),
                sha12(a.data),
                a.content_type.clone(),
                a.content_id.clone(),
            )
        })
        .collect();
    let want: Vec<(String, usize, String, String, Option<String>)> = expected
        .iter()
        .map(|(f, n, h, c, id)| {
            (
                f.to_string(),
                *n,
                h.to_string(),
                c.to_string(),
                id.map(str::to_string),
            )
        })
        .collect();
    assert_eq!(got, want, "{name}");
    bytes
}

#[test]
fn one_and_two_files_with_mime_tags() {
    check(
        "one-file.tnef",
        true,
        &[(
            "AUTHORS",
            244,
            "36c47da7d118",
            "application/octet-stream",
            None,
        )],
    );
    check(
        "two-files.tnef",
        true,
        &[
            (
                "AUTHORS",
                244,
                "36c47da7d118",
                "application/octet-stream",
                None,
            ),
            (
                "README",
                893,
                "d0f163180d6a",
                "application/octet-stream",
                None,
            ),
        ],
    );
}

#[test]
fn the_long_filename_wins_over_the_8_3_title() {
    check(
        "long-filename.tnef",
        true,
        &[(
            "allproductsmar2000.dat",
            279,
            "de2ad5d4e20a",
            "application/octet-stream",
            None,
        )],
    );
}

#[test]
fn cp1252_names_and_inline_images_with_content_ids() {
    check(
        "umlaut.tnef",
        true,
        &[
            (
                "TBZ PARIV GmbH.jpg",
                44764,
                "67597116a0db",
                "image/jpeg",
                None,
            ),
            (
                "image003.jpg",
                1001,
                "49b597682736",
                "image/jpeg",
                Some("image003.jpg@01D2EE6A.85652C70"),
            ),
            (
                "UmlautAnhang-äüö.txt",
                14,
                "9b34b140af86",
                "text/plain",
                None,
            ),
        ],
    );
    let bytes = check(
        "unicode-mapi-attr-name.tnef",
        true,
        &[
            (
                "spaconsole2.cfg",
                8387,
                "4d9639506fa4",
                "application/octet-stream",
                None,
            ),
            (
                "image001.png",
                3815,
                "037f9d1fa06b",
                "image/png",
                Some("image001.png@01CF8C82.F4A2A290"),
            ),
            (
                "image002.png",
                3573,
                "ea179fb97a7e",
                "image/png",
                Some("image002.png@01CF8C82.F4A2A290"),
            ),
            (
                "image003.png",
                3792,
                "20c51557b9c7",
                "image/png",
                Some("image003.png@01CF8C82.F4A2A290"),
            ),
        ],
    );
    let tnef = tnef::read(&bytes).expect("tnef");
    assert!(
        tnef.body_html
            .as_deref()
            .is_some_and(|h| h.contains("cid:image001.png@01CF8C82.F4A2A290"))
    );
}

#[test]
fn empty_files_data_before_name_and_multi_valued_properties() {
    check(
        "data-before-name.tnef",
        true,
        &[
            (
                "AUTOEXEC.BAT",
                0,
                "e3b0c44298fc",
                "application/octet-stream",
                None,
            ),
            (
                "CONFIG.SYS",
                0,
                "e3b0c44298fc",
                "application/octet-stream",
                None,
            ),
            (
                "boot.ini",
                289,
                "a815374e3148",
                "application/octet-stream",
                None,
            ),
        ],
    );
    check(
        "multi-value-attribute.tnef",
        true,
        &[(
            "208225__5_seconds__Voice_Mail.mp3",
            10656,
            "cf2e3cd4175a",
            "audio/mp3",
            None,
        )],
    );
    check("multi-name-property.tnef", true, &[]);
}

#[test]
fn bodies_plain_html_and_rtf_only() {
    let bytes = load("triples.tnef");
    let tnef = tnef::read(&bytes).expect("tnef");
    assert!(tnef.complete);
    assert!(tnef.attachments.is_empty());
    let text = tnef.body_text.expect("attBody in cp1251");
    assert!(!text.is_empty() && !text.contains('\0'), "{text:?}");

    let bytes = load("body.tnef");
    let tnef = tnef::read(&bytes).expect("tnef");
    assert_eq!(tnef.body_text, None);
    assert!(
        tnef.body_html
            .expect("PR_HTML")
            .to_ascii_lowercase()
            .contains("<html")
    );
    assert!(!tnef.rtf_body_only);

    let bytes = load("unicode-mapi-attr.tnef");
    let tnef = tnef::read(&bytes).expect("tnef");
    assert!(tnef.body_html.expect("PR_HTML").contains("hello world"));
    assert_eq!(tnef.attachments.len(), 1);

    let bytes = load("rtf.tnef");
    let tnef = tnef::read(&bytes).expect("tnef");
    assert!(tnef.complete && tnef.rtf_body_only);
    assert!(tnef.body_text.is_none() && tnef.body_html.is_none());
}

#[test]
fn garbage_at_the_end_and_embedded_messages_are_incomplete() {
    check("garbage-at-end.tnef", false, &[]);
    // An attached Outlook item (a distribution list): not taken out, so `complete` is false
    // and the poller keeps the winmail.dat itself.
    check("IPM-DistList.tnef", false, &[]);
}

#[test]
fn every_prefix_and_bit_flip_of_real_files_reads_without_panicking() {
    for name in ["two-files.tnef", "umlaut.tnef", "unicode-mapi-attr.tnef"] {
        let bytes = load(name);
        let full = tnef::read(&bytes).expect("tnef");
        // Prefixes: never more than the whole file gives.
        let step = (bytes.len() / 700).max(1);
        for end in (0..bytes.len()).step_by(step) {
            if let Some(t) = tnef::read(&bytes[..end]) {
                assert!(t.attachments.len() <= full.attachments.len());
            }
        }
        // Flipped bytes in lengths, counts and types.
        let mut copy = bytes.clone();
        for i in (0..copy.len()).step_by(step) {
            let old = copy[i];
            for v in [0x00, 0xFF, old ^ 0x80] {
                copy[i] = v;
                let _ = tnef::read(&copy);
            }
            copy[i] = old;
        }
    }
}

fn mail_fixture(name: &str) -> Vec<u8> {
    std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/fixtures/mail")
            .join(name),
    )
    .expect("mail fixture exists")
}

#[test]
fn parse_with_attachments_hands_out_the_bytes_of_the_expanded_files() {
    use mailbridge::mail::{ParseOptions, parse_with_attachments};
    let parsed = parse_with_attachments(
        &mail_fixture("401-tnef-outlook-two-files.eml"),
        &ParseOptions::default(),
    )
    .expect("parses");
    let names: Vec<_> = parsed
        .draft
        .attachments
        .iter()
        .map(|a| a.filename.as_deref())
        .collect();
    assert_eq!(names, [Some("AUTHORS"), Some("README")]);
    let raw = load("two-files.tnef");
    let inside = tnef::read(&raw).expect("tnef");
    for (i, file) in inside.attachments.iter().enumerate() {
        assert_eq!(parsed.attachment_contents[i], file.data);
        assert_eq!(parsed.draft.attachments[i].size, file.data.len() as u64);
    }
    assert!(
        parsed.attachment_contents[0]
            .starts_with(b"\n                              Authors of tnef")
    );

    // A winmail.dat that is kept is handed out byte for byte.
    let parsed = parse_with_attachments(
        &mail_fixture("406-tnef-rtf-body-only-kept.eml"),
        &ParseOptions::default(),
    )
    .expect("parses");
    assert_eq!(parsed.draft.attachments.len(), 1);
    assert_eq!(parsed.attachment_contents[0], load("rtf.tnef"));
}

/// The real files, for the property tests.
fn real_files() -> Vec<Vec<u8>> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(fixtures_dir())
        .expect("tests/fixtures/tnef exists")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "tnef"))
        .collect();
    paths.sort();
    paths
        .into_iter()
        .map(|p| std::fs::read(p).expect("fixture"))
        .collect()
}

/// A mail with `tnef` as a binary winmail.dat part after a text body.
fn mail_with(tnef: &[u8]) -> Vec<u8> {
    let mut mail = b"From: a@example.com\r\nSubject: t\r\nMIME-Version: 1.0\r\n\
        Content-Type: multipart/mixed; boundary=zz\r\n\r\n--zz\r\nContent-Type: text/plain\r\n\r\n\
        body\r\n--zz\r\nContent-Type: application/ms-tnef; name=winmail.dat\r\n\
        Content-Transfer-Encoding: binary\r\n\r\n"
        .to_vec();
    mail.extend_from_slice(tnef);
    mail.extend_from_slice(b"\r\n--zz--\r\n");
    mail
}

mod props {
    use super::*;
    use mailbridge::mail::{ParseOptions, parse_with_attachments};
    use proptest::prelude::*;
    use std::sync::LazyLock;

    static FILES: LazyLock<Vec<Vec<u8>>> = LazyLock::new(real_files);

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        /// Random bytes after the signature: no panic; files lie inside the input.
        #[test]
        fn random_streams_read_without_panicking(body in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let mut stream = vec![0x78, 0x9F, 0x3E, 0x22, 0x01, 0x00];
            stream.extend_from_slice(&body);
            let read = tnef::read(&stream).expect("signature");
            let total: usize = read.attachments.iter().map(|a| a.data.len()).sum();
            prop_assert!(total <= stream.len());
        }

        /// Real files with bytes overwritten (lengths, counts, types) and cut: no panic, and the
        /// mail around them still parses, with one content per listed attachment.
        #[test]
        fn mutated_real_files_never_fail_the_mail(
            file in 0usize..64,
            edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..16),
            cut in any::<prop::sample::Index>(),
        ) {
            let files = &*FILES;
            let mut stream = files[file % files.len()].clone();
            for (at, value) in edits {
                let i = at.index(stream.len());
                stream[i] = value;
            }
            let keep = cut.index(stream.len() + 1).max(stream.len() / 2);
            stream.truncate(keep);
            let _ = tnef::read(&stream);
            let parsed = parse_with_attachments(&mail_with(&stream), &ParseOptions::default())
                .expect("a mail with a broken winmail.dat still parses");
            prop_assert_eq!(parsed.draft.attachments.len(), parsed.attachment_contents.len());
            for (listed, content) in parsed.draft.attachments.iter().zip(&parsed.attachment_contents) {
                prop_assert_eq!(listed.size, content.len() as u64);
            }
            prop_assert_eq!(parsed.draft.body_text.as_str(), "body");
        }
    }
}
