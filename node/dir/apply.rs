//! Applying a verified release to the served directory, like `rsync -a --delete`.
//!
//! Every body comes from the store (so it was verified), is copied under a temporary hidden
//! name in the destination directory and renamed over the real name: a reader sees the old
//! file or the new one, never a partial one. Entries are processed in manifest order, parents
//! first, and each parent is made a real directory (a symlink or file in its way is removed).
//! Then anything the manifest does not list is deleted, and directory modes are set deepest
//! first. Every change goes through directory descriptors opened without following symlinks
//! ([`Beneath`]), so nothing is ever written, deleted or chmod'ed through a symlink, even one
//! swapped in while the apply runs.

use std::fs::{FileTimes, Metadata, Permissions};
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use std::collections::HashSet;

use fs_err as fs;

use super::beneath::Beneath;
use super::rules::Rules;
use crate::data::{short_of_room, Stage, Store};
use crate::tree::hash::{groups, hash_file, hash_together, ToHash};
use crate::tree::{runs_by_body, sort_by_body, Blake3, Body, Entry, EntryKind, Manifest};

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// A file in `dir` could not be read or written (the message names it).
    #[error(transparent)]
    Io(#[from] io::Error),
    #[error("body {0} for {1:?} is not in the store")]
    MissingBody(String, String),
    /// Found before anything was touched: these bodies must be fetched first.
    #[error("{} bodies of this release are neither in the store nor in place", .0.len())]
    MissingBodies(Vec<Blake3>),
    #[error("refused by the check hook: {0}")]
    Refused(String),
    #[error("{path}: No space left for this release: it needs {need} bytes, {free} are free")]
    NoSpace { path: PathBuf, need: u64, free: u64 },
}

/// What an apply changed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ApplyStats {
    pub written: u64,
    /// Files hard-linked from the previous release directory (atomic mode).
    pub linked: u64,
    pub unchanged: u64,
    /// Files whose body was already in place (the previous release had it there too): only
    /// their mode and mtime were set, nothing written (in place).
    pub touched: u64,
    pub deleted: u64,
}

static TMP_SEQ: AtomicU64 = AtomicU64::new(0);

pub(super) fn tmp_name(parent: &Path) -> PathBuf {
    parent.join(tmp_base())
}

fn tmp_base() -> String {
    let n = TMP_SEQ.fetch_add(1, Ordering::Relaxed);
    format!(".cascade-tmp-{}-{n}", std::process::id())
}

/// A temporary name next to `rel` (relative to the tree's root).
fn tmp_beside(rel: &str) -> String {
    match rel.rsplit_once('/') {
        Some((parent, _)) => format!("{parent}/{}", tmp_base()),
        None => tmp_base(),
    }
}

/// Whether a name is one of our temporary files (left over by a crash).
fn is_tmp(name: &str) -> bool {
    name.starts_with(".cascade-tmp-")
}

/// Makes `dir` hold exactly `manifest`, reading bodies from `store`. `old` is the release
/// applied before: subtrees identical in both (equal digests) are not even looked at, so a
/// small change to a large tree costs little; everything else is checked on disk (same MD5,
/// mode, size and mtime is skipped). Drift inside an unchanged subtree (a file edited by
/// hand) is not seen here but by [`repair`], which a node runs when it starts.
pub fn apply(
    dir: &Path,
    manifest: &Manifest,
    old: Option<&Manifest>,
    store: &Store,
) -> Result<ApplyStats, ApplyError> {
    let how = How {
        skip_unchanged: old.is_some(),
        ..How::default()
    };
    apply_with(dir, manifest, old, store, how)
}

/// Makes `dir` hold exactly `manifest` (but what `keep` names), checking every entry on disk
/// (after a restart).
pub fn repair(
    dir: &Path,
    manifest: &Manifest,
    store: &Store,
    keep: Option<&Rules>,
) -> Result<ApplyStats, ApplyError> {
    let how = How {
        keep,
        ..How::default()
    };
    apply_with(dir, manifest, Some(manifest), store, how)
}

/// How an apply may take its bodies, and what it must leave alone or redo.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct How<'a> {
    /// Paths this node owns (`keep`): never written, replaced or deleted, whatever the
    /// release says about them.
    pub keep: Option<&'a Rules>,
    /// Files to write again even where they pass the quick check (a verify found them
    /// changed inside).
    pub rewrite: Option<&'a HashSet<String>>,
    /// A file that this tree of `old` holds identically (same MD5, size, mode and mtime) is
    /// hard-linked from there instead of copied from the store (atomic mode).
    pub link_from: Option<&'a Path>,
    /// Subtrees whose digest equals `old`'s are not looked at.
    pub skip_unchanged: bool,
    /// Move bodies out of the store into `dir` instead of copying them (a node that serves
    /// nobody: its `dir` is its only copy). A body used by several paths is copied for all
    /// but the last. Falls back to copying across filesystems.
    pub take: bool,
    /// A file `old` had at the same path with the same body, still on disk as `old` left it,
    /// only has its mode and mtime set (in place; never in a release directory, whose files
    /// are hard links to the previous release's).
    pub touch: bool,
    /// Files written for this apply below a stage at their own paths (checked, with their
    /// modes and times): a new directory of the stage is renamed into `dir` whole, a staged
    /// file elsewhere on its own. Their bodies are not in the store.
    pub stage: Option<&'a Stage>,
}

impl How<'_> {
    /// Whether file `i` of the manifest applied was written to the stage.
    fn staged(&self, i: usize) -> bool {
        self.stage.is_some_and(|s| s.staged(i as u32))
    }
}

/// Whether `old` has entry `e` at the same path with the same content, type and mode.
fn same_as_old(old: Option<&Manifest>, e: &Entry) -> bool {
    old.and_then(|o| o.get(&e.path))
        .is_some_and(|oe| oe.kind == e.kind && oe.mode == e.mode)
}

/// The entry `old` has at `e`'s path, if it is a file with `e`'s body: then `e` differs from
/// it only in mode or mtime (an upgrade that rewrote a file with the same bytes).
fn same_body_in_old<'o>(old: Option<&'o Manifest>, e: &Entry) -> Option<&'o Entry> {
    let oe = old?.get(&e.path)?;
    match (&oe.kind, &e.kind) {
        (
            EntryKind::File {
                blake3: a, size: x, ..
            },
            EntryKind::File {
                blake3: b, size: y, ..
            },
        ) if a == b && x == y => Some(oe),
        _ => None,
    }
}

