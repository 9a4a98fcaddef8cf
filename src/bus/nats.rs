//! The NATS core protocol, client side, sans-IO: the server's operations read in place from
//! the bytes received (without allocating), the client's encoded.
//!
//! A bus needs `INFO` (ignored), `MSG`, `PING` (answered), `PONG`, `+OK` and `-ERR` from the
//! server, and sends `CONNECT`, `SUB`, `PUB`, `PING` and `PONG`. No maintained parser crate
//! for this protocol stands apart from the official client (which needs tokio), and the
//! protocol is a handful of text lines: written out here, bounded (a line of at most 64 KiB, a
//! payload of at most `max_payload`) and fuzzed.
//!
//! ```
//! use netpoll::bus::nats::{Op, read_op};
//!
//! let (op, used) = read_op(b"MSG room 1 5\r\nhello\r\n", 1024).unwrap().unwrap();
//! assert_eq!(op, Op::Msg { subject: b"room", payload: b"hello" });
//! assert_eq!(used, 21);
//! ```

use std::fmt;

/// One operation from the server, borrowing the received bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op<'a> {
    /// `INFO {...}`: the server's description (ignored).
    Info,
    /// `MSG <subject> <sid> [reply-to] <#bytes>` and its payload.
    Msg {
        /// The subject it was published on.
        subject: &'a [u8],
        /// The payload.
        payload: &'a [u8],
    },
    /// `PING`: to be answered with `PONG`.
    Ping,
    /// `PONG`: the answer to our `PING`.
    Pong,
    /// `+OK` (only in verbose mode, which a bus does not ask for).
    Ok,
    /// `-ERR '...'`, with its text.
    Err(&'a [u8]),
}

/// Why the bytes received are not an operation this reader accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NatsError {
    /// A line that is not a known operation, or a bad `MSG` line.
    Malformed(&'static str),
    /// A payload longer than allowed.
    TooLong(usize),
}

impl fmt::Display for NatsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NatsError::Malformed(why) => write!(f, "malformed NATS operation: {why}"),
            NatsError::TooLong(n) => write!(f, "NATS payload of {n} bytes over the limit"),
        }
    }
}

impl std::error::Error for NatsError {}

/// Longest line accepted (an `INFO` with a long list of cluster URLs fits).
const MAX_LINE: usize = 64 * 1024;

/// Reads the first operation in `buf`: the operation and the bytes it took, `None` while it
/// is incomplete, or why it cannot be read. A payload longer than `max_payload` is refused as
/// soon as its `MSG` line is read.
///
/// # Errors
/// [`NatsError`] for bytes that are not a server operation.
pub fn read_op(buf: &[u8], max_payload: usize) -> Result<Option<(Op<'_>, usize)>, NatsError> {
    let Some(end) = buf.iter().take(MAX_LINE + 2).position(|&b| b == b'\n') else {
        if buf.len() > MAX_LINE {
            return Err(NatsError::Malformed("line too long"));
        }
        return Ok(None);
    };
    let line = buf[..end].strip_suffix(b"\r").unwrap_or(&buf[..end]);
    let next = end + 1;
    let (name, args) = match line.iter().position(|b| b.is_ascii_whitespace()) {
        Some(i) => (&line[..i], &line[i + 1..]),
        None => (line, &line[line.len()..]),
    };
    let op = if name.eq_ignore_ascii_case(b"MSG") {
        let mut parts = args
            .split(|b| b.is_ascii_whitespace())
            .filter(|p| !p.is_empty());
        let (subject, _sid) = match (parts.next(), parts.next()) {
            (Some(s), Some(i)) => (s, i),
            _ => return Err(NatsError::Malformed("MSG without subject and sid")),
        };
        // The size is the last argument, after an optional reply subject.
        let len = match (parts.next(), parts.next(), parts.next()) {
            (Some(len), None, None) | (Some(_), Some(len), None) => std::str::from_utf8(len)
                .ok()
                .and_then(|s| s.parse::<usize>().ok())
                .ok_or(NatsError::Malformed("MSG size is not a number"))?,
            _ => return Err(NatsError::Malformed("MSG with a bad argument count")),
        };
        if len > max_payload {
            return Err(NatsError::TooLong(len));
        }
        if buf.len() < next + len + 2 {
            return Ok(None);
        }
        if &buf[next + len..next + len + 2] != b"\r\n" {
            return Err(NatsError::Malformed("MSG payload not followed by CRLF"));
        }
        return Ok(Some((
            Op::Msg {
                subject,
                payload: &buf[next..next + len],
            },
            next + len + 2,
        )));
    } else if name.eq_ignore_ascii_case(b"PING") {
        Op::Ping
    } else if name.eq_ignore_ascii_case(b"PONG") {
        Op::Pong
    } else if name.eq_ignore_ascii_case(b"INFO") {
        Op::Info
    } else if name.eq_ignore_ascii_case(b"+OK") {
        Op::Ok
    } else if name.eq_ignore_ascii_case(b"-ERR") {
        Op::Err(args)
    } else {
        return Err(NatsError::Malformed("unknown operation"));
    };
    Ok(Some((op, next)))
}

