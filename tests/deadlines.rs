//! Write and read deadlines: a healthy slow reader never sees a false write timeout, a stuck
//! one is closed within write_timeout plus one tick, idle peers time out, chatty ones do not,
//! and per-connection overrides beat the builder's defaults.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use netpoll::{CloseReason, Conn, Engine, EngineBuilder, Handler};

fn base(write_timeout: Option<Duration>) -> EngineBuilder {
    Engine::builder()
        .pollers(1)
        .send_buffer_size(4096)
        .timer_tick(Duration::from_millis(20))
        .write_timeout(write_timeout)
}

/// Keeps at least 32 KiB queued on `conn` from another thread until `stop`.
fn keep_queue_full(conn: Conn, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<usize> {
    std::thread::spawn(move || {
        let chunk = Bytes::from(vec![b'd'; 8192]);
        let mut min_pending = usize::MAX;
        let mut sampled = false;
        while !stop.load(Ordering::Relaxed) {
            while conn.pending_bytes() < 32 * 1024 {
                if conn.write(chunk.clone()).is_err() {
                    return 0;
                }
            }
            if sampled {
                min_pending = min_pending.min(conn.pending_bytes());
            }
            sampled = true;
            std::thread::sleep(Duration::from_millis(10));
        }
        min_pending
    })
}

#[test]
fn healthy_slow_reader_never_gets_a_false_write_timeout() {
    // write_timeout 1 s; the peer reads 1 KiB every 100 ms for 10 s while the server keeps
    // 10x write_timeout worth of streaming queued behind it.
    let (engine, addr, rx) = start(base(Some(Duration::from_secs(1))), Mode::Sink);
    let mut peer = small_client(addr);
    let conn = next_open(&rx);
    let stop = Arc::new(AtomicBool::new(false));
    let writer = keep_queue_full(conn.clone(), stop.clone());
    let t0 = Instant::now();
    let mut got = 0usize;
    let mut buf = [0u8; 1024];
    while t0.elapsed() < Duration::from_secs(10) {
        peer.read_exact(&mut buf).expect("stream keeps flowing");
        got += buf.len();
        std::thread::sleep(Duration::from_millis(100));
    }
    stop.store(true, Ordering::Relaxed);
    let min_pending = writer.join().unwrap();
    assert!(
        min_pending > 0,
        "the queue must stay non-empty, or the deadline was never armed"
    );
    assert!(conn.is_open(), "false write timeout");
    assert_eq!(engine.stats().closed(CloseReason::WriteTimeout), 0);
    assert!(got >= 90 * 1024, "peer read only {got} bytes");
}

fn assert_closed_within(rx: &mpsc::Receiver<Event>, conn: &Conn, t0: Instant, timeout: Duration) {
    assert_eq!(wait_close(rx, conn.id()), CloseReason::WriteTimeout);
    let took = t0.elapsed();
    // Not before the timeout; within timeout + one tick (20 ms) + scheduling margin.
    assert!(
        took >= timeout - Duration::from_millis(5),
        "closed early: {took:?}"
    );
    assert!(
        took <= timeout + Duration::from_millis(20 + 400),
        "closed late: {took:?}"
    );
}

#[test]
fn stuck_reader_is_closed_within_write_timeout_plus_a_tick_direct_path() {
    let timeout = Duration::from_millis(500);
    let (engine, addr, rx) = start(base(Some(timeout)), Mode::Sink);
    let _stuck = small_client(addr);
    let conn = next_open(&rx);
    // Writes from this thread: the direct path arms the deadline when bytes are left queued.
    let chunk = Bytes::from(vec![b's'; 8192]);
    // Enough that the kernel buffers cannot absorb it: bytes stay queued in the engine.
    while conn.pending_bytes() < 64 * 1024 {
        conn.write(chunk.clone()).unwrap();
    }
    let t0 = Instant::now();
    assert_closed_within(&rx, &conn, t0, timeout);
    assert_eq!(engine.stats().closed(CloseReason::WriteTimeout), 1);
    assert_eq!(conn.pending_bytes(), 0, "aborted: queue freed");
}

/// Writes 1 MiB from inside `on_data` when asked: the corked path, armed by the poller's flush.
struct Blaster {
    tx: mpsc::Sender<Event>,
}

impl Handler for Blaster {
    type State = ();
    fn on_open(&mut self, conn: &Conn) {
        let _ = self.tx.send(Event::Open(conn.clone()));
    }
    fn on_data(&mut self, conn: &Conn, _: &mut (), data: &mut [u8]) -> usize {
        conn.write(Bytes::from(vec![b'b'; 1 << 20])).unwrap();
        data.len()
    }
    fn on_close(&mut self, conn: &Conn, _: (), reason: CloseReason) {
        let _ = self.tx.send(Event::Close(conn.id(), reason));
    }
}

fn start_blaster(write_timeout: Duration) -> (Engine, mpsc::Receiver<Event>) {
    let (tx, rx) = mpsc::channel();
    let engine = base(Some(write_timeout))
        .listen("127.0.0.1:0")
        .start(|_| Blaster { tx: tx.clone() })
        .unwrap();
    (engine, rx)
}

#[test]
fn stuck_reader_is_closed_within_write_timeout_plus_a_tick_callback_path() {
    let timeout = Duration::from_millis(500);
    let (engine, rx) = start_blaster(timeout);
    let mut stuck = small_client(engine.local_addrs()[0]);
    let conn = next_open(&rx);
    stuck.write_all(b"go").unwrap();
    assert!(eventually(Duration::from_secs(2), || conn.pending_bytes() > 0));
    let t0 = Instant::now();
    assert_closed_within(&rx, &conn, t0, timeout);
}

#[test]
fn healthy_reader_after_a_backlog_drains_via_writable_events_is_not_timed_out() {
    // 1 MiB queued from a callback, read at full speed: the poller's writable-edge flushes
    // drain it and clear the deadline; then the connection sits idle with nothing queued for
    // longer than write_timeout and must stay open.
    let timeout = Duration::from_millis(300);
    let (engine, rx) = start_blaster(timeout);
    let mut peer = small_client(engine.local_addrs()[0]);
    let conn = next_open(&rx);
    peer.write_all(b"go").unwrap();
    let mut buf = vec![0u8; 1 << 20];
    peer.read_exact(&mut buf).unwrap();
    // The io_uring backend learns that its last send finished from a completion it handles
    // just after the peer may already have read the bytes.
    assert!(eventually(Duration::from_secs(1), || conn.pending_bytes() == 0));
    std::thread::sleep(timeout * 3);
    assert!(
        conn.is_open(),
        "drained connection was closed by a stale write deadline"
    );
    assert_eq!(engine.stats().closed(CloseReason::WriteTimeout), 0);
}

#[test]
fn idle_peer_times_out_and_chatty_peer_does_not() {
    let builder = Engine::builder()
        .pollers(1)
        .timer_tick(Duration::from_millis(10))
        .read_timeout(Some(Duration::from_millis(300)));
    let (_engine, addr, rx) = start(builder, Mode::Sink);
    let mut chatty = client(addr);
    let chatty_conn = next_open(&rx);
    let _idle = client(addr);
    let idle_conn = next_open(&rx);
    let t0 = Instant::now();
    let talker = std::thread::spawn(move || {
        for _ in 0..10 {
            chatty.write_all(b".").unwrap();
            std::thread::sleep(Duration::from_millis(100));
        }
        chatty
    });
    assert_eq!(wait_close(&rx, idle_conn.id()), CloseReason::ReadTimeout);
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_millis(290) && took < Duration::from_millis(800),
        "{took:?}"
    );
    let _chatty = talker.join().unwrap();
    assert!(
        chatty_conn.is_open(),
        "a peer sending every 100 ms must not time out"
    );
    // Once it falls silent it times out too.
    assert_eq!(wait_close(&rx, chatty_conn.id()), CloseReason::ReadTimeout);
}

