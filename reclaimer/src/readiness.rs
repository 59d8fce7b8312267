//! Node readiness for Multus ENIs: a node that should carry Multus ENIs (its labels
//! match `--readiness-node-label`) keeps the `NoSchedule` taint
//! `ipmgmt.aws/multus-eni-missing` while any expected device index has no Multus ENI
//! (attached, tagged `no_manage`, and carrying the cluster tag when one is set), and
//! loses it once every one has; each change is an Event on the node. A node whose ENI
//! is detached later gets the taint back.
//!
//! A pod scheduled before the first pass has nothing to stop it, so nodes should
//! register with the taint (Karpenter's `startupTaints`, a node group's taints) and
//! leave it to this loop to remove. Pods that tolerate every taint (DaemonSets such as
//! Multus's) run regardless.
//!
//! While this replica leads, a pass runs when a node is seen for the first time and
//! every `--readiness-interval` (attachments change in EC2, where nothing announces
//! them): one filtered describe for up to 200 nodes. A failed describe changes no
//! taint. The taints are written with a merge patch that carries the node's
//! resourceVersion, so a concurrent change to the node's taints is never overwritten.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Taint};
use kube::Api;
use kube::api::{Patch, PatchParams};
use kube::core::{Selector, SelectorExt};
use serde_json::json;
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::ec2::{Ec2, MultusEni};
use crate::events::{Events, node_ref};
use crate::loops::{self, Loop, Trigger};
use crate::metrics::{Metrics, ReadinessResult};
use crate::view::{View, node_instance};

pub const TAINT_KEY: &str = "ipmgmt.aws/multus-eni-missing";
pub const TAINT_EFFECT: &str = "NoSchedule";

#[derive(Clone, Debug)]
pub struct Settings {
    /// Labels (all of them) of the nodes that should carry Multus ENIs.
    pub labels: BTreeMap<String, String>,
    /// The device indexes at which each of them should have one.
    pub device_indexes: BTreeSet<i32>,
    pub interval: Duration,
    /// The tag the ENIs must carry besides `no_manage`, for the Event's wording.
    pub cluster_tag: Option<String>,
}

/// A node as the pass sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeState {
    pub name: String,
    /// From `spec.providerID`; a node without one cannot be judged.
    pub instance: Option<String>,
    pub tainted: bool,
}

/// What a pass does to one node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    Taint { node: String, missing: Vec<i32> },
    Untaint { node: String },
}

impl Change {
    pub fn node(&self) -> &str {
        match self {
            Change::Taint { node, .. } | Change::Untaint { node } => node,
        }
    }
}

/// The device indexes of `expected` with no Multus ENI of `instance` among `enis`.
pub fn missing(instance: &str, enis: &[MultusEni], expected: &BTreeSet<i32>) -> Vec<i32> {
    (expected.iter())
        .filter(|i| {
            !enis
                .iter()
                .any(|e| e.instance == instance && e.device_index == **i)
        })
        .copied()
        .collect()
}

/// The taints to add and remove, from the nodes in scope and their ENIs now.
pub fn plan(nodes: &[NodeState], enis: &[MultusEni], expected: &BTreeSet<i32>) -> Vec<Change> {
    let mut changes = Vec::new();
    for node in nodes {
        let Some(instance) = &node.instance else {
            continue;
        };
        let missing = missing(instance, enis, expected);
        match (missing.is_empty(), node.tainted) {
            (false, false) => changes.push(Change::Taint {
                node: node.name.clone(),
                missing,
            }),
            (true, true) => changes.push(Change::Untaint {
                node: node.name.clone(),
            }),
            _ => {}
        }
    }
    changes
}

pub struct Readiness<E> {
    ec2: E,
    view: View,
    nodes: Api<Node>,
    events: Events,
    metrics: Metrics,
    settings: Settings,
    selector: Selector,
}

impl<E: Ec2> Readiness<E> {
    pub fn new(
        ec2: E,
        view: View,
        client: kube::Client,
        events: Events,
        metrics: Metrics,
        settings: Settings,
    ) -> Self {
        let selector = settings.labels.clone().into_iter().collect();
        Readiness {
            ec2,
            view,
            nodes: Api::all(client),
            events,
            metrics,
            settings,
            selector,
        }
    }

    /// Runs passes while `leading` says this replica leads: for each node seen for
    /// the first time and every interval; returns when the election ends.
    pub async fn run(self, leading: watch::Receiver<bool>) {
        let view = self.view.clone();
        let trigger = Trigger {
            changed: || view.node_added(),
            settle: Duration::ZERO,
        };
        let interval = self.settings.interval;
        loops::while_leading(self, leading, interval, trigger).await;
    }

