//! Checks shared by the fuzz targets (`fuzz/`, cargo-fuzz) and the randomized property tests
//! that run in `cargo test` (`properties`). Each takes arbitrary bytes, must never panic on
//! its own account, and panics only when an invariant is broken. Not part of the API: compiled
//! for the crate's tests and with the `internals` feature (which the fuzz crate enables).

#[cfg(test)]
mod properties;

/// xorshift64*: the crate's one deterministic, dependency-free source of test randomness, so a
/// failure names a reproducible case.
#[cfg(test)]
pub(crate) struct Rng(pub(crate) u64);

#[cfg(test)]
impl Rng {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number below `n` (0 for `n` = 0).
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    pub(crate) fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

use std::io::{self, IoSlice, Write};

use bytes::Bytes;

use crate::core::outbound::{OutboundBuffer, QueuePool};
use crate::ws::frame::{Decoder, Event, Flow, Limits, ProtocolError, Role};

/// An owned copy of a decoder event, for comparing runs (also used by the decoder's tests).
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Owned {
    Text(String),
    Binary(Vec<u8>),
    Ping(Vec<u8>),
    Pong(Vec<u8>),
    Close(Option<u16>, String),
    Fragment(bool, Vec<u8>, bool, bool),
    Compressed(bool, Vec<u8>),
}

pub(crate) fn owned(e: Event<'_>) -> Owned {
    match e {
        Event::Text(t) => Owned::Text(t.into()),
        Event::Binary(b) => Owned::Binary(b.into()),
        Event::Ping(b) => Owned::Ping(b.into()),
        Event::Pong(b) => Owned::Pong(b.into()),
        Event::Close { code, reason } => Owned::Close(code.map(u16::from), reason.into()),
        Event::Fragment {
            text,
            data,
            first,
            last,
        } => Owned::Fragment(text, data.into(), first, last),
        Event::Compressed { text, data } => Owned::Compressed(text, data.into()),
    }
}

const LIMITS: Limits = Limits {
    max_frame_size: 1 << 16,
    max_message_size: 1 << 17,
    max_fragments: 64,
};

/// Feeds `input` to a decoder in pieces of `step` bytes, keeping unconsumed bytes as the
/// engine does, until the end, a close frame or an error; returns the events and the error.
/// (Also the feeding loop of the decoder's unit tests.)
pub(crate) fn run_decoder(
    input: &[u8],
    step: usize,
    role: Role,
    streaming: bool,
    limits: &Limits,
) -> (Vec<Owned>, Option<ProtocolError>) {
    let mut d = Decoder::new();
    let mut events = Vec::new();
    let mut kept: Vec<u8> = Vec::new();
    for piece in input.chunks(step.max(1)) {
        kept.extend_from_slice(piece);
        let on_event = |e: Event<'_>| {
            events.push(owned(e));
            Flow::Continue
        };
        let r = if streaming {
            d.decode_fragments(&mut kept, role, limits, on_event)
        } else {
            d.decode(&mut kept, role, limits, on_event)
        };
        match r {
            Ok(r) => {
                assert!(r.consumed <= kept.len(), "consumed more than given");
                kept.drain(..r.consumed);
                if r.stopped {
                    return (events, None);
                }
            }
            Err(e) => {
                assert!(
                    matches!(u16::from(e.close_code()), 1002 | 1007 | 1008 | 1009),
                    "unexpected close code {}",
                    e.close_code()
                );
                return (events, Some(e));
            }
        }
    }
    (events, None)
}

/// Joins streamed fragments back into whole messages, checking the first/last flags.
fn join_fragments(events: Vec<Owned>) -> Vec<Owned> {
    let mut out = Vec::new();
    let mut current: Option<(bool, Vec<u8>)> = None;
    for e in events {
        match e {
            Owned::Fragment(text, data, first, last) => {
                assert_eq!(first, current.is_none(), "first flag out of step");
                let (_, buf) = current.get_or_insert((text, Vec::new()));
                buf.extend_from_slice(&data);
                if last {
                    let (text, buf) = current.take().expect("set above");
                    out.push(if text {
                        Owned::Text(String::from_utf8(buf).expect("validated text"))
                    } else {
                        Owned::Binary(buf)
                    });
                }
            }
            other => out.push(other),
        }
    }
    out
}

