//! The content-addressed store: verified file bodies kept by MD5 in the node's data dir.
//!
//! Layout under `DATA/store`: `objects/ab/abcdef…` (the MD5 in hex, fanned out by its first
//! byte) and `tmp/` for bodies being received. A body becomes visible under its MD5 only after
//! its size and MD5 were checked ([`BodyWriter::finish`]), so anything in `objects/` is
//! verified; a crash leaves at most garbage in `tmp/`, which [`Store::open`] clears. Bodies
//! are flushed to disk per batch (a release), not per file: see [`Store::begin_batch`].

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::manifest::{BodyHasher, Md5, CHUNK};

/// Suffix of a partially received body in `tmp/`.
const PARTIAL: &str = ".partial";

/// I/O buffer for reading and hashing bodies.
pub const IO_BUF: usize = 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("body {expected} failed verification: got {got_size} bytes with MD5 {got}, expected {size} bytes")]
    Mismatch {
        expected: Md5,
        size: u64,
        got: Md5,
        got_size: u64,
    },
    #[error("body {md5}: chunk {index} failed verification")]
    ChunkMismatch { md5: Md5, index: usize },
}

/// What a body being received must be, and how to check it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expected {
    pub md5: Md5,
    pub size: u64,
    /// The manifest's chunk MD5s (empty for a body of at most one chunk). Each chunk is
    /// checked as it completes, so the verified prefix can be forwarded before the rest comes.
    pub chunks: Vec<Md5>,
    /// Also check the MD5 of the whole body. A body without chunks is always checked whole;
    /// a relay that only stores and forwards may rely on its chunks alone.
    pub whole: bool,
}

impl Expected {
    /// A body checked by its whole MD5 only.
    pub fn whole(md5: Md5, size: u64) -> Self {
        Expected {
            md5,
            size,
            chunks: Vec::new(),
            whole: true,
        }
    }

    fn hasher(&self) -> BodyHasher {
        BodyHasher::new(
            self.whole || self.chunks.is_empty(),
            !self.chunks.is_empty(),
        )
    }
}

