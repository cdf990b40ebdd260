//! Streams: plain TCP or TLS behind one trait object, request heads read off
//! them, and the TLS configurations (client trust, the simulator's certificate).

use std::io;
use std::path::Path;
use std::sync::Arc;

use futures_lite::{AsyncRead, AsyncReadExt, AsyncWrite};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

use crate::http::{self, ParseError, Request};

/// Anything a connection can run over.
pub trait Io: AsyncRead + AsyncWrite + Unpin {}
impl<T: AsyncRead + AsyncWrite + Unpin> Io for T {}

/// A plain or TLS stream.
pub type BoxIo = Box<dyn Io>;

/// Why a request could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// Answer with the error's status, then close.
    #[error(transparent)]
    Parse(#[from] ParseError),
    /// The socket failed: just close.
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// Reads one request. `buf` holds bytes already received and keeps any bytes past
/// the request (a pipelined request, or WebSocket frames after an upgrade).
/// `Ok(None)`: the peer closed before sending a whole request.
pub async fn read_request<R>(r: &mut R, buf: &mut Vec<u8>) -> Result<Option<Request>, ReadError>
where
    R: AsyncRead + Unpin + ?Sized,
{
    loop {
        if let Some((req, used)) = http::parse(buf)? {
            buf.drain(..used);
            return Ok(Some(req));
        }
        // A stack chunk keeps this cancel-safe: `buf` only ever holds received bytes.
        // It is small because it sits in every connection's task (a request head
        // rarely needs more than one or two reads of it).
        let mut chunk = [0u8; 512];
        let n = r.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// A TLS client configuration trusting the Mozilla roots plus, optionally, the
/// certificates in a PEM file. Verification is never switched off.
pub fn tls_client_config(extra_ca: Option<&Path>) -> Result<Arc<rustls::ClientConfig>, String> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = extra_ca {
        let certs = CertificateDer::pem_file_iter(path)
            .and_then(|it| it.collect::<Result<Vec<_>, _>>())
            .map_err(|e| format!("cannot read CA file {}: {e}", path.display()))?;
        if certs.is_empty() {
            return Err(format!("CA file {} holds no certificate", path.display()));
        }
        for cert in certs {
            roots.add(cert).map_err(|e| format!("bad CA certificate in {}: {e}", path.display()))?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// A fresh self-signed certificate for `localhost` and 127.0.0.1, and the server
/// configuration that presents it. Returns the configuration and the PEM.
pub fn self_signed_server() -> Result<(Arc<rustls::ServerConfig>, String), String> {
    let names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
    let cert = rcgen::generate_simple_self_signed(names).map_err(|e| e.to_string())?;
    let pem = cert.cert.pem();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(cert.signing_key.serialize_der().into());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(vec![cert.cert.der().clone()], key)
        .map_err(|e| e.to_string())?;
    Ok((Arc::new(config), pem))
}
