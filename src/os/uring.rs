//! io_uring (Linux): one ring per poller and its provided-buffer ring. The only module with
//! `unsafe` for io_uring: everything that hands the kernel an address lives here.
//!
//! The ring is set up for one thread (`SINGLE_ISSUER`, `DEFER_TASKRUN`: completions are
//! posted only when the poller enters the kernel to wait, so it is never interrupted to run
//! them). Receives select their buffer from a per-poller ring of `count` buffers of `size`
//! bytes (`recv` multishot), so a connection holds no buffer while it waits; a buffer is the
//! poller's until it gives it back with [`Uring::recycle`].
//!
//! Sends take their buffers over and keep them, unmoved, until their completions (the
//! caller gets them back with [`Uring::finish`]), so no caller can free what the kernel reads.

use std::alloc::{Layout, alloc_zeroed, dealloc};
use std::io;
use std::mem::ManuallyDrop;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::Duration;

use io_uring::types::{BufRingEntry, CancelBuilder, Fd, SubmitArgs, Timespec};
use io_uring::{IoUring, cqueue, opcode, squeue};
use slab::Slab;
use std::io::IoSlice;

/// The `user_data` bit of send completions (the low bits are the send's slot).
pub(crate) const SEND: u64 = 1 << 63;

/// Most buffers one `sendmsg` gathers.
const SEND_IOVECS: usize = 64;

/// What a send sends: bytes that stay where they are while the kernel reads them.
pub(crate) trait SendBuf {
    /// Fills `dst` with the unsent bytes, in order (as many slices as fit); returns how many.
    fn gather<'a>(&'a mut self, dst: &mut [IoSlice<'a>]) -> usize;
    /// `n` bytes were sent.
    fn advance(&mut self, n: usize);
    /// Bytes not sent yet.
    fn remaining(&self) -> usize;
}

/// A send in flight: its bytes, and for `sendmsg` the header and iovecs (boxed: they must not
/// move either).
struct Sending<B> {
    buf: B,
    msg: Option<Box<Msg>>,
    owner: usize,
}

struct Msg {
    hdr: libc::msghdr,
    iov: [libc::iovec; SEND_IOVECS],
}

/// The buffer group id of the receive buffers (one group per ring).
const BUF_GROUP: u16 = 0;

/// One completion, copied out of the completion queue.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Completion {
    pub(crate) user_data: u64,
    pub(crate) result: i32,
    pub(crate) flags: u32,
}

impl Completion {
    /// The provided buffer the kernel filled, if any.
    pub(crate) fn buffer(&self) -> Option<u16> {
        cqueue::buffer_select(self.flags)
    }

    /// A multishot request stays armed after this completion.
    pub(crate) fn more(&self) -> bool {
        cqueue::more(self.flags)
    }
}

/// A ring, its receive buffers and the sends in flight (of buffers `B`).
pub(crate) struct Uring<B: SendBuf> {
    /// Closed before the buffers are freed (see Drop).
    ring: ManuallyDrop<IoUring>,
    /// The provided-buffer ring: `count` entries the kernel takes buffers from.
    entries: *mut BufRingEntry,
    entries_layout: Layout,
    /// `count` buffers of `size` bytes, back to back.
    buffers: *mut u8,
    buffers_layout: Layout,
    count: u16,
    size: u32,
    /// Our copy of the buffer ring's tail (the kernel reads the shared one).
    tail: u16,
    /// Sends in flight: the kernel may read their bytes until their completions.
    sends: Slab<Sending<B>>,
}

// SAFETY: the raw pointers are owned allocations used only through `&mut self`; the ring moves
// to its poller thread before the first submission and is used by that thread alone.
unsafe impl<B: SendBuf + Send> Send for Uring<B> {}