#[test]
fn per_connection_overrides_beat_the_builder_and_clearing_disables() {
    // Builder: write timeout 300 ms. One connection clears it, one keeps it.
    let (engine, addr, rx) = start(base(Some(Duration::from_millis(300))), Mode::Sink);
    let _a = small_client(addr);
    let cleared = next_open(&rx);
    let _b = small_client(addr);
    let kept = next_open(&rx);
    cleared.set_write_timeout(None);
    let chunk = Bytes::from(vec![b'o'; 8192]);
    for c in [&cleared, &kept] {
        while c.pending_bytes() < 64 * 1024 {
            c.write(chunk.clone()).unwrap();
        }
    }
    assert_eq!(wait_close(&rx, kept.id()), CloseReason::WriteTimeout);
    std::thread::sleep(Duration::from_millis(600));
    assert!(cleared.is_open(), "cleared write timeout still fired");
    drop(engine);

    // Builder: no timeouts at all. Overrides switch them on for one connection each.
    let (_engine, addr, rx) = start(base(None), Mode::Sink);
    let _c = small_client(addr);
    let writer = next_open(&rx);
    let _d = client(addr);
    let reader = next_open(&rx);
    writer.set_write_timeout(Some(Duration::from_millis(200)));
    reader.set_read_timeout(Some(Duration::from_millis(200)));
    while writer.pending_bytes() < 64 * 1024 {
        writer.write(chunk.clone()).unwrap();
    }
    let mut reasons = [wait_close_any(&rx), wait_close_any(&rx)];
    reasons.sort_by_key(|(id, _)| *id);
    let mut want = [
        (writer.id(), CloseReason::WriteTimeout),
        (reader.id(), CloseReason::ReadTimeout),
    ];
    want.sort_by_key(|(id, _)| *id);
    assert_eq!(reasons, want);
}

