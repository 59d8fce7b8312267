//! The mutation itself: a pod and the injector's configuration in, a decision out.
//! Pure: no I/O, no clock, so the same pod always gets the same answer.
//!
//! - `pod`: the borrowed view of the pod, only the fields the decision reads.
//! - `request`: the pod's annotations and containers read and checked into a typed
//!   request (mode, QoS, per-pod overrides); every denial is made there.
//! - `resources`: the manager's CPU and memory: the Guaranteed QoS rule and the
//!   `ipmgmt.aws/resources` override.
//! - `quantity`: Kubernetes quantities, parsed exactly to compare them by value.
//! - `render`: the manager container and its volumes.
//! - here: the configuration, and `Injector::decide`, which reads the request and
//!   builds the patch from it.

mod pod;
mod quantity;
mod render;
mod request;
mod resources;

use serde::{Deserialize, Serialize};

use crate::patch::{Json, Patch, Position};

pub use pod::{Container, Meta, Named, Pod, Spec};
pub use quantity::Quantity;
pub use render::{IRSA_MOUNT_PATH, IRSA_TOKEN_PATH, IRSA_VOLUME, READY_DIR, READY_FILE};
pub use request::{
    ALLOW_REASSIGNMENT_ANNOTATION, DEFAULT_CONTAINER_ANNOTATION, DEFAULT_GRACE_SECONDS,
    INJECTED_ANNOTATION, INTERFACES_ANNOTATION, MODE_ANNOTATION, NETWORKS_ANNOTATION, Overrides,
    ROLE_ARN_ANNOTATION, SKIP_CONTAINERS_ANNOTATION, check_interfaces, check_role_arn,
    release_delay_seconds,
};
pub use resources::{RESOURCES_ANNOTATION, Resources};

