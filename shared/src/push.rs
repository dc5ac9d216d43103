//! Push (docs/push.md): what Graph change notifications and the poll-request queue carry, and
//! the `clientState` secret of a subscription.
//!
//! The state-table records behind push are in [`crate::state_table`]: the subscriptions
//! ([`crate::state_table::subscription`]) and the poll-request gate
//! ([`crate::state_table::poll_request`]).

use base64::Engine as _;
use sha2::Digest as _;

/// Graph's longest subscription to Outlook messages without resource data: 10,080 minutes.
pub const MAX_SUBSCRIPTION_MINUTES: i64 = 10_080;

/// The longest `clientState` Graph accepts (characters).
pub const MAX_CLIENT_STATE_CHARS: usize = 128;

/// The lifecycle events Graph sends for Outlook subscriptions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum LifecycleEvent {
    /// Reauthorize (renew) the subscription or notifications stop.
    ReauthorizationRequired,
    /// Graph removed the subscription: create a new one, then resync.
    SubscriptionRemoved,
    /// Some notifications were not delivered: resync.
    Missed,
}

impl LifecycleEvent {
    /// Graph's name for it.
    pub fn as_str(self) -> &'static str {
        match self {
            LifecycleEvent::ReauthorizationRequired => "reauthorizationRequired",
            LifecycleEvent::SubscriptionRemoved => "subscriptionRemoved",
            LifecycleEvent::Missed => "missed",
        }
    }
}

/// The body of one message on the poll-request queue: poll `mailbox` now, after doing what a
/// lifecycle event asks of its subscription.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PollRequestMessage {
    /// The mailbox to poll (configuration name).
    pub mailbox: String,
    /// A lifecycle event to act on before polling.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lifecycle: Option<LifecycleEvent>,
    /// The subscription the lifecycle event is about.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subscription_id: Option<String>,
}

/// A fresh `clientState` secret: 32 random bytes, base64url (43 characters).
pub fn new_client_state() -> String {
    let bytes: [u8; 32] = rand::random();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Hex SHA-256 of a `clientState`.
pub fn client_state_sha256(client_state: &str) -> String {
    hex::encode(sha2::Sha256::digest(client_state.as_bytes()))
}

/// Whether `given` is the `clientState` whose hash is `expected_sha256`, compared in constant
/// time (of the hashes: how long the comparison takes says nothing about the secret).
pub fn client_state_matches(expected_sha256: &str, given: &str) -> bool {
    use subtle::ConstantTimeEq as _;
    let given = sha2::Sha256::digest(given.as_bytes());
    match hex::decode(expected_sha256) {
        Ok(expected) if expected.len() == given.len() => expected.ct_eq(given.as_slice()).into(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_state_is_checked_against_its_hash() {
        let secret = new_client_state();
        assert!(secret.len() <= MAX_CLIENT_STATE_CHARS);
        assert_eq!(secret.len(), 43);
        let hash = client_state_sha256(&secret);
        assert!(client_state_matches(&hash, &secret));
        assert!(!client_state_matches(&hash, &format!("{secret}x")));
        assert!(!client_state_matches(&hash, ""));
        assert!(!client_state_matches("not hex", &secret));
        assert_ne!(new_client_state(), secret);
    }

    #[test]
    fn poll_request_messages_round_trip() {
        let plain = PollRequestMessage {
            mailbox: "helpdesk".into(),
            lifecycle: None,
            subscription_id: None,
        };
        let json = serde_json::to_string(&plain).unwrap();
        assert_eq!(json, r#"{"mailbox":"helpdesk"}"#);
        let removed: PollRequestMessage = serde_json::from_str(
            r#"{"mailbox":"m","lifecycle":"subscriptionRemoved","subscription_id":"s"}"#,
        )
        .unwrap();
        assert_eq!(removed.lifecycle, Some(LifecycleEvent::SubscriptionRemoved));
        assert!(serde_json::from_str::<PollRequestMessage>(r#"{"mailbox":"m","x":1}"#).is_err());
    }
}
