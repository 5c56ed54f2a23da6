//! The origin's scan: walk `dir`, hash every changed file into the store, and build the
//! manifest of the release to publish.
//!
//! A [`StatCache`] remembers, per path, the file's size, mtime, ctime and inode with its MD5,
//! so a publish reads only files whose metadata changed: an unchanged tree costs one walk of
//! `lstat` calls. Entries written within [`RACY_WINDOW`] of the scan are not cached, since a
//! later write in the same timestamp tick could go unnoticed ("racily clean", as in git).

use std::collections::{HashMap, HashSet};
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use fs_err as fs;
use serde::{Deserialize, Serialize};

use crate::data::state::{self, Kind};
use crate::data::{Store, StoreError};
use crate::tree::hash::hash_file;
use crate::tree::{Body, Entry, EntryKind, Manifest, ManifestError, Md5};

/// Files modified this recently before a scan (nanoseconds) are re-hashed on the next one: a
/// write in the same timestamp tick after hashing would leave the stat unchanged. Filesystems
/// with nanosecond timestamps tick at most every few milliseconds; those that store whole
/// seconds (a zero nanosecond part) may round to 2 s (FAT), hence the coarse window.
pub const RACY_WINDOW_FINE: i128 = 50_000_000;
pub const RACY_WINDOW_COARSE: i128 = 2_000_000_000;

#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    /// A file or directory could not be read (the message names it).
    #[error(transparent)]
    Io(#[from] io::Error),
    #[error("{0}: file name is not valid UTF-8 (not supported yet)")]
    NotUtf8(PathBuf),
    #[error(transparent)]
    Store(StoreError),
    #[error("invalid tree: {0}")]
    Manifest(#[from] ManifestError),
}

/// What a file looked like when it was last hashed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct Stat {
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
    ino: u64,
}

impl Stat {
    fn of(m: &std::fs::Metadata) -> Self {
        Stat {
            size: m.len(),
            mtime: (m.mtime(), m.mtime_nsec()),
            ctime: (m.ctime(), m.ctime_nsec()),
            ino: m.ino(),
        }
    }
}

/// Path → (stat, body) of the files seen by the last scan.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatCache {
    files: HashMap<String, (Stat, Body)>,
}

impl StatCache {
    /// Loads a cache saved by [`StatCache::save`]; a missing or unreadable one is empty
    /// (it only saves work: every file is then read again).
    pub fn load(path: &Path) -> Self {
        state::read(path, Kind::StatCache)
            .ok()
            .flatten()
            .unwrap_or_default()
    }

    pub fn save(&self, path: &Path) -> Result<(), state::StateError> {
        state::write(path, Kind::StatCache, self)
    }

    pub fn len(&self) -> usize {
        self.files.len()
    }

    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }
}

/// What a scan did besides building the manifest.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ScanStats {
    /// Files read and hashed.
    pub hashed: u64,
    pub hashed_bytes: u64,
    /// Files whose MD5 came from the stat cache.
    pub cached: u64,
}

/// Scans `dir` into a manifest; every file body ends up verified in `store`. Returns the new
/// cache to use next time.
pub fn scan(
    dir: &Path,
    store: &Store,
    cache: &StatCache,
) -> Result<(Manifest, StatCache, ScanStats), ScanError> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i128);
    // Cached bodies count only if still held: one listing of the store checks them all.
    let held = if cache.is_empty() {
        Default::default()
    } else {
        store.held().map_err(ScanError::Store)?
    };
    let mut w = Walk {
        root: dir,
        store: Some(store),
        held,
        old: cache,
        new: StatCache::default(),
        stats: ScanStats::default(),
        now,
        entries: Vec::new(),
        to_read: Vec::new(),
    };
    w.walk("")?;
    w.read_files()?;
    let manifest = Manifest::from_entries(w.entries)?;
    Ok((manifest, w.new, w.stats))
}

/// The manifest `dir` would publish, hashing every file but storing nothing: two directories
/// are identical (content, types, modes, mtimes) exactly when their root digests are equal.
pub fn fingerprint(dir: &Path) -> Result<Manifest, ScanError> {
    let empty = StatCache::default();
    let mut w = Walk {
        root: dir,
        store: None,
        held: Default::default(),
        old: &empty,
        new: StatCache::default(),
        stats: ScanStats::default(),
        now: 0,
        entries: Vec::new(),
        to_read: Vec::new(),
    };
    w.walk("")?;
    w.read_files()?;
    Ok(Manifest::from_entries(w.entries)?)
}

/// A file the walk found that must be read: its entry (a placeholder until read), path and
/// stat before reading.
struct ToRead {
    entry: usize,
    path: PathBuf,
    stat: Stat,
}

struct Walk<'a> {
    root: &'a Path,
    store: Option<&'a Store>,
    /// The bodies the store held when the scan began.
    held: HashSet<Md5>,
    old: &'a StatCache,
    new: StatCache,
    stats: ScanStats,
    /// When the scan started, in nanoseconds since the Unix epoch.
    now: i128,
    entries: Vec<Entry>,
    /// Files to read once the walk is done, on several threads.
    to_read: Vec<ToRead>,
}

