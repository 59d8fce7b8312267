//! The serving certificate: loaded and checked at start, re-read while serving.
//!
//! cert-manager renews the pair into a Secret; kubelet updates the Secret volume by
//! swapping its `..data` symlink, so watching the files themselves misses renewals.
//! Instead the files are re-read on a timer (and on SIGHUP) and compared with what is
//! being served; a changed, valid pair is swapped in atomically, and a half-written or
//! mismatched one is logged and ignored, so the last good pair keeps serving.
//!
//! - here: `CertStore`, which rustls asks for the certificate, and `watch`, which
//!   re-reads the files.
//! - `pem`: reading and checking a PEM pair, and the self-signed one.
//! - `metrics`: the certificate's metric families, which `watch` keeps current, and
//!   the failed handshakes the server counts.

mod metrics;
mod pem;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls::ServerConfig;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::signal::unix::{SignalKind, signal};
use tracing::{info, warn};

pub use metrics::{HandshakeFailure, Metrics};
pub use pem::{PemFiles, Served, TlsError, self_signed};

use metrics::ReloadResult;
use pem::{load_pair, parse_pair};

/// What a reload found.
#[derive(Debug)]
pub enum Reload {
    Unchanged,
    Swapped {
        not_after: i64,
    },
    /// The files changed but are not a usable pair; the last good one still serves.
    Rejected(TlsError),
}

/// Hands rustls the current certificate for every handshake.
pub struct CertStore {
    current: ArcSwap<CertifiedKey>,
    source: Option<FileSource>,
}

struct FileSource {
    cert: PathBuf,
    key: PathBuf,
    /// The file contents being served, to tell a renewal from a re-read.
    last: Mutex<PemFiles>,
}

impl std::fmt::Debug for CertStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertStore").finish_non_exhaustive()
    }
}

impl CertStore {
    pub fn from_files(cert: &Path, key: &Path) -> Result<(Self, i64), TlsError> {
        let (served, contents) = load_pair(cert, key)?;
        let store = CertStore {
            current: ArcSwap::new(served.key),
            source: Some(FileSource {
                cert: cert.into(),
                key: key.into(),
                last: Mutex::new(contents),
            }),
        };
        Ok((store, served.not_after))
    }

    pub fn fixed(served: Served) -> (Self, i64) {
        (
            CertStore {
                current: ArcSwap::new(served.key),
                source: None,
            },
            served.not_after,
        )
    }

    pub fn reloads(&self) -> bool {
        self.source.is_some()
    }

    /// Re-reads the files and swaps in a changed, valid pair.
    pub fn reload(&self) -> Reload {
        let Some(src) = &self.source else {
            return Reload::Unchanged;
        };
        let read = |path: &Path| {
            std::fs::read(path).map_err(|source| TlsError::Read {
                path: path.into(),
                source,
            })
        };
        let contents = match (read(&src.cert), read(&src.key)) {
            (Ok(c), Ok(k)) => (c, k),
            (Err(e), _) | (_, Err(e)) => return Reload::Rejected(e),
        };
        let mut last = src
            .last
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if *last == contents {
            return Reload::Unchanged;
        }
        match parse_pair(&contents.0, &contents.1, &src.cert, &src.key) {
            Ok(served) => {
                self.current.store(served.key);
                *last = contents;
                Reload::Swapped {
                    not_after: served.not_after,
                }
            }
            Err(e) => Reload::Rejected(e),
        }
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

/// TLS 1.2 and 1.3 only, HTTP/2 and HTTP/1.1 by ALPN.
pub fn server_config(store: Arc<CertStore>) -> ServerConfig {
    let mut config = ServerConfig::builder_with_protocol_versions(&[
        &rustls::version::TLS13,
        &rustls::version::TLS12,
    ])
    .with_no_client_auth()
    .with_cert_resolver(store);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    config
}

/// Re-reads the certificate files every `every` and on SIGHUP, for as long as it runs.
pub async fn watch(store: Arc<CertStore>, metrics: Metrics, every: Duration) {
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
                metrics.reloaded(ReloadResult::Success);
                metrics.serving(not_after);
                info!(not_after, "serving a renewed certificate");
            }
            Reload::Rejected(e) => {
                metrics.reloaded(ReloadResult::Failure);
                warn!(error = %e, "renewed certificate is not usable yet; still serving the last good one");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn install_provider() {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    }

    fn pair(name: &str) -> (String, String) {
        let rcgen::CertifiedKey { cert, signing_key } =
            rcgen::generate_simple_self_signed(vec![name.into()]).unwrap();
        (cert.pem(), signing_key.serialize_pem())
    }

    fn write(dir: &Path, (cert, key): &(String, String)) {
        std::fs::write(dir.join("tls.crt"), cert).unwrap();
        std::fs::write(dir.join("tls.key"), key).unwrap();
    }

    #[test]
    fn reload_swaps_valid_pairs_and_keeps_the_last_good_one() {
        install_provider();
        let dir = tempfile::tempdir().unwrap();
        let (crt, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
        let first = pair("a.example");
        write(dir.path(), &first);
        let (store, _) = CertStore::from_files(&crt, &key).unwrap();
        let served_first = store.current.load_full();
        assert!(matches!(store.reload(), Reload::Unchanged));

        // A renewal where only the certificate has been written so far.
        let second = pair("b.example");
        std::fs::write(&crt, &second.0).unwrap();
        assert!(matches!(
            store.reload(),
            Reload::Rejected(TlsError::Pair { .. })
        ));
        assert!(
            Arc::ptr_eq(&store.current.load_full(), &served_first)
                || store.current.load_full().cert == served_first.cert
        );

        // Truncated certificate.
        std::fs::write(&crt, &second.0[..second.0.len() / 2]).unwrap();
        assert!(matches!(store.reload(), Reload::Rejected(_)));
        assert_eq!(store.current.load_full().cert, served_first.cert);

        write(dir.path(), &second);
        assert!(matches!(store.reload(), Reload::Swapped { .. }));
        assert_ne!(store.current.load_full().cert, served_first.cert);
    }

    #[test]
    fn start_fails_on_missing_or_mismatched_files() {
        install_provider();
        let dir = tempfile::tempdir().unwrap();
        let (crt, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
        assert!(matches!(
            CertStore::from_files(&crt, &key),
            Err(TlsError::Read { .. })
        ));
        let (a, b) = (pair("a"), pair("b"));
        std::fs::write(&crt, &a.0).unwrap();
        std::fs::write(&key, &b.1).unwrap();
        let err = CertStore::from_files(&crt, &key).unwrap_err();
        assert!(
            err.to_string().contains("do not form a usable pair"),
            "{err}"
        );
        std::fs::write(&crt, "not pem").unwrap();
        assert!(matches!(
            CertStore::from_files(&crt, &key),
            Err(TlsError::NoCertificate { .. })
        ));
    }

    #[test]
    fn self_signed_has_an_expiry_in_the_future() {
        install_provider();
        let served = self_signed(vec!["localhost".into()]).unwrap();
        assert!(served.not_after > 1_700_000_000);
    }
}
