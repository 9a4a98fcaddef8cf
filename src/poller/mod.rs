//! The poller: one thread, one `mio::Poll`, and every connection assigned to it.
//!
//! Each iteration of the loop: wait for readiness (or the next timer), handle socket events,
//! continue reads that the fairness budget cut short, run commands from other threads (new
//! connections, close requests, shutdown), expire timers, and finally flush every connection
//! that was written to from a callback during the iteration (one `writev` each).
//!
//! Sockets are registered once for READABLE | WRITABLE, edge-triggered. A writable edge only
//! follows a write that found the socket buffer full, so registering for it costs nothing while
//! a connection keeps up, and no `epoll_ctl` is ever needed to turn it on or off.

mod accept;
mod timers;

pub(crate) use accept::configure_stream;

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::io::{self, Read};
use std::net::Shutdown;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mio::net::TcpListener;
use mio::{Events, Interest, Poll, Token, Waker};
use slab::Slab;
use tracing::{debug, warn};

use crate::builder::EngineConfig;
use crate::conn::{CloseReason, Conn, ConnShared, Phase, WATCH_PENDING};
use crate::handler::{Handler, IdleAction, ShutdownAction};
use crate::stats::{PollerStats, count};
use crate::timer::{Clock, TimerState, TimerWheel, UserTimer, timeout_ms};

pub(crate) use timers::schedule;

/// Token of the poller's waker.
const WAKER: Token = Token(usize::MAX);
/// Listener `i` uses `LISTENER_BASE - i`.
const LISTENER_BASE: usize = usize::MAX - 1;
/// Connection tokens are `generation << 32 | slot` with a 31-bit generation, so they never
/// reach the special tokens above, and an event queued for a freed connection cannot be taken
/// for a newer one in the same slot.
const SLOT_BITS: u32 = 32;
const SLOT_MASK: usize = (1 << SLOT_BITS) - 1;
const GEN_MASK: u32 = (1 << 31) - 1;

/// The token of a poller's `i`-th listener.
pub(crate) fn listener_token(i: usize) -> usize {
    LISTENER_BASE - i
}

/// Engine-wide state shared by every poller and the [`Engine`](crate::Engine) handle.
#[derive(Debug)]
pub(crate) struct Common {
    pub(crate) config: EngineConfig,
    /// Deadlines are milliseconds on this clock.
    pub(crate) clock: Clock,
    pub(crate) next_id: AtomicU64,
    /// Creation order of user timers.
    pub(crate) next_timer_seq: AtomicU64,
    /// Connections counted against `max_connections`: from accept or dial until closed.
    pub(crate) open: AtomicUsize,
    /// An acceptor paused; the next connection to free its socket wakes the acceptors.
    pub(crate) accept_paused: AtomicBool,
    pub(crate) shutting_down: AtomicBool,
}

/// What a wheel entry is watching for its connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TimerKind {
    /// The deadline of the connection's stage (connect, close flush, linger).
    Stage,
    /// `ConnIo::write_deadline`.
    Write,
    /// `ConnIo::read_deadline`.
    Read,
    /// A user timer; the token names it in the poller's timer slab.
    User,
}

/// Requests from other threads, executed by the poller in order.
pub(crate) enum Command {
    /// A deadline of `kind` was armed off the poller thread: put it on the wheel.
    Watch {
        conn: Arc<ConnShared>,
        kind: TimerKind,
    },
    /// Register a new connection (accepted elsewhere, or dialed with a connect deadline).
    Adopt {
        conn: Arc<ConnShared>,
        connect_deadline: Option<Instant>,
    },
    Close {
        conn: Arc<ConnShared>,
        reason: CloseReason,
        graceful: bool,
    },
    AddTimer(Box<UserTimer>),
    /// Run a closure on the poller thread (a broadcast's share for this poller's members).
    Run(Box<dyn FnOnce() + Send>),
    CancelTimer(Arc<TimerState>),
    ResumeAccept,
    Shutdown {
        deadline: Instant,
    },
}

/// The part of a poller other threads can reach.
pub(crate) struct PollerShared {
    pub(crate) index: usize,
    pub(crate) common: Arc<Common>,
    pub(crate) stats: PollerStats,
    waker: Waker,
    commands: Mutex<Vec<Command>>,
    /// A wake-up is already on its way; saves the eventfd write for every command after the
    /// first until the poller drains the queue.
    wake_pending: AtomicBool,
    /// Commands are queued: lets the loop decide its poll timeout without taking the lock.
    queued: AtomicBool,
}

impl PollerShared {
    pub(crate) fn new(index: usize, common: Arc<Common>, poll: &Poll) -> io::Result<Self> {
        Ok(PollerShared {
            index,
            common,
            stats: PollerStats::default(),
            waker: Waker::new(poll.registry(), WAKER)?,
            commands: Mutex::new(Vec::new()),
            wake_pending: AtomicBool::new(false),
            queued: AtomicBool::new(false),
        })
    }

