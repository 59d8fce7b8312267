//! The admin port: `/healthz` (the process answers), `/readyz` (pods, nodes,
//! namespaces and IPPools have been listed) and `/metrics`. Both replicas are
//! ready once listed, leader or not: readiness says the replica could lead.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::registry::Registry;
use tracing::warn;

use crate::view::View;

#[derive(Clone)]
struct Admin {
    registry: Arc<Registry>,
    view: View,
}

/// Serves the admin endpoints until the process ends; returns the bound address.
pub async fn serve(
    addr: SocketAddr,
    registry: Registry,
    view: View,
) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(Admin {
            registry: Arc::new(registry),
            view,
        });
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            warn!(error = %e, "admin server stopped");
        }
    });
    Ok(bound)
}

async fn readyz(State(admin): State<Admin>) -> impl IntoResponse {
    if admin.view.is_ready() {
        (StatusCode::OK, "ok\n")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "listing pods, nodes, namespaces and IPPools\n",
        )
    }
}

async fn metrics(State(admin): State<Admin>) -> impl IntoResponse {
    match ipmgmt_common::shell::metrics_text(&admin.registry) {
        Ok(text) => (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                ipmgmt_common::shell::METRICS_CONTENT_TYPE,
            )],
            text,
        ),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            format!("encoding metrics: {e}\n"),
        ),
    }
}
