//! wss:// and https:// for the clients: a rustls client (ring, as hedgehog builds
//! it) trusting only the certificates of `--ca FILE`, the run's test CA.
//!
//! The clients share the load cores with everything else that is not the server, so
//! the client is kept cheap: TLS 1.3, AES-128-GCM (AES-NI), no session
//! tickets to store (each client connects once), and futures-rustls straight over
//! glommio's stream, whose reads rustls decrypts in place. Its CPU is not what is
//! measured, but a saturated client would slow what is.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use futures_rustls::TlsConnector;
use glommio::net::TcpStream;
use hedgehog::net::BoxIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};

/// How to open a TLS session to one server; cheap to clone (the config is shared).
#[derive(Clone)]
pub struct Tls {
    connector: TlsConnector,
    name: ServerName<'static>,
}

impl Tls {
    /// A client for `addr` (its IP is the name checked against the certificate)
    /// trusting the PEM certificates in `ca`.
    pub fn new(ca: &Path, addr: SocketAddr) -> Result<Tls, String> {
        let mut roots = rustls::RootCertStore::empty();
        let certs = CertificateDer::pem_file_iter(ca)
            .and_then(|it| it.collect::<Result<Vec<_>, _>>())
            .map_err(|e| format!("--ca {}: {e}", ca.display()))?;
        let (added, _) = roots.add_parsable_certificates(certs);
        if added == 0 {
            return Err(format!("--ca {} holds no usable certificate", ca.display()));
        }
        // AES-128-GCM first, as browsers offer it: then every server here (rustls,
        // which honours the client's order, and Go's, which prefers it with AES-NI)
        // negotiates the same suite, and the step compares servers, not ciphers.
        let mut provider = rustls::crypto::ring::default_provider();
        provider.cipher_suites.sort_by_key(|s| s.suite() != rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
        let provider = Arc::new(provider);
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
        // What a browser or a WebSocket library offers; hedgehog's server speaks it.
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        config.resumption = rustls::client::Resumption::disabled();
        let name = ServerName::IpAddress(addr.ip().into());
        Ok(Tls { connector: TlsConnector::from(Arc::new(config)), name })
    }

    /// The TLS handshake over `tcp`; returns the stream and what was negotiated
    /// ("TLSv1_3 TLS13_AES_128_GCM_SHA256").
    pub async fn open(&self, tcp: TcpStream) -> Result<(BoxIo, String), String> {
        let stream = self.connector.connect(self.name.clone(), tcp).await.map_err(|e| format!("TLS: {e}"))?;
        let conn = stream.get_ref().1;
        let version = conn.protocol_version().map_or("?".to_string(), |v| format!("{v:?}"));
        let suite = conn.negotiated_cipher_suite().map_or("?".to_string(), |s| format!("{:?}", s.suite()));
        Ok((Box::new(stream), format!("{version} {suite}")))
    }
}
