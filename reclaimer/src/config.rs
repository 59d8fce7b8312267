//! The reclaimer's settings: flags, each with an environment twin. Durations are
//! written as Kubernetes writes them: `90s`, `5m`, `1h`, `500ms`.

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Parser, ValueEnum};

#[derive(Clone, Debug, Parser)]
#[command(
    name = "ipmgmt-reclaimer",
    version,
    about = "Gives back the Multus ENI addresses of pods that are gone"
)]
pub struct Args {
    /// Health, readiness and metrics over plain HTTP.
    #[arg(
        long,
        env = "IPMGMT_RECLAIMER_ADMIN_LISTEN",
        default_value = "0.0.0.0:8080"
    )]
    pub admin_listen: SocketAddr,

    /// The namespace of the leader-election Lease (the pod's own).
    #[arg(long, env = "POD_NAMESPACE")]
    pub namespace: String,

    /// This replica's name in the Lease and in Events (the pod's name).
    #[arg(long, env = "POD_NAME")]
    pub identity: String,

    #[arg(
        long,
        env = "IPMGMT_RECLAIMER_LEASE_NAME",
        default_value = "ipmgmt-reclaimer"
    )]
    pub lease_name: String,

    /// How long a Lease holds without renewal before another replica may take it.
    #[arg(long, env = "IPMGMT_RECLAIMER_LEASE_DURATION", default_value = "15s", value_parser = duration)]
    pub lease_duration: Duration,

    /// The leader stops acting when it could not renew for this long; shorter than
    /// the lease duration, so it stops before another replica may start.
    #[arg(long, env = "IPMGMT_RECLAIMER_RENEW_DEADLINE", default_value = "10s", value_parser = duration)]
    pub renew_deadline: Duration,

    /// How often the Lease is renewed, or tried by a replica that does not hold it.
    #[arg(long, env = "IPMGMT_RECLAIMER_RETRY_PERIOD", default_value = "2s", value_parser = duration)]
    pub retry_period: Duration,

    /// How often the leader compares EC2 with the cluster.
    #[arg(long, env = "IPMGMT_RECLAIMER_INTERVAL", default_value = "1m", value_parser = duration)]
    pub interval: Duration,

    /// An address is released only when it was unclaimed at a sweep at least this
    /// long ago and at every sweep since.
    #[arg(long, env = "IPMGMT_RECLAIMER_GRACE", default_value = "5m", value_parser = duration)]
    pub grace: Duration,

    /// At most this many addresses are released per sweep; the rest wait for the next.
    #[arg(long, env = "IPMGMT_RECLAIMER_MAX_RELEASES_PER_SWEEP", default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_releases_per_sweep: u32,

    /// Report what would be released (log, Event, metric) and change nothing.
    #[arg(long, env = "IPMGMT_RECLAIMER_DRY_RUN", default_value_t = false, action = clap::ArgAction::Set)]
    pub dry_run: bool,

    /// Only ENIs that also carry this tag, KEY=VALUE (split at the first `=`): the tag
    /// of this cluster's Multus ENIs, as the IP manager's IPMGR_CLUSTER_TAG.
    #[arg(long, env = "IPMGMT_RECLAIMER_CLUSTER_TAG", value_name = "KEY=VALUE")]
    pub cluster_tag: Option<ipmgmt_common::aws::Tag>,

    /// EC2 attempts per call, retries on throttling and 5xx included. Before each
    /// attempt of an unassign, the node's pods are read again.
    #[arg(long, env = "IPMGMT_RECLAIMER_EC2_MAX_ATTEMPTS", default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    pub ec2_max_attempts: u32,

    /// The first wait between two attempts of an EC2 call; it doubles, with jitter,
    /// up to 5 s.
    #[arg(long, env = "IPMGMT_RECLAIMER_EC2_INITIAL_BACKOFF", default_value = "200ms", value_parser = duration)]
    pub ec2_initial_backoff: Duration,

    /// The namespaces the webhook serves, as a label selector (`kubectl get ns -l`
    /// syntax; the chart renders the webhook's namespaceSelector here). Only what IPAM
    /// handed to pods in these namespaces is ever released. Unset: every namespace.
    #[arg(
        long,
        env = "IPMGMT_RECLAIMER_NAMESPACE_SELECTOR",
        value_name = "SELECTOR"
    )]
    pub namespace_selector: Option<String>,

    /// The API server ends each watch after this long, and the watch starts again; a
    /// connection silent for 2 s longer counts as a failed watch (every grace period
    /// starts again), so a connection that stops carrying bytes cannot leave the view
    /// stale. Whole seconds.
    #[arg(long, env = "IPMGMT_RECLAIMER_WATCH_TIMEOUT", default_value = "1m", value_parser = duration)]
    pub watch_timeout: Duration,

    /// The address-range guard: NetworkAttachmentDefinitions in the namespaces the
    /// webhook serves judged against the subnets of the Multus ENIs they ride on, with
    /// an Event on each NAD whose findings change. Read-only in EC2
    /// (DescribeNetworkInterfaces, DescribeSubnets, GetSubnetCidrReservations).
    #[arg(long, env = "IPMGMT_RECLAIMER_GUARD", default_value_t = true, action = clap::ArgAction::Set)]
    pub guard: bool,

    /// How often the guard looks again without a NAD changing (EC2's subnets,
    /// reservations and ENIs change where nothing announces it).
    #[arg(long, env = "IPMGMT_RECLAIMER_GUARD_INTERVAL", default_value = "10m", value_parser = duration)]
    pub guard_interval: Duration,

    /// A NAD master that is not `ethN`, as NAME=DEVICE_INDEX (`ens6=1`), for nodes
    /// with predictable interface names; repeat it, or comma-separate in the
    /// environment.
    #[arg(long, env = "IPMGMT_RECLAIMER_GUARD_MASTERS", value_name = "NAME=INDEX", value_parser = master, value_delimiter = ',')]
    pub guard_master: Vec<(String, i32)>,

    /// A ConfigMap in this namespace that the guard keeps every NAD's findings in
    /// (`findings.json`), for the webhook to warn about pods that ask for one. Empty:
    /// none.
    #[arg(long, env = "IPMGMT_RECLAIMER_GUARD_CONFIGMAP", value_name = "NAME")]
    pub guard_configmap: Option<String>,

    /// Let the guard create the explicit subnet CIDR reservation a NAD's range lacks
    /// (CreateSubnetCidrReservation), when that is the range's only finding. It never
    /// deletes one. Needs deploy/reclaimer-reserve-iam-policy.json.
    #[arg(long, env = "IPMGMT_RECLAIMER_GUARD_RESERVE_RANGES", default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub guard_reserve_ranges: bool,

    /// Node readiness for Multus ENIs: nodes with this label (repeat it: all must
    /// match; comma-separate in the environment) keep the NoSchedule taint
    /// `ipmgmt.aws/multus-eni-missing` until each --readiness-device-index has a
    /// Multus ENI. Unset: the loop is off.
    #[arg(long, env = "IPMGMT_RECLAIMER_READINESS_NODE_LABELS", value_name = "KEY=VALUE", value_parser = label, value_delimiter = ',')]
    pub readiness_node_label: Vec<(String, String)>,

    /// A device index at which each of those nodes should have a Multus ENI; repeat
    /// it, or comma-separate in the environment.
    #[arg(long, env = "IPMGMT_RECLAIMER_READINESS_DEVICE_INDEXES", default_value = "1", value_delimiter = ',', value_parser = clap::value_parser!(i32).range(1..))]
    pub readiness_device_index: Vec<i32>,

    /// Attach a missing Multus ENI at one device index instead of only waiting for it,
    /// as JSON (repeat it per index): `{"deviceIndex":1,"subnets":{"us-west-2a":
    /// "subnet-…"},"securityGroups":["sg-…"]}` creates one in the subnet of the node's
    /// zone (tagged, deleted with the instance); `{"deviceIndex":1,"pool":"NAME"}`
    /// attaches an available ENI tagged ipmgmt.aws/pool=NAME. Needs
    /// deploy/reclaimer-attach-iam-policy.json.
    #[arg(long, env = "IPMGMT_RECLAIMER_READINESS_ATTACH", value_name = "JSON", value_parser = crate::readiness::attach_spec)]
    pub readiness_attach: Vec<crate::readiness::AttachSpec>,

    /// How often readiness looks again without a new node (attachments change in EC2
    /// unannounced).
    #[arg(long, env = "IPMGMT_RECLAIMER_READINESS_INTERVAL", default_value = "30s", value_parser = duration)]
    pub readiness_interval: Duration,

    /// How often the controller looks for Multus's or whereabouts' CRD when it
    /// started without it; once served, it exits so that its Deployment starts it
    /// again reading them.
    #[arg(long, env = "IPMGMT_RECLAIMER_CRD_POLL_INTERVAL", default_value = "30s", value_parser = duration, hide = true)]
    pub crd_poll_interval: Duration,

    #[arg(long, env = "IPMGMT_RECLAIMER_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// A tracing filter: `info`, `debug`, `ipmgmt_reclaimer=debug,kube=info`.
    #[arg(long, env = "IPMGMT_RECLAIMER_LOG_LEVEL", default_value = "info")]
    pub log_level: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

