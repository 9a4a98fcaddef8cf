use super::*;

fn accept(offer: &str) -> Option<(DeflateParams, String)> {
    server_accept([offer], &DeflateConfig::default())
}

#[test]
fn a_plain_offer_is_accepted_without_context_takeover_both_ways() {
    let (p, response) = accept("permessage-deflate").unwrap();
    assert_eq!(
        response,
        "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
    );
    assert_eq!(
        p,
        DeflateParams {
            server_no_context_takeover: true,
            client_no_context_takeover: true,
            server_max_window_bits: 15,
            client_max_window_bits: 15,
        }
    );
    assert_eq!(p.send_window(true), Some((15, true)));
    assert!(p.receive_resets(true));
}

#[test]
fn window_limits_are_honoured_and_eight_bits_means_sending_uncompressed() {
    let (p, response) = accept("permessage-deflate; server_max_window_bits=10").unwrap();
    assert!(
        response.ends_with("; server_max_window_bits=10"),
        "{response}"
    );
    assert_eq!(p.send_window(true), Some((10, true)));
    let (p, response) = accept("permessage-deflate; server_max_window_bits=\"8\"").unwrap();
    assert!(response.contains("server_max_window_bits=8"), "{response}");
    assert_eq!(
        p.send_window(true),
        None,
        "zlib cannot make an 8-bit window"
    );
    let (p, response) = accept("permessage-deflate; client_max_window_bits").unwrap();
    assert!(!response.contains("client_max_window_bits"), "{response}");
    assert_eq!(p.client_max_window_bits, 15);
    let (p, response) = accept("permessage-deflate; client_max_window_bits=9").unwrap();
    assert!(response.contains("client_max_window_bits=9"), "{response}");
    assert_eq!(p.send_window(false), Some((9, true)));
}

#[test]
fn bad_offers_are_declined_and_the_next_one_taken() {
    for bad in [
        "permessage-deflate; server_max_window_bits",
        "permessage-deflate; server_max_window_bits=16",
        "permessage-deflate; server_max_window_bits=7",
        "permessage-deflate; server_max_window_bits=08",
        "permessage-deflate; server_max_window_bits=1a",
        "permessage-deflate; client_max_window_bits=0",
        "permessage-deflate; server_no_context_takeover=1",
        "permessage-deflate; unknown_param",
        "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
    ] {
        assert_eq!(accept(bad), None, "{bad}");
        let two = format!("{bad}, permessage-deflate; client_max_window_bits");
        let (_, response) = accept(&two).unwrap_or_else(|| panic!("{two}"));
        assert!(!response.contains("client_max_window_bits="), "{response}");
    }
    // Several header values; other extensions skipped; the name is case-insensitive.
    let (_, response) = server_accept(
        ["x-webkit-deflate-frame", "foo; bar=1, PerMessage-Deflate"],
        &DeflateConfig::default(),
    )
    .unwrap();
    assert!(response.starts_with("permessage-deflate"));
    assert_eq!(accept("x-webkit-deflate-frame"), None);
    assert_eq!(accept(""), None);
    assert_eq!(accept("permessage-deflate; a b"), None, "broken syntax");
}

#[test]
fn context_takeover_is_agreed_when_configured_and_offered() {
    let config = DeflateConfig::default().context_takeover(12);
    let (p, response) = server_accept(["permessage-deflate"], &config).unwrap();
    assert_eq!(response, "permessage-deflate; server_max_window_bits=12");
    assert_eq!(p.send_window(true), Some((12, false)));
    assert!(!p.receive_resets(true));
    // The client asks us not to take over context: we do as asked.
    let (p, _) =
        server_accept(["permessage-deflate; server_no_context_takeover"], &config).unwrap();
    assert_eq!(p.send_window(true), Some((12, true)));
}

