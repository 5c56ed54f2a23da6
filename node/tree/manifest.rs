//! Manifests: the complete description of a release's tree, with a hash tree over directories.
//!
//! Entries are kept in *component order* (paths compared component by component), which is a
//! depth-first pre-order: a directory comes right before everything below it, so a subtree is
//! one contiguous run and can be skipped whole when its digest matches.
//!
//! A [`Manifest`] can only be built from entries that pass [`Manifest::from_entries`]; decoding
//! one from the wire goes through the same check, so a hostile manifest (absolute paths, `..`,
//! NUL, repeated paths, an entry under a file or symlink) is refused as a whole. Directory
//! digests are never trusted from the wire: the receiver recomputes them.

use std::cmp::Ordering;
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::hash::{blake3_root, chunk_count, Blake3, Md5, Sums};

/// What an entry is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum EntryKind {
    /// `blake3` names the body (the store keeps it by that name) and is what nodes trust;
    /// `md5` is what users check with `md5sum`, verified at every hop too. `mtime` is seconds
    /// since the Unix epoch, kept so that servers agree on Last-Modified. `chunks` holds the
    /// digests of each [`CHUNK`](super::hash::CHUNK) of a body larger than one chunk (see
    /// [`chunk_count`]), empty otherwise.
    File {
        size: u64,
        md5: Md5,
        blake3: Blake3,
        mtime: i64,
        chunks: Vec<Sums>,
    },
    Dir,
    Symlink {
        target: String,
    },
}

/// One path of the tree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Relative path, components separated by `/`.
    pub path: String,
    /// Permission bits (`0o7777` at most).
    pub mode: u32,
    pub kind: EntryKind,
}

impl Entry {
    /// The last component of the path.
    pub fn name(&self) -> &str {
        self.last_slash()
            .map_or(&self.path, |i| &self.path[i + 1..])
    }

    /// Where the path's last `/` is (a plain loop: paths are short, and this is on every
    /// entry of every hash tree).
    fn last_slash(&self) -> Option<usize> {
        self.path.bytes().rposition(|b| b == b'/')
    }

    /// The parent directory's path (`""` for the top level).
    pub fn parent(&self) -> &str {
        self.last_slash().map_or("", |i| &self.path[..i])
    }
    /// A file's size and body; `None` for a directory or symlink.
    pub fn body(&self) -> Option<(u64, Blake3)> {
        match self.kind {
            EntryKind::File { size, blake3, .. } => Some((size, blake3)),
            _ => None,
        }
    }

    /// The chunk digests of a file's body (empty for a small file or a non-file).
    pub fn chunks(&self) -> &[Sums] {
        match &self.kind {
            EntryKind::File { chunks, .. } => chunks,
            _ => &[],
        }
    }
}

/// Why a set of entries is not a valid manifest.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    #[error("unsafe path {0:?}: must be relative, without empty, '.' or '..' components or NUL")]
    UnsafePath(String),
    #[error("path {0:?} appears more than once")]
    Duplicate(String),
    #[error("entries out of order at {0:?}")]
    Unordered(String),
    #[error("{0:?} is inside {1:?}, which is not a directory in the manifest")]
    NoParentDir(String, String),
    #[error("symlink {0:?} has an empty target or one containing NUL")]
    BadTarget(String),
    #[error("{0:?} has invalid mode {1:o}")]
    BadMode(String, u32),
    #[error("{0:?} lists {1} chunk digests; a body of its size has {2}")]
    BadChunks(String, usize, u64),
    #[error("{0:?}: its chunk digests do not add up to its BLAKE3")]
    ChunksDisagree(String),
    #[error("{0} entries: a manifest holds at most {max}", max = u32::MAX)]
    TooMany(usize),
}

