//! The process shell the three binaries share: logging to stderr as text or JSON, the
//! signals that stop them, the metrics page their admin ports serve, and (feature
//! `admin`) the admin port itself: `/healthz`, `/readyz` and `/metrics`.

use std::time::{Duration, Instant};

use prometheus_client::registry::Registry;
use tracing_subscriber::EnvFilter;

/// The content type of the metrics page: OpenMetrics text, which Prometheus asks for.
pub const METRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Logs to stderr: JSON lines with the event's fields at the top level and its span,
/// or text, coloured only on a terminal (`kubectl logs` shows escape codes verbatim).
pub fn init_logging(filter: EnvFilter, json: bool) {
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    if json {
        builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .init();
    } else {
        builder.init();
    }
}

/// Completes on SIGTERM (kubelet stopping the pod) or SIGINT; says which.
pub async fn terminated() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler installs");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler installs");
    tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    }
}

/// The metrics page: every family of `registry` as OpenMetrics text.
pub fn metrics_text(registry: &Registry) -> Result<String, std::fmt::Error> {
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, registry)?;
    Ok(out)
}

/// What `/readyz` answers: the text for 200 when ready, for 503 when not.
#[cfg(feature = "admin")]
pub type Readiness = std::sync::Arc<dyn Fn() -> Result<&'static str, &'static str> + Send + Sync>;

/// The admin port's routes: `/healthz` (the process answers), `/readyz` (as
/// `readiness` says) and `/metrics` (`registry`).
#[cfg(feature = "admin")]
pub fn admin_router(readiness: Readiness, registry: std::sync::Arc<Registry>) -> axum::Router {
    use axum::http::{StatusCode, header};
    use axum::routing::get;

    let readyz = move || {
        let readiness = readiness.clone();
        async move {
            match readiness() {
                Ok(text) => (StatusCode::OK, text),
                Err(text) => (StatusCode::SERVICE_UNAVAILABLE, text),
            }
        }
    };
    let metrics = move || {
        let registry = registry.clone();
        async move {
            match metrics_text(&registry) {
                Ok(text) => (
                    StatusCode::OK,
                    [(header::CONTENT_TYPE, METRICS_CONTENT_TYPE)],
                    text,
                ),
                Err(e) => (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
                    format!("encoding metrics: {e}\n"),
                ),
            }
        }
    };
    axum::Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
}

/// Where a program's own account starts: taken first thing in `main`.
///
/// The kernel keeps a thread's CPU time across `execve`, so a container's first
/// process also carries what its runtime's init (`runc init`, a Go program) spent in
/// the same thread before it executed the entrypoint. That time counts against the
/// container's CPU limit as well, but it is not the program's: the two are told apart
/// by counting from here.
#[derive(Clone, Copy, Debug)]
pub struct Start {
    inherited: Duration,
    at: Instant,
}

impl Start {
    pub fn now() -> Start {
        let inherited = std::fs::read_to_string("/proc/thread-self/schedstat")
            .ok()
            .and_then(|s| schedstat_ns(&s))
            .map(Duration::from_nanos)
            .unwrap_or_default();
        Start {
            inherited,
            at: Instant::now(),
        }
    }
}

/// What this process has used so far, as it logs at exit so that its cost in a pod is
/// visible without a profiler.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Usage {
    /// CPU time of the threads alive now, since `Start` (scheduler statistics, in
    /// nanoseconds: /proc's clock ticks are 10 ms, as long as a whole init).
    pub cpu: Duration,
    /// CPU time the first thread had used before `Start`: whatever executed this
    /// program (in a container, the runtime's init) and the dynamic loader.
    pub inherited_cpu: Duration,
    /// Wall time since `Start`.
    pub elapsed: Duration,
    /// How often and how long the CPU limit of the cgroup this process sees as its own
    /// held it back (its `cpu.stat`), counted from the cgroup's creation, so in a
    /// container including the runtime's init. Outside a container that is the
    /// hierarchy's root: zero under v1, `None` under v2, whose root has no limit.
    pub throttled: Option<Throttled>,
    /// The most resident memory the process ever had (VmHWM).
    pub peak_rss_kib: u64,
}

/// A CPU quota's effect: periods in which the cgroup ran out, and the time it waited.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Throttled {
    pub periods: u64,
    pub time: Duration,
}

