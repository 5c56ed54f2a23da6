//! What to fetch for an offered release, and the steps from offer to held: find the bodies
//! that neither the store nor (on a node whose `dir` is its only copy) `dir` holds, take
//! renamed files' bodies from their old paths, fetch the rest, land the release, and fetch
//! again whatever the apply finds missing.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use quinn::Connection;
use tracing::{debug, info};

use super::bodies::{self, expected};
use super::held::Offer;
use super::land::land;
use super::shared::Shared;
use super::SyncError;
use crate::data::{short_of_room, Stage};
use crate::dir::{Applier, ApplyError};
use crate::status::NodeState;
use crate::tree::{runs_by_body, sort_by_body, Blake3, Entry, Manifest, Release};

/// Fetches every body of `release` this node lacks, verifies each, applies, and holds it.
/// A node with children offers the release to them as soon as its bodies are registered in
/// flight, and serves each body's verified prefix while the rest arrives.
pub async fn release(
    shared: &Arc<Shared>,
    conn: &Connection,
    release: &Release,
) -> Result<(), SyncError> {
    let started = Instant::now();
    let version = release.version;
    let old = shared.held.current();
    super::push::take(shared, release).await?;
    // What this node pushed on to its children goes out before they are offered the
    // release, so that they wait for it (as the origin's pushes do).
    shared.pusher.written(super::push::WRITTEN).await;
    // How long each step before the first request takes (a node whose `dir` is its only
    // copy checks each changed file there).
    let planning = Instant::now();
    // (Off the async threads: on a node whose `dir` is its only copy, an `lstat` per file.)
    let (me, rel, prev) = (shared.clone(), release.clone(), old.clone());
    let (wanted, shared_bodies) =
        tokio::task::spawn_blocking(move || wanted(&me, &rel, prev.as_ref()))
            .await
            .expect("planning a fetch does not panic")?;
    let found = Instant::now();
    let wanted = match (&shared.applier, &old) {
        (Some(a), Some(old)) if a.dir_is_only_copy() => {
            adopt_moved(shared, a, old, release, wanted).await?
        }
        _ => wanted,
    };
    let adopted = Instant::now();
    let stage = stage(shared, release, &wanted, shared_bodies).await?;
    debug!(
        wanted_ms = (found - planning).as_millis() as u64,
        adopt_ms = (adopted - found).as_millis() as u64,
        stage_ms = adopted.elapsed().as_millis() as u64,
        "planned"
    );
    let size = |&i: &u32| release.manifest.body_size(i);
    let mut files = wanted.len() as u64;
    let mut total: u64 = wanted.iter().map(size).sum();
    check_room(shared, total)?;
    info!(files, bytes = total, "fetching");
    let done = Arc::new(AtomicU64::new(0));
    bodies::fetch_all(shared, conn, wanted, release, &done, stage.as_ref()).await?;
    debug!(
        ms = started.elapsed().as_millis() as u64,
        staged = stage.as_ref().map_or(0, |s| s.count()),
        "bodies received"
    );
    shared
        .board
        .set_own(|s| s.state = NodeState::Applying { version });
    match land(shared, release.clone(), stage.clone()).await {
        Err(SyncError::Apply(ApplyError::MissingBodies(missing))) => {
            // Files that drifted from bodies only `dir` held: fetch those and apply again.
            let mut missing: HashSet<Blake3> = missing.into_iter().collect();
            let wanted: Vec<u32> = release
                .manifest
                .indexed_files()
                .filter(|(.., id)| missing.remove(id) && !shared.store.has(id))
                .map(|(i, ..)| i)
                .collect();
            info!(files = wanted.len(), "fetching bodies missing from dir");
            files += wanted.len() as u64;
            total += wanted.iter().map(size).sum::<u64>();
            // Into the store: the stage keeps what it has (nothing was applied yet).
            bodies::fetch_all(shared, conn, wanted, release, &done, None).await?;
            shared
                .board
                .set_own(|s| s.state = NodeState::Applying { version });
            land(shared, release.clone(), stage).await?;
        }
        r => r?,
    }
    // What actually crossed the link (less than `total` when transfers were resumed).
    let fetched = done.load(Ordering::Relaxed);
    shared.board.set_own(|s| {
        s.fetched_bytes = fetched;
        s.fetched_files = files;
    });
    info!(
        files,
        bytes = total,
        ms = started.elapsed().as_millis() as u64,
        "release {version} held"
    );
    Ok(())
}

