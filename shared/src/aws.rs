//! AWS client construction. Endpoint, region and credentials come from the standard
//! environment (`AWS_ENDPOINT_URL`, `AWS_REGION`, ...), so the same code reaches real AWS and moto.
//!
//! Cold start: nothing here touches the network or the trust store.
//! - In Lambda the region is in `AWS_REGION`, the first place the default region chain looks;
//!   when it is set it is used directly, without building the chain.
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
//!
//! Endpoint variables (`AWS_ENDPOINT_URL`, `AWS_ENDPOINT_URL_<SERVICE>`) are checked first: the
//! SDK panics on an empty one ("URL was unset") and silently ignores one that is not a URL, so
//! the functions would either crash or reach real AWS instead of the intended endpoint. Either
//! is a configuration error naming the variable ([`AwsConfigError`]).

use std::sync::{Arc, OnceLock};

use aws_smithy_runtime_api::client::http::{
    HttpClient, HttpConnectorSettings, SharedHttpClient, SharedHttpConnector,
};
use aws_smithy_runtime_api::client::runtime_components::{
    RuntimeComponents, RuntimeComponentsBuilder,
};
use aws_smithy_types::config_bag::ConfigBag;

/// The SDK configuration [`load_config`] gives, for the crates that build clients from it.
pub use aws_config::SdkConfig;

/// A problem with the AWS settings in the environment, found before any client is built.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AwsConfigError {
    /// Set to an empty (or blank) value.
    #[error(
        "{variable} is set but empty: unset it to reach AWS's own endpoints, or set it to an \
         endpoint URL such as http://127.0.0.1:5000"
    )]
    EmptyEndpointUrl {
        /// `AWS_ENDPOINT_URL` or `AWS_ENDPOINT_URL_<SERVICE>`.
        variable: String,
    },
    /// Set to something that is not an absolute http(s) URL.
    #[error(
        "{variable} is not an http(s) URL ({value:?}); expected e.g. \
         https://sqs.eu-west-1.amazonaws.com or http://127.0.0.1:5000"
    )]
    InvalidEndpointUrl {
        /// `AWS_ENDPOINT_URL` or `AWS_ENDPOINT_URL_<SERVICE>`.
        variable: String,
        /// What it is set to.
        value: String,
    },
}

impl crate::error::Classify for AwsConfigError {
    fn class(&self) -> crate::error::ErrorClass {
        crate::error::ErrorClass::Permanent
    }
}

/// Load the shared AWS config once per cold start (no I/O beyond reading the environment when
/// the credentials are in it). Fails when an endpoint variable is empty or not a URL.
pub async fn load_config() -> Result<aws_config::SdkConfig, AwsConfigError> {
    check_endpoint_urls(std::env::vars_os().map(|(k, v)| {
        (
            k.to_string_lossy().into_owned(),
            v.to_string_lossy().into_owned(),
        )
    }))?;
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .http_client(LazyHttpClient::default());
    if credentials_in_environment(|name| std::env::var_os(name).is_some()) {
        loader = loader.credentials_provider(
            aws_config::environment::EnvironmentVariableCredentialsProvider::new(),
        );
    }
    // The default region chain looks at `AWS_REGION` first too; when Lambda has set it, use it
    // without building the chain (profile files, IMDS).
    if let Some(region) = region_in_environment(|name| std::env::var(name).ok()) {
        loader = loader.region(aws_config::Region::new(region));
    }
    Ok(loader.load().await)
}

/// `AWS_ENDPOINT_URL` and every `AWS_ENDPOINT_URL_<SERVICE>` among `vars` must be an absolute
/// http(s) URL when set.
fn check_endpoint_urls(
    vars: impl IntoIterator<Item = (String, String)>,
) -> Result<(), AwsConfigError> {
    let mut endpoint_vars: Vec<(String, String)> = vars
        .into_iter()
        .filter(|(name, _)| name == "AWS_ENDPOINT_URL" || name.starts_with("AWS_ENDPOINT_URL_"))
        .collect();
    endpoint_vars.sort();
    for (variable, value) in endpoint_vars {
        if value.trim().is_empty() {
            return Err(AwsConfigError::EmptyEndpointUrl { variable });
        }
        let is_http_url = url::Url::parse(&value)
            .is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some());
        if !is_http_url {
            return Err(AwsConfigError::InvalidEndpointUrl { variable, value });
        }
    }
    Ok(())
}

/// An AWS SDK client (`aws_sdk_*::Client`) built from the shared config on first use, once per
/// process; dereferences to the client. Cloning shares the one client.
///
/// ```ignore
/// let sqs = LazyClient::new(&aws, aws_sdk_sqs::Client::new); // nothing built yet
/// sqs.send_message() /* ← built here */ .queue_url(url).send().await?;
/// ```
pub struct LazyClient<C> {
    inner: Arc<LazyClientInner<C>>,
}

struct LazyClientInner<C> {
    client: OnceLock<C>,
    /// `None` once built from an existing client ([`From`]).
    config: Option<aws_config::SdkConfig>,
    build: fn(&aws_config::SdkConfig) -> C,
}

impl<C> LazyClient<C> {
    /// A client that `build` (e.g. `aws_sdk_sqs::Client::new`) makes from `config` when it is
    /// first used.
    pub fn new(config: &aws_config::SdkConfig, build: fn(&aws_config::SdkConfig) -> C) -> Self {
        LazyClient {
            inner: Arc::new(LazyClientInner {
                client: OnceLock::new(),
                config: Some(config.clone()),
                build,
            }),
        }
    }