/// WebSocket frame decoding: never panics, and gives the same events and outcome however the
/// input is split into reads, and whether messages are delivered whole or streamed (up to the
/// point a streamed message is cut off by an error).
pub fn ws_frames(data: &[u8], client: bool) {
    let Some((&step, input)) = data.split_first() else {
        return;
    };
    let role = if client { Role::Client } else { Role::Server };
    let (whole, err) = run_decoder(input, input.len(), role, false, &LIMITS);
    let (split, split_err) = run_decoder(input, usize::from(step % 64) + 1, role, false, &LIMITS);
    assert_eq!(whole, split, "events depend on how the input was split");
    assert_eq!(err, split_err, "outcome depends on how the input was split");
    let (streamed, stream_err) = run_decoder(input, usize::from(step % 7) + 1, role, true, &LIMITS);
    if err.is_none() && stream_err.is_none() {
        assert_eq!(
            join_fragments(streamed),
            whole,
            "streamed and whole messages differ"
        );
    }
}

/// The server's HTTP upgrade parsing and response: never panics.
pub fn http_request(data: &[u8]) {
    use crate::ws::handshake::{self, Parsed};
    let mut headers = [httparse::EMPTY_HEADER; handshake::MAX_HEADERS];
    let peer = ([127, 0, 0, 1], 1).into();
    if let Parsed::Request { request, len } = handshake::parse_request(data, &mut headers, peer) {
        assert!(len <= data.len());
        let _ = (
            request.path(),
            request.query(),
            request.origin(),
            request.is_upgrade(),
        );
        let _ = request.protocols().count();
        if let Ok(key) = handshake::check_upgrade(&request) {
            let resp =
                handshake::accept_response(key, Some("p"), None, &[]).expect("valid headers");
            assert!(resp.starts_with("HTTP/1.1 101"));
        }
    }
}

/// The client's check of a server's upgrade response: never panics.
pub fn client_response(data: &[u8]) {
    let offered = ["chat".to_string()];
    let accept = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";
    let _ = crate::ws::client::check_response(data, accept, &offered, None);
    let deflate = crate::ws::deflate::DeflateConfig::default();
    let _ = crate::ws::client::check_response(data, accept, &offered, Some(&deflate));
}

/// permessage-deflate on arbitrary bytes: inflating never panics and never lets the output
/// pass the limit (nor reserve more than a step beyond it), in one piece or two; parsing an
/// extension header never panics, and an accepted offer's response is accepted by a client.
pub fn deflate(data: &[u8]) {
    use crate::ws::deflate::{self, DeflateConfig, InflateError, Inflater};
    let Some((&split, input)) = data.split_first() else {
        return;
    };
    let limit = 4096;
    let mut whole = Vec::new();
    let a = Inflater::new().inflate(input, true, &mut whole, limit);
    assert!(
        whole.len() <= limit && whole.capacity() <= limit + 16 * 1024,
        "{} / {} bytes for a limit of {limit}: {a:?}",
        whole.len(),
        whole.capacity()
    );
    let cut = usize::from(split).min(input.len());
    let mut parts = Vec::new();
    let mut inflater = Inflater::new();
    let b = inflater
        .inflate(&input[..cut], false, &mut parts, limit)
        .and_then(|()| inflater.inflate(&input[cut..], true, &mut parts, limit));
    assert!(parts.len() <= limit);
    if a.is_ok() && b.is_ok() {
        assert_eq!(whole, parts, "inflating depends on how the input was split");
    }
    if a == Err(InflateError::TooBig) {
        assert!(b.is_err());
    }
    // With context takeover: the first `cut` bytes are what earlier messages inflated to, the
    // rest is the message. The history stays within its window, and is unchanged by a
    // message that fails.
    let mut history = deflate::History::new(9 + split % 7);
    history.record(&input[..cut]);
    let before = history.clone();
    let mut out = Vec::new();
    let c = Inflater::new().inflate_after(&mut history, &input[cut..], &mut out, limit);
    assert!(out.len() <= limit && history.len() <= history.window());
    if c.is_err() {
        assert_eq!(history, before, "a failed message left the context alone");
    }
    if let Ok(header) = std::str::from_utf8(input) {
        let config = DeflateConfig::default();
        if let Some((params, response)) = deflate::server_accept([header], &config) {
            // What a server answers, a client that offered our default must take (when the
            // offer it answered allowed the client the full window).
            if params.client_max_window_bits == 15 {
                assert!(
                    deflate::client_check(&response, &config).is_ok(),
                    "{response}"
                );
            }
        }
        let _ = deflate::client_check(header, &config);
    }
}