    pub(crate) fn config(&self) -> &EngineConfig {
        &self.common.config
    }

    /// Queues a command and wakes the poller unless it is the calling thread (which drains
    /// its queue before it sleeps again) or a wake-up is already pending.
    pub(crate) fn send(&self, cmd: Command) {
        self.send_all(std::iter::once(cmd));
    }

    pub(crate) fn send_all(&self, cmds: impl IntoIterator<Item = Command>) {
        self.commands
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend(cmds);
        self.queued.store(true, Ordering::SeqCst);
        if !is_current(self) && !self.wake_pending.swap(true, Ordering::SeqCst) {
            // Fails only if the eventfd is gone, i.e. the poller has exited: then nobody is
            // left to run the command and every connection is already closed.
            let _ = self.waker.wake();
        }
    }

    fn take_commands(&self, into: &mut Vec<Command>) {
        // Clear wake_pending first and unconditionally: a sender that still sees it set knows
        // this check of `queued` comes after its push; one that sees it clear wakes us again.
        self.wake_pending.store(false, Ordering::SeqCst);
        if !self.queued.swap(false, Ordering::SeqCst) {
            return;
        }
        let mut q = self.commands.lock().unwrap_or_else(|p| p.into_inner());
        std::mem::swap(&mut *q, into);
    }

    fn has_commands(&self) -> bool {
        self.queued.load(Ordering::Acquire)
    }
}

thread_local! {
    /// The poller running on this thread, if any.
    static CURRENT: Cell<*const PollerShared> = const { Cell::new(std::ptr::null()) };
    /// Tokens of connections written to from callbacks on this poller, flushed at the end of
    /// the loop iteration.
    static CORKED: RefCell<Vec<usize>> = const { RefCell::new(Vec::new()) };
    /// Small coalescing buffers returned by drained connections, reused by the next corked
    /// write on this poller: a callback that echoes small messages allocates nothing.
    static TAIL_POOL: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
    /// The running poller's loop time (ms on the engine clock), read once per iteration.
    static LOOP_NOW_MS: Cell<u64> = const { Cell::new(0) };
}

/// The engine clock now, as `poller`'s connections should see it: its loop time on its own
/// thread (callbacks read no clock), a fresh reading on any other.
pub(crate) fn now_ms(poller: &PollerShared) -> u64 {
    if is_current(poller) {
        LOOP_NOW_MS.with(Cell::get)
    } else {
        poller.common.clock.ms(Instant::now())
    }
}

/// Most spare tail buffers a poller keeps (each at most 16 KiB): enough for every connection
/// one loop iteration can cork (`events_capacity`, 1024 by default), so corked writes do not
/// allocate in steady state even with thousands of busy connections.
const TAIL_POOL_MAX: usize = 1024;

/// Expired wheel entries the poller's scratch list keeps room for between ticks.
const DUE_KEEP: usize = 4096;

/// Runs `f` with this thread's tail buffer pool (only meaningful on a poller thread).
pub(crate) fn with_tail_pool<R>(f: impl FnOnce(&mut Vec<Vec<u8>>) -> R) -> R {
    TAIL_POOL.with(|p| f(&mut p.borrow_mut()))
}

/// True when called on `poller`'s own thread.
pub(crate) fn is_current(poller: &PollerShared) -> bool {
    CURRENT.with(|c| std::ptr::eq(c.get(), poller))
}

/// Puts a connection on the current poller's flush list.
pub(crate) fn cork(token: usize) {
    CORKED.with(|c| c.borrow_mut().push(token));
}

/// Where a connection is in its life, as only the poller sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Deadlines are ms on the engine clock.
    Connecting {
        deadline: u64,
    },
    Open,
    /// Closed for the user; flushing queued bytes before the FIN.
    Flushing {
        deadline: u64,
    },
    /// FIN sent; waiting for the peer's FIN so that closing cannot turn into a reset that
    /// destroys data still in flight.
    Lingering {
        deadline: u64,
    },
}

struct Connection<S> {
    conn: Conn,
    token: usize,
    user: Option<S>,
    /// Bytes the handler left unconsumed; empty (no allocation) almost always.
    inbound: Vec<u8>,
    stage: Stage,
}

