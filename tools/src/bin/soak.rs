//! Soak run: the WebSocket server (`examples/ws_echo`, in its own process) under a mix of
//! clients for a set time, then checks that nothing leaked and nothing was lost.
//!
//! ```text
//! cargo build --release --example ws_echo -p netpoll-tools --bin soak
//! ./target/release/soak --duration 60 [--warmup 20] [--server PATH] [--echo 200]
//!     [--listeners 200] [--slow 4] [--vanish 6] [--garbage 4] [--churn 6] [--sources 16]
//!     [--report-every SECS]
//! ```
//!
//! The mix, all at once:
//! - echo: netpoll WebSocket clients sending numbered messages of varying size (a window of
//!   4 in flight each) and checking every echo, in order, byte for byte;
//! - broadcast: listeners on `/broadcast` and one sender 50 times a second (1 KiB); every
//!   listener must get every message from its first one on, without a gap;
//! - slow readers: raw clients that push messages at `/echo` and never read (the server must
//!   cut them off at its outbound limit); `/broadcast` members that keep their heartbeat up
//!   but read at 20 KB/s (the server must drop messages for them and keep them) or not at
//!   all (its write deadline must close them);
//! - vanishing clients: one message, then either a reset or silence (not answering pings) -
//!   the server's heartbeat must close the silent ones within idle + pong timeout;
//! - garbage: random bytes instead of a request, or after a valid upgrade - the server must
//!   close within its handshake or heartbeat timeouts;
//! - churn: tungstenite clients that connect, echo one message and close (properly, or by
//!   dropping the socket), over and over.
//!
//! A warm-up round of the same mix runs first (20 s by default), so the server's pools, slab
//! and allocator arenas have grown to their working size; its RSS after the warm-up (all clients gone) is
//! the baseline. At the end, with every client gone, the server must have no open connection
//! and as many descriptors as at the baseline, its counters must add up (accepted = closed =
//! freed, no handler panic), and its RSS must be within 10% of the baseline. Exits non-zero
//! when a check fails.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use netpoll::Engine;
use netpoll::ws::frame::{Control, Data, OpCode, encode_frame};
use netpoll::ws::{
    CloseCode, Connect, ConnectError, Message, Request, Upgrade, WsClose, WsConn, WsHandler,
};

/// Server settings the checks below rely on.
const IDLE_TIMEOUT: f64 = 2.0;
const PONG_TIMEOUT: f64 = 1.0;
const HANDSHAKE_TIMEOUT: f64 = 2.0;
const WRITE_TIMEOUT: f64 = 2.0;
const MAX_MESSAGE: usize = 64 * 1024;
const MAX_WRITE_BUFFER: usize = 256 * 1024;
/// The server's kernel send buffer: small, so a stalled reader reaches the engine's queue in
/// seconds rather than after megabytes of kernel buffering.
const SEND_BUFFER: usize = 32 * 1024;
/// Broadcast messages: 50 a second of this size (51 KB/s per member).
const BROADCAST_SIZE: usize = 1024;
/// How long a misbehaving client may take to be closed: the longest timeout chain (idle +
/// pong, or a handshake) plus generous slack for a loaded machine.
const CUT_OFF_WITHIN: Duration = Duration::from_secs(8);

struct Options {
    duration: Duration,
    warmup: Duration,
    server: String,
    echo: usize,
    listeners: usize,
    slow: usize,
    vanish: usize,
    garbage: usize,
    churn: usize,
    sources: u8,
    report_every: Duration,
}

