//! The WebSocket engine: [`WsServer`] / [`WsBuilder`] start an [`Engine`] whose pollers run the
//! WebSocket protocol; [`WsEngine`] is the running engine and [`WsHandle`] the handle that
//! handlers and other threads keep (connect, stats, timers, shutdown).

use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use super::WsHandler;
use super::adapter::Adapter;
use super::client::{self, Connect, Pending};
use super::conn::{HANDSHAKING, WsConn};
use super::deflate::DeflateConfig;
use super::frame::Limits;
use super::stats::{WsCounters, WsStats};
use crate::core::config::ReadRefresh;
use crate::core::error::{ConfigError, Error};
use crate::core::stats::Stats;
use crate::core::timer::{TimerHandle, timeout_ms};
use crate::engine::{DialOptions, Engine, EngineBuilder, EngineHandle};
use crate::tls;

/// A cheap, `Clone + Send + Sync` handle on a running [`WsEngine`]: client connections,
/// counters, timers and starting the shutdown, from any thread or from inside a handler. The
/// handler factory of [`WsBuilder::start`] gets one.
///
/// It offers what makes sense on a WebSocket engine. A raw TCP dial is not among them: its
/// connection would wait for an HTTP request that never comes.
///
/// ```no_run
/// use std::time::Duration;
/// use netpoll::Engine;
/// use netpoll::ws::{Accept, Message, Request, Upgrade, WsConn, WsHandle, WsHandler, WsServer};
///
/// /// Reports the number of open connections; "shutdown" stops the server.
/// struct Admin {
///     engine: WsHandle<Admin>,
/// }
///
/// impl WsHandler for Admin {
///     type State = ();
///     fn on_request(&mut self, _: &Request<'_>) -> Upgrade<()> {
///         Accept::new(()).into()
///     }
///     fn on_message(&mut self, conn: &WsConn, _: &mut (), msg: Message<'_>) {
///         if msg.as_bytes() == b"shutdown" {
///             self.engine.shutdown(Duration::from_secs(5)); // 1001 to everyone
///         } else {
///             let _ = conn.send_text(&format!("{} open", self.engine.stats().open()));
///         }
///     }
/// }
///
/// let server = WsServer::builder()
///     .start(Engine::builder().listen("127.0.0.1:9001"), |engine| Admin {
///         engine: engine.clone(),
///     })?;
/// let stats = server.wait(); // until a client says "shutdown"
/// # Ok::<(), netpoll::Error>(())
/// ```
pub struct WsHandle<H: WsHandler> {
    engine: EngineHandle,
    counters: Arc<WsCounters>,
    _handler: std::marker::PhantomData<fn() -> H>,
}

impl<H: WsHandler> Clone for WsHandle<H> {
    fn clone(&self) -> Self {
        WsHandle {
            engine: self.engine.clone(),
            counters: self.counters.clone(),
            _handler: std::marker::PhantomData,
        }
    }
}

impl<H: WsHandler> std::fmt::Debug for WsHandle<H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WsHandle")
            .field("engine", &self.engine)
            .finish()
    }
}

