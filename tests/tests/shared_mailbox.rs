//! Sending from a shared mailbox, as Exchange Online rules it, against the identity and Graph
//! stand-ins (moto for the queue, DLQ, state table and secrets):
//!
//! - `shared_mailbox_route: send_as` (the default): `POST /me/sendMail` with `from`; needs Send
//!   As only, and the token layer does not ask for `Mail.Send.Shared` (an app without that
//!   consent works);
//! - `shared_mailbox_route: full_access`: `POST /users/{mailbox}/sendMail`; needs
//!   `Mail.Send.Shared` (asked for by the token layer: an app without that consent cannot get a
//!   token), Full Access and Send As;
//! - each refusal carries Microsoft's code (`ErrorSendAsDenied`, `ErrorAccessDenied`) and the
//!   parked notification's reason names the missing right.

use std::collections::HashMap;
use std::time::Duration;

use local_stack::identity::{AppRegistration, UserAccount};
use mailbridge::graph::{GraphClient, GraphError, MailSender as _, OutgoingMime, SendAs};
use mailbridge::send_rights::SharedMailboxRoute;
use mailbridge::token::{AccessToken, Audience};
use mailbridge_tests::parked::parked_messages;
use mailbridge_tests::sender::Sender;
use mailbridge_tests::{
    create_queue_with_dlq, create_state_table, put_secret, sqs, stack, unique, unique_user,
};
use send_notifications::settings::BatchSettings;
use send_notifications::{BatchReport, Deps, Outcome, process_batch};
use serde_json::{Value, json};
use tokio::time::Instant;

const PASSWORD: &str = "correct horse battery staple";
const THREAD_KEY: &str = "mailbridge-test-thread-key-32byt";

struct World {
    upn: String,
    tenant: String,
    client_id: String,
    account: String,
    queue_url: String,
    queue_arn: String,
    dlq_url: String,
    table: String,
}

impl World {
    /// A user signed in to an app consented for `graph_permissions` (plus IMAP), whose account
    /// secret uses `route`.
    async fn new(graph_permissions: &[&str], route: SharedMailboxRoute) -> World {
        let idp = stack().identity();
        let tenant = format!("{}.onmicrosoft.com", unique("tenant"));
        let client_id = uuid::Uuid::new_v4().to_string();
        let upn = unique_user("agent");
        let mut app = AppRegistration::mailbridge(&tenant, &client_id);
        app.consented_scopes = graph_permissions
            .iter()
            .map(|p| format!("https://graph.microsoft.com/{p}"))
            .chain(["https://outlook.office.com/IMAP.AccessAsUser.All".to_owned()])
            .collect();
        idp.register_app(app);
        idp.register_user(UserAccount::new(&tenant, &upn, PASSWORD));
        let account = format!("mailbridge/{}", unique("acct"));
        let mut secret = mailbridge::token::AccountSecret::new(&tenant, &client_id, &upn);
        secret.authority_host = idp.base_url.clone();
        secret.password = Some(PASSWORD.to_owned().into());
        secret.shared_mailbox_route = route;
        put_secret(&account, &secret.to_json())
            .await
            .expect("account secret");
        let (queue_url, dlq_url) = create_queue_with_dlq(&unique("shared"), 5)
            .await
            .expect("queues");
        let queue_arn = mailbridge_tests::queue_arn(&queue_url)
            .await
            .expect("queue arn");
        let table = create_state_table("shared").await.expect("state table");
        World {
            upn,
            tenant,
            client_id,
            account,
            queue_url,
            queue_arn,
            dlq_url,
            table,
        }
    }

    fn deps(&self) -> Deps {
        Sender::on_stack(&self.table, &self.dlq_url, THREAD_KEY).deps(BatchSettings {
            safety_margin: Duration::from_secs(1),
            ..BatchSettings::default()
        })
    }

    fn json_from(&self, from: &str, subject: &str) -> Value {
        json!({
            "version": 1,
            "account": self.account,
            "from": from,
            "to": [{"address": unique_user("customer")}],
            "subject": subject,
            "body": {"content_type": "text", "content": "Your ticket was updated."}
        })
    }

    fn mime_from(&self, from: &str, subject: &str) -> Value {
        use base64::Engine as _;
        let raw = format!(
            "From: Support <{from}>\r\nTo: <{}>\r\nSubject: {subject}\r\nMessage-ID: <{}@helpdesk.example>\r\n\r\nHello.\r\n",
            unique_user("customer"),
            unique("mid")
        );
        json!({
            "version": 1, "kind": "mime", "account": self.account, "from": from,
            "raw_base64": base64::engine::general_purpose::STANDARD.encode(raw),
        })
    }

