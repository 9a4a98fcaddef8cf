//! Close, abort, shutdown and stale handles.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use netpoll::{CloseReason, Engine, WriteError};

#[test]
fn stale_handle_never_reaches_the_connection_that_reuses_its_slot() {
    // One poller: the slab slot of the first connection is reused by the second.
    let (_engine, addr, rx) = start(Engine::builder().pollers(1), Mode::Sink);
    let first = client(addr);
    let old = next_open(&rx);
    drop(first);
    assert_eq!(wait_close(&rx, old.id()), CloseReason::PeerClosed);
    let mut second = client(addr);
    let new = next_open(&rx);
    assert_ne!(old.id(), new.id());
    assert_eq!(old.write_slice(b"to the old one"), Err(WriteError::Closed));
    assert_eq!(
        old.write(Bytes::from_static(b"again")),
        Err(WriteError::Closed)
    );
    old.close();
    old.abort();
    // The new connection received nothing and is still open.
    second
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut buf = [0u8; 64];
    let err = second.read(&mut buf).unwrap_err();
    assert!(matches!(
        err.kind(),
        ErrorKind::WouldBlock | ErrorKind::TimedOut
    ));
    assert!(new.is_open());
    new.write_slice(b"ok").unwrap();
    second.set_read_timeout(Some(WAIT)).unwrap();
    second.read_exact(&mut buf[..2]).unwrap();
    assert_eq!(&buf[..2], b"ok");
}

/// One poller, room to queue 16 MiB, and a small kernel send buffer so most of it waits in
/// the engine's queue.
fn big_queue() -> netpoll::EngineBuilder {
    Engine::builder()
        .pollers(1)
        .max_outbound_bytes(16 << 20)
        .send_buffer_size(64 * 1024)
}

#[test]
fn close_flushes_queued_data_before_the_fin() {
    const SIZE: usize = 8 << 20;
    let (engine, addr, rx) = start(big_queue(), Mode::Sink);
    let mut peer = client(addr);
    peer.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let conn = next_open(&rx);
    let data = pattern(SIZE, 3);
    conn.write(Bytes::from(data.clone())).unwrap();
    assert!(
        conn.pending_bytes() > 0,
        "peer is not reading yet, so bytes must be queued"
    );
    conn.close();
    assert_eq!(conn.write_slice(b"late"), Err(WriteError::Closed));
    assert_eq!(wait_close(&rx, conn.id()), CloseReason::Local);
    // Start reading only now: everything queued arrives, then EOF.
    let got = read_to_eof(&mut peer).expect("clean EOF after the data");
    assert_eq!(got.len(), SIZE);
    assert!(got == data);
    drop(peer);
    assert!(eventually(Duration::from_secs(5), || engine.stats().freed == 1));
    assert_eq!(engine.stats().close_flush_timeouts, 0);
}

#[test]
fn abort_does_not_wait_for_queued_data() {
    let (engine, addr, rx) = start(big_queue(), Mode::Sink);
    let mut peer = client(addr);
    let conn = next_open(&rx);
    conn.write(Bytes::from(vec![1u8; 8 << 20])).unwrap();
    let t0 = Instant::now();
    conn.abort();
    assert_eq!(wait_close(&rx, conn.id()), CloseReason::Local);
    assert!(eventually(Duration::from_secs(2), || engine.stats().freed == 1));
    assert!(t0.elapsed() < Duration::from_secs(2));
    assert_eq!(conn.pending_bytes(), 0);
    // The peer sees the end (EOF or reset) well before 8 MiB.
    let mut got = 0usize;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        match peer.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got += n,
        }
    }
    assert!(
        got < 8 << 20,
        "abort must discard queued bytes (peer got {got})"
    );
}

#[test]
fn close_timeout_bounds_a_flush_to_a_peer_that_never_reads() {
    let builder = big_queue()
        .timer_tick(Duration::from_millis(10))
        .close_timeout(Duration::from_millis(300));
    let (engine, addr, rx) = start(builder, Mode::Sink);
    let _stuck = client(addr);
    let conn = next_open(&rx);
    conn.write(Bytes::from(vec![1u8; 8 << 20])).unwrap();
    let t0 = Instant::now();
    conn.close();
    assert!(eventually(Duration::from_secs(3), || engine.stats().freed == 1));
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_millis(290),
        "freed before the timeout: {took:?}"
    );
    assert_eq!(engine.stats().close_flush_timeouts, 1);
}

#[test]
fn peer_half_close_still_gets_queued_data() {
    let (_engine, addr, rx) = start(Engine::builder().pollers(1), Mode::Echo);
    let mut peer = client(addr);
    let _conn = next_open(&rx);
    let data = pattern(3 << 20, 5);
    peer.write_all(&data).unwrap();
    peer.shutdown(std::net::Shutdown::Write).unwrap();
    // The echo of everything sent before the FIN still arrives, then EOF.
    let got = read_to_eof(&mut peer).unwrap();
    assert_eq!(got.len(), data.len());
    assert!(got == data);
}

