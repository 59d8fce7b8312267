//! The serving certificate's metric families: its expiry, the reloads seen, and the
//! handshakes that failed.

use ipmgmt_common::label_values;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// The `result` label of `tls_reloads_total`, as written.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub(super) enum ReloadResult {
    Success,
    Failure,
}

label_values!(ReloadResult {
    Success => "success",
    Failure => "failure",
});

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReloadLabels {
    result: ReloadResult,
}

/// The `reason` label of `tls_handshake_failures_total`, as written.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum HandshakeFailure {
    /// The client sent a fatal alert: usually it does not trust the certificate (for
    /// the apiserver: the webhook configuration's caBundle is not its CA).
    ClientAlert,
    /// rustls refused what the client sent: no common version or cipher suite, or an
    /// SNI that is not a DNS name (`host:port`).
    Refused,
    /// The connection closed or broke before the handshake finished (port probes).
    Closed,
    /// Not finished within --header-read-timeout-seconds.
    Timeout,
}

label_values!(HandshakeFailure {
    ClientAlert => "client_alert",
    Refused => "refused",
    Closed => "closed",
    Timeout => "timeout",
});

impl HandshakeFailure {
    /// The reason of a failed `TlsAcceptor::accept`, which wraps rustls's error in an
    /// `io::Error`.
    pub fn of(error: &std::io::Error) -> Self {
        match error
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        {
            Some(rustls::Error::AlertReceived(_)) => HandshakeFailure::ClientAlert,
            Some(_) => HandshakeFailure::Refused,
            None => HandshakeFailure::Closed,
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HandshakeLabels {
    reason: HandshakeFailure,
}

/// The serving certificate's metric families.
#[derive(Clone, Debug)]
pub struct Metrics {
    expiry: Gauge,
    reloads: Family<ReloadLabels, Counter>,
    handshake_failures: Family<HandshakeLabels, Counter>,
}

impl Metrics {
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Metrics {
            expiry: Gauge::default(),
            reloads: Family::default(),
            handshake_failures: Family::default(),
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
        for result in [ReloadResult::Success, ReloadResult::Failure] {
            let _ = metrics.reloads.get_or_create(&ReloadLabels { result });
        }
        registry.register(
            "tls_handshake_failures",
            "TLS handshakes that did not complete, by reason",
            metrics.handshake_failures.clone(),
        );
        for reason in HandshakeFailure::ALL {
            let _ = metrics
                .handshake_failures
                .get_or_create(&HandshakeLabels { reason });
        }
        metrics
    }

    /// One handshake failed. Counted, not logged above DEBUG: the client that failed
    /// is the one to tell, and a line per connection floods the log.
    pub fn handshake_failed(&self, reason: HandshakeFailure) {
        self.handshake_failures
            .get_or_create(&HandshakeLabels { reason })
            .inc();
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
        metrics.reloaded(ReloadResult::Success);
        metrics.reloaded(ReloadResult::Failure);
        metrics.reloaded(ReloadResult::Failure);
        metrics.serving(1_900_000_000);
        metrics.handshake_failed(HandshakeFailure::Refused);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        for line in [
            "tls_reloads_total{result=\"success\"} 1",
            "tls_reloads_total{result=\"failure\"} 2",
            "tls_certificate_expiry_timestamp_seconds 1900000000",
            "tls_handshake_failures_total{reason=\"refused\"} 1",
            "tls_handshake_failures_total{reason=\"client_alert\"} 0",
        ] {
            assert!(text.contains(line), "{line} in {text}");
        }
    }

    #[test]
    fn handshake_errors_are_told_apart_by_what_rustls_said() {
        use std::io::{Error, ErrorKind};
        let wrapped = |e: rustls::Error| Error::new(ErrorKind::InvalidData, e);
        assert_eq!(
            HandshakeFailure::of(&wrapped(rustls::Error::AlertReceived(
                rustls::AlertDescription::UnknownCA
            ))),
            HandshakeFailure::ClientAlert
        );
        assert_eq!(
            HandshakeFailure::of(&wrapped(rustls::Error::PeerMisbehaved(
                rustls::PeerMisbehaved::ServerNameMustContainOneHostName
            ))),
            HandshakeFailure::Refused
        );
        assert_eq!(
            HandshakeFailure::of(&Error::from(ErrorKind::UnexpectedEof)),
            HandshakeFailure::Closed
        );
    }
}
