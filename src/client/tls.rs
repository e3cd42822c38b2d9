//! TLS for clients: the certificate a server shows on its `client_tls`
//! port, read from PEM files and replaced while the server runs, and the
//! handshake that turns an accepted socket into a TLS stream.
//!
//! rustls with the `ring` provider, as the places client already uses:
//! pure Rust apart from ring's own C and assembly, which need no system
//! library or build tool beyond a C compiler.

use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use crate::config::TlsFiles;
use crate::tls::{PemError, read_certificates, read_private_key};

/// Why a certificate could not be used; each names the file at fault.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error(transparent)]
    File(#[from] PemError),
    #[error("{}: a private key this server cannot use: {error}", path.display())]
    BadKey { path: PathBuf, error: rustls::Error },
    #[error(
        "the key in {} does not belong to the certificate in {}: {error}",
        key.display(),
        cert.display()
    )]
    Mismatch {
        cert: PathBuf,
        key: PathBuf,
        error: rustls::Error,
    },
    #[error("setting up TLS: {0}")]
    Setup(rustls::Error),
}

/// A server's TLS for clients: what each handshake is answered with. The
/// certificate can be replaced while the server runs ([`ClientTls::reload`]):
/// connections already open keep the session they agreed on, and every
/// handshake after the replacement gets the new certificate.
pub struct ClientTls {
    acceptor: TlsAcceptor,
    certificate: Arc<Certificate>,
}

impl ClientTls {
    /// Reads the certificate chain and key of `files`, checking that they
    /// belong together.
    pub fn load(files: &TlsFiles) -> Result<Self, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let key = read_certified_key(files, &provider)?;
        let certificate = Arc::new(Certificate {
            current: Mutex::new(Arc::new(key)),
            provider: provider.clone(),
        });
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(TlsError::Setup)?
            .with_no_client_auth()
            .with_cert_resolver(certificate.clone());
        Ok(Self {
            acceptor: TlsAcceptor::from(Arc::new(config)),
            certificate,
        })
    }

    /// Reads `files` again and, if they make a usable certificate, shows it
    /// from the next handshake on. On error the certificate in use stays.
    pub fn reload(&self, files: &TlsFiles) -> Result<(), TlsError> {
        let key = read_certified_key(files, &self.certificate.provider)?;
        *self.certificate.lock() = Arc::new(key);
        Ok(())
    }

    /// When the certificate in use stops being valid.
    pub fn not_after(&self) -> Option<SystemTime> {
        not_after(&self.certificate.lock())
    }

    /// The TLS handshake on an accepted client socket.
    pub async fn accept(&self, stream: TcpStream) -> std::io::Result<TlsStream<TcpStream>> {
        self.acceptor.accept(stream).await
    }
}

/// The one certificate a server shows, whatever name the client asks for
/// (a server has one client address; a client that checks names checks
/// them against this certificate).
struct Certificate {
    current: Mutex<Arc<CertifiedKey>>,
    provider: Arc<CryptoProvider>,
}

/// How long before its certificate expires a server starts to say so.
pub const EXPIRY_WARNING: Duration = Duration::from_secs(14 * 86_400);

/// What an operator should hear about a certificate valid until
/// `not_after`, at `now`: nothing while more than [`EXPIRY_WARNING`] is
/// left.
pub fn expiry_warning(not_after: SystemTime, now: SystemTime) -> Option<String> {
    let date = || {
        x509_cert::der::DateTime::from_system_time(not_after)
            .map_or_else(|_| "a date past 9999".to_owned(), |date| date.to_string())
    };
    match not_after.duration_since(now) {
        Err(_) => Some(format!(
            "expired on {}: clients that check it refuse it; replace it and send SIGHUP",
            date()
        )),
        Ok(left) if left <= EXPIRY_WARNING => {
            let when = match left.as_secs() / 86_400 {
                0 => "within a day".to_owned(),
                1 => "in 1 day".to_owned(),
                days => format!("in {days} days"),
            };
            Some(format!(
                "expires {when}, on {}; replace it and send SIGHUP",
                date()
            ))
        }
        Ok(_) => None,
    }
}

/// When the first certificate of `key`'s chain (the server's own) stops
/// being valid, if its encoding can be read.
fn not_after(key: &CertifiedKey) -> Option<SystemTime> {
    use x509_cert::der::Decode;
    let leaf = key.cert.first()?;
    let certificate = x509_cert::Certificate::from_der(leaf).ok()?;
    Some(
        certificate
            .tbs_certificate
            .validity
            .not_after
            .to_system_time(),
    )
}

impl Certificate {
    fn lock(&self) -> std::sync::MutexGuard<'_, Arc<CertifiedKey>> {
        self.current
            .lock()
            .expect("the certificate lock is never poisoned: nothing in it panics")
    }
}

impl fmt::Debug for Certificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Certificate")
    }
}

impl ResolvesServerCert for Certificate {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.lock().clone())
    }
}

fn read_certified_key(
    files: &TlsFiles,
    provider: &CryptoProvider,
) -> Result<CertifiedKey, TlsError> {
    let chain = read_certificates(&files.cert)?;
    let key = read_private_key(&files.key)?;
    let signing_key = provider
        .key_provider
        .load_private_key(key)
        .map_err(|error| TlsError::BadKey {
            path: files.key.clone(),
            error,
        })?;
    let certified = CertifiedKey::new(chain, signing_key);
    match certified.keys_match() {
        // A key that cannot tell its public half is taken on trust, as
        // rustls itself does.
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {
            Ok(certified)
        }
        Err(error) => Err(TlsError::Mismatch {
            cert: files.cert.clone(),
            key: files.key.clone(),
            error,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_certificate_close_to_its_end_or_past_it_is_worth_a_warning() {
        let day = Duration::from_secs(86_400);
        let now = SystemTime::UNIX_EPOCH + 20_000 * day;
        assert_eq!(expiry_warning(now + 15 * day, now), None);
        let soon = expiry_warning(now + 3 * day + Duration::from_secs(5), now).unwrap();
        assert!(soon.starts_with("expires in 3 days, on 2024-10-"), "{soon}");
        let today = expiry_warning(now + Duration::from_secs(60), now).unwrap();
        assert!(today.starts_with("expires within a day"), "{today}");
        let gone = expiry_warning(now - day, now).unwrap();
        assert!(gone.starts_with("expired on 2024-10-"), "{gone}");
    }
}
