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
  `sendmail` exits with sendmail's codes instead: 0 queued, 64 bad command line, 65 a
  message that can never be sent, 75 AWS unreachable (retry later), 78 incomplete config

AWS endpoint, region and credentials come from the standard environment (AWS_REGION,
AWS_PROFILE, AWS_ACCESS_KEY_ID, AWS_ENDPOINT_URL ...) or --endpoint-url. Identity authority,
Graph host and IMAP host of an account come from its account secret (set them with `login`).";

/// Operator tool for mailbridge: sign accounts in (browser, device code, password or app-only),
/// check that tokens, Graph and IMAP work, send a test notification, preview a poll, show status,
/// manage mailbox configurations, and parse a raw mail into a ticket draft.
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
    /// Drop-in for the `sendmail` command a helpdesk calls: queue the message on stdin for
    /// send-notifications (-t -i -oi -f -F; exit codes 0/64/65/74/75/78 as sendmail's). Also
    /// runs when the binary is invoked as `sendmail`.
    Sendmail {
        /// sendmail options and recipients (see docs/outbound.md)
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

fn main() -> ExitCode {
    // `sendmail ...` (a link named sendmail) or `mailbridge sendmail ...`: sendmail's own
    // command line, which clap's conventions cannot parse (-oi, -fADDR).
    let argv: Vec<String> = std::env::args().collect();
    let invoked_as = argv.first().and_then(|a| {
        std::path::Path::new(a)
            .file_name()?
            .to_str()
            .map(str::to_owned)
    });
    if invoked_as.as_deref() == Some("sendmail") {
        return ExitCode::from(commands::sendmail::main(&argv[1..]));
    }
    if argv.get(1).map(String::as_str) == Some("sendmail") {
        return ExitCode::from(commands::sendmail::main(&argv[2..]));
    }
    let cli = Cli::parse();
    commands::context::init_logging();
    let result = match cli.command {
        Command::Parse(args) => commands::parse::run(&args).map(|()| Exit::Ok),
        Command::Sendmail { args } => return ExitCode::from(commands::sendmail::main(&args)),
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
            Command::Sendmail { .. } => unreachable!("sendmail runs without this runtime"),
        }
    })
}
