//! A hostile parent: a real QUIC endpoint holding relay-1's real certificate, scripted by the
//! test, talking to a real `cascade node` leaf process. Hostile manifests are refused whole,
//! malformed frames close the link with a reason, and the leaf never panics or writes outside
//! its directory.

mod common;

use std::fs;
use std::net::SocketAddr;
use std::time::Duration;

use cascade::net;
use cascade::status::NodeState;
use cascade::testkit::noise;
use cascade::tree::{Blake3, Entry, EntryKind, Manifest, Md5, Release};
use cascade::wire::{ErrorCode, RawDown, RawRelease, Up};
use cascade_certs::{Identity, ReleaseKey};
use common::Cluster;
use quinn::{Connection, ConnectionError, Endpoint, SendStream};

/// relay-1, impersonated by the test with relay-1's own certificate.
struct FakeParent {
    rt: tokio::runtime::Runtime,
    endpoint: Endpoint,
    /// The deployment's release key: this fake parent's offers are signed as the origin's
    /// would be (what is tested here is the manifest check behind the signature check).
    key: ReleaseKey,
}

struct FakeLink {
    conn: Connection,
    send: SendStream,
}

impl FakeParent {
    fn new(c: &Cluster) -> Self {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let id = Identity::load(&c.dep.base.join("certs"), "relay-1").unwrap();
        let addr: SocketAddr = c.dep.topology.node("relay-1").unwrap().listen.unwrap();
        let endpoint = rt
            .block_on(async {
                net::endpoint(
                    &id,
                    Some(addr),
                    None,
                    Duration::from_secs(15),
                    &Default::default(),
                )
            })
            .unwrap();
        let key = ReleaseKey::load(&c.dep.base.join("certs")).unwrap();
        FakeParent { rt, endpoint, key }
    }

    /// Waits for the leaf to connect and say hello.
    fn accept(&self) -> FakeLink {
        self.rt.block_on(async {
            let conn = tokio::time::timeout(Duration::from_secs(30), self.endpoint.accept())
                .await
                .expect("the leaf connects within 30 s")
                .unwrap()
                .await
                .unwrap();
            let (send, mut recv) = conn.accept_bi().await.unwrap();
            match net::recv::<_, Up>(&mut recv).await.unwrap() {
                Some(Up::Hello { name, .. }) => assert_eq!(name, "leaf-1-1"),
                other => panic!("expected hello, got {other:?}"),
            }
            // Keep reading reports so the leaf's sends never block.
            tokio::spawn(
                async move { while let Ok(Some(_)) = net::recv::<_, Up>(&mut recv).await {} },
            );
            FakeLink { conn, send }
        })
    }

    /// Offers a release signed with the deployment's key (a hostile manifest gets a signature
    /// over nothing: it is refused before the signature is looked at).
    fn offer(&self, l: &mut FakeLink, version: u64, entries: Vec<Entry>) {
        self.offer_signed_by(l, version, entries, Some(&self.key));
    }

    fn offer_signed_by(
        &self,
        l: &mut FakeLink,
        version: u64,
        entries: Vec<Entry>,
        key: Option<&ReleaseKey>,
    ) {
        let signature = match (Manifest::from_sorted(entries.clone()), key) {
            (Ok(m), Some(k)) => k.sign(version, &Release::unsigned(version, m).signed_digest().0),
            (Err(_), Some(_)) => vec![0; 64],
            (_, None) => Vec::new(),
        };
        self.send_offer(l, version, entries, signature);
    }

    fn send_offer(&self, l: &mut FakeLink, version: u64, entries: Vec<Entry>, signature: Vec<u8>) {
        let frame = cascade::wire::encode(&RawDown::Offer(RawRelease {
            version,
            entries: entries.into_iter().map(std::sync::Arc::new).collect(),
            revoked: vec![],
            signature,
            topology: None,
            rotation: None,
            known: None,
        }));
        self.raw(l, &frame);
    }

    fn raw(&self, l: &mut FakeLink, bytes: &[u8]) {
        self.rt
            .block_on(async { l.send.write_all(bytes).await.unwrap() });
    }

    /// How the leaf closed the link.
    fn closed(&self, l: &FakeLink) -> ConnectionError {
        self.rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(10), l.conn.closed())
                .await
                .expect("the leaf closes the link")
        })
    }
}

