//! The engine's configuration: one field per knob, set through
//! [`EngineBuilder`](crate::EngineBuilder) (which documents each one) and checked by
//! [`EngineConfig::validate`].

use std::net::SocketAddr;
use std::time::Duration;

use crate::core::transport::{CODEC_MIN_READ_BUFFER, CodecFactory};

use crate::core::error::ConfigError;
use crate::os::StreamOptions;

/// What happens when a write would push a connection's queued outbound bytes over
/// [`EngineBuilder::max_outbound_bytes`](crate::EngineBuilder::max_outbound_bytes).
///
/// The message is never split: it is queued whole or not at all.
///
/// ```
/// use netpoll::{Conn, OverflowPolicy, WriteError};
///
/// // The engine's policy (`EngineBuilder::overflow_policy`) is `Error` by default. A live
/// // feed overrides it for its subscribers: stale data is worthless, so one that falls
/// // behind is cut off.
/// fn subscribe(conn: &Conn) {
///     conn.set_overflow_policy(OverflowPolicy::Close);
/// }
///
/// fn publish(conn: &Conn, update: &[u8]) {
///     match conn.write_slice(update) {
///         Ok(()) => {}
///         // Under `Close` the connection is already closing. (Under `Error` a producer
///         // would keep `update` and try again after `on_drained`.)
///         Err(WriteError::Overflow { .. }) => {}
///         Err(_) => {} // closed meanwhile
///     }
/// }
/// ```
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
///
/// ```no_run
/// use std::time::Duration;
/// use netpoll::{Conn, Engine, Handler, ReadRefresh};
///
/// /// A line protocol: only a complete line shows the peer is alive.
/// struct Lines;
/// impl Handler for Lines {
///     type State = ();
///     fn on_open(&mut self, _: &Conn) {}
///     fn on_data(&mut self, conn: &Conn, _: &mut (), data: &mut [u8]) -> usize {
///         // Consume whole lines only; a partial line waits for more bytes.
///         let used = data.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
///         if used > 0 {
///             conn.touch_read();
///         }
///         used
///     }
/// }
///
/// // A peer that sends a byte every few seconds but never a whole line (slow loris) is
/// // closed 30 s after its last complete line.
/// let engine = Engine::builder()
///     .listen("127.0.0.1:9000")
///     .read_timeout(Some(Duration::from_secs(30)))
///     .read_refresh(ReadRefresh::Manual)
///     .start(|_| Lines)?;
/// # Ok::<(), netpoll::Error>(())
/// ```
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
///
/// ```no_run
/// use netpoll::{AcceptMode, Engine};
/// # struct H;
/// # impl netpoll::Handler for H {
/// #     type State = ();
/// #     fn on_open(&mut self, _: &netpoll::Conn) {}
/// #     fn on_data(&mut self, _: &netpoll::Conn, _: &mut (), d: &mut [u8]) -> usize { d.len() }
/// # }
///
/// // Many short connections a second: four listening sockets on one port, one per poller,
/// // and the kernel spreads the connections over them.
/// let engine = Engine::builder()
///     .pollers(4)
///     .accept_mode(AcceptMode::ReusePort)
///     .listen("0.0.0.0:8080")
///     .start(|_| H)?;
/// # Ok::<(), netpoll::Error>(())
/// ```
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

/// A validated engine configuration, produced by
/// [`EngineBuilder::build`](crate::EngineBuilder::build). Each field is one knob of the
/// builder, documented there and in docs/TUNING.md.
///
/// ```
/// use netpoll::Engine;
///
/// // Check the settings (from a configuration file, say) before anything starts.
/// let config = Engine::builder().pollers(2).max_outbound_bytes(1 << 20).build()?;
/// assert_eq!(config.pollers(), 2);
/// assert_eq!(config.max_outbound_bytes(), 1 << 20);
/// // Then: `Engine::start(config, |_poller| handler)`.
/// # Ok::<(), netpoll::ConfigError>(())
/// ```
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// `None` until `validate` resolved it (then the number of available cores unless set).
    pub(crate) pollers: Option<usize>,
    pub(crate) listen: Vec<SocketAddr>,
    pub(crate) accept_mode: AcceptMode,
    pub(crate) backlog: u32,
    pub(crate) stream: StreamOptions,
    pub(crate) read_buffer_size: usize,
    pub(crate) max_connections: usize,
    pub(crate) max_read_per_wakeup: usize,
    pub(crate) max_outbound_bytes: usize,
    pub(crate) overflow_policy: OverflowPolicy,
    /// `None` until `validate` resolved it (then a quarter of `max_outbound_bytes` unless set).
    pub(crate) low_watermark: Option<usize>,
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
    /// Most bytes of drained queues each poller keeps for reuse.
    pub(crate) tail_pool_bytes: usize,
    pub(crate) thread_name: String,
    /// Receive and flush through io_uring (Linux) instead of epoll readiness alone.
    pub(crate) io_uring: bool,
    /// The codec every accepted connection gets (a protocol layer's: TLS), if any.
    pub(crate) accept_codec: Option<CodecFactory>,
    /// A protocol layer's engine-wide settings that its connection handles need on any
    /// thread (WebSocket compression's), reached without a lock.
    pub(crate) layer_settings: Option<std::sync::Arc<dyn std::any::Any + Send + Sync>>,
}

