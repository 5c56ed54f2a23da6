//! The Cascade wire protocol, version 2. This module is the spec; it has no sockets.
//!
//! # Links
//! A child dials its parent over QUIC with mutual TLS 1.3; the ALPN is [`ALPN`] (`cascade/2`),
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
//! A body larger than [`crate::manifest::CHUNK`] (4 MiB) carries the MD5 of each chunk in its
//! manifest entry. A relay checks each chunk as it completes and forwards only checked
//! chunks; a node that applies the body to its directory also checks the whole MD5.
//!
//! A receiver pulls what it lacks, so the same exchange serves a push after a publish and a
//! catch-up after a reconnect.

use std::fmt;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::manifest::{Manifest, Md5};
use crate::status::NodeStatus;

/// ALPN of protocol version 2 (version 1 had no chunk MD5s and one body per stream).
pub const ALPN: &[u8] = b"cascade/2";

/// Most bodies in one [`BodyRequest::Many`].
pub const MAX_BATCH: usize = 4096;

/// Largest frame accepted (a manifest of about a million entries).
pub const MAX_FRAME: usize = 128 * 1024 * 1024;

/// Bytes of the length prefix.
pub const HEADER_LEN: usize = 4;

/// Child → parent, on the control stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Up {
    /// First message: who the child claims to be (checked against its certificate) and the
    /// version of the release it has applied, if any.
    Hello { name: String, have: Option<u64> },
    /// The current state of the child and of every node below it.
    Status(Vec<NodeStatus>),
}

/// Parent → child, on the control stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Down {
    /// A verified release the parent holds completely and can serve.
    Offer(Release),
}

/// [`Down`] as a child decodes it: the offered manifest is not validated yet, so a hostile
/// manifest refuses that one release (see [`RawRelease::validate`]) instead of failing the
/// whole frame. Encodes exactly like [`Down`]; variants must stay in step with it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RawDown {
    Offer(RawRelease),
}

/// A release as received: version and entries, before any check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RawRelease {
    pub version: u64,
    pub entries: Vec<crate::manifest::Entry>,
}

impl RawRelease {
    /// Checks the manifest (paths, order, parents, modes) and computes its hash tree.
    pub fn validate(self) -> Result<Release, crate::manifest::ManifestError> {
        Ok(Release {
            version: self.version,
            manifest: Manifest::from_sorted(self.entries)?,
        })
    }
}

/// A release: an immutable snapshot of the directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Release {
    pub version: u64,
    pub manifest: Manifest,
}

/// The one request on a body stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum BodyRequest {
    /// One body from `offset` (lets an interrupted transfer resume) to its end.
    One { md5: Md5, offset: u64 },
    /// Whole bodies, sent back to back in this order: many small files on one stream.
    Many(Vec<Md5>),
}

/// Local admin socket: request from `cascade publish` / `cascade status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AdminRequest {
    /// Scan `dir` and cut a new release if anything changed (origin only).
    Publish,
    /// The node's view of itself and its subtree.
    Status,
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
}

impl ErrorCode {
    pub fn code(self) -> u32 {
        self as u32
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    #[error("frame of {0} bytes exceeds the limit of {MAX_FRAME}")]
    TooLarge(usize),
    #[error("truncated frame")]
    Truncated,
    #[error("malformed message: {0}")]
    Malformed(String),
    #[error("{0} trailing bytes after message")]
    Trailing(usize),
}

fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<MAX_FRAME>()
}

/// Encodes `msg` as one frame (length prefix included).
pub fn encode<T: Serialize>(msg: &T) -> Vec<u8> {
    let mut out = vec![0u8; HEADER_LEN];
    // Encoding into a Vec cannot fail for our plain data types.
    bincode::serde::encode_into_std_write(msg, &mut out, config())
        .expect("encoding plain data into a Vec cannot fail");
    let len = (out.len() - HEADER_LEN) as u32;
    out[..HEADER_LEN].copy_from_slice(&len.to_be_bytes());
    out
}

/// Reads the payload length from a frame header, refusing oversized frames.
pub fn frame_len(header: [u8; HEADER_LEN]) -> Result<usize, WireError> {
    let len = u32::from_be_bytes(header) as usize;
    if len > MAX_FRAME {
        return Err(WireError::TooLarge(len));
    }
    Ok(len)
}

/// Decodes one message payload (without the length prefix); the whole payload must be used.
pub fn decode<T: DeserializeOwned>(payload: &[u8]) -> Result<T, WireError> {
    let (msg, used) =
        bincode::serde::decode_from_slice(payload, config()).map_err(|e| match e {
            bincode::error::DecodeError::UnexpectedEnd { .. } => WireError::Truncated,
            other => WireError::Malformed(other.to_string()),
        })?;
    if used != payload.len() {
        return Err(WireError::Trailing(payload.len() - used));
    }
    Ok(msg)
}

