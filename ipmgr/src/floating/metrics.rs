//! The floating addresses' metrics, in the manager's registry (`ipmgmt_manager_*`):
//! whether this pod holds them, how often that changed and why, and how long a
//! take-over took from winning the Lease to each step.

use std::time::Duration;

use ipmgmt_common::label_values;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Why holding changed: the `to` label.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
enum Transition {
    /// Won the Lease, and the addresses are on the interfaces.
    Holding,
    /// The Lease was not renewed in time, or another replica took it.
    Lost,
    /// Given up on stopping.
    Released,
}

/// How far a take-over has got: the `stage` label.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Stage {
    /// The addresses are on this pod's interfaces.
    Interface,
    /// EC2 shows them on this node's ENI.
    Eni,
    /// The Elastic IP is associated with the address on this node's ENI.
    ElasticIp,
    /// Every route table's route points at this node's ENI.
    Routes,
}

label_values!(Transition {
    Holding => "holding",
    Lost => "lost",
    Released => "released",
});
label_values!(Stage {
    Interface => "interface",
    Eni => "eni",
    ElasticIp => "elastic_ip",
    Routes => "routes",
});

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TransitionLabel {
    to: Transition,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StageLabel {
    stage: Stage,
}

#[derive(Clone, Debug)]
pub struct Metrics {
    holding: Gauge,
    transitions: Family<TransitionLabel, Counter>,
    takeover: Family<StageLabel, Histogram, fn() -> Histogram>,
}

fn takeover_buckets() -> Histogram {
    Histogram::new([0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0])
}

impl Metrics {
    /// Makes the families, each registered as it is made.
    pub fn register(registry: &mut Registry) -> Metrics {
        let holding = Gauge::default();
        registry.register(
            "floating_holding",
            "1 while this pod holds its floating addresses (their Lease, and the addresses on its interfaces)",
            holding.clone(),
        );
        let transitions = Family::default();
        registry.register(
            "floating_transitions",
            "Changes of who holds the floating addresses, as this pod saw them: holding, lost (not renewed in time, or taken), released (on stopping)",
            transitions.clone(),
        );
        let takeover: Family<StageLabel, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(takeover_buckets);
        registry.register(
            "floating_takeover_seconds",
            "From winning the floating addresses' Lease to each step of the take-over: on the interface, on the ENI, the Elastic IP, the routes",
            takeover.clone(),
        );
        Metrics {
            holding,
            transitions,
            takeover,
        }
    }

    fn transition(&self, to: Transition) {
        self.transitions
            .get_or_create(&TransitionLabel { to })
            .inc();
        self.holding.set(i64::from(to == Transition::Holding));
    }

    /// Holding, `took` after winning the Lease.
    pub fn holding(&self, took: Duration) {
        self.transition(Transition::Holding);
        self.reached(Stage::Interface, took);
    }

    pub fn lost(&self) {
        self.transition(Transition::Lost);
    }

    pub fn released(&self) {
        self.transition(Transition::Released);
    }

    /// A take-over reached `stage`, `took` after winning the Lease.
    pub fn reached(&self, stage: Stage, took: Duration) {
        (self.takeover.get_or_create(&StageLabel { stage })).observe(took.as_secs_f64());
    }
}
