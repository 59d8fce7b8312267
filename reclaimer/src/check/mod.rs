//! `ipmgmt check`: what is wrong with an install, said the same way every time, one
//! line per check and one line of what to do per failure. It reads the cluster with
//! the user's kubeconfig and EC2 with their credentials, and writes nothing (the
//! webhook is tried with a server-side dry run).
//!
//! The report is data (`Report`): the text form (✓/✗/–, colour only on a terminal)
//! and the JSON form (`--output json`) are two renderings of it.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingAdmissionPolicy,
};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use k8s_openapi::jiff::Timestamp;
use kube::api::{DynamicObject, ListParams, PostParams};
use kube::core::{Selector, SelectorExt};
use kube::{Api, Client};
use serde::Serialize;
use serde_json::json;

use crate::ec2::{Ec2, MultusEni, SdkEc2};

mod iam;
pub use iam::{Role, role_profile};

/// The check's EC2 retries: a few, quickly; a user is waiting.
pub const RETRIES: ipmgmt_common::aws::Retries = ipmgmt_common::aws::Retries {
    max_attempts: 3,
    initial_backoff: std::time::Duration::from_millis(200),
};
use crate::guard::{self, Nad, ipam};
use crate::reclaim::claims;
use crate::view::{node_instance, served};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Pass,
    Fail,
    /// Not applicable here (a component that is not installed, say); not a failure.
    Skip,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Check {
    pub status: Status,
    /// What was checked, and what was found.
    pub what: String,
    /// What to do, for a failure.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Section {
    pub name: String,
    pub checks: Vec<Check>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Report {
    pub ok: bool,
    pub sections: Vec<Section>,
}

impl Section {
    fn new(name: &str) -> Self {
        Section {
            name: name.to_owned(),
            checks: Vec::new(),
        }
    }
    fn pass(&mut self, what: impl Into<String>) {
        self.checks.push(Check {
            status: Status::Pass,
            what: what.into(),
            fix: None,
        });
    }
    fn fail(&mut self, what: impl Into<String>, fix: impl Into<String>) {
        self.checks.push(Check {
            status: Status::Fail,
            what: what.into(),
            fix: Some(fix.into()),
        });
    }
    fn skip(&mut self, what: impl Into<String>) {
        self.checks.push(Check {
            status: Status::Skip,
            what: what.into(),
            fix: None,
        });
    }
}

impl Report {
    fn from(sections: Vec<Section>) -> Self {
        let ok = (sections.iter())
            .flat_map(|s| &s.checks)
            .all(|c| c.status != Status::Fail);
        Report { ok, sections }
    }

    /// The terminal form; `colour` only when writing to a terminal.
    pub fn text(&self, colour: bool) -> String {
        let paint = |code: &str, s: &str| match colour {
            true => format!("\x1b[{code}m{s}\x1b[0m"),
            false => s.to_owned(),
        };
        let mut out = String::new();
        for section in &self.sections {
            let _ = writeln!(out, "{}", section.name);
            for check in &section.checks {
                let mark = match check.status {
                    Status::Pass => paint("32", "✓"),
                    Status::Fail => paint("31", "✗"),
                    Status::Skip => paint("2", "–"),
                };
                let _ = writeln!(out, "  {mark} {}", check.what);
                if let Some(fix) = &check.fix {
                    let _ = writeln!(out, "      → {fix}");
                }
            }
            out.push('\n');
        }
        let failed = (self.sections.iter())
            .flat_map(|s| &s.checks)
            .filter(|c| c.status == Status::Fail)
            .count();
        let _ = match failed {
            0 => writeln!(out, "{}", paint("32", "all checks passed")),
            n => writeln!(
                out,
                "{}",
                paint(
                    "31",
                    &format!("{n} check{} failed", if n == 1 { "" } else { "s" })
                )
            ),
        };
        out
    }
}

/// Where the chart is installed, and what to judge with.
#[derive(Clone, Debug)]
pub struct Options {
    /// The release's full name (`helm install ipmgmt …` → `ipmgmt`).
    pub name: String,
    /// The release's namespace.
    pub namespace: String,
    /// Where the webhook is tried with a dry-run pod.
    pub dry_run_namespace: String,
    /// NAD masters that are not `ethN`.
    pub masters: BTreeMap<String, i32>,
    /// The roles whose permissions are tried, each with an AWS profile holding its
    /// credentials.
    pub iam: Vec<(Role, String)>,
    /// The region the check reads EC2 in, which the roles are tried in too.
    pub region: Option<aws_sdk_ec2::config::Region>,
}

/// Every check, in order.
pub async fn run(client: &Client, ec2: &SdkEc2, options: &Options) -> Report {
    let mut cluster = Section::new("Cluster");
    let nads_served = served(client, &guard::nad_resource()).await;
    match nads_served {
        true => cluster.pass("Multus: NetworkAttachmentDefinitions are served"),
        false => cluster.fail(
            "Multus: NetworkAttachmentDefinitions are not served",
            "install Multus (its CRD network-attachment-definitions.k8s.cni.cncf.io)",
        ),
    }
    let whereabouts = served(client, &crate::reclaim::whereabouts::ip_pool_resource()).await;
    match whereabouts {
        true => cluster.pass("whereabouts: IPPools are served"),
        false => cluster.skip(
            "whereabouts: IPPools are not served (needed only by NADs with whereabouts IPAM)",
        ),
    }
    let selector = webhook(client, options, &mut cluster).await;
    injects(client, options, &mut cluster).await;
    policy(client, options, &mut cluster).await;
    // The controller's Deployment, read once: whether it is installed, and the flags
    // that turn its opt-in EC2 writes on.
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &options.namespace);
    let deployment = deployments
        .get_opt(&format!("{}-reclaimer", options.name))
        .await;
    controller(client, options, &deployment, &mut cluster).await;

    let mut nodes = Section::new("Nodes");
    let (instances, enis) = multus_nodes(client, ec2, &mut nodes).await;

    let mut nads = Section::new("NetworkAttachmentDefinitions");
    if nads_served {
        judge_nads(
            client,
            ec2,
            options,
            selector.as_ref(),
            &instances,
            whereabouts,
            &mut nads,
        )
        .await;
    } else {
        nads.skip("no NAD to judge: Multus is not installed");
    }

    let mut iam = Section::new("IAM");
    let target = match enis.first() {
        Some(eni) => {
            let subnets = ec2.subnets(std::slice::from_ref(&eni.subnet)).await;
            let cidrs = (subnets.ok().into_iter().flatten())
                .flat_map(|s| s.cidrs)
                .collect::<Vec<_>>();
            Some(iam::Target::new(eni, &cidrs))
        }
        None => None,
    };
    let opted_in = controller_opt_ins(deployment.ok().flatten().as_ref());
    iam::judge(
        &options.iam,
        target.as_ref(),
        &opted_in,
        options.region.as_ref(),
        &mut iam,
    )
    .await;
    Report::from(vec![cluster, nodes, nads, iam])
}

