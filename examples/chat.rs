//! A chat server with its own web page: the README's main demo.
//!
//! ```text
//! cargo run --release --example chat [-- --addr 127.0.0.1:8080 --history 50
//!     --history-bytes 262144 --rate 5 --burst 10 --origin https://chat.example ...
//!     --tls-cert cert.pem --tls-key key.pem --redis redis://127.0.0.1:6379]
//! ```
//! With `--redis URL` (or `--nats URL`) several chat processes share the room through that
//! broker (`netpoll::bus`): messages and join/leave notices reach every node's members, and
//! the online count is the sum over the nodes (each node publishes its own count every 2 s
//! and on every join and leave; a node not heard from for 6 s no longer counts). The history
//! a newcomer gets is its own node's.
//! With `--tls-cert` and `--tls-key` the page is served over https:// and the chat over
//! wss:// on the same port.
//! Open <http://127.0.0.1:8080/> in two browser tabs, pick nicknames, and talk. The page is
//! served through the WebSocket upgrade hook's HTTP response; `/ws?nick=NAME` is the
//! WebSocket endpoint. New joiners get the room's recent messages (the last `--history`, and
//! no more than `--history-bytes` of them, so that the replay always fits a connection's
//! outbound limit); everyone sees join and leave notices and the online count.
//!
//! What it does against misuse, as a server on the internet must:
//! - Each sender may post `--rate` messages a second, in bursts of up to `--burst`; beyond
//!   that its messages are dropped with a notice to it, and a sender that keeps flooding is
//!   closed with 1008. The room is not made to pay for one flooder.
//! - A client that cannot keep up with the room is closed with 1008 rather than allowed to grow
//!   the server's memory; idle clients are pinged (heartbeat) and dropped if they do not answer.
//! - Browsers may connect only from this page's own origin or an `--origin` given (a browser
//!   sends its user's cookies with any site's WebSocket: the Origin check is the defence);
//!   clients that send no Origin (not browsers) are let in.
//! - Nicknames are not authenticated: anyone may take any nickname, a taken one included.
//! - Messages are compressed (permessage-deflate, which browsers offer) when they are 64 bytes
//!   or more; the 4 KiB message limit applies to the inflated size.
//!
//! Prints `listening on ADDR` once ready.
//!
//! Server to client, one JSON object per message: `{"type":"msg","nick":..,"text":..}`,
//! `{"type":"join"|"leave","nick":..,"online":N}`, `{"type":"notice","text":..}`. Client to
//! server: the text of a message.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use netpoll::Engine;
use netpoll::ws::{
    Accept, CloseCode, Group, HttpResponse, Message, Request, SlowPolicy, Upgrade, WsClose, WsConn,
    WsEngine, WsHandler, WsServer,
};

const PAGE: &str = include_str!("chat/index.html");

/// The server's settings.
#[derive(Debug, Clone)]
struct Options {
    addr: String,
    /// Most messages kept for newcomers.
    history: usize,
    /// Most bytes (as sent) kept for newcomers; under half the outbound limit.
    history_bytes: usize,
    /// Messages a second one sender may post, and how many at once.
    rate: f64,
    burst: f64,
    /// Origins allowed besides the page's own.
    origins: Vec<String>,
    /// Outbound limit per connection.
    max_outbound: usize,
    /// PEM files of the certificate chain and key: serve https:// and wss://.
    tls_cert: Option<String>,
    tls_key: Option<String>,
    /// A broker (`redis://...`, `nats://...`) that joins this node's room to others'.
    broker: Option<String>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            addr: "127.0.0.1:8080".into(),
            history: 50,
            history_bytes: 256 << 10,
            rate: 5.0,
            burst: 10.0,
            origins: Vec::new(),
            tls_cert: None,
            tls_key: None,
            broker: None,
            max_outbound: 1 << 20,
        }
    }
}

/// The room every client joins, and its recent messages.
struct Room {
    members: Group,
    history: Mutex<History>,
    opts: Options,
    /// With a broker: the other nodes' counts of members.
    nodes: Option<Nodes>,
}

/// The room across nodes: the bus it is bound on, and what other nodes last said their
/// member counts were.
struct Nodes {
    bus: netpoll::bus::Bus,
    counts: Mutex<HashMap<u64, (usize, Instant)>>,
}

