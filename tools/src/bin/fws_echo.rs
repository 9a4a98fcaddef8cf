//! The peer: a fastwebsockets (on hyper 1 + tokio) WebSocket server with the same behaviour as
//! netpoll's `examples/ws_echo`: `/broadcast` relays every message to every `/broadcast`
//! client (each member has a writer task fed by a channel, as in `tt_echo`; the payload is
//! copied once per message and shared), any other path echoes.
//!
//! ```text
//! cargo run --release -p netpoll-tools --bin fws_echo -- --addr 127.0.0.1:9102 [--threads N]
//! ```
//! Prints `listening on ADDR` when ready.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use fastwebsockets::{FragmentCollector, Frame, OpCode, Payload, WebSocketError, upgrade};
use http_body_util::Empty;
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::mpsc;

type Members = Arc<Mutex<HashMap<u64, mpsc::UnboundedSender<(OpCode, Bytes)>>>>;

async fn echo(fut: upgrade::UpgradeFut) -> Result<(), WebSocketError> {
    let mut ws = FragmentCollector::new(fut.await?);
    loop {
        let frame = ws.read_frame().await?;
        match frame.opcode {
            OpCode::Close => return Ok(()),
            OpCode::Text | OpCode::Binary => ws.write_frame(frame).await?,
            _ => {}
        }
    }
}

async fn broadcast(
    fut: upgrade::UpgradeFut,
    id: u64,
    members: Members,
) -> Result<(), WebSocketError> {
    let ws = fut.await?;
    let (mut rx, mut tx) = ws.split(tokio::io::split);
    // Pings and closes are handled here, so the read side never needs to write.
    rx.set_auto_pong(false);
    rx.set_auto_close(false);
    let (queue, mut queued) = mpsc::unbounded_channel::<(OpCode, Bytes)>();
    let own = queue.clone();
    members.lock().unwrap().insert(id, queue);
    let writer = tokio::spawn(async move {
        while let Some((opcode, payload)) = queued.recv().await {
            let frame = Frame::new(true, opcode, None, Payload::Borrowed(&payload));
            if tx.write_frame(frame).await.is_err() || opcode == OpCode::Close {
                return;
            }
        }
    });
    let mut never = |_: Frame<'_>| async { Ok::<(), WebSocketError>(()) };
    loop {
        let Ok(frame) = rx.read_frame(&mut never).await else {
            break;
        };
        match frame.opcode {
            OpCode::Text | OpCode::Binary => {
                let payload = Bytes::copy_from_slice(&frame.payload);
                let all: Vec<_> = members.lock().unwrap().values().cloned().collect();
                for m in all {
                    let _ = m.send((frame.opcode, payload.clone()));
                }
            }
            // Answered through the writer, behind the broadcasts queued before them.
            OpCode::Ping => {
                let _ = own.send((OpCode::Pong, Bytes::copy_from_slice(&frame.payload)));
            }
            OpCode::Close => {
                let _ = own.send((OpCode::Close, Bytes::copy_from_slice(&frame.payload)));
                break;
            }
            _ => {}
        }
    }
    members.lock().unwrap().remove(&id);
    drop(own);
    // The writer ends after the close reply, on a write error, or once the queue is empty and
    // no sender is left.
    let _ = writer.await;
    Ok(())
}

async fn upgrade_request(
    mut req: Request<Incoming>,
    id: u64,
    members: Members,
) -> Result<Response<Empty<Bytes>>, WebSocketError> {
    let (response, fut) = upgrade::upgrade(&mut req)?;
    let is_broadcast = req.uri().path() == "/broadcast";
    tokio::spawn(async move {
        let _ = if is_broadcast {
            broadcast(fut, id, members).await
        } else {
            echo(fut).await
        };
    });
    Ok(response)
}

fn main() {
    let flags = netpoll_tools::Flags::parse("127.0.0.1:9102", &[]);
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
            let members = members.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req| upgrade_request(req, id, members.clone()));
                let conn = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .with_upgrades();
                let _ = conn.await;
            });
        }
    });
}
