//! `mailbridge login`: sign a Microsoft 365 account in and write (or update) its account
//! secret through the token layer (`mailbridge::token::login`).
//!
//! - Default (or `--browser`): authorization code with PKCE; the CLI prints the sign-in URL (and
//!   opens a browser where there is one), listens on 127.0.0.1 for the redirect to
//!   `http://localhost:<port>`, checks its `state`, and redeems the code. Works with MFA and where
//!   Conditional Access blocks the device code flow. Where no browser could be opened it says how
//!   to finish from another machine, or to use `--device-code` instead.
//! - `--device-code`: the device code flow (headless machines; works with MFA): the identity
//!   platform's message is shown on stderr, then progress while waiting for the user to finish in
//!   a browser anywhere.
//! - `--app` (see `login_app`): an app-only account, the application's certificate
//!   (`--certificate`, `--private-key`) or client secret (`--client-secret-stdin`,
//!   `--secret-expires`); validated with a token per audience before it is stored.
//! - `--password-stdin`: ROPC (accounts without MFA); the password is read from stdin, never
//!   echoed or printed, and stored only with `--keep-password` (for ROPC re-bootstrap).
//! - An existing secret keeps its fields (hosts, scopes, unknown fields) unless a flag
//!   overrides them, so `mailbridge login --account X` alone re-consents an account.
//!
//! Nothing secret is ever printed: the output names the secret, the user and the scopes.

use std::io::{BufRead as _, Write as _};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use mailbridge::token::authorization_code::{
    AuthorizationRequest, RedirectError, redirect_uri_fix,
};
use mailbridge::token::login::{
    LoginError, LoginOutcome, authorization_code_login, device_code_login, password_login,
};
use mailbridge::token::{AccountSecret, Audience, DeviceCodeEvent, SystemClock};
use secrecy::SecretString;

use super::context::{Context, Exit, ExitError, print_json, stderr_is_terminal};

/// The flags that name another sign-in than the browser's: the browser-only options conflict
/// with them.
const BROWSER_ONLY_CONFLICTS: [&str; 3] = ["device_code", "password_stdin", "app"];

/// Arguments of `mailbridge login`.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Examples:
  mailbridge login --tenant contoso.onmicrosoft.com --client-id 1111... --user helpdesk@contoso.com   # in a browser
  mailbridge login --device-code --tenant contoso.onmicrosoft.com --client-id 1111... --user helpdesk@contoso.com   # headless
  mailbridge login --account helpdesk@contoso.com          # sign in again (re-consent), in a browser
  printf '%s' \"$PW\" | mailbridge login --user svc@contoso.com --tenant ... --client-id ... --password-stdin
  mailbridge login --app --tenant ... --client-id 2222... --user helpdesk@contoso.com --certificate app.pem --private-key app.key
  printf '%s' \"$SECRET\" | mailbridge login --app --tenant ... --client-id ... --user helpdesk@contoso.com --client-secret-stdin --secret-expires 2027-06-01")]
