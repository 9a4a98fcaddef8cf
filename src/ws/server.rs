//! The engine [`Handler`] that runs the WebSocket protocol for a [`WsHandler`].

use std::sync::Arc;
use std::sync::atomic::Ordering;

use tracing::debug;

use super::client::{self, Clients, ConnectError, Pending};
use super::conn::HANDSHAKING;
use super::conn::{Message, WsConn};
use super::frame::{Decoder, Event, Flow, ProtocolError, Role};
use super::handshake::{self, HttpResponse, Parsed};
use super::{Fragment, Upgrade, WsClose, WsConfig, WsHandler};
use crate::core::conn::{CloseReason, Conn, Gate};
use crate::core::handler::{Handler, IdleAction, ShutdownAction};
use crate::core::transport::Payload;

/// Where a connection is in the protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for the HTTP upgrade request.
    Handshake,
    /// A connection we dialed, waiting for the server's `101`.
    ClientHandshake,
    /// Frames flow.
    Open,
    /// The peer's close frame arrived or we failed the connection: input is ignored while the
    /// TCP connection closes.
    Done,
}

/// Per-connection protocol state, kept by the poller (16 bytes plus the user's state).
pub(crate) struct WsState<S> {
    phase: Phase,
    /// We dialed this connection: we mask what we send and expect unmasked frames.
    client: bool,
    /// A heartbeat ping is out and nothing has come back yet.
    ping_out: bool,
    /// The close code to report (0 until one is known).
    close_code: u16,
    decoder: Decoder,
    user: Option<S>,
}

impl<S> WsState<S> {
    fn ws(&self, conn: &Conn) -> WsConn {
        WsConn::with_role(conn.clone(), self.client)
    }

    fn role(&self) -> Role {
        if self.client {
            Role::Client
        } else {
            Role::Server
        }
    }
}

pub(crate) struct Adapter<H: WsHandler> {
    user: H,
    config: Arc<WsConfig>,
    clients: Arc<Clients<H::State>>,
}

impl<H: WsHandler> Adapter<H> {
    pub(crate) fn new(user: H, config: Arc<WsConfig>, clients: Arc<Clients<H::State>>) -> Self {
        Adapter {
            user,
            config,
            clients,
        }
    }

