//! permessage-deflate over real sockets: netpoll's client and server agreeing on it, each with
//! a peer that does not offer or accept it, raw frames (RSV1, the RFC's example), and a bomb.

mod common;
mod ws_common;

use std::io::Write;
use std::net::TcpStream;
use std::sync::mpsc::{self, Receiver, Sender};

use netpoll::Engine;
use netpoll::ws::deflate::{DeflateConfig, Deflater, Inflater};
use netpoll::ws::frame::{Data, OpCode};
use netpoll::ws::{Connect, Message, WsClient, WsConn, WsEngine, WsHandler, WsServer};
use ws_common::{WAIT, raw_frame, read_http_head, read_server_frame_raw, start_ws};

#[derive(Debug)]
enum Ev {
    Open,
    Msg(Vec<u8>, bool),
}

struct ClientSide(Sender<Ev>);

impl WsHandler for ClientSide {
    type State = ();
    fn on_open(&mut self, _: &WsConn, _: &mut ()) {
        let _ = self.0.send(Ev::Open);
    }
    fn on_message(&mut self, _: &WsConn, _: &mut (), msg: Message<'_>) {
        let _ = self.0.send(Ev::Msg(msg.as_bytes().to_vec(), msg.is_text()));
    }
}

fn client(deflate: bool) -> (WsEngine<ClientSide>, Receiver<Ev>) {
    let (tx, rx) = mpsc::channel();
    let mut b = WsClient::builder();
    if deflate {
        b = b.deflate(DeflateConfig::default());
    }
    let ws = b
        .start(Engine::builder().pollers(1), |_| ClientSide(tx.clone()))
        .unwrap();
    (ws, rx)
}

fn json_like(n: usize) -> String {
    let mut s = String::new();
    let mut i = 0u64;
    while s.len() < n {
        s.push_str(&format!(
            r#"{{"sym":"S{:02}","bid":{}.{:02},"qty":{}}},"#,
            i % 40,
            100 + i % 7,
            i % 100,
            i % 1000
        ));
        i += 1;
    }
    s.truncate(n);
    s
}

fn echo_through(server_deflate: bool, client_deflate: bool) -> u64 {
    let mut ws = WsServer::builder();
    if server_deflate {
        ws = ws.deflate(DeflateConfig::default());
    }
    let (server, addr, _srx) = start_ws(ws, Engine::builder().pollers(1));
    let (client, rx) = client(client_deflate);
    let conn = client
        .connect(&format!("ws://{addr}/echo"), Connect::new(()))
        .unwrap();
    assert!(matches!(rx.recv_timeout(WAIT).unwrap(), Ev::Open));
    let big = json_like(200_000);
    let binary: Vec<u8> = (0..50_000u32).map(|i| (i % 13) as u8).collect();
    conn.send_text(&big).unwrap();
    conn.send_text("tiny").unwrap();
    conn.send_binary(&binary).unwrap();
    let got: Vec<_> = (0..3).map(|_| rx.recv_timeout(WAIT).unwrap()).collect();
    assert!(
        matches!(&got[0], Ev::Msg(m, true) if m == big.as_bytes()),
        "big text"
    );
    assert!(
        matches!(&got[1], Ev::Msg(m, true) if m == b"tiny"),
        "tiny text"
    );
    assert!(
        matches!(&got[2], Ev::Msg(m, false) if *m == binary),
        "binary"
    );
    server.stats().bytes_in
}

#[test]
fn netpoll_client_and_server_compress_both_ways_when_both_enable_it() {
    let compressed = echo_through(true, true);
    let plain = echo_through(false, false);
    // 250 KB of compressible messages: on the wire with deflate, a fraction.
    assert!(plain > 250_000, "{plain}");
    assert!(
        compressed * 4 < plain,
        "{compressed} with deflate vs {plain} without"
    );
}

#[test]
fn either_side_alone_falls_back_to_plain_messages() {
    let plain = echo_through(false, false);
    for (server, client) in [(true, false), (false, true)] {
        let bytes = echo_through(server, client);
        assert!(
            bytes + 1000 > plain,
            "server {server}, client {client}: {bytes} vs {plain}"
        );
    }
}

/// A raw client on `path` that offers `offer` (a `Sec-WebSocket-Extensions` value) and has
/// read the response's head (returned).
fn raw_client_offering(addr: std::net::SocketAddr, path: &str, offer: &str) -> (TcpStream, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    let req = ws_common::upgrade_request(path).replace(
        "\r\n\r\n",
        &format!("\r\nSec-WebSocket-Extensions: {offer}\r\n\r\n"),
    );
    s.write_all(req.as_bytes()).unwrap();
    let head = read_http_head(&mut s);
    (s, head)
}

