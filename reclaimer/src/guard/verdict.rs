//! The guard's verdicts on NADs' pools against the subnet of the Multus ENI they ride
//! on. Pure: the loop reads the NADs from the API server and the subnet, its explicit
//! CIDR reservations and the ENIs' own addresses from EC2.
//!
//! AWS's rules behind each check: the VPC routes an address to an ENI only inside the
//! ENI's subnet; AWS reserves the first four addresses and the last of each subnet
//! CIDR, IPv4 and IPv6 alike; the VPC CNI hands out any free address of the subnet
//! unless an explicit subnet CIDR reservation keeps it out; whereabouts keeps one
//! cluster-wide record per address only across its own ranges with
//! `enable_overlapping_ranges` on.

use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;

use super::ipam::{Attachment, Ipam, Pool, from_num, num, same_family, step};

/// The subnet of the ENIs a NAD's master interface is, in one Availability Zone.
#[derive(Clone, Debug, PartialEq)]
pub struct Subnet {
    pub id: String,
    /// Its IPv4 CIDR and IPv6 CIDRs.
    pub cidrs: Vec<IpNet>,
    /// Its explicit subnet CIDR reservations.
    pub reservations: Vec<IpNet>,
    /// Its prefix reservations (prefix delegation's): no explicit one may overlap them.
    pub prefix_reservations: Vec<IpNet>,
    /// The Multus ENIs' own addresses in it (their primary IPv4 and IPv6 addresses).
    pub eni_addresses: Vec<IpAddr>,
}

/// What is wrong with one pool, as one line with what to do.
#[derive(Clone, Debug, PartialEq)]
pub enum Finding {
    OutsideSubnet {
        pool: String,
        subnet: String,
        cidrs: String,
    },
    Reserved {
        pool: String,
        address: IpAddr,
        subnet: String,
    },
    EniAddress {
        pool: String,
        address: IpAddr,
        subnet: String,
    },
    Unreserved {
        pool: String,
        from: IpAddr,
        to: IpAddr,
        subnet: String,
    },
    Overlap {
        pool: String,
        other: String,
        other_pool: String,
        subnet: String,
    },
    /// Part of the range is in a prefix reservation: prefix delegation hands those
    /// addresses to ENIs as whole prefixes.
    InPrefixReservation {
        pool: String,
        reservation: IpNet,
        subnet: String,
    },
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Finding::OutsideSubnet {
                pool,
                subnet,
                cidrs,
            } => write!(
                f,
                "range {pool} is not inside {subnet} ({cidrs}), the subnet of the ENI it rides on, so the VPC \
                 routes none of it there; pick a range inside {cidrs}"
            ),
            Finding::Reserved {
                pool,
                address,
                subnet,
            } => write!(
                f,
                "range {pool} holds {address}, one of the five addresses AWS reserves in {subnet} (the first four \
                 and the last); exclude it from the range"
            ),
            Finding::EniAddress {
                pool,
                address,
                subnet,
            } => write!(
                f,
                "range {pool} holds {address}, the Multus ENI's own address in {subnet}; exclude it from the range"
            ),
            Finding::Unreserved {
                pool,
                from,
                to,
                subnet,
            } => write!(
                f,
                "{from}-{to} of range {pool} is in no explicit CIDR reservation of {subnet}, so the VPC CNI may \
                 give the same addresses to other pods; reserve it: aws ec2 create-subnet-cidr-reservation \
                 --subnet-id {subnet} --reservation-type explicit --cidr CIDR"
            ),
            Finding::InPrefixReservation {
                pool,
                reservation,
                subnet,
            } => write!(
                f,
                "range {pool} overlaps {reservation}, a prefix reservation of {subnet}: prefix delegation \
                 hands those addresses to ENIs as whole prefixes; move the range out of it"
            ),
            Finding::Overlap {
                pool,
                other,
                other_pool,
                subnet,
            } => write!(
                f,
                "range {pool} overlaps {other}'s range {other_pool} in {subnet}, so two pods may get one address; \
                 give each NAD its own part of the subnet"
            ),
        }
    }
}

