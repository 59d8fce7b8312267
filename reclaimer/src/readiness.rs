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
//! Opt-in (`--readiness-attach`), the loop attaches the missing ENI itself, so that
//! Karpenter's and managed node groups' nodes need no lifecycle hook: it creates one
//! in the subnet of the node's Availability Zone (tagged `no_manage`, the cluster tag
//! and `ipmgmt.aws/attached-for=INSTANCE/INDEX`, with DeleteOnTermination) or takes
//! an available one from a pool the user tagged `ipmgmt.aws/pool=NAME`; it never
//! touches an ENI without those tags. An ENI made by a try that failed before it was
//! attached is found by its tag and attached, not made again; one made for a node
//! that went before its attachment is deleted. Each attachment is an
//! Event on the node (`MultusEniAttached`); a failure is a Warning Event
//! (`MultusEniNotAttached`) with EC2's code, once per distinct failure.
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

use serde::Deserialize;

use crate::ec2::{Ec2, EniSource, MultusEni};
use crate::events::{Events, node_ref};
use crate::loops::{self, Loop, Trigger};
use crate::metrics::{AttachResult, Metrics, ReadinessResult};
use crate::view::{View, node_instance, node_zone};

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
    /// How to attach a missing ENI, by device index; none: only wait for one.
    pub attach: BTreeMap<i32, AttachSpec>,
}

/// How the controller attaches a node's missing Multus ENI at one device index
/// (`--readiness-attach`, the chart's `reclaimer.readiness.attach`).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AttachSpec {
    pub device_index: i32,
    /// The subnet to create the ENI in, by Availability Zone; with `pool`, where to
    /// take one from (optional).
    #[serde(default)]
    pub subnets: BTreeMap<String, String>,
    /// The created ENI's security groups; none: the VPC's default group.
    #[serde(default)]
    pub security_groups: Vec<String>,
    /// Take an available ENI tagged `ipmgmt.aws/pool=NAME` instead of creating one.
    #[serde(default)]
    pub pool: Option<String>,
}

impl AttachSpec {
    /// Where a node in `zone` gets its ENI from; `None` when this spec has no subnet
    /// for the zone and creates ENIs.
    pub fn source(&self, zone: Option<&str>) -> Option<EniSource> {
        let subnet = zone.and_then(|z| self.subnets.get(z)).cloned();
        match &self.pool {
            Some(name) => Some(EniSource::Pool {
                name: name.clone(),
                subnet,
                zone: zone.map(str::to_owned),
            }),
            None => Some(EniSource::Create {
                subnet: subnet?,
                security_groups: self.security_groups.clone(),
            }),
        }
    }
}

/// `--readiness-attach`'s JSON.
pub fn attach_spec(text: &str) -> Result<AttachSpec, String> {
    let spec: AttachSpec = serde_json::from_str(text).map_err(|e| format!("{text:?}: {e}"))?;
    if spec.device_index < 1 {
        return Err(format!(
            "deviceIndex {} is the node's own ENI's or none: Multus ENIs are at 1 or more",
            spec.device_index
        ));
    }
    if spec.pool.is_none() && spec.subnets.is_empty() {
        return Err(format!(
            "device index {}: give subnets (by Availability Zone) to create ENIs in, or a pool",
            spec.device_index
        ));
    }
    Ok(spec)
}