/// A raw client that offers permessage-deflate (the default way) and has read the 101.
fn raw_deflate_client(addr: std::net::SocketAddr) -> (TcpStream, String) {
    raw_client_offering(addr, "/echo", "permessage-deflate; client_max_window_bits")
}

#[test]
fn raw_frames_the_rfc_example_and_a_compressed_answer() {
    let (_server, addr, _rx) = start_ws(
        WsServer::builder().deflate(DeflateConfig::default()),
        Engine::builder().pollers(1),
    );
    let (mut s, head) = raw_deflate_client(addr);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(
        head.contains("Sec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover; client_no_context_takeover\r\n"),
        "{head}"
    );
    // RFC 7692 §7.2.3.1: "Hello" compressed is f2 48 cd c9 c9 07 00.
    let mut hello = raw_frame(
        OpCode::Data(Data::Text),
        true,
        &[0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00],
    );
    hello[0] |= 0x40;
    s.write_all(&hello).unwrap();
    // Under the 64-byte threshold: echoed uncompressed.
    assert_eq!(read_server_frame_raw(&mut s), (0x81, b"Hello".to_vec()));
    // A long one comes back compressed (RSV1), and inflates to what was sent.
    let long = "compress me please ".repeat(20);
    s.write_all(&raw_frame(OpCode::Data(Data::Text), true, long.as_bytes()))
        .unwrap();
    let (b0, payload) = read_server_frame_raw(&mut s);
    assert_eq!(b0, 0xc1, "FIN + RSV1 + text");
    assert!(payload.len() < long.len() / 4);
    let mut out = Vec::new();
    Inflater::new()
        .inflate(&payload, true, &mut out, 1 << 20)
        .unwrap();
    assert_eq!(out, long.as_bytes());
}

#[test]
fn a_compression_bomb_is_closed_with_1009_without_inflating_it() {
    let (server, addr, _rx) = start_ws(
        WsServer::builder()
            .max_message_size(1 << 20)
            .deflate(DeflateConfig::default()),
        Engine::builder().pollers(1),
    );
    let (mut s, head) = raw_deflate_client(addr);
    assert!(head.contains("permessage-deflate"), "{head}");
    let mut bomb = Vec::new();
    Deflater::with_level(15, 9).compress(&vec![0u8; 64 << 20], &mut bomb);
    assert!(bomb.len() < 128 * 1024, "{}", bomb.len());
    let mut frame = raw_frame(OpCode::Data(Data::Binary), true, &bomb);
    frame[0] |= 0x40;
    s.write_all(&frame).unwrap();
    assert_eq!(ws_common::raw_close_code(&mut s), 1009);
    assert!(common::eventually(WAIT, || server.stats().open() == 0));
}

/// A server with `deflate` whose connections all join one group; the group, the server, its
/// address and who joined.
fn group_server(
    deflate: DeflateConfig,
    pollers: usize,
) -> (
    netpoll::ws::Group,
    WsEngine<ws_common::Joiner>,
    std::net::SocketAddr,
    Receiver<WsConn>,
) {
    let group = netpoll::ws::Group::new(netpoll::ws::SlowPolicy::Drop);
    let (tx, joined) = mpsc::channel();
    let server = WsServer::builder()
        .deflate(deflate)
        .start(
            Engine::builder().pollers(pollers).listen("127.0.0.1:0"),
            |_| ws_common::Joiner {
                group: group.clone(),
                opened: Some(tx.clone()),
            },
        )
        .unwrap();
    let addr = server.local_addrs()[0];
    (group, server, addr, joined)
}

#[test]
fn a_broadcast_goes_compressed_to_members_that_agreed_and_plain_to_the_others() {
    let (group, _server, addr, joined) = group_server(DeflateConfig::default(), 2);
    let (mut a, head) = raw_deflate_client(addr);
    assert!(head.contains("permessage-deflate"), "{head}");
    let mut b = ws_common::raw_upgraded(addr, "/");
    for _ in 0..2 {
        joined.recv_timeout(WAIT).unwrap();
    }
    let news = json_like(5_000);
    group.broadcast(Message::Text(&news));
    group.broadcast(Message::Text("short"));
    let (b0, payload) = read_server_frame_raw(&mut a);
    assert_eq!(b0, 0xc1, "compressed for the member that agreed");
    let mut out = Vec::new();
    Inflater::new()
        .inflate(&payload, true, &mut out, 1 << 20)
        .unwrap();
    assert_eq!(out, news.as_bytes());
    assert_eq!(
        read_server_frame_raw(&mut a),
        (0x81, b"short".to_vec()),
        "under the threshold"
    );
    assert_eq!(
        read_server_frame_raw(&mut b),
        (0x81, news.as_bytes().to_vec()),
        "plain for the other"
    );
    assert_eq!(read_server_frame_raw(&mut b), (0x81, b"short".to_vec()));
}