/// A validated, ordered list of entries with a digest per entry and for the whole tree. Only
/// directories' digests are kept (36 bytes a directory): a file's or symlink's follows from
/// its entry alone and is computed when asked, where keeping it would take 32 bytes a file in
/// every manifest held (two at once while a node moves from one release to the next).
/// Never changed once made, so a copy shares the entries: a release is held, offered,
/// fetched and applied at once without a copy of its entries each (about 150 bytes a file).
/// Each entry is shared too: a manifest made from another (a delta, a scan that found one
/// file changed) holds a pointer to each entry it kept, not a copy, so a node updating a
/// release of a million files holds one set of entries, not two.
#[derive(Clone, PartialEq, Eq)]
pub struct Manifest {
    entries: Arc<Vec<Arc<Entry>>>,
    /// Each directory's subtree digest, by index, ascending.
    dirs: Arc<Vec<(u32, Blake3)>>,
    root: Blake3,
}

impl fmt::Debug for Manifest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Manifest")
            .field("entries", &self.entries.len())
            .field("root", &self.root)
            .finish()
    }
}

/// Orders paths component by component (depth-first pre-order): byte by byte, with `/`
/// below every other byte, which is the same order as comparing the lists of components
/// (`a.split('/').cmp(b.split('/'))`) without splitting. It is on every manifest lookup.
pub fn path_order(a: &str, b: &str) -> Ordering {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let same = a.iter().zip(b).take_while(|(x, y)| x == y).count();
    let rank = |c: u8| if c == b'/' { 0 } else { u16::from(c) + 1 };
    match (a.get(same), b.get(same)) {
        (Some(&x), Some(&y)) => rank(x).cmp(&rank(y)),
        (x, y) => x.is_some().cmp(&y.is_some()),
    }
}

