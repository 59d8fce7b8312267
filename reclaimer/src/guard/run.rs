//! The guard's loop in the controller: while this replica leads, a pass over the NADs
//! in the namespaces the webhook serves at every change to one and every
//! `--guard-interval` (subnets, reservations and ENIs change in EC2, where nothing
//! announces it), reported where users look:
//!
//! - an Event on the NAD when its findings change: `AddressRangeProblem` (Warning)
//!   with every finding, `AddressRangeOk` (Normal) once a NAD that had findings has
//!   none; `kubectl describe network-attachment-definition` shows them;
//! - a log line per finding at each change;
//! - `ipmgmt_reclaimer_guard_findings{namespace,name}`, each NAD's number of findings;
//! - with `--guard-configmap`, every NAD's findings as JSON (`findings.json`: `{"ns/name":
//!   [lines]}`, NADs without findings absent) in a ConfigMap of the controller's
//!   namespace, which the chart mounts into the webhook's pods so that it can warn
//!   about (or deny) pods that ask for a NAD with findings.
//!
//! With `--guard-reserve-ranges`, a NAD whose only finding is a range no explicit
//! subnet CIDR reservation covers gets one (`CreateSubnetCidrReservation`, described
//! with the NAD's name), then an `AddressRangeReserved` Event; a refusal is a Warning
//! Event (`AddressRangeNotReserved`) with EC2's code and what to do, and a reservation
//! EC2 refused is asked for again only after `--guard-interval` (so that a policy
//! attached later takes effect without a new Event at every NAD change). Reservations
//! are never deleted: a NAD's range may still be in use by its pods after it is gone.
//!
//! `Reports` (pure) decides what changed; a replica that starts leading reports every
//! NAD with findings once, since the Events of the replica before may have expired.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, ObjectReference};
use kube::Api;
use kube::api::{Patch, PatchParams};
use tokio::sync::watch;
use tracing::{info, warn};

use ipnet::IpNet;

use super::{Nad, Reservable, Verdicts, ipam};
use crate::ec2::Ec2;
use crate::events::Events;
use crate::loops::{self, Loop, Trigger};
use crate::metrics::{GuardResult, Metrics, WriteResult};
use crate::view::{NadObject, View};

/// After a NAD changes, the pass waits this long for the rest of a burst (a
/// `kubectl apply` of several).
const SETTLE: Duration = Duration::from_secs(1);

#[derive(Clone, Debug)]
pub struct Settings {
    pub interval: Duration,
    /// Interface names that are not `ethN`, by device index (`ens6` → 1).
    pub masters: BTreeMap<String, i32>,
    /// The ConfigMap the findings are published in, and its name.
    pub publish: Option<(Api<ConfigMap>, String)>,
    /// Whether to create the explicit reservations NADs' ranges lack.
    pub reserve: bool,
}

/// The key of the published findings in the ConfigMap, the file name the webhook reads.
pub const FINDINGS_KEY: &str = "findings.json";

/// What to tell users about one NAD.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Report {
    /// Its findings, new or changed.
    Problem(Vec<String>),
    /// It had findings and has none now.
    Resolved,
}

/// Each NAD's findings as last reported, by `namespace/name`.
#[derive(Debug, Default)]
pub struct Reports {
    last: BTreeMap<String, Vec<String>>,
}

impl Reports {
    /// Forgets what was reported: the next update reports every NAD with findings.
    pub fn start_over(&mut self) {
        self.last.clear();
    }

    /// What changed, from the findings of a pass over `present` (every NAD in scope
    /// now). A NAD that is gone is forgotten without a report: there is nothing left
    /// to put an Event on.
    pub fn update(
        &mut self,
        findings: &BTreeMap<String, Vec<String>>,
        present: &BTreeSet<String>,
    ) -> Vec<(String, Report)> {
        let mut reports = Vec::new();
        for name in present {
            match (self.last.get(name), findings.get(name)) {
                (None, Some(lines)) => reports.push((name.clone(), Report::Problem(lines.clone()))),
                (Some(before), Some(lines)) if before != lines => {
                    reports.push((name.clone(), Report::Problem(lines.clone())))
                }
                (Some(_), None) => reports.push((name.clone(), Report::Resolved)),
                _ => {}
            }
        }
        self.last = findings
            .iter()
            .filter(|(name, _)| present.contains(*name))
            .map(|(name, lines)| (name.clone(), lines.clone()))
            .collect();
        reports
    }
}

pub struct Guard<E> {
    ec2: E,
    view: View,
    events: Events,
    metrics: Metrics,
    settings: Settings,
    reports: Reports,
    /// The NADs whose findings series is set, as (namespace, name).
    metered: BTreeSet<(String, String)>,
    /// What the ConfigMap holds, as last written by this replica while leading.
    published: Option<String>,
    /// Reservations EC2 refused, by (subnet, CIDR), and when.
    refused: BTreeMap<(String, IpNet), tokio::time::Instant>,
}