/// The channels the room uses on a broker.
const ROOM_CHANNEL: &str = "netpoll-chat:room";
const PRESENCE_CHANNEL: &str = "netpoll-chat:presence";
/// How long another node's count is believed without news (three of its reports).
const PRESENCE_TTL: Duration = Duration::from_secs(6);

/// Recent messages, bounded by count and by bytes.
#[derive(Default)]
struct History {
    events: VecDeque<String>,
    bytes: usize,
}

impl Room {
    /// Members online: this node's, plus the other nodes' last reported counts.
    fn online(&self) -> usize {
        let local = self.members.len();
        let Some(nodes) = &self.nodes else {
            return local;
        };
        let now = Instant::now();
        let mut counts = nodes.counts.lock().unwrap();
        counts.retain(|_, (_, at)| now.duration_since(*at) < PRESENCE_TTL);
        counts
            .values()
            .fold(local, |sum, (n, _)| sum.saturating_add(*n))
    }

    /// Tells the other nodes how many members this node has ("NODE COUNT").
    fn report_presence(&self) {
        if let Some(nodes) = &self.nodes {
            let report = format!("{} {}", nodes.bus.node_id(), self.members.len());
            let _ = nodes.bus.publish(PRESENCE_CHANNEL, Message::Text(&report));
        }
    }

    /// Another node's report.
    fn presence(&self, report: &str) {
        let Some(nodes) = &self.nodes else { return };
        let mut parts = report.split(' ');
        if let (Some(Ok(node)), Some(Ok(count))) = (
            parts.next().map(str::parse::<u64>),
            parts.next().map(str::parse::<usize>),
        ) {
            nodes
                .counts
                .lock()
                .unwrap()
                .insert(node, (count, Instant::now()));
        }
    }

    fn remember(&self, event: &str) {
        let mut h = self.history.lock().unwrap();
        h.events.push_back(event.to_string());
        h.bytes += event.len();
        while h.events.len() > self.opts.history || h.bytes > self.opts.history_bytes {
            let old = h.events.pop_front().expect("not empty");
            h.bytes -= old.len();
        }
    }
}

/// A sender's allowance: `rate` messages a second, `burst` at once. Messages over it are
/// refused; refusals are remembered the same way, and a sender that keeps going gets closed.
#[derive(Debug)]
struct Bucket {
    tokens: f64,
    strikes: f64,
    at: Instant,
}

/// What to do with a sender's message.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    Post,
    /// Over the rate: drop it; `first` if it is the first refusal in a while (say why once).
    Refuse {
        first: bool,
    },
    /// Flooding: close the sender.
    Close,
}

impl Bucket {
    fn new(burst: f64) -> Self {
        Bucket {
            tokens: burst,
            strikes: 0.0,
            at: Instant::now(),
        }
    }

    fn take(&mut self, now: Instant, rate: f64, burst: f64) -> Verdict {
        let refill = now.saturating_duration_since(self.at).as_secs_f64() * rate;
        self.at = now;
        self.tokens = (self.tokens + refill).min(burst);
        self.strikes = (self.strikes - refill).max(0.0);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return Verdict::Post;
        }
        self.strikes += 1.0;
        if self.strikes > 2.0 * burst {
            Verdict::Close
        } else {
            Verdict::Refuse {
                first: self.strikes <= 1.0,
            }
        }
    }
}

/// One member: its nickname and its allowance.
struct Member {
    nick: String,
    bucket: Bucket,
}

struct Chat {
    room: Arc<Room>,
}

impl WsHandler for Chat {
    type State = Member;

    fn on_request(&mut self, req: &Request<'_>) -> Upgrade<Member> {
        match (req.path(), req.is_upgrade()) {
            ("/", false) => Upgrade::Respond(
                HttpResponse::new(200)
                    .header("Content-Type", "text/html; charset=utf-8")
                    .header("Cache-Control", "no-store")
                    .body(PAGE),
            ),
            ("/ws", true) if !origin_ok(req, &self.room.opts.origins) => Upgrade::reject(403),
            ("/ws", true) => match req.query().and_then(nick_from_query) {
                Some(nick) => Accept::new(Member {
                    nick,
                    bucket: Bucket::new(self.room.opts.burst),
                })
                .into(),
                None => Upgrade::Respond(
                    HttpResponse::new(400).body("nick: 1-20 letters, digits, - or _\n"),
                ),
            },
            _ => Upgrade::not_found(),
        }
    }

