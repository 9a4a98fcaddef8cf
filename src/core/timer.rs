//! Time: a hashed timing wheel (one per poller) and the millisecond clock deadlines use.
//!
//! Entries are small copyable keys (a connection token and what the timer is for). The wheel
//! never holds the deadline itself as the truth: the owner stores the current absolute deadline
//! in the connection, and refreshing it is a plain store. When an entry's slot comes due the
//! owner compares the stored deadline with the clock and either acts, re-inserts the entry for
//! the moved deadline, or drops it. So refresh is O(1) with no wheel operation at all, and
//! insert/expire are O(1) per entry.
//!
//! Times are plain `u64`s in whatever unit the owner picks; the engine uses milliseconds since
//! its start (`Clock`), so a deadline costs 8 bytes in a connection instead of an `Instant`'s
//! 16, and a timeout 4.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::core::conn::Conn;
use crate::core::poller::{Command, PollerShared};

/// Number of slots. With the default 50 ms tick one rotation covers 25.6 s; later deadlines sit
/// in the slot they hash to and are re-inserted when it comes round early.
const SLOTS: usize = 512;
/// Entries a slot keeps room for once emptied; a bigger slot gives its memory back.
const SLOT_KEEP: usize = 16;

/// A hashed timing wheel of `T` keys, sans-IO: the caller supplies the time.
///
/// Every key comes due at the first tick boundary at or after its deadline, so it is seen at
/// most one tick late and never early, except that a deadline more than one rotation
/// (`512 × tick`) ahead comes round once per rotation and the caller re-inserts it.
///
/// ```
/// use netpoll::timer::TimerWheel;
///
/// let mut wheel = TimerWheel::new(10); // ticks of 10 time units (say, ms)
/// wheel.insert(25, "a");
/// wheel.insert(5, "b");
/// let mut due = Vec::new();
/// wheel.expire(19, &mut due);
/// assert_eq!(due, ["b"]);
/// assert_eq!(wheel.next_timeout(19), Some(11)); // "a" is due at tick 30
/// wheel.expire(30, &mut due);
/// assert_eq!(due, ["b", "a"]);
/// ```
#[derive(Debug)]
pub struct TimerWheel<T> {
    slots: Box<[Vec<T>]>,
    tick: u64,
    /// The first tick not yet expired.
    next_tick: u64,
    len: usize,
}

impl<T> TimerWheel<T> {
    /// An empty wheel with ticks of `tick` time units, starting at time 0.
    ///
    /// # Panics
    /// If `tick` is zero.
    pub fn new(tick: u64) -> Self {
        assert!(tick > 0, "wheel tick must be positive");
        TimerWheel {
            slots: (0..SLOTS).map(|_| Vec::new()).collect(),
            tick,
            next_tick: 0,
            len: 0,
        }
    }

    /// Number of keys in the wheel.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when no key is scheduled.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Schedules `key` to come due at the first tick at or after `deadline`; a deadline in the
    /// past comes due at the next [`expire`](Self::expire).
    pub fn insert(&mut self, deadline: u64, key: T) {
        let t = deadline.div_ceil(self.tick).max(self.next_tick);
        self.slots[(t % SLOTS as u64) as usize].push(key);
        self.len += 1;
    }

    /// Moves every key whose slot is due at `now` into `due`, in slot order. Keys are not
    /// checked against their real deadline here: the caller does that and re-inserts the ones
    /// that moved (or that are more than a rotation ahead).
    pub fn expire(&mut self, now: u64, due: &mut Vec<T>) {
        let now_tick = now / self.tick;
        if now_tick < self.next_tick {
            return;
        }
        if self.len == 0 {
            self.next_tick = now_tick + 1;
            return;
        }
        // After a long sleep every slot is due at most once.
        let span = (now_tick - self.next_tick + 1).min(SLOTS as u64);
        for i in 0..span {
            let slot = &mut self.slots[((self.next_tick + i) % SLOTS as u64) as usize];
            self.len -= slot.len();
            due.append(slot);
            // A burst (a wave of connections, say) must not leave every slot holding its
            // peak capacity after the load is gone.
            if slot.capacity() > SLOT_KEEP {
                *slot = Vec::new();
            }
        }
        self.next_tick = now_tick + 1;
    }

    /// Time from `now` until the next non-empty slot is due, or `None` when the wheel is empty
    /// (the poller may then sleep until an I/O event).
    pub fn next_timeout(&self, now: u64) -> Option<u64> {
        if self.len == 0 {
            return None;
        }
        (0..SLOTS as u64)
            .map(|i| self.next_tick + i)
            .find(|t| !self.slots[(t % SLOTS as u64) as usize].is_empty())
            .map(|t| (t * self.tick).saturating_sub(now))
    }
}

