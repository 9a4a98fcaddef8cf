//! Receive-side backpressure: a paused connection reads nothing (the peer is held back by
//! TCP), is not timed out for it, and gets everything once reading resumes.

mod common;

use std::io::{ErrorKind, Write};
use std::time::Duration;

use common::*;
use netpoll::{CloseReason, Engine};

#[test]
fn a_paused_connection_holds_the_peer_back_and_resumes_where_it_stopped() {
    let builder = Engine::builder()
        .pollers(1)
        .timer_tick(Duration::from_millis(10))
        .read_timeout(Some(Duration::from_millis(300)));
    let (engine, addr, rx) = start(builder, Mode::Record);
    let mut c = client(addr);
    let conn = next_open(&rx);
    conn.pause_reading();
    assert!(conn.is_reading_paused());
    // The peer writes until its socket refuses: the kernel buffers are full, nothing is read.
    c.set_nonblocking(true).unwrap();
    let chunk = vec![b'p'; 64 * 1024];
    let mut sent = 0usize;
    let mut refused = false;
    for _ in 0..100_000 {
        match c.write(&chunk) {
            Ok(n) => sent += n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                refused = true;
                break;
            }
            Err(e) => panic!("write: {e}"),
        }
    }
    assert!(refused, "TCP never pushed back after {sent} bytes");
    // Three read timeouts pass while paused: no data, no timeout.
    std::thread::sleep(Duration::from_millis(900));
    if io_uring_backend() {
        // The ring receives ahead of the handler: what arrived before the poller cancelled the
        // receive is kept (not delivered), the rest waits in the kernel.
        let taken = engine.stats().bytes_in as usize;
        assert!(
            taken < sent,
            "the ring drained all {sent} bytes while paused"
        );
    } else {
        assert_eq!(engine.stats().bytes_in, 0);
    }
    assert!(conn.is_open(), "timed out while paused");
    assert!(rx.try_recv().is_err(), "an event while paused");
    conn.resume_reading();
    let mut got = 0;
    while got < sent {
        match next_event(&rx, "data after resume") {
            Event::Data(_, d) => got += d.len(),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(got, sent);
    // Reading again: the read timeout applies again to a silent peer.
    assert_eq!(wait_close(&rx, conn.id()), CloseReason::ReadTimeout);
}
