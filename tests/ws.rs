//! WebSocket server against a real third-party client (tungstenite's blocking client) and raw
//! sockets: echo, fragmentation, limits, handshakes, close codes, heartbeat, shutdown.

mod ws_common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use netpoll::ws::frame::{Control, Data, OpCode};
use netpoll::ws::{CloseCode, WsServer};
use netpoll::{CloseReason, Engine};
use tungstenite::Message as TMessage;
use tungstenite::protocol::frame::Frame;
use ws_common::*;

fn engine() -> netpoll::EngineBuilder {
    Engine::builder()
        .pollers(2)
        .timer_tick(Duration::from_millis(10))
}

#[test]
fn echo_text_and_binary_of_every_length_form() {
    let (_e, addr, _rx) = start_ws(WsServer::builder(), engine());
    let mut ws = connect(addr, "/echo");
    for len in [0usize, 1, 125, 126, 127, 65_535, 65_536, 1 << 20] {
        let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        ws.send(TMessage::Binary(data.clone().into())).unwrap();
        assert_eq!(
            ws.read().unwrap(),
            TMessage::Binary(data.into()),
            "binary {len}"
        );
        let text = "é".repeat(len / 2);
        ws.send(TMessage::Text(text.clone().into())).unwrap();
        assert_eq!(
            ws.read().unwrap(),
            TMessage::Text(text.into()),
            "text {len}"
        );
    }
    // Many small messages in flight at once come back in order.
    for i in 0..1000 {
        ws.send(TMessage::Text(format!("m{i}").into())).unwrap();
    }
    for i in 0..1000 {
        assert_eq!(ws.read().unwrap(), TMessage::Text(format!("m{i}").into()));
    }
    ws.close(None).unwrap();
}

#[test]
fn fragmented_messages_are_reassembled_with_control_frames_between() {
    let (_e, addr, rx) = start_ws(WsServer::builder(), engine());
    let mut ws = connect(addr, "/record");
    let conn = next_open(&rx);
    let parts: [&[u8]; 3] = [b"frag", "mé".as_bytes(), b"nted"];
    for (i, p) in parts.iter().enumerate() {
        let op = if i == 0 {
            OpCode::Data(Data::Text)
        } else {
            OpCode::Data(Data::Continue)
        };
        ws.send(TMessage::Frame(Frame::message(p.to_vec(), op, i == 2)))
            .unwrap();
        if i == 1 {
            ws.send(TMessage::Ping(b"in between".to_vec().into()))
                .unwrap();
        }
    }
    let (id, msg, text) = next_message(&rx);
    assert_eq!((id, text), (conn.id(), true));
    assert_eq!(msg, "fragménted".as_bytes());
    // The ping in the middle was answered.
    loop {
        if let TMessage::Pong(p) = ws.read().unwrap() {
            assert_eq!(&p[..], b"in between");
            break;
        }
    }
}

#[test]
fn pipelined_frames_right_after_the_handshake_are_not_lost() {
    let (_e, addr, rx) = start_ws(WsServer::builder(), engine());
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    let mut bytes = upgrade_request("/record").into_bytes();
    bytes.extend(raw_frame(OpCode::Data(Data::Text), true, b"first"));
    bytes.extend(raw_frame(OpCode::Data(Data::Binary), true, b"second"));
    s.write_all(&bytes).unwrap();
    assert!(read_http_head(&mut s).starts_with("HTTP/1.1 101"));
    assert_eq!(next_message(&rx).1, b"first");
    assert_eq!(next_message(&rx).1, b"second");
}

