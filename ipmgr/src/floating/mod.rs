//! Floating addresses: the replicas of a workload take turns holding them, decided by
//! a `coordination.k8s.io` Lease in the pod's namespace (`ipmgmt_common::lease`).
//!
//! While this replica holds the Lease, the addresses are on its interfaces (`iface`);
//! the sidecar loop sees them appear, as it sees any address, and assigns them to the
//! ENI with AllowReassignment (EC2 moves them from the peer's ENI, and Nitro announces
//! the move: the pod sends no gratuitous ARP).
//!
//! Fencing: the addresses come off the interfaces the moment the Lease is not renewed
//! within the renew deadline, which ends before the lease duration any peer waits
//! (counted from before the renewal was sent): two pods never answer for one address,
//! even when the holder is cut off from the API server and not from the VPC. A holder
//! that stops gracefully takes the addresses off and then gives the Lease up, so the
//! peer takes over at once instead of after the lease duration. A holder that cannot
//! put the addresses on its interfaces gives the Lease up too, and tries again later.

mod iface;
mod metrics;

use std::net::IpAddr;
use std::time::{Duration, Instant};

use ipmgmt_common::lease::Election;
use k8s_openapi::api::coordination::v1::Lease;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{error, info, warn};

pub use iface::{IfaceError, Interfaces, Placed, place};

use crate::discover::{Addresses, Changes, DiscoverError, Snapshot};
pub use metrics::Metrics;

/// How long a replica that could not put the addresses on its interfaces stays out of
/// the election.
const STEP_ASIDE: Duration = Duration::from_secs(5);
/// How often the holder checks that its addresses are still on its interfaces.
const RECHECK: Duration = Duration::from_secs(5);

/// What the holder needs besides its interfaces.
#[derive(Clone, Debug)]
pub struct Settings {
    pub ips: Vec<IpAddr>,
    /// The Lease's name (`ipmgmt_common::floating::lease_name`).
    pub lease: String,
    /// This replica: the pod's name.
    pub identity: String,
    /// The pod's namespace and service account, for the RoleBinding a 403 asks for.
    pub namespace: String,
    pub service_account: String,
    pub lease_duration: Duration,
    pub renew_deadline: Duration,
    pub retry_period: Duration,
}

/// The one line that says which RoleBinding the pod's Lease needs.
fn forbidden(namespace: &str, service_account: &str) -> String {
    format!(
        "the API server refused the pod's service account {namespace}/{service_account} the \
         floating addresses' Lease; bind the chart's ClusterRole to it: kubectl -n {namespace} \
         create rolebinding ipmgmt-floating --clusterrole=ipmgmt-floating \
         --serviceaccount={namespace}:{service_account}"
    )
}

/// What the sidecar starts a holder from.
pub struct Start {
    pub settings: Settings,
    pub ifaces: Interfaces,
    pub api: kube::Api<Lease>,
}

/// The pod's addresses without the routed floating ones: those are reached through
/// route tables, never assigned to an ENI (they lie outside the VPC's CIDRs).
pub struct Unrouted<A> {
    pub inner: A,
    pub routed: Vec<IpAddr>,
}

impl<A: Addresses + Send + Sync> Addresses for Unrouted<A> {
    async fn snapshot(&self) -> Result<Snapshot, DiscoverError> {
        let mut snapshot = self.inner.snapshot().await?;
        snapshot.addresses.retain(|l| !self.routed.contains(&l.ip));
        Ok(snapshot)
    }

    async fn changed(&mut self, quiet: Duration) -> Option<Changes> {
        let mut changes = self.inner.changed(quiet).await?;
        changes.added.retain(|ip| !self.routed.contains(ip));
        Some(changes)
    }
}

/// Whether the floating addresses are on this pod's interfaces, as the holder last
/// left them; the sidecar loop reads it to move an Elastic IP and routes.
pub type Holding = watch::Receiver<bool>;

/// The holder: the election, and the addresses on the interfaces while it is won.
pub struct Holder {
    settings: Settings,
    ifaces: Interfaces,
    api: kube::Api<Lease>,
    holding: watch::Sender<bool>,
    metrics: Metrics,
}

/// What woke the holder.
enum Next {
    Stop,
    Leading(bool),
    Recheck,
}

