//! The Elastic IP and the route-table routes follow the floating addresses: while this
//! pod holds them, the EIP is associated with the address on this node's ENI and each
//! table's `/32` (or `/128`) route points at this node's ENI, each change confirmed
//! by describing it again. They are checked again 2 s after a take-over (a call the
//! previous holder had in flight may land late) and every 30 s after.
//!
//! Every call is made only while the term it was decided in lasts: a pod that loses
//! the Lease stops at once and never points anything at itself again. On stopping, the
//! EIP is disassociated only if its association is still the one this pod made (the
//! association id changes when a peer takes it over, so the call cannot undo the
//! peer's). Routes are left as they are: EC2 cannot delete a route only if it still
//! points here, and a delete could remove the peer's new route.
//!
//! Without floating addresses, `ipmgmt.aws/elastic-ip: tag:KEY=VALUE` gives each pod
//! (a StatefulSet's) an EIP of its own from the pool, for its own IPv4 address.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use ipmgmt_common::aws::Ec2Error;
use ipmgmt_common::floating::{ElasticIp, RouteTables};
use ipnet::IpNet;
use tokio::sync::watch;
use tracing::{error, info, warn};

use super::ec2::{Association, FloatingEc2, host_route};
use super::metrics::{Metrics, Stage};
use super::{Held, Placement, Placements};

/// The first check again after a take-over, and the ones after it.
const AFTER_TAKEOVER: Duration = Duration::from_secs(2);
const VERIFY_EVERY: Duration = Duration::from_secs(30);
const RETRY_FIRST: Duration = Duration::from_millis(250);
const RETRY_MAX: Duration = Duration::from_secs(30);
const CONFIRM_EVERY: Duration = Duration::from_millis(100);

/// What follows the addresses, and where from.
pub struct Mover<F> {
    pub ec2: F,
    pub eip: Option<ElasticIp>,
    pub tables: Option<RouteTables>,
    /// The floating addresses (none: a pool EIP for the pod's own address).
    pub ips: Vec<IpAddr>,
    pub confirm: Duration,
    pub metrics: Metrics,
}

/// What one check keeps true.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Want {
    /// The EIP, for this address on this ENI.
    eip: Option<(Ipv4Addr, String)>,
    /// Each route, to this ENI.
    routes: Vec<(IpNet, String)>,
}

/// Why a check did not finish.
enum Stopped {
    /// The term ended: another pod holds the addresses now.
    TermEnded,
    Failed(String),
}

impl From<Ec2Error> for Stopped {
    fn from(e: Ec2Error) -> Self {
        Stopped::Failed(e.to_string())
    }
}

impl<F: FloatingEc2> Mover<F> {
    /// Runs until `stop` turns true, then gives back the EIP association it made if it
    /// is still the one it made.
    pub async fn run(
        self,
        holding: watch::Receiver<Option<Held>>,
        mut placed: watch::Receiver<Placements>,
        mut stop: watch::Receiver<bool>,
    ) {
        let mut held_rx = holding.clone();
        let mut term: Option<Instant> = None;
        let mut reached: BTreeSet<&'static str> = BTreeSet::new();
        let mut next: Option<Instant> = Some(Instant::now());
        let mut backoff = RETRY_FIRST;
        let mut last_failure: Option<String> = None;
        let mut ours: Option<Association> = None;
        loop {
            let due = next;
            tokio::select! {
                biased;
                _ = stop.wait_for(|s| *s) => break,
                changed = held_rx.changed() => if changed.is_err() { break },
                changed = placed.changed() => if changed.is_err() { break },
                _ = tokio::time::sleep_until(due.unwrap_or_else(Instant::now).into()), if due.is_some() => {}
            }
            let Some(held) = held_rx.borrow_and_update().clone() else {
                term = None;
                next = None;
                continue;
            };
            if term != Some(held.won_at) {
                term = Some(held.won_at);
                reached.clear();
                next = Some(Instant::now());
                backoff = RETRY_FIRST;
            }
            // Waiting for where the addresses are: a pass has just told.
            next = next.or(Some(Instant::now()));
            let places = placed.borrow_and_update().clone();
            if next.is_none_or(|at| at > Instant::now()) {
                continue;
            }
            let Some(want) = self.want(&held, &places) else {
                // This pod's ENI for the addresses is not known yet: the next pass tells.
                next = None;
                continue;
            };
            let result = tokio::select! {
                biased;
                _ = stop.wait_for(|s| *s) => break,
                result = self.apply(&want, &holding, held.won_at) => result,
            };
            match result {
                Ok(association) => {
                    if association.is_some() {
                        ours = association;
                    }
                    let took = held.won_at.elapsed();
                    if want.eip.is_some() && reached.insert("eip") {
                        self.metrics.reached(Stage::ElasticIp, took);
                        info!(took = ?took, "floating addresses: the Elastic IP points at this pod");
                    }
                    if !want.routes.is_empty() && reached.insert("routes") {
                        self.metrics.reached(Stage::Routes, took);
                        info!(took = ?took, "floating addresses: the routes point at this pod");
                    }
                    let again = if reached.insert("verified-once") {
                        AFTER_TAKEOVER
                    } else {
                        VERIFY_EVERY
                    };
                    next = Some(Instant::now() + again);
                    backoff = RETRY_FIRST;
                    last_failure = None;
                }
                Err(Stopped::TermEnded) => next = None,
                Err(Stopped::Failed(line)) => {
                    if last_failure.as_deref() != Some(&line) {
                        error!(error = %line, retry_in = ?backoff, "floating addresses: cannot point the Elastic IP or routes at this pod");
                        last_failure = Some(line);
                    }
                    next = Some(Instant::now() + ipmgmt_common::aws::jittered(backoff));
                    backoff = (backoff * 2).min(RETRY_MAX);
                }
            }
        }
        if let Some(association) = ours {
            self.give_back(&association).await;
        }
    }

