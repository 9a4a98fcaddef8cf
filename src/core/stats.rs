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
    /// Gauge: bytes queued for sockets, as the outbound limit counts them (an `i64` stored
    /// wrapping: a remote thread's queueing and the poller's flush publish at different
    /// moments, so one poller's value can dip below zero for an instant).
    pub(crate) queued_bytes: AtomicU64,
}

/// Adds `n` to one counter (relaxed: counters order nothing).
pub(crate) fn count(field: &AtomicU64, n: u64) {
    field.fetch_add(n, Ordering::Relaxed);
}

impl PollerStats {
    pub(crate) fn add_queued(&self, delta: i64) {
        if delta != 0 {
            self.queued_bytes.fetch_add(delta as u64, Ordering::Relaxed);
        }
    }

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
        let queued = s.queued_bytes as i64 + get(&self.queued_bytes) as i64;
        s.queued_bytes = queued.max(0) as u64;
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
    /// Gauge: bytes queued for sockets right now, over all connections, as the outbound limit
    /// counts them (the bytes plus 64 B of bookkeeping per queued chunk). Updated by pollers
    /// once per loop iteration, so it may lag by one.
    pub queued_bytes: u64,
}

impl Stats {
    /// Connections closed, per reason: `(label, count)` for every reason, in a fixed order
    /// (see [`CloseReason::label`]; every `Io` kind is counted under `"io"`).
    ///
    /// ```
    /// # let stats = netpoll::Stats::default();
    /// for (reason, n) in stats.closes() {
    ///     println!("closed for {reason}: {n}");
    /// }
    /// ```
    pub fn closes(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        CloseReason::ALL
            .iter()
            .map(|r| (r.label(), self.closed_by_reason[r.index()]))
    }

    /// Appends the counters in the Prometheus text exposition format (version 0.0.4), each
    /// metric named `{prefix}_...` with its `# HELP` and `# TYPE` lines: serve it on a
    /// `/metrics` page.
    ///
    /// ```
    /// let mut stats = netpoll::Stats::default();
    /// stats.opened = 2;
    /// let mut page = String::new();
    /// stats.write_prometheus(&mut page, "netpoll");
    /// assert!(page.contains("\nnetpoll_open_connections 2\n"));
    /// assert!(page.contains("netpoll_closed_total{reason=\"write_timeout\"} 0\n"));
    /// ```
    pub fn write_prometheus(&self, out: &mut String, prefix: &str) {
        let mut m = Exposition { out, prefix };
        m.gauge("open_connections", "Connections open now.", self.open());
        m.gauge(
            "queued_bytes",
            "Bytes queued for sockets now, with 64 B of bookkeeping per queued chunk.",
            self.queued_bytes,
        );
        m.counter("accepted_total", "Connections accepted.", self.accepted);
        m.counter("dialed_total", "Dials started.", self.dialed);
        m.counter(
            "connect_failed_total",
            "Dials that failed to connect.",
            self.connect_failed,
        );
        m.counter("opened_total", "Connections opened.", self.opened);
        m.labeled(
            "closed_total",
            "counter",
            "Connections closed, by reason.",
            "reason",
            self.closes(),
        );
        m.counter(
            "read_bytes_total",
            "Bytes read from sockets.",
            self.bytes_in,
        );
        m.counter(
            "written_bytes_total",
            "Bytes written to sockets.",
            self.bytes_out,
        );
        m.counter("read_calls_total", "read(2) calls.", self.read_calls);
        m.counter(
            "write_calls_total",
            "write(2) and writev(2) calls.",
            self.write_calls,
        );
        m.counter("accept_calls_total", "accept(2) calls.", self.accept_calls);
        m.counter(
            "accept_pauses_total",
            "Times accepting paused (descriptors or the connection limit).",
            self.accept_pauses,
        );
        m.counter(
            "overflows_total",
            "Writes refused by the outbound limit.",
            self.overflows,
        );
        m.counter(
            "close_flush_timeouts_total",
            "Graceful closes whose flush did not finish in time.",
            self.close_flush_timeouts,
        );
        m.counter("freed_total", "Sockets released.", self.freed);
    }

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

/// One line of counters, for logs: `open=3 opened=10 ... closed{peer_closed=7 ...}`.
impl std::fmt::Display for Stats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "open={} opened={} accepted={} dialed={} connect_failed={} bytes_in={} \
             bytes_out={} queued_bytes={} overflows={} accept_pauses={} closed{{",
            self.open(),
            self.opened,
            self.accepted,
            self.dialed,
            self.connect_failed,
            self.bytes_in,
            self.bytes_out,
            self.queued_bytes,
            self.overflows,
            self.accept_pauses,
        )?;
        for (i, (reason, n)) in self.closes().enumerate() {
            let sep = if i == 0 { "" } else { " " };
            write!(f, "{sep}{reason}={n}")?;
        }
        f.write_str("}")
    }
}