/// An election in progress, stopped (and its Lease given up) by `stop`.
struct Running {
    leading: watch::Receiver<bool>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Running {
    async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

impl Holder {
    pub fn new(start: Start, metrics: Metrics) -> (Holder, Holding) {
        let Start {
            settings,
            ifaces,
            api,
        } = start;
        let (holding, watching) = watch::channel(false);
        let holder = Holder {
            settings,
            ifaces,
            api,
            holding,
            metrics,
        };
        (holder, watching)
    }

    fn elect(&self) -> Running {
        let s = &self.settings;
        let election = Election {
            api: self.api.clone(),
            name: s.lease.clone(),
            identity: s.identity.clone(),
            lease_duration: s.lease_duration,
            renew_deadline: s.renew_deadline,
            retry_period: s.retry_period,
            when_forbidden: forbidden(&s.namespace, &s.service_account),
        };
        let (leading_tx, leading) = watch::channel(false);
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(election.run(leading_tx, stopped));
        Running {
            leading,
            stop,
            task,
        }
    }

    /// Runs until `stop` turns true; then takes the addresses off the interfaces and
    /// gives the Lease up, in that order.
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        let ips = &self.settings.ips;
        // What an earlier run of this container left on the interfaces is not held:
        // it waits for the Lease like any replica.
        self.let_go("not holding the lease yet").await;
        info!(lease = %self.settings.lease, addresses = ?ips, "contending for the floating addresses");
        let mut election = self.elect();
        let mut recheck = tokio::time::interval(RECHECK);
        recheck.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let holding = *self.holding.borrow();
            let next = tokio::select! {
                biased;
                _ = stop.wait_for(|s| *s) => Next::Stop,
                changed = election.leading.changed() => match changed {
                    Ok(()) => Next::Leading(*election.leading.borrow_and_update()),
                    Err(_) => Next::Stop,
                },
                _ = recheck.tick(), if holding => Next::Recheck,
            };
            let held = match (next, holding) {
                (Next::Stop, _) => break,
                (Next::Leading(true), false) => self.take(Some(Instant::now())).await,
                (Next::Recheck, true) => self.take(None).await,
                (Next::Leading(false), true) => {
                    self.let_go("the lease was not renewed within the renew deadline, or another replica holds it").await;
                    self.metrics.lost();
                    true
                }
                _ => true,
            };
            if !held {
                election = self.step_aside(election, &mut stop).await;
            }
        }
        // Off the interfaces first, then the Lease: the peer that takes it next finds
        // no other pod answering for the addresses.
        if *self.holding.borrow() {
            self.let_go("stopping").await;
            self.metrics.released();
        }
        election.stop().await;
    }

    /// Puts the addresses on the interfaces; false when it could not.
    async fn take(&self, led_at: Option<Instant>) -> bool {
        let ips = &self.settings.ips;
        let placed = match self.ifaces.place(ips).await {
            Ok(placed) => placed,
            Err(e) => {
                error!(lease = %self.settings.lease, error = %e, "cannot hold the floating addresses");
                return false;
            }
        };
        if let Err(e) = self.ifaces.add(&placed).await {
            error!(lease = %self.settings.lease, error = %e, "cannot hold the floating addresses");
            // Whatever was added is taken off again: nothing half-held.
            let _ = self.ifaces.remove(ips).await;
            return false;
        }
        if let Some(at) = led_at {
            let took = at.elapsed();
            self.metrics.holding(took);
            let on: Vec<String> = placed
                .iter()
                .map(|p| format!("{} on {}", p.ip, p.iface))
                .collect();
            info!(lease = %self.settings.lease, addresses = %on.join(", "), took = ?took, "holding the floating addresses");
        }
        self.holding.send_replace(true);
        true
    }

    /// Takes the addresses off every interface. A failure is retried: an address left
    /// on an interface while another pod holds it answers for it twice.
    async fn let_go(&self, why: &str) {
        self.holding.send_replace(false);
        let ips = &self.settings.ips;
        let mut wait = Duration::from_millis(10);
        loop {
            match self.ifaces.remove(ips).await {
                Ok(0) => return,
                Ok(n) => {
                    info!(lease = %self.settings.lease, removed = n, why, "floating addresses taken off the interfaces");
                    return;
                }
                Err(e) => {
                    error!(lease = %self.settings.lease, error = %e, "cannot take the floating addresses off the interfaces; retrying");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_millis(200));
                }
            }
        }
    }

    /// Gives the Lease up, so a peer that can hold the addresses takes them, and
    /// contends again after a while.
    async fn step_aside(&self, election: Running, stop: &mut watch::Receiver<bool>) -> Running {
        self.let_go("stepping aside").await;
        election.stop().await;
        warn!(lease = %self.settings.lease, wait = ?STEP_ASIDE, "gave the lease up to a replica that can hold the addresses; contending again later");
        tokio::select! {
            _ = tokio::time::sleep(STEP_ASIDE) => {}
            _ = stop.wait_for(|s| *s) => {}
        }
        self.elect()
    }
}
