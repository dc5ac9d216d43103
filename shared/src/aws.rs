//! AWS client construction. Endpoint, region and credentials come from the standard
//! environment (`AWS_ENDPOINT_URL`, `AWS_REGION`, ...), so the same code reaches real AWS and moto.
//!
//! Cold start: nothing here touches the network or the trust store.
//! - The SDK's default HTTPS client loads and parses the OS trust store when each SDK client is
//!   constructed (`validate_base_client_config` builds a connector on purpose, "so that native
//!   certs load at client initialization time"): with five clients (Secrets Manager twice,
//!   DynamoDB, SQS, and STS inside the credentials chain) that is most of a cold start's CPU.
//!   [`LazyHttpClient`] is the same client, built on the first request instead.
//! - In Lambda the credentials are in the environment (`AWS_ACCESS_KEY_ID`,
//!   `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`), the first place the default chain looks.
//!   When they are set, the environment provider is used directly instead of building the whole
//!   chain (profile files, web identity with its STS client, ECS, IMDS); elsewhere (a laptop
//!   with a profile or SSO) the default chain is used as before.

use std::sync::OnceLock;

use aws_smithy_runtime_api::client::http::{
    HttpClient, HttpConnectorSettings, SharedHttpClient, SharedHttpConnector,
};
use aws_smithy_runtime_api::client::runtime_components::{
    RuntimeComponents, RuntimeComponentsBuilder,
};
use aws_smithy_types::config_bag::ConfigBag;

/// Load the shared AWS config once per cold start (no I/O beyond reading the environment when
/// the credentials are in it).
pub async fn load_config() -> aws_config::SdkConfig {
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .http_client(LazyHttpClient::default());
    if credentials_in_environment(|name| std::env::var_os(name).is_some()) {
        loader = loader.credentials_provider(
            aws_config::environment::EnvironmentVariableCredentialsProvider::new(),
        );
    }
    loader.load().await
}

/// Whether the environment holds static credentials (as Lambda's does).
fn credentials_in_environment(is_set: impl Fn(&str) -> bool) -> bool {
    is_set("AWS_ACCESS_KEY_ID") && is_set("AWS_SECRET_ACCESS_KEY")
}

/// The SDK's default HTTPS client (hyper 1, rustls with aws-lc, proxy settings from the
/// environment), constructed on its first request rather than when an SDK client is built.
#[derive(Debug, Default)]
pub struct LazyHttpClient {
    inner: OnceLock<SharedHttpClient>,
}

impl LazyHttpClient {
    fn inner(&self) -> &SharedHttpClient {
        self.inner.get_or_init(default_https_client)
    }
}

/// What `aws-smithy-runtime`'s `default_https_client` builds (it is crate-private there).
fn default_https_client() -> SharedHttpClient {
    use aws_smithy_http_client::proxy::ProxyConfig;
    use aws_smithy_http_client::tls::{self, rustls_provider::CryptoMode};
    use aws_smithy_http_client::{Builder, ConnectorBuilder};
    Builder::new().build_with_connector_fn(move |settings, runtime_components| {
        let mut connector =
            ConnectorBuilder::default().tls_provider(tls::Provider::Rustls(CryptoMode::AwsLc));
        connector.set_connector_settings(settings.cloned());
        if let Some(components) = runtime_components {
            connector.set_sleep_impl(components.sleep_impl());
        }
        connector.set_proxy_config(Some(ProxyConfig::from_env()));
        connector.build()
    })
}

impl HttpClient for LazyHttpClient {
    fn http_connector(
        &self,
        settings: &HttpConnectorSettings,
        components: &RuntimeComponents,
    ) -> SharedHttpConnector {
        self.inner().http_connector(settings, components)
    }

    /// Deliberately nothing: the default client builds a connector (and loads the trust store)
    /// here; that waits for the first request.
    fn validate_base_client_config(
        &self,
        _: &RuntimeComponentsBuilder,
        _: &ConfigBag,
    ) -> Result<(), aws_smithy_runtime_api::box_error::BoxError> {
        Ok(())
    }

    fn validate_final_config(
        &self,
        components: &RuntimeComponents,
        cfg: &ConfigBag,
    ) -> Result<(), aws_smithy_runtime_api::box_error::BoxError> {
        self.inner().validate_final_config(components, cfg)
    }

    fn connector_metadata(
        &self,
    ) -> Option<aws_smithy_runtime_api::client::connector_metadata::ConnectorMetadata> {
        self.inner().connector_metadata()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn environment_credentials_need_both_keys() {
        assert!(credentials_in_environment(|_| true));
        assert!(!credentials_in_environment(|n| n == "AWS_ACCESS_KEY_ID"));
        assert!(!credentials_in_environment(|_| false));
    }

    #[test]
    fn the_lazy_client_builds_nothing_until_asked_for_a_connector() {
        let client = LazyHttpClient::default();
        client
            .validate_base_client_config(&RuntimeComponentsBuilder::new("test"), &ConfigBag::base())
            .unwrap();
        assert!(client.inner.get().is_none());
    }
}
