//! The sidecar loop's metrics: passes by trigger and result, and the pod's addresses
//! by state. Label values are enums.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::sidecar::Trigger;
use crate::aws::Attempts;
use crate::floating;
use crate::manager::{Outcome, PassError};
use ipmgmt_common::label_values;
use ipmgmt_common::metrics::Component;

/// A trigger without its event count: the `trigger` label.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub(super) enum TriggerKind {
    Start,
    Retry,
    Events,
    Periodic,
}

/// How a sidecar pass ended: the `result` label.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
enum PassResult {
    Complete,
    Incomplete,
    Failed,
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
enum AddressState {
    Assigned,
    Unassigned,
}

label_values!(TriggerKind {
    Start => "start",
    Retry => "retry",
    Events => "events",
    Periodic => "periodic",
});
label_values!(PassResult {
    Complete => "complete",
    Incomplete => "incomplete",
    Failed => "failed",
});
label_values!(AddressState {
    Assigned => "assigned",
    Unassigned => "unassigned",
});

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PassLabels {
    trigger: TriggerKind,
    result: PassResult,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: AddressState,
}

/// The sidecar loop's metrics: passes by trigger and result, and the pod's addresses
/// by state after the last pass.
#[derive(Clone, Debug)]
pub struct PassMetrics {
    passes: Family<PassLabels, Counter>,
    addresses: Family<StateLabel, Gauge>,
}

/// The manager's registry, with the EC2 attempts, the sidecar loop's and the floating
/// addresses' metrics in it
/// as `ipmgmt_manager_*`. Each is also served, with the same values, under the name it
/// had before it took the project's convention (`ipmgr_*`), so that dashboards and
/// alerts can move over; the old names go in 0.3.
pub(super) fn registry(attempts: &Attempts) -> (Registry, PassMetrics, floating::Metrics) {
    let mut root = Registry::default();
    let prefix = Component::Manager.prefix();
    let own = root.sub_registry_with_prefix(prefix);
    attempts.register(own);
    let metrics = PassMetrics::register(own);
    let floating = floating::Metrics::register(own);
    let old =
        |new: &str| format!("Deprecated: the same as {prefix}_{new}, which replaces it in 0.3");
    attempts.register_as(&mut root, "ipmgr_ec2_attempts", &old("ec2_attempts_total"));
    root.register("ipmgr_passes", old("passes_total"), metrics.passes.clone());
    root.register(
        "ipmgr_addresses",
        old("addresses"),
        metrics.addresses.clone(),
    );
    (root, metrics, floating)
}

impl PassMetrics {
    /// Makes the families, each registered as it is made: a new one cannot be left
    /// out of `/metrics`.
    fn register(registry: &mut Registry) -> PassMetrics {
        let passes = Family::default();
        registry.register(
            "passes",
            "Sidecar assignment passes, by what started them and how they ended",
            passes.clone(),
        );
        let addresses = Family::default();
        registry.register(
            "addresses",
            "The pod's managed addresses after the last pass, by state",
            addresses.clone(),
        );
        PassMetrics { passes, addresses }
    }

    pub(super) fn pass(&self, trigger: Trigger, result: &Result<Outcome, PassError>) {
        let (result, assigned, unassigned) = match result {
            Ok(o) if o.is_complete() => (PassResult::Complete, o.placed.len(), o.failed.len()),
            Ok(o) => (PassResult::Incomplete, o.placed.len(), o.failed.len()),
            Err(_) => (PassResult::Failed, 0, 0),
        };
        let trigger = trigger.kind();
        self.passes
            .get_or_create(&PassLabels { trigger, result })
            .inc();
        if result != PassResult::Failed {
            for (state, n) in [
                (AddressState::Assigned, assigned),
                (AddressState::Unassigned, unassigned),
            ] {
                let n = i64::try_from(n).unwrap_or(i64::MAX);
                self.addresses.get_or_create(&StateLabel { state }).set(n);
            }
        }
    }
}
