//! The per-connection outbound queue.
//!
//! Holds the bytes a connection has accepted for sending but the kernel has not taken yet. It is
//! a ring (`VecDeque`) of `Bytes` chunks, so a `Bytes` written by the user (or one broadcast buffer
//! shared by many connections) is queued without copying. Small slices written while data is
//! already queued are coalesced into one owned tail chunk, so many tiny writes cost one iovec,
//! not one each. The whole queue is flushed with `writev`, up to [`MAX_IOVECS`] chunks per call.
//!
//! The queue is one pointer in the connection: its ring, tail and length live in a box that
//! exists only while bytes wait. Nothing is allocated until the first byte has to wait, and
//! [`OutboundBuffer::release`] frees the box once the queue drains (or hands it, with its tail
//! buffer, to a [`QueuePool`] for the next connection that queues), so an idle connection holds
//! no buffer and pays 8 bytes for its queue.

use std::collections::VecDeque;
use std::io::{self, IoSlice, Write};

use bytes::{Buf, Bytes};

/// Chunks gathered into one `writev` call. Linux allows 1024; 64 keeps the iovec array small on
/// the stack and already amortises the syscall over many messages.
pub(crate) const MAX_IOVECS: usize = 64;

/// Slices shorter than this are copied into the coalescing tail instead of getting a chunk each.
const COALESCE_MAX: usize = 16 * 1024;

/// What a queued chunk costs besides its bytes: its slot in the ring (a `Bytes`, 32 bytes) and
/// the ring's spare capacity, which can be as large again (it doubles when it grows). Charged
/// so that a queue of many tiny chunks (empty broadcast frames, say) is bounded by the memory it
/// really holds, not by its payload bytes alone.
pub(crate) const CHUNK_CHARGE: usize = 2 * std::mem::size_of::<Bytes>();

/// What waits: allocated (boxed) only while the queue is in use.
#[derive(Debug, Default)]
struct Queue {
    chunks: VecDeque<Bytes>,
    /// Small slices appended after the last chunk; logically the end of the queue.
    tail: Vec<u8>,
    len: usize,
}

impl Queue {
    /// Moves the coalescing tail into the chunk ring (no copy: `Bytes::from(Vec)` takes the
    /// allocation over).
    #[inline]
    fn seal_tail(&mut self) {
        if !self.tail.is_empty() {
            let tail = std::mem::take(&mut self.tail);
            self.chunks.push_back(Bytes::from(tail));
        }
    }

    /// Heap bytes the box and its buffers hold.
    fn held(&self) -> usize {
        std::mem::size_of::<Queue>()
            + self.chunks.capacity() * std::mem::size_of::<Bytes>()
            + self.tail.capacity()
    }
}

/// Drained queues (their boxes and small tail buffers) kept for reuse by one poller, so that
/// a poller that queues and drains small writes in a loop does not allocate per message.
/// Bounded by the bytes it holds (each box and its tail buffer's capacity).
#[derive(Debug)]
pub struct QueuePool {
    // Boxes, not queues: what is reused is the box's allocation itself, handed back to a
    // connection's `Option<Box<Queue>>` without a move into a new one.
    #[allow(clippy::vec_box)]
    spare: Vec<Box<Queue>>,
    /// Bytes the kept queues hold.
    bytes: usize,
    /// Most bytes kept.
    max_bytes: usize,
}

impl QueuePool {
    /// An empty pool that keeps queues holding up to `max_bytes` in all. Allocates nothing.
    pub const fn new(max_bytes: usize) -> Self {
        QueuePool {
            spare: Vec::new(),
            bytes: 0,
            max_bytes,
        }
    }

    /// Queues kept.
    #[cfg(any(test, feature = "internals"))]
    pub fn len(&self) -> usize {
        self.spare.len()
    }

    /// True when no queue is kept.
    #[cfg(any(test, feature = "internals"))]
    pub fn is_empty(&self) -> bool {
        self.spare.is_empty()
    }

    /// Heap bytes the kept queues hold (never more than the bound).
    #[cfg(any(test, feature = "internals"))]
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Changes the bound, dropping queues (the most recently kept first) until it holds.
    pub fn set_max_bytes(&mut self, max_bytes: usize) {
        self.max_bytes = max_bytes;
        while self.bytes > max_bytes {
            let Some(q) = self.spare.pop() else { break };
            self.bytes -= q.held();
        }
        if self.spare.is_empty() {
            self.spare = Vec::new();
        }
    }

