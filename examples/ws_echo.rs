//! WebSocket echo and broadcast server on netpoll.
//!
//! ```text
//! cargo run --release --example ws_echo -- --addr 127.0.0.1:9001 [--pollers N]
//!     [--max-message BYTES] [--max-write-buffer BYTES] [--max-connections N] [--write-timeout SECS]
//!     [--idle-timeout SECS] [--pong-timeout SECS] [--handshake-timeout SECS] [--stats]
//!     [--send-buffer BYTES] [--events N] [--control] [--tls-cert PEM --tls-key PEM] [--deflate]
//!     [--deflate-takeover BITS] [--redis redis://HOST:PORT | --nats nats://HOST:PORT]
//! ```
//!
//! - `/echo`: every message comes back unchanged (text as text, binary as binary).
//! - `/broadcast`: every message goes to every client connected on `/broadcast`, the sender
//!   included, through a `Group`: the frame is encoded once and the same bytes are queued on
//!   every receiver. A receiver that cannot keep up misses messages (`SlowPolicy::Drop`).
//! - `/`: a WebSocket upgrade echoes like `/echo`; a plain GET gets a short text page.
//! - anything else: 404; a plain GET on `/echo` or `/broadcast` gets 426.
//!
//! With `--deflate` it accepts permessage-deflate offers (no context takeover either way;
//! messages of 64 bytes and more are sent compressed to clients that agreed). With
//! `--deflate-takeover BITS` (9..=15) it keeps context between messages both ways, with
//! windows of 2^BITS bytes.
//!
//! With `--redis URL` (or `--nats URL`) the `/broadcast` group is bound to the channel
//! `netpoll:broadcast` on that Redis (or NATS) server (`netpoll::bus`): every ws_echo on the
//! same server delivers what is broadcast on any of them to its own `/broadcast` clients too.
//!
//! With `--tls-cert` and `--tls-key` (PEM files) it serves `wss://` instead of `ws://` on the
//! same paths (`cargo run -p netpoll-tools --bin gen_cert -- --out DIR` makes a test pair).
//!
//! Prints `listening on ADDR` once ready. Serves until killed. A client that stops reading is
//! cut off when its queue would pass `--max-write-buffer` or its write deadline passes.
//! Defaults: messages up to 1 MiB (`--max-message`; the Autobahn run passes 16 MiB), a write
//! buffer of twice that plus 64 KiB, at most 16,384 connections (`--max-connections`): the
//! worst case of queued outbound memory is their product (docs/TUNING.md).
//!
//! With `--control` it reads commands from stdin (for test drivers such as `examples/soak`):
//! `stats` prints one line `stats key=value ...` with the engine's counters; `quit` (or the end
//! of stdin) shuts down gracefully (close frames 1001, up to 5 s), prints the final `stats`
//! line and exits.

use std::time::Duration;

use netpoll::ws::{
    Accept, Group, Message, Request, SlowPolicy, Upgrade, WsConn, WsHandler, WsServer,
};
use netpoll::{CloseReason, Engine, OverflowPolicy, Stats};

#[derive(Clone, Copy, PartialEq, Eq)]
enum Route {
    Echo,
    Broadcast,
}

struct Server {
    broadcast: Group,
}

impl WsHandler for Server {
    type State = Route;

    fn on_request(&mut self, req: &Request<'_>) -> Upgrade<Route> {
        match req.path() {
            "/" if !req.is_upgrade() => Upgrade::Respond(
                netpoll::ws::HttpResponse::new(200)
                    .header("Content-Type", "text/plain")
                    .body("netpoll ws_echo: WebSocket endpoints /echo and /broadcast\n"),
            ),
            // `/` echoes too, for clients that connect without a path (Autobahn's runner).
            "/echo" | "/" => Accept::new(Route::Echo).into(),
            "/broadcast" => Accept::new(Route::Broadcast).into(),
            _ => Upgrade::not_found(),
        }
    }

    fn on_open(&mut self, conn: &WsConn, route: &mut Route) {
        if *route == Route::Broadcast {
            self.broadcast.join(conn); // left automatically on close
        }
    }

