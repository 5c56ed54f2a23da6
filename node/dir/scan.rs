//! The origin's scan: walk `dir`, hash every changed file (copying it into the store, or
//! leaving its body in `dir` to be served from there: see [`Stored`]), and build the manifest
//! of the release to publish.
//!
//! A [`StatCache`] remembers, per path, the file's size, mtime, ctime and inode with its MD5,
//! so a publish reads only files whose metadata changed: an unchanged tree costs one walk of
//! `lstat` calls. Entries written within [`RACY_WINDOW`] of the scan are not cached, since a
//! later write in the same timestamp tick could go unnoticed ("racily clean", as in git).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use fs_err as fs;
use serde::{Deserialize, Serialize};

use super::rules::Rules;
use crate::data::state::{self, Kind};
use crate::data::{Store, StoreError};
use crate::tree::hash::{hash_file, hash_reader, open_regular};
use crate::tree::{Blake3, Body, Entry, EntryKind, Manifest, ManifestError, Md5};

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

    /// Drops entries for paths that are no longer files of `manifest` (deleted since).
    fn prune(&mut self, manifest: &Manifest) {
        self.files
            .retain(|p, _| matches!(manifest.get(p), Some((e, _)) if matches!(e.kind, EntryKind::File { .. })));
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

/// A file the walk found that must be read: its entry (a placeholder until read), path and
/// stat before reading.
struct ToRead {
    entry: usize,
    path: PathBuf,
    stat: Stat,
    /// The device the walk found the file on (with the inode, what must be read).
    dev: u64,
    /// Its body is copied into the store (else only hashed where it is).
    copy: bool,
}

/// How many directories are listed ahead of the walk at once, on several threads: enough
/// to keep them busy, few enough that the listings held stay small.
const LIST_AHEAD: usize = 32;

/// An entry of a directory, as listed (its `lstat`, and a symlink's target).
struct Listed {
    name: std::ffi::OsString,
    meta: std::fs::Metadata,
    target: Option<PathBuf>,
}

/// Lists directory `abs`, sorted by name (the order of a manifest's entries, so the walk
/// builds them in order). An entry deleted since the listing is left out.
fn list(abs: &Path) -> Result<Vec<Listed>, ScanError> {
    use std::os::unix::ffi::OsStrExt;
    let mut out = Vec::new();
    for item in fs::read_dir(abs)? {
        let item = item?;
        // Relative to the open directory: no walk of the whole path per entry.
        let meta = match item.metadata() {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e.into()),
        };
        let target = if meta.file_type().is_symlink() {
            match fs::read_link(item.path()) {
                Ok(t) => Some(t),
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e.into()),
            }
        } else {
            None
        };
        out.push(Listed {
            name: item.file_name(),
            meta,
            target,
        });
    }
    out.sort_unstable_by(|a, b| a.name.as_bytes().cmp(b.name.as_bytes()));
    Ok(out)
}

