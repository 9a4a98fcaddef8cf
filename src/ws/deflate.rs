//! permessage-deflate (RFC 7692), sans-IO: the negotiation of its parameters, and the message
//! compressor and decompressor with the RFC's framing (raw deflate, the `00 00 ff ff` tail of
//! a sync flush removed on send and put back on receipt) and a hard limit on what a message
//! may inflate to. No socket, no frame: the session decides when a message is compressed and
//! feeds these its payload.
//!
//! ```
//! use netpoll::ws::deflate::{Deflater, DeflateConfig, Inflater, server_accept, client_offer};
//!
//! // The client offers, the server accepts (no context takeover both ways by default).
//! let config = DeflateConfig::default();
//! let offer = client_offer(&config);
//! let (params, response) = server_accept([offer.as_str()], &config).expect("accepted");
//! assert!(params.server_no_context_takeover && params.client_no_context_takeover);
//! assert!(response.starts_with("permessage-deflate"));
//!
//! // A message compressed by one side inflates on the other, within the limit.
//! let text = "hello hello hello hello hello".as_bytes();
//! let mut wire = Vec::new();
//! Deflater::new(15).compress(text, &mut wire);
//! assert!(wire.len() < text.len());
//! let mut out = Vec::new();
//! Inflater::new().inflate(&wire, true, &mut out, 1 << 20)?;
//! assert_eq!(out, text);
//! # Ok::<(), netpoll::ws::deflate::InflateError>(())
//! ```

use std::fmt;

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

/// The extension's name in `Sec-WebSocket-Extensions`.
pub const EXTENSION: &str = "permessage-deflate";

/// The tail a sync flush ends with: removed from every compressed message on the wire, added
/// back before inflating (RFC 7692 §7.2.1, §7.2.2).
const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// Output is grown in steps of at most this much, so a small message never reserves more.
const OUT_STEP: usize = 16 * 1024;

/// How netpoll compresses: which parameters it asks for and accepts, and which messages it
/// compresses.
///
/// The default is what costs no memory per connection: no context takeover in either
/// direction (every message is compressed and inflated on its own, with compressors and
/// decompressors kept per thread, not per connection), messages under 64 bytes sent as they
/// are, compression level 1 (fast; most of the gain on text-like data).
///
/// ```
/// use netpoll::ws::deflate::DeflateConfig;
/// let config = DeflateConfig::default().threshold(256).level(6);
/// assert_eq!(config.min_size(), 256);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeflateConfig {
    context_takeover: bool,
    window_bits: u8,
    threshold: usize,
    level: u32,
}

impl Default for DeflateConfig {
    fn default() -> Self {
        DeflateConfig {
            context_takeover: false,
            window_bits: 15,
            threshold: 64,
            level: 1,
        }
    }
}

impl DeflateConfig {
    /// Keep the compression context between messages in both directions, with a window of
    /// `window_bits` (9..=15; 2^bits bytes). Better ratios on streams of similar messages
    /// (each may refer back into the ones before), at a cost per connection: the last window
    /// of bytes sent and, where the peer keeps its context too, of bytes received (a
    /// [`History`] each; the peer is asked to use the same window where its offer lets the
    /// server ask, else its window is up to 32 KiB). No zlib stream is kept per connection:
    /// pooled ones are primed with the history for each message, which costs CPU that grows
    /// with the window (a compressor hashes it again for every message).
    ///
    /// ```
    /// use netpoll::ws::deflate::DeflateConfig;
    /// // At most 4 KiB of context per direction and connection.
    /// let config = DeflateConfig::default().context_takeover(12);
    /// assert!(config.takes_over_context());
    /// ```
    ///
    /// # Panics
    /// If `window_bits` is not in 9..=15.
    pub fn context_takeover(mut self, window_bits: u8) -> Self {
        assert!(
            (9..=15).contains(&window_bits),
            "window_bits {window_bits} not in 9..=15"
        );
        self.context_takeover = true;
        self.window_bits = window_bits;
        self
    }

