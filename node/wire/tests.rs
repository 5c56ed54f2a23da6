//! Golden bytes, round-trips, corruption and fuzzing of every message.

use std::fmt;

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::*;
use crate::status::{NodeState, NodeStatus};
use crate::tree::hash::blake3_root;
use crate::tree::manifest::fixtures::file;
use crate::tree::{Blake3, Entry, EntryKind, Manifest, Md5, Release, Sums};

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
                blake3: Blake3::of(b"abc"),
                mtime: -1,
                chunks: vec![],
            },
        },
        Entry {
            path: "big".into(),
            mode: 0o644,
            kind: EntryKind::File {
                size: crate::tree::CHUNK + 1,
                md5: Md5([9; 16]),
                blake3: blake3_root(&[Blake3([1; 32]), Blake3([2; 32])], crate::tree::CHUNK + 1),
                mtime: 1,
                chunks: vec![
                    Sums {
                        md5: Md5([1; 16]),
                        blake3: Blake3([1; 32]),
                    },
                    Sums {
                        md5: Md5([2; 16]),
                        blake3: Blake3([2; 32]),
                    },
                ],
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
        revoked: vec![[3; 32]],
        signature: vec![9; 64],
        topology: Some("[[node]]\nname = \"o\"\n".into()),
        rotation: None,
    }
}

/// Release 6, holding only [`sample_release`]'s directory `a`.
fn sample_base() -> Release {
    Release {
        version: 6,
        manifest: Manifest::from_entries(vec![crate::tree::manifest::fixtures::dir("a")]).unwrap(),
        ..sample_release()
    }
}

/// [`sample_release`] as a delta against [`sample_base`].
fn sample_delta() -> Delta {
    Delta::between(&sample_base(), &sample_release())
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
        parent: Some("relay-1".into()),
        down_since_ms: Some(1_700_000_000_001),
        rate_bps: 123_456,
        sent_bytes: 9,
        offered_bytes: 11,
        updated_ms: 1_700_000_000_000,
        hook_error: Some("`nginx -s reload` failed (exit status 1)".into()),
        kept: vec!["uploads".into()],
        repaired: 2,
    };
    (
        vec![
            Up::Hello {
                name: "web-1".into(),
                have: None,
                root: None,
                push: None,
            },
            Up::Hello {
                name: "r".into(),
                have: Some(u64::MAX),
                root: Some(Blake3([5; 32])),
                push: Some(Compress::Auto),
            },
            Up::Status(vec![status.clone()]),
        ],
        vec![
            Down::Offer(sample_release()),
            Down::OfferDelta(sample_delta()),
        ],
        vec![
            BodyRequest {
                bodies: Bodies::One {
                    id: Blake3::empty(),
                    offset: 12,
                },
                compress: Compress::Off,
            },
            BodyRequest {
                bodies: Bodies::Many(vec![Blake3([3; 32]), Blake3([4; 32])]),
                compress: Compress::Zstd,
            },
            BodyRequest {
                bodies: Bodies::Many(vec![]),
                compress: Compress::Auto,
            },
        ],
        vec![
            AdminRequest::Publish,
            AdminRequest::Status,
            AdminRequest::Verify { full: Some(true) },
            AdminRequest::Topology,
            AdminRequest::ApplyTopology("[[node]]\nname = \"o\"\n".into()),
            AdminRequest::Tree,
        ],
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
            AdminResponse::Topology("[[node]]\nname = \"o\"\n".into()),
            AdminResponse::Verified(VerifySummary {
                version: 3,
                full: false,
                checked: 10,
                repaired: vec!["index.html".into()],
                fetched: 1,
            }),
            AdminResponse::Tree(Box::new(tree_view())),
        ],
    )
}

