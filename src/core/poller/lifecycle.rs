//! A connection's life on its poller: adopt (register), connect, open, close (flush, FIN,
//! linger), free; and the engine's shutdown.

use std::io;
use std::sync::atomic::Ordering;

use mio::{Interest, Token};
use tracing::{debug, warn};

use super::{
    Adopt, Command, Connection, Entry, PackedStage, Poller, Stage, StageDeadline, TimerKind,
    guarded, shutdown_reason,
};
use crate::core::conn::{CloseReason, Conn, Phase};
use crate::core::handler::{Handler, ShutdownAction};
use crate::core::stats::count;
use crate::os;

impl<H: Handler> Poller<H> {
    /// Registers a new connection with this poller; an accepted one opens at once, a dialed
    /// one waits for its connect.
    pub(super) fn adopt(&mut self, adopt: Adopt) {
        let clock = self.shared.common.clock;
        let connect_deadline = adopt.connect_deadline.map(|at| clock.deadline_at(at));
        let dialed = connect_deadline.is_some();
        let conn = Conn::from_shared(adopt.conn);
        if self.shutdown_deadline.is_some() {
            self.reject(conn, dialed, "engine is shutting down");
            return;
        }
        let stage = match connect_deadline {
            Some(deadline) => Stage::Connecting {
                deadline: StageDeadline::new(self.now, deadline),
            },
            None => Stage::Open,
        };
        let handle = conn.clone();
        let Some(token) = self.conns.insert_with(|_| Connection {
            conn: handle,
            user: None,
            inbound: Default::default(),
            stage_bits: PackedStage::pack(stage),
            generation: 0, // set by the slots
        }) else {
            self.reject(conn, dialed, "too many connections on one poller");
            return;
        };
        conn.shared.token.store(token, Ordering::Relaxed);
        let mut io = conn.shared.lock();
        // A connection the io_uring backend receives for needs epoll only for writability.
        let interest = if self.ring_reads(io.coded) {
            Interest::WRITABLE
        } else {
            Interest::READABLE | Interest::WRITABLE
        };
        let registered = match io.transport.socket_mut() {
            Some(socket) => self
                .poll
                .registry()
                .register(socket, Token(token), interest),
            None => Err(io::Error::new(
                io::ErrorKind::NotConnected,
                "socket already freed",
            )),
        };
        drop(io);
        if let Err(e) = registered {
            warn!(conn = %conn.id(), error = %e, "cannot register connection");
            self.conns.remove(token);
            self.reject(conn, dialed, "registration failed");
            return;
        }
        match stage {
            Stage::Connecting { deadline } => self.wheel.insert(
                deadline.at(self.now),
                Entry::new(token, TimerKind::Stage, 0),
            ),
            _ => self.open(token),
        }
    }

    /// True if a connection (with a codec or not) receives through the io_uring backend.
    fn ring_reads(&self, coded: bool) -> bool {
        #[cfg(netpoll_uring)]
        return self.reads_by_ring(coded);
        #[cfg(not(netpoll_uring))]
        return {
            let _ = coded;
            false
        };
    }

    /// A connection that never gets registered: undo its count and tell the dialer.
    fn reject(&mut self, conn: Conn, dialed: bool, why: &str) {
        self.queued_delta += conn.shared.lock().release();
        self.shared.common.release_connection();
        if dialed {
            count(&self.shared.stats.connect_failed, 1);
            let err = io::Error::new(io::ErrorKind::ConnectionAborted, why.to_string());
            let handler = &mut self.handler;
            guarded("on_connect_error", &conn, || {
                handler.on_connect_error(&conn, err)
            });
        }
    }

    /// The connection is established: arm the read deadline, run `on_open`, then flush
    /// anything written meanwhile.
    fn open(&mut self, token: usize) {
        let c = self.conns.get_mut(token).expect("open: a live connection");
        c.set_stage(Stage::Open);
        {
            let mut io = c.conn.shared.lock();
            io.read_deadline.touch(self.now);
            if let Some(at) = io.read_deadline.claim_entry() {
                self.wheel
                    .insert(at, Entry::new(token, TimerKind::Read, at));
            }
        }
        count(&self.shared.stats.opened, 1);
        debug!(conn = %c.conn.id(), peer = %c.conn.peer_addr(), poller = self.shared.index, "opened");
        let handler = &mut self.handler;
        let conn = &c.conn;
        match guarded("on_open", conn, || handler.on_open(conn)) {
            Some(state) => {
                c.user = Some(state);
                self.flush(token);
                #[cfg(netpoll_uring)]
                if self.stage(token) == Some(Stage::Open) && self.reads_by_ring_token(token) {
                    self.arm_recv(token);
                }
            }
            // No state to hand to on_close: the close is counted and the socket freed.
            None => self.begin_close(token, CloseReason::HandlerPanic, false),
        }
    }

    /// A dialed connection's socket became writable: connected, failed, or spurious.
    pub(super) fn finish_connect(&mut self, token: usize) {
        let Some(c) = self.conns.get(token) else {
            return;
        };
        let result = {
            let io = c.conn.shared.lock();
            if io.phase == Phase::Closed {
                return; // closed while connecting; the queued close request fails the dial
            }
            let Some(socket) = io.transport.socket() else {
                return;
            };
            os::connect_result(socket)
        };
        match result {
            Ok(true) => {
                c.conn.shared.lock().phase = Phase::Open;
                self.open(token);
            }
            Ok(false) => {} // spurious wake-up; still connecting
            Err(e) => self.connect_failed(token, e),
        }
    }

