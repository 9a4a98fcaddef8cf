//! Broadcast across nodes: a [`Group`] bound to a channel of a message broker (Redis pub/sub
//! or NATS core pub/sub) delivers each broadcast to its local members, then publishes it once
//! to the broker; every other node bound to that channel delivers it to its own members as a
//! local broadcast
//! (encoded once, fanned out per poller, under the group's slow-member policy). A node skips
//! its own messages when they come back.
//!
//! Delivery across nodes is at most once, as pub/sub is: a message published while a node's
//! subscriber connection is down never reaches that node's members. Each publisher's messages
//! arrive in the order it broadcast them (one publisher connection per bus, and both brokers
//! keep a connection's order): the order of each thread that broadcasts (two threads
//! broadcasting to one group at once may be seen in one order here and the other elsewhere). While the broker is unreachable, published messages wait in a bounded
//! buffer (`BusBuilder::max_buffered_bytes`) and go out in order when the publisher connection
//! is back; past the bound they are dropped and counted. Local delivery never waits for the
//! broker.
//!
//! A bus runs its two broker connections (a subscriber and a publisher) on a netpoll engine of
//! its own with one poller thread: no async runtime, one thread per bus (not per group or
//! member). It reconnects with backoff and subscribes again after a reconnect.
//!
//! ```no_run
//! use netpoll::bus::Bus;
//! use netpoll::ws::{Group, Message, SlowPolicy};
//!
//! let bus = Bus::builder().redis("redis://127.0.0.1:6379")?;
//! let room = Group::new(SlowPolicy::Drop);
//! bus.bind(&room, "chat:lobby")?;
//! // Reaches this node's members now, and every other node's bound to "chat:lobby".
//! room.broadcast(Message::Text("hello, everyone"));
//! println!("{:?}", bus.stats());
//! # Ok::<(), netpoll::bus::BusError>(())
//! ```

mod link;
pub mod nats;
pub mod resp;

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::Duration;

use crate::core::conn::Conn;
use crate::engine::{Engine, EngineHandle};
use crate::ws::Message;
use crate::ws::group::{Group, Relay};

/// Why a bus could not start or bind.
#[derive(Debug)]
pub enum BusError {
    /// The broker URL is not understood.
    Url(String),
    /// The bus's engine could not start.
    Engine(crate::Error),
    /// The group is bound to a channel already, or the channel to another group.
    AlreadyBound,
    /// A channel name the broker cannot carry.
    BadChannel,
}

impl fmt::Display for BusError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BusError::Url(why) => write!(f, "bad broker URL: {why}"),
            BusError::Engine(e) => write!(f, "bus engine: {e}"),
            BusError::AlreadyBound => f.write_str("group or channel already bound"),
            BusError::BadChannel => f.write_str("a channel name the broker cannot carry"),
        }
    }
}

impl std::error::Error for BusError {}

/// A bus's counters (see [`Bus::stats`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BusStats {
    /// Messages handed to the broker connection (written or queued on it).
    pub published: u64,
    /// Messages from other nodes delivered to local members.
    pub received: u64,
    /// This node's own messages that came back, skipped.
    pub skipped_own: u64,
    /// Messages not published: the outage buffer was full, or the publisher connection's
    /// queue was.
    pub dropped: u64,
    /// Messages on a bound channel that are not a bus's (another publisher's raw strings).
    pub invalid: u64,
    /// Connections to the broker made again after one was lost or refused.
    pub reconnects: u64,
    /// Messages waiting in the outage buffer now.
    pub buffered: u64,
}

/// How a bus reaches its broker and what it may hold: see [`Bus::builder`].
#[derive(Debug, Clone)]
pub struct BusBuilder {
    node_id: Option<u64>,
    max_buffered_bytes: usize,
    max_message_size: usize,
    max_outbound_bytes: usize,
    backoff: (Duration, Duration),
    keepalive: Duration,
}

impl Default for BusBuilder {
    fn default() -> Self {
        BusBuilder {
            node_id: None,
            max_buffered_bytes: 1 << 20,
            max_message_size: 1 << 20,
            max_outbound_bytes: 8 << 20,
            backoff: (Duration::from_millis(100), Duration::from_secs(5)),
            keepalive: Duration::from_secs(30),
        }
    }
}

impl BusBuilder {
    /// This node's id on the bus (a random one by default): messages carrying it are this
    /// node's own and are skipped when they come back.
    pub fn node_id(mut self, id: u64) -> Self {
        self.node_id = Some(id);
        self
    }