/// Whether the file on disk (`current`) is what `old` left at `e`'s path with `e`'s body:
/// then it needs no body, only its mode or mtime set.
fn same_body_in_place(old: Option<&Manifest>, e: &Entry, current: Option<&Metadata>) -> bool {
    same_body_in_old(old, e).is_some_and(|oe| current.is_some_and(|m| looks_right(m, oe)))
}

/// Whether `dir` (read through `probe`) already holds what file entry `e` needs, so that its
/// body need not be fetched: with `quick`, a file that passes the quick check (see
/// [`held_in_place`]); with `old` (an in-place apply over it), the file `old` left there
/// with `e`'s body (see [`same_body_in_place`]). One `lstat` at most, none where neither
/// could hold.
pub fn body_in_place(probe: &mut Probe, e: &Entry, quick: bool, old: Option<&Manifest>) -> bool {
    let in_old = same_body_in_old(old, e);
    if !quick && in_old.is_none() {
        return false;
    }
    probe.lstat(&e.path).is_some_and(|m| {
        (quick && looks_right(&m, e)) || in_old.is_some_and(|oe| looks_right(&m, oe))
    })
}

/// `lstat`s the files of one tree, asked in manifest order, skipping those in a directory
/// found missing: none of its files can be there, so a first sync into an empty `dir` costs
/// one `lstat` per directory instead of one per file (the files of a directory come
/// together in manifest order). A directory found to be a symlink (when a file below it is
/// not there) counts as missing: an apply replaces it, with whatever is below.
#[derive(Debug)]
pub struct Probe<'a> {
    dir: &'a Path,
    /// The last directory (relative) found missing.
    missing: Option<String>,
}

impl<'a> Probe<'a> {
    pub fn new(dir: &'a Path) -> Self {
        Probe { dir, missing: None }
    }

    /// `rel`'s metadata, not following a symlink at `rel`; `None` if there is nothing there.
    pub fn lstat(&mut self, rel: &str) -> Option<Metadata> {
        let parent = rel.rsplit_once('/').map_or("", |(p, _)| p);
        let below_missing = self.missing.as_deref().is_some_and(|m| {
            parent
                .strip_prefix(m)
                .is_some_and(|r| r.is_empty() || r.starts_with('/'))
        });
        if below_missing {
            return None;
        }
        match fs::symlink_metadata(self.dir.join(rel)) {
            Ok(m) => Some(m),
            Err(e) => {
                let parent_gone = e.kind() == io::ErrorKind::NotFound
                    && !parent.is_empty()
                    && !fs::symlink_metadata(self.dir.join(parent)).is_ok_and(|m| m.is_dir());
                if parent_gone {
                    self.missing = Some(parent.to_owned());
                }
                None
            }
        }
    }
}

/// Whether the file on disk has the manifest's size, mtime and mode (rsync's quick check).
fn looks_right(m: &Metadata, e: &Entry) -> bool {
    match e.kind {
        EntryKind::File { size, mtime, .. } => {
            m.is_file()
                && m.len() == size
                && m.mtime() == mtime
                && m.permissions().mode() & 0o7777 == e.mode
        }
        _ => false,
    }
}

/// Whether `dir` already holds entry `e`, a file, by the quick check (size, mtime, mode). For
/// a node whose `dir` holds the only copy of a body, this stands in for the store until the
/// apply confirms it by its digests (MD5 and BLAKE3).
pub fn held_in_place(dir: &Path, e: &Entry) -> bool {
    fs::symlink_metadata(dir.join(&e.path)).is_ok_and(|m| looks_right(&m, e))
}

/// Calls `visit` with the index of each entry an apply must look at: all of them, except
/// the inside of subtrees identical in `skip` (whose files are counted in the result).
fn walk(
    manifest: &Manifest,
    skip: Option<&Manifest>,
    keep: Option<&Rules>,
    mut visit: impl FnMut(usize) -> Result<(), ApplyError>,
) -> Result<u64, ApplyError> {
    let entries = manifest.entries();
    let mut skipped = 0;
    let mut i = 0;
    while i < entries.len() {
        if kept(keep, &entries[i]) {
            // The node's own: the release's version of it is not applied.
            i = manifest.subtree_end(i);
            continue;
        }
        if let Some(old) = skip {
            if manifest.unchanged_in(i, old) {
                let end = manifest.subtree_end(i);
                skipped += entries[i..end]
                    .iter()
                    .filter(|e| matches!(e.kind, EntryKind::File { .. }))
                    .count() as u64;
                i = end;
                continue;
            }
        }
        visit(i)?;
        i += 1;
    }
    Ok(skipped)
}

/// Whether `keep` names entry `e` (its parents were checked on the way down).
fn kept(keep: Option<&Rules>, e: &Entry) -> bool {
    keep.is_some_and(|k| k.matches(&e.path, matches!(e.kind, EntryKind::Dir)))
}

/// The release's paths that `keep` names (the node keeps its own there), top-most only.
pub fn kept_conflicts(manifest: &Manifest, keep: &Rules) -> Vec<String> {
    let mut out = Vec::new();
    if keep.is_empty() {
        return out;
    }
    walk_kept(manifest, keep, |e| out.push(e.path.clone()));
    out
}

fn walk_kept(manifest: &Manifest, keep: &Rules, mut f: impl FnMut(&Entry)) {
    let entries = manifest.entries();
    let mut i = 0;
    while i < entries.len() {
        if kept(Some(keep), &entries[i]) {
            f(&entries[i]);
            i = manifest.subtree_end(i);
        } else {
            i += 1;
        }
    }
}

