//! The bus's broker side: the URL, and the two connections (a subscriber, a publisher) as a
//! netpoll [`Handler`] on the bus's own engine, for Redis (RESP) and NATS (its text
//! protocol), with login, readiness, reconnection, resubscription and a keepalive ping.

use std::collections::{HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::nats::{self, Op};
use super::resp::{self, Reply};
use super::{BusError, Inner, lock, resolve};
use crate::Backoff;
use crate::core::conn::{CloseReason, Conn};
use crate::core::handler::{Handler, IdleAction, ShutdownAction};

/// Which broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Proto {
    Redis,
    Nats,
}

/// Where the broker is and how to log in.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    pub(crate) proto: Proto,
    pub(crate) addr: SocketAddr,
    user: Option<String>,
    password: Option<String>,
}

impl Target {
    /// Parses `redis://[[user]:password@]host[:port][/db]` or `nats://[user:password@]host[:port]`
    /// and resolves the host.
    pub(crate) fn parse(url: &str) -> Result<Target, BusError> {
        let bad = |why: &str| BusError::Url(format!("{url}: {why}"));
        let (proto, rest, default_port) = if let Some(rest) = url.strip_prefix("redis://") {
            (Proto::Redis, rest, 6379)
        } else if let Some(rest) = url.strip_prefix("nats://") {
            (Proto::Nats, rest, 4222)
        } else {
            return Err(bad("not redis:// or nats://"));
        };
        let (auth, rest) = match rest.rsplit_once('@') {
            Some((auth, rest)) => (Some(auth), rest),
            None => (None, rest),
        };
        let (hostport, db) = match rest.split_once('/') {
            Some((h, db)) => (h, db),
            None => (rest, ""),
        };
        if !db.is_empty() && (proto == Proto::Nats || db.parse::<u32>().is_err()) {
            return Err(bad("a path must be a Redis database number"));
        }
        let (host, port) = match hostport.rsplit_once(':') {
            Some((h, p)) => (h, p.parse::<u16>().map_err(|_| bad("bad port"))?),
            None => (hostport, default_port),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err(bad("no host"));
        }
        let (user, password) = match auth {
            None => (None, None),
            Some(a) => match a.split_once(':') {
                Some(("", p)) => (None, Some(p.to_string())),
                Some((u, p)) => (Some(u.to_string()), Some(p.to_string())),
                None => return Err(bad("credentials must be user:password or :password")),
            },
        };
        Ok(Target {
            proto,
            addr: resolve(host, port)?,
            user,
            password,
        })
    }

    /// Appends what opens a connection: Redis `AUTH` if there is a password, NATS `CONNECT`.
    fn login(&self, out: &mut Vec<u8>) {
        let (user, password) = (self.user.as_deref(), self.password.as_deref());
        match (self.proto, user, password) {
            (Proto::Nats, ..) => nats::encode_connect(out, user, password),
            (Proto::Redis, Some(u), Some(p)) => {
                resp::encode_command(out, &[b"AUTH", u.as_bytes(), p.as_bytes()]);
            }
            (Proto::Redis, None, Some(p)) => resp::encode_command(out, &[b"AUTH", p.as_bytes()]),
            _ => {}
        }
    }

    /// The replies a new connection waits for before it is ready: the login's (Redis `AUTH`;
    /// NATS answers `CONNECT` only when verbose, and its errors come as `-ERR`) and the
    /// ping's that [`dial`] sends after it.
    fn handshake_replies(&self) -> u8 {
        u8::from(self.proto == Proto::Redis && self.password.is_some()) + 1
    }

    fn ping(&self, out: &mut Vec<u8>) {
        match self.proto {
            Proto::Redis => resp::encode_command(out, &[b"PING"]),
            Proto::Nats => out.extend_from_slice(b"PING\r\n"),
        }
    }

    fn subscribe(&self, out: &mut Vec<u8>, channels: &[&[u8]], next_sid: &mut usize) {
        match self.proto {
            Proto::Redis => {
                let mut args: Vec<&[u8]> = vec![b"SUBSCRIBE"];
                args.extend_from_slice(channels);
                resp::encode_command(out, &args);
            }
            Proto::Nats => {
                for c in channels {
                    *next_sid += 1;
                    nats::encode_sub(out, c, *next_sid);
                }
            }
        }
    }

    /// Appends the head of a publish of `len` bytes on `channel`; the caller appends them,
    /// then [`end_publish`](Self::end_publish).
    pub(crate) fn publish_head(&self, out: &mut Vec<u8>, channel: &[u8], len: usize) {
        match self.proto {
            Proto::Redis => resp::encode_command_head(out, &[b"PUBLISH", channel], len),
            Proto::Nats => nats::encode_pub_head(out, channel, len),
        }
    }

