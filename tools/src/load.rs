//! Shared parts of the closed-loop load generators (`tcp_load`, `ws_load`): flags, dialing
//! spread over source addresses, the measured window and the report line.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use netpoll::{DialOptions, Engine};

/// Counters the client handlers update.
#[derive(Default)]
pub struct Counters {
    pub open: AtomicUsize,
    pub echoed: AtomicU64,
    pub failed: AtomicUsize,
    /// Latency samples (microseconds) are kept only while this is set: the measured window.
    pub measuring: AtomicBool,
    pub latencies: Mutex<Vec<u32>>,
    /// The run is over: closes from now on are the client's own shutdown.
    pub stopping: AtomicBool,
    /// When the first connection was started, and how long until all were open.
    pub connect_start: OnceLock<Instant>,
    pub connect_secs: OnceLock<f64>,
    /// Echoes per connection in the measured window, when the client counts them: how evenly
    /// the server shares itself out (see [`fairness`]).
    pub per_conn: OnceLock<Box<[AtomicU32]>>,
}

impl Counters {
    /// Counts one echo for connection `i` if the measured window is open.
    pub fn count_conn(&self, i: usize) {
        if self.measuring.load(Ordering::Relaxed)
            && let Some(c) = self.per_conn.get().and_then(|v| v.get(i))
        {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// How the window's echoes spread over the connections: the fewest, the median and the most a
/// connection got, and the share of all echoes the busiest tenth of the connections got
/// (0.10 when the server serves every connection alike; a server that keeps serving the
/// connections that answer fastest gives them more, and the rest wait).
pub fn fairness(per_conn: &[AtomicU32]) -> Option<String> {
    let mut v: Vec<u64> = per_conn
        .iter()
        .map(|c| u64::from(c.load(Ordering::Relaxed)))
        .collect();
    let total: u64 = v.iter().sum();
    if v.is_empty() || total == 0 {
        return None;
    }
    v.sort_unstable();
    let top = v.len().div_ceil(10);
    let top_sum: u64 = v[v.len() - top..].iter().sum();
    Some(format!(
        " conn_msgs_min={} conn_msgs_p50={} conn_msgs_max={} top10_share={:.3}",
        v[0],
        v[v.len() / 2],
        v[v.len() - 1],
        top_sum as f64 / total as f64
    ))
}

/// A poller-local batch of latency samples, handed to [`Counters::latencies`] 1024 at a time.
#[derive(Default)]
pub struct Samples(Vec<u32>);

impl Samples {
    pub fn record(&mut self, counters: &Counters, sent_at_nanos: u64) {
        if !counters.measuring.load(Ordering::Relaxed) {
            return;
        }
        let us = (now_nanos().saturating_sub(sent_at_nanos) / 1000).min(u32::MAX as u64);
        self.0.push(us as u32);
        if self.0.len() >= 1024 {
            counters.latencies.lock().unwrap().append(&mut self.0);
        }
    }
}

/// Nanoseconds since the first call in this process (timestamps carried in messages).
pub fn now_nanos() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_nanos() as u64
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
    /// `ws` load tools: a `wss://` URL (TLS to the server, its certificate checked against
    /// the URL's IP address).
    pub tls: bool,
    /// `ws` load tools: a PEM file of the CA to trust for `wss://` (default: the public roots).
    pub ca: Option<String>,
    /// `ws` load tools: offer permessage-deflate (no context takeover).
    pub deflate: bool,
    /// `ws` load tools: offer permessage-deflate with context takeover and a window of
    /// 2^bits bytes (9..=15).
    pub deflate_takeover: Option<u8>,
    /// `ws` load tools: messages carry JSON-like text (compressible like real payloads)
    /// instead of one repeated byte.
    pub json: bool,
    /// `ws` load tools: `echo` or `broadcast`.
    pub mode: String,
    /// Broadcast mode: messages per second from the sender.
    pub rate: f64,
    pub conns: usize,
    pub size: usize,
    pub secs: u64,
    pub pollers: usize,
    pub sources: u8,
    /// The server processes whose CPU time is reported (summed): `--server-pid`, repeatable.
    pub server_pids: Vec<u32>,
    /// `ws` load tools: a second server (`--url2`, same path): every other connection goes
    /// there (a broadcast across two nodes of a bus).
    pub addr2: Option<SocketAddr>,
}

impl Options {
    /// Parses `--addr --conns --size --duration --pollers --sources --server-pid` (and, when
    /// `ws`, `--url ws[s]://HOST:PORT/PATH`, `--ca PEM`, `--path`, `--mode echo|broadcast`,
    /// `--rate N`, `--deflate`, `--deflate-takeover BITS`, `--json`).
    pub fn parse(default_port: u16, ws: bool) -> Options {
        let mut o = Options {
            addr: SocketAddr::from(([127, 0, 0, 1], default_port)),
            path: "/echo".into(),
            tls: false,
            ca: None,
            deflate: false,
            deflate_takeover: None,
            json: false,
            mode: "echo".into(),
            rate: 10.0,
            conns: 100,
            size: 64,
            secs: 10,
            pollers: 1,
            sources: 1,
            server_pids: Vec::new(),
            addr2: None,
        };
        let mut args = std::env::args().skip(1);
        while let Some(a) = args.next() {
            let mut val = || args.next().unwrap_or_else(|| panic!("{a} needs a value"));
            match a.as_str() {
                "--addr" => o.addr = val().parse().expect("--addr HOST:PORT"),
                "--path" if ws => o.path = val(),
                "--mode" if ws => o.mode = val(),
                "--rate" if ws => o.rate = val().parse().expect("--rate MSGS_PER_SEC"),
                "--ca" if ws => o.ca = Some(val()),
                "--deflate" if ws => o.deflate = true,
                "--deflate-takeover" if ws => {
                    let bits: u8 = val().parse().expect("--deflate-takeover BITS (9..=15)");
                    assert!((9..=15).contains(&bits), "--deflate-takeover takes 9..=15");
                    o.deflate_takeover = Some(bits);
                }
                "--json" if ws => o.json = true,
                "--url" if ws => {
                    let url = val();
                    o.tls = url.starts_with("wss://");
                    let rest = url
                        .strip_prefix("ws://")
                        .or_else(|| url.strip_prefix("wss://"))
                        .expect("--url ws[s]://HOST:PORT/PATH");
                    let (authority, path) = match rest.find('/') {
                        Some(i) => (&rest[..i], &rest[i..]),
                        None => (rest, "/"),
                    };
                    o.addr = authority.parse().expect("--url needs an IP:PORT authority");
                    o.path = path.to_string();
                }
                "--conns" => o.conns = val().parse().expect("--conns N"),
                "--size" => o.size = val().parse().expect("--size BYTES"),
                "--duration" => o.secs = val().parse().expect("--duration SECS"),
                "--pollers" => o.pollers = val().parse().expect("--pollers N"),
                "--sources" => o.sources = val().parse().expect("--sources N (1..=254)"),
                "--server-pid" => o.server_pids.push(val().parse().expect("--server-pid PID")),
                "--url2" if ws => {
                    let url = val();
                    let rest = url
                        .strip_prefix("ws://")
                        .expect("--url2 ws://HOST:PORT[/PATH] (the path is --url's)");
                    let authority = rest.split('/').next().unwrap_or(rest);
                    o.addr2 = Some(
                        authority
                            .parse()
                            .expect("--url2 needs an IP:PORT authority"),
                    );
                }
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

/// The source address for the `i`-th connection: 127.0.0.1..=127.0.0.N round robin.
pub fn source_addr(o: &Options, i: usize) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1 + (i % o.sources.max(1) as usize) as u8], 0))
}

/// Dials `o.conns` TCP connections spread over the source addresses and waits until all are
/// open (the handlers count them).
pub fn dial_all(engine: &Engine, o: &Options, counters: &Counters) {
    counters.connect_start.get_or_init(Instant::now);
    for i in 0..o.conns {
        let opts = DialOptions {
            local_addr: Some(source_addr(o, i)),
            timeout: Some(Duration::from_secs(30)),
        };
        engine.dial_with(o.addr, opts).expect("dial");
    }
    wait_all_open(o, counters);
}

/// Waits until the handlers counted `o.conns` open connections; exits the process if any
/// failed or a minute passed. Records how long the connections took to open, counted from
/// `Counters::connect_start` (set before the first connect).
pub fn wait_all_open(o: &Options, counters: &Counters) {
    let t0 = *counters.connect_start.get_or_init(Instant::now);
    while counters.open.load(Ordering::Relaxed) < o.conns {
        if counters.failed.load(Ordering::Relaxed) > 0 || t0.elapsed() > Duration::from_secs(60) {
            eprintln!(
                "only {} of {} connections opened",
                counters.open.load(Ordering::Relaxed),
                o.conns
            );
            std::process::exit(1);
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let _ = counters.connect_secs.set(t0.elapsed().as_secs_f64());
}

/// Warms up, measures `o.secs` seconds and prints the report line.
pub fn measure_and_report(o: &Options, counters: &Arc<Counters>) {
    std::thread::sleep(Duration::from_millis(500));
    let server_cpu = || -> Option<f64> {
        (!o.server_pids.is_empty())
            .then(|| {
                o.server_pids
                    .iter()
                    .map(|&p| cpu_seconds(p))
                    .sum::<Option<f64>>()
            })
            .flatten()
    };
    let cpu_start = server_cpu();
    let client_cpu_start = cpu_seconds(std::process::id());
    let start_count = counters.echoed.load(Ordering::Relaxed);
    let start = Instant::now();
    // Wall-clock start of the window, for tools that sample the server alongside (perf).
    let window_start_unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    counters.measuring.store(true, Ordering::Relaxed);
    std::thread::sleep(Duration::from_secs(o.secs));
    counters.measuring.store(false, Ordering::Relaxed);
    let msgs = counters.echoed.load(Ordering::Relaxed) - start_count;
    let elapsed = start.elapsed().as_secs_f64();
    let mut lat = std::mem::take(&mut *counters.latencies.lock().unwrap());
    lat.sort_unstable();
    let pct = |p: f64| {
        let i = ((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1));
        lat.get(i).copied()
    };
    let latency = match (pct(0.5), pct(0.99), lat.last()) {
        (Some(a), Some(b), Some(c)) => format!(" lat_p50_us={a} lat_p99_us={b} lat_max_us={c}"),
        _ => String::new(),
    };
    let used = |start: Option<f64>, end: Option<f64>| match (start, end) {
        (Some(a), Some(b)) => b - a,
        _ => f64::NAN,
    };
    let cpu = used(cpu_start, server_cpu());
    // The client's own CPU: on a machine the two share, a server that makes its client work
    // harder per message leaves itself fewer messages to serve.
    let client_cpu = used(client_cpu_start, cpu_seconds(std::process::id()));
    let spread = counters
        .per_conn
        .get()
        .and_then(|v| fairness(v))
        .unwrap_or_default();
    let rate = msgs as f64 / elapsed;
    let connect_secs = counters.connect_secs.get().copied().unwrap_or(f64::NAN);
    println!(
        "conns={} size={} msgs={msgs} secs={elapsed:.2} msgs_per_sec={rate:.0} \
         mb_per_sec={:.1} server_cpu_s={cpu:.2} server_cpu_us_per_msg={:.3} \
         client_cpu_us_per_msg={:.3} failed={} \
         total_msgs={} connect_secs={connect_secs:.3} window_start_unix={window_start_unix:.3}\
         {latency}{spread}",
        o.conns,
        o.size,
        rate * o.size as f64 / 1e6,
        cpu * 1e6 / msgs.max(1) as f64,
        client_cpu * 1e6 / msgs.max(1) as f64,
        counters.failed.load(Ordering::Relaxed),
        counters.echoed.load(Ordering::Relaxed)
    );
    counters.stopping.store(true, Ordering::Relaxed);
}
