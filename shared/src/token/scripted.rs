//! [`ScriptedTokens`]: an [`AccessTokenSource`] for tests of code that takes tokens (like the
//! in-memory stores beside the real ones): a fresh token on every call, a failure scripted per
//! account, calls and invalidations counted.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use async_trait::async_trait;

use super::{AccessToken, AccessTokenSource, Audience, TokenError};
use crate::send_rights::SharedMailboxRoute;

/// The error an account's token request gets, from the account's name.
pub type TokenFailure = fn(&str) -> TokenError;

/// Tokens on demand (`token-0`, `token-1`, …, valid for an hour), except for the accounts given
/// a [`TokenFailure`].
#[derive(Default)]
pub struct ScriptedTokens {
    /// Token requests so far (failed ones included).
    pub calls: AtomicUsize,
    /// [`AccessTokenSource::invalidate`] calls so far.
    pub invalidations: AtomicUsize,
    /// Account → the error its requests get.
    pub failing: Mutex<HashMap<String, TokenFailure>>,
    /// The shared mailbox route every token carries.
    pub route: SharedMailboxRoute,
}

impl ScriptedTokens {
    /// Requests for `account` fail with `failure(account)` from now on.
    pub fn fail(&self, account: &str, failure: TokenFailure) {
        self.failing
            .lock()
            .expect("scripted tokens lock")
            .insert(account.to_owned(), failure);
    }
}

#[async_trait]
impl AccessTokenSource for ScriptedTokens {
    async fn access_token(
        &self,
        account: &str,
        audience: Audience,
    ) -> Result<AccessToken, TokenError> {
        let n = self.calls.fetch_add(1, Ordering::SeqCst);
        if let Some(failure) = self
            .failing
            .lock()
            .expect("scripted tokens lock")
            .get(account)
        {
            return Err(failure(account));
        }
        let mut token = AccessToken::new(
            format!("token-{n}").into(),
            chrono::Utc::now() + chrono::Duration::hours(1),
            audience,
        );
        token.shared_mailbox_route = self.route;
        Ok(token)
    }

    fn invalidate(&self, _account: &str, _audience: Audience) {
        self.invalidations.fetch_add(1, Ordering::SeqCst);
    }
}