#[test]
fn limits_close_with_1009_and_1008() {
    let ws = WsServer::builder()
        .max_message_size(1000)
        .max_frame_size(600)
        .max_fragments(3);
    let (_e, addr, rx) = start_ws(ws, engine());

    let mut c = connect(addr, "/echo");
    c.send(TMessage::Binary(vec![1; 600].into())).unwrap();
    assert_eq!(c.read().unwrap().len(), 600, "at the frame limit: fine");
    c.send(TMessage::Binary(vec![1; 601].into())).unwrap();
    assert_eq!(read_close_code(&mut c), Some(1009), "frame over the limit");

    let mut c = connect(addr, "/record");
    let conn = next_open(&rx);
    for i in 0..2 {
        let op = if i == 0 {
            OpCode::Data(Data::Binary)
        } else {
            OpCode::Data(Data::Continue)
        };
        c.send(TMessage::Frame(Frame::message(vec![0; 501], op, i == 1)))
            .unwrap();
    }
    assert_eq!(
        read_close_code(&mut c),
        Some(1009),
        "message over the limit"
    );
    assert_eq!(u16::from(wait_close(&rx, conn.id()).code), 1009);

    let mut c = connect(addr, "/echo");
    for i in 0..4 {
        let op = if i == 0 {
            OpCode::Data(Data::Binary)
        } else {
            OpCode::Data(Data::Continue)
        };
        c.send(TMessage::Frame(Frame::message(vec![0; 1], op, false)))
            .unwrap();
    }
    assert_eq!(read_close_code(&mut c), Some(1008), "too many fragments");
}

#[test]
fn protocol_errors_close_with_the_right_code() {
    let (_e, addr, rx) = start_ws(WsServer::builder(), engine());
    let cases: Vec<(Vec<u8>, u16)> = vec![
        (
            raw_frame(OpCode::Data(Data::Text), true, &[0xc3, 0x28]),
            1007,
        ),
        (
            {
                let mut f = raw_frame(OpCode::Data(Data::Text), true, b"x");
                f[0] |= 0x20; // RSV2
                f
            },
            1002,
        ),
        (raw_frame(OpCode::Data(Data::Continue), true, b"x"), 1002),
        (
            raw_frame(OpCode::Control(Control::Ping), true, &[0; 126]),
            1002,
        ),
        (
            raw_frame(
                OpCode::Control(Control::Close),
                true,
                &1005u16.to_be_bytes(),
            ),
            1002,
        ),
        (
            {
                // An unmasked client frame.
                vec![0x81, 0x01, b'x']
            },
            1002,
        ),
    ];
    for (frame, code) in cases {
        let mut s = raw_upgraded(addr, "/record");
        let conn = next_open(&rx);
        s.write_all(&frame).unwrap();
        assert_eq!(raw_close_code(&mut s), code, "{frame:?}");
        let close = wait_close(&rx, conn.id());
        assert_eq!(u16::from(close.code), code);
        // The server closes the TCP connection after its close frame.
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest);
    }
}

#[test]
fn close_handshakes_from_either_side() {
    let (_e, addr, rx) = start_ws(WsServer::builder(), engine());
    // Client-initiated: the server echoes the code and reports it.
    let mut c = connect(addr, "/record");
    let conn = next_open(&rx);
    c.close(Some(tungstenite::protocol::CloseFrame {
        code: 4001.into(),
        reason: "bye".into(),
    }))
    .unwrap();
    assert_eq!(read_close_code(&mut c), Some(4001));
    let close = wait_close(&rx, conn.id());
    assert_eq!(u16::from(close.code), 4001);

    // Server-initiated: queued after pending data; sends fail afterwards.
    let mut c = connect(addr, "/record");
    let conn = next_open(&rx);
    conn.send_text("last words").unwrap();
    conn.close(4000.into(), "server says bye");
    assert!(!conn.is_open());
    assert_eq!(conn.send_text("too late"), Err(netpoll::WriteError::Closed));
    assert_eq!(c.read().unwrap(), TMessage::Text("last words".into()));
    match c.read().unwrap() {
        TMessage::Close(Some(f)) => {
            assert_eq!(u16::from(f.code), 4000);
            assert_eq!(f.reason.as_str(), "server says bye");
        }
        other => panic!("expected close, got {other:?}"),
    }
    // tungstenite answers the close; the server then closes TCP and reports the echo.
    let _ = c.read();
    assert_eq!(u16::from(wait_close(&rx, conn.id()).code), 4000);

    // A peer that never answers our close is cut off after close_timeout.
    let s = raw_upgraded(addr, "/record");
    let conn = next_open(&rx);
    let t0 = Instant::now();
    conn.close(CloseCode::Normal, "");
    let close = wait_close(&rx, conn.id());
    assert_eq!(u16::from(close.code), 1006, "no close frame came back");
    assert!(t0.elapsed() < Duration::from_secs(8), "{:?}", t0.elapsed());
    drop(s);
}

