//! A throwaway certificate authority for TLS tests: a CA and a server certificate for
//! `localhost`, written as PEM files into a temp dir.

use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};

pub struct TestPki {
    /// The CA certificate an agent trusts.
    pub ca: PathBuf,
    /// The broker's certificate (for `localhost` and 127.0.0.1) and key.
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TestPki {
    pub fn create(dir: &Path) -> Self {
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.distinguished_name.push(DnType::CommonName, "edgeloop test CA");
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
        let mut params = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, "edgeloop collector");
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &ca).unwrap();
        let pki = TestPki { ca: dir.join("ca.pem"), cert: dir.join("broker.pem"), key: dir.join("broker.key") };
        std::fs::write(&pki.ca, ca.pem()).unwrap();
        std::fs::write(&pki.cert, cert.pem()).unwrap();
        std::fs::write(&pki.key, key.serialize_pem()).unwrap();
        pki
    }
}