fn file(path: &str) -> Entry {
    Entry {
        path: path.into(),
        mode: 0o644,
        kind: EntryKind::File {
            size: 0,
            md5: Md5::of(b""),
            blake3: Blake3::empty(),
            mtime: 0,
            chunks: vec![],
        },
    }
}

fn dir(path: &str) -> Entry {
    Entry {
        path: path.into(),
        mode: 0o755,
        kind: EntryKind::Dir,
    }
}

fn leaf_state(c: &Cluster) -> Option<NodeState> {
    c.status_of("leaf-1-1", "leaf-1-1").map(|s| s.state)
}

#[test]
fn hostile_manifests_are_refused_whole_and_the_node_carries_on() {
    let mut c = Cluster::new(1, 1);
    let fake = FakeParent::new(&c);
    c.start("leaf-1-1");
    let mut l = fake.accept();
    let outside = c.tmp.path().join("escaped");
    let abs = outside.to_str().unwrap().to_owned();

    let hostile: Vec<(&str, Vec<Entry>)> = vec![
        ("absolute path", vec![file(&abs)]),
        ("dot-dot", vec![file("../escaped")]),
        ("dot-dot inside", vec![dir("a"), file("a/../../escaped")]),
        ("NUL", vec![file("nul\0byte")]),
        ("repeated path", vec![file("same"), file("same")]),
        ("file under a file", vec![file("f"), file("f/x")]),
        ("out of order", vec![file("b"), file("a")]),
    ];
    for (i, (what, entries)) in hostile.into_iter().enumerate() {
        let version = 100 + i as u64;
        fake.offer(&mut l, version, entries);
        c.wait(&format!("the leaf to refuse the {what} release"), Duration::from_secs(20), || {
            matches!(leaf_state(&c), Some(NodeState::Failed { version: v, ref error }) if v == version && error.contains("refused release"))
        });
    }
    // A valid manifest without the origin's signature, or signed by another key (a relay's
    // certificate stolen, a key of the thief's own), is refused just as whole.
    let other = c.tmp.path().join("thief");
    cascade_certs::init_release_key(&other, false).unwrap();
    let thief = ReleaseKey::load(&other).unwrap();
    for (version, key, why) in [
        (150, None, "not signed"),
        (151, Some(&thief), "bad signature"),
    ] {
        fake.offer_signed_by(&mut l, version, vec![file("index.html")], key);
        c.wait(&format!("the leaf to refuse release {version}"), Duration::from_secs(20), || {
            matches!(leaf_state(&c), Some(NodeState::Failed { version: v, ref error }) if v == version && error.contains(why))
        });
    }
    // The origin's real signature, forwarded over a manifest the relay rewrote (a body
    // swapped, its MD5 recomputed): refused, and the status names the relay that sent it.
    let real = fake.key.sign(
        152,
        &Release::unsigned(
            152,
            Manifest::from_sorted(vec![file("index.html")]).unwrap(),
        )
        .signed_digest()
        .0,
    );
    let mut rewritten = file("index.html");
    if let EntryKind::File { size, md5, .. } = &mut rewritten.kind {
        *size = 7;
        *md5 = Md5::of(b"defaced");
    }
    fake.send_offer(&mut l, 152, vec![rewritten], real);
    c.wait("the leaf to refuse the rewritten release", Duration::from_secs(20), || {
        matches!(leaf_state(&c), Some(NodeState::Failed { version: 152, ref error }) if error.contains("bad signature") && error.contains("from relay-1"))
    });
    assert!(!outside.exists(), "a hostile manifest wrote outside dir");
    assert_eq!(fs::read_dir(c.dir("leaf-1-1")).unwrap().count(), 0);
    assert_eq!(c.status_of("leaf-1-1", "leaf-1-1").unwrap().applied, None);

    // The same link still works: a valid release is applied.
    fake.offer(&mut l, 200, vec![dir("ok"), file("ok/empty")]);
    c.wait_holds("leaf-1-1", 200);
    assert!(c.dir("leaf-1-1").join("ok/empty").is_file());
    assert!(c
        .log("leaf-1-1")
        .contains("refused release 100 from the parent relay-1"));
}

