//! The read path: from a readable event to the handler's `on_data`, with the fairness budget
//! and the per-connection remainder of unconsumed bytes.

use std::io;
use std::ops::Range;

use tracing::warn;

use super::slots::Slots;
use super::{Connection, Poller, Stage, guarded};
use crate::core::conn::{CloseReason, Phase};
use crate::core::handler::Handler;
use crate::core::stats::count;

/// A kept remainder whose buffer grew past this, and is now mostly empty, is shrunk.
const INBOUND_SHRINK_ABOVE: usize = 64 * 1024;

impl<H: Handler> Poller<H> {
    pub(super) fn on_readable(&mut self, token: usize, until_would_block: bool) {
        match self.stage(token) {
            Some(Stage::Open) => self.read_open(token, until_would_block),
            Some(Stage::Flushing { .. } | Stage::Lingering { .. }) => self.discard_input(token),
            _ => {}
        }
    }

    pub(super) fn continue_backlog(&mut self) {
        for _ in 0..self.backlog.len() {
            let Some(token) = self.backlog.pop_front() else {
                break;
            };
            #[cfg(netpoll_uring)]
            if self.uring.is_some() && self.reads_by_ring_token(token) {
                // Resumed (ReadAgain): the ring receives again, after what was kept.
                self.resume_recv(token);
                continue;
            }
            // The edge that started this read is spent; only WouldBlock proves we are done.
            self.on_readable(token, true);
        }
    }

    /// Reads an open connection until the socket is drained, the fairness budget is spent, or
    /// the connection starts closing. A short read counts as drained (saving the syscall that
    /// would return `WouldBlock`) unless `until_would_block` is set.
    fn read_open(&mut self, token: usize, until_would_block: bool) {
        self.read_loop::<false>(token, until_would_block, self.config().max_read_per_wakeup);
    }

    /// [`read_open`](Self::read_open) for a connection with a codec (TLS): the same loop,
    /// compiled apart so that the plain one carries none of the codec's checks.
    #[inline(never)]
    fn read_open_coded(&mut self, token: usize, until_would_block: bool, budget: usize) {
        self.read_loop::<true>(token, until_would_block, budget);
    }