/// The MutatingWebhookConfiguration and its CA bundle; its namespaceSelector, which
/// says which namespaces' NADs are in scope.
async fn webhook(client: &Client, options: &Options, section: &mut Section) -> Option<Selector> {
    let api: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let config = match api.get_opt(&options.name).await {
        Ok(Some(config)) => config,
        Ok(None) => {
            section.fail(
                format!(
                    "the webhook: no MutatingWebhookConfiguration {}",
                    options.name
                ),
                format!(
                    "helm install {} deploy/charts/ipmgmt -n {} (or pass --name)",
                    options.name, options.namespace
                ),
            );
            return None;
        }
        Err(e) => {
            section.fail(
                format!("the webhook: cannot read its configuration: {e}"),
                "check your kubeconfig and RBAC",
            );
            return None;
        }
    };
    let inject_from = (config.metadata.annotations.as_ref())
        .and_then(|a| a.get(INJECT_CA_FROM))
        .cloned();
    certificate(client, inject_from.as_deref(), section).await;
    let hooks = config.webhooks.unwrap_or_default();
    let injected = hooks.iter().all(|w| {
        w.client_config
            .ca_bundle
            .as_ref()
            .is_some_and(|b| !b.0.is_empty())
    });
    match (hooks.is_empty(), injected) {
        (false, true) => section.pass(format!(
            "the webhook: MutatingWebhookConfiguration {} carries its CA bundle",
            options.name
        )),
        _ => section.fail(
            format!("the webhook: MutatingWebhookConfiguration {} has no CA bundle", options.name),
            "cert-manager's cainjector fills it: check that cert-manager runs and the Certificate is Ready \
             (kubectl -n NAMESPACE get certificate), or set tls.caBundle",
        ),
    }
    let label_selector = hooks.first()?.namespace_selector.clone()?;
    Selector::try_from(label_selector).ok()
}

