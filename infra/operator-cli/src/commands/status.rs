//! `mailbridge status`: every account secret under the prefix (user, status and reason, age of
//! the stored refresh token) and every configured mailbox with its last run's outcome (from the
//! `mailbox-status#<name>` items poll-mailboxes writes), when it was last polled successfully,
//! and a run that started but wrote no result (its lease is still in the table: the run is going
//! on, or it was killed and the mailbox waits until the lease runs out). Reads only; exit code 3
//! when an account needs re-authentication or a mailbox's last run failed.

use anyhow::{Context as _, Result};
use aws_sdk_secretsmanager::types::{Filter, FilterNameStringType};
use mailbridge::state_table::StateStore as _;
use mailbridge::token::{AccountSecret, AccountState, Audience};
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
    /// The status of each audience (`graph`, `imap`): `ok` or `needs_reauth` with its reason
    /// and code; a status held for one audience leaves the other `ok`.
    pub audiences: Option<serde_json::Map<String, serde_json::Value>>,
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
    pub last_run: Option<mailbridge::state_table::MailboxStatus>,
    /// Seconds since the last successful poll (`last_run.last_success_at`), None if never.
    pub last_success_age_seconds: Option<i64>,
    /// A run that took the mailbox after the last recorded run ended and has recorded no result.
    pub run_without_result: Option<RunWithoutResult>,
}

/// A run that started working on a mailbox (it took the mailbox's lease) after the last
/// recorded run, and has not recorded a result: still running, or killed (Lambda timeout, out of
/// memory, a crash), in which case the mailbox waits until the lease runs out.
#[derive(Clone, Debug, Serialize)]
pub struct RunWithoutResult {
    /// When it took the lease (RFC 3339), if recorded.
    pub started_at: Option<String>,
    /// Until when the lease holds the mailbox (RFC 3339).
    pub lease_until: String,
    /// Whether the lease still holds the mailbox now.
    pub lease_active: bool,
}

