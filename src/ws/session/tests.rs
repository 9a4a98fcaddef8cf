//! The session on a simulated clock: no sockets, no sleeps. A [`Wire`] records what the session
//! does to its connection, a [`Recorder`] what it tells the application.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;

use super::*;
use crate::ws::deflate::{DeflateParams, History};
use crate::ws::frame::{Control, Data, OpCode, encode_frame};
use crate::ws::{Accept, WsBuilder};

const MASK: [u8; 4] = [1, 2, 3, 4];
const IDLE: u64 = 1_000;
const PONG: u64 = 300;

fn config() -> WsConfig {
    WsBuilder::default()
        .idle_timeout(Some(Duration::from_millis(IDLE)))
        .pong_timeout(Duration::from_millis(PONG))
        .max_message_size(1024)
        .max_frame_size(1024)
        .max_handshake_size(512)
        .build()
        .unwrap()
}

/// What the session did to its connection.
#[derive(Debug, Default)]
struct Wire {
    http: Vec<String>,
    pongs: Vec<Vec<u8>>,
    pings: usize,
    refuse_pings: bool,
    /// Close frames the session queued (code, reason).
    closes: Vec<(Option<u16>, String)>,
    /// A close frame is queued (by the session, or by "another thread" in a test).
    close_sent: bool,
    hello: Option<ClientHello>,
    upgraded: bool,
    /// permessage-deflate was agreed, with the window this side may send with.
    deflate: Option<Option<u8>>,
    /// The inbound history, kept "on the connection" (`None` while the session holds it).
    received: Option<History>,
    /// How often the session took the history out.
    history_takes: usize,
    idle: Vec<Option<Duration>>,
    /// Our bytes reached the socket since the session last asked.
    progress: bool,
    closed: bool,
    aborted: bool,
}

impl Io for Wire {
    fn peer_addr(&self) -> SocketAddr {
        ([127, 0, 0, 1], 5000).into()
    }
    fn send_http(&mut self, status: u16, head: &[u8], body: &Bytes) {
        let mut s = String::from_utf8(head.to_vec()).unwrap();
        assert!(s.starts_with(&format!("HTTP/1.1 {status} ")), "{s}");
        s.push_str(std::str::from_utf8(body).unwrap());
        self.http.push(s);
    }
    fn pong(&mut self, payload: &[u8]) {
        self.pongs.push(payload.to_vec());
    }
    fn ping(&mut self) -> bool {
        if self.refuse_pings || self.close_sent {
            return false;
        }
        self.pings += 1;
        true
    }
    fn send_close(&mut self, code: Option<CloseCode>, reason: &str) -> bool {
        if self.close_sent {
            return false;
        }
        self.close_sent = true;
        self.closes.push((code.map(u16::from), reason.to_string()));
        true
    }
    fn close_sent(&mut self) -> bool {
        self.close_sent
    }
    fn with_hello<R>(&mut self, f: impl FnOnce(&ClientHello) -> R) -> Option<R> {
        self.hello.as_ref().map(f)
    }
    fn upgraded(&mut self) {
        self.upgraded = true;
        self.hello = None;
    }
    fn deflate_agreed(&mut self, params: &DeflateParams, server: bool) {
        self.deflate = Some(params.send_window(server).map(|(bits, _)| bits));
        if !params.receive_resets(server) {
            self.received = Some(History::new(params.receive_window(server)));
        }
    }
    fn take_received_history(&mut self) -> Option<History> {
        self.history_takes += 1;
        self.received.take()
    }
    fn put_received_history(&mut self, history: History) {
        assert!(self.received.is_none(), "given back twice");
        self.received = Some(history);
    }
    fn take_write_progress(&mut self) -> bool {
        std::mem::take(&mut self.progress)
    }
    fn set_idle_timeout(&mut self, timeout: Option<Duration>) {
        self.idle.push(timeout);
    }
    fn close(&mut self) {
        self.closed = true;
    }
    fn abort(&mut self) {
        self.aborted = true;
    }
}

