//! Connections: the public [`Conn`] handle and the state it shares with its poller.
//!
//! A connection's socket and outbound queue live behind one small mutex in [`ConnShared`]. Any
//! thread may write: under the lock it writes straight to the socket when nothing is queued
//! and queues the remainder otherwise, so every message is written whole and each thread's
//! messages keep their order. The lock is only ever held across non-blocking syscalls. The
//! poller owns everything else about the connection (user state, inbound remainder, timers)
//! and is the only thread that reads, closes or frees it.

pub(crate) mod outbound;
mod time;

use std::fmt;
use std::io::{self, IoSlice, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use mio::net::TcpStream;

use crate::builder::{OverflowPolicy, ReadRefresh};
use crate::error::WriteError;
use crate::poller::{self, Command, PollerShared};
use crate::stats::count;
use crate::timer::timeout_ms;
pub use outbound::OutboundBuffer;

/// An engine-wide unique connection id. Ids are never reused, so an id (or a handle) of a
/// closed connection can never name a newer connection, even one that reuses its slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub(crate) u64);

impl ConnId {
    /// The raw id.
    pub fn as_u64(self) -> u64 {
        self.0
    }
}

impl fmt::Display for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "conn#{}", self.0)
    }
}

/// Why a connection closed. Reported exactly once per opened connection, to
/// [`Handler::on_close`](crate::Handler::on_close).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CloseReason {
    /// The peer closed its side (read returned end of stream).
    PeerClosed,
    /// A socket error (connection reset, broken pipe, ...).
    Io(io::ErrorKind),
    /// A write exceeded the outbound limit under [`OverflowPolicy::Close`].
    Overflow,
    /// The handler left more unconsumed inbound bytes than `max_inbound_bytes`.
    InboundOverflow,
    /// [`Conn::close`] or [`Conn::abort`] was called.
    Local,
    /// The engine shut down.
    Shutdown,
    /// Queued bytes made no progress for the write timeout: the peer stopped reading.
    WriteTimeout,
    /// Nothing arrived for the read (idle) timeout.
    ReadTimeout,
    /// A handler callback for this connection panicked. The panic is contained: the connection
    /// is aborted and the poller goes on serving the others.
    HandlerPanic,
}

impl CloseReason {
    pub(crate) const COUNT: usize = 9;

    pub(crate) fn index(self) -> usize {
        match self {
            CloseReason::PeerClosed => 0,
            CloseReason::Io(_) => 1,
            CloseReason::Overflow => 2,
            CloseReason::InboundOverflow => 3,
            CloseReason::Local => 4,
            CloseReason::Shutdown => 5,
            CloseReason::HandlerPanic => 6,
            CloseReason::WriteTimeout => 7,
            CloseReason::ReadTimeout => 8,
        }
    }
}

/// Whether the connection accepts writes, as seen by every thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Dialed, TCP handshake under way: writes are queued.
    Connecting,
    Open,
    /// Closing or closed: writes are refused. Queued bytes may still be flushing.
    Closed,
}

