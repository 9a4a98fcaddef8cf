//! User timers (`after` / `every` on the engine and on connections), run by the poller that
//! owns them from the same wheel as the connection deadlines.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use tracing::error;

use super::{Command, GEN_MASK, Poller, PollerShared, SLOT_BITS, SLOT_MASK, Stage, TimerKind};
use crate::conn::CloseReason;
use crate::handler::Handler;
use crate::timer::{Clock, TimerHandle, TimerState, TimerTask, UserTimer, timeout_ms};

/// Hands a timer to `poller`, first due `delay` from now, then every `period_ms` (0: once).
pub(crate) fn schedule(
    poller: &Arc<PollerShared>,
    delay: Duration,
    period_ms: u32,
    task: TimerTask,
) -> TimerHandle {
    let common = &poller.common;
    let state = Arc::new(TimerState {
        cancelled: AtomicBool::new(false),
        finished: AtomicBool::new(false),
        token: AtomicUsize::new(usize::MAX),
        poller: poller.clone(),
    });
    let handle = TimerHandle {
        state: state.clone(),
    };
    if common.shutting_down.load(Ordering::Acquire) {
        state.finished.store(true, Ordering::Release);
        return handle;
    }
    let now = super::now_ms(poller);
    // Even a zero delay waits for an expiry pass (at least 1 ms); it never runs inline.
    let deadline = Clock::deadline(now, timeout_ms(Some(delay)));
    poller.send(Command::AddTimer(Box::new(UserTimer {
        deadline,
        period_ms,
        seq: common.next_timer_seq.fetch_add(1, Ordering::Relaxed),
        state,
        task,
    })));
    handle
}

impl<H: Handler> Poller<H> {
    pub(super) fn add_timer(&mut self, timer: UserTimer) {
        if self.shutdown_deadline.is_some() || timer.state.cancelled.load(Ordering::Acquire) {
            finish(&timer.state);
            return;
        }
        let entry = self.timers.vacant_entry();
        let slot = entry.key();
        self.next_gen = (self.next_gen + 1) & GEN_MASK;
        let token = ((self.next_gen as usize) << SLOT_BITS) | slot;
        timer.state.token.store(token, Ordering::Release);
        self.wheel
            .insert(timer.deadline, (token, TimerKind::User, 0));
        entry.insert(timer);
    }

    /// Drops a cancelled timer now rather than when its slot comes round, so a cancelled
    /// long timer does not keep its callback (and what it captured) alive.
    pub(super) fn cancel_timer(&mut self, state: &Arc<TimerState>) {
        let token = state.token.load(Ordering::Acquire);
        let slot = token & SLOT_MASK;
        if self
            .timers
            .get(slot)
            .is_some_and(|t| Arc::ptr_eq(&t.state, state))
        {
            let timer = self.timers.remove(slot);
            finish(&timer.state);
        }
    }

    /// A user timer's wheel slot came due: queue it to run if its deadline passed, re-insert
    /// it if it is more than a rotation ahead.
    pub(super) fn timer_due(&mut self, token: usize) {
        let Some(t) = self.timers.get(token & SLOT_MASK) else {
            return;
        };
        if t.state.token.load(Ordering::Relaxed) != token {
            return; // a newer timer in the slot of a cancelled one
        }
        if self.now >= t.deadline {
            self.due_timers.push((t.deadline, t.seq, token));
        } else {
            self.wheel.insert(t.deadline, (token, TimerKind::User, 0));
        }
    }

    /// Runs this iteration's due timers in deadline order (creation order among equal ones).
    pub(super) fn run_due_timers(&mut self) {
        if self.due_timers.is_empty() {
            return;
        }
        let mut due = std::mem::take(&mut self.due_timers);
        due.sort_unstable();
        for &(_, _, token) in &due {
            self.run_timer(token);
        }
        due.clear();
        self.due_timers = due;
    }

    fn run_timer(&mut self, token: usize) {
        let slot = token & SLOT_MASK;
        let Some(t) = self.timers.get_mut(slot) else {
            return;
        };
        if t.state.cancelled.load(Ordering::SeqCst) {
            let timer = self.timers.remove(slot);
            finish(&timer.state);
            return;
        }
        let once = t.period_ms == 0;
        let (ok, conn_slot) = match &mut t.task {
            TimerTask::Engine(f) => {
                let ok = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).is_ok();
                if !ok {
                    error!(
                        poller = self.shared.index,
                        "timer callback panicked; timer dropped"
                    );
                }
                (ok, None)
            }
            TimerTask::Conn(conn, f) => {
                // Runs only while the connection is open; it is cancelled by its close.
                let conn_token = conn.shared.token();
                let cslot = conn_token & SLOT_MASK;
                let open = self
                    .conns
                    .get(cslot)
                    .is_some_and(|c| c.token == conn_token && c.stage == Stage::Open);
                if !open {
                    let timer = self.timers.remove(slot);
                    finish(&timer.state);
                    return;
                }
                let ok = super::guarded("timer", conn, || f(conn)).is_some();
                (ok, Some(cslot))
            }
        };
        let t = &mut self.timers[slot];
        if !ok || once || t.state.cancelled.load(Ordering::SeqCst) {
            let timer = self.timers.remove(slot);
            finish(&timer.state);
            if !ok && let Some(cslot) = conn_slot {
                self.begin_close(cslot, CloseReason::HandlerPanic, false);
            }
            return;
        }
        // Keep the cadence; skip ticks missed while the poller was busy.
        let period = u64::from(t.period_ms);
        t.deadline += period;
        if t.deadline <= self.now {
            t.deadline = self.now + period;
        }
        self.wheel.insert(t.deadline, (token, TimerKind::User, 0));
    }

    /// Drops every user timer (shutdown): none runs after shutdown starts.
    pub(super) fn drop_timers(&mut self) {
        for timer in self.timers.drain() {
            finish(&timer.state);
        }
    }
}

fn finish(state: &TimerState) {
    state.finished.store(true, Ordering::Release);
}