/// Whether path `p` is directory `dir` or below it.
fn is_within(p: &str, dir: &str) -> bool {
    p.strip_prefix(dir)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

fn safe_path(p: &str) -> bool {
    !p.is_empty()
        && !p.contains('\0')
        && p.split('/').all(|c| !c.is_empty() && c != "." && c != "..")
}

impl Manifest {
    /// Validates entries (sorting them first) and computes the hash tree.
    pub fn from_entries(mut entries: Vec<Entry>) -> Result<Self, ManifestError> {
        entries.sort_by(|a, b| path_order(&a.path, &b.path));
        Self::from_sorted(entries)
    }

    /// Validates entries that must already be in component order (as they come off the wire).
    pub fn from_sorted(entries: Vec<Entry>) -> Result<Self, ManifestError> {
        Self::from_shared(entries.into_iter().map(Arc::new).collect())
    }

    /// [`Manifest::from_sorted`] of entries shared with other manifests.
    pub fn from_shared(entries: Vec<Arc<Entry>>) -> Result<Self, ManifestError> {
        Self::from_sorted_known(entries, None)
    }

    /// [`Manifest::from_sorted`], taking the digests `known` from the manifest the entries
    /// were spliced from instead of hashing them again: the hash tree then costs what changed
    /// (and the directories above it), not every entry. Validation is the same.
    pub fn from_sorted_known(
        mut entries: Vec<Arc<Entry>>,
        known: Option<&Known>,
    ) -> Result<Self, ManifestError> {
        // Entries are indexed by `u32` (lists of files to fetch are long).
        if u32::try_from(entries.len()).is_err() {
            return Err(ManifestError::TooMany(entries.len()));
        }
        // The directories the last entry is in, outermost first: in component order, an
        // entry's parent (if it is listed at all) is one of them, or the last entry itself.
        let mut dirs: Vec<&str> = Vec::new();
        for (i, e) in entries.iter().enumerate() {
            if !safe_path(&e.path) {
                return Err(ManifestError::UnsafePath(e.path.clone()));
            }
            if e.mode > 0o7777 {
                return Err(ManifestError::BadMode(e.path.clone(), e.mode));
            }
            match &e.kind {
                EntryKind::Symlink { target } if target.is_empty() || target.contains('\0') => {
                    return Err(ManifestError::BadTarget(e.path.clone()));
                }
                EntryKind::File { size, chunks, .. }
                    if chunks.len() as u64 != chunk_count(*size) =>
                {
                    return Err(ManifestError::BadChunks(
                        e.path.clone(),
                        chunks.len(),
                        chunk_count(*size),
                    ));
                }
                EntryKind::File {
                    size,
                    blake3,
                    chunks,
                    ..
                } if !chunks.is_empty() => {
                    let cvs: Vec<Blake3> = chunks.iter().map(|c| c.blake3).collect();
                    if blake3_root(&cvs, *size) != *blake3 {
                        return Err(ManifestError::ChunksDisagree(e.path.clone()));
                    }
                }
                _ => {}
            }
            if i > 0 {
                match path_order(&entries[i - 1].path, &e.path) {
                    Ordering::Less => {}
                    Ordering::Equal => return Err(ManifestError::Duplicate(e.path.clone())),
                    Ordering::Greater => return Err(ManifestError::Unordered(e.path.clone())),
                }
            }
            let parent = e.parent();
            while dirs.last().is_some_and(|d| !is_within(parent, d)) {
                dirs.pop();
            }
            if !parent.is_empty() && dirs.last() != Some(&parent) {
                return Err(ManifestError::NoParentDir(
                    e.path.clone(),
                    parent.to_owned(),
                ));
            }
            if matches!(e.kind, EntryKind::Dir) {
                dirs.push(&e.path);
            }
        }
        let (dirs, root) = hash_tree(&entries, known);
        // Kept as long as the release is: without the slack of a vector grown by pushes.
        entries.shrink_to_fit();
        Ok(Manifest {
            entries: Arc::new(entries),
            dirs: Arc::new(dirs),
            root,
        })
    }

    /// An empty tree.
    pub fn empty() -> Self {
        Self::from_sorted(Vec::new()).expect("an empty manifest is valid")
    }

    pub fn entries(&self) -> &[Arc<Entry>] {
        &self.entries
    }

    /// The digest of the whole tree (BLAKE3 over every entry): equal digests mean identical
    /// trees. The origin signs it.
    pub fn root_digest(&self) -> Blake3 {
        self.root
    }

    /// The entry at `path`.
    pub fn get(&self, path: &str) -> Option<&Entry> {
        self.position(path).map(|i| &*self.entries[i])
    }

    /// The entry at `path`, shared.
    pub fn shared(&self, path: &str) -> Option<&Arc<Entry>> {
        self.position(path).map(|i| &self.entries[i])
    }

    /// Entry `i`'s digest: a file's or symlink's own, a directory's whole subtree's.
    pub fn digest(&self, i: usize) -> Blake3 {
        match self.entries[i].kind {
            EntryKind::Dir => self.dir_digest(i),
            _ => entry_digest(&self.entries[i], &[]),
        }
    }

    /// The subtree digest of directory `i`.
    fn dir_digest(&self, i: usize) -> Blake3 {
        let at = self.dirs.partition_point(|&(k, _)| (k as usize) < i);
        match self.dirs.get(at) {
            Some(&(k, d)) if k as usize == i => d,
            _ => unreachable!("entry {i} is no directory of this manifest"),
        }
    }

    /// Whether entry `i` of `self` and entry `j` of `other` are the same, and for a directory
    /// everything below it too (the same digest, without computing a file's).
    fn same_as(&self, i: usize, other: &Manifest, j: usize) -> bool {
        let (a, b) = (&self.entries[i], &other.entries[j]);
        a.mode == b.mode
            && a.kind == b.kind
            && (!matches!(a.kind, EntryKind::Dir) || self.dir_digest(i) == other.dir_digest(j))
    }

    /// The index of the entry at `path`.
    /// The body of entry `i`, as lists of files sorted by body ([`super::ByBody`],
    /// [`super::sort_by_body`]) take it: an entry that is not a file counts as zeros.
    pub fn body_key(&self, i: u32) -> Blake3 {
        self.entries[i as usize]
            .body()
            .map_or(Blake3([0; 32]), |(_, id)| id)
    }

    /// The size of entry `i`'s body (0 for an entry that is not a file).
    pub fn body_size(&self, i: u32) -> u64 {
        self.entries[i as usize].body().map_or(0, |(size, _)| size)
    }

    pub fn position(&self, path: &str) -> Option<usize> {
        self.entries
            .binary_search_by(|e| path_order(&e.path, path))
            .ok()
    }

    pub fn file_count(&self) -> u64 {
        self.files().count() as u64
    }

    pub fn total_bytes(&self) -> u64 {
        self.files().map(|(_, size, _)| size).sum()
    }

    /// Every file entry as (entry, size, BLAKE3: the name of its body).
    pub fn files(&self) -> impl Iterator<Item = (&Entry, u64, Blake3)> {
        self.entries.iter().filter_map(|e| match e.kind {
            EntryKind::File { size, blake3, .. } => Some((&**e, size, blake3)),
            _ => None,
        })
    }

    /// Files with their index, size and body.
    pub fn indexed_files(&self) -> impl Iterator<Item = (u32, &Entry, u64, Blake3)> {
        // (A manifest has at most `u32::MAX` entries.)
        (0u32..)
            .zip(self.entries.iter())
            .filter_map(|(i, e)| e.body().map(|(size, id)| (i, &**e, size, id)))
    }

    /// The indexes of the files of `self` that lie in subtrees differing from `old`: whole
    /// subtrees whose digest equals the one at the same path in `old` are skipped without
    /// being walked.
    pub fn changed_files(&self, old: &Manifest) -> Vec<u32> {
        let mut out = Vec::new();
        if self.root == old.root {
            return out;
        }
        let mut i = 0;
        while i < self.entries.len() {
            let e = &self.entries[i];
            let same = self.unchanged_in(i, old);
            match &e.kind {
                EntryKind::Dir if same => i = self.subtree_end(i),
                EntryKind::File { .. } => {
                    if !same {
                        // (A manifest has at most `u32::MAX` entries.)
                        out.push(i as u32);
                    }
                    i += 1;
                }
                _ => i += 1,
            }
        }
        out
    }

    /// Paths of files and symlinks that `self` adds or changes relative to `old`, then those
    /// it deletes (what a CDN purge needs), skipping subtrees identical in both.
    pub fn diff_paths(&self, old: &Manifest) -> Vec<String> {
        let mut out = Vec::new();
        if self.root == old.root {
            return out;
        }
        for (a, b, deleted) in [(self, old, false), (old, self, true)] {
            let mut i = 0;
            while i < a.entries.len() {
                if a.unchanged_in(i, b) {
                    i = a.subtree_end(i);
                    continue;
                }
                let e = &a.entries[i];
                let in_b = b.get(&e.path);
                let report = match &e.kind {
                    EntryKind::Dir => false,
                    _ if deleted => in_b.is_none_or(|be| matches!(be.kind, EntryKind::Dir)),
                    _ => true,
                };
                if report {
                    out.push(e.path.clone());
                }
                i += 1;
            }
        }
        out
    }

    /// Whether entry `i` (with everything below it, for a directory) is identical in `old`.
    pub fn unchanged_in(&self, i: usize, old: &Manifest) -> bool {
        old.position(&self.entries[i].path)
            .is_some_and(|j| self.same_as(i, old, j))
    }

    /// Index just past entry `i` and, for a directory, everything below it.
    pub fn subtree_end(&self, i: usize) -> usize {
        if !matches!(self.entries[i].kind, EntryKind::Dir) {
            return i + 1;
        }
        let prefix = format!("{}/", self.entries[i].path);
        let rest = &self.entries[i + 1..];
        i + 1 + rest.partition_point(|e| e.path.starts_with(&prefix))
    }
}

/// Digests of a manifest's entries that are known before its hash tree is computed: those of
/// the entries it kept from the manifest it was spliced from (see
/// [`crate::tree::delta::splice_known`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Known {
    /// The manifest the kept entries come from.
    pub base: Option<Manifest>,
    /// Runs of kept entries, ascending: `(start, base_start, len)` says that entries
    /// `start..start + len` are the base's from `base_start` on. A file's or symlink's digest
    /// depends on the entry alone; a directory keeps its digest only if it is in `subtrees`.
    pub runs: Vec<(usize, usize, usize)>,
    /// Kept directories whose whole subtree is kept as it was, as index ranges `start..end`
    /// (the directory first), ascending by start.
    pub subtrees: Vec<(usize, usize)>,
}

