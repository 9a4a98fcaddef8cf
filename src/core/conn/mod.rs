//! Connections: the public [`Conn`] handle and the state it shares with its poller.
//!
//! A connection's transport (socket and outbound queue) lives behind one small mutex in
//! [`ConnShared`], with the deadlines and the protocol layer's bits. Any thread may write:
//! under the lock it writes straight to the socket when nothing is queued and queues the
//! remainder otherwise, so every message is written whole and each thread's messages keep their
//! order. The lock is only ever held across non-blocking syscalls. The poller owns everything
//! else about the connection (user state, inbound remainder, timers) and is the only thread
//! that reads, closes or frees it.

pub(crate) mod layer;
mod time;
mod write;

use std::fmt;
use std::io;
use std::net::{SocketAddr, SocketAddrV4, SocketAddrV6};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use mio::net::TcpStream;

use crate::core::config::{EngineConfig, OverflowPolicy, ReadRefresh};
use crate::core::deadline::Deadline;
use crate::core::poller::{Command, PollerShared, context};
use crate::core::timer::timeout_ms;
use crate::core::transport::{Codec, Transport};
pub(crate) use layer::{Attachment, Extras, Gate};

/// An engine-wide unique connection id. Ids are never reused, so an id (or a handle) of a
/// closed connection can never name a newer connection, even one that reuses its slot.
///
/// ```
/// # fn demo(a: &netpoll::Conn, b: &netpoll::Conn) {
/// use std::collections::HashMap;
/// // Ids key a connection's data in application tables.
/// let mut names = HashMap::new();
/// names.insert(a.id(), "alice");
/// assert_eq!(names.get(&b.id()).is_some(), a.id() == b.id());
/// # }
/// ```
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

/// Why `with_state` refuses a dialed connection that is still connecting.
const NOT_CONNECTED: &str = "the connection is not established yet";

/// Why a connection closed. Reported exactly once per opened connection, to
/// [`Handler::on_close`](crate::Handler::on_close).
///
/// ```
/// use netpoll::CloseReason;
/// // Which closes are the peer's doing, for a log line.
/// fn peer_side(reason: CloseReason) -> bool {
///     matches!(reason, CloseReason::PeerClosed | CloseReason::Io(_) | CloseReason::ReadTimeout)
/// }
/// assert!(peer_side(CloseReason::Io(std::io::ErrorKind::ConnectionReset)));
/// assert!(!peer_side(CloseReason::Shutdown));
/// ```
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
    /// The engine shut down (every connection it closes, or that closes while it shuts down).
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

    /// Every reason once, in the order of [`index`](Self::index) (`Io` stands for every kind).
    pub(crate) const ALL: [CloseReason; Self::COUNT] = [
        CloseReason::PeerClosed,
        CloseReason::Io(io::ErrorKind::Other),
        CloseReason::Overflow,
        CloseReason::InboundOverflow,
        CloseReason::Local,
        CloseReason::Shutdown,
        CloseReason::HandlerPanic,
        CloseReason::WriteTimeout,
        CloseReason::ReadTimeout,
    ];

    /// A short snake_case name for logs and metrics labels (`"io"` for every `Io` kind).
    ///
    /// ```
    /// use netpoll::CloseReason;
    /// assert_eq!(CloseReason::WriteTimeout.label(), "write_timeout");
    /// assert_eq!(CloseReason::Io(std::io::ErrorKind::BrokenPipe).label(), "io");
    /// ```
    pub fn label(self) -> &'static str {
        match self {
            CloseReason::PeerClosed => "peer_closed",
            CloseReason::Io(_) => "io",
            CloseReason::Overflow => "overflow",
            CloseReason::InboundOverflow => "inbound_overflow",
            CloseReason::Local => "local",
            CloseReason::Shutdown => "shutdown",
            CloseReason::HandlerPanic => "handler_panic",
            CloseReason::WriteTimeout => "write_timeout",
            CloseReason::ReadTimeout => "read_timeout",
        }
    }

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
    pub(crate) transport: Transport,
    pub(crate) phase: Phase,
    /// Queued bytes are on the owning poller's flush list (written inside a callback).
    pub(crate) corked: bool,
    /// Queued bytes crossed the low watermark; `on_drained` is owed when they fall back.
    pub(crate) above_low_water: bool,
    /// The application paused reading: bytes stay in the kernel (TCP backpressure) and the
    /// read timeout waits.
    pub(crate) read_paused: bool,
    /// The transport has a codec (TLS): the plain read and write paths test only this.
    pub(crate) coded: bool,
    /// This connection's overflow policy, if overridden (else the engine's).
    pub(crate) overflow_policy: Option<OverflowPolicy>,
    /// When queued bytes that make no progress close the connection (`WriteTimeout`).
    pub(crate) write_deadline: Deadline,
    /// When a connection that receives nothing closes (`ReadTimeout`, via `on_idle`).
    pub(crate) read_deadline: Deadline,
    /// The protocol layer's bits, checked and set by [`Gate`]s with its writes.
    pub(crate) layer_bits: u8,
}

