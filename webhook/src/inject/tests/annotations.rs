//! The per-pod annotations: each reaches the container, past the pre-rendered shortcut.

use serde_json::json;

use super::*;

/// Every per-pod setting takes the custom render and shows in the container; the
/// same pod without it gets the pre-rendered one.
#[test]
fn every_per_pod_setting_reaches_the_container() {
    // Each override by name: a new one does not compile here until it has a case below.
    let Overrides {
        role_arn: _,
        reassignment_off: _,
        resources: _,
        interfaces: _,
        release_delay_seconds: _,
        floating: _,
    } = Overrides::default();
    type Check = fn(&Value) -> bool;
    let cases: [(&str, Value, Config, Check); 7] = [
        (
            "role",
            with_annotation(
                annotated("init"),
                ROLE_ARN_ANNOTATION,
                "arn:aws:iam::111122223333:role/pod",
            ),
            cfg(),
            |c| env(c, "AWS_ROLE_ARN") == Some("arn:aws:iam::111122223333:role/pod"),
        ),
        (
            "reassignment",
            with_annotation(annotated("init"), ALLOW_REASSIGNMENT_ANNOTATION, "false"),
            cfg(),
            |c| env(c, "IPMGR_ALLOW_REASSIGNMENT") == Some("false"),
        ),
        (
            "resources",
            with_annotation(
                annotated("init"),
                RESOURCES_ANNOTATION,
                "requests.memory=32Mi",
            ),
            cfg(),
            |c| c["resources"]["requests"]["memory"] == "32Mi",
        ),
        ("guaranteed", guaranteed("init"), cfg(), |c| {
            c["resources"]["requests"] == c["resources"]["limits"]
        }),
        (
            "interfaces",
            with_annotation(annotated("init"), INTERFACES_ANNOTATION, "net2"),
            cfg(),
            |c| env(c, "IPMGR_INTERFACES") == Some("net2"),
        ),
        (
            "release delay",
            {
                let mut p = annotated("sidecar");
                p["spec"]["terminationGracePeriodSeconds"] = json!(15);
                p
            },
            classic(),
            |c| env(c, "IPMGR_RELEASE_DELAY_SECONDS") == Some("5"),
        ),
        (
            "floating",
            with_annotation(
                annotated("sidecar"),
                ipmgmt_common::floating::FLOATING_IPS,
                "10.0.4.100",
            ),
            cfg(),
            |c| env(c, "IPMGR_FLOATING_IPS") == Some("10.0.4.100"),
        ),
    ];
    for (what, pod, cfg, shows) in cases {
        let with = applied(&pod, &cfg);
        assert!(shows(manager(&with)), "{what}: {}", manager(&with));
        let mode = pod["metadata"]["annotations"][MODE_ANNOTATION]
            .as_str()
            .unwrap();
        let without = applied(&annotated(mode), &cfg);
        assert!(
            !shows(manager(&without)),
            "{what} shows without the setting"
        );
    }
}

#[test]
fn pre_rendered_and_custom_containers_agree() {
    // A pod-level role equal to the configured one takes the custom path; the
    // container must come out the same as the pre-rendered one, Guaranteed or not.
    let arn = "arn:aws:iam::111122223333:role/ipmgmt";
    for cfg in [
        cfg_with(&["--role-arn", arn]),
        cfg_with(&["--role-arn", arn, "--classic-sidecar"]),
    ] {
        for pod in [
            annotated("init"),
            annotated("sidecar"),
            guaranteed("init"),
            guaranteed("sidecar"),
        ] {
            let pre = applied(&pod, &cfg);
            let custom = applied(
                &with_annotation(pod.clone(), ROLE_ARN_ANNOTATION, arn),
                &cfg,
            );
            assert_eq!(manager(&pre), manager(&custom), "{pod}");
            // An override that restates the resources the pod gets anyway.
            let r = cfg
                .resources
                .for_pod(pod["spec"]["containers"][0].get("resources").is_some());
            let restated = format!(
                "requests.cpu={},requests.memory={},limits.cpu={},limits.memory={}",
                r.cpu_request,
                r.memory_request,
                r.cpu_limit.unwrap(),
                r.memory_limit.unwrap()
            );
            let custom = applied(
                &with_annotation(pod.clone(), RESOURCES_ANNOTATION, &restated),
                &cfg,
            );
            assert_eq!(manager(&pre), manager(&custom), "{pod}");
        }
    }
}

