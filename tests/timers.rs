//! User timers: `after` / `every` on the engine and on connections fire once (or every
//! period), in deadline order, never early, never after cancel, never after their connection
//! closed, and on the owning poller's thread.

mod common;

use std::io::Read;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use common::*;
use netpoll::{CloseReason, Engine, EngineBuilder};

const TICK: Duration = Duration::from_millis(10);

fn builder(pollers: usize) -> EngineBuilder {
    Engine::builder().pollers(pollers).timer_tick(TICK)
}

fn engine(pollers: usize) -> Engine {
    let (engine, _, _) = start(builder(pollers), Mode::Sink);
    engine
}

#[test]
fn after_fires_once_not_early_and_within_a_tick_plus_margin() {
    let engine = engine(2);
    let (tx, rx) = mpsc::channel();
    let t0 = Instant::now();
    let delay = Duration::from_millis(150);
    let handle = engine.after(delay, move || tx.send(Instant::now()).unwrap());
    assert!(handle.is_active());
    let fired = rx.recv_timeout(WAIT).expect("timer fired");
    let took = fired - t0;
    assert!(took >= delay, "fired early: {took:?}");
    assert!(
        took <= delay + TICK + Duration::from_millis(300),
        "late: {took:?}"
    );
    assert!(
        rx.recv_timeout(Duration::from_millis(300)).is_err(),
        "fired twice"
    );
    assert!(eventually(Duration::from_secs(1), || !handle.is_active()));
    assert!(!handle.is_cancelled());
}

#[test]
fn timers_fire_in_deadline_order_and_ties_in_creation_order() {
    let engine = engine(1);
    let order = Arc::new(Mutex::new(Vec::new()));
    // Scrambled delays, with ties (same delay, created in index order).
    let delays_ms = [90u64, 30, 60, 30, 120, 10, 60, 30, 0, 90];
    for (i, &d) in delays_ms.iter().enumerate() {
        let order = order.clone();
        engine.after(Duration::from_millis(d), move || {
            order.lock().unwrap().push(i)
        });
    }
    assert!(eventually(Duration::from_secs(3), || order
        .lock()
        .unwrap()
        .len()
        == delays_ms.len()));
    let mut want: Vec<usize> = (0..delays_ms.len()).collect();
    want.sort_by_key(|&i| (delays_ms[i], i));
    assert_eq!(*order.lock().unwrap(), want);
}

#[test]
fn cancelled_timers_never_fire() {
    let engine = engine(2);
    let fired = Arc::new(Mutex::new(Vec::new()));
    let mut handles = Vec::new();
    for i in 0..40 {
        let fired = fired.clone();
        handles.push(engine.after(Duration::from_millis(100), move || {
            fired.lock().unwrap().push(i)
        }));
    }
    for h in handles.iter().step_by(2) {
        h.cancel();
        assert!(h.is_cancelled() && !h.is_active());
    }
    // A timer cancelled from inside an earlier timer's callback does not fire either.
    let victim_fired = Arc::new(AtomicUsize::new(0));
    let v = victim_fired.clone();
    let victim = engine.after(Duration::from_millis(300), move || {
        v.fetch_add(1, Ordering::SeqCst);
    });
    let victim2 = victim.clone();
    engine.after(Duration::from_millis(50), move || victim2.cancel());
    std::thread::sleep(Duration::from_millis(600));
    let mut got = fired.lock().unwrap().clone();
    got.sort_unstable();
    assert_eq!(got, (1..40).step_by(2).collect::<Vec<_>>());
    assert_eq!(victim_fired.load(Ordering::SeqCst), 0);
    assert!(!victim.is_active());
}

#[test]
fn every_repeats_at_its_period_until_cancelled() {
    let engine = engine(1);
    let times = Arc::new(Mutex::new(Vec::new()));
    let t = times.clone();
    let period = Duration::from_millis(50);
    let t0 = Instant::now();
    let handle = engine.every(period, move || t.lock().unwrap().push(Instant::now()));
    std::thread::sleep(Duration::from_millis(530));
    handle.cancel();
    let n_at_cancel = times.lock().unwrap().len();
    std::thread::sleep(Duration::from_millis(200));
    let times = times.lock().unwrap().clone();
    assert_eq!(times.len(), n_at_cancel, "ran after cancel");
    // About 10 runs in 530 ms; scheduling noise may lose one or two, never add extra.
    assert!((7..=10).contains(&times.len()), "{} runs", times.len());
    for (k, at) in times.iter().enumerate() {
        let due = period * (k as u32 + 1);
        assert!(*at - t0 >= due, "run {k} early: {:?} < {due:?}", *at - t0);
    }
}

