//! The flags of what goes into pods, checked into the injector's `Config` so that
//! every patch it yields is valid.

use std::collections::BTreeMap;

use ipmgmt_common::ipmgr_env;

use crate::inject::{self, Config, Mode, Quantity, Resources};

use super::env::{is_env_name, split_env};

/// What the webhook puts into pods.
#[derive(clap::Args, Debug, Clone)]
pub struct InjectArgs {
    /// Image of the IP manager (ipmgr) to inject.
    #[arg(long, env = "IPMGMT_IMAGE")]
    pub image: String,

    /// imagePullPolicy of the injected container.
    #[arg(long, env = "IPMGMT_IMAGE_PULL_POLICY", default_value = "IfNotPresent",
          value_parser = ["Always", "IfNotPresent", "Never"])]
    pub image_pull_policy: String,

    /// Name of the injected container; a pod that already has it is left alone.
    #[arg(long, env = "IPMGMT_CONTAINER_NAME", default_value = "aws-ip-mgmt")]
    pub container_name: String,

    /// Mode for pods whose `ipmgmt.aws/mode` annotation is present but empty.
    #[arg(long, env = "IPMGMT_DEFAULT_MODE", value_enum, default_value_t = Mode::Init)]
    pub default_mode: Mode,

    /// Path of the ipmgr binary inside the image.
    #[arg(
        long,
        env = "IPMGMT_IPMGR_PATH",
        default_value = "/usr/local/bin/ipmgr"
    )]
    pub ipmgr_path: String,

    /// Inject sidecar mode as a regular container gated by a postStart hook, for
    /// clusters without native sidecars (before 1.29).
    #[arg(long, env = "IPMGMT_CLASSIC_SIDECAR")]
    pub classic_sidecar: bool,

    /// AWS_REGION for the IP manager, so it needs no IMDS to find it.
    #[arg(long, env = "IPMGMT_REGION")]
    pub region: Option<String>,

    /// AWS_EC2_METADATA_SERVICE_ENDPOINT for the IP manager.
    #[arg(long, env = "IPMGMT_IMDS_ENDPOINT")]
    pub imds_endpoint: Option<String>,

    /// AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE for the IP manager (IPv6 on IPv6-only nodes).
    #[arg(long, env = "IPMGMT_IMDS_ENDPOINT_MODE", value_parser = ["IPv4", "IPv6"])]
    pub imds_endpoint_mode: Option<String>,

    /// Tell the IP manager not to try IMDS (nodes with hop limit 1); it then needs --region.
    #[arg(long, env = "IPMGMT_IMDS_DISABLED")]
    pub imds_disabled: bool,

    /// IAM role (IRSA) for the IP manager; the pod annotation ipmgmt.aws/role-arn
    /// overrides it. Unset: the node role or EKS Pod Identity applies.
    #[arg(long, env = "IPMGMT_ROLE_ARN")]
    pub role_arn: Option<String>,

    /// Audience of the projected IRSA token.
    #[arg(
        long,
        env = "IPMGMT_TOKEN_AUDIENCE",
        default_value = "sts.amazonaws.com"
    )]
    pub token_audience: String,

    /// Lifetime of the projected IRSA token (kubelet refreshes it).
    #[arg(long, env = "IPMGMT_TOKEN_EXPIRATION_SECONDS", default_value_t = 86400,
          value_parser = clap::value_parser!(u32).range(600..))]
    pub token_expiration_seconds: u32,

    /// CPU request of the injected container.
    #[arg(long, env = "IPMGMT_CPU_REQUEST", default_value = "10m")]
    pub cpu_request: String,

    /// Memory request of the injected container.
    #[arg(long, env = "IPMGMT_MEMORY_REQUEST", default_value = "16Mi")]
    pub memory_request: String,

    /// CPU limit of the injected container; empty for none.
    #[arg(long, env = "IPMGMT_CPU_LIMIT", default_value = "100m")]
    pub cpu_limit: String,

    /// Memory limit of the injected container; empty for none.
    #[arg(long, env = "IPMGMT_MEMORY_LIMIT", default_value = "64Mi")]
    pub memory_limit: String,

    /// UID and GID the injected container runs as (never 0).
    #[arg(long, env = "IPMGMT_RUN_AS_USER", default_value_t = 65532,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub run_as_user: u32,

    /// Seconds the sidecar may take to assign the pod's addresses before its startup
    /// probe fails.
    #[arg(long, env = "IPMGMT_STARTUP_TIMEOUT_SECONDS", default_value_t = 120,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub startup_timeout_seconds: u32,

    /// Seconds a sidecar's release may take after SIGTERM (IPMGR_RELEASE_TIMEOUT_SECONDS).
    /// A classic sidecar's release delay is computed from it, so that the release ends
    /// about 5 s before kubelet's SIGKILL.
    #[arg(long, env = "IPMGMT_IPMGR_RELEASE_TIMEOUT_SECONDS",
          default_value_t = ipmgr_env::DEFAULT_RELEASE_TIMEOUT_SECONDS,
          value_parser = clap::value_parser!(u32).range(1..=60))]
    pub ipmgr_release_timeout_seconds: u32,

    /// Extra NAME=VALUE environment for the IP manager (repeatable), e.g.
    /// IPMGR_LOG_FORMAT=json. One value may hold several, comma-separated: a comma
    /// followed by an upper-case NAME= starts the next variable, any other comma belongs
    /// to the value (IPMGR_LOG_LEVEL=info,aws_config=warn is one variable). What the
    /// webhook sets for a pod (downward API, IPMGR_READY_FILE, annotations) wins over
    /// the same name here.
    #[arg(
        long = "ipmgr-env",
        env = "IPMGMT_IPMGR_ENV",
        value_name = "NAME=VALUE"
    )]
    pub ipmgr_env: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
