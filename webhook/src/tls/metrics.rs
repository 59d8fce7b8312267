//! The serving certificate's metric families: its expiry, and the reloads seen.

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// The `result` label of `tls_reloads_total`, as written.
#[allow(non_camel_case_types)]
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
pub(super) enum ReloadResult {
    success,
    failure,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReloadLabels {
    result: ReloadResult,
}

/// The serving certificate's metric families.
#[derive(Clone, Debug)]
pub struct Metrics {
    expiry: Gauge,
    reloads: Family<ReloadLabels, Counter>,
}

impl Metrics {
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Metrics {
            expiry: Gauge::default(),
            reloads: Family::default(),
        };
        registry.register(
            "tls_certificate_expiry_timestamp_seconds",
            "When the serving certificate expires, in seconds since the Unix epoch",
            metrics.expiry.clone(),
        );
        registry.register(
            "tls_reloads",
            "Serving certificate changes seen on disk, by result",
            metrics.reloads.clone(),
        );
        // Both series from the start, at 0: a scrape then shows the family, and a rate
        // over the first reload is not lost.
        for result in [ReloadResult::success, ReloadResult::failure] {
            let _ = metrics.reloads.get_or_create(&ReloadLabels { result });
        }
        metrics
    }

    /// The certificate being served from now on expires at `not_after`.
    pub fn serving(&self, not_after: i64) {
        self.expiry.set(not_after);
    }

    pub(super) fn reloaded(&self, result: ReloadResult) {
        self.reloads.get_or_create(&ReloadLabels { result }).inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_say_success_and_failure_and_the_expiry() {
        let mut registry = Registry::default();
        let metrics = Metrics::register(&mut registry);
        metrics.reloaded(ReloadResult::success);
        metrics.reloaded(ReloadResult::failure);
        metrics.reloaded(ReloadResult::failure);
        metrics.serving(1_900_000_000);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        for line in [
            "tls_reloads_total{result=\"success\"} 1",
            "tls_reloads_total{result=\"failure\"} 2",
            "tls_certificate_expiry_timestamp_seconds 1900000000",
        ] {
            assert!(text.contains(line), "{line} in {text}");
        }
    }
}
