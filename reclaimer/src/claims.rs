//! What the Kubernetes API says about a pod: whether it is live, which node it is on,
//! which addresses Multus gave it, and which NetworkAttachmentDefinitions it asked
//! for.
//!
//! A pod is live until its phase is Succeeded or Failed, or its deletion grace has
//! run out (`deletionTimestamp` is the end of the grace: until then kubelet may still
//! be stopping it, and its sidecar still releasing). A live pod claims the addresses
//! of its Multus `network-status` annotation on the node it runs on. A live pod that
//! asked for networks but has no status for them yet is "settling": its addresses
//! are unknown, so nothing on its node is released until it settles.

use std::collections::BTreeSet;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use serde::Deserialize;

/// The annotation the webhook keys on: a pod with it is ipmgr's.
pub const MODE_ANNOTATION: &str = "ipmgmt.aws/mode";
/// The networks a pod asks Multus for.
pub const NETWORKS_ANNOTATION: &str = "k8s.v1.cni.cncf.io/networks";
/// What Multus reports it attached.
pub const NETWORK_STATUS_ANNOTATION: &str = "k8s.v1.cni.cncf.io/network-status";

/// A NetworkAttachmentDefinition by namespace and name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NadRef {
    pub namespace: String,
    pub name: String,
}

impl std::fmt::Display for NadRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// What one pod contributes to a sweep.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodClaim {
    pub node: String,
    pub addresses: BTreeSet<IpAddr>,
    /// The pod asked for networks that Multus has not reported yet.
    pub settling: bool,
}

/// The pod's claim, or `None` when it claims nothing: not live, or not on a node.
pub fn claim_of(pod: &Pod, now: Timestamp) -> Option<PodClaim> {
    if !is_live(pod, now) {
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

pub fn is_live(pod: &Pod, now: Timestamp) -> bool {
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    if matches!(phase, Some("Succeeded" | "Failed")) {
        return false;
    }
    match &pod.metadata.deletion_timestamp {
        Some(end_of_grace) => now < end_of_grace.0,
        None => true,
    }
}

/// The NADs an ipmgmt pod asks for; none for a pod without the mode annotation.
pub fn nads_of(pod: &Pod) -> Vec<NadRef> {
    let Some(annotations) = pod.metadata.annotations.as_ref() else {
        return Vec::new();
    };
    if !annotations.contains_key(MODE_ANNOTATION) {
        return Vec::new();
    }
    let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
    annotations
        .get(NETWORKS_ANNOTATION)
        .map(|a| networks(a, namespace))
        .unwrap_or_default()
}

/// One network of `network-status`.
#[derive(Debug, PartialEq, Eq)]
struct Status {
    default: bool,
    addresses: Vec<IpAddr>,
}

#[derive(Deserialize)]
struct RawStatus {
    #[serde(default)]
    default: bool,
    #[serde(default)]
    ips: Vec<String>,
}

/// A malformed annotation reads as no status: the pod then counts as settling if it
/// asked for networks, which holds its node back rather than releasing around it.
fn network_status(text: &str) -> Vec<Status> {
    let raw: Vec<RawStatus> = serde_json::from_str(text).unwrap_or_default();
    raw.into_iter()
        .map(|r| Status {
            default: r.default,
            addresses: r
                .ips
                .iter()
                .filter_map(|ip| ip.split('/').next()?.parse().ok())
                .collect(),
        })
        .collect()
}

#[derive(Deserialize)]
struct Selection {
    name: String,
    namespace: Option<String>,
}

/// `k8s.v1.cni.cncf.io/networks`: a JSON list of selections, or the short form
/// `name`, `ns/name`, `ns/name@ifname`, comma-separated.
fn networks(text: &str, pod_namespace: &str) -> Vec<NadRef> {
    let text = text.trim();
    if text.starts_with('[') {
        let list: Vec<Selection> = serde_json::from_str(text).unwrap_or_default();
        return list
            .into_iter()
            .map(|s| NadRef {
                namespace: s.namespace.unwrap_or_else(|| pod_namespace.to_owned()),
                name: s.name,
            })
            .collect();
    }
    text.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|item| {
            let item = item.split('@').next().unwrap_or(item);
            match item.split_once('/') {
                Some((ns, name)) => NadRef {
                    namespace: ns.to_owned(),
                    name: name.to_owned(),
                },
                None => NadRef {
                    namespace: pod_namespace.to_owned(),
                    name: item.to_owned(),
                },
            }
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

    fn now() -> Timestamp {
        "2026-12-02T10:00:00Z".parse().unwrap()
    }

    #[test]
    fn a_running_pod_claims_its_multus_addresses_on_its_node() {
        let claim = claim_of(&pod(json!({})), now()).unwrap();
        assert_eq!(claim.node, "node-1");
        assert!(!claim.settling);
        let ips: Vec<String> = claim.addresses.iter().map(ToString::to_string).collect();
        assert_eq!(
            ips,
            ["10.0.1.5", "10.0.4.66", "10.0.5.66", "2001:db8:0:5::100"]
        );
    }

    #[test]
    fn finished_pods_and_pods_past_their_grace_claim_nothing() {
        assert_eq!(
            claim_of(&pod(json!({"status": {"phase": "Succeeded"}})), now()),
            None
        );
        assert_eq!(
            claim_of(&pod(json!({"status": {"phase": "Failed"}})), now()),
            None
        );
        let stopping = pod(json!({"metadata": {"deletionTimestamp": "2026-12-02T10:00:20Z"}}));
        assert!(
            claim_of(&stopping, now()).is_some(),
            "inside its grace it still claims"
        );
        let past = pod(json!({"metadata": {"deletionTimestamp": "2026-12-02T09:59:00Z"}}));
        assert_eq!(claim_of(&past, now()), None);
        assert_eq!(
            claim_of(&pod(json!({"spec": {"nodeName": null}})), now()),
            None
        );
    }

    #[test]
    fn a_pod_without_network_status_yet_is_settling() {
        let p = pod(json!({"metadata": {"annotations": {
            "k8s.v1.cni.cncf.io/network-status": r#"[{"name":"aws-cni","ips":["10.0.1.5"],"default":true}]"#}}}));
        assert!(claim_of(&p, now()).unwrap().settling);
        let garbled = pod(json!({"metadata": {"annotations": {
            "k8s.v1.cni.cncf.io/network-status": "{"}}}));
        assert!(claim_of(&garbled, now()).unwrap().settling);
    }

    #[test]
    fn networks_in_both_spellings() {
        let refs = nads_of(&pod(json!({})));
        let names: Vec<String> = refs.iter().map(ToString::to_string).collect();
        assert_eq!(names, ["multus-demo/ipvlan-net1", "other/ipvlan-net2"]);
        let p = pod(json!({"metadata": {"annotations": {
            "k8s.v1.cni.cncf.io/networks": r#"[{"name":"a","interface":"net1"},{"name":"b","namespace":"x"}]"#}}}));
        let names: Vec<String> = nads_of(&p).iter().map(ToString::to_string).collect();
        assert_eq!(names, ["multus-demo/a", "x/b"]);
        let mut unmanaged = pod(json!({}));
        if let Some(a) = unmanaged.metadata.annotations.as_mut() {
            a.remove(MODE_ANNOTATION);
        }
        assert!(nads_of(&unmanaged).is_empty());
    }
}
