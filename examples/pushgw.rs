//! A market-data push gateway: a producer thread publishes ticks by symbol, WebSocket clients
//! subscribe to the symbols they want, slow clients miss ticks and are told how many, `/stats`
//! serves Prometheus metrics, heartbeats find dead clients, and Ctrl-C shuts down gracefully.
//!
//! ```text
//! cargo run --release --example pushgw -- --addr 127.0.0.1:9002 --symbols 50 --rate 20000
//! ```
//!
//! Protocol on `ws://ADDR/ws` (text):
//! - client: `sub S07`, `unsub S07` (at most 64 subscriptions per connection);
//! - server: `{"ok":"sub","sym":"S07"}` (nothing of a symbol follows its `unsub` answer),
//!   ticks `{"sym":"S07","seq":12,"px":100.25}` with one sequence per symbol, and
//!   `{"gap":"S07","missed":3}` before the next tick of a symbol whose ticks a slow client
//!   missed, `{"error":"..."}` for a bad request.
//!
//! `GET /stats`: the engine's, the WebSocket layer's and every topic's counters in the
//! Prometheus text format.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use netpoll::Engine;
use netpoll::ws::{
    Accept, HttpResponse, Message, Request, Topics, Upgrade, WsConn, WsEngine, WsHandle, WsHandler,
    WsServer,
};

/// Most symbols one connection may subscribe to.
const MAX_SUBSCRIPTIONS: u16 = 64;

#[derive(Debug, Clone)]
struct Options {
    addr: String,
    symbols: usize,
    /// Ticks per second over all symbols.
    rate: u64,
    pollers: usize,
    /// Per-connection outbound limit: what a slow client may fall behind by before it misses
    /// ticks.
    max_outbound: usize,
    /// SO_SNDBUF per connection (`None`: the kernel's, which on Linux grows to megabytes, all
    /// of it ticks a slow client will read late).
    send_buffer: Option<usize>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            addr: "127.0.0.1:9002".into(),
            symbols: 50,
            rate: 20_000,
            pollers: 2,
            max_outbound: 256 * 1024,
            send_buffer: None,
        }
    }
}

/// Symbol `i`'s name: `S00`, `S01`, ...
fn symbol(i: usize) -> String {
    format!("S{i:02}")
}

struct Gateway {
    topics: Topics,
    engine: WsHandle<Gateway>,
    symbols: usize,
}

impl Gateway {
    fn metrics(&self) -> String {
        let mut page = String::new();
        self.engine.stats().write_prometheus(&mut page, "pushgw");
        self.engine
            .ws_stats()
            .write_prometheus(&mut page, "pushgw_ws");
        self.topics.write_prometheus(&mut page, "pushgw");
        page
    }

    fn known(&self, sym: &str) -> bool {
        sym.strip_prefix('S')
            .and_then(|n| n.parse::<usize>().ok())
            .is_some_and(|n| n < self.symbols && symbol(n) == sym)
    }
}

impl WsHandler for Gateway {
    /// How many symbols the connection subscribed to.
    type State = u16;

    fn on_request(&mut self, req: &Request<'_>) -> Upgrade<u16> {
        match req.path() {
            "/ws" => Accept::new(0).into(),
            "/stats" if !req.is_upgrade() => Upgrade::Respond(
                HttpResponse::new(200)
                    .header("Content-Type", "text/plain; version=0.0.4")
                    .body(self.metrics()),
            ),
            _ => Upgrade::not_found(),
        }
    }

