//! WebSocket echo and broadcast server on netpoll.
//!
//! ```text
//! cargo run --release --example ws_echo -- --addr 127.0.0.1:9001 [--pollers N]
//!     [--max-message BYTES] [--max-write-buffer BYTES] [--write-timeout SECS]
//!     [--idle-timeout SECS] [--stats]
//! ```
//!
//! - `/echo`: every message comes back unchanged (text as text, binary as binary).
//! - `/broadcast`: every message goes to every client connected on `/broadcast`, the sender
//!   included, through a `Group`: the frame is encoded once and the same bytes are queued on
//!   every receiver. A receiver that cannot keep up misses messages (`SlowPolicy::Drop`).
//! - `/`: a WebSocket upgrade echoes like `/echo`; a plain GET gets a short text page.
//! - anything else: 404; a plain GET on `/echo` or `/broadcast` gets 426.
//!
//! Prints `listening on ADDR` once ready. Serves until killed. A client that stops reading is
//! cut off when its queue would pass `--max-write-buffer` or its write deadline passes.

use std::time::Duration;

use netpoll::ws::{
    Accept, Group, Message, Request, SlowPolicy, Upgrade, WsConn, WsHandler, WsServer,
};
use netpoll::{Engine, OverflowPolicy};

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
    let mut max_message = 16 << 20;
    let mut max_write_buffer = None;
    let mut write_timeout = Some(Duration::from_secs(30));
    let mut idle_timeout = Some(Duration::from_secs(60));
    let mut stats = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--addr" => addr = args.next().expect("--addr needs a value"),
            "--pollers" => pollers = Some(number_flag(args.next(), "--pollers")),
            "--max-message" => max_message = number_flag(args.next(), "--max-message"),
            "--max-write-buffer" => {
                max_write_buffer = Some(number_flag(args.next(), "--max-write-buffer"))
            }
            "--write-timeout" => write_timeout = seconds_flag(args.next(), "--write-timeout"),
            "--idle-timeout" => idle_timeout = seconds_flag(args.next(), "--idle-timeout"),
            "--stats" => stats = true,
            other => panic!("unknown flag {other}"),
        }
    }
    // An echo must be able to queue a whole maximum-size message back.
    let max_write_buffer = max_write_buffer.unwrap_or(2 * max_message + 64 * 1024);
    let mut engine = Engine::builder()
        .listen(addr)
        .max_outbound_bytes(max_write_buffer)
        .overflow_policy(OverflowPolicy::Close)
        .write_timeout(write_timeout);
    if let Some(n) = pollers {
        engine = engine.pollers(n);
    }
    let broadcast = Group::new(SlowPolicy::Drop);
    let engine = WsServer::builder()
        .max_message_size(max_message)
        .max_frame_size(max_message)
        .idle_timeout(idle_timeout)
        .start(engine, |_| Server {
            broadcast: broadcast.clone(),
        })
        .unwrap_or_else(|e| panic!("cannot start: {e}"));
    println!("listening on {}", engine.local_addrs()[0]);
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
