//! Reading what a pod asks for: its annotations and containers, checked, into a typed
//! `PodRequest`. Every denial is made here; building the patch only follows the request.

use super::floating::{self, Floating};
use super::pod::{self, Pod, Spec};
use super::resources::{self, Override, RESOURCES_ANNOTATION, Resources};
use super::{Config, Form, Mode, Skip};

use ipmgmt_common::annotations;

pub const MODE_ANNOTATION: &str = annotations::MODE;
pub const ROLE_ARN_ANNOTATION: &str = annotations::ROLE_ARN;
pub const ALLOW_REASSIGNMENT_ANNOTATION: &str = annotations::ALLOW_REASSIGNMENT;
pub const INTERFACES_ANNOTATION: &str = annotations::INTERFACES;
pub const INJECTED_ANNOTATION: &str = annotations::INJECTED;
pub const NETWORKS_ANNOTATION: &str = annotations::MULTUS_NETWORKS;
pub const DEFAULT_CONTAINER_ANNOTATION: &str = "kubectl.kubernetes.io/default-container";
/// The EKS pod-identity webhook gives the pod's role to every container not named here.
pub const SKIP_CONTAINERS_ANNOTATION: &str = "eks.amazonaws.com/skip-containers";

/// kubelet's default when the pod sets no `terminationGracePeriodSeconds`.
pub const DEFAULT_GRACE_SECONDS: i64 = 30;

/// The per-pod settings that change the manager container. The default value is what
/// the pre-rendered containers were built from: any other value takes the custom
/// render, so a field added here cannot be lost to that shortcut.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Overrides<'p> {
    /// `ipmgmt.aws/role-arn`.
    pub role_arn: Option<&'p str>,
    /// `ipmgmt.aws/allow-reassignment: "false"`.
    pub reassignment_off: bool,
    /// `ipmgmt.aws/resources`, applied to the configured resources.
    pub resources: Option<Resources>,
    /// `ipmgmt.aws/interfaces`.
    pub interfaces: Option<&'p str>,
    /// Classic sidecars whose pod's grace period is not kubelet's default.
    pub release_delay_seconds: Option<u32>,
    /// `ipmgmt.aws/floating-ips`, `ipmgmt.aws/elastic-ip`, `ipmgmt.aws/route-tables`.
    pub floating: Option<Floating<'p>>,
}

impl Overrides<'_> {
    pub fn is_default(&self) -> bool {
        *self == Overrides::default()
    }
}

/// What one pod asks for, read and checked: the patch is built from this alone.
#[derive(Debug)]
pub struct PodRequest<'p> {
    pub mode: Mode,
    /// The form the manager takes: the mode, and whether native sidecars are off.
    pub form: Form,
    /// The pod is Guaranteed without the manager; the manager's requests then equal
    /// its limits.
    pub guaranteed: bool,
    pub overrides: Overrides<'p>,
    /// The new value of `eks.amazonaws.com/skip-containers`, unless the manager is
    /// already named there.
    pub skip_containers: Option<String>,
    /// Classic sidecars: the app container `kubectl logs` should keep defaulting to.
    pub default_container: Option<&'p str>,
    pub warnings: Vec<String>,
}

/// Which list of the pod holds the manager.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum List {
    InitContainers,
    Containers,
}

impl List {
    pub fn path(self) -> [&'static str; 2] {
        match self {
            List::InitContainers => ["spec", "initContainers"],
            List::Containers => ["spec", "containers"],
        }
    }
}

/// What reading a pod found. Returned once per review and matched at once, never
/// stored, so the request is not boxed however many overrides it grows.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Read<'p, 'a> {
    Skip(Skip),
    /// The manager is in the pod already, at `index` of `list`.
    Present {
        list: List,
        index: usize,
    },
    Deny(String),
    Inject {
        spec: &'p Spec<'a>,
        request: PodRequest<'p>,
    },
}

pub fn read<'p, 'a>(pod: &'p Pod<'a>, cfg: &Config) -> Read<'p, 'a> {
    let annotations = pod.metadata.annotations.as_ref();
    let annotation = |key: &str| annotations.and_then(|a| a.get(key)).map(|v| v.as_ref());
    let Some(requested) = annotation(MODE_ANNOTATION) else {
        return Read::Skip(Skip::NotRequested);
    };
    let Some(spec) = &pod.spec else {
        return Read::Deny("the pod has no spec to inject the IP manager into".into());
    };
    let name = cfg.container_name.as_str();
    let named = spec
        .all_containers()
        .filter(|c| c.name.as_deref() == Some(name))
        .count();
    if named > 1 {
        // The apiserver would refuse the pod later; a `move` here would keep both.
        return Read::Deny(format!(
            "the pod has {named} containers named {name}; container names must be unique, and \
             {name} is the IP manager's: rename the others"
        ));
    }
    if let Some(index) = pod::position(&spec.init_containers, name) {
        return Read::Present {
            list: List::InitContainers,
            index,
        };
    }
    if let Some(index) = pod::position(&spec.containers, name) {
        return Read::Present {
            list: List::Containers,
            index,
        };
    }
    match checked(spec, &annotation, requested, cfg) {
        Ok(request) => Read::Inject { spec, request },
        Err(message) => Read::Deny(message),
    }
}

