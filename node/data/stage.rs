//! A stage: the files of a release as they will be in `dir`, built in the store (on `dir`'s
//! filesystem) while the release's bodies arrive, and moved into `dir` by the apply.
//!
//! A node whose `dir` is the only copy of its bodies (a leaf) would otherwise handle each
//! small file (one received whole, at most 1 MiB) four times: create it under a temporary name in the store, rename it under its
//! BLAKE3, set its mode and time by name, and rename it into `dir`. A file whose body no other
//! changed file shares is instead written once, at its own path below the stage, checked like
//! any body (size, MD5, BLAKE3) and given its mode and modification time through its
//! descriptor; the apply renames it into `dir`. A directory `dir` does not have yet is built
//! whole in the stage, and the apply renames each top-most one into `dir` in one go, whatever
//! its size (or, where something took its place meanwhile, each of its staged files on its
//! own).
//!
//! What a stage promises: a file in it is complete and verified once [`Stage::staged`] says
//! so (one that fails its check is deleted); it is flushed with the store's batch
//! ([`super::Store::commit_batch`]: one `syncfs` of the same filesystem) before anything is
//! applied; nothing in it is visible to anyone but the node (the store is mode 0700) until the
//! apply moves it into `dir`. A node killed during the fetch loses the stage (the store's
//! recovery of the interrupted batch removes it: its bodies are fetched again, and `dir`
//! holds the last release until then); one killed during the apply finishes it from what
//! the stage still holds, each file checked again by its digests ([`Stage::reopen`]).

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use rustix::fs::{Mode, OFlags};

use super::objects::{named, Objects, Spot};
use super::writer::{BodyWriter, Expected};
use super::{Store, StoreError};
use crate::tree::hash::hash_file;
use crate::tree::{Entry, EntryKind, Manifest};

/// The files of one release written at their own paths, and the directories it adds.
#[derive(Debug)]
pub struct Stage {
    path: PathBuf,
    fd: Arc<OwnedFd>,
    objects: Arc<Objects>,
    /// The top-most directories of the release that `dir` lacked (sorted).
    tops: Vec<String>,
    /// The files written here, by manifest index (ascending).
    files: Vec<u32>,
    /// Which of `files` are written and checked: a bit each, by position in `files`.
    done: Vec<AtomicU64>,
}

