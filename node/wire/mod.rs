//! The Cascade wire protocol, version 2. This module is the spec; it has no sockets.
//!
//! # Links
//! A child dials its parent over QUIC with mutual TLS 1.3; the ALPN is [`ALPN`] (`cascade/3`),
//! so a peer speaking another protocol version fails the handshake instead of misreading bytes.
//! Both sides present certificates from the deployment CA; the parent accepts only the names of
//! its own children, the child only its parent's name.
//!
//! # Frames
//! Every message is one frame: a 4-byte big-endian length, then that many bytes of the message
//! encoded with bincode 2 (standard config: little endian, varints) through serde. A length above
//! [`MAX_FRAME`] is refused before anything is allocated. Enums are encoded with their variant
//! index as the tag, so variants are append-only: never reorder or remove one.
//!
//! # Streams
//! - **Control** (the first bidirectional stream, opened by the child): the child sends
//!   [`Up::Hello`] first, then [`Up::Status`] whenever the state of its subtree changes. The
//!   parent sends [`Down::Offer`] with its newest release whenever that is newer than what the
//!   child has, on connect and after every new release. A relay offers a release as soon as
//!   it has validated the manifest, while it is still fetching the bodies itself
//!   (cut-through): it serves each body's verified prefix as it grows.
//! - **Body** (one bidirectional stream per request, opened by the child): the child sends one
//!   [`BodyRequest`] frame and finishes its side; the parent answers with the raw bytes asked
//!   for and finishes, or resets the stream with [`ErrorCode::NotFound`]. For
//!   [`BodyRequest::One`], that is one body from `offset` to its end; for
//!   [`BodyRequest::Many`] (small files, at most [`MAX_BATCH`]), the whole bodies back to back
//!   in the order asked. The child knows sizes and MD5s from the manifest and checks them.
//!
//! # Chunks
//! A body larger than [`crate::tree::CHUNK`] (4 MiB) carries the MD5 of each chunk in its
//! manifest entry. A relay checks each chunk as it completes and forwards only checked
//! chunks; a node that applies the body to its directory also checks the whole MD5.
//!
//! A receiver pulls what it lacks, so the same exchange serves a push after a publish and a
//! catch-up after a reconnect.

mod frame;
mod messages;

pub use frame::{decode, decode_frame, encode, frame_len, WireError, HEADER_LEN, MAX_FRAME};
pub use messages::*;

/// ALPN of protocol version 2 (version 1 had no chunk MD5s and one body per stream).
pub const ALPN: &[u8] = b"cascade/3";

/// Most bodies in one [`BodyRequest::Many`].
pub const MAX_BATCH: usize = 4096;

#[cfg(test)]
mod tests;