    /// Send messages shorter than `bytes` uncompressed (RSV1 clear). Default 64.
    pub fn threshold(mut self, bytes: usize) -> Self {
        self.threshold = bytes;
        self
    }

    /// zlib compression level, 0..=9 (clamped). Default 1.
    pub fn level(mut self, level: u32) -> Self {
        self.level = level.min(9);
        self
    }

    /// The size from which messages are compressed.
    pub fn min_size(&self) -> usize {
        self.threshold
    }

    /// The compression level.
    pub fn compression_level(&self) -> u32 {
        self.level
    }

    /// True if context is kept between messages.
    pub fn takes_over_context(&self) -> bool {
        self.context_takeover
    }
}

/// What both sides agreed on for one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeflateParams {
    /// The server resets its compressor after every message.
    pub server_no_context_takeover: bool,
    /// The client resets its compressor after every message.
    pub client_no_context_takeover: bool,
    /// The largest window the server's compressor may use (8..=15).
    pub server_max_window_bits: u8,
    /// The largest window the client's compressor may use (8..=15).
    pub client_max_window_bits: u8,
}

impl DeflateParams {
    /// The window this side may compress with, and whether it must reset after each
    /// message. `None` for a window of 8 bits, which zlib cannot produce (it raises 8 to 9):
    /// then this side sends every message uncompressed, which the RFC allows.
    pub fn send_window(&self, server: bool) -> Option<(u8, bool)> {
        let (bits, reset) = if server {
            (self.server_max_window_bits, self.server_no_context_takeover)
        } else {
            (self.client_max_window_bits, self.client_no_context_takeover)
        };
        (bits >= 9).then_some((bits, reset))
    }

    /// Whether this side's decompressor may be reset (or pooled) between messages: the peer
    /// resets its compressor after every message.
    pub fn receive_resets(&self, server: bool) -> bool {
        if server {
            self.client_no_context_takeover
        } else {
            self.server_no_context_takeover
        }
    }

    /// The largest window the peer's compressor may use: how much of what was received a
    /// decompressor must remember when the peer takes over context.
    pub fn receive_window(&self, server: bool) -> u8 {
        if server {
            self.client_max_window_bits
        } else {
            self.server_max_window_bits
        }
    }
}

/// One extension offer or response, parsed: the permessage-deflate parameters it carries.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Offer {
    server_no_context_takeover: bool,
    client_no_context_takeover: bool,
    server_max_window_bits: Option<u8>,
    /// `Some(None)`: the parameter without a value (a client's "I can take one").
    client_max_window_bits: Option<Option<u8>>,
}

/// One extension of a header value: its name and parameters (`name[=value]`, a quoted value
/// unquoted); `None` where the syntax is broken.
type Extension<'a> = Option<(&'a str, Vec<(&'a str, Option<String>)>)>;

/// Splits a `Sec-WebSocket-Extensions` value into extensions.
fn extensions(value: &str) -> Vec<Extension<'_>> {
    value
        .split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .map(|ext| {
            let mut parts = ext.split(';').map(str::trim);
            let name = parts.next().filter(|n| is_token(n))?;
            let mut params = Vec::new();
            for p in parts {
                let (key, value) = match p.split_once('=') {
                    Some((k, v)) => (k.trim(), Some(v.trim())),
                    None => (p, None),
                };
                if !is_token(key) {
                    return None;
                }
                let value = match value {
                    None => None,
                    Some(v) if v.len() >= 2 && v.starts_with('"') && v.ends_with('"') => {
                        let inner = &v[1..v.len() - 1];
                        if inner.contains(['"', '\\']) || !is_token(inner) {
                            return None;
                        }
                        Some(inner.to_string())
                    }
                    Some(v) if is_token(v) => Some(v.to_string()),
                    Some(_) => return None,
                };
                params.push((key, value));
            }
            Some((name, params))
        })
        .collect()
}

/// An HTTP token (RFC 7230 §3.2.6).
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// A window size parameter's value: 8..=15, digits only.
fn window_bits(v: &str) -> Option<u8> {
    if v.is_empty() || v.len() > 2 || !v.bytes().all(|b| b.is_ascii_digit()) || v.starts_with('0') {
        return None;
    }
    v.parse().ok().filter(|b| (8..=15).contains(b))
}