pub(crate) fn io_at(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Verified bodies by MD5.
#[derive(Debug)]
pub struct Store {
    objects: PathBuf,
    tmp: PathBuf,
    /// Present while bodies written since it was created may not be on disk yet.
    dirty: PathBuf,
    next_tmp: AtomicU64,
}

impl Store {
    /// Opens (creating) the store under `data/store` and removes leftover temporary files.
    pub fn open(data: &Path) -> Result<Self, StoreError> {
        let root = data.join("store");
        let objects = root.join("objects");
        let tmp = root.join("tmp");
        fs::create_dir_all(&objects).map_err(io_at(&objects))?;
        fs::create_dir_all(&tmp).map_err(io_at(&tmp))?;
        // Leftovers of a crash go, except partial bodies, which later fetches resume.
        for e in fs::read_dir(&tmp).map_err(io_at(&tmp))?.flatten() {
            if !e.file_name().to_string_lossy().ends_with(PARTIAL) {
                let _ = fs::remove_file(e.path());
            }
        }
        let store = Store {
            objects,
            tmp,
            dirty: root.join("dirty"),
            next_tmp: AtomicU64::new(0),
        };
        store.recheck_after_crash()?;
        // The empty body is always held, so empty files never travel.
        let empty = Md5::of(b"");
        if !store.has(&empty) {
            store.writer(empty, 0)?.finish()?;
        }
        Ok(store)
    }

    /// Starts a batch of writes (a release being fetched or published): bodies are not flushed
    /// one by one but all at once by [`Store::commit_batch`]. Should the node die first, the
    /// next [`Store::open`] re-verifies every body written since, so the store never holds a
    /// body that does not match its name.
    pub fn begin_batch(&self) -> Result<(), StoreError> {
        // An older marker (a batch that failed) is kept: its time covers this batch too.
        match fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&self.dirty)
        {
            Ok(f) => f.sync_all().map_err(io_at(&self.dirty)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
            Err(e) => Err(StoreError::Io {
                path: self.dirty.clone(),
                source: e,
            }),
        }
    }

    /// Flushes every body written since [`Store::begin_batch`] with one `syncfs`.
    pub fn commit_batch(&self) -> Result<(), StoreError> {
        let dir = File::open(&self.objects).map_err(io_at(&self.objects))?;
        rustix::fs::syncfs(&dir).map_err(|e| StoreError::Io {
            path: self.objects.clone(),
            source: e.into(),
        })?;
        match fs::remove_file(&self.dirty) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(StoreError::Io {
                path: self.dirty.clone(),
                source: e,
            }),
            _ => Ok(()),
        }
    }

    /// After a crash inside a batch: re-hashes bodies written since the batch began and
    /// removes any that do not match their name.
    fn recheck_after_crash(&self) -> Result<(), StoreError> {
        let Ok(since) = fs::metadata(&self.dirty).and_then(|m| m.modified()) else {
            return Ok(());
        };
        // Allow for timestamp granularity.
        let since = since - std::time::Duration::from_secs(2);
        let mut removed = 0;
        for fan in fs::read_dir(&self.objects)
            .map_err(io_at(&self.objects))?
            .flatten()
        {
            for obj in fs::read_dir(fan.path())
                .map_err(io_at(&fan.path()))?
                .flatten()
            {
                let path = obj.path();
                let recent = obj
                    .metadata()
                    .and_then(|m| m.modified())
                    .is_ok_and(|t| t >= since);
                if !recent {
                    continue;
                }
                let name = obj.file_name().to_string_lossy().into_owned();
                if hash_file(&path).map(|(md5, _)| md5.hex()).ok().as_deref() != Some(name.as_str())
                {
                    let _ = fs::remove_file(&path);
                    removed += 1;
                }
            }
        }
        if removed > 0 {
            tracing::warn!(removed, "removed bodies left damaged by a crash");
        }
        self.commit_batch()
    }

    /// The directory that holds the bodies.
    pub fn objects(&self) -> &Path {
        &self.objects
    }

    /// Where the body with this MD5 lives (whether or not it is held).
    pub fn path(&self, md5: &Md5) -> PathBuf {
        let hex = md5.hex();
        self.objects.join(&hex[..2]).join(hex)
    }

    /// The size of a held body (`None` if it is not held).
    pub fn size_hint(&self, md5: &Md5) -> Option<u64> {
        fs::metadata(self.path(md5)).ok().map(|m| m.len())
    }

    pub fn has(&self, md5: &Md5) -> bool {
        self.path(md5).is_file()
    }

    /// Every held body, from one listing of the store: cheaper than [`Store::has`] per body
    /// when asking about a whole release (a directory read returns many names at once).
    pub fn held(&self) -> Result<std::collections::HashSet<Md5>, StoreError> {
        let mut out = std::collections::HashSet::new();
        for fan in fs::read_dir(&self.objects).map_err(io_at(&self.objects))? {
            let fan = fan.map_err(io_at(&self.objects))?.path();
            for obj in fs::read_dir(&fan).map_err(io_at(&fan))? {
                let obj = obj.map_err(io_at(&fan))?;
                if let Some(md5) = obj.file_name().to_str().and_then(Md5::from_hex) {
                    out.insert(md5);
                }
            }
        }
        Ok(out)
    }

    /// Starts receiving a body that must have `size` bytes and MD5 `md5`.
    pub fn writer(&self, md5: Md5, size: u64) -> Result<BodyWriter, StoreError> {
        let n = self.next_tmp.fetch_add(1, Ordering::Relaxed);
        let tmp = self
            .tmp
            .join(format!("{}.{}.{n}", md5.hex(), std::process::id()));
        let file = File::create(&tmp).map_err(io_at(&tmp))?;
        Ok(self.body_writer(Expected::whole(md5, size), tmp, file, false))
    }

    fn body_writer(
        &self,
        expected: Expected,
        tmp: PathBuf,
        file: File,
        keep_partial: bool,
    ) -> BodyWriter {
        BodyWriter {
            dest: self.path(&expected.md5),
            file,
            tmp,
            hasher: expected.hasher(),
            at_verified: expected.hasher(),
            expected,
            written: 0,
            verified: 0,
            keep_partial,
        }
    }

    /// Where a partially received body is kept (see [`Store::resume_writer`]). While it is
    /// being received, its verified prefix may be read from here and forwarded.
    pub fn partial_path(&self, md5: &Md5) -> PathBuf {
        self.tmp.join(format!("{}{PARTIAL}", md5.hex()))
    }

    /// Starts or resumes receiving a body from the network. Bytes kept from an interrupted
    /// transfer are read back to rebuild the MD5 state; [`BodyWriter::written`] is where to
    /// ask the parent to continue. If the writer is dropped unfinished, what it has is kept for
    /// the next attempt; a body that fails verification is discarded whole.
    /// A chunk that fails its check is cut off, with everything after it.
    pub fn resume_writer(&self, expected: Expected) -> Result<BodyWriter, StoreError> {
        let tmp = self.partial_path(&expected.md5);
        let file = fs::OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&tmp)
            .map_err(io_at(&tmp))?;
        let len = file.metadata().map_err(io_at(&tmp))?.len();
        let mut w = self.body_writer(expected, tmp, file, true);
        if len > w.expected.size {
            w.file.set_len(0).map_err(io_at(&w.tmp))?;
            return Ok(w);
        }
        // Re-hash what was kept, a block at a time; a bad chunk cuts the file back to the last
        // good one (see `absorb`) and ends the check.
        let mut buf = vec![0u8; (len as usize).clamp(1, IO_BUF)];
        loop {
            let n = (&w.file).read(&mut buf).map_err(io_at(&w.tmp))?;
            if n == 0 || w.absorb(&buf[..n], false).is_err() {
                break;
            }
        }
        Ok(w)
    }

    /// Reads a local file once, hashing it while copying it to a temporary file, and keeps the
    /// copy under its MD5 unless the store already holds that body (the origin's publish).
    /// What is stored is what was hashed, even if the file changes meanwhile.
    pub fn ingest(&self, src: &Path) -> Result<(Md5, u64, Vec<Md5>), StoreError> {
        let mut input = File::open(src).map_err(io_at(src))?;
        let n = self.next_tmp.fetch_add(1, Ordering::Relaxed);
        let tmp = TmpFile(self.tmp.join(format!("ingest.{}.{n}", std::process::id())));
        let mut out = File::create(&tmp.0).map_err(io_at(&tmp.0))?;
        let mut h = BodyHasher::new(true, true);
        let mut buf = buffer_for(&input);
        loop {
            let n = input.read(&mut buf).map_err(io_at(src))?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
            out.write_all(&buf[..n]).map_err(io_at(&tmp.0))?;
        }
        let size = h.len();
        let (md5, chunks) = h.finish();
        if !self.has(&md5) {
            let dest = self.path(&md5);
            let parent = dest.parent().expect("object paths have a fan-out parent");
            fs::create_dir_all(parent).map_err(io_at(parent))?;
            fs::rename(&tmp.0, &dest).map_err(io_at(&dest))?;
        }
        Ok((md5, size, chunks))
    }
}

