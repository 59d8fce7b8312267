//! The EKS pod-identity webhook, after this one: the manager never holds the app's
//! credentials.

use serde_json::{Value, json};

use super::{exact, injector, patched, pod};

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
                let role_flag = configured.map(|role| format!("--role-arn={role}"));
                let mut flags: Vec<&str> = role_flag.as_deref().into_iter().collect();
                if classic {
                    flags.push("--classic-sidecar");
                }
                let injector = injector(&flags);
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
