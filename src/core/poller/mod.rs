//! The poller: one thread, one `mio::Poll`, and every connection assigned to it.
//!
//! Each iteration of the loop ([`Poller::run`]): wait for readiness (or the next timer), handle
//! socket events, continue reads that the fairness budget cut short, run commands from other
//! threads, expire timers, and finally flush every connection that was written to from a
//! callback during the iteration (one `writev` each). A poll that returns many events has
//! their writes flushed every 64 events as well, so a burst holds one batch's queues at a time.
//!
//! Sockets are registered once for READABLE | WRITABLE, edge-triggered. A writable edge only
//! follows a write that found the socket buffer full, so registering for it costs nothing while
//! a connection keeps up, and no `epoll_ctl` is ever needed to turn it on or off.
//!
//! The loop's concerns each have a file: [`shared`] (what other threads reach, commands),
//! [`context`] (the thread-local context), [`slots`] (tokens), `read` (the read path), `flush`
//! (the flush path), `lifecycle` (adopt, open, close, free, shutdown), `expiry` (timer wheel:
//! stages and deadlines), `accept`, `timers` (user timers).

mod accept;
pub(crate) mod context;
mod expiry;
mod flush;
mod lifecycle;
mod read;
mod shared;
pub(crate) mod slots;
mod timers;
#[cfg(netpoll_uring)]
mod uring;

use std::any::Any;
use std::collections::VecDeque;
use std::io;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use mio::net::TcpListener;
use mio::{Events, Poll};
use tracing::debug;

use crate::core::config::EngineConfig;
use crate::core::conn::{CloseReason, Conn};
use crate::core::deadline::Deadline;
use crate::core::handler::Handler;
use crate::core::timer::{TimerWheel, UserTimer};
pub(crate) use shared::{Adopt, Command, Common, PollerShared, TimerKind, listener_token};
use shared::{LISTENER_BASE, WAKER};
use slots::{Generational, Slots};
pub(crate) use timers::schedule;

/// Where a connection is in its life, as only the poller sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    Connecting {
        deadline: StageDeadline,
    },
    Open,
    /// Closed for the user; flushing queued bytes before the FIN.
    Flushing {
        deadline: StageDeadline,
    },
    /// FIN sent; waiting for the peer's FIN so that closing cannot turn into a reset that
    /// destroys data still in flight.
    Lingering {
        deadline: StageDeadline,
    },
}

/// A stage's deadline: the low 30 bits of ms on the engine clock, compared by wrapping
/// difference, so that a stage and its deadline pack into 32 bits ([`PackedStage`]). That is
/// right while the deadline is within 2^29 ms (6 days) of the clock: [`new`] brings a farther
/// one (a dial given a week to connect) in to that.
///
/// [`new`]: StageDeadline::new
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct StageDeadline(u32);

impl StageDeadline {
    const BITS: u32 = 30;
    const MASK: u32 = (1 << Self::BITS) - 1;
    /// Farthest ahead a stage deadline can be, ms.
    const AHEAD_MAX: u64 = (1 << (Self::BITS - 1)) - 1;

    /// The deadline `at` (ms on the engine clock), `now` being the time now.
    fn new(now: u64, at: u64) -> Self {
        StageDeadline(at.min(now + Self::AHEAD_MAX) as u32 & Self::MASK)
    }

    /// `self - now` in ms, from the 30-bit difference sign-extended.
    fn ahead(self, now: u64) -> i64 {
        let diff = self.0.wrapping_sub(now as u32) << (32 - Self::BITS);
        i64::from((diff as i32) >> (32 - Self::BITS))
    }

    /// The deadline as ms on the engine clock.
    fn at(self, now: u64) -> u64 {
        now.saturating_add_signed(self.ahead(now))
    }

    fn passed(self, now: u64) -> bool {
        self.ahead(now) <= 0
    }
}

/// A [`Stage`] in 32 bits: the kind in the top two, a [`StageDeadline`] below.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct PackedStage(u32);

