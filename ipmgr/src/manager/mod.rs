//! One pass: describe this instance's ENIs, place each address, make the planned
//! calls, and confirm they landed. And the release on stop.
//!
//! A pass goes as far as it can: an address that cannot be placed or assigned is
//! reported on its own, after every other address has been assigned. Only a failure
//! that leaves nothing to go on (this instance's ENIs cannot be described) fails the
//! pass as a whole.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tracing::{info, warn};

use crate::ec2::{Action, Ec2, Ec2Error};
use crate::eni::{self, Eni, Local, Placement, Policy, Subnet};
use crate::plan::{self, Batch, Plan, Rules};

mod outcome;
mod subnets;

pub use outcome::{AddressError, Outcome, PassError, Take};
use outcome::{account, explain_refusal, left_alone};

#[derive(Clone, Debug)]
pub struct Settings {
    pub rules: Rules,
    pub policy: Policy,
    /// How long to wait for EC2 to show an assignment, which is asynchronous for
    /// reassigned (floating) addresses.
    pub confirm_timeout: Duration,
}

pub struct Manager<E> {
    ec2: E,
    instance_id: String,
    settings: Settings,
    /// The subnets of the last pass, so that a release on stop needs no describe.
    subnets: Mutex<HashMap<String, Subnet>>,
    /// The instance's ENIs as the last pass left them (described, or confirmed after
    /// its own changes); forgotten when a pass fails. An address event then costs the
    /// assignment and its confirmation only.
    enis: Mutex<Option<Vec<Eni>>>,
    /// ENIs the next `assign` may start from instead of describing: those described
    /// while finding the instance (by the interfaces' MACs), or those of a pass whose
    /// only failures were throttled calls, which changed nothing. Taken by that pass.
    unchanged: Mutex<Option<Start>>,
}

/// ENIs a pass may start from without describing them.
struct Start {
    enis: Vec<Eni>,
    /// Only the ENIs with the pod's interfaces' MACs, not all of the instance's.
    by_mac: bool,
}

impl<E: Ec2> Manager<E> {
    pub fn new(ec2: E, instance_id: String, settings: Settings) -> Self {
        Manager {
            ec2,
            instance_id,
            settings,
            subnets: Mutex::new(HashMap::new()),
            enis: Mutex::new(None),
            unchanged: Mutex::new(None),
        }
    }

    /// The first pass starts from these ENIs of the instance, just described, instead
    /// of describing them again, when every address's interface carries one of their
    /// MACs (then no other ENI of the instance changes where an address goes).
    pub fn starting_from(self, enis: Option<Vec<Eni>>) -> Self {
        let start = enis.map(|enis| Start { enis, by_mac: true });
        *self.unchanged.lock().unwrap_or_else(|p| p.into_inner()) = start;
        self
    }

    /// The ENIs a pass may start from without describing, if they place every address:
    /// those found by MAC place only addresses whose interface carries one of their MACs.
    fn unchanged_enis(&self, locals: &[Local]) -> Option<Start> {
        let start = (self.unchanged.lock().unwrap_or_else(|p| p.into_inner())).take()?;
        (!start.by_mac || !eni::needs_subnets(locals, &start.enis)).then_some(start)
    }

    pub fn instance_id(&self) -> &str {
        &self.instance_id
    }

    /// A pass on what EC2 shows now: the instance's ENIs described afresh, or just
    /// described (for the first pass, `starting_from`; after a pass that EC2 throttled).
    ///
    /// A pass throttled past the SDK's retries is tried again from the ENIs it saw:
    /// describing them again would cost a call from the same account's buckets and
    /// show nothing new, since a throttled call is refused before it changes anything.
    pub async fn assign(&self, locals: &[Local], take: Take<'_>) -> Result<Outcome, PassError> {
        let result = async {
            // Not remembered for the events to follow: those found by MAC are only
            // some of the instance's ENIs.
            if let Some(start) = self.unchanged_enis(locals) {
                return self
                    .pass(locals, take, start.enis, start.by_mac, true)
                    .await;
            }
            let enis = self.ec2.instance_enis(&self.instance_id).await?;
            self.remember(&enis);
            self.pass(locals, take, enis, false, false).await
        }
        .await;
        self.forget_on_failure(&result);
        result
    }

