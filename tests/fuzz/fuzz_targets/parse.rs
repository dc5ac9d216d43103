//! Fuzz target: `mailbridge::mail::parse` on arbitrary bytes must return a draft or an error,
//! never panic, and a draft must serialise to JSON. The seed corpus is
//! `tests/fixtures/mail` (pass it as the corpus directory).
#![no_main]

use libfuzzer_sys::fuzz_target;
use mailbridge::mail::{ParseOptions, parse};
use std::sync::LazyLock;

static OPTIONS: LazyLock<ParseOptions> = LazyLock::new(|| ParseOptions {
    thread_key: Some(b"mailbridge-test-thread-key".to_vec()),
    own_addresses: vec!["helpdesk@mailbridge.test".into()],
    ..ParseOptions::default()
});

fuzz_target!(
    init: {
        // libfuzzer-sys aborts on every panic, even one that is caught. `parse` deliberately
        // catches panics inside mail-parser (known on some inconsistent MIME trees, e.g.
        // tests/fixtures/mail/392-*) and reports `ParseError::InconsistentMime`, as the poller
        // needs; those must not count as crashes. A panic anywhere else still aborts.
        let abort_hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let in_mail_parser = info
                .location()
                .is_some_and(|l| l.file().contains("/mail-parser-"));
            if !in_mail_parser {
                abort_hook(info);
            }
        }));
    },
    |data: &[u8]| {
        if let Ok(draft) = parse(data, &OPTIONS) {
            let json = serde_json::to_string(&draft).expect("a draft always serialises");
            assert!(!json.is_empty());
            assert_eq!(draft.auto_generated, draft.auto_reason.is_some());
        }
    }
);
