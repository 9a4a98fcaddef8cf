//! The WebSocket session, sans-IO: one connection's protocol state machine, in the spirit of
//! quinn-proto's `Connection`. Bytes, the time and timeouts come in; events for the application
//! ([`App`]) and actions on the connection ([`Io`]: bytes to send, the transport to close,
//! the idle deadline to set) come out, and a timeout's answer says when to be asked again.
//! It does no I/O and reads no clock, so the heartbeat, the close handshake from either side,
//! shutdown, handshake timeouts and limits are tested here on a simulated clock.
//!
//! It decides: the HTTP upgrade (server) or the check of the server's `101` (client), frame
//! decoding and its limits, answering pings and close frames, failing the connection with the
//! right close code, the heartbeat (a ping after `idle_timeout` without a whole frame, a close
//! after `pong_timeout` more without a frame or any outbound progress), the goodbye on shutdown, and the close code to report.
//!
//! Liveness costs no lock: a read that completes a frame stores the time here, in the
//! poller's own state. The engine's read deadline is set once at open and, when it passes, the
//! session compares it with the last frame and asks for the rest of the wait, lazily, as the
//! timer wheel does with every deadline.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;

use super::client::{self, ClientHello, ConnectError};
use super::conn::Message;
use super::deflate::{self, DeflateParams, History, InflateError};
use super::frame::{CloseCode, Decoder, Event, Flow, ProtocolError, Role};
use super::handshake::{self, HttpResponse, Parsed, Request};
use super::{Fragment, Upgrade, WsClose, WsConfig};
use crate::core::conn::CloseReason;
use crate::core::handler::{IdleAction, ShutdownAction};
use crate::core::timer::timeout_ms;

/// What the session does to its connection. The engine adapter implements it on a
/// connection; the tests record it.
pub(crate) trait Io {
    /// The peer's address (for the upgrade hook).
    fn peer_addr(&self) -> SocketAddr;
    /// Queues a plain HTTP response (the `101`, a page, a refusal) with `status`, head and
    /// body as one unit.
    fn send_http(&mut self, status: u16, head: &[u8], body: &Bytes);
    /// Queues a pong with `payload`.
    fn pong(&mut self, payload: &[u8]);
    /// Queues a heartbeat ping; false if it was refused (closing, or over the outbound limit).
    fn ping(&mut self) -> bool;
    /// Queues our close frame (`None`: an empty one); false if one was queued already, by any
    /// thread, or the connection is closed.
    fn send_close(&mut self, code: Option<CloseCode>, reason: &str) -> bool;
    /// True once our close frame is queued, by any thread.
    fn close_sent(&mut self) -> bool;
    /// Runs `f` on the client's hello while its handshake runs; `None` if there is none.
    fn with_hello<R>(&mut self, f: impl FnOnce(&ClientHello) -> R) -> Option<R>;
    /// The client's upgrade completed: frames may be sent from now on.
    fn upgraded(&mut self);
    /// permessage-deflate was agreed with `params` (`server`: on our side as the server):
    /// this side may send compressed messages, with or without context takeover; where a
    /// direction keeps context, its history starts empty.
    fn deflate_agreed(&mut self, params: &DeflateParams, server: bool);
    /// With context takeover inbound: the history of what the peer's compressed messages
    /// inflated to, taken out while the session inflates (`None` if there is none).
    fn take_received_history(&mut self) -> Option<History>;
    /// Gives the history back after inflating.
    fn put_received_history(&mut self, history: History);
    /// True if any of our bytes reached the socket since the last call (which clears it).
    fn take_write_progress(&mut self) -> bool;
    /// Restarts the connection's idle (read) deadline at now + `timeout`; `None` removes it.
    fn set_idle_timeout(&mut self, timeout: Option<Duration>);
    /// Closes the transport gracefully (queued bytes first).
    fn close(&mut self);
    /// Closes the transport at once.
    fn abort(&mut self);
}