/// What the session told the application; the state is a name.
#[derive(Debug, Default)]
struct Recorder {
    events: Vec<String>,
}

impl App<&'static str> for Recorder {
    fn request(&mut self, req: &Request<'_>) -> Upgrade<&'static str> {
        self.events.push(format!("request {}", req.path()));
        match req.path() {
            "/ws" => Accept::new("alice").protocol("chat").into(),
            "/bad" => Accept::new("mallory")
                .header("X-Echo", "a\r\nSet-Cookie: stolen=1")
                .into(),
            "/" => Upgrade::Respond(HttpResponse::new(200).body("page")),
            _ => Upgrade::not_found(),
        }
    }
    fn open(&mut self, state: &mut &'static str) {
        self.events.push(format!("open {state}"));
    }
    fn message(&mut self, state: &mut &'static str, msg: Message<'_>) {
        let text = String::from_utf8_lossy(msg.as_bytes());
        self.events.push(format!("message {state} {text}"));
    }
    fn fragment(&mut self, _: &mut &'static str, f: Fragment<'_>) {
        self.events
            .push(format!("fragment {} {}", f.data.len(), f.last));
    }
    fn pong(&mut self, _: &mut &'static str, payload: &[u8]) {
        self.events.push(format!("pong {}", payload.len()));
    }
    fn connect_failed(&mut self, state: &'static str, error: ConnectError) {
        self.events.push(format!("connect_failed {state} {error}"));
    }
}

const UPGRADE: &str = "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\
    Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
    Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: chat\r\n\r\n";

fn client_frame(opcode: OpCode, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    encode_frame(&mut v, opcode, true, payload, Some(MASK));
    v
}

fn text(s: &str) -> Vec<u8> {
    client_frame(OpCode::Data(Data::Text), s.as_bytes())
}

fn close_frame(code: u16) -> Vec<u8> {
    client_frame(OpCode::Control(Control::Close), &code.to_be_bytes())
}

/// A server session after a successful upgrade at `now`.
struct Harness {
    session: Session<&'static str>,
    wire: Wire,
    app: Recorder,
    config: WsConfig,
}

impl Harness {
    fn server() -> Self {
        Harness {
            session: Session::server(),
            wire: Wire::default(),
            app: Recorder::default(),
            config: config(),
        }
    }

    fn input(&mut self, now: u64, bytes: &[u8]) -> usize {
        let mut data = bytes.to_vec();
        self.session
            .on_input(now, &mut data, &self.config, &mut self.wire, &mut self.app)
    }

    fn timeout(&mut self, now: u64) -> IdleAction {
        self.session.on_timeout(now, &self.config, &mut self.wire)
    }

    fn open_server(now: u64) -> Self {
        let mut h = Harness::server();
        assert_eq!(h.input(now, UPGRADE.as_bytes()), UPGRADE.len());
        h
    }

    fn end(self, cause: CloseReason) -> Ended<&'static str> {
        self.session.on_closed(cause)
    }
}

fn wait_ms(action: IdleAction) -> u64 {
    match action {
        IdleAction::Wait(d) => d.as_millis() as u64,
        IdleAction::Close => panic!("closed, expected a wait"),
    }
}

fn closed_with(ended: Ended<&'static str>) -> (u16, CloseReason) {
    match ended {
        Ended::Closed(_, close) => (close.code.into(), close.cause),
        other => panic!("expected a close, got {other:?}"),
    }
}