impl EngineConfig {
    /// The defaults every builder starts from (see the builder's methods). Not `Default`: a
    /// configuration outside the crate comes only from `EngineBuilder::build`, validated.
    pub(crate) fn defaults() -> Self {
        EngineConfig {
            pollers: None,
            listen: Vec::new(),
            accept_mode: AcceptMode::HandOff,
            backlog: 1024,
            stream: StreamOptions {
                nodelay: true,
                send_buffer_size: None,
                recv_buffer_size: None,
            },
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
            tail_pool_bytes: 32 * 1024,
            thread_name: "netpoll".to_string(),
            // The environment switch lets a whole test suite run on the io_uring backend.
            io_uring: std::env::var("NETPOLL_BACKEND").is_ok_and(|v| v == "io_uring"),
            accept_codec: None,
            layer_settings: None,
        }
    }
}

impl EngineConfig {
    /// Number of poller threads.
    pub fn pollers(&self) -> usize {
        self.pollers.unwrap_or(1)
    }

    /// Outbound limit per connection, in bytes.
    pub fn max_outbound_bytes(&self) -> usize {
        self.max_outbound_bytes
    }

    /// The bound on a graceful close (flush, then wait for the peer's FIN).
    pub fn close_timeout(&self) -> Duration {
        self.close_timeout
    }

    pub(crate) fn low_watermark(&self) -> usize {
        self.low_watermark.unwrap_or(self.max_outbound_bytes / 4)
    }

    /// Checks every value (naming the first bad one) and fills in the defaults that depend on
    /// the machine or on other knobs.
    pub(crate) fn validate(mut self) -> Result<EngineConfig, ConfigError> {
        fn bad(field: &'static str, reason: String) -> Result<EngineConfig, ConfigError> {
            Err(ConfigError { field, reason })
        }
        let pollers = self
            .pollers
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
        if !(1..=256).contains(&pollers) {
            return bad("pollers", format!("{pollers} is not in 1..=256"));
        }
        self.pollers = Some(pollers);
        if !(1..=65535).contains(&self.backlog) {
            return bad("backlog", format!("{} is not in 1..=65535", self.backlog));
        }
        for (field, v) in [
            ("send_buffer_size", self.stream.send_buffer_size),
            ("recv_buffer_size", self.stream.recv_buffer_size),
        ] {
            if let Some(v) = v
                && !(1024..=(1 << 30)).contains(&v)
            {
                return bad(field, format!("{v} is not in 1 KiB..=1 GiB"));
            }
        }
        if !(1024..=(64 << 20)).contains(&self.read_buffer_size) {
            let v = self.read_buffer_size;
            return bad("read_buffer_size", format!("{v} is not in 1 KiB..=64 MiB"));
        }
        if self.accept_codec.is_some() && self.read_buffer_size < CODEC_MIN_READ_BUFFER {
            let v = self.read_buffer_size;
            return bad(
                "read_buffer_size",
                format!("{v} is under the {CODEC_MIN_READ_BUFFER} B TLS needs (two records)"),
            );
        }
        for (field, v) in [
            ("max_connections", self.max_connections),
            ("max_read_per_wakeup", self.max_read_per_wakeup),
            ("max_outbound_bytes", self.max_outbound_bytes),
            ("max_inbound_bytes", self.max_inbound_bytes),
        ] {
            if v == 0 {
                return bad(field, "must be at least 1".into());
            }
        }
        let low_watermark = self.low_watermark();
        if low_watermark >= self.max_outbound_bytes {
            let max = self.max_outbound_bytes;
            return bad(
                "low_watermark",
                format!("{low_watermark} must be below max_outbound_bytes ({max})"),
            );
        }
        self.low_watermark = Some(low_watermark);
        for (field, v) in [
            ("write_timeout", self.write_timeout),
            ("read_timeout", self.read_timeout),
        ] {
            if v.is_some_and(|d| d.is_zero()) {
                return bad(field, "must be positive (use None to disable)".into());
            }
        }
        for (field, v) in [
            ("close_timeout", self.close_timeout),
            ("connect_timeout", self.connect_timeout),
        ] {
            if v.is_zero() {
                return bad(field, "must be positive".into());
            }
        }
        let ms = Duration::from_millis;
        if !(ms(1)..=Duration::from_secs(60)).contains(&self.accept_backoff) {
            let v = self.accept_backoff;
            return bad("accept_backoff", format!("{v:?} is not in 1ms..=60s"));
        }
        if !(ms(1)..=Duration::from_secs(1)).contains(&self.timer_tick) {
            let v = self.timer_tick;
            return bad("timer_tick", format!("{v:?} is not in 1ms..=1s"));
        }
        if !(16..=65536).contains(&self.events_capacity) {
            let v = self.events_capacity;
            return bad("events_capacity", format!("{v} is not in 16..=65536"));
        }
        if self.thread_name.is_empty() || self.thread_name.contains('\0') {
            return bad("thread_name", "must be non-empty and contain no NUL".into());
        }
        Ok(self)
    }
}
