//! Frame encoding for sending: headers written apart from their payloads (so a payload is
//! never copied to prepend one), masking, close payloads.

use tungstenite::protocol::frame::coding::{CloseCode, OpCode};

use super::{MAX_CONTROL_PAYLOAD, MAX_HEADER};

/// XORs `buf` with `mask`, starting at byte `offset` of the mask pattern. Works 8 bytes at a
/// time in safe code.
///
/// ```
/// use netpoll::ws::frame::apply_mask;
///
/// let mask = [0x37, 0xfa, 0x21, 0x3d];
/// let mut hello = *b"Hello";
/// apply_mask(&mut hello, mask, 0);
/// assert_eq!(hello, [0x7f, 0x9f, 0x4d, 0x51, 0x58]); // the example of RFC 6455 §5.7
///
/// // A payload unmasked in pieces: each piece goes on where the mask pattern stopped.
/// let (mut a, mut b) = ([0x7f, 0x9f, 0x4d], [0x51, 0x58]);
/// apply_mask(&mut a, mask, 0);
/// apply_mask(&mut b, mask, 3);
/// assert_eq!([&a[..], &b[..]].concat(), b"Hello");
/// ```
pub fn apply_mask(buf: &mut [u8], mask: [u8; 4], offset: usize) {
    let m = [
        mask[offset & 3],
        mask[(offset + 1) & 3],
        mask[(offset + 2) & 3],
        mask[(offset + 3) & 3],
    ];
    let wide = u64::from_ne_bytes([m[0], m[1], m[2], m[3], m[0], m[1], m[2], m[3]]);
    let mut chunks = buf.chunks_exact_mut(8);
    for c in &mut chunks {
        let v = u64::from_ne_bytes((&*c).try_into().expect("8 bytes")) ^ wide;
        c.copy_from_slice(&v.to_ne_bytes());
    }
    // The remainder starts at a multiple of 8, so the pattern is aligned with `m` again.
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= m[i & 3];
    }
}

/// Appends a whole frame to `out`: the header and the payload, masked with `mask` if given
/// (a client's frame). For building frames in a buffer (raw clients, tests, benchmarks);
/// netpoll's own sends write the header and the payload separately instead.
///
/// ```
/// use netpoll::ws::frame::{Data, OpCode, encode_frame};
/// let mut out = Vec::new();
/// encode_frame(&mut out, OpCode::Data(Data::Text), true, b"Hi", None);
/// assert_eq!(out, [0x81, 2, b'H', b'i']);
/// encode_frame(&mut out, OpCode::Data(Data::Binary), true, b"Hi", Some([1, 2, 3, 4]));
/// assert_eq!(&out[4..], [0x82, 0x82, 1, 2, 3, 4, b'H' ^ 1, b'i' ^ 2]);
/// ```
pub fn encode_frame(
    out: &mut Vec<u8>,
    opcode: OpCode,
    fin: bool,
    payload: &[u8],
    mask: Option<[u8; 4]>,
) {
    let mut head = [0u8; MAX_HEADER];
    let n = encode_header(&mut head, opcode, fin, payload.len(), mask);
    out.extend_from_slice(&head[..n]);
    let start = out.len();
    out.extend_from_slice(payload);
    if let Some(m) = mask {
        apply_mask(&mut out[start..], m, 0);
    }
}

/// Encodes a frame header into `out` and returns its length (2 to 14 bytes). The payload is
/// sent separately, so it is never copied to prepend a header.
///
/// ```
/// use std::io::{IoSlice, Write};
/// use netpoll::ws::frame::{Data, MAX_HEADER, OpCode, encode_header};
///
/// let payload = vec![0u8; 1000];
/// let mut head = [0u8; MAX_HEADER];
/// let n = encode_header(&mut head, OpCode::Data(Data::Binary), true, payload.len(), None);
/// assert_eq!(&head[..n], [0x82, 126, 0x03, 0xe8]); // FIN + binary, 16-bit length 1000
///
/// // Header and payload go out together with one vectored write.
/// let mut socket = Vec::new(); // stands in for a TCP stream
/// socket.write_vectored(&[IoSlice::new(&head[..n]), IoSlice::new(&payload)])?;
/// assert_eq!(socket.len(), 4 + 1000);
/// # Ok::<(), std::io::Error>(())
/// ```
pub fn encode_header(
    out: &mut [u8; MAX_HEADER],
    opcode: OpCode,
    fin: bool,
    payload_len: usize,
    mask: Option<[u8; 4]>,
) -> usize {
    // Hand-written for the same reason as `parse_header` (tungstenite's `format` writes through
    // `io::Write`); a unit test checks it against tungstenite's output.
    let opcode: u8 = opcode.into();
    out[0] = if fin { 0x80 } else { 0 } | opcode;
    let masked = if mask.is_some() { 0x80 } else { 0 };
    let mut n = if payload_len < 126 {
        out[1] = masked | payload_len as u8;
        2
    } else if payload_len <= 0xffff {
        out[1] = masked | 126;
        out[2..4].copy_from_slice(&(payload_len as u16).to_be_bytes());
        4
    } else {
        out[1] = masked | 127;
        out[2..10].copy_from_slice(&(payload_len as u64).to_be_bytes());
        10
    };
    if let Some(m) = mask {
        out[n..n + 4].copy_from_slice(&m);
        n += 4;
    }
    n
}

/// The payload of a close frame: the code and as much of `reason` as fits in 123 bytes (cut at
/// a character boundary). Returns the length used in `out`.
///
/// ```
/// use netpoll::ws::frame::{CloseCode, MAX_CONTROL_PAYLOAD, encode_close_payload};
///
/// let mut payload = [0u8; MAX_CONTROL_PAYLOAD];
/// let n = encode_close_payload(&mut payload, CloseCode::Normal, "bye");
/// assert_eq!(&payload[..n], [0x03, 0xe8, b'b', b'y', b'e']); // 1000, then the reason
///
/// // A long reason is cut: 61 two-byte characters fit in 123 bytes, the 62nd does not.
/// let n = encode_close_payload(&mut payload, CloseCode::Away, &"é".repeat(100));
/// assert_eq!(n, 2 + 122);
/// ```
pub fn encode_close_payload(
    out: &mut [u8; MAX_CONTROL_PAYLOAD],
    code: CloseCode,
    reason: &str,
) -> usize {
    out[..2].copy_from_slice(&u16::from(code).to_be_bytes());
    let mut end = reason.len().min(MAX_CONTROL_PAYLOAD - 2);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    out[2..2 + end].copy_from_slice(&reason.as_bytes()[..end]);
    2 + end
}
