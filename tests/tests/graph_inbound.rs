//! Inbound mail through Microsoft Graph, against the Graph stand-in's mail-reading routes over
//! the real Dovecot mail store (mail is delivered into Dovecot and read through Graph), moto and
//! the ticket API stand-in.
//!
//! The first tests hold the stand-in to Microsoft's documented behaviour (delta rounds, paging,
//! `@removed`, 410 on an expired token, `$value`, move, PATCH, DELETE, folders, permissions,
//! throttling); the rest run the poller's Graph source end to end.

use std::time::Duration;

use local_stack::dovecot::Dovecot;
use mailbridge_tests::{stack, unique, unique_user};
use serde_json::{Value, json};

const GRAPH: &str = "https://graph.microsoft.com";

fn mail(subject: &str, message_id: &str) -> Vec<u8> {
    format!(
        "From: Customer <customer@example.com>\r\nTo: help@contoso.com\r\nSubject: {subject}\r\nMessage-ID: <{message_id}>\r\nDate: Sun, 06 Dec 2026 05:00:00 +0000\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nPlease help with {subject}.\r\n"
    )
    .into_bytes()
}

/// A Graph token for `upn` with `permissions` (straight from the identity stand-in).
fn token(upn: &str, permissions: &[&str]) -> String {
    let scopes: Vec<String> = permissions.iter().map(|p| format!("{GRAPH}/{p}")).collect();
    let scopes: Vec<&str> = scopes.iter().map(String::as_str).collect();
    stack().identity().mint_access_token(
        "tenant.onmicrosoft.com",
        "client",
        upn,
        GRAPH,
        &scopes,
        Duration::from_secs(3600),
    )
}

struct Caller {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Caller {
    fn new(user_path: &str, token: String) -> Caller {
        Caller {
            http: reqwest::Client::new(),
            base: format!("{}/{user_path}", stack().graph().v1_url()),
            token,
        }
    }

    async fn get(&self, path: &str) -> (u16, reqwest::header::HeaderMap, Vec<u8>) {
        let url = if path.starts_with("http") {
            path.to_owned()
        } else {
            format!("{}/{path}", self.base)
        };
        self.send(self.http.get(url)).await
    }

    async fn send(
        &self,
        request: reqwest::RequestBuilder,
    ) -> (u16, reqwest::header::HeaderMap, Vec<u8>) {
        let response = request
            .bearer_auth(&self.token)
            .send()
            .await
            .expect("stand-in answers");
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        (status, headers, response.bytes().await.unwrap().to_vec())
    }

