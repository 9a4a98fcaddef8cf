//! WebSocket (RFC 6455) server on the engine.
//!
//! The protocol core is sans-IO ([`frame`], [`handshake`]); [`WsServer`] runs it on the
//! engine's pollers through a [`Handler`](crate::Handler) adapter. Frames are unmasked in the
//! poller's read buffer and handed to [`WsHandler::on_message`] without a copy; only a
//! fragmented message (or a frame larger than 16 KiB that arrives in pieces) is assembled in
//! a buffer that is freed when the message completes. Sending writes the header from the stack
//! in front of the payload with one `writev`. An idle upgraded connection holds no buffers.
//!
//! ```no_run
//! use netpoll::Engine;
//! use netpoll::ws::{Accept, Message, Request, Upgrade, WsConn, WsHandler, WsServer};
//!
//! struct Echo;
//! impl WsHandler for Echo {
//!     type State = ();
//!     fn on_request(&mut self, req: &Request<'_>) -> Upgrade<()> {
//!         match req.path() {
//!             "/echo" => Accept::new(()).into(),
//!             _ => Upgrade::not_found(),
//!         }
//!     }
//!     fn on_message(&mut self, conn: &WsConn, _: &mut (), msg: Message<'_>) {
//!         let _ = conn.send(msg);
//!     }
//! }
//!
//! let engine = WsServer::builder()
//!     .start(Engine::builder().listen("127.0.0.1:9001"), |_| Echo)
//!     .unwrap();
//! # engine.shutdown(std::time::Duration::from_secs(1));
//! ```

pub(crate) mod client;
mod conn;
pub mod frame;
pub(crate) mod group;
pub mod handshake;
mod server;

use std::io;
use std::net::ToSocketAddrs;
use std::ops::Deref;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;

pub use client::{Connect, ConnectError};
pub use conn::{Message, WsConn};
pub use frame::Limits;
pub use group::{Group, SlowPolicy};
pub use handshake::{HttpResponse, Request};

use crate::core::config::ReadRefresh;
use crate::core::conn::CloseReason;
use crate::core::error::{ConfigError, Error};
use crate::engine::{DialOptions, Engine, EngineBuilder};

/// The upgrade hook's decision (see [`WsHandler::on_request`]).
#[derive(Debug)]
pub enum Upgrade<S> {
    /// Switch to WebSocket with this per-connection state.
    Accept(Accept<S>),
    /// Answer with a plain HTTP response and close: a page for a non-upgrade request, or a
    /// refusal (403 for a bad origin, 404 for an unknown path, ...).
    Respond(HttpResponse),
}

impl<S> Upgrade<S> {
    /// Refuse with `status` and an empty body.
    pub fn reject(status: u16) -> Self {
        Upgrade::Respond(HttpResponse::new(status))
    }

    /// 404 Not Found.
    pub fn not_found() -> Self {
        Upgrade::reject(404)
    }
}

impl<S> From<Accept<S>> for Upgrade<S> {
    fn from(a: Accept<S>) -> Self {
        Upgrade::Accept(a)
    }
}

/// Accepting an upgrade: the connection's state, and optionally a subprotocol and extra
/// response headers.
#[derive(Debug)]
pub struct Accept<S> {
    pub(crate) state: S,
    pub(crate) protocol: Option<String>,
    pub(crate) headers: Vec<(String, String)>,
}

impl<S> Accept<S> {
    /// Accept with `state` for the connection.
    pub fn new(state: S) -> Self {
        Accept {
            state,
            protocol: None,
            headers: Vec::new(),
        }
    }

    /// Select a subprotocol (one the client offered in
    /// [`Request::protocols`]).
    pub fn protocol(mut self, p: impl Into<String>) -> Self {
        self.protocol = Some(p.into());
        self
    }

    /// Add a header to the `101` response.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }
}

/// A piece of a message delivered by [`WsHandler::on_fragment`]. Borrows the read buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fragment<'a> {
    /// The message is text. Text is validated as UTF-8 across pieces (a violation closes the
    /// connection with 1007), but one piece may end inside a multi-byte character.
    pub text: bool,
    /// The payload bytes of this piece (possibly empty for an empty message).
    pub data: &'a [u8],
    /// The first piece of its message.
    pub first: bool,
    /// The last piece of its message.
    pub last: bool,
}

