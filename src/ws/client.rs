//! The client side of the WebSocket handshake, sans-IO where it can be: URL parsing, the
//! upgrade request, and checking the server's response (RFC 6455 §4.1).

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::sync::atomic::AtomicUsize;
use std::time::Duration;

use crate::core::conn::ConnId;

/// Options of one [`WsEngine::connect`](super::WsEngine::connect): the connection's state (handed
/// to the handler once the upgrade succeeds, or back with the error), subprotocols to offer,
/// extra request headers, and timeouts.
#[derive(Debug)]
pub struct Connect<S> {
    pub(crate) state: S,
    pub(crate) protocols: Vec<String>,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) timeout: Option<Duration>,
    pub(crate) local_addr: Option<SocketAddr>,
}

impl<S> Connect<S> {
    /// Connect with `state` for the connection.
    pub fn new(state: S) -> Self {
        Connect {
            state,
            protocols: Vec::new(),
            headers: Vec::new(),
            timeout: None,
            local_addr: None,
        }
    }

    /// Offer a subprotocol (in order of preference). The server must pick one of the offered
    /// ones or none.
    pub fn protocol(mut self, p: impl Into<String>) -> Self {
        self.protocols.push(p.into());
        self
    }

    /// Add a request header (`Authorization`, `Origin`, cookies, ...).
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// TCP connect timeout (default: the engine's `connect_timeout`). The handshake after it
    /// is bounded by the builder's `handshake_timeout`.
    pub fn timeout(mut self, t: Duration) -> Self {
        self.timeout = Some(t);
        self
    }

    /// Local address to bind before connecting (to spread load clients over source
    /// addresses).
    pub fn local_addr(mut self, addr: SocketAddr) -> Self {
        self.local_addr = Some(addr);
        self
    }
}

/// Why a client connection did not become a WebSocket. Given to
/// [`WsHandler::on_connect_error`](super::WsHandler::on_connect_error) with the connection's
/// state.
#[derive(Debug)]
#[non_exhaustive]
pub enum ConnectError {
    /// The TCP connection failed (refused, unreachable, timed out, reset).
    Io(io::Error),
    /// The server answered with another status than `101 Switching Protocols`.
    Status(u16),
    /// The response is not a valid upgrade: what is wrong with it.
    Handshake(&'static str),
    /// The server did not complete the handshake within `handshake_timeout`.
    Timeout,
    /// The connection closed during the handshake.
    Closed,
}

impl fmt::Display for ConnectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConnectError::Io(e) => write!(f, "connect failed: {e}"),
            ConnectError::Status(s) => write!(f, "server answered HTTP {s} instead of 101"),
            ConnectError::Handshake(why) => write!(f, "invalid upgrade response: {why}"),
            ConnectError::Timeout => f.write_str("handshake timed out"),
            ConnectError::Closed => f.write_str("connection closed during the handshake"),
        }
    }
}

impl std::error::Error for ConnectError {}

/// A client connection waiting for the server's `101`.
pub(crate) struct Pending<S> {
    pub(crate) state: S,
    pub(crate) accept: String,
    pub(crate) protocols: Vec<String>,
}

/// Client handshakes in progress, shared by the [`WsEngine`](super::WsEngine) and its pollers.
pub(crate) struct Clients<S> {
    /// Checked before taking the lock, so servers that never dial never lock.
    pub(crate) count: AtomicUsize,
    pub(crate) pending: Mutex<HashMap<ConnId, Pending<S>>>,
}

impl<S> Default for Clients<S> {
    fn default() -> Self {
        Clients {
            count: AtomicUsize::new(0),
            pending: Mutex::new(HashMap::new()),
        }
    }
}

/// A parsed `ws://` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct WsUrl {
    /// `host` or `host:port` as the `Host` header carries it.
    pub(crate) authority: String,
    pub(crate) host: String,
    pub(crate) port: u16,
    /// Path and query, at least `/`.
    pub(crate) target: String,
}

/// Parses `ws://host[:port][/path][?query]` (IPv6 hosts in brackets).
pub(crate) fn parse_url(url: &str) -> Result<WsUrl, String> {
    let rest = if let Some(r) = url.strip_prefix("ws://") {
        r
    } else if url.starts_with("wss://") {
        return Err("wss:// needs TLS, which netpoll does not have yet".into());
    } else {
        return Err(format!("not a ws:// URL: {url}"));
    };
    let (authority, target) = match rest.find(['/', '?']) {
        Some(i) if rest.as_bytes()[i] == b'/' => (&rest[..i], rest[i..].to_string()),
        Some(i) => (&rest[..i], format!("/{}", &rest[i..])),
        None => (rest, "/".to_string()),
    };
    if authority.is_empty() || authority.contains('@') {
        return Err(format!("bad host in {url}"));
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (h, after) = v6
            .split_once(']')
            .ok_or(format!("bad IPv6 host in {url}"))?;
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse().map_err(|_| format!("bad port in {url}"))?,
            None if after.is_empty() => 80,
            None => return Err(format!("bad host in {url}")),
        };
        (h.to_string(), port)
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (
                h.to_string(),
                p.parse().map_err(|_| format!("bad port in {url}"))?,
            ),
            None => (authority.to_string(), 80),
        }
    };
    Ok(WsUrl {
        authority: authority.to_string(),
        host,
        port,
        target,
    })
}