    pub(crate) fn end_publish(&self, out: &mut Vec<u8>) {
        match self.proto {
            Proto::Redis => resp::end_arg(out),
            Proto::Nats => nats::end_pub(out),
        }
    }

    /// True for a channel this broker can carry.
    pub(crate) fn valid_channel(&self, channel: &[u8]) -> bool {
        match self.proto {
            Proto::Redis => true,
            Proto::Nats => nats::valid_subject(channel),
        }
    }
}

/// Which of the two connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Subscriber = 0,
    Publisher = 1,
}

/// The two connections' state, shared by the handler and the bus's handle.
#[derive(Default)]
pub(crate) struct Links {
    conns: [Option<Conn>; 2],
    /// Channels the broker confirmed on the current subscriber connection.
    subscribed: HashSet<Vec<u8>>,
    /// NATS: what each `PING` sent on the subscriber confirms when its `PONG` comes (the
    /// channels subscribed before it), oldest first.
    pongs: VecDeque<Vec<Vec<u8>>>,
    /// NATS: the last subscription id used.
    next_sid: usize,
    ready: [bool; 2],
    opened_before: [bool; 2],
    backoff: [Backoff; 2],
}

/// Makes both connections (on the bus's poller, so that a connection's role is recorded
/// before its first callback can run).
pub(crate) fn connect_both(inner: &Arc<Inner>) {
    let (initial, max) = inner.config.backoff;
    {
        let mut links = lock(&inner.links);
        links.backoff = [Backoff::new(initial, max), Backoff::new(initial, max)];
    }
    for role in [Role::Subscriber, Role::Publisher] {
        dial_after(inner, role, Duration::ZERO);
    }
}

fn dial_after(inner: &Arc<Inner>, role: Role, delay: Duration) {
    let Some(engine) = inner.engine.get() else {
        return;
    };
    let inner = inner.clone();
    engine.after(delay, move || dial(&inner, role));
}

fn dial(inner: &Arc<Inner>, role: Role) {
    if inner.stopped.load(Ordering::Acquire) {
        return;
    }
    let Some(engine) = inner.engine.get() else {
        return;
    };
    let target = &inner.target;
    let conn = match engine.dial(target.addr) {
        Ok(conn) => conn,
        Err(e) => {
            inner.error(format!("cannot connect to {}: {e}", target.addr));
            retry(inner, role);
            return;
        }
    };
    // Written now, sent once connected: the login, then the subscriptions (the subscriber)
    // and a ping whose answer says the connection is ready (NATS both, Redis the publisher).
    let mut out = Vec::new();
    target.login(&mut out);
    let mut links = lock(&inner.links);
    if role == Role::Subscriber {
        let channels = inner.channels.read().unwrap_or_else(|p| p.into_inner());
        let names: Vec<&[u8]> = channels.keys().map(Vec::as_slice).collect();
        if !names.is_empty() {
            target.subscribe(&mut out, &names, &mut links.next_sid);
        }
        links.subscribed.clear();
        links.pongs.clear();
        // A ping after the subscriptions: its answer says the broker is there (the backoff is
        // reset only then), and for NATS that it has the subscriptions.
        target.ping(&mut out);
        if target.proto == Proto::Nats {
            links
                .pongs
                .push_back(names.iter().map(|c| c.to_vec()).collect());
        }
    } else {
        target.ping(&mut out);
    }
    let _ = conn.write_slice(&out);
    links.conns[role as usize] = Some(conn);
    links.ready[role as usize] = false;
}

/// Dials `role` again after the backoff's next delay.
fn retry(inner: &Arc<Inner>, role: Role) {
    if inner.stopped.load(Ordering::Acquire) {
        return;
    }
    let delay = lock(&inner.links).backoff[role as usize].next_delay();
    dial_after(inner, role, delay);
}

/// Subscribes the subscriber connection to `channel` (if it is down, its next connection
/// subscribes to every bound channel).
pub(crate) fn subscribe(inner: &Arc<Inner>, links: &mut Links, channel: &[u8]) {
    if let Some(conn) = &links.conns[Role::Subscriber as usize] {
        let mut out = Vec::new();
        inner
            .target
            .subscribe(&mut out, &[channel], &mut links.next_sid);
        if inner.target.proto == Proto::Nats {
            inner.target.ping(&mut out);
            links.pongs.push_back(vec![channel.to_vec()]);
        }
        let _ = conn.write_slice(&out);
    }
}

/// Both connections are ready and the broker confirmed every bound channel.
pub(crate) fn is_connected(inner: &Inner) -> bool {
    let bound = inner
        .channels
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .len();
    let links = lock(&inner.links);
    links.ready == [true, true] && links.subscribed.len() == bound
}

