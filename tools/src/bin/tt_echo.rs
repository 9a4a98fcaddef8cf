//! The peer: a tokio + tokio-tungstenite WebSocket server with the same behaviour as netpoll's
//! `examples/ws_echo` (`/echo` echoes, `/broadcast` relays to every `/broadcast` client).
//!
//! ```text
//! cargo run --release -p netpoll-tools --bin tt_echo -- --addr 127.0.0.1:9101 [--threads N]
//!     [--read-buffer BYTES]
//! ```
//! `--threads` sets tokio's worker threads (default: all cores). `--read-buffer` sets
//! tungstenite's per-connection read buffer (default 128 KiB, the library default; the tuned
//! variant uses 4096). Prints `listening on ADDR` when ready.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

type Peers = Arc<Mutex<HashMap<u64, mpsc::UnboundedSender<Message>>>>;

fn main() {
    let flags = netpoll_tools::Flags::parse("127.0.0.1:9101", &["--read-buffer"]);
    let read_buffer = flags
        .extra
        .get("--read-buffer")
        .map(|v| v.parse::<usize>().expect("--read-buffer N"));
    flags
        .runtime()
        .block_on(serve(flags.addr.clone(), read_buffer));
}

async fn serve(addr: String, read_buffer: Option<usize>) {
    let listener = TcpListener::bind(&addr).await.unwrap();
    println!("listening on {}", listener.local_addr().unwrap());
    let peers = Peers::default();
    let next_id = Arc::new(AtomicU64::new(0));
    let mut config = WebSocketConfig::default().max_message_size(Some(64 << 20));
    if let Some(n) = read_buffer {
        config = config.read_buffer_size(n).write_buffer_size(0);
    }
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let peers = peers.clone();
        let id = next_id.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(async move {
            let mut path = String::new();
            // The callback's signature is tungstenite's; its error type is large by design.
            #[allow(clippy::result_large_err)]
            let cb = |req: &Request, resp: Response| {
                path = req.uri().path().to_string();
                Ok(resp)
            };
            let Ok(ws) =
                tokio_tungstenite::accept_hdr_async_with_config(stream, cb, Some(config)).await
            else {
                return;
            };
            if path == "/broadcast" {
                broadcast(ws, id, peers).await
            } else {
                echo(ws).await
            }
        });
    }
}

async fn echo(mut ws: tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>) {
    while let Some(Ok(msg)) = ws.next().await {
        let echo = match msg {
            Message::Text(_) | Message::Binary(_) => msg,
            Message::Close(_) => return,
            _ => continue,
        };
        if ws.send(echo).await.is_err() {
            return;
        }
    }
}

async fn broadcast(
    ws: tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>,
    id: u64,
    peers: Peers,
) {
    let (mut sink, mut stream) = ws.split();
    let (tx, mut rx) = mpsc::unbounded_channel();
    peers.lock().unwrap().insert(id, tx);
    let writer = tokio::spawn(async move {
        while let Some(m) = rx.recv().await {
            if sink.send(m).await.is_err() {
                return;
            }
        }
    });
    while let Some(Ok(msg)) = stream.next().await {
        match msg {
            Message::Text(_) | Message::Binary(_) => {
                let all: Vec<_> = peers.lock().unwrap().values().cloned().collect();
                for p in all {
                    let _ = p.send(msg.clone());
                }
            }
            Message::Close(_) => break,
            _ => {}
        }
    }
    peers.lock().unwrap().remove(&id);
    writer.abort();
}
