//! The origin's scan: walk `dir`, hash every changed file (copying it into the store, or
//! leaving its body in `dir` to be served from there: see [`Stored`]), and build the manifest
//! of the release to publish.
//!
//! A [`StatCache`] remembers, per entry of the last scan's manifest, a digest of the file's
//! size, mtime, ctime and inode ([`Seen`]), so a publish reads only files whose metadata changed (the others take
//! their body from that manifest): an unchanged tree costs one walk of `lstat` calls. Entries written within [`RACY_WINDOW`] of the scan are not cached, since a
//! later write in the same timestamp tick could go unnoticed ("racily clean", as in git).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use fs_err as fs;
use serde::{Deserialize, Serialize};

use super::rules::Rules;
use crate::data::state::{self, Kind};
use crate::data::{Store, StoreError};
use crate::tree::hash::{groups, hash_file, hash_reader, hash_together, open_regular, ToHash};
use crate::tree::{Blake3, Body, BodySet, Entry, EntryKind, Known, Manifest, ManifestError, Md5};

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

/// What a file looked like when it was last hashed: its size, mtime and ctime (nanoseconds
/// since the Unix epoch) and inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[cfg_attr(test, derive(Serialize))]
struct Stat {
    size: u64,
    mtime: i64,
    ctime: i64,
    ino: u64,
}

impl Stat {
    fn of(m: &std::fs::Metadata) -> Self {
        let ns = |s: i64, n: i64| s.saturating_mul(1_000_000_000).saturating_add(n);
        Stat {
            size: m.len(),
            mtime: ns(m.mtime(), m.mtime_nsec()),
            ctime: ns(m.ctime(), m.ctime_nsec()),
            ino: m.ino(),
        }
    }

    /// What the cache keeps of this stat.
    fn seen(&self) -> Seen {
        // Two 128-bit products of the fields (each moved off zero by an odd constant), folded
        // to 64 bits, then mixed once more: any one field changing changes the result but for
        // a chance of one in 2^64. (Constants from wyhash.)
        const K: [u64; 5] = [
            0xa076_1d64_78bd_642f,
            0xe703_7ed1_a0b4_28db,
            0x8ebc_6af0_9c88_c6e3,
            0x5899_65cc_7537_4cc3,
            0x1d8e_4e27_c47d_124f,
        ];
        let mum = |a: u64, b: u64| {
            let r = u128::from(a) * u128::from(b);
            (r as u64) ^ ((r >> 64) as u64)
        };
        let h = mum(self.size ^ K[0], self.mtime as u64 ^ K[1])
            ^ mum(self.ctime as u64 ^ K[2], self.ino ^ K[3]).rotate_left(32);
        Seen(mum(h ^ K[4], K[1]).max(1))
    }
}

/// What the stat cache keeps of a file's [`Stat`]: a 64-bit digest of it, 8 bytes a file
/// instead of 32 (at a million files, the cache and the scan's new one are two of the largest
/// things an origin holds while it publishes). Zero for an entry the cache does not vouch for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct Seen(u64);

impl Seen {
    const UNKNOWN: Seen = Seen(0);

    fn known(self) -> bool {
        self != Self::UNKNOWN
    }
}

/// What the last scan saw of the files of its manifest, entry by entry: a file whose stat is
/// unchanged takes its body from that manifest instead of being read again. The cache holds
/// no paths or bodies of its own (the manifest has them, shared with the release it became).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatCache {
    manifest: Manifest,
    /// One per entry of `manifest`: [`Seen::UNKNOWN`] for directories, symlinks and files
    /// not trusted to the cache.
    stats: Vec<Seen>,
}

impl Default for StatCache {
    fn default() -> Self {
        StatCache {
            manifest: Manifest::empty(),
            stats: Vec::new(),
        }
    }
}

/// A stat cache on disk: the stats, and the root digest of the manifest they are aligned with
/// (saved as a release of its own).
#[derive(Serialize, Deserialize)]
struct CacheRecord<'a> {
    root: Blake3,
    stats: std::borrow::Cow<'a, [Seen]>,
}

/// A stat cache as saved before [`Seen`] (state kind 3): whole stats, read and digested so an
/// upgrade reads no file again.
#[derive(Deserialize)]
struct FullCacheRecord {
    root: Blake3,
    stats: Vec<Stat>,
}

impl StatCache {
    /// Loads a cache saved by [`StatCache::save`] for `manifest` (the release it became); a
    /// missing or unreadable one, or one saved for another manifest, is empty (it only saves
    /// work: every file is then read again).
    pub fn load(path: &Path, manifest: Option<&Manifest>) -> Self {
        let Some(manifest) = manifest else {
            return Self::default();
        };
        let saved = match state::read::<CacheRecord>(path, Kind::StatCache) {
            Ok(Some(r)) => Some((r.root, r.stats.into_owned())),
            Ok(None) => None,
            Err(_) => state::read::<FullCacheRecord>(path, Kind::FullStatCache)
                .ok()
                .flatten()
                .map(|r| {
                    // (No file has inode 0: that was the stat of an entry not vouched for.)
                    let seen = |s: Stat| match s.ino {
                        0 => Seen::UNKNOWN,
                        _ => s.seen(),
                    };
                    (r.root, r.stats.into_iter().map(seen).collect())
                }),
        };
        match saved {
            Some((root, stats))
                if root == manifest.root_digest() && stats.len() == manifest.entries().len() =>
            {
                StatCache {
                    manifest: manifest.clone(),
                    stats,
                }
            }
            _ => Self::default(),
        }
    }

    pub fn save(&self, path: &Path) -> Result<(), state::StateError> {
        let record = CacheRecord {
            root: self.manifest.root_digest(),
            stats: std::borrow::Cow::Borrowed(&self.stats),
        };
        state::write(path, Kind::StatCache, &record)
    }

    /// Refers to `manifest` instead of an equal copy of it (one copy of the tree in memory).
    pub fn share(&mut self, manifest: &Manifest) {
        if manifest.root_digest() == self.manifest.root_digest()
            && manifest.entries().len() == self.manifest.entries().len()
        {
            self.manifest = manifest.clone();
        }
    }

