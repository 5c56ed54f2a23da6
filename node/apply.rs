//! Applying a verified release to the served directory, like `rsync -a --delete`.
//!
//! Every body comes from the store (so it was verified), is copied under a temporary hidden
//! name in the destination directory and renamed over the real name: a reader sees the old
//! file or the new one, never a partial one. Entries are processed in manifest order, parents
//! first, and each parent is made a real directory (a symlink or file in its way is removed),
//! so nothing is ever written through a symlink. Then anything the manifest does not list is
//! deleted, and directory modes are set deepest first.

use std::fs::{self, File, FileTimes};
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::manifest::{Entry, EntryKind, Manifest};
use crate::store::Store;

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("body {0} for {1:?} is not in the store")]
    MissingBody(String, String),
}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> ApplyError + '_ {
    move |source| ApplyError::Io {
        path: path.to_owned(),
        source,
    }
}

/// What an apply changed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ApplyStats {
    pub written: u64,
    pub unchanged: u64,
    pub deleted: u64,
}

static TMP_SEQ: AtomicU64 = AtomicU64::new(0);

fn tmp_name(parent: &Path) -> PathBuf {
    let n = TMP_SEQ.fetch_add(1, Ordering::Relaxed);
    parent.join(format!(".cascade-tmp-{}-{n}", std::process::id()))
}

/// Whether a name is one of our temporary files (left over by a crash).
fn is_tmp(name: &str) -> bool {
    name.starts_with(".cascade-tmp-")
}

/// Makes `dir` hold exactly `manifest`, reading bodies from `store`. `old` is the release
/// applied before (used only for the quick check: same MD5, mode, size and mtime is skipped).
pub fn apply(
    dir: &Path,
    manifest: &Manifest,
    old: Option<&Manifest>,
    store: &Store,
) -> Result<ApplyStats, ApplyError> {
    fs::create_dir_all(dir).map_err(io_at(dir))?;
    let mut stats = ApplyStats::default();
    for e in manifest.entries() {
        let path = dir.join(&e.path);
        let current = fs::symlink_metadata(&path).ok();
        match &e.kind {
            EntryKind::Dir => {
                match &current {
                    Some(m) if m.is_dir() => {}
                    Some(_) => {
                        fs::remove_file(&path).map_err(io_at(&path))?;
                        fs::create_dir(&path).map_err(io_at(&path))?;
                    }
                    None => fs::create_dir(&path).map_err(io_at(&path))?,
                }
                // Keep the directory writable while we fill it; its mode is set at the end.
            }
            EntryKind::File { size, md5, mtime } => {
                let same_as_old = old
                    .and_then(|o| o.get(&e.path))
                    .is_some_and(|(oe, _)| oe.kind == e.kind && oe.mode == e.mode);
                let on_disk_ok = current.as_ref().is_some_and(|m| {
                    m.is_file()
                        && m.len() == *size
                        && m.mtime() == *mtime
                        && m.permissions().mode() & 0o7777 == e.mode
                });
                if same_as_old && on_disk_ok {
                    stats.unchanged += 1;
                    continue;
                }
                if !store.has(md5) {
                    return Err(ApplyError::MissingBody(md5.hex(), e.path.clone()));
                }
                let tmp = tmp_name(path.parent().unwrap_or(dir));
                let src = store.path(md5);
                fs::copy(&src, &tmp).map_err(io_at(&tmp))?;
                finish_file(&tmp, e, *mtime)?;
                replace(&tmp, &path, current.as_ref())?;
                stats.written += 1;
            }
            EntryKind::Symlink { target } => {
                if let Some(m) = &current {
                    if m.is_symlink()
                        && fs::read_link(&path).is_ok_and(|t| t.as_os_str() == target.as_str())
                    {
                        stats.unchanged += 1;
                        continue;
                    }
                }
                let tmp = tmp_name(path.parent().unwrap_or(dir));
                std::os::unix::fs::symlink(target, &tmp).map_err(io_at(&tmp))?;
                replace(&tmp, &path, current.as_ref())?;
                stats.written += 1;
            }
        }
    }
    stats.deleted = delete_extraneous(dir, "", manifest)?;
    for e in manifest.entries().iter().rev() {
        if matches!(e.kind, EntryKind::Dir) {
            let path = dir.join(&e.path);
            let m = fs::symlink_metadata(&path).map_err(io_at(&path))?;
            if m.permissions().mode() & 0o7777 != e.mode {
                fs::set_permissions(&path, fs::Permissions::from_mode(e.mode))
                    .map_err(io_at(&path))?;
            }
        }
    }
    Ok(stats)
}

