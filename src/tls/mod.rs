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

// The client side (wss:// in `WsHandle::connect`) is next; its session half is tested here.
#[allow(dead_code)]
mod session;

use std::io;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
pub use rustls::{ClientConfig, ServerConfig};

use crate::core::transport::{Codec, CodecFactory};
use crate::engine::EngineBuilder;
use session::TlsSession;

/// A server configuration from a PEM certificate chain and a PEM private key (PKCS#8, PKCS#1
/// or SEC1), with rustls' safe defaults (TLS 1.2 and 1.3) and the ring provider. For SNI
/// (several certificates), ALPN or client authentication build a [`ServerConfig`] yourself.
///
/// # Errors
/// An [`io::ErrorKind::InvalidInput`] error for PEM that holds no certificate or no key, or a
/// key that does not match the certificate.
pub fn server_config(cert_chain_pem: &[u8], key_pem: &[u8]) -> io::Result<Arc<ServerConfig>> {
    let invalid = |what: String| io::Error::new(io::ErrorKind::InvalidInput, what);
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_chain_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| invalid(format!("certificate PEM: {e}")))?;
    if certs.is_empty() {
        return Err(invalid("no certificate in the PEM".into()));
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem)
        .map_err(|e| invalid(format!("private key PEM: {e}")))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| invalid(e.to_string()))?;
    Ok(Arc::new(config))
}

impl EngineBuilder {
    /// Serves TLS on every listener with `config` (see [`server_config`]): each accepted
    /// connection does a TLS handshake before the handler sees its bytes, and everything it
    /// writes is encrypted. The handshake counts against the read timeout (for WebSocket
    /// servers, the handshake timeout), so a peer that stalls in it is closed.
    pub fn tls(self, config: Arc<ServerConfig>) -> Self {
        self.accept_codec(CodecFactory(Arc::new(move || {
            let session = TlsSession::server(config.clone())
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
            Ok(Box::new(session) as Box<dyn Codec>)
        })))
    }
}

impl Codec for TlsSession {
    fn receive(
        &mut self,
        input: &mut [u8],
        plain: &mut Vec<u8>,
        send: &mut Vec<u8>,
    ) -> io::Result<bool> {
        // The poller must survive a bug in the TLS stack: a panic fails this connection only.
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            TlsSession::receive(self, input, plain, send)
        }))
        .unwrap_or_else(|_| Err(rustls::Error::General("panic in the TLS stack".into())))
        .map(|r| r.peer_closed)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
    }

    fn seal(&mut self, data: &[u8], send: &mut Vec<u8>) -> io::Result<()> {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            TlsSession::seal(self, data, send)
        }))
        .unwrap_or_else(|_| Err(rustls::Error::General("panic in the TLS stack".into())))
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
    }

    fn close_notify(&mut self, send: &mut Vec<u8>) {
        TlsSession::close_notify(self, send)
    }

    fn held_back(&self) -> usize {
        self.early_len()
    }
}
