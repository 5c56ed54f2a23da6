//! The messages of protocol version 8, as serde types. Variants are append-only (the
//! variant index is the tag on the wire). Each message type has its own frame limit
//! ([`Message::MAX`]): a peer can make a node allocate at most that much per frame.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::blocks::{unpack_all, Compress, Packer, BLOCK};
use super::WireError;

use crate::status::view::TreeView;
use crate::status::NodeStatus;
use crate::tree::{
    delta, Blake3, DeltaError, Entry, Known, Manifest, ManifestError, Release, Rotation, Run,
};

/// Child → parent, on the control stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Up {
    /// First message: who the child claims to be (checked against its certificate), the
    /// version of the release it has applied, if any, and that release's manifest root (so
    /// the parent may send the next release as a [`Down::OfferDelta`] against it). `push`:
    /// whether the child takes bodies pushed while the parent scans (see [`PushHeader`]), and
    /// packed how; `None` asks for none.
    Hello {
        name: String,
        have: Option<u64>,
        root: Option<Blake3>,
        push: Option<Compress>,
    },
    /// The current state of the child and of every node below it.
    Status(Vec<NodeStatus>),
}

/// Parent → child, on the control stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Down {
    /// A verified release the parent holds completely and can serve.
    Offer(Release),
    /// The same, its manifest given as runs of a release the child has (the one it said it
    /// holds in its hello, or the last one offered on this link).
    OfferDelta(Delta),
    /// Another message (never `Packed` itself), its encoding cut into blocks as a body
    /// stream is ([`super::blocks`]): sent to a child whose hello asked for compressed
    /// pushes, when packing makes it smaller (see [`pack_down`]). A manifest's paths, sizes
    /// and times compress; its digests do not.
    Packed(Vec<u8>),
}

/// The frame of [`Down::Packed`] holding `frame` (the frame of another [`Down`]) in blocks
/// packed as `compress` asks; `frame` itself when that is no smaller.
pub fn pack_down(frame: &Arc<[u8]>, compress: Compress) -> std::io::Result<Arc<[u8]>> {
    let payload = &frame[super::HEADER_LEN..];
    if compress == Compress::Off || payload.is_empty() {
        return Ok(frame.clone());
    }
    let mut packer = Packer::new(compress)?;
    let mut blocks = Vec::with_capacity(payload.len() / 2);
    for raw in payload.chunks(BLOCK) {
        packer.pack(raw, &mut blocks);
    }
    let packed = super::encode_shared(&Down::Packed(blocks));
    Ok(if packed.len() < frame.len() {
        packed
    } else {
        frame.clone()
    })
}

/// A release whose manifest is given as [`Run`]s of the manifest of release `base` (whose
/// root is `base_root`); the rest as in [`Release`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delta {
    pub version: u64,
    pub base: u64,
    pub base_root: Blake3,
    pub runs: Vec<Run>,
    pub revoked: Vec<[u8; 32]>,
    pub signature: Vec<u8>,
    pub topology: Option<String>,
    pub rotation: Option<Rotation>,
}

impl Delta {
    /// `release` as runs of `base`'s manifest.
    pub fn between(base: &Release, release: &Release) -> Self {
        Delta {
            version: release.version,
            base: base.version,
            base_root: base.manifest.root_digest(),
            runs: delta::diff(&base.manifest, &release.manifest),
            revoked: release.revoked.clone(),
            signature: release.signature.clone(),
            topology: release.topology.clone(),
            rotation: release.rotation.clone(),
        }
    }

    /// Rebuilds the release from `base` (which must be the release it was made against); the
    /// result is checked like any received release.
    pub fn rebuild(self, base: &Release) -> Result<RawRelease, DeltaError> {
        if base.version != self.base || base.manifest.root_digest() != self.base_root {
            return Err(DeltaError::WrongBase { version: self.base });
        }
        let (entries, known) = delta::splice_known(&base.manifest, self.runs)?;
        Ok(RawRelease {
            version: self.version,
            entries,
            known: Some(known),
            revoked: self.revoked,
            signature: self.signature,
            topology: self.topology,
            rotation: self.rotation,
        })
    }
}

/// Encodes `Down::Offer(release)` without taking the release.
pub fn encode_offer(release: &Release) -> std::sync::Arc<[u8]> {
    #[derive(Serialize)]
    enum DownRef<'a> {
        Offer(&'a Release),
    }
    super::encode_shared(&DownRef::Offer(release))
}

/// [`Down`] as a child decodes it: the offered manifest is not validated yet, so a hostile
/// manifest refuses that one release (see [`RawRelease::validate`]) instead of failing the
/// whole frame. Encodes exactly like [`Down`]; variants must stay in step with it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RawDown {
    Offer(RawRelease),
    OfferDelta(Delta),
    Packed(Vec<u8>),
}

/// What a parent offers, as [`RawDown::offered`] gives it.
#[derive(Debug)]
pub enum Offered {
    Whole(RawRelease),
    Delta(Delta),
}

impl RawDown {
    /// The offer this message makes, unpacked if it came packed (to at most
    /// [`super::MAX_FRAME`] bytes, which must not be packed again).
    pub fn offered(self) -> Result<Offered, WireError> {
        let blocks = match self {
            RawDown::Offer(r) => return Ok(Offered::Whole(r)),
            RawDown::OfferDelta(d) => return Ok(Offered::Delta(d)),
            RawDown::Packed(blocks) => blocks,
        };
        let payload = unpack_all(&blocks, super::MAX_FRAME)?;
        drop(blocks);
        match super::decode::<RawDown>(&payload)? {
            RawDown::Offer(r) => Ok(Offered::Whole(r)),
            RawDown::OfferDelta(d) => Ok(Offered::Delta(d)),
            RawDown::Packed(_) => Err(WireError::Malformed("a packed message packed again".into())),
        }
    }
}

