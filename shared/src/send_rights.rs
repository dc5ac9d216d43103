//! Sending from a mailbox other than the signed-in user's own (a shared mailbox): which Graph
//! route the account uses, and which right is missing when Graph refuses.
//!
//! Exchange Online and Graph know two routes (Microsoft Graph docs, "Send Outlook messages from
//! another user"):
//!
//! | route | request | rights of the signed-in user | sent copy |
//! |---|---|---|---|
//! | [`SharedMailboxRoute::SendAs`] (default) | `POST /me/sendMail`, `from` = the shared mailbox | **Send As** (or Send on Behalf) on the mailbox | the user's Sent Items |
//! | [`SharedMailboxRoute::FullAccess`] | `POST /users/{mailbox}/sendMail` | **Full Access** *and* Send As on the mailbox, and the delegated **`Mail.Send.Shared`** permission in the token | the shared mailbox's Sent Items |
//!
//! The account secret's `shared_mailbox_route` picks the route; the token layer asks for
//! `Mail.Send.Shared` only for `full_access`. Graph's refusals are `403 ErrorSendAsDenied` (no
//! Send As) and `403 ErrorAccessDenied` (no `Mail.Send.Shared` in the token, or no Full Access:
//! the same code, told apart by the token's granted scopes), see [`diagnose`].

use crate::graph::SendAs;
use serde::{Deserialize, Serialize};

/// The delegated Graph permission `/users/{id}/sendMail` needs for another user's mailbox.
pub const SHARED_SEND_SCOPE: &str = "Mail.Send.Shared";

/// How an account sends mail whose From is a mailbox other than its own.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SharedMailboxRoute {
    /// `POST /me/sendMail` with `from` (or the MIME `From:`) set to the shared mailbox. Needs
    /// Send As on the mailbox; the token needs only `Mail.Send`.
    #[default]
    SendAs,
    /// `POST /users/{mailbox}/sendMail`. Needs Full Access plus Send As on the mailbox and
    /// `Mail.Send.Shared` in the token; the sent copy lands in the shared mailbox.
    FullAccess,
}

impl SharedMailboxRoute {
    /// The spelling in the account secret.
    pub fn as_str(self) -> &'static str {
        match self {
            SharedMailboxRoute::SendAs => "send_as",
            SharedMailboxRoute::FullAccess => "full_access",
        }
    }

    /// Parse the account secret's spelling; the error says what is allowed.
    pub fn parse(value: &str) -> Result<Self, String> {
        match value {
            "send_as" => Ok(SharedMailboxRoute::SendAs),
            "full_access" => Ok(SharedMailboxRoute::FullAccess),
            other => Err(format!(
                "expected \"send_as\" (POST /me/sendMail with from; needs Send As on the shared mailbox) or \"full_access\" (POST /users/{{mailbox}}/sendMail; needs Full Access, Send As and the Mail.Send.Shared permission), got {other:?}"
            )),
        }
    }

    /// Whether tokens for this route must carry [`SHARED_SEND_SCOPE`].
    pub fn needs_shared_scope(self) -> bool {
        self == SharedMailboxRoute::FullAccess
    }

    /// The sendMail endpoint for a mail from `from` (`None`: the signed-in user's own address).
    /// On the `send_as` route the message itself names the mailbox (`from` / `From:`).
    pub fn endpoint(self, from: Option<&str>) -> SendAs {
        match (self, from) {
            (SharedMailboxRoute::FullAccess, Some(mailbox)) => SendAs::User(mailbox.to_owned()),
            _ => SendAs::Me,
        }
    }
}

/// The right a refused send from `mailbox` lacks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MissingRight {
    /// Send As (or Send on Behalf) on the mailbox.
    SendAs {
        /// The mailbox the mail was from.
        mailbox: String,
    },
    /// Full Access on the mailbox (the `full_access` route).
    FullAccess {
        /// The mailbox in `/users/{mailbox}`.
        mailbox: String,
    },
    /// The `Mail.Send.Shared` permission is not in the token (not consented for the app).
    SharedScopeConsent,
    /// An app-only account: the application permission `Mail.Send` is missing from the token
    /// (`roles`), or Exchange Online scopes the app away from `mailbox` (RBAC for
    /// Applications, an application access policy).
    ApplicationMailSend {
        /// The mailbox in `/users/{mailbox}`.
        mailbox: String,
        /// Whether the token's `roles` are known to lack `Mail.Send` (else: the scope).
        role_missing: bool,
    },
}

