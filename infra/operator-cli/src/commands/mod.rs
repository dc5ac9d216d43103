//! The subcommands of `mailbridge`, one module each.

pub mod parse;
