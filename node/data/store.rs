//! The content-addressed store: verified file bodies kept by BLAKE3 in the node's data dir.
//!
//! Layout under `DATA/store`: `objects/ab/abcdef…` (the BLAKE3 in hex, fanned out by its
//! first byte), `tmp/` for partial bodies (large ones, kept to resume) and copies being
//! made, and `stage/vN/` where a leaf writes the small files of release N at their own paths
//! (see [`super::stage`]). A body received whole is written under a temporary name in its own fan-out
//! directory (`objects/ab/.tmp-PID.N`), so that naming it is a rename within one directory:
//! a rename across directories takes the filesystem's rename lock, which every writer would
//! wait on (100,000 files of 4 KiB created and renamed by 8 threads: 1.37–1.65 s across
//! directories, 1.09–1.24 s within one, on tmpfs; 4.27 s and 2.77 s on ext4).
//!
//! A body becomes visible under its name only after its size, BLAKE3 and MD5 were checked
//! ([`BodyWriter::finish`]), so anything named by a digest in `objects/` is verified; a crash
//! leaves at most temporary names: those in `tmp/` go at [`Store::open`], those in `objects/`
//! at the next garbage collection ([`Store::retain`], which removes the ones no live writer
//! of this process owns) or [`Store::recover`]. Bodies are flushed to disk per batch (a
//! release), not per file: see [`Store::begin_batch`] and, after a crash inside a batch,
//! [`Store::recover`].

use std::cell::{Cell, OnceCell};
use std::collections::HashSet;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use fs_err as fs;
use rustix::fs::{AtFlags, Mode};

use super::objects::{file_times, named, rel, Objects, Spot};
use super::writer::{BodyWriter, Expected};
use crate::tree::hash::{buffer_for, hash_file, hash_reader, open_regular};
use crate::tree::{Blake3, Body, BodySet};

/// Suffix of a partially received body in `tmp/`.
const PARTIAL: &str = ".partial";
/// Suffixes, in `tmp/`, of a body the parent pushes and of what its push announced (the
/// caller's encoding): both outlive a crash, so that a push cut by one is resumed.
const PUSHED: &str = ".pushed";
const PUSHED_HEAD: &str = ".pushed-head";
/// Prefix of a body being written under `objects/`: never a digest (not hex).
const WRITING: &str = ".tmp-";

/// Whether `name` under `objects/` is a temporary name, and if so, whether this process
/// made it (a writer may still own it) or one before it did (garbage).
fn temporary(name: &str) -> Option<bool> {
    let rest = name.strip_prefix(WRITING)?;
    let pid = rest.split('.').next().and_then(|p| p.parse::<u32>().ok());
    Some(pid == Some(std::process::id()))
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A file of the store could not be read or written (the message names it).
    #[error(transparent)]
    Io(#[from] io::Error),
    #[error("body {id} failed verification: {what}")]
    Mismatch { id: Blake3, what: String },
    #[error("body {id}: chunk {index} failed verification")]
    ChunkMismatch { id: Blake3, index: usize },
}

/// After this many bodies asked about, one listing of the store is cheaper than a lookup
/// each (a directory read returns many names at once; a lookup walks the whole path).
const LIST_ABOVE: usize = 1024;

/// [`Store::has`] for many bodies at once (see [`Store::has_many`]).
#[derive(Debug)]
pub struct HasMany<'a> {
    store: &'a Store,
    asked: Cell<usize>,
    listed: OnceCell<BodySet>,
}

impl HasMany<'_> {
    /// Whether the store holds `id`: by a lookup for the first [`LIST_ABOVE`] asked, then
    /// from one listing of the store (a body stored after it is not seen; if the listing
    /// fails, by a lookup each again).
    pub fn has(&self, id: &Blake3) -> bool {
        if let Some(listed) = self.listed.get() {
            return listed.contains(id);
        }
        let asked = self.asked.get() + 1;
        self.asked.set(asked);
        if asked > LIST_ABOVE {
            if let Ok(listed) = self.store.held() {
                return self.listed.get_or_init(|| listed).contains(id);
            }
        }
        self.store.has(id)
    }
}

