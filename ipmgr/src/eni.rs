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
pub(crate) mod tests {
    use std::collections::BTreeMap;

    use super::*;

    pub fn eni(id: &str, mac: &str, index: i32, subnet: &str, ipv4: &[&str]) -> Eni {
        Eni {
            id: id.into(),
            mac: mac.into(),
            device_index: index,
            subnet_id: subnet.into(),
            primary_ipv4: ipv4.first().map(|ip| ip.parse().unwrap()),
            ipv4: ipv4.iter().map(|ip| ip.parse().unwrap()).collect(),
            primary_ipv6: None,
            ipv6: Vec::new(),
            tags: match index {
                0 => BTreeMap::new(),
                _ => [(NO_MANAGE_TAG.to_owned(), "true".to_owned())].into(),
            },
            instance_id: Some("i-1".into()),
        }
    }

    pub fn local(ip: &str, iface: &str, mac: &str) -> Local {
        Local {
            ip: ip.parse().unwrap(),
            iface: iface.into(),
            mac: mac.into(),
        }
    }

    pub fn subnets(list: &[(&str, &[&str])]) -> HashMap<String, Subnet> {
        list.iter()
            .map(|(id, cidrs)| {
                let (mut ipv4, mut ipv6) = (Vec::new(), Vec::new());
                for c in *cidrs {
                    match c.parse::<ipnet::IpNet>().unwrap() {
                        ipnet::IpNet::V4(n) => ipv4.push(n),
                        ipnet::IpNet::V6(n) => ipv6.push(n),
                    }
                }
                (
                    id.to_string(),
                    Subnet {
                        id: id.to_string(),
                        ipv4,
                        ipv6,
                        vpc_id: "vpc-1".into(),
                        vpc: None,
                    },
                )
            })
            .collect()
    }

    pub const POLICY: Policy = Policy {
        min_device_index: 1,
        require_no_manage: true,
        cluster_tag: None,
    };

    fn node() -> Vec<Eni> {
        let mut untagged = eni(
            "eni-vpccni",
            "0a:00:00:00:00:04",
            4,
            "subnet-d",
            &["10.0.4.10"],
        );
        untagged.tags.clear();
        vec![
            eni(
                "eni-primary",
                "0a:00:00:00:00:00",
                0,
                "subnet-a",
                &["10.0.0.10"],
            ),
            eni("eni-n3", "0a:00:00:00:00:01", 1, "subnet-b", &["10.0.1.10"]),
            eni(
                "eni-n3b",
                "0a:00:00:00:00:02",
                2,
                "subnet-b",
                &["10.0.1.11"],
            ),
            eni(
                "eni-n6",
                "0a:00:00:00:00:03",
                3,
                "subnet-c",
                &["100.64.0.10"],
            ),
            untagged,
        ]
    }

    fn nets() -> HashMap<String, Subnet> {
        subnets(&[
            ("subnet-a", &["10.0.0.0/24"]),
            ("subnet-b", &["10.0.1.0/24", "2600:1f14:aaa:1b00::/64"]),
            // From a secondary VPC CIDR.
            (
                "subnet-c",
                &[
                    "100.64.0.0/20",
                    "2600:1f14:aaa:1c00::/64",
                    "2600:1f14:aaa:1d00::/64",
                ],
            ),
            ("subnet-d", &["10.0.4.0/24"]),
        ])
    }

    /// `nets()` with their VPC described: a primary and a secondary IPv4 CIDR, and an
    /// IPv6 /56 for each IPv6 subnet.
    fn nets_in_vpc() -> HashMap<String, Subnet> {
        let vpc = Vpc {
            id: "vpc-1".into(),
            ipv4: ["10.0.0.0/16", "100.64.0.0/16"]
                .map(|c| c.parse().unwrap())
                .into(),
            ipv6: [
                "2600:1f14:aaa:1b00::/56",
                "2600:1f14:aaa:1c00::/56",
                "2600:1f14:aaa:1d00::/56",
            ]
            .map(|c| c.parse().unwrap())
            .into(),
        };
        let mut nets = nets();
        for s in nets.values_mut() {
            s.vpc = Some(vpc.clone());
        }
        nets
    }

    /// One address through `place`: the ENI it went to, or how it was left.
    fn one(l: &Local, enis: &[Eni], nets: &HashMap<String, Subnet>, policy: &Policy) -> String {
        let locals = std::slice::from_ref(l);
        let placed = place(locals, enis, nets, policy);
        match (
            placed.placements.first(),
            placed.skipped.first(),
            placed.errors.first(),
        ) {
            (Some(p), None, None) => p.eni.id.clone(),
            (None, Some(_), None) => "skipped".into(),
            (None, None, Some(e)) => format!("error: {e}"),
            other => panic!("one address, one outcome: {other:?}"),
        }
    }

