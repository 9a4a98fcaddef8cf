#![no_main]
//! See `netpoll::fuzz` for what is checked.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    netpoll::fuzz::deflate(data);
});