impl Options {
    fn parse() -> Options {
        let exe = std::env::current_exe().expect("own path");
        let mut o = Options {
            duration: Duration::from_secs(60),
            warmup: Duration::from_secs(20),
            // ws_echo is one of netpoll's examples, built into `examples/` beside this binary.
            server: exe
                .with_file_name("examples")
                .join("ws_echo")
                .to_string_lossy()
                .into_owned(),
            echo: 200,
            listeners: 200,
            slow: 4,
            vanish: 6,
            garbage: 4,
            churn: 6,
            sources: 16,
            report_every: Duration::from_secs(60),
        };
        let mut args = std::env::args().skip(1);
        while let Some(flag) = args.next() {
            let value = args
                .next()
                .unwrap_or_else(|| panic!("{flag} needs a value"));
            let n = || -> usize { value.parse().unwrap_or_else(|_| panic!("{flag}: a number")) };
            match flag.as_str() {
                "--duration" => o.duration = Duration::from_secs(n() as u64),
                "--warmup" => o.warmup = Duration::from_secs(n() as u64),
                "--server" => o.server = value.clone(),
                "--echo" => o.echo = n(),
                "--listeners" => o.listeners = n(),
                "--slow" => o.slow = n(),
                "--vanish" => o.vanish = n(),
                "--garbage" => o.garbage = n(),
                "--churn" => o.churn = n(),
                "--sources" => o.sources = n().clamp(1, 250) as u8,
                "--report-every" => o.report_every = Duration::from_secs(n().max(1) as u64),
                _ => panic!("unknown flag {flag}"),
            }
        }
        o
    }
}

// ---------------------------------------------------------------------------------------
// The server process

struct Server {
    child: Child,
    stdin: ChildStdin,
    lines: Receiver<String>,
    addr: SocketAddr,
}

impl Server {
    fn start(path: &str) -> Server {
        let secs = |s: f64| s.to_string();
        let mut child = Command::new(path)
            .args(["--control", "--addr", "127.0.0.1:0", "--pollers", "2"])
            .args(["--idle-timeout", &secs(IDLE_TIMEOUT)])
            .args(["--pong-timeout", &secs(PONG_TIMEOUT)])
            .args(["--handshake-timeout", &secs(HANDSHAKE_TIMEOUT)])
            .args(["--write-timeout", &secs(WRITE_TIMEOUT)])
            .args(["--max-message", &MAX_MESSAGE.to_string()])
            .args(["--max-write-buffer", &MAX_WRITE_BUFFER.to_string()])
            .args(["--send-buffer", &SEND_BUFFER.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot run {path}: {e} (build it: cargo build --release --example ws_echo)")
            });
        let stdin = child.stdin.take().expect("piped");
        let stdout = BufReader::new(child.stdout.take().expect("piped"));
        let (tx, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in stdout.lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let first = lines
            .recv_timeout(Duration::from_secs(10))
            .expect("server prints its address");
        let addr = first
            .strip_prefix("listening on ")
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("unexpected first line {first:?}"));
        Server {
            child,
            stdin,
            lines,
            addr,
        }
    }

    fn command(&mut self, cmd: &str) -> HashMap<String, u64> {
        writeln!(self.stdin, "{cmd}").expect("server alive");
        let line = self
            .lines
            .recv_timeout(Duration::from_secs(20))
            .expect("server answers");
        let fields = line.strip_prefix("stats ").expect("a stats line");
        fields
            .split_whitespace()
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_string(), v.parse().expect("a number")))
            .collect()
    }

    fn stats(&mut self) -> HashMap<String, u64> {
        self.command("stats")
    }

    fn rss_kib(&self) -> u64 {
        netpoll_tools::rss_kib(self.child.id())
    }

    fn fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.child.id()))
            .map(|d| d.count())
            .expect("server running")
    }

    /// Waits until the server has no open connection and has released every socket;
    /// returns its counters then.
    fn wait_idle(&mut self, limit: Duration) -> HashMap<String, u64> {
        let end = Instant::now() + limit;
        loop {
            let s = self.stats();
            if (s["open"] == 0 && s["freed"] == s["accepted"]) || Instant::now() > end {
                return s;
            }
            thread::sleep(Duration::from_millis(100));
        }
    }
}

// ---------------------------------------------------------------------------------------
// Well-behaved clients on netpoll's own WebSocket client

#[derive(Default)]
struct EchoTrack {
    sent: AtomicU64,
    received: AtomicU64,
    bad: AtomicU64,
}

#[derive(Default)]
struct ListenTrack {
    first: AtomicU64,
    last: AtomicU64,
    received: AtomicU64,
    gaps: AtomicU64,
    bad: AtomicU64,
}

enum Role {
    Echo(u32, Arc<EchoTrack>),
    Listen(Arc<ListenTrack>),
}

#[derive(Default)]
struct Shared {
    stopping: AtomicBool,
    unexpected_closes: AtomicU64,
    connect_errors: AtomicU64,
    opened: Mutex<Vec<WsConn>>,
}

