//! [`Topics`]: groups by name, made on the first subscriber and forgotten when empty.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use bytes::Bytes;

use super::conn::{Message, WsConn};
use super::group::{Group, SlowPolicy};
use crate::core::error::WriteError;
use crate::core::stats::Exposition;

/// A registry of broadcast [`Group`]s by name, for pub/sub by topic: subscribe a connection
/// to a topic, publish to a topic by name. `Clone + Send + Sync`; use it from any thread.
///
/// A topic's group is made when its first member subscribes; publishing to a topic that has no
/// members does nothing (nothing is encoded). Topics that lost their members are forgotten
/// lazily (when the registry has grown to twice its size after the last sweep), so the
/// registry holds at most about twice the topics that have members, however many names are
/// used. Every group of the registry has the same [`SlowPolicy`]. Members leave their topics
/// when they close.
///
/// ```no_run
/// use netpoll::ws::{Message, SlowPolicy, Topics, WsConn};
///
/// let topics = Topics::new(SlowPolicy::Drop);
/// # fn demo(topics: &Topics, conn: &WsConn) {
/// // In on_message: {"subscribe": "AAPL"}
/// topics.subscribe(conn, "AAPL");
/// // On a producer thread:
/// topics.publish("AAPL", Message::Text(r#"{"sym":"AAPL","px":101.5}"#));
/// # }
/// ```
#[derive(Clone)]
pub struct Topics {
    inner: Arc<Inner>,
}

/// What a registry made with [`Topics::with_missed_notice`] calls: (member, topic, missed).
type TopicNotice = Arc<dyn Fn(&WsConn, &str, u64) + Send + Sync>;

struct Inner {
    policy: SlowPolicy,
    notice: Option<TopicNotice>,
    map: RwLock<Registry>,
}

struct Registry {
    groups: HashMap<Box<str>, Group>,
    /// Sweep empty topics when the registry grows past this.
    sweep_at: usize,
}

/// The registry's size below which it is never swept.
const SWEEP_MIN: usize = 64;

impl std::fmt::Debug for Topics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Topics")
            .field("topics", &self.len())
            .field("policy", &self.inner.policy)
            .finish()
    }
}

impl Topics {
    /// An empty registry whose groups use `policy` for slow members.
    pub fn new(policy: SlowPolicy) -> Topics {
        Topics::make(policy, None)
    }

    /// A registry whose groups drop for slow members and tell them how many messages of which
    /// topic they missed (see [`Group::with_missed_notice`]): `notice(conn, topic, n)`.
    ///
    /// ```no_run
    /// use netpoll::ws::Topics;
    /// let topics = Topics::with_missed_notice(|conn, topic, n| {
    ///     let _ = conn.send_text(&format!(r#"{{"gap":"{topic}","missed":{n}}}"#));
    /// });
    /// # let _ = topics;
    /// ```
    pub fn with_missed_notice(
        notice: impl Fn(&WsConn, &str, u64) + Send + Sync + 'static,
    ) -> Topics {
        Topics::make(SlowPolicy::Drop, Some(Arc::new(notice)))
    }

