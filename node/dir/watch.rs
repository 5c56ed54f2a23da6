//! Watching the origin's `dir` with inotify (through `notify`): which paths changed since the
//! last scan, which files are still open for writing, and when the whole tree must be scanned
//! again because events were lost.
//!
//! Every directory gets its own watch, added as the directory appears, so excluded
//! directories (a `.git/`) cost no watch and send no events. A directory renamed or deleted
//! drops the watches below it; one renamed in is watched whole and marked to be walked whole.
//!
//! A file counts as being written from its first write (or its creation) until it is closed
//! (`IN_CLOSE_WRITE`); the scan holds such files at their last published state, so a release
//! never carries a half-written file. A file silent for [`STALE_WRITER`] without a close is
//! published as it is (a lost event must not hold it back forever).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fs_err as fs;
use notify::event::{AccessKind, AccessMode, CreateKind, ModifyKind, RemoveKind, RenameMode};
use notify::{Event, EventKind, RecursiveMode, Watcher};
use tokio::sync::mpsc;

use super::rules::Rules;
use super::scan::Dirty;

/// A file open for writing this long without a write or a close is taken as it is.
pub const STALE_WRITER: Duration = Duration::from_secs(60);
/// Events waiting to be handled. Past it, events are dropped and the loss answered with a
/// full rescan, as when the kernel's own queue overflows: the watcher's thread is never
/// blocked on a slow consumer, since adding a watch waits on that thread.
const QUEUE: usize = 32768;

const MAX_WATCHES: &str = "/proc/sys/fs/inotify/max_user_watches";

#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error("cannot watch {0}: {1}")]
    Start(PathBuf, notify::Error),
}

/// What a watch hands to the publisher: what changed, and what is still being written.
#[derive(Debug, Default)]
pub struct Batch {
    /// `None`: scan everything (events were lost, or the tree was replaced).
    pub dirty: Option<Dirty>,
    pub writing: HashSet<String>,
}

/// The watch on one directory tree, and what it has seen since the last [`DirWatch::take`].
pub struct DirWatch {
    root: PathBuf,
    exclude: Rules,
    watcher: notify::RecommendedWatcher,
    events: mpsc::Receiver<notify::Result<Event>>,
    /// Set by the watcher's thread when it dropped an event because the queue was full.
    dropped: Arc<AtomicBool>,
    /// Directories watched, relative to `root` (`""` is `root`), with the device and inode
    /// each was watched at.
    watched: BTreeMap<String, (u64, u64)>,
    /// The same, by device and inode. The kernel keeps one watch per directory, wherever it
    /// is moved, and `notify` drops it when the path it was added for is moved away; so a
    /// directory found under a new path before its move was handled must lose its old path
    /// first, or handling that move would leave the new path unwatched.
    by_inode: HashMap<(u64, u64), String>,
    /// `root`'s device and inode when watched (a replaced `dir` has new ones).
    root_id: Option<(u64, u64)>,
    /// `root` is gone: nothing is published until it is back.
    gone: bool,
    /// The watch limit was reached: some directories are not watched.
    limited: bool,
    /// Events were lost since the last take: directories created meanwhile may lack a watch.
    overflowed: bool,
    dirty: Dirty,
    full: bool,
    /// Files open for writing, with their last write.
    writing: HashMap<String, Instant>,
    /// First and last event since the last take.
    first: Option<Instant>,
    last: Option<Instant>,
}