    fn on_open(&mut self, conn: &WsConn, member: &mut Member) {
        // History first, then join, so the newcomer sees the room as it was. The history fits
        // the outbound limit by construction; if a send fails anyway, say so by closing.
        let history: Vec<String> = self
            .room
            .history
            .lock()
            .unwrap()
            .events
            .iter()
            .cloned()
            .collect();
        for event in history {
            if let Err(e) = conn.send_text(&event) {
                eprintln!("history for {} not sent ({e}); closing", member.nick);
                conn.close(CloseCode::Error, "history could not be sent");
                return;
            }
        }
        self.room.members.join(conn);
        self.room.report_presence();
        let online = self.room.online();
        let event = format!(
            r#"{{"type":"join","nick":{},"online":{online}}}"#,
            json_string(&member.nick)
        );
        self.room.members.broadcast(Message::Text(&event));
    }

    fn on_message(&mut self, conn: &WsConn, member: &mut Member, msg: Message<'_>) {
        // After our close frame the peer may still send until it answers: ignore that.
        if !conn.is_open() {
            return;
        }
        let Message::Text(text) = msg else { return };
        let text = text.trim();
        if text.is_empty() {
            return;
        }
        let opts = &self.room.opts;
        match member.bucket.take(Instant::now(), opts.rate, opts.burst) {
            Verdict::Post => {}
            Verdict::Refuse { first } => {
                if first {
                    let notice = format!(
                        r#"{{"type":"notice","text":"slow down: at most {} messages a second"}}"#,
                        opts.rate
                    );
                    let _ = conn.send_text(&notice);
                }
                return;
            }
            Verdict::Close => {
                conn.close(CloseCode::Policy, "flooding");
                return;
            }
        }
        let event = format!(
            r#"{{"type":"msg","nick":{},"text":{}}}"#,
            json_string(&member.nick),
            json_string(text)
        );
        self.room.remember(&event);
        self.room.members.broadcast(Message::Text(&event));
    }

    fn on_close(&mut self, _: &WsConn, member: Member, _: WsClose) {
        // The connection has already left the group.
        self.room.report_presence();
        let online = self.room.online();
        let event = format!(
            r#"{{"type":"leave","nick":{},"online":{online}}}"#,
            json_string(&member.nick)
        );
        self.room.members.broadcast(Message::Text(&event));
    }
}

/// True for a request from no browser (no `Origin`), from this page's own origin (the `Host`
/// it was asked for), or from one of `extra`.
fn origin_ok(req: &Request<'_>, extra: &[String]) -> bool {
    let host = req.header("host").unwrap_or("");
    let own = [format!("http://{host}"), format!("https://{host}")];
    let allowed: Vec<&str> = own.iter().chain(extra).map(String::as_str).collect();
    req.origin_allowed(&allowed)
}

/// The `nick` query parameter, percent-decoded and checked.
fn nick_from_query(query: &str) -> Option<String> {
    let raw = query.split('&').find_map(|kv| kv.strip_prefix("nick="))?;
    let mut bytes = Vec::new();
    let mut it = raw.bytes();
    while let Some(b) = it.next() {
        match b {
            b'%' => {
                let hex = [it.next()?, it.next()?];
                bytes.push(u8::from_str_radix(std::str::from_utf8(&hex).ok()?, 16).ok()?);
            }
            b'+' => bytes.push(b' '),
            b => bytes.push(b),
        }
    }
    let nick = String::from_utf8(bytes).ok()?;
    let ok = (1..=20).contains(&nick.chars().count())
        && nick
            .chars()
            .all(|c| c.is_alphanumeric() || c == '-' || c == '_');
    ok.then_some(nick)
}

