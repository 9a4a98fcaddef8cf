//! A TLS-originating bridge for conformance runs: accepts plain TCP and relays each
//! connection's bytes both ways over TLS to a server, so that a client that speaks only
//! `ws://` (the Autobahn|Testsuite runner) can drive a `wss://` server.
//!
//! ```text
//! cargo run --release -p netpoll-tools --bin tls_bridge -- --addr 127.0.0.1:9002 \
//!     --connect 127.0.0.1:9003 --ca cert.pem [--name localhost]
//! ```
//! The server's certificate is checked against `--ca` and `--name` (default `localhost`).
//! An end of stream on either side is passed on as one (TLS close_notify towards the
//! server, a FIN towards the client). Prints `listening on ADDR` when ready.

use std::sync::Arc;

use tokio::io::copy_bidirectional;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{ClientConfig, RootCertStore};

fn main() {
    let flags = netpoll_tools::Flags::parse("127.0.0.1:9002", &["--connect", "--ca", "--name"]);
    let target = flags
        .extra
        .get("--connect")
        .expect("--connect HOST:PORT")
        .clone();
    let ca = flags.extra.get("--ca").expect("--ca PEM");
    let name = flags
        .extra
        .get("--name")
        .cloned()
        .unwrap_or_else(|| "localhost".into());
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).expect("--ca PEM file") {
        roots.add(cert.expect("a certificate")).expect("a CA");
    }
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("default versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = TlsConnector::from(Arc::new(config));
    let name = ServerName::try_from(name).expect("--name: a DNS name or an IP address");
    flags.runtime().block_on(async move {
        let listener = TcpListener::bind(&flags.addr).await.expect("bind");
        println!("listening on {}", listener.local_addr().unwrap());
        loop {
            let Ok((mut plain, _)) = listener.accept().await else {
                continue;
            };
            let (connector, name, target) = (connector.clone(), name.clone(), target.clone());
            tokio::spawn(async move {
                let _ = plain.set_nodelay(true);
                let Ok(tcp) = TcpStream::connect(&target).await else {
                    return;
                };
                let _ = tcp.set_nodelay(true);
                match connector.connect(name, tcp).await {
                    Ok(mut tls) => {
                        let _ = copy_bidirectional(&mut plain, &mut tls).await;
                    }
                    Err(e) => eprintln!("TLS handshake with {target} failed: {e}"),
                }
            });
        }
    });
}
