//! The HTTP/1.1 side of a WebSocket server, sans-IO: parse a request (with `httparse`), check
//! it is a valid upgrade (RFC 6455 §4.2.1), and write the `101` response (accept key from
//! tungstenite) or a plain HTTP one.

use std::fmt::Write as _;
use std::net::SocketAddr;

use bytes::Bytes;

/// Most request headers accepted; more is answered with 431.
pub(crate) const MAX_HEADERS: usize = 64;

/// A parsed HTTP request, as the upgrade hook sees it. Borrows the connection's input.
///
/// ```
/// use netpoll::ws::{Accept, Request, Upgrade};
///
/// // Upgrades on `/live` only: from our own pages, with a token, in `v2` if offered.
/// fn on_request(req: &Request<'_>) -> Upgrade<String> {
///     if req.path() != "/live" || !req.is_upgrade() {
///         return Upgrade::not_found();
///     }
///     if !req.origin_allowed(&["https://app.example"]) {
///         return Upgrade::reject(403); // another site's page, with our user's cookies
///     }
///     let token = req.header("authorization").and_then(|v| v.strip_prefix("Bearer "));
///     let Some(token) = token else {
///         return Upgrade::reject(401);
///     };
///     let accept = Accept::new(token.to_string());
///     if req.protocols().any(|p| p == "v2") {
///         accept.protocol("v2").into()
///     } else {
///         accept.into()
///     }
/// }
/// ```
#[derive(Debug)]
pub struct Request<'a> {
    method: &'a str,
    path: &'a str,
    query: Option<&'a str>,
    headers: &'a [httparse::Header<'a>],
    peer: SocketAddr,
}

impl<'a> Request<'a> {
    /// The method (`GET` for an upgrade).
    pub fn method(&self) -> &'a str {
        self.method
    }

    /// The path, without the query string.
    pub fn path(&self) -> &'a str {
        self.path
    }

    /// The query string after `?`, if any.
    pub fn query(&self) -> Option<&'a str> {
        self.query
    }

    /// The first value of the query parameter `name`, percent-decoded (`+` as a space;
    /// invalid UTF-8 replaced); `None` if it is absent.
    ///
    /// ```
    /// # use netpoll::ws::Request;
    /// # fn demo(req: &Request<'_>) {
    /// // GET /ws?nick=J%C3%BCrgen+K&room=1
    /// let nick = req.query_param("nick"); // Some("Jürgen K")
    /// # let _ = nick;
    /// # }
    /// ```
    pub fn query_param(&self, name: &str) -> Option<std::borrow::Cow<'a, str>> {
        self.query?.split('&').find_map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k) == name).then(|| percent_decode(v))
        })
    }

    /// The remote address.
    pub fn peer_addr(&self) -> SocketAddr {
        self.peer
    }

    /// The first header named `name` (case-insensitive), if it is valid UTF-8.
    pub fn header(&self, name: &str) -> Option<&'a str> {
        self.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .and_then(|h| std::str::from_utf8(h.value).ok())
    }

    /// How many headers named `name` (case-insensitive) the request has.
    pub(crate) fn header_count(&self, name: &str) -> usize {
        self.headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case(name))
            .count()
    }

    /// Every header as (name, raw value), in order.
    pub fn headers(&self) -> impl Iterator<Item = (&'a str, &'a [u8])> + '_ {
        self.headers.iter().map(|h| (h.name, h.value))
    }

    /// True if the request asks for a WebSocket upgrade (`Upgrade: websocket`).
    pub fn is_upgrade(&self) -> bool {
        self.header("upgrade")
            .is_some_and(|v| has_token(v, "websocket"))
    }

    /// The `Origin` header (browsers always send it).
    pub fn origin(&self) -> Option<&'a str> {
        self.header("origin")
    }

    /// True if the request has no `Origin` (not from a browser) or one of `allowed`
    /// (compared case-insensitively, e.g. `"https://example.com"`). Use it in the upgrade hook
    /// to stop other sites' pages from connecting with your users' cookies.
    pub fn origin_allowed(&self, allowed: &[&str]) -> bool {
        match self.origin() {
            None => true,
            Some(o) => allowed.iter().any(|a| a.eq_ignore_ascii_case(o)),
        }
    }

    /// The subprotocols the client offers (`Sec-WebSocket-Protocol`), in its order of
    /// preference.
    pub fn protocols(&self) -> impl Iterator<Item = &'a str> + '_ {
        self.headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case("sec-websocket-protocol"))
            .filter_map(|h| std::str::from_utf8(h.value).ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|p| !p.is_empty())
    }
}