/// One connection's state on the bus's poller.
#[derive(Debug)]
pub(crate) struct Link {
    role: Role,
    /// Replies still due before the connection is ready (the login's, the ping's).
    handshake: u8,
    /// A keepalive ping is out.
    ping_out: bool,
}

/// The bus's connections' handler.
pub(crate) struct BusHandler {
    inner: Arc<Inner>,
}

impl BusHandler {
    pub(crate) fn new(inner: Arc<Inner>) -> Self {
        BusHandler { inner }
    }

    fn role_of(&self, conn: &Conn) -> Option<Role> {
        let links = lock(&self.inner.links);
        [Role::Subscriber, Role::Publisher].into_iter().find(|&r| {
            links.conns[r as usize]
                .as_ref()
                .is_some_and(|c| c.id() == conn.id())
        })
    }

    fn ready(&self, conn: &Conn, role: Role) {
        {
            let mut links = lock(&self.inner.links);
            links.ready[role as usize] = true;
            links.backoff[role as usize].reset();
        }
        if role == Role::Publisher {
            self.inner.publisher_ready(conn);
        }
    }

    /// One step of the handshake done (a reply that is not an error).
    fn handshake_step(&self, conn: &Conn, link: &mut Link) {
        if link.handshake > 0 {
            link.handshake -= 1;
            if link.handshake == 0 {
                self.ready(conn, link.role);
            }
        }
    }

    /// An error from the broker; false if the connection must be closed.
    fn refused(&self, link: &Link, e: &[u8]) -> bool {
        let e = String::from_utf8_lossy(e);
        self.inner.error(format!("the broker refused: {e}"));
        // A refused login leaves the connection useless: made again after the backoff. Once
        // ready, a refusal concerns one command (a publish, or one channel's subscription:
        // permissions, a bad name): counted or reported, and the connection kept for the
        // others (a broker that means to end it closes it).
        if link.handshake > 0 {
            return false;
        }
        if link.role == Role::Publisher {
            self.inner.stats.dropped.fetch_add(1, Ordering::Relaxed);
        }
        true
    }

    /// One Redis reply or push on `link`; false if the connection must be closed.
    fn redis_reply(&self, conn: &Conn, link: &mut Link, reply: Reply<'_>) -> bool {
        if let Reply::Error(e) = reply {
            return self.refused(link, e);
        }
        if link.role == Role::Publisher {
            // The login's OK and the ping's PONG end the handshake; then a PUBLISH's receiver
            // count, a keepalive's PONG.
            self.handshake_step(conn, link);
            return true;
        }
        // A PING is answered +PONG outside subscribe mode (no channel yet) and
        // ["pong", ""] in it.
        let pong = matches!(reply, Reply::Simple(s) if s.eq_ignore_ascii_case(b"PONG"))
            || matches!(reply.items(), [kind, ..] if kind.bytes() == Some(b"pong"));
        if pong || matches!(reply, Reply::Simple(b"OK")) {
            self.handshake_step(conn, link); // the login's OK, the first ping's pong
            return true;
        }
        match reply.items() {
            [kind, channel, payload] if kind.bytes() == Some(b"message") => {
                if let (Some(channel), Some(payload)) = (channel.bytes(), payload.bytes()) {
                    self.inner.deliver(channel, payload);
                }
                true
            }
            [kind, channel, _] if kind.bytes() == Some(b"subscribe") => {
                if let Some(channel) = channel.bytes() {
                    lock(&self.inner.links).subscribed.insert(channel.to_vec());
                }
                true
            }
            _ => {
                self.inner
                    .error(format!("unexpected reply on the subscriber: {reply:?}"));
                false
            }
        }
    }

    /// One NATS operation on `link`; false if the connection must be closed.
    fn nats_op(&self, conn: &Conn, link: &mut Link, op: Op<'_>) -> bool {
        match op {
            Op::Err(e) => self.refused(link, e),
            Op::Ping => conn.write_slice(b"PONG\r\n").is_ok(),
            Op::Pong => {
                if link.role == Role::Subscriber {
                    let mut links = lock(&self.inner.links);
                    if let Some(confirmed) = links.pongs.pop_front() {
                        links.subscribed.extend(confirmed);
                    }
                }
                self.handshake_step(conn, link);
                true
            }
            Op::Msg { subject, payload } => {
                if link.role == Role::Subscriber {
                    self.inner.deliver(subject, payload);
                }
                true
            }
            Op::Info | Op::Ok => true,
        }
    }
}

impl Handler for BusHandler {
    type State = Link;

    fn on_open(&mut self, conn: &Conn) -> Link {
        let role = self.role_of(conn).unwrap_or(Role::Publisher);
        let handshake = self.inner.target.handshake_replies();
        {
            let mut links = lock(&self.inner.links);
            if std::mem::replace(&mut links.opened_before[role as usize], true) {
                self.inner.stats.reconnects.fetch_add(1, Ordering::Relaxed);
            }
        }
        Link {
            role,
            handshake,
            ping_out: false,
        }
    }

