//! `mailbridge login --app`: store an app-only account (the application's certificate or
//! client secret, no user) after proving it works: a token for each audience the account will
//! use, and the application permission each one needs (the token's `roles`) named with its fix
//! when the token lacks it. For IMAP it then logs in to the mailbox with the token (XOAUTH2,
//! nothing read): only that proves Exchange Online lets the service principal in. Nothing is
//! stored when the identity platform refuses the credential; a missing permission or mailbox
//! access is a warning (the account is stored, `mailbridge check` shows it again).

use std::io::BufRead as _;

use anyhow::{Context as _, Result, bail};
use chrono::{DateTime, Utc};
use mailbridge::token::app_credential::{AppCertificate, AppCredential, token_roles};
use mailbridge::token::login::store_account;
use mailbridge::token::oauth_error::TokenEndpointError;
use mailbridge::token::{AccountSecret, Audience};
use secrecy::{ExposeSecret as _, SecretString};

use super::context::{Context, Exit, ExitError, print_json};
use super::login::LoginArgs;

/// How long the IMAP login probe may take.
const IMAP_PROBE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(20);

/// The Exchange Online side of app-only IMAP: the service principal registered in Exchange and
/// given access to the mailbox (Microsoft's "Authenticate an IMAP, POP or SMTP connection using
/// OAuth", client credentials section).
pub(super) fn exchange_mailbox_fix(client_id: &str, mailbox: &str) -> String {
    format!(
        "in Exchange Online PowerShell register the app's service principal and give it the mailbox: New-ServicePrincipal -AppId {client_id} -ServiceId <Object ID of the Enterprise application, not of the app registration>; Add-MailboxPermission -Identity {mailbox} -User <that service principal> -AccessRights FullAccess; and check that IMAP is enabled for the mailbox"
    )
}

/// Log in to the account's IMAP server as the mailbox with the app-only token (XOAUTH2, then
/// LOGOUT): the check (ok/warning), its detail and fix.
async fn imap_login_probe(
    ctx: &Context,
    account: &AccountSecret,
    token: &SecretString,
) -> (&'static str, String, Option<String>) {
    use mailbridge::imap::{ImapEndpoint, ImapError};
    let (host, port) = super::check::split_host_port(&account.imap_host);
    let tls = match ctx.imap_tls() {
        Ok(tls) => tls,
        Err(e) => {
            return (
                "warning",
                format!("no IMAP login tried: {e:#}"),
                Some("fix --imap-ca-file / MAILBRIDGE_IMAP_CA_FILE".to_owned()),
            );
        }
    };
    let endpoint = ImapEndpoint {
        host: host.clone(),
        port,
        timeout: IMAP_PROBE_TIMEOUT,
    };
    match mailbridge::imap::connect_and_login(&endpoint, tls, &account.username, token).await {
        Ok(connection) => {
            connection.logout().await;
            (
                "ok",
                format!(
                    "XOAUTH2 login to {} on {host}:{port} accepted",
                    account.username
                ),
                None,
            )
        }
        Err(e @ ImapError::AuthenticateFailed { .. }) => (
            "warning",
            format!(
                "{host}:{port} refused the token for {}: {e}",
                account.username
            ),
            Some(exchange_mailbox_fix(&account.client_id, &account.username)),
        ),
        Err(e) => (
            "warning",
            format!("no IMAP login to {host}:{port}: {e}"),
            Some(
                "check the IMAP host and the network, then `mailbridge check` (or --audience graph for a send-only account)"
                    .to_owned(),
            ),
        ),
    }
}

/// The application permission an audience's app-only token must carry, and where it lives.
fn needed_role(audience: Audience) -> (&'static [&'static str], &'static str) {
    match audience {
        Audience::Graph => (
            &["Mail.Send"],
            "Microsoft Graph → Application permissions → Mail.Send",
        ),
        Audience::Imap => (
            &["IMAP.AccessAsApp"],
            "Office 365 Exchange Online → Application permissions → IMAP.AccessAsApp",
        ),
        Audience::GraphMailbox | Audience::GraphSharedMailbox => (
            &["Mail.ReadWrite", "Mail.Read"],
            "Microsoft Graph → Application permissions → Mail.ReadWrite",
        ),
    }
}

/// What one audience's check found.
#[derive(serde::Serialize)]
struct AudienceCheck {
    audience: &'static str,
    /// `ok`, `warning` or `failed`.
    result: &'static str,
    detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    fix: Option<String>,
}

/// The audiences `--audience` names (default: Graph and IMAP).
fn audiences(args: &LoginArgs) -> Result<Vec<Audience>> {
    if args.audience.is_empty() {
        return Ok(vec![Audience::Graph, Audience::Imap]);
    }
    args.audience
        .iter()
        .map(|a| {
            Audience::parse(a)
                .with_context(|| format!("--audience {a:?}: expected graph, imap or graph_mailbox"))
        })
        .collect()
}

fn read_file(flag: &str, path: &std::path::Path) -> Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("{flag} {}", path.display()))
}