/// A node as the pass sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeState {
    pub name: String,
    /// From `spec.providerID`; a node without one cannot be judged.
    pub instance: Option<String>,
    /// Its Availability Zone: the `topology.kubernetes.io/zone` label, else
    /// `spec.providerID`'s.
    pub zone: Option<String>,
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
    /// The last attach failure said in an Event, by (instance, device index).
    failures: std::sync::Mutex<BTreeMap<(String, i32), String>>,
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
            failures: Default::default(),
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
                    zone: node_zone(n),
                    tainted: (n.spec.as_ref().and_then(|s| s.taints.as_ref()))
                        .is_some_and(|t| t.iter().any(|t| t.key == TAINT_KEY)),
                })
            })
            .collect();
        let instances: Vec<String> = nodes.iter().filter_map(|n| n.instance.clone()).collect();
        let mut enis = match self.ec2.multus_enis(&instances).await {
            Ok(enis) => enis,
            Err(e) => {
                self.metrics.readiness_pass(ReadinessResult::Failed);
                warn!("node readiness: {e}; no taint changes until a pass completes");
                return;
            }
        };
        if self.attach(&nodes, &enis).await {
            // What the attachments changed, before the taints are decided.
            match self.ec2.multus_enis(&instances).await {
                Ok(now) => enis = now,
                Err(e) => warn!("node readiness: {e}; deciding taints from before the attachments"),
            }
        }
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

    /// Attaches what each node misses where `--readiness-attach` says how; whether
    /// any ENI was attached. An ENI the controller attached whose attachment lacks
    /// DeleteOnTermination (setting it failed after the attachment) gets it here.
    async fn attach(&self, nodes: &[NodeState], enis: &[MultusEni]) -> bool {
        for eni in enis
            .iter()
            .filter(|e| e.attached_by_controller && !e.delete_on_termination)
        {
            if let Some(attachment) = &eni.attachment
                && let Err(e) = self.ec2.keep_with_instance(&eni.id, attachment).await
            {
                warn!(eni = %eni.id, "an ENI the controller attached would outlive its instance: {e}");
            }
        }
        // ENIs made for nodes that went before their attachment.
        if !self.settings.attach.is_empty() {
            let live: Vec<String> = self.view.instances().into_keys().collect();
            match self.ec2.delete_orphans(&live).await {
                Ok(deleted) => {
                    for eni in deleted {
                        info!(eni = %eni, "deleted an ENI made for an instance that is no node any more");
                    }
                }
                Err(e) => warn!("could not delete the ENIs made for nodes that are gone: {e}"),
            }
        }
        // What failed for nodes that are gone is forgotten.
        (self.failures.lock().expect("the failures' lock"))
            .retain(|(instance, _), _| nodes.iter().any(|n| n.instance.as_ref() == Some(instance)));
        let mut attached = false;
        for node in nodes {
            let Some(instance) = &node.instance else {
                continue;
            };
            for index in missing(instance, enis, &self.settings.device_indexes) {
                let Some(spec) = self.settings.attach.get(&index) else {
                    continue;
                };
                // What failed, said once while it fails the same way: keyed by what
                // failed and EC2's code, since EC2's message may carry a new encoded
                // blob each time.
                let (kind, reason, warning, note) = match spec.source(node.zone.as_deref()) {
                    None => {
                        self.metrics.readiness_attachment(AttachResult::Refused);
                        let zone = node.zone.as_deref().unwrap_or("(unknown)");
                        let note = format!(
                            "no subnet for zone {zone} at device index {index} in reclaimer.readiness.attach: \
                             add one, or attach and tag the ENI"
                        );
                        (note.clone(), "MultusEniNotAttached", true, note)
                    }
                    Some(source) => {
                        match self.ec2.attach_multus_eni(instance, index, &source).await {
                            Ok(eni) => {
                                attached = true;
                                self.metrics.readiness_attachment(AttachResult::Attached);
                                let from = match &source {
                                    EniSource::Create { subnet, .. } => {
                                        format!("created in {subnet}, deleted with the instance")
                                    }
                                    EniSource::Pool { name, .. } => format!("from pool {name}"),
                                };
                                let note =
                                    format!("attached {eni} ({from}) at device index {index}");
                                (String::new(), "MultusEniAttached", false, note)
                            }
                            Err(e) => {
                                self.metrics.readiness_attachment(AttachResult::Refused);
                                let kind = format!(
                                    "{} {}",
                                    e.action,
                                    e.code.as_deref().unwrap_or(&e.detail)
                                );
                                (kind, "MultusEniNotAttached", true, e.to_string())
                            }
                        }
                    }
                };
                let repeated = {
                    let mut failures = self.failures.lock().expect("the failures' lock");
                    let key = (instance.clone(), index);
                    match warning {
                        true => failures.insert(key, kind.clone()).as_ref() == Some(&kind),
                        false => {
                            failures.remove(&key);
                            false
                        }
                    }
                };
                match warning {
                    true => warn!(node = %node.name, "Multus ENI not attached: {note}"),
                    false => info!(node = %node.name, "{note}"),
                }
                if !repeated
                    && let Err(e) = (self.events)
                        .report(node_ref(&node.name), "Attach", reason, warning, note)
                        .await
                {
                    debug!(node = %node.name, error = %e, "could not write the Event");
                }
            }
        }
        attached
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
            attachment: None,
            delete_on_termination: false,
            attached_by_controller: false,
        }
    }

    fn node(name: &str, instance: Option<&str>, tainted: bool) -> NodeState {
        NodeState {
            name: name.into(),
            instance: instance.map(str::to_owned),
            zone: None,
            tainted,
        }
    }

    #[test]
    fn an_attach_spec_says_where_a_nodes_eni_comes_from() {
        let create = attach_spec(
            r#"{"deviceIndex":1,"subnets":{"us-west-2a":"subnet-a"},"securityGroups":["sg-1"]}"#,
        )
        .unwrap();
        assert_eq!(
            create.source(Some("us-west-2a")),
            Some(EniSource::Create {
                subnet: "subnet-a".into(),
                security_groups: vec!["sg-1".into()]
            })
        );
        // A zone it has no subnet for: nothing to create.
        assert_eq!(create.source(Some("us-west-2b")), None);
        assert_eq!(create.source(None), None);
        let pool = attach_spec(r#"{"deviceIndex":2,"pool":"upf"}"#).unwrap();
        assert_eq!(
            pool.source(Some("us-west-2b")),
            Some(EniSource::Pool {
                name: "upf".into(),
                subnet: None,
                zone: Some("us-west-2b".into())
            })
        );
        assert!(
            attach_spec(r#"{"deviceIndex":0,"pool":"x"}"#)
                .unwrap_err()
                .contains("own ENI")
        );
        assert!(
            attach_spec(r#"{"deviceIndex":1}"#)
                .unwrap_err()
                .contains("subnets")
        );
        assert!(
            attach_spec(r#"{"deviceIndex":1,"subnet":"x"}"#)
                .unwrap_err()
                .contains("unknown field")
        );
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
