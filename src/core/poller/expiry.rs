//! What the timer wheel brings due each iteration: stage deadlines (connect, close flush,
//! linger), write and read deadlines (decided by [`crate::core::deadline`]), user timers.

use std::io;

use tracing::debug;

use super::{Entry, Poller, Stage, TimerKind};
use crate::core::conn::CloseReason;
use crate::core::deadline::Due;
use crate::core::handler::{Handler, IdleAction};
use crate::core::stats::count;
use crate::core::timer::timeout_ms;

/// Expired wheel entries the poller's scratch list keeps room for between ticks.
const DUE_KEEP: usize = 4096;

impl<H: Handler> Poller<H> {
    pub(super) fn expire_timers(&mut self) {
        if let Some(at) = self.accept_resume_at
            && self.now >= at
        {
            self.resume_accept();
        }
        let mut due = std::mem::take(&mut self.due);
        self.wheel.expire(self.now, &mut due);
        for entry in due.drain(..) {
            let (token, kind, at) = entry.parts();
            match kind {
                TimerKind::Stage => self.stage_due(token),
                TimerKind::User => self.timer_due(token),
                TimerKind::Read | TimerKind::Write => self.check_deadline(token, kind, at),
            }
        }
        // Keep the scratch list's memory only up to a moderate burst.
        if due.capacity() > DUE_KEEP {
            due = Vec::new();
        }
        self.due = due;
        self.run_due_timers();
    }

    /// A stage's entry came due: act if its deadline passed, else put it back.
    fn stage_due(&mut self, token: usize) {
        let Some(c) = self.conns.get(token) else {
            return;
        };
        match c.stage() {
            Stage::Connecting { deadline } if deadline.passed(self.now) => {
                let err = io::Error::new(io::ErrorKind::TimedOut, "connect timed out");
                self.connect_failed(token, err);
            }
            Stage::Flushing { deadline } if deadline.passed(self.now) => {
                count(&self.shared.stats.close_flush_timeouts, 1);
                debug!(conn = %c.conn.id(), "close flush timed out; dropping queued bytes");
                self.free(token);
            }
            Stage::Lingering { deadline } if deadline.passed(self.now) => self.free(token),
            Stage::Connecting { deadline }
            | Stage::Flushing { deadline }
            | Stage::Lingering { deadline } => self.wheel.insert(
                deadline.at(self.now),
                Entry::new(token, TimerKind::Stage, 0),
            ),
            Stage::Open => {}
        }
    }

    /// A write or read deadline's wheel entry scheduled for `at` came due, or a `Watch`
    /// command asked for one (`at` = `Deadline::REQUESTED`): act on the deadline the
    /// connection holds now.
    pub(super) fn check_deadline(&mut self, token: usize, kind: TimerKind, at: u64) {
        let Some(c) = self.conns.get(token) else {
            return;
        };
        let due = {
            let mut io = c.conn.shared.lock();
            let io = &mut *io;
            match kind {
                TimerKind::Write => {
                    let armed = io.transport.pending() != 0;
                    io.write_deadline.entry_due(at, self.now, armed)
                }
                TimerKind::Read => {
                    if io.read_paused {
                        // We are not reading: the peer cannot be judged idle meanwhile.
                        io.read_deadline.touch(self.now);
                    }
                    io.read_deadline.entry_due(at, self.now, true)
                }
                TimerKind::Stage | TimerKind::User => return,
            }
        };
        match due {
            Due::Stale | Due::Idle => {}
            Due::Reinsert(d) => self.wheel.insert(d, Entry::new(token, kind, d)),
            Due::Expired if !self.still_passed_after_last_look(token, kind) => {}
            // The peer stopped reading: what is queued cannot be delivered.
            Due::Expired if kind == TimerKind::Write => {
                self.begin_close(token, CloseReason::WriteTimeout, false)
            }
            Due::Expired => self.read_deadline_passed(token),
        }
    }

    /// Before blaming the peer, one look at its socket: flush what is queued (write) or read
    /// what arrived (read). The poller itself may be late: descheduled, or with more ready
    /// sockets than one poll returns (`events_capacity`), it runs expiry while edges that prove
    /// progress still wait in the kernel. Progress refreshes the deadline as usual; then it is
    /// put back on the wheel and this returns false. A stuck peer costs one `EAGAIN`.
    fn still_passed_after_last_look(&mut self, token: usize, kind: TimerKind) -> bool {
        match kind {
            TimerKind::Write => self.last_look_write(token),
            TimerKind::Read => self.on_readable(token, true),
            TimerKind::Stage | TimerKind::User => return false,
        }
        let Some(c) = self.conns.get(token) else {
            return false; // the look found an error, and freed it
        };
        let mut io = c.conn.shared.lock();
        let io = &mut *io;
        let pending = io.transport.pending() != 0;
        let deadline = match kind {
            TimerKind::Write => &mut io.write_deadline,
            _ => &mut io.read_deadline,
        };
        if deadline.passed(self.now, kind == TimerKind::Read || pending) {
            return true;
        }
        if let Some(at) = deadline.claim_entry() {
            self.wheel.insert(at, Entry::new(token, kind, at));
        }
        false
    }

    /// The write deadline's last look: flush what is queued. The io_uring backend first reaps
    /// what the ring finished (a send in flight may have completed while the poller was late),
    /// then, with nothing in flight, writes directly: a submitted send would answer only later.
    fn last_look_write(&mut self, token: usize) {
        #[cfg(netpoll_uring)]
        if self.uring.is_some() {
            // Twice: a send the first reap's epoll edges pushed is submitted (and, if the
            // socket has room, completed) by the second.
            let mut idle_ring = false;
            for _ in 0..2 {
                if let Err(e) = self.reap_now() {
                    tracing::error!(error = %e, "io_uring reap failed");
                }
                idle_ring = self
                    .conns
                    .get(token)
                    .is_some_and(|c| !c.conn.shared.lock().transport.sending());
                if idle_ring {
                    break;
                }
            }
            if idle_ring {
                self.flush_with(token, false);
            }
            return;
        }
        self.flush(token);
    }

    /// Idle: ask the handler; by default close gracefully (anything queued still goes out).
    fn read_deadline_passed(&mut self, token: usize) {
        match self.with_state(token, "on_idle", |h, conn, state| h.on_idle(conn, state)) {
            Some(Some(IdleAction::Close)) => {
                self.begin_close(token, CloseReason::ReadTimeout, true)
            }
            Some(Some(IdleAction::Wait(d))) => {
                let Some(c) = self.conns.get(token) else {
                    return;
                };
                let mut io = c.conn.shared.lock();
                io.read_deadline.extend(self.now, timeout_ms(Some(d)));
                if let Some(at) = io.read_deadline.claim_entry() {
                    self.wheel
                        .insert(at, Entry::new(token, TimerKind::Read, at));
                }
            }
            _ => {} // gone, or it panicked (and was aborted)
        }
    }
}
