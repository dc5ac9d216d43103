//! Wall clock as a port, so tests can simulate days and weeks passing (refresh-token
//! write-back, the 90-day inactivity window) without waiting.

use std::sync::Mutex;

use chrono::{DateTime, Utc};

/// Source of "now".
pub trait Clock: Send + Sync {
    /// The current time.
    fn now(&self) -> DateTime<Utc>;
}

/// The real clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// Real time plus an offset that tests move forward.
#[derive(Debug, Default)]
pub struct OffsetClock {
    offset: Mutex<chrono::Duration>,
}

impl OffsetClock {
    /// Starts at the real time.
    pub fn new() -> Self {
        Self::default()
    }

    /// Jump forward by `by`.
    pub fn advance(&self, by: chrono::Duration) {
        *self.offset.lock().expect("clock lock") += by;
    }
}

impl Clock for OffsetClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now() + *self.offset.lock().expect("clock lock")
    }
}