/// The part of a connection any thread may touch, behind [`ConnShared::io`].
#[derive(Debug)]
pub(crate) struct ConnIo {
    /// `None` once the poller has freed the connection: the descriptor is closed at that moment,
    /// not when the last handle is dropped.
    pub(crate) socket: Option<TcpStream>,
    pub(crate) out: OutboundBuffer,
    pub(crate) phase: Phase,
    /// Queued bytes are on the owning poller's flush list (written inside a callback).
    pub(crate) corked: bool,
    /// Queued bytes crossed the low watermark; `on_drained` is owed when they fall back.
    pub(crate) above_low_water: bool,
    /// The write timeout in force (builder default or override), in ms; 0 = none.
    pub(crate) write_timeout: u32,
    /// The read (idle) timeout in force, in ms; 0 = none.
    pub(crate) read_timeout: u32,
    /// Set while bytes are queued (ms on the engine clock, 0 = none): when it passes with bytes
    /// still queued the connection closes with `WriteTimeout`. Refreshed on every flush that
    /// makes progress, cleared when the queue drains, whoever drained it; unless `write_fixed`.
    pub(crate) write_deadline: u64,
    /// When it passes the connection closes with `ReadTimeout`. Refreshed when bytes arrive
    /// (or on `touch_read`, see `read_manual`) unless `read_fixed`.
    pub(crate) read_deadline: u64,
    /// When the canonical wheel entry watching `write_deadline` / `read_deadline` is due (ms),
    /// 0 if none, [`WATCH_PENDING`] while a `Watch` command is on its way. An entry whose time
    /// differs is stale and dropped: moving a deadline earlier inserts a new entry, so the old
    /// (later) one must not count.
    pub(crate) write_watch: u64,
    pub(crate) read_watch: u64,
    /// `write_deadline` was set as an absolute instant: progress does not move it and draining
    /// does not clear it.
    pub(crate) write_fixed: bool,
    /// `read_deadline` was set as an absolute instant: nothing moves it.
    pub(crate) read_fixed: bool,
    /// Only [`Conn::touch_read`] refreshes the read deadline, not every arriving byte.
    pub(crate) read_manual: bool,
    /// Protocol-layer bits (`PROTO_*`), checked and set atomically with frame writes.
    pub(crate) proto: u8,
    /// This connection's overflow policy, if overridden (else the engine's).
    pub(crate) overflow_policy: Option<OverflowPolicy>,
    /// Rarely used per-connection data, allocated only when needed (8 bytes otherwise).
    pub(crate) ext: Option<Box<ConnExt>>,
}

/// The lazily allocated part of a connection's state.
#[derive(Default)]
pub(crate) struct ConnExt {
    /// Broadcast groups this connection is a member of; it leaves them when it closes.
    pub(crate) groups: Vec<std::sync::Weak<crate::ws::group::GroupInner>>,
}

impl fmt::Debug for ConnExt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnExt")
            .field("groups", &self.groups.len())
            .finish()
    }
}

impl ConnIo {
    /// Marks the connection closed, drops anything queued and closes the descriptor (which
    /// also removes it from epoll). Handles see `Closed` from now on.
    pub(crate) fn release(&mut self) {
        self.phase = Phase::Closed;
        self.out.clear();
        self.socket = None;
    }
}

/// State shared between every [`Conn`] handle and the owning poller.
pub(crate) struct ConnShared {
    pub(crate) id: ConnId,
    pub(crate) peer: SocketAddr,
    /// The poller's slab token; written once by the owning poller when it adopts the
    /// connection, read back only by that poller.
    pub(crate) token: AtomicUsize,
    pub(crate) poller: Arc<PollerShared>,
    pub(crate) io: Mutex<ConnIo>,
}

impl ConnShared {
    pub(crate) fn new(
        id: ConnId,
        peer: SocketAddr,
        socket: TcpStream,
        poller: Arc<PollerShared>,
        phase: Phase,
    ) -> Self {
        let config = &poller.common.config;
        let (write_timeout, read_timeout) = (
            timeout_ms(config.write_timeout),
            timeout_ms(config.read_timeout),
        );
        let read_manual = config.read_refresh == ReadRefresh::Manual;
        ConnShared {
            id,
            peer,
            token: AtomicUsize::new(usize::MAX),
            poller,
            io: Mutex::new(ConnIo {
                socket: Some(socket),
                out: OutboundBuffer::new(),
                phase,
                corked: false,
                above_low_water: false,
                write_timeout,
                read_timeout,
                write_deadline: 0,
                read_deadline: 0,
                write_watch: 0,
                read_watch: 0,
                write_fixed: false,
                read_fixed: false,
                read_manual,
                proto: 0,
                overflow_policy: None,
                ext: None,
            }),
        }
    }

