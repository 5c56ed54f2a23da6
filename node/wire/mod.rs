//! The Cascade wire protocol, version 8. This module is the spec; it has no sockets.
//!
//! # Links
//! A child dials its parent over QUIC with mutual TLS 1.3; the ALPN is [`ALPN`] (`cascade/8`),
//! so a peer speaking another protocol version fails the handshake instead of misreading bytes.
//! Both sides present certificates from the deployment CA; the parent accepts only the names of
//! its own children, the child only its parent's name.
//!
//! # Frames
//! Every message is one frame: a 4-byte big-endian length, then that many bytes of the message
//! encoded with postcard 1 (varints, little endian) through serde. A length above the
//! message type's limit ([`Message::MAX`], at most [`MAX_FRAME`]) is refused before anything
//! is allocated. Enums are encoded with their variant index as the tag, so variants are
//! append-only: never reorder or remove one.
//!
//! # Streams
//! - **Control** (the first bidirectional stream, opened by the child): the child sends
//!   [`Up::Hello`] first, then [`Up::Status`] whenever the state of its subtree changes. The
//!   parent sends [`Down::Offer`] with its newest release whenever that is newer than what the
//!   child has, on connect and after every new release. A relay offers a release as soon as
//!   it has validated the manifest, while it is still fetching the bodies itself
//!   (cut-through): it serves each body's verified prefix as it grows.
//! - **Manifest deltas**: the hello carries the version and manifest root of the release the
//!   child holds. When the parent offers the release that follows one the child is known to
//!   have (that one, or the last offered on this link), it may send [`Down::OfferDelta`]
//!   instead: the new manifest as runs of entries kept from the old one (by index) and
//!   entries that are new, found by skipping every subtree whose digest did not change (see
//!   [`crate::tree::delta`]). So a release that changes one file of a million costs a few
//!   hundred bytes per hop, not the whole manifest. The child rebuilds the entry list and
//!   checks it exactly as a whole manifest (order, paths, hash tree, signature); a delta it
//!   cannot rebuild (another base, a run outside it) closes the link as a protocol error, and
//!   the next link's hello gets it a whole manifest.
//! - **Packed offers**: to a child whose hello asked for compressed pushes ([`Compress::Zstd`]
//!   or [`Compress::Auto`]), an offer (whole or delta) may come as [`Down::Packed`]: the
//!   offer's encoding cut into blocks exactly as a compressed body stream is ([`blocks`]),
//!   sent only when that is smaller. A manifest's paths, sizes and times compress, its
//!   digests do not: about half the bytes on a slow link before the first body. The child
//!   unpacks it (at most [`MAX_FRAME`] bytes, each block at most [`blocks::BLOCK`]) and
//!   checks what it holds as any offer; a packed message packed again is refused.
//! - **Body** (one bidirectional stream per request, opened by the child): the child sends one
//!   [`BodyRequest`] frame and finishes its side; the parent answers with the bytes asked
//!   for and finishes, or resets the stream with [`ErrorCode::NotFound`]. For
//!   [`Bodies::One`], that is one body from `offset` to its end; for [`Bodies::Many`] (small
//!   files, at most [`MAX_BATCH`]), the whole bodies back to back in the order asked. Bodies
//!   are named by their BLAKE3; the child knows sizes, MD5s and BLAKE3s from the manifest and
//!   checks them. With [`Compress::Off`] the answer is those raw bytes; otherwise it is the
//!   same bytes cut into blocks of at most [`blocks::BLOCK`], each raw or one zstd frame
//!   (see [`blocks`]): blocks run across the bodies of a batch, so small files compress
//!   together.
//! - **Push** (one unidirectional stream per body, opened by the parent, only to a child
//!   whose hello asked for pushes): while the origin scans, it sends each large new body it
//!   reads as it reads it, before any release names it: a [`PushHeader`] frame, then the
//!   body (raw, or in blocks as for a body request). The child hashes it as it arrives and
//!   keeps it apart from its store; when the next offer names a body with the same size, MD5
//!   and BLAKE3, the child takes it into its store instead of asking for it. A body no
//!   offer names is deleted. A parent may reset a push ([`ErrorCode::Abandoned`]) at any
//!   point: the child then asks for the body as usual.
//!
//! # Chunks
//! A body larger than [`crate::tree::CHUNK`] (4 MiB) carries the BLAKE3 chaining value of
//! each chunk in its manifest entry (and a chunk MD5 that an origin of version 7 leaves zero:
//! see [`crate::tree::Sums`]). A relay checks each chunk as it completes and forwards only
//! checked chunks; a node that applies the body to its directory also checks the whole MD5.
//! The whole BLAKE3 follows from the chunks' and is always checked.
//!
//! # Trust
//! Every release carries the origin's Ed25519 signature over its version and its manifest's
//! root digest (BLAKE3 over every entry); every node checks it before it stores, forwards or
//! applies anything (see [`crate::sync::trust`]). Version 8 added packed offers; version 7 added push streams; version 6 added compressed body streams;
//! version 5 added manifest deltas (and the root in the hello); version 4 added BLAKE3 (version 3 trusted
//! MD5 alone, and named bodies by it) and moved from bincode to postcard.
//!
//! A receiver pulls what it lacks, so the same exchange serves a push after a publish and a
//! catch-up after a reconnect.

pub mod blocks;
mod frame;
mod messages;

pub use blocks::Compress;
pub use frame::{
    decode, decode_frame, encode, encode_shared, frame_len, WireError, HEADER_LEN, MAX_FRAME,
};
pub use messages::*;

/// ALPN of protocol version 8: a peer of another version fails the handshake.
pub const ALPN: &[u8] = b"cascade/8";

/// Most bodies in one [`Bodies::Many`].
pub const MAX_BATCH: usize = 4096;

#[cfg(test)]
mod tests;