impl Known {
    /// Adds entry `at`, kept from the base's entry `base_at` (runs grow as entries come).
    pub fn keep(&mut self, at: usize, base_at: usize) {
        if let Some((start, base_start, len)) = self.runs.last_mut() {
            if *start + *len == at && *base_start + *len == base_at {
                *len += 1;
                return;
            }
        }
        self.runs.push((at, base_at, 1));
    }

    /// Finds the kept directories whose whole subtree is kept ([`Known::subtrees`]) in
    /// `entries`, the list the runs describe.
    pub fn find_subtrees(&mut self, entries: &[Arc<Entry>]) {
        let Some(base) = &self.base else {
            return;
        };
        let b = base.entries();
        let mut whole = Vec::new();
        for &(at, start, len) in &self.runs {
            let end = start + len;
            for (k, e) in b.iter().enumerate().take(end).skip(start) {
                if matches!(e.kind, EntryKind::Dir) {
                    let sub_end = base.subtree_end(k);
                    if sub_end <= end {
                        whole.push((at + k - start, at + sub_end - start));
                    }
                }
            }
        }
        // Entries right after a kept subtree may still lie below its directory (added after
        // the run): then that directory changed.
        self.subtrees = whole
            .into_iter()
            .filter(|&(s, e)| {
                entries.get(e).is_none_or(|next| {
                    let dir = &entries[s].path;
                    !(next.path.len() > dir.len()
                        && next.path.starts_with(dir.as_str())
                        && next.path.as_bytes()[dir.len()] == b'/')
                })
            })
            .collect();
    }