    /// Locks the I/O state. A panic in another thread while it held the lock cannot leave the
    /// queue half-written (every mutation is a single push or consume), so poison is ignored.
    pub(crate) fn lock(&self) -> MutexGuard<'_, ConnIo> {
        self.io.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn token(&self) -> usize {
        self.token.load(Ordering::Relaxed)
    }
}

/// Payload of a write: shared bytes are queued as they are, slices are copied only if they
/// cannot be written at once.
pub(crate) enum Payload<'a> {
    Shared(Bytes),
    /// Shared bytes that are always queued as they are, never copied (a broadcast frame held
    /// by every member's queue).
    Frame(Bytes),
    Slice(&'a [u8]),
}

/// Writes at least this long made on the owning poller skip corking when nothing is queued.
const DIRECT_WRITE_MIN: usize = 8 * 1024;

/// Shared payloads shorter than this are copied into the coalescing tail behind a frame
/// header rather than queued as their own chunk: a copy is cheaper than sealing the tail.
const INLINE_SHARED_MAX: usize = 1024;

impl Payload<'_> {
    fn len(&self) -> usize {
        self.as_slice().len()
    }

    pub(crate) fn as_slice(&self) -> &[u8] {
        match self {
            Payload::Shared(b) | Payload::Frame(b) => b,
            Payload::Slice(s) => s,
        }
    }

    /// Queues everything from byte `from` on; slices through `pool` when given (on the owning
    /// poller's thread).
    fn queue_from(self, out: &mut OutboundBuffer, from: usize, pool: Option<&mut Vec<Vec<u8>>>) {
        match (self, pool) {
            (Payload::Shared(b), Some(pool)) if b.len() - from < INLINE_SHARED_MAX => {
                out.push_slice_pooled(&b[from..], pool)
            }
            (Payload::Shared(mut b) | Payload::Frame(mut b), _) => {
                bytes::Buf::advance(&mut b, from);
                out.push(b)
            }
            (Payload::Slice(s), Some(pool)) => out.push_slice_pooled(&s[from..], pool),
            (Payload::Slice(s), None) => out.push_slice(&s[from..]),
        }
    }
}

/// What a protocol layer's frame write must respect, checked under the connection's lock so
/// that it is atomic with the write itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Gate {
    /// A plain byte write.
    None,
    /// A frame: refused once the closing frame was queued.
    Frame,
    /// The closing frame: refused if one was queued already, and marks the stream closed.
    CloseFrame,
}

/// `ConnIo::{write,read}_watch` while the poller has been asked to watch a deadline.
pub(crate) const WATCH_PENDING: u64 = u64::MAX;

/// `ConnIo::proto` bit: the protocol's closing frame is queued; no frame may follow it.
pub(crate) const PROTO_CLOSE_SENT: u8 = 1;
/// `ConnIo::proto` bit: the protocol's handshake is not complete; frames are refused.
pub(crate) const PROTO_HANDSHAKING: u8 = 2;

/// A handle to one connection: cheap to clone, `Send + Sync`, usable from any thread.
///
/// Writes are whole-message and ordered per writing thread: concurrent writers never interleave
/// inside each other's messages and need no lock of their own. A handle outliving its
/// connection returns [`WriteError::Closed`]; it can never reach another connection.
#[derive(Clone)]
pub struct Conn {
    pub(crate) shared: Arc<ConnShared>,
}

impl fmt::Debug for Conn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Conn")
            .field("id", &self.shared.id)
            .field("peer", &self.shared.peer)
            .finish()
    }
}

impl PartialEq for Conn {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.shared, &other.shared)
    }
}

impl Eq for Conn {}

impl Conn {
    pub(crate) fn from_shared(shared: Arc<ConnShared>) -> Self {
        Conn { shared }
    }

    /// This connection's engine-wide unique id.
    pub fn id(&self) -> ConnId {
        self.shared.id
    }

