//! A sweep, with its I/O: read the view, describe the Multus ENIs, decide
//! (`sweep::decide`), release, and say so in a log line, an Event on the node and a
//! metric; and the loop that sweeps while this replica leads.
//!
//! A release must never leave an address unassigned that a live pod claims. Between
//! the decision and the call, a pod scheduled to the node can be handed exactly that
//! address (whereabouts hands out the lowest free one); its IP manager then finds it
//! already on the ENI and makes no call. So:
//! - before every attempt of every unassign, the node's pods are read again from the
//!   API (not the watch cache), and an address one of them claims is kept;
//! - an unassign is one attempt (no retry inside the SDK): a throttled one waits and
//!   goes through that check again;
//! - after the node's unassigns, its pods are read once more, and an address claimed
//!   since the last check that no ENI holds any longer is assigned back to the ENI
//!   it came from (without reassignment: another ENI holding it makes it that ENI's);
//! - the Events are written after all of that, so their writes never widen the window.
//!
//! A refusal of a batch that is not throttling (an address gone meanwhile, an
//! unexpected code) splits it, so one address never keeps the others from going.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::ListParams;
use tokio::sync::watch;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::ec2::Ec2;
use crate::events::Events;
use crate::loops::{self, Loop};
use crate::metrics::{Metrics, ReleaseResult, SweepResult};
use crate::reclaim::claims::claim_of;
use crate::reclaim::sweep::{Held, Release, Suspects, decide};
use crate::view::View;
use ipmgmt_common::aws::Ec2Error;

/// The longest wait between two attempts of one change.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

pub struct Settings {
    pub grace: Duration,
    pub max_releases_per_sweep: usize,
    pub dry_run: bool,
    /// Attempts per EC2 change, retries after throttling and server errors included.
    pub attempts: u32,
    /// The first wait between attempts; it doubles, with jitter, up to 5 s.
    pub backoff: Duration,
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
}

/// What one batch's release came to.
enum Batch {
    /// Unassigned (possibly fewer than asked: the rest were claimed at a check).
    Released(Vec<Release>),
    /// Refused for a reason that may concern one address only: try each alone.
    Split(Vec<Release>),
    /// Not released: the error, and whether it was throttling past the attempts.
    Failed(Vec<Release>, Ec2Error),
    /// The node's pods could not be read, or the leadership ended: nothing called.
    Stopped,
}

