//! The HTTPS admission endpoint: TLS accept loop, `POST /mutate`, graceful drain,
//! and the review metric families that `POST /mutate` keeps.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use ipmgmt_common::label_values;
use ipmgmt_common::metrics::LabelValue;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tracing::{Instrument, Level, debug, info, info_span, warn};

use crate::body;
use crate::inject::Injector;
use crate::review::{self, Outcome};
use crate::tls::{self, HandshakeFailure};

#[derive(Debug)]
pub struct App {
    pub injector: Injector,
    pub metrics: Metrics,
    pub bodies: body::Reader,
}

/// `POST /mutate`; 404 for any other path, 405 for any other method. One route needs
/// no router: axum's, with its extractor and boxed bodies, was 5,000 of a review's
/// 113,600 instructions (callgrind).
async fn route(
    app: Arc<App>,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if request.uri().path() != "/mutate" {
        return Ok(answer(StatusCode::NOT_FOUND, Bytes::new()));
    }
    if request.method() != Method::POST {
        let mut refused = answer(StatusCode::METHOD_NOT_ALLOWED, Bytes::new());
        let allow = HeaderValue::from_static("POST");
        refused.headers_mut().insert(header::ALLOW, allow);
        return Ok(refused);
    }
    match app.bodies.read(request.into_body()).await {
        Ok(body) => Ok(mutate(&app, &body)),
        // Counted by reason; a line each would let any client flood the log.
        Err(refused) => {
            let reason = refused.reason().label();
            debug!(reason, error = %refused, "request body refused");
            Ok(answer(refused.status(), format!("{refused}\n").into()))
        }
    }
}

/// An answer other than a review's: empty, or a line of text saying what was wrong.
fn answer(status: StatusCode, text: Bytes) -> Response<Full<Bytes>> {
    let plain = !text.is_empty();
    let mut response = Response::new(Full::new(text));
    *response.status_mut() = status;
    if plain {
        let utf8 = HeaderValue::from_static("text/plain; charset=utf-8");
        response.headers_mut().insert(header::CONTENT_TYPE, utf8);
    }
    response
}

/// One span per review, at the level of the line logged in it: a review that logs only
/// at DEBUG then costs nothing under the default INFO filter.
macro_rules! review_span {
    ($level:expr, $subject:expr) => {{
        let s = $subject;
        // `pod`, not `name`: JSON logs already use `name` for the span itself.
        tracing::span!($level, "review", uid = %s.uid, namespace = %s.namespace, pod = %s.name)
    }};
}

/// What a review logs. The outcomes that need nobody's attention (injected, reordered,
/// skipped) are counted by `reviews_total` and logged at DEBUG: a line per review cost
/// a quarter of the throughput, and an injected pod says what it got in its
/// `ipmgmt.aws/injected` annotation. Denials are logged at INFO (a user's pod was
/// refused, and the line says why); errors and unreadable reviews at WARN.
fn mutate(app: &App, body: &[u8]) -> Response<Full<Bytes>> {
    let started = Instant::now();
    match review::review(body, &app.injector) {
        Ok(answer) => {
            let s = &answer.subject;
            let reason = answer.message.as_deref().unwrap_or("");
            match answer.outcome {
                Outcome::Injected(mode) => review_span!(Level::DEBUG, s)
                    .in_scope(|| debug!(mode = mode.as_str(), "injected the IP manager")),
                Outcome::Reordered => review_span!(Level::DEBUG, s).in_scope(|| {
                    debug!("moved the IP manager back in front of containers another webhook added")
                }),
                Outcome::Skipped => {
                    review_span!(Level::DEBUG, s).in_scope(|| debug!("nothing to do"))
                }
                Outcome::Denied => {
                    review_span!(Level::INFO, s).in_scope(|| info!(reason, "denied"))
                }
                Outcome::Error => review_span!(Level::WARN, s)
                    .in_scope(|| warn!(reason, "answered with an error")),
            }
            app.metrics.review(answer.outcome, started.elapsed());
            let mut response = Response::new(Full::new(answer.body.into()));
            let json = HeaderValue::from_static("application/json");
            response.headers_mut().insert(header::CONTENT_TYPE, json);
            response
        }
        Err(bad) => {
            warn!(error = %bad, bytes = body.len(), "unreadable admission review");
            app.metrics.review(Outcome::Error, started.elapsed());
            answer(StatusCode::BAD_REQUEST, format!("{bad}\n").into())
        }
    }
}

/// The `outcome` label of `reviews_total`, as written.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
enum OutcomeLabel {
    Injected,
    Reordered,
    Skipped,
    Denied,
    Error,
}

label_values!(OutcomeLabel {
    Injected => "injected",
    Reordered => "reordered",
    Skipped => "skipped",
    Denied => "denied",
    Error => "error",
});

