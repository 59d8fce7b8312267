//! What the controller's address-range guard found, as the webhook uses it: a pod that
//! asks for ipmgmt and for a NetworkAttachmentDefinition with findings is admitted
//! with a warning (`kubectl apply` prints it), or denied with every finding when the
//! install asks for that (`--guard-deny`).
//!
//! The controller publishes the findings in a ConfigMap (`findings.json`: `{"ns/name":
//! [lines]}`) that the chart mounts into the webhook's pods; kubelet refreshes the file
//! within about a minute of a change, and `watch` re-reads it as it does the
//! certificate. No file (no controller, or its first pass not done) is no findings; a
//! file that cannot be read keeps the findings read last.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use serde_json::Value;
use tracing::{info, warn};

/// The apiserver may cut an admission warning longer than this.
const WARNING_MAX: usize = 256;

/// Findings by NAD (`namespace/name`).
type ByNad = HashMap<String, Vec<String>>;

#[derive(Debug)]
pub struct Findings {
    current: ArcSwap<ByNad>,
    source: Option<PathBuf>,
    /// The file's bytes as last read.
    last: Mutex<Option<Vec<u8>>>,
    deny: bool,
}

/// What the findings say about one pod.
#[derive(Debug, PartialEq, Eq)]
pub enum Judged {
    Clean,
    Warn(Vec<String>),
    Deny(String),
}

impl Findings {
    /// No findings, ever: no file to read.
    pub fn none() -> Self {
        Findings {
            current: ArcSwap::from_pointee(HashMap::new()),
            source: None,
            last: Mutex::new(None),
            deny: false,
        }
    }

    /// Findings read from `path` (now, and at every `reload`).
    pub fn from_file(path: PathBuf, deny: bool) -> Self {
        let findings = Findings {
            source: Some(path),
            deny,
            ..Findings::none()
        };
        findings.reload();
        findings
    }

    /// Findings as given, for tests.
    pub fn fixed(by_nad: ByNad, deny: bool) -> Self {
        Findings {
            current: ArcSwap::from_pointee(by_nad),
            deny,
            ..Findings::none()
        }
    }

    pub fn reloads(&self) -> bool {
        self.source.is_some()
    }

    /// Re-reads the file; a change swaps in. Returns the number of NADs with findings
    /// after a change, `None` when nothing changed or the file could not be used.
    pub fn reload(&self) -> Option<usize> {
        let path = self.source.as_ref()?;
        let bytes = match std::fs::read(path) {
            Ok(bytes) => bytes,
            // The ConfigMap's key is not there yet: nothing found so far.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => b"{}".to_vec(),
            Err(e) => {
                warn!(path = %path.display(), error = %e, "cannot read the guard's findings; keeping the last ones");
                return None;
            }
        };
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        if last.as_deref() == Some(bytes.as_slice()) {
            return None;
        }
        match serde_json::from_slice::<ByNad>(&bytes) {
            Ok(by_nad) => {
                let n = by_nad.len();
                self.current.store(Arc::new(by_nad));
                *last = Some(bytes);
                Some(n)
            }
            Err(e) => {
                warn!(path = %path.display(), error = %e, "the guard's findings are not a map of NAD to lines; keeping the last ones");
                None
            }
        }
    }

    /// The pod's NADs (`k8s.v1.cni.cncf.io/networks`, read by `networks` only when
    /// some NAD has findings; in `namespace` unless named with theirs) that have
    /// findings: a warning each, or one denial.
    pub fn judge<'a>(&self, namespace: &str, networks: impl FnOnce() -> Option<&'a str>) -> Judged {
        let current = self.current.load();
        if current.is_empty() {
            return Judged::Clean;
        }
        let Some(networks) = networks() else {
            return Judged::Clean;
        };
        let found: Vec<(String, &Vec<String>)> = requested(networks, namespace)
            .into_iter()
            .filter_map(|nad| current.get(&nad).map(|lines| (nad, lines)))
            .collect();
        if found.is_empty() {
            return Judged::Clean;
        }
        if self.deny {
            let each: Vec<String> = (found.iter())
                .map(|(nad, lines)| {
                    format!("NetworkAttachmentDefinition {nad}: {}", lines.join("; "))
                })
                .collect();
            return Judged::Deny(format!(
                "the address-range guard found problems with the networks this pod asks for (fix the NADs, or \
                 set webhook.guardDeny=false to admit with a warning): {}",
                each.join(" | ")
            ));
        }
        Judged::Warn(
            (found.iter())
                .map(|(nad, lines)| warning(nad, lines.len()))
                .collect(),
        )
    }
}

/// One short line per NAD; the Event on the NAD has the findings themselves.
fn warning(nad: &str, n: usize) -> String {
    let (namespace, name) = nad.split_once('/').unwrap_or(("", nad));
    let text = format!(
        "NetworkAttachmentDefinition {nad} has {n} address-range finding{}: kubectl describe \
         network-attachment-definitions -n {namespace} {name}",
        if n == 1 { "" } else { "s" }
    );
    if text.len() <= WARNING_MAX {
        return text;
    }
    let mut end = WARNING_MAX - 3;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &text[..end])
}

