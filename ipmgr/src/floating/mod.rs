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
//! even when the holder is cut off from the API server and not from the VPC. And the
//! kernel backs that up: each address is on the interface with a lifetime of one
//! second that every timely renewal refreshes, so a holder killed outright (SIGKILL,
//! the OOM killer) loses the addresses within three seconds of its last renewal, still
//! before a peer may take the Lease. The holder refreshes the lifetime every 250 ms for
//! as long as the last renewal vouches for the addresses, so that the kernel's
//! deadline falls close to the renew deadline and a slow renewal does not make them
//! lapse. A holder that stops gracefully takes the addresses off and then gives the
//! Lease up, so the peer takes over at once instead of after the lease duration. A
//! holder that cannot put the addresses on its interfaces gives the Lease up too, and
//! tries again later.

pub mod ec2;
mod follow;
mod iface;
mod metrics;

use std::net::IpAddr;
use std::time::{Duration, Instant};

use ipmgmt_common::aws::Action;
use ipmgmt_common::lease::Election;
use k8s_openapi::api::coordination::v1::Lease;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{error, info, warn};

pub use follow::{Mover, placements};
pub use iface::{IfaceError, Interfaces, Placed, place};

use crate::discover::{Addresses, Changes, DiscoverError, Snapshot};
pub use metrics::Metrics;

/// How long a replica that could not put the addresses on its interfaces stays out of
/// the election.
const STEP_ASIDE: Duration = Duration::from_secs(5);

/// What the holder needs besides its interfaces.
#[derive(Clone, Debug)]
pub struct Settings {
    pub ips: Vec<IpAddr>,
    /// Route tables reach the addresses: they need not lie in an interface's subnet.
    pub routed: bool,
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
         floating addresses' Lease; bind the chart's ClusterRole to it (RELEASE-floating; \
         ipmgmt-floating for a release named ipmgmt): kubectl -n {namespace} create \
         rolebinding ipmgmt-floating --clusterrole=ipmgmt-floating \
         --serviceaccount={namespace}:{service_account}"
    )
}

/// Starts the mover, given what it follows (`Mover::run`'s inputs) and its metrics;
/// made where the EC2 client is, so the sidecar need not know its type.
pub type SpawnMover = Box<
    dyn FnOnce(
            Holding,
            watch::Receiver<Placements>,
            watch::Receiver<bool>,
            Metrics,
        ) -> JoinHandle<()>
        + Send,
>;

/// What a pod asked for beyond its own addresses: a holder for floating addresses,
/// a mover for an Elastic IP and routes; neither for most pods.
#[derive(Default)]
pub struct Floating {
    pub holder: Option<Start>,
    pub mover: Option<SpawnMover>,
}

/// A task beside the sidecar loop and what stops it.
struct Task {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Task {
    async fn stop(self, within: Duration, what: &str) {
        let _ = self.stop.send(true);
        if tokio::time::timeout(within, self.task).await.is_err() {
            warn!(waited = ?within, "the floating addresses' {what} did not stop in time");
        }
    }
}

/// The holder and the mover, running beside the sidecar loop.
pub struct Tasks {
    holder: Option<Task>,
    mover: Option<Task>,
    placed: watch::Sender<Placements>,
    holding: Holding,
    metrics: Metrics,
    /// The term whose addresses were last seen on this node's ENI.
    on_eni: std::sync::Mutex<Option<Instant>>,
    /// Keeps a pool EIP's constant hold open while no holder makes one.
    _always: Option<watch::Sender<Option<Held>>>,
}

impl Tasks {
    pub fn start(floating: Floating, metrics: Metrics) -> Tasks {
        let (placed, placed_rx) = watch::channel(Placements::new());
        let (holder, holding, always) = match floating.holder {
            Some(start) => {
                let (holder, holding) = Holder::new(start, metrics.clone());
                let (stop, stopped) = watch::channel(false);
                let task = tokio::spawn(holder.run(stopped));
                (Some(Task { stop, task }), holding, None)
            }
            // No floating addresses: a pool EIP follows the pod's own address for as
            // long as the pod runs.
            None => {
                let always = Held {
                    won_at: Instant::now(),
                    on: Vec::new(),
                };
                let (tx, rx) = watch::channel(Some(always));
                (None, rx, Some(tx))
            }
        };
        let watching = holding.clone();
        let mover = floating.mover.map(|spawn| {
            let (stop, stopped) = watch::channel(false);
            let task = spawn(holding, placed_rx, stopped, metrics.clone());
            Task { stop, task }
        });
        Tasks {
            holder,
            mover,
            placed,
            holding: watching,
            metrics,
            on_eni: std::sync::Mutex::new(None),
            _always: always,
        }
    }