    #[test]
    fn placement_table() {
        let enis = node();
        let other = "0e:ff:ff:ff:ff:ff";
        let cases: &[(&str, &str, &str)] = &[
            // The MAC decides between two ENIs in one subnet.
            ("10.0.1.50", "0A:00:00:00:00:02", "eni-n3b"),
            ("10.0.1.50", "0a:00:00:00:00:01", "eni-n3"),
            // By subnet: a secondary VPC CIDR, and every IPv6 CIDR of the subnet.
            ("100.64.3.7", other, "eni-n6"),
            ("2600:1f14:aaa:1d00::7", other, "eni-n6"),
            ("2600:1f14:aaa:1c00::7", other, "eni-n6"),
            // Not the VPC's: a node-local bridge, a tunnel.
            ("192.168.77.5", other, "skipped"),
            ("fd00:77::5", other, "skipped"),
            // In the primary ENI's subnet only: never the primary, so not ipmgr's.
            ("10.0.0.77", other, "skipped"),
            // Two candidates by subnet: no guess.
            (
                "10.0.1.77",
                other,
                "error: 10.0.1.77 on net1 (MAC 0e:ff:ff:ff:ff:ff): ENIs eni-n3, eni-n3b",
            ),
            // The MAC of the primary ENI: refused, whatever the subnet says.
            (
                "10.0.0.77",
                "0a:00:00:00:00:00",
                "error: 10.0.0.77 on net1 belongs on eni-primary (by MAC), which ipmgr never touches: it is the node's primary ENI",
            ),
            // An ENI the VPC CNI manages, by MAC and by subnet.
            (
                "10.0.4.77",
                "0a:00:00:00:00:04",
                "error: 10.0.4.77 on net1 belongs on eni-vpccni (by MAC), which ipmgr never touches: it is not tagged node.k8s.amazonaws.com/no_manage=true",
            ),
            (
                "10.0.4.77",
                other,
                "error: 10.0.4.77 on net1 belongs on eni-vpccni (by subnet), which ipmgr never touches: it is not tagged node.k8s.amazonaws.com/no_manage=true",
            ),
            // A MAC match outside the ENI's subnet.
            (
                "192.168.9.9",
                "0a:00:00:00:00:01",
                "error: 192.168.9.9 on net1 rides on eni-n3 (by MAC), but its subnet subnet-b (10.0.1.0/24, 2600:1f14:aaa:1b00::/64) does not contain it",
            ),
        ];
        for (ip, mac, want) in cases {
            let got = one(&local(ip, "net1", mac), &enis, &nets(), &POLICY);
            assert!(
                got.starts_with(want),
                "{ip} {mac}: got {got:?}, want {want:?}"
            );
        }
    }

    #[test]
    fn a_non_vpc_address_on_a_multus_enis_interface_is_left_alone() {
        let enis = node();
        let n3 = "0a:00:00:00:00:01";
        let cases: &[(&str, &str)] = &[
            // A VIP that route tables carry (the multi-AZ pattern), a VLAN's address.
            ("192.168.9.9", "skipped"),
            ("172.31.0.5", "skipped"),
            ("fd00:77::5", "skipped"),
            // In the VPC, but not in the ENI's subnet: the network's pool is wrong.
            (
                "10.0.2.9",
                "error: 10.0.2.9 on net1 rides on eni-n3 (by MAC), but its subnet subnet-b",
            ),
            (
                "100.64.0.9",
                "error: 100.64.0.9 on net1 rides on eni-n3 (by MAC)",
            ),
            (
                "2600:1f14:aaa:1c00::9",
                "error: 2600:1f14:aaa:1c00::9 on net1 rides on eni-n3",
            ),
            // In the subnet: placed.
            ("10.0.1.9", "eni-n3"),
            ("2600:1f14:aaa:1b00::9", "eni-n3"),
        ];
        for (ip, want) in cases {
            let got = one(&local(ip, "net1", n3), &enis, &nets_in_vpc(), &POLICY);
            assert!(got.starts_with(want), "{ip}: got {got:?}, want {want:?}");
        }
        // Until the VPC is described, outside the subnet is an error, and the manager
        // is told which VPC to describe.
        let l = [local("192.168.9.9", "net1", n3)];
        let placed = place(&l, &enis, &nets(), &POLICY);
        assert_eq!(placed.errors.len(), 1);
        assert_eq!(vpc_unknown(&placed.errors, &nets()), ["subnet-b"]);
        assert!(vpc_unknown(&placed.errors, &nets_in_vpc()).is_empty());
    }