    fn on_data(&mut self, conn: &Conn, link: &mut Link, data: &mut [u8]) -> usize {
        link.ping_out = false;
        let max = self.inner.config.max_message_size + 64;
        let mut used = 0;
        loop {
            let step = match self.inner.target.proto {
                Proto::Redis => resp::read_reply(&data[used..], max)
                    .map(|r| r.map(|(reply, n)| (self.redis_reply(conn, link, reply), n)))
                    .map_err(|e| e.to_string()),
                Proto::Nats => nats::read_op(&data[used..], max)
                    .map(|r| r.map(|(op, n)| (self.nats_op(conn, link, op), n)))
                    .map_err(|e| e.to_string()),
            };
            match step {
                Ok(Some((keep, n))) => {
                    used += n;
                    if !keep {
                        conn.abort();
                        return data.len();
                    }
                }
                Ok(None) => return used,
                Err(e) => {
                    self.inner.error(format!("bad reply from the broker: {e}"));
                    conn.abort();
                    return data.len();
                }
            }
        }
    }

    fn on_close(&mut self, conn: &Conn, link: Link, reason: CloseReason) {
        {
            let mut links = lock(&self.inner.links);
            let slot = &mut links.conns[link.role as usize];
            if slot.as_ref().is_some_and(|c| c.id() == conn.id()) {
                *slot = None;
                links.ready[link.role as usize] = false;
                if link.role == Role::Subscriber {
                    links.subscribed.clear();
                    links.pongs.clear();
                }
            }
        }
        if link.role == Role::Publisher {
            self.inner.publisher_lost(conn);
        }
        if !self.inner.stopped.load(Ordering::Acquire) {
            if !matches!(reason, CloseReason::Local) {
                self.inner
                    .error(format!("lost the broker connection: {reason:?}"));
            }
            retry(&self.inner, link.role);
        }
    }

    fn on_connect_error(&mut self, conn: &Conn, error: std::io::Error) {
        let Some(role) = self.role_of(conn) else {
            return;
        };
        {
            let mut links = lock(&self.inner.links);
            links.conns[role as usize] = None;
            links.ready[role as usize] = false;
        }
        self.inner.error(format!(
            "cannot connect to {}: {error}",
            self.inner.target.addr
        ));
        retry(&self.inner, role);
    }

    fn on_idle(&mut self, conn: &Conn, link: &mut Link) -> IdleAction {
        if link.ping_out {
            self.inner.error("the broker did not answer a ping");
            return IdleAction::Close;
        }
        let mut out = Vec::new();
        self.inner.target.ping(&mut out);
        if link.role == Role::Subscriber && self.inner.target.proto == Proto::Nats {
            let mut links = lock(&self.inner.links);
            if conn.write_slice(&out).is_err() {
                return IdleAction::Close;
            }
            links.pongs.push_back(Vec::new()); // confirms nothing
        } else if conn.write_slice(&out).is_err() {
            return IdleAction::Close;
        }
        link.ping_out = true;
        IdleAction::Wait(self.inner.config.keepalive)
    }

    fn on_shutdown(&mut self, _: &Conn, _: &mut Link) -> ShutdownAction {
        ShutdownAction::Close
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_parsed_with_credentials_and_database() {
        let t = Target::parse("redis://127.0.0.1:6390").unwrap();
        assert_eq!(
            (t.proto, t.addr),
            (Proto::Redis, "127.0.0.1:6390".parse().unwrap())
        );
        assert_eq!((t.user, t.password), (None, None));
        let t = Target::parse("redis://:secret@127.0.0.1:1/3").unwrap();
        assert_eq!(t.password.as_deref(), Some("secret"));
        let t = Target::parse("redis://bob:p@ss@localhost").unwrap();
        assert_eq!(t.user.as_deref(), Some("bob"));
        assert_eq!(
            t.password.as_deref(),
            Some("p@ss"),
            "the last @ ends the credentials"
        );
        assert_eq!(t.addr.port(), 6379);
        let t = Target::parse("nats://alice:pw@127.0.0.1").unwrap();
        assert_eq!((t.proto, t.addr.port()), (Proto::Nats, 4222));
        assert_eq!(t.user.as_deref(), Some("alice"));
        for bad in [
            "http://127.0.0.1",
            "redis://",
            "redis://127.0.0.1:99999",
            "redis://127.0.0.1/x",
            "redis://nocolon@127.0.0.1",
            "nats://127.0.0.1/3",
        ] {
            assert!(Target::parse(bad).is_err(), "{bad}");
        }
    }
}
