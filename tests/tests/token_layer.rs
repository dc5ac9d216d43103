//! Token layer against real servers: moto Secrets Manager and the identity stand-in.
//!
//! Each test owns a unique tenant, app, user and secret, so tests run in parallel on the shared
//! stack; failures are injected only for the test's own user or tenant.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use local_stack::aws_fault_proxy::AwsFaultProxy;
use local_stack::identity::{
    AppRegistration, FailureInjection, FailureKind, FailureScope, IdentityStandIn, RequestFilter,
    TenantSettings, UserAccount,
};
use mailbridge::error::{Classify, ErrorClass};
use mailbridge::retry::RetryPolicy;
use mailbridge::token::authorization_code::{AuthorizationRequest, RedirectError};
use mailbridge::token::identity::{DeviceCodeError, DeviceCodeEvent};
use mailbridge::token::login::{self, LoginError};
use mailbridge::token::oauth_error::TokenEndpointError;
use mailbridge::token::store::{SecretValue, client_request_token};
use mailbridge::token::{
    AccessTokenSource, AccountSecret, AccountState, Audience, Clock, IdentityClient, OffsetClock,
    SecretStore, SecretStoreError, SecretsManagerStore, SystemClock, TokenError, TokenService,
    TokenServiceConfig,
};
use mailbridge_tests::{
    SignInPage, browser_sign_in, get_secret, put_secret, stack, unique, unique_user,
};
use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;
use tokio::time::Instant;

const PASSWORD: &str = "correct horse battery staple";

/// One test's world: tenant, app, user and account secret.
struct World {
    idp: IdentityStandIn,
    tenant: String,
    client_id: String,
    upn: String,
    secret_name: String,
    store: Arc<SecretsManagerStore>,
    /// Token requests the test itself made to seed refresh tokens (ROPC), not counted.
    seed_requests: AtomicUsize,
}

fn identity_client() -> IdentityClient {
    IdentityClient::new(mailbridge::http::default_client().expect("http client")).with_retry_policy(
        RetryPolicy {
            initial_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_millis(400),
            ..mailbridge::token::identity::default_retry_policy()
        },
    )
}

fn config() -> TokenServiceConfig {
    TokenServiceConfig {
        secret_prefix: "mailbridge/".into(),
        default_timeout: Duration::from_secs(10),
        ..TokenServiceConfig::default()
    }
}

impl World {
    /// A tenant with the mailbridge app and one plain user; no secret yet.
    async fn new() -> World {
        let idp = stack().identity().clone();
        let tenant = format!("{}.onmicrosoft.com", unique("tenant"));
        let client_id = uuid::Uuid::new_v4().to_string();
        let upn = unique_user("helpdesk");
        idp.register_app(AppRegistration::mailbridge(&tenant, &client_id));
        idp.register_user(UserAccount::new(&tenant, &upn, PASSWORD));
        let store = Arc::new(SecretsManagerStore::from_conf(&stack().moto().sdk_config()));
        World {
            idp,
            tenant,
            client_id,
            upn,
            secret_name: format!("mailbridge/{}", unique("acct")),
            store,
            seed_requests: AtomicUsize::new(0),
        }
    }

    fn account(&self) -> AccountSecret {
        let mut a = AccountSecret::new(&self.tenant, &self.client_id, &self.upn);
        a.authority_host = self.idp.base_url.clone();
        a
    }

    async fn write_secret(&self, account: &AccountSecret) {
        put_secret(&self.secret_name, &account.to_json())
            .await
            .expect("write secret");
    }

    async fn read_secret(&self) -> AccountSecret {
        let json = get_secret(&self.secret_name).await.expect("read secret");
        AccountSecret::parse(&self.secret_name, &json).expect("parse secret")
    }

    /// A secret holding only a password (ROPC bootstrap).
    async fn with_password(&self) {
        let mut a = self.account();
        a.password = Some(PASSWORD.into());
        self.write_secret(&a).await;
    }

    /// A real refresh token from the stand-in (via ROPC), stored `age` ago, no password.
    async fn with_refresh_token(&self, age: chrono::Duration) -> String {
        let rt = self.fresh_refresh_token().await;
        let mut a = self.account();
        a.refresh_token = Some(rt.clone().into());
        a.refresh_token_stored_at = Some(chrono::Utc::now() - age);
        self.write_secret(&a).await;
        rt
    }

    async fn fresh_refresh_token(&self) -> String {
        self.seed_requests.fetch_add(1, Ordering::SeqCst);
        let tokens = identity_client()
            .password(&self.account(), Audience::Graph, &PASSWORD.into())
            .await
            .expect("seed refresh token via ROPC");
        tokens
            .refresh_token
            .expect("offline_access gives a refresh token")
            .expose_secret()
            .to_owned()
    }

    fn service(&self) -> TokenService {
        TokenService::new(self.store.clone(), identity_client(), config())
    }

    /// Token requests made by the code under test (seeding excluded).
    fn token_requests(&self) -> usize {
        self.idp.token_request_count(&self.upn) - self.seed_requests.load(Ordering::SeqCst)
    }

    fn token_requests_with_grant(&self, grant: &str) -> usize {
        self.idp
            .requests(&RequestFilter {
                endpoint: Some("token".into()),
                user: Some(self.upn.clone()),
                grant_type: Some(grant.into()),
                ..RequestFilter::default()
            })
            .len()
            - if grant == "password" {
                self.seed_requests.load(Ordering::SeqCst)
            } else {
                0
            }
    }

    fn inject(&self, failure: FailureKind, times: u32) {
        self.idp.inject_failure(FailureInjection::token(
            FailureScope::User(self.upn.clone()),
            failure,
            times,
        ));
    }
}

async fn introspect(idp: &IdentityStandIn, token: &str, user: Option<&str>) -> Value {
    let mut form = vec![("token", token), ("client_id", ""), ("client_secret", "")];
    if let Some(u) = user {
        form.push(("user", u));
    }
    reqwest::Client::new()
        .post(idp.introspection_url())
        .form(&form)
        .send()
        .await
        .expect("introspect")
        .json()
        .await
        .expect("introspection JSON")
}

#[tokio::test]
async fn ropc_bootstrap_mints_a_token_and_stores_the_refresh_token() {
    let w = World::new().await;
    w.with_password().await;
    let token = w
        .service()
        .access_token(&w.secret_name, Audience::Graph)
        .await
        .expect("token via ROPC");
    let issued = w
        .idp
        .lookup_access_token(token.secret.expose_secret())
        .expect("stand-in knows the token");
    assert_eq!(issued.audience, "https://graph.microsoft.com");
    assert!(issued.scopes.contains(&"Mail.Send".to_string()));
    assert_eq!(issued.upn, w.upn);
    assert_eq!(w.token_requests_with_grant("password"), 1);

    let stored = w.read_secret().await;
    assert!(
        stored.refresh_token.is_some(),
        "bootstrap stores the refresh token"
    );
    assert!(stored.refresh_token_stored_at.is_some());
    assert_eq!(stored.password.unwrap().expose_secret(), PASSWORD);
    assert_eq!(stored.status.state, AccountState::Ok);

    // The next audience uses the stored refresh token, not the password.
    w.service()
        .access_token(&w.secret_name, Audience::Imap)
        .await
        .expect("IMAP token");
    assert_eq!(w.token_requests_with_grant("password"), 1);
    assert_eq!(w.token_requests_with_grant("refresh_token"), 1);
}

#[tokio::test]
async fn graph_and_imap_tokens_are_each_for_one_audience() {
    let w = World::new().await;
    w.with_refresh_token(chrono::Duration::hours(1)).await;
    let service = w.service();
    let graph = service
        .access_token(&w.secret_name, Audience::Graph)
        .await
        .unwrap();
    let imap = service
        .access_token(&w.secret_name, Audience::Imap)
        .await
        .unwrap();
    assert_eq!(graph.audience, Audience::Graph);
    assert_eq!(imap.audience, Audience::Imap);
    let g = w
        .idp
        .lookup_access_token(graph.secret.expose_secret())
        .unwrap();
    let i = w
        .idp
        .lookup_access_token(imap.secret.expose_secret())
        .unwrap();
    assert_eq!(g.audience, "https://graph.microsoft.com");
    assert_eq!(
        g.scopes,
        vec!["Mail.Send".to_string(), "Mail.Send.Shared".to_string()],
        "all consented Graph permissions, nothing of Outlook"
    );
    assert_eq!(i.audience, "https://outlook.office.com");
    assert_eq!(i.scopes, vec!["IMAP.AccessAsUser.All".to_string()]);

    // Dovecot's view: only the IMAP token is active.
    let ok = introspect(&w.idp, imap.secret.expose_secret(), None).await;
    assert_eq!(ok["active"], true);
    assert_eq!(ok["email"], w.upn.as_str());
    let rejected = introspect(&w.idp, graph.secret.expose_secret(), None).await;
    assert_eq!(rejected, serde_json::json!({"active": false}));
    let unknown = introspect(&w.idp, "not-a-token", None).await;
    assert_eq!(unknown, serde_json::json!({"active": false}));

    // Shared mailbox: only with a grant.
    let shared_box = unique_user("support");
    let denied = introspect(&w.idp, imap.secret.expose_secret(), Some(&shared_box)).await;
    assert_eq!(denied["active"], false);
    w.idp.grant_mailbox_access(&w.upn, &shared_box);
    let allowed = introspect(&w.idp, imap.secret.expose_secret(), Some(&shared_box)).await;
    assert_eq!(allowed["active"], true);
    assert_eq!(allowed["email"], shared_box.as_str());
}

