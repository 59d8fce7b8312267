//! Kubernetes' QoS class, and what the manager does to it.

use ipmgmt_webhook::inject::{Decision, Injector, Quantity};
use serde_json::{Value, json};

use super::{common, decide, exact, injector, patched, pod};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Qos {
    Guaranteed,
    Burstable,
    BestEffort,
}

/// ComputePodQOS without pod-level resources: requests and limits summed over every
/// container and init container, zero quantities left out.
fn pod_qos(pod: &Value) -> Qos {
    use std::collections::BTreeMap;
    let mut requests: BTreeMap<&str, i128> = BTreeMap::new();
    let mut limits: BTreeMap<&str, i128> = BTreeMap::new();
    let mut is_guaranteed = true;
    let all = ["containers", "initContainers"]
        .into_iter()
        .flat_map(|list| pod["spec"][list].as_array().into_iter().flatten());
    let nanos = |q: &Value| {
        let text = q.as_str().expect("quantities are strings");
        Quantity::parse(text).unwrap().nanos()
    };
    for container in all {
        for (name, quantity) in container["resources"]["requests"]
            .as_object()
            .into_iter()
            .flatten()
        {
            if !matches!(name.as_str(), "cpu" | "memory") {
                continue;
            }
            let v = nanos(quantity);
            if v > 0 {
                *requests.entry(name).or_default() += v;
            }
        }
        let mut qos_limits_found = Vec::new();
        for (name, quantity) in container["resources"]["limits"]
            .as_object()
            .into_iter()
            .flatten()
        {
            if !matches!(name.as_str(), "cpu" | "memory") {
                continue;
            }
            let v = nanos(quantity);
            if v > 0 {
                qos_limits_found.push(name.as_str());
                *limits.entry(name).or_default() += v;
            }
        }
        if !(qos_limits_found.contains(&"cpu") && qos_limits_found.contains(&"memory")) {
            is_guaranteed = false;
        }
    }
    if requests.is_empty() && limits.is_empty() {
        return Qos::BestEffort;
    }
    if is_guaranteed {
        for (name, req) in &requests {
            if limits.get(name) != Some(req) {
                is_guaranteed = false;
                break;
            }
        }
    }
    if is_guaranteed && requests.len() == limits.len() {
        return Qos::Guaranteed;
    }
    Qos::Burstable
}

#[test]
fn the_qos_port_classifies_as_kubernetes_does() {
    let app = |resources: Value| json!([{"name": "app", "resources": resources}]);
    assert_eq!(
        pod_qos(&pod("init", app(exact("2", "4Gi")), None)),
        Qos::Guaranteed
    );
    // Limits only: the apiserver has already set the requests to them.
    let limits_only = json!({"requests": {"cpu": "2", "memory": "4Gi"}, "limits": {"cpu": "2000m", "memory": "4096Mi"}});
    assert_eq!(
        pod_qos(&pod("init", app(limits_only), None)),
        Qos::Guaranteed
    );
    assert_eq!(
        pod_qos(&pod(
            "init",
            app(
                json!({"requests": {"cpu": "1", "memory": "4Gi"}, "limits": {"cpu": "2", "memory": "4Gi"}})
            ),
            None
        )),
        Qos::Burstable
    );
    assert_eq!(
        pod_qos(&pod(
            "init",
            app(exact("2", "4Gi")),
            Some(json!([{"name": "setup"}]))
        )),
        Qos::Burstable
    );
    assert_eq!(pod_qos(&pod("init", app(json!({})), None)), Qos::BestEffort);
}