fn wait_close_any(rx: &mpsc::Receiver<Event>) -> (netpoll::ConnId, CloseReason) {
    loop {
        if let Event::Close(id, r) = next_event(rx, "on_close") {
            return (id, r);
        }
    }
}

#[test]
fn builder_rejects_zero_timeouts() {
    let e = Engine::builder()
        .write_timeout(Some(Duration::ZERO))
        .build()
        .unwrap_err();
    assert_eq!(e.field, "write_timeout");
    let e = Engine::builder()
        .read_timeout(Some(Duration::ZERO))
        .build()
        .unwrap_err();
    assert_eq!(e.field, "read_timeout");
}

/// Consumes complete `\n`-terminated lines and tells the engine a message arrived for each:
/// a stand-in for a protocol layer under `ReadRefresh::Manual`.
struct LineProtocol {
    tx: mpsc::Sender<Event>,
}

impl Handler for LineProtocol {
    type State = ();
    fn on_open(&mut self, conn: &Conn) {
        let _ = self.tx.send(Event::Open(conn.clone()));
    }
    fn on_data(&mut self, conn: &Conn, _: &mut (), data: &mut [u8]) -> usize {
        match data.iter().rposition(|&b| b == b'\n') {
            Some(end) => {
                conn.touch_read();
                end + 1
            }
            None => 0, // a partial line: keep it, do not refresh
        }
    }
    fn on_close(&mut self, conn: &Conn, _: (), reason: CloseReason) {
        let _ = self.tx.send(Event::Close(conn.id(), reason));
    }
}

/// Sends `chunk` every 100 ms for `n` rounds on another thread.
fn trickle(mut s: TcpStream, chunk: &'static [u8], n: usize) -> std::thread::JoinHandle<TcpStream> {
    std::thread::spawn(move || {
        for _ in 0..n {
            if s.write_all(chunk).is_err() {
                break;
            }
            // 8 writes per 400 ms read timeout: a stalled thread on a loaded machine must not
            // look like an idle peer.
            std::thread::sleep(Duration::from_millis(50));
        }
        s
    })
}

#[test]
fn manual_read_refresh_closes_a_slow_loris_but_not_a_peer_sending_whole_messages() {
    let (tx, rx) = mpsc::channel();
    let timeout = Duration::from_millis(400);
    let engine = Engine::builder()
        .pollers(1)
        .timer_tick(Duration::from_millis(10))
        .read_timeout(Some(timeout))
        .read_refresh(netpoll::ReadRefresh::Manual)
        .listen("127.0.0.1:0")
        .start(|_| LineProtocol { tx: tx.clone() })
        .unwrap();
    let addr = engine.local_addrs()[0];
    // Timed from before the connect: the deadline starts at the accept, after it, so the
    // close cannot come sooner however late this thread hears of the open.
    let t0 = Instant::now();
    let loris = trickle(client(addr), b"x", 30); // one byte of a never-ending line per 50 ms
    let loris_conn = next_open(&rx);
    let talker = trickle(client(addr), b"hello\n", 30); // a whole message per 50 ms
    let talker_conn = next_open(&rx);
    assert_eq!(wait_close(&rx, loris_conn.id()), CloseReason::ReadTimeout);
    let took = t0.elapsed();
    assert!(
        took >= timeout && took < timeout + Duration::from_secs(1),
        "slow loris closed after {took:?}"
    );
    let _ = loris.join();
    // Held open past the check: dropping it would close the connection from this side.
    let _talker = talker.join();
    assert!(
        talker_conn.is_open(),
        "whole messages every 50 ms must keep a 400 ms read deadline alive for 1.5 s"
    );
}