/// Refuses, before a byte is fetched, a release whose new bodies cannot fit on the store's
/// filesystem: a relay (with or without `dir`) would otherwise fill its disk half-way and
/// leave partial bodies behind. Retried like any failed sync, so it converges once there is
/// room. (The apply checks `dir`'s own room before it writes.)
fn check_room(shared: &Shared, need: u64) -> Result<(), SyncError> {
    let objects = shared.store.objects();
    match short_of_room(objects, need) {
        Some(free) => Err(SyncError::NoSpace {
            path: objects.to_owned(),
            need,
            free,
        }),
        None => Ok(()),
    }
}

/// The bodies of `release` to fetch, by the index of a file that has each: those of files in
/// subtrees that changed since `old`, once each, that the store lacks and, on a node whose
/// `dir` is its only copy, that `dir` does not hold by the quick check (the apply confirms
/// each by its digests, or asks for it again). Second, those of them whose body another
/// changed file shares (ascending).
fn wanted(
    shared: &Shared,
    release: &Release,
    old: Option<&Arc<Offer>>,
) -> Result<(Vec<u32>, Vec<u32>), SyncError> {
    let empty = Manifest::empty();
    let old_manifest = old.map_or(&empty, |h| &h.release.manifest);
    let changed = release.manifest.changed_files(old_manifest);
    let held = shared.store.has_many();
    let in_store = |id: &Blake3| held.has(id);
    let mut probe = shared.applier.as_ref().map(|a| (a, a.probe()));
    let mut in_dir = |e: &Entry| {
        probe
            .as_mut()
            .is_some_and(|(a, p)| a.body_in_dir(p, Some(old_manifest), e))
    };
    // Paths the node keeps as its own are not applied, so their bodies are not needed.
    let kept = |e: &Entry| {
        shared
            .applier
            .as_ref()
            .is_some_and(|a| !a.keep.is_empty() && a.keep.covers(&e.path, false))
    };
    let entries = release.manifest.entries();
    let mut out: Vec<u32> = changed
        .into_iter()
        .filter(|&i| {
            let e = &entries[i as usize];
            e.body()
                .is_some_and(|(_, id)| !kept(e) && !in_store(&id) && !in_dir(e))
        })
        .collect();
    // A body `dir` holds at one path may still be needed at another: once each only after.
    let shared_bodies = once_each(&release.manifest, &mut out);
    Ok((out, shared_bodies))
}

/// Keeps, of the files in `list` (ascending indexes) that share a body, the first (sorted by
/// body, a few bytes a file, where a set of bodies would hold 64 or more). Returns the files
/// kept whose body was shared (ascending).
fn once_each(manifest: &Manifest, list: &mut Vec<u32>) -> Vec<u32> {
    let body = |i: u32| manifest.body_key(i);
    let mut sorted = list.clone();
    sort_by_body(&mut sorted, body);
    let (mut firsts, mut repeats) = (Vec::new(), Vec::new());
    for run in runs_by_body(&sorted, body).filter(|run| run.len() > 1) {
        firsts.push(run[0]);
        repeats.extend_from_slice(&run[1..]);
    }
    drop(sorted);
    if !repeats.is_empty() {
        repeats.sort_unstable();
        list.retain(|i| repeats.binary_search(i).is_err());
    }
    firsts.sort_unstable();
    firsts
}

/// On a node that may stage (see [`Applier::stages`]): a stage for the files of `wanted`
/// small enough to be received whole whose body no other changed file shares
/// (`shared_bodies`), which are written there at their own paths instead of into the store.
async fn stage(
    shared: &Arc<Shared>,
    release: &Release,
    wanted: &[u32],
    shared_bodies: Vec<u32>,
) -> Result<Option<Arc<Stage>>, SyncError> {
    let Some(applier) = shared.applier.clone().filter(|a| a.stages()) else {
        return Ok(None);
    };
    let (version, manifest) = (release.version, release.manifest.clone());
    let candidates: Vec<u32> = (wanted.iter().copied())
        .filter(|i| {
            shared_bodies.binary_search(i).is_err()
                && manifest.body_size(*i) <= bodies::STREAM_ABOVE as u64
        })
        .collect();
    if candidates.is_empty() {
        return Ok(None);
    }
    let me = shared.clone();
    tokio::task::spawn_blocking(move || {
        Stage::plan(&me.store, &applier.dir, version, &manifest, candidates)
            .map(|s| s.map(Arc::new))
    })
    .await
    .expect("planning a stage does not panic")
    .map_err(|e| SyncError::Store(e.into()))
}

