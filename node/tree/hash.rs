//! Every MD5 Cascade computes: the digest type, the one-pass hasher of a body's whole MD5 and
//! chunk MD5s, and hashing a file on disk. Nothing else in the crate calls the `md-5` crate
//! except the manifest's hash tree.

use std::fmt;
use std::io::{self, Read};
use std::path::Path;

use md5::{Digest, Md5 as Md5Hasher};
use serde::{Deserialize, Serialize};

/// An MD5 digest.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Md5(pub [u8; 16]);

impl Md5 {
    /// The MD5 of `data`.
    pub fn of(data: &[u8]) -> Self {
        Md5(Md5Hasher::digest(data).into())
    }

    pub fn hex(&self) -> String {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut out = String::with_capacity(32);
        for b in self.0 {
            out.push(DIGITS[(b >> 4) as usize] as char);
            out.push(DIGITS[(b & 15) as usize] as char);
        }
        out
    }

    /// Parses 32 lowercase or uppercase hex digits.
    pub fn from_hex(hex: &str) -> Option<Self> {
        let digit = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
        let bytes = hex.as_bytes();
        if bytes.len() != 32 {
            return None;
        }
        let mut out = [0u8; 16];
        for (i, pair) in bytes.chunks(2).enumerate() {
            out[i] = digit(pair[0])? << 4 | digit(pair[1])?;
        }
        Some(Md5(out))
    }
}

impl fmt::Display for Md5 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.hex())
    }
}

impl fmt::Debug for Md5 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Md5({})", self.hex())
    }
}

/// Bytes per chunk of a large body. A body larger than one chunk carries the MD5 of each
/// chunk (the last may be short), so a relay can verify and forward it chunk by chunk while
/// the rest is still arriving.
pub const CHUNK: u64 = 4 * 1024 * 1024;

/// How many chunk MD5s a body of `size` bytes carries: none when it fits in one chunk.
pub fn chunk_count(size: u64) -> u64 {
    if size <= CHUNK {
        0
    } else {
        size.div_ceil(CHUNK)
    }
}

/// What a file holds, as a manifest describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Body {
    pub md5: Md5,
    pub size: u64,
    /// The MD5 of each [`CHUNK`]; empty for a body of at most one chunk.
    pub chunks: Vec<Md5>,
}

/// I/O buffer for reading and hashing bodies.
pub const IO_BUF: usize = 1024 * 1024;

/// Data at least this large is hashed on two threads (whole and chunks) by [`BodyHasher`]:
/// a thread costs tens of microseconds, hashing this much about a millisecond.
const PARALLEL_MIN: usize = 512 * 1024;

/// MD5 of a whole body and, for a body larger than [`CHUNK`], of each chunk, in one pass.
#[derive(Clone, Default)]
pub struct BodyHasher {
    whole: Md5Hasher,
    chunk: Md5Hasher,
    /// Bytes hashed into the current chunk.
    in_chunk: u64,
    chunks: Vec<Md5>,
    len: u64,
    /// Whether to keep the whole-body MD5 (not needed by a relay that verifies chunks).
    want_whole: bool,
    want_chunks: bool,
}

impl BodyHasher {
    /// A hasher computing the whole MD5 and/or the chunk MD5s.
    pub fn new(want_whole: bool, want_chunks: bool) -> Self {
        BodyHasher {
            want_whole,
            want_chunks,
            ..Default::default()
        }
    }

    /// Hashes `data`; returns the MD5s of the chunks it completed. With both the whole MD5
    /// and the chunk MD5s wanted, a large `data` is hashed on two threads (MD5 is the slowest
    /// step of moving a body, and the two digests are independent).
    pub fn update(&mut self, data: &[u8]) -> std::ops::Range<usize> {
        if self.want_whole && self.want_chunks && data.len() >= PARALLEL_MIN {
            let mut whole = std::mem::take(&mut self.whole);
            std::thread::scope(|s| {
                let other = s.spawn(move || {
                    whole.update(data);
                    whole
                });
                let done = self.update_chunks(data);
                self.whole = other.join().expect("hashing does not panic");
                done
            })
        } else {
            if self.want_whole {
                self.whole.update(data);
            }
            self.update_chunks(data)
        }
    }

    fn update_chunks(&mut self, mut data: &[u8]) -> std::ops::Range<usize> {
        let first = self.chunks.len();
        self.len += data.len() as u64;
        if self.want_chunks {
            while !data.is_empty() {
                let room = (CHUNK - self.in_chunk) as usize;
                let take = room.min(data.len());
                self.chunk.update(&data[..take]);
                self.in_chunk += take as u64;
                data = &data[take..];
                if self.in_chunk == CHUNK {
                    self.chunks.push(Md5(self.chunk.finalize_reset().into()));
                    self.in_chunk = 0;
                }
            }
        }
        first..self.chunks.len()
    }

