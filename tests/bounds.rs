//! Every queue is bounded, measured as memory: a broadcast flood towards a poller whose members
//! never read, and floods of empty broadcast frames to stalled members. The whole process's
//! live heap is counted (the clients live here too, but raw stuck clients allocate nothing).

mod common;
#[path = "common/counting_alloc.rs"]
mod counting_alloc;
mod ws_common;

use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use counting_alloc::live_bytes;
use netpoll::Engine;
use netpoll::ws::{Accept, Group, Message, Request, SlowPolicy, Upgrade, WsConn, WsHandler};

/// The tests share the live-byte counter, so they run one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Route {
    /// Joins the group if it lands on poller 1.
    Member,
    /// Every message it sends is broadcast to the group.
    Send,
    /// Echoes.
    Echo,
}

struct Hub {
    group: Group,
    opened: Sender<(Route, usize, WsConn)>,
}

impl WsHandler for Hub {
    type State = Route;

    fn on_request(&mut self, req: &Request<'_>) -> Upgrade<Route> {
        match req.path() {
            "/member" => Accept::new(Route::Member).into(),
            "/send" => Accept::new(Route::Send).into(),
            _ => Accept::new(Route::Echo).into(),
        }
    }

    fn on_open(&mut self, conn: &WsConn, route: &mut Route) {
        let poller = conn.poller_index();
        if *route == Route::Member && poller == 1 {
            self.group.join(conn);
        }
        let _ = self.opened.send((*route, poller, conn.clone()));
    }

    fn on_message(&mut self, conn: &WsConn, route: &mut Route, msg: Message<'_>) {
        match route {
            Route::Send => self.group.broadcast(msg),
            Route::Echo => {
                let _ = conn.send(msg);
            }
            Route::Member => {}
        }
    }
}

/// A hub on two pollers with a `Drop` group, an outbound limit of `limit` and small kernel
/// send buffers (so that what a stuck member is sent piles up in the engine).
fn hub(
    limit: usize,
) -> (
    Group,
    impl Drop,
    SocketAddr,
    Receiver<(Route, usize, WsConn)>,
) {
    let group = Group::new(SlowPolicy::Drop);
    let engine = Engine::builder()
        .pollers(2)
        .max_outbound_bytes(limit)
        .send_buffer_size(4096);
    let (tx, rx) = mpsc::channel();
    let g = group.clone();
    let server = netpoll::ws::WsServer::builder()
        .start(engine.listen("127.0.0.1:0"), move |_| Hub {
            group: g.clone(),
            opened: tx.clone(),
        })
        .expect("server starts");
    let addr = server.local_addrs()[0];
    (group, Stop(Some(server)), addr, rx)
}

/// Shuts the server down when dropped.
struct Stop(Option<netpoll::ws::WsEngine<Hub>>);

impl Drop for Stop {
    fn drop(&mut self) {
        if let Some(s) = self.0.take() {
            s.shutdown(Duration::from_secs(1));
        }
    }
}

fn next(rx: &Receiver<(Route, usize, WsConn)>) -> (Route, usize, WsConn) {
    rx.recv_timeout(ws_common::WAIT)
        .expect("a connection opens")
}

/// Waits until `value` stops changing for `quiet`.
fn settle(value: impl Fn() -> u64, quiet: Duration) {
    let mut last = value();
    let mut since = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        thread::sleep(Duration::from_millis(20));
        let v = value();
        if v != last {
            (last, since) = (v, Instant::now());
        } else if since.elapsed() >= quiet {
            return;
        }
    }
    panic!("still changing after 30 s");
}

/// One echo round trip on `c`.
fn round_trip(c: &mut ws_common::Client) -> Duration {
    let t = Instant::now();
    c.send(tungstenite::Message::Binary(vec![7u8; 16].into()))
        .unwrap();
    loop {
        match c.read().expect("echo") {
            tungstenite::Message::Binary(_) => return t.elapsed(),
            _ => continue,
        }
    }
}