/// The annotation by which cert-manager's cainjector fills the webhook's CA bundle:
/// `NAMESPACE/CERTIFICATE`.
const INJECT_CA_FROM: &str = "cert-manager.io/inject-ca-from";

/// cert-manager's Certificate for the webhook, when the chart has cert-manager issue
/// it: Ready, or why not.
async fn certificate(client: &Client, inject_from: Option<&str>, section: &mut Section) {
    let Some((namespace, name)) = inject_from.and_then(|v| v.split_once('/')) else {
        section.skip("cert-manager: not used (the chart's tls.secretName or tls.caBundle)");
        return;
    };
    let ar = kube::api::ApiResource::from_gvk_with_plural(
        &kube::api::GroupVersionKind::gvk("cert-manager.io", "v1", "Certificate"),
        "certificates",
    );
    let what = format!("cert-manager: Certificate {namespace}/{name}");
    let describe = format!("kubectl -n {namespace} describe certificate {name}");
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), namespace, &ar);
    let certificate = match api.get_opt(name).await {
        Ok(Some(c)) => c,
        Ok(None) => {
            section.fail(
                format!("{what} does not exist, yet the webhook's CA bundle is injected from it"),
                "helm upgrade the release (the chart makes it), or fix the annotation cert-manager.io/inject-ca-from",
            );
            return;
        }
        Err(e) => {
            section.fail(
                format!("{what} cannot be read: {e}"),
                "is cert-manager installed (its CRDs served)? check your RBAC",
            );
            return;
        }
    };
    let conditions = certificate.data["status"]["conditions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let ready = conditions.iter().find(|c| c["type"] == "Ready");
    match ready {
        Some(c) if c["status"] == "True" => {
            let until = certificate.data["status"]["notAfter"]
                .as_str()
                .unwrap_or("?");
            section.pass(format!("{what} is Ready (valid until {until})"))
        }
        Some(c) => section.fail(
            format!(
                "{what} is not Ready: {}",
                c["message"]
                    .as_str()
                    .or(c["reason"].as_str())
                    .unwrap_or("no message")
            ),
            format!("{describe}, and cert-manager's logs"),
        ),
        None => section.fail(
            format!("{what} has no Ready condition yet: cert-manager has not issued it"),
            format!("{describe}: is cert-manager's controller running?"),
        ),
    }
}

/// A dry-run pod asking for ipmgmt: the apiserver runs the admission chain, and the
/// answer shows the manager injected.
async fn injects(client: &Client, options: &Options, section: &mut Section) {
    let pods: Api<Pod> = Api::namespaced(client.clone(), &options.dry_run_namespace);
    let pod: Pod = serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"generateName": "ipmgmt-check-", "annotations": {ipmgmt_common::annotations::MODE: "init"}},
        "spec": {"containers": [{"name": "app", "image": "registry.k8s.io/pause:3.10"}]},
    }))
    .expect("a pod");
    let params = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    match pods.create(&params, &pod).await {
        Ok(pod) => {
            let annotations = pod.metadata.annotations.unwrap_or_default();
            let first = (pod.spec.as_ref())
                .and_then(|s| s.init_containers.as_ref())
                .and_then(|c| c.first())
                .map(|c| c.name.clone());
            match annotations.get(ipmgmt_common::annotations::INJECTED) {
                Some(_) => section.pass(format!(
                    "the webhook injects: a dry-run pod in {} got the IP manager ({})",
                    options.dry_run_namespace,
                    first.unwrap_or_default()
                )),
                None => section.fail(
                    format!(
                        "the webhook did not inject a dry-run pod in {} that asks for it",
                        options.dry_run_namespace
                    ),
                    "the namespace may be outside the webhook's namespaceSelector (pass --dry-run-namespace), \
                     or its failurePolicy is Ignore and no replica answers: kubectl -n NAMESPACE get pods",
                ),
            }
        }
        Err(kube::Error::Api(status)) => section.fail(
            format!(
                "the webhook: a dry-run pod in {} was refused: {}",
                options.dry_run_namespace, status.message
            ),
            "read the message: a denial names what is wrong; 'failed calling webhook' means the API server \
             cannot reach the webhook's Service",
        ),
        Err(e) => section.fail(format!("the webhook: the dry-run pod failed: {e}"), "check your kubeconfig"),
    }
}

