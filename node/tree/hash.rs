//! Every digest Cascade computes of bodies: MD5 (what users check with `md5sum`) and BLAKE3
//! (collision-resistant: what names a body in the store, what the origin's signature covers),
//! the one-pass hasher of a body's whole digests and chunk digests, and hashing a file on disk.
//! Nothing else in the crate calls the `md-5` or `blake3` crates except the manifest's hash
//! tree.

use std::fmt;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use blake3::hazmat::{self, HasherExt};
use md5::{Digest, Md5 as Md5Hasher};
use serde::{Deserialize, Serialize};

/// A digest type: fixed bytes, shown and parsed as lowercase hex.
macro_rules! digest {
    ($(#[$doc:meta])* $name:ident, $len:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
        pub struct $name(pub [u8; $len]);

        /// A digest's bytes are already uniform: hashing its first 8 bytes is as good as
        /// hashing all of them and several times faster (sets of every body of a release are
        /// built on every node per release). Equal digests hash equal, as `Hash` requires.
        impl std::hash::Hash for $name {
            fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
                let mut first = [0u8; 8];
                first.copy_from_slice(&self.0[..8]);
                state.write_u64(u64::from_le_bytes(first));
            }
        }

        impl $name {
            pub fn hex(&self) -> String {
                const DIGITS: &[u8; 16] = b"0123456789abcdef";
                let mut out = String::with_capacity(2 * $len);
                for b in self.0 {
                    out.push(DIGITS[(b >> 4) as usize] as char);
                    out.push(DIGITS[(b & 15) as usize] as char);
                }
                out
            }

            /// Parses exactly the right number of lowercase or uppercase hex digits.
            pub fn from_hex(hex: &str) -> Option<Self> {
                let digit = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
                let bytes = hex.as_bytes();
                if bytes.len() != 2 * $len {
                    return None;
                }
                let mut out = [0u8; $len];
                for (i, pair) in bytes.chunks(2).enumerate() {
                    out[i] = digit(pair[0])? << 4 | digit(pair[1])?;
                }
                Some($name(out))
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.hex())
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($name), "({})"), self.hex())
            }
        }
    };
}

digest!(
    /// An MD5 digest: kept for every file (and chunk) so that `md5sum` checks what Cascade
    /// delivered, and verified at every hop; not collision-resistant, so never trusted alone.
    Md5,
    16
);

digest!(
    /// A BLAKE3 digest: of a whole body (what `b3sum` prints), the chaining value of a chunk's
    /// subtree, or a manifest's hash tree. Bodies are stored and requested by it.
    Blake3,
    32
);

impl Md5 {
    /// The MD5 of `data`.
    pub fn of(data: &[u8]) -> Self {
        Md5(Md5Hasher::digest(data).into())
    }

    /// The MD5 of each of `bodies`, several at a time (see [`super::md5_lanes`]): for many
    /// small bodies several times faster than [`Md5::of`] on each.
    pub fn of_many(bodies: &[&[u8]]) -> Vec<Self> {
        super::md5_lanes::md5_many(bodies)
            .into_iter()
            .map(Md5)
            .collect()
    }
}

impl Blake3 {
    /// The BLAKE3 of `data`.
    pub fn of(data: &[u8]) -> Self {
        Blake3(*blake3::hash(data).as_bytes())
    }

    /// The BLAKE3 of the empty body (always held by every store).
    pub fn empty() -> Self {
        Self::of(b"")
    }
}

/// The digests of one chunk of a large body: the BLAKE3 chaining value of the chunk as a
/// subtree of the whole body's BLAKE3 tree (so the whole BLAKE3 follows from the chunks'
/// without hashing the bytes again; see [`BodyHasher`]), which a relay checks each chunk by.
///
/// `md5` is zero in what this version makes. Chunks were checked by their MD5 until protocol
/// 4 brought BLAKE3; since then nothing read it, and computing it cost the origin a second
/// MD5 pass over every byte of a large file (1.6 s of a core per GiB here). The field stays,
/// so that manifests and saved releases keep their layout; a release made by an older origin
/// may still carry real ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sums {
    pub md5: Md5,
    pub blake3: Blake3,
}

/// Bytes per chunk of a large body. A body larger than one chunk carries the BLAKE3 chaining
/// value of each chunk (the last may be short), so a relay can verify and forward it chunk by
/// chunk while the rest is still arriving.
pub const CHUNK: u64 = 4 * 1024 * 1024;