impl Args {
    /// What clap cannot check on one flag alone.
    pub fn check(&self) -> Result<(), String> {
        if self.renew_deadline >= self.lease_duration {
            return Err(format!(
                "--renew-deadline ({:?}) must be shorter than --lease-duration ({:?}): \
                 a leader that cannot renew must stop before another may start",
                self.renew_deadline, self.lease_duration
            ));
        }
        if self.retry_period >= self.renew_deadline {
            return Err(format!(
                "--retry-period ({:?}) must be shorter than --renew-deadline ({:?})",
                self.retry_period, self.renew_deadline
            ));
        }
        if !self.readiness_node_label.is_empty() && self.readiness_interval < Duration::from_secs(1)
        {
            return Err(format!(
                "--readiness-interval ({:?}) must be at least 1s",
                self.readiness_interval
            ));
        }
        for spec in &self.readiness_attach {
            if self.readiness_node_label.is_empty() {
                return Err(
                    "--readiness-attach needs --readiness-node-label: it attaches ENIs to the \
                            nodes readiness watches"
                        .into(),
                );
            }
            if !self.readiness_device_index.contains(&spec.device_index) {
                return Err(format!(
                    "--readiness-attach names device index {}, which no --readiness-device-index expects",
                    spec.device_index
                ));
            }
        }
        let mut indexes: Vec<i32> = self
            .readiness_attach
            .iter()
            .map(|s| s.device_index)
            .collect();
        indexes.sort();
        if indexes.windows(2).any(|w| w[0] == w[1]) {
            return Err("--readiness-attach names one device index twice".into());
        }
        if self.guard && self.guard_interval < Duration::from_secs(1) {
            return Err(format!(
                "--guard-interval ({:?}) must be at least 1s",
                self.guard_interval
            ));
        }
        if self.watch_timeout < Duration::from_secs(1) || self.watch_timeout.subsec_nanos() != 0 {
            return Err(format!(
                "--watch-timeout ({:?}) must be a whole number of seconds, at least 1s: the API server takes seconds",
                self.watch_timeout
            ));
        }
        Ok(())
    }
}

