//! The whole benchmark comparison in one command: builds netpoll's examples and the peer
//! servers, runs every scenario with server and client in separate processes, writes the
//! results (JSON and CSV) and a Markdown summary, and draws the charts.
//!
//! ```text
//! cargo run --release -p netpoll-tools --bin suite [-- --secs 3] [--rounds 2] [--quick]
//!     [--out DIR] [--charts DIR] [--only echo,tcp,broadcast,idle,wss,deflate]
//! cargo run --release -p netpoll-tools --bin suite -- --charts-only target/bench/results.json
//! ```
//!
//! Scenarios (servers on one thread, the client `ws_load` on one poller, sockets
//! spread over 127.0.0.1..=127.0.0.16):
//! - `echo`: 100, 1000, 5000, 15000 connections x 64 B, 1 KiB, 16 KiB messages, closed loop;
//!   messages/s, MB/s, latency p50/p99/max, server CPU per message, connect time, the client's
//!   CPU per message and the busiest tenth of the connections' share of the echoes;
//! - `broadcast`: 1000 and 10000 receivers on `/broadcast`, 10 messages/s of 64 B from one of
//!   them; deliveries/s and delivery latency (send to receipt, over every delivery);
//! - `idle`: server RSS growth per connection at 1000, 10000 and 15000 idle connections, each
//!   upgraded and having echoed one message (netpoll with its defaults: write deadline and
//!   heartbeat on); the connect time of the same runs gives the connection rate;
//! - `tcp_echo`: netpoll's TCP engine (`examples/tcp_echo`) against a minimal mio echo server
//!   (`mio_echo`, the ceiling), 100 and 5000 connections x 64 B;
//! - `wss_echo` (issue 15): 1000 and 10000 connections x 64 B and 16 KiB over wss:// (TLS),
//!   netpoll against tokio-tungstenite + tokio-rustls, with netpoll over ws:// run alongside in
//!   the same configuration and client settings as the plaintext reference; the same figures as
//!   `echo` plus the server's CPU seconds over the window (how busy its one thread was);
//! - `wss_idle`: server RSS growth per idle wss connection at 1000 and 10000 connections for
//!   both servers (and netpoll over ws:// beside them); the connect time includes the TLS
//!   handshakes;
//! - `deflate_echo`: 1000 connections x 1 KiB and 16 KiB of JSON-like text (`ws_load --json`),
//!   netpoll without compression (the reference) against netpoll with permessage-deflate
//!   without context takeover (`ws_echo --deflate`, client `--deflate`) and with context
//!   takeover, 32 KiB window (`--deflate-takeover 15` on both); the same figures as `wss_echo`
//!   plus the bytes on the wire per message (`wire_bytes_per_msg`, both ways);
//! - `deflate_idle`: server RSS growth per idle connection at 10000 connections for the same
//!   three; each connection's one message is 1 KiB of JSON-like text, so the takeover
//!   histories hold it when the RSS is read;
//! - `deflate_broadcast`: 10000 receivers on `/broadcast`, 10 messages/s of 1 KiB JSON-like
//!   text, netpoll with and without `--deflate` (no context takeover); deliveries/s, latency,
//!   server CPU and bytes on the wire per delivery.
//!
//! The wss scenarios use a self-signed certificate that `gen_cert` writes once per run into
//! `DIR/tls`; `ws_load` trusts it with `--ca`. Their client spreads sockets over 8 source
//! addresses. `--quick` runs them at 1000 connections (and 64 B) only, and the deflate idle and
//! broadcast rows at 1000. `--only` runs the named scenario groups (`wss` is both wss
//! scenarios, `deflate` the three deflate ones); the summary and charts then hold only those.
//! The deflate tables are also written alone to `deflate_summary.md` in the `--charts`
//! directory.
//!
//! Servers: netpoll (`examples/ws_echo`), tokio-tungstenite (`tt_echo`, default config and a
//! tuned variant with a 4 KiB read buffer), fastwebsockets (`fws_echo`), tokio-websockets
//! (`tws_echo`) and sockudo-ws (`sockudo_echo`), the tokio peers each on one worker thread
//! (issue 18 added the last two); over wss://, `ws_echo` and `tt_echo` (default config) with
//! `--tls-cert/--tls-key`. Each configuration runs every server back to back, so the ratios
//! compare runs minutes apart at most. The echo, TCP, wss echo and deflate echo runs are
//! repeated `--rounds` times and the summary and charts show medians.
//! Output: `DIR/results.json`, `DIR/results.csv`, `DIR/summary.md` (default
//! `target/bench`) and SVG charts in `--charts` (default `docs/bench`).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use plotters::prelude::*;
use serde_json::{Value, json};

const WS_SERVERS: [&str; 6] = [
    "netpoll",
    "tokio-tungstenite",
    "tokio-tungstenite-4k",
    "fastwebsockets",
    "tokio-websockets",
    "sockudo-ws",
];

/// The wss rows' servers: netpoll over ws:// (the plaintext reference, run in the same
/// configuration with the same client), netpoll over wss://, and tokio-tungstenite (default
/// config) over tokio-rustls.
const WSS_SERVERS: [&str; 3] = ["netpoll", "netpoll-wss", "tokio-tungstenite-wss"];

/// Source addresses the wss scenarios' client spreads its sockets over.
const WSS_SOURCES: u8 = 8;

/// The permessage-deflate rows' servers: netpoll without compression (the reference; its
/// client offers none), with permessage-deflate without context takeover (`ws_echo
/// --deflate`), and with context takeover and a 32 KiB window (`ws_echo --deflate-takeover
/// 15`); each with a client offering the same (`ws_load` flags of [`deflate_flags`]).
const DEFLATE_SERVERS: [&str; 3] = ["netpoll", "netpoll-deflate", "netpoll-deflate-takeover"];

/// The context takeover window of the `netpoll-deflate-takeover` rows (2^15 = 32 KiB).
const TAKEOVER_BITS: u8 = 15;

/// The client's flags for a permessage-deflate row's server: what it offers.
fn deflate_flags(server: &str) -> Vec<String> {
    match server {
        "netpoll-deflate" => vec!["--deflate".into()],
        "netpoll-deflate-takeover" => vec![format!("--deflate-takeover={TAKEOVER_BITS}")],
        _ => Vec::new(),
    }
}

struct Suite {
    bin: PathBuf,
    port: u16,
    secs: u64,
    round: usize,
    results: Vec<Value>,
    /// The directory with `cert.pem` and `key.pem` (from `gen_cert`), once made.
    tls: Option<PathBuf>,
}

/// A server process that printed `listening on ADDR`.
struct Server {
    child: Child,
    addr: String,
    /// Serves wss:// (TLS).
    tls: bool,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    fn rss_kib(&self) -> u64 {
        netpoll_tools::rss_kib(self.child.id())
    }

    /// `ws://ADDR/PATH`, or `wss://` for a TLS server.
    fn url(&self, path: &str) -> String {
        let scheme = if self.tls { "wss" } else { "ws" };
        format!("{scheme}://{}{path}", self.addr)
    }
}

/// `--flag=value` as the two arguments the load tools take.
fn split_flags(args: &[String]) -> Vec<String> {
    args.iter()
        .flat_map(|a| match a.split_once('=') {
            Some((f, v)) if a.starts_with("--") => vec![f.to_string(), v.to_string()],
            _ => vec![a.clone()],
        })
        .collect()
}

/// The server's CPU time over the measured window in % of one core: below 100 it waited (on
/// the client, which shares the two cores). Rounded to 0.1 so that the summary redrawn from
/// results.json (`--charts-only`) is the same.
fn busy_pct(f: &BTreeMap<String, String>) -> Value {
    match (num(f, "server_cpu_s").as_f64(), num(f, "secs").as_f64()) {
        (Some(cpu), Some(secs)) if secs > 0.0 => json!((1000.0 * cpu / secs).round() / 10.0),
        _ => Value::Null,
    }
}

