//! A body being received into the store: written to a temporary file and hashed as it goes.
//! It becomes visible under its name (its BLAKE3) only once [`BodyWriter::finish`] has
//! checked it.

use std::io::{Read, Write};
use std::sync::Arc;

use fs_err as fs;

use super::objects::{file_times, named, Objects, Spot};
use super::StoreError;
use crate::tree::{Blake3, Body, BodyHasher, Md5, Sums, CHUNK};

/// What a body being received must be, and how to check it: its size, MD5 and BLAKE3 when
/// it is complete (one MD5 pass over its bytes), and with a chunk list each chunk as it
/// completes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expected {
    pub md5: Md5,
    /// The body's name.
    pub blake3: Blake3,
    pub size: u64,
    /// The manifest's chunk digests (empty for a body of at most one chunk, or where nothing
    /// is forwarded before the body is complete). Each chunk is checked against its BLAKE3
    /// chaining value as it completes, so the verified prefix can be forwarded before the
    /// rest comes (the whole MD5 covers every byte).
    pub chunks: Vec<Sums>,
}

impl Expected {
    /// A body checked whole, without its chunks.
    pub fn whole(md5: Md5, blake3: Blake3, size: u64) -> Self {
        Expected {
            md5,
            blake3,
            size,
            chunks: Vec::new(),
        }
    }

    /// A body as a manifest describes it, checked chunk by chunk and whole.
    pub fn of(body: &Body) -> Self {
        Expected {
            md5: body.md5,
            blake3: body.blake3,
            size: body.size,
            chunks: body.chunks.clone(),
        }
    }

    fn hasher(&self) -> BodyHasher {
        BodyHasher::new(true, false)
    }
}

/// A body being received: written to a temporary file and hashed as it goes. With a chunk
/// list, each chunk is checked as soon as it is complete: [`BodyWriter::verified`] is the
/// prefix known good, which a relay may forward before the body is finished.
pub struct BodyWriter {
    objects: Arc<Objects>,
    /// Where the verified body goes, below `objects`.
    dest: String,
    file: fs::File,
    tmp: Spot,
    expected: Expected,
    written: u64,
    hasher: BodyHasher,
    /// Bytes known good: whole checked chunks.
    verified: u64,
    /// The MD5 of the first this many bytes written, computed by the caller (see
    /// [`BodyWriter::write_whole`]): the hasher then hashes only the BLAKE3.
    md5_given: Option<(Md5, u64)>,
    /// The hasher's state at `verified`, to go back to when a chunk fails.
    at_verified: BodyHasher,
    /// Keep the bytes if dropped unfinished (a network transfer to resume later).
    keep_partial: bool,
    /// The temporary file is gone (renamed under the body's name, or removed): nothing to
    /// clean up when dropped.
    tmp_gone: bool,
    ahead: FlushAhead,
}

/// A large body is flushed to disk in the background every this many bytes while it arrives,
/// so the flush of the release at the end (one `syncfs`) waits only for its tail instead of
/// writing the whole body back then.
const FLUSH_AHEAD: u64 = 64 * 1024 * 1024;

/// Flushes a file being written in the background, every [`FLUSH_AHEAD`] bytes, one flush
/// at a time. Its outcome does not matter: the release's flush at the end is what says
/// whether the body is on disk.
#[derive(Debug, Default)]
pub struct FlushAhead {
    /// Where the last flush began, and the thread running it.
    flushed_at: u64,
    flushing: Option<std::thread::JoinHandle<()>>,
}

impl FlushAhead {
    /// Call after each write: `written` bytes of `file` are written so far.
    pub fn wrote(&mut self, file: &std::fs::File, written: u64) {
        if written < self.flushed_at + FLUSH_AHEAD
            || self.flushing.as_ref().is_some_and(|t| !t.is_finished())
        {
            return;
        }
        let Ok(file) = file.try_clone() else {
            return;
        };
        self.flushed_at = written;
        self.flushing = std::thread::Builder::new()
            .name("flush-ahead".into())
            .spawn(move || {
                let _ = file.sync_data();
            })
            .ok();
    }
}

