//! TLS for clients (`--tls-cert` and `--tls-key`): `wss://` and `https://` on
//! the main port, a certificate swapped in place on SIGHUP, and [`Conn`], the
//! plain or TLS stream every connection runs over.
//!
//! The handshake runs on the connection's own task, after admission, within the
//! connection's deadlines: a client that never finishes it holds its descriptor
//! no longer than a silent plain client, and a failed one ends that connection
//! only. A first byte that is not a TLS handshake record is a plain-HTTP
//! request on the TLS port: it gets a plain 400 naming `https://`/`wss://`.

use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_lite::future::or;
use futures_lite::{AsyncRead, AsyncWrite};
use glommio::net::TcpStream;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::config::TlsFiles;
use crate::metrics::Handshake;

/// The first byte of a TLS record carrying a handshake message (a ClientHello).
const HANDSHAKE_RECORD: u8 = 0x16;

/// The server side of TLS: its configuration (shared by every shard) and the
/// certificate a reload replaces.
pub struct ServerTls {
    files: TlsFiles,
    certs: Arc<Certs>,
    config: Arc<rustls::ServerConfig>,
}

impl ServerTls {
    /// Reads and checks the pair: a missing file, a file without a certificate
    /// or key, or a key that does not match the certificate, is an error that
    /// names the file.
    pub fn load(files: &TlsFiles) -> Result<ServerTls, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let certs = Arc::new(Certs { current: RwLock::new(Arc::new(certified_key(files, &provider)?)) });
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_no_client_auth()
            .with_cert_resolver(certs.clone());
        // HTTP/1.1 only (WebSocket upgrades are HTTP/1.1): a client offering h2
        // as well is answered in HTTP/1.1.
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(ServerTls { files: files.clone(), certs, config: Arc::new(config) })
    }

    /// Reads the files again and, if the pair is good, presents it to every new
    /// handshake from now on; connections already open keep their sessions.
    /// A bad pair changes nothing.
    pub fn reload(&self) -> Result<String, String> {
        let key = certified_key(&self.files, self.config.crypto_provider())?;
        *self.certs.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(key);
        Ok(format!("TLS certificate reloaded from {}", self.files.cert.display()))
    }

    pub fn acceptor(&self) -> futures_rustls::TlsAcceptor {
        futures_rustls::TlsAcceptor::from(self.config.clone())
    }
}

/// The certificate every handshake is given: one, replaced whole by a reload.
#[derive(Debug)]
struct Certs {
    current: RwLock<Arc<CertifiedKey>>,
}

impl ResolvesServerCert for Certs {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.read().unwrap_or_else(|e| e.into_inner()).clone())
    }
}

/// The chain of `files.cert` with the key of `files.key`, checked to belong
/// together.
fn certified_key(files: &TlsFiles, provider: &rustls::crypto::CryptoProvider) -> Result<CertifiedKey, String> {
    let chain = read_chain(&files.cert)?;
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| pem_error("--tls-key", &files.key, e))?;
    CertifiedKey::from_der(chain, key, provider).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => format!(
            "--tls-key {} is not the key of the certificate in --tls-cert {}",
            files.key.display(),
            files.cert.display()
        ),
        e => format!("--tls-key {}: {e}", files.key.display()),
    })
}

fn read_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let chain = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| pem_error("--tls-cert", path, e))?;
    if chain.is_empty() {
        return Err(format!("--tls-cert {} holds no certificate (PEM, BEGIN CERTIFICATE)", path.display()));
    }
    Ok(chain)
}

fn pem_error(flag: &str, path: &Path, e: rustls::pki_types::pem::Error) -> String {
    use rustls::pki_types::pem::Error;
    match e {
        Error::Io(e) => format!("{flag} {}: {e}", path.display()),
        Error::NoItemsFound => format!("{flag} {}: no PEM item of the right kind in it", path.display()),
        e => format!("{flag} {}: not PEM: {e:?}", path.display()),
    }
}