fn finish_file(tmp: &Path, e: &Entry, mtime: i64) -> Result<(), ApplyError> {
    let f = File::options().write(true).open(tmp).map_err(io_at(tmp))?;
    f.set_permissions(fs::Permissions::from_mode(e.mode))
        .map_err(io_at(tmp))?;
    let t = if mtime >= 0 {
        UNIX_EPOCH + Duration::from_secs(mtime as u64)
    } else {
        UNIX_EPOCH - Duration::from_secs(mtime.unsigned_abs())
    };
    f.set_times(
        FileTimes::new()
            .set_modified(t)
            .set_accessed(SystemTime::now()),
    )
    .map_err(io_at(tmp))?;
    Ok(())
}

/// Renames `tmp` over `path`; a directory in the way is removed first (a type change).
fn replace(tmp: &Path, path: &Path, current: Option<&fs::Metadata>) -> Result<(), ApplyError> {
    if current.is_some_and(|m| m.is_dir()) {
        fs::remove_dir_all(path).map_err(io_at(path))?;
    }
    fs::rename(tmp, path).map_err(io_at(path))
}

/// Removes everything under `dir/rel` that the manifest does not list. Returns how many.
fn delete_extraneous(dir: &Path, rel: &str, manifest: &Manifest) -> Result<u64, ApplyError> {
    let abs = if rel.is_empty() {
        dir.to_owned()
    } else {
        dir.join(rel)
    };
    let mut deleted = 0;
    for item in fs::read_dir(&abs).map_err(io_at(&abs))? {
        let item = item.map_err(io_at(&abs))?;
        let path = item.path();
        let name = item.file_name();
        let name = name.to_string_lossy();
        let rel_path = if rel.is_empty() {
            name.to_string()
        } else {
            format!("{rel}/{name}")
        };
        let ft = item.file_type().map_err(io_at(&path))?;
        let listed = !is_tmp(&name) && manifest.get(&rel_path).is_some();
        if listed {
            if ft.is_dir() {
                deleted += delete_extraneous(dir, &rel_path, manifest)?;
            }
            continue;
        }
        if ft.is_dir() {
            fs::remove_dir_all(&path).map_err(io_at(&path))?;
        } else {
            fs::remove_file(&path).map_err(io_at(&path))?;
        }
        deleted += 1;
    }
    Ok(deleted)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scan::scan;

    fn write(p: &Path, body: &str) {
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, body).unwrap();
    }

    /// Scans `src`, applies to `dst`, and checks `dst` scans to the same tree digest.
    fn sync(
        src: &Path,
        dst: &Path,
        store: &Store,
        old: Option<&Manifest>,
    ) -> (Manifest, ApplyStats) {
        let m = scan(src, store).unwrap();
        let stats = apply(dst, &m, old, store).unwrap();
        let back = scan(dst, store).unwrap();
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
    fn follows_creates_changes_type_changes_and_deletes() {
        let t = tempfile::tempdir().unwrap();
        let (src, dst) = (t.path().join("src"), t.path().join("dst"));
        let store = Store::open(&t.path().join("data")).unwrap();
        write(&src.join("a/b/c.txt"), "c");
        write(&src.join("file"), "f");
        write(&src.join("with space/ünï.txt"), "u");
        fs::create_dir_all(src.join("empty")).unwrap();
        std::os::unix::fs::symlink("a/b/c.txt", src.join("link")).unwrap();
        fs::set_permissions(src.join("file"), fs::Permissions::from_mode(0o600)).unwrap();
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
    fn locally_modified_file_is_restored() {
        let t = tempfile::tempdir().unwrap();
        let (src, dst) = (t.path().join("src"), t.path().join("dst"));
        let store = Store::open(&t.path().join("data")).unwrap();
        write(&src.join("index.html"), "original");
        let (m, _) = sync(&src, &dst, &store, None);
        write(&dst.join("index.html"), "tampered!");
        let (_, s) = sync(&src, &dst, &store, Some(&m));
        assert_eq!(s.written, 1);
        assert_eq!(
            fs::read_to_string(dst.join("index.html")).unwrap(),
            "original"
        );
    }
}
