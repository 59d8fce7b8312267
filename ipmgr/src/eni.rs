//! Which of the node's ENIs an address rides on, and whether it is ipmgr's to touch.
//!
//! An ipvlan slave shares its master's MAC, and the master is the ENI, so the MAC
//! decides first. Without a MAC match (macvlan, bridges, a MAC that was changed) the
//! address must lie in exactly one ENI's subnet. Subnets are compared by containment,
//! never by CIDR string: a subnet may come from a secondary VPC CIDR and may have
//! several IPv6 CIDRs. Two candidate ENIs is an error, never a guess.
//!
//! The VPC CNI manages every ENI not tagged `node.k8s.amazonaws.com/no_manage=true`
//! and adopts the addresses it finds there, handing them to other pods later. The
//! primary ENI (device index 0) is the node's own. Neither is ever a target, whichever
//! way the address was matched.
//!
//! A pod may also hold addresses that are not the VPC's at all (a node-local bridge,
//! SR-IOV, a tunnel the application made): those are skipped, and one bad address
//! never stops the others from being placed.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;

use ipnet::{Ipv4Net, Ipv6Net};

pub use ipmgmt_common::aws::{Eni, NO_MANAGE_TAG, Tag};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subnet {
    pub id: String,
    pub ipv4: Vec<Ipv4Net>,
    pub ipv6: Vec<Ipv6Net>,
    pub vpc_id: String,
    /// Its VPC's CIDR blocks, once described: only needed to tell an address outside
    /// the subnet but in the VPC (a wrong pool) from one outside the VPC (not EC2's).
    pub vpc: Option<Vpc>,
}

/// A VPC's associated CIDR blocks, primary and secondary, IPv4 and IPv6.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Vpc {
    pub id: String,
    pub ipv4: Vec<Ipv4Net>,
    pub ipv6: Vec<Ipv6Net>,
}

impl Vpc {
    pub fn contains(&self, ip: IpAddr) -> bool {
        match ip {
            IpAddr::V4(v4) => self.ipv4.iter().any(|n| n.contains(&v4)),
            IpAddr::V6(v6) => self.ipv6.iter().any(|n| n.contains(&v6)),
        }
    }
}

impl Subnet {
    pub fn contains(&self, ip: IpAddr) -> bool {
        match ip {
            IpAddr::V4(v4) => self.ipv4.iter().any(|n| n.contains(&v4)),
            IpAddr::V6(v6) => self.ipv6.iter().any(|n| n.contains(&v6)),
        }
    }

    fn cidrs(&self) -> String {
        let v4 = self.ipv4.iter().map(ToString::to_string);
        let v6 = self.ipv6.iter().map(ToString::to_string);
        v4.chain(v6).collect::<Vec<_>>().join(", ")
    }
}

/// An address found on one of the pod's secondary interfaces.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Local {
    pub ip: IpAddr,
    pub iface: String,
    /// Lower case, `0a:1b:…`.
    pub mac: String,
}

impl fmt::Display for Local {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} on {}", self.ip, self.iface)
    }
}

/// Which of the instance's ENIs ipmgr may assign to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    /// ENIs below this device index are never targets (0 is the node's primary ENI).
    pub min_device_index: i32,
    /// Only ENIs tagged `node.k8s.amazonaws.com/no_manage=true`.
    pub require_no_manage: bool,
    /// Only ENIs that also carry this tag.
    pub cluster_tag: Option<Tag>,
}

/// Why an ENI is not ipmgr's to assign to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    DeviceIndex { index: i32, min: i32 },
    ManagedByVpcCni,
    OtherCluster(Box<Tag>),
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::DeviceIndex { index: 0, .. } => write!(
                f,
                "the node's primary ENI (device index 0), which belongs to the node and the VPC CNI; \
                 attach a secondary ENI for this network"
            ),
            Refusal::DeviceIndex { index, min } => write!(
                f,
                "device index {index}, below the lowest one ipmgr manages ({min}, IPMGR_MIN_DEVICE_INDEX)"
            ),
            Refusal::ManagedByVpcCni => write!(
                f,
                "not tagged {NO_MANAGE_TAG}=true, so the VPC CNI manages it and would hand the address to \
                 other pods; tag the ENI {NO_MANAGE_TAG}=true, or set IPMGR_REQUIRE_NO_MANAGE_TAG=false"
            ),
            Refusal::OtherCluster(tag) => write!(
                f,
                "not tagged {tag}, the tag of this cluster's Multus ENIs (IPMGR_CLUSTER_TAG): tag the \
                 ENI {tag} if this cluster's pods may use it"
            ),
        }
    }
}