/// True if the comma-separated header value `v` contains `token` (case-insensitive).
fn has_token(v: &str, token: &str) -> bool {
    v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// A plain HTTP response: for requests that are not upgrades (serve a page, say) or to refuse
/// one. Sent with `Content-Length` and `Connection: close`, then the connection closes.
///
/// ```
/// use netpoll::ws::{Accept, HttpResponse, Request, Upgrade};
///
/// // A health check on the WebSocket port; only `/ws` upgrades.
/// fn on_request(req: &Request<'_>) -> Upgrade<()> {
///     match req.path() {
///         "/health" => Upgrade::Respond(
///             HttpResponse::new(200)
///                 .header("Content-Type", "text/plain")
///                 .body("ok\n"),
///         ),
///         "/ws" => Accept::new(()).into(),
///         _ => Upgrade::not_found(),
///     }
/// }
///
/// assert_eq!(HttpResponse::new(503).body("busy\n").status(), 503);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpResponse {
    status: u16,
    headers: Vec<(String, String)>,
    body: Bytes,
}

impl HttpResponse {
    /// A response with `status` and an empty body.
    pub fn new(status: u16) -> Self {
        HttpResponse {
            status,
            headers: Vec::new(),
            body: Bytes::new(),
        }
    }

    /// Adds a header.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Sets the body. Without a `Content-Type` header of its own, a response with a body is
    /// sent as `text/plain; charset=utf-8`.
    pub fn body(mut self, body: impl Into<Bytes>) -> Self {
        self.body = body.into();
        self
    }

    /// The status code.
    pub fn status(&self) -> u16 {
        self.status
    }

    /// Serializes the status line and headers (the body goes separately, uncopied). A header
    /// that is not valid HTTP (a CR or LF in its value, say, which would let untrusted data
    /// add headers of its own) turns the response into a bare 500: an application bug must not
    /// become an injection.
    pub(crate) fn head(&self) -> String {
        if !headers_valid(&self.headers) {
            tracing::error!(
                status = self.status,
                "invalid header in an HTTP response; sending 500"
            );
            return HttpResponse::new(500).head();
        }
        let mut s = format!("HTTP/1.1 {} {}\r\n", self.status, reason(self.status));
        for (k, v) in &self.headers {
            let _ = write!(s, "{k}: {v}\r\n");
        }
        let typed = self
            .headers
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case("content-type"));
        if !self.body.is_empty() && !typed {
            s.push_str("Content-Type: text/plain; charset=utf-8\r\n");
        }
        let _ = write!(
            s,
            "Content-Length: {}\r\nConnection: close\r\n\r\n",
            self.body.len()
        );
        s
    }

    pub(crate) fn body_bytes(&self) -> &Bytes {
        if headers_valid(&self.headers) {
            &self.body
        } else {
            static EMPTY: Bytes = Bytes::new();
            &EMPTY
        }
    }
}

/// Decodes `%XX` escapes and `+` (a space, in query strings); borrows when there is nothing to
/// decode. A malformed escape is kept as it is.
fn percent_decode(s: &str) -> std::borrow::Cow<'_, str> {
    if !s.contains(['%', '+']) {
        return std::borrow::Cow::Borrowed(s);
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() && hex(b[i + 1]).is_some() && hex(b[i + 2]).is_some() => {
                out.push(hex(b[i + 1]).unwrap_or(0) << 4 | hex(b[i + 2]).unwrap_or(0));
                i += 2;
            }
            c => out.push(c),
        }
        i += 1;
    }
    std::borrow::Cow::Owned(String::from_utf8_lossy(&out).into_owned())
}

