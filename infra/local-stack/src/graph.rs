//! Microsoft Graph stand-in: `POST /v1.0/me/sendMail` and `/v1.0/users/{id}/sendMail`.
//!
//! Placeholder (answers 501 to everything) until the sender's issue replaces the body; the
//! signatures below are the agreed contract used by [`crate::LocalStack`].

use std::sync::Arc;

use crate::MailDrop;
use crate::identity::IdentityStandIn;

/// Handle to a running Graph stand-in.
#[derive(Clone)]
pub struct GraphStandIn {
    /// e.g. `http://127.0.0.1:41236` (the "Graph host" accounts point at).
    pub base_url: String,
}

impl std::fmt::Debug for GraphStandIn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GraphStandIn")
            .field("base_url", &self.base_url)
            .finish()
    }
}

impl GraphStandIn {
    /// Bind 127.0.0.1:0 and serve on the current tokio runtime. Tokens are checked against
    /// `identity`; sent mail is delivered into `mail_drop` (Dovecot) when given.
    pub async fn start(
        identity: IdentityStandIn,
        mail_drop: Option<Arc<dyn MailDrop>>,
    ) -> anyhow::Result<Self> {
        let _ = (identity, mail_drop);
        let base_url = crate::serve_not_implemented("graph stand-in").await?;
        Ok(GraphStandIn { base_url })
    }
}
