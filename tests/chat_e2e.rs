//! End to end: the chat demo (`examples/chat`) driven in headless Chromium through the Chrome
//! DevTools Protocol (spoken over tungstenite's WebSocket client). Two tabs join, exchange
//! messages, both see them; one leaves and the other sees the notice; a third tab joins and
//! gets the history. Two chat processes sharing a room through a real `redis-server`, one tab
//! on each, see each other's messages, notices and the online count across both. A
//! screenshot of the
//! remaining tab is written to `target/chat-e2e.png` (the README's `docs/chat.png` is a copy).
//!
//! Needs Chromium (`/usr/bin/chromium`, or `CHROMIUM`) and the example built, so it is
//! ignored by plain `cargo test`; `.ci/run` installs Chromium and runs it:
//! `cargo build --example chat && cargo test --test chat_e2e -- --ignored`.

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tungstenite::{Message, WebSocket};

/// Kills the child process when dropped.
struct Reaper(Child);

impl Drop for Reaper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts a program and waits for a line containing `marker` on its stdout or stderr;
/// returns the rest of that line after the marker.
fn spawn_until(mut cmd: Command, marker: &str, stderr: bool) -> (Reaper, String) {
    let mut child = if stderr {
        cmd.stderr(Stdio::piped()).stdout(Stdio::null())
    } else {
        cmd.stdout(Stdio::piped()).stderr(Stdio::null())
    }
    .spawn()
    .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
    let out: Box<dyn std::io::Read + Send> = if stderr {
        Box::new(child.stderr.take().unwrap())
    } else {
        Box::new(child.stdout.take().unwrap())
    };
    let (tx, rx) = std::sync::mpsc::channel();
    let marker_owned = marker.to_string();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if let Some(i) = line.find(&marker_owned) {
                let _ = tx.send(line[i + marker_owned.len()..].trim().to_string());
            }
        }
    });
    let found = rx
        .recv_timeout(Duration::from_secs(30))
        .unwrap_or_else(|_| panic!("{cmd:?} never printed {marker:?}"));
    (Reaper(child), found)
}

/// A minimal Chrome DevTools Protocol client.
struct Cdp {
    ws: WebSocket<TcpStream>,
    next_id: u64,
}

impl Cdp {
    fn connect(url: &str) -> Cdp {
        let rest = url.strip_prefix("ws://").expect("devtools ws:// URL");
        let host = &rest[..rest.find('/').unwrap()];
        let stream = TcpStream::connect(host).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let (ws, _) = tungstenite::client::client(url, stream).expect("devtools handshake");
        Cdp { ws, next_id: 1 }
    }

    /// Sends a command (to a page session if given) and returns its result.
    fn call(&mut self, session: Option<&str>, method: &str, params: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        let mut msg = json!({ "id": id, "method": method, "params": params });
        if let Some(s) = session {
            msg["sessionId"] = json!(s);
        }
        self.ws.send(Message::Text(msg.to_string().into())).unwrap();
        loop {
            let Message::Text(t) = self.ws.read().expect("devtools reply") else {
                continue;
            };
            let v: Value = serde_json::from_str(&t).unwrap();
            if v["id"] == json!(id) {
                if let Some(e) = v.get("error") {
                    panic!("{method} failed: {e}");
                }
                return v["result"].clone();
            }
        }
    }

    /// Opens a tab on `url` and returns (target id, session id).
    fn open_tab(&mut self, url: &str) -> (String, String) {
        let target = self.call(None, "Target.createTarget", json!({ "url": url }))["targetId"]
            .as_str()
            .unwrap()
            .to_string();
        let session = self.call(
            None,
            "Target.attachToTarget",
            json!({ "targetId": target, "flatten": true }),
        )["sessionId"]
            .as_str()
            .unwrap()
            .to_string();
        (target, session)
    }

