//! The sidecar's Prometheus metrics, served in text format on `--metrics-listen`
//! (`IPMGR_METRICS_LISTEN`; off unless set). Each component registers the families it
//! owns (`aws::Attempts::register`, `run::pass_metrics::registry`); label values are
//! enums, so a new value is a new variant and every place that sets it is checked.
//!
//! The families and their labels are listed in the README's metrics table, which
//! `tests/tests/mode_loops.rs` compares with what `/metrics` serves.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use prometheus_client::registry::Registry;
use tracing::{info, warn};

/// Serves `registry` on `addr` until the process ends; returns the bound address.
pub async fn serve(addr: SocketAddr, registry: Registry) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let registry = Arc::new(registry);
    info!(address = %bound, "metrics on http://{bound}/metrics");
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let registry = registry.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req| answer(req, registry.clone()));
                if let Err(e) = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await
                {
                    warn!(error = %e, "metrics connection");
                }
            });
        }
    });
    Ok(bound)
}

async fn answer<B>(
    req: Request<B>,
    registry: Arc<Registry>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (status, content_type, body) = match (req.method().as_str(), req.uri().path()) {
        ("GET", "/metrics") => match ipmgmt_common::shell::metrics_text(&registry) {
            Ok(text) => (
                StatusCode::OK,
                ipmgmt_common::shell::METRICS_CONTENT_TYPE,
                text,
            ),
            Err(e) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "text/plain",
                format!("encoding the metrics failed: {e}\n"),
            ),
        },
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain",
            "only GET /metrics is served here\n".to_owned(),
        ),
    };
    let response = Response::builder()
        .status(status)
        .header("content-type", content_type)
        .body(Full::new(Bytes::from(body)))
        .expect("a response from constant parts");
    Ok(response)
}
