//! One sweep's decision, pure: what EC2 holds, what the cluster claims, what was
//! unclaimed last time → what to release now.
//!
//! An address is released only when all of these hold:
//! - IPAM is known to have handed it out to an ipmgmt pod (`Evidence`: the pod's
//!   `network-status`, or whereabouts' allocation records), so a floating IP, which
//!   no IPAM hands out, is never a candidate however a NAD's range is written;
//! - no live pod on the node of its ENI claims it, and no pod there is settling;
//! - it was unclaimed at an earlier sweep at least `grace` ago, and at every sweep
//!   since (a claim in between starts its clock again);
//! - fewer than the per-sweep limit were released before it in this sweep.
//!
//! Anything else is left alone, and says why (`Verdict`).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use crate::reclaim::claims::Evidence;

/// A secondary address on a Multus ENI of a cluster node, as EC2 reports it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Held {
    pub node: String,
    pub instance: String,
    pub eni: String,
    pub ip: IpAddr,
}

/// What the Kubernetes API says, reduced to what a sweep needs.
#[derive(Clone, Debug, Default)]
pub struct Cluster {
    /// The addresses live pods claim, by node.
    pub claims: HashMap<String, BTreeSet<IpAddr>>,
    /// Nodes with a live pod whose addresses Multus has not reported yet.
    pub settling: HashSet<String>,
    /// Addresses IPAM is known to have handed out to ipmgmt pods in the namespaces
    /// the webhook serves.
    pub handed_out: HashMap<IpAddr, Evidence>,
}

/// Why an address was or was not released.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Verdict {
    /// A live pod on the node claims it.
    Claimed,
    /// Nothing says IPAM handed it out: a floating IP, or not ipmgmt's.
    NotFromIpam,
    /// Unclaimed, but a pod on the node is still settling.
    NodeSettling,
    /// Unclaimed, for less than the grace period.
    Waiting,
    /// Unclaimed past the grace: released (or reported, in dry-run).
    Release,
    /// Due, but this sweep reached its limit.
    Deferred,
}

/// An address this sweep releases.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Release {
    pub held: Held,
    pub evidence: Evidence,
    pub unclaimed_for: Duration,
}

#[derive(Debug, Default)]
pub struct Decision {
    pub releases: Vec<Release>,
    pub verdicts: BTreeMap<Verdict, usize>,
}

/// Addresses seen unclaimed, and since when: the memory between sweeps.
#[derive(Debug, Default)]
pub struct Suspects {
    since: HashMap<(String, IpAddr), Instant>,
}

impl Suspects {
    /// Forget every clock: after the API view may have missed a change (a watch
    /// error or a resync), every address must be seen unclaimed again, a full
    /// grace apart, before it goes.
    pub fn restart(&mut self) {
        self.since.clear();
    }

    pub fn len(&self) -> usize {
        self.since.len()
    }

    pub fn is_empty(&self) -> bool {
        self.since.is_empty()
    }
}

pub fn decide(
    held: &[Held],
    cluster: &Cluster,
    suspects: &mut Suspects,
    now: Instant,
    grace: Duration,
    limit: usize,
) -> Decision {
    let mut decision = Decision::default();
    let mut still = HashMap::new();
    let mut due = Vec::new();
    for h in held {
        let verdict = match cluster.handed_out.get(&h.ip) {
            _ if claimed(cluster, h) => Verdict::Claimed,
            None => Verdict::NotFromIpam,
            Some(evidence) => {
                let key = (h.eni.clone(), h.ip);
                let since = suspects.since.get(&key).copied().unwrap_or(now);
                still.insert(key, since);
                let unclaimed_for = now.saturating_duration_since(since);
                if cluster.settling.contains(&h.node) {
                    Verdict::NodeSettling
                } else if unclaimed_for >= grace && since < now {
                    due.push(Release {
                        held: h.clone(),
                        evidence: evidence.clone(),
                        unclaimed_for,
                    });
                    continue;
                } else {
                    Verdict::Waiting
                }
            }
        };
        *decision.verdicts.entry(verdict).or_default() += 1;
    }
    // The longest unclaimed first, so a limit never starves an old address.
    due.sort_by(|a, b| {
        b.unclaimed_for
            .cmp(&a.unclaimed_for)
            .then(a.held.cmp(&b.held))
    });
    let deferred = due.len().saturating_sub(limit);
    due.truncate(limit);
    for r in &due {
        still.remove(&(r.held.eni.clone(), r.held.ip));
    }
    *decision.verdicts.entry(Verdict::Release).or_default() += due.len();
    *decision.verdicts.entry(Verdict::Deferred).or_default() += deferred;
    decision.releases = due;
    suspects.since = still;
    decision
}

fn claimed(cluster: &Cluster, h: &Held) -> bool {
    cluster
        .claims
        .get(&h.node)
        .is_some_and(|ips| ips.contains(&h.ip))
}

#[cfg(test)]
mod tests {
    use super::*;

    const GRACE: Duration = Duration::from_secs(300);

    fn held(node: &str, ip: &str) -> Held {
        Held {
            node: node.into(),
            instance: format!("i-{node}"),
            eni: format!("eni-{node}"),
            ip: ip.parse().unwrap(),
        }
    }

    /// IPAM handed out 10.0.4.64–10.0.4.95; 10.0.4.100 is a floating IP.
    fn cluster() -> Cluster {
        let handed_out = (64..=95)
            .map(|n| {
                let evidence = Evidence {
                    pod: format!("multus-demo/app-{n}"),
                    seen_in: "network-status of network multus-demo/ipvlan-net1".into(),
                };
                (format!("10.0.4.{n}").parse().unwrap(), evidence)
            })
            .collect();
        Cluster {
            handed_out,
            ..Cluster::default()
        }
    }

