//! `local-stack`: start the local stack, or run the demo on it.
//!
//! - `local-stack start`: start moto, the identity / Graph / ticket API stand-ins and Dovecot on
//!   127.0.0.1, create the state table, the thread-marker key secret and the notification DLQ,
//!   print the endpoints and `export` lines for a shell (all the functions need, e.g. for
//!   infra/scripts/sam-local.sh), wait for Ctrl-C.
//! - `local-stack demo`: start the stack and walk through it step by step, printing each step;
//!   exits non-zero if a step fails. `--helpdesk rt` then lands the loop in a real Request
//!   Tracker 5 too.

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
    Demo {
        /// `rt`: then also land the loop in a real Request Tracker 5 (a throwaway instance): a
        /// new mail becomes an RT ticket, the customer's reply its correspondence.
        #[arg(long, value_parser = ["stand-in", "rt"], default_value = "stand-in")]
        helpdesk: String,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    // the stand-ins listen on loopback: service URLs pointing at them are allowed here
    mailbridge::config::allow_local_targets_in_this_process();
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
        Command::Demo { helpdesk } => demo(&stack, &helpdesk).await,
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
    let aws = moto.sdk_config();
    local_stack::moto::ensure_state_table(&aws_sdk_dynamodb::Client::new(&aws), state_table)
        .await?;
    // What the functions need besides the table, so that they (e.g. under `sam local invoke`,
    // infra/scripts/sam-local.sh) run with just these exports.
    aws_sdk_secretsmanager::Client::new(&aws)
        .create_secret()
        .name(START_THREAD_KEY_SECRET)
        .secret_string(format!(
            "local-thread-key-{}",
            uuid::Uuid::new_v4().simple()
        ))
        .send()
        .await
        .map_err(sdk("create the thread key secret"))?;
    let dlq_url = aws_sdk_sqs::Client::new(&aws)
        .create_queue()
        .queue_name(START_DLQ)
        .send()
        .await
        .map_err(sdk("create the notification DLQ"))?
        .queue_url
        .ok_or_else(|| anyhow::anyhow!("no DLQ URL"))?;
    println!("\n# paste into a shell to point the functions and the CLI at the local stack:");
    for (k, v) in moto.env() {
        println!("export {k}={v}");
    }
    println!("export MAILBRIDGE_STATE_TABLE={state_table}");
    println!("export MAILBRIDGE_SECRET_PREFIX=mailbridge/");
    println!("export MAILBRIDGE_THREAD_KEY_SECRET={START_THREAD_KEY_SECRET}");
    println!("export MAILBRIDGE_DLQ_URL={dlq_url}");
    // The stand-ins listen on loopback: allowed only with this (never set in Lambda).
    println!("export MAILBRIDGE_ALLOW_LOCAL_TARGETS=true");
    if let Ok(graph) = stack.try_graph() {
        println!("export MAILBRIDGE_GRAPH_URL={}", graph.v1_url());
    }
    if let Ok(dovecot) = stack.try_dovecot() {
        println!(
            "export MAILBRIDGE_IMAP_CA_FILE={}",
            dovecot.ca_pem_path.display()
        );
    }
    if let Ok(identity) = stack.try_identity() {
        println!(
            "# identity stand-in (authority host): {}",
            identity.base_url
        );
    }
    if let Ok(graph) = stack.try_graph() {
        println!(
            "# Graph stand-in (graph host): {} (faults: POST /_control/faults, docs/local-stack.md)",
            graph.base_url
        );
    }
    if let Ok(tickets) = stack.try_tickets() {
        println!(
            "# ticket API stand-in: {} (faults: POST /_control/faults, docs/local-stack.md)",
            tickets.base_url
        );
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

/// The thread-marker key secret and the notification DLQ `local-stack start` creates.
const START_THREAD_KEY_SECRET: &str = "mailbridge/thread-marker-key";
const START_DLQ: &str = "mailbridge-notifications-dlq";

/// Print a numbered step.
fn step(n: u32, text: &str) {
    println!("\n[{n}] {text}");
}

/// An AWS SDK error with its service error spelled out.
fn sdk<E: std::fmt::Debug>(what: &str) -> impl FnOnce(E) -> anyhow::Error + '_ {
    move |e| anyhow::anyhow!("{what}: {e:?}")
}

/// A workspace binary built by `cargo build --workspace --bins` (demo.sh runs it first): it lives
/// next to this executable in `<target>/debug/`, like `tests/src/lib.rs` finds them. This crate
/// cannot depend on the function crates, so they are located, not linked.
fn bootstrap(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe
        .parent()
        .ok_or_else(|| anyhow::anyhow!("{} has no parent folder", exe.display()))?;
    let path = dir.join(name);
    if !path.exists() {
        anyhow::bail!(
            "{} is missing: run `cargo build --workspace --bins` first (demo.sh does)",
            path.display()
        );
    }
    Ok(path)
}

/// Wait until `folder` of `user` holds at least one message; return the messages.
async fn wait_for_mail(
    dovecot: &std::sync::Arc<local_stack::dovecot::Dovecot>,
    user: &str,
    folder: &str,
) -> anyhow::Result<Vec<local_stack::dovecot::StoredMessage>> {
    for _ in 0..50 {
        let (d, u, f) = (dovecot.clone(), user.to_owned(), folder.to_owned());
        let listed = tokio::task::spawn_blocking(move || d.list_messages(&u, &f)).await?;
        if let Ok(messages) = listed
            && !messages.is_empty()
        {
            return Ok(messages);
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    anyhow::bail!("no mail arrived in {user}/{folder} within 10 s")
}

const DEMO_TENANT: &str = "contoso-demo.onmicrosoft.com";
const DEMO_CLIENT_ID: &str = "11111111-2222-3333-4444-555555555555";
const HELPDESK: &str = "helpdesk@contoso-demo.example";
const HELPDESK_PASSWORD: &str = "demo-password-not-a-secret";
const CUSTOMER: &str = "alice@customer.example";
const ACCOUNT: &str = "mailbridge/helpdesk";
const THREAD_KEY_SECRET: &str = "mailbridge/thread-key";
const STATE_TABLE: &str = "mailbridge-demo-state";
const TICKET: &str = "4711";

async fn demo(stack: &LocalStack, helpdesk: &str) -> anyhow::Result<()> {
    use anyhow::Context;
    use mailbridge::token::{AccountSecret, IdentityClient, SecretsManagerStore, SystemClock};

    println!("\nlocal stack:");
    if !print_summary(stack) {
        println!("  (some components are down; the steps that need them will fail)");
    }
    let moto = stack
        .try_moto()
        .map_err(|e| anyhow::anyhow!("moto did not start: {e}"))?;
    let identity = stack
        .try_identity()
        .map_err(|e| anyhow::anyhow!("identity stand-in did not start: {e}"))?;
    let graph = stack
        .try_graph()
        .map_err(|e| anyhow::anyhow!("Graph stand-in did not start: {e}"))?;
    // the demo reads the customer's copy back over IMAP
    graph.deliver_mail_for(CUSTOMER);
    let tickets = stack
        .try_tickets()
        .map_err(|e| anyhow::anyhow!("ticket API stand-in did not start: {e}"))?;
    let dovecot = stack
        .try_dovecot()
        .map_err(|e| anyhow::anyhow!("Dovecot did not start: {e}"))?
        .clone();
    let send_binary = bootstrap("send-notifications")?;
    let poll_binary = bootstrap("poll-mailboxes")?;
    let aws = moto.sdk_config();
    let sqs = aws_sdk_sqs::Client::new(&aws);
    let dynamodb = aws_sdk_dynamodb::Client::new(&aws);
    let secrets = aws_sdk_secretsmanager::Client::new(&aws);

    // ---------------------------------------------------------------------------------------
    step(
        1,
        "account secret: ROPC sign-in at the identity stand-in, refresh token stored in Secrets Manager",
    );
    identity.register_app(local_stack::identity::AppRegistration::mailbridge(
        DEMO_TENANT,
        DEMO_CLIENT_ID,
    ));
    identity.register_user(local_stack::identity::UserAccount::new(
        DEMO_TENANT,
        HELPDESK,
        HELPDESK_PASSWORD,
    ));
    let mut account = AccountSecret::new(DEMO_TENANT, DEMO_CLIENT_ID, HELPDESK);
    account.authority_host = identity.base_url.clone();
    let store = SecretsManagerStore::from_conf(&aws);
    let identity_client = IdentityClient::new(mailbridge::http::default_client()?);
    let login = mailbridge::token::login::password_login(
        &store,
        &identity_client,
        ACCOUNT,
        account,
        secrecy::SecretString::from(HELPDESK_PASSWORD),
        false,
        &SystemClock,
    )
    .await
    .context("ROPC sign-in (mailbridge::token::login::password_login)")?;
    println!(
        "  signed in as {HELPDESK} (tenant {DEMO_TENANT}) at {}",
        identity.base_url
    );
    println!(
        "  secret {} {} (refresh token, status ok, no password kept); granted: {}",
        login.secret_name,
        if login.created { "created" } else { "updated" },
        login.granted_scope
    );
    secrets
        .create_secret()
        .name(THREAD_KEY_SECRET)
        .secret_string(format!("demo-thread-key-{}", uuid::Uuid::new_v4().simple()))
        .send()
        .await
        .map_err(sdk("create the thread key secret"))?;
    println!("  secret {THREAD_KEY_SECRET} created (HMAC key for ticket markers, both functions)");

    // ---------------------------------------------------------------------------------------
    step(2, "a notification for ticket 4711 queued on SQS (moto)");
    let dlq_url = sqs
        .create_queue()
        .queue_name("mailbridge-demo-notifications-dlq")
        .send()
        .await
        .map_err(sdk("create the DLQ"))?
        .queue_url
        .context("no DLQ URL")?;
    let queue_url = sqs
        .create_queue()
        .queue_name("mailbridge-demo-notifications")
        .send()
        .await
        .map_err(sdk("create the queue"))?
        .queue_url
        .context("no queue URL")?;
    let queue_arn = sqs
        .get_queue_attributes()
        .queue_url(&queue_url)
        .attribute_names(aws_sdk_sqs::types::QueueAttributeName::QueueArn)
        .send()
        .await
        .map_err(sdk("get the queue ARN"))?
        .attributes()
        .and_then(|a| a.get(&aws_sdk_sqs::types::QueueAttributeName::QueueArn))
        .cloned()
        .context("no QueueArn")?;
    local_stack::moto::ensure_state_table(&dynamodb, STATE_TABLE).await?;
    let notification = serde_json::json!({
        "version": 1,
        "id": "ticket-4711-update-1",
        "account": ACCOUNT,
        "to": [{"address": CUSTOMER, "name": "Alice Customer"}],
        "subject": "Your printer ticket was updated",
        "body": {"content_type": "text", "content": "Hello Alice,\n\na technician will visit tomorrow at 10:00.\n\nContoso helpdesk"},
        "ticket_number": TICKET
    });
    sqs.send_message()
        .queue_url(&queue_url)
        .message_body(notification.to_string())
        .send()
        .await
        .map_err(sdk("send the notification"))?;
    println!("  queue {queue_url}");
    println!("  {notification}");

    // ---------------------------------------------------------------------------------------
    step(
        3,
        "send-notifications bootstrap under the Lambda Runtime API emulator, SQS event from the queue",
    );
    let mut send_env = moto.env();
    send_env.extend([
        ("MAILBRIDGE_STATE_TABLE".to_owned(), STATE_TABLE.to_owned()),
        (
            "MAILBRIDGE_SECRET_PREFIX".to_owned(),
            "mailbridge/".to_owned(),
        ),
        ("MAILBRIDGE_DLQ_URL".to_owned(), dlq_url.clone()),
        (
            "MAILBRIDGE_THREAD_KEY_SECRET".to_owned(),
            THREAD_KEY_SECRET.to_owned(),
        ),
        ("MAILBRIDGE_GRAPH_URL".to_owned(), graph.v1_url()),
        (
            "MAILBRIDGE_ALLOW_LOCAL_TARGETS".to_owned(),
            "true".to_owned(),
        ),
        ("RUST_LOG".to_owned(), "info".to_owned()),
    ]);
    let outbound = Outbound {
        sqs: sqs.clone(),
        queue_url: queue_url.clone(),
        queue_arn,
        send_binary,
        send_env,
    };
    outbound.send_queued(1).await?;
    let accepted = graph.accepted(HELPDESK);
    if accepted.len() != 1 {
        anyhow::bail!(
            "the Graph stand-in accepted {} sendMail request(s) for {HELPDESK}, expected 1",
            accepted.len()
        );
    }
    println!(
        "  Graph stand-in accepted sendMail for {HELPDESK} (request-id {})",
        accepted[0].request_id
    );
    let delivered = wait_for_mail(&dovecot, CUSTOMER, "INBOX").await?;
    let delivered_raw = delivered[0].raw.clone();
    let parsed = mail_parser::MessageParser::default()
        .parse(&delivered_raw)
        .context("parse the delivered mail")?;
    let delivered_id = parsed
        .message_id()
        .context("the delivered mail has no Message-ID")?
        .to_owned();
    let delivered_subject = parsed.subject().unwrap_or_default().to_owned();
    let delivered_text = parsed
        .body_text(0)
        .map(|t| t.into_owned())
        .unwrap_or_default();
    println!("  delivered into {CUSTOMER}'s Dovecot INBOX:");
    println!("    Subject: {delivered_subject}");
    println!("    Message-ID: <{delivered_id}>");
    for line in delivered_text.lines() {
        println!("    | {line}");
    }

    // ---------------------------------------------------------------------------------------
    step(
        4,
        "the customer replies; the reply lands in the helpdesk's Dovecot INBOX",
    );
    let quoted: String = delivered_text
        .lines()
        .map(|l| format!("> {l}\r\n"))
        .collect();
    let reply = format!(
        "From: Alice Customer <{CUSTOMER}>\r\n\
         To: {HELPDESK}\r\n\
         Subject: Re: {delivered_subject}\r\n\
         Date: {}\r\n\
         Message-ID: <reply-{}@customer.example>\r\n\
         In-Reply-To: <{delivered_id}>\r\n\
         References: <{delivered_id}>\r\n\
         MIME-Version: 1.0\r\n\
         Content-Type: text/plain; charset=utf-8\r\n\
         \r\n\
         Thanks, 10:00 works. The printer is on the 2nd floor.\r\n\
         \r\n\
         On {} Contoso helpdesk wrote:\r\n{quoted}",
        chrono::Utc::now().to_rfc2822(),
        uuid::Uuid::new_v4().simple(),
        chrono::Utc::now().format("%a, %d %b %Y"),
    );
    {
        let d = dovecot.clone();
        let raw = reply.clone().into_bytes();
        tokio::task::spawn_blocking(move || d.deliver_to(HELPDESK, "INBOX", &raw)).await??;
    }
    println!("  Subject: Re: {delivered_subject}");
    println!("  In-Reply-To / References: <{delivered_id}>");
    println!("  body: a new line above the quoted notification");

    // ---------------------------------------------------------------------------------------
    step(
        5,
        "mailbox config in the state table, then the poll-mailboxes bootstrap on a scheduler event",
    );
    let sink = "demo-helpdesk";
    let mailbox_name = "helpdesk";
    let fields = serde_json::json!({
        "user": HELPDESK,
        "account": ACCOUNT,
        "host": "localhost",
        "port": dovecot.imaps_port,
        "ticket_api_url": tickets.sink_url(sink),
    });
    put_mailbox_config(&dynamodb, STATE_TABLE, mailbox_name, &fields).await?;
    println!("  {STATE_TABLE}: mailbox#{mailbox_name} = {fields} (listed in mailbox-index)");
    let mut poll_env = moto.env();
    poll_env.extend([
        ("MAILBRIDGE_STATE_TABLE".to_owned(), STATE_TABLE.to_owned()),
        (
            "MAILBRIDGE_SECRET_PREFIX".to_owned(),
            "mailbridge/".to_owned(),
        ),
        (
            "MAILBRIDGE_THREAD_KEY_SECRET".to_owned(),
            THREAD_KEY_SECRET.to_owned(),
        ),
        (
            "MAILBRIDGE_IMAP_CA_FILE".to_owned(),
            dovecot.ca_pem_path.display().to_string(),
        ),
        ("RUST_LOG".to_owned(), "info".to_owned()),
        // Dovecot and the ticket stand-in listen on loopback.
        (
            "MAILBRIDGE_ALLOW_LOCAL_TARGETS".to_owned(),
            "true".to_owned(),
        ),
    ]);
    let (report, poll_logs) = invoke_poll(&poll_binary, &poll_env).await?;
    if report["tickets_created"] != 1 {
        anyhow::bail!("poll-mailboxes created no ticket: {report}\nfunction logs:\n{poll_logs}");
    }

    // ---------------------------------------------------------------------------------------
    step(
        6,
        "the ticket API stand-in received the reply as a ticket update",
    );
    let received = tickets.tickets(sink);
    if received.len() != 1 {
        anyhow::bail!(
            "the ticket API received {} tickets, expected 1",
            received.len()
        );
    }
    let ticket = &received[0];
    let draft = &ticket.body["draft"];
    println!(
        "  ticket id {} (Idempotency-Key {})",
        ticket.id, ticket.idempotency_key
    );
    println!("  subject       {}", draft["subject"]);
    println!("  from          {}", draft["from"]);
    println!("  ticket_number {}", draft["ticket_number"]);
    println!("  thread_source {}", draft["thread_source"]);
    if draft["ticket_number"] != TICKET {
        anyhow::bail!(
            "the ticket was not threaded to ticket {TICKET}: ticket_number {}, draft {draft}",
            draft["ticket_number"]
        );
    }
    let processed = wait_for_mail(&dovecot, HELPDESK, "Processed").await?;
    let d = dovecot.clone();
    let inbox = tokio::task::spawn_blocking(move || d.list_messages(HELPDESK, "INBOX")).await??;
    println!(
        "  {HELPDESK}: INBOX {} message(s), Processed {} message(s)",
        inbox.len(),
        processed.len()
    );
    if !inbox.is_empty() {
        anyhow::bail!("the reply was not moved out of the INBOX");
    }

    if helpdesk == "rt" {
        demo_rt(
            stack,
            &dovecot,
            &dynamodb,
            &secrets,
            &outbound,
            (&poll_binary, &poll_env),
            fields,
        )
        .await?;
    }
    println!(
        "\ndemo finished: notification sent for ticket {TICKET}, the reply came back as ticket {TICKET}"
    );
    Ok(())
}

/// The send side of the demo: the notification queue and the send-notifications bootstrap.
struct Outbound {
    sqs: aws_sdk_sqs::Client,
    queue_url: String,
    queue_arn: String,
    send_binary: PathBuf,
    send_env: Vec<(String, String)>,
}

impl Outbound {
    /// Receives the `expected` messages waiting on the queue and runs the send-notifications
    /// bootstrap once on them (an SQS event, through the Runtime API emulator); its response.
    async fn send_queued(&self, expected: usize) -> anyhow::Result<serde_json::Value> {
        let mut messages = Vec::new();
        for _ in 0..10 {
            let received = self
                .sqs
                .receive_message()
                .queue_url(&self.queue_url)
                .max_number_of_messages(10)
                .message_system_attribute_names(aws_sdk_sqs::types::MessageSystemAttributeName::All)
                .wait_time_seconds(2)
                .send()
                .await
                .map_err(sdk("receive from the queue"))?;
            messages.extend(received.messages().iter().cloned());
            if messages.len() >= expected {
                break;
            }
        }
        let records: Vec<serde_json::Value> = messages
            .iter()
            .map(|m| {
                let attributes: serde_json::Map<String, serde_json::Value> = m
                    .attributes()
                    .map(|a| {
                        a.iter()
                            .map(|(k, v)| (k.as_str().to_owned(), v.clone().into()))
                            .collect()
                    })
                    .unwrap_or_default();
                serde_json::json!({
                    "messageId": m.message_id(),
                    "receiptHandle": m.receipt_handle(),
                    "body": m.body(),
                    "attributes": attributes,
                    "messageAttributes": {},
                    "md5OfBody": m.md5_of_body(),
                    "eventSource": "aws:sqs",
                    "eventSourceARN": self.queue_arn,
                    "awsRegion": "us-east-1"
                })
            })
            .collect();
        if records.len() != expected {
            anyhow::bail!(
                "expected {expected} message(s) on the queue, received {}",
                records.len()
            );
        }
        let sqs_event = serde_json::json!({ "Records": records });
        let send_api = local_stack::runtime_api::RuntimeApi::start().await?;
        send_api.spawn_function(
            &local_stack::runtime_api::FunctionConfig::new("send-notifications", &self.send_binary)
                .with_env(self.send_env.clone()),
        )?;
        println!("  bootstrap {}", self.send_binary.display());
        let outcome = send_api
            .invoke(sqs_event, std::time::Duration::from_secs(60))
            .await?;
        let (duration, init) = (outcome.duration, outcome.init_duration);
        let response = outcome.into_response().map_err(|e| {
            anyhow::anyhow!(
                "send-notifications: {e:#}\nfunction logs:\n{}",
                send_api.logs()
            )
        })?;
        println!(
            "  invocation done in {duration:?} (cold start init {:?}); response {response}",
            init.unwrap_or_default()
        );
        if response["batchItemFailures"] != serde_json::json!([]) {
            anyhow::bail!(
                "send-notifications reported failures: {response}\nfunction logs:\n{}",
                send_api.logs()
            );
        }
        send_api.shutdown();
        Ok(response)
    }
}

/// Run the poll-mailboxes bootstrap once on the scheduler event (through the Runtime API
/// emulator); its report and logs.
async fn invoke_poll(
    poll_binary: &std::path::Path,
    env: &[(String, String)],
) -> anyhow::Result<(serde_json::Value, String)> {
    use anyhow::Context;
    let schedule_path = local_stack::repo_root().join("infra/events/poll-schedule.json");
    let schedule: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(&schedule_path)
            .with_context(|| format!("read {}", schedule_path.display()))?,
    )?;
    let poll_api = local_stack::runtime_api::RuntimeApi::start().await?;
    poll_api.spawn_function(
        &local_stack::runtime_api::FunctionConfig::new("poll-mailboxes", poll_binary)
            .with_env(env.to_vec()),
    )?;
    println!("  bootstrap {}", poll_binary.display());
    println!("  event {}", schedule_path.display());
    let outcome = poll_api
        .invoke(schedule, std::time::Duration::from_secs(60))
        .await?;
    let (duration, init) = (outcome.duration, outcome.init_duration);
    let report = outcome.into_response().map_err(|e| {
        anyhow::anyhow!("poll-mailboxes: {e:#}\nfunction logs:\n{}", poll_api.logs())
    })?;
    println!(
        "  invocation done in {duration:?} (cold start init {:?}); report {report}",
        init.unwrap_or_default()
    );
    let logs = poll_api.logs();
    poll_api.shutdown();
    Ok((report, logs))
}

/// `--helpdesk rt`: the mailbox's sink switched to a throwaway Request Tracker 5 whose outgoing
/// mail goes through `mailbridge sendmail` (as docs/outbound.md configures it). A new mail becomes
/// an RT ticket; an agent's answer in RT goes out through the queue, send-notifications and
/// Graph to the customer, with RT's own headers; the customer's reply to it lands on the same
/// ticket as correspondence.
async fn demo_rt(
    stack: &LocalStack,
    dovecot: &std::sync::Arc<local_stack::dovecot::Dovecot>,
    dynamodb: &aws_sdk_dynamodb::Client,
    secrets: &aws_sdk_secretsmanager::Client,
    outbound: &Outbound,
    (poll_binary, poll_env): (&std::path::Path, &[(String, String)]),
    mut fields: serde_json::Value,
) -> anyhow::Result<()> {
    use local_stack::request_tracker::{RequestTracker, RtOptions};
    const RT_SECRET: &str = "mailbridge-ticket-api/rt-demo";
    const RT_QUEUE: &str = "General";

    step(
        7,
        "Request Tracker 5: a throwaway instance (own SQLite file and port) sending its mail through `mailbridge sendmail`, the mailbox's sink switched to it",
    );
    let started = std::time::Instant::now();
    let rt_dir = stack.run_dir().join("request-tracker");
    let rt_options = RtOptions {
        correspond_address: HELPDESK.into(),
        ..RtOptions::default()
    };
    let sendmail = write_sendmail_wrapper(&rt_dir, outbound, &rt_options.rtname)?;
    let rt = RequestTracker::start(
        &rt_dir,
        RtOptions {
            site_config_extra: format!(
                "Set($MailCommand, 'sendmailpipe');\nSet($SendmailPath, '{}');\nSet($SendmailArguments, '-oi -t');\n",
                sendmail.display()
            ),
            ..rt_options
        },
    )
    .await?;
    let root = rt.root_client();
    let version = root.get("rt").await?;
    println!(
        "  RT {} at {} (ready in {:.1} s)",
        version["Version"].as_str().unwrap_or("?"),
        rt.base_url,
        started.elapsed().as_secs_f64()
    );
    secrets
        .create_secret()
        .name(RT_SECRET)
        .secret_string(rt.adapter_token_secret())
        .send()
        .await
        .map_err(sdk("store the RT token secret"))?;
    let sink = serde_json::json!({
        "kind": "rt", "url": rt.base_url, "secret": RT_SECRET, "queue": RT_QUEUE,
        "rt_name": rt.options.rtname,
    });
    let object = fields
        .as_object_mut()
        .ok_or_else(|| anyhow::anyhow!("the mailbox fields are not an object"))?;
    object.remove("ticket_api_url");
    object.insert("sink".into(), sink.clone());
    put_mailbox_config(dynamodb, STATE_TABLE, "helpdesk", &fields).await?;
    println!("  secret {RT_SECRET}: the token of RT user mailbridge");
    println!("  mailbox#helpdesk sink = {sink}");

    let new_mail = format!(
        "From: Alice <{CUSTOMER}>\r\nTo: {HELPDESK}\r\nSubject: Printer on fire\r\n\
         Date: {}\r\nMessage-ID: <rt-demo-{}@customer.example>\r\nMIME-Version: 1.0\r\n\
         Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\n\
         The printer on floor 3 is on fire. Photo attached.\r\n--b\r\nContent-Type: image/png; name=\"fire.png\"\r\n\
         Content-Disposition: attachment; filename=\"fire.png\"\r\nContent-Transfer-Encoding: base64\r\n\r\n\
         iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg==\r\n--b--\r\n",
        chrono::Utc::now().to_rfc2822(),
        uuid::Uuid::new_v4().simple(),
    );
    deliver(dovecot, new_mail.into_bytes()).await?;
    println!("  {CUSTOMER} → {HELPDESK}: \"Printer on fire\" with fire.png");
    let (report, logs) = invoke_poll(poll_binary, poll_env).await?;
    if report["tickets_created"] != 1 {
        anyhow::bail!("poll-mailboxes created no RT ticket: {report}\nfunction logs:\n{logs}");
    }
    let ids = root.tickets_in_queue(RT_QUEUE).await?;
    let [ticket] = ids.as_slice() else {
        anyhow::bail!(
            "RT queue {RT_QUEUE} holds {} tickets, expected 1",
            ids.len()
        );
    };
    let record = root.ticket(ticket).await?;
    let files: Vec<String> = root
        .attachments(ticket)
        .await?
        .into_iter()
        .filter(|a| !a.filename.is_empty())
        .map(|a| {
            format!(
                "{} ({}, {} bytes)",
                a.filename,
                a.content_type,
                a.content.len()
            )
        })
        .collect();
    println!(
        "  RT ticket {ticket} in queue {RT_QUEUE}: subject {}, requestor {}, attachments {files:?}",
        record["Subject"], record["Requestor"][0]["id"]
    );

    println!("  RT mailed its autoreply to {CUSTOMER} through `mailbridge sendmail`: queued");

    step(
        8,
        "an agent answers in RT; RT runs `mailbridge sendmail`, send-notifications sends both mails through Graph",
    );
    let agent_words = "A technician is on the way with an extinguisher.";
    root.post(
        &format!("ticket/{ticket}/correspond"),
        &serde_json::json!({"Content": format!("Hello Alice,\n\n{agent_words}\n\nContoso helpdesk"), "ContentType": "text/plain"}),
    )
    .await?;
    println!("  RT ticket {ticket}: correspondence by root: {agent_words:?}");
    outbound.send_queued(2).await?;
    let rt_reply = {
        let mut found = None;
        for _ in 0..50 {
            let (d, u) = (dovecot.clone(), CUSTOMER.to_owned());
            let listed =
                tokio::task::spawn_blocking(move || d.list_messages(&u, "INBOX")).await??;
            found = listed
                .into_iter()
                .find(|m| String::from_utf8_lossy(&m.raw).contains(agent_words));
            if found.is_some() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
        let found =
            found.ok_or_else(|| anyhow::anyhow!("RT's answer did not reach {CUSTOMER}'s INBOX"))?;
        let parsed = mail_parser::MessageParser::default()
            .parse(&found.raw)
            .ok_or_else(|| anyhow::anyhow!("RT's answer does not parse"))?;
        let header = |name: &str| {
            parsed
                .header_raw(name)
                .map(|v| v.trim().to_owned())
                .unwrap_or_default()
        };
        [
            ("Subject", header("Subject")),
            ("Message-ID", header("Message-ID")),
            ("In-Reply-To", header("In-Reply-To")),
            ("References", header("References")),
        ]
    };
    println!("  delivered into {CUSTOMER}'s Dovecot INBOX with RT's own headers:");
    for (name, value) in rt_reply.iter().filter(|(_, value)| !value.is_empty()) {
        println!("    {name}: {value}");
    }
    let [(_, subject), (_, message_id), _, (_, references)] = &rt_reply;
    if !subject.contains(&format!("[{} #{ticket}]", rt.options.rtname)) {
        anyhow::bail!("RT's subject tag is missing from the delivered answer: {subject}");
    }

    step(
        9,
        "the customer answers RT's mail (threaded on RT's headers); poll-mailboxes lands it on the same RT ticket",
    );
    let reply = format!(
        "From: Alice <{CUSTOMER}>\r\nTo: {HELPDESK}\r\nSubject: Re: {subject}\r\n\
         Date: {}\r\nMessage-ID: <rt-demo-reply-{}@customer.example>\r\n\
         In-Reply-To: {message_id}\r\nReferences: {references} {message_id}\r\nMIME-Version: 1.0\r\n\
         Content-Type: text/plain; charset=utf-8\r\n\r\nThe fire brigade is here now.\r\n\r\n> {agent_words}\r\n",
        chrono::Utc::now().to_rfc2822(),
        uuid::Uuid::new_v4().simple(),
    );
    deliver(dovecot, reply.into_bytes()).await?;
    println!("  Subject: Re: {subject}");
    invoke_poll(poll_binary, poll_env).await?;
    let ids = root.tickets_in_queue(RT_QUEUE).await?;
    let kinds: Vec<String> = root
        .history(ticket)
        .await?
        .into_iter()
        .map(|t| t.kind)
        .filter(|k| matches!(k.as_str(), "Create" | "Correspond" | "Comment"))
        .collect();
    println!(
        "  RT ticket {ticket}: {kinds:?}; tickets in {RT_QUEUE}: {}",
        ids.len()
    );
    if ids.len() != 1 || kinds != ["Create", "Correspond", "Correspond"] {
        anyhow::bail!(
            "the reply did not land as correspondence on ticket {ticket}: {kinds:?}, tickets {ids:?}"
        );
    }
    Ok(())
}

/// The `sendmail` RT runs (docs/outbound.md): `mailbridge sendmail` with the queue, the account
/// and RT's subject tag, and the local stack's AWS settings.
fn write_sendmail_wrapper(
    dir: &std::path::Path,
    outbound: &Outbound,
    rtname: &str,
) -> anyhow::Result<PathBuf> {
    let mut env: Vec<(String, String)> = outbound
        .send_env
        .iter()
        .filter(|(name, _)| name.starts_with("AWS_"))
        .cloned()
        .collect();
    env.extend([
        (
            "MAILBRIDGE_SENDMAIL_CONFIG".to_owned(),
            "/dev/null".to_owned(),
        ),
        (
            "MAILBRIDGE_QUEUE_URL".to_owned(),
            outbound.queue_url.clone(),
        ),
        ("MAILBRIDGE_ACCOUNT".to_owned(), ACCOUNT.to_owned()),
        (
            "MAILBRIDGE_TICKET_PATTERN".to_owned(),
            format!(r"\[{} #(\d+)\]", rtname.replace('.', r"\.")),
        ),
    ]);
    std::fs::create_dir_all(dir)?;
    Ok(local_stack::request_tracker::write_sendmail_wrapper(
        dir,
        &bootstrap("mailbridge")?,
        &env,
    )?)
}

/// Put `raw` into the helpdesk's INBOX.
async fn deliver(
    dovecot: &std::sync::Arc<local_stack::dovecot::Dovecot>,
    raw: Vec<u8>,
) -> anyhow::Result<()> {
    let d = dovecot.clone();
    tokio::task::spawn_blocking(move || d.deliver_to(HELPDESK, "INBOX", &raw)).await??;
    Ok(())
}

/// Store a mailbox configuration the way `mailbridge mailbox add` does: validated, its hosts
/// checked against the local stack's target policy (loopback allowed), listed in the index.
async fn put_mailbox_config(
    client: &aws_sdk_dynamodb::Client,
    table: &str,
    name: &str,
    fields: &serde_json::Value,
) -> anyhow::Result<()> {
    mailbridge::state_table::put_mailbox_config(
        client,
        table,
        name,
        fields,
        &mailbridge::mailbox::TargetPolicy::local(),
    )
    .await?;
    Ok(())
}