    /// The remote address.
    pub fn peer_addr(&self) -> SocketAddr {
        self.shared.peer
    }

    /// Index of the poller thread that owns this connection.
    pub fn poller_index(&self) -> usize {
        self.shared.poller.index
    }

    /// True until the connection starts closing (or, for a dialed connection, while it is
    /// still connecting).
    pub fn is_open(&self) -> bool {
        self.shared.lock().phase != Phase::Closed
    }

    /// Bytes accepted by `write` but not yet taken by the kernel.
    pub fn pending_bytes(&self) -> usize {
        self.shared.lock().out.len()
    }

    /// Queues `data` for sending without copying it. See [`Conn`] for the ordering guarantee.
    ///
    /// From another thread, the bytes go straight to the socket when nothing is queued; only
    /// what the socket does not take is queued. Inside a handler callback on the owning poller
    /// a write under 8 KiB is corked: queued and flushed with one `writev` per loop iteration,
    /// together with everything else written to this connection meanwhile; a larger one with
    /// nothing queued goes straight to the socket as from another thread.
    pub fn write(&self, data: Bytes) -> Result<(), WriteError> {
        self.write_payload(Payload::Shared(data))
    }

    /// Like [`write`](Self::write) for a borrowed slice: copied only if it has to wait.
    pub fn write_slice(&self, data: &[u8]) -> Result<(), WriteError> {
        self.write_payload(Payload::Slice(data))
    }

    fn write_payload(&self, data: Payload<'_>) -> Result<(), WriteError> {
        self.write_frame(&[], data, Gate::None)
    }

    /// Writes `head` then `body` as one unit: both or neither, never interleaved with another
    /// writer, gated by the protocol state (see [`Gate`]).
    pub(crate) fn write_frame(
        &self,
        head: &[u8],
        body: Payload<'_>,
        gate: Gate,
    ) -> Result<(), WriteError> {
        self.write_frame_with(head, body, gate, None)
    }

