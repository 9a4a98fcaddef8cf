//! netpoll's tools (not part of the library): the soak run, the load clients, the peer servers
//! netpoll is benchmarked against, and the benchmark suite, as binaries in `src/bin`; scripts
//! for one-off measurements in `scripts/`.
//!
//! This library holds what they share: the load clients' connection set-up and reporting
//! ([`load`]), and the peer servers' command line and tokio runtime ([`Flags`]).

pub mod load;

use std::collections::HashMap;

/// `--addr HOST:PORT` (default `default_addr`), `--threads N`, and any of `extra` flags (each
/// taking a value), from the command line.
pub struct Flags {
    pub addr: String,
    pub threads: Option<usize>,
    pub extra: HashMap<String, String>,
}

impl Flags {
    pub fn parse(default_addr: &str, extra: &[&str]) -> Flags {
        let mut f = Flags {
            addr: default_addr.to_string(),
            threads: None,
            extra: HashMap::new(),
        };
        let mut args = std::env::args().skip(1);
        while let Some(a) = args.next() {
            let v = args.next().unwrap_or_else(|| panic!("{a} needs a value"));
            match a.as_str() {
                "--addr" => f.addr = v,
                "--threads" => f.threads = Some(v.parse().expect("--threads N")),
                other if extra.contains(&other) => {
                    f.extra.insert(other.to_string(), v);
                }
                other => panic!("unknown flag {other}"),
            }
        }
        f
    }

    /// A multi-thread tokio runtime with `--threads` workers (default: all cores).
    pub fn runtime(&self) -> tokio::runtime::Runtime {
        let mut rt = tokio::runtime::Builder::new_multi_thread();
        if let Some(n) = self.threads {
            rt.worker_threads(n);
        }
        rt.enable_all().build().expect("tokio runtime")
    }
}

/// A process's resident set size (`VmRSS` from `/proc/PID/status`), in KiB.
///
/// # Panics
/// If the process is gone or the line is missing.
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("process running");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}
