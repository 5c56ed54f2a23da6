//! Many bodies at once, compactly: a set of bodies as a sorted list ([`BodySet`], 32 bytes a
//! body where a hash set takes 37 to 74), and lists of files sorted by body
//! ([`sort_by_body`], 16 bytes a file while sorting) to find the files that share one. A
//! release of a million files asks both questions of a million bodies on every node.

use super::hash::Blake3;

/// A set of bodies: sorted, looked up by binary search, with removals marked rather than made.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BodySet {
    ids: Vec<Blake3>,
    /// One bit per entry of `ids`: removed.
    removed: Vec<u64>,
    left: usize,
}

impl BodySet {
    pub fn contains(&self, id: &Blake3) -> bool {
        self.position(id).is_some()
    }

    /// Removes `id`; whether it was there.
    pub fn remove(&mut self, id: &Blake3) -> bool {
        let Some(at) = self.position(id) else {
            return false;
        };
        self.removed[at / 64] |= 1 << (at % 64);
        self.left -= 1;
        true
    }

    pub fn len(&self) -> usize {
        self.left
    }

    pub fn is_empty(&self) -> bool {
        self.left == 0
    }

    /// The bodies in the set, in order.
    pub fn iter(&self) -> impl Iterator<Item = &Blake3> {
        (self.ids.iter().enumerate())
            .filter(|(at, _)| !self.is_removed(*at))
            .map(|(_, id)| id)
    }

    fn is_removed(&self, at: usize) -> bool {
        self.removed[at / 64] & (1 << (at % 64)) != 0
    }

    fn position(&self, id: &Blake3) -> Option<usize> {
        let at = self.ids.binary_search(id).ok()?;
        (!self.is_removed(at)).then_some(at)
    }
}

impl FromIterator<Blake3> for BodySet {
    fn from_iter<I: IntoIterator<Item = Blake3>>(iter: I) -> Self {
        let mut ids: Vec<Blake3> = iter.into_iter().collect();
        ids.sort_unstable();
        ids.dedup();
        ids.shrink_to_fit();
        BodySet {
            removed: vec![0; ids.len().div_ceil(64)],
            left: ids.len(),
            ids,
        }
    }
}

/// A body's first 8 bytes as a number: sorting by it sorts 16-byte pairs instead of comparing
/// 32-byte digests looked up through the items.
fn prefix(id: &Blake3) -> u64 {
    let mut first = [0u8; 8];
    first.copy_from_slice(&id.0[..8]);
    u64::from_le_bytes(first)
}

/// The order [`sort_by_body`] sorts bodies in, to search what it sorted.
pub fn body_order(id: &Blake3) -> (u64, Blake3) {
    (prefix(id), *id)
}

/// Sorts `items` (indexes of files, jobs, ...) so that those with the same `body` are next to
/// each other, ascending by item among them; the runs come in [`body_order`].
pub fn sort_by_body(items: &mut [u32], body: impl Fn(u32) -> Blake3) {
    let mut keyed: Vec<(u64, u32)> = items.iter().map(|&i| (prefix(&body(i)), i)).collect();
    keyed.sort_unstable();
    // Equal prefixes are rare but for equal bodies: those runs are sorted by the whole digest.
    for run in keyed.chunk_by_mut(|a, b| a.0 == b.0) {
        if run.len() > 1 {
            run.sort_unstable_by_key(|&(_, i)| (body(i), i));
        }
    }
    for (item, (_, i)) in items.iter_mut().zip(keyed) {
        *item = i;
    }
}

/// Items sorted by body ([`sort_by_body`]), with the top 4 bytes of each one's [`body_order`]
/// beside them: a lookup searches those (contiguous, 8 bytes an item in all) and reads a body
/// through its item only to settle the few of an equal prefix, instead of at every step (a
/// step through an item is a manifest entry or two off in memory: at a million files, a
/// lookup cost microseconds).
#[derive(Debug, Clone, Default)]
pub struct ByBody {
    items: Vec<u32>,
    prefixes: Vec<u32>,
}

impl ByBody {
    pub fn new(mut items: Vec<u32>, body: impl Fn(u32) -> Blake3) -> Self {
        sort_by_body(&mut items, &body);
        let prefixes = items.iter().map(|&i| short(&body(i))).collect();
        ByBody { items, prefixes }
    }

