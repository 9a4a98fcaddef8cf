//! Closed-loop WebSocket echo load generator on netpoll's `dial` and its sans-IO frame layer.
//!
//! Each connection upgrades on `--path`, then sends one binary message of `--size` bytes,
//! waits for the whole echo, and sends the next. Reports echoed messages per second over
//! `--duration` seconds, measured after every connection is open, and with `--server-pid` the
//! server's CPU microseconds per message over the same window.
//!
//! ```text
//! cargo run --release --example ws_load -- --addr 127.0.0.1:9001 [--path /echo] --conns 1000 \
//!     --size 64 --duration 10 [--pollers 1] [--sources 8] [--server-pid PID]
//! ```
//!
//! Every connection sends the same pre-masked frame (one random mask per run): the server
//! still unmasks every byte, and the client allocates nothing per message. The upgrade
//! response is checked for `101` only (this is a load tool; the WebSocket client with full
//! handshake checks comes with the client API).

#[path = "support/load.rs"]
mod load;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use load::{Counters, Options};
use netpoll::ws::frame::{Decoder, Event, Flow, Limits, MAX_HEADER, OpKind, Role};
use netpoll::ws::frame::{apply_mask, encode_header};
use netpoll::{CloseReason, Conn, Engine, Handler};

struct Load {
    request: Bytes,
    frame: Bytes,
    size: usize,
    counters: Arc<Counters>,
    local: u64,
    limits: Limits,
}

enum State {
    Upgrading,
    Open(Decoder),
}

impl Handler for Load {
    type State = State;

    fn on_open(&mut self, conn: &Conn) -> State {
        conn.write(self.request.clone()).expect("upgrade request");
        State::Upgrading
    }

    fn on_data(&mut self, conn: &Conn, state: &mut State, data: &mut [u8]) -> usize {
        let mut used = 0;
        if let State::Upgrading = state {
            let Some(end) = data.windows(4).position(|w| w == b"\r\n\r\n") else {
                return 0;
            };
            if !data.starts_with(b"HTTP/1.1 101") {
                eprintln!("upgrade refused: {}", String::from_utf8_lossy(&data[..end]));
                self.counters.failed.fetch_add(1, Ordering::Relaxed);
                conn.abort();
                return data.len();
            }
            used = end + 4;
            *state = State::Open(Decoder::new());
            self.counters.open.fetch_add(1, Ordering::Relaxed);
            let _ = conn.write(self.frame.clone());
        }
        let State::Open(decoder) = state else {
            unreachable!()
        };
        let (counters, local, frame, size) =
            (&self.counters, &mut self.local, &self.frame, self.size);
        let result = decoder.decode(&mut data[used..], Role::Client, &self.limits, |ev| {
            match ev {
                Event::Binary(b) if b.len() == size => {
                    counters.count_echo(local);
                    let _ = conn.write(frame.clone());
                }
                Event::Close { .. } => return Flow::Stop,
                _ => {}
            }
            Flow::Continue
        });
        match result {
            Ok(d) => used + d.consumed,
            Err(e) => {
                eprintln!("protocol error from server: {e}");
                conn.abort();
                data.len()
            }
        }
    }

    fn on_close(&mut self, _: &Conn, _: State, reason: CloseReason) {
        if reason != CloseReason::Shutdown {
            eprintln!("connection closed during the run: {reason:?}");
            self.counters.failed.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn on_connect_error(&mut self, _: &Conn, error: std::io::Error) {
        eprintln!("connect error: {error}");
        self.counters.failed.fetch_add(1, Ordering::Relaxed);
    }
}

/// One masked binary frame of `size` bytes.
fn masked_frame(size: usize) -> Bytes {
    let mask: [u8; 4] = std::array::from_fn(|i| {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        (t >> (i * 8)) as u8 | 1
    });
    let mut head = [0u8; MAX_HEADER];
    let n = encode_header(&mut head, OpKind::Binary, true, size, Some(mask));
    let mut payload = vec![b'x'; size];
    apply_mask(&mut payload, mask, 0);
    let mut frame = head[..n].to_vec();
    frame.extend_from_slice(&payload);
    Bytes::from(frame)
}

fn main() {
    let o = Options::parse(9001, true);
    let counters = Arc::new(Counters::default());
    let request = Bytes::from(format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        o.path, o.addr
    ));
    let frame = masked_frame(o.size);
    let engine = Engine::builder()
        .pollers(o.pollers)
        .max_connections(o.conns + 16)
        .start(|_| Load {
            request: request.clone(),
            frame: frame.clone(),
            size: o.size,
            counters: counters.clone(),
            local: 0,
            limits: Limits::default(),
        })
        .expect("start client engine");
    load::dial_all(&engine, &o, &counters);
    load::measure_and_report(&o, &counters);
    engine.shutdown(Duration::from_secs(1));
}