#[test]
fn guaranteed_pods_stay_guaranteed_in_every_mode() {
    let containers = json!([{"name": "app", "resources": exact("2", "4Gi")}]);
    // Equal by value, written differently.
    let init = json!([{"name": "setup", "resources": {
        "requests": {"cpu": "0.5", "memory": "268435456"}, "limits": {"cpu": "500m", "memory": "256Mi"}}}]);
    for (mode, classic) in [("init", false), ("sidecar", false), ("sidecar", true)] {
        let flags: &[&str] = if classic { &["--classic-sidecar"] } else { &[] };
        let injector = injector(flags);
        for p in [
            pod(mode, containers.clone(), None),
            pod(mode, containers.clone(), Some(init.clone())),
        ] {
            assert_eq!(pod_qos(&p), Qos::Guaranteed);
            let (after, warnings) = patched(&injector, &p);
            assert_eq!(pod_qos(&after), Qos::Guaranteed, "{mode} classic={classic}");
            assert!(warnings.is_empty(), "{warnings:?}");
        }
    }
    // With no limit configured, the request is both.
    let injector = injector(&["--cpu-limit=", "--memory-limit="]);
    let (after, _) = patched(&injector, &pod("sidecar", containers, None));
    assert_eq!(pod_qos(&after), Qos::Guaranteed);
}

#[test]
fn burstable_stays_burstable_and_best_effort_becomes_burstable() {
    let injector = injector(&[]);
    let burstable = pod(
        "init",
        json!([{"name": "app", "resources": {"requests": {"cpu": "1", "memory": "1Gi"}}}]),
        None,
    );
    let (after, _) = patched(&injector, &burstable);
    assert_eq!(pod_qos(&after), Qos::Burstable);
    // Expected: the manager has requests, so a pod with none at all cannot stay
    // BestEffort. Burstable is the better class for it anyway.
    let best_effort = pod("sidecar", json!([{"name": "app"}]), None);
    assert_eq!(pod_qos(&best_effort), Qos::BestEffort);
    let (after, _) = patched(&injector, &best_effort);
    assert_eq!(pod_qos(&after), Qos::Burstable);
}

#[test]
fn resources_annotation_overrides_and_says_when_it_costs_the_qos_class() {
    let injector = injector(&[]);
    let containers = json!([{"name": "app", "resources": exact("2", "4Gi")}]);
    let mut p = pod("sidecar", containers, None);
    p["metadata"]["annotations"]["ipmgmt.aws/resources"] =
        json!("limits.cpu=50m,limits.memory=32Mi");
    let (after, warnings) = patched(&injector, &p);
    assert_eq!(pod_qos(&after), Qos::Guaranteed);
    assert!(warnings.is_empty(), "{warnings:?}");
    let manager = &after["spec"]["initContainers"][0]["resources"];
    assert_eq!(manager["limits"], json!({"cpu": "50m", "memory": "32Mi"}));

    p["metadata"]["annotations"]["ipmgmt.aws/resources"] = json!("requests.memory=16Mi");
    let (after, warnings) = patched(&injector, &p);
    assert_eq!(pod_qos(&after), Qos::Burstable, "the override is honoured");
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].contains("Burstable"), "{}", warnings[0]);
}

#[test]
fn every_fixture_keeps_its_qos_class_or_says_why_not() {
    let mut checked = 0;
    for case in common::cases() {
        let text = std::fs::read_to_string(case.join("pod.json")).unwrap();
        let pod: Value = serde_json::from_str(&text).unwrap();
        let injector = Injector::new(common::config(&case));
        if !matches!(decide(&injector, &pod), Decision::Inject { .. }) {
            continue;
        }
        let (after, warnings) = patched(&injector, &pod);
        let (before, after) = (pod_qos(&pod), pod_qos(&after));
        let explained = warnings.iter().any(|w| w.contains("Burstable"));
        match (before, after) {
            (b, a) if b == a => assert!(!explained, "{}", case.display()),
            (Qos::BestEffort, Qos::Burstable) => {}
            (Qos::Guaranteed, Qos::Burstable) if explained => {}
            (b, a) => panic!("{}: {b:?} became {a:?}", case.display()),
        }
        checked += 1;
    }
    assert!(checked >= 20, "only {checked} fixtures injected");
}
