//! `mailbridge check [ACCOUNT|MAILBOX...]`: is everything a mailbox needs in working order?
//!
//! Per target, in order (a step that cannot run because an earlier one failed is "skipped"):
//! 1. the account secret reads and parses, and its status is `ok` (a status held for one
//!    audience only fails that audience's token step, below);
//! 2. an access token for each audience (Graph, IMAP), through the same [`TokenService`] the
//!    functions use (so a dead grant sets the account's status exactly as they would);
//! 3. Graph reachable with the Graph token — a **harmless** call the granted scope allows. With
//!    only `Mail.Send` there is nothing to read (`/me` needs `User.Read`), so the probe is a
//!    `sendMail` whose message has **no recipients**: Graph authenticates the token, checks the
//!    `Mail.Send` permission and the mailbox (`401`/`403 ErrorAccessDenied`/`404
//!    MailboxNotEnabledForRESTAPI`) before it validates the message, and then refuses it with
//!    `400 ErrorInvalidRecipients` — which proves everything up to sending works, and nothing is
//!    sent or saved;
//! 4. IMAP: TLS (verified), `AUTHENTICATE XOAUTH2` with the IMAP token and `SELECT` of the folder
//!    (a mailbox's own host/user/folder; for a bare account its `imap_host`, user and INBOX).
//!    A mailbox with `protocol: graph` is checked through Graph instead, with its own token
//!    (`Mail.ReadWrite`, and `.Shared` for `shared: true`): the mailbox opens and the folder is
//!    found by display name;
//! 5. per `--from MAILBOX`: may the account send from that (shared) mailbox on its
//!    `shared_mailbox_route`? The same recipient-less probe, with the mailbox as `from` on the
//!    route's endpoint: Graph judges the rights first (`403 ErrorSendAsDenied`: no Send As;
//!    `403 ErrorAccessDenied` on `/users/{mailbox}`: no Full Access, or no `Mail.Send.Shared` in
//!    the token, told apart by the token's granted scopes), and the step names the missing
//!    right and its fix in one line ([`mailbridge::send_rights::diagnose`]).
//!
//! 6. large messages: a message over Graph's request limit goes through a draft, which needs
//!    `Mail.ReadWrite`; a Graph token without it is a **warning** (the rest works; such messages
//!    would be parked as `graph-rejected` with 403 `ErrorAccessDenied`, nothing sent).
//!
//! Each step prints ✓, ⚠ (a warning) or ✗ with the reason, and for ⚠ and ✗ the fix. Exit code 3
//! when any step failed; warnings alone keep 0.

use std::time::Duration;

use anyhow::Result;
use mailbridge::graph::{
    GraphBody, GraphClient, GraphEmailAddress, GraphError, GraphMessage, GraphRecipient,
    MailSender as _, OutgoingMail, SendAs, SendMailRequest,
};
use mailbridge::imap::{ImapEndpoint, ImapError};
use mailbridge::mailbox::MailboxConfig;
use mailbridge::state_table::StateStore as _;
use mailbridge::token::{AccessToken, AccessTokenSource as _, AccountSecret, Audience, TokenError};
use serde::Serialize;

use super::context::{Context, Exit, human_duration, print_json};

/// Arguments of `mailbridge check`.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Without targets: every mailbox in the state table, plus every account secret no mailbox uses.
A target is a mailbox name when the state table has `mailbox#<name>`, else an account name.
Exit code 3 when any step failed.")]
pub struct CheckArgs {
    /// Accounts (secret names, with or without the prefix) or mailbox names.
    #[arg(value_name = "ACCOUNT|MAILBOX")]
    pub targets: Vec<String>,
    /// Seconds allowed per step.
    #[arg(long, default_value_t = 30, value_name = "SECONDS")]
    pub timeout: u64,
    /// Also check that the account may send from this (shared) mailbox on its
    /// shared_mailbox_route (repeatable; nothing is sent).
    #[arg(long, value_name = "MAILBOX")]
    pub from: Vec<String>,
}

