//! # netpoll
//!
//! A non-blocking event-loop engine for very many connections on few cores, in the style of
//! Go's nbio: a small pool of poller threads (epoll on Linux, kqueue on BSD/macOS, through
//! mio) drives readiness for every socket, with one shared read buffer per poller and a lazily
//! allocated, bounded outbound queue per connection.
//!
//! - [`Engine`] / [`EngineBuilder`]: start pollers, listen, [`dial`](Engine::dial), shut down.
//! - [`Handler`]: per-poller callbacks (`on_open`, `on_data`, `on_close`, ...) with
//!   per-connection state that needs no locks.
//! - [`Conn`]: a `Clone + Send + Sync` handle; [`Conn::write`] from any thread delivers each
//!   message whole and in each writer's order, bounded by `max_outbound_bytes`.
//! - Time: refreshed write and read deadlines per connection (builder defaults, per-connection
//!   overrides, Go-style absolute deadlines) and user timers ([`Engine::after`],
//!   [`Conn::every`], ...), all on one [`timer::TimerWheel`] per poller.
//!
//! ```no_run
//! use netpoll::{Conn, Engine, Handler};
//!
//! struct Echo;
//! impl Handler for Echo {
//!     type State = ();
//!     fn on_open(&mut self, _conn: &Conn) {}
//!     fn on_data(&mut self, conn: &Conn, _state: &mut (), data: &mut [u8]) -> usize {
//!         let _ = conn.write_slice(data); // corked: flushed once per loop iteration
//!         data.len()
//!     }
//! }
//!
//! let engine = Engine::builder().listen("127.0.0.1:9000").start(|_| Echo)?;
//! // ... serve until done ...
//! engine.shutdown(std::time::Duration::from_secs(5));
//! # Ok::<(), netpoll::Error>(())
//! ```
//!
//! - [`ws`]: WebSocket server and client on the engine (sans-IO protocol core, upgrade hook,
//!   heartbeats, limits, [`ws::WsEngine::connect`]) and broadcast [`ws::Group`]s.
//!
//! See `docs/ARCHITECTURE.md` for the layers, the threads and the flow of reads and writes.
//! The modules point one way: `os` (sockets) -> `core` (connections, pollers, timers; no
//! protocol) -> `engine` (the [`Engine`] facade) -> protocols ([`ws`], [`tls`], and [`bus`],
//! which carries `ws` groups' broadcasts between nodes).

#![deny(unsafe_code)]
#![warn(missing_docs, missing_debug_implementations)]

pub mod bus;
mod core;
mod engine;
#[cfg(any(test, feature = "internals"))]
#[doc(hidden)]
pub mod fuzz;
mod os;
pub mod tls;
pub mod ws;

/// Internals for netpoll's own benchmarks and fuzz targets (feature `internals`); no stability
/// promise.
#[cfg(feature = "internals")]
#[doc(hidden)]
pub mod internals {
    pub use crate::core::outbound::{OutboundBuffer, QueuePool};
}

pub use crate::core::config::{AcceptMode, EngineConfig, OverflowPolicy, ReadRefresh};
pub use crate::core::conn::{CloseReason, Conn, ConnId};
pub use crate::core::error::{ConfigError, Error, WriteError};
pub use crate::core::handler::{Handler, IdleAction, ShutdownAction};
pub use crate::core::stats::Stats;
pub use crate::core::timer::TimerHandle;
pub use engine::{Backoff, DialOptions, Engine, EngineBuilder, EngineHandle};

/// Time: the hashed timing wheel every poller runs its deadlines and timers on (sans-IO,
/// usable on its own), and the handle of a user timer.
pub mod timer {
    pub use crate::core::timer::{TimerHandle, TimerWheel};
}
