//! Topology changes while the tree runs, with no restart: `cascade topology apply` on the
//! origin, carried to every node by a signed release. Each node's own topology file stays as
//! it was (as on separate hosts): the nodes learn the new tree from their parents.

mod common;

use std::fs;
use std::time::Duration;

use common::{cascade, text, write, Cluster};

/// The running tree's topology file with `edit` applied to its text.
fn edited(c: &Cluster, name: &str, edit: impl FnOnce(String) -> String) -> std::path::PathBuf {
    let text = fs::read_to_string(c.dep.base.join("topology.toml")).unwrap();
    let new = edit(text.clone());
    assert_ne!(new, text, "the edit changes nothing");
    let path = c.dep.base.join(name);
    fs::write(&path, new).unwrap();
    path
}

fn apply(c: &Cluster, file: &std::path::Path, wait: bool) -> String {
    let cfg = c.config("origin");
    let mut args = vec![
        "topology",
        "apply",
        file.to_str().unwrap(),
        "--config",
        cfg.to_str().unwrap(),
    ];
    if wait {
        args.extend(["--wait", "--timeout", "60"]);
    }
    let out = cascade(&args);
    let t = text(&out);
    assert!(out.status.success(), "{t}\n{}", c.all_logs());
    t
}

/// How many times a node's log shows it getting the 3 MiB body of `big.bin`: fetched, or
/// taken from a push while the origin scanned (nothing else these tests publish is pushed).
fn big_bodies_had(log: &str) -> usize {
    log.lines()
        .filter(|l| {
            (l.contains("fetching") && l.contains("bytes=31457"))
                || l.contains("took bodies pushed during the parent's scan bodies=1")
        })
        .count()
}

fn latest(c: &Cluster) -> u64 {
    c.status_of("origin", "origin").unwrap().applied.unwrap()
}

#[test]
fn a_leaf_moves_and_one_is_removed_during_publishes_and_a_stopped_one_catches_up() {
    let mut c = Cluster::new(2, 1);
    c.start_all();
    write(
        &c.dir("origin"),
        "big.bin",
        &cascade::testkit::noise(3 << 20, 5),
    );
    write(&c.dir("origin"), "index.html", b"zero");
    c.publish_wait();

    // A stream of publishes while leaf-1-1 moves from relay-1 to relay-2.
    let origin_dir = c.dir("origin");
    let origin_cfg = c.config("origin");
    let stream = std::thread::spawn(move || {
        for i in 0..6 {
            fs::write(origin_dir.join("index.html"), format!("stream {i}")).unwrap();
            let out = cascade(&["publish", "--config", origin_cfg.to_str().unwrap()]);
            assert!(out.status.success(), "{}", text(&out));
            std::thread::sleep(Duration::from_millis(200));
        }
    });
    let moved = edited(&c, "moved.toml", |t| {
        t.replace(
            "name = \"leaf-1-1\"\nparent = \"relay-1\"",
            "name = \"leaf-1-1\"\nparent = \"relay-2\"",
        )
    });
    let out = apply(&c, &moved, true);
    assert!(out.contains("published release"), "{out}");
    stream.join().unwrap();
    c.publish_wait();
    for n in ["leaf-1-1", "leaf-2-1"] {
        c.assert_same_as_origin(n);
    }
    let relay2 = c.log("relay-2");
    assert!(
        relay2
            .lines()
            .any(|l| l.contains("child connected") && l.contains("leaf-1-1")),
        "{relay2}"
    );
    // The link to relay-1 ended (the leaf left once the release told it its new parent, or
    // relay-1 closed it after offering that release).
    let relay1 = c.log("relay-1");
    assert!(
        relay1.lines().any(|l| l.contains("leaf-1-1")
            && (l.contains("child link ended") || l.contains("no longer a child"))),
        "{relay1}"
    );
    assert!(c.log("leaf-1-1").contains("now running under the topology"));
    // The move itself sent no file data: the big body came once (fetched, or pushed while
    // the origin scanned), never again.
    assert_eq!(
        big_bodies_had(&c.log("leaf-1-1")),
        1,
        "{}",
        c.log("leaf-1-1")
    );

    // leaf-2-1 leaves the tree: it stops syncing and keeps its dir as it is.
    let removed = edited(&c, "removed.toml", |t| {
        let _ = t;
        fs::read_to_string(&moved)
            .unwrap()
            .replace("[[node]]\nname = \"leaf-2-1\"\nparent = \"relay-2\"\n", "")
    });
    apply(&c, &removed, true);
    c.wait("leaf-2-1 to stop syncing", Duration::from_secs(20), || {
        c.log("leaf-2-1").contains("removed from the topology")
    });
    let kept = fs::read(c.dir("leaf-2-1").join("index.html")).unwrap();
    write(&c.dir("origin"), "index.html", b"after the removal");
    c.publish_wait();
    c.assert_same_as_origin("leaf-1-1");
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        fs::read(c.dir("leaf-2-1").join("index.html")).unwrap(),
        kept
    );

    // leaf-1-1 is down while it is moved back under relay-1: when it starts, it dials the
    // parent of the newest topology it saw (relay-2), which sends it the current one; it
    // then finds relay-1 by itself.
    c.stop("leaf-1-1");
    let back = edited(&c, "back.toml", |_| {
        fs::read_to_string(&removed).unwrap().replace(
            "name = \"leaf-1-1\"\nparent = \"relay-2\"",
            "name = \"leaf-1-1\"\nparent = \"relay-1\"",
        )
    });
    apply(&c, &back, false);
    write(&c.dir("origin"), "index.html", b"while it was down");
    let _ = c.publish(&[]);
    c.start("leaf-1-1");
    c.wait_holds("leaf-1-1", latest(&c));
    c.assert_same_as_origin("leaf-1-1");
    assert!(c
        .log("relay-2")
        .contains("sent the release with the current topology"));
}

