//! The peer: a tokio + tokio-tungstenite WebSocket server with the same behaviour as netpoll's
//! `examples/ws_echo` (`/echo` echoes, `/broadcast` relays to every `/broadcast` client), over
//! ws:// or, with a certificate and key, over wss:// through tokio-rustls.
//!
//! ```text
//! cargo run --release -p netpoll-tools --bin tt_echo -- --addr 127.0.0.1:9101 [--threads N]
//!     [--read-buffer BYTES] [--tls-cert PEM_FILE --tls-key PEM_FILE]
//! ```
//! `--threads` sets tokio's worker threads (default: all cores). `--read-buffer` sets
//! tungstenite's per-connection read buffer (default 128 KiB, the library default; the tuned
//! variant uses 4096). `--tls-cert` and `--tls-key` (both or neither; PEM, e.g. from `gen_cert`)
//! make every accepted connection do a TLS handshake (rustls, ring provider, TLS 1.2 and 1.3)
//! before the WebSocket one; without them the server speaks plain ws:// exactly as before.
//! Prints `listening on ADDR` when ready.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

type Peers = Arc<Mutex<HashMap<u64, mpsc::UnboundedSender<Message>>>>;

fn main() {
    let flags = netpoll_tools::Flags::parse(
        "127.0.0.1:9101",
        &["--read-buffer", "--tls-cert", "--tls-key"],
    );
    let read_buffer = flags
        .extra
        .get("--read-buffer")
        .map(|v| v.parse::<usize>().expect("--read-buffer N"));
    let tls = match (flags.extra.get("--tls-cert"), flags.extra.get("--tls-key")) {
        (Some(cert), Some(key)) => Some(tls_acceptor(cert, key)),
        (None, None) => None,
        _ => panic!("--tls-cert and --tls-key go together"),
    };
    flags
        .runtime()
        .block_on(serve(flags.addr.clone(), read_buffer, tls));
}

/// A TLS acceptor for the certificate chain and private key in these PEM files, on rustls' ring
/// provider with its default (safe) protocol versions and cipher suites.
fn tls_acceptor(cert_file: &str, key_file: &str) -> TlsAcceptor {
    let certs = CertificateDer::pem_file_iter(cert_file)
        .unwrap_or_else(|e| panic!("--tls-cert {cert_file}: {e}"))
        .collect::<Result<Vec<_>, _>>()
        .unwrap_or_else(|e| panic!("--tls-cert {cert_file}: {e}"));
    assert!(!certs.is_empty(), "--tls-cert {cert_file}: no certificate");
    let key = PrivateKeyDer::from_pem_file(key_file)
        .unwrap_or_else(|e| panic!("--tls-key {key_file}: {e}"));
    let ring = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(ring)
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .expect("certificate and key match");
    TlsAcceptor::from(Arc::new(config))
}

async fn serve(addr: String, read_buffer: Option<usize>, tls: Option<TlsAcceptor>) {
    let listener = TcpListener::bind(&addr).await.unwrap();
    println!("listening on {}", listener.local_addr().unwrap());
    let peers = Peers::default();
    let next_id = Arc::new(AtomicU64::new(0));
    let mut config = WebSocketConfig::default().max_message_size(Some(64 << 20));
    if let Some(n) = read_buffer {
        config = config.read_buffer_size(n).write_buffer_size(0);
    }
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let peers = peers.clone();
        let id = next_id.fetch_add(1, Ordering::Relaxed);
        match &tls {
            None => {
                tokio::spawn(connection(stream, config, id, peers));
            }
            Some(acceptor) => {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(stream) = acceptor.accept(stream).await else {
                        return;
                    };
                    connection(stream, config, id, peers).await
                });
            }
        }
    }
}

/// One connection after TCP accept (and, for wss://, the TLS handshake): the WebSocket
/// handshake, then `/broadcast` or echo by the request's path.
async fn connection<S>(stream: S, config: WebSocketConfig, id: u64, peers: Peers)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut path = String::new();
    // The callback's signature is tungstenite's; its error type is large by design.
    #[allow(clippy::result_large_err)]
    let cb = |req: &Request, resp: Response| {
        path = req.uri().path().to_string();
        Ok(resp)
    };
    let Ok(ws) = tokio_tungstenite::accept_hdr_async_with_config(stream, cb, Some(config)).await
    else {
        return;
    };
    if path == "/broadcast" {
        broadcast(ws, id, peers).await
    } else {
        echo(ws).await
    }
}

async fn echo<S: AsyncRead + AsyncWrite + Unpin>(mut ws: WebSocketStream<S>) {
    while let Some(Ok(msg)) = ws.next().await {
        let echo = match msg {
            Message::Text(_) | Message::Binary(_) => msg,
            // tungstenite queued the close reply; the next read flushes it and then ends.
            _ => continue,
        };
        if ws.send(echo).await.is_err() {
            return;
        }
    }
}

async fn broadcast<S>(ws: WebSocketStream<S>, id: u64, peers: Peers)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sink, mut stream) = ws.split();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let own = tx.clone();
    peers.lock().unwrap().insert(id, tx);
    let writer = tokio::spawn(async move {
        while let Some(m) = rx.recv().await {
            if m.is_close() {
                // tungstenite queued the reply when it read the peer's close; this flushes it.
                let _ = sink.close().await;
                return;
            }
            if sink.send(m).await.is_err() {
                return;
            }
        }
    });
    while let Some(Ok(msg)) = stream.next().await {
        match msg {
            Message::Text(_) | Message::Binary(_) => {
                let all: Vec<_> = peers.lock().unwrap().values().cloned().collect();
                for p in all {
                    let _ = p.send(msg.clone());
                }
            }
            // The writer sends the reply (the sink is there), behind what was queued.
            Message::Close(frame) => {
                let _ = own.send(Message::Close(frame));
                break;
            }
            _ => {}
        }
    }
    peers.lock().unwrap().remove(&id);
    drop(own);
    // The writer ends after the close reply, on a write error, or once the queue is empty and
    // no sender is left.
    let _ = writer.await;
}
