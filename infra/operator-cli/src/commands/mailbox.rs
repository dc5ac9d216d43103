//! `mailbridge mailbox add|list|show|remove`: the mailbox configurations poll-mailboxes reads
//! (`mailbox#<name>` items plus the `mailbox-index` item in the state table). Writes go through
//! poll-mailboxes' own `put_mailbox_config` / `delete_mailbox_config`, so a configuration is
//! validated by exactly the code that will use it (errors name the mailbox and the field).

use anyhow::{Result, bail};
use mailbridge::mailbox::MailboxConfig;
use mailbridge::state_table::StateStore as _;
use mailbridge::state_table::{delete_mailbox_config, put_mailbox_config};
use serde_json::{Map, Value, json};

use super::context::{Context, Exit, print_json};

/// `mailbridge mailbox ...`
#[derive(Debug, clap::Subcommand)]
pub enum MailboxCommand {
    /// Add or replace a mailbox configuration.
    Add(Box<AddArgs>),
    /// List the configured mailboxes.
    List,
    /// Show one mailbox's configuration with its defaults filled in.
    Show {
        /// Mailbox name.
        name: String,
    },
    /// Remove a mailbox configuration and delete its push subscription in Graph (its dedupe
    /// records expire on their own).
    Remove {
        /// Mailbox name.
        name: String,
    },
}

/// Arguments of `mailbridge mailbox add`.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Example:
  mailbridge mailbox add helpdesk --user helpdesk@contoso.com --account contoso \\
      --ticket-api-url https://psa.example.com/api/tickets --ticket-api-secret mailbridge-tickets")]
pub struct AddArgs {
    /// Mailbox name (A-Z a-z 0-9 - _ . @), used in logs, status and dedupe keys.
    pub name: String,
    /// Login user: the mailbox address (for a shared mailbox, the shared address).
    #[arg(long, value_name = "ADDRESS")]
    pub user: String,
    /// Account secret whose token logs in (for a shared mailbox, a delegate's account).
    #[arg(long, value_name = "ACCOUNT")]
    pub account: String,
    /// Where the tickets go, as a `sink` object: `{"kind":"rt","url":…,"secret":…,"queue":…,
    /// "rt_name":…}`, `{"kind":"django-helpdesk",…}` or `{"kind":"webhook","url":…}` (fields:
    /// docs/helpdesks.md). The helpdesk is asked before anything is stored (reach, credentials,
    /// queue) unless --no-check.
    #[arg(long, value_name = "JSON", required_unless_present = "ticket_api_url", conflicts_with_all = ["ticket_api_url", "ticket_api_secret"])]
    pub sink_json: Option<String>,
    /// A generic webhook's URL (https, its host in MAILBRIDGE_SINK_HOSTS; plain http and
    /// loopback only with MAILBRIDGE_ALLOW_LOCAL_TARGETS=true): the same as
    /// `--sink-json '{"kind":"webhook","url":URL}'`.
    #[arg(long, value_name = "URL")]
    pub ticket_api_url: Option<String>,
    /// The webhook's credential secret (none: no auth header).
    #[arg(long, value_name = "SECRET")]
    pub ticket_api_secret: Option<String>,
    /// Store without asking the helpdesk first (it is down now, or not reachable from here).
    #[arg(long)]
    pub no_check: bool,
    /// How the mailbox is read: imap (default) or graph (Microsoft Graph, for tenants that
    /// switched IMAP off; needs the account's consent to Mail.ReadWrite). With graph the folder
    /// is looked up through Graph before anything is stored (unless --no-check).
    #[arg(long, value_parser = ["imap", "graph"])]
    pub protocol: Option<String>,
    /// With --protocol graph: USER is a shared mailbox that the account's user opens with Full
    /// Access (the token then asks for Mail.ReadWrite.Shared too).
    #[arg(long)]
    pub shared: bool,
    /// IMAP host (default outlook.office365.com); must be in MAILBRIDGE_IMAP_HOSTS (default:
    /// Microsoft's IMAP hosts).
    #[arg(long)]
    pub host: Option<String>,
    /// IMAP port, implicit TLS (default 993).
    #[arg(long)]
    pub port: Option<u16>,
    /// Folder polled (default INBOX).
    #[arg(long)]
    pub folder: Option<String>,
    /// After the ticket is accepted: move (default), mark_seen or delete.
    #[arg(long, value_parser = ["move", "mark_seen", "delete"])]
    pub after_action: Option<String>,
    /// Folder for `move` (default Processed; created if missing).
    #[arg(long)]
    pub processed_folder: Option<String>,
    /// Folder for unreadable / rejected mail (default mailbridge-failed).
    #[arg(long)]
    pub failed_folder: Option<String>,
    /// Folder for machine mail set aside without a ticket (default mailbridge-auto-generated).
    #[arg(long)]
    pub auto_generated_folder: Option<String>,
    /// Unthreaded mailing-list / bulk mail (List-Id, Precedence: bulk|list, List-Unsubscribe):
    /// set_aside (default) or ticket. Use `ticket` when this address is itself a list or group
    /// (Google Group, distribution group, bulk-sending web form). Auto-replies, bounces and
    /// loops are set aside either way.
    #[arg(long, value_parser = ["set_aside", "ticket"], value_name = "set_aside|ticket")]
    pub list_mail: Option<String>,
    /// Most messages per run (default 200).
    #[arg(long)]
    pub max_messages_per_run: Option<u32>,
    /// Ignore mail received before this: `now` (the moment of this command), a date
    /// (2026-12-01, midnight UTC) or an RFC 3339 date-time. Older mail is left untouched.
    #[arg(long, value_name = "DATE|now")]
    pub since: Option<String>,
    /// Larger messages become header-only tickets (bytes, default 32 MiB).
    #[arg(long)]
    pub max_message_bytes: Option<u64>,
    /// Attachment content sent inline per ticket (bytes, default 10 MiB).
    #[arg(long)]
    pub max_attachment_bytes: Option<u64>,
    /// Store it disabled (not polled).
    #[arg(long)]
    pub disabled: bool,
}