/// True if every (name, value) is a valid HTTP header (as `http` parses them).
pub(crate) fn headers_valid<'a>(headers: impl IntoIterator<Item = &'a (String, String)>) -> bool {
    use tungstenite::http::{HeaderName, HeaderValue};
    headers.into_iter().all(|(k, v)| {
        HeaderName::from_bytes(k.as_bytes()).is_ok() && HeaderValue::from_str(v).is_ok()
    })
}

/// The reason phrase for `status` (from `http`, through tungstenite).
fn reason(status: u16) -> &'static str {
    tungstenite::http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("Status")
}

/// Outcome of parsing the bytes received so far.
#[derive(Debug)]
pub(crate) enum Parsed<'a> {
    /// The request is not complete yet.
    Partial,
    /// A complete request of `len` bytes; frames may follow it in the same input.
    Request {
        /// The request.
        request: Request<'a>,
        /// Its length in the input.
        len: usize,
    },
    /// Not a valid HTTP request (or too many headers): answer with this response and close.
    Invalid(HttpResponse),
}

/// Parses a request from `data` into `headers` storage.
pub(crate) fn parse_request<'a>(
    data: &'a [u8],
    headers: &'a mut [httparse::Header<'a>; MAX_HEADERS],
    peer: SocketAddr,
) -> Parsed<'a> {
    let mut req = httparse::Request::new(headers);
    match req.parse(data) {
        Ok(httparse::Status::Partial) => Parsed::Partial,
        Ok(httparse::Status::Complete(len)) => {
            let target = req.path.unwrap_or("/");
            let (path, query) = match target.split_once('?') {
                Some((p, q)) => (p, Some(q)),
                None => (target, None),
            };
            if req.version != Some(1) {
                return Parsed::Invalid(HttpResponse::new(400).body("HTTP/1.1 required\n"));
            }
            Parsed::Request {
                request: Request {
                    method: req.method.unwrap_or(""),
                    path,
                    query,
                    headers: req.headers,
                    peer,
                },
                len,
            }
        }
        Err(httparse::Error::TooManyHeaders) => Parsed::Invalid(HttpResponse::new(431)),
        Err(_) => Parsed::Invalid(HttpResponse::new(400).body("malformed request\n")),
    }
}

/// Checks an upgrade request (RFC 6455 §4.2.1) and returns its `Sec-WebSocket-Key`, or the
/// response to refuse it with.
pub(crate) fn check_upgrade<'a>(req: &Request<'a>) -> Result<&'a str, HttpResponse> {
    if req.method != "GET" {
        return Err(HttpResponse::new(405).header("Allow", "GET"));
    }
    // One Host (RFC 7230 §5.4), one key and one version (RFC 6455 §11.3.1, §11.3.5): a request
    // that says two things is refused rather than read one way.
    for (name, text) in [
        ("host", "one Host header\n"),
        ("sec-websocket-key", "one Sec-WebSocket-Key header\n"),
        (
            "sec-websocket-version",
            "one Sec-WebSocket-Version header\n",
        ),
    ] {
        if req.header_count(name) > 1 {
            return Err(HttpResponse::new(400).body(text));
        }
    }
    if req.header("host").is_none() {
        return Err(HttpResponse::new(400).body("missing Host\n"));
    }
    if !req
        .header("connection")
        .is_some_and(|v| has_token(v, "upgrade"))
    {
        return Err(HttpResponse::new(400).body("Connection must include Upgrade\n"));
    }
    if req.header("sec-websocket-version") != Some("13") {
        return Err(HttpResponse::new(426).header("Sec-WebSocket-Version", "13"));
    }
    match req.header("sec-websocket-key").map(str::trim) {
        Some(key) if is_nonce(key) => Ok(key),
        _ => Err(HttpResponse::new(400).body("bad Sec-WebSocket-Key\n")),
    }
}