#[tokio::test]
async fn refresh_rotates_and_writes_back_when_the_stored_token_is_older_than_the_interval() {
    let w = World::new().await;
    let seeded = w.with_refresh_token(chrono::Duration::hours(25)).await;
    let before = w.read_secret().await;
    let service = w.service();
    service
        .access_token(&w.secret_name, Audience::Graph)
        .await
        .expect("refresh");
    let after = w.read_secret().await;
    let rotated = after.refresh_token.clone().unwrap();
    assert_ne!(
        rotated.expose_secret(),
        seeded,
        "rotated token written back"
    );
    assert!(after.refresh_token_stored_at > before.refresh_token_stored_at);
    assert_eq!(w.token_requests_with_grant("refresh_token"), 1);

    // The old refresh token still works (Microsoft does not revoke on rotation).
    let old_still_valid = identity_client()
        .refresh(&w.account(), Audience::Imap, &seeded.clone().into())
        .await;
    assert!(old_still_valid.is_ok(), "{old_still_valid:?}");

    // Cold start of another instance: the stored token is fresh now, so no second write.
    let json_before = get_secret(&w.secret_name).await.unwrap();
    w.service()
        .access_token(&w.secret_name, Audience::Imap)
        .await
        .expect("IMAP token with the written-back refresh token");
    assert_eq!(get_secret(&w.secret_name).await.unwrap(), json_before);
}

#[tokio::test]
async fn no_write_back_when_the_stored_token_is_fresh() {
    let w = World::new().await;
    w.with_refresh_token(chrono::Duration::hours(2)).await;
    let json_before = get_secret(&w.secret_name).await.unwrap();
    let service = w.service();
    for audience in [Audience::Graph, Audience::Imap] {
        service
            .access_token(&w.secret_name, audience)
            .await
            .unwrap();
    }
    // invalidate → a real second refresh for Graph (uses the rotated in-memory token).
    service.invalidate(&w.secret_name, Audience::Graph);
    service
        .access_token(&w.secret_name, Audience::Graph)
        .await
        .unwrap();
    assert_eq!(w.token_requests_with_grant("refresh_token"), 3);
    assert_eq!(
        get_secret(&w.secret_name).await.unwrap(),
        json_before,
        "three refreshes, stored token 2 h old: no write"
    );
    let versions = stack().moto().sdk_config();
    let sm = aws_sdk_secretsmanager::Client::new(&versions);
    let listed = sm
        .list_secret_version_ids()
        .secret_id(&w.secret_name)
        .send()
        .await
        .unwrap();
    assert_eq!(
        listed.versions().len(),
        1,
        "only the version the test wrote"
    );
}

#[tokio::test]
async fn concurrent_callers_share_one_token_request() {
    let w = World::new().await;
    w.with_refresh_token(chrono::Duration::hours(1)).await;
    // Make the one request slow, so every caller arrives while it is in flight.
    w.inject(FailureKind::Latency { millis: 500 }, 1);
    let service = w.service();
    let calls = (0..16).map(|_| {
        let service = service.clone();
        let name = w.secret_name.clone();
        tokio::spawn(async move { service.access_token(&name, Audience::Graph).await })
    });
    let results = futures::future::join_all(calls).await;
    let tokens: Vec<String> = results
        .into_iter()
        .map(|r| r.unwrap().unwrap().secret.expose_secret().to_owned())
        .collect();
    assert!(
        tokens.windows(2).all(|p| p[0] == p[1]),
        "all callers got the same token"
    );
    assert_eq!(
        w.token_requests(),
        1,
        "exactly one token request for 16 callers"
    );
}

struct NeedsPersonCase {
    name: &'static str,
    code: &'static str,
    setup: fn(&World),
    /// Use ROPC (password) instead of a stored refresh token.
    ropc: bool,
    audience: Audience,
}

fn set_user(w: &World, edit: fn(&mut UserAccount)) {
    w.idp.update_user(&w.upn, edit).unwrap();
}

#[tokio::test]
async fn each_needs_person_error_sets_the_status_once_and_stops_token_requests() {
    let cases = vec![
        NeedsPersonCase {
            name: "mfa required (ROPC)",
            code: "AADSTS50076",
            ropc: true,
            audience: Audience::Graph,
            setup: |w| set_user(w, |u| u.mfa_required = true),
        },
        NeedsPersonCase {
            name: "mfa required (refresh from a password sign-in)",
            code: "AADSTS50076",
            ropc: false,
            audience: Audience::Graph,
            setup: |w| set_user(w, |u| u.mfa_required = true),
        },
        NeedsPersonCase {
            name: "wrong password",
            code: "AADSTS50126",
            ropc: true,
            audience: Audience::Graph,
            setup: |w| set_user(w, |u| u.password = "changed".into()),
        },
        NeedsPersonCase {
            name: "password expired",
            code: "AADSTS50055",
            ropc: true,
            audience: Audience::Graph,
            setup: |w| set_user(w, |u| u.password_expired = true),
        },
        NeedsPersonCase {
            name: "locked",
            code: "AADSTS50053",
            ropc: false,
            audience: Audience::Graph,
            setup: |w| set_user(w, |u| u.locked = true),
        },
        NeedsPersonCase {
            name: "disabled",
            code: "AADSTS50057",
            ropc: false,
            audience: Audience::Imap,
            setup: |w| set_user(w, |u| u.disabled = true),
        },
        NeedsPersonCase {
            name: "conditional access",
            code: "AADSTS53003",
            ropc: false,
            audience: Audience::Graph,
            setup: |w| set_user(w, |u| u.ca_blocked = true),
        },
        NeedsPersonCase {
            name: "refresh token revoked",
            code: "AADSTS50173",
            ropc: false,
            audience: Audience::Graph,
            setup: |w| w.idp.revoke_refresh_tokens(&w.upn).unwrap(),
        },
        NeedsPersonCase {
            name: "refresh token inactive 90 days",
            code: "AADSTS700082",
            ropc: false,
            audience: Audience::Graph,
            setup: |w| w.idp.expire_refresh_tokens(&w.upn).unwrap(),
        },
        NeedsPersonCase {
            name: "consent missing for IMAP",
            code: "AADSTS65001",
            ropc: false,
            audience: Audience::Imap,
            setup: |w| {
                let mut app = AppRegistration::mailbridge(&w.tenant, &w.client_id);
                app.consented_scopes.retain(|s| !s.contains("IMAP"));
                w.idp.register_app(app);
            },
        },
        NeedsPersonCase {
            name: "public client flows off",
            code: "AADSTS7000218",
            ropc: false,
            audience: Audience::Graph,
            setup: |w| {
                let mut app = AppRegistration::mailbridge(&w.tenant, &w.client_id);
                app.public_client_flows = false;
                w.idp.register_app(app);
            },
        },
    ];
    let runs = cases.into_iter().map(|case| async move {
        let w = World::new().await;
        if case.ropc {
            w.with_password().await;
        } else {
            w.with_refresh_token(chrono::Duration::hours(1)).await;
        }
        (case.setup)(&w);
        let service = w.service();
        let err = service
            .access_token(&w.secret_name, case.audience)
            .await
            .expect_err(case.name);
        assert_eq!(err.class(), ErrorClass::NeedsReauth, "{}: {err}", case.name);
        assert!(err.to_string().contains(case.code), "{}: {err}", case.name);
        let requests = w.token_requests();
        assert_eq!(requests, 1, "{}: one token request, no retries", case.name);

        let stored = w.read_secret().await;
        assert_eq!(
            stored.status.state,
            AccountState::NeedsReauth,
            "{}",
            case.name
        );
        assert_eq!(
            stored.status.code.as_deref(),
            Some(case.code),
            "{}",
            case.name
        );
        assert!(
            stored
                .status
                .reason
                .as_deref()
                .is_some_and(|r| !r.is_empty())
        );
        let since = stored.status.since;

        // Same instance (negative cache) and a cold-started one (status check): no request.
        // (Whether the other audience is held too: a_missing_imap_consent_never_holds_graph_tokens.)
        let again = service.access_token(&w.secret_name, case.audience).await;
        assert!(
            matches!(again, Err(TokenError::NeedsReauth { .. })),
            "{}",
            case.name
        );
        let cold = w
            .service()
            .access_token(&w.secret_name, case.audience)
            .await;
        match cold {
            Err(TokenError::NeedsReauth { reason, .. }) => {
                assert!(reason.contains(case.code), "{}: {reason}", case.name)
            }
            other => panic!("{}: expected NeedsReauth, got {other:?}", case.name),
        }
        assert_eq!(
            w.token_requests(),
            requests,
            "{}: stopped hammering",
            case.name
        );
        assert_eq!(
            w.read_secret().await.status.since,
            since,
            "{}: status set once",
            case.name
        );
    });
    futures::future::join_all(runs).await;
}

#[tokio::test]
async fn a_dead_refresh_token_is_re_bootstrapped_with_the_stored_password() {
    let w = World::new().await;
    let seeded = w.with_refresh_token(chrono::Duration::hours(1)).await;
    let mut a = w.read_secret().await;
    a.password = Some(PASSWORD.into());
    w.write_secret(&a).await;
    w.idp.revoke_refresh_tokens(&w.upn).unwrap();
    w.service()
        .access_token(&w.secret_name, Audience::Graph)
        .await
        .expect("ROPC fallback");
    assert_eq!(w.token_requests_with_grant("refresh_token"), 1);
    assert_eq!(w.token_requests_with_grant("password"), 1);
    let stored = w.read_secret().await;
    assert_ne!(
        stored.refresh_token.unwrap().expose_secret(),
        seeded,
        "replaced at once"
    );
    assert_eq!(stored.status.state, AccountState::Ok);
}