#[test]
fn bad_handshakes_get_http_errors_and_plain_requests_get_the_hook_response() {
    let (e, addr, _rx) = start_ws(WsServer::builder().max_handshake_size(1024), engine());
    let ask = |raw: &[u8]| -> String {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(WAIT)).unwrap();
        let _ = s.write_all(raw);
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        String::from_utf8_lossy(&out).into_owned()
    };
    let good = upgrade_request("/echo");
    assert!(ask(good.replace("Version: 13", "Version: 7").as_bytes()).starts_with("HTTP/1.1 426"));
    assert!(
        ask(good.replace("Sec-WebSocket-Key: ", "X-Key: ").as_bytes()).starts_with("HTTP/1.1 400")
    );
    assert!(ask(good.replace("GET", "PUT").as_bytes()).starts_with("HTTP/1.1 405"));
    assert!(ask(b"\x16\x03\x01 not http at all\r\n\r\n").starts_with("HTTP/1.1 400"));
    assert!(ask(upgrade_request("/nope").as_bytes()).starts_with("HTTP/1.1 404"));
    let big = format!("GET /echo HTTP/1.1\r\nX-Pad: {}\r\n\r\n", "a".repeat(2000));
    assert!(ask(big.as_bytes()).starts_with("HTTP/1.1 431"));
    let page = ask(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(
        page.starts_with("HTTP/1.1 200") && page.ends_with("<h1>hello</h1>"),
        "{page}"
    );
    assert!(ask(b"GET /echo HTTP/1.1\r\nHost: x\r\n\r\n").starts_with("HTTP/1.1 426"));
    // Origin check and subprotocol selection through the hook.
    let evil = good
        .replace("/echo", "/origin")
        .replace("\r\n\r\n", "\r\nOrigin: https://evil.example\r\n\r\n");
    assert!(ask(evil.as_bytes()).starts_with("HTTP/1.1 403"));
    let proto = good
        .replace("/echo", "/proto")
        .replace("\r\n\r\n", "\r\nSec-WebSocket-Protocol: x, chat\r\n\r\n");
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.write_all(proto.as_bytes()).unwrap();
    let head = read_http_head(&mut s);
    assert!(head.contains("Sec-WebSocket-Protocol: chat\r\n"), "{head}");
    // Plain HTTP answers are counted apart from WebSocket upgrades: nine answers (one 200,
    // eight errors), one upgrade.
    let ws = e.ws_stats();
    assert_eq!(
        (ws.upgrades, ws.http_responses, ws.http_errors),
        (1, 9, 8),
        "{ws}"
    );
    assert_eq!(e.stats().opened, 10);
}

#[test]
fn a_slow_loris_handshake_is_closed_at_the_handshake_timeout() {
    let ws = WsServer::builder().handshake_timeout(Duration::from_millis(400));
    let (_e, addr, _rx) = start_ws(ws, engine());
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    let mut w = s.try_clone().unwrap();
    let t0 = Instant::now();
    // One byte every 50 ms: the request would take ~7 s; bytes do not extend the deadline.
    std::thread::spawn(move || {
        for b in upgrade_request("/echo").as_bytes() {
            if w.write_all(&[*b]).is_err() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    });
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_millis(400) && took < Duration::from_millis(1500),
        "{took:?}"
    );
    // No 101 for an unfinished request: 408 Request Timeout, then the close.
    let rest = String::from_utf8_lossy(&rest);
    assert!(rest.starts_with("HTTP/1.1 408 "), "{rest}");
}

