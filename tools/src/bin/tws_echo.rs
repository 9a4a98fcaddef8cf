//! The peer: a tokio + tokio-websockets WebSocket server with the same behaviour as netpoll's
//! `examples/ws_echo`: `/broadcast` relays every message to every `/broadcast` client (each
//! member has a writer task fed by a channel, as in `tt_echo`; a message's payload is
//! reference-counted `Bytes`, so relaying it copies nothing), any other path echoes.
//!
//! ```text
//! cargo run --release -p netpoll-tools --bin tws_echo -- --addr 127.0.0.1:9103 [--threads N]
//! ```
//! `--threads` sets tokio's worker threads (default: all cores). The library's defaults
//! otherwise (64 MiB message limit, 4 MiB outgoing frames, 8 KiB flush threshold); its SIMD
//! masking and UTF-8 validation pick the CPU's instructions at run time. Pings are answered
//! and a peer's close is acknowledged by the library as long as the stream is polled, so
//! every loop below reads until the stream ends rather than stopping at the close.
//! Prints `listening on ADDR` when ready.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_websockets::{Message, ServerBuilder, WebSocketStream};

type Members = Arc<Mutex<HashMap<u64, mpsc::UnboundedSender<Message>>>>;

fn main() {
    let flags = netpoll_tools::Flags::parse("127.0.0.1:9103", &[]);
    let addr = flags.addr.clone();
    flags.runtime().block_on(async move {
        let listener = TcpListener::bind(&addr).await.unwrap();
        println!("listening on {}", listener.local_addr().unwrap());
        let members = Members::default();
        let next_id = Arc::new(AtomicU64::new(0));
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            let id = next_id.fetch_add(1, Ordering::Relaxed);
            tokio::spawn(connection(stream, id, members.clone()));
        }
    });
}

/// One connection: the WebSocket handshake, then `/broadcast` or echo by the request's path.
async fn connection(stream: TcpStream, id: u64, members: Members) {
    let Ok((request, ws)) = ServerBuilder::new().accept(stream).await else {
        return;
    };
    if request.uri().path() == "/broadcast" {
        broadcast(ws, id, members).await
    } else {
        echo(ws).await
    }
}

async fn echo(mut ws: WebSocketStream<TcpStream>) {
    while let Some(Ok(msg)) = ws.next().await {
        if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
            return;
        }
    }
}

async fn broadcast(ws: WebSocketStream<TcpStream>, id: u64, members: Members) {
    let (mut sink, mut stream) = ws.split();
    let (queue, mut queued) = mpsc::unbounded_channel::<Message>();
    members.lock().unwrap().insert(id, queue);
    let writer = tokio::spawn(async move {
        while let Some(msg) = queued.recv().await {
            if sink.send(msg).await.is_err() {
                return;
            }
        }
    });
    while let Some(Ok(msg)) = stream.next().await {
        if msg.is_text() || msg.is_binary() {
            let all: Vec<_> = members.lock().unwrap().values().cloned().collect();
            for m in all {
                let _ = m.send(msg.clone());
            }
        }
    }
    members.lock().unwrap().remove(&id);
    writer.abort();
}
