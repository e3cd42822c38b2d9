//! The client side of TLS, wherever herd connects out: `herd send --tls`
//! and `herd client --tls` to a server's TLS port, and the archiver to a
//! PostgreSQL that takes TLS. rustls with the `ring` provider, as the
//! server side (`client::tls`), trusting a CA file of the user's or else
//! the Mozilla roots of `webpki-roots`: built-in roots behave the same on
//! every machine and need no system certificate store.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Why a PEM file of certificates or of a key could not be read; each
/// names the file at fault.
#[derive(Debug, thiserror::Error)]
pub enum PemError {
    #[error("cannot read {}: {error}", path.display())]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{}: not PEM, or a damaged PEM block: {message}", path.display())]
    Pem { path: PathBuf, message: String },
    #[error("{}: no certificate in it (a PEM `CERTIFICATE` block)", path.display())]
    NoCertificate { path: PathBuf },
    #[error(
        "{}: no private key in it (a PEM `PRIVATE KEY`, `RSA PRIVATE KEY` or `EC PRIVATE KEY` block)",
        path.display()
    )]
    NoKey { path: PathBuf },
}

/// Why a client's TLS settings could not be made.
#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    #[error(transparent)]
    File(#[from] PemError),
    #[error("a certificate in {} cannot be used: {error}", path.display())]
    Unusable { path: PathBuf, error: rustls::Error },
    #[error("the key in {} and the certificate in {} cannot be used together: {error}", key.display(), cert.display())]
    Identity {
        cert: PathBuf,
        key: PathBuf,
        error: rustls::Error,
    },
    #[error("setting up TLS: {0}")]
    Setup(rustls::Error),
}

/// A certificate (PEM, the chain) and its private key (PEM) that a client
/// shows the server it connects to.
#[derive(Clone, Copy, Debug)]
pub struct Identity<'a> {
    pub cert: &'a Path,
    pub key: &'a Path,
}

/// A TLS client configuration that trusts the certificates in the PEM file
/// `ca`, or the Mozilla roots without one, and shows `identity` if the
/// server asks for a client certificate.
pub fn client_config(
    ca: Option<&Path>,
    identity: Option<Identity<'_>>,
) -> Result<rustls::ClientConfig, TrustError> {
    let mut roots = rustls::RootCertStore::empty();
    match ca {
        Some(path) => {
            for certificate in read_certificates(path)? {
                roots
                    .add(certificate)
                    .map_err(|error| TrustError::Unusable {
                        path: path.to_owned(),
                        error,
                    })?;
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(TrustError::Setup)?
    .with_root_certificates(roots);
    let Some(identity) = identity else {
        return Ok(builder.with_no_client_auth());
    };
    let chain = read_certificates(identity.cert)?;
    let key = read_private_key(identity.key)?;
    builder
        .with_client_auth_cert(chain, key)
        .map_err(|error| TrustError::Identity {
            cert: identity.cert.to_owned(),
            key: identity.key.to_owned(),
            error,
        })
}

fn read(path: &Path) -> Result<Vec<u8>, PemError> {
    std::fs::read(path).map_err(|error| PemError::Read {
        path: path.to_owned(),
        error,
    })
}

/// The certificates in the PEM file `path`, in order: at least one.
pub fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, PemError> {
    let certificates = CertificateDer::pem_slice_iter(&read(path)?)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| PemError::Pem {
            path: path.to_owned(),
            message: error.to_string(),
        })?;
    if certificates.is_empty() {
        return Err(PemError::NoCertificate {
            path: path.to_owned(),
        });
    }
    Ok(certificates)
}

/// The private key in the PEM file `path`.
pub fn read_private_key(path: &Path) -> Result<PrivateKeyDer<'static>, PemError> {
    PrivateKeyDer::from_pem_slice(&read(path)?).map_err(|error| match error {
        rustls::pki_types::pem::Error::NoItemsFound => PemError::NoKey {
            path: path.to_owned(),
        },
        error => PemError::Pem {
            path: path.to_owned(),
            message: error.to_string(),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ca_file_that_holds_no_certificate_is_named_in_the_error() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("ca.pem");
        std::fs::write(&empty, "no PEM here\n").unwrap();
        let error = client_config(Some(&empty), None).unwrap_err().to_string();
        assert!(error.contains("no certificate in"), "{error}");
        assert!(error.contains("ca.pem"), "{error}");
        let missing = dir.path().join("missing.pem");
        let error = client_config(Some(&missing), None).unwrap_err().to_string();
        assert!(error.starts_with("cannot read"), "{error}");
        assert!(client_config(None, None).is_ok());
    }
}
