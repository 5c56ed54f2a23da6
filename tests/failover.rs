//! The tree heals by itself: a relay killed mid-transfer (its children fail over to their
//! backup parent and come back), and a relay frozen longer than the link timeout.

mod common;

use std::time::Duration;

use cascade::status::NodeState;
use cascade::testkit::noise;
use common::{write, Cluster};

/// A 2×2 tree whose links time out after 3 s and fail over after 1 s.
fn fast_healing_cluster() -> Cluster {
    let c = Cluster::new(2, 2);
    for n in c.names() {
        c.configure(&n, "link_timeout = 3\nfailover_after = 1\n");
    }
    c
}

#[test]
fn children_of_a_killed_relay_fail_over_to_their_backup_and_return() {
    let mut c = fast_healing_cluster();
    c.add_backups("leaf-1-1", &["relay-2", "origin"]);
    c.add_backups("leaf-1-2", &["relay-2"]);
    // relay-1's children fetch the large file from it as it arrives (under an upload limit
    // a relay does not push it on while the origin scans), for long enough to be cut off.
    c.configure("relay-1", "upload_limit = \"48MiB/s\"\n");
    c.start_all();
    write(&c.dir("origin"), "v1.txt", b"one");
    c.publish_wait();

    // A large file; relay-1 is killed while its children are fetching it from relay-1.
    write(&c.dir("origin"), "large.bin", &noise(48 * 1024 * 1024, 5));
    let _ = c.publish(&[]);
    c.wait(
        "leaf-1-1 to start fetching release 2",
        Duration::from_secs(60),
        || {
            matches!(
                c.status_of("leaf-1-1", "leaf-1-1").map(|s| s.state),
                Some(NodeState::Fetching { version: 2, .. })
            )
        },
    );
    c.kill("relay-1");

    for leaf in ["leaf-1-1", "leaf-1-2"] {
        c.wait_holds(leaf, 2);
        c.assert_same_as_origin(leaf);
        assert!(
            c.log(leaf)
                .contains("failing over to backup parent relay-2"),
            "{}",
            c.log(leaf)
        );
    }
    // The origin sees them through relay-2.
    c.wait(
        "the origin to see both leaves at release 2",
        Duration::from_secs(30),
        || {
            ["leaf-1-1", "leaf-1-2"]
                .iter()
                .all(|l| c.status_of("origin", l).and_then(|s| s.applied) == Some(2))
        },
    );

    // The relay comes back, converges, and its children return to it.
    c.start("relay-1");
    c.wait_holds("relay-1", 2);
    c.assert_same_as_origin("relay-1");
    c.wait(
        "both leaves to return to relay-1",
        Duration::from_secs(30),
        || {
            ["leaf-1-1", "leaf-1-2"]
                .iter()
                .all(|l| c.log(l).contains("leaving backup parent relay-2"))
                && ["leaf-1-1", "leaf-1-2"]
                    .iter()
                    .all(|l| c.status_of("relay-1", l).is_some_and(|s| s.connected))
        },
    );
    write(&c.dir("origin"), "v3.txt", b"three");
    let out = c.publish_wait();
    assert!(out.contains("all 7 nodes hold release 3"), "{out}");
}

#[test]
fn a_leaf_keeps_what_its_relay_pushed_on_before_dying_and_resumes_after_it_from_the_backup() {
    let mut c = fast_healing_cluster();
    c.add_backups("leaf-1-1", &["relay-2"]);
    c.start_all();
    write(&c.dir("origin"), "v1.txt", b"one");
    c.publish_wait();

    // A large file: relay-1 pushes it on to leaf-1-1 as the origin's scan pushes it to
    // relay-1, and is killed partway.
    const SIZE: u64 = 160 * 1024 * 1024;
    let at_kill = c.kill_during_push("leaf-1-1", "relay-1", &noise(SIZE as usize, 7));

    // It fails over to relay-2, and fetches only what the push had not brought.
    c.wait_holds("leaf-1-1", 2);
    c.assert_same_as_origin("leaf-1-1");
    let log = c.log("leaf-1-1");
    assert!(
        log.contains("failing over to backup parent relay-2"),
        "{log}"
    );
    assert!(
        log.contains("a push given up becomes a partial body to resume"),
        "{log}"
    );
    let fetched = c.status_of("leaf-1-1", "leaf-1-1").unwrap().fetched_bytes;
    assert!(
        fetched <= SIZE - at_kill + (4 << 20),
        "fetched {fetched} bytes; {at_kill} of {SIZE} had been pushed\n{log}"
    );
}

#[test]
fn a_relay_frozen_past_the_link_timeout_heals_without_a_restart() {
    let mut c = fast_healing_cluster();
    c.start_all();
    write(&c.dir("origin"), "v1.txt", b"one");
    c.publish_wait();

    c.signal("relay-2", "STOP");
    write(&c.dir("origin"), "v2.txt", b"two");
    let _ = c.publish(&[]);
    std::thread::sleep(Duration::from_secs(5));
    c.signal("relay-2", "CONT");
    let out = c.publish_wait();
    assert!(out.contains("all 7 nodes hold release 2"), "{out}");
    for n in ["relay-2", "leaf-2-1", "leaf-2-2"] {
        c.assert_same_as_origin(n);
    }
}
