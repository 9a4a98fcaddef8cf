//! UTF-8 validation of text payloads (issue 18): `std::str::from_utf8` against simdutf8's
//! `basic` (fast path: valid or not) and `compat` (std's error, with the position an
//! incremental check needs), side by side on the payloads a WebSocket server sees.
//!
//! `cargo bench --bench utf8`. `json` is ASCII JSON (market-data-like records); `mixed` is a
//! chat-like JSON whose text mixes ASCII, Cyrillic (2 bytes), CJK (3 bytes) and emoji (4 bytes).

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};

mod common;
use common::{json, mixed};

fn validate(c: &mut Criterion) {
    let cases: Vec<(&str, usize, Vec<u8>)> = [16usize, 32, 64, 128, 256, 1024, 16 << 10, 1 << 20]
        .into_iter()
        .map(|n| ("json", n, json(n)))
        .chain([256usize, 1024, 64 << 10].map(|n| ("mixed", n, mixed(n))))
        .collect();
    for (name, size, payload) in &cases {
        assert_eq!(payload.len(), *size);
        assert!(std::str::from_utf8(payload).is_ok());
        let mut g = c.benchmark_group(format!("utf8/{name}"));
        g.throughput(Throughput::Bytes(*size as u64));
        g.bench_with_input(BenchmarkId::new("std", size), payload, |b, p| {
            b.iter(|| std::str::from_utf8(black_box(p)).is_ok())
        });
        g.bench_with_input(BenchmarkId::new("simd_basic", size), payload, |b, p| {
            b.iter(|| simdutf8::basic::from_utf8(black_box(p)).is_ok())
        });
        g.bench_with_input(BenchmarkId::new("simd_compat", size), payload, |b, p| {
            b.iter(|| simdutf8::compat::from_utf8(black_box(p)).is_ok())
        });
        g.finish();
    }
}

criterion_group!(benches, validate);
criterion_main!(benches);