    /// How many files the cache vouches for.
    pub fn len(&self) -> usize {
        self.stats.iter().filter(|s| s.known()).count()
    }

    pub fn is_empty(&self) -> bool {
        !self.stats.iter().any(|s| s.known())
    }
}

/// Paths (relative to `dir`) that changed since the last scan, as a watch reports them. A
/// directory named here is walked whole; the directories above a named path are listed again;
/// every other subtree is taken from the last scan unread.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Dirty {
    paths: BTreeSet<String>,
}

impl Dirty {
    pub fn add(&mut self, rel: &str) {
        self.paths.insert(rel.to_owned());
    }

    pub fn is_empty(&self) -> bool {
        self.paths.is_empty()
    }

    pub fn contains(&self, rel: &str) -> bool {
        self.paths.contains(rel)
    }

    /// Whether a path strictly below directory `rel` is named.
    fn has_below(&self, rel: &str) -> bool {
        let prefix = format!("{rel}/");
        self.paths
            .range(prefix.clone()..)
            .next()
            .is_some_and(|p| p.starts_with(&prefix))
    }
}

/// What a scan covers and what it leaves as it was.
#[derive(Debug, Default, Clone, Copy)]
pub struct Scope<'a> {
    /// Paths never scanned (the origin's `exclude`).
    pub exclude: Option<&'a Rules>,
    /// The last scan's manifest: files still being written keep their entry from it (or
    /// stay out if new), and with `dirty`, unchanged subtrees are taken from it.
    pub prev: Option<&'a Manifest>,
    /// Scan only what changed since `prev` (which must be the last scan, with the same
    /// `exclude`); `None` walks everything.
    pub dirty: Option<&'a Dirty>,
    /// Files open for writing: not read now, held at their `prev` entry.
    pub writing: Option<&'a HashSet<String>>,
    /// Which bodies are copied into the store.
    pub stored: Stored<'a>,
    /// Who else reads the files read (the origin pushing them to its children).
    pub tee: Option<&'a dyn Tee>,
}

/// Something that takes the bytes of the files a scan reads, as it reads them, so that one
/// read serves both the hashes and their next use: the origin pushes large new bodies to
/// its children while it scans (see [`crate::sync::push`]). The bytes are unchecked: the file
/// may change while it is read, and the scan may then leave it out.
pub trait Tee: Sync + std::fmt::Debug {
    /// Where the bytes of file `rel` (`size` bytes when opened, modified at `mtime`) go, or
    /// `None` if nobody wants them. Dropping the sink ends the file.
    fn open(&self, rel: &str, size: u64, mtime: i64) -> Option<Box<dyn TeeSink + '_>>;
}

/// The bytes of one file, in order, as the scan reads them.
pub trait TeeSink {
    fn block(&mut self, data: &[u8]);
}

/// Which file bodies a publish copies into the store. A body left in `dir` costs no copy and
/// no flush, and is served from the file, checked as it is read (see
/// [`crate::data::dir_body`]); but once the file changes, the release that named it cannot
/// be served any more. A copy stays servable whatever happens to the file.
#[derive(Debug, Default, Clone, Copy)]
pub enum Stored<'a> {
    /// Every body (a snapshot independent of `dir`).
    #[default]
    Every,
    /// Only the bodies of these paths (files that changed under a scan or after one, which
    /// are likely to again); the rest stay in `dir`.
    Only(&'a HashSet<String>),
}

/// What a scan did besides building the manifest.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ScanStats {
    /// Files read and hashed.
    pub hashed: u64,
    pub hashed_bytes: u64,
    /// Files whose MD5 came from the stat cache.
    pub cached: u64,
    /// Directories listed (a full scan lists them all; a watched one only the changed).
    pub listed: u64,
}

/// What a scan produced.
#[derive(Debug)]
pub struct Scanned {
    pub manifest: Manifest,
    /// The cache to use next time.
    pub cache: StatCache,
    /// Whether `cache` differs from the one the scan started from (else it need not be saved
    /// again).
    pub cache_changed: bool,
    pub stats: ScanStats,
    /// Files held at their previous state because they were open for writing or changed
    /// while being read: scan them again once they settle.
    pub unsettled: Vec<String>,
    /// The `exclude` patterns that matched something (a full scan only).
    pub matched: HashSet<String>,
}

/// Scans `dir` into a manifest; every file body ends up verified in `store`. Returns the new
/// cache to use next time.
pub fn scan(
    dir: &Path,
    store: &Store,
    cache: &StatCache,
) -> Result<(Manifest, StatCache, ScanStats), ScanError> {
    let s = scan_with(dir, store, cache.clone(), Scope::default())?;
    Ok((s.manifest, s.cache, s.stats))
}

/// Scans what `scope` covers of `dir` into a manifest, every file body verified in `store`,
/// taking unchanged files' MD5s from `cache`.
pub fn scan_with(
    dir: &Path,
    store: &Store,
    cache: StatCache,
    scope: Scope,
) -> Result<Scanned, ScanError> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i128);
    // Cached bodies count only if still held: one listing of the store checks them all (a
    // watched scan looks up the few it needs instead, and bodies left in `dir` need none).
    let held =
        if cache.is_empty() || scope.dirty.is_some() || !matches!(scope.stored, Stored::Every) {
            None
        } else {
            Some(store.held().map_err(ScanError::Store)?)
        };
    let mut w = Walk::new(dir, Some(store), held, cache, scope, now);
    match scope.dirty.zip(scope.prev) {
        Some((dirty, _)) if !dirty.contains("") => w.walk("", Depth::Changed)?,
        _ => w.walk("", Depth::All)?,
    }
    w.read_files()?;
    w.finish()
}

/// The manifest `dir` would publish, hashing every file but storing nothing: two directories
/// are identical (content, types, modes, mtimes) exactly when their root digests are equal.
pub fn fingerprint(dir: &Path) -> Result<Manifest, ScanError> {
    fingerprint_with(dir, None)
}