impl Usage {
    /// This process's usage since `start`, from /proc; `None` where /proc does not say.
    pub fn since(start: Start) -> Option<Usage> {
        let mut cpu_ns = 0_u64;
        for task in std::fs::read_dir("/proc/self/task").ok()?.flatten() {
            cpu_ns += schedstat_ns(&std::fs::read_to_string(task.path().join("schedstat")).ok()?)?;
        }
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        Some(Usage {
            cpu: Duration::from_nanos(cpu_ns).saturating_sub(start.inherited),
            inherited_cpu: start.inherited,
            elapsed: start.at.elapsed(),
            throttled: CPU_STAT
                .iter()
                .find_map(|(path, unit)| {
                    Some(throttled(&std::fs::read_to_string(path).ok()?, *unit))
                })
                .flatten(),
            peak_rss_kib: peak_rss_kib(&status)?,
        })
    }
}

/// The first field of a schedstat file: nanoseconds on a CPU.
fn schedstat_ns(schedstat: &str) -> Option<u64> {
    schedstat.split_whitespace().next()?.parse().ok()
}

/// Where a container sees its own cgroup's CPU statistics, and the unit of the
/// throttled time there: cgroup v2 (`throttled_usec`), then v1's cpu controller alone
/// or joined with cpuacct (`throttled_time`, nanoseconds).
const CPU_STAT: [(&str, Unit); 3] = [
    ("/sys/fs/cgroup/cpu.stat", Unit::Micros),
    ("/sys/fs/cgroup/cpu/cpu.stat", Unit::Nanos),
    ("/sys/fs/cgroup/cpu,cpuacct/cpu.stat", Unit::Nanos),
];

#[derive(Clone, Copy, Debug)]
enum Unit {
    Micros,
    Nanos,
}

fn throttled(cpu_stat: &str, unit: Unit) -> Option<Throttled> {
    let field = |name: &str| {
        cpu_stat.lines().find_map(|l| {
            let (key, value) = l.split_once(' ')?;
            (key == name).then(|| value.trim().parse::<u64>().ok())?
        })
    };
    let periods = field("nr_throttled")?;
    let time = match unit {
        Unit::Micros => Duration::from_micros(field("throttled_usec")?),
        Unit::Nanos => Duration::from_nanos(field("throttled_time")?),
    };
    Some(Throttled { periods, time })
}

fn peak_rss_kib(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use prometheus_client::metrics::counter::Counter;

    use super::*;

    #[test]
    fn the_metrics_page_ends_as_openmetrics_asks() {
        let mut registry = Registry::default();
        let counter = Counter::<u64>::default();
        counter.inc();
        registry.register("reviews", "reviews answered", counter);
        let text = metrics_text(&registry).unwrap();
        assert!(text.contains("reviews_total 1\n"), "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    #[test]
    fn usage_reads_this_process() {
        // CPU before the start, as a runtime's init spends before an exec; the sleep
        // makes the scheduler account for it (a running thread's own schedstat lags).
        let warm: u64 = (0..1_u64 << 20).map(std::hint::black_box).sum();
        std::thread::sleep(Duration::from_millis(1));
        let start = Start::now();
        let before = Usage::since(start).expect("/proc answers");
        // Some CPU and memory that the figures must show.
        let buffer: Vec<u8> = (0..8 << 20).map(|i| i as u8).collect();
        let after = Usage::since(start).expect("/proc answers");
        assert!(after.cpu > before.cpu, "{before:?} -> {after:?}");
        assert!(after.inherited_cpu > Duration::ZERO, "{warm}: {after:?}");
        assert!(after.elapsed > before.elapsed, "{before:?} -> {after:?}");
        assert!(
            after.peak_rss_kib >= before.peak_rss_kib + 8 * 1024 - 512,
            "{after:?}"
        );
        assert_eq!(buffer.len(), 8 << 20);
        assert_eq!(
            peak_rss_kib("Name:\tx\nVmHWM:\t   11364 kB\nVmRSS:\t 9000 kB\n"),
            Some(11364)
        );
        assert_eq!(peak_rss_kib("Name:\tx\n"), None);
    }

    #[test]
    fn throttling_reads_both_cgroup_versions() {
        let v2 = "usage_usec 35000\nuser_usec 20000\nsystem_usec 15000\nnr_periods 4\n\
                  nr_throttled 2\nthrottled_usec 180000\nnr_bursts 0\nburst_usec 0\n";
        let v1 = "nr_periods 4\nnr_throttled 3\nthrottled_time 250000000\n";
        let ms = Duration::from_millis;
        assert_eq!(
            throttled(v2, Unit::Micros),
            Some(Throttled {
                periods: 2,
                time: ms(180)
            })
        );
        assert_eq!(
            throttled(v1, Unit::Nanos),
            Some(Throttled {
                periods: 3,
                time: ms(250)
            })
        );
        assert_eq!(
            throttled(v1, Unit::Micros),
            None,
            "v2's field is not in v1's file"
        );
        assert_eq!(throttled("", Unit::Nanos), None);
    }
}
