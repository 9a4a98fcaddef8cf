//! Closed-loop TCP echo load generator built on netpoll's own `dial`.
//!
//! Each connection sends one message of `--size` bytes, waits until the whole echo is back,
//! and sends the next. Reports echoed messages per second over `--duration` seconds, measured
//! after every connection is open.
//!
//! ```text
//! cargo run --release --example tcp_load -- --addr 127.0.0.1:9000 --conns 5000 --size 64 \
//!     --duration 10 [--pollers 1] [--sources 8]
//! ```
//! `--sources N` spreads client sockets over source addresses 127.0.0.1..=127.0.0.N.
//! `--server-pid PID` also reports the server's CPU time (user + system, from `/proc`) over
//! exactly the measured window, as CPU microseconds per message.
//! Prints one line: `conns=.. size=.. msgs=.. secs=.. msgs_per_sec=.. mb_per_sec=..
//! server_cpu_s=.. server_cpu_us_per_msg=.. failed=.. total_msgs=..` (total_msgs counts from
//! the first connection on, in batches of 64 per poller).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use netpoll::{CloseReason, Conn, DialOptions, Engine, Handler};

struct Counters {
    open: AtomicUsize,
    echoed: AtomicU64,
    failed: AtomicUsize,
}

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
        self.counters.open.fetch_add(1, Ordering::Relaxed);
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
                self.local += 1;
                if self.local == 64 {
                    self.counters.echoed.fetch_add(64, Ordering::Relaxed);
                    self.local = 0;
                }
                let _ = conn.write(self.msg.clone());
                *left = self.msg.len();
            }
        }
        data.len()
    }

    fn on_close(&mut self, _: &Conn, _: usize, reason: CloseReason) {
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

/// utime + stime of a process in seconds (Linux `/proc/PID/stat`, fields 14 and 15).
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces; fields after it start past the ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0) // USER_HZ is 100 on Linux
}

fn main() {
    let mut addr: SocketAddr = "127.0.0.1:9000".parse().unwrap();
    let (mut conns, mut size, mut secs, mut pollers, mut sources) =
        (100usize, 64usize, 10u64, 1usize, 1u8);
    let mut server_pid: Option<u32> = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || args.next().unwrap_or_else(|| panic!("{a} needs a value"));
        match a.as_str() {
            "--addr" => addr = val().parse().expect("--addr HOST:PORT"),
            "--conns" => conns = val().parse().expect("--conns N"),
            "--size" => size = val().parse().expect("--size BYTES"),
            "--duration" => secs = val().parse().expect("--duration SECS"),
            "--pollers" => pollers = val().parse().expect("--pollers N"),
            "--sources" => sources = val().parse().expect("--sources N (1..=254)"),
            "--server-pid" => server_pid = Some(val().parse().expect("--server-pid PID")),
            other => {
                eprintln!("unknown argument {other:?}");
                std::process::exit(2);
            }
        }
    }
    let counters = Arc::new(Counters {
        open: AtomicUsize::new(0),
        echoed: AtomicU64::new(0),
        failed: AtomicUsize::new(0),
    });
    let msg = Bytes::from(vec![b'x'; size]);
    let engine = Engine::builder()
        .pollers(pollers)
        .max_connections(conns + 16)
        .start(|_| Load {
            msg: msg.clone(),
            counters: counters.clone(),
            local: 0,
        })
        .expect("start client engine");
    for i in 0..conns {
        let src = format!("127.0.0.{}:0", 1 + (i % sources.max(1) as usize));
        let opts = DialOptions {
            local_addr: Some(src.parse().unwrap()),
            timeout: Some(Duration::from_secs(30)),
        };
        engine.dial_with(addr, opts).expect("dial");
    }
    let t0 = Instant::now();
    while counters.open.load(Ordering::Relaxed) < conns {
        if counters.failed.load(Ordering::Relaxed) > 0 || t0.elapsed() > Duration::from_secs(60) {
            eprintln!(
                "only {} of {conns} connections opened",
                counters.open.load(Ordering::Relaxed)
            );
            std::process::exit(1);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    // Warm up, then measure.
    std::thread::sleep(Duration::from_millis(500));
    let cpu_start = server_pid.and_then(cpu_seconds);
    let start_count = counters.echoed.load(Ordering::Relaxed);
    let start = Instant::now();
    std::thread::sleep(Duration::from_secs(secs));
    let msgs = counters.echoed.load(Ordering::Relaxed) - start_count;
    let elapsed = start.elapsed().as_secs_f64();
    let cpu = match (cpu_start, server_pid.and_then(cpu_seconds)) {
        (Some(a), Some(b)) => b - a,
        _ => f64::NAN,
    };
    let rate = msgs as f64 / elapsed;
    println!(
        "conns={conns} size={size} msgs={msgs} secs={elapsed:.2} msgs_per_sec={rate:.0} \
         mb_per_sec={:.1} server_cpu_s={cpu:.2} server_cpu_us_per_msg={:.3} failed={} \
         total_msgs={}",
        rate * size as f64 / 1e6,
        cpu * 1e6 / msgs.max(1) as f64,
        counters.failed.load(Ordering::Relaxed),
        counters.echoed.load(Ordering::Relaxed)
    );
    engine.shutdown(Duration::from_secs(1));
}
