//! What EKS does with a patched pod, and what the fakes elsewhere do not model:
//! Kubernetes' QoS class (ported from pkg/apis/core/helper/qos, ComputePodQOS), and the
//! EKS pod-identity webhook running after this one (ported from
//! amazon-eks-pod-identity-webhook pkg/handler/handler.go).

use ipmgmt_webhook::inject::{Config, Decision, Injector, Pod, Quantity};
use serde_json::{Value, json};

fn injector(cfg: Config) -> Injector {
    Injector::new(Config {
        image: "public.ecr.aws/ipmgmt/ipmgr:0.1.0".into(),
        region: Some("us-west-2".into()),
        ..cfg
    })
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

// ---- Kubernetes' QoS class ----

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
        let injector = injector(Config {
            classic_sidecar: classic,
            ..Config::default()
        });
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
    let injector = injector(Config {
        resources: ipmgmt_webhook::inject::Resources {
            cpu_limit: None,
            memory_limit: None,
            ..Default::default()
        },
        ..Config::default()
    });
    let (after, _) = patched(&injector, &pod("sidecar", containers, None));
    assert_eq!(pod_qos(&after), Qos::Guaranteed);
}

#[test]
fn burstable_stays_burstable_and_best_effort_becomes_burstable() {
    let injector = injector(Config::default());
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
    let injector = injector(Config::default());
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
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures");
    let mut checked = 0;
    for case in std::fs::read_dir(root).unwrap() {
        let case = case.unwrap().path();
        let Ok(text) = std::fs::read_to_string(case.join("pod.json")) else {
            continue;
        };
        let pod: Value = serde_json::from_str(&text).unwrap();
        let mut cfg = serde_json::to_value(Config::default()).unwrap();
        if let Ok(overrides) = std::fs::read_to_string(case.join("config.json")) {
            let overrides: Value = serde_json::from_str(&overrides).unwrap();
            for (k, v) in overrides.as_object().unwrap() {
                cfg[k] = v.clone();
            }
        }
        let injector = injector(serde_json::from_value(cfg).unwrap());
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

// ---- The EKS pod-identity webhook, after this one ----

const REGION: &str = "us-west-2";
const APP_ROLE: &str = "arn:aws:iam::111122223333:role/upf-app";
const MANAGER_ROLE: &str = "arn:aws:iam::111122223333:role/ipmgmt";
const POD_ROLE: &str = "arn:aws:iam::111122223333:role/upf-ipmgmt";

/// What the pod's service account is associated with.
#[derive(Clone, Copy, Debug)]
enum Identity {
    /// IRSA: the service account's eks.amazonaws.com/role-arn.
    WebIdentity(&'static str),
    /// EKS Pod Identity: the agent's endpoint and its own token.
    ContainerCredentials,
}

struct PatchConfig {
    mount_path: &'static str,
    volume_name: &'static str,
    token_path: &'static str,
    audience: &'static str,
    web_identity_role: Option<&'static str>,
    container_credentials_uri: Option<&'static str>,
}

impl Identity {
    fn config(self) -> PatchConfig {
        match self {
            Identity::WebIdentity(role) => PatchConfig {
                mount_path: "/var/run/secrets/eks.amazonaws.com/serviceaccount",
                volume_name: "aws-iam-token",
                token_path: "token",
                audience: "sts.amazonaws.com",
                web_identity_role: Some(role),
                container_credentials_uri: None,
            },
            Identity::ContainerCredentials => PatchConfig {
                mount_path: "/var/run/secrets/pods.eks.amazonaws.com/serviceaccount",
                volume_name: "eks-pod-identity-token",
                token_path: "eks-pod-identity-token",
                audience: "pods.eks.amazonaws.com",
                web_identity_role: None,
                container_credentials_uri: Some("http://169.254.170.23/v1/credentials"),
            },
        }
    }
}

/// getPodSpecPatch and addEnvToContainer, with regional STS on and the Region set,
/// applied to the pod in place.
fn pod_identity_webhook(pod: &mut Value, identity: Identity) {
    let cfg = identity.config();
    let token_file = format!("{}/{}", cfg.mount_path, cfg.token_path);
    // getContainersToSkip: one CSV record, fields not trimmed.
    let skip: Vec<String> = pod["metadata"]["annotations"]["eks.amazonaws.com/skip-containers"]
        .as_str()
        .map(|v| v.split(',').map(str::to_owned).collect())
        .unwrap_or_default();
    for list in ["initContainers", "containers"] {
        for container in pod["spec"][list].as_array_mut().into_iter().flatten() {
            let name = container["name"].as_str().unwrap_or("").to_owned();
            if skip.contains(&name) {
                continue;
            }
            add_env_to_container(container, &cfg, &token_file);
        }
    }
    let volumes = pod["spec"]["volumes"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    if !volumes.iter().any(|v| v["name"] == cfg.volume_name) {
        let volume = json!({"name": cfg.volume_name, "projected": {"sources": [{"serviceAccountToken": {
            "audience": cfg.audience, "expirationSeconds": 86400, "path": cfg.token_path}}]}});
        match pod["spec"]["volumes"].as_array_mut() {
            Some(list) => list.insert(0, volume),
            None => pod["spec"]["volumes"] = json!([volume]),
        }
    }
}

fn add_env_to_container(container: &mut Value, cfg: &PatchConfig, token_file: &str) {
    let names: Vec<String> = container["env"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["name"].as_str().map(str::to_owned))
        .collect();
    let has = |n: &str| names.iter().any(|name| name == n);
    let web_identity_keys = has("AWS_ROLE_ARN") || has("AWS_WEB_IDENTITY_TOKEN_FILE");
    let container_credentials_keys =
        has("AWS_CONTAINER_CREDENTIALS_FULL_URI") || has("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE");
    let region_key = has("AWS_REGION") || has("AWS_DEFAULT_REGION");
    let regional_sts_key = has("AWS_STS_REGIONAL_ENDPOINTS");
    if ((cfg.web_identity_role.is_some() && web_identity_keys)
        || (cfg.container_credentials_uri.is_some() && container_credentials_keys))
        && region_key
        && regional_sts_key
    {
        return;
    }
    let mut env = container["env"].as_array().cloned().unwrap_or_default();
    let var = |name: &str, value: &str| json!({"name": name, "value": value});
    if !regional_sts_key {
        env.push(var("AWS_STS_REGIONAL_ENDPOINTS", "regional"));
    }
    if !region_key {
        env.push(var("AWS_DEFAULT_REGION", REGION));
        env.push(var("AWS_REGION", REGION));
    }
    if let Some(uri) = cfg.container_credentials_uri {
        if !container_credentials_keys {
            env.push(var("AWS_CONTAINER_CREDENTIALS_FULL_URI", uri));
            env.push(var("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE", token_file));
        }
    } else if let Some(role) = cfg.web_identity_role
        && !web_identity_keys
    {
        env.push(var("AWS_ROLE_ARN", role));
        env.push(var("AWS_WEB_IDENTITY_TOKEN_FILE", token_file));
    }
    container["env"] = Value::Array(env);
    let mounts = container["volumeMounts"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    if !mounts.iter().any(|m| m["name"] == cfg.volume_name) {
        let mut mounts = mounts;
        mounts
            .push(json!({"name": cfg.volume_name, "readOnly": true, "mountPath": cfg.mount_path}));
        container["volumeMounts"] = Value::Array(mounts);
    }
}

/// Whose credentials a container holds, in the order of the AWS SDK's default chain
/// (web identity before the container endpoint before IMDS).
#[derive(Debug, PartialEq, Eq)]
enum Credentials {
    Role(String),
    PodIdentityAgent,
    NodeRole,
}

fn credentials(container: &Value) -> Credentials {
    let env = |n: &str| {
        container["env"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|e| e["name"] == n)
            .and_then(|e| e["value"].as_str())
    };
    match (env("AWS_ROLE_ARN"), env("AWS_WEB_IDENTITY_TOKEN_FILE")) {
        (Some(role), Some(_)) => Credentials::Role(role.to_owned()),
        _ if env("AWS_CONTAINER_CREDENTIALS_FULL_URI").is_some() => Credentials::PodIdentityAgent,
        _ => Credentials::NodeRole,
    }
}

/// Holds the app's credentials in any form, used or not: its variables or its token.
fn holds_app_credentials(container: &Value, identity: Identity) -> bool {
    let text = container.to_string();
    match identity {
        Identity::WebIdentity(role) => text.contains(role),
        Identity::ContainerCredentials => {
            text.contains("AWS_CONTAINER_CREDENTIALS_FULL_URI")
                || text.contains("eks-pod-identity-token")
        }
    }
}

fn container<'a>(pod: &'a Value, name: &str) -> &'a Value {
    ["initContainers", "containers"]
        .into_iter()
        .flat_map(|list| pod["spec"][list].as_array().into_iter().flatten())
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no container {name}"))
}

#[test]
fn the_pod_identity_port_matches_its_own_testdata() {
    // testdata/containercredentials/rawPodSkip.pod.yaml: the skipped container is
    // left alone, the other gets the agent's variables and token.
    let mut p = json!({"metadata": {"annotations": {"eks.amazonaws.com/skip-containers": "sidecar"}},
        "spec": {"containers": [{"name": "sidecar", "image": "amazonlinux"}, {"name": "main", "image": "amazonlinux"}]}});
    pod_identity_webhook(&mut p, Identity::ContainerCredentials);
    assert_eq!(
        p["spec"]["containers"][0],
        json!({"name": "sidecar", "image": "amazonlinux"})
    );
    assert_eq!(
        credentials(&p["spec"]["containers"][1]),
        Credentials::PodIdentityAgent
    );
    assert_eq!(p["spec"]["volumes"][0]["name"], "eks-pod-identity-token");
    // testdata/containercredentials/rawPodWithRoleArn.pod.yaml: an AWS_ROLE_ARN does
    // not keep the agent's variables out.
    let mut p = json!({"spec": {"containers": [{"name": "main", "env": [
        {"name": "AWS_ROLE_ARN", "value": MANAGER_ROLE}, {"name": "AWS_WEB_IDENTITY_TOKEN_FILE", "value": "/t"}]}]}});
    pod_identity_webhook(&mut p, Identity::ContainerCredentials);
    assert!(holds_app_credentials(
        &p["spec"]["containers"][0],
        Identity::ContainerCredentials
    ));
    // IRSA: a container with its own AWS_ROLE_ARN keeps it.
    let mut p = json!({"spec": {"containers": [{"name": "main", "env": [
        {"name": "AWS_ROLE_ARN", "value": MANAGER_ROLE}, {"name": "AWS_WEB_IDENTITY_TOKEN_FILE", "value": "/t"}]}]}});
    pod_identity_webhook(&mut p, Identity::WebIdentity(APP_ROLE));
    assert_eq!(
        credentials(&p["spec"]["containers"][0]),
        Credentials::Role(MANAGER_ROLE.into())
    );
}

#[test]
fn the_manager_never_receives_the_apps_credentials() {
    let app = json!([{"name": "app", "image": "upf", "resources": exact("2", "4Gi")},
                     {"name": "log-router", "image": "fluent-bit"}]);
    for identity in [
        Identity::WebIdentity(APP_ROLE),
        Identity::ContainerCredentials,
    ] {
        for (mode, classic) in [("init", false), ("sidecar", false), ("sidecar", true)] {
            for (configured, annotated, own) in [
                (None, None, None),
                (Some(MANAGER_ROLE), None, Some(MANAGER_ROLE)),
                (Some(MANAGER_ROLE), Some(POD_ROLE), Some(POD_ROLE)),
                (None, Some(POD_ROLE), Some(POD_ROLE)),
            ] {
                let what = format!("{identity:?} {mode} classic={classic} role={own:?}");
                let injector = injector(Config {
                    classic_sidecar: classic,
                    role_arn: configured.map(str::to_owned),
                    ..Config::default()
                });
                let mut p = pod(mode, app.clone(), None);
                p["metadata"]["annotations"]["eks.amazonaws.com/skip-containers"] =
                    json!("log-router");
                if let Some(role) = annotated {
                    p["metadata"]["annotations"]["ipmgmt.aws/role-arn"] = json!(role);
                }
                let (mut after, _) = patched(&injector, &p);
                pod_identity_webhook(&mut after, identity);

                let manager = container(&after, "aws-ip-mgmt");
                let expected = match own {
                    Some(role) => Credentials::Role(role.into()),
                    None => Credentials::NodeRole,
                };
                assert_eq!(credentials(manager), expected, "{what}");
                assert!(
                    !holds_app_credentials(manager, identity),
                    "{what}: {manager}"
                );
                let app = container(&after, "app");
                let app_credentials = match identity {
                    Identity::WebIdentity(role) => Credentials::Role(role.into()),
                    Identity::ContainerCredentials => Credentials::PodIdentityAgent,
                };
                assert_eq!(credentials(app), app_credentials, "{what}");
                // Their skip list is kept.
                assert_eq!(
                    credentials(container(&after, "log-router")),
                    Credentials::NodeRole,
                    "{what}"
                );
            }
        }
    }
}
