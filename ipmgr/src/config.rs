//! ipmgr's settings: flags with environment twins. The webhook sets the environment.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgAction, Parser, Subcommand, ValueEnum};

use ipmgmt_common::floating::{self, RouteTables};
use ipmgmt_common::ipmgr_env;

use crate::eni::Tag;

#[derive(Parser, Debug)]
#[command(
    name = "ipmgr",
    version,
    about = "Assigns a pod's Multus secondary-interface addresses to the node's ENIs"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    #[command(flatten)]
    pub settings: Args,
}

#[derive(Subcommand, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Assign every secondary-interface address once, confirm, and exit.
    Init,
    /// Assign, mark ready, follow address changes, and release on SIGTERM.
    Sidecar,
    /// Exit 0 once the sidecar has assigned the pod's addresses (the startup probe).
    Ready {
        /// Wait up to this many seconds instead of answering at once.
        #[arg(long, value_name = "SECONDS")]
        wait: Option<u64>,
    },
}

#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// The pod's own interface, managed by the VPC CNI; its addresses are left alone.
    #[arg(
        long,
        global = true,
        env = ipmgr_env::PRIMARY_INTERFACE,
        default_value = "eth0"
    )]
    pub primary_interface: String,

    /// Manage only these interfaces (comma-separated names); empty: every interface
    /// but the primary and loopback.
    #[arg(
        long,
        global = true,
        env = ipmgr_env::INTERFACES,
        value_delimiter = ',',
        value_name = "NAMES"
    )]
    pub interfaces: Vec<String>,

    /// Lowest ENI device index ipmgr assigns to, by MAC or by subnet (0 is the node's
    /// primary ENI).
    #[arg(
        long,
        global = true,
        env = ipmgr_env::MIN_DEVICE_INDEX,
        default_value_t = 1
    )]
    pub min_device_index: i32,

    /// Assign only to ENIs tagged node.k8s.amazonaws.com/no_manage=true: the VPC CNI
    /// manages every other ENI and hands out the addresses it finds there.
    #[arg(long, global = true, env = ipmgr_env::REQUIRE_NO_MANAGE_TAG, default_value_t = true, action = ArgAction::Set)]
    pub require_no_manage_tag: bool,

    /// Assign only to ENIs that also carry this tag, KEY=VALUE (split at the first
    /// `=`): the tag of this cluster's Multus ENIs, which the IAM policy can require
    /// too (the user guide shows how).
    #[arg(
        long,
        global = true,
        env = ipmgr_env::CLUSTER_TAG,
        value_name = "KEY=VALUE"
    )]
    pub cluster_tag: Option<Tag>,

    /// Take an address another ENI holds (floating IPs), IPv4 and IPv6.
    #[arg(long, global = true, env = ipmgr_env::ALLOW_REASSIGNMENT, default_value_t = true, action = ArgAction::Set)]
    pub allow_reassignment: bool,

    /// Give up on the first assignment after this many seconds. Throttling is what
    /// takes time at scale: EC2 refills an account's Assign bucket at 5 a second, so
    /// 500 pods that start together need 80 s between them.
    #[arg(
        long = "deadline-seconds",
        global = true,
        env = ipmgr_env::DEADLINE_SECONDS,
        default_value = "120",
        value_name = "SECONDS",
        value_parser = seconds_at_least::<1>
    )]
    pub deadline: Duration,

    /// Wait this long for a secondary-interface address to appear.
    #[arg(
        long = "address-wait-seconds",
        global = true,
        env = ipmgr_env::ADDRESS_WAIT_SECONDS,
        default_value = "10",
        value_name = "SECONDS",
        value_parser = seconds_at_least::<0>
    )]
    pub address_wait: Duration,

    /// Wait this long for EC2 to show an accepted assignment.
    #[arg(
        long = "confirm-seconds",
        global = true,
        env = ipmgr_env::CONFIRM_SECONDS,
        default_value = "30",
        value_name = "SECONDS",
        value_parser = seconds_at_least::<1>
    )]
    pub confirm: Duration,

    /// Sidecar: re-assert the pod's addresses this often even without events.
    #[arg(
        long = "resync-seconds",
        global = true,
        env = ipmgr_env::RESYNC_SECONDS,
        default_value = "300",
        value_name = "SECONDS",
        value_parser = seconds_at_least::<1>
    )]
    pub resync: Duration,

    /// Sidecar: after an address event, wait this long for the burst to settle.
    #[arg(
        long = "coalesce-ms",
        global = true,
        env = ipmgr_env::COALESCE_MS,
        default_value = "5",
        value_name = "MS",
        value_parser = millis_at_least::<0>
    )]
    pub coalesce: Duration,

    /// Sidecar: after SIGTERM, keep the addresses this long before releasing them. For
    /// a classic sidecar, which is stopped together with the application.
    #[arg(
        long = "release-delay-seconds",
        global = true,
        env = ipmgr_env::RELEASE_DELAY_SECONDS,
        default_value = "0",
        value_name = "SECONDS",
        value_parser = seconds_at_least::<0>
    )]
    pub release_delay: Duration,

    /// Sidecar: give up on the release after this long, well inside the pod's grace period.
    #[arg(
        long = "release-timeout-seconds",
        global = true,
        env = ipmgr_env::RELEASE_TIMEOUT_SECONDS,
        // ipmgr_env::DEFAULT_RELEASE_TIMEOUT_SECONDS (tests/tests/contract.rs checks it).
        default_value = "5",
        value_name = "SECONDS",
        value_parser = seconds_at_least::<1>
    )]
    pub release_timeout: Duration,

    /// Sidecar: serve Prometheus metrics on this address (e.g. 0.0.0.0:9090) at
    /// `/metrics`; off when unset.
    #[arg(long, global = true, env = ipmgr_env::METRICS_LISTEN)]
    pub metrics_listen: Option<std::net::SocketAddr>,

    /// Sidecar: the file that tells `ipmgr ready` every address is assigned; present
    /// only while that holds.
    #[arg(
        long,
        global = true,
        env = ipmgr_env::READY_FILE,
        default_value = "/run/ipmgmt/ready"
    )]
    pub ready_file: PathBuf,

    /// Where the one-line failure reason goes for the pod's status.
    #[arg(
        long,
        global = true,
        env = ipmgr_env::TERMINATION_LOG,
        default_value = "/dev/termination-log"
    )]
    pub termination_log: PathBuf,

    /// The node's name (spec.nodeName), to find the instance without IMDS.
    #[arg(long, global = true, env = "NODE_NAME")]
    pub node_name: Option<String>,

    /// The pod's name (the downward API's metadata.name): who holds a Lease.
    #[arg(long, global = true, env = "POD_NAME")]
    pub pod_name: Option<String>,

    /// The pod's namespace (metadata.namespace), where its Lease is.
    #[arg(long, global = true, env = "POD_NAMESPACE")]
    pub pod_namespace: Option<String>,

    /// The pod's service account (spec.serviceAccountName), named in what to do when
    /// the API server refuses it the Lease.
    #[arg(long, global = true, env = "POD_SERVICE_ACCOUNT")]
    pub pod_service_account: Option<String>,

    /// Attempts per EC2 call, retries included (throttling, 5xx, network).
    #[arg(
        long,
        global = true,
        env = ipmgr_env::RETRY_MAX_ATTEMPTS,
        default_value_t = 8
    )]
    pub retry_max_attempts: u32,

    /// First retry backoff; it doubles, with jitter, up to 5 s.
    #[arg(
        long = "retry-initial-backoff-ms",
        global = true,
        env = ipmgr_env::RETRY_INITIAL_BACKOFF_MS,
        default_value = "200",
        value_name = "MS",
        value_parser = millis_at_least::<1>
    )]
    pub retry_initial_backoff: Duration,

    /// Sidecar: floating addresses (comma-separated) that one replica of the pod's
    /// workload at a time holds, on its interface and its ENI, while it holds their
    /// Lease in the pod's namespace.
    #[arg(
        long,
        global = true,
        env = ipmgr_env::FLOATING_IPS,
        value_name = "ADDRESSES",
        value_parser = floating_ips
    )]
    pub floating_ips: Option<FloatingIps>,

    /// Sidecar: the Elastic IP that follows the floating IPv4 address (`eipalloc-…`),
    /// or a pool of them by tag (`tag:KEY=VALUE`).
    #[arg(long, global = true, env = ipmgr_env::ELASTIC_IP, value_name = "EIP")]
    pub elastic_ip: Option<String>,

    /// Sidecar: route tables (`rtb-…`, comma-separated, or `tag:KEY=VALUE`) whose route
    /// to each floating address points at the holder's ENI.
    #[arg(
        long,
        global = true,
        env = ipmgr_env::ROUTE_TABLES,
        value_name = "TABLES",
        value_parser = route_tables
    )]
    pub route_tables: Option<RouteTables>,

    /// Sidecar: how long the floating addresses' Lease lasts unrenewed; a crashed
    /// holder's peer takes over after this long.
    #[arg(
        long = "lease-duration-seconds",
        global = true,
        env = ipmgr_env::LEASE_DURATION_SECONDS,
        default_value = "3",
        value_name = "SECONDS",
        value_parser = seconds_at_least::<1>
    )]
    pub lease_duration: Duration,

    /// Sidecar: how long the holder may go without renewing before it takes the
    /// floating addresses off its interface; shorter than the lease duration, so it
    /// has let go before any peer may take them.
    #[arg(
        long = "lease-renew-deadline-ms",
        global = true,
        env = ipmgr_env::LEASE_RENEW_DEADLINE_MS,
        default_value = "2000",
        value_name = "MS",
        value_parser = millis_at_least::<100>
    )]
    pub lease_renew_deadline: Duration,

    /// Sidecar: how often the holder renews the Lease and its peers look at it.
    #[arg(
        long = "lease-retry-ms",
        global = true,
        env = ipmgr_env::LEASE_RETRY_MS,
        default_value = "500",
        value_name = "MS",
        value_parser = millis_at_least::<50>
    )]
    pub lease_retry: Duration,

    #[arg(long, global = true, env = ipmgr_env::LOG_FORMAT, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Log filter, in tracing's EnvFilter syntax.
    #[arg(long, global = true, env = ipmgr_env::LOG_LEVEL, default_value = "info")]
    pub log_level: String,
}