/// The permessage-deflate parameters of one extension, or `None` if any is unknown, repeated
/// or has a bad value (the offer is then declined, or the response refused).
fn parse_params(params: &[(&str, Option<String>)]) -> Option<Offer> {
    let mut o = Offer::default();
    let mut seen = [false; 4];
    for (key, value) in params {
        let i = match *key {
            "server_no_context_takeover" => 0,
            "client_no_context_takeover" => 1,
            "server_max_window_bits" => 2,
            "client_max_window_bits" => 3,
            _ => return None,
        };
        if std::mem::replace(&mut seen[i], true) {
            return None;
        }
        match (i, value) {
            (0, None) => o.server_no_context_takeover = true,
            (1, None) => o.client_no_context_takeover = true,
            (2, Some(v)) => o.server_max_window_bits = Some(window_bits(v)?),
            (3, None) => o.client_max_window_bits = Some(None),
            (3, Some(v)) => o.client_max_window_bits = Some(Some(window_bits(v)?)),
            _ => return None,
        }
    }
    Some(o)
}

/// Server side: the first acceptable permessage-deflate offer among the request's
/// `Sec-WebSocket-Extensions` values, as the agreed parameters and the response header's
/// value. `None` if there is no offer, or none that can be accepted (a bad offer is declined,
/// RFC 7692 §5: the connection goes on without compression).
///
/// netpoll always asks the client not to take over context when `config` says so, and never
/// limits the client's window (its decompressor takes any); it honours the client's limit
/// on the server's window.
pub fn server_accept<'a>(
    values: impl IntoIterator<Item = &'a str>,
    config: &DeflateConfig,
) -> Option<(DeflateParams, String)> {
    for value in values {
        for ext in extensions(value) {
            let Some((name, params)) = ext else {
                return None; // a malformed header: decline everything
            };
            if !name.eq_ignore_ascii_case(EXTENSION) {
                continue;
            }
            let Some(offer) = parse_params(&params) else {
                continue; // declined; try the next offer
            };
            let no_takeover = !config.context_takeover;
            let server_bits = match offer.server_max_window_bits {
                Some(b) => b.min(config.window_bits),
                None if no_takeover => 15,
                None => config.window_bits,
            };
            // With context takeover the client's window is what we must remember of what it
            // sent: ask for ours where its offer lets us (the parameter present).
            let client_bits = match offer.client_max_window_bits {
                Some(Some(b)) if no_takeover => b,
                Some(Some(b)) => b.min(config.window_bits),
                Some(None) if no_takeover => 15,
                Some(None) => config.window_bits,
                None => 15,
            };
            let params = DeflateParams {
                server_no_context_takeover: no_takeover || offer.server_no_context_takeover,
                client_no_context_takeover: no_takeover || offer.client_no_context_takeover,
                server_max_window_bits: server_bits,
                client_max_window_bits: client_bits,
            };
            let mut response = String::from(EXTENSION);
            if params.server_no_context_takeover {
                response.push_str("; server_no_context_takeover");
            }
            if params.client_no_context_takeover {
                response.push_str("; client_no_context_takeover");
            }
            if server_bits < 15 {
                response.push_str(&format!("; server_max_window_bits={server_bits}"));
            }
            match offer.client_max_window_bits {
                Some(Some(_)) => {
                    response.push_str(&format!("; client_max_window_bits={client_bits}"));
                }
                Some(None) if client_bits < 15 => {
                    response.push_str(&format!("; client_max_window_bits={client_bits}"));
                }
                _ => {}
            }
            return Some((params, response));
        }
    }
    None
}

