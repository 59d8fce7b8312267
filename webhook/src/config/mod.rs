//! Every setting of the webhook, as flags with environment twins. `ipmgmt-webhook
//! --help` is the reference; the chart and docs point here. clap's attributes hold
//! the only defaults: tests, fixtures and benchmarks get their configuration through
//! `from_flags`, and the chart's tests compare its flags with `--help`.
//!
//! - here: the server's flags (`Args`), and `from_flags`.
//! - `inject`: the flags of what goes into pods (`InjectArgs`), checked into the
//!   injector's `Config`.
//! - `env`: reading `--ipmgr-env`, whose values may hold commas.

mod env;
mod inject;

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, ValueEnum};

use crate::inject::Config;

pub use inject::{ConfigError, InjectArgs};

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

    /// The address-range guard's findings (`findings.json` of the controller's
    /// ConfigMap, mounted by the chart), re-read every --tls-reload-seconds: a pod
    /// that asks for a NetworkAttachmentDefinition with findings is admitted with a
    /// warning. Unset: no such check.
    #[arg(long, env = "IPMGMT_GUARD_FINDINGS", value_name = "PATH")]
    pub guard_findings: Option<PathBuf>,

    /// Deny those pods instead, with every finding in the message.
    #[arg(long, env = "IPMGMT_GUARD_DENY", requires = "guard_findings")]
    pub guard_deny: bool,

    /// After SIGTERM, keep serving (unready) this long so endpoints drop this pod first.
    #[arg(long, env = "IPMGMT_SHUTDOWN_DELAY_SECONDS", default_value_t = 0)]
    pub shutdown_delay_seconds: u64,

    /// Then wait at most this long for in-flight reviews to finish.
    #[arg(long, env = "IPMGMT_DRAIN_TIMEOUT_SECONDS", default_value_t = 20)]
    pub drain_timeout_seconds: u64,

    /// Close connections whose TLS handshake or request headers take longer than this.
    #[arg(long, env = "IPMGMT_HEADER_READ_TIMEOUT_SECONDS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    pub header_read_timeout_seconds: u64,

    /// Answer 408 to a request whose body has not all arrived this long after its
    /// headers. The apiserver gives up on a review after the webhook configuration's
    /// timeoutSeconds (10 unless set, at most 30), so nobody waits for a body later than
    /// that: set it to the same timeoutSeconds.
    #[arg(long, env = "IPMGMT_BODY_READ_TIMEOUT_SECONDS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=30))]
    pub body_read_timeout_seconds: u64,

    /// Request bodies held at once, across all connections, in MiB. A request that finds
    /// no room waits for it within --body-read-timeout-seconds, then gets 503. At least
    /// one largest review (3 MiB + 64 KiB). A thousand reviews of a typical pod fit in
    /// the default; under a flood of slow clients a replica peaked at about three times
    /// it (docs/benchmarks.md), so keep it under a quarter of the memory limit.
    #[arg(long, env = "IPMGMT_BODY_BUFFER_MIB", default_value_t = 16, value_parser = clap::value_parser!(u64).range(MIN_BODY_BUFFER_MIB..=4096))]
    pub body_buffer_mib: u64,

    /// HTTP/2 requests one connection may have open at once. A client that wants more
    /// opens another connection, as the apiserver's does.
    #[arg(long, env = "IPMGMT_MAX_CONCURRENT_STREAMS", default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub max_concurrent_streams: u32,

    /// Worker threads of the async runtime; 0: the container's CPU limit in whole CPUs
    /// (rounded down, at least 1), or one per CPU where there is no limit.
    #[arg(long, env = "IPMGMT_WORKER_THREADS", default_value_t = 0)]
    pub worker_threads: usize,

    /// Log format.
    #[arg(long, env = "IPMGMT_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Log filter, in tracing's EnvFilter syntax (e.g. "info", "ipmgmt_webhook=debug").
    #[arg(long, env = "IPMGMT_LOG_LEVEL", default_value = "info")]
    pub log_level: String,

    #[command(flatten)]
    pub inject: InjectArgs,
}

/// --body-buffer-mib's least: one largest review.
const MIN_BODY_BUFFER_MIB: u64 = 4;
const _: () = assert!((MIN_BODY_BUFFER_MIB << 20) as usize >= crate::body::BODY_LIMIT);

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, thiserror::Error)]
pub enum FlagsError {
    #[error(transparent)]
    Parse(#[from] clap::Error),
    #[error(transparent)]
    Invalid(#[from] ConfigError),
}

/// The injector's configuration from injection flags alone, parsed and checked as
/// the binary does it (environment twins included): the one way tests, fixtures and
/// benchmarks get one.
pub fn from_flags<I, T>(flags: I) -> Result<Config, FlagsError>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    #[derive(Parser)]
    #[command(name = "ipmgmt-webhook")]
    struct Injection {
        #[command(flatten)]
        inject: InjectArgs,
    }
    let argv =
        std::iter::once(OsString::from("ipmgmt-webhook")).chain(flags.into_iter().map(Into::into));
    Ok(Injection::try_parse_from(argv)?.inject.to_config()?)
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// The flags after the ones every run needs.
    pub(in crate::config) fn parse(extra: &[&str]) -> Result<Args, clap::Error> {
        let mut argv = vec!["ipmgmt-webhook", "--self-signed", "--image", "ipmgr:1"];
        argv.extend_from_slice(extra);
        Args::try_parse_from(argv)
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
    fn body_bounds_refuse_what_cannot_work() {
        let args = parse(&[]).unwrap();
        assert_eq!(
            (
                args.body_read_timeout_seconds,
                args.body_buffer_mib,
                args.max_concurrent_streams
            ),
            (10, 16, 32)
        );
        // Past 30 s the apiserver has stopped waiting; under 4 MiB no largest review fits.
        for bad in [
            ["--body-read-timeout-seconds", "0"],
            ["--body-read-timeout-seconds", "31"],
            ["--body-buffer-mib", "3"],
            ["--max-concurrent-streams", "0"],
        ] {
            assert!(parse(&bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn from_flags_parses_as_the_binary_does() {
        let cfg = from_flags(["--image", "ipmgr:1", "--default-mode", "sidecar"]).unwrap();
        assert_eq!(
            cfg,
            parse(&["--default-mode", "sidecar"])
                .unwrap()
                .inject
                .to_config()
                .unwrap()
        );
        assert!(matches!(
            from_flags(["--image", "x", "--default-mode", "Sidecar"]),
            Err(FlagsError::Parse(_))
        ));
        assert!(matches!(
            from_flags(["--image", " "]),
            Err(FlagsError::Invalid(_))
        ));
    }
}