impl PackedStage {
    fn pack(stage: Stage) -> Self {
        let (kind, deadline) = match stage {
            Stage::Open => (0, 0),
            Stage::Connecting { deadline } => (1, deadline.0),
            Stage::Flushing { deadline } => (2, deadline.0),
            Stage::Lingering { deadline } => (3, deadline.0),
        };
        PackedStage(kind << StageDeadline::BITS | deadline)
    }

    fn unpack(self) -> Stage {
        let deadline = StageDeadline(self.0 & StageDeadline::MASK);
        match self.0 >> StageDeadline::BITS {
            0 => Stage::Open,
            1 => Stage::Connecting { deadline },
            2 => Stage::Flushing { deadline },
            _ => Stage::Lingering { deadline },
        }
    }
}

/// What the poller keeps per connection (besides the shared part behind `conn`).
struct Connection<S> {
    conn: Conn,
    /// The handler's state: `Some` from `on_open` until `on_close`.
    user: Option<S>,
    /// Bytes the handler left unconsumed; empty (no allocation) almost always.
    inbound: read::Inbound,
    stage_bits: PackedStage,
    /// The slot's generation (the high half of the token): packed beside the stage, it costs
    /// no word of its own.
    generation: u32,
}

impl<S> Connection<S> {
    fn stage(&self) -> Stage {
        self.stage_bits.unpack()
    }

    fn set_stage(&mut self, stage: Stage) {
        self.stage_bits = PackedStage::pack(stage);
    }
}

impl<S> Generational for Connection<S> {
    fn generation(&self) -> u32 {
        self.generation
    }
    fn set_generation(&mut self, generation: u32) {
        self.generation = generation;
    }
}

/// A wheel entry: a token, what it watches, and the time it was scheduled for (0 for stages
/// and user timers), in 12 bytes: the wheel holds one per idle connection. The time keeps
/// only its low bits ([`Deadline::ENTRY_TIME_BITS`]), enough for the deadline to tell its
/// canonical entry, with the kind in the two above.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    slot: u32,
    generation: u32,
    kind_at: u32,
}

impl Entry {
    const AT_BITS: u32 = Deadline::ENTRY_TIME_BITS;
    const AT_MASK: u32 = (1 << Self::AT_BITS) - 1;

    fn new(token: usize, kind: TimerKind, at: u64) -> Self {
        let (generation, slot) = slots::split(token);
        Entry {
            slot: slot as u32,
            generation,
            kind_at: (kind as u32) << Self::AT_BITS | (at as u32 & Self::AT_MASK),
        }
    }

    /// The token, the kind, and the scheduled time's low bits.
    fn parts(self) -> (usize, TimerKind, u64) {
        let kind = match self.kind_at >> Self::AT_BITS {
            0 => TimerKind::Stage,
            1 => TimerKind::Write,
            2 => TimerKind::Read,
            _ => TimerKind::User,
        };
        let token = slots::token(self.generation, self.slot as usize);
        (token, kind, u64::from(self.kind_at & Self::AT_MASK))
    }
}

/// Most commands one loop iteration runs before it polls the sockets again.
const COMMAND_BUDGET: usize = 4096;

/// Readiness events handled between two flushes of the cork list (which also comes at the
/// end of every loop iteration).
const CORK_BATCH: usize = 64;

/// Room for commands the queues keep between bursts.
const COMMANDS_KEEP: usize = 4096;

