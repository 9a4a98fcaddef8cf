//! The io_uring backend of the poller loop (Linux, opt-in): receives and the poller's sends go
//! through a ring; epoll (mio) still reports everything else.
//!
//! - Each open plain connection has a multishot `recv` armed into the poller's provided
//!   buffers; its completions are delivered to the handler straight from the buffer, which goes
//!   back to the ring after the callback. Connections with a codec (TLS) read through epoll as
//!   before.
//! - The poller's flush hands a connection's whole queue to one `send`/`sendmsg` and keeps it
//!   until the completion (one send in flight per connection keeps the bytes in order). The
//!   bytes count as pending meanwhile, so writers on other threads queue behind them.
//! - The epoll descriptor itself is polled through the ring: one `io_uring_enter` per loop
//!   iteration submits the iteration's requests and waits for everything.
//!
//! A completion's `user_data` says what it is: a connection token (a receive; tokens are below
//! 2^63), [`SEND`] | slot of the send, or one of the two markers.

use std::io::{self, IoSlice};
use std::os::fd::AsRawFd;

use super::{Poller, Stage, context};
use crate::core::conn::CloseReason;
use crate::core::handler::Handler;
use crate::core::outbound::OutboundBuffer;
use crate::core::stats::count;
use crate::os::uring::{Completion, Uring};

use crate::os::uring::SEND;
const EPOLL: u64 = SEND | (1 << 62);
const CANCEL: u64 = EPOLL | 1;

/// Receive buffers per poller and their size.
const RECV_BUFFERS: u16 = 512;
const RECV_BUFFER_SIZE: u32 = 16 * 1024;
const SQ_ENTRIES: u32 = 1024;

/// The ring and what the poller keeps for it.
pub(super) struct UringState {
    ring: Uring<OutboundBuffer>,
    completions: Vec<Completion>,
    /// Connections whose receive ended for lack of buffers: re-armed after the iteration.
    starved: Vec<usize>,
    /// Paused connections whose receive was cancelled: re-armed when they resume.
    stopped: Vec<usize>,
    /// `io_uring_enter` calls made: what is pushed now is submitted by call `enters + 1`, and
    /// a send that completes in a later call had to wait for room.
    enters: u64,
    /// The epoll descriptor may hold more events than one poll fetched.
    epoll_pending: bool,
}

impl UringState {
    pub(super) fn new(epoll: &mio::Poll) -> io::Result<Box<UringState>> {
        let mut ring = Uring::new(SQ_ENTRIES, RECV_BUFFERS, RECV_BUFFER_SIZE)?;
        ring.push_poll_in(epoll.as_raw_fd(), EPOLL)?;
        Ok(Box::new(UringState {
            ring,
            completions: Vec::with_capacity(1024),
            starved: Vec::new(),
            stopped: Vec::new(),
            enters: 0,
            epoll_pending: true,
        }))
    }
}

impl<H: Handler> Poller<H> {
    /// One wait of the io_uring loop: submits, waits, handles completions, then polls epoll if
    /// it is readable.
    pub(super) fn wait_uring(&mut self, timeout: Option<std::time::Duration>) -> io::Result<()> {
        let u = self.uring.as_mut().expect("io_uring loop");
        let timeout = if u.epoll_pending {
            Some(std::time::Duration::ZERO)
        } else {
            timeout
        };
        u.enters += 1;
        u.ring.submit_and_wait(timeout)?;
        self.now = self.shared.common.clock.ms(std::time::Instant::now());
        context::set_now_ms(self.now);
        self.reap()
    }

    /// Submits what is pushed and handles what completed, without waiting (the write
    /// deadline's last look).
    pub(super) fn reap_now(&mut self) -> io::Result<()> {
        let u = self.uring.as_mut().expect("io_uring loop");
        u.enters += 1;
        u.ring.submit_and_wait(Some(std::time::Duration::ZERO))?;
        self.reap()
    }