/// How many chunks a body of `size` bytes lists: none when it fits in one chunk.
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
    pub blake3: Blake3,
    pub size: u64,
    /// The digests of each [`CHUNK`]; empty for a body of at most one chunk.
    pub chunks: Vec<Sums>,
}

/// I/O buffer for reading and hashing bodies.
pub const IO_BUF: usize = 1024 * 1024;

/// Data at least this large is hashed on two threads by [`BodyHasher`]: a thread costs tens
/// of microseconds, hashing this much about a millisecond.
pub(crate) const PARALLEL_MIN: usize = 512 * 1024;

/// The digests of a body in one pass over its bytes: its BLAKE3 (always: it names the body),
/// its whole MD5 (if wanted), and for a body larger than [`CHUNK`] the chunk BLAKE3 chaining
/// values, from which the whole BLAKE3 is merged at the end (BLAKE3 is a tree: hashing by
/// chunks costs nothing over hashing the whole).
#[derive(Clone)]
pub struct BodyHasher {
    /// MD5 of the whole body (not needed by a relay that verifies chunks).
    whole: Option<Md5Hasher>,
    /// Whether [`BodyHasher::finish`] lists the chunks.
    chunks: bool,
    b3: ChunkBlake3,
    len: u64,
}

/// Feeds `data` to `hasher` in pieces that end at chunk boundaries (`in_chunk` bytes of the
/// current chunk were hashed before), calling `complete` each time a chunk is.
fn by_chunk<H>(
    in_chunk: &mut u64,
    mut data: &[u8],
    hasher: &mut H,
    hash: impl Fn(&mut H, &[u8]),
    mut complete: impl FnMut(&mut H),
) {
    while !data.is_empty() {
        let take = ((CHUNK - *in_chunk) as usize).min(data.len());
        hash(hasher, &data[..take]);
        *in_chunk += take as u64;
        data = &data[take..];
        if *in_chunk == CHUNK {
            complete(hasher);
            *in_chunk = 0;
        }
    }
}

#[derive(Clone, Default)]
struct ChunkBlake3 {
    /// The current chunk, as a subtree at its offset in the body.
    hasher: blake3::Hasher,
    in_chunk: u64,
    /// Chaining values of the chunks completed.
    done: Vec<Blake3>,
    /// The root hash of the first chunk: the whole BLAKE3 if the body is exactly one chunk.
    first_root: Option<Blake3>,
}

impl ChunkBlake3 {
    fn update(&mut self, data: &[u8]) {
        let ChunkBlake3 {
            hasher,
            in_chunk,
            done,
            first_root,
        } = self;
        by_chunk(
            in_chunk,
            data,
            hasher,
            |h, piece| {
                h.update(piece);
            },
            |h| {
                if done.is_empty() {
                    *first_root = Some(Blake3(*h.finalize().as_bytes()));
                }
                done.push(Blake3(h.finalize_non_root()));
                *h = blake3::Hasher::new();
                h.set_input_offset(done.len() as u64 * CHUNK);
            },
        );
    }

    /// The whole BLAKE3 of a body of `len` bytes and its chunk chaining values (none for a
    /// body of at most one chunk).
    fn finish(mut self, len: u64) -> (Blake3, Vec<Blake3>) {
        if len <= CHUNK {
            let whole = match self.first_root {
                Some(root) if len == CHUNK => root,
                _ => Blake3(*self.hasher.finalize().as_bytes()),
            };
            return (whole, Vec::new());
        }
        if self.in_chunk > 0 {
            self.done.push(Blake3(self.hasher.finalize_non_root()));
        }
        (blake3_root(&self.done, len), self.done)
    }
}

/// Whether `data` is chunk `index` of a chunked body as `sums` describes it (its BLAKE3
/// chaining value as the subtree at the chunk's offset): one chunk checked on its own.
pub fn chunk_matches(data: &[u8], index: usize, sums: &Sums) -> bool {
    let mut h = blake3::Hasher::new();
    h.set_input_offset(index as u64 * CHUNK);
    h.update(data);
    h.finalize_non_root() == sums.blake3.0
}

