//! Property tests of the mail parser: any input — random bytes, mutated real mail, generated
//! MIME trees — gives a draft or an error, never a panic; drafts survive a JSON round trip and
//! keep the basic invariants.

use mailbridge::mail::{ParseOptions, TicketDraft, parse, threading};
use proptest::prelude::*;
use std::path::Path;
use std::sync::LazyLock;

static FIXTURES: LazyLock<Vec<Vec<u8>>> = LazyLock::new(|| {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/mail");
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .expect("fixtures dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "eml"))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| std::fs::read(p).expect("fixture"))
        .filter(|raw| !raw.is_empty())
        .collect()
});

fn options() -> ParseOptions {
    ParseOptions {
        thread_key: Some(b"mailbridge-test-thread-key".to_vec()),
        own_addresses: vec!["helpdesk@mailbridge.test".into()],
        ..ParseOptions::default()
    }
}

/// The invariants every successful draft keeps.
fn check_draft(draft: &TicketDraft) {
    let json = serde_json::to_string(draft).expect("draft serialises");
    let back: TicketDraft = serde_json::from_str(&json).expect("draft deserialises");
    assert_eq!(&back, draft);
    assert_eq!(draft.auto_generated, draft.auto_reason.is_some());
    assert!(draft.bounce.is_none() || draft.auto_generated);
    assert_eq!(draft.ticket_number.is_some(), draft.thread_source.is_some());
    if !draft.body_text.trim().is_empty() {
        assert!(
            !draft.reply_text.trim().is_empty(),
            "reply_text emptied a non-empty body"
        );
    }
    assert!(!draft.subject.contains('\n'), "subject must be unfolded");
    for a in &draft.attachments {
        assert!(a.content_type.contains('/') || !a.content_type.is_empty());
    }
}

fn parse_and_check(raw: &[u8]) {
    if let Ok(draft) = parse(raw, &options()) {
        check_draft(&draft);
    }
}

/// One mutation of a byte string.
#[derive(Debug, Clone)]
enum Mutation {
    Flip(usize, u8),
    Truncate(usize),
    Delete(usize, usize),
    Insert(usize, Vec<u8>),
    Duplicate(usize, usize),
}

fn apply(raw: &mut Vec<u8>, m: &Mutation) {
    let len = raw.len().max(1);
    match m {
        Mutation::Flip(at, b) => {
            if !raw.is_empty() {
                let i = at % raw.len();
                raw[i] ^= b | 1;
            }
        }
        Mutation::Truncate(at) => raw.truncate(at % len),
        Mutation::Delete(at, n) => {
            let start = at % len;
            let end = (start + n % 64).min(raw.len());
            if start < end {
                raw.drain(start..end);
            }
        }
        Mutation::Insert(at, bytes) => {
            let i = (at % len).min(raw.len());
            raw.splice(i..i, bytes.iter().copied());
        }
        Mutation::Duplicate(at, n) => {
            let start = (at % len).min(raw.len());
            let end = (start + n % 256).min(raw.len());
            let chunk = raw[start..end].to_vec();
            raw.splice(start..start, chunk);
        }
    }
}

/// Fragments that stress MIME parsing when spliced in anywhere.
fn nasty_fragment() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        Just(b"\n--".to_vec()),
        Just(b"\r\n\r\n".to_vec()),
        Just(b"Content-Type: multipart/mixed; boundary=\"x\"\n".to_vec()),
        Just(b"Content-Transfer-Encoding: base64\n".to_vec()),
        Just(b"Content-Transfer-Encoding: quoted-printable\n".to_vec()),
        Just(b"=?utf-8?B?4oCc?=".to_vec()),
        Just(b"=?iso-2022-jp?B?GyRCJUYlOSVIGyhC?=".to_vec()),
        Just(b"filename*0*=utf-8''%E2%82; filename*1*=%AC".to_vec()),
        Just(b"\x1b$B%F%9%H\x1b(B".to_vec()),
        Just(b"\xff\xfe\x00".to_vec()),
        Just(b"<html><body><blockquote><div><p>".to_vec()),
        Just(b"\n-- \n".to_vec()),
        Just(b"[ref:1042.d9fe197d1b6df316]".to_vec()),
        Just(b"Content-Type: message/rfc822\n\n".to_vec()),
        Just(b"Content-Type: message/delivery-status\n\nFinal-Recipient: rfc822; a@b\nStatus: 5.1.1\n".to_vec()),
        proptest::collection::vec(any::<u8>(), 0..32),
    ]
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(a, b)| Mutation::Flip(a, b)),
        any::<usize>().prop_map(Mutation::Truncate),
        (any::<usize>(), any::<usize>()).prop_map(|(a, n)| Mutation::Delete(a, n)),
        (any::<usize>(), nasty_fragment()).prop_map(|(a, f)| Mutation::Insert(a, f)),
        (any::<usize>(), any::<usize>()).prop_map(|(a, n)| Mutation::Duplicate(a, n)),
    ]
}