impl OutcomeLabel {
    fn of(outcome: Outcome) -> Self {
        match outcome {
            Outcome::Injected(_) => OutcomeLabel::Injected,
            Outcome::Reordered => OutcomeLabel::Reordered,
            Outcome::Skipped => OutcomeLabel::Skipped,
            Outcome::Denied => OutcomeLabel::Denied,
            Outcome::Error => OutcomeLabel::Error,
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: OutcomeLabel,
}

/// The review metric families.
#[derive(Clone, Debug)]
pub struct Metrics {
    reviews: Family<OutcomeLabels, Counter>,
    latency: Histogram,
}

impl Metrics {
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Metrics {
            reviews: Family::default(),
            latency: Histogram::new([
                0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1,
            ]),
        };
        registry.register(
            "reviews",
            "Admission reviews answered, by outcome",
            metrics.reviews.clone(),
        );
        registry.register(
            "review_duration_seconds",
            "Time from a review's body being read to its answer being written",
            metrics.latency.clone(),
        );
        for outcome in OutcomeLabel::ALL {
            let _ = metrics.reviews.get_or_create(&OutcomeLabels { outcome });
        }
        metrics
    }

    /// One review answered; an unreadable body counts as `Outcome::Error`.
    pub fn review(&self, outcome: Outcome, took: Duration) {
        let outcome = OutcomeLabel::of(outcome);
        self.reviews.get_or_create(&OutcomeLabels { outcome }).inc();
        self.latency.observe(took.as_secs_f64());
    }
}

#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// TLS handshake and request headers must arrive within this.
    pub header_read_timeout: Duration,
    /// In-flight requests get this long to finish once draining starts.
    pub drain_timeout: Duration,
    /// HTTP/2 requests open at once on one connection.
    pub max_concurrent_streams: u32,
}

/// What one connection may make this process hold besides the bodies being read
/// (`body`), which are counted against their budget. HTTP/2 data the handler has not
/// taken yet sits in the stream's buffer, up to the flow-control windows granted:
/// hyper's 1 MiB per stream and per connection become 128 KiB and 256 KiB, still more
/// than a review of a typical pod, and 3 MiB at 256 KiB per round trip inside a cluster
/// is milliseconds. HTTP/1 reads into one buffer, which also bounds the request head:
/// hyper's 400 KiB becomes 64 KiB. HTTP/2 headers stay within hyper's 16 KiB.
const H2_STREAM_WINDOW: u32 = 128 * 1024;
const H2_CONNECTION_WINDOW: u32 = 256 * 1024;
const H1_MAX_BUF: usize = 64 * 1024;

/// Serves `router` over TLS until `shutdown` resolves, then stops accepting and
/// drains open connections (HTTP/1 keep-alive closed after the current request,
/// HTTP/2 GOAWAY) for at most `drain_timeout`.
pub async fn serve(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    app: Arc<App>,
    limits: Limits,
    tls_metrics: tls::Metrics,
    shutdown: impl Future<Output = ()>,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(H1_MAX_BUF);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.max_concurrent_streams)
        .initial_stream_window_size(H2_STREAM_WINDOW)
        .initial_connection_window_size(H2_CONNECTION_WINDOW);
    let builder = Arc::new(builder);
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    // Out of file descriptors, usually: back off rather than spin.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let app = app.clone();
        let service = service_fn(move |request| route(app.clone(), request));
        let builder = builder.clone();
        let watcher = graceful.watcher();
        let timeout = limits.header_read_timeout;
        let tls_metrics = tls_metrics.clone();
        tokio::spawn(
            async move {
                let tls = match tokio::time::timeout(timeout, acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => tls,
                    Ok(Err(e)) => {
                        tls_metrics.handshake_failed(HandshakeFailure::of(&e));
                        return debug!(error = %e, "TLS handshake failed");
                    }
                    Err(_) => {
                        tls_metrics.handshake_failed(HandshakeFailure::Timeout);
                        return debug!("TLS handshake timed out");
                    }
                };
                let conn = builder
                    .serve_connection(TokioIo::new(tls), service)
                    .into_owned();
                if let Err(e) = watcher.watch(conn).await {
                    debug!(error = %e, "connection ended with an error");
                }
            }
            .instrument(info_span!("conn", %peer)),
        );
    }
    drop(listener);
    let open = graceful.count();
    info!(open, "stopped accepting; draining connections");
    match tokio::time::timeout(limits.drain_timeout, graceful.shutdown()).await {
        Ok(()) => info!("drained"),
        Err(_) => {
            warn!(timeout = ?limits.drain_timeout, "drain timed out; closing the remaining connections")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inject::Mode;

    #[test]
    fn every_outcome_has_its_label_listed() {
        for outcome in [
            Outcome::Injected(Mode::Init),
            Outcome::Injected(Mode::Sidecar),
            Outcome::Reordered,
            Outcome::Skipped,
            Outcome::Denied,
            Outcome::Error,
        ] {
            assert!(
                OutcomeLabel::ALL.contains(&OutcomeLabel::of(outcome)),
                "{outcome:?}"
            );
        }
    }

    #[test]
    fn metrics_text_has_outcomes_and_latency() {
        let mut registry = ipmgmt_common::metrics::Component::Webhook.registry();
        let m = Metrics::register(&mut registry);
        m.review(Outcome::Injected(Mode::Init), Duration::from_micros(30));
        m.review(Outcome::Denied, Duration::from_micros(30));
        m.review(Outcome::Reordered, Duration::from_micros(30));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        for line in [
            "ipmgmt_webhook_reviews_total{outcome=\"injected\"} 1",
            "ipmgmt_webhook_reviews_total{outcome=\"denied\"} 1",
            "ipmgmt_webhook_reviews_total{outcome=\"error\"} 0",
            "ipmgmt_webhook_reviews_total{outcome=\"reordered\"} 1",
            "ipmgmt_webhook_review_duration_seconds_count 3",
        ] {
            assert!(text.contains(line), "{line} in {text}");
        }
    }
}
