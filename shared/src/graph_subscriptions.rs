//! Graph change-notification subscriptions of one mailbox (`/subscriptions`), for push
//! (docs/push.md): create, renew (`PATCH expirationDateTime`, which also reauthorizes), delete.
//!
//! Microsoft's rules the callers follow: `notificationUrl` is https (Graph validates it with a
//! `validationToken` request before the creation succeeds, 400 otherwise); `clientState` at most
//! 128 characters; Outlook messages without resource data live at most 10,080 minutes
//! ([`crate::push::MAX_SUBSCRIPTION_MINUTES`]); creating needs `Mail.Read` (or more) on the
//! mailbox. Requests go through [`GraphMailbox`]'s retrying call, so 429/5xx are retried within
//! the deadline.

use chrono::{DateTime, Utc};
use tokio::time::Instant;

use crate::graph::GraphError;
use crate::graph_mail::{Body, GraphMailbox, bad_answer};

/// A subscription Graph created.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CreatedSubscription {
    /// Its id.
    pub id: String,
    /// When it expires, as Graph set it.
    pub expires_at: DateTime<Utc>,
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct SubscriptionAnswer {
    id: String,
    expiration_date_time: DateTime<Utc>,
}

impl GraphMailbox {
    /// `{base}/subscriptions[/{id}]`.
    fn subscriptions_url(&self, id: Option<&str>) -> url::Url {
        let mut url = self.base_url().clone();
        {
            let mut path = url.path_segments_mut().expect("checked in with_http");
            path.pop_if_empty().push("subscriptions");
            if let Some(id) = id {
                path.push(id);
            }
        }
        url
    }

    /// The resource of new messages in the folder with id `folder_id` (`inbox` or an id).
    pub fn messages_resource(&self, folder_id: &str) -> String {
        format!(
            "/users/{}/mailFolders('{}')/messages",
            self.mailbox_address(),
            folder_id
        )
    }

    /// Subscribe `notification_url` (also the lifecycle URL) to messages created in `resource`.
    pub async fn create_subscription(
        &self,
        resource: &str,
        notification_url: &str,
        client_state: &str,
        expires: DateTime<Utc>,
        deadline: Instant,
    ) -> Result<CreatedSubscription, GraphError> {
        let body = Body::Json(serde_json::json!({
            "changeType": "created",
            "notificationUrl": notification_url,
            "lifecycleNotificationUrl": notification_url,
            "resource": resource,
            "expirationDateTime": expires.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            "clientState": client_state,
            "latestSupportedTlsVersion": "v1_2",
        }));
        let (_, answer) = self
            .call(
                reqwest::Method::POST,
                self.subscriptions_url(None),
                body,
                None,
                deadline,
            )
            .await?;
        let answer: SubscriptionAnswer =
            serde_json::from_slice(&answer).map_err(|e| bad_answer(&e))?;
        Ok(CreatedSubscription {
            id: answer.id,
            expires_at: answer.expiration_date_time,
        })
    }

    /// Renew (and so reauthorize) subscription `id` until `expires`; the expiry Graph set.
    pub async fn renew_subscription(
        &self,
        id: &str,
        expires: DateTime<Utc>,
        deadline: Instant,
    ) -> Result<DateTime<Utc>, GraphError> {
        let body = Body::Json(serde_json::json!({
            "expirationDateTime": expires.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        }));
        let (_, answer) = self
            .call(
                reqwest::Method::PATCH,
                self.subscriptions_url(Some(id)),
                body,
                None,
                deadline,
            )
            .await?;
        let answer: SubscriptionAnswer =
            serde_json::from_slice(&answer).map_err(|e| bad_answer(&e))?;
        Ok(answer.expiration_date_time)
    }

    /// Delete subscription `id`; one already gone is fine.
    pub async fn delete_subscription(&self, id: &str, deadline: Instant) -> Result<(), GraphError> {
        match self
            .call(
                reqwest::Method::DELETE,
                self.subscriptions_url(Some(id)),
                Body::None,
                None,
                deadline,
            )
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.is_item_not_found() => Ok(()),
            Err(e) => Err(e),
        }
    }
}