impl<H: WsHandler> WsHandle<H> {
    /// Opens a client WebSocket connection to a `ws://` or `wss://` URL without blocking (only
    /// the host name lookup blocks; give an IP address to avoid it). For `wss://` the TLS
    /// handshake (with [`Connect::tls`]'s configuration, checking the certificate against the
    /// URL's host) runs before the upgrade, within the same handshake timeout. The TCP connect and the upgrade
    /// run on a poller; on success the handler's [`on_open`](WsHandler::on_open) runs with
    /// `opts`'s state, on failure [`on_connect_error`](WsHandler::on_connect_error) gets the
    /// state back. The returned handle identifies the connection, but sends fail with
    /// [`WriteError::Invalid`](crate::WriteError::Invalid) until `on_open` has run (a client
    /// must not send before the server's `101`, RFC 6455 §4.1): start sending from `on_open`.
    /// Client frames are masked, which copies the payload.
    ///
    /// ```no_run
    /// # use netpoll::ws::{Connect, WsEngine, WsHandler};
    /// # fn demo<H: WsHandler<State = ()>>(ws: &WsEngine<H>) -> Result<(), netpoll::Error> {
    /// let conn = ws.connect("ws://127.0.0.1:9001/echo", Connect::new(()).protocol("chat"))?;
    /// println!("connecting as {}", conn.id());
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// No callback runs and the state is dropped. [`Error::Io`] with
    /// [`io::ErrorKind::InvalidInput`] for a URL that is not `ws://` or `wss://`, has
    /// credentials or a bad port, or for a subprotocol or header that is not valid HTTP; [`Error::Io`] if the host does not resolve, the socket cannot be created
    /// or bound, the connect fails at once, or `max_connections` connections are open (see
    /// [`EngineHandle::dial_with`]); [`Error::Shutdown`] once the shutdown started.
    pub fn connect(&self, url: &str, opts: Connect<H::State>) -> Result<WsConn, Error> {
        let invalid = |e: String| Error::Io(io::Error::new(io::ErrorKind::InvalidInput, e));
        let deflate = self.engine_config_deflate();
        let prepared = client::prepare(url, &opts.protocols, &opts.headers, deflate.as_ref())
            .map_err(invalid)?;
        let addr = (prepared.host.as_str(), prepared.port)
            .to_socket_addrs()?
            .next()
            .ok_or_else(|| invalid(format!("{} does not resolve", prepared.host)))?;
        let dial = DialOptions {
            local_addr: opts.local_addr,
            timeout: opts.timeout,
        };
        let codec = if prepared.tls {
            let config = opts.tls.unwrap_or_else(tls::default_client_config);
            Some(tls::client_codec(config, &prepared.host)?)
        } else {
            None
        };
        let mut pending = Some(Pending {
            state: opts.state,
            hello: prepared.hello,
        });
        // Before any poller sees the connection: frames are held back until the server's 101,
        // and the pending handshake waits in the connection's attachment for its poller.
        let conn = self.engine.dial_prepared(addr, dial, codec, |c| {
            c.with_layer(|bits, attachment, _| {
                *bits |= HANDSHAKING;
                if let Some(p) = pending.take() {
                    attachment.get_or_insert_with(|| p);
                }
            })
        })?;
        // Queued until the TCP connection is up.
        let _ = conn.write(Bytes::from(prepared.request));
        Ok(WsConn::with_role(conn, true))
    }

    /// The bound listening addresses, in the order given to the builder.
    pub fn local_addrs(&self) -> &[SocketAddr] {
        self.engine.local_addrs()
    }

    /// The compression this engine offers in its connects, if any.
    fn engine_config_deflate(&self) -> Option<DeflateConfig> {
        let settings = self.engine.config().layer_settings.as_deref()?;
        settings.downcast_ref::<DeflateConfig>().copied()
    }

    /// Counters summed over all pollers (see [`EngineHandle::stats`]).
    pub fn stats(&self) -> Stats {
        self.engine.stats()
    }

    /// The WebSocket layer's own counters (upgrades apart from plain HTTP answers).
    pub fn ws_stats(&self) -> WsStats {
        self.counters.snapshot()
    }

    /// Number of poller threads.
    pub fn pollers(&self) -> usize {
        self.engine.pollers()
    }

    /// Runs `f` once after `delay` on one of the pollers (see [`EngineHandle::after`]).
    pub fn after(&self, delay: Duration, f: impl FnOnce() + Send + 'static) -> TimerHandle {
        self.engine.after(delay, f)
    }

    /// Runs `f` every `period` on one of the pollers (see [`EngineHandle::every`]).
    pub fn every(&self, period: Duration, f: impl FnMut() + Send + 'static) -> TimerHandle {
        self.engine.every(period, f)
    }

    /// Starts the shutdown and returns at once: every open WebSocket gets 1001 Going Away and
    /// up to `timeout` to answer (see [`EngineHandle::shutdown`]). [`WsEngine::wait`] waits
    /// for the end.
    pub fn shutdown(&self, timeout: Duration) {
        self.engine.shutdown(timeout)
    }

    /// True once the shutdown started.
    pub fn is_shutting_down(&self) -> bool {
        self.engine.is_shutting_down()
    }

    /// Starts the shutdown on SIGINT or SIGTERM (see
    /// [`EngineHandle::shutdown_on_signals`]): every WebSocket gets 1001 Going Away.
    ///
    /// # Errors
    /// If the signal handlers cannot be installed or the thread cannot be started.
    pub fn shutdown_on_signals(&self, timeout: Duration) -> io::Result<()> {
        self.engine.shutdown_on_signals(timeout)
    }
}

/// A running engine serving (and dialing) WebSocket connections for a [`WsHandler`]. It owns
/// the poller threads and derefs to its [`WsHandle`] for everything else (connect, counters,
/// timers).
///
/// ```no_run
/// # use netpoll::ws::{WsEngine, WsHandler};
/// # fn demo<H: WsHandler>(ws: WsEngine<H>) {
/// use std::time::Duration;
/// println!("serving on {:?}", ws.local_addrs());
/// let stats = ws.stats();
/// println!("{} open", stats.open());
/// ws.shutdown(Duration::from_secs(5)); // 1001 Going Away to everyone, up to 5 s
/// # }
/// ```
pub struct WsEngine<H: WsHandler> {
    engine: Engine,
    handle: WsHandle<H>,
}

