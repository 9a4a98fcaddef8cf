//! User timers (`after` / `every` on the engine and on connections), run by the poller that
//! owns them from the same wheel as the connection deadlines.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use tracing::error;

use super::{Command, Entry, Poller, PollerShared, Stage, TimerKind, context};
use crate::core::conn::CloseReason;
use crate::core::handler::Handler;
use crate::core::timer::{Clock, TimerHandle, TimerState, TimerTask, UserTimer, timeout_ms};

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
    let now = context::now_ms(poller);
    // Even a zero delay waits for an expiry pass (at least 1 ms); it never runs inline.
    let deadline = Clock::deadline(now, timeout_ms(Some(delay)));
    poller.send(Command::AddTimer(Box::new(UserTimer {
        deadline,
        period_ms,
        seq: common.next_timer_seq.fetch_add(1, Ordering::Relaxed),
        state,
        task,
        generation: 0, // set by the slots
    })));
    handle
}

impl<H: Handler> Poller<H> {
    pub(super) fn add_timer(&mut self, timer: UserTimer) {
        if self.shutdown_deadline.is_some() || timer.state.cancelled.load(Ordering::Acquire) {
            finish(&timer.state);
            return;
        }
        let deadline = timer.deadline;
        let state = timer.state.clone();
        let Some(token) = self.timers.insert_with(|_| timer) else {
            finish(&state);
            return;
        };
        state.token.store(token, Ordering::Release);
        self.wheel
            .insert(deadline, Entry::new(token, TimerKind::User, 0));
    }

    /// Drops a cancelled timer now rather than when its slot comes round, so a cancelled
    /// long timer does not keep its callback (and what it captured) alive.
    pub(super) fn cancel_timer(&mut self, state: &Arc<TimerState>) {
        let token = state.token.load(Ordering::Acquire);
        if self
            .timers
            .get(token)
            .is_some_and(|t| Arc::ptr_eq(&t.state, state))
            && let Some(timer) = self.timers.remove(token)
        {
            finish(&timer.state);
        }
    }

    /// A user timer's wheel slot came due: queue it to run if its deadline passed, re-insert
    /// it if it is more than a rotation ahead.
    pub(super) fn timer_due(&mut self, token: usize) {
        let Some(t) = self.timers.get(token) else {
            return; // cancelled (a newer timer may use its slot)
        };
        if self.now >= t.deadline {
            self.due_timers.push((t.deadline, t.seq, token));
        } else {
            self.wheel
                .insert(t.deadline, Entry::new(token, TimerKind::User, 0));
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
        let Some(t) = self.timers.get_mut(token) else {
            return;
        };
        if t.state.cancelled.load(Ordering::SeqCst) {
            self.remove_timer(token);
            return;
        }
        let once = t.period_ms == 0;
        let (ok, conn_token) = match &mut t.task {
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
                let open = self
                    .conns
                    .get(conn_token)
                    .is_some_and(|c| c.stage() == Stage::Open);
                if !open {
                    self.remove_timer(token);
                    return;
                }
                let ok = super::guarded("timer", conn, || f(conn)).is_some();
                (ok, Some(conn_token))
            }
        };
        let t = self.timers.get_mut(token).expect("still registered");
        if !ok || once || t.state.cancelled.load(Ordering::SeqCst) {
            self.remove_timer(token);
            if !ok && let Some(conn_token) = conn_token {
                self.begin_close(conn_token, CloseReason::HandlerPanic, false);
            }
            return;
        }
        // Keep the cadence; skip ticks missed while the poller was busy.
        let period = u64::from(t.period_ms);
        t.deadline += period;
        if t.deadline <= self.now {
            t.deadline = self.now + period;
        }
        self.wheel
            .insert(t.deadline, Entry::new(token, TimerKind::User, 0));
    }

    fn remove_timer(&mut self, token: usize) {
        if let Some(timer) = self.timers.remove(token) {
            finish(&timer.state);
        }
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