    /// Enqueue `bodies`, run one batch over them, and return the report.
    async fn send(&self, bodies: &[Value]) -> BatchReport {
        for body in bodies {
            sqs()
                .send_message()
                .queue_url(&self.queue_url)
                .message_body(body.to_string())
                .send()
                .await
                .expect("send message");
        }
        let event =
            mailbridge_tests::receive_sqs_event(&self.queue_url, &self.queue_arn, bodies.len())
                .await;
        assert_eq!(event.records.len(), bodies.len(), "all messages received");
        process_batch(
            event,
            Instant::now() + Duration::from_secs(30),
            &self.deps(),
        )
        .await
    }

    /// The DLQ's messages by subject (or MIME raw) → their attributes.
    async fn parked(&self, expected: usize) -> Vec<HashMap<String, String>> {
        parked_messages(&self.dlq_url, expected)
            .await
            .into_iter()
            .map(|m| m.attributes)
            .collect()
    }

    /// A Graph token for this world's user with exactly `permissions`.
    fn token_with(&self, permissions: &[&str]) -> AccessToken {
        AccessToken::new(
            stack()
                .identity()
                .mint_access_token(
                    &self.tenant,
                    &self.client_id,
                    &self.upn,
                    "https://graph.microsoft.com",
                    permissions,
                    Duration::from_secs(600),
                )
                .into(),
            chrono::Utc::now() + chrono::Duration::minutes(10),
            Audience::Graph,
        )
    }
}

