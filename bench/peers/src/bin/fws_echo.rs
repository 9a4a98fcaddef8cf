//! The peer: a fastwebsockets (on hyper 1 + tokio) WebSocket echo server, serving `/echo` (and
//! any other path) like netpoll's `examples/ws_echo`. `/broadcast` is not implemented for this
//! peer yet (fastwebsockets' read side is not cancel-safe, so relaying needs its split API).
//!
//! ```text
//! cargo run --release -p netpoll-peers --bin fws_echo -- --addr 127.0.0.1:9102 [--threads N]
//! ```
//! Prints `listening on ADDR` when ready.

use fastwebsockets::{FragmentCollector, OpCode, WebSocketError, upgrade};
use http_body_util::Empty;
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

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

async fn upgrade_request(
    mut req: Request<Incoming>,
) -> Result<Response<Empty<Bytes>>, WebSocketError> {
    let (response, fut) = upgrade::upgrade(&mut req)?;
    tokio::spawn(async move {
        let _ = echo(fut).await;
    });
    Ok(response)
}

fn main() {
    let flags = netpoll_peers::Flags::parse("127.0.0.1:9102", &[]);
    let addr = flags.addr.clone();
    flags.runtime().block_on(async move {
        let listener = TcpListener::bind(&addr).await.unwrap();
        println!("listening on {}", listener.local_addr().unwrap());
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let conn = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service_fn(upgrade_request))
                    .with_upgrades();
                let _ = conn.await;
            });
        }
    });
}