    /// Bytes of messages kept while the broker is unreachable, to be published when it is
    /// back (default 1 MiB; 0 drops them at once). Past it, messages are dropped and counted
    /// ([`BusStats::dropped`]).
    pub fn max_buffered_bytes(mut self, bytes: usize) -> Self {
        self.max_buffered_bytes = bytes;
        self
    }

    /// The largest message accepted from the broker (default 1 MiB); a larger one is a
    /// protocol error: the connection is closed and made again.
    pub fn max_message_size(mut self, bytes: usize) -> Self {
        self.max_message_size = bytes;
        self
    }

    /// The publisher connection's outbound queue bound (default 8 MiB): a broker that does
    /// not keep up makes messages past it dropped and counted.
    pub fn max_outbound_bytes(mut self, bytes: usize) -> Self {
        self.max_outbound_bytes = bytes;
        self
    }

    /// Delays between reconnection attempts: from `initial`, doubling up to `max`, with
    /// jitter (default 100 ms to 5 s).
    pub fn backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.backoff = (initial, max);
        self
    }

    /// A connection that brings nothing for this long is pinged, and closed (then made again)
    /// if nothing comes for as long again (default 30 s).
    pub fn keepalive(mut self, idle: Duration) -> Self {
        self.keepalive = idle;
        self
    }

    /// Starts a bus on the Redis server at `url`:
    /// `redis://[[user]:password@]host[:port][/db]` (`AUTH` when a password is given; the
    /// database number is accepted and ignored, as pub/sub channels span databases). The
    /// host is resolved once, here. Returns at once; the connections are made in the
    /// background (see [`Bus::is_connected`]).
    ///
    /// # Errors
    /// [`BusError::Url`] for a URL that is not `redis://` or cannot be parsed or resolved;
    /// [`BusError::Engine`] if the bus's engine cannot start.
    pub fn redis(self, url: &str) -> Result<Bus, BusError> {
        if !url.starts_with("redis://") {
            return Err(BusError::Url(format!("{url}: not redis://")));
        }
        self.connect(url)
    }

    /// Starts a bus on the NATS server at `url`: `nats://[user:password@]host[:port]` (core
    /// NATS pub/sub; subjects are the channels). As for [`redis`](Self::redis) otherwise.
    ///
    /// # Errors
    /// As for [`redis`](Self::redis).
    pub fn nats(self, url: &str) -> Result<Bus, BusError> {
        if !url.starts_with("nats://") {
            return Err(BusError::Url(format!("{url}: not nats://")));
        }
        self.connect(url)
    }

    /// Starts a bus on the broker `url` names: `redis://...` or `nats://...`.
    ///
    /// # Errors
    /// As for [`redis`](Self::redis).
    pub fn connect(self, url: &str) -> Result<Bus, BusError> {
        let target = link::Target::parse(url)?;
        Bus::start(self, target)
    }
}

/// A connection to a message broker that carries bound groups' broadcasts between nodes.
/// Cheap to clone; the bus stops (its connections closed, its thread joined) when the last
/// clone is dropped, after which bound groups deliver locally only.
#[derive(Clone)]
pub struct Bus {
    owner: Arc<Owner>,
}

impl fmt::Debug for Bus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bus")
            .field("node_id", &self.node_id())
            .field("connected", &self.is_connected())
            .field("stats", &self.stats())
            .finish()
    }
}

/// Keeps the bus's engine: dropped with the last `Bus`, it stops it.
struct Owner {
    inner: Arc<Inner>,
    _engine: Engine,
}

impl Drop for Owner {
    fn drop(&mut self) {
        self.inner.stopped.store(true, Ordering::Release);
    }
}

impl Bus {
    /// A builder with the defaults.
    pub fn builder() -> BusBuilder {
        BusBuilder::default()
    }

    fn start(config: BusBuilder, target: link::Target) -> Result<Bus, BusError> {
        let inner = Arc::new(Inner {
            node: config.node_id.unwrap_or_else(rand::random),
            config,
            target,
            engine: std::sync::OnceLock::new(),
            publisher: Mutex::new(Publisher::default()),
            channels: RwLock::new(HashMap::new()),
            links: Mutex::new(link::Links::default()),
            stats: Counters::default(),
            last_error: Mutex::new(None),
            stopped: AtomicBool::new(false),
        });
        let engine = Engine::builder()
            .pollers(1)
            .max_connections(16)
            .max_outbound_bytes(inner.config.max_outbound_bytes)
            .max_inbound_bytes(inner.config.max_message_size + 4096)
            .read_timeout(Some(inner.config.keepalive))
            .connect_timeout(Duration::from_secs(5))
            .start({
                let inner = inner.clone();
                move |_| link::BusHandler::new(inner.clone())
            })
            .map_err(BusError::Engine)?;
        let _ = inner.engine.set(engine.handle());
        link::connect_both(&inner);
        Ok(Bus {
            owner: Arc::new(Owner {
                inner,
                _engine: engine,
            }),
        })
    }

