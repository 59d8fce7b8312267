//! One pass: describe this instance's ENIs, place each address, make the planned
//! calls, and confirm they landed. And the release on stop.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::time::{Duration, Instant};

use tracing::{info, warn};

use crate::ec2::{Ec2, Ec2Error};
use crate::eni::{self, Eni, Local, ResolveError};
use crate::plan::{self, Plan};

#[derive(Clone, Debug)]
pub struct Settings {
    /// IPv4: take an address from another ENI (floating IPs). Off: EC2 refuses instead.
    pub allow_reassignment: bool,
    /// ENIs below this device index are not candidates by subnet (0 is the primary ENI).
    pub min_device_index: i32,
    /// How long to wait for EC2 to show an assignment, which is asynchronous for
    /// reassigned (floating) addresses.
    pub confirm_timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum PassError {
    #[error("{}", .0.first().map(ToString::to_string).unwrap_or_default())]
    Resolve(Vec<ResolveError>),
    #[error(transparent)]
    Ec2(#[from] Ec2Error),
    #[error("EC2 accepted the assignment but after {waited:?} still does not show {}", pending_list(.pending))]
    Unconfirmed {
        pending: Vec<(IpAddr, String)>,
        waited: Duration,
    },
}

fn pending_list(pending: &[(IpAddr, String)]) -> String {
    pending
        .iter()
        .map(|(ip, eni)| format!("{ip} on {eni}"))
        .collect::<Vec<_>>()
        .join(", ")
}

impl PassError {
    /// Nothing a retry can fix: a configuration, permission or capacity problem.
    pub fn is_permanent(&self) -> bool {
        match self {
            PassError::Resolve(_) => true,
            PassError::Ec2(e) => e.is_permanent(),
            PassError::Unconfirmed { .. } => false,
        }
    }
}

/// What a pass did.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Each address and the ENI it is now on.
    pub placed: Vec<(IpAddr, String)>,
    /// Mutating calls made.
    pub calls: usize,
}

pub struct Manager<E> {
    ec2: E,
    instance_id: String,
    settings: Settings,
}

impl<E: Ec2> Manager<E> {
    pub fn new(ec2: E, instance_id: String, settings: Settings) -> Self {
        Manager {
            ec2,
            instance_id,
            settings,
        }
    }

    pub async fn assign(&self, locals: &[Local]) -> Result<Outcome, PassError> {
        let enis = self.ec2.instance_enis(&self.instance_id).await?;
        let placed = self.place(locals, &enis).await?;
        let targets: Vec<(IpAddr, &Eni)> = placed
            .iter()
            .map(|(ip, id)| {
                (
                    *ip,
                    enis.iter()
                        .find(|e| e.id == *id)
                        .expect("placed on a described ENI"),
                )
            })
            .collect();
        let missing_v6: Vec<Ipv6Addr> = targets
            .iter()
            .filter_map(|(ip, e)| match ip {
                IpAddr::V6(v6) if !e.holds(*ip) => Some(*v6),
                _ => None,
            })
            .collect();
        let holders = match missing_v6.is_empty() {
            true => Vec::new(),
            false => self.ec2.ipv6_holders(&missing_v6).await?,
        };
        let plan = plan::plan(&targets, &holders);
        for ip in &plan.in_place {
            let eni = placed
                .iter()
                .find(|(p, _)| p == ip)
                .map(|(_, e)| e.as_str())
                .unwrap_or_default();
            info!(address = %ip, eni, action = "none", result = "in place", "already assigned");
        }
        self.execute(&plan, &enis).await?;
        if !plan.is_empty() {
            self.confirm(&placed).await?;
        }
        Ok(Outcome {
            calls: plan.calls(),
            placed,
        })
    }

