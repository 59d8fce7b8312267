//! A pod's floating addresses, its Elastic IP and its route tables
//! (`ipmgmt_common::floating` reads their forms), checked for what the manager needs to
//! serve them, and what it then gets: the settings, the one capability that lets it add
//! an address to the pod's interface, and a service-account token for the Lease its
//! replicas contend for.

use ipmgmt_common::annotations::MODE;
use ipmgmt_common::floating::{self, ELASTIC_IP, FLOATING_IPS, ROUTE_TABLES};

use super::Form;
use super::pod::Spec;

/// The ServiceAccount admission plugin names the token volume it adds
/// `kube-api-access-` and five random characters.
const POD_TOKEN_VOLUME_PREFIX: &str = "kube-api-access-";
/// The manager's own token volume, for pods that mount none.
pub const TOKEN_VOLUME: &str = "ipmgmt-kube-api-access";
/// Where client libraries look for the in-cluster token, CA and namespace.
pub const TOKEN_MOUNT_PATH: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// What a pod asked for, checked; values as the manager reads them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Floating<'p> {
    /// The floating addresses, as `IPMGR_FLOATING_IPS` (written canonically); none for
    /// a pod that asks only for an Elastic IP from a pool for its own address.
    pub ips: Option<String>,
    pub elastic_ip: Option<&'p str>,
    pub route_tables: Option<&'p str>,
    /// The pod's own token volume, when the ServiceAccount admission plugin added one;
    /// otherwise the manager gets `TOKEN_VOLUME`.
    pub pod_token_volume: Option<&'p str>,
}

impl Floating<'_> {
    /// Whether the manager holds a Lease and adds addresses to the pod's interface.
    pub fn holds_lease(&self) -> bool {
        self.ips.is_some()
    }
}

/// The pod's floating settings, None when it asks for none; refused with the reason.
pub fn read<'p>(
    annotation: &impl Fn(&str) -> Option<&'p str>,
    spec: &'p Spec<'_>,
    form: Form,
) -> Result<Option<Floating<'p>>, String> {
    let ips = annotation(FLOATING_IPS)
        .map(floating::addresses)
        .transpose()
        .map_err(annotated)?;
    let elastic_ip = annotation(ELASTIC_IP);
    if let Some(text) = elastic_ip {
        floating::elastic_ip(text, ips.as_deref().unwrap_or_default()).map_err(annotated)?;
    }
    let route_tables = annotation(ROUTE_TABLES);
    if let Some(text) = route_tables {
        floating::route_tables(text).map_err(annotated)?;
        if ips.is_none() {
            return Err(format!(
                "annotation {ROUTE_TABLES} routes floating addresses to their holder, and the pod \
                 names none: add {FLOATING_IPS}, or remove {ROUTE_TABLES}"
            ));
        }
    }
    if ips.is_none() && elastic_ip.is_none() {
        return Ok(None);
    }
    if form == Form::Init {
        let asked = if ips.is_some() {
            FLOATING_IPS
        } else {
            ELASTIC_IP
        };
        return Err(format!(
            "annotation {asked} needs {MODE}: sidecar; the IP manager holds floating addresses \
             and Elastic IPs while the pod runs, and in init mode it exits before the app starts"
        ));
    }
    let pod_token_volume = spec.volumes.iter().flatten().find_map(|v| {
        v.name
            .as_deref()
            .filter(|name| name.starts_with(POD_TOKEN_VOLUME_PREFIX))
    });
    Ok(Some(Floating {
        ips: ips.map(|ips| {
            let written: Vec<String> = ips.iter().map(ToString::to_string).collect();
            written.join(",")
        }),
        elastic_ip: elastic_ip.map(str::trim),
        route_tables: route_tables.map(str::trim),
        pod_token_volume,
    }))
}

/// The common crate's refusals name the annotation first; a denial says it is one.
fn annotated(why: String) -> String {
    format!("annotation {why}")
}
