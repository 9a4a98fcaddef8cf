//! The client side of the WebSocket handshake, sans-IO: the upgrade request (built with
//! tungstenite), and checking the server's response (RFC 6455 §4.1).

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use super::deflate::{DeflateConfig, DeflateParams};
use crate::tls::{ClientConfig, rustls};

/// Options of one [`WsEngine::connect`](super::WsEngine::connect): the connection's state (handed
/// to the handler once the upgrade succeeds, or back with the error), subprotocols to offer,
/// extra request headers, and timeouts.
///
/// ```no_run
/// # use netpoll::ws::{WsEngine, WsHandler};
/// # fn demo<H: WsHandler<State = u32>>(ws: &WsEngine<H>) -> Result<(), netpoll::Error> {
/// use std::time::Duration;
/// use netpoll::ws::Connect;
///
/// let opts = Connect::new(42) // the connection's state: a user id, say
///     .protocol("chat.v2")
///     .protocol("chat.v1") // accepted too, if the server has no v2
///     .header("Authorization", "Bearer secret-token")
///     .timeout(Duration::from_secs(3));
/// ws.connect("ws://127.0.0.1:9001/chat", opts)?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Connect<S> {
    pub(crate) state: S,
    pub(crate) protocols: Vec<String>,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) timeout: Option<Duration>,
    pub(crate) local_addr: Option<SocketAddr>,
    pub(crate) tls: Option<Arc<ClientConfig>>,
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
            tls: None,
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

    /// The TLS client configuration for a `wss://` URL (default:
    /// [`tls::default_client_config`](crate::tls::default_client_config), the public web's
    /// trust anchors; [`tls::client_config_with_ca`](crate::tls::client_config_with_ca) for a
    /// private CA). Ignored for `ws://`.
    pub fn tls(mut self, config: Arc<ClientConfig>) -> Self {
        self.tls = Some(config);
        self
    }
}

/// Why a client connection did not become a WebSocket. Given to
/// [`WsHandler::on_connect_error`](super::WsHandler::on_connect_error) with the connection's
/// state.
///
/// ```
/// use netpoll::ws::{ConnectError, Message, Request, Upgrade, WsConn, WsHandler};
///
/// struct Client;
///
/// impl WsHandler for Client {
///     type State = String; // the URL, to retry it
///     fn on_request(&mut self, _: &Request<'_>) -> Upgrade<String> {
///         Upgrade::not_found() // a client engine has no listener: never called
///     }
///     fn on_message(&mut self, _: &WsConn, _: &mut String, _: Message<'_>) {}
///     fn on_connect_error(&mut self, url: String, error: ConnectError) {
///         match error {
///             ConnectError::Status(401 | 403) => eprintln!("{url}: not allowed, giving up"),
///             ConnectError::Io(_) | ConnectError::Timeout => eprintln!("{url}: {error}, retry"),
///             other => eprintln!("{url}: {other}"),
///         }
///     }
/// }
/// ```
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
    /// The TLS handshake of a `wss://` connect failed: the server's certificate was not
    /// accepted (`InvalidCertificate`: an unknown issuer, another host's name, expired), the
    /// server sent an alert, or it does not speak TLS.
    Tls(rustls::Error),
}

impl fmt::Display for ConnectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConnectError::Io(e) => write!(f, "connect failed: {e}"),
            ConnectError::Status(s) => write!(f, "server answered HTTP {s} instead of 101"),
            ConnectError::Handshake(why) => write!(f, "invalid upgrade response: {why}"),
            ConnectError::Timeout => f.write_str("handshake timed out"),
            ConnectError::Closed => f.write_str("connection closed during the handshake"),
            ConnectError::Tls(e) => write!(f, "TLS handshake failed: {e}"),
        }
    }
}

impl std::error::Error for ConnectError {}

/// What a client connection checks in the server's `101`: the accept key its request asks
/// for and the subprotocols it offered. Kept in the connection's attachment until the
/// response has been checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ClientHello {
    pub(crate) accept: String,
    pub(crate) protocols: Vec<String>,
    /// permessage-deflate was offered with this configuration.
    pub(crate) deflate: Option<DeflateConfig>,
}