/// What a node's release came to, for its Events.
#[derive(Default)]
struct NodeOutcome {
    released: Vec<Release>,
    /// Put back on their ENI, with the pod that claimed each.
    put_back: Vec<(Release, String)>,
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
        }
    }

    /// Called when this replica starts leading: what an earlier leadership saw
    /// is not trusted.
    /// Sweeps every `interval` while `leading` says this replica leads, each time it
    /// starts leading with every grace period started again; returns when the
    /// election ends.
    pub async fn run(self, interval: Duration) {
        let leading = self.leading.clone();
        loops::while_leading(self, leading, interval, loops::interval_only()).await;
    }

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
        let cluster = self.view.cluster();
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
        let mut result = SweepResult::Complete;
        for (node, releases) in by_node {
            if !*self.leading.borrow() {
                info!("no longer leading: sweep stopped before releasing");
                break;
            }
            if self.settings.dry_run {
                self.metrics.release(ReleaseResult::DryRun, releases.len());
                self.report(&node, &releases, &[], true).await;
                continue;
            }
            let (outcome, throttled) = self.release_on_node(&node, releases).await;
            self.view.forget(outcome.released.iter().map(|r| r.held.ip));
            self.report(&node, &outcome.released, &outcome.put_back, false)
                .await;
            if throttled {
                result = SweepResult::Throttled;
                break;
            }
        }
        result
    }

    /// Every batch of one node, then the check for claims made meanwhile. Whether EC2
    /// throttled a batch past its attempts (the sweep then stops).
    async fn release_on_node(&self, node: &str, releases: Vec<Release>) -> (NodeOutcome, bool) {
        let mut batches: BTreeMap<(String, bool), Vec<Release>> = BTreeMap::new();
        for r in releases {
            batches
                .entry((r.held.eni.clone(), r.held.ip.is_ipv4()))
                .or_default()
                .push(r);
        }
        let mut queue: VecDeque<Vec<Release>> = batches.into_values().collect();
        let mut outcome = NodeOutcome::default();
        // Every address an unassign was sent for, landed or not: an answer lost on the
        // way does not mean the call did not land.
        let mut sent: Vec<Release> = Vec::new();
        let mut throttled = false;
        while let Some(batch) = queue.pop_front() {
            match self.release_batch(node, batch, &mut sent).await {
                Batch::Released(released) => outcome.released.extend(released),
                Batch::Split(batch) => {
                    info!(node, addresses = %ips(&batch), "EC2 refused the batch: releasing each address on its own");
                    queue.extend(batch.into_iter().map(|r| vec![r]));
                }
                Batch::Failed(batch, e) => {
                    self.metrics.release(ReleaseResult::Failed, batch.len());
                    warn!(node, addresses = %ips(&batch), error = %e, "release failed");
                    if e.is_throttling() {
                        throttled = true;
                        break;
                    }
                }
                Batch::Stopped => break,
            }
        }
        outcome.put_back = self.put_back(node, &sent).await;
        outcome
            .released
            .retain(|r| !outcome.put_back.iter().any(|(b, _)| b.held == r.held));
        // Counted once the put-back is done: what ended unassigned.
        self.metrics
            .release(ReleaseResult::Released, outcome.released.len());
        (outcome, throttled)
    }

    /// One batch (one ENI, one family): an attempt after a fresh check of the node's
    /// pods, as many times as the settings allow while EC2 throttles or fails.
    async fn release_batch(
        &self,
        node: &str,
        batch: Vec<Release>,
        sent: &mut Vec<Release>,
    ) -> Batch {
        let mut batch = batch;
        let mut backoff = self.settings.backoff;
        let attempts = self.settings.attempts.max(1);
        for attempt in 1..=attempts {
            if !*self.leading.borrow() {
                info!(node, "no longer leading: release stopped");
                return Batch::Stopped;
            }
            batch = match self.unclaimed(node, batch).await {
                Ok(batch) => batch,
                Err(e) => {
                    warn!(node, error = %e, "could not read the node's pods to check the release; nothing released there this sweep");
                    return Batch::Stopped;
                }
            };
            let Some(first) = batch.first() else {
                return Batch::Released(Vec::new());
            };
            let eni = first.held.eni.clone();
            for r in &batch {
                if !sent.iter().any(|s| s.held == r.held) {
                    sent.push(r.clone());
                }
            }
            let error = match self.unassign(&eni, &batch).await {
                Ok(()) => return Batch::Released(batch),
                Err(e) => e,
            };
            if !transient(&error) {
                return match batch.len() {
                    1 => Batch::Failed(batch, error),
                    _ => Batch::Split(batch),
                };
            }
            if attempt == attempts {
                return Batch::Failed(batch, error);
            }
            debug!(node, eni, attempt, error = %error, "unassign not done; checking the claims again before the next attempt");
            tokio::time::sleep(ipmgmt_common::aws::jittered(backoff)).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
        Batch::Stopped
    }

    /// The node's pods from the API (not the watch cache): what of `releases` no live
    /// pod there claims; nothing if a pod there is settling.
    async fn unclaimed(
        &self,
        node: &str,
        releases: Vec<Release>,
    ) -> Result<Vec<Release>, kube::Error> {
        let claims = self.claims_on(node).await?;
        let (keep, drop): (Vec<Release>, Vec<Release>) = releases
            .into_iter()
            .partition(|r| !claims.settling && !claims.by_address.contains_key(&r.held.ip));
        if !drop.is_empty() {
            self.metrics
                .release(ReleaseResult::ClaimedAtConfirm, drop.len());
            info!(node, addresses = %ips(&drop), "claimed at the last moment: kept");
        }
        Ok(keep)
    }

    /// Addresses a pod on the node claimed after an unassign was sent for them, and
    /// that no Multus ENI of the node holds any longer: assigned back to the ENI they
    /// came from. Returned with the pod that claims each.
    async fn put_back(&self, node: &str, sent: &[Release]) -> Vec<(Release, String)> {
        if sent.is_empty() {
            return Vec::new();
        }
        let claims = match self.claims_on_with_retries(node).await {
            Ok(claims) => claims,
            Err(e) => {
                warn!(node, addresses = %ips(sent), error = %e,
                    "could not read the node's pods after releasing: a pod that claimed one of these meanwhile keeps it only if its IP manager assigns it again");
                return Vec::new();
            }
        };
        let claimed: Vec<(Release, String)> = (sent.iter())
            .filter_map(|r| Some((r.clone(), claims.by_address.get(&r.held.ip)?.clone())))
            .collect();
        if claimed.is_empty() {
            return Vec::new();
        }
        let instance = claimed[0].0.held.instance.clone();
        let enis = match self.ec2.multus_enis(&[instance]).await {
            Ok(enis) => enis,
            Err(e) => {
                warn!(node, addresses = %ips_of(&claimed), error = %e, "claimed while their release was in flight, and the ENIs could not be described to put them back");
                return Vec::new();
            }
        };
        let mut back = Vec::new();
        for (r, pod) in claimed {
            if enis.iter().any(|e| e.addresses().any(|ip| ip == r.held.ip)) {
                // On an ENI again: the pod's own IP manager assigned it.
                continue;
            }
            match self.assign_back(&r).await {
                Ok(()) => {
                    self.metrics.release(ReleaseResult::PutBack, 1);
                    warn!(node, ip = %r.held.ip, eni = %r.held.eni, pod, "claimed while its release was in flight: put back");
                    back.push((r, pod));
                }
                Err(e) => {
                    warn!(node, ip = %r.held.ip, eni = %r.held.eni, pod, error = %e,
                        "claimed while its release was in flight, and could not be put back: the pod's address is not routed until its IP manager assigns it");
                }
            }
        }
        back
    }

    async fn assign_back(&self, r: &Release) -> Result<(), Ec2Error> {
        self.with_retries(transient, || async {
            match r.held.ip {
                IpAddr::V4(v4) => self.ec2.assign_ipv4(&r.held.eni, &[v4]).await,
                IpAddr::V6(v6) => self.ec2.assign_ipv6(&r.held.eni, &[v6]).await,
            }
        })
        .await
    }

    /// `call`, again while `again` says its error is worth it, up to the settings'
    /// attempts, with the backoff of an EC2 change between them.
    async fn with_retries<T, Err, F, Fut>(
        &self,
        again: impl Fn(&Err) -> bool,
        mut call: F,
    ) -> Result<T, Err>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, Err>>,
    {
        let mut backoff = self.settings.backoff;
        let mut attempt = 1;
        loop {
            match call().await {
                Err(e) if attempt < self.settings.attempts && again(&e) => {
                    tokio::time::sleep(ipmgmt_common::aws::jittered(backoff)).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    async fn claims_on(&self, node: &str) -> Result<NodeClaims, kube::Error> {
        let pods = self
            .pods
            .list(&ListParams::default().fields(&format!("spec.nodeName={node}")))
            .await?;
        let mut claims = NodeClaims::default();
        for pod in &pods.items {
            let Some(claim) = claim_of(pod) else {
                continue;
            };
            claims.settling |= claim.settling;
            let name = format!(
                "{}/{}",
                pod.metadata.namespace.as_deref().unwrap_or(""),
                pod.metadata.name.as_deref().unwrap_or("")
            );
            for ip in claim.addresses {
                claims.by_address.insert(ip, name.clone());
            }
        }
        Ok(claims)
    }

    /// The read after the calls matters most: a claimed address left unassigned is a
    /// pod without its network. It gets the attempts of an EC2 change.
    async fn claims_on_with_retries(&self, node: &str) -> Result<NodeClaims, kube::Error> {
        let again = |e: &kube::Error| {
            debug!(node, error = %e, "reading the node's pods again");
            true
        };
        self.with_retries(again, || self.claims_on(node)).await
    }

    async fn unassign(&self, eni: &str, batch: &[Release]) -> Result<(), Ec2Error> {
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

    async fn report(
        &self,
        node: &str,
        released: &[Release],
        put_back: &[(Release, String)],
        dry_run: bool,
    ) {
        for r in released {
            let verb = if dry_run { "would release" } else { "released" };
            let note = format!(
                "{verb} {} from {} ({}): {}, and no live pod on the node has claimed it for {}s",
                r.held.ip,
                r.held.eni,
                r.held.instance,
                r.evidence,
                r.unclaimed_for.as_secs()
            );
            info!(node, ip = %r.held.ip, eni = %r.held.eni, instance = %r.held.instance, evidence = %r.evidence,
                unclaimed_seconds = r.unclaimed_for.as_secs(), dry_run, "{verb}");
            let reason = if dry_run {
                "AddressWouldBeReleased"
            } else {
                "AddressReleased"
            };
            if let Err(e) = self.events.on_node(node, reason, false, note).await {
                warn!(node, error = %e, "could not record the Event");
            }
        }
        for (r, pod) in put_back {
            let note = format!(
                "put {} back on {} ({}): {pod} claimed it while its release was in flight",
                r.held.ip, r.held.eni, r.held.instance
            );
            if let Err(e) = self
                .events
                .on_node(node, "AddressPutBack", true, note)
                .await
            {
                warn!(node, error = %e, "could not record the Event");
            }
        }
    }
}

/// The claims of one node's live pods, as a fresh list shows them.
#[derive(Default)]
struct NodeClaims {
    /// Each claimed address, with the pod (`namespace/name`) that claims it.
    by_address: BTreeMap<IpAddr, String>,
    /// A pod there asked for networks that Multus has not reported yet.
    settling: bool,
}

/// Worth another attempt: throttling, a server error, or no answer at all.
fn transient(e: &Ec2Error) -> bool {
    e.is_throttling()
        || match e.code.as_deref() {
            None => true,
            Some(code) => matches!(
                code,
                "InternalError" | "InternalFailure" | "ServiceUnavailable" | "Unavailable"
            ),
        }
}

fn ips(releases: &[Release]) -> String {
    let set: BTreeSet<String> = releases.iter().map(|r| r.held.ip.to_string()).collect();
    set.into_iter().collect::<Vec<_>>().join(",")
}

fn ips_of(claimed: &[(Release, String)]) -> String {
    let set: BTreeSet<String> = claimed.iter().map(|(r, _)| r.held.ip.to_string()).collect();
    set.into_iter().collect::<Vec<_>>().join(",")
}

impl<E: Ec2> Loop for Sweeper<E> {
    fn start(&mut self) {
        self.start_over();
    }

    async fn pass(&mut self) {
        self.sweep().await;
    }
}
