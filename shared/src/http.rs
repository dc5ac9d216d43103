//! The HTTP client used for the identity platform, Graph and the ticket API.
