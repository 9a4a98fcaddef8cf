//! The peer: a tokio + sockudo-ws WebSocket server with the same behaviour as netpoll's
//! `examples/ws_echo`: `/broadcast` relays every message to every `/broadcast` client (each
//! member has a writer task fed by a channel, as in `tt_echo`; a message's payload is
//! reference-counted `Bytes`, so relaying it copies nothing), any other path echoes.
//!
//! ```text
//! cargo run --release -p netpoll-tools --bin sockudo_echo -- --addr 127.0.0.1:9104 [--threads N]
//! ```
//! `--threads` sets tokio's worker threads (default: all cores). The library is used as its
//! README recommends: the HTTP/1.1 handshake by `WebSocketServer::<Http1>` (`accept_raw`, which
//! keeps the concrete `TcpStream` type instead of boxing it, and keeps any frame bytes read with
//! the upgrade request), `Config::default()` (no compression, 16 KiB cork buffer, 64 KiB read
//! buffer, its heartbeat: a ping after 30 s without input, 120 s idle timeout), echo replies
//! queued with `feed` (the stream flushes them before it waits for more input: the README's
//! echo loop), `split()` for the broadcast members' concurrent reader and writer, and
//! `init_clock()` before the runtime starts. Pings are answered and a peer's close is
//! acknowledged by the library while the stream is read, so every loop below reads until the
//! stream ends rather than stopping at the close. No mimalloc: every server in the benchmark
//! runs on the system allocator.
//! Prints `listening on ADDR` when ready.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use futures_util::{SinkExt, StreamExt};
// `sockudo_ws::WebSocketServer` is re-exported only with the http2 or http3 feature; the HTTP/1.1
// server is in `sockudo_ws::server` with tokio-runtime alone.
use sockudo_ws::server::WebSocketServer;
use sockudo_ws::{Config, Http1, Message, WebSocketStream};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

type Members = Arc<Mutex<HashMap<u64, mpsc::UnboundedSender<Message>>>>;

fn main() {
    let flags = netpoll_tools::Flags::parse("127.0.0.1:9104", &[]);
    // The heartbeat clock's one-time calibration (up to 200 ms), outside the runtime.
    sockudo_ws::init_clock();
    let addr = flags.addr.clone();
    flags.runtime().block_on(async move {
        let listener = TcpListener::bind(&addr).await.unwrap();
        println!("listening on {}", listener.local_addr().unwrap());
        let server = Arc::new(WebSocketServer::<Http1>::new(Config::default()));
        let members = Members::default();
        let next_id = Arc::new(AtomicU64::new(0));
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            let id = next_id.fetch_add(1, Ordering::Relaxed);
            tokio::spawn(connection(server.clone(), stream, id, members.clone()));
        }
    });
}

/// One connection: the WebSocket handshake, then `/broadcast` or echo by the request's path.
async fn connection(
    server: Arc<WebSocketServer<Http1>>,
    stream: TcpStream,
    id: u64,
    members: Members,
) {
    let Ok((ws, handshake)) = server.accept_raw(stream).await else {
        return;
    };
    if handshake.path == "/broadcast" {
        broadcast(ws, id, members).await
    } else {
        echo(ws).await
    }
}

async fn echo(mut ws: WebSocketStream<TcpStream>) {
    while let Some(Ok(msg)) = ws.next().await {
        if matches!(msg, Message::Text(_) | Message::Binary(_)) && ws.feed(msg).await.is_err() {
            return;
        }
    }
}

async fn broadcast(ws: WebSocketStream<TcpStream>, id: u64, members: Members) {
    let (mut reader, mut writer) = ws.split();
    let (queue, mut queued) = mpsc::unbounded_channel::<Message>();
    members.lock().unwrap().insert(id, queue);
    let relay = tokio::spawn(async move {
        while let Some(msg) = queued.recv().await {
            if writer.send(msg).await.is_err() {
                return;
            }
        }
    });
    while let Some(Ok(msg)) = reader.next().await {
        if matches!(msg, Message::Text(_) | Message::Binary(_)) {
            let all: Vec<_> = members.lock().unwrap().values().cloned().collect();
            for m in all {
                let _ = m.send(msg.clone());
            }
        }
    }
    members.lock().unwrap().remove(&id);
    relay.abort();
}
