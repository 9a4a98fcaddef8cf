//! The OS layer: everything that talks to the socket API directly, below the engine core.
//!
//! Creating, binding and connecting sockets, per-connection socket options, and sorting
//! errors into the classes the core acts on. Error numbers come from `libc`, so they are right
//! on Linux and on BSD/macOS alike. Readiness itself is mio's (epoll or kqueue).

// The one module allowed `unsafe` code: io_uring hands the kernel addresses.
#[cfg(netpoll_uring)]
#[allow(unsafe_code)]
pub(crate) mod uring;

use std::io::{self, IoSlice, Read, Write};
use std::net::{Shutdown, SocketAddr};

use mio::net::{TcpListener, TcpStream};
use socket2::{Domain, Protocol, SockRef, Socket, Type};

/// The socket options applied to every connection (accepted or dialed).
#[derive(Debug, Clone, Copy)]
pub(crate) struct StreamOptions {
    pub(crate) nodelay: bool,
    pub(crate) send_buffer_size: Option<usize>,
    pub(crate) recv_buffer_size: Option<usize>,
}

/// A non-blocking listening socket on `addr`; with `reuse_port`, one of several sharing the
/// port (`SO_REUSEPORT`), each accepting its own share of the connections.
pub(crate) fn listen(addr: SocketAddr, backlog: i32, reuse_port: bool) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    if reuse_port {
        socket.set_reuse_port(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(backlog)?;
    Ok(TcpListener::from_std(socket.into()))
}

/// Starts a non-blocking connect to `addr`, optionally from `local`. Returns at once; the
/// socket becomes writable when the connection is established or has failed (see
/// [`connect_result`]).
pub(crate) fn connect(addr: SocketAddr, local: Option<SocketAddr>) -> io::Result<TcpStream> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_nonblocking(true)?;
    if let Some(local) = local {
        socket.set_reuse_address(true)?;
        socket.bind(&local.into())?;
    }
    match socket.connect(&addr.into()) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    Ok(TcpStream::from_std(socket.into()))
}

/// Where a non-blocking connect stands once its socket reported writable: `Ok(true)`
/// connected, `Ok(false)` still connecting (a spurious wake-up), `Err` failed.
pub(crate) fn connect_result(socket: &TcpStream) -> io::Result<bool> {
    if let Some(e) = socket.take_error()? {
        return Err(e);
    }
    match socket.peer_addr() {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(false),
        Err(e) => Err(e),
    }
}

/// Applies the per-connection socket options. Failures are ignored: they only tune.
pub(crate) fn configure(socket: &TcpStream, opts: &StreamOptions) {
    let sock = SockRef::from(socket);
    if opts.nodelay {
        let _ = sock.set_tcp_nodelay(true);
    }
    if let Some(n) = opts.send_buffer_size {
        let _ = sock.set_send_buffer_size(n);
    }
    if let Some(n) = opts.recv_buffer_size {
        let _ = sock.set_recv_buffer_size(n);
    }
}

/// True for errors that mean the process or the system is out of descriptors or memory
/// (`EMFILE`, `ENFILE`, `ENOBUFS`, `ENOMEM`): retrying an accept at once would spin, since the
/// pending connection stays in the backlog and keeps the listener readable.
pub(crate) fn is_resource_exhaustion(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

/// `read(2)`, retried on `EINTR`.
#[inline]
pub(crate) fn read(mut socket: &TcpStream, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        match socket.read(buf) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            r => return r,
        }
    }
}

/// `write(2)` of `data`, or `writev(2)` of `head` and `data` when there is a head, retried on
/// `EINTR`.
#[inline]
pub(crate) fn write(mut socket: &TcpStream, head: &[u8], data: &[u8]) -> io::Result<usize> {
    loop {
        let r = if head.is_empty() {
            socket.write(data)
        } else {
            socket.write_vectored(&[IoSlice::new(head), IoSlice::new(data)])
        };
        match r {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            r => return r,
        }
    }
}

/// Sends our FIN (`shutdown(SHUT_WR)`); the peer may still send. Errors mean the connection is
/// gone already, which the next read reports.
pub(crate) fn shutdown_write(socket: &TcpStream) {
    let _ = socket.shutdown(Shutdown::Write);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resource_exhaustion_is_classified_by_errno() {
        for errno in [libc::EMFILE, libc::ENFILE, libc::ENOBUFS, libc::ENOMEM] {
            assert!(is_resource_exhaustion(&io::Error::from_raw_os_error(errno)));
        }
        for errno in [libc::ECONNABORTED, libc::EINTR, libc::EAGAIN] {
            assert!(!is_resource_exhaustion(&io::Error::from_raw_os_error(
                errno
            )));
        }
    }

    #[test]
    fn a_refused_connect_is_reported_by_connect_result() {
        // A port nobody listens on: bind one, take its address, close it.
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let socket = connect(addr, None).expect("the connect starts");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            match connect_result(&socket) {
                Ok(false) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(5))
                }
                Ok(c) => panic!("connected={c} to a closed port"),
                Err(e) => {
                    assert_eq!(e.kind(), io::ErrorKind::ConnectionRefused);
                    break;
                }
            }
        }
    }
}