impl Walk<'_> {
    fn walk(&mut self, rel: &str) -> Result<(), ScanError> {
        let abs = if rel.is_empty() {
            self.root.to_owned()
        } else {
            self.root.join(rel)
        };
        for item in fs::read_dir(&abs)? {
            let item = item?;
            let path = item.path();
            let name = item
                .file_name()
                .into_string()
                .map_err(|_| ScanError::NotUtf8(path.clone()))?;
            let rel_path = if rel.is_empty() {
                name
            } else {
                format!("{rel}/{name}")
            };
            // Relative to the open directory: no walk of the whole path per entry.
            let meta = item.metadata()?;
            let mode = meta.permissions().mode() & 0o7777;
            let ft = meta.file_type();
            let kind = if ft.is_dir() {
                EntryKind::Dir
            } else if ft.is_file() {
                // A file to read gets a placeholder, filled in by `read_files`.
                let Body { md5, size, chunks } = match self.cached(&rel_path, &meta) {
                    Some(body) => body,
                    None => {
                        self.to_read.push(ToRead {
                            entry: self.entries.len(),
                            path: path.clone(),
                            stat: Stat::of(&meta),
                        });
                        Body {
                            md5: Md5::of(b""),
                            size: 0,
                            chunks: Vec::new(),
                        }
                    }
                };
                EntryKind::File {
                    size,
                    md5,
                    mtime: meta.mtime(),
                    chunks,
                }
            } else if ft.is_symlink() {
                let target = fs::read_link(&path)?;
                let target = target
                    .into_os_string()
                    .into_string()
                    .map_err(|_| ScanError::NotUtf8(path.clone()))?;
                EntryKind::Symlink { target }
            } else {
                tracing::warn!(path = %path.display(), "skipping special file (socket, fifo or device)");
                continue;
            };
            let is_dir = matches!(kind, EntryKind::Dir);
            self.entries.push(Entry {
                path: rel_path.clone(),
                mode,
                kind,
            });
            if is_dir {
                self.walk(&rel_path)?;
            }
        }
        Ok(())
    }

    /// The body of a file whose stat is unchanged since the last scan and whose body is held.
    fn cached(&mut self, rel: &str, meta: &std::fs::Metadata) -> Option<Body> {
        self.store?;
        let stat = Stat::of(meta);
        let (old, body) = self.old.files.get(rel)?;
        if *old != stat || !self.held.contains(&body.md5) {
            return None;
        }
        self.stats.cached += 1;
        self.new.files.insert(rel.to_owned(), (stat, body.clone()));
        Some(body.clone())
    }

    /// Reads the files the walk could not take from the cache, on several threads
    /// (into the store when scanning for a publish), and fills in their entries.
    fn read_files(&mut self) -> Result<(), ScanError> {
        let jobs = std::mem::take(&mut self.to_read);
        if jobs.is_empty() {
            return Ok(());
        }
        let store = self.store;
        let read = super::par_map(&jobs, |job| {
            let body = match store {
                Some(store) => store.ingest(&job.path).map_err(ScanError::Store)?,
                None => hash_file(&job.path, true)?,
            };
            // Taken right after reading, to tell whether the file changed meanwhile.
            let after = fs::symlink_metadata(&job.path).map(|m| Stat::of(&m)).ok();
            Ok::<_, ScanError>((body, after))
        })?;
        for (job, (body, after)) in jobs.iter().zip(read) {
            self.stats.hashed += 1;
            self.stats.hashed_bytes += body.size;
            let entry = &mut self.entries[job.entry];
            if let EntryKind::File {
                md5: m,
                size: sz,
                chunks: c,
                ..
            } = &mut entry.kind
            {
                (*m, *sz, *c) = (body.md5, body.size, body.chunks.clone());
            }
            // The file may have changed while it was read: cache only what matches the
            // stat taken before reading, and nothing modified too recently to tell.
            let stat = job.stat;
            let mtime = stat.mtime.0 as i128 * 1_000_000_000 + stat.mtime.1 as i128;
            let window = if stat.mtime.1 == 0 {
                RACY_WINDOW_COARSE
            } else {
                RACY_WINDOW_FINE
            };
            if self.store.is_some()
                && after == Some(stat)
                && body.size == stat.size
                && self.now - mtime > window
            {
                self.new.files.insert(entry.path.clone(), (stat, body));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_skips_unchanged_files_and_catches_changes() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("src");
        fs::create_dir_all(dir.join("sub")).unwrap();
        let old = SystemTime::now() - std::time::Duration::from_secs(60);
        for (p, body) in [("a.txt", "a"), ("sub/b.txt", "b"), ("recent.txt", "r")] {
            fs::write(dir.join(p), body).unwrap();
            // "Recent" is in the future, so a slow machine cannot age it past the window.
            let mtime = if p == "recent.txt" {
                SystemTime::now() + std::time::Duration::from_secs(5)
            } else {
                old
            };
            fs::File::options()
                .write(true)
                .open(dir.join(p))
                .unwrap()
                .set_modified(mtime)
                .unwrap();
        }
        let store = Store::open(&t.path().join("store")).unwrap();
        let (m1, cache, s1) = scan(&dir, &store, &StatCache::default()).unwrap();
        assert_eq!((s1.hashed, s1.cached), (3, 0));
        // The recently modified file is not trusted to the cache.
        assert_eq!(cache.len(), 2);

        let (m2, cache, s2) = scan(&dir, &store, &cache).unwrap();
        assert_eq!((s2.hashed, s2.cached), (1, 2));
        assert_eq!(m1.root_digest(), m2.root_digest());

        // Same size, same mtime, different content: ctime still gives it away.
        fs::write(dir.join("a.txt"), "A").unwrap();
        fs::File::options()
            .write(true)
            .open(dir.join("a.txt"))
            .unwrap()
            .set_modified(old)
            .unwrap();
        let (m3, _, s3) = scan(&dir, &store, &cache).unwrap();
        assert_eq!(s3.cached, 1);
        assert_ne!(m3.root_digest(), m2.root_digest());
        assert_eq!(
            m3.get("a.txt")
                .map(|(e, _)| e.kind.clone())
                .map(|k| matches!(k, EntryKind::File { md5, .. } if md5 == Md5::of(b"A"))),
            Some(true)
        );
        assert!(store.has(&Md5::of(b"A")));
    }
}
