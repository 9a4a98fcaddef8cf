//! A self-signed certificate for the wss:// benchmarks: `DIR/cert.pem` and `DIR/key.pem` for
//! the names `localhost` (DNS) and `127.0.0.1` (IP), made by rcgen with an ECDSA P-256 key
//! (ring) and rcgen's default validity (1975 to 4096, so valid now). Clients trust it by loading
//! `cert.pem` as their CA; servers take both files (e.g. `tt_echo --tls-cert --tls-key`).
//!
//! ```text
//! cargo run --release -p netpoll-tools --bin gen_cert -- --out DIR
//! ```
//! Creates `DIR` if needed, overwrites the two files, and prints their paths, one a line.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

fn main() {
    let mut out: Option<PathBuf> = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--out" => out = Some(args.next().expect("--out DIR").into()),
            other => panic!("unknown flag {other} (usage: gen_cert --out DIR)"),
        }
    }
    let out = out.expect("usage: gen_cert --out DIR");

    let mut params =
        rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .expect("subject alternative names");
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "netpoll benchmark (localhost)");
    let key = rcgen::KeyPair::generate().expect("ECDSA P-256 key");
    let cert = params.self_signed(&key).expect("self-signed certificate");

    std::fs::create_dir_all(&out).unwrap_or_else(|e| panic!("{}: {e}", out.display()));
    let cert_path = out.join("cert.pem");
    let key_path = out.join("key.pem");
    write(&cert_path, cert.pem().as_bytes(), 0o644);
    // The private key is readable by its owner only.
    write(&key_path, key.serialize_pem().as_bytes(), 0o600);
    println!("{}", cert_path.display());
    println!("{}", key_path.display());
}

fn write(path: &Path, bytes: &[u8], mode: u32) {
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .and_then(|mut f| f.write_all(bytes))
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}
