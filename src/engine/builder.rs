//! [`EngineBuilder`]: every knob of the engine, with its default, in one place.

use std::net::ToSocketAddrs;
use std::time::Duration;

use super::{Engine, EngineHandle};
use crate::core::config::{AcceptMode, EngineConfig, OverflowPolicy, ReadRefresh};
use crate::core::error::{ConfigError, Error};
use crate::core::handler::Handler;

/// Builds and starts an [`Engine`]. Every knob has a documented default; [`build`] checks the
/// values and returns a [`ConfigError`] naming the bad one.
///
/// ```no_run
/// use netpoll::{Conn, Engine, Handler};
///
/// struct Echo;
/// impl Handler for Echo {
///     type State = ();
///     fn on_open(&mut self, _conn: &Conn) {}
///     fn on_data(&mut self, conn: &Conn, _state: &mut (), data: &mut [u8]) -> usize {
///         let _ = conn.write_slice(data);
///         data.len()
///     }
/// }
///
/// let engine = Engine::builder()
///     .pollers(2)
///     .listen("127.0.0.1:9000")
///     .start(|_poller| Echo)
///     .expect("start engine");
/// println!("listening on {}", engine.local_addrs()[0]);
/// ```
///
/// [`build`]: EngineBuilder::build
#[derive(Debug, Clone)]
pub struct EngineBuilder {
    /// Each knob is a field of the configuration; addresses are resolved by `build`.
    config: EngineConfig,
    listen: Vec<String>,
}

impl Default for EngineBuilder {
    fn default() -> Self {
        EngineBuilder {
            config: EngineConfig::defaults(),
            listen: Vec::new(),
        }
    }
}

impl EngineBuilder {
    /// A builder with the defaults.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of poller threads. Default: the number of available cores. Must be 1..=256.
    pub fn pollers(mut self, n: usize) -> Self {
        self.config.pollers = Some(n);
        self
    }

    /// Adds a listening address (`"127.0.0.1:9000"`, port 0 for any). May be called several
    /// times. Default: none (a dial-only engine, e.g. a load client).
    pub fn listen(mut self, addr: impl Into<String>) -> Self {
        self.listen.push(addr.into());
        self
    }

    /// One acceptor handing off (default) or a `SO_REUSEPORT` listener per poller.
    pub fn accept_mode(mut self, mode: AcceptMode) -> Self {
        self.config.accept_mode = mode;
        self
    }

    /// Listen backlog. Default 1024; must be 1..=65535.
    pub fn backlog(mut self, backlog: u32) -> Self {
        self.config.backlog = backlog;
        self
    }

    /// `TCP_NODELAY` on every connection. Default true: the engine already coalesces writes per
    /// loop iteration, so Nagle only adds latency.
    pub fn nodelay(mut self, on: bool) -> Self {
        self.config.stream.nodelay = on;
        self
    }

    /// `SO_SNDBUF` for every connection. Default: the OS default (autotuned on Linux).
    pub fn send_buffer_size(mut self, bytes: usize) -> Self {
        self.config.stream.send_buffer_size = Some(bytes);
        self
    }

    /// `SO_RCVBUF` for every connection. Default: the OS default (autotuned on Linux).
    pub fn recv_buffer_size(mut self, bytes: usize) -> Self {
        self.config.stream.recv_buffer_size = Some(bytes);
        self
    }

    /// Experimental: receive and flush through io_uring on Linux (multishot receives into a
    /// per-poller buffer ring, the poller's writes as ring sends, one `io_uring_enter` per
    /// loop iteration); epoll still reports accepts, connects and writability. Where io_uring
    /// is unavailable (an old kernel, a seccomp profile, `kernel.io_uring_disabled`) a poller
    /// logs a warning and uses epoll, as it does without the `io-uring` cargo feature. Default:
    /// off, or on when the environment variable `NETPOLL_BACKEND` is `io_uring`. Connections
    /// with TLS read through epoll either way. It saved 3-6% of server CPU per echoed message
    /// in netpoll's measurements (docs/BENCHMARKS.md), so epoll stays the default.
    pub fn io_uring(mut self, on: bool) -> Self {
        self.config.io_uring = on;
        self
    }

    /// Size of each poller's shared read buffer, the most one read can return. Default 64 KiB;
    /// must be 1 KiB..=64 MiB, and at least 33,280 B (two records) for TLS.
    pub fn read_buffer_size(mut self, bytes: usize) -> Self {
        self.config.read_buffer_size = bytes;
        self
    }

