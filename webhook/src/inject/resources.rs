//! The manager's CPU and memory: the pod's Guaranteed QoS class kept, and the
//! `ipmgmt.aws/resources` override.
//!
//! Kubernetes computes a pod's QoS class over every container, init containers
//! included. A Guaranteed pod that gains a manager whose requests are below its limits
//! turns Burstable, and kubelet's static CPU manager then silently stops giving it
//! exclusive CPUs. So in a Guaranteed pod the manager's requests equal its limits.

use super::pod::{Container, ResourceList};
use super::quantity::Quantity;

pub const RESOURCES_ANNOTATION: &str = ipmgmt_common::annotations::RESOURCES;

const KEYS: &str = "requests.cpu, requests.memory, limits.cpu, limits.memory";

/// The manager's resources as rendered into the pod: the configured text, so the pod
/// shows what the platform team wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resources {
    pub cpu_request: String,
    pub memory_request: String,
    pub cpu_limit: Option<String>,
    pub memory_limit: Option<String>,
}

impl Resources {
    /// What the manager gets in a pod that has no `ipmgmt.aws/resources` annotation.
    pub fn for_pod(&self, guaranteed: bool) -> Resources {
        if !guaranteed {
            return self.clone();
        }
        let cpu = self.cpu_limit.as_ref().unwrap_or(&self.cpu_request);
        let memory = self.memory_limit.as_ref().unwrap_or(&self.memory_request);
        Resources {
            cpu_request: cpu.clone(),
            memory_request: memory.clone(),
            cpu_limit: Some(cpu.clone()),
            memory_limit: Some(memory.clone()),
        }
    }

    /// Applies a pod's override on top of these (configured) resources. In a
    /// Guaranteed pod a request follows its limit unless the override names the
    /// request; when that makes the pod Burstable, the second value says so.
    pub fn with_override(
        &self,
        guaranteed: bool,
        over: &Override<'_>,
    ) -> Result<(Resources, Option<String>), String> {
        let (cpu_request, cpu_limit) = one_resource(
            &CPU,
            (&self.cpu_request, self.cpu_limit.as_deref()),
            (over.cpu_request, over.cpu_limit),
            guaranteed,
        )?;
        let (memory_request, memory_limit) = one_resource(
            &MEMORY,
            (&self.memory_request, self.memory_limit.as_deref()),
            (over.memory_request, over.memory_limit),
            guaranteed,
        )?;
        let resources = Resources {
            cpu_request: cpu_request.text.to_owned(),
            memory_request: memory_request.text.to_owned(),
            cpu_limit: cpu_limit.map(|l| l.text.to_owned()),
            memory_limit: memory_limit.map(|l| l.text.to_owned()),
        };
        let mut below = Vec::new();
        for (name, request, limit) in [
            ("cpu", cpu_request, cpu_limit),
            ("memory", memory_request, memory_limit),
        ] {
            if let Some(limit) = limit
                && request.value != limit.value
            {
                below.push(format!(
                    "{name} request {} below its limit {}",
                    request.text, limit.text
                ));
            }
        }
        let warning = (guaranteed && !below.is_empty()).then(|| {
            format!(
                "{RESOURCES_ANNOTATION} gives the IP manager a {}: the pod was Guaranteed and is now \
                 Burstable, so kubelet's static CPU manager will not give it exclusive CPUs",
                below.join(" and a ")
            )
        });
        Ok((resources, warning))
    }
}

/// One of the two resources, by the names it goes by in flags and the annotation.
struct Names {
    name: &'static str,
    request_key: &'static str,
    limit_key: &'static str,
    request_flag: &'static str,
    limit_flag: &'static str,
}

const CPU: Names = Names {
    name: "cpu",
    request_key: "requests.cpu",
    limit_key: "limits.cpu",
    request_flag: "--cpu-request",
    limit_flag: "--cpu-limit",
};

const MEMORY: Names = Names {
    name: "memory",
    request_key: "requests.memory",
    limit_key: "limits.memory",
    request_flag: "--memory-request",
    limit_flag: "--memory-limit",
};

/// A quantity together with its text and where it came from, for messages.
#[derive(Clone, Copy)]
struct Valued<'a> {
    text: &'a str,
    value: Quantity,
    source: Source,
}

#[derive(Clone, Copy)]
enum Source {
    Annotation(&'static str),
    Flag(&'static str),
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Annotation(key) => write!(f, "{key} in {RESOURCES_ANNOTATION}"),
            Source::Flag(flag) => write!(f, "the webhook's {flag}"),
        }
    }
}

