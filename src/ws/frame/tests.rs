//! The frame codec's unit tests.

use super::decode::{Decoder, parse_header};
use super::*;

const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

const TEXT: OpCode = OpCode::Data(Data::Text);
const BINARY: OpCode = OpCode::Data(Data::Binary);
const CONTINUE: OpCode = OpCode::Data(Data::Continue);
const CLOSE: OpCode = OpCode::Control(Control::Close);
const PING: OpCode = OpCode::Control(Control::Ping);
const PONG: OpCode = OpCode::Control(Control::Pong);

/// The close code of an error, as a number.
trait Code {
    fn code(&self) -> u16;
}

impl Code for ProtocolError {
    fn code(&self) -> u16 {
        self.close_code().into()
    }
}

/// A client frame: header + masked payload.
fn frame(kind: OpCode, fin: bool, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    encode_frame(&mut v, kind, fin, payload, Some(MASK));
    v
}

use crate::fuzz::{Owned, owned, run_decoder};

/// Feeds `input` in pieces of `step` bytes, keeping unconsumed bytes like the engine does.
fn feed(input: &[u8], step: usize, limits: &Limits) -> Result<Vec<Owned>, ProtocolError> {
    match run_decoder(input, step, Role::Server, false, limits) {
        (events, None) => Ok(events),
        (_, Some(e)) => Err(e),
    }
}

#[test]
fn mask_with_offsets_matches_bytewise_xor() {
    for len in 0..40 {
        for offset in 0..4 {
            let data: Vec<u8> = (0..len as u8).collect();
            let mut fast = data.clone();
            apply_mask(&mut fast, MASK, offset);
            let slow: Vec<u8> = data
                .iter()
                .enumerate()
                .map(|(i, b)| b ^ MASK[(i + offset) % 4])
                .collect();
            assert_eq!(fast, slow, "len {len} offset {offset}");
        }
    }
}

#[test]
fn messages_survive_any_split_of_the_input() {
    let big: Vec<u8> = (0..70_000u32).map(|i| (i % 251) as u8).collect();
    let mut input = frame(TEXT, true, "héllo".as_bytes());
    input.extend(frame(PING, true, b"p"));
    input.extend(frame(BINARY, false, &big[..30_000]));
    input.extend(frame(PONG, true, b""));
    input.extend(frame(CONTINUE, true, &big[30_000..]));
    input.extend(frame(BINARY, true, &big));
    input.extend(frame(TEXT, false, "ü".as_bytes()[..1].as_ref()));
    input.extend(frame(CONTINUE, true, &"ü".as_bytes()[1..]));
    input.extend(frame(CLOSE, true, &[0x03, 0xe8, b'o', b'k']));
    input.extend(frame(TEXT, true, b"after close: never decoded"));
    let want = vec![
        Owned::Text("héllo".into()),
        Owned::Ping(b"p".to_vec()),
        Owned::Pong(vec![]),
        Owned::Binary(big.clone()),
        Owned::Binary(big.clone()),
        Owned::Text("ü".into()),
        Owned::Close(Some(1000), "ok".into()),
    ];
    for step in [1, 2, 3, 7, 13, 100, 4096, 65536, input.len()] {
        assert_eq!(
            feed(&input, step, &Limits::default()).unwrap(),
            want,
            "step {step}"
        );
    }
}

fn error_of(input: &[u8], limits: &Limits) -> ProtocolError {
    for step in [1, 5, input.len()] {
        let e = feed(input, step, limits).expect_err("must fail");
        assert_eq!(e, feed(input, input.len(), limits).unwrap_err());
    }
    feed(input, input.len(), limits).unwrap_err()
}

