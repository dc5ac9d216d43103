//! Helpdesk ticket API stand-in: records tickets, honours `Idempotency-Key`, test controls.
//!
//! Placeholder (answers 501 to everything) until the poller's issue replaces the body; the
//! signature below is the agreed contract used by [`crate::LocalStack`].

/// Handle to a running ticket API stand-in.
#[derive(Clone, Debug)]
pub struct TicketApiStandIn {
    /// e.g. `http://127.0.0.1:41237`.
    pub base_url: String,
}

impl TicketApiStandIn {
    /// Bind 127.0.0.1:0 and serve on the current tokio runtime.
    pub async fn start() -> anyhow::Result<Self> {
        let base_url = crate::serve_not_implemented("ticket API stand-in").await?;
        Ok(TicketApiStandIn { base_url })
    }
}