/// Client side: the `Sec-WebSocket-Extensions` value that offers permessage-deflate with
/// `config`.
pub fn client_offer(config: &DeflateConfig) -> String {
    if config.context_takeover && config.window_bits < 15 {
        // Ask the server for the same window (what we must remember of what it sends), with
        // a fallback for a server that cannot make a smaller one.
        let bits = config.window_bits;
        format!(
            "{EXTENSION}; server_max_window_bits={bits}; client_max_window_bits={bits}, \
             {EXTENSION}; client_max_window_bits={bits}"
        )
    } else if config.context_takeover {
        format!("{EXTENSION}; client_max_window_bits")
    } else {
        format!(
            "{EXTENSION}; server_no_context_takeover; client_no_context_takeover; client_max_window_bits"
        )
    }
}

/// Client side: checks the server's `Sec-WebSocket-Extensions` response to
/// [`client_offer`]`(config)`: the agreed parameters, or why the response is invalid (the
/// client must then fail the connection, RFC 7692 §5.1).
///
/// # Errors
/// A response that is malformed, names another extension or several, repeats or does not
/// know a parameter, has a bad window size, or sets `client_max_window_bits` to more than was
/// offered.
pub fn client_check(value: &str, config: &DeflateConfig) -> Result<DeflateParams, &'static str> {
    let mut exts = extensions(value).into_iter();
    let (Some(ext), None) = (exts.next(), exts.next()) else {
        return Err("more than one extension in the response");
    };
    let (name, params) = ext.ok_or("malformed Sec-WebSocket-Extensions")?;
    if !name.eq_ignore_ascii_case(EXTENSION) {
        return Err("an extension that was not offered");
    }
    let o = parse_params(&params).ok_or("bad permessage-deflate parameters")?;
    let offered_bits = if config.context_takeover {
        config.window_bits
    } else {
        15
    };
    let client_bits = match o.client_max_window_bits {
        None => offered_bits,
        Some(None) => return Err("client_max_window_bits without a value"),
        Some(Some(b)) if b > offered_bits => {
            return Err("client_max_window_bits over what was offered");
        }
        Some(Some(b)) => b,
    };
    Ok(DeflateParams {
        server_no_context_takeover: o.server_no_context_takeover,
        client_no_context_takeover: o.client_no_context_takeover || !config.context_takeover,
        server_max_window_bits: o.server_max_window_bits.unwrap_or(15),
        client_max_window_bits: client_bits,
    })
}

/// Why a message could not be inflated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InflateError {
    /// It would inflate past the limit (close with 1009): inflating stopped there.
    TooBig,
    /// The data is not valid deflate (close with 1007).
    Corrupt,
}

impl fmt::Display for InflateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            InflateError::TooBig => "message inflates past the size limit",
            InflateError::Corrupt => "invalid compressed data",
        })
    }
}

impl std::error::Error for InflateError {}

/// One direction's context under context takeover: the last `2^window_bits` bytes of the
/// plaintext of compressed messages, which is all the LZ77 window of the other side's
/// compressor or decompressor can refer to. Instead of a zlib stream kept per connection
/// (over 130 KB with zlib-rs, whose hash table alone is 128 KB), a connection keeps only
/// this, and a pooled compressor or decompressor is primed with it for each message (a preset
/// dictionary): memory per connection is the window, paid for CPU (a compressor hashes the
/// window again for every message; a decompressor only copies it).
///
/// ```
/// use netpoll::ws::deflate::{Deflater, History, Inflater};
///
/// // One side compresses each message on top of what it sent before; the other inflates it on
/// // top of what it received.
/// let (mut sent, mut received) = (History::new(12), History::new(12));
/// let (mut deflater, mut inflater) = (Deflater::new(12), Inflater::new());
/// let mut sizes = Vec::new();
/// for _ in 0..2 {
///     let msg = br#"{"sym":"ABC","bid":101.25,"ask":101.5,"volume":1200}"#;
///     let mut wire = Vec::new();
///     deflater.compress_after(&sent, msg, &mut wire);
///     sent.record(msg); // sent: now in the context
///     let mut out = Vec::new();
///     inflater.inflate_after(&mut received, &wire, &mut out, 1 << 20)?;
///     assert_eq!(&out[..], &msg[..]);
///     sizes.push(wire.len());
/// }
/// assert!(sizes[1] < sizes[0] / 2, "the second refers to the first: {sizes:?}");
/// # Ok::<(), netpoll::ws::deflate::InflateError>(())
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct History {
    bytes: Vec<u8>,
    window_bits: u8,
}