/// True if `key` is base64 of 16 bytes (RFC 6455 §4.2.1 point 5): 22 characters of the base64
/// alphabet, the last carrying only 2 bits (so the 4 it cannot use are 0), then `==`.
fn is_nonce(key: &str) -> bool {
    let b = key.as_bytes();
    let sextet = |c: u8| match c {
        b'A'..=b'Z' => Some(c - b'A'),
        b'a'..=b'z' => Some(c - b'a' + 26),
        b'0'..=b'9' => Some(c - b'0' + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        _ => None,
    };
    b.len() == 24
        && b.ends_with(b"==")
        && b[..22].iter().all(|&c| sextet(c).is_some())
        && sextet(b[21]).is_some_and(|v| v & 0x0f == 0)
}

/// The `101 Switching Protocols` response for `key`, with an optional subprotocol and extra
/// headers; `None` if the subprotocol or a header is not valid HTTP (the caller answers 500).
pub(crate) fn accept_response(
    key: &str,
    protocol: Option<&str>,
    extension: Option<&str>,
    extra: &[(String, String)],
) -> Option<String> {
    let protocol_ok = protocol
        .is_none_or(|p| tungstenite::http::HeaderValue::from_str(p).is_ok() && !p.is_empty());
    if !protocol_ok || !headers_valid(extra) {
        return None;
    }
    let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
    let mut s = String::with_capacity(160);
    s.push_str("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n");
    let _ = write!(s, "Sec-WebSocket-Accept: {accept}\r\n");
    if let Some(p) = protocol {
        let _ = write!(s, "Sec-WebSocket-Protocol: {p}\r\n");
    }
    if let Some(e) = extension {
        let _ = write!(s, "Sec-WebSocket-Extensions: {e}\r\n");
    }
    for (k, v) in extra {
        let _ = write!(s, "{k}: {v}\r\n");
    }
    s.push_str("\r\n");
    Some(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PEER: &str = "127.0.0.1:5000";

    fn parse(raw: &[u8]) -> Result<(usize, Result<String, u16>), u16> {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        match parse_request(raw, &mut headers, PEER.parse().unwrap()) {
            Parsed::Partial => Err(0),
            Parsed::Invalid(r) => Err(r.status()),
            Parsed::Request { request, len } => Ok((
                len,
                check_upgrade(&request)
                    .map(str::to_string)
                    .map_err(|r| r.status()),
            )),
        }
    }

    const GOOD: &str = "GET /chat?room=1 HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\
        Connection: keep-alive, Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
        Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: chat, superchat\r\n\
        Origin: https://Example.com\r\n\r\n";

    #[test]
    fn a_valid_upgrade_parses_and_gets_the_rfc_accept_key() {
        let (len, key) = parse(GOOD.as_bytes()).unwrap();
        assert_eq!(len, GOOD.len());
        let key = key.unwrap();
        let resp =
            accept_response(&key, Some("chat"), None, &[("X-A".into(), "1".into())]).unwrap();
        // The example from RFC 6455 §1.3.
        assert!(resp.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"));
        assert!(
            resp.contains("Sec-WebSocket-Protocol: chat\r\n") && resp.ends_with("X-A: 1\r\n\r\n")
        );
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let Parsed::Request { request, .. } =
            parse_request(GOOD.as_bytes(), &mut headers, PEER.parse().unwrap())
        else {
            panic!()
        };
        assert_eq!((request.path(), request.query()), ("/chat", Some("room=1")));
        assert!(request.is_upgrade());
        assert_eq!(
            request.protocols().collect::<Vec<_>>(),
            ["chat", "superchat"]
        );
        assert!(request.origin_allowed(&["https://example.com"]));
        assert!(!request.origin_allowed(&["https://evil.example"]));
    }

    #[test]
    fn query_parameters_are_found_and_percent_decoded() {
        let raw = "GET /ws?nick=J%C3%BCrgen+K&empty=&flag&bad=%zz%4&room=1&room=2 HTTP/1.1\r\n\r\n";
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let Parsed::Request { request, .. } =
            parse_request(raw.as_bytes(), &mut headers, PEER.parse().unwrap())
        else {
            panic!()
        };
        assert_eq!(request.query_param("nick").as_deref(), Some("Jürgen K"));
        assert_eq!(request.query_param("empty").as_deref(), Some(""));
        assert_eq!(request.query_param("flag").as_deref(), Some(""));
        assert_eq!(request.query_param("bad").as_deref(), Some("%zz%4"));
        assert_eq!(
            request.query_param("room").as_deref(),
            Some("1"),
            "the first"
        );
        assert_eq!(request.query_param("missing"), None);
        assert!(matches!(
            request.query_param("room"),
            Some(std::borrow::Cow::Borrowed(_))
        ));
    }

    #[test]
    fn a_body_without_a_content_type_is_plain_text() {
        let plain = HttpResponse::new(200).body("hi").head();
        assert!(
            plain.contains("Content-Type: text/plain; charset=utf-8\r\n"),
            "{plain}"
        );
        let typed = HttpResponse::new(200)
            .header("content-type", "text/html")
            .body("<p>")
            .head();
        assert!(!typed.contains("text/plain"), "{typed}");
        assert!(!HttpResponse::new(204).head().contains("Content-Type"));
    }

    #[test]
    fn partial_and_broken_requests() {
        assert_eq!(parse(&GOOD.as_bytes()[..40]), Err(0));
        assert_eq!(parse(b"GARBAGE\x01\r\n\r\n"), Err(400));
        assert_eq!(parse(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n"), Err(400));
        let many: String = (0..MAX_HEADERS + 1)
            .map(|i| format!("H{i}: v\r\n"))
            .collect();
        assert_eq!(
            parse(format!("GET / HTTP/1.1\r\n{many}\r\n").as_bytes()),
            Err(431)
        );
    }

    #[test]
    fn invalid_upgrades_are_refused_with_the_right_status() {
        let cases = [
            (GOOD.replace("GET", "POST"), 405),
            (GOOD.replace("Host: x\r\n", ""), 400),
            (GOOD.replace("keep-alive, Upgrade", "keep-alive"), 400),
            (GOOD.replace("Version: 13", "Version: 8"), 426),
            (GOOD.replace("dGhlIHNhbXBsZSBub25jZQ==", "short"), 400),
            // 24 characters ending in "==", but not base64 of 16 bytes.
            (
                GOOD.replace("dGhlIHNhbXBsZSBub25jZQ==", "!!!!!!!!!!!!!!!!!!!!!!=="),
                400,
            ),
            (
                GOOD.replace("dGhlIHNhbXBsZSBub25jZQ==", "dGhlIHNhbXBsZSBub25jZR=="),
                400,
            ),
            // Two of what there must be one of (RFC 6455 §11.3, RFC 7230 §5.4).
            (
                GOOD.replace(
                    "Sec-WebSocket-Version: 13\r\n",
                    "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAA==\r\n",
                ),
                400,
            ),
            (
                GOOD.replace(
                    "Sec-WebSocket-Version: 13\r\n",
                    "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Version: 8\r\n",
                ),
                400,
            ),
            (GOOD.replace("Host: x\r\n", "Host: x\r\nHost: y\r\n"), 400),
        ];
        for (raw, status) in cases {
            let (_, r) = parse(raw.as_bytes()).unwrap();
            assert_eq!(r, Err(status), "{raw}");
        }
    }

    #[test]
    fn headers_that_are_not_valid_http_become_a_500_not_an_injection() {
        let r = HttpResponse::new(200)
            .header("X-Name", "a\r\nSet-Cookie: stolen=1")
            .body("page");
        assert!(r.head().starts_with("HTTP/1.1 500 "), "{}", r.head());
        assert!(!r.head().contains("stolen"));
        assert!(r.body_bytes().is_empty());
        assert!(
            HttpResponse::new(200)
                .header("Bad Name", "1")
                .head()
                .starts_with("HTTP/1.1 500")
        );
        let key = "dGhlIHNhbXBsZSBub25jZQ==";
        assert!(accept_response(key, None, None, &[("X".into(), "1\n2".into())]).is_none());
        assert!(accept_response(key, Some("a\r\nb"), None, &[]).is_none());
        assert!(accept_response(key, Some("chat"), None, &[]).is_some());
    }

    #[test]
    fn plain_responses_carry_length_and_close() {
        let r = HttpResponse::new(404).header("X", "y").body("nope");
        assert_eq!(
            r.head(),
            "HTTP/1.1 404 Not Found\r\nX: y\r\nContent-Type: text/plain; charset=utf-8\r\n\
             Content-Length: 4\r\nConnection: close\r\n\r\n"
        );
    }
}