/// The bus's RESP reader on arbitrary bytes: it never panics, never claims more bytes than
/// it was given, and a reply read from a buffer reads the same from any longer one (the rest
/// of a stream may follow); every shorter prefix is incomplete or the same error.
pub fn resp(data: &[u8]) {
    stream_reader(data, b"+more\r\n", |b| {
        crate::bus::resp::read_reply(b, 1024).map(|r| r.map(|(_, used)| used))
    });
}

/// The bus's NATS reader on arbitrary bytes: the same promises as [`resp`].
pub fn nats(data: &[u8]) {
    stream_reader(data, b"PING\r\n", |b| {
        crate::bus::nats::read_op(b, 1024).map(|r| r.map(|(_, used)| used))
    });
}

/// What a reader of a byte stream must keep: see [`resp`]; `read` says how many bytes the
/// first item took, `next` is a valid item that may follow in the stream.
fn stream_reader<E: PartialEq + std::fmt::Debug>(
    data: &[u8],
    next: &[u8],
    read: impl Fn(&[u8]) -> Result<Option<usize>, E>,
) {
    let whole = read(data);
    if let Ok(Some(used)) = whole {
        assert!(used <= data.len() && used > 0);
        let mut longer = data.to_vec();
        longer.extend_from_slice(next);
        assert_eq!(read(&longer), Ok(Some(used)));
    }
    for n in [0, data.len() / 2, data.len().saturating_sub(1)] {
        match (read(&data[..n]), &whole) {
            (Ok(None), _) => {}
            (Err(e), Err(w)) => assert_eq!(&e, w, "a prefix fails as the whole"),
            (Err(_), Ok(_)) => panic!("a prefix of a valid item is an error"),
            (Ok(Some(used)), _) => assert!(used <= n),
        }
    }
}

/// A writer that takes at most `cap` bytes per call (a socket with that much room), or
/// reports `WouldBlock` when `cap` is 0.
struct Sink {
    out: Vec<u8>,
    cap: usize,
}

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_vectored(&[IoSlice::new(buf)])
    }
    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        if self.cap == 0 {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let mut n = 0;
        for b in bufs {
            let take = b.len().min(self.cap - n);
            self.out.extend_from_slice(&b[..take]);
            n += take;
            if n == self.cap {
                break;
            }
        }
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The outbound queue under a random sequence of pushes (shared and copied, pooled or not),
/// partial writes and would-blocks: the bytes come out exactly as they went in, and `len`
/// always matches.
pub fn outbound(data: &[u8]) {
    let mut q = OutboundBuffer::new();
    let mut pool = QueuePool::new(4096);
    let mut sink = Sink {
        out: Vec::new(),
        cap: 0,
    };
    let mut written = Vec::new();
    // Bytes 0, 1, 2, ... wrapping: each write continues the sequence, so a lost, repeated or
    // reordered byte shows in the final comparison.
    static RAMP: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    let ramp = RAMP.get_or_init(|| (0..21_000 + 256).map(|i| i as u8).collect());
    let mut next = 0usize;
    for op in data.chunks(2) {
        let (kind, arg) = (op[0] % 6, usize::from(*op.get(1).unwrap_or(&0)));
        // Mostly small writes (what coalescing sees), a fifth of them up to ~20 KB (past the
        // pooled-tail size): every size class, at a fraction of the bytes per input.
        let len = if arg < 200 { arg } else { (arg - 199) * 350 };
        let payload = &ramp[next..next + len];
        match kind {
            0 => q.push(Bytes::copy_from_slice(payload)),
            1 => q.push_slice(payload),
            2 => q.push_slice_pooled(payload, &mut pool),
            3 | 4 => {
                sink.cap = arg * 61 % 70_000;
                match q.write_to(&mut sink) {
                    Ok((n, _)) => assert!(n <= sink.cap, "wrote more than the socket took"),
                    Err(e) => assert_eq!(e.kind(), io::ErrorKind::WouldBlock),
                }
                continue;
            }
            _ => {
                if q.release_into(&mut pool) {
                    assert_eq!(q.len(), 0);
                }
                continue;
            }
        }
        next = (next + len) % 256;
        written.extend_from_slice(payload);
        assert_eq!(
            q.len() + sink.out.len(),
            written.len(),
            "length bookkeeping"
        );
    }
    sink.cap = usize::MAX;
    while !q.is_empty() {
        q.write_to(&mut sink)
            .expect("an unbounded sink takes everything");
    }
    assert_eq!(sink.out, written, "bytes out differ from bytes in");
}
