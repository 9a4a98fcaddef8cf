//! Helpers for the WebSocket tests: a recording server and clients (tungstenite's blocking
//! client, and a raw one for what a well-behaved client never sends).
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::mpsc::{self, Receiver, Sender};
use std::time::Duration;

use netpoll::ws::frame::{OpCode, encode_frame};
use netpoll::ws::{
    Accept, Group, HttpResponse, Message, Request, Upgrade, WsBuilder, WsClose, WsConn, WsEngine,
    WsHandler,
};
use netpoll::{ConnId, EngineBuilder};
use tungstenite::WebSocket;

pub const WAIT: Duration = Duration::from_secs(10);

#[derive(Debug)]
pub enum WsEvent {
    Open(WsConn),
    Message(ConnId, Vec<u8>, bool),
    Pong(ConnId),
    Close(ConnId, WsClose),
}

/// A server that accepts every upgrade and joins each connection to its group, telling
/// `opened` (if any) once it has.
pub struct Joiner {
    pub group: Group,
    pub opened: Option<Sender<WsConn>>,
}

impl WsHandler for Joiner {
    type State = ();
    fn on_request(&mut self, _: &Request<'_>) -> Upgrade<()> {
        Accept::new(()).into()
    }
    fn on_open(&mut self, conn: &WsConn, _: &mut ()) {
        self.group.join(conn);
        if let Some(tx) = &self.opened {
            let _ = tx.send(conn.clone());
        }
    }
    fn on_message(&mut self, _: &WsConn, _: &mut (), _: Message<'_>) {}
}

/// Paths: `/echo` echoes, `/record` reports messages, `/origin` accepts only
/// `https://good.example`, `/proto` selects the `chat` subprotocol; `/` serves a page.
pub struct Recorder {
    pub tx: Sender<WsEvent>,
}

pub fn page() -> HttpResponse {
    HttpResponse::new(200)
        .header("Content-Type", "text/html")
        .body("<h1>hello</h1>")
}

impl WsHandler for Recorder {
    type State = bool; // echo?

    fn on_request(&mut self, req: &Request<'_>) -> Upgrade<bool> {
        match req.path() {
            "/" if !req.is_upgrade() => Upgrade::Respond(page()),
            "/echo" => Accept::new(true).into(),
            "/record" => Accept::new(false).header("X-Test", "1").into(),
            "/origin" if req.origin_allowed(&["https://good.example"]) => Accept::new(false).into(),
            "/origin" => Upgrade::reject(403),
            "/proto" if req.protocols().any(|p| p == "chat") => {
                Accept::new(false).protocol("chat").into()
            }
            _ => Upgrade::not_found(),
        }
    }

    fn on_open(&mut self, conn: &WsConn, _: &mut bool) {
        let _ = self.tx.send(WsEvent::Open(conn.clone()));
    }

    fn on_message(&mut self, conn: &WsConn, echo: &mut bool, msg: Message<'_>) {
        if *echo {
            conn.send(msg).expect("echo");
        } else {
            let _ = self.tx.send(WsEvent::Message(
                conn.id(),
                msg.as_bytes().to_vec(),
                msg.is_text(),
            ));
        }
    }

    fn on_pong(&mut self, conn: &WsConn, _: &mut bool, _: &[u8]) {
        let _ = self.tx.send(WsEvent::Pong(conn.id()));
    }