impl Store {
    /// Copies a local file into the store as body `md5` if it is exactly that body (checked
    /// while copying); returns whether it was. A node whose `dir` is the only copy of its
    /// bodies takes a renamed file's body from its old path this way.
    pub fn adopt(&self, src: &Path, md5: Md5, size: u64) -> Result<bool, StoreError> {
        let mut input = match File::open(src) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(io_at(src)(e)),
        };
        let mut w = self.writer(md5, size)?;
        let mut buf = buffer_for(&input);
        loop {
            let n = input.read(&mut buf).map_err(io_at(src))?;
            if n == 0 {
                break;
            }
            w.write(&buf[..n])?;
            if w.written() > size {
                return Ok(false);
            }
        }
        match w.finish() {
            Ok(()) => Ok(true),
            Err(StoreError::Mismatch { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }
}

/// A temporary file removed when dropped (a no-op once it was renamed away).
struct TmpFile(PathBuf);

impl Drop for TmpFile {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

impl Store {
    /// Deletes every held body whose MD5 is not in `keep`; returns how many were removed.
    pub fn retain(&self, keep: &std::collections::HashSet<Md5>) -> Result<u64, StoreError> {
        let keep_hex: std::collections::HashSet<String> = keep.iter().map(Md5::hex).collect();
        let empty = Md5::of(b"").hex();
        let mut removed = 0;
        for fan in fs::read_dir(&self.objects).map_err(io_at(&self.objects))? {
            let fan = fan.map_err(io_at(&self.objects))?.path();
            for obj in fs::read_dir(&fan).map_err(io_at(&fan))? {
                let obj = obj.map_err(io_at(&fan))?;
                let name = obj.file_name().to_string_lossy().into_owned();
                if name != empty && !keep_hex.contains(&name) {
                    fs::remove_file(obj.path()).map_err(io_at(&obj.path()))?;
                    removed += 1;
                }
            }
        }
        // Partial bodies nothing needs any more.
        for e in fs::read_dir(&self.tmp).map_err(io_at(&self.tmp))?.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name
                .strip_suffix(PARTIAL)
                .is_some_and(|hex| !keep_hex.contains(hex))
            {
                let _ = fs::remove_file(e.path());
            }
        }
        Ok(removed)
    }
}

/// A body being received: written to a temporary file and hashed as it goes. With a chunk
/// list, each chunk is checked as soon as it is complete: [`BodyWriter::verified`] is the
/// prefix known good, which a relay may forward before the body is finished.
pub struct BodyWriter {
    /// Where the verified body goes.
    dest: PathBuf,
    file: File,
    tmp: PathBuf,
    expected: Expected,
    written: u64,
    hasher: BodyHasher,
    /// Bytes known good: whole checked chunks.
    verified: u64,
    /// The hasher's state at `verified`, to go back to when a chunk fails.
    at_verified: BodyHasher,
    /// Keep the bytes if dropped unfinished (a network transfer to resume later).
    keep_partial: bool,
}

impl BodyWriter {
    /// Writes and hashes `data`. A chunk that fails its check is cut off (the writer is back
    /// at [`BodyWriter::verified`]) and reported as [`StoreError::ChunkMismatch`].
    pub fn write(&mut self, data: &[u8]) -> Result<(), StoreError> {
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
            if append {
                self.file.write_all(piece).map_err(io_at(&self.tmp))?;
            }
            self.written += take as u64;
            let done = self.hasher.update(piece);
            for index in done {
                if self.expected.chunks.get(index) != Some(&self.hasher.chunks()[index]) {
                    self.file.set_len(self.verified).map_err(io_at(&self.tmp))?;
                    self.rewind_to_verified();
                    return Err(StoreError::ChunkMismatch {
                        md5: self.expected.md5,
                        index,
                    });
                }
                self.verified = self.written;
                self.at_verified = self.hasher.clone();
            }
            data = rest;
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

    /// Checks size, chunks and (if asked) the whole MD5, then moves the body under its name.
    /// A mismatch deletes it.
    pub fn finish(self) -> Result<(), StoreError> {
        let size_ok = self.written == self.expected.size;
        let (got, chunks) = self.hasher.clone().finish();
        let whole_ok =
            !(self.expected.whole || self.expected.chunks.is_empty()) || got == self.expected.md5;
        if !size_ok || !whole_ok || chunks != self.expected.chunks {
            let _ = fs::remove_file(&self.tmp);
            return Err(StoreError::Mismatch {
                expected: self.expected.md5,
                size: self.expected.size,
                got,
                got_size: self.written,
            });
        }
        // Flushed with the rest of the batch (Store::commit_batch), not one by one.
        let dest = self.dest.clone();
        let parent = dest.parent().expect("object paths have a fan-out parent");
        fs::create_dir_all(parent).map_err(io_at(parent))?;
        fs::rename(&self.tmp, &dest).map_err(io_at(&dest))
    }
}

impl Drop for BodyWriter {
    fn drop(&mut self) {
        // After a successful finish the temp path no longer exists; otherwise clean up,
        // unless these are the first bytes of a transfer to resume.
        if !self.keep_partial {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

/// MD5 and size of a file, read in large blocks.
pub fn hash_file(path: &Path) -> Result<(Md5, u64), StoreError> {
    hash_body(path, false).map(|(md5, size, _)| (md5, size))
}

/// A read buffer for `file`: its size plus one (so the end shows at once) up to [`IO_BUF`].
/// Zeroing a full buffer per small file would cost more than reading it.
fn buffer_for(file: &File) -> Vec<u8> {
    let len = file.metadata().map_or(IO_BUF as u64, |m| m.len() + 1);
    vec![0u8; len.clamp(1, IO_BUF as u64) as usize]
}

/// MD5, size and (if `chunks`) chunk MD5s of a file, in one read.
pub fn hash_body(path: &Path, chunks: bool) -> Result<(Md5, u64, Vec<Md5>), StoreError> {
    let mut f = File::open(path).map_err(io_at(path))?;
    let mut h = BodyHasher::new(true, chunks);
    let mut buf = buffer_for(&f);
    loop {
        let n = f.read(&mut buf).map_err(io_at(path))?;
        if n == 0 {
            let size = h.len();
            let (md5, chunks) = h.finish();
            return Ok((md5, size, chunks));
        }
        h.update(&buf[..n]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A body of two chunks and a bit, checked chunk by chunk.
    fn chunked(whole: bool) -> (Vec<u8>, Expected) {
        let body = crate::demo::noise(2 * CHUNK as usize + 5, 3);
        let h = {
            let mut h = BodyHasher::new(true, true);
            h.update(&body);
            h.finish()
        };
        let expected = Expected {
            md5: h.0,
            size: body.len() as u64,
            chunks: h.1,
            whole,
        };
        (body, expected)
    }

    #[test]
    fn chunks_are_verified_as_they_complete_and_a_bad_one_is_cut_off() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(d.path()).unwrap();
        for whole in [false, true] {
            let (body, exp) = chunked(whole);
            let mut w = s.resume_writer(exp.clone()).unwrap();
            w.write(&body[..CHUNK as usize - 1]).unwrap();
            assert_eq!(w.verified(), 0);
            w.write(&body[CHUNK as usize - 1..CHUNK as usize + 10])
                .unwrap();
            assert_eq!(w.verified(), CHUNK);
            // A flipped byte in the second chunk: refused, cut back to the first chunk.
            let mut bad = body[CHUNK as usize + 10..2 * CHUNK as usize].to_vec();
            bad[7] ^= 1;
            let e = w.write(&bad).unwrap_err();
            assert!(
                matches!(e, StoreError::ChunkMismatch { index: 1, .. }),
                "{e}"
            );
            assert_eq!((w.written(), w.verified()), (CHUNK, CHUNK));
            assert_eq!(fs::metadata(s.partial_path(&exp.md5)).unwrap().len(), CHUNK);
            // The partial file on disk resumes from the verified prefix.
            drop(w);
            let mut w = s.resume_writer(exp.clone()).unwrap();
            assert_eq!(w.verified(), CHUNK);
            w.write(&body[CHUNK as usize..]).unwrap();
            assert_eq!(w.verified(), 2 * CHUNK);
            w.finish().unwrap();
            assert_eq!(fs::read(s.path(&exp.md5)).unwrap(), body);
            fs::remove_file(s.path(&exp.md5)).unwrap();
        }
        // A damaged partial file is cut back to its last good chunk when resumed.
        let (mut body, exp) = chunked(false);
        body[CHUNK as usize + 3] ^= 1;
        fs::write(s.partial_path(&exp.md5), &body[..2 * CHUNK as usize]).unwrap();
        assert_eq!(s.resume_writer(exp).unwrap().written(), CHUNK);
    }

    #[test]
    fn verified_bodies_only() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(d.path()).unwrap();
        assert!(s.has(&Md5::of(b"")));
        let md5 = Md5::of(b"hello");
        let mut w = s.writer(md5, 5).unwrap();
        w.write(b"hellO").unwrap();
        assert!(matches!(w.finish(), Err(StoreError::Mismatch { .. })));
        assert!(!s.has(&md5));
        let mut w = s.writer(md5, 5).unwrap();
        w.write(b"hel").unwrap();
        w.write(b"lo").unwrap();
        w.finish().unwrap();
        assert!(s.has(&md5));
        assert_eq!(fs::read(s.path(&md5)).unwrap(), b"hello");
        // Ingesting a local file stores it under its MD5 once.
        let src = d.path().join("src.txt");
        fs::write(&src, b"hello").unwrap();
        assert_eq!(s.ingest(&src).unwrap(), (md5, 5, vec![]));
        assert_eq!(s.ingest(&src).unwrap(), (md5, 5, vec![]));
        // Garbage collection keeps what is asked for (and the empty body).
        let other = Md5::of(b"other");
        let mut w = s.writer(other, 5).unwrap();
        w.write(b"other").unwrap();
        w.finish().unwrap();
        assert_eq!(s.retain(&[md5].into_iter().collect()).unwrap(), 1);
        assert!(s.has(&md5) && !s.has(&other) && s.has(&Md5::of(b"")));
        assert_eq!(s.held().unwrap(), [md5, Md5::of(b"")].into_iter().collect());
        assert_eq!(Md5::from_hex(&md5.hex()), Some(md5));
        assert_eq!(Md5::from_hex("xyz"), None);
        // A resumable writer keeps its bytes when dropped and picks up where it stopped.
        let big = Md5::of(b"0123456789");
        let mut w = s.resume_writer(Expected::whole(big, 10)).unwrap();
        w.write(b"01234").unwrap();
        drop(w);
        let s = Store::open(d.path()).unwrap();
        let mut w = s.resume_writer(Expected::whole(big, 10)).unwrap();
        assert_eq!(w.written(), 5);
        w.write(b"56789").unwrap();
        w.finish().unwrap();
        assert!(s.has(&big));
        // A resumed body that turns out wrong is discarded whole.
        let mut w = s
            .resume_writer(Expected::whole(Md5::of(b"abc"), 3))
            .unwrap();
        w.write(b"ab").unwrap();
        drop(w);
        let mut w = s
            .resume_writer(Expected::whole(Md5::of(b"abc"), 3))
            .unwrap();
        w.write(b"X").unwrap();
        assert!(w.finish().is_err());
        assert_eq!(
            s.resume_writer(Expected::whole(Md5::of(b"abc"), 3))
                .unwrap()
                .written(),
            0
        );
        // A crash inside a batch: bodies written since it began are checked on reopening.
        s.begin_batch().unwrap();
        let torn = Md5::of(b"torn body");
        let mut w = s.writer(torn, 9).unwrap();
        w.write(b"torn body").unwrap();
        w.finish().unwrap();
        fs::write(s.path(&torn), b"torn b\0\0\0").unwrap(); // what a crash can leave
        drop(s);
        let s = Store::open(d.path()).unwrap();
        assert!(!s.has(&torn), "a damaged body survived the crash check");
        assert!(s.has(&big) && s.has(&md5));
        assert!(!d.path().join("store/dirty").exists());
        // An abandoned writer leaves nothing behind.
        drop(s.writer(Md5::of(b"x"), 1).unwrap());
        let leftovers = fs::read_dir(d.path().join("store/tmp"))
            .unwrap()
            .filter(|e| {
                !e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .ends_with(PARTIAL)
            })
            .count();
        assert_eq!(leftovers, 0);
    }
}
