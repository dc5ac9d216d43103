//! `mailbridge send`: build a notification (the queue contract, `mailbridge::notification`),
//! validate it with the same rules send-notifications applies, then either enqueue it on the
//! notification queue (default; send-notifications delivers it, with its idempotency record) or,
//! with `--direct`, send it through Graph `sendMail` now with the account's delegated token.
//! Prints the notification id.
//!
//! `--direct` bypasses the queue and the idempotency table: running it twice sends twice.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use base64::Engine as _;
use mailbridge::graph::{GraphClient, GraphError, MailSender as _, MessageExtras, OutgoingMail};
use mailbridge::notification::{
    Attachment, Body, BodyType, CURRENT_VERSION, Importance, Notification, Recipient,
};
use mailbridge::token::{AccessTokenSource as _, Audience};

use super::context::{Context, Exit, print_json};

/// Arguments of `mailbridge send`.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Examples:
  mailbridge send --account contoso --to user@example.com --subject 'Test' --body 'Hello'
  mailbridge send --account contoso --to a@example.com --subject 'Report' --body-file r.html --html --attach r.pdf
  mailbridge send --account contoso --to a@example.com --subject 'Now' --body 'x' --direct")]
pub struct SendArgs {
    /// Account secret whose delegated token sends (with or without the prefix).
    #[arg(long, value_name = "ACCOUNT")]
    pub account: String,
    /// Recipient (repeatable).
    #[arg(long, value_name = "ADDRESS")]
    pub to: Vec<String>,
    /// Cc recipient (repeatable).
    #[arg(long, value_name = "ADDRESS")]
    pub cc: Vec<String>,
    /// Bcc recipient (repeatable).
    #[arg(long, value_name = "ADDRESS")]
    pub bcc: Vec<String>,
    /// Send from this shared mailbox (the account's shared_mailbox_route says which rights).
    #[arg(long, value_name = "ADDRESS")]
    pub from: Option<String>,
    /// Reply-To address (repeatable).
    #[arg(long, value_name = "ADDRESS")]
    pub reply_to: Vec<String>,
    /// Subject.
    #[arg(long)]
    pub subject: String,
    /// Body text (or HTML with --html).
    #[arg(
        long,
        conflicts_with = "body_file",
        required_unless_present = "body_file"
    )]
    pub body: Option<String>,
    /// Read the body from a file (`-` = stdin).
    #[arg(long, value_name = "FILE")]
    pub body_file: Option<PathBuf>,
    /// The body is HTML.
    #[arg(long)]
    pub html: bool,
    /// Attach a file (repeatable; at most 3 MB in all).
    #[arg(long, value_name = "FILE")]
    pub attach: Vec<PathBuf>,
    /// Importance.
    #[arg(long, value_parser = ["low", "normal", "high"])]
    pub importance: Option<String>,
    /// Helpdesk ticket number: stamps [Ticket#N] and a signed reference so replies thread back.
    #[arg(long, value_name = "N")]
    pub ticket: Option<String>,
    /// Extra header `X-Name: value` (repeatable; names must start with X-).
    #[arg(long, value_name = "X-NAME:VALUE")]
    pub header: Vec<String>,
    /// Notification id (idempotency key). Default: a new UUID.
    #[arg(long)]
    pub id: Option<String>,
    /// Do not keep a copy in Sent Items.
    #[arg(long)]
    pub no_save: bool,
    /// The notification queue URL.
    #[arg(long, env = "MAILBRIDGE_QUEUE_URL", value_name = "URL")]
    pub queue_url: Option<String>,
    /// Send through Graph now instead of enqueueing (no idempotency record).
    #[arg(long)]
    pub direct: bool,
}

fn recipients(list: &[String]) -> Vec<Recipient> {
    list.iter()
        .map(|a| Recipient {
            address: a.trim().to_owned(),
            name: None,
        })
        .collect()
}

/// MIME type from the file extension (application/octet-stream when unknown).
fn content_type_of(path: &Path) -> &'static str {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
        .unwrap_or_default();
    match ext.as_str() {
        "pdf" => "application/pdf",
        "txt" | "log" => "text/plain",
        "csv" => "text/csv",
        "html" | "htm" => "text/html",
        "json" => "application/json",
        "xml" => "application/xml",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "zip" => "application/zip",
        "eml" => "message/rfc822",
        "docx" => "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
        "xlsx" => "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
        _ => "application/octet-stream",
    }
}

