//! TLS on the transport seam: raw TCP and WebSocket echo through rustls' own client and
//! netpoll's, netpoll's client against a third-party wss server, certificate errors, many
//! connections, many writers, and peers that misbehave at every stage.

mod common;
mod ws_common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use std::sync::mpsc::{self, Receiver, Sender};

use common::*;
use netpoll::ws::{
    CloseCode, Connect, ConnectError, Message, Request, Upgrade, WsClient, WsClose, WsConn,
    WsEngine, WsHandler, WsServer,
};
use netpoll::{DialOptions, Engine};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, StreamOwned};

type TlsStream = StreamOwned<ClientConnection, TcpStream>;

/// A server config for `localhost` and a client config that trusts it.
fn configs() -> (Arc<rustls::ServerConfig>, Arc<ClientConfig>) {
    configs_for(&["localhost"], false)
}

/// A server config with a certificate for `names` (see [`certificate`]) and a client config
/// that trusts that certificate only.
fn configs_for(names: &[&str], expired: bool) -> (Arc<rustls::ServerConfig>, Arc<ClientConfig>) {
    let (cert, key) = certificate(names, expired);
    let server = netpoll::tls::server_config(cert.as_bytes(), key.as_bytes()).unwrap();
    let client = netpoll::tls::client_config_with_ca(cert.as_bytes()).unwrap();
    (server, client)
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

/// A certificate for `names` (self-signed, so it is its own CA) valid `valid` or expired,
/// as PEM (certificate, key).
fn certificate(names: &[&str], expired: bool) -> (String, String) {
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let mut params = rcgen::CertificateParams::new(names).unwrap();
    if expired {
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(2021, 1, 1);
    }
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    (cert.pem(), key.serialize_pem())
}

#[derive(Debug)]
enum Ev {
    Open(u32),
    Msg(u32, Vec<u8>, bool),
    Close(u32, WsClose),
    Failed(u32, ConnectError),
}

/// netpoll's client side: the state is a tag naming the connection in events.
struct ClientSide {
    tx: Sender<Ev>,
    hello: Option<&'static str>,
}

impl WsHandler for ClientSide {
    type State = u32;
    fn on_open(&mut self, conn: &WsConn, tag: &mut u32) {
        if let Some(h) = self.hello {
            conn.send_text(h).unwrap();
        }
        let _ = self.tx.send(Ev::Open(*tag));
    }
    fn on_message(&mut self, _: &WsConn, tag: &mut u32, msg: Message<'_>) {
        let _ = self
            .tx
            .send(Ev::Msg(*tag, msg.as_bytes().to_vec(), msg.is_text()));
    }
    fn on_close(&mut self, _: &WsConn, tag: u32, close: WsClose) {
        let _ = self.tx.send(Ev::Close(tag, close));
    }
    fn on_connect_error(&mut self, tag: u32, error: ConnectError) {
        let _ = self.tx.send(Ev::Failed(tag, error));
    }
}

fn client_engine(
    hello: Option<&'static str>,
    pollers: usize,
) -> (WsEngine<ClientSide>, Receiver<Ev>) {
    let (tx, rx) = mpsc::channel();
    let ws = WsClient::builder()
        .max_message_size(17 << 20)
        .handshake_timeout(Duration::from_secs(5))
        .start(
            Engine::builder()
                .pollers(pollers)
                .max_outbound_bytes(40 << 20),
            |_| ClientSide {
                tx: tx.clone(),
                hello,
            },
        )
        .unwrap();
    (ws, rx)
}

fn next(rx: &Receiver<Ev>) -> Ev {
    rx.recv_timeout(WAIT).expect("client event")
}

/// A wss echo server (netpoll's, `/echo`) for `localhost`, and a client config trusting it.
fn wss_server(
    pollers: usize,
) -> (
    WsEngine<ws_common::Recorder>,
    SocketAddr,
    Receiver<ws_common::WsEvent>,
    Arc<ClientConfig>,
) {
    let (server_config, client) = configs();
    let (ws, addr, rx) = ws_common::start_ws(
        WsServer::builder().max_message_size(17 << 20),
        Engine::builder()
            .pollers(pollers)
            .max_outbound_bytes(40 << 20)
            .tls(server_config),
    );
    (ws, addr, rx, client)
}

#[test]
fn netpoll_client_and_server_over_wss_from_one_byte_to_sixteen_mebibytes() {
    let (_server, addr, _srx, client_config) = wss_server(2);
    let (client, rx) = client_engine(None, 1);
    let conn = client
        .connect(
            &format!("wss://localhost:{}/echo", addr.port()),
            Connect::new(1).tls(client_config),
        )
        .unwrap();
    let Ev::Open(1) = next(&rx) else { panic!() };
    for len in [0usize, 1, 125, 126, 16 * 1024, 65_536, 1 << 20, 16 << 20] {
        let data = pattern(len, len as u8);
        conn.send_binary(&data).unwrap();
        let Ev::Msg(1, back, false) = next(&rx) else {
            panic!()
        };
        assert!(back == data, "{len} bytes echoed intact");
        let text = "é".repeat(len / 2);
        conn.send_text(&text).unwrap();
        let Ev::Msg(1, back, true) = next(&rx) else {
            panic!()
        };
        assert!(back == text.as_bytes(), "{len} bytes of text echoed intact");
    }
    conn.close(CloseCode::Normal, "done");
    let Ev::Close(1, close) = next(&rx) else {
        panic!()
    };
    assert_eq!(u16::from(close.code), 1000);
}

#[test]
fn raw_tcp_dial_over_tls() {
    let (server_config, config) = configs();
    let (_server, addr, _srx) = start(Engine::builder().pollers(1).tls(server_config), Mode::Echo);
    let (client, _, crx) = start(Engine::builder().pollers(1), Mode::Record);
    let conn = client
        .dial_tls(addr, "localhost", config, DialOptions::default())
        .unwrap();
    // Written before the TCP connect and the handshake: held back, then sent first.
    conn.write_slice(b"early bytes ").unwrap();
    let _ = next_open(&crx);
    conn.write_slice(b"and later ones").unwrap();
    let mut got = Vec::new();
    while got.len() < 26 {
        match next_event(&crx, "echo") {
            Event::Data(_, d) => got.extend_from_slice(&d),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(got, b"early bytes and later ones");
}

#[test]
fn certificate_problems_are_clear_connect_errors() {
    let (client, rx) = client_engine(None, 1);
    let serve = |names: &[&str], expired: bool| {
        let (server_config, trusting) = configs_for(names, expired);
        let (ws, addr, _rx) = ws_common::start_ws(
            WsServer::builder(),
            Engine::builder().pollers(1).tls(server_config),
        );
        (ws, addr, trusting)
    };
    // Unknown CA: the default configuration (the public web's roots) does not know it.
    let (_a, addr, _) = serve(&["localhost"], false);
    let url = format!("wss://localhost:{}/echo", addr.port());
    client.connect(&url, Connect::new(1)).unwrap();
    // Another host's name, from a CA the client trusts.
    let (_b, addr, trusting) = serve(&["other.example"], false);
    let url = format!("wss://localhost:{}/echo", addr.port());
    client.connect(&url, Connect::new(2).tls(trusting)).unwrap();
    // Expired, from a CA the client trusts.
    let (_c, addr, trusting) = serve(&["localhost"], true);
    let url = format!("wss://localhost:{}/echo", addr.port());
    client.connect(&url, Connect::new(3).tls(trusting)).unwrap();
    // A server that does not speak TLS at all.
    let (_d, plain, _) = ws_common::start_ws(WsServer::builder(), Engine::builder().pollers(1));
    let url = format!("wss://localhost:{}/echo", plain.port());
    client.connect(&url, Connect::new(4)).unwrap();
    let mut seen = [false; 5];
    for _ in 0..4 {
        let Ev::Failed(tag, error) = next(&rx) else {
            panic!("a connect error")
        };
        let text = format!("{error:?}");
        let expected = [
            "",
            "UnknownIssuer",
            "NotValidForName",
            "Expired",
            "InvalidMessage",
        ];
        assert!(
            matches!(error, ConnectError::Tls(_)) && text.contains(expected[tag as usize]),
            "connect {tag}: {text} ({error})"
        );
        seen[tag as usize] = true;
    }
    assert_eq!(seen, [false, true, true, true, true]);
}

/// A third-party wss server: tungstenite's blocking server over rustls' own stream, echoing
/// text messages until the client closes.
fn third_party_wss_server() -> (SocketAddr, Arc<ClientConfig>) {
    let (server_config, client_config) = configs();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let (tcp, _) = listener.accept().unwrap();
        let conn = rustls::ServerConnection::new(server_config).unwrap();
        let stream = StreamOwned::new(conn, tcp);
        let mut ws = tungstenite::accept(stream).expect("wss upgrade");
        while let Ok(msg) = ws.read() {
            if msg.is_text() || msg.is_binary() {
                ws.send(msg).unwrap();
            }
        }
    });
    (addr, client_config)
}

#[test]
fn netpoll_client_against_a_third_party_wss_server() {
    let (addr, config) = third_party_wss_server();
    let (client, rx) = client_engine(Some("hello over tls"), 1);
    let conn = client
        .connect(
            &format!("wss://localhost:{}/", addr.port()),
            Connect::new(5).tls(config),
        )
        .unwrap();
    let Ev::Open(5) = next(&rx) else { panic!() };
    let Ev::Msg(5, m, true) = next(&rx) else {
        panic!()
    };
    assert_eq!(m, b"hello over tls");
    let big = pattern(300_000, 9);
    conn.send_binary(&big).unwrap();
    let Ev::Msg(5, m, false) = next(&rx) else {
        panic!()
    };
    assert!(m == big);
    conn.close(CloseCode::Normal, "bye");
    let Ev::Close(5, close) = next(&rx) else {
        panic!()
    };
    assert_eq!(u16::from(close.code), 1000, "tungstenite echoes our close");
}

#[test]
fn two_thousand_wss_connections() {
    raise_nofile_limit(4_200);
    let (server, addr, _srx, config) = wss_server(1);
    let (client, rx) = client_engine(Some("ping"), 2);
    const N: u32 = 2000;
    for i in 0..N {
        let src = SocketAddr::from(([127, 0, 0, 1 + (i % 4) as u8], 0));
        client
            .connect(
                &format!("wss://localhost:{}/echo", addr.port()),
                Connect::new(i).local_addr(src).tls(config.clone()),
            )
            .unwrap();
    }
    let mut echoed = vec![false; N as usize];
    let mut n = 0;
    while n < N {
        match next(&rx) {
            Ev::Msg(tag, m, true) => {
                assert_eq!(m, b"ping");
                assert!(!echoed[tag as usize]);
                echoed[tag as usize] = true;
                n += 1;
            }
            Ev::Open(..) => {}
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(client.stats().open(), N as u64);
    assert_eq!(server.stats().open(), N as u64);
}

/// Server side of the many-writers test: on open, 16 threads each send 400 numbered
/// messages of varied sizes (some over a TLS record) to the one connection.
struct Writers;

impl WsHandler for Writers {
    type State = ();
    fn on_request(&mut self, _: &Request<'_>) -> Upgrade<()> {
        netpoll::ws::Accept::new(()).into()
    }
    fn on_open(&mut self, conn: &WsConn, _: &mut ()) {
        for t in 0..16u32 {
            let conn = conn.clone();
            std::thread::spawn(move || {
                for i in 0..400u32 {
                    let len = 8 + ((t * 7919 + i * 104_729) % 24_000) as usize;
                    let mut msg = vec![(t as u8) ^ (i as u8); len];
                    msg[..4].copy_from_slice(&t.to_be_bytes());
                    msg[4..8].copy_from_slice(&i.to_be_bytes());
                    conn.send_binary(&msg)
                        .expect("under the raised outbound limit");
                }
            });
        }
    }
    fn on_message(&mut self, _: &WsConn, _: &mut (), _: Message<'_>) {}
}

#[test]
fn sixteen_threads_write_to_one_wss_connection() {
    let (server_config, client_config) = configs();
    let server = WsServer::builder()
        .start(
            Engine::builder()
                .pollers(2)
                .max_outbound_bytes(256 << 20)
                .listen("127.0.0.1:0")
                .tls(server_config),
            |_| Writers,
        )
        .unwrap();
    let addr = server.local_addrs()[0];
    let (mut ws, _) = tungstenite::client::client(
        format!("ws://localhost:{}/", addr.port()),
        tls_client(addr, &client_config),
    )
    .unwrap();
    let mut next_of = [0u32; 16];
    for _ in 0..16 * 400 {
        let data = ws.read().unwrap().into_data();
        let t = u32::from_be_bytes(data[..4].try_into().unwrap());
        let i = u32::from_be_bytes(data[4..8].try_into().unwrap());
        assert_eq!(i, next_of[t as usize], "thread {t}'s messages in order");
        next_of[t as usize] += 1;
        let len = 8 + ((t * 7919 + i * 104_729) % 24_000) as usize;
        assert_eq!(data.len(), len, "whole");
        assert!(
            data[8..].iter().all(|&b| b == (t as u8) ^ (i as u8)),
            "intact"
        );
    }
    assert_eq!(next_of, [400; 16]);
}

/// The first flight of a rustls client to `localhost` (its ClientHello) as wire bytes.
fn client_hello(config: &Arc<ClientConfig>) -> Vec<u8> {
    let mut conn =
        ClientConnection::new(config.clone(), ServerName::try_from("localhost").unwrap()).unwrap();
    let mut hello = Vec::new();
    conn.write_tls(&mut hello).unwrap();
    hello
}

#[test]
fn misbehaving_tls_peers_are_closed_once_with_the_right_reason_and_no_spin() {
    let (server_config, client_config) = configs();
    let (engine, addr, rx) = start(
        Engine::builder()
            .pollers(1)
            .read_timeout(Some(Duration::from_millis(300)))
            .tls(server_config),
        Mode::Echo,
    );
    let hello = client_hello(&client_config);

    // Slow loris: half a ClientHello, then nothing. The read timeout closes it.
    let mut s = TcpStream::connect(addr).unwrap();
    let id = next_open(&rx).id();
    s.write_all(&hello[..hello.len() / 2]).unwrap();
    let t0 = Instant::now();
    assert_eq!(wait_close(&rx, id), netpoll::CloseReason::ReadTimeout);
    assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());

    // A fatal alert (handshake_failure) right after the hello.
    let mut s = TcpStream::connect(addr).unwrap();
    let id = next_open(&rx).id();
    s.write_all(&hello).unwrap();
    s.write_all(&[0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 40])
        .unwrap();
    assert_eq!(
        wait_close(&rx, id),
        netpoll::CloseReason::Io(std::io::ErrorKind::InvalidData)
    );

    // close_notify in the middle of what would be a message: the connection ends as the
    // peer's close, and our close_notify answers it (a clean end of stream for rustls).
    let mut c = tls_client(addr, &client_config);
    let id = next_open(&rx).id();
    c.write_all(b"ping").unwrap();
    let mut back = [0u8; 4];
    c.read_exact(&mut back).unwrap();
    c.write_all(b"half of a mess").unwrap();
    c.conn.send_close_notify();
    c.flush().unwrap();
    assert_eq!(wait_close(&rx, id), netpoll::CloseReason::PeerClosed);
    let mut rest = Vec::new();
    c.read_to_end(&mut rest)
        .expect("a clean close_notify, not a truncation");
    assert_eq!(
        rest, b"half of a mess",
        "what came before close_notify was echoed"
    );

    // A reset in the middle of a record.
    let mut c = tls_client(addr, &client_config);
    let id = next_open(&rx).id();
    c.write_all(b"ping").unwrap();
    c.read_exact(&mut back).unwrap();
    let mut record = Vec::new();
    c.conn.writer().write_all(&[7u8; 1000]).unwrap();
    c.conn.write_tls(&mut record).unwrap();
    c.sock.write_all(&record[..record.len() / 2]).unwrap();
    socket2::SockRef::from(&c.sock)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(c);
    assert_eq!(
        wait_close(&rx, id),
        netpoll::CloseReason::Io(std::io::ErrorKind::ConnectionReset)
    );

    drop(s);
    assert!(
        eventually(WAIT, || engine.stats().open() == 0),
        "{}",
        engine.stats()
    );
    let stats = engine.stats();
    assert_eq!(stats.queued_bytes, 0, "{stats}");
    // Each peer costs a handful of reads: nothing spun.
    assert!(stats.read_calls < 100, "{stats}");
}

#[test]
fn a_graceful_close_and_the_shutdown_end_with_close_notify() {
    let (server_config, client_config) = configs();
    let (engine, addr, rx) = start(Engine::builder().pollers(1).tls(server_config), Mode::Echo);
    let mut a = tls_client(addr, &client_config);
    let first = next_open(&rx);
    let mut b = tls_client(addr, &client_config);
    let _ = next_open(&rx);
    for c in [&mut a, &mut b] {
        c.write_all(b"x").unwrap();
        let mut back = [0u8; 1];
        c.read_exact(&mut back).unwrap();
    }
    // The server closes one connection: rustls' client sees close_notify (a clean end of
    // stream; a bare FIN would be an UnexpectedEof error).
    first.close();
    let mut rest = Vec::new();
    a.read_to_end(&mut rest)
        .expect("close_notify before the FIN");
    // The shutdown closes the other the same way.
    let handle: &netpoll::EngineHandle = &engine;
    handle.shutdown(Duration::from_secs(5));
    b.read_to_end(&mut rest)
        .expect("close_notify before the FIN");
    assert!(rest.is_empty());
    drop((a, b));
    let t0 = Instant::now();
    engine.wait();
    assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
}

#[test]
fn tls_needs_a_read_buffer_of_two_records_and_works_at_that_size() {
    let (server_config, client_config) = configs();
    let small = Engine::builder()
        .listen("127.0.0.1:0")
        .read_buffer_size(16 * 1024)
        .tls(server_config.clone())
        .start(|_| Recorder {
            tx: mpsc::channel().0,
            mode: Mode::Echo,
        });
    match small {
        Err(netpoll::Error::Config(e)) => assert_eq!(e.field, "read_buffer_size", "{e}"),
        other => panic!("expected a config error, got {:?}", other.map(|_| ())),
    }
    let (client, _, _) = start(Engine::builder().read_buffer_size(16 * 1024), Mode::Record);
    let dial = client.dial_tls(
        "127.0.0.1:1".parse().unwrap(),
        "localhost",
        client_config.clone(),
        DialOptions::default(),
    );
    assert!(matches!(dial, Err(netpoll::Error::Config(_))), "{dial:?}");
    // At the smallest size, records cut across reads still come out whole.
    let (_engine, addr, _rx) = start(
        Engine::builder()
            .pollers(1)
            .read_buffer_size(2 * (16 * 1024 + 256))
            .tls(server_config),
        Mode::Echo,
    );
    let mut c = tls_client(addr, &client_config);
    for len in [16 * 1024, 16 * 1024 + 7, 100_000, 1 << 20] {
        let data = pattern(len, 5);
        c.write_all(&data).unwrap();
        let mut back = vec![0u8; len];
        c.read_exact(&mut back).unwrap();
        assert!(back == data, "{len}");
    }
}

#[test]
fn sni_picks_the_certificate_and_alpn_is_negotiated_through_a_users_server_config() {
    use rustls::server::ResolvesServerCertUsingSni;
    use rustls::sign::CertifiedKey;
    let mut resolver = ResolvesServerCertUsingSni::new();
    let mut cas = Vec::new();
    for name in ["a.example", "b.example"] {
        let (cert, key) = certificate(&[name], false);
        let der = CertificateDer::from_pem_slice(cert.as_bytes()).unwrap();
        let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap();
        let signer = rustls::crypto::ring::sign::any_supported_type(&key).unwrap();
        resolver
            .add(name, CertifiedKey::new(vec![der], signer))
            .unwrap();
        cas.push((name, cert));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(resolver));
    config.alpn_protocols = vec![b"echo/1".to_vec()];
    let (_engine, addr, _rx) = start(
        Engine::builder().pollers(1).tls(Arc::new(config)),
        Mode::Echo,
    );
    for (name, ca) in cas {
        // Each name's client trusts only its own certificate: the handshake succeeds only if
        // the server chose by SNI.
        let mut client = (*netpoll::tls::client_config_with_ca(ca.as_bytes()).unwrap()).clone();
        client.alpn_protocols = vec![b"echo/1".to_vec()];
        let tcp = TcpStream::connect(addr).unwrap();
        tcp.set_read_timeout(Some(WAIT)).unwrap();
        let conn =
            ClientConnection::new(Arc::new(client), ServerName::try_from(name).unwrap()).unwrap();
        let mut c = StreamOwned::new(conn, tcp);
        c.write_all(name.as_bytes()).unwrap();
        let mut back = vec![0u8; name.len()];
        c.read_exact(&mut back).unwrap();
        assert_eq!(back, name.as_bytes());
        assert_eq!(c.conn.alpn_protocol(), Some(&b"echo/1"[..]));
    }
}

#[test]
fn the_server_prefers_aes_128_gcm_whatever_the_client_lists_first() {
    let (server_config, client_config) = configs();
    let (_engine, addr, _rx) = start(Engine::builder().pollers(1).tls(server_config), Mode::Echo);
    // rustls' client lists AES-256-GCM first.
    let mut c = tls_client(addr, &client_config);
    c.write_all(b"x").unwrap();
    let mut back = [0u8; 1];
    c.read_exact(&mut back).unwrap();
    assert_eq!(
        c.conn.negotiated_cipher_suite().map(|s| s.suite()),
        Some(rustls::CipherSuite::TLS13_AES_128_GCM_SHA256)
    );
}

#[test]
fn plaintext_waiting_for_the_handshake_counts_against_the_outbound_limit() {
    // A server that accepts and never answers: the handshake cannot complete.
    let mute = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = mute.local_addr().unwrap();
    let (_, client_config) = configs();
    let (client, _, _rx) = start(
        Engine::builder().pollers(1).max_outbound_bytes(64 * 1024),
        Mode::Record,
    );
    let conn = client
        .dial_tls(addr, "localhost", client_config, DialOptions::default())
        .unwrap();
    let chunk = vec![7u8; 40 * 1024];
    conn.write_slice(&chunk).unwrap();
    assert!(
        conn.pending_bytes() >= chunk.len(),
        "{}",
        conn.pending_bytes()
    );
    match conn.write_slice(&chunk) {
        Err(netpoll::WriteError::Overflow { pending, limit, .. }) => {
            assert!(
                pending >= chunk.len() && limit == 64 * 1024,
                "{pending} {limit}"
            );
        }
        other => panic!("expected Overflow, got {other:?}"),
    }
    drop(mute);
}
