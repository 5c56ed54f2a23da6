//! The model of a release, with no I/O but reading files to hash them: [`hash`] (MD5s and
//! BLAKE3s of bodies and chunks), [`manifest`] (a tree's entries with a digest per directory),
//! [`delta`] (a manifest as runs of an older one), [`release`] (a numbered manifest) and
//! [`bodies`] (many bodies at once, compactly).
//!
//! Everything above builds on these types: the wire carries them, the store keeps bodies by
//! their [`Blake3`], the scan produces a [`Manifest`] and the apply follows one.

pub mod bodies;
pub mod delta;
pub mod hash;
pub mod manifest;
mod md5_lanes;
pub mod release;

pub use bodies::{body_order, runs_by_body, sort_by_body, BodySet, ByBody};
pub use delta::{DeltaError, Run};
pub use hash::{Blake3, Body, BodyHasher, Md5, Sums, CHUNK};
pub use manifest::{Entry, EntryKind, Known, Manifest, ManifestError};
pub use release::{newer, Release, Rotation};