async fn policy(client: &Client, options: &Options, section: &mut Section) {
    let name = format!("{}-require-manager", options.name);
    let api: Api<ValidatingAdmissionPolicy> = Api::all(client.clone());
    match api.get_opt(&name).await {
        Ok(Some(_)) => section.pass(format!("the ValidatingAdmissionPolicy {name} is in place")),
        Ok(None) => section.fail(
            format!(
                "no ValidatingAdmissionPolicy {name}: a pod the webhook missed would run unrouted"
            ),
            "helm upgrade with validatingAdmissionPolicy.enabled=true (Kubernetes 1.30 and later)",
        ),
        Err(e) => section.fail(
            format!("cannot read ValidatingAdmissionPolicies: {e}"),
            "check your RBAC",
        ),
    }
}

async fn controller(
    client: &Client,
    options: &Options,
    deployment: &kube::Result<Option<Deployment>>,
    section: &mut Section,
) {
    let name = format!("{}-reclaimer", options.name);
    if let Ok(None) = deployment {
        section.skip("the controller is not installed (reclaimer.enabled=false)");
        return;
    }
    let leases: Api<Lease> = Api::namespaced(client.clone(), &options.namespace);
    let lease = match leases.get_opt(&name).await {
        Ok(Some(lease)) => lease,
        Ok(None) => {
            section.fail(
                format!("the controller has never led: no Lease {name}"),
                format!("kubectl -n {} logs deploy/{name}", options.namespace),
            );
            return;
        }
        Err(e) => {
            section.fail(
                format!("cannot read the controller's Lease: {e}"),
                "check your RBAC",
            );
            return;
        }
    };
    let spec = lease.spec.unwrap_or_default();
    let holder = spec.holder_identity.unwrap_or_default();
    let fresh = match (spec.renew_time, spec.lease_duration_seconds) {
        (Some(renewed), Some(seconds)) => {
            let age = Timestamp::now().duration_since(renewed.0).as_secs();
            (age <= i64::from(seconds)).then_some(age)
        }
        _ => None,
    };
    match (holder.is_empty(), fresh) {
        (false, Some(age)) => section.pass(format!(
            "the controller leads: {holder} holds {name}, renewed {age} s ago"
        )),
        _ => section.fail(
            format!("no replica of the controller holds its Lease {name}"),
            format!("kubectl -n {} logs deploy/{name}", options.namespace),
        ),
    }
}

/// The opt-in EC2 actions the installed controller's flags turn on.
fn controller_opt_ins(deployment: Option<&Deployment>) -> Vec<ipmgmt_common::aws::Action> {
    let args: Vec<String> = (deployment
        .and_then(|d| d.spec.template.spec.as_ref())
        .into_iter())
    .flat_map(|s| &s.containers)
    .flat_map(|c| c.args.clone().unwrap_or_default())
    .collect();
    (ipmgmt_common::aws::Action::ALL.into_iter())
        .filter(|a| {
            a.opt_in().is_some_and(|flag| {
                args.iter().any(|arg| {
                    arg == flag
                        || (arg.strip_prefix(flag).and_then(|v| v.strip_prefix('=')))
                            .is_some_and(|v| v != "false")
                })
            })
        })
        .collect()
}