/// The application's side of a session (the engine adapter forwards to the user's
/// [`WsHandler`](super::WsHandler)); `S` is the connection's application state.
pub(crate) trait App<S> {
    /// A server's upgrade hook.
    fn request(&mut self, req: &Request<'_>) -> Upgrade<S>;
    /// The connection is a WebSocket.
    fn open(&mut self, state: &mut S);
    fn message(&mut self, state: &mut S, msg: Message<'_>);
    fn fragment(&mut self, state: &mut S, fragment: Fragment<'_>);
    fn pong(&mut self, state: &mut S, payload: &[u8]);
    /// A client connection did not become a WebSocket; its state comes back.
    fn connect_failed(&mut self, state: S, error: ConnectError);
}

/// Where the connection is in the protocol (2 bits of [`Session::bits`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// A server waiting for the HTTP upgrade request.
    Handshake = 0,
    /// A client waiting for the server's `101`.
    ClientHandshake = 1,
    /// Frames flow.
    Open = 2,
    /// The close handshake is over or the connection failed: input is ignored while the
    /// transport closes.
    Done = 3,
}

const PHASE: u8 = 0b11;
/// We dialed: we mask what we send and expect unmasked frames.
const CLIENT: u8 = 0b100;
/// A heartbeat ping is out and no whole frame came since.
const PING_OUT: u8 = 0b1000;
/// permessage-deflate was agreed: data messages may arrive compressed (RSV1).
const DEFLATE: u8 = 0b1_0000;
/// The peer compresses with context takeover: each compressed message inflates on top of the
/// connection's history of what the ones before inflated to.
const INFLATE_CONTEXT: u8 = 0b10_0000;

/// How a session ended, for the application.
#[derive(Debug)]
pub(crate) enum Ended<S> {
    /// A WebSocket closed.
    Closed(S, WsClose),
    /// A client connection never became a WebSocket.
    ConnectFailed(S, ConnectError),
    /// Nothing to tell (a request that was answered, not upgraded).
    Nothing,
}

/// One connection's protocol state, kept by its poller: 16 bytes besides the application's
/// state (no buffer while idle; the decoder holds one only while a message is assembled).
#[derive(Debug)]
pub(crate) struct Session<S> {
    decoder: Decoder,
    /// When the last whole frame arrived (or the connection opened): the low 32 bits of ms on
    /// the engine clock. Compared by wrapping difference, which is right while the heartbeat
    /// looks at least every 49 days (its timeouts are validated to be shorter).
    last_frame: u32,
    /// The close code to report, 0 until one is known.
    close_code: u16,
    /// [`Phase`] and flags.
    bits: u8,
    /// The application's state: `Some` from the upgrade (server) or the connect (client)
    /// until the end.
    app: Option<S>,
}

impl<S> Session<S> {
    /// A server connection, waiting for its upgrade request.
    pub(crate) fn server() -> Self {
        Session {
            decoder: Decoder::new(),
            last_frame: 0,
            close_code: 0,
            bits: Phase::Handshake as u8,
            app: None,
        }
    }

    /// A client connection, waiting for the server's `101`, with the application's state.
    pub(crate) fn client(state: S) -> Self {
        Session {
            bits: Phase::ClientHandshake as u8 | CLIENT,
            app: Some(state),
            ..Session::server()
        }
    }

    fn phase(&self) -> Phase {
        match self.bits & PHASE {
            0 => Phase::Handshake,
            1 => Phase::ClientHandshake,
            2 => Phase::Open,
            _ => Phase::Done,
        }
    }

    fn set_phase(&mut self, phase: Phase) {
        self.bits = (self.bits & !PHASE) | phase as u8;
    }

    fn set_flag(&mut self, flag: u8, on: bool) {
        if on {
            self.bits |= flag;
        } else {
            self.bits &= !flag;
        }
    }

    /// True for a connection we dialed.
    pub(crate) fn is_client(&self) -> bool {
        self.bits & CLIENT != 0
    }

    fn role(&self) -> Role {
        if self.is_client() {
            Role::Client
        } else {
            Role::Server
        }
    }

    /// The application's state once the connection is a WebSocket.
    pub(crate) fn app_mut(&mut self) -> Option<&mut S> {
        match self.phase() {
            Phase::Open | Phase::Done => self.app.as_mut(),
            _ => None,
        }
    }

    /// Bytes arrived at `now` (ms); returns how many were used (the rest, an incomplete
    /// request or frame, is offered again with the next bytes).
    pub(crate) fn on_input(
        &mut self,
        now: u64,
        data: &mut [u8],
        config: &WsConfig,
        io: &mut impl Io,
        app: &mut impl App<S>,
    ) -> usize {
        let used = match self.phase() {
            Phase::Handshake => self.server_handshake(now, data, config, io, app),
            Phase::ClientHandshake => self.client_handshake(now, data, config, io, app),
            Phase::Open => return self.frames(now, data, config, io, app),
            Phase::Done => return data.len(),
        };
        match used {
            None => 0,
            // Frames may follow the handshake in the same read.
            Some(used) if self.phase() == Phase::Open => {
                used + self.frames(now, &mut data[used..], config, io, app)
            }
            Some(used) => used,
        }
    }

    /// Handles the upgrade request at the start of `data`; the bytes it used, or `None` while
    /// the request is incomplete.
    fn server_handshake(
        &mut self,
        now: u64,
        data: &[u8],
        config: &WsConfig,
        io: &mut impl Io,
        app: &mut impl App<S>,
    ) -> Option<usize> {
        let mut headers = [httparse::EMPTY_HEADER; handshake::MAX_HEADERS];
        let too_big = HttpResponse::new(431);
        let peer = io.peer_addr();
        let (request, len) = match handshake::parse_request(data, &mut headers, peer) {
            Parsed::Partial if data.len() > config.max_handshake_size => {
                return Some(self.refuse(io, &too_big, data));
            }
            Parsed::Partial => return None,
            Parsed::Invalid(resp) => return Some(self.refuse(io, &resp, data)),
            Parsed::Request { len, .. } if len > config.max_handshake_size => {
                return Some(self.refuse(io, &too_big, data));
            }
            Parsed::Request { request, len } => (request, len),
        };
        let key = match request
            .is_upgrade()
            .then(|| handshake::check_upgrade(&request))
        {
            Some(Err(resp)) => return Some(self.refuse(io, &resp, data)),
            Some(Ok(key)) => Some(key),
            None => None,
        };
        match (app.request(&request), key) {
            (Upgrade::Accept(accept), Some(key)) => {
                let protocol = accept.protocol.as_deref();
                let offers = request
                    .headers()
                    .filter(|(name, _)| name.eq_ignore_ascii_case("sec-websocket-extensions"))
                    .filter_map(|(_, value)| std::str::from_utf8(value).ok());
                let agreed = config
                    .deflate
                    .as_ref()
                    .and_then(|d| deflate::server_accept(offers, d));
                let extension = agreed.as_ref().map(|(_, response)| response.as_str());
                let Some(resp) =
                    handshake::accept_response(key, protocol, extension, &accept.headers)
                else {
                    tracing::error!("invalid subprotocol or header in an accept; sending 500");
                    return Some(self.refuse(io, &HttpResponse::new(500), data));
                };
                io.send_http(101, resp.as_bytes(), &Bytes::new());
                if let Some((params, _)) = agreed {
                    self.deflate_agreed(&params, io);
                }
                self.app = Some(accept.state);
                self.open(now, config, io, app);
                Some(len)
            }
            (Upgrade::Accept(_), None) => {
                let resp = HttpResponse::new(426)
                    .header("Upgrade", "websocket")
                    .header("Sec-WebSocket-Version", "13");
                Some(self.refuse(io, &resp, data))
            }
            (Upgrade::Respond(resp), _) => Some(self.refuse(io, &resp, data)),
        }
    }

    /// Answers a request that does not become a WebSocket with `resp` and closes; the rest of
    /// the input is ignored. Returns the bytes used (all of `data`).
    fn refuse(&mut self, io: &mut impl Io, resp: &HttpResponse, data: &[u8]) -> usize {
        io.send_http(resp.status(), resp.head().as_bytes(), resp.body_bytes());
        io.close();
        self.set_phase(Phase::Done);
        data.len()
    }

    /// Reads the server's response to our upgrade request; the bytes it used, or `None` while
    /// it is incomplete.
    fn client_handshake(
        &mut self,
        now: u64,
        data: &[u8],
        config: &WsConfig,
        io: &mut impl Io,
        app: &mut impl App<S>,
    ) -> Option<usize> {
        let checked = io
            .with_hello(|h| {
                client::check_response(data, &h.accept, &h.protocols, h.deflate.as_ref())
            })
            .unwrap_or(Err(ConnectError::Handshake("no handshake in progress")));
        let error = match checked {
            Ok(client::Response::Partial) if data.len() <= config.max_handshake_size => {
                return None;
            }
            Ok(client::Response::Partial) => ConnectError::Handshake("response too large"),
            Ok(client::Response::Upgraded { len, deflate, .. }) => {
                io.upgraded();
                if let Some(params) = deflate {
                    self.deflate_agreed(&params, io);
                }
                self.open(now, config, io, app);
                return Some(len);
            }
            Err(e) => e,
        };
        self.set_phase(Phase::Done);
        if let Some(state) = self.app.take() {
            app.connect_failed(state, error);
        }
        io.abort();
        Some(data.len())
    }

    /// permessage-deflate was agreed with `params`.
    fn deflate_agreed(&mut self, params: &DeflateParams, io: &mut impl Io) {
        let server = !self.is_client();
        self.set_flag(DEFLATE, true);
        self.set_flag(INFLATE_CONTEXT, !params.receive_resets(server));
        io.deflate_agreed(params, server);
    }

    /// The handshake is done (either side): frames flow, the idle deadline becomes the
    /// heartbeat's, and the application's `open` runs.
    fn open(&mut self, now: u64, config: &WsConfig, io: &mut impl Io, app: &mut impl App<S>) {
        self.set_phase(Phase::Open);
        self.last_frame = now as u32;
        io.set_idle_timeout(config.idle_timeout);
        if let Some(state) = self.app.as_mut() {
            app.open(state);
        }
    }

    /// Decodes frames from `data`; returns the bytes consumed.
    fn frames(
        &mut self,
        now: u64,
        data: &mut [u8],
        config: &WsConfig,
        io: &mut impl Io,
        app: &mut impl App<S>,
    ) -> usize {
        let role = self.role();
        let deflate = self.bits & DEFLATE != 0;
        let inflate_context = self.bits & INFLATE_CONTEXT != 0;
        // The peer's context: taken out of the connection at this read's first compressed
        // message, given back after the read.
        let mut history: Option<History> = None;
        let Session {
            decoder,
            app: state,
            ..
        } = self;
        let Some(state) = state.as_mut() else {
            return data.len();
        };
        let mut peer_close = None;
        let mut inflate_error = None;
        let limits = &config.limits;
        let streaming = config.deliver_fragments;
        let on_event = |ev: Event<'_>| {
            match ev {
                Event::Compressed { text, data } => {
                    if inflate_context && history.is_none() {
                        // Always there while the connection is open: lost, the message
                        // inflates against an empty context and fails (1007) if it refers back.
                        let taken = io.take_received_history();
                        debug_assert!(taken.is_some(), "the inbound context is missing");
                        history = Some(taken.unwrap_or_else(|| History::new(15)));
                    }
                    let limit = limits.max_message_size;
                    inflate_error = deliver_inflated(
                        data,
                        text,
                        limit,
                        streaming,
                        history.as_mut(),
                        app,
                        state,
                    );
                    if inflate_error.is_some() {
                        return Flow::Stop;
                    }
                }
                Event::Text(t) => app.message(state, Message::Text(t)),
                Event::Binary(b) => app.message(state, Message::Binary(b)),
                Event::Fragment {
                    text,
                    data,
                    first,
                    last,
                } => app.fragment(
                    state,
                    Fragment {
                        text,
                        data,
                        first,
                        last,
                    },
                ),
                Event::Ping(p) => io.pong(p),
                Event::Pong(p) => app.pong(state, p),
                Event::Close { code, .. } => peer_close = Some(code),
            }
            Flow::Continue
        };
        let result = if deflate {
            decoder.decode_deflate(data, role, limits, streaming, on_event)
        } else if streaming {
            decoder.decode_fragments(data, role, limits, on_event)
        } else {
            decoder.decode(data, role, limits, on_event)
        };
        if let Some(history) = history {
            io.put_received_history(history);
        }
        let result = match (result, inflate_error) {
            (Ok(_), Some(e)) => Err(e),
            (r, _) => r,
        };
        match result {
            Ok(d) => {
                if d.frames > 0 {
                    // Whole frames prove the peer is alive; trickled bytes do not.
                    self.last_frame = now as u32;
                    self.set_flag(PING_OUT, false);
                }
                if let Some(code) = peer_close {
                    self.close_code = code.unwrap_or(CloseCode::Status).into();
                    self.set_phase(Phase::Done);
                    // Answer the close (unless ours is already out), then close the transport:
                    // the server closes TCP first (RFC 6455 §7.1.1).
                    io.send_close(code, "");
                    io.close();
                    return data.len();
                }
                d.consumed
            }
            Err(e) => {
                self.fail(io, e);
                data.len()
            }
        }
    }

    /// Fails the connection: a close frame with the error's code, then the transport closes.
    fn fail(&mut self, io: &mut impl Io, e: ProtocolError) {
        tracing::debug!(error = %e, "websocket protocol error");
        self.close_code = e.close_code().into();
        self.set_phase(Phase::Done);
        io.send_close(Some(e.close_code()), e.reason());
        io.close();
    }

    /// The idle (read) deadline passed at `now`: the handshake took too long (a server answers
    /// 408), our close went unanswered, the heartbeat's ping went unanswered (a close frame
    /// with 1001 goes out first), or it is time to ping, or to wait for the rest of the idle
    /// time since the last frame.
    pub(crate) fn on_timeout(
        &mut self,
        now: u64,
        config: &WsConfig,
        io: &mut impl Io,
    ) -> IdleAction {
        match self.phase() {
            // The request did not arrive in time: say so in HTTP (the client's own handshake
            // timeout has no one to tell).
            Phase::Handshake => {
                let resp = HttpResponse::new(408);
                io.send_http(resp.status(), resp.head().as_bytes(), resp.body_bytes());
                return IdleAction::Close;
            }
            Phase::ClientHandshake | Phase::Done => return IdleAction::Close,
            Phase::Open => {}
        }
        if io.close_sent() {
            return IdleAction::Close; // our close went unanswered
        }
        if self.bits & PING_OUT != 0 {
            if io.take_write_progress() {
                // No frame since the ping, but the peer took our bytes meanwhile: it is alive,
                // only slow, and the ping may still wait behind the data it is reading.
                return IdleAction::Wait(config.pong_timeout);
            }
            // No frame and no progress for a whole pong_timeout: tell a peer that is there
            // after all why it goes (it is reported as 1006, as no close frame came back).
            io.send_close(Some(CloseCode::Away), "no answer to ping");
            return IdleAction::Close;
        }
        let Some(idle) = config.idle_timeout else {
            return IdleAction::Close;
        };
        let idle_ms = timeout_ms(Some(idle));
        let since = (now as u32).wrapping_sub(self.last_frame);
        if since < idle_ms {
            return IdleAction::Wait(Duration::from_millis(u64::from(idle_ms - since)));
        }
        if !io.ping() {
            return IdleAction::Close;
        }
        // Progress counts from here on (only bytes that waited for a full socket count).
        io.take_write_progress();
        self.set_flag(PING_OUT, true);
        IdleAction::Wait(config.pong_timeout)
    }

    /// The engine shuts down: an open WebSocket says 1001 Going Away and waits (bounded by
    /// the shutdown deadline) for the peer's answer; anything else closes at once.
    pub(crate) fn on_shutdown(&mut self, io: &mut impl Io) -> ShutdownAction {
        if self.phase() != Phase::Open {
            return ShutdownAction::Close;
        }
        if self.close_code == 0 {
            self.close_code = CloseCode::Away.into();
        }
        io.send_close(Some(CloseCode::Away), "shutting down");
        if io.close_sent() {
            ShutdownAction::Wait // ours, or one the application queued before
        } else {
            ShutdownAction::Close
        }
    }

    /// The connection closed for `cause`: what to tell the application.
    pub(crate) fn on_closed(self, cause: CloseReason) -> Ended<S> {
        let Some(state) = self.app else {
            return Ended::Nothing;
        };
        if self.bits & PHASE == Phase::ClientHandshake as u8 {
            let error = match cause {
                CloseReason::ReadTimeout => ConnectError::Timeout,
                _ => ConnectError::Closed,
            };
            return Ended::ConnectFailed(state, error);
        }
        let code = match self.close_code {
            0 => CloseCode::Abnormal,
            c => CloseCode::from(c),
        };
        Ended::Closed(state, WsClose { code, cause })
    }
}

/// Inflates a compressed message (on top of `history` with context takeover) and delivers
/// it; the protocol error that fails the connection, if any. Kept out of line: the session's
/// read path without compression does not pay for its size (callgrind).
#[inline(never)]
fn deliver_inflated<S>(
    data: &[u8],
    text: bool,
    limit: usize,
    streaming: bool,
    history: Option<&mut History>,
    app: &mut impl App<S>,
    state: &mut S,
) -> Option<ProtocolError> {
    let delivered = deflate::inflate_message(data, limit, history, |m| {
        let msg = if text {
            match super::utf8::from_utf8(m) {
                Some(t) => Message::Text(t),
                None => return Err(ProtocolError::InvalidUtf8),
            }
        } else {
            Message::Binary(m)
        };
        if streaming {
            let fragment = Fragment {
                text,
                data: m,
                first: true,
                last: true,
            };
            app.fragment(state, fragment);
        } else {
            app.message(state, msg);
        }
        Ok(())
    });
    match delivered {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(e),
        Err(InflateError::TooBig) => Some(ProtocolError::MessageTooBig),
        Err(InflateError::Corrupt) => Some(ProtocolError::InvalidCompressedData),
    }
}

#[cfg(test)]
mod tests;
