//! Engine configuration: [`EngineBuilder`] and the validated [`EngineConfig`].

use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

use crate::engine::Engine;
use crate::error::{ConfigError, Error};
use crate::handler::Handler;

/// What happens when a write would push a connection's queued outbound bytes over
/// [`EngineBuilder::max_outbound_bytes`].
///
/// The message is never split: it is queued whole or not at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OverflowPolicy {
    /// Refuse the write with [`WriteError::Overflow`](crate::WriteError::Overflow) and keep the
    /// connection. The caller decides (wait for `on_drained`, drop, close).
    #[default]
    Error,
    /// Refuse the write and close the connection with
    /// [`CloseReason::Overflow`](crate::CloseReason::Overflow): a consumer that cannot keep up
    /// is cut off.
    Close,
}

/// What refreshes a connection's read (idle) deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ReadRefresh {
    /// Any bytes arriving move the deadline to now + `read_timeout`.
    #[default]
    AnyData,
    /// Only [`Conn::touch_read`](crate::Conn::touch_read) moves it: a protocol layer calls it
    /// when a complete message has arrived, so a peer trickling bytes (slow loris) is closed
    /// when the timeout passes.
    Manual,
}

/// How accepted connections reach their poller.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AcceptMode {
    /// One listening socket, accepted on poller 0 and handed to pollers round robin through
    /// their command queues. Works everywhere and balances evenly.
    #[default]
    HandOff,
    /// One `SO_REUSEPORT` listening socket per poller; the kernel spreads connections and each
    /// poller accepts its own, with no hand-off. Best for very high connection rates.
    ReusePort,
}

/// A validated engine configuration, produced by [`EngineBuilder::build`].
#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub(crate) pollers: usize,
    pub(crate) listen: Vec<SocketAddr>,
    pub(crate) accept_mode: AcceptMode,
    pub(crate) backlog: i32,
    pub(crate) nodelay: bool,
    pub(crate) send_buffer_size: Option<usize>,
    pub(crate) recv_buffer_size: Option<usize>,
    pub(crate) read_buffer_size: usize,
    pub(crate) max_connections: usize,
    pub(crate) max_read_per_wakeup: usize,
    pub(crate) max_outbound_bytes: usize,
    pub(crate) overflow_policy: OverflowPolicy,
    pub(crate) low_watermark: usize,
    pub(crate) max_inbound_bytes: usize,
    pub(crate) close_timeout: Duration,
    pub(crate) write_timeout: Option<Duration>,
    pub(crate) read_timeout: Option<Duration>,
    pub(crate) read_refresh: ReadRefresh,
    pub(crate) connect_timeout: Duration,
    pub(crate) shutdown_timeout: Duration,
    pub(crate) accept_backoff: Duration,
    pub(crate) timer_tick: Duration,
    pub(crate) events_capacity: usize,
    pub(crate) thread_name: String,
}

impl EngineConfig {
    /// Number of poller threads.
    pub fn pollers(&self) -> usize {
        self.pollers
    }
    /// Outbound limit per connection.
    pub fn max_outbound_bytes(&self) -> usize {
        self.max_outbound_bytes
    }
}

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
    pollers: Option<usize>,
    listen: Vec<String>,
    accept_mode: AcceptMode,
    backlog: u32,
    nodelay: bool,
    send_buffer_size: Option<usize>,
    recv_buffer_size: Option<usize>,
    read_buffer_size: usize,
    max_connections: usize,
    max_read_per_wakeup: usize,
    max_outbound_bytes: usize,
    overflow_policy: OverflowPolicy,
    low_watermark: Option<usize>,
    max_inbound_bytes: usize,
    close_timeout: Duration,
    write_timeout: Option<Duration>,
    read_timeout: Option<Duration>,
    read_refresh: ReadRefresh,
    connect_timeout: Duration,
    shutdown_timeout: Duration,
    accept_backoff: Duration,
    timer_tick: Duration,
    events_capacity: usize,
    thread_name: String,
}