/// Echoes, and hands each connection to the test.
struct Echo(Sender<WsConn>);

impl WsHandler for Echo {
    type State = ();
    fn on_request(&mut self, _: &netpoll::ws::Request<'_>) -> netpoll::ws::Upgrade<()> {
        netpoll::ws::Accept::new(()).into()
    }
    fn on_open(&mut self, conn: &WsConn, _: &mut ()) {
        let _ = self.0.send(conn.clone());
    }
    fn on_message(&mut self, conn: &WsConn, _: &mut (), msg: Message<'_>) {
        let _ = conn.send(msg);
    }
}

fn takeover_server(
    bits: u8,
    max_outbound: usize,
) -> (WsEngine<Echo>, std::net::SocketAddr, Receiver<WsConn>) {
    let (tx, rx) = mpsc::channel();
    let server = WsServer::builder()
        .deflate(DeflateConfig::default().context_takeover(bits))
        .start(
            Engine::builder()
                .pollers(2)
                .max_outbound_bytes(max_outbound)
                .listen("127.0.0.1:0"),
            |_| Echo(tx.clone()),
        )
        .unwrap();
    let addr = server.local_addrs()[0];
    (server, addr, rx)
}

/// A raw client that offers permessage-deflate with context takeover and a 15-bit window.
fn raw_takeover_client(addr: std::net::SocketAddr) -> (TcpStream, String) {
    raw_client_offering(addr, "/echo", "permessage-deflate")
}

#[test]
fn context_takeover_the_rfc_example_and_a_peer_that_keeps_one_stream() {
    let (_server, addr, _conns) = takeover_server(15, 1 << 20);
    let (mut s, head) = raw_takeover_client(addr);
    assert!(
        head.contains("Sec-WebSocket-Extensions: permessage-deflate\r\n"),
        "context kept both ways, full windows: {head}"
    );
    // RFC 7692 §7.2.3.2: "Hello" twice with context takeover; the second refers back to the
    // first: f2 00 11 00 00.
    for compressed in [
        &[0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00][..],
        &[0xf2, 0x00, 0x11, 0x00, 0x00][..],
    ] {
        let mut frame = raw_frame(OpCode::Data(Data::Text), true, compressed);
        frame[0] |= 0x40;
        s.write_all(&frame).unwrap();
        assert_eq!(read_server_frame_raw(&mut s), (0x81, b"Hello".to_vec()));
    }
    // A peer that keeps one stream each way for the connection's life, as browsers do:
    // 2,000 messages, some past the window, some under the threshold.
    let (mut deflater, mut inflater) = (Deflater::new(15), Inflater::new());
    for n in 0..2_000usize {
        let len = match n % 100 {
            0 => 40_000,
            k => 30 + (k * 53) % 2_500,
        };
        let msg = json_like(len + n % 7);
        let mut wire = Vec::new();
        deflater.compress(msg.as_bytes(), &mut wire);
        let mut frame = raw_frame(OpCode::Data(Data::Text), true, &wire);
        frame[0] |= 0x40;
        s.write_all(&frame).unwrap();
        let (b0, payload) = read_server_frame_raw(&mut s);
        let mut out = Vec::new();
        if b0 == 0xc1 {
            inflater.inflate(&payload, true, &mut out, 1 << 20).unwrap();
        } else {
            assert_eq!(b0, 0x81);
            assert!(msg.len() < 64, "only short messages go plain");
            out = payload.clone();
        }
        assert!(out == msg.as_bytes(), "message {n}");
    }
    // The server's answers refer back into what it sent before: a message that does not
    // compress on its own costs a few bytes the second time.
    let mut x = 1u64;
    let noise: String = (0..3_000)
        .map(|_| {
            x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            char::from(b'a' + ((x >> 33) % 26) as u8)
        })
        .collect();
    let mut sizes = Vec::new();
    for _ in 0..2 {
        s.write_all(&raw_frame(OpCode::Data(Data::Text), true, noise.as_bytes()))
            .unwrap();
        let (b0, payload) = read_server_frame_raw(&mut s);
        assert_eq!(b0, 0xc1);
        let mut out = Vec::new();
        inflater.inflate(&payload, true, &mut out, 1 << 20).unwrap();
        assert!(out == noise.as_bytes());
        sizes.push(payload.len());
    }
    assert!(sizes[1] * 20 < sizes[0], "{sizes:?}");
}

