//! The controller's view of the cluster: pods and nodes, the namespaces the webhook
//! serves, whereabouts' IPPools and Multus's NetworkAttachmentDefinitions where
//! those CRDs are served, each kept by a
//! kube-runtime reflector (one list, then a watch that resumes from its
//! resourceVersion, and relists on 410 Gone). Nothing here lists on a timer.
//!
//! A watch error means the view may have missed a change, so it is counted: the
//! sweeper then restarts every grace clock (`Suspects::restart`) rather than trust
//! what it saw before. The API server ends every watch after `watch_timeout` and the
//! client's read timeout is a little longer (`crate::client`), so a connection that
//! stops carrying bytes without closing fails as a watch error instead of leaving
//! the view silently stale.
//!
//! What IPAM handed out (`handed_out`) is remembered from every ipmgmt pod seen since
//! this process started, including pods gone since: a deleted pod's addresses are
//! exactly the ones to give back. whereabouts' records add the addresses of pods
//! this process never saw; a record naming a live pod is also that pod's claim.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use ipmgmt_common::metrics::LabelValue;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use kube::api::{ApiResource, DynamicObject};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::watcher::{self, Event};
use kube::runtime::{WatchStreamExt, reflector::store::Writer};
use kube::{Api, Client};
use tokio::sync::{Notify, watch};
use tracing::{info, warn};

use crate::metrics::{Metrics, Resource};
use crate::reclaim::claims::{Evidence, claim_of, handed_out};
use crate::reclaim::sweep::Cluster;
use crate::reclaim::whereabouts;

/// What the view watches, besides pods and nodes.
#[derive(Clone, Debug, Default)]
pub struct Scope {
    /// The label selector of the namespaces the webhook serves; `None`: every namespace.
    pub namespaces: Option<String>,
    /// Read whereabouts' IPPools (the CRD is served).
    pub whereabouts: bool,
    /// Read NetworkAttachmentDefinitions (the CRD is served and the guard runs).
    pub nads: bool,
    /// The server-side timeout of every watch.
    pub watch_timeout: Duration,
}

#[derive(Clone)]
pub struct View {
    pods: Store<Pod>,
    nodes: Store<Node>,
    namespaces: Option<Store<Namespace>>,
    pools: Option<Store<DynamicObject>>,
    nads: Option<Store<DynamicObject>>,
    /// One permit per burst of nodes seen for the first time: the readiness trigger.
    node_added: Arc<Notify>,
    /// One permit per burst of NAD changes: the guard's trigger.
    nad_changed: Arc<Notify>,
    /// Addresses IPAM handed to ipmgmt pods, from their `network-status`, since this
    /// process started.
    seen: Arc<Mutex<HashMap<IpAddr, Evidence>>>,
    errors: Arc<AtomicU64>,
    /// True once every reflector has listed. One task waits on the stores: a store's
    /// readiness wakes only its latest waiter.
    listed: watch::Receiver<bool>,
}