    #[inline]
    fn take(&mut self) -> Box<Queue> {
        match self.spare.pop() {
            Some(q) => {
                self.bytes -= q.held();
                q
            }
            None => Box::default(),
        }
    }

    /// Keeps `queue` (empty, its ring freed) if it fits under the bound; drops it otherwise.
    #[inline]
    fn give(&mut self, mut queue: Box<Queue>) {
        if queue.tail.capacity() > COALESCE_MAX {
            queue.tail = Vec::new();
        }
        queue.tail.clear();
        let held = queue.held();
        if self.bytes + held <= self.max_bytes {
            self.bytes += held;
            self.spare.push(queue);
        }
    }
}

/// An ordered queue of bytes waiting for the socket: one pointer, null while nothing waits.
#[derive(Debug, Default)]
pub struct OutboundBuffer {
    q: Option<Box<Queue>>,
}

impl OutboundBuffer {
    /// An empty queue. Allocates nothing.
    pub const fn new() -> Self {
        OutboundBuffer { q: None }
    }

    /// Bytes queued and not yet written.
    #[inline]
    pub fn len(&self) -> usize {
        match &self.q {
            Some(q) => q.len,
            None => 0,
        }
    }

    /// True when nothing is queued.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The memory the queue accounts for: its bytes plus [`CHUNK_CHARGE`] per queued chunk
    /// (coalesced small writes share one chunk). What the outbound limit counts.
    #[inline]
    pub fn charge(&self) -> usize {
        match &self.q {
            Some(q) => q.len + q.chunks.len() * CHUNK_CHARGE,
            None => 0,
        }
    }

    /// Heap bytes currently held (for tests and memory accounting).
    #[cfg(any(test, feature = "internals"))]
    pub fn allocated(&self) -> usize {
        self.q.as_ref().map_or(0, |q| q.held())
    }

    /// The queue, made (from `pool`, if given and not empty) if there is none.
    #[inline]
    fn queue(&mut self, pool: Option<&mut QueuePool>) -> &mut Queue {
        self.q.get_or_insert_with(|| match pool {
            Some(pool) => pool.take(),
            None => Box::default(),
        })
    }

    /// Queues a shared chunk without copying it.
    #[inline]
    pub fn push(&mut self, data: Bytes) {
        self.push_chunk(data, None);
    }

    /// [`push`](Self::push) taking the queue's box from `pool` if it has none.
    #[inline]
    pub fn push_pooled(&mut self, data: Bytes, pool: &mut QueuePool) {
        self.push_chunk(data, Some(pool));
    }

    #[inline]
    fn push_chunk(&mut self, data: Bytes, pool: Option<&mut QueuePool>) {
        if data.is_empty() {
            return;
        }
        let q = self.queue(pool);
        q.seal_tail();
        q.len += data.len();
        q.chunks.push_back(data);
    }

    /// Queues a copy of `data`. Small slices are coalesced into one tail chunk.
    #[inline]
    pub fn push_slice(&mut self, data: &[u8]) {
        self.push_copy(data, None);
    }

    /// [`push_slice`](Self::push_slice) taking the queue (and with it a tail allocation) from
    /// `pool` when there is none, so a poller that queues and drains small writes in a loop
    /// does not allocate per message.
    #[inline]
    pub fn push_slice_pooled(&mut self, data: &[u8], pool: &mut QueuePool) {
        self.push_copy(data, Some(pool));
    }

    #[inline]
    fn push_copy(&mut self, data: &[u8], pool: Option<&mut QueuePool>) {
        if data.is_empty() {
            return;
        }
        if data.len() >= COALESCE_MAX {
            self.push_chunk(Bytes::copy_from_slice(data), pool);
            return;
        }
        let q = self.queue(pool);
        q.tail.extend_from_slice(data);
        q.len += data.len();
    }