/// Decodes one whole frame (prefix + payload) from a buffer.
pub fn decode_frame<T: DeserializeOwned>(frame: &[u8]) -> Result<T, WireError> {
    let header: [u8; HEADER_LEN] = frame
        .get(..HEADER_LEN)
        .and_then(|h| h.try_into().ok())
        .ok_or(WireError::Truncated)?;
    let len = frame_len(header)?;
    let payload = &frame[HEADER_LEN..];
    if payload.len() < len {
        return Err(WireError::Truncated);
    }
    if payload.len() > len {
        return Err(WireError::Trailing(payload.len() - len));
    }
    decode(payload)
}

impl fmt::Display for Release {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "v{} ({} files, {} bytes)",
            self.version,
            self.manifest.file_count(),
            self.manifest.total_bytes()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::{Entry, EntryKind};
    use crate::status::NodeState;

    fn sample_release() -> Release {
        let manifest = Manifest::from_entries(vec![
            Entry {
                path: "a".into(),
                mode: 0o755,
                kind: EntryKind::Dir,
            },
            Entry {
                path: "a/x.txt".into(),
                mode: 0o644,
                kind: EntryKind::File {
                    size: 3,
                    md5: Md5::of(b"abc"),
                    mtime: -1,
                    chunks: vec![],
                },
            },
            Entry {
                path: "big".into(),
                mode: 0o644,
                kind: EntryKind::File {
                    size: crate::manifest::CHUNK + 1,
                    md5: Md5([9; 16]),
                    mtime: 1,
                    chunks: vec![Md5([1; 16]), Md5([2; 16])],
                },
            },
            Entry {
                path: "link".into(),
                mode: 0o777,
                kind: EntryKind::Symlink {
                    target: "a/x.txt".into(),
                },
            },
        ])
        .unwrap();
        Release {
            version: 7,
            manifest,
        }
    }

    type Samples = (
        Vec<Up>,
        Vec<Down>,
        Vec<BodyRequest>,
        Vec<AdminRequest>,
        Vec<AdminResponse>,
    );

    fn all_messages() -> Samples {
        let status = NodeStatus {
            name: "web-1".into(),
            applied: Some(3),
            state: NodeState::Fetching {
                version: 4,
                done_bytes: 10,
                total_bytes: 20,
            },
            fetched_bytes: 5,
            fetched_files: 1,
            connected: true,
            sent_bytes: 9,
            updated_ms: 1_700_000_000_000,
        };
        (
            vec![
                Up::Hello {
                    name: "web-1".into(),
                    have: None,
                },
                Up::Hello {
                    name: "r".into(),
                    have: Some(u64::MAX),
                },
                Up::Status(vec![status.clone()]),
            ],
            vec![Down::Offer(sample_release())],
            vec![
                BodyRequest::One {
                    md5: Md5::of(b""),
                    offset: 12,
                },
                BodyRequest::Many(vec![Md5([3; 16]), Md5([4; 16])]),
            ],
            vec![AdminRequest::Publish, AdminRequest::Status],
            vec![
                AdminResponse::Published(PublishSummary {
                    version: 1,
                    changed: true,
                    files: 2,
                    bytes: 3,
                }),
                AdminResponse::Status {
                    node: "o".into(),
                    release: Some(1),
                    nodes: vec![status],
                },
                AdminResponse::Error("no".into()),
            ],
        )
    }

    fn roundtrip<T: Serialize + DeserializeOwned + PartialEq + fmt::Debug>(m: &T) {
        let frame = encode(m);
        assert_eq!(decode_frame::<T>(&frame).as_ref(), Ok(m));
        // Every strict prefix is an error, never a panic.
        for cut in 0..frame.len() {
            assert!(
                decode_frame::<T>(&frame[..cut]).is_err(),
                "prefix {cut} of {m:?}"
            );
        }
        // Flipping any single byte of the payload never panics.
        for i in HEADER_LEN..frame.len() {
            let mut bad = frame.clone();
            bad[i] ^= 0xff;
            let _ = decode_frame::<T>(&bad);
        }
    }

    #[test]
    fn every_message_round_trips_and_survives_corruption() {
        let (up, down, body, areq, aresp) = all_messages();
        up.iter().for_each(roundtrip);
        down.iter().for_each(roundtrip);
        body.iter().for_each(roundtrip);
        areq.iter().for_each(roundtrip);
        aresp.iter().for_each(roundtrip);
    }