#[test]
fn a_client_checks_the_servers_answer() {
    let config = DeflateConfig::default();
    let offer = client_offer(&config);
    let (server_side, response) = server_accept([offer.as_str()], &config).unwrap();
    let client_side = client_check(&response, &config).unwrap();
    assert_eq!(server_side, client_side);
    assert_eq!(client_side.send_window(false), Some((15, true)));
    for bad in [
        "permessage-deflate, permessage-deflate",
        "x-other",
        "permessage-deflate; client_max_window_bits",
        "permessage-deflate; bogus",
        "permessage-deflate; server_max_window_bits=99",
    ] {
        assert!(client_check(bad, &config).is_err(), "{bad}");
    }
    let takeover = DeflateConfig::default().context_takeover(10);
    assert!(client_check("permessage-deflate; client_max_window_bits=11", &takeover).is_err());
    let p = client_check("permessage-deflate; client_max_window_bits=9", &takeover).unwrap();
    assert_eq!(p.send_window(false), Some((9, false)));
}

fn text(n: usize, seed: u32) -> Vec<u8> {
    let words = [
        "price",
        "\"bid\":",
        "101.25",
        "volume",
        "{\"sym\":\"ABC\"}",
        " ",
        "\n",
    ];
    let mut x = seed.wrapping_mul(2_654_435_761) | 1;
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        out.extend_from_slice(words[(x % words.len() as u32) as usize].as_bytes());
    }
    out.truncate(n);
    out
}

#[test]
fn messages_round_trip_with_and_without_context_takeover() {
    for takeover in [false, true] {
        let mut d = Deflater::new(15);
        let mut i = Inflater::new();
        let mut wire_total = 0;
        let mut plain_total = 0;
        for n in 0..1000u32 {
            let msg = text((n as usize * 37) % 5000, n);
            let mut wire = Vec::new();
            d.compress(&msg, &mut wire);
            if !takeover {
                d.reset();
            }
            let mut out = Vec::new();
            // In pieces, as frames arrive.
            let mid = wire.len() / 2;
            i.inflate(&wire[..mid], false, &mut out, 1 << 20).unwrap();
            i.inflate(&wire[mid..], true, &mut out, 1 << 20).unwrap();
            if !takeover {
                i.reset();
            }
            assert!(out == msg, "message {n}, takeover {takeover}");
            wire_total += wire.len();
            plain_total += msg.len();
        }
        assert!(
            wire_total * 3 < plain_total,
            "{wire_total} of {plain_total}"
        );
    }
}

#[test]
fn an_empty_message_compresses_to_one_byte_and_back() {
    let mut wire = Vec::new();
    Deflater::new(15).compress(b"", &mut wire);
    assert_eq!(wire, [0x00]);
    let mut out = Vec::new();
    Inflater::new().inflate(&wire, true, &mut out, 10).unwrap();
    assert!(out.is_empty());
}

#[test]
fn a_bomb_stops_at_the_limit_without_allocating_past_it() {
    let mut bomb = Vec::new();
    Deflater::with_level(15, 9).compress(&vec![0u8; 64 << 20], &mut bomb);
    assert!(bomb.len() < 128 * 1024, "{}", bomb.len());
    let mut out = Vec::new();
    let limit = 1 << 20;
    assert_eq!(
        Inflater::new().inflate(&bomb, true, &mut out, limit),
        Err(InflateError::TooBig)
    );
    assert!(out.capacity() <= limit + OUT_STEP, "{}", out.capacity());
    // Exactly at the limit is fine.
    let mut wire = Vec::new();
    Deflater::new(15).compress(&vec![7u8; limit], &mut wire);
    let mut out = Vec::new();
    Inflater::new()
        .inflate(&wire, true, &mut out, limit)
        .unwrap();
    assert_eq!(out.len(), limit);
}

#[test]
fn corrupt_data_is_an_error() {
    let mut out = Vec::new();
    assert_eq!(
        Inflater::new().inflate(&[0xff; 32], true, &mut out, 1 << 20),
        Err(InflateError::Corrupt)
    );
}