/// The NADs a `k8s.v1.cni.cncf.io/networks` annotation asks for, as `namespace/name`,
/// read as Multus reads it: a JSON list of `{"name", "namespace"}`, or a comma list of
/// `[namespace/]name[@interface]`. What cannot be read asks for nothing here (Multus
/// refuses the pod itself).
pub fn requested(networks: &str, namespace: &str) -> Vec<String> {
    let text = networks.trim();
    if text.starts_with('[') {
        let Ok(Value::Array(list)) = serde_json::from_str::<Value>(text) else {
            return Vec::new();
        };
        return (list.iter())
            .filter_map(|n| {
                let name = n.get("name")?.as_str()?;
                let ns = n
                    .get("namespace")
                    .and_then(Value::as_str)
                    .unwrap_or(namespace);
                Some(format!("{ns}/{name}"))
            })
            .collect();
    }
    (text.split(','))
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .map(|n| {
            let n = n.split('@').next().unwrap_or(n);
            match n.split_once('/') {
                Some((ns, name)) => format!("{ns}/{name}"),
                None => format!("{namespace}/{n}"),
            }
        })
        .collect()
}

/// Re-reads the findings every `every`, for as long as it runs.
pub async fn watch(findings: Arc<Findings>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Some(n) = findings.reload() {
            info!(nads = n, "the address-range guard's findings changed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn findings(deny: bool) -> Findings {
        Findings::fixed(
            HashMap::from([(
                "telco/ipvlan-net1".to_owned(),
                vec!["range 10.0.6.1-10.0.6.254 is not inside subnet-a".to_owned()],
            )]),
            deny,
        )
    }

    #[test]
    fn networks_are_read_as_multus_reads_them() {
        assert_eq!(
            requested("ipvlan-net1, other/ipvlan-net2@net2", "telco"),
            ["telco/ipvlan-net1", "other/ipvlan-net2"]
        );
        assert_eq!(
            requested(
                r#"[{"name":"ipvlan-net1","interface":"net1"},{"name":"n2","namespace":"other"}]"#,
                "telco"
            ),
            ["telco/ipvlan-net1", "other/n2"]
        );
        assert!(requested("[not json", "telco").is_empty());
        assert!(requested(" , ", "telco").is_empty());
    }

    #[test]
    fn a_pod_asking_for_a_nad_with_findings_is_warned_or_denied() {
        let warn = findings(false);
        assert_eq!(warn.judge("telco", || None), Judged::Clean);
        assert_eq!(warn.judge("telco", || Some("other-net")), Judged::Clean);
        // The same name in another namespace is another NAD.
        assert_eq!(warn.judge("edge", || Some("ipvlan-net1")), Judged::Clean);
        let Judged::Warn(lines) = warn.judge("telco", || Some("ipvlan-net1@net1")) else {
            panic!("a warning");
        };
        assert_eq!(
            lines,
            [
                "NetworkAttachmentDefinition telco/ipvlan-net1 has 1 address-range finding: \
              kubectl describe network-attachment-definitions -n telco ipvlan-net1"
            ]
        );
        let Judged::Deny(message) = findings(true).judge("edge", || Some("telco/ipvlan-net1"))
        else {
            panic!("a denial");
        };
        assert!(
            message.contains("telco/ipvlan-net1: range 10.0.6.1-10.0.6.254 is not inside subnet-a"),
            "{message}"
        );
    }

    #[test]
    fn warnings_fit_what_the_apiserver_keeps() {
        let long = format!("telco/{}", "n".repeat(300));
        assert!(warning(&long, 3).len() <= WARNING_MAX);
        assert!(warning("telco/a", 2).contains("2 address-range findings"));
    }

    #[test]
    fn the_file_is_reread_and_a_bad_one_keeps_the_last_findings() {
        let dir = std::env::temp_dir().join(format!("ipmgmt-guard-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("findings.json");
        let _ = std::fs::remove_file(&path);
        // No file yet: no findings.
        let findings = Findings::from_file(path.clone(), false);
        assert_eq!(findings.judge("telco", || Some("a")), Judged::Clean);
        std::fs::write(&path, r#"{"telco/a":["outside"]}"#).unwrap();
        assert_eq!(findings.reload(), Some(1));
        assert_eq!(findings.reload(), None, "unchanged");
        assert!(matches!(
            findings.judge("telco", || Some("a")),
            Judged::Warn(_)
        ));
        std::fs::write(&path, "not json").unwrap();
        assert_eq!(findings.reload(), None);
        assert!(
            matches!(findings.judge("telco", || Some("a")), Judged::Warn(_)),
            "kept"
        );
        std::fs::write(&path, "{}").unwrap();
        assert_eq!(findings.reload(), Some(0));
        assert_eq!(findings.judge("telco", || Some("a")), Judged::Clean);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
