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
use cascade::tree::{Entry, EntryKind, Md5};
use cascade::wire::{ErrorCode, RawDown, RawRelease, Up};
use cascade_certs::Identity;
use common::Cluster;
use quinn::{Connection, ConnectionError, Endpoint, SendStream};

/// relay-1, impersonated by the test with relay-1's own certificate.
struct FakeParent {
    rt: tokio::runtime::Runtime,
    endpoint: Endpoint,
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
            .block_on(async { net::endpoint(&id, Some(addr), None, Duration::from_secs(15)) })
            .unwrap();
        FakeParent { rt, endpoint }
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

    fn offer(&self, l: &mut FakeLink, version: u64, entries: Vec<Entry>) {
        let frame = cascade::wire::encode(&RawDown::Offer(RawRelease { version, entries }));
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
    assert!(!outside.exists(), "a hostile manifest wrote outside dir");
    assert_eq!(fs::read_dir(c.dir("leaf-1-1")).unwrap().count(), 0);
    assert_eq!(c.status_of("leaf-1-1", "leaf-1-1").unwrap().applied, None);

    // The same link still works: a valid release is applied.
    fake.offer(&mut l, 200, vec![dir("ok"), file("ok/empty")]);
    c.wait_holds("leaf-1-1", 200);
    assert!(c.dir("leaf-1-1").join("ok/empty").is_file());
    assert!(c
        .log("leaf-1-1")
        .contains("refused release 100 from the parent"));
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
