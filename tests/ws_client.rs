//! The WebSocket client: against netpoll's own server, against a third-party server
//! (tungstenite's), and against broken servers that must give clear errors.

mod common;
mod ws_common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::mpsc::{self, Receiver, Sender};
use std::time::Duration;

use netpoll::Engine;
use netpoll::ws::{
    CloseCode, Connect, ConnectError, Message, Request, Upgrade, WsClient, WsClose, WsConn,
    WsEngine, WsHandle, WsHandler, WsServer,
};
use ws_common::{WAIT, start_ws};

#[derive(Debug)]
enum Ev {
    Open(u32, WsConn),
    Msg(u32, Vec<u8>, bool),
    Close(u32, WsClose),
    Failed(u32, String),
}

/// A client handler: the state is a tag naming the connection in events.
struct ClientSide {
    tx: Sender<Ev>,
    /// Send this when the connection opens.
    hello: Option<&'static str>,
}

impl WsHandler for ClientSide {
    type State = u32;

    fn on_open(&mut self, conn: &WsConn, tag: &mut u32) {
        assert!(conn.is_client());
        if let Some(h) = self.hello {
            conn.send_text(h).unwrap();
        }
        let _ = self.tx.send(Ev::Open(*tag, conn.clone()));
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
        let _ = self.tx.send(Ev::Failed(tag, error.to_string()));
    }
}

fn client_engine(hello: Option<&'static str>) -> (WsEngine<ClientSide>, Receiver<Ev>) {
    let (tx, rx) = mpsc::channel();
    let ws = WsClient::builder()
        .handshake_timeout(Duration::from_millis(500))
        .start(Engine::builder().pollers(2), |_| ClientSide {
            tx: tx.clone(),
            hello,
        })
        .unwrap();
    (ws, rx)
}

fn next(rx: &Receiver<Ev>) -> Ev {
    rx.recv_timeout(WAIT).expect("client event")
}

#[test]
fn client_echoes_through_netpoll_server_and_closes_cleanly() {
    let (_server, addr, _srx) = start_ws(WsServer::builder(), Engine::builder().pollers(1));
    let (client, rx) = client_engine(Some("hello"));
    let conn = client
        .connect(&format!("ws://{addr}/echo"), Connect::new(7))
        .unwrap();
    assert!(
        matches!(
            conn.send_text("too early"),
            Err(netpoll::WriteError::Invalid(_))
        ),
        "no frames before the 101"
    );
    assert!(
        matches!(
            conn.with_state(|_, _: &mut u32| {}),
            Err(netpoll::WriteError::Invalid(_))
        ),
        "no state to reach before the 101"
    );
    let Ev::Open(7, c) = next(&rx) else { panic!() };
    assert_eq!(c.id(), conn.id());
    let (tag_tx, tag) = mpsc::channel();
    conn.with_state(move |_, t: &mut u32| {
        let _ = tag_tx.send(*t);
    })
    .unwrap();
    assert_eq!(tag.recv_timeout(WAIT).unwrap(), 7);
    let Ev::Msg(7, m, true) = next(&rx) else {
        panic!()
    };
    assert_eq!(m, b"hello");
    // Large binary both ways (masked by the client, unmasked by the server, echoed).
    let big: Vec<u8> = (0..300_000u32).map(|i| (i % 199) as u8).collect();
    conn.send_binary(&big).unwrap();
    let Ev::Msg(7, m, false) = next(&rx) else {
        panic!()
    };
    assert_eq!(m, big);
    conn.close(CloseCode::Normal, "done");
    let Ev::Close(7, close) = next(&rx) else {
        panic!()
    };
    assert_eq!(
        u16::from(close.code),
        1000,
        "the server's echo of our close"
    );
}

