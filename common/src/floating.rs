//! The floating addresses a workload asks for, read from its pod template's
//! annotations the same way by the webhook (which will refuse a form the manager
//! cannot serve) and by the IP manager (which will hold them while its replica holds
//! their Lease). Pure; nothing here talks to the cluster or to EC2.
//!
//! - `ipmgmt.aws/floating-ips`: the addresses, IPv4 and IPv6, comma-separated, that
//!   one replica at a time holds on its interface and its ENI.
//! - `ipmgmt.aws/elastic-ip`: an allocation (`eipalloc-…`) that follows the one IPv4
//!   floating address, or `tag:KEY=VALUE`, a pool of EIPs by tag for per-pod
//!   addresses.
//! - `ipmgmt.aws/route-tables`: route tables (`rtb-…`, comma-separated, or
//!   `tag:KEY=VALUE`) whose `/32` or `/128` route to each floating address points at
//!   the holder's ENI: floating addresses outside the VPC's CIDRs, across zones.

use std::net::IpAddr;

/// The floating addresses.
pub const FLOATING_IPS: &str = "ipmgmt.aws/floating-ips";
/// The Elastic IP that follows them.
pub const ELASTIC_IP: &str = "ipmgmt.aws/elastic-ip";
/// The route tables that point at their holder.
pub const ROUTE_TABLES: &str = "ipmgmt.aws/route-tables";

/// At most this many floating addresses per workload: each is a secondary address of
/// the holder's ENI, and an ENI holds few.
pub const MAX_ADDRESSES: usize = 8;

/// A tag that selects EC2 resources, `tag:KEY=VALUE`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Selector {
    pub key: String,
    pub value: String,
}

/// The Elastic IP a workload asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ElasticIp {
    /// This one allocation, following the floating IPv4 address.
    Allocation(String),
    /// Any unassociated EIP carrying the tag, one per pod.
    Pool(Selector),
}

/// The route tables a workload's floating addresses are routed through.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RouteTables {
    Ids(Vec<String>),
    Tagged(Selector),
}

/// As the annotations write them: `tag:KEY=VALUE`, an allocation id, table ids.
impl std::fmt::Display for Selector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "tag:{}={}", self.key, self.value)
    }
}

impl std::fmt::Display for ElasticIp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ElasticIp::Allocation(id) => f.write_str(id),
            ElasticIp::Pool(selector) => selector.fmt(f),
        }
    }
}

impl std::fmt::Display for RouteTables {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RouteTables::Ids(ids) => f.write_str(&ids.join(",")),
            RouteTables::Tagged(selector) => selector.fmt(f),
        }
    }
}

/// The floating addresses, in the order written; refused with the reason when one is
/// not an address a VPC can route to an ENI, appears twice, or there are too many.
pub fn addresses(text: &str) -> Result<Vec<IpAddr>, String> {
    let mut out: Vec<IpAddr> = Vec::new();
    for part in text.split(',').map(str::trim) {
        if part.is_empty() {
            return Err(format!("{FLOATING_IPS} has an empty entry in {text:?}"));
        }
        let ip: IpAddr = part.parse().map_err(|_| {
            format!("{FLOATING_IPS}: {part:?} is not an IPv4 or IPv6 address (no prefix length)")
        })?;
        if let Some(why) = unroutable(ip) {
            return Err(format!(
                "{FLOATING_IPS}: {ip} is {why}, which no VPC routes to an ENI"
            ));
        }
        if out.contains(&ip) {
            return Err(format!("{FLOATING_IPS}: {ip} is named twice"));
        }
        out.push(ip);
    }
    if out.len() > MAX_ADDRESSES {
        return Err(format!(
            "{FLOATING_IPS} names {} addresses; at most {MAX_ADDRESSES}",
            out.len()
        ));
    }
    Ok(out)
}

