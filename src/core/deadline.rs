//! The deadline machine: one home for every rule about a connection's write and read
//! deadlines. Sans-IO: times come in as milliseconds on the engine clock, and what the caller
//! must do with the poller's timer wheel comes out as return values.
//!
//! A [`Deadline`] is one direction's absolute deadline, stored in the connection and changed
//! by plain stores. The wheel holds at most one canonical entry per deadline; the deadline
//! remembers that entry's due time (`watch`). When an entry comes due the owner asks
//! [`Deadline::entry_due`], which compares the stored deadline with the clock: act, move the
//! entry, or let it go. Refreshing a deadline therefore touches no wheel at all.
//!
//! The write deadline is armed while bytes wait for the socket, refreshed by every write that
//! makes progress and cleared when the queue drains, so a peer that keeps reading is never
//! timed out and one that stopped is. The read deadline is armed when the connection opens and
//! refreshed by arriving bytes, or only by [`Deadline::touch`] under manual refresh. Either may
//! instead be fixed at an absolute instant (Go's `SetDeadline`): nothing moves a fixed deadline.

use crate::core::timer::Clock;

/// Times (`at`, `watch`) are ms on the engine clock in the low 40 bits of a word: 34 years
/// from the engine's start. A later absolute deadline is kept as the latest one there is,
/// which no clock reaches.
const TIME_BITS: u32 = 40;
const TIME_MASK: u64 = (1 << TIME_BITS) - 1;

/// `watch` while the poller has been asked (by a command from another thread) to put the
/// deadline on its wheel.
const WATCH_PENDING: u64 = TIME_MASK;

/// The latest deadline that can be stored.
const AT_MAX: u64 = TIME_MASK - 1;

/// Flags, in bits 40..48 of `at_word`.
const FIXED: u64 = 1 << TIME_BITS;
const MANUAL: u64 = 2 << TIME_BITS;
const WAITING: u64 = 4 << TIME_BITS;
const PROGRESSED: u64 = 8 << TIME_BITS;

/// The timeout's halves sit in the top 16 bits of each word.
const HALF_SHIFT: u32 = 48;
const LOW48: u64 = (1 << HALF_SHIFT) - 1;

/// One direction's deadline. Times are ms on the engine clock, 0 meaning none.
///
/// Every connection holds two, so the fields are packed into two words (16 bytes, not 24):
/// `at_word` holds `at` (bits 0..40), the flags (40..48) and the timeout's high half
/// (48..64); `watch_word` holds `watch` (0..40) and the timeout's low half (48..64). The
/// accessors below are the only code that knows this.
///
/// - `at`: when it passes (with bytes still queued, for a write deadline), the connection
///   closes.
/// - `watch`: due time of the canonical wheel entry watching `at`; 0 if none.
/// - `timeout`: the timeout in force (builder default or per-connection override), ms; 0 =
///   none.
/// - `FIXED`: `at` was set as an absolute instant.
/// - `MANUAL`: only [`touch`](Self::touch) refreshes it, not arriving bytes (read
///   deadlines).
/// - `WAITING`: bytes were left waiting for the socket by the last write attempt (write
///   deadlines).
/// - `PROGRESSED`: since [`take_progress`](Self::take_progress) last asked, a write moved
///   bytes that had been waiting for the socket (write deadlines): the peer made room by
///   reading, which a protocol's liveness check counts. Bytes that went into a socket with
///   room prove only that our kernel took them, and do not count.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Deadline {
    at_word: u64,
    watch_word: u64,
}

/// What an expired wheel entry found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Due {
    /// Not the canonical entry (the deadline moved earlier and got a new one): ignore it.
    Stale,
    /// The deadline passed: close the connection.
    Expired,
    /// The deadline moved later: put the entry back on the wheel at this time.
    Reinsert(u64),
    /// Nothing to watch any more (cleared, or nothing queued for a write deadline).
    Idle,
}

impl Deadline {
    /// A deadline with `timeout_ms` (0 for none) in force and nothing armed yet.
    pub(crate) fn new(timeout_ms: u32, manual: bool) -> Self {
        let mut d = Deadline::default();
        d.set_timeout_ms(timeout_ms);
        d.set_flag(MANUAL, manual);
        d
    }

    // The packing.

    /// The deadline (ms), 0 for none.
    #[inline(always)]
    fn at(&self) -> u64 {
        self.at_word & TIME_MASK
    }

