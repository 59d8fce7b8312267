//! The manager container and the volumes it needs, from the configuration and one
//! pod's overrides.

use ipmgmt_common::ipmgr_env;
use serde_json::{Value, json};

use super::floating::{Floating, TOKEN_MOUNT_PATH, TOKEN_VOLUME};
use super::request::{DEFAULT_GRACE_SECONDS, Overrides, release_delay_seconds};
use super::{Config, Form, Mode, Resources};

/// Names the EKS pod-identity webhook uses, so that both agree on one token volume.
pub const IRSA_VOLUME: &str = "aws-iam-token";
pub const IRSA_MOUNT_PATH: &str = "/var/run/secrets/eks.amazonaws.com/serviceaccount";
pub const IRSA_TOKEN_PATH: &str = "token";

/// Where the sidecar marks itself ready for `ipmgr ready` (its probes).
pub const READY_DIR: &str = "/run/ipmgmt";
pub const READY_FILE: &str = "/run/ipmgmt/ready";

pub fn irsa_volume(cfg: &Config) -> Value {
    json!({
        "name": IRSA_VOLUME,
        "projected": {"sources": [{"serviceAccountToken": {
            "audience": cfg.token_audience,
            "expirationSeconds": cfg.token_expiration_seconds,
            "path": IRSA_TOKEN_PATH,
        }}]},
    })
}

