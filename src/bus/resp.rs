//! The part of RESP2 (the Redis protocol) a pub/sub client needs, sans-IO: commands encoded
//! into a buffer, and replies read in place from the bytes received, without allocating.
//!
//! A bus sees only simple strings (`+OK`), errors, integers (`PUBLISH`'s count), bulk strings
//! and arrays of at most [`MAX_ITEMS`] of those (`message` and `subscribe` pushes). Anything
//! else is an error, so a broker that sends garbage cannot make the reader recurse, allocate or
//! wait for more than `max_bulk` bytes. (General RESP crates parse nested arrays
//! recursively, without a depth limit, and allocate a vector per array: the reasons this is
//! written out here.)
//!
//! ```
//! use netpoll::bus::resp::{Item, encode_command, read_reply};
//!
//! let mut out = Vec::new();
//! encode_command(&mut out, &[b"PUBLISH", b"room", b"hi"]);
//! assert_eq!(out, b"*3\r\n$7\r\nPUBLISH\r\n$4\r\nroom\r\n$2\r\nhi\r\n");
//!
//! let push = b"*3\r\n$7\r\nmessage\r\n$4\r\nroom\r\n$2\r\nhi\r\n";
//! let (reply, used) = read_reply(push, 1024).unwrap().unwrap();
//! assert_eq!(used, push.len());
//! let [kind, channel, payload] = reply.items() else { panic!() };
//! assert_eq!((kind.bytes(), channel.bytes()), (Some(&b"message"[..]), Some(&b"room"[..])));
//! assert_eq!(*payload, Item::Bulk(Some(b"hi")));
//! ```

use std::fmt;

/// The most items an array may have here (a pub/sub push has three).
pub const MAX_ITEMS: usize = 4;

