//! Test content: bytes that do not compress away, the same for the same seed.

/// Deterministic pseudo-random bytes (xorshift), so a big file does not compress away.
/// Seeds `2k` and `2k + 1` give the same bytes.
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}
