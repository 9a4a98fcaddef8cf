//! Randomized property tests over the same checks the fuzz targets run, so the stable
//! toolchain exercises them in every `cargo test`: WebSocket frame decoding (server
//! and client roles, split anywhere, whole or streamed), the HTTP upgrade parser, the client's
//! response check, and the outbound queue. Inputs mix well-formed frames and requests with
//! random corruption, so both the accepting and the rejecting paths are covered.

use crate::fuzz::{self, Rng};
use crate::ws::frame::{Control, Data, OpCode, encode_frame};

const CASES: u64 = 3000;

/// A plausible stream of frames: valid ones of every kind, sometimes corrupted.
fn frame_stream(rng: &mut Rng, masked: bool) -> Vec<u8> {
    let mut out = vec![rng.next() as u8]; // split step for the check
    for _ in 0..rng.below(8) + 1 {
        let kind = [
            OpCode::Data(Data::Text),
            OpCode::Data(Data::Binary),
            OpCode::Data(Data::Continue),
            OpCode::Control(Control::Ping),
            OpCode::Control(Control::Pong),
            OpCode::Control(Control::Close),
        ][rng.below(6) as usize];
        let len = match rng.below(10) {
            0 => 126 + rng.below(70_000) as usize,
            1..=3 => rng.below(126) as usize,
            _ => rng.below(3000) as usize,
        };
        let payload = match (kind, rng.below(3)) {
            (OpCode::Data(Data::Text) | OpCode::Data(Data::Continue), 0 | 1) => "héllo wörld €😀 "
                .repeat(len / 20 + 1)
                .into_bytes()
                .into_iter()
                .take(len)
                .collect(),
            (OpCode::Control(Control::Close), 0) => {
                let mut p = [1000u16, 1001, 4000, 1005, 999][rng.below(5) as usize]
                    .to_be_bytes()
                    .to_vec();
                p.extend_from_slice(b"bye");
                p
            }
            _ => rng.bytes(len),
        };
        let mask = masked.then(|| [rng.next() as u8, 1, 2, 3]);
        let fin = rng.below(4) != 0;
        encode_frame(&mut out, kind, fin, &payload, mask);
    }
    // Corrupt a few bytes now and then.
    if rng.below(3) == 0 {
        for _ in 0..rng.below(4) + 1 {
            let i = rng.below(out.len() as u64) as usize;
            out[i] = rng.next() as u8;
        }
    }
    out
}

#[test]
fn frame_decoding_is_split_and_mode_independent_and_never_panics() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for case in 0..CASES {
        let server = frame_stream(&mut rng, true);
        let client = frame_stream(&mut rng, false);
        let n = rng.below(400) as usize;
        let random = rng.bytes(n);
        for (input, client_role) in [(&server, false), (&client, true), (&random, false)] {
            let r = std::panic::catch_unwind(|| fuzz::ws_frames(input, client_role));
            assert!(r.is_ok(), "case {case}: input {input:?}");
        }
    }
}

#[test]
fn http_parsers_never_panic() {
    let mut rng = Rng(42);
    let good = "GET /chat?x=1 HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
        Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
        Sec-WebSocket-Protocol: a, chat\r\n\r\n";
    let resp = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
        Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\nSec-WebSocket-Protocol: chat\r\n\r\n";
    for _ in 0..CASES {
        for base in [good, resp] {
            let mut input = base.as_bytes().to_vec();
            let keep =
                rng.below(input.len() as u64 + 1) as usize + rng.below(2) as usize * input.len();
            input.truncate(keep);
            for _ in 0..rng.below(4) {
                if !input.is_empty() {
                    let i = rng.below(input.len() as u64) as usize;
                    input[i] = rng.next() as u8;
                }
            }
            fuzz::http_request(&input);
            fuzz::client_response(&input);
        }
        let n = rng.below(300) as usize;
        let random = rng.bytes(n);
        fuzz::http_request(&random);
        fuzz::client_response(&random);
    }
}

#[test]
fn outbound_queue_preserves_bytes_under_random_operations() {
    let mut rng = Rng(7);
    for _ in 0..CASES / 3 {
        let n = 2 * (rng.below(60) as usize + 1);
        let ops = rng.bytes(n);
        fuzz::outbound(&ops);
    }
}

#[test]
fn deflate_never_panics_and_never_passes_its_limit() {
    let mut rng = Rng(7);
    let offers = [
        "permessage-deflate; client_max_window_bits",
        "permessage-deflate; server_max_window_bits=10; client_no_context_takeover",
        "x-foo, permessage-deflate; server_no_context_takeover",
    ];
    for case in 0..CASES {
        // Valid compressed data (of compressible and random bytes), mutated a little, or
        // random bytes, or a mutated header.
        let mut input = vec![rng.next() as u8];
        match case % 3 {
            0 => {
                let plain: Vec<u8> = if rng.below(2) == 0 {
                    (0..rng.below(20_000)).map(|i| (i % 7) as u8).collect()
                } else {
                    let n = rng.below(3000) as usize;
                    rng.bytes(n)
                };
                crate::ws::deflate::Deflater::new(15).compress(&plain, &mut input);
            }
            1 => {
                let n = rng.below(500) as usize;
                input.extend(rng.bytes(n));
            }
            _ => input.extend_from_slice(offers[case as usize % offers.len()].as_bytes()),
        }
        for _ in 0..rng.below(3) {
            let i = rng.below(input.len() as u64) as usize;
            input[i] = rng.next() as u8;
        }
        fuzz::deflate(&input);
    }
}

#[test]
fn the_bus_readers_never_panic_and_agree_with_their_prefixes() {
    let resp: [&[u8]; 5] = [
        b"*3\r\n$7\r\nmessage\r\n$4\r\nroom\r\n$5\r\nhello\r\n",
        b"+OK\r\n",
        b"-ERR nope\r\n",
        b":12\r\n",
        b"*3\r\n$9\r\nsubscribe\r\n$1\r\na\r\n:1\r\n",
    ];
    let nats: [&[u8]; 5] = [
        b"MSG room 1 5\r\nhello\r\n",
        b"MSG a.b 7 inbox 3\r\nabc\r\n",
        b"PING\r\n",
        b"-ERR 'Authorization Violation'\r\n",
        b"INFO {\"server_id\":\"x\"}\r\n",
    ];
    let mut rng = Rng(11);
    for (valid, check) in [(resp, fuzz::resp as fn(&[u8])), (nats, fuzz::nats)] {
        for case in 0..CASES {
            // A valid item mutated a little, or random bytes.
            let mut input = match case % 2 {
                0 => valid[case as usize % valid.len()].to_vec(),
                _ => {
                    let n = rng.below(64) as usize;
                    rng.bytes(n)
                }
            };
            for _ in 0..rng.below(3) {
                if input.is_empty() {
                    break;
                }
                let i = rng.below(input.len() as u64) as usize;
                input[i] = rng.next() as u8;
            }
            check(&input);
        }
    }
}