/// `s` as a JSON string literal.
fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Starts the chat server.
fn start(opts: Options) -> WsEngine<Chat> {
    assert!(
        opts.history_bytes < opts.max_outbound / 2,
        "--history-bytes must be under half the outbound limit, so the replay always fits"
    );
    let members = Group::new(SlowPolicy::Close {
        code: CloseCode::Policy,
    });
    let nodes = opts.broker.as_ref().map(|url| {
        let bus = netpoll::bus::Bus::builder()
            .connect(url)
            .unwrap_or_else(|e| panic!("{e}"));
        bus.bind(&members, ROOM_CHANNEL)
            .unwrap_or_else(|e| panic!("{e}"));
        Nodes {
            bus,
            counts: Mutex::new(HashMap::new()),
        }
    });
    let room = Arc::new(Room {
        members,
        history: Mutex::new(History::default()),
        opts: opts.clone(),
        nodes,
    });
    if let Some(nodes) = &room.nodes {
        // Weak: the bus keeps its subscribers, and the room keeps the bus.
        let weak = Arc::downgrade(&room);
        nodes
            .bus
            .subscribe(PRESENCE_CHANNEL, move |msg| {
                if let (Some(room), Message::Text(report)) = (weak.upgrade(), msg) {
                    room.presence(report);
                }
            })
            .unwrap_or_else(|e| panic!("{e}"));
    }
    let mut engine = Engine::builder()
        .listen(opts.addr.clone())
        .max_connections(10_000)
        .max_outbound_bytes(opts.max_outbound)
        .write_timeout(Some(Duration::from_secs(10)));
    match (&opts.tls_cert, &opts.tls_key) {
        (Some(cert), Some(key)) => {
            let read = |path: &str| std::fs::read(path).unwrap_or_else(|e| panic!("{path}: {e}"));
            let config = netpoll::tls::server_config(&read(cert), &read(key))
                .unwrap_or_else(|e| panic!("{e}"));
            engine = engine.tls(config);
        }
        (None, None) => {}
        _ => panic!("--tls-cert and --tls-key go together"),
    }
    WsServer::builder()
        // Browsers offer permessage-deflate: chat text compresses well.
        .deflate(netpoll::ws::deflate::DeflateConfig::default())
        .max_message_size(4096)
        .idle_timeout(Some(Duration::from_secs(30)))
        .pong_timeout(Duration::from_secs(10))
        .start(engine, {
            let room = room.clone();
            move |_| Chat { room: room.clone() }
        })
        .inspect(|server| {
            if room.nodes.is_some() {
                let weak = Arc::downgrade(&room);
                server.every(Duration::from_secs(2), move || {
                    if let Some(room) = weak.upgrade() {
                        room.report_presence();
                    }
                });
            }
        })
        .unwrap_or_else(|e| panic!("cannot start: {e}"))
}

fn main() {
    let mut opts = Options::default();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let v = args.next().unwrap_or_else(|| panic!("{a} needs a value"));
        match a.as_str() {
            "--addr" => opts.addr = v,
            "--history" => opts.history = v.parse().expect("--history N"),
            "--history-bytes" => opts.history_bytes = v.parse().expect("--history-bytes N"),
            "--rate" => opts.rate = v.parse().expect("--rate N"),
            "--burst" => opts.burst = v.parse().expect("--burst N"),
            "--origin" => opts.origins.push(v),
            "--tls-cert" => opts.tls_cert = Some(v),
            "--tls-key" => opts.tls_key = Some(v),
            "--redis" | "--nats" => opts.broker = Some(v),
            other => panic!("unknown flag {other}"),
        }
    }
    serve_until_signal(opts);
}

