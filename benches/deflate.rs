//! permessage-deflate micro-benchmarks: the CPU one message costs to compress and to inflate
//! in each mode, on JSON-like text.
//!
//! `cargo bench --bench deflate`. `reset` is the default mode (no context takeover: a pooled
//! stream reset after every message); `history_N` is context takeover with a window of 2^N
//! bytes as netpoll does it (a pooled stream reset and primed with the connection's history
//! for every message); `stream_15` is a zlib stream kept whole for the connection (what a
//! peer with a dedicated compressor does), for comparison.

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use netpoll::ws::deflate::{Deflater, History, Inflater};

/// JSON-like text: `n` messages of about `len` bytes that share keys and values.
fn messages(n: usize, len: usize) -> Vec<Vec<u8>> {
    let mut x = 0x2545_f491_u32;
    (0..n)
        .map(|_| {
            let mut m = Vec::with_capacity(len + 64);
            while m.len() < len {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                m.extend_from_slice(
                    format!(
                        r#"{{"sym":"S{:02}","bid":{}.{:02},"qty":{}}},"#,
                        x % 40,
                        100 + x % 7,
                        x % 100,
                        x % 1000
                    )
                    .as_bytes(),
                );
            }
            m.truncate(len);
            m
        })
        .collect()
}

fn compress(c: &mut Criterion) {
    for len in [1024usize, 16 * 1024] {
        let msgs = messages(64, len);
        let mut g = c.benchmark_group(format!("deflate/compress_{len}B"));
        g.throughput(Throughput::Elements(1));
        let mut out = Vec::with_capacity(2 * len);
        g.bench_function("reset", |b| {
            let mut d = Deflater::new(15);
            let mut i = 0;
            b.iter(|| {
                out.clear();
                d.compress(&msgs[i % msgs.len()], &mut out);
                d.reset();
                i += 1;
                black_box(out.len())
            })
        });
        for bits in [10u8, 12, 15] {
            g.bench_with_input(BenchmarkId::new("history", bits), &bits, |b, &bits| {
                let mut d = Deflater::new(bits);
                let mut h = History::new(bits);
                let mut i = 0;
                b.iter(|| {
                    out.clear();
                    let msg = &msgs[i % msgs.len()];
                    d.compress_after(&h, msg, &mut out);
                    h.record(msg);
                    i += 1;
                    black_box(out.len())
                })
            });
        }
        g.bench_function("stream_15", |b| {
            let mut d = Deflater::new(15);
            let mut i = 0;
            b.iter(|| {
                out.clear();
                d.compress(&msgs[i % msgs.len()], &mut out);
                i += 1;
                black_box(out.len())
            })
        });
        g.finish();
    }
}

fn inflate(c: &mut Criterion) {
    for len in [1024usize, 16 * 1024] {
        let msgs = messages(64, len);
        let mut g = c.benchmark_group(format!("deflate/inflate_{len}B"));
        g.throughput(Throughput::Elements(1));
        // Each mode inflates what the matching sender made, in order, round after round.
        let reset: Vec<Vec<u8>> = msgs
            .iter()
            .map(|m| {
                let mut out = Vec::new();
                let mut d = Deflater::new(15);
                d.compress(m, &mut out);
                out
            })
            .collect();
        let mut out = Vec::with_capacity(2 * len);
        g.bench_function("reset", |b| {
            let mut inf = Inflater::new();
            let mut i = 0;
            b.iter(|| {
                out.clear();
                inf.inflate(&reset[i % reset.len()], true, &mut out, 1 << 20)
                    .unwrap();
                inf.reset();
                i += 1;
                black_box(out.len())
            })
        });
        // With context takeover the peer keeps one stream: a long sequence made beforehand
        // is inflated in order; where it starts again, so does the receiving context.
        let seq: Vec<Vec<u8>> = (0..4096).map(|i| msgs[i % msgs.len()].clone()).collect();
        for bits in [10u8, 12, 15] {
            let mut peer = Deflater::new(bits);
            let wire: Vec<Vec<u8>> = seq
                .iter()
                .map(|m| {
                    let mut w = Vec::new();
                    peer.compress(m, &mut w);
                    w
                })
                .collect();
            g.bench_with_input(BenchmarkId::new("history", bits), &bits, |b, &bits| {
                let mut inf = Inflater::new();
                let mut h = History::new(bits);
                let mut i = 0;
                b.iter(|| {
                    if i == wire.len() {
                        (i, h) = (0, History::new(bits));
                    }
                    out.clear();
                    inf.inflate_after(&mut h, &wire[i], &mut out, 1 << 20)
                        .unwrap();
                    i += 1;
                    black_box(out.len())
                })
            });
            if bits == 15 {
                g.bench_function("stream_15", |b| {
                    let mut inf = Inflater::new();
                    let mut i = 0;
                    b.iter(|| {
                        if i == wire.len() {
                            (i, inf) = (0, Inflater::new());
                        }
                        out.clear();
                        inf.inflate(&wire[i], true, &mut out, 1 << 20).unwrap();
                        i += 1;
                        black_box(out.len())
                    })
                });
            }
        }
        g.finish();
    }
}

criterion_group!(benches, compress, inflate);
criterion_main!(benches);