/// The upgrade request for `url` with `key`.
pub(crate) fn request(
    url: &WsUrl,
    key: &str,
    protocols: &[String],
    headers: &[(String, String)],
) -> String {
    use std::fmt::Write as _;
    let mut s = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n",
        url.target, url.authority
    );
    if !protocols.is_empty() {
        let _ = write!(s, "Sec-WebSocket-Protocol: {}\r\n", protocols.join(", "));
    }
    for (k, v) in headers {
        let _ = write!(s, "{k}: {v}\r\n");
    }
    s.push_str("\r\n");
    s
}

/// The outcome of reading the server's response.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Response {
    /// Not complete yet.
    Partial,
    /// A valid upgrade of `len` bytes (frames may follow), with the chosen subprotocol.
    Upgraded {
        len: usize,
        protocol: Option<String>,
    },
}

/// Checks the server's response against what was asked (RFC 6455 §4.1, client side).
pub(crate) fn check_response(
    data: &[u8],
    accept: &str,
    offered: &[String],
) -> Result<Response, ConnectError> {
    let mut headers = [httparse::EMPTY_HEADER; super::handshake::MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    let len = match resp.parse(data) {
        Ok(httparse::Status::Partial) => return Ok(Response::Partial),
        Ok(httparse::Status::Complete(len)) => len,
        Err(_) => return Err(ConnectError::Handshake("not an HTTP response")),
    };
    let code = resp.code.unwrap_or(0);
    if code != 101 {
        return Err(ConnectError::Status(code));
    }
    let header = |name: &str| {
        resp.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .and_then(|h| std::str::from_utf8(h.value).ok())
            .map(str::trim)
    };
    let has_token = |v: Option<&str>, t: &str| {
        v.is_some_and(|v| v.split(',').any(|x| x.trim().eq_ignore_ascii_case(t)))
    };
    if !has_token(header("upgrade"), "websocket") {
        return Err(ConnectError::Handshake("missing Upgrade: websocket"));
    }
    if !has_token(header("connection"), "upgrade") {
        return Err(ConnectError::Handshake("missing Connection: Upgrade"));
    }
    if header("sec-websocket-accept") != Some(accept) {
        return Err(ConnectError::Handshake("wrong Sec-WebSocket-Accept"));
    }
    if header("sec-websocket-extensions").is_some_and(|v| !v.is_empty()) {
        return Err(ConnectError::Handshake(
            "server chose an extension nobody offered",
        ));
    }
    let protocol = match header("sec-websocket-protocol") {
        None | Some("") => None,
        Some(p) if offered.iter().any(|o| o == p) => Some(p.to_string()),
        Some(_) => {
            return Err(ConnectError::Handshake(
                "server chose a subprotocol nobody offered",
            ));
        }
    };
    Ok(Response::Upgraded { len, protocol })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let u = parse_url("ws://example.com:9001/chat?room=1").unwrap();
        assert_eq!(
            (
                u.host.as_str(),
                u.port,
                u.target.as_str(),
                u.authority.as_str()
            ),
            ("example.com", 9001, "/chat?room=1", "example.com:9001")
        );
        let u = parse_url("ws://localhost").unwrap();
        assert_eq!((u.port, u.target.as_str()), (80, "/"));
        let u = parse_url("ws://[::1]:8080?x").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.target.as_str()),
            ("::1", 8080, "/?x")
        );
        assert!(parse_url("wss://x").unwrap_err().contains("TLS"));
        assert!(parse_url("http://x").is_err());
        assert!(parse_url("ws://x:notaport/").is_err());
        assert!(parse_url("ws:///path").is_err());
    }

    const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
    const ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

    fn resp(extra: &str) -> String {
        format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Accept: {ACCEPT}\r\n{extra}\r\n"
        )
    }

    #[test]
    fn responses() {
        let req = request(
            &parse_url("ws://h:1/p").unwrap(),
            KEY,
            &["chat".into()],
            &[],
        );
        assert!(req.starts_with("GET /p HTTP/1.1\r\nHost: h:1\r\n"));
        assert!(req.contains("Sec-WebSocket-Protocol: chat\r\n"));
        let offered = vec!["chat".to_string()];
        let ok = resp("Sec-WebSocket-Protocol: chat\r\n");
        assert_eq!(
            check_response(ok.as_bytes(), ACCEPT, &offered).unwrap(),
            Response::Upgraded {
                len: ok.len(),
                protocol: Some("chat".into())
            }
        );
        assert_eq!(
            check_response(&ok.as_bytes()[..20], ACCEPT, &offered).unwrap(),
            Response::Partial
        );
        let err = |r: &str| check_response(r.as_bytes(), ACCEPT, &offered).unwrap_err();
        assert!(matches!(
            err("HTTP/1.1 404 Not Found\r\n\r\n"),
            ConnectError::Status(404)
        ));
        assert!(matches!(
            err(&resp("").replace(ACCEPT, "AAAA")),
            ConnectError::Handshake("wrong Sec-WebSocket-Accept")
        ));
        assert!(matches!(
            err("garbage\x01\r\n\r\n"),
            ConnectError::Handshake(_)
        ));
        assert!(matches!(
            err(&resp("Sec-WebSocket-Protocol: other\r\n")),
            ConnectError::Handshake(_)
        ));
        assert!(matches!(
            err(&resp("").replace("Upgrade: websocket\r\n", "")),
            ConnectError::Handshake(_)
        ));
    }
}
