//! The subcommands of `mailbridge`, one module each, plus [`context`] (global options, AWS and
//! token-layer wiring, output helpers) shared by them.

pub mod check;
pub mod context;
pub mod login;
pub mod login_app;
pub mod loopback;
pub mod mailbox;
pub mod parse;
pub mod poll;
pub mod send;
pub mod sendmail;
pub mod status;