#[test]
fn shutdown_closes_everything_and_each_close_callback_runs_once() {
    const CONNS: usize = 200;
    let (engine, addr, rx) = start(Engine::builder().pollers(2), Mode::Echo);
    let mut clients: Vec<_> = (0..CONNS).map(|_| client(addr)).collect();
    let mut ids = Vec::new();
    for _ in 0..CONNS {
        ids.push(next_open(&rx).id());
    }
    // Queue a little data on each so shutdown has something to flush.
    for c in clients.iter_mut() {
        c.write_all(b"ping").unwrap();
    }
    for c in clients.iter_mut() {
        let mut b = [0u8; 4];
        c.read_exact(&mut b).unwrap();
    }
    let t0 = Instant::now();
    engine.shutdown(Duration::from_secs(5));
    assert!(
        t0.elapsed() < Duration::from_secs(2),
        "idle peers must not hold shutdown"
    );
    let mut closes = std::collections::HashMap::new();
    while let Ok(ev) = rx.try_recv() {
        if let Event::Close(id, reason) = ev {
            assert_eq!(reason, CloseReason::Shutdown);
            *closes.entry(id).or_insert(0) += 1;
        }
    }
    assert_eq!(closes.len(), CONNS);
    assert!(
        closes.values().all(|&n| n == 1),
        "on_close ran more than once"
    );
    for id in ids {
        assert!(closes.contains_key(&id));
    }
    // Every client sees EOF.
    for c in clients.iter_mut() {
        assert_eq!(read_to_eof(c).unwrap().len(), 0);
    }
}

#[test]
fn drop_of_engine_shuts_down_and_refuses_new_connections() {
    let (engine, addr, rx) = start(Engine::builder().pollers(1), Mode::Echo);
    let mut c = client(addr);
    let conn = next_open(&rx);
    drop(engine);
    assert_eq!(wait_close(&rx, conn.id()), CloseReason::Shutdown);
    assert_eq!(read_to_eof(&mut c).unwrap().len(), 0);
    assert_eq!(conn.write_slice(b"x"), Err(WriteError::Closed));
    assert!(
        std::net::TcpStream::connect(addr).is_err(),
        "listener is closed"
    );
}

/// Shuts the engine down from inside `on_data` through the handle its factory got, and
/// dials a second connection from the callback before that.
struct QuitOnRequest {
    engine: netpoll::EngineHandle,
    tx: std::sync::mpsc::Sender<Result<netpoll::ConnId, netpoll::Error>>,
}

impl netpoll::Handler for QuitOnRequest {
    type State = ();
    fn on_open(&mut self, _: &netpoll::Conn) {}
    fn on_data(&mut self, conn: &netpoll::Conn, _: &mut (), data: &mut [u8]) -> usize {
        match &*data {
            b"dial" => {
                let dialed = self.engine.dial(conn.peer_addr());
                let _ = self.tx.send(dialed.map(|c| c.id()));
            }
            b"quit" => {
                self.engine.shutdown(Duration::from_secs(2));
                // Once the shutdown started, the handle refuses new work.
                let _ = self
                    .tx
                    .send(self.engine.dial(conn.peer_addr()).map(|c| c.id()));
            }
            _ => {}
        }
        data.len()
    }
}

#[test]
fn a_handler_shuts_the_engine_down_through_its_handle_and_the_owner_waits() {
    fn assert_handle<T: Clone + Send + Sync + 'static>() {}
    assert_handle::<netpoll::EngineHandle>();
    let (tx, rx) = std::sync::mpsc::channel();
    let engine = Engine::builder()
        .pollers(2)
        .listen("127.0.0.1:0")
        .start(|engine| QuitOnRequest {
            engine: engine.clone(),
            tx: tx.clone(),
        })
        .unwrap();
    let addr = engine.local_addrs()[0];
    let handle = engine.handle();
    let mut c = client(addr);
    c.write_all(b"dial").unwrap();
    // A dial from a callback works (to the client's own address: refused later, no matter).
    assert!(rx.recv_timeout(WAIT).unwrap().is_ok());
    std::thread::sleep(Duration::from_millis(50));
    c.write_all(b"quit").unwrap();
    let t0 = Instant::now();
    let stats = engine.wait();
    assert!(t0.elapsed() < Duration::from_secs(5), "wait returned late");
    assert!(matches!(
        rx.recv_timeout(WAIT).unwrap(),
        Err(netpoll::Error::Shutdown)
    ));
    assert!(handle.is_shutting_down());
    assert_eq!(stats.closed(CloseReason::Shutdown), 1);
    assert_eq!(read_to_eof(&mut c).unwrap().len(), 0);
    // The handle outlives the engine: harmless.
    assert!(matches!(handle.dial(addr), Err(netpoll::Error::Shutdown)));
    assert_eq!(handle.stats().open(), 0);
}
