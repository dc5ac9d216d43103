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

    // An expired delta token: 410 Gone, SyncStateNotFound, Location = the initial query.
    stack().graph().expire_delta_tokens(&user);
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
    stack().graph().remove_before_fetch(&user, 1);
    assert_eq!(writer.get(&format!("messages/{id}/$value")).await.0, 404);
    assert_eq!(
        dovecot().mailbox_status(&user, "INBOX").unwrap().messages,
        0
    );
}