/// A generated MIME tree (depth-limited) as raw bytes.
fn mime_tree() -> impl Strategy<Value = Vec<u8>> {
    let leaf = (
        prop_oneof![
            Just("text/plain; charset=utf-8"),
            Just("text/plain"),
            Just("text/html; charset=iso-8859-1"),
            Just("image/png; name=\"a.png\""),
            Just("message/delivery-status"),
            Just("application/octet-stream"),
            Just("text/plain; charset=iso-2022-jp"),
        ],
        prop_oneof![
            Just("7bit"),
            Just("base64"),
            Just("quoted-printable"),
            Just("8bit")
        ],
        proptest::collection::vec(any::<u8>(), 0..200),
        any::<bool>(),
    )
        .prop_map(|(ct, cte, body, attach)| {
            let mut out =
                format!("Content-Type: {ct}\nContent-Transfer-Encoding: {cte}\n").into_bytes();
            if attach {
                out.extend_from_slice(b"Content-Disposition: attachment; filename=\"f.bin\"\n");
            }
            out.push(b'\n');
            out.extend_from_slice(&body);
            out
        });
    leaf.prop_recursive(4, 24, 4, |inner| {
        (
            prop_oneof![
                Just("mixed"),
                Just("alternative"),
                Just("related"),
                Just("report; report-type=delivery-status"),
                Just("signed"),
            ],
            proptest::collection::vec(inner, 1..4),
            0u32..1000,
        )
            .prop_map(|(sub, children, n)| {
                let boundary = format!("b{n}");
                let mut out = format!("Content-Type: multipart/{sub}; boundary=\"{boundary}\"\n\n")
                    .into_bytes();
                for child in children {
                    out.extend_from_slice(format!("--{boundary}\n").as_bytes());
                    out.extend_from_slice(&child);
                    out.push(b'\n');
                }
                out.extend_from_slice(format!("--{boundary}--\n").as_bytes());
                out
            })
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(raw in proptest::collection::vec(any::<u8>(), 0..4096)) {
        parse_and_check(&raw);
    }

    #[test]
    fn arbitrary_text_with_header_never_panics(body in "\\PC{0,2000}", subject in "\\PC{0,200}") {
        let raw = format!("Subject: {subject}\nFrom: a@b.example\n\n{body}");
        let draft = parse(raw.as_bytes(), &options());
        prop_assert!(draft.is_ok(), "text with a header must parse: {:?}", draft.err());
        check_draft(&draft.expect("checked"));
    }

    #[test]
    fn mutated_fixtures_never_panic(
        index in any::<prop::sample::Index>(),
        mutations in proptest::collection::vec(mutation(), 1..8),
    ) {
        let mut raw = FIXTURES[index.index(FIXTURES.len())].clone();
        for m in &mutations {
            apply(&mut raw, m);
        }
        parse_and_check(&raw);
    }

    #[test]
    fn generated_mime_trees_parse(tree in mime_tree()) {
        let mut raw = b"From: Someone <someone@example.com>\nSubject: generated\nMIME-Version: 1.0\n".to_vec();
        raw.extend_from_slice(&tree);
        let draft = parse(&raw, &options());
        prop_assert!(draft.is_ok());
        check_draft(&draft.expect("checked"));
    }

    #[test]
    fn line_end_variants_agree_on_mutated_fixtures(
        index in any::<prop::sample::Index>(),
        mutations in proptest::collection::vec(mutation(), 0..3),
    ) {
        let mut raw = FIXTURES[index.index(FIXTURES.len())].clone();
        for m in &mutations {
            apply(&mut raw, m);
        }
        let lf: Vec<u8> = String::from_utf8_lossy(&raw).replace("\r\n", "\n").replace('\r', "\n").into_bytes();
        let crlf: Vec<u8> = lf.iter().flat_map(|&b| if b == b'\n' { vec![b'\r', b'\n'] } else { vec![b] }).collect();
        prop_assert_eq!(parse(&lf, &options()), parse(&crlf, &options()));
    }

    #[test]
    fn genuine_markers_thread_and_forged_ones_do_not(ticket in "[A-Za-z0-9_-]{1,20}", forged in "[0-9a-f]{16}") {
        let key = b"mailbridge-test-thread-key";
        let reference = threading::ticket_reference(&ticket, key);
        let raw = format!("From: c@d.example\nSubject: Re: hello\n\nthanks\n> {}", threading::body_footer_text(&reference));
        let draft = parse(raw.as_bytes(), &options()).expect("parses");
        prop_assert_eq!(draft.ticket_number.as_deref(), Some(ticket.as_str()));
        let forged_ref = format!("{ticket}.{forged}");
        prop_assume!(forged_ref != reference);
        let raw = format!("From: c@d.example\nSubject: Re: hello\n\n[ref:{forged_ref}]\n");
        let draft = parse(raw.as_bytes(), &options()).expect("parses");
        prop_assert_eq!(draft.ticket_number, None);
    }
}