impl<H: WsHandler> std::fmt::Debug for WsEngine<H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WsEngine")
            .field("engine", &self.engine)
            .finish()
    }
}

impl<H: WsHandler> std::ops::Deref for WsEngine<H> {
    type Target = WsHandle<H>;

    fn deref(&self) -> &WsHandle<H> {
        &self.handle
    }
}

impl<H: WsHandler> WsEngine<H> {
    /// A handle on this engine for handlers and other threads.
    pub fn handle(&self) -> WsHandle<H> {
        self.handle.clone()
    }

    /// Shuts down: every open WebSocket gets 1001 Going Away and up to `timeout` to answer
    /// (see [`Engine::shutdown`]); returns the final counters.
    pub fn shutdown(self, timeout: Duration) -> Stats {
        self.engine.shutdown(timeout)
    }

    /// Waits until the engine has shut down (started from a handle) and returns the final
    /// counters (see [`Engine::wait`]).
    pub fn wait(self) -> Stats {
        self.engine.wait()
    }
}

/// Validated WebSocket settings, from [`WsBuilder::build`].
///
/// ```
/// use netpoll::ws::WsServer;
///
/// // Check the settings (from a configuration file, say) before anything starts;
/// // `WsBuilder::start` checks them again.
/// let err = WsServer::builder().max_handshake_size(100).build().unwrap_err();
/// assert_eq!(err.field, "max_handshake_size");
/// assert!(WsServer::builder().max_message_size(1 << 20).build().is_ok());
/// ```
#[derive(Debug, Clone)]
pub struct WsConfig {
    pub(crate) limits: Limits,
    pub(crate) max_handshake_size: usize,
    pub(crate) handshake_timeout: Duration,
    pub(crate) idle_timeout: Option<Duration>,
    pub(crate) pong_timeout: Duration,
    pub(crate) deliver_fragments: bool,
    /// permessage-deflate, if enabled.
    pub(crate) deflate: Option<DeflateConfig>,
}

/// Entry point of the WebSocket server: [`WsServer::builder`].
///
/// ```no_run
/// use netpoll::Engine;
/// use netpoll::ws::WsServer;
/// # use netpoll::ws::{Accept, Message, Request, Upgrade, WsConn, WsHandler};
/// # struct App;
/// # impl WsHandler for App {
/// #     type State = ();
/// #     fn on_request(&mut self, _: &Request<'_>) -> Upgrade<()> {
/// #         Accept::new(()).into()
/// #     }
/// #     fn on_message(&mut self, _: &WsConn, _: &mut (), _: Message<'_>) {}
/// # }
///
/// // The WebSocket builder takes the protocol's settings, the engine builder the rest
/// // (addresses, pollers, outbound limit, ...).
/// let server = WsServer::builder()
///     .max_message_size(1 << 20)
///     .start(Engine::builder().listen("127.0.0.1:9001").pollers(2), |_poller| App)?;
/// println!("listening on {}", server.local_addrs()[0]);
/// # Ok::<(), netpoll::Error>(())
/// ```
#[derive(Debug)]
pub struct WsServer;

impl WsServer {
    /// A builder with the default settings.
    pub fn builder() -> WsBuilder {
        WsBuilder::default()
    }
}

/// Entry point of a WebSocket client engine: [`WsClient::builder`]. The same builder as a
/// server's ([`WsServer::builder`]); an engine with no listen address only dials.
///
/// ```no_run
/// use netpoll::Engine;
/// use netpoll::ws::{Connect, Message, WsClient, WsConn, WsHandler};
///
/// /// A client-only handler: no `on_request`.
/// struct Printer;
/// impl WsHandler for Printer {
///     type State = ();
///     fn on_open(&mut self, conn: &WsConn, _: &mut ()) {
///         let _ = conn.send_text("hello");
///     }
///     fn on_message(&mut self, _: &WsConn, _: &mut (), msg: Message<'_>) {
///         println!("{} bytes", msg.len());
///     }
/// }
///
/// let client = WsClient::builder().start(Engine::builder().pollers(1), |_| Printer)?;
/// client.connect("ws://127.0.0.1:9001/echo", Connect::new(()))?;
/// # Ok::<(), netpoll::Error>(())
/// ```
#[derive(Debug)]
pub struct WsClient;