/// A client connection between `connect` and its TCP connection opening: the user's state and
/// the hello (also in the connection's attachment, until the poller takes it over).
pub(crate) struct Pending<S> {
    pub(crate) state: S,
    pub(crate) hello: ClientHello,
}

/// A `ws://` URL turned into what a connect needs.
#[derive(Debug)]
pub(crate) struct Prepared {
    pub(crate) host: String,
    pub(crate) port: u16,
    /// A `wss://` URL.
    pub(crate) tls: bool,
    /// The upgrade request, ready to send.
    pub(crate) request: Vec<u8>,
    pub(crate) hello: ClientHello,
}

/// Parses `url` and builds the upgrade request with tungstenite (URL parsing through `http`,
/// a fresh key, the required headers, then the offered subprotocols and extra headers, each
/// validated as an HTTP header).
pub(crate) fn prepare(
    url: &str,
    protocols: &[String],
    headers: &[(String, String)],
    deflate: Option<&DeflateConfig>,
) -> Result<Prepared, String> {
    use tungstenite::client::IntoClientRequest;
    use tungstenite::http::{HeaderName, HeaderValue, Uri};

    let mut request = url
        .into_client_request()
        .map_err(|e| format!("bad URL {url:?}: {e}"))?;
    let uri = request.uri().clone();
    let tls = match uri.scheme_str() {
        Some("ws") => false,
        Some("wss") => true,
        _ => return Err(format!("not a ws:// or wss:// URL: {url}")),
    };
    let authority = uri.authority().ok_or(format!("no host in {url}"))?;
    if authority.as_str().contains('@') {
        return Err(format!(
            "credentials in {url} would not be sent; use an Authorization header"
        ));
    }
    // `http` leaves a port that is not a number unparsed rather than refusing it.
    let port = match &authority.as_str()[authority.host().len()..] {
        "" if tls => 443,
        "" => 80,
        rest => rest
            .strip_prefix(':')
            .and_then(|p| p.parse().ok())
            .ok_or(format!("bad port in {url}"))?,
    };
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    if host.is_empty() {
        return Err(format!("no host in {url}"));
    }
    let host = host.to_string();
    // `ws://host?q` has no path: the request target must still start with `/`.
    if uri
        .path_and_query()
        .is_some_and(|pq| !pq.as_str().starts_with('/'))
    {
        let target = format!("/{}", uri.path_and_query().map_or("", |pq| pq.as_str()));
        let mut parts = uri.into_parts();
        parts.path_and_query = Some(
            target
                .parse()
                .map_err(|e| format!("bad URL {url:?}: {e}"))?,
        );
        *request.uri_mut() = Uri::from_parts(parts).map_err(|e| format!("bad URL {url:?}: {e}"))?;
    }
    let h = request.headers_mut();
    if !protocols.is_empty() {
        let offered = HeaderValue::from_str(&protocols.join(", "))
            .map_err(|_| format!("bad subprotocol in {protocols:?}"))?;
        h.insert("sec-websocket-protocol", offered);
    }
    if let Some(config) = deflate {
        let offer = HeaderValue::from_str(&super::deflate::client_offer(config))
            .expect("the offer is a valid header value");
        h.insert("sec-websocket-extensions", offer);
    }
    for (name, value) in headers {
        let name = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| format!("bad header name {name:?}"))?;
        let value =
            HeaderValue::from_str(value).map_err(|_| format!("bad value for header {name}"))?;
        h.append(name, value);
    }
    let (request, key) = tungstenite::handshake::client::generate_request(request)
        .map_err(|e| format!("cannot build the upgrade request: {e}"))?;
    Ok(Prepared {
        host,
        port,
        tls,
        request,
        hello: ClientHello {
            accept: tungstenite::handshake::derive_accept_key(key.as_bytes()),
            protocols: protocols.to_vec(),
            deflate: deflate.copied(),
        },
    })
}

/// The outcome of reading the server's response.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Response {
    /// Not complete yet.
    Partial,
    /// A valid upgrade of `len` bytes (frames may follow), with the chosen subprotocol and
    /// the compression parameters, if the server accepted our offer.
    Upgraded {
        len: usize,
        protocol: Option<String>,
        deflate: Option<DeflateParams>,
    },
}

