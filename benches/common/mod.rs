//! Text payloads shared by the benches (not a bench itself: `benches/common/mod.rs` is not
//! discovered as a target).

/// ASCII JSON of exactly `n` bytes.
pub fn json(n: usize) -> Vec<u8> {
    let mut s = String::with_capacity(n + 64);
    let mut i = 0u64;
    while s.len() < n {
        let x = i.wrapping_mul(2_654_435_761) >> 7;
        s.push_str(&format!(
            r#"{{"sym":"S{:03}","bid":{}.{:02},"ask":{}.{:02},"qty":{}}},"#,
            x % 500,
            100 + x % 50,
            x % 100,
            101 + x % 50,
            (x >> 3) % 100,
            x % 10_000
        ));
        i += 1;
    }
    s.truncate(n);
    s.into_bytes()
}

/// Chat-like JSON of exactly `n` bytes mixing 1- to 4-byte characters.
pub fn mixed(n: usize) -> Vec<u8> {
    const TEXTS: [&str; 4] = [
        "Привет, как дела? Всё хорошо",
        "你好世界，今天天气很好",
        "ok 👍 see you 🎉🚀",
        "Grüße aus Köln, ça va?",
    ];
    let mut s = String::with_capacity(n + 128);
    let mut i = 0;
    while s.len() < n {
        s.push_str(&format!(
            r#"{{"user":"u{i}","text":"{}"}},"#,
            TEXTS[i % TEXTS.len()]
        ));
        i += 1;
    }
    while s.len() > n {
        s.pop(); // whole characters only
    }
    while s.len() < n {
        s.push(' ');
    }
    s.into_bytes()
}
