//! init, sidecar and ready: the flows around a pass.
//!
//! init assigns once, within a deadline, and exits: 0 when every VPC address of the
//! pod is assigned, 1 naming the ones that are not. The sidecar retries every failed
//! pass with backoff until it succeeds, follows address changes, and on SIGTERM
//! abandons whatever it is doing, releases, and exits within the release timeout (plus
//! the release delay of a classic sidecar).
//!
//! Parts: `init` and `sidecar` (the two modes), `pass_metrics` (the sidecar's own
//! metrics); here, what both share: the failure line, the entry point, logging, the
//! first look at the pod's addresses, and `ipmgr ready`.

mod init;
mod pass_metrics;
mod sidecar;

use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

pub use ipmgmt_common::aws::jittered;
use tracing::{error, info, warn};

use crate::aws::{self, Attempts};
use crate::config::{Args, Cli, Command, LogFormat};
use crate::discover::{Addresses, DiscoverError, Netlink, Snapshot};
use crate::ec2::{Ec2, SdkEc2};
use crate::eni::{Local, Policy};
use crate::floating;
use crate::identity;
use crate::manager::{AddressError, Manager, Outcome, PassError, Settings};
use crate::plan::Rules;

pub use init::init;
pub use sidecar::{Stop, sidecar};

/// Why ipmgr stopped: always one line, for the pod's status.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    #[error(
        "no address on a secondary interface after {waited:?} (interfaces: {}); check the pod's \
         k8s.v1.cni.cncf.io/networks annotation and its NetworkAttachmentDefinition",
        interfaces.join(", ")
    )]
    NoAddresses {
        waited: Duration,
        interfaces: Vec<String>,
    },
    #[error("addresses not assigned within {deadline:?}: {last}")]
    Deadline { deadline: Duration, last: String },
    #[error("{}", unassigned(.0))]
    Unassigned(Vec<AddressError>),
    #[error("{0}")]
    Pass(#[from] PassError),
    #[error("{0}")]
    Discover(#[from] DiscoverError),
    #[error("{0}")]
    Identity(#[from] identity::IdentityError),
    #[error("cannot write the ready file {path}: {source}")]
    Ready {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot serve metrics on {addr}: {source}")]
    Metrics {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error(
        "cannot reach the API server for the floating addresses' Lease ({0}): the pod needs a \
         service-account token, which the webhook mounts at \
         /var/run/secrets/kubernetes.io/serviceaccount"
    )]
    Kube(kube::Error),
    #[error("{0}")]
    Floating(floating::IfaceError),
    #[error("release on stop failed: {0}")]
    Release(PassError),
    #[error(
        "release on stop did not finish within {timeout:?}{}; the addresses stay on the ENI until released by hand",
        cause.as_deref().map(|c| format!(" ({c})")).unwrap_or_default()
    )]
    ReleaseTimeout {
        timeout: Duration,
        cause: Option<String>,
    },
}

/// `2 of the pod's addresses are not assigned: A; B`, one line. Addresses that EC2
/// refused for the same reason share one clause, so a missing permission is said once.
fn unassigned(failed: &[AddressError]) -> String {
    let refusal = |f: &AddressError| match f {
        AddressError::Ec2 { error, .. } => Some((
            error.action,
            error.code.clone(),
            error.detail.clone(),
            error.hint.clone(),
        )),
        _ => None,
    };
    let mut clauses: Vec<Vec<&AddressError>> = Vec::new();
    for failure in failed {
        let key = refusal(failure);
        let same = |group: &&mut Vec<&AddressError>| key.is_some() && refusal(group[0]) == key;
        match clauses.iter_mut().find(same) {
            Some(group) => group.push(failure),
            None => clauses.push(vec![failure]),
        }
    }
    let each: Vec<String> = clauses
        .iter()
        .map(|group| match group.as_slice() {
            [AddressError::Ec2 { error, .. }, _, ..] => {
                let places: Vec<String> = (group.iter())
                    .filter_map(|f| match f {
                        AddressError::Ec2 { ip, iface, error } => {
                            Some(format!("{ip} on {iface} ({})", error.target))
                        }
                        _ => None,
                    })
                    .collect();
                let code = (error.code.as_deref())
                    .map(|c| format!("{c}: "))
                    .unwrap_or_default();
                format!(
                    "{}: {} {code}{}; {}",
                    places.join(", "),
                    error.action,
                    error.detail,
                    error.hint
                )
            }
            _ => group[0].to_string(),
        })
        .collect();
    let n = failed.len();
    let verb = if n == 1 { "is" } else { "are" };
    format!(
        "{n} of the pod's addresses {verb} not assigned: {}",
        each.join("; ")
    )
}

pub fn main(cli: Cli, start: ipmgmt_common::shell::Start) -> ExitCode {
    let args = cli.settings;
    if let Command::Ready { wait } = cli.command {
        return ready(&args.ready_file, wait.map(Duration::from_secs));
    }
    if let Err(e) = init_logging(args.log_format, &args.log_level) {
        eprintln!("ipmgr: {e}");
        return ExitCode::from(2);
    }
    if let Err(e) = args.check_floating(cli.command) {
        error!("{e}");
        termination_message(&args, &e);
        return ExitCode::from(2);
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime starts");
    let result = runtime.block_on(async {
        let sdk = aws::loader(aws::Retries {
            max_attempts: args.retry_max_attempts,
            initial_backoff: args.retry_initial_backoff,
        })
        .load()
        .await;
        let attempts = Attempts::default();
        let ec2 = SdkEc2::new(aws::ec2_client(&sdk, &attempts));
        let addresses = Netlink::new(&args.primary_interface, &args.interfaces)?;
        match cli.command {
            Command::Init => init(ec2, addresses, &args, &attempts).await,
            Command::Sidecar => {
                let stop = Stop::on_sigterm();
                let floating = floating::Floating {
                    holder: floating_start(&args).await?,
                    mover: mover(&args, &ec2),
                };
                // Routed floating addresses reach the holder through route tables; they
                // are never an ENI's.
                let routed = match (&args.floating_ips, &args.route_tables) {
                    (Some(ips), Some(_)) => ips.0.clone(),
                    _ => Vec::new(),
                };
                let addresses = floating::Unrouted {
                    inner: addresses,
                    routed,
                };
                sidecar(ec2, addresses, &args, &attempts, stop, floating).await
            }
            Command::Ready { .. } => unreachable!("answered above"),
        }
    });
    // What the manager cost the pod, where users and the pod-cost benchmark read it.
    // `inherited_cpu_ms`: what ran in this thread before the manager (in a pod, the
    // runtime's init), which the container's CPU limit also pays for; `throttled_*`:
    // how the limit held the container back, that init included.
    if let Some(usage) = ipmgmt_common::shell::Usage::since(start) {
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        info!(
            cpu_ms = ms(usage.cpu),
            inherited_cpu_ms = ms(usage.inherited_cpu),
            elapsed_ms = ms(usage.elapsed),
            throttled_periods = usage.throttled.map(|t| t.periods),
            throttled_ms = usage.throttled.map(|t| ms(t.time)),
            peak_rss_kib = usage.peak_rss_kib,
            "exiting"
        );
    }
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            let line = failure.to_string();
            error!("{line}");
            termination_message(&args, &line);
            ExitCode::FAILURE
        }
    }
}