/// The engine's millisecond clock: deadlines are stored as milliseconds since the engine
/// started, with 0 meaning "no deadline".
#[derive(Debug, Clone, Copy)]
pub(crate) struct Clock {
    epoch: Instant,
}

impl Clock {
    pub(crate) fn new(epoch: Instant) -> Self {
        Clock { epoch }
    }

    /// `at` in whole milliseconds since the epoch, rounded down: a deadline `d` has passed
    /// when `ms(now) >= d`.
    pub(crate) fn ms(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.epoch).as_millis() as u64
    }

    /// The deadline `timeout_ms` after `now_ms`, never 0 (0 means none). `now_ms` was rounded
    /// down, so one more millisecond keeps the deadline from passing before `now + timeout`;
    /// it fires at most 1 ms plus one wheel tick late.
    pub(crate) fn deadline(now_ms: u64, timeout_ms: u32) -> u64 {
        (now_ms + u64::from(timeout_ms) + 1).max(1)
    }

    /// An absolute `Instant` as a deadline, rounded up so it never fires early.
    pub(crate) fn deadline_at(&self, at: Instant) -> u64 {
        let d = at.saturating_duration_since(self.epoch);
        (d.as_nanos().div_ceil(1_000_000) as u64).max(1)
    }

    #[cfg(test)]
    pub(crate) fn instant(&self, ms: u64) -> Instant {
        self.epoch + Duration::from_millis(ms)
    }
}

/// A timeout as stored per connection: whole milliseconds, rounded up, 0 for none, capped at
/// `u32::MAX` ms (about 49 days).
pub(crate) fn timeout_ms(t: Option<Duration>) -> u32 {
    match t {
        None => 0,
        Some(t) => t.as_nanos().div_ceil(1_000_000).clamp(1, u32::MAX as u128) as u32,
    }
}

/// A user timer made by [`Engine::after`](crate::Engine::after),
/// [`Engine::every`](crate::Engine::every), [`Conn::after`](crate::Conn::after) or
/// [`Conn::every`](crate::Conn::every). Dropping the handle does not cancel the timer.
///
/// ```no_run
/// # fn demo(conn: &netpoll::Conn) {
/// use std::time::Duration;
///
/// // A keep-alive byte every 15 s while the connection lives; it stops by itself on close.
/// let beat = conn.every(Duration::from_secs(15), |conn| {
///     let _ = conn.write_slice(b"\n");
/// });
/// // The handle is `Clone + Send`: any thread may stop it early.
/// beat.cancel();
/// assert!(!beat.is_active());
/// # }
/// ```
#[derive(Clone)]
pub struct TimerHandle {
    pub(crate) state: Arc<TimerState>,
}

impl fmt::Debug for TimerHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TimerHandle")
            .field("cancelled", &self.is_cancelled())
            .field("active", &self.is_active())
            .finish()
    }
}

impl TimerHandle {
    /// Cancels the timer: once `cancel` has returned its callback will not start again (a
    /// run already under way on the poller thread finishes). The poller drops the callback
    /// promptly. Cancelling twice, or after the timer finished, does nothing.
    pub fn cancel(&self) {
        if !self.state.cancelled.swap(true, Ordering::SeqCst)
            && !self.state.finished.load(Ordering::Acquire)
        {
            self.state
                .poller
                .send(Command::CancelTimer(self.state.clone()));
        }
    }

    /// True once [`cancel`](Self::cancel) was called.
    pub fn is_cancelled(&self) -> bool {
        self.state.cancelled.load(Ordering::Acquire)
    }

    /// True while the timer may still run: not cancelled, a one-shot timer not yet run, its
    /// connection (if any) still open and the engine not shut down.
    pub fn is_active(&self) -> bool {
        !self.is_cancelled() && !self.state.finished.load(Ordering::Acquire)
    }
}

/// What a [`TimerHandle`] shares with the poller that runs the timer.
pub(crate) struct TimerState {
    pub(crate) cancelled: AtomicBool,
    /// The poller dropped the timer (ran its last time, cancelled, connection closed, engine
    /// stopped).
    pub(crate) finished: AtomicBool,
    /// The poller's token for the timer; `usize::MAX` until the poller has taken it.
    pub(crate) token: AtomicUsize,
    pub(crate) poller: Arc<PollerShared>,
}

/// The callback of a user timer.
pub(crate) enum TimerTask {
    Engine(Box<dyn FnMut() + Send>),
    /// Runs only while the connection is open.
    Conn(Conn, Box<dyn FnMut(&Conn) + Send>),
}