/// `key=value` pairs of a report line.
fn fields(line: &str) -> BTreeMap<String, String> {
    line.split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// A number from a report line's field as JSON (null when missing or not a number).
fn num(f: &BTreeMap<String, String>, key: &str) -> Value {
    f.get(key)
        .and_then(|v| v.parse::<f64>().ok())
        .filter(|v| v.is_finite())
        .map_or(Value::Null, |v| json!(v))
}

impl Suite {
    fn start(&mut self, server: &str) -> Server {
        self.port += 1;
        let addr = format!("127.0.0.1:{}", self.port);
        let b = &self.bin;
        // `NAME-wss` is server NAME with the suite's certificate.
        let tls = server.ends_with("-wss");
        let mut cmd = match server.strip_suffix("-wss").unwrap_or(server) {
            "netpoll" => {
                let mut c = Command::new(b.join("examples/ws_echo"));
                c.args(["--pollers", "1"]);
                c
            }
            "netpoll-deflate" => {
                let mut c = Command::new(b.join("examples/ws_echo"));
                c.args(["--pollers", "1", "--deflate"]);
                c
            }
            "netpoll-deflate-takeover" => {
                let mut c = Command::new(b.join("examples/ws_echo"));
                c.args(["--pollers", "1", "--deflate-takeover"])
                    .arg(TAKEOVER_BITS.to_string());
                c
            }
            "tokio-tungstenite" | "tokio-tungstenite-4k" => {
                let mut c = Command::new(b.join("tt_echo"));
                c.args(["--threads", "1"]);
                if server.ends_with("4k") {
                    c.args(["--read-buffer", "4096"]);
                }
                c
            }
            "fastwebsockets" => {
                let mut c = Command::new(b.join("fws_echo"));
                c.args(["--threads", "1"]);
                c
            }
            "tokio-websockets" => {
                let mut c = Command::new(b.join("tws_echo"));
                c.args(["--threads", "1"]);
                c
            }
            "sockudo-ws" => {
                let mut c = Command::new(b.join("sockudo_echo"));
                c.args(["--threads", "1"]);
                c
            }
            "netpoll-tcp" => {
                let mut c = Command::new(b.join("examples/tcp_echo"));
                c.args(["--pollers", "1"]);
                c
            }
            "mio" => {
                let mut c = Command::new(b.join("mio_echo"));
                c.args(["--threads", "1"]);
                c
            }
            other => panic!("unknown server {other}"),
        };
        if tls {
            let dir = self.tls.as_ref().expect("the certificate was made");
            cmd.arg("--tls-cert")
                .arg(dir.join("cert.pem"))
                .arg("--tls-key")
                .arg(dir.join("key.pem"));
        }
        let mut child = cmd
            .args(["--addr", &addr])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {server}: {e}"));
        let stdout = child.stdout.take().expect("piped");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let line = rx
            .recv_timeout(Duration::from_secs(10))
            .unwrap_or_else(|_| panic!("{server} did not start"));
        assert!(line.starts_with("listening on"), "{server}: {line}");
        Server { child, addr, tls }
    }

    /// Writes the self-signed certificate for the wss scenarios (`gen_cert`) into `dir`.
    fn make_cert(&mut self, dir: &Path) {
        let status = Command::new(self.bin.join("gen_cert"))
            .arg("--out")
            .arg(dir)
            .stdout(Stdio::null())
            .status()
            .expect("gen_cert runs");
        assert!(status.success(), "gen_cert --out {} failed", dir.display());
        self.tls = Some(dir.to_path_buf());
    }

    /// The client's connection flags for `path` on `s`: the URL, and the CA to trust for wss.
    fn target(&self, s: &Server, path: &str) -> Vec<String> {
        let mut args = vec![format!("--url={}", s.url(path))];
        if s.tls {
            let dir = self.tls.as_ref().expect("the certificate was made");
            args.push(format!("--ca={}", dir.join("cert.pem").display()));
        }
        args
    }

    /// Runs a load tool to completion and returns its report's fields (of every line it
    /// printed).
    fn load(&self, tool: &str, args: &[String]) -> BTreeMap<String, String> {
        self.load_from(tool, args, 16)
    }

    /// [`Suite::load`] with the client's sockets spread over `sources` source addresses.
    fn load_from(&self, tool: &str, args: &[String], sources: u8) -> BTreeMap<String, String> {
        let out = Command::new(self.bin.join(tool))
            .args(split_flags(args))
            .args(["--pollers", "1", "--sources", &sources.to_string()])
            .stderr(Stdio::inherit())
            .output()
            .expect("load tool runs");
        let text = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            let line = text.lines().last().unwrap_or("");
            eprintln!("suite: {tool} {args:?} failed: {line}");
        }
        // The report is more than one line: `ws_load` ends with `wire_bytes_per_msg=` on a
        // line of its own after the figures.
        text.lines().flat_map(fields).collect()
    }

    fn echo(&mut self, conns: usize, size: usize) {
        for server in WS_SERVERS {
            let s = self.start(server);
            let f = self.load(
                "ws_load",
                &[
                    format!("--addr={}", s.addr),
                    format!("--conns={conns}"),
                    format!("--size={size}"),
                    format!("--duration={}", self.secs),
                    format!("--server-pid={}", s.child.id()),
                ],
            );
            self.record(json!({
                "scenario": "echo", "server": server, "conns": conns, "size": size,
                "msgs_per_sec": num(&f, "msgs_per_sec"), "mb_per_sec": num(&f, "mb_per_sec"),
                "lat_p50_us": num(&f, "lat_p50_us"), "lat_p99_us": num(&f, "lat_p99_us"),
                "lat_max_us": num(&f, "lat_max_us"),
                "server_cpu_us_per_msg": num(&f, "server_cpu_us_per_msg"),
                "client_cpu_us_per_msg": num(&f, "client_cpu_us_per_msg"),
                "top10_share": num(&f, "top10_share"),
                "connect_secs": num(&f, "connect_secs"), "failed": num(&f, "failed"),
            }));
        }
    }

    fn broadcast(&mut self, receivers: usize) {
        for server in WS_SERVERS {
            let s = self.start(server);
            let f = self.load(
                "ws_load",
                &[
                    format!("--addr={}", s.addr),
                    "--path=/broadcast".into(),
                    "--mode=broadcast".into(),
                    "--rate=10".into(),
                    format!("--conns={receivers}"),
                    format!("--duration={}", self.secs + 2),
                    format!("--server-pid={}", s.child.id()),
                ],
            );
            self.record(json!({
                "scenario": "broadcast", "server": server, "receivers": receivers, "rate": 10,
                "deliveries_per_sec": num(&f, "msgs_per_sec"),
                "lat_p50_us": num(&f, "lat_p50_us"), "lat_p99_us": num(&f, "lat_p99_us"),
                "lat_max_us": num(&f, "lat_max_us"),
                "server_cpu_us_per_delivery": num(&f, "server_cpu_us_per_msg"),
                "failed": num(&f, "failed"),
            }));
        }
    }

    fn idle(&mut self, conns: usize) {
        for server in WS_SERVERS {
            self.idle_one("idle", server, conns, 16, &[]);
        }
    }

    /// Idle memory per wss connection: netpoll and tokio-tungstenite over TLS, and netpoll
    /// over ws:// in the same run for what TLS adds.
    fn wss_idle(&mut self, conns: usize) {
        for server in WSS_SERVERS {
            self.idle_one("wss_idle", server, conns, WSS_SOURCES, &[]);
        }
    }

    /// Idle memory per connection with permessage-deflate, without and with context
    /// takeover, and netpoll without compression beside them. Every connection's one message
    /// is 1 KiB of JSON-like text (in all three rows), so with context takeover each
    /// connection's histories hold that message both ways when the RSS is read.
    fn deflate_idle(&mut self, conns: usize) {
        for server in DEFLATE_SERVERS {
            let mut client = deflate_flags(server);
            client.extend(["--json".into(), "--size=1024".into()]);
            self.idle_one("deflate_idle", server, conns, 16, &client);
        }
    }

    /// One idle run: the server's RSS growth once `conns` connections are upgraded on `/echo`
    /// and have each echoed one message; `client` are further `ws_load` flags.
    fn idle_one(
        &mut self,
        scenario: &str,
        server: &str,
        conns: usize,
        sources: u8,
        client: &[String],
    ) {
        let s = self.start(server);
        std::thread::sleep(Duration::from_millis(300));
        let before = s.rss_kib();
        let mut args = self.target(&s, "/echo");
        args.extend([
            "--mode=idle".into(),
            format!("--conns={conns}"),
            "--duration=60".into(),
            format!("--sources={sources}"),
        ]);
        args.extend_from_slice(client);
        let mut load = Command::new(self.bin.join("ws_load"))
            .args(split_flags(&args))
            .stdout(Stdio::piped())
            .spawn()
            .expect("ws_load runs");
        let mut ready = String::new();
        BufReader::new(load.stdout.take().expect("piped"))
            .read_line(&mut ready)
            .expect("ready line");
        // Let the server finish whatever the last handshakes left (and the RSS settle).
        std::thread::sleep(Duration::from_secs(1));
        let after = s.rss_kib();
        let _ = load.kill();
        let _ = load.wait();
        let f = fields(&ready);
        let connect_secs = num(&f, "connect_secs");
        let ok = ready.starts_with("ready");
        if !ok {
            eprintln!("suite: {scenario} {server} {conns}: the client did not get ready");
        }
        self.record(json!({
            "scenario": scenario, "server": server, "conns": conns,
            "rss_before_kib": before, "rss_after_kib": after,
            "bytes_per_conn": if ok {
                json!((after.saturating_sub(before) * 1024) as f64 / conns as f64)
            } else { Value::Null },
            "connect_secs": connect_secs,
            "conns_per_sec": connect_secs.as_f64().map_or(Value::Null, |s| json!(conns as f64 / s)),
        }));
    }

    /// Echo over wss://: netpoll and tokio-tungstenite + tokio-rustls, with netpoll over ws://
    /// run alongside in the same configuration (the goals are ratios to both).
    fn wss_echo(&mut self, conns: usize, size: usize) {
        for server in WSS_SERVERS {
            let s = self.start(server);
            let mut args = self.target(&s, "/echo");
            args.extend([
                format!("--conns={conns}"),
                format!("--size={size}"),
                format!("--duration={}", self.secs),
                format!("--server-pid={}", s.child.id()),
            ]);
            let f = self.load_from("ws_load", &args, WSS_SOURCES);
            let busy = busy_pct(&f);
            self.record(json!({
                "scenario": "wss_echo", "server": server, "tls": s.tls,
                "conns": conns, "size": size,
                "msgs_per_sec": num(&f, "msgs_per_sec"), "mb_per_sec": num(&f, "mb_per_sec"),
                "lat_p50_us": num(&f, "lat_p50_us"), "lat_p99_us": num(&f, "lat_p99_us"),
                "lat_max_us": num(&f, "lat_max_us"),
                "server_cpu_us_per_msg": num(&f, "server_cpu_us_per_msg"),
                "server_cpu_s": num(&f, "server_cpu_s"), "server_busy_pct": busy,
                "connect_secs": num(&f, "connect_secs"), "failed": num(&f, "failed"),
            }));
        }
    }

    /// Echo of JSON-like text with permessage-deflate (without and with context takeover)
    /// against netpoll without compression in the same configuration: messages/s, server CPU
    /// per message and the bytes on the wire per message (both ways, frame headers included).
    fn deflate_echo(&mut self, conns: usize, size: usize) {
        for server in DEFLATE_SERVERS {
            let s = self.start(server);
            let mut args = self.target(&s, "/echo");
            args.extend([
                format!("--conns={conns}"),
                format!("--size={size}"),
                format!("--duration={}", self.secs),
                format!("--server-pid={}", s.child.id()),
                "--json".into(),
            ]);
            args.extend(deflate_flags(server));
            let f = self.load("ws_load", &args);
            self.record(json!({
                "scenario": "deflate_echo", "server": server, "conns": conns, "size": size,
                "msgs_per_sec": num(&f, "msgs_per_sec"), "mb_per_sec": num(&f, "mb_per_sec"),
                "lat_p50_us": num(&f, "lat_p50_us"), "lat_p99_us": num(&f, "lat_p99_us"),
                "lat_max_us": num(&f, "lat_max_us"),
                "server_cpu_us_per_msg": num(&f, "server_cpu_us_per_msg"),
                "server_cpu_s": num(&f, "server_cpu_s"), "server_busy_pct": busy_pct(&f),
                "wire_bytes_per_msg": num(&f, "wire_bytes_per_msg"),
                "connect_secs": num(&f, "connect_secs"), "failed": num(&f, "failed"),
            }));
        }
    }

    /// Broadcast on `/broadcast` of 1 KiB of JSON-like text, 10 messages/s, with and without
    /// permessage-deflate (no context takeover: a group compresses each message once for
    /// every receiver). As `broadcast`, with the bytes on the wire per delivery.
    fn deflate_broadcast(&mut self, receivers: usize) {
        for server in &DEFLATE_SERVERS[..2] {
            let s = self.start(server);
            let mut args = self.target(&s, "/broadcast");
            args.extend([
                "--mode=broadcast".into(),
                "--rate=10".into(),
                "--size=1024".into(),
                "--json".into(),
                format!("--conns={receivers}"),
                format!("--duration={}", self.secs + 2),
                format!("--server-pid={}", s.child.id()),
            ]);
            args.extend(deflate_flags(server));
            let f = self.load("ws_load", &args);
            self.record(json!({
                "scenario": "deflate_broadcast", "server": server, "receivers": receivers,
                "rate": 10, "size": 1024,
                "deliveries_per_sec": num(&f, "msgs_per_sec"),
                "lat_p50_us": num(&f, "lat_p50_us"), "lat_p99_us": num(&f, "lat_p99_us"),
                "lat_max_us": num(&f, "lat_max_us"),
                "server_cpu_us_per_delivery": num(&f, "server_cpu_us_per_msg"),
                "wire_bytes_per_delivery": num(&f, "wire_bytes_per_msg"),
                "failed": num(&f, "failed"),
            }));
        }
    }

    fn tcp(&mut self, conns: usize) {
        for server in ["netpoll-tcp", "mio"] {
            let s = self.start(server);
            let f = self.load(
                "tcp_load",
                &[
                    format!("--addr={}", s.addr),
                    format!("--conns={conns}"),
                    "--size=64".into(),
                    format!("--duration={}", self.secs),
                    format!("--server-pid={}", s.child.id()),
                ],
            );
            self.record(json!({
                "scenario": "tcp_echo", "server": server, "conns": conns, "size": 64,
                "msgs_per_sec": num(&f, "msgs_per_sec"),
                "server_cpu_us_per_msg": num(&f, "server_cpu_us_per_msg"),
                "lat_p99_us": num(&f, "lat_p99_us"),
            }));
        }
    }

    fn record(&mut self, mut v: Value) {
        v["round"] = json!(self.round);
        println!("{v}");
        self.results.push(v);
    }
}

