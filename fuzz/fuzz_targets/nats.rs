#![no_main]
//! See `netpoll::fuzz::nats` for what is checked.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    netpoll::fuzz::nats(data);
});
