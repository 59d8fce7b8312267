//! The mutation itself: a pod and the injector's configuration in, a decision out.
//! Pure: no I/O, no clock, so the same pod always gets the same answer.

use std::borrow::Cow;
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::patch::{Json, Patch, Position};

pub const MODE_ANNOTATION: &str = "ipmgmt.aws/mode";
pub const ROLE_ARN_ANNOTATION: &str = "ipmgmt.aws/role-arn";
pub const ALLOW_REASSIGNMENT_ANNOTATION: &str = "ipmgmt.aws/allow-reassignment";
pub const INJECTED_ANNOTATION: &str = "ipmgmt.aws/injected";
pub const NETWORKS_ANNOTATION: &str = "k8s.v1.cni.cncf.io/networks";
pub const DEFAULT_CONTAINER_ANNOTATION: &str = "kubectl.kubernetes.io/default-container";

/// Names the EKS pod-identity webhook uses, so that both agree on one token volume.
pub const IRSA_VOLUME: &str = "aws-iam-token";
pub const IRSA_MOUNT_PATH: &str = "/var/run/secrets/eks.amazonaws.com/serviceaccount";
pub const IRSA_TOKEN_PATH: &str = "token";

/// Where the sidecar marks itself ready for `ipmgr ready` (the startup probe).
pub const READY_DIR: &str = "/run/ipmgmt";
pub const READY_FILE: &str = "/run/ipmgmt/ready";

/// The parts of a pod the decision reads, borrowed from the request body. Everything
/// else in the pod is skipped, not parsed: the patch only adds, so it never needs it.
#[derive(Debug, Default, Deserialize)]
pub struct Pod<'a> {
    #[serde(borrow, default)]
    pub metadata: Meta<'a>,
    #[serde(borrow, default)]
    pub spec: Option<Spec<'a>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Meta<'a> {
    #[serde(borrow, default)]
    pub name: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub generate_name: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub annotations: Option<BTreeMap<Cow<'a, str>, Cow<'a, str>>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Spec<'a> {
    #[serde(borrow, default)]
    pub containers: Option<Vec<Named<'a>>>,
    #[serde(borrow, default)]
    pub init_containers: Option<Vec<Named<'a>>>,
    #[serde(borrow, default)]
    pub volumes: Option<Vec<Named<'a>>>,
    #[serde(default)]
    pub host_network: Option<bool>,
}

/// A container or volume: only its name matters here.
#[derive(Debug, Deserialize)]
pub struct Named<'a> {
    #[serde(borrow, default)]
    pub name: Option<Cow<'a, str>>,
}

fn has_name(list: &Option<Vec<Named<'_>>>, name: &str) -> bool {
    list.as_ref()
        .is_some_and(|l| l.iter().any(|n| n.name.as_deref() == Some(name)))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Init,
    Sidecar,
}