fn build() {
    for args in [
        &[
            "build",
            "--release",
            "--quiet",
            "-p",
            "netpoll",
            "--examples",
        ][..],
        &[
            "build",
            "--release",
            "--quiet",
            "-p",
            "netpoll-tools",
            "--bins",
        ][..],
    ] {
        let status = Command::new(env!("CARGO"))
            .args(args)
            .status()
            .expect("cargo runs");
        assert!(status.success(), "cargo {args:?} failed");
    }
}

fn machine() -> Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|m| m.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let date = Command::new("date")
        .arg("-u")
        .arg("+%Y-%m-%d %H:%M UTC")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    json!({
        "cpu": cpu,
        "cores": std::thread::available_parallelism().map_or(0, |n| n.get()),
        "kernel": kernel.trim(),
        "date": date,
    })
}

fn main() {
    let mut secs = 3;
    let mut rounds = 2;
    let mut quick = false;
    let mut out = PathBuf::from("target/bench");
    let mut charts = PathBuf::from("docs/bench");
    let mut charts_only = None;
    let mut only: Option<Vec<String>> = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let (flag, inline) = match a.split_once('=') {
            Some((f, v)) => (f.to_string(), Some(v.to_string())),
            None => (a.clone(), None),
        };
        let mut value = || inline.clone().or_else(|| args.next()).expect("a value");
        match flag.as_str() {
            "--secs" => secs = value().parse().expect("--secs N"),
            "--rounds" => rounds = value().parse().expect("--rounds N"),
            "--quick" => quick = true,
            "--out" => out = value().into(),
            "--charts" => charts = value().into(),
            "--charts-only" => charts_only = Some(PathBuf::from(value())),
            "--only" => only = Some(value().split(',').map(str::to_string).collect()),
            other => panic!("unknown flag {other}"),
        }
    }
    if let Some(results) = charts_only {
        let doc: Value =
            serde_json::from_str(&std::fs::read_to_string(results).expect("results file"))
                .expect("results JSON");
        draw_charts(&doc, &charts);
        write_deflate_summary(&doc, &charts);
        print!("{}", summary(&doc));
        return;
    }

    const GROUPS: [&str; 6] = ["echo", "tcp", "broadcast", "idle", "wss", "deflate"];
    if let Some(g) = only
        .iter()
        .flatten()
        .find(|g| !GROUPS.contains(&g.as_str()))
    {
        panic!("--only takes {}, not {g}", GROUPS.join(","));
    }
    let runs = |group: &str| only.as_ref().is_none_or(|o| o.iter().any(|g| g == group));

    let t0 = Instant::now();
    build();
    let bin = std::env::current_exe()
        .expect("own path")
        .parent()
        .expect("target/release")
        .to_path_buf();
    let mut suite = Suite {
        bin,
        port: 21000,
        secs,
        round: 1,
        results: Vec::new(),
        tls: None,
    };
    let (conns, sizes, receivers, idle): (&[usize], &[usize], &[usize], &[usize]) = if quick {
        (&[100, 1000], &[64], &[1000], &[1000])
    } else {
        (
            &[100, 1000, 5000, 15000],
            &[64, 1024, 16384],
            &[1000, 10000],
            &[1000, 10000, 15000],
        )
    };
    // The wss rows (issue 15); a quick run keeps them to 1,000 connections.
    let (wss_conns, wss_sizes, wss_idle): (&[usize], &[usize], &[usize]) = if quick {
        (&[1000], &[64], &[1000])
    } else {
        (&[1000, 10000], &[64, 16384], &[1000, 10000])
    };
    // The permessage-deflate rows: echo at 1,000 connections x 1 KiB and 16 KiB (quick too),
    // idle and broadcast at 10,000 (quick: 1,000).
    let (deflate_sizes, deflate_many): (&[usize], &[usize]) = if quick {
        (&[1024, 16384], &[1000])
    } else {
        (&[1024, 16384], &[10000])
    };
    if runs("wss") {
        suite.make_cert(&out.join("tls"));
    }
    // Throughput runs are repeated (the summary takes medians): one run's noise on a shared
    // machine is ±20%.
    for round in 1..=rounds {
        suite.round = round;
        if runs("echo") {
            for &c in conns {
                for &z in sizes {
                    suite.echo(c, z);
                }
            }
        }
        if runs("tcp") {
            for n in [100, 5000] {
                suite.tcp(n);
            }
        }
        if runs("wss") {
            for &c in wss_conns {
                for &z in wss_sizes {
                    suite.wss_echo(c, z);
                }
            }
        }
        if runs("deflate") {
            for &z in deflate_sizes {
                suite.deflate_echo(1000, z);
            }
        }
    }
    suite.round = 1;
    if runs("broadcast") {
        for &r in receivers {
            suite.broadcast(r);
        }
    }
    if runs("idle") {
        for &n in idle {
            suite.idle(n);
        }
    }
    if runs("wss") {
        for &n in wss_idle {
            suite.wss_idle(n);
        }
    }
    if runs("deflate") {
        for &n in deflate_many {
            suite.deflate_idle(n);
        }
        for &n in deflate_many {
            suite.deflate_broadcast(n);
        }
    }
    let doc = json!({
        "machine": machine(),
        "command": std::env::args().collect::<Vec<_>>().join(" "),
        "seconds_per_run": secs,
        "rounds": rounds,
        "wall_seconds": t0.elapsed().as_secs(),
        "results": suite.results,
    });
    std::fs::create_dir_all(&out).expect("output directory");
    std::fs::write(
        out.join("results.json"),
        serde_json::to_string_pretty(&doc).unwrap(),
    )
    .expect("write results.json");
    write_csv(&doc, &out.join("results.csv"));
    let md = summary(&doc);
    std::fs::write(out.join("summary.md"), &md).expect("write summary.md");
    draw_charts(&doc, &charts);
    write_deflate_summary(&doc, &charts);
    print!("{md}");
    println!(
        "suite: {} runs in {} s; results in {}, charts in {}",
        doc["results"].as_array().map_or(0, Vec::len),
        t0.elapsed().as_secs(),
        out.display(),
        charts.display()
    );
}

