//! Outbound queue micro-benchmarks: queueing, writev batching and draining.
//!
//! `cargo bench --bench outbound --features internals`. The sink is an in-memory writer that takes a fixed number
//! of bytes per call, standing in for a socket whose buffer has room for that much.

use std::hint::black_box;
use std::io::{self, IoSlice, Write};

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use netpoll::internals::OutboundBuffer;

/// Accepts up to `cap` bytes per call and discards them.
struct Sink {
    cap: usize,
}

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        Ok(buf.len().min(self.cap))
    }
    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        Ok(total.min(self.cap))
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn push(c: &mut Criterion) {
    let mut g = c.benchmark_group("outbound/push");
    let msg = Bytes::from(vec![7u8; 64]);
    g.throughput(Throughput::Elements(1000));
    g.bench_function("bytes_64B_x1000", |b| {
        let mut q = OutboundBuffer::new();
        b.iter(|| {
            for _ in 0..1000 {
                q.push(msg.clone());
            }
            q.consume(q.len());
            black_box(q.len())
        })
    });
    g.bench_function("slice_64B_x1000_coalesced", |b| {
        let mut q = OutboundBuffer::new();
        let s = [7u8; 64];
        b.iter(|| {
            for _ in 0..1000 {
                q.push_slice(black_box(&s));
            }
            q.consume(q.len());
            black_box(q.len())
        })
    });
    g.finish();
}

fn writev_batching(c: &mut Criterion) {
    let mut g = c.benchmark_group("outbound/drain");
    for &chunks in &[1usize, 16, 256] {
        let msg = Bytes::from(vec![1u8; 512]);
        g.throughput(Throughput::Bytes((chunks * 512) as u64));
        g.bench_with_input(
            BenchmarkId::new("writev_512B_chunks", chunks),
            &chunks,
            |b, &n| {
                let mut q = OutboundBuffer::new();
                let mut sink = Sink { cap: usize::MAX };
                b.iter(|| {
                    for _ in 0..n {
                        q.push(msg.clone());
                    }
                    let mut calls = 0;
                    while !q.is_empty() {
                        q.write_to(&mut sink).unwrap();
                        calls += 1;
                    }
                    black_box(calls)
                })
            },
        );
    }
    g.bench_function("partial_writes_4KiB_per_call_of_64KiB", |b| {
        let msg = Bytes::from(vec![1u8; 1024]);
        let mut q = OutboundBuffer::new();
        let mut sink = Sink { cap: 4096 };
        b.iter(|| {
            for _ in 0..64 {
                q.push(msg.clone());
            }
            while !q.is_empty() {
                q.write_to(&mut sink).unwrap();
            }
            q.release();
        })
    });
    g.finish();
}

criterion_group!(benches, push, writev_batching);
criterion_main!(benches);
