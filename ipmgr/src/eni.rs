//! Which of the node's ENIs an address rides on.
//!
//! An ipvlan slave shares its master's MAC, and the master is the ENI, so the MAC
//! decides first. Without a MAC match (macvlan, bridges, a MAC that was changed) the
//! address must lie in exactly one ENI's subnet. Subnets are compared by containment,
//! never by CIDR string: a subnet may come from a secondary VPC CIDR and may have
//! several IPv6 CIDRs. Two candidate ENIs is an error, never a guess.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{Ipv4Net, Ipv6Net};

/// An ENI attached to this instance, as EC2 describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Eni {
    pub id: String,
    /// Lower case, `0a:1b:…`, as EC2 reports it.
    pub mac: String,
    pub device_index: i32,
    pub subnet_id: String,
    pub primary_ipv4: Option<Ipv4Addr>,
    /// Every private IPv4 address, the primary included.
    pub ipv4: Vec<Ipv4Addr>,
    pub ipv6: Vec<Ipv6Addr>,
}

impl Eni {
    pub fn holds(&self, ip: IpAddr) -> bool {
        match ip {
            IpAddr::V4(v4) => self.ipv4.contains(&v4),
            IpAddr::V6(v6) => self.ipv6.contains(&v6),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subnet {
    pub id: String,
    pub ipv4: Vec<Ipv4Net>,
    pub ipv6: Vec<Ipv6Net>,
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

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    #[error(
        "{ip} on {iface} (MAC {mac}): no ENI of this instance has that MAC, and none with device index \
         {min_device_index} or more has a subnet containing it; attach the Multus ENI from that subnet \
         or fix the address pool"
    )]
    NoEni {
        ip: IpAddr,
        iface: String,
        mac: String,
        min_device_index: i32,
    },
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
}

/// The ENI whose MAC the interface carries.
pub fn by_mac<'a>(local: &Local, enis: &'a [Eni]) -> Option<&'a Eni> {
    enis.iter().find(|e| e.mac.eq_ignore_ascii_case(&local.mac))
}

/// The one ENI (device index `min_device_index` or more) whose subnet contains the
/// address; `subnets` must hold the subnets of those ENIs.
pub fn by_subnet<'a>(
    local: &Local,
    enis: &'a [Eni],
    subnets: &HashMap<String, Subnet>,
    min_device_index: i32,
) -> Result<&'a Eni, ResolveError> {
    let candidates: Vec<&Eni> = enis
        .iter()
        .filter(|e| e.device_index >= min_device_index)
        .filter(|e| {
            subnets
                .get(&e.subnet_id)
                .is_some_and(|s| s.contains(local.ip))
        })
        .collect();
    match candidates.as_slice() {
        [one] => Ok(one),
        [] => Err(ResolveError::NoEni {
            ip: local.ip,
            iface: local.iface.clone(),
            mac: local.mac.clone(),
            min_device_index,
        }),
        many => Err(ResolveError::Ambiguous {
            ip: local.ip,
            iface: local.iface.clone(),
            mac: local.mac.clone(),
            enis: many.iter().map(|e| e.id.clone()).collect(),
        }),
    }
}

/// Checks a MAC match against the ENI's subnet, when the subnet is known.
pub fn check_subnet(
    local: &Local,
    eni: &Eni,
    subnets: &HashMap<String, Subnet>,
) -> Result<(), ResolveError> {
    match subnets.get(&eni.subnet_id) {
        Some(subnet) if !subnet.contains(local.ip) => Err(ResolveError::OutsideSubnet {
            ip: local.ip,
            iface: local.iface.clone(),
            eni: eni.id.clone(),
            subnet: subnet.id.clone(),
            cidrs: subnet.cidrs(),
        }),
        _ => Ok(()),
    }
}

impl fmt::Display for Local {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} on {}", self.ip, self.iface)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub fn eni(id: &str, mac: &str, index: i32, subnet: &str, ipv4: &[&str]) -> Eni {
        Eni {
            id: id.into(),
            mac: mac.into(),
            device_index: index,
            subnet_id: subnet.into(),
            primary_ipv4: ipv4.first().map(|ip| ip.parse().unwrap()),
            ipv4: ipv4.iter().map(|ip| ip.parse().unwrap()).collect(),
            ipv6: Vec::new(),
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
                    },
                )
            })
            .collect()
    }

    fn node() -> Vec<Eni> {
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
        ])
    }

    #[test]
    fn mac_decides_between_two_enis_in_one_subnet() {
        let enis = node();
        let l = local("10.0.1.50", "net1", "0A:00:00:00:00:02");
        assert_eq!(by_mac(&l, &enis).unwrap().id, "eni-n3b");
        let other_mac = local("10.0.1.50", "net1", "0e:ff:ff:ff:ff:ff");
        assert!(by_mac(&other_mac, &enis).is_none());
        let err = by_subnet(&other_mac, &enis, &nets(), 1).unwrap_err();
        assert_eq!(
            err,
            ResolveError::Ambiguous {
                ip: other_mac.ip,
                iface: "net1".into(),
                mac: other_mac.mac.clone(),
                enis: vec!["eni-n3".into(), "eni-n3b".into()],
            }
        );
        assert!(err.to_string().contains("refusing to guess"), "{err}");
    }

    #[test]
    fn subnet_containment_covers_secondary_cidrs_and_every_ipv6_cidr() {
        let enis = node();
        for ip in [
            "100.64.3.7",
            "2600:1f14:aaa:1d00::7",
            "2600:1f14:aaa:1c00::7",
        ] {
            let l = local(ip, "net2", "0e:ff:ff:ff:ff:ff");
            assert_eq!(
                by_subnet(&l, &enis, &nets(), 1).unwrap().id,
                "eni-n6",
                "{ip}"
            );
        }
    }

    #[test]
    fn primary_eni_is_left_out_by_default() {
        let enis = node();
        let l = local("10.0.0.77", "net1", "0e:ff:ff:ff:ff:ff");
        assert!(matches!(
            by_subnet(&l, &enis, &nets(), 1),
            Err(ResolveError::NoEni { .. })
        ));
        assert_eq!(by_subnet(&l, &enis, &nets(), 0).unwrap().id, "eni-primary");
    }

    #[test]
    fn mac_match_outside_its_subnet_is_an_error() {
        let enis = node();
        let l = local("192.168.9.9", "net1", "0a:00:00:00:00:01");
        let eni = by_mac(&l, &enis).unwrap();
        let err = check_subnet(&l, eni, &nets()).unwrap_err();
        assert!(
            err.to_string()
                .contains("subnet-b (10.0.1.0/24, 2600:1f14:aaa:1b00::/64)"),
            "{err}"
        );
        // Unknown subnet (not described): EC2 has the last word.
        assert!(check_subnet(&l, eni, &HashMap::new()).is_ok());
    }
}
