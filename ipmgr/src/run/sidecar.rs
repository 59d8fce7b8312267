//! Sidecar mode: assign, mark ready, follow address changes, and release what the pod
//! holds on SIGTERM.
//!
//! Only the pod's first start, or an address newly added in the pod, may take an
//! address from another ENI. A native sidecar restarted in place (OOM, a panic) would
//! otherwise see every address as just taken, and pull a floating IP back from the
//! peer that took it over meanwhile. So what each pass settled is written beside the
//! ready file (`SettledFile`, on the pod's emptyDir, which outlives a container), and
//! a restart takes only what the last run had not settled.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use tokio::signal::unix::{SignalKind, signal};
use tokio::time::sleep_until;
use tracing::{Instrument, debug, info, info_span, warn};

use super::pass_metrics::{self, TriggerKind};
use super::{
    Failure, first_addresses, jittered, log_outcome, manager, termination_message, unassigned,
};
use crate::aws::Attempts;
use crate::config::Args;
use crate::discover::{Addresses, DiscoverError};
use crate::ec2::Ec2;
use crate::eni::Local;
use crate::floating;
use crate::manager::{Manager, Outcome, PassError, Take};

/// First wait after a failed sidecar pass; it doubles up to `RETRY_MAX`.
const RETRY_FIRST: Duration = Duration::from_millis(500);
/// The longest a sidecar waits between tries: a floating IP left on the old node is
/// an outage, and an IAM role still propagating or a throttling burst passes in seconds.
const RETRY_MAX: Duration = Duration::from_secs(30);

/// Which of the pod's addresses the sidecar may take from another ENI: those that
/// appeared in the pod since it last saw them on their ENI.
struct Follow {
    last: Vec<Local>,
    takes: BTreeSet<IpAddr>,
    /// Announced since the last look.
    announced: BTreeSet<IpAddr>,
}

impl Follow {
    /// At start every address counts as just taken (the pod has just got it), except
    /// what an earlier run of this container settled.
    fn new(addresses: &[Local], settled_before: &BTreeSet<IpAddr>) -> Follow {
        Follow {
            last: addresses.to_vec(),
            takes: (addresses.iter().map(|l| l.ip))
                .filter(|ip| !settled_before.contains(ip))
                .collect(),
            announced: BTreeSet::new(),
        }
    }