struct Client {
    shared: Arc<Shared>,
}

/// Echo message `seq` of client `id`: seq, id and length, then a pattern of both.
fn echo_message(id: u32, seq: u64, out: &mut Vec<u8>) {
    let len = 16 + ((seq * 7919 + u64::from(id) * 31) % 4000) as usize;
    out.clear();
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&id.to_le_bytes());
    out.extend_from_slice(&(len as u32).to_le_bytes());
    out.extend((16..len).map(|i| (i as u64 ^ seq ^ u64::from(id)) as u8));
}

impl WsHandler for Client {
    type State = Role;

    fn on_request(&mut self, _: &Request<'_>) -> Upgrade<Role> {
        Upgrade::not_found() // a client only
    }

    fn on_open(&mut self, conn: &WsConn, _: &mut Role) {
        self.shared.opened.lock().unwrap().push(conn.clone());
    }

    fn on_message(&mut self, _: &WsConn, role: &mut Role, msg: Message<'_>) {
        let b = msg.as_bytes();
        match role {
            Role::Echo(id, track) => {
                let seq = track.received.load(Ordering::Relaxed);
                let mut want = Vec::new();
                echo_message(*id, seq, &mut want);
                if b != want {
                    track.bad.fetch_add(1, Ordering::Relaxed);
                }
                track.received.store(seq + 1, Ordering::Release);
            }
            Role::Listen(track) => {
                let Some(seq) = b
                    .get(..8)
                    .map(|s| u64::from_le_bytes(s.try_into().unwrap()))
                else {
                    track.bad.fetch_add(1, Ordering::Relaxed);
                    return;
                };
                if b.len() != BROADCAST_SIZE || b[8..].iter().any(|&x| x != seq as u8) {
                    track.bad.fetch_add(1, Ordering::Relaxed);
                }
                if track.received.fetch_add(1, Ordering::Relaxed) == 0 {
                    track.first.store(seq, Ordering::Relaxed);
                } else if seq != track.last.load(Ordering::Relaxed) + 1 {
                    track.gaps.fetch_add(1, Ordering::Relaxed);
                }
                track.last.store(seq, Ordering::Release);
            }
        }
    }

    fn on_close(&mut self, _: &WsConn, _: Role, close: WsClose) {
        if !self.shared.stopping.load(Ordering::Relaxed) {
            eprintln!("soak: a well-behaved client was closed: {close:?}");
            self.shared
                .unexpected_closes
                .fetch_add(1, Ordering::Relaxed);
        }
    }

    fn on_connect_error(&mut self, _: Role, error: ConnectError) {
        eprintln!("soak: connect error: {error}");
        self.shared.connect_errors.fetch_add(1, Ordering::Relaxed);
    }
}

fn source(o: &Options, i: usize) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1 + (i % usize::from(o.sources)) as u8], 0))
}

// ---------------------------------------------------------------------------------------
// Misbehaving and short-lived clients, each kind a few threads of blocking sockets

#[derive(Default)]
struct Tally {
    cycles: AtomicU64,
    failures: AtomicU64,
}

impl Tally {
    fn fail(&self, what: std::fmt::Arguments<'_>) {
        eprintln!("soak: {what}");
        self.failures.fetch_add(1, Ordering::Relaxed);
    }
}

fn connect_from(addr: SocketAddr, from: SocketAddr) -> std::io::Result<TcpStream> {
    connect_with(addr, from, None)
}

/// Connects from `from`, with a receive buffer of `rcvbuf` bytes if given (set before the
/// connect, so the advertised window is small from the start).
fn connect_with(
    addr: SocketAddr,
    from: SocketAddr,
    rcvbuf: Option<usize>,
) -> std::io::Result<TcpStream> {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    if let Some(n) = rcvbuf {
        s.set_recv_buffer_size(n)?;
    }
    s.bind(&from.into())?;
    s.connect(&addr.into())?;
    let s: TcpStream = s.into();
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(Duration::from_secs(15)))?;
    s.set_write_timeout(Some(Duration::from_secs(15)))?;
    Ok(s)
}

const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

fn masked_frame(kind: OpCode, payload: &[u8]) -> Vec<u8> {
    let mut frame = Vec::new();
    encode_frame(&mut frame, kind, true, payload, Some(MASK));
    frame
}

