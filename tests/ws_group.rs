//! Broadcast groups: many members, many concurrent senders, slow members handled by policy.

mod common;
mod ws_common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, mpsc};
use std::time::Duration;

use netpoll::ws::{
    Accept, CloseCode, Connect, Group, Message, Request, SlowPolicy, Upgrade, WsConn, WsEngine,
    WsHandler, WsServer,
};
use netpoll::{Engine, EngineBuilder};

/// Server: every connection joins `group` (and the test gets its handle).
struct Hub {
    group: Group,
    opened: mpsc::Sender<WsConn>,
}

impl WsHandler for Hub {
    type State = ();
    fn on_request(&mut self, _: &Request<'_>) -> Upgrade<()> {
        Accept::new(()).into()
    }
    fn on_open(&mut self, conn: &WsConn, _: &mut ()) {
        assert!(self.group.join(conn));
        let _ = self.opened.send(conn.clone());
    }
    fn on_message(&mut self, _: &WsConn, _: &mut (), _: Message<'_>) {}
}

fn start_hub(
    group: &Group,
    engine: EngineBuilder,
) -> (WsEngine<Hub>, SocketAddr, mpsc::Receiver<WsConn>) {
    let (tx, rx) = mpsc::channel();
    let g = group.clone();
    let ws = WsServer::builder()
        .start(engine.listen("127.0.0.1:0"), move |_| Hub {
            group: g.clone(),
            opened: tx.clone(),
        })
        .unwrap();
    let addr = ws.local_addrs()[0];
    (ws, addr, rx)
}

/// Client: checks that each sender's messages arrive whole and in order; counts members that
/// got everything.
struct Checker {
    senders: usize,
    per_sender: u32,
    size: usize,
    complete: Arc<AtomicUsize>,
    errors: Arc<AtomicUsize>,
    opened: Arc<AtomicUsize>,
}

impl WsHandler for Checker {
    /// Next expected sequence number per sender.
    type State = Vec<u32>;
    fn on_request(&mut self, _: &Request<'_>) -> Upgrade<Vec<u32>> {
        Upgrade::not_found()
    }
    fn on_open(&mut self, _: &WsConn, _: &mut Vec<u32>) {
        self.opened.fetch_add(1, Ordering::Relaxed);
    }
    fn on_message(&mut self, _: &WsConn, next: &mut Vec<u32>, msg: Message<'_>) {
        let b = msg.as_bytes();
        let sender = b[0] as usize;
        let seq = u32::from_le_bytes(b[1..5].try_into().unwrap());
        let whole = b.len() == self.size && b[5..].iter().all(|&x| x == sender as u8);
        if sender >= self.senders || seq != next[sender] || !whole {
            self.errors.fetch_add(1, Ordering::Relaxed);
            return;
        }
        next[sender] += 1;
        if next.iter().all(|&n| n == self.per_sender) {
            self.complete.fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn message(sender: u8, seq: u32, size: usize) -> Vec<u8> {
    let mut m = vec![sender; size];
    m[1..5].copy_from_slice(&seq.to_le_bytes());
    m
}

#[test]
fn broadcast_to_4000_members_from_4_concurrent_senders() {
    const MEMBERS: usize = 4000;
    const SENDERS: usize = 4;
    const EACH: u32 = 50;
    const SIZE: usize = 100;
    common::raise_nofile_limit(2 * MEMBERS as u64 + 200);
    let group = Group::new(SlowPolicy::Close {
        code: CloseCode::Policy,
    });
    let (_server, addr, _opened) = start_hub(&group, Engine::builder().pollers(2).backlog(4096));
    let complete = Arc::new(AtomicUsize::new(0));
    let errors = Arc::new(AtomicUsize::new(0));
    let opened = Arc::new(AtomicUsize::new(0));
    let (c, e, o) = (complete.clone(), errors.clone(), opened.clone());
    let clients = WsServer::builder()
        .start(Engine::builder().pollers(2), move |_| Checker {
            senders: SENDERS,
            per_sender: EACH,
            size: SIZE,
            complete: c.clone(),
            errors: e.clone(),
            opened: o.clone(),
        })
        .unwrap();
    for i in 0..MEMBERS {
        let src = SocketAddr::from(([127, 0, 0, 1 + (i % 4) as u8], 0));
        let opts = Connect::new(vec![0; SENDERS]).local_addr(src);
        clients.connect(&format!("ws://{addr}/"), opts).unwrap();
    }
    assert!(common::eventually(Duration::from_secs(30), || group.len()
        == MEMBERS
        && opened.load(Ordering::Relaxed) == MEMBERS));
    let senders: Vec<_> = (0..SENDERS)
        .map(|s| {
            let group = group.clone();
            std::thread::spawn(move || {
                for i in 0..EACH {
                    group.broadcast(Message::Binary(&message(s as u8, i, SIZE)));
                }
            })
        })
        .collect();
    for s in senders {
        s.join().unwrap();
    }
    let all = common::eventually(Duration::from_secs(60), || {
        complete.load(Ordering::Relaxed) == MEMBERS
    });
    assert_eq!(
        errors.load(Ordering::Relaxed),
        0,
        "a message arrived torn or out of order"
    );
    assert!(
        all,
        "{} of {MEMBERS} members got every message",
        complete.load(Ordering::Relaxed)
    );
    assert_eq!(group.dropped_messages() + group.slow_closes(), 0);
    drop(clients);
    assert!(
        common::eventually(Duration::from_secs(10), || group.is_empty()),
        "members leave on close"
    );
}

/// Counts bytes received per connection (the well-behaved members).
struct Counter {
    received: Arc<AtomicU64>,
    opened: Arc<AtomicUsize>,
}

impl WsHandler for Counter {
    type State = ();
    fn on_request(&mut self, _: &Request<'_>) -> Upgrade<()> {
        Upgrade::not_found()
    }
    fn on_open(&mut self, _: &WsConn, _: &mut ()) {
        self.opened.fetch_add(1, Ordering::Relaxed);
    }
    fn on_message(&mut self, _: &WsConn, _: &mut (), msg: Message<'_>) {
        self.received.fetch_add(msg.len() as u64, Ordering::Relaxed);
    }
}

/// Runs the scenario, then `check`s the server's stats and the slow member while everything
/// is still up.
fn one_slow_member_among_1000(policy: SlowPolicy, check: impl FnOnce(&Group, &WsConn)) {
    const MEMBERS: usize = 1000;
    // 256 KiB per member: far more than the stuck member's socket buffers and outbound limit
    // hold, while the others are paced to keep up.
    const MSGS: u64 = 128;
    const SIZE: usize = 2048;
    const LIMIT: usize = 32 * 1024;
    common::raise_nofile_limit(2 * MEMBERS as u64 + 200);
    let group = Group::new(policy);
    let engine = Engine::builder()
        .pollers(2)
        .backlog(2048)
        .max_outbound_bytes(LIMIT)
        .send_buffer_size(4096);
    let (_server, addr, opened_rx) = start_hub(&group, engine);
    let _stuck = ws_common::stuck_member(addr, "/");
    let slow = opened_rx.recv_timeout(Duration::from_secs(10)).unwrap();
    let received = Arc::new(AtomicU64::new(0));
    let opened = Arc::new(AtomicUsize::new(0));
    let (r, o) = (received.clone(), opened.clone());
    let clients = WsServer::builder()
        .start(Engine::builder().pollers(1), move |_| Counter {
            received: r.clone(),
            opened: o.clone(),
        })
        .unwrap();
    for _ in 1..MEMBERS {
        clients
            .connect(&format!("ws://{addr}/"), Connect::new(()))
            .unwrap();
    }
    assert!(common::eventually(Duration::from_secs(30), || opened
        .load(Ordering::Relaxed)
        == MEMBERS - 1));
    let payload = vec![b'm'; SIZE];
    let mut max_pending = 0;
    let per_round = (MEMBERS as u64 - 1) * SIZE as u64;
    for i in 1..=MSGS {
        group.broadcast(Message::Binary(&payload));
        // Closed loop: the next message goes out once every well-behaved member has this one,
        // so their queues never fill; only the stuck member's does.
        let delivered = common::eventually(Duration::from_secs(20), || {
            received.load(Ordering::Relaxed) >= i * per_round
        });
        assert!(delivered, "round {i}: well-behaved members held up");
        max_pending = max_pending.max(slow.pending_bytes());
    }
    assert_eq!(received.load(Ordering::Relaxed), MSGS * per_round);
    assert!(
        max_pending <= LIMIT + 128,
        "the slow member's queue stays bounded: {max_pending}"
    );
    check(&group, &slow);
}

#[test]
fn a_slow_member_is_dropped_for_and_the_others_get_everything() {
    one_slow_member_among_1000(SlowPolicy::Drop, |group, slow| {
        assert!(group.dropped_messages() > 0, "{group:?}");
        assert_eq!(group.slow_closes(), 0);
        assert!(slow.is_open(), "Drop keeps the member");
    });
}

#[test]
fn a_slow_member_is_closed_and_the_others_get_everything() {
    one_slow_member_among_1000(
        SlowPolicy::Close {
            code: CloseCode::Policy,
        },
        |group, slow| {
            assert_eq!(group.slow_closes(), 1, "{group:?}");
            assert!(!slow.is_open());
        },
    );
}