    /// Chunks completed so far.
    pub fn chunks(&self) -> &[Md5] {
        &self.chunks
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The whole MD5 (if wanted) and the chunk list as a manifest carries it: empty for a body
    /// of at most one chunk.
    pub fn finish(mut self) -> Body {
        let md5 = Md5(self.whole.finalize().into());
        let size = self.len;
        if !self.want_chunks || self.len <= CHUNK {
            return Body {
                md5,
                size,
                chunks: Vec::new(),
            };
        }
        if self.in_chunk > 0 {
            self.chunks.push(Md5(self.chunk.finalize().into()));
        }
        Body {
            md5,
            size,
            chunks: self.chunks,
        }
    }
}

/// A read buffer for `file`: its size plus one (so the end shows at once) up to [`IO_BUF`].
/// Zeroing a full buffer per small file would cost more than reading it.
pub fn buffer_for(file: &fs_err::File) -> Vec<u8> {
    let len = file.metadata().map_or(IO_BUF as u64, |m| m.len() + 1);
    vec![0u8; len.clamp(1, IO_BUF as u64) as usize]
}

/// Reads all of `input`, passing each block to `sink` after hashing it; returns what was
/// read. `sink` sees the bytes in order (the store copies them while they are hashed).
pub fn hash_reader(
    input: &mut fs_err::File,
    chunks: bool,
    mut sink: impl FnMut(&[u8]) -> io::Result<()>,
) -> io::Result<Body> {
    let mut h = BodyHasher::new(true, chunks);
    let mut buf = buffer_for(input);
    loop {
        let n = input.read(&mut buf)?;
        if n == 0 {
            return Ok(h.finish());
        }
        h.update(&buf[..n]);
        sink(&buf[..n])?;
    }
}

/// MD5, size and (if `chunks`) chunk MD5s of a file, in one read.
pub fn hash_file(path: &Path, chunks: bool) -> io::Result<Body> {
    hash_reader(&mut open_regular(path, None)?, chunks, |_| Ok(()))
}

/// Opens `path` for reading only if it is a regular file, and (with `expect`) the very file
/// (device, inode) a walk found there: never through a symlink swapped in since (a content
/// author could otherwise make a root-run origin publish `/etc/shadow`), never blocking on a
/// FIFO. Anything else is `NotFound`: the file the walk saw is gone.
pub fn open_regular(path: &Path, expect: Option<(u64, u64)>) -> io::Result<fs_err::File> {
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    let flags = rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::NONBLOCK;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(flags.bits() as i32)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            // ELOOP: a symlink where the walk saw a file; ENXIO: a socket.
            Some(c)
                if c == rustix::io::Errno::LOOP.raw_os_error()
                    || c == rustix::io::Errno::NXIO.raw_os_error() =>
            {
                gone(path, "is no longer a regular file")
            }
            _ => io::Error::new(
                e.kind(),
                format!("failed to open file `{}`: {e}", path.display()),
            ),
        })?;
    let m = f.metadata()?;
    if !m.is_file() {
        return Err(gone(path, "is no longer a regular file"));
    }
    if expect.is_some_and(|id| id != (m.dev(), m.ino())) {
        return Err(gone(path, "was replaced since it was listed"));
    }
    Ok(fs_err::File::from_parts(f, path))
}

fn gone(path: &Path, why: &str) -> io::Error {
    io::Error::new(io::ErrorKind::NotFound, format!("{} {why}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_hasher_splits_chunks_at_any_write_size() {
        let body = crate::testkit::noise(2 * CHUNK as usize + 5, 7);
        for step in [
            1000,
            1 << 20,
            CHUNK as usize,
            CHUNK as usize + 1,
            body.len(),
        ] {
            let mut h = BodyHasher::new(true, true);
            for part in body.chunks(step) {
                h.update(part);
            }
            let got = h.finish();
            assert_eq!(got.md5, Md5::of(&body));
            let expect: Vec<Md5> = body.chunks(CHUNK as usize).map(Md5::of).collect();
            assert_eq!(got.chunks, expect, "write size {step}");
        }
        // A body of at most one chunk carries no chunk list.
        for size in [0, 1, CHUNK - 1, CHUNK] {
            let mut h = BodyHasher::new(true, true);
            h.update(&vec![1; size as usize]);
            assert!(h.finish().chunks.is_empty());
            assert_eq!(chunk_count(size), 0);
        }
        assert_eq!(chunk_count(CHUNK + 1), 2);
    }

    #[test]
    fn hex_round_trips() {
        let md5 = Md5::of(b"hello");
        assert_eq!(md5.hex(), "5d41402abc4b2a76b9719d911017c592");
        assert_eq!(Md5::from_hex(&md5.hex()), Some(md5));
        assert_eq!(Md5::from_hex("xyz"), None);
    }
}