/// Each node with an EC2 instance: its Multus ENIs. Returns the instances and their
/// Multus ENIs.
async fn multus_nodes(
    client: &Client,
    ec2: &SdkEc2,
    section: &mut Section,
) -> (Vec<String>, Vec<MultusEni>) {
    let nodes: Api<Node> = Api::all(client.clone());
    let nodes = match nodes.list(&ListParams::default()).await {
        Ok(list) => list.items,
        Err(e) => {
            section.fail(format!("cannot list nodes: {e}"), "check your RBAC");
            return (Vec::new(), Vec::new());
        }
    };
    let by_instance: BTreeMap<String, String> = (nodes.iter())
        .filter_map(|n| Some((node_instance(n)?.to_owned(), n.metadata.name.clone()?)))
        .collect();
    if by_instance.is_empty() {
        section.skip("no node runs on an EC2 instance (spec.providerID aws:///…)");
        return (Vec::new(), Vec::new());
    }
    let instances: Vec<String> = by_instance.keys().cloned().collect();
    let enis = match ec2.multus_enis(&instances).await {
        Ok(enis) => enis,
        Err(e) => {
            section.fail(
                format!("cannot describe the nodes' ENIs: {e}"),
                "allow ec2:DescribeNetworkInterfaces",
            );
            return (instances, Vec::new());
        }
    };
    // Each node's instance type, as its well-known label says, and what one ENI of it
    // may hold.
    let types: BTreeMap<String, String> = (nodes.iter())
        .filter_map(|n| {
            let ty = n.metadata.labels.as_ref()?.get(INSTANCE_TYPE_LABEL)?;
            Some((node_instance(n)?.to_owned(), ty.clone()))
        })
        .collect();
    let wanted: Vec<String> = types
        .values()
        .cloned()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let limits = match wanted.is_empty() {
        true => BTreeMap::new(),
        false => match ec2.ipv4_per_interface(&wanted).await {
            Ok(limits) => limits,
            Err(e) => {
                section.fail(
                    format!("cannot read the instance types' address limits: {e}"),
                    "allow ec2:DescribeInstanceTypes (deploy/check-iam-policy.json)",
                );
                BTreeMap::new()
            }
        },
    };
    for (instance, node) in &by_instance {
        let mut on: Vec<&MultusEni> = enis.iter().filter(|e| &e.instance == instance).collect();
        on.sort_by_key(|e| e.device_index);
        let limit = types.get(instance).and_then(|t| limits.get(t)).copied();
        if on.is_empty() {
            section.fail(
                format!("{node} ({instance}): no Multus ENI"),
                "attach an ENI at device index 1 or more and tag it node.k8s.amazonaws.com/no_manage=true \
                 (and the cluster tag, if ipmgmt is given one)",
            );
            continue;
        }
        // The primary address counts against the limit too.
        let free = |e: &MultusEni| limit.map(|l| l.saturating_sub(1 + e.ipv4.len()));
        let each: Vec<String> = (on.iter())
            .map(|e| match (free(e), limit) {
                (Some(n), Some(l)) => {
                    format!(
                        "device index {} ({}, {n} of {l} IPv4 addresses free)",
                        e.device_index, e.id
                    )
                }
                _ => format!("device index {} ({})", e.device_index, e.id),
            })
            .collect();
        let full: Vec<&str> = (on.iter())
            .filter(|e| free(e) == Some(0))
            .map(|e| e.id.as_str())
            .collect();
        match full.is_empty() {
            true => section.pass(format!("{node} ({instance}): Multus ENIs at {}", each.join(", "))),
            false => section.fail(
                format!(
                    "{node} ({instance}): no free IPv4 address on {}: the next pod's manager there fails with \
                     PrivateIpAddressLimitExceeded",
                    full.join(", ")
                ),
                "turn the reclaimer on (reclaimer.enabled) to give back the addresses of pods that are gone, \
                 or spread the pods over more nodes or larger instance types",
            ),
        }
    }
    (instances, enis)
}

/// The well-known label kubelet sets from the cloud provider: the node's instance type.
const INSTANCE_TYPE_LABEL: &str = "node.kubernetes.io/instance-type";

