//! Accepting under an exhausted descriptor limit: pause (no busy loop), recover once
//! descriptors are freed.
//!
//! The server runs in a child process (this test binary re-executed with `NETPOLL_EMFILE_CHILD`
//! set) whose RLIMIT_NOFILE is lowered, so the clients in this process are not limited.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use netpoll::Engine;

const CHILD_ENV: &str = "NETPOLL_EMFILE_CHILD";
/// Descriptors the child may have open in total.
const CHILD_NOFILE: u64 = 64;

/// The child: lowers its limit, serves echo, prints the port and then its counters every
/// 50 ms until stdin closes.
#[test]
#[ignore = "runs only as the child of accept_recovers_after_descriptor_exhaustion"]
fn emfile_child() {
    if std::env::var_os(CHILD_ENV).is_none() {
        return;
    }
    let lim = libc::rlimit {
        rlim_cur: CHILD_NOFILE,
        rlim_max: CHILD_NOFILE,
    };
    // SAFETY: setrlimit reads a valid, initialised rlimit struct; no memory is shared.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) }, 0);
    let (engine, addr, _rx) = start(
        Engine::builder()
            .pollers(1)
            .accept_backoff(Duration::from_millis(50)),
        Mode::Echo,
    );
    println!("PORT {}", addr.port());
    let stats_engine = std::sync::Arc::new(engine);
    let e = stats_engine.clone();
    std::thread::spawn(move || {
        loop {
            let s = e.stats();
            println!(
                "STATS accepted={} accept_calls={} pauses={} open={}",
                s.accepted,
                s.accept_calls,
                s.accept_pauses,
                s.open()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    });
    let mut line = String::new();
    while std::io::stdin().read_line(&mut line).unwrap_or(0) > 0 {
        line.clear();
    }
}

#[derive(Debug, Default, Clone, Copy)]
struct ChildStats {
    accepted: u64,
    accept_calls: u64,
    pauses: u64,
    open: u64,
}

fn parse(line: &str) -> Option<ChildStats> {
    let (_, rest) = line.split_once("STATS ")?;
    let mut s = ChildStats::default();
    for kv in rest.split_whitespace() {
        let (k, v) = kv.split_once('=')?;
        let v: u64 = v.parse().ok()?;
        match k {
            "accepted" => s.accepted = v,
            "accept_calls" => s.accept_calls = v,
            "pauses" => s.pauses = v,
            "open" => s.open = v,
            _ => {}
        }
    }
    Some(s)
}

#[test]
fn accept_recovers_after_descriptor_exhaustion() {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "emfile_child",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    // The harness may print "test emfile_child ... " on the same line, before the marker.
    let deadline = Instant::now() + WAIT;
    let port: u16 = loop {
        assert!(Instant::now() < deadline, "child never printed its port");
        let line = rx.recv_timeout(WAIT).expect("child prints its port");
        if let Some((_, p)) = line.split_once("PORT ") {
            break p.trim().parse().unwrap();
        }
    };
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let latest = |rx: &std::sync::mpsc::Receiver<String>| -> ChildStats {
        let mut last = None;
        let end = Instant::now() + Duration::from_millis(200);
        let give_up = Instant::now() + WAIT;
        while (Instant::now() < end || last.is_none()) && Instant::now() < give_up {
            if let Ok(l) = rx.recv_timeout(Duration::from_millis(100)) {
                if let Some(s) = parse(&l) {
                    last = Some(s);
                }
            }
        }
        last.expect("child prints its counters")
    };

    // More clients than the child has descriptors: the kernel completes every handshake,
    // the child's accept fails with EMFILE part way.
    let mut clients: Vec<TcpStream> = (0..100).map(|_| client(addr)).collect();
    std::thread::sleep(Duration::from_millis(300));
    let exhausted = latest(&rx);
    assert!(exhausted.accepted < 100, "limit not reached: {exhausted:?}");
    assert!(exhausted.pauses >= 1, "accepting must pause: {exhausted:?}");
    // No busy loop: over one second paused, accept is retried about once per back-off.
    std::thread::sleep(Duration::from_secs(1));
    let later = latest(&rx);
    let calls = later.accept_calls - exhausted.accept_calls;
    assert!(
        calls < 200,
        "{calls} accept calls in ~1 s while exhausted: busy loop"
    );

    // Served connections still work while exhausted.
    let served = later.accepted as usize;
    clients[0].write_all(b"still here").unwrap();
    let mut buf = [0u8; 10];
    clients[0].read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"still here");

    // Free descriptors by closing served clients: the waiting connections get accepted and
    // served.
    let waiting = clients.split_off(served);
    drop(clients);
    let mut served_late = 0;
    for mut c in waiting.into_iter().take(20) {
        c.write_all(b"late").unwrap();
        let mut b = [0u8; 4];
        c.read_exact(&mut b).unwrap();
        assert_eq!(&b, b"late");
        served_late += 1;
    }
    assert_eq!(served_late, 20);
    let end = latest(&rx);
    assert!(end.accepted >= later.accepted + 20, "{end:?}");
    drop(child.stdin.take());
    let _ = child.kill();
    let _ = child.wait();
}