/// Verified bodies by BLAKE3.
#[derive(Debug)]
pub struct Store {
    objects: Arc<Objects>,
    tmp: PathBuf,
    /// Stages of releases being fetched or applied (see [`super::stage`]).
    stage: PathBuf,
    /// Present while bodies written since it was created may not be on disk yet.
    dirty: PathBuf,
    next_tmp: AtomicU64,
    /// This process's id, in temporary names (asked once, not per body).
    pid: u32,
}

/// Where what a push announced is kept beside its body.
fn pushed_head(body: &Path) -> PathBuf {
    let mut p = body.as_os_str().to_owned();
    p.push("-head");
    p.into()
}

impl Store {
    /// Opens (creating) the store in `root` and removes leftover temporary files.
    pub fn open(root: &Path) -> Result<Self, StoreError> {
        let objects = root.join("objects");
        let tmp = root.join("tmp");
        let stage = root.join("stage");
        fs::create_dir_all(&objects)?;
        fs::create_dir_all(&tmp)?;
        // Every fan-out directory, once: writers create their files in them.
        for fan in 0..=255u8 {
            match fs::create_dir(objects.join(format!("{fan:02x}"))) {
                Err(e) if e.kind() != io::ErrorKind::AlreadyExists => return Err(e.into()),
                _ => {}
            }
        }
        // Bodies may be copies of files only their owner could read on the origin: the store
        // is the node user's alone (what the node serves is applied with its own modes).
        {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(root, std::fs::Permissions::from_mode(0o700))?;
        }
        // Leftovers of a crash go, except partial bodies, which later fetches resume, and
        // pushed ones (see `Store::leftover_pushes`).
        for e in fs::read_dir(&tmp)?.flatten() {
            let name = e.file_name();
            let name = name.to_string_lossy();
            if ![PARTIAL, PUSHED, PUSHED_HEAD]
                .iter()
                .any(|s| name.ends_with(s))
            {
                let _ = fs::remove_file(e.path());
            }
        }
        let store = Store {
            objects: Arc::new(Objects::open(objects)?),
            tmp,
            stage,
            dirty: root.join("dirty"),
            next_tmp: AtomicU64::new(0),
            pid: std::process::id(),
        };
        // The empty body is always held, so empty files never travel.
        let empty = Blake3::empty();
        if !store.has(&empty) {
            store
                .writer(Expected::whole(crate::tree::Md5::of(b""), empty, 0))?
                .finish()?;
        }
        Ok(store)
    }

