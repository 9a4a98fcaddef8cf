//! The transport seam: the one place every byte between a socket and the engine passes
//! through.
//!
//! A [`Transport`] owns a connection's socket and its outbound queue. The engine hands it
//! plaintext and asks for plaintext; what goes on the wire is the transport's business. Today
//! the only transport is plain TCP, where the two are the same bytes. An encrypting transport
//! plugs in here without the poller's read and flush paths changing (docs/ARCHITECTURE.md,
//! "The transport seam"):
//!
//! - [`send`](Transport::send) and [`queue`](Transport::queue) take a message's plaintext under
//!   the connection's lock, from any thread, and write or queue wire bytes (records, for an
//!   encrypting transport: sealed in the writer's thread, in the writers' order). The queue,
//!   and with it the outbound limit and the write deadline, counts wire bytes.
//! - [`flush`](Transport::flush) writes queued wire bytes; the poller's flush path does not
//!   know what they are.
//! - [`read`](Transport::read) fills the poller's read buffer and says where the plaintext is
//!   in it (records are opened in place); it may also queue bytes of its own (a handshake's),
//!   reported with [`Read::flush`].
//! - [`close_notify`](Transport::close_notify) runs when a graceful close starts (its last
//!   words, queued behind the data); [`shutdown_write`](Transport::shutdown_write) sends the
//!   FIN once everything is out.

use std::fmt;
use std::io;
use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;
use mio::net::TcpStream;

use crate::core::conn::{Attachment, Extras};
use crate::core::outbound::{OutboundBuffer, QueuePool};
use crate::os;

/// The plaintext of one write: shared bytes are queued as they are, slices are copied only if
/// they cannot be written at once.
#[derive(Debug)]
pub(crate) enum Payload<'a> {
    Shared(Bytes),
    /// Shared bytes that are always queued as they are, never copied (one buffer held by many
    /// connections' queues: a broadcast).
    Fanout(Bytes),
    Slice(&'a [u8]),
}

/// Shared payloads shorter than this are copied into the coalescing tail behind a header
/// rather than queued as their own chunk: a copy is cheaper than sealing the tail.
const INLINE_SHARED_MAX: usize = 1024;

impl Payload<'_> {
    #[inline]
    pub(crate) fn len(&self) -> usize {
        self.as_slice().len()
    }

    #[inline]
    pub(crate) fn as_slice(&self) -> &[u8] {
        match self {
            Payload::Shared(b) | Payload::Fanout(b) => b,
            Payload::Slice(s) => s,
        }
    }

    /// Queues everything from byte `from` on; slices through `pool` when given (on the owning
    /// poller's thread).
    #[inline]
    fn queue_from(self, out: &mut OutboundBuffer, from: usize, pool: Option<&mut QueuePool>) {
        match (self, pool) {
            (Payload::Shared(b), Some(pool)) if b.len() - from < INLINE_SHARED_MAX => {
                out.push_slice_pooled(&b[from..], pool)
            }
            (Payload::Shared(mut b) | Payload::Fanout(mut b), pool) => {
                bytes::Buf::advance(&mut b, from);
                match pool {
                    Some(pool) => out.push_pooled(b, pool),
                    None => out.push(b),
                }
            }
            (Payload::Slice(s), Some(pool)) => out.push_slice_pooled(&s[from..], pool),
            (Payload::Slice(s), None) => out.push_slice(&s[from..]),
        }
    }
}

/// A byte-stream codec between the socket and the engine (an encrypting transport: TLS),
/// sans-IO. The core names no protocol: a protocol layer implements this and hands the engine
/// a [`CodecFactory`].
pub(crate) trait Codec: Send + fmt::Debug {
    /// Wire bytes `input` arrived (the codec may decode them in place): appends the plaintext
    /// they carried to `plain` and the codec's own bytes (a handshake's) to `send`, keeps an
    /// unfinished record itself, and tells whether the peer said its last words (TLS
    /// close_notify). On an error `send` may hold the codec's last words (a fatal alert).
    fn receive(
        &mut self,
        input: &mut [u8],
        plain: &mut Vec<u8>,
        send: &mut Vec<u8>,
    ) -> io::Result<bool>;
    /// Appends the wire form of `data` to `send` (or keeps it until it can: before a
    /// handshake completed).
    fn seal(&mut self, data: &[u8], send: &mut Vec<u8>) -> io::Result<()>;
    /// Appends the codec's last words (a close_notify alert) to `send`.
    fn close_notify(&mut self, send: &mut Vec<u8>);
    /// Plaintext the codec holds back (counted against the outbound limit).
    fn held_back(&self) -> usize;
    /// Wire bytes the codec keeps from earlier input (an unfinished record).
    fn kept(&self) -> usize;
    /// Why the codec failed, once it has (a protocol layer reports it: a TLS certificate
    /// error as the reason a connect failed).
    fn failure(&self) -> Option<&(dyn std::error::Error + Send + Sync + 'static)>;
}

/// Makes the codec of each new connection of an engine.
#[derive(Clone)]
pub(crate) struct CodecFactory(
    pub(crate) Arc<dyn Fn() -> io::Result<Box<dyn Codec>> + Send + Sync>,
);

impl fmt::Debug for CodecFactory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CodecFactory")
    }
}

