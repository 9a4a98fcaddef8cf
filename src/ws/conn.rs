//! [`WsConn`]: the WebSocket connection handle, usable from any thread.

use std::fmt;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::deflate::{self, DeflateConfig, History};
use super::frame::{
    CloseCode, Control, Data, MAX_CONTROL_PAYLOAD, MAX_HEADER, OpCode, apply_mask,
    encode_close_payload, encode_header,
};
use super::session::Session;
use crate::core::conn::{Conn, ConnId, Gate};
use crate::core::error::WriteError;
use crate::core::timer::TimerHandle;
use crate::core::transport::Payload;

/// Layer bit: our close frame is queued; no frame may follow it.
pub(crate) const CLOSE_SENT: u8 = 1;
/// Layer bit: the opening handshake is not complete; frames are refused.
pub(crate) const HANDSHAKING: u8 = 2;
/// Layer bit: permessage-deflate was agreed and this side may compress; the window's bits
/// (9..=15) are kept as 0..=6 in the three bits above it.
const DEFLATE_SEND: u8 = 4;
const WINDOW_SHIFT: u8 = 3;
/// Layer bit: this side compresses with context takeover (each message on top of the
/// connection's [`History`] of what it sent).
const TAKEOVER_SEND: u8 = 64;

/// The layer bits that say this side may send compressed messages with a window of
/// `send_window` bits (none for `None`: an 8-bit window, which zlib cannot make), keeping
/// context between messages if `takeover`.
pub(crate) fn deflate_bits(send_window: Option<u8>, takeover: bool) -> u8 {
    match send_window {
        Some(bits @ 9..=15) => {
            let takeover = if takeover { TAKEOVER_SEND } else { 0 };
            DEFLATE_SEND | ((bits - 9) << WINDOW_SHIFT) | takeover
        }
        _ => 0,
    }
}

/// True if a broadcast's shared compressed frame (made alone, with the full 15-bit window)
/// may go to this connection: it compresses with that window and keeps no context (a member
/// that keeps context would have to add the message to its history; it gets the plain frame).
pub(crate) fn shares_compressed_frames(bits: u8) -> bool {
    bits & TAKEOVER_SEND == 0 && send_window(bits) == Some(15)
}

/// The window to compress with, if this connection's bits allow compressing.
fn send_window(bits: u8) -> Option<u8> {
    (bits & DEFLATE_SEND != 0).then(|| 9 + ((bits >> WINDOW_SHIFT) & 7))
}

/// What a WebSocket connection keeps under its lock besides its bits, in the core's
/// attachment (made when first needed): the groups it joined and, with permessage-deflate's
/// context takeover, the context of each direction (boxed: a group member without it pays
/// one pointer).
#[derive(Debug, Default)]
pub(crate) struct WsAttachment {
    /// The groups it is a member of, so that its close removes it from each.
    pub(crate) groups: Vec<std::sync::Weak<super::group::GroupInner>>,
    pub(crate) contexts: Option<Box<Contexts>>,
}

/// The two directions' context under context takeover.
#[derive(Debug, Default)]
pub(crate) struct Contexts {
    /// What this side sent compressed so far.
    pub(crate) sent: Option<History>,
    /// What the peer's compressed messages inflated to so far: taken out by the poller while
    /// it inflates.
    pub(crate) received: Option<History>,
}

impl WsAttachment {
    /// The context of what this side sends, made empty for `window` bits if there is none.
    fn sent_history(&mut self, window: u8) -> &mut History {
        let contexts = self.contexts.get_or_insert_with(Default::default);
        contexts.sent.get_or_insert_with(|| History::new(window))
    }
}

const NOT_OPEN: &str = "the WebSocket handshake is not complete";

/// A data or control frame: refused after our close frame, and before the handshake.
pub(crate) const FRAME: Gate = Gate {
    closed_if: CLOSE_SENT,
    invalid_if: HANDSHAKING,
    why: NOT_OPEN,
    sets: 0,
    past_limit: false,
};

/// Our close frame: at most one, past the outbound limit (closing must work under
/// backpressure too), and nothing after it.
const CLOSE_FRAME: Gate = Gate {
    closed_if: CLOSE_SENT,
    invalid_if: HANDSHAKING,
    why: NOT_OPEN,
    sets: CLOSE_SENT,
    past_limit: true,
};

const TEXT: OpCode = OpCode::Data(Data::Text);
const BINARY: OpCode = OpCode::Data(Data::Binary);