    fn inner(&self) -> &Arc<Inner> {
        &self.owner.inner
    }

    /// Binds `group` to `channel`: from now on its broadcasts are published there too, and
    /// messages other nodes publish there are delivered to its members. A group is bound to
    /// one channel, a channel to one group of this bus.
    ///
    /// # Errors
    /// [`BusError::AlreadyBound`] if the group or the channel is bound already;
    /// [`BusError::BadChannel`] for a name the broker cannot carry (NATS: empty, whitespace
    /// or a wildcard).
    pub fn bind(&self, group: &Group, channel: &str) -> Result<(), BusError> {
        self.add(channel, Sink::Group(group.clone()))
    }

    /// Calls `f` with every message other nodes publish on `channel` (with
    /// [`publish`](Self::publish), or a group bound to it elsewhere): presence, control
    /// messages, anything that is not a group's broadcast. `f` runs on the bus's thread: keep
    /// it short, and do not let it own the `Bus` (a clone kept in it keeps the bus running
    /// after every other is dropped; capture a `Weak` of your own state instead).
    ///
    /// ```no_run
    /// # fn demo(bus: &netpoll::bus::Bus) -> Result<(), netpoll::bus::BusError> {
    /// use netpoll::ws::Message;
    /// bus.subscribe("presence", |msg| {
    ///     if let Message::Text(t) = msg {
    ///         println!("a node says {t}");
    ///     }
    /// })?;
    /// bus.publish("presence", Message::Text("node 7: 120 online"))?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// As for [`bind`](Self::bind).
    pub fn subscribe(
        &self,
        channel: &str,
        f: impl Fn(Message<'_>) + Send + Sync + 'static,
    ) -> Result<(), BusError> {
        self.add(channel, Sink::Callback(Arc::new(f)))
    }

    /// Publishes `msg` on `channel` for the other nodes (nothing is delivered here), in order
    /// with everything else this bus publishes.
    ///
    /// # Errors
    /// [`BusError::BadChannel`] for a name the broker cannot carry.
    pub fn publish(&self, channel: &str, msg: Message<'_>) -> Result<(), BusError> {
        if !self.inner().target.valid_channel(channel.as_bytes()) {
            return Err(BusError::BadChannel);
        }
        self.inner().publish(channel.as_bytes(), msg);
        Ok(())
    }

    fn add(&self, channel: &str, sink: Sink) -> Result<(), BusError> {
        let inner = self.inner();
        if !inner.target.valid_channel(channel.as_bytes()) {
            return Err(BusError::BadChannel);
        }
        // The links' lock first and across both steps (the order a dial takes them in): a
        // subscriber connection being made sends either all channels including this one, or
        // those before it and then this one, never this one twice.
        let mut links = lock(&inner.links);
        {
            let mut channels = inner.channels.write().unwrap_or_else(|p| p.into_inner());
            if channels.contains_key(channel.as_bytes()) {
                return Err(BusError::AlreadyBound);
            }
            if let Sink::Group(group) = &sink {
                let relay = Arc::new(Binding {
                    inner: Arc::downgrade(inner),
                    channel: channel.as_bytes().to_vec(),
                });
                if !group.set_relay(relay) {
                    return Err(BusError::AlreadyBound);
                }
            }
            channels.insert(channel.as_bytes().to_vec(), sink);
        }
        link::subscribe(inner, &mut links, channel.as_bytes());
        Ok(())
    }

    /// This node's id on the bus.
    pub fn node_id(&self) -> u64 {
        self.inner().node
    }

    /// True while both broker connections are up (the subscriber has subscribed, the
    /// publisher is ready).
    pub fn is_connected(&self) -> bool {
        link::is_connected(self.inner())
    }

    /// The last error from the broker or its connections (a refused connection, a wrong
    /// password, a protocol error), if any since the bus started.
    pub fn last_error(&self) -> Option<String> {
        lock(&self.inner().last_error).clone()
    }

    /// The bus's counters.
    pub fn stats(&self) -> BusStats {
        let s = &self.inner().stats;
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        BusStats {
            published: get(&s.published),
            received: get(&s.received),
            skipped_own: get(&s.skipped_own),
            dropped: get(&s.dropped),
            invalid: get(&s.invalid),
            reconnects: get(&s.reconnects),
            buffered: lock(&self.inner().publisher).buffer.len() as u64,
        }
    }
}

/// What the bus's handler and the bound groups share.
pub(crate) struct Inner {
    node: u64,
    config: BusBuilder,
    target: link::Target,
    engine: std::sync::OnceLock<EngineHandle>,
    publisher: Mutex<Publisher>,
    /// Bound or subscribed channels and where their messages go.
    channels: RwLock<HashMap<Vec<u8>, Sink>>,
    /// The broker connections and their reconnection state.
    links: Mutex<link::Links>,
    stats: Counters,
    last_error: Mutex<Option<String>>,
    /// The bus was dropped: publish nothing more.
    stopped: AtomicBool,
}

#[derive(Default)]
struct Counters {
    published: AtomicU64,
    received: AtomicU64,
    skipped_own: AtomicU64,
    dropped: AtomicU64,
    invalid: AtomicU64,
    reconnects: AtomicU64,
}

/// The publisher connection once it is ready, and what waits for it.
#[derive(Default)]
struct Publisher {
    conn: Option<Conn>,
    /// Encoded publishes waiting for the connection, oldest first.
    buffer: VecDeque<Vec<u8>>,
    buffered_bytes: usize,
}

impl Inner {
    fn error(&self, what: impl fmt::Display) {
        tracing::warn!(target: "netpoll::bus", "{what}");
        *lock(&self.last_error) = Some(what.to_string());
    }