    /// Most open connections (accepted plus dialed) for the engine. At the limit the acceptor
    /// pauses until a connection closes. Default 1,000,000; must be at least 1.
    pub fn max_connections(mut self, n: usize) -> Self {
        self.config.max_connections = n;
        self
    }

    /// Most bytes read from one connection per readiness event before the poller serves the
    /// others (fairness). Default 256 KiB; must be at least 1.
    pub fn max_read_per_wakeup(mut self, bytes: usize) -> Self {
        self.config.max_read_per_wakeup = bytes;
        self
    }

    /// Most memory one connection's outbound queue may hold: the bytes waiting for the kernel
    /// plus 64 bytes of bookkeeping per message queued as its own buffer (small copied writes
    /// are packed together and pay once). So the queue holds at most this much whatever the mix
    /// of message sizes, plus one closing message of a protocol (at most 127 bytes), which may
    /// pass it. Default 4 MiB; must be at least 1. A message larger than this minus 64 bytes
    /// can never be sent.
    pub fn max_outbound_bytes(mut self, bytes: usize) -> Self {
        self.config.max_outbound_bytes = bytes;
        self
    }

    /// What a write that would exceed [`max_outbound_bytes`](Self::max_outbound_bytes) does.
    /// Default [`OverflowPolicy::Error`].
    pub fn overflow_policy(mut self, policy: OverflowPolicy) -> Self {
        self.config.overflow_policy = policy;
        self
    }

    /// When queued bytes fall to this level after having been above it,
    /// [`Handler::on_drained`] runs so producers can resume. Default: a quarter of
    /// `max_outbound_bytes`; must be below `max_outbound_bytes`.
    pub fn low_watermark(mut self, bytes: usize) -> Self {
        self.config.low_watermark = Some(bytes);
        self
    }

    /// Most unconsumed inbound bytes (see [`Handler::on_data`]) kept for one connection; a
    /// handler that leaves more is cut off with [`CloseReason::InboundOverflow`]. Default
    /// 16 MiB + 64 KiB (room for a 16 MiB message plus a read); must be at least 1.
    ///
    /// [`CloseReason::InboundOverflow`]: crate::CloseReason::InboundOverflow
    pub fn max_inbound_bytes(mut self, bytes: usize) -> Self {
        self.config.max_inbound_bytes = bytes;
        self
    }

    /// How long [`Conn::close`](crate::Conn::close) may spend flushing queued bytes and then
    /// waiting for the peer's FIN before the socket is dropped. Default 5 s; must be positive.
    pub fn close_timeout(mut self, t: Duration) -> Self {
        self.config.close_timeout = t;
        self
    }

    /// How long queued outbound bytes may make no progress before the connection closes with
    /// [`CloseReason::WriteTimeout`](crate::CloseReason::WriteTimeout). The deadline is armed
    /// when bytes start waiting, moved to now + timeout by every write that makes progress, and
    /// cleared when the queue drains, so a peer that keeps reading is never timed out however
    /// long it takes; a peer that stops reading is closed within the timeout plus one
    /// `timer_tick`. Default 30 s; `None` disables; must be positive.
    pub fn write_timeout(mut self, t: Option<Duration>) -> Self {
        self.config.write_timeout = t;
        self
    }

    /// How long a connection may receive nothing before it closes with
    /// [`CloseReason::ReadTimeout`](crate::CloseReason::ReadTimeout) (an idle timeout;
    /// refreshed by any bytes arriving). Default `None` (off); must be positive.
    pub fn read_timeout(mut self, t: Option<Duration>) -> Self {
        self.config.read_timeout = t;
        self
    }

    /// What refreshes the read deadline: any arriving bytes (default) or only
    /// [`Conn::touch_read`](crate::Conn::touch_read). Per connection:
    /// [`Conn::set_read_refresh`](crate::Conn::set_read_refresh).
    pub fn read_refresh(mut self, mode: ReadRefresh) -> Self {
        self.config.read_refresh = mode;
        self
    }

    /// Default timeout of [`Engine::dial`]. Default 10 s; must be positive.
    pub fn connect_timeout(mut self, t: Duration) -> Self {
        self.config.connect_timeout = t;
        self
    }

    /// Flush budget used when the engine is dropped without an explicit
    /// [`Engine::shutdown`]. Default 5 s.
    pub fn shutdown_timeout(mut self, t: Duration) -> Self {
        self.config.shutdown_timeout = t;
        self
    }

    /// How long accepting pauses after `EMFILE`/`ENFILE` or at the connection limit, unless a
    /// connection closes first. Default 100 ms; must be 1 ms..=60 s.
    pub fn accept_backoff(mut self, t: Duration) -> Self {
        self.config.accept_backoff = t;
        self
    }

