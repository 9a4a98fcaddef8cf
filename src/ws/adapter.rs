//! The glue between the engine and the sans-IO [`Session`]: an engine [`Handler`] whose
//! per-connection state is the session, an [`Io`] that carries the session's actions out on
//! the connection, and an [`App`] that forwards its events to the user's [`WsHandler`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use super::client::{ClientHello, ConnectError, Pending};
use super::conn::{HANDSHAKING, Message, WsAttachment, WsConn};
use super::deflate::{DeflateParams, History};
use super::frame::CloseCode;
use super::handshake::Request;
use super::session::{App, Ended, Io, Session};
use super::stats::WsCounters;
use super::{Fragment, Upgrade, WsConfig, WsHandler, group};
use crate::core::conn::{CloseReason, Conn, Gate};
use crate::core::handler::{Handler, IdleAction, ShutdownAction};
use crate::core::transport::Payload;

pub(crate) struct Adapter<H: WsHandler> {
    user: H,
    config: Arc<WsConfig>,
    counters: Arc<WsCounters>,
}

impl<H: WsHandler> Adapter<H> {
    pub(crate) fn new(user: H, config: Arc<WsConfig>, counters: Arc<WsCounters>) -> Self {
        Adapter {
            user,
            config,
            counters,
        }
    }
}

/// The session's actions, on one connection.
struct ConnIo<'a> {
    ws: &'a WsConn,
    counters: &'a WsCounters,
}

impl Io for ConnIo<'_> {
    fn peer_addr(&self) -> SocketAddr {
        self.ws.peer_addr()
    }

    fn send_http(&mut self, status: u16, head: &[u8], body: &Bytes) {
        self.counters.response(status);
        let _ = self
            .ws
            .conn()
            .write_gated(head, Payload::Shared(body.clone()), Gate::NONE, None);
    }

    fn pong(&mut self, payload: &[u8]) {
        let _ = self.ws.pong(payload);
    }

    fn ping(&mut self) -> bool {
        self.ws.ping(b"").is_ok()
    }

    fn send_close(&mut self, code: Option<CloseCode>, reason: &str) -> bool {
        self.ws.send_close(code, reason).is_ok()
    }

    fn close_sent(&mut self) -> bool {
        self.ws.close_sent()
    }

    fn with_hello<R>(&mut self, f: impl FnOnce(&ClientHello) -> R) -> Option<R> {
        self.ws
            .conn()
            .with_layer(|_, attachment, _| attachment.get_mut::<ClientHello>().map(|h| f(h)))
    }

    fn upgraded(&mut self) {
        self.ws.conn().with_layer(|bits, attachment, _| {
            *bits &= !HANDSHAKING;
            attachment.take::<ClientHello>();
        });
    }

    fn deflate_agreed(&mut self, params: &DeflateParams, server: bool) {
        self.ws.conn().with_layer(|bits, attachment, _| {
            let send = params.send_window(server);
            let send_takeover = send.is_some_and(|(_, reset)| !reset);
            *bits |= super::conn::deflate_bits(send.map(|(w, _)| w), send_takeover);
            if send_takeover || !params.receive_resets(server) {
                let ws = attachment.get_or_insert_with(WsAttachment::default);
                let contexts = ws.contexts.get_or_insert_with(Default::default);
                if let Some((window, false)) = send {
                    contexts.sent = Some(History::new(window));
                }
                if !params.receive_resets(server) {
                    contexts.received = Some(History::new(params.receive_window(server)));
                }
            }
        });
    }

    fn take_received_history(&mut self) -> Option<History> {
        self.ws.conn().with_layer(|_, attachment, _| {
            let ws = attachment.get_mut::<WsAttachment>()?;
            ws.contexts.as_mut()?.received.take()
        })
    }

    fn put_received_history(&mut self, history: History) {
        self.ws.conn().with_layer(|_, attachment, open| {
            if open {
                let ws = attachment.get_or_insert_with(WsAttachment::default);
                ws.contexts.get_or_insert_with(Default::default).received = Some(history);
            }
        });
    }

    fn take_write_progress(&mut self) -> bool {
        self.ws.conn().take_write_progress()
    }

    fn set_idle_timeout(&mut self, timeout: Option<Duration>) {
        self.ws.conn().set_read_timeout(timeout);
    }

    fn close(&mut self) {
        self.ws.conn().close();
    }

    fn abort(&mut self) {
        self.ws.abort();
    }
}