/// A two-node view with every optional field set.
fn tree_view() -> crate::status::view::TreeView {
    use crate::status::view::{Progress, State, TreeView, ViewNode};
    let leaf = ViewNode {
        name: "web-1".into(),
        role: "leaf".into(),
        state: State::Fetching,
        detail: Some("via relay-1".into()),
        release: Some(3),
        fetching: Some(Progress {
            version: 4,
            done_bytes: 1,
            total_bytes: 2,
        }),
        lag_releases: Some(1),
        lag_seconds: Some(5),
        rate_bytes_per_second: 6,
        parent: Some("o".into()),
        on_backup_parent: true,
        unreachable_since_ms: Some(7),
        last_report_ms: Some(8),
        hook_error: Some("hook".into()),
        fetched_bytes: 9,
        fetched_files: 10,
        sent_bytes: 11,
        repaired: 12,
        kept: vec!["uploads".into()],
        children: vec![],
    };
    let mut root = leaf.clone();
    root.name = "o".into();
    root.state = State::InSync;
    root.children = vec![leaf];
    TreeView {
        node: "o".into(),
        release: Some(4),
        at_ms: 13,
        root,
    }
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
    // Wire compatibility: these bytes must never change within protocol version 8.
    let hello = encode(&Up::Hello {
        name: "ab".into(),
        have: Some(300),
        root: None,
        push: Some(Compress::Off),
    });
    assert_eq!(
        hello,
        vec![0, 0, 0, 10, 0, 2, b'a', b'b', 1, 0xac, 0x02, 0, 1, 0]
    );
    // A push header: size 300, path "ab".
    let push = encode(&PushHeader {
        size: 300,
        path: "ab".into(),
    });
    assert_eq!(push, vec![0, 0, 0, 5, 0xac, 0x02, 2, b'a', b'b']);
    // A delta: tag 1, version 2, base 1, base root, one kept run of 3 entries from 0, then
    // no revocations, no signature, no topology, no rotation.
    let delta = encode(&Down::OfferDelta(Delta {
        version: 2,
        base: 1,
        base_root: Blake3([7; 32]),
        runs: vec![crate::tree::Run::Keep { from: 0, len: 3 }],
        revoked: vec![],
        signature: vec![],
        topology: None,
        rotation: None,
    }));
    let mut want = vec![0, 0, 0, 43, 1, 2, 1];
    want.extend([7u8; 32]);
    want.extend([1, 0, 0, 3, 0, 0, 0, 0]);
    assert_eq!(delta, want);
    let req = encode(&BodyRequest {
        bodies: Bodies::One {
            id: Blake3([1; 32]),
            offset: 0,
        },
        compress: Compress::Off,
    });
    let mut want = vec![0, 0, 0, 35, 0];
    want.extend([1u8; 32]);
    want.extend([0, 0]);
    assert_eq!(req, want);
    let req = encode(&BodyRequest {
        bodies: Bodies::Many(vec![Blake3([2; 32])]),
        compress: Compress::Auto,
    });
    let mut want = vec![0, 0, 0, 35, 1, 1];
    want.extend([2u8; 32]);
    want.push(2);
    assert_eq!(req, want);
    assert_eq!(encode(&AdminRequest::Status), vec![0, 0, 0, 1, 1]);
}

/// A release of `n` pages in 20 directories, as a site's manifest looks.
fn site_release(n: usize) -> Release {
    let mut entries: Vec<Entry> = (0..20)
        .map(|d| crate::tree::manifest::fixtures::dir(&format!("section-{d:02}")))
        .collect();
    for i in 0..n {
        entries.push(file(
            &format!("section-{:02}/page-{i:05}.html", i % 20),
            format!("<p>page {i}</p>").as_bytes(),
        ));
    }
    entries.sort_by(|a, b| a.path.cmp(&b.path));
    Release {
        manifest: Manifest::from_entries(entries).unwrap(),
        ..sample_release()
    }
}

/// What a child makes of one offer frame.
fn offered(frame: &[u8]) -> Result<Offered, WireError> {
    decode_frame::<RawDown>(frame)?.offered()
}