    fn eval(&mut self, session: &str, js: &str) -> Value {
        let r = self.call(
            Some(session),
            "Runtime.evaluate",
            json!({ "expression": js, "returnByValue": true, "awaitPromise": true }),
        );
        if let Some(e) = r.get("exceptionDetails") {
            panic!("{js}: {e}");
        }
        r["result"]["value"].clone()
    }

    /// Polls `js` until it is true.
    fn wait_for(&mut self, session: &str, js: &str, what: &str) {
        let end = Instant::now() + Duration::from_secs(15);
        while Instant::now() < end {
            if self.eval(session, js) == json!(true) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let text = self.eval(session, "document.body.innerText");
        panic!("timed out waiting for {what}; page text:\n{text}");
    }

    fn page_has(&mut self, session: &str, text: &str, what: &str) {
        let js = format!("document.body.innerText.includes({})", json!(text));
        self.wait_for(session, &js, what);
    }

    fn join(&mut self, session: &str, nick: &str) {
        self.wait_for(
            session,
            "document.readyState === 'complete' && !!document.getElementById('nick')",
            "the page to load",
        );
        let js = format!(
            "document.getElementById('nick').value = {}; \
             document.getElementById('join-btn').click(); true",
            json!(nick)
        );
        self.eval(session, &js);
    }

    fn say(&mut self, session: &str, text: &str) {
        let js = format!(
            "document.getElementById('text').value = {}; \
             document.getElementById('send-btn').click(); true",
            json!(text)
        );
        self.eval(session, &js);
    }
}

fn target_dir() -> PathBuf {
    // tests run from target/<profile>/deps/<name>-<hash>
    let exe = std::env::current_exe().unwrap();
    exe.parent().unwrap().parent().unwrap().to_path_buf()
}

/// Headless Chromium with a profile of its own (removed by the caller), and a CDP client.
fn browser(tag: &str) -> (Reaper, Cdp, PathBuf) {
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    let profile = std::env::temp_dir().join(format!("netpoll-e2e-{tag}-{}", std::process::id()));
    let mut browser = Command::new(&chromium);
    browser.args([
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--remote-debugging-port=0",
        &format!("--user-data-dir={}", profile.display()),
        "about:blank",
    ]);
    let (reaper, devtools) = spawn_until(browser, "DevTools listening on ", true);
    (reaper, Cdp::connect(&devtools), profile)
}

fn chat_binary() -> PathBuf {
    let chat_bin = target_dir().join("examples").join("chat");
    assert!(
        chat_bin.exists(),
        "{} missing: cargo build --example chat",
        chat_bin.display()
    );
    chat_bin
}

#[test]
#[ignore = "needs Chromium, redis-server and the chat example built; .ci/run runs it"]
fn two_chat_nodes_share_the_room_through_redis() {
    // A redis-server of the test's own, on a free port.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let redis = Reaper(
        Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server on the PATH (.ci/run installs it)"),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "redis-server did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    let url = format!("redis://127.0.0.1:{port}");
    let node = || {
        let mut chat = Command::new(chat_binary());
        chat.args(["--addr", "127.0.0.1:0", "--redis", &url]);
        spawn_until(chat, "listening on ", false)
    };
    let ((_a, addr_a), (_b, addr_b)) = (node(), node());

    let (_browser, mut cdp, profile) = browser("nodes");
    let (_, alice) = cdp.open_tab(&format!("http://{addr_a}/"));
    cdp.join(&alice, "alice");
    cdp.page_has(&alice, "1 online", "the online count on node A");
    let (bob_target, bob) = cdp.open_tab(&format!("http://{addr_b}/"));
    cdp.join(&bob, "bob");
    cdp.page_has(
        &alice,
        "bob joined",
        "bob's join on node B, in alice's tab on node A",
    );
    cdp.page_has(
        &bob,
        "2 online",
        "the count across both nodes, in bob's tab",
    );
    cdp.page_has(
        &alice,
        "2 online",
        "the count across both nodes, in alice's tab",
    );

    cdp.say(&alice, "hello from node A");
    cdp.page_has(&bob, "alice: hello from node A", "A's message on node B");
    cdp.say(&bob, "and back from node B");
    cdp.page_has(&alice, "bob: and back from node B", "B's message on node A");

    cdp.call(
        None,
        "Target.closeTarget",
        json!({ "targetId": bob_target }),
    );
    cdp.page_has(&alice, "bob left", "the leave notice from node B");
    cdp.page_has(&alice, "1 online", "the count after bob left");
    drop(redis);
    let _ = std::fs::remove_dir_all(&profile);
}

#[test]
#[ignore = "needs Chromium and the chat example built; .ci/run runs it"]
fn two_browser_tabs_chat_and_see_each_other_leave() {
    let mut chat = Command::new(chat_binary());
    chat.args(["--addr", "127.0.0.1:0"]);
    let (_chat, addr) = spawn_until(chat, "listening on ", false);

    let (_browser, mut cdp, profile) = browser("one");
    let url = format!("http://{addr}/");
    let (_, alice) = cdp.open_tab(&url);
    cdp.call(
        Some(&alice),
        "Emulation.setDeviceMetricsOverride",
        json!({ "width": 820, "height": 620, "deviceScaleFactor": 1, "mobile": false }),
    );
    cdp.join(&alice, "alice");
    cdp.page_has(&alice, "alice joined", "alice's own join notice");
    cdp.page_has(&alice, "1 online", "the online count");

    let (bob_target, bob) = cdp.open_tab(&url);
    cdp.join(&bob, "bob");
    cdp.page_has(&bob, "bob joined", "bob's join notice in bob's tab");
    cdp.page_has(&alice, "bob joined", "bob's join notice in alice's tab");
    cdp.page_has(&alice, "2 online", "the online count after bob joined");

    cdp.say(&alice, "hello from alice");
    cdp.page_has(
        &bob,
        "alice: hello from alice",
        "alice's message in bob's tab",
    );
    cdp.page_has(
        &alice,
        "alice: hello from alice",
        "alice's message in her own tab",
    );
    // The browser offered permessage-deflate and the server agreed; a long message (which
    // Chromium sends compressed) arrives inflated.
    let ext = cdp.eval(&alice, "ws.extensions");
    assert!(
        ext.as_str()
            .is_some_and(|e| e.contains("permessage-deflate")),
        "negotiated extensions: {ext}"
    );
    let long = "compressible words, ".repeat(10);
    cdp.say(&alice, long.trim());
    cdp.page_has(
        &bob,
        long.trim(),
        "a long (compressed) message in bob's tab",
    );
    cdp.say(&bob, "hi alice, bob here");
    cdp.page_has(
        &alice,
        "bob: hi alice, bob here",
        "bob's message in alice's tab",
    );

    cdp.call(
        None,
        "Target.closeTarget",
        json!({ "targetId": bob_target }),
    );
    cdp.page_has(&alice, "bob left", "the leave notice");
    cdp.page_has(&alice, "1 online", "the online count after bob left");

    // A newcomer gets the recent history.
    let (carol_target, carol) = cdp.open_tab(&url);
    cdp.join(&carol, "carol");
    cdp.page_has(
        &carol,
        "alice: hello from alice",
        "history for a new joiner",
    );
    cdp.page_has(
        &carol,
        "bob: hi alice, bob here",
        "history for a new joiner",
    );
    cdp.page_has(&alice, "carol joined", "carol's join notice");
    cdp.call(
        None,
        "Target.closeTarget",
        json!({ "targetId": carol_target }),
    );
    cdp.page_has(&alice, "carol left", "carol's leave notice");

    let shot = cdp.call(
        Some(&alice),
        "Page.captureScreenshot",
        json!({ "format": "png" }),
    );
    let png = data_encoding::BASE64
        .decode(shot["data"].as_str().unwrap().as_bytes())
        .unwrap();
    assert!(png.starts_with(b"\x89PNG"), "a PNG screenshot");
    std::fs::write(target_dir().join("..").join("chat-e2e.png"), png).unwrap();
    let _ = std::fs::remove_dir_all(&profile);
}
