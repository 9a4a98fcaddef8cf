//! TLS (rustls with the ring provider): `wss://` and TLS for raw TCP, as a codec on the
//! transport seam. Each connection's session is sans-IO ([`session`]) on rustls' unbuffered
//! API, which keeps no record buffers while a connection is idle.
//!
//! ```no_run
//! use netpoll::Engine;
//! # struct Echo;
//! # impl netpoll::Handler for Echo {
//! #     type State = ();
//! #     fn on_open(&mut self, _: &netpoll::Conn) {}
//! #     fn on_data(&mut self, c: &netpoll::Conn, _: &mut (), d: &mut [u8]) -> usize {
//! #         let _ = c.write_slice(d);
//! #         d.len()
//! #     }
//! # }
//! let cert = std::fs::read("cert.pem")?;
//! let key = std::fs::read("key.pem")?;
//! let tls = netpoll::tls::server_config(&cert, &key)?;
//! let engine = Engine::builder().listen("0.0.0.0:8443").tls(tls).start(|_| Echo)?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod session;

use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

/// The rustls this crate is built with (for its error types and configs).
pub use rustls;
use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
pub use rustls::{ClientConfig, ServerConfig};

use crate::core::conn::Conn;
use crate::core::error::Error;
use crate::core::transport::{Codec, CodecFactory};
use crate::engine::{DialOptions, EngineBuilder, EngineHandle};
pub(crate) use session::TlsSession;

fn invalid(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, what)
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A server configuration from a PEM certificate chain and a PEM private key (PKCS#8, PKCS#1
/// or SEC1), with rustls' safe defaults (TLS 1.2 and 1.3) and the ring provider. For SNI
/// (several certificates), ALPN or client authentication build a [`ServerConfig`] yourself.
///
/// # Errors
/// An [`io::ErrorKind::InvalidInput`] error for PEM that holds no certificate or no key, or a
/// key that does not match the certificate.
pub fn server_config(cert_chain_pem: &[u8], key_pem: &[u8]) -> io::Result<Arc<ServerConfig>> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_chain_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| invalid(format!("certificate PEM: {e}")))?;
    if certs.is_empty() {
        return Err(invalid("no certificate in the PEM".into()));
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem)
        .map_err(|e| invalid(format!("private key PEM: {e}")))?;
    // AES-128-GCM first, and the server's order over the client's: it needs 10 AES rounds to
    // AES-256's 14, which is most of the CPU a large message costs over TLS, and it is as
    // strong as anything else in the handshake (P-256, X25519).
    let mut provider = rustls::crypto::ring::default_provider();
    provider
        .cipher_suites
        .sort_by_key(|s| suite_rank(s.suite()));
    let mut config = ServerConfig::builder_with_provider(Arc::new(provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| invalid(e.to_string()))?;
    config.ignore_client_order = true;
    Ok(Arc::new(config))
}

/// The server's preference among the ring provider's suites: AES-128-GCM, then ChaCha20 (fast
/// without AES instructions), then AES-256-GCM; TLS 1.3 before 1.2 within each.
fn suite_rank(suite: rustls::CipherSuite) -> (u8, bool) {
    use rustls::CipherSuite as S;
    let name = format!("{suite:?}");
    let tls13 = matches!(
        suite,
        S::TLS13_AES_128_GCM_SHA256
            | S::TLS13_AES_256_GCM_SHA384
            | S::TLS13_CHACHA20_POLY1305_SHA256
    );
    let rank = if name.contains("AES_128_GCM") {
        0
    } else if name.contains("CHACHA20") {
        1
    } else {
        2
    };
    (rank, !tls13)
}

/// A client configuration that trusts `roots`, with rustls' safe defaults and the ring
/// provider.
pub fn client_config(roots: RootCertStore) -> Arc<ClientConfig> {
    let config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("the ring provider supports the default versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    Arc::new(config)
}

/// The client configuration used when none is given: Mozilla's trust anchors (compiled in
/// through `webpki-roots`, so it works the same without a system CA bundle). Built once.
pub fn default_client_config() -> Arc<ClientConfig> {
    static DEFAULT: OnceLock<Arc<ClientConfig>> = OnceLock::new();
    DEFAULT
        .get_or_init(|| {
            let roots = RootCertStore {
                roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
            };
            client_config(roots)
        })
        .clone()
}

/// A client configuration that trusts only the CA certificates in `ca_pem` (a private CA, or
/// a test's self-signed certificate).
///
/// # Errors
/// [`io::ErrorKind::InvalidInput`] for PEM that holds no usable certificate.
pub fn client_config_with_ca(ca_pem: &[u8]) -> io::Result<Arc<ClientConfig>> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem) {
        let cert = cert.map_err(|e| invalid(format!("CA PEM: {e}")))?;
        roots
            .add(cert)
            .map_err(|e| invalid(format!("CA certificate: {e}")))?;
    }
    if roots.is_empty() {
        return Err(invalid("no CA certificate in the PEM".into()));
    }
    Ok(client_config(roots))
}