    /// A pass on an address event: the ENIs the last pass left, when there are some.
    /// Addresses the pod has just taken are assigned even where those ENIs show them,
    /// since another node may have taken them since; the confirmation describes the
    /// ENIs again. With nothing remembered, it is `assign`.
    pub async fn follow(&self, locals: &[Local], take: Take<'_>) -> Result<Outcome, PassError> {
        let Some(mut enis) = self.remembered() else {
            return self.assign(locals, take).await;
        };
        for eni in &mut enis {
            let primary = eni.primary_ipv4;
            eni.ipv4
                .retain(|v4| Some(*v4) == primary || !take.takes(IpAddr::V4(*v4)));
            eni.ipv6.retain(|v6| !take.takes(IpAddr::V6(*v6)));
        }
        let result = self.pass(locals, take, enis, false, true).await;
        self.forget_on_failure(&result);
        result
    }

    fn remembered(&self) -> Option<Vec<Eni>> {
        self.enis.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn remember(&self, enis: &[Eni]) {
        *self.enis.lock().unwrap_or_else(|p| p.into_inner()) = Some(enis.to_vec());
    }

    /// A pass that failed anywhere may have seen EC2 change under it: describe next time.
    fn forget_on_failure(&self, result: &Result<Outcome, PassError>) {
        if !matches!(result, Ok(o) if o.failed.is_empty()) {
            *self.enis.lock().unwrap_or_else(|p| p.into_inner()) = None;
        }
    }

    /// One pass from `enis`. When its only failures are throttled calls, the ENIs it
    /// last saw are kept for the next `assign` to start from.
    async fn pass(
        &self,
        locals: &[Local],
        take: Take<'_>,
        enis: Vec<Eni>,
        by_mac: bool,
        cached: bool,
    ) -> Result<Outcome, PassError> {
        let mut seen = Start {
            enis: enis.clone(),
            by_mac,
        };
        let out = self
            .pass_from(locals, take, enis, cached, &mut seen)
            .await?;
        let throttled = |f: &AddressError| matches!(f, AddressError::Ec2 { error, .. } if error.is_throttling());
        if !out.failed.is_empty() && out.failed.iter().all(throttled) {
            *self.unchanged.lock().unwrap_or_else(|p| p.into_inner()) = Some(seen);
        }
        Ok(out)
    }

    async fn pass_from(
        &self,
        locals: &[Local],
        take: Take<'_>,
        enis: Vec<Eni>,
        cached: bool,
        seen: &mut Start,
    ) -> Result<Outcome, PassError> {
        let mut subnets = self.subnets(locals, &enis, cached).await?;
        let mut placed = eni::place(locals, &enis, &subnets, &self.settings.policy);
        let unknown = eni::vpc_unknown(&placed.errors, &subnets);
        if !unknown.is_empty() {
            subnets = self.with_vpcs(&unknown).await;
            placed = eni::place(locals, &enis, &subnets, &self.settings.policy);
        }
        let mut out = Outcome::default();
        for local in placed.skipped {
            left_alone(local, &mut out);
        }
        out.failed
            .extend(placed.errors.into_iter().map(AddressError::Resolve));

        let (rules, policy) = (self.settings.rules, &self.settings.policy);
        // At a start the addresses come fresh from the network's pool: each is assigned
        // without reassignment first, and its holder looked up only if EC2 refuses. An
        // event announces an address just taken, usually a floating IP that another ENI
        // holds: its holder is looked up first.
        let assign_first = matches!(take, Take::All);
        let asking: Vec<IpAddr> = placed
            .placements
            .iter()
            .filter(|p| plan::needs_holder(p, take.takes(p.ip()), rules, assign_first))
            .map(Placement::ip)
            .collect();
        let holders = match asking.is_empty() {
            true => Vec::new(),
            false => self.ec2.holders(&asking).await?,
        };
        let plan = plan::plan(
            &placed.placements,
            |ip| take.takes(ip),
            &holders,
            rules,
            policy,
        );
        account(&plan, &mut out);
        out.calls = plan.calls();
        let mut failed = self.execute(&plan).await;

        // Matched by MAC, so assigned before the ENI's subnet was described, and refused
        // as outside its range: with the subnet and its VPC described, an address outside
        // the VPC is left alone, one in the VPC is the pool's mistake, named as such.
        // The rest of a refused batch is tried again below.
        let mut retry: Vec<Placement<'_>> = Vec::new();
        let out_of_range: Vec<Placement<'_>> = (plan.moving.iter())
            .filter(|p| (failed.iter()).any(|f| f.ip() == p.ip() && f.out_of_range()))
            .filter(|p| (subnets.get(&p.eni.subnet_id)).is_none_or(|s| s.vpc.is_none()))
            .copied()
            .collect();
        if !out_of_range.is_empty() {
            let mut ids: Vec<String> = out_of_range
                .iter()
                .map(|p| p.eni.subnet_id.clone())
                .collect();
            ids.sort();
            ids.dedup();
            match self.described(&ids).await {
                Ok(described) => subnets = described,
                Err(e) => {
                    warn!(error = %e, "the subnets of refused addresses could not be described")
                }
            }
            let mut settled = Vec::new();
            for p in &out_of_range {
                match eni::in_range(p.local, p.eni, &subnets) {
                    Ok(true) => continue,
                    Ok(false) => left_alone(p.local, &mut out),
                    Err(e) => failed.push(AddressError::Resolve(e)),
                }
                failed.retain(|f| !(f.ip() == p.ip() && matches!(f, AddressError::Ec2 { .. })));
                settled.push(*p);
            }
            retry = (out_of_range.iter())
                .filter(|p| !settled.contains(p) && settled.iter().any(|q| same_call(p, q)))
                .copied()
                .collect();
            failed.retain(|f| !retry.iter().any(|p| p.ip() == f.ip()));
        }

        // Assigned before the holder was known, and refused: planned again with the
        // holders, as if looked up first. A refused call fails every address of its
        // batch, so the batch is planned again whole when any of its addresses has a
        // holder; a batch in which none has keeps EC2's answer.
        let refused: Vec<Placement<'_>> = (plan.moving.iter())
            .filter(|p| !asking.contains(&p.ip()))
            .filter(|p| (failed.iter()).any(|f| f.ip() == p.ip() && f.maybe_held_elsewhere()))
            .copied()
            .collect();
        let late_holders = match refused.is_empty() {
            true => Vec::new(),
            false => {
                self.ec2
                    .holders(&refused.iter().map(Placement::ip).collect::<Vec<_>>())
                    .await?
            }
        };
        let held_elsewhere =
            |p: &Placement<'_>| (late_holders.iter()).any(|h| h.id != p.eni.id && h.holds(p.ip()));
        let held: Vec<Placement<'_>> = (refused.iter())
            .filter(|p| (refused.iter()).any(|q| same_call(p, q) && held_elsewhere(q)))
            .copied()
            .chain(retry)
            .collect();
        let again = plan::plan(&held, |ip| take.takes(ip), &late_holders, rules, policy);
        if !held.is_empty() {
            failed.retain(|f| !held.iter().any(|p| p.ip() == f.ip()));
            account(&again, &mut out);
            out.calls += again.calls();
            failed.extend(self.execute(&again).await);
        }

        let skipped = |p: &Placement<'_>| out.skipped.iter().any(|l| l.ip == p.ip());
        let done: Vec<Placement<'_>> = (plan.moving.iter())
            .filter(|p| !held.contains(p) && !skipped(p))
            .chain(&again.moving)
            .filter(|p| !failed.iter().any(|f| f.ip() == p.ip()))
            .copied()
            .collect();
        out.failed.extend(failed);
        if !done.is_empty() {
            let (confirmed, unconfirmed) = self.confirm(&done).await?;
            if let Some(enis) = self.remembered() {
                // The confirmation described every ENI of the instance.
                *seen = Start {
                    enis,
                    by_mac: false,
                };
            }
            out.placed
                .extend(confirmed.iter().map(|p| (p.ip(), p.eni.id.clone())));
            out.failed.extend(unconfirmed);
        }
        Ok(out)
    }

    /// Makes the planned calls, each ENI's batch on its own: a failed call fails the
    /// addresses it carried, and the other calls still run.
    async fn execute(&self, plan: &Plan<'_>) -> Vec<AddressError> {
        let mut failed = Vec::new();
        let iface = |ip: IpAddr| {
            plan.moving
                .iter()
                .find(|p| p.ip() == ip)
                .map_or_else(String::new, |p| p.local.iface.clone())
        };
        let mut fail = |ips: Vec<IpAddr>, error: Ec2Error| {
            for ip in ips {
                let iface = iface(ip);
                let error = error.clone();
                failed.push(AddressError::Ec2 { ip, iface, error });
            }
        };
        let mut unassign_failed = Vec::new();
        for b in &plan.unassign_v6 {
            let call = self.ec2.unassign_ipv6(&b.eni.id, &b.ips);
            if let Err(e) = self.logged(Action::UnassignIpv6Addresses, b, call).await {
                unassign_failed.extend(b.ips.iter().copied());
                fail(b.ips.iter().map(|&ip| ip.into()).collect(), e);
            }
        }
        let v4 = (plan.assign_v4.iter().map(|b| (b, false)))
            .chain(plan.reassign_v4.iter().map(|b| (b, true)));
        for (b, reassign) in v4 {
            let call = self.ec2.assign_ipv4(&b.eni.id, &b.ips, reassign);
            if let Err(mut e) = self.logged(Action::AssignPrivateIpAddresses, b, call).await {
                if e.code.as_deref() == Some("PrivateIpAddressLimitExceeded") {
                    e.detail = format!(
                        "{} (ENI {} holds {} IPv4 addresses; {} more asked)",
                        e.detail,
                        b.eni.id,
                        b.eni.ipv4.len(),
                        b.ips.len()
                    );
                }
                fail(b.ips.iter().map(|&ip| ip.into()).collect(), e);
            }
        }
        for b in &plan.assign_v6 {
            // Still held where the unassign failed: assigning would only fail again.
            let ips: Vec<_> = b
                .ips
                .iter()
                .filter(|ip| !unassign_failed.contains(ip))
                .copied()
                .collect();
            if ips.is_empty() {
                continue;
            }
            let batch = Batch { eni: b.eni, ips };
            let call = self.ec2.assign_ipv6(&b.eni.id, &batch.ips);
            if let Err(e) = self.logged(Action::AssignIpv6Addresses, &batch, call).await {
                fail(batch.ips.iter().map(|&ip| ip.into()).collect(), e);
            }
        }
        failed
    }

    /// Describes again until every address shows on its ENI, or the confirm timeout.
    async fn confirm<'a>(
        &self,
        targets: &[Placement<'a>],
    ) -> Result<(Vec<Placement<'a>>, Vec<AddressError>), PassError> {
        let started = Instant::now();
        let mut delay = Duration::from_millis(100);
        loop {
            let enis = self.ec2.instance_enis(&self.instance_id).await?;
            self.remember(&enis);
            let pending = plan::unconfirmed(targets, &enis);
            if pending.is_empty() || started.elapsed() >= self.settings.confirm_timeout {
                let waited = started.elapsed();
                let confirmed = targets
                    .iter()
                    .filter(|p| !pending.contains(p))
                    .copied()
                    .collect();
                let unconfirmed = pending
                    .iter()
                    .map(|p| AddressError::Unconfirmed {
                        ip: p.ip(),
                        iface: p.local.iface.clone(),
                        eni: p.eni.id.clone(),
                        waited,
                    })
                    .collect();
                return Ok((confirmed, unconfirmed));
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(2));
        }
    }

    /// Makes one EC2 call and logs it: a line per address with action, ENI, result and latency.
    async fn logged<T: std::fmt::Display>(
        &self,
        action: Action,
        batch: &Batch<'_, T>,
        call: impl std::future::Future<Output = Result<(), Ec2Error>>,
    ) -> Result<(), Ec2Error> {
        let started = Instant::now();
        let result = call
            .await
            .map_err(|e| explain_refusal(e, batch.eni, self.settings.policy.cluster_tag.as_ref()));
        let latency_ms = started.elapsed().as_secs_f64() * 1000.0;
        let eni = batch.eni.id.as_str();
        for ip in &batch.ips {
            match &result {
                Ok(()) => {
                    info!(address = %ip, eni, action = %action, result = "ok", latency_ms, "EC2 call")
                }
                Err(e) => {
                    warn!(address = %ip, eni, action = %action, result = "failed", latency_ms, error = %e, "EC2 call")
                }
            }
        }
        result
    }

    /// Unassigns what the pod still holds, each address only from the ENI its own
    /// interface rides on. Returns the calls made; the first failure, after every
    /// call was tried.
    ///
    /// It starts from the ENIs the last pass left, when it succeeded (the events
    /// followed since kept them current), so that a stop costs its unassigns only: a
    /// Deployment deleted at once stops all its pods together, with a few seconds
    /// each. If EC2 refuses an unassign (another ENI took a floating IP meanwhile, and
    /// the ENIs remembered do not show it), the ENIs are described and what they still
    /// show is released.
    pub async fn release(&self, held: &[Local]) -> Result<usize, PassError> {
        let mut calls = 0;
        if let Some(enis) = self.remembered() {
            match self.release_from(held, enis, &mut calls).await {
                Ok(()) => return Ok(calls),
                Err(e) if e.is_throttling() => return Err(e.into()),
                Err(e) => {
                    warn!(error = %e, "releasing from the ENIs of the last pass failed; describing them again")
                }
            }
        }
        let enis = self.ec2.instance_enis(&self.instance_id).await?;
        self.release_from(held, enis, &mut calls).await?;
        Ok(calls)
    }

    /// The release from these ENIs: every call tried, the first failure returned.
    async fn release_from(
        &self,
        held: &[Local],
        enis: Vec<Eni>,
        calls: &mut usize,
    ) -> Result<(), Ec2Error> {
        let subnets = (self.subnets(held, &enis, true).await).map_err(|PassError::Ec2(e)| e)?;
        let placed = eni::place(held, &enis, &subnets, &self.settings.policy);
        let release = plan::release(&placed.placements);
        let mut first_error = None;
        for b in &release.ipv4 {
            let call = self.ec2.unassign_ipv4(&b.eni.id, &b.ips);
            *calls += 1;
            if let Err(e) = self
                .logged(Action::UnassignPrivateIpAddresses, b, call)
                .await
            {
                first_error.get_or_insert(e);
            }
        }
        for b in &release.ipv6 {
            let call = self.ec2.unassign_ipv6(&b.eni.id, &b.ips);
            *calls += 1;
            if let Err(e) = self.logged(Action::UnassignIpv6Addresses, b, call).await {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

/// Whether two placements went in one assign call (one ENI, one address family): a
/// refused call failed both.
fn same_call(p: &Placement<'_>, q: &Placement<'_>) -> bool {
    p.eni.id == q.eni.id && p.ip().is_ipv4() == q.ip().is_ipv4()
}