    /// Starts a batch of writes (a release being fetched or published): bodies are not flushed
    /// one by one but all at once by [`Store::commit_batch`]. Should the node die first, the
    /// next start re-verifies every body a batch may have written ([`Store::recover`]), so the
    /// store never holds a body that does not match its name.
    pub fn begin_batch(&self) -> Result<(), StoreError> {
        // An older marker (a batch that failed) is kept: its time covers this batch too.
        match fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&self.dirty)
        {
            Ok(f) => Ok(f.sync_all()?),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Flushes every body written since [`Store::begin_batch`] with one `syncfs`.
    pub fn commit_batch(&self) -> Result<(), StoreError> {
        rustix::fs::syncfs(&self.objects.fd).map_err(|e| named("sync", &self.objects.path, e))?;
        match fs::remove_file(&self.dirty) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e.into()),
            _ => Ok(()),
        }
    }

    /// After a crash inside a batch (its marker is still there): re-hashes every body that
    /// is not in `committed` and removes any that does not match its name; returns how many
    /// were checked. `committed` holds the bodies of the releases saved on disk (held and
    /// pending): a release is saved only after its batch was committed, so those are flushed
    /// and need no check. What a batch wrote is found by what it is not, never by a time,
    /// which a clock stepped back would defeat.
    pub fn recover(&self, committed: &HashSet<Blake3>) -> Result<u64, StoreError> {
        if !self.dirty.exists() {
            return Ok(0);
        }
        // A stage written in the batch may hold files half written or never flushed.
        self.clear_stages()?;
        let (mut checked, mut removed) = (0, 0);
        self.for_each_object(|name, obj| {
            if temporary(name).is_some() {
                let _ = fs::remove_file(obj.path());
                return Ok(());
            }
            if Blake3::from_hex(name).is_some_and(|id| committed.contains(&id)) {
                return Ok(());
            }
            checked += 1;
            let path = obj.path();
            if hash_file(&path, false)
                .map(|b| b.blake3.hex())
                .ok()
                .as_deref()
                != Some(name)
            {
                let _ = fs::remove_file(&path);
                removed += 1;
            }
            Ok(())
        })?;
        if removed > 0 {
            tracing::warn!(removed, checked, "removed bodies left damaged by a crash");
        }
        self.commit_batch()?;
        Ok(checked)
    }

    /// Calls `f` with the name and directory entry of every held body.
    fn for_each_object(
        &self,
        mut f: impl FnMut(&str, &fs::DirEntry) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        for fan in fs::read_dir(&self.objects.path)? {
            for obj in fs::read_dir(fan?.path())? {
                let obj = obj?;
                f(&obj.file_name().to_string_lossy(), &obj)?;
            }
        }
        Ok(())
    }

    /// The objects directory, for a stage's writers (which remove a bad body through it).
    pub(super) fn objects_dir(&self) -> &Arc<Objects> {
        &self.objects
    }

    /// Where the stage of release `version` is (see [`super::stage`]), on the store's
    /// filesystem.
    pub(super) fn stage_path(&self, version: u64) -> PathBuf {
        self.stage.join(format!("v{version}"))
    }

    /// Removes every stage (after a restart's recovery, which may have used the pending
    /// release's own).
    pub fn clear_stages(&self) -> Result<(), StoreError> {
        match fs::remove_dir_all(&self.stage) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e.into()),
            _ => Ok(()),
        }
    }

    /// The directory that holds the bodies.
    pub fn objects(&self) -> &Path {
        &self.objects.path
    }

    /// Where the body with this BLAKE3 lives (whether or not it is held).
    pub fn path(&self, id: &Blake3) -> PathBuf {
        self.objects.path.join(rel(id))
    }

    /// The size of a held body (`None` if it is not held).
    pub fn size_hint(&self, id: &Blake3) -> Option<u64> {
        self.objects.size(&rel(id))
    }

    pub fn has(&self, id: &Blake3) -> bool {
        self.size_hint(id).is_some()
    }

    /// Opens a held body to read it.
    pub fn open_body(&self, id: &Blake3) -> io::Result<std::fs::File> {
        self.objects.read(&rel(id))
    }

    /// Gives a held body the mode and modification time of the file it is about to become
    /// (its access time: now), by its name: no descriptor is opened. Fails if it is not held.
    pub fn set_mode_and_mtime(&self, id: &Blake3, mode: u32, mtime: i64) -> io::Result<()> {
        let rel = rel(id);
        let times = file_times(mtime);
        rustix::fs::utimensat(&self.objects.fd, &rel, &times, AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|e| self.objects.err("set times of", &rel, e))?;
        rustix::fs::chmodat(
            &self.objects.fd,
            &rel,
            Mode::from_raw_mode(mode),
            AtFlags::empty(),
        )
        .map_err(|e| self.objects.err("set permissions of", &rel, e))
    }

    /// The objects directory's descriptor and a held body's name below it, for a rename out
    /// of the store.
    pub fn body_at(&self, id: &Blake3) -> (std::os::fd::BorrowedFd<'_>, String) {
        use std::os::fd::AsFd;
        (self.objects.fd.as_fd(), rel(id))
    }

    /// Every held body, from one listing of the store: cheaper than [`Store::has`] per body
    /// when asking about a whole release (a directory read returns many names at once).
    pub fn held(&self) -> Result<BodySet, StoreError> {
        let mut out = Vec::new();
        self.for_each_object(|name, _| {
            out.extend(Blake3::from_hex(name));
            Ok(())
        })?;
        Ok(out.into_iter().collect())
    }

    /// Answers [`Store::has`] for many bodies: a lookup each for a few, one listing of the
    /// store for many (so a release that changed one file of 100,000 does not list them all).
    pub fn has_many(&self) -> HasMany<'_> {
        HasMany {
            store: self,
            asked: Cell::new(0),
            listed: OnceCell::new(),
        }
    }

    /// Bytes and bodies held, from one listing of the store (a body removed meanwhile is
    /// skipped).
    pub fn usage(&self) -> Result<(u64, u64), StoreError> {
        let (mut bytes, mut bodies) = (0, 0);
        self.for_each_object(|name, obj| {
            if temporary(name).is_some() {
                return Ok(());
            }
            if let Ok(m) = obj.metadata() {
                bytes += m.len();
                bodies += 1;
            }
            Ok(())
        })?;
        Ok((bytes, bodies))
    }

    /// A fresh temporary path in `tmp/` (`what` says what it is for).
    fn tmp_path(&self, what: &str) -> PathBuf {
        let n = self.next_tmp.fetch_add(1, Ordering::Relaxed);
        self.tmp.join(format!("{what}.{}.{n}", self.pid))
    }

    /// Starts receiving a body that must be `expected`, under a temporary name beside the
    /// one it will have.
    pub fn writer(&self, expected: Expected) -> Result<BodyWriter, StoreError> {
        let dest = rel(&expected.blake3);
        let n = self.next_tmp.fetch_add(1, Ordering::Relaxed);
        let tmp = format!("{}/{WRITING}{}.{n}", &dest[..2], self.pid);
        let file = self.objects.create(&tmp)?;
        Ok(BodyWriter::new(
            expected,
            self.objects.clone(),
            dest,
            Spot::Objects(tmp),
            file,
            false,
        ))
    }

    /// Where a partially received body is kept (see [`Store::resume_writer`]). While it is
    /// being received, its verified prefix may be read from here and forwarded.
    pub fn partial_path(&self, id: &Blake3) -> PathBuf {
        self.tmp.join(format!("{}{PARTIAL}", id.hex()))
    }

    /// Starts or resumes receiving a body from the network. Bytes kept from an interrupted
    /// transfer are read back to rebuild the hash state; [`BodyWriter::written`] is where to
    /// ask the parent to continue. If the writer is dropped unfinished, what it has is kept for
    /// the next attempt; a body that fails verification is discarded whole.
    /// A chunk that fails its check is cut off, with everything after it.
    pub fn resume_writer(&self, expected: Expected) -> Result<BodyWriter, StoreError> {
        let tmp = self.partial_path(&expected.blake3);
        let file = fs::OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&tmp)?;
        let dest = rel(&expected.blake3);
        let mut w = BodyWriter::new(
            expected,
            self.objects.clone(),
            dest,
            Spot::Path(tmp),
            file,
            true,
        );
        w.reabsorb()?;
        Ok(w)
    }

    /// Reads a local file once, hashing it while copying it to a temporary file, and keeps the
    /// copy under its BLAKE3 unless the store already holds that body (the origin publishing a
    /// file whose body it keeps a copy of: see [`crate::dir::Stored`]).
    /// What is stored is what was hashed, even if the file changes meanwhile.
    pub fn ingest(&self, src: &Path, expect: Option<(u64, u64)>) -> Result<Body, StoreError> {
        let (mut input, len) = open_regular(src, expect)?;
        let tmp = TmpFile(self.tmp_path("ingest"));
        let mut out = fs::File::create(&tmp.0)?;
        let body = hash_reader(&mut input, len, true, |block| out.write_all(block))?;
        if !self.has(&body.blake3) {
            self.objects
                .rename(&Spot::Path(tmp.0.clone()), &rel(&body.blake3))?;
        }
        Ok(body)
    }

    /// Creates the file a body pushed by the parent is written to (see
    /// [`crate::sync::push`]), in `tmp/`, with `head` (what the push announced) beside it, so
    /// that what a crash cuts off is found again ([`Store::leftover_pushes`]). Nothing names
    /// it yet: it enters the store only through [`Store::take_pushed`].
    pub fn push_file(&self, head: &[u8]) -> Result<(PathBuf, fs::File), StoreError> {
        // A new name: one an earlier run left may have this run's process id.
        loop {
            let n = self.next_tmp.fetch_add(1, Ordering::Relaxed);
            let path = self.tmp.join(format!("push.{}.{n}{PUSHED}", self.pid));
            let file = match fs::File::options().write(true).create_new(true).open(&path) {
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                opened => opened?,
            };
            fs::write(pushed_head(&path), head)?;
            return Ok((path, file));
        }
    }

    /// Removes a pushed body (see [`Store::push_file`]) and what its push announced.
    pub fn remove_pushed(&self, path: &Path) {
        let _ = fs::remove_file(path);
        let _ = fs::remove_file(pushed_head(path));
    }

    /// The pushed bodies an earlier run of this node was receiving when it stopped, each
    /// with what its push announced; call at start, before this run receives any (a node in
    /// a container often has the same process id each run). One without its announcement is
    /// removed.
    pub fn leftover_pushes(&self) -> Vec<(PathBuf, Vec<u8>)> {
        let mut out = Vec::new();
        for e in fs::read_dir(&self.tmp).into_iter().flatten().flatten() {
            let name = e.file_name();
            if !name.to_string_lossy().ends_with(PUSHED) {
                continue;
            }
            match fs::read(pushed_head(&e.path())) {
                Ok(head) => out.push((e.path(), head)),
                Err(_) => self.remove_pushed(&e.path()),
            }
        }
        out
    }

    /// Takes a pushed body (written by [`Store::push_file`]'s caller) into the store as
    /// body `id`: the caller hashed every byte of it and found the size, MD5 and BLAKE3 a
    /// release names. Call inside a batch ([`Store::begin_batch`]): it is flushed with it.
    pub fn take_pushed(&self, path: &Path, id: &Blake3) -> Result<(), StoreError> {
        if self.has(id) {
            self.remove_pushed(path);
            return Ok(());
        }
        self.objects
            .rename(&Spot::Path(path.to_owned()), &rel(id))?;
        let _ = fs::remove_file(pushed_head(path));
        Ok(())
    }

    /// Makes a pushed body cut off early the partial body of `id`, which its fetch resumes
    /// after (checking it again as it does); false if it could not.
    pub fn resume_pushed(&self, path: &Path, id: &Blake3) -> bool {
        let partial = self.partial_path(id);
        let moved = !self.has(id) && !partial.exists() && fs::rename(path, &partial).is_ok();
        self.remove_pushed(path);
        moved
    }

    /// Copies a local file into the store as body `expected` if it is exactly that body
    /// (checked while copying); returns whether it was. A node whose `dir` is the only copy of
    /// its bodies takes a renamed file's body from its old path this way.
    pub fn adopt(&self, src: &Path, expected: Expected) -> Result<bool, StoreError> {
        let (mut input, len) = match open_regular(src, None) {
            Ok(opened) => opened,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(e.into()),
        };
        let size = expected.size;
        let mut w = self.writer(expected)?;
        let mut buf = buffer_for(len);
        loop {
            let n = input.read(&mut buf)?;
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

    /// Deletes every held body (and every partial one) that `needed` does not name; returns
    /// how many held bodies were removed. `needed` may be long (every file of the releases
    /// kept): it is only looked up in what the store holds, which on an origin that serves
    /// from `dir` is next to nothing, so the walk through it stops as soon as every body held
    /// is accounted for.
    pub fn retain(&self, needed: impl IntoIterator<Item = Blake3>) -> Result<u64, StoreError> {
        let empty = Blake3::empty().hex();
        // What the store holds now, by name. A body written after this listing is not in it,
        // and so is never taken.
        let mut listed = Vec::new();
        self.for_each_object(|name, obj| {
            match temporary(name) {
                // A body being written now.
                Some(true) => {}
                // Left by a process that died writing it.
                Some(false) => {
                    let _ = fs::remove_file(obj.path());
                }
                None if name != empty => listed.extend(Blake3::from_hex(name)),
                None => {}
            }
            Ok(())
        })?;
        let mut held: BodySet = listed.into_iter().collect();
        let mut partial: HashSet<Blake3> = HashSet::new();
        for e in fs::read_dir(&self.tmp)?.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            partial.extend(name.strip_suffix(PARTIAL).and_then(Blake3::from_hex));
        }
        for id in needed {
            if held.is_empty() && partial.is_empty() {
                break;
            }
            held.remove(&id);
            partial.remove(&id);
        }
        for id in held.iter() {
            match fs::remove_file(self.path(id)) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e.into()),
                _ => {}
            }
        }
        // Partial bodies nothing needs any more.
        for id in &partial {
            let _ = fs::remove_file(self.partial_path(id));
        }
        Ok(held.len() as u64)
    }
}

