//! `local-stack`: start the local stack, or run the demo on it.
//!
//! - `local-stack start`: start moto, the identity / Graph / ticket API stand-ins and Dovecot on
//!   127.0.0.1, print the endpoints and `export` lines for a shell, wait for Ctrl-C.
//! - `local-stack demo`: start the stack and walk through it step by step, printing each step;
//!   exits non-zero if a step fails.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use local_stack::LocalStack;

#[derive(Parser)]
#[command(
    name = "local-stack",
    about = "mailbridge's local stack of real servers on 127.0.0.1"
)]
struct Cli {
    /// Run folder for logs, maildirs and certificates (default: a fresh folder under
    /// $MAILBRIDGE_RUN_DIR or /tmp/mailbridge-local-stack).
    #[arg(long, global = true)]
    run_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start everything, print endpoints and env exports, wait for Ctrl-C.
    Start {
        /// Name of the DynamoDB state table to create.
        #[arg(long, default_value = "mailbridge-state")]
        state_table: String,
    },
    /// Start the stack and run the demo, printing each step.
    Demo,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let run_dir = match cli.run_dir {
        Some(dir) => match std::fs::create_dir_all(&dir) {
            Ok(()) => dir,
            Err(e) => {
                eprintln!("cannot create run folder {}: {e}", dir.display());
                return ExitCode::FAILURE;
            }
        },
        None => match local_stack::default_run_dir("cli") {
            Ok(dir) => dir,
            Err(e) => {
                eprintln!("cannot create a run folder: {e:#}");
                return ExitCode::FAILURE;
            }
        },
    };
    println!("starting the local stack in {}", run_dir.display());
    let stack = LocalStack::start(run_dir, tokio::runtime::Handle::current()).await;
    let result = match cli.command {
        Command::Start { state_table } => start(&stack, &state_table).await,
        Command::Demo => demo(&stack).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("\nFAILED: {e:#}");
            eprintln!("logs: {}", stack.run_dir().display());
            ExitCode::FAILURE
        }
    }
}

fn print_summary(stack: &LocalStack) -> bool {
    let mut all_up = true;
    for (name, state) in stack.summary() {
        match state {
            Ok(endpoint) => println!("  {name:<9} up     {endpoint}"),
            Err(e) => {
                all_up = false;
                println!("  {name:<9} DOWN   {e}");
            }
        }
    }
    all_up
}

async fn start(stack: &LocalStack, state_table: &str) -> anyhow::Result<()> {
    print_summary(stack);
    let moto = stack
        .try_moto()
        .map_err(|e| anyhow::anyhow!("moto is required: {e}"))?;
    let dynamodb = aws_sdk_dynamodb::Client::new(&moto.sdk_config());
    local_stack::moto::ensure_state_table(&dynamodb, state_table).await?;
    println!("\n# paste into a shell to point the functions and the CLI at the local stack:");
    for (k, v) in moto.env() {
        println!("export {k}={v}");
    }
    println!("export MAILBRIDGE_STATE_TABLE={state_table}");
    println!("export MAILBRIDGE_SECRET_PREFIX=mailbridge/");
    if let Ok(identity) = stack.try_identity() {
        println!(
            "# identity stand-in (authority host): {}",
            identity.base_url
        );
    }
    if let Ok(graph) = stack.try_graph() {
        println!("# Graph stand-in (graph host): {}", graph.base_url);
    }
    if let Ok(tickets) = stack.try_tickets() {
        println!("# ticket API stand-in: {}", tickets.base_url);
    }
    if let Ok(dovecot) = stack.try_dovecot() {
        println!(
            "# IMAP: localhost:{} (TLS, trust {}), plain {}",
            dovecot.imaps_port,
            dovecot.ca_pem_path.display(),
            dovecot.imap_port
        );
    }
    println!("\nrunning; press Ctrl-C to stop");
    tokio::signal::ctrl_c().await?;
    println!("stopping");
    Ok(())
}

/// Print a numbered step.
fn step(n: u32, text: &str) {
    println!("\n[{n}] {text}");
}