#[test]
fn client_works_with_a_third_party_server_and_negotiates_a_subprotocol() {
    // tungstenite's blocking server, choosing the subprotocol "v2".
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server = std::thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        // The callback's signature (and its large error type) is tungstenite's.
        #[allow(clippy::result_large_err)]
        let cb = |req: &tungstenite::handshake::server::Request,
                  mut resp: tungstenite::handshake::server::Response| {
            let offered = req.headers()["sec-websocket-protocol"].to_str().unwrap();
            assert_eq!(offered, "v1, v2");
            assert_eq!(req.headers()["x-token"], "secret");
            resp.headers_mut()
                .insert("sec-websocket-protocol", "v2".parse().unwrap());
            Ok(resp)
        };
        let mut ws = tungstenite::accept_hdr(stream, cb).unwrap();
        loop {
            match ws.read() {
                Ok(m @ (tungstenite::Message::Text(_) | tungstenite::Message::Binary(_))) => {
                    ws.send(m).unwrap()
                }
                Ok(tungstenite::Message::Close(_)) | Err(_) => break,
                Ok(_) => {}
            }
        }
        let _ = ws.flush();
    });
    let (client, rx) = client_engine(Some("über"));
    let opts = Connect::new(1)
        .protocol("v1")
        .protocol("v2")
        .header("X-Token", "secret");
    let conn = client.connect(&format!("ws://{addr}/"), opts).unwrap();
    let Ev::Open(1, _) = next(&rx) else { panic!() };
    let Ev::Msg(1, m, true) = next(&rx) else {
        panic!()
    };
    assert_eq!(m, "über".as_bytes());
    conn.close(CloseCode::Normal, "");
    let Ev::Close(1, close) = next(&rx) else {
        panic!()
    };
    assert_eq!(u16::from(close.code), 1000);
    server.join().unwrap();
}

/// A fake server that reads the request and answers with `reply(key)`.
fn fake_server(reply: fn(&str) -> String) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut buf = vec![0u8; 4096];
        let mut got = Vec::new();
        while !got.ends_with(b"\r\n\r\n") {
            let n = s.read(&mut buf).unwrap();
            if n == 0 {
                return;
            }
            got.extend_from_slice(&buf[..n]);
        }
        let req = String::from_utf8(got).unwrap();
        let key = req
            .lines()
            .find_map(|l| l.strip_prefix("Sec-WebSocket-Key: "))
            .unwrap()
            .to_string();
        let _ = s.write_all(reply(&key).as_bytes());
        std::thread::sleep(Duration::from_secs(2));
    });
    addr
}

#[test]
fn bad_server_responses_give_clear_errors() {
    let (client, rx) = client_engine(None);
    type Reply = fn(&str) -> String;
    let cases: [(Reply, &str); 4] = [
        (
            |_| "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n".into(),
            "server answered HTTP 404 instead of 101",
        ),
        (
            |_| {
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                 Sec-WebSocket-Accept: AAAAAAAAAAAAAAAAAAAAAAAAAAA=\r\n\r\n"
                    .into()
            },
            "invalid upgrade response: wrong Sec-WebSocket-Accept",
        ),
        (
            |_| "\x00\x01garbage that is not HTTP\r\n\r\n".into(),
            "invalid upgrade response: not an HTTP response",
        ),
        (|_| String::new(), "handshake timed out"),
    ];
    for (i, (reply, want)) in cases.into_iter().enumerate() {
        let addr = fake_server(reply);
        client
            .connect(&format!("ws://{addr}/"), Connect::new(i as u32))
            .unwrap();
        match next(&rx) {
            Ev::Failed(tag, why) => {
                assert_eq!(tag, i as u32);
                assert_eq!(why, want);
            }
            other => panic!("case {i}: expected a connect error, got {other:?}"),
        }
    }
    // Nothing listening: the TCP connect fails.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    client
        .connect(&format!("ws://127.0.0.1:{port}/"), Connect::new(99))
        .unwrap();
    let Ev::Failed(99, why) = next(&rx) else {
        panic!()
    };
    assert!(why.starts_with("connect failed"), "{why}");
    // Bad URLs fail at once.
    assert!(client.connect("wss://x/", Connect::new(0)).is_err());
    assert!(client.connect("http://x/", Connect::new(0)).is_err());
}

