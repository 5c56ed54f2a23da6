//! The store's `objects/` directory, opened once: every body is created, renamed, opened
//! and changed by its name below it.

use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use fs_err as fs;
use rustix::fs::{AtFlags, Mode, OFlags};
use rustix::io::Errno;

use crate::tree::Blake3;

/// The objects directory, opened once. Bodies are created, renamed, opened and changed by
/// their name below it (`ab/abcdef…`, two components), not by their whole path: a lookup
/// walks every component, and a store sits some ten directories deep (on a first sync of
/// 100,000 small files, those walks were about a tenth of a leaf's CPU). Nothing in the store
/// is a symlink: it is the node user's alone (mode 0700) and only this code writes in it.
#[derive(Debug)]
pub(super) struct Objects {
    pub(super) fd: OwnedFd,
    pub(super) path: PathBuf,
}

/// Where a temporary body is: below the objects directory, at a path of its own, or below
/// another directory of the store opened once (a stage: see [`super::stage`]).
#[derive(Debug)]
pub(super) enum Spot {
    Objects(String),
    Path(PathBuf),
    Under(std::sync::Arc<OwnedFd>, String),
}

impl Objects {
    pub(super) fn open(path: PathBuf) -> io::Result<Self> {
        let fd = rustix::fs::open(
            &path,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| named("open directory", &path, e))?;
        Ok(Objects { fd, path })
    }

    pub(super) fn err(&self, what: &str, rel: &str, e: Errno) -> io::Error {
        named(what, &self.path.join(rel), e)
    }

    /// Creates (or truncates) `rel` for writing.
    pub(super) fn create(&self, rel: &str) -> io::Result<fs::File> {
        let fd = rustix::fs::openat(
            &self.fd,
            rel,
            OFlags::WRONLY | OFlags::CREATE | OFlags::TRUNC | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )
        .map_err(|e| self.err("create file", rel, e))?;
        Ok(fs::File::from_parts(
            std::fs::File::from(fd),
            self.path.join(rel),
        ))
    }

    /// Opens `rel` to read it.
    pub(super) fn read(&self, rel: &str) -> io::Result<std::fs::File> {
        let fd = rustix::fs::openat(
            &self.fd,
            rel,
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| self.err("open file", rel, e))?;
        Ok(std::fs::File::from(fd))
    }

    /// The size of regular file `rel`, if there is one.
    pub(super) fn size(&self, rel: &str) -> Option<u64> {
        let st = rustix::fs::statat(&self.fd, rel, AtFlags::SYMLINK_NOFOLLOW).ok()?;
        (rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::RegularFile)
            .then_some(st.st_size as u64)
    }

    /// Moves a temporary body to `rel`.
    pub(super) fn rename(&self, from: &Spot, rel: &str) -> io::Result<()> {
        match from {
            Spot::Objects(tmp) => rustix::fs::renameat(&self.fd, tmp.as_str(), &self.fd, rel),
            Spot::Path(tmp) => rustix::fs::renameat(rustix::fs::CWD, tmp, &self.fd, rel),
            Spot::Under(dir, tmp) => rustix::fs::renameat(&**dir, tmp.as_str(), &self.fd, rel),
        }
        .map_err(|e| self.err("rename to", rel, e))
    }

    /// Removes a temporary body (quietly: it is cleanup).
    pub(super) fn remove(&self, spot: &Spot) {
        let _ = match spot {
            Spot::Objects(tmp) => rustix::fs::unlinkat(&self.fd, tmp.as_str(), AtFlags::empty()),
            Spot::Path(tmp) => rustix::fs::unlink(tmp),
            Spot::Under(dir, tmp) => rustix::fs::unlinkat(&**dir, tmp.as_str(), AtFlags::empty()),
        };
    }
}

/// An error that names its path, as `fs_err` words them.
pub(super) fn named(what: &str, path: &Path, e: Errno) -> io::Error {
    let e = io::Error::from(e);
    io::Error::new(
        e.kind(),
        format!("failed to {what} `{}`: {e}", path.display()),
    )
}

/// The times a body gets as the file it becomes: modified at `mtime` (whole seconds, as a
/// manifest has it), accessed now.
pub(super) fn file_times(mtime: i64) -> rustix::fs::Timestamps {
    use rustix::fs::Timespec;
    rustix::fs::Timestamps {
        last_access: Timespec {
            tv_sec: 0,
            tv_nsec: rustix::fs::UTIME_NOW,
        },
        last_modification: Timespec {
            tv_sec: mtime,
            tv_nsec: 0,
        },
    }
}

/// A body's name below the objects directory: `ab/abcdef…`.
pub(super) fn rel(id: &Blake3) -> String {
    let hex = id.hex();
    format!("{}/{hex}", &hex[..2])
}
