//! The HTTPS admission endpoint: TLS accept loop, `POST /mutate`, graceful drain.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::admin::Metrics;
use crate::inject::Injector;
use crate::review::{self, Outcome};

/// The apiserver sends at most 3 MiB; the review wrapped around a pod adds a little.
pub const BODY_LIMIT: usize = 3 * 1024 * 1024 + 64 * 1024;

#[derive(Debug)]
pub struct App {
    pub injector: Injector,
    pub metrics: Arc<Metrics>,
}

pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/mutate", post(mutate))
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(app)
}

async fn mutate(State(app): State<Arc<App>>, body: Bytes) -> Response {
    let started = Instant::now();
    match review::review(&body, &app.injector) {
        Ok(answer) => {
            let s = &answer.subject;
            // `pod`, not `name`: JSON logs already use `name` for the span itself.
            let span = info_span!("review", uid = %s.uid, namespace = %s.namespace, pod = %s.name);
            let _entered = span.enter();
            match (&answer.outcome, &answer.message) {
                (Outcome::Injected(mode), _) => {
                    info!(mode = mode.as_str(), "injected the IP manager")
                }
                (Outcome::Reordered, _) => {
                    info!("moved the IP manager back in front of containers another webhook added")
                }
                (Outcome::Skipped, _) => debug!("nothing to do"),
                (outcome, message) => {
                    info!(
                        outcome = outcome.label(),
                        reason = message.as_deref().unwrap_or(""),
                        "denied"
                    )
                }
            }
            app.metrics.review(answer.outcome, started.elapsed());
            ([(header::CONTENT_TYPE, "application/json")], answer.body).into_response()
        }
        Err(bad) => {
            warn!(error = %bad, bytes = body.len(), "unreadable admission review");
            app.metrics.bad_review(started.elapsed());
            (StatusCode::BAD_REQUEST, format!("{bad}\n")).into_response()
        }
    }
}

#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// TLS handshake and request headers must arrive within this.
    pub header_read_timeout: Duration,
    /// In-flight requests get this long to finish once draining starts.
    pub drain_timeout: Duration,
}

/// Serves `router` over TLS until `shutdown` resolves, then stops accepting and
/// drains open connections (HTTP/1 keep-alive closed after the current request,
/// HTTP/2 GOAWAY) for at most `drain_timeout`.
pub async fn serve(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    router: Router,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    builder.http2().timer(TokioTimer::new());
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
        let service = TowerToHyperService::new(router.clone());
        let builder = builder.clone();
        let watcher = graceful.watcher();
        let timeout = limits.header_read_timeout;
        tokio::spawn(
            async move {
                let tls = match tokio::time::timeout(timeout, acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => tls,
                    Ok(Err(e)) => return debug!(error = %e, "TLS handshake failed"),
                    Err(_) => return debug!("TLS handshake timed out"),
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
