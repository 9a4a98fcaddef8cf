//! One connection's TLS, sans-IO, on rustls' unbuffered API: ciphertext in, plaintext out;
//! plaintext in, ciphertext out. No socket and no clock; the transport feeds it what the
//! socket gave and queues what it produces.
//!
//! Memory: rustls' unbuffered connection keeps no record buffers. This session keeps two
//! vectors that are empty (no allocation) while the connection is idle: the ciphertext of a
//! record cut by the end of a read, and plaintext written before the handshake allows
//! application data.

use std::sync::Arc;

use rustls::client::UnbufferedClientConnection;
use rustls::pki_types::ServerName;
use rustls::server::UnbufferedServerConnection;
use rustls::unbuffered::{ConnectionState, EncodeError, EncryptError, UnbufferedStatus};
use rustls::{ClientConfig, ServerConfig};

/// Largest TLS record on the wire: 16 KiB of plaintext plus the header, the content type byte,
/// padding allowance and the AEAD tag.
const MAX_RECORD: usize = 16 * 1024 + 256;

/// What [`TlsSession::receive`] found besides plaintext.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Received {
    /// The session produced bytes to send (handshake records, an alert).
    pub(crate) wrote: bool,
    /// The peer sent close_notify: no more plaintext will come.
    pub(crate) peer_closed: bool,
}

/// The rustls connection, inline: the session is boxed once as the connection's codec.
#[allow(clippy::large_enum_variant)] // both variants are about 1 KiB
enum Side {
    Server(UnbufferedServerConnection),
    Client(UnbufferedClientConnection),
}

/// Runs `process_tls_records` on whichever side, binding the status to `$status`.
macro_rules! with_status {
    ($side:expr, $input:expr, |$status:ident| $body:expr) => {
        match $side {
            Side::Server(c) => {
                let $status = c.process_tls_records($input);
                $body
            }
            Side::Client(c) => {
                let $status = c.process_tls_records($input);
                $body
            }
        }
    };
}

/// One connection's TLS state machine.
pub(crate) struct TlsSession {
    side: Side,
    /// Ciphertext not yet processed (a record cut by the end of a read); empty when idle.
    incoming: Vec<u8>,
    /// Plaintext written before the handshake allowed application data; empty afterwards.
    early: Vec<u8>,
    /// The handshake finished: application data can be sealed at once.
    established: bool,
    /// Why the session failed (kept for the connection's owner to report; boxed, as it is
    /// rare and the session is kept per connection).
    failure: Option<Box<TlsError>>,
}

impl std::fmt::Debug for TlsSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsSession")
            .field("server", &matches!(self.side, Side::Server(_)))
            .field("established", &self.established)
            .finish()
    }
}

/// Why the session failed; the connection must close.
pub(crate) type TlsError = rustls::Error;

impl TlsSession {
    /// The server side of a new connection.
    pub(crate) fn server(config: Arc<ServerConfig>) -> Result<Self, TlsError> {
        Ok(Self::new(Side::Server(UnbufferedServerConnection::new(
            config,
        )?)))
    }

    /// The client side of a new connection to `name`.
    pub(crate) fn client(
        config: Arc<ClientConfig>,
        name: ServerName<'static>,
    ) -> Result<Self, TlsError> {
        Ok(Self::new(Side::Client(UnbufferedClientConnection::new(
            config, name,
        )?)))
    }

    fn new(side: Side) -> Self {
        TlsSession {
            side,
            incoming: Vec::new(),
            early: Vec::new(),
            established: false,
            failure: None,
        }
    }

    /// True once the handshake completed.
    #[cfg(test)]
    pub(crate) fn is_established(&self) -> bool {
        self.established
    }

    /// Why the session failed, once it has.
    pub(crate) fn failure(&self) -> Option<&TlsError> {
        self.failure.as_deref()
    }

    /// Ciphertext kept from earlier input: an unfinished record (or, during the handshake,
    /// an unfinished handshake message, which rustls reads from the caller's buffer).
    pub(crate) fn incoming_len(&self) -> usize {
        self.incoming.len()
    }

    /// Plaintext bytes waiting for the handshake (they count against the outbound limit).
    pub(crate) fn early_len(&self) -> usize {
        self.early.len()
    }

    /// Ciphertext `input` arrived (decrypted in place, so it is clobbered): appends the
    /// plaintext it carried to `plain` and the bytes the session wants sent to `send`. A record
    /// cut at the end of `input` is kept (copied) until the rest arrives; otherwise nothing is
    /// allocated. On an error, `send` gets the fatal alert that tells the peer why.
    pub(crate) fn receive(
        &mut self,
        input: &mut [u8],
        plain: &mut Vec<u8>,
        send: &mut Vec<u8>,
    ) -> Result<Received, TlsError> {
        if self.incoming.is_empty() {
            let (consumed, result) = self.process(input, plain, send);
            if result.is_ok() && consumed < input.len() {
                self.incoming.extend_from_slice(&input[consumed..]);
            }
            return result;
        }
        let mut buf = std::mem::take(&mut self.incoming);
        buf.extend_from_slice(input);
        let (consumed, result) = self.process(&mut buf, plain, send);
        if result.is_ok() {
            buf.drain(..consumed);
            // Keep only an unfinished record; give the memory back when there is none.
            if buf.is_empty() {
                buf = Vec::new();
            }
            self.incoming = buf;
        }
        result
    }

    /// Seals `data` into records appended to `send`; before the handshake allows application
    /// data it waits in the session (and goes out when the handshake completes).
    pub(crate) fn seal(&mut self, data: &[u8], send: &mut Vec<u8>) -> Result<(), TlsError> {
        if !self.established {
            self.early.extend_from_slice(data);
            return Ok(());
        }
        let result = self.encrypt(data, send);
        if let Err(e) = &result {
            self.failure.get_or_insert_with(|| Box::new(e.clone()));
        }
        result
    }