    #[inline(always)]
    fn set_at(&mut self, at: u64) {
        self.at_word = (self.at_word & !TIME_MASK) | at.min(AT_MAX);
    }

    #[inline(always)]
    fn watch(&self) -> u64 {
        self.watch_word & TIME_MASK
    }

    #[inline(always)]
    fn set_watch(&mut self, watch: u64) {
        self.watch_word = (self.watch_word & !TIME_MASK) | watch.min(WATCH_PENDING);
    }

    #[inline(always)]
    fn timeout(&self) -> u32 {
        ((self.at_word >> HALF_SHIFT) << 16 | self.watch_word >> HALF_SHIFT) as u32
    }

    fn set_timeout_ms(&mut self, timeout_ms: u32) {
        let (high, low) = (u64::from(timeout_ms >> 16), u64::from(timeout_ms & 0xffff));
        self.at_word = (self.at_word & LOW48) | high << HALF_SHIFT;
        self.watch_word = (self.watch_word & LOW48) | low << HALF_SHIFT;
    }

    #[inline(always)]
    fn flag(&self, flag: u64) -> bool {
        self.at_word & flag != 0
    }

    #[inline(always)]
    fn set_flag(&mut self, flag: u64, on: bool) {
        if on {
            self.at_word |= flag;
        } else {
            self.at_word &= !flag;
        }
    }

    // The rules.

    pub(crate) fn set_manual(&mut self, manual: bool) {
        self.set_flag(MANUAL, manual);
    }

    /// The write rule, after any write attempt (by the poller's flush, or a direct write from
    /// any thread): cleared once nothing is `pending`, whoever drained it; refreshed when bytes
    /// were `written` (progress); armed when bytes start waiting. A fixed deadline only stays.
    #[inline]
    pub(crate) fn after_write(&mut self, now: u64, written: bool, pending: bool) {
        if written && self.flag(WAITING) {
            self.set_flag(PROGRESSED, true);
        }
        self.set_flag(WAITING, pending);
        if self.flag(FIXED) {
            return;
        }
        if !pending {
            self.set_at(0);
        } else if written || self.at() == 0 {
            let timeout = self.timeout();
            if timeout != 0 {
                self.set_at(Clock::deadline(now, timeout));
            }
        }
    }

    /// [`after_write`](Self::after_write) for a send of the io_uring backend, which reports
    /// only at its completion: bytes count as the peer's progress only if the send had to
    /// `wait` for room (it did not complete in the batch that submitted it).
    #[cfg(netpoll_uring)]
    #[inline]
    pub(crate) fn after_send(&mut self, now: u64, written: bool, waited: bool, pending: bool) {
        if !waited {
            self.set_flag(WAITING, false);
        }
        self.after_write(now, written, pending);
    }

    /// True if, since the last call (which clears it), a write moved bytes that had been
    /// waiting for a full socket. A bit of the deadline: it costs no memory.
    #[inline]
    pub(crate) fn take_progress(&mut self) -> bool {
        let progressed = self.flag(PROGRESSED);
        self.set_flag(PROGRESSED, false);
        progressed
    }

    /// The read rule for arriving bytes: they refresh the deadline unless it is fixed or under
    /// manual refresh.
    #[inline]
    pub(crate) fn on_read(&mut self, now: u64) {
        if self.at_word & (MANUAL | FIXED) == 0 {
            let timeout = self.timeout();
            if timeout != 0 {
                self.set_at(Clock::deadline(now, timeout));
            }
        }
    }

    /// Restarts the deadline at now + timeout (the connection opened, or a protocol layer saw a
    /// whole message); a fixed one stays.
    #[inline]
    pub(crate) fn touch(&mut self, now: u64) {
        let timeout = self.timeout();
        if timeout != 0 && !self.flag(FIXED) {
            self.set_at(Clock::deadline(now, timeout));
        }
    }

    /// Moves the deadline to `wait_ms` from now, whatever it was (a protocol layer asked for
    /// more time when it passed).
    pub(crate) fn extend(&mut self, now: u64, wait_ms: u32) {
        self.set_at(Clock::deadline(now, wait_ms));
    }

    /// Overrides the timeout (`0` for none) and drops any absolute deadline. With `restart`
    /// the deadline restarts at now + timeout (if there is one); without, it is cleared until
    /// the next arming.
    pub(crate) fn set_timeout(&mut self, now: u64, timeout_ms: u32, restart: bool) {
        self.set_flag(FIXED, false);
        self.set_timeout_ms(timeout_ms);
        self.set_at(0);
        if restart {
            self.touch(now);
        }
    }