fn outcome_for<'a>(report: &'a BatchReport, id_part: &str) -> &'a Outcome {
    &report
        .messages
        .iter()
        .find(|m| m.notification_id.as_deref().unwrap_or("").contains(id_part))
        .unwrap_or_else(|| panic!("no message {id_part} in {:?}", report.messages))
        .outcome
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_as_route_sends_through_me_with_send_as_alone_and_no_shared_scope() {
    // The app has no Mail.Send.Shared consent: the send_as route must not ask for it.
    let w = World::new(&["Mail.Send"], SharedMailboxRoute::SendAs).await;
    let graph = stack().graph();
    let shared = unique_user("support");
    graph.grant_send_as(&w.upn, &shared);
    let not_granted = unique_user("sales");
    // Full Access alone is not Send As: /me with from still needs Send As.
    graph.grant_full_access(&w.upn, &not_granted);
    let mut json_ok = w.json_from(&shared, "json from shared");
    json_ok["id"] = "json-ok".into();
    let mut mime_ok = w.mime_from(&shared, "mime from shared");
    mime_ok["id"] = "mime-ok".into();
    let mut denied = w.json_from(&not_granted, "json from a mailbox without send as");
    denied["id"] = "denied".into();
    let report = w.send(&[json_ok, mime_ok, denied]).await;

    assert!(
        matches!(outcome_for(&report, "json-ok"), Outcome::Sent { .. }),
        "{report:?}"
    );
    assert!(matches!(
        outcome_for(&report, "mime-ok"),
        Outcome::Sent { .. }
    ));
    let accepted = graph.accepted(&w.upn);
    assert_eq!(
        accepted.len(),
        2,
        "both went through the user's own mailbox"
    );
    for mail in &accepted {
        assert_eq!(mail.path, "me");
        let parsed = mail_parser::MessageParser::default()
            .parse(&mail.mime)
            .expect("delivered MIME");
        let from = parsed
            .from()
            .and_then(|a| a.first())
            .and_then(|a| a.address());
        assert_eq!(
            from,
            Some(shared.as_str()),
            "the customer sees the shared mailbox"
        );
    }
    assert!(
        graph.accepted(&shared).is_empty(),
        "nothing went through /users/{{shared}}"
    );

    let Outcome::Parked { reason } = outcome_for(&report, "denied") else {
        panic!("{report:?}")
    };
    assert_eq!(reason.graph_code.as_deref(), Some("ErrorSendAsDenied"));
    assert!(
        reason
            .reason
            .contains(&format!("lacks Send As on {not_granted}")),
        "{}",
        reason.reason
    );
    let parked = w.parked(1).await;
    assert_eq!(parked[0]["mailbridge.graph-code"], "ErrorSendAsDenied");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_access_route_needs_full_access_send_as_and_the_shared_scope() {
    let w = World::new(
        &["Mail.Send", "Mail.Send.Shared"],
        SharedMailboxRoute::FullAccess,
    )
    .await;
    let graph = stack().graph();
    let both = unique_user("support");
    graph.grant_full_access(&w.upn, &both);
    graph.grant_send_as(&w.upn, &both);
    let send_as_only = unique_user("billing");
    graph.grant_send_as(&w.upn, &send_as_only);
    let full_access_only = unique_user("sales");
    graph.grant_full_access(&w.upn, &full_access_only);
    let mut ok = w.json_from(&both, "json from shared");
    ok["id"] = "ok".into();
    let mut mime_ok = w.mime_from(&both, "mime from shared");
    mime_ok["id"] = "mime-ok".into();
    let mut no_full_access = w.json_from(&send_as_only, "no full access");
    no_full_access["id"] = "no-full-access".into();
    let mut no_send_as = w.mime_from(&full_access_only, "no send as");
    no_send_as["id"] = "no-send-as".into();
    let report = w.send(&[ok, mime_ok, no_full_access, no_send_as]).await;

    assert_eq!(report.metrics.sent, 2, "{report:?}");
    let accepted = graph.accepted(&both);
    assert_eq!(accepted.len(), 2, "{report:?}");
    assert!(accepted.iter().all(|m| m.path == format!("users/{both}")));
    assert!(graph.accepted(&w.upn).is_empty());

    let Outcome::Parked { reason } = outcome_for(&report, "no-full-access") else {
        panic!("{report:?}")
    };
    assert_eq!(reason.graph_code.as_deref(), Some("ErrorAccessDenied"));
    assert!(
        reason
            .reason
            .contains(&format!("lacks Full Access on {send_as_only}")),
        "{}",
        reason.reason
    );
    let Outcome::Parked { reason } = outcome_for(&report, "no-send-as") else {
        panic!("{report:?}")
    };
    assert_eq!(reason.graph_code.as_deref(), Some("ErrorSendAsDenied"));
    assert!(
        reason
            .reason
            .contains(&format!("lacks Send As on {full_access_only}")),
        "{}",
        reason.reason
    );

    // A token without Mail.Send.Shared is refused on /users/{mailbox} despite both rights,
    // with Graph's body; on /me the same token may send as the mailbox.
    let client = GraphClient::new(&graph.v1_url()).unwrap();
    let token = w.token_with(&["Mail.Send"]);
    let raw = format!(
        "From: <{both}>\r\nTo: <{}>\r\nSubject: scope\r\n\r\nx\r\n",
        unique_user("customer")
    );
    let mime = |send_as| OutgoingMime {
        send_as,
        mime: raw.clone().into_bytes(),
    };
    let t = Duration::from_secs(10);
    let e = client
        .send_mime(&token, &mime(SendAs::User(both.clone())), t)
        .await
        .unwrap_err();
    assert!(
        matches!(&e, GraphError::Rejected { status: 403, code, message, .. }
            if code == "ErrorAccessDenied" && message == "Access is denied. Check credentials and try again."),
        "{e}"
    );
    assert_eq!(
        mailbridge::send_rights::diagnose(
            e.code(),
            SharedMailboxRoute::FullAccess,
            &both,
            &["Mail.Send".to_owned()]
        ),
        Some(mailbridge::send_rights::MissingRight::SharedScopeConsent)
    );
    client
        .send_mime(&token, &mime(SendAs::Me), t)
        .await
        .expect("/me with Send As needs no Mail.Send.Shared");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_access_route_asks_for_mail_send_shared_and_names_the_missing_consent() {
    // The app was never consented for Mail.Send.Shared: the token layer asks for it on this
    // route, the identity platform refuses (AADSTS65001), and the account needs a person.
    let w = World::new(&["Mail.Send"], SharedMailboxRoute::FullAccess).await;
    let shared = unique_user("support");
    stack().graph().grant_full_access(&w.upn, &shared);
    stack().graph().grant_send_as(&w.upn, &shared);
    let report = w.send(&[w.json_from(&shared, "needs consent")]).await;
    let Outcome::NeedsReauth { reason } = &report.messages[0].outcome else {
        panic!("{report:?}")
    };
    assert!(reason.contains("65001"), "{reason}");
    assert!(stack().graph().accepted(&shared).is_empty());
}
