//! Tests of `eni`.

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
