//! Property tests of the guard's address arithmetic: whatever range a NAD is written
//! with, every address its IPAM plugin may hand out from a range the guard accepts
//! lies in the subnet and is none of AWS's reserved addresses nor the ENI's own; and
//! a range holding one of those is never accepted. And what the guard reserves for a
//! range is exactly what no reservation covered: once reserved, the range is covered.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use proptest::prelude::*;

use super::ipam::{self, from_num, num};
use super::verdict::{Finding, Subnet, check, cover, unreserved};

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
        prefix_reservations: Vec::new(),
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

/// `cover`'s blocks: in order, each aligned to its size, each starting where the last
/// ended, from `lo` to `hi` exactly, and no more than two per bit of the family.
fn covers_exactly(like: IpAddr, lo: u128, hi: u128) -> Result<(), TestCaseError> {
    let blocks = cover(like, lo, hi);
    let bits = if like.is_ipv4() { 32 } else { 128 };
    prop_assert!(
        blocks.len() <= 2 * bits,
        "{} blocks for {lo}..={hi}",
        blocks.len()
    );
    let mut next = Some(lo);
    for block in &blocks {
        prop_assert_eq!(
            Some(num(block.network())),
            next,
            "{:?} leaves a hole",
            blocks
        );
        prop_assert_eq!(block.network(), block.addr(), "{} is not aligned", block);
        next = num(block.broadcast()).checked_add(1);
    }
    prop_assert_eq!(num(blocks.last().unwrap().broadcast()), hi);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn a_span_is_covered_by_cidrs_exactly(lo in any::<u32>(), len in any::<u32>(), v6 in any::<u128>(), len6 in any::<u128>()) {
        let hi = lo.saturating_add(len >> (len % 32));
        covers_exactly(IpAddr::V4(Ipv4Addr::UNSPECIFIED), u128::from(lo), u128::from(hi))?;
        let hi6 = v6.saturating_add(len6 >> (len6 % 128));
        covers_exactly(IpAddr::V6(Ipv6Addr::UNSPECIFIED), v6, hi6)?;
    }

    #[test]
    fn what_the_guard_would_reserve_leaves_the_range_covered(
        (subnet, config) in v4_subnet().prop_flat_map(|s| (Just(s), whereabouts_config(s))),
        reserved_at in proptest::option::of((0u32..256, 26u8..=30)),
    ) {
        let Ok(attachment) = ipam::read(&config) else { return Ok(()) };
        let existing: Vec<IpNet> = reserved_at
            .map(|(offset, prefix)| {
                let at = Ipv4Addr::from(u32::from(subnet.network()).saturating_add(offset * 4));
                IpNet::V4(Ipv4Net::new(at, prefix).unwrap().trunc())
            })
            .into_iter()
            .collect();
        let mut view = Subnet {
            id: "subnet-a".into(),
            cidrs: vec![IpNet::V4(subnet)],
            reservations: existing.clone(),
            eni_addresses: vec![],
            prefix_reservations: Vec::new(),
        };
        let wanted = unreserved(&attachment, &view);
        let aws = reserved(IpNet::V4(subnet));
        for cidr in &wanted {
            prop_assert!(!existing.iter().any(|e| e.contains(cidr) || cidr.contains(e)),
                         "{} is reserved already ({:?})", cidr, existing);
            prop_assert!(IpNet::V4(subnet).contains(cidr), "{} is outside {}", cidr, subnet);
            let held: Vec<&IpAddr> = aws.iter().filter(|a| cidr.contains(*a)).collect();
            // Only a range that hands out AWS's addresses itself (a finding of its
            // own, so never reserved by the loop) is covered over them.
            prop_assert!(held.is_empty() || !check(&attachment, &view).iter().all(|f| matches!(f, Finding::Unreserved { .. })),
                         "{} holds AWS's {:?}", cidr, held);
        }
        view.reservations.extend(wanted);
        let unreserved_left = check(&attachment, &view)
            .into_iter()
            .filter(|f| matches!(f, Finding::Unreserved { .. }))
            .collect::<Vec<_>>();
        // What lies inside the subnet is covered now; a pool outside it is not the
        // reservation's to fix.
        for finding in &unreserved_left {
            let Finding::Unreserved { from, .. } = finding else { unreachable!() };
            prop_assert!(!IpNet::V4(subnet).contains(from), "{} left unreserved by {}", finding, config);
        }
    }

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