/// Writes metrics in the Prometheus text format: the one home of that format for every
/// counter netpoll exports (the engine's, the WebSocket layer's, groups').
pub(crate) struct Exposition<'a> {
    pub(crate) out: &'a mut String,
    pub(crate) prefix: &'a str,
}

impl Exposition<'_> {
    fn head(&mut self, name: &str, kind: &str, help: &str) {
        use std::fmt::Write;
        let p = self.prefix;
        let _ = writeln!(self.out, "# HELP {p}_{name} {help}");
        let _ = writeln!(self.out, "# TYPE {p}_{name} {kind}");
    }

    pub(crate) fn counter(&mut self, name: &str, help: &str, value: u64) {
        self.single(name, "counter", help, value);
    }

    pub(crate) fn gauge(&mut self, name: &str, help: &str, value: u64) {
        self.single(name, "gauge", help, value);
    }

    fn single(&mut self, name: &str, kind: &str, help: &str, value: u64) {
        use std::fmt::Write;
        self.head(name, kind, help);
        let _ = writeln!(self.out, "{}_{name} {value}", self.prefix);
    }

    /// One metric with one label: a line per `(label value, value)`. Label values here are
    /// netpoll's own names or the application's group names, escaped as the format requires.
    pub(crate) fn labeled<'v>(
        &mut self,
        name: &str,
        kind: &str,
        help: &str,
        label: &str,
        values: impl IntoIterator<Item = (&'v str, u64)>,
    ) {
        use std::fmt::Write;
        self.head(name, kind, help);
        for (v, n) in values {
            let escaped = v
                .replace('\\', "\\\\")
                .replace('"', "\\\"")
                .replace('\n', "\\n");
            let _ = writeln!(
                self.out,
                "{}_{name}{{{label}=\"{escaped}\"}} {n}",
                self.prefix
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Stats {
        let mut s = Stats {
            opened: 10,
            accepted: 9,
            dialed: 1,
            bytes_in: 100,
            queued_bytes: 64,
            ..Stats::default()
        };
        s.closed_by_reason[CloseReason::WriteTimeout.index()] = 2;
        s.closed_by_reason[CloseReason::Io(std::io::ErrorKind::BrokenPipe).index()] = 1;
        s
    }

    #[test]
    fn display_is_one_line_with_every_close_reason() {
        let line = sample().to_string();
        assert!(!line.contains('\n'));
        assert!(
            line.starts_with("open=7 opened=10 accepted=9 dialed=1 "),
            "{line}"
        );
        assert!(line.contains("queued_bytes=64"), "{line}");
        assert!(line.ends_with("write_timeout=2 read_timeout=0}"), "{line}");
        assert!(line.contains("closed{peer_closed=0 io=1 "), "{line}");
    }

    #[test]
    fn prometheus_text_is_well_formed() {
        let mut page = String::new();
        sample().write_prometheus(&mut page, "np");
        let mut declared = std::collections::HashSet::new();
        for line in page.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').unwrap();
                assert!(kind == "counter" || kind == "gauge", "{line}");
                assert!(declared.insert(name.to_string()), "declared twice: {name}");
                continue;
            }
            if line.starts_with("# HELP ") {
                continue;
            }
            // name{label="v"} value
            let (series, value) = line.rsplit_once(' ').unwrap();
            value.parse::<u64>().unwrap_or_else(|_| panic!("{line}"));
            let name = series.split('{').next().unwrap();
            assert!(declared.contains(name), "undeclared {name}");
            assert!(name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'));
            if !name.ends_with("_total") {
                assert!(name == "np_open_connections" || name == "np_queued_bytes");
            }
        }
        assert!(page.contains("np_closed_total{reason=\"io\"} 1\n"));
        assert!(page.contains("np_open_connections 7\n"));
        // Label values are escaped.
        let mut out = String::new();
        Exposition {
            out: &mut out,
            prefix: "np",
        }
        .labeled("x_total", "counter", "h", "group", [("a\"b\\c\nd", 1)]);
        assert!(
            out.ends_with("np_x_total{group=\"a\\\"b\\\\c\\nd\"} 1\n"),
            "{out}"
        );
    }
}
