//! The one place the AWS SDK is configured: timeouts, retries, endpoints, and what a
//! user reads when a call fails.
//!
//! Endpoints, Region and credentials come from the SDK's standard chain, so
//! `AWS_ENDPOINT_URL_EC2`, `AWS_REGION`, `AWS_EC2_METADATA_SERVICE_ENDPOINT`, IRSA's
//! `AWS_ROLE_ARN`/`AWS_WEB_IDENTITY_TOKEN_FILE` and EKS Pod Identity all apply.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, ConfigLoader, SdkConfig};
use aws_sdk_ec2::config::interceptors::{
    BeforeTransmitInterceptorContextRef, FinalizerInterceptorContextRef,
};
use aws_sdk_ec2::config::{ConfigBag, Intercept, RuntimeComponents};
use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::orchestrator::Metadata;
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use crate::label_values;

use super::Action;
use super::error::cause;

#[derive(Clone, Copy, Debug)]
pub struct Retries {
    pub max_attempts: u32,
    pub initial_backoff: Duration,
}

/// The SDK's settings before the environment is read; tests add their endpoint and
/// credentials to it and so run with production's timeouts and retries.
pub fn loader(retries: Retries) -> ConfigLoader {
    // Standard retries back off exponentially with full jitter on throttling,
    // 5xx and transient network errors.
    let retry = RetryConfig::standard()
        .with_max_attempts(retries.max_attempts.max(1))
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
}

/// `loader` with only a named profile's credentials (static keys, `role_arn` with a
/// source profile, a web identity token; not SSO or `credential_process`, which this
/// build of aws-config leaves out). The default chain
/// reads the environment's keys before any profile, so naming the profile alone would
/// let them stand in for the role the profile names.
pub fn with_profile(loader: ConfigLoader, profile: &str) -> ConfigLoader {
    let credentials = aws_config::profile::ProfileFileCredentialsProvider::builder()
        .profile_name(profile)
        .build();
    loader
        .profile_name(profile)
        .credentials_provider(credentials)
}

/// The EC2 client, reporting its attempts to `attempts`.
pub fn ec2_client(sdk: &SdkConfig, attempts: &Attempts) -> aws_sdk_ec2::Client {
    let conf = aws_sdk_ec2::config::Builder::from(sdk)
        .interceptor(attempts.clone())
        .build();
    aws_sdk_ec2::Client::from_conf(conf)
}

/// What the SDK's attempts last ran into. The SDK retries inside one call, so a call
/// that a deadline cuts short returns no error of its own: this keeps the cause. It
/// also counts every attempt by action and result (`ipmgmt_<component>_ec2_attempts_total`).
#[derive(Clone, Debug, Default)]
pub struct Attempts {
    state: Arc<Mutex<AttemptState>>,
    counted: Family<AttemptLabels, Counter>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AttemptLabels {
    action: Action,
    result: AttemptResult,
}

/// How one attempt ended.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
enum AttemptResult {
    Ok,
    /// EC2's RequestLimitExceeded (HTTP 503) or a 429.
    Throttled,
    ServerError,
    ClientError,
    /// No HTTP answer: connect failure, timeout.
    NoAnswer,
}

impl AttemptResult {
    fn of(status: Option<u16>) -> AttemptResult {
        match status {
            None => AttemptResult::NoAnswer,
            Some(200..=299) => AttemptResult::Ok,
            Some(429 | 503) => AttemptResult::Throttled,
            Some(500..) => AttemptResult::ServerError,
            Some(_) => AttemptResult::ClientError,
        }
    }
}

label_values!(AttemptResult {
    Ok => "ok",
    Throttled => "throttled",
    ServerError => "server_error",
    ClientError => "client_error",
    NoAnswer => "no_answer",
});

impl EncodeLabelValue for Action {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        EncodeLabelValue::encode(&self.name(), encoder)
    }
}

#[derive(Debug, Default)]
struct AttemptState {
    in_flight: Option<(String, Instant)>,
    last_failure: Option<String>,
}

impl Attempts {
    fn state(&self) -> std::sync::MutexGuard<'_, AttemptState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `<component>_ec2_attempts_total`, the component's prefix from the registry.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "ec2_attempts",
            "EC2 request attempts (retries included), by action and result",
            self.counted.clone(),
        );
    }

    /// The same family under a name of its own (`<name>_total`): an old name kept
    /// while dashboards move to the new one.
    pub fn register_as(&self, registry: &mut Registry, name: &str, help: &str) {
        registry.register(name, help, self.counted.clone());
    }

    /// One line on the latest attempts: the one still waiting, the last that failed.
    pub fn summary(&self) -> Option<String> {
        let state = self.state();
        let waiting = state.in_flight.as_ref().map(|(op, since)| {
            format!(
                "{op} had no answer from EC2 after {:.1}s",
                since.elapsed().as_secs_f64()
            )
        });
        let failed = state
            .last_failure
            .as_ref()
            .map(|f| format!("the last failed attempt: {f}"));
        match (waiting, failed) {
            (None, None) => None,
            (Some(w), None) => Some(w),
            (None, Some(f)) => Some(f),
            (Some(w), Some(f)) => Some(format!("{w}; {f}")),
        }
    }
}

fn operation(cfg: &ConfigBag) -> String {
    cfg.load::<Metadata>()
        .map_or_else(|| "EC2 call".to_owned(), |m| m.name().to_owned())
}

impl Intercept for Attempts {
    fn name(&self) -> &'static str {
        "ipmgr::aws::Attempts"
    }

    fn read_before_attempt(
        &self,
        _ctx: &BeforeTransmitInterceptorContextRef<'_>,
        _rc: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        self.state().in_flight = Some((operation(cfg), Instant::now()));
        Ok(())
    }

    fn read_after_attempt(
        &self,
        ctx: &FinalizerInterceptorContextRef<'_>,
        _rc: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let status = ctx.response().map(|r| r.status().as_u16());
        let action = cfg
            .load::<Metadata>()
            .and_then(|m| Action::ALL.into_iter().find(|a| a.name() == m.name()));
        if let Some(action) = action {
            let result = AttemptResult::of(status);
            self.counted
                .get_or_create(&AttemptLabels { action, result })
                .inc();
        }
        let mut state = self.state();
        state.in_flight = None;
        if let Some(Err(e)) = ctx.output_or_error() {
            let what = match ctx.response() {
                Some(r) => format!("HTTP {}", r.status().as_u16()),
                None => cause(e),
            };
            state.last_failure = Some(format!("{}: {what}", operation(cfg)));
        }
        Ok(())
    }
}

/// A wait before a retry: between half of `backoff` and all of it, at random, so that
/// pods throttled together do not retry together. Never longer than `backoff`.
pub fn jittered(backoff: Duration) -> Duration {
    use std::hash::{BuildHasher, Hasher};
    // A fresh RandomState is randomly keyed: enough randomness to spread retries.
    let random = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    let half = backoff / 2;
    half + half.mul_f64((random % 1_000_000) as f64 / 1_000_000.0)
}
