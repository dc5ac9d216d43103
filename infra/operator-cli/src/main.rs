//! `mailbridge`: the operator CLI. One module per subcommand under `commands/`; `main` only
//! parses arguments, dispatches, and turns the outcome into an exit code (errors: one line on
//! stderr, exit code 1).

mod commands;

use clap::{Parser, Subcommand};
use commands::context::{Context, Exit, GlobalArgs};
use std::process::ExitCode;

/// Text shown after `--help`: exit codes and the environment.
const AFTER_HELP: &str = "\
Exit codes:
  0  success (every check passed, mail queued/sent, ...)
  1  error (bad input, AWS/network failure, missing secret ...; one line on stderr)
  2  usage error (unknown option, missing argument)
  3  problems found: `check` had a failing step, `status` shows an account needing
     re-authentication or a mailbox whose last run failed
  4  `login` did not complete (declined, code expired, sign-in refused)

AWS endpoint, region and credentials come from the standard environment (AWS_REGION,
AWS_PROFILE, AWS_ACCESS_KEY_ID, AWS_ENDPOINT_URL ...) or --endpoint-url. Identity authority,
Graph host and IMAP host of an account come from its account secret (set them with `login`).";

/// Operator tool for mailbridge: sign accounts in (device code or password), check that
/// tokens, Graph and IMAP work, send a test notification, preview a poll, show status, manage
/// mailbox configurations, and parse a raw mail into a ticket draft.
#[derive(Debug, Parser)]
#[command(name = "mailbridge", version, after_help = AFTER_HELP)]
struct Cli {
    #[command(flatten)]
    global: GlobalArgs,
    #[command(subcommand)]
    command: Command,
}

/// The subcommands; each variant's arguments live in its module.
#[derive(Debug, Subcommand)]
enum Command {
    /// Sign a Microsoft 365 account in and store its refresh token in the account secret.
    Login(commands::login::LoginArgs),
    /// Check accounts and mailboxes: tokens per audience, Graph, IMAP login + SELECT.
    Check(commands::check::CheckArgs),
    /// Send a notification: enqueue it for send-notifications, or `--direct` through Graph.
    Send(commands::send::SendArgs),
    /// Show what the poller would turn into tickets, without posting or moving anything.
    Poll(commands::poll::PollArgs),
    /// Accounts (token age, status, reason) and mailboxes (last run outcome).
    Status(commands::status::StatusArgs),
    /// Add, list, show or remove mailbox configurations in the state table.
    #[command(subcommand)]
    Mailbox(commands::mailbox::MailboxCommand),
    /// Parse one raw mail (.eml) and print its ticket draft as one JSON object.
    Parse(commands::parse::ParseArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    commands::context::init_logging();
    let result = match cli.command {
        Command::Parse(args) => commands::parse::run(&args).map(|()| Exit::Ok),
        command => run_async(cli.global, command),
    };
    match result {
        Ok(exit) => ExitCode::from(exit as u8),
        Err(error) => {
            // One line: the error and its causes, newlines flattened.
            let line = format!("{error:#}").replace(['\n', '\r'], " ");
            eprintln!("mailbridge: error: {line}");
            let exit = error
                .downcast_ref::<commands::context::ExitError>()
                .map_or(Exit::Error, |e| e.exit);
            ExitCode::from(exit as u8)
        }
    }
}

fn run_async(global: GlobalArgs, command: Command) -> anyhow::Result<Exit> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let ctx = Context::new(global);
        match command {
            Command::Login(args) => commands::login::run(&ctx, args).await,
            Command::Check(args) => commands::check::run(&ctx, args).await,
            Command::Send(args) => commands::send::run(&ctx, args).await,
            Command::Poll(args) => commands::poll::run(&ctx, args).await,
            Command::Status(args) => commands::status::run(&ctx, args).await,
            Command::Mailbox(command) => commands::mailbox::run(&ctx, command).await,
            Command::Parse(_) => unreachable!("parse runs without the async runtime"),
        }
    })
}