    /// Publishes `msg` on `channel`: written to the publisher connection in order with every
    /// other publish, or buffered while there is none.
    fn publish(&self, channel: &[u8], msg: Message<'_>) {
        if self.stopped.load(Ordering::Acquire) {
            return;
        }
        // Larger than a node takes (its max_message_size): it would fail every receiving
        // node's subscriber (and NATS refuses payloads over its max_payload, 1 MiB by
        // default). Dropped and counted here instead.
        if HEADER + msg.len() > self.config.max_message_size {
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(target: "netpoll::bus", len = msg.len(), "message over max_message_size not published");
            return;
        }
        SCRATCH.with(|scratch| {
            let mut command = scratch.borrow_mut();
            command.clear();
            let target = &self.target;
            target.publish_head(&mut command, channel, HEADER + msg.len());
            encode_envelope(&mut command, self.node, msg);
            target.end_publish(&mut command);
            self.send(&command);
            if command.capacity() > 64 * 1024 {
                *command = Vec::new(); // do not keep a large buffer per thread
            }
        });
    }

    /// Writes one encoded `PUBLISH` (copied only if it has to wait).
    fn send(&self, command: &[u8]) {
        let mut p = lock(&self.publisher);
        if p.buffer.is_empty()
            && let Some(conn) = &p.conn
        {
            match conn.write_slice(command) {
                Ok(()) => {
                    self.stats.published.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                Err(crate::WriteError::Overflow { .. }) => {
                    self.stats.dropped.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                // Closed meanwhile: its close will reconnect; buffer this one.
                Err(_) => p.conn = None,
            }
        }
        if p.buffered_bytes + command.len() > self.config.max_buffered_bytes {
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        p.buffered_bytes += command.len();
        p.buffer.push_back(command.to_vec());
    }

    /// The publisher connection is ready: what waited goes out first, in order.
    fn publisher_ready(&self, conn: &Conn) {
        let mut p = lock(&self.publisher);
        while let Some(command) = p.buffer.pop_front() {
            match conn.write_slice(&command) {
                Ok(()) => {
                    p.buffered_bytes -= command.len();
                    self.stats.published.fetch_add(1, Ordering::Relaxed);
                }
                Err(crate::WriteError::Overflow { .. }) => {
                    p.buffered_bytes -= command.len();
                    self.stats.dropped.fetch_add(1, Ordering::Relaxed);
                }
                Err(_) => {
                    // Closed meanwhile: the rest waits for the next connection, in order.
                    p.buffer.push_front(command);
                    return;
                }
            }
        }
        p.conn = Some(conn.clone());
    }

    fn publisher_lost(&self, conn: &Conn) {
        let mut p = lock(&self.publisher);
        if p.conn.as_ref().is_some_and(|c| c.id() == conn.id()) {
            p.conn = None;
        }
    }

    /// A message on `channel` from the broker: delivered to the bound group's members unless
    /// it is this node's own.
    fn deliver(&self, channel: &[u8], payload: &[u8]) {
        let Some((node, msg)) = decode_envelope(payload) else {
            self.stats.invalid.fetch_add(1, Ordering::Relaxed);
            return;
        };
        if node == self.node {
            self.stats.skipped_own.fetch_add(1, Ordering::Relaxed);
            return;
        }
        // Taken out of the map first: a subscriber's function may bind or subscribe.
        let sink = {
            let channels = self.channels.read().unwrap_or_else(|p| p.into_inner());
            match channels.get(channel) {
                Some(Sink::Group(group)) => Sink::Group(group.clone()),
                Some(Sink::Callback(f)) => Sink::Callback(f.clone()),
                None => return,
            }
        };
        match sink {
            Sink::Group(group) => group.deliver_local(msg),
            Sink::Callback(f) => f(msg),
        }
        self.stats.received.fetch_add(1, Ordering::Relaxed);
    }
}

thread_local! {
    /// Where a thread encodes what it publishes: no allocation per message.
    static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Where a channel's messages from other nodes go.
enum Sink {
    /// A bound group's members.
    Group(Group),
    /// A subscriber's function.
    Callback(Arc<dyn Fn(Message<'_>) + Send + Sync>),
}

/// A group's link to its channel (weak: the bus keeps its groups, not the other way round;
/// once the bus is gone the group delivers locally only).
struct Binding {
    inner: std::sync::Weak<Inner>,
    channel: Vec<u8>,
}

impl Relay for Binding {
    fn publish(&self, msg: Message<'_>) {
        if let Some(inner) = self.inner.upgrade() {
            inner.publish(&self.channel, msg);
        }
    }
}

/// The envelope of a message on the broker: a magic byte, the kind (text or binary) and the
/// publishing node's id, then the payload.
const MAGIC: u8 = 0xb5;
const HEADER: usize = 10;
const TEXT: u8 = 1;

fn encode_envelope(out: &mut Vec<u8>, node: u64, msg: Message<'_>) {
    out.push(MAGIC);
    out.push(if msg.is_text() { TEXT } else { 0 });
    out.extend_from_slice(&node.to_le_bytes());
    out.extend_from_slice(msg.as_bytes());
}

/// The publishing node and the message, or `None` for bytes that are not a bus envelope (or
/// text that is not UTF-8).
fn decode_envelope(payload: &[u8]) -> Option<(u64, Message<'_>)> {
    if payload.len() < HEADER || payload[0] != MAGIC || payload[1] > TEXT {
        return None;
    }
    let node = u64::from_le_bytes(payload[2..HEADER].try_into().ok()?);
    let body = &payload[HEADER..];
    let msg = if payload[1] == TEXT {
        Message::Text(crate::ws::utf8::from_utf8(body)?)
    } else {
        Message::Binary(body)
    };
    Some((node, msg))
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn resolve(host: &str, port: u16) -> Result<SocketAddr, BusError> {
    (host, port)
        .to_socket_addrs()
        .map_err(|e| BusError::Url(format!("{host}:{port}: {e}")))?
        .next()
        .ok_or_else(|| BusError::Url(format!("{host}:{port}: no address")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelopes_carry_the_node_and_the_kind() {
        let mut out = Vec::new();
        encode_envelope(&mut out, 7, Message::Text("héllo"));
        assert_eq!(decode_envelope(&out), Some((7, Message::Text("héllo"))));
        out.clear();
        encode_envelope(&mut out, u64::MAX, Message::Binary(&[0, 1, 2]));
        assert_eq!(
            decode_envelope(&out),
            Some((u64::MAX, Message::Binary(&[0, 1, 2])))
        );
        for bad in [
            &b"hello world"[..],
            b"",
            &[MAGIC, 2, 0, 0, 0, 0, 0, 0, 0, 0],
        ] {
            assert_eq!(decode_envelope(bad), None);
        }
        let mut bad_text = vec![MAGIC, TEXT];
        bad_text.extend_from_slice(&1u64.to_le_bytes());
        bad_text.push(0xff);
        assert_eq!(decode_envelope(&bad_text), None, "text that is not UTF-8");
    }
}