pub(crate) struct Poller<H: Handler> {
    shared: Arc<PollerShared>,
    all: Arc<[Arc<PollerShared>]>,
    poll: Poll,
    events: Events,
    handler: H,
    conns: Slots<Connection<H::State>>,
    read_buf: Box<[u8]>,
    listeners: Vec<TcpListener>,
    wheel: TimerWheel<Entry>,
    due: Vec<Entry>,
    /// User timers (`after` / `every`).
    timers: Slots<UserTimer>,
    /// Scratch list of user timers due this iteration: (deadline, seq, token).
    due_timers: Vec<(u64, u64, usize)>,
    /// Connections whose reads the fairness budget cut short; continued next iteration.
    backlog: VecDeque<usize>,
    /// Commands taken from the shared queue, run at most `COMMAND_BUDGET` per iteration.
    inbox: VecDeque<Command>,
    /// Where the shared queue is swapped out to (kept for its allocation).
    incoming: Vec<Command>,
    /// The cork list's second buffer (the two alternate, so flushing allocates nothing).
    corked_spare: Vec<usize>,
    /// Accepting is paused until then (descriptor exhaustion or the connection limit).
    accept_resume_at: Option<u64>,
    next_target: usize,
    shutdown_deadline: Option<u64>,
    /// This iteration's time, ms on the engine clock (also in the thread's context).
    now: u64,
    /// This iteration's change of the queued-bytes gauge, published once at its end.
    queued_delta: i64,
    /// The io_uring backend's ring, when it is on.
    #[cfg(netpoll_uring)]
    uring: Option<Box<uring::UringState>>,
}

impl<H: Handler> Poller<H> {
    pub(crate) fn new(
        shared: Arc<PollerShared>,
        all: Arc<[Arc<PollerShared>]>,
        poll: Poll,
        handler: H,
        listeners: Vec<TcpListener>,
    ) -> Self {
        let config = &shared.common.config;
        let now = shared.common.clock.ms(Instant::now());
        Poller {
            events: Events::with_capacity(config.events_capacity),
            read_buf: vec![0u8; config.read_buffer_size].into_boxed_slice(),
            wheel: TimerWheel::new((config.timer_tick.as_millis() as u64).max(1)),
            timers: Slots::new(),
            due_timers: Vec::new(),
            next_target: shared.index,
            shared,
            all,
            poll,
            handler,
            conns: Slots::new(),
            listeners,
            due: Vec::new(),
            backlog: VecDeque::new(),
            inbox: VecDeque::new(),
            incoming: Vec::new(),
            corked_spare: Vec::new(),
            accept_resume_at: None,
            shutdown_deadline: None,
            now,
            queued_delta: 0,
            #[cfg(netpoll_uring)]
            uring: None,
        }
    }

    fn config(&self) -> &EngineConfig {
        &self.shared.common.config
    }

    /// Runs until shutdown completes.
    pub(crate) fn run(mut self) {
        context::enter(&self.shared);
        self.start_uring();
        let mut events = Events::with_capacity(0);
        loop {
            let timeout = self.poll_timeout();
            #[cfg(netpoll_uring)]
            if self.uring.is_some() {
                if let Err(e) = self.wait_uring(timeout) {
                    tracing::error!(poller = self.shared.index, error = %e, "io_uring wait failed; poller stops");
                    break;
                }
                self.after_wait();
                if self.shutdown_done() {
                    break;
                }
                continue;
            }
            if let Err(e) = self.poll.poll(&mut self.events, timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                tracing::error!(poller = self.shared.index, error = %e, "poll failed; poller stops");
                break;
            }
            self.now = self.shared.common.clock.ms(Instant::now());
            context::set_now_ms(self.now);
            std::mem::swap(&mut events, &mut self.events);
            for (i, ev) in events.iter().enumerate() {
                self.dispatch(ev);
                if i % CORK_BATCH == CORK_BATCH - 1 {
                    // Flush what this batch's callbacks wrote before going on, so the queues
                    // they took come back to the pool for the next batch: a burst of ready
                    // sockets holds at most one batch's queues at a time.
                    self.flush_corked();
                }
            }
            std::mem::swap(&mut events, &mut self.events);
            self.after_wait();
            if self.shutdown_done() {
                break;
            }
        }
        self.free_all();
        self.publish_queued();
        #[cfg(netpoll_uring)]
        self.drain_uring();
        self.drop_timers();
        context::leave();
        debug!(poller = self.shared.index, "poller stopped");
    }