/// The codec of a client connection to `server_name` (a DNS name or an IP address).
pub(crate) fn client_codec(
    config: Arc<ClientConfig>,
    server_name: &str,
) -> io::Result<Box<dyn Codec>> {
    let name = ServerName::try_from(server_name.to_string())
        .map_err(|e| invalid(format!("TLS server name {server_name:?}: {e}")))?;
    let session = TlsSession::client(config, name)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    Ok(Box::new(session))
}

/// Why a connection's TLS failed, if it did (a certificate the peer would not accept, an
/// alert from the peer, a protocol error).
pub(crate) fn failure(conn: &Conn) -> Option<rustls::Error> {
    conn.with_codec_failure(|e| e?.downcast_ref::<rustls::Error>().cloned())
}

impl EngineHandle {
    /// [`dial_with`](EngineHandle::dial_with) through TLS to `server_name` (checked against
    /// the server's certificate) with `config` (for instance [`default_client_config`] or
    /// [`client_config_with_ca`]). Writes made before the handshake completes wait for it;
    /// [`Handler::on_open`](crate::Handler::on_open) runs when the TCP connection is up, and
    /// a failed handshake closes the connection with [`CloseReason::Io`](crate::CloseReason)
    /// (`InvalidData`).
    ///
    /// # Errors
    /// As for [`dial_with`](EngineHandle::dial_with), and [`Error::Io`] with
    /// [`io::ErrorKind::InvalidInput`] for a server name that is neither a DNS name nor an IP
    /// address.
    pub fn dial_tls(
        &self,
        addr: SocketAddr,
        server_name: &str,
        config: Arc<ClientConfig>,
        opts: DialOptions,
    ) -> Result<Conn, Error> {
        let codec = client_codec(config, server_name)?;
        self.dial_prepared(addr, opts, Some(codec), |_| {})
    }
}

impl EngineBuilder {
    /// Serves TLS on every listener with `config` (see [`server_config`]): each accepted
    /// connection does a TLS handshake before the handler sees its bytes, and everything it
    /// writes is encrypted. The handshake counts against the read timeout (for WebSocket
    /// servers, the handshake timeout), so a peer that stalls in it is closed; a raw TCP
    /// engine has no read timeout by default: give a TLS one a
    /// [`read_timeout`](EngineBuilder::read_timeout). TLS needs a
    /// [`read_buffer_size`](EngineBuilder::read_buffer_size) of at least 33,280 B (two
    /// records; the default is 64 KiB): `start` refuses less.
    pub fn tls(self, config: Arc<ServerConfig>) -> Self {
        self.accept_codec(CodecFactory(Arc::new(move || {
            let session = TlsSession::server(config.clone())
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
            Ok(Box::new(session) as Box<dyn Codec>)
        })))
    }
}

/// Runs a step of the TLS stack so that the poller survives a bug in it: a panic fails this
/// connection only (as `InvalidData`, like any TLS error).
fn contained<T>(step: impl FnOnce() -> Result<T, rustls::Error>) -> io::Result<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(step))
        .unwrap_or_else(|_| Err(rustls::Error::General("panic in the TLS stack".into())))
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

impl Codec for TlsSession {
    fn receive(
        &mut self,
        input: &mut [u8],
        plain: &mut Vec<u8>,
        send: &mut Vec<u8>,
    ) -> io::Result<bool> {
        contained(|| TlsSession::receive(self, input, plain, send)).map(|r| r.peer_closed)
    }

    fn seal(&mut self, data: &[u8], send: &mut Vec<u8>) -> io::Result<()> {
        contained(|| TlsSession::seal(self, data, send))
    }

    fn close_notify(&mut self, send: &mut Vec<u8>) {
        TlsSession::close_notify(self, send)
    }

    fn held_back(&self) -> usize {
        self.early_len()
    }

    fn kept(&self) -> usize {
        self.incoming_len()
    }

    fn failure(&self) -> Option<&(dyn std::error::Error + Send + Sync + 'static)> {
        TlsSession::failure(self).map(|e| e as _)
    }
}