#[error("invalid setting {flag}: {reason}")]
pub struct ConfigError {
    flag: &'static str,
    reason: String,
}

fn invalid(flag: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError {
        flag,
        reason: reason.into(),
    }
}

impl InjectArgs {
    /// The injector's configuration, checked so that every patch it yields is valid.
    pub fn to_config(&self) -> Result<Config, ConfigError> {
        // Every flag by name: one added to `InjectArgs` does not compile until it is used.
        let InjectArgs {
            image,
            image_pull_policy,
            container_name,
            default_mode,
            ipmgr_path,
            classic_sidecar,
            region,
            imds_endpoint,
            imds_endpoint_mode,
            imds_disabled,
            role_arn,
            token_audience,
            token_expiration_seconds,
            cpu_request,
            memory_request,
            cpu_limit,
            memory_limit,
            run_as_user,
            startup_timeout_seconds,
            ipmgr_release_timeout_seconds,
            ipmgr_env,
        } = self;
        if image.trim().is_empty() {
            return Err(invalid("--image", "must name the ipmgr image"));
        }
        if !is_dns_label(container_name) {
            return Err(invalid(
                "--container-name",
                format!(
                    "{:?} is not a DNS label (lower case, digits, '-', at most 63)",
                    container_name
                ),
            ));
        }
        if !ipmgr_path.starts_with('/') {
            return Err(invalid("--ipmgr-path", "must be an absolute path"));
        }
        if let Some(region) = region
            && (region.is_empty()
                || !region
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'))
        {
            return Err(invalid(
                "--region",
                format!("{region:?} is not an AWS Region name"),
            ));
        }
        if let Some(arn) = role_arn {
            inject::check_role_arn(arn).map_err(|reason| invalid("--role-arn", reason))?;
        }
        let optional = |s: &str| (!s.is_empty()).then(|| s.to_owned());
        let resources = Resources {
            cpu_request: cpu_request.clone(),
            memory_request: memory_request.clone(),
            cpu_limit: optional(cpu_limit),
            memory_limit: optional(memory_limit),
        };
        let quantity = |flag: &'static str, text: &str| {
            let q =
                Quantity::parse(text).map_err(|why| invalid(flag, format!("{text:?} {why}")))?;
            if !q.is_positive() {
                return Err(invalid(flag, format!("{text:?} must be greater than zero")));
            }
            Ok(q)
        };
        for (name, request, limit) in [
            (
                "cpu",
                ("--cpu-request", &resources.cpu_request),
                ("--cpu-limit", &resources.cpu_limit),
            ),
            (
                "memory",
                ("--memory-request", &resources.memory_request),
                ("--memory-limit", &resources.memory_limit),
            ),
        ] {
            let request_value = quantity(request.0, request.1)?;
            if let Some(text) = limit.1
                && quantity(limit.0, text)? < request_value
            {
                return Err(invalid(
                    limit.0,
                    format!(
                        "{text:?} is below the {name} request {:?} ({})",
                        request.1, request.0
                    ),
                ));
            }
        }
        let mut env = BTreeMap::new();
        for pair in ipmgr_env.iter().flat_map(|value| split_env(value)) {
            let Some((name, value)) = pair.split_once('=') else {
                return Err(invalid(
                    "--ipmgr-env",
                    format!("{pair:?} is not NAME=VALUE"),
                ));
            };
            if !is_env_name(name) {
                return Err(invalid(
                    "--ipmgr-env",
                    format!("{name:?} is not a variable name"),
                ));
            }
            if name == ipmgr_env::RELEASE_TIMEOUT_SECONDS {
                return Err(invalid(
                    "--ipmgr-env",
                    format!(
                        "{name} is set with --ipmgr-release-timeout-seconds (the chart's \
                         injection.releaseTimeoutSeconds), from which a classic sidecar's \
                         release delay is computed"
                    ),
                ));
            }
            let per_pod = [
                (ipmgr_env::FLOATING_IPS, "ipmgmt.aws/floating-ips"),
                (ipmgr_env::ELASTIC_IP, "ipmgmt.aws/elastic-ip"),
                (ipmgr_env::ROUTE_TABLES, "ipmgmt.aws/route-tables"),
            ];
            if let Some((_, annotation)) = per_pod.iter().find(|(n, _)| *n == name) {
                return Err(invalid(
                    "--ipmgr-env",
                    format!(
                        "{name} is a workload's own, set from its pod's {annotation} annotation; \
                         every pod of the cluster holding the same addresses would fight over them"
                    ),
                ));
            }
            if name.starts_with("IPMGR_") && !ipmgr_env::is_known(name) {
                return Err(invalid(
                    "--ipmgr-env",
                    format!(
                        "ipmgr reads no {name}; it reads {}",
                        ipmgr_env::ALL.join(", ")
                    ),
                ));
            }
            env.insert(name.to_owned(), value.to_owned());
        }
        Ok(Config {
            container_name: container_name.clone(),
            image: image.clone(),
            image_pull_policy: image_pull_policy.clone(),
            ipmgr_path: ipmgr_path.clone(),
            classic_sidecar: *classic_sidecar,
            default_mode: *default_mode,
            region: region.clone(),
            imds_endpoint: imds_endpoint.clone(),
            imds_endpoint_mode: imds_endpoint_mode.clone(),
            imds_disabled: *imds_disabled,
            role_arn: role_arn.clone(),
            token_audience: token_audience.clone(),
            token_expiration_seconds: *token_expiration_seconds,
            resources,
            run_as_user: *run_as_user,
            startup_timeout_seconds: *startup_timeout_seconds,
            release_timeout_seconds: *ipmgr_release_timeout_seconds,
            ipmgr_env: env,
        })
    }
}

