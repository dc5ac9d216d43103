//! Fuzz target: the header-block repairs and RFC 2047 decoding of `mailbridge::mail::parse`.
//! The input is a header block (stray lines, wrapped tokens, mbox `From ` lines, encoded-words
//! with raw 8-bit bytes, odd originators); a fixed body follows it. Besides "no panic": a draft
//! serialises, its subject and originator are unfolded, and the LF and CRLF forms of the
//! input give the same draft. Seeds: the header blocks of `tests/fixtures/mail` (`fuzz.sh`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use mailbridge::mail::{ParseOptions, parse};

fuzz_target!(|header: &[u8]| {
    let options = ParseOptions::default();
    let mut lf = header.to_vec();
    lf.extend_from_slice(b"\n\nThe body.\n");
    let from_lf = parse(&lf, &options);
    if let Ok(draft) = &from_lf {
        serde_json::to_string(draft).expect("a draft always serialises");
        assert!(!draft.subject.contains(['\r', '\n']), "subject is unfolded");
        if let Some(from) = &draft.from {
            assert!(!from.address.contains(['\r', '\n']), "originator address is unfolded");
            assert!(
                from.name.as_deref().is_none_or(|n| !n.contains(['\r', '\n'])),
                "originator name is unfolded"
            );
            assert!(
                !from.address.is_empty() || from.name.is_some(),
                "an originator has a name or an address"
            );
        }
    }
    if !header.contains(&b'\r') {
        let crlf: Vec<u8> = lf
            .iter()
            .flat_map(|&b| if b == b'\n' { vec![b'\r', b'\n'] } else { vec![b] })
            .collect();
        assert_eq!(from_lf, parse(&crlf, &options), "CRLF gives the LF draft");
    }
});
