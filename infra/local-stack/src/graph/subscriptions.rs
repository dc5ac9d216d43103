//! Change-notification subscriptions of the Graph stand-in (`/v1.0/subscriptions`), and the
//! notifications themselves: when mail arrives in a subscribed folder of the mail store
//! (Dovecot), the stand-in POSTs a change notification to the subscription's `notificationUrl`,
//! as Graph does for `changeType: created` on Outlook messages.
//!
//! | request | answers |
//! |---|---|
//! | `POST /v1.0/subscriptions` | 201 with the subscription, after the validation request succeeded |
//! | `GET /v1.0/subscriptions` | the token user's subscriptions (`value`) |
//! | `GET /v1.0/subscriptions/{id}` | 200 with it |
//! | `PATCH /v1.0/subscriptions/{id}` `{"expirationDateTime"}` | 200 with it (renewal, also reauthorizes) |
//! | `DELETE /v1.0/subscriptions/{id}` | 204 |
//!
//! Strict like Graph ("Create subscription", "Receive change notifications through webhooks",
//! the subscription resource): a live Graph token with `Mail.Read`/`Mail.ReadWrite` (`.Shared`
//! and Full Access for another user's mailbox); resource `me|users/{id}` +
//! `/mailFolders('{folder}')/messages` (or `/messages`, which the stand-in watches in the Inbox
//! only); `changeType` a comma list of `created`, `updated`, `deleted`; `notificationUrl` and
//! `lifecycleNotificationUrl` https, or http on a loopback host only after
//! [`GraphStandIn::allow_local_notification_urls`] (what `MAILBRIDGE_ALLOW_LOCAL_TARGETS` is to the
//! functions); before a subscription is created each URL gets the validation request (`POST
//! ?validationToken=…`, `text/plain`) and must answer 200, `text/plain`, the decoded token, within
//! 10 s, else 400; `expirationDateTime` required, in the future and at most 10,080 minutes ahead
//! (else 400), less than 45 minutes ahead is set to 45 minutes; `clientState` at most 128
//! characters; unknown properties 400; an unknown id 404 `ResourceNotFound`.
//!
//! Notifications are POSTed as Graph sends them (a `value` collection with `subscriptionId`,
//! `subscriptionExpirationDateTime`, `changeType`, `resource`, `resourceData`, `clientState`,
//! `tenantId`), retried twice after a non-2xx answer; an expired subscription is dropped
//! silently. Tests can drop the next notifications of a mailbox
//! ([`GraphStandIn::drop_notifications`]), refuse its renewals
//! ([`GraphStandIn::fail_subscription_updates`]) and send lifecycle notifications
//! ([`GraphStandIn::send_lifecycle`]).

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};

use super::mailbox::{Need, admit, folder_from_segment, message_id};
use super::{GraphStandIn, StandInState, graph_error};

/// The longest subscription to Outlook messages (minutes).
pub const MAX_EXPIRATION_MINUTES: i64 = 10_080;
/// The shortest: a nearer expiry is moved to this many minutes ahead.
pub const MIN_EXPIRATION_MINUTES: i64 = 45;
/// How long the endpoint has to answer the validation request.
pub const VALIDATION_TIMEOUT: Duration = Duration::from_secs(10);
/// The tenant id notifications carry.
pub const TENANT_ID: &str = "84bd8158-6d4d-4958-8b9f-9d6445542f95";
/// How often the stand-in looks for new mail in subscribed folders.
pub const WATCH_INTERVAL: Duration = Duration::from_millis(200);

#[derive(Clone, Debug)]
struct Subscription {
    id: String,
    mailbox: String,
    folder: String,
    resource: String,
    change_type: String,
    notification_url: String,
    lifecycle_url: Option<String>,
    client_state: Option<String>,
    expires: DateTime<Utc>,
    uid_validity: u32,
    known: BTreeSet<u32>,
}

