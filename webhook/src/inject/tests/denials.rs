//! Pods that are denied, or injected with a warning.

use serde_json::json;

use super::*;

#[test]
fn bad_reassignment_value_is_denied() {
    let p = with_annotation(annotated("init"), ALLOW_REASSIGNMENT_ANNOTATION, "no");
    let Decision::Deny(message) = decide(&p, &cfg()) else {
        panic!("expected a denial")
    };
    assert!(message.contains(ALLOW_REASSIGNMENT_ANNOTATION), "{message}");
}

#[test]
fn host_network_is_denied() {
    let mut p = annotated("init");
    p["spec"]["hostNetwork"] = json!(true);
    assert!(matches!(decide(&p, &cfg()), Decision::Deny(m) if m.contains("hostNetwork")));
}

#[test]
fn pod_without_spec_is_denied_not_patched() {
    let mut p = annotated("init");
    p.as_object_mut().unwrap().remove("spec");
    assert!(matches!(decide(&p, &cfg()), Decision::Deny(m) if m.contains("no spec")));
}

#[test]
fn missing_networks_annotation_warns_but_injects() {
    let mut p = annotated("init");
    p["metadata"]["annotations"]
        .as_object_mut()
        .unwrap()
        .remove(NETWORKS_ANNOTATION);
    let Decision::Inject { warnings, .. } = decide(&p, &cfg()) else {
        panic!("expected an injection")
    };
    assert_eq!(warnings.len(), 1);
    assert!(warnings[0].contains(NETWORKS_ANNOTATION));
}
