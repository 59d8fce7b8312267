//! init, sidecar and ready: the flows around a pass.
//!
//! init assigns once, within a deadline, and exits: 0 when every VPC address of the
//! pod is assigned, 1 naming the ones that are not. The sidecar retries every failed
//! pass with backoff until it succeeds, follows address changes, and on SIGTERM
//! abandons whatever it is doing, releases, and exits within the release timeout (plus
//! the release delay of a classic sidecar).

use std::collections::BTreeSet;
use std::io::IsTerminal;
use std::net::IpAddr;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::signal::unix::{SignalKind, signal};
use tokio::time::sleep_until;
use tracing::{Instrument, debug, error, info, info_span, warn};

use crate::aws::{self, Attempts};
use crate::config::{Args, Cli, Command, LogFormat};
use crate::discover::{Addresses, DiscoverError, Netlink, Snapshot};
use crate::ec2::{Ec2, SdkEc2};
use crate::eni::{Local, Policy};
use crate::identity;
use crate::manager::{AddressError, Manager, Outcome, PassError, Settings, Take};
use crate::plan::Rules;

/// First wait after a failed sidecar pass; it doubles up to `RETRY_MAX`.
const RETRY_FIRST: Duration = Duration::from_millis(500);
/// The longest a sidecar waits between tries: a floating IP left on the old node is
/// an outage, and an IAM role still propagating or a throttling burst passes in seconds.
const RETRY_MAX: Duration = Duration::from_secs(30);
/// init's backoff between passes; its deadline bounds the whole.
const INIT_RETRY_FIRST: Duration = Duration::from_millis(250);
const INIT_RETRY_MAX: Duration = Duration::from_secs(5);

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
        AddressError::Ec2 { error, .. } => {
            Some((error.action, error.code.clone(), error.detail.clone()))
        }
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

pub fn main(cli: Cli) -> ExitCode {
    let args = cli.settings;
    if let Command::Ready { wait } = cli.command {
        return ready(&args.ready_file, wait.map(Duration::from_secs));
    }
    if let Err(e) = init_logging(args.log_format, &args.log_level) {
        eprintln!("ipmgr: {e}");
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
                sidecar(ec2, addresses, &args, &attempts, stop).await
            }
            Command::Ready { .. } => unreachable!("answered above"),
        }
    });
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

/// kubelet shows this file in the pod's status (Init:Error and `kubectl describe`).
fn termination_message(args: &Args, line: &str) {
    let _ = std::fs::write(&args.termination_log, format!("{line}\n"));
}

fn init_logging(format: LogFormat, filter: &str) -> Result<(), String> {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .map_err(|e| format!("--log-level {filter:?}: {e}"))?;
    // `kubectl logs` shows escape codes verbatim: colour only on a terminal.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
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
        },
        confirm_timeout: args.confirm,
    }
}