#[test]
fn a_relay_with_two_new_leaves_joins_the_running_tree() {
    let mut c = Cluster::new(1, 1);
    c.start_all();
    write(&c.dir("origin"), "index.html", b"home");
    write(
        &c.dir("origin"),
        "big.bin",
        &cascade::testkit::noise(2 << 20, 9),
    );
    c.publish_wait();

    let listen = cascade::testkit::Deployment::free_addr().unwrap();
    let grown = edited(&c, "grown.toml", |t| {
        format!(
            "{t}\n[[node]]\nname = \"relay-2\"\nparent = \"origin\"\nlisten = \"{listen}\"\n\n\
             [[node]]\nname = \"leaf-2-1\"\nparent = \"relay-2\"\n\n\
             [[node]]\nname = \"leaf-2-2\"\nparent = \"relay-2\"\n"
        )
    });
    // The operator provisions the three new hosts (certificate, config naming the new
    // topology), applies the topology on the origin, and starts them.
    for n in ["relay-2", "leaf-2-1", "leaf-2-2"] {
        c.dep.add_node(n, "grown.toml").unwrap();
    }
    apply(&c, &grown, false);
    for n in ["relay-2", "leaf-2-1", "leaf-2-2"] {
        c.start(n);
    }
    let v = latest(&c);
    for n in ["relay-2", "leaf-2-1", "leaf-2-2", "leaf-1-1"] {
        c.wait_holds(n, v);
        c.assert_same_as_origin(n);
    }
    // The new leaves filled from relay-2, not from the origin: the origin sent the big body
    // to relay-1 and relay-2 once each.
    let origin_sent = c.status_of("origin", "origin").unwrap().sent_bytes;
    assert!(
        origin_sent < 3 * (2 << 20),
        "the origin sent {origin_sent} bytes for two children"
    );
    // publish --wait now counts the new nodes.
    write(&c.dir("origin"), "index.html", b"for everyone");
    let out = c.publish_wait();
    assert!(out.contains("leaf-2-2"), "{out}");
}