/// Before anything is touched: the bodies the apply will need that the store lacks, and
/// the files already in place whose body the store lacks (confirmed by their MD5, which a
/// node whose `dir` is its only copy relies on after an interrupted apply).
fn check_bodies(
    dir: &Path,
    manifest: &Manifest,
    old: Option<&Manifest>,
    store: &Store,
    how: How,
) -> Result<std::collections::HashSet<usize>, ApplyError> {
    let mut in_place = std::collections::HashSet::new();
    let mut missing = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let entries = manifest.entries();
    let held = store.has_many();
    walk(
        manifest,
        old.filter(|_| how.skip_unchanged),
        how.keep,
        |i| {
            let e = &entries[i];
            let EntryKind::File { md5, blake3, .. } = &e.kind else {
                return Ok(());
            };
            if how.staged(i) {
                return Ok(());
            }
            let forced = how.rewrite.is_some_and(|r| r.contains(&e.path));
            if held.has(blake3)
                || how
                    .link_from
                    .is_some_and(|from| fs::symlink_metadata(from.join(&e.path)).is_ok())
            {
                return Ok(());
            }
            let path = dir.join(&e.path);
            let current = fs::symlink_metadata(&path).ok();
            // Only its mode or mtime changes: no body needed.
            if how.touch && !forced && same_body_in_place(old, e, current.as_ref()) {
                return Ok(());
            }
            let looks = current.as_ref().is_some_and(|m| looks_right(m, e));
            // Left alone by the apply (as rsync's quick check would): no body needed.
            if looks && same_as_old(old, e) && !forced {
                return Ok(());
            }
            if looks
                && !forced
                && hash_file(&path, false).is_ok_and(|got| (got.md5, got.blake3) == (*md5, *blake3))
            {
                in_place.insert(i);
            } else if seen.insert(*blake3) {
                missing.push(*blake3);
            }
            Ok(())
        },
    )?;
    if missing.is_empty() {
        Ok(in_place)
    } else {
        Err(ApplyError::MissingBodies(missing))
    }
}

pub(super) fn apply_with(
    dir: &Path,
    manifest: &Manifest,
    old: Option<&Manifest>,
    store: &Store,
    how: How,
) -> Result<ApplyStats, ApplyError> {
    fs::create_dir_all(dir)?;
    let tree = Beneath::open(dir)?;
    let skip = old.filter(|_| how.skip_unchanged);
    let in_place = check_bodies(dir, manifest, old, store, how)?;
    // Moving only helps within one filesystem.
    let take = how.take && same_filesystem(store.objects(), dir);
    check_space(dir, manifest, old, how, take)?;
    let rewrite = |e: &Entry| how.rewrite.is_some_and(|r| r.contains(&e.path));
    let entries = manifest.entries();
    let mut stats = ApplyStats::default();
    // Files are written once the walk has made every directory, on several threads; bodies
    // moved out of the store go last, after every copy of them was made.
    let mut jobs = Vec::new();
    // Directories this apply made: nothing is in them but what it puts there, so their
    // entries need no `lstat` (a first sync of 100,000 files saves as many).
    let mut made: HashSet<&str> = HashSet::new();
    // Entries below this index are inside a staged directory renamed into `dir` whole.
    let mut moved_until = 0;
    let skipped = walk(manifest, skip, how.keep, |i| {
        let e = &entries[i];
        if i < moved_until {
            // Every directory of a staged one was made in the stage; its staged files are
            // in place, the rest is written below as anywhere else.
            match &e.kind {
                EntryKind::Dir => {
                    made.insert(&e.path);
                    return Ok(());
                }
                EntryKind::File { .. } if how.staged(i) => {
                    stats.written += 1;
                    return Ok(());
                }
                _ => {}
            }
        }
        let path = dir.join(&e.path);
        let parent = e.path.rsplit_once('/').map_or("", |(p, _)| p);
        let current = match made.contains(parent) {
            true => None,
            false => fs::symlink_metadata(&path).ok(),
        };
        let dir_in_way = current.as_ref().is_some_and(|m| m.is_dir());
        match &e.kind {
            EntryKind::Dir => {
                if current.as_ref().is_some_and(|m| m.is_dir()) {
                    // Keep the directory writable while we fill it; its mode is set at the end.
                    return Ok(());
                }
                if current.is_some() {
                    tree.remove(&e.path)?;
                }
                // A new directory built whole in the stage goes in with one rename.
                let stage = how.stage.filter(|s| s.is_top(&e.path));
                match stage {
                    Some(s) if tree.move_in(s.fd(), &e.path, &e.path).is_ok() => {
                        moved_until = manifest.subtree_end(i);
                    }
                    _ => tree.mkdir(&e.path, 0o755)?,
                }
                made.insert(&e.path);
            }
            EntryKind::File { .. } if how.staged(i) => {
                // Staged in a directory `dir` has (or where something took its new directory's
                // place): moved in on its own.
                jobs.push(FileJob {
                    entry: e,
                    dir_in_way,
                    same_as_old: false,
                    staged: true,
                });
            }
            EntryKind::File { mtime, .. } => {
                let same_as_old = same_as_old(old, e);
                let on_disk_ok = current.as_ref().is_some_and(|m| looks_right(m, e));
                // (Found in place before the walk, but gone now: it was below a symlink the
                // walk replaced with a directory. Its write then fails as a missing body,
                // and the retry fetches it.)
                let in_place = in_place.contains(&i) && current.is_some();
                if (same_as_old && on_disk_ok && !rewrite(e)) || in_place {
                    stats.unchanged += 1;
                    return Ok(());
                }
                if how.touch && !rewrite(e) && same_body_in_place(old, e, current.as_ref()) {
                    let file = tree.open_existing(&e.path)?;
                    finish_file(&file, e, *mtime)?;
                    stats.touched += 1;
                    return Ok(());
                }
                let job = FileJob {
                    entry: e,
                    dir_in_way,
                    // A file rewritten because it drifted is not linked from anywhere.
                    same_as_old: same_as_old && !rewrite(e),
                    staged: false,
                };
                jobs.push(job);
            }
            EntryKind::Symlink { target } => {
                if let Some(m) = &current {
                    if m.is_symlink()
                        && fs::read_link(&path).is_ok_and(|t| t.as_os_str() == target.as_str())
                    {
                        stats.unchanged += 1;
                        return Ok(());
                    }
                }
                let tmp = tmp_beside(&e.path);
                tree.symlink(target, &tmp)?;
                replace(&tree, &tmp, &e.path, dir_in_way)?;
                stats.written += 1;
            }
        }
        Ok(())
    })?;
    stats.unchanged += skipped;
    // The last file written with each body gets the body itself, moved out of the store
    // (the files left as they were need none); the empty body stays, the store always
    // holds it.
    let body = |job: &FileJob| match job.entry.kind {
        EntryKind::File { size, blake3, .. } if take && size > 0 && !job.staged => Some(blake3),
        _ => None,
    };
    // Jobs by body (a few bytes a job, where a map of bodies would take 64 or more).
    let mut by_body: Vec<u32> = (0u32..)
        .zip(&jobs)
        .filter_map(|(j, job)| body(job).map(|_| j))
        .collect();
    let job_body = |j: u32| body(&jobs[j as usize]).unwrap_or(Blake3([0; 32]));
    sort_by_body(&mut by_body, job_body);
    let mut last_use = vec![false; jobs.len()];
    for run in runs_by_body(&by_body, job_body) {
        last_use[run[run.len() - 1] as usize] = true;
    }
    drop(by_body);
    let (mut moves, mut j) = (Vec::new(), 0);
    jobs.retain(|job| {
        let last = last_use[j];
        j += 1;
        if last {
            moves.push(*job);
        }
        !last
    });
    drop(last_use);
    let copies = jobs;
    for (jobs, take) in [(copies, false), (moves, true)] {
        let linked = super::par_map(&jobs, |job| write_file(&tree, store, job, how, take))?
            .into_iter()
            .filter(|&linked| linked)
            .count() as u64;
        stats.linked += linked;
        stats.written += jobs.len() as u64 - linked;
    }
    stats.deleted = delete_extraneous(&tree, dir, manifest, skip, how.keep, &made)?;
    let mut kept_dirs = HashSet::new();
    if let Some(keep) = how.keep {
        walk_kept(manifest, keep, |e| {
            kept_dirs.insert(e.path.clone());
        });
    }
    for (i, e) in manifest.entries().iter().enumerate().rev() {
        let under_kept =
            how.keep.is_some() && ancestors_or_self(&e.path).any(|p| kept_dirs.contains(p));
        if matches!(e.kind, EntryKind::Dir)
            && !under_kept
            && !skip.is_some_and(|o| manifest.unchanged_in(i, o))
        {
            let m = fs::symlink_metadata(dir.join(&e.path))?;
            if m.permissions().mode() & 0o7777 != e.mode {
                tree.chmod_dir(&e.path, e.mode)?;
            }
        }
    }
    Ok(stats)
}