thread_local! {
    /// Where a codec's output (and a read's plaintext) is assembled before it is queued or
    /// copied: reused per thread, so sealing and opening allocate nothing in steady state.
    static SCRATCH: std::cell::RefCell<(Vec<u8>, Vec<u8>)> =
        const { std::cell::RefCell::new((Vec::new(), Vec::new())) };
}

/// A scratch buffer kept per thread up to this size; a larger one is freed after use.
const SCRATCH_KEEP: usize = 256 * 1024;

/// What one [`Transport::read`] produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Read {
    /// Bytes taken from the socket; 0 means the peer closed its side (end of stream).
    pub(crate) wire: usize,
    /// Where the plaintext for the application lies in the buffer (may be empty when the
    /// bytes were all the transport's own).
    pub(crate) plain: Range<usize>,
    /// The transport queued bytes of its own (a handshake's) that should go out now.
    pub(crate) flush: bool,
    /// The socket gave less than was asked: it is drained for now (the next bytes raise a new
    /// edge). Set whenever `peer_closed` is.
    pub(crate) short: bool,
    /// The peer said its last words in the transport's own protocol (TLS close_notify): no
    /// more data will come, though the socket is still open.
    pub(crate) peer_closed: bool,
}

/// What one [`Transport::flush`] call did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Flushed {
    /// Wire bytes written.
    pub(crate) written: usize,
    /// `write`/`writev` calls made.
    pub(crate) calls: usize,
}

/// A connection's socket and the wire bytes waiting for it.
#[derive(Debug)]
pub(crate) struct Transport {
    /// `None` once the connection was freed: the descriptor closes at that moment, not when
    /// the last handle is dropped.
    socket: Option<TcpStream>,
    /// What the poller's queued-bytes gauge counts for this connection: the queue's charge
    /// when last accounted (saturating; it fills the padding after the descriptor).
    accounted: u32,
    /// Bytes handed to the io_uring backend's sends and not yet completed: still owed to the
    /// socket, so they count as pending (nobody writes past them) and against the limit.
    #[cfg(netpoll_uring)]
    in_flight: u32,
    out: OutboundBuffer,
    /// The codec (TLS) and the protocol layer's attachment, boxed together and allocated only
    /// when one of them is used: plain connections pay one null pointer for both.
    extras: Option<Box<Extras>>,
}

impl Transport {
    /// Plain TCP over `socket`.
    pub(crate) fn plain(socket: TcpStream) -> Self {
        Transport {
            socket: Some(socket),
            accounted: 0,
            #[cfg(netpoll_uring)]
            in_flight: 0,
            out: OutboundBuffer::new(),
            extras: None,
        }
    }

    /// `socket` through `codec` (TLS). The codec speaks first if its side does (a TLS
    /// client's hello): that is queued ahead of anything written.
    pub(crate) fn with_codec(socket: TcpStream, mut codec: Box<dyn Codec>) -> Self {
        let mut first = Vec::new();
        // A failure here shows again on the first read, which closes the connection.
        let _ = codec.receive(&mut [], &mut Vec::new(), &mut first);
        let mut extras = Box::new(Extras::default());
        extras.codec = Some(codec);
        let mut transport = Transport {
            extras: Some(extras),
            ..Transport::plain(socket)
        };
        if !first.is_empty() {
            transport.out.push(Bytes::from(first));
        }
        transport
    }

    /// Why the codec failed, if there is one and it has.
    pub(crate) fn codec_failure(&self) -> Option<&(dyn std::error::Error + Send + Sync + 'static)> {
        self.extras.as_ref()?.codec.as_ref()?.failure()
    }

