//! Certificates for the tests: a throwaway CA (`rcgen`) and the server
//! certificates it issues, as PEM files in a folder of its own.

use std::path::PathBuf;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    date_time_ymd,
};
use rustls::pki_types::CertificateDer;

/// A throwaway CA, and a folder for the files it issues.
pub struct Pki {
    pub dir: tempfile::TempDir,
    params: CertificateParams,
    key: KeyPair,
    /// The CA's certificate, as a client trusts it (PEM).
    pub ca_file: PathBuf,
}

/// A server certificate and its key, as PEM.
pub struct Issued {
    pub cert: String,
    pub key: String,
}

impl Issued {
    /// The certificate as DER, as a client sees it in a handshake.
    pub fn der(&self) -> Vec<u8> {
        use rustls::pki_types::pem::PemObject;
        CertificateDer::from_pem_slice(self.cert.as_bytes())
            .expect("a PEM certificate")
            .to_vec()
    }
}

impl Pki {
    pub fn new() -> Pki {
        let dir = tempfile::tempdir().expect("temporary folder");
        let key = KeyPair::generate().expect("a CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "herd test CA");
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let certificate = params.self_signed(&key).expect("a self-signed CA");
        let ca_file = dir.path().join("ca.pem");
        std::fs::write(&ca_file, certificate.pem()).expect("writing the CA");
        Pki {
            dir,
            params,
            key,
            ca_file,
        }
    }

    /// A certificate for `names` (DNS names or IP addresses), signed by the
    /// CA, valid now unless `expired`.
    pub fn issue(&self, names: &[&str], expired: bool) -> Issued {
        let key = KeyPair::generate().expect("a server key");
        let names: Vec<String> = names.iter().map(|name| (*name).to_owned()).collect();
        let mut params = CertificateParams::new(names.clone()).expect("server parameters");
        params
            .distinguished_name
            .push(DnType::CommonName, names.join(" "));
        if expired {
            params.not_before = date_time_ymd(2020, 1, 1);
            params.not_after = date_time_ymd(2021, 1, 1);
        }
        let issuer = Issuer::from_params(&self.params, &self.key);
        let certificate = params.signed_by(&key, &issuer).expect("signing");
        Issued {
            cert: certificate.pem(),
            key: key.serialize_pem(),
        }
    }

    /// A certificate for this machine's loopback address and name.
    pub fn issue_local(&self) -> Issued {
        self.issue(&["127.0.0.1", "localhost"], false)
    }

    /// Writes `issued` where the test configs point: `server.crt`,
    /// `server.key` in this folder.
    pub fn install(&self, issued: &Issued) {
        std::fs::write(self.path("server.crt"), &issued.cert).expect("writing the certificate");
        std::fs::write(self.path("server.key"), &issued.key).expect("writing the key");
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The `[tls]` table that names the installed files.
    pub fn tls_table(&self) -> String {
        format!(
            "[tls]\ncert = {:?}\nkey = {:?}\n",
            self.path("server.crt"),
            self.path("server.key")
        )
    }
}