    /// Turns the io_uring backend on if configured, or says why it cannot.
    fn start_uring(&mut self) {
        if !self.config().io_uring {
            return;
        }
        #[cfg(netpoll_uring)]
        match uring::UringState::new(&self.poll) {
            Ok(u) => self.uring = Some(u),
            Err(e) => {
                tracing::warn!(poller = self.shared.index, error = %e, "io_uring unavailable; using epoll")
            }
        }
        #[cfg(not(netpoll_uring))]
        tracing::warn!(
            poller = self.shared.index,
            "io_uring backend not compiled in (Linux, feature io-uring); using epoll"
        );
    }

    /// The loop iteration's work after the wait: continue cut-short reads, run commands,
    /// expire timers, flush what callbacks wrote.
    fn after_wait(&mut self) {
        self.continue_backlog();
        self.run_commands();
        self.expire_timers();
        self.flush_corked();
        #[cfg(netpoll_uring)]
        self.rearm_starved();
        self.publish_queued();
    }

    /// True once a shutdown has finished (freeing what is left if its deadline passed).
    fn shutdown_done(&mut self) -> bool {
        let Some(deadline) = self.shutdown_deadline else {
            return false;
        };
        if self.conns.is_empty() {
            return true;
        }
        if self.now >= deadline {
            self.free_all();
            return true;
        }
        false
    }

    fn publish_queued(&mut self) {
        self.shared
            .stats
            .add_queued(std::mem::take(&mut self.queued_delta));
    }

    fn poll_timeout(&self) -> Option<Duration> {
        if !self.backlog.is_empty() || !self.inbox.is_empty() || self.shared.has_commands() {
            return Some(Duration::ZERO);
        }
        let now = self.shared.common.clock.ms(Instant::now());
        let mut timeout = self.wheel.next_timeout(now);
        for at in [self.accept_resume_at, self.shutdown_deadline]
            .into_iter()
            .flatten()
        {
            let d = at.saturating_sub(now);
            timeout = Some(timeout.map_or(d, |t| t.min(d)));
        }
        // `now` is rounded down, so this never wakes before the deadline's millisecond.
        timeout.map(Duration::from_millis)
    }

