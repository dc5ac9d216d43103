//! The helpdesk ticket API client (the ticket sink adapter).
