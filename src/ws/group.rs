//! Broadcast groups: one message to many WebSocket connections, encoded once.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, Weak};

use bytes::Bytes;

use super::conn::{FRAME, Message, WsConn};
use super::frame::{CloseCode, MAX_HEADER, encode_header};
use crate::core::config::OverflowPolicy;
use crate::core::conn::{ConnId, PollerRef};
use crate::core::error::WriteError;
use crate::core::outbound::CHUNK_CHARGE;
use crate::core::transport::Payload;

/// Member writes one run of a slot's backlog makes before it lets the poller serve its
/// sockets again (it re-queues itself behind the commands that came meanwhile).
const DRAIN_BUDGET: usize = 16 * 1024;

/// What a broadcast does for a member whose outbound queue is full (it would pass the
/// engine's `max_outbound_bytes`), and for all of a poller's members when that poller has
/// fallen so far behind that the group's backlog for it is full (see [`Group`]). Either way
/// the other members are not held up: each gets the message queued as soon as its poller runs
/// the broadcast.
///
/// ```
/// use netpoll::ws::{CloseCode, Group, SlowPolicy};
///
/// // Prices: the next tick supersedes a missed one, so a slow client just misses some.
/// let ticks = Group::new(SlowPolicy::Drop);
/// // Orders: every message matters, so a client that cannot keep up is cut off
/// // (1013 Try Again Later) and must reconnect and resync.
/// let orders = Group::new(SlowPolicy::Close { code: CloseCode::Again });
/// # let _ = (ticks, orders);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlowPolicy {
    /// Skip the message for that member and count it in [`Group::dropped_messages`]. The member
    /// stays; it misses messages while it cannot keep up (right for market data and game
    /// state, where the next message supersedes).
    Drop,
    /// Close the member: a close frame with `code` (e.g. 1008 policy violation or 1013 try
    /// again later) is queued past the limit, then the connection closes after a bounded
    /// flush. Counted in [`Group::slow_closes`].
    Close {
        /// The close code sent to the slow member.
        code: CloseCode,
    },
}

/// A set of WebSocket connections that receive the same messages: a chat room, a topic, a
/// market-data channel. `Clone + Send + Sync`; use it from any thread.
///
/// [`broadcast`](Self::broadcast) encodes the frame once into one `Bytes`, and puts that same
/// `Bytes` in the group's backlog for each poller that has members; the poller drains its
/// backlog in slices (at most 16,384 member writes before it serves its sockets again), queues
/// the frame on each of its members without copying, and flushes each with `writev` at the end
/// of its loop iteration. Messages from several senders may interleave differently on
/// different members, but every member gets each message whole and each sender's messages in
/// that sender's order.
///
/// Every queue on the way is bounded. A member's queue is bounded by the engine's
/// `max_outbound_bytes`; past it the group's [`SlowPolicy`] applies to that member. The
/// backlog for one poller is bounded the same way (`max_outbound_bytes`, counting 64 bytes of
/// bookkeeping per frame): a poller that cannot keep up (its members' fan-out is more than it
/// can do) gets no more until it has caught up, and the policy applies to its members for the
/// messages it misses (counted once per member under `Drop`; under `Close` they are closed, as
/// they could not get every message). The sender is never blocked or refused: a slow poller
/// must not slow down delivery to the others.
///
/// A connection leaves its groups when it closes.
///
/// ```no_run
/// # use netpoll::ws::{Group, SlowPolicy, WsConn, Message};
/// # fn demo(conn: &WsConn) {
/// let room = Group::new(SlowPolicy::Drop);
/// room.join(conn);
/// room.broadcast(Message::Text("welcome"));
/// # }
/// ```
#[derive(Clone)]
pub struct Group {
    inner: Arc<GroupInner>,
}

impl std::fmt::Debug for Group {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Group")
            .field("len", &self.len())
            .field("policy", &self.inner.policy)
            .field("dropped_messages", &self.dropped_messages())
            .field("slow_closes", &self.slow_closes())
            .finish()
    }
}