impl DirWatch {
    /// Watches every directory of `root` except those `exclude` names.
    pub fn start(root: &Path, exclude: Rules) -> Result<Self, WatchError> {
        let (tx, events) = mpsc::channel(QUEUE);
        let dropped = Arc::new(AtomicBool::new(false));
        let full = dropped.clone();
        let watcher = notify::recommended_watcher(move |ev| {
            // Closed only when the node stops.
            if let Err(mpsc::error::TrySendError::Full(_)) = tx.try_send(ev) {
                full.store(true, Ordering::Release);
            }
        })
        .map_err(|e| WatchError::Start(root.to_owned(), e))?;
        let mut w = DirWatch {
            root: root.to_owned(),
            exclude,
            watcher,
            events,
            dropped,
            watched: BTreeMap::new(),
            by_inode: HashMap::new(),
            root_id: None,
            gone: false,
            limited: false,
            overflowed: false,
            dirty: Dirty::default(),
            full: false,
            writing: HashMap::new(),
            first: None,
            last: None,
        };
        match fs::metadata(root) {
            Ok(m) => {
                w.root_id = Some((m.dev(), m.ino()));
                if let Err(e) = w.watch_tree("", false) {
                    return Err(WatchError::Start(root.to_owned(), e));
                }
            }
            Err(_) => w.gone = true,
        }
        Ok(w)
    }

    /// How many directories are watched.
    pub fn watches(&self) -> usize {
        self.watched.len()
    }

    /// Whether the watch limit left some directories unwatched (so the caller rescans the
    /// whole tree from time to time).
    pub fn limited(&self) -> bool {
        self.limited
    }

    /// The next event from the kernel; `None` if the watcher stopped.
    pub async fn recv(&mut self) -> Option<notify::Result<Event>> {
        self.events.recv().await
    }

    /// When the changes seen so far should be scanned: once `settle` passed without an event,
    /// or `max_delay` after the first one; or when a file open for writing turns stale (its
    /// close may have been lost). `None` while nothing is pending.
    pub fn due(&self, settle: Duration, max_delay: Duration) -> Option<Instant> {
        if self.gone {
            return None;
        }
        let changes = match (self.first, self.last) {
            (Some(first), Some(last)) => Some((last + settle).min(first + max_delay)),
            _ => None,
        };
        let stale = self.writing.values().min().map(|t| *t + STALE_WRITER);
        changes.into_iter().chain(stale).min()
    }

    /// Takes what changed since the last take.
    pub fn take(&mut self) -> Batch {
        if std::mem::take(&mut self.overflowed) {
            if let Err(e) = self.watch_tree("", false) {
                tracing::warn!(dir = %self.root.display(), "cannot watch: {e}");
            }
            // Events queued before the loss and handled after it may have marked files whose
            // close was lost: the full scan checks them itself.
            self.writing.clear();
        }
        let now = Instant::now();
        let stale: Vec<String> = self
            .writing
            .iter()
            .filter(|(_, t)| now.duration_since(**t) >= STALE_WRITER)
            .map(|(p, _)| p.clone())
            .collect();
        for p in stale {
            tracing::warn!(path = %p, "open for writing but silent for {} s: publishing it as it is", STALE_WRITER.as_secs());
            self.writing.remove(&p);
            self.dirty.add(&p);
        }
        self.first = None;
        self.last = None;
        let dirty = std::mem::take(&mut self.dirty);
        Batch {
            dirty: (!std::mem::take(&mut self.full)).then_some(dirty),
            writing: self.writing.keys().cloned().collect(),
        }
    }

    /// Marks paths to scan again (a scan found them changing): each is scanned once it
    /// settles, unless it is being written (its close will mark it).
    pub fn again(&mut self, paths: impl IntoIterator<Item = String>) {
        for p in paths {
            if !self.writing.contains_key(&p) {
                self.dirty.add(&p);
                self.touch();
            }
        }
    }

    /// Marks the whole tree to be scanned again.
    pub fn rescan(&mut self) {
        self.full = true;
        self.touch();
    }

    fn touch(&mut self) {
        let now = Instant::now();
        self.first.get_or_insert(now);
        self.last = Some(now);
    }

