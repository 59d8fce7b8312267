//! From addresses and the ENIs they belong on, to EC2 calls. Pure.
//!
//! The rules come from EC2: no mutating call for an address already where it belongs;
//! one call per ENI, not per address (Assign/Unassign are throttled at 5/s per account
//! and Region); IPv4 moves in one call with AllowReassignment, IPv6 has no such flag
//! and must be unassigned from its holder first.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::eni::Eni;

/// The calls one pass makes, per ENI id, in the order they run.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Already secondary addresses of the right ENI.
    pub in_place: Vec<IpAddr>,
    pub assign_v4: BTreeMap<String, Vec<Ipv4Addr>>,
    /// UnassignIpv6Addresses on the current holder, before the assignment.
    pub unassign_v6: BTreeMap<String, Vec<Ipv6Addr>>,
    pub assign_v6: BTreeMap<String, Vec<Ipv6Addr>>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.assign_v4.is_empty() && self.assign_v6.is_empty() && self.unassign_v6.is_empty()
    }

    /// How many mutating calls it makes.
    pub fn calls(&self) -> usize {
        self.assign_v4.len() + self.unassign_v6.len() + self.assign_v6.len()
    }
}

/// `targets` pairs each address with the ENI it must be on; `ipv6_holders` are the ENIs
/// holding the IPv6 addresses not yet in place (from a filtered describe).
pub fn plan(targets: &[(IpAddr, &Eni)], ipv6_holders: &[Eni]) -> Plan {
    let mut plan = Plan::default();
    for (ip, eni) in targets {
        if eni.holds(*ip) {
            plan.in_place.push(*ip);
            continue;
        }
        match ip {
            IpAddr::V4(v4) => push_unique(plan.assign_v4.entry(eni.id.clone()).or_default(), *v4),
            IpAddr::V6(v6) => {
                push_unique(plan.assign_v6.entry(eni.id.clone()).or_default(), *v6);
                for holder in ipv6_holders
                    .iter()
                    .filter(|h| h.id != eni.id && h.ipv6.contains(v6))
                {
                    push_unique(plan.unassign_v6.entry(holder.id.clone()).or_default(), *v6);
                }
            }
        }
    }
    plan.in_place.sort();
    plan.in_place.dedup();
    plan
}

/// Targets not (yet) seen on their ENI in a fresh describe.
pub fn unconfirmed(targets: &[(IpAddr, String)], enis: &[Eni]) -> Vec<(IpAddr, String)> {
    targets
        .iter()
        .filter(|(ip, id)| !enis.iter().any(|e| e.id == *id && e.holds(*ip)))
        .cloned()
        .collect()
}

/// The unassign calls of a release, per ENI id.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Release {
    pub ipv4: BTreeMap<String, Vec<Ipv4Addr>>,
    pub ipv6: BTreeMap<String, Vec<Ipv6Addr>>,
}

/// What to unassign on stop: only addresses the pod still holds *and* that are on one
/// of this node's ENIs right now. An address the pod gave up may already be another
/// pod's, and an address that moved to another node is that node's to release. A
/// primary private address is never touched.
pub fn release(held: &[IpAddr], enis: &[Eni]) -> Release {
    let mut out = Release::default();
    for ip in held {
        let Some(eni) = enis.iter().find(|e| e.holds(*ip)) else {
            continue;
        };
        match ip {
            IpAddr::V4(v4) if eni.primary_ipv4 == Some(*v4) => {}
            IpAddr::V4(v4) => push_unique(out.ipv4.entry(eni.id.clone()).or_default(), *v4),
            IpAddr::V6(v6) => push_unique(out.ipv6.entry(eni.id.clone()).or_default(), *v6),
        }
    }
    out
}

fn push_unique<T: PartialEq>(list: &mut Vec<T>, item: T) {
    if !list.contains(&item) {
        list.push(item);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eni::tests::eni;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn in_place_addresses_make_no_calls() {
        let e = eni(
            "eni-1",
            "0a:00:00:00:00:01",
            1,
            "s",
            &["10.0.1.10", "10.0.1.20"],
        );
        let p = plan(&[(ip("10.0.1.20"), &e)], &[]);
        assert!(p.is_empty());
        assert_eq!(p.in_place, vec![ip("10.0.1.20")]);
    }

    #[test]
    fn one_call_per_eni() {
        let a = eni("eni-a", "0a:00:00:00:00:01", 1, "s", &["10.0.1.10"]);
        let b = eni("eni-b", "0a:00:00:00:00:02", 2, "t", &["10.0.2.10"]);
        let p = plan(
            &[
                (ip("10.0.1.20"), &a),
                (ip("10.0.2.20"), &b),
                (ip("10.0.1.21"), &a),
                (ip("10.0.1.20"), &a),
            ],
            &[],
        );
        assert_eq!(p.calls(), 2);
        assert_eq!(
            p.assign_v4["eni-a"],
            vec![
                "10.0.1.20".parse::<Ipv4Addr>().unwrap(),
                "10.0.1.21".parse().unwrap()
            ]
        );
        assert_eq!(p.assign_v4["eni-b"].len(), 1);
    }

    #[test]
    fn ipv6_held_elsewhere_is_unassigned_there_first() {
        let mut here = eni("eni-here", "0a:00:00:00:00:01", 1, "s", &["10.0.1.10"]);
        here.ipv6 = vec!["2600::1".parse().unwrap()];
        let v6: Ipv6Addr = "2600::7".parse().unwrap();
        let mut there = eni("eni-there", "0a:00:00:00:00:09", 1, "s", &["10.0.1.9"]);
        there.ipv6 = vec![v6];
        let holders = vec![there, here.clone()];
        let p = plan(&[(IpAddr::V6(v6), &here), (ip("2600::1"), &here)], &holders);
        assert_eq!(
            p.unassign_v6,
            BTreeMap::from([("eni-there".to_string(), vec![v6])])
        );
        assert_eq!(
            p.assign_v6,
            BTreeMap::from([("eni-here".to_string(), vec![v6])])
        );
        assert_eq!(p.in_place, vec![ip("2600::1")]);
    }

    #[test]
    fn unconfirmed_lists_what_has_not_landed() {
        let e = eni(
            "eni-1",
            "0a:00:00:00:00:01",
            1,
            "s",
            &["10.0.1.10", "10.0.1.20"],
        );
        let targets = vec![
            (ip("10.0.1.20"), "eni-1".to_string()),
            (ip("10.0.1.30"), "eni-1".to_string()),
        ];
        assert_eq!(
            unconfirmed(&targets, &[e]),
            vec![(ip("10.0.1.30"), "eni-1".to_string())]
        );
    }

    #[test]
    fn release_only_what_is_held_here_and_never_a_primary() {
        let mut e = eni(
            "eni-1",
            "0a:00:00:00:00:01",
            1,
            "s",
            &["10.0.1.10", "10.0.1.20"],
        );
        e.ipv6 = vec!["2600::5".parse().unwrap()];
        let held = [
            ip("10.0.1.10"),
            ip("10.0.1.20"),
            ip("10.0.1.99"),
            ip("2600::5"),
        ];
        let p = release(&held, &[e]);
        assert_eq!(
            p.ipv4,
            BTreeMap::from([("eni-1".to_string(), vec!["10.0.1.20".parse().unwrap()])])
        );
        assert_eq!(
            p.ipv6,
            BTreeMap::from([("eni-1".to_string(), vec!["2600::5".parse().unwrap()])])
        );
    }
}
