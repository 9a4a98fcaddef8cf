//! The write path: every byte any thread writes to a connection enters here.

use bytes::Bytes;

use super::{Attachment, CloseReason, Conn, ConnIo, Gate, Phase};
use crate::core::config::OverflowPolicy;
use crate::core::error::WriteError;
use crate::core::outbound::CHUNK_CHARGE;
use crate::core::poller::context;
use crate::core::stats::count;
use crate::core::transport::Payload;

/// Writes at least this long made on the owning poller skip corking when nothing is queued.
const DIRECT_WRITE_MIN: usize = 8 * 1024;

impl Conn {
    /// Queues `data` for sending without copying it. See [`Conn`] for the ordering guarantee.
    ///
    /// From another thread, the bytes go straight to the socket when nothing is queued; only
    /// what the socket does not take is queued. Inside a handler callback on the owning poller
    /// a write under 8 KiB is corked: queued and flushed with one `writev` per loop iteration
    /// (or per 64 readiness events, when one poll returns more), together with everything else
    /// written to this connection meanwhile; a larger one with nothing queued goes straight to
    /// the socket as from another thread.
    ///
    /// ```no_run
    /// # fn demo(conn: &netpoll::Conn) {
    /// use bytes::Bytes;
    /// // One allocation shared by any number of writes: each queues a reference, not a copy.
    /// let banner = Bytes::from_static(b"welcome\n");
    /// match conn.write(banner.clone()) {
    ///     Ok(()) => {}
    ///     Err(netpoll::WriteError::Overflow { pending, .. }) => {
    ///         eprintln!("{pending} bytes already queued; retry after on_drained")
    ///     }
    ///     Err(e) => eprintln!("not sent: {e}"),
    /// }
    /// # }
    /// ```
    ///
    /// # Errors
    /// Nothing of a refused message is sent. [`WriteError::Closed`] once the connection is
    /// closing; [`WriteError::Overflow`] if it would pass `max_outbound_bytes` (under
    /// [`OverflowPolicy::Close`] the connection then closes); [`WriteError::Io`] if the socket
    /// failed (the connection then closes).
    pub fn write(&self, data: Bytes) -> Result<(), WriteError> {
        self.write_gated(&[], Payload::Shared(data), Gate::NONE, None)
    }

    /// Like [`write`](Self::write) for a borrowed slice: copied only if it has to wait.
    ///
    /// # Errors
    /// As for [`write`](Self::write).
    pub fn write_slice(&self, data: &[u8]) -> Result<(), WriteError> {
        self.write_gated(&[], Payload::Slice(data), Gate::NONE, None)
    }

    /// Writes `head` then `body` as one unit, both or neither, never interleaved with another
    /// writer's, if `gate` admits it against the protocol layer's bits; `policy` overrides the
    /// overflow policy (a broadcast applies its own).
    #[inline]
    pub(crate) fn write_gated(
        &self,
        head: &[u8],
        body: Payload<'_>,
        gate: Gate,
        policy: Option<OverflowPolicy>,
    ) -> Result<(), WriteError> {
        self.write_gated_with(head, |_, _, _| Ok(body), gate, policy)
    }

    /// [`write_gated`](Self::write_gated) with the body made under the connection's lock, once
    /// the gate admitted it, from the protocol layer's bits and attachment (a broadcast's
    /// compressed frame for members that agreed to compression, the plain one for the others;
    /// a message compressed on top of the connection's context). `body` is told the room left
    /// under `max_outbound_bytes` (besides `head`); it may refuse with the length it would
    /// need, which is then refused as an overflow.
    #[inline(always)]
    pub(crate) fn write_gated_with<'p>(
        &self,
        head: &[u8],
        body: impl FnOnce(u8, &mut Attachment<'_>, usize) -> Result<Payload<'p>, usize>,
        gate: Gate,
        policy: Option<OverflowPolicy>,
    ) -> Result<(), WriteError> {
        let shared = &*self.shared;
        let poller = &*shared.poller;
        let on_owner = context::is_current(poller);
        let mut io = shared.lock();
        if io.phase == Phase::Closed || io.layer_bits & gate.closed_if != 0 {
            return Err(WriteError::Closed);
        }
        if io.layer_bits & gate.invalid_if != 0 {
            return Err(WriteError::Invalid(gate.why));
        }
        let coded = io.coded;
        let pending = io.transport.charge(coded);
        let limit = poller.config().max_outbound_bytes;
        // Reserve what the message may cost besides its bytes (one queued chunk).
        let room = if gate.past_limit {
            usize::MAX
        } else {
            limit.saturating_sub(pending + CHUNK_CHARGE + head.len())
        };
        let made = body(io.layer_bits, &mut io.transport.attachment(), room);
        let (body, len) = match made {
            Ok(body) => {
                let len = head.len() + body.len();
                io.layer_bits |= gate.sets;
                if len == 0 {
                    return Ok(());
                }
                (Some(body), len)
            }
            Err(needs) => (None, head.len() + needs),
        };
        let body = match body {
            Some(body) if pending + len + CHUNK_CHARGE <= limit || gate.past_limit => body,
            _ => {
                count(&poller.stats.overflows, 1);
                let err = WriteError::Overflow {
                    pending,
                    len,
                    limit,
                };
                let policy = policy
                    .or(io.overflow_policy)
                    .unwrap_or(poller.config().overflow_policy);
                if policy == OverflowPolicy::Close {
                    io.phase = Phase::Closed;
                    drop(io);
                    self.request_close(CloseReason::Overflow, false);
                }
                return Err(err);
            }
        };
        // Queue behind what is already waiting (someone is due to flush it: the poller at the
        // end of this loop iteration if corked, the writable edge otherwise), while connecting,
        // or when corking on the owning poller. Corking batches small writes; a large one with
        // nothing queued goes straight to the socket like a write from another thread, saving
        // its copy into the queue (and, past the pooled-buffer size, an allocation).
        let cork = on_owner && (len < DIRECT_WRITE_MIN || matches!(body, Payload::Fanout(_)));
        if io.transport.pending() != 0 || io.phase == Phase::Connecting || cork {
            let corked = on_owner && io.phase == Phase::Open;
            if on_owner {
                context::with_tail_pool(|pool| io.transport.queue(head, body, Some(pool), coded));
                if corked {
                    io.cork(shared.token());
                }
            } else {
                io.transport.queue(head, body, None, coded);
            }
            if !corked {
                poller.stats.add_queued(io.transport.account());
            }
            self.note_watermark(&mut io);
            return Ok(());
        }
        let result = io.transport.send(head, body, coded);
        if io.transport.pending() != 0 {
            poller.stats.add_queued(io.transport.account());
        }
        count(&poller.stats.write_calls, 1);
        match result {
            Ok(n) => {
                count(&poller.stats.bytes_out, n as u64);
                if io.transport.pending() != 0 {
                    // The socket buffer is full and the writable edge is armed; a peer that
                    // never reads raises no edge, so the write deadline must be watched.
                    self.note_watermark(&mut io);
                    io.write_deadline
                        .after_write(context::now_ms(poller), n > 0, true);
                    self.watch_write(&mut io);
                }
                Ok(())
            }
            Err(e) => {
                let kind = e.kind();
                io.phase = Phase::Closed;
                drop(io);
                self.request_close(CloseReason::Io(kind), false);
                Err(WriteError::Io(kind))
            }
        }
    }

    #[inline(always)]
    fn note_watermark(&self, io: &mut ConnIo) {
        if io.transport.charge(io.coded) > self.config().low_watermark() {
            io.above_low_water = true;
        }
    }
}
