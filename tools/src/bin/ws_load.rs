//! WebSocket load generator on netpoll's WebSocket client (`WsEngine::connect`).
//!
//! ```text
//! cargo run --release -p netpoll-tools --bin ws_load -- --url ws://127.0.0.1:9001/echo --conns 1000 \
//!     --size 64 --duration 10 [--mode echo|broadcast] [--rate MSGS_PER_SEC] [--pollers 1]
//!     [--sources 8] [--server-pid PID] [--ca PEM] [--deflate | --deflate-takeover BITS] [--json]
//! ```
//! A `wss://` URL connects over TLS (the server's certificate checked against the URL's IP
//! address; `--ca PEM` names the CA to trust, else the public roots). `--deflate` offers
//! permessage-deflate without context takeover (`DeflateConfig::default()`);
//! `--deflate-takeover BITS` (9..=15) offers it with context takeover and a window of 2^BITS
//! bytes (`DeflateConfig::default().context_takeover(BITS)`), which wins if both are given.
//! `--json` sends JSON-like text instead of one repeated byte (in broadcast mode too). The
//! last line, `wire_bytes_per_msg`, is what crossed the wire per echoed (or delivered)
//! message, both ways.
//!
//! - `echo` (default): closed loop; each connection sends one binary message of `--size`
//!   bytes, waits for its echo, and sends the next. Reports echoed messages per second, the
//!   round-trip latency, and how the echoes spread over the connections (`conn_msgs_*`, and
//!   `top10_share`: the busiest tenth's share, 0.10 when every connection is served alike).
//! - `broadcast`: every connection joins (use a `/broadcast` URL); one connection sends
//!   `--rate` messages per second and every connection, the sender included, receives them.
//!   Reports deliveries per second and the delivery latency (send to receipt).
//! - `idle`: each connection sends one message and waits for its echo, then stays idle. Prints
//!   `ready conns=N connect_secs=S` once every connection has had its echo, then holds the
//!   connections for `--duration` seconds (for measuring a server's memory per connection).
//!
//! Every report has `connect_secs`, the time from the first connect until all were open.
//!
//! Messages carry their send time in the first 8 bytes (`--size` is at least 8). Sockets are
//! spread over source addresses 127.0.0.1..=127.0.0.N with `--sources N`. With
//! `--server-pid` the server's CPU time over the measured window is reported too (repeat it
//! to sum several servers). `--url2 ws://HOST:PORT` sends every other connection to a second
//! server on the same path (two nodes of a bus; the sender is the first to open). `--addr` and
//! `--path` may be given instead of `--url`.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use netpoll::Engine;
use netpoll::ws::{
    Connect, ConnectError, Message, Request, Upgrade, WsClose, WsConn, WsHandler, WsServer,
};
use netpoll_tools::load::{self, Counters, Options, Samples, now_nanos};

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Echo,
    Broadcast,
    Idle,
}

struct Load {
    mode: Mode,
    counters: Arc<Counters>,
    local: u64,
    samples: Samples,
    msg: Vec<u8>,
    /// Broadcast mode: the first connection to open becomes the sender.
    sender: Arc<Mutex<Option<WsConn>>>,
}

impl Load {
    fn send_stamped(&mut self, conn: &WsConn) {
        self.msg[..8].copy_from_slice(&now_nanos().to_le_bytes());
        let _ = conn.send_binary(&self.msg);
    }
}

impl WsHandler for Load {
    /// The connection's index, for its echo count (`Counters::per_conn`).
    type State = usize;

    fn on_request(&mut self, _: &Request<'_>) -> Upgrade<usize> {
        Upgrade::not_found() // a client only
    }

    fn on_open(&mut self, conn: &WsConn, _: &mut usize) {
        self.counters.open.fetch_add(1, Ordering::Relaxed);
        if self.mode != Mode::Broadcast {
            self.send_stamped(conn);
        } else {
            self.sender
                .lock()
                .unwrap()
                .get_or_insert_with(|| conn.clone());
        }
    }

