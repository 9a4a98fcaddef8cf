//! WebSocket frames, sans-IO: a [`Decoder`] that turns received bytes into messages and control
//! frames, and encoding for sending. No sockets here, so all of it is testable and fuzzable on
//! plain byte slices.
//!
//! The protocol vocabulary (opcodes, close codes) is tungstenite's, re-exported here; the
//! codec on the hot path is netpoll's own: frames are parsed in place (a whole unfragmented
//! frame is unmasked where it lies and lent out with no copy), and only a fragmented message,
//! or a frame too big to wait for in the caller's buffer, is assembled in a per-connection
//! buffer, allocated when it starts and freed when it completes; an idle connection's decoder
//! is one null pointer.

mod decode;
mod encode;
#[cfg(test)]
mod tests;

use std::fmt;

pub use decode::Decoder;
pub use encode::{apply_mask, encode_close_payload, encode_frame, encode_header};
pub use tungstenite::protocol::frame::coding::{CloseCode, Control, Data, OpCode};

/// Longest frame header: 2 bytes, 8 of extended length, 4 of mask.
pub const MAX_HEADER: usize = 14;
/// Longest control frame payload.
pub const MAX_CONTROL_PAYLOAD: usize = 125;

/// Which side of the connection decodes: a server receives masked frames, a client unmasked.
///
/// ```
/// use netpoll::ws::frame::{Data, Decoder, Flow, Limits, OpCode, ProtocolError, Role};
/// use netpoll::ws::frame::encode_frame;
///
/// // An unmasked frame, as a server sends it.
/// let mut frame = Vec::new();
/// encode_frame(&mut frame, OpCode::Data(Data::Text), true, b"hi", None);
/// let limits = Limits::default();
///
/// // A server must refuse it: clients mask every frame (RFC 6455 §5.1).
/// let as_server = Decoder::new().decode(&mut frame.clone(), Role::Server, &limits, |_| {
///     Flow::Continue
/// });
/// assert_eq!(as_server, Err(ProtocolError::UnmaskedFrame));
/// // A client takes it.
/// let as_client = Decoder::new().decode(&mut frame, Role::Client, &limits, |_| Flow::Continue);
/// assert_eq!(as_client.map(|d| d.frames), Ok(1));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Receives frames from a client: they must be masked.
    Server,
    /// Receives frames from a server: they must not be masked.
    Client,
}

/// Size limits for received frames and messages.
///
/// ```
/// use netpoll::ws::frame::Limits;
/// // A chat server: small messages, few fragments.
/// let limits = Limits { max_frame_size: 64 << 10, max_message_size: 64 << 10, max_fragments: 16 };
/// assert!(limits.max_message_size < Limits::default().max_message_size);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest payload of a single frame (close code 1009 beyond it).
    pub max_frame_size: usize,
    /// Largest message, all fragments together (close code 1009 beyond it).
    pub max_message_size: usize,
    /// Most frames one message may be split into (close code 1008 beyond it).
    pub max_fragments: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_frame_size: 16 << 20,
            max_message_size: 16 << 20,
            max_fragments: 100_000,
        }
    }
}

/// A violation of the protocol by the peer: the connection must be failed with
/// [`close_code`](Self::close_code) (RFC 6455 §7.4). Match on it to tell the kinds apart.
///
/// ```
/// use netpoll::ws::frame::{CloseCode, ProtocolError};
/// fn log(e: ProtocolError) -> &'static str {
///     match e {
///         ProtocolError::FrameTooBig | ProtocolError::MessageTooBig => "too big",
///         ProtocolError::InvalidUtf8 => "bad text",
///         _ => "broken peer",
///     }
/// }
/// assert_eq!(ProtocolError::MessageTooBig.close_code(), CloseCode::Size);
/// assert_eq!(log(ProtocolError::InvalidUtf8), "bad text");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ProtocolError {
    /// A reserved opcode (3-7, 11-15).
    ReservedOpcode,
    /// RSV1, RSV2 or RSV3 set, with no extension negotiated that defines them.
    ReservedBits,
    /// A frame from a client is not masked.
    UnmaskedFrame,
    /// A frame from a server is masked.
    MaskedFrame,
    /// A control frame without FIN.
    FragmentedControl,
    /// A control frame with a payload over 125 bytes.
    ControlTooLong,
    /// A continuation frame with no message in progress.
    UnexpectedContinuation,
    /// A new data message before the fragmented one in progress finished.
    UnfinishedMessage,
    /// A close frame with a 1-byte payload.
    ClosePayloadTooShort,
    /// A close frame with a code that must not be sent on the wire.
    InvalidCloseCode,
    /// A text message, or a close frame's reason, that is not UTF-8.
    InvalidUtf8,
    /// A frame over [`Limits::max_frame_size`].
    FrameTooBig,
    /// A message over [`Limits::max_message_size`].
    MessageTooBig,
    /// A message in more frames than [`Limits::max_fragments`].
    TooManyFragments,
    /// A compressed message (permessage-deflate) that does not inflate.
    InvalidCompressedData,
}

