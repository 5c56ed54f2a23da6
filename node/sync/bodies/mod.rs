//! The body sub-protocol, both sides: a child [`ask`]s its parent for the bodies it lacks,
//! a parent [`serve`]s them (see the Body streams in [`crate::wire`]).
//!
//! How a body travels depends on its size:
//! - at most [`SMALL`]: batched with other small bodies on one stream (up to
//!   [`BATCH_FILES`] bodies or [`BATCH_BYTES`] bytes), one round trip for many files;
//! - at most [`STREAM_ABOVE`]: alone on a stream, but like a batch received whole into
//!   memory and stored by one blocking job;
//! - larger: streamed to disk through a store writer that checks each chunk as it lands,
//!   so a relay can forward the verified prefix while the rest arrives, and an interrupted
//!   transfer resumes after its last good chunk.

pub mod ask;
pub mod in_dir;
pub mod serve;

pub use ask::fetch_all;
pub use serve::serve_body;

use crate::data::Expected;
use crate::tree::{Entry, EntryKind};

/// Bodies at most this large are fetched in batches on shared streams.
pub const SMALL: u64 = 256 * 1024;
/// Most bodies in one batch (at most [`crate::wire::MAX_BATCH`]).
pub const BATCH_FILES: usize = 1024;
/// Most bytes in one batch.
pub const BATCH_BYTES: u64 = 8 * 1024 * 1024;
/// Bodies larger than this are streamed to disk (and forwarded while they arrive); smaller
/// ones are received whole into memory. Also the size of the buffers a streamed body is
/// received in: hashing per datagram would be slow.
pub const STREAM_ABOVE: usize = 1024 * 1024;

/// How a body must be checked on this node: whole (size, MD5, BLAKE3) always, and a node
/// with children checks each chunk as it arrives so it can forward it at once. `None` for an
/// entry that is not a file.
pub fn expected(entry: &Entry, serves: bool) -> Option<Expected> {
    let EntryKind::File {
        size,
        md5,
        blake3,
        chunks,
        ..
    } = &entry.kind
    else {
        return None;
    };
    let chunks = if serves { chunks.clone() } else { Vec::new() };
    Some(Expected {
        md5: *md5,
        blake3: *blake3,
        size: *size,
        chunks,
    })
}

/// Groups the bodies to fetch, `(key, size)` in order, as they are asked for: each body above
/// [`SMALL`] alone, smaller ones together on one stream, up to [`BATCH_FILES`] bodies or
/// [`BATCH_BYTES`] bytes. Lazy: only the batch being filled is held.
pub fn plan<I: Iterator<Item = (u32, u64)>>(bodies: I) -> Plan<I> {
    Plan {
        bodies,
        batch: Vec::new(),
        batch_bytes: 0,
    }
}

/// The groups of [`plan`].
pub struct Plan<I> {
    bodies: I,
    batch: Vec<u32>,
    batch_bytes: u64,
}

impl<I: Iterator<Item = (u32, u64)>> Iterator for Plan<I> {
    type Item = Vec<u32>;

    fn next(&mut self) -> Option<Vec<u32>> {
        for (key, size) in self.bodies.by_ref() {
            if size > SMALL {
                return Some(vec![key]);
            }
            let full = self.batch.len() == BATCH_FILES || self.batch_bytes + size > BATCH_BYTES;
            let out = full.then(|| std::mem::take(&mut self.batch));
            if full {
                self.batch_bytes = 0;
            }
            self.batch.push(key);
            self.batch_bytes += size;
            if out.is_some() {
                return out;
            }
        }
        (!self.batch.is_empty()).then(|| std::mem::take(&mut self.batch))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn groups(sizes: &[u64]) -> Vec<Vec<u32>> {
        plan((0..).zip(sizes.iter().copied())).collect()
    }

    #[test]
    fn small_bodies_are_batched_and_large_ones_go_alone() {
        let big = SMALL + 1;
        assert_eq!(
            groups(&[1, 2, big, 3, SMALL]),
            vec![vec![2], vec![0, 1, 3, 4]]
        );
        assert!(groups(&[]).is_empty());
        let many = vec![1; BATCH_FILES + 1];
        assert_eq!(
            groups(&many).iter().map(Vec::len).collect::<Vec<_>>(),
            [BATCH_FILES, 1]
        );
        let heavy = vec![SMALL; (BATCH_BYTES / SMALL) as usize + 1];
        assert_eq!(groups(&heavy).len(), 2);
        // A large body between full batches: each batch whole, in order.
        let mut mixed = vec![1; BATCH_FILES];
        mixed.push(big);
        mixed.extend(vec![1; BATCH_FILES + 1]);
        let g = groups(&mixed);
        assert_eq!(
            g.iter().map(Vec::len).collect::<Vec<_>>(),
            [1, BATCH_FILES, BATCH_FILES, 1]
        );
        assert_eq!(g[0], [BATCH_FILES as u32]);
    }

    #[test]
    fn relays_check_chunks_and_every_node_the_whole_body() {
        use crate::tree::manifest::fixtures::{dir, file};
        let big = file("big", &vec![7; crate::tree::CHUNK as usize + 9]);
        // A relay: chunks as they come (and the whole body, as every node).
        assert_eq!(expected(&big, true).unwrap().chunks.len(), 2);
        // A leaf: the whole body only.
        assert!(expected(&big, false).unwrap().chunks.is_empty());
        assert!(expected(&file("small", b"x"), true)
            .unwrap()
            .chunks
            .is_empty());
        assert!(expected(&dir("d"), true).is_none());
    }
}