/// What became of a new connection on a TLS port.
pub(super) enum Secured {
    Tls(Conn),
    /// Plain HTTP on the TLS port: the plain stream, to be answered 400.
    Plain(TcpStream),
    /// Silent, or hung up before a byte: just close.
    Silent,
    /// The handshake failed or timed out.
    Refused(Handshake, String),
}

/// Waits up to `first_byte` for the client to begin, then up to `handshake` for
/// the handshake to finish.
pub(super) async fn secure(
    stream: TcpStream,
    acceptor: &futures_rustls::TlsAcceptor,
    first_byte: Duration,
    handshake: Duration,
) -> Secured {
    let mut first = [0u8; 1];
    let peeked = or(async { Some(stream.peek(&mut first).await) }, async {
        glommio::timer::sleep(first_byte).await;
        None
    });
    match peeked.await {
        Some(Ok(1)) if first[0] == HANDSHAKE_RECORD => {}
        Some(Ok(1)) => return Secured::Plain(stream),
        _ => return Secured::Silent,
    }
    let accepted = or(async { Some(acceptor.accept(stream).await) }, async {
        glommio::timer::sleep(handshake).await;
        None
    });
    match accepted.await {
        Some(Ok(tls)) => Secured::Tls(Conn::Tls(Box::new(tls))),
        Some(Err(e)) => Secured::Refused(Handshake::Failed, e.to_string()),
        None => Secured::Refused(Handshake::Timeout, format!("no TLS handshake within {handshake:?}")),
    }
}

/// A client connection: plain TCP, or TLS over it.
pub enum Conn {
    Plain(TcpStream),
    Tls(Box<futures_rustls::server::TlsStream<TcpStream>>),
}

impl Conn {
    fn tcp(&self) -> &TcpStream {
        match self {
            Conn::Plain(s) => s,
            Conn::Tls(s) => s.get_ref().0,
        }
    }

    pub fn peer_addr(&self) -> io::Result<std::net::SocketAddr> {
        self.tcp().peer_addr().map_err(io::Error::from)
    }
}

impl AsyncRead for Conn {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    /// For TLS: the records still buffered reach the socket. (A write may
    /// return once its bytes are encrypted, before they are sent: each batch
    /// of frames is flushed, so nothing waits for the next batch.)
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_flush(cx),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    /// Shuts the writing side: for TLS, a close_notify first.
    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_close(cx),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_close(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    fn pair() -> (String, String) {
        let c = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        (c.cert.pem(), c.signing_key.serialize_pem())
    }

    #[test]
    fn a_matching_pair_loads_and_a_mismatched_or_missing_one_names_its_file() {
        let dir = std::env::temp_dir().join(format!("hedgehog-tls-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ((cert_a, key_a), (_, key_b)) = (pair(), pair());
        let files =
            |cert: &str, key: &str| TlsFiles { cert: write(&dir, "c.pem", cert), key: write(&dir, "k.pem", key) };

        let tls = ServerTls::load(&files(&cert_a, &key_a)).expect("a matching pair");
        assert_eq!(tls.config.alpn_protocols, vec![b"http/1.1".to_vec()]);

        let e = ServerTls::load(&files(&cert_a, &key_b)).err().unwrap();
        assert!(e.contains("is not the key of the certificate"), "{e}");
        let e = ServerTls::load(&files(&key_a, &key_a)).err().unwrap();
        assert!(e.starts_with("--tls-cert") && e.contains("c.pem"), "{e}");
        let e = ServerTls::load(&files(&cert_a, &cert_a)).err().unwrap();
        assert!(e.starts_with("--tls-key") && e.contains("k.pem"), "{e}");
        let missing = TlsFiles { cert: dir.join("nope.pem"), key: dir.join("k.pem") };
        let e = ServerTls::load(&missing).err().unwrap();
        assert!(e.starts_with("--tls-cert") && e.contains("nope.pem"), "{e}");

        // A reload of a bad pair keeps the good one.
        let tls = ServerTls::load(&files(&cert_a, &key_a)).unwrap();
        write(&dir, "k.pem", &key_b);
        assert!(tls.reload().is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
