//! IMAP over implicit TLS with SASL XOAUTH2 (the mailbox adapter).
