//! How one node's `dir` follows releases: in place or through atomic release directories,
//! and whether `dir` is the node's only copy of its bodies (decided once, in
//! [`Applier::new`]).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use fs_err as fs;

use std::borrow::Cow;
use std::collections::HashSet;

use super::apply::{
    apply_with, body_in_place, drift, held_in_place, repair, tmp_name, ApplyError, ApplyStats, How,
    Probe,
};
use super::rules::Rules;
use crate::data::{Stage, Store};
use crate::tree::{Entry, Manifest};

/// How a node's `dir` follows releases.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApplyMode {
    /// Files are replaced one by one in `dir` (each atomically), like `rsync -a --delete`.
    InPlace,
    /// `dir` is a symlink to a complete release directory under `DATA/releases`, swapped with
    /// one rename; the newest `keep` release directories are kept.
    Atomic { keep: usize },
}

/// Applies releases to one node's `dir` in its configured mode.
#[derive(Debug, Clone)]
pub struct Applier {
    pub dir: PathBuf,
    pub mode: ApplyMode,
    /// `DATA/releases`, where atomic mode builds release directories.
    pub releases: PathBuf,
    /// Whether `dir` is the only copy of the bodies this node applies (see [`Applier::new`]);
    /// shared by the applier's clones, cleared when the node starts serving children.
    only_copy: Arc<AtomicBool>,
    /// Paths under `dir` this node owns (`keep`).
    pub keep: Rules,
    /// Atomic mode: where kept paths live (`DATA/shared`), linked from each release.
    shared: PathBuf,
    /// Whether setuid, setgid and sticky bits in a release are applied (`allow_special_bits`);
    /// by default they are dropped.
    special_bits: bool,
}

/// Setuid, setgid and sticky.
const SPECIAL_BITS: u32 = 0o7000;

/// Paths of `m` whose mode has setuid, setgid or sticky bits.
fn with_special_bits(m: &Manifest) -> Vec<String> {
    m.entries()
        .iter()
        .filter(|e| e.mode & SPECIAL_BITS != 0)
        .map(|e| e.path.clone())
        .collect()
}

/// What a verify found and did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Verified {
    /// Paths that differed from the release (all repaired).
    pub drifted: Vec<String>,
    pub stats: ApplyStats,
}

impl Applier {
    /// An applier for `dir`, building atomic-mode release directories in `releases`.
    ///
    /// This is where a node decides whether it keeps a second copy of its bodies. A node
    /// that serves children (`serves`) keeps every body in its store, to send them on. A node
    /// that serves nobody and applies in place keeps none: it moves each verified body from
    /// its store into `dir`, so each byte is written once, and later finds it there by the
    /// quick check (confirmed by its digests before relying on it). In atomic mode the release
    /// directories share files by hard links, and bodies stay in the store.
    pub fn new(dir: PathBuf, mode: ApplyMode, releases: PathBuf, serves: bool) -> Self {
        Applier {
            dir,
            mode,
            shared: releases.with_file_name("shared"),
            releases,
            only_copy: Arc::new(AtomicBool::new(!serves && mode == ApplyMode::InPlace)),
            keep: Rules::none(),
            special_bits: false,
        }
    }

    /// The same applier applying setuid, setgid and sticky bits as the release has them.
    pub fn allowing_special_bits(mut self, allow: bool) -> Self {
        self.special_bits = allow;
        self
    }