/// What the holder of the pod's floating addresses starts from, if it has any: the
/// pod's interfaces, and its Lease through the pod's service-account token.
async fn floating_start(args: &Args) -> Result<Option<floating::Start>, Failure> {
    let Some(ips) = &args.floating_ips else {
        return Ok(None);
    };
    let (Some(identity), Some(namespace)) = (&args.pod_name, &args.pod_namespace) else {
        unreachable!("Args::check_floating requires both");
    };
    let client = kube::Client::try_default().await.map_err(Failure::Kube)?;
    let settings = floating::Settings {
        ips: ips.0.clone(),
        routed: args.route_tables.is_some(),
        lease: ipmgmt_common::floating::lease_name(&ips.0),
        identity: identity.clone(),
        namespace: namespace.clone(),
        service_account: (args.pod_service_account.clone()).unwrap_or_else(|| "default".into()),
        lease_duration: args.lease_duration,
        renew_deadline: args.lease_renew_deadline,
        retry_period: args.lease_retry,
    };
    let ifaces = floating::Interfaces::new(&args.primary_interface, &args.interfaces)
        .map_err(Failure::Floating)?;
    Ok(Some(floating::Start {
        settings,
        ifaces,
        api: kube::Api::namespaced(client, namespace),
    }))
}

/// What moves the pod's Elastic IP and routes, if it asked for either.
fn mover(args: &Args, ec2: &SdkEc2) -> Option<floating::SpawnMover> {
    let eip = (args.elastic_ip.as_deref()).map(|text| {
        let ips = args.floating_ips.as_ref().map_or(&[][..], |f| &f.0[..]);
        ipmgmt_common::floating::elastic_ip(text, ips).expect("Args::check_floating checked it")
    });
    let tables = args.route_tables.clone();
    if eip.is_none() && tables.is_none() {
        return None;
    }
    let ips = (args.floating_ips.as_ref()).map_or_else(Vec::new, |f| f.0.clone());
    let (ec2, confirm) = (ec2.clone(), args.confirm);
    Some(Box::new(move |holding, placed, stop, metrics| {
        let mover = floating::Mover {
            ec2,
            eip,
            tables,
            ips,
            confirm,
            metrics,
        };
        tokio::spawn(mover.run(holding, placed, stop))
    }))
}