    /// Handles the posted completions, then polls epoll if it is readable.
    fn reap(&mut self) -> io::Result<()> {
        let mut completions = {
            let u = self.uring.as_mut().expect("io_uring loop");
            let mut c = std::mem::take(&mut u.completions);
            u.ring.completions(&mut c);
            c
        };
        let mut epoll_ready = false;
        for c in completions.drain(..) {
            match c.user_data {
                EPOLL => {
                    epoll_ready = true;
                    if !c.more() {
                        let fd = self.poll.as_raw_fd();
                        self.ring().push_poll_in(fd, EPOLL)?;
                    }
                }
                CANCEL => {}
                ud if ud & SEND != 0 => self.send_done((ud & !SEND) as usize, c.result),
                token => self.recv_done(token as usize, c),
            }
        }
        self.uring.as_mut().expect("io_uring loop").completions = completions;
        let u = self.uring.as_mut().expect("io_uring loop");
        if epoll_ready || u.epoll_pending {
            if let Err(e) = self
                .poll
                .poll(&mut self.events, Some(std::time::Duration::ZERO))
                && e.kind() != io::ErrorKind::Interrupted
            {
                return Err(e);
            }
            let full = self.events.iter().count() >= self.events.capacity();
            self.uring.as_mut().expect("io_uring loop").epoll_pending = full;
            let mut events = std::mem::replace(&mut self.events, mio::Events::with_capacity(0));
            for ev in events.iter() {
                self.dispatch(ev);
            }
            events.clear();
            self.events = events;
        }
        Ok(())
    }

    fn ring(&mut self) -> &mut Uring<OutboundBuffer> {
        &mut self.uring.as_mut().expect("io_uring loop").ring
    }

    /// True if this connection reads through the ring (the backend is on and it has no codec).
    pub(super) fn reads_by_ring(&self, coded: bool) -> bool {
        self.uring.is_some() && !coded
    }

    /// [`reads_by_ring`](Self::reads_by_ring) for a live connection.
    pub(super) fn reads_by_ring_token(&self, token: usize) -> bool {
        self.uring.is_some()
            && self
                .conns
                .get(token)
                .is_some_and(|c| !c.conn.shared.lock().coded)
    }

    /// Arms the multishot receive of `token`.
    pub(super) fn arm_recv(&mut self, token: usize) {
        let Some(c) = self.conns.get(token) else {
            return;
        };
        let Some(fd) = c.conn.shared.lock().transport.raw_fd() else {
            return;
        };
        if let Err(e) = self.ring().push_recv(fd, token as u64) {
            tracing::error!(error = %e, "cannot arm a receive");
            self.begin_close(token, CloseReason::Io(e.kind()), false);
        }
    }

    /// Cancels the receive and any send of a connection about to be freed, before its
    /// descriptor closes (a request would hold the socket open, and a send in flight to a
    /// peer that never reads would never complete).
    pub(super) fn cancel_requests(&mut self, token: usize, fd: Option<std::os::fd::RawFd>) {
        let Some(u) = self.uring.as_mut() else {
            return;
        };
        u.stopped.retain(|&t| t != token);
        if let Some(fd) = fd
            && let Err(e) = u.ring.cancel_fd_now(fd, CANCEL)
        {
            tracing::error!(error = %e, "cannot cancel a closing connection's requests");
        }
    }

    /// Re-arms the receives that ran out of buffers (the buffers came back meanwhile).
    pub(super) fn rearm_starved(&mut self) {
        let Some(u) = self.uring.as_mut() else {
            return;
        };
        let starved = std::mem::take(&mut u.starved);
        for &token in &starved {
            if self.stage(token).is_some() {
                self.arm_recv(token);
            }
        }
        let mut starved = starved;
        starved.clear();
        self.uring.as_mut().expect("io_uring loop").starved = starved;
    }