/// A subscription as a test sees it.
#[derive(Clone, Debug)]
pub struct SubscriptionView {
    /// Its id.
    pub id: String,
    /// The mailbox (lower case).
    pub mailbox: String,
    /// As created.
    pub resource: String,
    /// Where notifications go.
    pub notification_url: String,
    /// When it expires.
    pub expires: DateTime<Utc>,
    /// The secret the notifications carry.
    pub client_state: Option<String>,
}

/// One notification the stand-in sent (or dropped on purpose).
#[derive(Clone, Debug)]
pub struct SentNotification {
    /// The subscription.
    pub subscription_id: String,
    /// The mailbox (lower case).
    pub mailbox: String,
    /// `created`, or the lifecycle event.
    pub kind: String,
    /// The endpoint's last answer (None: not sent or no answer).
    pub status: Option<u16>,
    /// Dropped by [`GraphStandIn::drop_notifications`].
    pub dropped: bool,
    /// When it was sent.
    pub at: std::time::Instant,
}

#[derive(Default)]
pub(super) struct SubscriptionState {
    subscriptions: Mutex<HashMap<String, Subscription>>,
    allow_local: AtomicBool,
    watching: AtomicBool,
    fail_updates: Mutex<HashMap<String, u32>>,
    drop_next: Mutex<HashMap<String, u32>>,
    sent: Mutex<Vec<SentNotification>>,
}

impl GraphStandIn {
    /// Accept `http://` notification URLs on loopback hosts (the local stack's Function URL).
    /// Graph itself takes https only.
    pub fn allow_local_notification_urls(&self) {
        self.state
            .subscriptions
            .allow_local
            .store(true, Ordering::SeqCst);
    }

    /// The live subscriptions on `mailbox`.
    pub fn subscriptions(&self, mailbox: &str) -> Vec<SubscriptionView> {
        let mailbox = mailbox.to_ascii_lowercase();
        let mut views: Vec<_> = self
            .state
            .subscriptions
            .subscriptions
            .lock()
            .expect("lock")
            .values()
            .filter(|s| s.mailbox == mailbox)
            .map(view)
            .collect();
        views.sort_by_key(|v| v.expires);
        views
    }

    /// The notifications sent (or dropped) for `mailbox`, oldest first.
    pub fn sent_notifications(&self, mailbox: &str) -> Vec<SentNotification> {
        let mailbox = mailbox.to_ascii_lowercase();
        self.state
            .subscriptions
            .sent
            .lock()
            .expect("lock")
            .iter()
            .filter(|n| n.mailbox == mailbox)
            .cloned()
            .collect()
    }

    /// The next `count` renewals (PATCH) of `mailbox`'s subscriptions are refused with 403
    /// `ExtensionError`, as when the app lost its permission.
    pub fn fail_subscription_updates(&self, mailbox: &str, count: u32) {
        self.state
            .subscriptions
            .fail_updates
            .lock()
            .expect("lock")
            .insert(mailbox.to_ascii_lowercase(), count);
    }

    /// The next `count` change notifications of `mailbox` are lost (never sent), as when
    /// Graph throttles an endpoint.
    pub fn drop_notifications(&self, mailbox: &str, count: u32) {
        self.state
            .subscriptions
            .drop_next
            .lock()
            .expect("lock")
            .insert(mailbox.to_ascii_lowercase(), count);
    }

