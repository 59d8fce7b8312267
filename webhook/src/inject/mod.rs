//! The mutation itself: a pod and the injector's configuration in, a decision out.
//! Pure: no I/O, no clock, so the same pod always gets the same answer.
//!
//! - `mode`: what a pod asks for (`Mode`), and the form the manager takes (`Form`).
//! - `pod`: the borrowed view of the pod, only the fields the decision reads.
//! - `request`: the pod's annotations and containers read and checked into a typed
//!   `PodRequest` (mode, QoS, per-pod overrides); every denial is made there.
//! - `floating`: floating addresses, Elastic IPs and route tables, checked, and what
//!   the manager needs to hold them.
//! - `resources`: the manager's CPU and memory: the Guaranteed QoS rule and the
//!   `ipmgmt.aws/resources` override.
//! - `quantity`: Kubernetes quantities, parsed exactly to compare them by value.
//! - `render`: the manager container and its volumes.
//! - here: the configuration, and `Injector::decide`, which reads the request and
//!   then builds the patch from the request alone.
//! - `tests`: the decision on whole pods, by concern.

mod floating;
mod mode;
pub(crate) mod pod;
mod quantity;
mod render;
mod request;
mod resources;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::guard::Findings;
use crate::patch::{Json, Patch, Position};

pub use mode::Mode;
pub use pod::Pod;
pub use quantity::Quantity;
pub use request::check_role_arn;
pub use resources::Resources;

use mode::{Form, PerMode};
use pod::Spec;
use render::IRSA_VOLUME;
use request::{
    DEFAULT_CONTAINER_ANNOTATION, INJECTED_ANNOTATION, List, Overrides, PodRequest, Read,
    SKIP_CONTAINERS_ANNOTATION,
};

/// What gets injected: the flags of `crate::config`, checked there at start-up. Their
/// defaults are clap's; this type has none of its own.
#[derive(Clone, Debug, PartialEq, Eq)]
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
    /// How long a sidecar's release may take (IPMGR_RELEASE_TIMEOUT_SECONDS).
    pub release_timeout_seconds: u32,
    /// Extra variables for ipmgr (log format, deadlines, primary interface).
    pub ipmgr_env: BTreeMap<String, String>,
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
    /// For each mode, indexed by whether the pod is Guaranteed.
    containers: PerMode<[Json; 2]>,
    irsa_volume: Json,
    ready_volume_name: String,
    ready_volume: Json,
    /// The manager's service-account token, for pods that mount none.
    token_volume: Json,
    /// The address-range guard's findings, read by `crate::review` for pods it injects.
    guard: Arc<Findings>,
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
            containers: PerMode::new(|mode| [render(mode, false), render(mode, true)]),
            irsa_volume: Json::of(&render::irsa_volume(&cfg)),
            ready_volume: Json::of(&render::ready_volume(&ready_volume_name)),
            token_volume: Json::of(&render::token_volume()),
            ready_volume_name,
            cfg,
            guard: Arc::new(Findings::none()),
        }
    }

    /// The injector with the guard's findings: pods that ask for a NAD with findings
    /// are warned or denied.
    pub fn with_guard(mut self, guard: Arc<Findings>) -> Self {
        self.guard = guard;
        self
    }

    pub fn guard(&self) -> &Findings {
        &self.guard
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

    /// The patch for a checked request. Nothing here reads the pod's annotations: what
    /// the pod asked for is in the request.
    fn build(&self, spec: &Spec<'_>, request: PodRequest<'_>) -> Decision {
        let cfg = &self.cfg;
        // A request is read only from a pod with the mode annotation: the map exists.
        let annotations_exist = true;
        let PodRequest {
            mode,
            form,
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
        if form.runs_alongside() && !pod::has_name(&spec.volumes, &self.ready_volume_name) {
            new_volumes.push(&self.ready_volume);
        }
        let own_token = (overrides.floating.as_ref())
            .is_some_and(|f| f.holds_lease() && f.pod_token_volume.is_none())
            && !pod::has_name(&spec.volumes, floating::TOKEN_VOLUME);
        if own_token {
            new_volumes.push(&self.token_volume);
        }
        let custom;
        let container = if overrides.is_default() {
            &self.containers.get(mode)[usize::from(guaranteed)]
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
        let list = form.list();
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
        let marker = format!("container={},mode={}", cfg.container_name, form.marker());
        patch.add_to_map(
            &annotations,
            annotations_exist,
            INJECTED_ANNOTATION,
            &marker,
        );
        Decision::Inject {
            mode,
            patch,
            warnings,
        }
    }
}