#[test]
fn conn_timer_runs_on_the_owning_poller_and_its_writes_reach_the_peer() {
    let (engine, addr, rx) = start(builder(2), Mode::Sink);
    let mut peer = client(addr);
    let conn = next_open(&rx);
    let (tx, thread_rx) = mpsc::channel();
    let poller = conn.poller_index();
    conn.after(Duration::from_millis(50), move |c| {
        tx.send(std::thread::current().name().map(str::to_string))
            .unwrap();
        c.write_slice(b"tick").unwrap();
    });
    let name = thread_rx.recv_timeout(WAIT).unwrap().unwrap();
    assert_eq!(name, format!("netpoll-poller-{poller}"));
    let mut buf = [0u8; 4];
    peer.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"tick");
    drop(engine);
}

#[test]
fn conn_timers_stop_when_the_connection_closes() {
    let (_engine, addr, rx) = start(builder(1), Mode::Sink);
    let peer = client(addr);
    let conn = next_open(&rx);
    let runs = Arc::new(AtomicUsize::new(0));
    let r = runs.clone();
    let ticker = conn.every(Duration::from_millis(20), move |_| {
        r.fetch_add(1, Ordering::SeqCst);
    });
    let r = runs.clone();
    let later = conn.after(Duration::from_millis(400), move |_| {
        r.fetch_add(1000, Ordering::SeqCst);
    });
    assert!(eventually(Duration::from_secs(2), || runs
        .load(Ordering::SeqCst)
        >= 3));
    drop(peer);
    assert_eq!(wait_close(&rx, conn.id()), CloseReason::PeerClosed);
    let at_close = runs.load(Ordering::SeqCst);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        runs.load(Ordering::SeqCst),
        at_close,
        "a timer ran after its connection closed"
    );
    assert!(!ticker.is_active() && !later.is_active());
    assert!(!ticker.is_cancelled(), "closed, not cancelled by the user");
}

#[test]
fn a_panicking_conn_timer_aborts_only_its_connection() {
    let (engine, addr, rx) = start(builder(1), Mode::Echo);
    let _victim_peer = client(addr);
    let victim = next_open(&rx);
    let mut other_peer = client(addr);
    let _other = next_open(&rx);
    victim.after(Duration::from_millis(20), |_| {
        panic!("timer bug (expected in this test)")
    });
    // An engine timer that panics is dropped; the poller goes on.
    engine.after(Duration::from_millis(20), || {
        panic!("engine timer bug (expected)")
    });
    assert_eq!(wait_close(&rx, victim.id()), CloseReason::HandlerPanic);
    assert_eq!(
        echo_roundtrip(&mut other_peer, b"still served"),
        b"still served"
    );
    let (tx, fired) = mpsc::channel();
    engine.after(Duration::ZERO, move || tx.send(()).unwrap());
    fired
        .recv_timeout(WAIT)
        .expect("timers still run after a panic");
}

#[test]
fn shutdown_drops_pending_timers() {
    let engine = engine(2);
    let ran = Arc::new(AtomicUsize::new(0));
    let r = ran.clone();
    let once = engine.after(Duration::from_secs(3600), move || {
        r.fetch_add(1, Ordering::SeqCst);
    });
    let every = engine.every(Duration::from_secs(3600), || {});
    assert!(once.is_active() && every.is_active());
    let t0 = Instant::now();
    engine.shutdown(Duration::from_secs(5));
    assert!(
        t0.elapsed() < Duration::from_secs(2),
        "pending timers must not hold the pollers"
    );
    assert!(!once.is_active() && !every.is_active());
    assert_eq!(ran.load(Ordering::SeqCst), 0);
}