#[test]
fn protocol_violations_get_the_right_close_code() {
    let l = Limits::default();
    let mut rsv = frame(TEXT, true, b"x");
    rsv[0] |= 0x40;
    assert_eq!(error_of(&rsv, &l).code(), 1002);
    let mut reserved_op = frame(TEXT, true, b"x");
    reserved_op[0] = (reserved_op[0] & 0xf0) | 0x3;
    assert_eq!(error_of(&reserved_op, &l).code(), 1002);
    let mut unmasked = frame(TEXT, true, b"x");
    unmasked[1] &= 0x7f;
    unmasked.drain(2..6);
    assert_eq!(error_of(&unmasked, &l).code(), 1002);
    assert_eq!(
        error_of(&frame(PING, false, b"x"), &l).code(),
        1002,
        "fragmented control"
    );
    assert_eq!(error_of(&frame(PING, true, &[0; 126]), &l).code(), 1002);
    assert_eq!(error_of(&frame(CONTINUE, true, b"x"), &l).code(), 1002);
    let mut two_starts = frame(TEXT, false, b"a");
    two_starts.extend(frame(TEXT, true, b"b"));
    assert_eq!(error_of(&two_starts, &l).code(), 1002);
    assert_eq!(error_of(&frame(TEXT, true, &[0xff, 0xfe]), &l).code(), 1007);
    assert_eq!(error_of(&frame(CLOSE, true, &[3]), &l).code(), 1002);
    for bad in [0u16, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000] {
        let f = frame(CLOSE, true, &bad.to_be_bytes());
        assert_eq!(error_of(&f, &l).code(), 1002, "code {bad}");
    }
    let f = frame(CLOSE, true, &[0x03, 0xe8, 0xff]);
    assert_eq!(error_of(&f, &l).code(), 1007);
}

#[test]
fn invalid_utf8_fails_fast_in_the_first_fragment() {
    // The first fragment is already invalid: the error comes before the rest arrives.
    let input = frame(TEXT, false, &[b'a', 0xc0, 0x80]);
    assert_eq!(
        feed(&input, input.len(), &Limits::default())
            .unwrap_err()
            .code(),
        1007
    );
    // A sequence split across fragments is fine.
    let mut ok = frame(TEXT, false, &[0xe2, 0x82]);
    ok.extend(frame(CONTINUE, true, &[0xac]));
    assert_eq!(
        feed(&ok, 1, &Limits::default()).unwrap(),
        vec![Owned::Text("€".into())]
    );
    // ... but not left incomplete at the end.
    let cut = frame(TEXT, true, &[0xe2, 0x82]);
    assert_eq!(feed(&cut, 1, &Limits::default()).unwrap_err().code(), 1007);
}

#[test]
fn limits_are_enforced_with_the_right_codes() {
    let l = Limits {
        max_frame_size: 100,
        max_message_size: 150,
        max_fragments: 3,
    };
    assert!(feed(&frame(BINARY, true, &[0; 100]), 7, &l).is_ok());
    assert_eq!(error_of(&frame(BINARY, true, &[0; 101]), &l).code(), 1009);
    let mut two = frame(BINARY, false, &[0; 100]);
    two.extend(frame(CONTINUE, true, &[0; 51]));
    assert_eq!(error_of(&two, &l).code(), 1009);
    let mut many = frame(BINARY, false, b"1");
    for _ in 0..3 {
        many.extend(frame(CONTINUE, false, b"1"));
    }
    assert_eq!(error_of(&many, &l).code(), 1008);
    // The limit is checked from the header, before any payload is buffered.
    let mut huge_head = frame(BINARY, true, b"");
    huge_head[1] = 0x80 | 127;
    huge_head.splice(2..2, (1u64 << 40).to_be_bytes());
    assert_eq!(
        feed(&huge_head, huge_head.len(), &l).unwrap_err().code(),
        1009
    );
}

