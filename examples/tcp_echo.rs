//! TCP echo server on netpoll: every byte received is written back.
//!
//! ```text
//! cargo run --release --example tcp_echo -- --addr 127.0.0.1:9000 [--pollers N] [--reuse-port]
//!     [--write-timeout SECS] [--idle-timeout SECS]
//! ```
//!
//! Prints `listening on ADDR` once ready, then a stats line every 10 s if `--stats` is given.
//! Serves until killed.

use std::time::Duration;

use netpoll::{AcceptMode, Conn, Engine, Handler};

struct Echo;

impl Handler for Echo {
    type State = ();

    fn on_open(&mut self, _conn: &Conn) {}

    fn on_data(&mut self, conn: &Conn, _state: &mut (), data: &mut [u8]) -> usize {
        // Inside a callback the write is corked: one writev per connection per loop iteration.
        // If the peer does not read, the outbound limit refuses the write; an echo server then
        // drops the connection rather than the bytes.
        if conn.write_slice(data).is_err() {
            conn.abort();
        }
        data.len()
    }
}

/// A `SECS` flag value: fractional seconds, 0 meaning off.
fn seconds_flag(value: Option<String>, flag: &str) -> Option<f64> {
    let v: f64 = value
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{flag} needs SECS"));
    (v > 0.0).then_some(v)
}

fn main() {
    let mut addr = "127.0.0.1:9000".to_string();
    let mut pollers = None;
    let mut reuse_port = false;
    let mut stats = false;
    let mut write_timeout = Some(30.0);
    let mut idle_timeout = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--addr" => addr = args.next().expect("--addr needs a value"),
            "--pollers" => {
                pollers = Some(
                    args.next()
                        .and_then(|v| v.parse().ok())
                        .expect("--pollers needs a number"),
                )
            }
            "--reuse-port" => reuse_port = true,
            "--stats" => stats = true,
            "--write-timeout" => write_timeout = seconds_flag(args.next(), &a),
            "--idle-timeout" => idle_timeout = seconds_flag(args.next(), &a),
            "-h" | "--help" => {
                println!(
                    "usage: tcp_echo [--addr HOST:PORT] [--pollers N] [--reuse-port] [--stats]"
                );
                return;
            }
            other => {
                eprintln!("unknown argument {other:?} (try --help)");
                std::process::exit(2);
            }
        }
    }
    let mut builder = Engine::builder()
        .listen(addr)
        .max_connections(100_000)
        .write_timeout(write_timeout.map(Duration::from_secs_f64))
        .read_timeout(idle_timeout.map(Duration::from_secs_f64));
    if let Some(n) = pollers {
        builder = builder.pollers(n);
    }
    if reuse_port {
        builder = builder.accept_mode(AcceptMode::ReusePort);
    }
    let engine = match builder.start(|_| Echo) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("tcp_echo: {e}");
            std::process::exit(1);
        }
    };
    println!("listening on {}", engine.local_addrs()[0]);
    // Serve until the process is killed; the OS frees every socket.
    loop {
        std::thread::sleep(Duration::from_secs(10));
        if stats {
            eprintln!("{:?}", engine.stats());
        }
    }
}
