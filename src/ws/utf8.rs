//! UTF-8 validation of text: received messages (whole, in pieces, inflated), close reasons,
//! and text the application sends as shared bytes.
//!
//! simdutf8 (SIMD, runtime CPU detection) from [`SIMD_FROM`] bytes up, `std` below: measured
//! in `benches/utf8.rs` (docs/BENCHMARKS.md, issue 18), simdutf8 validates ASCII JSON 1.6x
//! faster at 64 B, 4x at 1 KiB and 2.5x at 16 KiB and up, and text with multi-byte characters
//! about 10x faster; under 64 B it hands the input to std itself, through an extra indirect
//! call that made it slower at 16 and 32 B.

/// Shortest input validated by simdutf8: its SIMD loop takes 64-byte chunks.
const SIMD_FROM: usize = 64;

/// `bytes` as text, if it is UTF-8.
#[inline]
pub(crate) fn from_utf8(bytes: &[u8]) -> Option<&str> {
    if bytes.len() < SIMD_FROM {
        std::str::from_utf8(bytes).ok()
    } else {
        simdutf8::basic::from_utf8(bytes).ok()
    }
}

/// How a piece of a text message (cut anywhere) checks out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Piece {
    /// UTF-8 throughout.
    Whole,
    /// UTF-8 up to the given offset, where a character starts that the piece ends in the
    /// middle of (its remaining bytes may come with the next piece).
    Cut(usize),
    /// Not UTF-8, whatever follows.
    Invalid,
}

/// Checks a piece of text, which may end inside a character. The same answer as
/// `std::str::from_utf8` (`Ok`, an error without `error_len`, an error with one) without
/// asking for the error's position: the character the piece may end inside is found from
/// the last three bytes, and everything before it takes the fast check.
pub(crate) fn check_piece(bytes: &[u8]) -> Piece {
    let cut = incomplete_tail(bytes);
    if from_utf8(&bytes[..cut]).is_none() {
        return Piece::Invalid;
    }
    if cut == bytes.len() {
        return Piece::Whole;
    }
    // 1 to 3 bytes starting with a lead byte that announces more: a character's beginning
    // (to be completed by the next piece) or already wrong (say 0xE0 0x80).
    match std::str::from_utf8(&bytes[cut..]) {
        Err(e) if e.error_len().is_none() => Piece::Cut(cut),
        _ => Piece::Invalid,
    }
}

/// Where the last character starts if its lead byte announces more bytes than follow it (the
/// piece may end inside it); otherwise `bytes.len()`. Only the last three bytes are looked at:
/// a character is at most four bytes long.
fn incomplete_tail(bytes: &[u8]) -> usize {
    let len = bytes.len();
    for back in 1..=len.min(3) {
        let b = bytes[len - back];
        if b & 0xc0 != 0x80 {
            // Not a continuation byte: the last character's first byte.
            let width = match b {
                0xc0..=0xdf => 2,
                0xe0..=0xef => 3,
                0xf0..=0xff => 4,
                _ => 1,
            };
            return if width > back { len - back } else { len };
        }
    }
    len
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What std says of a piece, in `Piece` terms.
    fn by_std(bytes: &[u8]) -> Piece {
        match std::str::from_utf8(bytes) {
            Ok(_) => Piece::Whole,
            Err(e) if e.error_len().is_none() => Piece::Cut(e.valid_up_to()),
            Err(_) => Piece::Invalid,
        }
    }

    #[test]
    fn agrees_with_std_on_every_cut_of_mixed_text() {
        let text = "a€ü😀中\u{7ff}\u{800}\u{ffff}\u{10000}\u{10ffff}z".repeat(9);
        let bytes = text.as_bytes();
        assert!(bytes.len() > 2 * SIMD_FROM);
        for start in 0..8 {
            for end in start..=bytes.len() {
                let piece = &bytes[start..end];
                assert_eq!(check_piece(piece), by_std(piece), "{piece:x?}");
                assert_eq!(from_utf8(piece), std::str::from_utf8(piece).ok());
            }
        }
    }

    #[test]
    fn agrees_with_std_on_random_and_corrupted_bytes() {
        let mut rng = crate::fuzz::Rng(0x9e37_79b9_7f4a_7c15);
        let valid = "héllo wörld €😀 中文 ".repeat(20).into_bytes();
        for case in 0..100_000 {
            let len = rng.below(if case % 2 == 0 { 8 } else { 200 }) as usize;
            let mut piece: Vec<u8> = if case % 3 == 0 {
                rng.bytes(len)
            } else {
                // Valid text from a character boundary (mostly), cut anywhere.
                let mut start = rng.below(valid.len() as u64 - 210) as usize;
                while case % 5 != 0 && valid[start] & 0xc0 == 0x80 {
                    start += 1;
                }
                valid[start..start + len].to_vec()
            };
            // Corrupt a byte or two, often near the end where pieces are cut.
            for _ in 0..rng.below(3) {
                if !piece.is_empty() {
                    let at = if rng.below(2) == 0 {
                        piece.len() - 1 - rng.below(piece.len().min(4) as u64) as usize
                    } else {
                        rng.below(piece.len() as u64) as usize
                    };
                    piece[at] = [0x80, 0xbf, 0xc0, 0xc2, 0xe0, 0xed, 0xf0, 0xf4, 0xf5, 0xff]
                        [rng.below(10) as usize];
                }
            }
            assert_eq!(check_piece(&piece), by_std(&piece), "{piece:x?}");
            assert_eq!(from_utf8(&piece), std::str::from_utf8(&piece).ok());
        }
    }
}
