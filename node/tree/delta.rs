//! Manifest deltas: a manifest described by the runs of entries it shares with an older one.
//!
//! Both manifests are in component order (a directory right before everything below it), so
//! the entries a new manifest keeps from its base form a few ascending runs of the base's
//! list. [`diff`] walks the two lists side by side and skips, without looking inside, every
//! subtree whose digest is the same at the same path; [`splice`] rebuilds the entry list from
//! the base and the runs. A delta carries no trust of its own: the receiver validates the
//! rebuilt list as it would a whole manifest, recomputes the hash tree and checks the origin's
//! signature over its root, so a wrong or hostile delta can only make a release be refused.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::manifest::{path_order, Entry, EntryKind, Known, Manifest};

/// One run of a delta, in the order of the new manifest's entries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Run {
    /// `len` entries of the base, from index `from`.
    Keep { from: u64, len: u64 },
    /// Entries the base does not have as they are.
    New(Vec<Entry>),
}

/// Why a delta cannot be applied to a base.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeltaError {
    #[error("a run keeps entries {from}..{end} of a base of {len} entries, or goes back")]
    BadKeep { from: u64, end: u64, len: usize },
    #[error("it is given against release {version}, which this node does not have")]
    WrongBase { version: u64 },
}

/// The runs that turn `old`'s entries into `new`'s: O(changed entries × depth) comparisons,
/// plus one per entry of each directory walked into.
pub fn diff(old: &Manifest, new: &Manifest) -> Vec<Run> {
    let (a, b) = (old.entries(), new.entries());
    let mut runs = Runs::default();
    let (mut i, mut j) = (0, 0);
    while j < b.len() {
        let Some(oe) = a.get(i) else {
            runs.add(Entry::clone(&b[j]));
            j += 1;
            continue;
        };
        let ne = &b[j];
        match path_order(&oe.path, &ne.path) {
            std::cmp::Ordering::Less => i = old.subtree_end(i),
            std::cmp::Ordering::Greater => {
                runs.add(Entry::clone(ne));
                j += 1;
            }
            std::cmp::Ordering::Equal if oe != ne => {
                runs.add(Entry::clone(ne));
                i += 1;
                j += 1;
            }
            std::cmp::Ordering::Equal => {
                let (i_end, j_end) = (old.subtree_end(i), new.subtree_end(j));
                let whole = matches!(ne.kind, EntryKind::Dir)
                    && old.digest(i) == new.digest(j)
                    && i_end - i == j_end - j;
                let n = if whole { j_end - j } else { 1 };
                runs.keep(i, n);
                i += n;
                j += n;
            }
        }
    }
    runs.0
}

/// Rebuilds an entry list from `base` and `runs`. Kept runs must be ascending and inside the
/// base, so the list is never longer than the base plus the new entries the delta carries.
pub fn splice(base: &[Arc<Entry>], runs: Vec<Run>) -> Result<Vec<Arc<Entry>>, DeltaError> {
    let mut out = Vec::with_capacity(base.len());
    let mut next = 0u64;
    for run in runs {
        match run {
            Run::Keep { from, len } => {
                let (start, end) = keep_range(from, len, next, base.len())?;
                out.extend_from_slice(&base[start..end]);
                next = end as u64;
            }
            Run::New(entries) => out.extend(entries.into_iter().map(Arc::new)),
        }
    }
    Ok(out)
}

/// [`splice`], also returning what is known of the rebuilt list's digests: every kept
/// entry's digest in `base`, and the kept directories whose whole subtree is kept as it was
/// (inside one run, with nothing new after it below that directory), so the hash tree need
/// not be computed again for them ([`Manifest::from_sorted_known`]). A hostile delta gains
/// nothing from this: the list is validated as before, and an entry's known digest is the
/// digest of the very entry kept.
pub fn splice_known(
    base: &Manifest,
    runs: Vec<Run>,
) -> Result<(Vec<Arc<Entry>>, Known), DeltaError> {
    let b = base.entries();
    let mut out = Vec::with_capacity(b.len());
    let mut known = Known {
        base: Some(base.clone()),
        ..Known::default()
    };
    let mut next = 0u64;
    for run in runs {
        match run {
            Run::Keep { from, len } => {
                let (start, end) = keep_range(from, len, next, b.len())?;
                let at = out.len();
                out.extend_from_slice(&b[start..end]);
                if end > start {
                    known.runs.push((at, start, end - start));
                }
                next = end as u64;
            }
            Run::New(entries) => out.extend(entries.into_iter().map(Arc::new)),
        }
    }
    known.find_subtrees(&out);
    Ok((out, known))
}

