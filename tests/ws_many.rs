//! 2000 concurrent WebSocket connections from tungstenite clients: all upgrade, all echo, all
//! close cleanly, and the server ends with none open.

mod common;
mod ws_common;

use std::time::Duration;

use netpoll::Engine;
use netpoll::ws::WsServer;
use tungstenite::Message as TMessage;
use ws_common::*;

const CONNS: usize = 2000;
const THREADS: usize = 8;

#[test]
fn two_thousand_concurrent_connections_echo_and_close_cleanly() {
    common::raise_nofile_limit(4 * CONNS as u64 + 100);
    let (engine, addr, _rx) = start_ws(
        WsServer::builder(),
        Engine::builder().pollers(2).backlog(4096),
    );
    let per_thread = CONNS / THREADS;
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(THREADS + 1));
    let workers: Vec<_> = (0..THREADS)
        .map(|t| {
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                let mut clients: Vec<Client> =
                    (0..per_thread).map(|_| connect(addr, "/echo")).collect();
                for (i, c) in clients.iter_mut().enumerate() {
                    let msg = format!("hello from {t}/{i}");
                    c.send(TMessage::Text(msg.clone().into())).unwrap();
                    assert_eq!(c.read().unwrap(), TMessage::Text(msg.into()));
                }
                barrier.wait(); // every connection is open at once here
                barrier.wait(); // the main thread has counted them
                for c in clients.iter_mut() {
                    c.send(TMessage::Binary(vec![7; 300].into())).unwrap();
                }
                for c in clients.iter_mut() {
                    assert_eq!(c.read().unwrap(), TMessage::Binary(vec![7; 300].into()));
                    c.close(None).unwrap();
                }
                for mut c in clients {
                    assert_eq!(read_close_code(&mut c), None, "echo of an empty close");
                }
            })
        })
        .collect();
    barrier.wait();
    assert_eq!(engine.stats().open(), CONNS as u64);
    barrier.wait();
    for w in workers {
        w.join().unwrap();
    }
    assert!(common::eventually(Duration::from_secs(10), || engine
        .stats()
        .open()
        == 0));
    let stats = engine.stats();
    assert_eq!(stats.opened, CONNS as u64);
    assert_eq!(
        stats.closed(netpoll::CloseReason::Local),
        CONNS as u64,
        "all by close handshake"
    );
}