/// A service-account token, the cluster's CA and the namespace, as kubelet mounts them
/// for a pod that automounts its token: what the manager needs to reach the API server
/// in a pod that mounts none.
pub fn token_volume() -> Value {
    json!({
        "name": TOKEN_VOLUME,
        "projected": {"defaultMode": 0o444, "sources": [
            {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
            {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
            {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}},
        ]},
    })
}

pub fn ready_volume(name: &str) -> Value {
    json!({"name": name, "emptyDir": {"medium": "Memory", "sizeLimit": "1Mi"}})
}

pub fn container(
    cfg: &Config,
    mode: Mode,
    guaranteed: bool,
    over: &Overrides<'_>,
    ready_volume: &str,
) -> Value {
    // Every setting and every override by name: one added to `Config` or `Overrides`
    // does not compile until it is rendered here, or named as used elsewhere.
    let Config {
        container_name,
        image,
        image_pull_policy,
        ipmgr_path,
        classic_sidecar,
        // What an empty annotation asks for: the request has read it.
        default_mode: _,
        region,
        imds_endpoint,
        imds_endpoint_mode,
        imds_disabled,
        role_arn: configured_role,
        // The token volume's: `irsa_volume`.
        token_audience: _,
        token_expiration_seconds: _,
        resources: configured_resources,
        run_as_user,
        startup_timeout_seconds,
        release_timeout_seconds,
        ipmgr_env,
    } = cfg;
    let form = Form::of(mode, *classic_sidecar);
    let Overrides {
        role_arn,
        reassignment_off,
        resources,
        interfaces,
        release_delay_seconds: release_delay,
        floating,
    } = over;
    let field = |name: &str, path: &str| json!({"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}});
    let value = |name: &str, value: &str| json!({"name": name, "value": value});
    let mut env = vec![
        field("NODE_NAME", "spec.nodeName"),
        field("POD_NAME", "metadata.name"),
        field("POD_NAMESPACE", "metadata.namespace"),
    ];
    if let Some(region) = region {
        env.push(value("AWS_REGION", region));
    }
    if let Some(endpoint) = imds_endpoint {
        env.push(value("AWS_EC2_METADATA_SERVICE_ENDPOINT", endpoint));
    }
    if let Some(endpoint_mode) = imds_endpoint_mode {
        env.push(value(
            "AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE",
            endpoint_mode,
        ));
    }
    if *imds_disabled {
        env.push(value("AWS_EC2_METADATA_DISABLED", "true"));
    }
    let mut mounts = Vec::new();
    if let Some(arn) = role_arn.or(configured_role.as_deref()) {
        env.push(value("AWS_ROLE_ARN", arn));
        env.push(value(
            "AWS_WEB_IDENTITY_TOKEN_FILE",
            &format!("{IRSA_MOUNT_PATH}/{IRSA_TOKEN_PATH}"),
        ));
        env.push(value("AWS_STS_REGIONAL_ENDPOINTS", "regional"));
        mounts.push(json!({"name": IRSA_VOLUME, "mountPath": IRSA_MOUNT_PATH, "readOnly": true}));
    }
    if *reassignment_off {
        env.push(value(ipmgr_env::ALLOW_REASSIGNMENT, "false"));
    }
    if let Some(names) = interfaces {
        env.push(value(ipmgr_env::INTERFACES, names));
    }
    if form.runs_alongside() {
        env.push(value(ipmgr_env::READY_FILE, READY_FILE));
        mounts.push(json!({"name": ready_volume, "mountPath": READY_DIR}));
    }
    if form.runs_alongside()
        && *release_timeout_seconds != ipmgr_env::DEFAULT_RELEASE_TIMEOUT_SECONDS
    {
        env.push(value(
            ipmgr_env::RELEASE_TIMEOUT_SECONDS,
            &release_timeout_seconds.to_string(),
        ));
    }
    match form {
        Form::Init | Form::NativeSidecar => {}
        Form::ClassicSidecar => {
            let delay = release_delay.unwrap_or(release_delay_seconds(
                DEFAULT_GRACE_SECONDS,
                *release_timeout_seconds,
            ));
            env.push(value(ipmgr_env::RELEASE_DELAY_SECONDS, &delay.to_string()));
        }
    }
    if let Some(floating) = floating {
        floating_env(floating, &mut env, &mut mounts);
    }
    // What the webhook sets for this pod wins over the same name in --ipmgr-env:
    // a duplicate would leave kubelet to pick the last one.
    for (name, v) in ipmgr_env {
        if !env.iter().any(|e| e["name"] == name.as_str()) {
            env.push(value(name, v));
        }
    }

    let resources = match resources {
        Some(resources) => resources.clone(),
        None => configured_resources.for_pod(guaranteed),
    };
    let resources = resources_value(&resources);

    let mut c = json!({
        "name": container_name,
        "image": image,
        "imagePullPolicy": image_pull_policy,
        "command": [ipmgr_path, mode.as_str()],
        "env": env,
        "resources": resources,
        "securityContext": {
            "runAsNonRoot": true,
            "runAsUser": run_as_user,
            "runAsGroup": run_as_user,
            "readOnlyRootFilesystem": true,
            "allowPrivilegeEscalation": false,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        // ipmgr writes its one-line failure reason there; the pod's status shows it.
        "terminationMessagePolicy": "FallbackToLogsOnError",
    });
    if floating.as_ref().is_some_and(Floating::holds_lease) {
        // Adding an address to the pod's interface takes CAP_NET_ADMIN, and a container
        // runtime gives an added capability to uid 0 only: containerd and CRI-O set no
        // ambient capabilities, so a non-root process loses it at exec. Every other
        // capability stays dropped, and the process still cannot gain privileges.
        c["securityContext"]["runAsNonRoot"] = json!(false);
        c["securityContext"]["runAsUser"] = json!(0);
        c["securityContext"]["runAsGroup"] = json!(0);
        c["securityContext"]["capabilities"]["add"] = json!(["NET_ADMIN"]);
    }
    probes_and_lifecycle(&mut c, form, ipmgr_path, *startup_timeout_seconds);
    if !mounts.is_empty() {
        c["volumeMounts"] = Value::Array(mounts);
    }
    c
}

/// A pod's floating settings as the manager reads them, and the token it reaches the
/// API server with to hold their Lease.
fn floating_env(floating: &Floating<'_>, env: &mut Vec<Value>, mounts: &mut Vec<Value>) {
    let value = |name: &str, value: &str| json!({"name": name, "value": value});
    if let Some(ips) = &floating.ips {
        env.push(value(ipmgr_env::FLOATING_IPS, ips));
        // Named in the one line that says which RoleBinding the Lease needs.
        env.push(json!({"name": "POD_SERVICE_ACCOUNT", "valueFrom": {"fieldRef": {"fieldPath": "spec.serviceAccountName"}}}));
        let volume = floating.pod_token_volume.unwrap_or(TOKEN_VOLUME);
        mounts.push(json!({"name": volume, "mountPath": TOKEN_MOUNT_PATH, "readOnly": true}));
    }
    if let Some(eip) = floating.elastic_ip {
        env.push(value(ipmgr_env::ELASTIC_IP, eip));
    }
    if let Some(tables) = floating.route_tables {
        env.push(value(ipmgr_env::ROUTE_TABLES, tables));
    }
}

/// The manager's requests, and its limits when it has any.
fn resources_value(resources: &Resources) -> Value {
    let mut requests = serde_json::Map::new();
    requests.insert("cpu".into(), json!(resources.cpu_request));
    requests.insert("memory".into(), json!(resources.memory_request));
    let mut limits = serde_json::Map::new();
    if let Some(cpu) = &resources.cpu_limit {
        limits.insert("cpu".into(), json!(cpu));
    }
    if let Some(memory) = &resources.memory_limit {
        limits.insert("memory".into(), json!(memory));
    }
    let mut value = json!({"requests": requests});
    if !limits.is_empty() {
        value["limits"] = Value::Object(limits);
    }
    value
}

/// How the form starts and is judged: a sidecar's startup and readiness probes, a
/// native sidecar's restart policy, a classic sidecar's postStart gate.
fn probes_and_lifecycle(c: &mut Value, form: Form, ipmgr_path: &str, startup_timeout_seconds: u32) {
    if form.runs_alongside() {
        let ready = json!({"command": [ipmgr_path, "ready"]});
        c["startupProbe"] = json!({
            "exec": ready,
            "periodSeconds": 1,
            "timeoutSeconds": 5,
            "failureThreshold": startup_timeout_seconds.max(1),
        });
        // `ipmgr ready` fails while an address of the pod is unassigned, so a lasting
        // failure turns the pod NotReady after about 15 s. A native sidecar's
        // readiness counts toward the pod's Ready condition too (KEP-753).
        c["readinessProbe"] = json!({
            "exec": ready,
            "periodSeconds": 5,
            "timeoutSeconds": 5,
            "failureThreshold": 3,
        });
    }
    match form {
        Form::Init => {}
        Form::NativeSidecar => c["restartPolicy"] = json!("Always"),
        Form::ClassicSidecar => {
            // kubelet starts the next container only when this hook returns.
            c["lifecycle"] = json!({"postStart": {"exec": {"command": [
                ipmgr_path, "ready", "--wait", startup_timeout_seconds.to_string(),
            ]}}});
        }
    }
}
