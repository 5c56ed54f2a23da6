//! Who may connect to whom: a real origin node in this process, and raw QUIC clients with
//! real certificates (good, from another CA, for a node that is not a child, for the wrong
//! name) dialling it over 127.0.0.1.

use std::fs;
use std::net::SocketAddr;
use std::time::Duration;

use cascade::net;
use cascade::testkit::{deploy, Deployment};
use cascade::wire::{Down, ErrorCode, Up};
use cascade::RunningNode;
use cascade_certs::Identity;
use quinn::{Connection, ConnectionError};

struct Origin {
    _tmp: tempfile::TempDir,
    dep: Deployment,
    node: RunningNode,
    addr: SocketAddr,
}

/// origin → relay-1 → leaf-1-1, only the origin running, holding one release.
async fn origin() -> Origin {
    let tmp = tempfile::tempdir().unwrap();
    let dep = deploy(tmp.path(), 1, 1).unwrap();
    fs::write(dep.configs[0].dir.as_ref().unwrap().join("f"), b"x").unwrap();
    let node = RunningNode::start(dep.configs[0].clone()).await.unwrap();
    node.publish().await.unwrap();
    let addr = dep.topology.origin().listen.unwrap();
    Origin {
        _tmp: tmp,
        dep,
        node,
        addr,
    }
}

fn client(id: &Identity) -> quinn::Endpoint {
    net::endpoint(
        id,
        None,
        Some("127.0.0.1:1".parse().unwrap()),
        Duration::from_secs(15),
        &Default::default(),
    )
    .unwrap()
}

/// Says hello as `claim` and returns what the parent answers: an offer or the close reason.
async fn hello(conn: &Connection, claim: &str) -> Result<Down, ConnectionError> {
    let (mut send, mut recv) = conn.open_bi().await?;
    net::send(
        &mut send,
        &Up::Hello {
            name: claim.into(),
            have: None,
            root: None,
            push: None,
        },
    )
    .await
    .unwrap();
    match tokio::time::timeout(Duration::from_secs(10), net::recv::<_, Down>(&mut recv)).await {
        Ok(Ok(Some(down))) => Ok(down),
        Ok(_) => Err(conn.closed().await),
        Err(_) => panic!("no answer to hello within 10 s"),
    }
}

/// Connects and says hello as relay-1 with `id`, expecting the origin to refuse during or
/// right after the handshake (TLS 1.3 lets a client finish its side before the server has
/// checked the client certificate). Returns the refusal as the client saw it.
async fn refused_at_handshake(o: &Origin, id: &Identity, why: &str) -> String {
    let result = match net::connect(&client(id), o.addr, "origin").await {
        Ok(conn) => hello(&conn, "relay-1")
            .await
            .map(|_| ())
            .map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    result.expect_err(why)
}

fn refused_with(r: Result<Down, ConnectionError>, code: ErrorCode, why: &str) {
    match r {
        Err(ConnectionError::ApplicationClosed(c)) => {
            assert_eq!(c.error_code.into_inner(), code.code() as u64, "{c:?}");
            assert!(String::from_utf8_lossy(&c.reason).contains(why), "{c:?}");
        }
        other => panic!("expected refusal with {code:?}, got {other:?}"),
    }
}

#[tokio::test]
async fn issued_pair_completes_a_handshake_and_receives_the_offer() {
    let o = origin().await;
    let id = Identity::load(&o.dep.configs[1].certs, "relay-1").unwrap();
    let conn = net::connect(&client(&id), o.addr, "origin").await.unwrap();
    match hello(&conn, "relay-1").await.unwrap() {
        Down::Offer(r) => assert_eq!(r.version, 1),
        // A hello that names no release gets the whole manifest.
        other => panic!("expected a whole offer, got {other:?}"),
    }
    o.node.shutdown().await;
}

#[tokio::test]
async fn certificate_from_another_ca_is_refused() {
    let o = origin().await;
    // A pair for the right name, issued by another CA, next to the real CA certificate.
    let other = tempfile::tempdir().unwrap();
    cascade_certs::init_ca(other.path(), false).unwrap();
    cascade_certs::issue(other.path(), &["relay-1"]).unwrap();
    fs::copy(o.dep.base.join("certs/ca.pem"), other.path().join("ca.pem")).unwrap();
    let id = Identity::load(other.path(), "relay-1").unwrap();
    let err = refused_at_handshake(&o, &id, "a certificate from another CA must be refused").await;
    eprintln!("refusal seen by the client: {err}");
    assert!(
        err.to_lowercase().contains("certificate") || err.contains("0x12a"),
        "{err}"
    );
    // The origin never admitted it: nothing but the origin itself is on its board.
    assert_eq!(o.node.statuses().len(), 1);
    o.node.shutdown().await;
}

#[tokio::test]
async fn a_valid_node_that_is_not_a_child_is_refused() {
    let o = origin().await;
    let id = Identity::load(&o.dep.configs[2].certs, "leaf-1-1").unwrap();
    let conn = net::connect(&client(&id), o.addr, "origin").await.unwrap();
    // A node of the deployment is sent the newest release (it carries the topology, so a
    // node that dials a parent it no longer has learns where it belongs), then refused.
    let answer = match hello(&conn, "leaf-1-1").await {
        Ok(Down::Offer(_)) => Err(conn.closed().await),
        other => other,
    };
    refused_with(answer, ErrorCode::NotAllowed, "not a child");
    o.node.shutdown().await;
}

#[tokio::test]
async fn a_node_cannot_claim_another_nodes_name() {
    let o = origin().await;
    let id = Identity::load(&o.dep.configs[2].certs, "leaf-1-1").unwrap();
    let conn = net::connect(&client(&id), o.addr, "origin").await.unwrap();
    refused_with(
        hello(&conn, "relay-1").await,
        ErrorCode::NotAllowed,
        "not issued for",
    );
    o.node.shutdown().await;
}

#[tokio::test]
async fn a_child_refuses_a_parent_with_the_wrong_name() {
    let o = origin().await;
    let id = Identity::load(&o.dep.configs[1].certs, "relay-1").unwrap();
    // The server at this address is "origin"; expecting "leaf-1-1" there must fail the handshake.
    let err = net::connect(&client(&id), o.addr, "leaf-1-1")
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("leaf-1-1") && err.to_lowercase().contains("certificate"),
        "{err}"
    );
    o.node.shutdown().await;
}

#[tokio::test]
async fn an_expired_certificate_is_refused() {
    let o = origin().await;
    // relay-1's name, signed by the real CA, but expired a year ago.
    let expired = tempfile::tempdir().unwrap();
    for f in ["ca.pem", "ca.key"] {
        fs::copy(o.dep.base.join("certs").join(f), expired.path().join(f)).unwrap();
    }
    let year = Duration::from_secs(365 * 86_400);
    let validity = cascade_certs::Validity {
        not_before: std::time::SystemTime::now() - 2 * year,
        not_after: std::time::SystemTime::now() - year,
    };
    cascade_certs::issue_with(expired.path(), &["relay-1"], validity).unwrap();
    let id = Identity::load(expired.path(), "relay-1").unwrap();
    let err = refused_at_handshake(&o, &id, "an expired certificate must be refused").await;
    assert!(err.contains("Expired") || err.contains("expired"), "{err}");
    assert_eq!(o.node.statuses().len(), 1);
    o.node.shutdown().await;
}