impl BodyWriter {
    /// A writer of `expected` into `file` (at `tmp`), moved to `dest` when it checks out.
    pub(super) fn new(
        expected: Expected,
        objects: Arc<Objects>,
        dest: String,
        tmp: Spot,
        file: fs::File,
        keep_partial: bool,
    ) -> Self {
        BodyWriter {
            objects,
            dest,
            file,
            tmp,
            hasher: expected.hasher(),
            at_verified: expected.hasher(),
            expected,
            written: 0,
            verified: 0,
            md5_given: None,
            keep_partial,
            tmp_gone: false,
            ahead: FlushAhead::default(),
        }
    }

    /// Re-reads the bytes a resumed file already holds to rebuild the hash state, a block at
    /// a time. A bad chunk cuts the file back to the last good one and ends the check; a file
    /// longer than the body is emptied.
    pub(super) fn reabsorb(&mut self) -> Result<(), StoreError> {
        let len = self.file.metadata()?.len();
        if len > self.expected.size {
            self.file.set_len(0)?;
            return Ok(());
        }
        let mut buf = vec![0u8; (len as usize).clamp(1, crate::tree::hash::IO_BUF)];
        loop {
            let n = self.file.read(&mut buf)?;
            if n == 0 || self.absorb(&buf[..n], false).is_err() {
                return Ok(());
            }
        }
    }

    /// Writes and hashes `data`. A chunk that fails its check is cut off (the writer is back
    /// at [`BodyWriter::verified`]) and reported as [`StoreError::ChunkMismatch`].
    pub fn write(&mut self, data: &[u8]) -> Result<(), StoreError> {
        self.absorb(data, true)
    }

    /// Writes `data`, the whole body, whose MD5 the caller has computed (many small bodies
    /// are hashed together: see [`Md5::of_many`]); only its BLAKE3 is hashed here. The body
    /// is checked against both in [`BodyWriter::finish`], as any other.
    pub fn write_whole(&mut self, data: &[u8], md5: Md5) -> Result<(), StoreError> {
        if self.written > 0 || !self.expected.chunks.is_empty() {
            // Not a whole body received at once: hash it here, as written.
            return self.write(data);
        }
        self.hasher = BodyHasher::new(false, false);
        self.md5_given = Some((md5, data.len() as u64));
        self.absorb(data, true)
    }

    /// Hashes `data` (appending it to the file if `append`), checking each chunk it completes.
    fn absorb(&mut self, mut data: &[u8], append: bool) -> Result<(), StoreError> {
        let checks_chunks = !self.expected.chunks.is_empty();
        while !data.is_empty() {
            // Split at chunk boundaries so the state at each boundary can be kept.
            let take = if checks_chunks {
                ((CHUNK - self.written % CHUNK) as usize).min(data.len())
            } else {
                data.len()
            };
            let (piece, rest) = data.split_at(take);
            let done = if append {
                write_hashing(self.file.file_mut(), &mut self.hasher, piece)?
            } else {
                self.hasher.update(piece)
            };
            self.written += take as u64;
            // (The BLAKE3 runs chunk by chunk in any case; only a chunk list is checked.)
            for index in done.filter(|_| checks_chunks) {
                let want = self.expected.chunks.get(index).map(|s| s.blake3);
                if want != self.hasher.chunk(index).map(|s| s.blake3) {
                    self.file.set_len(self.verified)?;
                    self.rewind_to_verified();
                    return Err(StoreError::ChunkMismatch {
                        id: self.expected.blake3,
                        index,
                    });
                }
                self.verified = self.written;
                self.at_verified = self.hasher.clone();
            }
            data = rest;
        }
        if append {
            self.ahead.wrote(self.file.file(), self.written);
        }
        Ok(())
    }