/// The BLAKE3 of a body of `len` (> [`CHUNK`]) bytes from the chaining values of its chunks,
/// merged along BLAKE3's left-balanced tree (every 4 MiB chunk at a 4 MiB offset is one of its
/// subtrees). Equal to `blake3::hash` of the bytes (tested below).
pub fn blake3_root(chunks: &[Blake3], len: u64) -> Blake3 {
    fn subtree(chunks: &[Blake3], len: u64) -> hazmat::ChainingValue {
        if chunks.len() <= 1 {
            return chunks.first().map_or([0; 32], |c| c.0);
        }
        let (left, right, left_len) = split(chunks, len);
        hazmat::merge_subtrees_non_root(
            &subtree(left, left_len),
            &subtree(right, len - left_len),
            hazmat::Mode::Hash,
        )
    }
    fn split(chunks: &[Blake3], len: u64) -> (&[Blake3], &[Blake3], u64) {
        let left_len = hazmat::left_subtree_len(len);
        let n = usize::try_from(left_len / CHUNK)
            .unwrap_or(usize::MAX)
            .min(chunks.len());
        (&chunks[..n], &chunks[n..], left_len)
    }
    if chunks.len() < 2 {
        // Not a chunked body (a manifest refuses such a chunk list); never the real digest.
        return Blake3([0; 32]);
    }
    let (left, right, left_len) = split(chunks, len);
    let root = hazmat::merge_subtrees_root(
        &subtree(left, left_len),
        &subtree(right, len - left_len),
        hazmat::Mode::Hash,
    );
    Blake3(*root.as_bytes())
}

/// Feeds `data` to each digest wanted, the MD5 on a thread of its own if `data` is large.
fn feed(whole: Option<&mut Md5Hasher>, b3: &mut ChunkBlake3, data: &[u8]) {
    match whole {
        Some(w) if data.len() >= PARALLEL_MIN => std::thread::scope(|s| {
            s.spawn(|| w.update(data));
            b3.update(data);
        }),
        Some(w) => {
            w.update(data);
            b3.update(data);
        }
        None => b3.update(data),
    }
}

impl BodyHasher {
    /// A hasher computing the BLAKE3, the whole MD5 if `want_whole`, and the list of chunks
    /// if `want_chunks`.
    pub fn new(want_whole: bool, want_chunks: bool) -> Self {
        BodyHasher {
            whole: want_whole.then(Md5Hasher::new),
            chunks: want_chunks,
            b3: ChunkBlake3::default(),
            len: 0,
        }
    }

    /// Hashes `data`; returns the indexes of the chunks it completed. A large `data` is hashed
    /// on two threads (MD5 is the slowest step of moving a body, and the digests are
    /// independent): the MD5 on one, the BLAKE3 on the other.
    pub fn update(&mut self, data: &[u8]) -> std::ops::Range<usize> {
        let first = self.b3.done.len();
        self.len += data.len() as u64;
        if !data.is_empty() {
            feed(self.whole.as_mut(), &mut self.b3, data);
        }
        first..self.b3.done.len()
    }