/// Issue 13, finding 1: broadcasts from another thread (a feed, or a client on another poller)
/// faster than the members' poller can fan them out, to 1,000 members that never read. Without
/// a bound on the work passed between pollers, that poller's command queue grew without limit
/// (by ~200 MiB/s in the report) and its own clients waited seconds for an echo (here: more
/// than the 10 s the echo client waits).
#[test]
fn a_broadcast_flood_towards_a_poller_of_stuck_members_stays_bounded() {
    let _serial = serial();
    const MEMBERS: usize = 1000;
    const LIMIT: usize = 256 * 1024;
    common::raise_nofile_limit(4 * MEMBERS as u64 + 200);
    let (group, _server, addr, opened) = hub(LIMIT);
    // Members: connections land on pollers 0, 1, 0, 1, ...; the hub keeps those on poller 1.
    let mut stuck: Vec<TcpStream> = Vec::new();
    while group.len() < MEMBERS {
        stuck.push(ws_common::stuck_member(addr, "/member"));
        next(&opened);
    }
    // An echo client on each poller.
    let mut clients = Vec::new();
    let (mut echo0, mut echo1) = (None, None);
    while echo0.is_none() || echo1.is_none() {
        let c = ws_common::connect(addr, "/echo");
        match next(&opened) {
            (Route::Echo, 0, _) if echo0.is_none() => echo0 = Some(c),
            (Route::Echo, 1, _) if echo1.is_none() => echo1 = Some(c),
            _ => clients.push(c),
        }
    }
    let (mut echo0, mut echo1) = (echo0.unwrap(), echo1.unwrap());
    thread::sleep(Duration::from_millis(200));
    let before = live_bytes();
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let flood = {
        let (stop, sent, group) = (stop.clone(), sent.clone(), group.clone());
        thread::spawn(move || {
            let msg = [b'f'; 16];
            while !stop.load(Ordering::Relaxed) {
                for _ in 0..64 {
                    group.broadcast(Message::Binary(&msg));
                }
                sent.fetch_add(64, Ordering::Relaxed);
            }
        })
    };
    let mut peak = 0isize;
    let mut slowest = Duration::ZERO;
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(3) {
        slowest = slowest
            .max(round_trip(&mut echo0))
            .max(round_trip(&mut echo1));
        peak = peak.max(live_bytes() - before);
        thread::sleep(Duration::from_millis(50));
    }
    stop.store(true, Ordering::Relaxed);
    flood.join().unwrap();
    settle(|| group.dropped_messages(), Duration::from_millis(300));
    peak = peak.max(live_bytes() - before);
    let sent = sent.load(Ordering::Relaxed);
    eprintln!(
        "sent {sent}, dropped {} member deliveries, peak heap +{} KiB, slowest echo {slowest:?}",
        group.dropped_messages(),
        peak / 1024
    );
    assert!(sent > 10_000, "the flood ran ({sent} messages)");
    assert!(
        group.dropped_messages() > 0,
        "the stuck members missed messages"
    );
    // Each member's queue and the group's backlog for poller 1 are bounded by LIMIT; 8 MiB
    // covers the clients' and pollers' working buffers.
    let bound = ((MEMBERS + 1) * LIMIT + (8 << 20)) as isize;
    assert!(peak <= bound, "heap grew by {peak} B, bound {bound} B");
    assert!(
        slowest < Duration::from_secs(1),
        "an echo took {slowest:?} during the flood"
    );
    drop((stuck, clients));
}

/// Issue 13, finding 2: empty broadcast frames to members that never read. The limit counted
/// payload bytes only, so a 2-byte frame cost 2 bytes of a 64 KiB limit while its queue entry
/// took 32 (and the ring doubles): each member could hold ~1-2 MiB.
#[test]
fn empty_broadcasts_to_stalled_members_stay_within_the_limit() {
    let _serial = serial();
    const MEMBERS: usize = 4;
    const LIMIT: usize = 64 * 1024;
    let (group, _server, addr, opened) = hub(LIMIT);
    let mut stuck = Vec::new();
    let mut members = Vec::new();
    while group.len() < MEMBERS {
        stuck.push(ws_common::stuck_member(addr, "/member"));
        let (_, poller, conn) = next(&opened);
        if poller == 1 {
            members.push(conn);
        }
    }
    thread::sleep(Duration::from_millis(200));
    let before = live_bytes();
    for message in [&b""[..], &b"x"[..]] {
        // Paced in rounds, so each round's backlog is delivered rather than dropped whole.
        for _ in 0..200 {
            for _ in 0..500 {
                group.broadcast(Message::Binary(message));
            }
            thread::sleep(Duration::from_millis(1));
        }
    }
    settle(|| group.dropped_messages(), Duration::from_millis(300));
    let grown = live_bytes() - before;
    let pending: Vec<usize> = members.iter().map(|m| m.pending_bytes()).collect();
    eprintln!(
        "heap +{grown} B, pending {pending:?}, dropped {}",
        group.dropped_messages()
    );
    assert!(group.dropped_messages() > 0, "the members filled up");
    for p in &pending {
        assert!(
            *p <= LIMIT,
            "a member holds {p} B against a {LIMIT} B limit"
        );
    }
    // What the members' queues really hold, plus a fixed working set.
    let bound = (MEMBERS * LIMIT + (512 << 10)) as isize;
    assert!(grown <= bound, "heap grew by {grown} B, bound {bound} B");
    drop(stuck);
}