#[test]
fn malformed_frames_close_the_link_with_a_reason_and_the_leaf_reconnects() {
    let mut c = Cluster::new(1, 1);
    let fake = FakeParent::new(&c);
    c.start("leaf-1-1");

    // A frame claiming more than the maximum size: refused before allocating.
    let mut l = fake.accept();
    fake.raw(&mut l, &u32::MAX.to_be_bytes());
    let why = fake.closed(&l);
    assert_protocol_close(&why, "exceeds the limit");

    // Garbage of a plausible size: refused as malformed.
    let mut l = fake.accept();
    let mut frame = 9u32.to_be_bytes().to_vec();
    frame.extend([0xff; 9]);
    fake.raw(&mut l, &frame);
    assert_protocol_close(&fake.closed(&l), "malformed");

    // A packed offer that holds another packed message, and one that unpacks to more than
    // any frame may hold (a few hundred bytes on the wire): refused, never followed.
    use cascade::wire::blocks::{Packer, BLOCK};
    use cascade::wire::{Compress, Down};
    let packed = |blocks: Vec<u8>| cascade::wire::encode(&Down::Packed(blocks));
    let mut packer = Packer::new(Compress::Zstd).unwrap();
    let mut twice = Vec::new();
    packer.pack(&packed(b"anything".to_vec())[4..], &mut twice);
    let mut bomb = Vec::new();
    for _ in 0..=cascade::wire::MAX_FRAME / BLOCK {
        packer.pack(&vec![0; BLOCK], &mut bomb);
    }
    for (blocks, why) in [(twice, "packed again"), (bomb, "exceeds the limit")] {
        let mut l = fake.accept();
        fake.raw(&mut l, &packed(blocks));
        assert_protocol_close(&fake.closed(&l), why);
    }

    // After all that the leaf is still up and takes a valid release.
    let mut l = fake.accept();
    fake.offer(&mut l, 1, vec![file("fine")]);
    c.wait_holds("leaf-1-1", 1);
    let log = c.log("leaf-1-1");
    assert!(!log.contains("panicked"), "{log}");
}

fn assert_protocol_close(e: &ConnectionError, why: &str) {
    match e {
        ConnectionError::ApplicationClosed(a) => {
            assert_eq!(
                a.error_code.into_inner(),
                ErrorCode::Protocol.code() as u64,
                "{a:?}"
            );
            assert!(String::from_utf8_lossy(&a.reason).contains(why), "{a:?}");
        }
        other => panic!("expected a protocol close, got {other:?}"),
    }
}