    fn released(d: &Decision) -> Vec<String> {
        d.releases.iter().map(|r| r.held.ip.to_string()).collect()
    }

    #[test]
    fn released_only_at_a_second_sighting_a_grace_apart() {
        let c = cluster();
        let h = [held("n1", "10.0.4.66")];
        let mut s = Suspects::default();
        let t0 = Instant::now();
        let first = decide(&h, &c, &mut s, t0, GRACE, 10);
        assert!(first.releases.is_empty());
        assert_eq!(first.verdicts[&Verdict::Waiting], 1);
        let early = decide(
            &h,
            &c,
            &mut s,
            t0 + GRACE - Duration::from_secs(1),
            GRACE,
            10,
        );
        assert!(early.releases.is_empty());
        let due = decide(&h, &c, &mut s, t0 + GRACE, GRACE, 10);
        assert_eq!(released(&due), ["10.0.4.66"]);
        assert!(s.is_empty(), "a released address is forgotten");
    }

    #[test]
    fn a_zero_grace_still_needs_two_sightings() {
        let c = cluster();
        let h = [held("n1", "10.0.4.66")];
        let mut s = Suspects::default();
        let t0 = Instant::now();
        assert!(
            decide(&h, &c, &mut s, t0, Duration::ZERO, 10)
                .releases
                .is_empty()
        );
        let later = t0 + Duration::from_millis(1);
        assert_eq!(
            released(&decide(&h, &c, &mut s, later, Duration::ZERO, 10)),
            ["10.0.4.66"]
        );
    }

    #[test]
    fn a_claim_in_between_starts_the_clock_again() {
        let mut c = cluster();
        let h = [held("n1", "10.0.4.66")];
        let mut s = Suspects::default();
        let t0 = Instant::now();
        decide(&h, &c, &mut s, t0, GRACE, 10);
        c.claims
            .entry("n1".into())
            .or_default()
            .insert("10.0.4.66".parse().unwrap());
        let claimed = decide(&h, &c, &mut s, t0 + GRACE / 2, GRACE, 10);
        assert_eq!(claimed.verdicts[&Verdict::Claimed], 1);
        c.claims.clear();
        assert!(
            decide(&h, &c, &mut s, t0 + GRACE, GRACE, 10)
                .releases
                .is_empty()
        );
        assert_eq!(
            released(&decide(&h, &c, &mut s, t0 + GRACE * 2, GRACE, 10)),
            ["10.0.4.66"]
        );
    }

    #[test]
    fn a_claim_on_another_node_does_not_protect_this_one() {
        let mut c = cluster();
        c.claims
            .entry("n2".into())
            .or_default()
            .insert("10.0.4.66".parse().unwrap());
        let h = [held("n1", "10.0.4.66")];
        let mut s = Suspects::default();
        let t0 = Instant::now();
        decide(&h, &c, &mut s, t0, GRACE, 10);
        assert_eq!(
            released(&decide(&h, &c, &mut s, t0 + GRACE, GRACE, 10)),
            ["10.0.4.66"]
        );
    }

    #[test]
    fn floating_ips_and_settling_nodes_are_left_alone() {
        let mut c = cluster();
        c.settling.insert("n2".into());
        let h = [held("n1", "10.0.4.100"), held("n2", "10.0.4.70")];
        let mut s = Suspects::default();
        let t0 = Instant::now();
        decide(&h, &c, &mut s, t0, GRACE, 10);
        let d = decide(&h, &c, &mut s, t0 + GRACE * 10, GRACE, 10);
        assert!(d.releases.is_empty());
        assert_eq!(d.verdicts[&Verdict::NotFromIpam], 1);
        assert_eq!(d.verdicts[&Verdict::NodeSettling], 1);
        c.settling.clear();
        assert_eq!(
            released(&decide(&h, &c, &mut s, t0 + GRACE * 11, GRACE, 10)),
            ["10.0.4.70"],
            "the clock kept running while the node settled"
        );
    }

    #[test]
    fn the_limit_takes_the_longest_unclaimed_first_and_defers_the_rest() {
        let c = cluster();
        let mut s = Suspects::default();
        let t0 = Instant::now();
        decide(&[held("n1", "10.0.4.70")], &c, &mut s, t0, GRACE, 1);
        let both = [held("n1", "10.0.4.70"), held("n1", "10.0.4.71")];
        decide(&both, &c, &mut s, t0 + Duration::from_secs(10), GRACE, 1);
        let d = decide(&both, &c, &mut s, t0 + GRACE * 2, GRACE, 1);
        assert_eq!(released(&d), ["10.0.4.70"]);
        assert_eq!(d.verdicts[&Verdict::Deferred], 1);
        let next = decide(&both[1..], &c, &mut s, t0 + GRACE * 2, GRACE, 1);
        assert_eq!(released(&next), ["10.0.4.71"], "deferred keeps its clock");
    }

    #[test]
    fn restart_forgets_every_clock() {
        let c = cluster();
        let h = [held("n1", "10.0.4.66")];
        let mut s = Suspects::default();
        let t0 = Instant::now();
        decide(&h, &c, &mut s, t0, GRACE, 10);
        s.restart();
        assert!(
            decide(&h, &c, &mut s, t0 + GRACE, GRACE, 10)
                .releases
                .is_empty()
        );
    }
}