    /// The client, built now if this is its first use.
    pub fn get(&self) -> &C {
        let inner = &*self.inner;
        inner.client.get_or_init(|| {
            let config = inner
                .config
                .as_ref()
                .expect("a LazyClient without a config was built from a client");
            (inner.build)(config)
        })
    }

    /// Whether the client has been built yet.
    pub fn is_built(&self) -> bool {
        self.inner.client.get().is_some()
    }
}

/// An already-built client (tests, the operator CLI).
impl<C> From<C> for LazyClient<C> {
    fn from(client: C) -> Self {
        LazyClient {
            inner: Arc::new(LazyClientInner {
                client: OnceLock::from(client),
                config: None,
                build: |_| unreachable!("a LazyClient built from a client is never rebuilt"),
            }),
        }
    }
}

impl<C> std::ops::Deref for LazyClient<C> {
    type Target = C;
    fn deref(&self) -> &C {
        self.get()
    }
}

impl<C> Clone for LazyClient<C> {
    fn clone(&self) -> Self {
        LazyClient {
            inner: self.inner.clone(),
        }
    }
}

impl<C> std::fmt::Debug for LazyClient<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LazyClient")
            .field("client", &std::any::type_name::<C>())
            .field("built", &self.is_built())
            .finish()
    }
}

/// `AWS_REGION` when it is set and not blank (Lambda always sets it).
fn region_in_environment(var: impl Fn(&str) -> Option<String>) -> Option<String> {
    var("AWS_REGION")
        .map(|r| r.trim().to_owned())
        .filter(|r| !r.is_empty())
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

    fn vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn an_empty_endpoint_url_is_a_configuration_error_naming_it() {
        for (name, value) in [
            ("AWS_ENDPOINT_URL", ""),
            ("AWS_ENDPOINT_URL", "  "),
            ("AWS_ENDPOINT_URL_SQS", ""),
        ] {
            let err = check_endpoint_urls(vars(&[("AWS_REGION", "eu-west-1"), (name, value)]))
                .unwrap_err();
            assert_eq!(
                err,
                AwsConfigError::EmptyEndpointUrl {
                    variable: name.into()
                }
            );
            assert!(
                err.to_string()
                    .starts_with(&format!("{name} is set but empty"))
            );
        }
    }

    #[test]
    fn an_endpoint_url_that_is_not_an_http_url_is_refused() {
        for value in [
            "localhost:5000",
            "127.0.0.1:5000",
            "not a url",
            "ftp://example.com",
        ] {
            let err =
                check_endpoint_urls(vars(&[("AWS_ENDPOINT_URL_DYNAMODB", value)])).unwrap_err();
            assert!(
                err.to_string()
                    .starts_with("AWS_ENDPOINT_URL_DYNAMODB is not an http(s) URL"),
                "{value}: {err}"
            );
        }
    }

    #[test]
    fn endpoint_urls_that_are_urls_or_unset_are_accepted() {
        assert_eq!(check_endpoint_urls(vars(&[])), Ok(()));
        assert_eq!(
            check_endpoint_urls(vars(&[
                ("AWS_ENDPOINT_URL", "http://127.0.0.1:5000"),
                (
                    "AWS_ENDPOINT_URL_SQS",
                    "https://sqs.eu-west-1.amazonaws.com/"
                ),
                ("AWS_REGION", ""),
            ])),
            Ok(())
        );
    }

    #[test]
    fn environment_credentials_need_both_keys() {
        assert!(credentials_in_environment(|_| true));
        assert!(!credentials_in_environment(|n| n == "AWS_ACCESS_KEY_ID"));
        assert!(!credentials_in_environment(|_| false));
    }

    fn sdk_config(region: &'static str) -> aws_config::SdkConfig {
        aws_config::SdkConfig::builder()
            .behavior_version(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new(region))
            .build()
    }

    #[test]
    fn the_region_comes_from_aws_region_when_it_is_set() {
        let env = |value: &'static str| {
            move |name: &str| (name == "AWS_REGION").then(|| value.to_owned())
        };
        assert_eq!(
            region_in_environment(env("eu-west-1")).as_deref(),
            Some("eu-west-1")
        );
        assert_eq!(region_in_environment(env(" ")), None);
        assert_eq!(region_in_environment(|_| None), None);
    }

    #[test]
    fn a_lazy_sdk_client_is_built_on_first_use_and_shared_by_clones() {
        let config = sdk_config("eu-west-1");
        let client = LazyClient::new(&config, aws_sdk_secretsmanager::Client::new);
        let clone = client.clone();
        assert!(!client.is_built());
        assert_eq!(
            clone.config().region().map(|r| r.as_ref()),
            Some("eu-west-1")
        );
        assert!(client.is_built(), "the clone shares the client it built");
        assert!(std::ptr::eq(client.get(), clone.get()));
    }

    #[test]
    fn a_lazy_client_from_a_built_client_is_that_client() {
        let config = sdk_config("eu-west-1");
        let client: LazyClient<_> = aws_sdk_secretsmanager::Client::new(&config).into();
        assert!(client.is_built());
        assert!(format!("{client:?}").contains("built: true"));
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