/// A file an apply must write (one per file of a first sync: kept small).
#[derive(Clone, Copy)]
struct FileJob<'a> {
    entry: &'a Entry,
    /// A directory stands at its path (removed before the file is renamed there).
    dir_in_way: bool,
    /// The previous release had the same body and mode here (so atomic mode can link it).
    same_as_old: bool,
    /// Written below the stage, at its own path.
    staged: bool,
}

/// Writes one file under a temporary name and renames it over the real one: hard-linked from
/// the previous release directory if it can be, else copied from the store. A body moved out
/// of the store (`take`) needs no temporary name: it gets its mode and mtime in the store
/// (the node's own, mode 0700) and is renamed over the real name from there, one rename
/// instead of two. Returns whether it was linked.
fn write_file(
    tree: &Beneath,
    store: &Store,
    job: &FileJob,
    how: How,
    take: bool,
) -> Result<bool, ApplyError> {
    let e = job.entry;
    let EntryKind::File { blake3, mtime, .. } = &e.kind else {
        unreachable!("only files are written by write_file");
    };
    if let Some(stage) = how.stage.filter(|_| job.staged) {
        if job.dir_in_way {
            tree.remove(&e.path)?;
        }
        tree.move_in(stage.fd(), &e.path, &e.path)?;
        return Ok(false);
    }
    if take && !(job.same_as_old && how.link_from.is_some()) {
        // By name, not through a descriptor: the store is the node's own, and an open and
        // close per file cost more than the two calls.
        if store.set_mode_and_mtime(blake3, e.mode, *mtime).is_ok() {
            if job.dir_in_way {
                tree.remove(&e.path)?;
            }
            let (objects, body) = store.body_at(blake3);
            if tree.move_in(objects, &body, &e.path).is_ok() {
                return Ok(false);
            }
        }
        // Not in the store after all: copied below, or reported missing.
    }
    let tmp = tmp_beside(&e.path);
    let linked = job.same_as_old
        && how
            .link_from
            .is_some_and(|from| tree.link_in(&from.join(&e.path), &tmp).is_ok());
    if !linked {
        if !store.has(blake3) {
            return Err(ApplyError::MissingBody(blake3.hex(), e.path.clone()));
        }
        let mut out = tree.create(&tmp, 0o600)?;
        // A std file both ways: the copy is done in the kernel (copy_file_range).
        let mut body = store.open_body(blake3)?;
        io::copy(&mut body, &mut out)?;
        finish_file(&out, e, *mtime)?;
    }
    replace(tree, &tmp, &e.path, job.dir_in_way)?;
    Ok(linked)
}

fn same_filesystem(a: &Path, b: &Path) -> bool {
    match (fs::metadata(a), fs::metadata(b)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev(),
        _ => false,
    }
}

/// Refuses, before anything is touched, an apply whose new file bodies cannot fit in the free
/// space of `dir`'s filesystem, so a full disk never leaves a mix of two releases. Bodies
/// moved out of the store (`take`) need no room; only the extra copies of a body used twice do.
fn check_space(
    dir: &Path,
    manifest: &Manifest,
    old: Option<&Manifest>,
    how: How,
    take: bool,
) -> Result<(), ApplyError> {
    // Files that need room, by index; with `take`, one of each body needs none.
    let mut costly: Vec<u32> = Vec::new();
    let entries = manifest.entries();
    let body = |i: u32| manifest.body_key(i);
    // Unchanged subtrees are skipped as the apply skips them: they cost nothing.
    walk(
        manifest,
        old.filter(|_| how.skip_unchanged),
        how.keep,
        |i| {
            let e = &entries[i];
            // A staged file is on this filesystem already.
            if !matches!(e.kind, EntryKind::File { .. }) || how.staged(i) {
                return Ok(());
            }
            // Unchanged files cost nothing in place; in a new release dir they are hard links.
            if same_as_old(old, e)
                && (how.link_from.is_some()
                    || how.skip_unchanged
                    || fs::symlink_metadata(dir.join(&e.path)).is_ok())
            {
                return Ok(());
            }
            // (A manifest has at most `u32::MAX` entries.)
            costly.push(i as u32);
            Ok(())
        },
    )?;
    let size = |i: u32| manifest.body_size(i);
    let need: u64 = if take {
        sort_by_body(&mut costly, body);
        runs_by_body(&costly, body)
            .map(|run| run[1..].iter().map(|&i| size(i)).sum::<u64>())
            .sum()
    } else {
        costly.iter().map(|&i| size(i)).sum()
    };
    match short_of_room(dir, need) {
        Some(free) => Err(ApplyError::NoSpace {
            path: dir.to_owned(),
            need,
            free,
        }),
        None => Ok(()),
    }
}

