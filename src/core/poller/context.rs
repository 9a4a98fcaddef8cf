//! The poller thread's context: what code running on a poller thread (callbacks, and the
//! writes they make) can reach without a reference to the poller. One thread-local, one API.
//!
//! - which poller runs on this thread (so a write knows it may cork);
//! - the loop time, read once per iteration, so callbacks read no clock;
//! - the cork list: connections written to during this iteration, flushed at its end;
//! - the tail pool: drained connections' queue boxes (with their small coalescing buffers),
//!   up to `tail_pool_bytes`, so corked small writes allocate nothing in steady state.

use std::cell::{Cell, RefCell};
use std::time::Instant;

use super::PollerShared;
use crate::core::outbound::QueuePool;

/// The plain values, read on every write: a thread-local without a destructor is the
/// cheapest kind to reach (no registration check per access).
struct Current {
    poller: Cell<*const PollerShared>,
    now_ms: Cell<u64>,
}

/// The buffers, which need dropping with the thread.
struct Buffers {
    corked: RefCell<Vec<usize>>,
    tail_pool: RefCell<QueuePool>,
}

thread_local! {
    static CURRENT: Current = const {
        Current {
            poller: Cell::new(std::ptr::null()),
            now_ms: Cell::new(0),
        }
    };
    static BUFFERS: Buffers = const {
        Buffers {
            corked: RefCell::new(Vec::new()),
            tail_pool: RefCell::new(QueuePool::new(0)),
        }
    };
}

/// This thread now runs `poller`'s loop.
pub(super) fn enter(poller: &PollerShared) {
    CURRENT.with(|c| c.poller.set(poller));
    let max = poller.common.config.tail_pool_bytes;
    BUFFERS.with(|b| b.tail_pool.borrow_mut().set_max_bytes(max));
}

/// The loop is over: this thread is no poller any more.
pub(super) fn leave() {
    CURRENT.with(|c| c.poller.set(std::ptr::null()));
    BUFFERS.with(|b| b.tail_pool.borrow_mut().set_max_bytes(0));
}

/// True when called on `poller`'s own thread.
#[inline]
pub(crate) fn is_current(poller: &PollerShared) -> bool {
    CURRENT.with(|c| std::ptr::eq(c.poller.get(), poller))
}

/// Records this iteration's loop time.
#[inline]
pub(super) fn set_now_ms(ms: u64) {
    CURRENT.with(|c| c.now_ms.set(ms));
}

/// The engine clock now, as `poller`'s connections should see it: its loop time on its own
/// thread (callbacks read no clock), a fresh reading on any other.
#[inline]
pub(crate) fn now_ms(poller: &PollerShared) -> u64 {
    if is_current(poller) {
        CURRENT.with(|c| c.now_ms.get())
    } else {
        poller.common.clock.ms(Instant::now())
    }
}

/// Puts a connection on the current poller's flush list.
#[inline]
pub(crate) fn cork(token: usize) {
    BUFFERS.with(|c| c.corked.borrow_mut().push(token));
}

/// Takes the flush list, leaving an empty one (with `spare`'s allocation, so steady state does
/// not allocate).
#[inline]
pub(super) fn take_corked(spare: Vec<usize>) -> Vec<usize> {
    BUFFERS.with(|c| std::mem::replace(&mut *c.corked.borrow_mut(), spare))
}

/// Runs `f` with this thread's tail buffer pool (only meaningful on a poller thread).
#[inline]
pub(crate) fn with_tail_pool<R>(f: impl FnOnce(&mut QueuePool) -> R) -> R {
    BUFFERS.with(|c| f(&mut c.tail_pool.borrow_mut()))
}