/// The run behind `lease`, when it started after `last_run` ended (a lease left from a
/// finished run whose release failed is not one).
pub fn run_without_result(
    lease: &mailbridge::state_table::LeaseRecord,
    last_run: Option<&mailbridge::state_table::MailboxStatus>,
    now: chrono::DateTime<chrono::Utc>,
) -> Option<RunWithoutResult> {
    let parse = |t: &str| {
        chrono::DateTime::parse_from_rfc3339(t)
            .ok()
            .map(|t| t.with_timezone(&chrono::Utc))
    };
    let started = lease.started_at.as_deref().and_then(parse);
    let last_run_ended = last_run.and_then(|r| {
        parse(&r.last_run_at).map(|t| t + chrono::Duration::milliseconds(r.duration_ms as i64))
    });
    let after_last_run = match (started, last_run_ended) {
        (Some(started), Some(ended)) => started > ended,
        // an older lease without its start time, or no run recorded yet: say what is known
        _ => true,
    };
    after_last_run.then(|| RunWithoutResult {
        started_at: lease.started_at.clone(),
        lease_until: chrono::DateTime::from_timestamp(lease.until, 0)
            .map(|t| t.to_rfc3339())
            .unwrap_or_else(|| lease.until.to_string()),
        lease_active: lease.until > now.timestamp(),
    })
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
                    mailbridge::error::error_chain(&e)
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

/// Whether a secret's value is an account secret (a JSON object with `tenant_id` or
/// `client_id`). Other secrets may share the prefix: the thread-marker key (a plain string, kept
/// there by the demo and by deployments that chose such a name), ticket-API credentials.
pub fn looks_like_account(value: &str) -> bool {
    serde_json::from_str::<serde_json::Value>(value)
        .ok()
        .and_then(|v| {
            v.as_object()
                .map(|o| o.contains_key("tenant_id") || o.contains_key("client_id"))
        })
        .unwrap_or(false)
}

/// The account secrets under the prefix: (name, value) of each secret whose value
/// [`looks_like_account`].
pub async fn account_secrets(ctx: &Context) -> Result<Vec<(String, String)>> {
    let client = aws_sdk_secretsmanager::Client::new(ctx.aws().await);
    let mut secrets = Vec::new();
    for secret in account_secret_names(ctx).await? {
        let value = client
            .get_secret_value()
            .secret_id(&secret)
            .version_stage("AWSCURRENT")
            .send()
            .await
            .map_err(|e| {
                anyhow::anyhow!(
                    "GetSecretValue {secret}: {}",
                    mailbridge::error::error_chain(&e)
                )
            })?;
        match value.secret_string() {
            Some(text) if looks_like_account(text) => secrets.push((secret, text.to_owned())),
            _ => {}
        }
    }
    Ok(secrets)
}

async fn account_rows(ctx: &Context) -> Result<Vec<AccountRow>> {
    let mut rows = Vec::new();
    for (secret, text) in account_secrets(ctx).await? {
        let text = text.as_str();
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
                audiences: None,
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
                    audiences: Some(audience_rows(&a, status)),
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

/// `{"graph": {"status": ...}, "imap": {...}}` for one account.
fn audience_rows(a: &AccountSecret, status: &str) -> serde_json::Map<String, serde_json::Value> {
    [Audience::Graph, Audience::Imap]
        .into_iter()
        .map(|audience| {
            let row = if a.status.applies_to(audience) {
                serde_json::json!({
                    "status": "needs_reauth",
                    "reason": a.status.reason,
                    "code": a.status.code,
                })
            } else if status == "not_signed_in" {
                serde_json::json!({ "status": "not_signed_in" })
            } else {
                serde_json::json!({ "status": "ok" })
            };
            (audience.as_str().to_owned(), row)
        })
        .collect()
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
        let lease = state
            .get_mailbox_lease(&name)
            .await
            .context("read the mailbox lease")?;
        let now = chrono::Utc::now();
        rows.push(MailboxRow {
            mailbox: name,
            user: config.as_ref().map(|c| c.user.clone()),
            account: config.as_ref().map(|c| c.account.clone()),
            enabled: config.as_ref().map(|c| c.enabled),
            config_error,
            last_success_age_seconds: last_run.as_ref().and_then(|r| {
                r.last_success_at.as_ref()?;
                r.seconds_without_success(now)
            }),
            run_without_result: lease
                .as_ref()
                .and_then(|l| run_without_result(l, last_run.as_ref(), now)),
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
        // "needs_reauth (IMAP only; Graph ok)" when one audience is held.
        let per_audience = a
            .audiences
            .as_ref()
            .filter(|rows| a.status == "needs_reauth" && rows.values().any(|r| r["status"] == "ok"))
            .map(|rows| {
                let label = |key: &str| if key == "imap" { "IMAP" } else { "Graph" };
                let held: Vec<&str> = rows
                    .iter()
                    .filter(|(_, r)| r["status"] != "ok")
                    .map(|(k, _)| label(k))
                    .collect();
                let fine: Vec<&str> = rows
                    .iter()
                    .filter(|(_, r)| r["status"] == "ok")
                    .map(|(k, _)| label(k))
                    .collect();
                format!(" ({} only; {} ok)", held.join(", "), fine.join(", "))
            })
            .unwrap_or_default();
        println!(
            "  {mark} {} ({}) — {}{per_audience}{age}",
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
                        if r.held > 0 {
                            println!(
                                "      held: {} mail(s) over their sender's hourly quota, in `held_folder` (move back to post)",
                                r.held
                            );
                        }
                        match (&r.last_success_at, m.last_success_age_seconds) {
                            (Some(at), Some(age)) => println!(
                                "      last success: {at} ({} ago)",
                                human_duration(chrono::Duration::seconds(age))
                            ),
                            _ => println!("      last success: never"),
                        }
                    }
                }
                if let Some(run) = &m.run_without_result {
                    let started = run.started_at.as_deref().unwrap_or("(time not recorded)");
                    if run.lease_active {
                        println!(
                            "      ⚠ run started {started}, no result yet; lease until {}: still running, or killed (then the mailbox waits until the lease runs out)",
                            run.lease_until
                        );
                    } else {
                        println!(
                            "      ⚠ run started {started} recorded no result (killed or timed out?); its lease ran out {}",
                            run.lease_until
                        );
                    }
                }
            }
        }
    }
}
