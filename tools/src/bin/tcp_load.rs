//! Closed-loop TCP echo load generator built on netpoll's own `dial`.
//!
//! Each connection sends one message of `--size` bytes, waits until the whole echo is back,
//! and sends the next. Reports echoed messages per second over `--duration` seconds, measured
//! after every connection is open.
//!
//! ```text
//! cargo run --release -p netpoll-tools --bin tcp_load -- --addr 127.0.0.1:9000 --conns 5000 --size 64 \
//!     --duration 10 [--pollers 1] [--sources 8]
//! ```
//! `--sources N` spreads client sockets over source addresses 127.0.0.1..=127.0.0.N.
//! `--server-pid PID` also reports the server's CPU time (user + system, from `/proc`) over
//! exactly the measured window, as CPU microseconds per message.
//! Prints one line: `conns=.. size=.. msgs=.. secs=.. msgs_per_sec=.. mb_per_sec=..
//! server_cpu_s=.. server_cpu_us_per_msg=.. failed=.. total_msgs=..` (total_msgs counts from
//! the first connection on, in batches of 64 per poller).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use netpoll::{CloseReason, Conn, Engine, Handler};
use netpoll_tools::load::{self, Counters, Options};

struct Load {
    msg: Bytes,
    counters: Arc<Counters>,
    /// Echoes counted locally, published in batches to keep the shared counter cold.
    local: u64,
}

impl Handler for Load {
    /// Bytes of the current echo still to come.
    type State = usize;

    fn on_open(&mut self, conn: &Conn) -> usize {
        self.counters
            .open
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        conn.write(self.msg.clone()).expect("first message");
        self.msg.len()
    }

    fn on_data(&mut self, conn: &Conn, left: &mut usize, data: &mut [u8]) -> usize {
        let mut n = data.len();
        while n > 0 {
            let take = n.min(*left);
            *left -= take;
            n -= take;
            if *left == 0 {
                self.counters.count_echo(&mut self.local);
                let _ = conn.write(self.msg.clone());
                *left = self.msg.len();
            }
        }
        data.len()
    }

    fn on_close(&mut self, _: &Conn, _: usize, reason: CloseReason) {
        if reason != CloseReason::Shutdown {
            eprintln!("connection closed during the run: {reason:?}");
            self.counters
                .failed
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    fn on_connect_error(&mut self, _: &Conn, error: std::io::Error) {
        eprintln!("connect error: {error}");
        self.counters
            .failed
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
}

fn main() {
    let o = Options::parse(9000, false);
    let counters = Arc::new(Counters::default());
    let msg = Bytes::from(vec![b'x'; o.size]);
    let engine = Engine::builder()
        .pollers(o.pollers)
        .max_connections(o.conns + 16)
        .start(|_| Load {
            msg: msg.clone(),
            counters: counters.clone(),
            local: 0,
        })
        .expect("start client engine");
    load::dial_all(&engine, &o, &counters);
    load::measure_and_report(&o, &counters);
    engine.shutdown(Duration::from_secs(1));
}
