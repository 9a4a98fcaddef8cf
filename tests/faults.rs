//! Fault injection with real sockets: a peer that resets in the middle of a large queued
//! write, one that half-closes while the server sends, one that vanishes (holds the socket
//! and goes silent), and many threads writing while the peer closes.
//!
//! Every case checks that the close is reported once with the right reason, that nothing
//! panics, that the poller goes quiet afterwards (no busy loop), and that the buffers are
//! freed. "Freed" is measured: this test binary counts live heap bytes with its own global
//! allocator, so the tests here run one at a time (`SERIAL`).

mod common;
mod ws_common;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::{Arc, Barrier, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use bytes::Bytes;
use netpoll::ws::WsServer;
use netpoll::{CloseReason, Conn, ConnId, Engine, WriteError};

#[path = "common/counting_alloc.rs"]
mod counting_alloc;
use counting_alloc::live_bytes;

/// The tests share the live-byte counter, so they run one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// CPU time (user + system) this process has used.
fn cpu_time() -> Duration {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage writes a whole rusage into the valid, zeroed buffer it is given.
    let usage = unsafe {
        assert_eq!(libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr()), 0);
        usage.assume_init()
    };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// After a close, the engine is quiet: no socket calls and (nearly) no CPU over a while in
/// which nothing happens. A poller spinning on a dead socket would burn the whole window.
fn assert_quiet(stats: impl Fn() -> netpoll::Stats) {
    let before = stats();
    let cpu = cpu_time();
    thread::sleep(Duration::from_millis(400));
    let used = cpu_time() - cpu;
    let after = stats();
    assert_eq!(after.read_calls, before.read_calls, "reads after the close");
    assert_eq!(
        after.write_calls, before.write_calls,
        "writes after the close"
    );
    assert!(
        used < Duration::from_millis(150),
        "{used:?} of CPU in 400 ms of nothing"
    );
}

/// The heap went back to (near) where it was before the connection: the queued megabytes
/// are gone even though the test still holds a handle to the closed connection.
fn assert_freed(baseline: isize, queued: usize) {
    let ok = common::eventually(Duration::from_secs(5), || {
        live_bytes() - baseline < (queued / 8) as isize
    });
    assert!(
        ok,
        "{} bytes still live after the close ({} were queued)",
        live_bytes() - baseline,
        queued
    );
}

/// No second close event for `id` shows up.
fn assert_no_second_close(rx: &std::sync::mpsc::Receiver<common::Event>, id: ConnId) {
    while let Ok(e) = rx.recv_timeout(Duration::from_millis(200)) {
        if let common::Event::Close(c, r) = e {
            assert_ne!(c, id, "second close reported: {r:?}");
        }
    }
}

/// A client whose close sends RST instead of FIN (SO_LINGER 0).
fn reset(s: TcpStream) {
    socket2::SockRef::from(&s)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(s);
}

fn is_reset(r: CloseReason) -> bool {
    matches!(
        r,
        CloseReason::Io(std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe)
    )
}

/// One poller, room for a large queue, a small kernel send buffer (so the queue stays in
/// the engine), and the engine warmed up by one connection so its lazily allocated per-poller
/// buffers are part of the baseline.
fn start_warm(
    mode: common::Mode,
) -> (
    Engine,
    std::net::SocketAddr,
    std::sync::mpsc::Receiver<common::Event>,
) {
    let (engine, addr, rx) = common::start(
        Engine::builder()
            .pollers(1)
            .max_outbound_bytes(32 << 20)
            .send_buffer_size(64 * 1024),
        mode,
    );
    let mut warm = common::client(addr);
    let conn = common::next_open(&rx);
    conn.write_slice(b"warm").unwrap();
    warm.write_all(b"warm").unwrap();
    let mut buf = [0u8; 4];
    warm.read_exact(&mut buf).unwrap();
    drop(warm);
    common::wait_close(&rx, conn.id());
    (engine, addr, rx)
}

#[test]
fn reset_in_the_middle_of_a_large_queued_write() {
    let _serial = serial();
    const QUEUED: usize = 16 << 20;
    let (engine, addr, rx) = start_warm(common::Mode::Sink);
    let baseline = live_bytes();

    let mut peer = common::client(addr);
    let conn = common::next_open(&rx);
    conn.write(Bytes::from(common::pattern(QUEUED, 1))).unwrap();
    // The peer takes some of it, so the write is truly in the middle, then resets.
    let mut got = vec![0u8; 256 * 1024];
    peer.read_exact(&mut got).unwrap();
    assert!(conn.pending_bytes() > QUEUED / 2, "most of it still queued");
    reset(peer);

    let reason = common::wait_close(&rx, conn.id());
    assert!(is_reset(reason), "closed with {reason:?}");
    assert_no_second_close(&rx, conn.id());
    assert!(!conn.is_open());
    assert_eq!(conn.pending_bytes(), 0, "queue released");
    assert_eq!(conn.write_slice(b"late"), Err(WriteError::Closed));
    let stats = engine.stats();
    assert_eq!(stats.open(), 0);
    assert_eq!(stats.freed, stats.opened, "every socket released");
    assert_quiet(|| engine.stats());
    assert_freed(baseline, QUEUED);
}

#[test]
fn peer_half_close_while_the_server_keeps_sending() {
    // The peer shuts down its write side and keeps reading, while a thread on our side
    // streams numbered records. Every record `write` accepted reaches the peer, in order,
    // before the FIN; the writer then sees Closed.
    let _serial = serial();
    let (engine, addr, rx) = start_warm(common::Mode::Sink);
    let baseline = live_bytes();

    let mut peer = common::client(addr);
    let conn = common::next_open(&rx);
    let writer = {
        let conn = conn.clone();
        thread::spawn(move || {
            let mut accepted = 0u32;
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                let mut record = [0u8; 64];
                record[..4].copy_from_slice(&accepted.to_le_bytes());
                match conn.write_slice(&record) {
                    Ok(()) => accepted += 1,
                    Err(WriteError::Closed) => return accepted,
                    Err(e) => panic!("write failed with {e:?}"),
                }
                if accepted % 64 == 0 {
                    thread::sleep(Duration::from_micros(200));
                }
            }
            panic!("the connection never closed");
        })
    };
    let mut record = [0u8; 64];
    peer.read_exact(&mut record).unwrap();
    peer.shutdown(Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    peer.read_to_end(&mut rest).unwrap();
    let accepted = writer.join().unwrap();

    assert_eq!(common::wait_close(&rx, conn.id()), CloseReason::PeerClosed);
    assert_no_second_close(&rx, conn.id());
    assert_eq!(rest.len() % 64, 0, "a record was cut");
    let received = 1 + rest.len() / 64;
    assert_eq!(
        received, accepted as usize,
        "accepted records lost or invented"
    );
    for (i, r) in std::iter::once(&record[..])
        .chain(rest.chunks(64))
        .enumerate()
    {
        assert_eq!(u32::from_le_bytes(r[..4].try_into().unwrap()), i as u32);
    }
    assert_eq!(conn.pending_bytes(), 0);
    assert_quiet(|| engine.stats());
    assert_freed(baseline, 1 << 20);
}

#[test]
fn vanished_peer_is_closed_by_the_read_deadline_and_the_write_deadline() {
    // A peer that vanished (no FIN, no RST) looks like one that holds its socket and goes
    // silent: nothing arrives, and what we send is never read.
    let _serial = serial();
    let (engine, addr, rx) = common::start(
        Engine::builder()
            .pollers(1)
            .timer_tick(Duration::from_millis(10))
            .read_timeout(Some(Duration::from_millis(300)))
            .write_timeout(Some(Duration::from_millis(300)))
            .send_buffer_size(64 * 1024)
            .max_outbound_bytes(32 << 20),
        common::Mode::Sink,
    );
    let silent = common::client(addr);
    let quiet_conn = common::next_open(&rx);
    let t0 = Instant::now();
    assert_eq!(
        common::wait_close(&rx, quiet_conn.id()),
        CloseReason::ReadTimeout
    );
    let waited = t0.elapsed();
    assert!(
        waited >= Duration::from_millis(280),
        "closed early: {waited:?}"
    );
    assert!(waited < Duration::from_secs(2), "closed late: {waited:?}");
    drop(silent);

    // The write side: a large reply to a peer that never reads. Data keeps "arriving" from
    // it (so the read deadline does not fire first) but nothing is taken.
    let mut stuck = common::client(addr);
    let stuck_conn = common::next_open(&rx);
    stuck_conn
        .write(Bytes::from(common::pattern(8 << 20, 2)))
        .unwrap();
    let t0 = Instant::now();
    let keep_talking = thread::spawn(move || {
        while stuck.write_all(b"still here").is_ok() && t0.elapsed() < Duration::from_secs(5) {
            thread::sleep(Duration::from_millis(50));
        }
    });
    assert_eq!(
        common::wait_close(&rx, stuck_conn.id()),
        CloseReason::WriteTimeout
    );
    assert!(t0.elapsed() < Duration::from_secs(2), "closed late");
    assert_no_second_close_any(&rx);
    assert_eq!(stuck_conn.pending_bytes(), 0, "queue released");
    keep_talking.join().unwrap();
    let stats = engine.stats();
    assert_eq!(stats.closed(CloseReason::ReadTimeout), 1);
    assert_eq!(stats.closed(CloseReason::WriteTimeout), 1);
    assert_eq!(stats.freed, 2);
    assert_quiet(|| engine.stats());
}

fn assert_no_second_close_any(rx: &std::sync::mpsc::Receiver<common::Event>) {
    while let Ok(e) = rx.recv_timeout(Duration::from_millis(200)) {
        assert!(!matches!(e, common::Event::Close(..)), "extra close: {e:?}");
    }
}

/// `THREADS` writers send numbered records on `conn` until it refuses them; returns the
/// number each got accepted. They back off while the outbound limit refuses; any other
/// refusal ends the writer, and from then on every write must be refused as `Closed`.
fn race_writers(conn: &Conn, threads: u8, start: &Arc<Barrier>) -> Vec<thread::JoinHandle<u32>> {
    (0..threads)
        .map(|t| {
            let conn = conn.clone();
            let start = start.clone();
            thread::spawn(move || {
                start.wait();
                let mut accepted = 0u32;
                let deadline = Instant::now() + Duration::from_secs(20);
                loop {
                    assert!(Instant::now() < deadline, "the connection never closed");
                    let mut record = [t; 32];
                    record[..4].copy_from_slice(&accepted.to_le_bytes());
                    match conn.write_slice(&record) {
                        Ok(()) => accepted += 1,
                        Err(WriteError::Overflow { .. }) => thread::yield_now(),
                        // A failed socket write reports the error once; the connection is
                        // closing from then on.
                        Err(WriteError::Closed | WriteError::Io(_)) => break,
                        Err(e) => panic!("write failed with {e:?}"),
                    }
                }
                for _ in 0..100 {
                    assert_eq!(conn.write_slice(b"x"), Err(WriteError::Closed), "reopened");
                }
                accepted
            })
        })
        .collect()
}

/// A warmed-up engine, a connected peer, and `THREADS` writers already racing on its
/// connection (see [`race_writers`]).
struct Race {
    engine: Engine,
    rx: std::sync::mpsc::Receiver<common::Event>,
    baseline: isize,
    peer: TcpStream,
    conn: Conn,
    writers: Vec<thread::JoinHandle<u32>>,
}

impl Race {
    const THREADS: u8 = 8;