pub struct LoginArgs {
    /// Account name: the secret is `<prefix><account>`. Default: the user address.
    #[arg(long, value_name = "NAME")]
    pub account: Option<String>,
    /// Entra tenant id (GUID or verified domain). Required for a new account.
    #[arg(long, value_name = "TENANT")]
    pub tenant: Option<String>,
    /// Application (client) id of the public-client app registration. Required for a new account.
    #[arg(long, value_name = "GUID")]
    pub client_id: Option<String>,
    /// The user (UPN) to sign in: the sending / IMAP login user. Required for a new account.
    #[arg(long, value_name = "UPN")]
    pub user: Option<String>,
    /// Sign in in a browser (the default): authorization code with PKCE, loopback redirect to
    /// http://localhost:<port>, which the app registration must list as `http://localhost`.
    #[arg(long, conflicts_with_all = ["password_stdin", "device_code"])]
    pub browser: bool,
    /// Sign in with the device code flow instead of the browser: for a machine without a browser
    /// (SSH, CI); the code is entered in a browser anywhere. Conditional Access blocks it in
    /// some tenants.
    #[arg(long, conflicts_with = "password_stdin")]
    pub device_code: bool,
    /// Browser sign-in: the loopback port to listen on (default: any free port).
    #[arg(long, value_name = "PORT", default_value_t = 0, conflicts_with_all = BROWSER_ONLY_CONFLICTS)]
    pub redirect_port: u16,
    /// Browser sign-in: how long to wait for the sign-in to come back, in seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = 300, conflicts_with_all = BROWSER_ONLY_CONFLICTS)]
    pub timeout: u64,
    /// Browser sign-in: only print the sign-in URL, do not try to open a browser.
    #[arg(long, conflicts_with_all = BROWSER_ONLY_CONFLICTS)]
    pub no_open: bool,
    /// Read a password from stdin and use ROPC instead of the browser (accounts without MFA).
    #[arg(long)]
    pub password_stdin: bool,
    /// An app-only account (no user): the application's certificate or client secret. `--user`
    /// is then the mailbox it sends as and reads.
    #[arg(long, conflicts_with_all = ["browser", "device_code", "password_stdin"])]
    pub app: bool,
    /// `--app`: the certificate (PEM) uploaded to the app registration.
    #[arg(long, value_name = "FILE", requires = "app")]
    pub certificate: Option<std::path::PathBuf>,
    /// `--app`: the certificate's RSA private key (PEM).
    #[arg(long, value_name = "FILE", requires = "app")]
    pub private_key: Option<std::path::PathBuf>,
    /// `--app`: read the client secret's Value from stdin instead of a certificate.
    #[arg(long, requires = "app")]
    pub client_secret_stdin: bool,
    /// `--app`: the client secret's end date (YYYY-MM-DD or RFC 3339), warned about 14 days ahead.
    #[arg(long, value_name = "DATE", requires = "app")]
    pub secret_expires: Option<String>,
    /// `--app`: an audience the account will use, validated before storing (repeatable: graph,
    /// imap, graph_mailbox; default graph and imap).
    #[arg(long, value_name = "AUDIENCE", requires = "app")]
    pub audience: Vec<String>,
    /// Also store the password, so the functions can re-bootstrap with ROPC if the refresh
    /// token dies (as the seed product did). Off by default.
    #[arg(long, requires = "password_stdin")]
    pub keep_password: bool,
    /// Entra authority (sovereign clouds: e.g. https://login.microsoftonline.us).
    #[arg(long, value_name = "URL")]
    pub authority_host: Option<String>,
    /// Graph root and token resource (e.g. https://graph.microsoft.us).
    #[arg(long, value_name = "URL")]
    pub graph_host: Option<String>,
    /// Resource of IMAP tokens (e.g. https://outlook.office365.us).
    #[arg(long, value_name = "URL")]
    pub imap_resource: Option<String>,
    /// IMAP server, `host` or `host:port` (default outlook.office365.com).
    #[arg(long, value_name = "HOST[:PORT]")]
    pub imap_host: Option<String>,
    /// How mail from a shared mailbox is sent: `send_as` (POST /me/sendMail with from; needs
    /// Send As) or `full_access` (POST /users/{mailbox}/sendMail; needs Full Access, Send As
    /// and Mail.Send.Shared). Kept when omitted; default send_as.
    #[arg(long, value_name = "ROUTE", value_parser = ["send_as", "full_access"])]
    pub shared_mailbox_route: Option<String>,
    /// The largest message the account's mailbox may send, in bytes (its Exchange
    /// MaxSendSize, when not the 35 MB default); larger messages are parked as too-large.
    /// Kept when omitted.
    #[arg(long, value_name = "BYTES")]
    pub max_message_bytes: Option<usize>,
}

/// Run `mailbridge login`.
pub async fn run(ctx: &Context, args: LoginArgs) -> Result<Exit> {
    if args.app {
        return super::login_app::run(ctx, &args).await;
    }
    let account_name = args
        .account
        .clone()
        .or_else(|| args.user.clone())
        .context("name the account with --account NAME or --user UPN")?;
    let secret_name = ctx.secret_name(&account_name);
    let existing = match ctx.read_account(&secret_name).await {
        Ok(existing) => existing,
        Err(e) => {
            // A corrupt secret is replaced by a fresh one built from the flags.
            eprintln!(
                "mailbridge: the stored secret {secret_name} is unusable ({e:#}); it will be replaced"
            );
            None
        }
    };
    let account = build_account(&secret_name, existing, &args)?;
    let store = ctx.secret_store().await;
    let identity = ctx.identity_client()?;
    let clock = SystemClock;

    if !args.device_code && !args.password_stdin {
        // The browser is the default interactive sign-in (`--browser` only says so explicitly).
        let outcome = browser(
            ctx,
            store.as_ref(),
            &identity,
            &secret_name,
            account.clone(),
            &args,
        )
        .await?;
        report(ctx, &account, &outcome);
        return Ok(Exit::Ok);
    }
    let outcome = if args.password_stdin {
        let password = read_password()?;
        password_login(
            store.as_ref(),
            &identity,
            &secret_name,
            account.clone(),
            password,
            args.keep_password,
            &clock,
        )
        .await
    } else {
        // --device-code
        device_code(
            ctx,
            store.as_ref(),
            &identity,
            &secret_name,
            account.clone(),
        )
        .await
    };
    let outcome = outcome.map_err(|e| login_failed(&secret_name, e))?;
    report(ctx, &account, &outcome);
    Ok(Exit::Ok)
}