impl View {
    /// Starts the reflectors; they run until the process ends.
    pub fn start(client: &Client, scope: &Scope, metrics: &Metrics) -> View {
        let errors = Arc::new(AtomicU64::new(0));
        let seen = Arc::new(Mutex::new(HashMap::new()));
        let config = watcher::Config::default()
            .any_semantic()
            .timeout(u32::try_from(scope.watch_timeout.as_secs().max(1)).unwrap_or(u32::MAX));

        let (pods, writer) = reflector::store();
        let seen_by_pods = seen.clone();
        let stream = watcher::watcher(Api::<Pod>::all(client.clone()), config.clone())
            .default_backoff()
            .map(move |event| {
                if let Ok(Event::Apply(pod) | Event::InitApply(pod) | Event::Delete(pod)) = &event {
                    let addresses = handed_out(pod);
                    if !addresses.is_empty() {
                        lock(&seen_by_pods).extend(addresses);
                    }
                }
                event
            })
            .modify(slim_pod);
        spawn(
            Resource::Pods,
            reflector::reflector(writer, stream),
            &errors,
            metrics,
        );

        let (nodes, writer) = reflector::store();
        let node_added = Arc::new(Notify::new());
        let added = node_added.clone();
        let mut known = std::collections::HashSet::new();
        let stream = watcher::watcher(Api::<Node>::all(client.clone()), config.clone())
            .default_backoff()
            .map(move |event| {
                // A node seen for the first time: it may lack its Multus ENIs. Status
                // heartbeats of known nodes wake nobody.
                if let Ok(Event::Apply(node) | Event::InitApply(node)) = &event
                    && let Some(name) = &node.metadata.name
                    && known.insert(name.clone())
                {
                    added.notify_one();
                }
                event
            })
            .modify(|n: &mut Node| {
                n.metadata.managed_fields = None;
                n.status = None;
            });
        spawn(
            Resource::Nodes,
            reflector::reflector(writer, stream),
            &errors,
            metrics,
        );

        let namespaces = scope.namespaces.as_ref().map(|selector| {
            let (store, writer) = reflector::store();
            let api = Api::<Namespace>::all(client.clone());
            let stream = watcher::watcher(api, config.clone().labels(selector))
                .default_backoff()
                .modify(|n: &mut Namespace| {
                    n.metadata.managed_fields = None;
                    n.spec = None;
                    n.status = None;
                });
            spawn(
                Resource::Namespaces,
                reflector::reflector(writer, stream),
                &errors,
                metrics,
            );
            store
        });

        let pools = scope.whereabouts.then(|| {
            let ar = whereabouts::ip_pool_resource();
            let writer = Writer::new(ar.clone());
            let store = writer.as_reader();
            let api = Api::<DynamicObject>::all_with(client.clone(), &ar);
            let stream = watcher::watcher(api, config.clone())
                .default_backoff()
                .modify(|p: &mut DynamicObject| p.metadata.managed_fields = None);
            spawn(
                Resource::IpPools,
                reflector::reflector(writer, stream),
                &errors,
                metrics,
            );
            store
        });

        let nad_changed = Arc::new(Notify::new());
        let nads = scope.nads.then(|| {
            let ar = crate::guard::nad_resource();
            let writer = Writer::new(ar.clone());
            let store = writer.as_reader();
            let api = Api::<DynamicObject>::all_with(client.clone(), &ar);
            let changed = nad_changed.clone();
            let stream = watcher::watcher(api, config.clone())
                .default_backoff()
                .map(move |event| {
                    if let Ok(Event::Apply(_) | Event::Delete(_) | Event::InitDone) = &event {
                        changed.notify_one();
                    }
                    event
                })
                .modify(|n: &mut DynamicObject| n.metadata.managed_fields = None);
            spawn(
                Resource::Nads,
                reflector::reflector(writer, stream),
                &errors,
                metrics,
            );
            store
        });

        let (listed_tx, listed) = watch::channel(false);
        let waits = (
            pods.clone(),
            nodes.clone(),
            namespaces.clone(),
            pools.clone(),
            nads.clone(),
        );
        tokio::spawn(async move {
            // The error only says a writer was dropped, which happens only when the
            // process ends.
            let _ = waits.0.wait_until_ready().await;
            let _ = waits.1.wait_until_ready().await;
            if let Some(store) = &waits.2 {
                let _ = store.wait_until_ready().await;
            }
            if let Some(store) = &waits.3 {
                let _ = store.wait_until_ready().await;
            }
            if let Some(store) = &waits.4 {
                let _ = store.wait_until_ready().await;
            }
            listed_tx.send_replace(true);
        });
        View {
            pods,
            nodes,
            namespaces,
            pools,
            nads,
            node_added,
            nad_changed,
            seen,
            errors,
            listed,
        }
    }

    /// Whether every reflector has listed once.
    pub fn is_ready(&self) -> bool {
        *self.listed.borrow()
    }

    pub async fn wait_until_ready(&self) {
        let mut listed = self.listed.clone();
        let _ = listed.wait_for(|l| *l).await;
    }

