//! A sweep, with its I/O: read the view, describe the Multus ENIs, decide
//! (`sweep::decide`), confirm against a fresh read of the node's pods, release, and
//! say so in a log line, an Event on the node and a metric.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::ListParams;
use tokio::sync::watch;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::claims::NadRef;
use crate::ec2::Ec2;
use crate::events::Events;
use crate::metrics::{Metrics, ReleaseResult, SweepResult};
use crate::sweep::{Cluster, Held, Release, Suspects, decide};
use crate::view::{View, add_claim};

pub struct Settings {
    pub grace: Duration,
    pub max_releases_per_sweep: usize,
    pub dry_run: bool,
}

pub struct Sweeper<E> {
    pub ec2: E,
    pub view: View,
    pub pods: Api<Pod>,
    pub events: Events,
    pub metrics: Metrics,
    pub settings: Settings,
    /// Checked before every EC2 change: a sweep that outlives the leadership stops.
    pub leading: watch::Receiver<bool>,
    suspects: Suspects,
    errors_seen: u64,
    unreadable_reported: BTreeSet<NadRef>,
}

impl<E: Ec2> Sweeper<E> {
    pub fn new(
        ec2: E,
        view: View,
        client: kube::Client,
        events: Events,
        metrics: Metrics,
        settings: Settings,
        leading: watch::Receiver<bool>,
    ) -> Self {
        Sweeper {
            ec2,
            errors_seen: view.errors(),
            view,
            pods: Api::all(client),
            events,
            metrics,
            settings,
            leading,
            suspects: Suspects::default(),
            unreadable_reported: BTreeSet::new(),
        }
    }

    /// Called when this replica starts leading: what an earlier leadership saw
    /// is not trusted.
    pub fn start_over(&mut self) {
        self.suspects.restart();
        self.errors_seen = self.view.errors();
    }

    pub async fn sweep(&mut self) -> SweepResult {
        let result = self.sweep_once().instrument(info_span!("sweep")).await;
        self.metrics.sweep(result);
        result
    }

    async fn sweep_once(&mut self) -> SweepResult {
        let errors = self.view.errors();
        if errors != self.errors_seen {
            info!("the API watch failed since the last sweep: every grace period starts again");
            self.suspects.restart();
            self.errors_seen = errors;
        }
        let instances = self.view.instances();
        let mut unreadable = BTreeMap::new();
        let cluster = self.view.cluster(Timestamp::now(), &mut unreadable);
        for (nad, why) in unreadable {
            if self.unreadable_reported.insert(nad.clone()) {
                warn!(%nad, why, "cannot read the NetworkAttachmentDefinition's IPAM: its addresses are never released");
            }
        }
        if instances.is_empty() {
            debug!("no node has an AWS providerID");
            self.metrics.verdicts(&BTreeMap::new());
            return SweepResult::Complete;
        }
        let ids: Vec<String> = instances.keys().cloned().collect();
        let enis = match self.ec2.multus_enis(&ids).await {
            Ok(enis) => enis,
            Err(e) if e.is_throttling() => {
                warn!(error = %e, "sweep stopped");
                return SweepResult::Throttled;
            }
            Err(e) => {
                warn!(error = %e, "sweep failed");
                return SweepResult::Failed;
            }
        };
        let held: Vec<Held> = enis
            .iter()
            .filter_map(|eni| {
                let node = instances.get(&eni.instance)?;
                Some(eni.addresses().map(move |ip| Held {
                    node: node.clone(),
                    instance: eni.instance.clone(),
                    eni: eni.id.clone(),
                    ip,
                }))
            })
            .flatten()
            .collect();
        let decision = decide(
            &held,
            &cluster,
            &mut self.suspects,
            Instant::now(),
            self.settings.grace,
            self.settings.max_releases_per_sweep,
        );
        self.metrics.verdicts(&decision.verdicts);
        debug!(held = held.len(), suspects = self.suspects.len(), verdicts = ?decision.verdicts, "decided");
        self.release(decision.releases).await
    }