/// A release as received: version, entries, revocations and signature, before any check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RawRelease {
    pub version: u64,
    pub entries: Vec<Arc<Entry>>,
    pub revoked: Vec<[u8; 32]>,
    pub signature: Vec<u8>,
    pub topology: Option<String>,
    pub rotation: Option<Rotation>,
    /// For a release rebuilt from a delta: the digests its base already gave (never sent).
    #[serde(skip)]
    pub known: Option<Known>,
}

impl RawRelease {
    /// Checks the manifest (paths, order, parents, modes) and computes its hash tree. The
    /// signature is the caller's to check, against that root.
    pub fn validate(self) -> Result<Release, ManifestError> {
        Ok(Release {
            version: self.version,
            manifest: Manifest::from_sorted_known(self.entries, self.known.as_ref())?,
            revoked: self.revoked,
            signature: self.signature,
            topology: self.topology,
            rotation: self.rotation,
        })
    }
}

/// The one request on a body stream: which bodies, and how to send them (raw, or in blocks
/// that may be compressed: see [`super::blocks`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BodyRequest {
    pub bodies: Bodies,
    pub compress: Compress,
}

/// The bodies a [`BodyRequest`] asks for, named by their BLAKE3.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Bodies {
    /// One body from `offset` (lets an interrupted transfer resume) to its end.
    One { id: Blake3, offset: u64 },
    /// Whole bodies, sent back to back in this order: many small files on one stream.
    Many(Vec<Blake3>),
}

impl std::fmt::Display for Bodies {
    /// For logs: a batch by its size, not every name in it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Bodies::One { id, offset: 0 } => write!(f, "body {id}"),
            Bodies::One { id, offset } => write!(f, "body {id} from byte {offset}"),
            Bodies::Many(ids) => write!(f, "a batch of {} bodies", ids.len()),
        }
    }
}

/// The first frame of a push stream (parent → child, unidirectional): the body that follows
/// is `size` bytes, raw or packed as the child's hello asked, read from the file at `path`.
/// Nothing vouches for either: the child hashes what arrives and keeps it only if a release
/// it is offered next names those digests (see [`crate::sync::push`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushHeader {
    pub size: u64,
    pub path: String,
}

/// Local admin socket: request from `cascade publish` / `cascade status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AdminRequest {
    /// Scan `dir` and cut a new release if anything changed (origin only).
    Publish,
    /// The node's view of itself and its subtree.
    Status,
    /// Check `dir` against the current release and repair what drifted; `full` reads every
    /// file (MD5), `None` takes the node's `verify` setting.
    Verify { full: Option<bool> },
    /// The topology the node runs with, as text.
    Topology,
    /// Make this topology (TOML text) the tree's (origin only): checked, then carried to
    /// every node by a new release.
    ApplyTopology(String),
    /// The tree below the node, arranged for an operator (`cascade status`).
    Tree,
}

/// Local admin socket: the daemon's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AdminResponse {
    Published(PublishSummary),
    Status {
        node: String,
        release: Option<u64>,
        nodes: Vec<NodeStatus>,
    },
    Error(String),
    Verified(VerifySummary),
    Topology(String),
    Tree(Box<TreeView>),
}

/// What a verify found and repaired.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifySummary {
    pub version: u64,
    pub full: bool,
    /// Files checked.
    pub checked: u64,
    /// Paths that differed from the release, all repaired.
    pub repaired: Vec<String>,
    /// Bodies fetched from the parent for the repair.
    pub fetched: u64,
}

/// What a publish produced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishSummary {
    pub version: u64,
    /// False when the scan found nothing new and `version` is the existing release.
    pub changed: bool,
    pub files: u64,
    pub bytes: u64,
}

/// A message of the protocol, with the largest frame a node reads of it: the length prefix
/// is checked against this before a byte of the payload is allocated.
pub trait Message: Serialize + serde::de::DeserializeOwned {
    const MAX: usize;
}

/// 1 MiB: a hello, a request, a summary.
const SMALL: usize = 1 << 20;

impl Message for Up {
    /// A subtree's reports: each bounded ([`NodeStatus::bounded`]), a few hundred bytes, so
    /// 16 MiB carries tens of thousands of nodes.
    const MAX: usize = 16 << 20;
}

impl Message for Down {
    /// A whole manifest (about a million entries).
    const MAX: usize = super::MAX_FRAME;
}

impl Message for RawDown {
    const MAX: usize = super::MAX_FRAME;
}

impl Message for BodyRequest {
    /// [`super::MAX_BATCH`] names of 32 bytes and their length prefixes fit with room.
    const MAX: usize = SMALL;
}

impl Message for PushHeader {
    /// A path (at most 4096 bytes) and a size.
    const MAX: usize = 16 << 10;
}

impl Message for AdminRequest {
    const MAX: usize = SMALL;
}

impl Message for AdminResponse {
    /// A whole tree's status.
    const MAX: usize = 64 << 20;
}

impl Message for Manifest {
    const MAX: usize = super::MAX_FRAME;
}

/// QUIC application close and reset codes. Append-only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum ErrorCode {
    /// Normal close (shutdown).
    Ok = 0,
    /// The peer's name or certificate is not allowed on this link.
    NotAllowed = 1,
    /// A frame could not be decoded or broke the protocol.
    Protocol = 2,
    /// A requested body is not in the store.
    NotFound = 3,
    /// The node is shutting down.
    Shutdown = 4,
    /// The same child connected again; this older link is replaced.
    Replaced = 5,
    /// A pushed body was given up (the child fell behind, or the file changed).
    Abandoned = 6,
}

impl ErrorCode {
    pub fn code(self) -> u32 {
        self as u32
    }
}