/// [`fingerprint`] without the paths `exclude` names.
pub fn fingerprint_with(dir: &Path, exclude: Option<&Rules>) -> Result<Manifest, ScanError> {
    let scope = Scope {
        exclude,
        ..Scope::default()
    };
    let mut w = Walk::new(dir, None, None, StatCache::default(), scope, 0);
    w.walk("", Depth::All)?;
    w.read_files()?;
    Ok(w.finish()?.manifest)
}

/// How much of a directory a walk looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Depth {
    /// Everything below.
    All,
    /// List this directory; below it, only what [`Scope::dirty`] names or leads to.
    Changed,
}

/// How a file the walk found must be read: its stat before reading, and where it goes.
struct ReadHow {
    stat: Stat,
    /// The device the walk found the file on (with the inode, what must be read).
    dev: u64,
    /// Its body is copied into the store (else only hashed where it is).
    copy: bool,
}

/// A file to read once the walk is done: its entry (a placeholder until read, shared with
/// the walk's list until then; its path is where to read) and how. Some 64 bytes a file.
struct ToRead {
    entry: usize,
    file: Arc<Entry>,
    how: ReadHow,
}

/// What reading a file gave: its body, and its stat right after (`None`: not taken).
type FileRead = (Body, Option<Stat>);

/// Reads and hashes one file; with the store, with its stat taken right after reading it,
/// through the descriptor read (no walk of the path), to tell whether it changed meanwhile.
fn read_one(
    root: &Path,
    store: Option<&Store>,
    tee: Option<&dyn Tee>,
    job: &ToRead,
) -> Result<Option<FileRead>, ScanError> {
    let path = root.join(&job.file.path);
    let how = &job.how;
    let body = match store {
        Some(store) if how.copy => store
            .ingest(&path, Some((how.dev, how.stat.ino)))
            .map(|b| (b, None))
            .map_err(|e| match e {
                StoreError::Io(e) => ScanError::Io(e),
                e => ScanError::Store(e),
            }),
        Some(_) => open_regular(&path, Some((how.dev, how.stat.ino)))
            .and_then(|(mut f, len)| {
                let mut sink = tee.and_then(|t| t.open(&job.file.path, len, mtime_of(job)));
                let body = hash_reader(&mut f, len, true, |block| {
                    if let Some(s) = sink.as_mut() {
                        s.block(block);
                    }
                    Ok(())
                })?;
                drop(sink);
                Ok((body, Some(Stat::of(&f.metadata()?))))
            })
            .map_err(ScanError::Io),
        None => hash_file(&path, true)
            .map(|b| (b, None))
            .map_err(ScanError::Io),
    }?;
    Ok(Some(match body {
        (b, Some(after)) => (b, Some(after)),
        (b, None) => (b, fs::symlink_metadata(&path).map(|m| Stat::of(&m)).ok()),
    }))
}

/// Reads and hashes small files `jobs` (left in `dir`) together ([`hash_together`]): per
/// file, its body and its stat right after the read, or why it could not be read.
fn read_together(
    root: &Path,
    tee: Option<&dyn Tee>,
    jobs: &[ToRead],
) -> Vec<Result<Option<FileRead>, ScanError>> {
    let files: Vec<ToHash> = (jobs.iter())
        .map(|j| ToHash {
            path: root.join(&j.file.path),
            size: j.how.stat.size,
            expect: Some((j.how.dev, j.how.stat.ino)),
        })
        .collect();
    let tee_each = |i: usize, data: &[u8]| {
        let job = &jobs[i];
        let sink = tee.and_then(|t| t.open(&job.file.path, data.len() as u64, mtime_of(job)));
        if let Some(mut sink) = sink {
            sink.block(data);
        }
    };
    (hash_together(&files, tee_each).into_iter())
        .map(|r| {
            let (body, f) = r?;
            Ok(Some((body, Some(Stat::of(&f.metadata()?)))))
        })
        .map(|r: io::Result<_>| r.map_err(ScanError::Io))
        .collect()
}

/// The mtime a walk saw for a file entry (0 for anything else).
fn mtime_of(job: &ToRead) -> i64 {
    match job.file.kind {
        EntryKind::File { mtime, .. } => mtime,
        _ => 0,
    }
}

/// What the threads reading files change in the walk, one file at a time.
struct Landing<'w> {
    entries: &'w mut Vec<Arc<Entry>>,
    cache_at: &'w mut Vec<Seen>,
    dropped: &'w mut HashSet<usize>,
    stats: &'w mut ScanStats,
    unsettled: &'w mut Vec<String>,
}

/// How many directories are listed ahead of the walk at once, on several threads: enough
/// to keep them busy, few enough that the listings held stay small.
const LIST_AHEAD: usize = 32;

/// [`Walk::from`] of an entry that is new (or changed) since the last scan.
const NEW: u32 = u32::MAX;

/// What a walk reads and never changes: shared by the threads that list directories.
struct Ctx<'a> {
    root: &'a Path,
    store: Option<&'a Store>,
    /// The bodies the store held when the scan began (`None`: ask the store each time).
    held: Option<BodySet>,
    /// The last scan's cache.
    old: StatCache,
    scope: Scope<'a>,
}

/// What one name of a directory is, made out on a listing thread: everything the walk needs
/// to add it to the manifest in order.
enum Found {
    /// A file, symlink or directory. A file either comes from the cache (at `from` there, to
    /// be cached again at `cache_at`) or is a placeholder to be read.
    Entry {
        /// The cache's manifest's own entry when it is the same (shared, not copied).
        entry: Arc<Entry>,
        cache_at: Seen,
        from: u32,
        read: Option<Box<ReadHow>>,
        /// For a directory: what is done below it, and where it is.
        below: Option<(Below, PathBuf)>,
    },
    /// Matched this exclude pattern.
    Excluded(String),
    /// A file open for writing: held at its last published state.
    Writing(String),
}