    /// What a pass found: where each of the pod's addresses is.
    pub fn publish(&self, placements: Placements) {
        // A take-over's step "on the ENI": every floating address the holder put on
        // its interfaces is where a pass found it on this node's ENI. Routed addresses
        // are never an ENI's.
        if let Some(held) = self.holding.borrow().as_ref().filter(|h| !h.on.is_empty()) {
            let mut on_eni = self.on_eni.lock().unwrap_or_else(|p| p.into_inner());
            let all = held.on.iter().all(|p| placements.contains_key(&p.ip));
            if all && *on_eni != Some(held.won_at) {
                *on_eni = Some(held.won_at);
                self.metrics
                    .reached(metrics::Stage::Eni, held.won_at.elapsed());
            }
        }
        self.placed.send_if_modified(|current| {
            let changed = *current != placements;
            *current = placements;
            changed
        });
    }

    /// Takes the floating addresses off the interfaces and gives their Lease up, then
    /// gives back an Elastic IP association that is still this pod's; both before the
    /// pod's own addresses are released.
    pub async fn stop(self, renew_deadline: Duration, release_timeout: Duration) {
        if let Some(holder) = self.holder {
            holder
                .stop(renew_deadline + Duration::from_secs(1), "holder")
                .await;
        }
        if let Some(mover) = self.mover {
            mover.stop(release_timeout, "Elastic IP and routes").await;
        }
    }
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

/// This pod's hold on the floating addresses: since when, and where they are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Held {
    /// When this replica won the Lease: one term.
    pub won_at: Instant,
    pub on: Vec<Placed>,
}

/// Whether the floating addresses are on this pod's interfaces, as the holder last
/// left them; the mover reads it to move an Elastic IP and routes.
pub type Holding = watch::Receiver<Option<Held>>;

/// Where one of the pod's addresses is: its interface and the ENI EC2 shows it on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Placement {
    pub iface: String,
    pub eni: String,
}

/// The pod's addresses by address, as the sidecar's last pass left them.
pub type Placements = std::collections::BTreeMap<IpAddr, Placement>;

/// What to do about a refused floating call, when it is specific to them.
pub fn hint(action: Action, code: Option<&str>) -> Option<String> {
    Some(match code? {
        "UnauthorizedOperation" | "AccessDenied" => match action {
            Action::DescribeAddresses | Action::DescribeRouteTables => format!(
                "the IP manager's IAM role lacks ec2:{action}: attach \
                 deploy/floating-iam-policy.json to it"
            ),
            _ => format!(
                "the IP manager's IAM role lacks ec2:{action} on this resource: attach \
                 deploy/floating-iam-policy.json to it, and tag the Elastic IP or route \
                 table ipmgmt.aws/floating=true (the policy allows only those)"
            ),
        },
        "InvalidAllocationID.NotFound" => {
            "no such Elastic IP in this Region: check ipmgmt.aws/elastic-ip".into()
        }
        "InvalidRouteTableID.NotFound" => {
            "no such route table in this Region: check ipmgmt.aws/route-tables".into()
        }
        "Resource.AlreadyAssociated" => {
            "the Elastic IP is associated elsewhere and the pool takes only free ones".into()
        }
        _ => return None,
    })
}

/// The holder: the election, and the addresses on the interfaces while it is won.
pub struct Holder {
    settings: Settings,
    ifaces: Interfaces,
    api: kube::Api<Lease>,
    holding: watch::Sender<Option<Held>>,
    metrics: Metrics,
}

/// What woke the holder.
enum Next {
    Stop,
    Leading(bool),
    Renewed,
    Refresh,
}

