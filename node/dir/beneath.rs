//! Changing a directory tree only through directory descriptors, never through a symlink.
//!
//! Every path is resolved from the tree's root one component at a time with `O_NOFOLLOW`
//! (descriptors of the directories on the way are kept for the length of an apply), and each
//! change is a `*at` call on the descriptor of the entry's parent: `mkdirat`, `unlinkat`,
//! `renameat`, `symlinkat`, `linkat`, an `openat` with `O_CREAT | O_EXCL | O_NOFOLLOW`, and
//! `fchmod` on an opened descriptor. A local user who can write inside `dir` and swaps one of
//! its directories for a symlink to `/etc` while a root-run node applies a release makes that
//! apply fail (`ELOOP`, `ENOTDIR`); nothing outside `dir` is written, deleted or chmod'ed.

use std::collections::HashMap;
use std::ffi::CStr;
use std::fs::File;
use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rustix::fs::{AtFlags, Mode, OFlags, CWD};
use rustix::io::Errno;

/// How a directory on the way is opened: never through a symlink.
const DIR_FLAGS: OFlags = OFlags::RDONLY
    .union(OFlags::DIRECTORY)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC);

/// Most directory descriptors kept open at once (the cache is emptied past it).
const MAX_OPEN: usize = 512;

/// A directory tree changed only beneath its root.
#[derive(Debug)]
pub struct Beneath {
    root: Arc<OwnedFd>,
    path: PathBuf,
    dirs: Mutex<HashMap<String, Arc<OwnedFd>>>,
}

/// `rel`'s parent directory and last component.
fn split(rel: &str) -> (&str, &str) {
    rel.rsplit_once('/').unwrap_or(("", rel))
}

impl Beneath {
    /// Opens the tree at `path` (the root itself may be a symlink: it is the operator's).
    pub fn open(path: &Path) -> io::Result<Self> {
        let root = rustix::fs::open(
            path,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| named(path, e))?;
        Ok(Beneath {
            root: Arc::new(root),
            path: path.to_owned(),
            dirs: Mutex::default(),
        })
    }

    /// An error naming `rel` under the root.
    fn err(&self, rel: &str, e: Errno) -> io::Error {
        named(&self.path.join(rel), e)
    }

    /// The descriptor of directory `rel` (`""`: the root), opened component by component
    /// without following a symlink.
    fn dir(&self, rel: &str) -> io::Result<Arc<OwnedFd>> {
        if rel.is_empty() {
            return Ok(self.root.clone());
        }
        if let Some(fd) = self.dirs.lock().expect("dirs lock").get(rel) {
            return Ok(fd.clone());
        }
        let (parent, name) = split(rel);
        let parent_fd = self.dir(parent)?;
        let fd = Arc::new(
            rustix::fs::openat(&*parent_fd, name, DIR_FLAGS, Mode::empty())
                .map_err(|e| self.err(rel, e))?,
        );
        let mut dirs = self.dirs.lock().expect("dirs lock");
        if dirs.len() >= MAX_OPEN {
            dirs.clear();
        }
        dirs.insert(rel.to_owned(), fd.clone());
        Ok(fd)
    }

    /// Forgets the descriptors of `rel` and everything below it (removed or replaced).
    fn forget(&self, rel: &str) {
        let prefix = format!("{rel}/");
        self.dirs
            .lock()
            .expect("dirs lock")
            .retain(|k, _| k != rel && !k.starts_with(&prefix));
    }

    pub fn mkdir(&self, rel: &str, mode: u32) -> io::Result<()> {
        let (parent, name) = split(rel);
        rustix::fs::mkdirat(&*self.dir(parent)?, name, Mode::from_raw_mode(mode))
            .map_err(|e| self.err(rel, e))
    }

    /// Removes `rel`: a file or symlink, or a directory with everything in it.
    pub fn remove(&self, rel: &str) -> io::Result<()> {
        let (parent, name) = split(rel);
        let parent_fd = self.dir(parent)?;
        self.forget(rel);
        let name = std::ffi::CString::new(name).map_err(io::Error::other)?;
        remove_tree(&parent_fd, &name).map_err(|e| self.err(rel, e))
    }

    /// Renames the file or symlink `from` to `to`, both under the root (replacing a file or
    /// symlink at `to`). No directory descriptor goes stale: renaming a file over a
    /// directory fails (`EISDIR`), and one over a file leaves every directory where it was.
    pub fn rename_file(&self, from: &str, to: &str) -> io::Result<()> {
        let (fp, fname) = split(from);
        let (tp, tname) = split(to);
        rustix::fs::renameat(&*self.dir(fp)?, fname, &*self.dir(tp)?, tname)
            .map_err(|e| self.err(to, e))
    }

    pub fn symlink(&self, target: &str, rel: &str) -> io::Result<()> {
        let (parent, name) = split(rel);
        rustix::fs::symlinkat(target, &*self.dir(parent)?, name).map_err(|e| self.err(rel, e))
    }

