//! `mailbridge`: the operator CLI. One module per subcommand under `commands/`; `main` only
//! parses arguments, dispatches, and turns an error into one line on stderr and exit code 1.

mod commands;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// Operator tool for mailbridge: parse mail into ticket drafts (and, from other modules,
/// consent, checks, test sends, dry-run polls, status).
#[derive(Debug, Parser)]
#[command(name = "mailbridge", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// The subcommands; each variant's arguments live in its module.
#[derive(Debug, Subcommand)]
enum Command {
    /// Parse one raw mail (.eml) and print its ticket draft as one JSON object.
    Parse(commands::parse::ParseArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Parse(args) => commands::parse::run(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            // One line: the error and its causes, newlines flattened.
            let line = format!("{error:#}").replace(['\n', '\r'], " ");
            eprintln!("mailbridge: error: {line}");
            ExitCode::FAILURE
        }
    }
}