    fn dispatch(&mut self, ev: &mio::event::Event) {
        let token = ev.token().0;
        if token == WAKER.0 {
            return; // commands are drained every iteration
        }
        if token > LISTENER_BASE - self.listeners.len() && token <= LISTENER_BASE {
            self.accept_ready(LISTENER_BASE - token);
            return;
        }
        if !self.conns.contains(token) {
            return; // stale event for a freed connection
        }
        #[cfg(netpoll_uring)]
        if self.uring.is_some() && self.reads_by_ring_token(token) {
            // The ring receives (and sees end of stream and errors); epoll reports only
            // writability (and hang-ups, which the receive reports too).
            if ev.is_writable() || ev.is_write_closed() || ev.is_error() {
                self.on_writable(token);
            }
            return;
        }
        if ev.is_writable() || ev.is_write_closed() || ev.is_error() {
            self.on_writable(token);
        }
        if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
            // With the peer's FIN already queued behind the data, no further edge will come:
            // read to the end instead of trusting a short read.
            self.on_readable(token, ev.is_read_closed() || ev.is_error());
        }
    }

    fn stage(&self, token: usize) -> Option<Stage> {
        self.conns.get(token).map(|c| c.stage())
    }

    /// Runs handler callback `what` with an open connection's state: `None` if there is no
    /// such connection or state, else what it returned; a panic is contained and aborts the
    /// connection (`Some(None)`).
    fn with_state<R>(
        &mut self,
        token: usize,
        what: &'static str,
        f: impl FnOnce(&mut H, &Conn, &mut H::State) -> R,
    ) -> Option<Option<R>> {
        let c = self.conns.get_mut(token)?;
        let state = c.user.as_mut()?;
        let handler = &mut self.handler;
        let conn = &c.conn;
        let result = guarded(what, conn, || f(handler, conn, state));
        if result.is_none() {
            self.begin_close(token, CloseReason::HandlerPanic, false);
        }
        Some(result)
    }

    /// The token of `conn` if it is live on this poller.
    fn live(&self, conn: &crate::core::conn::ConnShared) -> Option<usize> {
        let token = conn.token();
        self.conns
            .get(token)
            .is_some_and(|c| std::ptr::eq(&*c.conn.shared, conn))
            .then_some(token)
    }

    /// Runs the commands other threads sent, oldest first, at most `COMMAND_BUDGET` of them
    /// per iteration: the rest wait for the next one, after the sockets had their turn.
    fn run_commands(&mut self) {
        self.shared.take_commands(&mut self.incoming);
        self.inbox.extend(self.incoming.drain(..));
        if self.incoming.capacity() > COMMANDS_KEEP {
            self.incoming = Vec::new();
        }
        for _ in 0..COMMAND_BUDGET {
            let Some(cmd) = self.inbox.pop_front() else {
                break;
            };
            match cmd {
                Command::Adopt(adopt) => self.adopt(adopt),
                Command::Close {
                    conn,
                    reason,
                    graceful,
                } => {
                    if let Some(token) = self.live(&conn) {
                        self.begin_close(token, reason, graceful);
                    }
                }
                Command::Watch { conn, kind } => {
                    if let Some(token) = self.live(&conn) {
                        self.check_deadline(
                            token,
                            kind,
                            crate::core::deadline::Deadline::REQUESTED,
                        );
                    }
                }
                Command::AddTimer(timer) => self.add_timer(*timer),
                #[cfg(netpoll_uring)]
                Command::StopReading { conn } => {
                    if let Some(token) = self.live(&conn) {
                        self.stop_recv(token);
                    }
                }
                Command::ReadAgain { conn } => {
                    if let Some(token) = self.live(&conn) {
                        // Read until WouldBlock, with the fairness budget, next iteration.
                        self.backlog.push_back(token);
                    }
                }
                Command::Run(f) => {
                    if std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).is_err() {
                        tracing::error!(poller = self.shared.index, "poller task panicked");
                    }
                }
                Command::WithState { conn, task } => {
                    self.shared.tasks.fetch_sub(1, Ordering::AcqRel);
                    if let Some(token) = self.live(&conn) {
                        self.with_state(token, "with_state", |_, conn, state| {
                            task(conn, state as &mut dyn Any)
                        });
                    }
                }
                Command::CancelTimer(state) => self.cancel_timer(&state),
                Command::ResumeAccept => self.resume_accept(),
                Command::Shutdown { deadline } => {
                    let deadline = self.shared.common.clock.deadline_at(deadline);
                    self.start_shutdown(deadline)
                }
            }
        }
        if self.inbox.is_empty() && self.inbox.capacity() > COMMANDS_KEEP {
            self.inbox = VecDeque::new();
        }
    }
}

/// Runs a handler callback, containing a panic to the connection it was called for: the
/// panic is logged and `None` returned, so the poller thread (and every other connection on it)
/// survives a buggy callback. The handler's own state may be inconsistent after a panic; that
/// is the handler's business, as with a panicking task in an async runtime.
fn guarded<R>(what: &'static str, conn: &Conn, f: impl FnOnce() -> R) -> Option<R> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(r) => Some(r),
        Err(_) => {
            tracing::error!(conn = %conn.id(), callback = what, "handler panicked; aborting the connection");
            None
        }
    }
}