    fn on_message(&mut self, conn: &WsConn, route: &mut Route, msg: Message<'_>) {
        match route {
            Route::Echo => {
                // Inside a callback sends are corked: one writev per connection per iteration.
                if conn.send(msg).is_err() {
                    conn.abort();
                }
            }
            Route::Broadcast => self.broadcast.broadcast(msg),
        }
    }
}

fn seconds_flag(value: Option<String>, flag: &str) -> Option<Duration> {
    let v: f64 = value
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{flag} needs SECS"));
    (v > 0.0).then(|| Duration::from_secs_f64(v))
}

fn number_flag(value: Option<String>, flag: &str) -> usize {
    value
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{flag} needs a number"))
}

fn main() {
    let mut addr = "127.0.0.1:9001".to_string();
    let mut pollers = None;
    let mut max_message = 1 << 20;
    let mut max_connections = 16_384;
    let mut max_write_buffer = None;
    let mut write_timeout = Some(Duration::from_secs(30));
    let mut idle_timeout = Some(Duration::from_secs(60));
    let mut pong_timeout = Duration::from_secs(10);
    let mut handshake_timeout = Duration::from_secs(10);
    let mut stats = false;
    let mut control = false;
    let mut send_buffer = None;
    let mut events = None;
    let mut deflate = None;
    let mut tls_cert = None;
    let mut broker = None;
    let mut tls_key = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--addr" => addr = args.next().expect("--addr needs a value"),
            "--pollers" => pollers = Some(number_flag(args.next(), "--pollers")),
            "--max-message" => max_message = number_flag(args.next(), "--max-message"),
            "--max-connections" => max_connections = number_flag(args.next(), "--max-connections"),
            "--max-write-buffer" => {
                max_write_buffer = Some(number_flag(args.next(), "--max-write-buffer"))
            }
            "--write-timeout" => write_timeout = seconds_flag(args.next(), "--write-timeout"),
            "--idle-timeout" => idle_timeout = seconds_flag(args.next(), "--idle-timeout"),
            "--pong-timeout" => {
                pong_timeout = seconds_flag(args.next(), "--pong-timeout").expect("positive")
            }
            "--handshake-timeout" => {
                handshake_timeout =
                    seconds_flag(args.next(), "--handshake-timeout").expect("positive")
            }
            "--stats" => stats = true,
            "--deflate" => deflate = Some(netpoll::ws::deflate::DeflateConfig::default()),
            "--deflate-takeover" => {
                let bits = number_flag(args.next(), "--deflate-takeover");
                assert!((9..=15).contains(&bits), "--deflate-takeover takes 9..=15");
                let config = netpoll::ws::deflate::DeflateConfig::default();
                deflate = Some(config.context_takeover(bits as u8));
            }
            "--control" => control = true,
            "--send-buffer" => send_buffer = Some(number_flag(args.next(), "--send-buffer")),
            "--events" => events = Some(number_flag(args.next(), "--events")),
            "--tls-cert" => tls_cert = Some(args.next().expect("--tls-cert needs a PEM file")),
            "--redis" | "--nats" => broker = Some(args.next().expect("--redis/--nats need a URL")),
            "--tls-key" => tls_key = Some(args.next().expect("--tls-key needs a PEM file")),
            other => panic!("unknown flag {other}"),
        }
    }
    // An echo must be able to queue a whole maximum-size message back.
    let max_write_buffer = max_write_buffer.unwrap_or(2 * max_message + 64 * 1024);
    // Worst case of queued outbound memory: max_connections x max_write_buffer (about 33 GiB
    // at the defaults, if every client stopped reading at once; the write deadline and the
    // heartbeat cut such clients off within 30 s and 70 s).
    let mut engine = Engine::builder()
        .listen(addr)
        .max_connections(max_connections)
        .max_outbound_bytes(max_write_buffer)
        .overflow_policy(OverflowPolicy::Close)
        .write_timeout(write_timeout);
    if let Some(n) = pollers {
        engine = engine.pollers(n);
    }
    if let Some(n) = events {
        engine = engine.events_capacity(n);
    }
    match (tls_cert, tls_key) {
        (Some(cert), Some(key)) => engine = engine.tls(tls_config(&cert, &key)),
        (None, None) => {}
        _ => panic!("--tls-cert and --tls-key go together"),
    }
    if let Some(n) = send_buffer {
        // A small kernel send buffer makes a stalled reader show in the engine's queue
        // (write deadline, outbound limit) sooner; the kernel's default grows to megabytes.
        engine = engine.send_buffer_size(n);
    }
    let broadcast = Group::new(SlowPolicy::Drop);
    // Kept for the process's life: dropping it would stop the bus.
    let _bus = broker.map(|url| {
        let bus = netpoll::bus::Bus::builder()
            .max_message_size(max_message)
            .connect(&url)
            .unwrap_or_else(|e| panic!("{e}"));
        bus.bind(&broadcast, "netpoll:broadcast")
            .expect("a new group binds");
        bus
    });
    let mut ws = WsServer::builder();
    if let Some(config) = deflate {
        ws = ws.deflate(config);
    }
    let engine = ws
        .max_message_size(max_message)
        .max_frame_size(max_message)
        .idle_timeout(idle_timeout)
        .pong_timeout(pong_timeout)
        .handshake_timeout(handshake_timeout)
        .start(engine, {
            let broadcast = broadcast.clone();
            move |_| Server {
                broadcast: broadcast.clone(),
            }
        })
        .unwrap_or_else(|e| panic!("cannot start: {e}"));
    println!("listening on {}", engine.local_addrs()[0]);
    if control {
        for line in std::io::stdin().lines() {
            match line.as_deref().map(str::trim) {
                Ok("stats") => println!("stats {}", stats_line(&engine.stats(), &broadcast)),
                Ok("quit") | Err(_) => break,
                Ok(other) => eprintln!("unknown command {other:?}"),
            }
        }
        let last = engine.shutdown(Duration::from_secs(5));
        println!("stats {}", stats_line(&last, &broadcast));
        return;
    }
    loop {
        std::thread::sleep(Duration::from_secs(10));
        if stats {
            let s = engine.stats();
            eprintln!(
                "open {} opened {} closed {} bytes in {} out {}",
                s.open(),
                s.opened,
                s.closed_total(),
                s.bytes_in,
                s.bytes_out
            );
        }
    }
}

