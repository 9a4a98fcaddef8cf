//! A hashed timing wheel, one per poller.
//!
//! Entries are small copyable keys (a connection token and what the timer is for). The wheel
//! never holds the deadline itself as the truth: the owner stores the current absolute deadline
//! in the connection, and refreshing it is a plain store. When an entry's slot comes due the
//! owner compares the stored deadline with the clock and either acts, re-inserts the entry for
//! the moved deadline, or drops it. So refresh is O(1) with no wheel operation at all, and
//! insert/expire are O(1) per entry.

use std::time::{Duration, Instant};

/// Number of slots. With the default 50 ms tick one rotation covers 25.6 s; later deadlines sit
/// in the slot they hash to and are re-inserted when it comes round early.
const SLOTS: usize = 512;

/// A hashed wheel of `T` keys.
#[derive(Debug)]
pub(crate) struct TimerWheel<T> {
    slots: Box<[Vec<T>]>,
    tick: Duration,
    origin: Instant,
    /// The first tick not yet expired.
    next_tick: u64,
    len: usize,
}

impl<T> TimerWheel<T> {
    pub(crate) fn new(tick: Duration, now: Instant) -> Self {
        assert!(!tick.is_zero(), "wheel tick must be positive");
        TimerWheel {
            slots: (0..SLOTS).map(|_| Vec::new()).collect(),
            tick,
            origin: now,
            next_tick: 0,
            len: 0,
        }
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    fn tick_ceil(&self, at: Instant) -> u64 {
        let d = at.saturating_duration_since(self.origin).as_nanos();
        let t = self.tick.as_nanos();
        d.div_ceil(t) as u64
    }

    fn tick_floor(&self, at: Instant) -> u64 {
        let d = at.saturating_duration_since(self.origin).as_nanos();
        (d / self.tick.as_nanos()) as u64
    }

    /// Schedules `key` to come due at the first tick at or after `deadline`.
    pub(crate) fn insert(&mut self, deadline: Instant, key: T) {
        let t = self.tick_ceil(deadline).max(self.next_tick);
        self.slots[(t % SLOTS as u64) as usize].push(key);
        self.len += 1;
    }

    /// Moves every key whose slot is due at `now` into `due`. Keys are not checked against their
    /// real deadline here: the caller does that and re-inserts the ones that moved.
    pub(crate) fn expire(&mut self, now: Instant, due: &mut Vec<T>) {
        let now_tick = self.tick_floor(now);
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
        }
        self.next_tick = now_tick + 1;
    }

    /// Time until the next non-empty slot is due, or `None` when the wheel is empty (the poller
    /// may then sleep until an I/O event).
    pub(crate) fn next_timeout(&self, now: Instant) -> Option<Duration> {
        if self.len == 0 {
            return None;
        }
        for i in 0..SLOTS as u64 {
            let t = self.next_tick + i;
            if !self.slots[(t % SLOTS as u64) as usize].is_empty() {
                let at = self.origin + Duration::from_nanos(self.tick.as_nanos() as u64 * t);
                return Some(at.saturating_duration_since(now));
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TICK: Duration = Duration::from_millis(10);

    #[test]
    fn entry_never_fires_before_its_deadline() {
        let t0 = Instant::now();
        let mut w = TimerWheel::new(TICK, t0);
        let deadline = t0 + Duration::from_millis(35);
        w.insert(deadline, 7u32);
        let mut due = Vec::new();
        w.expire(t0 + Duration::from_millis(34), &mut due);
        assert!(due.is_empty());
        w.expire(t0 + Duration::from_millis(40), &mut due);
        assert_eq!(due, vec![7]);
        assert_eq!(w.len(), 0);
    }

    #[test]
    fn fires_within_one_tick_of_deadline() {
        let t0 = Instant::now();
        let mut w = TimerWheel::new(TICK, t0);
        w.insert(t0 + Duration::from_millis(31), 1u32);
        let next = w.next_timeout(t0).unwrap();
        assert!(next >= Duration::from_millis(31) && next <= Duration::from_millis(31) + TICK);
        let mut due = Vec::new();
        w.expire(t0 + next, &mut due);
        assert_eq!(due, vec![1]);
    }

    #[test]
    fn far_deadline_hashes_and_comes_round_early() {
        let t0 = Instant::now();
        let mut w = TimerWheel::new(TICK, t0);
        // Two rotations plus a bit: the slot comes due after one rotation, early.
        w.insert(t0 + TICK * (SLOTS as u32 * 2 + 3), 9u32);
        let mut due = Vec::new();
        w.expire(t0 + TICK * (SLOTS as u32 + 3), &mut due);
        assert_eq!(due, vec![9], "owner must see it and re-insert");
    }

    #[test]
    fn long_sleep_drains_each_slot_once() {
        let t0 = Instant::now();
        let mut w = TimerWheel::new(TICK, t0);
        for i in 0..1000u32 {
            w.insert(t0 + Duration::from_millis(i as u64), i);
        }
        let mut due = Vec::new();
        w.expire(t0 + Duration::from_secs(3600), &mut due);
        due.sort_unstable();
        assert_eq!(due, (0..1000).collect::<Vec<_>>());
        assert_eq!(w.len(), 0);
        assert_eq!(w.next_timeout(t0), None);
    }

    #[test]
    fn past_deadline_is_due_on_next_expire() {
        let t0 = Instant::now();
        let mut w = TimerWheel::new(TICK, t0);
        let mut due = Vec::new();
        w.expire(t0 + Duration::from_millis(100), &mut due);
        w.insert(t0, 5u32); // already in the past
        w.expire(t0 + Duration::from_millis(110), &mut due);
        assert_eq!(due, vec![5]);
    }
}