impl Ctx<'_> {
    /// Lists directory `rel` (at `abs`, reached at `depth`) and makes out each name, sorted
    /// by name (the order of a manifest's entries, so the walk takes them in order). The
    /// `lstat`s are most of a walk through an unchanged tree, and this runs on several
    /// threads. A name deleted since the listing is left out.
    fn survey(&self, rel: &str, abs: &Path, depth: Depth) -> Result<Vec<Found>, ScanError> {
        use std::os::unix::ffi::OsStrExt;
        let mut items = Vec::new();
        for item in fs::read_dir(abs)? {
            let item = item?;
            // Relative to the open directory: no walk of the whole path per entry.
            let meta = match item.metadata() {
                Ok(m) => m,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e.into()),
            };
            items.push((item.file_name(), meta));
        }
        items.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
        // This directory's children in the last scan's manifest, met in the same order.
        let mut old = OldChildren::of(&self.old.manifest, rel);
        let mut out = Vec::with_capacity(items.len());
        for (name, meta) in items {
            let path = || abs.join(&name);
            let Some(name) = name.to_str() else {
                return Err(ScanError::NotUtf8(path()));
            };
            let mut rel_path = String::with_capacity(rel.len() + 1 + name.len());
            if !rel.is_empty() {
                rel_path.push_str(rel);
                rel_path.push('/');
            }
            rel_path.push_str(name);
            let ft = meta.file_type();
            if let Some(pattern) = self
                .scope
                .exclude
                .and_then(|x| x.matched(&rel_path, ft.is_dir()))
            {
                out.push(Found::Excluded(pattern.to_owned()));
                continue;
            }
            let mode = meta.permissions().mode() & 0o7777;
            // Where the last scan had this name (the entry must still be the same to count).
            let was = old.find(name);
            let (mut cache_at, mut read, mut below) = (Seen::UNKNOWN, None, None);
            let mut from = was.map_or(NEW, |k| k as u32);
            let kind = if ft.is_dir() {
                below = Some((self.below(&rel_path, depth), path()));
                EntryKind::Dir
            } else if ft.is_file() {
                if self
                    .scope
                    .writing
                    .is_some_and(|w| w.contains(rel_path.as_str()))
                {
                    out.push(Found::Writing(rel_path));
                    continue;
                }
                let stat = Stat::of(&meta);
                let copy = self.copies(&rel_path);
                let cached = was.and_then(|k| self.cached(k, stat, copy));
                // A file to read gets a placeholder, filled in by `read_files`.
                let Body {
                    md5,
                    blake3,
                    size,
                    chunks,
                } = match cached {
                    Some(body) => {
                        cache_at = stat.seen();
                        body
                    }
                    None => {
                        from = NEW;
                        read = Some(Box::new(ReadHow {
                            stat,
                            dev: meta.dev(),
                            copy,
                        }));
                        Body {
                            md5: Md5::of(b""),
                            blake3: Blake3::empty(),
                            size: 0,
                            chunks: Vec::new(),
                        }
                    }
                };
                EntryKind::File {
                    size,
                    md5,
                    blake3,
                    mtime: meta.mtime(),
                    chunks,
                }
            } else if ft.is_symlink() {
                let target = match fs::read_link(path()) {
                    Ok(t) => t,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(e.into()),
                };
                let Some(target) = target.to_str() else {
                    return Err(ScanError::NotUtf8(path()));
                };
                EntryKind::Symlink {
                    target: target.to_owned(),
                }
            } else {
                tracing::warn!(path = %path().display(), "skipping special file (socket, fifo or device)");
                continue;
            };
            let entry = Entry {
                path: rel_path,
                mode,
                kind,
            };
            // The same entry as last time (mode and mtime too) keeps its digest; a directory's
            // is hashed again all the same unless everything below it is the same too.
            let entry = match self.old.manifest.entries().get(from as usize) {
                Some(old) if from != NEW && **old == entry => old.clone(),
                _ => {
                    from = NEW;
                    Arc::new(entry)
                }
            };
            out.push(Found::Entry {
                entry,
                cache_at,
                from,
                read,
                below,
            });
        }
        Ok(out)
    }

    /// What to do below directory `rel`, reached at `depth`.
    fn below(&self, rel: &str, depth: Depth) -> Below {
        let (Some(dirty), Some(prev), Depth::Changed) = (self.scope.dirty, self.scope.prev, depth)
        else {
            return Below::Walk(Depth::All);
        };
        if dirty.contains(rel) {
            return Below::Walk(Depth::All);
        }
        if dirty.has_below(rel) {
            return Below::Walk(Depth::Changed);
        }
        match prev.position(rel) {
            Some(i) if matches!(prev.entries()[i].kind, EntryKind::Dir) => {
                Below::Copy(i + 1..prev.subtree_end(i))
            }
            // New since the last scan: everything below is new too.
            _ => Below::Walk(Depth::All),
        }
    }

    /// Whether the body of file `rel` is copied into the store (when scanning for a publish).
    fn copies(&self, rel: &str) -> bool {
        self.store.is_some()
            && match self.scope.stored {
                Stored::Every => true,
                Stored::Only(paths) => paths.contains(rel),
            }
    }

    /// The body of the file at entry `k` of the cache's manifest, if the file is still at the
    /// `stat` cached and its body is held (in the store if it is copied there, else in the
    /// file itself).
    fn cached(&self, k: usize, stat: Stat, copy: bool) -> Option<Body> {
        let store = self.store?;
        if !self.old.stats[k].known() || self.old.stats[k] != stat.seen() {
            return None;
        }
        let EntryKind::File {
            size,
            md5,
            blake3,
            chunks,
            ..
        } = &self.old.manifest.entries()[k].kind
        else {
            return None;
        };
        let held = match &self.held {
            _ if !copy => true,
            Some(h) => h.contains(blake3),
            None => store.has(blake3),
        };
        held.then(|| Body {
            md5: *md5,
            blake3: *blake3,
            size: *size,
            chunks: chunks.clone(),
        })
    }
}

/// The children of one directory in a manifest, looked up by name in ascending order: a
/// cursor that steps over each child's subtree at once.
struct OldChildren<'m> {
    manifest: &'m Manifest,
    /// The next child's index; `end` is past the directory's subtree.
    at: usize,
    end: usize,
    /// The directory's path with its `/` (empty at the top).
    prefix_len: usize,
}