/// Three transient failures (503, `temporarily_unavailable`, 429 with `Retry-After: 1`), then
/// success. The waits are read from the stand-in's recorded answer times: each is at least the
/// backoff (50 ms, then 100 ms: exponential, jitter only adds), and the wait after the 429 is
/// at least its `Retry-After` (1 s, more than any backoff of the policy, which caps at 400 ms
/// plus jitter), so a client that ignores the header fails here.
#[tokio::test]
async fn transient_errors_are_retried_with_backoff_honouring_retry_after() {
    let w = World::new().await;
    w.with_refresh_token(chrono::Duration::hours(1)).await;
    w.inject(FailureKind::Status { status: 503 }, 1);
    w.inject(FailureKind::TemporarilyUnavailable, 1);
    w.inject(
        FailureKind::TooManyRequests {
            retry_after_secs: 1,
        },
        1,
    );
    w.service()
        .access_token(&w.secret_name, Audience::Graph)
        .await
        .expect("succeeds after three transient failures");
    let answers = w.idp.requests(&RequestFilter {
        grant_type: Some("refresh_token".into()),
        ..RequestFilter::token_requests_for(&w.upn)
    });
    let statuses: Vec<u16> = answers.iter().map(|r| r.status).collect();
    assert_eq!(statuses, [503, 400, 429, 200], "{answers:?}");
    assert_eq!(answers[2].retry_after_secs, Some(1), "the 429 said when");
    let waits: Vec<Duration> = answers
        .windows(2)
        .map(|pair| {
            (pair[1].answered_at - pair[0].answered_at)
                .to_std()
                .expect("answers in order")
        })
        .collect();
    println!("waits between attempts: {waits:?}");
    assert!(
        waits[0] >= Duration::from_millis(50),
        "first backoff: {waits:?}"
    );
    assert!(waits[1] >= Duration::from_millis(100), "doubled: {waits:?}");
    assert!(
        waits[2] >= Duration::from_secs(1),
        "Retry-After honoured: {waits:?}"
    );
    assert_eq!(w.read_secret().await.status.state, AccountState::Ok);
}

#[tokio::test]
async fn transient_errors_surface_at_the_deadline_without_marking_the_account() {
    let w = World::new().await;
    w.with_refresh_token(chrono::Duration::hours(1)).await;
    w.inject(FailureKind::Status { status: 500 }, 1000);
    let service = w.service();
    let err = service
        .access_token_until(
            &w.secret_name,
            Audience::Graph,
            Instant::now() + Duration::from_millis(1500),
        )
        .await
        .expect_err("keeps failing");
    assert_eq!(err.class(), ErrorClass::Transient, "{err}");
    // However many attempts the machine's speed allowed, the error names them all and the
    // stand-in saw exactly those (retrying itself is proven by the backoff test above).
    let attempts = w.token_requests();
    // (An attempt the deadline cut short may or may not have reached the stand-in.)
    let said = err.to_string();
    assert!(
        said.contains(&format!("gave up after {attempts} attempts"))
            || said.contains(&format!("during attempt {attempts};"))
            || said.contains(&format!("during attempt {}", attempts + 1)),
        "{attempts} attempts seen by the stand-in: {err}"
    );
    assert_eq!(w.read_secret().await.status.state, AccountState::Ok);

    // A request that hangs past the deadline is cut off too.
    w.inject(FailureKind::Latency { millis: 5000 }, 1);
    let err = TokenService::new(w.store.clone(), identity_client(), config())
        .access_token_until(
            &w.secret_name,
            Audience::Imap,
            Instant::now() + Duration::from_millis(300),
        )
        .await
        .expect_err("deadline");
    assert_eq!(err.class(), ErrorClass::Transient, "{err}");
}

async fn run_device_code(
    w: &World,
    account: AccountSecret,
) -> (
    tokio::task::JoinHandle<Result<login::LoginOutcome, LoginError>>,
    tokio::sync::mpsc::UnboundedReceiver<DeviceCodeEvent>,
) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let store = w.store.clone();
    let name = w.secret_name.clone();
    let handle = tokio::spawn(async move {
        login::device_code_login(
            store.as_ref(),
            &identity_client(),
            &name,
            account,
            &SystemClock,
            move |event| {
                let _ = tx.send(event);
            },
        )
        .await
    });
    (handle, rx)
}

async fn prompt(rx: &mut tokio::sync::mpsc::UnboundedReceiver<DeviceCodeEvent>) -> String {
    match tokio::time::timeout(Duration::from_secs(10), rx.recv()).await {
        Ok(Some(DeviceCodeEvent::Prompt(p))) => {
            assert!(p.message.contains(&p.user_code), "{}", p.message);
            assert_eq!(p.verification_uri, "https://microsoft.com/devicelogin");
            p.user_code
        }
        other => panic!("expected a prompt, got {other:?}"),
    }
}

#[tokio::test]
async fn device_code_approve_stores_a_grant_that_works_for_an_mfa_account() {
    let w = World::new().await;
    set_user(&w, |u| u.mfa_required = true);
    let (flow, mut rx) = run_device_code(&w, w.account()).await;
    let code = prompt(&mut rx).await;
    // A few polls see authorization_pending first.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    w.idp.approve_device_code(&code, &w.upn).unwrap();
    let outcome = flow.await.unwrap().expect("login");
    assert!(outcome.created, "secret created by login");
    let stored = w.read_secret().await;
    assert!(stored.refresh_token.is_some());
    assert_eq!(stored.status.state, AccountState::Ok);
    assert!(
        w.idp
            .requests(&RequestFilter {
                tenant: Some(w.tenant.clone()),
                ..RequestFilter::default()
            })
            .iter()
            .any(|r| r.error.as_deref() == Some("authorization_pending"))
    );
    // The MFA-backed refresh token mints both audiences; ROPC could not.
    let service = w.service();
    service
        .access_token(&w.secret_name, Audience::Imap)
        .await
        .expect("IMAP");
    service
        .access_token(&w.secret_name, Audience::Graph)
        .await
        .expect("Graph");
}

#[tokio::test]
async fn device_code_login_clears_a_needs_reauth_status() {
    let w = World::new().await;
    w.with_refresh_token(chrono::Duration::hours(1)).await;
    w.idp.revoke_refresh_tokens(&w.upn).unwrap();
    let service = w.service();
    assert!(
        service
            .access_token(&w.secret_name, Audience::Graph)
            .await
            .is_err()
    );
    assert_eq!(
        w.read_secret().await.status.state,
        AccountState::NeedsReauth
    );

    let (flow, mut rx) = run_device_code(&w, w.read_secret().await).await;
    let code = prompt(&mut rx).await;
    w.idp.approve_device_code(&code, &w.upn).unwrap();
    let outcome = flow.await.unwrap().expect("login");
    assert!(!outcome.created);
    assert_eq!(w.read_secret().await.status.state, AccountState::Ok);
    // A fresh instance works again; the old (warm) one notices after its recheck interval.
    w.service()
        .access_token(&w.secret_name, Audience::Graph)
        .await
        .expect("works after login");
}

#[tokio::test]
async fn device_code_decline_and_expiry_end_the_flow() {
    let w = World::new().await;
    let (flow, mut rx) = run_device_code(&w, w.account()).await;
    let code = prompt(&mut rx).await;
    w.idp.decline_device_code(&code).unwrap();
    match flow.await.unwrap() {
        Err(LoginError::DeviceCode { source, .. }) => assert_eq!(source, DeviceCodeError::Declined),
        other => panic!("expected declined, got {other:?}"),
    }

    let (flow, mut rx) = run_device_code(&w, w.account()).await;
    let code = prompt(&mut rx).await;
    w.idp.expire_device_code(&code).unwrap();
    match flow.await.unwrap() {
        Err(LoginError::DeviceCode { source, .. }) => assert_eq!(source, DeviceCodeError::Expired),
        other => panic!("expected expired, got {other:?}"),
    }
    // Nothing was stored.
    assert!(get_secret(&w.secret_name).await.is_err());
}

#[tokio::test]
async fn device_code_slow_down_adds_five_seconds_to_the_interval() {
    let w = World::new().await;
    let (flow, mut rx) = run_device_code(&w, w.account()).await;
    let code = prompt(&mut rx).await;
    w.idp.slow_down_device_code(&code, 1).unwrap();
    match tokio::time::timeout(Duration::from_secs(10), rx.recv()).await {
        Ok(Some(DeviceCodeEvent::SlowDown(interval))) => {
            assert_eq!(interval, Duration::from_secs(1 + 5))
        }
        other => panic!("expected slow_down, got {other:?}"),
    }
    w.idp.approve_device_code(&code, &w.upn).unwrap();
    flow.await.unwrap().expect("login after slow_down");
}