impl<E: Ec2> Guard<E> {
    pub fn new(ec2: E, view: View, events: Events, metrics: Metrics, settings: Settings) -> Self {
        Guard {
            ec2,
            view,
            events,
            metrics,
            settings,
            reports: Reports::default(),
            metered: BTreeSet::new(),
            published: None,
            refused: BTreeMap::new(),
        }
    }

    /// Runs passes while `leading` says this replica leads: at every change to a NAD
    /// and every interval; returns when the election ends.
    pub async fn run(self, leading: watch::Receiver<bool>) {
        let view = self.view.clone();
        let trigger = Trigger {
            changed: || view.nads_changed(),
            settle: SETTLE,
        };
        let interval = self.settings.interval;
        loops::while_leading(self, leading, interval, trigger).await;
    }

    /// One pass: the NADs in scope judged against EC2 now, and what changed reported.
    pub async fn pass(&mut self) {
        let objects = self.view.nads();
        let nads: Vec<Nad> = objects
            .iter()
            .map(|o| Nad {
                name: key(o),
                read: ipam::read(&o.config),
            })
            .collect();
        let instances: Vec<String> = self.view.instances().into_keys().collect();
        let masters = &self.settings.masters;
        let mut verdicts = match super::pass(&self.ec2, &nads, &instances, masters).await {
            Ok(verdicts) => verdicts,
            Err(e) => {
                self.metrics.guard_pass(GuardResult::Failed);
                warn!("address-range guard: {e}; its findings stand until a pass completes");
                return;
            }
        };
        if self.settings.reserve && !verdicts.reservable.is_empty() {
            let reserved = self.reserve(&verdicts, &objects).await;
            // Judged again, so that what is now reserved is no finding.
            if reserved {
                match super::pass(&self.ec2, &nads, &instances, &self.settings.masters).await {
                    Ok(again) => verdicts = again,
                    Err(e) => {
                        warn!("address-range guard: {e}; reporting what the pass before found")
                    }
                }
            }
        }
        let findings = verdicts.findings;
        self.metrics.guard_pass(GuardResult::Complete);
        // Every NAD's series, and none left behind for a NAD that is gone.
        let mut metered = BTreeSet::new();
        for object in &objects {
            let n = findings.get(&key(object)).map_or(0, Vec::len);
            self.metrics
                .guard_findings(&object.namespace, &object.name, n);
            if n > 0 {
                metered.insert((object.namespace.clone(), object.name.clone()));
            }
        }
        for (namespace, name) in self.metered.difference(&metered) {
            self.metrics.guard_findings(namespace, name, 0);
        }
        self.metered = metered;
        self.publish(&findings).await;
        let present: BTreeSet<String> = nads.iter().map(|n| n.name.clone()).collect();
        for (name, report) in self.reports.update(&findings, &present) {
            let Some(object) = objects.iter().find(|o| key(o) == name) else {
                continue;
            };
            self.tell(object, &report).await;
        }
    }

    /// Creates each reservation the NADs' ranges lack, but those EC2 refused within
    /// the last interval; tells each NAD what was reserved for it, or why not. Whether
    /// any was made.
    async fn reserve(&mut self, verdicts: &Verdicts, objects: &[NadObject]) -> bool {
        let mut made = false;
        for Reservable { nad, subnet, cidrs } in &verdicts.reservable {
            let Some(object) = objects.iter().find(|o| key(o) == *nad) else {
                continue;
            };
            for cidr in cidrs {
                let at = (subnet.clone(), *cidr);
                if (self.refused.get(&at)).is_some_and(|t| t.elapsed() < self.settings.interval) {
                    continue;
                }
                let description = format!("ipmgmt: NetworkAttachmentDefinition {nad}");
                let (reason, warning, note) = match self
                    .ec2
                    .reserve(subnet, *cidr, &description)
                    .await
                {
                    Ok(()) => {
                        made = true;
                        self.refused.remove(&at);
                        self.metrics.guard_reservation(WriteResult::Created);
                        info!(nad = %nad, %subnet, %cidr, "reserved the range's addresses");
                        (
                            "AddressRangeReserved",
                            false,
                            format!(
                                "reserved {cidr} in {subnet} (an explicit subnet CIDR reservation), so the \
                                     VPC CNI keeps its addresses out of this NAD's range"
                            ),
                        )
                    }
                    Err(e) => {
                        self.metrics.guard_reservation(WriteResult::Refused);
                        warn!(nad = %nad, "could not reserve the range: {e}");
                        self.refused.insert(at, tokio::time::Instant::now());
                        ("AddressRangeNotReserved", true, e.to_string())
                    }
                };
                self.event(object, reason, warning, note).await;
            }
        }
        made
    }