/// The account fields: the stored secret (if any) with the flags applied, validated by the
/// token layer's parser (errors name the field).
fn build_account(
    secret_name: &str,
    existing: Option<AccountSecret>,
    args: &LoginArgs,
) -> Result<AccountSecret> {
    let mut account = match existing {
        Some(mut a) => {
            if let Some(t) = &args.tenant {
                a.tenant_id = t.clone();
            }
            if let Some(c) = &args.client_id {
                a.client_id = c.clone();
            }
            if let Some(u) = &args.user {
                a.username = u.clone();
            }
            a
        }
        None => {
            let missing: Vec<&str> = [
                ("--tenant", args.tenant.is_none()),
                ("--client-id", args.client_id.is_none()),
                ("--user", args.user.is_none()),
            ]
            .into_iter()
            .filter_map(|(flag, missing)| missing.then_some(flag))
            .collect();
            if !missing.is_empty() {
                bail!(
                    "secret {secret_name} does not exist yet; a new account needs {}",
                    missing.join(", ")
                );
            }
            AccountSecret::new(
                args.tenant.as_deref().unwrap_or_default(),
                args.client_id.as_deref().unwrap_or_default(),
                args.user.as_deref().unwrap_or_default(),
            )
        }
    };
    if let Some(h) = &args.authority_host {
        account.authority_host = h.clone();
    }
    if let Some(route) = &args.shared_mailbox_route {
        account.shared_mailbox_route = mailbridge::send_rights::SharedMailboxRoute::parse(route)
            .map_err(|problem| anyhow::anyhow!("--shared-mailbox-route: {problem}"))?;
    }
    if let Some(bytes) = args.max_message_bytes {
        // checked (with the field named) by the round trip below
        account.max_message_bytes = Some(bytes);
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
    // Round trip through the strict parser: normalises hosts and names any bad field.
    let checked = AccountSecret::parse(secret_name, &account.to_json())?;
    Ok(checked)
}

/// One line from stdin, without the line ending. Never echoed (stdin is not a terminal prompt).
fn read_password() -> Result<SecretString> {
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .context("read the password from stdin")?;
    let password = line.trim_end_matches(['\n', '\r']).to_owned();
    if password.is_empty() {
        bail!("--password-stdin: stdin was empty");
    }
    Ok(SecretString::from(password))
}

async fn device_code(
    ctx: &Context,
    store: &dyn mailbridge::token::SecretStore,
    identity: &mailbridge::token::IdentityClient,
    secret_name: &str,
    account: AccountSecret,
) -> Result<LoginOutcome, LoginError> {
    // The flow calls back synchronously; the ticker task below shows progress until it ends.
    let expires_at: Arc<Mutex<Option<tokio::time::Instant>>> = Arc::default();
    let interval = Arc::new(Mutex::new(Duration::from_secs(5)));
    let json = ctx.json();
    let on_event = {
        let expires_at = expires_at.clone();
        let interval = interval.clone();
        move |event: DeviceCodeEvent| match event {
            DeviceCodeEvent::Prompt(prompt) => {
                *expires_at.lock().expect("lock") =
                    Some(tokio::time::Instant::now() + prompt.expires_in);
                *interval.lock().expect("lock") = prompt.interval;
                if json {
                    let line = serde_json::json!({
                        "event": "device_code",
                        "verification_uri": prompt.verification_uri,
                        "user_code": prompt.user_code,
                        "message": prompt.message,
                        "expires_in": prompt.expires_in.as_secs(),
                    });
                    eprintln!("{line}");
                } else {
                    eprintln!("{}", prompt.message);
                    eprintln!(
                        "(code {} — valid for {} min)",
                        prompt.user_code,
                        prompt.expires_in.as_secs().div_ceil(60)
                    );
                }
            }
            DeviceCodeEvent::SlowDown(new_interval) => {
                *interval.lock().expect("lock") = new_interval;
            }
        }
    };
    let ticker = tokio::spawn(async move {
        let terminal = stderr_is_terminal();
        let started = tokio::time::Instant::now();
        let mut last_line = started;
        let spinner = ['|', '/', '-', '\\'];
        let mut tick = 0usize;
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            tick += 1;
            let Some(expiry) = *expires_at.lock().expect("lock") else {
                continue;
            };
            let left = expiry.saturating_duration_since(tokio::time::Instant::now());
            let text = format!(
                "waiting for the sign-in to complete ... {} s elapsed, code valid {} s more",
                started.elapsed().as_secs(),
                left.as_secs()
            );
            if terminal {
                eprint!("\r{} {text}   ", spinner[tick % spinner.len()]);
                let _ = std::io::stderr().flush();
            } else if last_line.elapsed() >= Duration::from_secs(15) {
                eprintln!("{text}");
                last_line = tokio::time::Instant::now();
            }
        }
    });
    let result = device_code_login(
        store,
        identity,
        secret_name,
        account,
        &SystemClock,
        on_event,
    )
    .await;
    ticker.abort();
    if stderr_is_terminal() {
        eprintln!();
    }
    result
}

