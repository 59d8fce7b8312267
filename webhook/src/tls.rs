//! The serving certificate: loaded and checked at start, re-read while serving.
//!
//! cert-manager renews the pair into a Secret; kubelet updates the Secret volume by
//! swapping its `..data` symlink, so watching the files themselves misses renewals.
//! Instead the files are re-read on a timer (and on SIGHUP) and compared with what is
//! being served; a changed, valid pair is swapped in atomically, and a half-written or
//! mismatched one is logged and ignored, so the last good pair keeps serving.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} holds no PEM certificate")]
    NoCertificate { path: PathBuf },
    #[error("{path}: invalid PEM certificate: {source}")]
    BadCertificate {
        path: PathBuf,
        source: rustls_pki_types::pem::Error,
    },
    #[error("{path} holds no usable PEM private key: {source}")]
    BadKey {
        path: PathBuf,
        source: rustls_pki_types::pem::Error,
    },
    #[error("{cert} and {key} do not form a usable pair: {source}")]
    Pair {
        cert: PathBuf,
        key: PathBuf,
        source: rustls::Error,
    },
    #[error("{path}: the certificate cannot be parsed: {reason}")]
    Parse { path: PathBuf, reason: String },
    #[error("cannot generate a self-signed certificate: {0}")]
    SelfSigned(#[from] rcgen::Error),
}

/// A certificate ready to serve, with its expiry (seconds since the epoch) for metrics.
pub struct Served {
    pub key: Arc<CertifiedKey>,
    pub not_after: i64,
}

/// The certificate chain and key files as read, in that order.
pub type PemFiles = (Vec<u8>, Vec<u8>);

/// Reads and checks a PEM certificate chain and private key.
pub fn load_pair(cert_path: &Path, key_path: &Path) -> Result<(Served, PemFiles), TlsError> {
    let read = |path: &Path| {
        std::fs::read(path).map_err(|source| TlsError::Read {
            path: path.into(),
            source,
        })
    };
    let (cert_pem, key_pem) = (read(cert_path)?, read(key_path)?);
    let served = parse_pair(&cert_pem, &key_pem, cert_path, key_path)?;
    Ok((served, (cert_pem, key_pem)))
}

fn parse_pair(
    cert_pem: &[u8],
    key_pem: &[u8],
    cert_path: &Path,
    key_path: &Path,
) -> Result<Served, TlsError> {
    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::BadCertificate {
            path: cert_path.into(),
            source,
        })?;
    let Some(leaf) = chain.first() else {
        return Err(TlsError::NoCertificate {
            path: cert_path.into(),
        });
    };
    let not_after = not_after(leaf).map_err(|reason| TlsError::Parse {
        path: cert_path.into(),
        reason,
    })?;
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|source| TlsError::BadKey {
        path: key_path.into(),
        source,
    })?;
    let pair_error = |source| TlsError::Pair {
        cert: cert_path.into(),
        key: key_path.into(),
        source,
    };
    let certified = CertifiedKey::from_der(chain, key, provider()).map_err(pair_error)?;
    // from_der lets an unknown consistency pass; a half-renewed Secret must not.
    certified.keys_match().map_err(pair_error)?;
    Ok(Served {
        key: Arc::new(certified),
        not_after,
    })
}

/// An in-memory certificate for local runs: `--self-signed`.
pub fn self_signed(names: Vec<String>) -> Result<Served, TlsError> {
    let rcgen::CertifiedKey { cert, signing_key } = rcgen::generate_simple_self_signed(names)?;
    let key =
        PrivateKeyDer::try_from(signing_key.serialize_der()).map_err(|reason| TlsError::Parse {
            path: "<self-signed>".into(),
            reason: reason.into(),
        })?;
    let der = cert.der().clone();
    let not_after = not_after(&der).map_err(|reason| TlsError::Parse {
        path: "<self-signed>".into(),
        reason,
    })?;
    let certified =
        CertifiedKey::from_der(vec![der], key, provider()).map_err(|source| TlsError::Pair {
            cert: "<self-signed>".into(),
            key: "<self-signed>".into(),
            source,
        })?;
    Ok(Served {
        key: Arc::new(certified),
        not_after,
    })
}

fn not_after(cert: &CertificateDer<'_>) -> Result<i64, String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert).map_err(|e| e.to_string())?;
    Ok(parsed.validity().not_after.timestamp())
}

fn provider() -> &'static Arc<CryptoProvider> {
    CryptoProvider::get_default().expect("main installs the process-wide crypto provider")
}

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

    pub fn current(&self) -> Arc<CertifiedKey> {
        self.current.load_full()
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
        let served_first = store.current();
        assert!(matches!(store.reload(), Reload::Unchanged));

        // A renewal where only the certificate has been written so far.
        let second = pair("b.example");
        std::fs::write(&crt, &second.0).unwrap();
        assert!(matches!(
            store.reload(),
            Reload::Rejected(TlsError::Pair { .. })
        ));
        assert!(
            Arc::ptr_eq(&store.current(), &served_first)
                || store.current().cert == served_first.cert
        );

        // Truncated certificate.
        std::fs::write(&crt, &second.0[..second.0.len() / 2]).unwrap();
        assert!(matches!(store.reload(), Reload::Rejected(_)));
        assert_eq!(store.current().cert, served_first.cert);

        write(dir.path(), &second);
        assert!(matches!(store.reload(), Reload::Swapped { .. }));
        assert_ne!(store.current().cert, served_first.cert);
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