/// One reply or push, borrowing the received bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply<'a> {
    /// `+...`
    Simple(&'a [u8]),
    /// `-...`
    Error(&'a [u8]),
    /// `:n`
    Integer(i64),
    /// `$n` (`None`: the null bulk string, `$-1`).
    Bulk(Option<&'a [u8]>),
    /// `*n` of at most [`MAX_ITEMS`] non-array items.
    Array {
        /// The items; the first `len` are set.
        items: [Item<'a>; MAX_ITEMS],
        /// How many items the array has.
        len: usize,
    },
    /// `*-1`
    NullArray,
}

/// An array's item: a reply that is not an array.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Item<'a> {
    /// `+...`
    Simple(&'a [u8]),
    /// `-...`
    Error(&'a [u8]),
    /// `:n`
    Integer(i64),
    /// `$n` (`None`: the null bulk string).
    Bulk(Option<&'a [u8]>),
}

impl<'a> Item<'a> {
    /// The bytes of a bulk or simple string.
    pub fn bytes(&self) -> Option<&'a [u8]> {
        match *self {
            Item::Bulk(b) => b,
            Item::Simple(s) => Some(s),
            _ => None,
        }
    }
}

impl<'a> Reply<'a> {
    /// An array's items (empty for anything else).
    pub fn items(&self) -> &[Item<'a>] {
        match self {
            Reply::Array { items, len } => &items[..*len],
            _ => &[],
        }
    }
}

/// Why the bytes received are not a reply this reader accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RespError {
    /// Not RESP2 (an unknown type byte, a bad length, a missing CRLF).
    Malformed(&'static str),
    /// A bulk string longer than allowed.
    TooLong(usize),
    /// Valid RESP, but not something a pub/sub client expects (nested arrays, long arrays).
    Unexpected(&'static str),
}

impl fmt::Display for RespError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RespError::Malformed(why) => write!(f, "malformed RESP: {why}"),
            RespError::TooLong(n) => write!(f, "RESP bulk string of {n} bytes over the limit"),
            RespError::Unexpected(why) => write!(f, "unexpected RESP reply: {why}"),
        }
    }
}

impl std::error::Error for RespError {}

/// Longest line (simple string, error, integer, length) accepted.
const MAX_LINE: usize = 64 * 1024;

/// Reads the first reply in `buf`: the reply and the bytes it took, `None` while it is
/// incomplete (read more and call again with all of it), or why it cannot be read. Bulk
/// strings longer than `max_bulk` are refused as soon as their length is read.
///
/// # Errors
/// [`RespError`] for bytes that are not RESP2 or not a reply a pub/sub client expects.
pub fn read_reply(buf: &[u8], max_bulk: usize) -> Result<Option<(Reply<'_>, usize)>, RespError> {
    let Some((first, mut at)) = read_item(buf, 0, max_bulk, true)? else {
        return Ok(None);
    };
    let Reply::Array { mut items, len } = first else {
        return Ok(Some((first, at)));
    };
    for item in items.iter_mut().take(len) {
        let Some((r, next)) = read_item(buf, at, max_bulk, false)? else {
            return Ok(None);
        };
        *item = match r {
            Reply::Simple(b) => Item::Simple(b),
            Reply::Error(b) => Item::Error(b),
            Reply::Integer(n) => Item::Integer(n),
            Reply::Bulk(b) => Item::Bulk(b),
            Reply::Array { .. } | Reply::NullArray => {
                return Err(RespError::Unexpected("nested array"));
            }
        };
        at = next;
    }
    Ok(Some((Reply::Array { items, len }, at)))
}

/// One item at `at`: for an array header (allowed only at the top), the array with its
/// length set and its items still to be read.
fn read_item(
    buf: &[u8],
    at: usize,
    max_bulk: usize,
    top: bool,
) -> Result<Option<(Reply<'_>, usize)>, RespError> {
    let Some(&kind) = buf.get(at) else {
        return Ok(None);
    };
    let Some((line, next)) = line(buf, at + 1)? else {
        return Ok(None);
    };
    let reply = match kind {
        b'+' => Reply::Simple(line),
        b'-' => Reply::Error(line),
        b':' => Reply::Integer(integer(line)?),
        b'$' => {
            let n = integer(line)?;
            if n == -1 {
                return Ok(Some((Reply::Bulk(None), next)));
            }
            let n = usize::try_from(n).map_err(|_| RespError::Malformed("negative length"))?;
            if n > max_bulk {
                return Err(RespError::TooLong(n));
            }
            let end = next + n;
            if buf.len() < end + 2 {
                return Ok(None);
            }
            if &buf[end..end + 2] != b"\r\n" {
                return Err(RespError::Malformed("bulk string not followed by CRLF"));
            }
            return Ok(Some((Reply::Bulk(Some(&buf[next..end])), end + 2)));
        }
        b'*' if !top => return Err(RespError::Unexpected("nested array")),
        b'*' => {
            let n = integer(line)?;
            if n == -1 {
                return Ok(Some((Reply::NullArray, next)));
            }
            let len = usize::try_from(n).map_err(|_| RespError::Malformed("negative length"))?;
            if len > MAX_ITEMS {
                return Err(RespError::Unexpected("array too long"));
            }
            Reply::Array {
                items: [Item::Bulk(None); MAX_ITEMS],
                len,
            }
        }
        _ => return Err(RespError::Malformed("unknown type byte")),
    };
    Ok(Some((reply, next)))
}

/// The line starting at `at` (without its CRLF) and where the next one starts.
fn line(buf: &[u8], at: usize) -> Result<Option<(&[u8], usize)>, RespError> {
    let rest = buf.get(at..).unwrap_or_default();
    match rest.iter().take(MAX_LINE + 1).position(|&b| b == b'\r') {
        Some(i) => match rest.get(i + 1) {
            None => Ok(None),
            Some(b'\n') => Ok(Some((&rest[..i], at + i + 2))),
            Some(_) => Err(RespError::Malformed("CR not followed by LF")),
        },
        None if rest.len() > MAX_LINE => Err(RespError::Malformed("line too long")),
        None => Ok(None),
    }
}

fn integer(line: &[u8]) -> Result<i64, RespError> {
    std::str::from_utf8(line)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or(RespError::Malformed("not an integer"))
}

/// Appends a command (an array of bulk strings) to `out`.
pub fn encode_command(out: &mut Vec<u8>, args: &[&[u8]]) {
    out.push(b'*');
    push_len(out, args.len());
    for arg in args {
        out.push(b'$');
        push_len(out, arg.len());
        out.extend_from_slice(arg);
        out.extend_from_slice(b"\r\n");
    }
}

/// Appends a command of `args` then one more argument of `len` bytes whose bytes the caller
/// appends next, followed by [`end_arg`] (to write a large last argument in place).
pub(crate) fn encode_command_head(out: &mut Vec<u8>, args: &[&[u8]], len: usize) {
    out.push(b'*');
    push_len(out, args.len() + 1);
    for arg in args {
        out.push(b'$');
        push_len(out, arg.len());
        out.extend_from_slice(arg);
        out.extend_from_slice(b"\r\n");
    }
    out.push(b'$');
    push_len(out, len);
}

/// Ends the argument [`encode_command_head`] began.
pub(crate) fn end_arg(out: &mut Vec<u8>) {
    out.extend_from_slice(b"\r\n");
}

/// Appends `n` in decimal and a CRLF (both protocols' lengths end a line), without
/// allocating.
pub(crate) fn push_len(out: &mut Vec<u8>, n: usize) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    let mut n = n;
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(mut buf: &[u8]) -> Result<Vec<String>, RespError> {
        let mut out = Vec::new();
        while !buf.is_empty() {
            let Some((r, used)) = read_reply(buf, 1 << 20)? else {
                out.push("partial".into());
                break;
            };
            out.push(format!("{r:?}"));
            buf = &buf[used..];
        }
        Ok(out)
    }

    #[test]
    fn replies_of_every_kind_are_read_in_place() {
        let input = b"+OK\r\n-ERR wrong\r\n:42\r\n$-1\r\n$0\r\n\r\n*-1\r\n*0\r\n\
            *3\r\n$9\r\nsubscribe\r\n$4\r\nroom\r\n:1\r\n";
        let got = all(input).unwrap();
        assert_eq!(got.len(), 8, "{got:?}");
        let (r, _) = read_reply(b"*3\r\n$9\r\nsubscribe\r\n$4\r\nroom\r\n:1\r\n", 10)
            .unwrap()
            .unwrap();
        assert_eq!(
            r.items(),
            [
                Item::Bulk(Some(b"subscribe")),
                Item::Bulk(Some(b"room")),
                Item::Integer(1)
            ]
        );
        assert_eq!(
            read_reply(b"$5\r\nab\r\nc\r\n", 10).unwrap().unwrap().0,
            Reply::Bulk(Some(b"ab\r\nc")),
            "bulk strings are binary"
        );
    }

    #[test]
    fn every_prefix_of_a_reply_is_incomplete_not_an_error() {
        let push = b"*3\r\n$7\r\nmessage\r\n$4\r\nroom\r\n$11\r\nhello world\r\n";
        for n in 0..push.len() {
            assert_eq!(read_reply(&push[..n], 1024), Ok(None), "prefix of {n}");
        }
        assert!(read_reply(push, 1024).unwrap().is_some());
    }

    #[test]
    fn garbage_and_hostile_replies_are_errors() {
        for bad in [
            &b"?what\r\n"[..],
            b":12x\r\n",
            b"$abc\r\n",
            b"$-2\r\n",
            b"$3\r\nabcde\r\n",
            b"+OK\rX",
            b"*5\r\n",
            b"*1\r\n*1\r\n*1\r\n",
            b"*-5\r\n",
        ] {
            assert!(
                read_reply(bad, 1024).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        assert_eq!(
            read_reply(b"$2000\r\n", 1024),
            Err(RespError::TooLong(2000)),
            "refused at its length, before the bytes arrive"
        );
        // A line that never ends is refused once it is too long, not buffered forever.
        let endless = vec![b'+'; MAX_LINE + 10];
        assert!(read_reply(&endless, 1024).is_err());
        // Deep nesting does not recurse.
        let deep = b"*1\r\n".repeat(100_000);
        assert!(read_reply(&deep, 1024).is_err());
    }

    #[test]
    fn commands_are_arrays_of_bulk_strings() {
        let mut out = Vec::new();
        encode_command(&mut out, &[b"SUBSCRIBE", b"a", b""]);
        assert_eq!(out, b"*3\r\n$9\r\nSUBSCRIBE\r\n$1\r\na\r\n$0\r\n\r\n");
        let (r, used) = read_reply(&out, 100).unwrap().unwrap();
        assert_eq!(used, out.len());
        assert_eq!(r.items().len(), 3);
        let mut big = Vec::new();
        encode_command(&mut big, &[&vec![7u8; 12_345]]);
        assert!(big.starts_with(b"*1\r\n$12345\r\n"));
        let mut in_place = Vec::new();
        encode_command_head(&mut in_place, &[b"SUBSCRIBE", b"a"], 0);
        end_arg(&mut in_place);
        assert_eq!(
            in_place, out,
            "the same command, its last argument written in place"
        );
    }
}