    async fn release(&mut self, releases: Vec<Release>) -> SweepResult {
        let mut by_node: BTreeMap<String, Vec<Release>> = BTreeMap::new();
        for r in releases {
            by_node.entry(r.held.node.clone()).or_default().push(r);
        }
        for (node, releases) in by_node {
            let releases = match self.confirm(&node, releases).await {
                Ok(r) => r,
                Err(e) => {
                    warn!(node, error = %e, "could not read the node's pods to confirm; nothing released there this sweep");
                    continue;
                }
            };
            let mut by_eni: BTreeMap<(String, bool), Vec<Release>> = BTreeMap::new();
            for r in releases {
                by_eni
                    .entry((r.held.eni.clone(), r.held.ip.is_ipv4()))
                    .or_default()
                    .push(r);
            }
            for ((eni, _), batch) in by_eni {
                if !*self.leading.borrow() {
                    info!("no longer leading: sweep stopped before releasing");
                    return SweepResult::Complete;
                }
                if self.settings.dry_run {
                    self.metrics.release(ReleaseResult::DryRun, batch.len());
                    self.report(&node, &batch, true).await;
                    continue;
                }
                let outcome = self.unassign(&eni, &batch).await;
                match outcome {
                    Ok(()) => {
                        self.metrics.release(ReleaseResult::Released, batch.len());
                        self.report(&node, &batch, false).await;
                    }
                    Err(e) => {
                        self.metrics.release(ReleaseResult::Failed, batch.len());
                        warn!(node, eni, error = %e, "release failed");
                        if e.is_throttling() {
                            return SweepResult::Throttled;
                        }
                    }
                }
            }
        }
        SweepResult::Complete
    }

    /// Reads the node's pods from the API (not the watch cache) and drops every
    /// release a live pod there now claims; all of them if a pod there is settling.
    async fn confirm(
        &self,
        node: &str,
        releases: Vec<Release>,
    ) -> Result<Vec<Release>, kube::Error> {
        let pods = self
            .pods
            .list(&ListParams::default().fields(&format!("spec.nodeName={node}")))
            .await?;
        let mut fresh = Cluster::default();
        let now = Timestamp::now();
        for pod in &pods.items {
            add_claim(&mut fresh, pod, now);
        }
        let claimed = fresh.claims.get(node).cloned().unwrap_or_default();
        let settling = fresh.settling.contains(node);
        let (keep, drop): (Vec<Release>, Vec<Release>) = releases
            .into_iter()
            .partition(|r| !settling && !claimed.contains(&r.held.ip));
        if !drop.is_empty() {
            self.metrics
                .release(ReleaseResult::ClaimedAtConfirm, drop.len());
            info!(node, addresses = %ips(&drop), "claimed at the last moment: kept");
        }
        Ok(keep)
    }

    async fn unassign(&self, eni: &str, batch: &[Release]) -> Result<(), ipmgr::ec2::Ec2Error> {
        let v4: Vec<_> = batch
            .iter()
            .filter_map(|r| match r.held.ip {
                IpAddr::V4(ip) => Some(ip),
                IpAddr::V6(_) => None,
            })
            .collect();
        let v6: Vec<_> = batch
            .iter()
            .filter_map(|r| match r.held.ip {
                IpAddr::V6(ip) => Some(ip),
                IpAddr::V4(_) => None,
            })
            .collect();
        if !v4.is_empty() {
            self.ec2.unassign_ipv4(eni, &v4).await?;
        }
        if !v6.is_empty() {
            self.ec2.unassign_ipv6(eni, &v6).await?;
        }
        Ok(())
    }

    async fn report(&self, node: &str, batch: &[Release], dry_run: bool) {
        for r in batch {
            let verb = if dry_run { "would release" } else { "released" };
            let note = format!(
                "{verb} {} from {} ({}): in the pool of {}, and no live pod on the node has claimed it for {}s",
                r.held.ip,
                r.held.eni,
                r.held.instance,
                r.pool,
                r.unclaimed_for.as_secs()
            );
            info!(node, ip = %r.held.ip, eni = %r.held.eni, instance = %r.held.instance, pool = %r.pool,
                unclaimed_seconds = r.unclaimed_for.as_secs(), dry_run, "{verb}");
            let reason = if dry_run {
                "AddressWouldBeReleased"
            } else {
                "AddressReleased"
            };
            if let Err(e) = self.events.on_node(node, reason, note).await {
                warn!(node, error = %e, "could not record the Event");
            }
        }
    }
}

fn ips(releases: &[Release]) -> String {
    releases
        .iter()
        .map(|r| r.held.ip.to_string())
        .collect::<Vec<_>>()
        .join(",")
}