    fn on_close(&mut self, conn: &WsConn, _: bool, close: WsClose) {
        let _ = self.tx.send(WsEvent::Close(conn.id(), close));
    }
}

pub fn start_ws(
    ws: WsBuilder,
    engine: EngineBuilder,
) -> (WsEngine<Recorder>, SocketAddr, Receiver<WsEvent>) {
    let (tx, rx) = mpsc::channel();
    let engine = ws
        .start(engine.listen("127.0.0.1:0"), |_| Recorder {
            tx: tx.clone(),
        })
        .expect("ws server starts");
    let addr = engine.local_addrs()[0];
    (engine, addr, rx)
}

pub fn next(rx: &Receiver<WsEvent>, what: &str) -> WsEvent {
    rx.recv_timeout(WAIT)
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

pub fn next_open(rx: &Receiver<WsEvent>) -> WsConn {
    loop {
        if let WsEvent::Open(c) = next(rx, "on_open") {
            return c;
        }
    }
}

pub fn next_message(rx: &Receiver<WsEvent>) -> (ConnId, Vec<u8>, bool) {
    loop {
        if let WsEvent::Message(id, m, t) = next(rx, "on_message") {
            return (id, m, t);
        }
    }
}

pub fn wait_close(rx: &Receiver<WsEvent>, id: ConnId) -> WsClose {
    loop {
        if let WsEvent::Close(c, close) = next(rx, "on_close") {
            if c == id {
                return close;
            }
        }
    }
}

pub type Client = WebSocket<TcpStream>;

/// tungstenite's blocking client on `path`.
pub fn connect(addr: SocketAddr, path: &str) -> Client {
    let stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    let (ws, _) =
        tungstenite::client::client(format!("ws://{addr}{path}"), stream).expect("handshake");
    ws
}

/// Reads until a close frame arrives and returns its code.
pub fn read_close_code(ws: &mut Client) -> Option<u16> {
    loop {
        match ws.read() {
            Ok(tungstenite::Message::Close(frame)) => return frame.map(|f| f.code.into()),
            Ok(_) => continue,
            Err(e) => panic!("expected a close frame, got error {e}"),
        }
    }
}

pub const MASK: [u8; 4] = [0xa1, 0x0b, 0x5c, 0x77];

/// A masked client frame, built by hand (for frames tungstenite would refuse to send).
pub fn raw_frame(kind: OpCode, fin: bool, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    encode_frame(&mut v, kind, fin, payload, Some(MASK));
    v
}

pub fn upgrade_request(path: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
}

/// A raw TCP client that has completed the upgrade on `path` (the 101 response consumed).
pub fn raw_upgraded(addr: SocketAddr, path: &str) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.write_all(upgrade_request(path).as_bytes()).unwrap();
    let head = read_http_head(&mut s);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    s
}

/// Reads an HTTP response head (through the blank line).
pub fn read_http_head(s: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match s.read(&mut b) {
            Ok(1) => head.push(b[0]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&head).into_owned()
}

/// Reads one unmasked server frame: (opcode, payload).
pub fn read_server_frame(s: &mut TcpStream) -> (u8, Vec<u8>) {
    let (b0, payload) = read_server_frame_raw(s);
    (b0 & 0x0f, payload)
}

/// Reads one unmasked server frame: (its first byte: FIN, RSV bits and opcode; payload).
pub fn read_server_frame_raw(s: &mut TcpStream) -> (u8, Vec<u8>) {
    let mut h = [0u8; 2];
    s.read_exact(&mut h).unwrap();
    let len = match h[1] & 0x7f {
        126 => {
            let mut e = [0u8; 2];
            s.read_exact(&mut e).unwrap();
            u16::from_be_bytes(e) as usize
        }
        127 => {
            let mut e = [0u8; 8];
            s.read_exact(&mut e).unwrap();
            u64::from_be_bytes(e) as usize
        }
        n => n as usize,
    };
    assert_eq!(h[1] & 0x80, 0, "server frames are not masked");
    let mut p = vec![0u8; len];
    s.read_exact(&mut p).unwrap();
    (h[0], p)
}

/// Reads the server's close frame and returns its code.
pub fn raw_close_code(s: &mut TcpStream) -> u16 {
    loop {
        let (op, p) = read_server_frame(s);
        if op == 8 {
            return u16::from_be_bytes([p[0], p[1]]);
        }
    }
}

/// A socket with a 4 KiB receive buffer and a read timeout, so that what its reader does not
/// take piles up in the server's queue instead of the kernel's.
pub fn small_socket(addr: SocketAddr) -> TcpStream {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    s.set_recv_buffer_size(4096).unwrap();
    s.connect(&addr.into()).unwrap();
    let s: TcpStream = s.into();
    s.set_read_timeout(Some(WAIT)).unwrap();
    s
}

/// tungstenite's blocking client on `path` over a [`small_socket`]: a slow reader.
pub fn connect_small(addr: SocketAddr, path: &str) -> Client {
    let (ws, _) = tungstenite::client::client(format!("ws://{addr}{path}"), small_socket(addr))
        .expect("handshake");
    ws
}

/// A member that upgrades on `path` and never reads (not even the 101), with a small receive
/// buffer, so that what is sent to it piles up in the server's queue.
pub fn stuck_member(addr: SocketAddr, path: &str) -> TcpStream {
    let mut s = small_socket(addr);
    s.write_all(upgrade_request(path).as_bytes()).unwrap();
    s
}