    /// The protocol layer's attachment slot (kept with the codec).
    pub(crate) fn attachment(&mut self) -> Attachment<'_> {
        Attachment(&mut self.extras)
    }

    /// The codec in `extras`, if any (a function of the field, not of `self`, so that the
    /// socket and the queue stay usable beside it).
    #[inline]
    fn codec(extras: &mut Option<Box<Extras>>) -> Option<&mut dyn Codec> {
        Some(extras.as_mut()?.codec.as_mut()?.as_mut())
    }

    /// Wire bytes queued and not yet taken by the kernel.
    #[inline]
    pub(crate) fn pending(&self) -> usize {
        self.out.len() + self.in_flight()
    }

    /// Bytes in the io_uring backend's send in flight (none without the backend).
    #[inline(always)]
    fn in_flight(&self) -> usize {
        #[cfg(netpoll_uring)]
        return self.in_flight as usize;
        #[cfg(not(netpoll_uring))]
        return 0;
    }

    /// Moves everything queued out to be sent by the io_uring backend, which keeps it until
    /// the send completes; `None` if nothing is queued or a send is already in flight (one at a
    /// time keeps the bytes in order).
    #[cfg(netpoll_uring)]
    pub(crate) fn take_for_send(&mut self) -> Option<OutboundBuffer> {
        if self.in_flight != 0 || self.out.is_empty() || self.socket.is_none() {
            return None;
        }
        let out = std::mem::take(&mut self.out);
        self.in_flight = u32::try_from(out.len()).unwrap_or(u32::MAX);
        Some(out)
    }

    /// `n` bytes of the send in flight completed; `done` when all of it has.
    /// A ring send is in flight.
    #[cfg(netpoll_uring)]
    pub(crate) fn sending(&self) -> bool {
        self.in_flight != 0
    }

    #[cfg(netpoll_uring)]
    pub(crate) fn sent(&mut self, n: usize, done: bool) {
        self.in_flight = if done {
            0
        } else {
            self.in_flight.saturating_sub(n as u32)
        };
    }

    /// The descriptor, while the socket is open.
    #[cfg(netpoll_uring)]
    pub(crate) fn raw_fd(&self) -> Option<std::os::fd::RawFd> {
        use std::os::fd::AsRawFd;
        self.socket.as_ref().map(|s| s.as_raw_fd())
    }

    /// What the queue counts against the outbound limit: its bytes and its bookkeeping (and
    /// plaintext a codec holds back).
    #[inline(always)]
    pub(crate) fn charge(&self, coded: bool) -> usize {
        if coded {
            self.charge_coded()
        } else {
            self.out.charge() + self.in_flight()
        }
    }

    #[inline(never)]
    fn charge_coded(&self) -> usize {
        self.out.charge() + self.in_flight() + self.extras.as_ref().map_or(0, |e| held_back(e))
    }

    /// Brings this connection's share of the queued-bytes gauge up to date: returns the change
    /// to add to it. Called where the queue may have changed and the gauge should know: after
    /// the poller's flush, after a write that left bytes queued without corking, and when the
    /// queue is dropped. (A corked write is accounted by the flush at the end of the same loop
    /// iteration, so the echo path pays one comparison.)
    #[inline]
    pub(crate) fn account(&mut self) -> i64 {
        if self.accounted == 0 && self.out.is_empty() && self.in_flight() == 0 {
            return 0; // nothing queued before or now: the common case
        }
        let now = (self.out.charge() + self.in_flight()).min(u32::MAX as usize) as u32;
        let delta = i64::from(now) - i64::from(self.accounted);
        self.accounted = now;
        delta
    }

    /// The socket, for registration and connect completion (`None` once freed).
    #[inline]
    pub(crate) fn socket(&self) -> Option<&TcpStream> {
        self.socket.as_ref()
    }

    #[inline]
    pub(crate) fn socket_mut(&mut self) -> Option<&mut TcpStream> {
        self.socket.as_mut()
    }

    /// Reads into `buf`: how many wire bytes came in and where the plaintext is.
    #[inline(always)]
    pub(crate) fn read<const CODED: bool>(&mut self, buf: &mut [u8]) -> io::Result<Read> {
        if CODED {
            return self.read_coded(buf);
        }
        let socket = self.socket.as_ref().ok_or(io::ErrorKind::NotConnected)?;
        let n = os::read(socket, buf)?;
        Ok(Read {
            wire: n,
            plain: 0..n,
            flush: false,
            short: n < buf.len(),
            peer_closed: false,
        })
    }

    /// [`read`](Self::read) through the codec: ciphertext in, plaintext copied back to the
    /// front of `buf`. Kept out of line: the plain path above is the hot one.
    #[inline(never)]
    fn read_coded(&mut self, buf: &mut [u8]) -> io::Result<Read> {
        let Some(codec) = Self::codec(&mut self.extras) else {
            return Err(io::ErrorKind::NotConnected.into());
        };
        let socket = self.socket.as_ref().ok_or(io::ErrorKind::NotConnected)?;
        // Leave room for what the codec kept from the last read: the plaintext of what it
        // kept and what comes now must fit in `buf` again.
        let room = buf
            .len()
            .saturating_sub(codec.kept())
            .max(MIN_CODED_READ.min(buf.len()));
        let n = os::read(socket, &mut buf[..room])?;
        if n == 0 {
            return Ok(Read {
                wire: 0,
                plain: 0..0,
                flush: false,
                short: true,
                peer_closed: false,
            });
        }
        SCRATCH.with(|scratch| {
            let (plain, send) = &mut *scratch.borrow_mut();
            plain.clear();
            send.clear();
            let mut result = codec.receive(&mut buf[..n], plain, send);
            let len = plain.len();
            if len <= buf.len() {
                buf[..len].copy_from_slice(plain);
            } else if result.is_ok() {
                // Cannot happen with CODEC_MIN_READ_BUFFER; never deliver a part silently.
                result = Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "plaintext longer than the read buffer",
                ));
            }
            let flush = !send.is_empty();
            if flush && result.is_err() {
                // The codec's last word on a failure (a TLS alert): one best-effort write, as
                // the connection is closed without flushing.
                let _ = os::write(socket, send, &[]);
            } else if flush {
                // A handshake flight is queued as its own chunk, freed once written: in the
                // coalescing tail it would go back to the poller's tail pool at its size and
                // hold memory there that only a handshake needs.
                self.out.push(Bytes::copy_from_slice(send));
            }
            trim(plain);
            trim(send);
            result.map(|peer_closed| Read {
                wire: n,
                plain: 0..len.min(buf.len()),
                flush,
                short: n < room || peer_closed,
                peer_closed,
            })
        })
    }

    /// Writes `head` then `body` straight to the socket (nothing may be queued); what it does
    /// not take is queued. Returns the wire bytes written; `WouldBlock` is not an error here
    /// (everything was queued, 0 written).
    #[inline]
    pub(crate) fn send(
        &mut self,
        head: &[u8],
        body: Payload<'_>,
        coded: bool,
    ) -> io::Result<usize> {
        debug_assert!(
            self.out.is_empty(),
            "a direct send must not overtake queued bytes"
        );
        if coded {
            return self.seal_and(head, body, true, None);
        }
        let socket = self.socket.as_ref().ok_or(io::ErrorKind::NotConnected)?;
        let written = match os::write(socket, head, body.as_slice()) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
            Err(e) => return Err(e),
        };
        if written < head.len() {
            self.out.push_slice(&head[written..]);
            body.queue_from(&mut self.out, 0, None);
        } else if written < head.len() + body.len() {
            body.queue_from(&mut self.out, written - head.len(), None);
        }
        Ok(written)
    }

    /// Queues `head` then `body` behind whatever waits; `pool` lends small buffers on the
    /// owning poller's thread.
    #[inline]
    pub(crate) fn queue(
        &mut self,
        head: &[u8],
        body: Payload<'_>,
        pool: Option<&mut QueuePool>,
        coded: bool,
    ) {
        if coded {
            // A codec that cannot seal has failed (a TLS session in error): its next read
            // fails and closes the connection, and what was written meanwhile goes with it.
            let _ = self.seal_and(head, body, false, pool);
            return;
        }
        match pool {
            Some(pool) => {
                self.out.push_slice_pooled(head, pool);
                body.queue_from(&mut self.out, 0, Some(pool));
            }
            None => {
                self.out.push_slice(head);
                body.queue_from(&mut self.out, 0, None);
            }
        }
    }

    /// Writes queued bytes (`writev`, many chunks per call) until the queue is empty or the
    /// socket is full. An error other than `WouldBlock` means the connection is broken.
    #[inline]
    pub(crate) fn flush(&mut self) -> Result<Flushed, (Flushed, io::ErrorKind)> {
        let mut done = Flushed {
            written: 0,
            calls: 0,
        };
        let Some(socket) = self.socket.as_ref() else {
            return Ok(done);
        };
        let mut writer = socket;
        while !self.out.is_empty() {
            done.calls += 1;
            match self.out.write_to(&mut writer) {
                Ok((n, short)) => {
                    done.written += n;
                    if short {
                        break; // the socket buffer is full: wait for the writable edge
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err((done, e.kind())),
            }
        }
        Ok(done)
    }

    /// Once drained, gives the queue's memory back (to `pool`, while it has room) so an idle
    /// connection holds none. True if nothing is queued.
    #[inline]
    pub(crate) fn release_buffers(&mut self, pool: &mut QueuePool) -> bool {
        self.out.release_into(pool)
    }

    /// Drops everything queued (an abort).
    #[inline]
    pub(crate) fn discard(&mut self) {
        self.out.clear();
        // A ring send in flight keeps its own bytes until it completes (or is cancelled when
        // the connection is freed); the connection no longer counts them.
        #[cfg(netpoll_uring)]
        {
            self.in_flight = 0;
        }
    }

    /// Seals `head` and `body` through the codec into wire bytes, then writes them (`write`)
    /// or queues them (in a tail from `pool`, on the owning poller). Returns the wire bytes
    /// written.
    #[inline(never)]
    fn seal_and(
        &mut self,
        head: &[u8],
        body: Payload<'_>,
        write: bool,
        pool: Option<&mut QueuePool>,
    ) -> io::Result<usize> {
        let Some(codec) = Self::codec(&mut self.extras) else {
            return Ok(0);
        };
        SCRATCH.with(|scratch| {
            let (plain, wire) = &mut *scratch.borrow_mut();
            wire.clear();
            let sealed = if head.is_empty() {
                codec.seal(body.as_slice(), wire)
            } else {
                // One record for header and payload, not a tiny one for the header.
                plain.clear();
                plain.extend_from_slice(head);
                plain.extend_from_slice(body.as_slice());
                codec.seal(plain, wire)
            };
            let result = sealed.and_then(|()| {
                let written = match (write, self.socket.as_ref()) {
                    (true, Some(socket)) if !wire.is_empty() => {
                        match os::write(socket, wire, &[]) {
                            Ok(n) => n,
                            Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
                            Err(e) => return Err(e),
                        }
                    }
                    _ => 0,
                };
                if written < wire.len() {
                    match pool {
                        Some(pool) => self.out.push_slice_pooled(&wire[written..], pool),
                        None => self.out.push_slice(&wire[written..]),
                    }
                }
                Ok(written)
            });
            trim(plain);
            trim(wire);
            result
        })
    }

    /// A graceful close starts: queue whatever the transport must say last (nothing for plain
    /// TCP; an encrypting transport's closing alert).
    pub(crate) fn close_notify(&mut self) {
        if let Some(codec) = Self::codec(&mut self.extras) {
            let mut alert = Vec::new();
            codec.close_notify(&mut alert);
            if !alert.is_empty() {
                self.out.push_slice(&alert);
            }
        }
    }

    /// Everything is out: send the FIN.
    pub(crate) fn shutdown_write(&mut self) {
        if let Some(socket) = self.socket.as_ref() {
            os::shutdown_write(socket);
        }
    }

    /// Closes the descriptor (which also removes it from the poller) and drops anything queued.
    /// Returns the change to the queued-bytes gauge (its share, given back).
    #[must_use = "the gauge must be told: add the returned delta"]
    pub(crate) fn release(&mut self) -> i64 {
        self.out.clear();
        // A send in flight still holds its bytes (the poller frees them at its completion),
        // but the connection no longer counts them.
        #[cfg(netpoll_uring)]
        {
            self.in_flight = 0;
        }
        self.socket = None;
        self.account()
    }
}

/// Largest wire record a codec may keep between reads (TLS: 16 KiB of plaintext plus
/// overhead).
const MAX_RECORD: usize = 16 * 1024 + 256;

/// The smallest read buffer a connection with a codec may use: a kept record and a read of
/// at least as much again, so that their plaintext always fits the buffer (plaintext is never
/// longer than the ciphertext that carried it).
pub(crate) const CODEC_MIN_READ_BUFFER: usize = 2 * MAX_RECORD;

/// What a coded read asks the socket for at least, even while the codec keeps a handshake
/// message longer than the buffer's free part (no plaintext comes before the handshake ends).
const MIN_CODED_READ: usize = 4096;

/// Plaintext a connection's codec holds back (out of line: plain connections never ask).
#[inline(never)]
fn held_back(extras: &Extras) -> usize {
    extras.codec.as_ref().map_or(0, |c| c.held_back())
}

/// Frees a scratch buffer that grew past [`SCRATCH_KEEP`].
fn trim(v: &mut Vec<u8>) {
    if v.capacity() > SCRATCH_KEEP {
        *v = Vec::new();
    }
}