/// `login --browser`: print (and try to open) the sign-in URL, wait for the redirect on
/// 127.0.0.1, check its state, redeem the code, store the grant.
async fn browser(
    ctx: &Context,
    store: &dyn mailbridge::token::SecretStore,
    identity: &mailbridge::token::IdentityClient,
    secret_name: &str,
    account: AccountSecret,
    args: &LoginArgs,
) -> Result<LoginOutcome> {
    let mut listener = super::loopback::Loopback::bind(args.redirect_port).await?;
    let redirect_uri = listener.redirect_uri();
    let request = AuthorizationRequest::new(&account, Audience::Graph, &redirect_uri);
    let timeout = Duration::from_secs(args.timeout);
    let opened = !args.no_open && super::loopback::open_browser(&request.url);
    if ctx.json() {
        let line = serde_json::json!({
            "event": "browser_sign_in",
            "authorize_url": request.url,
            "redirect_uri": redirect_uri,
            "browser_opened": opened,
            "timeout": args.timeout,
            "device_code_alternative": "mailbridge login --device-code",
        });
        eprintln!("{line}");
    } else {
        eprintln!(
            "Sign in as {} {}:",
            account.username,
            if opened {
                "in the browser that just opened (or open this URL)"
            } else {
                "by opening this URL in a browser"
            }
        );
        eprintln!("  {}", request.url);
        if !opened {
            // A headless machine (SSH, CI): the browser may be on another machine, but the
            // redirect must reach this one's loopback.
            let port = redirect_uri.rsplit(':').next().unwrap_or_default();
            eprintln!(
                "No browser here? Open the URL on your own machine through an `ssh -L {port}:127.0.0.1:{port} <this host>` tunnel, so the redirect reaches this one; or stop (Ctrl-C) and run the same command with --device-code."
            );
        }
        eprintln!(
            "Waiting up to {} for the sign-in to return to {redirect_uri} ... (a page showing AADSTS50011 means: {})",
            super::context::human_duration(chrono::Duration::seconds(args.timeout as i64)),
            redirect_uri_fix(&account.client_id)
        );
    }
    let incomplete = |message: String| -> anyhow::Error {
        ExitError {
            exit: Exit::LoginIncomplete,
            message,
        }
        .into()
    };
    let Some(query) = listener.wait(timeout).await else {
        listener.close().await;
        return Err(incomplete(format!(
            "sign-in for {secret_name} did not return to {redirect_uri} within {} s — nothing stored. If the sign-in page showed AADSTS50011, {}; otherwise run the login again (on a machine without a browser: with --device-code)",
            args.timeout,
            redirect_uri_fix(&account.client_id)
        )));
    };
    listener.close().await;
    let code = request.code_from_redirect(&query).map_err(|e| match e {
        RedirectError::Refused(refused) => incomplete(format!(
            "sign-in for {secret_name} was refused: {refused} — {}; nothing stored",
            refused.fix(&account.client_id)
        )),
        other => incomplete(format!("sign-in for {secret_name}: {other}")),
    })?;
    authorization_code_login(
        store,
        identity,
        secret_name,
        account,
        &request,
        &code,
        &SystemClock,
    )
    .await
    .map_err(|e| login_failed(secret_name, e))
}

fn login_failed(secret_name: &str, error: LoginError) -> anyhow::Error {
    match error {
        LoginError::Token(e) => anyhow::Error::new(e).context(format!("login for {secret_name}")),
        other => {
            let hint = match &other {
                LoginError::DeviceCode { .. } => " — run `mailbridge login --device-code` again",
                LoginError::NoRefreshToken { .. } => {
                    " — the app registration must allow the offline_access permission"
                }
                _ => "",
            };
            ExitError {
                exit: Exit::LoginIncomplete,
                message: format!("{other}{hint}"),
            }
            .into()
        }
    }
}

fn report(ctx: &Context, account: &AccountSecret, outcome: &LoginOutcome) {
    let account_name = ctx.account_name(&outcome.secret_name).to_owned();
    if ctx.json() {
        print_json(&serde_json::json!({
            "account": account_name,
            "secret": outcome.secret_name,
            "created": outcome.created,
            "version_id": outcome.version_id,
            "user": account.username,
            "tenant": account.tenant_id,
            "granted_scope": outcome.granted_scope,
            "status": "ok",
        }));
    } else {
        println!(
            "✓ signed in as {} — secret {} {} (status ok)",
            account.username,
            outcome.secret_name,
            if outcome.created {
                "created"
            } else {
                "updated"
            }
        );
        if !outcome.granted_scope.is_empty() {
            println!("  granted: {}", outcome.granted_scope);
        }
        println!("  next: mailbridge check {account_name}");
    }
}
