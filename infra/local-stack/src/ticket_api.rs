//! Helpdesk ticket API stand-in: records tickets, honours `Idempotency-Key`, test controls.