    fn on_message(&mut self, conn: &WsConn, index: &mut usize, msg: Message<'_>) {
        let b = msg.as_bytes();
        if b.len() < 8 {
            return;
        }
        if self.mode == Mode::Idle {
            self.counters.echoed.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let sent = u64::from_le_bytes(b[..8].try_into().unwrap());
        self.samples.record(&self.counters, sent);
        self.counters.count_echo(&mut self.local);
        self.counters.count_conn(*index);
        if self.mode == Mode::Echo {
            self.send_stamped(conn);
        }
    }

    fn on_close(&mut self, _: &WsConn, _: usize, close: WsClose) {
        if !self.counters.stopping.load(Ordering::Relaxed) {
            eprintln!("connection closed during the run: {close:?}");
            self.counters.failed.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn on_connect_error(&mut self, _: usize, error: ConnectError) {
        eprintln!("connect error: {error}");
        self.counters.failed.fetch_add(1, Ordering::Relaxed);
    }
}

fn main() {
    let mut o = Options::parse(9001, true);
    o.size = o.size.max(8);
    let mode = match o.mode.as_str() {
        "echo" => Mode::Echo,
        "broadcast" => Mode::Broadcast,
        "idle" => Mode::Idle,
        m => panic!("--mode echo|broadcast|idle, not {m}"),
    };
    let counters = Arc::new(Counters::default());
    let sender = Arc::new(Mutex::new(None));
    let size = o.size;
    let mut builder = WsServer::builder();
    let deflate = netpoll::ws::deflate::DeflateConfig::default();
    if let Some(bits) = o.deflate_takeover {
        builder = builder.deflate(deflate.context_takeover(bits));
    } else if o.deflate {
        builder = builder.deflate(deflate);
    }
    let body = if o.json {
        json_like(size)
    } else {
        vec![b'x'; size]
    };
    let ws = builder
        .idle_timeout(None)
        .start(
            Engine::builder()
                .pollers(o.pollers)
                .max_connections(o.conns + 16),
            |_| Load {
                mode,
                counters: counters.clone(),
                local: 0,
                samples: Samples::default(),
                msg: body.clone(),
                sender: sender.clone(),
            },
        )
        .expect("start client engine");
    let scheme = if o.tls { "wss" } else { "ws" };
    let url = format!("{scheme}://{}{}", o.addr, o.path);
    // With --url2, every other connection goes to the second server.
    let url2 = o.addr2.map(|a| format!("{scheme}://{a}{}", o.path));
    let tls = match &o.ca {
        Some(path) => {
            let pem = std::fs::read(path).unwrap_or_else(|e| panic!("{path}: {e}"));
            netpoll::tls::client_config_with_ca(&pem).expect("--ca PEM")
        }
        None => netpoll::tls::default_client_config(),
    };
    counters.connect_start.get_or_init(Instant::now);
    let _ = counters
        .per_conn
        .set((0..o.conns).map(|_| Default::default()).collect());
    for i in 0..o.conns {
        let opts = Connect::new(i)
            .local_addr(load::source_addr(&o, i))
            .timeout(Duration::from_secs(30))
            .tls(tls.clone());
        let to = match &url2 {
            Some(second) if i % 2 == 1 => second,
            _ => &url,
        };
        ws.connect(to, opts).expect("connect");
    }
    load::wait_all_open(&o, &counters);
    if mode == Mode::Idle {
        let t0 = Instant::now();
        while counters.echoed.load(Ordering::Relaxed) < o.conns as u64 {
            if t0.elapsed() > Duration::from_secs(60) || counters.failed.load(Ordering::Relaxed) > 0
            {
                eprintln!("not every connection got its echo");
                std::process::exit(1);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let secs = counters.connect_secs.get().copied().unwrap_or(f64::NAN);
        println!("ready conns={} connect_secs={secs:.3}", o.conns);
        std::thread::sleep(Duration::from_secs(o.secs));
        counters.stopping.store(true, Ordering::Relaxed);
        ws.shutdown(Duration::from_secs(1));
        return;
    }
    if mode == Mode::Broadcast {
        // The sender paces itself from this thread.
        let from = sender.lock().unwrap().clone().expect("a sender");
        let interval = Duration::from_secs_f64(1.0 / o.rate.max(0.001));
        let mut msg = if o.json {
            body.clone()
        } else {
            vec![b'b'; size]
        };
        std::thread::spawn(move || {
            let mut next = Instant::now();
            loop {
                msg[..8].copy_from_slice(&now_nanos().to_le_bytes());
                if from.send_binary(&msg).is_err() {
                    return;
                }
                next += interval;
                std::thread::sleep(next.saturating_duration_since(Instant::now()));
            }
        });
    }
    load::measure_and_report(&o, &counters);
    // What crossed the wire per message (both ways, headers included), over the whole run.
    let stats = ws.stats();
    let total = counters.echoed.load(Ordering::Relaxed).max(1);
    println!(
        "wire_bytes_per_msg={:.1}",
        (stats.bytes_in + stats.bytes_out) as f64 / total as f64
    );
    ws.shutdown(Duration::from_secs(1));
}

/// JSON-like text of `n` bytes: quotes, keys, numbers, as market data or chat payloads are.
fn json_like(n: usize) -> Vec<u8> {
    let mut s = String::with_capacity(n + 64);
    let mut i = 0u64;
    while s.len() < n {
        let x = i.wrapping_mul(2_654_435_761) >> 7;
        s.push_str(&format!(
            r#"{{"sym":"S{:03}","bid":{}.{:02},"ask":{}.{:02},"qty":{}}},"#,
            x % 500,
            100 + x % 50,
            x % 100,
            101 + x % 50,
            (x >> 3) % 100,
            x % 10_000
        ));
        i += 1;
    }
    s.truncate(n);
    s.into_bytes()
}