/// `10.0.4.16-10.0.4.254`, or the one address.
fn label(pool: &Pool) -> String {
    match pool.first == pool.last {
        true => pool.first.to_string(),
        false => format!("{}-{}", pool.first, pool.last),
    }
}

/// One NAD's pools against its ENIs' subnet: each inside one of the subnet's CIDRs of
/// its family, clear of the reserved addresses and of the ENIs' own, and covered by
/// explicit reservations. A pool outside the subnet is only said to be outside; one
/// whose exclusions leave nothing is not judged (it hands nothing out).
pub fn check(attachment: &Attachment, subnet: &Subnet) -> Vec<Finding> {
    let mut findings = Vec::new();
    for pool in &attachment.pools {
        // What the plugin hands out: the range less its exclusions. A range wider than
        // the subnet whose outside part is excluded is inside.
        let spans = pool.spans();
        if spans.is_empty() {
            continue;
        }
        let within = (subnet.cidrs.iter()).find(|c| {
            same_family(c.addr(), pool.first)
                && spans.iter().all(|(lo, hi)| {
                    c.contains(&from_num(pool.first, *lo)) && c.contains(&from_num(pool.first, *hi))
                })
        });
        let Some(cidr) = within else {
            let family: Vec<String> = (subnet.cidrs.iter())
                .filter(|c| same_family(c.addr(), pool.first))
                .map(ToString::to_string)
                .collect();
            findings.push(Finding::OutsideSubnet {
                pool: label(pool),
                subnet: subnet.id.clone(),
                cidrs: match family.is_empty() {
                    true => format!(
                        "no {} CIDR",
                        if pool.first.is_ipv4() { "IPv4" } else { "IPv6" }
                    ),
                    false => family.join(", "),
                },
            });
            continue;
        };
        let reserved = (0..4)
            .map(|i| step(cidr.network(), i))
            .chain([cidr.broadcast()]);
        for address in reserved.filter(|a| pool.holds(*a)) {
            findings.push(Finding::Reserved {
                pool: label(pool),
                address,
                subnet: subnet.id.clone(),
            });
        }
        for address in subnet.eni_addresses.iter().filter(|a| pool.holds(**a)) {
            findings.push(Finding::EniAddress {
                pool: label(pool),
                address: *address,
                subnet: subnet.id.clone(),
            });
        }
        let spans = pool.spans();
        for reservation in (subnet.prefix_reservations.iter()).filter(|r| {
            same_family(r.addr(), pool.first)
                && spans
                    .iter()
                    .any(|(lo, hi)| num(r.network()) <= *hi && *lo <= num(r.broadcast()))
        }) {
            findings.push(Finding::InPrefixReservation {
                pool: label(pool),
                reservation: *reservation,
                subnet: subnet.id.clone(),
            });
        }
        if let Some((from, to)) = first_uncovered(pool, &subnet.reservations) {
            findings.push(Finding::Unreserved {
                pool: label(pool),
                from: from_num(pool.first, from),
                to: from_num(pool.first, to),
                subnet: subnet.id.clone(),
            });
        }
    }
    findings
}

/// Pools of different NADs in one subnet that share an address, unless whereabouts
/// hands out both with its cluster-wide records: for each NAD (by its index in
/// `nads`), the overlaps it is part of.
pub fn overlaps(nads: &[(String, Attachment)], subnet: &Subnet) -> Vec<(usize, Finding)> {
    let inside = |p: &Pool| {
        subnet
            .cidrs
            .iter()
            .any(|c| c.contains(&p.first) || c.contains(&p.last))
    };
    let guarded = |a: &Attachment| {
        matches!(
            a.ipam,
            Ipam::Whereabouts {
                overlap_guarded: true
            }
        )
    };
    let mut found = Vec::new();
    for (i, (_, a)) in nads.iter().enumerate() {
        for (j, (other, b)) in nads.iter().enumerate() {
            if i == j || (guarded(a) && guarded(b)) {
                continue;
            }
            for p in a.pools.iter().filter(|p| inside(p)) {
                for q in b
                    .pools
                    .iter()
                    .filter(|q| inside(q) && same_family(q.first, p.first))
                {
                    if share(p, q) {
                        found.push((
                            i,
                            Finding::Overlap {
                                pool: label(p),
                                other: other.clone(),
                                other_pool: label(q),
                                subnet: subnet.id.clone(),
                            },
                        ));
                    }
                }
            }
        }
    }
    found
}

