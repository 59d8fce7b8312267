//! Property tests of the guard's address arithmetic: whatever range a NAD is written
//! with, every address its IPAM plugin may hand out from a range the guard accepts
//! lies in the subnet and is none of AWS's reserved addresses nor the ENI's own; and
//! a range holding one of those is never accepted.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use proptest::prelude::*;

use super::ipam::{self, from_num, num};
use super::verdict::{Subnet, check};

/// The five addresses AWS reserves in `cidr`: the first four and the last.
fn reserved(cidr: IpNet) -> Vec<IpAddr> {
    let first = num(cidr.network());
    let mut out: Vec<IpAddr> = (0..4).map(|i| from_num(cidr.addr(), first + i)).collect();
    out.push(cidr.broadcast());
    out
}

/// Every address the pools hand out (the strategies keep them small enough to list).
fn handed_out(attachment: &ipam::Attachment) -> Vec<IpAddr> {
    let mut out = Vec::new();
    for pool in &attachment.pools {
        for (lo, hi) in pool.spans() {
            assert!(hi - lo <= 1 << 14, "a pool too large to list: {pool:?}");
            out.extend((lo..=hi).map(|n| from_num(pool.first, n)));
        }
    }
    out
}

fn v4_subnet() -> impl Strategy<Value = Ipv4Net> {
    (any::<u32>(), 20u8..=28)
        .prop_map(|(bits, prefix)| Ipv4Net::new(Ipv4Addr::from(bits), prefix).unwrap().trunc())
}

/// A whereabouts range near `subnet` (inside, across its edge or beside it), with
/// optional ends and an exclusion, as users write them.
fn whereabouts_config(subnet: Ipv4Net) -> impl Strategy<Value = String> {
    let base = u32::from(subnet.network());
    (
        -512i64..512,
        (subnet.prefix_len().saturating_sub(2)).max(18)..=30,
        proptest::option::of((0u32..64, 0u32..64)),
        proptest::option::of((0u32..64, 28u8..=31)),
    )
        .prop_map(move |(shift, prefix, ends, exclude)| {
            let start = (i64::from(base) + shift * 16).clamp(0, i64::from(u32::MAX)) as u32;
            let range = Ipv4Net::new(Ipv4Addr::from(start), prefix).unwrap().trunc();
            let at =
                |offset: u32| Ipv4Addr::from(u32::from(range.network()).saturating_add(offset));
            let mut ipam = serde_json::json!({"type": "whereabouts", "range": range.to_string()});
            if let Some((from, span)) = ends {
                ipam["range_start"] = at(from).to_string().into();
                ipam["range_end"] = at(from + span).to_string().into();
            }
            if let Some((offset, prefix)) = exclude {
                let net = Ipv4Net::new(at(offset), prefix).unwrap().trunc();
                ipam["exclude"] = serde_json::json!([net.to_string()]);
            }
            serde_json::json!({"type": "ipvlan", "master": "eth1", "ipam": ipam}).to_string()
        })
}

/// The property itself: the guard accepts `config` against `subnet` (whose ENI's own
/// address is `own`) exactly when nothing it hands out is outside the subnet, reserved
/// or `own`. A config the reader refuses is not this property's business.
fn agrees(subnet: IpNet, own: IpAddr, config: &str) -> Result<(), TestCaseError> {
    let Ok(attachment) = ipam::read(config) else {
        return Ok(());
    };
    let subnet_view = Subnet {
        id: "subnet-a".into(),
        cidrs: vec![subnet],
        // All of it reserved explicitly: only containment and AWS's addresses matter.
        reservations: vec![subnet],
        eni_addresses: vec![own],
    };
    let accepted = check(&attachment, &subnet_view).is_empty();
    let reserved = reserved(subnet);
    let out = handed_out(&attachment);
    let bad = (out.iter()).find(|a| !subnet.contains(*a) || reserved.contains(a) || **a == own);
    if accepted {
        prop_assert!(
            bad.is_none(),
            "{config} accepted, yet it hands out {bad:?} in {subnet}"
        );
    } else {
        prop_assert!(
            bad.is_some(),
            "{config} refused, yet all it hands out is fine in {subnet}"
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn what_the_guard_accepts_is_routable_and_unreserved_ipv4(
        (subnet, config, own_offset) in v4_subnet().prop_flat_map(|s| (Just(s), whereabouts_config(s), 4u32..16)),
    ) {
        let own = IpAddr::V4(Ipv4Addr::from(u32::from(subnet.network()) + own_offset));
        agrees(IpNet::V4(subnet), own, &config)?;
    }

    #[test]
    fn what_the_guard_accepts_is_routable_and_unreserved_ipv6(
        prefix in any::<u64>(),
        low in 0u64..64,
        span in 0u64..8_000,
        own_offset in 4u64..16,
    ) {
        let subnet = Ipv6Net::new(Ipv6Addr::from(u128::from(prefix) << 64), 64).unwrap();
        let base = u128::from(subnet.network());
        let start = Ipv6Addr::from(base + u128::from(low));
        let end = Ipv6Addr::from(base + u128::from(low + span));
        let own = IpAddr::V6(Ipv6Addr::from(base + u128::from(own_offset)));
        let config = serde_json::json!({"type": "ipvlan", "master": "eth1", "ipam": {
            "type": "host-local", "ranges": [[{"subnet": subnet.to_string(),
            "rangeStart": start.to_string(), "rangeEnd": end.to_string()}]]}}).to_string();
        agrees(IpNet::V6(subnet), own, &config)?;
    }
}