#[test]
fn an_upgrade_and_the_frames_behind_it_in_one_read() {
    let mut h = Harness::server();
    let mut input = UPGRADE.as_bytes().to_vec();
    input.extend(text("hi"));
    assert_eq!(h.input(0, &input), input.len());
    assert!(h.wire.http[0].starts_with("HTTP/1.1 101 Switching Protocols\r\n"));
    assert!(h.wire.http[0].contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"));
    assert!(h.wire.http[0].contains("Sec-WebSocket-Protocol: chat\r\n"));
    assert_eq!(
        h.app.events,
        ["request /ws", "open alice", "message alice hi"]
    );
    assert_eq!(h.wire.idle, [Some(Duration::from_millis(IDLE))]);
}

#[test]
fn an_accept_with_a_header_that_is_not_valid_http_gets_a_500() {
    let mut h = Harness::server();
    h.input(0, UPGRADE.replace("/ws", "/bad").as_bytes());
    assert!(
        h.wire.http[0].starts_with("HTTP/1.1 500 "),
        "{}",
        h.wire.http[0]
    );
    assert!(!h.wire.http[0].contains("stolen"));
    assert!(h.wire.closed);
    assert!(!h.app.events.iter().any(|e| e.starts_with("open")));
}

#[test]
fn a_request_in_pieces_waits_and_a_too_big_one_is_refused() {
    let mut h = Harness::server();
    assert_eq!(h.input(0, &UPGRADE.as_bytes()[..30]), 0, "incomplete: kept");
    assert!(h.wire.http.is_empty());
    let big = format!("GET /ws HTTP/1.1\r\nX-Pad: {}\r\n", "a".repeat(600));
    let mut h = Harness::server();
    assert_eq!(h.input(0, big.as_bytes()), big.len());
    assert!(h.wire.http[0].starts_with("HTTP/1.1 431 "));
    assert!(h.wire.closed);
    assert!(matches!(h.end(CloseReason::Local), Ended::Nothing));
}

#[test]
fn requests_that_are_not_upgrades_get_answers() {
    let mut h = Harness::server();
    h.input(0, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(h.wire.http[0].starts_with("HTTP/1.1 200 OK\r\n"));
    assert!(h.wire.http[0].ends_with("\r\n\r\npage"));
    assert!(h.wire.closed);
    for (raw, status) in [
        ("GARBAGE\x01\r\n\r\n".to_string(), "400"),
        (UPGRADE.replace("/ws", "/nope"), "404"),
        (UPGRADE.replace("Version: 13", "Version: 8"), "426"),
        (UPGRADE.replace("GET", "POST"), "405"),
    ] {
        let mut h = Harness::server();
        h.input(0, raw.as_bytes());
        assert!(
            h.wire.http[0].starts_with(&format!("HTTP/1.1 {status} ")),
            "{raw}"
        );
        assert!(h.wire.closed);
        // Nothing after the answer is read as frames.
        let after = text("x");
        assert_eq!(h.input(1, &after), after.len());
        assert!(!h.app.events.iter().any(|e| e.starts_with("message")));
    }
}

#[test]
fn the_handshake_timeout_closes_before_the_upgrade() {
    let mut h = Harness::server();
    h.input(0, &UPGRADE.as_bytes()[..10]);
    assert_eq!(h.timeout(10_000), IdleAction::Close);
    assert!(h.wire.http[0].starts_with("HTTP/1.1 408 Request Timeout\r\n"));
    assert!(matches!(h.end(CloseReason::ReadTimeout), Ended::Nothing));
}

#[test]
fn the_heartbeat_pings_an_idle_peer_and_waits_for_any_frame() {
    let mut h = Harness::open_server(0);
    // Frames keep arriving: each timeout asks for the rest of the idle time, no ping.
    h.input(600, &text("a"));
    assert_eq!(wait_ms(h.timeout(IDLE)), 600);
    assert_eq!(h.wire.pings, 0);
    // Silent for the idle time: a ping, and pong_timeout to answer.
    assert_eq!(wait_ms(h.timeout(1_600)), PONG);
    assert_eq!(h.wire.pings, 1);
    // The answer (any whole frame counts) comes: the next check waits out the idle time.
    h.input(1_700, &client_frame(OpCode::Control(Control::Pong), b""));
    assert_eq!(wait_ms(h.timeout(1_900)), IDLE - 200);
    assert!(h.app.events.contains(&"pong 0".to_string()));
    // Silent again: ping, then nothing within pong_timeout: close, saying why.
    assert_eq!(wait_ms(h.timeout(2_700)), PONG);
    assert_eq!(h.timeout(3_000), IdleAction::Close);
    assert_eq!(h.wire.pings, 2);
    assert_eq!(h.wire.closes, [(Some(1001), "no answer to ping".into())]);
    assert_eq!(
        closed_with(h.end(CloseReason::ReadTimeout)),
        (1006, CloseReason::ReadTimeout)
    );
}

#[test]
fn a_slow_reader_taking_our_bytes_is_alive_while_its_pong_waits_behind_them() {
    let mut h = Harness::open_server(0);
    // The ping goes out (written at once: that is not the peer's doing).
    h.wire.progress = true;
    assert_eq!(wait_ms(h.timeout(IDLE)), PONG);
    h.wire.progress = false;
    // The peer reads a little of what is queued before each pong_timeout: it is kept.
    for i in 1..=20 {
        h.wire.progress = true;
        assert_eq!(wait_ms(h.timeout(IDLE + i * PONG)), PONG, "round {i}");
    }
    assert_eq!(h.wire.pings, 1, "one ping out at a time");
    // It reaches the ping and answers: the heartbeat starts over.
    h.input(
        IDLE + 21 * PONG,
        &client_frame(OpCode::Control(Control::Pong), b""),
    );
    assert_eq!(wait_ms(h.timeout(IDLE + 22 * PONG)), IDLE - PONG);
    // Then it stops reading: ping, a pong_timeout without progress, and it is closed.
    let t = 2 * IDLE + 21 * PONG;
    assert_eq!(wait_ms(h.timeout(t)), PONG);
    assert_eq!(h.timeout(t + PONG), IdleAction::Close);
    assert_eq!(h.wire.closes, [(Some(1001), "no answer to ping".into())]);
}

#[test]
fn trickled_bytes_are_not_activity() {
    let mut h = Harness::open_server(0);
    let frame = text("hello");
    // Half a frame just before the deadline: it does not count.
    assert_eq!(h.input(900, &frame[..4]), 0);
    assert_eq!(
        wait_ms(h.timeout(IDLE)),
        PONG,
        "pinged: no whole frame came"
    );
}

#[test]
fn a_refused_ping_closes() {
    let mut h = Harness::open_server(0);
    h.wire.refuse_pings = true;
    assert_eq!(h.timeout(IDLE), IdleAction::Close);
}

#[test]
fn the_clock_may_wrap_32_bits() {
    let start = u64::from(u32::MAX) - 100;
    let mut h = Harness::open_server(start);
    h.input(start + 500, &text("a"));
    assert_eq!(wait_ms(h.timeout(start + IDLE)), 500);
}

#[test]
fn a_close_from_the_peer_is_answered_with_its_code_and_the_server_closes_tcp() {
    let mut h = Harness::open_server(0);
    let mut input = close_frame(1000);
    input.extend(text("after the close: ignored"));
    assert_eq!(h.input(5, &input), input.len());
    assert_eq!(h.wire.closes, [(Some(1000), String::new())]);
    assert!(h.wire.closed);
    let after = text("x");
    assert_eq!(h.input(6, &after), after.len());
    assert!(!h.app.events.iter().any(|e| e.contains("ignored")));
    assert_eq!(
        closed_with(h.end(CloseReason::PeerClosed)),
        (1000, CloseReason::PeerClosed)
    );
    // An empty close frame is answered with an empty one and reported as 1005.
    let mut h = Harness::open_server(0);
    h.input(5, &client_frame(OpCode::Control(Control::Close), b""));
    assert_eq!(h.wire.closes, [(None, String::new())]);
    assert_eq!(closed_with(h.end(CloseReason::Local)).0, 1005);
}

#[test]
fn our_close_is_answered_or_times_out() {
    // The application closed (from any thread: the close frame is already queued).
    let mut h = Harness::open_server(0);
    h.wire.close_sent = true;
    h.input(10, &close_frame(1000));
    assert!(
        h.wire.closes.is_empty(),
        "ours is out already, no second one"
    );
    assert!(h.wire.closed);
    assert_eq!(closed_with(h.end(CloseReason::Local)).0, 1000);
    // No answer: when the close deadline passes, the connection closes, reported as 1006.
    let mut h = Harness::open_server(0);
    h.wire.close_sent = true;
    assert_eq!(h.timeout(100), IdleAction::Close);
    assert_eq!(closed_with(h.end(CloseReason::ReadTimeout)).0, 1006);
}

#[test]
fn shutdown_says_going_away_and_waits_for_the_answer() {
    let mut h = Harness::open_server(0);
    assert_eq!(h.session.on_shutdown(&mut h.wire), ShutdownAction::Wait);
    assert_eq!(h.wire.closes, [(Some(1001), "shutting down".into())]);
    h.input(10, &close_frame(1001));
    assert!(h.wire.closed);
    assert_eq!(
        closed_with(h.end(CloseReason::Shutdown)),
        (1001, CloseReason::Shutdown)
    );
    // Before the upgrade there is nobody to say goodbye to.
    let mut h = Harness::server();
    assert_eq!(h.session.on_shutdown(&mut h.wire), ShutdownAction::Close);
    // Unanswered, the engine closes it at its deadline: still reported as 1001.
    let mut h = Harness::open_server(0);
    h.session.on_shutdown(&mut h.wire);
    assert_eq!(closed_with(h.end(CloseReason::Shutdown)).0, 1001);
}

#[test]
fn protocol_violations_and_limits_fail_with_their_codes() {
    for (input, code) in [
        (client_frame(OpCode::Data(Data::Binary), &[0; 1025]), 1009),
        (client_frame(OpCode::Data(Data::Text), &[0xff]), 1007),
        (client_frame(OpCode::Data(Data::Continue), b"x"), 1002),
        (
            {
                let mut f = text("x");
                f[1] &= 0x7f; // unmasked
                f.drain(2..6);
                f
            },
            1002,
        ),
    ] {
        let mut h = Harness::open_server(0);
        assert_eq!(h.input(1, &input), input.len());
        assert_eq!(h.wire.closes[0].0, Some(code));
        assert!(h.wire.closed);
        assert_eq!(closed_with(h.end(CloseReason::Local)).0, code);
    }
}

#[test]
fn pings_are_answered_with_their_payload() {
    let mut h = Harness::open_server(0);
    h.input(1, &client_frame(OpCode::Control(Control::Ping), b"abc"));
    assert_eq!(h.wire.pongs, [b"abc".to_vec()]);
}

fn client(hello: ClientHello) -> Harness {
    let mut h = Harness::server();
    h.session = Session::client("bob");
    h.wire.hello = Some(hello);
    h
}

fn hello() -> ClientHello {
    ClientHello {
        accept: "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=".into(),
        protocols: vec!["chat".into()],
        deflate: None,
    }
}

const RESPONSE: &str = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
    Connection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n";

#[test]
fn a_client_opens_on_a_valid_101_and_reads_unmasked_frames() {
    let mut h = client(hello());
    assert!(
        h.session.app_mut().is_none(),
        "no callbacks before the upgrade"
    );
    let mut input = RESPONSE.as_bytes().to_vec();
    encode_frame(&mut input, OpCode::Data(Data::Text), true, b"yo", None);
    assert_eq!(h.input(0, &input), input.len());
    assert!(h.wire.upgraded);
    assert_eq!(h.app.events, ["open bob", "message bob yo"]);
    // A masked frame from a server is a protocol error.
    let masked = text("x");
    h.input(1, &masked);
    assert_eq!(h.wire.closes[0].0, Some(1002));
}

#[test]
fn a_client_handshake_fails_with_the_state_given_back() {
    let mut h = client(hello());
    let bad = RESPONSE.replace("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=", "AAAA");
    h.input(0, bad.as_bytes());
    assert!(h.wire.aborted);
    assert_eq!(
        h.app.events,
        ["connect_failed bob invalid upgrade response: wrong Sec-WebSocket-Accept"]
    );
    assert!(matches!(h.end(CloseReason::Local), Ended::Nothing));
    // No answer within the handshake timeout.
    let mut h = client(hello());
    h.input(0, &RESPONSE.as_bytes()[..10]);
    assert_eq!(h.timeout(10_000), IdleAction::Close);
    match h.end(CloseReason::ReadTimeout) {
        Ended::ConnectFailed("bob", ConnectError::Timeout) => {}
        other => panic!("{other:?}"),
    }
}

#[test]
fn fragments_stream_when_configured() {
    let mut h = Harness::open_server(0);
    h.config = WsBuilder::default()
        .deliver_fragments(true)
        .build()
        .unwrap();
    h.input(1, &client_frame(OpCode::Data(Data::Binary), &[7; 100]));
    assert!(h.app.events.contains(&"fragment 100 true".to_string()));
}

#[test]
fn the_session_is_small() {
    assert_eq!(std::mem::size_of::<Session<()>>(), 16);
    // The poller keeps it as `Option<State>`: no word more for that.
    assert_eq!(std::mem::size_of::<Option<Session<()>>>(), 16);
}

/// A compressed (RSV1), masked client frame carrying `payload` deflated as one message.
fn compressed_frame(payload: &[u8], fin: bool) -> Vec<u8> {
    let mut wire = Vec::new();
    crate::ws::deflate::Deflater::new(15).compress(payload, &mut wire);
    let mut v = Vec::new();
    encode_frame(&mut v, OpCode::Data(Data::Text), fin, &wire, Some(MASK));
    v[0] |= 0x40;
    v
}

fn deflate_harness() -> Harness {
    let mut h = Harness::server();
    h.config = WsBuilder::default()
        .max_message_size(1024)
        .max_frame_size(1024)
        .deflate(crate::ws::deflate::DeflateConfig::default())
        .build()
        .unwrap();
    let upgrade = UPGRADE.replace(
        "\r\n\r\n",
        "\r\nSec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\r\n",
    );
    assert_eq!(h.input(0, upgrade.as_bytes()), upgrade.len());
    assert!(
        h.wire.http[0].contains(
            "Sec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover; \
             client_no_context_takeover\r\n"
        ),
        "{}",
        h.wire.http[0]
    );
    assert_eq!(h.wire.deflate, Some(Some(15)));
    h
}

#[test]
fn deflate_is_agreed_and_compressed_messages_arrive_inflated() {
    let mut h = deflate_harness();
    let long = "abc ".repeat(100);
    let mut input = compressed_frame(long.as_bytes(), true);
    input.extend(text("plain"));
    h.input(1, &input);
    assert_eq!(
        h.app.events[2..],
        [
            format!("message alice {long}"),
            "message alice plain".to_string()
        ]
    );
    assert!(h.wire.closes.is_empty());
}

#[test]
fn deflate_limits_and_errors_close_with_the_right_codes() {
    // Inflates past max_message_size (1024): 1009, though 40 KB of zeros compress to ~50 B.
    let mut h = deflate_harness();
    h.input(1, &compressed_frame(&[0u8; 40_000], true));
    assert_eq!(h.wire.closes, [(Some(1009), "message too big".into())]);
    // Not deflate at all: 1007.
    let mut h = deflate_harness();
    let mut bad = client_frame(OpCode::Data(Data::Binary), &[0xff; 16]);
    bad[0] |= 0x40;
    h.input(1, &bad);
    assert_eq!(h.wire.closes[0].0, Some(1007));
    // RSV1 on a continuation frame: 1002.
    let mut h = deflate_harness();
    let mut input = compressed_frame(b"part one, ", false);
    let mut cont = client_frame(OpCode::Data(Data::Continue), b"x");
    cont[0] |= 0x40;
    input.extend(cont);
    h.input(1, &input);
    assert_eq!(h.wire.closes[0].0, Some(1002));
    // RSV1 without the extension agreed: 1002.
    let mut h = Harness::open_server(0);
    h.input(1, &compressed_frame(b"hello", true));
    assert_eq!(h.wire.closes[0].0, Some(1002));
}

#[test]
fn a_fragmented_compressed_message_is_assembled_then_inflated() {
    let mut h = deflate_harness();
    let long = "fragmented ".repeat(50);
    let mut wire = Vec::new();
    crate::ws::deflate::Deflater::new(15).compress(long.as_bytes(), &mut wire);
    let (a, b) = wire.split_at(wire.len() / 2);
    let mut first = Vec::new();
    encode_frame(&mut first, OpCode::Data(Data::Text), false, a, Some(MASK));
    first[0] |= 0x40;
    let mut second = Vec::new();
    encode_frame(
        &mut second,
        OpCode::Data(Data::Continue),
        true,
        b,
        Some(MASK),
    );
    h.input(1, &first);
    h.input(2, &second);
    assert_eq!(
        h.app.events.last().unwrap(),
        &format!("message alice {long}")
    );
}

#[test]
fn with_context_takeover_messages_inflate_on_top_of_the_ones_before() {
    let mut h = Harness::server();
    h.config = WsBuilder::default()
        .deflate(crate::ws::deflate::DeflateConfig::default().context_takeover(10))
        .build()
        .unwrap();
    let upgrade = UPGRADE.replace(
        "\r\n\r\n",
        "\r\nSec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\r\n",
    );
    h.input(0, upgrade.as_bytes());
    assert!(
        h.wire.http[0].contains(
            "Sec-WebSocket-Extensions: permessage-deflate; server_max_window_bits=10; \
             client_max_window_bits=10\r\n"
        ),
        "{}",
        h.wire.http[0]
    );
    assert_eq!(h.wire.deflate, Some(Some(10)));
    assert_eq!(h.wire.received.as_ref().map(History::window), Some(1024));
    // The client keeps one stream with a 10-bit window for all its messages.
    let mut client = crate::ws::deflate::Deflater::new(10);
    let mut sizes = Vec::new();
    for n in 0..200 {
        let msg = format!("{{\"n\":{n},\"text\":\"the same words again and again\"}}");
        let mut wire = Vec::new();
        client.compress(msg.as_bytes(), &mut wire);
        sizes.push(wire.len());
        let mut frame = Vec::new();
        encode_frame(
            &mut frame,
            OpCode::Data(Data::Text),
            true,
            &wire,
            Some(MASK),
        );
        frame[0] |= 0x40;
        // Two messages in some reads, one in others: the history goes back each time.
        h.input(1 + n, &frame);
        assert_eq!(
            h.app.events.last().unwrap(),
            &format!("message alice {msg}")
        );
        assert!(h.wire.received.is_some(), "the history went back");
    }
    assert!(h.wire.closes.is_empty(), "{:?}", h.wire.closes);
    assert!(
        sizes[199] * 2 < sizes[0],
        "{} then {}",
        sizes[0],
        sizes[199]
    );
    assert_eq!(
        h.wire.history_takes, 200,
        "once per read with a compressed message"
    );
    // Reads without a compressed message leave the context where it is.
    h.input(300, &text("plain"));
    assert_eq!(h.wire.history_takes, 200);
    assert!(h.wire.received.as_ref().unwrap().heap_bytes() <= 1024);
    // Without the history the next message would not inflate to the same text: a message
    // that refers back cannot be read by a fresh decompressor.
    let msg = b"{\"n\":200,\"text\":\"the same words again and again\"}";
    let mut wire = Vec::new();
    client.compress(msg, &mut wire);
    let mut out = Vec::new();
    let fresh = crate::ws::deflate::Inflater::new().inflate(&wire, true, &mut out, 1 << 20);
    assert!(fresh.is_err() || out != msg);
}
