//! `mailbridge status`: every account secret under the prefix (user, status and reason, age of
//! the stored refresh token) and every configured mailbox with its last run's outcome (from the
//! `mailbox-status#<name>` items poll-mailboxes writes). Reads only; exit code 3 when an account
//! needs re-authentication or a mailbox's last run failed.

use anyhow::{Context as _, Result};
use aws_sdk_secretsmanager::types::{Filter, FilterNameStringType};
use mailbridge::token::{AccountSecret, AccountState};
use poll_mailboxes::ports::StateStore as _;
use serde::Serialize;

use super::context::{Context, Exit, human_duration, print_json};

/// Arguments of `mailbridge status`.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Accounts are the secrets named <prefix>* holding an account secret (tenant_id/client_id).
Mailboxes need --state-table / MAILBRIDGE_STATE_TABLE. Exit code 3 when an account needs
re-authentication, is invalid, or a mailbox's last run failed.")]
pub struct StatusArgs {}

/// One account row.
#[derive(Clone, Debug, Serialize)]
pub struct AccountRow {
    /// Account name (secret name without the prefix).
    pub account: String,
    /// Secret name.
    pub secret: String,
    /// User principal name.
    pub user: Option<String>,
    /// `ok`, `needs_reauth`, `not_signed_in` or `invalid`.
    pub status: String,
    /// Why, when not ok.
    pub reason: Option<String>,
    /// AADSTS / OAuth code.
    pub code: Option<String>,
    /// When the status was entered.
    pub since: Option<String>,
    /// When the refresh token was stored.
    pub token_stored_at: Option<String>,
    /// Its age in seconds.
    pub token_age_seconds: Option<i64>,
}

/// One mailbox row.
#[derive(Clone, Debug, Serialize)]
pub struct MailboxRow {
    /// Mailbox name.
    pub mailbox: String,
    /// Login user.
    pub user: Option<String>,
    /// Account used.
    pub account: Option<String>,
    /// Polled at all.
    pub enabled: Option<bool>,
    /// Configuration problem, if any.
    pub config_error: Option<String>,
    /// Last run (None: never polled).
    pub last_run: Option<poll_mailboxes::ports::MailboxStatus>,
}

/// Names of the secrets under the prefix (paginated `ListSecrets` with a name filter).
pub async fn account_secret_names(ctx: &Context) -> Result<Vec<String>> {
    let client = aws_sdk_secretsmanager::Client::new(ctx.aws().await);
    let prefix = ctx.global.secret_prefix.clone();
    let mut names = Vec::new();
    let mut next: Option<String> = None;
    loop {
        let out = client
            .list_secrets()
            .filters(
                Filter::builder()
                    .key(FilterNameStringType::Name)
                    .values(prefix.clone())
                    .build(),
            )
            .max_results(100)
            .set_next_token(next.take())
            .send()
            .await
            .map_err(|e| {
                anyhow::anyhow!(
                    "ListSecrets (prefix {prefix}): {}",
                    aws_sdk_secretsmanager::error::DisplayErrorContext(e)
                )
            })?;
        for secret in out.secret_list() {
            if let Some(name) = secret.name()
                && name.starts_with(&prefix)
            {
                names.push(name.to_owned());
            }
        }
        match out.next_token() {
            Some(t) if !t.is_empty() => next = Some(t.to_owned()),
            _ => break,
        }
    }
    names.sort();
    names.dedup();
    Ok(names)
}

async fn account_rows(ctx: &Context) -> Result<Vec<AccountRow>> {
    let client = aws_sdk_secretsmanager::Client::new(ctx.aws().await);
    let mut rows = Vec::new();
    for secret in account_secret_names(ctx).await? {
        let value = client
            .get_secret_value()
            .secret_id(&secret)
            .send()
            .await
            .map_err(|e| {
                anyhow::anyhow!(
                    "GetSecretValue {secret}: {}",
                    aws_sdk_secretsmanager::error::DisplayErrorContext(e)
                )
            })?;
        let Some(text) = value.secret_string() else {
            continue;
        };
        // Only account secrets (other secrets may share the prefix: ticket API, thread key).
        let looks_like_account = serde_json::from_str::<serde_json::Value>(text)
            .ok()
            .and_then(|v| {
                v.as_object()
                    .map(|o| o.contains_key("tenant_id") || o.contains_key("client_id"))
            })
            .unwrap_or(false);
        if !looks_like_account {
            continue;
        }
        let account = ctx.account_name(&secret).to_owned();
        let row = match AccountSecret::parse(&secret, text) {
            Err(e) => AccountRow {
                account,
                secret,
                user: None,
                status: "invalid".into(),
                reason: Some(e.to_string()),
                code: None,
                since: None,
                token_stored_at: None,
                token_age_seconds: None,
            },
            Ok(a) => {
                let status = match (&a.status.state, a.refresh_token.is_some()) {
                    (AccountState::NeedsReauth, _) => "needs_reauth",
                    (AccountState::Ok, true) => "ok",
                    (AccountState::Ok, false) => "not_signed_in",
                };
                AccountRow {
                    account,
                    secret,
                    user: Some(a.username.clone()),
                    status: status.into(),
                    reason: a.status.reason.clone().or_else(|| {
                        (status == "not_signed_in")
                            .then(|| "no refresh token stored: run `mailbridge login`".to_owned())
                    }),
                    code: a.status.code.clone(),
                    since: a.status.since.map(|t| t.to_rfc3339()),
                    token_stored_at: a.refresh_token_stored_at.map(|t| t.to_rfc3339()),
                    token_age_seconds: a
                        .refresh_token_stored_at
                        .map(|t| (chrono::Utc::now() - t).num_seconds()),
                }
            }
        };
        rows.push(row);
    }
    Ok(rows)
}

