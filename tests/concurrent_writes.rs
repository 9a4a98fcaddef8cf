//! Many threads writing to one connection at once: every message arrives whole and each
//! thread's messages in order, with no lock on the caller's side.

mod common;

use std::io::{BufRead, BufReader};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use netpoll::{Engine, WriteError};

const THREADS: usize = 16;
const MESSAGES: usize = 1000;

/// `T<thread> S<seq> <payload>\n` where the payload length varies (up to ~3 KiB) so writes
/// regularly hit a full socket and take the queued path, and its bytes are derived from the
/// header so a torn or interleaved message is detected.
fn message(thread: usize, seq: usize) -> Vec<u8> {
    let len = (thread * 131 + seq * 17) % 3000;
    let fill = b'a' + ((thread + seq) % 26) as u8;
    let mut m = format!("T{thread} S{seq} ").into_bytes();
    m.extend(std::iter::repeat_n(fill, len));
    m.push(b'\n');
    m
}

fn run(use_slices: bool, max_outbound: usize) {
    let (engine, addr, rx) = start(
        Engine::builder()
            .pollers(2)
            .max_outbound_bytes(max_outbound),
        Mode::Sink,
    );
    let client = client(addr);
    let conn = next_open(&rx);
    let overflows = Arc::new(AtomicU64::new(0));
    let writers: Vec<_> = (0..THREADS)
        .map(|t| {
            let conn = conn.clone();
            let overflows = overflows.clone();
            std::thread::spawn(move || {
                for seq in 0..MESSAGES {
                    let m = message(t, seq);
                    let bytes = Bytes::from(m.clone());
                    loop {
                        let r = if use_slices {
                            conn.write_slice(&m)
                        } else {
                            conn.write(bytes.clone())
                        };
                        match r {
                            Ok(()) => break,
                            // Backpressure: the message was not queued at all; retry it whole.
                            Err(WriteError::Overflow { .. }) => {
                                overflows.fetch_add(1, Ordering::Relaxed);
                                std::thread::sleep(Duration::from_micros(200));
                            }
                            Err(e) => panic!("write failed: {e}"),
                        }
                    }
                }
            })
        })
        .collect();
    let mut next_seq = [0usize; THREADS];
    let mut reader = BufReader::new(client);
    let mut line = Vec::new();
    for _ in 0..THREADS * MESSAGES {
        line.clear();
        reader.read_until(b'\n', &mut line).expect("read message");
        let text = std::str::from_utf8(&line).expect("utf8");
        let mut parts = text.splitn(3, ' ');
        let t: usize = parts.next().unwrap()[1..].parse().expect("thread field");
        let seq: usize = parts.next().unwrap()[1..].parse().expect("seq field");
        assert_eq!(seq, next_seq[t], "thread {t}'s messages out of order");
        assert_eq!(
            line,
            message(t, seq),
            "message T{t} S{seq} torn or interleaved"
        );
        next_seq[t] += 1;
    }
    for w in writers {
        w.join().unwrap();
    }
    assert_eq!(next_seq, [MESSAGES; THREADS]);
    assert!(conn.pending_bytes() <= max_outbound);
    drop(engine);
    eprintln!("overflow retries: {}", overflows.load(Ordering::Relaxed));
}

#[test]
fn sixteen_threads_write_bytes_to_one_connection() {
    run(false, 4 << 20);
}

#[test]
fn sixteen_threads_write_slices_to_one_connection() {
    run(true, 4 << 20);
}

#[test]
fn sixteen_threads_under_a_tight_outbound_limit() {
    // 64 KiB: writers hit the limit constantly, retry whole messages, still no tearing.
    run(false, 64 << 10);
}
