//! The local stack: real servers on 127.0.0.1 for tests and the demo.
//!
//! - [`moto`]: moto in server mode (SQS, Secrets Manager, DynamoDB), a Python subprocess.
//! - [`dovecot`]: a throwaway Dovecot (IMAPS, oauth2 passdb) from a generated config.
//! - [`identity`]: the Microsoft identity platform stand-in (token, devicecode, introspection).
//! - [`graph`]: the Microsoft Graph `sendMail` stand-in.
//! - [`ticket_api`]: the helpdesk ticket API stand-in.
//! - [`runtime_api`]: a Lambda Runtime API emulator to run the real `bootstrap` binaries.

pub mod dovecot;
pub mod graph;
pub mod identity;
pub mod moto;
pub mod runtime_api;
pub mod ticket_api;
