//! Every setting of the webhook, as flags with environment twins. `ipmgmt-webhook
//! --help` is the reference; the chart and docs point here.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};

use crate::inject::{self, Config, Mode, Quantity, Resources};

#[derive(Parser, Debug, Clone)]
#[command(
    name = "ipmgmt-webhook",
    version,
    about = "Mutating admission webhook: injects the ipmgmt IP manager into pods annotated ipmgmt.aws/mode"
)]
pub struct Args {
    /// HTTPS address for admission reviews (POST /mutate).
    #[arg(long, env = "IPMGMT_LISTEN", default_value = "0.0.0.0:8443")]
    pub listen: SocketAddr,

    /// Plain-HTTP address for /healthz, /readyz and /metrics.
    #[arg(long, env = "IPMGMT_ADMIN_LISTEN", default_value = "0.0.0.0:8080")]
    pub admin_listen: SocketAddr,

    /// PEM certificate chain to serve; re-read while running (cert-manager renewals).
    #[arg(
        long,
        env = "IPMGMT_TLS_CERT",
        requires = "tls_key",
        required_unless_present = "self_signed"
    )]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key matching --tls-cert.
    #[arg(long, env = "IPMGMT_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// Serve an in-memory self-signed certificate instead of files (local runs only).
    #[arg(long, env = "IPMGMT_SELF_SIGNED", conflicts_with_all = ["tls_cert", "tls_key"])]
    pub self_signed: bool,

    /// DNS names and IP addresses on the self-signed certificate.
    #[arg(
        long,
        env = "IPMGMT_SELF_SIGNED_NAMES",
        value_delimiter = ',',
        default_value = "localhost,127.0.0.1,::1"
    )]
    pub self_signed_names: Vec<String>,

    /// How often to re-read --tls-cert and --tls-key (SIGHUP re-reads at once).
    #[arg(long, env = "IPMGMT_TLS_RELOAD_SECONDS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    pub tls_reload_seconds: u64,

    /// After SIGTERM, keep serving (unready) this long so endpoints drop this pod first.
    #[arg(long, env = "IPMGMT_SHUTDOWN_DELAY_SECONDS", default_value_t = 0)]
    pub shutdown_delay_seconds: u64,

    /// Then wait at most this long for in-flight reviews to finish.
    #[arg(long, env = "IPMGMT_DRAIN_TIMEOUT_SECONDS", default_value_t = 20)]
    pub drain_timeout_seconds: u64,

    /// Close connections whose TLS handshake or request headers take longer than this.
    #[arg(long, env = "IPMGMT_HEADER_READ_TIMEOUT_SECONDS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    pub header_read_timeout_seconds: u64,

    /// Log format.
    #[arg(long, env = "IPMGMT_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Log filter, in tracing's EnvFilter syntax (e.g. "info", "ipmgmt_webhook=debug").
    #[arg(long, env = "IPMGMT_LOG_LEVEL", default_value = "info")]
    pub log_level: String,

    #[command(flatten)]
    pub inject: InjectArgs,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

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
    #[arg(long, env = "IPMGMT_DEFAULT_MODE", default_value = "init", value_parser = ["init", "sidecar"])]
    pub default_mode: String,

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

impl Args {
    pub fn reload_interval(&self) -> Duration {
        Duration::from_secs(self.tls_reload_seconds)
    }
}

