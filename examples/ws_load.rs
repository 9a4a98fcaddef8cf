//! WebSocket load generator on netpoll's WebSocket client (`WsEngine::connect`).
//!
//! ```text
//! cargo run --release --example ws_load -- --url ws://127.0.0.1:9001/echo --conns 1000 \
//!     --size 64 --duration 10 [--mode echo|broadcast] [--rate MSGS_PER_SEC] [--pollers 1]
//!     [--sources 8] [--server-pid PID]
//! ```
//!
//! - `echo` (default): closed loop; each connection sends one binary message of `--size`
//!   bytes, waits for its echo, and sends the next. Reports echoed messages per second and the
//!   round-trip latency.
//! - `broadcast`: every connection joins (use a `/broadcast` URL); one connection sends
//!   `--rate` messages per second and every connection, the sender included, receives them.
//!   Reports deliveries per second and the delivery latency (send to receipt).
//!
//! Messages carry their send time in the first 8 bytes (`--size` is at least 8). Sockets are
//! spread over source addresses 127.0.0.1..=127.0.0.N with `--sources N`. With
//! `--server-pid` the server's CPU time over the measured window is reported too. `--addr`
//! and `--path` may be given instead of `--url`.

#[path = "support/load.rs"]
mod load;

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use load::{Counters, Options, Samples, now_nanos};
use netpoll::Engine;
use netpoll::ws::{
    Connect, ConnectError, Message, Request, Upgrade, WsClose, WsConn, WsHandler, WsServer,
};

struct Load {
    echo: bool,
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
    type State = ();

    fn on_request(&mut self, _: &Request<'_>) -> Upgrade<()> {
        Upgrade::not_found() // a client only
    }

    fn on_open(&mut self, conn: &WsConn, _: &mut ()) {
        self.counters.open.fetch_add(1, Ordering::Relaxed);
        if self.echo {
            self.send_stamped(conn);
        } else {
            self.sender
                .lock()
                .unwrap()
                .get_or_insert_with(|| conn.clone());
        }
    }

    fn on_message(&mut self, conn: &WsConn, _: &mut (), msg: Message<'_>) {
        let b = msg.as_bytes();
        if b.len() < 8 {
            return;
        }
        let sent = u64::from_le_bytes(b[..8].try_into().unwrap());
        self.samples.record(&self.counters, sent);
        self.counters.count_echo(&mut self.local);
        if self.echo {
            self.send_stamped(conn);
        }
    }

    fn on_close(&mut self, _: &WsConn, _: (), close: WsClose) {
        if !self.counters.stopping.load(Ordering::Relaxed) {
            eprintln!("connection closed during the run: {close:?}");
            self.counters.failed.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn on_connect_error(&mut self, _: (), error: ConnectError) {
        eprintln!("connect error: {error}");
        self.counters.failed.fetch_add(1, Ordering::Relaxed);
    }
}

fn main() {
    let mut o = Options::parse(9001, true);
    o.size = o.size.max(8);
    let echo = match o.mode.as_str() {
        "echo" => true,
        "broadcast" => false,
        m => panic!("--mode echo|broadcast, not {m}"),
    };
    let counters = Arc::new(Counters::default());
    let sender = Arc::new(Mutex::new(None));
    let size = o.size;
    let ws = WsServer::builder()
        .idle_timeout(None)
        .start(
            Engine::builder()
                .pollers(o.pollers)
                .max_connections(o.conns + 16),
            |_| Load {
                echo,
                counters: counters.clone(),
                local: 0,
                samples: Samples::default(),
                msg: vec![b'x'; size],
                sender: sender.clone(),
            },
        )
        .expect("start client engine");
    let url = format!("ws://{}{}", o.addr, o.path);
    for i in 0..o.conns {
        let opts = Connect::new(())
            .local_addr(load::source_addr(&o, i))
            .timeout(Duration::from_secs(30));
        ws.connect(&url, opts).expect("connect");
    }
    load::wait_all_open(&o, &counters);
    if !echo {
        // The sender paces itself from this thread.
        let from = sender.lock().unwrap().clone().expect("a sender");
        let interval = Duration::from_secs_f64(1.0 / o.rate.max(0.001));
        let mut msg = vec![b'b'; size];
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
    ws.shutdown(Duration::from_secs(1));
}
