//! Microsoft identity platform stand-in: `/{tenant}/oauth2/v2.0/token` (password,
//! refresh_token with rotation, device_code, authorization_code with PKCE),
//! `/{tenant}/oauth2/v2.0/authorize` (a sign-in and consent form a test posts, as a browser
//! would), `/{tenant}/oauth2/v2.0/devicecode`,
//! `/introspect` and `/introspect/mailbox` for Dovecot's oauth2 passdbs, and test controls.
//! Strict, Microsoft-shaped errors.
//!
//! Behaviour modelled on Entra ID, from Microsoft identity platform documentation:
//! - Errors are `{"error", "error_description": "AADSTSnnnnn: … Trace ID: … Correlation ID: …
//!   Timestamp: …", "error_codes", "timestamp", "trace_id", "correlation_id", "error_uri"}` with
//!   real AADSTS codes: unknown tenant 90002, unknown client 700016, public client flows off
//!   7000218, unknown resource 500011, bad scope 70011, scope spanning two resources 700022,
//!   consent missing 65001, user not found 50034, wrong password 50126, locked 50053, disabled
//!   50057, password expired 50055, Conditional Access 53003, MFA required 50076, revoked grant
//!   50173, refresh token inactive 700082, unknown refresh token 9002313, device code pending
//!   70016 / expired 70019 / bad code 70018.
//! - One access token per resource; its scopes are every permission the app is consented for on
//!   that resource (as Microsoft does). Refresh tokens rotate on every use and the old one stays
//!   valid until revoked (admin revoke, password change) or 90 days after its own issue (the
//!   window setting): using a token does not extend it, only the rotated one starts anew.
//! - `suberror` and `claims` where Entra sends them: MFA on a silent refresh is
//!   `interaction_required` + `basic_action` + a claims challenge (ROPC gets `invalid_grant`),
//!   missing consent `consent_required`, revoked or expired grant `bad_token`, expired password
//!   `user_password_expired`.
//! - Only form-encoded bodies carry parameters (a JSON body fails with AADSTS900144); a device
//!   code polled sooner than its `interval` gets `slow_down`, and its interval grows by 5 s.
//! - Delegated tokens are opaque random strings. App-only (client credentials) access tokens are
//!   JWT-shaped like Entra's: the payload names the app and tenant and carries the application
//!   permissions as `roles` (no `scp`), which a client may read; the signature is random, so
//!   only this stand-in's lookup (as only the resource, for Entra's) can validate one.
//!
//! Test controls are methods on [`IdentityStandIn`], mirrored as JSON endpoints under
//! `/_control/...` (see [`IdentityControl`]) so a stack in another process can be driven.
//! Everything that changes behaviour is scoped to a tenant or a user, never global, because
//! tests share one stand-in and run in parallel. Each tenant has its own clock offset.
//!
//! Where things are: `model` (apps, users, issued tokens, failures and settings tests name) and
//! `state` (what the stand-in keeps behind its lock); `errors`, the AADSTS catalogue; the
//! endpoints: `token` (client authentication and the token responses), `grants` (what each
//! `grant_type` redeems), `scopes` (scope parsing and consent), `client_assertion`
//! (certificate credentials), `device_code`, `authorize` (the browser sign-in form) and
//! `introspection` (Dovecot's oauth2 passdbs); `controls`, the test controls as methods, and
//! `control_api`, the same over HTTP. This file holds the handle and the routes.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::json;

mod authorize;
mod client_assertion;
mod control_api;
mod controls;
mod device_code;
mod errors;
mod grants;
mod introspection;
mod model;
mod scopes;
mod state;
mod token;

pub use control_api::*;
pub use errors::MFA_POLICY_ID;
pub use model::*;
pub use state::ControlError;

use authorize::*;
use client_assertion::*;
use device_code::*;
use errors::*;
use grants::*;
use introspection::*;
use scopes::*;
use state::*;
use token::*;

/// Handle to a running identity stand-in. Cheap to clone; all clones share state.
#[derive(Clone)]
pub struct IdentityStandIn {
    /// e.g. `http://127.0.0.1:41234` (the "authority host" accounts point at).
    pub base_url: String,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for IdentityStandIn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdentityStandIn")
            .field("base_url", &self.base_url)
            .finish_non_exhaustive()
    }
}

fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/{tenant}/oauth2/v2.0/token", post(token_endpoint))
        .route(
            "/{tenant}/oauth2/v2.0/devicecode",
            post(devicecode_endpoint),
        )
        .route(
            "/{tenant}/oauth2/v2.0/authorize",
            get(authorize_page).post(authorize_submit),
        )
        .route("/introspect", post(introspect_post).get(introspect_get))
        .route("/introspect/mailbox", post(introspect_mailbox_post))
        .route("/_control/apps", post(control_app))
        .route("/_control/users", post(control_user))
        .route("/_control/users/revoke", post(control_revoke))
        .route(
            "/_control/users/change-password",
            post(control_change_password),
        )
        .route(
            "/_control/users/expire-refresh-tokens",
            post(control_expire_rt),
        )
        .route(
            "/_control/users/revoke-access-tokens",
            post(control_revoke_at),
        )
        .route("/_control/tenants/settings", post(control_settings))
        .route(
            "/_control/tenants/advance-clock",
            post(control_advance_clock),
        )
        .route("/_control/mailbox-grants", post(control_grant))
        .route("/_control/device-codes", get(control_list_device_codes))
        .route("/_control/device-codes/{action}", post(control_device_code))
        .route("/_control/failures", post(control_failure))
        .route("/_control/requests", get(control_requests))
        .route("/_control/health", get(|| async { "ok" }))
        .with_state(shared)
}
