//! The plain-HTTP admin port: `/healthz`, `/readyz` and `/metrics`, apart from the
//! TLS port so that probes and scrapes never need the serving certificate.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::review::Outcome;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

pub struct Metrics {
    registry: Registry,
    reviews: Family<OutcomeLabel, Counter>,
    latency: Histogram,
    cert_expiry: Gauge,
    reloads: Family<ResultLabel, Counter>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("ipmgmt_webhook");
        let reviews = Family::<OutcomeLabel, Counter>::default();
        registry.register(
            "reviews",
            "Admission reviews answered, by outcome",
            reviews.clone(),
        );
        let latency = Histogram::new([
            0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1,
        ]);
        registry.register(
            "review_duration_seconds",
            "Time from a review's body being read to its answer being written",
            latency.clone(),
        );
        let cert_expiry = Gauge::default();
        registry.register(
            "tls_certificate_expiry_timestamp_seconds",
            "When the serving certificate expires, in seconds since the Unix epoch",
            cert_expiry.clone(),
        );
        let reloads = Family::<ResultLabel, Counter>::default();
        registry.register(
            "tls_reloads",
            "Serving certificate changes seen on disk, by result",
            reloads.clone(),
        );
        // Every outcome shows from the start, so rate() works before the first of each.
        for outcome in Outcome::LABELS {
            let _ = reviews.get_or_create(&OutcomeLabel { outcome });
        }
        Metrics {
            registry,
            reviews,
            latency,
            cert_expiry,
            reloads,
        }
    }
}

impl Metrics {
    pub fn review(&self, outcome: Outcome, took: Duration) {
        self.reviews
            .get_or_create(&OutcomeLabel {
                outcome: outcome.label(),
            })
            .inc();
        self.latency.observe(took.as_secs_f64());
    }

    /// A body that could not be read as a review: counted as an error.
    pub fn bad_review(&self, took: Duration) {
        self.review(Outcome::Error, took);
    }

    pub fn cert_expiry(&self, not_after: i64) {
        self.cert_expiry.set(not_after);
    }

    pub fn reload(&self, ok: bool) {
        let result = if ok { "success" } else { "failure" };
        self.reloads.get_or_create(&ResultLabel { result }).inc();
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

/// Readiness: set once TLS material is loaded and the listener is bound, cleared as
/// soon as shutdown begins so the Service stops sending new reviews here.
#[derive(Debug, Default)]
pub struct Health {
    ready: AtomicBool,
}

impl Health {
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::SeqCst);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }
}

#[derive(Clone, Debug)]
pub struct AdminState {
    pub health: Arc<Health>,
    pub metrics: Arc<Metrics>,
}

pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state)
}

async fn readyz(State(state): State<AdminState>) -> impl IntoResponse {
    if state.health.is_ready() {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}

async fn metrics(State(state): State<AdminState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.encode(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inject::Mode;

    #[test]
    fn metrics_text_has_outcomes_latency_and_expiry() {
        let m = Metrics::default();
        m.review(Outcome::Injected(Mode::Init), Duration::from_micros(30));
        m.review(Outcome::Denied, Duration::from_micros(30));
        m.review(Outcome::Reordered, Duration::from_micros(30));
        m.cert_expiry(1_900_000_000);
        let text = m.encode();
        assert!(
            text.contains("ipmgmt_webhook_reviews_total{outcome=\"injected\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("ipmgmt_webhook_reviews_total{outcome=\"denied\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("ipmgmt_webhook_reviews_total{outcome=\"error\"} 0"),
            "{text}"
        );
        assert!(
            text.contains("ipmgmt_webhook_reviews_total{outcome=\"reordered\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("ipmgmt_webhook_review_duration_seconds_count 3"),
            "{text}"
        );
        assert!(
            text.contains("ipmgmt_webhook_tls_certificate_expiry_timestamp_seconds 1900000000"),
            "{text}"
        );
    }
}