    /// What should point where, from where the addresses are; None while this pod's
    /// ENI for them is not known.
    fn want(&self, held: &Held, places: &Placements) -> Option<Want> {
        let eni_of_iface = |iface: &str| {
            (places.values())
                .find(|p: &&Placement| p.iface == iface)
                .map(|p| p.eni.clone())
        };
        // A floating address's ENI: the one EC2 shows it on, or for a routed one, the
        // ENI of the interface it is on.
        let eni_of = |ip: IpAddr| -> Option<String> {
            if self.tables.is_none() {
                return places.get(&ip).map(|p| p.eni.clone());
            }
            let placed = held.on.iter().find(|p| p.ip == ip)?;
            eni_of_iface(&placed.iface)
        };
        let eip = match &self.eip {
            None => None,
            Some(_) => {
                let v4 = (self.ips.iter()).find_map(|ip| match ip {
                    IpAddr::V4(v4) => Some(*v4),
                    IpAddr::V6(_) => None,
                });
                match v4 {
                    Some(v4) => Some((v4, eni_of(IpAddr::V4(v4))?)),
                    // A pool EIP for the pod's own first IPv4 address.
                    None => (places.iter()).find_map(|(ip, p)| match ip {
                        IpAddr::V4(v4) => Some((*v4, p.eni.clone())),
                        IpAddr::V6(_) => None,
                    }),
                }
            }
        };
        if self.eip.is_some() && eip.is_none() {
            return None;
        }
        let mut routes = Vec::new();
        if self.tables.is_some() {
            for ip in &self.ips {
                routes.push((host_route(*ip), eni_of(*ip)?));
            }
        }
        Some(Want { eip, routes })
    }

    /// Whether the term `won_at` still lasts.
    fn lasts(holding: &watch::Receiver<Option<Held>>, won_at: Instant) -> Result<(), Stopped> {
        match holding.borrow().as_ref() {
            Some(held) if held.won_at == won_at => Ok(()),
            _ => Err(Stopped::TermEnded),
        }
    }

    /// Makes `want` true and confirms it; returns the EIP association it made or found.
    async fn apply(
        &self,
        want: &Want,
        holding: &watch::Receiver<Option<Held>>,
        won_at: Instant,
    ) -> Result<Option<Association>, Stopped> {
        // Routes are checked first: a refused source/destination check leaves nothing
        // half-done, EIP included.
        if let Some(tables) = &self.tables {
            self.routes(tables, &want.routes, holding, won_at).await?;
        }
        match (&want.eip, &self.eip) {
            (Some((ip, eni)), Some(which)) => {
                self.eip(which, *ip, eni, holding, won_at).await.map(Some)
            }
            _ => Ok(None),
        }
    }

    async fn routes(
        &self,
        which: &RouteTables,
        want: &[(IpNet, String)],
        holding: &watch::Receiver<Option<Held>>,
        won_at: Instant,
    ) -> Result<(), Stopped> {
        let enis: BTreeSet<&str> = want.iter().map(|(_, eni)| eni.as_str()).collect();
        for eni in enis {
            if self.ec2.source_dest_check(eni).await? {
                return Err(Stopped::Failed(format!(
                    "ENI {eni} has its source/destination check on, so EC2 drops the traffic \
                     routed to the floating addresses: turn it off (aws ec2 \
                     modify-network-interface-attribute --network-interface-id {eni} \
                     --no-source-dest-check); no route was changed"
                )));
            }
        }
        let tables = self.ec2.route_tables(which).await?;
        if tables.is_empty() {
            return Err(Stopped::Failed(format!(
                "no route table matches ipmgmt.aws/route-tables ({}); no route was changed",
                which
            )));
        }
        let mut changed = false;
        for table in &tables {
            for (dest, eni) in want {
                let current = table.route(*dest);
                if current == Some(Some(eni.as_str())) {
                    continue;
                }
                Self::lasts(holding, won_at)?;
                self.ec2
                    .route(&table.id, *dest, eni, current.is_some())
                    .await?;
                changed = true;
            }
        }
        if !changed {
            return Ok(());
        }
        let until = Instant::now() + self.confirm;
        loop {
            let tables = self.ec2.route_tables(which).await?;
            let pending: Vec<String> = (tables.iter())
                .flat_map(|t| {
                    (want.iter())
                        .filter(|(d, e)| t.route(*d) != Some(Some(e.as_str())))
                        .map(|(d, _)| format!("{} {d}", t.id))
                })
                .collect();
            if pending.is_empty() {
                return Ok(());
            }
            if Instant::now() >= until {
                return Err(Stopped::Failed(format!(
                    "routes not confirmed within {:?}: {}",
                    self.confirm,
                    pending.join(", ")
                )));
            }
            tokio::time::sleep(CONFIRM_EVERY).await;
        }
    }