/// True for a subject a bus may use: dot-separated tokens, none empty, no whitespace, no
/// wildcard.
pub fn valid_subject(subject: &[u8]) -> bool {
    subject.split(|&b| b == b'.').all(|token| {
        !token.is_empty()
            && !token
                .iter()
                .any(|b| b.is_ascii_whitespace() || *b == b'*' || *b == b'>')
    })
}

/// Appends `CONNECT` (not verbose, no headers; credentials if any).
pub(crate) fn encode_connect(out: &mut Vec<u8>, user: Option<&str>, pass: Option<&str>) {
    out.extend_from_slice(br#"CONNECT {"verbose":false,"pedantic":false,"lang":"rust","name":"netpoll-bus","protocol":0"#);
    for (key, value) in [("user", user), ("pass", pass)] {
        if let Some(v) = value {
            out.extend_from_slice(format!(",\"{key}\":").as_bytes());
            json_string(out, v);
        }
    }
    out.extend_from_slice(b"}\r\n");
}

fn json_string(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    for c in s.chars() {
        match c {
            '"' => out.extend_from_slice(b"\\\""),
            '\\' => out.extend_from_slice(b"\\\\"),
            c if (c as u32) < 0x20 => {
                out.extend_from_slice(format!("\\u{:04x}", c as u32).as_bytes())
            }
            c => {
                let mut buf = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            }
        }
    }
    out.push(b'"');
}

/// Appends `SUB <subject> <sid>`.
pub(crate) fn encode_sub(out: &mut Vec<u8>, subject: &[u8], sid: usize) {
    out.extend_from_slice(b"SUB ");
    out.extend_from_slice(subject);
    out.extend_from_slice(format!(" {sid}\r\n").as_bytes());
}

/// Appends the line of `PUB <subject> <len>`; the caller appends the payload, then
/// [`end_pub`].
pub(crate) fn encode_pub_head(out: &mut Vec<u8>, subject: &[u8], len: usize) {
    out.extend_from_slice(b"PUB ");
    out.extend_from_slice(subject);
    out.push(b' ');
    super::resp::push_len(out, len);
}

/// Ends what [`encode_pub_head`] began.
pub(crate) fn end_pub(out: &mut Vec<u8>) {
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_operations_are_read_in_place() {
        let input = b"INFO {\"server_id\":\"x\"}\r\nPING\r\npong\r\n+OK\r\n-ERR 'Authorization Violation'\r\n\
            MSG a.b 7 inbox.1 3\r\nabc\r\nMSG room 1 0\r\n\r\n";
        let mut ops = Vec::new();
        let mut at = 0;
        while let Some((op, n)) = read_op(&input[at..], 100).unwrap() {
            ops.push(op);
            at += n;
        }
        assert_eq!(at, input.len());
        assert_eq!(
            ops,
            [
                Op::Info,
                Op::Ping,
                Op::Pong,
                Op::Ok,
                Op::Err(b"'Authorization Violation'"),
                Op::Msg {
                    subject: b"a.b",
                    payload: b"abc"
                },
                Op::Msg {
                    subject: b"room",
                    payload: b""
                },
            ]
        );
    }

    #[test]
    fn every_prefix_is_incomplete_and_garbage_is_an_error() {
        let msg = b"MSG room 12 11\r\nhello world\r\n";
        for n in 0..msg.len() {
            assert_eq!(read_op(&msg[..n], 100), Ok(None), "prefix of {n}");
        }
        for bad in [
            &b"WHAT\r\n"[..],
            b"MSG room\r\n",
            b"MSG room 1 x\r\n",
            b"MSG room 1 a b c\r\n",
            b"MSG room 1 3\r\nabcd\r\n",
        ] {
            assert!(
                read_op(bad, 100).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        assert_eq!(
            read_op(b"MSG r 1 5000\r\n", 100),
            Err(NatsError::TooLong(5000))
        );
        assert!(read_op(&vec![b'I'; MAX_LINE + 10], 100).is_err());
    }

    #[test]
    fn client_operations() {
        let mut out = Vec::new();
        encode_connect(&mut out, Some("bob"), Some("p\"w"));
        let line = String::from_utf8(out.clone()).unwrap();
        assert!(
            line.starts_with("CONNECT {") && line.ends_with("}\r\n"),
            "{line}"
        );
        assert!(line.contains(r#""user":"bob","pass":"p\"w""#), "{line}");
        out.clear();
        encode_sub(&mut out, b"room", 3);
        encode_pub_head(&mut out, b"room", 5);
        out.extend_from_slice(b"hello");
        end_pub(&mut out);
        assert_eq!(out, b"SUB room 3\r\nPUB room 5\r\nhello\r\n");
        assert!(valid_subject(b"chat.lobby") && valid_subject(b"netpoll:broadcast"));
        assert!(!valid_subject(b"a b") && !valid_subject(b"") && !valid_subject(b"a.*"));
        for empty_token in [&b"a..b"[..], b".a", b"a."] {
            assert!(!valid_subject(empty_token));
        }
    }
}
