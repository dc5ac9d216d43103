//! Mail → ticket draft: a pure function from raw RFC 5322 bytes to a ticket draft.