async fn manager<E: Ec2>(ec2: E, args: &Args) -> Result<Manager<E>, Failure> {
    let instance = identity::instance_id(&ec2, args.node_name.as_deref()).await?;
    info!(instance = %instance, "running on");
    Ok(Manager::new(ec2, instance, settings(args)))
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

/// Init mode: assigns every address once, confirmed, within the deadline.
pub async fn init<E: Ec2, A: Addresses>(
    ec2: E,
    mut addresses: A,
    args: &Args,
    attempts: &Attempts,
) -> Result<(), Failure> {
    let wait = args.address_wait;
    let mut snapshot = first_addresses(&mut addresses, wait).await?;

    let deadline = args.deadline;
    let until = Instant::now() + deadline;
    let cut = |last: Option<String>| {
        // The SDK retries inside a call: what its attempts ran into is the real cause.
        let in_flight = attempts
            .summary()
            .map(|s| format!("the pass in flight did not finish: {s}"));
        let last = in_flight
            .or(last)
            .unwrap_or_else(|| "the pass in flight did not finish".into());
        Failure::Deadline { deadline, last }
    };
    let mgr = match tokio::time::timeout_at(until.into(), manager(ec2, args)).await {
        Ok(mgr) => mgr?,
        Err(_) => return Err(cut(None)),
    };
    let mut backoff = INIT_RETRY_FIRST;
    let mut last = None;
    let mut attempt = 0_u32;
    loop {
        attempt += 1;
        let pass = (mgr.assign(&snapshot.addresses, Take::All)).instrument(info_span!(
            "pass",
            trigger = "init",
            attempt
        ));
        let last_failure = match tokio::time::timeout_at(until.into(), pass).await {
            Err(_) => return Err(cut(last)),
            Ok(Err(e)) if e.is_permanent() => return Err(e.into()),
            Ok(Err(e)) => e.to_string(),
            Ok(Ok(outcome)) if outcome.is_complete() => {
                log_outcome("init", &outcome);
                return Ok(());
            }
            Ok(Ok(outcome)) if outcome.failed.iter().all(AddressError::is_permanent) => {
                return Err(Failure::Unassigned(outcome.failed));
            }
            Ok(Ok(outcome)) => unassigned(&outcome.failed),
        };
        if Instant::now() + backoff >= until {
            return Err(Failure::Deadline {
                deadline,
                last: last_failure,
            });
        }
        warn!(error = %last_failure, retry_in = ?backoff, "assignment pass incomplete; retrying");
        last = Some(last_failure);
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(INIT_RETRY_MAX);
        snapshot = addresses.snapshot().await?;
    }
}

/// Which of the pod's addresses the sidecar may take from another ENI: those that
/// appeared in the pod since it last saw them on their ENI.
struct Follow {
    last: Vec<Local>,
    takes: BTreeSet<IpAddr>,
    /// Announced since the last look.
    announced: BTreeSet<IpAddr>,
}

impl Follow {
    /// At start every address counts as just taken: the pod has just got them.
    fn new(addresses: &[Local]) -> Follow {
        Follow {
            last: addresses.to_vec(),
            takes: addresses.iter().map(|l| l.ip).collect(),
            announced: BTreeSet::new(),
        }
    }

    /// The kernel announced these addresses as added.
    fn announced(&mut self, added: &BTreeSet<IpAddr>) {
        self.announced.extend(added);
    }

    /// Takes in a fresh look at the pod; whether there is anything new to assign:
    /// the managed addresses changed, or one was announced again.
    fn observe(&mut self, now: &[Local]) -> bool {
        let before: BTreeSet<IpAddr> = self.last.iter().map(|l| l.ip).collect();
        let current: BTreeSet<IpAddr> = now.iter().map(|l| l.ip).collect();
        let announced = std::mem::take(&mut self.announced);
        let retaken = announced.intersection(&current).count() > 0;
        self.takes.extend(current.difference(&before));
        self.takes.extend(announced.intersection(&current));
        self.takes.retain(|ip| current.contains(ip));
        let changed = self.last != now;
        self.last = now.to_vec();
        changed || retaken
    }

    /// An address on its ENI has been taken: from now on only repaired.
    fn settled(&mut self, outcome: &Outcome) {
        for (ip, _) in &outcome.placed {
            self.takes.remove(ip);
        }
    }
}

/// What started a sidecar pass.
#[derive(Clone, Copy, Debug)]
enum Trigger {
    Start,
    Retry,
    Events(usize),
    Periodic,
}

impl Trigger {
    fn kind(self) -> TriggerKind {
        match self {
            Trigger::Start => TriggerKind::Start,
            Trigger::Retry => TriggerKind::Retry,
            Trigger::Events(_) => TriggerKind::Events,
            Trigger::Periodic => TriggerKind::Periodic,
        }
    }
}

/// A trigger without its event count: the `trigger` label.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
enum TriggerKind {
    Start,
    Retry,
    Events,
    Periodic,
}

/// How a sidecar pass ended: the `result` label.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
enum PassResult {
    Complete,
    Incomplete,
    Failed,
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
enum AddressState {
    Assigned,
    Unassigned,
}

impl EncodeLabelValue for TriggerKind {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        let name = match self {
            TriggerKind::Start => "start",
            TriggerKind::Retry => "retry",
            TriggerKind::Events => "events",
            TriggerKind::Periodic => "periodic",
        };
        EncodeLabelValue::encode(&name, encoder)
    }
}

impl EncodeLabelValue for PassResult {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        let name = match self {
            PassResult::Complete => "complete",
            PassResult::Incomplete => "incomplete",
            PassResult::Failed => "failed",
        };
        EncodeLabelValue::encode(&name, encoder)
    }
}