/// Build and validate the notification from the arguments.
pub fn build_notification(args: &SendArgs) -> Result<Notification> {
    let content = match (&args.body, &args.body_file) {
        (Some(b), _) => b.clone(),
        (None, Some(p)) if p.as_os_str() == "-" => {
            let mut s = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)
                .context("read the body from stdin")?;
            s
        }
        (None, Some(p)) => std::fs::read_to_string(p)
            .with_context(|| format!("read the body from {}", p.display()))?,
        (None, None) => bail!("give --body or --body-file"),
    };
    let mut attachments = Vec::new();
    for path in &args.attach {
        let bytes =
            std::fs::read(path).with_context(|| format!("read attachment {}", path.display()))?;
        attachments.push(Attachment {
            name: path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "attachment".into()),
            content_type: content_type_of(path).to_owned(),
            content_base64: Some(base64::engine::general_purpose::STANDARD.encode(&bytes)),
            content_ref: None,
            inline: false,
            content_id: None,
        });
    }
    let mut headers = BTreeMap::new();
    for h in &args.header {
        let Some((name, value)) = h.split_once(':') else {
            bail!("--header {h:?}: expected `X-Name: value`");
        };
        headers.insert(name.trim().to_owned(), value.trim().to_owned());
    }
    let notification = Notification {
        version: CURRENT_VERSION,
        id: Some(
            args.id
                .clone()
                .unwrap_or_else(|| uuid::Uuid::new_v4().to_string()),
        ),
        account: args.account.clone(),
        from: args.from.clone(),
        to: recipients(&args.to),
        cc: recipients(&args.cc),
        bcc: recipients(&args.bcc),
        reply_to: recipients(&args.reply_to),
        subject: args.subject.clone(),
        body: Body {
            content_type: if args.html {
                BodyType::Html
            } else {
                BodyType::Text
            },
            content,
        },
        importance: args.importance.as_deref().map(|i| match i {
            "low" => Importance::Low,
            "high" => Importance::High,
            _ => Importance::Normal,
        }),
        attachments,
        headers,
        ticket_number: args.ticket.clone(),
        save_to_sent_items: args.no_save.then_some(false),
    };
    notification
        .validate()
        .map_err(|e| anyhow::anyhow!("the notification is not valid: {e}"))?;
    Ok(notification)
}

/// Run `mailbridge send`.
pub async fn run(ctx: &Context, args: SendArgs) -> Result<Exit> {
    let notification = build_notification(&args)?;
    let id = notification.id().to_owned();
    if args.direct {
        send_direct(ctx, &notification).await
    } else {
        let Some(queue_url) = args.queue_url.as_deref().filter(|q| !q.trim().is_empty()) else {
            bail!(
                "no queue: pass --queue-url URL or set MAILBRIDGE_QUEUE_URL (or use --direct to send through Graph now)"
            );
        };
        let body = serde_json::to_string(&notification)?;
        let sqs = aws_sdk_sqs::Client::new(ctx.aws().await);
        let out = sqs
            .send_message()
            .queue_url(queue_url)
            .message_body(body)
            .send()
            .await
            .map_err(|e| {
                anyhow::anyhow!(
                    "SendMessage to {queue_url}: {}",
                    mailbridge::error::error_chain(&e)
                )
            })?;
        let message_id = out.message_id().unwrap_or_default().to_owned();
        if ctx.json() {
            print_json(&serde_json::json!({
                "id": id,
                "queued": true,
                "queue_url": queue_url,
                "sqs_message_id": message_id,
            }));
        } else {
            println!("{id}");
            eprintln!("✓ queued on {queue_url} (SQS message {message_id})");
        }
        Ok(Exit::Ok)
    }
}

/// The thread marker stamp for `--direct` with `--ticket`: needs the HMAC key the functions use
/// (`MAILBRIDGE_THREAD_KEY_SECRET`, or `MAILBRIDGE_THREAD_KEY` in hex).
async fn extras(ctx: &Context, n: &Notification) -> Result<MessageExtras> {
    if n.ticket_number.is_none() {
        return Ok(MessageExtras::default());
    }
    let key = ctx.thread_key().await?.with_context(|| {
        format!(
            "--direct with --ticket needs the thread key: set {} (or {}, hex), or enqueue instead (send-notifications stamps it)",
            super::context::THREAD_KEY_SECRET_ENV,
            super::parse::THREAD_KEY_ENV
        )
    })?;
    Ok(mailbridge::thread_stamp::stamp(
        &mailbridge::thread_key::ThreadKey::new(key),
        n,
    ))
}

async fn send_direct(ctx: &Context, n: &Notification) -> Result<Exit> {
    let secret_name = ctx.secret_name(&n.account);
    let account = ctx.read_account(&secret_name).await?.with_context(|| {
        format!("account secret {secret_name} does not exist (run `mailbridge login`)")
    })?;
    let graph_url = ctx.graph_url(&account);
    let client = GraphClient::new(&graph_url)?;
    let mut mail = OutgoingMail::from_notification(n, extras(ctx, n).await?);
    let tokens = ctx.token_service().await?;
    let timeout = Duration::from_secs(60);
    let mut token = tokens.access_token(&n.account, Audience::Graph).await?;
    mail.send_as = token.shared_mailbox_route.endpoint(n.from.as_deref());
    let mut result = client.send_mail(&token, &mail, timeout).await;
    if let Err(GraphError::Unauthorized { .. }) = &result {
        // The cached token may be stale: refresh once and retry once, as the function does.
        tokens.invalidate(&n.account, Audience::Graph);
        token = tokens.access_token(&n.account, Audience::Graph).await?;
        result = client.send_mail(&token, &mail, timeout).await;
    }
    let receipt = result.with_context(|| format!("send through Graph {graph_url}"))?;
    let request_id = receipt.request_id.unwrap_or_default();
    if ctx.json() {
        print_json(&serde_json::json!({
            "id": n.id(),
            "sent": true,
            "graph_request_id": request_id,
            "client_request_id": receipt.client_request_id,
        }));
    } else {
        println!("{}", n.id());
        eprintln!("✓ accepted by Graph (202, request-id {request_id})");
    }
    Ok(Exit::Ok)
}