    /// One pass over the nodes in scope.
    pub async fn pass(&self) {
        let nodes: Vec<NodeState> = (self.view.nodes().iter())
            .filter(|n| {
                let labels = n.metadata.labels.clone().unwrap_or_default();
                self.selector.matches(&labels)
            })
            .filter_map(|n| {
                Some(NodeState {
                    name: n.metadata.name.clone()?,
                    instance: node_instance(n).map(str::to_owned),
                    tainted: (n.spec.as_ref().and_then(|s| s.taints.as_ref()))
                        .is_some_and(|t| t.iter().any(|t| t.key == TAINT_KEY)),
                })
            })
            .collect();
        let instances: Vec<String> = nodes.iter().filter_map(|n| n.instance.clone()).collect();
        let enis = match self.ec2.multus_enis(&instances).await {
            Ok(enis) => enis,
            Err(e) => {
                self.metrics.readiness_pass(ReadinessResult::Failed);
                warn!("node readiness: {e}; no taint changes until a pass completes");
                return;
            }
        };
        let changes = plan(&nodes, &enis, &self.settings.device_indexes);
        let mut failed = false;
        for change in &changes {
            if let Err(e) = self.apply(change).await {
                failed = true;
                warn!(node = %change.node(), error = %e, "could not change the node's taints; the next pass tries again");
            }
        }
        // Tainted after the pass, as planned: those that were, plus added, less removed.
        let added = (changes.iter())
            .filter(|c| matches!(c, Change::Taint { .. }))
            .count();
        let tainted = nodes.iter().filter(|n| n.tainted).count() + added - (changes.len() - added);
        self.metrics.nodes_missing_enis(tainted);
        self.metrics.readiness_pass(if failed {
            ReadinessResult::Failed
        } else {
            ReadinessResult::Complete
        });
    }

    async fn apply(&self, change: &Change) -> Result<(), kube::Error> {
        let name = change.node();
        let taint = matches!(change, Change::Taint { .. });
        // Read the node's taints as the API server has them now, not the watch's copy.
        let node = self.nodes.get(name).await?;
        let version = node.metadata.resource_version.clone();
        let mut taints: Vec<Taint> = node.spec.and_then(|s| s.taints).unwrap_or_default();
        let had = taints.iter().any(|t| t.key == TAINT_KEY);
        if had == taint {
            return Ok(());
        }
        taints.retain(|t| t.key != TAINT_KEY);
        if taint {
            taints.push(Taint {
                key: TAINT_KEY.into(),
                effect: TAINT_EFFECT.into(),
                ..Taint::default()
            });
        }
        // A merge patch that names the resourceVersion is refused (409) if the node
        // changed since it was read: the taint list is replaced whole, so another
        // writer's change is never lost, only retried at the next pass.
        let patch = json!({
            "metadata": {"resourceVersion": version},
            "spec": {"taints": taints},
        });
        self.nodes
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        let (reason, warning, note) = match change {
            Change::Taint { missing, .. } => {
                let indexes: Vec<String> = missing.iter().map(ToString::to_string).collect();
                let tags = match &self.settings.cluster_tag {
                    Some(tag) => format!("node.k8s.amazonaws.com/no_manage=true and {tag}"),
                    None => "node.k8s.amazonaws.com/no_manage=true".to_owned(),
                };
                let note = format!(
                    "no Multus ENI at device index {} (attached to the node's instance and tagged {tags}): \
                     tainted {TAINT_KEY}:{TAINT_EFFECT} until there is; attach and tag the ENI",
                    indexes.join(", ")
                );
                ("MultusEniMissing", true, note)
            }
            Change::Untaint { .. } => {
                let note = format!(
                    "every expected Multus ENI is attached and tagged: taint {TAINT_KEY} removed"
                );
                ("MultusEnisReady", false, note)
            }
        };
        info!(node = %name, reason, "{note}");
        if let Err(e) = (self.events)
            .report(node_ref(name), "Taint", reason, warning, note)
            .await
        {
            debug!(node = %name, error = %e, "could not write the Event");
        }
        Ok(())
    }
}

impl<E: Ec2> Loop for Readiness<E> {
    async fn pass(&mut self) {
        Readiness::pass(self).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eni(instance: &str, index: i32) -> MultusEni {
        MultusEni {
            id: format!("eni-{instance}-{index}"),
            mac: String::new(),
            instance: instance.into(),
            device_index: index,
            subnet: "subnet-a".into(),
            own: Vec::new(),
            ipv4: Vec::new(),
            ipv6: Vec::new(),
        }
    }

    fn node(name: &str, instance: Option<&str>, tainted: bool) -> NodeState {
        NodeState {
            name: name.into(),
            instance: instance.map(str::to_owned),
            tainted,
        }
    }

    #[test]
    fn a_node_is_tainted_while_an_expected_index_has_no_eni_and_untainted_after() {
        let expected = BTreeSet::from([1, 2]);
        let enis = [eni("i-1", 1), eni("i-1", 2), eni("i-2", 1), eni("i-3", 2)];
        let nodes = [
            node("ready", Some("i-1"), false),
            node("half", Some("i-2"), false),
            node("fixed", Some("i-1"), true),
            node("still-half", Some("i-3"), true),
            node("no-provider-id", None, false),
        ];
        assert_eq!(
            plan(&nodes, &enis, &expected),
            [
                Change::Taint {
                    node: "half".into(),
                    missing: vec![2]
                },
                Change::Untaint {
                    node: "fixed".into()
                },
            ]
        );
        // An ENI of another instance at the index does not count.
        assert_eq!(missing("i-4", &enis, &expected), [1, 2]);
    }
}