/// The request and limit of one resource: the override's where it gives them, else
/// the configured ones; in a Guaranteed pod the request follows the limit.
fn one_resource<'a>(
    names: &Names,
    (configured_request, configured_limit): (&'a str, Option<&'a str>),
    (request, limit): (Given<'a>, Given<'a>),
    guaranteed: bool,
) -> Result<(Valued<'a>, Option<Valued<'a>>), String> {
    let configured = |text: &'a str, flag: &'static str| -> Result<Valued<'a>, String> {
        let value =
            Quantity::parse(text).map_err(|why| format!("the webhook's {flag} {text:?} {why}"))?;
        Ok(Valued {
            text,
            value,
            source: Source::Flag(flag),
        })
    };
    let annotated = |(text, value): (&'a str, Quantity), key| Valued {
        text,
        value,
        source: Source::Annotation(key),
    };
    let request_over = request.map(|r| annotated(r, names.request_key));
    let limit_over = limit.map(|l| annotated(l, names.limit_key));
    let configured_limit = configured_limit
        .map(|l| configured(l, names.limit_flag))
        .transpose()?;
    let (request, limit) = if guaranteed {
        let limit = match (limit_over, configured_limit, request_over) {
            (Some(l), _, _) | (None, Some(l), _) | (None, None, Some(l)) => l,
            (None, None, None) => configured(configured_request, names.request_flag)?,
        };
        (request_over.unwrap_or(limit), Some(limit))
    } else {
        let request = match request_over {
            Some(r) => r,
            None => configured(configured_request, names.request_flag)?,
        };
        (request, limit_over.or(configured_limit))
    };
    if let Some(limit) = limit
        && request.value > limit.value
    {
        let name = names.name;
        return Err(format!(
            "annotation {RESOURCES_ANNOTATION}: the {name} request {} ({}) is greater than the {name} \
             limit {} ({}); a request may not exceed its limit, so set both",
            request.text, request.source, limit.text, limit.source
        ));
    }
    Ok((request, limit))
}

/// A quantity the annotation gives, with its text.
type Given<'a> = Option<(&'a str, Quantity)>;

/// `ipmgmt.aws/resources`, read: each key at most once, each quantity positive.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Override<'a> {
    pub cpu_request: Given<'a>,
    pub memory_request: Given<'a>,
    pub cpu_limit: Given<'a>,
    pub memory_limit: Given<'a>,
}

