//! SIGTERM starts the graceful shutdown of an engine that asked for it. Its own test binary:
//! the handlers it installs stay for the rest of the process.

mod common;

use std::io::Read;
use std::time::{Duration, Instant};

use common::*;
use netpoll::{CloseReason, Engine};

#[test]
fn sigterm_shuts_the_engine_down_gracefully() {
    let (engine, addr, rx) = start(Engine::builder().pollers(1), Mode::Echo);
    let mut c = client(addr);
    next_open(&rx);
    engine.shutdown_on_signals(Duration::from_secs(5)).unwrap();
    let raiser = std::thread::spawn(|| {
        std::thread::sleep(Duration::from_millis(100));
        signal_hook::low_level::raise(signal_hook::consts::SIGTERM).unwrap();
    });
    let t0 = Instant::now();
    let stats = engine.wait();
    raiser.join().unwrap();
    assert!(t0.elapsed() < Duration::from_secs(5));
    assert_eq!(stats.closed(CloseReason::Shutdown), 1);
    let mut rest = Vec::new();
    assert_eq!(c.read_to_end(&mut rest).unwrap(), 0, "a clean FIN");
}
