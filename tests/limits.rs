//! Every engine limit crossed: connection count, inbound remainder, read fairness.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::*;
use netpoll::{CloseReason, Conn, Engine, Handler};

#[test]
fn max_connections_pauses_accepting_until_one_closes() {
    let builder = Engine::builder()
        .pollers(2)
        .max_connections(5)
        .accept_backoff(Duration::from_millis(20));
    let (engine, addr, rx) = start(builder, Mode::Echo);
    let mut clients: Vec<TcpStream> = (0..8).map(|_| client(addr)).collect();
    let first: Vec<Conn> = (0..5).map(|_| next_open(&rx)).collect();
    // The other three complete the TCP handshake in the kernel backlog but are not accepted.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(engine.stats().accepted, 5);
    assert!(engine.stats().accept_pauses >= 1);
    // Paused, not spinning: with a 20 ms back-off, 300 ms costs a few dozen accept calls.
    assert!(engine.stats().accept_calls < 100, "{:?}", engine.stats());
    for c in clients[5..].iter_mut() {
        c.write_all(b"?").unwrap();
    }
    // Closing served connections lets the waiting ones in, one for one.
    for c in first.iter().take(3) {
        c.close();
        drop(clients.remove(0));
    }
    for c in clients.iter_mut().skip(2) {
        let mut b = [0u8; 1];
        c.read_exact(&mut b).unwrap();
        assert_eq!(&b, b"?");
    }
    assert_eq!(engine.stats().accepted, 8);
}

/// Consumes input only in whole 4-byte-length-prefixed frames; reports each frame.
struct Framed {
    tx: mpsc::Sender<Vec<u8>>,
}

impl Handler for Framed {
    type State = ();
    fn on_open(&mut self, _: &Conn) {}
    fn on_data(&mut self, _: &Conn, _: &mut (), data: &mut [u8]) -> usize {
        let mut used = 0;
        while data.len() - used >= 4 {
            let len = u32::from_be_bytes(data[used..used + 4].try_into().unwrap()) as usize;
            if data.len() - used - 4 < len {
                break; // partial frame: leave it for the next call
            }
            self.tx
                .send(data[used + 4..used + 4 + len].to_vec())
                .unwrap();
            used += 4 + len;
        }
        used
    }
}

#[test]
fn unconsumed_bytes_are_presented_again_with_the_next_data() {
    let (tx, rx) = mpsc::channel();
    let engine = Engine::builder()
        .pollers(1)
        .listen("127.0.0.1:0")
        .start(|_| Framed { tx: tx.clone() })
        .unwrap();
    let mut c = client(engine.local_addrs()[0]);
    let mut wire = Vec::new();
    let frames: Vec<Vec<u8>> = (0..50)
        .map(|i| pattern(i * 997 % 200_000, i as u8))
        .collect();
    for f in &frames {
        wire.extend_from_slice(&(f.len() as u32).to_be_bytes());
        wire.extend_from_slice(f);
    }
    // Dribble it in odd-sized pieces so frames straddle reads.
    for piece in wire.chunks(7919) {
        c.write_all(piece).unwrap();
        if piece.len() < 7919 {
            break;
        }
    }
    for f in &frames {
        let got = rx.recv_timeout(WAIT).expect("frame");
        assert!(got == *f, "frame of {} bytes differs", f.len());
    }
}

#[test]
fn inbound_remainder_over_the_limit_closes_with_inbound_overflow() {
    let builder = Engine::builder().pollers(1).max_inbound_bytes(32 * 1024);
    let (engine, addr, rx) = start(builder, Mode::Hoard);
    let mut c = client(addr);
    let conn = next_open(&rx);
    let _ = c.write_all(&vec![0u8; 256 * 1024]);
    assert_eq!(wait_close(&rx, conn.id()), CloseReason::InboundOverflow);
    assert_eq!(engine.stats().closed(CloseReason::InboundOverflow), 1);
    // Below the limit nothing happens.
    let mut c2 = client(addr);
    let conn2 = next_open(&rx);
    c2.write_all(&[1u8; 1000]).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    assert!(conn2.is_open());
}

/// Echoes on connections whose first byte is `E`; swallows everything else.
struct EchoIfAsked;

impl Handler for EchoIfAsked {
    type State = Option<bool>;
    fn on_open(&mut self, _: &Conn) -> Option<bool> {
        None
    }
    fn on_data(&mut self, conn: &Conn, echo: &mut Option<bool>, data: &mut [u8]) -> usize {
        if *echo.get_or_insert(data[0] == b'E') {
            conn.write_slice(data).unwrap();
        }
        data.len()
    }
}

#[test]
fn a_flooding_connection_does_not_starve_another_on_the_same_poller() {
    let engine = Engine::builder()
        .pollers(1)
        .read_buffer_size(16 * 1024)
        .max_read_per_wakeup(16 * 1024)
        .listen("127.0.0.1:0")
        .start(|_| EchoIfAsked)
        .unwrap();
    let addr = engine.local_addrs()[0];
    let mut flood = client(addr);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop2 = stop.clone();
    let flooder = std::thread::spawn(move || {
        let chunk = vec![b'F'; 1 << 20];
        while !stop2.load(std::sync::atomic::Ordering::Relaxed) {
            if flood.write_all(&chunk).is_err() {
                break;
            }
        }
    });
    assert!(eventually(Duration::from_secs(5), || engine
        .stats()
        .bytes_in
        > 4 << 20));
    // Round trips on a second connection of the same single poller stay prompt.
    let mut asker = client(addr);
    for i in 0..20 {
        let t0 = Instant::now();
        let msg = format!("E{i:04}");
        asker.write_all(msg.as_bytes()).unwrap();
        let mut got = [0u8; 5];
        asker.read_exact(&mut got).unwrap();
        assert_eq!(&got, msg.as_bytes());
        assert!(
            t0.elapsed() < Duration::from_secs(2),
            "starved: {:?}",
            t0.elapsed()
        );
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let before = engine.stats().bytes_in;
    assert!(before > 8 << 20, "the flood kept flowing meanwhile");
    drop(engine);
    flooder.join().unwrap();
}

#[test]
fn dials_racing_from_many_threads_never_pass_max_connections() {
    // A dialing-only engine with room for 40; 8 threads try 20 dials each at once. Exactly 40
    // are taken, the rest are refused at once (the check and the count are one atomic step).
    const MAX: usize = 40;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, _rx) = mpsc::channel();
    let engine = Engine::builder()
        .pollers(2)
        .max_connections(MAX)
        .start(|_| Recorder {
            tx: tx.clone(),
            mode: Mode::Sink,
        })
        .unwrap();
    let handle = engine.handle();
    let start = std::sync::Arc::new(std::sync::Barrier::new(8));
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let (handle, start) = (handle.clone(), start.clone());
            std::thread::spawn(move || {
                start.wait();
                (0..20)
                    .filter_map(|_| handle.dial(addr).ok())
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let conns: Vec<Conn> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    assert_eq!(conns.len(), MAX, "dials taken");
    assert_eq!(engine.stats().dialed, MAX as u64);
    drop(listener);
}