impl AddArgs {
    fn fields(&self) -> Result<Value> {
        let mut o = Map::new();
        o.insert("user".into(), json!(self.user));
        o.insert("account".into(), json!(self.account));
        if let Some(sink) = &self.sink_json {
            let sink: Value = serde_json::from_str(sink)
                .map_err(|e| anyhow::anyhow!("--sink-json is not valid JSON: {e}"))?;
            o.insert("sink".into(), sink);
        }
        if let Some(url) = &self.ticket_api_url {
            o.insert("ticket_api_url".into(), json!(url));
        }
        o.insert("enabled".into(), json!(!self.disabled));
        if let Some(protocol) = &self.protocol {
            o.insert("protocol".into(), json!(protocol));
        }
        if self.shared {
            o.insert("shared".into(), json!(true));
        }
        if let Some(since) = &self.since {
            let at = if since.trim().eq_ignore_ascii_case("now") {
                chrono::Utc::now()
            } else {
                mailbridge::mailbox::config::parse_since(since)
                    .map_err(|p| anyhow::anyhow!("--since {p}"))?
            };
            o.insert(
                "since".into(),
                json!(at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
            );
        }
        let optional: [(&str, Option<Value>); 12] = [
            (
                "ticket_api_secret",
                self.ticket_api_secret.as_ref().map(|v| json!(v)),
            ),
            ("host", self.host.as_ref().map(|v| json!(v))),
            ("port", self.port.map(|v| json!(v))),
            ("folder", self.folder.as_ref().map(|v| json!(v))),
            ("after_action", self.after_action.as_ref().map(|v| json!(v))),
            (
                "processed_folder",
                self.processed_folder.as_ref().map(|v| json!(v)),
            ),
            (
                "failed_folder",
                self.failed_folder.as_ref().map(|v| json!(v)),
            ),
            (
                "auto_generated_folder",
                self.auto_generated_folder.as_ref().map(|v| json!(v)),
            ),
            ("list_mail", self.list_mail.as_ref().map(|v| json!(v))),
            (
                "max_messages_per_run",
                self.max_messages_per_run.map(|v| json!(v)),
            ),
            (
                "max_message_bytes",
                self.max_message_bytes.map(|v| json!(v)),
            ),
            (
                "max_attachment_bytes",
                self.max_attachment_bytes.map(|v| json!(v)),
            ),
        ];
        for (k, v) in optional {
            if let Some(v) = v {
                o.insert(k.into(), v);
            }
        }
        Ok(Value::Object(o))
    }
}

/// Ask the mailbox's helpdesk (reach, credentials, queue) before storing: on a mistake, a
/// clear error and nothing stored.
async fn check_sink(ctx: &Context, config: &MailboxConfig) -> Result<()> {
    let sink = &config.sink;
    let adapter = ctx
        .sink_factory()
        .await?
        .build(sink)
        .await
        .map_err(|e| anyhow::anyhow!("mailbox {}: {e}; nothing stored", config.name))?;
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    match adapter.check(deadline).await {
        Ok(check) => {
            if !ctx.json() {
                println!("✓ helpdesk: {}", check.summary);
            }
            Ok(())
        }
        Err(e) => bail!(
            "mailbox {}: the helpdesk check failed: {e}; nothing stored (fix it, or store anyway with --no-check)",
            config.name
        ),
    }
}

/// A mailbox read through Graph: its folder must be found there with the account's token
/// (`Mail.ReadWrite`, `.Shared` for a shared mailbox) before it is stored.
async fn check_graph_folder(ctx: &Context, config: &MailboxConfig) -> Result<()> {
    use mailbridge::token::AccessTokenSource as _;
    let secret = ctx.secret_name(&config.account);
    let audience = poll_mailboxes::poll::mailbox_audience(config);
    let token = ctx
        .token_service()
        .await?
        .access_token(&secret, audience)
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "mailbox {}: no {} token for account {}: {e}; nothing stored",
                config.name,
                audience.label(),
                config.account
            )
        })?;
    let graph_url = match ctx.read_account(&secret).await? {
        Some(account) => ctx.graph_url(&account),
        None => bail!(
            "mailbox {}: no account secret {secret}; nothing stored",
            config.name
        ),
    };
    let client = mailbridge::graph_mail::GraphMailbox::new(
        mailbridge::http::default_client()?,
        &graph_url,
        &config.user,
        token,
        mailbridge::graph_mail::default_policy(),
    )?;
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    match client.folder_id(&config.folder, false, deadline).await {
        Ok(Some(_)) => {
            if !ctx.json() {
                println!(
                    "✓ Graph: folder {:?} found in {}",
                    config.folder, config.user
                );
            }
            Ok(())
        }
        Ok(None) => bail!(
            "mailbox {}: no folder {:?} in {} (looked up through Graph by display name, `/` between nested folders); nothing stored",
            config.name,
            config.folder,
            config.user
        ),
        Err(e) => bail!(
            "mailbox {}: Graph refused to look up folder {:?} in {}: {e} — check the account's consent to Mail.ReadWrite{} ; nothing stored (or store anyway with --no-check)",
            config.name,
            config.folder,
            config.user,
            if config.shared {
                " and Mail.ReadWrite.Shared with Full Access on the mailbox"
            } else {
                " (a shared mailbox needs --shared)"
            }
        ),
    }
}