/// Serves until Ctrl-C or SIGTERM: then everyone gets 1001 Going Away and queued messages
/// flush (up to 5 s).
fn serve_until_signal(opts: Options) {
    let scheme = if opts.tls_cert.is_some() {
        "https"
    } else {
        "http"
    };
    let server = start(opts);
    println!("listening on {}", server.local_addrs()[0]);
    println!(
        "open {scheme}://{}/ in two browser tabs",
        server.local_addrs()[0]
    );
    server
        .shutdown_on_signals(Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("cannot watch for signals: {e}"));
    let stats = server.wait();
    println!("stopped: {stats}");
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{SocketAddr, TcpStream};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::thread;
    use tungstenite::client::IntoClientRequest;

    type Client = tungstenite::WebSocket<TcpStream>;

    #[test]
    fn nicks_and_json() {
        assert_eq!(nick_from_query("nick=al%C3%AFce"), Some("alïce".into()));
        assert_eq!(nick_from_query("x=1&nick=bob_2"), Some("bob_2".into()));
        assert_eq!(nick_from_query("nick="), None);
        assert_eq!(nick_from_query("nick=%3Cscript%3E"), None);
        assert_eq!(nick_from_query("nick=%zz"), None);
        assert_eq!(json_string("a\"b\\c\n\u{1}"), r#""a\"b\\c\n\u0001""#);
    }

    #[test]
    fn the_bucket_lets_the_rate_through_refuses_the_excess_and_closes_a_flooder() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut b = Bucket::new(3.0);
        b.at = t0;
        // A burst of 3, then refusals (said once), then 1 a second again.
        for _ in 0..3 {
            assert_eq!(b.take(at(0), 1.0, 3.0), Verdict::Post);
        }
        assert_eq!(b.take(at(0), 1.0, 3.0), Verdict::Refuse { first: true });
        assert_eq!(b.take(at(0), 1.0, 3.0), Verdict::Refuse { first: false });
        assert_eq!(b.take(at(3_000), 1.0, 3.0), Verdict::Post);
        // Flooding: strikes pile up faster than they decay.
        let verdicts: Vec<Verdict> = (0..20).map(|i| b.take(at(3_000 + i), 1.0, 3.0)).collect();
        assert_eq!(verdicts.last(), Some(&Verdict::Close));
    }

    fn serve(opts: Options) -> (WsEngine<Chat>, SocketAddr) {
        let server = start(Options {
            addr: "127.0.0.1:0".into(),
            ..opts
        });
        let addr = server.local_addrs()[0];
        (server, addr)
    }

    fn join(
        addr: SocketAddr,
        nick: &str,
        origin: Option<&str>,
    ) -> Result<Client, tungstenite::Error> {
        let mut req = format!("ws://{addr}/ws?nick={nick}").into_client_request()?;
        if let Some(o) = origin {
            req.headers_mut().insert("origin", o.parse().unwrap());
        }
        let stream = TcpStream::connect(addr)?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        match tungstenite::client::client(req, stream) {
            Ok((ws, _)) => Ok(ws),
            Err(tungstenite::HandshakeError::Failure(e)) => Err(e),
            Err(e) => panic!("{e}"),
        }
    }

    fn text_of(m: tungstenite::Message) -> Option<String> {
        match m {
            tungstenite::Message::Text(t) => Some(t.to_string()),
            _ => None,
        }
    }

    /// A raw client that joins as "flood", reads and decodes everything it is sent in a thread
    /// (which returns the close code it got), and sends text messages as fast as the server
    /// takes them for `secs`; returns the thread and how many it sent.
    fn flood(addr: SocketAddr, secs: Duration) -> (thread::JoinHandle<Option<u16>>, usize) {
        use netpoll::ws::frame::{Data, Decoder, Event, Flow, Limits, OpCode, Role, encode_frame};
        use std::io::{Read, Write};
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(
            format!(
                "GET /ws?nick=flood HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\n\
                 Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
                 Sec-WebSocket-Version: 13\r\n\r\n"
            )
            .as_bytes(),
        )
        .unwrap();
        let mut r = s.try_clone().unwrap();
        r.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let reader = thread::spawn(move || {
            let mut kept: Vec<u8> = Vec::new();
            let mut buf = vec![0u8; 64 * 1024];
            let mut decoder = Decoder::new();
            // Skip the 101 response's head.
            while !kept.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = r.read(&mut buf).ok().filter(|&n| n > 0)?;
                kept.extend_from_slice(&buf[..n]);
            }
            let head = kept.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
            kept.drain(..head);
            loop {
                let mut code = None;
                let d = decoder
                    .decode(&mut kept, Role::Client, &Limits::default(), |e| {
                        if let Event::Close { code: c, .. } = e {
                            code = Some(c.map_or(1005, u16::from));
                        }
                        Flow::Continue
                    })
                    .ok()?;
                kept.drain(..d.consumed);
                if code.is_some() {
                    return code;
                }
                let n = r.read(&mut buf).ok().filter(|&n| n > 0)?;
                kept.extend_from_slice(&buf[..n]);
            }
        });
        let mut batch = Vec::new();
        for _ in 0..64 {
            encode_frame(
                &mut batch,
                OpCode::Data(Data::Text),
                true,
                b"spam",
                Some([1, 2, 3, 4]),
            );
        }
        let (t0, mut sent) = (Instant::now(), 0);
        while t0.elapsed() < secs && s.write_all(&batch).is_ok() {
            sent += 64;
        }
        (reader, sent)
    }

    /// Issue 13.4: one client flooding the room must be the one cut off, not the readers. Each
    /// reader takes 1 ms per message: plenty for a chat, far too little for a flood.
    #[test]
    fn a_flooder_is_cut_off_while_readers_keep_up() {
        let (_server, addr) = serve(Options::default());
        let stop = Arc::new(AtomicBool::new(false));
        let readers: Vec<_> = (0..10)
            .map(|i| {
                let mut ws = join(addr, &format!("reader{i}"), None).unwrap();
                ws.get_mut()
                    .set_read_timeout(Some(Duration::from_millis(100)))
                    .unwrap();
                let stop = stop.clone();
                thread::spawn(move || {
                    let mut from_flooder = 0;
                    while !stop.load(Ordering::Relaxed) {
                        match ws.read() {
                            Ok(tungstenite::Message::Close(f)) => {
                                return Err(f.map(|f| u16::from(f.code)));
                            }
                            Ok(m) => {
                                if text_of(m).is_some_and(|t| t.contains(r#""nick":"flood""#)) {
                                    from_flooder += 1;
                                }
                                thread::sleep(Duration::from_millis(1));
                            }
                            Err(tungstenite::Error::Io(e))
                                if e.kind() == std::io::ErrorKind::WouldBlock
                                    || e.kind() == std::io::ErrorKind::TimedOut => {}
                            Err(e) => return Err(Some(9999)).inspect_err(|_| eprintln!("{e}")),
                        }
                    }
                    Ok(from_flooder)
                })
            })
            .collect();
        // The flooder reads everything it is sent, as fast as it comes (so the room's slow
        // policy cannot be what stops it), and writes frames as fast as the server takes them.
        let (flood_close, sent) = flood(addr, Duration::from_secs(3));
        let code = flood_close.join().unwrap();
        thread::sleep(Duration::from_millis(500));
        stop.store(true, Ordering::Relaxed);
        let results: Vec<_> = readers.into_iter().map(|r| r.join().unwrap()).collect();
        eprintln!("flooder sent {sent}, closed with {code:?}; readers {results:?}");
        assert_eq!(code, Some(1008), "the flooder is closed for flooding");
        for r in results {
            let got = r.expect("a reader was closed");
            assert!(got >= 1, "the flooder's first messages reached the readers");
        }
    }

    /// Issue 13.4: history is bounded by bytes as well as count, so that its replay always
    /// fits the newcomer's outbound limit; nothing is dropped silently. Each message here is
    /// ~24 KB once JSON-escaped (4,000 control characters).
    #[test]
    fn history_is_bounded_by_bytes_and_replayed_whole() {
        let opts = Options {
            rate: 1000.0,
            burst: 1000.0,
            ..Options::default()
        };
        let history_bytes = opts.history_bytes;
        let (_server, addr) = serve(opts);
        let mut sender = join(addr, "old", None).unwrap();
        let filler = "\u{1}".repeat(4000);
        // One at a time, each read back before the next, so that the sender (a member too)
        // never falls behind the room and gets closed as slow.
        for i in 0..50 {
            sender
                .send(tungstenite::Message::text(format!("{i}:{filler}")))
                .unwrap();
            loop {
                let t = text_of(sender.read().unwrap()).unwrap_or_default();
                if t.contains(&format!(r#""text":"{i}:"#)) {
                    break;
                }
            }
        }
        let mut newcomer = join(addr, "new", None).unwrap();
        let mut got = Vec::new();
        let mut bytes = 0;
        loop {
            let t = text_of(newcomer.read().unwrap()).unwrap_or_default();
            if t.contains(r#""type":"join""#) {
                break;
            }
            bytes += t.len();
            let index: usize = t
                .split(r#""text":""#)
                .nth(1)
                .unwrap()
                .split(':')
                .next()
                .unwrap()
                .parse()
                .unwrap();
            got.push(index);
        }
        eprintln!("replayed {got:?} ({bytes} B)");
        assert!(bytes <= history_bytes);
        assert_eq!(got.last(), Some(&49), "the newest message is there");
        assert!(got.len() >= 5, "as many as fit in {history_bytes} B");
        assert!(
            got.windows(2).all(|w| w[1] == w[0] + 1),
            "none missing: {got:?}"
        );
    }

    #[test]
    fn only_the_pages_own_origin_or_a_listed_one_may_connect() {
        let opts = Options {
            origins: vec!["https://chat.example".into()],
            ..Options::default()
        };
        let (_server, addr) = serve(opts);
        assert!(join(addr, "a", None).is_ok(), "not a browser");
        assert!(
            join(addr, "b", Some(&format!("http://{addr}"))).is_ok(),
            "the page's own"
        );
        assert!(
            join(addr, "c", Some("https://chat.example")).is_ok(),
            "listed"
        );
        match join(addr, "d", Some("https://evil.example")) {
            Err(tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), 403),
            other => panic!("expected 403, got {other:?}"),
        }
    }

    #[test]
    fn the_page_and_the_chat_work_over_https_and_wss() {
        use std::io::{Read, Write};
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let dir = std::env::temp_dir().join(format!("netpoll-chat-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
        std::fs::write(&cert_path, cert.cert.pem()).unwrap();
        std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();
        let (_server, addr) = serve(Options {
            tls_cert: Some(cert_path.to_string_lossy().into()),
            tls_key: Some(key_path.to_string_lossy().into()),
            ..Options::default()
        });
        let client_config =
            netpoll::tls::client_config_with_ca(cert.cert.pem().as_bytes()).unwrap();
        let tls = || {
            let tcp = TcpStream::connect(addr).unwrap();
            tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let name = "localhost".try_into().unwrap();
            let conn =
                netpoll::tls::rustls::ClientConnection::new(client_config.clone(), name).unwrap();
            netpoll::tls::rustls::StreamOwned::new(conn, tcp)
        };
        // The page over https://.
        let mut page = tls();
        page.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut body = Vec::new();
        let _ = page.read_to_end(&mut body);
        let body = String::from_utf8_lossy(&body);
        assert!(
            body.starts_with("HTTP/1.1 200") && body.contains("wss"),
            "{body}"
        );
        // A member over wss:// sees its own message.
        let url = format!("wss://localhost:{}/ws?nick=secure", addr.port());
        let (mut ws, _) = tungstenite::client::client(url, tls()).unwrap();
        ws.send(tungstenite::Message::text("over tls")).unwrap();
        loop {
            let t = text_of(ws.read().unwrap()).unwrap_or_default();
            if t.contains(r#""text":"over tls""#) {
                break;
            }
        }
        let _ = std::fs::remove_dir_all(dir);
    }

    /// Run as a child process by the test below (the signal handlers it installs must not
    /// touch the test process itself): serves until a signal.
    #[test]
    #[ignore = "the child process of ctrl_c_says_going_away_to_every_member_and_exits_cleanly"]
    fn serve_until_signal_child() {
        if std::env::var_os("NETPOLL_CHAT_CHILD").is_some() {
            serve_until_signal(Options {
                addr: "127.0.0.1:0".into(),
                ..Options::default()
            });
        }
    }

    #[test]
    fn ctrl_c_says_going_away_to_every_member_and_exits_cleanly() {
        use std::io::BufRead;
        use std::process::{Command, Stdio};
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "tests::serve_until_signal_child",
                "--ignored",
                "--nocapture",
            ])
            .env("NETPOLL_CHAT_CHILD", "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let out = child.stdout.take().unwrap();
        thread::spawn(move || {
            for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let wait_line = |prefix: &str| loop {
            let line = rx
                .recv_timeout(Duration::from_secs(30))
                .unwrap_or_else(|_| panic!("the server never printed {prefix:?}"));
            if let Some(rest) = line.strip_prefix(prefix) {
                return rest.trim().to_string();
            }
        };
        let addr: SocketAddr = wait_line("listening on ").parse().unwrap();
        let mut members: Vec<Client> = ["ann", "bob"]
            .iter()
            .map(|nick| join(addr, nick, None).expect("join"))
            .collect();
        for m in &mut members {
            m.read().expect("a first message");
        }
        let sent = Command::new("kill")
            .args(["-INT", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(sent.success());
        for m in &mut members {
            let code = loop {
                match m.read() {
                    Ok(tungstenite::Message::Close(Some(frame))) => break u16::from(frame.code),
                    Ok(_) => continue,
                    Err(e) => panic!("no close frame: {e}"),
                }
            };
            assert_eq!(code, 1001, "Going Away");
            let _ = m.flush(); // tungstenite's answer
        }
        let stopped = wait_line("stopped: ");
        assert!(stopped.contains("shutdown=2"), "{stopped}");
        let t0 = Instant::now();
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "the server did not exit"
            );
            thread::sleep(Duration::from_millis(20));
        };
        assert!(status.success(), "{status}");
    }
}