/// An election in progress, stopped (and its Lease given up) by `stop`.
struct Running {
    leading: watch::Receiver<bool>,
    /// When the last successful try began.
    renewed: watch::Receiver<Option<Instant>>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Running {
    async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

/// The addresses' lifetime on the interfaces, in whole seconds as the kernel counts
/// it; each renewal of the Lease refreshes it.
pub const LIFETIME_SECONDS: u32 = 1;
/// The kernel checks lifetimes on a timer rounded up to whole seconds: an expired
/// address may stay up to this much longer.
const KERNEL_SLACK: Duration = Duration::from_secs(1);
/// Kept between the kernel's last possible removal and the earliest a peer may take
/// the Lease.
const MARGIN: Duration = Duration::from_millis(100);
/// How often the holder refreshes the addresses' lifetime while the last renewal still
/// vouches for them: if no renewal follows, the kernel takes them off between 1.65 s
/// and 2.9 s after the last one began (a peer may take the Lease 3 s after it).
const REFRESH_EVERY: Duration = Duration::from_millis(250);
/// The shortest lease duration that leaves a renewal any time to refresh the
/// addresses' lifetime (`Holder::refresh_allowed`).
pub const MIN_LEASE_SECONDS: u64 = 3;

impl Holder {
    pub fn new(start: Start, metrics: Metrics) -> (Holder, Holding) {
        let Start {
            settings,
            ifaces,
            api,
        } = start;
        let (holding, watching) = watch::channel(None);
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
        let (renewed_tx, renewed) = watch::channel(None);
        let election = Election {
            api: self.api.clone(),
            name: s.lease.clone(),
            identity: s.identity.clone(),
            lease_duration: s.lease_duration,
            renew_deadline: s.renew_deadline,
            retry_period: s.retry_period,
            when_forbidden: forbidden(&s.namespace, &s.service_account),
            renewed: Some(renewed_tx),
        };
        let (leading_tx, leading) = watch::channel(false);
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(election.run(leading_tx, stopped));
        Running {
            leading,
            renewed,
            stop,
            task,
        }
    }

    /// Whether a renewal that began at `began` may still refresh the addresses'
    /// lifetime: the kernel must have taken them off by itself before any peer may take
    /// the Lease, which the peers count from after the renewal's write (the Lease's
    /// duration in whole seconds, rounded up as it is written).
    fn refresh_allowed(&self, began: Instant) -> bool {
        let written = ipmgmt_common::lease::written(self.settings.lease_duration);
        let lifetime = Duration::from_secs(LIFETIME_SECONDS.into());
        began.elapsed() + lifetime + KERNEL_SLACK + MARGIN <= written
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
        let mut refresh = tokio::time::interval(REFRESH_EVERY);
        refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Where the addresses are, while this replica holds them.
        let mut held: Option<Vec<Placed>> = None;
        // When this replica won the Lease, until it holds the addresses.
        let mut won_at: Option<Instant> = None;
        let mut lapsing = false;
        loop {
            let next = tokio::select! {
                biased;
                _ = stop.wait_for(|s| *s) => Next::Stop,
                changed = election.leading.changed() => match changed {
                    Ok(()) => Next::Leading(*election.leading.borrow_and_update()),
                    Err(_) => Next::Stop,
                },
                changed = election.renewed.changed() => match changed {
                    Ok(()) => Next::Renewed,
                    Err(_) => Next::Stop,
                },
                _ = refresh.tick(), if held.is_some() => Next::Refresh,
            };
            let leading = *election.leading.borrow();
            let began = *election.renewed.borrow_and_update();
            let vouched = began.is_some_and(|b| self.refresh_allowed(b));
            let ok = match next {
                Next::Stop => break,
                Next::Leading(false) => {
                    won_at = None;
                    if held.take().is_some() {
                        self.let_go("the lease was not renewed within the renew deadline, or another replica holds it").await;
                        self.metrics.lost();
                    }
                    true
                }
                Next::Leading(true) | Next::Renewed | Next::Refresh if !leading => true,
                Next::Leading(true) | Next::Renewed | Next::Refresh => {
                    let won = *won_at.get_or_insert_with(Instant::now);
                    if lapsing == vouched {
                        lapsing = !vouched;
                        if lapsing {
                            warn!(lease = %self.settings.lease, "the lease has not been renewed for a while: the floating addresses lapse from the interfaces unless it is renewed soon");
                        }
                    }
                    match (vouched, &held) {
                        (false, _) => true,
                        (true, Some(placed)) => self.refresh(placed).await,
                        (true, None) => match self.take(won).await {
                            Some(placed) => {
                                held = Some(placed);
                                true
                            }
                            None => false,
                        },
                    }
                }
            };
            if !ok {
                held = None;
                won_at = None;
                election = self.step_aside(election, &mut stop).await;
            }
        }
        // Off the interfaces first, then the Lease: the peer that takes it next finds
        // no other pod answering for the addresses.
        if held.is_some() {
            self.let_go("stopping").await;
            self.metrics.released();
        }
        election.stop().await;
    }

    /// Puts the addresses on the interfaces, in the term won at `won_at`; where they
    /// went, or None when they cannot be held here.
    async fn take(&self, won_at: Instant) -> Option<Vec<Placed>> {
        let lease = &self.settings.lease;
        let placed = match self
            .ifaces
            .place(&self.settings.ips, self.settings.routed)
            .await
        {
            Ok(placed) => placed,
            Err(e) => {
                error!(lease = %lease, error = %e, "cannot hold the floating addresses");
                return None;
            }
        };
        if !self.refresh(&placed).await {
            return None;
        }
        let took = won_at.elapsed();
        self.metrics.holding(took);
        let on: Vec<String> = (placed.iter())
            .map(|p| format!("{} on {}", p.ip, p.iface))
            .collect();
        info!(lease = %lease, addresses = %on.join(", "), took = ?took, "holding the floating addresses");
        self.holding.send_replace(Some(Held {
            won_at,
            on: placed.clone(),
        }));
        Some(placed)
    }

    /// Puts the addresses where they were placed, or refreshes their lifetime there.
    async fn refresh(&self, placed: &[Placed]) -> bool {
        match self.ifaces.hold(placed, LIFETIME_SECONDS).await {
            Ok(()) => true,
            Err(e) => {
                error!(lease = %self.settings.lease, error = %e, "cannot hold the floating addresses");
                false
            }
        }
    }

    /// Takes the addresses off every interface. A failure is retried: an address left
    /// on an interface while another pod holds it answers for it twice.
    async fn let_go(&self, why: &str) {
        self.holding.send_replace(None);
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
