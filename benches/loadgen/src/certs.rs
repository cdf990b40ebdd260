//! `loadgen certs --dir DIR`: a test CA and a server certificate it signed, for
//! 127.0.0.1 and localhost, made fresh for each bench run (nothing to expire or
//! leak between runs):
//!
//! - `ca.pem`: the CA certificate, what the clients trust (`--ca`);
//! - `server.pem`: the server certificate then the CA's, the chain a server presents;
//! - `server.key`: the server's private key (PKCS#8 PEM).
//!
//! ECDSA P-256 (rcgen's default): the key type a TLS deployment picks today, and the
//! cheap handshake for a connect storm of a thousand clients.

use std::path::Path;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};

pub fn run(dir: &Path) -> Result<(), String> {
    let e = |e: rcgen::Error| e.to_string();
    let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(e)?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(DnType::CommonName, "hedgehog bench test CA");
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
    let ca_key = KeyPair::generate().map_err(e)?;
    let ca_cert = ca.self_signed(&ca_key).map_err(e)?;
    let issuer = Issuer::new(ca, ca_key);

    let mut server = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()]).map_err(e)?;
    server.distinguished_name.push(DnType::CommonName, "127.0.0.1");
    let server_key = KeyPair::generate().map_err(e)?;
    let server_cert = server.signed_by(&server_key, &issuer).map_err(e)?;

    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let write = |name: &str, text: String| {
        let path = dir.join(name);
        std::fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))
    };
    write("ca.pem", ca_cert.pem())?;
    write("server.pem", server_cert.pem() + &ca_cert.pem())?;
    write("server.key", server_key.serialize_pem())
}