    /// Resolution of each poller's timer wheel: timeouts fire at most one tick late. Default
    /// 50 ms; must be 1 ms..=1 s.
    pub fn timer_tick(mut self, t: Duration) -> Self {
        self.config.timer_tick = t;
        self
    }

    /// Readiness events fetched per poll call. Default 1024; must be 16..=65536.
    pub fn events_capacity(mut self, n: usize) -> Self {
        self.config.events_capacity = n;
        self
    }

    /// Most memory each poller keeps in drained outbound queues for reuse, in bytes. Default
    /// 32 KiB; 0 keeps none.
    ///
    /// A write made inside a callback is corked: queued, and flushed with one `writev` at the
    /// end of the loop iteration. Its queue (a 64 B box and a buffer for the small writes it
    /// coalesces) is handed back to the poller once drained, and the next corked write on any
    /// connection takes it instead of allocating. This bounds what the poller keeps between
    /// iterations, counting each queue's box and buffer capacity (buffers over 16 KiB are never
    /// kept). Past the bound, drained queues are freed, and writes beyond what the pool holds
    /// allocate (one `malloc` and `free` per message). Idle connections hold no queue either
    /// way: this is per poller, not per connection (docs/TUNING.md has the trade-off).
    ///
    /// ```no_run
    /// # struct H;
    /// # impl netpoll::Handler for H {
    /// #     type State = ();
    /// #     fn on_open(&mut self, _: &netpoll::Conn) {}
    /// #     fn on_data(&mut self, _: &netpoll::Conn, _: &mut (), d: &mut [u8]) -> usize { d.len() }
    /// # }
    /// // Thousands of connections busy at once with small messages: keep enough queues for
    /// // a whole loop iteration's worth of corked writes (about 1024 of ~200 B).
    /// let engine = netpoll::Engine::builder()
    ///     .listen("127.0.0.1:9000")
    ///     .tail_pool_bytes(256 * 1024)
    ///     .start(|_| H)?;
    /// # Ok::<(), netpoll::Error>(())
    /// ```
    pub fn tail_pool_bytes(mut self, bytes: usize) -> Self {
        self.config.tail_pool_bytes = bytes;
        self
    }

    /// Prefix of the poller thread names (`{name}-poller-{i}`). Default `"netpoll"`.
    pub fn thread_name(mut self, name: impl Into<String>) -> Self {
        self.config.thread_name = name.into();
        self
    }

    /// Gives every accepted connection a codec from `factory` (a protocol layer's: TLS).
    pub(crate) fn accept_codec(mut self, factory: crate::core::transport::CodecFactory) -> Self {
        self.config.accept_codec = Some(factory);
        self
    }

    /// Keeps a protocol layer's engine-wide settings where its connection handles find them
    /// ([`Conn::layer_settings`](crate::Conn)).
    pub(crate) fn layer_settings(
        mut self,
        settings: std::sync::Arc<dyn std::any::Any + Send + Sync>,
    ) -> Self {
        self.config.layer_settings = Some(settings);
        self
    }

    /// Checks every value and resolves the listen addresses.
    ///
    /// # Errors
    /// A [`ConfigError`] for a listen address that does not resolve (`field` is `"listen"`;
    /// addresses are checked first), else naming the first knob whose value is out of the
    /// range its method documents.
    pub fn build(self) -> Result<EngineConfig, ConfigError> {
        let mut config = self.config;
        for a in &self.listen {
            let resolved = a.to_socket_addrs().map_err(|e| ConfigError {
                field: "listen",
                reason: format!("cannot resolve {a:?}: {e}"),
            })?;
            match resolved.into_iter().next() {
                Some(addr) => config.listen.push(addr),
                None => {
                    return Err(ConfigError {
                        field: "listen",
                        reason: format!("{a:?} resolves to no address"),
                    });
                }
            }
        }
        config.validate()
    }

    /// Validates the configuration, binds the listeners and starts the pollers.
    /// `new_handler` is called once per poller with the engine's [`EngineHandle`] (keep a clone
    /// to dial, set timers, read counters or shut down from a callback); each poller owns its
    /// handler, so handler methods take `&mut self` with no locking.
    ///
    /// # Errors
    /// [`Error::Config`] for what [`build`](Self::build) refuses; [`Error::Io`] if a listener
    /// cannot be bound (address in use, say), or a poller or its thread cannot be created.
    pub fn start<H, F>(self, new_handler: F) -> Result<Engine, Error>
    where
        H: Handler,
        F: FnMut(&EngineHandle) -> H,
    {
        Engine::start(self.build()?, new_handler)
    }
}