async fn mailbox_rows(ctx: &Context) -> Result<Vec<MailboxRow>> {
    let state = ctx.state_store().await?;
    let mut rows = Vec::new();
    for entry in state
        .load_mailboxes(None)
        .await
        .context("read the mailbox configurations")?
    {
        let (name, config, config_error) = match entry {
            Ok(c) => (c.name.clone(), Some(c), None),
            Err(e) => (e.mailbox.clone(), None, Some(e.to_string())),
        };
        let last_run = state
            .get_status(&name)
            .await
            .context("read the mailbox status")?;
        rows.push(MailboxRow {
            mailbox: name,
            user: config.as_ref().map(|c| c.user.clone()),
            account: config.as_ref().map(|c| c.account.clone()),
            enabled: config.as_ref().map(|c| c.enabled),
            config_error,
            last_run,
        });
    }
    Ok(rows)
}

/// Run `mailbridge status`.
pub async fn run(ctx: &Context, _args: StatusArgs) -> Result<Exit> {
    let accounts = account_rows(ctx).await?;
    let mailboxes = match ctx.state_table() {
        Ok(_) => Some(mailbox_rows(ctx).await?),
        Err(_) => None,
    };
    let problems = accounts.iter().any(|a| a.status != "ok")
        || mailboxes.iter().flatten().any(|m| {
            m.config_error.is_some()
                || m.last_run.as_ref().is_some_and(|r| {
                    matches!(
                        r.outcome.as_str(),
                        "failed" | "needs_reauth" | "config_error"
                    )
                })
        });
    if ctx.json() {
        print_json(&serde_json::json!({
            "ok": !problems,
            "accounts": accounts,
            "mailboxes": mailboxes,
        }));
    } else {
        print_human(ctx, &accounts, mailboxes.as_deref());
    }
    Ok(if problems { Exit::Problems } else { Exit::Ok })
}

fn print_human(ctx: &Context, accounts: &[AccountRow], mailboxes: Option<&[MailboxRow]>) {
    println!("Accounts (secrets {}*):", ctx.global.secret_prefix);
    if accounts.is_empty() {
        println!("  none — add one with `mailbridge login`");
    }
    for a in accounts {
        let mark = if a.status == "ok" { "✓" } else { "✗" };
        let age = a
            .token_age_seconds
            .map(|s| {
                format!(
                    ", refresh token {} old",
                    human_duration(chrono::Duration::seconds(s))
                )
            })
            .unwrap_or_default();
        println!(
            "  {mark} {} ({}) — {}{age}",
            a.account,
            a.user.as_deref().unwrap_or("?"),
            a.status
        );
        if let Some(reason) = &a.reason {
            let code = a
                .code
                .as_deref()
                .map(|c| format!(" [{c}]"))
                .unwrap_or_default();
            println!("      reason: {reason}{code}");
        }
    }
    match mailboxes {
        None => println!("Mailboxes: give --state-table / MAILBRIDGE_STATE_TABLE to list them"),
        Some(rows) => {
            println!("Mailboxes:");
            if rows.is_empty() {
                println!("  none — add one with `mailbridge mailbox add`");
            }
            for m in rows {
                if let Some(problem) = &m.config_error {
                    println!("  ✗ {} — invalid configuration: {problem}", m.mailbox);
                    continue;
                }
                let who = format!(
                    "{} via {}",
                    m.user.as_deref().unwrap_or("?"),
                    m.account.as_deref().unwrap_or("?")
                );
                let disabled = if m.enabled == Some(false) {
                    " [disabled]"
                } else {
                    ""
                };
                match &m.last_run {
                    None => println!("  – {} ({who}){disabled} — never polled", m.mailbox),
                    Some(r) => {
                        let mark = match r.outcome.as_str() {
                            "ok" => "✓",
                            "partial" | "disabled" => "~",
                            _ => "✗",
                        };
                        println!(
                            "  {mark} {} ({who}){disabled} — last run {}: {} ({} ticket(s), {} parked, {} deferred)",
                            m.mailbox,
                            r.last_run_at,
                            r.outcome,
                            r.tickets_created,
                            r.parked,
                            r.deferred
                        );
                        if let Some(reason) = &r.reason {
                            println!("      reason: {reason}");
                        }
                    }
                }
            }
        }
    }
}