/// `ens6=1`: an interface name and the device index of the ENI it names (1 or more:
/// index 0 is the node's primary ENI, never a Multus ENI).
pub fn master(text: &str) -> Result<(String, i32), String> {
    let bad = || format!("{text:?} is not NAME=DEVICE_INDEX such as ens6=1 (index 1 or more)");
    let (name, index) = text.split_once('=').ok_or_else(bad)?;
    let index: i32 = index.trim().parse().map_err(|_| bad())?;
    if name.trim().is_empty() || index < 1 {
        return Err(bad());
    }
    Ok((name.trim().to_owned(), index))
}

/// `key=value`: a node label that selects, split at the first `=`.
pub fn label(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.trim().is_empty() => {
            Ok((key.trim().to_owned(), value.trim().to_owned()))
        }
        _ => Err(format!(
            "{text:?} is not KEY=VALUE such as example.com/multus=true"
        )),
    }
}

/// `500ms`, `90s`, `5m`, `1h`, or a combination such as `1m30s`.
pub fn duration(text: &str) -> Result<Duration, String> {
    let bad = || format!("{text:?} is not a duration such as 500ms, 90s, 5m or 1h");
    let mut rest = text.trim();
    if rest.is_empty() {
        return Err(bad());
    }
    let mut total = Duration::ZERO;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
        if digits == 0 {
            return Err(bad());
        }
        let n: u64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit = match &rest[..unit_len] {
            "ms" => Duration::from_millis(1),
            "s" => Duration::from_secs(1),
            "m" => Duration::from_secs(60),
            "h" => Duration::from_secs(3600),
            _ => return Err(bad()),
        };
        total += unit * u32::try_from(n).map_err(|_| bad())?;
        rest = &rest[unit_len..];
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_kubernetes_writes_them() {
        assert_eq!(duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(duration("1h"), Ok(Duration::from_secs(3600)));
        for bad in ["", "5", "m", "5 m", "5d", "-1s", "1.5s"] {
            let err = duration(bad).unwrap_err();
            assert!(err.contains("not a duration"), "{bad}: {err}");
        }
    }

    #[test]
    fn masters_read_as_names_and_device_indexes() {
        assert_eq!(master("ens6=1"), Ok(("ens6".into(), 1)));
        for bad in ["ens6", "ens6=0", "=1", "ens6=x", "ens6=-1"] {
            let err = master(bad).unwrap_err();
            assert!(err.contains("NAME=DEVICE_INDEX"), "{bad}: {err}");
        }
        let args = Args::try_parse_from([
            "ipmgmt-reclaimer",
            "--namespace=ipmgmt",
            "--identity=r-1",
            "--guard-master=ens6=1",
            "--guard-master=ens7=2",
        ])
        .unwrap();
        assert_eq!(
            args.guard_master,
            vec![("ens6".into(), 1), ("ens7".into(), 2)]
        );
        assert!(args.guard);
        assert_eq!(args.guard_interval, Duration::from_secs(600));
    }

    #[test]
    fn attach_specs_read_as_the_chart_renders_them_and_must_name_an_expected_index() {
        let parse = |extra: &[&str]| {
            let mut argv = vec![
                "ipmgmt-reclaimer",
                "--namespace=ipmgmt",
                "--identity=r-1",
                "--readiness-node-label=example.com/multus=true",
                "--readiness-device-index=1",
                "--readiness-device-index=2",
            ];
            argv.extend(extra);
            Args::try_parse_from(argv)
        };
        // The keys in toJson's order.
        let args = parse(&[
            r#"--readiness-attach={"deviceIndex":1,"securityGroups":["sg-0c1"],"subnets":{"us-west-2a":"subnet-0a1"}}"#,
            r#"--readiness-attach={"deviceIndex":2,"pool":"upf-n6"}"#,
        ])
        .unwrap();
        assert_eq!(args.readiness_attach.len(), 2);
        assert_eq!(args.check(), Ok(()));
        let unexpected = parse(&[r#"--readiness-attach={"deviceIndex":3,"pool":"x"}"#]).unwrap();
        assert!(unexpected.check().unwrap_err().contains("device index 3"));
        let twice = parse(&[
            r#"--readiness-attach={"deviceIndex":1,"pool":"x"}"#,
            r#"--readiness-attach={"deviceIndex":1,"pool":"y"}"#,
        ])
        .unwrap();
        assert!(twice.check().unwrap_err().contains("twice"));
        let bad = parse(&[r#"--readiness-attach={"deviceIndex":1,"subnet":"x"}"#]);
        assert!(bad.err().unwrap().to_string().contains("unknown field"));
    }

    #[test]
    fn lease_timings_must_nest() {
        let args = |extra: &[&str]| {
            let mut argv = vec![
                "ipmgmt-reclaimer",
                "--namespace",
                "ipmgmt",
                "--identity",
                "r-1",
            ];
            argv.extend(extra);
            Args::try_parse_from(argv).unwrap()
        };
        assert_eq!(args(&[]).check(), Ok(()));
        let err = args(&["--renew-deadline", "20s"]).check().unwrap_err();
        assert!(err.contains("--lease-duration"), "{err}");
        let err = args(&["--retry-period", "10s"]).check().unwrap_err();
        assert!(err.contains("--renew-deadline"), "{err}");
    }
}