/// The NADs in the namespaces the webhook serves, judged by the guard.
async fn judge_nads(
    client: &Client,
    ec2: &SdkEc2,
    options: &Options,
    selector: Option<&Selector>,
    instances: &[String],
    whereabouts: bool,
    section: &mut Section,
) {
    let served: Option<BTreeSet<String>> = match selector {
        Some(selector) => {
            let namespaces: Api<Namespace> = Api::all(client.clone());
            match namespaces.list(&ListParams::default()).await {
                Ok(list) => Some(
                    (list.items.iter())
                        .filter(|n| {
                            selector.matches(&n.metadata.labels.clone().unwrap_or_default())
                        })
                        .filter_map(|n| n.metadata.name.clone())
                        .collect(),
                ),
                Err(_) => None,
            }
        }
        None => None,
    };
    let api = Api::<DynamicObject>::all_with(client.clone(), &guard::nad_resource());
    let list = match api.list(&ListParams::default()).await {
        Ok(list) => list.items,
        Err(e) => {
            section.fail(
                format!("cannot list NetworkAttachmentDefinitions: {e}"),
                "check your RBAC",
            );
            return;
        }
    };
    let nads: Vec<Nad> = (list.iter())
        .filter_map(|nad| {
            let namespace = nad.metadata.namespace.clone()?;
            let name = nad.metadata.name.clone()?;
            let config = nad.data.get("spec")?.get("config")?.as_str()?;
            let in_scope = served.as_ref().is_none_or(|s| s.contains(&namespace));
            (in_scope && !config.trim().is_empty()).then(|| Nad {
                name: format!("{namespace}/{name}"),
                read: ipam::read(config),
            })
        })
        .collect();
    if nads.is_empty() {
        section.skip("no NetworkAttachmentDefinition in the namespaces the webhook serves");
        return;
    }
    let findings = match guard::pass(ec2, &nads, instances, &options.masters).await {
        Ok(verdicts) => verdicts.findings,
        Err(e) => {
            section.fail(
                format!("cannot read the subnets the NADs ride on: {e}"),
                "allow ec2:DescribeSubnets and ec2:GetSubnetCidrReservations",
            );
            return;
        }
    };
    for nad in &nads {
        let uses_whereabouts =
            (nad.read.as_ref()).is_ok_and(|a| matches!(a.ipam, ipam::Ipam::Whereabouts { .. }));
        if uses_whereabouts && !whereabouts {
            section.fail(
                format!(
                    "{}: its IPAM is whereabouts, whose IPPools are not served",
                    nad.name
                ),
                "install whereabouts (its CRDs and DaemonSet)",
            );
        }
        match findings.get(&nad.name) {
            None => section.pass(nad.name.clone()),
            Some(lines) => {
                for line in lines {
                    section.fail(
                        format!("{}: {line}", nad.name),
                        "fix the NAD's IPAM range (the line says how)",
                    );
                }
            }
        }
    }
}

