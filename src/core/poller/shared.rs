//! What other threads share with a poller: the engine-wide [`Common`] state, and each poller's
//! [`PollerShared`] with its command queue (the only way another thread asks a poller to act).

use std::any::Any;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use mio::{Poll, Token, Waker};

use super::context;
use crate::core::config::EngineConfig;
use crate::core::conn::{CloseReason, Conn, ConnRef};
use crate::core::stats::PollerStats;
use crate::core::timer::{Clock, TimerState, UserTimer};

/// Token of the poller's waker.
pub(super) const WAKER: Token = Token(usize::MAX);
/// Listener `i` uses `LISTENER_BASE - i`.
pub(super) const LISTENER_BASE: usize = usize::MAX - 1;

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

impl Common {
    pub(crate) fn new(config: EngineConfig) -> Self {
        Common {
            config,
            clock: Clock::new(Instant::now()),
            next_id: AtomicU64::new(1),
            next_timer_seq: AtomicU64::new(0),
            open: AtomicUsize::new(0),
            accept_paused: AtomicBool::new(false),
            shutting_down: AtomicBool::new(false),
        }
    }

    /// Takes one of the `max_connections` places, atomically (accepts on several pollers and
    /// dials from any thread race for the last ones); false at the limit.
    pub(crate) fn reserve_connection(&self) -> bool {
        let max = self.config.max_connections;
        self.open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .is_ok()
    }

    /// Gives a place back (a closed connection, or a reservation that found nothing to accept
    /// or could not connect).
    pub(crate) fn release_connection(&self) {
        self.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// What a wheel entry is watching for its connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum TimerKind {
    /// The deadline of the connection's stage (connect, close flush, linger).
    Stage = 0,
    /// The connection's write deadline.
    Write = 1,
    /// The connection's read deadline.
    Read = 2,
    /// A user timer; the token names it in the poller's timer slots.
    User = 3,
}

/// A new connection for a poller to adopt.
pub(crate) struct Adopt {
    pub(crate) conn: ConnRef,
    /// Dialed: the connect is under way and must finish by then.
    pub(crate) connect_deadline: Option<Instant>,
}

/// A closure given a connection and its handler state, type-erased (it checks the type).
pub(crate) type StateTask = Box<dyn FnOnce(&Conn, &mut dyn Any) + Send>;

/// Most [`Command::WithState`] tasks a poller holds queued; more are refused with
/// `WriteError::Busy`, so a thread posting faster than the poller runs them cannot grow its
/// queue without bound.
pub(crate) const MAX_QUEUED_TASKS: usize = 65_536;

/// Requests from other threads, executed by the poller in order.
pub(crate) enum Command {
    /// A deadline of `kind` was armed off the poller thread: put it on the wheel.
    Watch {
        conn: ConnRef,
        kind: TimerKind,
    },
    /// Register a new connection (accepted elsewhere, or dialed).
    Adopt(Adopt),
    Close {
        conn: ConnRef,
        reason: CloseReason,
        graceful: bool,
    },
    AddTimer(Box<UserTimer>),
    /// Reading was resumed: read what waited in the kernel.
    /// Reading was paused: the io_uring backend cancels the connection's receive (epoll
    /// needs nothing: the read path checks the flag).
    #[cfg(netpoll_uring)]
    StopReading {
        conn: ConnRef,
    },
    ReadAgain {
        conn: ConnRef,
    },
    /// Run a closure on the poller thread (a protocol layer's per-poller work).
    Run(Box<dyn FnOnce() + Send>),
    /// Run a closure with a connection's handler state ([`Conn::with_state`]), counted in
    /// [`PollerShared::tasks`].
    WithState {
        conn: ConnRef,
        task: StateTask,
    },
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
    /// [`Command::WithState`] tasks queued and not yet run (at most [`MAX_QUEUED_TASKS`]).
    pub(crate) tasks: AtomicUsize,
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
            tasks: AtomicUsize::new(0),
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
        if !context::is_current(self) && !self.wake_pending.swap(true, Ordering::SeqCst) {
            // Fails only if the eventfd is gone, i.e. the poller has exited: then nobody is
            // left to run the command and every connection is already closed.
            let _ = self.waker.wake();
        }
    }

    /// Queues a state task unless [`MAX_QUEUED_TASKS`] are queued already.
    pub(crate) fn send_task(&self, conn: ConnRef, task: StateTask) -> bool {
        let reserved = self
            .tasks
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < MAX_QUEUED_TASKS).then_some(n + 1)
            });
        if reserved.is_err() {
            return false;
        }
        self.send(Command::WithState { conn, task });
        true
    }

    pub(super) fn take_commands(&self, into: &mut Vec<Command>) {
        // Clear wake_pending first and unconditionally: a sender that still sees it set knows
        // this check of `queued` comes after its push; one that sees it clear wakes us again.
        self.wake_pending.store(false, Ordering::SeqCst);
        if !self.queued.swap(false, Ordering::SeqCst) {
            return;
        }
        let mut q = self.commands.lock().unwrap_or_else(|p| p.into_inner());
        std::mem::swap(&mut *q, into);
    }

    pub(super) fn has_commands(&self) -> bool {
        self.queued.load(Ordering::Acquire)
    }
}