/// A received message. Borrows the poller's read buffer (or the connection's assembly buffer)
/// and cannot outlive the callback.
///
/// ```
/// use netpoll::ws::Message;
/// let msg = Message::Text("hi");
/// assert!(msg.is_text());
/// assert_eq!(msg.as_bytes(), b"hi");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Message<'a> {
    /// A text message (valid UTF-8).
    Text(&'a str),
    /// A binary message.
    Binary(&'a [u8]),
}

impl<'a> Message<'a> {
    /// The payload bytes.
    pub fn as_bytes(&self) -> &'a [u8] {
        match self {
            Message::Text(t) => t.as_bytes(),
            Message::Binary(b) => b,
        }
    }

    /// True for a text message.
    pub fn is_text(&self) -> bool {
        matches!(self, Message::Text(_))
    }

    /// The payload length.
    pub fn len(&self) -> usize {
        self.as_bytes().len()
    }

    /// True if the payload is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub(crate) fn opcode(&self) -> OpCode {
        if self.is_text() { TEXT } else { BINARY }
    }
}

/// A handle to one WebSocket connection: cheap to clone, `Send + Sync`, usable from any thread.
///
/// Every `send` queues one whole frame (header and payload together, never interleaved with
/// another writer's), in each thread's order, bounded by the engine's `max_outbound_bytes`
/// and its overflow policy. After [`close`](Self::close) (or once the peer's close frame
/// arrived) sends fail with [`WriteError::Closed`]: nothing can follow the close frame.
///
/// ```no_run
/// use netpoll::ws::{CloseCode, Message, WsConn};
///
/// // Any thread may hold a clone and send; a send is refused, never split.
/// fn notify(conn: &WsConn, text: &str) {
///     match conn.send(Message::Text(text)) {
///         Ok(()) => {}
///         Err(netpoll::WriteError::Overflow { .. }) => conn.close(CloseCode::Again, "slow down"),
///         Err(_) => {} // closed meanwhile
///     }
/// }
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct WsConn {
    conn: Conn,
    /// This side dialed: frames it sends are masked.
    client: bool,
}

impl fmt::Debug for WsConn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WsConn")
            .field("id", &self.conn.id())
            .field("peer", &self.conn.peer_addr())
            .field("client", &self.client)
            .finish()
    }
}

impl WsConn {
    pub(crate) fn with_role(conn: Conn, client: bool) -> Self {
        WsConn { conn, client }
    }

    /// True for a connection this side dialed ([`WsEngine::connect`](super::WsEngine::connect)).
    pub fn is_client(&self) -> bool {
        self.client
    }

    /// The underlying TCP connection, for the layer only: its raw writes would corrupt the
    /// frame stream, so users get the safe parts through `WsConn`'s own methods.
    pub(crate) fn conn(&self) -> &Conn {
        &self.conn
    }

    /// Index of the poller thread that owns this connection.
    pub fn poller_index(&self) -> usize {
        self.conn.poller_index()
    }

    /// Sets (or with `None` clears) this connection's write timeout, overriding the engine's
    /// `write_timeout` (see [`Conn::set_write_timeout`]).
    pub fn set_write_timeout(&self, timeout: Option<Duration>) {
        self.conn.set_write_timeout(timeout)
    }

    /// Sets an absolute write deadline (see [`Conn::set_write_deadline`]).
    pub fn set_write_deadline(&self, at: Option<Instant>) {
        self.conn.set_write_deadline(at)
    }

    /// Overrides the engine's overflow policy for this connection's sends (see
    /// [`Conn::set_overflow_policy`]).
    pub fn set_overflow_policy(&self, policy: crate::OverflowPolicy) {
        self.conn.set_overflow_policy(policy)
    }

    /// Stops reading from this connection until [`resume_reading`](Self::resume_reading):
    /// the peer's frames wait in the kernel and TCP holds the peer back. The heartbeat waits
    /// while paused (a pong cannot be read). See [`Conn::pause_reading`].
    pub fn pause_reading(&self) {
        self.conn.pause_reading()
    }

    /// Reads again after [`pause_reading`](Self::pause_reading).
    pub fn resume_reading(&self) {
        self.conn.resume_reading()
    }

