//! The callback interface an application implements.

use std::io;
use std::time::Duration;

use crate::core::conn::{CloseReason, Conn};

/// Callbacks for connection events. Each poller thread owns its own handler instance (made by
/// the factory given to [`EngineBuilder::start`](crate::EngineBuilder::start)), so methods take
/// `&mut self` and need no locks; share state across pollers with an `Arc` inside it.
///
/// All callbacks for a connection run on the poller thread that owns it, one at a time. A
/// callback must not block: it stalls every connection of that poller. A callback that panics
/// takes down only its connection ([`CloseReason::HandlerPanic`]); the poller carries on.
///
/// ```no_run
/// use netpoll::{CloseReason, Conn, Engine, Handler};
///
/// /// Answers every line a client sends with the line's number.
/// struct LineCounter;
///
/// impl Handler for LineCounter {
///     type State = u64; // lines seen on this connection: plain data, no lock
///
///     fn on_open(&mut self, _conn: &Conn) -> u64 {
///         0
///     }
///
///     fn on_data(&mut self, conn: &Conn, lines: &mut u64, data: &mut [u8]) -> usize {
///         let mut used = 0;
///         while let Some(n) = data[used..].iter().position(|&b| b == b'\n') {
///             used += n + 1;
///             *lines += 1;
///             let _ = conn.write_slice(format!("{lines}\n").as_bytes());
///         }
///         // A partial last line is not consumed: it comes back, with the bytes that
///         // complete it, at the start of `data` next time.
///         used
///     }
///
///     fn on_close(&mut self, conn: &Conn, lines: u64, reason: CloseReason) {
///         println!("{}: {lines} lines, closed ({reason:?})", conn.peer_addr());
///     }
/// }
///
/// let engine = Engine::builder()
///     .listen("127.0.0.1:9000")
///     .start(|_poller| LineCounter)?;
/// # Ok::<(), netpoll::Error>(())
/// ```
pub trait Handler: Send + 'static {
    /// Per-connection state, created by [`on_open`](Self::on_open), handed to every callback
    /// by `&mut`, and given back by value to [`on_close`](Self::on_close). It stays on the
    /// poller thread, so it needs no `Send`, `Arc` or `Mutex`.
    type State: 'static;

    /// A connection is established (accepted, or a dial completed).
    fn on_open(&mut self, conn: &Conn) -> Self::State;

    /// Bytes arrived. `data` borrows the poller's read buffer and cannot outlive the call. It
    /// is mutable so a protocol layer can transform it in place (unmask or decrypt there
    /// instead of copying).
    ///
    /// Returns how many bytes were consumed. Unconsumed bytes (a partial message, say) are kept
    /// in a per-connection buffer, allocated only then, and presented again at the start of
    /// `data` on the next call. A handler that lets more than `max_inbound_bytes` pile up is
    /// closed with [`CloseReason::InboundOverflow`].
    fn on_data(&mut self, conn: &Conn, state: &mut Self::State, data: &mut [u8]) -> usize;

    /// The connection closed. Runs exactly once for every connection that was opened, and is
    /// the last callback for it. Bytes still queued by a graceful close keep flushing after it.
    fn on_close(&mut self, conn: &Conn, state: Self::State, reason: CloseReason) {
        let _ = (conn, state, reason);
    }

    /// Queued outbound bytes fell to the low watermark after having been above it: a producer
    /// that backed off on [`WriteError::Overflow`](crate::WriteError::Overflow) can resume.
    fn on_drained(&mut self, conn: &Conn, state: &mut Self::State) {
        let _ = (conn, state);
    }

    /// The read deadline passed (see
    /// [`EngineBuilder::read_timeout`](crate::EngineBuilder::read_timeout)). The default closes
    /// the connection with [`CloseReason::ReadTimeout`]; a protocol layer may probe the peer
    /// instead (a ping) and ask for more time.
    fn on_idle(&mut self, conn: &Conn, state: &mut Self::State) -> IdleAction {
        let _ = (conn, state);
        IdleAction::Close
    }

    /// The engine is shutting down. The default lets the engine close the connection
    /// gracefully at once. A protocol layer that wants its own goodbye (a closing message of
    /// its protocol) sends it, returns [`ShutdownAction::Wait`] and closes the connection itself
    /// when the peer answers; the engine closes whatever is left at the shutdown deadline,
    /// reporting [`CloseReason::Shutdown`] either way.
    fn on_shutdown(&mut self, conn: &Conn, state: &mut Self::State) -> ShutdownAction {
        let _ = (conn, state);
        ShutdownAction::Close
    }

    /// A connection from [`Engine::dial`](crate::Engine::dial) could not be established
    /// (refused, unreachable, timed out, or the engine shut down first). No other callback
    /// runs for it.
    fn on_connect_error(&mut self, conn: &Conn, error: io::Error) {
        let _ = (conn, error);
    }
}

/// What to do when a connection's read deadline passes: see [`Handler::on_idle`].
///
/// ```
/// use std::time::Duration;
/// use netpoll::{Conn, Handler, IdleAction};
///
/// /// Probes a quiet peer once before giving up on it.
/// struct Probe;
///
/// impl Handler for Probe {
///     type State = bool; // a probe is out
///     fn on_open(&mut self, _: &Conn) -> bool {
///         false
///     }
///     fn on_data(&mut self, _: &Conn, probing: &mut bool, data: &mut [u8]) -> usize {
///         *probing = false; // the peer is there (and the bytes moved the deadline)
///         data.len()
///     }
///     fn on_idle(&mut self, conn: &Conn, probing: &mut bool) -> IdleAction {
///         if *probing {
///             return IdleAction::Close; // no answer to the probe either
///         }
///         *probing = true;
///         let _ = conn.write_slice(b"PING\n");
///         IdleAction::Wait(Duration::from_secs(5))
///     }
/// }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdleAction {
    /// Close gracefully with [`CloseReason::ReadTimeout`].
    Close,
    /// Keep the connection; the read deadline becomes now + the given time (data arriving
    /// may refresh it as usual).
    Wait(Duration),
}

/// What to do with an open connection when the engine shuts down: see
/// [`Handler::on_shutdown`].
///
/// ```
/// use netpoll::{Conn, Handler, ShutdownAction};
///
/// /// Says goodbye on shutdown and closes when the peer acknowledges it.
/// struct Polite;
///
/// impl Handler for Polite {
///     type State = ();
///     fn on_open(&mut self, _: &Conn) {}
///     fn on_data(&mut self, conn: &Conn, _: &mut (), data: &mut [u8]) -> usize {
///         if data.starts_with(b"BYE") {
///             conn.close(); // the peer's answer to our goodbye
///         }
///         data.len()
///     }
///     fn on_shutdown(&mut self, conn: &Conn, _: &mut ()) -> ShutdownAction {
///         match conn.write_slice(b"GOING AWAY\n") {
///             // Wait for the answer, up to the shutdown deadline.
///             Ok(()) => ShutdownAction::Wait,
///             Err(_) => ShutdownAction::Close,
///         }
///     }
/// }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShutdownAction {
    /// Close it gracefully now ([`CloseReason::Shutdown`]).
    Close,
    /// The handler is closing it; wait for that, up to the shutdown deadline.
    Wait,
}
