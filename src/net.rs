//! Streams: plain TCP or TLS behind one trait object, request heads read off
//! them, and the TLS configurations (client trust, the simulator's certificate).

use std::io;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_lite::future::or;
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
    /// A deadline passed in `Phase`: close (with 408 if a request had begun).
    #[error("no whole request in time ({0:?})")]
    TimedOut(Phase),
}

/// How long a connection may take over each part of a request. A trickle (one
/// byte every few seconds), a head or body that never ends, or silence, each
/// ends at its deadline instead of holding a descriptor forever.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadlines {
    /// From accept to the first byte of the first request.
    pub first_byte: Duration,
    /// From a request's first byte to the end of its head.
    pub head: Duration,
    /// From the end of the head to the end of the body.
    pub body: Duration,
    /// From the end of a response to the first byte of the next request.
    pub keep_alive: Duration,
}

/// Where a request stood when its deadline passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Nothing of a request had arrived: close quietly.
    Idle,
    /// The head had begun and was not complete.
    Head,
    /// The head was complete and the body was not.
    Body,
}

/// Reads one request as [`read_request`] does, within `d`: `idle` is how long
/// the connection may stay silent first (`d.first_byte` on a new connection,
/// `d.keep_alive` between requests).
pub async fn read_request_within<R>(
    r: &mut R,
    buf: &mut Vec<u8>,
    idle: Duration,
    d: &Deadlines,
) -> Result<Option<Request>, ReadError>
where
    R: AsyncRead + Unpin + ?Sized,
{
    let (mut phase, mut deadline) = match buf.is_empty() {
        true => (Phase::Idle, Instant::now() + idle),
        false => (Phase::Head, Instant::now() + d.head),
    };
    loop {
        if let Some((req, used)) = http::parse(buf)? {
            buf.drain(..used);
            return Ok(Some(req));
        }
        if phase == Phase::Head && buf.windows(4).any(|w| w == b"\r\n\r\n") {
            (phase, deadline) = (Phase::Body, Instant::now() + d.body);
        }
        // A stack chunk keeps this cancel-safe: `buf` only ever holds received bytes.
        let mut chunk = [0u8; 512];
        let left = deadline.saturating_duration_since(Instant::now());
        // A read raced against a one-shot timer: glommio's reads keep one waker,
        // however often they are polled (unlike accept and connect).
        let read = async { Some(r.read(&mut chunk).await) };
        let n = match or(read, async {
            glommio::timer::sleep(left).await;
            None
        })
        .await
        {
            Some(n) => n?,
            None => return Err(ReadError::TimedOut(phase)),
        };
        if n == 0 {
            return Ok(None);
        }
        if phase == Phase::Idle {
            (phase, deadline) = (Phase::Head, Instant::now() + d.head);
        }
        buf.extend_from_slice(&chunk[..n]);
    }
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

/// Fails if another process already listens on `addr`. Every shard binds with
/// SO_REUSEPORT, which would otherwise let a second hedgehog (or a stale old one
/// after a restart) share the port silently and take half of the connections,
/// with client ids the other process does not know. The probe binds without
/// SO_REUSEPORT, which the kernel refuses while any socket listens on the port;
/// it is closed again before the shards bind.
///
/// The kernel refuses it too while the connections a previous relay closed
/// linger (TIME_WAIT, for a minute): they were accepted by a listener without
/// SO_REUSEADDR. The shards' SO_REUSEPORT binds are not refused by those, so a
/// refused probe is checked with a connection: only an answer means a listener.
pub fn claim_port(addr: std::net::SocketAddr) -> Result<(), String> {
    match std::net::TcpListener::bind(addr) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AddrInUse && !someone_listens(addr) => {
            log::info!("{addr}: connections of a previous process linger (TIME_WAIT); nothing listens, starting");
            Ok(())
        }
        Err(e) if e.kind() == io::ErrorKind::AddrInUse => {
            Err(format!("{addr} is already in use by another process (a hedgehog already running?)"))
        }
        Err(e) => Err(format!("cannot listen on {addr}: {e}")),
    }
}

/// Whether a connection to `addr` (loopback for a wildcard address) is taken:
/// refused means nothing listens; anything else (taken, no answer) is a listener.
fn someone_listens(addr: std::net::SocketAddr) -> bool {
    let mut target = addr;
    if addr.ip().is_unspecified() {
        target.set_ip(match addr {
            std::net::SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            std::net::SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    match std::net::TcpStream::connect_timeout(&target, Duration::from_secs(1)) {
        Err(e) => e.kind() != io::ErrorKind::ConnectionRefused,
        Ok(_) => true,
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