#[test]
fn interfaces_reach_ipmgr_unchanged_and_bad_names_are_denied() {
    let doc = applied(
        &with_annotation(annotated("sidecar"), INTERFACES_ANNOTATION, "net1,net2"),
        &cfg(),
    );
    assert_eq!(env(manager(&doc), "IPMGR_INTERFACES"), Some("net1,net2"));
    let doc = applied(&annotated("sidecar"), &cfg());
    assert_eq!(
        env(manager(&doc), "IPMGR_INTERFACES"),
        None,
        "absent: every secondary interface"
    );
    let pod = with_annotation(annotated("init"), INTERFACES_ANNOTATION, "net1,eth0:1");
    assert!(
        matches!(decide(&pod, &cfg()), Decision::Deny(m) if m.contains(INTERFACES_ANNOTATION) && m.contains("eth0:1"))
    );
}

#[test]
fn per_pod_env_wins_over_the_configured_env() {
    let cfg = cfg_with(&[
        "--ipmgr-env",
        "IPMGR_INTERFACES=net9",
        "--ipmgr-env",
        "IPMGR_LOG_FORMAT=json",
    ]);
    let doc = applied(
        &with_annotation(annotated("init"), INTERFACES_ANNOTATION, "net1"),
        &cfg,
    );
    assert_eq!(env(manager(&doc), "IPMGR_INTERFACES"), Some("net1"));
    assert_eq!(env(manager(&doc), "IPMGR_LOG_FORMAT"), Some("json"));
    let doc = applied(&annotated("init"), &cfg);
    assert_eq!(env(manager(&doc), "IPMGR_INTERFACES"), Some("net9"));
}

#[test]
fn role_annotation_overrides_configured_role() {
    let p = with_annotation(
        annotated("init"),
        ROLE_ARN_ANNOTATION,
        "arn:aws:iam::111122223333:role/pod-role",
    );
    let cfg = cfg_with(&["--role-arn", "arn:aws:iam::111122223333:role/global"]);
    let doc = applied(&p, &cfg);
    assert_eq!(
        env(manager(&doc), "AWS_ROLE_ARN"),
        Some("arn:aws:iam::111122223333:role/pod-role")
    );
    assert_eq!(doc["spec"]["volumes"][0]["name"], IRSA_VOLUME);
}

#[test]
fn no_role_means_no_irsa_settings() {
    let doc = applied(&annotated("init"), &cfg());
    let text = manager(&doc).to_string() + &doc["spec"]["volumes"].to_string();
    assert!(
        !text.contains("AWS_ROLE_ARN") && !text.contains(IRSA_VOLUME),
        "{text}"
    );
}

#[test]
fn the_manager_is_left_out_of_the_pod_identity_webhook() {
    let doc = applied(&annotated("init"), &cfg());
    assert_eq!(
        doc["metadata"]["annotations"][SKIP_CONTAINERS_ANNOTATION],
        "aws-ip-mgmt"
    );
    let pod = with_annotation(
        annotated("init"),
        SKIP_CONTAINERS_ANNOTATION,
        "istio-proxy,log-shipper",
    );
    let doc = applied(&pod, &cfg());
    assert_eq!(
        doc["metadata"]["annotations"][SKIP_CONTAINERS_ANNOTATION],
        "istio-proxy,log-shipper,aws-ip-mgmt"
    );
    // Already listed: the annotation is not touched.
    let pod = with_annotation(
        annotated("init"),
        SKIP_CONTAINERS_ANNOTATION,
        "aws-ip-mgmt,x",
    );
    let Decision::Inject { patch, .. } = decide(&pod, &cfg()) else {
        panic!()
    };
    assert!(
        !String::from_utf8(patch.to_bytes())
            .unwrap()
            .contains("skip-containers")
    );
}