/// Sets a written file's mode and mtime through its descriptor.
fn finish_file(f: &std::fs::File, e: &Entry, mtime: i64) -> Result<(), ApplyError> {
    f.set_permissions(Permissions::from_mode(e.mode))?;
    let t = if mtime >= 0 {
        UNIX_EPOCH + Duration::from_secs(mtime as u64)
    } else {
        UNIX_EPOCH - Duration::from_secs(mtime.unsigned_abs())
    };
    f.set_times(
        FileTimes::new()
            .set_modified(t)
            .set_accessed(SystemTime::now()),
    )?;
    Ok(())
}

/// Renames `tmp` over `rel`; a directory in the way is removed first (a type change).
fn replace(tree: &Beneath, tmp: &str, rel: &str, dir_in_way: bool) -> Result<(), ApplyError> {
    if dir_in_way {
        tree.remove(rel)?;
    }
    tree.rename_file(tmp, rel)?;
    Ok(())
}

/// `path` and every directory above it, deepest first.
fn ancestors_or_self(path: &str) -> impl Iterator<Item = &str> {
    std::iter::successors(Some(path), |p| p.rfind('/').map(|i| &p[..i]))
}

/// Removes everything in `dir` that the manifest does not list. Returns how many.
fn delete_extraneous(
    tree: &Beneath,
    dir: &Path,
    manifest: &Manifest,
    unchanged_since: Option<&Manifest>,
    keep: Option<&Rules>,
    made: &HashSet<&str>,
) -> Result<u64, ApplyError> {
    let extra = extraneous(dir, manifest, unchanged_since, keep, made)?;
    for (path, _) in &extra {
        tree.remove(path)?;
    }
    Ok(extra.len() as u64)
}

/// Everything under `dir` that the manifest does not list (and `keep` does not name), top-most
/// only, with whether it is a directory. Directories identical in `unchanged_since` are not
/// walked, nor are those an apply just `made` (nothing but what it put there is in them).
fn extraneous(
    dir: &Path,
    manifest: &Manifest,
    unchanged_since: Option<&Manifest>,
    keep: Option<&Rules>,
    made: &HashSet<&str>,
) -> Result<Vec<(String, bool)>, ApplyError> {
    let mut out = Vec::new();
    let mut stack = vec![String::new()];
    while let Some(rel) = stack.pop() {
        let abs = if rel.is_empty() {
            dir.to_owned()
        } else {
            dir.join(&rel)
        };
        for item in fs::read_dir(&abs)? {
            let item = item?;
            let name = item.file_name();
            let name = name.to_string_lossy();
            let rel_path = if rel.is_empty() {
                name.to_string()
            } else {
                format!("{rel}/{name}")
            };
            let ft = item.file_type()?;
            // A kept directory may be a symlink to one: either kind counts.
            if keep.is_some_and(|k| k.matches(&rel_path, true) || k.matches(&rel_path, false)) {
                continue;
            }
            let listed = if is_tmp(&name) {
                None
            } else {
                manifest.position(&rel_path)
            };
            if let Some(i) = listed {
                // Below a directory the release did not change, nothing is extraneous that
                // was not before (asked of directories only: each answer is a search of the
                // old manifest, and a file's is not needed).
                let walk_below = ft.is_dir()
                    && !made.contains(rel_path.as_str())
                    && !unchanged_since.is_some_and(|o| manifest.unchanged_in(i, o));
                if walk_below {
                    stack.push(rel_path);
                }
                continue;
            }
            out.push((rel_path, ft.is_dir()));
        }
    }
    Ok(out)
}