    /// Creates the new file `rel` (never through a symlink, never an existing file).
    pub fn create(&self, rel: &str, mode: u32) -> io::Result<File> {
        let (parent, name) = split(rel);
        let fd = rustix::fs::openat(
            &*self.dir(parent)?,
            name,
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(mode),
        )
        .map_err(|e| self.err(rel, e))?;
        Ok(File::from(fd))
    }

    /// Opens the regular file `rel` to set its mode and times (read-only: the node may not
    /// have write permission on a file it made read-only; never through a symlink, never
    /// blocking on a FIFO swapped in).
    pub fn open_existing(&self, rel: &str) -> io::Result<File> {
        let (parent, name) = split(rel);
        let fd = rustix::fs::openat(
            &*self.dir(parent)?,
            name,
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| self.err(rel, e))?;
        let file = File::from(fd);
        if !file.metadata()?.is_file() {
            return Err(io::Error::other(format!("{rel}: not a regular file")));
        }
        Ok(file)
    }

    /// Hard-links `src` (outside the tree, a path the node owns) as `rel`.
    pub fn link_in(&self, src: &Path, rel: &str) -> io::Result<()> {
        let (parent, name) = split(rel);
        rustix::fs::linkat(CWD, src, &*self.dir(parent)?, name, AtFlags::empty())
            .map_err(|e| self.err(rel, e))
    }

    /// Moves `src` below directory `from` (outside the tree, a directory the node owns, on
    /// the same filesystem) to `rel`.
    pub fn move_in(&self, from: BorrowedFd, src: &str, rel: &str) -> io::Result<()> {
        let (parent, name) = split(rel);
        rustix::fs::renameat(from, src, &*self.dir(parent)?, name).map_err(|e| self.err(rel, e))
    }

    /// Sets the mode of directory `rel` through its descriptor.
    pub fn chmod_dir(&self, rel: &str, mode: u32) -> io::Result<()> {
        rustix::fs::fchmod(&*self.dir(rel)?, Mode::from_raw_mode(mode))
            .map_err(|e| self.err(rel, e))
    }
}

/// Removes `name` in `parent`: unlinked if it is not a directory, else emptied (through
/// descriptors, never following a symlink) and removed.
fn remove_tree(parent: &OwnedFd, name: &CStr) -> Result<(), Errno> {
    match rustix::fs::unlinkat(parent, name, AtFlags::empty()) {
        Err(Errno::ISDIR) | Err(Errno::PERM) => {}
        other => return other,
    }
    let fd = rustix::fs::openat(parent, name, DIR_FLAGS, Mode::empty())?;
    let mut names = Vec::new();
    for entry in rustix::fs::Dir::read_from(&fd)? {
        let entry = entry?;
        let n = entry.file_name();
        if n.to_bytes() != b"." && n.to_bytes() != b".." {
            names.push(n.to_owned());
        }
    }
    for n in names {
        remove_tree(&fd, &n)?;
    }
    rustix::fs::unlinkat(parent, name, AtFlags::REMOVEDIR)
}

fn named(path: &Path, e: Errno) -> io::Error {
    let e = io::Error::from(e);
    io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_is_changed_through_a_symlink_swapped_into_the_tree() {
        let t = tempfile::tempdir().unwrap();
        let (tree, outside) = (t.path().join("tree"), t.path().join("outside"));
        std::fs::create_dir_all(tree.join("a/b")).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(outside.join("victim"), "keep me").unwrap();
        let b = Beneath::open(&tree).unwrap();
        b.create("a/b/f", 0o644).unwrap();
        // `a` becomes a symlink to a directory outside the tree (a local user's doing).
        std::fs::rename(tree.join("a"), t.path().join("moved")).unwrap();
        std::os::unix::fs::symlink(&outside, tree.join("a")).unwrap();
        let b = Beneath::open(&tree).unwrap();
        for (what, r) in [
            ("create", b.create("a/new", 0o644).map(drop)),
            ("mkdir", b.mkdir("a/d", 0o755)),
            ("remove", b.remove("a/victim")),
            ("symlink", b.symlink("x", "a/l")),
            ("chmod", b.chmod_dir("a", 0o777)),
            ("open", b.open_existing("a/victim").map(drop)),
            ("rename", b.rename_file("a/victim", "stolen")),
        ] {
            let e = r.expect_err(what);
            assert!(e.to_string().contains("tree/a"), "{what}: {e}");
        }
        assert_eq!(
            std::fs::read_to_string(outside.join("victim")).unwrap(),
            "keep me"
        );
        assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 1);
        use std::os::unix::fs::PermissionsExt;
        assert_ne!(
            std::fs::metadata(&outside).unwrap().permissions().mode() & 0o777,
            0o777
        );
        // Removing the symlink itself removes the link, not what it points to.
        b.remove("a").unwrap();
        assert!(outside.join("victim").exists());
        // A whole tree is removed through descriptors.
        std::fs::create_dir_all(tree.join("x/y/z")).unwrap();
        std::fs::write(tree.join("x/y/z/f"), "f").unwrap();
        std::os::unix::fs::symlink(&outside, tree.join("x/y/link")).unwrap();
        b.remove("x").unwrap();
        assert!(!tree.join("x").exists());
        assert!(outside.join("victim").exists());
    }
}