    /// The items, in order.
    pub fn items(&self) -> &[u32] {
        &self.items
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Where the first item with body `id` is, if any; `body` as given to [`ByBody::new`].
    pub fn position(&self, id: &Blake3, body: impl Fn(u32) -> Blake3) -> Option<usize> {
        let want = short(id);
        let start = self.prefixes.partition_point(|&p| p < want);
        let end = start + self.prefixes[start..].partition_point(|&p| p == want);
        (start..end).find(|&at| body(self.items[at]) == *id)
    }
}

/// The top half of [`prefix`]: what orders bodies first.
fn short(id: &Blake3) -> u32 {
    (prefix(id) >> 32) as u32
}

/// Runs of `sorted` (as [`sort_by_body`] left it) that share a body.
pub fn runs_by_body<'a>(
    sorted: &'a [u32],
    body: impl Fn(u32) -> Blake3 + 'a,
) -> impl Iterator<Item = &'a [u32]> + 'a {
    sorted.chunk_by(move |&a, &b| body(a) == body(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> Blake3 {
        Blake3::of(&[n])
    }

    #[test]
    fn a_body_set_finds_and_removes_what_it_holds() {
        let mut s: BodySet = [id(3), id(1), id(2), id(1)].into_iter().collect();
        assert_eq!(s.len(), 3);
        assert!(s.contains(&id(1)) && !s.contains(&id(4)));
        assert!(s.remove(&id(1)));
        assert!(!s.remove(&id(1)) && !s.contains(&id(1)));
        let mut left: Vec<Blake3> = s.iter().copied().collect();
        left.sort();
        let mut want = vec![id(2), id(3)];
        want.sort();
        assert_eq!((left, s.len()), (want, 2));
        assert!(BodySet::default().is_empty());
    }

    #[test]
    fn files_sharing_a_body_end_up_together_in_order() {
        // Bodies by item; 0, 3 and 5 share one, 1 and 4 another.
        let bodies = [id(7), id(8), id(9), id(7), id(8), id(7)];
        let body = |i: u32| bodies[i as usize];
        let mut items: Vec<u32> = (0..6).rev().collect();
        sort_by_body(&mut items, body);
        let mut runs: Vec<Vec<u32>> = runs_by_body(&items, body).map(<[u32]>::to_vec).collect();
        runs.sort();
        assert_eq!(runs, [vec![0, 3, 5], vec![1, 4], vec![2]]);
    }

    #[test]
    fn a_body_is_found_among_items_sorted_by_it() {
        let bodies: Vec<Blake3> = (0..2000u32).map(|n| id((n % 251) as u8)).collect();
        let body = |i: u32| bodies[i as usize];
        let sorted = ByBody::new((0..2000).rev().collect(), body);
        assert_eq!(sorted.len(), 2000);
        for n in 0..251u8 {
            let at = sorted.position(&id(n), body).expect("held");
            // The first of its run: the lowest item with that body.
            assert_eq!(sorted.items()[at], u32::from(n));
        }
        assert_eq!(sorted.position(&Blake3::of(b"other"), body), None);
        assert_eq!(ByBody::default().position(&id(1), body), None);
    }

    proptest::proptest! {
        /// Whatever the bodies (few distinct ones, so runs are long), each run holds exactly
        /// the items of one body, ascending.
        #[test]
        fn runs_are_exactly_the_items_of_each_body(bodies in proptest::collection::vec(0u8..6, 0..60)) {
            let ids: Vec<Blake3> = bodies.iter().map(|&b| id(b)).collect();
            let body = |i: u32| ids[i as usize];
            let mut items: Vec<u32> = (0..ids.len() as u32).collect();
            sort_by_body(&mut items, body);
            let mut seen = std::collections::HashSet::new();
            for run in runs_by_body(&items, body) {
                proptest::prop_assert!(seen.insert(body(run[0])));
                proptest::prop_assert!(run.windows(2).all(|w| w[0] < w[1]));
                let want: Vec<u32> = (0..ids.len() as u32).filter(|&i| body(i) == body(run[0])).collect();
                proptest::prop_assert_eq!(run, &want[..]);
            }
        }
    }
}