impl ConnIo {
    /// Puts the connection on its poller's flush list, once per loop iteration (on the
    /// poller's own thread: from a callback, or when the transport has bytes of its own).
    pub(crate) fn cork(&mut self, token: usize) {
        if !self.corked {
            self.corked = true;
            context::cork(token);
        }
    }

    /// Marks the connection closed, drops anything queued and closes the descriptor (which
    /// also removes it from the poller). Handles see `Closed` from now on. Returns the change
    /// to the queued-bytes gauge.
    #[must_use = "the gauge must be told: add the returned delta"]
    pub(crate) fn release(&mut self) -> i64 {
        self.phase = Phase::Closed;
        self.transport.release()
    }
}

/// A peer's address in 16 bytes instead of a `SocketAddr`'s 32: every connection holds one
/// for its life. IPv4 (and IPv4-mapped IPv6, what a dual-stack `[::]` listener sees) inline;
/// other IPv6 peers boxed, 32 bytes more for each of them.
#[derive(Debug)]
enum PeerAddr {
    V4(SocketAddrV4),
    V4Mapped(SocketAddrV4),
    V6(Box<SocketAddrV6>),
}

impl From<SocketAddr> for PeerAddr {
    fn from(addr: SocketAddr) -> Self {
        match addr {
            SocketAddr::V4(a) => PeerAddr::V4(a),
            SocketAddr::V6(a) => match a.ip().to_ipv4_mapped() {
                Some(ip) if a.flowinfo() == 0 && a.scope_id() == 0 => {
                    PeerAddr::V4Mapped(SocketAddrV4::new(ip, a.port()))
                }
                _ => PeerAddr::V6(Box::new(a)),
            },
        }
    }
}

impl PeerAddr {
    fn get(&self) -> SocketAddr {
        match self {
            PeerAddr::V4(a) => SocketAddr::V4(*a),
            PeerAddr::V4Mapped(a) => {
                SocketAddr::V6(SocketAddrV6::new(a.ip().to_ipv6_mapped(), a.port(), 0, 0))
            }
            PeerAddr::V6(a) => SocketAddr::V6(**a),
        }
    }
}

/// A counted reference to a connection's shared state: triomphe's `Arc`, which has no weak
/// count. Nothing holds a connection weakly, and the 8 bytes saved move every connection's
/// allocation down an allocator size class (glibc: from a 144-byte chunk to a 128-byte one).
pub(crate) type ConnRef = triomphe::Arc<ConnShared>;

/// State shared between every [`Conn`] handle and the owning poller.
pub(crate) struct ConnShared {
    pub(crate) id: ConnId,
    peer: PeerAddr,
    /// The poller's token; written once by the owning poller when it adopts the connection,
    /// read back only by that poller.
    pub(crate) token: AtomicUsize,
    pub(crate) poller: Arc<PollerShared>,
    pub(crate) io: Mutex<ConnIo>,
}