#[test]
fn a_packed_offer_is_smaller_and_unpacks_to_the_same_offer() {
    let r = site_release(2000);
    let frame = encode_offer(&r);
    for compress in [Compress::Zstd, Compress::Auto] {
        let packed = pack_down(&frame, compress).unwrap();
        assert!(
            packed.len() < frame.len() * 3 / 4,
            "{compress:?}: {} bytes packed, {} raw",
            packed.len(),
            frame.len()
        );
        let Ok(Offered::Whole(back)) = offered(&packed) else {
            panic!("a packed offer unpacks to the offer")
        };
        assert_eq!(back.validate().unwrap(), r);
    }
    // Off, or a frame that does not shrink: the frame as it is.
    assert_eq!(pack_down(&frame, Compress::Off).unwrap()[..], frame[..]);
    let noisy = Delta {
        runs: Vec::new(),
        revoked: Vec::new(),
        signature: crate::testkit::noise(4096, 1),
        topology: None,
        ..sample_delta()
    };
    let delta = encode_shared(&Down::OfferDelta(noisy.clone()));
    assert_eq!(pack_down(&delta, Compress::Zstd).unwrap()[..], delta[..]);
    // A delta that shrinks is packed, and unpacks to itself.
    let delta = encode_shared(&Down::OfferDelta(sample_delta()));
    let packed = pack_down(&delta, Compress::Zstd).unwrap();
    assert!(packed.len() < delta.len());
    let Ok(Offered::Delta(d)) = offered(&packed) else {
        panic!("a delta stays a delta")
    };
    assert_eq!(d, sample_delta());
    let Ok(Offered::Delta(d)) = offered(&pack_down(&delta, Compress::Off).unwrap()) else {
        panic!("a delta stays a delta")
    };
    assert_eq!(d, sample_delta());
}

#[test]
fn a_packed_offer_that_is_broken_or_packed_twice_or_too_large_is_refused() {
    let frame = encode_offer(&site_release(2000));
    let packed = pack_down(&frame, Compress::Zstd).unwrap();
    let RawDown::Packed(blocks) = decode_frame::<RawDown>(&packed).unwrap() else {
        panic!("a large manifest is packed")
    };
    // Cut short, inside a block's header and inside its bytes.
    for cut in [2, blocks.len() - 1] {
        let short = encode(&Down::Packed(blocks[..cut].to_vec()));
        assert_eq!(
            offered(&short).unwrap_err(),
            WireError::Truncated,
            "cut at {cut}"
        );
    }
    // A block whose header claims more than a block may hold.
    let mut bad = blocks.clone();
    bad[..4].copy_from_slice(&(u32::MAX >> 1).to_be_bytes());
    assert!(offered(&encode(&Down::Packed(bad))).is_err());
    // Packed twice.
    let mut again = Vec::new();
    let mut packer = blocks::Packer::new(Compress::Zstd).unwrap();
    packer.pack(&packed[HEADER_LEN..], &mut again);
    let err = offered(&encode(&Down::Packed(again))).unwrap_err();
    assert!(err.to_string().contains("packed again"), "{err}");
    // Blocks that unpack to more than any frame may hold: refused once past the limit.
    let mut bomb = Vec::new();
    let zeros = vec![0u8; blocks::BLOCK];
    for _ in 0..=MAX_FRAME / blocks::BLOCK {
        packer.pack(&zeros, &mut bomb);
    }
    assert!(bomb.len() < 1 << 20, "{} bytes", bomb.len());
    assert!(matches!(
        offered(&encode(&Down::Packed(bomb))),
        Err(WireError::TooLarge(..))
    ));
}

#[test]
fn raw_down_encodes_like_down() {
    let r = sample_release();
    let raw = RawDown::Offer(RawRelease {
        known: None,
        version: r.version,
        entries: r.manifest.entries().to_vec(),
        revoked: r.revoked.clone(),
        signature: r.signature.clone(),
        topology: r.topology.clone(),
        rotation: r.rotation.clone(),
    });
    assert_eq!(encode(&Down::Offer(r.clone())), encode(&raw));
    assert_eq!(encode(&Down::Offer(r.clone()))[..], encode_offer(&r)[..]);
    let Ok(RawDown::Offer(back)) = decode_frame::<RawDown>(&encode(&Down::Offer(r.clone()))) else {
        panic!("an offer decodes as a raw offer")
    };
    assert_eq!(back.validate().unwrap(), r);
    let d = sample_delta();
    assert_eq!(
        encode(&Down::OfferDelta(d.clone())),
        encode(&RawDown::OfferDelta(d.clone()))
    );
    // Encoded in place into a buffer of its exact size: the same bytes.
    let shared = encode_shared(&Down::OfferDelta(d.clone()));
    assert_eq!(shared[..], encode(&Down::OfferDelta(d))[..]);
}