/// A raw client upgraded on `path` (the 101 consumed).
fn raw_upgrade(addr: SocketAddr, from: SocketAddr, path: &str) -> std::io::Result<TcpStream> {
    upgrade(connect_from(addr, from)?, path)
}

fn upgrade(mut s: TcpStream, path: &str) -> std::io::Result<TcpStream> {
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: soak\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )?;
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if s.read(&mut b)? == 0 {
            return Err(ErrorKind::UnexpectedEof.into());
        }
        head.push(b[0]);
    }
    if !head.starts_with(b"HTTP/1.1 101") {
        return Err(std::io::Error::other("upgrade refused"));
    }
    Ok(s)
}

/// Reads until the server closes; returns how long that took (None: not within `limit`).
fn time_until_closed(s: &mut TcpStream, limit: Duration) -> Option<Duration> {
    let t0 = Instant::now();
    s.set_read_timeout(Some(Duration::from_millis(200))).ok()?;
    let mut buf = [0u8; 16 * 1024];
    while t0.elapsed() < limit {
        match s.read(&mut buf) {
            Ok(0) => return Some(t0.elapsed()),
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return Some(t0.elapsed()), // reset
        }
    }
    None
}

fn reset(s: TcpStream) {
    let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
}

struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// Pushes 16 KiB messages at `/echo` and never reads: the server's queue passes its limit
/// and it must cut the client off.
fn slow_echo_reader(addr: SocketAddr, from: SocketAddr, tally: &Tally) {
    let Ok(mut s) = raw_upgrade(addr, from, "/echo") else {
        return tally.fail(format_args!("slow reader could not connect"));
    };
    let frame = masked_frame(OpCode::Data(Data::Binary), &[7u8; 16 * 1024]);
    let _ = s.set_write_timeout(Some(Duration::from_millis(200)));
    let t0 = Instant::now();
    while t0.elapsed() < CUT_OFF_WITHIN {
        match s.write(&frame) {
            Ok(_) => {}
            // Our send buffer is full: the server stopped reading too. Keep trying.
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => {
                tally.cycles.fetch_add(1, Ordering::Relaxed);
                return; // cut off (reset or broken pipe)
            }
        }
    }
    tally.fail(format_args!(
        "slow /echo reader not cut off in {CUT_OFF_WITHIN:?}"
    ));
}

/// Joins `/broadcast` with a small receive buffer and keeps its heartbeat alive with
/// unsolicited pongs (RFC 6455 5.5.3), but reads slowly (`trickle`: 20 KB/s, below the
/// broadcast rate, so the server must drop messages for it) or not at all (the server's write
/// deadline must close it).
fn slow_broadcast_member(
    addr: SocketAddr,
    from: SocketAddr,
    trickle: bool,
    stop: &AtomicBool,
    tally: &Tally,
) {
    let member = connect_with(addr, from, Some(4096)).and_then(|s| upgrade(s, "/broadcast"));
    let Ok(mut s) = member else {
        return tally.fail(format_args!("slow member could not connect"));
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(50)));
    let pong = masked_frame(OpCode::Control(Control::Pong), b"");
    let mut buf = [0u8; 2048];
    let t0 = Instant::now();
    let mut last_pong = t0;
    let mut closed = false;
    while t0.elapsed() < Duration::from_secs(15) && !stop.load(Ordering::Relaxed) && !closed {
        thread::sleep(Duration::from_millis(100));
        if last_pong.elapsed() >= Duration::from_millis(500) {
            closed |= s.write_all(&pong).is_err();
            last_pong = Instant::now();
        }
        if trickle {
            match s.read(&mut buf) {
                Ok(0) => closed = true,
                Ok(_) => {}
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(_) => closed = true,
            }
        }
    }
    if trickle && closed {
        // It made progress and kept its heartbeat: the server must keep it (and drop).
        return tally.fail(format_args!("slow but live /broadcast member was closed"));
    }
    if !trickle && !closed {
        // Stuck since the start: the write deadline (2 s) must have closed it by now.
        if t0.elapsed() >= Duration::from_secs(8)
            && time_until_closed(&mut s, Duration::from_secs(1)).is_none()
        {
            return tally.fail(format_args!("stuck /broadcast member not closed"));
        }
    }
    tally.cycles.fetch_add(1, Ordering::Relaxed);
}