/// A hostile child: a real QUIC client holding leaf-1-1's real certificate, scripted by the
/// test, against a real relay. What a leaf's key buys: body streams it holds open without a
/// request, or requests over their size limit, are reset and cost the relay nothing more.
#[test]
fn a_hostile_child_is_cut_off_for_stalled_or_oversized_requests_or_a_topology_sent_up() {
    let mut c = Cluster::new(1, 1);
    c.start("origin");
    c.start("relay-1");
    common::write(&c.dir("origin"), "index.html", b"home");
    let _ = c.publish(&[]);
    c.wait_holds("relay-1", 1);

    let rt = tokio::runtime::Runtime::new().unwrap();
    let id = Identity::load(&c.dep.base.join("certs"), "leaf-1-1").unwrap();
    let addr: SocketAddr = c.dep.topology.node("relay-1").unwrap().listen.unwrap();
    let reset_code = |r: Result<Option<Vec<u8>>, quinn::ReadError>| match r {
        Err(quinn::ReadError::Reset(code)) => Some(code.into_inner()),
        other => panic!("expected the stream to be reset, got {other:?}"),
    };
    rt.block_on(async {
        let ep = net::endpoint(
            &id,
            None,
            Some(addr),
            Duration::from_secs(15),
            &Default::default(),
        )
        .unwrap();
        let conn = net::connect(&ep, addr, "relay-1").await.unwrap();
        let (mut ctl, _ctl_recv) = conn.open_bi().await.unwrap();
        net::send(
            &mut ctl,
            &Up::Hello {
                name: "leaf-1-1".into(),
                have: None,
                root: None,
                push: None,
            },
        )
        .await
        .unwrap();

        // A body stream opened and left silent: reset once the request timeout passes.
        let started = std::time::Instant::now();
        let (mut silent, mut silent_recv) = conn.open_bi().await.unwrap();
        // (A stream is only seen by the peer once something is sent: one byte of a header.)
        silent.write_all(&[0]).await.unwrap();
        let got = tokio::time::timeout(Duration::from_secs(60), silent_recv.read_to_end(1024))
            .await
            .expect("the relay answers a silent stream within a minute");
        let code = match got {
            Err(quinn::ReadToEndError::Read(e)) => reset_code(Err(e)),
            other => panic!("expected a reset, got {other:?}"),
        };
        assert_eq!(code, Some(ErrorCode::Protocol.code() as u64));
        assert!(started.elapsed() >= Duration::from_secs(9));

        // A request whose frame claims 2 MiB (a body request is at most 1 MiB): reset at once.
        let (mut big, mut big_recv) = conn.open_bi().await.unwrap();
        big.write_all(&(2u32 << 20).to_be_bytes()).await.unwrap();
        let got = tokio::time::timeout(Duration::from_secs(5), big_recv.read_to_end(1024))
            .await
            .expect("the relay refuses an oversized request at once");
        match got {
            Err(quinn::ReadToEndError::Read(e)) => {
                assert_eq!(reset_code(Err(e)), Some(ErrorCode::Protocol.code() as u64))
            }
            other => panic!("expected a reset, got {other:?}"),
        }

        // The link itself is still good: a proper request is served.
        let (mut ok, mut ok_recv) = conn.open_bi().await.unwrap();
        net::send(
            &mut ok,
            &cascade::wire::BodyRequest {
                bodies: cascade::wire::Bodies::Many(vec![Blake3::of(b"home")]),
                compress: cascade::wire::Compress::Off,
            },
        )
        .await
        .unwrap();
        ok.finish().unwrap();
        assert_eq!(ok_recv.read_to_end(1024).await.unwrap(), b"home");

        // A child presenting a topology upward: no message carries one up, so the frame (a
        // message tag past the last `Up` variant, then a topology's text) is refused and
        // the link closed, naming why.
        let text = "[[node]]\nname = \"leaf-1-1\"\n";
        let mut payload = vec![2u8, text.len() as u8];
        payload.extend(text.as_bytes());
        let mut frame = (payload.len() as u32).to_be_bytes().to_vec();
        frame.extend(payload);
        ctl.write_all(&frame).await.unwrap();
        let why = tokio::time::timeout(Duration::from_secs(10), conn.closed())
            .await
            .expect("the relay closes the link");
        match why {
            ConnectionError::ApplicationClosed(c) => {
                assert_eq!(
                    c.error_code.into_inner(),
                    ErrorCode::Protocol.code() as u64,
                    "{c:?}"
                )
            }
            other => panic!("expected a protocol close, got {other:?}"),
        }
    });
    let log = c.log("relay-1");
    assert!(log.contains("bad body request: none within"), "{log}");
    assert!(log.contains("exceeds the limit"), "{log}");
    // The relay still runs under the origin's topology, and logged the refusal.
    assert!(log.contains("malformed"), "{log}");
    assert!(c.status_of("relay-1", "relay-1").is_some());
}

/// A file entry for `body`, as a manifest carries it.
fn file_of(path: &str, body: &[u8]) -> Entry {
    Entry {
        path: path.into(),
        mode: 0o644,
        kind: EntryKind::File {
            size: body.len() as u64,
            md5: Md5::of(body),
            blake3: Blake3::of(body),
            mtime: 0,
            chunks: vec![],
        },
    }
}

/// One block of a packed body stream, as the wire spec lays it out.
fn block(compressed: bool, stored: &[u8]) -> Vec<u8> {
    let flag = if compressed { 1 << 31 } else { 0 };
    let mut out = (stored.len() as u32 | flag).to_be_bytes().to_vec();
    out.extend_from_slice(stored);
    out
}

impl FakeParent {
    /// Accepts the leaf's next body stream, answers it with `answer` and returns the request.
    fn serve(&self, l: &FakeLink, answer: &[u8]) -> cascade::wire::BodyRequest {
        self.serve_with(l, |_| answer.to_vec())
    }

    /// [`FakeParent::serve_with`], if the leaf asks within 2 s.
    fn try_serve_with(
        &self,
        l: &FakeLink,
        answer: impl FnOnce(&cascade::wire::BodyRequest) -> Vec<u8>,
    ) -> Option<cascade::wire::BodyRequest> {
        self.rt.block_on(async {
            let (mut send, mut recv) =
                tokio::time::timeout(Duration::from_secs(2), l.conn.accept_bi())
                    .await
                    .ok()?
                    .unwrap();
            let req = net::recv(&mut recv).await.unwrap().unwrap();
            let _ = send.write_all(&answer(&req)).await;
            let _ = send.finish();
            let _ = tokio::time::timeout(Duration::from_secs(10), send.stopped()).await;
            Some(req)
        })
    }

