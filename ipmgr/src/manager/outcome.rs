//! What a pass reports: its outcome, address by address, and why an address is not
//! where it belongs, with the advice a user acts on.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::time::Duration;

use tracing::{info, warn};

use crate::ec2::{Action, Ec2Error};
use crate::eni::{self, Eni, Local, Refusal, ResolveError, Tag};
use crate::plan::{Blocked, Plan};

/// A pass that could not even start: nothing was placed.
#[derive(Debug, thiserror::Error)]
pub enum PassError {
    #[error(transparent)]
    Ec2(#[from] Ec2Error),
}

impl PassError {
    pub fn is_permanent(&self) -> bool {
        match self {
            PassError::Ec2(e) => e.is_permanent(),
        }
    }
}

/// Why one address is not where it belongs.
#[derive(Debug, thiserror::Error)]
pub enum AddressError {
    #[error("{0}")]
    Resolve(#[from] ResolveError),
    #[error("{ip} on {iface}: {error}")]
    Ec2 {
        ip: IpAddr,
        iface: String,
        error: Ec2Error,
    },
    #[error(
        "{ip} on {iface} is held by {holder}, and this pod has reassignment off \
         (ipmgmt.aws/allow-reassignment: \"false\"): release it there or allow reassignment"
    )]
    ReassignmentOff {
        ip: IpAddr,
        iface: String,
        holder: String,
    },
    #[error(
        "{ip} on {iface} is the primary address of {holder}, which EC2 never moves: take it out of \
         this network's address pool (a subnet CIDR reservation keeps EC2 from handing it out)"
    )]
    PrimaryElsewhere {
        ip: IpAddr,
        iface: String,
        holder: String,
    },
    #[error(
        "{ip} on {iface} is held by {holder}, which ipmgr does not take addresses from: it is {why}; \
         the address is handed out twice: take it out of one of the pools (a subnet CIDR reservation \
         for the network's range keeps the VPC CNI and EC2 from handing it out)"
    )]
    Unmanaged {
        ip: IpAddr,
        iface: String,
        holder: String,
        why: Refusal,
    },
    #[error(
        "{ip} on {iface}: EC2 accepted the assignment to {eni} but after {waited:?} still does not show it"
    )]
    Unconfirmed {
        ip: IpAddr,
        iface: String,
        eni: String,
        waited: Duration,
    },
}

impl AddressError {
    pub fn ip(&self) -> IpAddr {
        match self {
            AddressError::Resolve(e) => e.ip(),
            AddressError::Ec2 { ip, .. }
            | AddressError::ReassignmentOff { ip, .. }
            | AddressError::PrimaryElsewhere { ip, .. }
            | AddressError::Unmanaged { ip, .. }
            | AddressError::Unconfirmed { ip, .. } => *ip,
        }
    }

    /// EC2 refused an assignment made before the holder was known, in a way another
    /// ENI holding the address explains: `InvalidIPAddress.InUse` for IPv4; for IPv6,
    /// whose refusals are less specific, any answer but throttling.
    pub(super) fn maybe_held_elsewhere(&self) -> bool {
        let AddressError::Ec2 { error, .. } = self else {
            return false;
        };
        match error.action {
            Action::AssignPrivateIpAddresses => {
                error.code.as_deref() == Some("InvalidIPAddress.InUse")
            }
            Action::AssignIpv6Addresses => error.code.is_some() && !error.is_throttling(),
            _ => false,
        }
    }

    /// EC2 refused an assignment as outside the ENI's subnet (it answers
    /// InvalidParameterValue, for IPv4 and IPv6 alike).
    pub(super) fn out_of_range(&self) -> bool {
        matches!(self, AddressError::Ec2 { error, .. }
            if matches!(error.action, Action::AssignPrivateIpAddresses | Action::AssignIpv6Addresses)
                && error.code.as_deref() == Some("InvalidParameterValue"))
    }

    /// Nothing a retry within this run is likely to fix: a configuration, permission
    /// or capacity problem. The sidecar retries those too (a role can be fixed, an
    /// ENI freed); init stops early on them.
    pub fn is_permanent(&self) -> bool {
        match self {
            AddressError::Ec2 { error, .. } => error.is_permanent(),
            AddressError::Unconfirmed { .. } => false,
            _ => true,
        }
    }
}

/// Which addresses a pass may move from another ENI.
#[derive(Clone, Copy, Debug)]
pub enum Take<'a> {
    /// Every address: the pod has just started, so it holds them because it just got them.
    All,
    /// Only these, which just appeared in the pod (a local address event).
    Only(&'a BTreeSet<IpAddr>),
}

