//! A connection's deadlines and timers, as set through its [`Conn`] handle from any thread.
//!
//! The deadlines live in [`ConnIo`] and follow the rules of [`crate::core::deadline`]; setting
//! or refreshing one is a store under the connection's lock. The poller is told only when it
//! does not already watch the deadline (one `Watch` command per arming, not per refresh).

use std::time::{Duration, Instant};

use super::{Conn, ConnIo, Phase};
use crate::core::config::ReadRefresh;
use crate::core::poller::{self, Command, TimerKind, context};
use crate::core::timer::{TimerHandle, TimerTask, timeout_ms};

impl Conn {
    /// The engine clock now: the poller's loop time on its own thread (no clock read per
    /// write), a fresh reading elsewhere.
    pub(crate) fn now_ms(&self) -> u64 {
        context::now_ms(&self.shared.poller)
    }

    /// Makes sure the poller watches the write deadline: a peer that never reads raises no
    /// writable edge, so the poller would not otherwise look. Asks it with one `Watch` command
    /// per arming, not per refresh.
    pub(super) fn watch_write(&self, io: &mut ConnIo) {
        if io.write_deadline.claim_remote() {
            self.send_watch(TimerKind::Write);
        }
    }

    fn watch_read(&self, io: &mut ConnIo) {
        if io.read_deadline.claim_remote() {
            self.send_watch(TimerKind::Read);
        }
    }

    fn send_watch(&self, kind: TimerKind) {
        self.shared.poller.send(Command::Watch {
            conn: self.shared.clone(),
            kind,
        });
    }

    /// True if any write reached the socket since the last call (which clears it): the peer
    /// is taking our bytes. A protocol's liveness check counts this (a heartbeat ping can wait
    /// behind data a slow reader is still reading).
    pub(crate) fn take_write_progress(&self) -> bool {
        self.shared.lock().write_deadline.take_progress()
    }

    /// Sets (or with `None` clears) this connection's write timeout, overriding the builder's
    /// `write_timeout` and any absolute deadline from
    /// [`set_write_deadline`](Self::set_write_deadline). Takes effect at once: with bytes
    /// queued the deadline becomes now + `timeout` and then moves with every write that makes
    /// progress; cleared, a stuck connection is no longer closed for it.
    pub fn set_write_timeout(&self, timeout: Option<Duration>) {
        let mut io = self.shared.lock();
        let now = self.now_ms();
        let pending = io.transport.pending() != 0;
        io.write_deadline
            .set_timeout(now, timeout_ms(timeout), false);
        io.write_deadline.after_write(now, false, pending);
        self.watch_write(&mut io);
    }

    /// Sets an absolute write deadline, like Go's `SetWriteDeadline`: if bytes are still
    /// queued at `at` (or get queued after it), the connection closes with
    /// [`CloseReason::WriteTimeout`](crate::CloseReason::WriteTimeout). Progress does not move
    /// it and draining does not clear it; it replaces the write timeout until
    /// [`set_write_timeout`](Self::set_write_timeout) is called. `None` removes every write
    /// deadline (absolute and timeout).
    ///
    /// ```no_run
    /// # fn demo(conn: &netpoll::Conn) {
    /// use std::time::{Duration, Instant};
    /// // This reply must be out within 2 s, however the peer reads.
    /// conn.set_write_deadline(Some(Instant::now() + Duration::from_secs(2)));
    /// let _ = conn.write_slice(b"reply");
    /// # }
    /// ```
    pub fn set_write_deadline(&self, at: Option<Instant>) {
        let mut io = self.shared.lock();
        match at {
            Some(at) => {
                let at = self.shared.poller.common.clock.deadline_at(at);
                io.write_deadline.set_absolute(at);
                if io.transport.pending() != 0 {
                    self.watch_write(&mut io);
                }
            }
            None => io.write_deadline.clear(),
        }
    }

    /// Sets (or with `None` clears) this connection's read (idle) timeout, overriding the
    /// builder's `read_timeout` and any absolute read deadline. The deadline restarts at now +
    /// `timeout` and moves on whenever bytes arrive (or, under [`ReadRefresh::Manual`], on
    /// [`touch_read`](Self::touch_read)).
    pub fn set_read_timeout(&self, timeout: Option<Duration>) {
        let mut io = self.shared.lock();
        if io.phase == Phase::Closed {
            return;
        }
        io.read_deadline
            .set_timeout(self.now_ms(), timeout_ms(timeout), true);
        self.watch_read(&mut io);
    }

    /// Sets an absolute read deadline: the connection closes with
    /// [`CloseReason::ReadTimeout`](crate::CloseReason::ReadTimeout) at `at`, whatever arrives
    /// meanwhile, unless the deadline is changed first. `None` removes every read deadline
    /// (absolute and timeout).
    pub fn set_read_deadline(&self, at: Option<Instant>) {
        let mut io = self.shared.lock();
        if io.phase == Phase::Closed {
            return;
        }
        match at {
            Some(at) => {
                let at = self.shared.poller.common.clock.deadline_at(at);
                io.read_deadline.set_absolute(at);
                self.watch_read(&mut io);
            }
            None => io.read_deadline.clear(),
        }
    }

    /// Chooses what refreshes this connection's read deadline (overriding the builder's
    /// `read_refresh`): every arriving byte, or only [`touch_read`](Self::touch_read).
    pub fn set_read_refresh(&self, mode: ReadRefresh) {
        self.shared
            .lock()
            .read_deadline
            .set_manual(mode == ReadRefresh::Manual);
    }

    /// Restarts the read deadline at now + the read timeout. A protocol layer calls this when a
    /// complete message has arrived, so that under [`ReadRefresh::Manual`] a peer trickling
    /// bytes (slow loris) cannot keep the connection alive. Does nothing without a read
    /// timeout or with an absolute read deadline.
    pub fn touch_read(&self) {
        let mut io = self.shared.lock();
        if io.phase == Phase::Closed {
            return;
        }
        io.read_deadline.touch(self.now_ms());
        self.watch_read(&mut io);
    }

    /// Runs `f` once on this connection's poller after `delay`, unless the connection has
    /// closed by then or the returned handle was cancelled. Writes from `f` are corked like
    /// writes from a handler callback.
    ///
    /// ```no_run
    /// # fn demo(conn: &netpoll::Conn) {
    /// use std::time::Duration;
    /// // Say goodbye to a client that did not authenticate in time.
    /// let timer = conn.after(Duration::from_secs(5), |conn| {
    ///     let _ = conn.write_slice(b"auth timeout\n");
    ///     conn.close();
    /// });
    /// // ... once it authenticates:
    /// timer.cancel();
    /// # }
    /// ```
    pub fn after(&self, delay: Duration, f: impl FnOnce(&Conn) + Send + 'static) -> TimerHandle {
        let mut f = Some(f);
        let task = TimerTask::Conn(
            self.clone(),
            Box::new(move |c: &Conn| {
                if let Some(f) = f.take() {
                    f(c)
                }
            }),
        );
        poller::schedule(&self.shared.poller, delay, 0, task)
    }

    /// Runs `f` on this connection's poller every `period` (at least 1 ms) until the handle is
    /// cancelled or the connection closes. Ticks missed while the poller was busy are skipped,
    /// not bunched.
    pub fn every(&self, period: Duration, f: impl FnMut(&Conn) + Send + 'static) -> TimerHandle {
        let task = TimerTask::Conn(self.clone(), Box::new(f));
        poller::schedule(&self.shared.poller, period, timeout_ms(Some(period)), task)
    }
}