/// The server's TLS configuration from a PEM certificate chain and key file.
fn tls_config(cert: &str, key: &str) -> std::sync::Arc<netpoll::tls::ServerConfig> {
    let read = |path: &str| std::fs::read(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    netpoll::tls::server_config(&read(cert), &read(key)).unwrap_or_else(|e| panic!("{e}"))
}

/// The counters a test driver checks, as `key=value` pairs: the engine's, and the broadcast
/// group's.
fn stats_line(s: &Stats, group: &Group) -> String {
    let fields = [
        ("accepted", s.accepted),
        ("opened", s.opened),
        ("open", s.open()),
        ("closed", s.closed_total()),
        ("freed", s.freed),
        ("peer_closed", s.closed(CloseReason::PeerClosed)),
        ("local", s.closed(CloseReason::Local)),
        ("io", s.closed(CloseReason::Io(std::io::ErrorKind::Other))),
        ("overflow", s.closed(CloseReason::Overflow)),
        ("write_timeout", s.closed(CloseReason::WriteTimeout)),
        ("read_timeout", s.closed(CloseReason::ReadTimeout)),
        ("shutdown", s.closed(CloseReason::Shutdown)),
        ("handler_panic", s.closed(CloseReason::HandlerPanic)),
        ("overflows", s.overflows),
        ("dropped_messages", group.dropped_messages()),
        ("slow_closes", group.slow_closes()),
        ("close_flush_timeouts", s.close_flush_timeouts),
        ("bytes_in", s.bytes_in),
        ("bytes_out", s.bytes_out),
    ];
    let pairs: Vec<String> = fields.iter().map(|(k, v)| format!("{k}={v}")).collect();
    pairs.join(" ")
}