/// The floating addresses, in the order written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FloatingIps(pub Vec<IpAddr>);

fn floating_ips(text: &str) -> Result<FloatingIps, String> {
    floating::addresses(text).map(FloatingIps)
}

fn route_tables(text: &str) -> Result<RouteTables, String> {
    floating::route_tables(text)
}

impl Args {
    /// The floating settings checked against each other, as the webhook checks them;
    /// a pod started some other way gets the same refusals at start-up.
    pub fn check_floating(&self, command: Command) -> Result<(), String> {
        let ips = self.floating_ips.as_ref().map_or(&[][..], |f| &f.0[..]);
        let asked = !ips.is_empty() || self.elastic_ip.is_some() || self.route_tables.is_some();
        if asked && command != Command::Sidecar {
            return Err(format!(
                "{}, {} and {} are held while the pod runs: run `ipmgr sidecar`",
                ipmgr_env::FLOATING_IPS,
                ipmgr_env::ELASTIC_IP,
                ipmgr_env::ROUTE_TABLES
            ));
        }
        if let Some(eip) = &self.elastic_ip {
            floating::elastic_ip(eip, ips)?;
        }
        if self.route_tables.is_some() && ips.is_empty() {
            return Err(format!(
                "{} routes floating addresses, and {} names none",
                ipmgr_env::ROUTE_TABLES,
                ipmgr_env::FLOATING_IPS
            ));
        }
        if !ips.is_empty() && (self.pod_name.is_none() || self.pod_namespace.is_none()) {
            return Err(format!(
                "{} needs POD_NAME and POD_NAMESPACE (the downward API's metadata.name and \
                 metadata.namespace), which the webhook sets: the pod's Lease is named by them",
                ipmgr_env::FLOATING_IPS
            ));
        }
        if !ips.is_empty() && self.lease_duration.as_secs() < crate::floating::MIN_LEASE_SECONDS {
            return Err(format!(
                "{} is {}, and floating addresses need at least {}: the kernel takes a \
                 holder's addresses off within 2 s of its last renewal, before a peer may \
                 take them",
                ipmgr_env::LEASE_DURATION_SECONDS,
                self.lease_duration.as_secs(),
                crate::floating::MIN_LEASE_SECONDS
            ));
        }
        if self.lease_renew_deadline >= self.lease_duration
            || self.lease_retry >= self.lease_renew_deadline
        {
            return Err(format!(
                "the Lease's timings must run retry < renew deadline < duration, and they are \
                 {:?} < {:?} < {:?} ({}, {}, {})",
                self.lease_retry,
                self.lease_renew_deadline,
                self.lease_duration,
                ipmgr_env::LEASE_RETRY_MS,
                ipmgr_env::LEASE_RENEW_DEADLINE_MS,
                ipmgr_env::LEASE_DURATION_SECONDS
            ));
        }
        Ok(())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// A whole number of seconds, at least `MIN`, as a `Duration`: settings are resolved
/// once, here, and the rest of ipmgr reads durations.
fn seconds_at_least<const MIN: u64>(text: &str) -> Result<Duration, String> {
    whole_at_least::<MIN>(text, "seconds").map(Duration::from_secs)
}

/// A whole number of milliseconds, at least `MIN`, as a `Duration`.
fn millis_at_least<const MIN: u64>(text: &str) -> Result<Duration, String> {
    whole_at_least::<MIN>(text, "milliseconds").map(Duration::from_millis)
}

fn whole_at_least<const MIN: u64>(text: &str, unit: &str) -> Result<u64, String> {
    match text.parse::<u64>() {
        Ok(n) if n >= MIN => Ok(n),
        Ok(n) => Err(format!("{n} {unit} is below the minimum of {MIN}")),
        Err(_) => Err(format!("{text:?} is not a whole number of {unit}")),
    }
}

#[cfg(test)]
mod duration_tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn durations_are_resolved_once_with_their_minimums() {
        let cli = Cli::try_parse_from(["ipmgr", "sidecar", "--coalesce-ms", "7"]).unwrap();
        assert_eq!(cli.settings.coalesce, Duration::from_millis(7));
        assert_eq!(cli.settings.deadline, Duration::from_secs(120));
        assert_eq!(cli.settings.release_timeout, Duration::from_secs(5));
        let err = Cli::try_parse_from(["ipmgr", "init", "--deadline-seconds", "0"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("0 seconds is below the minimum of 1"), "{err}");
        let err = Cli::try_parse_from(["ipmgr", "init", "--confirm-seconds", "1.5"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("not a whole number of seconds"), "{err}");
    }

    #[test]
    fn floating_settings_are_checked_as_the_webhook_checks_them() {
        let parse = |extra: &[&str]| {
            let args = ["ipmgr", "sidecar"].iter().chain(extra);
            Cli::try_parse_from(args).map(|cli| cli.settings)
        };
        let ok = parse(&[
            "--floating-ips",
            "10.0.4.100, 2001:db8::100",
            "--pod-name=p-0",
            "--pod-namespace=upf",
        ])
        .unwrap();
        assert_eq!(ok.floating_ips.as_ref().unwrap().0.len(), 2);
        assert_eq!(ok.check_floating(Command::Sidecar), Ok(()));
        assert_eq!(ok.lease_duration, Duration::from_secs(3));
        let err = parse(&["--floating-ips", "10.0.4.100/32"]).unwrap_err();
        assert!(
            err.to_string().contains("is not an IPv4 or IPv6 address"),
            "{err}"
        );
        let eip_without_v4 = parse(&[
            "--floating-ips=2001:db8::100",
            "--elastic-ip=eipalloc-0123abcd",
        ])
        .unwrap();
        assert!(
            eip_without_v4
                .check_floating(Command::Sidecar)
                .unwrap_err()
                .contains("needs an IPv4")
        );
        let routes_alone = parse(&["--route-tables=rtb-0123abcd"]).unwrap();
        assert!(
            routes_alone
                .check_floating(Command::Sidecar)
                .unwrap_err()
                .contains("names none")
        );
        assert!(
            ok.check_floating(Command::Init)
                .unwrap_err()
                .contains("run `ipmgr sidecar`")
        );
        let unnamed = parse(&["--floating-ips=10.0.4.100"]).unwrap();
        assert!(
            unnamed
                .check_floating(Command::Sidecar)
                .unwrap_err()
                .contains("needs POD_NAME and POD_NAMESPACE")
        );
        let slow_renewal = parse(&["--lease-renew-deadline-ms=3000"]).unwrap();
        assert!(
            slow_renewal
                .check_floating(Command::Sidecar)
                .unwrap_err()
                .contains("retry < renew deadline < duration")
        );
    }
}
