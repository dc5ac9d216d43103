//! The operator CLI `mailbridge` run AS A PROCESS against the local stack (moto, identity
//! stand-in, Dovecot, Graph and ticket API stand-ins), the way an operator runs it: standard AWS
//! environment variables, account hosts from the account secret.
//!
//! Each test owns its tenant, app, user, secret prefix, state table and queue.

use std::process::Output;
use std::time::Duration;

use local_stack::identity::{AppRegistration, IdentityStandIn, UserAccount};
use mailbridge_tests::{create_queue, create_state_table, get_secret, stack, unique, unique_user};
use serde_json::Value;

const PASSWORD: &str = "correct horse battery staple";

/// One test's world.
struct World {
    idp: IdentityStandIn,
    tenant: String,
    client_id: String,
    upn: String,
    prefix: String,
    table: String,
}

impl World {
    /// A tenant with the mailbridge app (`app` edits the registration), one plain user, a
    /// secret prefix and a state table of its own.
    async fn new(app: impl FnOnce(&mut AppRegistration)) -> World {
        let idp = stack().identity().clone();
        let tenant = format!("{}.onmicrosoft.com", unique("tenant"));
        let client_id = uuid::Uuid::new_v4().to_string();
        let upn = unique_user("helpdesk");
        let mut registration = AppRegistration::mailbridge(&tenant, &client_id);
        app(&mut registration);
        idp.register_app(registration);
        idp.register_user(UserAccount::new(&tenant, &upn, PASSWORD));
        World {
            idp,
            tenant,
            client_id,
            upn,
            prefix: format!("{}/", unique("cli")),
            table: create_state_table("cli-state").await.expect("state table"),
        }
    }

    fn command(&self, args: &[&str]) -> tokio::process::Command {
        let mut command = mailbridge_tests::cli::command_on_stack(args, &self.prefix, &self.table);
        command.env("MAILBRIDGE_SINK_HOSTS", "psa.example.com");
        command
    }

    /// Run the CLI to the end (60 s at most).
    async fn run(&self, args: &[&str]) -> Output {
        self.run_env(args, &[]).await
    }

