//! The account of a scale run: `nodes` instances with IP-based names (EKS's default,
//! so ipmgr finds its instance by name or by its ENIs' MACs), each with its primary
//! ENI and two Multus ENIs tagged `no_manage`, on net1 (10.1.0.0/16) and net2
//! (10.2.0.0/16 and an IPv6 /64). Nodes are numbered from 1.

use std::net::{IpAddr, Ipv4Addr};

use crate::fake_ec2::{Eni, Instance, Subnet, World};
use crate::scenario::eni;

/// Room for ten pods a node with two addresses each, and the storm's floating IPs.
pub const INSTANCE_TYPE: &str = "m5.24xlarge";

pub fn instance_id(node: usize) -> String {
    format!("i-{node:017x}")
}

pub fn node_name(node: usize) -> String {
    format!(
        "ip-10-0-{}-{}.us-west-2.compute.internal",
        node / 250,
        node % 250 + 1
    )
}

/// The ENI at `index` (0 primary, 1 net1, 2 net2) of `node`.
pub fn eni_id(node: usize, index: usize) -> String {
    format!("eni-{node:08x}{index}")
}

pub fn mac(node: usize, index: usize) -> String {
    format!(
        "0a:00:00:{:02x}:{:02x}:{index:02x}",
        node >> 8 & 0xff,
        node & 0xff
    )
}

/// The `k`-th pod address on net1 or net2 (k from 0): 10.{net}.1.1 onwards, clear of
/// the ENIs' primaries (10.{net}.0.x) and the floating IPs (10.1.200.x).
pub fn pod_address(net: usize, k: usize) -> Ipv4Addr {
    assert!(k < 199 * 250, "pod address {k} is past the pool");
    Ipv4Addr::new(10, net as u8, (1 + k / 250) as u8, (1 + k % 250) as u8)
}

/// The `k`-th floating IP (k from 0), on net1.
pub fn vip(k: usize) -> Ipv4Addr {
    assert!(k < 250, "floating IP {k} is past the pool");
    Ipv4Addr::new(10, 1, 200, (1 + k) as u8)
}

/// The `k`-th IPv6 pod address on net2.
pub fn pod_address_v6(k: usize) -> IpAddr {
    format!("2600:1f14:aaa:2000::{:x}", 0x100 + k)
        .parse()
        .expect("an IPv6 address")
}

pub fn world(nodes: usize) -> World {
    assert!((1..250).contains(&nodes), "1 to 249 nodes");
    let mut w = World::default();
    for node in 1..=nodes {
        let instance = instance_id(node);
        w.instances.push(Instance {
            id: instance.clone(),
            instance_type: INSTANCE_TYPE.into(),
            private_dns_name: node_name(node),
        });
        for (index, subnet) in ["subnet-nodes", "subnet-net1", "subnet-net2"]
            .iter()
            .enumerate()
        {
            let primary = Ipv4Addr::new(10, index as u8, 0, node as u8).to_string();
            w.enis.push(eni(
                &eni_id(node, index),
                &instance,
                index as i32,
                &mac(node, index),
                subnet,
                &[&primary],
            ));
        }
    }
    let subnet = |id: &str, v4: &str, v6: &[&str]| Subnet {
        tags: Vec::new(),
        id: id.into(),
        ipv4: v4.parse().expect("a CIDR"),
        ipv6: v6.iter().map(|c| c.parse().expect("a CIDR")).collect(),
    };
    w.subnets = vec![
        subnet("subnet-nodes", "10.0.0.0/16", &[]),
        subnet("subnet-net1", "10.1.0.0/16", &[]),
        subnet("subnet-net2", "10.2.0.0/16", &["2600:1f14:aaa:2000::/64"]),
    ];
    w
}

/// What is wrong with the world, given where each address belongs: an address on no
/// ENI, on another ENI, or on two.
pub fn misplaced(world: &World, expected: &[(IpAddr, String)]) -> Vec<String> {
    let holders = |ip: IpAddr| -> Vec<&Eni> {
        (world.enis.iter())
            .filter(|e| match ip {
                IpAddr::V4(v4) => e.ipv4.contains(&v4),
                IpAddr::V6(v6) => e.ipv6.contains(&v6),
            })
            .collect()
    };
    let mut out = Vec::new();
    for (ip, want) in expected {
        let on: Vec<&str> = holders(*ip).iter().map(|e| e.id.as_str()).collect();
        if on != [want.as_str()] {
            out.push(format!("{ip}: on {on:?}, belongs on {want}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_addresses_stay_apart() {
        assert_eq!(instance_id(1), "i-00000000000000001");
        assert_eq!(mac(300, 2), "0a:00:00:01:2c:02");
        assert_eq!(node_name(1), "ip-10-0-0-2.us-west-2.compute.internal");
        assert_eq!(pod_address(1, 0).to_string(), "10.1.1.1");
        assert_eq!(pod_address(2, 499).to_string(), "10.2.2.250");
        assert_eq!(vip(99).to_string(), "10.1.200.100");
        let w = world(3);
        assert_eq!(w.enis.len(), 9);
        let mut macs: Vec<_> = w.enis.iter().map(|e| e.mac.clone()).collect();
        macs.dedup();
        assert_eq!(macs.len(), 9);
    }

    #[test]
    fn misplaced_names_none_two_and_elsewhere() {
        let mut w = world(2);
        let ip: IpAddr = "10.1.1.1".parse().unwrap();
        let expected = [(ip, eni_id(1, 1))];
        assert_eq!(misplaced(&w, &expected).len(), 1, "on none");
        w.enis[1].ipv4.push("10.1.1.1".parse().unwrap());
        assert!(misplaced(&w, &expected).is_empty());
        w.enis[4].ipv4.push("10.1.1.1".parse().unwrap());
        assert_eq!(misplaced(&w, &expected).len(), 1, "on two");
    }
}
