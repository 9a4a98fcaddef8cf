//! Shared parts of the closed-loop load generators (`tcp_load`, `ws_load`): flags, dialing
//! spread over source addresses, the measured window and the report line.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use netpoll::{DialOptions, Engine};

/// Counters the client handlers update.
#[derive(Default)]
pub struct Counters {
    pub open: AtomicUsize,
    pub echoed: AtomicU64,
    pub failed: AtomicUsize,
}

impl Counters {
    /// Adds a poller-local count to the shared one in batches of 64, keeping the shared cache
    /// line cold.
    pub fn count_echo(&self, local: &mut u64) {
        *local += 1;
        if *local == 64 {
            self.echoed.fetch_add(64, Ordering::Relaxed);
            *local = 0;
        }
    }
}

/// Command-line settings common to the load generators.
pub struct Options {
    pub addr: SocketAddr,
    pub path: String,
    pub conns: usize,
    pub size: usize,
    pub secs: u64,
    pub pollers: usize,
    pub sources: u8,
    pub server_pid: Option<u32>,
}

impl Options {
    /// Parses `--addr --conns --size --duration --pollers --sources --server-pid` (and `--path`
    /// when `with_path`).
    pub fn parse(default_port: u16, with_path: bool) -> Options {
        let mut o = Options {
            addr: SocketAddr::from(([127, 0, 0, 1], default_port)),
            path: "/echo".into(),
            conns: 100,
            size: 64,
            secs: 10,
            pollers: 1,
            sources: 1,
            server_pid: None,
        };
        let mut args = std::env::args().skip(1);
        while let Some(a) = args.next() {
            let mut val = || args.next().unwrap_or_else(|| panic!("{a} needs a value"));
            match a.as_str() {
                "--addr" => o.addr = val().parse().expect("--addr HOST:PORT"),
                "--path" if with_path => o.path = val(),
                "--conns" => o.conns = val().parse().expect("--conns N"),
                "--size" => o.size = val().parse().expect("--size BYTES"),
                "--duration" => o.secs = val().parse().expect("--duration SECS"),
                "--pollers" => o.pollers = val().parse().expect("--pollers N"),
                "--sources" => o.sources = val().parse().expect("--sources N (1..=254)"),
                "--server-pid" => o.server_pid = Some(val().parse().expect("--server-pid PID")),
                other => {
                    eprintln!("unknown argument {other:?}");
                    std::process::exit(2);
                }
            }
        }
        o
    }
}

/// utime + stime of a process in seconds (Linux `/proc/PID/stat`, fields 14 and 15).
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces; fields after it start past the ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0) // USER_HZ is 100 on Linux
}

/// Dials `o.conns` connections spread over the source addresses and waits until all are open
/// (the handlers count them); exits the process if any fails.
pub fn dial_all(engine: &Engine, o: &Options, counters: &Counters) {
    for i in 0..o.conns {
        let src = format!("127.0.0.{}:0", 1 + (i % o.sources.max(1) as usize));
        let opts = DialOptions {
            local_addr: Some(src.parse().unwrap()),
            timeout: Some(Duration::from_secs(30)),
        };
        engine.dial_with(o.addr, opts).expect("dial");
    }
    let t0 = Instant::now();
    while counters.open.load(Ordering::Relaxed) < o.conns {
        if counters.failed.load(Ordering::Relaxed) > 0 || t0.elapsed() > Duration::from_secs(60) {
            eprintln!(
                "only {} of {} connections opened",
                counters.open.load(Ordering::Relaxed),
                o.conns
            );
            std::process::exit(1);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Warms up, measures `o.secs` seconds and prints the report line.
pub fn measure_and_report(o: &Options, counters: &Arc<Counters>) {
    std::thread::sleep(Duration::from_millis(500));
    let cpu_start = o.server_pid.and_then(cpu_seconds);
    let start_count = counters.echoed.load(Ordering::Relaxed);
    let start = Instant::now();
    std::thread::sleep(Duration::from_secs(o.secs));
    let msgs = counters.echoed.load(Ordering::Relaxed) - start_count;
    let elapsed = start.elapsed().as_secs_f64();
    let cpu = match (cpu_start, o.server_pid.and_then(cpu_seconds)) {
        (Some(a), Some(b)) => b - a,
        _ => f64::NAN,
    };
    let rate = msgs as f64 / elapsed;
    println!(
        "conns={} size={} msgs={msgs} secs={elapsed:.2} msgs_per_sec={rate:.0} \
         mb_per_sec={:.1} server_cpu_s={cpu:.2} server_cpu_us_per_msg={:.3} failed={} \
         total_msgs={}",
        o.conns,
        o.size,
        rate * o.size as f64 / 1e6,
        cpu * 1e6 / msgs.max(1) as f64,
        counters.failed.load(Ordering::Relaxed),
        counters.echoed.load(Ordering::Relaxed)
    );
}