#[test]
fn any_data_refresh_keeps_a_trickling_peer_alive() {
    // The contrast: under the default mode the same trickle counts as activity.
    let builder = Engine::builder()
        .pollers(1)
        .timer_tick(Duration::from_millis(10))
        .read_timeout(Some(Duration::from_millis(400)));
    let (_engine, addr, rx) = start(builder, Mode::Hoard);
    let loris = trickle(client(addr), b"x", 24);
    let conn = next_open(&rx);
    // Held open past the check: dropping it would close the connection from this side.
    let _loris = loris.join();
    assert!(conn.is_open(), "any byte refreshes the deadline by default");
}

#[test]
fn absolute_write_deadline_is_not_moved_by_progress_and_survives_draining() {
    // Builder timeout 30 s: only the absolute deadline can close these connections.
    let (engine, addr, rx) = start(base(Some(Duration::from_secs(30))), Mode::Sink);
    let mut reader = small_client(addr);
    let healthy = next_open(&rx);
    // A healthy reader that keeps making progress is still closed at the fixed instant.
    let t0 = Instant::now();
    let deadline = Duration::from_millis(500);
    healthy.set_write_deadline(Some(t0 + deadline));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = keep_queue_full(healthy.clone(), stop.clone());
    let drain = std::thread::spawn(move || {
        let mut buf = [0u8; 1024];
        while reader.read(&mut buf).is_ok_and(|n| n > 0) {
            std::thread::sleep(Duration::from_millis(20));
        }
    });
    assert_eq!(wait_close(&rx, healthy.id()), CloseReason::WriteTimeout);
    let took = t0.elapsed();
    assert!(
        took >= deadline && took < deadline + Duration::from_millis(400),
        "{took:?}"
    );
    stop.store(true, Ordering::Relaxed);
    let _ = writer.join();
    let _ = drain.join();

    // A deadline that passes while nothing is queued closes nothing then, but bytes queued
    // after it are already late.
    let _idle_peer = small_client(addr);
    let idle = next_open(&rx);
    idle.set_write_deadline(Some(Instant::now() + Duration::from_millis(100)));
    std::thread::sleep(Duration::from_millis(300));
    assert!(idle.is_open(), "nothing was queued: nothing to time out");
    let chunk = Bytes::from(vec![b'l'; 8192]);
    let t1 = Instant::now();
    while idle.pending_bytes() < 64 * 1024 {
        // The first bytes that queue are already late: the poller may close the connection
        // while this loop still runs.
        if idle.write(chunk.clone()) == Err(netpoll::WriteError::Closed) {
            break;
        }
    }
    assert_eq!(wait_close(&rx, idle.id()), CloseReason::WriteTimeout);
    assert!(
        t1.elapsed() < Duration::from_millis(300),
        "{:?}",
        t1.elapsed()
    );

    // `None` removes every write deadline, the builder's timeout included.
    let _stuck_peer = small_client(addr);
    let cleared = next_open(&rx);
    cleared.set_write_deadline(Some(Instant::now()));
    cleared.set_write_deadline(None);
    while cleared.pending_bytes() < 64 * 1024 {
        cleared.write(chunk.clone()).unwrap();
    }
    std::thread::sleep(Duration::from_millis(300));
    assert!(cleared.is_open());
    assert_eq!(engine.stats().closed(CloseReason::WriteTimeout), 2);
}

#[test]
fn absolute_read_deadline_closes_a_chatty_peer_at_that_instant() {
    let (_engine, addr, rx) = start(base(None), Mode::Sink);
    let chatty = trickle(client(addr), b"...", 10);
    let conn = next_open(&rx);
    let t0 = Instant::now();
    conn.set_read_deadline(Some(t0 + Duration::from_millis(300)));
    assert_eq!(wait_close(&rx, conn.id()), CloseReason::ReadTimeout);
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_millis(700),
        "{took:?}"
    );
    let _ = chatty.join();
}