impl ProtocolError {
    /// The close code to fail the connection with: 1002 protocol error, 1007 invalid data,
    /// 1008 policy violation, 1009 message too big.
    pub fn close_code(self) -> CloseCode {
        match self {
            ProtocolError::InvalidUtf8 | ProtocolError::InvalidCompressedData => CloseCode::Invalid,
            ProtocolError::FrameTooBig | ProtocolError::MessageTooBig => CloseCode::Size,
            ProtocolError::TooManyFragments => CloseCode::Policy,
            _ => CloseCode::Protocol,
        }
    }

    /// What was wrong, briefly (also the reason in the close frame).
    pub fn reason(self) -> &'static str {
        match self {
            ProtocolError::ReservedOpcode => "reserved opcode",
            ProtocolError::ReservedBits => "reserved bits set without an extension",
            ProtocolError::UnmaskedFrame => "client frame is not masked",
            ProtocolError::MaskedFrame => "server frame is masked",
            ProtocolError::FragmentedControl => "fragmented control frame",
            ProtocolError::ControlTooLong => "control frame payload over 125 bytes",
            ProtocolError::UnexpectedContinuation => "continuation frame without a message",
            ProtocolError::UnfinishedMessage => "new message before the last one finished",
            ProtocolError::ClosePayloadTooShort => "close frame with a 1-byte payload",
            ProtocolError::InvalidCloseCode => "invalid close code",
            ProtocolError::InvalidUtf8 => "text is not UTF-8",
            ProtocolError::FrameTooBig => "frame too big",
            ProtocolError::MessageTooBig => "message too big",
            ProtocolError::TooManyFragments => "too many fragments",
            ProtocolError::InvalidCompressedData => "compressed data does not inflate",
        }
    }
}

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (close code {})", self.reason(), self.close_code())
    }
}

impl std::error::Error for ProtocolError {}

/// True for a close code a peer may send on the wire: tungstenite's
/// [`CloseCode::is_allowed`], plus 1014 (Bad Gateway, in the IANA registry), which
/// tungstenite 0.30 does not know and RFC 6455 §7.4.2 lets endpoints use.
///
/// ```
/// use netpoll::ws::frame::{CloseCode, close_code_is_valid};
///
/// assert!(close_code_is_valid(CloseCode::Normal)); // 1000
/// assert!(close_code_is_valid(CloseCode::from(1014))); // Bad Gateway
/// assert!(close_code_is_valid(CloseCode::from(4000))); // for applications
/// assert!(!close_code_is_valid(CloseCode::Abnormal)); // 1006: reported, never sent
/// assert!(!close_code_is_valid(CloseCode::from(1004))); // reserved
/// ```
pub fn close_code_is_valid(code: CloseCode) -> bool {
    code.is_allowed() || u16::from(code) == 1014
}