    /// Fixes the deadline at `at` (ms): nothing moves it until the next `set_*`.
    pub(crate) fn set_absolute(&mut self, at: u64) {
        self.set_flag(FIXED, true);
        self.set_at(at.max(1));
    }

    /// Removes every deadline: no timeout, nothing fixed.
    pub(crate) fn clear(&mut self) {
        self.set_flag(FIXED, false);
        self.set_timeout_ms(0);
        self.set_at(0);
    }

    /// True when the deadline needs a new wheel entry: it is set, no request for one is in
    /// flight, and no entry is due at or before it.
    #[inline]
    pub(crate) fn needs_entry(&self) -> bool {
        let (at, watch) = (self.at(), self.watch());
        at != 0 && watch != WATCH_PENDING && (watch == 0 || at < watch)
    }

    /// On the poller thread: if an entry is needed, records it as the canonical one and returns
    /// its due time for the caller to insert.
    #[inline]
    pub(crate) fn claim_entry(&mut self) -> Option<u64> {
        self.needs_entry().then(|| {
            self.set_watch(self.at());
            self.at()
        })
    }

    /// True when the deadline applies (`armed`: for a write deadline, bytes are queued) and
    /// has passed at `now`. Asked again after the poller's last look at the socket.
    #[inline]
    pub(crate) fn passed(&self, now: u64, armed: bool) -> bool {
        let at = self.at();
        at != 0 && armed && now >= at
    }

    /// On another thread: if an entry is needed, records that the poller is being asked for one
    /// and returns true; the caller then sends it the request, which it answers with
    /// [`entry_due`](Self::entry_due)`(`[`Deadline::REQUESTED`]`, ..)`.
    #[inline]
    pub(crate) fn claim_remote(&mut self) -> bool {
        let needed = self.needs_entry();
        if needed {
            self.set_watch(WATCH_PENDING);
        }
        needed
    }

    /// The `entry` argument of [`entry_due`](Self::entry_due) for a request sent after
    /// [`claim_remote`](Self::claim_remote).
    pub(crate) const REQUESTED: u64 = WATCH_PENDING;

    /// Low bits of its scheduled time a wheel entry keeps (12 days of ms), all that
    /// [`entry_due`](Self::entry_due) compares. Two entries of one deadline that agree there
    /// but differ in time would be 12 days apart; should one be taken for the other, it only
    /// asks the question the canonical entry would (has `at` passed?) and gets the right answer.
    pub(crate) const ENTRY_TIME_BITS: u32 = 30;