    /// `m` as this node applies it: without setuid, setgid and sticky bits unless allowed.
    /// A release without such bits (the usual case) is used as it is.
    fn local<'a>(&self, m: &'a Manifest) -> Cow<'a, Manifest> {
        if self.special_bits || !m.entries().iter().any(|e| e.mode & SPECIAL_BITS != 0) {
            return Cow::Borrowed(m);
        }
        let entries = m
            .entries()
            .iter()
            .map(|e| Entry {
                mode: e.mode & !SPECIAL_BITS,
                ..Entry::clone(e)
            })
            .collect();
        Cow::Owned(
            Manifest::from_sorted(entries).expect("clearing mode bits keeps a manifest valid"),
        )
    }

    /// The same applier leaving the paths `keep` names to the node (in atomic mode they live
    /// in `shared` and every release links to them).
    pub fn keeping(mut self, keep: Rules, shared: PathBuf) -> Self {
        self.keep = keep;
        self.shared = shared;
        self
    }

    /// Says (once, at start) which kept paths are symlinks leading out of `dir`: they are
    /// left alone and never written through, which may not be what the operator meant.
    pub fn warn_kept_links(&self) {
        let root = fs::canonicalize(&self.dir).unwrap_or_else(|_| self.dir.clone());
        for pattern in self.keep.patterns() {
            let rel = pattern.trim_matches('/');
            let path = self.dir.join(rel);
            if !fs::symlink_metadata(&path).is_ok_and(|m| m.is_symlink()) {
                continue;
            }
            match fs::canonicalize(&path) {
                Ok(t) if t.starts_with(&root) => {}
                Ok(t) => tracing::warn!(
                    "keep: {} is a symlink to {}, outside dir: it is left alone and never written through",
                    path.display(),
                    t.display()
                ),
                Err(_) => tracing::warn!(
                    "keep: {} is a symlink to nowhere: it is left alone",
                    path.display()
                ),
            }
        }
    }

    fn keep(&self) -> Option<&Rules> {
        (!self.keep.is_empty()).then_some(&self.keep)
    }

    /// Whether `dir` is this node's only copy of the bodies it applies: bodies are moved out
    /// of the store into `dir`, and looked for in `dir` before they are fetched.
    pub fn dir_is_only_copy(&self) -> bool {
        self.only_copy.load(Ordering::Relaxed)
    }

    /// The node serves children from now on (a leaf that became a relay): bodies stay in the
    /// store, where children's requests find them.
    pub fn serving(&self) {
        self.only_copy.store(false, Ordering::Relaxed);
    }

    /// Whether `dir` holds the body of file entry `e`, where that counts: on a node whose
    /// `dir` is its only copy, a file that passes the quick check (size, mtime, mode) stands
    /// in for the store until an apply confirms it by its digests (MD5 and BLAKE3).
    pub fn holds_in_dir(&self, e: &Entry) -> bool {
        self.dir_is_only_copy() && held_in_place(&self.dir, e)
    }

    /// A [`Probe`] of `dir`, for [`Applier::body_in_dir`] asked about many entries in
    /// manifest order.
    pub fn probe(&self) -> Probe<'_> {
        Probe::new(&self.dir)
    }

    /// Whether `dir` holds what file entry `e` needs, so that its body need not be fetched
    /// (`old`: the release `dir` shows): on a node whose `dir` is its only copy, a file that
    /// passes the quick check, as for [`Applier::holds_in_dir`]; in place, a file `old` left
    /// with `e`'s body, which only needs its mode or mtime set.
    pub fn body_in_dir(&self, probe: &mut Probe, old: Option<&Manifest>, e: &Entry) -> bool {
        let old = old.filter(|_| self.mode == ApplyMode::InPlace);
        body_in_place(probe, e, self.dir_is_only_copy(), old)
    }

    /// Whether a fetch may write the files of new directories to a stage, at their own paths,
    /// for the apply to move into `dir` (see [`crate::data::stage`]): on a node whose `dir` is
    /// the only copy of its bodies (in place, serving nobody), with no paths of its own
    /// (`keep`) that the apply must leave alone.
    pub fn stages(&self) -> bool {
        self.dir_is_only_copy() && self.keep.is_empty()
    }

    /// The mode this node gives file entry `e` (see [`Applier::local`]).
    pub fn mode_of(&self, e: &Entry) -> u32 {
        match self.special_bits {
            true => e.mode,
            false => e.mode & !SPECIAL_BITS,
        }
    }

    /// The directory release `version` is built in (atomic mode).
    pub fn release_dir(&self, version: u64) -> PathBuf {
        self.releases.join(format!("v{version}"))
    }

    /// Makes `dir` show `new` (version `version`); `old` is the release it showed before.
    pub fn apply(
        &self,
        version: u64,
        new: &Manifest,
        old: Option<(u64, &Manifest)>,
        store: &Store,
    ) -> Result<ApplyStats, ApplyError> {
        self.apply_checked(version, new, old, store, None, |_| Ok(()))
    }

    /// [`Applier::apply`], asking `check` about a complete atomic release directory before
    /// `dir` is switched to it: an error refuses the release and `dir` stays as it was.
    /// Files written to a `stage` (see [`Applier::stages`]) are moved into `dir` from there.
    pub fn apply_checked(
        &self,
        version: u64,
        new: &Manifest,
        old: Option<(u64, &Manifest)>,
        store: &Store,
        stage: Option<&Stage>,
        check: impl FnOnce(&Path) -> Result<(), String>,
    ) -> Result<ApplyStats, ApplyError> {
        if !self.special_bits {
            let special = with_special_bits(new);
            if let Some(first) = special.first() {
                tracing::warn!(
                    version,
                    entries = special.len(),
                    first = %first,
                    "dropped setuid, setgid and sticky bits (allow_special_bits = true keeps them)"
                );
            }
        }
        let new = &*self.local(new);
        let old_local = old.map(|(v, m)| (v, self.local(m)));
        let old = old_local.as_ref().map(|(v, m)| (*v, &**m));
        match self.mode {
            ApplyMode::InPlace => {
                let how = How {
                    skip_unchanged: old.is_some(),
                    take: self.dir_is_only_copy(),
                    keep: self.keep(),
                    touch: true,
                    stage,
                    ..How::default()
                };
                apply_with(&self.dir, new, old.map(|(_, m)| m), store, how)
            }
            ApplyMode::Atomic { keep } => {
                let target = self.release_dir(version);
                let from = old
                    .map(|(v, _)| self.release_dir(v))
                    .filter(|p| p.is_dir() && *p != target);
                let base = if from.is_some() {
                    old.map(|(_, m)| m)
                } else {
                    None
                };
                let how = How {
                    link_from: from.as_deref(),
                    keep: self.keep(),
                    ..How::default()
                };
                let stats = apply_with(&target, new, base, store, how)?;
                self.link_kept(&target)?;
                if let Err(why) = check(&target) {
                    // Not switched to; a later try builds it again from scratch.
                    let _ = fs::remove_dir_all(&target);
                    return Err(ApplyError::Refused(why));
                }
                self.switch_to(&target)?;
                self.prune(keep, version);
                Ok(stats)
            }
        }
    }

    /// Re-applies the held release in place over what is on disk (repair after a restart).
    pub fn repair(
        &self,
        version: u64,
        manifest: &Manifest,
        store: &Store,
    ) -> Result<ApplyStats, ApplyError> {
        let manifest = &*self.local(manifest);
        match self.mode {
            ApplyMode::InPlace => repair(&self.dir, manifest, store, self.keep()),
            ApplyMode::Atomic { .. } => {
                let target = self.release_dir(version);
                let stats = repair(&target, manifest, store, self.keep())?;
                self.link_kept(&target)?;
                self.switch_to(&target)?;
                Ok(stats)
            }
        }
    }

    /// Checks `dir` against release `version` (by the quick check, or with `full` by its
    /// digests as well) and repairs what differs from the store's bodies. Nothing is written if nothing
    /// differs; a body the store lacks is asked for before anything is touched
    /// ([`ApplyError::MissingBodies`]).
    pub fn verify(
        &self,
        version: u64,
        manifest: &Manifest,
        store: &Store,
        full: bool,
    ) -> Result<Verified, ApplyError> {
        let manifest = &*self.local(manifest);
        let target = match self.mode {
            ApplyMode::InPlace => self.dir.clone(),
            ApplyMode::Atomic { .. } => self.release_dir(version),
        };
        let mut drifted = if target.is_dir() {
            drift(&target, manifest, self.keep(), full)?
        } else {
            vec![String::new()]
        };
        let switched = match self.mode {
            ApplyMode::InPlace => true,
            ApplyMode::Atomic { .. } => fs::read_link(&self.dir).is_ok_and(|t| t == target),
        };
        if !switched {
            drifted.push(format!("{} (not the release symlink)", self.dir.display()));
        }
        if drifted.is_empty() {
            return Ok(Verified::default());
        }
        let rewrite: HashSet<String> = drifted.iter().cloned().collect();
        let how = How {
            keep: self.keep(),
            rewrite: Some(&rewrite),
            ..How::default()
        };
        let stats = apply_with(&target, manifest, Some(manifest), store, how)?;
        if let ApplyMode::Atomic { .. } = self.mode {
            self.link_kept(&target)?;
            self.switch_to(&target)?;
        }
        drifted.retain(|p| !p.is_empty());
        Ok(Verified { drifted, stats })
    }

    /// Atomic mode: links each kept path of release directory `target` to its copy in
    /// `shared`, created empty if the node has none yet (a path written as `name/` is a
    /// directory, any other a file the node's programs create).
    fn link_kept(&self, target: &Path) -> Result<(), ApplyError> {
        for pattern in self.keep.patterns() {
            let rel = pattern.trim_matches('/');
            let shared = self.shared.join(rel);
            let parent = shared.parent().unwrap_or(&self.shared);
            fs::create_dir_all(parent)?;
            if pattern.ends_with('/') {
                fs::create_dir_all(&shared)?;
            }
            let link = target.join(rel);
            if fs::read_link(&link).is_ok_and(|t| t == shared) {
                continue;
            }
            let link_parent = link.parent().unwrap_or(target);
            if fs::symlink_metadata(link_parent).is_ok_and(|m| !m.is_dir()) {
                tracing::warn!(path = %rel, "cannot link the kept path: the release has a file where its directory would be");
                continue;
            }
            fs::create_dir_all(link_parent)?;
            let tmp = tmp_name(link_parent);
            fs::os::unix::fs::symlink(&shared, &tmp)?;
            fs::rename(&tmp, &link)?;
        }
        Ok(())
    }

    /// Atomic mode, first switch of a plain `dir`: moves what it has at kept paths into
    /// `shared` (unless `shared` has them already), so nothing the node owns is left behind.
    fn adopt_kept(&self) -> Result<(), ApplyError> {
        for pattern in self.keep.patterns() {
            let rel = pattern.trim_matches('/');
            let (from, to) = (self.dir.join(rel), self.shared.join(rel));
            if fs::symlink_metadata(&from).is_err() {
                continue;
            }
            let empty_dir = fs::read_dir(&to).is_ok_and(|mut d| d.next().is_none());
            if empty_dir {
                fs::remove_dir(&to)?;
            } else if fs::symlink_metadata(&to).is_ok() {
                continue;
            }
            fs::create_dir_all(to.parent().unwrap_or(&self.shared))?;
            if let Err(e) = fs::rename(&from, &to) {
                tracing::warn!(path = %rel, "cannot move the kept path into {}: {e}; move it there by hand", self.shared.display());
            }
        }
        Ok(())
    }

    /// Points `dir` at `target` with one rename of a fresh symlink over it.
    fn switch_to(&self, target: &Path) -> Result<(), ApplyError> {
        if fs::read_link(&self.dir).is_ok_and(|t| t == target) {
            return Ok(());
        }
        let parent = self.dir.parent().unwrap_or(Path::new("."));
        fs::create_dir_all(parent)?;
        if fs::symlink_metadata(&self.dir).is_ok_and(|m| m.is_dir()) {
            self.adopt_kept()?;
            if !self.keep.is_empty() {
                // The release was linked before the kept content moved into `shared`.
                self.link_kept(target)?;
            }
            // First switch of a plain directory: move it aside (kept for the operator).
            let aside = self
                .releases
                .join(format!("pre-atomic-{}", std::process::id()));
            tracing::warn!(dir = %self.dir.display(), aside = %aside.display(), "moving the existing directory aside to make dir a release symlink");
            fs::rename(&self.dir, &aside)?;
        }
        let link = tmp_name(parent);
        fs::os::unix::fs::symlink(target, &link)?;
        fs::rename(&link, &self.dir)?;
        Ok(())
    }

    /// Removes release directories beyond the newest `keep` (never `current`).
    fn prune(&self, keep: usize, current: u64) {
        let Ok(list) = fs::read_dir(&self.releases) else {
            return;
        };
        let mut versions: Vec<u64> = list
            .filter_map(|e| {
                e.ok()?
                    .file_name()
                    .to_str()?
                    .strip_prefix('v')?
                    .parse()
                    .ok()
            })
            .collect();
        versions.sort_unstable_by(|a, b| b.cmp(a));
        for v in versions
            .into_iter()
            .filter(|&v| v != current)
            .skip(keep.saturating_sub(1))
        {
            let p = self.release_dir(v);
            if let Err(e) = fs::remove_dir_all(&p) {
                tracing::warn!(path = %p.display(), "cannot prune old release: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::fs::File;

    use super::*;
    use crate::dir::scan::{fingerprint, scan};
    use crate::tree::EntryKind;

    fn write(p: &Path, body: &str) {
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, body).unwrap();
    }

    #[test]
    fn atomic_mode_swaps_a_symlink_links_unchanged_files_and_prunes() {
        let t = tempfile::tempdir().unwrap();
        let src = t.path().join("src");
        let store = Store::open(&t.path().join("data")).unwrap();
        let applier = Applier::new(
            t.path().join("www"),
            ApplyMode::Atomic { keep: 2 },
            t.path().join("data/releases"),
            true,
        );
        // The served dir starts as a plain directory with unrelated content.
        write(&applier.dir.join("old.txt"), "before cascade");
        write(&src.join("same.txt"), "unchanged");
        write(&src.join("page.html"), "v1");
        let m1 = scan(&src, &store, &Default::default()).unwrap().0;
        applier.apply(1, &m1, None, &store).unwrap();
        assert_eq!(fs::read_link(&applier.dir).unwrap(), applier.release_dir(1));
        assert_eq!(
            scan(&applier.dir, &store, &Default::default())
                .unwrap()
                .0
                .root_digest(),
            m1.root_digest()
        );

        let mut prev = (1, m1);
        for v in 2..=4u64 {
            write(&src.join("page.html"), &format!("v{v}"));
            let m = scan(&src, &store, &Default::default()).unwrap().0;
            let stats = applier
                .apply(v, &m, Some((prev.0, &prev.1)), &store)
                .unwrap();
            assert_eq!((stats.written, stats.linked), (1, 1), "{stats:?}");
            assert_eq!(fs::read_link(&applier.dir).unwrap(), applier.release_dir(v));
            assert_eq!(
                fs::read_to_string(applier.dir.join("page.html")).unwrap(),
                format!("v{v}")
            );
            // The previous release directory is untouched by building the new one.
            assert_eq!(
                fs::read_to_string(applier.release_dir(v - 1).join("page.html")).unwrap(),
                format!("v{}", v - 1)
            );
            prev = (v, m);
        }
        let mut left: Vec<_> = fs::read_dir(&applier.releases)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(
            left[..2],
            [
                "pre-atomic-".to_owned() + &std::process::id().to_string(),
                "v3".into()
            ][..]
        );
        assert_eq!(left[2], "v4");
        assert_eq!(left.len(), 3);
    }

    #[test]
    fn setuid_setgid_and_sticky_bits_are_dropped_unless_allowed() {
        use std::os::unix::fs::PermissionsExt;
        let t = tempfile::tempdir().unwrap();
        let src = t.path().join("src");
        let store = Store::open(&t.path().join("data")).unwrap();
        write(&src.join("bin/su"), "#!/bin/sh\n");
        write(&src.join("plain"), "p");
        fs::set_permissions(src.join("bin/su"), std::fs::Permissions::from_mode(0o4755)).unwrap();
        fs::set_permissions(src.join("bin"), std::fs::Permissions::from_mode(0o1777)).unwrap();
        let m = scan(&src, &store, &Default::default()).unwrap().0;
        let mode = |p: &Path| fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777;
        for (allow, su, bin) in [(false, 0o755, 0o777), (true, 0o4755, 0o1777)] {
            let dst = t.path().join(format!("dst-{allow}"));
            let a = Applier::new(dst.clone(), ApplyMode::InPlace, t.path().join("r"), true)
                .allowing_special_bits(allow);
            a.apply(1, &m, None, &store).unwrap();
            assert_eq!(
                (mode(&dst.join("bin/su")), mode(&dst.join("bin"))),
                (su, bin)
            );
            // What was applied counts as applied: nothing is rewritten or repaired after.
            let again = a.apply(2, &m, Some((1, &m)), &store).unwrap();
            assert_eq!(again.written, 0, "{again:?}");
            assert!(a.verify(1, &m, &store, true).unwrap().drifted.is_empty());
        }
    }

    #[test]
    fn a_node_serving_nobody_moves_bodies_into_dir_and_finds_them_there_again() {
        let t = tempfile::tempdir().unwrap();
        let (src, dst) = (t.path().join("src"), t.path().join("dst"));
        let store = Store::open(&t.path().join("data")).unwrap();
        write(&src.join("a.txt"), "same body");
        write(&src.join("b/a-again.txt"), "same body");
        write(&src.join("c.bin"), "unique");
        write(&src.join("empty"), "");
        // Enough files to be written on several threads, sharing a few bodies: every copy of
        // a body is made before the body is moved.
        for n in 0..300 {
            write(
                &src.join(format!("many/{}/{n}", n % 7)),
                &format!("{}", n % 3),
            );
        }
        let m = scan(&src, &store, &Default::default()).unwrap().0;
        let applier = Applier::new(
            dst.clone(),
            ApplyMode::InPlace,
            t.path().join("data/releases"),
            false,
        );
        let stats = applier.apply(1, &m, None, &store).unwrap();
        assert_eq!(stats.written, 304);
        assert_eq!(fingerprint(&dst).unwrap().root_digest(), m.root_digest());
        // Each body left the store for its last use; the shared one was copied for the first.
        let body = |p: &str| match m.get(p).unwrap().kind {
            EntryKind::File { blake3, .. } => blake3,
            _ => unreachable!(),
        };
        assert!(!store.has(&body("a.txt")) && !store.has(&body("c.bin")));
        assert!(store.has(&body("empty")), "the empty body always stays");

        // Without its record, the node finds the intact files in place (checked by MD5) and
        // asks only for what changed, before touching anything.
        write(&dst.join("c.bin"), "tampered");
        let e = repair(&dst, &m, &store, None).unwrap_err();
        assert!(
            matches!(&e, ApplyError::MissingBodies(b) if *b == [body("c.bin")]),
            "{e}"
        );
        assert_eq!(fs::read_to_string(dst.join("c.bin")).unwrap(), "tampered");
        assert!(held_in_place(&dst, m.get("a.txt").unwrap()));
        assert!(!held_in_place(&dst, m.get("c.bin").unwrap()));
        // Once the body is back, the repair restores the file.
        let mut w = store
            .writer(crate::data::Expected::whole(
                crate::tree::Md5::of(b"unique"),
                crate::tree::Blake3::of(b"unique"),
                6,
            ))
            .unwrap();
        w.write(b"unique").unwrap();
        w.finish().unwrap();
        let s = repair(&dst, &m, &store, None).unwrap();
        assert_eq!((s.written, s.unchanged), (1, 303), "{s:?}");
        assert_eq!(fs::read_to_string(dst.join("c.bin")).unwrap(), "unique");

        // A restart's repair leaves files that pass the quick check alone, as rsync does: it
        // does not read the whole dir (a same-size edit under the old mtime stays unseen).
        let kept = dst.join("b/a-again.txt");
        let mtime = fs::metadata(&kept).unwrap().modified().unwrap();
        write(&kept, "SAME BODY");
        File::options()
            .write(true)
            .open(&kept)
            .unwrap()
            .set_modified(mtime)
            .unwrap();
        let s = repair(&dst, &m, &store, None).unwrap();
        assert_eq!((s.written, s.unchanged), (0, 304), "{s:?}");
        assert_eq!(fs::read_to_string(&kept).unwrap(), "SAME BODY");
    }
}