impl<B: SendBuf> Uring<B> {
    /// A ring of `sq_entries` submission slots with `count` (a power of two, at most 32768)
    /// receive buffers of `size` bytes. Fails where io_uring is unavailable (an old kernel, a
    /// seccomp profile, `kernel.io_uring_disabled`) or lacks a feature this needs.
    pub(crate) fn new(sq_entries: u32, count: u16, size: u32) -> io::Result<Uring<B>> {
        if !count.is_power_of_two() || count > 32768 || size == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "buffer count must be a power of two up to 32768",
            ));
        }
        let ring = IoUring::builder()
            .setup_single_issuer()
            .setup_defer_taskrun()
            // Flags deferred work in the ring, so a zero-wait submit knows to run it.
            .setup_taskrun_flag()
            .setup_cqsize(sq_entries * 4)
            .build(sq_entries)?;
        let entries_layout = Layout::from_size_align(
            usize::from(count) * std::mem::size_of::<BufRingEntry>(),
            4096,
        )
        .map_err(io::Error::other)?;
        let buffers_layout = Layout::from_size_align(usize::from(count) * size as usize, 64)
            .map_err(io::Error::other)?;
        // SAFETY: both layouts have a non-zero size (count and size are checked above).
        let entries = unsafe { alloc_zeroed(entries_layout) }.cast::<BufRingEntry>();
        // SAFETY: as above.
        let buffers = unsafe { alloc_zeroed(buffers_layout) };
        if entries.is_null() || buffers.is_null() {
            std::alloc::handle_alloc_error(entries_layout);
        }
        let mut uring = Uring {
            ring: ManuallyDrop::new(ring),
            entries,
            entries_layout,
            buffers,
            buffers_layout,
            count,
            size,
            tail: 0,
            sends: Slab::new(),
        };
        // SAFETY: `entries` is a page-aligned, zeroed array of `count` entries that lives as
        // long as the ring (freed in Drop only after the ring is unregistered and closed).
        unsafe {
            uring.ring.submitter().register_buf_ring_with_flags(
                entries as u64,
                count,
                BUF_GROUP,
                0,
            )?;
        }
        for bid in 0..count {
            uring.put(bid);
        }
        uring.publish_tail();
        Ok(uring)
    }

    /// Writes buffer `bid` into the next free entry (published by `publish_tail`).
    fn put(&mut self, bid: u16) {
        let mask = self.count - 1;
        // SAFETY: `tail & mask` < count, inside the entries allocation; the kernel only reads
        // entries between its head and the published tail, and this one is past the tail.
        let entry = unsafe { &mut *self.entries.add(usize::from(self.tail & mask)) };
        // SAFETY: bid < count, so the buffer lies inside the buffers allocation.
        let addr = unsafe { self.buffers.add(usize::from(bid) * self.size as usize) };
        entry.set_addr(addr as u64);
        entry.set_len(self.size);
        entry.set_bid(bid);
        self.tail = self.tail.wrapping_add(1);
    }

    fn publish_tail(&mut self) {
        // SAFETY: `entries` is the ring's first entry, initialized; its `resv` field is the
        // ring's tail, which the kernel reads and we alone write (atomically, with release
        // ordering so the entries written before are visible first).
        unsafe {
            let tail = BufRingEntry::tail(self.entries).cast_mut();
            (*tail.cast::<AtomicU16>()).store(self.tail, Ordering::Release);
        }
    }

    /// Gives buffer `bid` back to the kernel.
    pub(crate) fn recycle(&mut self, bid: u16) {
        debug_assert!(bid < self.count);
        self.put(bid);
        self.publish_tail();
    }

    /// The first `len` bytes of buffer `bid`, which a completion handed us and we have not
    /// recycled yet.
    pub(crate) fn buffer_mut(&mut self, bid: u16, len: usize) -> &mut [u8] {
        assert!(bid < self.count && len <= self.size as usize);
        // SAFETY: inside the buffers allocation (checked above); the kernel wrote it before
        // posting the completion and will not touch it until it is recycled, and `&mut self`
        // keeps it from being recycled while the slice lives.
        unsafe {
            std::slice::from_raw_parts_mut(
                self.buffers.add(usize::from(bid) * self.size as usize),
                len,
            )
        }
    }

    fn push(&mut self, entry: squeue::Entry) -> io::Result<()> {
        loop {
            // SAFETY: the entries pushed here reference no memory (recv selects a provided
            // buffer, cancels and polls carry none) or memory in `self.sends`, which stays
            // until the completion (`finish`).
            if unsafe { self.ring.submission().push(&entry) }.is_ok() {
                return Ok(());
            }
            // The queue is full: hand what it holds to the kernel and go on.
            self.ring.submit()?;
        }
    }

    /// Arms a multishot receive on `fd` into the provided buffers.
    pub(crate) fn push_recv(&mut self, fd: RawFd, user_data: u64) -> io::Result<()> {
        let e = opcode::RecvMulti::new(Fd(fd), BUF_GROUP)
            .build()
            .user_data(user_data);
        self.push(e)
    }

    /// Arms a multishot poll for readability of `fd` (the epoll descriptor).
    pub(crate) fn push_poll_in(&mut self, fd: RawFd, user_data: u64) -> io::Result<()> {
        let e = opcode::PollAdd::new(Fd(fd), libc::POLLIN as u32)
            .multi(true)
            .build()
            .user_data(user_data);
        self.push(e)
    }

    /// Cancels every request submitted with `target` (its completion reports `user_data`).
    pub(crate) fn push_cancel(&mut self, target: u64, user_data: u64) -> io::Result<()> {
        let e = opcode::AsyncCancel::new(target)
            .build()
            .user_data(user_data);
        self.push(e)
    }

    /// Cancels every request on `fd` and tells the kernel at once: the caller is about to
    /// close `fd` (after which the number may name another socket).
    pub(crate) fn cancel_fd_now(&mut self, fd: RawFd, user_data: u64) -> io::Result<()> {
        let e = opcode::AsyncCancel2::new(CancelBuilder::fd(Fd(fd)).all())
            .build()
            .user_data(user_data);
        self.push(e)?;
        self.ring.submit()?;
        Ok(())
    }

    /// Sends `buf` on `fd` for `owner` (a connection's token); the ring keeps it, unmoved,
    /// until the completion, which reports `user_data` [`SEND`] | slot (see [`Uring::sent`]).
    pub(crate) fn send(&mut self, fd: RawFd, buf: B, owner: usize) -> io::Result<()> {
        let slot = self.sends.insert(Sending {
            buf,
            msg: None,
            owner,
        });
        if let Err(e) = self.submit_send(slot, fd) {
            self.sends.remove(slot);
            return Err(e);
        }
        Ok(())
    }

    /// The owner of send `slot`, if it is in flight.
    pub(crate) fn send_owner(&self, slot: usize) -> Option<usize> {
        self.sends.get(slot).map(|s| s.owner)
    }

    /// Sends the rest of send `slot` (after a short completion) on `fd`, which must be the
    /// same connection's descriptor (the caller checked it is still open).
    pub(crate) fn resend(&mut self, slot: usize, fd: RawFd) -> io::Result<()> {
        self.submit_send(slot, fd)
    }

    fn submit_send(&mut self, slot: usize, fd: RawFd) -> io::Result<()> {
        let s = self.sends.get_mut(slot).expect("a send in flight");
        let user_data = SEND | slot as u64;
        let mut slices = [IoSlice::new(&[]); SEND_IOVECS];
        let count = s.buf.gather(&mut slices);
        let entry = if count == 1 {
            opcode::Send::new(Fd(fd), slices[0].as_ptr(), slices[0].len() as u32)
                .flags(libc::MSG_NOSIGNAL)
                .build()
        } else {
            let msg = s.msg.get_or_insert_with(|| {
                Box::new(Msg {
                    // SAFETY: an all-zero msghdr (null pointers, zero lengths) is valid.
                    hdr: unsafe { std::mem::zeroed() },
                    iov: [libc::iovec {
                        iov_base: std::ptr::null_mut(),
                        iov_len: 0,
                    }; SEND_IOVECS],
                })
            });
            for (iov, s) in msg.iov.iter_mut().zip(&slices[..count]) {
                iov.iov_base = s.as_ptr().cast_mut().cast();
                iov.iov_len = s.len();
            }
            msg.hdr.msg_iov = msg.iov.as_mut_ptr();
            msg.hdr.msg_iovlen = count as _;
            opcode::SendMsg::new(Fd(fd), &msg.hdr)
                .flags(libc::MSG_NOSIGNAL as u32)
                .build()
        };
        self.push(entry.user_data(user_data))
    }

    /// Send `slot` completed `n` bytes: advances it and returns its remaining length (0: the
    /// send is done; take its buffer back with [`Uring::finish`]).
    pub(crate) fn sent(&mut self, slot: usize, n: usize) -> usize {
        let s = self.sends.get_mut(slot).expect("a send in flight");
        s.buf.advance(n);
        s.buf.remaining()
    }

    /// Ends send `slot` (done, failed, or not to be resent) and gives its buffer back. Only
    /// after its completion: the kernel may read the buffer until then.
    pub(crate) fn finish(&mut self, slot: usize) -> B {
        self.sends.remove(slot).buf
    }

    /// Sends still waiting for their completion.
    pub(crate) fn sends_in_flight(&self) -> usize {
        self.sends.len()
    }

    /// Slots of the sends in flight (to cancel them).
    pub(crate) fn send_slots(&self) -> Vec<usize> {
        self.sends.iter().map(|(s, _)| s).collect()
    }

    /// Submits what was pushed and waits for at least one completion or `timeout` (`None`:
    /// no limit). An interrupted or timed-out wait is not an error.
    pub(crate) fn submit_and_wait(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        let ts;
        let args;
        let r = match timeout {
            Some(t) if t.is_zero() => self.ring.submit_and_wait(0),
            Some(t) => {
                ts = Timespec::from(t);
                args = SubmitArgs::new().timespec(&ts);
                self.ring.submitter().submit_with_args(1, &args)
            }
            None => self.ring.submit_and_wait(1),
        };
        match r {
            Ok(_) => Ok(()),
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ETIME | libc::EINTR | libc::EBUSY | libc::EAGAIN)
                ) =>
            {
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Moves the posted completions into `out` (appended).
    pub(crate) fn completions(&mut self, out: &mut Vec<Completion>) {
        // With DEFER_TASKRUN a zero-wait submit would be needed to run pending task work;
        // the poller calls this right after its wait, which ran it.
        for cqe in self.ring.completion() {
            out.push(Completion {
                user_data: cqe.user_data(),
                result: cqe.result(),
                flags: cqe.flags(),
            });
        }
    }
}

impl<B: SendBuf> Drop for Uring<B> {
    fn drop(&mut self) {
        let _ = self.ring.submitter().unregister_buf_ring(BUF_GROUP);
        if !self.sends.is_empty() {
            // The kernel may still read these sends' bytes: never free them.
            std::mem::forget(std::mem::take(&mut self.sends));
        }
        // SAFETY: the ring is closed first and not used again; the kernel copies received
        // bytes only in this thread's task work, which no longer runs for a closed ring, and
        // the buffer ring is unregistered, so neither allocation is read or written after
        // this. Both were made with these layouts in `new`.
        unsafe {
            ManuallyDrop::drop(&mut self.ring);
            dealloc(self.entries.cast(), self.entries_layout);
            dealloc(self.buffers, self.buffers_layout);
        }
    }
}
