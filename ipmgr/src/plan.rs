//! From placed addresses to EC2 calls. Pure.
//!
//! The rules come from EC2: no mutating call for an address already where it belongs;
//! one call per ENI, not per address (Assign/Unassign are throttled at 5/s per account
//! and Region); IPv4 moves in one call with AllowReassignment, IPv6 has no such flag
//! and must be unassigned from its holder first.
//!
//! And from what reassignment can break: AllowReassignment takes an address from any
//! ENI in the VPC, including a VPC-CNI pod's or another cluster's, and IAM can only
//! condition the destination. So an address is assigned without it unless its holder
//! is known, and taken only from an ENI this pod's policy lets ipmgr manage (tagged,
//! this cluster's, a Multus device index). Anything else is refused, naming the holder.
//!
//! And from floating IPs: an address moves from another ENI only when this pod has
//! just taken it (`take`). A pass that merely re-asserts what the pod holds (a periodic
//! pass, a retry of something else) repairs an address no ENI holds, and leaves an
//! address another ENI holds where it is: the pod may hold a stale copy of a floating
//! IP that a peer has since taken, and taking it back would bounce it between nodes.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::eni::{Eni, Placement, Policy, Refusal};

/// What a pass may do with addresses another ENI holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rules {
    /// This pod may take addresses from other ENIs at all (IPv4 and IPv6).
    pub allow_reassignment: bool,
}

/// Why an address cannot go where it belongs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Blocked {
    /// Another ENI holds it and this pod has reassignment off.
    ReassignmentOff { holder: String },
    /// It is another ENI's primary address, which EC2 never moves.
    PrimaryElsewhere { holder: String },
    /// Another ENI holds it, one ipmgr does not manage (a VPC-CNI pod's, another
    /// cluster's, the node's primary ENI): the address is handed out twice.
    Unmanaged { holder: String, why: Refusal },
}

/// One call's worth of addresses for one ENI.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Batch<'a, T> {
    pub eni: &'a Eni,
    pub ips: Vec<T>,
}

/// Adds `ip` to `eni`'s batch, keeping batches in ENI id order and addresses unique.
fn add<'a, T: PartialEq>(batches: &mut Vec<Batch<'a, T>>, eni: &'a Eni, ip: T) {
    match batches.iter_mut().find(|b| b.eni.id == eni.id) {
        Some(b) if b.ips.contains(&ip) => {}
        Some(b) => b.ips.push(ip),
        None => {
            let at = batches.partition_point(|b| b.eni.id < eni.id);
            batches.insert(at, Batch { eni, ips: vec![ip] });
        }
    }
}

/// The calls one pass makes, in the order they run.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan<'a> {
    /// Already secondary addresses of the right ENI.
    pub in_place: Vec<Placement<'a>>,
    /// AssignPrivateIpAddresses without reassignment: no other ENI is known to hold these.
    pub assign_v4: Vec<Batch<'a, Ipv4Addr>>,
    /// AssignPrivateIpAddresses with AllowReassignment: held by an ENI in `taken`.
    pub reassign_v4: Vec<Batch<'a, Ipv4Addr>>,
    /// UnassignIpv6Addresses on the current holder, before the assignment.
    pub unassign_v6: Vec<Batch<'a, Ipv6Addr>>,
    pub assign_v6: Vec<Batch<'a, Ipv6Addr>>,
    /// Placements the calls above carry: what to confirm once they succeed.
    pub moving: Vec<Placement<'a>>,
    /// Moving from another ENI that ipmgr manages: each address and its holder.
    pub taken: Vec<(Placement<'a>, &'a Eni)>,
    /// Held by another ENI, and this pass does not take: left there, with the holder.
    pub left: Vec<(Placement<'a>, &'a Eni)>,
    pub blocked: Vec<(Placement<'a>, Blocked)>,
}

impl Plan<'_> {
    pub fn is_empty(&self) -> bool {
        self.calls() == 0
    }

    /// How many mutating calls it makes.
    pub fn calls(&self) -> usize {
        self.assign_v4.len()
            + self.reassign_v4.len()
            + self.unassign_v6.len()
            + self.assign_v6.len()
    }
}