    /// Checks that `root` is still the directory watched: a deleted one stops publishing
    /// until it is back; a replaced one (a new inode at the same path) is watched anew and
    /// scanned whole.
    pub fn check_root(&mut self) {
        let id = fs::metadata(&self.root).map(|m| (m.dev(), m.ino())).ok();
        match id {
            None if !self.gone => {
                tracing::error!(
                    dir = %self.root.display(),
                    "the watched directory is gone: still serving the last release; publishing resumes when it is back"
                );
                self.gone = true;
                self.first = None;
                self.last = None;
            }
            None => {}
            Some(id) if self.gone || self.root_id != Some(id) => {
                tracing::warn!(dir = %self.root.display(), "the watched directory was replaced: watching the new one and scanning it whole");
                self.unwatch_below("");
                self.writing.clear();
                self.dirty = Dirty::default();
                self.gone = false;
                self.root_id = Some(id);
                if let Err(e) = self.watch_tree("", false) {
                    tracing::warn!(dir = %self.root.display(), "cannot watch: {e}");
                }
                self.rescan();
            }
            Some(_) => {}
        }
    }

    /// Takes in one event (or watch error) from [`DirWatch::recv`].
    pub fn note(&mut self, ev: notify::Result<Event>) {
        let ev = match ev {
            Ok(ev) => ev,
            Err(e) => {
                if matches!(e.kind, notify::ErrorKind::MaxFilesWatch) {
                    self.limit_reached();
                } else {
                    tracing::warn!(dir = %self.root.display(), "watch error: {e}; scanning the whole tree");
                }
                self.rescan();
                return;
            }
        };
        if ev.need_rescan() {
            self.lost(
                "inotify dropped events (its queue overflowed; sysctl fs.inotify.max_queued_events)",
            );
            return;
        }
        if self.dropped.swap(false, Ordering::Acquire) {
            self.lost("events came faster than they were handled and some were dropped");
        }
        let now = Instant::now();
        for path in &ev.paths {
            let Some(rel) = self.rel(path) else { continue };
            if rel.is_empty() {
                // The root itself was deleted or moved.
                if matches!(
                    ev.kind,
                    EventKind::Remove(_) | EventKind::Modify(ModifyKind::Name(_))
                ) {
                    self.check_root();
                }
                continue;
            }
            let is_dir = match ev.kind {
                EventKind::Create(CreateKind::Folder) | EventKind::Remove(RemoveKind::Folder) => {
                    true
                }
                EventKind::Create(CreateKind::File) | EventKind::Remove(RemoveKind::File) => false,
                _ => fs::symlink_metadata(path).is_ok_and(|m| m.is_dir()),
            };
            if self.exclude.covers(&rel, is_dir) {
                continue;
            }
            match ev.kind {
                // Reads (ours included) change nothing.
                EventKind::Access(AccessKind::Close(AccessMode::Write)) => {
                    self.writing.remove(&rel);
                }
                EventKind::Access(_) => continue,
                EventKind::Create(_) => {
                    if is_dir {
                        if let Err(e) = self.watch_tree(&rel, true) {
                            tracing::warn!("cannot watch {}: {e}", path.display());
                        }
                    } else if fs::symlink_metadata(path)
                        .is_ok_and(|m| m.is_file() && m.nlink() == 1)
                    {
                        // Created by open(): written until closed (a hard link is not).
                        self.writing.insert(rel.clone(), now);
                    }
                }
                EventKind::Modify(ModifyKind::Data(_)) => {
                    self.writing.insert(rel.clone(), now);
                }
                EventKind::Modify(ModifyKind::Name(RenameMode::Both)) => continue,
                EventKind::Modify(ModifyKind::Name(RenameMode::To)) if is_dir => {
                    if let Err(e) = self.watch_tree(&rel, true) {
                        tracing::warn!("cannot watch {}: {e}", path.display());
                    }
                }
                EventKind::Modify(ModifyKind::Name(RenameMode::To)) => {}
                EventKind::Modify(ModifyKind::Name(_)) | EventKind::Remove(_) => {
                    self.writing.remove(&rel);
                    if self.watched.contains_key(&rel) {
                        self.unwatch_below(&rel);
                        // A directory may stand there again already (moved back, or made
                        // anew): it is watched afresh, as `notify` dropped the old watch.
                        if is_dir {
                            if let Err(e) = self.watch_tree(&rel, false) {
                                tracing::warn!("cannot watch {}: {e}", path.display());
                            }
                        }
                    }
                }
                _ => {}
            }
            self.dirty.add(&rel);
            self.touch();
        }
    }

