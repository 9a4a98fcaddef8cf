//! The builder rejects bad values with an error naming the knob.

use std::time::Duration;

use netpoll::{Engine, EngineBuilder, Error};

fn rejected(b: EngineBuilder, field: &str) {
    match b.build() {
        Err(e) => {
            assert_eq!(e.field, field, "wrong field blamed: {e}");
            assert!(e.to_string().contains(field));
        }
        Ok(_) => panic!("{field}: bad value accepted"),
    }
}

#[test]
fn invalid_values_are_rejected_with_the_field_named() {
    let b = Engine::builder;
    rejected(b().pollers(0), "pollers");
    rejected(b().pollers(257), "pollers");
    rejected(b().listen("not an address"), "listen");
    rejected(b().listen("127.0.0.1:99999"), "listen");
    rejected(b().backlog(0), "backlog");
    rejected(b().backlog(70_000), "backlog");
    rejected(b().send_buffer_size(10), "send_buffer_size");
    rejected(b().recv_buffer_size(usize::MAX), "recv_buffer_size");
    rejected(b().read_buffer_size(100), "read_buffer_size");
    rejected(b().read_buffer_size(1 << 30), "read_buffer_size");
    rejected(b().max_connections(0), "max_connections");
    rejected(b().max_read_per_wakeup(0), "max_read_per_wakeup");
    rejected(b().max_outbound_bytes(0), "max_outbound_bytes");
    rejected(b().max_inbound_bytes(0), "max_inbound_bytes");
    rejected(
        b().max_outbound_bytes(1000).low_watermark(1000),
        "low_watermark",
    );
    rejected(b().close_timeout(Duration::ZERO), "close_timeout");
    rejected(b().connect_timeout(Duration::ZERO), "connect_timeout");
    rejected(b().accept_backoff(Duration::ZERO), "accept_backoff");
    rejected(
        b().accept_backoff(Duration::from_secs(61)),
        "accept_backoff",
    );
    rejected(b().timer_tick(Duration::from_micros(10)), "timer_tick");
    rejected(b().timer_tick(Duration::from_secs(2)), "timer_tick");
    rejected(b().events_capacity(1), "events_capacity");
    rejected(b().thread_name(""), "thread_name");
}

#[test]
fn defaults_are_valid_and_documented_values() {
    let c = Engine::builder().build().expect("defaults are valid");
    assert!(c.pollers() >= 1);
    assert_eq!(c.max_outbound_bytes(), 4 << 20);
}

#[test]
fn start_reports_config_and_bind_errors() {
    struct Nop;
    impl netpoll::Handler for Nop {
        type State = ();
        fn on_open(&mut self, _: &netpoll::Conn) {}
        fn on_data(&mut self, _: &netpoll::Conn, _: &mut (), d: &mut [u8]) -> usize {
            d.len()
        }
    }
    match Engine::builder().pollers(0).start(|_| Nop) {
        Err(Error::Config(e)) => assert_eq!(e.field, "pollers"),
        other => panic!("expected a config error, got {other:?}"),
    }
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    match Engine::builder().pollers(1).listen(addr).start(|_| Nop) {
        Err(Error::Io(e)) => assert_eq!(e.kind(), std::io::ErrorKind::AddrInUse),
        other => panic!("expected AddrInUse, got {other:?}"),
    }
}
