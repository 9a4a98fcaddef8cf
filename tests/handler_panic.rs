//! A panicking callback is contained to its connection: the poller survives and serves the
//! others, and the close is counted with `HandlerPanic`.

mod common;

use std::io::{Read, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::*;
use netpoll::{CloseReason, Conn, Engine, Handler};

/// Echoes, but panics on data starting with `!` and on the third `on_open`.
struct Fragile {
    opens: Arc<AtomicUsize>,
    closes: std::sync::mpsc::Sender<CloseReason>,
}

impl Handler for Fragile {
    type State = ();
    fn on_open(&mut self, _: &Conn) {
        if self.opens.fetch_add(1, Ordering::SeqCst) == 2 {
            panic!("test: on_open panics");
        }
    }
    fn on_data(&mut self, conn: &Conn, _: &mut (), data: &mut [u8]) -> usize {
        if data[0] == b'!' {
            panic!("test: on_data panics");
        }
        conn.write_slice(data).unwrap();
        data.len()
    }
    fn on_close(&mut self, _: &Conn, _: (), reason: CloseReason) {
        let _ = self.closes.send(reason);
    }
}

#[test]
fn panicking_callbacks_abort_only_their_connection() {
    let opens = Arc::new(AtomicUsize::new(0));
    let (tx, closes) = std::sync::mpsc::channel();
    let engine = Engine::builder()
        .pollers(1)
        .listen("127.0.0.1:0")
        .start(|_| Fragile {
            opens: opens.clone(),
            closes: tx.clone(),
        })
        .unwrap();
    let addr = engine.local_addrs()[0];
    let mut healthy = client(addr);
    let mut doomed = client(addr);
    assert!(eventually(Duration::from_secs(5), || opens
        .load(Ordering::SeqCst)
        == 2));

    // on_data panics: that connection is aborted, on_close still runs with HandlerPanic.
    doomed.write_all(b"!boom").unwrap();
    assert_eq!(
        closes.recv_timeout(WAIT).unwrap(),
        CloseReason::HandlerPanic
    );
    let mut buf = [0u8; 8];
    assert!(
        matches!(doomed.read(&mut buf), Ok(0) | Err(_)),
        "doomed peer sees the end"
    );

    // on_open panics for the third connection: no state, so no on_close, but it is closed.
    let mut third = client(addr);
    assert!(matches!(third.read(&mut buf), Ok(0) | Err(_)));

    // The single poller is alive and still serving.
    healthy.write_all(b"alive").unwrap();
    healthy.read_exact(&mut buf[..5]).unwrap();
    assert_eq!(&buf[..5], b"alive");
    let mut fourth = client(addr);
    fourth.write_all(b"new").unwrap();
    fourth.read_exact(&mut buf[..3]).unwrap();
    assert_eq!(&buf[..3], b"new");

    assert!(eventually(Duration::from_secs(5), || {
        engine.stats().closed(CloseReason::HandlerPanic) == 2
    }));
    let st = engine.stats();
    assert_eq!(st.opened, 4);
    assert_eq!(st.open(), 2, "{st:?}");
}