/// How a WebSocket connection ended, for [`WsHandler::on_close`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WsClose {
    /// The close code: the peer's if its close frame arrived (1005 if it had none); ours if
    /// the server failed the connection (1002, 1007, 1008, 1009) or shut down (1001);
    /// otherwise 1006 (no close frame received, e.g. the TCP connection dropped or the peer
    /// never answered our close).
    pub code: u16,
    /// The engine-level cause of the TCP close.
    pub cause: CloseReason,
}

/// Callbacks of a WebSocket server. Like [`Handler`](crate::Handler), each poller owns one
/// instance and per-connection state needs no locks.
pub trait WsHandler: Send + 'static {
    /// Per-connection state, created by the upgrade hook (or given to
    /// [`WsEngine::connect`]). It lives on the connection's poller thread; it must be `Send`
    /// only because a client connection's state travels from the connecting thread to it.
    type State: Send + 'static;

    /// An HTTP request arrived: accept it as a WebSocket (for upgrade requests), or answer
    /// it. Not called for malformed upgrade requests (they get 400/405/426 directly). If a
    /// request that is not an upgrade is "accepted", it gets 426 Upgrade Required.
    fn on_request(&mut self, req: &Request<'_>) -> Upgrade<Self::State>;

    /// The `101` response is queued and the connection is a WebSocket.
    fn on_open(&mut self, conn: &WsConn, state: &mut Self::State) {
        let _ = (conn, state);
    }

    /// A whole message arrived (fragments reassembled, text validated as UTF-8).
    fn on_message(&mut self, conn: &WsConn, state: &mut Self::State, msg: Message<'_>);

    /// A piece of a message, instead of [`on_message`](Self::on_message), when the server was
    /// built with [`WsBuilder::deliver_fragments`]: large messages stream through without
    /// being buffered. The default does nothing (the message is dropped).
    fn on_fragment(&mut self, conn: &WsConn, state: &mut Self::State, fragment: Fragment<'_>) {
        let _ = (conn, state, fragment);
    }

    /// A pong arrived (the server pings idle peers by itself; see
    /// [`WsBuilder::idle_timeout`]).
    fn on_pong(&mut self, conn: &WsConn, state: &mut Self::State, payload: &[u8]) {
        let _ = (conn, state, payload);
    }

    /// Queued bytes fell back under the engine's low watermark.
    fn on_drained(&mut self, conn: &WsConn, state: &mut Self::State) {
        let _ = (conn, state);
    }

    /// The connection closed; the last callback for it.
    fn on_close(&mut self, conn: &WsConn, state: Self::State, close: WsClose) {
        let _ = (conn, state, close);
    }

    /// A connection from [`WsEngine::connect`] did not become a WebSocket; its state comes
    /// back with the reason. No other callback runs for it.
    fn on_connect_error(&mut self, state: Self::State, error: ConnectError) {
        let _ = (state, error);
    }
}

/// A running engine serving (and dialing) WebSocket connections for a [`WsHandler`]. Derefs
/// to the [`Engine`] for addresses, stats and timers.
pub struct WsEngine<H: WsHandler> {
    engine: Engine,
    clients: Arc<client::Clients<H::State>>,
}

impl<H: WsHandler> std::fmt::Debug for WsEngine<H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WsEngine")
            .field("engine", &self.engine)
            .finish()
    }
}

impl<H: WsHandler> Deref for WsEngine<H> {
    type Target = Engine;
    fn deref(&self) -> &Engine {
        &self.engine
    }
}

