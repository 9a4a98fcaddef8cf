//! Baseline for the TCP echo benchmark: the smallest correct mio echo server we could write,
//! single purpose, no thread-safety, no bounds, no timers. It is the practical ceiling for
//! byte echo, not a product.
//!
//! ```text
//! cargo run --release -p netpoll-tools --bin mio_echo -- --addr 127.0.0.1:9100 [--threads N]
//! ```
//! With several threads each runs its own `SO_REUSEPORT` listener and loop.

use std::io::{self, Read, Write};
use std::net::SocketAddr;

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use slab::Slab;

const LISTENER: Token = Token(usize::MAX);

struct Peer {
    stream: TcpStream,
    /// Bytes the socket did not take yet.
    backlog: Vec<u8>,
}

fn listener(addr: SocketAddr) -> io::Result<TcpListener> {
    let s = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        None,
    )?;
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    s.listen(1024)?;
    Ok(TcpListener::from_std(s.into()))
}

fn write_out(p: &mut Peer, data: &[u8]) -> io::Result<()> {
    if !p.backlog.is_empty() {
        p.backlog.extend_from_slice(data);
        return Ok(());
    }
    let mut off = 0;
    while off < data.len() {
        match p.stream.write(&data[off..]) {
            Ok(n) => off += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    p.backlog.extend_from_slice(&data[off..]);
    Ok(())
}

fn flush(p: &mut Peer) -> io::Result<()> {
    while !p.backlog.is_empty() {
        match p.stream.write(&p.backlog) {
            Ok(n) => {
                p.backlog.drain(..n);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    p.backlog = Vec::new();
    Ok(())
}

fn serve(mut listener: TcpListener) -> io::Result<()> {
    let mut poll = Poll::new()?;
    let mut events = Events::with_capacity(1024);
    poll.registry()
        .register(&mut listener, LISTENER, Interest::READABLE)?;
    let mut peers: Slab<Peer> = Slab::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        // A signal (strace attaching, SIGSTOP/SIGCONT, a profiler) interrupts epoll_wait with
        // EINTR: nothing failed, wait again.
        match poll.poll(&mut events, None) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            r => r?,
        }
        for ev in events.iter() {
            if ev.token() == LISTENER {
                while let Ok((mut stream, _)) = listener.accept() {
                    stream.set_nodelay(true)?;
                    let e = peers.vacant_entry();
                    poll.registry().register(
                        &mut stream,
                        Token(e.key()),
                        Interest::READABLE | Interest::WRITABLE,
                    )?;
                    e.insert(Peer {
                        stream,
                        backlog: Vec::new(),
                    });
                }
                continue;
            }
            let key = ev.token().0;
            let Some(p) = peers.get_mut(key) else {
                continue;
            };
            let mut dead = false;
            if ev.is_writable() && flush(p).is_err() {
                dead = true;
            }
            while !dead {
                match p.stream.read(&mut buf) {
                    Ok(0) => dead = true,
                    Ok(n) => {
                        if write_out(p, &buf[..n]).is_err() {
                            dead = true;
                        }
                        if n < buf.len() {
                            break;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => dead = true,
                }
            }
            if dead {
                peers.remove(key);
            }
        }
    }
}

fn main() {
    let mut addr: SocketAddr = "127.0.0.1:9100".parse().unwrap();
    let mut threads = 1;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--addr" => {
                addr = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .expect("--addr HOST:PORT")
            }
            "--threads" => {
                threads = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .expect("--threads N")
            }
            other => {
                eprintln!("unknown argument {other:?}");
                std::process::exit(2);
            }
        }
    }
    let first = listener(addr).expect("bind");
    let addr = first.local_addr().unwrap();
    let mut handles = vec![std::thread::spawn(move || serve(first))];
    for _ in 1..threads {
        let l = listener(addr).expect("bind");
        handles.push(std::thread::spawn(move || serve(l)));
    }
    println!("listening on {addr}");
    for h in handles {
        if let Err(e) = h.join().unwrap() {
            eprintln!("mio_echo: {e}");
        }
    }
}