/// A temporary file removed when dropped (a no-op once it was renamed away).
struct TmpFile(PathBuf);

impl Drop for TmpFile {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tree::{BodyHasher, Md5, CHUNK};

    /// What a body of `bytes` must be, checked whole.
    fn whole(bytes: &[u8]) -> Expected {
        Expected::whole(Md5::of(bytes), Blake3::of(bytes), bytes.len() as u64)
    }

    /// A body of two chunks and a bit, checked chunk by chunk.
    fn chunked() -> (Vec<u8>, Expected) {
        let body = crate::testkit::content::noise(2 * CHUNK as usize + 5, 3);
        let h = {
            let mut h = BodyHasher::new(true, true);
            h.update(&body);
            h.finish()
        };
        let expected = Expected::of(&h);
        (body, expected)
    }

    #[test]
    fn chunks_are_verified_as_they_complete_and_a_bad_one_is_cut_off() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(&d.path().join("store")).unwrap();
        let (body, exp) = chunked();
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
        assert_eq!(
            fs::metadata(s.partial_path(&exp.blake3)).unwrap().len(),
            CHUNK
        );
        // The partial file on disk resumes from the verified prefix.
        drop(w);
        let mut w = s.resume_writer(exp.clone()).unwrap();
        assert_eq!(w.verified(), CHUNK);
        w.write(&body[CHUNK as usize..]).unwrap();
        assert_eq!(w.verified(), 2 * CHUNK);
        w.finish().unwrap();
        assert_eq!(fs::read(s.path(&exp.blake3)).unwrap(), body);
        fs::remove_file(s.path(&exp.blake3)).unwrap();
        // Right chunks, a wrong whole MD5: refused at the end (every node checks the MD5 of
        // every byte, a relay that forwards chunks as well).
        let wrong = Expected {
            md5: Md5::of(b"something else"),
            ..exp.clone()
        };
        let mut w = s.resume_writer(wrong).unwrap();
        w.write(&body).unwrap();
        assert_eq!(w.verified(), 2 * CHUNK);
        assert!(matches!(w.finish(), Err(StoreError::Mismatch { .. })));
        assert!(!s.has(&exp.blake3));
        // A body of exactly one chunk carries no chunk list: checked whole, whatever the
        // write sizes (its BLAKE3 still runs chunk by chunk).
        let one = crate::testkit::content::noise(CHUNK as usize, 5);
        let mut w = s.writer(whole(&one)).unwrap();
        for part in one.chunks(1 << 20) {
            w.write(part).unwrap();
        }
        w.finish().unwrap();
        assert!(s.has(&Blake3::of(&one)));
        // A damaged partial file is cut back to its last good chunk when resumed.
        let (mut body, exp) = chunked();
        body[CHUNK as usize + 3] ^= 1;
        fs::write(s.partial_path(&exp.blake3), &body[..2 * CHUNK as usize]).unwrap();
        assert_eq!(s.resume_writer(exp).unwrap().written(), CHUNK);
    }

    #[test]
    fn a_body_written_whole_is_checked_against_the_md5_it_came_with() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(&d.path().join("store")).unwrap();
        let body = b"a small body";
        // The MD5 the caller computed is what the manifest says: stored.
        let mut w = s.writer(whole(body)).unwrap();
        w.write_whole(body, Md5::of(body)).unwrap();
        w.finish().unwrap();
        assert!(s.has(&Blake3::of(body)));
        // A given MD5 that is not the manifest's: refused, nothing kept.
        let other = b"another body";
        let mut w = s.writer(whole(other)).unwrap();
        w.write_whole(other, Md5::of(b"not it")).unwrap();
        assert!(matches!(w.finish(), Err(StoreError::Mismatch { .. })));
        assert!(!s.has(&Blake3::of(other)));
        // The right MD5 for only the first bytes written: the rest is unchecked, so refused.
        let mut w = s.writer(whole(other)).unwrap();
        w.write_whole(&other[..5], Md5::of(other)).unwrap();
        w.write(&other[5..]).unwrap();
        assert!(matches!(w.finish(), Err(StoreError::Mismatch { .. })));
        assert!(!s.has(&Blake3::of(other)));
    }

    #[test]
    fn verified_bodies_only() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(&d.path().join("store")).unwrap();
        assert!(s.has(&Blake3::empty()));
        let md5 = Blake3::of(b"hello");
        let mut w = s.writer(whole(b"hello")).unwrap();
        w.write(b"hellO").unwrap();
        assert!(matches!(w.finish(), Err(StoreError::Mismatch { .. })));
        assert!(!s.has(&md5));
        let mut w = s.writer(whole(b"hello")).unwrap();
        w.write(b"hel").unwrap();
        w.write(b"lo").unwrap();
        w.finish().unwrap();
        assert!(s.has(&md5));
        assert_eq!(fs::read(s.path(&md5)).unwrap(), b"hello");
        // Ingesting a local file stores it under its MD5 once.
        let src = d.path().join("src.txt");
        fs::write(&src, b"hello").unwrap();
        let hello = Body {
            md5: Md5::of(b"hello"),
            blake3: md5,
            size: 5,
            chunks: vec![],
        };
        assert_eq!(s.ingest(&src, None).unwrap(), hello);
        assert_eq!(s.ingest(&src, None).unwrap(), hello);
        // Garbage collection keeps what is asked for (and the empty body).
        let other = Blake3::of(b"other");
        let mut w = s.writer(whole(b"other")).unwrap();
        w.write(b"other").unwrap();
        w.finish().unwrap();
        assert_eq!(s.retain([md5]).unwrap(), 1);
        assert!(s.has(&md5) && !s.has(&other) && s.has(&Blake3::empty()));
        assert_eq!(
            s.held().unwrap(),
            [md5, Blake3::empty()].into_iter().collect()
        );
        // A resumable writer keeps its bytes when dropped and picks up where it stopped.
        let big = Blake3::of(b"0123456789");
        let mut w = s.resume_writer(whole(b"0123456789")).unwrap();
        w.write(b"01234").unwrap();
        drop(w);
        let s = Store::open(&d.path().join("store")).unwrap();
        let mut w = s.resume_writer(whole(b"0123456789")).unwrap();
        assert_eq!(w.written(), 5);
        w.write(b"56789").unwrap();
        w.finish().unwrap();
        assert!(s.has(&big));
        // A resumed body that turns out wrong is discarded whole.
        let mut w = s.resume_writer(whole(b"abc")).unwrap();
        w.write(b"ab").unwrap();
        drop(w);
        let mut w = s.resume_writer(whole(b"abc")).unwrap();
        w.write(b"X").unwrap();
        assert!(w.finish().is_err());
        assert_eq!(s.resume_writer(whole(b"abc")).unwrap().written(), 0);
        // A crash inside a batch: bodies not in a saved release are checked on restart,
        // whatever their times say (here, a clock stepped back: the torn body is dated a year
        // before the batch began).
        s.begin_batch().unwrap();
        let torn = Blake3::of(b"torn body");
        let mut w = s.writer(whole(b"torn body")).unwrap();
        w.write(b"torn body").unwrap();
        w.finish().unwrap();
        fs::write(s.path(&torn), b"torn b\0\0\0").unwrap(); // what a crash can leave
        let year_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(365 * 86400);
        fs::File::options()
            .write(true)
            .open(s.path(&torn))
            .unwrap()
            .set_modified(year_ago)
            .unwrap();
        drop(s);
        let s = Store::open(&d.path().join("store")).unwrap();
        let committed: HashSet<Blake3> = [md5].into_iter().collect();
        assert_eq!(
            s.recover(&committed).unwrap(),
            3,
            "big, the empty body and torn"
        );
        assert!(!s.has(&torn), "a damaged body survived the crash check");
        assert!(s.has(&big) && s.has(&md5));
        assert!(!d.path().join("store/dirty").exists());
        assert_eq!(
            s.recover(&committed).unwrap(),
            0,
            "nothing to check after a clean stop"
        );
        // An abandoned writer leaves nothing behind.
        drop(s.writer(whole(b"x")).unwrap());
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
        assert_eq!(writing(&s), 0, "the dropped writer's file is gone");
    }

    /// Temporary names under `objects/`.
    fn writing(s: &Store) -> usize {
        let mut n = 0;
        s.for_each_object(|name, _| {
            n += usize::from(temporary(name).is_some());
            Ok(())
        })
        .unwrap();
        n
    }

    #[test]
    fn many_lookups_answer_the_same_before_and_after_the_store_is_listed() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(&d.path().join("store")).unwrap();
        let held: Vec<Blake3> = (0..3u32)
            .map(|i| {
                let b = i.to_le_bytes();
                s.writer(whole(&b))
                    .and_then(|mut w| w.write(&b).and(w.finish()))
                    .unwrap();
                Blake3::of(&b)
            })
            .collect();
        let absent = Blake3::of(b"never stored");
        let many = s.has_many();
        // Past LIST_ABOVE questions it answers from one listing: the same answers.
        for round in 0..=LIST_ABOVE / 4 + 1 {
            for id in &held {
                assert!(many.has(id), "round {round}");
            }
            assert!(!many.has(&absent), "round {round}");
        }
        assert!(many.listed.get().is_some());
    }

    #[test]
    fn pushed_bodies_outlive_a_restart_with_what_they_announced_and_are_never_clobbered() {
        let t = tempfile::tempdir().unwrap();
        let store = Store::open(t.path()).unwrap();
        let (body, mut f) = store.push_file(b"announced").unwrap();
        f.write_all(b"first bytes").unwrap();
        drop(f);
        // Left without its announcement: not a push to resume.
        let orphan = store.tmp.join(format!("push.1.9{PUSHED}"));
        fs::write(&orphan, b"x").unwrap();
        drop(store);
        // The next run (here with the same process id, as in a container) finds the push.
        let store = Store::open(t.path()).unwrap();
        let left = store.leftover_pushes();
        assert_eq!(left, [(body.clone(), b"announced".to_vec())]);
        assert!(!orphan.exists());
        // A new push takes a name of its own.
        let (again, _) = store.push_file(b"new").unwrap();
        assert_ne!(again, body);
        assert_eq!(fs::read(&body).unwrap(), b"first bytes");
        // Taken as a partial body: it leaves nothing behind under push names.
        let id = Blake3::of(b"whole body");
        assert!(store.resume_pushed(&body, &id));
        store.remove_pushed(&again);
        assert_eq!(fs::read(store.partial_path(&id)).unwrap(), b"first bytes");
        let names: Vec<String> = (fs::read_dir(&store.tmp).unwrap().flatten())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, [format!("{}{PARTIAL}", id.hex())]);
    }

    #[test]
    fn a_body_is_written_beside_its_name_and_what_a_dead_writer_left_is_collected() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(&d.path().join("store")).unwrap();
        let body = b"in flight";
        let id = Blake3::of(body);
        let mut w = s.writer(whole(body)).unwrap();
        w.write(body).unwrap();
        // Its file is in the fan-out directory the body will be named in.
        let fan = s.path(&id).parent().unwrap().to_owned();
        let beside: Vec<_> = fs::read_dir(&fan)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(beside.len(), 1);
        assert_eq!(temporary(&beside[0]), Some(true), "{beside:?}");
        // A file a killed process was writing, under another fan-out directory.
        let dead = s
            .objects()
            .join("0f")
            .join(format!("{WRITING}4000000000.7"));
        fs::write(&dead, b"torn").unwrap();
        assert_eq!(temporary(".tmp-4000000000.7"), Some(false));
        // Neither is a held body, nor counted.
        assert_eq!(s.held().unwrap(), [Blake3::empty()].into_iter().collect());
        assert_eq!(s.usage().unwrap(), (0, 1));
        // Garbage collection takes the dead writer's file and leaves the live one alone.
        assert_eq!(s.retain([]).unwrap(), 0);
        assert!(!dead.exists());
        w.finish().unwrap();
        assert!(s.has(&id));
        assert_eq!(writing(&s), 0);
        // After a crash inside a batch, the check on restart removes such files too.
        s.begin_batch().unwrap();
        fs::write(&dead, b"torn").unwrap();
        let s = Store::open(&d.path().join("store")).unwrap();
        s.recover(&[id].into_iter().collect()).unwrap();
        assert!(!dead.exists() && s.has(&id));
    }
}