    /// Appends the digests of the directories in `start..end` (kept entries) to `out`, last
    /// first, as they were in the base.
    fn copy_dirs_rev(&self, start: usize, end: usize, out: &mut Vec<(u32, Blake3)>) {
        let Some(base) = &self.base else {
            return;
        };
        let first = self.runs.partition_point(|&(s, _, len)| s + len <= start);
        let last = first + self.runs[first..].partition_point(|r| r.0 < end);
        for &(s, base_start, len) in self.runs[first..last].iter().rev() {
            let (lo, hi) = (start.max(s), end.min(s + len));
            let (blo, bhi) = (base_start + lo - s, base_start + hi - s);
            let from = base.dirs.partition_point(|&(k, _)| (k as usize) < blo);
            let to = base.dirs.partition_point(|&(k, _)| (k as usize) < bhi);
            // (A manifest has at most `u32::MAX` entries.)
            out.extend(
                base.dirs[from..to]
                    .iter()
                    .rev()
                    .map(|&(k, d)| ((k as usize - base_start + s) as u32, d)),
            );
        }
    }
}

/// Computes the directories' digests and the root digest, bottom-up over the pre-order list
/// (each file's or symlink's digest is hashed on the way, from its entry). A whole kept
/// subtree in `known` is skipped at once: its directories' digests are copied from the base,
/// and nothing below its directory is hashed.
fn hash_tree(entries: &[Arc<Entry>], known: Option<&Known>) -> (Vec<(u32, Blake3)>, Blake3) {
    // The directories' digests, last first.
    let mut dirs: Vec<(u32, Blake3)> = Vec::new();
    // The outermost whole kept subtrees, by their last index.
    let mut skip: HashMap<usize, usize> = HashMap::new();
    if let Some(k) = known {
        let mut covered = 0;
        for &(start, end) in &k.subtrees {
            if start >= covered && end > start && end <= entries.len() {
                skip.insert(end - 1, start);
                covered = end;
            }
        }
    }
    // Per directory path: the serialized (name, digest) of its children, in reverse order.
    let mut children: HashMap<&str, Vec<u8>> = HashMap::new();
    let mut next = entries.len();
    while next > 0 {
        let mut i = next - 1;
        next = i;
        let e = &entries[i];
        let digest = match (skip.get(&i), known) {
            (Some(&start), Some(k)) => {
                let had = dirs.len();
                k.copy_dirs_rev(start, i + 1, &mut dirs);
                i = start;
                next = start;
                match dirs.last() {
                    Some(&(at, d)) if dirs.len() > had && at as usize == start => d,
                    _ => unreachable!("a kept subtree begins with its directory"),
                }
            }
            _ if matches!(e.kind, EntryKind::Dir) => {
                let d = entry_digest(e, &children.remove(e.path.as_str()).unwrap_or_default());
                // (A manifest has at most `u32::MAX` entries.)
                dirs.push((i as u32, d));
                d
            }
            _ => entry_digest(e, &[]),
        };
        let e = &entries[i];
        let acc = children.entry(e.parent()).or_default();
        acc.extend((e.name().len() as u64).to_le_bytes());
        acc.extend(e.name().as_bytes());
        acc.extend(digest.0);
    }
    let root = Blake3::of(&children.remove("").unwrap_or_default());
    dirs.reverse();
    dirs.shrink_to_fit();
    (dirs, root)
}