impl WsClient {
    /// A builder with the default settings (`handshake_timeout` bounds the server's answer;
    /// `idle_timeout` pings a silent server).
    pub fn builder() -> WsBuilder {
        WsBuilder::default()
    }
}

/// Settings of a WebSocket server (and client). Every limit is enforced with the right close
/// code or HTTP status, and documented in docs/TUNING.md.
///
/// ```no_run
/// use std::time::Duration;
/// use netpoll::Engine;
/// use netpoll::ws::{Message, Request, Upgrade, Accept, WsConn, WsHandler, WsServer};
///
/// struct Chat;
/// impl WsHandler for Chat {
///     type State = ();
///     fn on_request(&mut self, req: &Request<'_>) -> Upgrade<()> {
///         if req.origin_allowed(&["https://chat.example"]) {
///             Accept::new(()).into()
///         } else {
///             Upgrade::reject(403)
///         }
///     }
///     fn on_message(&mut self, _: &WsConn, _: &mut (), _: Message<'_>) {}
/// }
///
/// let engine = WsServer::builder()
///     .max_message_size(64 << 10)
///     .idle_timeout(Some(Duration::from_secs(30)))
///     .start(Engine::builder().listen("0.0.0.0:8080"), |_| Chat)?;
/// # Ok::<(), netpoll::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct WsBuilder {
    config: WsConfig,
}

impl Default for WsBuilder {
    fn default() -> Self {
        WsBuilder {
            config: WsConfig {
                limits: Limits::default(),
                max_handshake_size: 8 * 1024,
                handshake_timeout: Duration::from_secs(10),
                idle_timeout: Some(Duration::from_secs(60)),
                pong_timeout: Duration::from_secs(10),
                deliver_fragments: false,
                deflate: None,
            },
        }
    }
}

impl WsBuilder {
    /// Largest frame payload accepted (close 1009 beyond). Default 16 MiB.
    pub fn max_frame_size(mut self, bytes: usize) -> Self {
        self.config.limits.max_frame_size = bytes;
        self
    }

    /// Largest message accepted, all fragments together (close 1009 beyond). Default 16 MiB.
    pub fn max_message_size(mut self, bytes: usize) -> Self {
        self.config.limits.max_message_size = bytes;
        self
    }

    /// Most fragments per message (close 1008 beyond). Default 100,000.
    pub fn max_fragments(mut self, n: usize) -> Self {
        self.config.limits.max_fragments = n;
        self
    }

    /// Largest upgrade request (431 beyond). Default 8 KiB.
    pub fn max_handshake_size(mut self, bytes: usize) -> Self {
        self.config.max_handshake_size = bytes;
        self
    }

    /// Time a client has to send its whole upgrade request (and, for connections this engine
    /// dials, the server to answer); trickling bytes does not extend it (slow-loris
    /// protection). Default 10 s.
    pub fn handshake_timeout(mut self, t: Duration) -> Self {
        self.config.handshake_timeout = t;
        self
    }

    /// Heartbeat: when no complete frame has arrived for this long the server sends a ping;
    /// if nothing comes back within `pong_timeout` the connection closes with
    /// [`CloseReason::ReadTimeout`](crate::CloseReason::ReadTimeout). Only whole frames count
    /// as activity. Default 60 s; `None` disables it.
    pub fn idle_timeout(mut self, t: Option<Duration>) -> Self {
        self.config.idle_timeout = t;
        self
    }

    /// See [`idle_timeout`](Self::idle_timeout). Default 10 s.
    pub fn pong_timeout(mut self, t: Duration) -> Self {
        self.config.pong_timeout = t;
        self
    }

    /// Deliver data messages piece by piece as they arrive, to
    /// [`WsHandler::on_fragment`], instead of whole to `on_message`: nothing is buffered, so
    /// `max_message_size` can be large (streaming uploads). Default off.
    pub fn deliver_fragments(mut self, on: bool) -> Self {
        self.config.deliver_fragments = on;
        self
    }

    /// Enables permessage-deflate (RFC 7692) with `config`: a server accepts a client's offer,
    /// a client offers it in every connect. Off by default. With the default
    /// [`DeflateConfig`] no compression context is kept between messages in either direction,
    /// so a connection costs no memory for it while idle (compressors and decompressors are
    /// kept per thread). `max_message_size` limits the inflated size.
    pub fn deflate(mut self, config: DeflateConfig) -> Self {
        self.config.deflate = Some(config);
        self
    }