fn is_dns_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

#[cfg(test)]
mod tests {
    use super::super::tests::parse;

    #[test]
    fn defaults_make_a_valid_config() {
        let cfg = parse(&[]).unwrap().inject.to_config().unwrap();
        assert_eq!(cfg.container_name, "aws-ip-mgmt");
        assert_eq!(cfg.resources.memory_limit.as_deref(), Some("64Mi"));
    }

    #[test]
    fn bad_values_name_their_flag() {
        for (args, flag) in [
            (&["--memory-limit", "64MB"][..], "--memory-limit"),
            (&["--container-name", "Bad_Name"], "--container-name"),
            (&["--role-arn", "arn:aws:iam::1:role/x"], "--role-arn"),
            (&["--ipmgr-env", "NOEQUALS"], "--ipmgr-env"),
            (&["--region", "US East"], "--region"),
        ] {
            let err = parse(args).unwrap().inject.to_config().unwrap_err();
            assert!(err.to_string().contains(flag), "{err}");
        }
    }

    #[test]
    fn empty_limit_means_none() {
        let cfg = parse(&["--cpu-limit", ""])
            .unwrap()
            .inject
            .to_config()
            .unwrap();
        assert_eq!(cfg.resources.cpu_limit, None);
    }

    #[test]
    fn resources_are_positive_and_requests_within_limits() {
        for (args, flag, says) in [
            (
                &["--cpu-request", "0"][..],
                "--cpu-request",
                "greater than zero",
            ),
            (
                &["--memory-limit=-64Mi"],
                "--memory-limit",
                "greater than zero",
            ),
            (
                &["--cpu-request", "200m"],
                "--cpu-limit",
                "below the cpu request",
            ),
            (
                &["--memory-limit", "8Mi"],
                "--memory-limit",
                "below the memory request",
            ),
            (
                &["--cpu-request", "ten"],
                "--cpu-request",
                "not a Kubernetes quantity",
            ),
        ] {
            let err = parse(args)
                .unwrap()
                .inject
                .to_config()
                .unwrap_err()
                .to_string();
            assert!(err.contains(flag) && err.contains(says), "{args:?}: {err}");
        }
        // Equal by value, written differently.
        let cfg = parse(&[
            "--cpu-request",
            "0.1",
            "--memory-request",
            "64Mi",
            "--memory-limit",
            "67108864",
        ]);
        assert!(cfg.unwrap().inject.to_config().is_ok());
        // No limit: any request.
        assert!(
            parse(&["--cpu-request", "4", "--cpu-limit", ""])
                .unwrap()
                .inject
                .to_config()
                .is_ok()
        );
    }
}
