//! Error types.

use std::fmt;
use std::io;

/// A builder value that is out of range, naming the knob and why.
///
/// ```
/// use netpoll::Engine;
///
/// let err = Engine::builder().pollers(0).build().unwrap_err();
/// assert_eq!(err.field, "pollers");
/// assert_eq!(err.to_string(), "invalid pollers: 0 is not in 1..=256");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The builder method whose value was rejected.
    pub field: &'static str,
    /// What is wrong with it.
    pub reason: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid {}: {}", self.field, self.reason)
    }
}

impl std::error::Error for ConfigError {}

/// Errors from starting an engine or dialing.
///
/// ```no_run
/// use std::io::ErrorKind;
/// use netpoll::{Engine, Error};
/// # struct H;
/// # impl netpoll::Handler for H {
/// #     type State = ();
/// #     fn on_open(&mut self, _: &netpoll::Conn) {}
/// #     fn on_data(&mut self, _: &netpoll::Conn, _: &mut (), d: &mut [u8]) -> usize { d.len() }
/// # }
///
/// match Engine::builder().listen("0.0.0.0:8080").start(|_| H) {
///     Ok(engine) => println!("listening on {}", engine.local_addrs()[0]),
///     Err(Error::Config(e)) => eprintln!("fix the setting {}: {}", e.field, e.reason),
///     Err(Error::Io(e)) if e.kind() == ErrorKind::AddrInUse => eprintln!("port 8080 is taken"),
///     Err(e) => eprintln!("cannot start: {e}"),
/// }
/// ```
#[derive(Debug)]
pub enum Error {
    /// A builder value was rejected.
    Config(ConfigError),
    /// A socket or thread could not be created (bind failed, out of descriptors, ...).
    Io(io::Error),
    /// The engine has been shut down.
    Shutdown,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Config(e) => e.fmt(f),
            Error::Io(e) => write!(f, "I/O error: {e}"),
            Error::Shutdown => f.write_str("engine is shut down"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Config(e) => Some(e),
            Error::Io(e) => Some(e),
            Error::Shutdown => None,
        }
    }
}

impl From<ConfigError> for Error {
    fn from(e: ConfigError) -> Self {
        Error::Config(e)
    }
}

impl From<io::Error> for Error {
    fn from(e: io::Error) -> Self {
        Error::Io(e)
    }
}

/// Why a write was not accepted. A refused message was not sent at all: messages are queued
/// whole or not at all.
///
/// ```
/// use netpoll::WriteError;
///
/// // What a producer does with a refused message.
/// fn next_step(e: &WriteError) -> &'static str {
///     match e {
///         WriteError::Overflow { .. } => "keep it and retry after on_drained, or drop it",
///         WriteError::Closed | WriteError::Io(_) => "stop: the connection is gone",
///         WriteError::Invalid(_) => "fix the message",
///         _ => "stop",
///     }
/// }
///
/// let e = WriteError::Overflow { pending: 4096, len: 512, limit: 4096 };
/// assert_eq!(next_step(&e), "keep it and retry after on_drained, or drop it");
/// assert_eq!(e.to_string(), "outbound limit exceeded: 4096 bytes queued + 512 over 4096");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum WriteError {
    /// The connection is closed or closing (also for a handle that outlived its connection).
    Closed,
    /// Queuing the message would exceed the outbound limit (`pending + len` plus the 64
    /// bytes of bookkeeping a queued message may cost, over `limit`). Under
    /// [`OverflowPolicy::Close`](crate::OverflowPolicy::Close) the connection is now closing.
    Overflow {
        /// What was queued when the write was refused, as the limit counts it (see
        /// [`Conn::pending_bytes`](crate::Conn::pending_bytes)).
        pending: usize,
        /// Size of the refused message.
        len: usize,
        /// The configured limit.
        limit: usize,
    },
    /// The socket failed (peer reset, broken pipe); the connection is now closing.
    Io(io::ErrorKind),
    /// A protocol layer refused the message as invalid for its protocol, or for the
    /// connection's state (the text says which); nothing was sent.
    Invalid(&'static str),
    /// The connection's poller has as many tasks from other threads queued as it takes
    /// ([`Conn::with_state`](crate::Conn::with_state)): it is far behind; try later.
    Busy,
}

impl fmt::Display for WriteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WriteError::Closed => f.write_str("connection is closed"),
            WriteError::Overflow {
                pending,
                len,
                limit,
            } => write!(
                f,
                "outbound limit exceeded: {pending} bytes queued + {len} over {limit}"
            ),
            WriteError::Io(kind) => write!(f, "socket error: {kind}"),
            WriteError::Invalid(why) => write!(f, "invalid message: {why}"),
            WriteError::Busy => f.write_str("the connection's poller has too many tasks queued"),
        }
    }
}

impl std::error::Error for WriteError {}