/// During shutdown, the closes it causes report [`CloseReason::Shutdown`]: the protocol
/// layer closing after its goodbye, the peer closing in answer, or the goodbye going
/// unanswered. Faults keep their own reason.
fn shutdown_reason(reason: CloseReason) -> CloseReason {
    match reason {
        CloseReason::Local | CloseReason::PeerClosed | CloseReason::ReadTimeout => {
            CloseReason::Shutdown
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::conn::ConnShared;

    /// Per-connection memory is the product's headline figure. These bounds catch a field that
    /// silently grows it.
    #[test]
    fn per_connection_structs_stay_small() {
        // mio's sockets carry a selector id in debug builds only, which also takes the padding
        // after the descriptor that the queued-bytes gauge's u32 fills in release builds.
        let mio_debug = std::mem::size_of::<Option<mio::net::TcpStream>>() - 4;
        let mio_debug = if mio_debug == 0 { 0 } else { mio_debug + 4 };
        let shared = std::mem::size_of::<ConnShared>();
        // The io_uring backend's in-flight counter, when it is compiled in.
        let mio_debug = mio_debug + if cfg!(netpoll_uring) { 8 } else { 0 };
        // The slab's entry, with a 16-byte handler state that has a niche for `Option` (as the
        // WebSocket session has); the slab's vacant/occupied tag fits in the handle's niche.
        let entry = std::mem::size_of::<Connection<(Box<u8>, u64)>>();
        eprintln!("ConnShared {shared} B (debug build adds {mio_debug}), slab entry {entry} B");
        assert!(shared <= 112 + mio_debug, "ConnShared grew to {shared} B");
        // Behind triomphe's Arc, whose only header is the count: at most 120 B in release
        // builds, so that with malloc's 8 B it fits glibc's 128-byte chunk.
        let count = std::mem::size_of::<std::sync::atomic::AtomicUsize>();
        assert!(shared + count <= 120 + mio_debug, "ConnRef allocation grew");
        assert!(entry <= 40, "slab entry grew to {entry} B");
    }

    #[test]
    fn stage_deadlines_keep_their_order_across_the_30_bit_wrap() {
        assert_eq!(std::mem::size_of::<PackedStage>(), 4);
        for now in [
            0,
            5_000,
            u64::from(u32::MAX) - 10,
            u64::from(u32::MAX) + 7,
            1 << 40,
        ] {
            for ahead in [0, 1, 30_000, StageDeadline::AHEAD_MAX] {
                let d = StageDeadline::new(now, now + ahead);
                assert_eq!(d.at(now), now + ahead, "now {now} ahead {ahead}");
                assert_eq!(d.passed(now), ahead == 0, "now {now} ahead {ahead}");
                assert!(d.passed(now + ahead) && d.passed(now + ahead + 1000));
                if ahead > 0 {
                    assert!(!d.passed(now + ahead - 1));
                }
            }
            // A month ahead comes in to 6 days; a deadline just passed stays passed.
            let month = StageDeadline::new(now, now + 31 * 86_400_000);
            assert_eq!(month.at(now), now + StageDeadline::AHEAD_MAX);
            for stage in [
                Stage::Open,
                Stage::Connecting { deadline: month },
                Stage::Flushing { deadline: month },
                Stage::Lingering { deadline: month },
            ] {
                assert_eq!(PackedStage::pack(stage).unpack(), stage);
            }
            let past = StageDeadline::new(now + 10, now);
            assert!(past.passed(now + 10));
            assert_eq!(past.at(now + 10), now);
        }
    }

    #[test]
    fn wheel_entries_pack_into_twelve_bytes() {
        assert_eq!(std::mem::size_of::<Entry>(), 12);
        let kinds = [
            TimerKind::Stage,
            TimerKind::Write,
            TimerKind::Read,
            TimerKind::User,
        ];
        let low = u64::from(Entry::AT_MASK);
        for kind in kinds {
            for at in [0, 1, 123_456_789, low, low + 1, u64::MAX] {
                for token in [0, (7 << 32) | 42, ((1 << 31) - 1) << 32 | 0xffff_ffff] {
                    let parts = Entry::new(token, kind, at).parts();
                    assert_eq!(parts, (token, kind, at & low), "{token:x} {kind:?} {at}");
                }
            }
        }
    }
}
