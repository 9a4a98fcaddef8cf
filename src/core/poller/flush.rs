//! The flush path: writing queued bytes on a writable edge or at the end of the loop
//! iteration (the cork list), with the write deadline and the low-watermark notice.

use super::{Entry, Poller, Stage, TimerKind, context};
use crate::core::conn::CloseReason;
use crate::core::handler::Handler;
use crate::core::stats::count;
use crate::core::transport::Flushed;

impl<H: Handler> Poller<H> {
    pub(super) fn on_writable(&mut self, token: usize) {
        match self.stage(token) {
            Some(Stage::Connecting { .. }) => self.finish_connect(token),
            Some(Stage::Open | Stage::Flushing { .. }) => self.flush(token),
            _ => {}
        }
    }

    /// Writes queued bytes until the queue is empty or the socket is full (the io_uring
    /// backend: hands them to a ring send).
    pub(super) fn flush(&mut self, token: usize) {
        #[cfg(netpoll_uring)]
        let by_ring = self.uring.is_some();
        #[cfg(not(netpoll_uring))]
        let by_ring = false;
        self.flush_with(token, by_ring);
    }

    /// [`flush`](Self::flush), through the ring or by `write`/`writev` here and now.
    pub(super) fn flush_with(&mut self, token: usize, by_ring: bool) {
        let low_watermark = self.config().low_watermark();
        let Some(c) = self.conns.get(token) else {
            return;
        };
        let open = c.stage() == Stage::Open;
        let (drained_notice, empty, watch, error) = {
            let mut io = c.conn.shared.lock();
            let io = &mut *io;
            if open && io.transport.pending() == 0 && !io.corked && !io.above_low_water {
                // Nothing to write, nothing owed: the writable readiness that epoll reports
                // with every readable edge of an idle socket. The flush that drained the queue
                // already cleared the deadline, gave the buffers back and sent `on_drained`.
                return;
            }
            io.corked = false;
            let (flushed, error) = if by_ring {
                // Sent by the ring after this block: no bytes moved yet.
                (
                    Flushed {
                        written: 0,
                        calls: 0,
                    },
                    None,
                )
            } else {
                match io.transport.flush() {
                    Ok(f) => (f, None),
                    Err((f, kind)) => (f, Some(kind)),
                }
            };
            if flushed.calls > 0 {
                let stats = &self.shared.stats;
                count(&stats.write_calls, flushed.calls as u64);
                count(&stats.bytes_out, flushed.written as u64);
            }
            let pending = io.transport.pending() != 0;
            io.write_deadline
                .after_write(self.now, flushed.written > 0, pending);
            let watch = if pending {
                io.write_deadline.claim_entry()
            } else {
                None
            };
            let empty =
                context::with_tail_pool(|pool| io.transport.release_buffers(pool)) && !pending;
            self.queued_delta += io.transport.account();
            let notice = io.above_low_water && io.transport.charge(io.coded) <= low_watermark;
            if notice {
                io.above_low_water = false;
            }
            (notice, empty, watch, error)
        };
        if let Some(kind) = error {
            self.begin_close(token, CloseReason::Io(kind), false);
            return;
        }
        if let Some(at) = watch {
            self.wheel
                .insert(at, Entry::new(token, TimerKind::Write, at));
        }
        #[cfg(netpoll_uring)]
        if by_ring && !empty {
            self.submit_send(token);
        }
        let c = self.conns.get_mut(token).expect("checked above");
        match c.stage() {
            Stage::Open if drained_notice => {
                self.with_state(token, "on_drained", |h, conn, state| {
                    h.on_drained(conn, state)
                });
            }
            Stage::Flushing { deadline } if empty => self.send_fin(token, deadline),
            _ => {}
        }
    }

    /// Flushes every connection written to from a callback during this iteration; `on_drained`
    /// callbacks may cork more, which the next round flushes.
    pub(super) fn flush_corked(&mut self) {
        let mut spare = std::mem::take(&mut self.corked_spare);
        loop {
            let tokens = context::take_corked(spare);
            if tokens.is_empty() {
                spare = tokens;
                break;
            }
            for &token in &tokens {
                self.flush(token);
            }
            spare = tokens;
            spare.clear();
        }
        self.corked_spare = spare;
    }
}
