//! Helpers shared by the integration tests: a recording handler and blocking loopback clients.
#![allow(dead_code)]

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant};

use netpoll::{CloseReason, Conn, ConnId, Engine, EngineBuilder, Handler};

/// Everything a [`Recorder`] saw, in order, per poller.
#[derive(Debug)]
pub enum Event {
    Open(Conn),
    Data(ConnId, Vec<u8>),
    Close(ConnId, CloseReason),
    Drained(ConnId),
    ConnectError(ConnId, io::ErrorKind),
}

/// What the recording handler does with data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Write every byte back.
    Echo,
    /// Report data as events and consume it.
    Record,
    /// Consume and forget.
    Sink,
    /// Consume nothing (everything stays in the inbound remainder).
    Hoard,
}

pub struct Recorder {
    pub tx: Sender<Event>,
    pub mode: Mode,
}

impl Handler for Recorder {
    type State = ();

    fn on_open(&mut self, conn: &Conn) {
        let _ = self.tx.send(Event::Open(conn.clone()));
    }

    fn on_data(&mut self, conn: &Conn, _: &mut (), data: &mut [u8]) -> usize {
        match self.mode {
            Mode::Echo => {
                conn.write_slice(data).expect("echo write");
                data.len()
            }
            Mode::Record => {
                let _ = self.tx.send(Event::Data(conn.id(), data.to_vec()));
                data.len()
            }
            Mode::Sink => data.len(),
            Mode::Hoard => 0,
        }
    }

    fn on_close(&mut self, conn: &Conn, _: (), reason: CloseReason) {
        let _ = self.tx.send(Event::Close(conn.id(), reason));
    }

    fn on_drained(&mut self, conn: &Conn, _: &mut ()) {
        let _ = self.tx.send(Event::Drained(conn.id()));
    }

    fn on_connect_error(&mut self, conn: &Conn, error: io::Error) {
        let _ = self.tx.send(Event::ConnectError(conn.id(), error.kind()));
    }
}

/// Starts `builder` (listening on an ephemeral loopback port) with a [`Recorder`].
pub fn start(builder: EngineBuilder, mode: Mode) -> (Engine, SocketAddr, Receiver<Event>) {
    let (tx, rx) = mpsc::channel();
    let engine = builder
        .listen("127.0.0.1:0")
        .start(|_| Recorder {
            tx: tx.clone(),
            mode,
        })
        .expect("engine starts");
    let addr = engine.local_addrs()[0];
    (engine, addr, rx)
}

pub const WAIT: Duration = Duration::from_secs(10);

/// Next event, or a panic naming what was awaited.
pub fn next_event(rx: &Receiver<Event>, what: &str) -> Event {
    match rx.recv_timeout(WAIT) {
        Ok(e) => e,
        Err(RecvTimeoutError::Timeout) => panic!("timed out waiting for {what}"),
        Err(RecvTimeoutError::Disconnected) => panic!("handler gone while waiting for {what}"),
    }
}

/// Waits for the next `Open` event and returns its handle.
pub fn next_open(rx: &Receiver<Event>) -> Conn {
    loop {
        if let Event::Open(c) = next_event(rx, "on_open") {
            return c;
        }
    }
}

/// Waits for the close of `id`, skipping other events.
pub fn wait_close(rx: &Receiver<Event>, id: ConnId) -> CloseReason {
    loop {
        if let Event::Close(c, r) = next_event(rx, "on_close") {
            if c == id {
                return r;
            }
        }
    }
}

/// A blocking client with a read timeout.
pub fn client(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.set_nodelay(true).unwrap();
    s
}

/// A blocking client with a 4 KiB receive buffer and a read timeout: what it does not read
/// backs up in the engine's queue quickly instead of in the kernel's buffers.
pub fn small_client(addr: SocketAddr) -> TcpStream {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    s.set_recv_buffer_size(4096).unwrap();
    s.connect(&addr.into()).unwrap();
    let s: TcpStream = s.into();
    s.set_read_timeout(Some(WAIT)).unwrap();
    s
}

/// Reads until EOF (or the timeout) and returns everything.
pub fn read_to_eof(s: &mut TcpStream) -> io::Result<Vec<u8>> {
    let mut v = Vec::new();
    s.read_to_end(&mut v)?;
    Ok(v)
}

/// Deterministic test payload.
pub fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// Writes `data` on one thread while reading the same length back on this one.
pub fn echo_roundtrip(s: &mut TcpStream, data: &[u8]) -> Vec<u8> {
    let mut w = s.try_clone().unwrap();
    let owned = data.to_vec();
    let writer = std::thread::spawn(move || w.write_all(&owned));
    let mut got = vec![0u8; data.len()];
    s.read_exact(&mut got).expect("read echo");
    writer.join().unwrap().expect("write");
    got
}

/// Polls `f` until it returns true or `limit` passes.
/// True when the suite runs on the io_uring backend (`NETPOLL_BACKEND=io_uring`, with the
/// `io-uring` feature): the few checks that differ by backend read this.
#[allow(dead_code)]
pub fn io_uring_backend() -> bool {
    cfg!(feature = "io-uring") && std::env::var("NETPOLL_BACKEND").is_ok_and(|v| v == "io_uring")
}

pub fn eventually(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    f()
}

/// Raises this process's open-file soft limit to the hard limit; panics if that is below
/// `need`.
pub fn raise_nofile_limit(need: u64) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read and write a valid, initialised rlimit struct.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim), 0);
        lim.rlim_cur = lim.rlim_max;
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &lim), 0);
    }
    assert!(
        lim.rlim_cur >= need,
        "need {need} descriptors, the hard limit is {}",
        lim.rlim_cur
    );
}