    /// The pod's addresses that are on their ENI and only repaired from now on.
    fn settled_now(&self) -> BTreeSet<IpAddr> {
        (self.last.iter().map(|l| l.ip))
            .filter(|ip| !self.takes.contains(ip))
            .collect()
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
pub(super) enum Trigger {
    Start,
    Retry,
    Events(usize),
    Periodic,
}

impl Trigger {
    pub(super) fn kind(self) -> TriggerKind {
        match self {
            Trigger::Start => TriggerKind::Start,
            Trigger::Retry => TriggerKind::Retry,
            Trigger::Events(_) => TriggerKind::Events,
            Trigger::Periodic => TriggerKind::Periodic,
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

/// The addresses this pod's sidecar has settled, one per line, in `settled` beside the
/// ready file. Lost or unreadable, it reads as empty: the restart then takes as a
/// first start does, which is what it did before the file existed.
struct SettledFile(std::path::PathBuf);

impl SettledFile {
    fn beside(ready_file: &Path) -> SettledFile {
        SettledFile(ready_file.with_file_name("settled"))
    }

    fn load(&self) -> BTreeSet<IpAddr> {
        match std::fs::read_to_string(&self.0) {
            Ok(text) => text.lines().filter_map(|l| l.trim().parse().ok()).collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeSet::new(),
            Err(e) => {
                warn!(path = %self.0.display(), error = %e, "cannot read what an earlier run settled: every address counts as just taken");
                BTreeSet::new()
            }
        }
    }

    /// Written whole and renamed into place, so a kill mid-write leaves the old list.
    fn store(&self, settled: &BTreeSet<IpAddr>) {
        let text: String = settled.iter().map(|ip| format!("{ip}\n")).collect();
        let tmp = self.0.with_extension("tmp");
        let written = std::fs::write(&tmp, text).and_then(|()| std::fs::rename(&tmp, &self.0));
        if let Err(e) = written {
            warn!(path = %self.0.display(), error = %e, "cannot record the settled addresses: a restart of this container would take them as new");
        }
    }
}

/// What the sidecar loop carries from one pass to the next: what the pod's addresses
/// may take, what is settled, and when the next try is due.
struct Between<'a> {
    follow: Follow,
    settled: BTreeSet<IpAddr>,
    settled_file: SettledFile,
    ready: ReadyFile<'a>,
    resync: tokio::time::Interval,
    /// When the next retry is due (at once for the first pass); `None` while the last
    /// pass was complete.
    retry_at: Option<Instant>,
    backoff: Duration,
    /// Why the last pass was incomplete, while it is.
    failing: Option<String>,
    /// The floating addresses: their holder refreshes them on every renewal of its
    /// Lease, which the kernel announces as an add; they are taken when they appear.
    floating: BTreeSet<IpAddr>,
}

impl Between<'_> {
    /// What starts the next pass: the first pass or a retry falling due, the pod's
    /// addresses changing (coalesced over `coalesce`), or the periodic resync.
    async fn next_trigger<A: Addresses>(
        &mut self,
        addresses: &mut A,
        coalesce: Duration,
    ) -> Result<Trigger, Failure> {
        let retry_at = self.retry_at;
        Ok(tokio::select! {
            biased;
            _ = sleep_until(retry_at.unwrap_or_else(Instant::now).into()), if retry_at.is_some() => {
                match self.failing { Some(_) => Trigger::Retry, None => Trigger::Start }
            }
            changed = addresses.changed(coalesce) => match changed {
                Some(changes) => {
                    let added: BTreeSet<IpAddr> = changes.added.difference(&self.floating).copied().collect();
                    self.follow.announced(&added);
                    Trigger::Events(changes.events)
                }
                None => return Err(DiscoverError::Socket(std::io::Error::other("netlink event socket closed")).into()),
            },
            _ = self.resync.tick() => Trigger::Periodic,
        })
    }

    /// After a pass: records what it settled, marks the pod ready or not, and schedules
    /// a retry with backoff while anything is left unassigned.
    fn after_pass(
        &mut self,
        reason: Trigger,
        result: Result<Outcome, PassError>,
    ) -> Result<(), Failure> {
        let failure = match result {
            Ok(outcome) => {
                self.follow.settled(&outcome);
                let now = self.follow.settled_now();
                if now != self.settled {
                    self.settled_file.store(&now);
                    self.settled = now;
                }
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
        self.ready.set(failure.is_none())?;
        match &failure {
            None => {
                self.retry_at = None;
                self.backoff = RETRY_FIRST;
            }
            Some(line) => {
                warn!(reason = %reason, error = %line, retry_in = ?self.backoff, "pass incomplete; retrying");
                self.retry_at = Some(Instant::now() + jittered(self.backoff));
                self.backoff = (self.backoff * 2).min(RETRY_MAX);
            }
        }
        self.failing = failure;
        Ok(())
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
    floating: floating::Floating,
) -> Result<(), Failure> {
    let ready = ReadyFile(&args.ready_file);
    // A restarted sidecar must not pass its probes on the last run's file.
    ready.set(false)?;
    let (registry, metrics, floating_metrics) = pass_metrics::registry(attempts);
    if let Some(addr) = args.metrics_listen {
        crate::metrics::serve(addr, registry)
            .await
            .map_err(|source| Failure::Metrics { addr, source })?;
    }
    let start = async {
        let wait = args.address_wait;
        let snapshot = first_addresses(&mut addresses, wait).await?;
        let mgr = manager(ec2, args, &snapshot.addresses).await?;
        Ok::<_, Failure>((snapshot, mgr))
    };
    let (snapshot, mgr) = tokio::select! {
        _ = stop.requested() => {
            info!("SIGTERM before the first pass: nothing assigned, nothing to release");
            return Ok(());
        }
        started = start => started?,
    };

    let tasks = floating::Tasks::start(floating, floating_metrics);
    let settled_file = SettledFile::beside(&args.ready_file);
    let settled_before = settled_file.load();
    if !settled_before.is_empty() {
        info!(settled = ?settled_before, "restarted: addresses an earlier run settled are repaired only, never taken from another ENI");
    }
    let floating: BTreeSet<IpAddr> = (args.floating_ips.iter())
        .flat_map(|f| f.0.iter().copied())
        .collect();
    // A floating address on the interfaces at start is an earlier run's leftover, not
    // a take: its holder takes it off, and puts it back (a take) only once it wins.
    let not_taken: BTreeSet<IpAddr> = settled_before.union(&floating).copied().collect();
    let mut state = Between {
        follow: Follow::new(&snapshot.addresses, &not_taken),
        settled: settled_before,
        settled_file,
        ready,
        resync: tokio::time::interval(args.resync),
        retry_at: Some(Instant::now()),
        backoff: RETRY_FIRST,
        failing: None,
        floating,
    };
    state
        .resync
        .set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    state.resync.reset();
    let followed = follow_until_stopped(
        &mut state,
        &mut addresses,
        &mgr,
        &mut stop,
        args,
        &metrics,
        &tasks,
    )
    .await;
    // Whatever ended the loop, the floating addresses come off the interfaces before
    // the process ends: left there, they would answer beside the peer that takes over.
    tasks
        .stop(args.lease_renew_deadline, args.release_timeout)
        .await;
    followed?;

    let Between { ready, failing, .. } = state;
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

/// Passes on every trigger until a stop is requested.
async fn follow_until_stopped<E: Ec2, A: Addresses>(
    state: &mut Between<'_>,
    addresses: &mut A,
    mgr: &Manager<E>,
    stop: &mut Stop,
    args: &Args,
    metrics: &pass_metrics::PassMetrics,
    floating: &floating::Tasks,
) -> Result<(), Failure> {
    let mut passes = 0_u64;
    loop {
        let reason = tokio::select! {
            biased;
            _ = stop.requested() => break,
            trigger = state.next_trigger(addresses, args.coalesce) => trigger?,
        };
        let snapshot = addresses.snapshot().await?;
        // Link-local addresses, DAD completing, the primary interface: events that
        // change nothing ipmgr manages cost no EC2 call.
        let changed = state.follow.observe(&snapshot.addresses);
        if !changed && matches!(reason, Trigger::Events(_)) {
            debug!(reason = %reason, "no change to the managed addresses");
            continue;
        }
        passes += 1;
        // An address event is followed from the ENIs the last pass left; the start, a
        // retry and the periodic pass look at EC2 afresh.
        let take = Take::Only(&state.follow.takes);
        let pass = async {
            match reason {
                Trigger::Events(_) => mgr.follow(&snapshot.addresses, take).await,
                Trigger::Start | Trigger::Retry | Trigger::Periodic => {
                    mgr.assign(&snapshot.addresses, take).await
                }
            }
        };
        let pass = pass.instrument(info_span!("pass", trigger = %reason, n = passes));
        // SIGTERM abandons the pass wherever it is: an EC2 call, the confirm loop.
        let result = tokio::select! {
            biased;
            _ = stop.requested() => break,
            result = pass => result,
        };
        metrics.pass(reason, &result);
        if let Ok(outcome) = &result {
            floating.publish(floating::placements(&outcome.placed, &snapshot.addresses));
        }
        state.after_pass(reason, result)?;
    }

    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    fn local(ip: &str) -> Local {
        Local {
            ip: ip.parse().unwrap(),
            iface: "net1".into(),
            mac: "0a:00:00:00:01:01".into(),
        }
    }

    fn ips(list: &[&str]) -> BTreeSet<IpAddr> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn a_restart_takes_only_what_the_last_run_had_not_settled() {
        let pod = [local("10.0.1.66"), local("10.0.1.100")];
        let first = Follow::new(&pod, &BTreeSet::new());
        assert_eq!(
            first.takes,
            ips(&["10.0.1.66", "10.0.1.100"]),
            "a first start takes all"
        );
        // The floating IP 10.0.1.100 was settled before the restart; the peer may hold
        // it now, and only a new address event may take it back.
        let restarted = Follow::new(&pod, &ips(&["10.0.1.100"]));
        assert_eq!(restarted.takes, ips(&["10.0.1.66"]));
        assert_eq!(restarted.settled_now(), ips(&["10.0.1.100"]));
    }

    #[test]
    fn an_address_added_again_after_a_restart_may_be_taken() {
        let mut follow = Follow::new(&[local("10.0.1.66")], &ips(&["10.0.1.66", "10.0.1.100"]));
        assert!(follow.takes.is_empty());
        follow.announced(&ips(&["10.0.1.100"]));
        assert!(follow.observe(&[local("10.0.1.66"), local("10.0.1.100")]));
        assert_eq!(follow.takes, ips(&["10.0.1.100"]));
        assert_eq!(follow.settled_now(), ips(&["10.0.1.66"]));
    }

    #[test]
    fn the_settled_file_outlives_the_run_and_reads_empty_when_missing_or_garbled() {
        let dir = std::env::temp_dir().join(format!("ipmgr-settled-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = SettledFile::beside(&dir.join("ready"));
        assert_eq!(file.0, dir.join("settled"));
        assert!(file.load().is_empty());
        let set = ips(&["10.0.1.66", "2600:1f14:aaa:1b00::66"]);
        file.store(&set);
        assert_eq!(file.load(), set);
        std::fs::write(&file.0, "10.0.1.66\nnot an address\n").unwrap();
        assert_eq!(file.load(), ips(&["10.0.1.66"]));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