impl std::fmt::Display for MissingRight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MissingRight::SendAs { mailbox } => write!(
                f,
                "the signed-in user lacks Send As on {mailbox}: grant it (Exchange admin center → Recipients → Mailboxes → {mailbox} → Delegation → Send as, or `Add-RecipientPermission {mailbox} -Trustee <user> -AccessRights SendAs`)"
            ),
            MissingRight::FullAccess { mailbox } => write!(
                f,
                "the signed-in user lacks Full Access on {mailbox} (needed by shared_mailbox_route \"full_access\"): grant it (`Add-MailboxPermission {mailbox} -User <user> -AccessRights FullAccess`), or set shared_mailbox_route to \"send_as\", which needs only Send As"
            ),
            MissingRight::ApplicationMailSend {
                mailbox,
                role_missing: true,
            } => write!(
                f,
                "the app-only token lacks the application permission Mail.Send: add Microsoft Graph → Application permissions → Mail.Send to the app registration and grant admin consent (or, with RBAC for Applications, `New-ManagementRoleAssignment -App <service principal> -Role \"Application Mail.Send\" -CustomResourceScope <scope>` covering {mailbox})"
            ),
            MissingRight::ApplicationMailSend { mailbox, .. } => write!(
                f,
                "the app may not send as {mailbox}: Exchange Online scopes it to other mailboxes (RBAC for Applications: add {mailbox} to the management scope of its \"Application Mail.Send\" role assignment, or the application access policy's group)"
            ),
            MissingRight::SharedScopeConsent => write!(
                f,
                "the token lacks {SHARED_SEND_SCOPE} (needed by shared_mailbox_route \"full_access\"): add the delegated Microsoft Graph permission {SHARED_SEND_SCOPE} to the app registration and grant admin consent, then run `mailbridge login`; or set shared_mailbox_route to \"send_as\""
            ),
        }
    }
}

/// Which right a refused app-only send from `mailbox` lacks: `403 ErrorAccessDenied` is the
/// missing `Mail.Send` application permission when the token's `roles` are known to lack it,
/// else a management scope (or access policy) that leaves the mailbox out.
pub fn diagnose_app_only(code: &str, mailbox: &str, roles: &[String]) -> Option<MissingRight> {
    (code == "ErrorAccessDenied").then(|| MissingRight::ApplicationMailSend {
        mailbox: mailbox.to_owned(),
        role_missing: !roles.iter().any(|r| r.eq_ignore_ascii_case("Mail.Send")),
    })
}

/// Which right a refused send lacks, from Graph's code, the route, the sending mailbox and the
/// permissions granted in the token. `None` when the refusal is not about those rights (or the
/// mailbox is the user's own).
pub fn diagnose(
    code: &str,
    route: SharedMailboxRoute,
    mailbox: &str,
    granted_scopes: &[String],
) -> Option<MissingRight> {
    match code {
        "ErrorSendAsDenied" => Some(MissingRight::SendAs {
            mailbox: mailbox.to_owned(),
        }),
        "ErrorAccessDenied" if route == SharedMailboxRoute::FullAccess => {
            let has_shared_scope = granted_scopes
                .iter()
                .any(|s| s.eq_ignore_ascii_case(SHARED_SEND_SCOPE));
            Some(if has_shared_scope {
                MissingRight::FullAccess {
                    mailbox: mailbox.to_owned(),
                }
            } else {
                MissingRight::SharedScopeConsent
            })
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_route_parses_and_names_both_values_when_wrong() {
        assert_eq!(
            SharedMailboxRoute::parse("send_as"),
            Ok(SharedMailboxRoute::SendAs)
        );
        assert_eq!(
            SharedMailboxRoute::parse("full_access"),
            Ok(SharedMailboxRoute::FullAccess)
        );
        let e = SharedMailboxRoute::parse("users").unwrap_err();
        assert!(
            e.contains("\"send_as\"") && e.contains("\"full_access\"") && e.contains("\"users\"")
        );
        assert_eq!(SharedMailboxRoute::default().as_str(), "send_as");
        let m = Some("help@contoso.com");
        assert_eq!(SharedMailboxRoute::SendAs.endpoint(m), SendAs::Me);
        assert_eq!(
            SharedMailboxRoute::FullAccess.endpoint(m),
            SendAs::User("help@contoso.com".into())
        );
        assert_eq!(SharedMailboxRoute::FullAccess.endpoint(None), SendAs::Me);
    }

    #[test]
    fn refusals_name_the_missing_right() {
        let shared = vec!["Mail.Send".to_owned(), "Mail.Send.Shared".to_owned()];
        let plain = vec!["Mail.Send".to_owned()];
        let m = "help@contoso.com";
        use SharedMailboxRoute::*;
        assert_eq!(
            diagnose("ErrorSendAsDenied", SendAs, m, &plain),
            Some(MissingRight::SendAs { mailbox: m.into() })
        );
        assert_eq!(
            diagnose("ErrorAccessDenied", FullAccess, m, &shared),
            Some(MissingRight::FullAccess { mailbox: m.into() })
        );
        assert_eq!(
            diagnose("ErrorAccessDenied", FullAccess, m, &plain),
            Some(MissingRight::SharedScopeConsent)
        );
        // on the send_as route an access denial is about Mail.Send itself, not a shared right
        assert_eq!(diagnose("ErrorAccessDenied", SendAs, m, &plain), None);
        assert_eq!(
            diagnose("ErrorInvalidRecipients", FullAccess, m, &shared),
            None
        );
        let line = MissingRight::FullAccess { mailbox: m.into() }.to_string();
        assert!(line.contains("Full Access") && line.contains("Add-MailboxPermission"));
        assert!(!line.contains('\n'));
    }
}