fn checked<'p>(
    spec: &'p Spec<'_>,
    annotation: &impl Fn(&str) -> Option<&'p str>,
    requested: &str,
    cfg: &Config,
) -> Result<PodRequest<'p>, String> {
    let mode = if requested.is_empty() {
        cfg.default_mode
    } else {
        Mode::parse(requested)?
    };
    if spec.host_network == Some(true) {
        return Err(format!(
            "annotation {MODE_ANNOTATION} is set on a hostNetwork pod; Multus gives secondary \
             interfaces only to pods with their own network namespace: remove the annotation \
             or hostNetwork"
        ));
    }
    let role_arn = annotation(ROLE_ARN_ANNOTATION)
        .map(|arn| {
            check_role_arn(arn)
                .map(|()| arn)
                .map_err(|why| format!("annotation {ROLE_ARN_ANNOTATION}: {why}"))
        })
        .transpose()?;
    let reassignment_off = match annotation(ALLOW_REASSIGNMENT_ANNOTATION) {
        None | Some("true") => false,
        Some("false") => true,
        Some(other) => {
            return Err(format!(
                "annotation {ALLOW_REASSIGNMENT_ANNOTATION} has value {other:?}; allowed values are \"true\" and \"false\""
            ));
        }
    };
    let interfaces = annotation(INTERFACES_ANNOTATION)
        .map(|names| check_interfaces(names).map(|()| names))
        .transpose()?;

    let guaranteed = resources::is_guaranteed(spec.all_containers())
        .map_err(|why| format!("cannot tell the pod's QoS class: {why}"))?;
    let mut warnings = Vec::new();
    let resources = match annotation(RESOURCES_ANNOTATION) {
        None => None,
        Some(value) => {
            let over = Override::parse(value)?;
            let (resources, warning) = cfg.resources.with_override(guaranteed, &over)?;
            warnings.extend(warning);
            Some(resources)
        }
    };
    let form = Form::of(mode, cfg.classic_sidecar);
    let floating = floating::read(annotation, spec, form)?;
    let (release_delay, default_container) = match form {
        Form::Init | Form::NativeSidecar => (None, None),
        Form::ClassicSidecar => {
            let delay_for = |grace| release_delay_seconds(grace, cfg.release_timeout_seconds);
            let delay = spec
                .termination_grace_period_seconds
                .map(delay_for)
                .filter(|&delay| delay != delay_for(DEFAULT_GRACE_SECONDS));
            let app = match annotation(DEFAULT_CONTAINER_ANNOTATION) {
                Some(_) => None,
                None => spec
                    .containers
                    .as_ref()
                    .and_then(|c| c.first())
                    .and_then(|c| c.name.as_deref()),
            };
            (delay, app)
        }
    };
    if annotation(NETWORKS_ANNOTATION).is_none() {
        warnings.push(format!(
            "{MODE_ANNOTATION} is set but {NETWORKS_ANNOTATION} is not: the IP manager will find no \
             secondary interface unless Multus attaches one by default"
        ));
    }
    Ok(PodRequest {
        mode,
        form,
        guaranteed,
        overrides: Overrides {
            role_arn,
            reassignment_off,
            resources,
            interfaces,
            release_delay_seconds: release_delay,
            floating,
        },
        skip_containers: skip_containers(
            annotation(SKIP_CONTAINERS_ANNOTATION),
            &cfg.container_name,
        ),
        default_container,
        warnings,
    })
}

/// How long a classic sidecar keeps the pod's addresses after SIGTERM: kubelet signals
/// it together with the app, which may still be draining connections on them. It
/// starts releasing with the release timeout and 5 s more of the grace period left, so
/// the release ends before SIGKILL, and waits at most 20 s. Native sidecars need none:
/// kubelet stops them only after the app containers have exited.
pub fn release_delay_seconds(grace_seconds: i64, release_timeout_seconds: u32) -> u32 {
    let left = i64::from(release_timeout_seconds) + 5;
    grace_seconds.saturating_sub(left).clamp(0, 20) as u32
}