fn write_csv(doc: &Value, path: &Path) {
    let rows = doc["results"].as_array().expect("results");
    let mut columns: Vec<String> = Vec::new();
    for r in rows {
        for k in r.as_object().expect("object").keys() {
            if !columns.contains(k) {
                columns.push(k.clone());
            }
        }
    }
    let mut f = std::fs::File::create(path).expect("results.csv");
    writeln!(f, "{}", columns.join(",")).unwrap();
    for r in rows {
        let cells: Vec<String> = columns
            .iter()
            .map(|c| match &r[c] {
                Value::Null => String::new(),
                Value::String(s) => s.clone(),
                v => v.to_string(),
            })
            .collect();
        writeln!(f, "{}", cells.join(",")).unwrap();
    }
}

// ---------------------------------------------------------------------------------------
// Reading the results back

fn rows<'a>(doc: &'a Value, scenario: &str) -> impl Iterator<Item = &'a Value> + 'a {
    let scenario = scenario.to_string();
    doc["results"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(move |r| r["scenario"] == scenario.as_str())
}

/// The median of metric `m` over the rounds of one configuration.
fn metric(doc: &Value, scenario: &str, server: &str, keys: &[(&str, u64)], m: &str) -> Option<f64> {
    let mut v: Vec<f64> = rows(doc, scenario)
        .filter(|r| r["server"] == server && keys.iter().all(|(k, v)| r[*k].as_u64() == Some(*v)))
        .filter_map(|r| r[m].as_f64())
        .collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    Some(if v.len().is_multiple_of(2) {
        (v[mid - 1] + v[mid]) / 2.0
    } else {
        v[mid]
    })
}

fn distinct(doc: &Value, scenario: &str, key: &str) -> Vec<u64> {
    let mut v: Vec<u64> = rows(doc, scenario)
        .filter_map(|r| r[key].as_u64())
        .collect();
    v.sort_unstable();
    v.dedup();
    v
}

fn cell(v: Option<f64>, digits: usize) -> String {
    match v {
        Some(x) if digits == 0 => group(x.round() as u64),
        Some(x) => format!("{x:.digits$}"),
        None => "-".into(),
    }
}

fn group(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}x", a / b),
        _ => "-".into(),
    }
}