impl History {
    /// An empty history for a window of `window_bits` (9..=15, clamped): it never holds more
    /// than `2^window_bits` bytes.
    pub fn new(window_bits: u8) -> Self {
        History {
            bytes: Vec::new(),
            window_bits: window_bits.clamp(9, 15),
        }
    }

    /// The bytes it holds (at most the window).
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// True before the first message.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// The window: the most this history holds.
    pub fn window(&self) -> usize {
        1 << self.window_bits
    }

    /// Heap bytes held (what it costs its connection).
    pub fn heap_bytes(&self) -> usize {
        self.bytes.capacity()
    }

    /// Appends a message's plaintext (one that reached, or will reach, the other side),
    /// keeping only the last window of bytes.
    pub fn record(&mut self, data: &[u8]) {
        let window = self.window();
        if data.len() >= window {
            self.bytes.clear();
            self.bytes.extend_from_slice(&data[data.len() - window..]);
        } else {
            let over = (self.bytes.len() + data.len()).saturating_sub(window);
            self.bytes.drain(..over);
            self.bytes.extend_from_slice(data);
        }
        if self.bytes.capacity() > window {
            self.bytes.shrink_to(window);
        }
    }
}

/// A raw-deflate decompressor for messages (window 15, which inflates any smaller window).
pub struct Inflater {
    z: Decompress,
}

impl fmt::Debug for Inflater {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Inflater").finish_non_exhaustive()
    }
}

impl Default for Inflater {
    fn default() -> Self {
        Self::new()
    }
}

impl Inflater {
    /// A fresh decompressor.
    pub fn new() -> Self {
        Inflater {
            z: Decompress::new_with_window_bits(false, 15),
        }
    }

    /// Forgets the context (between messages, when the peer takes none over).
    pub fn reset(&mut self) {
        self.z.reset(false);
    }

    /// Inflates `input`, the next piece of a compressed message, appending to `out`; `last`
    /// marks the message's final piece (the removed tail is fed after it). Never lets `out`
    /// grow past `limit` bytes (nor reserves more than a step beyond what it holds): a
    /// message that would is [`InflateError::TooBig`] and nothing more is inflated.
    ///
    /// ```
    /// use netpoll::ws::deflate::{Deflater, InflateError, Inflater};
    ///
    /// // A bomb: 10 MiB of zeros compress to about 10 KB.
    /// let mut bomb = Vec::new();
    /// Deflater::new(15).compress(&vec![0u8; 10 << 20], &mut bomb);
    /// let mut out = Vec::new();
    /// let result = Inflater::new().inflate(&bomb, true, &mut out, 1 << 20);
    /// assert_eq!(result, Err(InflateError::TooBig));
    /// assert!(out.capacity() <= (1 << 20) + 16 * 1024);
    /// ```
    ///
    /// # Errors
    /// [`InflateError::TooBig`] past `limit`, [`InflateError::Corrupt`] for data that is not
    /// deflate.
    pub fn inflate(
        &mut self,
        input: &[u8],
        last: bool,
        out: &mut Vec<u8>,
        limit: usize,
    ) -> Result<(), InflateError> {
        self.feed(input, out, limit)?;
        if last {
            self.feed(&TAIL, out, limit)?;
        }
        Ok(())
    }

    /// Inflates one whole message sent with context takeover: the decompressor starts from
    /// `history` (what earlier messages inflated to), and the result is added to it. Limits and
    /// errors as for [`inflate`](Self::inflate); after an error the history is left as it was
    /// (the connection is failed anyway).
    ///
    /// # Errors
    /// As for [`inflate`](Self::inflate).
    pub fn inflate_after(
        &mut self,
        history: &mut History,
        input: &[u8],
        out: &mut Vec<u8>,
        limit: usize,
    ) -> Result<(), InflateError> {
        let start = out.len();
        self.z.reset(false);
        if !history.is_empty() {
            self.z
                .set_dictionary(&history.bytes)
                .map_err(|_| InflateError::Corrupt)?;
        }
        self.inflate(input, true, out, limit)?;
        history.record(&out[start..]);
        Ok(())
    }