/// The session's events, to the user's handler.
struct UserApp<'a, H>(&'a mut H, &'a WsConn);

impl<H: WsHandler> App<H::State> for UserApp<'_, H> {
    fn request(&mut self, req: &Request<'_>) -> Upgrade<H::State> {
        self.0.on_request(req)
    }

    fn open(&mut self, state: &mut H::State) {
        self.0.on_open(self.1, state);
    }

    fn message(&mut self, state: &mut H::State, msg: Message<'_>) {
        self.0.on_message(self.1, state, msg);
    }

    fn fragment(&mut self, state: &mut H::State, fragment: Fragment<'_>) {
        self.0.on_fragment(self.1, state, fragment);
    }

    fn pong(&mut self, state: &mut H::State, payload: &[u8]) {
        self.0.on_pong(self.1, state, payload);
    }

    fn connect_failed(&mut self, state: H::State, error: ConnectError) {
        tracing::debug!(conn = %self.1.id(), %error, "websocket connect failed");
        self.0.on_connect_error(state, error);
    }
}

impl<H: WsHandler> Handler for Adapter<H> {
    type State = Session<H::State>;

    fn on_open(&mut self, conn: &Conn) -> Self::State {
        // A connection from `WsEngine::connect` carries its pending handshake: the state moves
        // into the session, the hello stays for the check of the server's 101.
        let client = conn.with_layer(|_, attachment, _| {
            let Pending { state, hello } = attachment.take::<Pending<H::State>>()?;
            attachment.get_or_insert_with(|| hello);
            Some(state)
        });
        match client {
            Some(state) => Session::client(state),
            None => Session::server(),
        }
    }

    fn on_data(&mut self, conn: &Conn, session: &mut Self::State, data: &mut [u8]) -> usize {
        let ws = WsConn::with_role(conn.clone(), session.is_client());
        let now = conn.now_ms();
        let mut app = UserApp(&mut self.user, &ws);
        let mut io = ConnIo {
            ws: &ws,
            counters: &self.counters,
        };
        session.on_input(now, data, &self.config, &mut io, &mut app)
    }

    fn on_connect_error(&mut self, conn: &Conn, error: std::io::Error) {
        let pending = conn.with_layer(|_, attachment, _| attachment.take::<Pending<H::State>>());
        if let Some(p) = pending {
            tracing::debug!(conn = %conn.id(), %error, "websocket connect failed");
            self.user.on_connect_error(p.state, ConnectError::Io(error));
        }
    }

    fn on_close(&mut self, conn: &Conn, session: Self::State, reason: CloseReason) {
        let ws = WsConn::with_role(conn.clone(), session.is_client());
        group::leave_all(&ws);
        match session.on_closed(reason) {
            Ended::Closed(state, close) => self.user.on_close(&ws, state, close),
            Ended::ConnectFailed(state, error) => {
                // A wss:// connect that failed in TLS says why (a certificate, an alert).
                let error = match crate::tls::failure(conn) {
                    Some(tls) => ConnectError::Tls(tls),
                    None => error,
                };
                UserApp(&mut self.user, &ws).connect_failed(state, error)
            }
            Ended::Nothing => {}
        }
    }

    fn on_drained(&mut self, conn: &Conn, session: &mut Self::State) {
        let ws = WsConn::with_role(conn.clone(), session.is_client());
        if let Some(state) = session.app_mut() {
            self.user.on_drained(&ws, state);
        }
    }

    fn on_idle(&mut self, conn: &Conn, session: &mut Self::State) -> IdleAction {
        let ws = WsConn::with_role(conn.clone(), session.is_client());
        let mut io = ConnIo {
            ws: &ws,
            counters: &self.counters,
        };
        session.on_timeout(conn.now_ms(), &self.config, &mut io)
    }

    fn on_shutdown(&mut self, conn: &Conn, session: &mut Self::State) -> ShutdownAction {
        let ws = WsConn::with_role(conn.clone(), session.is_client());
        let mut io = ConnIo {
            ws: &ws,
            counters: &self.counters,
        };
        session.on_shutdown(&mut io)
    }
}