    async fn eip(
        &self,
        which: &ElasticIp,
        ip: Ipv4Addr,
        eni: &str,
        holding: &watch::Receiver<Option<Held>>,
        won_at: Instant,
    ) -> Result<Association, Stopped> {
        let points_here =
            |a: &Association| a.eni.as_deref() == Some(eni) && a.private_ip == Some(ip);
        let eips = self.ec2.eips(which).await?;
        if let Some(a) = (eips.iter()).find_map(|e| e.association.clone().filter(points_here)) {
            return Ok(a);
        }
        let (candidates, reassociate): (Vec<&str>, bool) = match which {
            ElasticIp::Allocation(id) => {
                if !eips.iter().any(|e| &e.allocation_id == id) {
                    return Err(Stopped::Failed(format!(
                        "Elastic IP {id} (ipmgmt.aws/elastic-ip) was not found in this Region"
                    )));
                }
                (vec![id.as_str()], true)
            }
            // A pool's EIP is taken only if free; two pods racing for one: EC2 lets one
            // associate and refuses the other, which tries the next.
            ElasticIp::Pool(_) => (
                (eips.iter())
                    .filter(|e| e.association.is_none())
                    .map(|e| e.allocation_id.as_str())
                    .collect(),
                false,
            ),
        };
        if candidates.is_empty() {
            return Err(Stopped::Failed(format!(
                "no unassociated Elastic IP left in the pool {}: allocate one and tag it",
                which
            )));
        }
        let mut chosen = None;
        for allocation in candidates {
            Self::lasts(holding, won_at)?;
            match self.ec2.associate(allocation, eni, ip, reassociate).await {
                Ok(()) => {
                    chosen = Some(allocation.to_owned());
                    break;
                }
                Err(e)
                    if e.code.as_deref() == Some("Resource.AlreadyAssociated") && !reassociate =>
                {
                    warn!(
                        allocation,
                        "another pod took this Elastic IP first; trying the next"
                    );
                }
                Err(e) => return Err(e.into()),
            }
        }
        let Some(allocation) = chosen else {
            return Err(Stopped::Failed(format!(
                "every Elastic IP of the pool {} was taken meanwhile",
                which
            )));
        };
        let until = Instant::now() + self.confirm;
        loop {
            let eips = self
                .ec2
                .eips(&ElasticIp::Allocation(allocation.clone()))
                .await?;
            if let Some(a) = (eips.iter()).find_map(|e| e.association.clone().filter(points_here)) {
                return Ok(a);
            }
            if Instant::now() >= until {
                return Err(Stopped::Failed(format!(
                    "Elastic IP {allocation} not shown on {ip} ({eni}) within {:?}",
                    self.confirm
                )));
            }
            tokio::time::sleep(CONFIRM_EVERY).await;
        }
    }

    /// Disassociates the EIP if `association` is still its association.
    async fn give_back(&self, association: &Association) {
        let Some(which) = &self.eip else { return };
        let still = match self.ec2.eips(which).await {
            Ok(eips) => eips.iter().any(|e| {
                e.association
                    .as_ref()
                    .is_some_and(|a| a.id == association.id)
            }),
            Err(e) => {
                warn!(error = %e, "cannot tell whether the Elastic IP still points at this pod; left as it is");
                return;
            }
        };
        if !still {
            info!("the Elastic IP points elsewhere now; left as it is");
            return;
        }
        match self.ec2.disassociate(&association.id).await {
            Ok(()) => info!(association = %association.id, "Elastic IP disassociated on stop"),
            // A peer reassociated it in between: its association has another id.
            Err(e) if e.code.as_deref() == Some("InvalidAssociationID.NotFound") => {}
            Err(e) => warn!(error = %e, "cannot disassociate the Elastic IP on stop"),
        }
    }
}

/// Where each of the pod's addresses is, by address: what the sidecar's passes found.
pub fn placements(
    placed: &[(IpAddr, String)],
    locals: &[crate::eni::Local],
) -> BTreeMap<IpAddr, Placement> {
    (placed.iter())
        .filter_map(|(ip, eni)| {
            let local = locals.iter().find(|l| l.ip == *ip)?;
            Some((
                *ip,
                Placement {
                    iface: local.iface.clone(),
                    eni: eni.clone(),
                },
            ))
        })
        .collect()
}