impl EncodeLabelValue for AddressState {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        let name = match self {
            AddressState::Assigned => "assigned",
            AddressState::Unassigned => "unassigned",
        };
        EncodeLabelValue::encode(&name, encoder)
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PassLabels {
    trigger: TriggerKind,
    result: PassResult,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: AddressState,
}

/// The sidecar loop's metrics: passes by trigger and result, and the pod's addresses
/// by state after the last pass.
#[derive(Clone, Debug)]
pub struct PassMetrics {
    passes: Family<PassLabels, Counter>,
    addresses: Family<StateLabel, Gauge>,
}

impl PassMetrics {
    /// Makes the families, each registered as it is made: a new one cannot be left
    /// out of `/metrics`.
    pub fn register(registry: &mut Registry) -> PassMetrics {
        let passes = Family::default();
        registry.register(
            "ipmgr_passes",
            "Sidecar assignment passes, by what started them and how they ended",
            passes.clone(),
        );
        let addresses = Family::default();
        registry.register(
            "ipmgr_addresses",
            "The pod's managed addresses after the last pass, by state",
            addresses.clone(),
        );
        PassMetrics { passes, addresses }
    }

    fn pass(&self, trigger: Trigger, result: &Result<Outcome, PassError>) {
        let (result, assigned, unassigned) = match result {
            Ok(o) if o.is_complete() => (PassResult::Complete, o.placed.len(), o.failed.len()),
            Ok(o) => (PassResult::Incomplete, o.placed.len(), o.failed.len()),
            Err(_) => (PassResult::Failed, 0, 0),
        };
        let trigger = trigger.kind();
        self.passes
            .get_or_create(&PassLabels { trigger, result })
            .inc();
        if result != PassResult::Failed {
            for (state, n) in [
                (AddressState::Assigned, assigned),
                (AddressState::Unassigned, unassigned),
            ] {
                let n = i64::try_from(n).unwrap_or(i64::MAX);
                self.addresses.get_or_create(&StateLabel { state }).set(n);
            }
        }
    }
}

impl std::fmt::Display for Trigger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Trigger::Start => f.write_str("start"),
            Trigger::Retry => f.write_str("retry"),
            Trigger::Events(n) => write!(f, "{n} address events"),
            Trigger::Periodic => f.write_str("periodic pass"),
        }
    }
}

/// A request to stop: SIGTERM in production, a call in tests.
pub struct Stop(tokio::sync::watch::Receiver<bool>);

impl Stop {
    /// A stop that `request` on the sender triggers.
    pub fn new() -> (tokio::sync::watch::Sender<bool>, Stop) {
        let (tx, rx) = tokio::sync::watch::channel(false);
        (tx, Stop(rx))
    }

    /// Stops on SIGTERM, kubelet's request.
    pub fn on_sigterm() -> Stop {
        let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler installs");
        let (tx, stop) = Stop::new();
        tokio::spawn(async move {
            term.recv().await;
            let _ = tx.send(true);
        });
        stop
    }

    /// Resolves once a stop was requested (at once if it already was). A dropped
    /// sender is no request.
    async fn requested(&mut self) {
        if self.0.wait_for(|stop| *stop).await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// `ipmgr ready` answers from this file: present while every address is assigned.
struct ReadyFile<'a>(&'a Path);

impl ReadyFile<'_> {
    fn set(&self, ready: bool) -> Result<(), Failure> {
        if !ready {
            let _ = std::fs::remove_file(self.0);
            return Ok(());
        }
        std::fs::write(self.0, b"ready\n").map_err(|source| Failure::Ready {
            path: self.0.display().to_string(),
            source,
        })
    }
}