#[test]
fn whole_frames_are_zero_copy_and_leave_no_buffer() {
    let mut d = Decoder::new();
    let mut input = frame(BINARY, true, &[9; 1000]);
    let start = input.as_ptr() as usize;
    let mut seen = 0;
    d.decode(&mut input, Role::Server, &Limits::default(), |e| {
        if let Event::Binary(b) = e {
            let at = b.as_ptr() as usize;
            assert!(at > start && at < start + 20, "payload borrowed in place");
            seen += b.len();
        }
        Flow::Continue
    })
    .unwrap();
    assert_eq!(seen, 1000);
    assert!(!d.in_progress());
    assert_eq!(std::mem::size_of::<Decoder>(), 8);
}

#[test]
fn client_role_rejects_masked_frames_and_reads_unmasked() {
    let mut d = Decoder::new();
    let mut masked = frame(TEXT, true, b"x");
    let e = d
        .decode(&mut masked, Role::Client, &Limits::default(), |_| {
            Flow::Continue
        })
        .unwrap_err();
    assert_eq!(e.code(), 1002);
    let mut head = [0u8; MAX_HEADER];
    let n = encode_header(&mut head, TEXT, true, 2, None);
    let mut plain = head[..n].to_vec();
    plain.extend_from_slice(b"ok");
    let mut got = String::new();
    Decoder::new()
        .decode(&mut plain, Role::Client, &Limits::default(), |e| {
            if let Event::Text(t) = e {
                got.push_str(t)
            }
            Flow::Continue
        })
        .unwrap();
    assert_eq!(got, "ok");
}

#[test]
fn header_encoding_covers_all_length_forms() {
    let mut out = [0u8; MAX_HEADER];
    assert_eq!(encode_header(&mut out, BINARY, true, 125, None), 2);
    assert_eq!(&out[..2], &[0x82, 125]);
    assert_eq!(encode_header(&mut out, TEXT, true, 126, None), 4);
    assert_eq!(&out[..4], &[0x81, 126, 0, 126]);
    assert_eq!(encode_header(&mut out, PING, true, 70_000, Some(MASK)), 14);
    assert_eq!(out[1], 0x80 | 127);
    let mut close = [0u8; MAX_CONTROL_PAYLOAD];
    let n = encode_close_payload(&mut close, CloseCode::Away, &"é".repeat(100));
    assert!(n <= 125 && std::str::from_utf8(&close[2..n]).is_ok());
}

/// Feeds `input` in pieces through `decode_fragments` and rebuilds the messages from the
/// fragments, checking first/last flags and that nothing gets buffered.
fn feed_streaming(input: &[u8], step: usize) -> Result<Vec<Owned>, ProtocolError> {
    let mut d = Decoder::new();
    let mut events = Vec::new();
    let mut current: Option<(bool, Vec<u8>)> = None;
    let mut kept: Vec<u8> = Vec::new();
    for piece in input.chunks(step) {
        kept.extend_from_slice(piece);
        let r = d.decode_fragments(&mut kept, Role::Server, &Limits::default(), |e| {
            match e {
                Event::Fragment {
                    text,
                    data,
                    first,
                    last,
                } => {
                    assert_eq!(first, current.is_none(), "first flag");
                    let (_, buf) = current.get_or_insert((text, Vec::new()));
                    buf.extend_from_slice(data);
                    if last {
                        let (text, buf) = current.take().unwrap();
                        events.push(if text {
                            Owned::Text(String::from_utf8(buf).unwrap())
                        } else {
                            Owned::Binary(buf)
                        });
                    }
                }
                other => events.push(owned(other)),
            }
            Flow::Continue
        })?;
        if let Some(a) = d.assembly() {
            assert_eq!(a.buf.capacity(), 0, "streaming buffers nothing");
        }
        kept.drain(..r.consumed);
        assert!(kept.len() <= 200, "only headers and control frames wait");
        if r.stopped {
            break;
        }
    }
    Ok(events)
}