async fn demo(stack: &LocalStack) -> anyhow::Result<()> {
    use anyhow::Context;
    step(1, "local stack");
    let all_up = print_summary(stack);
    if !all_up {
        println!("  (some components are down; the steps that need them will fail)");
    }

    step(
        2,
        "moto: SQS queue, DynamoDB state table, Secrets Manager secret",
    );
    let moto = stack
        .try_moto()
        .map_err(|e| anyhow::anyhow!("moto did not start: {e}"))?;
    let config = moto.sdk_config();
    let sqs = aws_sdk_sqs::Client::new(&config);
    let queue_url = sqs
        .create_queue()
        .queue_name("mailbridge-demo-notifications")
        .send()
        .await
        .map_err(|e| anyhow::anyhow!("create queue: {}", e.into_service_error()))?
        .queue_url
        .context("no queue URL")?;
    println!("  queue      {queue_url}");
    let dynamodb = aws_sdk_dynamodb::Client::new(&config);
    local_stack::moto::ensure_state_table(&dynamodb, "mailbridge-demo-state").await?;
    println!("  table      mailbridge-demo-state (pk S, TTL expires_at)");
    let secrets = aws_sdk_secretsmanager::Client::new(&config);
    let secret = secrets
        .create_secret()
        .name(format!("mailbridge/demo-{}", uuid::Uuid::new_v4().simple()))
        .secret_string(r#"{"schema_version":1,"demo":true}"#)
        .send()
        .await
        .map_err(|e| anyhow::anyhow!("create secret: {}", e.into_service_error()))?;
    println!("  secret     {}", secret.name().unwrap_or_default());
    sqs.send_message()
        .queue_url(&queue_url)
        .message_body(r#"{"demo":"hello"}"#)
        .send()
        .await
        .map_err(|e| anyhow::anyhow!("send message: {}", e.into_service_error()))?;
    let received = sqs
        .receive_message()
        .queue_url(&queue_url)
        .wait_time_seconds(1)
        .send()
        .await
        .map_err(|e| anyhow::anyhow!("receive message: {}", e.into_service_error()))?;
    println!(
        "  sent and received {} message(s) through the real aws-sdk-sqs client",
        received.messages().len()
    );

    step(
        3,
        "identity platform stand-in: register an app and a user, mint tokens",
    );
    let identity = stack
        .try_identity()
        .map_err(|e| anyhow::anyhow!("identity stand-in did not start: {e}"))?;
    println!(
        "  up at {} (introspection {})",
        identity.base_url,
        identity.introspection_url()
    );
    let tenant = "demo-tenant";
    let client_id = "11111111-2222-3333-4444-555555555555";
    let user = "helpdesk@demo.example.com";
    identity.register_app(local_stack::identity::AppRegistration::mailbridge(
        tenant, client_id,
    ));
    identity.register_user(local_stack::identity::UserAccount::new(
        tenant,
        user,
        "demo-password",
    ));
    let lifetime = std::time::Duration::from_secs(3600);
    let imap_token = identity.mint_access_token(
        tenant,
        client_id,
        user,
        "https://outlook.office.com",
        &["IMAP.AccessAsUser.All"],
        lifetime,
    );
    let graph_token = identity.mint_access_token(
        tenant,
        client_id,
        user,
        "https://graph.microsoft.com",
        &["Mail.Send"],
        lifetime,
    );
    println!("  {user}: one IMAP-audience and one Graph-audience access token");

    step(
        4,
        "Dovecot: deliver a message, then read it over IMAPS with XOAUTH2",
    );
    let dovecot = stack
        .try_dovecot()
        .map_err(|e| anyhow::anyhow!("dovecot did not start: {e}"))?
        .clone();
    let raw = b"From: Alice <alice@customer.example>\r\nTo: helpdesk@demo.example.com\r\nSubject: Printer on fire\r\nMessage-ID: <demo-1@customer.example>\r\n\r\nPlease help.\r\n";
    let admin = dovecot.clone();
    let status = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
        admin.deliver_to(user, "INBOX", raw)?;
        admin.mailbox_status(user, "INBOX")
    })
    .await??;
    println!(
        "  delivered with doveadm: {} message(s), {} unseen, UIDVALIDITY {}",
        status.messages, status.unseen, status.uidvalidity
    );
    // the production IMAP client (mailbridge::imap), trusting the local CA explicitly
    let endpoint = mailbridge::imap::ImapEndpoint {
        host: "localhost".into(),
        port: dovecot.imaps_port,
        timeout: std::time::Duration::from_secs(10),
    };
    let tls = mailbridge::imap::tls_config(Some(&dovecot.ca_pem_path))?;
    let token = secrecy::SecretString::from(imap_token);
    let mut imap = mailbridge::imap::connect_and_login(&endpoint, tls.clone(), user, &token)
        .await
        .context("XOAUTH2 login with the IMAP token")?;
    let folder = imap.select("INBOX").await?;
    let unseen = imap
        .search(mailbridge::imap::SearchScope::UnseenUndeleted)
        .await?;
    println!(
        "  XOAUTH2 login OK; INBOX has {} message(s), unseen UIDs {unseen:?}",
        folder.exists
    );
    imap.logout().await;
    let graph_token = secrecy::SecretString::from(graph_token);
    match mailbridge::imap::connect_and_login(&endpoint, tls, user, &graph_token).await {
        Ok(_) => anyhow::bail!("Dovecot accepted a Graph-audience token for IMAP"),
        Err(e) => println!("  a Graph-audience token is rejected, as at Microsoft: {e}"),
    }

    println!("\ndemo finished: every step passed");
    Ok(())
}
