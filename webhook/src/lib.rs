//! ipmgmt-webhook: injects the ipmgmt IP manager into pods that ask for it.
//!
//! `inject` and `patch` are the pure mutation; `review` turns request bytes into
//! response bytes; `server`, `body`, `tls` and `admin` are the I/O around them.

pub mod admin;
pub mod body;
pub mod config;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
pub mod guard;
pub mod inject;
pub mod json;
pub mod patch;
pub mod review;
pub mod runtime;
pub mod server;
pub mod tls;
pub mod view;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use ipmgmt_common::metrics::Component;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tracing::{error, info};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::filter::ParseError;

use crate::admin::Health;
use crate::config::{Args, LogFormat};
use crate::inject::Injector;
use crate::server::{App, Limits};
use crate::tls::CertStore;

pub fn init_logging(format: LogFormat, filter: &str) -> anyhow::Result<()> {
    let filter = log_filter(filter).with_context(|| format!("--log-level {filter:?}"))?;
    ipmgmt_common::shell::init_logging(filter, matches!(format, LogFormat::Json));
    Ok(())
}

/// `--log-level`, with rustls's own lines lowered to errors unless it names rustls.
///
/// rustls warns, through the `log` bridge, about what one client sent, once per
/// connection: an IP address as SNI (which it then ignores, RFC 6066 allowing only
/// host names) or a name that is not a DNS name, such as `host:port` (which it refuses
/// with an `illegal_parameter` alert). The apiserver sends the Service's DNS name, so
/// these come from other clients, and a WARN per connection floods the log. The
/// refused handshake is logged at DEBUG in the connection's span, and counted by
/// `tls_handshake_failures_total`.
pub fn log_filter(spec: &str) -> Result<EnvFilter, ParseError> {
    let filter = EnvFilter::try_new(spec)?;
    if spec.contains("rustls") {
        return Ok(filter);
    }
    Ok(filter.add_directive("rustls=error".parse()?))
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    // Every flag by name: one added to `Args` does not compile until it is used.
    let Args {
        listen,
        admin_listen,
        tls_cert,
        tls_key,
        // Excludes the files: the self-signed pair serves when they are absent.
        self_signed: _,
        self_signed_names,
        tls_reload_seconds,
        guard_findings,
        guard_deny,
        shutdown_delay_seconds,
        drain_timeout_seconds,
        header_read_timeout_seconds,
        body_read_timeout_seconds,
        body_buffer_mib,
        max_concurrent_streams,
        // main sizes the runtime and installs logging before it calls run.
        worker_threads: _,
        log_format: _,
        log_level: _,
        inject,
    } = args;
    let config = inject.to_config()?;
    let mut registry = Component::Webhook.registry();
    let review_metrics = server::Metrics::register(&mut registry);
    let body_metrics = body::Metrics::register(&mut registry);
    let tls_metrics = tls::Metrics::register(&mut registry);
    let health = Arc::new(Health::default());

    let (store, not_after) = match (&tls_cert, &tls_key) {
        (Some(cert), Some(key)) => CertStore::from_files(cert, key)?,
        _ => CertStore::fixed(tls::self_signed(self_signed_names)?),
    };
    tls_metrics.serving(not_after);
    let store = Arc::new(store);
    let acceptor = TlsAcceptor::from(Arc::new(tls::server_config(store.clone())));

    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on --listen {listen}"))?;
    let admin_listener = TcpListener::bind(admin_listen)
        .await
        .with_context(|| format!("cannot listen on --admin-listen {admin_listen}"))?;
    info!(address = %listener.local_addr()?, "serving admission reviews over HTTPS at /mutate");
    info!(address = %admin_listener.local_addr()?, "serving /healthz, /readyz and /metrics over HTTP");

    let admin = ipmgmt_common::shell::admin_router(health.readiness(), Arc::new(registry));
    tokio::spawn(async move {
        if let Err(e) = axum::serve(admin_listener, admin).await {
            error!(error = %e, "admin server stopped");
        }
    });
    if store.reloads() {
        let every = Duration::from_secs(tls_reload_seconds);
        tokio::spawn(tls::watch(store, tls_metrics.clone(), every));
    }

    let bodies = body::Reader::new(
        usize::try_from(body_buffer_mib << 20).context("--body-buffer-mib")?,
        Duration::from_secs(body_read_timeout_seconds),
        body_metrics,
    );
    let guard = Arc::new(match guard_findings {
        Some(path) => guard::Findings::from_file(path, guard_deny),
        None => guard::Findings::none(),
    });
    if guard.reloads() {
        let every = Duration::from_secs(tls_reload_seconds);
        tokio::spawn(guard::watch(guard.clone(), every));
    }
    let app = Arc::new(App {
        injector: Injector::new(config).with_guard(guard),
        metrics: review_metrics,
        bodies,
    });
    let limits = Limits {
        header_read_timeout: Duration::from_secs(header_read_timeout_seconds),
        drain_timeout: Duration::from_secs(drain_timeout_seconds),
        max_concurrent_streams,
    };
    let shutdown_delay = Duration::from_secs(shutdown_delay_seconds);
    let ready = health.clone();
    let shutdown = async move {
        let signal = ipmgmt_common::shell::terminated().await;
        ready.set_ready(false);
        info!(signal, delay = ?shutdown_delay, "shutting down: unready, still serving during the delay");
        tokio::time::sleep(shutdown_delay).await;
    };
    health.set_ready(true);
    server::serve(listener, acceptor, app, limits, tls_metrics, shutdown).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rustls_lines_are_errors_only_unless_the_filter_names_rustls() {
        let quiet = log_filter("info").unwrap().to_string();
        assert!(quiet.contains("rustls=error"), "{quiet}");
        let asked = log_filter("info,rustls=debug").unwrap().to_string();
        assert!(!asked.contains("rustls=error"), "{asked}");
        assert!(log_filter("info,ipmgmt_webhook=loud").is_err());
    }
}