    /// Writes as much of the queue as `out` takes in one vectored write and removes it.
    ///
    /// Returns the bytes written and whether the write was short (took less than offered). On a
    /// non-blocking socket a short write means the socket buffer is full, so the caller can stop
    /// without the extra syscall that would only return `WouldBlock`. `WouldBlock` and other
    /// errors are passed through with the queue untouched.
    #[inline]
    pub fn write_to<W: Write>(&mut self, out: &mut W) -> io::Result<(usize, bool)> {
        let Some(q) = self.q.as_deref_mut() else {
            return Ok((0, false));
        };
        if q.len == 0 {
            return Ok((0, false));
        }
        if q.chunks.is_empty() {
            // Only coalesced slices are queued: write them in place, keeping the allocation
            // for reuse instead of converting it into a chunk.
            let n = out.write(&q.tail)?;
            q.tail.drain(..n);
            q.len -= n;
            return Ok((n, !q.tail.is_empty()));
        }
        q.seal_tail();
        let (n, offered) = {
            let mut slices = [IoSlice::new(&[]); MAX_IOVECS];
            let mut count = 0;
            let mut offered = 0;
            for (slot, chunk) in slices.iter_mut().zip(q.chunks.iter()) {
                *slot = IoSlice::new(chunk);
                offered += chunk.len();
                count += 1;
            }
            let n = if count == 1 {
                // write(2) is cheaper than writev(2) with a single iovec.
                out.write(&q.chunks[0])?
            } else {
                out.write_vectored(&slices[..count])?
            };
            (n, offered)
        };
        self.consume(n);
        Ok((n, n < offered))
    }

    /// Fills `dst` with the queue's first chunks, in order, and returns how many (the io_uring
    /// backend sends them from where they are; the queue must not change until it is done).
    #[cfg(netpoll_uring)]
    pub(crate) fn gather<'a>(&'a mut self, dst: &mut [IoSlice<'a>]) -> usize {
        let Some(q) = self.q.as_deref_mut() else {
            return 0;
        };
        if q.chunks.is_empty() {
            if q.tail.is_empty() || dst.is_empty() {
                return 0;
            }
            dst[0] = IoSlice::new(&q.tail);
            return 1;
        }
        q.seal_tail();
        let mut count = 0;
        for (slot, chunk) in dst.iter_mut().zip(q.chunks.iter()) {
            *slot = IoSlice::new(chunk);
            count += 1;
        }
        count
    }

    /// Drops the first `n` queued bytes.
    #[inline]
    pub fn consume(&mut self, mut n: usize) {
        debug_assert!(n <= self.len());
        if n == 0 {
            return;
        }
        let q = self
            .q
            .as_deref_mut()
            .expect("consume past the end of the queue");
        q.seal_tail();
        q.len -= n;
        while n > 0 {
            let front = q
                .chunks
                .front_mut()
                .expect("consume past the end of the queue");
            if front.len() <= n {
                n -= front.len();
                q.chunks.pop_front();
            } else {
                front.advance(n);
                n = 0;
            }
        }
    }

    /// Frees the queue's box (ring and tail) if the queue is empty, so a drained connection
    /// holds no buffer. Returns true if the queue is empty.
    #[cfg(any(test, feature = "internals"))]
    pub fn release(&mut self) -> bool {
        self.release_into(&mut QueuePool::new(0))
    }

    /// Like [`release`](Self::release), but hands the box with a small tail allocation to
    /// `pool` (while it has room) instead of freeing it. The ring is freed either way.
    #[inline]
    pub fn release_into(&mut self, pool: &mut QueuePool) -> bool {
        let Some(q) = &mut self.q else {
            return true;
        };
        if q.len != 0 {
            return false;
        }
        if q.chunks.capacity() != 0 {
            q.chunks = VecDeque::new();
        }
        if let Some(q) = self.q.take() {
            pool.give(q);
        }
        true
    }

    /// Empties the queue and frees its memory (abort path).
    #[inline]
    pub fn clear(&mut self) {
        self.q = None;
    }

