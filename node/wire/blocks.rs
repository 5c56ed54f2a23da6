//! Packed body streams: the answer to a [`super::BodyRequest`] whose `compress` is not
//! [`Compress::Off`] is the same byte stream as the raw answer, cut into blocks, each stored
//! raw or compressed with zstd (one zstd frame per block, so blocks decode independently and
//! a resumed body simply starts a new stream of blocks).
//!
//! A block is a 4-byte big-endian header and its stored bytes. The header's top bit says
//! whether the block is compressed; the other 31 bits are the stored length, at most
//! [`MAX_STORED`]. A block holds 1 to [`BLOCK`] bytes of the raw stream: a compressed block
//! that would decode to more is refused before more than [`BLOCK`] bytes are written, so a
//! hostile parent cannot make a child allocate more than that per block.

use serde::{Deserialize, Serialize};

use super::WireError;

/// Most raw bytes in one block.
pub const BLOCK: usize = 1 << 20;
/// Most stored bytes in one block: a raw block, or a compressed one (a block that does not
/// shrink is sent raw, so a compressed one is never larger than this either).
pub const MAX_STORED: usize = BLOCK;
/// Bytes of a block's header.
pub const BLOCK_HEADER: usize = 4;
const COMPRESSED: u32 = 1 << 31;
/// Bytes of each block compressed first in [`Compress::Auto`] to decide whether the block is
/// worth compressing.
pub const SAMPLE: usize = 64 * 1024;
/// [`Compress::Auto`] compresses a block only if its sample shrinks to at most this share
/// (already compressed data, such as images or archives, does not).
const AUTO_RATIO: f64 = 0.9;
/// zstd's level: fast enough for a few hundred MB/s per core, which any link worth
/// compressing for is slower than.
pub const LEVEL: i32 = 3;

/// How a child asks for its bodies to be sent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Compress {
    /// The raw bytes (no blocks).
    #[default]
    Off,
    /// Blocks, each compressed with zstd unless that does not make it smaller.
    Zstd,
    /// Blocks, each compressed only if a sample of it shrinks enough.
    Auto,
}

/// What one block decodes as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockHeader {
    pub stored: usize,
    pub compressed: bool,
}

/// Reads a block header, refusing an empty or oversized block.
pub fn parse_header(header: [u8; BLOCK_HEADER]) -> Result<BlockHeader, WireError> {
    let word = u32::from_be_bytes(header);
    let stored = (word & !COMPRESSED) as usize;
    if stored == 0 || stored > MAX_STORED {
        return Err(WireError::Malformed(format!(
            "a body block of {stored} bytes (1 to {MAX_STORED})"
        )));
    }
    Ok(BlockHeader {
        stored,
        compressed: word & COMPRESSED != 0,
    })
}

/// Packs blocks for one body stream, keeping a zstd context across them.
pub struct Packer {
    compress: Compress,
    zstd: zstd::bulk::Compressor<'static>,
    scratch: Vec<u8>,
}

impl std::fmt::Debug for Packer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Packer")
            .field("compress", &self.compress)
            .finish()
    }
}

impl Packer {
    /// A packer for `compress` (which must not be [`Compress::Off`]).
    pub fn new(compress: Compress) -> std::io::Result<Self> {
        Ok(Packer {
            compress,
            zstd: zstd::bulk::Compressor::new(LEVEL)?,
            scratch: Vec::new(),
        })
    }

    /// Appends `raw` (1 to [`BLOCK`] bytes) to `out` as one block: compressed if that makes
    /// it smaller (and, for [`Compress::Auto`], if its sample shrinks enough), else raw.
    pub fn pack(&mut self, raw: &[u8], out: &mut Vec<u8>) {
        assert!(
            !raw.is_empty() && raw.len() <= BLOCK,
            "a block holds 1 to {BLOCK} bytes"
        );
        if self.worth_trying(raw) {
            self.scratch.clear();
            self.scratch
                .reserve(zstd::zstd_safe::compress_bound(raw.len()));
            if let Ok(n) = self.zstd.compress_to_buffer(raw, &mut self.scratch) {
                if n < raw.len() {
                    out.extend_from_slice(&(n as u32 | COMPRESSED).to_be_bytes());
                    out.extend_from_slice(&self.scratch[..n]);
                    return;
                }
            }
        }
        out.extend_from_slice(&(raw.len() as u32).to_be_bytes());
        out.extend_from_slice(raw);
    }

    fn worth_trying(&mut self, raw: &[u8]) -> bool {
        match self.compress {
            Compress::Off => false,
            Compress::Zstd => true,
            Compress::Auto if raw.len() <= SAMPLE => true,
            Compress::Auto => {
                let sample = &raw[..SAMPLE];
                self.scratch.clear();
                self.scratch
                    .reserve(zstd::zstd_safe::compress_bound(sample.len()));
                self.zstd
                    .compress_to_buffer(sample, &mut self.scratch)
                    .is_ok_and(|n| (n as f64) <= sample.len() as f64 * AUTO_RATIO)
            }
        }
    }
}

/// Unpacks blocks, keeping a zstd context across them.
pub struct Unpacker {
    zstd: zstd::bulk::Decompressor<'static>,
    /// Exactly [`BLOCK`] bytes of room: the decoder cannot write more.
    scratch: Vec<u8>,
}