/// Whether two pools of one family may hand out one address.
fn share(p: &Pool, q: &Pool) -> bool {
    let (a, b) = (p.spans(), q.spans());
    a.iter()
        .any(|(lo, hi)| b.iter().any(|(l, h)| lo <= h && l <= hi))
}

/// The first part of the pool no reservation covers, as numbers.
fn first_uncovered(pool: &Pool, reservations: &[IpNet]) -> Option<(u128, u128)> {
    uncovered(pool, reservations).into_iter().next()
}

/// Every part of the pool no reservation covers, in order, as numbers.
fn uncovered(pool: &Pool, reservations: &[IpNet]) -> Vec<(u128, u128)> {
    let mut covers: Vec<(u128, u128)> = (reservations.iter())
        .filter(|r| same_family(r.addr(), pool.first))
        .map(|r| (num(r.network()), num(r.broadcast())))
        .collect();
    covers.sort();
    let mut gaps = Vec::new();
    for (lo, hi) in pool.spans() {
        let mut at = lo;
        for (c_lo, c_hi) in &covers {
            if at > hi {
                break;
            }
            if *c_hi < at {
                continue;
            }
            if *c_lo > hi {
                break;
            }
            if *c_lo > at {
                gaps.push((at, c_lo - 1));
            }
            match c_hi.checked_add(1) {
                Some(next) => at = next,
                // A cover reaching the family's last address covers the rest.
                None => return gaps,
            }
        }
        if at <= hi {
            gaps.push((at, hi));
        }
    }
    gaps
}

/// The fewest CIDRs whose union is exactly `lo..=hi`, in order, in `like`'s family:
/// at each step the largest block that starts at `lo`'s alignment and ends inside.
pub fn cover(like: IpAddr, lo: u128, hi: u128) -> Vec<IpNet> {
    let bits: u32 = match like {
        IpAddr::V4(_) => 32,
        IpAddr::V6(_) => 128,
    };
    let mut out = Vec::new();
    let mut at = lo;
    loop {
        // The block's size as a power of two: bounded by `at`'s alignment and by
        // what is left of the span.
        let aligned = match at {
            0 => bits,
            _ => at.trailing_zeros().min(bits),
        };
        let left = hi - at;
        let fits = match left.checked_add(1) {
            Some(n) => 127 - n.leading_zeros(),
            None => 128,
        };
        let size = aligned.min(fits);
        let prefix = u8::try_from(bits - size).expect("a prefix length");
        out.push(IpNet::new(from_num(like, at), prefix).expect("a valid prefix"));
        let end = match size {
            128 => u128::MAX,
            _ => at + ((1u128 << size) - 1),
        };
        if end >= hi {
            return out;
        }
        at = end + 1;
    }
}

/// The CIDRs that would cover what of the NAD's pools in `subnet` no explicit
/// reservation covers yet (what the guard reserves, when it may). A gap is reserved
/// as the one CIDR around it when that adds at most two addresses (a whereabouts
/// `range` hands out all of its CIDR but the first and the last), stays inside the
/// subnet clear of AWS's reserved addresses and meets no reservation; else as the
/// fewest CIDRs that cover it exactly.
pub fn unreserved(attachment: &Attachment, subnet: &Subnet) -> Vec<IpNet> {
    let mut out: Vec<IpNet> = Vec::new();
    for pool in &attachment.pools {
        let Some(cidr) = (subnet.cidrs.iter()).find(|c| {
            same_family(c.addr(), pool.first) && c.contains(&pool.first) && c.contains(&pool.last)
        }) else {
            continue;
        };
        let aws = [num(cidr.network()) + 3, num(cidr.broadcast())];
        let spans = |nets: &[IpNet]| -> Vec<(u128, u128)> {
            (nets.iter())
                .filter(|r| same_family(r.addr(), pool.first))
                .map(|r| (num(r.network()), num(r.broadcast())))
                .collect()
        };
        let prefixes = spans(&subnet.prefix_reservations);
        for (lo, hi) in uncovered(pool, &subnet.reservations) {
            // EC2 refuses a reservation that overlaps another, so what this pass
            // plans counts as taken as well.
            let mut taken = spans(&subnet.reservations);
            taken.extend(&prefixes);
            taken.extend(spans(&out));
            let meets = |a: u128, b: u128| taken.iter().any(|(l, h)| *l <= b && a <= *h);
            let around = enclosing(pool.first, lo, hi);
            let (a_lo, a_hi) = (num(around.network()), num(around.broadcast()));
            let fits = (a_hi - a_lo) - (hi - lo) <= 2
                && cidr.contains(&around)
                && a_lo > aws[0]
                && a_hi < aws[1]
                && !meets(a_lo, a_hi);
            if fits {
                out.push(around);
                continue;
            }
            // Exactly the gap, less what prefix delegation holds.
            for (l, h) in subtract((lo, hi), &prefixes) {
                out.extend(cover(pool.first, l, h));
            }
        }
    }
    out
}

