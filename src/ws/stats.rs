//! The WebSocket layer's counters: upgrades apart from plain HTTP answers.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::core::stats::{Exposition, count};

/// Counted by every poller of one WebSocket engine (handshake-rate events only).
#[derive(Debug, Default)]
pub(crate) struct WsCounters {
    upgrades: AtomicU64,
    http_responses: AtomicU64,
    http_errors: AtomicU64,
}

impl WsCounters {
    /// An HTTP response with `status` was queued.
    pub(crate) fn response(&self, status: u16) {
        if status == 101 {
            count(&self.upgrades, 1);
            return;
        }
        count(&self.http_responses, 1);
        if status >= 400 {
            count(&self.http_errors, 1);
        }
    }

    pub(crate) fn snapshot(&self) -> WsStats {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        WsStats {
            upgrades: get(&self.upgrades),
            http_responses: get(&self.http_responses),
            http_errors: get(&self.http_errors),
        }
    }
}

/// A WebSocket engine's own counters, apart from the engine's connection counters
/// ([`Stats`](crate::Stats)): a plain HTTP request (a page, a health check, a refused upgrade)
/// is a connection to the engine but not a WebSocket.
///
/// ```
/// let mut ws = netpoll::ws::WsStats::default();
/// (ws.upgrades, ws.http_responses, ws.http_errors) = (3, 2, 1);
/// assert_eq!(ws.to_string(), "upgrades=3 http_responses=2 http_errors=1");
/// let mut page = String::new();
/// ws.write_prometheus(&mut page, "netpoll_ws");
/// assert!(page.contains("netpoll_ws_upgrades_total 3\n"));
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct WsStats {
    /// Server upgrades answered with `101 Switching Protocols`.
    pub upgrades: u64,
    /// Requests answered with a plain HTTP response instead (pages, refusals, 408s).
    pub http_responses: u64,
    /// Of those, answers with a 4xx or 5xx status.
    pub http_errors: u64,
}

impl WsStats {
    /// Appends the counters in the Prometheus text format (see
    /// [`Stats::write_prometheus`](crate::Stats::write_prometheus)).
    pub fn write_prometheus(&self, out: &mut String, prefix: &str) {
        let mut m = Exposition { out, prefix };
        m.counter(
            "upgrades_total",
            "Requests upgraded to WebSocket.",
            self.upgrades,
        );
        m.counter(
            "http_responses_total",
            "Requests answered with plain HTTP (pages, refusals, timeouts).",
            self.http_responses,
        );
        m.counter(
            "http_errors_total",
            "Plain HTTP answers with a 4xx or 5xx status.",
            self.http_errors,
        );
    }
}

impl std::fmt::Display for WsStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "upgrades={} http_responses={} http_errors={}",
            self.upgrades, self.http_responses, self.http_errors
        )
    }
}
