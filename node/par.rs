//! Running blocking work (file reads, writes, hashing) on a few threads at once.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// `f` applied to every item on up to `max_threads` threads (no more than the machine's
/// cores or the items), results in the items' order. The first error stops the others from
/// taking new items and is returned.
pub fn map<T: Sync, R: Send, E: Send>(
    items: &[T],
    max_threads: usize,
    f: impl Fn(&T) -> Result<R, E> + Sync,
) -> Result<Vec<R>, E> {
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, max_threads.max(1))
        .min(items.len());
    if threads <= 1 {
        return items.iter().map(f).collect();
    }
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let work = || -> Result<Vec<(usize, R)>, E> {
        let mut out = Vec::new();
        while !failed.load(Ordering::Relaxed) {
            let i = next.fetch_add(1, Ordering::Relaxed);
            let Some(item) = items.get(i) else {
                break;
            };
            match f(item) {
                Ok(r) => out.push((i, r)),
                Err(e) => {
                    failed.store(true, Ordering::Relaxed);
                    return Err(e);
                }
            }
        }
        Ok(out)
    };
    let done: Vec<Result<Vec<(usize, R)>, E>> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads).map(|_| s.spawn(work)).collect();
        workers
            .into_iter()
            .map(|w| w.join().expect("parallel work does not panic"))
            .collect()
    });
    let mut slots: Vec<Option<R>> = std::iter::repeat_with(|| None).take(items.len()).collect();
    for worker in done {
        for (i, r) in worker? {
            slots[i] = Some(r);
        }
    }
    Ok(slots
        .into_iter()
        .map(|r| r.expect("every item was taken by a worker"))
        .collect())
}

#[cfg(test)]
mod tests {
    #[test]
    fn keeps_order_and_stops_at_an_error() {
        let items: Vec<u32> = (0..1000).collect();
        let out = super::map(&items, 4, |&n| Ok::<_, ()>(n * 2)).unwrap();
        assert_eq!(out, items.iter().map(|n| n * 2).collect::<Vec<_>>());
        let err = super::map(&items, 4, |&n| if n == 500 { Err(n) } else { Ok(n) });
        assert_eq!(err, Err(500));
        assert!(super::map(&[] as &[u32], 4, |&n| Ok::<_, ()>(n))
            .unwrap()
            .is_empty());
    }
}