impl Policy {
    pub fn refusal(&self, eni: &Eni) -> Option<Refusal> {
        if eni.device_index < self.min_device_index {
            Some(Refusal::DeviceIndex {
                index: eni.device_index,
                min: self.min_device_index,
            })
        } else if self.require_no_manage && !eni.no_manage() {
            Some(Refusal::ManagedByVpcCni)
        } else {
            (self.cluster_tag.as_ref())
                .filter(|tag| !eni.has(tag))
                .map(|tag| Refusal::OtherCluster(Box::new(tag.clone())))
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    #[error(
        "{ip} on {iface} (MAC {mac}): ENIs {} are all in a subnet containing it and none has that MAC; \
         refusing to guess: give the interface its ENI's MAC (ipvlan does) or use one ENI per subnet",
        enis.join(", ")
    )]
    Ambiguous {
        ip: IpAddr,
        iface: String,
        mac: String,
        enis: Vec<String>,
    },
    #[error(
        "{ip} on {iface} rides on {eni} (by MAC), but its subnet {subnet} ({cidrs}) does not contain it; fix the address pool of that network"
    )]
    OutsideSubnet {
        ip: IpAddr,
        iface: String,
        eni: String,
        subnet: String,
        cidrs: String,
    },
    #[error(
        "{ip} on {iface} belongs on {eni} (by {matched}), which ipmgr never touches: it is {why}"
    )]
    Refused {
        ip: IpAddr,
        iface: String,
        eni: String,
        matched: &'static str,
        why: Refusal,
    },
}

impl ResolveError {
    pub fn ip(&self) -> IpAddr {
        match self {
            ResolveError::Ambiguous { ip, .. }
            | ResolveError::OutsideSubnet { ip, .. }
            | ResolveError::Refused { ip, .. } => *ip,
        }
    }
}

/// An address and the ENI it goes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Placement<'a> {
    pub local: &'a Local,
    pub eni: &'a Eni,
}

impl Placement<'_> {
    pub fn ip(&self) -> IpAddr {
        self.local.ip
    }
}

/// Where each of the pod's addresses goes, if anywhere.
#[derive(Debug, Default)]
pub struct Placed<'a> {
    pub placements: Vec<Placement<'a>>,
    /// Not a VPC address of this node's Multus ENIs: none of their MACs and none of
    /// their subnets (a node-local network, a tunnel), or on a Multus ENI's interface
    /// but outside its VPC (a VIP routed by route tables, a VLAN). Not EC2's business.
    pub skipped: Vec<&'a Local>,
    pub errors: Vec<ResolveError>,
}

/// The ENI whose MAC the interface carries.
pub fn by_mac<'a>(local: &Local, enis: &'a [Eni]) -> Option<&'a Eni> {
    enis.iter().find(|e| e.mac.eq_ignore_ascii_case(&local.mac))
}

/// The subnets `place` may need: those of every secondary ENI, eligible or not, so
/// that an address in an untagged ENI's subnet is refused by name, not skipped.
pub fn secondary_subnet_ids(enis: &[Eni]) -> Vec<String> {
    let mut ids: Vec<String> = enis
        .iter()
        .filter(|e| e.device_index >= 1)
        .map(|e| e.subnet_id.clone())
        .collect();
    ids.sort();
    ids.dedup();
    ids
}

/// Whether `place` needs subnets: some address has no ENI by MAC.
pub fn needs_subnets(locals: &[Local], enis: &[Eni]) -> bool {
    locals.iter().any(|l| by_mac(l, enis).is_none())
}

