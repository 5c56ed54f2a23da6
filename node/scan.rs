//! The origin's scan: walk `dir`, hash every file, import new bodies into the store, and build
//! the manifest of the release to publish.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::manifest::{Entry, EntryKind, Manifest, ManifestError};
use crate::store::{hash_file, Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}: file name is not valid UTF-8 (not supported yet)")]
    NotUtf8(PathBuf),
    #[error("{0}: changed while being published; publish again")]
    Changed(PathBuf),
    #[error(transparent)]
    Store(StoreError),
    #[error("invalid tree: {0}")]
    Manifest(#[from] ManifestError),
}

/// Scans `dir` into a manifest; every file body ends up verified in `store`.
pub fn scan(dir: &Path, store: &Store) -> Result<Manifest, ScanError> {
    let mut entries = Vec::new();
    walk(dir, "", Some(store), &mut entries)?;
    Ok(Manifest::from_entries(entries)?)
}

/// The manifest `dir` would publish, hashing every file but storing nothing: two directories
/// are identical (content, types, modes, mtimes) exactly when their root digests are equal.
pub fn fingerprint(dir: &Path) -> Result<Manifest, ScanError> {
    let mut entries = Vec::new();
    walk(dir, "", None, &mut entries)?;
    Ok(Manifest::from_entries(entries)?)
}

fn walk(
    root: &Path,
    rel: &str,
    store: Option<&Store>,
    out: &mut Vec<Entry>,
) -> Result<(), ScanError> {
    let abs = if rel.is_empty() {
        root.to_owned()
    } else {
        root.join(rel)
    };
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| ScanError::Io { path, source }
    };
    for item in fs::read_dir(&abs).map_err(io(&abs))? {
        let item = item.map_err(io(&abs))?;
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
        let meta = fs::symlink_metadata(&path).map_err(io(&path))?;
        let mode = meta.permissions().mode() & 0o7777;
        let ft = meta.file_type();
        let kind = if ft.is_dir() {
            EntryKind::Dir
        } else if ft.is_file() {
            let (md5, size) = hash_file(&path).map_err(ScanError::Store)?;
            if let Some(store) = store {
                store.import(&path, md5, size).map_err(|e| match e {
                    StoreError::Mismatch { .. } => ScanError::Changed(path.clone()),
                    other => ScanError::Store(other),
                })?;
            }
            EntryKind::File {
                size,
                md5,
                mtime: meta.mtime(),
            }
        } else if ft.is_symlink() {
            let target = fs::read_link(&path).map_err(io(&path))?;
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
        out.push(Entry {
            path: rel_path.clone(),
            mode,
            kind,
        });
        if is_dir {
            walk(root, &rel_path, store, out)?;
        }
    }
    Ok(())
}