impl Mode {
    /// The annotation's value. `initContainers` and `initContainer` are the spellings
    /// the hand-written sidecar this replaces used; they keep working.
    pub fn parse(value: &str) -> Result<Mode, String> {
        match value {
            "init" | "initContainers" | "initContainer" => Ok(Mode::Init),
            "sidecar" => Ok(Mode::Sidecar),
            other => Err(format!(
                "annotation {MODE_ANNOTATION} has value {other:?}; allowed values are \"init\" and \"sidecar\" \
                 (\"initContainers\" and \"initContainer\" also mean \"init\")"
            )),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Init => "init",
            Mode::Sidecar => "sidecar",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Resources {
    pub cpu_request: String,
    pub memory_request: String,
    pub cpu_limit: Option<String>,
    pub memory_limit: Option<String>,
}

impl Default for Resources {
    fn default() -> Self {
        Resources {
            cpu_request: "10m".into(),
            memory_request: "16Mi".into(),
            cpu_limit: Some("100m".into()),
            memory_limit: Some("64Mi".into()),
        }
    }
}

/// What gets injected. Built from flags once at start-up and validated there.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct Config {
    pub container_name: String,
    pub image: String,
    pub image_pull_policy: String,
    /// Path of the ipmgr binary inside the image.
    pub ipmgr_path: String,
    /// Inject a regular container instead of a native sidecar (clusters before 1.29,
    /// or with the SidecarContainers feature gate off).
    pub classic_sidecar: bool,
    /// What an empty `ipmgmt.aws/mode` asks for: the platform team's choice, so
    /// workloads can opt in without picking a mode.
    pub default_mode: Mode,
    pub region: Option<String>,
    pub imds_endpoint: Option<String>,
    /// `IPv4` or `IPv6` (IPv6-only nodes).
    pub imds_endpoint_mode: Option<String>,
    /// Tells the SDK not to try IMDS at all (pods cannot reach it with hop limit 1).
    pub imds_disabled: bool,
    /// IAM role for IRSA; a pod's `ipmgmt.aws/role-arn` annotation overrides it.
    pub role_arn: Option<String>,
    pub token_audience: String,
    pub token_expiration_seconds: u32,
    pub resources: Resources,
    pub run_as_user: u32,
    /// How long the sidecar may take to assign the pod's addresses before the
    /// startup probe gives up on it.
    pub startup_timeout_seconds: u32,
    /// Extra variables for ipmgr (log format, deadlines, primary interface).
    pub ipmgr_env: BTreeMap<String, String>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            container_name: "aws-ip-mgmt".into(),
            image: String::new(),
            image_pull_policy: "IfNotPresent".into(),
            ipmgr_path: "/usr/local/bin/ipmgr".into(),
            classic_sidecar: false,
            default_mode: Mode::Init,
            region: None,
            imds_endpoint: None,
            imds_endpoint_mode: None,
            imds_disabled: false,
            role_arn: None,
            token_audience: "sts.amazonaws.com".into(),
            token_expiration_seconds: 86400,
            resources: Resources::default(),
            run_as_user: 65532,
            startup_timeout_seconds: 120,
            ipmgr_env: BTreeMap::new(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Skip {
    /// No `ipmgmt.aws/mode` annotation.
    NotRequested,
    /// A container of the configured name is already there: a reinvocation, or a pod
    /// whose owner added the manager by hand.
    AlreadyInjected,
}

#[derive(Debug)]
pub enum Decision {
    Skip(Skip),
    Inject {
        mode: Mode,
        patch: Patch,
        warnings: Vec<String>,
    },
    Deny(String),
}

/// The configuration with what every patch shares rendered once: the container for
/// each mode (with the configured role), and the volumes.
#[derive(Debug)]
pub struct Injector {
    cfg: Config,
    init: Json,
    sidecar: Json,
    irsa_volume: Json,
    ready_volume_name: String,
    ready_volume: Json,
}

impl Injector {
    pub fn new(cfg: Config) -> Self {
        let ready_volume_name = format!("{}-run", cfg.container_name);
        let role = cfg.role_arn.as_deref();
        Injector {
            init: Json::of(&container(&cfg, Mode::Init, role, true, &ready_volume_name)),
            sidecar: Json::of(&container(
                &cfg,
                Mode::Sidecar,
                role,
                true,
                &ready_volume_name,
            )),
            irsa_volume: Json::of(&irsa_volume(&cfg)),
            ready_volume: Json::of(&json!({
                "name": ready_volume_name,
                "emptyDir": {"medium": "Memory", "sizeLimit": "1Mi"},
            })),
            ready_volume_name,
            cfg,
        }
    }

    pub fn decide(&self, pod: &Pod<'_>) -> Decision {
        let cfg = &self.cfg;
        let annotations = pod.metadata.annotations.as_ref();
        let annotation = |key: &str| annotations.and_then(|a| a.get(key)).map(|v| v.as_ref());
        let Some(requested) = annotation(MODE_ANNOTATION) else {
            return Decision::Skip(Skip::NotRequested);
        };
        let Some(spec) = &pod.spec else {
            return Decision::Deny("the pod has no spec to inject the IP manager into".into());
        };
        if has_name(&spec.containers, &cfg.container_name)
            || has_name(&spec.init_containers, &cfg.container_name)
        {
            return Decision::Skip(Skip::AlreadyInjected);
        }
        let parsed = if requested.is_empty() {
            Ok(cfg.default_mode)
        } else {
            Mode::parse(requested)
        };
        let mode = match parsed {
            Ok(mode) => mode,
            Err(message) => return Decision::Deny(message),
        };
        if spec.host_network == Some(true) {
            return Decision::Deny(format!(
                "annotation {MODE_ANNOTATION} is set on a hostNetwork pod; Multus gives secondary \
                 interfaces only to pods with their own network namespace: remove the annotation \
                 or hostNetwork"
            ));
        }
        let pod_role = match annotation(ROLE_ARN_ANNOTATION) {
            Some(arn) => match check_role_arn(arn) {
                Ok(()) => Some(arn),
                Err(why) => {
                    return Decision::Deny(format!("annotation {ROLE_ARN_ANNOTATION}: {why}"));
                }
            },
            None => None,
        };
        let allow_reassignment = match annotation(ALLOW_REASSIGNMENT_ANNOTATION) {
            None | Some("true") => true,
            Some("false") => false,
            Some(other) => {
                return Decision::Deny(format!(
                    "annotation {ALLOW_REASSIGNMENT_ANNOTATION} has value {other:?}; allowed values are \"true\" and \"false\""
                ));
            }
        };
        let role = pod_role.or(cfg.role_arn.as_deref());

        let mut new_volumes = Vec::new();
        if role.is_some() && !has_name(&spec.volumes, IRSA_VOLUME) {
            new_volumes.push(&self.irsa_volume);
        }
        if mode == Mode::Sidecar && !has_name(&spec.volumes, &self.ready_volume_name) {
            new_volumes.push(&self.ready_volume);
        }
        // The pre-rendered container serves every pod that does not override its settings.
        let custom;
        let container = match (mode, pod_role.is_some() || !allow_reassignment) {
            (Mode::Init, false) => &self.init,
            (Mode::Sidecar, false) => &self.sidecar,
            (_, true) => {
                custom = Json::of(&container(
                    cfg,
                    mode,
                    role,
                    allow_reassignment,
                    &self.ready_volume_name,
                ));
                &custom
            }
        };

        let mut patch = Patch::new();
        let annotations_exist = annotations.is_some();
        if mode == Mode::Sidecar && cfg.classic_sidecar {
            // First, so that kubelet runs its postStart gate before starting the app.
            // `kubectl logs` would then default to the manager: keep it on the app.
            let first_app = spec
                .containers
                .as_ref()
                .and_then(|c| c.first())
                .and_then(|c| c.name.as_deref());
            if let (Some(app), None) = (first_app, annotation(DEFAULT_CONTAINER_ANNOTATION)) {
                patch.add_to_map(
                    &["metadata", "annotations"],
                    annotations_exist,
                    DEFAULT_CONTAINER_ANNOTATION,
                    app,
                );
            }
            patch.add_to_array(
                &["spec", "containers"],
                spec.containers.is_some(),
                Position::First,
                &[container],
            );
        } else {
            // First among init containers: later ones may need the routable addresses.
            patch.add_to_array(
                &["spec", "initContainers"],
                spec.init_containers.is_some(),
                Position::First,
                &[container],
            );
        }
        patch.add_to_array(
            &["spec", "volumes"],
            spec.volumes.is_some(),
            Position::Last,
            &new_volumes,
        );
        patch.add_to_map(
            &["metadata", "annotations"],
            annotations_exist,
            INJECTED_ANNOTATION,
            &injected_marker(cfg, mode),
        );

        let mut warnings = Vec::new();
        if annotation(NETWORKS_ANNOTATION).is_none() {
            warnings.push(format!(
                "{MODE_ANNOTATION} is set but {NETWORKS_ANNOTATION} is not: the IP manager will find no \
                 secondary interface unless Multus attaches one by default"
            ));
        }
        Decision::Inject {
            mode,
            patch,
            warnings,
        }
    }
}

fn injected_marker(cfg: &Config, mode: Mode) -> String {
    let kind = match (mode, cfg.classic_sidecar) {
        (Mode::Init, _) => "init",
        (Mode::Sidecar, false) => "native-sidecar",
        (Mode::Sidecar, true) => "sidecar",
    };
    format!("container={},mode={kind}", cfg.container_name)
}

fn irsa_volume(cfg: &Config) -> Value {
    json!({
        "name": IRSA_VOLUME,
        "projected": {"sources": [{"serviceAccountToken": {
            "audience": cfg.token_audience,
            "expirationSeconds": cfg.token_expiration_seconds,
            "path": IRSA_TOKEN_PATH,
        }}]},
    })
}

fn container(
    cfg: &Config,
    mode: Mode,
    role_arn: Option<&str>,
    allow_reassignment: bool,
    ready_volume: &str,
) -> Value {
    let field = |name: &str, path: &str| json!({"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}});
    let value = |name: &str, value: &str| json!({"name": name, "value": value});
    let mut env = vec![
        field("NODE_NAME", "spec.nodeName"),
        field("POD_NAME", "metadata.name"),
        field("POD_NAMESPACE", "metadata.namespace"),
    ];
    if let Some(region) = &cfg.region {
        env.push(value("AWS_REGION", region));
    }
    if let Some(endpoint) = &cfg.imds_endpoint {
        env.push(value("AWS_EC2_METADATA_SERVICE_ENDPOINT", endpoint));
    }
    if let Some(endpoint_mode) = &cfg.imds_endpoint_mode {
        env.push(value(
            "AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE",
            endpoint_mode,
        ));
    }
    if cfg.imds_disabled {
        env.push(value("AWS_EC2_METADATA_DISABLED", "true"));
    }
    let mut mounts = Vec::new();
    if let Some(arn) = role_arn {
        env.push(value("AWS_ROLE_ARN", arn));
        env.push(value(
            "AWS_WEB_IDENTITY_TOKEN_FILE",
            &format!("{IRSA_MOUNT_PATH}/{IRSA_TOKEN_PATH}"),
        ));
        env.push(value("AWS_STS_REGIONAL_ENDPOINTS", "regional"));
        mounts.push(json!({"name": IRSA_VOLUME, "mountPath": IRSA_MOUNT_PATH, "readOnly": true}));
    }
    if !allow_reassignment {
        env.push(value("IPMGR_ALLOW_REASSIGNMENT", "false"));
    }
    if mode == Mode::Sidecar {
        env.push(value("IPMGR_READY_FILE", READY_FILE));
        mounts.push(json!({"name": ready_volume, "mountPath": READY_DIR}));
    }
    for (name, v) in &cfg.ipmgr_env {
        env.push(value(name, v));
    }

    let mut requests = serde_json::Map::new();
    requests.insert("cpu".into(), json!(cfg.resources.cpu_request));
    requests.insert("memory".into(), json!(cfg.resources.memory_request));
    let mut limits = serde_json::Map::new();
    if let Some(cpu) = &cfg.resources.cpu_limit {
        limits.insert("cpu".into(), json!(cpu));
    }
    if let Some(memory) = &cfg.resources.memory_limit {
        limits.insert("memory".into(), json!(memory));
    }
    let mut resources = json!({"requests": requests});
    if !limits.is_empty() {
        resources["limits"] = Value::Object(limits);
    }

    let mut c = json!({
        "name": cfg.container_name,
        "image": cfg.image,
        "imagePullPolicy": cfg.image_pull_policy,
        "command": [cfg.ipmgr_path, mode.as_str()],
        "env": env,
        "resources": resources,
        "securityContext": {
            "runAsNonRoot": true,
            "runAsUser": cfg.run_as_user,
            "runAsGroup": cfg.run_as_user,
            "readOnlyRootFilesystem": true,
            "allowPrivilegeEscalation": false,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        // ipmgr writes its one-line failure reason there; the pod's status shows it.
        "terminationMessagePolicy": "FallbackToLogsOnError",
    });
    if mode == Mode::Sidecar {
        c["startupProbe"] = json!({
            "exec": {"command": [cfg.ipmgr_path, "ready"]},
            "periodSeconds": 1,
            "timeoutSeconds": 5,
            "failureThreshold": cfg.startup_timeout_seconds.max(1),
        });
        if cfg.classic_sidecar {
            // kubelet starts the next container only when this hook returns.
            c["lifecycle"] = json!({"postStart": {"exec": {"command": [
                cfg.ipmgr_path, "ready", "--wait", cfg.startup_timeout_seconds.to_string(),
            ]}}});
        } else {
            c["restartPolicy"] = json!("Always");
        }
    }
    if !mounts.is_empty() {
        c["volumeMounts"] = Value::Array(mounts);
    }
    c
}

/// `arn:PARTITION:iam::ACCOUNT:role/PATH/NAME`, the only form IRSA accepts.
pub fn check_role_arn(arn: &str) -> Result<(), String> {
    let parts: Vec<&str> = arn.splitn(6, ':').collect();
    let valid = matches!(parts.as_slice(),
        ["arn", partition, "iam", "", account, resource]
            if partition.starts_with("aws")
                && account.len() == 12
                && account.bytes().all(|b| b.is_ascii_digit())
                && resource.strip_prefix("role/").is_some_and(|name| !name.is_empty() && !name.ends_with('/')));
    if valid {
        Ok(())
    } else {
        Err(format!(
            "{arn:?} is not an IAM role ARN; expected arn:aws:iam::123456789012:role/NAME"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decide(pod: &Value, cfg: &Config) -> Decision {
        let text = pod.to_string();
        let view: Pod = serde_json::from_str(&text).expect("test pod parses");
        Injector::new(cfg.clone()).decide(&view)
    }

    fn annotated(mode: &str) -> Value {
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "p", "annotations": {
                MODE_ANNOTATION: mode, NETWORKS_ANNOTATION: "ipvlan-net1"}},
            "spec": {"containers": [{"name": "app", "image": "app:1"}]},
        })
    }

    fn with_annotation(mut pod: Value, key: &str, value: &str) -> Value {
        pod["metadata"]["annotations"][key] = json!(value);
        pod
    }

    fn cfg() -> Config {
        Config {
            image: "ipmgr:test".into(),
            ..Config::default()
        }
    }

    fn applied(pod: &Value, cfg: &Config) -> Value {
        let Decision::Inject { patch, .. } = decide(pod, cfg) else {
            panic!("expected an injection")
        };
        let ops: json_patch::Patch = serde_json::from_slice(&patch.to_bytes()).unwrap();
        let mut doc = pod.clone();
        json_patch::patch(&mut doc, &ops).expect("patch applies");
        doc
    }

    #[test]
    fn mode_spellings() {
        for (value, mode) in [
            ("init", Mode::Init),
            ("initContainers", Mode::Init),
            ("initContainer", Mode::Init),
            ("sidecar", Mode::Sidecar),
        ] {
            assert_eq!(Mode::parse(value), Ok(mode), "{value}");
        }
        let err = Mode::parse("Sidecar").unwrap_err();
        assert!(
            err.contains("\"init\"") && err.contains("\"sidecar\"") && err.contains("\"Sidecar\""),
            "{err}"
        );
    }

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
        assert!(c.get("restartPolicy").is_none());
        assert!(c.get("startupProbe").is_none());
    }

    #[test]
    fn empty_mode_takes_the_configured_default() {
        let init = applied(&annotated(""), &cfg());
        assert_eq!(init["spec"]["initContainers"][0]["command"][1], "init");
        let sidecar_default = Config {
            default_mode: Mode::Sidecar,
            ..cfg()
        };
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
    fn sidecar_mode_is_native_with_startup_probe() {
        let doc = applied(&annotated("sidecar"), &cfg());
        let c = &doc["spec"]["initContainers"][0];
        assert_eq!(c["restartPolicy"], "Always");
        assert_eq!(c["command"][1], "sidecar");
        assert_eq!(c["startupProbe"]["exec"]["command"][1], "ready");
        assert_eq!(doc["spec"]["containers"].as_array().unwrap().len(), 1);
    }

    #[test]
    fn classic_sidecar_goes_first_and_keeps_kubectl_on_the_app() {
        let cfg = Config {
            classic_sidecar: true,
            ..cfg()
        };
        let doc = applied(&annotated("sidecar"), &cfg);
        assert_eq!(doc["spec"]["containers"][0]["name"], "aws-ip-mgmt");
        assert_eq!(doc["spec"]["containers"][1]["name"], "app");
        assert!(doc["spec"]["containers"][0].get("restartPolicy").is_none());
        assert_eq!(
            doc["spec"]["containers"][0]["lifecycle"]["postStart"]["exec"]["command"][2],
            "--wait"
        );
        assert_eq!(
            doc["metadata"]["annotations"][DEFAULT_CONTAINER_ANNOTATION],
            "app"
        );
        assert!(doc["spec"].get("initContainers").is_none());
    }

    #[test]
    fn reinjection_is_a_no_op() {
        for mode in ["init", "sidecar"] {
            let doc = applied(&annotated(mode), &cfg());
            assert!(
                matches!(decide(&doc, &cfg()), Decision::Skip(Skip::AlreadyInjected)),
                "{mode}"
            );
        }
        let classic = Config {
            classic_sidecar: true,
            ..cfg()
        };
        let doc = applied(&annotated("sidecar"), &classic);
        assert!(matches!(
            decide(&doc, &classic),
            Decision::Skip(Skip::AlreadyInjected)
        ));
    }

    #[test]
    fn pre_rendered_and_custom_containers_agree() {
        // A pod-level role equal to the configured one takes the custom path; the
        // container must come out the same as the pre-rendered one.
        let arn = "arn:aws:iam::111122223333:role/ipmgmt";
        let cfg = Config {
            role_arn: Some(arn.into()),
            ..cfg()
        };
        for mode in ["init", "sidecar"] {
            let pre = applied(&annotated(mode), &cfg);
            let custom = applied(
                &with_annotation(annotated(mode), ROLE_ARN_ANNOTATION, arn),
                &cfg,
            );
            assert_eq!(
                pre["spec"]["initContainers"][0], custom["spec"]["initContainers"][0],
                "{mode}"
            );
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
    fn no_role_means_nothing_iam_related() {
        let doc = applied(&annotated("init"), &cfg());
        let text = doc.to_string();
        assert!(
            !text.contains("AWS_ROLE_ARN") && !text.contains(IRSA_VOLUME),
            "{text}"
        );
    }

    #[test]
    fn role_annotation_overrides_configured_role() {
        let p = with_annotation(
            annotated("init"),
            ROLE_ARN_ANNOTATION,
            "arn:aws:iam::111122223333:role/pod-role",
        );
        let cfg = Config {
            role_arn: Some("arn:aws:iam::111122223333:role/global".into()),
            ..cfg()
        };
        let doc = applied(&p, &cfg);
        let env = &doc["spec"]["initContainers"][0]["env"];
        let arn = env
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == "AWS_ROLE_ARN")
            .unwrap();
        assert_eq!(arn["value"], "arn:aws:iam::111122223333:role/pod-role");
        assert_eq!(doc["spec"]["volumes"][0]["name"], IRSA_VOLUME);
    }

    #[test]
    fn role_arns() {
        for ok in [
            "arn:aws:iam::111122223333:role/r",
            "arn:aws-cn:iam::111122223333:role/path/r",
        ] {
            assert_eq!(check_role_arn(ok), Ok(()), "{ok}");
        }
        for bad in [
            "arn:aws:iam::11112222333:role/r",
            "arn:aws:iam::111122223333:user/r",
            "arn:aws:iam::111122223333:role/",
            "arn:aws:s3:::bucket",
            "role/r",
        ] {
            assert!(check_role_arn(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn bad_reassignment_value_is_denied() {
        let p = with_annotation(annotated("init"), ALLOW_REASSIGNMENT_ANNOTATION, "no");
        let Decision::Deny(message) = decide(&p, &cfg()) else {
            panic!("expected a denial")
        };
        assert!(message.contains(ALLOW_REASSIGNMENT_ANNOTATION), "{message}");
    }

    #[test]
    fn reassignment_off_reaches_ipmgr() {
        let p = with_annotation(annotated("init"), ALLOW_REASSIGNMENT_ANNOTATION, "false");
        let doc = applied(&p, &cfg());
        assert!(
            doc["spec"]["initContainers"][0]["env"]
                .to_string()
                .contains("IPMGR_ALLOW_REASSIGNMENT")
        );
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
}