impl ConnShared {
    pub(crate) fn new(
        id: ConnId,
        peer: SocketAddr,
        socket: TcpStream,
        codec: Option<Box<dyn Codec>>,
        poller: Arc<PollerShared>,
        phase: Phase,
    ) -> Self {
        let config = &poller.common.config;
        let manual = config.read_refresh == ReadRefresh::Manual;
        let coded = codec.is_some();
        let transport = match codec {
            Some(codec) => Transport::with_codec(socket, codec),
            None => Transport::plain(socket),
        };
        ConnShared {
            id,
            peer: PeerAddr::from(peer),
            token: AtomicUsize::new(usize::MAX),
            io: Mutex::new(ConnIo {
                transport,
                phase,
                corked: false,
                above_low_water: false,
                read_paused: false,
                coded,
                overflow_policy: None,
                write_deadline: Deadline::new(timeout_ms(config.write_timeout), false),
                read_deadline: Deadline::new(timeout_ms(config.read_timeout), manual),
                layer_bits: 0,
            }),
            poller,
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

    pub(crate) fn peer_addr(&self) -> SocketAddr {
        self.peer.get()
    }

    pub(crate) fn config(&self) -> &EngineConfig {
        self.poller.config()
    }
}

/// A handle to one connection: cheap to clone, `Send + Sync`, usable from any thread.
///
/// Writes are whole-message and ordered per writing thread: concurrent writers never interleave
/// inside each other's messages and need no lock of their own. A handle outliving its
/// connection returns [`WriteError::Closed`](crate::WriteError::Closed); it can never reach
/// another connection.
///
/// ```no_run
/// use netpoll::{Conn, Engine, Handler};
///
/// struct Push;
/// impl Handler for Push {
///     type State = ();
///     fn on_open(&mut self, conn: &Conn) {
///         // Hand the handle to a producer thread: it writes without any lock of its own.
///         let conn = conn.clone();
///         std::thread::spawn(move || {
///             for i in 0.. {
///                 if conn.write_slice(format!("tick {i}\n").as_bytes()).is_err() {
///                     break; // closed, or the peer cannot keep up
///                 }
///                 std::thread::sleep(std::time::Duration::from_secs(1));
///             }
///         });
///     }
///     fn on_data(&mut self, _: &Conn, _: &mut (), data: &mut [u8]) -> usize {
///         data.len()
///     }
/// }
/// let engine = Engine::builder().listen("127.0.0.1:9000").start(|_| Push)?;
/// # Ok::<(), netpoll::Error>(())
/// ```
#[derive(Clone)]
pub struct Conn {
    pub(crate) shared: ConnRef,
}

impl fmt::Debug for Conn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Conn")
            .field("id", &self.shared.id)
            .field("peer", &self.shared.peer_addr())
            .finish()
    }
}

impl PartialEq for Conn {
    fn eq(&self, other: &Self) -> bool {
        ConnRef::ptr_eq(&self.shared, &other.shared)
    }
}

impl Eq for Conn {}

impl Conn {
    pub(crate) fn from_shared(shared: ConnRef) -> Self {
        Conn { shared }
    }

    /// This connection's engine-wide unique id.
    pub fn id(&self) -> ConnId {
        self.shared.id
    }