#[tokio::test]
async fn a_missing_or_corrupt_secret_names_the_secret_and_the_field() {
    let w = World::new().await;
    let service = w.service();
    let missing = format!("mailbridge/{}", unique("missing"));
    match service.access_token(&missing, Audience::Graph).await {
        Err(TokenError::BadSecret { secret, problem }) => {
            assert_eq!(secret, missing);
            assert!(problem.contains("does not exist"), "{problem}");
        }
        other => panic!("{other:?}"),
    }
    let cases: Vec<(String, &str)> = vec![
        (
            "{\"schema_version\": 1, \"tenant_id\": ".to_string(),
            "not valid JSON",
        ),
        (
            serde_json::json!({"schema_version": 1, "tenant_id": w.tenant, "username": w.upn})
                .to_string(),
            "`client_id`",
        ),
        (
            {
                let mut v: Value = serde_json::from_str(&w.account().to_json()).unwrap();
                v["refresh_token"] = "x".into();
                v["refresh_token_stored_at"] = "last tuesday".into();
                v.to_string()
            },
            "`refresh_token_stored_at`",
        ),
        (
            {
                let mut v: Value = serde_json::from_str(&w.account().to_json()).unwrap();
                v["authority_host"] = "http://login.example.com".into();
                v.to_string()
            },
            "`authority_host`",
        ),
    ];
    for (json, expected) in cases {
        let name = format!("mailbridge/{}", unique("corrupt"));
        put_secret(&name, &json).await.unwrap();
        let err = service
            .access_token(&name, Audience::Imap)
            .await
            .expect_err(expected);
        let text = err.to_string();
        assert!(matches!(err, TokenError::BadSecret { .. }), "{text}");
        assert!(text.contains(&name), "{text}");
        assert!(text.contains(expected), "{text}");
        assert_eq!(err.class(), ErrorClass::Permanent);
    }
    assert_eq!(w.token_requests(), 0);
}

/// The 90-day inactivity window can never lapse while the functions run: simulate 150 days of
/// an instance running every 20 hours (cold-starting every third run) (clocks of the service and of the tenant move
/// together). The stored refresh token is never older than the write-back interval plus one
/// run gap, far inside 90 days; and the stand-in really enforces the window (a gap of 91 days
/// kills the grant).
#[tokio::test]
async fn the_90_day_inactivity_window_never_lapses_while_the_functions_run() {
    let w = World::new().await;
    w.with_refresh_token(chrono::Duration::zero()).await;
    let clock = Arc::new(OffsetClock::new());
    let gap = chrono::Duration::hours(20);
    let runs = 180; // 150 days
    let interval = chrono::Duration::hours(24);
    let mut oldest_seen = chrono::Duration::zero();
    let mut writes = 0;
    let mut last_stored = w.read_secret().await.refresh_token_stored_at;
    let mut service = None;
    for run in 0..runs {
        clock.advance(gap);
        w.idp.advance_tenant_clock(&w.tenant, gap);
        let age = clock.now() - last_stored.unwrap();
        oldest_seen = oldest_seen.max(age);
        if run % 3 == 0 {
            service = Some(TokenService::with_clock(
                w.store.clone(),
                identity_client(),
                config(),
                clock.clone(),
            ));
        }
        service
            .as_ref()
            .unwrap()
            .access_token(
                &w.secret_name,
                if run % 2 == 0 {
                    Audience::Graph
                } else {
                    Audience::Imap
                },
            )
            .await
            .unwrap_or_else(|e| panic!("run {run} (day {}): {e}", (gap * run).num_days()));
        let after = w.read_secret().await.refresh_token_stored_at;
        if after != last_stored {
            writes += 1;
            last_stored = after;
        }
    }
    println!(
        "{} days simulated in {runs} runs: {writes} write-backs, oldest stored refresh token seen {} h",
        (gap * runs).num_days(),
        oldest_seen.num_hours()
    );
    assert!(
        oldest_seen <= interval + gap,
        "stored token aged {} h",
        oldest_seen.num_hours()
    );
    assert!(oldest_seen < chrono::Duration::days(90));
    assert!(writes >= 80, "writes: {writes}");

    // Control: stop the functions for 91 days and the grant is dead (the window is real).
    clock.advance(chrono::Duration::days(91));
    w.idp
        .advance_tenant_clock(&w.tenant, chrono::Duration::days(91));
    let err = TokenService::with_clock(w.store.clone(), identity_client(), config(), clock.clone())
        .access_token(&w.secret_name, Audience::Graph)
        .await
        .expect_err("inactive for 91 days");
    assert!(err.to_string().contains("AADSTS700082"), "{err}");
}

/// A store that lets another "instance" write a newer refresh token right before the
/// write-back's re-read (`race_on_get`: that read), or right before its write (`race_on_write`:
/// after the re-read, so only a conditional write can notice).
struct RacingStore {
    inner: Arc<SecretsManagerStore>,
    gets: AtomicUsize,
    race_on_get: usize,
    race_on_write: bool,
    newer_value: String,
}

impl RacingStore {
    async fn race_before_write(&self, name: &str) {
        if self.race_on_write {
            put_secret(name, &self.newer_value)
                .await
                .expect("concurrent write");
        }
    }
}

#[async_trait]
impl SecretStore for RacingStore {
    async fn get(&self, name: &str) -> Result<SecretValue, SecretStoreError> {
        if self.gets.fetch_add(1, Ordering::SeqCst) + 1 == self.race_on_get {
            put_secret(name, &self.newer_value)
                .await
                .expect("concurrent write");
        }
        self.inner.get(name).await
    }
    async fn put(
        &self,
        name: &str,
        value: &SecretString,
        token: &str,
    ) -> Result<String, SecretStoreError> {
        self.race_before_write(name).await;
        self.inner.put(name, value, token).await
    }
    async fn create(&self, name: &str, value: &SecretString) -> Result<String, SecretStoreError> {
        self.inner.create(name, value).await
    }
    async fn replace(
        &self,
        name: &str,
        value: &SecretString,
        token: &str,
        expected_version: &str,
    ) -> Result<String, SecretStoreError> {
        self.race_before_write(name).await;
        self.inner
            .replace(name, value, token, expected_version)
            .await
    }
}

#[tokio::test]
async fn write_back_never_overwrites_a_newer_token_written_concurrently() {
    let w = World::new().await;
    w.with_refresh_token(chrono::Duration::hours(30)).await;
    // The other instance's newer token (written a moment "later").
    let theirs = w.fresh_refresh_token().await;
    let mut newer = w.read_secret().await;
    newer.refresh_token = Some(theirs.clone().into());
    newer.refresh_token_stored_at = Some(chrono::Utc::now());
    let store = Arc::new(RacingStore {
        inner: w.store.clone(),
        gets: AtomicUsize::new(0),
        race_on_get: 2, // 1 = initial read, 2 = write-back's re-read
        race_on_write: false,
        newer_value: newer.to_json(),
    });
    TokenService::new(store, identity_client(), config())
        .access_token(&w.secret_name, Audience::Graph)
        .await
        .expect("token");
    let stored = w.read_secret().await;
    assert_eq!(
        stored.refresh_token.unwrap().expose_secret(),
        theirs,
        "newer token kept"
    );
}

/// The other instance (or `mailbridge login`) stores its grant after the write-back re-read the
/// secret and before it writes: only a conditional write keeps the newer grant.
#[tokio::test]
async fn write_back_never_overwrites_a_grant_stored_between_its_re_read_and_its_write() {
    let w = World::new().await;
    w.with_refresh_token(chrono::Duration::hours(30)).await;
    let theirs = w.fresh_refresh_token().await;
    let mut newer = w.read_secret().await;
    newer.refresh_token = Some(theirs.clone().into());
    newer.refresh_token_stored_at = Some(chrono::Utc::now());
    let store = Arc::new(RacingStore {
        inner: w.store.clone(),
        gets: AtomicUsize::new(0),
        race_on_get: 0,
        race_on_write: true,
        newer_value: newer.to_json(),
    });
    TokenService::new(store, identity_client(), config())
        .access_token(&w.secret_name, Audience::Graph)
        .await
        .expect("token");
    let stored = w.read_secret().await;
    assert_eq!(
        stored.refresh_token.unwrap().expose_secret(),
        theirs,
        "the grant stored concurrently stays current"
    );
}

/// Two writers that read the same version: Secrets Manager (moto) makes the first one's value
/// current and refuses the second, whose value never becomes current.
#[tokio::test]
async fn of_two_writers_that_read_the_same_version_only_the_first_replaces_it() {
    let w = World::new().await;
    w.with_refresh_token(chrono::Duration::hours(30)).await;
    let read = w.store.get(&w.secret_name).await.unwrap();
    let value = |rt: &str| -> SecretString {
        let mut secret =
            mailbridge::token::AccountSecret::parse(&w.secret_name, read.value.expose_secret())
                .unwrap();
        secret.refresh_token = Some(rt.to_string().into());
        secret.to_json().into()
    };
    let (first, second) = (value("first-writer"), value("second-writer"));
    let first_token = client_request_token(&w.secret_name, &read.version_id, &first);
    let written = w
        .store
        .replace(&w.secret_name, &first, &first_token, &read.version_id)
        .await
        .expect("the first writer replaces the version it read");
    let second_token = client_request_token(&w.secret_name, &read.version_id, &second);
    let refused = w
        .store
        .replace(&w.secret_name, &second, &second_token, &read.version_id)
        .await;
    assert!(
        matches!(refused, Err(SecretStoreError::Superseded { .. })),
        "{refused:?}"
    );
    let current = w.store.get(&w.secret_name).await.unwrap();
    assert_eq!(current.version_id, written);
    assert_eq!(
        w.read_secret().await.refresh_token.unwrap().expose_secret(),
        "first-writer"
    );
    // A retry of the first write (its answer lost) is still the same, current version.
    let again = w
        .store
        .replace(&w.secret_name, &first, &first_token, &read.version_id)
        .await
        .expect("retry");
    assert_eq!(again, written);
    // As on AWS, the version AWSCURRENT was moved to is current for a later plain write too
    // (moto alone would leave the label on two versions: infra/local-stack/src/moto_fidelity.py).
    put_secret(&w.secret_name, "{\"later\": \"plain write\"}")
        .await
        .unwrap();
    assert_eq!(
        get_secret(&w.secret_name).await.unwrap(),
        "{\"later\": \"plain write\"}"
    );
}

