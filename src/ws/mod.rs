//! WebSocket (RFC 6455) server on the engine.
//!
//! The protocol is sans-IO: the frame codec ([`frame`]), the HTTP upgrade, and a per-connection
//! session that makes every protocol decision (handshake, frames, heartbeat, close handshake,
//! shutdown) from bytes, time and timeouts, with no socket and no clock of its own. A thin
//! adapter runs it on the engine's pollers as a [`Handler`](crate::Handler). Frames are
//! unmasked in the poller's read buffer and handed to [`WsHandler::on_message`] without a
//! copy; only a fragmented message (or a frame larger than 16 KiB that arrives in pieces) is
//! assembled in a buffer that is freed when the message completes. Sending writes the header
//! from the stack in front of the payload with one `writev`. An idle upgraded connection holds
//! no buffers.
//!
//! Close codes are tungstenite's [`CloseCode`]; protocol violations are [`ProtocolError`]s.
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
//! let engine = WsServer::builder().start(Engine::builder().listen("127.0.0.1:9001"), |_| Echo)?;
//! # engine.shutdown(std::time::Duration::from_secs(1));
//! # Ok::<(), netpoll::Error>(())
//! ```

mod adapter;
pub(crate) mod client;
mod conn;
pub mod deflate;
mod engine;
pub mod frame;
pub(crate) mod group;
pub(crate) mod handshake;
mod session;
mod stats;
mod topics;
pub(crate) mod utf8;

pub use client::{Connect, ConnectError};
pub use conn::{Message, WsConn};
pub use engine::{WsBuilder, WsClient, WsConfig, WsEngine, WsHandle, WsServer};
pub use frame::{CloseCode, Limits, ProtocolError};
pub use group::{Group, SlowPolicy};
pub use handshake::{HttpResponse, Request};
pub use stats::WsStats;
pub use topics::Topics;

use crate::core::conn::CloseReason;

/// The upgrade hook's decision (see [`WsHandler::on_request`]).
///
/// ```
/// use netpoll::ws::{Accept, HttpResponse, Upgrade};
///
/// let yes: Upgrade<u32> = Accept::new(7).into(); // 7: the new connection's state
/// let no: Upgrade<u32> = Upgrade::reject(403);
/// let page: Upgrade<u32> = Upgrade::Respond(HttpResponse::new(200).body("hello\n"));
/// assert!(matches!(no, Upgrade::Respond(r) if r.status() == 403));
/// # let _ = (yes, page);
/// ```
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
///
/// ```
/// use netpoll::ws::{Accept, Request, Upgrade};
///
/// fn on_request(req: &Request<'_>) -> Upgrade<u64> {
///     let session = 7; // looked up from a cookie, say
///     let accept = Accept::new(session).header("X-Server", "edge-3");
///     // Speak the first of our protocols the client offers; offered none, speak none.
///     match req.protocols().find(|p| ["chat.v2", "chat.v1"].contains(p)) {
///         Some(p) => accept.protocol(p).into(),
///         None => accept.into(),
///     }
/// }
/// ```
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
///
/// ```no_run
/// use netpoll::Engine;
/// use netpoll::ws::{Accept, Fragment, Message, Request, Upgrade, WsConn, WsHandler, WsServer};
///
/// /// Takes uploads of any size without holding one in memory.
/// struct Upload;
///
/// impl WsHandler for Upload {
///     type State = u64; // bytes of the message so far
///     fn on_request(&mut self, _: &Request<'_>) -> Upgrade<u64> {
///         Accept::new(0).into()
///     }
///     fn on_message(&mut self, _: &WsConn, _: &mut u64, _: Message<'_>) {} // not called
///     fn on_fragment(&mut self, conn: &WsConn, size: &mut u64, piece: Fragment<'_>) {
///         if piece.first {
///             *size = 0;
///         }
///         *size += piece.data.len() as u64; // hash it, parse it, pass it on
///         if piece.last {
///             let _ = conn.send_text(&format!("received {size} bytes"));
///         }
///     }
/// }
///
/// let server = WsServer::builder()
///     .deliver_fragments(true)
///     .max_frame_size(1 << 30)
///     .max_message_size(1 << 30) // 1 GiB uploads, with no 1 GiB buffer
///     .start(Engine::builder().listen("127.0.0.1:9001"), |_| Upload)?;
/// # Ok::<(), netpoll::Error>(())
/// ```
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
///
/// ```
/// use netpoll::CloseReason;
/// use netpoll::ws::{CloseCode, WsClose};
/// fn clean(close: &WsClose) -> bool {
///     matches!(close.code, CloseCode::Normal | CloseCode::Away)
/// }
/// assert!(!clean(&WsClose { code: CloseCode::Abnormal, cause: CloseReason::PeerClosed }));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WsClose {
    /// The close code: the peer's if its close frame arrived ([`CloseCode::Status`], 1005,
    /// if it had none); ours if this side failed the connection (1002, 1007, 1008, 1009) or
    /// shut down (1001); otherwise [`CloseCode::Abnormal`], 1006 (no close frame received,
    /// e.g. the TCP connection dropped or the peer never answered our close).
    pub code: CloseCode,
    /// The engine-level cause of the TCP close.
    pub cause: CloseReason,
}

