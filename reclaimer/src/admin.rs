//! The admin port (`ipmgmt_common::shell::admin_router`): `/healthz` (the process
//! answers), `/readyz` (pods, nodes, namespaces and IPPools have been listed) and
//! `/metrics`. Both replicas are ready once listed, leader or not: readiness says the
//! replica could lead.

use std::net::SocketAddr;
use std::sync::Arc;

use prometheus_client::registry::Registry;
use tracing::warn;

use crate::view::View;

/// Serves the admin endpoints until the process ends; returns the bound address.
pub async fn serve(
    addr: SocketAddr,
    registry: Registry,
    view: View,
) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let readiness = Arc::new(move || {
        if view.is_ready() {
            Ok("ok\n")
        } else {
            Err("listing pods, nodes, namespaces and IPPools\n")
        }
    });
    let app = ipmgmt_common::shell::admin_router(readiness, Arc::new(registry));
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            warn!(error = %e, "admin server stopped");
        }
    });
    Ok(bound)
}
