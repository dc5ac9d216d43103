//! Fuzz target: the queue-message decoder. `Notification::parse` on arbitrary text must return a
//! notification or an error, never panic. A notification that parses must be free of CR/LF in
//! every header-bound field, and (with `--features graph`) must build a Graph request that
//! serialises.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mailbridge::notification::Notification;

fuzz_target!(|data: &[u8]| {
    let Ok(body) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(n) = Notification::parse(body, "fuzz-sqs-id") {
        let crlf = |s: &str| s.contains(['\r', '\n']);
        assert!(!crlf(&n.subject));
        for r in n.to.iter().chain(&n.cc).chain(&n.bcc).chain(&n.reply_to) {
            assert!(!crlf(&r.address));
            assert!(!r.name.as_deref().is_some_and(crlf));
        }
        for a in &n.attachments {
            assert!(!crlf(&a.name));
        }
        for (k, v) in &n.headers {
            assert!(!crlf(k) && !crlf(v));
        }
        #[cfg(feature = "graph")]
        {
            use mailbridge::graph::{MessageExtras, OutgoingMail};
            let mail = OutgoingMail::from_notification(&n, MessageExtras::default());
            serde_json::to_string(&mail.request).expect("a Graph request always serialises");
        }
    }
});