/// Why `ip` can never be a floating address, if it cannot.
fn unroutable(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) if v4.is_unspecified() => Some("the unspecified address"),
        IpAddr::V4(v4) if v4.is_loopback() => Some("a loopback address"),
        IpAddr::V4(v4) if v4.is_multicast() => Some("a multicast address"),
        IpAddr::V4(v4) if v4.is_broadcast() => Some("the broadcast address"),
        IpAddr::V4(v4) if v4.is_link_local() => Some("a link-local address"),
        IpAddr::V6(v6) if v6.is_unspecified() => Some("the unspecified address"),
        IpAddr::V6(v6) if v6.is_loopback() => Some("a loopback address"),
        IpAddr::V6(v6) if v6.is_multicast() => Some("a multicast address"),
        IpAddr::V6(v6) if v6.is_unicast_link_local() => Some("a link-local address"),
        _ => None,
    }
}

/// `tag:KEY=VALUE`.
fn selector(text: &str, annotation: &str) -> Result<Selector, String> {
    let rest = text.strip_prefix("tag:").unwrap_or(text);
    match rest.split_once('=') {
        Some((key, value)) if !key.is_empty() && !value.is_empty() => Ok(Selector {
            key: key.to_owned(),
            value: value.to_owned(),
        }),
        _ => Err(format!(
            "{annotation}: {text:?} is not tag:KEY=VALUE (both non-empty)"
        )),
    }
}