    /// [`write_frame`](Self::write_frame) with the overflow policy overridden (`Some(Error)`:
    /// refuse and let the caller decide, e.g. a broadcast group's own policy).
    pub(crate) fn write_frame_with(
        &self,
        head: &[u8],
        body: Payload<'_>,
        gate: Gate,
        policy: Option<OverflowPolicy>,
    ) -> Result<(), WriteError> {
        let shared = &*self.shared;
        let poller = &*shared.poller;
        let on_owner = poller::is_current(poller);
        let len = head.len() + body.len();
        let mut io = shared.lock();
        if io.phase == Phase::Closed {
            return Err(WriteError::Closed);
        }
        match gate {
            Gate::None => {}
            _ if io.proto & PROTO_CLOSE_SENT != 0 => return Err(WriteError::Closed),
            _ if io.proto & PROTO_HANDSHAKING != 0 => {
                return Err(WriteError::Invalid(
                    "the WebSocket handshake is not complete",
                ));
            }
            Gate::Frame => {}
            Gate::CloseFrame => io.proto |= PROTO_CLOSE_SENT,
        }
        if len == 0 {
            return Ok(());
        }
        let pending = io.out.len();
        let limit = poller.config().max_outbound_bytes;
        // A close frame (at most 127 bytes) may pass the limit: closing must work under
        // backpressure too.
        if pending + len > limit && gate != Gate::CloseFrame {
            count(&poller.stats.overflows, 1);
            let err = WriteError::Overflow {
                pending,
                len,
                limit,
            };
            let policy = policy
                .or(io.overflow_policy)
                .unwrap_or(poller.config().overflow_policy);
            if policy == OverflowPolicy::Close {
                io.phase = Phase::Closed;
                drop(io);
                self.request_close(crate::CloseReason::Overflow, false);
            }
            return Err(err);
        }
        // Queue behind what is already waiting (someone is due to flush it: the poller at the
        // end of this loop iteration if corked, the writable edge otherwise), while connecting,
        // or when corking on the owning poller. Corking batches small writes; a large one with
        // nothing queued goes straight to the socket like a write from another thread, saving
        // its copy into the queue (and, past the pooled-buffer size, an allocation).
        let cork = on_owner && (len < DIRECT_WRITE_MIN || matches!(body, Payload::Frame(_)));
        if pending != 0 || io.phase == Phase::Connecting || cork {
            if on_owner {
                poller::with_tail_pool(|pool| {
                    io.out.push_slice_pooled(head, pool);
                    body.queue_from(&mut io.out, 0, Some(pool));
                });
                if !io.corked && io.phase == Phase::Open {
                    io.corked = true;
                    poller::cork(shared.token());
                }
            } else {
                io.out.push_slice(head);
                body.queue_from(&mut io.out, 0, None);
            }
            self.note_watermark(&mut io);
            return Ok(());
        }
        let socket = io.socket.as_ref().expect("open connection has a socket");
        let mut sock = socket;
        let result = loop {
            let r = if head.is_empty() {
                sock.write(body.as_slice())
            } else {
                sock.write_vectored(&[IoSlice::new(head), IoSlice::new(body.as_slice())])
            };
            match r {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                r => break r,
            }
        };
        count(&poller.stats.write_calls, 1);
        match result {
            Ok(n) => {
                count(&poller.stats.bytes_out, n as u64);
                if n < len {
                    // Short write: the socket buffer is full and the writable edge is armed.
                    if n < head.len() {
                        io.out.push_slice(&head[n..]);
                        body.queue_from(&mut io.out, 0, None);
                    } else {
                        body.queue_from(&mut io.out, n - head.len(), None);
                    }
                    self.note_watermark(&mut io);
                    self.arm_write_deadline(&mut io);
                }
                Ok(())
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                io.out.push_slice(head);
                body.queue_from(&mut io.out, 0, None);
                self.note_watermark(&mut io);
                self.arm_write_deadline(&mut io);
                Ok(())
            }
            Err(e) => {
                let kind = e.kind();
                io.phase = Phase::Closed;
                drop(io);
                self.request_close(crate::CloseReason::Io(kind), false);
                Err(WriteError::Io(kind))
            }
        }
    }

    /// Overrides the engine's [`overflow_policy`](crate::EngineBuilder::overflow_policy) for
    /// this connection's writes: e.g. cut off one slow subscriber (`Close`) while others get
    /// `WriteError::Overflow` and back off (`Error`). Broadcast groups apply their own
    /// [`SlowPolicy`](crate::ws::SlowPolicy) instead.
    pub fn set_overflow_policy(&self, policy: OverflowPolicy) {
        self.shared.lock().overflow_policy = Some(policy);
    }

    fn note_watermark(&self, io: &mut ConnIo) {
        if io.out.len() > self.shared.poller.config().low_watermark {
            io.above_low_water = true;
        }
    }

    /// Closes gracefully: further writes fail at once, bytes already queued are flushed, then
    /// the write side is shut down (FIN) and the socket is freed once the peer closes too or
    /// `close_timeout` passes. [`Handler::on_close`](crate::Handler::on_close) runs with
    /// [`CloseReason::Local`]. Calling it again, or on a closed connection, does nothing.
    pub fn close(&self) {
        self.close_with(true);
    }

    /// Closes at once: queued bytes are discarded and the socket is freed.
    pub fn abort(&self) {
        self.close_with(false);
    }

    fn close_with(&self, graceful: bool) {
        let mut io = self.shared.lock();
        if io.phase == Phase::Closed && graceful {
            return;
        }
        io.phase = Phase::Closed;
        drop(io);
        self.request_close(crate::CloseReason::Local, graceful);
    }

    fn request_close(&self, reason: crate::CloseReason, graceful: bool) {
        self.shared.poller.send(Command::Close {
            conn: self.shared.clone(),
            reason,
            graceful,
        });
    }
}
