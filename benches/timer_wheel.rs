//! Timer wheel micro-benchmarks at 100k and 1M entries: insert, refresh and expire.
//!
//! `cargo bench --bench timer_wheel`. "refresh" is what the engine does when a write makes
//! progress or bytes arrive: a plain store of the new deadline (ms) in the connection, with no
//! wheel operation. Its cost is paid later, in "expire", when the entry's slot comes due and
//! the owner finds the deadline moved and re-inserts it; that bench measures a full wheel
//! rotation in which every entry was refreshed (so every entry is re-inserted once).

use std::hint::black_box;

use criterion::{BatchSize, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use netpoll::timer::TimerWheel;

const TICK_MS: u64 = 50;
/// Deadlines spread over 30 s, as with a 30 s write timeout.
const SPREAD_MS: u64 = 30_000;
const SIZES: [(usize, &str); 2] = [(100_000, "100k"), (1_000_000, "1M")];

/// xorshift64: cheap, deterministic pseudo-random numbers.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// A wheel holding `n` entries (connection indexes) and the deadlines they stand for.
fn filled(n: usize) -> (TimerWheel<u32>, Vec<u64>) {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut wheel = TimerWheel::new(TICK_MS);
    let mut deadlines = Vec::with_capacity(n);
    for i in 0..n {
        let d = 1 + rng.next() % SPREAD_MS;
        wheel.insert(d, i as u32);
        deadlines.push(d);
    }
    (wheel, deadlines)
}

fn insert(c: &mut Criterion) {
    let mut g = c.benchmark_group("timer_wheel/insert");
    g.sample_size(10);
    for (n, name) in SIZES {
        g.throughput(Throughput::Elements(n as u64));
        g.bench_function(BenchmarkId::from_parameter(name), |b| {
            b.iter_batched(
                || TimerWheel::new(TICK_MS),
                |mut wheel| {
                    let mut rng = Rng(42);
                    for i in 0..n {
                        wheel.insert(1 + rng.next() % SPREAD_MS, i as u32);
                    }
                    wheel
                },
                BatchSize::LargeInput,
            )
        });
    }
    g.finish();
}

fn refresh(c: &mut Criterion) {
    let mut g = c.benchmark_group("timer_wheel/refresh");
    const BATCH: u64 = 10_000;
    g.throughput(Throughput::Elements(BATCH));
    for (n, name) in SIZES {
        let (wheel, mut deadlines) = filled(n);
        let mut rng = Rng(7);
        let mut now = 0u64;
        g.bench_function(BenchmarkId::from_parameter(name), |b| {
            b.iter(|| {
                // Random connections make progress: each stores now + timeout.
                now += 1;
                for _ in 0..BATCH {
                    let i = (rng.next() % n as u64) as usize;
                    deadlines[i] = black_box(now + SPREAD_MS);
                }
            })
        });
        black_box((&wheel, &deadlines));
    }
    g.finish();
}

fn expire(c: &mut Criterion) {
    let mut g = c.benchmark_group("timer_wheel/expire_rotation");
    g.sample_size(10);
    for (n, name) in SIZES {
        g.throughput(Throughput::Elements(n as u64));
        g.bench_function(BenchmarkId::from_parameter(name), |b| {
            b.iter_batched(
                || {
                    let (wheel, mut deadlines) = filled(n);
                    // Every connection was refreshed after it was inserted.
                    for d in deadlines.iter_mut() {
                        *d += SPREAD_MS;
                    }
                    (wheel, deadlines, Vec::new())
                },
                |(mut wheel, deadlines, mut due)| {
                    // One pass over the 30 s the entries span, one tick at a time, doing what
                    // the poller does with each due key: fire it or re-insert it.
                    let mut fired = 0usize;
                    let mut now = 0;
                    while now + TICK_MS <= SPREAD_MS {
                        now += TICK_MS;
                        wheel.expire(now, &mut due);
                        for key in due.drain(..) {
                            let d = deadlines[key as usize];
                            if now >= d {
                                fired += 1;
                            } else {
                                wheel.insert(d, key);
                            }
                        }
                    }
                    assert_eq!(fired, 0, "every entry moved");
                    assert_eq!(wheel.len(), n);
                    (wheel, deadlines)
                },
                BatchSize::LargeInput,
            )
        });
    }
    g.finish();
}

criterion_group!(benches, insert, refresh, expire);
criterion_main!(benches);
