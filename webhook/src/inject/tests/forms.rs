//! Each mode in each form: where the manager goes, what it runs, what gates the app.

use serde_json::json;

use super::*;

#[test]
fn no_annotation_is_skipped() {
    let p = json!({"metadata": {"name": "p"}, "spec": {"containers": []}});
    assert!(matches!(
        decide(&p, &cfg()),
        Decision::Skip(Skip::NotRequested)
    ));
}

#[test]
fn init_mode_runs_ipmgr_init_first() {
    let doc = applied(&annotated("init"), &cfg());
    let c = &doc["spec"]["initContainers"][0];
    assert_eq!(c["name"], "aws-ip-mgmt");
    assert_eq!(c["command"], json!(["/usr/local/bin/ipmgr", "init"]));
    for absent in ["restartPolicy", "startupProbe", "readinessProbe"] {
        assert!(c.get(absent).is_none(), "{absent}");
    }
}

#[test]
fn empty_mode_takes_the_configured_default() {
    let init = applied(&annotated(""), &cfg());
    assert_eq!(init["spec"]["initContainers"][0]["command"][1], "init");
    let sidecar_default = cfg_with(&["--default-mode", "sidecar"]);
    let sidecar = applied(&annotated(""), &sidecar_default);
    assert_eq!(
        sidecar["spec"]["initContainers"][0]["command"][1],
        "sidecar"
    );
    assert_eq!(
        sidecar["spec"]["initContainers"][0]["restartPolicy"],
        "Always"
    );
    // An explicit value still wins over the default.
    let explicit = applied(&annotated("init"), &sidecar_default);
    assert_eq!(explicit["spec"]["initContainers"][0]["command"][1], "init");
}

#[test]
fn sidecar_mode_is_native_with_startup_and_readiness_probes() {
    let doc = applied(&annotated("sidecar"), &cfg());
    let c = &doc["spec"]["initContainers"][0];
    assert_eq!(c["restartPolicy"], "Always");
    assert_eq!(c["command"][1], "sidecar");
    let ready = json!(["/usr/local/bin/ipmgr", "ready"]);
    assert_eq!(c["startupProbe"]["exec"]["command"], ready);
    assert_eq!(
        c["readinessProbe"],
        json!({"exec": {"command": ready}, "periodSeconds": 5, "timeoutSeconds": 5, "failureThreshold": 3})
    );
    assert_eq!(doc["spec"]["containers"].as_array().unwrap().len(), 1);
    assert_eq!(
        env(c, "IPMGR_RELEASE_DELAY_SECONDS"),
        None,
        "kubelet stops native sidecars last"
    );
}

#[test]
fn classic_sidecar_goes_first_and_keeps_kubectl_on_the_app() {
    let doc = applied(&annotated("sidecar"), &classic());
    let c = &doc["spec"]["containers"][0];
    assert_eq!(c["name"], "aws-ip-mgmt");
    assert_eq!(doc["spec"]["containers"][1]["name"], "app");
    assert!(c.get("restartPolicy").is_none());
    assert_eq!(c["lifecycle"]["postStart"]["exec"]["command"][2], "--wait");
    assert_eq!(c["readinessProbe"]["exec"]["command"][1], "ready");
    assert_eq!(
        doc["metadata"]["annotations"][DEFAULT_CONTAINER_ANNOTATION],
        "app"
    );
    assert!(doc["spec"].get("initContainers").is_none());
}

#[test]
fn classic_sidecar_keeps_the_addresses_while_the_app_drains() {
    // The pod's grace period, or kubelet's 30 s: release with about 10 s left.
    for (grace, delay) in [
        (None, "20"),
        (Some(30), "20"),
        (Some(60), "20"),
        (Some(25), "15"),
        (Some(12), "2"),
        (Some(0), "0"),
    ] {
        let mut pod = annotated("sidecar");
        if let Some(grace) = grace {
            pod["spec"]["terminationGracePeriodSeconds"] = json!(grace);
        }
        let doc = applied(&pod, &classic());
        assert_eq!(
            env(manager(&doc), "IPMGR_RELEASE_DELAY_SECONDS"),
            Some(delay),
            "grace {grace:?}"
        );
        let native = applied(&pod, &cfg());
        assert_eq!(env(manager(&native), "IPMGR_RELEASE_DELAY_SECONDS"), None);
        let init = applied(&with_annotation(pod, MODE_ANNOTATION, "init"), &classic());
        assert_eq!(env(manager(&init), "IPMGR_RELEASE_DELAY_SECONDS"), None);
    }
}

#[test]
fn security_context_is_least_privileged() {
    let doc = applied(&annotated("init"), &cfg());
    let sc = &doc["spec"]["initContainers"][0]["securityContext"];
    assert_eq!(sc["runAsNonRoot"], true);
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]));
    assert_eq!(sc["seccompProfile"]["type"], "RuntimeDefault");
}

#[test]
fn escaped_annotation_values_are_read() {
    // serde borrows plain strings and allocates escaped ones: both must match.
    let text = r#"{"metadata":{"annotations":{"ipmgmt.aws\/mode":"sid\u0065car"}},"spec":{"containers":[]}}"#;
    let pod: Pod = serde_json::from_str(text).unwrap();
    assert!(matches!(
        Injector::new(cfg()).decide(&pod),
        Decision::Inject {
            mode: Mode::Sidecar,
            ..
        }
    ));
}