/// A user timer as its poller keeps it.
pub(crate) struct UserTimer {
    /// Next run, on the engine clock (ms).
    pub(crate) deadline: u64,
    /// 0 for a one-shot timer.
    pub(crate) period_ms: u32,
    /// Creation order: timers due at the same millisecond run in this order.
    pub(crate) seq: u64,
    pub(crate) state: Arc<TimerState>,
    pub(crate) task: TimerTask,
    /// Its slot's generation in the poller's timer slots.
    pub(crate) generation: u32,
}

impl crate::core::poller::slots::Generational for UserTimer {
    fn generation(&self) -> u32 {
        self.generation
    }
    fn set_generation(&mut self, generation: u32) {
        self.generation = generation;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TICK: u64 = 10;

    #[test]
    fn entry_never_fires_before_its_deadline() {
        let mut w = TimerWheel::new(TICK);
        w.insert(35, 7u32);
        let mut due = Vec::new();
        w.expire(34, &mut due);
        assert!(due.is_empty());
        w.expire(40, &mut due);
        assert_eq!(due, vec![7]);
        assert_eq!(w.len(), 0);
    }

    #[test]
    fn fires_within_one_tick_of_deadline() {
        let mut w = TimerWheel::new(TICK);
        w.insert(31, 1u32);
        let next = w.next_timeout(0).unwrap();
        assert!((31..=31 + TICK).contains(&next), "{next}");
        let mut due = Vec::new();
        w.expire(next, &mut due);
        assert_eq!(due, vec![1]);
    }

    #[test]
    fn far_deadline_hashes_and_comes_round_early() {
        let mut w = TimerWheel::new(TICK);
        // Two rotations plus a bit: the slot comes due after one rotation, early.
        w.insert(TICK * (SLOTS as u64 * 2 + 3), 9u32);
        let mut due = Vec::new();
        w.expire(TICK * (SLOTS as u64 + 3), &mut due);
        assert_eq!(due, vec![9], "owner must see it and re-insert");
    }

    #[test]
    fn long_sleep_drains_each_slot_once() {
        let mut w = TimerWheel::new(TICK);
        for i in 0..1000u32 {
            w.insert(i as u64, i);
        }
        let mut due = Vec::new();
        w.expire(3_600_000, &mut due);
        due.sort_unstable();
        assert_eq!(due, (0..1000).collect::<Vec<_>>());
        assert!(w.is_empty());
        assert_eq!(w.next_timeout(0), None);
    }

    #[test]
    fn a_burst_does_not_leave_its_capacity_behind() {
        let mut w = TimerWheel::new(TICK);
        for i in 0..10_000u32 {
            w.insert(50, i);
        }
        w.insert(60, 1);
        let mut due = Vec::new();
        w.expire(50, &mut due);
        assert_eq!(due.len(), 10_000);
        let held: usize = w.slots.iter().map(Vec::capacity).sum();
        assert!(held <= SLOTS * SLOT_KEEP, "{held} entries of room kept");
        w.expire(60, &mut due);
        assert_eq!(due.len(), 10_001, "other slots untouched");
    }

    #[test]
    fn past_deadline_is_due_on_next_expire() {
        let mut w = TimerWheel::new(TICK);
        let mut due = Vec::new();
        w.expire(100, &mut due);
        w.insert(0, 5u32); // already in the past
        w.expire(110, &mut due);
        assert_eq!(due, vec![5]);
    }

    #[test]
    fn clock_deadlines_never_fire_early() {
        let epoch = Instant::now();
        let clock = Clock::new(epoch);
        let at = epoch + Duration::from_micros(2_500);
        assert_eq!(clock.deadline_at(at), 3);
        assert!(clock.instant(clock.deadline_at(at)) >= at);
        // now = 2.9 ms reads as 2; a 5 ms timeout must not pass before 7.9 ms.
        let d = Clock::deadline(clock.ms(epoch + Duration::from_micros(2_900)), 5);
        assert!(d >= 8, "{d}");
        assert_eq!(Clock::deadline(0, 0), 1, "0 is reserved for none");
    }

    #[test]
    fn timeouts_round_up_and_cap() {
        assert_eq!(timeout_ms(None), 0);
        assert_eq!(timeout_ms(Some(Duration::from_micros(1))), 1);
        assert_eq!(timeout_ms(Some(Duration::from_micros(1_001))), 2);
        assert_eq!(timeout_ms(Some(Duration::from_secs(u64::MAX))), u32::MAX);
    }
}
