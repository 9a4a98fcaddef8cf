//! A connection's handler state reached from other threads: `Conn::with_state` runs a closure
//! with it on the poller, bounded per poller, never for a closed connection or a wrong type.

mod common;

use std::io::{Read, Write};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, mpsc};
use std::time::Duration;

use common::*;
use netpoll::{Conn, Engine, Handler, WriteError};

/// State: a prefix put in front of every echoed line.
struct Prefixer {
    tx: mpsc::Sender<Conn>,
}

impl Handler for Prefixer {
    type State = Vec<u8>;
    fn on_open(&mut self, conn: &Conn) -> Vec<u8> {
        let _ = self.tx.send(conn.clone());
        b"a:".to_vec()
    }
    fn on_data(&mut self, conn: &Conn, prefix: &mut Vec<u8>, data: &mut [u8]) -> usize {
        let mut out = prefix.clone();
        out.extend_from_slice(data);
        let _ = conn.write_slice(&out);
        data.len()
    }
}

fn start_prefixer() -> (Engine, std::net::SocketAddr, mpsc::Receiver<Conn>) {
    let (tx, rx) = mpsc::channel();
    let engine = Engine::builder()
        .pollers(1)
        .listen("127.0.0.1:0")
        .start(|_| Prefixer { tx: tx.clone() })
        .unwrap();
    let addr = engine.local_addrs()[0];
    (engine, addr, rx)
}

fn roundtrip(c: &mut std::net::TcpStream, line: &[u8]) -> Vec<u8> {
    c.write_all(line).unwrap();
    let mut buf = [0u8; 64];
    let n = c.read(&mut buf).unwrap();
    buf[..n].to_vec()
}

#[test]
fn another_thread_changes_a_connections_state_on_its_poller() {
    let (_engine, addr, rx) = start_prefixer();
    let mut c = client(addr);
    let conn = rx.recv_timeout(WAIT).unwrap();
    assert_eq!(roundtrip(&mut c, b"x"), b"a:x");
    let (done_tx, done) = mpsc::channel();
    let admin = conn.clone();
    std::thread::spawn(move || {
        admin
            .with_state(move |conn, prefix: &mut Vec<u8>| {
                *prefix = b"b:".to_vec();
                let _ = conn.write_slice(b"changed;");
                let _ = done_tx.send(());
            })
            .unwrap();
    });
    done.recv_timeout(WAIT).expect("the task ran");
    let mut buf = [0u8; 8];
    c.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"changed;");
    assert_eq!(roundtrip(&mut c, b"y"), b"b:y");
    // A closure for another type does not run (and is logged).
    let ran = Arc::new(AtomicUsize::new(0));
    let r = ran.clone();
    conn.with_state(move |_, _: &mut u64| {
        r.fetch_add(1, Ordering::Relaxed);
    })
    .unwrap();
    assert_eq!(roundtrip(&mut c, b"z"), b"b:z");
    assert_eq!(ran.load(Ordering::Relaxed), 0);
    // After the close: refused at once.
    conn.close();
    assert_eq!(
        conn.with_state(|_, _: &mut Vec<u8>| {}),
        Err(WriteError::Closed)
    );
}

#[test]
fn tasks_queued_for_a_stalled_poller_are_bounded_and_all_run_later() {
    const LIMIT: usize = 65_536;
    let (engine, addr, rx) = start_prefixer();
    let _c = client(addr);
    let conn = rx.recv_timeout(WAIT).unwrap();
    // The poller is held in a timer until the test has filled its task queue.
    let (began, stalled) = mpsc::channel();
    let (release, released) = mpsc::channel::<()>();
    engine.after(Duration::ZERO, move || {
        let _ = began.send(());
        let _ = released.recv_timeout(WAIT);
    });
    stalled.recv_timeout(WAIT).unwrap();
    let ran = Arc::new(AtomicUsize::new(0));
    for i in 0..LIMIT {
        let r = ran.clone();
        let queued = conn.with_state(move |_, _: &mut Vec<u8>| {
            r.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(queued, Ok(()), "task {i}");
    }
    assert_eq!(
        conn.with_state(|_, _: &mut Vec<u8>| {}),
        Err(WriteError::Busy)
    );
    release.send(()).unwrap();
    assert!(
        eventually(WAIT, || ran.load(Ordering::Relaxed) == LIMIT),
        "ran {}",
        ran.load(Ordering::Relaxed)
    );
    // Room again once they ran.
    assert_eq!(conn.with_state(|_, _: &mut Vec<u8>| {}), Ok(()));
}

#[test]
fn a_dialed_connection_has_no_state_to_reach_before_it_opens() {
    let (engine, addr, rx) = start_prefixer();
    let dialed = engine.dial(addr).unwrap();
    // Still connecting: no `on_open` yet, so no state; refused, not silently dropped.
    assert!(matches!(
        dialed.with_state(|_, _: &mut Vec<u8>| {}),
        Err(WriteError::Invalid(_))
    ));
    // Once open (the engine's own accepted side and the dialed side both), it works.
    let first = rx.recv_timeout(WAIT).unwrap();
    let second = rx.recv_timeout(WAIT).unwrap();
    let (done_tx, done) = mpsc::channel();
    for conn in [first, second] {
        let tx = done_tx.clone();
        conn.with_state(move |_, prefix: &mut Vec<u8>| {
            let _ = tx.send(prefix.clone());
        })
        .unwrap();
    }
    for _ in 0..2 {
        assert_eq!(done.recv_timeout(WAIT).unwrap(), b"a:");
    }
}