impl std::fmt::Debug for Unpacker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Unpacker")
    }
}

impl Unpacker {
    pub fn new() -> std::io::Result<Self> {
        Ok(Unpacker {
            zstd: zstd::bulk::Decompressor::new()?,
            scratch: Vec::with_capacity(BLOCK),
        })
    }

    /// Appends what one block's `stored` bytes hold to `out`: at most [`BLOCK`] bytes, at
    /// least one.
    pub fn unpack(
        &mut self,
        header: BlockHeader,
        stored: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), WireError> {
        if !header.compressed {
            out.extend_from_slice(stored);
            return Ok(());
        }
        // The decoder writes into the scratch's capacity and fails rather than go beyond it.
        self.scratch.clear();
        let n = self
            .zstd
            .decompress_to_buffer(stored, &mut self.scratch)
            .map_err(|e| WireError::Malformed(format!("a compressed body block: {e}")))?;
        if n == 0 || n > BLOCK {
            return Err(WireError::Malformed(format!(
                "a compressed body block of {n} bytes (1 to {BLOCK})"
            )));
        }
        out.extend_from_slice(&self.scratch[..n]);
        Ok(())
    }
}

/// Unpacks a whole stream of blocks held in memory (a packed message), refusing it once it
/// would unpack to more than `max` bytes, before that much is held.
pub fn unpack_all(mut stream: &[u8], max: usize) -> Result<Vec<u8>, WireError> {
    let mut unpacker = Unpacker::new().map_err(|e| WireError::Malformed(e.to_string()))?;
    let (mut out, mut block) = (Vec::new(), Vec::with_capacity(BLOCK));
    while !stream.is_empty() {
        let header = (stream.get(..BLOCK_HEADER))
            .and_then(|h| h.try_into().ok())
            .ok_or(WireError::Truncated)?;
        let header = parse_header(header)?;
        let stored =
            (stream.get(BLOCK_HEADER..BLOCK_HEADER + header.stored)).ok_or(WireError::Truncated)?;
        block.clear();
        unpacker.unpack(header, stored, &mut block)?;
        let len = out.len() + block.len();
        if len > max {
            return Err(WireError::TooLarge(len, max));
        }
        out.extend_from_slice(&block);
        stream = &stream[BLOCK_HEADER + header.stored..];
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unpack_all(stream: &[u8]) -> Result<Vec<u8>, WireError> {
        super::unpack_all(stream, usize::MAX)
    }

    fn text(n: usize) -> Vec<u8> {
        (0..n)
            .map(|i| b"<div class=\"item\">cascade</div>\n"[i % 32])
            .collect()
    }

    #[test]
    fn text_shrinks_noise_goes_raw_and_both_come_back_exactly() {
        let noise = crate::testkit::noise(BLOCK, 7);
        for compress in [Compress::Zstd, Compress::Auto] {
            let mut p = Packer::new(compress).unwrap();
            let mut out = Vec::new();
            p.pack(&text(BLOCK), &mut out);
            let text_len = out.len();
            assert!(text_len < BLOCK / 20, "{compress:?}: {text_len}");
            p.pack(&noise, &mut out);
            assert_eq!(out.len() - text_len, BLOCK_HEADER + BLOCK, "noise is raw");
            p.pack(b"x", &mut out);
            let mut want = text(BLOCK);
            want.extend_from_slice(&noise);
            want.push(b'x');
            assert_eq!(unpack_all(&out).unwrap(), want);
        }
    }

    #[test]
    fn auto_skips_a_block_whose_sample_does_not_shrink() {
        // Noise first, text after: the sample says no, so even the text half goes raw.
        let mut raw = crate::testkit::noise(SAMPLE, 3);
        raw.extend_from_slice(&text(BLOCK - SAMPLE));
        let mut out = Vec::new();
        Packer::new(Compress::Auto).unwrap().pack(&raw, &mut out);
        assert_eq!(out.len(), BLOCK_HEADER + BLOCK);
        let mut out = Vec::new();
        Packer::new(Compress::Zstd).unwrap().pack(&raw, &mut out);
        assert!(out.len() < BLOCK_HEADER + BLOCK);
        assert_eq!(unpack_all(&out).unwrap(), raw);
    }

    #[test]
    fn hostile_blocks_are_refused() {
        // Empty and oversized headers.
        assert!(parse_header(0u32.to_be_bytes()).is_err());
        assert!(parse_header(COMPRESSED.to_be_bytes()).is_err());
        assert!(parse_header(((MAX_STORED + 1) as u32).to_be_bytes()).is_err());
        // Garbage that claims to be zstd.
        let mut u = Unpacker::new().unwrap();
        let h = BlockHeader {
            stored: 5,
            compressed: true,
        };
        assert!(u.unpack(h, b"hello", &mut Vec::new()).is_err());
        // A bomb: a valid zstd frame of more than BLOCK bytes is refused, not inflated.
        let bomb = zstd::bulk::compress(&vec![0u8; 64 * BLOCK], 3).unwrap();
        let h = BlockHeader {
            stored: bomb.len(),
            compressed: true,
        };
        let mut out = Vec::new();
        assert!(u.unpack(h, &bomb, &mut out).is_err());
        assert!(out.capacity() <= 2 * BLOCK);
    }
}