/// The service's write-back of a rotated refresh token when Secrets Manager's answer is lost
/// after the write happened (a fault proxy in front of moto forwards the first
/// `PutSecretValue`, then answers `InternalServiceError`). The retry carries the same
/// `ClientRequestToken`, the service's own (derived from the version it wrote on and the value),
/// so the secret gets exactly one new version holding the rotated token.
#[tokio::test]
async fn write_back_whose_answer_is_lost_writes_one_version() {
    let w = World::new().await;
    let seeded = w.with_refresh_token(chrono::Duration::hours(30)).await;
    let base = w.store.get(&w.secret_name).await.unwrap();
    let versions_before = secret_versions(&w.secret_name).await;
    let proxy = AwsFaultProxy::start(&stack().moto().endpoint_url)
        .await
        .expect("fault proxy");
    let conf = aws_sdk_secretsmanager::config::Builder::from(&stack().moto().sdk_config())
        .endpoint_url(&proxy.endpoint_url)
        .build();
    let store = Arc::new(SecretsManagerStore::new(
        aws_sdk_secretsmanager::Client::from_conf(conf),
    ));
    proxy.lose_answers("PutSecretValue", &w.secret_name, 1);
    TokenService::new(store, identity_client(), config())
        .access_token(&w.secret_name, Audience::Graph)
        .await
        .expect("token");

    let puts: Vec<_> = proxy
        .calls(&w.secret_name)
        .into_iter()
        .filter(|c| c.operation == "PutSecretValue")
        .collect();
    assert_eq!(puts.len(), 2, "the lost answer was retried: {puts:?}");
    assert!(puts[0].answer_lost && !puts[1].answer_lost, "{puts:?}");
    let current = w.store.get(&w.secret_name).await.unwrap();
    let expected_token = client_request_token(&w.secret_name, &base.version_id, &current.value);
    for put in &puts {
        assert_eq!(
            put.client_request_token.as_deref(),
            Some(expected_token.as_str()),
            "every attempt carries the write-back's own token"
        );
    }
    let versions_after = secret_versions(&w.secret_name).await;
    assert_eq!(
        versions_after.len(),
        versions_before.len() + 1,
        "one write-back, one version: {versions_before:?} -> {versions_after:?}"
    );
    let stored = w.read_secret().await;
    assert_ne!(
        stored.refresh_token.unwrap().expose_secret(),
        seeded,
        "the rotated token is stored"
    );
}

/// Every version id of a secret (deprecated ones too).
async fn secret_versions(name: &str) -> Vec<String> {
    mailbridge_tests::secrets()
        .list_secret_version_ids()
        .secret_id(name)
        .include_deprecated(true)
        .send()
        .await
        .expect("list secret versions")
        .versions
        .unwrap_or_default()
        .into_iter()
        .filter_map(|v| v.version_id)
        .collect()
}