/// The base indexes a keep run covers, if it lies inside the base and does not go back.
fn keep_range(
    from: u64,
    len: u64,
    next: u64,
    base_len: usize,
) -> Result<(usize, usize), DeltaError> {
    let end = from.checked_add(len).filter(|&e| e <= base_len as u64);
    match end.filter(|_| from >= next) {
        Some(end) => Ok((from as usize, end as usize)),
        None => Err(DeltaError::BadKeep {
            from,
            end: from.saturating_add(len),
            len: base_len,
        }),
    }
}

/// Runs under construction: adjacent keeps merge, new entries gather in one run.
#[derive(Default)]
struct Runs(Vec<Run>);

impl Runs {
    fn keep(&mut self, from: usize, len: usize) {
        let (from, len) = (from as u64, len as u64);
        if let Some(Run::Keep { from: f, len: l }) = self.0.last_mut() {
            if *f + *l == from {
                *l += len;
                return;
            }
        }
        self.0.push(Run::Keep { from, len });
    }

    fn add(&mut self, e: Entry) {
        if let Some(Run::New(v)) = self.0.last_mut() {
            v.push(e);
            return;
        }
        self.0.push(Run::New(vec![e]));
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::tree::manifest::fixtures::{dir, file};

    fn site(n: usize, changed: &[usize]) -> Manifest {
        let mut v = Vec::new();
        for d in 0..n {
            v.push(dir(&format!("d{d:03}")));
            for f in 0..n {
                let body = if changed.contains(&(d * n + f)) {
                    format!("new {d}/{f}")
                } else {
                    format!("{d}/{f}")
                };
                v.push(file(&format!("d{d:03}/f{f:03}"), body.as_bytes()));
            }
        }
        Manifest::from_entries(v).unwrap()
    }

    /// `new` rebuilt from `old` and their delta, both ways: hashing every entry, and taking
    /// what is known from `old` (which must give the same manifest, digests included).
    fn rebuilt(old: &Manifest, new: &Manifest) -> Manifest {
        let runs = diff(old, new);
        let full = Manifest::from_shared(splice(old.entries(), runs.clone()).unwrap()).unwrap();
        let (entries, known) = splice_known(old, runs).unwrap();
        let fast = Manifest::from_sorted_known(entries, Some(&known)).unwrap();
        assert_eq!(fast, full);
        assert_eq!(fast.root_digest(), full.root_digest());
        for i in 0..full.entries().len() {
            assert_eq!(fast.digest(i), full.digest(i), "{}", full.entries()[i].path);
        }
        full
    }

    #[test]
    fn a_kept_subtree_with_an_entry_added_after_it_is_hashed_again() {
        let old = Manifest::from_entries(vec![
            dir("a"),
            file("a/x", b"x"),
            dir("a/sub"),
            file("a/sub/y", b"y"),
            file("b", b"b"),
        ])
        .unwrap();
        // The delta keeps `a` whole in one run, then adds an entry under it: `a` changed.
        let runs = vec![
            Run::Keep { from: 0, len: 4 },
            Run::New(vec![file("a/z", b"z")]),
            Run::Keep { from: 4, len: 1 },
        ];
        let (entries, known) = splice_known(&old, runs.clone()).unwrap();
        assert_eq!(known.subtrees, [(1, 3)], "only a/sub is kept whole");
        let fast = Manifest::from_sorted_known(entries, Some(&known)).unwrap();
        let full = Manifest::from_shared(splice(old.entries(), runs).unwrap()).unwrap();
        assert_eq!(fast.root_digest(), full.root_digest());
        assert_ne!(fast.root_digest(), old.root_digest());
    }

    #[test]
    fn one_changed_file_sends_one_entry_and_its_directory() {
        let (old, new) = (site(30, &[]), site(30, &[17 * 30 + 4]));
        let runs = diff(&old, &new);
        let sent: Vec<&str> = runs
            .iter()
            .filter_map(|r| match r {
                Run::New(v) => Some(v.iter().map(|e| e.path.as_str())),
                Run::Keep { .. } => None,
            })
            .flatten()
            .collect();
        assert_eq!(sent, ["d017/f004"]);
        // Keep up to the file, then everything after it: two runs of the base.
        assert_eq!(runs.len(), 3, "{runs:?}");
        assert_eq!(rebuilt(&old, &new), new);
    }

    #[test]
    fn nothing_changed_is_one_run_and_nothing_held_is_every_entry() {
        let m = site(5, &[]);
        assert_eq!(
            diff(&m, &m),
            [Run::Keep {
                from: 0,
                len: m.entries().len() as u64
            }]
        );
        let runs = diff(&Manifest::empty(), &m);
        assert_eq!(
            runs,
            [Run::New(
                m.entries().iter().map(|e| Entry::clone(e)).collect()
            )]
        );
        assert_eq!(rebuilt(&m, &Manifest::empty()), Manifest::empty());
    }

    #[test]
    fn deletes_type_changes_and_new_subtrees_rebuild_exactly() {
        let old = Manifest::from_entries(vec![
            dir("a"),
            file("a/1", b"1"),
            dir("a/b"),
            file("a/b/2", b"2"),
            file("c", b"c"),
            dir("gone"),
            file("gone/x", b"x"),
            file("z", b"z"),
        ])
        .unwrap();
        let new = Manifest::from_entries(vec![
            dir("a"),
            file("a/1", b"1"),
            file("a/b", b"now a file"),
            dir("c"),
            file("c/in", b"in"),
            dir("fresh"),
            file("fresh/y", b"y"),
            file("z", b"z"),
        ])
        .unwrap();
        assert_eq!(rebuilt(&old, &new), new);
        assert_eq!(rebuilt(&new, &old), old);
    }

    #[test]
    fn keeps_outside_the_base_or_going_back_are_refused() {
        let base = site(2, &[]).entries().to_vec();
        let n = base.len() as u64;
        for runs in [
            vec![Run::Keep {
                from: 0,
                len: n + 1,
            }],
            vec![Run::Keep { from: n, len: 1 }],
            vec![Run::Keep {
                from: u64::MAX,
                len: 2,
            }],
            vec![Run::Keep { from: 1, len: 1 }, Run::Keep { from: 0, len: 1 }],
        ] {
            assert!(matches!(
                splice(&base, runs),
                Err(DeltaError::BadKeep { .. })
            ));
        }
        assert!(splice(&base, vec![]).unwrap().is_empty());
    }

    proptest! {
        #[test]
        fn any_two_trees_rebuild_exactly(
            old in prop::collection::btree_map(0u8..40, 0u8..3, 0..30),
            new in prop::collection::btree_map(0u8..40, 0u8..3, 0..30),
        ) {
            // Paths d<k/8>/f<k>, and below d<k/8>/e<k/4> for odd k: directories at two
            // levels, files that appear, vanish or change.
            let make = |m: &std::collections::BTreeMap<u8, u8>| {
                let mut v = Vec::new();
                for (&k, &body) in m {
                    let mut d = format!("d{}", k / 8);
                    if !v.iter().any(|e: &Entry| e.path == d) {
                        v.push(dir(&d));
                    }
                    if k % 2 == 1 {
                        d = format!("{d}/e{}", k / 4);
                        if !v.iter().any(|e: &Entry| e.path == d) {
                            v.push(dir(&d));
                        }
                    }
                    v.push(file(&format!("{d}/f{k}"), &[body]));
                }
                Manifest::from_entries(v).unwrap()
            };
            let (a, b) = (make(&old), make(&new));
            prop_assert_eq!(rebuilt(&a, &b), b.clone());
            prop_assert_eq!(rebuilt(&b, &a), a);
        }

        #[test]
        fn any_delta_hashes_the_same_with_what_its_base_gave(
            old in prop::collection::btree_map(0u8..64, 0u8..3, 0..40),
            runs in prop::collection::vec((0u8..3, 0u8..20, 0u8..6, 0u8..64), 0..8),
        ) {
            // Paths d<k/16>/e<k/4>/f<k>: two levels of directories. Runs keep arbitrary
            // ranges of the base or add entries, as a hostile parent could: both ways of
            // hashing must agree on every list that validates, and refuse the same others.
            let mut v = Vec::new();
            for (&k, &body) in &old {
                let (d, e) = (format!("d{}", k / 16), format!("d{}/e{}", k / 16, k / 4));
                for p in [&d, &e] {
                    if !v.iter().any(|x: &Entry| &x.path == p) {
                        v.push(dir(p));
                    }
                }
                v.push(file(&format!("{e}/f{k}"), &[body]));
            }
            let base = Manifest::from_entries(v).unwrap();
            let mut next = 0u64;
            let runs: Vec<Run> = runs
                .into_iter()
                .map(|(what, from, len, k)| match what {
                    0 | 1 => {
                        let from = next + u64::from(from) % 4;
                        next = from + u64::from(len);
                        Run::Keep { from, len: u64::from(len) }
                    }
                    _ => Run::New(vec![file(&format!("d{}/e{}/g{k}", k / 16, k / 4), b"n")]),
                })
                .collect();
            let full = splice(base.entries(), runs.clone()).map(Manifest::from_shared);
            let fast = splice_known(&base, runs)
                .map(|(entries, known)| Manifest::from_sorted_known(entries, Some(&known)));
            match (full, fast) {
                (Ok(Ok(a)), Ok(Ok(b))) => {
                    prop_assert_eq!(a.root_digest(), b.root_digest());
                    prop_assert_eq!(a, b);
                }
                (Ok(Err(a)), Ok(Err(b))) => prop_assert_eq!(a, b),
                (Err(a), Err(b)) => prop_assert_eq!(a, b),
                (a, b) => prop_assert!(false, "{:?} against {:?}", a.map(|r| r.is_ok()), b.map(|r| r.is_ok())),
            }
        }
    }
}