    /// Each address's ENI: by MAC, else by subnet (described only when needed).
    async fn place(
        &self,
        locals: &[Local],
        enis: &[Eni],
    ) -> Result<Vec<(IpAddr, String)>, PassError> {
        let mut placed = Vec::new();
        let mut by_mac = Vec::new();
        let mut pending = Vec::new();
        for local in locals {
            match eni::by_mac(local, enis) {
                Some(e) => by_mac.push((local, e)),
                None => pending.push(local),
            }
        }
        let mut errors = Vec::new();
        if !pending.is_empty() {
            let mut ids: Vec<String> = enis
                .iter()
                .filter(|e| e.device_index >= self.settings.min_device_index)
                .map(|e| e.subnet_id.clone())
                .collect();
            ids.sort();
            ids.dedup();
            let subnets: HashMap<String, eni::Subnet> = match ids.is_empty() {
                true => HashMap::new(),
                false => self
                    .ec2
                    .subnets(&ids)
                    .await?
                    .into_iter()
                    .map(|s| (s.id.clone(), s))
                    .collect(),
            };
            for local in pending {
                match eni::by_subnet(local, enis, &subnets, self.settings.min_device_index) {
                    Ok(e) => placed.push((local.ip, e.id.clone())),
                    Err(err) => errors.push(err),
                }
            }
        }
        placed.extend(by_mac.into_iter().map(|(l, e)| (l.ip, e.id.clone())));
        if !errors.is_empty() {
            return Err(PassError::Resolve(errors));
        }
        Ok(placed)
    }

    async fn execute(&self, plan: &Plan, enis: &[Eni]) -> Result<(), PassError> {
        for (eni, ips) in &plan.unassign_v6 {
            logged(
                "UnassignIpv6Addresses",
                eni,
                ips,
                self.ec2.unassign_ipv6(eni, ips),
            )
            .await?;
        }
        for (eni, ips) in &plan.assign_v4 {
            let call = self
                .ec2
                .assign_ipv4(eni, ips, self.settings.allow_reassignment);
            logged("AssignPrivateIpAddresses", eni, ips, call)
                .await
                .map_err(|mut e| {
                    if e.code.as_deref() == Some("PrivateIpAddressLimitExceeded") {
                        let held = enis
                            .iter()
                            .find(|x| x.id == *eni)
                            .map_or(0, |x| x.ipv4.len());
                        e.detail = format!(
                            "{} (ENI {eni} holds {held} IPv4 addresses; {} more asked)",
                            e.detail,
                            ips.len()
                        );
                    }
                    e
                })?;
        }
        for (eni, ips) in &plan.assign_v6 {
            logged(
                "AssignIpv6Addresses",
                eni,
                ips,
                self.ec2.assign_ipv6(eni, ips),
            )
            .await?;
        }
        Ok(())
    }

    /// Describes again until every address shows on its ENI.
    async fn confirm(&self, placed: &[(IpAddr, String)]) -> Result<(), PassError> {
        let started = Instant::now();
        let mut delay = Duration::from_millis(100);
        loop {
            let enis = self.ec2.instance_enis(&self.instance_id).await?;
            let pending = plan::unconfirmed(placed, &enis);
            if pending.is_empty() {
                return Ok(());
            }
            if started.elapsed() >= self.settings.confirm_timeout {
                return Err(PassError::Unconfirmed {
                    pending,
                    waited: started.elapsed(),
                });
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(2));
        }
    }

    /// Unassigns what the pod still holds from this node's ENIs.
    pub async fn release(&self, held: &[IpAddr]) -> Result<usize, PassError> {
        let enis = self.ec2.instance_enis(&self.instance_id).await?;
        let release = plan::release(held, &enis);
        let mut calls = 0;
        for (eni, ips) in &release.ipv4 {
            logged(
                "UnassignPrivateIpAddresses",
                eni,
                ips,
                self.ec2.unassign_ipv4(eni, ips),
            )
            .await?;
            calls += 1;
        }
        for (eni, ips) in &release.ipv6 {
            logged(
                "UnassignIpv6Addresses",
                eni,
                ips,
                self.ec2.unassign_ipv6(eni, ips),
            )
            .await?;
            calls += 1;
        }
        Ok(calls)
    }
}

/// Makes one EC2 call and logs it: a line per address with action, ENI, result and latency.
async fn logged<T: std::fmt::Display>(
    action: &str,
    eni: &str,
    ips: &[T],
    call: impl std::future::Future<Output = Result<(), Ec2Error>>,
) -> Result<(), Ec2Error> {
    let started = Instant::now();
    let result = call.await;
    let latency_ms = started.elapsed().as_secs_f64() * 1000.0;
    for ip in ips {
        match &result {
            Ok(()) => info!(address = %ip, eni, action, result = "ok", latency_ms, "EC2 call"),
            Err(e) => {
                warn!(address = %ip, eni, action, result = "failed", latency_ms, error = %e, "EC2 call")
            }
        }
    }
    result
}