    #[inline(always)]
    fn read_loop<const CODED: bool>(
        &mut self,
        token: usize,
        until_would_block: bool,
        mut budget: usize,
    ) {
        loop {
            let Some(c) = self.conns.get(token) else {
                return;
            };
            if c.stage() != Stage::Open {
                return;
            }
            let result = {
                let mut io = c.conn.shared.lock();
                if io.phase == Phase::Closed {
                    return; // a close request is queued
                }
                if io.read_paused {
                    return; // resume_reading sends the poller back here
                }
                if !CODED && io.coded {
                    drop(io);
                    return self.read_open_coded(token, until_would_block, budget);
                }
                let result = io.transport.read::<CODED>(&mut self.read_buf);
                if let Ok(read) = &result {
                    if read.wire > 0 {
                        // A plain store; the wheel entry checks it lazily.
                        io.read_deadline.on_read(self.now);
                    }
                    if CODED && read.flush {
                        io.cork(token);
                    }
                }
                result
            };
            count(&self.shared.stats.read_calls, 1);
            match result {
                Ok(read) if read.wire == 0 => {
                    self.begin_close(token, CloseReason::PeerClosed, true);
                    return;
                }
                Ok(read) => {
                    count(&self.shared.stats.bytes_in, read.wire as u64);
                    if !read.plain.is_empty() {
                        self.deliver(token, read.plain);
                    }
                    if self.stage(token) != Some(Stage::Open) {
                        return; // the handler's input closed it (inbound overflow)
                    }
                    if CODED && read.peer_closed {
                        self.begin_close(token, CloseReason::PeerClosed, true);
                        return;
                    }
                    // A plain read that did not fill the buffer drained the socket (a codec
                    // reads into less than the whole buffer, so it says).
                    let short = if CODED {
                        read.short
                    } else {
                        read.wire < self.read_buf.len()
                    };
                    if short && !until_would_block {
                        // Short read: the socket is drained and the next data or FIN raises a
                        // new edge.
                        return;
                    }
                    if self.spend_read_budget(token, &mut budget, read.wire) {
                        return;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    self.begin_close(token, CloseReason::Io(e.kind()), false);
                    return;
                }
            }
        }
    }

    /// Charges `n` read bytes to the fairness budget. When it is spent the connection goes to
    /// the back of the backlog (its edge is consumed, so nothing else would bring it back) and
    /// the caller stops reading it.
    fn spend_read_budget(&mut self, token: usize, budget: &mut usize, n: usize) -> bool {
        *budget = budget.saturating_sub(n);
        if *budget > 0 {
            return false;
        }
        self.backlog.push_back(token);
        true
    }

    /// Hands `read_buf[plain]` (behind any kept remainder) to the handler.
    #[inline(always)] // the hot path; out of line it costs ~40 instructions per message
    fn deliver(&mut self, token: usize, plain: Range<usize>) {
        let max_inbound = self.config().max_inbound_bytes;
        let outcome = deliver_to(
            &mut self.conns,
            &mut self.handler,
            token,
            &mut self.read_buf[plain],
            max_inbound,
        );
        self.after_deliver(token, outcome);
    }

    /// Closes the connection if its input panicked the handler or overflowed.
    #[inline(always)]
    pub(super) fn after_deliver(&mut self, token: usize, outcome: Delivered) {
        match outcome {
            Delivered::Ok => {}
            Delivered::Panicked => self.begin_close(token, CloseReason::HandlerPanic, false),
            Delivered::Overflow => self.inbound_overflow(token),
        }
    }

    #[cold]
    fn inbound_overflow(&mut self, token: usize) {
        let max_inbound = self.config().max_inbound_bytes;
        if let Some(c) = self.conns.get(token) {
            warn!(conn = %c.conn.id(), limit = max_inbound, "unconsumed inbound bytes over the limit; closing");
        }
        self.begin_close(token, CloseReason::InboundOverflow, false);
    }

    /// Reads and drops input of a connection that is closing, to notice the peer's FIN or
    /// reset and keep the receive window open while the last bytes flush.
    pub(super) fn discard_input(&mut self, token: usize) {
        let mut budget = self.config().max_read_per_wakeup;
        loop {
            let Some(c) = self.conns.get(token) else {
                return;
            };
            let result = {
                let mut io = c.conn.shared.lock();
                if io.coded {
                    io.transport.read::<true>(&mut self.read_buf)
                } else {
                    io.transport.read::<false>(&mut self.read_buf)
                }
            };
            count(&self.shared.stats.read_calls, 1);
            match result {
                Ok(read) if read.wire == 0 => {
                    // The peer is done sending. While flushing it may still read (a half-close),
                    // so keep flushing; once our FIN is out the connection is finished.
                    if matches!(self.stage(token), Some(Stage::Lingering { .. })) {
                        self.free(token);
                    }
                    return;
                }
                Ok(read) => {
                    count(&self.shared.stats.bytes_in, read.wire as u64);
                    if self.spend_read_budget(token, &mut budget, read.wire) {
                        return;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(_) => {
                    self.free(token);
                    return;
                }
            }
        }
    }
}

/// How a delivery went.
pub(super) enum Delivered {
    Ok,
    Panicked,
    Overflow,
}

/// Hands `fresh` (behind any kept remainder) to the handler of `token`, keeping what it left
/// unconsumed. Borrows only the connections and the handler, so the bytes may live in the
/// poller's read buffer or in a ring buffer.
#[inline(always)]
pub(super) fn deliver_to<H: Handler>(
    conns: &mut Slots<Connection<H::State>>,
    handler: &mut H,
    token: usize,
    fresh: &mut [u8],
    max_inbound: usize,
) -> Delivered {
    let Some(c) = conns.get_mut(token) else {
        return Delivered::Ok;
    };
    let Connection {
        conn,
        user,
        inbound,
        ..
    } = c;
    let Some(state) = user.as_mut() else {
        return Delivered::Ok;
    };
    let n = fresh.len();
    if inbound.is_empty() {
        return match guarded("on_data", conn, || handler.on_data(conn, state, fresh)) {
            None => Delivered::Panicked,
            Some(used) => {
                let rest = &fresh[used.min(n)..];
                if rest.len() > max_inbound {
                    Delivered::Overflow
                } else {
                    inbound.extend_from_slice(rest);
                    Delivered::Ok
                }
            }
        };
    }
    if inbound.len() + n > max_inbound {
        return Delivered::Overflow;
    }
    inbound.extend_from_slice(fresh);
    let kept = inbound.bytes_mut();
    match guarded("on_data", conn, || handler.on_data(conn, state, kept)) {
        None => Delivered::Panicked,
        Some(used) => {
            inbound.consume(used);
            Delivered::Ok
        }
    }
}

/// Bytes a handler left unconsumed, kept for its next delivery. One null pointer while empty
/// (almost always), so the poller's entry for an idle connection stays small.
#[derive(Debug, Default)]
// Boxed on purpose: `Option<Vec>` would be three words in every connection's entry.
#[allow(clippy::box_collection)]
pub(super) struct Inbound(Option<Box<Vec<u8>>>);

impl Inbound {
    /// True when nothing is kept (then nothing is allocated).
    #[inline]
    pub(super) fn is_empty(&self) -> bool {
        self.0.is_none()
    }

    pub(super) fn len(&self) -> usize {
        self.0.as_ref().map_or(0, |v| v.len())
    }

    pub(super) fn extend_from_slice(&mut self, bytes: &[u8]) {
        if !bytes.is_empty() {
            self.0.get_or_insert_default().extend_from_slice(bytes);
        }
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        self.0.as_deref_mut().map_or(&mut [], |v| v.as_mut_slice())
    }

    /// Drops the first `used` bytes; the allocation goes with the last of them, and a big one
    /// mostly emptied is shrunk.
    fn consume(&mut self, used: usize) {
        let Some(v) = self.0.as_deref_mut() else {
            return;
        };
        if used >= v.len() {
            self.0 = None;
            return;
        }
        v.drain(..used);
        if v.capacity() > INBOUND_SHRINK_ABOVE && v.capacity() > 4 * v.len() {
            v.shrink_to_fit();
        }
    }

    /// Frees what is kept.
    pub(super) fn clear(&mut self) {
        self.0 = None;
    }
}