/// Run `mailbridge mailbox ...`.
pub async fn run(ctx: &Context, command: MailboxCommand) -> Result<Exit> {
    let table = ctx.state_table()?.to_owned();
    let client = ctx.dynamodb().await;
    match command {
        MailboxCommand::Add(args) => {
            let fields = args.fields()?;
            let config = MailboxConfig::from_json(&args.name, &fields)?;
            // Before the helpdesk is asked: a refused host is never contacted.
            ctx.targets()?.check(&config)?;
            if !args.no_check {
                if config.protocol == mailbridge::mailbox::Protocol::Graph {
                    check_graph_folder(ctx, &config).await?;
                }
                check_sink(ctx, &config).await?;
            }
            let config =
                put_mailbox_config(&client, &table, &args.name, &fields, &ctx.targets()?).await?;
            if ctx.json() {
                print_json(&json!({ "stored": true, "mailbox": config }));
            } else {
                println!(
                    "✓ mailbox {} stored in {table}: {} on {} via account {}, folder {}",
                    config.name,
                    config.user,
                    read_through(&config),
                    config.account,
                    config.folder
                );
                println!("  next: mailbridge check {}", config.name);
            }
        }
        MailboxCommand::List => {
            let state = ctx.state_store().await?;
            let entries = state.load_mailboxes(None).await?;
            if ctx.json() {
                let list: Vec<Value> = entries
                    .iter()
                    .map(|e| match e {
                        Ok(c) => json!({ "name": c.name, "config": c }),
                        Err(err) => json!({ "name": err.mailbox, "error": err.to_string() }),
                    })
                    .collect();
                print_json(&json!({ "mailboxes": list }));
            } else if entries.is_empty() {
                println!("no mailboxes in {table} — add one with `mailbridge mailbox add`");
            } else {
                for e in &entries {
                    match e {
                        Ok(c) => println!("{}", summary(c)),
                        Err(err) => println!("✗ {} — {err}", err.mailbox),
                    }
                }
            }
        }
        MailboxCommand::Show { name } => {
            let state = ctx.state_store().await?;
            match state
                .load_mailboxes(Some(std::slice::from_ref(&name)))
                .await?
                .pop()
            {
                Some(Ok(config)) => {
                    if ctx.json() {
                        print_json(&json!({ "mailbox": config }));
                    } else {
                        print_json(&serde_json::to_value(&config)?);
                    }
                }
                Some(Err(e)) => bail!("{e}"),
                None => bail!("mailbox {name} not found"),
            }
        }
        MailboxCommand::Remove { name } => {
            let state = ctx.state_store().await?;
            let config = match state
                .load_mailboxes(Some(std::slice::from_ref(&name)))
                .await?
                .pop()
            {
                Some(Err(e)) if e.field == "(item)" => {
                    bail!("mailbox {name} is not configured in {table}")
                }
                Some(Ok(config)) => Some(config),
                _ => None,
            };
            let subscription =
                delete_push_subscription(ctx, &table, &name, config.as_ref()).await?;
            delete_mailbox_config(&client, &table, &name).await?;
            if ctx.json() {
                let subscription = match &subscription {
                    None => Value::Null,
                    Some((id, Ok(()))) => json!({ "id": id, "deleted": true }),
                    Some((id, Err(e))) => json!({ "id": id, "deleted": false, "error": e }),
                };
                print_json(&json!({ "removed": name, "push_subscription": subscription }));
            } else {
                match &subscription {
                    None => {}
                    Some((id, Ok(()))) => println!("✓ push subscription {id} deleted in Graph"),
                    Some((id, Err(e))) => println!(
                        "! push subscription {id} could not be deleted now ({e}); the next scheduled run deletes it"
                    ),
                }
                println!("✓ mailbox {name} removed from {table}");
            }
        }
    }
    Ok(Exit::Ok)
}

