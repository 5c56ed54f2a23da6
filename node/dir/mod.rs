//! The served directory, `dir`: the origin's [`scan`] reads it into a manifest (bodies into
//! the store), a receiving node's [`apply`] makes it match a manifest, and its [`Applier`]
//! decides how (in place or atomic) and whether `dir` is the node's only copy of its bodies.
//!
//! Both sides read or write many files; [`par_map`] spreads that over a few threads.

pub mod applier;
pub mod apply;
pub mod beneath;
pub mod rules;
pub mod scan;
pub mod watch;

use std::sync::OnceLock;

pub use applier::{Applier, ApplyMode, Verified};
pub use apply::{held_in_place, kept_conflicts, ApplyError, ApplyStats, Probe};
pub use rules::Rules;
pub use scan::{
    fingerprint, fingerprint_with, scan, scan_with, Dirty, ScanError, ScanStats, Scanned, Scope,
    StatCache, Stored,
};

/// Most threads reading or writing files at once. Hashing is CPU-bound and small files cost
/// mostly system calls, both of which spread over cores; more threads than cores only
/// contend.
const MAX_THREADS: usize = 4;

/// `f` applied to every item on the file pool (up to [`MAX_THREADS`], no more than the
/// machine's cores), results in the items' order. The first error stops the others from
/// taking new items and is returned.
pub fn par_map<T: Sync, R: Send, E: Send>(
    items: &[T],
    f: impl Fn(&T) -> Result<R, E> + Sync + Send,
) -> Result<Vec<R>, E> {
    use rayon::prelude::*;
    match pool() {
        Some(pool) if items.len() > 1 => pool.install(|| items.par_iter().map(f).collect()),
        // One item, or no threads to be had: here, in order.
        _ => items.iter().map(f).collect(),
    }
}

/// `f` applied to every item (taken by value, dropped as it is done) on the file pool, in
/// no particular order; nothing is collected. The first error stops the others from taking
/// new items and is returned.
pub fn par_each<T: Send, E: Send>(
    items: Vec<T>,
    f: impl Fn(T) -> Result<(), E> + Sync + Send,
) -> Result<(), E> {
    use rayon::prelude::*;
    match pool() {
        Some(pool) if items.len() > 1 => pool.install(|| items.into_par_iter().try_for_each(f)),
        _ => items.into_iter().try_for_each(f),
    }
}

/// The file pool: `None` when no threads could be had.
fn pool() -> Option<&'static rayon::ThreadPool> {
    static POOL: OnceLock<Option<rayon::ThreadPool>> = OnceLock::new();
    POOL.get_or_init(|| {
        let threads = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(MAX_THREADS);
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("cascade-files-{i}"))
            .build()
            .ok()
    })
    .as_ref()
}

#[cfg(test)]
mod tests {
    #[test]
    fn keeps_order_and_stops_at_an_error() {
        let items: Vec<u32> = (0..1000).collect();
        let out = super::par_map(&items, |&n| Ok::<_, ()>(n * 2)).unwrap();
        assert_eq!(out, items.iter().map(|n| n * 2).collect::<Vec<_>>());
        let err = super::par_map(&items, |&n| if n == 500 { Err(n) } else { Ok(n) });
        assert_eq!(err, Err(500));
        assert!(super::par_map(&[] as &[u32], |&n| Ok::<_, ()>(n))
            .unwrap()
            .is_empty());
    }

    #[test]
    fn each_item_is_taken_once_and_an_error_is_returned() {
        use std::sync::atomic::{AtomicU64, Ordering};
        let sum = AtomicU64::new(0);
        super::par_each((1..=1000u64).collect(), |n| {
            sum.fetch_add(n, Ordering::Relaxed);
            Ok::<_, ()>(())
        })
        .unwrap();
        assert_eq!(sum.into_inner(), 500_500);
        let err = super::par_each((0..1000u32).collect(), |n| {
            if n == 500 {
                Err(n)
            } else {
                Ok(())
            }
        });
        assert_eq!(err, Err(500));
    }
}