/// kubelet shows this file in the pod's status (Init:Error and `kubectl describe`).
fn termination_message(args: &Args, line: &str) {
    let _ = std::fs::write(&args.termination_log, format!("{line}\n"));
}

fn init_logging(format: LogFormat, filter: &str) -> Result<(), String> {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .map_err(|e| format!("--log-level {filter:?}: {e}"))?;
    ipmgmt_common::shell::init_logging(filter, matches!(format, LogFormat::Json));
    Ok(())
}

fn settings(args: &Args) -> Settings {
    Settings {
        rules: Rules {
            allow_reassignment: args.allow_reassignment,
        },
        policy: Policy {
            min_device_index: args.min_device_index,
            require_no_manage: args.require_no_manage_tag,
            cluster_tag: args.cluster_tag.clone(),
        },
        confirm_timeout: args.confirm,
    }
}

/// The first wait before looking for the instance again after EC2 throttled the
/// lookup; it doubles up to `IDENTITY_RETRY_MAX`.
const IDENTITY_RETRY_FIRST: Duration = Duration::from_millis(250);
const IDENTITY_RETRY_MAX: Duration = Duration::from_secs(5);

/// The manager of the instance the pod runs on; `locals`, the pod's addresses, may
/// name it by their interfaces' MACs. A throttled lookup is tried again, with
/// jittered backoff, for as long as the caller waits (init's deadline, the sidecar's
/// SIGTERM): a pod that starts among hundreds meets EC2's throttling here first. Any
/// other failure (credentials, permissions, no answer after the SDK's retries) ends
/// the run with its one line, as before.
async fn manager<E: Ec2>(ec2: E, args: &Args, locals: &[Local]) -> Result<Manager<E>, Failure> {
    let mut backoff = IDENTITY_RETRY_FIRST;
    let found = loop {
        match identity::instance_id(&ec2, args.node_name.as_deref(), locals).await {
            Ok(found) => break found,
            Err(e) if !e.is_throttled() => return Err(e.into()),
            Err(e) => {
                warn!(error = %e, retry_in = ?backoff, "cannot tell the instance yet; retrying");
                tokio::time::sleep(jittered(backoff)).await;
                backoff = (backoff * 2).min(IDENTITY_RETRY_MAX);
            }
        }
    };
    info!(instance = %found.instance_id, "running on");
    Ok(Manager::new(ec2, found.instance_id, settings(args)).starting_from(found.enis))
}