/// Checks the server's response against what was asked (RFC 6455 §4.1, client side).
pub(crate) fn check_response(
    data: &[u8],
    accept: &str,
    offered: &[String],
    deflate: Option<&DeflateConfig>,
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
    let deflate = match (header("sec-websocket-extensions"), deflate) {
        (None | Some(""), _) => None,
        (Some(v), Some(config)) => {
            Some(super::deflate::client_check(v, config).map_err(ConnectError::Handshake)?)
        }
        (Some(_), None) => {
            return Err(ConnectError::Handshake(
                "server chose an extension nobody offered",
            ));
        }
    };
    let protocol = match header("sec-websocket-protocol") {
        None | Some("") => None,
        Some(p) if offered.iter().any(|o| o == p) => Some(p.to_string()),
        Some(_) => {
            return Err(ConnectError::Handshake(
                "server chose a subprotocol nobody offered",
            ));
        }
    };
    Ok(Response::Upgraded {
        len,
        protocol,
        deflate,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(p: &Prepared) -> String {
        let req = String::from_utf8(p.request.clone()).unwrap();
        req.lines().next().unwrap().to_string()
    }

    #[test]
    fn urls() {
        let u = prepare("ws://example.com:9001/chat?room=1", &[], &[], None).unwrap();
        assert_eq!((u.host.as_str(), u.port), ("example.com", 9001));
        assert_eq!(target(&u), "GET /chat?room=1 HTTP/1.1");
        assert!(String::from_utf8_lossy(&u.request).contains("Host: example.com:9001\r\n"));
        let u = prepare("ws://localhost", &[], &[], None).unwrap();
        assert_eq!((u.port, target(&u).as_str()), (80, "GET / HTTP/1.1"));
        let u = prepare("ws://[::1]:8080?x", &[], &[], None).unwrap();
        assert_eq!((u.host.as_str(), u.port), ("::1", 8080));
        assert_eq!(target(&u), "GET /?x HTTP/1.1");
        let wss = prepare("wss://x/p", &[], &[], None).unwrap();
        assert!(wss.tls && wss.port == 443, "{wss:?}");
        assert!(!prepare("ws://x/p", &[], &[], None).unwrap().tls);
        assert!(prepare("https://x/p", &[], &[], None).is_err());
        assert!(prepare("http://x", &[], &[], None).is_err());
        assert!(prepare("ws://x:notaport/", &[], &[], None).is_err());
        assert!(prepare("ws:///path", &[], &[], None).is_err());
        assert!(prepare("ws://user:secret@x/", &[], &[], None).is_err());
    }

    #[test]
    fn headers_are_validated_not_injected() {
        let bad = [("X-A".to_string(), "1\r\nEvil: 1".to_string())];
        assert!(prepare("ws://h/", &[], &bad, None).is_err());
        let bad_name = [("X A".to_string(), "1".to_string())];
        assert!(prepare("ws://h/", &[], &bad_name, None).is_err());
        let ok = [("Authorization".to_string(), "Bearer t".to_string())];
        let p = prepare("ws://h/", &["chat".into(), "v2".into()], &ok, None).unwrap();
        let req = String::from_utf8(p.request).unwrap();
        assert!(
            req.contains("Sec-WebSocket-Protocol: chat, v2\r\n"),
            "{req}"
        );
        assert!(req.contains("authorization: Bearer t\r\n"), "{req}");
        let key = req
            .lines()
            .find_map(|l| l.strip_prefix("Sec-WebSocket-Key: "))
            .unwrap();
        assert_eq!(
            p.hello.accept,
            tungstenite::handshake::derive_accept_key(key.as_bytes())
        );
    }

    const ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

    fn resp(extra: &str) -> String {
        format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Accept: {ACCEPT}\r\n{extra}\r\n"
        )
    }

    #[test]
    fn responses() {
        let offered = vec!["chat".to_string()];
        let ok = resp("Sec-WebSocket-Protocol: chat\r\n");
        assert_eq!(
            check_response(ok.as_bytes(), ACCEPT, &offered, None).unwrap(),
            Response::Upgraded {
                len: ok.len(),
                protocol: Some("chat".into()),
                deflate: None,
            }
        );
        assert_eq!(
            check_response(&ok.as_bytes()[..20], ACCEPT, &offered, None).unwrap(),
            Response::Partial
        );
        let err = |r: &str| check_response(r.as_bytes(), ACCEPT, &offered, None).unwrap_err();
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
