//! ipmgmt-webhook: injects the ipmgmt IP manager into pods that ask for it.
//!
//! `inject` and `patch` are the pure mutation; `review` turns request bytes into
//! response bytes; `server`, `tls` and `admin` are the I/O around them.

pub mod admin;
pub mod config;
pub mod inject;
pub mod patch;
pub mod review;
pub mod server;
pub mod tls;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};
use tokio_rustls::TlsAcceptor;
use tracing::{error, info, warn};

use crate::admin::{AdminState, Health, Metrics};
use crate::config::{Args, LogFormat};
use crate::inject::Injector;
use crate::server::{App, Limits};
use crate::tls::{CertStore, Reload};

pub fn init_logging(format: LogFormat, filter: &str) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .with_context(|| format!("--log-level {filter:?}"))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .init(),
    }
    Ok(())
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let config = args.inject.to_config()?;
    let metrics = Arc::new(Metrics::default());
    let health = Arc::new(Health::default());

    let (store, not_after) = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => CertStore::from_files(cert, key)?,
        _ => CertStore::fixed(tls::self_signed(args.self_signed_names.clone())?),
    };
    metrics.cert_expiry(not_after);
    let store = Arc::new(store);
    let acceptor = TlsAcceptor::from(Arc::new(tls::server_config(store.clone())));

    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on --listen {}", args.listen))?;
    let admin_listener = TcpListener::bind(args.admin_listen)
        .await
        .with_context(|| format!("cannot listen on --admin-listen {}", args.admin_listen))?;
    info!(address = %listener.local_addr()?, "serving admission reviews over HTTPS at /mutate");
    info!(address = %admin_listener.local_addr()?, "serving /healthz, /readyz and /metrics over HTTP");

    let admin = admin::router(AdminState {
        health: health.clone(),
        metrics: metrics.clone(),
    });
    tokio::spawn(async move {
        if let Err(e) = axum::serve(admin_listener, admin).await {
            error!(error = %e, "admin server stopped");
        }
    });
    if store.reloads() {
        tokio::spawn(watch_certificate(
            store,
            metrics.clone(),
            args.reload_interval(),
        ));
    }

    let app = Arc::new(App {
        injector: Injector::new(config),
        metrics,
    });
    let limits = Limits {
        header_read_timeout: Duration::from_secs(args.header_read_timeout_seconds),
        drain_timeout: Duration::from_secs(args.drain_timeout_seconds),
    };
    let shutdown_delay = Duration::from_secs(args.shutdown_delay_seconds);
    let ready = health.clone();
    let shutdown = async move {
        let signal = terminated().await;
        ready.set_ready(false);
        info!(signal, delay = ?shutdown_delay, "shutting down: unready, still serving during the delay");
        tokio::time::sleep(shutdown_delay).await;
    };
    health.set_ready(true);
    server::serve(listener, acceptor, server::router(app), limits, shutdown).await;
    Ok(())
}

async fn terminated() -> &'static str {
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler installs");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler installs");
    tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    }
}

/// Re-reads the certificate files on a timer and on SIGHUP.
async fn watch_certificate(store: Arc<CertStore>, metrics: Arc<Metrics>, every: Duration) {
    let mut hup = signal(SignalKind::hangup()).expect("SIGHUP handler installs");
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = hup.recv() => info!("SIGHUP: re-reading the serving certificate"),
        }
        match store.reload() {
            Reload::Unchanged => {}
            Reload::Swapped { not_after } => {
                metrics.reload(true);
                metrics.cert_expiry(not_after);
                info!(not_after, "serving a renewed certificate");
            }
            Reload::Rejected(e) => {
                metrics.reload(false);
                warn!(error = %e, "renewed certificate is not usable yet; still serving the last good one");
            }
        }
    }
}