/// Callbacks of a WebSocket server. Like [`Handler`](crate::Handler), each poller owns one
/// instance and per-connection state needs no locks.
///
/// ```no_run
/// use netpoll::Engine;
/// use netpoll::ws::{
///     Accept, Group, Message, Request, SlowPolicy, Upgrade, WsClose, WsConn, WsHandler, WsServer,
/// };
///
/// /// A chat room at `/chat?name=...`: every message goes to everyone else.
/// struct Chat {
///     room: Group, // one room for every poller's handler (a clone is a handle)
/// }
///
/// impl WsHandler for Chat {
///     type State = String; // the user's name
///
///     fn on_request(&mut self, req: &Request<'_>) -> Upgrade<String> {
///         if req.path() != "/chat" {
///             return Upgrade::not_found();
///         }
///         match req.query().and_then(|q| q.strip_prefix("name=")) {
///             Some(name) if !name.is_empty() => Accept::new(name.to_string()).into(),
///             _ => Upgrade::reject(400),
///         }
///     }
///
///     fn on_open(&mut self, conn: &WsConn, _name: &mut String) {
///         self.room.join(conn); // left by itself when the connection closes
///     }
///
///     fn on_message(&mut self, conn: &WsConn, name: &mut String, msg: Message<'_>) {
///         if let Message::Text(text) = msg {
///             let line = format!("{name}: {text}");
///             self.room.broadcast_except(conn, Message::Text(&line));
///         }
///     }
///
///     fn on_close(&mut self, _conn: &WsConn, name: String, close: WsClose) {
///         println!("{name} left (code {}, {:?})", close.code, close.cause);
///     }
/// }
///
/// let room = Group::new(SlowPolicy::Drop);
/// let server = WsServer::builder().start(Engine::builder().listen("127.0.0.1:9001"), |_| Chat {
///     room: room.clone(),
/// })?;
/// # Ok::<(), netpoll::Error>(())
/// ```
pub trait WsHandler: Send + 'static {
    /// Per-connection state, created by the upgrade hook (or given to
    /// [`WsEngine::connect`]). It lives on the connection's poller thread; it must be `Send`
    /// only because a client connection's state travels from the connecting thread to it.
    type State: Send + 'static;

    /// An HTTP request arrived: accept it as a WebSocket (for upgrade requests), or answer
    /// it. Not called for malformed upgrade requests (they get 400/405/426 directly). If a
    /// request that is not an upgrade is "accepted", it gets 426 Upgrade Required. The
    /// default answers 404 to everything: a client-only handler need not write it.
    fn on_request(&mut self, req: &Request<'_>) -> Upgrade<Self::State> {
        let _ = req;
        Upgrade::not_found()
    }

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
