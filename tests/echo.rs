//! Echo correctness over real loopback sockets.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::*;
use netpoll::{AcceptMode, Engine};

const SIZES: [usize; 10] = [
    1,
    2,
    100,
    1500,
    4096,
    65_535,
    65_536,
    65_537,
    1 << 20,
    8 << 20,
];

#[test]
fn echo_sizes_from_one_byte_to_8_mib() {
    let (engine, addr, _rx) = start(Engine::builder().pollers(2), Mode::Echo);
    let mut s = client(addr);
    for (i, &len) in SIZES.iter().enumerate() {
        let data = pattern(len, i as u8);
        let got = echo_roundtrip(&mut s, &data);
        assert!(got == data, "echo of {len} bytes differs");
    }
    let st = engine.stats();
    let total = SIZES.iter().sum::<usize>() as u64;
    assert_eq!(st.bytes_in, total);
    assert_eq!(st.bytes_out, total);
}

fn many_connections(mode: AcceptMode) {
    const CONNS: usize = 2000;
    let (engine, addr, _rx) = start(Engine::builder().pollers(2).accept_mode(mode), Mode::Echo);
    let mut clients: Vec<TcpStream> = (0..CONNS).map(|_| client(addr)).collect();
    // Every connection is open at once, each with its own message in flight.
    for (i, c) in clients.iter_mut().enumerate() {
        c.write_all(format!("hello from {i:05}\n").as_bytes())
            .unwrap();
    }
    for (i, c) in clients.iter_mut().enumerate() {
        let want = format!("hello from {i:05}\n");
        let mut got = vec![0u8; want.len()];
        c.read_exact(&mut got).unwrap();
        assert_eq!(got, want.as_bytes());
    }
    assert!(eventually(Duration::from_secs(5), || engine.stats().open()
        == CONNS as u64));
    let st = engine.stats();
    assert_eq!(st.accepted, CONNS as u64);
    drop(clients);
    assert!(
        eventually(Duration::from_secs(10), || engine.stats().open() == 0),
        "every peer close is noticed: {:?}",
        engine.stats()
    );
    assert!(eventually(Duration::from_secs(10), || engine.stats().freed
        == CONNS as u64));
}

#[test]
fn two_thousand_connections_at_once_hand_off() {
    many_connections(AcceptMode::HandOff);
}

#[test]
fn two_thousand_connections_at_once_reuse_port() {
    many_connections(AcceptMode::ReusePort);
}

#[test]
fn handoff_spreads_connections_over_pollers() {
    let (_engine, addr, rx) = start(Engine::builder().pollers(4), Mode::Echo);
    let _clients: Vec<TcpStream> = (0..8).map(|_| client(addr)).collect();
    let mut per_poller = [0usize; 4];
    for _ in 0..8 {
        per_poller[next_open(&rx).poller_index()] += 1;
    }
    assert_eq!(per_poller, [2, 2, 2, 2], "round robin over pollers");
}

/// Writes a mix of small (corked) and large (straight to the socket when nothing is queued)
/// messages from inside `on_data`, and bytes from the peer pick the order.
struct Mixed;

impl netpoll::Handler for Mixed {
    type State = ();

    fn on_open(&mut self, _: &netpoll::Conn) {}

    fn on_data(&mut self, conn: &netpoll::Conn, _: &mut (), data: &mut [u8]) -> usize {
        for &b in data.iter() {
            for (i, &len) in mixed_plan(b).iter().enumerate() {
                conn.write_slice(&pattern(len, b.wrapping_add(i as u8)))
                    .expect("write");
            }
        }
        data.len()
    }
}

fn mixed_plan(b: u8) -> Vec<usize> {
    match b {
        b'a' => vec![10, 100_000, 10, 20_000, 8192, 8191, 3],
        _ => vec![300_000, 7, 9000, 9000, 1],
    }
}

#[test]
fn small_and_large_writes_from_a_callback_keep_their_order() {
    let engine = Engine::builder()
        .pollers(1)
        .send_buffer_size(32 * 1024) // large writes go out in part and queue the rest
        .listen("127.0.0.1:0")
        .start(|_| Mixed)
        .unwrap();
    let mut s = client(engine.local_addrs()[0]);
    s.write_all(b"abab").unwrap();
    let want: Vec<u8> = b"abab"
        .iter()
        .flat_map(|&b| {
            mixed_plan(b)
                .into_iter()
                .enumerate()
                .flat_map(move |(i, len)| pattern(len, b.wrapping_add(i as u8)))
        })
        .collect();
    let mut got = vec![0u8; want.len()];
    s.read_exact(&mut got).unwrap();
    assert!(got == want, "bytes out of order");
}
