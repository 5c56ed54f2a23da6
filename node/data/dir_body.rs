//! Reading a body straight from the file it was scanned from (the origin keeps its bodies in
//! `dir` instead of copying them into the store), verified piece by piece against the
//! manifest before any byte of a piece is handed out: a file changed since the scan is
//! refused, never sent torn or mixed.
//!
//! A body of at most one [`CHUNK`] is one piece, checked whole against its BLAKE3. A larger
//! body is read a chunk at a time, each checked against its chunk's BLAKE3 chaining value
//! (what the manifest's signature covers through the body's BLAKE3), so memory stays at one
//! chunk whatever the file's size.

use std::io::{self, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use crate::tree::hash::{chunk_matches, open_regular, read_onto};
use crate::tree::{Blake3, Sums, CHUNK};

/// Why a body could not be read from its file.
#[derive(Debug, thiserror::Error)]
pub enum DirBodyError {
    /// The file no longer holds the bytes the manifest describes (rewritten, truncated,
    /// replaced or removed since it was scanned).
    #[error("`{path}` changed since it was scanned ({what})")]
    Changed { path: PathBuf, what: String },
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// What the file must hold: the body's name, size and chunk digests.
#[derive(Debug, Clone)]
pub struct Wanted {
    pub blake3: Blake3,
    pub size: u64,
    /// Empty for a body of at most one chunk.
    pub chunks: Vec<Sums>,
}

/// One body being read from its file, a verified piece at a time.
#[derive(Debug)]
pub struct DirBody {
    path: PathBuf,
    file: fs_err::File,
    wanted: Wanted,
    /// Where the next piece starts (a chunk boundary, or 0).
    next: u64,
}

impl DirBody {
    /// Opens the file at `path` (only a regular file, never through a symlink) to read the
    /// body `wanted` from `offset` on.
    pub fn open(path: &Path, wanted: Wanted, offset: u64) -> Result<Self, DirBodyError> {
        let changed = |what: String| DirBodyError::Changed {
            path: path.to_owned(),
            what,
        };
        if offset > wanted.size {
            return Err(DirBodyError::Io(io::Error::other(format!(
                "offset {offset} is past the end of the {}-byte body {}",
                wanted.size, wanted.blake3
            ))));
        }
        let (mut file, len) = match open_regular(path, None) {
            Ok(opened) => opened,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(changed(e.to_string())),
            Err(e) => return Err(e.into()),
        };
        if len < wanted.size {
            return Err(changed(format!("{len} bytes, {} expected", wanted.size)));
        }
        let next = if wanted.chunks.is_empty() {
            0
        } else {
            offset / CHUNK * CHUNK
        };
        if next > 0 {
            file.seek(SeekFrom::Start(next))?;
        }
        Ok(DirBody {
            path: path.to_owned(),
            file,
            wanted,
            next,
        })
    }

    /// Reads the next piece into `piece` (its allocation reused) and checks it; returns
    /// where in the body it starts, or `None` at the end.
    pub fn next_piece(&mut self, piece: &mut Vec<u8>) -> Result<Option<u64>, DirBodyError> {
        piece.clear();
        self.append_piece(piece)
    }

    /// Reads the next piece onto the end of `out` and checks it, as [`DirBody::next_piece`];
    /// on an error, `out` is as it was.
    pub fn append_piece(&mut self, out: &mut Vec<u8>) -> Result<Option<u64>, DirBodyError> {
        let Some((at, len)) = self.next_range() else {
            return Ok(None);
        };
        let start = out.len();
        if let Err(e) = read_onto(self.file.file(), len, out) {
            return Err(match e.kind() {
                io::ErrorKind::UnexpectedEof => self.changed("it got shorter".into()),
                _ => e.into(),
            });
        }
        if let Err(e) = self.check(&out[start..], at) {
            out.truncate(start);
            return Err(e);
        }
        Ok(Some(at))
    }

    /// Where the next piece starts and how long it is; `None` at the end.
    fn next_range(&self) -> Option<(u64, u64)> {
        let size = self.wanted.size;
        if self.next >= size && !(size == 0 && self.next == 0) {
            return None;
        }
        let len = if self.wanted.chunks.is_empty() {
            size
        } else {
            (size - self.next).min(CHUNK)
        };
        Some((self.next, len))
    }

    /// Checks the piece at `at`, just read, against the manifest.
    fn check(&mut self, piece: &[u8], at: u64) -> Result<(), DirBodyError> {
        let good = if self.wanted.chunks.is_empty() {
            Blake3::of(piece) == self.wanted.blake3
        } else {
            let index = (at / CHUNK) as usize;
            chunk_matches(piece, index, &self.wanted.chunks[index])
        };
        if !good {
            let what = match self.wanted.chunks.is_empty() {
                true => "its bytes differ".to_owned(),
                false => format!("chunk {} differs", at / CHUNK),
            };
            return Err(self.changed(what));
        }
        self.next = at + (piece.len() as u64).max(1);
        Ok(())
    }

    fn changed(&self, what: String) -> DirBodyError {
        DirBodyError::Changed {
            path: self.path.clone(),
            what,
        }
    }
}

/// Reads a whole small body from `path`, verified, onto the end of `out`: what [`DirBody`]
/// would give. On an error, `out` is as it was.
pub fn read_whole_into(path: &Path, wanted: Wanted, out: &mut Vec<u8>) -> Result<(), DirBodyError> {
    let start = out.len();
    let mut body = DirBody::open(path, wanted, 0)?;
    out.reserve(body.wanted.size as usize);
    loop {
        match body.append_piece(out) {
            Ok(Some(_)) => {}
            Ok(None) => return Ok(()),
            Err(e) => {
                out.truncate(start);
                return Err(e);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tree::hash::hash_file;

    fn wanted_of(path: &Path) -> Wanted {
        let b = hash_file(path, true).unwrap();
        Wanted {
            blake3: b.blake3,
            size: b.size,
            chunks: b.chunks,
        }
    }

    fn all_from(path: &Path, wanted: Wanted, offset: u64) -> Result<Vec<u8>, DirBodyError> {
        let mut r = DirBody::open(path, wanted, offset)?;
        let (mut out, mut piece) = (Vec::new(), Vec::new());
        while let Some(at) = r.next_piece(&mut piece)? {
            assert_eq!(at, out.len() as u64 + offset / CHUNK * CHUNK);
            out.extend_from_slice(&piece);
        }
        Ok(out)
    }

    #[test]
    fn small_large_and_empty_bodies_come_back_exactly() {
        let t = tempfile::tempdir().unwrap();
        let large: Vec<u8> = (0..CHUNK as usize * 2 + 12_345)
            .map(|i| (i * 7 % 251) as u8)
            .collect();
        for (name, bytes) in [
            ("small", b"hello".to_vec()),
            ("large", large.clone()),
            ("empty", Vec::new()),
        ] {
            let p = t.path().join(name);
            std::fs::write(&p, &bytes).unwrap();
            assert_eq!(all_from(&p, wanted_of(&p), 0).unwrap(), bytes, "{name}");
        }
        // From an offset, a chunked body starts at the chunk that holds it.
        let p = t.path().join("large");
        let from = CHUNK + 5;
        assert_eq!(
            all_from(&p, wanted_of(&p), from).unwrap(),
            large[CHUNK as usize..]
        );
    }

    #[test]
    fn a_file_changed_since_its_scan_is_refused_before_the_changed_piece() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("f");
        let mut bytes = vec![3u8; CHUNK as usize * 2 + 100];
        std::fs::write(&p, &bytes).unwrap();
        let wanted = wanted_of(&p);
        // The second chunk changes, same size: the first still comes, then the refusal.
        bytes[CHUNK as usize + 10] = 4;
        std::fs::write(&p, &bytes).unwrap();
        let mut r = DirBody::open(&p, wanted.clone(), 0).unwrap();
        let mut piece = Vec::new();
        assert!(r.next_piece(&mut piece).unwrap().is_some());
        let e = r.next_piece(&mut piece).unwrap_err();
        assert!(
            matches!(&e, DirBodyError::Changed { what, .. } if what == "chunk 1 differs"),
            "{e}"
        );
        // Truncated, removed, or a symlink in its place: refused as changed.
        std::fs::write(&p, &bytes[..100]).unwrap();
        assert!(matches!(
            DirBody::open(&p, wanted.clone(), 0),
            Err(DirBodyError::Changed { .. })
        ));
        std::fs::remove_file(&p).unwrap();
        std::os::unix::fs::symlink("/etc/hostname", &p).unwrap();
        assert!(matches!(
            DirBody::open(&p, wanted.clone(), 0),
            Err(DirBodyError::Changed { .. })
        ));
        // A small body whose bytes differ at the same size.
        let s = t.path().join("s");
        std::fs::write(&s, b"abc").unwrap();
        let w = wanted_of(&s);
        std::fs::write(&s, b"abd").unwrap();
        let mut out = b"before".to_vec();
        let e = read_whole_into(&s, w, &mut out).unwrap_err();
        assert_eq!(out, b"before", "nothing of a changed body is kept");
        assert!(
            e.to_string().contains("changed since it was scanned"),
            "{e}"
        );
        // Appended to since (a log): the manifest's bytes are still its start, and only
        // they are read.
        std::fs::write(&s, b"abc").unwrap();
        let w = wanted_of(&s);
        std::fs::write(&s, b"abcdef").unwrap();
        let mut out = b"x".to_vec();
        read_whole_into(&s, w, &mut out).unwrap();
        assert_eq!(out, b"xabc");
    }
}