impl InjectArgs {
    /// The injector's configuration, checked so that every patch it yields is valid.
    pub fn to_config(&self) -> Result<Config, ConfigError> {
        if self.image.trim().is_empty() {
            return Err(invalid("--image", "must name the ipmgr image"));
        }
        if !is_dns_label(&self.container_name) {
            return Err(invalid(
                "--container-name",
                format!(
                    "{:?} is not a DNS label (lower case, digits, '-', at most 63)",
                    self.container_name
                ),
            ));
        }
        if !self.ipmgr_path.starts_with('/') {
            return Err(invalid("--ipmgr-path", "must be an absolute path"));
        }
        if let Some(region) = &self.region
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
        if let Some(arn) = &self.role_arn {
            inject::check_role_arn(arn).map_err(|reason| invalid("--role-arn", reason))?;
        }
        let optional = |s: &str| (!s.is_empty()).then(|| s.to_owned());
        let resources = Resources {
            cpu_request: self.cpu_request.clone(),
            memory_request: self.memory_request.clone(),
            cpu_limit: optional(&self.cpu_limit),
            memory_limit: optional(&self.memory_limit),
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
        let mut ipmgr_env = BTreeMap::new();
        for pair in self.ipmgr_env.iter().flat_map(|value| split_env(value)) {
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
            ipmgr_env.insert(name.to_owned(), value.to_owned());
        }
        Ok(Config {
            container_name: self.container_name.clone(),
            image: self.image.clone(),
            image_pull_policy: self.image_pull_policy.clone(),
            ipmgr_path: self.ipmgr_path.clone(),
            classic_sidecar: self.classic_sidecar,
            default_mode: Mode::parse(&self.default_mode)
                .map_err(|reason| invalid("--default-mode", reason))?,
            region: self.region.clone(),
            imds_endpoint: self.imds_endpoint.clone(),
            imds_endpoint_mode: self.imds_endpoint_mode.clone(),
            imds_disabled: self.imds_disabled,
            role_arn: self.role_arn.clone(),
            token_audience: self.token_audience.clone(),
            token_expiration_seconds: self.token_expiration_seconds,
            resources,
            run_as_user: self.run_as_user,
            startup_timeout_seconds: self.startup_timeout_seconds,
            ipmgr_env,
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

fn is_env_name(s: &str) -> bool {
    let mut bytes = s.bytes();
    bytes
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == b'_')
        && bytes.all(|c| c.is_ascii_alphanumeric() || c == b'_')
}

/// One `--ipmgr-env` value, split where a comma is followed by an upper-case `NAME=`;
/// every other comma stays in its value, as tracing filters (`info,aws_config=warn`)
/// and lists need.
fn split_env(value: &str) -> Vec<&str> {
    let mut pairs = Vec::new();
    let mut start = 0;
    for (comma, _) in value.match_indices(',') {
        let next = &value[comma + 1..];
        let starts_variable = next.split_once('=').is_some_and(|(name, _)| {
            is_env_name(name)
                && name
                    .bytes()
                    .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
        });
        if starts_variable {
            pairs.push(&value[start..comma]);
            start = comma + 1;
        }
    }
    if start < value.len() || !pairs.is_empty() {
        pairs.push(&value[start..]);
    }
    pairs
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(extra: &[&str]) -> Result<Args, clap::Error> {
        let mut argv = vec!["ipmgmt-webhook", "--self-signed", "--image", "ipmgr:1"];
        argv.extend_from_slice(extra);
        Args::try_parse_from(argv)
    }

    #[test]
    fn defaults_make_a_valid_config() {
        let cfg = parse(&[]).unwrap().inject.to_config().unwrap();
        assert_eq!(cfg.container_name, "aws-ip-mgmt");
        assert_eq!(cfg.resources.memory_limit.as_deref(), Some("64Mi"));
    }

    #[test]
    fn tls_source_is_files_or_self_signed() {
        assert!(Args::try_parse_from(["ipmgmt-webhook", "--image", "x"]).is_err());
        assert!(
            Args::try_parse_from(["ipmgmt-webhook", "--image", "x", "--tls-cert", "c"]).is_err()
        );
        assert!(parse(&["--tls-cert", "c", "--tls-key", "k"]).is_err());
        let files = Args::try_parse_from([
            "ipmgmt-webhook",
            "--image",
            "x",
            "--tls-cert",
            "c",
            "--tls-key",
            "k",
        ]);
        assert!(files.is_ok());
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

    fn env_of(args: &[&str]) -> BTreeMap<String, String> {
        parse(args).unwrap().inject.to_config().unwrap().ipmgr_env
    }

    #[test]
    fn ipmgr_env_values_keep_their_commas() {
        let env = env_of(&["--ipmgr-env", "IPMGR_LOG_LEVEL=info,aws_config=warn"]);
        assert_eq!(env.len(), 1, "{env:?}");
        assert_eq!(env["IPMGR_LOG_LEVEL"], "info,aws_config=warn");

        let env = env_of(&[
            "--ipmgr-env",
            "IPMGR_LOG_LEVEL=info,ipmgr=debug,IPMGR_LOG_FORMAT=json",
            "--ipmgr-env",
            "NO_PROXY=169.254.169.254,10.0.0.0/8",
            "--ipmgr-env=IPMGR_RESYNC_SECONDS=120",
        ]);
        assert_eq!(env["IPMGR_LOG_LEVEL"], "info,ipmgr=debug");
        assert_eq!(env["IPMGR_LOG_FORMAT"], "json");
        assert_eq!(env["NO_PROXY"], "169.254.169.254,10.0.0.0/8");
        assert_eq!(env["IPMGR_RESYNC_SECONDS"], "120");
        assert_eq!(env.len(), 4, "{env:?}");

        // A lower-case name after a comma is part of the value; one given on its own
        // flag is a variable.
        let env = env_of(&["--ipmgr-env", "http_proxy=http://proxy:3128"]);
        assert_eq!(env["http_proxy"], "http://proxy:3128");
        assert_eq!(split_env("A=1,"), ["A=1,"]);
        assert_eq!(split_env("A=,B="), ["A=", "B="]);
        assert_eq!(split_env("A=x,_B1=y"), ["A=x", "_B1=y"]);
        assert_eq!(split_env("A=x,1B=y"), ["A=x,1B=y"]);
        assert!(split_env("").is_empty());
        assert!(env_of(&[]).is_empty());
    }
}
