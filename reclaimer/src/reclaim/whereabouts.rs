//! whereabouts' own allocation records, read as evidence that IPAM handed an address
//! out: an `IPPool` (`whereabouts.cni.cncf.io/v1alpha1`) holds, for one range, each
//! allocation's offset from the range's network address and the pod it went to.
//!
//! They matter where `network-status` cannot help: a pod force-deleted from a dead
//! node before this reclaimer saw it. whereabouts never ran the CNI DEL for it, so
//! its record stays until whereabouts' own reconciler removes it, and the address
//! on the ENI is a candidate meanwhile.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use kube::api::{ApiResource, GroupVersionKind};
use serde_json::Value;

use crate::reclaim::claims::Evidence;

pub fn ip_pool_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("whereabouts.cni.cncf.io", "v1alpha1", "IPPool"),
        "ippools",
    )
}

/// The allocations of one IPPool's `spec`, each with the pod it went to. A record
/// that cannot be read is left out: it only ever adds a candidate.
pub fn allocations(pool_name: &str, spec: &Value) -> Vec<(IpAddr, Evidence)> {
    let Some(range) = spec
        .get("range")
        .and_then(Value::as_str)
        .and_then(|r| r.parse::<IpNet>().ok())
    else {
        return Vec::new();
    };
    let Some(records) = spec.get("allocations").and_then(Value::as_object) else {
        return Vec::new();
    };
    records
        .iter()
        .filter_map(|(offset, record)| {
            let offset: u128 = offset.parse().ok()?;
            let ip = add(range.network(), offset)?;
            if !range.contains(&ip) {
                return None;
            }
            let pod = record.get("podref").and_then(Value::as_str)?.to_owned();
            let seen_in = format!("whereabouts IPPool {pool_name}");
            Some((ip, Evidence { pod, seen_in }))
        })
        .collect()
}

fn add(base: IpAddr, offset: u128) -> Option<IpAddr> {
    match base {
        IpAddr::V4(v4) => {
            let n = u32::from(v4).checked_add(u32::try_from(offset).ok()?)?;
            Some(IpAddr::V4(Ipv4Addr::from(n)))
        }
        IpAddr::V6(v6) => Some(IpAddr::V6(Ipv6Addr::from(
            u128::from(v6).checked_add(offset)?,
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn offsets_count_from_the_range_network_in_both_families() {
        let spec = json!({"range": "10.0.4.0/24", "allocations": {
            "66": {"id": "c1", "podref": "multus-demo/app-1", "ifname": "net1"},
            "300": {"id": "c2", "podref": "multus-demo/app-2"},
            "x": {"id": "c3", "podref": "multus-demo/app-3"},
            "70": {"id": "c4"},
        }});
        let found = allocations("10.0.4.0-24", &spec);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].0, "10.0.4.66".parse::<IpAddr>().unwrap());
        assert_eq!(found[0].1.pod, "multus-demo/app-1");
        assert!(found[0].1.seen_in.contains("10.0.4.0-24"));

        let spec = json!({"range": "2001:db8:0:5::/64", "allocations": {
            "256": {"id": "c1", "podref": "multus-demo/app-1"}}});
        let found = allocations("v6", &spec);
        assert_eq!(found[0].0, "2001:db8:0:5::100".parse::<IpAddr>().unwrap());
        assert!(allocations("none", &json!({"range": "bad"})).is_empty());
    }
}