    /// Runs `f` on this connection's poller with its application state (your
    /// [`WsHandler::State`](super::WsHandler::State)), from any thread: change what a user
    /// subscribed to, kick a user, read a counter, without a map of your own behind a lock.
    /// It runs after what is already queued for the poller, and not at all if the connection
    /// closed first (see [`Conn::with_state`]).
    ///
    /// ```no_run
    /// # fn demo(conn: &netpoll::ws::WsConn) {
    /// use netpoll::ws::CloseCode;
    /// // State = String (the user's name): kick "mallory" from an admin thread.
    /// let _ = conn.with_state(|conn, name: &mut String| {
    ///     if name == "mallory" {
    ///         conn.close(CloseCode::Policy, "kicked");
    ///     }
    /// });
    /// # }
    /// ```
    ///
    /// # Errors
    /// As for [`Conn::with_state`], and [`WriteError::Invalid`] on a client connection before
    /// its handshake completed (its state is with the engine only from `on_open` on).
    pub fn with_state<S: Send + 'static>(
        &self,
        f: impl FnOnce(&WsConn, &mut S) + Send + 'static,
    ) -> Result<(), WriteError> {
        // A client's state moves into its session only with the server's 101.
        if self.conn.with_layer(|bits, _, _| *bits & HANDSHAKING != 0) {
            return Err(WriteError::Invalid(NOT_OPEN));
        }
        let client = self.client;
        self.conn.with_state(move |conn, session: &mut Session<S>| {
            if let Some(state) = session.app_mut() {
                f(&WsConn::with_role(conn.clone(), client), state)
            }
        })
    }

    /// The engine-wide unique id.
    pub fn id(&self) -> ConnId {
        self.conn.id()
    }

    /// The remote address.
    pub fn peer_addr(&self) -> SocketAddr {
        self.conn.peer_addr()
    }

    /// Bytes queued but not yet taken by the kernel.
    pub fn pending_bytes(&self) -> usize {
        self.conn.pending_bytes()
    }

    /// True until the close handshake starts (either side) or the connection closes.
    pub fn is_open(&self) -> bool {
        self.conn
            .with_layer(|bits, _, open| open && *bits & CLOSE_SENT == 0)
    }

    /// Sends a message. On a server connection it is copied only if it cannot be written at
    /// once; a client connection masks a copy of it.
    ///
    /// ```no_run
    /// use netpoll::WriteError;
    /// use netpoll::ws::{Message, WsConn};
    ///
    /// // An echo: a received message goes back as it is, while it still borrows the read
    /// // buffer.
    /// fn on_message(conn: &WsConn, msg: Message<'_>) {
    ///     match conn.send(msg) {
    ///         Ok(()) => {}
    ///         // The peer does not read: drop this one (or keep it until `on_drained`).
    ///         Err(WriteError::Overflow { .. }) => {}
    ///         Err(e) => eprintln!("{}: not sent: {e}", conn.id()),
    ///     }
    /// }
    /// ```
    ///
    /// # Errors
    /// Nothing of a refused message is sent. [`WriteError::Closed`] after the close handshake
    /// started or the connection closed; [`WriteError::Overflow`] over the outbound limit (the
    /// engine's overflow policy may then close the connection); [`WriteError::Io`] if the
    /// socket failed; [`WriteError::Invalid`] on a client connection before its handshake
    /// completed.
    pub fn send(&self, msg: Message<'_>) -> Result<(), WriteError> {
        self.frame(msg.opcode(), Payload::Slice(msg.as_bytes()), FRAME)
    }

    /// Sends a text message.
    ///
    /// # Errors
    /// As for [`send`](Self::send).
    pub fn send_text(&self, text: &str) -> Result<(), WriteError> {
        self.frame(TEXT, Payload::Slice(text.as_bytes()), FRAME)
    }

    /// Sends a binary message.
    ///
    /// # Errors
    /// As for [`send`](Self::send).
    pub fn send_binary(&self, data: &[u8]) -> Result<(), WriteError> {
        self.frame(BINARY, Payload::Slice(data), FRAME)
    }

    /// Sends shared bytes without copying them: the header is written in front of `payload`
    /// with one `writev`. With `text` set the payload must be UTF-8. (A client connection
    /// masks a copy, as for every send.)
    ///
    /// # Errors
    /// As for [`send`](Self::send), and [`WriteError::Invalid`] for text that is not UTF-8.
    pub fn send_shared(&self, payload: Bytes, text: bool) -> Result<(), WriteError> {
        if text && super::utf8::from_utf8(&payload).is_none() {
            return Err(WriteError::Invalid("text message is not UTF-8"));
        }
        let opcode = if text { TEXT } else { BINARY };
        self.frame(opcode, Payload::Shared(payload), FRAME)
    }

    /// Sends a ping (payload at most 125 bytes). The engine answers the peer's pings by itself
    /// and pings idle peers by itself (see
    /// [`WsBuilder::idle_timeout`](super::WsBuilder::idle_timeout)).
    ///
    /// # Errors
    /// As for [`send`](Self::send), and [`WriteError::Invalid`] for a payload over 125 bytes.
    pub fn ping(&self, payload: &[u8]) -> Result<(), WriteError> {
        if payload.len() > MAX_CONTROL_PAYLOAD {
            return Err(WriteError::Invalid("control frame payload over 125 bytes"));
        }
        self.frame(
            OpCode::Control(Control::Ping),
            Payload::Slice(payload),
            FRAME,
        )
    }

    pub(crate) fn pong(&self, payload: &[u8]) -> Result<(), WriteError> {
        self.frame(
            OpCode::Control(Control::Pong),
            Payload::Slice(payload),
            FRAME,
        )
    }

    /// Starts the close handshake: queues a close frame with `code` and `reason` (cut to fit
    /// 123 bytes) after everything already queued, refuses further sends, and waits up to the
    /// engine's `close_timeout` for the peer's close frame before closing the TCP connection.
    /// Does nothing if the handshake already started. On a client connection whose upgrade
    /// has not completed there is no WebSocket to close yet: the connection is aborted and
    /// [`on_connect_error`](super::WsHandler::on_connect_error) gets its state back.
    pub fn close(&self, code: CloseCode, reason: &str) {
        match self.send_close(Some(code), reason) {
            Ok(()) => {
                let timeout = self.conn.config().close_timeout();
                self.conn.set_read_deadline(Some(Instant::now() + timeout));
            }
            Err(WriteError::Invalid(_)) => self.abort(),
            Err(_) => {}
        }
    }

    /// Queues a close frame (`None`: an empty one, answering a close that carried no code);
    /// `Err` if one was already queued or the connection is closed.
    pub(crate) fn send_close(
        &self,
        code: Option<CloseCode>,
        reason: &str,
    ) -> Result<(), WriteError> {
        let mut payload = [0u8; MAX_CONTROL_PAYLOAD];
        let n = match code {
            Some(code) => encode_close_payload(&mut payload, code, reason),
            None => 0,
        };
        let close = OpCode::Control(Control::Close);
        self.frame(close, Payload::Slice(&payload[..n]), CLOSE_FRAME)
    }

    /// True once a close frame was queued on this connection (by any thread).
    pub(crate) fn close_sent(&self) -> bool {
        self.conn.with_layer(|bits, _, _| *bits & CLOSE_SENT != 0)
    }

    /// Closes the TCP connection at once, without a close handshake.
    pub fn abort(&self) {
        self.conn.abort()
    }

    /// Runs `f` once on this connection's poller after `delay`, unless the connection closed
    /// first (see [`Conn::after`]).
    ///
    /// ```no_run
    /// # fn demo(conn: &netpoll::ws::WsConn) {
    /// use netpoll::ws::CloseCode;
    /// use std::time::Duration;
    /// // A client must say who it is within 5 s.
    /// let timer = conn.after(Duration::from_secs(5), |conn| {
    ///     conn.close(CloseCode::Policy, "authentication timeout")
    /// });
    /// // ... once it has: timer.cancel();
    /// # let _ = timer;
    /// # }
    /// ```
    pub fn after(&self, delay: Duration, f: impl FnOnce(&WsConn) + Send + 'static) -> TimerHandle {
        let client = self.client;
        self.conn
            .after(delay, move |c| f(&WsConn::with_role(c.clone(), client)))
    }

    /// Runs `f` on this connection's poller every `period` until the handle is cancelled or
    /// the connection closes (see [`Conn::every`]).
    ///
    /// ```no_run
    /// # fn demo(conn: &netpoll::ws::WsConn) {
    /// use std::time::Duration;
    /// // A clock tick to this client every second.
    /// let timer = conn.every(Duration::from_secs(1), |conn| {
    ///     let _ = conn.send_text("tick");
    /// });
    /// # let _ = timer;
    /// # }
    /// ```
    pub fn every(
        &self,
        period: Duration,
        mut f: impl FnMut(&WsConn) + Send + 'static,
    ) -> TimerHandle {
        let client = self.client;
        self.conn
            .every(period, move |c| f(&WsConn::with_role(c.clone(), client)))
    }

    fn frame(&self, opcode: OpCode, payload: Payload<'_>, gate: Gate) -> Result<(), WriteError> {
        // permessage-deflate: a data message at or over the threshold, on a connection that
        // agreed to it, goes compressed (RSV1). The engine-wide settings are reached without
        // a lock; only then are the connection's bits read.
        if let (OpCode::Data(_), Some(config)) =
            (opcode, self.conn.layer_settings::<DeflateConfig>())
            && payload.as_slice().len() >= config.min_size()
            && let Some((window, takeover)) = self.conn.with_layer(|bits, _, _| {
                send_window(*bits).map(|w| (w, *bits & TAKEOVER_SEND != 0))
            })
        {
            let level = config.compression_level();
            if takeover {
                return self.frame_in_context(opcode, payload.as_slice(), window, level, gate);
            }
            return deflate::deflate_message(payload.as_slice(), window, level, |compressed| {
                self.frame_with(opcode, true, Payload::Slice(compressed), gate)
            });
        }
        self.frame_with(opcode, false, payload, gate)
    }

    /// Sends one compressed message with context takeover. The compression runs under the
    /// connection's lock, after the gate admitted the message and before it is queued: the
    /// context must advance exactly with what the peer receives, in the order it receives it,
    /// whichever threads send. The message joins the history only once it is certain to be
    /// queued: one refused for the outbound limit (known only once compressed) is not in it.
    // Kept out of line: inlined, it made every plain send slower (callgrind).
    #[inline(never)]
    fn frame_in_context(
        &self,
        opcode: OpCode,
        data: &[u8],
        window: u8,
        level: u32,
        gate: Gate,
    ) -> Result<(), WriteError> {
        let client = self.client;
        deflate::with_deflater(window, level, |deflater, out| {
            self.conn.write_gated_with(
                &[],
                move |_, attachment, room| {
                    let ws = attachment.get_or_insert_with(WsAttachment::default);
                    let history = ws.sent_history(window);
                    // The frame is built in one buffer: room for the longest header, then
                    // the compressed payload; the header is written right before it.
                    out.resize(MAX_HEADER, 0);
                    deflater.compress_after(history, data, out);
                    let len = out.len() - MAX_HEADER;
                    let mut head = [0u8; MAX_HEADER];
                    let mask = client.then(rand::random::<[u8; 4]>);
                    let n = encode_header(&mut head, opcode, true, len, mask);
                    if n + len > room {
                        return Err(n + len); // refused: the history stays as it was
                    }
                    history.record(data);
                    head[0] |= 0x40; // RSV1: compressed
                    if let Some(mask) = mask {
                        apply_mask(&mut out[MAX_HEADER..], mask, 0);
                    }
                    out[MAX_HEADER - n..MAX_HEADER].copy_from_slice(&head[..n]);
                    let out: &Vec<u8> = out;
                    Ok(Payload::Slice(&out[MAX_HEADER - n..]))
                },
                gate,
                None,
            )
        })
    }

    /// Sends one frame; `compressed` sets RSV1 (permessage-deflate).
    fn frame_with(
        &self,
        opcode: OpCode,
        compressed: bool,
        payload: Payload<'_>,
        gate: Gate,
    ) -> Result<(), WriteError> {
        let mut head = [0u8; MAX_HEADER];
        let rsv1 = if compressed { 0x40 } else { 0 };
        let data = payload.as_slice();
        if !self.client {
            let n = encode_header(&mut head, opcode, true, data.len(), None);
            head[0] |= rsv1;
            return self.conn.write_gated(&head[..n], payload, gate, None);
        }
        // A client masks every frame with a fresh random key (RFC 6455 §5.3), in a reused
        // per-thread buffer: the payload is copied once.
        let mask: [u8; 4] = rand::random();
        let n = encode_header(&mut head, opcode, true, data.len(), Some(mask));
        head[0] |= rsv1;
        MASK_SCRATCH.with(|scratch| {
            let mut scratch = scratch.borrow_mut();
            scratch.clear();
            scratch.extend_from_slice(data);
            apply_mask(&mut scratch, mask, 0);
            let result = self
                .conn
                .write_gated(&head[..n], Payload::Slice(&scratch), gate, None);
            if scratch.capacity() > 64 * 1024 {
                *scratch = Vec::new(); // do not keep a huge buffer per thread
            }
            result
        })
    }
}

thread_local! {
    /// Where a client masks outgoing payloads.
    static MASK_SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}