fn size_label(size: u64) -> String {
    if size >= 1024 {
        format!("{} KiB", size / 1024)
    } else {
        format!("{size} B")
    }
}

fn short(server: &str) -> &str {
    match server {
        "tokio-tungstenite" => "tt",
        "tokio-tungstenite-4k" => "tt-4k",
        "fastwebsockets" => "fws",
        "tokio-websockets" => "tws",
        "sockudo-ws" => "sockudo",
        "tokio-tungstenite-wss" => "tt-wss",
        other => other,
    }
}

/// A Markdown table's header row and separator.
fn table_head(lead: &[&str], columns: impl Iterator<Item = String>) -> String {
    let names: Vec<String> = lead.iter().map(|s| s.to_string()).chain(columns).collect();
    format!(
        "| {} |\n|{}\n",
        names.join(" | "),
        "---|".repeat(names.len())
    )
}

/// The Markdown tables of BENCHMARKS.md, from the results.
fn summary(doc: &Value) -> String {
    let mut md = String::new();
    let has = |scenario: &str| rows(doc, scenario).next().is_some();
    let repeated = match (
        has("echo") || has("tcp_echo"),
        has("wss_echo"),
        has("deflate_echo"),
    ) {
        (true, true, false) => "Echo, TCP and wss echo",
        (false, true, false) => "wss echo",
        (true, true, true) => "Echo, TCP, wss and permessage-deflate echo",
        (false, true, true) => "wss and permessage-deflate echo",
        (true, false, true) => "Echo, TCP and permessage-deflate echo",
        (false, false, true) => "permessage-deflate echo",
        _ => "Echo and TCP",
    };
    md += &summary_head(doc, repeated);
    let peers = &WS_SERVERS[1..];

    if has("echo") {
        md += "### Echo: messages per second (one server thread)\n\n";
        md += &table_head(
            &["conns", "size"],
            WS_SERVERS
                .iter()
                .map(|s| short(s).to_string())
                .chain(peers.iter().map(|p| format!("vs {}", short(p)))),
        );
        for c in distinct(doc, "echo", "conns") {
            for z in distinct(doc, "echo", "size") {
                let keys = [("conns", c), ("size", z)];
                let rate = |s: &str| metric(doc, "echo", s, &keys, "msgs_per_sec");
                md += &format!("| {} | {} |", group(c), size_label(z));
                for s in WS_SERVERS {
                    md += &format!(" {} |", cell(rate(s), 0));
                }
                for p in peers {
                    md += &format!(" {} |", ratio(rate("netpoll"), rate(p)));
                }
                md += "\n";
            }
        }

        md += "\n### Echo: latency p50 / p99 (ms) and server CPU per message (µs)\n\n";
        md += &table_head(
            &["conns", "size"],
            WS_SERVERS
                .iter()
                .map(|s| format!("{} p50/p99", short(s)))
                .chain(WS_SERVERS.iter().map(|s| format!("{} CPU", short(s)))),
        );
        for c in distinct(doc, "echo", "conns") {
            for z in distinct(doc, "echo", "size") {
                let keys = [("conns", c), ("size", z)];
                md += &format!("| {} | {} |", group(c), size_label(z));
                for s in WS_SERVERS {
                    let ms = |k: &str| metric(doc, "echo", s, &keys, k).map(|us| us / 1000.0);
                    md += &format!(
                        " {} / {} |",
                        cell(ms("lat_p50_us"), 2),
                        cell(ms("lat_p99_us"), 2)
                    );
                }
                for s in WS_SERVERS {
                    let cpu = metric(doc, "echo", s, &keys, "server_cpu_us_per_msg");
                    md += &format!(" {} |", cell(cpu, 2));
                }
                md += "\n";
            }
        }
        // The same client against every server: what it spends per echo, and how evenly the
        // server shared itself out over the connections (in a closed loop, a server that keeps
        // answering the connections that answered last gets more messages/s for its work and
        // makes the rest wait: the p99 above).
        md += "\n### Echo: the busiest tenth of the connections' share of the echoes (0.100 is even) \
               and the client's CPU per echo (µs)\n\n";
        md += &table_head(
            &["conns", "size"],
            WS_SERVERS
                .iter()
                .map(|s| format!("{} top10", short(s)))
                .chain(
                    WS_SERVERS
                        .iter()
                        .map(|s| format!("{} client CPU", short(s))),
                ),
        );
        for c in distinct(doc, "echo", "conns") {
            for z in distinct(doc, "echo", "size") {
                let keys = [("conns", c), ("size", z)];
                md += &format!("| {} | {} |", group(c), size_label(z));
                for s in WS_SERVERS {
                    md += &format!(
                        " {} |",
                        cell(metric(doc, "echo", s, &keys, "top10_share"), 3)
                    );
                }
                for s in WS_SERVERS {
                    let cpu = metric(doc, "echo", s, &keys, "client_cpu_us_per_msg");
                    md += &format!(" {} |", cell(cpu, 2));
                }
                md += "\n";
            }
        }
        md += "\n";
    }

    if has("broadcast") {
        md += "### Broadcast: 10 messages/s of 64 B to every receiver\n\n\
           | receivers | server | deliveries/s | p50 ms | p99 ms | max ms | CPU µs/delivery |\n\
           |---|---|---|---|---|---|---|\n";
        for r in distinct(doc, "broadcast", "receivers") {
            for s in WS_SERVERS {
                let keys = [("receivers", r)];
                let v = |k: &str| metric(doc, "broadcast", s, &keys, k);
                let ms = |k: &str| v(k).map(|us| us / 1000.0);
                md += &format!(
                    "| {} | {} | {} | {} | {} | {} | {} |\n",
                    group(r),
                    s,
                    cell(v("deliveries_per_sec"), 0),
                    cell(ms("lat_p50_us"), 2),
                    cell(ms("lat_p99_us"), 2),
                    cell(ms("lat_max_us"), 2),
                    cell(v("server_cpu_us_per_delivery"), 2),
                );
            }
        }
        md += "\n";
    }

    if has("idle") {
        md += "### Idle connections: server RSS growth per connection (bytes), connection rate\n\n";
        md += &table_head(
            &["conns"],
            WS_SERVERS
                .iter()
                .map(|s| format!("{} B/conn", short(s)))
                .chain(WS_SERVERS.iter().map(|s| format!("{} conns/s", short(s)))),
        );
        for c in distinct(doc, "idle", "conns") {
            md += &format!("| {} |", group(c));
            for s in WS_SERVERS {
                md += &format!(
                    " {} |",
                    cell(metric(doc, "idle", s, &[("conns", c)], "bytes_per_conn"), 0)
                );
            }
            for s in WS_SERVERS {
                md += &format!(
                    " {} |",
                    cell(metric(doc, "idle", s, &[("conns", c)], "conns_per_sec"), 0)
                );
            }
            md += "\n";
        }
        md += "\n";
    }

    if has("tcp_echo") {
        md += "### TCP echo, 64 B: netpoll's engine against a minimal mio server (the ceiling)\n\n\
           | conns | netpoll msgs/s | mio msgs/s | ratio | netpoll CPU µs/msg | mio CPU µs/msg |\n\
           |---|---|---|---|---|---|\n";
        for c in distinct(doc, "tcp_echo", "conns") {
            let v = |s: &str, k: &str| metric(doc, "tcp_echo", s, &[("conns", c)], k);
            md += &format!(
                "| {} | {} | {} | {} | {} | {} |\n",
                group(c),
                cell(v("netpoll-tcp", "msgs_per_sec"), 0),
                cell(v("mio", "msgs_per_sec"), 0),
                ratio(v("netpoll-tcp", "msgs_per_sec"), v("mio", "msgs_per_sec")),
                cell(v("netpoll-tcp", "server_cpu_us_per_msg"), 2),
                cell(v("mio", "server_cpu_us_per_msg"), 2),
            );
        }
        md += "\n";
    }

    if has("wss_echo") {
        md += &wss_echo_tables(doc);
    }
    if has("wss_idle") {
        md += &wss_idle_table(doc);
    }
    md += &deflate_tables(doc);
    // One newline at the end, as before.
    while md.ends_with("\n\n") {
        md.pop();
    }
    md
}

