//! Certificates revoked and renewed while the tree runs, with no restart: one edit of the
//! origin's topology shuts a stolen key out of every node, and a node issued a new
//! certificate uses it for its next link.

mod common;

use std::fs;
use std::time::Duration;

use common::{cascade, text, write, Cluster};

fn fingerprint(c: &Cluster, name: &str) -> String {
    let certs = c.dep.base.join("certs");
    let out = cascade(&[
        "certs",
        "fingerprint",
        "--dir",
        certs.to_str().unwrap(),
        name,
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let fp = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    assert!(fp.starts_with("sha256:") && fp.len() == 7 + 64, "{fp}");
    fp
}

#[test]
fn a_revoked_leaf_is_shut_out_everywhere_and_its_renewed_certificate_lets_it_back() {
    let mut c = Cluster::new(1, 2);
    // The origin reads a topology file of its own: the change is made there alone, and the
    // other nodes learn it from the origin's releases.
    let base = c.dep.base.clone();
    let origin_topology = base.join("origin-topology.toml");
    fs::copy(base.join("topology.toml"), &origin_topology).unwrap();
    let cfg = c.config("origin");
    let t = fs::read_to_string(&cfg).unwrap();
    assert!(t.contains("../topology.toml"), "{t}");
    fs::write(
        &cfg,
        t.replace("../topology.toml", "../origin-topology.toml"),
    )
    .unwrap();
    c.start_all();
    write(&c.dir("origin"), "index.html", b"one");
    c.publish_wait();

    // leaf-1-2's key is stolen: the operator revokes its certificate on the origin.
    let stolen = fingerprint(&c, "leaf-1-2");
    let topo = fs::read_to_string(&origin_topology).unwrap();
    fs::write(
        &origin_topology,
        format!("revoked = [\"{stolen}\"]\n{topo}"),
    )
    .unwrap();
    // The origin signs the list into a new release by itself; relay-1 takes it, drops
    // leaf-1-2's link and refuses its handshakes from then on.
    c.wait_holds("leaf-1-1", 2);
    c.wait(
        "relay-1 to cut leaf-1-2 off",
        Duration::from_secs(30),
        || c.log("relay-1").contains("was revoked"),
    );
    assert!(c
        .log("origin")
        .contains("applied the changed topology file"));
    write(&c.dir("origin"), "index.html", b"three");
    let _ = c.publish(&[]);
    c.wait_holds("leaf-1-1", 3);
    c.wait(
        "relay-1 to refuse leaf-1-2's handshakes",
        Duration::from_secs(30),
        || c.log("relay-1").contains("TLS handshake failed"),
    );
    std::thread::sleep(Duration::from_secs(3));
    let held = c.status_of("leaf-1-2", "leaf-1-2").unwrap().applied;
    assert!(held < Some(3), "a revoked leaf got release 3 ({held:?})");
    assert_ne!(
        fs::read(c.dir("leaf-1-2").join("index.html")).unwrap(),
        b"three"
    );

    // The operator issues leaf-1-2 a new certificate (a new key): its next link presents it
    // and is accepted, without a restart of any node.
    let certs = base.join("certs");
    let out = cascade(&[
        "certs",
        "renew",
        "--dir",
        certs.to_str().unwrap(),
        "leaf-1-2",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains(&stolen), "{}", text(&out));
    assert_ne!(fingerprint(&c, "leaf-1-2"), stolen);
    c.wait_holds("leaf-1-2", 3);
    c.assert_same_as_origin("leaf-1-2");
    assert!(c.log("leaf-1-2").contains("certificate reloaded"));

    // A certificate file damaged on disk is refused in one line; the node keeps the one it
    // has, and its next link (after its parent restarts) still works.
    let pem = certs.join("leaf-1-1.pem");
    let good = fs::read(&pem).unwrap();
    fs::write(&pem, b"not a certificate").unwrap();
    c.wait(
        "leaf-1-1 to keep its certificate",
        Duration::from_secs(20),
        || {
            c.log("leaf-1-1")
                .contains("keeping the current certificate")
        },
    );
    c.stop("relay-1");
    c.start("relay-1");
    write(&c.dir("origin"), "index.html", b"four");
    let _ = c.publish(&[]);
    c.wait_holds("leaf-1-1", 4);
    fs::write(&pem, good).unwrap();
}

#[test]
fn the_release_key_rotates_on_a_running_tree_through_an_endorsement() {
    let mut c = Cluster::new(1, 1);
    c.start_all();
    write(&c.dir("origin"), "index.html", b"one");
    c.publish_wait();

    let certs = c.dep.base.join("certs");
    let out = cascade(&[
        "certs",
        "rotate-release-key",
        "--dir",
        certs.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let new_pub = fs::read_to_string(certs.join("release.pub")).unwrap();
    // The running origin takes the new key and publishes by itself; every node checks the
    // endorsement against the key it trusts and moves to the new one.
    for node in ["relay-1", "leaf-1-1"] {
        c.wait_holds(node, 2);
        c.wait(
            &format!("{node} to move to the new key"),
            Duration::from_secs(10),
            || c.log(node).contains("release key rotated"),
        );
        assert_eq!(
            fs::read_to_string(c.data(node).join("release.pub")).unwrap(),
            new_pub
        );
    }
    write(&c.dir("origin"), "index.html", b"three");
    c.publish_wait();
    c.assert_same_as_origin("leaf-1-1");
    // A restarted origin starts with the rotated key pair.
    c.stop("origin");
    c.start("origin");
    write(&c.dir("origin"), "index.html", b"four");
    c.publish_wait();
    c.assert_same_as_origin("leaf-1-1");
}