    fn start() -> Race {
        let (engine, addr, rx) = start_warm(common::Mode::Sink);
        let baseline = live_bytes();
        let peer = common::client(addr);
        let conn = common::next_open(&rx);
        let start = Arc::new(Barrier::new(usize::from(Self::THREADS) + 1));
        let writers = race_writers(&conn, Self::THREADS, &start);
        start.wait();
        Race {
            engine,
            rx,
            baseline,
            peer,
            conn,
            writers,
        }
    }
}

#[test]
fn writes_from_many_threads_racing_a_graceful_peer_close() {
    // Eight threads write records as fast as they can while the peer reads a little,
    // half-closes and reads to the end: it gets, per writer, exactly the records that were
    // accepted, whole and in order.
    let _serial = serial();
    let Race {
        engine,
        rx,
        baseline,
        mut peer,
        conn,
        writers,
    } = Race::start();
    let mut first = vec![0u8; 64 * 1024];
    peer.read_exact(&mut first).unwrap();
    peer.shutdown(Shutdown::Write).unwrap();
    let mut all = first;
    peer.read_to_end(&mut all).unwrap();
    let accepted: Vec<u32> = writers.into_iter().map(|w| w.join().unwrap()).collect();

    assert_eq!(common::wait_close(&rx, conn.id()), CloseReason::PeerClosed);
    assert_no_second_close(&rx, conn.id());
    assert_eq!(all.len() % 32, 0, "a record was cut");
    let mut next = vec![0u32; usize::from(Race::THREADS)];
    for r in all.chunks(32) {
        let t = usize::from(r[4]);
        assert!(r[4..].iter().all(|&b| b == r[4]), "records interleaved");
        assert_eq!(u32::from_le_bytes(r[..4].try_into().unwrap()), next[t]);
        next[t] += 1;
    }
    assert_eq!(next, accepted, "accepted records lost or invented");
    drop(all);
    assert_quiet(|| engine.stats());
    assert_freed(baseline, 1 << 20);
}

#[test]
fn writes_from_many_threads_racing_a_reset() {
    let _serial = serial();
    let Race {
        engine,
        rx,
        baseline,
        mut peer,
        conn,
        writers,
    } = Race::start();
    let mut some = vec![0u8; 256 * 1024];
    peer.read_exact(&mut some).unwrap();
    reset(peer);
    drop(some);
    for w in writers {
        w.join().unwrap();
    }
    let reason = common::wait_close(&rx, conn.id());
    assert!(is_reset(reason), "closed with {reason:?}");
    assert_no_second_close(&rx, conn.id());
    assert_eq!(conn.pending_bytes(), 0);
    let stats = engine.stats();
    assert_eq!((stats.open(), stats.freed), (0, stats.opened));
    assert_quiet(|| engine.stats());
    assert_freed(baseline, 1 << 20);
}

#[test]
fn websocket_reset_during_a_large_send_and_many_senders_racing_a_close_frame() {
    let _serial = serial();
    let (engine, addr, rx) = ws_common::start_ws(
        WsServer::builder().max_message_size(64 << 20),
        Engine::builder()
            .pollers(1)
            .max_outbound_bytes(64 << 20)
            .send_buffer_size(64 * 1024),
    );

    // A reset while a 16 MiB message is queued: 1006, an I/O cause, queue released.
    let mut peer = ws_common::raw_upgraded(addr, "/record");
    let conn = ws_common::next_open(&rx);
    conn.send_binary(&common::pattern(16 << 20, 3)).unwrap();
    let mut some = vec![0u8; 128 * 1024];
    peer.read_exact(&mut some).unwrap();
    reset(peer);
    let close = ws_common::wait_close(&rx, conn.id());
    assert_eq!(u16::from(close.code), 1006);
    assert!(is_reset(close.cause), "cause {:?}", close.cause);
    assert_eq!(conn.pending_bytes(), 0);

    // Eight threads send while the peer sends a close frame: every send either queues a
    // whole message or is refused as closed, the close is reported once with the peer's
    // code, and the peer sees only whole frames before the server's close frame.
    let mut client = ws_common::connect(addr, "/record");
    let conn = ws_common::next_open(&rx);
    let start = Arc::new(Barrier::new(9));
    let senders: Vec<_> = (0..8u8)
        .map(|t| {
            let conn = conn.clone();
            let start = start.clone();
            thread::spawn(move || {
                start.wait();
                let mut sent = 0u32;
                while conn.send_binary(&[t; 100]).is_ok() {
                    sent += 1;
                    if sent % 32 == 0 {
                        thread::yield_now();
                    }
                }
                assert!(conn.send_binary(&[t; 100]).is_err(), "reopened");
                sent
            })
        })
        .collect();
    start.wait();
    thread::sleep(Duration::from_millis(20));
    client.close(None).unwrap();
    let mut received = 0u32;
    loop {
        match client.read() {
            Ok(tungstenite::Message::Binary(m)) => {
                assert_eq!(m.len(), 100);
                assert!(m.iter().all(|&b| b == m[0]), "frames interleaved");
                received += 1;
            }
            Ok(_) => {}
            Err(tungstenite::Error::ConnectionClosed) => break,
            Err(e) => panic!("client read failed: {e}"),
        }
    }
    let sent: u32 = senders.into_iter().map(|s| s.join().unwrap()).sum();
    assert_eq!(received, sent, "accepted messages lost or invented");
    let close = ws_common::wait_close(&rx, conn.id());
    assert_eq!(u16::from(close.code), 1005, "peer closed without a code");
    while let Ok(e) = rx.recv_timeout(Duration::from_millis(200)) {
        assert!(
            !matches!(e, ws_common::WsEvent::Close(..)),
            "extra close: {e:?}"
        );
    }
    assert_eq!(conn.pending_bytes(), 0);
    // The server closes the TCP connection first (RFC 6455 7.1.1), without the client's help.
    assert!(
        common::eventually(Duration::from_secs(5), || {
            let stats = engine.stats();
            (stats.open(), stats.freed) == (0, stats.opened)
        }),
        "sockets not released: {:?}",
        engine.stats()
    );
    drop(client);
    assert_quiet(|| engine.stats());
}
