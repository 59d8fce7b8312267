//! The reclaimer's Prometheus metrics, served on the admin port at `/metrics`.
//!
//! | metric | labels |
//! |---|---|
//! | `ipmgmt_reclaimer_leader` | none: 1 while this replica holds the Lease |
//! | `ipmgmt_reclaimer_sweeps_total` | `result`: `complete`, `throttled`, `failed` |
//! | `ipmgmt_reclaimer_addresses` | `verdict`: `claimed`, `not_from_ipam`, `node_settling`, `waiting`, `release`, `deferred` (after the last sweep) |
//! | `ipmgmt_reclaimer_releases_total` | `result`: `released`, `dry_run`, `claimed_at_confirm`, `put_back`, `failed` |
//! | `ipmgmt_reclaimer_watch_errors_total` | `resource`: `pods`, `nodes`, `namespaces`, `ippools`, `network_attachment_definitions` |
//! | `ipmgmt_reclaimer_guard_passes_total` | `result`: `complete`, `failed` (the address-range guard's passes) |
//! | `ipmgmt_reclaimer_readiness_passes_total` | `result`: `complete`, `failed` (node readiness for Multus ENIs) |
//! | `ipmgmt_reclaimer_readiness_attachments_total` | `result`: `attached`, `refused` (Multus ENIs attached to nodes, made or from a pool, with `--readiness-attach`) |
//! | `ipmgmt_reclaimer_nodes_missing_enis` | none: nodes in scope tainted for a missing Multus ENI after the last pass |
//! | `ipmgmt_reclaimer_guard_reservations_total` | `result`: `created`, `refused` (subnet CIDR reservations the guard asked for, with `--guard-reserve-ranges`) |
//! | `ipmgmt_reclaimer_guard_findings` | `namespace`, `name`: a NAD's address-range findings at the last pass; only NADs with findings |
//! | `ipmgmt_reclaimer_ec2_attempts_total` | `action`, `result` (as `ipmgmt_manager_ec2_attempts_total`) |

