//! The manager's resources in Guaranteed and other pods, and `ipmgmt.aws/resources`.

use serde_json::json;

use super::*;

#[test]
fn guaranteed_pods_stay_guaranteed() {
    for (mode, cfg) in [("init", cfg()), ("sidecar", cfg()), ("sidecar", classic())] {
        let doc = applied(&guaranteed(mode), &cfg);
        let r = &manager(&doc)["resources"];
        assert_eq!(
            r["requests"],
            json!({"cpu": "100m", "memory": "64Mi"}),
            "{mode}"
        );
        assert_eq!(r["limits"], r["requests"], "{mode}");
    }
    // An init container without limits makes the pod Burstable already.
    let mut pod = guaranteed("init");
    pod["spec"]["initContainers"] = json!([{"name": "setup", "image": "busybox"}]);
    let r = manager(&applied(&pod, &cfg()))["resources"].clone();
    assert_eq!(r["requests"], json!({"cpu": "10m", "memory": "16Mi"}));
    // Limits only: the apiserver makes the requests equal to them.
    let mut pod = annotated("init");
    pod["spec"]["containers"][0]["resources"] = json!({"limits": {"cpu": "1", "memory": "1Gi"}});
    let r = manager(&applied(&pod, &cfg()))["resources"].clone();
    assert_eq!(r["requests"], r["limits"]);
}

#[test]
fn resources_override_that_makes_a_guaranteed_pod_burstable_warns() {
    let pod = with_annotation(guaranteed("init"), RESOURCES_ANNOTATION, "requests.cpu=20m");
    let Decision::Inject { warnings, .. } = decide(&pod, &cfg()) else {
        panic!("expected an injection")
    };
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].contains("Burstable") && warnings[0].contains(RESOURCES_ANNOTATION));
    let r = manager(&applied(&pod, &cfg()))["resources"].clone();
    assert_eq!(
        (&r["requests"]["cpu"], &r["limits"]["cpu"]),
        (&json!("20m"), &json!("100m"))
    );
    assert_eq!(r["requests"]["memory"], r["limits"]["memory"]);
}

#[test]
fn bad_resources_override_is_denied() {
    for (value, says) in [
        ("requests.storage=1Gi", "unknown key \"requests.storage\""),
        ("limits.cpu=lots", "\"lots\" is not a Kubernetes quantity"),
        (
            "requests.memory=128Mi",
            "is greater than the memory limit 64Mi",
        ),
    ] {
        let pod = with_annotation(annotated("init"), RESOURCES_ANNOTATION, value);
        let Decision::Deny(message) = decide(&pod, &cfg()) else {
            panic!("{value}: expected a denial")
        };
        assert!(
            message.contains(RESOURCES_ANNOTATION) && message.contains(says),
            "{message}"
        );
    }
}

#[test]
fn unreadable_quantity_in_the_pod_is_denied_with_its_container() {
    let mut pod = annotated("init");
    pod["spec"]["containers"][0]["resources"] =
        json!({"limits": {"cpu": "2 cores", "memory": "1Gi"}});
    let Decision::Deny(message) = decide(&pod, &cfg()) else {
        panic!("expected a denial")
    };
    assert!(
        message.contains("\"app\"") && message.contains("limits.cpu"),
        "{message}"
    );
}
