//! A chat server with its own web page: the README's main demo.
//!
//! ```text
//! cargo run --release --example chat [-- --addr 127.0.0.1:8080 --history 50]
//! ```
//! Open <http://127.0.0.1:8080/> in two browser tabs, pick nicknames, and talk. The page is
//! served through the WebSocket upgrade hook's HTTP response; `/ws?nick=NAME` is the
//! WebSocket endpoint. New joiners get the last `--history` messages; everyone sees join and
//! leave notices and the online count. Idle clients are pinged (heartbeat) and dropped if they
//! do not answer; a client that cannot keep up with the room is closed with 1008 rather than
//! allowed to grow the server's memory. Prints `listening on ADDR` once ready.
//!
//! Server to client, one JSON object per message: `{"type":"msg","nick":..,"text":..}`,
//! `{"type":"join"|"leave","nick":..,"online":N}`. Client to server: the text of a message.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use netpoll::Engine;
use netpoll::ws::{
    Accept, CloseCode, Group, HttpResponse, Message, Request, SlowPolicy, Upgrade, WsClose, WsConn,
    WsHandler, WsServer,
};

const PAGE: &str = include_str!("chat/index.html");

/// The room every client joins, and its recent messages.
struct Room {
    members: Group,
    history: Mutex<VecDeque<String>>,
    history_len: usize,
}

impl Room {
    fn remember(&self, event: &str) {
        let mut h = self.history.lock().unwrap();
        if h.len() == self.history_len {
            h.pop_front();
        }
        h.push_back(event.to_string());
    }
}

struct Chat {
    room: Arc<Room>,
}

impl WsHandler for Chat {
    /// The nickname.
    type State = String;

    fn on_request(&mut self, req: &Request<'_>) -> Upgrade<String> {
        match (req.path(), req.is_upgrade()) {
            ("/", false) => Upgrade::Respond(
                HttpResponse::new(200)
                    .header("Content-Type", "text/html; charset=utf-8")
                    .header("Cache-Control", "no-store")
                    .body(PAGE),
            ),
            ("/ws", true) => match req.query().and_then(nick_from_query) {
                Some(nick) => Accept::new(nick).into(),
                None => Upgrade::Respond(
                    HttpResponse::new(400).body("nick: 1-20 letters, digits, - or _\n"),
                ),
            },
            _ => Upgrade::not_found(),
        }
    }

    fn on_open(&mut self, conn: &WsConn, nick: &mut String) {
        // History first, then join, so the newcomer sees the room as it was.
        let history: Vec<String> = self.room.history.lock().unwrap().iter().cloned().collect();
        for event in history {
            let _ = conn.send_text(&event);
        }
        self.room.members.join(conn);
        let online = self.room.members.len();
        let event = format!(
            r#"{{"type":"join","nick":{},"online":{online}}}"#,
            json_string(nick)
        );
        self.room.members.broadcast(Message::Text(&event));
    }

    fn on_message(&mut self, _: &WsConn, nick: &mut String, msg: Message<'_>) {
        let Message::Text(text) = msg else { return };
        let text = text.trim();
        if text.is_empty() {
            return;
        }
        let event = format!(
            r#"{{"type":"msg","nick":{},"text":{}}}"#,
            json_string(nick),
            json_string(text)
        );
        self.room.remember(&event);
        self.room.members.broadcast(Message::Text(&event));
    }

    fn on_close(&mut self, _: &WsConn, nick: String, _: WsClose) {
        // The connection has already left the group.
        let online = self.room.members.len();
        let event = format!(
            r#"{{"type":"leave","nick":{},"online":{online}}}"#,
            json_string(&nick)
        );
        self.room.members.broadcast(Message::Text(&event));
    }
}

/// The `nick` query parameter, percent-decoded and checked.
fn nick_from_query(query: &str) -> Option<String> {
    let raw = query.split('&').find_map(|kv| kv.strip_prefix("nick="))?;
    let mut bytes = Vec::new();
    let mut it = raw.bytes();
    while let Some(b) = it.next() {
        match b {
            b'%' => {
                let hex = [it.next()?, it.next()?];
                bytes.push(u8::from_str_radix(std::str::from_utf8(&hex).ok()?, 16).ok()?);
            }
            b'+' => bytes.push(b' '),
            b => bytes.push(b),
        }
    }
    let nick = String::from_utf8(bytes).ok()?;
    let ok = (1..=20).contains(&nick.chars().count())
        && nick
            .chars()
            .all(|c| c.is_alphanumeric() || c == '-' || c == '_');
    ok.then_some(nick)
}

/// `s` as a JSON string literal.
fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn main() {
    let mut addr = "127.0.0.1:8080".to_string();
    let mut history_len = 50;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let v = args.next().unwrap_or_else(|| panic!("{a} needs a value"));
        match a.as_str() {
            "--addr" => addr = v,
            "--history" => history_len = v.parse().expect("--history N"),
            other => panic!("unknown flag {other}"),
        }
    }
    let room = Arc::new(Room {
        members: Group::new(SlowPolicy::Close {
            code: CloseCode::Policy,
        }),
        history: Mutex::new(VecDeque::new()),
        history_len,
    });
    let engine = Engine::builder()
        .listen(addr)
        .max_outbound_bytes(1 << 20)
        .write_timeout(Some(Duration::from_secs(10)));
    let server = WsServer::builder()
        .max_message_size(4096)
        .idle_timeout(Some(Duration::from_secs(30)))
        .pong_timeout(Duration::from_secs(10))
        .start(engine, |_| Chat { room: room.clone() })
        .unwrap_or_else(|e| panic!("cannot start: {e}"));
    println!("listening on {}", server.local_addrs()[0]);
    println!(
        "open http://{}/ in two browser tabs",
        server.local_addrs()[0]
    );
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nicks_and_json() {
        assert_eq!(nick_from_query("nick=al%C3%AFce"), Some("alïce".into()));
        assert_eq!(nick_from_query("x=1&nick=bob_2"), Some("bob_2".into()));
        assert_eq!(nick_from_query("nick="), None);
        assert_eq!(nick_from_query("nick=%3Cscript%3E"), None);
        assert_eq!(nick_from_query("nick=%zz"), None);
        assert_eq!(json_string("a\"b\\c\n\u{1}"), r#""a\"b\\c\n\u0001""#);
    }
}