/// Members of one poller: a dense vector for fast iteration and an index by id.
#[derive(Default)]
struct Members {
    conns: Vec<WsConn>,
    index: HashMap<ConnId, usize>,
}

impl Members {
    fn insert(&mut self, conn: &WsConn) -> bool {
        if self.index.contains_key(&conn.id()) {
            return false;
        }
        self.index.insert(conn.id(), self.conns.len());
        self.conns.push(conn.clone());
        true
    }

    fn remove(&mut self, id: ConnId) -> bool {
        let Some(i) = self.index.remove(&id) else {
            return false;
        };
        self.conns.swap_remove(i);
        if let Some(moved) = self.conns.get(i) {
            self.index.insert(moved.id(), i);
        }
        true
    }
}

/// One poller's share of a group.
struct Slot {
    poller: PollerRef,
    members: Mutex<Members>,
    /// Frames waiting for this poller to deliver them.
    backlog: Mutex<Backlog>,
    /// The backlog's bound (the engine's `max_outbound_bytes`).
    limit: usize,
}

/// Broadcast frames waiting for a poller, with what they are charged against the bound.
#[derive(Default)]
struct Backlog {
    frames: VecDeque<(Bytes, Option<ConnId>)>,
    charge: usize,
    /// A run that drains the backlog is queued on the poller.
    scheduled: bool,
}

impl Slot {
    fn members(&self) -> MutexGuard<'_, Members> {
        self.members.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn backlog(&self) -> MutexGuard<'_, Backlog> {
        self.backlog.lock().unwrap_or_else(|p| p.into_inner())
    }
}

pub(crate) struct GroupInner {
    policy: SlowPolicy,
    /// Indexed by poller; filled in as members of each poller join.
    slots: RwLock<Vec<Option<Arc<Slot>>>>,
    len: AtomicUsize,
    dropped_messages: AtomicU64,
    slow_closes: AtomicU64,
}

/// The groups a connection is a member of, kept in its attachment so that its close removes it
/// from each of them.
#[derive(Default)]
struct Memberships(Vec<Weak<GroupInner>>);

impl GroupInner {
    fn slot(&self, poller: usize) -> Option<Arc<Slot>> {
        let slots = self.slots.read().unwrap_or_else(|p| p.into_inner());
        slots.get(poller).cloned().flatten()
    }

    /// The slot for `conn`'s poller, made on first use; `None` if that index belongs to
    /// another engine's poller.
    fn slot_for(&self, conn: &WsConn) -> Option<Arc<Slot>> {
        let poller = conn.conn().poller();
        let i = poller.index();
        if let Some(slot) = self.slot(i) {
            return slot.poller.same(&poller).then_some(slot);
        }
        let mut slots = self.slots.write().unwrap_or_else(|p| p.into_inner());
        if slots.len() <= i {
            slots.resize(i + 1, None);
        }
        let slot = slots[i].get_or_insert_with(|| {
            Arc::new(Slot {
                poller: poller.clone(),
                members: Mutex::new(Members::default()),
                backlog: Mutex::new(Backlog::default()),
                limit: conn.conn().config().max_outbound_bytes(),
            })
        });
        slot.poller.same(&poller).then(|| slot.clone())
    }

    /// Removes a member (a closing connection, called by its poller, or `leave`).
    pub(crate) fn remove(&self, conn: &WsConn) -> bool {
        let removed = self
            .slot(conn.conn().poller_index())
            .is_some_and(|slot| slot.members().remove(conn.id()));
        if removed {
            self.len.fetch_sub(1, Ordering::Relaxed);
        }
        removed
    }

    /// Puts `frame` in `slot`'s backlog and makes sure its poller will drain it; if the
    /// backlog is full (the poller is behind), the members of that poller miss it, under the
    /// group's policy.
    fn enqueue(self: &Arc<Self>, slot: &Arc<Slot>, frame: &Bytes, except: Option<ConnId>) {
        let charge = frame.len() + CHUNK_CHARGE;
        let schedule = {
            let mut backlog = slot.backlog();
            if backlog.charge + charge > slot.limit {
                drop(backlog);
                self.poller_behind(slot, except);
                return;
            }
            backlog.frames.push_back((frame.clone(), except));
            backlog.charge += charge;
            !std::mem::replace(&mut backlog.scheduled, true)
        };
        if schedule {
            self.schedule(slot);
        }
    }