#[test]
fn heartbeat_pings_idle_peers_and_closes_silent_ones() {
    let ws = WsServer::builder()
        .idle_timeout(Some(Duration::from_millis(300)))
        .pong_timeout(Duration::from_millis(300));
    let (_e, addr, rx) = start_ws(ws, engine());

    // A live client (tungstenite answers pings while reading) stays open and pongs.
    let mut live = connect(addr, "/record");
    let live_conn = next_open(&rx);
    live.get_ref()
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    // A silent raw client never answers.
    let mut silent = raw_upgraded(addr, "/record");
    let silent_conn = next_open(&rx);
    let t0 = Instant::now();
    let mut pongs = 0;
    let mut silent_closed_at = None;
    while t0.elapsed() < Duration::from_millis(1800) {
        let _ = live.read(); // answers pings (times out quietly otherwise)
        let _ = live.flush();
        while let Ok(ev) = rx.try_recv() {
            match ev {
                WsEvent::Pong(id) if id == live_conn.id() => pongs += 1,
                WsEvent::Close(id, close) if id == silent_conn.id() => {
                    assert_eq!(close.cause, CloseReason::ReadTimeout);
                    silent_closed_at = Some(t0.elapsed());
                }
                WsEvent::Close(id, _) if id == live_conn.id() => panic!("live peer closed"),
                _ => {}
            }
        }
    }
    let at = silent_closed_at.expect("silent peer closed");
    // Ping after 300 ms idle, close 300 ms later (plus ticks and scheduling; the ping's own
    // flush must not count as the peer's progress, which made it ~930 ms once).
    assert!(
        at >= Duration::from_millis(600) && at < Duration::from_millis(850),
        "{at:?}"
    );
    assert!(pongs >= 2, "live peer answered {pongs} pings");
    // The silent one did get a ping first.
    let (op, _) = read_server_frame(&mut silent);
    assert_eq!(op, 9, "a ping");
}

#[test]
fn heartbeat_keeps_a_slow_reader_whose_pong_waits_behind_our_data() {
    // 48 x 8 KiB pushed at once to a client that reads one message every 40 ms (about
    // 200 KB/s) through small socket buffers: each ping queues behind hundreds of KiB and is
    // answered long after pong_timeout. The peer keeps taking our bytes, so it is alive.
    const MESSAGES: usize = 48;
    let ws = WsServer::builder()
        .idle_timeout(Some(Duration::from_millis(300)))
        .pong_timeout(Duration::from_millis(300));
    let (_e, addr, rx) = start_ws(ws, engine().send_buffer_size(4096));
    let mut client = connect_small(addr, "/record");
    let conn = next_open(&rx);
    let t0 = Instant::now();
    for i in 0..MESSAGES {
        conn.send_binary(&vec![i as u8; 8192]).unwrap();
    }
    let mut got = 0;
    while got < MESSAGES {
        // Pings come too; tungstenite answers them.
        if let TMessage::Binary(b) = client.read().expect("the stream keeps flowing") {
            assert_eq!(b.len(), 8192);
            assert!(b.iter().all(|&x| x == got as u8), "message {got} whole");
            got += 1;
            std::thread::sleep(Duration::from_millis(40));
        }
    }
    let took = t0.elapsed();
    // Answer any ping still unread, then check how it went on the server.
    client
        .get_ref()
        .set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let until = Instant::now() + Duration::from_millis(700);
    let mut first_pong = None;
    while Instant::now() < until {
        let _ = client.read();
        let _ = client.flush();
        while let Ok(ev) = rx.try_recv() {
            match ev {
                WsEvent::Pong(_) => {
                    first_pong.get_or_insert(t0.elapsed());
                }
                WsEvent::Close(_, close) => panic!("slow reader closed: {close:?}"),
                _ => {}
            }
        }
    }
    assert!(
        took > Duration::from_millis(1500),
        "read too fast: {took:?}"
    );
    let pong = first_pong.expect("the peer answered a ping");
    assert!(
        pong > Duration::from_millis(600),
        "the first pong ({pong:?}) came within idle + pong timeout: nothing was tested"
    );
    assert!(conn.is_open());
}