/// The credential the flags give (or the stored one, when no flag names a new one).
fn credential(args: &LoginArgs, existing: Option<&AccountSecret>) -> Result<AppCredential> {
    let expires = args.secret_expires.as_deref().map(parse_date).transpose()?;
    match (
        &args.certificate,
        &args.private_key,
        args.client_secret_stdin,
    ) {
        (Some(cert), Some(key), false) => {
            if expires.is_some() {
                bail!(
                    "--secret-expires belongs to a client secret; a certificate's end date is its notAfter"
                );
            }
            let certificate = read_file("--certificate", cert)?;
            let key = SecretString::from(read_file("--private-key", key)?);
            let certificate = AppCertificate::from_pem(&certificate, key)
                .map_err(|problem| anyhow::anyhow!("--certificate/--private-key: {problem}"))?;
            Ok(AppCredential::Certificate(Box::new(certificate)))
        }
        (None, None, true) => {
            let mut line = String::new();
            std::io::stdin()
                .lock()
                .read_line(&mut line)
                .context("read the client secret from stdin")?;
            let secret = line.trim_end_matches(['\n', '\r']).to_owned();
            if secret.is_empty() {
                bail!("--client-secret-stdin: stdin was empty");
            }
            if expires.is_none() {
                eprintln!(
                    "mailbridge: no --secret-expires: nothing will warn before the client secret expires (give its end date, as shown under Certificates & secrets)"
                );
            }
            Ok(AppCredential::ClientSecret {
                secret: SecretString::from(secret),
                expires_at: expires,
            })
        }
        (None, None, false) => match existing.and_then(|e| e.app_only.clone()) {
            Some(AppCredential::ClientSecret { secret, expires_at }) => {
                Ok(AppCredential::ClientSecret {
                    secret,
                    expires_at: expires.or(expires_at),
                })
            }
            Some(stored) => Ok(stored),
            None => bail!(
                "--app needs a credential: --certificate FILE --private-key FILE, or --client-secret-stdin [--secret-expires DATE]"
            ),
        },
        (Some(_), None, _) | (None, Some(_), _) => {
            bail!("--certificate and --private-key go together")
        }
        _ => bail!("give either --certificate/--private-key or --client-secret-stdin, not both"),
    }
}

fn parse_date(text: &str) -> Result<DateTime<Utc>> {
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Ok(t.with_timezone(&Utc));
    }
    let day = chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d")
        .with_context(|| format!("--secret-expires {text:?}: expected YYYY-MM-DD or RFC 3339"))?;
    Ok(day.and_time(chrono::NaiveTime::MIN).and_utc())
}