/// Places every address: by MAC, else by subnet containment. `subnets` holds the
/// subnets of `secondary_subnet_ids(enis)` when `needs_subnets` said so.
pub fn place<'a>(
    locals: &'a [Local],
    enis: &'a [Eni],
    subnets: &HashMap<String, Subnet>,
    policy: &Policy,
) -> Placed<'a> {
    let mut out = Placed::default();
    for local in locals {
        let placed = match by_mac(local, enis) {
            Some(eni) => check_mac_match(local, eni, subnets, policy),
            None => by_subnet(local, enis, subnets, policy),
        };
        match placed {
            Ok(Some(eni)) => out.placements.push(Placement { local, eni }),
            Ok(None) => out.skipped.push(local),
            Err(e) => out.errors.push(e),
        }
    }
    out
}

fn check_mac_match<'a>(
    local: &Local,
    eni: &'a Eni,
    subnets: &HashMap<String, Subnet>,
    policy: &Policy,
) -> Result<Option<&'a Eni>, ResolveError> {
    if let Some(why) = policy.refusal(eni) {
        return Err(refused(local, eni, "MAC", why));
    }
    Ok(in_range(local, eni, subnets)?.then_some(eni))
}

/// Whether an address on `eni`'s interface is one for EC2: inside the ENI's subnet, or
/// not known to lie outside it (subnet not described: EC2 has the last word). An
/// address outside the subnet and outside the VPC is not (`false`); one outside the
/// subnet but in the VPC, or whose VPC is not described, is a wrong address pool.
pub fn in_range(
    local: &Local,
    eni: &Eni,
    subnets: &HashMap<String, Subnet>,
) -> Result<bool, ResolveError> {
    match subnets.get(&eni.subnet_id) {
        Some(subnet) if !subnet.contains(local.ip) => match &subnet.vpc {
            Some(vpc) if !vpc.contains(local.ip) => Ok(false),
            _ => Err(ResolveError::OutsideSubnet {
                ip: local.ip,
                iface: local.iface.clone(),
                eni: eni.id.clone(),
                subnet: subnet.id.clone(),
                cidrs: subnet.cidrs(),
            }),
        },
        _ => Ok(true),
    }
}

/// The subnets of the `OutsideSubnet` errors whose VPC is not described yet: placing
/// again once it is may turn each into a skipped non-VPC address.
pub fn vpc_unknown(errors: &[ResolveError], subnets: &HashMap<String, Subnet>) -> Vec<String> {
    let mut ids: Vec<String> = (errors.iter())
        .filter_map(|e| match e {
            ResolveError::OutsideSubnet { subnet, .. } => Some(subnet),
            _ => None,
        })
        .filter(|id| subnets.get(*id).is_some_and(|s| s.vpc.is_none()))
        .cloned()
        .collect();
    ids.sort();
    ids.dedup();
    ids
}

/// The one eligible ENI whose subnet contains the address; `None` when no secondary
/// ENI's subnet does.
fn by_subnet<'a>(
    local: &Local,
    enis: &'a [Eni],
    subnets: &HashMap<String, Subnet>,
    policy: &Policy,
) -> Result<Option<&'a Eni>, ResolveError> {
    let containing = enis.iter().filter(|e| {
        e.device_index >= 1
            && subnets
                .get(&e.subnet_id)
                .is_some_and(|s| s.contains(local.ip))
    });
    let (eligible, refused_enis): (Vec<&Eni>, Vec<&Eni>) =
        containing.partition(|e| policy.refusal(e).is_none());
    match (eligible.as_slice(), refused_enis.first()) {
        ([one], _) => Ok(Some(one)),
        ([], None) => Ok(None),
        ([], Some(eni)) => Err(refused(
            local,
            eni,
            "subnet",
            policy.refusal(eni).expect("partitioned as refused"),
        )),
        (many, _) => Err(ResolveError::Ambiguous {
            ip: local.ip,
            iface: local.iface.clone(),
            mac: local.mac.clone(),
            enis: many.iter().map(|e| e.id.clone()).collect(),
        }),
    }
}

fn refused(local: &Local, eni: &Eni, matched: &'static str, why: Refusal) -> ResolveError {
    ResolveError::Refused {
        ip: local.ip,
        iface: local.iface.clone(),
        eni: eni.id.clone(),
        matched,
        why,
    }
}

#[cfg(test)]
pub(crate) mod tests;
