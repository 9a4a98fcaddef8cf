//! One cfg for "the io_uring backend is compiled in": Linux with the `io-uring` feature.
fn main() {
    println!("cargo::rustc-check-cfg=cfg(netpoll_uring)");
    let linux = std::env::var("CARGO_CFG_TARGET_OS").is_ok_and(|os| os == "linux");
    if linux && std::env::var_os("CARGO_FEATURE_IO_URING").is_some() {
        println!("cargo::rustc-cfg=netpoll_uring");
    }
}