    /// Accepts the leaf's next body stream, answers it with what `answer` makes of the
    /// request, and returns the request.
    fn serve_with(
        &self,
        l: &FakeLink,
        answer: impl FnOnce(&cascade::wire::BodyRequest) -> Vec<u8>,
    ) -> cascade::wire::BodyRequest {
        self.rt.block_on(async {
            let (mut send, mut recv) =
                tokio::time::timeout(Duration::from_secs(30), l.conn.accept_bi())
                    .await
                    .expect("the leaf asks for the body within 30 s")
                    .unwrap();
            let req = net::recv(&mut recv).await.unwrap().unwrap();
            send.write_all(&answer(&req)).await.unwrap();
            send.finish().unwrap();
            let _ = tokio::time::timeout(Duration::from_secs(10), send.stopped()).await;
            req
        })
    }
}

#[test]
fn a_compressed_body_stream_that_breaks_the_block_format_is_refused_and_asked_again() {
    use cascade::wire::{Bodies, Compress};
    let mut c = Cluster::new(1, 1);
    c.configure("leaf-1-1", "compress = \"zstd\"\n");
    let fake = FakeParent::new(&c);
    c.start("leaf-1-1");
    let mut l = fake.accept();
    let body = b"<p>hello, compressed world</p>\n".repeat(2000);
    fake.offer(&mut l, 1, vec![file_of("page.html", &body)]);

    // A bomb: a valid zstd frame of 64 MiB for a body of 62 KB. Then garbage flagged as
    // zstd. Then a block that stops midway. Each is refused without being written.
    let bomb = zstd::bulk::compress(&vec![b'A'; 64 << 20], 3).unwrap();
    let packed = zstd::bulk::compress(&body, 3).unwrap();
    let mut torn = block(true, &packed);
    torn.truncate(torn.len() / 2);
    for (what, answer) in [
        ("bomb", block(true, &bomb)),
        ("garbage", block(true, b"not zstd at all")),
    ] {
        let req = fake.serve(&l, &answer);
        assert_eq!(req.compress, Compress::Zstd, "{what}");
        assert_eq!(req.bodies, Bodies::Many(vec![Blake3::of(&body)]), "{what}");
    }
    // Two corrupt answers use two of the three attempts: the third is the one that counts.
    let _ = fake.serve(&l, &torn);
    c.wait(
        "the leaf to give the release up",
        Duration::from_secs(30),
        || matches!(leaf_state(&c), Some(NodeState::Failed { version: 1, .. })),
    );
    assert!(!c.dir("leaf-1-1").join("page.html").exists());
    let log = c.log("leaf-1-1");
    assert!(log.contains("not in the block format"), "{log}");

    // Asked again later, a proper answer (one compressed block, then one raw) is applied.
    let half = body.len() / 2;
    let mut good = block(true, &zstd::bulk::compress(&body[..half], 3).unwrap());
    good.extend(block(false, &body[half..]));
    let _ = fake.serve(&l, &good);
    c.wait_holds("leaf-1-1", 1);
    assert_eq!(fs::read(c.dir("leaf-1-1").join("page.html")).unwrap(), body);
    assert!(!c.log("leaf-1-1").contains("panicked"));
}

impl FakeParent {
    /// Pushes `announced` (a [`cascade::wire::PushHeader`]) and then `body` on a stream of its
    /// own; `reset` cuts it off instead of finishing it. Returns once the leaf has read it all
    /// (or stopped it).
    fn push(&self, l: &FakeLink, path: &str, announced: u64, body: &[u8], reset: bool) {
        self.rt.block_on(async {
            let mut s = l.conn.open_uni().await.unwrap();
            let header = cascade::wire::PushHeader {
                size: announced,
                path: path.into(),
            };
            net::send(&mut s, &header).await.unwrap();
            let _ = s.write_all(body).await;
            if reset {
                // What was written arrives first (a reset drops what is still unsent).
                tokio::time::sleep(Duration::from_millis(300)).await;
                let _ = s.reset(quinn::VarInt::from_u32(ErrorCode::Abandoned.code()));
            } else {
                let _ = s.finish();
                let _ = tokio::time::timeout(Duration::from_secs(10), s.stopped()).await;
            }
        })
    }
}