impl<'m> OldChildren<'m> {
    fn of(manifest: &'m Manifest, dir: &str) -> Self {
        let (at, end) = if dir.is_empty() {
            (0, manifest.entries().len())
        } else {
            match manifest.position(dir) {
                Some(i) if matches!(manifest.entries()[i].kind, EntryKind::Dir) => {
                    (i + 1, manifest.subtree_end(i))
                }
                _ => (0, 0),
            }
        };
        let prefix_len = if dir.is_empty() { 0 } else { dir.len() + 1 };
        OldChildren {
            manifest,
            at,
            end,
            prefix_len,
        }
    }

    /// The index of child `name`; names must be asked in ascending order.
    fn find(&mut self, name: &str) -> Option<usize> {
        let entries = self.manifest.entries();
        while self.at < self.end {
            let e = &entries[self.at];
            match e.path.as_bytes()[self.prefix_len..].cmp(name.as_bytes()) {
                std::cmp::Ordering::Less if matches!(e.kind, EntryKind::Dir) => {
                    self.at = self.manifest.subtree_end(self.at)
                }
                std::cmp::Ordering::Less => self.at += 1,
                std::cmp::Ordering::Equal => return Some(self.at),
                std::cmp::Ordering::Greater => return None,
            }
        }
        None
    }
}

struct Walk<'a> {
    ctx: Ctx<'a>,
    /// Whether the cache's manifest is [`Scope::prev`] (subtrees copied from one are entries
    /// of the other).
    old_is_prev: bool,
    stats: ScanStats,
    /// When the scan started, in nanoseconds since the Unix epoch.
    now: i128,
    entries: Vec<Arc<Entry>>,
    /// Per entry: the stat to cache it at ([`Seen::UNKNOWN`]: not cached).
    cache_at: Vec<Seen>,
    /// Per entry: its index in the cache's manifest when it is the same entry there (its
    /// digest is then known), else [`NEW`].
    from: Vec<u32>,
    /// Entries left out in the end (unsettled new files), by index.
    dropped: HashSet<usize>,
    /// Files to read once the walk is done, on several threads.
    to_read: Vec<ToRead>,
    unsettled: Vec<String>,
    matched: HashSet<String>,
}

impl<'a> Walk<'a> {
    fn new(
        root: &'a Path,
        store: Option<&'a Store>,
        held: Option<BodySet>,
        old: StatCache,
        scope: Scope<'a>,
        now: i128,
    ) -> Self {
        // Sized once from the last scan (most trees change little between two), instead of
        // grown by doubling while the last release is still held: the peak of a publish is
        // here.
        let entries = scope.prev.map_or(0, |m| m.entries().len());
        let old_is_prev = scope
            .prev
            .is_some_and(|p| p.root_digest() == old.manifest.root_digest());
        Walk {
            ctx: Ctx {
                root,
                store,
                held,
                old,
                scope,
            },
            old_is_prev,
            stats: ScanStats::default(),
            now,
            entries: Vec::with_capacity(entries),
            cache_at: Vec::with_capacity(entries),
            from: Vec::with_capacity(entries),
            dropped: HashSet::new(),
            to_read: Vec::new(),
            unsettled: Vec::new(),
            matched: HashSet::new(),
        }
    }

    fn walk(&mut self, rel: &str, depth: Depth) -> Result<(), ScanError> {
        let abs = if rel.is_empty() {
            self.ctx.root.to_owned()
        } else {
            self.ctx.root.join(rel)
        };
        let found = self.ctx.survey(rel, &abs, depth)?;
        self.walk_found(found)
    }

    /// Adds what one directory holds (`found`) to the manifest, and walks below it. The
    /// directories below are surveyed ahead, [`LIST_AHEAD`] at a time, on several threads;
    /// what they hold is then taken in order here.
    fn walk_found(&mut self, found: Vec<Found>) -> Result<(), ScanError> {
        self.stats.listed += 1;
        // The directories walked below, in order: where each is in `found`, and how.
        let walked: Vec<(usize, String, PathBuf, Depth)> = (found.iter().enumerate())
            .filter_map(|(i, f)| match f {
                Found::Entry {
                    entry,
                    below: Some((Below::Walk(d), abs)),
                    ..
                } => Some((i, entry.path.clone(), abs.clone(), *d)),
                _ => None,
            })
            .collect();
        let mut ahead: HashMap<usize, Vec<Found>> = HashMap::new();
        // The first of `walked` not surveyed yet.
        let mut next = 0;
        for (i, f) in found.into_iter().enumerate() {
            let (entry, cache_at, from, read, below) = match f {
                Found::Excluded(pattern) => {
                    self.matched.insert(pattern);
                    continue;
                }
                Found::Writing(rel) => {
                    self.hold_back(&rel);
                    continue;
                }
                Found::Entry {
                    entry,
                    cache_at,
                    from,
                    read,
                    below,
                } => (entry, cache_at, from, read, below),
            };
            if let Some(how) = read {
                self.to_read.push(ToRead {
                    entry: self.entries.len(),
                    file: entry.clone(),
                    how: *how,
                });
            } else if cache_at.known() {
                self.stats.cached += 1;
            }
            self.push(entry, cache_at, from);
            match below {
                Some((Below::Walk(_), _)) => {
                    if !ahead.contains_key(&i) {
                        let batch = &walked[next..walked.len().min(next + LIST_AHEAD)];
                        let ctx = &self.ctx;
                        let lists =
                            super::par_map(batch, |(_, rel, abs, d)| ctx.survey(rel, abs, *d))?;
                        ahead.extend(batch.iter().map(|w| w.0).zip(lists));
                        next += batch.len();
                    }
                    let below = ahead.remove(&i).expect("surveyed ahead");
                    self.walk_found(below)?;
                }
                Some((Below::Copy(range), _)) => self.copy(range),
                None => {}
            }
        }
        Ok(())
    }

