//! Counters. Each poller keeps its own (relaxed atomics on its own cache lines); the engine adds
//! them up when [`Engine::stats`](crate::Engine::stats) is called.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::core::conn::CloseReason;

/// One poller's counters. Mostly written by the poller thread; `bytes_out`, `write_calls` and
/// `overflows` also by threads that write directly.
#[derive(Debug, Default)]
#[repr(align(128))]
pub(crate) struct PollerStats {
    pub(crate) accepted: AtomicU64,
    pub(crate) dialed: AtomicU64,
    pub(crate) connect_failed: AtomicU64,
    pub(crate) opened: AtomicU64,
    pub(crate) closed: [AtomicU64; CloseReason::COUNT],
    pub(crate) bytes_in: AtomicU64,
    pub(crate) bytes_out: AtomicU64,
    pub(crate) read_calls: AtomicU64,
    pub(crate) write_calls: AtomicU64,
    pub(crate) accept_calls: AtomicU64,
    pub(crate) accept_pauses: AtomicU64,
    pub(crate) overflows: AtomicU64,
    pub(crate) close_flush_timeouts: AtomicU64,
    pub(crate) freed: AtomicU64,
}

/// Adds `n` to one counter (relaxed: counters order nothing).
pub(crate) fn count(field: &AtomicU64, n: u64) {
    field.fetch_add(n, Ordering::Relaxed);
}

impl PollerStats {
    pub(crate) fn snapshot_into(&self, s: &mut Stats) {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        s.accepted += get(&self.accepted);
        s.dialed += get(&self.dialed);
        s.connect_failed += get(&self.connect_failed);
        s.opened += get(&self.opened);
        for (i, c) in self.closed.iter().enumerate() {
            s.closed_by_reason[i] += get(c);
        }
        s.bytes_in += get(&self.bytes_in);
        s.bytes_out += get(&self.bytes_out);
        s.read_calls += get(&self.read_calls);
        s.write_calls += get(&self.write_calls);
        s.accept_calls += get(&self.accept_calls);
        s.accept_pauses += get(&self.accept_pauses);
        s.overflows += get(&self.overflows);
        s.close_flush_timeouts += get(&self.close_flush_timeouts);
        s.freed += get(&self.freed);
    }
}

/// A snapshot of the engine's counters, summed over all pollers.
///
/// Counters are read one by one without a global pause, so a snapshot taken under load may
/// be off by the events of a few microseconds between fields.
///
/// ```
/// use netpoll::{CloseReason, Stats};
///
/// // A log line from `engine.stats()` (or from the `Stats` that `shutdown` returns).
/// fn report(s: &Stats) -> String {
///     format!(
///         "open={} in={}B out={}B write_timeouts={} overflows={}",
///         s.open(),
///         s.bytes_in,
///         s.bytes_out,
///         s.closed(CloseReason::WriteTimeout),
///         s.overflows,
///     )
/// }
///
/// let mut s = Stats::default();
/// s.opened = 3;
/// assert_eq!(report(&s), "open=3 in=0B out=0B write_timeouts=0 overflows=0");
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// Connections accepted from listeners.
    pub accepted: u64,
    /// Dials started.
    pub dialed: u64,
    /// Dials that failed to connect.
    pub connect_failed: u64,
    /// Connections opened (`on_open` ran).
    pub opened: u64,
    closed_by_reason: [u64; CloseReason::COUNT],
    /// Bytes read from sockets.
    pub bytes_in: u64,
    /// Bytes written to sockets.
    pub bytes_out: u64,
    /// read(2) calls.
    pub read_calls: u64,
    /// write(2)/writev(2) calls.
    pub write_calls: u64,
    /// accept(2) calls.
    pub accept_calls: u64,
    /// Times accepting paused (descriptor exhaustion or the connection limit).
    pub accept_pauses: u64,
    /// Writes refused by the outbound limit.
    pub overflows: u64,
    /// Graceful closes whose flush did not finish within `close_timeout`.
    pub close_flush_timeouts: u64,
    /// Sockets released (descriptor closed).
    pub freed: u64,
}

impl Stats {
    /// Connections closed for `reason` (any `Io` kind counts under every `Io(_)`).
    pub fn closed(&self, reason: CloseReason) -> u64 {
        self.closed_by_reason[reason.index()]
    }

    /// Connections closed for any reason.
    pub fn closed_total(&self) -> u64 {
        self.closed_by_reason.iter().sum()
    }

    /// Connections currently open (opened and not yet closed).
    pub fn open(&self) -> u64 {
        self.opened.saturating_sub(self.closed_total())
    }
}
