//! Fakes and helpers shared by the integration tests and load tools.

pub mod fake_ec2;
pub mod fake_imds;
pub mod fake_kube;
pub mod netns;
pub mod pair;
pub mod scale;
pub mod scenario;

use std::net::SocketAddr;

/// Serves `router` on `addr` (port 0 for any) in the background; returns the address.
pub async fn serve(router: axum::Router, addr: SocketAddr) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, router).await });
    Ok(bound)
}
