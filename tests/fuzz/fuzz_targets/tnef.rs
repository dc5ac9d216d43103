//! Fuzz target: the TNEF (`winmail.dat`) reader, `mailbridge::mail::tnef::read`, on arbitrary
//! bytes must never panic, never allocate from a claimed length, and only hand out files that
//! lie inside the input. Seeded from `tests/fixtures/tnef/*.tnef` (real Outlook files).
#![no_main]

use libfuzzer_sys::fuzz_target;
use mailbridge::mail::tnef;

fuzz_target!(|data: &[u8]| {
    if let Some(read) = tnef::read(data) {
        let total: usize = read.attachments.iter().map(|a| a.data.len()).sum();
        // Files borrow disjoint attribute data of the input.
        assert!(total <= data.len());
        assert!(read.attachments.len() <= tnef::MAX_ATTACHMENTS);
        for file in &read.attachments {
            let start = file.data.as_ptr() as usize;
            let base = data.as_ptr() as usize;
            assert!(start >= base && start + file.data.len() <= base + data.len());
        }
    }
});
