//! The process shell the three binaries share: logging to stderr as text or JSON, the
//! signals that stop them, the metrics page their admin ports serve, and (feature
//! `admin`) the admin port itself: `/healthz`, `/readyz` and `/metrics`.

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

/// What this process has used so far, as it logs at exit so that its cost in a pod is
/// visible without a profiler.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Usage {
    /// CPU time of the threads alive now (scheduler statistics, in nanoseconds: /proc's
    /// clock ticks are 10 ms, as long as a whole init).
    pub cpu: std::time::Duration,
    /// The most resident memory the process ever had (VmHWM).
    pub peak_rss_kib: u64,
}

impl Usage {
    /// This process's usage, from /proc; `None` where /proc does not say.
    pub fn now() -> Option<Usage> {
        let mut cpu_ns = 0_u64;
        for task in std::fs::read_dir("/proc/self/task").ok()?.flatten() {
            let stat = std::fs::read_to_string(task.path().join("schedstat")).ok()?;
            cpu_ns += stat.split_whitespace().next()?.parse::<u64>().ok()?;
        }
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        Some(Usage {
            cpu: std::time::Duration::from_nanos(cpu_ns),
            peak_rss_kib: peak_rss_kib(&status)?,
        })
    }
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
        let before = Usage::now().expect("/proc answers");
        // Some CPU and memory that the figures must show.
        let buffer: Vec<u8> = (0..8 << 20).map(|i| i as u8).collect();
        let after = Usage::now().expect("/proc answers");
        assert!(after.cpu > before.cpu, "{before:?} -> {after:?}");
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
}