#[test]
fn heartbeat_closes_a_frozen_peer_that_we_keep_sending_to() {
    // The peer never reads and never answers; we send it a small message every 50 ms, which
    // its kernel takes for a while. Our writes landing in its socket buffer prove nothing:
    // the heartbeat must close it as if it were silent.
    let ws = WsServer::builder()
        .idle_timeout(Some(Duration::from_millis(300)))
        .pong_timeout(Duration::from_millis(300));
    let (_e, addr, rx) = start_ws(ws, engine());
    let _frozen = raw_upgraded(addr, "/record");
    let conn = next_open(&rx);
    let t0 = Instant::now();
    let ticker = conn.every(Duration::from_millis(50), |c| {
        let _ = c.send_text("tick");
    });
    let close = wait_close(&rx, conn.id());
    let at = t0.elapsed();
    ticker.cancel();
    assert_eq!(close.cause, CloseReason::ReadTimeout);
    assert!(at < Duration::from_millis(1000), "closed after {at:?}");
}

#[test]
fn shutdown_sends_going_away_and_waits_for_the_answer() {
    let (engine, addr, rx) = start_ws(WsServer::builder(), engine());
    let mut c = connect(addr, "/record");
    let conn = next_open(&rx);
    let reader = std::thread::spawn(move || {
        let code = read_close_code(&mut c);
        // tungstenite queues its answer; flushing sends it.
        let _ = c.flush();
        let _ = c.read();
        code
    });
    let t0 = Instant::now();
    engine.shutdown(Duration::from_secs(5));
    assert_eq!(reader.join().unwrap(), Some(1001));
    assert!(
        t0.elapsed() < Duration::from_secs(3),
        "the answered handshake ends the wait: {:?}",
        t0.elapsed()
    );
    let close = wait_close(&rx, conn.id());
    assert_eq!(u16::from(close.code), 1001);
}

#[test]
fn sends_from_many_threads_arrive_whole_and_in_per_thread_order() {
    let (_e, addr, rx) = start_ws(WsServer::builder(), engine());
    let mut c = connect(addr, "/record");
    let conn = next_open(&rx);
    const THREADS: usize = 8;
    const EACH: usize = 500;
    let writers: Vec<_> = (0..THREADS)
        .map(|t| {
            let conn = conn.clone();
            std::thread::spawn(move || {
                for i in 0..EACH {
                    // Varying sizes so frames straddle socket writes.
                    let body = format!("{t}:{i}:{}", "x".repeat((i * 37) % 3000));
                    while let Err(e) = conn.send_text(&body) {
                        assert!(matches!(e, netpoll::WriteError::Overflow { .. }), "{e}");
                        std::thread::sleep(Duration::from_millis(1));
                    }
                }
            })
        })
        .collect();
    let mut next_seq = [0usize; THREADS];
    for _ in 0..THREADS * EACH {
        let TMessage::Text(t) = c.read().unwrap() else {
            panic!("text expected")
        };
        let mut parts = t.splitn(3, ':');
        let th: usize = parts.next().unwrap().parse().unwrap();
        let i: usize = parts.next().unwrap().parse().unwrap();
        assert_eq!(
            parts.next().unwrap().len(),
            (i * 37) % 3000,
            "whole message"
        );
        assert_eq!(i, next_seq[th], "thread {th} out of order");
        next_seq[th] += 1;
    }
    for w in writers {
        w.join().unwrap();
    }
}

/// Counts what `on_fragment` saw: pieces, bytes, and whether first/last were consistent.
struct Streamer {
    tx: std::sync::mpsc::Sender<(usize, Vec<u8>)>,
}

impl netpoll::ws::WsHandler for Streamer {
    /// Pieces seen and a digest (byte sum, length sum) of the message in progress.
    type State = (usize, Vec<u8>);

    fn on_request(&mut self, _: &netpoll::ws::Request<'_>) -> netpoll::ws::Upgrade<Self::State> {
        netpoll::ws::Accept::new((0, Vec::new())).into()
    }

    fn on_message(
        &mut self,
        _: &netpoll::ws::WsConn,
        _: &mut Self::State,
        _: netpoll::ws::Message<'_>,
    ) {
        panic!("whole messages are not delivered in fragment mode");
    }

    fn on_fragment(
        &mut self,
        _: &netpoll::ws::WsConn,
        st: &mut Self::State,
        f: netpoll::ws::Fragment<'_>,
    ) {
        assert_eq!(f.first, st.0 == 0);
        st.0 += 1;
        // Keep a digest, not the data: the point is that nobody buffers the message.
        if st.1.is_empty() {
            st.1 = vec![0; 2];
        }
        for &b in f.data {
            st.1[0] = st.1[0].wrapping_add(b);
        }
        st.1[1] = st.1[1].wrapping_add((f.data.len() % 256) as u8);
        if f.last {
            let _ = self.tx.send((st.0, std::mem::take(&mut st.1)));
            st.0 = 0;
        }
    }
}