    /// Watch errors since start; a change means the view may have missed something.
    pub fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }

    /// The cluster's nodes by EC2 instance ID, from `spec.providerID`.
    pub fn instances(&self) -> BTreeMap<String, String> {
        self.nodes
            .state()
            .iter()
            .filter_map(|n| Some((node_instance(n)?.to_owned(), n.metadata.name.clone()?)))
            .collect()
    }

    /// Claims, and what IPAM handed out in the namespaces the webhook serves, as of now.
    pub fn cluster(&self) -> Cluster {
        let mut cluster = Cluster::default();
        for pod in self.pods.state() {
            add_claim(&mut cluster, &pod);
        }
        let served = |pod: &str| self.serves(pod.split('/').next().unwrap_or(""));
        let seen = lock(&self.seen).clone();
        let recorded: Vec<(IpAddr, Evidence)> = (self.pools.iter())
            .flat_map(|store| {
                store.state().into_iter().flat_map(|pool| {
                    let name = pool.metadata.name.clone().unwrap_or_default();
                    let spec = pool.data.get("spec").cloned().unwrap_or_default();
                    whereabouts::allocations(&name, &spec)
                })
            })
            .collect();
        // A record whose pod is live claims its address on that pod's node, even
        // before Multus writes the pod's network-status.
        for (ip, evidence) in &recorded {
            let Some((namespace, name)) = evidence.pod.split_once('/') else {
                continue;
            };
            let pod = self.pods.get(&ObjectRef::new(name).within(namespace));
            if let Some(claim) = pod.as_deref().and_then(claim_of) {
                cluster.claims.entry(claim.node).or_default().insert(*ip);
            }
        }
        cluster.handed_out = seen
            .into_iter()
            .chain(recorded)
            .filter(|(_, evidence)| served(&evidence.pod))
            .collect();
        cluster
    }

    /// Every node, as last seen (status left out).
    pub fn nodes(&self) -> Vec<Arc<Node>> {
        self.nodes.state()
    }

    /// Completes after a node was seen for the first time since the last call.
    pub async fn node_added(&self) {
        self.node_added.notified().await;
    }

    /// Whether the webhook serves `namespace`.
    fn serves(&self, namespace: &str) -> bool {
        self.namespaces.as_ref().is_none_or(|store| {
            store
                .state()
                .iter()
                .any(|n| n.metadata.name.as_deref() == Some(namespace))
        })
    }

    /// The NetworkAttachmentDefinitions in the namespaces the webhook serves, each
    /// with the CNI configuration it holds in `spec.config`; a NAD without one (its
    /// configuration in a file on the nodes) is left out.
    pub fn nads(&self) -> Vec<NadObject> {
        let Some(store) = &self.nads else {
            return Vec::new();
        };
        let mut nads: Vec<NadObject> = (store.state().iter())
            .filter_map(|nad| {
                let namespace = nad.metadata.namespace.clone()?;
                let name = nad.metadata.name.clone()?;
                let config = nad.data.get("spec")?.get("config")?.as_str()?;
                (self.serves(&namespace) && !config.trim().is_empty()).then(|| NadObject {
                    name,
                    namespace,
                    uid: nad.metadata.uid.clone(),
                    config: config.to_owned(),
                })
            })
            .collect();
        nads.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        nads
    }

    /// Completes after NADs changed (added, changed, removed, relisted) since the
    /// last call completed; a change during a guard pass wakes the next one.
    pub async fn nads_changed(&self) {
        self.nad_changed.notified().await;
    }

    /// Forgets what IPAM handed out at these addresses: they were released, and the
    /// next pod that gets one brings its own evidence.
    pub fn forget(&self, released: impl IntoIterator<Item = IpAddr>) {
        let mut seen = lock(&self.seen);
        for ip in released {
            seen.remove(&ip);
        }
    }
}

/// A NetworkAttachmentDefinition as the guard reads it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NadObject {
    pub namespace: String,
    pub name: String,
    pub uid: Option<String>,
    /// `spec.config`: the CNI configuration, JSON in a string.
    pub config: String,
}

