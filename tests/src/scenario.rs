//! The node and pod the end-to-end tests and benchmarks share: two m5.large nodes in
//! one VPC; node i-0001 has a Multus ENI in subnet-b (N3) and one in subnet-c (N6, a
//! secondary VPC CIDR); node i-0002 holds the floating IP 10.0.1.99. Every secondary
//! ENI carries the VPC CNI's `no_manage` tag, as the user guide asks.

use std::path::{Path, PathBuf};

use crate::fake_ec2::{Eni, Instance, NO_MANAGE, Subnet, World};
use crate::fake_imds::{Identity, Interface};

pub const MAC_N3: &str = "0a:00:00:00:01:01";
pub const MAC_N6: &str = "0a:00:00:00:02:01";

/// An attached ENI; tagged `no_manage` unless it is the primary (device index 0).
pub fn eni(id: &str, instance: &str, index: i32, mac: &str, subnet: &str, ipv4: &[&str]) -> Eni {
    let tags = match index {
        0 => Vec::new(),
        _ => vec![(NO_MANAGE.0.to_owned(), NO_MANAGE.1.to_owned())],
    };
    Eni {
        delete_on_termination: false,
        source_dest_check: true,
        tags,
        id: id.into(),
        instance_id: Some(instance.into()),
        device_index: index,
        mac: mac.into(),
        subnet_id: subnet.into(),
        ipv4: ipv4.iter().map(|s| s.parse().unwrap()).collect(),
        ipv6: Vec::new(),
        primary_ipv6: None,
    }
}

pub fn world() -> World {
    World {
        instances: vec![
            Instance {
                id: "i-0001".into(),
                instance_type: "m5.large".into(),
                private_dns_name: "ip-10-0-0-10.us-west-2.compute.internal".into(),
            },
            Instance {
                id: "i-0002".into(),
                instance_type: "m5.large".into(),
                private_dns_name: "ip-10-0-0-20.us-west-2.compute.internal".into(),
            },
        ],
        enis: vec![
            eni(
                "eni-1primary",
                "i-0001",
                0,
                "0a:00:00:00:00:01",
                "subnet-a",
                &["10.0.0.10"],
            ),
            eni("eni-1n3", "i-0001", 1, MAC_N3, "subnet-b", &["10.0.1.10"]),
            eni("eni-1n6", "i-0001", 2, MAC_N6, "subnet-c", &["100.64.0.10"]),
            eni(
                "eni-2n3",
                "i-0002",
                1,
                "0a:00:00:00:11:01",
                "subnet-b",
                &["10.0.1.20", "10.0.1.99"],
            ),
        ],
        subnets: vec![
            Subnet {
                tags: Vec::new(),
                id: "subnet-a".into(),
                ipv4: "10.0.0.0/24".parse().unwrap(),
                ipv6: vec![],
            },
            Subnet {
                tags: Vec::new(),
                id: "subnet-b".into(),
                ipv4: "10.0.1.0/24".parse().unwrap(),
                ipv6: vec!["2600:1f14:aaa:1b00::/64".parse().unwrap()],
            },
            Subnet {
                tags: Vec::new(),
                id: "subnet-c".into(),
                ipv4: "100.64.0.0/20".parse().unwrap(),
                ipv6: vec![],
            },
        ],
        // A primary and a secondary IPv4 block (subnet-c's), and the IPv6 /56.
        vpc_cidrs: ["10.0.0.0/16", "100.64.0.0/16", "2600:1f14:aaa:1b00::/56"]
            .map(|c| c.parse().unwrap())
            .into(),
        reservations: Vec::new(),
        addresses: Vec::new(),
        route_tables: Vec::new(),
    }
}

pub fn identity() -> Identity {
    Identity {
        instance_id: "i-0001".into(),
        instance_type: "m5.large".into(),
        region: "us-west-2".into(),
        availability_zone: "us-west-2a".into(),
        interfaces: vec![Interface {
            mac: MAC_N3.into(),
            eni_id: "eni-1n3".into(),
            subnet_id: "subnet-b".into(),
            device_number: 1,
            subnet_cidr: "10.0.1.0/24".into(),
        }],
    }
}

/// The ipmgr binary in a cargo target directory (`target/debug`, `target/release`).
pub fn ipmgr_beside(dir: &Path) -> PathBuf {
    let bin = dir.join("ipmgr");
    assert!(
        bin.exists(),
        "{} is missing: build the workspace first",
        bin.display()
    );
    bin
}