struct Walk<'a> {
    root: &'a Path,
    store: Option<&'a Store>,
    /// The bodies the store held when the scan began (`None`: ask the store each time).
    held: Option<HashSet<Blake3>>,
    /// The last scan's cache; a watched scan updates it in place, a full one builds `new`.
    old: StatCache,
    new: StatCache,
    scope: Scope<'a>,
    stats: ScanStats,
    /// When the scan started, in nanoseconds since the Unix epoch.
    now: i128,
    entries: Vec<Entry>,
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
        held: Option<HashSet<Blake3>>,
        old: StatCache,
        scope: Scope<'a>,
        now: i128,
    ) -> Self {
        // Sized once from the last scan (most trees change little between two), instead of
        // grown by doubling while the old cache and the last release are still held: the
        // peak of a publish is here.
        let incremental = scope.dirty.is_some() && scope.prev.is_some();
        let files = if incremental { 0 } else { old.files.len() };
        let entries = scope.prev.map_or(0, |m| m.entries().len());
        Walk {
            root,
            store,
            held,
            old,
            new: StatCache {
                files: HashMap::with_capacity(files),
            },
            scope,
            stats: ScanStats::default(),
            now,
            entries: Vec::with_capacity(entries),
            dropped: HashSet::new(),
            to_read: Vec::new(),
            unsettled: Vec::new(),
            matched: HashSet::new(),
        }
    }

    /// Whether this scan takes unchanged subtrees from the last one.
    fn incremental(&self) -> bool {
        self.scope.dirty.is_some() && self.scope.prev.is_some()
    }

    fn walk(&mut self, rel: &str, depth: Depth) -> Result<(), ScanError> {
        let abs = if rel.is_empty() {
            self.root.to_owned()
        } else {
            self.root.join(rel)
        };
        let listing = list(&abs)?;
        self.walk_listed(rel, &abs, depth, listing)
    }

    /// Walks directory `rel` (at `abs`), listed as `listing`. The directories below it that
    /// are walked are listed ahead, [`LIST_AHEAD`] at a time, on several threads (the
    /// `lstat`s are most of a walk through an unchanged tree); the entries are then taken in
    /// order here.
    fn walk_listed(
        &mut self,
        rel: &str,
        abs: &Path,
        depth: Depth,
        listing: Vec<Listed>,
    ) -> Result<(), ScanError> {
        self.stats.listed += 1;
        let child = |name: &str| {
            if rel.is_empty() {
                name.to_owned()
            } else {
                format!("{rel}/{name}")
            }
        };
        // What is done below each directory of the listing (`None`: excluded, or not one).
        let below: Vec<Option<Below>> = listing
            .iter()
            .map(|l| {
                if !l.meta.is_dir() {
                    return None;
                }
                let rel_path = child(l.name.to_str()?);
                let excluded = self
                    .scope
                    .exclude
                    .is_some_and(|x| x.matches(&rel_path, true));
                (!excluded).then(|| self.below(&rel_path, depth))
            })
            .collect();
        // Where each directory walked is.
        let walked: Vec<Option<PathBuf>> = (listing.iter().zip(&below))
            .map(|(l, b)| matches!(b, Some(Below::Walk(_))).then(|| abs.join(&l.name)))
            .collect();
        let mut ahead: HashMap<usize, Vec<Listed>> = HashMap::new();
        for (i, item) in listing.into_iter().enumerate() {
            let path = || abs.join(&item.name);
            let Some(name) = item.name.to_str() else {
                return Err(ScanError::NotUtf8(path()));
            };
            let rel_path = child(name);
            let meta = item.meta;
            let ft = meta.file_type();
            if let Some(pattern) = self
                .scope
                .exclude
                .and_then(|x| x.matched(&rel_path, ft.is_dir()))
            {
                self.matched.insert(pattern.to_owned());
                continue;
            }
            let mode = meta.permissions().mode() & 0o7777;
            let kind = if ft.is_dir() {
                EntryKind::Dir
            } else if ft.is_file() {
                if self
                    .scope
                    .writing
                    .is_some_and(|w| w.contains(rel_path.as_str()))
                {
                    self.hold_back(&rel_path);
                    continue;
                }
                // A file to read gets a placeholder, filled in by `read_files`.
                let Body {
                    md5,
                    blake3,
                    size,
                    chunks,
                } = match self.cached(&rel_path, &meta) {
                    Some(body) => body,
                    None => {
                        self.to_read.push(ToRead {
                            entry: self.entries.len(),
                            path: path(),
                            stat: Stat::of(&meta),
                            dev: meta.dev(),
                            copy: self.copies(&rel_path),
                        });
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
                let Some(target) = item.target.as_ref() else {
                    continue;
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
            if !matches!(kind, EntryKind::Dir) {
                self.entries.push(Entry {
                    path: rel_path,
                    mode,
                    kind,
                });
            } else {
                self.entries.push(Entry {
                    path: rel_path.clone(),
                    mode,
                    kind,
                });
                match &below[i] {
                    Some(Below::Walk(d)) => {
                        if !ahead.contains_key(&i) {
                            let next: Vec<(usize, &PathBuf)> = (i..walked.len())
                                .filter_map(|j| Some((j, walked[j].as_ref()?)))
                                .take(LIST_AHEAD)
                                .collect();
                            let lists = super::par_map(&next, |(_, p)| list(p))?;
                            ahead.extend(next.iter().map(|(j, _)| *j).zip(lists));
                        }
                        let listing = ahead.remove(&i).expect("listed ahead");
                        self.walk_listed(&rel_path, &path(), *d, listing)?
                    }
                    Some(Below::Copy(range)) => {
                        let prev = self.scope.prev.expect("copies come from prev");
                        self.entries
                            .extend_from_slice(&prev.entries()[range.clone()]);
                    }
                    // Excluded directories were skipped above.
                    None => {}
                }
            }
        }
        Ok(())
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

    /// Keeps file `rel` as the last scan had it (or leaves it out if it is new): it is open
    /// for writing or changed while it was read.
    fn hold_back(&mut self, rel: &str) {
        self.unsettled.push(rel.to_owned());
        let prev = self
            .scope
            .prev
            .and_then(|p| p.get(rel))
            .filter(|(e, _)| matches!(e.kind, EntryKind::File { .. }));
        if let Some((e, _)) = prev {
            self.entries.push(e.clone());
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

    /// The body of a file whose stat is unchanged since the last scan and whose body is held
    /// (in the store if it is copied there, else in the file itself).
    fn cached(&mut self, rel: &str, meta: &std::fs::Metadata) -> Option<Body> {
        let store = self.store?;
        let stat = Stat::of(meta);
        let (old, body) = self.old.files.get(rel)?;
        let held = match &self.held {
            _ if !self.copies(rel) => true,
            Some(h) => h.contains(&body.blake3),
            None => store.has(&body.blake3),
        };
        if *old != stat || !held {
            return None;
        }
        self.stats.cached += 1;
        if self.incremental() {
            return Some(body.clone());
        }
        // A full scan builds a new cache and drops the old: its entry moves over.
        let (path, (stat, body)) = self.old.files.remove_entry(rel).expect("just found");
        self.new.files.insert(path, (stat, body.clone()));
        Some(body)
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
                Some(store) if job.copy => store
                    .ingest(&job.path, Some((job.dev, job.stat.ino)))
                    .map_err(|e| match e {
                        StoreError::Io(e) => ScanError::Io(e),
                        e => ScanError::Store(e),
                    }),
                Some(_) => open_regular(&job.path, Some((job.dev, job.stat.ino)))
                    .and_then(|(mut f, len)| hash_reader(&mut f, len, true, |_| Ok(())))
                    .map_err(ScanError::Io),
                None => hash_file(&job.path, true).map_err(ScanError::Io),
            };
            let body = match body {
                Ok(b) => b,
                // Deleted since it was listed: it is gone from this scan too.
                Err(ScanError::Io(e)) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(e),
            };
            // Taken right after reading, to tell whether the file changed meanwhile.
            let after = fs::symlink_metadata(&job.path).map(|m| Stat::of(&m)).ok();
            Ok::<_, ScanError>(Some((body, after)))
        })?;
        let incremental = self.incremental();
        for (job, read) in jobs.iter().zip(read) {
            let Some((body, after)) = read else {
                self.dropped.insert(job.entry);
                continue;
            };
            self.stats.hashed += 1;
            self.stats.hashed_bytes += body.size;
            let stat = job.stat;
            let path = self.entries[job.entry].path.clone();
            if after != Some(stat) || body.size != stat.size {
                // Changed while it was read: what was read may be half old, half new.
                self.unsettled.push(path.clone());
                match self
                    .scope
                    .prev
                    .and_then(|p| p.get(&path))
                    .filter(|(e, _)| matches!(e.kind, EntryKind::File { .. }))
                {
                    Some((e, _)) => self.entries[job.entry] = e.clone(),
                    None => {
                        self.dropped.insert(job.entry);
                    }
                }
                if incremental {
                    self.old.files.remove(&path);
                }
                continue;
            }
            let entry = &mut self.entries[job.entry];
            if let EntryKind::File {
                md5: m,
                blake3: b,
                size: sz,
                chunks: c,
                ..
            } = &mut entry.kind
            {
                (*m, *b, *sz, *c) = (body.md5, body.blake3, body.size, body.chunks.clone());
            }
            // Cache nothing modified too recently to tell a later write in the same tick.
            let mtime = stat.mtime.0 as i128 * 1_000_000_000 + stat.mtime.1 as i128;
            let window = if stat.mtime.1 == 0 {
                RACY_WINDOW_COARSE
            } else {
                RACY_WINDOW_FINE
            };
            let cache = if incremental {
                &mut self.old
            } else {
                &mut self.new
            };
            if self.store.is_some() && self.now - mtime > window {
                cache.files.insert(path, (stat, body));
            } else if incremental {
                cache.files.remove(&path);
            }
        }
        Ok(())
    }

    /// The manifest and the cache for next time.
    fn finish(mut self) -> Result<Scanned, ScanError> {
        let entries = if self.dropped.is_empty() {
            self.entries
        } else {
            let dropped = &self.dropped;
            self.entries
                .into_iter()
                .enumerate()
                .filter(|(i, _)| !dropped.contains(i))
                .map(|(_, e)| e)
                .collect()
        };
        // The walk lists each directory sorted: its entries come in order.
        let manifest = Manifest::from_sorted(entries)?;
        let cache = if self.scope.dirty.is_some() && self.scope.prev.is_some() {
            // Deleted files linger in an updated cache; sweep them once they are many.
            let files = manifest.file_count() as usize;
            if self.old.files.len() > files + files / 4 + 1024 {
                self.old.prune(&manifest);
            }
            self.old
        } else {
            self.new
        };
        Ok(Scanned {
            manifest,
            cache,
            stats: self.stats,
            unsettled: self.unsettled,
            matched: self.matched,
        })
    }
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
                .map(|(e, _)| e.kind.clone())
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
                s.manifest.get("log.bin").unwrap().0,
                first.manifest.get("log.bin").unwrap().0
            );
            assert!(s.cache.is_empty(), "nothing half-read is cached");
        });
    }

    #[test]
    fn a_file_swapped_for_a_symlink_or_fifo_after_the_walk_is_never_read_through() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("src");
        fs::create_dir_all(&dir).unwrap();
        let secret = t.path().join("shadow");
        fs::write(&secret, "root:secret-hash").unwrap();
        fs::write(dir.join("page.html"), "page").unwrap();
        fs::write(dir.join("pipe"), "was a file").unwrap();
        fs::write(dir.join("other.html"), "other").unwrap();
        let store = Store::open(&t.path().join("store")).unwrap();
        let mut w = Walk::new(
            &dir,
            Some(&store),
            None,
            StatCache::default(),
            Scope::default(),
            0,
        );
        w.walk("", Depth::All).unwrap();
        // Between the walk's lstat and the read: a symlink to a secret, a FIFO, and a file
        // replaced by another one.
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
        w.read_files().unwrap();
        let s = w.finish().unwrap();
        assert!(
            !store.has(&Blake3::of(b"root:secret-hash")),
            "the secret was read"
        );
        for gone in ["page.html", "pipe", "other.html"] {
            assert!(s.manifest.get(gone).is_none(), "{gone} published");
        }
    }
}