/// Which addresses not in place need their current holder known before planning:
/// any the pass does not take (it must not steal, and names the holder when it leaves
/// the address there), and, unless `assign_first`, any it takes (to check that the
/// holder is an ENI ipmgr may take from). With `assign_first` (a start, where the
/// addresses come fresh from the network's pool and are rarely held) the address is
/// assigned without reassignment first, and its holder looked up only if EC2 refuses.
pub fn needs_holder(p: &Placement<'_>, take: bool, rules: Rules, assign_first: bool) -> bool {
    let takes = take && rules.allow_reassignment;
    !p.eni.holds(p.ip()) && (!takes || !assign_first)
}

/// `take(ip)`: this pod has just taken the address. `holders` are the ENIs holding the
/// addresses for which `needs_holder` was true (from a filtered describe); `policy`
/// says which of them ipmgr may take an address from.
pub fn plan<'a>(
    placements: &[Placement<'a>],
    take: impl Fn(IpAddr) -> bool,
    holders: &'a [Eni],
    rules: Rules,
    policy: &Policy,
) -> Plan<'a> {
    let mut plan = Plan::default();
    for p in placements {
        let ip = p.ip();
        let seen = |list: &[Placement<'_>]| list.iter().any(|q| q.ip() == ip);
        if seen(&plan.in_place) || seen(&plan.moving) {
            continue;
        }
        if p.eni.holds(ip) {
            plan.in_place.push(*p);
            continue;
        }
        let holder = holders.iter().find(|h| h.id != p.eni.id && h.holds(ip));
        if let Some(h) = holder {
            if h.is_primary(ip) {
                let holder = h.id.clone();
                plan.blocked
                    .push((*p, Blocked::PrimaryElsewhere { holder }));
                continue;
            }
            if !take(ip) {
                plan.left.push((*p, h));
                continue;
            }
            if !rules.allow_reassignment {
                let holder = h.id.clone();
                plan.blocked.push((*p, Blocked::ReassignmentOff { holder }));
                continue;
            }
            if let Some(why) = policy.refusal(h) {
                let holder = h.id.clone();
                plan.blocked.push((*p, Blocked::Unmanaged { holder, why }));
                continue;
            }
            plan.taken.push((*p, h));
        }
        plan.moving.push(*p);
        match ip {
            IpAddr::V4(v4) if holder.is_some() => add(&mut plan.reassign_v4, p.eni, v4),
            IpAddr::V4(v4) => add(&mut plan.assign_v4, p.eni, v4),
            IpAddr::V6(v6) => {
                add(&mut plan.assign_v6, p.eni, v6);
                if let Some(h) = holder {
                    add(&mut plan.unassign_v6, h, v6);
                }
            }
        }
    }
    plan
}

/// Addresses not (yet) seen on their ENI in a fresh describe.
pub fn unconfirmed<'a>(targets: &[Placement<'a>], enis: &[Eni]) -> Vec<Placement<'a>> {
    targets
        .iter()
        .filter(|p| !enis.iter().any(|e| e.id == p.eni.id && e.holds(p.ip())))
        .copied()
        .collect()
}

/// The unassign calls of a release.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Release<'a> {
    pub ipv4: Vec<Batch<'a, Ipv4Addr>>,
    pub ipv6: Vec<Batch<'a, Ipv6Addr>>,
}

