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

/// Groups the bodies to fetch (by index, in order): each body above [`SMALL`] alone, smaller
/// ones together on one stream, up to [`BATCH_FILES`] bodies or [`BATCH_BYTES`] bytes.
pub fn plan(sizes: &[u64]) -> Vec<Vec<usize>> {
    let mut out = Vec::new();
    let mut batch = Vec::new();
    let mut batch_bytes = 0;
    for (i, &size) in sizes.iter().enumerate() {
        if size > SMALL {
            out.push(vec![i]);
            continue;
        }
        if batch.len() == BATCH_FILES || batch_bytes + size > BATCH_BYTES {
            out.push(std::mem::take(&mut batch));
            batch_bytes = 0;
        }
        batch.push(i);
        batch_bytes += size;
    }
    if !batch.is_empty() {
        out.push(batch);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_bodies_are_batched_and_large_ones_go_alone() {
        let big = SMALL + 1;
        assert_eq!(
            plan(&[1, 2, big, 3, SMALL]),
            vec![vec![2], vec![0, 1, 3, 4]]
        );
        assert!(plan(&[]).is_empty());
        let many = vec![1; BATCH_FILES + 1];
        assert_eq!(
            plan(&many).iter().map(Vec::len).collect::<Vec<_>>(),
            [BATCH_FILES, 1]
        );
        let heavy = vec![SMALL; (BATCH_BYTES / SMALL) as usize + 1];
        assert_eq!(plan(&heavy).len(), 2);
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
