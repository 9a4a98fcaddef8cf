#![no_main]
//! See `netpoll::fuzz::resp` for what is checked.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    netpoll::fuzz::resp(data);
});
