//! WebSocket frame micro-benchmarks: decoding (parse + unmask + UTF-8 check), header encoding,
//! and unmasking alone.
//!
//! `cargo bench --bench ws_frame`. Inputs are client frames (masked), as a server receives them;
//! every iteration decodes a fresh copy because decoding unmasks in place. `decode_text` is
//! the decoder on realistic text (ASCII JSON, and JSON mixing 1- to 4-byte characters): whole
//! frames back to back, a 1 MiB message arriving in 64 KiB reads, and a 64 KiB message in 16
//! fragments that split characters (issue 18).

use std::hint::black_box;

use criterion::{BatchSize, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use netpoll::ws::frame::{
    Data, Decoder, Event, Flow, Limits, MAX_HEADER, OpCode, Role, apply_mask, encode_frame,
    encode_header,
};

mod common;

const MASK: [u8; 4] = [0x12, 0x34, 0x56, 0x78];
const TEXT: OpCode = OpCode::Data(Data::Text);

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

/// The total length of the text messages the decoder hands out for `input` in reads of `read`
/// bytes (`usize::MAX`: one read), each wholly consumed (the frames there are whole, or big
/// enough to be assembled).
fn decode_reads(decoder: &mut Decoder, input: &mut [u8], read: usize, limits: &Limits) -> usize {
    let mut seen = 0;
    for chunk in input.chunks_mut(read) {
        let d = decoder
            .decode(chunk, Role::Server, limits, |ev| {
                if let Event::Text(t) = ev {
                    seen += t.len();
                }
                Flow::Continue
            })
            .unwrap();
        assert_eq!(d.consumed, chunk.len());
    }
    seen
}

fn decode_text(c: &mut Criterion) {
    let mut g = c.benchmark_group("ws_frame/decode_text");
    let limits = Limits::default();
    // Whole frames back to back, about 64 KiB of them per batch.
    let whole = [16usize, 64, 1024, 16 << 10]
        .map(|n| ("json", n, common::json(n)))
        .into_iter()
        .chain([1024usize, 64 << 10].map(|n| ("mixed", n, common::mixed(n))));
    for (name, size, payload) in whole {
        let count = (64 * 1024 / (size + 8)).max(1);
        let mut input = Vec::new();
        for _ in 0..count {
            encode_frame(&mut input, TEXT, true, &payload, Some(MASK));
        }
        g.throughput(Throughput::Bytes((count * size) as u64));
        g.bench_function(BenchmarkId::new(name, size), |b| {
            let mut decoder = Decoder::new();
            b.iter_batched_ref(
                || input.clone(),
                |buf| {
                    let seen = decode_reads(&mut decoder, buf, usize::MAX, &limits);
                    assert_eq!(seen, count * size);
                    black_box(seen)
                },
                BatchSize::SmallInput,
            )
        });
    }
    // One 1 MiB message arriving in 64 KiB reads: validated piece by piece as it is assembled.
    let big = common::json(1 << 20);
    let mut input = Vec::new();
    encode_frame(&mut input, TEXT, true, &big, Some(MASK));
    g.throughput(Throughput::Bytes(big.len() as u64));
    g.bench_function("json_1MiB_in_64KiB_reads", |b| {
        let mut decoder = Decoder::new();
        b.iter_batched_ref(
            || input.clone(),
            |buf| {
                let seen = decode_reads(&mut decoder, buf, 64 << 10, &limits);
                assert_eq!(seen, 1 << 20);
            },
            BatchSize::LargeInput,
        )
    });
    // A 64 KiB message in 16 fragments of 4 KiB, cut through multi-byte characters.
    let text = common::mixed(64 << 10);
    let mut input = Vec::new();
    for (i, part) in text.chunks(4096).enumerate() {
        let kind = if i == 0 {
            TEXT
        } else {
            OpCode::Data(Data::Continue)
        };
        encode_frame(&mut input, kind, i == 15, part, Some(MASK));
    }
    assert!(text.chunks(4096).any(|p| std::str::from_utf8(p).is_err()));
    g.throughput(Throughput::Bytes(text.len() as u64));
    g.bench_function("mixed_64KiB_in_16_fragments", |b| {
        let mut decoder = Decoder::new();
        b.iter_batched_ref(
            || input.clone(),
            |buf| {
                let seen = decode_reads(&mut decoder, buf, usize::MAX, &limits);
                assert_eq!(seen, 64 << 10);
            },
            BatchSize::SmallInput,
        )
    });
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

criterion_group!(benches, decode, decode_text, encode, unmask);
criterion_main!(benches);