    fn feed(
        &mut self,
        mut input: &[u8],
        out: &mut Vec<u8>,
        limit: usize,
    ) -> Result<(), InflateError> {
        loop {
            if out.len() == out.capacity() {
                // One byte over the limit proves the message too big.
                let room = (limit + 1).saturating_sub(out.len()).min(OUT_STEP);
                if room == 0 {
                    return Err(InflateError::TooBig);
                }
                out.reserve_exact(room);
            }
            let before_in = self.z.total_in();
            let before_out = out.len();
            let status = self
                .z
                .decompress_vec(input, out, FlushDecompress::Sync)
                .map_err(|_| InflateError::Corrupt)?;
            let used = (self.z.total_in() - before_in) as usize;
            input = &input[used..];
            if out.len() > limit {
                out.truncate(limit); // the byte over proved it; keep the promise on `out`
                return Err(InflateError::TooBig);
            }
            let produced = out.len() - before_out;
            match status {
                // A final block ends the stream: what follows cannot be inflated (RFC 7692
                // senders never set BFINAL except with no context takeover at the message's
                // end, where only the tail may follow).
                Status::StreamEnd => {
                    self.z.reset(false);
                    return Ok(());
                }
                Status::Ok | Status::BufError => {
                    if input.is_empty() && out.len() < out.capacity() {
                        return Ok(()); // all input taken and the output was not the limit
                    }
                    if used == 0 && produced == 0 && out.len() < out.capacity() {
                        return Err(InflateError::Corrupt); // no progress with room to go
                    }
                }
            }
        }
    }
}

/// A raw-deflate compressor for messages.
pub struct Deflater {
    z: Compress,
}

impl fmt::Debug for Deflater {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Deflater").finish_non_exhaustive()
    }
}

impl Deflater {
    /// A compressor with a window of `window_bits` (9..=15) at level 1.
    ///
    /// # Panics
    /// If `window_bits` is not in 9..=15.
    pub fn new(window_bits: u8) -> Self {
        Self::with_level(window_bits, 1)
    }

    /// A compressor with a window of `window_bits` (9..=15) at `level` (0..=9).
    ///
    /// # Panics
    /// If `window_bits` is not in 9..=15.
    pub fn with_level(window_bits: u8, level: u32) -> Self {
        assert!(
            (9..=15).contains(&window_bits),
            "window_bits {window_bits} not in 9..=15"
        );
        Deflater {
            z: Compress::new_with_window_bits(Compression::new(level.min(9)), false, window_bits),
        }
    }

    /// Forgets the context (after a message, without context takeover).
    pub fn reset(&mut self) {
        self.z.reset();
    }

    /// Appends `input` compressed as one message with context takeover to `out`: the
    /// compressor is reset and primed with `history` (what earlier messages were), so it may
    /// refer back into them. The history is not changed: once the message is certain to reach
    /// the peer, [`History::record`] adds it (a message compressed but never sent must not be
    /// in it, or the next ones would refer to bytes the peer does not have).
    pub fn compress_after(&mut self, history: &History, input: &[u8], out: &mut Vec<u8>) {
        self.z.reset();
        if !history.is_empty() {
            self.z
                .set_dictionary(&history.bytes)
                .expect("a dictionary right after a reset is accepted");
        }
        self.compress(input, out);
    }

    /// Appends `input` compressed as one message to `out`: a sync flush, its tail removed.
    /// The context of earlier messages is kept (call [`reset`](Self::reset) before, for a
    /// message on its own).
    pub fn compress(&mut self, mut input: &[u8], out: &mut Vec<u8>) {
        let start = out.len();
        loop {
            if out.capacity() - out.len() < 64 {
                out.reserve(input.len() / 2 + 64);
            }
            let before_in = self.z.total_in();
            self.z
                .compress_vec(input, out, FlushCompress::Sync)
                .expect("deflate into a vector with room cannot fail");
            input = &input[(self.z.total_in() - before_in) as usize..];
            // Done when all input is taken and the flush fit (room was left over).
            if input.is_empty() && out.len() < out.capacity() {
                break;
            }
        }
        if out[start..].ends_with(&TAIL) {
            out.truncate(out.len() - TAIL.len());
        }
    }
}

