//! What EKS does with a patched pod, and what the fakes elsewhere do not model:
//!
//! - `qos`: Kubernetes' QoS class (ported from pkg/apis/core/helper/qos,
//!   ComputePodQOS).
//! - `pod_identity`: the EKS pod-identity webhook running after this one (ported from
//!   amazon-eks-pod-identity-webhook pkg/handler/handler.go).

#[path = "../common/mod.rs"]
mod common;
mod pod_identity;
mod qos;

use ipmgmt_webhook::config::from_flags;
use ipmgmt_webhook::inject::{Decision, Injector, Pod};
use serde_json::{Value, json};

/// The webhook with the fixtures' flags and these.
fn injector(flags: &[&str]) -> Injector {
    let flags: Vec<String> = flags.iter().map(|&f| f.to_owned()).collect();
    Injector::new(from_flags(common::flags_with(&flags)).unwrap())
}

fn decide(injector: &Injector, pod: &Value) -> Decision {
    let text = pod.to_string();
    injector.decide(&serde_json::from_str::<Pod>(&text).unwrap())
}

/// The pod after the webhook, and the warnings it answered with.
fn patched(injector: &Injector, pod: &Value) -> (Value, Vec<String>) {
    let Decision::Inject {
        patch, warnings, ..
    } = decide(injector, pod)
    else {
        panic!("expected an injection of {pod}")
    };
    let ops: json_patch::Patch = serde_json::from_slice(&patch.to_bytes()).unwrap();
    let mut doc = pod.clone();
    json_patch::patch(&mut doc, &ops).unwrap();
    (doc, warnings)
}

fn pod(mode: &str, containers: Value, init_containers: Option<Value>) -> Value {
    let mut pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "upf-0", "namespace": "core5g", "annotations": {
            "ipmgmt.aws/mode": mode, "k8s.v1.cni.cncf.io/networks": "ipvlan-n3"}},
        "spec": {"containers": containers},
    });
    if let Some(init) = init_containers {
        pod["spec"]["initContainers"] = init;
    }
    pod
}

fn exact(cpu: &str, memory: &str) -> Value {
    json!({"requests": {"cpu": cpu, "memory": memory}, "limits": {"cpu": cpu, "memory": memory}})
}