/// The summary's first line: the machine, the command, and which figures are medians.
fn summary_head(doc: &Value, repeated: &str) -> String {
    let m = &doc["machine"];
    format!(
        "Machine: {} ({} cores), Linux {}, {}. Command: `{}`. {repeated} figures are medians \
         of {} rounds of {} s each.\n\n",
        m["cpu"].as_str().unwrap_or("?"),
        m["cores"],
        m["kernel"].as_str().unwrap_or("?"),
        m["date"].as_str().unwrap_or("?"),
        doc["command"].as_str().unwrap_or("?"),
        doc["rounds"].as_u64().unwrap_or(1),
        doc["seconds_per_run"],
    )
}

/// The wss echo tables: throughput with the goals' ratios (netpoll over wss against netpoll
/// over ws:// in the same configuration, and against tokio-tungstenite + tokio-rustls), then
/// latency, server CPU per message and how busy each server's thread was.
fn wss_echo_tables(doc: &Value) -> String {
    let sc = "wss_echo";
    let mut md = String::from(
        "### wss echo (TLS): messages per second (one server thread)\n\n\
         netpoll over ws:// runs beside the wss servers in each configuration, with the same \
         client settings (8 source addresses), as the plaintext reference. Goals (issue 15): \
         wss at least 0.6x netpoll's ws:// echo and at least 1.3x tokio-tungstenite + \
         tokio-rustls.\n\n\
         | conns | size | netpoll ws:// | netpoll wss | tt-wss | netpoll wss / ws:// | netpoll wss / tt-wss |\n\
         |---|---|---|---|---|---|---|\n",
    );
    for c in distinct(doc, sc, "conns") {
        for z in distinct(doc, sc, "size") {
            let keys = [("conns", c), ("size", z)];
            let rate = |s: &str| metric(doc, sc, s, &keys, "msgs_per_sec");
            md += &format!(
                "| {} | {} | {} | {} | {} | {} | {} |\n",
                group(c),
                size_label(z),
                cell(rate("netpoll"), 0),
                cell(rate("netpoll-wss"), 0),
                cell(rate("tokio-tungstenite-wss"), 0),
                ratio(rate("netpoll-wss"), rate("netpoll")),
                ratio(rate("netpoll-wss"), rate("tokio-tungstenite-wss")),
            );
        }
    }

    md += "\n### wss echo: latency p50 / p99 (ms), server CPU per message (µs), server busy (% of \
           one core over the window)\n\n";
    md += &latency_rows(doc, sc, &WSS_SERVERS, wss_label, true);
    md + "\n"
}

/// Idle memory per wss connection for both servers, with netpoll over ws:// beside them.
fn wss_idle_table(doc: &Value) -> String {
    let sc = "wss_idle";
    let mut md = String::from(
        "### Idle wss connections: server RSS growth per connection (bytes), connection rate \
         (TLS and WebSocket handshakes)\n\n",
    );
    md += &idle_rows(doc, sc, &WSS_SERVERS, wss_label);
    md + "\n"
}

/// A wss scenario's server as its tables name it.
/// An echo latency table's head and rows for `servers` of scenario `sc`, by connections and
/// size: p50 / p99 (ms), server CPU per message (µs, if `cpu`), server busy (%).
fn latency_rows(
    doc: &Value,
    sc: &str,
    servers: &[&str],
    label: fn(&str) -> &str,
    cpu: bool,
) -> String {
    let columns = |what: &'static str| servers.iter().map(move |s| format!("{} {what}", label(s)));
    let cpu_columns = if cpu { servers.len() } else { 0 };
    let mut md = table_head(
        &["conns", "size"],
        columns("p50/p99")
            .chain(columns("CPU").take(cpu_columns))
            .chain(columns("busy")),
    );
    for c in distinct(doc, sc, "conns") {
        for z in distinct(doc, sc, "size") {
            let keys = [("conns", c), ("size", z)];
            md += &format!("| {} | {} |", group(c), size_label(z));
            for s in servers {
                let ms = |k: &str| metric(doc, sc, s, &keys, k).map(|us| us / 1000.0);
                md += &format!(
                    " {} / {} |",
                    cell(ms("lat_p50_us"), 2),
                    cell(ms("lat_p99_us"), 2)
                );
            }
            for s in servers.iter().take(cpu_columns) {
                let cpu = metric(doc, sc, s, &keys, "server_cpu_us_per_msg");
                md += &format!(" {} |", cell(cpu, 2));
            }
            for s in servers {
                let busy = metric(doc, sc, s, &keys, "server_busy_pct");
                md += &format!(" {} |", cell(busy, 0));
            }
            md += "\n";
        }
    }
    md
}

/// An idle-memory table's head and rows for `servers` of scenario `sc`: bytes per connection,
/// then connections per second, by connection count.
fn idle_rows(doc: &Value, sc: &str, servers: &[&str], label: fn(&str) -> &str) -> String {
    let mut md = table_head(
        &["conns"],
        servers
            .iter()
            .map(|s| format!("{} B/conn", label(s)))
            .chain(servers.iter().map(|s| format!("{} conns/s", label(s)))),
    );
    for c in distinct(doc, sc, "conns") {
        md += &format!("| {} |", group(c));
        for k in ["bytes_per_conn", "conns_per_sec"] {
            for s in servers {
                md += &format!(" {} |", cell(metric(doc, sc, s, &[("conns", c)], k), 0));
            }
        }
        md += "\n";
    }
    md
}

fn wss_label(server: &str) -> &str {
    match server {
        "netpoll" => "netpoll ws://",
        "netpoll-wss" => "netpoll wss",
        other => short(other),
    }
}

/// A permessage-deflate scenario's server as its tables name it.
fn deflate_label(server: &str) -> &str {
    match server {
        "netpoll-deflate" => "deflate",
        "netpoll-deflate-takeover" => "deflate takeover",
        other => other,
    }
}