    fn recv_done(&mut self, token: usize, c: Completion) {
        let bid = c.buffer();
        let result = c.result;
        let stage = self.stage(token);
        let rearm = match stage {
            None | Some(Stage::Connecting { .. }) => false,
            Some(Stage::Open) if result > 0 => {
                let n = result as usize;
                let bid = bid.expect("a receive with data names its buffer");
                self.deliver_received(token, bid, n);
                self.ring().recycle(bid);
                self.stage(token) == Some(Stage::Open) && !c.more()
            }
            Some(Stage::Flushing { .. } | Stage::Lingering { .. }) if result > 0 => {
                count(&self.shared.stats.bytes_in, result as u64);
                !c.more()
            }
            Some(stage) => {
                if let Some(bid) = bid {
                    self.ring().recycle(bid);
                }
                match -result {
                    0 => match stage {
                        Stage::Open => {
                            self.begin_close(token, CloseReason::PeerClosed, true);
                            false
                        }
                        Stage::Lingering { .. } => {
                            self.free(token);
                            false
                        }
                        _ => false, // a half-close while flushing: keep flushing
                    },
                    libc::ENOBUFS => {
                        self.uring
                            .as_mut()
                            .expect("io_uring loop")
                            .starved
                            .push(token);
                        false
                    }
                    // Cancelled for a pause (resuming arms it again) or a close.
                    libc::ECANCELED => false,
                    libc::EINTR | libc::EAGAIN => !c.more() && !self.read_paused(token),
                    errno => {
                        let kind = io::Error::from_raw_os_error(errno).kind();
                        if stage == Stage::Open {
                            self.begin_close(token, CloseReason::Io(kind), false);
                        } else {
                            self.free(token);
                        }
                        false
                    }
                }
            }
        };
        if let (None | Some(Stage::Connecting { .. }), Some(bid)) = (stage, bid) {
            self.ring().recycle(bid);
        } else if let (Some(Stage::Flushing { .. } | Stage::Lingering { .. }), Some(bid)) =
            (stage, bid)
            && result > 0
        {
            self.ring().recycle(bid);
        }
        if rearm && self.stage(token).is_some() {
            self.arm_recv(token);
        }
    }

    fn read_paused(&self, token: usize) -> bool {
        self.conns
            .get(token)
            .is_some_and(|c| c.conn.shared.lock().read_paused)
    }

    /// Hands `n` received bytes in buffer `bid` to the handler (behind any kept remainder); a
    /// paused connection keeps them as its remainder and its receive is cancelled.
    fn deliver_received(&mut self, token: usize, bid: u16, n: usize) {
        let max_inbound = self.config().max_inbound_bytes;
        let paused = {
            let Some(c) = self.conns.get(token) else {
                return;
            };
            let mut io = c.conn.shared.lock();
            if io.phase == crate::core::conn::Phase::Closed {
                return;
            }
            io.read_deadline.on_read(self.now);
            io.read_paused
        };
        count(&self.shared.stats.read_calls, 1);
        count(&self.shared.stats.bytes_in, n as u64);
        let u = self.uring.as_mut().expect("io_uring loop");
        let fresh = u.ring.buffer_mut(bid, n);
        if paused {
            let c = self.conns.get_mut(token).expect("checked above");
            if c.inbound.len() + n > max_inbound {
                self.begin_close(token, CloseReason::InboundOverflow, false);
            } else {
                c.inbound.extend_from_slice(fresh);
                if !u.stopped.contains(&token) {
                    u.stopped.push(token);
                    let _ = u.ring.push_cancel(token as u64, CANCEL);
                }
            }
            return;
        }
        let outcome = super::read::deliver_to(
            &mut self.conns,
            &mut self.handler,
            token,
            fresh,
            max_inbound,
        );
        self.after_deliver(token, outcome);
    }

    /// Reading was paused: cancel the receive (resuming arms it again).
    pub(super) fn stop_recv(&mut self, token: usize) {
        if !self.reads_by_ring_token(token) {
            return;
        }
        let u = self.uring.as_mut().expect("io_uring loop");
        if !u.stopped.contains(&token) {
            u.stopped.push(token);
            let _ = u.ring.push_cancel(token as u64, CANCEL);
        }
    }

    /// A paused connection resumed: deliver what it kept and receive again.
    pub(super) fn resume_recv(&mut self, token: usize) {
        let kept = self.conns.get(token).is_some_and(|c| !c.inbound.is_empty());
        if kept {
            let max_inbound = self.config().max_inbound_bytes;
            let outcome = super::read::deliver_to(
                &mut self.conns,
                &mut self.handler,
                token,
                &mut [],
                max_inbound,
            );
            self.after_deliver(token, outcome);
        }
        let u = self.uring.as_mut().expect("io_uring loop");
        let stopped = u.stopped.iter().position(|&t| t == token);
        if let Some(i) = stopped {
            u.stopped.swap_remove(i);
            if self.stage(token) == Some(Stage::Open) {
                self.arm_recv(token);
            }
        }
    }