/// One pod: each address of its secondary networks, the ENI that should hold it (the
/// node's Multus ENI with the interface's MAC, as the IP manager chooses), the ENI
/// that does, and why not.
pub async fn pod(client: &Client, ec2: &SdkEc2, namespace: &str, name: &str) -> Report {
    let mut section = Section::new(&format!("Pod {namespace}/{name}"));
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let pod = match pods.get_opt(name).await {
        Ok(Some(pod)) => pod,
        Ok(None) => {
            section.fail(
                format!("no pod {name} in {namespace}"),
                "check the name and -n",
            );
            return Report::from(vec![section]);
        }
        Err(e) => {
            section.fail(
                format!("cannot read the pod: {e}"),
                "check your kubeconfig and RBAC",
            );
            return Report::from(vec![section]);
        }
    };
    let annotations = pod.metadata.annotations.clone().unwrap_or_default();
    match annotations.get(ipmgmt_common::annotations::MODE) {
        Some(mode) => section.pass(format!(
            "asks for ipmgmt ({}={mode:?})",
            ipmgmt_common::annotations::MODE
        )),
        None => section.fail(
            format!(
                "not annotated {}: nothing assigns its addresses",
                ipmgmt_common::annotations::MODE
            ),
            format!(
                "annotate the pod template with {}: init or sidecar",
                ipmgmt_common::annotations::MODE
            ),
        ),
    }
    let statuses: Vec<claims::Status> = annotations
        .get(ipmgmt_common::annotations::MULTUS_NETWORK_STATUS)
        .map(|text| claims::network_status(text))
        .unwrap_or_default()
        .into_iter()
        .filter(|s| !s.default)
        .collect();
    if statuses.is_empty() {
        section.fail(
            "Multus reports no secondary network for it (no network-status)",
            "kubectl describe pod: Multus's events say why its networks were not attached",
        );
        return Report::from(vec![section]);
    }
    let node = pod
        .spec
        .as_ref()
        .and_then(|s| s.node_name.clone())
        .unwrap_or_default();
    let nodes: Api<Node> = Api::all(client.clone());
    let all_nodes = nodes
        .list(&ListParams::default())
        .await
        .map(|l| l.items)
        .unwrap_or_default();
    let instance_of = |node: &Node| node_instance(node).map(str::to_owned);
    let instances: Vec<String> = all_nodes.iter().filter_map(instance_of).collect();
    let own = (all_nodes.iter())
        .find(|n| n.metadata.name.as_deref() == Some(node.as_str()))
        .and_then(instance_of);
    let enis = match ec2.multus_enis(&instances).await {
        Ok(enis) => enis,
        Err(e) => {
            section.fail(
                format!("cannot describe the nodes' ENIs: {e}"),
                "allow ec2:DescribeNetworkInterfaces",
            );
            return Report::from(vec![section]);
        }
    };
    for status in &statuses {
        let expected = (enis.iter()).find(|e| {
            Some(&e.instance) == own.as_ref() && !status.mac.is_empty() && e.mac == status.mac
        });
        for address in &status.addresses {
            let holders: Vec<&MultusEni> = enis
                .iter()
                .filter(|e| e.addresses().any(|a| a == *address))
                .collect();
            let what = format!("{address} ({} of {})", status.interface, status.name);
            match (expected, holders.as_slice()) {
                (None, _) => section.fail(
                    format!("{what}: no Multus ENI of {node} has the interface's MAC {}", status.mac),
                    "the NAD's master must be a Multus ENI's interface (tagged no_manage, device index 1 or more)",
                ),
                (Some(eni), [holder]) if holder.id == eni.id => section.pass(format!(
                    "{what} is on {} (device index {}), the ENI it rides on",
                    eni.id, eni.device_index
                )),
                (Some(eni), []) => section.fail(
                    format!("{what} should be on {} and no ENI holds it: the VPC drops its traffic", eni.id),
                    format!("the IP manager's last words: kubectl -n {namespace} logs {name} -c aws-ip-mgmt,                              and kubectl describe pod for its termination message"),
                ),
                (Some(eni), others) => section.fail(
                    format!(
                        "{what} should be on {} but is on {}: the VPC routes it elsewhere",
                        eni.id,
                        others.iter().map(|h| format!("{} ({})", h.id, h.instance)).collect::<Vec<_>>().join(", ")
                    ),
                    "a sidecar moves it back at its next pass (AllowReassignment); an init pod's manager ran once:                      restart the pod, or find what took the address",
                ),
            }
        }
    }
    Report::from(vec![section])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_report_fails_only_on_a_failure_and_says_it_the_same_way_every_time() {
        let mut cluster = Section::new("Cluster");
        cluster.pass("Multus: NetworkAttachmentDefinitions are served");
        cluster.skip("whereabouts: IPPools are not served");
        let report = Report::from(vec![cluster.clone()]);
        assert!(report.ok);
        cluster.fail(
            "no ValidatingAdmissionPolicy ipmgmt-require-manager",
            "helm upgrade",
        );
        let report = Report::from(vec![cluster]);
        assert!(!report.ok);
        let text = report.text(false);
        assert_eq!(
            text,
            "Cluster\n  ✓ Multus: NetworkAttachmentDefinitions are served\n  – whereabouts: IPPools are not served\n  \
             ✗ no ValidatingAdmissionPolicy ipmgmt-require-manager\n      → helm upgrade\n\n1 check failed\n"
        );
        assert!(!text.contains('\x1b'), "no colour off a terminal");
        assert!(report.text(true).contains("\x1b[31m✗"));
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["ok"], false);
        assert_eq!(json["sections"][0]["checks"][2]["status"], "fail");
        assert_eq!(json["sections"][0]["checks"][2]["fix"], "helm upgrade");
        assert!(json["sections"][0]["checks"][0].get("fix").is_none());
    }
}