    /// Send a lifecycle notification (`reauthorizationRequired`, `subscriptionRemoved`,
    /// `missed`) for subscription `id`; the endpoint's answer. `subscriptionRemoved` also
    /// removes the subscription, as Graph does.
    pub async fn send_lifecycle(&self, id: &str, event: &str) -> anyhow::Result<u16> {
        let sub = {
            let mut subs = self.state.subscriptions.subscriptions.lock().expect("lock");
            let sub = subs
                .get(id)
                .cloned()
                .ok_or_else(|| anyhow::anyhow!("no subscription {id}"))?;
            if event == "subscriptionRemoved" {
                subs.remove(id);
            }
            sub
        };
        let body = serde_json::json!({"value": [{
            "subscriptionId": sub.id,
            "subscriptionExpirationDateTime": sub.expires.to_rfc3339(),
            "tenantId": TENANT_ID,
            "clientState": sub.client_state,
            "lifecycleEvent": event,
        }]});
        let url = sub
            .lifecycle_url
            .clone()
            .unwrap_or(sub.notification_url.clone());
        let status = post_notification(&url, &body).await;
        self.state
            .subscriptions
            .sent
            .lock()
            .expect("lock")
            .push(SentNotification {
                subscription_id: sub.id,
                mailbox: sub.mailbox,
                kind: event.to_owned(),
                status,
                dropped: false,
                at: std::time::Instant::now(),
            });
        status.ok_or_else(|| anyhow::anyhow!("the lifecycle notification got no answer"))
    }
}

fn view(s: &Subscription) -> SubscriptionView {
    SubscriptionView {
        id: s.id.clone(),
        mailbox: s.mailbox.clone(),
        resource: s.resource.clone(),
        notification_url: s.notification_url.clone(),
        expires: s.expires,
        client_state: s.client_state.clone(),
    }
}

fn json(s: &Subscription) -> serde_json::Value {
    serde_json::json!({
        "@odata.context": "https://graph.microsoft.com/v1.0/$metadata#subscriptions/$entity",
        "id": s.id,
        "resource": s.resource,
        "applicationId": "24d3b144-21ae-4080-943f-7067b395b913",
        "changeType": s.change_type,
        "clientState": s.client_state,
        "notificationUrl": s.notification_url,
        "lifecycleNotificationUrl": s.lifecycle_url,
        "expirationDateTime": s.expires.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "creatorId": "8ee44408-0679-472c-bc2a-692812af3437",
        "latestSupportedTlsVersion": "v1_2",
        "notificationContentType": "application/json",
        "includeResourceData": false,
    })
}

pub(super) fn routes() -> Router<Arc<StandInState>> {
    use axum::routing::get;
    Router::new()
        .route("/v1.0/subscriptions", get(list).post(create))
        .route(
            "/v1.0/subscriptions/{id}",
            get(get_one).patch(update).delete(delete),
        )
}

type S = State<Arc<StandInState>>;

fn bad(rid: &str, code: &str, message: &str) -> Response {
    graph_error(StatusCode::BAD_REQUEST, code, message, rid)
}

fn not_found(rid: &str) -> Response {
    graph_error(
        StatusCode::NOT_FOUND,
        "ResourceNotFound",
        "The object was not found.",
        rid,
    )
}

/// The user path (`None`: `me`) and folder segment of a messages resource.
fn parse_resource(resource: &str) -> Option<(Option<String>, String)> {
    let path = resource.trim().trim_start_matches('/');
    let lower = path.to_ascii_lowercase();
    let (user, rest) = if let Some(rest) = lower.strip_prefix("me/") {
        (None, &path[path.len() - rest.len()..])
    } else {
        let after = path
            .get("users/".len()..)
            .filter(|_| lower.starts_with("users/"))?;
        let (user, rest) = after.split_once('/')?;
        (Some(user.to_owned()).filter(|u| !u.is_empty()), rest)
    };
    if user.is_none() && !lower.starts_with("me/") {
        return None;
    }
    if rest.eq_ignore_ascii_case("messages") {
        return Some((user, "inbox".to_owned()));
    }
    let folder = rest
        .strip_suffix("/messages")
        .or_else(|| rest.strip_suffix("/Messages"))?;
    let inner = folder
        .get(..13)
        .filter(|p| p.eq_ignore_ascii_case("mailFolders('"))
        .and(folder.get(13..))?
        .strip_suffix("')")?;
    (!inner.is_empty() && !inner.contains(['\'', '/'])).then(|| (user, inner.to_owned()))
}