impl<'a> Override<'a> {
    /// kubectl's syntax: `requests.cpu=50m,limits.memory=32Mi`, any subset.
    pub fn parse(value: &'a str) -> Result<Override<'a>, String> {
        let mut over = Override::default();
        for part in value.split(',').map(str::trim) {
            if part.is_empty() {
                continue;
            }
            let bad = |why: &str| {
                format!(
                    "annotation {RESOURCES_ANNOTATION}: {part:?} {why}; write KEY=QUANTITY pairs separated by \
                     commas, KEY one of {KEYS}"
                )
            };
            let Some((key, text)) = part.split_once('=') else {
                return Err(bad("is not KEY=QUANTITY"));
            };
            let (key, text) = (key.trim(), text.trim());
            let slot = match key {
                "requests.cpu" => &mut over.cpu_request,
                "requests.memory" => &mut over.memory_request,
                "limits.cpu" => &mut over.cpu_limit,
                "limits.memory" => &mut over.memory_limit,
                _ => return Err(bad(&format!("has the unknown key {key:?}"))),
            };
            let quantity = Quantity::parse(text).map_err(|why| bad(&format!("{text:?} {why}")))?;
            if !quantity.is_positive() {
                return Err(bad("must be greater than zero"));
            }
            if slot.replace((text, quantity)).is_some() {
                return Err(bad(&format!("sets {key} a second time")));
            }
        }
        Ok(over)
    }
}

/// Whether the pod is Guaranteed as Kubernetes counts it, the manager left out: every
/// container and init container has cpu and memory limits, and requests equal to
/// them (a missing request is the limit, as the apiserver defaults it).
pub fn is_guaranteed<'c, 'a: 'c>(
    containers: impl IntoIterator<Item = &'c Container<'a>>,
) -> Result<bool, String> {
    let mut any = false;
    for container in containers {
        any = true;
        let resources = container.resources.as_ref();
        let requests = resources.and_then(|r| r.requests.as_ref());
        let limits = resources.and_then(|r| r.limits.as_ref());
        let name = container.name.as_deref().unwrap_or("");
        for resource in ["cpu", "memory"] {
            let read = |list: Option<&ResourceList<'_>>, kind: &str| {
                let Some(text) = list.and_then(|l| l.get(resource)) else {
                    return Ok(None);
                };
                let text = text.as_text();
                Quantity::parse(&text).map(Some).map_err(|why| {
                    format!("container {name:?}: resources.{kind}.{resource} {text:?} {why}")
                })
            };
            let Some(limit) = read(limits, "limits")?.filter(|l| l.is_positive()) else {
                return Ok(false);
            };
            if read(requests, "requests")?.is_some_and(|r| r != limit) {
                return Ok(false);
            }
        }
    }
    Ok(any)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn override_syntax() {
        let o = Override::parse("requests.cpu=50m, limits.memory=32Mi").unwrap();
        assert_eq!(o.cpu_request.map(|(t, _)| t), Some("50m"));
        assert_eq!(o.memory_limit.map(|(t, _)| t), Some("32Mi"));
        assert!(o.cpu_limit.is_none() && o.memory_request.is_none());
        assert_eq!(Override::parse("").unwrap(), Override::default());
        for (bad, says) in [
            ("requests.gpu=1", "unknown key \"requests.gpu\""),
            ("cpu=50m", "unknown key \"cpu\""),
            ("requests.cpu", "is not KEY=QUANTITY"),
            (
                "requests.cpu=fifty",
                "\"fifty\" is not a Kubernetes quantity",
            ),
            ("limits.memory=0", "greater than zero"),
            ("requests.cpu=1,requests.cpu=2", "a second time"),
        ] {
            let err = Override::parse(bad).unwrap_err();
            assert!(
                err.contains(RESOURCES_ANNOTATION) && err.contains(says) && err.contains(KEYS),
                "{bad}: {err}"
            );
        }
    }

    /// The resources the webhook's default flags give.
    fn configured() -> Resources {
        crate::config::from_flags(["--image", "ipmgr:test"])
            .unwrap()
            .resources
    }

    #[test]
    fn guaranteed_pods_get_requests_equal_to_limits() {
        let r = configured().for_pod(true);
        assert_eq!(
            (r.cpu_request.as_str(), r.cpu_limit.as_deref()),
            ("100m", Some("100m"))
        );
        assert_eq!(
            (r.memory_request.as_str(), r.memory_limit.as_deref()),
            ("64Mi", Some("64Mi"))
        );
        let no_limits = Resources {
            cpu_limit: None,
            memory_limit: None,
            ..configured()
        };
        let r = no_limits.for_pod(true);
        assert_eq!(
            (r.cpu_request.as_str(), r.cpu_limit.as_deref()),
            ("10m", Some("10m"))
        );
        assert_eq!(configured().for_pod(false), configured());
    }

    #[test]
    fn override_in_a_guaranteed_pod() {
        let over = |s| Override::parse(s).unwrap();
        // A limit alone: the request follows it, the pod stays Guaranteed.
        let (r, warning) = configured()
            .with_override(true, &over("limits.cpu=50m"))
            .unwrap();
        assert_eq!(
            (r.cpu_request.as_str(), r.cpu_limit.as_deref()),
            ("50m", Some("50m"))
        );
        assert_eq!(r.memory_request, "64Mi");
        assert_eq!(warning, None);
        // A request below the limit is honoured, with a warning.
        let (r, warning) = configured()
            .with_override(true, &over("requests.cpu=20m"))
            .unwrap();
        assert_eq!(
            (r.cpu_request.as_str(), r.cpu_limit.as_deref()),
            ("20m", Some("100m"))
        );
        let warning = warning.expect("a warning");
        assert!(
            warning.contains("Burstable") && warning.contains("20m"),
            "{warning}"
        );
        // Equal by value is still Guaranteed.
        let (_, warning) = configured()
            .with_override(true, &over("requests.cpu=0.1,limits.cpu=100m"))
            .unwrap();
        assert_eq!(warning, None);
    }

    #[test]
    fn override_in_a_burstable_pod() {
        let over = |s| Override::parse(s).unwrap();
        let (r, warning) = configured()
            .with_override(false, &over("requests.memory=32Mi"))
            .unwrap();
        assert_eq!(r.memory_request, "32Mi");
        assert_eq!(r.memory_limit.as_deref(), Some("64Mi"));
        assert_eq!(r.cpu_request, "10m");
        assert_eq!(warning, None);
        let err = configured()
            .with_override(false, &over("limits.cpu=5m"))
            .unwrap_err();
        assert!(
            err.contains("cpu request 10m (the webhook's --cpu-request)")
                && err.contains("limit 5m (limits.cpu in ipmgmt.aws/resources)"),
            "{err}"
        );
        let err = configured()
            .with_override(true, &over("requests.memory=1Gi"))
            .unwrap_err();
        assert!(err.contains("memory request 1Gi"), "{err}");
    }
}
