//! Reading PEM files, and noticing when they change.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use rustls::RootCertStore;

use super::{provider, TlsError};

/// The certificates of a PEM file, in order.
pub(super) fn certificates(
    path: &str,
    file: &str,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(file)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| TlsError::new(path, format!("{file}: {e}")))?;
    if certs.is_empty() {
        return Err(TlsError::new(
            path,
            format!("{file}: no PEM certificate in the file"),
        ));
    }
    Ok(certs)
}

/// A certificate chain with its key, checked to belong together.
pub(super) fn certified_key(
    path: &str,
    cert: &str,
    key: &str,
) -> Result<Arc<CertifiedKey>, TlsError> {
    let chain = certificates(&format!("{path}.cert"), cert)?;
    let key_path = format!("{path}.key");
    let der = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| TlsError::new(&key_path, format!("{key}: no usable private key: {e}")))?;
    let signing = provider()
        .key_provider
        .load_private_key(der)
        .map_err(|e| TlsError::new(&key_path, format!("{key}: {e}")))?;
    let certified = CertifiedKey::new(chain, signing);
    certified.keys_match().map_err(|e| {
        TlsError::new(
            &key_path,
            format!("{key} is not the key of the certificate in {cert}: {e}"),
        )
    })?;
    Ok(Arc::new(certified))
}

/// Trust anchors from a PEM file of CA certificates.
pub(super) fn roots(path: &str, file: &str) -> Result<RootCertStore, TlsError> {
    let mut store = RootCertStore::empty();
    let (added, ignored) = store.add_parsable_certificates(certificates(path, file)?);
    if added == 0 {
        return Err(TlsError::new(
            path,
            format!("{file}: none of its {ignored} certificates can be a trust anchor"),
        ));
    }
    Ok(store)
}

/// The modification time and size of each watched file (None: unreadable).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Stamps(Vec<Option<(SystemTime, u64)>>);

impl Stamps {
    /// Stamps `files` now.
    pub(super) fn of(files: &[PathBuf]) -> Stamps {
        Stamps(files.iter().map(|f| stamp(f)).collect())
    }
}

fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
    // `metadata` follows symlinks: a Kubernetes secret volume swaps a
    // `..data` link, which changes the target's stamp.
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}