/// What to unassign on stop: each address the pod still holds, from the ENI its own
/// interface rides on, and only if that ENI holds it now. An address the pod gave up
/// may already be another pod's; one that moved to another ENI (another node, or a
/// pod on this node riding on another ENI) is its new owner's. A primary private
/// address, IPv4 or IPv6, is never touched. `placements` come from a fresh describe.
pub fn release<'a>(placements: &[Placement<'a>]) -> Release<'a> {
    let mut out = Release::default();
    for p in placements {
        let eni = p.eni;
        match p.ip() {
            ip if !eni.holds(ip) || eni.is_primary(ip) => {}
            IpAddr::V4(v4) => add(&mut out.ipv4, eni, v4),
            IpAddr::V6(v6) => add(&mut out.ipv6, eni, v6),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eni::Local;
    use crate::eni::tests::{eni, local};
    use std::collections::BTreeMap;

    const TAKE: Rules = Rules {
        allow_reassignment: true,
    };
    const KEEP_OFF: Rules = Rules {
        allow_reassignment: false,
    };
    const POLICY: Policy = Policy {
        min_device_index: 1,
        require_no_manage: true,
        cluster_tag: None,
    };

    fn at<'a>(local: &'a Local, eni: &'a Eni) -> Placement<'a> {
        Placement { local, eni }
    }

    fn v6(e: &mut Eni, ips: &[&str]) {
        e.ipv6 = ips.iter().map(|s| s.parse().unwrap()).collect();
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    /// Batches as ENI id → addresses, for comparing.
    fn ids<T: Clone>(batches: &[Batch<'_, T>]) -> BTreeMap<String, Vec<T>> {
        batches
            .iter()
            .map(|b| (b.eni.id.clone(), b.ips.clone()))
            .collect()
    }

    #[test]
    fn in_place_addresses_make_no_calls() {
        let e = eni("eni-1", "m1", 1, "s", &["10.0.1.10", "10.0.1.20"]);
        let l = local("10.0.1.20", "net1", "m1");
        let p = plan(&[at(&l, &e)], |_| true, &[], TAKE, &POLICY);
        assert!(p.is_empty());
        assert_eq!(p.in_place, [at(&l, &e)]);
    }

    #[test]
    fn one_call_per_eni() {
        let a = eni("eni-a", "m1", 1, "s", &["10.0.1.10"]);
        let b = eni("eni-b", "m2", 2, "t", &["10.0.2.10"]);
        let l: Vec<Local> = ["10.0.1.20", "10.0.2.20", "10.0.1.21", "10.0.1.20"]
            .iter()
            .map(|s| local(s, "net1", "m1"))
            .collect();
        let targets = [at(&l[0], &a), at(&l[1], &b), at(&l[2], &a), at(&l[3], &a)];
        let p = plan(&targets, |_| true, &[], TAKE, &POLICY);
        assert_eq!(p.calls(), 2);
        assert_eq!(
            ids(&p.assign_v4)["eni-a"],
            [
                "10.0.1.20".parse::<Ipv4Addr>().unwrap(),
                "10.0.1.21".parse().unwrap()
            ]
        );
        assert_eq!(ids(&p.assign_v4)["eni-b"].len(), 1);
    }

    #[test]
    fn ipv6_held_elsewhere_is_unassigned_there_first() {
        let mut here = eni("eni-here", "m1", 1, "s", &["10.0.1.10"]);
        v6(&mut here, &["2600::1"]);
        let mut there = eni("eni-there", "m9", 1, "s", &["10.0.1.9"]);
        v6(&mut there, &["2600::7"]);
        let (moving, kept) = (
            local("2600::7", "net1", "m1"),
            local("2600::1", "net1", "m1"),
        );
        let holders = vec![there, here.clone()];
        let p = plan(
            &[at(&moving, &here), at(&kept, &here)],
            |_| true,
            &holders,
            TAKE,
            &POLICY,
        );
        let v6: Ipv6Addr = "2600::7".parse().unwrap();
        assert_eq!(
            ids(&p.unassign_v6),
            BTreeMap::from([("eni-there".into(), vec![v6])])
        );
        assert_eq!(
            ids(&p.assign_v6),
            BTreeMap::from([("eni-here".into(), vec![v6])])
        );
        assert_eq!(p.in_place, [at(&kept, &here)]);
    }

    #[test]
    fn reassignment_off_never_unassigns_ipv6_from_its_holder() {
        let here = eni("eni-here", "m1", 1, "s", &["10.0.1.10"]);
        let mut there = eni("eni-there", "m9", 1, "s", &["10.0.1.9"]);
        v6(&mut there, &["2600::7"]);
        let l = local("2600::7", "net1", "m1");
        let p = plan(
            &[at(&l, &here)],
            |_| true,
            std::slice::from_ref(&there),
            KEEP_OFF,
            &POLICY,
        );
        assert!(p.is_empty(), "{p:?}");
        assert_eq!(
            p.blocked,
            [(
                at(&l, &here),
                Blocked::ReassignmentOff {
                    holder: "eni-there".into()
                }
            )]
        );
        // Nobody holds it: assigned, reassignment or not.
        let free = local("2600::8", "net1", "m1");
        let holders = [there];
        let p = plan(&[at(&free, &here)], |_| true, &holders, KEEP_OFF, &POLICY);
        assert_eq!(
            ids(&p.assign_v6)["eni-here"],
            ["2600::8".parse::<Ipv6Addr>().unwrap()]
        );
    }

    #[test]
    fn a_pass_that_does_not_take_repairs_but_never_steals() {
        let here = eni("eni-here", "m1", 1, "s", &["10.0.1.10"]);
        let mut there = eni("eni-there", "m9", 1, "s", &["10.0.1.9", "10.0.1.99"]);
        v6(&mut there, &["2600::7"]);
        let stale = local("10.0.1.99", "net1", "m1");
        let stale6 = local("2600::7", "net1", "m1");
        let lost = local("10.0.1.50", "net1", "m1");
        let targets = [at(&stale, &here), at(&stale6, &here), at(&lost, &here)];
        let holders = std::slice::from_ref(&there);

        let periodic = plan(&targets, |_| false, holders, TAKE, &POLICY);
        assert_eq!(
            periodic.left,
            [(at(&stale, &here), &there), (at(&stale6, &here), &there)]
        );
        assert!(periodic.unassign_v6.is_empty());
        // An address no ENI holds is repaired.
        assert_eq!(
            ids(&periodic.assign_v4)["eni-here"],
            ["10.0.1.50".parse::<Ipv4Addr>().unwrap()]
        );

        // The pod has just taken the floating IP: it moves.
        let taken = plan(&targets, |a| a == ip("10.0.1.99"), holders, TAKE, &POLICY);
        assert_eq!(
            ids(&taken.assign_v4)["eni-here"],
            ["10.0.1.50".parse::<Ipv4Addr>().unwrap()],
            "no ENI holds it: no reassignment"
        );
        assert_eq!(
            ids(&taken.reassign_v4)["eni-here"],
            ["10.0.1.99".parse::<Ipv4Addr>().unwrap()],
            "held by a Multus ENI: reassigned"
        );
        assert_eq!(taken.taken, [(at(&stale, &here), &there)]);
        assert_eq!(taken.left.len(), 1, "the IPv6 address was not taken");
    }

    #[test]
    fn an_address_is_taken_only_from_an_eni_ipmgr_manages() {
        let here = eni("eni-here", "m1", 1, "s", &["10.0.1.10"]);
        // A VPC-CNI ENI (untagged), the node's primary ENI, another cluster's ENI.
        let mut cni = eni("eni-cni", "m8", 1, "s", &["10.0.1.8", "10.0.1.80"]);
        v6(&mut cni, &["2600::80"]);
        cni.tags.clear();
        let primary = eni("eni-node", "m7", 0, "s", &["10.0.1.7", "10.0.1.70"]);
        let other = eni("eni-other", "m6", 1, "s", &["10.0.1.6", "10.0.1.60"]);
        let holders = [cni, primary, other];
        let l: Vec<Local> = ["10.0.1.80", "2600::80", "10.0.1.70", "10.0.1.60"]
            .iter()
            .map(|s| local(s, "net1", "m1"))
            .collect();
        let targets: Vec<_> = l.iter().map(|l| at(l, &here)).collect();
        let cluster = Policy {
            cluster_tag: Some(crate::eni::Tag {
                key: "ipmgmt.aws/cluster".into(),
                value: "blue".into(),
            }),
            ..POLICY
        };
        let mut tagged = holders.clone();
        for h in &mut tagged[..2] {
            h.tags.insert("ipmgmt.aws/cluster".into(), "blue".into());
        }
        let p = plan(&targets, |_| true, &tagged, TAKE, &cluster);
        assert!(p.is_empty(), "{p:?}");
        let refused: Vec<(IpAddr, &str)> = (p.blocked.iter())
            .map(|(q, b)| match b {
                Blocked::Unmanaged { holder, .. } => (q.ip(), holder.as_str()),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(
            refused,
            [
                (ip("10.0.1.80"), "eni-cni"),
                (ip("2600::80"), "eni-cni"),
                (ip("10.0.1.70"), "eni-node"),
                (ip("10.0.1.60"), "eni-other"),
            ]
        );
        assert!(matches!(
            &p.blocked[0].1,
            Blocked::Unmanaged {
                why: Refusal::ManagedByVpcCni,
                ..
            }
        ));
        assert!(matches!(
            &p.blocked[2].1,
            Blocked::Unmanaged {
                why: Refusal::DeviceIndex { index: 0, .. },
                ..
            }
        ));
        assert!(matches!(
            &p.blocked[3].1,
            Blocked::Unmanaged {
                why: Refusal::OtherCluster(_),
                ..
            }
        ));
        // Without a cluster tag the third ENI is a Multus ENI like any other.
        let p = plan(&targets, |_| true, &holders, TAKE, &POLICY);
        assert_eq!(
            ids(&p.reassign_v4)["eni-here"],
            ["10.0.1.60".parse::<Ipv4Addr>().unwrap()]
        );
        assert_eq!(p.blocked.len(), 3);
    }

    #[test]
    fn another_enis_primary_is_never_moved() {
        let here = eni("eni-here", "m1", 1, "s", &["10.0.1.10"]);
        let there = eni("eni-there", "m9", 1, "s", &["10.0.1.9"]);
        let l = local("10.0.1.9", "net1", "m1");
        let holders = [there];
        let p = plan(&[at(&l, &here)], |_| true, &holders, TAKE, &POLICY);
        assert!(p.is_empty());
        assert!(
            matches!(&p.blocked[0].1, Blocked::PrimaryElsewhere { holder } if holder == "eni-there")
        );
    }

    #[test]
    fn holders_are_looked_up_only_when_they_change_the_plan() {
        let e = eni("eni-1", "m1", 1, "s", &["10.0.1.10"]);
        let (v4, v6) = (
            local("10.0.1.50", "net1", "m1"),
            local("2600::5", "net1", "m1"),
        );
        let in_place = local("10.0.1.10", "net1", "m1");
        for assign_first in [false, true] {
            assert!(
                needs_holder(&at(&v4, &e), false, TAKE, assign_first),
                "must not steal"
            );
            assert!(needs_holder(&at(&v4, &e), true, KEEP_OFF, assign_first));
            assert!(needs_holder(&at(&v6, &e), false, TAKE, assign_first));
            assert!(needs_holder(&at(&v6, &e), true, KEEP_OFF, assign_first));
            assert!(!needs_holder(
                &at(&in_place, &e),
                false,
                KEEP_OFF,
                assign_first
            ));
        }
        for l in [&v4, &v6] {
            assert!(
                needs_holder(&at(l, &e), true, TAKE, false),
                "looked up first"
            );
            assert!(
                !needs_holder(&at(l, &e), true, TAKE, true),
                "assigned first, without reassignment: EC2 refuses it if another ENI holds it"
            );
        }
    }

    #[test]
    fn unconfirmed_lists_what_has_not_landed() {
        let e = eni("eni-1", "m1", 1, "s", &["10.0.1.10", "10.0.1.20"]);
        let (landed, pending) = (
            local("10.0.1.20", "net1", "m1"),
            local("10.0.1.30", "net1", "m1"),
        );
        let targets = [at(&landed, &e), at(&pending, &e)];
        assert_eq!(
            unconfirmed(&targets, std::slice::from_ref(&e)),
            [at(&pending, &e)]
        );
    }

    #[test]
    fn release_only_from_the_pods_own_eni_and_never_a_primary() {
        let mut own = eni("eni-own", "m1", 1, "s", &["10.0.1.10", "10.0.1.20"]);
        v6(&mut own, &["2600::5"]);
        let held: Vec<Local> = ["10.0.1.10", "10.0.1.20", "10.0.1.99", "2600::5"]
            .iter()
            .map(|s| local(s, "net1", "m1"))
            .collect();
        let placements: Vec<_> = held.iter().map(|l| at(l, &own)).collect();
        let r = release(&placements);
        assert_eq!(
            ids(&r.ipv4),
            BTreeMap::from([("eni-own".to_string(), vec!["10.0.1.20".parse().unwrap()])])
        );
        assert_eq!(
            ids(&r.ipv6),
            BTreeMap::from([("eni-own".to_string(), vec!["2600::5".parse().unwrap()])])
        );
        // 10.0.1.99 moved to another ENI of this node (a pod riding on it took it):
        // nothing is unassigned there, because the release never looks beyond `own`.
        assert!(
            !r.ipv4
                .iter()
                .flat_map(|b| &b.ips)
                .any(|a| a.to_string() == "10.0.1.99")
        );
    }
}
