//! AWS client construction. Endpoint, region and credentials come from the standard
//! environment (`AWS_ENDPOINT_URL`, `AWS_REGION`, ...), so the same code reaches real AWS and moto.

/// Load the shared AWS config once per cold start.
pub async fn load_config() -> aws_config::SdkConfig {
    aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await
}