#[test]
fn a_leaf_promoted_to_relay_feeds_a_new_leaf_from_what_it_holds_then_is_demoted() {
    let mut c = Cluster::new(1, 1);
    c.start_all();
    let big = cascade::testkit::noise(3 << 20, 13);
    write(&c.dir("origin"), "big.bin", &big);
    write(&c.dir("origin"), "index.html", b"home");
    c.publish_wait();
    let relay_sent = c.status_of("relay-1", "relay-1").unwrap().sent_bytes;

    // leaf-1-1 becomes a relay with a new leaf below it.
    let listen = cascade::testkit::Deployment::free_addr().unwrap();
    let promoted = edited(&c, "promoted.toml", |t| {
        format!(
            "{}\n[[node]]\nname = \"leaf-1-1-1\"\nparent = \"leaf-1-1\"\n",
            t.replace(
                "name = \"leaf-1-1\"\nparent = \"relay-1\"",
                &format!("name = \"leaf-1-1\"\nparent = \"relay-1\"\nlisten = \"{listen}\""),
            )
        )
    });
    c.dep.add_node("leaf-1-1-1", "promoted.toml").unwrap();
    apply(&c, &promoted, false);
    c.wait("leaf-1-1 to listen", Duration::from_secs(20), || {
        c.log("leaf-1-1").contains("listening on")
    });
    c.start("leaf-1-1-1");
    let v = latest(&c);
    c.wait_holds("leaf-1-1-1", v);
    c.assert_same_as_origin("leaf-1-1-1");
    c.assert_same_as_origin("leaf-1-1");
    // The new leaf's bytes came from leaf-1-1, which took them from its own dir: relay-1
    // sent nothing more than the topology release, leaf-1-1 fetched nothing again.
    let leaf_sent = c.status_of("leaf-1-1", "leaf-1-1").unwrap().sent_bytes;
    assert!(leaf_sent >= big.len() as u64, "leaf-1-1 sent {leaf_sent}");
    let relay_after = c.status_of("relay-1", "relay-1").unwrap().sent_bytes;
    assert!(
        relay_after - relay_sent < 1 << 20,
        "relay-1 sent {} more bytes",
        relay_after - relay_sent
    );
    assert_eq!(
        big_bodies_had(&c.log("leaf-1-1")),
        1,
        "{}",
        c.log("leaf-1-1")
    );

    // Its child moves up to relay-1: leaf-1-1 is a leaf again and stops accepting links.
    let demoted = edited(&c, "demoted.toml", |_| {
        fs::read_to_string(&promoted)
            .unwrap()
            .replace(
                "name = \"leaf-1-1-1\"\nparent = \"leaf-1-1\"",
                "name = \"leaf-1-1-1\"\nparent = \"relay-1\"",
            )
            .replace(&format!("\nlisten = \"{listen}\""), "")
    });
    apply(&c, &demoted, true);
    c.wait(
        "leaf-1-1 to see it has no children left",
        Duration::from_secs(20),
        || c.log("leaf-1-1").contains("no children left"),
    );
    write(&c.dir("origin"), "index.html", b"after the demotion");
    c.publish_wait();
    c.assert_same_as_origin("leaf-1-1-1");
    c.assert_same_as_origin("leaf-1-1");
}

#[test]
fn an_applied_topology_survives_a_certificate_renewal_and_sighup_returns_to_the_file() {
    let mut c = Cluster::new(2, 1);
    c.start_all();
    write(&c.dir("origin"), "index.html", b"one");
    c.publish_wait();
    let moved = edited(&c, "moved.toml", |t| {
        t.replace(
            "name = \"leaf-1-1\"\nparent = \"relay-1\"",
            "name = \"leaf-1-1\"\nparent = \"relay-2\"",
        )
    });
    apply(&c, &moved, true);
    let cfg = c.config("origin");
    let plan = |file: &std::path::Path| {
        text(&cascade(&[
            "topology",
            "plan",
            file.to_str().unwrap(),
            "--config",
            cfg.to_str().unwrap(),
        ]))
    };
    assert!(plan(&moved).contains("no change"), "{}", plan(&moved));
    // The origin's certificate is renewed: its key files change, which it re-reads; the
    // topology it runs under stays the applied one (its configured file did not change).
    let certs = c.dep.base.join("certs");
    let out = cascade(&["certs", "renew", "--dir", certs.to_str().unwrap(), "origin"]);
    assert!(out.status.success(), "{}", text(&out));
    c.wait(
        "the origin to reload its certificate",
        Duration::from_secs(20),
        || c.log("origin").contains("certificate reloaded"),
    );
    assert!(plan(&moved).contains("no change"), "{}", plan(&moved));
    // SIGHUP: the origin runs under its configured file again.
    c.signal("origin", "HUP");
    let file = c.dep.base.join("topology.toml");
    c.wait(
        "the origin to apply its configured file",
        Duration::from_secs(20),
        || plan(&file).contains("no change"),
    );
    write(&c.dir("origin"), "index.html", b"two");
    c.publish_wait();
    c.assert_same_as_origin("leaf-1-1");
}