/// What differs between `dir` and `manifest`, read-only: entries missing, of another type,
/// mode or target, files failing the quick check (with `full`, also those whose MD5
/// differs), and paths the manifest does not list. Paths `keep` names are not looked at.
pub fn drift(
    dir: &Path,
    manifest: &Manifest,
    keep: Option<&Rules>,
    full: bool,
) -> Result<Vec<String>, ApplyError> {
    let entries = manifest.entries();
    let mut out = Vec::new();
    let mut to_hash = Vec::new();
    walk(manifest, None, keep, |i| {
        let e = &entries[i];
        let m = fs::symlink_metadata(dir.join(&e.path)).ok();
        let mode_ok = |m: &Metadata| m.permissions().mode() & 0o7777 == e.mode;
        let ok = match (&e.kind, &m) {
            (_, None) => false,
            (EntryKind::Dir, Some(m)) => m.is_dir() && mode_ok(m),
            (EntryKind::File { .. }, Some(m)) => {
                let quick = looks_right(m, e);
                if quick && full {
                    to_hash.push(i);
                }
                quick
            }
            (EntryKind::Symlink { target }, Some(m)) => {
                m.is_symlink()
                    && fs::read_link(dir.join(&e.path))
                        .is_ok_and(|t| t.as_os_str() == target.as_str())
            }
        };
        if !ok {
            out.push(e.path.clone());
        }
        Ok(())
    })?;
    // Small files in groups read together (their MD5s side by side), larger ones alone.
    let digests = |i: usize| match &entries[i].kind {
        EntryKind::File {
            md5, blake3, size, ..
        } => (*md5, *blake3, *size),
        _ => unreachable!("only files are hashed"),
    };
    let differs = |i: usize, got: io::Result<Body>| match got {
        Ok(b) => Ok(((b.md5, b.blake3) != (digests(i).0, digests(i).1)).then_some(i)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Some(i)),
        Err(e) => Err(ApplyError::Io(e)),
    };
    let differing = super::par_map(
        &groups(to_hash, |&i| Some(digests(i).2)),
        |(together, group)| {
            let got: Vec<io::Result<Body>> = match together {
                true => {
                    let files: Vec<ToHash> = (group.iter())
                        .map(|&i| ToHash {
                            path: dir.join(&entries[i].path),
                            size: digests(i).2,
                            expect: None,
                        })
                        .collect();
                    (hash_together(&files, |_, _| {}).into_iter())
                        .map(|r| r.map(|(b, _)| b))
                        .collect()
                }
                false => (group.iter())
                    .map(|&i| hash_file(&dir.join(&entries[i].path), false))
                    .collect(),
            };
            (group.iter().zip(got))
                .filter_map(|(&i, r)| differs(i, r).transpose())
                .collect::<Result<Vec<usize>, ApplyError>>()
        },
    )?;
    out.extend(
        differing
            .into_iter()
            .flatten()
            .map(|i| entries[i].path.clone()),
    );
    out.extend(
        extraneous(dir, manifest, None, keep, &HashSet::new())?
            .into_iter()
            .map(|(p, _)| p),
    );
    out.sort_by(|a, b| crate::tree::manifest::path_order(a, b));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::StoreError;
    use crate::dir::scan::{fingerprint, scan};
    use crate::tree::hash::TOGETHER;
    use crate::tree::Md5;

    fn write(p: &Path, body: &str) {
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, body).unwrap();
    }

    #[test]
    fn a_probe_skips_only_what_a_missing_directory_holds() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path();
        write(&d.join("a/f"), "a");
        write(&d.join("d10/f"), "x");
        write(&d.join("top"), "t");
        fs::create_dir_all(d.join("real")).unwrap();
        write(&d.join("real/f"), "r");
        std::os::unix::fs::symlink(d.join("real"), d.join("link")).unwrap();
        let mut p = Probe::new(d);
        // In manifest order: `d1` is missing, `d10` (which starts with its name) is not.
        let asked = [
            ("a/f", true),
            ("a/g", false),
            ("d1/f", false),
            ("d1/g", false),
            ("d1/sub/f", false),
            ("d10/f", true),
            // Found through the symlink (the apply confirms a body by its digests after
            // it made `link` a directory); the next miss finds `link` is no directory.
            ("link/f", true),
            ("link/g", false),
            ("link/h", false),
            ("real/f", true),
            ("top", true),
        ];
        for (rel, there) in asked {
            assert_eq!(p.lstat(rel).is_some(), there, "{rel}");
        }
        // A symlinked directory counts as missing: what is below it is not `dir`'s.
        assert_eq!(p.missing.as_deref(), Some("link"));
    }

    /// Scans `src`, applies to `dst`, and checks `dst` scans to the same tree digest.
    fn sync(
        src: &Path,
        dst: &Path,
        store: &Store,
        old: Option<&Manifest>,
    ) -> (Manifest, ApplyStats) {
        let m = scan(src, store, &Default::default()).unwrap().0;
        let stats = apply(dst, &m, old, store).unwrap();
        let back = fingerprint(dst).unwrap();
        assert_eq!(
            back.root_digest(),
            m.root_digest(),
            "{:?} vs {:?}",
            back.entries(),
            m.entries()
        );
        (m, stats)
    }

    #[test]
    fn a_directory_swapped_for_a_symlink_during_applies_never_leads_outside() {
        // A local user who can write in `dir` swaps `site` for a symlink to a directory
        // outside, and back, as fast as it can, while releases are applied (as root, in
        // production). Whatever an apply does or fails, nothing outside changes.
        let t = tempfile::tempdir().unwrap();
        let (src, dst, outside) = (
            t.path().join("src"),
            t.path().join("dst"),
            t.path().join("outside"),
        );
        let store = Store::open(&t.path().join("data")).unwrap();
        fs::create_dir_all(&outside).unwrap();
        write(&outside.join("passwd"), "root:x:0:0");
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let swapper = {
            let (dst, outside, stop) = (dst.clone(), outside.clone(), stop.clone());
            std::thread::spawn(move || {
                let (site, aside) = (dst.join("site"), dst.join("site.real"));
                while !stop.load(Ordering::Relaxed) {
                    if std::fs::rename(&site, &aside).is_ok() {
                        let _ = std::os::unix::fs::symlink(&outside, &site);
                        std::thread::yield_now();
                        let _ = std::fs::remove_file(&site);
                        let _ = std::fs::rename(&aside, &site);
                    }
                    std::thread::yield_now();
                }
            })
        };
        let mut old: Option<Manifest> = None;
        for round in 0..40 {
            for i in 0..50 {
                write(&src.join(format!("site/f{i}")), &format!("round {round}"));
            }
            fs::set_permissions(
                src.join("site"),
                Permissions::from_mode(0o700 + round % 2 * 0o55),
            )
            .unwrap();
            let m = scan(&src, &store, &Default::default()).unwrap().0;
            // An apply may fail (it met the symlink); the next one starts from a full check.
            let ok = apply(&dst, &m, old.as_ref(), &store).is_ok();
            old = ok.then_some(m);
        }
        stop.store(true, Ordering::Relaxed);
        swapper.join().unwrap();
        let names: Vec<_> = fs::read_dir(&outside)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["passwd"], "an apply wrote outside dir");
        assert_eq!(
            fs::read_to_string(outside.join("passwd")).unwrap(),
            "root:x:0:0"
        );
        assert_eq!(
            fs::metadata(&outside).unwrap().permissions().mode() & 0o777,
            0o755,
            "an apply chmod'ed outside dir"
        );
    }

    #[test]
    fn a_new_mtime_or_mode_on_the_same_bytes_is_set_in_place_without_a_body() {
        use std::os::unix::fs::MetadataExt;
        let t = tempfile::tempdir().unwrap();
        let (src, dst) = (t.path().join("src"), t.path().join("dst"));
        let store = Store::open(&t.path().join("data")).unwrap();
        write(&src.join("a.txt"), "same bytes");
        write(&src.join("d/b.txt"), "same too");
        write(&src.join("c.txt"), "edited by hand later");
        let how = How {
            skip_unchanged: true,
            touch: true,
            ..How::default()
        };
        let m1 = scan(&src, &store, &Default::default()).unwrap().0;
        apply_with(&dst, &m1, None, &store, how).unwrap();
        let inode = fs::metadata(dst.join("a.txt")).unwrap().ino();

        // An upgrade that rewrote the files with the same bytes: new mtimes, a new mode.
        let later = SystemTime::now() + Duration::from_secs(3600);
        let date_later = |f: &str| {
            std::fs::File::options()
                .write(true)
                .open(src.join(f))
                .unwrap()
                .set_modified(later)
                .unwrap()
        };
        date_later("a.txt");
        date_later("d/b.txt");
        fs::set_permissions(src.join("d/b.txt"), Permissions::from_mode(0o600)).unwrap();
        let m2 = scan(&src, &store, &Default::default()).unwrap().0;
        // No store at all: the bodies are where the previous release left them.
        let empty = Store::open(&t.path().join("empty")).unwrap();
        let s = apply_with(&dst, &m2, Some(&m1), &empty, how).unwrap();
        assert_eq!((s.touched, s.written), (2, 0), "{s:?}");
        assert_eq!(fingerprint(&dst).unwrap().root_digest(), m2.root_digest());
        assert_eq!(fs::metadata(dst.join("a.txt")).unwrap().ino(), inode);

        // A file changed in dst since (it no longer looks like what the release left) is not
        // trusted: its body is asked for.
        write(&dst.join("c.txt"), "drifted");
        date_later("c.txt");
        let m3 = scan(&src, &store, &Default::default()).unwrap().0;
        match apply_with(&dst, &m3, Some(&m2), &empty, how) {
            Err(ApplyError::MissingBodies(ids)) => assert_eq!(ids.len(), 1),
            other => panic!("expected the drifted file's body to be missing: {other:?}"),
        }
        apply_with(&dst, &m3, Some(&m2), &store, how).unwrap();
        assert_eq!(fingerprint(&dst).unwrap().root_digest(), m3.root_digest());
    }

    /// A source and a destination below `t`, the origin's store and a leaf's.
    fn origin_and_leaf(t: &Path) -> (PathBuf, PathBuf, Store, Store) {
        let origin = Store::open(&t.join("origin")).unwrap();
        let leaf = Store::open(&t.join("leaf")).unwrap();
        (t.join("src"), t.join("dst"), origin, leaf)
    }

    #[test]
    fn staged_files_are_moved_in_and_new_directories_whole() {
        let t = tempfile::tempdir().unwrap();
        let (src, dst, origin, leaf) = origin_and_leaf(t.path());
        write(&src.join("old/a.txt"), "a");
        write(&src.join("old/was-a-file"), "becomes a directory");
        let m1 = scan(&src, &origin, &Default::default()).unwrap().0;
        for (e, ..) in m1.files() {
            leaf.ingest(&src.join(&e.path), None).unwrap();
        }
        let how = How {
            skip_unchanged: true,
            take: true,
            touch: true,
            ..How::default()
        };
        apply_with(&dst, &m1, None, &leaf, how).unwrap();

        write(&src.join("new/x.txt"), "x");
        fs::set_permissions(src.join("new/x.txt"), Permissions::from_mode(0o640)).unwrap();
        write(&src.join("new/sub/y.txt"), "y");
        fs::create_dir_all(src.join("new/sub/empty")).unwrap();
        std::os::unix::fs::symlink("x.txt", src.join("new/link")).unwrap();
        write(&src.join("new/shared.txt"), "kept in the store");
        write(&src.join("old/b.txt"), "b");
        write(&src.join("other/z.txt"), "z");
        write(&src.join("top.txt"), "t");
        fs::remove_file(src.join("old/was-a-file")).unwrap();
        write(&src.join("old/was-a-file/inner.txt"), "i");
        let m2 = scan(&src, &origin, &Default::default()).unwrap().0;
        let index = |p: &str| m2.position(p).unwrap() as u32;
        // What a fetch would offer: every new file but one whose body another file shares
        // (in new directories, in one `dst` has, and at the top).
        let staged = [
            "new/x.txt",
            "new/sub/y.txt",
            "other/z.txt",
            "old/b.txt",
            "old/was-a-file/inner.txt",
            "top.txt",
        ];
        let mut candidates: Vec<u32> = staged.map(index).to_vec();
        candidates.sort_unstable();
        let stage = Stage::plan(&leaf, &dst, 2, &m2, candidates)
            .unwrap()
            .expect("a stage on the same filesystem");
        assert!(staged.iter().all(|p| stage.wants(index(p))));
        assert!(!stage.wants(index("new/shared.txt")));

        // A body that does not match is refused and leaves nothing behind.
        let x = index("new/x.txt");
        let entry = |i: u32| m2.entries()[i as usize].clone();
        let wrong = stage.write(x, &entry(x), 0o640, b"not x", Md5::of(b"not x"));
        assert!(
            matches!(wrong, Err(StoreError::Mismatch { .. })),
            "{wrong:?}"
        );
        assert!(!stage.staged(x));
        // So is the right body with an MD5 that is not its own (the MD5 is the caller's).
        let x_body = fs::read(src.join("new/x.txt")).unwrap();
        let wrong = stage.write(x, &entry(x), 0o640, &x_body, Md5::of(b"not x"));
        assert!(
            matches!(wrong, Err(StoreError::Mismatch { .. })),
            "{wrong:?}"
        );
        assert!(!stage.staged(x));
        for p in staged {
            let e = entry(index(p));
            let body = fs::read(src.join(p)).unwrap();
            stage
                .write(index(p), &e, e.mode, &body, Md5::of(&body))
                .unwrap();
        }
        assert_eq!(stage.count(), staged.len());
        leaf.ingest(&src.join("new/shared.txt"), None).unwrap();
        // Something took the place of one new directory since: its staged file goes on its
        // own, and what is not in the release there is removed.
        write(&dst.join("other/stray"), "not in the release");

        // The new directories (one where a file was), as the stage built them.
        let new_dirs = ["new", "old/was-a-file"];
        let in_stage = new_dirs.map(|d| {
            rustix::fs::statat(stage.fd(), d, rustix::fs::AtFlags::empty())
                .unwrap()
                .st_ino
        });
        let how = How {
            stage: Some(&stage),
            ..how
        };
        let s = apply_with(&dst, &m2, Some(&m1), &leaf, how).unwrap();
        assert_eq!(fingerprint(&dst).unwrap().root_digest(), m2.root_digest());
        use std::os::unix::fs::MetadataExt;
        let in_dst = new_dirs.map(|d| fs::metadata(dst.join(d)).unwrap().ino());
        assert_eq!(
            in_dst, in_stage,
            "new directories are renamed into dst whole"
        );
        assert_eq!((s.written, s.deleted), (8, 1), "{s:?}");
        let body = |p: &str| m2.get(p).unwrap().body().unwrap().1;
        for p in staged {
            assert!(
                !leaf.has(&body(p)),
                "{p}: staged bodies never enter the store"
            );
        }
        assert!(!leaf.has(&body("new/shared.txt")), "taken from the store");
        drop(stage);
        assert!(fs::read_dir(t.path().join("leaf/stage"))
            .unwrap()
            .next()
            .is_none());
    }

    #[test]
    fn an_interrupted_apply_finishes_from_what_its_stage_still_holds() {
        let t = tempfile::tempdir().unwrap();
        let (src, dst, origin, leaf) = origin_and_leaf(t.path());
        for (p, body) in [("a/x", "x"), ("a/y", "y"), ("b/z", "z")] {
            write(&src.join(p), body);
        }
        let m = scan(&src, &origin, &Default::default()).unwrap().0;
        let files: Vec<u32> = m.indexed_files().map(|(i, ..)| i).collect();
        let stage = Stage::plan(&leaf, &dst, 7, &m, files.clone())
            .unwrap()
            .unwrap();
        for (i, e, ..) in m.indexed_files() {
            let body = fs::read(src.join(&e.path)).unwrap();
            stage.write(i, e, e.mode, &body, Md5::of(&body)).unwrap();
        }
        // The node died mid-apply; one staged file was changed since.
        write(&t.path().join("leaf/stage/v7/a/y"), "Y");
        let again = Stage::reopen(&leaf, 7, &m, |e| e.mode).unwrap().unwrap();
        let staged: Vec<bool> = files.iter().map(|&i| again.staged(i)).collect();
        assert_eq!(staged, [true, false, true], "a/x, a/y, b/z");
        assert!(Stage::reopen(&leaf, 8, &m, |e| e.mode).unwrap().is_none());
        leaf.ingest(&src.join("a/y"), None).unwrap();
        let how = How {
            take: true,
            touch: true,
            stage: Some(&again),
            ..How::default()
        };
        let s = apply_with(&dst, &m, None, &leaf, how).unwrap();
        assert_eq!(s.written, 3);
        assert_eq!(fingerprint(&dst).unwrap().root_digest(), m.root_digest());
    }

    #[test]
    fn follows_creates_changes_type_changes_and_deletes() {
        let t = tempfile::tempdir().unwrap();
        let (src, dst) = (t.path().join("src"), t.path().join("dst"));
        let store = Store::open(&t.path().join("data")).unwrap();
        write(&src.join("a/b/c.txt"), "c");
        write(&src.join("file"), "f");
        write(&src.join("with space/ünï.txt"), "u");
        fs::create_dir_all(src.join("empty")).unwrap();
        std::os::unix::fs::symlink("a/b/c.txt", src.join("link")).unwrap();
        fs::set_permissions(src.join("file"), Permissions::from_mode(0o600)).unwrap();
        let (m1, s1) = sync(&src, &dst, &store, None);
        assert_eq!(s1.written, 4);

        // Nothing changed: nothing written.
        let (_, s) = sync(&src, &dst, &store, Some(&m1));
        assert_eq!((s.written, s.deleted), (0, 0));

        // file -> directory, directory -> file, symlink retargeted, deletion.
        fs::remove_file(src.join("file")).unwrap();
        write(&src.join("file/inner"), "i");
        fs::remove_dir_all(src.join("a/b")).unwrap();
        write(&src.join("a/b"), "now a file");
        fs::remove_file(src.join("link")).unwrap();
        std::os::unix::fs::symlink("file/inner", src.join("link")).unwrap();
        fs::remove_dir_all(src.join("with space")).unwrap();
        // Junk in the destination (a leftover temp file, a stray file) is removed.
        write(&dst.join(".cascade-tmp-1-1"), "junk");
        write(&dst.join("stray/x"), "x");
        let (_, s) = sync(&src, &dst, &store, Some(&m1));
        assert!(s.deleted >= 3, "{s:?}");
        assert_eq!(fs::read_to_string(dst.join("a/b")).unwrap(), "now a file");
        assert!(!dst.join("stray").exists());
    }

    #[test]
    fn never_writes_through_a_symlink_in_dir() {
        let t = tempfile::tempdir().unwrap();
        let (src, dst, outside) = (
            t.path().join("src"),
            t.path().join("dst"),
            t.path().join("outside"),
        );
        let store = Store::open(&t.path().join("data")).unwrap();
        write(&src.join("sub/x"), "x");
        fs::create_dir_all(&outside).unwrap();
        fs::create_dir_all(&dst).unwrap();
        // Someone planted dst/sub -> outside; applying must replace the link, not follow it.
        std::os::unix::fs::symlink(&outside, dst.join("sub")).unwrap();
        sync(&src, &dst, &store, None);
        assert_eq!(fs::read_dir(&outside).unwrap().count(), 0);
        assert!(fs::symlink_metadata(dst.join("sub")).unwrap().is_dir());
    }

    #[test]
    fn a_full_drift_check_finds_same_size_edits_under_the_old_mtime_small_or_large() {
        let t = tempfile::tempdir().unwrap();
        let (src, dst) = (t.path().join("src"), t.path().join("dst"));
        let store = Store::open(&t.path().join("data")).unwrap();
        // Small files (read in a group, hashed side by side) and one above the group bound
        // (hashed alone).
        let large = crate::testkit::noise(TOGETHER as usize + 7, 4);
        for k in 0..40 {
            write(&src.join(format!("d/{k}.html")), &format!("page {k}"));
        }
        fs::write(src.join("big.bin"), &large).unwrap();
        let (m, _) = sync(&src, &dst, &store, None);
        assert!(drift(&dst, &m, None, true).unwrap().is_empty());
        // Same size, same mtime, other bytes: only a full check sees them.
        let same_stat_edit = |rel: &str, body: &[u8]| {
            let path = dst.join(rel);
            let mtime = fs::metadata(&path).unwrap().modified().unwrap();
            fs::write(&path, body).unwrap();
            fs::File::options()
                .write(true)
                .open(&path)
                .unwrap()
                .set_modified(mtime)
                .unwrap();
        };
        same_stat_edit("d/17.html", b"PAGE 17");
        let mut edited = large.clone();
        edited[TOGETHER as usize] ^= 1;
        same_stat_edit("big.bin", &edited);
        fs::remove_file(dst.join("d/3.html")).unwrap();
        assert_eq!(drift(&dst, &m, None, false).unwrap(), ["d/3.html"]);
        assert_eq!(
            drift(&dst, &m, None, true).unwrap(),
            ["big.bin", "d/17.html", "d/3.html"]
        );
    }

    #[test]
    fn locally_modified_file_is_restored_by_repair() {
        let t = tempfile::tempdir().unwrap();
        let (src, dst) = (t.path().join("src"), t.path().join("dst"));
        let store = Store::open(&t.path().join("data")).unwrap();
        write(&src.join("index.html"), "original");
        write(&src.join("sub/other.html"), "other");
        let (m, _) = sync(&src, &dst, &store, None);
        write(&dst.join("index.html"), "tampered!");
        // An apply looks only at what changed between releases (nothing here)...
        let s = apply(&dst, &m, Some(&m), &store).unwrap();
        assert_eq!((s.written, s.unchanged), (0, 2));
        // ...a repair checks everything.
        let s = repair(&dst, &m, &store, None).unwrap();
        assert_eq!((s.written, s.unchanged), (1, 1));
        assert_eq!(
            fs::read_to_string(dst.join("index.html")).unwrap(),
            "original"
        );
    }
}