#[test]
fn fragment_mode_streams_a_large_message_in_pieces() {
    let (tx, rx) = std::sync::mpsc::channel();
    let engine = WsServer::builder()
        .deliver_fragments(true)
        .max_message_size(64 << 20)
        .max_frame_size(64 << 20)
        .start(engine().listen("127.0.0.1:0"), |_| Streamer {
            tx: tx.clone(),
        })
        .unwrap();
    let mut c = connect(engine.local_addrs()[0], "/");
    let big: Vec<u8> = (0..8u32 << 20).map(|i| (i % 241) as u8).collect();
    c.send(TMessage::Binary(big.clone().into())).unwrap();
    let (pieces, digest) = rx.recv_timeout(WAIT).unwrap();
    assert!(
        pieces > 10,
        "an 8 MiB message arrives in many pieces, got {pieces}"
    );
    let sum = big.iter().fold(0u8, |a, &b| a.wrapping_add(b));
    assert_eq!(digest[0], sum, "every byte delivered once, unmasked");
    // A small message is one piece.
    c.send(TMessage::Text("hi".into())).unwrap();
    assert_eq!(rx.recv_timeout(WAIT).unwrap().0, 1);
}

/// Keeps the handle its factory got; "shutdown" stops the server, anything else is answered
/// with the open count.
struct Admin {
    engine: netpoll::ws::WsHandle<Admin>,
}

impl netpoll::ws::WsHandler for Admin {
    type State = ();
    fn on_request(&mut self, _: &netpoll::ws::Request<'_>) -> netpoll::ws::Upgrade<()> {
        netpoll::ws::Accept::new(()).into()
    }
    fn on_message(
        &mut self,
        conn: &netpoll::ws::WsConn,
        _: &mut (),
        msg: netpoll::ws::Message<'_>,
    ) {
        if msg.as_bytes() == b"shutdown" {
            self.engine.shutdown(Duration::from_secs(5));
        } else {
            let _ = conn.send_text(&format!("{} open", self.engine.stats().open()));
        }
    }
}

#[test]
fn a_handler_keeps_the_ws_handle_and_shuts_the_server_down_with_it() {
    fn assert_handle<T: Clone + Send + Sync + 'static>() {}
    assert_handle::<netpoll::ws::WsHandle<Admin>>();
    let server = WsServer::builder()
        .start(engine().listen("127.0.0.1:0"), |engine| Admin {
            engine: engine.clone(),
        })
        .unwrap();
    let addr = server.local_addrs()[0];
    let mut a = connect(addr, "/");
    let mut b = connect(addr, "/");
    a.send(TMessage::text("count")).unwrap();
    assert_eq!(a.read().unwrap(), TMessage::text("2 open"));
    b.send(TMessage::text("shutdown")).unwrap();
    let answer = std::thread::spawn(move || {
        let code = read_close_code(&mut a);
        let _ = a.flush();
        code
    });
    assert_eq!(read_close_code(&mut b), Some(1001));
    let _ = b.flush();
    let stats = server.wait();
    assert_eq!(answer.join().unwrap(), Some(1001));
    assert_eq!(stats.closed(CloseReason::Shutdown), 2);
}

/// State: the user's name (from the path); every second a tick from `WsConn::every`.
struct Named {
    tx: std::sync::mpsc::Sender<netpoll::ws::WsConn>,
}

impl netpoll::ws::WsHandler for Named {
    type State = String;
    fn on_request(&mut self, req: &netpoll::ws::Request<'_>) -> netpoll::ws::Upgrade<String> {
        netpoll::ws::Accept::new(req.path().trim_start_matches('/').to_string()).into()
    }
    fn on_open(&mut self, conn: &netpoll::ws::WsConn, _: &mut String) {
        let _ = self.tx.send(conn.clone());
        conn.every(Duration::from_millis(50), |conn| {
            let _ = conn.send_text("tick");
        });
    }
    fn on_message(&mut self, _: &netpoll::ws::WsConn, _: &mut String, _: netpoll::ws::Message<'_>) {
    }
}