#[test]
fn context_takeover_keeps_every_threads_messages_whole_and_in_order() {
    // One netpoll client and server, both keeping context with a 12-bit window; 8 threads
    // send on one connection at once (compression runs under the connection's lock, so the
    // context follows the wire order); the server echoes each, compressing on top of its own.
    let (server, addr, _conns) = takeover_server(12, 64 << 20);
    let (tx, rx) = mpsc::channel();
    let client = WsClient::builder()
        .deflate(DeflateConfig::default().context_takeover(12))
        .start(Engine::builder().pollers(1), |_| ClientSide(tx.clone()))
        .unwrap();
    let conn = client
        .connect(&format!("ws://{addr}/echo"), Connect::new(()))
        .unwrap();
    assert!(matches!(rx.recv_timeout(WAIT).unwrap(), Ev::Open));
    const THREADS: usize = 8;
    const EACH: usize = 1_250;
    let plain_bytes: usize = std::thread::scope(|scope| {
        let senders: Vec<_> = (0..THREADS)
            .map(|t| {
                let conn = conn.clone();
                scope.spawn(move || {
                    let mut bytes = 0;
                    for i in 0..EACH {
                        let body = json_like(60 + (i * 31 + t * 7) % 6_000);
                        let msg = format!("{t} {i} {body}");
                        bytes += msg.len();
                        conn.send_text(&msg).unwrap();
                    }
                    bytes
                })
            })
            .collect();
        senders.into_iter().map(|h| h.join().unwrap()).sum()
    });
    let mut next = [0usize; THREADS];
    for _ in 0..THREADS * EACH {
        let Ev::Msg(m, true) = rx.recv_timeout(WAIT).unwrap() else {
            panic!("not a text message")
        };
        let text = String::from_utf8(m).unwrap();
        let mut parts = text.splitn(3, ' ');
        let t: usize = parts.next().unwrap().parse().unwrap();
        let i: usize = parts.next().unwrap().parse().unwrap();
        assert_eq!(i, next[t], "thread {t}'s order");
        let body = json_like(60 + (i * 31 + t * 7) % 6_000);
        assert_eq!(parts.next().unwrap(), body, "thread {t} message {i} whole");
        next[t] += 1;
    }
    let wire = server.stats().bytes_in as usize;
    assert!(
        wire * 5 < plain_bytes,
        "{wire} bytes on the wire for {plain_bytes} of messages"
    );
}

#[test]
fn a_refused_send_leaves_the_context_intact() {
    // A message refused for the outbound limit must not have been compressed: the peer would
    // never see it, and every later message would refer to bytes it does not have.
    let (_server, addr, conns) = takeover_server(15, 256 * 1024);
    let (mut s, head) = raw_takeover_client(addr);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let conn = conns.recv_timeout(WAIT).unwrap();
    // Hard to compress (varied digits), so the queue fills while the peer does not read.
    let msg = |n: usize| -> String {
        let mut x = (n as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        (0..20_000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                char::from(b'a' + (x % 26) as u8)
            })
            .collect()
    };
    let mut sent = Vec::new();
    let mut refused = 0;
    for n in 0..400 {
        match conn.send_text(&msg(n)) {
            Ok(()) => sent.push(n),
            Err(netpoll::WriteError::Overflow { .. }) => refused += 1,
            Err(e) => panic!("{e}"),
        }
    }
    assert!(refused > 0, "the limit was reached");
    // Now the peer reads: every admitted message inflates, in order, on one stream.
    let mut inflater = Inflater::new();
    for &n in &sent {
        let (b0, payload) = read_server_frame_raw(&mut s);
        assert_eq!(b0, 0xc1);
        let mut out = Vec::new();
        inflater.inflate(&payload, true, &mut out, 1 << 20).unwrap();
        assert!(out == msg(n).as_bytes(), "message {n}");
    }
    // And the context still agrees afterwards.
    let again = msg(*sent.last().unwrap()); // still in the window
    conn.send_text(&again).unwrap();
    let (_, payload) = read_server_frame_raw(&mut s);
    assert!(payload.len() < 1_000, "refers back: {}", payload.len());
    let mut out = Vec::new();
    inflater.inflate(&payload, true, &mut out, 1 << 20).unwrap();
    assert!(out == again.as_bytes());
}