/// Whether Graph (as configured) may call `url`.
fn url_allowed(state: &StandInState, url: &str) -> Result<(), &'static str> {
    let parsed = url::Url::parse(url).map_err(|_| "is not a URL")?;
    let loopback = matches!(parsed.host(), Some(url::Host::Ipv4(ip)) if ip.is_loopback())
        || matches!(parsed.host(), Some(url::Host::Ipv6(ip)) if ip.is_loopback())
        || parsed.host_str() == Some("localhost");
    match parsed.scheme() {
        "https" => Ok(()),
        "http" if loopback && state.subscriptions.allow_local.load(Ordering::SeqCst) => Ok(()),
        _ => Err("must use the HTTPS protocol"),
    }
}

#[allow(clippy::result_large_err)] // the error is the answer itself, as in the other routes
fn expiry(rid: &str, value: Option<&serde_json::Value>) -> Result<DateTime<Utc>, Response> {
    let Some(text) = value.and_then(|v| v.as_str()) else {
        return Err(bad(
            rid,
            "InvalidRequest",
            "expirationDateTime is a required property.",
        ));
    };
    let at = DateTime::parse_from_rfc3339(text)
        .map_err(|_| {
            bad(
                rid,
                "InvalidRequest",
                "expirationDateTime is not a valid date.",
            )
        })?
        .with_timezone(&Utc);
    let now = Utc::now();
    if at <= now {
        return Err(bad(
            rid,
            "InvalidRequest",
            "Subscription expiration must be in the future.",
        ));
    }
    if at > now + chrono::Duration::minutes(MAX_EXPIRATION_MINUTES) {
        return Err(bad(
            rid,
            "InvalidRequest",
            &format!(
                "Subscription expiration can only be {MAX_EXPIRATION_MINUTES} minutes in the future."
            ),
        ));
    }
    Ok(at.max(now + chrono::Duration::minutes(MIN_EXPIRATION_MINUTES)))
}

/// The validation request: POST `url?validationToken=…`; the endpoint must echo the token.
async fn validate(url: &str) -> Result<(), String> {
    let token = format!(
        "Validation: Testing client application reachability for subscription Request-Id: {}",
        uuid::Uuid::new_v4()
    );
    let mut target = url::Url::parse(url).map_err(|e| e.to_string())?;
    target
        .query_pairs_mut()
        .append_pair("validationToken", &token);
    let response = reqwest::Client::new()
        .post(target)
        .header("content-type", "text/plain; charset=utf-8")
        .timeout(VALIDATION_TIMEOUT)
        .send()
        .await
        .map_err(|e| format!("no answer: {e}"))?;
    let status = response.status().as_u16();
    let text_plain = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.to_ascii_lowercase().starts_with("text/plain"));
    let body = response.text().await.unwrap_or_default();
    if status != 200 || !text_plain || body != token {
        return Err(format!(
            "answered {status} (text/plain: {text_plain}) with a body that is not the token"
        ));
    }
    Ok(())
}

const KNOWN: &[&str] = &[
    "@odata.type",
    "changeType",
    "notificationUrl",
    "lifecycleNotificationUrl",
    "resource",
    "expirationDateTime",
    "clientState",
    "latestSupportedTlsVersion",
    "includeResourceData",
    "encryptionCertificate",
    "encryptionCertificateId",
    "notificationUrlAppId",
    "notificationQueryOptions",
];