use request::{List, Read, Request};

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
    pub ipmgr_env: std::collections::BTreeMap<String, String>,
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
            ipmgr_env: Default::default(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Skip {
    /// No `ipmgmt.aws/mode` annotation.
    NotRequested,
    /// The manager is there and first: a reinvocation, or a pod whose owner added the
    /// manager by hand.
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
    /// The manager is there, but another webhook has since put containers ahead of
    /// it: one `move` puts it back in front, and nothing else changes.
    Reorder {
        patch: Patch,
    },
    Deny(String),
}

/// The configuration with what every patch shares rendered once: the container for
/// each mode, in pods with and without the Guaranteed QoS class, and the volumes.
#[derive(Debug)]
pub struct Injector {
    cfg: Config,
    /// Indexed by `[mode is sidecar][pod is guaranteed]`.
    containers: [[Json; 2]; 2],
    irsa_volume: Json,
    ready_volume_name: String,
    ready_volume: Json,
}

impl Injector {
    pub fn new(cfg: Config) -> Self {
        let ready_volume_name = format!("{}-run", cfg.container_name);
        let render = |mode, guaranteed| {
            Json::of(&render::container(
                &cfg,
                mode,
                guaranteed,
                &Overrides::default(),
                &ready_volume_name,
            ))
        };
        Injector {
            containers: [
                [render(Mode::Init, false), render(Mode::Init, true)],
                [render(Mode::Sidecar, false), render(Mode::Sidecar, true)],
            ],
            irsa_volume: Json::of(&render::irsa_volume(&cfg)),
            ready_volume: Json::of(&render::ready_volume(&ready_volume_name)),
            ready_volume_name,
            cfg,
        }
    }

    pub fn decide(&self, pod: &Pod<'_>) -> Decision {
        match request::read(pod, &self.cfg) {
            Read::Skip(skip) => Decision::Skip(skip),
            Read::Deny(message) => Decision::Deny(message),
            Read::Present { index: 0, .. } => Decision::Skip(Skip::AlreadyInjected),
            Read::Present { list, index } => {
                let mut patch = Patch::new();
                patch.move_to_front(&list.path(), index);
                Decision::Reorder { patch }
            }
            Read::Inject { spec, request } => self.build(spec, request),
        }
    }

    fn build(&self, spec: &Spec<'_>, request: Request<'_>) -> Decision {
        let cfg = &self.cfg;
        // A request is read only from a pod with the mode annotation: the map exists.
        let annotations_exist = true;
        let Request {
            mode,
            guaranteed,
            overrides,
            skip_containers,
            default_container,
            warnings,
        } = request;
        let role = overrides.role_arn.or(cfg.role_arn.as_deref());
        let mut new_volumes = Vec::new();
        if role.is_some() && !pod::has_name(&spec.volumes, IRSA_VOLUME) {
            new_volumes.push(&self.irsa_volume);
        }
        if mode == Mode::Sidecar && !pod::has_name(&spec.volumes, &self.ready_volume_name) {
            new_volumes.push(&self.ready_volume);
        }
        let custom;
        let container = if overrides.is_default() {
            &self.containers[usize::from(mode == Mode::Sidecar)][usize::from(guaranteed)]
        } else {
            custom = Json::of(&render::container(
                cfg,
                mode,
                guaranteed,
                &overrides,
                &self.ready_volume_name,
            ));
            &custom
        };

        let mut patch = Patch::new();
        let annotations = ["metadata", "annotations"];
        if let Some(app) = default_container {
            // `kubectl logs` would default to the manager, first among containers.
            patch.add_to_map(
                &annotations,
                annotations_exist,
                DEFAULT_CONTAINER_ANNOTATION,
                app,
            );
        }
        let list = if mode == Mode::Sidecar && cfg.classic_sidecar {
            // First, so that kubelet runs its postStart gate before starting the app.
            List::Containers
        } else {
            // First among init containers: later ones may need the routable addresses.
            List::InitContainers
        };
        let exists = match list {
            List::Containers => spec.containers.is_some(),
            List::InitContainers => spec.init_containers.is_some(),
        };
        patch.add_to_array(&list.path(), exists, Position::First, &[container]);
        patch.add_to_array(
            &["spec", "volumes"],
            spec.volumes.is_some(),
            Position::Last,
            &new_volumes,
        );
        if let Some(names) = &skip_containers {
            // Replaces the pod's value, which `names` keeps in front.
            patch.add_to_map(
                &annotations,
                annotations_exist,
                SKIP_CONTAINERS_ANNOTATION,
                names,
            );
        }
        patch.add_to_map(
            &annotations,
            annotations_exist,
            INJECTED_ANNOTATION,
            &injected_marker(cfg, mode),
        );
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

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

    fn guaranteed(mode: &str) -> Value {
        let mut pod = annotated(mode);
        pod["spec"]["containers"][0]["resources"] = json!({"requests": {"cpu": "2", "memory": "4Gi"}, "limits": {"cpu": "2000m", "memory": "4Gi"}});
        pod
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

    fn classic() -> Config {
        Config {
            classic_sidecar: true,
            ..cfg()
        }
    }

    fn applied(pod: &Value, cfg: &Config) -> Value {
        let patch = match decide(pod, cfg) {
            Decision::Inject { patch, .. } | Decision::Reorder { patch } => patch,
            other => panic!("expected a patch, got {other:?}"),
        };
        let ops: json_patch::Patch = serde_json::from_slice(&patch.to_bytes()).unwrap();
        let mut doc = pod.clone();
        json_patch::patch(&mut doc, &ops).expect("patch applies");
        doc
    }

    /// The injected container, wherever the configuration puts it.
    fn manager(doc: &Value) -> &Value {
        let all = doc["spec"]["initContainers"]
            .as_array()
            .into_iter()
            .flatten();
        all.chain(doc["spec"]["containers"].as_array().into_iter().flatten())
            .find(|c| c["name"] == "aws-ip-mgmt")
            .expect("the manager is in the pod")
    }

    fn env<'a>(container: &'a Value, name: &str) -> Option<&'a str> {
        let list = container["env"].as_array()?;
        let mut found = list.iter().filter(|e| e["name"] == name);
        let first = found.next()?;
        assert!(found.next().is_none(), "{name} set twice");
        first["value"].as_str()
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
        for absent in ["restartPolicy", "startupProbe", "readinessProbe"] {
            assert!(c.get(absent).is_none(), "{absent}");
        }
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
    fn reinjection_is_a_no_op() {
        for mode in ["init", "sidecar"] {
            let doc = applied(&annotated(mode), &cfg());
            assert!(
                matches!(decide(&doc, &cfg()), Decision::Skip(Skip::AlreadyInjected)),
                "{mode}"
            );
        }
        let doc = applied(&annotated("sidecar"), &classic());
        assert!(matches!(
            decide(&doc, &classic()),
            Decision::Skip(Skip::AlreadyInjected)
        ));
    }

    #[test]
    fn reinvocation_moves_the_manager_back_to_the_front_and_changes_nothing_else() {
        let late = json!({"name": "late", "image": "late:1", "restartPolicy": "Always"});
        for (mode, cfg, list) in [
            ("init", cfg(), "initContainers"),
            ("sidecar", cfg(), "initContainers"),
            ("sidecar", classic(), "containers"),
        ] {
            let mut doc = applied(&annotated(mode), &cfg);
            // Another webhook, after ours, puts two containers in front.
            let items = doc["spec"][list].as_array_mut().unwrap();
            items.insert(0, late.clone());
            items.insert(1, json!({"name": "later"}));
            let Decision::Reorder { patch } = decide(&doc, &cfg) else {
                panic!("{mode} {list}: expected a reorder")
            };
            let ops: Value = serde_json::from_slice(&patch.to_bytes()).unwrap();
            assert_eq!(
                ops,
                json!([{"op": "move", "from": format!("/spec/{list}/2"), "path": format!("/spec/{list}/0")}]),
                "{mode} {list}"
            );
            let moved = applied(&doc, &cfg);
            let names: Vec<_> = moved["spec"][list]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| c["name"].clone())
                .collect();
            assert_eq!(
                names[..3],
                [json!("aws-ip-mgmt"), json!("late"), json!("later")],
                "{mode} {list}"
            );
            let mut expected = doc.clone();
            let items = expected["spec"][list].as_array_mut().unwrap();
            let m = items.remove(2);
            items.insert(0, m);
            assert_eq!(moved, expected, "only the order changes");
            assert!(matches!(
                decide(&moved, &cfg),
                Decision::Skip(Skip::AlreadyInjected)
            ));
        }
    }

    /// Every per-pod setting takes the custom render and shows in the container; the
    /// same pod without it gets the pre-rendered one.
    #[test]
    fn every_per_pod_setting_reaches_the_container() {
        type Check = fn(&Value) -> bool;
        let cases: [(&str, Value, Config, Check); 6] = [
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
            Config {
                role_arn: Some(arn.into()),
                ..cfg()
            },
            Config {
                role_arn: Some(arn.into()),
                ..classic()
            },
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
        pod["spec"]["containers"][0]["resources"] =
            json!({"limits": {"cpu": "1", "memory": "1Gi"}});
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
        let cfg = Config {
            ipmgr_env: [
                ("IPMGR_INTERFACES".into(), "net9".into()),
                ("IPMGR_LOG_FORMAT".into(), "json".into()),
            ]
            .into(),
            ..cfg()
        };
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
    fn no_role_means_no_irsa_settings() {
        let doc = applied(&annotated("init"), &cfg());
        let text = manager(&doc).to_string() + &doc["spec"]["volumes"].to_string();
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
        assert_eq!(
            env(manager(&doc), "AWS_ROLE_ARN"),
            Some("arn:aws:iam::111122223333:role/pod-role")
        );
        assert_eq!(doc["spec"]["volumes"][0]["name"], IRSA_VOLUME);
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