    /// The digests of chunk `index`, once it is complete (see [`Sums`]: its MD5 is zero).
    pub fn chunk(&self, index: usize) -> Option<Sums> {
        let blake3 = *self.b3.done.get(index)?;
        Some(Sums {
            md5: Md5([0; 16]),
            blake3,
        })
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The digests as a manifest carries them: the whole MD5 (zero if not wanted), the
    /// BLAKE3, and the chunk list (empty for a body of at most one chunk, or if the chunks
    /// were not wanted).
    pub fn finish(self) -> Body {
        let size = self.len;
        let md5 = self
            .whole
            .map_or(Md5([0; 16]), |w| Md5(w.finalize().into()));
        let (blake3, cvs) = self.b3.finish(size);
        let chunks = match self.chunks {
            true if size > CHUNK => cvs
                .into_iter()
                .map(|blake3| Sums {
                    md5: Md5([0; 16]),
                    blake3,
                })
                .collect(),
            _ => Vec::new(),
        };
        Body {
            md5,
            blake3,
            size,
            chunks,
        }
    }
}

/// A read buffer for a file of `len` bytes: its size plus one (so the end shows at once) up to
/// [`IO_BUF`]. Zeroing a full buffer per small file would cost more than reading it.
pub fn buffer_for(len: u64) -> Vec<u8> {
    vec![0u8; len.saturating_add(1).clamp(1, IO_BUF as u64) as usize]
}

/// Reads all of `input`, passing each block to `sink` after hashing it; returns what was
/// read. `sink` sees the bytes in order (the store copies them while they are hashed).
/// (`len`: the file's length when opened, which sizes the buffer.)
pub fn hash_reader(
    input: &mut fs_err::File,
    len: u64,
    chunks: bool,
    mut sink: impl FnMut(&[u8]) -> io::Result<()>,
) -> io::Result<Body> {
    let mut h = BodyHasher::new(true, chunks);
    let mut buf = buffer_for(len);
    loop {
        let n = input.read(&mut buf)?;
        if n == 0 {
            return Ok(h.finish());
        }
        h.update(&buf[..n]);
        sink(&buf[..n])?;
    }
}

/// MD5, BLAKE3, size and (if `chunks`) chunk digests of a file, in one read.
pub fn hash_file(path: &Path, chunks: bool) -> io::Result<Body> {
    let (mut file, len) = open_regular(path, None)?;
    hash_reader(&mut file, len, chunks, |_| Ok(()))
}

/// Files read and hashed by [`hash_together`] are at most this large: above it, a file is
/// hashed alone as it is read ([`hash_reader`]), not held whole in memory.
pub const TOGETHER: u64 = 1024 * 1024;

/// Most files, and most bytes, read together by one [`hash_together`].
pub const GROUP_FILES: usize = 256;
pub const GROUP_BYTES: u64 = 8 * 1024 * 1024;

/// `items` in order, in groups for [`hash_together`]: runs of those `small` gives a size
/// for (at most [`TOGETHER`]) go together, up to [`GROUP_FILES`] items and [`GROUP_BYTES`]
/// bytes (`true`), every other item alone (`false`).
pub fn groups<T>(
    items: impl IntoIterator<Item = T>,
    small: impl Fn(&T) -> Option<u64>,
) -> Vec<(bool, Vec<T>)> {
    let mut out = Vec::new();
    let mut run: Vec<T> = Vec::new();
    let mut bytes = 0;
    for item in items {
        let Some(size) = small(&item).filter(|&s| s <= TOGETHER) else {
            out.push((false, vec![item]));
            continue;
        };
        if run.len() == GROUP_FILES || bytes + size > GROUP_BYTES {
            out.push((true, std::mem::take(&mut run)));
            bytes = 0;
        }
        bytes += size;
        run.push(item);
    }
    if !run.is_empty() {
        out.push((true, run));
    }
    out
}

/// A file for [`hash_together`]: where it is, the size a listing saw (it is read up to one
/// byte past it, so one that grew is seen to differ and cannot fill memory) and, as for
/// [`open_regular`], the very file (device, inode) the listing saw there.
pub struct ToHash {
    pub path: PathBuf,
    pub size: u64,
    pub expect: Option<(u64, u64)>,
}

/// Reads `files` one after the other into one buffer and hashes them, their MD5s side by
/// side ([`Md5::of_many`]). `seen` gets each file's bytes as read, by its index. Per file:
/// its digests (no chunk list) and the file, open, for a stat after the read; or why it
/// could not be read.
pub fn hash_together(
    files: &[ToHash],
    mut seen: impl FnMut(usize, &[u8]),
) -> Vec<io::Result<(Body, fs_err::File)>> {
    let total: u64 = files.iter().map(|f| f.size + 1).sum();
    let mut buf = Vec::with_capacity(total as usize);
    let reads: Vec<io::Result<(std::ops::Range<usize>, fs_err::File)>> = (files.iter())
        .enumerate()
        .map(|(i, ToHash { path, size, expect })| {
            let (f, _) = open_regular(path, *expect)?;
            let start = buf.len();
            // Through the std file, which reads into the buffer's spare room as it is
            // (fs_err's would have it zeroed first).
            f.file().take(size + 1).read_to_end(&mut buf)?;
            seen(i, &buf[start..]);
            Ok((start..buf.len(), f))
        })
        .collect();
    let slices: Vec<&[u8]> = (reads.iter())
        .filter_map(|r| r.as_ref().ok())
        .map(|(range, _)| &buf[range.clone()])
        .collect();
    let mut md5s = Md5::of_many(&slices).into_iter();
    (reads.into_iter())
        .map(|r| {
            let (range, file) = r?;
            let data = &buf[range];
            let body = Body {
                md5: md5s.next().expect("an MD5 for each file read"),
                blake3: Blake3::of(data),
                size: data.len() as u64,
                chunks: Vec::new(),
            };
            Ok((body, file))
        })
        .collect()
}

/// Reads exactly `len` bytes of `file` onto the end of `out`, into its spare room as it is
/// (not zeroed first: every byte is read over). Fewer bytes is `UnexpectedEof`, and `out`
/// is then as it was.
pub fn read_onto(mut file: &std::fs::File, len: u64, out: &mut Vec<u8>) -> io::Result<()> {
    let start = out.len();
    out.reserve(len as usize);
    match (&mut file).take(len).read_to_end(out) {
        Ok(n) if n as u64 == len => Ok(()),
        Ok(n) => {
            out.truncate(start);
            Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("{n} of {len} bytes"),
            ))
        }
        Err(e) => {
            out.truncate(start);
            Err(e)
        }
    }
}