    #[test]
    fn golden_bytes() {
        // Wire compatibility: these bytes must never change within protocol version 2.
        let hello = encode(&Up::Hello {
            name: "ab".into(),
            have: Some(300),
        });
        assert_eq!(hello, vec![0, 0, 0, 8, 0, 2, b'a', b'b', 1, 251, 44, 1]);
        let req = encode(&BodyRequest::One {
            md5: Md5([1; 16]),
            offset: 0,
        });
        let mut want = vec![0, 0, 0, 18, 0];
        want.extend([1u8; 16]);
        want.push(0);
        assert_eq!(req, want);
        let req = encode(&BodyRequest::Many(vec![Md5([2; 16])]));
        let mut want = vec![0, 0, 0, 18, 1, 1];
        want.extend([2u8; 16]);
        assert_eq!(req, want);
        assert_eq!(encode(&AdminRequest::Status), vec![0, 0, 0, 1, 1]);
    }

    #[test]
    fn raw_down_encodes_like_down() {
        let r = sample_release();
        let raw = RawDown::Offer(RawRelease {
            version: r.version,
            entries: r.manifest.entries().to_vec(),
        });
        assert_eq!(encode(&Down::Offer(r.clone())), encode(&raw));
        let RawDown::Offer(back) =
            decode_frame::<RawDown>(&encode(&Down::Offer(r.clone()))).unwrap();
        assert_eq!(back.validate().unwrap(), r);
    }

    #[test]
    fn oversized_frame_is_refused_before_allocating() {
        let header = ((MAX_FRAME + 1) as u32).to_be_bytes();
        assert_eq!(frame_len(header), Err(WireError::TooLarge(MAX_FRAME + 1)));
        // A huge length inside the payload (a string claiming 2^60 bytes) is an error too.
        let mut payload = vec![0u8, 255];
        payload.extend(1u64.wrapping_shl(60).to_le_bytes());
        assert!(decode::<Up>(&payload).is_err());
    }

    #[test]
    fn trailing_bytes_are_refused() {
        let mut frame = encode(&AdminRequest::Publish);
        frame.push(0);
        assert!(decode_frame::<AdminRequest>(&frame).is_err());
    }

    /// Decodes `payload` as every message type; none may panic.
    fn decode_all(payload: &[u8]) {
        let _ = decode::<Up>(payload);
        let _ = decode::<Down>(payload);
        let _ = decode::<RawDown>(payload);
        let _ = decode::<BodyRequest>(payload);
        let _ = decode::<AdminRequest>(payload);
        let _ = decode::<AdminResponse>(payload);
        let _ = decode_frame::<Up>(payload);
    }