impl<H: WsHandler> WsEngine<H> {
    /// Opens a client WebSocket connection to a `ws://` URL without blocking (only the host
    /// name lookup blocks; give an IP address to avoid it). The TCP connect and the upgrade
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
    pub fn connect(&self, url: &str, opts: Connect<H::State>) -> Result<WsConn, Error> {
        let invalid = |e: String| Error::Io(io::Error::new(io::ErrorKind::InvalidInput, e));
        let url = client::parse_url(url).map_err(invalid)?;
        let addr = (url.host.as_str(), url.port)
            .to_socket_addrs()?
            .next()
            .ok_or_else(|| invalid(format!("{} does not resolve", url.host)))?;
        let key = tungstenite::handshake::client::generate_key();
        let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
        let request = client::request(&url, &key, &opts.protocols, &opts.headers);
        // Registered before the dial so the poller knows the connection when it opens.
        let mut pending = self
            .clients
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        self.clients.count.fetch_add(1, Ordering::AcqRel);
        let dial = DialOptions {
            local_addr: opts.local_addr,
            timeout: opts.timeout,
        };
        // Frames wait for the upgrade: refused until the server's 101 arrived.
        let handshaking = |c: &crate::Conn| c.with_layer(|bits, _, _| *bits |= conn::HANDSHAKING);
        let conn = match self.engine.dial_prepared(addr, dial, handshaking) {
            Ok(c) => c,
            Err(e) => {
                self.clients.count.fetch_sub(1, Ordering::AcqRel);
                return Err(e);
            }
        };
        let _ = conn.write(Bytes::from(request));
        pending.insert(
            conn.id(),
            client::Pending {
                state: opts.state,
                accept,
                protocols: opts.protocols,
            },
        );
        Ok(WsConn::with_role(conn, true))
    }

    /// The underlying engine.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Shuts down: every open WebSocket gets 1001 Going Away and up to `timeout` to answer
    /// (see [`Engine::shutdown`]).
    pub fn shutdown(self, timeout: Duration) -> crate::Stats {
        self.engine.shutdown(timeout)
    }
}

/// Validated WebSocket settings.
#[derive(Debug, Clone)]
pub struct WsConfig {
    pub(crate) limits: Limits,
    pub(crate) max_handshake_size: usize,
    pub(crate) handshake_timeout: Duration,
    pub(crate) idle_timeout: Option<Duration>,
    pub(crate) pong_timeout: Duration,
    pub(crate) deliver_fragments: bool,
}

/// Entry point of the WebSocket server: [`WsServer::builder`].
#[derive(Debug)]
pub struct WsServer;

impl WsServer {
    /// A builder with the default settings.
    pub fn builder() -> WsBuilder {
        WsBuilder::default()
    }
}

/// Settings of a WebSocket server. Every limit is enforced with the right close code or HTTP
/// status, and documented in docs/TUNING.md.
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
    /// [`CloseReason::ReadTimeout`]. Only whole frames count as activity. Default 60 s;
    /// `None` disables it.
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

    /// Validates the settings.
    pub fn build(self) -> Result<WsConfig, ConfigError> {
        let c = self.config;
        let bad = |field, reason: &str| {
            Err(ConfigError {
                field,
                reason: reason.to_string(),
            })
        };
        if c.limits.max_frame_size == 0 || c.limits.max_message_size == 0 {
            return bad(
                "max_message_size",
                "frame and message limits must be positive",
            );
        }
        if c.limits.max_fragments == 0 {
            return bad("max_fragments", "must be positive");
        }
        if c.max_handshake_size < 256 {
            return bad("max_handshake_size", "must be at least 256 bytes");
        }
        if c.handshake_timeout.is_zero() || c.pong_timeout.is_zero() {
            return bad("handshake_timeout", "timeouts must be positive");
        }
        if c.idle_timeout.is_some_and(|t| t.is_zero()) {
            return bad("idle_timeout", "must be positive (None disables it)");
        }
        Ok(c)
    }

    /// Starts an engine from `engine` serving WebSockets with the handler `new_handler(i)`
    /// makes for poller `i`.
    ///
    /// The engine's `read_timeout` becomes the handshake timeout and its `read_refresh`
    /// becomes [`ReadRefresh::Manual`] (only whole frames refresh the idle deadline).
    pub fn start<H, F>(
        self,
        engine: EngineBuilder,
        mut new_handler: F,
    ) -> Result<WsEngine<H>, Error>
    where
        H: WsHandler,
        F: FnMut(usize) -> H,
    {
        let config = Arc::new(self.build().map_err(Error::Config)?);
        let clients = Arc::new(client::Clients::default());
        let engine = engine
            .read_timeout(Some(config.handshake_timeout))
            .read_refresh(ReadRefresh::Manual)
            .start(|i| server::Adapter::new(new_handler(i), config.clone(), clients.clone()))?;
        Ok(WsEngine { engine, clients })
    }
}
