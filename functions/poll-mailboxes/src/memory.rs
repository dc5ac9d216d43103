//! How large a mail the poller may read whole, from the memory Lambda gives the function:
//! [`MemoryBudget`].
//!
//! Reading a mail costs a multiple of its size at its peak (measured with the counting
//! allocator of `shared/tests/parse_memory.rs` on 50 MB mails, `parse_with_attachments`, the
//! poller's one parse): a plain-text body 3.96x, a base64 attachment 2.47x, an HTML-only body
//! 1.98x of extra heap; on top of that the raw message itself (1x) and the IMAP read buffer it
//! was copied out of (up to 1x). [`PEAK_FACTOR`] = 6 covers the worst of these. The process
//! itself needs [`RESERVED_MB`] (17.8 MiB resident after init, BENCHMARKS.md, plus TLS sessions,
//! SDK clients and the ticket payload of the mail before it).
//!
//! So a function with `AWS_LAMBDA_FUNCTION_MEMORY_SIZE` = M MB reads at most
//! (M - 48) MiB / 6 whole (128 MB: 13.3 MiB, 256 MB: 34.7 MiB, 512 MB: 77.3 MiB); larger mail
//! becomes a header-only ticket like any mail over its mailbox's `max_message_bytes`. Mailboxes
//! are polled concurrently, so each mail also takes its estimated share of the budget for as
//! long as it is being read, and waits while other large mails hold it.

use tokio::sync::{Semaphore, SemaphorePermit};

/// Peak memory of reading one mail, as a multiple of its size (see the module docs).
pub const PEAK_FACTOR: u64 = 6;
/// Memory kept for the process itself (MB).
pub const RESERVED_MB: u64 = 48;
/// A mail whose reading takes more than this fraction (1/n) of the budget is read alone.
const ALONE_ABOVE_SHARE_OF: u64 = 8;

const KIB: u64 = 1024;
const MIB: u64 = 1024 * 1024;

/// The share of the function's memory that mails being read may use.
#[derive(Debug)]
pub struct MemoryBudget {
    /// KiB that reading mails may use at once.
    total_kib: u32,
    permits: Semaphore,
}

impl MemoryBudget {
    /// The budget of a function with `function_memory_mb` (None outside Lambda: unlimited),
    /// logged once at cold start.
    pub fn for_function(function_memory_mb: Option<u64>) -> Self {
        let budget = match function_memory_mb {
            Some(mb) => Self::for_function_memory(mb),
            None => Self::unlimited(),
        };
        tracing::info!(
            function_memory_mb,
            max_message_bytes = budget.max_message_bytes(),
            "mail larger than max_message_bytes (or a mailbox's own limit) becomes a header-only ticket"
        );
        budget
    }

    /// For a function with `memory_mb` MB (`AWS_LAMBDA_FUNCTION_MEMORY_SIZE`).
    pub fn for_function_memory(memory_mb: u64) -> Self {
        let usable = memory_mb.saturating_sub(RESERVED_MB).max(16) * MIB;
        Self::with_bytes(usable)
    }

    /// No practical limit (the operator CLI, tests that do not measure memory).
    pub fn unlimited() -> Self {
        Self::with_bytes(u64::from(u32::MAX / 2) * KIB)
    }

    fn with_bytes(bytes: u64) -> Self {
        let total_kib = (bytes / KIB).min(u64::from(u32::MAX / 2)) as u32;
        MemoryBudget {
            total_kib,
            permits: Semaphore::new(total_kib as usize),
        }
    }

    /// The largest mail read whole; larger ones become header-only tickets.
    pub fn max_message_bytes(&self) -> u64 {
        u64::from(self.total_kib) * KIB / PEAK_FACTOR
    }

    /// Take the estimated peak of reading a mail of `size` bytes, waiting while other mails
    /// hold the budget; given back when the permit is dropped.
    pub async fn reserve(&self, size: u64) -> SemaphorePermit<'_> {
        self.permits
            .acquire_many(self.share_of(size))
            .await
            .expect("the budget's semaphore is never closed")
    }

    /// Like [`MemoryBudget::reserve`], without waiting: None while other mails hold too much.
    pub fn try_reserve(&self, size: u64) -> Option<SemaphorePermit<'_>> {
        self.permits.try_acquire_many(self.share_of(size)).ok()
    }

    /// Whether reading a mail of `size` bytes whole takes more than an eighth of the budget
    /// (128 MB: above 1.67 MiB; 256 MB: 4.33 MiB): such a mail is read as a window of its own,
    /// named alone as the mail in flight, so that one whose size ends a run (memory, time) is
    /// known to the next run and parked unread. Smaller mail shares a window; a window a run
    /// died in is read again one mail at a time.
    pub fn reads_alone(&self, size: u64) -> bool {
        u64::from(self.share_of(size)) * ALONE_ABOVE_SHARE_OF > u64::from(self.total_kib)
    }

    fn share_of(&self, size: u64) -> u32 {
        size.saturating_mul(PEAK_FACTOR)
            .div_ceil(KIB)
            .clamp(1, u64::from(self.total_kib)) as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bound_follows_the_configured_memory() {
        let mib = |b: u64| b as f64 / MIB as f64;
        let at = |mb| mib(MemoryBudget::for_function_memory(mb).max_message_bytes());
        assert!((at(128) - 13.33).abs() < 0.01, "{}", at(128));
        assert!((at(256) - 34.67).abs() < 0.01, "{}", at(256));
        assert!((at(10240) - 1698.67).abs() < 0.01, "{}", at(10240));
        // below the reserve: still a small usable budget, never zero
        assert!(at(32) > 2.0);
    }

    #[tokio::test]
    async fn large_mails_wait_for_each_other_small_ones_do_not() {
        let budget = MemoryBudget::for_function_memory(256);
        let max = budget.max_message_bytes();
        let big = budget.reserve(max * 3 / 4).await;
        // A second large mail does not fit beside the first.
        assert!(
            tokio::time::timeout(
                std::time::Duration::from_millis(50),
                budget.reserve(max / 2)
            )
            .await
            .is_err()
        );
        // A small one does.
        drop(budget.reserve(64 * 1024).await);
        drop(big);
        drop(budget.reserve(max / 2).await);
        // Larger than everything: takes the whole budget instead of waiting forever.
        drop(budget.reserve(u64::MAX).await);
    }

    #[test]
    fn a_mail_taking_an_eighth_of_the_budget_is_read_alone() {
        let mib = |m: f64| (m * MIB as f64) as u64;
        let at_128 = MemoryBudget::for_function_memory(128);
        assert!(
            !at_128.reads_alone(mib(1.3)),
            "a mail with a 1 MB attachment"
        );
        assert!(!at_128.reads_alone(mib(1.66)));
        assert!(at_128.reads_alone(mib(1.67)));
        assert!(at_128.reads_alone(at_128.max_message_bytes()));
        let at_256 = MemoryBudget::for_function_memory(256);
        assert!(!at_256.reads_alone(mib(4.3)));
        assert!(at_256.reads_alone(mib(4.34)));
    }
}