/// One echo, then a reset or silence; a silent client must be closed by the heartbeat.
fn vanisher(addr: SocketAddr, from: SocketAddr, silent: bool, tally: &Tally) {
    let Ok(mut s) = raw_upgrade(addr, from, "/echo") else {
        return tally.fail(format_args!("vanisher could not connect"));
    };
    if s.write_all(&masked_frame(OpCode::Data(Data::Text), b"here, for now"))
        .is_err()
    {
        return tally.fail(format_args!("vanisher could not send"));
    }
    let mut echo = [0u8; 15];
    if s.read_exact(&mut echo).is_err() || &echo[2..] != b"here, for now" {
        return tally.fail(format_args!("vanisher got no echo"));
    }
    if !silent {
        reset(s);
        tally.cycles.fetch_add(1, Ordering::Relaxed);
        return;
    }
    // Reads (the server's ping, then its close) but never answers.
    match time_until_closed(&mut s, CUT_OFF_WITHIN) {
        Some(_) => {
            tally.cycles.fetch_add(1, Ordering::Relaxed);
        }
        None => tally.fail(format_args!(
            "silent client not closed in {CUT_OFF_WITHIN:?}"
        )),
    }
}

/// Random bytes instead of a request, or after a valid upgrade: the server must close.
fn garbage(addr: SocketAddr, from: SocketAddr, rng: &mut XorShift, tally: &Tally) {
    let upgraded = rng.next().is_multiple_of(2);
    let conn = if upgraded {
        raw_upgrade(addr, from, "/echo")
    } else {
        connect_from(addr, from)
    };
    let Ok(mut s) = conn else {
        return tally.fail(format_args!("garbage client could not connect"));
    };
    let junk: Vec<u8> = (0..2048).map(|_| rng.next() as u8).collect();
    let _ = s.write_all(&junk); // the server may close before it has read it all
    match time_until_closed(&mut s, CUT_OFF_WITHIN) {
        Some(_) => {
            tally.cycles.fetch_add(1, Ordering::Relaxed);
        }
        None => tally.fail(format_args!(
            "garbage ({}) not closed in {CUT_OFF_WITHIN:?}",
            if upgraded {
                "after upgrade"
            } else {
                "as request"
            }
        )),
    }
}

/// A tungstenite client: connect, echo one message, close properly or drop the socket.
fn churn(addr: SocketAddr, from: SocketAddr, n: u64, tally: &Tally) {
    use tungstenite::Message as T;
    let result = (|| -> Result<(), String> {
        let s = connect_from(addr, from).map_err(|e| e.to_string())?;
        let (mut ws, _) = tungstenite::client::client(format!("ws://{addr}/echo"), s)
            .map_err(|e| format!("handshake: {e}"))?;
        let text = format!("churn {n}");
        ws.send(T::text(text.clone())).map_err(|e| e.to_string())?;
        match ws.read().map_err(|e| e.to_string())? {
            T::Text(t) if t.as_str() == text => {}
            other => return Err(format!("wrong echo {other:?}")),
        }
        if !n.is_multiple_of(3) {
            ws.close(None).map_err(|e| e.to_string())?;
            loop {
                match ws.read() {
                    Ok(_) => {}
                    Err(tungstenite::Error::ConnectionClosed) => break,
                    Err(e) => return Err(format!("closing: {e}")),
                }
            }
        }
        Ok(())
    })();
    match result {
        Ok(()) => {
            tally.cycles.fetch_add(1, Ordering::Relaxed);
        }
        Err(e) => tally.fail(format_args!("churn client failed: {e}")),
    }
}

// ---------------------------------------------------------------------------------------
// One round of the mix

#[derive(Default)]
struct Round {
    echo_sent: u64,
    echo_received: u64,
    broadcasts: u64,
    deliveries: u64,
    slow_echo: Tally,
    slow_members: Tally,
    vanish: Tally,
    garbage: Tally,
    churn: Tally,
    failures: Vec<String>,
}