    #[test]
    fn the_tag_requirement_can_be_turned_off_but_never_the_primary() {
        let enis = node();
        let lax = Policy {
            require_no_manage: false,
            ..POLICY
        };
        let untagged = local("10.0.4.77", "net1", "0a:00:00:00:00:04");
        assert_eq!(one(&untagged, &enis, &nets(), &lax), "eni-vpccni");
        let primary = local("10.0.0.77", "net1", "0a:00:00:00:00:00");
        assert!(one(&primary, &enis, &nets(), &lax).contains("primary ENI"));
        let zero = Policy {
            min_device_index: 0,
            ..lax.clone()
        };
        // Even with index 0 allowed, no address is placed on the primary by subnet.
        let by_subnet = local("10.0.0.77", "net1", "0e:ff:ff:ff:ff:ff");
        assert_eq!(one(&by_subnet, &enis, &nets(), &zero), "skipped");
    }

    #[test]
    fn with_a_cluster_tag_only_enis_carrying_it_are_placed_on() {
        let mut enis = node();
        let tag: Tag = "kubernetes.io/cluster/prod=owned".parse().unwrap();
        enis[1].tags.insert(tag.key.clone(), tag.value.clone());
        let policy = Policy {
            cluster_tag: Some(tag),
            ..POLICY
        };
        assert_eq!(
            one(
                &local("10.0.1.50", "net1", &enis[1].mac),
                &enis,
                &nets(),
                &policy
            ),
            enis[1].id
        );
        // eni-n6 is tagged no_manage, but not with the cluster's tag.
        let elsewhere = local("100.64.3.7", "net2", "0a:00:00:00:00:03");
        let refused = one(&elsewhere, &enis, &nets(), &policy);
        assert!(
            refused.contains("not tagged kubernetes.io/cluster/prod=owned")
                && refused.contains("IPMGR_CLUSTER_TAG"),
            "{refused}"
        );
    }

    #[test]
    fn a_tag_is_split_at_its_first_equals_sign() {
        let tag: Tag = "eks:cluster-name=prod=blue".parse().unwrap();
        assert_eq!(
            (tag.key.as_str(), tag.value.as_str()),
            ("eks:cluster-name", "prod=blue")
        );
        assert_eq!(tag.to_string(), "eks:cluster-name=prod=blue");
        let empty: Tag = "team=".parse().unwrap();
        assert_eq!(empty.value, "");
        for bad in ["", "prod", "=owned"] {
            let err = bad.parse::<Tag>().unwrap_err();
            assert!(err.contains("write KEY=VALUE"), "{err}");
        }
    }

    #[test]
    fn one_bad_address_leaves_the_others_placed() {
        let enis = node();
        let locals = vec![
            local("10.0.1.50", "net1", "0a:00:00:00:00:01"),
            local("10.0.1.77", "net9", "0e:ff:ff:ff:ff:ff"),
            local("192.168.77.5", "br0", "0e:ff:ff:ff:ff:fe"),
            local("100.64.3.7", "net2", "0a:00:00:00:00:03"),
        ];
        let placed = place(&locals, &enis, &nets(), &POLICY);
        let ids: Vec<_> = placed
            .placements
            .iter()
            .map(|p| (p.ip().to_string(), p.eni.id.as_str()))
            .collect();
        assert_eq!(
            ids,
            [
                ("10.0.1.50".to_string(), "eni-n3"),
                ("100.64.3.7".to_string(), "eni-n6")
            ]
        );
        assert_eq!(placed.skipped, [&locals[2]]);
        assert_eq!(placed.errors.len(), 1);
        assert_eq!(placed.errors[0].ip(), locals[1].ip);
    }

    #[test]
    fn subnets_are_needed_only_without_a_mac_match() {
        let enis = node();
        let by_mac = [local("10.0.1.50", "net1", "0a:00:00:00:00:01")];
        assert!(!needs_subnets(&by_mac, &enis));
        let without = [local("10.0.1.50", "net1", "0e:ff:ff:ff:ff:ff")];
        assert!(needs_subnets(&without, &enis));
        // Every secondary ENI's subnet, tagged or not; never the primary's.
        assert_eq!(
            secondary_subnet_ids(&enis),
            ["subnet-b", "subnet-c", "subnet-d"]
        );
    }
}
