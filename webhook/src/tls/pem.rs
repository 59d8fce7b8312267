//! Reading a PEM certificate chain and private key, checked to form a usable pair;
//! and the in-memory pair of `--self-signed`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
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
pub(super) fn load_pair(cert_path: &Path, key_path: &Path) -> Result<(Served, PemFiles), TlsError> {
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

pub(super) fn parse_pair(
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
