//! The one place the AWS SDK is configured: timeouts, retries, endpoints.
//!
//! Endpoints, Region and credentials come from the SDK's standard chain, so
//! `AWS_ENDPOINT_URL_EC2`, `AWS_REGION`, `AWS_EC2_METADATA_SERVICE_ENDPOINT`, IRSA's
//! `AWS_ROLE_ARN`/`AWS_WEB_IDENTITY_TOKEN_FILE` and EKS Pod Identity all apply.

use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, SdkConfig};

#[derive(Clone, Copy, Debug)]
pub struct Retries {
    pub max_attempts: u32,
    pub initial_backoff: Duration,
}

pub async fn sdk_config(retries: Retries) -> SdkConfig {
    // Standard retries back off exponentially with full jitter on throttling,
    // 5xx and transient network errors.
    let retry = RetryConfig::standard()
        .with_max_attempts(retries.max_attempts)
        .with_initial_backoff(retries.initial_backoff)
        .with_max_backoff(Duration::from_secs(5));
    let timeouts = TimeoutConfig::builder()
        .connect_timeout(Duration::from_secs(2))
        .operation_attempt_timeout(Duration::from_secs(5))
        .operation_timeout(Duration::from_secs(30))
        .build();
    aws_config::defaults(BehaviorVersion::latest())
        .retry_config(retry)
        .timeout_config(timeouts)
        .load()
        .await
}