    pub(super) fn connect_failed(&mut self, token: usize, err: io::Error) {
        let Some(c) = self.conns.remove(token) else {
            return;
        };
        #[cfg(netpoll_uring)]
        {
            let fd = c.conn.shared.lock().transport.raw_fd();
            self.cancel_requests(token, fd);
        }
        self.queued_delta += c.conn.shared.lock().release();
        let stats = &self.shared.stats;
        count(&stats.connect_failed, 1);
        count(&stats.freed, 1);
        self.shared.common.release_connection();
        debug!(conn = %c.conn.id(), error = %err, "dial failed");
        let handler = &mut self.handler;
        guarded("on_connect_error", &c.conn, || {
            handler.on_connect_error(&c.conn, err)
        });
    }

    /// Takes a connection out of the user's hands: refuses further writes, runs `on_close`,
    /// then frees it at once or after flushing queued bytes.
    pub(super) fn begin_close(&mut self, token: usize, reason: CloseReason, graceful: bool) {
        let shutting_down = self.shutdown_deadline.is_some();
        let Some(c) = self.conns.get_mut(token) else {
            return;
        };
        match c.stage() {
            Stage::Connecting { .. } => {
                let err = io::Error::new(
                    io::ErrorKind::ConnectionAborted,
                    format!("dial abandoned before it connected ({reason:?})"),
                );
                self.connect_failed(token, err);
                return;
            }
            Stage::Flushing { .. } | Stage::Lingering { .. } => {
                if !graceful {
                    self.free(token);
                }
                return;
            }
            Stage::Open => {}
        }
        let reason = if shutting_down {
            shutdown_reason(reason)
        } else {
            reason
        };
        {
            let mut io = c.conn.shared.lock();
            io.phase = Phase::Closed;
            if graceful {
                io.transport.close_notify();
            } else {
                io.transport.discard();
            }
            self.queued_delta += io.transport.account();
        }
        count(&self.shared.stats.closed[reason.index()], 1);
        self.shared.common.release_connection();
        debug!(conn = %c.conn.id(), ?reason, "closed");
        if let Some(state) = c.user.take() {
            let handler = &mut self.handler;
            let conn = &c.conn;
            guarded("on_close", conn, || handler.on_close(conn, state, reason));
        }
        c.inbound.clear();
        if !graceful {
            self.free(token);
            return;
        }
        let mut deadline = self.now + self.config().close_timeout.as_millis() as u64;
        if let Some(d) = self.shutdown_deadline {
            deadline = deadline.min(d);
        }
        let c = self.conns.get_mut(token).expect("still registered");
        c.set_stage(Stage::Flushing {
            deadline: StageDeadline::new(self.now, deadline),
        });
        self.wheel
            .insert(deadline, Entry::new(token, TimerKind::Stage, 0));
        self.flush(token);
    }

    /// Everything is flushed: send the FIN and wait for the peer's.
    pub(super) fn send_fin(&mut self, token: usize, deadline: StageDeadline) {
        let Some(c) = self.conns.get_mut(token) else {
            return;
        };
        c.conn.shared.lock().transport.shutdown_write();
        c.set_stage(Stage::Lingering { deadline });
        // The peer's FIN may already be queued; its edge may have fired while we flushed.
        self.discard_input(token);
        // Shutting down, do not wait on peers that keep their side open: with the receive
        // buffer drained, closing sends our FIN after the queued data (no reset), and the
        // kernel finishes delivering it.
        if self.shutdown_deadline.is_some() && self.conns.contains(token) {
            self.free(token);
        }
    }

    /// Closes the descriptor and forgets the connection.
    pub(super) fn free(&mut self, token: usize) {
        let Some(c) = self.conns.remove(token) else {
            return;
        };
        self.queued_delta += c.conn.shared.lock().release();
        count(&self.shared.stats.freed, 1);
        if self
            .shared
            .common
            .accept_paused
            .swap(false, Ordering::AcqRel)
        {
            for p in self.all.iter() {
                p.send(Command::ResumeAccept);
            }
        }
    }

    /// Frees every connection (the shutdown deadline passed, or the poller stops).
    pub(super) fn free_all(&mut self) {
        for token in self.conns.tokens() {
            match self.stage(token) {
                Some(Stage::Open | Stage::Connecting { .. }) => {
                    self.begin_close(token, CloseReason::Shutdown, false)
                }
                Some(Stage::Flushing { .. }) => {
                    count(&self.shared.stats.close_flush_timeouts, 1);
                    self.free(token);
                }
                Some(Stage::Lingering { .. }) => self.free(token),
                None => {}
            }
        }
    }

    /// The engine shuts down: stop accepting, drop user timers, and close every connection
    /// (gracefully, or by the handler's own goodbye) by `deadline`.
    pub(super) fn start_shutdown(&mut self, deadline: u64) {
        if self.shutdown_deadline.is_some() {
            return;
        }
        debug!(poller = self.shared.index, "shutting down");
        self.shutdown_deadline = Some(deadline);
        self.drop_timers();
        self.listeners.clear();
        self.accept_resume_at = None;
        for token in self.conns.tokens() {
            match self.stage(token) {
                Some(Stage::Open) => {
                    let said =
                        self.with_state(token, "on_shutdown", |h, conn, s| h.on_shutdown(conn, s));
                    if let Some(Some(ShutdownAction::Close)) = said {
                        self.begin_close(token, CloseReason::Shutdown, true)
                    }
                }
                Some(Stage::Connecting { .. }) => {
                    self.begin_close(token, CloseReason::Shutdown, true)
                }
                _ => {}
            }
        }
    }
}