/// For a node whose `dir` is the only copy of its bodies: takes each wanted body that the
/// previous release had at another path (a renamed or copied file) from that path, checked
/// by its digests while copying it into the store. Returns the bodies still to fetch.
async fn adopt_moved(
    shared: &Arc<Shared>,
    applier: &Applier,
    old: &Arc<Offer>,
    release: &Release,
    wanted: Vec<u32>,
) -> Result<Vec<u32>, SyncError> {
    let (me, old, applier) = (shared.clone(), old.clone(), applier.clone());
    let manifest = release.manifest.clone();
    tokio::task::spawn_blocking(move || {
        let was = old_paths(&old.release.manifest, &manifest, &wanted);
        // Adopted bodies are flushed with the fetched ones (see `Store::begin_batch`).
        me.store.begin_batch()?;
        let mut rest = Vec::new();
        for i in wanted {
            let Some(e) = expected(&manifest.entries()[i as usize], false) else {
                continue;
            };
            let oe = was
                .binary_search_by(|(id, _)| id.cmp(&e.blake3))
                .ok()
                .map(|k| &old.release.manifest.entries()[was[k].1 as usize]);
            let adopted = match oe {
                Some(oe) if applier.holds_in_dir(oe) => {
                    me.store.adopt(&applier.dir.join(&oe.path), e)?
                }
                _ => false,
            };
            if !adopted {
                rest.push(i);
            }
        }
        Ok(rest)
    })
    .await
    .expect("adopting bodies does not panic")
}

/// Of the bodies of `manifest`'s files `wanted`, those `old` has, each with the index of the
/// first file of `old` that has it, sorted by body: one pass over `old`, holding what is
/// wanted (a few files when a few changed), not a map of every body `old` has.
fn old_paths(old: &Manifest, manifest: &Manifest, wanted: &[u32]) -> Vec<(Blake3, u32)> {
    let mut ids: Vec<Blake3> = wanted
        .iter()
        .filter_map(|&i| manifest.entries()[i as usize].body().map(|(_, id)| id))
        .collect();
    ids.sort_unstable();
    ids.dedup();
    let mut first: Vec<Option<u32>> = vec![None; ids.len()];
    if !ids.is_empty() {
        for (oi, _, _, id) in old.indexed_files() {
            if let Ok(k) = ids.binary_search(&id) {
                first[k].get_or_insert(oi);
            }
        }
    }
    ids.into_iter()
        .zip(first)
        .filter_map(|(id, oi)| Some((id, oi?)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tree::manifest::fixtures::{dir, file};

    #[test]
    fn each_body_is_fetched_once_for_its_first_file() {
        let m = Manifest::from_entries(vec![
            file("a", b"same"),
            file("b", b"other"),
            dir("d"),
            file("d/c", b"same"),
            file("d/e", b"third"),
            file("d/f", b"other"),
            file("g", b"same"),
        ])
        .unwrap();
        let mut list: Vec<u32> = m.indexed_files().map(|(i, ..)| i).collect();
        let shared = once_each(&m, &mut list);
        let paths = |l: &[u32]| -> Vec<String> {
            l.iter()
                .map(|&i| m.entries()[i as usize].path.clone())
                .collect()
        };
        assert_eq!(paths(&list), ["a", "b", "d/e"]);
        // The files kept whose body others share: never staged.
        assert_eq!(paths(&shared), ["a", "b"]);
    }

    #[test]
    fn a_moved_body_is_found_at_its_first_old_path() {
        let old = Manifest::from_entries(vec![
            file("a", b"kept"),
            dir("d"),
            file("d/x", b"moved"),
            file("d/y", b"moved"),
        ])
        .unwrap();
        let new = Manifest::from_entries(vec![
            file("a", b"kept"),
            file("b", b"new"),
            file("z", b"moved"),
        ])
        .unwrap();
        let was = old_paths(&old, &new, &[1, 2]);
        let found: Vec<(&str, &str)> = was
            .iter()
            .map(|&(id, oi)| {
                let n = new.files().find(|(_, _, b)| *b == id).unwrap().0;
                (n.path.as_str(), old.entries()[oi as usize].path.as_str())
            })
            .collect();
        assert_eq!(
            found,
            [("z", "d/x")],
            "b's body is new; z's was first at d/x"
        );
    }
}