    /// A wheel entry scheduled for `entry` came due at `now` (or a remote request arrived).
    /// `armed` says whether the deadline applies at all right now (a write deadline only while
    /// bytes are queued). A non-canonical entry is [`Due::Stale`]; otherwise the watch is
    /// updated to match the answer.
    #[inline]
    pub(crate) fn entry_due(&mut self, entry: u64, now: u64, armed: bool) -> Due {
        let low = (1 << Self::ENTRY_TIME_BITS) - 1;
        if self.watch() & low != entry & low {
            return Due::Stale;
        }
        if self.passed(now, armed) {
            self.set_watch(0);
            Due::Expired
        } else if self.at() != 0 && armed {
            self.set_watch(self.at());
            Due::Reinsert(self.at())
        } else {
            // Cleared, or (write) nothing queued: the flush that drained the queue cleared a
            // timeout deadline already; a fixed one stays for the next queued bytes.
            self.set_watch(0);
            Due::Idle
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A simulated poller: a clock and the wheel entries it holds for one deadline.
    struct Sim {
        now: u64,
        entries: Vec<u64>,
    }

    impl Sim {
        fn new() -> Self {
            Sim {
                now: 1_000,
                entries: Vec::new(),
            }
        }

        /// The poller side of any change: insert the entry the deadline asks for.
        fn watch(&mut self, d: &mut Deadline) {
            if let Some(at) = d.claim_entry() {
                self.entries.push(at);
            }
        }

        /// Advances to `t` and runs every entry due by then, as the poller's expiry does.
        /// Returns true if the deadline expired.
        fn advance(&mut self, t: u64, d: &mut Deadline, armed: bool) -> bool {
            self.now = t;
            let mut expired = false;
            loop {
                let Some(i) = self.entries.iter().position(|&e| e <= self.now) else {
                    return expired;
                };
                let entry = self.entries.remove(i);
                match d.entry_due(entry, self.now, armed) {
                    Due::Expired => expired = true,
                    Due::Reinsert(at) => self.entries.push(at),
                    Due::Stale | Due::Idle => {}
                }
            }
        }
    }

    #[test]
    fn a_reader_that_keeps_making_progress_is_never_timed_out() {
        let mut sim = Sim::new();
        let mut d = Deadline::new(100, false);
        // Bytes start waiting: armed at now + 100.
        d.after_write(sim.now, false, true);
        sim.watch(&mut d);
        assert_eq!(d.at(), 1_101);
        // Every 60 ms a write makes progress; the queue never drains. 10 s of this.
        for step in 1..=166 {
            let t = 1_000 + step * 60;
            assert!(!sim.advance(t, &mut d, true), "timed out at {t}");
            d.after_write(t, true, true);
            sim.watch(&mut d);
        }
        assert!(
            sim.entries.len() <= 1,
            "one canonical entry: {:?}",
            sim.entries
        );
    }

    #[test]
    fn a_stuck_reader_is_timed_out_within_the_timeout() {
        let mut sim = Sim::new();
        let mut d = Deadline::new(100, false);
        d.after_write(sim.now, false, true);
        sim.watch(&mut d);
        assert!(!sim.advance(1_100, &mut d, true));
        assert!(sim.advance(1_101, &mut d, true));
    }

    #[test]
    fn progress_found_by_the_last_look_after_expiry_rearms_the_deadline() {
        // The poller came late (a stall): the entry expired, but the write it then tries
        // makes progress, so the deadline moves on and gets a new entry.
        let mut sim = Sim::new();
        let mut d = Deadline::new(100, false);
        d.after_write(sim.now, false, true);
        sim.watch(&mut d);
        assert!(sim.advance(1_500, &mut d, true));
        assert!(d.passed(1_500, true));
        d.after_write(1_500, true, true);
        assert!(!d.passed(1_500, true));
        sim.watch(&mut d);
        assert_eq!(sim.entries, vec![1_601]);
        assert!(!sim.advance(1_600, &mut d, true));
        // No progress on the last look: still passed, and it is closed.
        assert!(sim.advance(1_601, &mut d, true));
        d.after_write(1_601, false, true);
        assert!(d.passed(1_601, true));
        // Nothing queued any more: a write deadline does not apply.
        assert!(!d.passed(1_601, false));
    }

    #[test]
    fn progress_counts_only_bytes_that_waited_for_the_socket_and_costs_no_memory() {
        let mut d = Deadline::new(100, false);
        assert!(!d.take_progress());
        // Written into a socket with room: our kernel took it, the peer proved nothing.
        d.after_write(1_000, true, false);
        assert!(!d.take_progress(), "no bytes had to wait");
        // Partly written, the rest waits: still nothing from the peer.
        d.after_write(1_010, true, true);
        assert!(!d.take_progress());
        // The socket had room again for waiting bytes: the peer read.
        d.after_write(1_020, false, true);
        d.after_write(1_030, true, false);
        assert!(d.take_progress());
        assert!(!d.take_progress(), "asking clears it");
        // A fixed deadline does not move, but progress still counts.
        d.after_write(1_040, false, true);
        d.set_absolute(5_000);
        d.after_write(1_050, true, false);
        assert!(d.take_progress());
        assert_eq!(std::mem::size_of::<Deadline>(), 16);
    }

    #[test]
    fn the_packed_fields_do_not_disturb_each_other() {
        for timeout in [0, 1, 0xffff, 0x1_0000, 30_000, u32::MAX] {
            for manual in [false, true] {
                let mut d = Deadline::new(timeout, manual);
                assert_eq!((d.timeout(), d.flag(MANUAL)), (timeout, manual));
                d.set_absolute(AT_MAX + 1_000); // later than can be stored: "never"
                assert_eq!(d.at(), AT_MAX);
                assert_eq!(d.claim_entry(), Some(AT_MAX));
                assert_eq!(d.watch(), AT_MAX);
                d.after_write(5, false, true);
                d.after_write(6, true, true);
                assert!(d.take_progress() && !d.take_progress());
                assert_eq!((d.timeout(), d.flag(MANUAL)), (timeout, manual));
                assert_eq!(d.at(), AT_MAX, "fixed: unmoved");
                d.set_timeout(7, timeout, true);
                assert!(!d.flag(FIXED));
                let want = if timeout == 0 {
                    0
                } else {
                    8 + u64::from(timeout)
                };
                assert_eq!((d.at(), d.timeout()), (want, timeout));
                d.clear();
                assert_eq!((d.at(), d.timeout(), d.flag(MANUAL)), (0, 0, manual));
            }
        }
    }

    #[test]
    fn draining_clears_the_deadline_and_its_entry_goes_idle() {
        let mut sim = Sim::new();
        let mut d = Deadline::new(100, false);
        d.after_write(sim.now, false, true);
        sim.watch(&mut d);
        d.after_write(1_050, true, false); // drained
        assert_eq!(d.at(), 0);
        assert!(!sim.advance(5_000, &mut d, false));
        assert!(sim.entries.is_empty());
        // Queued again later: armed afresh from that moment.
        d.after_write(5_000, false, true);
        sim.watch(&mut d);
        assert_eq!(d.at(), 5_101);
    }

    #[test]
    fn a_write_without_progress_does_not_refresh() {
        let mut d = Deadline::new(100, false);
        d.after_write(1_000, false, true);
        d.after_write(1_050, false, true);
        assert_eq!(d.at(), 1_101);
    }

    #[test]
    fn an_absolute_deadline_is_neither_moved_by_progress_nor_cleared_by_draining() {
        let mut sim = Sim::new();
        let mut d = Deadline::new(100, false);
        d.set_absolute(1_500);
        sim.watch(&mut d);
        d.after_write(1_200, true, true);
        d.after_write(1_300, true, false);
        assert_eq!(d.at(), 1_500);
        // Nothing queued when it passes: not expired, and it stays for the next bytes.
        assert!(!sim.advance(1_600, &mut d, false));
        assert_eq!(d.at(), 1_500);
        d.after_write(1_700, false, true);
        sim.watch(&mut d);
        assert!(sim.advance(1_700, &mut d, true));
    }

    #[test]
    fn moving_earlier_makes_a_new_entry_and_the_old_one_stale() {
        let mut sim = Sim::new();
        let mut d = Deadline::new(10_000, false);
        d.touch(sim.now);
        sim.watch(&mut d);
        d.set_timeout(1_000, 50, true);
        sim.watch(&mut d);
        assert_eq!(sim.entries, [11_001, 1_051]);
        assert!(sim.advance(1_051, &mut d, true));
        // The old entry finds a deadline that is no longer watched by it.
        assert_eq!(d.entry_due(11_001, 11_001, true), Due::Stale);
    }

    #[test]
    fn moving_later_reinserts_on_expiry_without_a_second_entry() {
        let mut sim = Sim::new();
        let mut d = Deadline::new(100, false);
        d.touch(sim.now);
        sim.watch(&mut d);
        d.on_read(1_090); // refreshed by a plain store: no new entry
        sim.watch(&mut d);
        assert_eq!(sim.entries, [1_101]);
        assert!(!sim.advance(1_101, &mut d, true));
        assert_eq!(sim.entries, [1_191]);
        assert!(sim.advance(1_191, &mut d, true));
    }

    #[test]
    fn manual_refresh_ignores_bytes_but_not_touch() {
        let mut d = Deadline::new(100, true);
        d.touch(1_000);
        d.on_read(1_050);
        assert_eq!(d.at(), 1_101);
        d.touch(1_050);
        assert_eq!(d.at(), 1_151);
    }

    #[test]
    fn a_remote_request_is_answered_once() {
        let mut d = Deadline::new(100, false);
        d.after_write(1_000, false, true);
        assert!(d.claim_remote());
        assert!(!d.claim_remote(), "one request in flight at a time");
        assert!(!d.needs_entry());
        assert_eq!(
            d.entry_due(Deadline::REQUESTED, 1_010, true),
            Due::Reinsert(1_101)
        );
        assert!(!d.needs_entry());
    }

    #[test]
    fn extend_and_clear() {
        let mut sim = Sim::new();
        let mut d = Deadline::new(100, true);
        d.touch(sim.now);
        sim.watch(&mut d);
        assert!(sim.advance(1_101, &mut d, true));
        d.extend(1_101, 30); // a protocol layer asks for 30 ms more
        sim.watch(&mut d);
        d.clear();
        assert!(!sim.advance(2_000, &mut d, true));
        assert!(sim.entries.is_empty());
        assert_eq!(d.timeout(), 0);
    }
}