/// The digest of one entry: of its own fields, and for a directory of its children's names
/// and digests (`children`, gathered by [`hash_tree`]; ignored for any other entry).
fn entry_digest(e: &Entry, children: &[u8]) -> Blake3 {
    let mut h = blake3::Hasher::new();
    h.update(&e.mode.to_le_bytes());
    match &e.kind {
        EntryKind::File {
            size,
            md5,
            blake3,
            mtime,
            chunks,
        } => {
            // The chunk BLAKE3s follow from the whole one (checked above); their MD5s not.
            h.update(b"f");
            h.update(&size.to_le_bytes());
            h.update(&md5.0);
            h.update(&blake3.0);
            h.update(&mtime.to_le_bytes());
            for c in chunks {
                h.update(&c.md5.0);
            }
        }
        EntryKind::Symlink { target } => {
            h.update(b"l");
            h.update(&(target.len() as u64).to_le_bytes());
            h.update(target.as_bytes());
        }
        EntryKind::Dir => {
            h.update(b"d");
            h.update(children);
        }
    }
    Blake3(*h.finalize().as_bytes())
}

impl Serialize for Manifest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.entries.iter().map(|e| &**e))
    }
}

impl<'de> Deserialize<'de> for Manifest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let entries = Vec::<Arc<Entry>>::deserialize(d)?;
        Manifest::from_shared(entries).map_err(serde::de::Error::custom)
    }
}

/// Entries for unit tests across the crate.
#[cfg(test)]
pub(crate) mod fixtures {
    use super::{Entry, EntryKind};
    use crate::tree::BodyHasher;

    /// A file entry holding `body`.
    pub fn file(path: &str, body: &[u8]) -> Entry {
        let mut h = BodyHasher::new(true, true);
        h.update(body);
        let b = h.finish();
        Entry {
            path: path.into(),
            mode: 0o644,
            kind: EntryKind::File {
                size: b.size,
                md5: b.md5,
                blake3: b.blake3,
                mtime: 1_700_000_000,
                chunks: b.chunks,
            },
        }
    }