    /// Keeps file `rel` as the last scan had it (or leaves it out if it is new): it is open
    /// for writing or changed while it was read.
    fn hold_back(&mut self, rel: &str) {
        self.unsettled.push(rel.to_owned());
        let prev = self
            .ctx
            .scope
            .prev
            .and_then(|p| p.shared(rel))
            .filter(|e| matches!(e.kind, EntryKind::File { .. }));
        if let Some(e) = prev {
            self.push(e.clone(), Seen::UNKNOWN, NEW);
        }
    }

    /// Adds `entry` to the manifest, to be cached at `stat`; `from` is where the cache's
    /// manifest has the same entry.
    fn push(&mut self, entry: Arc<Entry>, seen: Seen, from: u32) {
        self.entries.push(entry);
        self.cache_at.push(seen);
        self.from.push(from);
    }

    /// Takes the entries `range` of the last scan's manifest as they are.
    fn copy(&mut self, range: std::ops::Range<usize>) {
        let prev = self.ctx.scope.prev.expect("copies come from prev");
        self.entries
            .extend_from_slice(&prev.entries()[range.clone()]);
        if self.old_is_prev {
            (self.cache_at).extend_from_slice(&self.ctx.old.stats[range.clone()]);
            self.from.extend(range.map(|k| k as u32));
        } else {
            let n = range.len();
            self.cache_at.extend(std::iter::repeat_n(Seen::UNKNOWN, n));
            self.from.extend(std::iter::repeat_n(NEW, n));
        }
    }

    /// Reads the files the walk could not take from the cache, on several threads
    /// (into the store when scanning for a publish), and fills in their entries as each is
    /// read: nothing is gathered per file meanwhile (a first scan reads every file). Small
    /// files left in `dir` are read in groups, whose MD5s are computed side by side.
    fn read_files(&mut self) -> Result<(), ScanError> {
        let jobs = std::mem::take(&mut self.to_read);
        if jobs.is_empty() {
            return Ok(());
        }
        let (root, store, prev, now) =
            (self.ctx.root, self.ctx.store, self.ctx.scope.prev, self.now);
        let tee = self.ctx.scope.tee;
        let landing = Mutex::new(Landing {
            entries: &mut self.entries,
            cache_at: &mut self.cache_at,
            dropped: &mut self.dropped,
            stats: &mut self.stats,
            unsettled: &mut self.unsettled,
        });
        let land = |job: ToRead, read: Result<Option<FileRead>, ScanError>| {
            let read = match read {
                Ok(read) => read,
                // Deleted since it was listed: it is gone from this scan too.
                Err(ScanError::Io(e)) if e.kind() == io::ErrorKind::NotFound => None,
                Err(e) => return Err(e),
            };
            let mut landing = landing.lock().expect("scan landing lock");
            landing.land(job, read, prev, store.is_some(), now);
            Ok(())
        };
        // Small files left in `dir` are read and hashed in groups, the others alone.
        let small = |job: &ToRead| (store.is_some() && !job.how.copy).then_some(job.how.stat.size);
        super::par_each(groups(jobs, small), |(together, jobs)| {
            let reads = match together {
                true => read_together(root, tee, &jobs),
                false => jobs.iter().map(|j| read_one(root, store, tee, j)).collect(),
            };
            (jobs.into_iter().zip(reads)).try_for_each(|(job, read)| land(job, read))
        })
    }

    /// The manifest and the cache for next time.
    fn finish(self) -> Result<Scanned, ScanError> {
        let (mut entries, mut cache_at, mut from) = (self.entries, self.cache_at, self.from);
        if !self.dropped.is_empty() {
            drop_indices(&mut entries, &self.dropped);
            drop_indices(&mut cache_at, &self.dropped);
            drop_indices(&mut from, &self.dropped);
        }
        let old = &self.ctx.old.manifest;
        let same = entries.len() == old.entries().len()
            && from.iter().enumerate().all(|(i, &k)| k as usize == i);
        let manifest = if same {
            // Every entry as the last scan had it, in the same places: the same manifest,
            // kept as it is (nothing to validate or hash, and one copy of the tree in memory).
            drop(entries);
            old.clone()
        } else {
            // Entries the last scan had as they are keep their digests: only what changed,
            // and the directories above it, are hashed.
            let mut known = Known {
                base: Some(old.clone()),
                ..Known::default()
            };
            for (i, &k) in from.iter().enumerate().filter(|(_, &k)| k != NEW) {
                known.keep(i, k as usize);
            }
            drop(from);
            // Directories whose whole subtree is unchanged keep their digests unhashed.
            known.find_subtrees(&entries);
            // The walk lists each directory sorted: its entries come in order.
            Manifest::from_sorted_known(entries, Some(&known))?
        };
        let cache_changed =
            manifest.root_digest() != old.root_digest() || cache_at != self.ctx.old.stats;
        cache_at.shrink_to_fit();
        let cache = StatCache {
            manifest: manifest.clone(),
            stats: cache_at,
        };
        Ok(Scanned {
            manifest,
            cache,
            cache_changed,
            stats: self.stats,
            unsettled: self.unsettled,
            matched: self.matched,
        })
    }
}

impl Landing<'_> {
    /// Fills in the entry of `job` from what reading it gave (`None`: it was gone).
    fn land(
        &mut self,
        job: ToRead,
        read: Option<FileRead>,
        prev: Option<&Manifest>,
        caching: bool,
        now: i128,
    ) {
        let ToRead {
            entry: at,
            file,
            how,
        } = job;
        let Some((body, after)) = read else {
            self.dropped.insert(at);
            return;
        };
        self.stats.hashed += 1;
        self.stats.hashed_bytes += body.size;
        let stat = how.stat;
        if after != Some(stat) || body.size != stat.size {
            // Changed while it was read: what was read may be half old, half new.
            let path = file.path.clone();
            match prev
                .and_then(|p| p.shared(&path))
                .filter(|e| matches!(e.kind, EntryKind::File { .. }))
            {
                Some(e) => self.entries[at] = e.clone(),
                None => {
                    self.dropped.insert(at);
                }
            }
            self.unsettled.push(path);
            return;
        }
        // The placeholder is the walk's own again: changed in place, not copied.
        drop(file);
        let entry = Arc::make_mut(&mut self.entries[at]);
        if let EntryKind::File {
            md5: m,
            blake3: b,
            size: sz,
            chunks: c,
            ..
        } = &mut entry.kind
        {
            (*m, *b, *sz, *c) = (body.md5, body.blake3, body.size, body.chunks);
        }
        // Cache nothing modified too recently to tell a later write in the same tick.
        let window = if stat.mtime % 1_000_000_000 == 0 {
            RACY_WINDOW_COARSE
        } else {
            RACY_WINDOW_FINE
        };
        if caching && now - i128::from(stat.mtime) > window {
            self.cache_at[at] = stat.seen();
        }
    }
}