#[test]
fn two_thousand_client_connections_on_two_pollers() {
    common::raise_nofile_limit(4_200);
    let (_server, addr, _srx) = start_ws(WsServer::builder(), Engine::builder().pollers(1));
    let (client, rx) = client_engine(Some("ping"));
    const N: u32 = 2000;
    for i in 0..N {
        let src = SocketAddr::from(([127, 0, 0, 1 + (i % 4) as u8], 0));
        client
            .connect(
                &format!("ws://{addr}/echo"),
                Connect::new(i).local_addr(src),
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
}

/// Server side of the reconnect test: closes the first `kick` connections as soon as they
/// open (1013 Try Again Later), keeps the rest.
struct Kicker {
    opened: std::sync::Arc<std::sync::atomic::AtomicU32>,
    kick: u32,
}

impl WsHandler for Kicker {
    type State = ();
    fn on_request(&mut self, _: &Request<'_>) -> Upgrade<()> {
        netpoll::ws::Accept::new(()).into()
    }
    fn on_open(&mut self, conn: &WsConn, _: &mut ()) {
        let n = self
            .opened
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        if n < self.kick {
            conn.close(CloseCode::Again, "come back later");
        }
    }
    fn on_message(&mut self, _: &WsConn, _: &mut (), _: Message<'_>) {}
}

/// A client that redials with a `Backoff` through the handle its factory got.
struct Redialer {
    engine: WsHandle<Redialer>,
    backoff: netpoll::Backoff,
    url: String,
    tx: Sender<(std::time::Instant, &'static str)>,
}

impl Redialer {
    fn redial(&mut self) {
        let engine = self.engine.clone();
        let url = self.url.clone();
        self.engine.after(self.backoff.next_delay(), move || {
            let _ = engine.connect(&url, Connect::new(()));
        });
    }
}

impl WsHandler for Redialer {
    type State = ();
    fn on_open(&mut self, _: &WsConn, _: &mut ()) {
        self.backoff.reset();
        let _ = self.tx.send((std::time::Instant::now(), "open"));
    }
    fn on_message(&mut self, _: &WsConn, _: &mut (), _: Message<'_>) {}
    fn on_close(&mut self, _: &WsConn, _: (), _: WsClose) {
        let _ = self.tx.send((std::time::Instant::now(), "close"));
        self.redial();
    }
}

#[test]
fn a_client_redials_with_backoff_through_its_handle_until_it_stays() {
    let opened = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let server = WsServer::builder()
        .start(Engine::builder().listen("127.0.0.1:0"), |_| Kicker {
            opened: opened.clone(),
            kick: 3,
        })
        .unwrap();
    let url = format!("ws://{}/feed", server.local_addrs()[0]);
    let (tx, rx) = mpsc::channel();
    let client = WsClient::builder()
        .start(Engine::builder().pollers(1), |engine| Redialer {
            engine: engine.clone(),
            // Each open resets it, so every redial waits 50..=100 ms.
            backoff: netpoll::Backoff::new(Duration::from_millis(100), Duration::from_secs(1)),
            url: url.clone(),
            tx: tx.clone(),
        })
        .unwrap();
    client.connect(&url, Connect::new(())).unwrap();
    let mut events = Vec::new();
    while events.len() < 7 {
        events.push(rx.recv_timeout(WAIT).expect("client event"));
    }
    let kinds: Vec<_> = events.iter().map(|e| e.1).collect();
    assert_eq!(
        kinds,
        ["open", "close", "open", "close", "open", "close", "open"]
    );
    // Each redial waited for the backoff.
    for pair in events.windows(2).filter(|w| w[0].1 == "close") {
        let gap = pair[1].0 - pair[0].0;
        assert!(gap >= Duration::from_millis(50), "redialed after {gap:?}");
    }
    // The fourth connection stays.
    assert!(rx.recv_timeout(Duration::from_millis(300)).is_err());
    assert_eq!(opened.load(std::sync::atomic::Ordering::SeqCst), 4);
}

#[test]
fn closing_a_client_before_its_101_gives_the_state_back_at_once() {
    let (client, rx) = client_engine(None);
    let addr = fake_server(|_| String::new()); // reads the request, never answers
    let t0 = std::time::Instant::now();
    let conn = client
        .connect(&format!("ws://{addr}/"), Connect::new(42))
        .unwrap();
    std::thread::sleep(Duration::from_millis(50)); // connected, request sent, no answer
    conn.close(CloseCode::Normal, "changed my mind");
    match next(&rx) {
        Ev::Failed(42, _) => {}
        other => panic!("expected the state back, got {other:?}"),
    }
    assert!(
        t0.elapsed() < Duration::from_millis(400),
        "not at the 500 ms handshake timeout: {:?}",
        t0.elapsed()
    );
}