#[test]
fn pushed_bodies_are_kept_only_if_the_signed_release_names_them() {
    use cascade::wire::Bodies;
    let mut c = Cluster::new(1, 1);
    let fake = FakeParent::new(&c);
    c.start("leaf-1-1");
    let mut l = fake.accept();
    let (named, forged) = (noise(3 << 20, 1), noise(3 << 20, 2));
    let other = noise(2 << 20, 3);
    // Pushed whole and named by the release: taken, never asked for.
    fake.push(&l, "a/named.bin", named.len() as u64, &named, false);
    // Same path and size as a file of the release, other bytes: not taken.
    fake.push(&l, "b/forged.bin", forged.len() as u64, &forged, false);
    // The release's third body, given up by the parent after its first MiB: resumed after
    // what arrived. Then the same path, longer than it announced: not kept.
    fake.push(
        &l,
        "c/other.bin",
        other.len() as u64,
        &other[..1 << 20],
        true,
    );
    fake.push(&l, "c/other.bin", 1 << 20, &other, false);
    // A fourth body's push given up after a MiB of other bytes: the resumed fetch finds the
    // body wrong as a whole, and fetches it again from its start.
    let fourth = noise(2 << 20, 5);
    fake.push(
        &l,
        "d/wrong.bin",
        fourth.len() as u64,
        &forged[..1 << 20],
        true,
    );
    let real = noise(3 << 20, 4);
    let entries = vec![
        dir("a"),
        file_of("a/named.bin", &named),
        dir("b"),
        file_of("b/forged.bin", &real),
        dir("c"),
        file_of("c/other.bin", &other),
        dir("d"),
        file_of("d/wrong.bin", &fourth),
    ];
    fake.offer(&mut l, 1, entries);
    // The leaf asks for what it was not given whole and right, each from where it stands.
    let bodies = [&real, &other, &fourth, &named];
    let mut asked = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while c.status_of("leaf-1-1", "leaf-1-1").and_then(|s| s.applied) != Some(1) {
        assert!(std::time::Instant::now() < deadline, "asked {asked:?}");
        let req = fake.try_serve_with(&l, |req| match &req.bodies {
            Bodies::One { id, offset } => {
                let body = bodies.iter().find(|b| Blake3::of(b) == *id).unwrap();
                body[*offset as usize..].to_vec()
            }
            other => panic!("unexpected request {other:?}"),
        });
        asked.extend(req.map(|r| r.bodies));
    }
    let for_body = |b: &[u8]| -> Vec<u64> {
        asked
            .iter()
            .filter_map(|r| match r {
                Bodies::One { id, offset } if *id == Blake3::of(b) => Some(*offset),
                _ => None,
            })
            .collect()
    };
    assert!(for_body(&named).is_empty(), "{asked:?}");
    assert_eq!(for_body(&real), [0], "{asked:?}");
    // The pushed MiB that arrived before the reset is not asked for again.
    let resumed = for_body(&other);
    assert!(
        resumed.len() == 1 && resumed[0] > 0 && resumed[0] <= 1 << 20,
        "{asked:?}"
    );
    // The wrong prefix was resumed from, found wrong, and the body fetched whole.
    assert_eq!(for_body(&fourth).last(), Some(&0), "{asked:?}");
    c.wait_holds("leaf-1-1", 1);
    let d = c.dir("leaf-1-1");
    assert_eq!(fs::read(d.join("a/named.bin")).unwrap(), named);
    assert_eq!(fs::read(d.join("b/forged.bin")).unwrap(), real);
    assert_eq!(fs::read(d.join("c/other.bin")).unwrap(), other);
    assert_eq!(fs::read(d.join("d/wrong.bin")).unwrap(), fourth);
    let log = c.log("leaf-1-1");
    assert!(
        log.contains("took bodies pushed during the parent's scan bodies=1"),
        "{log}"
    );
    // What was not taken is gone, and nothing panicked.
    let tmp = c.data("leaf-1-1").join("store/tmp");
    let left: Vec<_> = fs::read_dir(&tmp).unwrap().flatten().collect();
    assert!(left.is_empty(), "{left:?}");
    assert!(!log.contains("panicked"), "{log}");
}
