//! TLS on the transport seam: raw TCP echo and WebSocket echo through rustls' own client, and
//! peers that do not speak TLS.

mod common;
mod ws_common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use netpoll::Engine;
use netpoll::ws::WsServer;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};

type TlsStream = StreamOwned<ClientConnection, TcpStream>;

/// A server config for `localhost` and a client config that trusts it.
fn configs() -> (Arc<rustls::ServerConfig>, Arc<ClientConfig>) {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let server = netpoll::tls::server_config(
        cert.cert.pem().as_bytes(),
        cert.signing_key.serialize_pem().as_bytes(),
    )
    .unwrap();
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from(cert.cert.der().to_vec()))
        .unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let client = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    (server, Arc::new(client))
}

fn tls_client(addr: SocketAddr, config: &Arc<ClientConfig>) -> TlsStream {
    let tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(WAIT)).unwrap();
    let conn =
        ClientConnection::new(config.clone(), ServerName::try_from("localhost").unwrap()).unwrap();
    StreamOwned::new(conn, tcp)
}

#[test]
fn tcp_echo_over_tls_from_one_byte_to_a_megabyte() {
    let (server_config, client_config) = configs();
    let (engine, addr, _rx) = start(Engine::builder().pollers(2).tls(server_config), Mode::Echo);
    let mut c = tls_client(addr, &client_config);
    for len in [1usize, 100, 16 * 1024, 16 * 1024 + 1, 200_000, 1 << 20] {
        let data = pattern(len, len as u8);
        c.write_all(&data).unwrap();
        let mut back = vec![0u8; len];
        c.read_exact(&mut back).unwrap();
        assert!(back == data, "{len} bytes echoed intact");
    }
    assert!(
        engine.stats().bytes_out > (1 << 20),
        "ciphertext counted on the wire"
    );
}

#[test]
fn websocket_echo_over_tls() {
    let (server_config, client_config) = configs();
    let (_ws, addr, _rx) = ws_common::start_ws(
        WsServer::builder(),
        Engine::builder().pollers(2).tls(server_config),
    );
    let stream = tls_client(addr, &client_config);
    let (mut ws, _) =
        tungstenite::client::client(format!("ws://localhost:{}/echo", addr.port()), stream)
            .expect("upgrade over TLS");
    for len in [0usize, 1, 125, 126, 65_536, 1 << 20] {
        let data = pattern(len, 3);
        ws.send(tungstenite::Message::binary(data.clone())).unwrap();
        assert_eq!(ws.read().unwrap().into_data().to_vec(), data, "{len}");
    }
    ws.send(tungstenite::Message::text("héllo")).unwrap();
    assert_eq!(ws.read().unwrap(), tungstenite::Message::text("héllo"));
}

#[test]
fn plaintext_and_garbage_on_a_tls_port_get_an_alert_and_a_close() {
    let (server_config, _) = configs();
    let (engine, addr, _rx) = start(
        Engine::builder()
            .pollers(1)
            .read_timeout(Some(Duration::from_secs(2)))
            .tls(server_config),
        Mode::Echo,
    );
    for input in [
        &b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n"[..],
        &[0x16, 0x03, 0x01, 0x00, 0x05, 1, 2, 3, 4, 5][..],
    ] {
        let t0 = Instant::now();
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(WAIT)).unwrap();
        s.write_all(input).unwrap();
        let mut sink = Vec::new();
        // A fatal alert where rustls has one, then the end of the stream, well before the
        // timeout.
        let _ = s.read_to_end(&mut sink);
        assert!(t0.elapsed() < Duration::from_secs(1), "{:?}", t0.elapsed());
        if input.starts_with(b"GET") {
            assert_eq!(sink.first(), Some(&21), "an alert record: {sink:?}");
        }
        assert!(
            !String::from_utf8_lossy(&sink).contains("HTTP"),
            "no plaintext answer"
        );
    }
    assert!(
        eventually(WAIT, || engine.stats().open() == 0),
        "{}",
        engine.stats()
    );
}