/// Removes the items at `indices` from `v`, keeping the others in order.
fn drop_indices<T>(v: &mut Vec<T>, indices: &HashSet<usize>) {
    let mut i = 0..;
    v.retain(|_| !indices.contains(&i.next().expect("endless")));
}

/// Below a directory: walk it, or take its subtree (these entries) from the last scan.
#[derive(Debug, Clone)]
enum Below {
    Walk(Depth),
    Copy(std::ops::Range<usize>),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set_mtime(path: &Path, mtime: SystemTime) {
        fs::File::options()
            .write(true)
            .open(path)
            .unwrap()
            .set_modified(mtime)
            .unwrap();
    }

    #[test]
    fn only_the_named_bodies_are_copied_and_the_others_are_cached_from_dir() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("src");
        fs::create_dir_all(&dir).unwrap();
        let old = SystemTime::now() - std::time::Duration::from_secs(60);
        for (p, body) in [("cold.txt", "cold"), ("hot.txt", "hot")] {
            fs::write(dir.join(p), body).unwrap();
            set_mtime(&dir.join(p), old);
        }
        let store = Store::open(&t.path().join("store")).unwrap();
        let hot: HashSet<String> = ["hot.txt".to_owned()].into();
        let scope = Scope {
            stored: Stored::Only(&hot),
            ..Scope::default()
        };
        let s1 = scan_with(&dir, &store, StatCache::default(), scope).unwrap();
        assert!(store.has(&Blake3::of(b"hot")));
        assert!(!store.has(&Blake3::of(b"cold")), "left in dir");
        assert_eq!(s1.manifest, fingerprint(&dir).unwrap());
        // Unchanged: both come from the cache, the cold one although the store lacks it.
        let s2 = scan_with(&dir, &store, s1.cache, scope).unwrap();
        assert_eq!((s2.stats.hashed, s2.stats.cached), (0, 2));
        // Every body copied: the cold one is read again, into the store.
        let every = Scope::default();
        let s3 = scan_with(&dir, &store, s2.cache, every).unwrap();
        assert_eq!((s3.stats.hashed, s3.stats.cached), (1, 1));
        assert!(store.has(&Blake3::of(b"cold")));
    }

    /// Two files modified a minute ago (old enough to be cached), scanned once.
    fn two_old_files_scanned() -> (tempfile::TempDir, PathBuf, Store, Scanned) {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("src");
        fs::create_dir_all(dir.join("sub")).unwrap();
        let old = SystemTime::now() - std::time::Duration::from_secs(60);
        for (p, body) in [("a.txt", "a"), ("sub/b.txt", "b")] {
            fs::write(dir.join(p), body).unwrap();
            set_mtime(&dir.join(p), old);
        }
        let store = Store::open(&t.path().join("store")).unwrap();
        let s1 = scan_with(&dir, &store, StatCache::default(), Scope::default()).unwrap();
        (t, dir, store, s1)
    }

    #[test]
    fn a_saved_cache_serves_only_the_release_it_was_saved_with() {
        let (t, dir, store, s1) = two_old_files_scanned();
        assert!(s1.cache_changed);
        let path = t.path().join("statcache.bin");
        s1.cache.save(&path).unwrap();
        // For its own release: nothing is read again, and nothing is new to save.
        let loaded = StatCache::load(&path, Some(&s1.manifest));
        assert_eq!(loaded.len(), 2);
        let scope = Scope {
            prev: Some(&s1.manifest),
            ..Scope::default()
        };
        let s2 = scan_with(&dir, &store, loaded, scope).unwrap();
        assert_eq!((s2.stats.hashed, s2.stats.cached), (0, 2));
        assert!(!s2.cache_changed);
        assert_eq!(s2.manifest, s1.manifest);
        // For any other release (or none), it is empty: its stats are by entry.
        fs::write(dir.join("c.txt"), "c").unwrap();
        let other = fingerprint(&dir).unwrap();
        assert!(StatCache::load(&path, Some(&other)).is_empty());
        assert!(StatCache::load(&path, None).is_empty());
    }

    #[test]
    fn a_cache_of_whole_stats_saved_before_digests_still_serves() {
        let (t, dir, store, s1) = two_old_files_scanned();
        // The cache as an older Cascade saved it: every entry's whole stat (zero where it
        // vouched for nothing), state kind 3.
        let stats: Vec<Stat> = (s1.manifest.entries().iter())
            .map(|e| match e.kind {
                EntryKind::File { .. } => {
                    Stat::of(&fs::symlink_metadata(dir.join(&e.path)).unwrap())
                }
                _ => Stat {
                    size: 0,
                    mtime: 0,
                    ctime: 0,
                    ino: 0,
                },
            })
            .collect();
        #[derive(Serialize)]
        struct Old {
            root: Blake3,
            stats: Vec<Stat>,
        }
        let path = t.path().join("statcache.bin");
        let record = Old {
            root: s1.manifest.root_digest(),
            stats,
        };
        state::write(&path, Kind::FullStatCache, &record).unwrap();
        let loaded = StatCache::load(&path, Some(&s1.manifest));
        assert_eq!(loaded, s1.cache);
        let scope = Scope {
            prev: Some(&s1.manifest),
            ..Scope::default()
        };
        let s2 = scan_with(&dir, &store, loaded, scope).unwrap();
        assert_eq!((s2.stats.hashed, s2.stats.cached), (0, 2));
    }

    #[test]
    fn digests_taken_from_the_last_scan_equal_a_fresh_hash() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("src");
        let old = SystemTime::now() - std::time::Duration::from_secs(60);
        for d in ["a", "a/deep", "b", "c"] {
            fs::create_dir_all(dir.join(d)).unwrap();
        }
        for p in ["a/1", "a/2", "a/deep/3", "b/4", "b/5", "c/6", "top"] {
            fs::write(dir.join(p), p).unwrap();
            set_mtime(&dir.join(p), old);
        }
        let store = Store::open(&t.path().join("store")).unwrap();
        let first = scan_with(&dir, &store, StatCache::default(), Scope::default()).unwrap();
        // A mode changed, a file added deep down, one deleted, one with a new mtime only.
        fs::set_permissions(dir.join("a/2"), std::fs::Permissions::from_mode(0o600)).unwrap();
        fs::write(dir.join("a/deep/new"), "new").unwrap();
        fs::remove_file(dir.join("b/5")).unwrap();
        set_mtime(&dir.join("c/6"), old + std::time::Duration::from_secs(7));
        let scope = Scope {
            prev: Some(&first.manifest),
            ..Scope::default()
        };
        let again = scan_with(&dir, &store, first.cache, scope).unwrap();
        // Read again: the new file, the one with a new mtime, the one whose mode changed
        // (its ctime did too).
        assert_eq!((again.stats.hashed, again.stats.cached), (3, 4));
        assert_eq!(again.manifest, fingerprint(&dir).unwrap());
        assert!(again.cache_changed);
    }

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
            set_mtime(&dir.join(p), mtime);
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
        set_mtime(&dir.join("a.txt"), old);
        let (m3, _, s3) = scan(&dir, &store, &cache).unwrap();
        assert_eq!(s3.cached, 1);
        assert_ne!(m3.root_digest(), m2.root_digest());
        assert_eq!(
            m3.get("a.txt")
                .map(|e| e.kind.clone())
                .map(|k| matches!(k, EntryKind::File { md5, .. } if md5 == Md5::of(b"A"))),
            Some(true)
        );
        assert!(store.has(&Blake3::of(b"A")));
    }

    #[test]
    fn a_file_changing_while_it_is_read_is_held_at_its_last_state() {
        use std::io::Write;
        use std::sync::atomic::{AtomicBool, Ordering};
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("src");
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("log.bin"), "first").unwrap();
        let store = Store::open(&t.path().join("store")).unwrap();
        let first = scan_with(&dir, &store, StatCache::default(), Scope::default()).unwrap();
        // Big enough that reading it takes a while; a writer appends all the time.
        fs::write(dir.join("log.bin"), vec![7u8; 32 << 20]).unwrap();
        let stop = AtomicBool::new(false);
        std::thread::scope(|s| {
            s.spawn(|| {
                let mut f = fs::File::options()
                    .append(true)
                    .open(dir.join("log.bin"))
                    .unwrap();
                while !stop.load(Ordering::Relaxed) {
                    f.write_all(b"more").unwrap();
                }
            });
            let scope = Scope {
                prev: Some(&first.manifest),
                ..Scope::default()
            };
            let s = scan_with(&dir, &store, StatCache::default(), scope).unwrap();
            stop.store(true, Ordering::Relaxed);
            assert_eq!(s.unsettled, ["log.bin"]);
            assert_eq!(
                s.manifest.get("log.bin").unwrap(),
                first.manifest.get("log.bin").unwrap()
            );
            assert!(s.cache.is_empty(), "nothing half-read is cached");
        });
    }

    #[test]
    fn a_file_swapped_for_a_symlink_or_fifo_after_the_walk_is_never_read_through() {
        // Copied into the store (read alone), and left in `dir` (small files read together).
        let none = HashSet::new();
        for stored in [Stored::Every, Stored::Only(&none)] {
            let t = tempfile::tempdir().unwrap();
            let dir = t.path().join("src");
            fs::create_dir_all(&dir).unwrap();
            let secret = t.path().join("shadow");
            fs::write(&secret, "root:secret-hash").unwrap();
            let files = ["page.html", "pipe", "other.html", "gone.html", "grown.html"];
            for f in files {
                fs::write(dir.join(f), format!("{f} as listed")).unwrap();
            }
            fs::write(dir.join("kept.html"), "kept").unwrap();
            let store = Store::open(&t.path().join("store")).unwrap();
            let scope = Scope {
                stored,
                ..Scope::default()
            };
            let mut w = Walk::new(&dir, Some(&store), None, StatCache::default(), scope, 0);
            w.walk("", Depth::All).unwrap();
            // Between the walk's lstat and the read: a symlink to a secret, a FIFO, a file
            // replaced by another one, one deleted, one that grew.
            fs::remove_file(dir.join("page.html")).unwrap();
            std::os::unix::fs::symlink(&secret, dir.join("page.html")).unwrap();
            fs::remove_file(dir.join("pipe")).unwrap();
            rustix::fs::mkfifoat(
                rustix::fs::CWD,
                dir.join("pipe"),
                rustix::fs::Mode::from(0o644),
            )
            .unwrap();
            fs::write(dir.join("other.html.new"), "replaced").unwrap();
            fs::rename(dir.join("other.html.new"), dir.join("other.html")).unwrap();
            fs::remove_file(dir.join("gone.html")).unwrap();
            fs::write(dir.join("grown.html"), "grown.html as listed, and more").unwrap();
            w.read_files().unwrap();
            let s = w.finish().unwrap();
            assert!(
                !store.has(&Blake3::of(b"root:secret-hash")),
                "the secret was read"
            );
            for gone in files {
                assert!(s.manifest.get(gone).is_none(), "{gone} published");
            }
            assert_eq!(s.unsettled, ["grown.html"]);
            // What was read is hashed right, MD5 included.
            match &s.manifest.get("kept.html").unwrap().kind {
                EntryKind::File { md5, blake3, .. } => {
                    assert_eq!((*md5, *blake3), (Md5::of(b"kept"), Blake3::of(b"kept")))
                }
                k => panic!("{k:?}"),
            }
        }
    }
}