    /// The findings into the ConfigMap, when they differ from what this replica last
    /// wrote there (server-side apply: the controller owns `data`).
    async fn publish(&mut self, findings: &BTreeMap<String, Vec<String>>) {
        let Some((api, name)) = &self.settings.publish else {
            return;
        };
        let json = serde_json::to_string(findings).unwrap_or_else(|_| "{}".into());
        if self.published.as_deref() == Some(json.as_str()) {
            return;
        }
        let config_map = serde_json::json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": name},
            "data": {FINDINGS_KEY: json},
        });
        let params = PatchParams::apply(crate::CONTROLLER).force();
        match api.patch(name, &params, &Patch::Apply(&config_map)).await {
            Ok(_) => self.published = Some(json),
            Err(e) => warn!(configmap = %name, error = %e,
                "could not publish the guard's findings for the webhook; the next pass tries again"),
        }
    }

    async fn tell(&self, nad: &NadObject, report: &Report) {
        let name = key(nad);
        let (reason, warning, note) = match report {
            Report::Problem(lines) => {
                for line in lines {
                    warn!(nad = %name, "address range: {line}");
                }
                ("AddressRangeProblem", true, lines.join("; "))
            }
            Report::Resolved => {
                info!(nad = %name, "address range: no findings any more");
                (
                    "AddressRangeOk",
                    false,
                    "the address range fits the Multus ENIs' subnets again".to_owned(),
                )
            }
        };
        self.event(nad, reason, warning, note).await;
    }

    async fn event(&self, nad: &NadObject, reason: &str, warning: bool, note: String) {
        let regarding = ObjectReference {
            api_version: Some("k8s.cni.cncf.io/v1".into()),
            kind: Some("NetworkAttachmentDefinition".into()),
            namespace: Some(nad.namespace.clone()),
            name: Some(nad.name.clone()),
            uid: nad.uid.clone(),
            ..ObjectReference::default()
        };
        if let Err(e) = self
            .events
            .report(regarding, "CheckAddressRange", reason, warning, note)
            .await
        {
            warn!(nad = %key(nad), error = %e, "could not write the Event; the log line above says the same");
        }
    }
}

impl<E: Ec2> Loop for Guard<E> {
    fn start(&mut self) {
        // A new term reports every NAD with findings again and writes the ConfigMap.
        self.reports.start_over();
        self.published = None;
        self.refused.clear();
    }

    async fn pass(&mut self) {
        Guard::pass(self).await;
    }
}

fn key(nad: &NadObject) -> String {
    format!("{}/{}", nad.namespace, nad.name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn findings(of: &[(&str, &[&str])]) -> BTreeMap<String, Vec<String>> {
        of.iter()
            .map(|(n, l)| (n.to_string(), l.iter().map(|s| s.to_string()).collect()))
            .collect()
    }

    fn present(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_nad_is_reported_when_its_findings_change_and_once_they_are_gone() {
        let mut reports = Reports::default();
        let all = present(&["a/one", "a/two"]);
        let first = findings(&[("a/one", &["outside"])]);
        assert_eq!(
            reports.update(&first, &all),
            vec![("a/one".into(), Report::Problem(vec!["outside".into()]))]
        );
        // The same findings again: nothing new to say.
        assert_eq!(reports.update(&first, &all), vec![]);
        // A second finding: the whole list again.
        let more = findings(&[("a/one", &["outside", "reserved"])]);
        assert_eq!(
            reports.update(&more, &all),
            vec![(
                "a/one".into(),
                Report::Problem(vec!["outside".into(), "reserved".into()])
            )]
        );
        // Fixed: one Ok; then silence.
        assert_eq!(
            reports.update(&BTreeMap::new(), &all),
            vec![("a/one".into(), Report::Resolved)]
        );
        assert_eq!(reports.update(&BTreeMap::new(), &all), vec![]);
    }

    #[test]
    fn a_nad_that_is_gone_is_forgotten_and_a_new_leader_reports_again() {
        let mut reports = Reports::default();
        let first = findings(&[("a/one", &["outside"])]);
        reports.update(&first, &present(&["a/one"]));
        // Deleted: no Ok for an object that is not there.
        assert_eq!(reports.update(&BTreeMap::new(), &present(&[])), vec![]);
        // Made again with the same mistake: reported as new.
        assert_eq!(reports.update(&first, &present(&["a/one"])).len(), 1);
        // A replica that starts leading says it all once more.
        reports.start_over();
        assert_eq!(
            reports.update(&first, &present(&["a/one"])),
            vec![("a/one".into(), Report::Problem(vec!["outside".into()]))]
        );
    }
}