/// What a thread keeps for compressing and inflating messages without context takeover: a
/// decompressor, a compressor per window size, and the output buffers. Taken out while in use,
/// so a callback that sends from inside a delivery does not find it borrowed.
#[derive(Default)]
struct ThreadPool {
    inflater: Option<Inflater>,
    inflated: Vec<u8>,
    /// By window bits 9..=15, with the level it was made for.
    deflaters: [Option<(u32, Deflater)>; 7],
    deflated: Vec<u8>,
}

thread_local! {
    static POOL: std::cell::RefCell<ThreadPool> = std::cell::RefCell::new(ThreadPool::default());
}

/// Scratch buffers kept per thread up to this size; a larger one is freed after use.
const KEEP: usize = 256 * 1024;

/// Inflates one whole message (no context kept: the peer resets after every message) with
/// this thread's decompressor, and runs `f` on the result.
///
/// # Errors
/// As for [`Inflater::inflate`].
pub(crate) fn inflate_message<R>(
    data: &[u8],
    limit: usize,
    history: Option<&mut History>,
    f: impl FnOnce(&[u8]) -> R,
) -> Result<R, InflateError> {
    let (mut inflater, mut out) = POOL.with(|p| {
        let mut p = p.borrow_mut();
        (
            p.inflater.take().unwrap_or_default(),
            std::mem::take(&mut p.inflated),
        )
    });
    out.clear();
    // One reset per message, before it (`inflate_after` resets itself).
    let result = match history {
        Some(history) => inflater.inflate_after(history, data, &mut out, limit),
        None => {
            inflater.reset();
            inflater.inflate(data, true, &mut out, limit)
        }
    };
    let r = result.map(|()| f(&out));
    if out.capacity() > KEEP {
        out = Vec::new();
    }
    POOL.with(|p| {
        let mut p = p.borrow_mut();
        p.inflater = Some(inflater);
        p.inflated = out;
    });
    r
}

/// Compresses one whole message (no context kept) with this thread's compressor for
/// `window_bits` (9..=15) at `level`, and runs `f` on the compressed payload.
pub(crate) fn deflate_message<R>(
    data: &[u8],
    window_bits: u8,
    level: u32,
    f: impl FnOnce(&[u8]) -> R,
) -> R {
    with_deflater(window_bits, level, |deflater, out| {
        // One reset per message, before it: a pooled compressor may come from a message
        // compressed with context (`compress_after` resets before, not after).
        deflater.reset();
        deflater.compress(data, out);
        f(out)
    })
}

/// Runs `f` with this thread's compressor for `window_bits` (9..=15) at `level` and an empty
/// output buffer (both taken out of the pool meanwhile, so `f` may compress again inside).
pub(crate) fn with_deflater<R>(
    window_bits: u8,
    level: u32,
    f: impl FnOnce(&mut Deflater, &mut Vec<u8>) -> R,
) -> R {
    let slot = usize::from(window_bits.clamp(9, 15) - 9);
    let (made, mut out) = POOL.with(|p| {
        let mut p = p.borrow_mut();
        (p.deflaters[slot].take(), std::mem::take(&mut p.deflated))
    });
    let mut deflater = match made {
        Some((l, d)) if l == level => d,
        _ => Deflater::with_level(window_bits.clamp(9, 15), level),
    };
    out.clear();
    let r = f(&mut deflater, &mut out);
    if out.capacity() > KEEP {
        out = Vec::new();
    }
    POOL.with(|p| {
        let mut p = p.borrow_mut();
        p.deflaters[slot] = Some((level, deflater));
        p.deflated = out;
    });
    r
}

#[cfg(test)]
mod tests;