pub(crate) struct Poller<H: Handler> {
    shared: Arc<PollerShared>,
    all: Arc<[Arc<PollerShared>]>,
    poll: Poll,
    events: Events,
    handler: H,
    conns: Slab<Connection<H::State>>,
    read_buf: Box<[u8]>,
    listeners: Vec<TcpListener>,
    /// Entries: (token, kind, time the entry was scheduled for; 0 for stages and user timers).
    wheel: TimerWheel<(usize, TimerKind, u64)>,
    due: Vec<(usize, TimerKind, u64)>,
    /// User timers (`after` / `every`), named by `generation << 32 | slot` tokens.
    timers: Slab<UserTimer>,
    /// Scratch list of user timers due this iteration: (deadline, seq, token).
    due_timers: Vec<(u64, u64, usize)>,
    /// Connections whose reads the fairness budget cut short; continued next iteration.
    backlog: VecDeque<usize>,
    inbox: Vec<Command>,
    /// Accepting is paused until then (descriptor exhaustion or the connection limit).
    accept_resume_at: Option<u64>,
    next_gen: u32,
    next_target: usize,
    shutdown_deadline: Option<u64>,
    /// This iteration's time, ms on the engine clock (also in `LOOP_NOW_MS`).
    now: u64,
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
            timers: Slab::new(),
            due_timers: Vec::new(),
            next_target: shared.index,
            shared,
            all,
            poll,
            handler,
            conns: Slab::new(),
            listeners,
            due: Vec::new(),
            backlog: VecDeque::new(),
            inbox: Vec::new(),
            accept_resume_at: None,
            next_gen: 0,
            shutdown_deadline: None,
            now,
        }
    }

    fn config(&self) -> &EngineConfig {
        &self.shared.common.config
    }

    /// Runs until shutdown completes.
    pub(crate) fn run(mut self) {
        CURRENT.with(|c| c.set(Arc::as_ptr(&self.shared)));
        let mut events = Events::with_capacity(0);
        loop {
            let timeout = self.poll_timeout();
            if let Err(e) = self.poll.poll(&mut self.events, timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                tracing::error!(poller = self.shared.index, error = %e, "poll failed; poller stops");
                break;
            }
            self.now = self.shared.common.clock.ms(Instant::now());
            LOOP_NOW_MS.with(|c| c.set(self.now));
            std::mem::swap(&mut events, &mut self.events);
            for ev in events.iter() {
                self.dispatch(ev);
            }
            std::mem::swap(&mut events, &mut self.events);
            self.continue_backlog();
            self.run_commands();
            self.expire_timers();
            self.flush_corked();
            if let Some(deadline) = self.shutdown_deadline {
                if self.conns.is_empty() {
                    break;
                }
                if self.now >= deadline {
                    self.free_all();
                    break;
                }
            }
        }
        self.free_all();
        self.drop_timers();
        CURRENT.with(|c| c.set(std::ptr::null()));
        debug!(poller = self.shared.index, "poller stopped");
    }

    fn poll_timeout(&self) -> Option<Duration> {
        if !self.backlog.is_empty() || self.shared.has_commands() {
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
        let slot = token & SLOT_MASK;
        if self.conns.get(slot).is_none_or(|c| c.token != token) {
            return; // stale event for a freed connection
        }
        if ev.is_writable() || ev.is_write_closed() || ev.is_error() {
            self.on_writable(slot);
        }
        if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
            // With the peer's FIN already queued behind the data, no further edge will come:
            // read to the end instead of trusting a short read.
            self.on_readable(slot, ev.is_read_closed() || ev.is_error());
        }
    }

    fn stage(&self, slot: usize) -> Option<Stage> {
        self.conns.get(slot).map(|c| c.stage)
    }

    fn on_writable(&mut self, slot: usize) {
        match self.stage(slot) {
            Some(Stage::Connecting { .. }) => self.finish_connect(slot),
            Some(Stage::Open | Stage::Flushing { .. }) => self.flush(slot),
            _ => {}
        }
    }

    fn on_readable(&mut self, slot: usize, until_would_block: bool) {
        match self.stage(slot) {
            Some(Stage::Open) => self.read_open(slot, until_would_block),
            Some(Stage::Flushing { .. } | Stage::Lingering { .. }) => self.discard_input(slot),
            _ => {}
        }
    }

    fn continue_backlog(&mut self) {
        for _ in 0..self.backlog.len() {
            let Some(token) = self.backlog.pop_front() else {
                break;
            };
            let slot = token & SLOT_MASK;
            if self.conns.get(slot).is_some_and(|c| c.token == token) {
                // The edge that started this read is spent; only WouldBlock proves we are done.
                self.on_readable(slot, true);
            }
        }
    }

    /// Reads an open connection until the socket is drained, the fairness budget is spent, or
    /// the connection starts closing. A short read counts as drained (saving the syscall that
    /// would return `WouldBlock`) unless `until_would_block` is set.
    fn read_open(&mut self, slot: usize, until_would_block: bool) {
        let mut budget = self.config().max_read_per_wakeup;
        loop {
            let Some(c) = self.conns.get(slot) else {
                return;
            };
            if c.stage != Stage::Open {
                return;
            }
            let result = {
                let mut io = c.conn.shared.lock();
                if io.phase == Phase::Closed {
                    return; // a close request is queued
                }
                let Some(socket) = io.socket.as_ref() else {
                    return;
                };
                let result = read_retrying(socket, &mut self.read_buf);
                if matches!(result, Ok(1..))
                    && io.read_timeout != 0
                    && !(io.read_manual || io.read_fixed)
                {
                    // A plain store; the wheel entry checks it lazily.
                    io.read_deadline = Clock::deadline(self.now, io.read_timeout);
                }
                result
            };
            count(&self.shared.stats.read_calls, 1);
            match result {
                Ok(0) => {
                    self.begin_close(slot, CloseReason::PeerClosed, true);
                    return;
                }
                Ok(n) => {
                    count(&self.shared.stats.bytes_in, n as u64);
                    self.deliver(slot, n);
                    if self.stage(slot) != Some(Stage::Open) {
                        return; // the handler's input closed it (inbound overflow)
                    }
                    if n < self.read_buf.len() && !until_would_block {
                        // Short read: the socket is drained and the next data or FIN raises a
                        // new edge.
                        return;
                    }
                    if self.spend_read_budget(slot, &mut budget, n) {
                        return;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    self.begin_close(slot, CloseReason::Io(e.kind()), false);
                    return;
                }
            }
        }
    }

    /// Charges `n` read bytes to the fairness budget. When it is spent the connection goes to
    /// the back of the backlog (its edge is consumed, so nothing else would bring it back) and
    /// the caller stops reading it.
    fn spend_read_budget(&mut self, slot: usize, budget: &mut usize, n: usize) -> bool {
        *budget = budget.saturating_sub(n);
        if *budget > 0 {
            return false;
        }
        let token = self.conns[slot].token;
        self.backlog.push_back(token);
        true
    }

    /// Hands `read_buf[..n]` (behind any kept remainder) to the handler.
    fn deliver(&mut self, slot: usize, n: usize) {
        let max_inbound = self.config().max_inbound_bytes;
        let Some(c) = self.conns.get_mut(slot) else {
            return;
        };
        let Connection {
            conn,
            user,
            inbound,
            ..
        } = c;
        let Some(state) = user.as_mut() else { return };
        let fresh = &mut self.read_buf[..n];
        let handler = &mut self.handler;
        let mut panicked = false;
        let overflow = if inbound.is_empty() {
            match guarded("on_data", conn, || handler.on_data(conn, state, fresh)) {
                None => {
                    panicked = true;
                    false
                }
                Some(used) => {
                    let rest = &fresh[used.min(n)..];
                    if rest.len() > max_inbound {
                        true
                    } else {
                        inbound.extend_from_slice(rest);
                        false
                    }
                }
            }
        } else if inbound.len() + n > max_inbound {
            true
        } else {
            inbound.extend_from_slice(fresh);
            let kept: &mut [u8] = inbound;
            match guarded("on_data", conn, || handler.on_data(conn, state, kept)) {
                None => panicked = true,
                Some(used) => {
                    let used = used.min(inbound.len());
                    if used == inbound.len() {
                        *inbound = Vec::new();
                    } else {
                        inbound.drain(..used);
                        if inbound.capacity() > 64 * 1024 && inbound.capacity() > 4 * inbound.len()
                        {
                            inbound.shrink_to_fit();
                        }
                    }
                }
            }
            false
        };
        if panicked {
            self.begin_close(slot, CloseReason::HandlerPanic, false);
        } else if overflow {
            warn!(conn = %conn.id(), limit = max_inbound, "unconsumed inbound bytes over the limit; closing");
            self.begin_close(slot, CloseReason::InboundOverflow, false);
        }
    }

    /// Reads and drops input of a connection that is closing, to notice the peer's FIN or
    /// reset and keep the receive window open while the last bytes flush.
    fn discard_input(&mut self, slot: usize) {
        let mut budget = self.config().max_read_per_wakeup;
        loop {
            let Some(c) = self.conns.get(slot) else {
                return;
            };
            let result = {
                let io = c.conn.shared.lock();
                let Some(socket) = io.socket.as_ref() else {
                    return;
                };
                read_retrying(socket, &mut self.read_buf)
            };
            count(&self.shared.stats.read_calls, 1);
            match result {
                Ok(0) => {
                    // The peer is done sending. While flushing it may still read (a half-close),
                    // so keep flushing; once our FIN is out the connection is finished.
                    if matches!(self.conns[slot].stage, Stage::Lingering { .. }) {
                        self.free(slot);
                    }
                    return;
                }
                Ok(n) => {
                    count(&self.shared.stats.bytes_in, n as u64);
                    if self.spend_read_budget(slot, &mut budget, n) {
                        return;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(_) => {
                    self.free(slot);
                    return;
                }
            }
        }
    }

    /// Writes queued bytes until the queue is empty or the socket is full.
    fn flush(&mut self, slot: usize) {
        let low_watermark = self.config().low_watermark;
        let Some(c) = self.conns.get(slot) else {
            return;
        };
        let mut watch_write = None;
        let (drained_notice, empty, error) = {
            let mut io = c.conn.shared.lock();
            io.corked = false;
            let mut error = None;
            let mut written = 0u64;
            if !io.out.is_empty() {
                let io = &mut *io;
                let Some(socket) = io.socket.as_ref() else {
                    return;
                };
                let mut writer = socket;
                let mut calls = 0u64;
                loop {
                    calls += 1;
                    match io.out.write_to(&mut writer) {
                        Ok((n, short)) => {
                            written += n as u64;
                            if short || io.out.is_empty() {
                                break;
                            }
                        }
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) => {
                            error = Some(e.kind());
                            break;
                        }
                    }
                }
                let stats = &self.shared.stats;
                count(&stats.write_calls, calls);
                count(&stats.bytes_out, written);
            }
            // The write deadline: cleared once drained, whichever path drained it; refreshed by
            // progress; armed when bytes are left waiting. An absolute one only gets watched.
            if io.out.is_empty() {
                if !io.write_fixed {
                    io.write_deadline = 0;
                }
            } else {
                if !io.write_fixed
                    && io.write_timeout != 0
                    && (written > 0 || io.write_deadline == 0)
                {
                    io.write_deadline = Clock::deadline(self.now, io.write_timeout);
                }
                if needs_entry(io.write_deadline, io.write_watch) {
                    io.write_watch = io.write_deadline;
                    watch_write = Some(io.write_deadline);
                }
            }
            let empty = with_tail_pool(|pool| io.out.release_into(pool, TAIL_POOL_MAX));
            let notice = io.above_low_water && io.out.len() <= low_watermark;
            if notice {
                io.above_low_water = false;
            }
            (notice, empty, error)
        };
        if let Some(kind) = error {
            self.begin_close(slot, CloseReason::Io(kind), false);
            return;
        }
        let c = &mut self.conns[slot];
        if let Some(deadline) = watch_write {
            self.wheel
                .insert(deadline, (c.token, TimerKind::Write, deadline));
        }
        match c.stage {
            Stage::Open if drained_notice => {
                if let Some(state) = c.user.as_mut() {
                    let handler = &mut self.handler;
                    let conn = &c.conn;
                    if guarded("on_drained", conn, || handler.on_drained(conn, state)).is_none() {
                        self.begin_close(slot, CloseReason::HandlerPanic, false);
                    }
                }
            }
            Stage::Flushing { deadline } if empty => self.send_fin(slot, deadline),
            _ => {}
        }
    }

    fn flush_corked(&mut self) {
        loop {
            let tokens = CORKED.with(|c| std::mem::take(&mut *c.borrow_mut()));
            if tokens.is_empty() {
                return;
            }
            for &token in &tokens {
                let slot = token & SLOT_MASK;
                if self.conns.get(slot).is_some_and(|c| c.token == token) {
                    self.flush(slot);
                }
            }
            // Give the (now empty) vector back so steady state does not allocate; on_drained
            // callbacks may have corked more, which the next round flushes.
            CORKED.with(|c| {
                let mut c = c.borrow_mut();
                if c.is_empty() {
                    let mut tokens = tokens;
                    tokens.clear();
                    *c = tokens;
                }
            });
        }
    }

    /// Takes a connection out of the user's hands: refuses further writes, runs `on_close`,
    /// then frees it at once or after flushing queued bytes.
    fn begin_close(&mut self, slot: usize, reason: CloseReason, graceful: bool) {
        let Some(c) = self.conns.get_mut(slot) else {
            return;
        };
        match c.stage {
            Stage::Connecting { .. } => {
                let err = io::Error::new(
                    io::ErrorKind::ConnectionAborted,
                    format!("dial abandoned before it connected ({reason:?})"),
                );
                self.connect_failed(slot, err);
                return;
            }
            Stage::Flushing { .. } | Stage::Lingering { .. } => {
                if !graceful {
                    self.free(slot);
                }
                return;
            }
            Stage::Open => {}
        }
        {
            let mut io = c.conn.shared.lock();
            io.phase = Phase::Closed;
            if !graceful {
                io.out.clear();
            }
        }
        let stats = &self.shared.stats;
        count(&stats.closed[reason.index()], 1);
        self.shared.common.open.fetch_sub(1, Ordering::Relaxed);
        debug!(conn = %c.conn.id(), ?reason, "closed");
        if let Some(state) = c.user.take() {
            let handler = &mut self.handler;
            let conn = &c.conn;
            guarded("on_close", conn, || handler.on_close(conn, state, reason));
        }
        c.inbound = Vec::new();
        if !graceful {
            self.free(slot);
            return;
        }
        let mut deadline = self.now + self.config().close_timeout.as_millis() as u64;
        if let Some(d) = self.shutdown_deadline {
            deadline = deadline.min(d);
        }
        let c = &mut self.conns[slot];
        c.stage = Stage::Flushing { deadline };
        self.wheel.insert(deadline, (c.token, TimerKind::Stage, 0));
        self.flush(slot);
    }

    /// Everything is flushed: send the FIN and wait for the peer's.
    fn send_fin(&mut self, slot: usize, deadline: u64) {
        let c = &mut self.conns[slot];
        if let Some(socket) = c.conn.shared.lock().socket.as_ref() {
            let _ = socket.shutdown(Shutdown::Write);
        }
        c.stage = Stage::Lingering { deadline };
        // The peer's FIN may already be queued; its edge may have fired while we flushed.
        self.discard_input(slot);
        // Shutting down, do not wait on peers that keep their side open: with the receive
        // buffer drained, closing sends our FIN after the queued data (no reset), and the
        // kernel finishes delivering it.
        if self.shutdown_deadline.is_some() && self.conns.get(slot).is_some() {
            self.free(slot);
        }
    }

    /// Closes the descriptor and forgets the connection.
    fn free(&mut self, slot: usize) {
        let c = self.conns.remove(slot);
        c.conn.shared.lock().release();
        count(&self.shared.stats.freed, 1);
        if self
            .shared
            .common
            .accept_paused
            .swap(false, Ordering::AcqRel)
        {
            for p in self.all.iter() {
                p.send(Command::ResumeAccept);
            }
        }
    }

    fn free_all(&mut self) {
        let slots: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
        for slot in slots {
            match self.stage(slot) {
                Some(Stage::Open | Stage::Connecting { .. }) => {
                    self.begin_close(slot, CloseReason::Shutdown, false)
                }
                Some(Stage::Flushing { .. }) => {
                    count(&self.shared.stats.close_flush_timeouts, 1);
                    self.free(slot);
                }
                Some(Stage::Lingering { .. }) => self.free(slot),
                None => {}
            }
        }
    }

    /// Registers a connection with this poller.
    fn adopt(&mut self, shared: Arc<ConnShared>, connect_deadline: Option<Instant>) {
        let clock = self.shared.common.clock;
        let connect_deadline = connect_deadline.map(|at| clock.deadline_at(at));
        let conn = Conn::from_shared(shared);
        if self.shutdown_deadline.is_some() {
            self.reject(conn, connect_deadline.is_some(), "engine is shutting down");
            return;
        }
        let entry = self.conns.vacant_entry();
        let slot = entry.key();
        if slot > SLOT_MASK {
            self.reject(
                conn,
                connect_deadline.is_some(),
                "too many connections on one poller",
            );
            return;
        }
        self.next_gen = (self.next_gen + 1) & GEN_MASK;
        let token = ((self.next_gen as usize) << SLOT_BITS) | slot;
        conn.shared.token.store(token, Ordering::Relaxed);
        let registered = {
            let mut io = conn.shared.lock();
            match io.socket.as_mut() {
                Some(socket) => self.poll.registry().register(
                    socket,
                    Token(token),
                    Interest::READABLE | Interest::WRITABLE,
                ),
                None => Err(io::Error::new(
                    io::ErrorKind::NotConnected,
                    "socket already freed",
                )),
            }
        };
        if let Err(e) = registered {
            warn!(conn = %conn.id(), error = %e, "cannot register connection");
            self.reject(conn, connect_deadline.is_some(), "registration failed");
            return;
        }
        let stage = match connect_deadline {
            Some(deadline) => Stage::Connecting { deadline },
            None => Stage::Open,
        };
        entry.insert(Connection {
            conn,
            token,
            user: None,
            inbound: Vec::new(),
            stage,
        });
        match stage {
            Stage::Connecting { deadline } => {
                self.wheel.insert(deadline, (token, TimerKind::Stage, 0))
            }
            _ => self.open(slot),
        }
    }

    /// A connection that never gets registered: undo its count and tell the dialer.
    fn reject(&mut self, conn: Conn, dialed: bool, why: &str) {
        conn.shared.lock().release();
        self.shared.common.open.fetch_sub(1, Ordering::Relaxed);
        if dialed {
            count(&self.shared.stats.connect_failed, 1);
            let err = io::Error::new(io::ErrorKind::ConnectionAborted, why.to_string());
            let handler = &mut self.handler;
            guarded("on_connect_error", &conn, || {
                handler.on_connect_error(&conn, err)
            });
        }
    }

    /// The connection is established: run `on_open`, then flush anything written meanwhile.
    fn open(&mut self, slot: usize) {
        let c = &mut self.conns[slot];
        c.stage = Stage::Open;
        {
            let mut io = c.conn.shared.lock();
            if io.read_timeout != 0 && !io.read_fixed {
                io.read_deadline = Clock::deadline(self.now, io.read_timeout);
            }
            if needs_entry(io.read_deadline, io.read_watch) {
                io.read_watch = io.read_deadline;
                self.wheel.insert(
                    io.read_deadline,
                    (c.token, TimerKind::Read, io.read_deadline),
                );
            }
        }
        let stats = &self.shared.stats;
        count(&stats.opened, 1);
        debug!(conn = %c.conn.id(), peer = %c.conn.peer_addr(), poller = self.shared.index, "opened");
        let handler = &mut self.handler;
        let conn = &c.conn;
        match guarded("on_open", conn, || handler.on_open(conn)) {
            Some(state) => {
                c.user = Some(state);
                self.flush(slot);
            }
            // No state to hand to on_close: the close is counted and the socket freed.
            None => self.begin_close(slot, CloseReason::HandlerPanic, false),
        }
    }

    fn finish_connect(&mut self, slot: usize) {
        let c = &self.conns[slot];
        let result = {
            let io = c.conn.shared.lock();
            if io.phase == Phase::Closed {
                return; // closed while connecting; the queued close request fails the dial
            }
            let Some(socket) = io.socket.as_ref() else {
                return;
            };
            match socket.take_error() {
                Ok(Some(e)) | Err(e) => Err(e),
                Ok(None) => match socket.peer_addr() {
                    Ok(_) => Ok(true),
                    Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(false),
                    Err(e) => Err(e),
                },
            }
        };
        match result {
            Ok(true) => {
                c.conn.shared.lock().phase = Phase::Open;
                self.open(slot);
            }
            Ok(false) => {} // spurious wake-up; still connecting
            Err(e) => self.connect_failed(slot, e),
        }
    }

    fn connect_failed(&mut self, slot: usize, err: io::Error) {
        let c = self.conns.remove(slot);
        c.conn.shared.lock().release();
        let stats = &self.shared.stats;
        count(&stats.connect_failed, 1);
        count(&stats.freed, 1);
        self.shared.common.open.fetch_sub(1, Ordering::Relaxed);
        debug!(conn = %c.conn.id(), error = %err, "dial failed");
        let handler = &mut self.handler;
        guarded("on_connect_error", &c.conn, || {
            handler.on_connect_error(&c.conn, err)
        });
    }

    /// A write or read deadline's wheel entry scheduled for `at` came due, or (`at` =
    /// `WATCH_PENDING`) a `Watch` command asked for one: act on the deadline the connection
    /// holds now. Passed → close; moved → re-insert; cleared → stop watching. A stale entry (not
    /// the canonical one the connection records) does nothing.
    fn check_deadline(&mut self, token: usize, kind: TimerKind, at: u64) {
        let slot = token & SLOT_MASK;
        let Some(c) = self.conns.get(slot).filter(|c| c.token == token) else {
            return;
        };
        let expired = {
            let mut io = c.conn.shared.lock();
            let io = &mut *io;
            let (deadline, watch, armed) = match kind {
                TimerKind::Write => (io.write_deadline, &mut io.write_watch, !io.out.is_empty()),
                TimerKind::Read => (io.read_deadline, &mut io.read_watch, true),
                TimerKind::Stage | TimerKind::User => return,
            };
            if *watch != at {
                return;
            }
            match deadline {
                0 => {
                    *watch = 0;
                    false
                }
                d if armed && self.now >= d => {
                    *watch = 0;
                    true
                }
                d if armed => {
                    *watch = d;
                    self.wheel.insert(d, (token, kind, d));
                    false
                }
                // Nothing queued: a timeout deadline is over (the flush that drained the queue
                // cleared it already); an absolute one stays for the next queued bytes.
                _ => {
                    *watch = 0;
                    false
                }
            }
        };
        if expired {
            match kind {
                // The peer stopped reading: what is queued cannot be delivered.
                TimerKind::Write => self.begin_close(slot, CloseReason::WriteTimeout, false),
                _ => self.read_deadline_passed(slot),
            }
        }
    }

    /// Idle: ask the handler; by default close gracefully (anything queued still goes out).
    fn read_deadline_passed(&mut self, slot: usize) {
        let c = &mut self.conns[slot];
        let Some(state) = c.user.as_mut() else {
            return;
        };
        let handler = &mut self.handler;
        let conn = &c.conn;
        match guarded("on_idle", conn, || handler.on_idle(conn, state)) {
            Some(IdleAction::Close) => self.begin_close(slot, CloseReason::ReadTimeout, true),
            Some(IdleAction::Wait(d)) => {
                let token = c.token;
                let mut io = c.conn.shared.lock();
                let deadline = Clock::deadline(self.now, timeout_ms(Some(d)));
                io.read_deadline = deadline;
                if needs_entry(deadline, io.read_watch) {
                    io.read_watch = deadline;
                    self.wheel
                        .insert(deadline, (token, TimerKind::Read, deadline));
                }
            }
            None => self.begin_close(slot, CloseReason::HandlerPanic, false),
        }
    }

    fn run_commands(&mut self) {
        let mut inbox = std::mem::take(&mut self.inbox);
        self.shared.take_commands(&mut inbox);
        for cmd in inbox.drain(..) {
            match cmd {
                Command::Adopt {
                    conn,
                    connect_deadline,
                } => self.adopt(conn, connect_deadline),
                Command::Close {
                    conn,
                    reason,
                    graceful,
                } => {
                    let slot = conn.token() & SLOT_MASK;
                    if self
                        .conns
                        .get(slot)
                        .is_some_and(|c| Arc::ptr_eq(&c.conn.shared, &conn))
                    {
                        self.begin_close(slot, reason, graceful);
                    }
                }
                Command::Watch { conn, kind } => {
                    let token = conn.token();
                    if self
                        .conns
                        .get(token & SLOT_MASK)
                        .is_some_and(|c| Arc::ptr_eq(&c.conn.shared, &conn))
                    {
                        self.check_deadline(token, kind, WATCH_PENDING);
                    }
                }
                Command::AddTimer(timer) => self.add_timer(*timer),
                Command::Run(f) => {
                    if std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).is_err() {
                        tracing::error!(poller = self.shared.index, "poller task panicked");
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
        self.inbox = inbox;
    }

    fn start_shutdown(&mut self, deadline: u64) {
        if self.shutdown_deadline.is_some() {
            return;
        }
        debug!(poller = self.shared.index, "shutting down");
        self.shutdown_deadline = Some(deadline);
        self.drop_timers();
        self.listeners.clear();
        self.accept_resume_at = None;
        let slots: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
        for slot in slots {
            match self.stage(slot) {
                Some(Stage::Open) => {
                    let c = &mut self.conns[slot];
                    let Some(state) = c.user.as_mut() else {
                        continue;
                    };
                    let handler = &mut self.handler;
                    let conn = &c.conn;
                    match guarded("on_shutdown", conn, || handler.on_shutdown(conn, state)) {
                        Some(ShutdownAction::Wait) => {}
                        Some(ShutdownAction::Close) => {
                            self.begin_close(slot, CloseReason::Shutdown, true)
                        }
                        None => self.begin_close(slot, CloseReason::HandlerPanic, false),
                    }
                }
                Some(Stage::Connecting { .. }) => {
                    self.begin_close(slot, CloseReason::Shutdown, true)
                }
                _ => {}
            }
        }
    }

    fn expire_timers(&mut self) {
        if let Some(at) = self.accept_resume_at
            && self.now >= at
        {
            self.resume_accept();
        }
        let mut due = std::mem::take(&mut self.due);
        self.wheel.expire(self.now, &mut due);
        for (token, kind, at) in due.drain(..) {
            match kind {
                TimerKind::Stage => {}
                TimerKind::User => {
                    self.timer_due(token);
                    continue;
                }
                TimerKind::Read | TimerKind::Write => {
                    self.check_deadline(token, kind, at);
                    continue;
                }
            }
            let slot = token & SLOT_MASK;
            let Some(c) = self.conns.get(slot).filter(|c| c.token == token) else {
                continue;
            };
            match c.stage {
                Stage::Connecting { deadline } if self.now >= deadline => {
                    let err = io::Error::new(io::ErrorKind::TimedOut, "connect timed out");
                    self.connect_failed(slot, err);
                }
                Stage::Flushing { deadline } if self.now >= deadline => {
                    let stats = &self.shared.stats;
                    count(&stats.close_flush_timeouts, 1);
                    debug!(conn = %c.conn.id(), "close flush timed out; dropping queued bytes");
                    self.free(slot);
                }
                Stage::Lingering { deadline } if self.now >= deadline => self.free(slot),
                Stage::Connecting { deadline }
                | Stage::Flushing { deadline }
                | Stage::Lingering { deadline } => {
                    self.wheel.insert(deadline, (token, TimerKind::Stage, 0))
                }
                Stage::Open => {}
            }
        }
        // Keep the scratch list's memory only up to a moderate burst.
        if due.capacity() > DUE_KEEP {
            due = Vec::new();
        }
        self.due = due;
        self.run_due_timers();
    }
}

/// True when a deadline needs a new wheel entry: it is set, no `Watch` is in flight, and no
/// entry is due at or before it.
pub(crate) fn needs_entry(deadline: u64, watch: u64) -> bool {
    deadline != 0 && watch != WATCH_PENDING && (watch == 0 || deadline < watch)
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

fn read_retrying(mut socket: &mio::net::TcpStream, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        match socket.read(buf) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            r => return r,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Per-connection memory is the product's headline figure (issue: at most 512 B per idle
    /// WebSocket connection). These bounds catch a field that silently grows it.
    #[test]
    fn per_connection_structs_stay_small() {
        let shared = std::mem::size_of::<ConnShared>();
        // slab stores Option-like entries: the connection plus a discriminant word.
        let entry = std::mem::size_of::<Connection<()>>() + 8;
        eprintln!("ConnShared {shared} B, slab entry {entry} B");
        assert!(shared <= 200, "ConnShared grew to {shared} B");
        assert!(entry <= 72, "slab entry grew to {entry} B");
    }
}