impl Default for EngineBuilder {
    fn default() -> Self {
        EngineBuilder {
            pollers: None,
            listen: Vec::new(),
            accept_mode: AcceptMode::HandOff,
            backlog: 1024,
            nodelay: true,
            send_buffer_size: None,
            recv_buffer_size: None,
            read_buffer_size: 64 * 1024,
            max_connections: 1_000_000,
            max_read_per_wakeup: 256 * 1024,
            max_outbound_bytes: 4 * 1024 * 1024,
            overflow_policy: OverflowPolicy::Error,
            low_watermark: None,
            max_inbound_bytes: 16 * 1024 * 1024 + 64 * 1024,
            close_timeout: Duration::from_secs(5),
            write_timeout: Some(Duration::from_secs(30)),
            read_timeout: None,
            read_refresh: ReadRefresh::AnyData,
            connect_timeout: Duration::from_secs(10),
            shutdown_timeout: Duration::from_secs(5),
            accept_backoff: Duration::from_millis(100),
            timer_tick: Duration::from_millis(50),
            events_capacity: 1024,
            thread_name: "netpoll".to_string(),
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
        self.pollers = Some(n);
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
        self.accept_mode = mode;
        self
    }

    /// Listen backlog. Default 1024; must be 1..=65535.
    pub fn backlog(mut self, backlog: u32) -> Self {
        self.backlog = backlog;
        self
    }

    /// `TCP_NODELAY` on every connection. Default true: the engine already coalesces writes per
    /// loop iteration, so Nagle only adds latency.
    pub fn nodelay(mut self, on: bool) -> Self {
        self.nodelay = on;
        self
    }

    /// `SO_SNDBUF` for every connection. Default: the OS default (autotuned on Linux).
    pub fn send_buffer_size(mut self, bytes: usize) -> Self {
        self.send_buffer_size = Some(bytes);
        self
    }

    /// `SO_RCVBUF` for every connection. Default: the OS default (autotuned on Linux).
    pub fn recv_buffer_size(mut self, bytes: usize) -> Self {
        self.recv_buffer_size = Some(bytes);
        self
    }

    /// Size of each poller's shared read buffer, the most one read can return. Default 64 KiB;
    /// must be 1 KiB..=64 MiB.
    pub fn read_buffer_size(mut self, bytes: usize) -> Self {
        self.read_buffer_size = bytes;
        self
    }

    /// Most open connections (accepted plus dialed) for the engine. At the limit the acceptor
    /// pauses until a connection closes. Default 1,000,000; must be at least 1.
    pub fn max_connections(mut self, n: usize) -> Self {
        self.max_connections = n;
        self
    }

    /// Most bytes read from one connection per readiness event before the poller serves the
    /// others (fairness). Default 256 KiB; must be at least 1.
    pub fn max_read_per_wakeup(mut self, bytes: usize) -> Self {
        self.max_read_per_wakeup = bytes;
        self
    }

    /// Most bytes queued for sending on one connection. Default 4 MiB; must be at least 1. A
    /// single message larger than this can never be sent.
    pub fn max_outbound_bytes(mut self, bytes: usize) -> Self {
        self.max_outbound_bytes = bytes;
        self
    }

    /// What a write that would exceed [`max_outbound_bytes`](Self::max_outbound_bytes) does.
    /// Default [`OverflowPolicy::Error`].
    pub fn overflow_policy(mut self, policy: OverflowPolicy) -> Self {
        self.overflow_policy = policy;
        self
    }

    /// When queued bytes fall to this level after having been above it,
    /// [`Handler::on_drained`] runs so producers can resume. Default: a quarter of
    /// `max_outbound_bytes`; must be below `max_outbound_bytes`.
    pub fn low_watermark(mut self, bytes: usize) -> Self {
        self.low_watermark = Some(bytes);
        self
    }

    /// Most unconsumed inbound bytes (see [`Handler::on_data`]) kept for one connection; a
    /// handler that leaves more is cut off with [`CloseReason::InboundOverflow`]. Default
    /// 16 MiB + 64 KiB (room for a 16 MiB message plus a read); must be at least 1.
    ///
    /// [`CloseReason::InboundOverflow`]: crate::CloseReason::InboundOverflow
    pub fn max_inbound_bytes(mut self, bytes: usize) -> Self {
        self.max_inbound_bytes = bytes;
        self
    }

    /// How long [`Conn::close`](crate::Conn::close) may spend flushing queued bytes and then
    /// waiting for the peer's FIN before the socket is dropped. Default 5 s; must be positive.
    pub fn close_timeout(mut self, t: Duration) -> Self {
        self.close_timeout = t;
        self
    }

    /// How long queued outbound bytes may make no progress before the connection closes with
    /// [`CloseReason::WriteTimeout`](crate::CloseReason::WriteTimeout). The deadline is armed
    /// when bytes start waiting, moved to now + timeout by every write that makes progress, and
    /// cleared when the queue drains, so a peer that keeps reading is never timed out however
    /// long it takes; a peer that stops reading is closed within the timeout plus one
    /// `timer_tick`. Default 30 s; `None` disables; must be positive.
    pub fn write_timeout(mut self, t: Option<Duration>) -> Self {
        self.write_timeout = t;
        self
    }

    /// How long a connection may receive nothing before it closes with
    /// [`CloseReason::ReadTimeout`](crate::CloseReason::ReadTimeout) (an idle timeout;
    /// refreshed by any bytes arriving). Default `None` (off); must be positive.
    pub fn read_timeout(mut self, t: Option<Duration>) -> Self {
        self.read_timeout = t;
        self
    }

    /// What refreshes the read deadline: any arriving bytes (default) or only
    /// [`Conn::touch_read`](crate::Conn::touch_read). Per connection:
    /// [`Conn::set_read_refresh`](crate::Conn::set_read_refresh).
    pub fn read_refresh(mut self, mode: ReadRefresh) -> Self {
        self.read_refresh = mode;
        self
    }

    /// Default timeout of [`Engine::dial`]. Default 10 s; must be positive.
    pub fn connect_timeout(mut self, t: Duration) -> Self {
        self.connect_timeout = t;
        self
    }

    /// Flush budget used when the engine is dropped without an explicit
    /// [`Engine::shutdown`]. Default 5 s.
    pub fn shutdown_timeout(mut self, t: Duration) -> Self {
        self.shutdown_timeout = t;
        self
    }

    /// How long accepting pauses after `EMFILE`/`ENFILE` or at the connection limit, unless a
    /// connection closes first. Default 100 ms; must be 1 ms..=60 s.
    pub fn accept_backoff(mut self, t: Duration) -> Self {
        self.accept_backoff = t;
        self
    }

    /// Resolution of each poller's timer wheel: timeouts fire at most one tick late. Default
    /// 50 ms; must be 1 ms..=1 s.
    pub fn timer_tick(mut self, t: Duration) -> Self {
        self.timer_tick = t;
        self
    }

    /// Readiness events fetched per poll call. Default 1024; must be 16..=65536.
    pub fn events_capacity(mut self, n: usize) -> Self {
        self.events_capacity = n;
        self
    }

    /// Prefix of the poller thread names (`{name}-poller-{i}`). Default `"netpoll"`.
    pub fn thread_name(mut self, name: impl Into<String>) -> Self {
        self.thread_name = name.into();
        self
    }

    /// Checks every value and resolves the listen addresses.
    pub fn build(self) -> Result<EngineConfig, ConfigError> {
        fn bad(field: &'static str, reason: String) -> ConfigError {
            ConfigError { field, reason }
        }
        let pollers = match self.pollers {
            Some(n) => n,
            None => std::thread::available_parallelism().map_or(1, |n| n.get()),
        };
        if !(1..=256).contains(&pollers) {
            return Err(bad("pollers", format!("{pollers} is not in 1..=256")));
        }
        let mut listen = Vec::new();
        for a in &self.listen {
            let mut addrs = a
                .to_socket_addrs()
                .map_err(|e| bad("listen", format!("cannot resolve {a:?}: {e}")))?;
            match addrs.next() {
                Some(addr) => listen.push(addr),
                None => return Err(bad("listen", format!("{a:?} resolves to no address"))),
            }
        }
        if !(1..=65535).contains(&self.backlog) {
            return Err(bad(
                "backlog",
                format!("{} is not in 1..=65535", self.backlog),
            ));
        }
        for (field, v) in [
            ("send_buffer_size", self.send_buffer_size),
            ("recv_buffer_size", self.recv_buffer_size),
        ] {
            if let Some(v) = v
                && !(1024..=(1 << 30)).contains(&v)
            {
                return Err(bad(field, format!("{v} is not in 1 KiB..=1 GiB")));
            }
        }
        if !(1024..=(64 << 20)).contains(&self.read_buffer_size) {
            return Err(bad(
                "read_buffer_size",
                format!("{} is not in 1 KiB..=64 MiB", self.read_buffer_size),
            ));
        }
        for (field, v) in [
            ("max_connections", self.max_connections),
            ("max_read_per_wakeup", self.max_read_per_wakeup),
            ("max_outbound_bytes", self.max_outbound_bytes),
            ("max_inbound_bytes", self.max_inbound_bytes),
        ] {
            if v == 0 {
                return Err(bad(field, "must be at least 1".into()));
            }
        }
        let low_watermark = self.low_watermark.unwrap_or(self.max_outbound_bytes / 4);
        if low_watermark >= self.max_outbound_bytes {
            return Err(bad(
                "low_watermark",
                format!(
                    "{low_watermark} must be below max_outbound_bytes ({})",
                    self.max_outbound_bytes
                ),
            ));
        }
        for (field, v) in [
            ("write_timeout", self.write_timeout),
            ("read_timeout", self.read_timeout),
        ] {
            if v.is_some_and(|d| d.is_zero()) {
                return Err(bad(field, "must be positive (use None to disable)".into()));
            }
        }
        for (field, v) in [
            ("close_timeout", self.close_timeout),
            ("connect_timeout", self.connect_timeout),
        ] {
            if v.is_zero() {
                return Err(bad(field, "must be positive".into()));
            }
        }
        let ms = Duration::from_millis;
        if !(ms(1)..=Duration::from_secs(60)).contains(&self.accept_backoff) {
            return Err(bad(
                "accept_backoff",
                format!("{:?} is not in 1ms..=60s", self.accept_backoff),
            ));
        }
        if !(ms(1)..=Duration::from_secs(1)).contains(&self.timer_tick) {
            return Err(bad(
                "timer_tick",
                format!("{:?} is not in 1ms..=1s", self.timer_tick),
            ));
        }
        if !(16..=65536).contains(&self.events_capacity) {
            return Err(bad(
                "events_capacity",
                format!("{} is not in 16..=65536", self.events_capacity),
            ));
        }
        if self.thread_name.is_empty() || self.thread_name.contains('\0') {
            return Err(bad(
                "thread_name",
                "must be non-empty and contain no NUL".into(),
            ));
        }
        Ok(EngineConfig {
            pollers,
            listen,
            accept_mode: self.accept_mode,
            backlog: self.backlog as i32,
            nodelay: self.nodelay,
            send_buffer_size: self.send_buffer_size,
            recv_buffer_size: self.recv_buffer_size,
            read_buffer_size: self.read_buffer_size,
            max_connections: self.max_connections,
            max_read_per_wakeup: self.max_read_per_wakeup,
            max_outbound_bytes: self.max_outbound_bytes,
            overflow_policy: self.overflow_policy,
            low_watermark,
            max_inbound_bytes: self.max_inbound_bytes,
            close_timeout: self.close_timeout,
            write_timeout: self.write_timeout,
            read_timeout: self.read_timeout,
            read_refresh: self.read_refresh,
            connect_timeout: self.connect_timeout,
            shutdown_timeout: self.shutdown_timeout,
            accept_backoff: self.accept_backoff,
            timer_tick: self.timer_tick,
            events_capacity: self.events_capacity,
            thread_name: self.thread_name,
        })
    }

    /// Validates the configuration, binds the listeners and starts the pollers.
    /// `new_handler(i)` is called once per poller `i`; each poller owns its handler, so handler
    /// methods take `&mut self` with no locking.
    pub fn start<H, F>(self, new_handler: F) -> Result<Engine, Error>
    where
        H: Handler,
        F: FnMut(usize) -> H,
    {
        Engine::start(self.build()?, new_handler)
    }
}