    /// Copies out the queued bytes in order (tests only).
    #[cfg(test)]
    fn to_vec(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(self.len());
        if let Some(q) = &self.q {
            for c in &q.chunks {
                v.extend_from_slice(c);
            }
            v.extend_from_slice(&q.tail);
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer that takes at most `cap` bytes per call and records how it was called.
    struct Throttled {
        got: Vec<u8>,
        cap: usize,
        calls: usize,
        max_iovecs_seen: usize,
        would_block: bool,
    }

    impl Throttled {
        fn new(cap: usize) -> Self {
            Throttled {
                got: Vec::new(),
                cap,
                calls: 0,
                max_iovecs_seen: 0,
                would_block: false,
            }
        }
    }

    impl Write for Throttled {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.write_vectored(&[IoSlice::new(buf)])
        }
        fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
            if self.would_block {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            self.calls += 1;
            self.max_iovecs_seen = self.max_iovecs_seen.max(bufs.len());
            let mut left = self.cap;
            let mut n = 0;
            for b in bufs {
                let take = b.len().min(left);
                self.got.extend_from_slice(&b[..take]);
                left -= take;
                n += take;
                if left == 0 {
                    break;
                }
            }
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn new_buffer_allocates_nothing() {
        let b = OutboundBuffer::new();
        assert_eq!(b.allocated(), 0);
        assert!(b.is_empty());
    }

    #[test]
    fn bytes_come_out_in_order_across_partial_writes() {
        let mut b = OutboundBuffer::new();
        let mut expected = Vec::new();
        for i in 0..500u32 {
            let msg = format!("message-{i};").into_bytes();
            expected.extend_from_slice(&msg);
            if i % 3 == 0 {
                b.push(Bytes::from(msg));
            } else {
                b.push_slice(&msg);
            }
        }
        assert_eq!(b.len(), expected.len());
        assert_eq!(b.to_vec(), expected);
        let mut w = Throttled::new(37);
        while !b.is_empty() {
            b.write_to(&mut w).unwrap();
        }
        assert_eq!(w.got, expected);
        assert!(b.release());
        assert_eq!(b.allocated(), 0);
    }

    #[test]
    fn writev_gathers_many_chunks_per_call() {
        let mut b = OutboundBuffer::new();
        for _ in 0..200 {
            b.push(Bytes::from_static(b"0123456789"));
        }
        let mut w = Throttled::new(usize::MAX);
        b.write_to(&mut w).unwrap();
        assert_eq!(w.calls, 1);
        assert_eq!(w.max_iovecs_seen, MAX_IOVECS);
        assert_eq!(b.len(), (200 - MAX_IOVECS) * 10);
    }

    #[test]
    fn small_slices_coalesce_into_one_chunk() {
        let mut b = OutboundBuffer::new();
        for _ in 0..100 {
            b.push_slice(b"abc");
        }
        let mut w = Throttled::new(usize::MAX);
        b.write_to(&mut w).unwrap();
        assert_eq!(w.calls, 1);
        assert_eq!(w.max_iovecs_seen, 1);
        assert!(b.is_empty());
    }

    #[test]
    fn would_block_leaves_queue_untouched() {
        let mut b = OutboundBuffer::new();
        b.push(Bytes::from_static(b"hello"));
        let mut w = Throttled::new(10);
        w.would_block = true;
        let err = b.write_to(&mut w).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
        assert_eq!(b.len(), 5);
        assert!(!b.release(), "release must refuse while bytes are queued");
    }

    #[test]
    fn pooled_tail_is_reused_and_released_connection_holds_nothing() {
        let mut pool = QueuePool::new(4096);
        let mut b = OutboundBuffer::new();
        let mut w = Throttled::new(usize::MAX);
        b.push_slice_pooled(b"first", &mut pool);
        b.write_to(&mut w).unwrap();
        assert!(b.release_into(&mut pool));
        assert_eq!(b.allocated(), 0, "drained queue must hold no buffer");
        assert_eq!(pool.len(), 1);
        let ptr = pool.spare[0].tail.as_ptr();
        b.push_slice_pooled(b"second", &mut pool);
        assert!(pool.is_empty(), "queue taken from the pool");
        // Partial write straight from the tail, rest stays in order.
        let mut w2 = Throttled::new(3);
        assert_eq!(b.write_to(&mut w2).unwrap(), (3, true));
        assert_eq!(b.to_vec(), b"ond");
        b.write_to(&mut w).unwrap();
        assert!(b.release_into(&mut pool));
        assert_eq!(
            pool.spare[0].tail.as_ptr(),
            ptr,
            "same allocation came back"
        );
        assert_eq!(w.got, b"firstond");
        // A shared chunk queued on an empty queue takes the pooled box too.
        b.push_pooled(Bytes::from_static(b"shared"), &mut pool);
        assert!(pool.is_empty());
        b.write_to(&mut w).unwrap();
        assert!(b.release_into(&mut pool));
        assert_eq!(pool.len(), 1);
    }

    /// The pool keeps drained queues only up to its byte bound: past it they are freed, and
    /// what it holds is what it says.
    #[test]
    fn the_pool_stops_at_its_byte_bound() {
        let per_queue = std::mem::size_of::<Queue>() + 100;
        let bound = 10 * per_queue + per_queue / 2;
        let mut pool = QueuePool::new(bound);
        let mut w = Throttled::new(usize::MAX);
        let mut queues: Vec<OutboundBuffer> = (0..20).map(|_| OutboundBuffer::new()).collect();
        for q in &mut queues {
            q.push_slice(&[7u8; 100]);
            assert_eq!(q.allocated(), per_queue);
        }
        for (i, q) in queues.iter_mut().enumerate() {
            q.write_to(&mut w).unwrap();
            assert!(q.release_into(&mut pool), "drained");
            assert_eq!(
                q.allocated(),
                0,
                "a drained queue holds nothing, pooled or not"
            );
            assert_eq!(pool.len(), (i + 1).min(10), "kept while it fits");
            assert!(pool.bytes() <= bound);
        }
        assert_eq!(pool.bytes(), 10 * per_queue);
        // Taken back, each leaves the pool's count.
        queues[0].push_slice_pooled(b"x", &mut pool);
        assert_eq!(pool.len(), 9);
        assert_eq!(pool.bytes(), 9 * per_queue);
        assert_eq!(
            queues[0].allocated(),
            per_queue,
            "the pooled tail came along"
        );
        // A lower bound drops what no longer fits; zero keeps nothing.
        pool.set_max_bytes(3 * per_queue);
        assert_eq!((pool.len(), pool.bytes()), (3, 3 * per_queue));
        pool.set_max_bytes(0);
        assert!(pool.is_empty());
        queues[0].consume(1);
        assert!(queues[0].release_into(&mut pool));
        assert!(pool.is_empty(), "a zero bound keeps nothing");
    }

    #[test]
    fn an_idle_queue_is_one_null_pointer() {
        assert_eq!(std::mem::size_of::<OutboundBuffer>(), 8);
        let mut b = OutboundBuffer::new();
        b.push_slice(b"x");
        assert!(b.allocated() > 0);
        b.consume(1);
        assert!(b.release());
        assert!(b.q.is_none());
    }

    /// Random interleavings of shared and copied pushes, pooled tails, partial writes and
    /// would-blocks: the bytes that come out are exactly the bytes pushed, in order, and the
    /// queue's length and release behaviour stay consistent throughout.
    #[test]
    fn random_push_and_partial_flush_sequences_preserve_bytes() {
        for seed in 1..=200u64 {
            let mut rng = crate::fuzz::Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15));
            let mut q = OutboundBuffer::new();
            let mut pool = QueuePool::new(64 * 1024);
            let mut expected = Vec::new();
            let mut w = Throttled::new(1);
            let mut counter = 0u8;
            for _ in 0..400 {
                match rng.below(6) {
                    0 | 1 => {
                        let len = [1, 7, 100, 4095, 4096, 9000][rng.below(6) as usize];
                        let data: Vec<u8> = (0..len)
                            .map(|_| {
                                counter = counter.wrapping_add(1);
                                counter
                            })
                            .collect();
                        expected.extend_from_slice(&data);
                        if rng.below(2) == 0 {
                            q.push(Bytes::from(data));
                        } else {
                            q.push_slice_pooled(&data, &mut pool);
                        }
                    }
                    2 => {
                        w.would_block = true;
                        assert!(q.write_to(&mut w).is_err() || q.is_empty());
                        w.would_block = false;
                    }
                    _ => {
                        w.cap = 1 + rng.below(20_000) as usize;
                        let before = q.len();
                        let (n, short) = q.write_to(&mut w).unwrap();
                        assert_eq!(q.len(), before - n);
                        // Short means the writer, not the queue (or the 64-iovec batch),
                        // was the limit.
                        if short {
                            assert_eq!(n, w.cap);
                            assert!(!q.is_empty());
                        }
                        if n < w.cap {
                            assert!(!short, "a write below the writer's capacity is not short");
                        }
                        if q.release_into(&mut pool) {
                            assert_eq!(q.allocated(), 0);
                        }
                    }
                }
                assert_eq!(q.len(), expected.len() - w.got.len());
            }
            w.cap = usize::MAX;
            while !q.is_empty() {
                q.write_to(&mut w).unwrap();
            }
            assert!(w.got == expected, "seed {seed}: bytes differ");
        }
    }

    #[test]
    fn clear_frees_everything() {
        let mut b = OutboundBuffer::new();
        b.push_slice(&[1u8; 10_000]);
        b.push_slice(&[2u8; 10]);
        b.clear();
        assert!(b.is_empty());
        assert_eq!(b.allocated(), 0);
    }
}