    /// Run the CLI with extra environment variables.
    async fn run_env(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut command = self.command(args);
        command.envs(env.iter().copied());
        let child = command.spawn().expect("start mailbridge");
        let output = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
            .await
            .unwrap_or_else(|_| panic!("mailbridge {args:?} did not finish in 60 s"))
            .expect("wait for mailbridge");
        eprintln!(
            "$ mailbridge {}\n--- exit {:?}\n--- stdout\n{}--- stderr\n{}",
            args.join(" "),
            output.status.code(),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        output
    }

    /// Run with `password` on stdin.
    async fn run_with_stdin(&self, args: &[&str], stdin: &str) -> Output {
        use tokio::io::AsyncWriteExt as _;
        let mut command = self.command(args);
        command.stdin(std::process::Stdio::piped());
        let mut child = command.spawn().expect("start mailbridge");
        let mut pipe = child.stdin.take().expect("stdin");
        pipe.write_all(stdin.as_bytes()).await.expect("write stdin");
        drop(pipe);
        let output = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
            .await
            .expect("mailbridge finished in time")
            .expect("wait for mailbridge");
        eprintln!(
            "$ mailbridge {} (stdin given)\n--- exit {:?}\n--- stdout\n{}--- stderr\n{}",
            args.join(" "),
            output.status.code(),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        output
    }

    fn account(&self) -> String {
        "helpdesk".to_owned()
    }

    fn secret_name(&self) -> String {
        format!("{}{}", self.prefix, self.account())
    }

    fn login_args(&self) -> Vec<String> {
        vec![
            "login".into(),
            "--account".into(),
            self.account(),
            "--tenant".into(),
            self.tenant.clone(),
            "--client-id".into(),
            self.client_id.clone(),
            "--user".into(),
            self.upn.clone(),
            "--authority-host".into(),
            self.idp.base_url.clone(),
            "--imap-host".into(),
            format!("localhost:{}", stack().dovecot().imaps_port),
        ]
    }

    /// `mailbridge login --password-stdin` (ROPC).
    async fn login_with_password(&self) {
        let mut args = self.login_args();
        args.push("--password-stdin".into());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = self.run_with_stdin(&args, &format!("{PASSWORD}\n")).await;
        assert_eq!(out.status.code(), Some(0), "login failed");
        assert!(!text(&out.stdout).contains(PASSWORD));
        assert!(!text(&out.stderr).contains(PASSWORD));
    }

    /// `mailbridge mailbox add` for this user's Dovecot mailbox.
    async fn add_mailbox(&self, name: &str, sink: &str) {
        let port = stack().dovecot().imaps_port.to_string();
        let url = stack().tickets().sink_url(sink);
        let account = self.account();
        let out = self
            .run(&[
                "mailbox",
                "add",
                name,
                "--user",
                &self.upn,
                "--account",
                &account,
                "--host",
                "localhost",
                "--port",
                &port,
                "--ticket-api-url",
                &url,
            ])
            .await;
        assert_eq!(out.status.code(), Some(0), "mailbox add failed");
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn json(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {}", text(&out.stdout)))
}

/// The step of a `check --json` target whose name starts with `prefix`.
fn step<'a>(target: &'a Value, prefix: &str) -> &'a Value {
    target["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .find(|s| s["step"].as_str().unwrap_or("").starts_with(prefix))
        .unwrap_or_else(|| panic!("no step {prefix:?} in {target:#}"))
}

#[tokio::test]
async fn login_with_device_code_approved_through_the_identity_control_then_status() {
    let w = World::new(|_| {}).await;
    let mut args = w.login_args();
    args.push("--device-code".into());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let child = w.command(&args).spawn().expect("start mailbridge login");

    // The operator would type the code at the verification page; the test approves it through
    // the identity stand-in's control as the user.
    let mut user_code = None;
    for _ in 0..200 {
        if let Some(code) = w
            .idp
            .device_codes(&w.tenant)
            .into_iter()
            .find(|c| c.state == "pending")
        {
            user_code = Some(code.user_code);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let user_code = user_code.expect("the CLI requested a device code");
    w.idp
        .approve_device_code(&user_code, &w.upn)
        .expect("approve the device code");
    let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("login finished")
        .expect("wait for login");
    let stdout = text(&out.stdout);
    let stderr = text(&out.stderr);
    eprintln!("stdout:\n{stdout}\nstderr:\n{stderr}");
    assert_eq!(out.status.code(), Some(0));
    // the prompt (Microsoft's message with the code) was shown, on stderr
    assert!(stderr.contains(&user_code), "{stderr}");
    assert!(stdout.contains("signed in as"), "{stdout}");
    assert!(stdout.contains(&w.secret_name()), "{stdout}");

    // the account secret holds a refresh token with status ok, and it was never printed
    let stored: Value = serde_json::from_str(&get_secret(&w.secret_name()).await.unwrap()).unwrap();
    let refresh_token = stored["refresh_token"]
        .as_str()
        .expect("refresh token stored");
    assert_eq!(stored["status"]["state"], "ok");
    assert_eq!(stored["authority_host"], w.idp.base_url.as_str());
    assert!(!stdout.contains(refresh_token) && !stderr.contains(refresh_token));

    // status: the account with its token age
    let out = w.run(&["status", "--json"]).await;
    assert_eq!(out.status.code(), Some(0));
    let status = json(&out);
    let accounts = status["accounts"].as_array().unwrap();
    assert_eq!(accounts.len(), 1, "{status:#}");
    assert_eq!(accounts[0]["account"], "helpdesk");
    assert_eq!(accounts[0]["user"], w.upn.as_str());
    assert_eq!(accounts[0]["status"], "ok");
    assert!(accounts[0]["token_age_seconds"].as_i64().unwrap() < 600);
    assert!(!text(&out.stdout).contains(refresh_token));

    // a declined sign-in stores nothing new and exits 4
    let child = w
        .command(&["login", "--device-code", "--account", "helpdesk"])
        .spawn()
        .expect("start the second login");
    let mut declined = false;
    for _ in 0..200 {
        if let Some(code) = w
            .idp
            .device_codes(&w.tenant)
            .into_iter()
            .find(|c| c.state == "pending")
        {
            w.idp.decline_device_code(&code.user_code).unwrap();
            declined = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(declined, "the re-login requested a device code");
    let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("declined login finished")
        .expect("wait");
    assert_eq!(out.status.code(), Some(4), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("declined"),
        "{}",
        text(&out.stderr)
    );
}

#[tokio::test]
async fn check_is_green_for_a_working_mailbox() {
    let w = World::new(|_| {}).await;
    w.login_with_password().await;
    w.add_mailbox("support", &unique("sink")).await;

    let out = w.run(&["check", "support"]).await;
    assert_eq!(out.status.code(), Some(0), "check failed");
    let human = text(&out.stdout);
    assert!(!human.contains('✗'), "{human}");
    assert_eq!(human.matches('✓').count(), 6, "{human}");
    assert!(human.contains("✓ helpdesk (webhook at "), "{human}");
    // no Mail.ReadWrite consented: a warning, not a failure
    assert_eq!(human.matches('⚠').count(), 1, "{human}");

    let out = w.run(&["check", "--json", "support"]).await;
    assert_eq!(out.status.code(), Some(0));
    let report = json(&out);
    assert_eq!(report["ok"], true);
    let target = &report["targets"][0];
    assert_eq!(target["kind"], "mailbox");
    for s in target["steps"].as_array().unwrap() {
        let expected = if s["step"].as_str().unwrap().starts_with("large messages") {
            "warning"
        } else {
            "ok"
        };
        assert_eq!(s["result"], expected, "{s:#}");
    }
    let large = step(target, "large messages");
    let detail = large["detail"].as_str().unwrap();
    assert!(
        detail.contains("lacks Mail.ReadWrite")
            && detail.contains("403 ErrorAccessDenied")
            && detail.contains("parked as graph-rejected"),
        "names what large messages will do: {detail}"
    );
    assert!(
        large["fix"].as_str().unwrap().contains("Mail.ReadWrite"),
        "{large:#}"
    );
    // the Graph probe sent nothing
    assert!(stack().graph().accepted(&w.upn).is_empty());
    // no targets: every configured mailbox (its account is not checked twice), and no other
    // secret under the prefix: the thread-marker key lives there in the demo's setup
    mailbridge_tests::put_secret(
        &format!("{}thread-marker-key", w.prefix),
        "0123456789abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGHIJKLMNOPQR",
    )
    .await
    .unwrap();
    let out = w.run(&["check", "--json"]).await;
    assert_eq!(out.status.code(), Some(0));
    let all = json(&out);
    let names: Vec<&str> = all["targets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["support"], "{all:#}");
    assert!(step(target, "IMAP").to_string().contains("SELECT INBOX"));
}

#[tokio::test]
async fn send_direct_is_delivered_through_graph() {
    let w = World::new(|_| {}).await;
    w.login_with_password().await;
    let recipient = unique_user("customer");
    let subject = format!("direct {}", unique("s"));
    let out = w
        .run(&[
            "send",
            "--json",
            "--direct",
            "--account",
            "helpdesk",
            "--to",
            &recipient,
            "--subject",
            &subject,
            "--body",
            "<p>Hi</p>",
            "--html",
        ])
        .await;
    assert_eq!(out.status.code(), Some(0));
    let result = json(&out);
    assert_eq!(result["sent"], true);
    assert!(result["id"].as_str().is_some());
    let accepted = stack().graph().accepted(&w.upn);
    assert_eq!(accepted.len(), 1, "Graph stand-in recorded one send");
    assert_eq!(accepted[0].request["message"]["subject"], subject.as_str());
    assert_eq!(
        accepted[0].request["message"]["toRecipients"][0]["emailAddress"]["address"],
        recipient.as_str()
    );

    // with --ticket, the thread marker is stamped with the key the functions use
    let key_secret = unique("thread-key");
    mailbridge_tests::put_secret(&key_secret, "0123456789abcdef0123456789abcdef")
        .await
        .unwrap();
    let out = w
        .run_env(
            &[
                "send",
                "--direct",
                "--account",
                "helpdesk",
                "--to",
                &recipient,
                "--subject",
                "Re: your printer",
                "--body",
                "Fixed.",
                "--ticket",
                "4711",
            ],
            &[("MAILBRIDGE_THREAD_KEY_SECRET", key_secret.as_str())],
        )
        .await;
    assert_eq!(out.status.code(), Some(0));
    let accepted = stack().graph().accepted(&w.upn);
    assert_eq!(accepted.len(), 2);
    let message = &accepted[1].request["message"];
    assert!(
        message["subject"]
            .as_str()
            .unwrap()
            .contains("[Ticket#4711]"),
        "{message:#}"
    );
    assert!(
        message["internetMessageHeaders"]
            .to_string()
            .contains("4711."),
        "{message:#}"
    );
}

#[tokio::test]
async fn check_passes_the_draft_route_when_mail_readwrite_is_consented() {
    let w = World::new(|app| {
        app.consented_scopes
            .push("https://graph.microsoft.com/Mail.ReadWrite".to_owned())
    })
    .await;
    w.login_with_password().await;
    let out = w.run(&["check", "--json", "helpdesk"]).await;
    let report = json(&out);
    let large = step(&report["targets"][0], "large messages");
    assert_eq!(large["result"], "ok", "{report:#}");
    assert!(
        large["detail"]
            .as_str()
            .unwrap()
            .contains("go through a draft"),
        "{large:#}"
    );
    assert_eq!(out.status.code(), Some(0), "{report:#}");
}

#[tokio::test]
async fn check_names_the_fix_when_imap_consent_is_missing() {
    let w = World::new(|app| app.consented_scopes.retain(|s| !s.contains("IMAP"))).await;
    w.login_with_password().await;

    let out = w.run(&["check", "--json", "helpdesk"]).await;
    assert_eq!(out.status.code(), Some(3));
    let report = json(&out);
    assert_eq!(report["ok"], false);
    let target = &report["targets"][0];
    assert_eq!(target["kind"], "account");
    assert_eq!(step(target, "token (Graph)")["result"], "ok");
    let imap = step(target, "token (IMAP)");
    assert_eq!(imap["result"], "failed");
    assert!(
        imap["detail"].as_str().unwrap().contains("AADSTS65001"),
        "{imap:#}"
    );
    let fix = imap["fix"].as_str().unwrap();
    assert!(fix.contains("IMAP.AccessAsUser.All"), "{fix}");
    assert!(fix.contains("consent"), "{fix}");
    assert_eq!(step(target, "IMAP")["result"], "skipped");

    // human output: ✗ with the reason and the fix
    let out = w.run(&["check", "helpdesk"]).await;
    assert_eq!(out.status.code(), Some(3));
    let human = text(&out.stdout);
    assert!(human.contains("✗"), "{human}");
    assert!(human.contains("fix: "), "{human}");
}

/// A send-only account (no IMAP consent): `check` finds the IMAP problem, and Graph sends go on.
#[tokio::test]
async fn a_missing_imap_consent_never_holds_graph_sends() {
    let w = World::new(|app| app.consented_scopes.retain(|s| !s.contains("IMAP"))).await;
    w.login_with_password().await;
    let out = w.run(&["check", "--json", "helpdesk"]).await;
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(
        step(&json(&out)["targets"][0], "token (IMAP)")["result"],
        "failed"
    );

    // The second check still gets a Graph token; only IMAP is held, with its reason.
    let out = w.run(&["check", "--json", "helpdesk"]).await;
    assert_eq!(out.status.code(), Some(3));
    let target = json(&out)["targets"][0].clone();
    assert_eq!(
        step(&target, "account secret")["result"],
        "ok",
        "{target:#}"
    );
    assert_eq!(step(&target, "token (Graph)")["result"], "ok", "{target:#}");
    assert_eq!(step(&target, "Graph")["result"], "ok", "{target:#}");
    let imap = step(&target, "token (IMAP)");
    assert_eq!(imap["result"], "failed");
    assert!(
        imap["detail"].as_str().unwrap().contains("AADSTS65001"),
        "{imap:#}"
    );
    assert!(
        imap["fix"]
            .as_str()
            .unwrap()
            .contains("IMAP.AccessAsUser.All"),
        "{imap:#}"
    );

    // status: per audience
    let out = w.run(&["status", "--json"]).await;
    assert_eq!(out.status.code(), Some(3));
    let account = json(&out)["accounts"][0].clone();
    assert_eq!(account["status"], "needs_reauth", "{account:#}");
    assert_eq!(account["audiences"]["graph"]["status"], "ok", "{account:#}");
    assert_eq!(
        account["audiences"]["imap"]["status"], "needs_reauth",
        "{account:#}"
    );
    assert!(
        account["audiences"]["imap"]["code"]
            .as_str()
            .unwrap()
            .contains("65001"),
        "{account:#}"
    );
    let human = text(&w.run(&["status"]).await.stdout);
    assert!(human.contains("IMAP"), "{human}");

    // and a notification still goes out through Graph
    let recipient = unique_user("customer");
    let out = w
        .run(&[
            "send",
            "--direct",
            "--account",
            "helpdesk",
            "--to",
            &recipient,
            "--subject",
            "held?",
            "--body",
            "no",
        ])
        .await;
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(stack().graph().accepted(&w.upn).len(), 1);
}

#[tokio::test]
async fn check_names_the_missing_right_for_sending_from_a_shared_mailbox() {
    let w = World::new(|_| {}).await;
    w.login_with_password().await;
    let graph = stack().graph();
    let granted = unique_user("support");
    let refused = unique_user("sales");
    graph.grant_send_as(&w.upn, &granted);
    let from =
        |target: &Value, mailbox: &str| step(target, &format!("send from {mailbox} ")).clone();

    // send_as (default): Send As is all it takes; without it, Send As is named
    let out = w
        .run(&[
            "check", "--json", "--from", &granted, "--from", &refused, "helpdesk",
        ])
        .await;
    assert_eq!(out.status.code(), Some(3));
    let target = &json(&out)["targets"][0];
    let ok = from(target, &granted);
    assert_eq!(ok["result"], "ok", "{ok:#}");
    assert!(
        ok["step"]
            .as_str()
            .unwrap()
            .contains("POST /me/sendMail with from")
    );
    let denied = from(target, &refused);
    assert_eq!(denied["result"], "failed");
    assert!(
        denied["detail"]
            .as_str()
            .unwrap()
            .contains("ErrorSendAsDenied"),
        "{denied:#}"
    );
    let fix = denied["fix"].as_str().unwrap();
    assert!(
        fix.contains(&format!("lacks Send As on {refused}")),
        "{fix}"
    );
    assert!(fix.contains("Add-RecipientPermission"), "{fix}");
    // one line, in the human output too
    let out = w.run(&["check", "--from", &refused, "helpdesk"]).await;
    let human = text(&out.stdout);
    assert!(
        human.lines().any(|l| l.trim_start().starts_with(&format!(
            "fix: the signed-in user lacks Send As on {refused}"
        ))),
        "{human}"
    );

    // full_access (set by signing in again with the flag): Send As is not enough; Full
    // Access is named, and then suffices
    let mut args = w.login_args();
    args.extend([
        "--shared-mailbox-route".into(),
        "full_access".into(),
        "--password-stdin".into(),
    ]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = w.run_with_stdin(&args, &format!("{PASSWORD}\n")).await;
    assert_eq!(out.status.code(), Some(0), "login failed");
    let stored: Value = serde_json::from_str(&get_secret(&w.secret_name()).await.unwrap()).unwrap();
    assert_eq!(stored["shared_mailbox_route"], "full_access");
    let out = w
        .run(&["check", "--json", "--from", &granted, "helpdesk"])
        .await;
    assert_eq!(out.status.code(), Some(3));
    let target = &json(&out)["targets"][0];
    let token = step(target, "token (Graph)");
    assert!(
        token["detail"]
            .as_str()
            .unwrap()
            .contains("Mail.Send.Shared"),
        "{token:#}"
    );
    let denied = from(target, &granted);
    assert!(
        denied["step"]
            .as_str()
            .unwrap()
            .contains(&format!("POST /users/{granted}/sendMail"))
    );
    assert!(
        denied["detail"]
            .as_str()
            .unwrap()
            .contains("ErrorAccessDenied"),
        "{denied:#}"
    );
    let fix = denied["fix"].as_str().unwrap();
    assert!(
        fix.contains(&format!("lacks Full Access on {granted}")),
        "{fix}"
    );
    graph.grant_full_access(&w.upn, &granted);
    let out = w
        .run(&["check", "--json", "--from", &granted, "helpdesk"])
        .await;
    assert_eq!(out.status.code(), Some(0));
    assert!(
        graph.accepted(&granted).is_empty(),
        "the probes sent nothing"
    );
}

#[tokio::test]
async fn check_names_the_missing_mail_send_shared_consent() {
    let w = World::new(|app| {
        app.consented_scopes
            .retain(|s| !s.ends_with("/Mail.Send.Shared"))
    })
    .await;
    let shared = unique_user("support");
    stack().graph().grant_full_access(&w.upn, &shared);
    stack().graph().grant_send_as(&w.upn, &shared);
    // signing in works (the send_as route does not ask for Mail.Send.Shared) ...
    w.login_with_password().await;
    // ... the full_access route asks for it, and the identity platform refuses (AADSTS65001)
    mailbridge_tests::set_shared_mailbox_route(
        &w.secret_name(),
        mailbridge::send_rights::SharedMailboxRoute::FullAccess,
    )
    .await
    .unwrap();

    let out = w
        .run(&["check", "--json", "--from", &shared, "helpdesk"])
        .await;
    assert_eq!(out.status.code(), Some(3));
    let target = &json(&out)["targets"][0];
    let failed: Vec<&Value> = target["steps"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["result"] == "failed")
        .collect();
    let named = failed.iter().any(|s| {
        let fix = s["fix"].as_str().unwrap_or_default();
        fix.contains("Mail.Send.Shared") && fix.contains("consent")
    });
    assert!(named, "{target:#}");
}

#[tokio::test]
async fn check_after_the_refresh_token_was_revoked_says_to_sign_in_again() {
    let w = World::new(|_| {}).await;
    w.login_with_password().await;
    w.add_mailbox("revoked", &unique("sink")).await;
    w.idp.revoke_refresh_tokens(&w.upn).unwrap();

    let out = w.run(&["check", "--json", "revoked"]).await;
    assert_eq!(out.status.code(), Some(3));
    let report = json(&out);
    let target = &report["targets"][0];
    let graph = step(target, "token (Graph)");
    assert_eq!(graph["result"], "failed", "{target:#}");
    assert!(
        graph["detail"].as_str().unwrap().contains("AADSTS50173"),
        "{graph:#}"
    );
    assert!(
        graph["fix"]
            .as_str()
            .unwrap()
            .contains("mailbridge login --account helpdesk")
    );

    // the account's status now says why (set by the token layer), and check/status report it
    let out = w.run(&["status", "--json"]).await;
    assert_eq!(out.status.code(), Some(3));
    let status = json(&out);
    assert_eq!(status["accounts"][0]["status"], "needs_reauth");
    assert!(
        status["accounts"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("revoked")
    );
    let out = w.run(&["check", "--json", "helpdesk"]).await;
    assert_eq!(out.status.code(), Some(3));
    let secret_step = step(&json(&out)["targets"][0], "account secret").clone();
    assert_eq!(secret_step["result"], "failed");
    assert!(
        secret_step["detail"]
            .as_str()
            .unwrap()
            .contains("needs_reauth")
    );
}

#[tokio::test]
async fn send_enqueues_a_valid_notification_and_prints_its_id() {
    let w = World::new(|_| {}).await;
    let queue_url = create_queue(&unique("cli-notify")).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("report.pdf");
    std::fs::write(&report, b"%PDF-1.4 tiny").unwrap();
    let out = w
        .run(&[
            "send",
            "--account",
            "helpdesk",
            "--to",
            "customer@example.com",
            "--subject",
            "Your ticket",
            "--body",
            "Hello from the CLI",
            "--attach",
            report.to_str().unwrap(),
            "--ticket",
            "4711",
            "--queue-url",
            &queue_url,
        ])
        .await;
    assert_eq!(out.status.code(), Some(0));
    let id = text(&out.stdout).trim().to_owned();
    assert!(uuid::Uuid::parse_str(&id).is_ok(), "{id}");

    let received = mailbridge_tests::sqs()
        .receive_message()
        .queue_url(&queue_url)
        .wait_time_seconds(5)
        .send()
        .await
        .unwrap();
    let message = &received.messages()[0];
    let notification =
        mailbridge::notification::Notification::parse(message.body().unwrap(), "sqs-id").unwrap();
    notification.validate().unwrap();
    assert_eq!(notification.id(), id);
    assert_eq!(notification.account, "helpdesk");
    assert_eq!(notification.to[0].address, "customer@example.com");
    assert_eq!(notification.ticket_number.as_deref(), Some("4711"));
    assert_eq!(notification.attachments[0].name, "report.pdf");
    assert_eq!(notification.attachments[0].content_type, "application/pdf");

    // an invalid notification is refused before anything is queued, naming the field
    let out = w
        .run(&[
            "send",
            "--account",
            "helpdesk",
            "--to",
            "not-an-address",
            "--subject",
            "x",
            "--body",
            "y",
            "--queue-url",
            &queue_url,
        ])
        .await;
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("to[0]"), "{}", text(&out.stderr));
}

#[tokio::test]
async fn poll_dry_run_shows_the_mail_without_posting_or_moving_it() {
    let w = World::new(|_| {}).await;
    w.login_with_password().await;
    let sink = unique("sink");
    w.add_mailbox("inbox", &sink).await;
    let subject = format!("Printer on fire {}", unique("p"));
    let raw = format!(
        "From: Alice <alice@example.com>\r\nTo: {}\r\nSubject: {subject}\r\nMessage-ID: <{}@example.com>\r\nDate: Sat, 28 Nov 2026 10:00:00 +0000\r\n\r\nIt is on fire.\r\n",
        w.upn,
        unique("m")
    );
    let dovecot = stack().dovecot();
    dovecot.deliver_to(&w.upn, "INBOX", raw.as_bytes()).unwrap();
    // Machine mail threading to no ticket: set aside, but still shown with subject and sender.
    let auto_subject = format!("Automatic reply: out until Monday {}", unique("a"));
    let auto_raw = format!(
        "From: Bob Away <bob@example.com>\r\nTo: {}\r\nSubject: {auto_subject}\r\nMessage-ID: <{}@example.com>\r\nAuto-Submitted: auto-replied\r\n\r\nI am away.\r\n",
        w.upn,
        unique("m")
    );
    dovecot
        .deliver_to(&w.upn, "INBOX", auto_raw.as_bytes())
        .unwrap();

    let out = w.run(&["poll", "--dry-run", "--json", "inbox"]).await;
    assert_eq!(out.status.code(), Some(0));
    let preview = json(&out);
    assert_eq!(preview["dry_run"], true);
    let mailbox = &preview["mailboxes"][0];
    assert_eq!(mailbox["mailbox"], "inbox");
    assert_eq!(mailbox["outcome"], "ok", "{mailbox:#}");
    assert_eq!(mailbox["would_create"], 1);
    let mail = &mailbox["mails"][0];
    assert_eq!(mail["action"], "ticket");
    assert_eq!(mail["subject"], subject.as_str());
    assert_eq!(mail["from"], "alice@example.com");
    assert_eq!(mail["then"], "move to Processed");
    let auto = &mailbox["mails"][1];
    assert_eq!(auto["action"], "skip_auto_generated", "{mailbox:#}");
    assert_eq!(auto["subject"], auto_subject.as_str());
    assert_eq!(auto["from"], "bob@example.com");
    assert!(
        auto["auto_reason"]
            .as_str()
            .is_some_and(|r| r.starts_with("out_of_office: Auto-Submitted auto-replied")),
        "{auto:#}"
    );
    assert_eq!(auto["then"], "move to mailbridge-auto-generated");

    // human output names the mails too
    let out = w.run(&["poll", "--dry-run", "inbox"]).await;
    assert_eq!(out.status.code(), Some(0));
    let human = text(&out.stdout);
    assert!(human.contains(&subject), "{human}");
    let auto_line = human
        .lines()
        .find(|l| l.contains("no ticket (machine mail"))
        .unwrap_or_else(|| panic!("{human}"));
    assert!(
        auto_line.contains(&auto_subject) && auto_line.contains("from bob@example.com"),
        "{auto_line}"
    );

    // nothing happened: still in INBOX, unread; no ticket; no Processed folder; no status
    let messages = dovecot.list_messages(&w.upn, "INBOX").unwrap();
    assert_eq!(messages.len(), 2);
    assert!(
        messages.iter().all(|m| !m.is_seen()),
        "BODY.PEEK must not set \\Seen"
    );
    assert!(stack().tickets().tickets(&sink).is_empty());
    assert_eq!(stack().tickets().requests(&sink), 0);
    let status = mailbridge_tests::dynamodb()
        .get_item()
        .table_name(&w.table)
        .key(
            "pk",
            aws_sdk_dynamodb::types::AttributeValue::S("mailbox-status#inbox".into()),
        )
        .send()
        .await
        .unwrap();
    assert!(status.item.is_none(), "a dry run records no status");

    // status shows the mailbox's last run once the poller recorded one
    let out = w.run(&["status", "--json"]).await;
    assert_eq!(out.status.code(), Some(0));
    let status = json(&out);
    assert_eq!(status["mailboxes"][0]["mailbox"], "inbox");
    assert!(status["mailboxes"][0]["last_run"].is_null(), "{status:#}");
    use mailbridge::state_table::StateStore as _;
    mailbridge::state_table::DynamoStateStore::new(mailbridge_tests::dynamodb(), &w.table)
        .put_status(&mailbridge::state_table::MailboxStatus {
            mailbox: "inbox".into(),
            outcome: mailbridge::state_table::MailboxOutcome::Failed,
            reason: Some("AUTHENTICATE XOAUTH2 failed for the test".into()),
            last_run_at: chrono::Utc::now().to_rfc3339(),
            duration_ms: 12,
            tickets_created: 0,
            parked: 0,
            duplicates: 0,
            skipped_auto_generated: 0,
            held: 0,
            deferred: 1,
            uid_validity: None,
            imap_round_trips: 2,
            retry_last_uids: Vec::new(),
            last_success_at: None,
            first_run_at: None,
        })
        .await
        .unwrap();
    let out = w.run(&["status", "--json"]).await;
    assert_eq!(out.status.code(), Some(3), "a failed last run is a problem");
    let last_run = &json(&out)["mailboxes"][0]["last_run"];
    assert_eq!(last_run["outcome"], "failed");
    assert!(last_run["reason"].as_str().unwrap().contains("XOAUTH2"));
    let out = w.run(&["status"]).await;
    assert!(
        text(&out.stdout).contains("✗ inbox"),
        "{}",
        text(&out.stdout)
    );

    // without --dry-run the CLI refuses (real polls are the Lambda's job)
    let out = w.run(&["poll", "inbox"]).await;
    assert_eq!(out.status.code(), Some(1));
}

#[tokio::test]
async fn status_shows_the_last_success_and_a_run_that_never_reported() {
    use mailbridge::state_table::{MailboxLease, StateStore as _};
    let w = World::new(|_| {}).await;
    w.login_with_password().await;
    w.add_mailbox("inbox", &unique("sink")).await;
    let store =
        mailbridge::state_table::DynamoStateStore::new(mailbridge_tests::dynamodb(), &w.table);
    // the last recorded run: ok, ten minutes ago
    let ten_minutes_ago = (chrono::Utc::now() - chrono::Duration::seconds(600)).to_rfc3339();
    store
        .put_status(&mailbridge::state_table::MailboxStatus {
            mailbox: "inbox".into(),
            outcome: mailbridge::state_table::MailboxOutcome::Ok,
            reason: None,
            last_run_at: ten_minutes_ago.clone(),
            duration_ms: 900,
            tickets_created: 1,
            parked: 0,
            duplicates: 0,
            skipped_auto_generated: 0,
            held: 0,
            deferred: 0,
            uid_validity: Some(1),
            imap_round_trips: 9,
            retry_last_uids: Vec::new(),
            last_success_at: Some(ten_minutes_ago.clone()),
            first_run_at: Some(ten_minutes_ago.clone()),
        })
        .await
        .unwrap();
    let out = w.run(&["status", "--json"]).await;
    assert_eq!(out.status.code(), Some(0));
    let row = json(&out)["mailboxes"][0].clone();
    assert_eq!(row["last_run"]["last_success_at"], ten_minutes_ago.as_str());
    let age = row["last_success_age_seconds"].as_i64().expect("an age");
    assert!((600..900).contains(&age), "{row:#}");
    assert!(row["run_without_result"].is_null(), "{row:#}");
    let human = text(&w.run(&["status"]).await.stdout);
    assert!(
        human.contains(&format!("last success: {ten_minutes_ago} (10 min ago)")),
        "{human}"
    );

    // A run takes the mailbox (as the poller does when it finds mail) and is killed: no status
    // is written, the lease stays. Status must not just show the old `ok`.
    let until = chrono::Utc::now().timestamp() + 240;
    let MailboxLease::Acquired { .. } = store.acquire_mailbox_lease("inbox", until).await.unwrap()
    else {
        panic!("the lease is free");
    };
    let out = w.run(&["status", "--json"]).await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "a run in progress is no failure"
    );
    let row = json(&out)["mailboxes"][0].clone();
    let run = &row["run_without_result"];
    assert_eq!(run["lease_active"], true, "{row:#}");
    let started =
        chrono::DateTime::parse_from_rfc3339(run["started_at"].as_str().unwrap()).unwrap();
    assert!((chrono::Utc::now() - started.with_timezone(&chrono::Utc)).num_seconds() < 120);
    let lease_until = chrono::DateTime::from_timestamp(until, 0)
        .unwrap()
        .to_rfc3339();
    assert_eq!(run["lease_until"], lease_until.as_str());
    let human = text(&w.run(&["status"]).await.stdout);
    assert!(
        human.contains("no result yet") && human.contains(&format!("lease until {lease_until}")),
        "{human}"
    );
}

#[tokio::test]
async fn mailbox_add_validates_and_lists() {
    let w = World::new(|_| {}).await;
    let out = w
        .run(&[
            "mailbox",
            "add",
            "bad",
            "--user",
            "not-an-address",
            "--account",
            "helpdesk",
            "--ticket-api-url",
            "https://psa.example.com/t",
        ])
        .await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("mailbox bad: field `user`"),
        "{}",
        text(&out.stderr)
    );
    // Hosts off the allowlists are refused before the helpdesk is asked or anything is stored,
    // naming the host and the setting that would allow it.
    for (flag, value, host, setting) in [
        (
            "--ticket-api-url",
            "https://collector.attacker.example/t",
            "collector.attacker.example",
            "MAILBRIDGE_SINK_HOSTS",
        ),
        (
            "--host",
            "imap.attacker.example",
            "imap.attacker.example",
            "MAILBRIDGE_IMAP_HOSTS",
        ),
    ] {
        let mut args = vec![
            "mailbox",
            "add",
            "elsewhere",
            "--user",
            "x@example.com",
            "--account",
            "helpdesk",
            flag,
            value,
        ];
        if flag == "--host" {
            args.extend(["--ticket-api-url", "https://psa.example.com/t"]);
        }
        let out = w.run(&args).await;
        assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
        let stderr = text(&out.stderr);
        assert!(
            stderr.contains(host) && stderr.contains(setting),
            "{stderr}"
        );
        assert!(!stderr.contains("helpdesk check"), "{stderr}");
    }
    w.add_mailbox("listed", "sink").await;
    let out = w.run(&["mailbox", "list", "--json"]).await;
    assert_eq!(out.status.code(), Some(0));
    let list = json(&out);
    assert_eq!(list["mailboxes"][0]["name"], "listed");
    assert_eq!(list["mailboxes"][0]["config"]["user"], w.upn.as_str());
    let out = w.run(&["mailbox", "show", "listed"]).await;
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(json(&out)["list_mail"], "set_aside", "the default is shown");

    // `--since now` is the moment of the command; a date is midnight UTC; anything else is named.
    let add_since = |name: &'static str, since: &'static str| {
        [
            "mailbox",
            "add",
            name,
            "--user",
            "since@example.com",
            "--account",
            "helpdesk",
            "--ticket-api-url",
            "https://psa.example.com/t",
            "--since",
            since,
            "--no-check",
        ]
    };
    let before = chrono::Utc::now() - chrono::Duration::seconds(1);
    let out = w.run(&add_since("since-now", "now")).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let shown = json(&w.run(&["mailbox", "show", "since-now"]).await);
    let since = chrono::DateTime::parse_from_rfc3339(shown["since"].as_str().unwrap()).unwrap();
    assert!(
        since >= before && since <= chrono::Utc::now(),
        "{}",
        shown["since"]
    );
    let out = w.run(&add_since("since-day", "2026-12-01")).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let shown = json(&w.run(&["mailbox", "show", "since-day"]).await);
    assert_eq!(shown["since"], "2026-12-01T00:00:00Z");
    let out = w.run(&add_since("since-bad", "last tuesday")).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("--since") && text(&out.stderr).contains("last tuesday"),
        "{}",
        text(&out.stderr)
    );
    for name in ["since-now", "since-day"] {
        let out = w.run(&["mailbox", "remove", name]).await;
        assert_eq!(out.status.code(), Some(0));
    }

    // A helpdesk address that is itself a group: list mail opens tickets.
    let add_group = |list_mail: &'static str| {
        [
            "mailbox",
            "add",
            "group",
            "--user",
            "group@example.com",
            "--account",
            "helpdesk",
            "--ticket-api-url",
            "https://psa.example.com/t",
            "--auto-generated-folder",
            "Robots",
            "--list-mail",
            list_mail,
            "--no-check",
        ]
    };
    // Without --no-check the helpdesk is asked first: unreachable, nothing is stored.
    let unchecked = add_group("ticket");
    let out = w.run(&unchecked[..unchecked.len() - 1]).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    assert!(
        text(&out.stderr).contains("the helpdesk check failed")
            && text(&out.stderr).contains("nothing stored"),
        "{}",
        text(&out.stderr)
    );
    let out = w.run(&["mailbox", "show", "group", "--json"]).await;
    assert_ne!(out.status.code(), Some(0), "nothing may be stored");
    let out = w.run(&add_group("always")).await;
    assert_eq!(out.status.code(), Some(2), "clap refuses an unknown value");
    assert!(
        text(&out.stderr).contains("set_aside"),
        "{}",
        text(&out.stderr)
    );
    let out = w.run(&add_group("ticket")).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let out = w.run(&["mailbox", "show", "group", "--json"]).await;
    let shown = &json(&out)["mailbox"];
    assert_eq!(shown["list_mail"], "ticket", "{shown:#}");
    assert_eq!(shown["auto_generated_folder"], "Robots");
    let out = w.run(&["mailbox", "list"]).await;
    assert!(
        text(&out.stdout).contains("list mail: ticket"),
        "{}",
        text(&out.stdout)
    );
    let out = w.run(&["mailbox", "remove", "group"]).await;
    assert_eq!(out.status.code(), Some(0));

    let out = w.run(&["mailbox", "remove", "listed"]).await;
    assert_eq!(out.status.code(), Some(0));
    let out = w.run(&["mailbox", "list", "--json"]).await;
    assert_eq!(json(&out)["mailboxes"].as_array().unwrap().len(), 0);
}

/// `mailbridge login --browser` running: the sign-in URL it printed, and the rest of its run.
struct BrowserLogin {
    child: tokio::process::Child,
    authorize_url: String,
    stderr: tokio::task::JoinHandle<String>,
}

impl World {
    /// Start `login --browser` (plus `extra`) and wait for the sign-in URL on its stderr.
    async fn start_browser_login(&self, extra: &[&str]) -> BrowserLogin {
        let mut args = vec!["--browser"];
        args.extend_from_slice(extra);
        self.start_login_in_a_browser(&args).await
    }

    /// Start `login` with the account's arguments plus `extra` and wait for the sign-in URL on
    /// its stderr.
    async fn start_login_in_a_browser(&self, extra: &[&str]) -> BrowserLogin {
        use tokio::io::AsyncBufReadExt as _;
        let mut args = self.login_args();
        args.extend(extra.iter().map(|a| a.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut child = self
            .command(&args)
            .spawn()
            .expect("start mailbridge login --browser");
        let stderr = child.stderr.take().expect("stderr");
        let (url_tx, url_rx) = tokio::sync::oneshot::channel();
        let stderr = tokio::spawn(async move {
            let mut lines = tokio::io::BufReader::new(stderr).lines();
            let mut url_tx = Some(url_tx);
            let mut all = String::new();
            while let Ok(Some(line)) = lines.next_line().await {
                if line.contains("/oauth2/v2.0/authorize?")
                    && let Some(start) = line.find("http")
                    && let Some(tx) = url_tx.take()
                {
                    let _ = tx.send(line[start..].trim().to_owned());
                }
                all.push_str(&line);
                all.push('\n');
            }
            all
        });
        let authorize_url = tokio::time::timeout(Duration::from_secs(60), url_rx)
            .await
            .expect("the CLI printed the sign-in URL within 60 s")
            .expect("the CLI printed the sign-in URL");
        BrowserLogin {
            child,
            authorize_url,
            stderr,
        }
    }
}

impl BrowserLogin {
    /// The browser arrives at the redirect `location` (the CLI's loopback listener): the page.
    async fn arrive(&self, location: &str) -> (u16, String) {
        let response = mailbridge_tests::browser_http()
            .get(location)
            .send()
            .await
            .expect("the CLI's listener answers the redirect");
        let status = response.status().as_u16();
        (status, response.text().await.unwrap_or_default())
    }

    /// Wait for the CLI to end: exit code, stdout, stderr.
    async fn finish(self) -> (Option<i32>, String, String) {
        let out = tokio::time::timeout(Duration::from_secs(60), self.child.wait_with_output())
            .await
            .expect("login finished within 60 s")
            .expect("wait for login");
        let stderr = self.stderr.await.expect("stderr reader");
        let stdout = text(&out.stdout);
        eprintln!(
            "--- exit {:?}\n--- stdout\n{stdout}--- stderr\n{stderr}",
            out.status.code()
        );
        (out.status.code(), stdout, stderr)
    }
}

/// Where the sign-in page sent the browser (panics on an error page).
fn redirected(page: mailbridge_tests::SignInPage) -> String {
    match page {
        mailbridge_tests::SignInPage::Redirect(location) => location,
        other => panic!("the sign-in page did not redirect: {other:?}"),
    }
}

#[tokio::test]
async fn login_in_the_browser_redeems_the_code_once_and_stores_the_grant() {
    let w = World::new(|_| {}).await;
    // MFA on: ROPC cannot sign this user in; the browser can.
    w.idp
        .update_user(&w.upn, |u| u.mfa_required = true)
        .unwrap();
    let login = w.start_browser_login(&["--no-open"]).await;
    let authorize = url::Url::parse(&login.authorize_url).expect("a URL");
    let query: std::collections::HashMap<String, String> =
        authorize.query_pairs().into_owned().collect();
    assert_eq!(query["code_challenge_method"], "S256");
    assert_eq!(query["response_type"], "code");
    assert!(
        query["redirect_uri"].starts_with("http://localhost:"),
        "{query:?}"
    );
    assert_eq!(query["login_hint"], w.upn);

    let location = redirected(
        mailbridge_tests::browser_sign_in(&login.authorize_url, &w.upn, PASSWORD, true)
            .await
            .unwrap(),
    );
    assert!(location.starts_with(&query["redirect_uri"]), "{location}");
    let (status, page) = login.arrive(&location).await;
    assert_eq!(status, 200, "{page}");
    assert!(page.contains("Sign-in received"), "{page}");
    let (code, stdout, stderr) = login.finish().await;
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.contains("signed in as"), "{stdout}");

    let stored: Value = serde_json::from_str(&get_secret(&w.secret_name()).await.unwrap()).unwrap();
    let refresh_token = stored["refresh_token"]
        .as_str()
        .expect("refresh token stored");
    assert_eq!(stored["status"]["state"], "ok");
    assert!(!stdout.contains(refresh_token) && !stderr.contains(refresh_token));
    let auth_code = url::Url::parse(&location)
        .unwrap()
        .query_pairs()
        .find(|(k, _)| k == "code")
        .map(|(_, v)| v.into_owned())
        .expect("code in the redirect");
    assert!(!stdout.contains(&auth_code) && !stderr.contains(&auth_code));

    // The CLI redeemed the code: a second redemption is refused (single use).
    let again = reqwest::Client::new()
        .post(format!("{}/{}/oauth2/v2.0/token", w.idp.base_url, w.tenant))
        .form(&[
            ("client_id", w.client_id.as_str()),
            ("grant_type", "authorization_code"),
            ("code", auth_code.as_str()),
            ("redirect_uri", query["redirect_uri"].as_str()),
            (
                "code_verifier",
                "not-the-cli-verifier-but-the-code-is-spent-first",
            ),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(again.status().as_u16(), 400);
    let body: Value = again.json().await.unwrap();
    assert_eq!(body["error_codes"][0], 54005, "{body}");

    // The stored grant works: `check` gets a Graph token for the MFA user.
    let out = w.run(&["check", "--json", "helpdesk"]).await;
    let report = json(&out);
    let target = &report["targets"][0];
    assert_eq!(step(target, "token (Graph)")["result"], "ok", "{report:#}");
    assert_eq!(step(target, "token (IMAP)")["result"], "ok", "{report:#}");
}

/// No flow flag: the browser is the default interactive sign-in. Without a desktop session (the
/// CLI runs with a cleared environment: no DISPLAY) it only prints the URL and says how to
/// finish from another machine or to use `--device-code`; no device code is requested.
#[tokio::test]
async fn login_without_a_flow_flag_signs_in_in_the_browser_and_names_device_code_for_headless() {
    let w = World::new(|_| {}).await;
    let login = w.start_login_in_a_browser(&[]).await;
    let location = redirected(
        mailbridge_tests::browser_sign_in(&login.authorize_url, &w.upn, PASSWORD, true)
            .await
            .unwrap(),
    );
    let (status, page) = login.arrive(&location).await;
    assert_eq!(status, 200, "{page}");
    let (code, stdout, stderr) = login.finish().await;
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.contains("signed in as"), "{stdout}");
    assert!(
        stderr.contains("No browser here?")
            && stderr.contains("ssh -L")
            && stderr.contains("--device-code"),
        "{stderr}"
    );
    assert!(
        w.idp.device_codes(&w.tenant).is_empty(),
        "no device code was requested"
    );
    let stored: Value = serde_json::from_str(&get_secret(&w.secret_name()).await.unwrap()).unwrap();
    assert_eq!(stored["status"]["state"], "ok");
    assert!(stored["refresh_token"].as_str().is_some());
}

#[tokio::test]
async fn login_in_the_browser_refuses_a_redirect_with_another_state() {
    let w = World::new(|_| {}).await;
    let login = w.start_browser_login(&["--no-open"]).await;
    let location = redirected(
        mailbridge_tests::browser_sign_in(&login.authorize_url, &w.upn, PASSWORD, true)
            .await
            .unwrap(),
    );
    let mut forged = url::Url::parse(&location).unwrap();
    let pairs: Vec<(String, String)> = forged
        .query_pairs()
        .into_owned()
        .map(|(k, v)| {
            if k == "state" {
                (k, "forged".to_owned())
            } else {
                (k, v)
            }
        })
        .collect();
    forged.query_pairs_mut().clear().extend_pairs(pairs);
    login.arrive(forged.as_str()).await;
    let (code, _, stderr) = login.finish().await;
    assert_eq!(code, Some(4), "{stderr}");
    assert!(stderr.contains("state does not match"), "{stderr}");
    assert!(
        get_secret(&w.secret_name()).await.is_err(),
        "nothing stored"
    );
    let redemptions = w.idp.requests(&local_stack::identity::RequestFilter {
        endpoint: Some("token".into()),
        tenant: Some(w.tenant.clone()),
        grant_type: Some("authorization_code".into()),
        ..Default::default()
    });
    assert!(
        redemptions.is_empty(),
        "the code was not redeemed: {redemptions:?}"
    );
}

#[tokio::test]
async fn login_in_the_browser_names_the_fix_for_a_declined_consent() {
    let w = World::new(|_| {}).await;
    let login = w.start_browser_login(&["--no-open"]).await;
    let location = redirected(
        mailbridge_tests::browser_sign_in(&login.authorize_url, &w.upn, PASSWORD, false)
            .await
            .unwrap(),
    );
    let (_, page) = login.arrive(&location).await;
    assert!(page.contains("access_denied"), "{page}");
    let (code, _, stderr) = login.finish().await;
    assert_eq!(code, Some(4), "{stderr}");
    let last = stderr.lines().last().unwrap_or_default();
    assert!(
        last.contains("AADSTS65004") && last.contains("Grant admin consent"),
        "{stderr}"
    );
    assert!(
        get_secret(&w.secret_name()).await.is_err(),
        "nothing stored"
    );
}

#[tokio::test]
async fn login_in_the_browser_names_the_fix_for_an_unregistered_redirect_uri() {
    let w = World::new(|app| app.redirect_uris.clear()).await;
    let login = w
        .start_browser_login(&["--no-open", "--timeout", "3"])
        .await;
    // Microsoft shows AADSTS50011 in the browser and never redirects to an unregistered URI.
    match mailbridge_tests::browser_sign_in(&login.authorize_url, &w.upn, PASSWORD, true)
        .await
        .unwrap()
    {
        mailbridge_tests::SignInPage::Page(400, html) => {
            assert!(html.contains("AADSTS50011"), "{html}")
        }
        other => panic!("expected the AADSTS50011 page, got {other:?}"),
    }
    let (code, _, stderr) = login.finish().await;
    assert_eq!(code, Some(4), "{stderr}");
    let last = stderr.lines().last().unwrap_or_default();
    assert!(
        last.contains("AADSTS50011")
            && last.contains("http://localhost")
            && last.contains(&w.client_id)
            && last.contains("Mobile and desktop applications"),
        "{stderr}"
    );
}

/// A mailbox with IMAP switched off, read through Graph: `mailbox add --protocol graph` looks
/// the folder up through Graph first, `check` opens the mailbox through Graph (no IMAP step
/// fails), and `poll --dry-run` shows the mail without posting, moving or storing anything.
#[tokio::test]
async fn a_graph_mailbox_is_added_checked_and_dry_run_through_graph() {
    let w = World::new(|app| {
        app.consented_scopes = vec![
            "https://graph.microsoft.com/Mail.Send".to_owned(),
            "https://graph.microsoft.com/Mail.ReadWrite".to_owned(),
        ]
    })
    .await;
    w.login_with_password().await;
    let sink = unique("sink");
    let url = stack().tickets().sink_url(&sink);
    let account = w.account();
    let add = |folder: &'static str| {
        vec![
            "mailbox",
            "add",
            "graphbox",
            "--protocol",
            "graph",
            "--user",
            &w.upn,
            "--account",
            &account,
            "--ticket-api-url",
            &url,
            "--folder",
            folder,
        ]
    };
    let out = w.run(&add("Tickets")).await;
    assert_ne!(out.status.code(), Some(0));
    assert!(
        text(&out.stderr).contains("no folder \"Tickets\""),
        "the folder is looked up through Graph"
    );
    let out = w.run(&add("INBOX")).await;
    assert_eq!(out.status.code(), Some(0));
    assert!(text(&out.stdout).contains("Graph"), "{}", text(&out.stdout));

    let subject = format!("Graph only {}", unique("g"));
    let raw = format!(
        "From: Alice <alice@example.com>\r\nTo: {}\r\nSubject: {subject}\r\nMessage-ID: <{}@example.com>\r\nDate: Sat, 28 Nov 2026 10:00:00 +0000\r\n\r\nIMAP is off here.\r\n",
        w.upn,
        unique("m")
    );
    stack()
        .dovecot()
        .deliver_to(&w.upn, "INBOX", raw.as_bytes())
        .unwrap();

    let out = w.run(&["check", "--json", "graphbox"]).await;
    let target = &json(&out)["targets"][0];
    let probe = step(target, "Graph mailbox");
    assert_eq!(probe["result"], "ok", "{target:#}");
    assert_eq!(
        step(target, "token (Graph mailbox reading)")["result"],
        "ok",
        "{target:#}"
    );
    assert_eq!(out.status.code(), Some(0), "{target:#}");

    let out = w.run(&["poll", "--dry-run", "--json", "graphbox"]).await;
    assert_eq!(out.status.code(), Some(0));
    let mailbox = &json(&out)["mailboxes"][0];
    assert_eq!(mailbox["outcome"], "ok", "{mailbox:#}");
    assert_eq!(mailbox["would_create"], 1, "{mailbox:#}");
    assert_eq!(mailbox["mails"][0]["subject"], serde_json::json!(subject));
    assert!(
        stack().tickets().tickets(&sink).is_empty(),
        "nothing posted"
    );
    assert_eq!(
        stack()
            .dovecot()
            .mailbox_status(&w.upn, "INBOX")
            .unwrap()
            .messages,
        1,
        "nothing moved"
    );

    // Without the account secret every later step is skipped, each named for what a Graph
    // mailbox uses: no IMAP token step.
    mailbridge_tests::secrets()
        .delete_secret()
        .secret_id(w.secret_name())
        .force_delete_without_recovery(true)
        .send()
        .await
        .unwrap();
    let out = w.run(&["check", "--json", "graphbox"]).await;
    let target = &json(&out)["targets"][0];
    assert_eq!(
        step(target, "token (Graph mailbox reading)")["result"],
        "skipped",
        "{target:#}"
    );
    let steps = target["steps"].as_array().expect("steps");
    assert!(
        !steps.iter().any(|s| s["step"] == "token (IMAP)"),
        "{target:#}"
    );
}

/// `login --app`: a certificate Entra does not know is refused (nothing stored, exit 4); the
/// registered one is validated with a token per audience and stored; a Graph token without the
/// Mail.Send role is a warning naming the permission; `check` then works app-only (Graph probe
/// on `/users/{mailbox}`, IMAP as the mailbox) and warns that the certificate expires in 10 days.
#[tokio::test]
async fn login_app_validates_each_audience_and_check_warns_before_the_certificate_expires() {
    let w = World::new(|_| {}).await;
    let app_id = uuid::Uuid::new_v4().to_string();
    let mailbox = unique_user("app-mailbox");
    let days = |d: i64| chrono::Utc::now() + chrono::Duration::days(d);
    let (cert, key) = local_stack::identity::app_certificate("mailbridge", days(10)).unwrap();
    let (other_cert, other_key) =
        local_stack::identity::app_certificate("unregistered", days(300)).unwrap();
    let app = AppRegistration::app_only_with_certificate(&w.tenant, &app_id, &cert)
        .with_exchange_mailbox_access(&[&mailbox]);
    w.idp.register_app(app.clone());
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    };
    let (cert_file, key_file) = (write("app.pem", &cert), write("app.key", &key));
    let (other_cert_file, other_key_file) = (
        write("other.pem", &other_cert),
        write("other.key", &other_key),
    );
    let imap_host = format!("localhost:{}", stack().dovecot().imaps_port);
    let login = |cert: &str, key: &str| {
        vec![
            "--json".to_owned(),
            "login".into(),
            "--app".into(),
            "--account".into(),
            "app".into(),
            "--tenant".into(),
            w.tenant.clone(),
            "--client-id".into(),
            app_id.clone(),
            "--user".into(),
            mailbox.clone(),
            "--authority-host".into(),
            w.idp.base_url.clone(),
            "--imap-host".into(),
            imap_host.clone(),
            "--certificate".into(),
            cert.to_owned(),
            "--private-key".into(),
            key.to_owned(),
        ]
    };
    let secret = format!("{}app", w.prefix);

    let args = login(&other_cert_file, &other_key_file);
    let out = w
        .run(&args.iter().map(String::as_str).collect::<Vec<_>>())
        .await;
    assert_eq!(out.status.code(), Some(4));
    assert!(
        text(&out.stderr).contains("AADSTS700027"),
        "{}",
        text(&out.stderr)
    );
    assert!(get_secret(&secret).await.is_err(), "nothing stored");

    let args = login(&cert_file, &key_file);
    let out = w
        .run(&args.iter().map(String::as_str).collect::<Vec<_>>())
        .await;
    assert_eq!(out.status.code(), Some(0));
    let report = json(&out);
    assert_eq!(report["audiences"][0]["result"], "ok", "{report:#}");
    assert_eq!(report["audiences"][1]["result"], "ok", "{report:#}");
    let stored: Value = serde_json::from_str(&get_secret(&secret).await.unwrap()).unwrap();
    assert_eq!(stored["mode"], "app_only");
    assert!(!text(&out.stdout).contains("PRIVATE KEY"));

    let out = w.run(&["check", "--json", "app"]).await;
    let report = json(&out);
    let target = &report["targets"][0];
    let secret_step = step(target, "account secret");
    assert_eq!(secret_step["result"], "warning", "{target:#}");
    assert!(
        secret_step["detail"]
            .as_str()
            .unwrap()
            .contains("days left")
            && secret_step["fix"].as_str().unwrap().contains("login --app"),
        "{secret_step:#}"
    );
    assert_eq!(step(target, "Graph")["result"], "ok", "{target:#}");
    assert_eq!(step(target, "IMAP")["result"], "ok", "{target:#}");
    assert_eq!(out.status.code(), Some(0), "warnings alone keep 0");

    // Entra consent without Mail.Send: a warning naming the permission (RBAC may grant it).
    let mut no_send = app.clone();
    no_send
        .application_permissions
        .retain(|p| !p.ends_with("/Mail.Send"));
    w.idp.register_app(no_send);
    let out = w
        .run(&args.iter().map(String::as_str).collect::<Vec<_>>())
        .await;
    assert_eq!(out.status.code(), Some(0));
    let report = json(&out);
    let graph = &report["audiences"][0];
    assert_eq!(graph["result"], "warning", "{report:#}");
    assert!(
        graph["fix"].as_str().unwrap().contains("Mail.Send")
            && graph["fix"]
                .as_str()
                .unwrap()
                .contains("Application Mail.Send"),
        "{graph:#}"
    );
}

/// `login --app` and IMAP: the Outlook token's `roles` are read (a JWT, as Entra issues it), a
/// missing `IMAP.AccessAsApp` is named with its fix, and with the role the CLI logs in to the
/// mailbox over IMAP: only a service principal Exchange lets into that mailbox passes; one
/// without mailbox access gets the Exchange fix (New-ServicePrincipal, Add-MailboxPermission).
#[tokio::test]
async fn login_app_reads_the_imap_roles_and_proves_the_mailbox_over_imap() {
    let w = World::new(|_| {}).await;
    let app_id = uuid::Uuid::new_v4().to_string();
    let mailbox = unique_user("app-imap");
    let elsewhere = unique_user("other-mailbox");
    let imap_host = format!("localhost:{}", stack().dovecot().imaps_port);
    let login = |account: &str| {
        let args = [
            "--json",
            "login",
            "--app",
            "--account",
            account,
            "--tenant",
            &w.tenant,
            "--client-id",
            &app_id,
            "--user",
            &mailbox,
            "--authority-host",
            &w.idp.base_url,
            "--imap-host",
            &imap_host,
            "--client-secret-stdin",
            "--secret-expires",
            "2099-01-01",
        ]
        .map(str::to_owned);
        let w = &w;
        async move {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let out = w.run_with_stdin(&args, "app-imap-secret\n").await;
            assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
            let report = json(&out);
            assert_eq!(report["audiences"][1]["audience"], "imap", "{report:#}");
            report["audiences"][1].clone()
        }
    };
    let app = || AppRegistration::app_only(&w.tenant, &app_id, "app-imap-secret");

    // Granted in Entra and in Exchange: the role is read and the mailbox accepts the token.
    w.idp
        .register_app(app().with_exchange_mailbox_access(&[&mailbox]));
    let imap = login("granted").await;
    assert_eq!(imap["result"], "ok", "{imap:#}");
    let detail = imap["detail"].as_str().unwrap();
    assert!(
        detail.contains("roles IMAP.AccessAsApp") && detail.contains("XOAUTH2 login to"),
        "{imap:#}"
    );

    // The role without mailbox access in Exchange: the IMAP login is refused, the fix is
    // Exchange's.
    w.idp
        .register_app(app().with_exchange_mailbox_access(&[&elsewhere]));
    let imap = login("no-mailbox").await;
    assert_eq!(imap["result"], "warning", "{imap:#}");
    let fix = imap["fix"].as_str().unwrap();
    assert!(
        fix.contains("New-ServicePrincipal")
            && fix.contains("Add-MailboxPermission")
            && fix.contains(&mailbox),
        "{imap:#}"
    );
    // `check` on that account names the app-only fix too, not the delegated one.
    let out = w.run(&["check", "--json", "no-mailbox"]).await;
    let report = json(&out);
    let imap_step = step(&report["targets"][0], "IMAP");
    assert_eq!(imap_step["result"], "failed", "{report:#}");
    let fix = imap_step["fix"].as_str().unwrap();
    assert!(
        fix.contains("IMAP.AccessAsApp")
            && fix.contains("Add-MailboxPermission")
            && !fix.contains("IMAP.AccessAsUser.All"),
        "{imap_step:#}"
    );

    // Exchange grants the mailbox but Entra has no IMAP.AccessAsApp consent: the token says so.
    let mut no_role = app().with_exchange_mailbox_access(&[&mailbox]);
    no_role
        .application_permissions
        .retain(|p| !p.ends_with("/IMAP.AccessAsApp"));
    w.idp.register_app(no_role);
    let imap = login("no-role").await;
    assert_eq!(imap["result"], "warning", "{imap:#}");
    assert!(
        imap["detail"]
            .as_str()
            .unwrap()
            .contains("without the IMAP.AccessAsApp role")
            && imap["fix"].as_str().unwrap().contains(
                "Office 365 Exchange Online → Application permissions → IMAP.AccessAsApp"
            ),
        "{imap:#}"
    );
}