async fn create(State(state): S, headers: HeaderMap, body: Bytes) -> Response {
    let rid = uuid::Uuid::new_v4().to_string();
    let Ok(serde_json::Value::Object(request)) = serde_json::from_slice(&body) else {
        return bad(&rid, "BadRequest", "The request body is not a JSON object.");
    };
    if let Some(unknown) = request.keys().find(|k| !KNOWN.contains(&k.as_str())) {
        return bad(
            &rid,
            "RequestBodyRead",
            &format!(
                "The property '{unknown}' does not exist on type 'microsoft.graph.subscription'."
            ),
        );
    }
    let text = |name: &str| {
        request
            .get(name)
            .and_then(|v| v.as_str())
            .map(str::to_owned)
    };
    let Some(resource) = text("resource") else {
        return bad(&rid, "InvalidRequest", "resource is a required property.");
    };
    let Some((user, folder_segment)) = parse_resource(&resource) else {
        return bad(
            &rid,
            "InvalidRequest",
            &format!("Resource '{resource}' is not supported for change notifications."),
        );
    };
    let admitted = match admit(&state, user.as_deref(), &headers, Need::Read).await {
        Ok(a) => a,
        Err(r) => return r,
    };
    let change_type = text("changeType").unwrap_or_default();
    if change_type.is_empty()
        || !change_type
            .split(',')
            .all(|c| ["created", "updated", "deleted"].contains(&c.trim()))
    {
        return bad(
            &rid,
            "InvalidRequest",
            "changeType must be a comma-separated list of created, updated, deleted.",
        );
    }
    if request.get("includeResourceData") == Some(&serde_json::Value::Bool(true))
        && text("encryptionCertificate").is_none()
    {
        return bad(
            &rid,
            "InvalidRequest",
            "encryptionCertificate is required when includeResourceData is true.",
        );
    }
    let client_state = text("clientState");
    if client_state
        .as_deref()
        .is_some_and(|c| c.chars().count() > 128)
    {
        return bad(
            &rid,
            "InvalidRequest",
            "clientState must be at most 128 characters.",
        );
    }
    let Some(notification_url) = text("notificationUrl") else {
        return bad(
            &rid,
            "InvalidRequest",
            "notificationUrl is a required property.",
        );
    };
    let lifecycle_url = text("lifecycleNotificationUrl");
    for url in std::iter::once(&notification_url).chain(lifecycle_url.as_ref()) {
        if let Err(problem) = url_allowed(&state, url) {
            return bad(
                &rid,
                "InvalidRequest",
                &format!("The notification URL {problem}."),
            );
        }
    }
    let expires = match expiry(&rid, request.get("expirationDateTime")) {
        Ok(at) => at,
        Err(r) => return r,
    };
    let Ok(Some(folder)) = folder_from_segment(&folder_segment) else {
        return graph_error(
            StatusCode::NOT_FOUND,
            "ErrorItemNotFound",
            "The specified object was not found in the store.",
            &rid,
        );
    };
    let mailbox = admitted.mailbox.clone();
    let listed = admitted
        .store
        .summaries(&mailbox, &folder)
        .await
        .map(|listed| {
            listed.map(|(validity, messages)| {
                let uids: BTreeSet<u32> = messages.iter().map(|s| s.uid).collect();
                (validity, uids)
            })
        });
    let (uid_validity, known) = match listed {
        Ok(Some(found)) => found,
        Ok(None) => {
            return graph_error(
                StatusCode::NOT_FOUND,
                "ErrorItemNotFound",
                "The specified object was not found in the store.",
                &rid,
            );
        }
        Err(e) => {
            return graph_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "ErrorInternalServerError",
                &format!("graph stand-in: the mail store failed: {e:#}"),
                &rid,
            );
        }
    };
    let mut urls = vec![notification_url.clone()];
    if let Some(l) = &lifecycle_url
        && l != &notification_url
    {
        urls.push(l.clone());
    }
    for url in urls {
        if let Err(problem) = validate(&url).await {
            tracing::info!(
                url,
                problem,
                "graph stand-in: subscription validation failed"
            );
            return bad(
                &rid,
                "InvalidRequest",
                "Subscription validation request failed. Notification endpoint must respond with 200 OK to validation request.",
            );
        }
    }
    let sub = Subscription {
        id: uuid::Uuid::new_v4().to_string(),
        mailbox,
        folder,
        resource,
        change_type,
        notification_url,
        lifecycle_url,
        client_state,
        expires,
        uid_validity,
        known,
    };
    let answer = json(&sub);
    state
        .subscriptions
        .subscriptions
        .lock()
        .expect("lock")
        .insert(sub.id.clone(), sub);
    if !state.subscriptions.watching.swap(true, Ordering::SeqCst) {
        tokio::spawn(watch(state.clone()));
    }
    let mut response = (StatusCode::CREATED, axum::Json(answer)).into_response();
    response
        .headers_mut()
        .insert("request-id", rid.parse().expect("uuid"));
    response
}

