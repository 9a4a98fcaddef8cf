//! A peer that never reads: the outbound bound holds, the policy happens, others keep working.

mod common;

use std::io::{Read, Write};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use netpoll::{CloseReason, Engine, OverflowPolicy, WriteError};

const LIMIT: usize = 256 * 1024;

/// Writes 16 KiB messages until the engine refuses one; returns (accepted bytes, the error).
fn fill_until_refused(conn: &netpoll::Conn) -> (usize, WriteError) {
    let msg = Bytes::from(vec![b'x'; 16 * 1024]);
    let mut accepted = 0;
    for _ in 0..100_000 {
        match conn.write(msg.clone()) {
            Ok(()) => {
                accepted += msg.len();
                assert!(conn.pending_bytes() <= LIMIT, "queue above its bound");
            }
            Err(e) => return (accepted, e),
        }
    }
    panic!("a peer that never reads absorbed {accepted} bytes without backpressure");
}

fn check_other_connection_works(addr: std::net::SocketAddr) {
    let mut other = client(addr);
    let data = pattern(100_000, 9);
    let got = echo_roundtrip(&mut other, &data);
    assert!(got == data);
}

#[test]
fn error_policy_refuses_and_keeps_connection() {
    let builder = Engine::builder()
        .pollers(2)
        .max_outbound_bytes(LIMIT)
        .send_buffer_size(64 * 1024)
        .overflow_policy(OverflowPolicy::Error);
    let (engine, addr, rx) = start(builder, Mode::Echo);
    let _stuck = client(addr); // never reads
    let conn = next_open(&rx);
    let (accepted, err) = fill_until_refused(&conn);
    match err {
        WriteError::Overflow {
            pending,
            len,
            limit,
        } => {
            assert_eq!(limit, LIMIT);
            assert_eq!(len, 16 * 1024);
            // Refused when the message and its bookkeeping (64 B) would not fit.
            assert!(pending + len + 64 > LIMIT && pending <= LIMIT);
        }
        other => panic!("expected Overflow, got {other:?}"),
    }
    // Kernel buffers absorb some; the engine's own queue holds at most LIMIT.
    assert!(accepted > 0);
    assert!(conn.is_open(), "Error policy keeps the connection");
    assert!(conn.pending_bytes() <= LIMIT);
    assert!(engine.stats().overflows >= 1);
    // Still refused while the peer is stuck, and nothing grows.
    assert!(matches!(
        conn.write_slice(&[0u8; 16 * 1024]),
        Err(WriteError::Overflow { .. })
    ));
    check_other_connection_works(addr);
    assert!(conn.is_open());
}

#[test]
fn close_policy_closes_with_overflow_reason() {
    let builder = Engine::builder()
        .pollers(1)
        .max_outbound_bytes(LIMIT)
        .send_buffer_size(64 * 1024)
        .overflow_policy(OverflowPolicy::Close);
    let (engine, addr, rx) = start(builder, Mode::Echo);
    let _stuck = client(addr);
    let conn = next_open(&rx);
    let (_, err) = fill_until_refused(&conn);
    assert!(matches!(err, WriteError::Overflow { .. }));
    assert_eq!(wait_close(&rx, conn.id()), CloseReason::Overflow);
    assert!(!conn.is_open());
    assert_eq!(conn.write_slice(b"more"), Err(WriteError::Closed));
    assert!(eventually(Duration::from_secs(5), || engine
        .stats()
        .closed(CloseReason::Overflow)
        == 1));
    // Aborted: the queue is freed at once.
    assert!(eventually(Duration::from_secs(5), || conn.pending_bytes() == 0));
    check_other_connection_works(addr);
}

#[test]
fn drained_callback_fires_when_slow_reader_catches_up() {
    let builder = Engine::builder()
        .pollers(1)
        .max_outbound_bytes(LIMIT)
        .low_watermark(LIMIT / 4)
        .send_buffer_size(64 * 1024);
    let (_engine, addr, rx) = start(builder, Mode::Record);
    let mut peer = client(addr);
    let conn = next_open(&rx);
    let (accepted, _) = fill_until_refused(&conn);
    // Now read everything: the queue drains past the low watermark once.
    let mut got = vec![0u8; accepted];
    peer.read_exact(&mut got).unwrap();
    loop {
        if let Event::Drained(id) = next_event(&rx, "on_drained") {
            assert_eq!(id, conn.id());
            break;
        }
    }
    assert_eq!(conn.pending_bytes(), 0);
    conn.write_slice(b"after drain").unwrap();
    let mut tail = [0u8; 11];
    peer.read_exact(&mut tail).unwrap();
    assert_eq!(&tail, b"after drain");
    peer.write_all(b"x").unwrap();
}

#[test]
fn a_per_connection_policy_overrides_the_engines() {
    // Engine: Error. One connection is switched to Close; another keeps Error.
    let builder = Engine::builder()
        .pollers(1)
        .max_outbound_bytes(LIMIT)
        .send_buffer_size(64 * 1024)
        .overflow_policy(OverflowPolicy::Error);
    let (_engine, addr, rx) = start(builder, Mode::Echo);
    let _a = client(addr);
    let cut = next_open(&rx);
    let _b = client(addr);
    let kept = next_open(&rx);
    cut.set_overflow_policy(OverflowPolicy::Close);
    let (_, err) = fill_until_refused(&cut);
    assert!(matches!(err, WriteError::Overflow { .. }));
    assert_eq!(wait_close(&rx, cut.id()), CloseReason::Overflow);
    let (_, err) = fill_until_refused(&kept);
    assert!(matches!(err, WriteError::Overflow { .. }));
    assert!(
        kept.is_open(),
        "the engine's Error policy still applies to the other"
    );
}

#[test]
fn the_queued_bytes_gauge_follows_what_the_queues_hold() {
    // Two stalled peers, one filled from this thread (direct path), one from a timer on the
    // poller (corked path): the gauge is the sum of their pending_bytes, and falls to 0 when
    // one drains and the other is aborted.
    const CHUNKS: usize = 32;
    let builder = Engine::builder()
        .pollers(1)
        .send_buffer_size(4096)
        .max_outbound_bytes(1 << 20);
    let (engine, addr, rx) = start(builder, Mode::Sink);
    let mut reader = small_client(addr);
    let a = next_open(&rx);
    let _stalled = small_client(addr);
    let b = next_open(&rx);
    for _ in 0..CHUNKS {
        a.write(Bytes::from(vec![b'a'; 8192])).unwrap();
    }
    let from_poller = b.clone();
    engine.after(Duration::ZERO, move || {
        for _ in 0..CHUNKS {
            from_poller.write_slice(&[b'b'; 8192]).unwrap();
        }
    });
    let sum = || a.pending_bytes() + b.pending_bytes();
    assert!(
        eventually(WAIT, || b.pending_bytes() > 0
            && engine.stats().queued_bytes as usize == sum()),
        "gauge {} vs queues {}",
        engine.stats().queued_bytes,
        sum()
    );
    assert!(engine.stats().queued_bytes > 256 * 1024);
    assert!(engine.stats().to_string().contains("queued_bytes="));
    // `a`'s peer reads everything; `b` is aborted.
    let mut buf = vec![0u8; CHUNKS * 8192];
    reader.read_exact(&mut buf).unwrap();
    b.abort();
    assert!(
        eventually(WAIT, || engine.stats().queued_bytes == 0),
        "gauge stuck at {}",
        engine.stats().queued_bytes
    );
}