    fn make(policy: SlowPolicy, notice: Option<TopicNotice>) -> Topics {
        Topics {
            inner: Arc::new(Inner {
                policy,
                notice,
                map: RwLock::new(Registry {
                    groups: HashMap::new(),
                    sweep_at: SWEEP_MIN,
                }),
            }),
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Registry> {
        self.inner.map.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Registry> {
        self.inner.map.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Subscribes `conn` to `topic` (made if new). False if it already was a subscriber, or
    /// cannot join (see [`Group::join`]).
    pub fn subscribe(&self, conn: &WsConn, topic: &str) -> bool {
        {
            // Joining under the read lock: a sweep (write lock) cannot forget the group
            // between the lookup and the join.
            let map = self.read();
            if let Some(group) = map.groups.get(topic) {
                return group.join(conn);
            }
        }
        let mut map = self.write();
        if map.groups.len() >= map.sweep_at {
            map.groups.retain(|_, g| !g.is_empty());
            map.sweep_at = (map.groups.len() * 2).max(SWEEP_MIN);
        }
        let group = map
            .groups
            .entry(topic.into())
            .or_insert_with(|| self.new_group(topic));
        group.join(conn)
    }

    fn new_group(&self, topic: &str) -> Group {
        match &self.inner.notice {
            Some(notice) => {
                let (notice, topic) = (notice.clone(), topic.to_string());
                Group::with_missed_notice(move |conn, n| notice(conn, &topic, n))
            }
            None => Group::new(self.inner.policy),
        }
    }

    /// Unsubscribes `conn` from `topic`; false if it was not a subscriber. Once this returns,
    /// no message of the topic is queued for `conn` any more, so a reply sent after it (an
    /// acknowledgement) comes after every message of the topic the connection gets.
    pub fn unsubscribe(&self, conn: &WsConn, topic: &str) -> bool {
        let group = self.read().groups.get(topic).cloned();
        group.is_some_and(|g| g.leave(conn))
    }

    /// The topic's group (to read its counters, or broadcast except a sender), if it exists.
    pub fn group(&self, topic: &str) -> Option<Group> {
        self.read().groups.get(topic).cloned()
    }

    /// Publishes `msg` to the topic's subscribers; returns how many there were when it was
    /// queued (0: nothing was done).
    pub fn publish(&self, topic: &str, msg: Message<'_>) -> usize {
        match self.live(topic) {
            Some(group) => {
                group.broadcast(msg);
                group.len()
            }
            None => 0,
        }
    }

    /// Publishes a payload already in a `Bytes` (see [`Group::broadcast_shared`]); returns
    /// how many subscribers there were.
    ///
    /// # Errors
    /// [`WriteError::Invalid`] for text that is not UTF-8.
    pub fn publish_shared(
        &self,
        topic: &str,
        payload: &Bytes,
        text: bool,
    ) -> Result<usize, WriteError> {
        match self.live(topic) {
            Some(group) => {
                group.broadcast_shared(payload, text)?;
                Ok(group.len())
            }
            None => Ok(0),
        }
    }

    /// Publishes several messages as one unit (see [`Group::broadcast_batch`]); returns how
    /// many subscribers there were.
    pub fn publish_batch<'a>(
        &self,
        topic: &str,
        msgs: impl IntoIterator<Item = Message<'a>>,
    ) -> usize {
        match self.live(topic) {
            Some(group) => {
                group.broadcast_batch(msgs);
                group.len()
            }
            None => 0,
        }
    }

    fn live(&self, topic: &str) -> Option<Group> {
        let map = self.read();
        map.groups.get(topic).filter(|g| !g.is_empty()).cloned()
    }

    /// Topics in the registry (some may have just lost their last member).
    pub fn len(&self) -> usize {
        self.read().groups.len()
    }

    /// True if no topic is registered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends per-topic gauges and counters in the Prometheus text format (see
    /// [`Stats::write_prometheus`](crate::Stats::write_prometheus)), labelled
    /// `topic="name"`: subscribers, messages dropped for slow members, slow members closed.
    /// One series per topic: keep topic names few (symbols, rooms), not per user.
    pub fn write_prometheus(&self, out: &mut String, prefix: &str) {
        let groups: Vec<(Box<str>, Group)> = {
            let map = self.read();
            let mut v: Vec<_> = map
                .groups
                .iter()
                .map(|(k, g)| (k.clone(), g.clone()))
                .collect();
            v.sort_by(|a, b| a.0.cmp(&b.0));
            v
        };
        let mut m = Exposition { out, prefix };
        let series = |f: fn(&Group) -> u64| groups.iter().map(move |(k, g)| (&**k, f(g)));
        m.labeled(
            "topic_subscribers",
            "gauge",
            "Subscribers of each topic.",
            "topic",
            series(|g| g.len() as u64),
        );
        m.labeled(
            "topic_dropped_messages_total",
            "counter",
            "Messages slow subscribers missed, per topic.",
            "topic",
            series(Group::dropped_messages),
        );
        m.labeled(
            "topic_slow_closes_total",
            "counter",
            "Subscribers closed for being slow, per topic.",
            "topic",
            series(Group::slow_closes),
        );
    }
}