/// A `push` mailbox's Graph subscription goes with it, so its notifications stop now rather
/// than at the next scheduled run. None: it had none; else its id and whether Graph and the
/// state table let go of it. When Graph could not be asked (token, network), its records stay
/// and the next scheduled run deletes it.
async fn delete_push_subscription(
    ctx: &Context,
    table: &str,
    name: &str,
    config: Option<&MailboxConfig>,
) -> Result<Option<(String, Result<(), String>)>> {
    use mailbridge::state_table::SubscriptionStore as _;
    use mailbridge::token::AccessTokenSource as _;
    let store = mailbridge::state_table::DynamoStateStore::new(ctx.dynamodb().await, table);
    let Some(record) = store.subscription_of(name).await? else {
        return Ok(None);
    };
    let deleted = async {
        let secret = ctx.secret_name(&record.account);
        let audience = config.map_or(
            mailbridge::token::Audience::GraphMailbox,
            poll_mailboxes::push::subscription_audience,
        );
        let token = ctx
            .token_service()
            .await
            .map_err(|e| e.to_string())?
            .access_token(&secret, audience)
            .await
            .map_err(|e| {
                format!(
                    "no {} token for account {}: {e}",
                    audience.label(),
                    record.account
                )
            })?;
        let account = ctx
            .read_account(&secret)
            .await
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("no account secret {secret}"))?;
        let timeout = std::time::Duration::from_secs(30);
        let api = poll_mailboxes::push::GraphSubscriptionApi::new(
            mailbridge::http::default_client().map_err(|e| e.to_string())?,
            &ctx.graph_url(&account),
            timeout,
        );
        poll_mailboxes::push::delete_subscription(
            &api,
            &store,
            &record,
            &token,
            tokio::time::Instant::now() + timeout,
        )
        .await
    }
    .await;
    Ok(Some((record.id, deleted)))
}

/// Where a mailbox is read: `IMAP host:port`, or `Graph` (`Graph, shared`).
fn read_through(c: &MailboxConfig) -> String {
    match (c.protocol, c.shared) {
        (mailbridge::mailbox::Protocol::Imap, _) => format!("IMAP {}:{}", c.host, c.port),
        (mailbridge::mailbox::Protocol::Graph, false) => "Graph".into(),
        (mailbridge::mailbox::Protocol::Graph, true) => "Graph (shared mailbox)".into(),
    }
}

fn summary(c: &MailboxConfig) -> String {
    format!(
        "{}{} — {} on {} via {}, folder {}, after: {}, list mail: {}, tickets → {} {}",
        c.name,
        if c.enabled { "" } else { " [disabled]" },
        c.user,
        read_through(c),
        c.account,
        c.folder,
        match &c.after_action {
            mailbridge::mailbox::AfterAction::Move(f) => format!("move to {f}"),
            mailbridge::mailbox::AfterAction::MarkSeen => "mark seen".into(),
            mailbridge::mailbox::AfterAction::Delete => "delete".into(),
        },
        c.list_mail.as_str(),
        c.sink.kind().as_str(),
        c.sink.url()
    )
}