fn find(state: &StandInState, id: &str) -> Option<Subscription> {
    state
        .subscriptions
        .subscriptions
        .lock()
        .expect("lock")
        .get(id)
        .cloned()
}

async fn list(State(state): S, headers: HeaderMap) -> Response {
    let admitted = match admit(&state, None, &headers, Need::Read).await {
        Ok(a) => a,
        Err(r) => return r,
    };
    let value: Vec<_> = state
        .subscriptions
        .subscriptions
        .lock()
        .expect("lock")
        .values()
        .filter(|s| s.mailbox == admitted.mailbox)
        .map(json)
        .collect();
    axum::Json(serde_json::json!({ "value": value })).into_response()
}

async fn get_one(State(state): S, Path(id): Path<String>, headers: HeaderMap) -> Response {
    let Some(sub) = find(&state, &id) else {
        return not_found(&uuid::Uuid::new_v4().to_string());
    };
    if let Err(r) = admit(&state, Some(&sub.mailbox), &headers, Need::Read).await {
        return r;
    }
    axum::Json(json(&sub)).into_response()
}

async fn update(
    State(state): S,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(sub) = find(&state, &id) else {
        return not_found(&uuid::Uuid::new_v4().to_string());
    };
    let admitted = match admit(&state, Some(&sub.mailbox), &headers, Need::Read).await {
        Ok(a) => a,
        Err(r) => return r,
    };
    let rid = admitted.rid.clone();
    let Ok(serde_json::Value::Object(request)) = serde_json::from_slice(&body) else {
        return bad(&rid, "BadRequest", "The request body is not a JSON object.");
    };
    if let Some(unknown) = request
        .keys()
        .find(|k| !["expirationDateTime", "notificationUrl"].contains(&k.as_str()))
    {
        return bad(
            &rid,
            "RequestBodyRead",
            &format!("The property '{unknown}' cannot be updated."),
        );
    }
    {
        let mut fail = state.subscriptions.fail_updates.lock().expect("lock");
        if let Some(n) = fail.get_mut(&sub.mailbox)
            && *n > 0
        {
            *n -= 1;
            return graph_error(
                StatusCode::FORBIDDEN,
                "ExtensionError",
                "Operation: Update; Exception: [Status Code: Forbidden; Reason: Access is denied.]",
                &rid,
            );
        }
    }
    let expires = match expiry(&rid, request.get("expirationDateTime")) {
        Ok(at) => at,
        Err(r) => return r,
    };
    let mut subs = state.subscriptions.subscriptions.lock().expect("lock");
    let Some(live) = subs.get_mut(&id) else {
        return not_found(&rid);
    };
    live.expires = expires;
    axum::Json(json(live)).into_response()
}

async fn delete(State(state): S, Path(id): Path<String>, headers: HeaderMap) -> Response {
    let Some(sub) = find(&state, &id) else {
        return not_found(&uuid::Uuid::new_v4().to_string());
    };
    if let Err(r) = admit(&state, Some(&sub.mailbox), &headers, Need::Read).await {
        return r;
    }
    state
        .subscriptions
        .subscriptions
        .lock()
        .expect("lock")
        .remove(&id);
    StatusCode::NO_CONTENT.into_response()
}

