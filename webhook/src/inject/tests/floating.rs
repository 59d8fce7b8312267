//! Floating addresses, Elastic IPs and route tables: what the manager gets for them,
//! and each form refused with the reason.

use ipmgmt_common::floating::{ELASTIC_IP, FLOATING_IPS, ROUTE_TABLES};
use serde_json::json;

use super::*;

fn floating(mode: &str, ips: &str) -> Value {
    with_annotation(annotated(mode), FLOATING_IPS, ips)
}

fn volume<'a>(doc: &'a Value, name: &str) -> Option<&'a Value> {
    (doc["spec"]["volumes"].as_array()?)
        .iter()
        .find(|v| v["name"] == name)
}

fn denial(pod: &Value, cfg: &Config) -> String {
    match decide(pod, cfg) {
        Decision::Deny(message) => message,
        other => panic!("expected a denial, got {other:?}"),
    }
}

#[test]
fn a_floating_pod_gets_its_settings_net_admin_alone_and_a_token() {
    let pod = with_annotation(
        with_annotation(
            floating("sidecar", " 10.0.4.100, 2001:db8:0:5:0::100"),
            ELASTIC_IP,
            "eipalloc-0123456789abcdef0",
        ),
        ROUTE_TABLES,
        "rtb-0a1b2c3d",
    );
    for cfg in [cfg(), classic()] {
        let doc = applied(&pod, &cfg);
        let c = manager(&doc);
        // Written as ipmgr reads them: each address canonical.
        assert_eq!(
            env(c, "IPMGR_FLOATING_IPS"),
            Some("10.0.4.100,2001:db8:0:5::100")
        );
        assert_eq!(
            env(c, "IPMGR_ELASTIC_IP"),
            Some("eipalloc-0123456789abcdef0")
        );
        assert_eq!(env(c, "IPMGR_ROUTE_TABLES"), Some("rtb-0a1b2c3d"));
        let sc = &c["securityContext"];
        assert_eq!(
            sc["capabilities"],
            json!({"drop": ["ALL"], "add": ["NET_ADMIN"]})
        );
        assert_eq!(sc["runAsUser"], 0);
        assert_eq!(sc["runAsNonRoot"], false);
        assert_eq!(sc["allowPrivilegeEscalation"], false);
        assert_eq!(sc["readOnlyRootFilesystem"], true);
        // No token mounted in the pod: the manager gets its own, as kubelet mounts one.
        let mount = c["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["mountPath"] == "/var/run/secrets/kubernetes.io/serviceaccount")
            .expect("the token is mounted");
        assert_eq!(mount["name"], "ipmgmt-kube-api-access");
        assert_eq!(mount["readOnly"], true);
        let token = volume(&doc, "ipmgmt-kube-api-access").expect("the token volume");
        let sources = token["projected"]["sources"].as_array().unwrap();
        assert_eq!(sources[0]["serviceAccountToken"]["path"], "token");
        assert_eq!(sources[1]["configMap"]["name"], "kube-root-ca.crt");
        // Nothing else in the pod changes: the app keeps what it had.
        assert!(
            doc["spec"]["containers"]
                .as_array()
                .unwrap()
                .iter()
                .all(|app| {
                    app["name"] == "aws-ip-mgmt" || app.get("securityContext").is_none()
                })
        );
    }
}

#[test]
fn the_pods_own_token_volume_is_mounted_instead_of_a_second() {
    let mut pod = floating("sidecar", "10.0.4.100");
    pod["spec"]["volumes"] =
        json!([{"name": "kube-api-access-x7k2p", "projected": {"sources": []}}]);
    let doc = applied(&pod, &cfg());
    let c = manager(&doc);
    let mounts = c["volumeMounts"].as_array().unwrap();
    assert!(
        mounts.iter().any(|m| m["name"] == "kube-api-access-x7k2p"
            && m["mountPath"] == "/var/run/secrets/kubernetes.io/serviceaccount"),
        "{mounts:?}"
    );
    assert!(volume(&doc, "ipmgmt-kube-api-access").is_none());
}

#[test]
fn without_floating_addresses_the_manager_stays_unprivileged() {
    // An Elastic IP from a pool, for the pod's own address: no Lease, no NET_ADMIN.
    let doc = applied(
        &with_annotation(annotated("sidecar"), ELASTIC_IP, "tag:ipmgmt.aws/pool=upf"),
        &cfg(),
    );
    let c = manager(&doc);
    assert_eq!(env(c, "IPMGR_ELASTIC_IP"), Some("tag:ipmgmt.aws/pool=upf"));
    assert_eq!(env(c, "IPMGR_FLOATING_IPS"), None);
    assert_eq!(
        c["securityContext"]["capabilities"],
        json!({"drop": ["ALL"]})
    );
    assert_eq!(c["securityContext"]["runAsNonRoot"], true);
    assert!(volume(&doc, "ipmgmt-kube-api-access").is_none());
    let plain = applied(&annotated("sidecar"), &cfg());
    assert_eq!(manager(&plain)["securityContext"]["runAsUser"], 65532);
}

#[test]
fn each_bad_form_is_denied_with_the_reason() {
    let eip = |pod: Value, v: &str| with_annotation(pod, ELASTIC_IP, v);
    let tables = |pod: Value, v: &str| with_annotation(pod, ROUTE_TABLES, v);
    for (pod, says) in [
        (
            floating("sidecar", "10.0.4.100/32"),
            "annotation ipmgmt.aws/floating-ips: \"10.0.4.100/32\" is not an IPv4 or IPv6 address",
        ),
        (
            floating("sidecar", "169.254.10.1"),
            "169.254.10.1 is a link-local address, which no VPC routes to an ENI",
        ),
        (
            floating("init", "10.0.4.100"),
            "annotation ipmgmt.aws/floating-ips needs ipmgmt.aws/mode: sidecar",
        ),
        (
            eip(annotated("init"), "tag:pool=a"),
            "annotation ipmgmt.aws/elastic-ip needs ipmgmt.aws/mode: sidecar",
        ),
        (
            eip(floating("sidecar", "10.0.4.100"), "eipalloc-nothex!"),
            "is neither an allocation id",
        ),
        (
            eip(floating("sidecar", "2001:db8::1"), "eipalloc-0123abcd"),
            "needs an IPv4 address in ipmgmt.aws/floating-ips",
        ),
        (
            tables(
                floating("sidecar", "10.0.4.100"),
                "rtb-0a1b2c3d,vpc-0a1b2c3d",
            ),
            "\"vpc-0a1b2c3d\" is not a route table id",
        ),
        (
            tables(annotated("sidecar"), "rtb-0a1b2c3d"),
            "the pod names none: add ipmgmt.aws/floating-ips",
        ),
    ] {
        let message = denial(&pod, &cfg());
        assert!(message.contains(says), "{message}");
    }
}