    async fn json(&self, method: reqwest::Method, path: &str, body: Value) -> (u16, Value) {
        let (status, _, bytes) = self
            .send(
                self.http
                    .request(method, format!("{}/{path}", self.base))
                    .json(&body),
            )
            .await;
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    /// A whole delta round from `start`: every page's items and the delta link.
    async fn delta_round(&self, start: &str, page_size: usize) -> (Vec<Value>, String, usize) {
        let mut url = start.to_owned();
        let mut items = Vec::new();
        let mut pages = 0;
        loop {
            let full = if url.starts_with("http") {
                url.clone()
            } else {
                format!("{}/{url}", self.base)
            };
            let (status, _, body) = self
                .send(
                    self.http
                        .get(full)
                        .header("prefer", format!("odata.maxpagesize={page_size}")),
                )
                .await;
            assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
            pages += 1;
            let page: Value = serde_json::from_slice(&body).unwrap();
            assert!(
                page.get("@odata.nextLink").is_none() || page.get("@odata.deltaLink").is_none(),
                "a page has a nextLink or a deltaLink, never both"
            );
            items.extend(page["value"].as_array().unwrap().iter().cloned());
            if let Some(next) = page["@odata.nextLink"].as_str() {
                url = next.to_owned();
            } else {
                return (
                    items,
                    page["@odata.deltaLink"]
                        .as_str()
                        .expect("delta link")
                        .to_owned(),
                    pages,
                );
            }
        }
    }
}

fn dovecot() -> &'static Dovecot {
    stack().dovecot()
}

fn ids(items: &[Value]) -> Vec<String> {
    items
        .iter()
        .filter(|i| i.get("@removed").is_none())
        .map(|i| i["id"].as_str().unwrap().to_owned())
        .collect()
}

fn removed(items: &[Value]) -> Vec<String> {
    items
        .iter()
        .filter(|i| i.get("@removed").is_some())
        .map(|i| i["id"].as_str().unwrap().to_owned())
        .collect()
}

/// `/me/...` is the token's own mailbox, the same one as `/users/{its upn}/...`: the folder list,
/// one folder by path, and a delta round of its messages.
#[tokio::test(flavor = "multi_thread")]
async fn stand_in_me_and_users_upn_read_the_same_mailbox() {
    let user = unique_user("graphme");
    dovecot()
        .deliver_to(&user, "INBOX", &mail("only", &unique("mid")))
        .unwrap();
    let token = token(&user, &["Mail.ReadWrite"]);
    let me = Caller::new("me", token.clone());
    let by_upn = Caller::new(&format!("users/{user}"), token);
    for path in [
        "mailFolders",
        "mailFolders/inbox",
        "mailFolders/inbox/messages/delta",
    ] {
        let (status, _, via_me) = me.get(path).await;
        assert_eq!(
            status,
            200,
            "/me/{path}: {}",
            String::from_utf8_lossy(&via_me)
        );
        let (status, _, via_upn) = by_upn.get(path).await;
        assert_eq!(status, 200, "/users/{{upn}}/{path}");
        let value = |raw: &[u8]| serde_json::from_slice::<Value>(raw).unwrap()["value"].clone();
        let folder = |raw: &[u8]| serde_json::from_slice::<Value>(raw).unwrap()["id"].clone();
        if path == "mailFolders/inbox" {
            assert_eq!(folder(&via_me), folder(&via_upn), "{path}");
            assert!(folder(&via_me).is_string(), "{path}");
        } else {
            assert_eq!(value(&via_me), value(&via_upn), "{path}");
            assert!(!value(&via_me).as_array().unwrap().is_empty(), "{path}");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn stand_in_delta_rounds_follow_the_mail_store() {
    let user = unique_user("graphread");
    for n in 0..5 {
        dovecot()
            .deliver_to(&user, "INBOX", &mail(&format!("m{n}"), &unique("mid")))
            .unwrap();
    }
    let me = Caller::new(&format!("users/{user}"), token(&user, &["Mail.ReadWrite"]));
    let start = "mailFolders/inbox/messages/delta?$select=receivedDateTime,isRead&$expand=singleValueExtendedProperties($filter=id%20eq%20'Integer%200x0E08')";
    let (items, link, pages) = me.delta_round(start, 2).await;
    assert_eq!(pages, 3, "5 messages at 2 per page");
    assert_eq!(ids(&items).len(), 5);
    let size: u64 = items[0]["singleValueExtendedProperties"][0]["value"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let first = ids(&items)[0].clone();
    let (status, headers, raw) = me.get(&format!("messages/{first}/$value")).await;
    assert_eq!(status, 200);
    assert_eq!(headers["content-type"], "text/plain");
    assert_eq!(
        raw.len() as u64,
        size,
        "the size property is the MIME's size"
    );
    assert!(String::from_utf8_lossy(&raw).contains("Subject: m0"));

    // Nothing changed: an empty round.
    let (items, link, _) = me.delta_round(&link, 2).await;
    assert!(items.is_empty(), "{items:?}");

    // A new message, one read, one moved away, one deleted.
    dovecot()
        .deliver_to(&user, "INBOX", &mail("m5", &unique("mid")))
        .unwrap();
    let all = ids(&me.delta_round(start, 50).await.0);
    let (status, body) = me
        .json(
            reqwest::Method::PATCH,
            &format!("messages/{}", all[1]),
            json!({"isRead": true}),
        )
        .await;
    assert_eq!((status, body["isRead"].clone()), (200, json!(true)));
    let (status, folder) = me
        .json(
            reqwest::Method::POST,
            "mailFolders",
            json!({"displayName": "Processed"}),
        )
        .await;
    assert_eq!(status, 201, "{folder}");
    let (status, again) = me
        .json(
            reqwest::Method::POST,
            "mailFolders",
            json!({"displayName": "Processed"}),
        )
        .await;
    assert_eq!(
        (status, again["error"]["code"].clone()),
        (409, json!("ErrorFolderExists"))
    );
    let (status, moved) = me
        .json(
            reqwest::Method::POST,
            &format!("messages/{}/move", all[2]),
            json!({"destinationId": folder["id"]}),
        )
        .await;
    assert_eq!(status, 201, "{moved}");
    assert_ne!(moved["id"], json!(all[2]), "a moved message has a new id");
    let (status, _, _) = me
        .send(me.http.delete(format!("{}/messages/{}", me.base, all[3])))
        .await;
    assert_eq!(status, 204);
    let (items, link, _) = me.delta_round(&link, 10).await;
    let mut gone = removed(&items);
    gone.sort();
    let mut expected = vec![all[2].clone(), all[3].clone()];
    expected.sort();
    assert_eq!(
        gone, expected,
        "moved and deleted messages come as @removed"
    );
    let changed = ids(&items);
    assert_eq!(
        changed.len(),
        2,
        "the new message and the read one: {items:?}"
    );
    assert!(changed.contains(&all[1]));
    assert!(changed.contains(&all[5]));
    let (status, _, body) = me.get(&format!("messages/{}/$value", all[2])).await;
    assert_eq!(status, 404);
    assert!(String::from_utf8_lossy(&body).contains("ErrorItemNotFound"));
    assert_eq!(
        dovecot()
            .mailbox_status(&user, "Processed")
            .unwrap()
            .messages,
        1
    );
    assert_eq!(
        dovecot()
            .mailbox_status(&user, "Deleted Items")
            .unwrap()
            .messages,
        1
    );

    // Found by display name, under the top of the mailbox.
    let (status, _, body) = me
        .get("mailFolders/msgfolderroot/childFolders?$filter=displayName%20eq%20'Processed'")
        .await;
    assert_eq!(status, 200);
    let found: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(found["value"][0]["id"], folder["id"]);

    // An expired delta token (through the HTTP control, as from another process): 410 Gone,
    // SyncStateNotFound, Location = the initial query.
    local_stack::graph_control::GraphControl::new(&stack().graph().base_url)
        .inject(
            &user,
            local_stack::graph_control::GraphFault::ExpireDeltaTokens,
        )
        .await
        .unwrap();
    let (status, headers, body) = me.get(&link).await;
    assert_eq!(status, 410);
    assert!(String::from_utf8_lossy(&body).contains("SyncStateNotFound"));
    assert!(headers.contains_key("location"));
}

#[tokio::test(flavor = "multi_thread")]
async fn stand_in_checks_permissions_content_type_and_throttles() {
    let user = unique_user("graphperm");
    let delegate = unique_user("delegate");
    dovecot()
        .deliver_to(&user, "INBOX", &mail("p", &unique("mid")))
        .unwrap();
    let delta = "mailFolders/inbox/messages/delta";
    // Mail.Send only: no reading.
    let (status, _, _) = Caller::new(&format!("users/{user}"), token(&user, &["Mail.Send"]))
        .get(delta)
        .await;
    assert_eq!(status, 403);
    // Mail.Read reads but does not move.
    let reader = Caller::new(&format!("users/{user}"), token(&user, &["Mail.Read"]));
    let (items, _, _) = reader.delta_round(delta, 10).await;
    let id = ids(&items)[0].clone();
    let (status, _) = reader
        .json(
            reqwest::Method::PATCH,
            &format!("messages/{id}"),
            json!({"isRead": true}),
        )
        .await;
    assert_eq!(status, 403);
    // Another user's mailbox: Mail.ReadWrite.Shared AND Full Access.
    let shared = Caller::new(
        &format!("users/{user}"),
        token(&delegate, &["Mail.ReadWrite", "Mail.ReadWrite.Shared"]),
    );
    assert_eq!(shared.get(delta).await.0, 403, "no Full Access yet");
    stack().graph().grant_full_access(&delegate, &user);
    assert_eq!(shared.get(delta).await.0, 200);
    let unshared = Caller::new(
        &format!("users/{user}"),
        token(&delegate, &["Mail.ReadWrite"]),
    );
    assert_eq!(unshared.get(delta).await.0, 403, "no .Shared permission");
    // An IMAP token is not a Graph token.
    let imap = stack().identity().mint_access_token(
        "t",
        "c",
        &user,
        "https://outlook.office.com",
        &["https://outlook.office.com/IMAP.AccessAsUser.All"],
        Duration::from_secs(600),
    );
    assert_eq!(
        Caller::new(&format!("users/{user}"), imap)
            .get(delta)
            .await
            .0,
        401
    );
    // Bodies are JSON.
    let writer = Caller::new(&format!("users/{user}"), token(&user, &["Mail.ReadWrite"]));
    let (status, _, _) = writer
        .send(
            writer
                .http
                .patch(format!("{}/messages/{id}", writer.base))
                .header("content-type", "text/plain")
                .body("isRead=true"),
        )
        .await;
    assert_eq!(status, 415);
    let (status, body) = writer
        .json(
            reqwest::Method::PATCH,
            &format!("messages/{id}"),
            json!({"isRaed": true}),
        )
        .await;
    assert_eq!(
        (status, body["error"]["code"].clone()),
        (400, json!("RequestBodyRead"))
    );
    // Unsupported delta options are refused.
    assert_eq!(writer.get(&format!("{delta}?$search=help")).await.0, 400);
    assert_eq!(
        writer.get("messages/not-an-id/$value").await.0,
        400,
        "a malformed id"
    );
    // 429 with Retry-After from the faults; the message removed before its fetch.
    stack().graph().throttle_429(&user, 1, 3);
    let (status, headers, _) = writer.get(delta).await;
    assert_eq!(
        (status, headers["retry-after"].to_str().unwrap()),
        (429, "3")
    );
    local_stack::graph_control::GraphControl::new(&stack().graph().base_url)
        .inject(
            &user,
            local_stack::graph_control::GraphFault::RemoveBeforeFetch { count: 1 },
        )
        .await
        .unwrap();
    assert_eq!(writer.get(&format!("messages/{id}/$value")).await.0, 404);
    assert_eq!(
        dovecot().mailbox_status(&user, "INBOX").unwrap().messages,
        0
    );
}

/// `POST /$batch` as Graph has it: at most 20 requests with unique ids (else 400 for the whole
/// batch, in Graph's error shape), each request answered on its own (201 moves with new ids, 404
/// for a message gone, base64 `$value`, 424 after a failed dependency), throttled on its own
/// (an injected 429 hits one request, with its `Retry-After`), and counted against the
/// mailbox's 4 concurrent requests (3 requests in flight: of a batch's first 4, 3 get 429).
#[tokio::test(flavor = "multi_thread")]
async fn stand_in_batch_is_as_strict_as_graphs() {
    let user = unique_user("graphbatch");
    let mails: Vec<Vec<u8>> = (0..4)
        .map(|n| mail(&format!("batch {n}"), &unique("mid")))
        .collect();
    for m in &mails {
        dovecot().deliver_to(&user, "INBOX", m).unwrap();
    }
    let me = Caller::new("me", token(&user, &["Mail.ReadWrite"]));
    let (items, _, _) = me.delta_round("mailFolders/inbox/messages/delta", 10).await;
    let all = ids(&items);
    assert_eq!(all.len(), 4);
    let (status, folder) = me
        .json(
            reqwest::Method::POST,
            "mailFolders",
            json!({"displayName": "Processed"}),
        )
        .await;
    assert_eq!(status, 201, "{folder}");
    let batch_url = format!("{}/$batch", stack().graph().v1_url());
    let batch = |requests: Value| {
        let me = &me;
        let batch_url = batch_url.clone();
        async move {
            let (status, _, body) = me
                .send(
                    me.http
                        .post(batch_url)
                        .json(&json!({ "requests": requests })),
                )
                .await;
            let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            (status, body)
        }
    };
    let answer = |body: &Value, id: &str| -> Value {
        body["responses"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["id"] == id)
            .cloned()
            .unwrap_or_else(|| panic!("no answer for request {id}: {body}"))
    };
    let move_of = |id: &str, n: usize| {
        json!({"id": n.to_string(), "method": "POST", "url": format!("/me/messages/{id}/move"),
               "headers": {"Content-Type": "application/json"},
               "body": {"destinationId": folder["id"]}})
    };
    let get = |id: &str, url: String| json!({"id": id, "method": "GET", "url": url});

    // The whole batch refused: 21 requests, an id used twice, an unknown dependency.
    let many: Vec<Value> = (0..21)
        .map(|n| get(&n.to_string(), "/me/mailFolders".into()))
        .collect();
    let (status, body) = batch(Value::from(many)).await;
    assert_eq!(
        (status, body["error"]["code"].clone()),
        (400, json!("BadRequest")),
        "{body}"
    );
    let (status, body) = batch(json!([
        get("a", "/me/mailFolders".into()),
        get("A", "/me/mailFolders".into())
    ]))
    .await;
    assert_eq!(status, 400, "ids are unique without regard to case: {body}");
    let mut dependent = get("1", "/me/mailFolders".into());
    dependent["dependsOn"] = json!(["9"]);
    assert_eq!(batch(json!([dependent])).await.0, 400);
    let (status, _, _) = me
        .send(
            me.http
                .post(&batch_url)
                .header("content-type", "text/plain")
                .body("{}"),
        )
        .await;
    assert_eq!(status, 415);

    // Three moves, one with a malformed id, and a $value: each its own answer.
    let mut requests: Vec<Value> = all[..3]
        .iter()
        .enumerate()
        .map(|(n, id)| move_of(id, n))
        .collect();
    requests.push(move_of("AAMkAGIsnot-an-id", 3));
    requests.push(get("value", format!("/me/messages/{}/$value", all[3])));
    let (status, body) = batch(Value::from(requests)).await;
    assert_eq!(status, 200, "{body}");
    for (n, id) in all[..3].iter().enumerate() {
        let moved = answer(&body, &n.to_string());
        assert_eq!(moved["status"], 201, "{moved}");
        assert_ne!(
            moved["body"]["id"],
            json!(id),
            "a moved message has a new id"
        );
    }
    assert_eq!(
        answer(&body, "3")["body"]["error"]["code"],
        "ErrorInvalidIdMalformed"
    );
    let value = answer(&body, "value");
    assert_eq!(
        (
            value["status"].clone(),
            value["headers"]["content-type"].clone()
        ),
        (json!(200), json!("text/plain"))
    );
    {
        use base64::Engine as _;
        let raw = base64::engine::general_purpose::STANDARD
            .decode(value["body"].as_str().unwrap())
            .unwrap();
        assert_eq!(
            raw, mails[3],
            "$value in a batch is the MIME, base64-encoded"
        );
    }
    assert_eq!((count(&user, "INBOX"), count(&user, "Processed")), (1, 3));
    // Moved already: 404 each; what depends on a failed request: 424.
    let mut requests: Vec<Value> = all[..2]
        .iter()
        .enumerate()
        .map(|(n, id)| move_of(id, n))
        .collect();
    let mut after = get("after", "/me/mailFolders".into());
    after["dependsOn"] = json!(["0"]);
    requests.push(after);
    // reads: of a message moved away (404), and of one message twice (the MIME each time)
    requests.push(get("gone", format!("/me/messages/{}/$value", all[0])));
    requests.push(get("twice", format!("/me/messages/{}/$value", all[3])));
    requests.push(get("again", format!("/me/messages/{}/$value", all[3])));
    let (_, body) = batch(Value::from(requests)).await;
    for n in ["0", "1", "gone"] {
        assert_eq!(
            answer(&body, n)["body"]["error"]["code"],
            "ErrorItemNotFound",
            "{body}"
        );
    }
    assert_eq!(answer(&body, "after")["status"], 424, "{body}");
    for n in ["twice", "again"] {
        use base64::Engine as _;
        let raw = base64::engine::general_purpose::STANDARD
            .decode(answer(&body, n)["body"].as_str().unwrap())
            .unwrap();
        assert_eq!(raw, mails[3]);
    }

    // Throttling is per request: one 429 with its Retry-After, the other answered.
    stack().graph().throttle_429(&user, 1, 3);
    let (_, body) = batch(json!([
        get("x", "/me/mailFolders".into()),
        get("y", "/me/mailFolders".into())
    ]))
    .await;
    let mut statuses: Vec<u64> = ["x", "y"]
        .iter()
        .map(|id| answer(&body, id)["status"].as_u64().unwrap())
        .collect();
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 429], "{body}");
    let throttled = ["x", "y"]
        .iter()
        .map(|id| answer(&body, id))
        .find(|a| a["status"] == 429)
        .unwrap();
    assert_eq!(throttled["headers"]["retry-after"], "3", "{throttled}");

    // Three requests of a mailbox in flight: of the batch's first four, three find no slot.
    let busy = unique_user("graphbatchbusy");
    dovecot()
        .deliver_to(&busy, "INBOX", &mail("busy", &unique("mid")))
        .unwrap();
    let other = Caller::new(&format!("users/{busy}"), token(&busy, &["Mail.ReadWrite"]));
    stack().graph().set_latency(&busy, Duration::from_secs(2));
    let slow: Vec<_> = (0..3)
        .map(|_| {
            let http = other.http.clone();
            let url = format!("{}/mailFolders", other.base);
            let token = other.token.clone();
            tokio::spawn(async move { http.get(url).bearer_auth(token).send().await })
        })
        .collect();
    let limit = std::time::Instant::now() + Duration::from_secs(20);
    while stack().graph().max_mail_requests_in_flight(&busy) < 3 {
        assert!(
            std::time::Instant::now() < limit,
            "the slow requests never ran"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let requests: Vec<Value> = (0..4)
        .map(|n| get(&n.to_string(), format!("/users/{busy}/mailFolders")))
        .collect();
    let (status, _, body) = other
        .send(
            other
                .http
                .post(&batch_url)
                .json(&json!({ "requests": requests })),
        )
        .await;
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(status, 200, "{body}");
    let statuses: Vec<u64> = (0..4)
        .map(|n| answer(&body, &n.to_string())["status"].as_u64().unwrap())
        .collect();
    assert_eq!(statuses, [429, 429, 429, 200], "{body}");
    assert_eq!(
        answer(&body, "0")["body"]["error"]["code"],
        "ApplicationThrottled"
    );
    assert!(stack().graph().max_mail_requests_in_flight(&busy) <= 4);
    for s in slow {
        assert_eq!(s.await.unwrap().unwrap().status(), 200);
    }
    stack().graph().set_latency(&busy, Duration::ZERO);
}

// ---------------------------------------------------------------------------------------------
// The poller's Graph source end to end: the real token layer (account secrets in moto, tokens
// from the identity stand-in), the state table in moto, the Graph stand-in over Dovecot, the
// ticket API stand-in.

use std::sync::Arc;

use local_stack::identity::{AppRegistration, UserAccount};
use mailbridge::state_table::DynamoStateStore;
use mailbridge::state_table::MailboxStatus;
use mailbridge::token::identity::{IdentityClient, default_retry_policy};
use mailbridge::token::secret::AccountSecret;
use mailbridge::token::service::{TokenService, TokenServiceConfig};
use mailbridge::token::store::SecretsManagerStore;
use mailbridge_tests::{dynamodb, put_secret};
use poll_mailboxes::PollDeps;
use poll_mailboxes::convert::ParseContext;
use poll_mailboxes::graph_adapter::{GraphConnector, ProtocolConnector};
use poll_mailboxes::imap_adapter::ImapConnector;
use poll_mailboxes::sinks::SecretsSinkFactory;
use tokio::time::Instant;

const PASSWORD: &str = "correct horse battery staple";

fn fast_retry() -> mailbridge::retry::RetryPolicy {
    mailbridge::retry::RetryPolicy {
        initial_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_secs(2),
        max_attempts: 5,
        attempt_timeout: Duration::from_secs(5),
    }
}

struct Poller {
    tenant: String,
    client_id: String,
    table: String,
    sink: String,
    deps: PollDeps,
}

impl Poller {
    /// A tenant whose app is consented for `permissions` (full URIs).
    async fn new(permissions: &[&str]) -> Poller {
        let idp = stack().identity();
        let tenant = format!("{}.onmicrosoft.com", unique("tenant"));
        let client_id = uuid::Uuid::new_v4().to_string();
        let mut app = AppRegistration::mailbridge(&tenant, &client_id);
        app.consented_scopes = permissions.iter().map(|p| p.to_string()).collect();
        idp.register_app(app);
        let table = mailbridge_tests::create_state_table("graphin")
            .await
            .unwrap();
        let aws = stack().moto().sdk_config();
        let tokens = TokenService::new(
            Arc::new(SecretsManagerStore::from_conf(&aws)),
            IdentityClient::new(mailbridge::http::default_client().unwrap()).with_retry_policy(
                mailbridge::retry::RetryPolicy {
                    initial_backoff: Duration::from_millis(50),
                    max_backoff: Duration::from_millis(400),
                    ..default_retry_policy()
                },
            ),
            TokenServiceConfig {
                default_timeout: Duration::from_secs(10),
                ..TokenServiceConfig::default()
            },
        );
        let state = Arc::new(DynamoStateStore::new(dynamodb(), &table));
        let dovecot = stack().dovecot();
        let deps = PollDeps {
            tokens: Arc::new(tokens),
            connector: Arc::new(ProtocolConnector {
                imap: Arc::new(
                    ImapConnector::new(Some(&dovecot.ca_pem_path), Duration::from_secs(10))
                        .unwrap(),
                ),
                graph: Arc::new(GraphConnector::new(
                    reqwest::Client::new(),
                    &stack().graph().v1_url(),
                    state.clone(),
                    Duration::from_secs(10),
                )),
            }),
            state,
            sinks: Arc::new(SecretsSinkFactory::new(
                reqwest::Client::new(),
                aws_sdk_secretsmanager::Client::new(&aws),
                fast_retry(),
            )),
            parse: ParseContext {
                thread_key: Some(b"graph-inbound-thread-key".to_vec()),
            },
            max_concurrent_mailboxes: 4,
            deadline_margin: Duration::from_secs(2),
            dedupe_ttl: Duration::from_secs(86_400),
            targets: mailbridge::mailbox::TargetPolicy::local(),
            memory: Arc::new(poll_mailboxes::memory::MemoryBudget::unlimited()),
        };
        Poller {
            tenant,
            client_id,
            table,
            sink: unique("sink"),
            deps,
        }
    }

    /// A user with a password account secret; returns the account name.
    async fn account(&self, upn: &str) -> String {
        let idp = stack().identity();
        idp.register_user(UserAccount::new(&self.tenant, upn, PASSWORD));
        let mut secret = AccountSecret::new(&self.tenant, &self.client_id, upn);
        secret.authority_host = idp.base_url.clone();
        secret.password = Some(PASSWORD.into());
        let account = unique("acct");
        put_secret(&format!("mailbridge/{account}"), &secret.to_json())
            .await
            .unwrap();
        account
    }

    async fn mailbox(&self, name: &str, user: &str, account: &str, extra: Value) {
        let config = json!({
            "user": user,
            "account": account,
            "protocol": "graph",
            "ticket_api_url": stack().tickets().sink_url(&self.sink),
        });
        mailbridge_tests::poller::put_mailbox(&self.table, name, config, extra).await;
    }

    async fn poll(&self) -> poll_mailboxes::PollReport {
        poll_mailboxes::poll_once(&self.deps, None, Instant::now() + Duration::from_secs(60))
            .await
            .unwrap()
    }

    fn tickets(&self) -> Vec<local_stack::ticket_api::RecordedTicket> {
        stack().tickets().tickets(&self.sink)
    }
}

const GRAPH_MAIL: &str = "https://graph.microsoft.com/Mail.ReadWrite";
const GRAPH_MAIL_SHARED: &str = "https://graph.microsoft.com/Mail.ReadWrite.Shared";
const IMAP: &str = "https://outlook.office.com/IMAP.AccessAsUser.All";

fn status<'a>(report: &'a poll_mailboxes::PollReport, name: &str) -> &'a MailboxStatus {
    report
        .mailboxes
        .iter()
        .find(|s| s.mailbox == name)
        .unwrap_or_else(|| panic!("no status for {name}: {report:?}"))
}

fn count(user: &str, folder: &str) -> u32 {
    dovecot()
        .mailbox_status(user, folder)
        .map(|s| s.messages)
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn graph_mail_becomes_one_ticket_and_is_moved_and_later_mail_comes_by_delta() {
    let p = Poller::new(&[GRAPH_MAIL]).await;
    let user = unique_user("graphdesk");
    let account = p.account(&user).await;
    p.mailbox("graphdesk", &user, &account, json!({})).await;
    dovecot()
        .deliver_to(&user, "INBOX", &mail("Printer on fire", &unique("mid")))
        .unwrap();
    dovecot()
        .deliver_to(&user, "INBOX", &mail("VPN down", &unique("mid")))
        .unwrap();
    let report = p.poll().await;
    let s = status(&report, "graphdesk");
    assert_eq!((s.outcome.as_str(), s.tickets_created), ("ok", 2), "{s:?}");
    let subjects: Vec<String> = p
        .tickets()
        .iter()
        .map(|t| t.body["draft"]["subject"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        subjects,
        ["Printer on fire", "VPN down"],
        "order of arrival"
    );
    assert_eq!((count(&user, "INBOX"), count(&user, "Processed")), (0, 2));

    // Nothing new: no ticket, one delta request.
    let report = p.poll().await;
    assert_eq!(status(&report, "graphdesk").tickets_created, 0);
    assert_eq!(p.tickets().len(), 2);

    dovecot()
        .deliver_to(&user, "INBOX", &mail("Mouse broken", &unique("mid")))
        .unwrap();
    let report = p.poll().await;
    assert_eq!(status(&report, "graphdesk").tickets_created, 1);
    assert_eq!(p.tickets().len(), 3);
    assert_eq!((count(&user, "INBOX"), count(&user, "Processed")), (0, 3));
}

/// The delta round writes the mailbox's sync state (link, messages to handle), so it runs under
/// the mailbox lease: while another run holds it, this run neither reads nor writes that state.
#[tokio::test(flavor = "multi_thread")]
async fn the_delta_round_runs_only_under_the_mailbox_lease() {
    use mailbridge::state_table::GraphSyncStore as _;
    use mailbridge::state_table::{MailboxLease, StateStore as _};
    let p = Poller::new(&[GRAPH_MAIL]).await;
    let user = unique_user("graphlease");
    let account = p.account(&user).await;
    p.mailbox("graphlease", &user, &account, json!({})).await;
    dovecot()
        .deliver_to(&user, "INBOX", &mail("Printer on fire", &unique("mid")))
        .unwrap();
    let store = DynamoStateStore::new(dynamodb(), &p.table);
    let other_run = store
        .acquire_mailbox_lease("graphlease", chrono::Utc::now().timestamp() + 120)
        .await
        .unwrap();
    let MailboxLease::Acquired { token, .. } = other_run else {
        panic!("{other_run:?}")
    };
    let report = p.poll().await;
    let s = status(&report, "graphlease");
    assert_eq!(s.outcome.as_str(), "partial", "{s:?}");
    assert!(
        s.reason.as_deref().unwrap_or("").contains("another run"),
        "{s:?}"
    );
    assert_eq!(
        store.get_graph_sync("graphlease").await.unwrap(),
        None,
        "no delta round without the lease"
    );
    assert!(p.tickets().is_empty());
    store
        .release_mailbox_lease("graphlease", &token)
        .await
        .unwrap();
    let report = p.poll().await;
    assert_eq!(status(&report, "graphlease").tickets_created, 1);
    assert!(store.get_graph_sync("graphlease").await.unwrap().is_some());
}

/// More mail waiting than is kept with the delta link (1,000; 3 here): the link is dropped, the
/// next run lists the folder in full, and run after run every mail becomes a ticket, in order
/// of arrival, none lost and none twice.
#[tokio::test(flavor = "multi_thread")]
async fn a_backlog_over_the_pending_cap_drains_run_after_run_in_order() {
    use mailbridge::state_table::GraphSyncStore as _;
    let mut p = Poller::new(&[GRAPH_MAIL]).await;
    let state = Arc::new(DynamoStateStore::new(dynamodb(), &p.table));
    p.deps.connector = Arc::new(ProtocolConnector {
        imap: Arc::new(
            ImapConnector::new(Some(&dovecot().ca_pem_path), Duration::from_secs(10)).unwrap(),
        ),
        graph: Arc::new(
            GraphConnector::new(
                reqwest::Client::new(),
                &stack().graph().v1_url(),
                state.clone(),
                Duration::from_secs(10),
            )
            .with_max_pending_with_link(3),
        ),
    });
    let user = unique_user("graphcap");
    let account = p.account(&user).await;
    p.mailbox(
        "graphcap",
        &user,
        &account,
        json!({"max_messages_per_run": 1}),
    )
    .await;
    let subjects: Vec<String> = (1..=5).map(|i| format!("Request {i}")).collect();
    for subject in &subjects {
        dovecot()
            .deliver_to(&user, "INBOX", &mail(subject, &unique("mid")))
            .unwrap();
    }
    let report = p.poll().await;
    assert_eq!(status(&report, "graphcap").tickets_created, 1);
    let stored = state.get_graph_sync("graphcap").await.unwrap().unwrap();
    assert_eq!(
        (stored.delta_link.is_none(), stored.pending.len()),
        (true, 3),
        "over the cap: no link, the first 3 kept: {stored:?}"
    );
    for _ in 0..6 {
        if p.tickets().len() == subjects.len() {
            break;
        }
        let report = p.poll().await;
        let s = status(&report, "graphcap");
        assert!(s.succeeded(false), "{s:?}");
    }
    let ticketed: Vec<String> = p
        .tickets()
        .iter()
        .map(|t| t.body["draft"]["subject"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ticketed, subjects, "every mail once, in order of arrival");
    assert_eq!((count(&user, "INBOX"), count(&user, "Processed")), (0, 5));
}

/// `since` on a Graph mailbox: mail received before it is neither listed nor touched, in the
/// first (full) round and the incremental ones after it.
#[tokio::test(flavor = "multi_thread")]
async fn graph_mail_received_before_since_is_left_untouched() {
    let p = Poller::new(&[GRAPH_MAIL]).await;
    let user = unique_user("graphsince");
    let account = p.account(&user).await;
    let now = chrono::Utc::now();
    let since = now - chrono::Duration::minutes(30);
    p.mailbox(
        "graphsince",
        &user,
        &account,
        json!({"since": since.to_rfc3339()}),
    )
    .await;
    dovecot()
        .deliver_received_at(
            &user,
            &mail("Old backlog", &unique("mid")),
            now - chrono::Duration::days(7),
        )
        .unwrap();
    dovecot()
        .deliver_received_at(
            &user,
            &mail("Just before", &unique("mid")),
            since - chrono::Duration::seconds(5),
        )
        .unwrap();
    dovecot()
        .deliver_to(&user, "INBOX", &mail("New request", &unique("mid")))
        .unwrap();
    let report = p.poll().await;
    let s = status(&report, "graphsince");
    assert_eq!((s.outcome.as_str(), s.tickets_created), ("ok", 1), "{s:?}");
    assert_eq!((count(&user, "INBOX"), count(&user, "Processed")), (2, 1));

    // Later rounds are incremental: older mail still stays, newer mail comes.
    dovecot()
        .deliver_received_at(
            &user,
            &mail("Restored old mail", &unique("mid")),
            since - chrono::Duration::minutes(1),
        )
        .unwrap();
    dovecot()
        .deliver_to(&user, "INBOX", &mail("Second request", &unique("mid")))
        .unwrap();
    let report = p.poll().await;
    assert_eq!(status(&report, "graphsince").tickets_created, 1);
    let subjects: Vec<String> = p
        .tickets()
        .iter()
        .map(|t| t.body["draft"]["subject"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(subjects, ["New request", "Second request"]);
    assert_eq!((count(&user, "INBOX"), count(&user, "Processed")), (3, 2));
    let unread = dovecot()
        .list_messages(&user, "INBOX")
        .unwrap()
        .iter()
        .all(|m| !m.is_seen());
    assert!(unread, "the older mail is not even read");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_crash_between_ticket_and_move_then_an_expired_delta_token_open_no_second_ticket() {
    let p = Poller::new(&[GRAPH_MAIL]).await;
    let user = unique_user("graphcrash");
    let account = p.account(&user).await;
    p.mailbox("graphcrash", &user, &account, json!({})).await;
    dovecot()
        .deliver_to(&user, "INBOX", &mail("Server down", &unique("mid")))
        .unwrap();
    // The ticket POST waits; meanwhile Graph starts failing, so once the ticket is accepted the
    // move cannot be made: the run ends with the ticket made and the mail still in the folder.
    stack().tickets().hold_requests_after(&p.sink, 0);
    let run = {
        let deps = p.deps.clone();
        tokio::spawn(async move {
            poll_mailboxes::poll_once(&deps, None, Instant::now() + Duration::from_secs(60))
                .await
                .unwrap()
        })
    };
    let limit = Instant::now() + Duration::from_secs(30);
    while stack().tickets().requests(&p.sink) < 1 {
        assert!(Instant::now() < limit, "the run never POSTed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stack().graph().fail_503(&user, 1000, None);
    stack().tickets().release_held(&p.sink);
    let report = run.await.unwrap();
    let s = status(&report, "graphcrash");
    assert_eq!(
        s.outcome,
        mailbridge::state_table::MailboxOutcome::Failed,
        "{s:?}"
    );
    assert_eq!(p.tickets().len(), 1);
    assert_eq!(count(&user, "INBOX"), 1, "left in place");
    stack().graph().fail_503(&user, 0, None);
    // The delta token expires before the next run: a full resync lists the mail again.
    stack().graph().expire_delta_tokens(&user);
    let report = p.poll().await;
    let s = status(&report, "graphcrash");
    assert_eq!((s.outcome.as_str(), s.duplicates), ("ok", 1), "{s:?}");
    assert_eq!(p.tickets().len(), 1, "the same ticket, not a second one");
    assert_eq!((count(&user, "INBOX"), count(&user, "Processed")), (0, 1));
    // And once more after the move: nothing.
    stack().graph().expire_delta_tokens(&user);
    p.poll().await;
    assert_eq!(p.tickets().len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_429_storm_is_waited_out_and_mail_removed_before_its_fetch_is_skipped() {
    let p = Poller::new(&[GRAPH_MAIL]).await;
    let user = unique_user("graphstorm");
    let account = p.account(&user).await;
    p.mailbox("graphstorm", &user, &account, json!({})).await;
    for n in 0..3 {
        dovecot()
            .deliver_to(&user, "INBOX", &mail(&format!("storm {n}"), &unique("mid")))
            .unwrap();
    }
    // The first of them goes before its $value is read.
    stack().graph().remove_before_fetch(&user, 1);
    stack().graph().throttle_429(&user, 3, 1);
    let started = std::time::Instant::now();
    let report = p.poll().await;
    let s = status(&report, "graphstorm");
    assert_eq!((s.outcome.as_str(), s.tickets_created), ("ok", 2), "{s:?}");
    assert!(
        started.elapsed() >= Duration::from_secs(3),
        "Retry-After: 1 honoured three times"
    );
    assert_eq!(p.tickets().len(), 2);
    assert!(stack().graph().max_mail_requests_in_flight(&user) <= 4);
    assert_eq!((count(&user, "INBOX"), count(&user, "Processed")), (0, 2));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_shared_mailbox_is_read_through_a_delegate_with_full_access() {
    // The token for a shared mailbox asks for Mail.ReadWrite.Shared: without that consent the
    // account needs a person (and says which permission), it does not fail at Graph.
    let unconsented = Poller::new(&[GRAPH_MAIL]).await;
    let shared = unique_user("graphshared");
    let delegate = unique_user("graphagent");
    let account = unconsented.account(&delegate).await;
    unconsented
        .mailbox("graphshared", &shared, &account, json!({"shared": true}))
        .await;
    let report = unconsented.poll().await;
    let s = status(&report, "graphshared");
    assert_eq!(
        s.outcome,
        mailbridge::state_table::MailboxOutcome::NeedsReauth,
        "{s:?}"
    );

    let p = Poller::new(&[GRAPH_MAIL, GRAPH_MAIL_SHARED]).await;
    let account = p.account(&delegate).await;
    p.mailbox("graphshared", &shared, &account, json!({"shared": true}))
        .await;
    dovecot()
        .deliver_to(&shared, "INBOX", &mail("Shared help", &unique("mid")))
        .unwrap();
    let report = p.poll().await;
    let s = status(&report, "graphshared");
    assert_eq!(
        s.outcome,
        mailbridge::state_table::MailboxOutcome::Failed,
        "no Full Access yet: {s:?}"
    );
    let reason = s.reason.as_deref().unwrap_or("");
    assert!(reason.contains("Mail.ReadWrite.Shared"), "{s:?}");
    // A mailbox read through Graph fails in Graph's words, never in IMAP's.
    assert!(
        reason.starts_with("Graph ") && !reason.contains("IMAP") && !reason.contains("XOAUTH2"),
        "{reason}"
    );
    stack().graph().grant_full_access(&delegate, &shared);
    let report = p.poll().await;
    assert_eq!(status(&report, "graphshared").tickets_created, 1);
    assert_eq!(p.tickets()[0].body["mailbox_address"], json!(shared));
}

#[tokio::test(flavor = "multi_thread")]
async fn with_imap_off_graph_reads_the_same_account_and_the_drafts_match_imap() {
    // The account's app has no IMAP consent (IMAP switched off for the tenant); a second
    // account with IMAP reads the same mail over IMAP.
    let graph_only = Poller::new(&[GRAPH_MAIL]).await;
    let user = unique_user("imapoff");
    let account = graph_only.account(&user).await;
    graph_only
        .mailbox(
            "imap-off-over-imap",
            &user,
            &account,
            json!({"protocol": "imap", "host": "localhost", "port": dovecot().imaps_port}),
        )
        .await;
    let raw = format!(
        "From: Ann Example <ann@customer.example>\r\nTo: {user}\r\nSubject: Same mail\r\nMessage-ID: <{}@customer.example>\r\nDate: Sun, 06 Dec 2026 05:00:00 +0000\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: text/html; charset=utf-8\r\n\r\n<p>Hello <b>there</b></p>\r\n--b\r\nContent-Type: application/pdf; name=\"r.pdf\"\r\nContent-Disposition: attachment; filename=\"r.pdf\"\r\nContent-Transfer-Encoding: base64\r\n\r\nJVBERi0xLjQK\r\n--b--\r\n",
        unique("same")
    );
    dovecot()
        .deliver_to(&user, "INBOX", raw.as_bytes())
        .unwrap();
    let report = graph_only.poll().await;
    let over_imap = status(&report, "imap-off-over-imap");
    assert_ne!(
        over_imap.outcome,
        mailbridge::state_table::MailboxOutcome::Ok,
        "no IMAP token: {over_imap:?}"
    );
    assert!(graph_only.tickets().is_empty());
    // The same account through Graph.
    graph_only
        .mailbox("imap-off", &user, &account, json!({}))
        .await;
    mailbridge::state_table::delete_mailbox_config(
        &dynamodb(),
        &graph_only.table,
        "imap-off-over-imap",
    )
    .await
    .unwrap();
    let report = graph_only.poll().await;
    assert_eq!(status(&report, "imap-off").tickets_created, 1, "{report:?}");
    let graph_ticket = graph_only.tickets().remove(0).body;

    // The same mail read over IMAP by an IMAP mailbox.
    let imap = Poller::new(&[IMAP]).await;
    let imap_user = unique_user("imapon");
    let imap_account = imap.account(&imap_user).await;
    imap.mailbox(
        "imap-on",
        &imap_user,
        &imap_account,
        json!({"protocol": null, "host": "localhost", "port": dovecot().imaps_port}),
    )
    .await;
    dovecot()
        .deliver_to(&imap_user, "INBOX", raw.as_bytes())
        .unwrap();
    let report = imap.poll().await;
    assert_eq!(status(&report, "imap-on").tickets_created, 1, "{report:?}");
    let imap_ticket = imap.tickets().remove(0).body;
    assert_eq!(
        graph_ticket["draft"], imap_ticket["draft"],
        "the same draft"
    );
    assert_eq!(graph_ticket["attachments"], imap_ticket["attachments"]);
    assert_eq!(
        graph_ticket["received_at"].is_string(),
        imap_ticket["received_at"].is_string()
    );
}