/// Adds one pod's claim (if it makes one) to `cluster`.
pub fn add_claim(cluster: &mut Cluster, pod: &Pod) {
    if let Some(claim) = claim_of(pod) {
        if claim.settling {
            cluster.settling.insert(claim.node.clone());
        }
        cluster
            .claims
            .entry(claim.node)
            .or_default()
            .extend(claim.addresses);
    }
}

/// Whether the API server serves whereabouts' IPPools; an error reads as no.
pub async fn whereabouts_served(client: &Client) -> bool {
    served(client, &whereabouts::ip_pool_resource()).await
}

/// Whether the API server serves Multus's NetworkAttachmentDefinitions.
pub async fn nads_served(client: &Client) -> bool {
    served(client, &crate::guard::nad_resource()).await
}

/// Whether the API server serves `ar`; an error reads as no, and is logged.
pub async fn served(client: &Client, ar: &ApiResource) -> bool {
    is_served(client, ar).await.unwrap_or_else(|e| {
        info!(error = %e, group = %ar.api_version, "not served");
        false
    })
}

/// Whether the API server serves `ar`; a group it does not serve is an error (404).
pub async fn is_served(client: &Client, ar: &ApiResource) -> Result<bool, kube::Error> {
    let list = client.list_api_group_resources(&ar.api_version).await?;
    Ok(list.resources.iter().any(|r| r.name == ar.plural))
}

/// The EC2 instance a node runs on, from its `spec.providerID`.
pub fn node_instance(node: &Node) -> Option<&str> {
    instance_id(node.spec.as_ref()?.provider_id.as_deref()?)
}

/// A node's Availability Zone: its `topology.kubernetes.io/zone` label, which the
/// cloud provider sets, else the zone in `spec.providerID` (`aws:///us-west-2a/i-…`).
pub fn node_zone(node: &Node) -> Option<String> {
    let label = (node.metadata.labels.as_ref())
        .and_then(|l| l.get("topology.kubernetes.io/zone"))
        .cloned();
    label.or_else(|| {
        let provider = node.spec.as_ref()?.provider_id.as_deref()?;
        let mut parts = provider.strip_prefix("aws://")?.rsplit('/');
        let (_instance, zone) = (parts.next()?, parts.next()?);
        (!zone.is_empty()).then(|| zone.to_owned())
    })
}

/// `aws:///us-west-2a/i-0abc…` → `i-0abc…`.
pub fn instance_id(provider_id: &str) -> Option<&str> {
    let id = provider_id.strip_prefix("aws://")?.rsplit('/').next()?;
    id.starts_with("i-").then_some(id)
}

/// The store keeps what claims need: metadata (annotations, deletion), node, phase.
/// Containers, volumes and conditions are most of a pod's size.
fn slim_pod(pod: &mut Pod) {
    pod.metadata.managed_fields = None;
    if let Some(spec) = pod.spec.as_mut() {
        let node_name = spec.node_name.take();
        *spec = Default::default();
        spec.node_name = node_name;
    }
    if let Some(status) = pod.status.as_mut() {
        let phase = status.phase.take();
        *status = Default::default();
        status.phase = phase;
    }
}

fn spawn<K, S>(what: Resource, stream: S, errors: &Arc<AtomicU64>, metrics: &Metrics)
where
    S: futures::Stream<Item = watcher::Result<Event<K>>> + Send + 'static,
    K: Send,
{
    let errors = errors.clone();
    let counter = metrics.watch_errors(what);
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(event) = stream.next().await {
            if let Err(e) = event {
                errors.fetch_add(1, Ordering::Relaxed);
                counter.inc();
                warn!(resource = what.label(), error = %e, "watch failed; it resumes with backoff, and every grace period starts again");
            }
        }
    });
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_ids_come_from_provider_ids() {
        assert_eq!(
            instance_id("aws:///us-west-2a/i-0abc123"),
            Some("i-0abc123")
        );
        assert_eq!(instance_id("aws:///i-0abc123"), Some("i-0abc123"));
        assert_eq!(instance_id("kind://docker/kind/node"), None);
        assert_eq!(instance_id("aws:///us-west-2a/fargate-ip-10-0-1-5"), None);
    }
}