#[test]
fn history_priming_interoperates_with_a_stream_kept_whole_both_ways() {
    // A peer keeps one zlib stream for the connection's life (as browsers and most stacks
    // do); netpoll keeps the window's bytes and primes pooled streams with them. Both must
    // read each other, for every window and across messages larger than the window.
    for bits in 9..=15u8 {
        let (mut peer_deflater, mut peer_inflater) = (Deflater::new(bits), Inflater::new());
        let (mut ours_deflater, mut ours_inflater) = (Deflater::new(bits), Inflater::new());
        let (mut sent, mut received) = (History::new(bits), History::new(bits));
        let (mut wire_total, mut plain_total) = (0, 0);
        let count = if bits == 15 { 10_000 } else { 1_500 };
        for n in 0..count {
            let len = match n % 50 {
                0 => 0,
                1 => 3 << bits, // past the window
                k => (k as usize * 97) % 3000,
            };
            let msg = text(len, n);
            // Peer -> netpoll.
            let mut wire = Vec::new();
            peer_deflater.compress(&msg, &mut wire);
            let mut out = Vec::new();
            ours_inflater
                .inflate_after(&mut received, &wire, &mut out, 1 << 20)
                .unwrap_or_else(|e| panic!("bits {bits}, message {n}: {e}"));
            assert!(out == msg, "bits {bits}, message {n} inbound");
            assert!(received.len() <= received.window());
            // netpoll -> peer.
            let mut wire = Vec::new();
            ours_deflater.compress_after(&sent, &msg, &mut wire);
            sent.record(&msg);
            let mut out = Vec::new();
            peer_inflater
                .inflate(&wire, true, &mut out, 1 << 20)
                .unwrap_or_else(|e| panic!("bits {bits}, message {n}: {e}"));
            assert!(out == msg, "bits {bits}, message {n} outbound");
            assert!(sent.heap_bytes() <= sent.window(), "{}", sent.heap_bytes());
            wire_total += wire.len();
            plain_total += msg.len();
        }
        assert!(
            wire_total * 3 < plain_total,
            "bits {bits}: {wire_total} of {plain_total}"
        );
    }
}

#[test]
fn a_history_makes_repeated_messages_small() {
    let msg = text(2000, 7);
    let mut sent = History::new(15);
    let mut d = Deflater::new(15);
    let (mut first, mut second) = (Vec::new(), Vec::new());
    d.compress_after(&sent, &msg, &mut first);
    sent.record(&msg);
    d.compress_after(&sent, &msg, &mut second);
    assert!(
        second.len() * 4 < first.len(),
        "{} then {}",
        first.len(),
        second.len()
    );
    let mut received = History::new(15);
    let mut i = Inflater::new();
    for wire in [&first, &second] {
        let mut out = Vec::new();
        i.inflate_after(&mut received, wire, &mut out, 1 << 20)
            .unwrap();
        assert_eq!(out, msg);
    }
    // Without the history the second message means nothing (or something else).
    let mut out = Vec::new();
    let fresh = Inflater::new().inflate(&second, true, &mut out, 1 << 20);
    assert!(fresh.is_err() || out != msg);
}

#[test]
fn a_bomb_against_a_history_stops_at_the_limit_and_leaves_it_unchanged() {
    let mut bomb = Vec::new();
    Deflater::with_level(15, 9).compress(&vec![0u8; 8 << 20], &mut bomb);
    let mut received = History::new(10);
    let mut i = Inflater::new();
    let mut wire = Vec::new();
    Deflater::new(10).compress(b"some context first", &mut wire);
    let mut out = Vec::new();
    i.inflate_after(&mut received, &wire, &mut out, 1 << 20)
        .unwrap();
    assert_eq!(received.len(), 18);
    let before = received.clone();
    let mut out = Vec::new();
    assert_eq!(
        i.inflate_after(&mut received, &bomb, &mut out, 1 << 20),
        Err(InflateError::TooBig)
    );
    assert_eq!(received, before);
    assert!(out.capacity() <= (1 << 20) + OUT_STEP);
}