    fn schedule(self: &Arc<Self>, slot: &Arc<Slot>) {
        let (inner, run_slot) = (self.clone(), slot.clone());
        slot.poller.run(Box::new(move || inner.drain(&run_slot)));
    }

    /// A poller is too far behind to take `slot`'s next frame: its members miss it.
    fn poller_behind(&self, slot: &Slot, except: Option<ConnId>) {
        let members = slot.members();
        self.missed(members.conns.iter().filter(|m| Some(m.id()) != except));
    }

    /// Members that could not take a message, under the group's policy: counted (`Drop`), or
    /// closed (`Close`, those still open).
    fn missed<'a>(&self, members: impl Iterator<Item = &'a WsConn>) {
        match self.policy {
            SlowPolicy::Drop => {
                let n = members.count() as u64;
                self.dropped_messages.fetch_add(n, Ordering::Relaxed);
            }
            SlowPolicy::Close { code } => {
                for m in members.filter(|m| m.is_open()) {
                    self.slow_closes.fetch_add(1, Ordering::Relaxed);
                    m.close(code, "too slow");
                }
            }
        }
    }

    /// Runs on `slot`'s poller: delivers backlogged frames until it is empty or the slice's
    /// budget of member writes is spent, then queues itself again behind whatever came
    /// meanwhile, so a long backlog never starves the poller's sockets.
    fn drain(self: &Arc<Self>, slot: &Arc<Slot>) {
        let mut writes = 0;
        while writes < DRAIN_BUDGET {
            let next = {
                let mut backlog = slot.backlog();
                match backlog.frames.pop_front() {
                    Some(item) => {
                        backlog.charge -= item.0.len() + CHUNK_CHARGE;
                        item
                    }
                    None => {
                        backlog.scheduled = false;
                        // Give a burst's ring back.
                        if backlog.frames.capacity() > 64 {
                            backlog.frames = VecDeque::new();
                        }
                        return;
                    }
                }
            };
            writes += self.deliver(slot, &next.0, next.1).max(1);
        }
        self.schedule(slot);
    }

    /// Queues `frame` on a slot's members (on that slot's poller); returns how many.
    fn deliver(&self, slot: &Slot, frame: &Bytes, except: Option<ConnId>) -> usize {
        let members = slot.members();
        for m in &members.conns {
            if Some(m.id()) == except {
                continue;
            }
            let result = m.conn().write_gated(
                &[],
                Payload::Fanout(frame.clone()),
                FRAME,
                Some(OverflowPolicy::Error),
            );
            if let Err(WriteError::Overflow { .. }) = result {
                self.missed(std::iter::once(m));
            }
            // A closed member is removed by its own close; nothing to do here.
        }
        members.conns.len()
    }
}

impl Group {
    /// An empty group. Members may come from any poller of one engine.
    pub fn new(policy: SlowPolicy) -> Group {
        Group {
            inner: Arc::new(GroupInner {
                policy,
                slots: RwLock::new(Vec::new()),
                len: AtomicUsize::new(0),
                dropped_messages: AtomicU64::new(0),
                slow_closes: AtomicU64::new(0),
            }),
        }
    }