/// Opens `path` for reading only if it is a regular file, and (with `expect`) the very file
/// (device, inode) a walk found there: never through a symlink swapped in since (a content
/// author could otherwise make a root-run origin publish `/etc/shadow`), never blocking on a
/// FIFO. Anything else is `NotFound`: the file the walk saw is gone. Returns the file and its
/// length when opened.
pub fn open_regular(path: &Path, expect: Option<(u64, u64)>) -> io::Result<(fs_err::File, u64)> {
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
    Ok((fs_err::File::from_parts(f, path), m.len()))
}

fn gone(path: &Path, why: &str) -> io::Error {
    io::Error::new(io::ErrorKind::NotFound, format!("{} {why}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The digests of each chunk, computed on its own as a subtree (BLAKE3; the MD5 is zero).
    fn chunk_sums(body: &[u8]) -> Vec<Sums> {
        body.chunks(CHUNK as usize)
            .enumerate()
            .map(|(i, c)| {
                let mut h = blake3::Hasher::new();
                h.set_input_offset(i as u64 * CHUNK);
                h.update(c);
                Sums {
                    md5: Md5([0; 16]),
                    blake3: Blake3(h.finalize_non_root()),
                }
            })
            .collect()
    }

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
            // Each chunk's digests as a relay reads them before the body ends.
            let each: Vec<Sums> = (0..3).map_while(|i| h.chunk(i)).collect();
            assert_eq!(each, chunk_sums(&body)[..2], "write size {step}");
            let got = h.finish();
            assert_eq!(got.md5, Md5::of(&body));
            assert_eq!(got.blake3, Blake3::of(&body));
            assert_eq!(got.chunks, chunk_sums(&body), "write size {step}");
        }
        // A body of at most one chunk carries no chunk list.
        for size in [0, 1, CHUNK - 1, CHUNK] {
            let mut h = BodyHasher::new(true, true);
            let body = vec![1; size as usize];
            h.update(&body);
            let got = h.finish();
            assert!(got.chunks.is_empty());
            assert_eq!(got.blake3, Blake3::of(&body), "size {size}");
            assert_eq!(chunk_count(size), 0);
        }
        assert_eq!(chunk_count(CHUNK + 1), 2);
    }

    #[test]
    fn the_whole_blake3_follows_from_the_chunks_for_every_tree_shape() {
        // 2 to 9 chunks cover balanced and unbalanced trees; the last chunk full or short.
        let body = crate::testkit::noise(9 * CHUNK as usize, 11);
        for chunks in 2..=9u64 {
            for tail in [CHUNK, 1, CHUNK / 2 + 3] {
                let len = (chunks - 1) * CHUNK + tail;
                let bytes = &body[..len as usize];
                let sums = chunk_sums(bytes);
                let cvs: Vec<Blake3> = sums.iter().map(|s| s.blake3).collect();
                assert_eq!(
                    blake3_root(&cvs, len),
                    Blake3::of(bytes),
                    "{chunks} chunks, tail {tail}"
                );
                // Without the chunk list (a leaf checking the whole body only).
                let mut h = BodyHasher::new(true, false);
                h.update(bytes);
                let got = h.finish();
                assert_eq!((got.md5, got.blake3), (Md5::of(bytes), Blake3::of(bytes)));
                assert!(got.chunks.is_empty());
            }
        }
    }

    #[test]
    fn hex_round_trips() {
        let md5 = Md5::of(b"hello");
        assert_eq!(md5.hex(), "5d41402abc4b2a76b9719d911017c592");
        assert_eq!(Md5::from_hex(&md5.hex()), Some(md5));
        assert_eq!(Md5::from_hex("xyz"), None);
        let b3 = Blake3::of(b"hello");
        assert_eq!(Blake3::from_hex(&b3.hex()), Some(b3));
        assert_eq!(Blake3::from_hex(&md5.hex()), None);
    }
}
