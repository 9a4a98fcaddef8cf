//! The TLS session in memory: a server and a client session talk through byte vectors.

use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore, ServerConfig};

use super::*;

/// A self-signed certificate for `localhost` and configs that trust it.
fn configs() -> (Arc<ServerConfig>, Arc<ClientConfig>) {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let der: CertificateDer<'static> = cert.cert.der().clone();
    let key = PrivateKeyDer::Pkcs8(cert.signing_key.serialize_der().into());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let server = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![der.clone()], key)
        .unwrap();
    let mut roots = RootCertStore::empty();
    roots.add(der).unwrap();
    let client = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    (Arc::new(server), Arc::new(client))
}

struct Pair {
    server: TlsSession,
    client: TlsSession,
    /// Plaintext each side received.
    at_server: Vec<u8>,
    at_client: Vec<u8>,
    /// Ciphertext in flight.
    to_server: Vec<u8>,
    to_client: Vec<u8>,
}

impl Pair {
    fn new() -> Self {
        let (s, c) = configs();
        let mut client = TlsSession::client(c, "localhost".try_into().unwrap()).unwrap();
        let mut to_server = Vec::new();
        // The client speaks first: its hello comes out of a receive with no input.
        client
            .receive(&mut [], &mut Vec::new(), &mut to_server)
            .unwrap();
        Pair {
            server: TlsSession::server(s).unwrap(),
            client,
            at_server: Vec::new(),
            at_client: Vec::new(),
            to_server,
            to_client: Vec::new(),
        }
    }

    /// Delivers what is in flight, in chunks of `chunk` bytes, until nothing moves.
    fn run(&mut self, chunk: usize) {
        for _ in 0..100 {
            if self.to_server.is_empty() && self.to_client.is_empty() {
                return;
            }
            let mut to_server = std::mem::take(&mut self.to_server);
            for piece in to_server.chunks_mut(chunk) {
                self.server
                    .receive(piece, &mut self.at_server, &mut self.to_client)
                    .unwrap();
            }
            let mut to_client = std::mem::take(&mut self.to_client);
            for piece in to_client.chunks_mut(chunk) {
                self.client
                    .receive(piece, &mut self.at_client, &mut self.to_server)
                    .unwrap();
            }
        }
        panic!("the pair never settled");
    }
}

#[test]
fn a_handshake_then_data_both_ways_even_one_byte_at_a_time() {
    for chunk in [1, 7, 100, usize::MAX] {
        let mut p = Pair::new();
        p.run(chunk);
        assert!(p.server.is_established() && p.client.is_established());
        p.client
            .seal(b"GET / HTTP/1.1\r\n\r\n", &mut p.to_server)
            .unwrap();
        let big: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        p.server.seal(&big, &mut p.to_client).unwrap();
        p.run(chunk);
        assert_eq!(p.at_server, b"GET / HTTP/1.1\r\n\r\n", "chunk {chunk}");
        assert_eq!(p.at_client, big, "chunk {chunk}");
        // Idle again: no buffer held.
        assert_eq!(p.server.incoming.capacity(), 0);
        assert_eq!(p.server.early.capacity(), 0);
    }
}

#[test]
fn plaintext_written_before_the_handshake_waits_and_goes_first() {
    let mut p = Pair::new();
    // A server greeting from `on_open`, before any TLS byte came in.
    p.server.seal(b"hello ", &mut p.to_client).unwrap();
    p.server.seal(b"world", &mut p.to_client).unwrap();
    assert!(p.to_client.is_empty(), "nothing may leave in the clear");
    assert_eq!(p.server.early_len(), 11);
    p.run(usize::MAX);
    assert_eq!(p.at_client, b"hello world");
    assert_eq!(p.server.early_len(), 0);
}

#[test]
fn close_notify_reaches_the_peer() {
    let mut p = Pair::new();
    p.run(usize::MAX);
    p.server.seal(b"bye", &mut p.to_client).unwrap();
    p.server.close_notify(&mut p.to_client);
    let mut plain = Vec::new();
    let mut back = Vec::new();
    let got = p
        .client
        .receive(&mut std::mem::take(&mut p.to_client), &mut plain, &mut back)
        .unwrap();
    assert_eq!(plain, b"bye");
    assert!(got.peer_closed);
}

#[test]
fn garbage_and_plaintext_http_are_errors_not_panics() {
    let (s, _) = configs();
    for input in [
        &b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..],
        &[0x16, 0x03, 0x01, 0xff, 0xff, 0x00][..],
        &[0u8; 64][..],
    ] {
        let mut server = TlsSession::server(s.clone()).unwrap();
        let mut send = Vec::new();
        let result = server.receive(&mut input.to_vec(), &mut Vec::new(), &mut send);
        // Either refused at once, or waiting for more of a record that will never be valid;
        // never plaintext.
        match result {
            Err(_) => {}
            Ok(r) => assert!(!r.peer_closed, "{input:?}"),
        }
    }
}

#[test]
fn a_peer_that_breaks_the_protocol_is_sent_a_fatal_alert() {
    let (s, _) = configs();
    // (rustls queues no alert for some errors, such as a handshake message over its size
    // limit: those connections just close.)
    let mut server = TlsSession::server(s).unwrap();
    let mut send = Vec::new();
    let mut input = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec();
    let result = server.receive(&mut input, &mut Vec::new(), &mut send);
    assert!(result.is_err());
    // An alert record (content type 21), level fatal (2).
    assert_eq!(send.first(), Some(&21), "{send:?}");
    assert_eq!(send.get(5), Some(&2), "{send:?}");
}