/// What the decoder found. Payloads borrow the caller's buffer (already unmasked) or the
/// decoder's assembly buffer, and live until the callback returns.
///
/// ```
/// use netpoll::ws::frame::{CloseCode, Control, Decoder, Event, Flow, Limits, OpCode, Role};
/// use netpoll::ws::frame::{MAX_CONTROL_PAYLOAD, encode_close_payload, encode_frame};
///
/// // What a client may receive from a server: a ping, then a close frame.
/// let mut input = Vec::new();
/// encode_frame(&mut input, OpCode::Control(Control::Ping), true, b"t1", None);
/// let mut close = [0u8; MAX_CONTROL_PAYLOAD];
/// let n = encode_close_payload(&mut close, CloseCode::Away, "restarting");
/// encode_frame(&mut input, OpCode::Control(Control::Close), true, &close[..n], None);
///
/// let mut seen = Vec::new();
/// Decoder::new().decode(&mut input, Role::Client, &Limits::default(), |event| {
///     match event {
///         // The receiver owes a pong with the same payload.
///         Event::Ping(p) => seen.push(format!("ping {}", String::from_utf8_lossy(p))),
///         Event::Close { code, reason } => {
///             seen.push(format!("close {} {reason}", code.unwrap_or(CloseCode::Status)))
///         }
///         other => seen.push(format!("{other:?}")),
///     }
///     Flow::Continue
/// })?;
/// assert_eq!(seen, ["ping t1", "close 1001 restarting"]);
/// # Ok::<(), netpoll::ws::ProtocolError>(())
/// ```
#[derive(Debug, PartialEq, Eq)]
pub enum Event<'a> {
    /// A complete text message, validated as UTF-8.
    Text(&'a str),
    /// A complete binary message.
    Binary(&'a [u8]),
    /// A ping; the receiver owes a pong with the same payload.
    Ping(&'a [u8]),
    /// A pong.
    Pong(&'a [u8]),
    /// A close frame: its status code (`None` if it carried none, to be reported as
    /// [`CloseCode::Status`], 1005) and reason. The decoder stops after it.
    Close {
        /// The peer's status code, already validated.
        code: Option<CloseCode>,
        /// The peer's reason, validated as UTF-8.
        reason: &'a str,
    },
    /// A whole compressed data message (permessage-deflate), from
    /// [`Decoder::decode_deflate`] only: its payload as it came, to be inflated (the text flag
    /// applies to the inflated form, which is not validated here).
    Compressed {
        /// The message is text.
        text: bool,
        /// The compressed payload, unmasked.
        data: &'a [u8],
    },
    /// A piece of a data message, from [`Decoder::decode_fragments`] only: the message arrives
    /// as one or more pieces in order, the first with `first`, the last with `last` (a small
    /// message is one piece with both). Text pieces are validated as UTF-8 across piece
    /// boundaries, but a piece may end inside a multi-byte character.
    Fragment {
        /// The message is text.
        text: bool,
        /// Payload bytes, unmasked.
        data: &'a [u8],
        /// The message's first piece.
        first: bool,
        /// The message's last piece.
        last: bool,
    },
}

/// What [`Decoder::decode`] did with the input.
///
/// ```
/// use netpoll::ws::frame::{Data, Decoder, Flow, Limits, OpCode, Role, encode_frame};
///
/// let mut frame = Vec::new();
/// encode_frame(&mut frame, OpCode::Data(Data::Binary), true, &[7; 10], None); // 12 bytes
/// let (limits, mut decoder) = (Limits::default(), Decoder::new());
///
/// // Only 5 bytes have arrived: nothing is consumed, the caller keeps them.
/// let mut input = frame[..5].to_vec();
/// let d = decoder.decode(&mut input, Role::Client, &limits, |_| Flow::Continue)?;
/// assert_eq!((d.consumed, d.frames), (0, 0));
///
/// // The rest arrives: the kept bytes are offered again, followed by the new ones.
/// input.extend_from_slice(&frame[5..]);
/// let d = decoder.decode(&mut input, Role::Client, &limits, |_| Flow::Continue)?;
/// assert_eq!((d.consumed, d.frames, d.stopped), (12, 1, false));
/// # Ok::<(), netpoll::ws::ProtocolError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decoded {
    /// Bytes consumed; the caller keeps the rest (an incomplete frame) and offers it again,
    /// followed by new bytes.
    pub consumed: usize,
    /// Complete frames seen (for liveness: a frame, not a byte, proves the peer is there).
    pub frames: usize,
    /// A close frame was decoded (or the callback asked to stop): decoding stopped after it.
    pub stopped: bool,
}

/// The callback's answer: go on decoding or stop after this event.
///
/// ```
/// use netpoll::ws::frame::{Data, Decoder, Event, Flow, Limits, OpCode, Role, encode_frame};
///
/// // Two messages in one read. Take only the first (a login, say, to check before reading
/// // on).
/// let mut input = Vec::new();
/// encode_frame(&mut input, OpCode::Data(Data::Text), true, b"login", None);
/// encode_frame(&mut input, OpCode::Data(Data::Text), true, b"hello", None);
///
/// let mut first = String::new();
/// let d = Decoder::new().decode(&mut input, Role::Client, &Limits::default(), |event| {
///     if let Event::Text(t) = event {
///         first = t.to_string();
///     }
///     Flow::Stop
/// })?;
/// assert_eq!((first.as_str(), d.consumed, d.stopped), ("login", 7, true));
/// // `input[d.consumed..]` still holds the second message, for the next call.
/// # Ok::<(), netpoll::ws::ProtocolError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// Decode the next frame.
    Continue,
    /// Stop; the bytes after this frame stay unconsumed.
    Stop,
}
