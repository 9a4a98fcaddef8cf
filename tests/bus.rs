//! Cross-node broadcast through a real `redis-server`: groups on several engines (nodes) bound
//! to one channel, WebSocket listeners on each, the broker restarted mid-stream, a wrong
//! password and a peer that is not a broker.
//!
//! Ignored by default (they need `redis-server` on the PATH): `.ci/run` installs Debian's
//! `redis-server` and runs them with `cargo test --test bus -- --ignored`. Each test starts
//! its own server on a free port and stops it.

mod common;

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use netpoll::Engine;
use netpoll::bus::Bus;
use netpoll::ws::{
    Accept, Connect, Group, Message, Request, SlowPolicy, Upgrade, WsClient, WsConn, WsEngine,
    WsHandler, WsServer,
};

const WAIT: Duration = Duration::from_secs(20);

/// A `redis-server` of this test's own, on a free port; killed when dropped.
struct Redis {
    child: Option<Child>,
    port: u16,
    extra: Vec<String>,
}

impl Redis {
    fn start(extra: &[&str]) -> Redis {
        let port = {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let mut r = Redis {
            child: None,
            port,
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        r.run();
        r
    }

    fn run(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server on the PATH (.ci/run installs Debian's redis-server)");
        self.child = Some(child);
        let up = common::eventually(WAIT, || {
            TcpStream::connect(("127.0.0.1", self.port)).is_ok()
        });
        assert!(up, "redis-server did not start on port {}", self.port);
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A node's server: every WebSocket joins the node's group.
struct Joiner(Group);

impl WsHandler for Joiner {
    type State = ();
    fn on_request(&mut self, _: &Request<'_>) -> Upgrade<()> {
        Accept::new(()).into()
    }
    fn on_open(&mut self, conn: &WsConn, _: &mut ()) {
        self.0.join(conn);
    }
    fn on_message(&mut self, _: &WsConn, _: &mut (), _: Message<'_>) {}
}

struct Node {
    group: Group,
    bus: Bus,
    addr: SocketAddr,
    _server: WsEngine<Joiner>,
}

fn node(url: &str, channel: &str) -> Node {
    let group = Group::new(SlowPolicy::Drop);
    let server = WsServer::builder()
        .start(Engine::builder().pollers(2).listen("127.0.0.1:0"), |_| {
            Joiner(group.clone())
        })
        .unwrap();
    let bus = Bus::builder().redis(url).unwrap();
    bus.bind(&group, channel).unwrap();
    Node {
        addr: server.local_addrs()[0],
        group,
        bus,
        _server: server,
    }
}

/// Messages each listener received, by connection.
type Inbox = Arc<Mutex<HashMap<u64, Vec<String>>>>;

/// A listener: records the text messages it gets; says when it is open.
struct Listener(Inbox, std::sync::mpsc::Sender<()>);

impl WsHandler for Listener {
    type State = ();
    fn on_open(&mut self, _: &WsConn, _: &mut ()) {
        let _ = self.1.send(());
    }
    fn on_message(&mut self, conn: &WsConn, _: &mut (), msg: Message<'_>) {
        if let Message::Text(t) = msg {
            let mut inbox = self.0.lock().unwrap();
            inbox
                .entry(conn.id().as_u64())
                .or_default()
                .push(t.to_string());
        }
    }
}

/// `n` listeners on each of `addrs`, connected and joined: their inbox, the client engine
/// (keep it) and their ids by node.
fn listeners(nodes: &[&Node], n: usize) -> (Inbox, WsEngine<Listener>, Vec<Vec<u64>>) {
    let inbox: Inbox = Arc::default();
    let (tx, rx) = std::sync::mpsc::channel();
    let client = WsClient::builder()
        .start(Engine::builder().pollers(2), {
            let inbox = inbox.clone();
            move |_| Listener(inbox.clone(), tx.clone())
        })
        .unwrap();
    let mut ids = Vec::new();
    for node in nodes {
        let mut of_node = Vec::new();
        for _ in 0..n {
            let conn = client
                .connect(&format!("ws://{}/", node.addr), Connect::new(()))
                .unwrap();
            of_node.push(conn.id().as_u64());
        }
        ids.push(of_node);
    }
    for _ in 0..nodes.len() * n {
        rx.recv_timeout(WAIT).expect("listener connected");
    }
    // Open on the client's side; the servers' on_open (the join) runs on their pollers.
    let joined = common::eventually(WAIT, || nodes.iter().all(|node| node.group.len() == n));
    assert!(joined, "every listener joined its node's group");
    (inbox, client, ids)
}

fn wait_connected(nodes: &[&Node]) {
    let ok = common::eventually(WAIT, || nodes.iter().all(|n| n.bus.is_connected()));
    let errors: Vec<_> = nodes.iter().map(|n| n.bus.last_error()).collect();
    assert!(ok, "buses connected and subscribed: {errors:?}");
}

#[test]
#[ignore = "needs redis-server (.ci/run installs it)"]
fn three_nodes_deliver_every_message_once_in_each_senders_order() {
    let redis = Redis::start(&[]);
    let nodes: Vec<Node> = (0..3).map(|_| node(&redis.url(), "room")).collect();
    wait_connected(&nodes.iter().collect::<Vec<_>>());
    let (inbox, _client, ids) = listeners(&nodes.iter().collect::<Vec<_>>(), 100);
    // 4 senders on 3 nodes (two on node 0, from two threads), 500 messages each.
    const EACH: usize = 500;
    let senders = [0usize, 1, 2, 0];
    std::thread::scope(|s| {
        for (sender, &on) in senders.iter().enumerate() {
            let group = nodes[on].group.clone();
            s.spawn(move || {
                for seq in 0..EACH {
                    group.broadcast(Message::Text(&format!(
                        "{sender}:{seq}:{}",
                        "x".repeat(seq % 200)
                    )));
                }
            });
        }
    });
    let total = senders.len() * EACH;
    let all_ids: Vec<u64> = ids.iter().flatten().copied().collect();
    let done = common::eventually(WAIT, || {
        let inbox = inbox.lock().unwrap();
        all_ids
            .iter()
            .all(|id| inbox.get(id).map_or(0, Vec::len) >= total)
    });
    let inbox = inbox.lock().unwrap();
    let counts: Vec<usize> = all_ids
        .iter()
        .map(|id| inbox.get(id).map_or(0, Vec::len))
        .collect();
    assert!(
        done,
        "every listener got every message: min {:?}",
        counts.iter().min()
    );
    for id in &all_ids {
        let got = &inbox[id];
        assert_eq!(got.len(), total, "listener {id}: each message once");
        let mut next = vec![0usize; senders.len()];
        for m in got {
            let mut parts = m.splitn(3, ':');
            let sender: usize = parts.next().unwrap().parse().unwrap();
            let seq: usize = parts.next().unwrap().parse().unwrap();
            assert_eq!(seq, next[sender], "listener {id}: sender {sender}'s order");
            assert_eq!(parts.next().unwrap().len(), seq % 200, "whole");
            next[sender] += 1;
        }
    }
    for n in &nodes {
        let s = n.bus.stats();
        assert_eq!(s.dropped, 0, "{s:?}");
        assert!(s.skipped_own > 0, "{s:?}");
    }
}