/// `span` less every one of `holes`.
fn subtract(span: (u128, u128), holes: &[(u128, u128)]) -> Vec<(u128, u128)> {
    let mut parts = vec![span];
    for (h_lo, h_hi) in holes {
        parts = (parts.into_iter())
            .flat_map(|(lo, hi)| {
                let mut kept = Vec::new();
                if *h_hi < lo || *h_lo > hi {
                    kept.push((lo, hi));
                    return kept;
                }
                if *h_lo > lo {
                    kept.push((lo, h_lo - 1));
                }
                if *h_hi < hi {
                    kept.push((h_hi + 1, hi));
                }
                kept
            })
            .collect();
    }
    parts
}

/// The smallest CIDR holding `lo..=hi`.
fn enclosing(like: IpAddr, lo: u128, hi: u128) -> IpNet {
    let bits: u32 = if like.is_ipv4() { 32 } else { 128 };
    let differ = 128 - (lo ^ hi).leading_zeros();
    let prefix = u8::try_from(bits - differ.min(bits)).expect("a prefix length");
    IpNet::new(from_num(like, lo), prefix)
        .expect("a valid prefix")
        .trunc()
}

#[cfg(test)]
mod tests {
    use super::super::ipam::read;
    use super::*;

    fn subnet(reservations: &[&str]) -> Subnet {
        Subnet {
            id: "subnet-0a".into(),
            cidrs: vec![
                "10.0.4.0/24".parse().unwrap(),
                "2600:1f14:0:4::/64".parse().unwrap(),
            ],
            reservations: reservations.iter().map(|r| r.parse().unwrap()).collect(),
            eni_addresses: vec!["10.0.4.10".parse().unwrap()],
            prefix_reservations: vec![],
        }
    }

    fn nad(ipam: &str) -> Attachment {
        read(&format!(
            r#"{{"type":"ipvlan","master":"eth1","ipam":{ipam}}}"#
        ))
        .unwrap()
    }