async fn post_notification(url: &str, body: &serde_json::Value) -> Option<u16> {
    let client = reqwest::Client::new();
    let mut status = None;
    for attempt in 0..3 {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        match client
            .post(url)
            .json(body)
            .timeout(Duration::from_secs(3))
            .send()
            .await
        {
            Ok(r) => {
                status = Some(r.status().as_u16());
                if r.status().is_success() {
                    break;
                }
            }
            Err(_) => status = None,
        }
    }
    status
}

/// Look for new mail in every subscribed folder, notify, forget expired subscriptions.
async fn watch(state: Arc<StandInState>) {
    loop {
        tokio::time::sleep(WATCH_INTERVAL).await;
        let Some(store) = state.mail_store.clone() else {
            continue;
        };
        let now = Utc::now();
        let subs: Vec<Subscription> = {
            let mut subs = state.subscriptions.subscriptions.lock().expect("lock");
            subs.retain(|_, s| s.expires > now);
            subs.values()
                .filter(|s| s.change_type.contains("created"))
                .cloned()
                .collect()
        };
        for sub in subs {
            let Ok(Some((validity, messages))) = store.summaries(&sub.mailbox, &sub.folder).await
            else {
                continue;
            };
            let uids: Vec<u32> = messages.iter().map(|s| s.uid).collect();
            let new: Vec<u32> = {
                let mut all = state.subscriptions.subscriptions.lock().expect("lock");
                let Some(live) = all.get_mut(&sub.id) else {
                    continue;
                };
                if live.uid_validity != validity {
                    live.uid_validity = validity;
                    live.known.clear();
                }
                let new: Vec<u32> = uids
                    .iter()
                    .copied()
                    .filter(|u| !live.known.contains(u))
                    .collect();
                live.known.extend(new.iter().copied());
                new
            };
            for uid in new {
                let dropped = {
                    let mut drop_next = state.subscriptions.drop_next.lock().expect("lock");
                    match drop_next.get_mut(&sub.mailbox) {
                        Some(n) if *n > 0 => {
                            *n -= 1;
                            true
                        }
                        _ => false,
                    }
                };
                let id = message_id(&sub.folder, validity, uid);
                let (sub_id, sub_mailbox) = (sub.id.clone(), sub.mailbox.clone());
                let record = move |status: Option<u16>, dropped: bool| SentNotification {
                    subscription_id: sub_id.clone(),
                    mailbox: sub_mailbox.clone(),
                    kind: "created".into(),
                    status,
                    dropped,
                    at: std::time::Instant::now(),
                };
                if dropped {
                    state
                        .subscriptions
                        .sent
                        .lock()
                        .expect("lock")
                        .push(record(None, true));
                    continue;
                }
                let body = serde_json::json!({"value": [{
                    "id": uuid::Uuid::new_v4().simple().to_string(),
                    "subscriptionId": sub.id,
                    "subscriptionExpirationDateTime": sub.expires.to_rfc3339(),
                    "clientState": sub.client_state,
                    "changeType": "created",
                    "resource": format!("Users/{}/Messages/{id}", sub.mailbox),
                    "tenantId": TENANT_ID,
                    "resourceData": {
                        "@odata.type": "#Microsoft.Graph.Message",
                        "@odata.id": format!("Users/{}/Messages/{id}", sub.mailbox),
                        "@odata.etag": "W/\"CQAAABYAAAA\"",
                        "id": id,
                    },
                }]});
                let (state, url, record_status) =
                    (state.clone(), sub.notification_url.clone(), record);
                tokio::spawn(async move {
                    let status = post_notification(&url, &body).await;
                    state
                        .subscriptions
                        .sent
                        .lock()
                        .expect("lock")
                        .push(record_status(status, false));
                });
            }
        }
    }
}
