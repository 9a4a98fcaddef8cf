//! Error types.

use std::fmt;
use std::io;

/// A builder value that is out of range, naming the knob and why.
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
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum WriteError {
    /// The connection is closed or closing (also for a handle that outlived its connection).
    Closed,
    /// Queuing the message would exceed the outbound limit. Under
    /// [`OverflowPolicy::Close`](crate::OverflowPolicy::Close) the connection is now closing.
    Overflow {
        /// Bytes queued when the write was refused.
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
                "outbound limit exceeded: {pending} bytes queued + {len} > {limit}"
            ),
            WriteError::Io(kind) => write!(f, "socket error: {kind}"),
            WriteError::Invalid(why) => write!(f, "invalid message: {why}"),
        }
    }
}

impl std::error::Error for WriteError {}