#[test]
fn shortening_a_deadline_takes_effect_at_once() {
    // The builder's 10 s deadlines are already on the wheel; moving them earlier must not wait
    // for those entries to come due.
    let builder = base(Some(Duration::from_secs(10))).read_timeout(Some(Duration::from_secs(10)));
    let (_engine, addr, rx) = start(builder, Mode::Sink);
    let _reader_peer = client(addr);
    let reader = next_open(&rx);
    let _writer_peer = small_client(addr);
    let writer = next_open(&rx);
    let chunk = Bytes::from(vec![b'w'; 8192]);
    while writer.pending_bytes() < 64 * 1024 {
        writer.write(chunk.clone()).unwrap();
    }
    let t0 = Instant::now();
    reader.set_read_timeout(Some(Duration::from_millis(300)));
    writer.set_write_deadline(Some(t0 + Duration::from_millis(300)));
    let mut got = [wait_close_any(&rx), wait_close_any(&rx)];
    assert!(
        t0.elapsed() < Duration::from_millis(900),
        "{:?}",
        t0.elapsed()
    );
    got.sort_by_key(|(id, _)| *id);
    let mut want = [
        (reader.id(), CloseReason::ReadTimeout),
        (writer.id(), CloseReason::WriteTimeout),
    ];
    want.sort_by_key(|(id, _)| *id);
    assert_eq!(got, want);
}

/// More peers than one poll returns (`events_capacity` 16), so that after a stall most of
/// their readiness is still waiting in the kernel when the poller next runs expiry.
const LATE_PEERS: usize = 48;
const STALL: Duration = Duration::from_millis(1000);

/// Blocks the (only) poller for [`STALL`] from a timer, as a descheduled or overloaded poller
/// would be; returns once the stall has begun.
fn stall_the_poller(engine: &Engine) {
    let (began, rx) = mpsc::channel();
    engine.after(Duration::ZERO, move || {
        let _ = began.send(());
        std::thread::sleep(STALL);
    });
    rx.recv_timeout(WAIT).expect("the stall begins");
}

#[test]
fn a_late_poller_does_not_blame_peers_that_kept_reading() {
    // Every peer has 256 KiB queued behind it and reads all it is given during the stall;
    // each write deadline (400 ms) passes while the poller sleeps. On waking, one poll brings
    // 16 writable edges; the other 32 are still in the kernel when expiry runs, and only a
    // last look at the socket shows that those peers read.
    const REPLY: usize = 256 * 1024;
    let builder = base(Some(Duration::from_millis(400))).events_capacity(16);
    let (engine, addr, rx) = start(builder, Mode::Sink);
    let mut peers = Vec::new();
    let mut conns = Vec::new();
    for _ in 0..LATE_PEERS {
        peers.push(small_client(addr));
        conns.push(next_open(&rx));
    }
    for conn in &conns {
        conn.write(Bytes::from(vec![b'q'; REPLY])).unwrap();
        assert!(
            conn.pending_bytes() > 0,
            "nothing queued: no deadline armed"
        );
    }
    stall_the_poller(&engine);
    let readers: Vec<_> = peers
        .into_iter()
        .map(|mut peer| {
            std::thread::spawn(move || {
                let mut buf = [0u8; 16 * 1024];
                let mut got = 0;
                while got < REPLY {
                    match peer.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => got += n,
                    }
                }
                (got, peer)
            })
        })
        .collect();
    let mut _peers = Vec::new();
    for reader in readers {
        let (got, peer) = reader.join().unwrap();
        assert_eq!(got, REPLY, "a peer was cut off");
        _peers.push(peer);
    }
    assert_eq!(engine.stats().closed(CloseReason::WriteTimeout), 0);
    assert!(conns.iter().all(|c| c.is_open()));
}

#[test]
fn a_late_poller_does_not_blame_peers_that_kept_sending() {
    // Every peer sends a byte every 50 ms against a 400 ms read timeout, through a stall of
    // 1 s: their bytes wait in the kernel, and for 32 of them still do when expiry runs.
    let builder = base(None)
        .read_timeout(Some(Duration::from_millis(400)))
        .events_capacity(16);
    let (engine, addr, rx) = start(builder, Mode::Sink);
    let mut peers: Vec<TcpStream> = (0..LATE_PEERS)
        .map(|_| {
            let peer = client(addr);
            next_open(&rx);
            peer
        })
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let sender = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                for peer in &mut peers {
                    peer.write_all(b"k").unwrap();
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            peers
        })
    };
    stall_the_poller(&engine);
    std::thread::sleep(STALL + Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    let _peers = sender.join().unwrap();
    assert_eq!(engine.stats().closed(CloseReason::ReadTimeout), 0);
    assert_eq!(engine.stats().open(), LATE_PEERS as u64);
}