use ipmgmt_common::label_values;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::reclaim::sweep::Verdict;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SweepResult {
    Complete,
    /// EC2 throttled past the retry budget; the next sweep goes on.
    Throttled,
    Failed,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReleaseResult {
    Released,
    DryRun,
    /// The fresh read of the node's pods just before an attempt found a claim.
    ClaimedAtConfirm,
    /// Claimed by a pod while its release was in flight, and assigned to its ENI again.
    PutBack,
    Failed,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GuardResult {
    Complete,
    /// EC2 refused or failed; the findings of the pass before stand.
    Failed,
}

/// How an attempt to attach a node's missing Multus ENI ended (made or taken from a
/// pool, either way attached).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AttachResult {
    Attached,
    /// EC2 refused or failed, or nothing said where the ENI comes from.
    Refused,
}

/// How a subnet CIDR reservation the guard asked for ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WriteResult {
    Created,
    /// EC2 refused or failed.
    Refused,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReadinessResult {
    Complete,
    /// EC2 failed, or a taint could not be written.
    Failed,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Resource {
    Pods,
    Nodes,
    Namespaces,
    IpPools,
    Nads,
}

label_values!(SweepResult {
    Complete => "complete",
    Throttled => "throttled",
    Failed => "failed",
});
label_values!(ReleaseResult {
    Released => "released",
    DryRun => "dry_run",
    ClaimedAtConfirm => "claimed_at_confirm",
    PutBack => "put_back",
    Failed => "failed",
});
label_values!(GuardResult {
    Complete => "complete",
    Failed => "failed",
});
label_values!(AttachResult {
    Attached => "attached",
    Refused => "refused",
});
label_values!(WriteResult {
    Created => "created",
    Refused => "refused",
});
label_values!(ReadinessResult {
    Complete => "complete",
    Failed => "failed",
});
label_values!(Resource {
    Pods => "pods",
    Nodes => "nodes",
    Namespaces => "namespaces",
    IpPools => "ippools",
    Nads => "network_attachment_definitions",
});
label_values!(Verdict {
    Claimed => "claimed",
    NotFromIpam => "not_from_ipam",
    NodeSettling => "node_settling",
    Waiting => "waiting",
    Release => "release",
    Deferred => "deferred",
});

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SweepLabel {
    result: SweepResult,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReleaseLabel {
    result: ReleaseResult,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VerdictLabel {
    verdict: Verdict,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResourceLabel {
    resource: Resource,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct GuardLabel {
    result: GuardResult,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WriteLabel {
    result: WriteResult,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AttachLabel {
    result: AttachResult,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReadinessLabel {
    result: ReadinessResult,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NadLabel {
    namespace: String,
    name: String,
}

#[derive(Clone, Debug, Default)]
pub struct Metrics {
    leader: Gauge,
    sweeps: Family<SweepLabel, Counter>,
    addresses: Family<VerdictLabel, Gauge>,
    releases: Family<ReleaseLabel, Counter>,
    watch_errors: Family<ResourceLabel, Counter>,
    guard_passes: Family<GuardLabel, Counter>,
    guard_findings: Family<NadLabel, Gauge>,
    guard_reservations: Family<WriteLabel, Counter>,
    readiness_attachments: Family<AttachLabel, Counter>,
    readiness_passes: Family<ReadinessLabel, Counter>,
    nodes_missing_enis: Gauge,
}

impl Metrics {
    /// Registers every family, each label value present from the start, so a
    /// dashboard sees zeros rather than gaps.
    pub fn register(&self, registry: &mut Registry) {
        for r in [
            SweepResult::Complete,
            SweepResult::Throttled,
            SweepResult::Failed,
        ] {
            let _ = self.sweeps.get_or_create(&SweepLabel { result: r });
        }
        for r in [
            ReleaseResult::Released,
            ReleaseResult::DryRun,
            ReleaseResult::ClaimedAtConfirm,
            ReleaseResult::PutBack,
            ReleaseResult::Failed,
        ] {
            let _ = self.releases.get_or_create(&ReleaseLabel { result: r });
        }
        for v in Verdict::ALL {
            let _ = self.addresses.get_or_create(&VerdictLabel { verdict: v });
        }
        for r in GuardResult::ALL {
            let _ = self.guard_passes.get_or_create(&GuardLabel { result: r });
        }
        for r in WriteResult::ALL {
            let _ = self
                .guard_reservations
                .get_or_create(&WriteLabel { result: r });
        }
        for r in AttachResult::ALL {
            let _ = self
                .readiness_attachments
                .get_or_create(&AttachLabel { result: r });
        }
        for r in ReadinessResult::ALL {
            let _ = self
                .readiness_passes
                .get_or_create(&ReadinessLabel { result: r });
        }
        for r in Resource::ALL {
            let _ = self
                .watch_errors
                .get_or_create(&ResourceLabel { resource: r });
        }
        registry.register(
            "leader",
            "1 while this replica holds the leader Lease",
            self.leader.clone(),
        );
        registry.register("sweeps", "Sweeps by how they ended", self.sweeps.clone());
        registry.register(
            "addresses",
            "Secondary addresses on the nodes' Multus ENIs at the last sweep, by verdict",
            self.addresses.clone(),
        );
        registry.register(
            "releases",
            "Addresses released (or reported, in dry-run) by result",
            self.releases.clone(),
        );
        registry.register(
            "watch_errors",
            "Watch errors by resource; each restarts every grace period",
            self.watch_errors.clone(),
        );
        registry.register(
            "guard_passes",
            "The address-range guard's passes by how they ended",
            self.guard_passes.clone(),
        );
        registry.register(
            "readiness_attachments",
            "Multus ENIs node readiness attached to nodes, by how the attempt ended",
            self.readiness_attachments.clone(),
        );
        registry.register(
            "guard_reservations",
            "Subnet CIDR reservations the address-range guard asked EC2 for, by how they ended",
            self.guard_reservations.clone(),
        );
        registry.register(
            "readiness_passes",
            "Node readiness passes by how they ended",
            self.readiness_passes.clone(),
        );
        registry.register(
            "nodes_missing_enis",
            "Nodes in scope tainted for a missing Multus ENI after the last readiness pass",
            self.nodes_missing_enis.clone(),
        );
        registry.register(
            "guard_findings",
            "Address-range findings per NetworkAttachmentDefinition at the guard's last pass",
            self.guard_findings.clone(),
        );
    }

    pub fn set_leader(&self, leading: bool) {
        self.leader.set(i64::from(leading));
    }

    pub fn sweep(&self, result: SweepResult) {
        self.sweeps.get_or_create(&SweepLabel { result }).inc();
    }

    pub fn release(&self, result: ReleaseResult, n: usize) {
        self.releases
            .get_or_create(&ReleaseLabel { result })
            .inc_by(n as u64);
    }

    pub fn verdicts(&self, counts: &std::collections::BTreeMap<Verdict, usize>) {
        for v in Verdict::ALL {
            let n = counts.get(&v).copied().unwrap_or(0);
            self.addresses
                .get_or_create(&VerdictLabel { verdict: v })
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
    }

    pub fn watch_errors(&self, resource: Resource) -> Counter {
        self.watch_errors
            .get_or_create(&ResourceLabel { resource })
            .clone()
    }

    pub fn readiness_pass(&self, result: ReadinessResult) {
        self.readiness_passes
            .get_or_create(&ReadinessLabel { result })
            .inc();
    }

    pub fn nodes_missing_enis(&self, n: usize) {
        self.nodes_missing_enis
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    pub fn guard_pass(&self, result: GuardResult) {
        self.guard_passes
            .get_or_create(&GuardLabel { result })
            .inc();
    }

    /// An attempt to attach a node's missing Multus ENI: attached or not.
    pub fn readiness_attachment(&self, result: AttachResult) {
        self.readiness_attachments
            .get_or_create(&AttachLabel { result })
            .inc();
    }

    pub fn guard_reservation(&self, result: WriteResult) {
        self.guard_reservations
            .get_or_create(&WriteLabel { result })
            .inc();
    }

    /// A NAD's findings now: `0` drops its series.
    pub fn guard_findings(&self, namespace: &str, name: &str, n: usize) {
        let label = NadLabel {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        };
        match n {
            0 => {
                self.guard_findings.remove(&label);
            }
            n => {
                self.guard_findings
                    .get_or_create(&label)
                    .set(i64::try_from(n).unwrap_or(i64::MAX));
            }
        }
    }
}