/// The permessage-deflate tables (empty without those rows): echo throughput, server CPU per
/// message and bytes on the wire per message, each with its ratio to netpoll without
/// compression; latency and how busy the server was; idle memory; broadcast.
fn deflate_tables(doc: &Value) -> String {
    let mut md = String::new();
    let sc = "deflate_echo";
    let [plain, deflate, takeover] = DEFLATE_SERVERS;
    if rows(doc, sc).next().is_some() {
        md += &format!(
            "### permessage-deflate echo (JSON-like text): messages per second, server CPU per \
             message, bytes on the wire per message (one server thread)\n\n\
             netpoll without compression (its client offers none) runs beside netpoll with \
             permessage-deflate without context takeover (`ws_echo --deflate`, client \
             `--deflate`) and with context takeover and a {} KiB window (`--deflate-takeover \
             {TAKEOVER_BITS}` on both), in each configuration with the same client settings \
             (`--json`, 16 source addresses). Ratios are to netpoll without compression. Bytes \
             on the wire count both directions per echoed message, frame headers included, over \
             the whole run. The client compresses and inflates as much as the server, on the same \
             two cores, so messages/s is the pair's rate; server CPU per message is the server's \
             own cost. Every message is the same JSON-like text (bar its 8-byte timestamp), so \
             with context takeover each one refers back to the one before almost whole: the \
             takeover wire bytes are a best case.\n\n",
            (1u32 << TAKEOVER_BITS) / 1024
        );
        let head = |what: &str| {
            format!(
                "| conns | size | {what}: netpoll | {what}: deflate | {what}: deflate takeover \
                 | deflate / netpoll | takeover / netpoll |\n|---|---|---|---|---|---|---|\n"
            )
        };
        for (what, key, digits) in [
            ("messages/s", "msgs_per_sec", 0),
            ("server CPU µs/msg", "server_cpu_us_per_msg", 2),
            ("wire bytes/msg", "wire_bytes_per_msg", 0),
        ] {
            md += &head(what);
            for c in distinct(doc, sc, "conns") {
                for z in distinct(doc, sc, "size") {
                    let keys = [("conns", c), ("size", z)];
                    let v = |s: &str| metric(doc, sc, s, &keys, key);
                    md += &format!(
                        "| {} | {} | {} | {} | {} | {} | {} |\n",
                        group(c),
                        size_label(z),
                        cell(v(plain), digits),
                        cell(v(deflate), digits),
                        cell(v(takeover), digits),
                        ratio(v(deflate), v(plain)),
                        ratio(v(takeover), v(plain)),
                    );
                }
            }
            md += "\n";
        }
        md += "### permessage-deflate echo: latency p50 / p99 (ms), server busy (% of one core \
               over the window)\n\n";
        md += &latency_rows(doc, sc, &DEFLATE_SERVERS, deflate_label, false);
        md += "\n";
    }

    let sc = "deflate_idle";
    if rows(doc, sc).next().is_some() {
        md += "### Idle connections with permessage-deflate: server RSS growth per connection \
               (bytes), connection rate\n\n\
               Each connection sent one 1 KiB JSON-like message and had its echo before the RSS \
               was read (in all three rows), so with context takeover every connection's \
               histories hold that message, the one it received and the one it sent (about 1 KiB \
               each, not a full window: a connection that has sent and received 32 KiB holds up \
               to 2 x 32 KiB).\n\n";
        md += &idle_rows(doc, sc, &DEFLATE_SERVERS, deflate_label);
        md += "\n";
    }

    let sc = "deflate_broadcast";
    if rows(doc, sc).next().is_some() {
        md += "### Broadcast with permessage-deflate: 10 messages/s of 1 KiB JSON-like text to \
               every receiver (no context takeover: each message is compressed once for all)\n\n";
        let servers = [plain, deflate];
        md += &table_head(
            &["receivers"],
            servers
                .iter()
                .map(|s| format!("{} deliveries/s", deflate_label(s)))
                .chain(
                    servers
                        .iter()
                        .map(|s| format!("{} p50/p99 ms", deflate_label(s))),
                )
                .chain(
                    servers
                        .iter()
                        .map(|s| format!("{} CPU µs/delivery", deflate_label(s))),
                )
                .chain(
                    servers
                        .iter()
                        .map(|s| format!("{} wire B/delivery", deflate_label(s))),
                ),
        );
        for r in distinct(doc, sc, "receivers") {
            let keys = [("receivers", r)];
            let v = |s: &str, k: &str| metric(doc, sc, s, &keys, k);
            md += &format!("| {} |", group(r));
            for s in servers {
                md += &format!(" {} |", cell(v(s, "deliveries_per_sec"), 0));
            }
            for s in servers {
                let ms = |k: &str| v(s, k).map(|us| us / 1000.0);
                md += &format!(
                    " {} / {} |",
                    cell(ms("lat_p50_us"), 2),
                    cell(ms("lat_p99_us"), 2)
                );
            }
            for s in servers {
                md += &format!(" {} |", cell(v(s, "server_cpu_us_per_delivery"), 2));
            }
            for s in servers {
                md += &format!(" {} |", cell(v(s, "wire_bytes_per_delivery"), 0));
            }
            md += "\n";
        }
        md += "\n";
    }
    md
}

/// `DIR/deflate_summary.md`: the permessage-deflate tables alone, under the summary's first
/// line (as `docs/bench/wss_summary.md` holds the wss tables); nothing without those rows.
fn write_deflate_summary(doc: &Value, dir: &Path) {
    let tables = deflate_tables(doc);
    if tables.is_empty() {
        return;
    }
    let mut md = summary_head(doc, "permessage-deflate echo") + &tables;
    while md.ends_with("\n\n") {
        md.pop();
    }
    std::fs::create_dir_all(dir).expect("charts directory");
    std::fs::write(dir.join("deflate_summary.md"), md).expect("write deflate_summary.md");
}

// ---------------------------------------------------------------------------------------
// Charts

/// A server's line colour in the charts.
fn color(server: &str) -> RGBColor {
    match server {
        "netpoll" => RGBColor(214, 39, 40),
        "tokio-tungstenite" => RGBColor(31, 119, 180),
        "tokio-tungstenite-4k" => RGBColor(140, 86, 75),
        "fastwebsockets" => RGBColor(44, 160, 44),
        "tokio-websockets" => RGBColor(23, 190, 207),
        "sockudo-ws" => RGBColor(227, 119, 194),
        "netpoll-wss" => RGBColor(255, 127, 14),
        "tokio-tungstenite-wss" => RGBColor(148, 103, 189),
        _ => RGBColor(127, 127, 127),
    }
}

/// One panel: a line per server of `y(server, x)` over the categorical `xs` (servers without a
/// value, e.g. peers added after a results file was written, are left out of it and its legend).
#[allow(clippy::too_many_arguments)]
fn panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    servers: &[&str],
    title: &str,
    xs: &[u64],
    x_desc: &str,
    y_desc: &str,
    log_y: bool,
    y: &dyn Fn(&str, u64) -> Option<f64>,
) where
    DB::ErrorType: 'static,
{
    let servers: Vec<&str> = servers
        .iter()
        .copied()
        .filter(|s| xs.iter().any(|&x| y(s, x).is_some()))
        .collect();
    let servers = &servers[..];
    let values: Vec<f64> = servers
        .iter()
        .flat_map(|s| xs.iter().filter_map(|&x| y(s, x)))
        .collect();
    if values.is_empty() {
        return;
    }
    let max = values.iter().cloned().fold(0.0, f64::max);
    let min = values.iter().cloned().fold(f64::INFINITY, f64::min);
    // Headroom above the highest point for the legend in the upper right corner: the share of
    // a 360-pixel-high panel's plot area (about 270 pixels) that its box takes, about 16.5
    // pixels a line plus its padding, and a margin (1.43x the highest value with four servers,
    // 1.7x with six, on a linear scale).
    let legend = ((16.5 * servers.len() as f64 + 12.0) / 270.0 + 0.02).min(0.6);
    let n = xs.len();
    let xs_owned = xs.to_vec();
    let label = move |i: &f64| {
        let k = i.round();
        if (i - k).abs() < 0.01 && k >= 0.0 && (k as usize) < xs_owned.len() {
            group(xs_owned[k as usize])
        } else {
            String::new()
        }
    };
    let mut builder = ChartBuilder::on(area);
    builder
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(64);
    let x_range = -0.3f64..(n as f64 - 0.7);
    if log_y {
        // The same share of the plot's height on the log scale.
        let low = min * 0.7;
        let high = max * (max / low).powf(legend / (1.0 - legend)).max(1.5);
        let mut chart = builder
            .build_cartesian_2d(x_range, (low..high).log_scale())
            .expect("chart");
        chart
            .configure_mesh()
            .x_labels(n)
            .x_label_formatter(&label)
            .y_label_formatter(&|v| group(v.round() as u64))
            .x_desc(x_desc)
            .y_desc(y_desc)
            .disable_x_mesh()
            .draw()
            .expect("mesh");
        lines(&mut chart, servers, xs, y);
    } else {
        let mut chart = builder
            .build_cartesian_2d(x_range, 0.0..max / (1.0 - legend))
            .expect("chart");
        chart
            .configure_mesh()
            .x_labels(n)
            .x_label_formatter(&label)
            .y_label_formatter(&|v| {
                if *v >= 10_000.0 {
                    format!("{}k", group((v / 1000.0).round() as u64))
                } else if *v >= 10.0 {
                    group(v.round() as u64)
                } else {
                    format!("{v:.1}")
                }
            })
            .x_desc(x_desc)
            .y_desc(y_desc)
            .disable_x_mesh()
            .draw()
            .expect("mesh");
        lines(&mut chart, servers, xs, y);
    }
}