/// Run `mailbridge login --app`.
pub async fn run(ctx: &Context, args: &LoginArgs) -> Result<Exit> {
    let account_name = args
        .account
        .clone()
        .or_else(|| args.user.clone())
        .context("name the account with --account NAME or --user MAILBOX")?;
    let secret_name = ctx.secret_name(&account_name);
    let existing = ctx.read_account(&secret_name).await.ok().flatten();
    let credential = credential(args, existing.as_ref())?;
    let (tenant, client_id, mailbox) = match (&args.tenant, &args.client_id, &args.user, &existing)
    {
        (Some(t), Some(c), Some(u), _) => (t.clone(), c.clone(), u.clone()),
        (t, c, u, Some(e)) => (
            t.clone().unwrap_or_else(|| e.tenant_id.clone()),
            c.clone().unwrap_or_else(|| e.client_id.clone()),
            u.clone().unwrap_or_else(|| e.username.clone()),
        ),
        _ => bail!(
            "secret {secret_name} does not exist yet; a new app-only account needs --tenant, --client-id and --user (the mailbox)"
        ),
    };
    let mut account = AccountSecret::new_app_only(&tenant, &client_id, &mailbox, credential);
    if let Some(existing) = &existing {
        account.extra = existing.extra.clone();
        account.max_message_bytes = existing.max_message_bytes;
    }
    if let Some(h) = &args.authority_host {
        account.authority_host = h.clone();
    }
    if let Some(h) = &args.graph_host {
        account.graph_host = h.clone();
    }
    if let Some(r) = &args.imap_resource {
        account.imap_resource = r.clone();
    }
    if let Some(h) = &args.imap_host {
        account.imap_host = h.clone();
    }
    if let Some(bytes) = args.max_message_bytes {
        account.max_message_bytes = Some(bytes);
    }
    // Round trip through the strict parser: normalises hosts and names any bad field.
    let account = AccountSecret::parse(&secret_name, &account.to_json())?;

    let identity = ctx.identity_client()?;
    let mut checks = Vec::new();
    let mut refused = None;
    for audience in audiences(args)? {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
        let answer = identity
            .with_retries(deadline, || {
                identity.client_credentials(&account, audience, Utc::now())
            })
            .await;
        let (roles_needed, where_) = needed_role(audience);
        let check = match answer {
            // The roles are read from the token's payload without checking its signature: only
            // the resource (Graph, Exchange) can validate a token; the client reads the one it
            // was just issued over TLS, for a diagnostic, never for an access decision.
            Ok(tokens) => match token_roles(tokens.access_token.expose_secret()) {
                Some(roles) if roles_needed.iter().any(|r| roles.contains(&r.to_string())) => {
                    let detail = format!(
                        "token for {} with roles {}",
                        account.resource(audience),
                        roles.join(", ")
                    );
                    if audience == Audience::Imap {
                        let (result, probe, fix) =
                            imap_login_probe(ctx, &account, &tokens.access_token).await;
                        AudienceCheck {
                            audience: audience.as_str(),
                            result,
                            detail: format!("{detail}; {probe}"),
                            fix,
                        }
                    } else {
                        AudienceCheck {
                            audience: audience.as_str(),
                            result: "ok",
                            detail,
                            fix: None,
                        }
                    }
                }
                Some(roles) => AudienceCheck {
                    audience: audience.as_str(),
                    result: "warning",
                    detail: format!(
                        "token for {} without the {} role (roles: {})",
                        account.resource(audience),
                        roles_needed[0],
                        if roles.is_empty() {
                            "none".to_owned()
                        } else {
                            roles.join(", ")
                        }
                    ),
                    fix: Some(match audience {
                        Audience::Graph => format!(
                            "add {where_} and grant admin consent — unless Exchange RBAC for Applications grants \"Application Mail.Send\" on {mailbox} (then `mailbridge check {account_name}` proves it)"
                        ),
                        Audience::Imap => format!(
                            "add {where_} to the app registration and grant admin consent; Exchange Online also needs the service principal and the mailbox: {}",
                            exchange_mailbox_fix(&account.client_id, &mailbox)
                        ),
                        _ => {
                            format!("add {where_} to the app registration and grant admin consent")
                        }
                    }),
                },
                // Not a readable JWT (Microsoft may make access tokens opaque or encrypted at any
                // time): the IMAP login still proves the mailbox access.
                None if audience == Audience::Imap => {
                    let (result, probe, fix) =
                        imap_login_probe(ctx, &account, &tokens.access_token).await;
                    AudienceCheck {
                        audience: audience.as_str(),
                        result,
                        detail: format!(
                            "token for {} (roles not readable); {probe}",
                            account.resource(audience)
                        ),
                        fix,
                    }
                }
                None => AudienceCheck {
                    audience: audience.as_str(),
                    result: "ok",
                    detail: format!(
                        "token for {} (its roles are not readable here; `mailbridge check {account_name}` tries the mailbox)",
                        account.resource(audience)
                    ),
                    fix: None,
                },
            },
            Err(TokenEndpointError::NeedsPerson(person)) => {
                refused = Some(format!("{} [{}]", person.reason, person.code));
                AudienceCheck {
                    audience: audience.as_str(),
                    result: "failed",
                    detail: format!("{} [{}]", person.reason, person.code),
                    fix: None,
                }
            }
            Err(other) => {
                refused = Some(format!("{other:?}"));
                AudienceCheck {
                    audience: audience.as_str(),
                    result: "failed",
                    detail: format!("the identity platform did not answer: {other:?}"),
                    fix: Some("try again later".to_owned()),
                }
            }
        };
        checks.push(check);
    }
    let stored = match &refused {
        None => Some(
            store_account(
                ctx.secret_store().await.as_ref(),
                &secret_name,
                account.clone(),
            )
            .await
            .map_err(|e| anyhow::anyhow!("store {secret_name}: {e}"))?,
        ),
        Some(_) => None,
    };
    if ctx.json() {
        print_json(&serde_json::json!({
            "account": ctx.account_name(&secret_name),
            "secret": secret_name,
            "mode": "app_only",
            "mailbox": account.username,
            "tenant": account.tenant_id,
            "credential": account.app_only.as_ref().map(|c| c.describe()),
            "expires_at": account.app_only.as_ref().and_then(|c| c.expires_at()),
            "audiences": checks,
            "stored": stored.as_ref().map(|s| s.version_id.clone()),
        }));
    } else {
        for c in &checks {
            let mark = match c.result {
                "ok" => "✓",
                "warning" => "⚠",
                _ => "✗",
            };
            println!("{mark} {}: {}", c.audience, c.detail);
            if let Some(fix) = &c.fix {
                println!("  fix: {fix}");
            }
        }
        if let Some(outcome) = &stored {
            let expiry = account
                .app_only
                .as_ref()
                .and_then(|c| c.expires_at())
                .map(|t| format!(", valid until {}", t.format("%Y-%m-%d")))
                .unwrap_or_default();
            println!(
                "✓ app-only account for {} — secret {} {} ({}{expiry}, status ok)",
                account.username,
                outcome.secret_name,
                if outcome.created {
                    "created"
                } else {
                    "updated"
                },
                account
                    .app_only
                    .as_ref()
                    .map(|c| c.describe())
                    .unwrap_or_default(),
            );
            println!(
                "  next: mailbridge check {}",
                ctx.account_name(&secret_name)
            );
        }
    }
    match refused {
        None => Ok(Exit::Ok),
        Some(reason) => Err(ExitError {
            exit: Exit::LoginIncomplete,
            message: format!(
                "the identity platform refused the app's credential, nothing stored: {reason}"
            ),
        }
        .into()),
    }
}