#[test]
fn another_thread_kicks_a_user_through_its_state_and_timers_tick_per_connection() {
    let (tx, rx) = std::sync::mpsc::channel();
    let _server = WsServer::builder()
        .start(engine().listen("127.0.0.1:0"), |_| Named { tx: tx.clone() })
        .unwrap();
    let addr = _server.local_addrs()[0];
    let mut alice = connect(addr, "/alice");
    let alice_conn = rx.recv_timeout(WAIT).unwrap();
    let mut mallory = connect(addr, "/mallory");
    let mallory_conn = rx.recv_timeout(WAIT).unwrap();
    // Per-connection timers: two ticks each.
    for ws in [&mut alice, &mut mallory] {
        for _ in 0..2 {
            assert_eq!(ws.read().unwrap(), TMessage::text("tick"));
        }
    }
    // An admin thread kicks by name, without a map of its own: ask each connection.
    let admin = std::thread::spawn(move || {
        for conn in [alice_conn, mallory_conn] {
            conn.with_state(|conn, name: &mut String| {
                if name == "mallory" {
                    conn.close(CloseCode::Policy, "kicked");
                }
            })
            .unwrap();
        }
    });
    admin.join().unwrap();
    assert_eq!(read_close_code(&mut mallory), Some(1008));
    // Alice still gets her ticks.
    assert_eq!(alice.read().unwrap(), TMessage::text("tick"));
}

#[test]
fn a_paused_websocket_gets_its_messages_on_resume_and_no_heartbeat_close_meanwhile() {
    let ws = WsServer::builder()
        .idle_timeout(Some(Duration::from_millis(200)))
        .pong_timeout(Duration::from_millis(200));
    let (_e, addr, rx) = start_ws(ws, engine());
    let mut c = connect(addr, "/record");
    let conn = next_open(&rx);
    conn.pause_reading();
    for i in 0..3 {
        c.send(TMessage::text(format!("m{i}"))).unwrap();
    }
    // Longer than idle + pong timeout: nothing delivered, nothing closed.
    std::thread::sleep(Duration::from_millis(800));
    if let Ok(ev) = rx.try_recv() {
        panic!("event while paused: {ev:?}");
    }
    conn.resume_reading();
    for i in 0..3 {
        let (_, m, _) = next_message(&rx);
        assert_eq!(m, format!("m{i}").into_bytes());
    }
    assert!(conn.is_open());
}

#[test]
fn every_close_during_shutdown_counts_as_shutdown_even_when_a_heartbeat_deadline_falls_inside() {
    // A heartbeat far shorter than the shutdown's wait: the silent peer's read deadline
    // passes during the goodbye handshake. It is still a shutdown close, not a read timeout.
    let ws = WsServer::builder()
        .idle_timeout(Some(Duration::from_millis(100)))
        .pong_timeout(Duration::from_millis(100));
    let (engine, addr, rx) = start_ws(ws, engine());
    let _silent = raw_upgraded(addr, "/record");
    let silent = next_open(&rx);
    let mut polite = connect(addr, "/record");
    let polite_conn = next_open(&rx);
    let answer = std::thread::spawn(move || {
        let code = read_close_code(&mut polite);
        let _ = polite.flush();
        code
    });
    let stats = engine.shutdown(Duration::from_secs(1));
    assert_eq!(answer.join().unwrap(), Some(1001));
    assert_eq!(stats.closed(CloseReason::ReadTimeout), 0, "{stats}");
    assert_eq!(stats.closed(CloseReason::Shutdown), 2, "{stats}");
    let mut closed = Vec::new();
    while let Ok(ev) = rx.try_recv() {
        if let WsEvent::Close(id, close) = ev {
            assert_eq!(close.cause, CloseReason::Shutdown, "{id}");
            closed.push(id);
        }
    }
    closed.sort();
    let mut want = vec![silent.id(), polite_conn.id()];
    want.sort();
    assert_eq!(closed, want);
}