    fn rewind_to_verified(&mut self) {
        self.hasher = self.at_verified.clone();
        self.written = self.verified;
    }

    pub fn written(&self) -> u64 {
        self.written
    }

    /// Bytes from the start known to match the manifest (whole chunks).
    pub fn verified(&self) -> u64 {
        self.verified
    }

    /// Checks size, chunks, BLAKE3 and (if asked) the whole MD5, then moves the body under its
    /// name. A mismatch deletes it.
    pub fn finish(mut self) -> Result<(), StoreError> {
        self.check()?;
        // Flushed with the rest of the batch (Store::commit_batch), not one by one. The
        // fan-out directory exists: Store::open made every one.
        self.objects.rename(&self.tmp, &self.dest)?;
        self.tmp_gone = true;
        Ok(())
    }

    /// Checks the body as [`BodyWriter::finish`] does, but leaves it where it was written,
    /// with the mode and modification time of the file it is (set through its descriptor):
    /// a body written under the path it will have in a stage (see [`super::stage`]). A
    /// mismatch deletes it.
    pub(super) fn finish_in_place(mut self, mode: u32, mtime: i64) -> Result<(), StoreError> {
        self.check()?;
        let file = self.file.file();
        let times = file_times(mtime);
        let path = self.file.path();
        rustix::fs::futimens(file, &times).map_err(|e| named("set times of", path, e))?;
        rustix::fs::fchmod(file, rustix::fs::Mode::from_raw_mode(mode))
            .map_err(|e| named("set permissions of", path, e))?;
        self.tmp_gone = true;
        Ok(())
    }

    /// Checks size, chunks, BLAKE3 and the whole MD5; a mismatch deletes the body.
    fn check(&mut self) -> Result<(), StoreError> {
        let size_ok = self.written == self.expected.size;
        let mut got = self.hasher.clone().finish();
        // A given MD5 covers only the bytes it came with: anything written after is unknown.
        let md5_ok = match self.md5_given {
            Some((md5, len)) => {
                got.md5 = md5;
                len == self.written && md5 == self.expected.md5
            }
            None => got.md5 == self.expected.md5,
        };
        // Every chunk but a short last one was checked as it completed; the BLAKE3 covers
        // every byte.
        if !size_ok || !md5_ok || got.blake3 != self.expected.blake3 {
            self.objects.remove(&self.tmp);
            self.tmp_gone = true;
            let what = if !size_ok {
                format!(
                    "got {} bytes, expected {}",
                    self.written, self.expected.size
                )
            } else if !md5_ok {
                format!("MD5 {}, expected {}", got.md5, self.expected.md5)
            } else {
                format!("BLAKE3 {}, expected {}", got.blake3, self.expected.blake3)
            };
            return Err(StoreError::Mismatch {
                id: self.expected.blake3,
                what,
            });
        }
        Ok(())
    }
}

/// Hashes `data` while it is written to `file`, on two threads if it is large (the copy into
/// the page cache costs about what the BLAKE3 does; the MD5 runs beside both).
fn write_hashing(
    file: &mut std::fs::File,
    hasher: &mut BodyHasher,
    data: &[u8],
) -> std::io::Result<std::ops::Range<usize>> {
    if data.len() < crate::tree::hash::PARALLEL_MIN {
        file.write_all(data)?;
        return Ok(hasher.update(data));
    }
    std::thread::scope(|s| {
        let written = s.spawn(|| file.write_all(data));
        let done = hasher.update(data);
        written
            .join()
            .unwrap_or_else(|_| Err(std::io::Error::other("writing a body panicked")))
            .map(|()| done)
    })
}

impl Drop for BodyWriter {
    fn drop(&mut self) {
        // After a successful finish the temp path no longer exists; otherwise clean up,
        // unless these are the first bytes of a transfer to resume.
        if !self.keep_partial && !self.tmp_gone {
            self.objects.remove(&self.tmp);
        }
    }
}