/// Whether `id` is `prefix` followed by 8 or 17 lower-case hex digits, as EC2 writes
/// resource ids.
fn resource_id(id: &str, prefix: &str) -> bool {
    id.strip_prefix(prefix).is_some_and(|hex| {
        matches!(hex.len(), 8 | 17)
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// The Elastic IP form, checked against the floating addresses it would follow: an
/// allocation follows exactly one IPv4 address.
pub fn elastic_ip(text: &str, addresses: &[IpAddr]) -> Result<ElasticIp, String> {
    let text = text.trim();
    let v4 = addresses.iter().filter(|a| a.is_ipv4()).count();
    if text.starts_with("tag:") {
        return selector(text, ELASTIC_IP).map(ElasticIp::Pool);
    }
    if !resource_id(text, "eipalloc-") {
        return Err(format!(
            "{ELASTIC_IP}: {text:?} is neither an allocation id (eipalloc- and 8 or 17 hex digits) nor tag:KEY=VALUE"
        ));
    }
    match v4 {
        1 => Ok(ElasticIp::Allocation(text.to_owned())),
        0 => Err(format!(
            "{ELASTIC_IP} needs an IPv4 address in {FLOATING_IPS} to follow (Elastic IPs are IPv4)"
        )),
        n => Err(format!(
            "{ELASTIC_IP}: one Elastic IP follows one address, and {FLOATING_IPS} names {n} IPv4 addresses"
        )),
    }
}

/// The route tables form: ids, or a tag.
pub fn route_tables(text: &str) -> Result<RouteTables, String> {
    let text = text.trim();
    if text.starts_with("tag:") {
        return selector(text, ROUTE_TABLES).map(RouteTables::Tagged);
    }
    let ids: Vec<String> = text.split(',').map(|s| s.trim().to_owned()).collect();
    if let Some(bad) = ids.iter().find(|id| !resource_id(id, "rtb-")) {
        return Err(format!(
            "{ROUTE_TABLES}: {bad:?} is not a route table id (rtb- and 8 or 17 hex digits); or write tag:KEY=VALUE"
        ));
    }
    Ok(RouteTables::Ids(ids))
}

/// The Lease a workload's replicas contend for, the same for every replica and every
/// order the addresses are written in: `ipmgmt-vip-` and 16 hex digits of a hash of
/// the sorted addresses (FNV-1a, stable across builds and machines).
pub fn lease_name(addresses: &[IpAddr]) -> String {
    let mut sorted = addresses.to_vec();
    sorted.sort();
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for ip in &sorted {
        for byte in ip.to_string().bytes().chain([b',']) {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    }
    format!("ipmgmt-vip-{hash:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ips(text: &str) -> Vec<IpAddr> {
        addresses(text).unwrap()
    }

    #[test]
    fn addresses_are_read_in_order_and_each_refusal_names_the_entry() {
        assert_eq!(
            ips(" 10.0.4.100, 2001:db8:0:5::100 "),
            [
                "10.0.4.100".parse::<IpAddr>().unwrap(),
                "2001:db8:0:5::100".parse().unwrap()
            ]
        );
        for (text, says) in [
            (
                "10.0.4.100/32",
                "\"10.0.4.100/32\" is not an IPv4 or IPv6 address",
            ),
            ("10.0.4.100,", "an empty entry"),
            ("10.0.4.100,10.0.4.100", "10.0.4.100 is named twice"),
            ("127.0.0.1", "127.0.0.1 is a loopback address"),
            ("169.254.1.1", "is a link-local address"),
            ("fe80::1", "fe80::1 is a link-local address"),
            ("224.0.0.5", "a multicast address"),
            ("0.0.0.0", "the unspecified address"),
        ] {
            let err = addresses(text).unwrap_err();
            assert!(
                err.starts_with(FLOATING_IPS) && err.contains(says),
                "{text}: {err}"
            );
        }
        let many: Vec<String> = (1..=9).map(|n| format!("10.0.4.{n}")).collect();
        assert!(
            addresses(&many.join(","))
                .unwrap_err()
                .contains("names 9 addresses; at most 8")
        );
    }

    #[test]
    fn an_elastic_ip_follows_exactly_one_ipv4_address() {
        let one = ips("10.0.4.100,2001:db8::100");
        assert_eq!(
            elastic_ip("eipalloc-0123456789abcdef0", &one),
            Ok(ElasticIp::Allocation("eipalloc-0123456789abcdef0".into()))
        );
        assert_eq!(
            elastic_ip("tag:ipmgmt.aws/pool=upf", &[]),
            Ok(ElasticIp::Pool(Selector {
                key: "ipmgmt.aws/pool".into(),
                value: "upf".into()
            }))
        );
        assert!(
            elastic_ip("eipalloc-0123456789abcdef0", &ips("2001:db8::100"))
                .unwrap_err()
                .contains("needs an IPv4 address")
        );
        assert!(
            elastic_ip("eipalloc-0123456789abcdef0", &ips("10.0.4.1,10.0.4.2"))
                .unwrap_err()
                .contains("names 2 IPv4 addresses")
        );
        for bad in [
            "eipalloc-XYZ",
            "203.0.113.10",
            "eipalloc-0123",
            "tag:=x",
            "tag:k=",
        ] {
            assert!(
                elastic_ip(bad, &one).unwrap_err().starts_with(ELASTIC_IP),
                "{bad}"
            );
        }
    }

    #[test]
    fn each_form_is_written_back_as_the_annotation_wrote_it() {
        for text in ["rtb-0a1b2c3d,rtb-0123456789abcdef0", "tag:vip=upf"] {
            assert_eq!(route_tables(text).unwrap().to_string(), text);
        }
        let one = ips("10.0.4.100");
        for text in ["eipalloc-0123456789abcdef0", "tag:ipmgmt.aws/pool=upf"] {
            assert_eq!(elastic_ip(text, &one).unwrap().to_string(), text);
        }
    }

    #[test]
    fn route_tables_are_ids_or_a_tag() {
        assert_eq!(
            route_tables("rtb-0a1b2c3d, rtb-0123456789abcdef0"),
            Ok(RouteTables::Ids(vec![
                "rtb-0a1b2c3d".into(),
                "rtb-0123456789abcdef0".into()
            ]))
        );
        assert!(matches!(
            route_tables("tag:vip=upf"),
            Ok(RouteTables::Tagged(_))
        ));
        let err = route_tables("rtb-0a1b2c3d,igw-0a1b2c3d").unwrap_err();
        assert!(
            err.contains("\"igw-0a1b2c3d\" is not a route table id"),
            "{err}"
        );
    }

    #[test]
    fn the_lease_is_one_per_set_of_addresses_and_a_valid_name() {
        let a = lease_name(&ips("10.0.4.100,2001:db8::100"));
        assert_eq!(a, lease_name(&ips("2001:db8::100, 10.0.4.100")));
        assert_ne!(a, lease_name(&ips("10.0.4.101,2001:db8::100")));
        assert_ne!(a, lease_name(&ips("10.0.4.100")));
        // A DNS-1123 label, as a Lease's name must be.
        assert!(
            a.len() <= 63
                && a.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        );
        // Stable across builds and machines: every replica must name the same Lease.
        assert_eq!(
            lease_name(&ips("10.0.4.100")),
            "ipmgmt-vip-710f1d1f42b46577"
        );
    }
}