    /// Takes a dialed connection's pending handshake out of the shared table.
    fn take_pending(&self, conn: &Conn) -> Option<Pending<H::State>> {
        let p = self
            .clients
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&conn.id());
        if p.is_some() {
            self.clients.count.fetch_sub(1, Ordering::AcqRel);
        }
        p
    }

    /// A dialed connection failed before it became a WebSocket.
    fn connect_failed(&mut self, conn: &Conn, error: ConnectError) {
        if let Some(p) = self.take_pending(conn) {
            debug!(conn = %conn.id(), %error, "websocket connect failed");
            self.user.on_connect_error(p.state, error);
        }
    }

    /// Reads the server's response to our upgrade request; returns the bytes it used, or
    /// `None` while it is incomplete.
    fn client_handshake(
        &mut self,
        conn: &Conn,
        st: &mut WsState<H::State>,
        data: &[u8],
    ) -> Option<usize> {
        let checked = {
            let pending = self
                .clients
                .pending
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            let p = pending.get(&conn.id())?;
            client::check_response(data, &p.accept, &p.protocols)
        };
        let error = match checked {
            Ok(client::Response::Partial) if data.len() <= self.config.max_handshake_size => {
                return None;
            }
            Ok(client::Response::Partial) => ConnectError::Handshake("response too large"),
            Ok(client::Response::Upgraded { len, .. }) => {
                let pending = self.take_pending(conn)?;
                conn.with_layer(|bits, _, _| *bits &= !HANDSHAKING);
                self.open(conn, st, pending.state);
                return Some(len);
            }
            Err(e) => e,
        };
        st.phase = Phase::Done;
        self.connect_failed(conn, error);
        conn.abort();
        Some(data.len())
    }

    /// Handles the upgrade request at the start of `data`; returns the bytes it used, or
    /// `None` while the request is incomplete.
    fn handshake(&mut self, conn: &Conn, st: &mut WsState<H::State>, data: &[u8]) -> Option<usize> {
        let mut headers = [httparse::EMPTY_HEADER; handshake::MAX_HEADERS];
        let too_big = HttpResponse::new(431);
        let (request, len) = match handshake::parse_request(data, &mut headers, conn.peer_addr()) {
            Parsed::Partial if data.len() > self.config.max_handshake_size => {
                return Some(refuse(conn, st, &too_big, data));
            }
            Parsed::Partial => return None,
            Parsed::Invalid(resp) => return Some(refuse(conn, st, &resp, data)),
            Parsed::Request { len, .. } if len > self.config.max_handshake_size => {
                return Some(refuse(conn, st, &too_big, data));
            }
            Parsed::Request { request, len } => (request, len),
        };
        let key = match request
            .is_upgrade()
            .then(|| handshake::check_upgrade(&request))
        {
            Some(Err(resp)) => return Some(refuse(conn, st, &resp, data)),
            Some(Ok(key)) => Some(key),
            None => None,
        };
        match (self.user.on_request(&request), key) {
            (Upgrade::Accept(accept), Some(key)) => {
                let resp =
                    handshake::accept_response(key, accept.protocol.as_deref(), &accept.headers);
                let _ = conn.write_slice(resp.as_bytes());
                self.open(conn, st, accept.state);
                Some(len)
            }
            (Upgrade::Accept(_), None) => {
                let resp = HttpResponse::new(426)
                    .header("Upgrade", "websocket")
                    .header("Sec-WebSocket-Version", "13");
                Some(refuse(conn, st, &resp, data))
            }
            (Upgrade::Respond(resp), _) => Some(refuse(conn, st, &resp, data)),
        }
    }

    /// The handshake is done (either side): the connection carries frames from now on, its
    /// read deadline becomes the heartbeat's, and the user's `on_open` runs.
    fn open(&mut self, conn: &Conn, st: &mut WsState<H::State>, state: H::State) {
        st.phase = Phase::Open;
        st.user = Some(state);
        conn.set_read_timeout(self.config.idle_timeout);
        let ws = st.ws(conn);
        if let Some(state) = st.user.as_mut() {
            self.user.on_open(&ws, state);
        }
    }

    /// Decodes frames from `data`; returns the bytes consumed.
    fn frames(&mut self, conn: &Conn, st: &mut WsState<H::State>, data: &mut [u8]) -> usize {
        let ws = st.ws(conn);
        let role = st.role();
        let Some(state) = st.user.as_mut() else {
            return data.len();
        };
        let user = &mut self.user;
        let mut peer_close = None;
        let on_event = |ev: Event<'_>| {
            match ev {
                Event::Text(t) => user.on_message(&ws, state, Message::Text(t)),
                Event::Binary(b) => user.on_message(&ws, state, Message::Binary(b)),
                Event::Fragment {
                    text,
                    data,
                    first,
                    last,
                } => user.on_fragment(
                    &ws,
                    state,
                    Fragment {
                        text,
                        data,
                        first,
                        last,
                    },
                ),
                Event::Ping(p) => {
                    let _ = ws.pong(p);
                }
                Event::Pong(p) => user.on_pong(&ws, state, p),
                Event::Close { code, .. } => peer_close = Some(code),
            }
            Flow::Continue
        };
        let limits = &self.config.limits;
        let result = if self.config.deliver_fragments {
            st.decoder.decode_fragments(data, role, limits, on_event)
        } else {
            st.decoder.decode(data, role, limits, on_event)
        };
        match result {
            Ok(d) => {
                if d.frames > 0 {
                    // Whole frames prove the peer is alive; trickled bytes do not.
                    st.ping_out = false;
                    conn.touch_read();
                }
                if let Some(code) = peer_close {
                    st.close_code = code.unwrap_or(1005);
                    st.phase = Phase::Done;
                    // Answer the close (unless ours is already out), then close TCP: the
                    // server closes first (RFC 6455 §7.1.1).
                    let _ = match code {
                        Some(c) => ws.send_close(c, ""),
                        None => ws.send_close_empty(),
                    };
                    conn.close();
                    return data.len();
                }
                d.consumed
            }
            Err(e) => {
                self.fail(conn, st, e);
                data.len()
            }
        }
    }

    /// Fails the connection: close frame with the error's code, then TCP close.
    fn fail(&mut self, conn: &Conn, st: &mut WsState<H::State>, e: ProtocolError) {
        debug!(conn = %conn.id(), error = %e, "websocket protocol error");
        st.close_code = e.code;
        st.phase = Phase::Done;
        let _ = st.ws(conn).send_close(e.code, e.reason);
        conn.close();
    }
}