#[test]
fn a_broadcast_goes_plain_to_members_that_keep_context() {
    let (group, _server, addr, joined) =
        group_server(DeflateConfig::default().context_takeover(15), 1);
    let (mut keeps, head) = raw_takeover_client(addr);
    assert!(head.contains("permessage-deflate\r\n"), "{head}");
    // This one asks the server not to keep context: it shares the compressed frame.
    let (mut resets, head) =
        raw_client_offering(addr, "/", "permessage-deflate; server_no_context_takeover");
    assert!(head.contains("server_no_context_takeover"));
    for _ in 0..2 {
        joined.recv_timeout(WAIT).unwrap();
    }
    let news = json_like(5_000);
    group.broadcast(Message::Text(&news));
    assert_eq!(
        read_server_frame_raw(&mut keeps),
        (0x81, news.as_bytes().to_vec()),
        "plain: a shared compressed frame is not in this member's context"
    );
    let (b0, payload) = read_server_frame_raw(&mut resets);
    assert_eq!(b0, 0xc1);
    let mut out = Vec::new();
    Inflater::new()
        .inflate(&payload, true, &mut out, 1 << 20)
        .unwrap();
    assert_eq!(out, news.as_bytes());
}

/// `n` bytes that deflate cannot shrink (at level 1 zlib-rs makes them about 5% larger).
fn noise(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

#[test]
fn a_message_refused_after_compressing_is_not_in_the_context() {
    // Whether a message fits under the limit is known only once it is compressed, and random
    // bytes come out larger than they went in: such a message is refused after compressing,
    // and must not be in the context the next message refers to.
    for bits in [9u8, 15] {
        let len = 70_000;
        // Room for the plain bytes and the frame's header, not for deflate's expansion.
        let limit = 64 + 14 + len + 500;
        let (_server, addr, conns) = takeover_server(bits, limit);
        let offer = format!("permessage-deflate; server_max_window_bits={bits}");
        let (mut s, head) = raw_client_offering(addr, "/echo", &offer);
        assert!(head.starts_with("HTTP/1.1 101"));
        let conn = conns.recv_timeout(WAIT).unwrap();
        let refused = noise(len, u64::from(bits));
        assert!(
            matches!(
                conn.send_binary(&refused),
                Err(netpoll::WriteError::Overflow { len, .. }) if len > 70_000 + 14
            ),
            "bits {bits}: refused once compressed"
        );
        // The next message repeats part of the refused one: had the refused one entered the
        // context, this would refer back to bytes the peer never got.
        let mut inflater = Inflater::new();
        for part in [&refused[len - 300..], &refused[len - 300..]] {
            conn.send_binary(part).unwrap();
            let (b0, payload) = read_server_frame_raw(&mut s);
            assert_eq!(b0, 0xc2, "bits {bits}: compressed binary");
            let mut out = Vec::new();
            inflater.inflate(&payload, true, &mut out, 1 << 20).unwrap();
            assert!(out == part, "bits {bits}: the peer reads what was sent");
        }
    }
}

#[test]
fn takeover_on_one_side_only_falls_back_to_what_the_other_allows() {
    // A netpoll client that keeps context, against a server that does not (it answers
    // no_context_takeover both ways), and the other way round: both ends follow the answer.
    for (server_takeover, client_takeover) in [(false, true), (true, false)] {
        let config = |takeover: bool| {
            if takeover {
                DeflateConfig::default().context_takeover(11)
            } else {
                DeflateConfig::default()
            }
        };
        let ws = WsServer::builder().deflate(config(server_takeover));
        let (_server, addr, _srx) = start_ws(ws, Engine::builder().pollers(1));
        let (tx, rx) = mpsc::channel();
        let client = WsClient::builder()
            .deflate(config(client_takeover))
            .start(Engine::builder().pollers(1), |_| ClientSide(tx.clone()))
            .unwrap();
        let conn = client
            .connect(&format!("ws://{addr}/echo"), Connect::new(()))
            .unwrap();
        assert!(matches!(rx.recv_timeout(WAIT).unwrap(), Ev::Open));
        for n in 0..300usize {
            let msg = if n % 5 == 0 {
                noise(100 + n * 7, n as u64)
            } else {
                json_like(64 + n * 13 % 3_000).into_bytes()
            };
            conn.send_binary(&msg).unwrap();
            match rx.recv_timeout(WAIT).unwrap() {
                Ev::Msg(got, false) => assert!(
                    got == msg,
                    "server takeover {server_takeover}, client {client_takeover}, message {n}"
                ),
                e => panic!("{e:?}"),
            }
        }
    }
}