#[test]
fn a_delta_rebuilds_its_release_only_from_its_base() {
    let (r, base) = (sample_release(), sample_base());
    let d = Delta::between(&base, &r);
    // One kept run (the directory) and the three new entries.
    assert_eq!(d.runs.len(), 2, "{:?}", d.runs);
    assert_eq!(d.clone().rebuild(&base).unwrap().validate().unwrap(), r);
    // Another release of the same version, or the right one under another version: refused.
    let other = Release {
        manifest: Manifest::from_entries(vec![crate::tree::manifest::fixtures::dir("b")]).unwrap(),
        ..base.clone()
    };
    for wrong in [other, Release { version: 5, ..base }] {
        assert!(matches!(
            d.clone().rebuild(&wrong),
            Err(crate::tree::DeltaError::WrongBase { version: 6 })
        ));
    }
}

#[test]
fn oversized_frame_is_refused_before_allocating() {
    let header = ((MAX_FRAME + 1) as u32).to_be_bytes();
    assert_eq!(
        frame_len(header, MAX_FRAME),
        Err(WireError::TooLarge(MAX_FRAME + 1, MAX_FRAME))
    );
    // Each message type has its own limit: a body request is small.
    let header = ((BodyRequest::MAX + 1) as u32).to_be_bytes();
    assert!(frame_len(header, BodyRequest::MAX).is_err());
    assert!(frame_len(header, Up::MAX).is_ok());
    // The largest real body request fits its limit.
    let most = encode(&BodyRequest {
        bodies: Bodies::Many(vec![Blake3([0xff; 32]); MAX_BATCH]),
        compress: Compress::Zstd,
    });
    assert!(most.len() - HEADER_LEN <= BodyRequest::MAX);
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
    // Deterministic xorshift fuzz; FUZZ_ITERS sets a longer (or shorter) run.
    let iters: usize = std::env::var("FUZZ_ITERS")
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

#[test]
fn wire_order_is_enforced() {
    let entries = vec![file("b", b""), file("a", b"")];
    let bytes = encode(&entries);
    // postcard keeps no text of a custom error; a node decodes offers as `RawDown` and
    // validates them itself, which names the reason.
    assert!(decode_frame::<Manifest>(&bytes).is_err());
    let raw: RawRelease = decode_frame(&encode(&RawRelease {
        known: None,
        version: 1,
        entries: entries.into_iter().map(std::sync::Arc::new).collect(),
        revoked: vec![],
        signature: vec![],
        topology: None,
        rotation: None,
    }))
    .unwrap();
    let err = raw.validate().unwrap_err();
    assert!(err.to_string().contains("out of order"), "{err}");
    let m = sample_release().manifest;
    let back: Manifest = decode_frame(&encode(&m)).unwrap();
    assert_eq!(back, m);
}

mod props {
    use proptest::prelude::*;

    use serde::Serialize;

    use super::super::*;
    use crate::status::{NodeState, NodeStatus};
    use crate::tree::hash::{blake3_root, chunk_count};
    use crate::tree::{Blake3, Entry, EntryKind, Manifest, Md5, Release, Rotation, Sums};

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

    fn blake3() -> impl Strategy<Value = Blake3> {
        any::<[u8; 32]>().prop_map(Blake3)
    }

    fn kind() -> impl Strategy<Value = EntryKind> {
        prop_oneof![
            (0..3 * crate::tree::CHUNK, md5(), blake3(), any::<i64>()).prop_map(
                |(size, md5, blake3, mtime)| {
                    let chunks: Vec<Sums> = (0..chunk_count(size))
                        .map(|i| Sums {
                            md5: Md5([i as u8; 16]),
                            blake3: Blake3([i as u8; 32]),
                        })
                        .collect();
                    let cvs: Vec<Blake3> = chunks.iter().map(|c| c.blake3).collect();
                    EntryKind::File {
                        size,
                        md5,
                        blake3: if chunks.is_empty() {
                            blake3
                        } else {
                            blake3_root(&cvs, size)
                        },
                        mtime,
                        chunks,
                    }
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
                                blake3: Blake3([1; 32]),
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
            (any::<u64>(), name())
                .prop_map(|(version, reason)| NodeState::Refused { version, reason }),
        ]
    }

    fn status() -> impl Strategy<Value = NodeStatus> {
        (
            name(),
            any::<Option<u64>>(),
            state(),
            any::<(u64, u64, bool, u64, u64)>(),
            (
                proptest::option::of(name()),
                proptest::collection::vec(name(), 0..3),
                any::<u64>(),
                any::<u64>(),
            ),
            (
                proptest::option::of(name()),
                any::<Option<u64>>(),
                any::<u64>(),
            ),
        )
            .prop_map(
                |(
                    name,
                    applied,
                    state,
                    (fetched_bytes, fetched_files, connected, sent_bytes, updated_ms),
                    (hook_error, kept, repaired, offered_bytes),
                    (parent, down_since_ms, rate_bps),
                )| NodeStatus {
                    name,
                    applied,
                    state,
                    fetched_bytes,
                    fetched_files,
                    connected,
                    parent,
                    down_since_ms,
                    rate_bps,
                    sent_bytes,
                    offered_bytes,
                    updated_ms,
                    hook_error,
                    kept,
                    repaired,
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
            check(&Up::Hello { name, have, root: have.map(|v| Blake3([v as u8; 32])), push: have.map(|_| Compress::Zstd) });
            check(&Up::Status(list));
        }

        #[test]
        fn down_round_trips_and_matches_raw(version in any::<u64>(), manifest in manifest(), revoked in prop::collection::vec(any::<[u8; 32]>(), 0..3), signature in prop::collection::vec(any::<u8>(), 0..70)) {
            let rotation = (version % 2 == 0).then(|| Rotation { next: [version as u8; 32], endorsement: signature.clone() });
            let topology = (version % 3 == 0).then(|| format!("[[node]]\nname = \"n{version}\"\n"));
            let release = Release { version, manifest, revoked, signature, topology, rotation };
            check(&Down::Offer(release.clone()));
            let Ok(RawDown::Offer(raw)) = decode_frame::<RawDown>(&encode(&Down::Offer(release.clone()))) else {
                panic!("an offer decodes as a raw offer")
            };
            prop_assert_eq!(raw.validate().unwrap(), release.clone());
            // The same release as a delta against an empty one, and against itself one
            // version down.
            for base in [Release { version: 0, ..Release::unsigned(0, Manifest::empty()) }, Release { version: release.version.saturating_sub(1), ..release.clone() }] {
                let d = Delta::between(&base, &release);
                check(&Down::OfferDelta(d.clone()));
                let Ok(RawDown::OfferDelta(back)) = decode_frame::<RawDown>(&encode(&Down::OfferDelta(d))) else {
                    panic!("a delta decodes as a raw delta")
                };
                prop_assert_eq!(back.rebuild(&base).unwrap().validate().unwrap(), release.clone());
            }
        }

        #[test]
        fn body_and_admin_round_trip(id in blake3(), offset in any::<u64>(), node in name(), release in any::<Option<u64>>(),
                                     nodes in prop::collection::vec(status(), 0..4), err in name(),
                                     s in any::<(u64, bool, u64, u64)>()) {
            let compress = [Compress::Off, Compress::Zstd, Compress::Auto][(offset % 3) as usize];
            check(&BodyRequest { bodies: Bodies::One { id, offset }, compress });
            check(&BodyRequest { bodies: Bodies::Many(vec![id; (offset % 50) as usize]), compress });
            check(&AdminRequest::Publish);
            check(&AdminRequest::Status);
            check(&AdminResponse::Status { node, release, nodes });
            check(&AdminResponse::Error(err));
            check(&AdminResponse::Published(PublishSummary { version: s.0, changed: s.1, files: s.2, bytes: s.3 }));
        }
    }
}