    #[test]
    fn a_million_random_and_mutated_frames_never_panic() {
        // Deterministic xorshift fuzz; CASCADE_FUZZ_ITERS sets a longer (or shorter) run.
        let iters: usize = std::env::var("CASCADE_FUZZ_ITERS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(1_000_000);
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let (up, down, body, areq, aresp) = all_messages();
        let seeds: Vec<Vec<u8>> = up
            .iter()
            .map(encode)
            .chain(down.iter().map(encode))
            .chain(body.iter().map(encode))
            .chain(areq.iter().map(encode))
            .chain(aresp.iter().map(encode))
            .map(|f| f[HEADER_LEN..].to_vec())
            .collect();
        for i in 0..iters {
            let mut buf = if i % 8 == 7 {
                // Pure noise of random length.
                (0..next() % 64).map(|_| next() as u8).collect()
            } else {
                seeds[i % seeds.len()].clone()
            };
            for _ in 0..1 + next() % 4 {
                if buf.is_empty() {
                    break;
                }
                let p = (next() as usize) % buf.len();
                match next() % 3 {
                    0 => buf[p] = next() as u8,
                    1 => buf.insert(p, next() as u8),
                    _ => {
                        buf.remove(p);
                    }
                }
            }
            if next() % 5 == 0 {
                buf.truncate((next() as usize) % (buf.len() + 1));
            }
            decode_all(&buf);
        }
    }

    mod props {
        use proptest::prelude::*;

        use super::super::*;
        use crate::manifest::{Entry, EntryKind, Manifest, Md5};
        use crate::status::{NodeState, NodeStatus};

        fn name() -> impl Strategy<Value = String> {
            (0u32..50, prop::bool::ANY).prop_map(|(i, uni)| {
                if uni {
                    format!("fï lé {i}")
                } else {
                    format!("n{i}")
                }
            })
        }

        fn md5() -> impl Strategy<Value = Md5> {
            any::<[u8; 16]>().prop_map(Md5)
        }

        fn kind() -> impl Strategy<Value = EntryKind> {
            prop_oneof![
                (0..3 * crate::manifest::CHUNK, md5(), any::<i64>()).prop_map(
                    |(size, md5, mtime)| EntryKind::File {
                        size,
                        md5,
                        mtime,
                        chunks: (0..crate::manifest::chunk_count(size))
                            .map(|i| Md5([i as u8; 16]))
                            .collect(),
                    }
                ),
                Just(EntryKind::Dir),
                name().prop_map(|target| EntryKind::Symlink { target }),
            ]
        }

        /// Valid manifests: top-level entries plus files inside the directories among them.
        fn manifest() -> impl Strategy<Value = Manifest> {
            prop::collection::btree_map(
                name(),
                (
                    kind(),
                    0u32..0o7777,
                    prop::collection::btree_set(name(), 0..4),
                ),
                0..12,
            )
            .prop_map(|top| {
                let mut entries = Vec::new();
                for (n, (kind, mode, kids)) in top {
                    let is_dir = kind == EntryKind::Dir;
                    entries.push(Entry {
                        path: n.clone(),
                        mode,
                        kind,
                    });
                    if is_dir {
                        for k in kids {
                            entries.push(Entry {
                                path: format!("{n}/{k}"),
                                mode: 0o644,
                                kind: EntryKind::File {
                                    size: 1,
                                    md5: Md5([1; 16]),
                                    mtime: 0,
                                    chunks: vec![],
                                },
                            });
                        }
                    }
                }
                Manifest::from_entries(entries).expect("generated manifests are valid")
            })
        }

        fn state() -> impl Strategy<Value = NodeState> {
            prop_oneof![
                Just(NodeState::Idle),
                (any::<u64>(), any::<u64>(), any::<u64>()).prop_map(
                    |(version, done_bytes, total_bytes)| NodeState::Fetching {
                        version,
                        done_bytes,
                        total_bytes
                    }
                ),
                any::<u64>().prop_map(|version| NodeState::Applying { version }),
                (any::<u64>(), name())
                    .prop_map(|(version, error)| NodeState::Failed { version, error }),
            ]
        }

        fn status() -> impl Strategy<Value = NodeStatus> {
            (
                name(),
                any::<Option<u64>>(),
                state(),
                any::<(u64, u64, bool, u64, u64)>(),
            )
                .prop_map(
                    |(
                        name,
                        applied,
                        state,
                        (fetched_bytes, fetched_files, connected, sent_bytes, updated_ms),
                    )| NodeStatus {
                        name,
                        applied,
                        state,
                        fetched_bytes,
                        fetched_files,
                        connected,
                        sent_bytes,
                        updated_ms,
                    },
                )
        }

        /// Encoding round-trips and the length prefix is the payload's length.
        fn check<T: Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug>(m: &T) {
            let frame = encode(m);
            assert_eq!(
                u32::from_be_bytes(frame[..4].try_into().unwrap()) as usize,
                frame.len() - 4
            );
            assert_eq!(&decode_frame::<T>(&frame).unwrap(), m);
        }

        proptest! {
            #[test]
            fn up_round_trips(name in name(), have in any::<Option<u64>>(), list in prop::collection::vec(status(), 0..5)) {
                check(&Up::Hello { name, have });
                check(&Up::Status(list));
            }

            #[test]
            fn down_round_trips_and_matches_raw(version in any::<u64>(), manifest in manifest()) {
                let release = Release { version, manifest };
                check(&Down::Offer(release.clone()));
                let RawDown::Offer(raw) = decode_frame::<RawDown>(&encode(&Down::Offer(release.clone()))).unwrap();
                prop_assert_eq!(raw.validate().unwrap(), release);
            }

            #[test]
            fn body_and_admin_round_trip(md5 in md5(), offset in any::<u64>(), node in name(), release in any::<Option<u64>>(),
                                         nodes in prop::collection::vec(status(), 0..4), err in name(),
                                         s in any::<(u64, bool, u64, u64)>()) {
                check(&BodyRequest::One { md5, offset });
                check(&BodyRequest::Many(vec![md5; (offset % 50) as usize]));
                check(&AdminRequest::Publish);
                check(&AdminRequest::Status);
                check(&AdminResponse::Status { node, release, nodes });
                check(&AdminResponse::Error(err));
                check(&AdminResponse::Published(PublishSummary { version: s.0, changed: s.1, files: s.2, bytes: s.3 }));
            }
        }
    }
}