#[tokio::test]
async fn strict_stand_in_errors_have_microsoft_shape() {
    let w = World::new().await;
    let http = reqwest::Client::new();
    let post = |tenant: String, form: Vec<(&'static str, String)>| {
        let http = http.clone();
        let url = format!("{}/{tenant}/oauth2/v2.0/token", w.idp.base_url);
        async move {
            let r = http.post(url).form(&form).send().await.unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        }
    };
    let base = |scope: &str| {
        vec![
            ("client_id", w.client_id.clone()),
            ("grant_type", "password".to_string()),
            ("username", w.upn.clone()),
            ("password", PASSWORD.to_string()),
            ("scope", scope.to_string()),
        ]
    };
    let (s, body) = post(
        "no-such-tenant".into(),
        base("https://graph.microsoft.com/Mail.Send"),
    )
    .await;
    assert_eq!((s, body["error_codes"][0].as_u64()), (400, Some(90002)));
    let desc = body["error_description"].as_str().unwrap();
    assert!(
        desc.starts_with("AADSTS90002: ")
            && desc.contains("Trace ID: ")
            && desc.contains("Timestamp: "),
        "{desc}"
    );
    for key in ["timestamp", "trace_id", "correlation_id", "error_uri"] {
        assert!(body[key].is_string(), "{key} in {body}");
    }
    let mut f = base("https://graph.microsoft.com/Mail.Send");
    f[0].1 = "unknown-client".into();
    assert_eq!(post(w.tenant.clone(), f).await.1["error_codes"][0], 700016);
    let two = base(
        "https://graph.microsoft.com/Mail.Send https://outlook.office.com/IMAP.AccessAsUser.All",
    );
    assert_eq!(
        post(w.tenant.clone(), two).await.1["error_codes"][0],
        700022
    );
    let bad_scope = base("https://graph.microsoft.com/Mail.Explode");
    assert_eq!(
        post(w.tenant.clone(), bad_scope).await.1["error_codes"][0],
        70011
    );
    let mut wrong_pw = base("https://graph.microsoft.com/Mail.Send");
    wrong_pw[3].1 = "nope".into();
    let (s, body) = post(w.tenant.clone(), wrong_pw).await;
    assert_eq!((s, body["error"].as_str()), (400, Some("invalid_grant")));
    assert_eq!(body["error_codes"][0], 50126);

    // Per-tenant settings: access token lifetime.
    w.idp.set_tenant_settings(
        &w.tenant,
        TenantSettings {
            access_token_lifetime_secs: Some(120),
            ..TenantSettings::default()
        },
    );
    let (s, body) = post(
        w.tenant.clone(),
        base("https://graph.microsoft.com/Mail.Send offline_access"),
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(body["expires_in"], 120);
    assert!(body["refresh_token"].is_string());
    assert_eq!(
        body["scope"],
        "https://graph.microsoft.com/Mail.Send https://graph.microsoft.com/Mail.Send.Shared offline_access"
    );

    // The same parameters as JSON, or form-encoded without the Content-Type: Microsoft reads
    // parameters only from a form-encoded body, so the request has none.
    let params: serde_json::Map<String, Value> = base("https://graph.microsoft.com/Mail.Send")
        .into_iter()
        .map(|(k, v)| (k.to_owned(), Value::from(v)))
        .collect();
    let url = format!("{}/{}/oauth2/v2.0/token", w.idp.base_url, w.tenant);
    let as_json = http.post(&url).json(&params).send().await.unwrap();
    let unlabelled = http
        .post(&url)
        .body(
            url::form_urlencoded::Serializer::new(String::new())
                .extend_pairs(params.iter().map(|(k, v)| (k, v.as_str().unwrap())))
                .finish(),
        )
        .send()
        .await
        .unwrap();
    for answer in [as_json, unlabelled] {
        assert_eq!(answer.status(), 400);
        let body: Value = answer.json().await.unwrap();
        assert_eq!(body["error"], "invalid_request", "{body}");
        assert_eq!(body["error_codes"][0], 900144, "{body}");
        assert!(
            body["error_description"]
                .as_str()
                .unwrap()
                .contains("'grant_type'"),
            "{body}"
        );
    }
}

#[tokio::test]
async fn imap_token_logs_in_to_dovecot_with_xoauth2_and_a_graph_token_does_not() {
    let w = World::new().await;
    w.with_refresh_token(chrono::Duration::hours(1)).await;
    let dovecot = stack().dovecot();
    let service = w.service();
    let imap = service
        .access_token(&w.secret_name, Audience::Imap)
        .await
        .unwrap();
    let graph = service
        .access_token(&w.secret_name, Audience::Graph)
        .await
        .unwrap();

    let mut session =
        mailbridge_tests::imap_login_xoauth2(dovecot, &w.upn, imap.secret.expose_secret())
            .await
            .expect("IMAP-audience token logs in");
    session.select("INBOX").await.unwrap();
    session.logout().await.unwrap();

    let err = mailbridge_tests::imap_login_xoauth2(dovecot, &w.upn, graph.secret.expose_secret())
        .await
        .expect_err("Graph-audience token is rejected");
    assert!(err.to_string().contains("AUTHENTICATIONFAILED"), "{err}");

    // Shared mailbox: the delegate's IMAP token opens it once granted.
    let shared_box = unique_user("shared");
    assert!(
        mailbridge_tests::imap_login_xoauth2(dovecot, &shared_box, imap.secret.expose_secret())
            .await
            .is_err()
    );
    w.idp.grant_mailbox_access(&w.upn, &shared_box);
    let mut session =
        mailbridge_tests::imap_login_xoauth2(dovecot, &shared_box, imap.secret.expose_secret())
            .await
            .expect("delegate opens the shared mailbox");
    session.logout().await.unwrap();

    // Introspection outage (scoped to this user) is a temporary failure, not a bad token.
    w.idp.inject_failure(FailureInjection {
        scope: FailureScope::User(w.upn.clone()),
        failure: FailureKind::Status { status: 500 },
        // both oauth2 passdbs introspect (token alone, then token and mailbox)
        times: 2,
        target: local_stack::identity::FailureTarget::Introspection,
    });
    let err = mailbridge_tests::imap_login_xoauth2(dovecot, &w.upn, imap.secret.expose_secret())
        .await
        .expect_err("introspection down");
    assert!(err.to_string().contains("UNAVAILABLE"), "{err}");

    // Revoked access token: rejected.
    w.idp.revoke_access_tokens(&w.upn);
    let err = mailbridge_tests::imap_login_xoauth2(dovecot, &w.upn, imap.secret.expose_secret())
        .await
        .expect_err("revoked");
    assert!(err.to_string().contains("AUTHENTICATIONFAILED"), "{err}");
}

#[tokio::test]
async fn the_stand_in_can_be_driven_over_http_controls() {
    use local_stack::identity::IdentityControl;
    let idp = stack().identity().clone();
    let control = IdentityControl::new(&idp.base_url);
    let tenant = format!("{}.onmicrosoft.com", unique("tenant"));
    let client_id = uuid::Uuid::new_v4().to_string();
    let upn = unique_user("remote");
    control
        .register_app(&AppRegistration::mailbridge(&tenant, &client_id))
        .await
        .unwrap();
    let mut user = UserAccount::new(&tenant, &upn, PASSWORD);
    user.mfa_required = true;
    control.register_user(&user).await.unwrap();

    let mut account = AccountSecret::new(&tenant, &client_id, &upn);
    account.authority_host = idp.base_url.clone();
    let client = identity_client();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let flow = {
        let account = account.clone();
        tokio::spawn(async move {
            client
                .device_code_flow(&account, Audience::Imap, move |e| {
                    let _ = tx.send(e);
                })
                .await
        })
    };
    let shown = prompt(&mut rx).await;
    let listed = control.device_codes(&tenant).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].user_code, shown);
    assert_eq!(listed[0].state, "pending");
    control.approve_device_code(&shown, &upn).await.unwrap();
    let tokens = flow.await.unwrap().expect("device code over HTTP controls");
    assert!(tokens.refresh_token.is_some());
    assert_eq!(
        tokens.scope,
        "openid profile https://outlook.office.com/IMAP.AccessAsUser.All offline_access"
    );
    assert_eq!(tokens.signed_in_user().as_deref(), Some(upn.as_str()));

    control
        .inject_failure(&FailureInjection::token(
            FailureScope::Tenant(tenant.clone()),
            FailureKind::Status { status: 502 },
            1,
        ))
        .await
        .unwrap();
    let client = identity_client();
    let rt = tokens.refresh_token.clone().unwrap();
    let retried = client
        .with_retries(Instant::now() + Duration::from_secs(5), || {
            client.refresh(&account, Audience::Graph, &rt)
        })
        .await;
    assert!(retried.is_ok(), "{retried:?}");
    let requests = control
        .requests(&RequestFilter {
            tenant: Some(tenant.clone()),
            endpoint: Some("token".into()),
            grant_type: Some("refresh_token".into()),
            ..RequestFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(
        requests.iter().map(|r| r.status).collect::<Vec<_>>(),
        vec![502, 200]
    );
    control.revoke_refresh_tokens(&upn).await.unwrap();
    let revoked = identity_client()
        .refresh(
            &account,
            Audience::Graph,
            tokens.refresh_token.as_ref().unwrap(),
        )
        .await;
    assert!(
        format!("{revoked:?}").contains("AADSTS50173"),
        "{revoked:?}"
    );
}

#[tokio::test]
async fn device_code_login_as_the_wrong_user_stores_nothing() {
    let w = World::new().await;
    let intruder = unique_user("someone-else");
    w.idp
        .register_user(UserAccount::new(&w.tenant, &intruder, PASSWORD));
    let (flow, mut rx) = run_device_code(&w, w.account()).await;
    let code = prompt(&mut rx).await;
    w.idp.approve_device_code(&code, &intruder).unwrap();
    match flow.await.unwrap() {
        Err(LoginError::WrongUser {
            expected,
            signed_in,
            ..
        }) => {
            assert_eq!(expected, w.upn);
            assert_eq!(signed_in, intruder);
        }
        other => panic!("expected WrongUser, got {other:?}"),
    }
    assert!(get_secret(&w.secret_name).await.is_err(), "nothing stored");
}

#[tokio::test]
async fn a_missing_imap_consent_never_holds_graph_tokens() {
    let w = World::new().await;
    let mut app = AppRegistration::mailbridge(&w.tenant, &w.client_id);
    app.consented_scopes.retain(|s| !s.contains("IMAP"));
    w.idp.register_app(app);
    w.with_refresh_token(chrono::Duration::hours(1)).await;

    // The IMAP audience fails for want of consent: a person must act, for IMAP only.
    let service = w.service();
    let err = service
        .access_token(&w.secret_name, Audience::Imap)
        .await
        .unwrap_err();
    assert_eq!(err.class(), ErrorClass::NeedsReauth, "{err}");
    assert!(err.to_string().contains("AADSTS65001"), "{err}");
    let stored = w.read_secret().await;
    assert_eq!(stored.status.state, AccountState::NeedsReauth);
    assert_eq!(stored.status.audience, Some(Audience::Imap), "{stored:?}");
    assert!(stored.status.applies_to(Audience::Imap));
    assert!(!stored.status.applies_to(Audience::Graph));

    // Graph still works: in this instance (negative cache) and in a fresh one (stored status).
    service
        .access_token(&w.secret_name, Audience::Graph)
        .await
        .expect("Graph token despite the IMAP consent problem");
    w.service()
        .access_token(&w.secret_name, Audience::Graph)
        .await
        .expect("Graph token in a new instance");
    // ... and IMAP stays stopped without asking the identity platform again.
    let before = w.token_requests();
    let again = w
        .service()
        .access_token(&w.secret_name, Audience::Imap)
        .await
        .unwrap_err();
    assert_eq!(again.class(), ErrorClass::NeedsReauth);
    assert_eq!(w.token_requests(), before);

    // A dead grant then stops every audience.
    w.idp.revoke_refresh_tokens(&w.upn).unwrap();
    let fresh = w.service();
    let dead = fresh
        .access_token(&w.secret_name, Audience::Graph)
        .await
        .unwrap_err();
    assert_eq!(dead.class(), ErrorClass::NeedsReauth);
    let stored = w.read_secret().await;
    assert_eq!(stored.status.audience, None, "{stored:?}");
    assert!(stored.status.applies_to(Audience::Graph));
    assert!(stored.status.applies_to(Audience::Imap));
}

#[tokio::test]
async fn a_status_without_audience_holds_every_audience() {
    let w = World::new().await;
    w.with_refresh_token(chrono::Duration::hours(1)).await;
    let mut json: Value = serde_json::from_str(&get_secret(&w.secret_name).await.unwrap()).unwrap();
    json["status"] = serde_json::json!({
        "state": "needs_reauth",
        "reason": "consent missing",
        "code": "AADSTS65001",
        "since": "2026-01-01T00:00:00Z"
    });
    put_secret(&w.secret_name, &json.to_string()).await.unwrap();
    for audience in [Audience::Graph, Audience::Imap] {
        let err = w
            .service()
            .access_token(&w.secret_name, audience)
            .await
            .unwrap_err();
        assert_eq!(err.class(), ErrorClass::NeedsReauth, "{audience:?}: {err}");
    }
    assert_eq!(w.token_requests(), 0);
}

/// The code of a browser sign-in's redirect (`Location`), after checking its state.
fn code_of(request: &AuthorizationRequest, location: &str) -> SecretString {
    let url = url::Url::parse(location).expect("redirect URL");
    let query = url.query_pairs().into_owned().collect();
    request
        .code_from_redirect(&query)
        .expect("a code with this sign-in's state")
}

fn aadsts(result: Result<mailbridge::token::TokenResponse, TokenEndpointError>) -> String {
    match result {
        Err(TokenEndpointError::NeedsPerson(p)) => p.code,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn authorization_codes_are_single_use_and_bound_to_verifier_redirect_and_client() {
    let w = World::new().await;
    // MFA on: ROPC is refused, an interactive browser sign-in satisfies it.
    w.idp
        .update_user(&w.upn, |u| u.mfa_required = true)
        .unwrap();
    let account = w.account();
    let identity = identity_client();
    let redirect = "http://localhost:4711";
    let request = AuthorizationRequest::new(&account, Audience::Graph, redirect);
    let SignInPage::Redirect(location) = browser_sign_in(&request.url, &w.upn, PASSWORD, true)
        .await
        .unwrap()
    else {
        panic!("the sign-in page did not redirect");
    };
    assert!(
        location.starts_with("http://localhost:4711/?"),
        "{location}"
    );
    let code = code_of(&request, &location);
    let redeem = |code: &SecretString, redirect: &str, verifier: &str| {
        let identity = identity.clone();
        let account = account.clone();
        let code = code.clone();
        let redirect = redirect.to_owned();
        let verifier = verifier.to_owned();
        async move {
            identity
                .redeem_authorization_code(&account, Audience::Graph, &code, &redirect, &verifier)
                .await
        }
    };
    // the verifier of another sign-in, and none at all
    let other = AuthorizationRequest::new(&account, Audience::Graph, redirect);
    assert_eq!(
        aadsts(redeem(&code, redirect, other.code_verifier()).await),
        "AADSTS501481"
    );
    assert_eq!(aadsts(redeem(&code, redirect, "").await), "AADSTS501481");
    // another redirect URI than the one the code was issued to
    assert_eq!(
        aadsts(redeem(&code, "http://localhost:4712", request.code_verifier()).await),
        "AADSTS50011"
    );
    // another client (an app of the same tenant)
    let other_app = AppRegistration::mailbridge(&w.tenant, &uuid::Uuid::new_v4().to_string());
    w.idp.register_app(other_app.clone());
    let mut other_account = account.clone();
    other_account.client_id = other_app.client_id.clone();
    let foreign = identity
        .redeem_authorization_code(
            &other_account,
            Audience::Graph,
            &code,
            redirect,
            request.code_verifier(),
        )
        .await;
    assert_eq!(aadsts(foreign), "AADSTS9002313");
    // the right verifier, redirect URI and client: a grant for an MFA user
    let tokens = redeem(&code, redirect, request.code_verifier())
        .await
        .expect("the code redeems once");
    assert_eq!(tokens.signed_in_user().as_deref(), Some(w.upn.as_str()));
    let refresh_token = tokens.refresh_token.expect("offline_access");
    identity
        .refresh(&account, Audience::Imap, &refresh_token)
        .await
        .expect("the browser grant refreshes for IMAP despite MFA");
    // single use
    assert_eq!(
        aadsts(redeem(&code, redirect, request.code_verifier()).await),
        "AADSTS54005"
    );
}

#[tokio::test]
async fn the_sign_in_page_checks_the_redirect_uri_and_reports_a_declined_consent() {
    let w = World::new().await;
    let account = w.account();
    // Registered `http://localhost` matches any port, not another path or host.
    for unregistered in [
        "http://localhost:4711/callback",
        "http://127.0.0.1:4711",
        "https://localhost:4711",
    ] {
        let request = AuthorizationRequest::new(&account, Audience::Graph, unregistered);
        match browser_sign_in(&request.url, &w.upn, PASSWORD, true)
            .await
            .unwrap()
        {
            SignInPage::Page(400, html) => {
                assert!(html.contains("AADSTS50011"), "{unregistered}: {html}")
            }
            other => panic!("{unregistered}: expected the AADSTS50011 page, got {other:?}"),
        }
    }
    // Cancel at the consent: access_denied with AADSTS65004 back to the redirect URI.
    let request = AuthorizationRequest::new(&account, Audience::Graph, "http://localhost:4711");
    let SignInPage::Redirect(location) = browser_sign_in(&request.url, &w.upn, PASSWORD, false)
        .await
        .unwrap()
    else {
        panic!("a declined consent goes back to the app");
    };
    let url = url::Url::parse(&location).unwrap();
    let query = url.query_pairs().into_owned().collect();
    match request.code_from_redirect(&query) {
        Err(RedirectError::Refused(e)) => {
            assert_eq!(e.error, "access_denied");
            assert_eq!(e.code, Some(65004));
        }
        other => panic!("expected access_denied, got {other:?}"),
    }
    // A wrong password is an error page, no redirect.
    let request = AuthorizationRequest::new(&account, Audience::Graph, "http://localhost:4711");
    match browser_sign_in(&request.url, &w.upn, "wrong", true)
        .await
        .unwrap()
    {
        SignInPage::Page(400, html) => assert!(html.contains("AADSTS50126"), "{html}"),
        other => panic!("expected the AADSTS50126 page, got {other:?}"),
    }
}

/// A raw token-endpoint POST of `form` for the world's tenant: status and JSON body.
async fn token_post(w: &World, form: &[(&str, &str)]) -> (u16, Value) {
    let r = reqwest::Client::new()
        .post(format!("{}/{}/oauth2/v2.0/token", w.idp.base_url, w.tenant))
        .form(form)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

async fn refresh_raw(w: &World, refresh_token: &str, scope: &str) -> (u16, Value) {
    token_post(
        w,
        &[
            ("client_id", w.client_id.as_str()),
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh_token),
            ("scope", scope),
        ],
    )
    .await
}

const GRAPH_SCOPE: &str = "https://graph.microsoft.com/Mail.Send offline_access";

#[tokio::test]
async fn mfa_and_consent_failures_carry_suberror_claims_and_the_fix() {
    let w = World::new().await;
    let rt = w.with_refresh_token(chrono::Duration::hours(1)).await;
    set_user(&w, |u| u.mfa_required = true);
    // A silent refresh with a token that never passed MFA: interaction_required.
    let (s, body) = refresh_raw(&w, &rt, GRAPH_SCOPE).await;
    assert_eq!(s, 400);
    assert_eq!(body["error"], "interaction_required", "{body}");
    assert_eq!(body["error_codes"], serde_json::json!([50076]));
    assert_eq!(body["suberror"], "basic_action");
    let claims: Value = serde_json::from_str(body["claims"].as_str().expect("claims")).unwrap();
    assert_eq!(
        claims["access_token"]["capolids"]["values"][0],
        local_stack::identity::MFA_POLICY_ID
    );
    // A password sign-in for the same user: invalid_grant, no suberror.
    let (_, body) = token_post(
        &w,
        &[
            ("client_id", w.client_id.as_str()),
            ("grant_type", "password"),
            ("username", w.upn.as_str()),
            ("password", PASSWORD),
            ("scope", GRAPH_SCOPE),
        ],
    )
    .await;
    assert_eq!(
        (body["error"].as_str(), body["error_codes"][0].as_u64()),
        (Some("invalid_grant"), Some(50076))
    );
    assert!(body.get("suberror").is_none(), "{body}");
    // What the functions make of it: needs a person, only for this audience, the browser fix.
    let err = w
        .service()
        .access_token(&w.secret_name, Audience::Graph)
        .await
        .expect_err("MFA required");
    assert!(
        err.to_string().contains("login --browser") && err.to_string().contains("AADSTS50076"),
        "{err}"
    );
    assert_eq!(w.read_secret().await.status.audience, Some(Audience::Graph));

    // Consent missing for IMAP: invalid_grant + consent_required.
    let w = World::new().await;
    let rt = w.with_refresh_token(chrono::Duration::hours(1)).await;
    let mut app = AppRegistration::mailbridge(&w.tenant, &w.client_id);
    app.consented_scopes.retain(|s| !s.contains("IMAP"));
    w.idp.register_app(app);
    let (_, body) = refresh_raw(
        &w,
        &rt,
        "https://outlook.office.com/IMAP.AccessAsUser.All offline_access",
    )
    .await;
    assert_eq!(
        (body["error"].as_str(), body["suberror"].as_str()),
        (Some("invalid_grant"), Some("consent_required")),
        "{body}"
    );
}

#[tokio::test]
async fn a_refresh_token_expires_90_days_after_its_issue_even_when_used() {
    use local_stack::identity::IdentityControl;
    let w = World::new().await;
    let control = IdentityControl::new(&w.idp.base_url);
    let first = w.fresh_refresh_token().await;
    // Day 60: the first token still works, and returns a rotated one.
    control
        .advance_tenant_clock(&w.tenant, chrono::Duration::days(60))
        .await
        .unwrap();
    let (s, body) = refresh_raw(&w, &first, GRAPH_SCOPE).await;
    assert_eq!(s, 200, "{body}");
    let rotated = body["refresh_token"].as_str().unwrap().to_owned();
    // Day 89: used again (use does not extend it).
    control
        .advance_tenant_clock(&w.tenant, chrono::Duration::days(29))
        .await
        .unwrap();
    assert_eq!(refresh_raw(&w, &first, GRAPH_SCOPE).await.0, 200);
    // Day 91: the first token is dead though used two days ago; the rotated one (31 days old)
    // lives.
    control
        .advance_tenant_clock(&w.tenant, chrono::Duration::days(2))
        .await
        .unwrap();
    let (s, body) = refresh_raw(&w, &first, GRAPH_SCOPE).await;
    assert_eq!(s, 400);
    assert_eq!(body["error_codes"][0], 700082, "{body}");
    assert_eq!(body["suberror"], "bad_token");
    assert_eq!(refresh_raw(&w, &rotated, GRAPH_SCOPE).await.0, 200);
}

#[tokio::test]
async fn a_password_change_or_an_admin_revoke_kills_outstanding_refresh_tokens() {
    use local_stack::identity::IdentityControl;
    let w = World::new().await;
    let control = IdentityControl::new(&w.idp.base_url);
    let before = [w.fresh_refresh_token().await, w.fresh_refresh_token().await];
    // A flag change is not a password change: tokens live on.
    set_user(&w, |u| u.locked = false);
    assert_eq!(refresh_raw(&w, &before[0], GRAPH_SCOPE).await.0, 200);
    control
        .change_password(&w.upn, "a new password")
        .await
        .unwrap();
    for rt in &before {
        let (s, body) = refresh_raw(&w, rt, GRAPH_SCOPE).await;
        assert_eq!(
            (s, body["error_codes"][0].as_u64()),
            (400, Some(50173)),
            "{body}"
        );
        assert_eq!(body["suberror"], "bad_token");
    }
    // Signed in again with the new password: a new token, killed by an admin revoke.
    let (s, body) = token_post(
        &w,
        &[
            ("client_id", w.client_id.as_str()),
            ("grant_type", "password"),
            ("username", w.upn.as_str()),
            ("password", "a new password"),
            ("scope", GRAPH_SCOPE),
        ],
    )
    .await;
    assert_eq!(s, 200, "{body}");
    let after = body["refresh_token"].as_str().unwrap().to_owned();
    assert_eq!(refresh_raw(&w, &after, GRAPH_SCOPE).await.0, 200);
    control.revoke_refresh_tokens(&w.upn).await.unwrap();
    assert_eq!(
        refresh_raw(&w, &after, GRAPH_SCOPE).await.1["error_codes"][0],
        50173
    );
}

#[tokio::test]
async fn the_token_endpoint_reads_only_form_encoded_bodies() {
    let w = World::new().await;
    let url = format!("{}/{}/oauth2/v2.0/token", w.idp.base_url, w.tenant);
    let form = serde_json::json!({
        "client_id": w.client_id, "grant_type": "password", "username": w.upn,
        "password": PASSWORD, "scope": GRAPH_SCOPE,
    });
    let r = reqwest::Client::new()
        .post(&url)
        .json(&form)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error_codes"][0], 900144, "{body}");
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .contains("'grant_type'")
    );
    // Form-encoded parameters under another Content-Type are not read either.
    let fields: Vec<(String, String)> = form
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
        .collect();
    let encoded = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(&fields)
        .finish();
    let r = reqwest::Client::new()
        .post(&url)
        .header("content-type", "text/plain")
        .body(encoded.clone())
        .send()
        .await
        .unwrap();
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error_codes"][0], 900144, "{body}");
    // The same body as application/x-www-form-urlencoded is fine.
    let ok = reqwest::Client::new()
        .post(&url)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(encoded)
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status().as_u16(), 200);
}

#[tokio::test]
async fn device_code_polls_sooner_than_the_interval_get_slow_down() {
    let w = World::new().await;
    w.idp.set_tenant_settings(
        &w.tenant,
        TenantSettings {
            device_code_interval_secs: Some(2),
            ..TenantSettings::default()
        },
    );
    let account = w.account();
    let identity = identity_client();
    let (device_code, prompt) = identity
        .start_device_code(&account, GRAPH_SCOPE)
        .await
        .unwrap();
    assert_eq!(prompt.interval, Duration::from_secs(2));
    let form = [
        ("client_id", w.client_id.as_str()),
        ("grant_type", "urn:ietf:params:oauth:grant-type:device_code"),
        ("device_code", device_code.as_str()),
    ];
    // At once: too soon, and the interval is now 7 s: 2.2 s later is still too soon (now 12 s).
    assert_eq!(token_post(&w, &form).await.1["error"], "slow_down");
    tokio::time::sleep(Duration::from_millis(2200)).await;
    assert_eq!(token_post(&w, &form).await.1["error"], "slow_down");
    // 12.2 s later: in time, pending.
    tokio::time::sleep(Duration::from_millis(12_200)).await;
    assert_eq!(
        token_post(&w, &form).await.1["error"],
        "authorization_pending"
    );
    // The client's flow keeps the interval (+5 s per slow_down) and is never told to slow down.
    let w2 = World::new().await;
    w2.idp.set_tenant_settings(
        &w2.tenant,
        TenantSettings {
            device_code_interval_secs: Some(1),
            ..TenantSettings::default()
        },
    );
    let idp = w2.idp.clone();
    let (tenant, upn) = (w2.tenant.clone(), w2.upn.clone());
    let approve = tokio::spawn(async move {
        loop {
            if let Some(code) = idp
                .device_codes(&tenant)
                .into_iter()
                .find(|c| c.state == "pending")
            {
                tokio::time::sleep(Duration::from_millis(2500)).await;
                idp.approve_device_code(&code.user_code, &upn).unwrap();
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    let mut slow_downs = 0;
    identity_client()
        .device_code_flow(&w2.account(), Audience::Graph, |e| {
            if matches!(e, DeviceCodeEvent::SlowDown(_)) {
                slow_downs += 1;
            }
        })
        .await
        .expect("approved");
    approve.await.unwrap();
    assert_eq!(slow_downs, 0);
}

/// A client credentials request for `scope`, authenticated with `secret` (when given).
async fn client_credentials_raw(
    w: &World,
    client_id: &str,
    secret: Option<&str>,
    scope: &str,
) -> (u16, Value) {
    let mut form = vec![
        ("client_id", client_id),
        ("grant_type", "client_credentials"),
        ("scope", scope),
    ];
    if let Some(secret) = secret {
        form.push(("client_secret", secret));
    }
    token_post(w, &form).await
}

#[tokio::test]
async fn app_only_tokens_carry_roles_and_work_only_where_microsoft_accepts_them() {
    let w = World::new().await;
    let app_id = uuid::Uuid::new_v4().to_string();
    let secret = "app-secret-value";
    w.idp
        .register_app(AppRegistration::app_only(&w.tenant, &app_id, secret));
    const GRAPH_DEFAULT: &str = "https://graph.microsoft.com/.default";
    const IMAP_DEFAULT: &str = "https://outlook.office365.com/.default";
    // Client authentication and the /.default scope, as Entra demands.
    let (s, body) = client_credentials_raw(&w, &app_id, None, GRAPH_DEFAULT).await;
    assert_eq!(
        (s, body["error_codes"][0].as_u64()),
        (401, Some(7000218)),
        "{body}"
    );
    let (s, body) = client_credentials_raw(&w, &app_id, Some("wrong"), GRAPH_DEFAULT).await;
    assert_eq!(
        (s, body["error_codes"][0].as_u64()),
        (401, Some(7000215)),
        "{body}"
    );
    let (_, body) = client_credentials_raw(
        &w,
        &app_id,
        Some(secret),
        "https://graph.microsoft.com/Mail.Send",
    )
    .await;
    assert_eq!(body["error_codes"][0], 1002012, "{body}");
    // A public client cannot use the grant.
    let (s, _) = client_credentials_raw(&w, &w.client_id, None, GRAPH_DEFAULT).await;
    assert_eq!(s, 401);

    // The Graph token: roles, no scp, no user, no refresh token.
    let (s, body) = client_credentials_raw(&w, &app_id, Some(secret), GRAPH_DEFAULT).await;
    assert_eq!(s, 200, "{body}");
    assert!(body.get("refresh_token").is_none(), "{body}");
    let graph_token = body["access_token"].as_str().unwrap().to_owned();
    let issued = w.idp.lookup_access_token(&graph_token).unwrap();
    assert!(issued.app_only && issued.scopes.is_empty() && issued.upn.is_empty());
    assert_eq!(issued.roles, vec!["Mail.Send".to_owned()]);

    // Graph: no /me for an app; /users/{mailbox}/sendMail with the Mail.Send role.
    let mailbox = unique_user("app-mailbox");
    let graph = &stack().graph().base_url;
    let message = serde_json::json!({"message": {
        "subject": "app-only", "body": {"contentType": "Text", "content": "hello"},
        "toRecipients": [{"emailAddress": {"address": "someone@example.com"}}],
    }});
    let send = |path: String, token: String| {
        let message = message.clone();
        async move {
            let r = reqwest::Client::new()
                .post(format!("{graph}/v1.0/{path}/sendMail"))
                .bearer_auth(token)
                .json(&message)
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    let (s, text) = send("me".into(), graph_token.clone()).await;
    assert_eq!(s, 400, "{text}");
    assert!(text.contains("delegated authentication flow"), "{text}");
    let (s, text) = send(format!("users/{mailbox}"), graph_token.clone()).await;
    assert_eq!(s, 202, "{text}");
    // Without the Mail.Send application permission the token has no roles: 403.
    let mut bare = AppRegistration::app_only(&w.tenant, &app_id, secret);
    bare.application_permissions.clear();
    w.idp.register_app(bare);
    let (_, body) = client_credentials_raw(&w, &app_id, Some(secret), GRAPH_DEFAULT).await;
    let no_roles = body["access_token"].as_str().unwrap().to_owned();
    let (s, text) = send(format!("users/{mailbox}"), no_roles).await;
    assert_eq!(s, 403, "{text}");
    assert!(text.contains("ErrorAccessDenied"), "{text}");

    // IMAP: an Outlook-audience app token opens only the mailboxes the service principal was
    // given; a Graph-audience one never.
    w.idp
        .register_app(AppRegistration::app_only(&w.tenant, &app_id, secret));
    let (s, body) = client_credentials_raw(&w, &app_id, Some(secret), IMAP_DEFAULT).await;
    assert_eq!(s, 200, "{body}");
    let imap_token = body["access_token"].as_str().unwrap().to_owned();
    let dovecot = stack().dovecot();
    assert!(
        mailbridge_tests::imap_login_xoauth2(dovecot, &mailbox, &imap_token)
            .await
            .is_err(),
        "no mailbox access yet"
    );
    // Exchange: Add-MailboxPermission counts only for a service principal registered with
    // the Enterprise application's object id (New-ServicePrincipal).
    let mut granted = AppRegistration::app_only(&w.tenant, &app_id, secret);
    granted.imap_mailboxes.push(mailbox.clone());
    granted.exchange_service_principal = Some(uuid::Uuid::new_v4().to_string());
    w.idp.register_app(granted.clone());
    assert!(
        mailbridge_tests::imap_login_xoauth2(dovecot, &mailbox, &imap_token)
            .await
            .is_err(),
        "New-ServicePrincipal with another object id (the app registration's) gives no access"
    );
    granted.exchange_service_principal = None;
    w.idp
        .register_app(granted.with_exchange_mailbox_access(&[]));
    let mut session = mailbridge_tests::imap_login_xoauth2(dovecot, &mailbox, &imap_token)
        .await
        .expect("the service principal opens its mailbox");
    session.select("INBOX").await.unwrap();
    session.logout().await.unwrap();
    assert!(
        mailbridge_tests::imap_login_xoauth2(dovecot, &mailbox, &graph_token)
            .await
            .is_err(),
        "a Graph-audience token never logs in to IMAP"
    );
}
