//! What the Kubernetes API says about a pod: whether it is live, which node it is on,
//! which addresses Multus gave it, and which of them IPAM handed out.
//!
//! A pod is live while its object exists and its phase is not Succeeded or Failed.
//! A `deletionTimestamp` in the past does not end it: on a node that stopped
//! answering, the pod may still run and use its addresses until the node comes back
//! or its object is deleted (a force delete). A live pod claims the addresses of its
//! Multus `network-status` annotation on the node it runs on. A live pod that asked
//! for networks but has no status for them yet is "settling": its addresses are
//! unknown, so nothing on its node is released until it settles.
//!
//! The secondary networks of an ipmgmt pod's `network-status` are the evidence that
//! IPAM handed an address out (`handed_out`): the reclaimer releases nothing else. A
//! floating IP that HA software adds to an interface is never in it.

use std::collections::BTreeSet;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::Pod;
use serde::Deserialize;

/// The annotation the webhook keys on: a pod with it is ipmgr's.
pub const MODE_ANNOTATION: &str = ipmgmt_common::annotations::MODE;
/// The networks a pod asks Multus for.
pub const NETWORKS_ANNOTATION: &str = ipmgmt_common::annotations::MULTUS_NETWORKS;
/// What Multus reports it attached.
pub const NETWORK_STATUS_ANNOTATION: &str = ipmgmt_common::annotations::MULTUS_NETWORK_STATUS;

/// What one pod contributes to a sweep.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodClaim {
    pub node: String,
    pub addresses: BTreeSet<IpAddr>,
    /// The pod asked for networks that Multus has not reported yet.
    pub settling: bool,
}

/// Why the reclaimer believes IPAM handed an address out.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Evidence {
    /// `namespace/name` of the pod it was handed to.
    pub pod: String,
    /// Where it was seen: the pod's `network-status` (the network's name), or an
    /// IPAM's own allocation record.
    pub seen_in: String,
}

impl std::fmt::Display for Evidence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "handed out to {} ({})", self.pod, self.seen_in)
    }
}

/// The pod's claim, or `None` when it claims nothing: not live, or not on a node.
pub fn claim_of(pod: &Pod) -> Option<PodClaim> {
    if !is_live(pod) {
        return None;
    }
    let node = pod.spec.as_ref()?.node_name.clone()?;
    let annotations = pod.metadata.annotations.as_ref();
    let status = annotations
        .and_then(|a| a.get(NETWORK_STATUS_ANNOTATION))
        .map(|s| network_status(s))
        .unwrap_or_default();
    let asked = annotations
        .and_then(|a| a.get(NETWORKS_ANNOTATION))
        .map(|s| !s.trim().is_empty())
        .unwrap_or(false);
    let reported = status.iter().filter(|s| !s.default).count();
    Some(PodClaim {
        node,
        settling: asked && reported == 0,
        addresses: status.into_iter().flat_map(|s| s.addresses).collect(),
    })
}

/// Live until the phase is terminal; the object's deletion ends it (the pod is then
/// no longer listed), not its `deletionTimestamp`.
pub fn is_live(pod: &Pod) -> bool {
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    !matches!(phase, Some("Succeeded" | "Failed"))
}

/// Whether the pod asked for the IP manager.
pub fn is_ipmgmt(pod: &Pod) -> bool {
    (pod.metadata.annotations.as_ref()).is_some_and(|a| a.contains_key(MODE_ANNOTATION))
}

/// The addresses IPAM handed to an ipmgmt pod, by its `network-status`: those of its
/// secondary networks. None for a pod without the mode annotation.
pub fn handed_out(pod: &Pod) -> Vec<(IpAddr, Evidence)> {
    if !is_ipmgmt(pod) {
        return Vec::new();
    }
    let Some(status) = (pod.metadata.annotations.as_ref())
        .and_then(|a| a.get(NETWORK_STATUS_ANNOTATION))
        .map(|s| network_status(s))
    else {
        return Vec::new();
    };
    let pod = format!(
        "{}/{}",
        pod.metadata.namespace.as_deref().unwrap_or("default"),
        pod.metadata.name.as_deref().unwrap_or("")
    );
    status
        .into_iter()
        .filter(|s| !s.default)
        .flat_map(|s| {
            let seen_in = format!("network-status of network {}", s.name);
            let pod = pod.clone();
            s.addresses.into_iter().map(move |ip| {
                let evidence = Evidence {
                    pod: pod.clone(),
                    seen_in: seen_in.clone(),
                };
                (ip, evidence)
            })
        })
        .collect()
}

/// One network of `network-status`.
#[derive(Debug, PartialEq, Eq)]
pub struct Status {
    pub name: String,
    pub default: bool,
    /// The pod's interface, and its MAC (lower case; an ipvlan slave's is its master's).
    pub interface: String,
    pub mac: String,
    pub addresses: Vec<IpAddr>,
}