    /// The remote address.
    pub fn peer_addr(&self) -> SocketAddr {
        self.shared.peer_addr()
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

    /// What is queued for this connection and not yet taken by the kernel, as the outbound
    /// limit counts it: the bytes, plus 64 bytes of bookkeeping per queued chunk (a message
    /// queued as its own buffer; small copied writes share one). 0 when nothing waits.
    pub fn pending_bytes(&self) -> usize {
        let io = self.shared.lock();
        io.transport.charge(io.coded)
    }

    /// Overrides the engine's [`overflow_policy`](crate::EngineBuilder::overflow_policy) for
    /// this connection's writes: e.g. cut off one slow subscriber (`Close`) while others get
    /// `WriteError::Overflow` and back off (`Error`).
    pub fn set_overflow_policy(&self, policy: OverflowPolicy) {
        self.shared.lock().overflow_policy = Some(policy);
    }

    /// Stops reading from this connection until [`resume_reading`](Self::resume_reading):
    /// what the peer sends stays in the kernel's buffers, and once they are full TCP flow
    /// control holds the peer back. Backpressure on the receive side, e.g. for a proxy whose
    /// other side is slow, or a consumer that cannot keep up. The read timeout (and a
    /// WebSocket heartbeat) waits while paused; an absolute read deadline still applies. A
    /// peer's close is noticed only when reading resumes. Takes effect before the next read;
    /// from any thread.
    ///
    /// ```no_run
    /// # fn demo(conn: &netpoll::Conn, backend: &netpoll::Conn) {
    /// // A proxy: stop reading the client while the backend's queue is deep.
    /// if backend.pending_bytes() > 1 << 20 {
    ///     conn.pause_reading();
    /// }
    /// // ... and in the backend's on_drained: conn.resume_reading();
    /// # }
    /// ```
    pub fn pause_reading(&self) {
        let was_paused = std::mem::replace(&mut self.shared.lock().read_paused, true);
        // The io_uring backend receives ahead of the handler: its receive must be stopped, or
        // it would drain the peer (and the poller's buffers) into the kept remainder.
        #[cfg(netpoll_uring)]
        if !was_paused && self.shared.poller.config().io_uring {
            self.shared.poller.send(Command::StopReading {
                conn: self.shared.clone(),
            });
        }
        #[cfg(not(netpoll_uring))]
        let _ = was_paused;
    }

    /// Reads again after [`pause_reading`](Self::pause_reading): the poller reads what waited
    /// in the kernel meanwhile (its readiness edge was spent while paused). Does nothing if
    /// reading was not paused.
    pub fn resume_reading(&self) {
        let was_paused = std::mem::take(&mut self.shared.lock().read_paused);
        if was_paused {
            self.shared.poller.send(Command::ReadAgain {
                conn: self.shared.clone(),
            });
        }
    }

    /// True while reading is paused.
    pub fn is_reading_paused(&self) -> bool {
        self.shared.lock().read_paused
    }

    /// Runs `f` on this connection's poller with its handler state (the `State` your
    /// [`Handler`](crate::Handler) keeps per connection), from any thread: change a
    /// subscription, kick a user, read a counter, without a map of your own behind a lock.
    ///
    /// It runs after the callbacks and commands already queued for the poller, like a write
    /// from a callback; not at all if the connection closed first (then `f` is dropped on the
    /// poller). `S` must be the handler's `State` type: with another type `f` does not run
    /// and an error is logged. Writes from `f` are corked like writes from a callback.
    ///
    /// ```no_run
    /// # fn demo(conn: &netpoll::Conn) {
    /// // State = u32 (a user's permission level): demote from an admin thread.
    /// let _ = conn.with_state(|conn, level: &mut u32| {
    ///     *level = 0;
    ///     let _ = conn.write_slice(b"you are now a guest\n");
    /// });
    /// # }
    /// ```
    ///
    /// # Errors
    /// [`WriteError::Closed`](crate::WriteError::Closed) if the connection is closed;
    /// [`WriteError::Invalid`](crate::WriteError::Invalid) while a dialed connection is still
    /// connecting (it has no state before `on_open`);
    /// [`WriteError::Busy`](crate::WriteError::Busy) if its poller already holds 65,536 such
    /// tasks (it is far behind).
    pub fn with_state<S: 'static>(
        &self,
        f: impl FnOnce(&Conn, &mut S) + Send + 'static,
    ) -> Result<(), crate::WriteError> {
        match self.shared.lock().phase {
            Phase::Closed => return Err(crate::WriteError::Closed),
            // No state before `on_open`: the task would find nothing to run with.
            Phase::Connecting => return Err(crate::WriteError::Invalid(NOT_CONNECTED)),
            Phase::Open => {}
        }
        let task = Box::new(move |conn: &Conn, state: &mut dyn std::any::Any| {
            match state.downcast_mut::<S>() {
                Some(state) => f(conn, state),
                None => tracing::error!(
                    conn = %conn.id(),
                    "with_state: the state is not a {}",
                    std::any::type_name::<S>()
                ),
            }
        });
        if self.shared.poller.send_task(self.shared.clone(), task) {
            Ok(())
        } else {
            Err(crate::WriteError::Busy)
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
        self.request_close(CloseReason::Local, graceful);
    }

    fn request_close(&self, reason: CloseReason, graceful: bool) {
        self.shared.poller.send(Command::Close {
            conn: self.shared.clone(),
            reason,
            graceful,
        });
    }

    /// The engine's configuration (protocol layers read their engine-wide limits here).
    pub(crate) fn config(&self) -> &EngineConfig {
        self.shared.config()
    }

    /// Runs `f` on the protocol layer's bits and attachment under the connection's lock;
    /// `open` tells whether the connection still accepts writes.
    pub(crate) fn with_layer<R>(
        &self,
        f: impl FnOnce(&mut u8, &mut Attachment<'_>, bool) -> R,
    ) -> R {
        let mut io = self.shared.lock();
        let io = &mut *io;
        let open = io.phase != Phase::Closed;
        let mut attachment = io.transport.attachment();
        f(&mut io.layer_bits, &mut attachment, open)
    }

    /// The protocol layer's engine-wide settings of type `T`, if it left some.
    #[inline]
    pub(crate) fn layer_settings<T: std::any::Any>(&self) -> Option<&T> {
        self.config().layer_settings.as_deref()?.downcast_ref()
    }

    /// Runs `f` on why the connection's codec (TLS) failed, if it has one that did.
    pub(crate) fn with_codec_failure<R>(
        &self,
        f: impl FnOnce(Option<&(dyn std::error::Error + Send + Sync + 'static)>) -> R,
    ) -> R {
        f(self.shared.lock().transport.codec_failure())
    }

    /// A handle to the poller that owns this connection.
    pub(crate) fn poller(&self) -> PollerRef {
        PollerRef(self.shared.poller.clone())
    }
}

/// A crate-visible handle to one poller, for protocol layers that keep per-poller state (a
/// broadcast group's members of each poller) and run work on it.
#[derive(Clone)]
pub(crate) struct PollerRef(Arc<PollerShared>);

impl PollerRef {
    pub(crate) fn index(&self) -> usize {
        self.0.index
    }

    /// True for the same poller of the same engine.
    pub(crate) fn same(&self, other: &PollerRef) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }

    /// Runs `f` on the poller's thread, after the commands already queued for it; a panic in
    /// it is contained and logged.
    pub(crate) fn run(&self, f: Box<dyn FnOnce() + Send>) {
        self.0.send(Command::Run(f));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_addresses_come_back_as_they_went_in_from_sixteen_bytes() {
        assert_eq!(std::mem::size_of::<PeerAddr>(), 16);
        for addr in [
            "127.0.0.5:40000",
            "0.0.0.0:0",
            "[::1]:8080",
            "[::ffff:10.1.2.3]:443",
            "[fe80::1%7]:22",
            "[2001:db8::1]:65535",
        ] {
            let addr: SocketAddr = addr.parse().unwrap();
            assert_eq!(PeerAddr::from(addr).get(), addr, "{addr}");
        }
        // An IPv4-mapped peer with a flow label keeps it (boxed).
        let flowed = SocketAddr::V6(SocketAddrV6::new(
            "::ffff:10.1.2.3".parse().unwrap(),
            443,
            9,
            0,
        ));
        assert!(matches!(PeerAddr::from(flowed), PeerAddr::V6(_)));
        assert_eq!(PeerAddr::from(flowed).get(), flowed);
    }
}
