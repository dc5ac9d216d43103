//! `mailbridge parse <file.eml>`: print the ticket draft of one raw mail as one JSON object.
//!
//! The thread key comes from `MAILBRIDGE_THREAD_KEY` (hex) when set, so markers stamped by
//! send-notifications are verified exactly as the poller does.

use anyhow::{Context, Result, bail};
use mailbridge::mail::{ParseOptions, parse};
use std::io::{Read, Write as _};
use std::path::PathBuf;

/// Environment variable with the hex HMAC key of thread markers.
pub const THREAD_KEY_ENV: &str = "MAILBRIDGE_THREAD_KEY";

/// Arguments of `mailbridge parse`.
#[derive(Debug, clap::Args)]
pub struct ParseArgs {
    /// The raw message (RFC 5322 / .eml); `-` reads standard input.
    pub file: PathBuf,
    /// The helpdesk's own address (mail from it counts as a loop); repeatable.
    #[arg(long = "own-address", value_name = "ADDRESS")]
    pub own_addresses: Vec<String>,
    /// Extra subject pattern (regex) with the ticket number in group `ticket` or group 1;
    /// repeatable. `[Ticket#N]` is always recognised.
    #[arg(long = "subject-pattern", value_name = "REGEX")]
    pub subject_patterns: Vec<String>,
    /// Pretty-print the JSON.
    #[arg(long)]
    pub pretty: bool,
}

/// Reads the file, parses it and prints the draft.
pub fn run(args: &ParseArgs) -> Result<()> {
    let raw = read_input(&args.file)?;
    let opts = options(args)?;
    let draft =
        parse(&raw, &opts).with_context(|| format!("cannot parse {}", args.file.display()))?;
    let json = if args.pretty {
        serde_json::to_string_pretty(&draft)
    } else {
        serde_json::to_string(&draft)
    }
    .context("cannot serialise the draft")?;
    // `mailbridge parse x.eml | head`: a reader that stops early is not an error (println!
    // would panic on the broken pipe).
    let mut stdout = std::io::stdout().lock();
    match writeln!(stdout, "{json}").and_then(|()| stdout.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other.context("cannot write the draft to stdout"),
    }
}

fn read_input(path: &PathBuf) -> Result<Vec<u8>> {
    if path.as_os_str() == "-" {
        let mut raw = Vec::new();
        std::io::stdin()
            .read_to_end(&mut raw)
            .context("cannot read standard input")?;
        return Ok(raw);
    }
    std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
}

fn options(args: &ParseArgs) -> Result<ParseOptions> {
    let mut opts = ParseOptions::default();
    if let Ok(hex_key) = std::env::var(THREAD_KEY_ENV) {
        let hex_key = hex_key.trim();
        if !hex_key.is_empty() {
            match hex::decode(hex_key) {
                Ok(key) if !key.is_empty() => opts.thread_key = Some(key),
                _ => bail!("{THREAD_KEY_ENV} must be a non-empty hex string"),
            }
        }
    }
    opts.own_addresses = args.own_addresses.clone();
    for pattern in &args.subject_patterns {
        let regex = regex::Regex::new(pattern)
            .with_context(|| format!("--subject-pattern {pattern:?} is not a valid regex"))?;
        opts.subject_ticket_patterns.push(regex);
    }
    Ok(opts)
}