    /// Events were lost: the whole tree is scanned, and watched again at the next take.
    fn lost(&mut self, why: &str) {
        if !self.overflowed {
            tracing::warn!(dir = %self.root.display(), "{why}: scanning the whole tree");
        }
        self.overflowed = true;
        // Closes may be among the lost events: what was being written is checked by the scan
        // itself (a file changing while read is held back).
        self.writing.clear();
        self.rescan();
    }

    fn rel(&self, path: &Path) -> Option<String> {
        let rel = path.strip_prefix(&self.root).ok()?;
        rel.to_str().map(|s| s.to_owned())
    }

    fn abs(&self, rel: &str) -> PathBuf {
        if rel.is_empty() {
            self.root.clone()
        } else {
            self.root.join(rel)
        }
    }

    /// Watches directory `rel` and every directory below it that is not excluded. `fresh` (a
    /// directory that appeared) adds again the watches already held there and drops those
    /// whose directories are gone. A watch held on the same directory is never dropped
    /// first: its events not yet read would be lost with it (a new directory's listing
    /// watches the directories below it before their own `Create` events are handled). The
    /// watch limit is reported (once) rather than returned: the tree is then rescanned whole.
    fn watch_tree(&mut self, rel: &str, fresh: bool) -> Result<(), notify::Error> {
        let mut stale: HashSet<String> = if fresh {
            self.watched_below(rel).into_iter().collect()
        } else {
            HashSet::new()
        };
        let mut stack = vec![rel.to_owned()];
        while let Some(rel) = stack.pop() {
            let abs = self.abs(&rel);
            // `dir` itself may be a symlink; nothing below it is followed.
            let meta = if rel.is_empty() {
                fs::metadata(&abs)
            } else {
                fs::symlink_metadata(&abs)
            };
            // Gone already (a temporary directory): its removal is an event too.
            let Ok(meta) = meta else { continue };
            if !meta.is_dir() {
                continue;
            }
            let id = (meta.dev(), meta.ino());
            stale.remove(&rel);
            // The kernel keeps one watch per directory: adding it again returns the same one,
            // with its queued events; a watch the kernel dropped (its directory deleted, the
            // inode number reused) is made anew.
            let held = self.watched.get(&rel) == Some(&id);
            if fresh || !held {
                if !held {
                    if let Some(old) = self.by_inode.get(&id).filter(|old| **old != rel).cloned() {
                        // Moved here, and the move not handled yet.
                        self.unwatch_below(&old);
                    }
                    if self.watched.contains_key(&rel) {
                        // Another directory stood here.
                        self.unwatch_below(&rel);
                    }
                }
                match self.watcher.watch(&abs, RecursiveMode::NonRecursive) {
                    Ok(()) => {
                        self.watched.insert(rel.clone(), id);
                        self.by_inode.insert(id, rel.clone());
                    }
                    Err(e) if matches!(e.kind, notify::ErrorKind::MaxFilesWatch) => {
                        self.limit_reached();
                        return Ok(());
                    }
                    Err(e) if matches!(e.kind, notify::ErrorKind::PathNotFound) => continue,
                    Err(e) if rel.is_empty() => return Err(e),
                    Err(e) => {
                        tracing::warn!("cannot watch {}: {e}", abs.display());
                        continue;
                    }
                }
            }
            let Ok(list) = fs::read_dir(&abs) else {
                continue;
            };
            for item in list.flatten() {
                let Ok(name) = item.file_name().into_string() else {
                    continue;
                };
                // Not followed into symlinks: the scan does not follow them either.
                if !item.file_type().is_ok_and(|t| t.is_dir()) {
                    continue;
                }
                let child = if rel.is_empty() {
                    name
                } else {
                    format!("{rel}/{name}")
                };
                if !self.exclude.matches(&child, true) {
                    stack.push(child);
                }
            }
        }
        for p in stale {
            self.unwatch(&p);
        }
        Ok(())
    }