    /// A directory entry.
    pub fn dir(path: &str) -> Entry {
        Entry {
            path: path.into(),
            mode: 0o755,
            kind: EntryKind::Dir,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fixtures::{dir, file};
    use super::*;
    use crate::tree::CHUNK;

    proptest::proptest! {
        #[test]
        fn path_order_is_the_order_of_the_components(a in "[ab/.-]{0,6}", b in "[ab/.-]{0,6}") {
            proptest::prop_assert_eq!(path_order(&a, &b), a.split('/').cmp(b.split('/')));
        }

        /// The parent check (a stack of the directories the walk is in) agrees with asking,
        /// for every entry, whether its parent is listed as a directory.
        #[test]
        fn an_entry_is_refused_exactly_when_its_parent_is_not_a_listed_directory(
            items in proptest::collection::btree_map("[ab]{1,2}(/[ab]{1,2}){0,3}", proptest::bool::ANY, 1..24)
        ) {
            let entries: Vec<Entry> = items
                .iter()
                .map(|(p, is_dir)| if *is_dir { dir(p) } else { file(p, b"") })
                .collect();
            let listed_dirs: HashMap<&str, bool> =
                items.iter().map(|(p, d)| (p.as_str(), *d)).collect();
            let orphan = items.keys().any(|p| {
                p.rsplit_once('/')
                    .is_some_and(|(parent, _)| listed_dirs.get(parent) != Some(&true))
            });
            match Manifest::from_entries(entries) {
                Ok(_) => proptest::prop_assert!(!orphan),
                Err(ManifestError::NoParentDir(..)) => proptest::prop_assert!(orphan),
                Err(e) => proptest::prop_assert!(false, "{e}"),
            }
        }
    }

    #[test]
    fn a_parent_is_found_after_deeper_subtrees_and_not_by_a_prefix_of_its_name() {
        let ok = Manifest::from_entries(vec![
            dir("a"),
            dir("a/b"),
            dir("a/b/c"),
            file("a/b/c/f", b""),
            file("a/d", b""),
            dir("ab"),
            file("ab/x", b""),
        ]);
        assert!(ok.is_ok(), "{ok:?}");
        for bad in [
            vec![dir("a"), file("a/x", b""), file("ab/y", b"")],
            vec![dir("a"), dir("a/b"), file("a/b/f", b""), file("a/c/d", b"")],
        ] {
            assert!(matches!(
                Manifest::from_entries(bad),
                Err(ManifestError::NoParentDir(..))
            ));
        }
    }

    fn tree(extra: &[u8]) -> Manifest {
        Manifest::from_entries(vec![
            dir("a"),
            file("a/1", b"one"),
            dir("a/deep"),
            file("a/deep/2", b"two"),
            file("a-b", b"sibling"),
            dir("z"),
            file("z/3", extra),
        ])
        .unwrap()
    }

    #[test]
    fn component_order_keeps_subtrees_contiguous() {
        let m = tree(b"three");
        let paths: Vec<_> = m.entries().iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, ["a", "a/1", "a/deep", "a/deep/2", "a-b", "z", "z/3"]);
    }

    #[test]
    fn digests_follow_content() {
        let a = tree(b"three");
        let b = tree(b"three");
        let c = tree(b"THREE");
        assert_eq!(a.root_digest(), b.root_digest());
        assert_ne!(a.root_digest(), c.root_digest());
        let digest = |m: &Manifest, p: &str| m.digest(m.position(p).unwrap());
        assert_eq!(digest(&a, "a"), digest(&c, "a"));
        assert_ne!(digest(&a, "z"), digest(&c, "z"));
        // A rename changes the tree digest.
        let owned = || {
            a.entries()
                .iter()
                .map(|e| Entry::clone(e))
                .collect::<Vec<_>>()
        };
        let mut renamed = owned();
        renamed[1].path = "a/0".into();
        assert_ne!(
            Manifest::from_entries(renamed).unwrap().root_digest(),
            a.root_digest()
        );
        // A mode change does too.
        let mut chmod = owned();
        chmod[1].mode = 0o600;
        assert_ne!(
            Manifest::from_entries(chmod).unwrap().root_digest(),
            a.root_digest()
        );
    }

    #[test]
    fn a_chunk_list_of_the_wrong_length_is_refused() {
        let mut e = file("big", b"x");
        let sums = Sums {
            md5: Md5::of(b"x"),
            blake3: Blake3::of(b"x"),
        };
        e.kind = EntryKind::File {
            size: CHUNK + 1,
            md5: Md5::of(b"x"),
            blake3: Blake3::of(b"x"),
            mtime: 0,
            chunks: vec![sums],
        };
        assert_eq!(
            Manifest::from_entries(vec![e.clone()]),
            Err(ManifestError::BadChunks("big".into(), 1, 2))
        );
        // Chunk BLAKE3s that do not merge into the whole one.
        if let EntryKind::File { chunks, .. } = &mut e.kind {
            chunks.push(sums);
        }
        assert_eq!(
            Manifest::from_entries(vec![e]),
            Err(ManifestError::ChunksDisagree("big".into()))
        );
    }

    #[test]
    fn changed_files_skips_equal_subtrees() {
        let old = tree(b"three");
        let new = tree(b"THREE");
        let changed: Vec<_> = new
            .changed_files(&old)
            .iter()
            .map(|&i| new.entries()[i as usize].path.clone())
            .collect();
        assert_eq!(changed, ["z/3"]);
        assert!(new.changed_files(&new).is_empty());
        assert_eq!(new.changed_files(&Manifest::empty()).len(), 4);
    }

    #[test]
    fn diff_paths_lists_adds_changes_and_deletes() {
        let old = Manifest::from_entries(vec![
            dir("a"),
            file("a/same", b"s"),
            file("a/edit", b"1"),
            file("gone", b"g"),
            file("becomes-dir", b"f"),
        ])
        .unwrap();
        let new = Manifest::from_entries(vec![
            dir("a"),
            file("a/same", b"s"),
            file("a/edit", b"2"),
            file("added", b"n"),
            dir("becomes-dir"),
            file("becomes-dir/inside", b"i"),
        ])
        .unwrap();
        assert_eq!(
            new.diff_paths(&old),
            [
                "a/edit",
                "added",
                "becomes-dir/inside",
                "becomes-dir",
                "gone"
            ]
        );
        assert!(new.diff_paths(&new).is_empty());
    }

    #[test]
    fn hostile_entries_are_refused() {
        let bad = |entries: Vec<Entry>| Manifest::from_entries(entries).unwrap_err();
        for p in [
            "/etc/passwd",
            "../x",
            "a/../../x",
            "a//b",
            "./a",
            "a/",
            "",
            "nul\0byte",
        ] {
            assert!(
                matches!(bad(vec![file(p, b"")]), ManifestError::UnsafePath(_)),
                "{p:?}"
            );
        }
        assert!(matches!(
            bad(vec![file("x", b""), file("x", b"1")]),
            ManifestError::Duplicate(_)
        ));
        assert!(matches!(
            bad(vec![file("x", b""), file("x/y", b"")]),
            ManifestError::NoParentDir(..)
        ));
        assert!(matches!(
            bad(vec![file("x/y", b"")]),
            ManifestError::NoParentDir(..)
        ));
        let link = Entry {
            path: "l".into(),
            mode: 0o777,
            kind: EntryKind::Symlink { target: "/".into() },
        };
        assert!(matches!(
            bad(vec![link, file("l/y", b"")]),
            ManifestError::NoParentDir(..)
        ));
        let mut m = file("x", b"");
        m.mode = 0o10000;
        assert!(matches!(bad(vec![m]), ManifestError::BadMode(..)));
    }
}