    /// Queues close_notify (after anything sealed before); nothing if the handshake never
    /// completed.
    pub(crate) fn close_notify(&mut self, send: &mut Vec<u8>) {
        if !self.established {
            return;
        }
        let mut empty: [u8; 0] = [];
        with_status!(&mut self.side, &mut empty, |status| {
            if let Ok(ConnectionState::WriteTraffic(mut w)) = status.state {
                let _ = append(send, 64, |b| w.queue_close_notify(b).map_err(encrypt_room));
            }
        })
    }

    fn encrypt(&mut self, data: &[u8], send: &mut Vec<u8>) -> Result<(), TlsError> {
        // One record per 16 KiB of plaintext, each with at most this much overhead.
        let records = data.len().div_ceil(16 * 1024).max(1);
        let room = data.len() + records * 64;
        let mut empty: [u8; 0] = [];
        with_status!(&mut self.side, &mut empty, |status| {
            match status.state? {
                ConnectionState::WriteTraffic(mut w) => {
                    append(send, room, |b| w.encrypt(data, b).map_err(encrypt_room))
                }
                _ => Err(rustls::Error::HandshakeNotComplete),
            }
        })
    }

    /// Drives the state machine over `buf` until it needs more input; returns how much of
    /// `buf` it consumed.
    fn process(
        &mut self,
        buf: &mut [u8],
        plain: &mut Vec<u8>,
        send: &mut Vec<u8>,
    ) -> (usize, Result<Received, TlsError>) {
        let mut consumed = 0;
        let result = self.process_from(buf, &mut consumed, plain, send);
        if let Err(e) = &result {
            self.failure.get_or_insert_with(|| Box::new(e.clone()));
            // rustls queued a fatal alert for the peer: it comes out of the next call, which
            // must see the same unconsumed bytes (rustls keeps offsets into them).
            self.take_alert(&mut buf[consumed..], send);
        }
        (consumed, result)
    }

    /// After an error: encodes the fatal alert rustls queued, if any (one step only: going on
    /// would process the bad bytes again).
    fn take_alert(&mut self, buf: &mut [u8], send: &mut Vec<u8>) {
        with_status!(&mut self.side, buf, |status| {
            if let Ok(ConnectionState::EncodeTlsData(mut e)) = status.state {
                let _ = append(send, 64, |b| e.encode(b).map_err(encode_room));
            }
        })
    }

    fn process_from(
        &mut self,
        buf: &mut [u8],
        consumed: &mut usize,
        plain: &mut Vec<u8>,
        send: &mut Vec<u8>,
    ) -> Result<Received, TlsError> {
        let mut received = Received::default();
        loop {
            let mut became_established = false;
            let (discard, done) = with_status!(&mut self.side, &mut buf[*consumed..], |status| {
                let UnbufferedStatus { discard, state } = status;
                let done = match state? {
                    ConnectionState::ReadTraffic(mut r) => {
                        while let Some(record) = r.next_record() {
                            plain.extend_from_slice(record?.payload);
                        }
                        false
                    }
                    ConnectionState::EncodeTlsData(mut e) => {
                        append(send, MAX_RECORD, |b| e.encode(b).map_err(encode_room))?;
                        received.wrote = true;
                        false
                    }
                    ConnectionState::TransmitTlsData(t) => {
                        // The caller queues `send` for the socket right after this call.
                        t.done();
                        false
                    }
                    ConnectionState::BlockedHandshake => true,
                    ConnectionState::WriteTraffic(_) => {
                        became_established = !self.established;
                        true
                    }
                    ConnectionState::PeerClosed => {
                        received.peer_closed = true;
                        true
                    }
                    ConnectionState::Closed => {
                        received.peer_closed = true;
                        true
                    }
                    // Early data is not enabled in the configs netpoll builds; anything else
                    // (new states in later rustls) waits for more input.
                    _ => true,
                };
                Ok::<_, TlsError>((discard, done))
            })?;
            *consumed += discard;
            if became_established {
                self.established = true;
                if !self.early.is_empty() {
                    let early = std::mem::take(&mut self.early);
                    self.encrypt(&early, send)?;
                    received.wrote = true;
                }
            }
            if done {
                return Ok(received);
            }
        }
    }
}

/// Appends to `send` what `write` puts into a buffer: given `guess` bytes of room first, and
/// once more the room rustls says it needs (`Err(Some(n))`). On failure `send` is as it was.
fn append(
    send: &mut Vec<u8>,
    guess: usize,
    mut write: impl FnMut(&mut [u8]) -> Result<usize, Option<usize>>,
) -> Result<(), TlsError> {
    let at = send.len();
    send.resize(at + guess, 0);
    let written = match write(&mut send[at..]) {
        Err(Some(needed)) => {
            send.resize(at + needed, 0);
            write(&mut send[at..])
        }
        other => other,
    };
    match written {
        Ok(n) => {
            send.truncate(at + n);
            Ok(())
        }
        Err(_) => {
            send.truncate(at);
            Err(rustls::Error::EncryptError)
        }
    }
}

/// The room an encryption needed, if that was what failed it.
fn encrypt_room(e: EncryptError) -> Option<usize> {
    match e {
        EncryptError::InsufficientSize(s) => Some(s.required_size),
        _ => None,
    }
}

/// The room an encoding needed, if that was what failed it.
fn encode_room(e: EncodeError) -> Option<usize> {
    match e {
        EncodeError::InsufficientSize(s) => Some(s.required_size),
        _ => None,
    }
}

#[cfg(test)]
mod tests;
