//! Broadcast groups: one message to many WebSocket connections, encoded once.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, RwLock};

use bytes::Bytes;

use super::conn::{FRAME, Message, WsAttachment, WsConn, shares_compressed_frames};
use super::deflate::{self, DeflateConfig};
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

/// One member as its poller's share of the group keeps it.
struct Member {
    conn: WsConn,
    /// Messages it missed under [`SlowPolicy::Drop`] and was not told about yet.
    missed: u64,
}

/// Members of one poller: a dense vector for fast iteration and an index by id.
#[derive(Default)]
struct Members {
    list: Vec<Member>,
    index: HashMap<ConnId, usize>,
    /// Some member may have missed messages (so a missed-message notice may be due).
    lagging: bool,
}

impl Members {
    fn insert(&mut self, conn: &WsConn) -> bool {
        if self.index.contains_key(&conn.id()) {
            return false;
        }
        self.index.insert(conn.id(), self.list.len());
        self.list.push(Member {
            conn: conn.clone(),
            missed: 0,
        });
        true
    }

    fn remove(&mut self, id: ConnId) -> bool {
        let Some(i) = self.index.remove(&id) else {
            return false;
        };
        self.list.swap_remove(i);
        if let Some(moved) = self.list.get(i) {
            self.index.insert(moved.conn.id(), i);
        }
        true
    }

