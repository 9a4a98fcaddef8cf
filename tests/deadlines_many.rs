//! 5000 connections with write and read deadlines on, refreshed all the time: only the peers
//! that stop reading or fall silent are closed, each for the right reason, and no healthy one.
//!
//! 4900 healthy clients run on a netpoll client engine, each pinging from its own
//! `Conn::every` timer, which keeps every read deadline moving. Every tenth client asks for a
//! 128 KiB reply, more than the small socket buffers take in one write, so its reply queues
//! and drains through writable edges, arming, refreshing and clearing the write deadline over
//! and over (about a thousand times a second in all); the others get a short reply. 50 clients
//! ask for a reply they never read (write timeout), 50 never send anything (read timeout).

mod common;

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use common::*;
use netpoll::{CloseReason, Conn, DialOptions, Engine, Handler};

const HEALTHY: usize = 4900;
const STUCK: usize = 50;
const IDLE: usize = 50;
const REPLY: usize = 64;
const HEAVY_REPLY: usize = 128 * 1024;
const HEAVY_EVERY: usize = 10;
const WRITE_TIMEOUT: Duration = Duration::from_secs(1);
const READ_TIMEOUT: Duration = Duration::from_secs(2);
const PING_EVERY: Duration = Duration::from_millis(500);

/// Replies to `p` with REPLY bytes, to `H` with HEAVY_REPLY, and to `S` with 2 MiB (more than
/// any socket buffer here holds, so it stays queued for a peer that does not read).
struct Server {
    tx: mpsc::Sender<(CloseReason, Duration)>,
    t0: Instant,
    heavy_pings: Arc<AtomicU64>,
}

impl Handler for Server {
    type State = ();
    fn on_open(&mut self, _: &Conn) {}
    fn on_data(&mut self, conn: &Conn, _: &mut (), data: &mut [u8]) -> usize {
        for &b in data.iter() {
            let len = match b {
                b'S' => 2 << 20,
                b'H' => {
                    self.heavy_pings.fetch_add(1, Ordering::Relaxed);
                    HEAVY_REPLY
                }
                _ => REPLY,
            };
            let _ = conn.write(bytes::Bytes::from(vec![b'r'; len]));
        }
        data.len()
    }
    fn on_close(&mut self, _: &Conn, _: (), reason: CloseReason) {
        let _ = self.tx.send((reason, self.t0.elapsed()));
    }
}

/// Counts reply bytes per client engine; pings come from per-connection timers.
struct Client {
    received: Arc<AtomicU64>,
    closed: Arc<AtomicU64>,
}

impl Handler for Client {
    type State = ();
    fn on_open(&mut self, conn: &Conn) {
        let ping: &'static [u8] = if conn.id().as_u64() % HEAVY_EVERY as u64 == 0 {
            b"H"
        } else {
            b"p"
        };
        conn.every(PING_EVERY, move |c| {
            let _ = c.write_slice(ping);
        });
    }
    fn on_data(&mut self, _: &Conn, _: &mut (), data: &mut [u8]) -> usize {
        self.received
            .fetch_add(data.len() as u64, Ordering::Relaxed);
        data.len()
    }
    fn on_close(&mut self, _: &Conn, _: (), _: CloseReason) {
        self.closed.fetch_add(1, Ordering::Relaxed);
    }
}

#[test]
fn five_thousand_refreshed_connections_expire_only_the_stuck_and_idle_ones() {
    raise_nofile_limit(11_000);
    let (tx, closes) = mpsc::channel();
    let t0 = Instant::now();
    let heavy_pings = Arc::new(AtomicU64::new(0));
    let server = Engine::builder()
        .pollers(2)
        .listen("127.0.0.1:0")
        .backlog(4096)
        .send_buffer_size(4096)
        .timer_tick(Duration::from_millis(20))
        .write_timeout(Some(WRITE_TIMEOUT))
        .read_timeout(Some(READ_TIMEOUT))
        .start(|_| Server {
            tx: tx.clone(),
            t0,
            heavy_pings: heavy_pings.clone(),
        })
        .unwrap();
    let addr = server.local_addrs()[0];

    let received = Arc::new(AtomicU64::new(0));
    let client_closed = Arc::new(AtomicU64::new(0));
    let clients = Engine::builder()
        .pollers(2)
        .recv_buffer_size(4096)
        .write_timeout(None)
        .start(|_| Client {
            received: received.clone(),
            closed: client_closed.clone(),
        })
        .unwrap();
    for i in 0..HEALTHY {
        let local = SocketAddr::from(([127, 0, 0, 1 + (i % 4) as u8], 0));
        let opts = DialOptions {
            local_addr: Some(local),
            timeout: None,
        };
        clients.dial_with(addr, opts).expect("dial");
    }
    let mut stuck = Vec::new();
    for _ in 0..STUCK {
        let mut s = small_client(addr);
        s.write_all(b"S").unwrap();
        stuck.push(s);
    }
    let idle: Vec<TcpStream> = (0..IDLE).map(|_| small_client(addr)).collect();
    let all_connected = eventually(Duration::from_secs(30), || {
        server.stats().open() == (HEALTHY + STUCK + IDLE) as u64
    });
    assert!(all_connected, "server sees {} open", server.stats().open());

    // Past every expiry of the bad peers (read timeout + tick + margin), with the healthy ones
    // refreshing both deadlines throughout.
    let run_until = Instant::now() + READ_TIMEOUT + Duration::from_millis(1500);
    let mut by_reason = std::collections::HashMap::new();
    while Instant::now() < run_until {
        if let Ok((reason, at)) = closes.recv_timeout(Duration::from_millis(50)) {
            by_reason.entry(reason).or_insert_with(Vec::new).push(at);
        }
    }
    let received_at_end = received.load(Ordering::Relaxed);
    let stats = server.stats();
    // Heavy replies must have queued (more than one write each), or the write deadline was
    // never armed and this test would prove nothing about refreshing it.
    let pings = stats.bytes_in;
    let heavy = heavy_pings.load(Ordering::Relaxed);
    eprintln!(
        "pings {pings} ({heavy} heavy), write calls {}, bytes out {}",
        stats.write_calls, stats.bytes_out
    );
    assert!(heavy > 1000, "only {heavy} heavy pings");
    assert!(
        stats.write_calls > pings + heavy / 4,
        "heavy replies did not queue: {} writes for {pings} pings",
        stats.write_calls
    );
    let counts: Vec<_> = by_reason.iter().map(|(r, v)| (*r, v.len())).collect();
    assert_eq!(
        stats.closed_total(),
        (STUCK + IDLE) as u64,
        "closes by reason: {counts:?}"
    );
    assert_eq!(
        stats.closed(CloseReason::WriteTimeout),
        STUCK as u64,
        "{counts:?}"
    );
    assert_eq!(
        stats.closed(CloseReason::ReadTimeout),
        IDLE as u64,
        "{counts:?}"
    );
    assert_eq!(stats.open(), HEALTHY as u64);
    assert_eq!(client_closed.load(Ordering::Relaxed), 0);
    // Every healthy client kept getting replies: at least a few pings' worth each.
    let per_client = received_at_end / HEALTHY as u64;
    assert!(
        per_client >= 3 * REPLY as u64,
        "healthy clients got only {per_client} bytes each"
    );
    drop(stuck);
    drop(idle);
    drop(clients);
}