    /// The ring's flush of `token`: hands its queue to one send unless one is in flight.
    pub(super) fn submit_send(&mut self, token: usize) {
        let Some(c) = self.conns.get(token) else {
            return;
        };
        let (queue, fd) = {
            let mut io = c.conn.shared.lock();
            let Some(fd) = io.transport.raw_fd() else {
                return;
            };
            match io.transport.take_for_send() {
                Some(q) => (q, fd),
                None => return,
            }
        };
        let u = self.uring.as_mut().expect("io_uring loop");
        let stamp = u.enters + 1;
        if let Err(e) = u.ring.send(fd, queue, token, stamp) {
            {
                tracing::error!(error = %e, "cannot submit a send");
                self.begin_close(token, CloseReason::Io(e.kind()), false);
            }
        }
    }

    fn send_done(&mut self, slot: usize, result: i32) {
        let u = self.uring.as_mut().expect("io_uring loop");
        let Some((token, stamp)) = u.ring.send_owner(slot) else {
            return;
        };
        // Completed in a later batch than the one that submitted it: it waited for room,
        // which only the peer reading makes.
        let waited = u.enters > stamp;
        let next_stamp = u.enters + 1;
        let live = self.conns.get(token);
        if result < 0 {
            drop(u.ring.finish(slot));
            if live.is_some() {
                let kind = io::Error::from_raw_os_error(-result).kind();
                self.begin_close(token, CloseReason::Io(kind), false);
            }
            return;
        }
        let n = result as usize;
        let left = u.ring.sent(slot, n);
        let mut delta = 0;
        let fd = live.and_then(|c| {
            let mut io = c.conn.shared.lock();
            io.transport.sent(n, left == 0);
            let pending = io.transport.pending() != 0;
            io.write_deadline
                .after_send(self.now, n > 0, waited, pending);
            delta = io.transport.account();
            io.transport.raw_fd()
        });
        self.queued_delta += delta;
        count(&self.shared.stats.write_calls, 1);
        count(&self.shared.stats.bytes_out, n as u64);
        match fd {
            Some(fd) if left > 0 => {
                if let Err(e) = u.ring.resend(slot, fd, next_stamp) {
                    tracing::error!(error = %e, "cannot submit a send");
                }
            }
            _ => {
                let mut queue = u.ring.finish(slot);
                context::with_tail_pool(|pool| {
                    queue.release_into(pool);
                });
                if live.is_some() {
                    // Send what was queued meanwhile, or finish: deadlines, on_drained, FIN.
                    self.flush(token);
                }
            }
        }
    }

    /// Cancels what the ring still has in flight and waits (briefly) for it: the buffers sends
    /// reference must outlive them (the ring never frees a send's buffer before its completion
    /// either way).
    pub(super) fn drain_uring(&mut self) {
        let Some(mut u) = self.uring.take() else {
            return;
        };
        for _ in 0..100 {
            if u.ring.sends_in_flight() == 0 {
                break;
            }
            for s in u.ring.send_slots() {
                let _ = u.ring.push_cancel(SEND | s as u64, CANCEL);
            }
            let _ = u
                .ring
                .submit_and_wait(Some(std::time::Duration::from_millis(10)));
            let mut done = Vec::new();
            u.ring.completions(&mut done);
            for c in done {
                if c.user_data & SEND != 0 && c.user_data & EPOLL != EPOLL {
                    let slot = (c.user_data & !SEND) as usize;
                    if u.ring.send_owner(slot).is_some() {
                        drop(u.ring.finish(slot));
                    }
                } else if let Some(bid) = c.buffer() {
                    u.ring.recycle(bid);
                }
            }
        }
    }
}

impl crate::os::uring::SendBuf for OutboundBuffer {
    fn gather<'a>(&'a mut self, dst: &mut [IoSlice<'a>]) -> usize {
        OutboundBuffer::gather(self, dst)
    }

    fn advance(&mut self, n: usize) {
        self.consume(n.min(self.len()));
    }

    fn remaining(&self) -> usize {
        self.len()
    }
}