impl Stage {
    /// Plans a stage for `candidates` of `manifest` (files to fetch, ascending manifest
    /// indexes, whose bodies no other changed file shares), about to be applied to `dir`.
    /// Makes the stage's directories: every directory of the manifest below each top-most one
    /// `dir` lacks (mode 0755, as an apply makes them; the apply sets their modes at its end),
    /// and the parents of the other candidates. `None` where the stage and `dir` are not on
    /// one filesystem.
    pub fn plan(
        store: &Store,
        dir: &Path,
        version: u64,
        manifest: &Manifest,
        candidates: Vec<u32>,
    ) -> io::Result<Option<Self>> {
        let entries = manifest.entries();
        // Directories of `dir` looked at, and what was found there.
        let mut seen: HashMap<String, Found> = HashMap::new();
        let mut tops: Vec<String> = Vec::new();
        // Parents of candidates that are not below a new directory (each once).
        let mut parents: Vec<&str> = Vec::new();
        // The last parent seen (a directory's files come together in manifest order).
        let mut last: Option<&str> = None;
        // The apply renames from the stage into `dir` (or what will hold it, if the apply is
        // to make it): both on one filesystem.
        let dev = |p: &Path| {
            (p.ancestors())
                .find_map(|a| std::fs::metadata(a).ok())
                .map(|m| m.dev())
        };
        if candidates.is_empty() || dev(dir).is_none() || dev(dir) != dev(store.objects()) {
            return Ok(None);
        }
        for &i in &candidates {
            let parent = entries[i as usize].parent();
            if parent.is_empty() || last == Some(parent) {
                continue;
            }
            last = Some(parent);
            if !new_top(dir, manifest, parent, &mut seen, &mut tops) {
                parents.push(parent);
            }
        }
        tops.sort_unstable();
        let path = store.stage_path(version);
        // Left by an earlier attempt at the release.
        match fs_err::remove_dir_all(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        fs_err::create_dir_all(&path)?;
        let stage = Stage::open(store, path, tops, candidates)?;
        let mkdir =
            |rel: &str| match rustix::fs::mkdirat(&*stage.fd, rel, Mode::from_raw_mode(0o755)) {
                Ok(()) | Err(rustix::io::Errno::EXIST) => Ok(()),
                Err(e) => Err(named("create directory", &stage.path.join(rel), e)),
            };
        // A directory and those above it (which a top of the stage may have in `dir`).
        let mkdirs = |rel: &str| {
            for (k, _) in rel.match_indices('/') {
                mkdir(&rel[..k])?;
            }
            mkdir(rel)
        };
        for top in &stage.tops {
            let Some(t) = manifest.position(top) else {
                continue;
            };
            mkdirs(top)?;
            for e in &entries[t + 1..manifest.subtree_end(t)] {
                if matches!(e.kind, EntryKind::Dir) {
                    mkdir(&e.path)?;
                }
            }
        }
        for parent in parents {
            mkdirs(parent)?;
        }
        Ok(Some(stage))
    }

    fn open(store: &Store, path: PathBuf, tops: Vec<String>, files: Vec<u32>) -> io::Result<Self> {
        let fd = rustix::fs::open(
            &path,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| named("open directory", &path, e))?;
        Ok(Stage {
            done: (0..files.len().div_ceil(64))
                .map(|_| AtomicU64::new(0))
                .collect(),
            path,
            fd: Arc::new(fd),
            objects: store.objects_dir().clone(),
            tops,
            files,
        })
    }

    /// The stage release `version` (`manifest`) left when its apply was interrupted, with
    /// the files still in it that are what the manifest says (size, mode as `mode_of` gives
    /// it, mtime, MD5 and BLAKE3, each read again); the others are left out. Its files are
    /// moved into `dir` one by one (`dir` may hold some of its directories already). `None`
    /// if there is none.
    pub fn reopen(
        store: &Store,
        version: u64,
        manifest: &Manifest,
        mode_of: impl Fn(&Entry) -> u32,
    ) -> io::Result<Option<Self>> {
        use std::os::unix::fs::PermissionsExt;
        let path = store.stage_path(version);
        if !path.is_dir() {
            return Ok(None);
        }
        let mut files = Vec::new();
        for (i, e, ..) in manifest.indexed_files() {
            let EntryKind::File {
                md5,
                blake3,
                size,
                mtime,
                ..
            } = &e.kind
            else {
                continue;
            };
            let at = path.join(&e.path);
            let looks = std::fs::symlink_metadata(&at).is_ok_and(|m| {
                m.is_file()
                    && m.len() == *size
                    && m.mtime() == *mtime
                    && m.permissions().mode() & 0o7777 == mode_of(e)
            });
            if looks && hash_file(&at, false).is_ok_and(|b| (b.md5, b.blake3) == (*md5, *blake3)) {
                files.push(i);
            }
        }
        let stage = Stage::open(store, path, Vec::new(), files)?;
        (0..stage.files.len()).for_each(|k| stage.mark(k));
        Ok(Some(stage))
    }

    /// Whether file `i` is to be written here.
    pub fn wants(&self, i: u32) -> bool {
        self.files.binary_search(&i).is_ok()
    }

    /// Whether file `i` is written here and checked.
    pub fn staged(&self, i: u32) -> bool {
        self.files
            .binary_search(&i)
            .is_ok_and(|k| self.done[k / 64].load(Ordering::Acquire) & (1 << (k % 64)) != 0)
    }

    /// How many files are staged.
    pub fn count(&self) -> usize {
        (self.done.iter())
            .map(|w| w.load(Ordering::Acquire).count_ones() as usize)
            .sum()
    }

    /// Writes `body` as file `i` (entry `e`) at its path below the stage, checks it against
    /// the entry, and gives it `mode` (the mode this node applies) and the entry's mtime.
    /// `body_md5` is the MD5 of `body`, computed by the caller with others' (see
    /// [`crate::tree::Md5::of_many`]). A body that fails its check is deleted and reported as
    /// [`StoreError::Mismatch`].
    pub fn write(
        &self,
        i: u32,
        e: &Entry,
        mode: u32,
        body: &[u8],
        body_md5: crate::tree::Md5,
    ) -> Result<(), StoreError> {
        let (
            Ok(k),
            EntryKind::File {
                md5,
                blake3,
                size,
                mtime,
                ..
            },
        ) = (self.files.binary_search(&i), &e.kind)
        else {
            return Err(StoreError::Io(io::Error::other(format!(
                "{}: not a file of this stage",
                e.path
            ))));
        };
        let fd = rustix::fs::openat(
            &*self.fd,
            e.path.as_str(),
            OFlags::WRONLY | OFlags::CREATE | OFlags::TRUNC | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )
        .map_err(|err| named("create file", &self.path.join(&e.path), err))?;
        let file = fs_err::File::from_parts(std::fs::File::from(fd), self.path.join(&e.path));
        let mut w = BodyWriter::new(
            Expected::whole(*md5, *blake3, *size),
            self.objects.clone(),
            String::new(),
            Spot::Under(self.fd.clone(), e.path.clone()),
            file,
            false,
        );
        w.write_whole(body, body_md5)?;
        w.finish_in_place(mode, *mtime)?;
        self.mark(k);
        Ok(())
    }

    /// The file at position `k` of `files` is written and checked.
    fn mark(&self, k: usize) {
        self.done[k / 64].fetch_or(1 << (k % 64), Ordering::AcqRel);
    }

    /// Whether `rel` is a top-most new directory of this stage.
    pub fn is_top(&self, rel: &str) -> bool {
        self.tops.binary_search_by(|t| t.as_str().cmp(rel)).is_ok()
    }

    /// The stage's directory, which staged paths are relative to (for a rename into `dir`).
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl Drop for Stage {
    fn drop(&mut self) {
        // Empty directories once the apply moved everything; whole files if it did not run.
        let _ = fs_err::remove_dir_all(&self.path);
    }
}

/// What planning a stage found at a directory's path in `dir`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Found {
    /// A directory: what is below it may be new.
    There,
    /// Missing, and listed by the manifest as a directory: a top of the stage.
    Top,
    /// Missing, but not a directory of the manifest: nothing below it is staged.
    Not,
}

/// Whether `parent` (a directory of `manifest`) is below a directory `dir` lacks: looks at
/// each directory on its way down once (`seen`), and adds the top-most one `dir` lacks to
/// `tops`.
fn new_top(
    dir: &Path,
    manifest: &Manifest,
    parent: &str,
    seen: &mut HashMap<String, Found>,
    tops: &mut Vec<String>,
) -> bool {
    let prefixes = parent
        .match_indices('/')
        .map(|(k, _)| &parent[..k])
        .chain([parent]);
    for prefix in prefixes {
        let found = *seen.entry(prefix.to_owned()).or_insert_with(|| {
            if std::fs::symlink_metadata(dir.join(prefix)).is_ok_and(|m| m.is_dir()) {
                Found::There
            } else if manifest
                .get(prefix)
                .is_some_and(|e| matches!(e.kind, EntryKind::Dir))
            {
                tops.push(prefix.to_owned());
                Found::Top
            } else {
                Found::Not
            }
        });
        match found {
            Found::There => continue,
            Found::Top => return true,
            Found::Not => return false,
        }
    }
    false
}
