//! WebSocket frame micro-benchmarks: decoding (parse + unmask + UTF-8 check), header encoding,
//! and unmasking alone.
//!
//! `cargo bench --bench ws_frame`. Inputs are client frames (masked), as a server receives them;
//! every iteration decodes a fresh copy because decoding unmasks in place.

use std::hint::black_box;

use criterion::{BatchSize, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use netpoll::ws::frame::{
    Data, Decoder, Event, Flow, Limits, MAX_HEADER, OpCode, Role, apply_mask, encode_frame,
    encode_header,
};

const MASK: [u8; 4] = [0x12, 0x34, 0x56, 0x78];

/// `count` masked frames of `size` bytes each, back to back, as one read would return them.
fn frames(kind: OpCode, size: usize, count: usize) -> Vec<u8> {
    let payload: Vec<u8> = (0..size).map(|i| b'a' + (i % 26) as u8).collect();
    let mut out = Vec::new();
    for _ in 0..count {
        encode_frame(&mut out, kind, true, &payload, Some(MASK));
    }
    out
}

fn decode(c: &mut Criterion) {
    let mut g = c.benchmark_group("ws_frame/decode");
    let limits = Limits::default();
    for (kind, name) in [
        (OpCode::Data(Data::Binary), "binary"),
        (OpCode::Data(Data::Text), "text"),
    ] {
        for size in [64usize, 1024, 16 * 1024] {
            // About 64 KiB of frames per batch, like one full read buffer.
            let count = (64 * 1024 / (size + 8)).max(1);
            let input = frames(kind, size, count);
            g.throughput(Throughput::Elements(count as u64));
            g.bench_function(BenchmarkId::new(name, size), |b| {
                let mut decoder = Decoder::new();
                b.iter_batched_ref(
                    || input.clone(),
                    |buf| {
                        let mut seen = 0usize;
                        let d = decoder
                            .decode(buf, Role::Server, &limits, |ev| {
                                if let Event::Binary(p) = ev {
                                    seen += p.len();
                                } else if let Event::Text(t) = ev {
                                    seen += t.len();
                                }
                                Flow::Continue
                            })
                            .unwrap();
                        assert_eq!(d.frames, count);
                        black_box(seen)
                    },
                    BatchSize::SmallInput,
                )
            });
        }
    }
    g.finish();
}

fn encode(c: &mut Criterion) {
    let mut g = c.benchmark_group("ws_frame/encode_header");
    for size in [64usize, 1024, 70_000] {
        g.throughput(Throughput::Elements(1));
        g.bench_function(BenchmarkId::from_parameter(size), |b| {
            let mut head = [0u8; MAX_HEADER];
            b.iter(|| {
                black_box(encode_header(
                    &mut head,
                    OpCode::Data(Data::Binary),
                    true,
                    black_box(size),
                    None,
                ))
            })
        });
    }
    g.finish();
}

fn unmask(c: &mut Criterion) {
    let mut g = c.benchmark_group("ws_frame/unmask");
    for size in [64usize, 1024, 16 * 1024] {
        let mut buf = vec![7u8; size];
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_function(BenchmarkId::from_parameter(size), |b| {
            b.iter(|| apply_mask(black_box(&mut buf), MASK, 1))
        });
    }
    g.finish();
}

criterion_group!(benches, decode, encode, unmask);
criterion_main!(benches);
