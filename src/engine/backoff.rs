//! [`Backoff`]: the delays between reconnection attempts, for clients that redial.

use std::time::Duration;

/// Exponential backoff with jitter for reconnecting clients: each [`next_delay`] doubles the
/// base delay up to `max` and returns a random delay between half the base and the base
/// ("equal jitter"), so that thousands of clients cut off at once do not come back in one
/// wave. [`reset`] after a connection succeeded.
///
/// netpoll does not reconnect by itself (the connection's state was handed back in
/// `on_close`, and only the application knows whether to come back); this is the piece that is
/// easy to get wrong. A reconnecting WebSocket client:
///
/// ```no_run
/// use std::time::Duration;
/// use netpoll::Backoff;
/// use netpoll::ws::{Connect, Message, WsClose, WsConn, WsHandle, WsHandler};
///
/// struct Feed {
///     engine: WsHandle<Feed>,
///     backoff: Backoff,
/// }
///
/// impl Feed {
///     fn redial(&mut self) {
///         let engine = self.engine.clone();
///         self.engine.after(self.backoff.next_delay(), move || {
///             let _ = engine.connect("ws://127.0.0.1:9001/feed", Connect::new(()));
///         });
///     }
/// }
///
/// impl WsHandler for Feed {
///     type State = ();
///     fn on_open(&mut self, _: &WsConn, _: &mut ()) {
///         self.backoff.reset();
///     }
///     fn on_message(&mut self, _: &WsConn, _: &mut (), msg: Message<'_>) {
///         println!("{} bytes", msg.len());
///     }
///     fn on_close(&mut self, _: &WsConn, _: (), _: WsClose) {
///         self.redial();
///     }
///     fn on_connect_error(&mut self, _: (), _: netpoll::ws::ConnectError) {
///         self.redial();
///     }
/// }
/// ```
///
/// [`next_delay`]: Backoff::next_delay
/// [`reset`]: Backoff::reset
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    base: Duration,
    attempts: u32,
}

impl Default for Backoff {
    /// 100 ms doubling up to 30 s.
    fn default() -> Self {
        Backoff::new(Duration::from_millis(100), Duration::from_secs(30))
    }
}

impl Backoff {
    /// Starts at `initial` (at least 1 ms) and doubles up to `max` (at least `initial`).
    pub fn new(initial: Duration, max: Duration) -> Self {
        let initial = initial.max(Duration::from_millis(1));
        Backoff {
            initial,
            max: max.max(initial),
            base: initial,
            attempts: 0,
        }
    }

    /// The delay before the next attempt: between half the current base and the base; the
    /// base then doubles (up to `max`).
    pub fn next_delay(&mut self) -> Duration {
        let base = self.base;
        self.base = base.saturating_mul(2).min(self.max);
        self.attempts = self.attempts.saturating_add(1);
        let half = base / 2;
        let jitter_ns = (base - half).as_nanos() as u64;
        half + Duration::from_nanos(rand::random_range(0..=jitter_ns))
    }

    /// Attempts since the last [`reset`](Self::reset).
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// Back to the initial delay (call it once a connection succeeded).
    pub fn reset(&mut self) {
        self.base = self.initial;
        self.attempts = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_within_jitter_up_to_the_cap_and_reset() {
        let ms = Duration::from_millis;
        let mut b = Backoff::new(ms(100), ms(1000));
        for base in [100, 200, 400, 800, 1000, 1000, 1000] {
            let d = b.next_delay();
            assert!(d >= ms(base / 2) && d <= ms(base), "{d:?} for base {base}");
        }
        assert_eq!(b.attempts(), 7);
        b.reset();
        assert_eq!(b.attempts(), 0);
        assert!(b.next_delay() <= ms(100));
        // Jitter spreads a crowd: 100 clients do not all pick one delay.
        let delays: std::collections::HashSet<_> =
            (0..100).map(|_| Backoff::default().next_delay()).collect();
        assert!(delays.len() > 50, "{} distinct delays", delays.len());
        // Degenerate settings are clamped, never a panic or a zero delay.
        let mut z = Backoff::new(Duration::ZERO, Duration::ZERO);
        assert!(z.next_delay() <= ms(1));
        // No cap: the base stops doubling at Duration::MAX instead of overflowing.
        let mut uncapped = Backoff::new(Duration::from_secs(1), Duration::MAX);
        for _ in 0..200 {
            uncapped.next_delay();
        }
    }
}