fn run_round(o: &Options, addr: SocketAddr, length: Duration) -> Round {
    let shared = Arc::new(Shared::default());
    let engine = netpoll::ws::WsServer::builder()
        .idle_timeout(None)
        .start(
            Engine::builder()
                .pollers(1)
                .max_connections(o.echo + o.listeners + 64),
            {
                let shared = shared.clone();
                move |_| Client {
                    shared: shared.clone(),
                }
            },
        )
        .expect("client engine");
    let mut round = Round::default();

    // Long-lived, well-behaved clients.
    let echoes: Vec<Arc<EchoTrack>> = (0..o.echo).map(|_| Arc::default()).collect();
    let listeners: Vec<Arc<ListenTrack>> = (0..o.listeners).map(|_| Arc::default()).collect();
    let mut echo_conns = Vec::new();
    for (i, track) in echoes.iter().enumerate() {
        let opts = Connect::new(Role::Echo(i as u32, track.clone())).local_addr(source(o, i));
        echo_conns.push(
            engine
                .connect(&format!("ws://{addr}/echo"), opts)
                .expect("connect"),
        );
    }
    for (i, track) in listeners.iter().enumerate() {
        let opts = Connect::new(Role::Listen(track.clone())).local_addr(source(o, i + 7));
        engine
            .connect(&format!("ws://{addr}/broadcast"), opts)
            .expect("connect");
    }
    let sender_track = Arc::new(ListenTrack::default());
    let sender = engine
        .connect(
            &format!("ws://{addr}/broadcast"),
            Connect::new(Role::Listen(sender_track.clone())),
        )
        .expect("connect");
    let want_open = o.echo + o.listeners + 1;
    let t0 = Instant::now();
    while shared.opened.lock().unwrap().len() < want_open {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "clients did not connect"
        );
        assert_eq!(
            shared.connect_errors.load(Ordering::Relaxed),
            0,
            "connect errors"
        );
        thread::sleep(Duration::from_millis(10));
    }

    // The misbehaving and short-lived ones, each kind on its own threads.
    let stop = Arc::new(AtomicBool::new(false));
    let tallies = Arc::new([
        Tally::default(), // slow echo
        Tally::default(), // slow members
        Tally::default(), // vanish
        Tally::default(), // garbage
        Tally::default(), // churn
    ]);
    let mut threads: Vec<JoinHandle<()>> = Vec::new();
    let kinds = [
        (0, o.slow.div_ceil(2)),
        (1, o.slow / 2),
        (2, o.vanish),
        (3, o.garbage),
        (4, o.churn),
    ];
    let mut thread_no = 0usize;
    for (kind, count) in kinds {
        for _ in 0..count {
            thread_no += 1;
            let (stop, tallies) = (stop.clone(), tallies.clone());
            let first_source = thread_no;
            let sources = usize::from(o.sources);
            threads.push(thread::spawn(move || {
                let mut rng = XorShift(0x9e37_79b9_7f4a_7c15 ^ first_source as u64);
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let from = SocketAddr::from((
                        [127, 0, 0, 1 + ((first_source + n as usize) % sources) as u8],
                        0,
                    ));
                    let t = &tallies[kind];
                    match kind {
                        0 => slow_echo_reader(addr, from, t),
                        1 => slow_broadcast_member(addr, from, n.is_multiple_of(2), &stop, t),
                        2 => vanisher(addr, from, n.is_multiple_of(2), t),
                        3 => garbage(addr, from, &mut rng, t),
                        _ => churn(addr, from, n, t),
                    }
                    if kind == 4 {
                        thread::sleep(Duration::from_millis(2));
                    }
                }
            }));
        }
    }

    // Drive the echo clients (a window of 4 messages each) and the broadcast sender.
    let mut msg = Vec::new();
    let mut broadcast = vec![0u8; BROADCAST_SIZE];
    let mut next_broadcast = Instant::now();
    let end = Instant::now() + length;
    while Instant::now() < end {
        for (i, (track, conn)) in echoes.iter().zip(&echo_conns).enumerate() {
            let sent = track.sent.load(Ordering::Relaxed);
            if sent - track.received.load(Ordering::Acquire) < 4 {
                echo_message(i as u32, sent, &mut msg);
                if conn.send_binary(&msg).is_ok() {
                    track.sent.store(sent + 1, Ordering::Relaxed);
                }
            }
        }
        if Instant::now() >= next_broadcast {
            let seq = round.broadcasts;
            broadcast[..8].copy_from_slice(&seq.to_le_bytes());
            broadcast[8..].fill(seq as u8);
            if sender.send_binary(&broadcast).is_ok() {
                round.broadcasts += 1;
            }
            next_broadcast += Duration::from_millis(20);
        }
        thread::sleep(Duration::from_millis(5));
    }

    // Stop: the misbehaving threads finish their current client, the echoes drain, every
    // listener catches up with the last broadcast.
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().expect("client thread");
    }
    let settle = Instant::now() + Duration::from_secs(10);
    let settled = || {
        echoes
            .iter()
            .all(|t| t.received.load(Ordering::Acquire) == t.sent.load(Ordering::Relaxed))
            && listeners.iter().chain([&sender_track]).all(|t| {
                t.received.load(Ordering::Relaxed) > 0
                    && t.last.load(Ordering::Acquire) + 1 == round.broadcasts
            })
    };
    while !settled() && Instant::now() < settle {
        thread::sleep(Duration::from_millis(20));
    }
    shared.stopping.store(true, Ordering::Relaxed);
    for conn in shared.opened.lock().unwrap().drain(..) {
        conn.close(CloseCode::Normal, "soak done");
    }
    engine.shutdown(Duration::from_secs(5));

    // Tally.
    for (i, t) in echoes.iter().enumerate() {
        let (s, r, b) = (
            t.sent.load(Ordering::Relaxed),
            t.received.load(Ordering::Relaxed),
            t.bad.load(Ordering::Relaxed),
        );
        round.echo_sent += s;
        round.echo_received += r;
        if s != r || b != 0 || s == 0 {
            round.failures.push(format!(
                "echo client {i}: sent {s}, echoed {r}, corrupt {b}"
            ));
        }
    }
    for (i, t) in listeners.iter().chain([&sender_track]).enumerate() {
        let (first, last, got, gaps, bad) = (
            t.first.load(Ordering::Relaxed),
            t.last.load(Ordering::Relaxed),
            t.received.load(Ordering::Relaxed),
            t.gaps.load(Ordering::Relaxed),
            t.bad.load(Ordering::Relaxed),
        );
        round.deliveries += got;
        if got == 0
            || gaps != 0
            || bad != 0
            || last + 1 != round.broadcasts
            || got != last - first + 1
        {
            round.failures.push(format!(
                "listener {i}: got {got} (seq {first}..={last} of {}), gaps {gaps}, corrupt {bad}",
                round.broadcasts
            ));
        }
    }
    let unexpected = shared.unexpected_closes.load(Ordering::Relaxed);
    if unexpected != 0 {
        round
            .failures
            .push(format!("{unexpected} well-behaved clients were closed"));
    }
    let tallies = Arc::try_unwrap(tallies).unwrap_or_else(|_| unreachable!("threads joined"));
    let [slow_echo, slow_members, vanish, garbage, churn] = tallies;
    for (name, t, want) in [
        ("slow /echo readers", &slow_echo, o.slow > 0),
        ("slow /broadcast members", &slow_members, o.slow > 1),
        ("vanishing clients", &vanish, o.vanish > 0),
        ("garbage clients", &garbage, o.garbage > 0),
        ("churn clients", &churn, o.churn > 0),
    ] {
        let failures = t.failures.load(Ordering::Relaxed);
        if failures > 0 || (want && t.cycles.load(Ordering::Relaxed) == 0) {
            round.failures.push(format!(
                "{name}: {failures} failed, {} done",
                t.cycles.load(Ordering::Relaxed)
            ));
        }
    }
    (
        round.slow_echo,
        round.slow_members,
        round.vanish,
        round.garbage,
        round.churn,
    ) = (slow_echo, slow_members, vanish, garbage, churn);
    round
}