/// Answers a request that does not become a WebSocket with `resp`, closes, and ignores the
/// rest of the input; returns the bytes used (all of `data`).
fn refuse<S>(conn: &Conn, st: &mut WsState<S>, resp: &HttpResponse, data: &[u8]) -> usize {
    respond(conn, resp);
    st.phase = Phase::Done;
    data.len()
}

/// Sends a plain HTTP response (head and body in one frame-less write) and closes.
fn respond(conn: &Conn, resp: &HttpResponse) {
    let head = resp.head();
    let _ = conn.write_gated(
        head.as_bytes(),
        Payload::Shared(resp.body_bytes().clone()),
        Gate::NONE,
        None,
    );
    conn.close();
}

impl<H: WsHandler> Handler for Adapter<H> {
    type State = WsState<H::State>;

    fn on_open(&mut self, conn: &Conn) -> Self::State {
        let client = self.clients.count.load(Ordering::Acquire) > 0
            && self
                .clients
                .pending
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .contains_key(&conn.id());
        WsState {
            phase: if client {
                Phase::ClientHandshake
            } else {
                Phase::Handshake
            },
            client,
            ping_out: false,
            close_code: 0,
            decoder: Decoder::new(),
            user: None,
        }
    }

    fn on_data(&mut self, conn: &Conn, st: &mut Self::State, data: &mut [u8]) -> usize {
        match st.phase {
            Phase::Handshake => match self.handshake(conn, st, data) {
                None => 0,
                Some(used) if st.phase == Phase::Open => {
                    // Frames may follow the request in the same read.
                    used + self.frames(conn, st, &mut data[used..])
                }
                Some(used) => used,
            },
            Phase::ClientHandshake => match self.client_handshake(conn, st, data) {
                None => 0,
                Some(used) if st.phase == Phase::Open => {
                    used + self.frames(conn, st, &mut data[used..])
                }
                Some(used) => used,
            },
            Phase::Open => self.frames(conn, st, data),
            Phase::Done => data.len(),
        }
    }

    fn on_connect_error(&mut self, conn: &Conn, error: std::io::Error) {
        self.connect_failed(conn, ConnectError::Io(error));
    }

    fn on_close(&mut self, conn: &Conn, st: Self::State, reason: CloseReason) {
        super::group::leave_all(&st.ws(conn));
        if st.phase == Phase::ClientHandshake {
            let error = match reason {
                CloseReason::ReadTimeout => ConnectError::Timeout,
                _ => ConnectError::Closed,
            };
            self.connect_failed(conn, error);
            return;
        }
        let ws = st.ws(conn);
        if let Some(state) = st.user {
            let code = match st.close_code {
                0 => 1006,
                c => c,
            };
            self.user.on_close(
                &ws,
                state,
                WsClose {
                    code,
                    cause: reason,
                },
            );
        }
    }

    fn on_drained(&mut self, conn: &Conn, st: &mut Self::State) {
        let ws = st.ws(conn);
        if let Some(state) = st.user.as_mut() {
            self.user.on_drained(&ws, state);
        }
    }

    fn on_idle(&mut self, conn: &Conn, st: &mut Self::State) -> IdleAction {
        let ws = st.ws(conn);
        if st.phase != Phase::Open || st.ping_out || ws.close_sent() {
            // Handshake too slow, heartbeat unanswered, or close handshake unanswered.
            return IdleAction::Close;
        }
        if ws.ping(b"").is_err() {
            return IdleAction::Close;
        }
        st.ping_out = true;
        IdleAction::Wait(self.config.pong_timeout)
    }

    fn on_shutdown(&mut self, conn: &Conn, st: &mut Self::State) -> ShutdownAction {
        if st.phase != Phase::Open {
            return ShutdownAction::Close;
        }
        // 1001 Going Away; the peer's answering close frame closes the connection, the
        // engine's shutdown deadline bounds the wait.
        if st.close_code == 0 {
            st.close_code = 1001;
        }
        let ws = st.ws(conn);
        let _ = ws.send_close(1001, "server shutting down");
        if ws.close_sent() {
            ShutdownAction::Wait // ours, or one the application queued before
        } else {
            ShutdownAction::Close
        }
    }
}