    /// Drops the watches on `rel` and below (renamed away, deleted or replaced; `""` is all).
    fn unwatch_below(&mut self, rel: &str) {
        for p in self.watched_below(rel) {
            self.unwatch(&p);
        }
    }

    /// The directories watched at `rel` and below (`""` is all).
    fn watched_below(&self, rel: &str) -> Vec<String> {
        if rel.is_empty() {
            self.watched.keys().cloned().collect()
        } else {
            let prefix = format!("{rel}/");
            self.watched
                .get_key_value(rel)
                .map(|(k, _)| k)
                .into_iter()
                .chain(
                    self.watched
                        .range(prefix.clone()..)
                        .map(|(k, _)| k)
                        .take_while(|p| p.starts_with(&prefix)),
                )
                .cloned()
                .collect()
        }
    }

    fn unwatch(&mut self, rel: &str) {
        let _ = self.watcher.unwatch(&self.abs(rel));
        if let Some(id) = self.watched.remove(rel) {
            if self.by_inode.get(&id).map(String::as_str) == Some(rel) {
                self.by_inode.remove(&id);
            }
        }
    }

    fn limit_reached(&mut self) {
        if self.limited {
            return;
        }
        self.limited = true;
        let limit = fs::read_to_string(MAX_WATCHES)
            .map(|s| s.trim().to_owned())
            .unwrap_or_else(|_| "?".into());
        tracing::error!(
            dir = %self.root.display(),
            watched = self.watched.len(),
            "the inotify watch limit is reached (sysctl fs.inotify.max_user_watches = {limit}): rescanning the whole tree instead of missing changes; raise it with `sysctl fs.inotify.max_user_watches=<more>`"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::Store;
    use crate::dir::scan::{fingerprint_with, scan_with, Scope, StatCache};
    use crate::testkit::churn::{churn, Rng};

    /// Feeds the watch every event until none came for a while.
    async fn drain(w: &mut DirWatch) {
        while let Ok(Some(ev)) = tokio::time::timeout(Duration::from_millis(400), w.recv()).await {
            w.note(ev);
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_watched_scan_equals_a_full_scan_after_random_changes() {
        let t = tempfile::tempdir().unwrap();
        let src = t.path().join("src");
        let store = Store::open(&t.path().join("store")).unwrap();
        let exclude = Rules::new(&["*.swp".into(), ".git/".into(), "/info/".into()]).unwrap();
        for d in ["a/b", "c", ".git/objects", "info"] {
            fs::create_dir_all(src.join(d)).unwrap();
        }
        for f in [
            "a/1.txt",
            "a/b/2.txt",
            "c/3.txt",
            ".git/HEAD",
            "info/x",
            "c/x.swp",
        ] {
            fs::write(src.join(f), f).unwrap();
        }
        let mut w = DirWatch::start(&src, exclude.clone()).unwrap();
        assert_eq!(w.watches(), 4, "root, a, a/b, c: not .git or info");
        let full = |cache| {
            let scope = Scope {
                exclude: Some(&exclude),
                ..Scope::default()
            };
            scan_with(&src, &store, cache, scope).unwrap()
        };
        let first = full(StatCache::default());
        let (mut last, mut cache) = (first.manifest, first.cache);
        let mut rng = Rng::new(7);
        for round in 0..25 {
            let ops = churn(&src, &mut rng, 1 + round % 6);
            // Noise the rules keep out must not matter.
            fs::write(src.join(format!("{round}.swp")), "swap").unwrap();
            drain(&mut w).await;
            let batch = w.take();
            assert!(batch.writing.is_empty(), "{:?}", batch.writing);
            let dirty = batch.dirty.expect("no events were lost");
            let scope = Scope {
                exclude: Some(&exclude),
                prev: Some(&last),
                dirty: Some(&dirty),
                writing: Some(&batch.writing),
                ..Scope::default()
            };
            let watched = scan_with(&src, &store, cache, scope).unwrap();
            let want = fingerprint_with(&src, Some(&exclude)).unwrap();
            assert_eq!(
                watched.manifest.entries(),
                want.entries(),
                "round {round} after {ops:#?} (dirty {dirty:?})"
            );
            assert!(watched.unsettled.is_empty());
            // Only what changed was listed again, not every directory.
            let dirs = want
                .entries()
                .iter()
                .filter(|e| matches!(e.kind, crate::tree::EntryKind::Dir))
                .count() as u64;
            assert!(watched.stats.listed <= dirs + 1);
            (last, cache) = (watched.manifest, watched.cache);
        }
        assert!(last.file_count() > 0);
        // A full scan with the cache the watched scans kept reads nothing again.
        let again = full(cache);
        assert_eq!(again.manifest.root_digest(), last.root_digest());
        assert_eq!(again.stats.hashed, 0, "{:?}", again.stats);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_file_open_for_writing_is_held_at_its_last_state() {
        use std::io::Write;
        let t = tempfile::tempdir().unwrap();
        let src = t.path().join("src");
        let store = Store::open(&t.path().join("store")).unwrap();
        fs::create_dir_all(&src).unwrap();
        fs::write(src.join("big.bin"), "old").unwrap();
        let mut w = DirWatch::start(&src, Rules::none()).unwrap();
        let first = scan_with(&src, &store, StatCache::default(), Scope::default()).unwrap();
        let mut f = fs::File::create(src.join("big.bin")).unwrap();
        f.write_all(b"half of the new").unwrap();
        let mut g = fs::File::create(src.join("new.bin")).unwrap();
        g.write_all(b"half").unwrap();
        fs::write(src.join("done.txt"), "done").unwrap();
        drain(&mut w).await;
        let batch = w.take();
        let mut writing: Vec<_> = batch.writing.iter().cloned().collect();
        writing.sort();
        assert_eq!(writing, ["big.bin", "new.bin"]);
        // Nothing else pending, the writers still hold a scan due: when they turn stale (a
        // lost close must not hold them back for ever).
        let due = w
            .due(Duration::from_millis(100), Duration::from_secs(1))
            .expect("a scan is due for the open files");
        let left = due.saturating_duration_since(Instant::now());
        assert!(
            left > STALE_WRITER - Duration::from_secs(10) && left <= STALE_WRITER,
            "{left:?}"
        );
        let scope = Scope {
            prev: Some(&first.manifest),
            dirty: batch.dirty.as_ref(),
            writing: Some(&batch.writing),
            ..Scope::default()
        };
        let s = scan_with(&src, &store, first.cache, scope).unwrap();
        // The old big.bin, no new.bin yet, and the finished file.
        assert_eq!(
            s.manifest.get("big.bin").unwrap(),
            first.manifest.get("big.bin").unwrap()
        );
        assert!(s.manifest.get("new.bin").is_none());
        assert!(s.manifest.get("done.txt").is_some());
        // Closing them marks them again, no longer being written.
        f.write_all(b" body").unwrap();
        drop((f, g));
        drain(&mut w).await;
        let batch = w.take();
        assert!(batch.writing.is_empty());
        let dirty = batch.dirty.unwrap();
        assert!(
            dirty.contains("big.bin") && dirty.contains("new.bin"),
            "{dirty:?}"
        );
    }

    /// An unpacked archive: directories made and filled while the consumer is busy elsewhere
    /// (a publisher scanning), so more events come than the queue holds. Handling them must
    /// not stall (a new directory's watch is added by the watcher's thread, which must never
    /// be blocked on a full queue), the loss must be said (a full scan follows), and what
    /// comes after must be seen: files in the new directories, closed or not.
    #[test]
    fn a_full_queue_neither_stalls_nor_hides_later_changes() {
        let t = tempfile::tempdir().unwrap();
        let src = t.path().join("src");
        fs::create_dir_all(&src).unwrap();
        let (done, finished) = std::sync::mpsc::channel();
        let consumer = {
            let src = src.clone();
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_time()
                    .build()
                    .unwrap();
                let outcome = rt.block_on(async {
                    let path = |i: usize| format!("d{}/e{}/f{i}.html", i % 30, i % 7);
                    for i in 0..210 {
                        fs::create_dir_all(src.join(path(i)).parent().unwrap()).unwrap();
                    }
                    let mut w = DirWatch::start(&src, Rules::none()).unwrap();
                    // Several events a file (create, open, write, close): past the queue;
                    // new directories among them.
                    for i in 0..QUEUE {
                        fs::write(src.join(path(i)), format!("page {i}\n")).unwrap();
                        if i % 100 == 0 {
                            fs::create_dir_all(src.join(format!("new{i}/sub"))).unwrap();
                            fs::write(src.join(format!("new{i}/sub/f")), "x").unwrap();
                        }
                    }
                    drain(&mut w).await;
                    let first = w.take();
                    // Later changes, in directories made during the flood.
                    for i in 0..210 {
                        fs::write(src.join(path(i)), "changed").unwrap();
                    }
                    for i in (0..QUEUE).step_by(100) {
                        fs::write(src.join(format!("new{i}/sub/f")), "changed").unwrap();
                    }
                    drain(&mut w).await;
                    (first.dirty.is_none(), w.take())
                });
                let _ = done.send(outcome);
            })
        };
        let (lost_said, later) = finished
            .recv_timeout(Duration::from_secs(60))
            .expect("the watch stalled: handling events stopped");
        consumer.join().unwrap();
        assert!(
            lost_said,
            "events past the queue were lost without a full scan"
        );
        assert!(later.writing.is_empty(), "{:?}", later.writing);
        let dirty = later.dirty.expect("nothing lost after the flood");
        let missed: Vec<usize> = (0..210)
            .filter(|&i| !dirty.contains(&format!("d{}/e{}/f{i}.html", i % 30, i % 7)))
            .collect();
        assert!(missed.is_empty(), "changes not seen: {missed:?}");
        let missed: Vec<usize> = (0..QUEUE)
            .step_by(100)
            .filter(|i| !dirty.contains(&format!("new{i}/sub/f")))
            .collect();
        assert!(
            missed.is_empty(),
            "changes not seen in new directories: {missed:?}"
        );
    }

    /// A directory moved into a directory that is new itself: the new one's watch may list
    /// it before the move's own event is handled (both then name one kernel watch). Changes
    /// inside it later must still be seen.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_directory_moved_into_a_new_one_stays_watched() {
        let t = tempfile::tempdir().unwrap();
        let src = t.path().join("src");
        const N: usize = 200;
        for i in 0..N {
            fs::create_dir_all(src.join(format!("old/b{i}/sub"))).unwrap();
        }
        let mut w = DirWatch::start(&src, Rules::none()).unwrap();
        let mover = {
            let src = src.clone();
            std::thread::spawn(move || {
                for i in 0..N {
                    fs::create_dir(src.join(format!("a{i}"))).unwrap();
                    fs::rename(src.join(format!("old/b{i}")), src.join(format!("a{i}/c"))).unwrap();
                    if i % 10 == 0 {
                        std::thread::sleep(Duration::from_millis(1));
                    }
                }
            })
        };
        while !mover.is_finished() {
            if let Ok(Some(ev)) = tokio::time::timeout(Duration::from_millis(5), w.recv()).await {
                w.note(ev);
            }
        }
        mover.join().unwrap();
        drain(&mut w).await;
        w.take();
        for i in 0..N {
            fs::write(src.join(format!("a{i}/c/f")), "x").unwrap();
            fs::write(src.join(format!("a{i}/c/sub/g")), "y").unwrap();
        }
        drain(&mut w).await;
        let dirty = w.take().dirty.unwrap();
        let lost: Vec<usize> = (0..N)
            .filter(|i| {
                !dirty.contains(&format!("a{i}/c/f")) || !dirty.contains(&format!("a{i}/c/sub/g"))
            })
            .collect();
        assert!(
            lost.is_empty(),
            "changes lost in {} of {N} moved directories: {lost:?}",
            lost.len()
        );
    }
}
