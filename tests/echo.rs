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