    /// Validates the settings.
    ///
    /// # Errors
    /// A [`ConfigError`] for the first setting out of range, checked in this order (`field`
    /// names the setting as shown):
    /// - `"max_frame_size"`, `"max_message_size"`: 0;
    /// - `"max_fragments"`: 0;
    /// - `"max_handshake_size"`: under 256 bytes;
    /// - `"handshake_timeout"`, `"pong_timeout"`: zero;
    /// - `"idle_timeout"`: `Some` of zero, or `idle_timeout` + `pong_timeout` reaches
    ///   `u32::MAX` milliseconds (about 49.7 days).
    pub fn build(self) -> Result<WsConfig, ConfigError> {
        let c = self.config;
        let bad = |field, reason: &str| {
            Err(ConfigError {
                field,
                reason: reason.to_string(),
            })
        };
        if c.limits.max_frame_size == 0 {
            return bad("max_frame_size", "must be positive");
        }
        if c.limits.max_message_size == 0 {
            return bad("max_message_size", "must be positive");
        }
        if c.limits.max_fragments == 0 {
            return bad("max_fragments", "must be positive");
        }
        if c.max_handshake_size < 256 {
            return bad("max_handshake_size", "must be at least 256 bytes");
        }
        if c.handshake_timeout.is_zero() {
            return bad("handshake_timeout", "must be positive");
        }
        if c.pong_timeout.is_zero() {
            return bad("pong_timeout", "must be positive");
        }
        if c.idle_timeout.is_some_and(|t| t.is_zero()) {
            return bad("idle_timeout", "must be positive (None disables it)");
        }
        // The session measures the time since the last frame in wrapping 32-bit milliseconds.
        let heartbeat =
            u64::from(timeout_ms(c.idle_timeout)) + u64::from(timeout_ms(Some(c.pong_timeout)));
        if heartbeat >= u64::from(u32::MAX) {
            return bad(
                "idle_timeout",
                "idle_timeout + pong_timeout must be under 49 days",
            );
        }
        Ok(c)
    }

    /// Starts an engine from `engine` serving WebSockets; `new_handler` makes each poller's
    /// handler, given the engine's [`WsHandle`].
    ///
    /// The engine's `read_timeout` becomes the handshake timeout and its `read_refresh`
    /// becomes [`ReadRefresh::Manual`] (only whole frames count as activity; the session
    /// keeps the heartbeat).
    ///
    /// # Errors
    /// [`Error::Config`] for what [`build`](Self::build) or
    /// [`EngineBuilder::build`] refuses; [`Error::Io`] if a listener cannot be bound, or a
    /// poller or its thread cannot be created.
    pub fn start<H, F>(
        self,
        engine: EngineBuilder,
        mut new_handler: F,
    ) -> Result<WsEngine<H>, Error>
    where
        H: WsHandler,
        F: FnMut(&WsHandle<H>) -> H,
    {
        let config = Arc::new(self.build().map_err(Error::Config)?);
        let counters = Arc::new(WsCounters::default());
        let engine = match config.deflate {
            // What senders on any thread need: the threshold and level.
            Some(d) => engine.layer_settings(Arc::new(d)),
            None => engine,
        };
        let engine = engine
            .read_timeout(Some(config.handshake_timeout))
            .read_refresh(ReadRefresh::Manual)
            .start(|engine| {
                let handle = WsHandle {
                    engine: engine.clone(),
                    counters: counters.clone(),
                    _handler: std::marker::PhantomData,
                };
                Adapter::new(new_handler(&handle), config.clone(), counters.clone())
            })?;
        let handle = WsHandle {
            engine: engine.handle(),
            counters,
            _handler: std::marker::PhantomData,
        };
        Ok(WsEngine { engine, handle })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every rejected setting is reported under its own builder method's name.
    #[test]
    fn each_bad_setting_is_named() {
        let b = WsServer::builder;
        let zero = Duration::ZERO;
        for (builder, field) in [
            (b().max_frame_size(0), "max_frame_size"),
            (b().max_message_size(0), "max_message_size"),
            (b().max_fragments(0), "max_fragments"),
            (b().max_handshake_size(255), "max_handshake_size"),
            (b().handshake_timeout(zero), "handshake_timeout"),
            (b().pong_timeout(zero), "pong_timeout"),
            (b().idle_timeout(Some(zero)), "idle_timeout"),
            (
                b().idle_timeout(Some(Duration::from_secs(50 * 24 * 3600))),
                "idle_timeout",
            ),
        ] {
            assert_eq!(builder.build().unwrap_err().field, field);
        }
        assert!(b().build().is_ok());
    }
}
