//! Outbound connections: the same kind of connection as an accepted one.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpListener;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::*;
use netpoll::{CloseReason, DialOptions, Engine};

fn client_engine(mode: Mode) -> (Engine, mpsc::Receiver<Event>) {
    let (tx, rx) = mpsc::channel();
    let engine = Engine::builder()
        .pollers(2)
        .start(|_| Recorder {
            tx: tx.clone(),
            mode,
        })
        .unwrap();
    (engine, rx)
}

#[test]
fn dial_connects_and_writes_queued_before_connect_arrive() {
    let server = TcpListener::bind("127.0.0.1:0").unwrap();
    let (engine, rx) = client_engine(Mode::Record);
    let conn = engine.dial(server.local_addr().unwrap()).unwrap();
    // Written before the connection is established: queued and sent on connect.
    conn.write_slice(b"early ").unwrap();
    let (mut peer, _) = server.accept().unwrap();
    let opened = next_open(&rx);
    assert_eq!(opened, conn);
    conn.write_slice(b"late").unwrap();
    let mut got = [0u8; 10];
    peer.set_read_timeout(Some(WAIT)).unwrap();
    peer.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"early late");
    peer.write_all(b"reply").unwrap();
    let mut received = Vec::new();
    while received.len() < 5 {
        if let Event::Data(id, d) = next_event(&rx, "data") {
            assert_eq!(id, conn.id());
            received.extend(d);
        }
    }
    assert_eq!(received, b"reply");
    drop(peer);
    assert_eq!(wait_close(&rx, conn.id()), CloseReason::PeerClosed);
    let st = engine.stats();
    assert_eq!((st.dialed, st.opened, st.accepted), (1, 1, 0));
}

#[test]
fn dial_from_chosen_source_address() {
    let server = TcpListener::bind("127.0.0.1:0").unwrap();
    let (engine, rx) = client_engine(Mode::Sink);
    let opts = DialOptions {
        local_addr: Some("127.0.0.7:0".parse().unwrap()),
        timeout: None,
    };
    let _conn = engine
        .dial_with(server.local_addr().unwrap(), opts)
        .unwrap();
    let (_peer, from) = server.accept().unwrap();
    assert_eq!(from.ip().to_string(), "127.0.0.7");
    next_open(&rx);
}

#[test]
fn refused_dial_reports_connect_error_not_close() {
    let port = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    }; // closed again: nothing listens there now
    let (engine, rx) = client_engine(Mode::Sink);
    let conn = engine.dial(port).unwrap();
    // Queued until the connect completes; a failed connect gives its share of the queued-bytes
    // gauge back.
    conn.write_slice(b"hello world").unwrap();
    match next_event(&rx, "connect error") {
        Event::ConnectError(id, kind) => {
            assert_eq!(id, conn.id());
            assert_eq!(kind, ErrorKind::ConnectionRefused);
        }
        other => panic!("expected ConnectError, got {other:?}"),
    }
    assert!(!conn.is_open());
    assert!(conn.write_slice(b"x").is_err());
    let st = engine.stats();
    assert_eq!((st.connect_failed, st.opened, st.closed_total()), (1, 0, 0));
    assert!(
        eventually(WAIT, || engine.stats().queued_bytes == 0),
        "queued_bytes stuck at {}",
        engine.stats().queued_bytes
    );
}

#[test]
fn connect_timeout_fires() {
    // A listener with a full backlog that is never accepted from: further SYNs are dropped,
    // so a dial hangs until its timeout.
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.bind(
        &"127.0.0.1:0"
            .parse::<std::net::SocketAddr>()
            .unwrap()
            .into(),
    )
    .unwrap();
    sock.listen(0).unwrap();
    let addr = sock.local_addr().unwrap().as_socket().unwrap();
    let mut fillers = Vec::new();
    for _ in 0..4 {
        if let Ok(s) = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
            fillers.push(s);
        }
    }
    let (engine, rx) = client_engine(Mode::Sink);
    let t0 = Instant::now();
    let opts = DialOptions {
        local_addr: None,
        timeout: Some(Duration::from_millis(300)),
    };
    let conn = engine.dial_with(addr, opts).unwrap();
    match next_event(&rx, "connect timeout") {
        Event::ConnectError(id, kind) => {
            assert_eq!(id, conn.id());
            assert_eq!(kind, ErrorKind::TimedOut);
        }
        other => panic!("expected ConnectError, got {other:?}"),
    }
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_millis(290) && took < Duration::from_secs(3),
        "{took:?}"
    );
}

#[test]
fn engine_echoes_to_its_own_dialed_connections() {
    // One engine serves, another dials 500 connections to it: the load-client use case.
    let (server, addr, _srx) = start(Engine::builder().pollers(2), Mode::Echo);
    let (client, rx) = client_engine(Mode::Record);
    let conns: Vec<_> = (0..500).map(|_| client.dial(addr).unwrap()).collect();
    for c in &conns {
        c.write_slice(format!("{:08}", c.id().as_u64()).as_bytes())
            .unwrap();
    }
    let mut echoed = std::collections::HashMap::new();
    while echoed.len() < conns.len() || echoed.values().any(|v: &Vec<u8>| v.len() < 8) {
        if let Event::Data(id, d) = next_event(&rx, "echo") {
            echoed.entry(id).or_insert_with(Vec::new).extend(d);
        }
    }
    for c in &conns {
        assert_eq!(
            echoed[&c.id()],
            format!("{:08}", c.id().as_u64()).as_bytes()
        );
    }
    drop(client);
    assert!(eventually(Duration::from_secs(5), || server.stats().open() == 0));
}