/// Sidecar mode: assigns, marks ready, follows address changes, and releases what
/// the pod holds once `stop` is requested (SIGTERM).
pub async fn sidecar<E: Ec2, A: Addresses>(
    ec2: E,
    mut addresses: A,
    args: &Args,
    attempts: &Attempts,
    mut stop: Stop,
) -> Result<(), Failure> {
    let ready = ReadyFile(&args.ready_file);
    // A restarted sidecar must not pass its probes on the last run's file.
    ready.set(false)?;
    let mut registry = Registry::default();
    attempts.register(&mut registry);
    let metrics = PassMetrics::register(&mut registry);
    if let Some(addr) = args.metrics_listen {
        crate::metrics::serve(addr, registry)
            .await
            .map_err(|source| Failure::Metrics { addr, source })?;
    }
    let start = async {
        let wait = args.address_wait;
        let snapshot = first_addresses(&mut addresses, wait).await?;
        Ok::<_, Failure>((snapshot, manager(ec2, args).await?))
    };
    let (snapshot, mgr) = tokio::select! {
        _ = stop.requested() => {
            info!("SIGTERM before the first pass: nothing assigned, nothing to release");
            return Ok(());
        }
        started = start => started?,
    };

    let mut follow = Follow::new(&snapshot.addresses);
    let coalesce = args.coalesce;
    let mut resync = tokio::time::interval(args.resync);
    resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    resync.reset();
    let mut retry_at = Some(Instant::now());
    let mut backoff = RETRY_FIRST;
    let mut failing: Option<String> = None;
    let mut passes = 0_u64;
    loop {
        let reason = tokio::select! {
            biased;
            _ = stop.requested() => break,
            _ = sleep_until(retry_at.unwrap_or_else(Instant::now).into()), if retry_at.is_some() => {
                match failing { Some(_) => Trigger::Retry, None => Trigger::Start }
            }
            changed = addresses.changed(coalesce) => match changed {
                Some(changes) => {
                    follow.announced(&changes.added);
                    Trigger::Events(changes.events)
                }
                None => return Err(DiscoverError::Socket(std::io::Error::other("netlink event socket closed")).into()),
            },
            _ = resync.tick() => Trigger::Periodic,
        };
        let snapshot = addresses.snapshot().await?;
        // Link-local addresses, DAD completing, the primary interface: events that
        // change nothing ipmgr manages cost no EC2 call.
        let changed = follow.observe(&snapshot.addresses);
        if !changed && matches!(reason, Trigger::Events(_)) {
            debug!(reason = %reason, "no change to the managed addresses");
            continue;
        }
        passes += 1;
        let pass = (mgr.assign(&snapshot.addresses, Take::Only(&follow.takes)))
            .instrument(info_span!("pass", trigger = %reason, n = passes));
        // SIGTERM abandons the pass wherever it is: an EC2 call, the confirm loop.
        let result = tokio::select! {
            biased;
            _ = stop.requested() => break,
            result = pass => result,
        };
        metrics.pass(reason, &result);
        let failure = match result {
            Ok(outcome) => {
                follow.settled(&outcome);
                match outcome.is_complete() {
                    true => {
                        log_outcome(reason, &outcome);
                        None
                    }
                    false => Some(unassigned(&outcome.failed)),
                }
            }
            Err(e) => Some(e.to_string()),
        };
        ready.set(failure.is_none())?;
        match &failure {
            None => {
                retry_at = None;
                backoff = RETRY_FIRST;
            }
            Some(line) => {
                warn!(reason = %reason, error = %line, retry_in = ?backoff, "pass incomplete; retrying");
                retry_at = Some(Instant::now() + backoff);
                backoff = (backoff * 2).min(RETRY_MAX);
            }
        }
        failing = failure;
    }

    ready.set(false)?;
    if let Some(line) = &failing {
        // The pod's status then says why its addresses were never all assigned.
        termination_message(
            args,
            &format!("stopped with addresses not assigned: {line}"),
        );
    }
    release_on_stop(&mgr, &addresses, args, attempts).await
}

/// Releases what the pod holds at this moment, and nothing it gave up, within the
/// release timeout: kubelet's SIGKILL follows the grace period whatever happens.
async fn release_on_stop<E: Ec2, A: Addresses>(
    mgr: &Manager<E>,
    addresses: &A,
    args: &Args,
    attempts: &Attempts,
) -> Result<(), Failure> {
    let delay = args.release_delay;
    if !delay.is_zero() {
        info!(delay = ?delay, "SIGTERM: keeping the addresses while the application drains");
        tokio::time::sleep(delay).await;
    }
    let held = addresses.snapshot().await?.addresses;
    let timeout = args.release_timeout;
    match tokio::time::timeout(timeout, mgr.release(&held)).await {
        Ok(Ok(calls)) => {
            info!(addresses = held.len(), calls, "released on SIGTERM");
            Ok(())
        }
        Ok(Err(e)) => Err(Failure::Release(e)),
        Err(_) => Err(Failure::ReleaseTimeout {
            timeout,
            cause: attempts.summary(),
        }),
    }
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
    use crate::ec2::{Action, Ec2Error};

    fn refused(ip: &str, iface: &str, eni: &str, action: Action) -> AddressError {
        AddressError::Ec2 {
            ip: ip.parse().unwrap(),
            iface: iface.into(),
            error: Ec2Error::new(action, eni, Some("UnauthorizedOperation"), "not authorized"),
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