#[derive(Deserialize)]
struct RawStatus {
    #[serde(default)]
    name: String,
    #[serde(default)]
    default: bool,
    #[serde(default)]
    interface: String,
    #[serde(default)]
    mac: String,
    #[serde(default)]
    ips: Vec<String>,
}

/// A malformed annotation reads as no status: the pod then counts as settling if it
/// asked for networks, which holds its node back rather than releasing around it.
pub fn network_status(text: &str) -> Vec<Status> {
    let raw: Vec<RawStatus> = serde_json::from_str(text).unwrap_or_default();
    raw.into_iter()
        .map(|r| Status {
            name: r.name,
            default: r.default,
            interface: r.interface,
            mac: r.mac.to_ascii_lowercase(),
            addresses: r
                .ips
                .iter()
                .filter_map(|ip| ip.split('/').next()?.parse().ok())
                .collect(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(extra: serde_json::Value) -> Pod {
        let mut base = json!({
            "metadata": {"name": "app-1", "namespace": "multus-demo", "annotations": {
                "ipmgmt.aws/mode": "init",
                "k8s.v1.cni.cncf.io/networks": "ipvlan-net1, other/ipvlan-net2@net2",
                "k8s.v1.cni.cncf.io/network-status": r#"[
                    {"name":"aws-cni","interface":"eth0","ips":["10.0.1.5"],"default":true},
                    {"name":"multus-demo/ipvlan-net1","interface":"net1","ips":["10.0.4.66"]},
                    {"name":"other/ipvlan-net2","interface":"net2","ips":["10.0.5.66","2001:db8:0:5::100"]}]"#,
            }},
            "spec": {"nodeName": "node-1", "containers": []},
            "status": {"phase": "Running"},
        });
        json_patch_merge(&mut base, extra);
        serde_json::from_value(base).unwrap()
    }

    fn json_patch_merge(base: &mut serde_json::Value, extra: serde_json::Value) {
        match (base, extra) {
            (serde_json::Value::Object(b), serde_json::Value::Object(e)) => {
                for (k, v) in e {
                    json_patch_merge(b.entry(k).or_insert(serde_json::Value::Null), v);
                }
            }
            (b, e) => *b = e,
        }
    }

    #[test]
    fn a_running_pod_claims_its_multus_addresses_on_its_node() {
        let claim = claim_of(&pod(json!({}))).unwrap();
        assert_eq!(claim.node, "node-1");
        assert!(!claim.settling);
        let ips: Vec<String> = claim.addresses.iter().map(ToString::to_string).collect();
        assert_eq!(
            ips,
            ["10.0.1.5", "10.0.4.66", "10.0.5.66", "2001:db8:0:5::100"]
        );
    }

    #[test]
    fn finished_pods_claim_nothing_and_a_pod_past_its_deletion_time_still_claims() {
        assert_eq!(
            claim_of(&pod(json!({"status": {"phase": "Succeeded"}}))),
            None
        );
        assert_eq!(claim_of(&pod(json!({"status": {"phase": "Failed"}}))), None);
        // A node that stopped answering: kubelet never confirms the stop, the pod may
        // still run there, and its object stays until it is force-deleted.
        let past = pod(json!({"metadata": {"deletionTimestamp": "2026-12-02T09:59:00Z"}}));
        assert!(claim_of(&past).is_some());
        let unknown = pod(json!({"status": {"phase": "Unknown"}}));
        assert!(claim_of(&unknown).is_some());
        assert_eq!(claim_of(&pod(json!({"spec": {"nodeName": null}}))), None);
    }

    #[test]
    fn a_pod_without_network_status_yet_is_settling() {
        let p = pod(json!({"metadata": {"annotations": {
            "k8s.v1.cni.cncf.io/network-status": r#"[{"name":"aws-cni","ips":["10.0.1.5"],"default":true}]"#}}}));
        assert!(claim_of(&p).unwrap().settling);
        let garbled = pod(json!({"metadata": {"annotations": {
            "k8s.v1.cni.cncf.io/network-status": "{"}}}));
        assert!(claim_of(&garbled).unwrap().settling);
    }

    #[test]
    fn ipam_evidence_is_the_secondary_networks_of_ipmgmt_pods_only() {
        let seen = handed_out(&pod(json!({})));
        let ips: Vec<String> = seen.iter().map(|(ip, _)| ip.to_string()).collect();
        assert_eq!(ips, ["10.0.4.66", "10.0.5.66", "2001:db8:0:5::100"]);
        assert_eq!(seen[0].1.pod, "multus-demo/app-1");
        assert!(seen[0].1.seen_in.contains("multus-demo/ipvlan-net1"));
        let mut unmanaged = pod(json!({}));
        if let Some(a) = unmanaged.metadata.annotations.as_mut() {
            a.remove(MODE_ANNOTATION);
        }
        assert!(handed_out(&unmanaged).is_empty());
    }
}
