//! `Injector::decide` on whole pods, configured by the webhook's own flags; the patch
//! is applied with the independent `json-patch` crate and the result inspected.
//!
//! - `forms`: each mode in each form (init, native and classic sidecar).
//! - `annotations`: the per-pod annotations, and the pre-rendered shortcut they bypass.
//! - `resources`: the manager's resources and the Guaranteed QoS rule.
//! - `denials`: pods that are denied or warned about.
//! - `reinvocation`: pods that already have the manager.
//! - `floating`: floating addresses, Elastic IPs and route tables.

mod annotations;
mod denials;
mod floating;
mod forms;
mod reinvocation;
mod resources;

use serde_json::{Value, json};

pub(super) use super::request::{
    ALLOW_REASSIGNMENT_ANNOTATION, INTERFACES_ANNOTATION, MODE_ANNOTATION, NETWORKS_ANNOTATION,
    ROLE_ARN_ANNOTATION,
};
pub(super) use super::resources::RESOURCES_ANNOTATION;
pub(super) use super::*;

fn decide(pod: &Value, cfg: &Config) -> Decision {
    let text = pod.to_string();
    let view: Pod = serde_json::from_str(&text).expect("test pod parses");
    Injector::new(cfg.clone()).decide(&view)
}

fn annotated(mode: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "p", "annotations": {
            MODE_ANNOTATION: mode, NETWORKS_ANNOTATION: "ipvlan-net1"}},
        "spec": {"containers": [{"name": "app", "image": "app:1"}]},
    })
}

fn guaranteed(mode: &str) -> Value {
    let mut pod = annotated(mode);
    pod["spec"]["containers"][0]["resources"] = json!({"requests": {"cpu": "2", "memory": "4Gi"}, "limits": {"cpu": "2000m", "memory": "4Gi"}});
    pod
}

fn with_annotation(mut pod: Value, key: &str, value: &str) -> Value {
    pod["metadata"]["annotations"][key] = json!(value);
    pod
}

/// The configuration the webhook runs with given these flags besides `--image`.
fn cfg_with(flags: &[&str]) -> Config {
    let all = ["--image", "ipmgr:test"].iter().chain(flags);
    crate::config::from_flags(all).expect("test flags are valid")
}

fn cfg() -> Config {
    cfg_with(&[])
}

fn classic() -> Config {
    cfg_with(&["--classic-sidecar"])
}

fn applied(pod: &Value, cfg: &Config) -> Value {
    let patch = match decide(pod, cfg) {
        Decision::Inject { patch, .. } | Decision::Reorder { patch } => patch,
        other => panic!("expected a patch, got {other:?}"),
    };
    let ops: json_patch::Patch = serde_json::from_slice(&patch.to_bytes()).unwrap();
    let mut doc = pod.clone();
    json_patch::patch(&mut doc, &ops).expect("patch applies");
    doc
}

/// The injected container, wherever the configuration puts it.
fn manager(doc: &Value) -> &Value {
    let all = doc["spec"]["initContainers"]
        .as_array()
        .into_iter()
        .flatten();
    all.chain(doc["spec"]["containers"].as_array().into_iter().flatten())
        .find(|c| c["name"] == "aws-ip-mgmt")
        .expect("the manager is in the pod")
}

fn env<'a>(container: &'a Value, name: &str) -> Option<&'a str> {
    let list = container["env"].as_array()?;
    let mut found = list.iter().filter(|e| e["name"] == name);
    let first = found.next()?;
    assert!(found.next().is_none(), "{name} set twice");
    first["value"].as_str()
}