    fn on_message(&mut self, conn: &WsConn, subs: &mut u16, msg: Message<'_>) {
        let Message::Text(text) = msg else {
            let _ = conn.send_text(r#"{"error":"text requests only"}"#);
            return;
        };
        let reply = match text.split_once(' ') {
            Some((op @ ("sub" | "unsub"), sym)) if self.known(sym) => {
                let done = if op == "sub" {
                    *subs < MAX_SUBSCRIPTIONS && self.topics.subscribe(conn, sym)
                } else {
                    self.topics.unsubscribe(conn, sym)
                };
                match (done, op) {
                    (true, "sub") => *subs += 1,
                    (true, _) => *subs -= 1,
                    _ => {}
                }
                if done {
                    format!(r#"{{"ok":"{op}","sym":"{sym}"}}"#)
                } else {
                    format!(r#"{{"error":"cannot {op} {sym}"}}"#)
                }
            }
            Some(("sub" | "unsub", _)) => r#"{"error":"unknown symbol"}"#.to_string(),
            _ => r#"{"error":"send sub SYM or unsub SYM"}"#.to_string(),
        };
        let _ = conn.send_text(&reply);
    }
}

/// The running gateway: its engine and its producer.
struct Running {
    server: WsEngine<Gateway>,
    stop: Arc<AtomicBool>,
    producer: JoinHandle<u64>,
}

impl Running {
    /// Shuts down: the producer stops, every client gets 1001; returns the final stats.
    #[cfg(test)]
    fn stop(self, timeout: Duration) -> netpoll::Stats {
        self.server.handle().shutdown(timeout);
        self.wait()
    }

    /// Waits for a shutdown started elsewhere (a signal), then stops the producer.
    fn wait(self) -> netpoll::Stats {
        let stats = self.server.wait();
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.producer.join();
        stats
    }
}

fn start(opts: &Options) -> Running {
    let topics = Topics::with_missed_notice(|conn, sym, n| {
        let _ = conn.send_text(&format!(r#"{{"gap":"{sym}","missed":{n}}}"#));
    });
    let mut engine = Engine::builder()
        .listen(opts.addr.clone())
        .pollers(opts.pollers)
        .max_outbound_bytes(opts.max_outbound)
        .write_timeout(Some(Duration::from_secs(10)));
    if let Some(n) = opts.send_buffer {
        engine = engine.send_buffer_size(n);
    }
    let symbols = opts.symbols;
    let t = topics.clone();
    let server = WsServer::builder()
        .max_message_size(1024)
        .idle_timeout(Some(Duration::from_secs(30)))
        .pong_timeout(Duration::from_secs(10))
        .start(engine, |engine| Gateway {
            topics: t.clone(),
            engine: engine.clone(),
            symbols,
        })
        .unwrap_or_else(|e| panic!("cannot start: {e}"));
    let stop = Arc::new(AtomicBool::new(false));
    let producer = {
        let (stop, rate) = (stop.clone(), opts.rate);
        std::thread::Builder::new()
            .name("pushgw-producer".into())
            .spawn(move || produce(&topics, symbols, rate, &stop))
            .expect("producer thread")
    };
    Running {
        server,
        stop,
        producer,
    }
}

/// Publishes `rate` ticks a second, round robin over the symbols, each with its symbol's next
/// sequence number, until `stop`. Returns how many it published.
fn produce(topics: &Topics, symbols: usize, rate: u64, stop: &AtomicBool) -> u64 {
    let names: Vec<String> = (0..symbols).map(symbol).collect();
    let mut seq = vec![0u64; symbols];
    let mut line = String::with_capacity(64);
    let t0 = Instant::now();
    let mut sent = 0u64;
    while !stop.load(Ordering::Relaxed) {
        // Catch up with the clock, then sleep a millisecond.
        let due = t0.elapsed().as_micros() as u64 * rate / 1_000_000;
        while sent < due {
            let i = (sent % symbols as u64) as usize;
            line.clear();
            let px = 100.0 + (seq[i] % 1000) as f64 / 100.0;
            let _ = write!(
                line,
                r#"{{"sym":"{}","seq":{},"px":{px:.2}}}"#,
                names[i], seq[i]
            );
            topics.publish(&names[i], Message::Text(&line));
            seq[i] += 1;
            sent += 1;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    sent
}

fn main() {
    let mut opts = Options::default();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let v = args.next().unwrap_or_else(|| panic!("{a} needs a value"));
        match a.as_str() {
            "--addr" => opts.addr = v,
            "--symbols" => opts.symbols = v.parse().expect("--symbols N"),
            "--rate" => opts.rate = v.parse().expect("--rate N"),
            "--pollers" => opts.pollers = v.parse().expect("--pollers N"),
            "--max-outbound" => opts.max_outbound = v.parse().expect("--max-outbound BYTES"),
            "--send-buffer" => opts.send_buffer = Some(v.parse().expect("--send-buffer BYTES")),
            other => panic!("unknown flag {other}"),
        }
    }
    assert!((1..=100).contains(&opts.symbols), "--symbols 1..=100");
    let running = start(&opts);
    let addr = running.server.local_addrs()[0];
    println!("listening on {addr}");
    println!("ticks on ws://{addr}/ws (send \"sub S00\"), metrics on http://{addr}/stats");
    running
        .server
        .shutdown_on_signals(Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("cannot watch for signals: {e}"));
    let stats = running.wait();
    println!("stopped: {stats}");
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::io::{Read, Write};
    use std::net::{SocketAddr, TcpStream};

    type Client = tungstenite::WebSocket<TcpStream>;

    fn serve(opts: Options) -> (Running, SocketAddr) {
        let running = start(&Options {
            addr: "127.0.0.1:0".into(),
            ..opts
        });
        let addr = running.server.local_addrs()[0];
        (running, addr)
    }

    /// A client; `small` gives it a 4 KiB receive buffer, so that a slow reader's backlog
    /// stays in the gateway's queue instead of the kernel's.
    fn client(addr: SocketAddr, small: bool) -> Client {
        let socket =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        if small {
            socket.set_recv_buffer_size(4096).unwrap();
        }
        socket.connect(&addr.into()).unwrap();
        let stream: TcpStream = socket.into();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        tungstenite::client::client(format!("ws://{addr}/ws"), stream)
            .expect("upgrade")
            .0
    }

    fn json(ws: &mut Client) -> serde_json::Value {
        match ws.read().expect("a message") {
            tungstenite::Message::Text(t) => serde_json::from_str(&t).expect("JSON"),
            other => panic!("expected text, got {other:?}"),
        }
    }

    fn subscribe(ws: &mut Client, syms: &[String]) {
        for s in syms {
            ws.send(tungstenite::Message::text(format!("sub {s}")))
                .unwrap();
        }
    }

    /// What one client saw per symbol: ticks, announced gaps, and whether every skipped
    /// sequence number was announced.
    #[derive(Default, Debug)]
    struct Seen {
        ticks: u64,
        gaps: u64,
        last: Option<u64>,
        announced: u64,
    }

    /// Reads for `run`, sleeping `pause` after each message; panics on a sequence that goes
    /// back or skips more or less than the gap announced before it.
    fn watch(mut ws: Client, run: Duration, pause: Duration) -> (Client, HashMap<String, Seen>) {
        let mut seen: HashMap<String, Seen> = HashMap::new();
        let t0 = Instant::now();
        while t0.elapsed() < run {
            let v = json(&mut ws);
            if let Some(sym) = v["gap"].as_str() {
                let s = seen.entry(sym.to_string()).or_default();
                let n = v["missed"].as_u64().unwrap();
                assert!(n > 0);
                s.announced += n;
                s.gaps += n;
            } else if let (Some(sym), Some(seq)) = (v["sym"].as_str(), v["seq"].as_u64()) {
                let s = seen.entry(sym.to_string()).or_default();
                if let Some(last) = s.last {
                    assert!(seq > last, "{sym}: {seq} after {last}");
                    assert_eq!(
                        seq - last - 1,
                        s.announced,
                        "{sym}: {seq} after {last} with {} announced",
                        s.announced
                    );
                }
                s.announced = 0;
                s.last = Some(seq);
                s.ticks += 1;
            } else {
                assert!(v.get("ok").is_some(), "unexpected {v}");
            }
            if !pause.is_zero() {
                std::thread::sleep(pause);
            }
        }
        (ws, seen)
    }

    #[test]
    fn ticks_arrive_in_order_and_every_gap_is_announced_then_shutdown_says_1001() {
        let (gw, addr) = serve(Options {
            symbols: 20,
            rate: 20_000,
            max_outbound: 32 * 1024,
            send_buffer: Some(4096),
            ..Options::default()
        });
        let run = Duration::from_millis(1500);
        let mut readers = Vec::new();
        for c in 0..8 {
            let mut ws = client(addr, false);
            let syms: Vec<String> = (0..3).map(|k| symbol((c * 3 + k) % 20)).collect();
            subscribe(&mut ws, &syms);
            readers.push(std::thread::spawn(move || watch(ws, run, Duration::ZERO)));
        }
        // One slow reader on five symbols (5,000 ticks/s, at most 2,000 read): it falls behind
        // by more than the outbound limit and misses ticks.
        let mut slow = client(addr, true);
        subscribe(&mut slow, &(0..5).map(symbol).collect::<Vec<_>>());
        let slow = std::thread::spawn(move || watch(slow, run, Duration::from_micros(500)));

        let mut clients = Vec::new();
        for r in readers {
            let (ws, seen) = r.join().unwrap();
            assert_eq!(seen.len(), 3, "{seen:?}");
            assert!(seen.values().all(|s| s.ticks > 100), "{seen:?}");
            clients.push(ws);
        }
        let (slow_ws, seen) = slow.join().unwrap();
        let gaps: u64 = seen.values().map(|s| s.gaps).sum();
        assert!(gaps > 0, "the slow reader missed nothing: {seen:?}");
        clients.push(slow_ws);

        // The metrics page.
        let mut http = TcpStream::connect(addr).unwrap();
        http.write_all(b"GET /stats HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let mut page = String::new();
        http.read_to_string(&mut page).unwrap();
        drop(http); // else the server lingers for our FIN until the shutdown deadline
        assert!(page.starts_with("HTTP/1.1 200 OK\r\n"), "{page}");
        // Nine WebSockets and this request's own connection.
        assert!(page.contains("pushgw_open_connections 10\n"), "{page}");
        assert!(page.contains("pushgw_ws_upgrades_total 9\n"), "{page}");
        // S00: clients 0 and 6, and the slow one.
        assert!(page.contains("pushgw_topic_subscribers{topic=\"S00\"} 3\n"));
        let dropped: u64 = page
            .lines()
            .filter(|l| l.starts_with("pushgw_topic_dropped_messages_total{"))
            .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
            .sum();
        assert!(dropped >= gaps, "{dropped} dropped, {gaps} announced");

        // Graceful shutdown: every client hears 1001.
        let closer = std::thread::spawn(move || gw.stop(Duration::from_secs(5)));
        for mut ws in clients {
            let code = loop {
                match ws.read() {
                    Ok(tungstenite::Message::Close(Some(f))) => break u16::from(f.code),
                    Ok(_) => continue,
                    Err(e) => panic!("no close frame: {e}"),
                }
            };
            assert_eq!(code, 1001);
            let _ = ws.flush();
        }
        let stats = closer.join().unwrap();
        assert_eq!(stats.closed(netpoll::CloseReason::Shutdown), 9, "{stats}");
    }

    #[test]
    fn bad_requests_are_answered_and_limits_hold() {
        let (gw, addr) = serve(Options {
            symbols: 100,
            rate: 0,
            ..Options::default()
        });
        let mut ws = client(addr, false);
        for (req, want) in [
            ("sub S00", r#"{"ok":"sub","sym":"S00"}"#),
            ("sub S00", r#"{"error":"cannot sub S00"}"#),
            ("sub S100", r#"{"error":"unknown symbol"}"#),
            ("sub S7", r#"{"error":"unknown symbol"}"#),
            ("hello", r#"{"error":"send sub SYM or unsub SYM"}"#),
            ("unsub S00", r#"{"ok":"unsub","sym":"S00"}"#),
            ("unsub S00", r#"{"error":"cannot unsub S00"}"#),
        ] {
            ws.send(tungstenite::Message::text(req)).unwrap();
            assert_eq!(
                json(&mut ws),
                serde_json::from_str::<serde_json::Value>(want).unwrap()
            );
        }
        // At most 64 subscriptions per connection.
        for i in 0..65 {
            ws.send(tungstenite::Message::text(format!("sub {}", symbol(i))))
                .unwrap();
            let v = json(&mut ws);
            assert_eq!(v.get("ok").is_some(), i < 64, "{i}: {v}");
        }
        gw.stop(Duration::from_secs(1));
    }
}
