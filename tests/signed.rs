//! Releases are signed by the origin; a stolen relay certificate cannot deface a leaf. The
//! attack, as an attacker would run it: with `ca.pem`, `relay-1.pem` and `relay-1.key` copied
//! from the relay host, a second `cascade node` runs as an origin named "relay-1" on the
//! relay's address (its own topology, its own release key) and publishes.

mod common;

use std::fs;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use cascade::status::NodeState;
use common::{cascade, text, write, Cluster, BIN};

/// Kills the attacker's node when the test ends, however it ends.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_stolen_relay_certificate_cannot_deface_a_leaf() {
    let mut c = Cluster::new(1, 1);
    c.start_all();
    write(&c.dir("origin"), "index.html", b"the real site");
    c.publish_wait();
    c.stop("relay-1");

    // The attacker's kit: the relay's certificate and key and the CA certificate, plus a
    // release key of its own (it has no way to get the origin's).
    let kit = c.tmp.path().join("attacker");
    let certs = kit.join("certs");
    fs::create_dir_all(&certs).unwrap();
    for f in ["ca.pem", "relay-1.pem", "relay-1.key"] {
        fs::copy(c.dep.base.join("certs").join(f), certs.join(f)).unwrap();
    }
    cascade_certs::init_release_key(&certs, false).unwrap();
    let listen = c.dep.topology.node("relay-1").unwrap().listen.unwrap();
    fs::write(
        kit.join("topology.toml"),
        format!("[[node]]\nname = \"relay-1\"\nlisten = \"{listen}\"\n\n[[node]]\nname = \"leaf-1-1\"\nparent = \"relay-1\"\n"),
    )
    .unwrap();
    write(&kit.join("www"), "index.html", b"DEFACED");
    fs::write(
        kit.join("node.toml"),
        "name = \"relay-1\"\ntopology = \"topology.toml\"\ncerts = \"certs\"\ndir = \"www\"\ndata = \"data\"\n",
    )
    .unwrap();
    let cfg = kit.join("node.toml");
    let log = fs::File::create(kit.join("node.log")).unwrap();
    let _attacker = Killed(
        Command::new(BIN)
            .args(["node", "--config"])
            .arg(&cfg)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    // It publishes five times; the leaf connects to it (the TLS handshake succeeds: the
    // certificate is genuine) and is offered each release.
    for i in 0..5 {
        write(
            &kit.join("www"),
            "index.html",
            format!("DEFACED {i}").as_bytes(),
        );
        let mut out = cascade(&["publish", "--config", cfg.to_str().unwrap()]);
        for _ in 0..50 {
            if out.status.success() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
            out = cascade(&["publish", "--config", cfg.to_str().unwrap()]);
        }
        assert!(out.status.success(), "{}", text(&out));
    }
    c.wait(
        "the leaf to refuse the forged releases",
        Duration::from_secs(30),
        || {
            matches!(
                c.status_of("leaf-1-1", "leaf-1-1").map(|s| s.state),
                Some(NodeState::Failed { ref error, .. }) if error.contains("bad signature")
            )
        },
    );
    assert_eq!(
        fs::read(c.dir("leaf-1-1").join("index.html")).unwrap(),
        b"the real site"
    );
    assert_eq!(
        c.status_of("leaf-1-1", "leaf-1-1").unwrap().applied,
        Some(1)
    );
    assert!(c
        .log("leaf-1-1")
        .contains("not signed by this deployment's release key"));

    // The attacker gone and the real relay back, the tree carries on.
    drop(_attacker);
    c.start("relay-1");
    write(&c.dir("origin"), "index.html", b"the real site, v2");
    c.publish_wait();
    assert_eq!(
        fs::read(c.dir("leaf-1-1").join("index.html")).unwrap(),
        b"the real site, v2"
    );
}

/// Two different 128-byte blocks with the same MD5 (Wang et al., 2004). Appending the same
/// bytes to both keeps their MD5s equal: MD5 alone can be fooled at will.
fn md5_collision() -> (Vec<u8>, Vec<u8>) {
    let hex = |s: &str| -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    };
    let a = hex("d131dd02c5e6eec4693d9a0698aff95c2fcab58712467eab4004583eb8fb7f8955ad340609f4b30283e488832571415a085125e8f7cdc99fd91dbdf280373c5bd8823e3156348f5bae6dacd436c919c6dd53e2b487da03fd02396306d248cda0e99f33420f577ee8ce54b67080a80d1ec69821bcb6a8839396f9652b6ff72a70");
    let b = hex("d131dd02c5e6eec4693d9a0698aff95c2fcab50712467eab4004583eb8fb7f8955ad340609f4b30283e4888325f1415a085125e8f7cdc99fd91dbd7280373c5bd8823e3156348f5bae6dacd436c919c6dd53e23487da03fd02396306d248cda0e99f33420f577ee8ce54b67080280d1ec69821bcb6a8839396f965ab6ff72a70");
    (a, b)
}

#[test]
fn md5_collisions_neither_mix_bodies_nor_let_a_relay_swap_one_in() {
    use cascade::tree::{Blake3, Md5};
    let (a, b) = md5_collision();
    assert_ne!(a, b);
    assert_eq!(Md5::of(&a), Md5::of(&b), "the pair collides");

    // Two published files whose bodies share an MD5 both arrive as they are.
    let mut c = Cluster::new(1, 1);
    c.start_all();
    write(&c.dir("origin"), "a.bin", &a);
    write(&c.dir("origin"), "b.bin", &b);
    c.publish_wait();
    assert_eq!(fs::read(c.dir("leaf-1-1").join("a.bin")).unwrap(), a);
    assert_eq!(fs::read(c.dir("leaf-1-1").join("b.bin")).unwrap(), b);
    c.assert_same_as_origin("leaf-1-1");

    // A relay that swaps a body for another of the same size and MD5 (what a relay taken
    // over could do, its manifest's MD5s still right): the leaf below refuses it.
    c.stop("leaf-1-1");
    let page = [a.clone(), b"<p>the real page</p>".to_vec()].concat();
    let fake = [b.clone(), b"<p>the real page</p>".to_vec()].concat();
    assert_eq!(Md5::of(&page), Md5::of(&fake));
    write(&c.dir("origin"), "page.html", &page);
    let _ = c.publish(&[]);
    c.wait_holds("relay-1", 2);
    let name = Blake3::of(&page).hex();
    let object = c
        .data("relay-1")
        .join("store/objects")
        .join(&name[..2])
        .join(&name);
    fs::write(&object, &fake).unwrap();
    c.start("leaf-1-1");
    c.wait(
        "leaf-1-1 to refuse the swapped body",
        Duration::from_secs(30),
        || {
            matches!(
                c.status_of("origin", "leaf-1-1").map(|s| s.state),
                Some(NodeState::Failed { ref error, .. }) if error.contains("failed verification")
            )
        },
    );
    assert!(
        !c.dir("leaf-1-1").join("page.html").exists(),
        "the swapped body was applied"
    );
    assert_eq!(
        c.status_of("leaf-1-1", "leaf-1-1").unwrap().applied,
        Some(1)
    );
    fs::write(&object, &page).unwrap();
    c.wait_holds("leaf-1-1", 2);
    c.assert_same_as_origin("leaf-1-1");
}