fn lines<'a, DB: DrawingBackend + 'a, Y: plotters::coord::ranged1d::Ranged<ValueType = f64>>(
    chart: &mut ChartContext<'a, DB, Cartesian2d<plotters::coord::types::RangedCoordf64, Y>>,
    servers: &[&str],
    xs: &[u64],
    y: &dyn Fn(&str, u64) -> Option<f64>,
) where
    DB::ErrorType: 'static,
{
    for s in servers {
        let color = color(s);
        let points: Vec<(f64, f64)> = xs
            .iter()
            .enumerate()
            .filter_map(|(k, &x)| y(s, x).map(|v| (k as f64, v)))
            .collect();
        chart
            .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))
            .expect("line")
            .label(*s)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
            });
        chart
            .draw_series(
                points
                    .into_iter()
                    .map(|p| Circle::new(p, 3, color.filled())),
            )
            .expect("points");
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.3))
        .position(SeriesLabelPosition::UpperRight)
        .draw()
        .expect("legend");
}

/// A chart of one panel written to `dir/name`.
#[allow(clippy::too_many_arguments)]
fn single_chart(
    dir: &Path,
    servers: &[&str],
    name: &str,
    title: &str,
    xs: &[u64],
    x_desc: &str,
    y_desc: &str,
    log_y: bool,
    y: &dyn Fn(&str, u64) -> Option<f64>,
) {
    let path = dir.join(name);
    let root = SVGBackend::new(&path, (560, 360)).into_drawing_area();
    root.fill(&WHITE).unwrap();
    panel(&root, servers, title, xs, x_desc, y_desc, log_y, y);
    root.present().expect("write chart");
}

/// A chart with one panel per message size, side by side, written to `dir/name`.
#[allow(clippy::too_many_arguments)]
fn per_size_chart(
    dir: &Path,
    servers: &[&str],
    name: &str,
    sizes: &[u64],
    conns: &[u64],
    title: &dyn Fn(u64) -> String,
    y_desc: &str,
    log_y: bool,
    y: &dyn Fn(&str, u64, u64) -> Option<f64>,
) {
    let path = dir.join(name);
    let panels = sizes.len().max(1);
    let root = SVGBackend::new(&path, (420 * panels as u32, 360)).into_drawing_area();
    root.fill(&WHITE).unwrap();
    for (area, &z) in root.split_evenly((1, panels)).iter().zip(sizes) {
        panel(
            area,
            servers,
            &title(z),
            conns,
            "connections",
            y_desc,
            log_y,
            &|s, c| y(s, c, z),
        );
    }
    root.present().expect("write chart");
}

fn draw_charts(doc: &Value, dir: &Path) {
    std::fs::create_dir_all(dir).expect("charts directory");
    // A chart is drawn only from scenarios in the results (a run with `--only` leaves the
    // others' charts as they were).
    let conns = distinct(doc, "echo", "conns");
    let sizes = distinct(doc, "echo", "size");

    if !conns.is_empty() {
        per_size_chart(
            dir,
            &WS_SERVERS,
            "echo_throughput.svg",
            &sizes,
            &conns,
            &|z| format!("echo {} messages", size_label(z)),
            "messages/s",
            false,
            &|s, c, z| metric(doc, "echo", s, &[("conns", c), ("size", z)], "msgs_per_sec"),
        );
        per_size_chart(
            dir,
            &WS_SERVERS,
            "echo_latency_p99.svg",
            &sizes,
            &conns,
            &|z| format!("echo p99 latency, {}", size_label(z)),
            "ms (log)",
            true,
            &|s, c, z| {
                metric(doc, "echo", s, &[("conns", c), ("size", z)], "lat_p99_us")
                    .map(|us| us / 1000.0)
            },
        );
    }

    // Scaling: server CPU per message vs connections (smallest size).
    if let Some(&z) = sizes.first() {
        single_chart(
            dir,
            &WS_SERVERS,
            "cpu_per_message.svg",
            &format!("server CPU per message, {} echo", size_label(z)),
            &conns,
            "connections",
            "µs per message",
            false,
            &|s, c| {
                let keys = [("conns", c), ("size", z)];
                metric(doc, "echo", s, &keys, "server_cpu_us_per_msg")
            },
        );
    }
    let idle = distinct(doc, "idle", "conns");
    if !idle.is_empty() {
        single_chart(
            dir,
            &WS_SERVERS,
            "memory_per_connection.svg",
            "server memory per idle WebSocket connection",
            &idle,
            "idle connections",
            "bytes (log)",
            true,
            &|s, c| metric(doc, "idle", s, &[("conns", c)], "bytes_per_conn"),
        );
    }
    let receivers = distinct(doc, "broadcast", "receivers");
    if !receivers.is_empty() {
        single_chart(
            dir,
            &WS_SERVERS,
            "broadcast_latency_p99.svg",
            "broadcast delivery latency p99",
            &receivers,
            "receivers",
            "ms (log)",
            true,
            &|s, r| {
                metric(doc, "broadcast", s, &[("receivers", r)], "lat_p99_us").map(|us| us / 1000.0)
            },
        );
    }

    let wss_conns = distinct(doc, "wss_echo", "conns");
    if !wss_conns.is_empty() {
        per_size_chart(
            dir,
            &WSS_SERVERS,
            "wss_echo_throughput.svg",
            &distinct(doc, "wss_echo", "size"),
            &wss_conns,
            &|z| format!("wss echo {} messages (netpoll: ws://)", size_label(z)),
            "messages/s",
            false,
            &|s, c, z| {
                metric(
                    doc,
                    "wss_echo",
                    s,
                    &[("conns", c), ("size", z)],
                    "msgs_per_sec",
                )
            },
        );
    }
    let wss_idle = distinct(doc, "wss_idle", "conns");
    if !wss_idle.is_empty() {
        single_chart(
            dir,
            &WSS_SERVERS,
            "wss_memory_per_connection.svg",
            "server memory per idle wss connection (netpoll: ws://)",
            &wss_idle,
            "idle connections",
            "bytes (log)",
            true,
            &|s, c| metric(doc, "wss_idle", s, &[("conns", c)], "bytes_per_conn"),
        );
    }
}