impl Take<'_> {
    pub fn takes(&self, ip: IpAddr) -> bool {
        match self {
            Take::All => true,
            Take::Only(set) => set.contains(&ip),
        }
    }
}

/// What a pass did.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Each address on its ENI now, by ENI id.
    pub placed: Vec<(IpAddr, String)>,
    /// Not VPC addresses of this node's Multus ENIs.
    pub skipped: Vec<Local>,
    /// Held by another ENI and left there, with the holder.
    pub left: Vec<(IpAddr, String)>,
    /// Taken from another Multus ENI of this cluster, with the ENI it came from.
    pub taken: Vec<(IpAddr, String)>,
    pub failed: Vec<AddressError>,
    /// Mutating calls made.
    pub calls: usize,
}

impl Outcome {
    /// Every VPC address of the pod is where it belongs, or left to its new owner.
    pub fn is_complete(&self) -> bool {
        self.failed.is_empty()
    }
}

/// An address that is not a VPC address of this node's Multus ENIs: logged and skipped.
pub(super) fn left_alone(local: &Local, out: &mut Outcome) {
    info!(address = %local.ip, iface = %local.iface, "not a VPC address of this node's Multus ENIs; left alone");
    out.skipped.push(local.clone());
}

/// What a plan settles without a call: addresses in place, left to their holder, or
/// blocked, logged and put in the outcome.
pub(super) fn account(plan: &Plan<'_>, out: &mut Outcome) {
    for p in &plan.in_place {
        info!(address = %p.ip(), eni = %p.eni.id, action = "none", result = "in place", "already assigned");
        out.placed.push((p.ip(), p.eni.id.clone()));
    }
    for (p, holder) in &plan.left {
        warn!(
            address = %p.ip(), eni = %p.eni.id, holder = %holder.id,
            "held by another ENI and left there: only a pass after this pod takes the address moves it"
        );
        out.left.push((p.ip(), holder.id.clone()));
    }
    for (p, holder) in &plan.taken {
        info!(
            address = %p.ip(), eni = %p.eni.id, holder = %holder.id,
            "taking the address from another Multus ENI this cluster manages"
        );
        out.taken.push((p.ip(), holder.id.clone()));
    }
    for (p, blocked) in &plan.blocked {
        let (ip, iface) = (p.ip(), p.local.iface.clone());
        out.failed.push(match blocked {
            Blocked::ReassignmentOff { holder } => AddressError::ReassignmentOff {
                ip,
                iface,
                holder: holder.clone(),
            },
            Blocked::PrimaryElsewhere { holder } => AddressError::PrimaryElsewhere {
                ip,
                iface,
                holder: holder.clone(),
            },
            Blocked::Unmanaged { holder, why } => AddressError::Unmanaged {
                ip,
                iface,
                holder: holder.clone(),
                why: why.clone(),
            },
        });
    }
}

/// EC2's UnauthorizedOperation does not say which part of the policy refused; the ENI
/// does. The shipped policy allows the changes only on ENIs tagged no_manage (and, where
/// a cluster tag is used, carrying it): on an ENI with every tag the role lacks the
/// policy; otherwise a tag is missing. `cluster`: the tag ipmgr checked the ENI for.
pub(super) fn explain_refusal(mut e: Ec2Error, eni: &Eni, cluster: Option<&Tag>) -> Ec2Error {
    if e.code.as_deref() != Some("UnauthorizedOperation") {
        return e;
    }
    let tag = eni::NO_MANAGE_TAG;
    let policy = crate::ec2::IAM_POLICY;
    let action = e.action;
    // The ENI is named where the address is; the hint names only what to do.
    e.hint = match (eni.no_manage(), cluster) {
        (true, Some(cluster)) => format!(
            "the ENI is tagged {tag}=true and {cluster}, so the IP manager's IAM role lacks \
             ec2:{action}: attach the policy in {policy} (with the cluster tag condition) to the role"
        ),
        (true, None) => format!(
            "the ENI is tagged {tag}=true, so the IP manager's IAM role lacks ec2:{action}: attach \
             the policy in {policy} to the role; if the role's policy also requires a cluster tag, \
             tag the ENI with it and set aws.clusterTag"
        ),
        (false, _) => format!(
            "the ENI is not tagged {tag}=true, and the policy in {policy} allows ec2:{action} only \
             on ENIs that are: tag the Multus ENI"
        ),
    };
    e
}