    fn lines(findings: &[Finding]) -> Vec<String> {
        findings.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn a_range_inside_clear_and_reserved_passes() {
        let a = nad(r#"{"type":"whereabouts","range":"10.0.4.64-10.0.4.127/24"}"#);
        assert_eq!(check(&a, &subnet(&["10.0.4.64/26"])), []);
    }

    #[test]
    fn a_whole_subnet_range_holds_the_reserved_addresses_and_the_enis_own() {
        let a = nad(r#"{"type":"whereabouts","range":"10.0.4.0/24"}"#);
        let found = check(&a, &subnet(&["10.0.4.0/24"]));
        let reserved: Vec<_> = (found.iter())
            .filter_map(|f| match f {
                Finding::Reserved { address, .. } => Some(address.to_string()),
                _ => None,
            })
            .collect();
        // .0 and .255 are never handed out by whereabouts; .1-.3 are.
        assert_eq!(reserved, ["10.0.4.1", "10.0.4.2", "10.0.4.3"]);
        assert!(found.contains(&Finding::EniAddress {
            pool: "10.0.4.1-10.0.4.254".into(),
            address: "10.0.4.10".parse().unwrap(),
            subnet: "subnet-0a".into(),
        }));
        assert_eq!(
            found[0].to_string(),
            "range 10.0.4.1-10.0.4.254 holds 10.0.4.1, one of the five addresses AWS reserves in subnet-0a (the \
             first four and the last); exclude it from the range"
        );
    }

    #[test]
    fn a_range_outside_the_subnet_is_said_once() {
        let a = nad(r#"{"type":"whereabouts","range":"10.0.5.0/24"}"#);
        assert_eq!(
            lines(&check(&a, &subnet(&[]))),
            [
                "range 10.0.5.1-10.0.5.254 is not inside subnet-0a (10.0.4.0/24), the subnet of the ENI it rides \
              on, so the VPC routes none of it there; pick a range inside 10.0.4.0/24"
            ]
        );
        let v6 = nad(r#"{"type":"whereabouts","range":"2600:1f14:0:5::/64"}"#);
        let mut only_v4 = subnet(&[]);
        only_v4.cidrs.truncate(1);
        assert!(lines(&check(&v6, &only_v4))[0].contains("(no IPv6 CIDR)"));
    }

    #[test]
    fn the_first_part_without_a_reservation_is_named() {
        let a = nad(r#"{"type":"whereabouts","range":"10.0.4.64-10.0.4.127/24"}"#);
        let found = check(&a, &subnet(&["10.0.4.64/27", "10.0.4.112/28"]));
        assert_eq!(
            found,
            [Finding::Unreserved {
                pool: "10.0.4.64-10.0.4.127".into(),
                from: "10.0.4.96".parse().unwrap(),
                to: "10.0.4.111".parse().unwrap(),
                subnet: "subnet-0a".into(),
            }]
        );
        // An excluded part needs no reservation.
        let cut = nad(
            r#"{"type":"whereabouts","range":"10.0.4.64-10.0.4.127/24","exclude":["10.0.4.96/28"]}"#,
        );
        assert_eq!(check(&cut, &subnet(&["10.0.4.64/27", "10.0.4.112/28"])), []);
    }

    #[test]
    fn an_ipv6_range_inside_the_64_clear_of_the_reserved_passes() {
        let a = nad(r#"{"type":"whereabouts","range":"2600:1f14:0:4::100-2600:1f14:0:4::1ff/64"}"#);
        assert_eq!(check(&a, &subnet(&["2600:1f14:0:4::100/120"])), []);
        let b = nad(r#"{"type":"host-local","subnet":"2600:1f14:0:4::/64"}"#);
        let found = check(&b, &subnet(&["2600:1f14:0:4::/64"]));
        // host-local's range reaches the last address, which AWS reserves; its
        // gateway (::1) is skipped, ::2 and ::3 are not.
        let reserved: Vec<_> = (found.iter())
            .filter_map(|f| match f {
                Finding::Reserved { address, .. } => Some(address.to_string()),
                _ => None,
            })
            .collect();
        assert_eq!(
            reserved,
            [
                "2600:1f14:0:4::2",
                "2600:1f14:0:4::3",
                "2600:1f14:0:4:ffff:ffff:ffff:ffff"
            ]
        );
    }

    #[test]
    fn overlaps_between_nads_unless_whereabouts_guards_both() {
        let s = subnet(&[]);
        let wa = nad(r#"{"type":"whereabouts","range":"10.0.4.64-10.0.4.127/24"}"#);
        let wb = nad(r#"{"type":"whereabouts","range":"10.0.4.100-10.0.4.150/24"}"#);
        let hl = nad(
            r#"{"type":"host-local","subnet":"10.0.4.0/24","rangeStart":"10.0.4.120","rangeEnd":"10.0.4.130"}"#,
        );
        let apart = nad(r#"{"type":"static","addresses":[{"address":"10.0.4.200/24"}]}"#);
        let nads = vec![
            ("apps/a".to_owned(), wa),
            ("apps/b".to_owned(), wb),
            ("apps/c".to_owned(), hl),
            ("apps/d".to_owned(), apart),
        ];
        let found = overlaps(&nads, &s);
        let pairs: Vec<(usize, String)> = (found.iter())
            .map(|(i, f)| match f {
                Finding::Overlap { other, .. } => (*i, other.clone()),
                _ => unreachable!(),
            })
            .collect();
        assert_eq!(
            pairs,
            [
                (0, "apps/c".into()),
                (1, "apps/c".into()),
                (2, "apps/a".into()),
                (2, "apps/b".into())
            ]
        );
        assert_eq!(
            found[0].1.to_string(),
            "range 10.0.4.64-10.0.4.127 overlaps apps/c's range 10.0.4.120-10.0.4.130 in subnet-0a, so two pods \
             may get one address; give each NAD its own part of the subnet"
        );
    }

    #[test]
    fn a_whereabouts_range_is_reserved_as_the_cidr_it_was_written_as() {
        let unreserved_of = |ipam: &str, reservations: &[&str]| -> Vec<String> {
            unreserved(&nad(ipam), &subnet(reservations))
                .iter()
                .map(ToString::to_string)
                .collect()
        };
        // .161-.190 handed out: the /27 around them adds two addresses.
        assert_eq!(
            unreserved_of(r#"{"type":"whereabouts","range":"10.0.4.160/27"}"#, &[]),
            ["10.0.4.160/27"]
        );
        // .129-.254: the /25 around them would hold the subnet's last address, which
        // AWS keeps; covered exactly instead.
        let exact = unreserved_of(r#"{"type":"whereabouts","range":"10.0.4.128/25"}"#, &[]);
        assert_eq!(exact.first().map(String::as_str), Some("10.0.4.129/32"));
        assert!(exact.iter().all(|c| c != "10.0.4.128/25"), "{exact:?}");
        // Half of it reserved already: the other half only.
        assert_eq!(
            unreserved_of(
                r#"{"type":"whereabouts","range":"10.0.4.160/27"}"#,
                &["10.0.4.160/28"]
            ),
            ["10.0.4.176/28"]
        );
    }

    #[test]
    fn a_reservation_meets_neither_a_prefix_reservation_nor_another_planned_one() {
        let of = |ipam: &str, prefixes: &[&str]| -> Vec<String> {
            let mut view = subnet(&[]);
            view.prefix_reservations = prefixes.iter().map(|p| p.parse().unwrap()).collect();
            unreserved(&nad(ipam), &view)
                .iter()
                .map(ToString::to_string)
                .collect()
        };
        // Prefix delegation holds .176/28: the /27 around the range would meet it, so
        // only the rest of the range is reserved.
        assert_eq!(
            of(
                r#"{"type":"whereabouts","range":"10.0.4.160/27"}"#,
                &["10.0.4.176/28"]
            ),
            [
                "10.0.4.161/32",
                "10.0.4.162/31",
                "10.0.4.164/30",
                "10.0.4.168/29"
            ]
        );
        // Two pools side by side: the second's surroundings would meet the first's.
        let two = of(
            r#"{"type":"whereabouts","ipRanges":[{"range":"10.0.4.160/28"},{"range":"10.0.4.176/28"}]}"#,
            &[],
        );
        let nets: Vec<IpNet> = two.iter().map(|c| c.parse().unwrap()).collect();
        for (i, a) in nets.iter().enumerate() {
            for b in &nets[i + 1..] {
                assert!(!a.contains(b) && !b.contains(a), "{a} meets {b}: {two:?}");
            }
        }
        assert!(two.contains(&"10.0.4.160/28".to_owned()), "{two:?}");
    }

    #[test]
    fn a_range_in_a_prefix_reservation_is_a_finding() {
        let mut view = subnet(&["10.0.4.128/25"]);
        view.prefix_reservations = vec!["10.0.4.176/28".parse().unwrap()];
        let found = check(
            &nad(r#"{"type":"whereabouts","range":"10.0.4.160/27"}"#),
            &view,
        );
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].to_string().starts_with(
            "range 10.0.4.161-10.0.4.190 overlaps 10.0.4.176/28, a prefix reservation of subnet-0a"
        ));
        // Beside it, nothing.
        let clear = check(
            &nad(r#"{"type":"whereabouts","range":"10.0.4.128/28"}"#),
            &view,
        );
        assert_eq!(clear, []);
    }
}