/// One check result.
#[derive(Clone, Debug, Serialize)]
pub struct Step {
    /// What was checked.
    pub step: String,
    /// `ok`, `warning` (works, with a limit named in `detail`), `failed` or `skipped`.
    pub result: &'static str,
    /// What was found (or why it failed).
    pub detail: String,
    /// What to do about a failure.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

impl Step {
    fn ok(step: impl Into<String>, detail: impl Into<String>) -> Self {
        Step {
            step: step.into(),
            result: "ok",
            detail: detail.into(),
            fix: None,
        }
    }
    fn failed(step: impl Into<String>, detail: impl Into<String>, fix: impl Into<String>) -> Self {
        Step {
            step: step.into(),
            result: "failed",
            detail: detail.into(),
            fix: Some(fix.into()),
        }
    }
    fn warning(step: impl Into<String>, detail: impl Into<String>, fix: impl Into<String>) -> Self {
        Step {
            step: step.into(),
            result: "warning",
            detail: detail.into(),
            fix: Some(fix.into()),
        }
    }
    fn passed(&self) -> bool {
        matches!(self.result, "ok" | "warning")
    }
    fn skipped(step: impl Into<String>, why: impl Into<String>) -> Self {
        Step {
            step: step.into(),
            result: "skipped",
            detail: why.into(),
            fix: None,
        }
    }
}

/// What one target's checks found.
#[derive(Clone, Debug, Serialize)]
pub struct TargetReport {
    /// `mailbox` or `account`.
    pub kind: &'static str,
    /// Mailbox or account name.
    pub name: String,
    /// The account secret used.
    pub secret: Option<String>,
    /// All steps passed.
    pub ok: bool,
    /// The steps.
    pub steps: Vec<Step>,
}

/// Where the mailbox is checked: over IMAP, or (a mailbox with `protocol: graph`) through
/// Graph.
struct ImapTarget {
    host: String,
    port: u16,
    user: String,
    folder: String,
    /// `protocol: graph`: the token audience it is read with (Mail.ReadWrite[.Shared]).
    graph_mailbox: Option<Audience>,
}

enum Target {
    Mailbox(Box<MailboxConfig>),
    BadMailbox { name: String, problem: String },
    Account(String),
}

/// Run `mailbridge check`.
pub async fn run(ctx: &Context, args: CheckArgs) -> Result<Exit> {
    let targets = resolve_targets(ctx, &args.targets).await?;
    let timeout = Duration::from_secs(args.timeout.max(1));
    let mut reports = Vec::new();
    for target in targets {
        let report = check_target(ctx, target, timeout, &args.from).await;
        if !ctx.json() {
            print_report(&report);
        }
        reports.push(report);
    }
    let all_ok = reports.iter().all(|r| r.ok);
    if ctx.json() {
        print_json(&serde_json::json!({ "ok": all_ok, "targets": reports }));
    } else if reports.is_empty() {
        println!("nothing to check: no mailboxes in the state table and no account secrets");
    }
    Ok(if all_ok { Exit::Ok } else { Exit::Problems })
}

async fn resolve_targets(ctx: &Context, names: &[String]) -> Result<Vec<Target>> {
    let state = ctx.state_store().await.ok();
    if names.is_empty() {
        let Some(state) = state else {
            anyhow::bail!(
                "name an ACCOUNT or MAILBOX to check, or give --state-table / MAILBRIDGE_STATE_TABLE to check every mailbox"
            );
        };
        let mut targets = Vec::new();
        let mut used_accounts = Vec::new();
        for entry in state.load_mailboxes(None).await? {
            match entry {
                Ok(config) => {
                    used_accounts.push(ctx.secret_name(&config.account));
                    targets.push(Target::Mailbox(Box::new(config)));
                }
                Err(e) => targets.push(Target::BadMailbox {
                    name: e.mailbox.clone(),
                    problem: e.to_string(),
                }),
            }
        }
        // Only account secrets: the thread-marker key or ticket-API credentials may share the
        // prefix, and checking them as accounts would always fail.
        for (secret, _) in super::status::account_secrets(ctx).await? {
            if !used_accounts.contains(&secret) {
                targets.push(Target::Account(secret));
            }
        }
        return Ok(targets);
    }
    let mut targets = Vec::new();
    for name in names {
        let as_mailbox = match &state {
            Some(state) => state
                .load_mailboxes(Some(std::slice::from_ref(name)))
                .await?
                .pop(),
            None => None,
        };
        targets.push(match as_mailbox {
            Some(Ok(config)) => Target::Mailbox(Box::new(config)),
            Some(Err(e)) if e.field != "(item)" => Target::BadMailbox {
                name: name.clone(),
                problem: e.to_string(),
            },
            _ => Target::Account(ctx.secret_name(name)),
        });
    }
    Ok(targets)
}

async fn check_target(
    ctx: &Context,
    target: Target,
    timeout: Duration,
    send_from: &[String],
) -> TargetReport {
    let mut sink = None;
    let (kind, name, secret_name, imap) = match target {
        Target::BadMailbox { name, problem } => {
            return TargetReport {
                kind: "mailbox",
                name: name.clone(),
                secret: None,
                ok: false,
                steps: vec![Step::failed(
                    "mailbox configuration",
                    problem,
                    format!(
                        "fix the field and store it again with `mailbridge mailbox add {name} ...`"
                    ),
                )],
            };
        }
        Target::Mailbox(config) => (
            "mailbox",
            {
                sink = Some(config.sink.clone());
                config.name.clone()
            },
            ctx.secret_name(&config.account),
            Some(ImapTarget {
                host: config.host.clone(),
                port: config.port,
                user: config.user.clone(),
                folder: config.folder.clone(),
                graph_mailbox: (config.protocol == mailbridge::mailbox::Protocol::Graph)
                    .then(|| poll_mailboxes::poll::mailbox_audience(&config)),
            }),
        ),
        Target::Account(secret) => (
            "account",
            ctx.account_name(&secret).to_owned(),
            secret,
            None,
        ),
    };
    let mut steps = run_steps(ctx, &secret_name, imap, timeout, send_from).await;
    if let Some(sink) = &sink {
        steps.push(sink_probe(ctx, sink, timeout).await);
    }
    TargetReport {
        kind,
        name,
        ok: steps.iter().all(Step::passed),
        secret: Some(secret_name),
        steps,
    }
}

/// The mailbox's helpdesk: reached, credentials accepted, queue present.
async fn sink_probe(
    ctx: &Context,
    sink: &mailbridge::ticket_sink::SinkConfig,
    timeout: Duration,
) -> Step {
    use mailbridge::ticket_sink::TicketSinkError;
    let label = format!("helpdesk ({} at {})", sink.kind().as_str(), sink.url());
    let built = match ctx.sink_factory().await {
        Ok(factory) => factory.build(sink).await,
        Err(e) => Err(e.to_string()),
    };
    let adapter = match built {
        Ok(adapter) => adapter,
        Err(e) => {
            return Step::failed(
                label,
                e,
                "create the sink's credential secret (see docs/helpdesks.md) or fix the named field",
            );
        }
    };
    let deadline = tokio::time::Instant::now() + timeout;
    match adapter.check(deadline).await {
        Ok(check) => Step::ok(label, check.summary),
        Err(e) => {
            let fix = match &e {
                TicketSinkError::CredentialsRefused { .. } => {
                    "put working credentials in the sink's secret and give its user the rights docs/helpdesks.md lists"
                }
                TicketSinkError::Config { .. } => {
                    "fix the mailbox's sink (`mailbridge mailbox add ... --sink-json ...`)"
                }
                TicketSinkError::Unavailable { .. } => {
                    "check that the helpdesk is up and reachable from here"
                }
                _ => "see the detail",
            };
            Step::failed(label, e.to_string(), fix)
        }
    }
}

fn login_fix(ctx: &Context, secret_name: &str) -> String {
    format!(
        "run `mailbridge login --account {}`",
        ctx.account_name(secret_name)
    )
}

async fn run_steps(
    ctx: &Context,
    secret_name: &str,
    imap: Option<ImapTarget>,
    timeout: Duration,
    send_from: &[String],
) -> Vec<Step> {
    let mut steps = Vec::new();
    let step_secret = format!("account secret {secret_name}");
    let graph_step = "Graph reachable (sendMail probe, nothing sent)".to_owned();
    let imap_step_name = |t: &ImapTarget| match t.graph_mailbox {
        Some(_) => format!("Graph mailbox {} + folder {}", t.user, t.folder),
        None => format!(
            "IMAP {}:{} login as {} + SELECT {}",
            t.host, t.port, t.user, t.folder
        ),
    };
    let skip_rest = |steps: &mut Vec<Step>, imap: &Option<ImapTarget>, why: &str| {
        steps.push(Step::skipped("token (Graph)", why));
        // The token the mailbox is read with: a Graph mailbox's is not an IMAP token.
        let reading = match imap.as_ref().and_then(|t| t.graph_mailbox) {
            Some(_) => "token (Graph mailbox reading)",
            None => "token (IMAP)",
        };
        steps.push(Step::skipped(reading, why));
        steps.push(Step::skipped(graph_step.clone(), why));
        steps.push(Step::skipped(LARGE_MESSAGES_STEP, why));
        steps.push(Step::skipped(
            imap.as_ref()
                .map_or("IMAP login + SELECT".to_owned(), imap_step_name),
            why,
        ));
    };

    // 1. the secret
    let account = match ctx.read_account(secret_name).await {
        Ok(Some(account)) => account,
        Ok(None) => {
            steps.push(Step::failed(
                step_secret,
                "the secret does not exist",
                format!(
                    "run `mailbridge login --account {} --tenant TENANT --client-id APP_ID --user UPN`",
                    ctx.account_name(secret_name)
                ),
            ));
            skip_rest(&mut steps, &imap, "no account secret");
            return steps;
        }
        Err(e) => {
            steps.push(Step::failed(
                step_secret,
                format!("{e:#}"),
                format!(
                    "fix the named field, or write a new secret with {}",
                    login_fix(ctx, secret_name)
                ),
            ));
            skip_rest(&mut steps, &imap, "the account secret is unusable");
            return steps;
        }
    };
    let app_only_expiry = account.app_only.as_ref().and_then(|c| {
        c.expires_at()
            .map(|expires_at| mailbridge::token::expiry::CredentialExpiry {
                account: secret_name.to_owned(),
                credential: c.describe(),
                expires_at,
            })
    });
    let held_for = account.status.audience.filter(|_| {
        account.status.state == mailbridge::token::AccountState::NeedsReauth
            && account.refresh_token.is_some()
    });
    match account.status.state {
        _ if held_for.is_some() => {
            let held = held_for.map_or("", |a| a.label());
            steps.push(Step::ok(
                step_secret,
                format!(
                    "user {}, tenant {}, status needs_reauth for {held} only (the other audience is not held)",
                    account.username, account.tenant_id
                ),
            ));
        }
        mailbridge::token::AccountState::Ok if account.app_only.is_some() => {
            let credential = account
                .app_only
                .as_ref()
                .map(|c| c.describe())
                .unwrap_or_default();
            let now = chrono::Utc::now();
            match &app_only_expiry {
                Some(expiry) if expiry.warning(now).is_some() => steps.push(Step::warning(
                    step_secret.clone(),
                    format!(
                        "app-only mailbox {}, tenant {}: {}",
                        account.username,
                        account.tenant_id,
                        expiry.warning(now).unwrap_or_default()
                    ),
                    format!(
                        "add a new one, then store it: `mailbridge login --app --account {} --certificate FILE --private-key FILE` (or --client-secret-stdin --secret-expires DATE)",
                        ctx.account_name(secret_name)
                    ),
                )),
                Some(expiry) => steps.push(Step::ok(
                    step_secret.clone(),
                    format!(
                        "app-only mailbox {}, tenant {}, status ok, {credential} valid until {} ({} days)",
                        account.username,
                        account.tenant_id,
                        expiry.expires_at.format("%Y-%m-%d"),
                        expiry.days_left(now)
                    ),
                )),
                None => steps.push(Step::warning(
                    step_secret.clone(),
                    format!(
                        "app-only mailbox {}, tenant {}, status ok, {credential} with no stored end date",
                        account.username, account.tenant_id
                    ),
                    "store the client secret's end date (client_secret_expires_at, or `mailbridge login --app --secret-expires ...`) so its expiry is warned about 14 days ahead",
                )),
            }
        }
        mailbridge::token::AccountState::Ok if account.refresh_token.is_some() => {
            let age = account
                .refresh_token_stored_at
                .map(|t| {
                    format!(
                        ", refresh token stored {} ago",
                        human_duration(chrono::Utc::now() - t)
                    )
                })
                .unwrap_or_default();
            steps.push(Step::ok(
                step_secret,
                format!(
                    "user {}, tenant {}, status ok{age}",
                    account.username, account.tenant_id
                ),
            ));
        }
        mailbridge::token::AccountState::Ok => {
            steps.push(Step::failed(
                step_secret,
                "no refresh token stored (never signed in)",
                login_fix(ctx, secret_name),
            ));
            skip_rest(&mut steps, &imap, "no refresh token");
            return steps;
        }
        mailbridge::token::AccountState::NeedsReauth => {
            let reason = account.status.reason.clone().unwrap_or_default();
            let code = account.status.code.clone().unwrap_or_default();
            let since = account
                .status
                .since
                .map(|t| format!(" since {}", t.format("%Y-%m-%d %H:%M UTC")))
                .unwrap_or_default();
            steps.push(Step::failed(
                step_secret,
                format!("status needs_reauth{since}: {reason} [{code}]"),
                token_fix(
                    ctx,
                    secret_name,
                    None,
                    &account.graph_permissions(),
                    &format!("{reason} {code}"),
                ),
            ));
            skip_rest(&mut steps, &imap, "the account needs re-authentication");
            return steps;
        }
    }
    let imap = imap.unwrap_or_else(|| {
        let (host, port) = split_host_port(&account.imap_host);
        ImapTarget {
            host,
            port,
            user: account.username.clone(),
            folder: "INBOX".to_owned(),
            graph_mailbox: None,
        }
    });
    let imap_step = imap_step_name(&imap);

    // 2. tokens
    let tokens = match ctx.token_service().await {
        Ok(t) => t,
        Err(e) => {
            steps.push(Step::failed(
                "token (Graph)",
                format!("{e:#}"),
                "fix the setting named",
            ));
            return steps;
        }
    };
    let mut graph_token = None;
    let mut imap_token = None;
    // A Graph mailbox is read with a Graph token (Mail.ReadWrite), not IMAP.
    let reading = imap.graph_mailbox.unwrap_or(Audience::Imap);
    for audience in [Audience::Graph, reading] {
        let label = match audience {
            Audience::Imap => "token (IMAP)",
            Audience::Graph => "token (Graph)",
            _ => "token (Graph mailbox reading)",
        };
        match tokio::time::timeout(timeout, tokens.access_token(secret_name, audience)).await {
            Ok(Ok(token)) => {
                steps.push(Step::ok(
                    label,
                    format!(
                        "{} for {}, valid {} more",
                        account.scope_for(audience).replace(" offline_access", ""),
                        account.username,
                        human_duration(token.expires_at - chrono::Utc::now())
                    ),
                ));
                match audience {
                    Audience::Graph => graph_token = Some(token),
                    _ => imap_token = Some(token),
                }
            }
            Ok(Err(e)) => {
                let fix = match &e {
                    TokenError::NeedsReauth { reason, .. } => token_fix(
                        ctx,
                        secret_name,
                        Some(audience),
                        &account.graph_permissions(),
                        reason,
                    ),
                    TokenError::Transient { .. } => format!(
                        "the identity platform ({}) or Secrets Manager did not answer; check the network and authority_host, then retry",
                        account.authority_host
                    ),
                    TokenError::BadSecret { .. } => {
                        format!("fix the named field or {}", login_fix(ctx, secret_name))
                    }
                };
                steps.push(Step::failed(label, e.to_string(), fix));
            }
            Err(_) => steps.push(Step::failed(
                label,
                format!("no answer within {} s", timeout.as_secs()),
                format!("check that {} is reachable", account.authority_host),
            )),
        }
    }

    // 3. Graph
    let graph_url = ctx.graph_url(&account);
    match &graph_token {
        Some(token) => {
            steps.push(graph_probe(ctx, secret_name, &graph_url, token, &account, timeout).await)
        }
        None => steps.push(Step::skipped(graph_step, "no Graph token")),
    }

    // 3b. large messages (the draft route)
    match &graph_token {
        Some(token) => steps.push(large_messages_step(&account, token)),
        None => steps.push(Step::skipped(LARGE_MESSAGES_STEP, "no Graph token")),
    }

    // 4. IMAP, or the mailbox through Graph
    match (&imap_token, imap.graph_mailbox) {
        (Some(token), None) => {
            let app_client_id = account
                .app_only
                .is_some()
                .then_some(account.client_id.as_str());
            steps.push(imap_probe(ctx, &imap, token, imap_step, timeout, app_client_id).await)
        }
        (Some(token), Some(_)) => {
            steps.push(graph_mailbox_probe(&graph_url, &imap, token, imap_step, timeout).await)
        }
        (None, _) => steps.push(Step::skipped(
            imap_step,
            "no token to read the mailbox with",
        )),
    }

    // 5. sending from shared mailboxes
    for mailbox in send_from {
        let step = send_from_step_name(&account, mailbox);
        match &graph_token {
            Some(token) => steps
                .push(send_from_probe(&graph_url, token, &account, mailbox, step, timeout).await),
            None => steps.push(Step::skipped(step, "no Graph token")),
        }
    }
    steps
}

/// A mailbox read through Graph: the token opens it (`GET …/mailFolders/inbox`) and the polled
/// folder is found by display name. Nothing is changed.
async fn graph_mailbox_probe(
    graph_url: &str,
    target: &ImapTarget,
    token: &AccessToken,
    step: String,
    timeout: Duration,
) -> Step {
    let http = match mailbridge::http::default_client() {
        Ok(http) => http,
        Err(e) => return Step::failed(step, e.to_string(), "fix the TLS setup named"),
    };
    let client = match mailbridge::graph_mail::GraphMailbox::new(
        http,
        graph_url,
        &target.user,
        token.clone(),
        mailbridge::graph_mail::default_policy(),
    ) {
        Ok(c) => c,
        Err(e) => {
            return Step::failed(
                step,
                e.to_string(),
                "fix --graph-url / MAILBRIDGE_GRAPH_URL",
            );
        }
    };
    let deadline = tokio::time::Instant::now() + timeout;
    let shared = target.graph_mailbox == Some(Audience::GraphSharedMailbox);
    let rights = if shared {
        "the account's consent to Mail.ReadWrite and Mail.ReadWrite.Shared (Microsoft Graph, delegated) and Full Access on the mailbox"
    } else {
        "the account's consent to Mail.ReadWrite (Microsoft Graph, delegated); for another user's or a shared mailbox set `shared: true` and grant Full Access"
    };
    if let Err(e) = client.delta_probe(deadline).await {
        let fix = match &e {
            GraphError::Unauthorized { .. } | GraphError::Rejected { status: 403, .. } => {
                format!("check {rights}")
            }
            GraphError::Rejected { code, .. } if code == "MailboxNotEnabledForRESTAPI" => {
                "the mailbox has no Exchange Online licence, is inactive or on-premises".to_owned()
            }
            _ => format!("check that {graph_url} is reachable, then retry"),
        };
        return Step::failed(step, e.to_string(), fix);
    }
    match client.folder_id(&target.folder, false, deadline).await {
        Ok(Some(_)) => Step::ok(
            step,
            format!(
                "{} opened through Graph, folder {:?} found",
                target.user, target.folder
            ),
        ),
        Ok(None) => Step::failed(
            step,
            format!("no folder {:?} in {} (Graph)", target.folder, target.user),
            "fix the mailbox's `folder` (display names, `/` between nested folders)",
        ),
        Err(e) => Step::failed(step, e.to_string(), format!("check {rights}")),
    }
}

const LARGE_MESSAGES_STEP: &str = "large messages (Graph's draft route needs Mail.ReadWrite)";

/// Does the Graph token carry `Mail.ReadWrite`, which the draft route (messages over Graph's
/// request limit, about 3 MB of mail) needs? Without it everything else works: a warning.
fn large_messages_step(account: &AccountSecret, token: &AccessToken) -> Step {
    let limit = match account.max_message_bytes {
        Some(bytes) => format!("{bytes} bytes (the account's max_message_bytes)"),
        None => {
            "the send size limit (MAILBRIDGE_MAX_MESSAGE_BYTES, default 36700160 bytes)".to_owned()
        }
    };
    if token.scopes.is_empty() {
        return Step::skipped(
            LARGE_MESSAGES_STEP,
            "the identity platform did not say which permissions it granted",
        );
    }
    if token
        .scopes
        .iter()
        .any(|s| s.eq_ignore_ascii_case("Mail.ReadWrite"))
    {
        Step::ok(
            LARGE_MESSAGES_STEP,
            format!(
                "Mail.ReadWrite granted: messages over Graph's request limit (about 3 MB) up to {limit} go through a draft"
            ),
        )
    } else {
        Step::warning(
            LARGE_MESSAGES_STEP,
            format!(
                "the Graph token of {} lacks Mail.ReadWrite: messages up to about 3 MB are sent, but a larger one (up to {limit}) cannot go through a draft: Graph refuses the draft with 403 ErrorAccessDenied and the notification is parked as graph-rejected, nothing sent",
                account.username
            ),
            format!(
                "if this account sends messages over about 3 MB: grant admin consent for Mail.ReadWrite (Microsoft Graph, delegated; tokens carry every consented permission), or add it to the account secret's graph_scopes (now {}) so that sign-in asks for it",
                account.graph_permissions().join(" + ")
            ),
        )
    }
}

fn send_from_step_name(account: &AccountSecret, mailbox: &str) -> String {
    let route = account.shared_mailbox_route;
    let endpoint = match route.endpoint(Some(mailbox)) {
        SendAs::Me => "POST /me/sendMail with from".to_owned(),
        SendAs::User(m) => format!("POST /users/{m}/sendMail"),
    };
    format!(
        "send from {mailbox} (shared_mailbox_route {}: {endpoint}; probe without recipients, nothing sent)",
        route.as_str()
    )
}

/// May the account send from `mailbox`? A recipient-less sendMail with the mailbox as `from`
/// on the route's endpoint: the rights are judged before the recipients.
async fn send_from_probe(
    graph_url: &str,
    token: &AccessToken,
    account: &AccountSecret,
    mailbox: &str,
    step: String,
    timeout: Duration,
) -> Step {
    let client = match GraphClient::new(graph_url) {
        Ok(c) => c,
        Err(e) => return Step::failed(step, e.to_string(), "fix the Graph URL"),
    };
    let mut probe = recipientless_probe();
    probe.send_as = match account.app_only {
        Some(_) => SendAs::User(mailbox.to_owned()),
        None => account.shared_mailbox_route.endpoint(Some(mailbox)),
    };
    probe.request.message.from = Some(GraphRecipient {
        email_address: GraphEmailAddress {
            address: mailbox.to_owned(),
            name: None,
        },
    });
    match client.send_mail(token, &probe, timeout).await {
        Ok(_) | Err(GraphError::Rejected { status: 400, .. }) => Step::ok(
            step,
            format!(
                "{} may send from {mailbox}: Graph judged the rights and refused only the recipient-less probe",
                account.username
            ),
        ),
        Err(e) => {
            let missing = mailbridge::send_rights::diagnose(
                e.code(),
                account.shared_mailbox_route,
                mailbox,
                &token.scopes,
            );
            let fix = match missing {
                Some(right) => right.to_string(),
                None if e.code() == "ErrorAccessDenied" => "the token lacks Mail.Send, or an Exchange application access policy blocks the app: grant admin consent for Mail.Send (Microsoft Graph, delegated)".to_owned(),
                None => "see the Graph error code; Microsoft support needs the request-id".to_owned(),
            };
            Step::failed(step, e.to_string(), fix)
        }
    }
}

/// A sendMail request without recipients: Graph refuses it (400) after checking the token, the
/// permissions and the mailbox, so nothing can be sent or saved.
fn recipientless_probe() -> OutgoingMail {
    OutgoingMail {
        send_as: SendAs::Me,
        request: SendMailRequest {
            message: GraphMessage {
                subject: "mailbridge check (never delivered: no recipients)".to_owned(),
                body: GraphBody {
                    content_type: "text",
                    content: String::new(),
                },
                to_recipients: Vec::new(),
                cc_recipients: Vec::new(),
                bcc_recipients: Vec::new(),
                reply_to: Vec::new(),
                from: None,
                importance: None,
                attachments: Vec::new(),
                internet_message_headers: Vec::new(),
                internet_message_id: None,
            },
            save_to_sent_items: false,
        },
    }
}

pub(super) fn split_host_port(host: &str) -> (String, u16) {
    match host.rsplit_once(':') {
        Some((h, p)) if p.parse::<u16>().is_ok() => (h.to_owned(), p.parse().unwrap_or(993)),
        _ => (host.to_owned(), 993),
    }
}

/// The fix for a needs-a-person token failure, from the AADSTS code in `reason`.
fn token_fix(
    ctx: &Context,
    secret_name: &str,
    audience: Option<Audience>,
    graph_permissions: &[String],
    reason: &str,
) -> String {
    let graph = graph_permissions.join(" + ");
    let login = login_fix(ctx, secret_name);
    let code = regex::Regex::new(r"AADSTS(\d+)")
        .ok()
        .and_then(|re| re.captures(reason))
        .and_then(|c| c[1].parse::<u64>().ok());
    let permission = match audience {
        Some(Audience::Imap) => {
            "IMAP.AccessAsUser.All (Office 365 Exchange Online, delegated)".to_owned()
        }
        Some(Audience::Graph) => format!("{graph} (Microsoft Graph, delegated)"),
        Some(Audience::GraphMailbox) => "Mail.ReadWrite (Microsoft Graph, delegated)".to_owned(),
        Some(Audience::GraphSharedMailbox) => {
            "Mail.ReadWrite + Mail.ReadWrite.Shared (Microsoft Graph, delegated)".to_owned()
        }
        None => {
            format!(
                "{graph} (Microsoft Graph) and IMAP.AccessAsUser.All (Office 365 Exchange Online)"
            )
        }
    };
    match code {
        Some(65001 | 90094 | 90095 | 65004) => format!(
            "admin consent missing for {permission} — grant it in the app registration (API permissions → Grant admin consent), then {login}"
        ),
        Some(7000218) => format!(
            "set \"Allow public client flows\" = Yes in the app registration (Authentication), then {login}"
        ),
        Some(700016 | 700011) => {
            "the client id is wrong or the app is not registered in this tenant: check tenant_id/client_id, then run `mailbridge login`".to_owned()
        }
        Some(90002) => "the tenant does not exist: check tenant_id and authority_host".to_owned(),
        Some(50057) => "enable the user account in Entra ID, then ".to_owned() + &login,
        Some(50053) => "unlock the account (or wait), then ".to_owned() + &login,
        Some(50055 | 50144) => "change the user's password, then ".to_owned() + &login,
        Some(50126) => format!("the stored password is wrong: {login} (in a browser, no password needed)"),
        Some(53003 | 530032 | 530035 | 53000 | 53001) => format!(
            "a Conditional Access policy blocks this sign-in: exclude the app/user or allow the location/device, then {login}"
        ),
        Some(70011 | 700022) => "the scope is wrong for this cloud: check graph_host / imap_resource in the account secret (login --graph-host/--imap-resource)".to_owned(),
        _ => format!("{login} (in a browser, MFA works; --device-code where there is none)"),
    }
}

async fn graph_probe(
    ctx: &Context,
    secret_name: &str,
    graph_url: &str,
    token: &AccessToken,
    account: &AccountSecret,
    timeout: Duration,
) -> Step {
    let step =
        format!("Graph {graph_url} reachable (sendMail probe without recipients, nothing sent)");
    let client = match GraphClient::new(graph_url) {
        Ok(c) => c,
        Err(e) => {
            return Step::failed(
                step,
                e.to_string(),
                "fix --graph-url / MAILBRIDGE_GRAPH_URL or the account's graph_host",
            );
        }
    };
    let mut probe = recipientless_probe();
    // an app-only token has no `/me`: its mailbox is named
    probe.send_as = token.send_endpoint(None);
    match client.send_mail(token, &probe, timeout).await {
        Err(GraphError::Rejected {
            status: 400,
            code,
            request_id,
            ..
        }) => Step::ok(
            step,
            format!(
                "token and Mail.Send accepted for {} (probe refused as intended: 400 {code}, request-id {})",
                account.username,
                request_id.as_deref().unwrap_or("-")
            ),
        ),
        Ok(receipt) => Step::ok(
            step,
            format!(
                "Graph accepted the probe (202, request-id {}); it has no recipients, so nothing can be delivered",
                receipt.request_id.as_deref().unwrap_or("-")
            ),
        ),
        Err(e @ GraphError::Unauthorized { .. }) => Step::failed(
            step,
            e.to_string(),
            format!(
                "Graph refused the token: check that the Graph URL ({graph_url}) and the account's graph_host ({}) are the same cloud, then {}",
                account.graph_host,
                login_fix(ctx, secret_name)
            ),
        ),
        Err(e @ GraphError::Rejected { .. }) => {
            let fix = match e.code() {
                "ErrorAccessDenied" => "the token lacks Mail.Send, or an Exchange application access policy blocks the app: grant admin consent for Mail.Send (Microsoft Graph, delegated) and check access policies".to_owned(),
                "MailboxNotEnabledForRESTAPI" => format!(
                    "{} has no Exchange Online mailbox (no licence, on-premises or soft-deleted): assign a licence or use a cloud mailbox",
                    account.username
                ),
                _ => "see the Graph error code; Microsoft support needs the request-id".to_owned(),
            };
            Step::failed(step, e.to_string(), fix)
        }
        Err(e) => Step::failed(
            step,
            e.to_string(),
            format!(
                "Graph at {graph_url} did not answer normally; check the network / proxy and retry"
            ),
        ),
    }
}

async fn imap_probe(
    ctx: &Context,
    target: &ImapTarget,
    token: &AccessToken,
    step: String,
    timeout: Duration,
    app_client_id: Option<&str>,
) -> Step {
    let tls = match ctx.imap_tls() {
        Ok(tls) => tls,
        Err(e) => {
            return Step::failed(
                step,
                format!("{e:#}"),
                "fix --imap-ca-file / MAILBRIDGE_IMAP_CA_FILE",
            );
        }
    };
    let endpoint = ImapEndpoint {
        host: target.host.clone(),
        port: target.port,
        timeout,
    };
    let connection =
        mailbridge::imap::connect_and_login(&endpoint, tls, &target.user, &token.secret).await;
    let mut connection = match connection {
        Ok(c) => c,
        Err(e) => {
            let fix = imap_fix(&e, target, app_client_id);
            return Step::failed(step, e.to_string(), fix);
        }
    };
    let result = connection.select(&target.folder).await;
    connection.logout().await;
    match result {
        Ok(folder) => Step::ok(
            step,
            format!(
                "XOAUTH2 accepted; {} holds {} message(s) (UIDVALIDITY {})",
                target.folder, folder.exists, folder.uid_validity
            ),
        ),
        Err(e) => {
            let fix = imap_fix(&e, target, app_client_id);
            Step::failed(step, e.to_string(), fix)
        }
    }
}

/// The fix for an IMAP failure; `app_client_id`: the account is app-only (this application).
fn imap_fix(error: &ImapError, target: &ImapTarget, app_client_id: Option<&str>) -> String {
    if let (ImapError::AuthenticateFailed { .. }, Some(client_id)) = (error, app_client_id) {
        return format!(
            "the app-only IMAP token was refused for {}: check admin consent for IMAP.AccessAsApp (Office 365 Exchange Online, application permission), then {}",
            target.user,
            super::login_app::exchange_mailbox_fix(client_id, &target.user)
        );
    }
    match error {
        ImapError::AuthenticateFailed { .. } => format!(
            "the IMAP token was refused for {}: check admin consent for IMAP.AccessAsUser.All, that IMAP is enabled for the mailbox (Exchange admin center → mailbox → Email apps), and for a shared mailbox that the signing-in user has FullAccess",
            target.user
        ),
        ImapError::NotConnected { .. } => {
            "enable IMAP for this mailbox (Exchange admin center → mailbox → Email apps → IMAP) or check that the mailbox exists".to_owned()
        }
        ImapError::Connect { .. } | ImapError::Timeout { .. } => format!(
            "cannot reach {}:{}: check the host/port and that outbound 993 is allowed",
            target.host, target.port
        ),
        ImapError::Tls { .. } | ImapError::CaFile { .. } => {
            "the server certificate is not trusted: check the host name, or give a private CA with --imap-ca-file".to_owned()
        }
        ImapError::NoXoauth2 { .. } => {
            "this server does not offer XOAUTH2: point the mailbox at outlook.office365.com".to_owned()
        }
        ImapError::NoSuchFolder { .. } => format!(
            "folder {:?} does not exist: fix `folder` with `mailbridge mailbox add`",
            target.folder
        ),
        _ => "retry; if it persists, check the server's status".to_owned(),
    }
}

fn print_report(report: &TargetReport) {
    let secret = report
        .secret
        .as_deref()
        .map(|s| format!(" (account secret {s})"))
        .unwrap_or_default();
    println!("{} {}{secret}", report.kind, report.name);
    for step in &report.steps {
        let mark = match step.result {
            "ok" => "✓",
            "warning" => "⚠",
            "failed" => "✗",
            _ => "–",
        };
        println!("  {mark} {}: {}", step.step, step.detail);
        if let Some(fix) = &step.fix {
            println!("      fix: {fix}");
        }
    }
    println!(
        "  => {}",
        if report.ok {
            "all checks passed"
        } else {
            "PROBLEMS FOUND"
        }
    );
}