fn report(name: &str, r: &Round, length: Duration) {
    let c = |t: &Tally| t.cycles.load(Ordering::Relaxed);
    println!(
        "{name} ({:.0} s): echoed {}/{} messages; broadcasts {} -> {} deliveries; slow /echo cut \
         off {}; slow members {}; vanished {}; garbage closed {}; churn {} ({:.0}/s)",
        length.as_secs_f64(),
        r.echo_received,
        r.echo_sent,
        r.broadcasts,
        r.deliveries,
        c(&r.slow_echo),
        c(&r.slow_members),
        c(&r.vanish),
        c(&r.garbage),
        c(&r.churn),
        c(&r.churn) as f64 / length.as_secs_f64(),
    );
}

fn main() {
    let o = Options::parse();
    let mut server = Server::start(&o.server);
    let addr = server.addr;
    let boot_rss = server.rss_kib();
    let boot_fds = server.fds();
    println!(
        "soak: server {} at {addr}, RSS {boot_rss} KiB, {boot_fds} descriptors",
        o.server
    );
    let mut failures = Vec::new();

    let warm = run_round(&o, addr, o.warmup);
    report("warm-up", &warm, o.warmup);
    failures.extend(warm.failures.iter().map(|f| format!("warm-up: {f}")));
    let after_warm = server.wait_idle(Duration::from_secs(20));
    let base_rss = server.rss_kib();
    let base_fds = server.fds();
    println!(
        "soak: after the warm-up: RSS {base_rss} KiB (the baseline), {base_fds} descriptors, {} open",
        after_warm["open"]
    );

    let t0 = Instant::now();
    let mut peak_rss = base_rss;
    let main = thread::scope(|s| {
        let round = s.spawn(|| run_round(&o, addr, o.duration));
        let mut next_line = t0 + o.report_every;
        while !round.is_finished() {
            thread::sleep(Duration::from_millis(500));
            let rss = server.rss_kib();
            peak_rss = peak_rss.max(rss);
            if Instant::now() >= next_line {
                println!(
                    "soak: {:.0} s, server RSS {rss} KiB",
                    t0.elapsed().as_secs_f64()
                );
                next_line += o.report_every;
            }
        }
        round.join().expect("round")
    });
    report("soak", &main, o.duration);
    failures.extend(main.failures.iter().cloned());

    let end = server.wait_idle(Duration::from_secs(20));
    let end_rss = server.rss_kib();
    let end_fds = server.fds();
    println!(
        "soak: at the end: RSS {end_rss} KiB ({:+.1}% of the baseline, peak {peak_rss} KiB), \
         {end_fds} descriptors",
        (end_rss as f64 / base_rss as f64 - 1.0) * 100.0
    );
    let keys = [
        "accepted",
        "closed",
        "freed",
        "open",
        "peer_closed",
        "io",
        "overflow",
        "write_timeout",
        "read_timeout",
        "handler_panic",
        "dropped_messages",
        "close_flush_timeouts",
    ];
    let line: Vec<String> = keys.iter().map(|k| format!("{k}={}", end[*k])).collect();
    println!("soak: server counters: {}", line.join(" "));

    if end["open"] != 0 {
        failures.push(format!(
            "{} connections still open on the server",
            end["open"]
        ));
    }
    if end["accepted"] != end["closed"] + end["open"] || end["freed"] != end["closed"] {
        failures.push("server counters do not add up (accepted, closed, freed)".into());
    }
    if end["handler_panic"] != 0 {
        failures.push("a handler panicked".into());
    }
    if end_fds != base_fds {
        failures.push(format!("descriptors {base_fds} -> {end_fds}"));
    }
    if end_rss as f64 > base_rss as f64 * 1.10 {
        failures.push(format!(
            "RSS grew {base_rss} -> {end_rss} KiB (more than 10%)"
        ));
    }
    for k in ["overflow", "write_timeout", "dropped_messages"] {
        if o.slow > 1 && o.duration >= Duration::from_secs(30) && end[k] == 0 {
            failures.push(format!(
                "no {k} on the server: the slow clients were not slow"
            ));
        }
    }

    // A graceful shutdown with nothing open ends at once and cleanly.
    let final_stats = server.command("quit");
    let status = server.child.wait().expect("server exits");
    if !status.success() || final_stats["open"] != 0 {
        failures.push(format!(
            "server shutdown: {status}, {} open",
            final_stats["open"]
        ));
    }

    if failures.is_empty() {
        println!("soak: all checks passed");
    } else {
        for f in &failures {
            println!("soak: FAILED: {f}");
        }
        std::process::exit(1);
    }
}