#[test]
fn streaming_hands_out_pieces_that_rebuild_every_message() {
    let big: Vec<u8> = (0..200_000u32).map(|i| (i % 253) as u8).collect();
    let text = "aé€😀".repeat(5000);
    let mut input = frame(BINARY, true, &big);
    input.extend(frame(TEXT, false, &text.as_bytes()[..7]));
    input.extend(frame(PING, true, b"mid"));
    input.extend(frame(CONTINUE, false, &text.as_bytes()[7..7]));
    input.extend(frame(CONTINUE, true, &text.as_bytes()[7..]));
    input.extend(frame(TEXT, true, b""));
    input.extend(frame(BINARY, true, b"small"));
    let want = vec![
        Owned::Binary(big.clone()),
        Owned::Ping(b"mid".to_vec()),
        Owned::Text(text.clone()),
        Owned::Text(String::new()),
        Owned::Binary(b"small".to_vec()),
    ];
    for step in [1, 2, 3, 5, 64, 1000, 65536, input.len()] {
        assert_eq!(feed_streaming(&input, step).unwrap(), want, "step {step}");
    }
}

#[test]
fn streaming_validates_utf8_across_pieces() {
    // "€" split across two frames and many pieces is fine; a bad byte fails at once.
    let mut ok = frame(TEXT, false, &[0xe2]);
    ok.extend(frame(CONTINUE, true, &[0x82, 0xac]));
    assert_eq!(
        feed_streaming(&ok, 1).unwrap(),
        vec![Owned::Text("€".into())]
    );
    let bad = frame(TEXT, false, &[b'a', 0xe2, 0x28]);
    assert_eq!(feed_streaming(&bad, 1).unwrap_err().code(), 1007);
    let cut = frame(TEXT, true, &[b'a', 0xe2, 0x82]);
    assert_eq!(feed_streaming(&cut, 2).unwrap_err().code(), 1007);
}

/// The hand-written header codec agrees with tungstenite's on every input shape.
#[test]
fn header_codec_matches_tungstenite() {
    let mut rng = crate::fuzz::Rng(0x2545_f491_4f6c_dd1d);
    let mut next = || rng.next();
    for _ in 0..20_000 {
        // Random header bytes of random length, biased towards the length forms.
        let mut bytes: Vec<u8> = (0..(next() % 15) as usize).map(|_| next() as u8).collect();
        if bytes.len() > 1 && next() % 2 == 0 {
            bytes[1] = (bytes[1] & 0x80) | [125, 126, 127][(next() % 3) as usize];
        }
        let mut cursor = std::io::Cursor::new(&bytes[..]);
        let theirs = tungstenite::protocol::frame::FrameHeader::parse(&mut cursor);
        let ours = parse_header(&bytes);
        match (theirs, ours) {
            (Ok(Some((h, len))), Ok(Some((o, olen, at)))) => {
                assert_eq!(
                    (h, len, cursor.position() as usize),
                    (o, olen, at),
                    "{bytes:?}"
                );
            }
            (Ok(None), Ok(None)) | (Err(_), Err(_)) => {}
            // We reject a reserved opcode before the header is complete; they wait.
            (Ok(None), Err(e)) => assert!(matches!(bytes[0] & 0x0f, 3..=7 | 11..=15), "{e}"),
            (t, o) => panic!("{bytes:?}: tungstenite {t:?}, ours {o:?}"),
        }
    }
    for len in [0usize, 1, 125, 126, 127, 65_535, 65_536, 1 << 33] {
        for mask in [None, Some(MASK)] {
            for kind in [TEXT, BINARY, CONTINUE, PING] {
                for fin in [true, false] {
                    let mut ours = [0u8; MAX_HEADER];
                    let n = encode_header(&mut ours, kind, fin, len, mask);
                    let h = tungstenite::protocol::frame::FrameHeader {
                        is_final: fin,
                        rsv1: false,
                        rsv2: false,
                        rsv3: false,
                        opcode: kind,
                        mask,
                    };
                    let mut theirs = Vec::new();
                    h.format(len as u64, &mut theirs).unwrap();
                    assert_eq!(&ours[..n], &theirs[..], "len {len} {kind:?}");
                }
            }
        }
    }
}
