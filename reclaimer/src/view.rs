//! The reclaimer's view of the cluster: pods, nodes and NetworkAttachmentDefinitions,
//! each kept by a kube-runtime reflector (one list, then a watch that resumes from
//! its resourceVersion, and relists on 410 Gone). Nothing here lists on a timer.
//!
//! A watch error means the view may have missed a change, so it is counted: the
//! sweeper then restarts every grace clock (`Suspects::restart`) rather than trust
//! what it saw before.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::jiff::Timestamp;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind};
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher::{self, Event};
use kube::runtime::{WatchStreamExt, reflector::store::Writer};
use kube::{Api, Client};
use tokio::sync::watch;
use tracing::warn;

use crate::claims::{NadRef, claim_of, nads_of};
use crate::metrics::{Metrics, Resource};
use crate::pools::{Pool, pools_of_config};
use crate::sweep::Cluster;

pub fn nad_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("k8s.cni.cncf.io", "v1", "NetworkAttachmentDefinition"),
        "network-attachment-definitions",
    )
}

#[derive(Clone)]
pub struct View {
    pods: Store<Pod>,
    nodes: Store<Node>,
    nads: Store<DynamicObject>,
    /// NADs named by an ipmgmt pod since this process started, including pods gone
    /// since: the addresses of a deleted pod lie in its NAD's pools.
    used: Arc<Mutex<BTreeSet<NadRef>>>,
    errors: Arc<AtomicU64>,
    /// True once all three have listed. One task waits on the stores: a store's
    /// readiness wakes only its latest waiter.
    listed: watch::Receiver<bool>,
}

impl View {
    /// Starts the three reflectors; they run until the process ends.
    pub fn start(client: &Client, metrics: &Metrics) -> View {
        let errors = Arc::new(AtomicU64::new(0));
        let used = Arc::new(Mutex::new(BTreeSet::new()));

        let (pods, writer) = reflector::store();
        let used_by_pods = used.clone();
        let stream = watcher(Api::<Pod>::all(client.clone()))
            .modify(slim_pod)
            .map(move |event| {
                if let Ok(Event::Apply(pod) | Event::InitApply(pod)) = &event {
                    let named = nads_of(pod);
                    if !named.is_empty() {
                        lock(&used_by_pods).extend(named);
                    }
                }
                event
            });
        spawn(
            Resource::Pods,
            reflector::reflector(writer, stream),
            &errors,
            metrics,
        );

        let (nodes, writer) = reflector::store();
        let stream = watcher(Api::<Node>::all(client.clone())).modify(|n: &mut Node| {
            n.metadata.managed_fields = None;
            n.status = None;
        });
        spawn(
            Resource::Nodes,
            reflector::reflector(writer, stream),
            &errors,
            metrics,
        );

        let ar = nad_resource();
        let writer = Writer::new(ar.clone());
        let nads = writer.as_reader();
        let stream = watcher(Api::<DynamicObject>::all_with(client.clone(), &ar))
            .modify(|n: &mut DynamicObject| n.metadata.managed_fields = None);
        spawn(
            Resource::NetworkAttachmentDefinitions,
            reflector::reflector(writer, stream),
            &errors,
            metrics,
        );

        let (listed_tx, listed) = watch::channel(false);
        let stores = (pods.clone(), nodes.clone(), nads.clone());
        tokio::spawn(async move {
            // The error only says a writer was dropped, which happens only when the
            // process ends.
            let _ = stores.0.wait_until_ready().await;
            let _ = stores.1.wait_until_ready().await;
            let _ = stores.2.wait_until_ready().await;
            listed_tx.send_replace(true);
        });
        View {
            pods,
            nodes,
            nads,
            used,
            errors,
            listed,
        }
    }

    /// Whether all three have listed once.
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
            .filter_map(|n| {
                let id = instance_id(n.spec.as_ref()?.provider_id.as_deref()?)?;
                Some((id.to_owned(), n.metadata.name.clone()?))
            })
            .collect()
    }

    /// Claims and pools as of now; `unreadable` gets the NADs whose config could
    /// not be read, with why (they contribute no pool).
    pub fn cluster(&self, now: Timestamp, unreadable: &mut BTreeMap<NadRef, String>) -> Cluster {
        let mut cluster = Cluster::default();
        for pod in self.pods.state() {
            add_claim(&mut cluster, &pod, now);
        }
        let nads: HashMap<NadRef, Arc<DynamicObject>> = self
            .nads
            .state()
            .into_iter()
            .filter_map(|n| {
                let key = NadRef {
                    namespace: n.metadata.namespace.clone()?,
                    name: n.metadata.name.clone()?,
                };
                Some((key, n))
            })
            .collect();
        for nad in lock(&self.used).iter() {
            let Some(object) = nads.get(nad) else {
                continue;
            };
            match pools_of(object) {
                Ok(pools) => cluster
                    .pools
                    .extend(pools.into_iter().map(|p| (nad.clone(), p))),
                Err(why) => {
                    unreadable.insert(nad.clone(), why);
                }
            }
        }
        cluster
    }
}

/// Adds one pod's claim (if it makes one) to `cluster`.
pub fn add_claim(cluster: &mut Cluster, pod: &Pod, now: Timestamp) {
    if let Some(claim) = claim_of(pod, now) {
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

fn pools_of(nad: &DynamicObject) -> Result<Vec<Pool>, String> {
    let config = nad
        .data
        .get("spec")
        .and_then(|s| s.get("config"))
        .and_then(|c| c.as_str())
        .ok_or("spec.config is missing")?;
    pools_of_config(config)
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

fn watcher<K>(api: Api<K>) -> impl futures::Stream<Item = watcher::Result<Event<K>>> + Send
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    watcher::watcher(api, watcher::Config::default().any_semantic()).default_backoff()
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
                warn!(resource = what.name(), error = %e, "watch failed; it resumes with backoff, and every grace period starts again");
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