    fn get_mut(&mut self, id: ConnId) -> Option<&mut Member> {
        let i = *self.index.get(&id)?;
        self.list.get_mut(i)
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

/// One broadcast waiting for a poller: its frame (or a batch's frames back to back), how many
/// messages that is, and the member it skips.
struct Queued {
    frame: Bytes,
    messages: u64,
    except: Option<ConnId>,
    /// A single message's compressed frame (permessage-deflate, no context takeover, window
    /// 15), made by the first poller with a member that agreed to compression and shared by
    /// every poller: compressed once per message. `None` for batches.
    deflated: Option<Arc<OnceLock<Option<Bytes>>>>,
}

/// Broadcast frames waiting for a poller, with what they are charged against the bound.
#[derive(Default)]
struct Backlog {
    frames: VecDeque<Queued>,
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

/// What a group calls when a member that missed messages has room again (see
/// [`Group::on_missed`]).
type MissedNotice = Arc<dyn Fn(&WsConn, u64) + Send + Sync>;

/// Carries a group's broadcasts beyond this process (a bus, `crate::bus`): told every
/// message broadcast here, after its local delivery was queued. Messages that come back from
/// other nodes are delivered with [`Group::deliver_local`], which does not relay them.
pub(crate) trait Relay: Send + Sync {
    fn publish(&self, msg: Message<'_>);
}

pub(crate) struct GroupInner {
    policy: SlowPolicy,
    /// Set once, when the group is bound to a bus channel.
    relay: OnceLock<Arc<dyn Relay>>,
    on_missed: Option<MissedNotice>,
    /// Indexed by poller; filled in as members of each poller join.
    slots: RwLock<Vec<Option<Arc<Slot>>>>,
    len: AtomicUsize,
    dropped_messages: AtomicU64,
    slow_closes: AtomicU64,
}

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

    /// Puts `frame` (`messages` frames back to back) in `slot`'s backlog and makes sure its
    /// poller will drain it; if the backlog is full (the poller is behind), the members of
    /// that poller miss it, under the group's policy.
    fn enqueue(
        self: &Arc<Self>,
        slot: &Arc<Slot>,
        frame: &Bytes,
        messages: u64,
        except: Option<ConnId>,
        deflated: Option<&Arc<OnceLock<Option<Bytes>>>>,
    ) {
        let charge = frame.len() + CHUNK_CHARGE;
        let schedule = {
            let mut backlog = slot.backlog();
            if backlog.charge + charge > slot.limit {
                drop(backlog);
                self.poller_behind(slot, except, messages);
                return;
            }
            backlog.frames.push_back(Queued {
                frame: frame.clone(),
                messages,
                except,
                deflated: deflated.cloned(),
            });
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

    /// A poller is too far behind to take `slot`'s next frame (`messages` messages): its
    /// members miss it.
    fn poller_behind(&self, slot: &Slot, except: Option<ConnId>, messages: u64) {
        let mut members = slot.members();
        members.lagging = true;
        let missing = members
            .list
            .iter_mut()
            .filter(|m| Some(m.conn.id()) != except);
        self.missed(missing, messages);
    }

    /// Members that could not take `messages` messages, under the group's policy: counted,
    /// per member and in all (`Drop`), or closed (`Close`, those still open).
    fn missed<'a>(&self, members: impl Iterator<Item = &'a mut Member>, messages: u64) {
        match self.policy {
            SlowPolicy::Drop => {
                let mut n = 0;
                for m in members {
                    m.missed += messages;
                    n += messages;
                }
                self.dropped_messages.fetch_add(n, Ordering::Relaxed);
            }
            SlowPolicy::Close { code } => {
                for m in members.filter(|m| m.conn.is_open()) {
                    self.slow_closes.fetch_add(1, Ordering::Relaxed);
                    m.conn.close(code, "too slow");
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
                        backlog.charge -= item.frame.len() + CHUNK_CHARGE;
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
            writes += self.deliver(slot, &next).max(1);
        }
        self.schedule(slot);
    }

    /// Queues a backlogged frame on a slot's members (on that slot's poller); returns how
    /// many. Members that missed messages and have room again are announced first
    /// ([`Group::with_missed_notice`]), so each notice comes before the next message.
    fn deliver(&self, slot: &Slot, item: &Queued) -> usize {
        if let Some(notice) = &self.on_missed {
            // Outside the members' lock: a notice may use the group. A member that left
            // meanwhile is not told (its unsubscribe acknowledgement may be out already).
            for (conn, n) in Self::notices_due(slot, item) {
                if slot.members().index.contains_key(&conn.id()) {
                    notice(&conn, n);
                }
            }
        }
        let mut members = slot.members();
        let n = members.list.len();
        let compressed = Self::compressed(item, members.list.first().map(|m| &m.conn));
        let mut lagging = false;
        for m in members.list.iter_mut() {
            if Some(m.conn.id()) == item.except {
                continue;
            }
            let result = m.conn.conn().write_gated_with(
                &[],
                |bits, _, _| {
                    Ok(match compressed {
                        Some(c) if shares_compressed_frames(bits) => Payload::Fanout(c.clone()),
                        _ => Payload::Fanout(item.frame.clone()),
                    })
                },
                FRAME,
                Some(OverflowPolicy::Error),
            );
            if let Err(WriteError::Overflow { .. }) = result {
                self.missed(std::iter::once(&mut *m), item.messages);
                lagging = true;
            }
            // A closed member is removed by its own close; nothing to do here.
        }
        members.lagging |= lagging;
        n
    }

    /// `item`'s compressed frame, if its message is worth compressing on the engine of
    /// `member` (one of the slot's: they share a poller, so an engine and its settings); made
    /// by the first poller that asks.
    fn compressed<'a>(item: &'a Queued, member: Option<&WsConn>) -> Option<&'a Bytes> {
        let cell = item.deflated.as_ref()?;
        let config = member?.conn().layer_settings::<DeflateConfig>()?;
        cell.get_or_init(|| deflate_frame(&item.frame, config))
            .as_ref()
    }

    /// Members that missed messages and now have room for `item` and a notice: their counts,
    /// taken.
    fn notices_due(slot: &Slot, item: &Queued) -> Vec<(WsConn, u64)> {
        let mut members = slot.members();
        if !members.lagging {
            return Vec::new();
        }
        let mut due = Vec::new();
        let mut still = false;
        for m in members.list.iter_mut().filter(|m| m.missed > 0) {
            let room = m.conn.pending_bytes() + item.frame.len() + 2 * CHUNK_CHARGE <= slot.limit;
            if room && Some(m.conn.id()) != item.except {
                due.push((m.conn.clone(), std::mem::take(&mut m.missed)));
            } else {
                still = true;
            }
        }
        members.lagging = still;
        due
    }
}

impl Group {
    /// An empty group. Members may come from any poller of one engine.
    pub fn new(policy: SlowPolicy) -> Group {
        Group {
            inner: Arc::new(GroupInner {
                policy,
                relay: OnceLock::new(),
                on_missed: None,
                slots: RwLock::new(Vec::new()),
                len: AtomicUsize::new(0),
                dropped_messages: AtomicU64::new(0),
                slow_closes: AtomicU64::new(0),
            }),
        }
    }

    /// An empty group with the [`SlowPolicy::Drop`] policy that tells a member how many
    /// messages it missed: `notice(conn, n)` runs on the member's poller when it has room
    /// again, just before its next message is queued, so a notice sent from it (a "gap"
    /// message, say) arrives before that message. Like tokio's broadcast receivers learning
    /// their lag. Without a notice the count stays readable through
    /// [`missed_by`](Self::missed_by).
    ///
    /// ```no_run
    /// use netpoll::ws::Group;
    ///
    /// let ticks = Group::with_missed_notice(|conn, n| {
    ///     let _ = conn.send_text(&format!(r#"{{"type":"gap","missed":{n}}}"#));
    /// });
    /// # let _ = ticks;
    /// ```
    pub fn with_missed_notice(notice: impl Fn(&WsConn, u64) + Send + Sync + 'static) -> Group {
        let group = Group::new(SlowPolicy::Drop);
        let mut inner = Arc::into_inner(group.inner).expect("not shared yet");
        inner.on_missed = Some(Arc::new(notice));
        Group {
            inner: Arc::new(inner),
        }
    }

    /// Messages `conn` missed under [`SlowPolicy::Drop`] and was not told about (by the
    /// notice of [`with_missed_notice`](Self::with_missed_notice)); `None` if it is not a
    /// member.
    pub fn missed_by(&self, conn: &WsConn) -> Option<u64> {
        let slot = self.inner.slot(conn.poller_index())?;
        let mut members = slot.members();
        members.get_mut(conn.id()).map(|m| m.missed)
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
            let groups = &mut attachment.get_or_insert_with(WsAttachment::default).groups;
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
            if let Some(m) = attachment.get_mut::<WsAttachment>() {
                m.groups
                    .retain(|g| !std::ptr::eq(g.as_ptr(), Arc::as_ptr(&self.inner)));
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

    /// Sends a payload already in a `Bytes` (built once by a producer, say) to every member;
    /// with `text` it must be UTF-8. The frame is still one buffer for all members.
    ///
    /// # Errors
    /// [`WriteError::Invalid`] for text that is not UTF-8 (nothing is sent).
    pub fn broadcast_shared(&self, payload: &Bytes, text: bool) -> Result<(), WriteError> {
        let msg = if text {
            let text = super::utf8::from_utf8(payload)
                .ok_or(WriteError::Invalid("text message is not UTF-8"))?;
            Message::Text(text)
        } else {
            Message::Binary(payload)
        };
        self.send(msg, None);
        Ok(())
    }

    /// Sends several messages to every member as one unit: their frames are encoded back to
    /// back into one buffer and queued on each member with one write, so a burst of small
    /// messages (a batch of ticks) costs one queue entry per member instead of one per
    /// message. Members get them in order; a member that cannot take the batch misses all of
    /// it (counted as that many messages).
    ///
    /// ```no_run
    /// # fn demo(feed: &netpoll::ws::Group) {
    /// use netpoll::ws::Message;
    /// let ticks = ["AAPL 101.5", "MSFT 402.1", "NVDA 133.7"];
    /// feed.broadcast_batch(ticks.iter().map(|t| Message::Text(t)));
    /// # }
    /// ```
    pub fn broadcast_batch<'a>(&self, msgs: impl IntoIterator<Item = Message<'a>>) {
        let relay = self.inner.relay.get();
        let local = !self.is_empty();
        if !local && relay.is_none() {
            return;
        }
        let mut frames = Vec::new();
        let mut n = 0;
        for msg in msgs {
            if local {
                append_frame(&mut frames, msg);
            }
            if let Some(relay) = relay {
                relay.publish(msg); // one by one: other nodes deliver them as they come
            }
            n += 1;
        }
        if local && n > 0 {
            self.enqueue_all(&Bytes::from(frames), n, None, false);
        }
    }

    fn send(&self, msg: Message<'_>, except: Option<ConnId>) {
        self.deliver(msg, except);
        if let Some(relay) = self.inner.relay.get() {
            relay.publish(msg);
        }
    }

    /// Binds the group to `relay` (once; false if it was bound already).
    pub(crate) fn set_relay(&self, relay: Arc<dyn Relay>) -> bool {
        self.inner.relay.set(relay).is_ok()
    }

    /// Delivers `msg` to this process's members only: a message that came from another node.
    pub(crate) fn deliver_local(&self, msg: Message<'_>) {
        self.deliver(msg, None);
    }

    fn deliver(&self, msg: Message<'_>, except: Option<ConnId>) {
        if self.is_empty() {
            return; // nothing to encode for nobody
        }
        let mut frame = Vec::with_capacity(MAX_HEADER + msg.len());
        append_frame(&mut frame, msg);
        self.enqueue_all(&Bytes::from(frame), 1, except, true);
    }

    /// Queues `frame` on every slot; a `single` message may also go compressed (to members
    /// that agreed to permessage-deflate): then a shared cell for its compressed form is made
    /// (only if a member's engine compresses), filled on first need, on a poller, once.
    fn enqueue_all(&self, frame: &Bytes, messages: u64, except: Option<ConnId>, single: bool) {
        // Under the slots' read lock, without copying the list (no allocation per message):
        // nothing reached from here takes that lock again or waits for its writer (a join
        // making a new poller's slot).
        let slots = self.inner.slots.read().unwrap_or_else(|p| p.into_inner());
        let mut deflated = None;
        for slot in slots.iter().flatten() {
            {
                let members = slot.members();
                let Some(first) = members.list.first() else {
                    continue;
                };
                if single
                    && deflated.is_none()
                    && first
                        .conn
                        .conn()
                        .layer_settings::<DeflateConfig>()
                        .is_some()
                {
                    deflated = Some(Arc::new(OnceLock::new()));
                }
            }
            self.inner
                .enqueue(slot, frame, messages, except, deflated.as_ref());
        }
    }
}

/// Appends one unmasked frame (header + payload): frames in one `Bytes` are shared by every
/// member's queue.
fn append_frame(out: &mut Vec<u8>, msg: Message<'_>) {
    let payload = msg.as_bytes();
    let mut head = [0u8; MAX_HEADER];
    let n = encode_header(&mut head, msg.opcode(), true, payload.len(), None);
    out.extend_from_slice(&head[..n]);
    out.extend_from_slice(payload);
}

/// The compressed form of a one-message unmasked `frame` (RSV1, window 15, no context), or
/// `None` if its payload is under the threshold.
fn deflate_frame(frame: &Bytes, config: &DeflateConfig) -> Option<Bytes> {
    let header = match frame.get(1)? & 0x7f {
        126 => 4,
        127 => 10,
        _ => 2,
    };
    let payload = frame.get(header..)?;
    if payload.len() < config.min_size() {
        return None;
    }
    let opcode = super::frame::OpCode::from(frame[0] & 0x0f);
    Some(deflate::deflate_message(
        payload,
        15,
        config.compression_level(),
        |compressed| {
            let mut head = [0u8; MAX_HEADER];
            let n = encode_header(&mut head, opcode, true, compressed.len(), None);
            head[0] |= 0x40;
            let mut out = Vec::with_capacity(n + compressed.len());
            out.extend_from_slice(&head[..n]);
            out.extend_from_slice(compressed);
            Bytes::from(out)
        },
    ))
}

/// A closing connection leaves every group it joined (called by its poller).
pub(crate) fn leave_all(conn: &WsConn) {
    let groups = conn
        .conn()
        .with_layer(|_, attachment, _| attachment.take::<WsAttachment>());
    let Some(WsAttachment { groups, .. }) = groups else {
        return;
    };
    for g in groups {
        if let Some(g) = g.upgrade() {
            g.remove(conn);
        }
    }
}