/// The manager added to the pod-identity webhook's skip list, theirs kept as written.
/// None when it is listed already. That webhook reads the list as one CSV record and
/// does not trim, so neither does this.
fn skip_containers(existing: Option<&str>, manager: &str) -> Option<String> {
    let existing = existing.unwrap_or("");
    if existing.split(',').any(|name| name == manager) {
        return None;
    }
    Some(match existing {
        "" => manager.to_owned(),
        listed if listed.ends_with(',') => format!("{listed}{manager}"),
        listed => format!("{listed},{manager}"),
    })
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

/// Comma-separated Linux interface names, as the kernel accepts them (dev_valid_name):
/// 1 to 15 bytes, no '/', ':', whitespace or NUL, not "." or "..".
pub fn check_interfaces(names: &str) -> Result<(), String> {
    for name in names.split(',') {
        let bad_char = name
            .chars()
            .find(|&c| c == '/' || c == ':' || c == '\0' || c.is_whitespace());
        let problem = if name.is_empty() {
            "one of the names is empty".to_owned()
        } else if name.len() > 15 {
            format!("{name:?} is longer than 15 bytes")
        } else if name == "." || name == ".." {
            format!("{name:?} is not a name the kernel allows")
        } else if let Some(c) = bad_char {
            let what = match c {
                '/' | ':' => format!("{c:?}"),
                '\0' => "NUL".to_owned(),
                _ => "whitespace".to_owned(),
            };
            format!("{name:?} contains {what}")
        } else {
            continue;
        };
        return Err(format!(
            "annotation {INTERFACES_ANNOTATION} has value {names:?}: {problem}; expected Linux \
             interface names (1 to 15 bytes, no '/', ':', whitespace or NUL) separated by commas, \
             such as \"net1,net2\""
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skip_list_keeps_theirs_and_adds_the_manager_once() {
        for (existing, merged) in [
            (None, Some("aws-ip-mgmt")),
            (Some(""), Some("aws-ip-mgmt")),
            (Some("istio-proxy"), Some("istio-proxy,aws-ip-mgmt")),
            (Some("b,a"), Some("b,a,aws-ip-mgmt")),
            (Some("a,"), Some("a,aws-ip-mgmt")),
            (Some("a,aws-ip-mgmt,b"), None),
            // " aws-ip-mgmt" is another name to a CSV reader that does not trim.
            (Some("a, aws-ip-mgmt"), Some("a, aws-ip-mgmt,aws-ip-mgmt")),
            (Some("aws-ip-mgmt-2"), Some("aws-ip-mgmt-2,aws-ip-mgmt")),
        ] {
            assert_eq!(
                skip_containers(existing, "aws-ip-mgmt").as_deref(),
                merged,
                "{existing:?}"
            );
        }
    }

    #[test]
    fn release_delay_leaves_the_release_timeout_and_five_seconds() {
        for (grace, timeout, delay) in [(30, 15, 10), (30, 25, 0), (60, 1, 20), (12, 1, 6)] {
            assert_eq!(
                release_delay_seconds(grace, timeout),
                delay,
                "grace {grace}, timeout {timeout}"
            );
        }
    }

    #[test]
    fn release_delay_leaves_ten_seconds_and_waits_at_most_twenty() {
        for (grace, delay) in [
            (30, 20),
            (0, 0),
            (5, 0),
            (10, 0),
            (15, 5),
            (25, 15),
            (300, 20),
            (i64::MIN, 0),
            (i64::MAX, 20),
        ] {
            assert_eq!(release_delay_seconds(grace, 5), delay, "grace {grace}");
        }
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
    fn interface_names() {
        for ok in [
            "net1",
            "net1,net2",
            "a",
            "fifteen-bytes-x",
            "vlan.100",
            "n@t",
        ] {
            assert_eq!(check_interfaces(ok), Ok(()), "{ok}");
        }
        for (bad, says) in [
            ("", "empty"),
            ("net1,", "empty"),
            ("net1,,net2", "empty"),
            ("sixteen-bytes-xx", "\"sixteen-bytes-xx\" is longer than 15"),
            (".", "\".\" is not a name the kernel allows"),
            ("net1,..", "\"..\" is not a name"),
            ("net/1", "\"net/1\" contains '/'"),
            ("net:1", "\"net:1\" contains ':'"),
            ("net1, net2", "\" net2\" contains whitespace"),
            ("net\t1", "contains whitespace"),
            ("net\u{0}", "contains NUL"),
        ] {
            let err = check_interfaces(bad).unwrap_err();
            assert!(
                err.contains(INTERFACES_ANNOTATION) && err.contains(says),
                "{bad:?}: {err}"
            );
        }
    }
}