/// Waits (on address events, not a timer) until a secondary interface has an address.
async fn first_addresses<A: Addresses>(
    addresses: &mut A,
    wait: Duration,
) -> Result<Snapshot, Failure> {
    let until = Instant::now() + wait;
    loop {
        let snapshot = addresses.snapshot().await?;
        if !snapshot.addresses.is_empty() {
            return Ok(snapshot);
        }
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero()
            || tokio::time::timeout(left, addresses.changed(Duration::ZERO))
                .await
                .is_err()
        {
            return Err(Failure::NoAddresses {
                waited: wait,
                interfaces: snapshot.interfaces,
            });
        }
    }
}

fn log_outcome(reason: impl std::fmt::Display, outcome: &Outcome) {
    info!(
        reason = %reason,
        addresses = outcome.placed.len(),
        skipped = outcome.skipped.len(),
        left = outcome.left.len(),
        calls = outcome.calls,
        "every address assigned"
    );
}

fn ready(file: &Path, wait: Option<Duration>) -> ExitCode {
    let until = Instant::now() + wait.unwrap_or_default();
    loop {
        if file.exists() {
            return ExitCode::SUCCESS;
        }
        if Instant::now() >= until {
            eprintln!(
                "not ready: {} does not exist: the pod's addresses are not all assigned (see this container's log)",
                file.display()
            );
            return ExitCode::FAILURE;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ec2::{self, Action};

    fn refused(ip: &str, iface: &str, eni: &str, action: Action) -> AddressError {
        AddressError::Ec2 {
            ip: ip.parse().unwrap(),
            iface: iface.into(),
            error: ec2::error(action, eni, Some("UnauthorizedOperation"), "not authorized"),
        }
    }

    #[test]
    fn one_refusal_for_several_addresses_is_said_once() {
        let failed = [
            refused(
                "10.0.4.66",
                "net1",
                "eni-1",
                Action::AssignPrivateIpAddresses,
            ),
            AddressError::ReassignmentOff {
                ip: "10.0.4.70".parse().unwrap(),
                iface: "net1".into(),
                holder: "eni-9".into(),
            },
            refused(
                "10.0.5.66",
                "net2",
                "eni-2",
                Action::AssignPrivateIpAddresses,
            ),
            refused("2001:db8::1", "net2", "eni-2", Action::AssignIpv6Addresses),
        ];
        let line = unassigned(&failed);
        assert!(
            line.starts_with(
                "4 of the pod's addresses are not assigned: 10.0.4.66 on net1 (eni-1), 10.0.5.66 on net2 (eni-2): \
                 AssignPrivateIpAddresses UnauthorizedOperation: not authorized; the IP manager's IAM role lacks \
                 ec2:AssignPrivateIpAddresses"
            ),
            "{line}"
        );
        assert_eq!(
            line.matches("ec2:AssignPrivateIpAddresses").count(),
            1,
            "{line}"
        );
        assert!(
            line.contains("; 10.0.4.70 on net1 is held by eni-9"),
            "{line}"
        );
        assert!(
            line.ends_with(&failed[3].to_string()),
            "a different refusal keeps its own clause: {line}"
        );
        assert!(!line.contains('\n'));
    }

    #[test]
    fn jitter_stays_between_half_and_all_of_the_backoff() {
        let backoff = Duration::from_millis(800);
        let waits: Vec<Duration> = (0..200).map(|_| jittered(backoff)).collect();
        assert!(
            waits.iter().all(|w| *w >= backoff / 2 && *w <= backoff),
            "{waits:?}"
        );
        let distinct: std::collections::BTreeSet<_> = waits.iter().collect();
        assert!(distinct.len() > 100, "spread: {}", distinct.len());
    }

    #[test]
    fn a_single_failure_reads_as_before() {
        let failed = [refused(
            "10.0.4.66",
            "net1",
            "eni-1",
            Action::AssignPrivateIpAddresses,
        )];
        assert_eq!(
            unassigned(&failed),
            format!("1 of the pod's addresses is not assigned: {}", failed[0])
        );
    }
}