    /// Adds `conn`. Returns false if it is already a member or closed, if it belongs to
    /// another engine than the members so far, or if it is a client connection (groups send
    /// server frames).
    pub fn join(&self, conn: &WsConn) -> bool {
        if conn.is_client() {
            return false;
        }
        let Some(slot) = self.inner.slot_for(conn) else {
            return false;
        };
        // Locks are never nested connection -> members (a broadcast holds members ->
        // connection). 1. Record the membership on the connection, unless it is closed.
        let recorded = conn.conn().with_layer(|_, attachment, open| {
            if !open {
                return false;
            }
            let groups = &mut attachment.get_or_insert_with(Memberships::default).0;
            if groups
                .iter()
                .any(|g| std::ptr::eq(g.as_ptr(), Arc::as_ptr(&self.inner)))
            {
                return false;
            }
            groups.push(Arc::downgrade(&self.inner));
            true
        });
        if !recorded {
            return false;
        }
        // 2. Add the member.
        if slot.members().insert(conn) {
            self.inner.len.fetch_add(1, Ordering::Relaxed);
        }
        // 3. A close that ran between 1 and 2 found nothing to remove yet: undo.
        if !conn.conn().is_open() {
            self.inner.remove(conn);
            return false;
        }
        true
    }

    /// Removes `conn`; false if it was not a member.
    pub fn leave(&self, conn: &WsConn) -> bool {
        conn.conn().with_layer(|_, attachment, _| {
            if let Some(m) = attachment.get_mut::<Memberships>() {
                m.0.retain(|g| !std::ptr::eq(g.as_ptr(), Arc::as_ptr(&self.inner)));
            }
        });
        self.inner.remove(conn)
    }

    /// Number of members.
    pub fn len(&self) -> usize {
        self.inner.len.load(Ordering::Relaxed)
    }

    /// True if the group has no members.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Messages a member did not get because it could not keep up (policy
    /// [`SlowPolicy::Drop`]), since the group was made.
    pub fn dropped_messages(&self) -> u64 {
        self.inner.dropped_messages.load(Ordering::Relaxed)
    }

    /// Members closed for being too slow (policy [`SlowPolicy::Close`]), since the group was
    /// made.
    pub fn slow_closes(&self) -> u64 {
        self.inner.slow_closes.load(Ordering::Relaxed)
    }

    /// Sends `msg` to every member.
    ///
    /// Returns at once, from any thread: the frame is encoded here, once, and each member's
    /// poller queues it later. A member that joins meanwhile may get it too; a member whose
    /// queue is full is handled by the group's [`SlowPolicy`].
    ///
    /// ```no_run
    /// # fn demo(room: &netpoll::ws::Group) {
    /// use netpoll::ws::Message;
    ///
    /// room.broadcast(Message::Text(r#"{"type":"tick","price":101.5}"#));
    /// println!("{} members, {} messages dropped so far", room.len(), room.dropped_messages());
    /// # }
    /// ```
    pub fn broadcast(&self, msg: Message<'_>) {
        self.send(msg, None)
    }

    /// Sends `msg` to every member but `except` (typically the sender).
    pub fn broadcast_except(&self, except: &WsConn, msg: Message<'_>) {
        self.send(msg, Some(except.id()))
    }

    fn send(&self, msg: Message<'_>, except: Option<ConnId>) {
        let frame = encode_frame(msg);
        let slots: Vec<Arc<Slot>> = {
            let slots = self.inner.slots.read().unwrap_or_else(|p| p.into_inner());
            slots.iter().flatten().cloned().collect()
        };
        for slot in slots {
            if slot.members().conns.is_empty() {
                continue;
            }
            self.inner.enqueue(&slot, &frame, except);
        }
    }
}

/// One unmasked frame (header + payload) in one `Bytes`, shared by every member's queue.
fn encode_frame(msg: Message<'_>) -> Bytes {
    let payload = msg.as_bytes();
    let mut head = [0u8; MAX_HEADER];
    let n = encode_header(&mut head, msg.opcode(), true, payload.len(), None);
    let mut frame = Vec::with_capacity(n + payload.len());
    frame.extend_from_slice(&head[..n]);
    frame.extend_from_slice(payload);
    Bytes::from(frame)
}

/// A closing connection leaves every group it joined (called by its poller).
pub(crate) fn leave_all(conn: &WsConn) {
    let groups = conn
        .conn()
        .with_layer(|_, attachment, _| attachment.take::<Memberships>());
    let Some(Memberships(groups)) = groups else {
        return;
    };
    for g in groups {
        if let Some(g) = g.upgrade() {
            g.remove(conn);
        }
    }
}
