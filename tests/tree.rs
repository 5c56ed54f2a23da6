//! End-to-end: a 7-node, 3-level tree of separate `cascade node` processes over real QUIC and
//! TLS on 127.0.0.1, with real files; publishing through `cascade publish --wait`.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use cascade::testkit::noise;
use common::{text, write, Cluster, SIZES};

const BIG: usize = 5 * 1024 * 1024 + 3;

/// Content with every awkward case: empty files and dirs, nesting, spaces, non-ASCII names,
/// a symlink, modes, the boundary sizes and a file of several MiB.
fn awkward_tree(c: &Cluster) {
    let d = c.dir("origin");
    write(&d, "index.html", b"<h1>hi</h1>");
    write(&d, "empty", b"");
    fs::create_dir_all(d.join("empty-dir")).unwrap();
    fs::create_dir_all(d.join("a/b/c/d/empty-too")).unwrap();
    write(&d, "a/b/c/d/deep.txt", b"deep");
    write(&d, "with space/naïve ünïcödé 文件.txt", "grüße".as_bytes());
    write(&d, "big.bin", &noise(BIG, 7));
    for (i, &n) in SIZES.iter().enumerate() {
        write(&d, &format!("sizes/{n}.bin"), &noise(n, i as u64 + 100));
    }
    write(&d, "script.sh", b"#!/bin/sh\necho hi\n");
    fs::set_permissions(d.join("script.sh"), fs::Permissions::from_mode(0o750)).unwrap();
    std::os::unix::fs::symlink("index.html", d.join("home.html")).unwrap();
    std::os::unix::fs::symlink("a/b", d.join("dir-link")).unwrap();
}

#[test]
fn tree_converges_through_publishes_changes_renames_and_type_changes() {
    let mut c = Cluster::new(2, 2);
    c.start_all();
    awkward_tree(&c);
    let out = c.publish_wait();
    assert!(out.contains("published release 1"), "{out}");
    assert!(out.contains("all 7 nodes hold release 1"), "{out}");
    for n in c.names() {
        c.assert_same_as_origin(&n);
    }

    // Publishing again with nothing changed cuts no release.
    let out = c.publish_wait();
    assert!(out.contains("nothing changed: release 1"), "{out}");

    // Change, rename, delete, file -> directory, directory -> file, symlink retarget.
    let d = c.dir("origin");
    write(&d, "index.html", b"<h1>v2</h1>");
    fs::create_dir_all(d.join("moved")).unwrap();
    fs::rename(d.join("big.bin"), d.join("moved/big renamed.bin")).unwrap();
    fs::remove_file(d.join("sizes/1.bin")).unwrap();
    fs::remove_file(d.join("empty")).unwrap();
    write(&d, "empty/now-a-dir.txt", b"x");
    fs::remove_dir_all(d.join("a/b/c")).unwrap();
    write(&d, "a/b/c", b"now a file");
    fs::remove_file(d.join("home.html")).unwrap();
    std::os::unix::fs::symlink("script.sh", d.join("home.html")).unwrap();
    let out = c.publish_wait();
    assert!(out.contains("all 7 nodes hold release 2"), "{out}");
    for n in c.names() {
        c.assert_same_as_origin(&n);
    }

    // The renamed multi-MiB file was not sent again: no node fetched anything near its size.
    let statuses = c.statuses("origin");
    assert_eq!(statuses.len(), 7, "{statuses:?}");
    for s in &statuses {
        assert!(
            s.fetched_bytes < 1024,
            "{} fetched {} bytes for release 2",
            s.name,
            s.fetched_bytes
        );
        assert_eq!(s.applied, Some(2));
    }
    // The origin sent one copy per direct child, not one per node.
    let origin = statuses.iter().find(|s| s.name == "origin").unwrap();
    let total: u64 = SIZES.iter().sum::<usize>() as u64 + BIG as u64;
    assert!(
        origin.sent_bytes < 3 * total,
        "origin sent {} bytes for two children",
        origin.sent_bytes
    );
}

#[test]
fn stopped_leaf_catches_up_after_restart() {
    let mut c = Cluster::new(2, 2);
    c.start_all();
    write(&c.dir("origin"), "v1.txt", b"one");
    c.publish_wait();

    c.stop("leaf-1-1");
    write(&c.dir("origin"), "v2.txt", &noise(300_000, 2));
    // The timeout names the node that lags and its last known state.
    let out = c.publish(&["--wait", "--timeout", "3"]);
    let t = text(&out);
    assert!(!out.status.success(), "{t}");
    assert!(
        t.contains("1 of 7 nodes lack release 2") && t.contains("leaf-1-1: applied v1"),
        "{t}"
    );

    c.start("leaf-1-1");
    let out = c.publish_wait();
    assert!(
        out.contains("nothing changed: release 2") && out.contains("all 7 nodes hold release 2"),
        "{out}"
    );
    c.assert_same_as_origin("leaf-1-1");
}

#[test]
fn relay_serves_a_restarted_leaf_while_the_origin_is_down() {
    let mut c = Cluster::new(2, 2);
    c.start_all();
    write(&c.dir("origin"), "v1.txt", b"one");
    c.publish_wait();

    c.stop("leaf-2-1");
    write(&c.dir("origin"), "v2/data.bin", &noise(1_000_000, 3));
    let _ = c.publish(&[]);
    c.wait_holds("relay-2", 2);
    c.stop("origin");
    c.start("leaf-2-1");
    c.wait_holds("leaf-2-1", 2);
    c.assert_same_as_origin("leaf-2-1");

    // The origin comes back with its release history: the next version is 3.
    c.start("origin");
    write(&c.dir("origin"), "v3.txt", b"three");
    let out = c.publish_wait();
    assert!(
        out.contains("published release 3") && out.contains("all 7 nodes hold release 3"),
        "{out}"
    );
    c.assert_same_as_origin("leaf-2-1");
}

#[test]
fn restarted_leaf_fetches_only_what_its_dir_lost_and_repairs_it() {
    let mut c = Cluster::new(1, 1);
    c.start_all();
    write(&c.dir("origin"), "payload.bin", &noise(2_000_000, 4));
    write(&c.dir("origin"), "index.html", b"home");
    c.publish_wait();

    // The leaf loses its record of the applied release and its dir is tampered with while down.
    // A leaf keeps no second copy of what its dir holds: it confirms the intact files by MD5
    // and fetches only the defaced one.
    c.stop("leaf-1-1");
    fs::remove_file(c.data("leaf-1-1").join("release.bin")).unwrap();
    write(&c.dir("leaf-1-1"), "index.html", b"defaced");
    write(&c.dir("leaf-1-1"), "extra.txt", b"not in the release");
    c.start("leaf-1-1");
    c.wait_holds("leaf-1-1", 1);
    let s = c.status_of("leaf-1-1", "leaf-1-1").unwrap();
    assert_eq!(
        (s.fetched_files, s.fetched_bytes),
        (1, 4),
        "more than the defaced file was fetched again: {s:?}"
    );
    c.assert_same_as_origin("leaf-1-1");

    // With its record intact, a restart alone restores a tampered dir.
    c.stop("leaf-1-1");
    write(&c.dir("leaf-1-1"), "index.html", b"defaced again");
    c.start("leaf-1-1");
    c.wait(
        "leaf-1-1 to repair its dir",
        Duration::from_secs(30),
        || fs::read(c.dir("leaf-1-1").join("index.html")).unwrap_or_default() == b"home",
    );
    c.assert_same_as_origin("leaf-1-1");
}

#[test]
fn corrupt_body_from_a_relay_is_detected_never_applied_and_refetched() {
    let mut c = Cluster::new(1, 1);
    c.start("origin");
    c.start("relay-1");
    let body = noise(700_000, 9);
    write(&c.dir("origin"), "good.txt", b"fine");
    write(&c.dir("origin"), "target.bin", &body);
    let _ = c.publish(&[]);
    c.wait_holds("relay-1", 1);

    // Flip one byte of the body in the relay's store (same size, wrong digests).
    let name = cascade::tree::Blake3::of(&body).hex();
    let object = c
        .data("relay-1")
        .join("store/objects")
        .join(&name[..2])
        .join(&name);
    let mut bad = body.clone();
    bad[123_456] ^= 0x01;
    fs::write(&object, &bad).unwrap();

    c.start("leaf-1-1");
    c.wait("leaf-1-1 to report the corruption", Duration::from_secs(30), || {
        matches!(
            c.status_of("origin", "leaf-1-1").map(|s| s.state),
            Some(cascade::status::NodeState::Failed { ref error, .. }) if error.contains("failed verification")
        )
    });
    assert!(
        c.log("leaf-1-1").contains("discarded corrupt body"),
        "{}",
        c.log("leaf-1-1")
    );
    assert!(
        !c.dir("leaf-1-1").join("target.bin").exists(),
        "a corrupt body was applied"
    );
    assert_eq!(c.status_of("leaf-1-1", "leaf-1-1").unwrap().applied, None);

    // Once the relay has good bytes again, the leaf's retry converges.
    fs::write(&object, &body).unwrap();
    c.wait_holds("leaf-1-1", 1);
    c.assert_same_as_origin("leaf-1-1");
}

#[test]
fn upload_limit_caps_what_a_node_sends() {
    let mut c = Cluster::new(1, 1);
    c.configure("origin", "upload_limit = \"4MiB/s\"\n");
    c.start_all();
    limited_origin_feeds_relay_at_most_4mib_per_s(&c);
}

#[test]
fn cascade_upload_limit_in_the_environment_caps_what_a_node_sends() {
    let mut c = Cluster::new(1, 1);
    c.start_with_env("origin", &[("CASCADE_UPLOAD_LIMIT", "4MiB/s")]);
    c.start("relay-1");
    c.start("leaf-1-1");
    limited_origin_feeds_relay_at_most_4mib_per_s(&c);
}

/// With the origin's uploads capped at 4 MiB/s (however it was configured), 16 MiB take
/// relay-1 at least about 4 s, and relay-1 (not capped) forwards them as they arrive.
fn limited_origin_feeds_relay_at_most_4mib_per_s(c: &Cluster) {
    write(&c.dir("origin"), "v1.txt", b"one");
    c.publish_wait();
    let sent_before = c.status_of("relay-1", "relay-1").unwrap().sent_bytes;
    // 16 MiB at 4 MiB/s cannot reach relay-1 in less than about 4 s (a lower bound only:
    // a slow machine may take longer, never shorter).
    write(&c.dir("origin"), "sixteen.bin", &noise(16 << 20, 8));
    let start = std::time::Instant::now();
    let _ = c.publish(&[]);
    // Cut-through: relay-1 serves its leaf the checked chunks of the body while it is still
    // receiving the rest (its own status, read at once: no report has to travel).
    c.wait(
        "relay-1 to send part of sixteen.bin before it holds all of it",
        Duration::from_secs(30),
        || {
            c.status_of("relay-1", "relay-1")
                .is_some_and(|r| r.applied == Some(1) && r.sent_bytes > sent_before)
        },
    );
    c.wait_holds("relay-1", 2);
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(3600),
        "16 MiB crossed a 4 MiB/s limit in {took:?}"
    );
    // The relay has no limit: it is not slowed down.
    c.wait_holds("leaf-1-1", 2);
    c.assert_same_as_origin("leaf-1-1");
}

/// Offer bytes `name` has sent its children so far (asked over its own socket).
fn offered(c: &Cluster, name: &str) -> u64 {
    c.status_of(name, name).unwrap().offered_bytes
}

#[test]
fn a_one_file_change_costs_each_hop_a_delta_and_a_lagging_leaf_gets_the_whole_manifest() {
    let mut c = Cluster::new(1, 1);
    c.start_all();
    let d = c.dir("origin");
    for i in 0..3000 {
        write(
            &d,
            &format!("d{:02}/page-{i}.html", i % 30),
            format!("page {i}").as_bytes(),
        );
    }
    c.publish_wait();
    let whole = [offered(&c, "origin"), offered(&c, "relay-1")];
    // 3,000 entries with two digests each: over 50 bytes an entry.
    assert!(
        whole.iter().all(|&b| b > 150_000),
        "first offers: {whole:?}"
    );

    write(&d, "d07/page-7.html", b"changed");
    let out = c.publish_wait();
    assert!(out.contains("all 3 nodes hold release 2"), "{out}");
    let delta = [
        offered(&c, "origin") - whole[0],
        offered(&c, "relay-1") - whole[1],
    ];
    assert!(
        delta.iter().all(|&b| b < 4096),
        "one-file offers: {delta:?}"
    );
    c.assert_same_as_origin("leaf-1-1");

    // A leaf that missed a release holds one its parent has no delta against: it is sent the
    // whole manifest, and converges.
    c.stop("leaf-1-1");
    for (v, page) in [(3, "d01/page-1.html"), (4, "d02/page-2.html")] {
        write(&d, page, format!("release {v}").as_bytes());
        assert!(c.publish(&[]).status.success());
        c.wait_holds("relay-1", v);
    }
    let before = offered(&c, "relay-1");
    c.start("leaf-1-1");
    c.wait_holds("leaf-1-1", 4);
    c.assert_same_as_origin("leaf-1-1");
    let sent = offered(&c, "relay-1") - before;
    assert!(
        sent > 150_000,
        "relay sent {sent} offer bytes to the lagging leaf"
    );
    assert!(
        !c.log("leaf-1-1").contains("as a delta:"),
        "{}",
        c.log("leaf-1-1")
    );
}

#[test]
fn compressed_links_carry_text_in_a_fraction_of_its_bytes_and_noise_as_it_is() {
    let mut c = Cluster::new(1, 1);
    // The relay asks its parent for zstd, the leaf for auto.
    c.configure("relay-1", "compress = \"zstd\"\n");
    c.configure("leaf-1-1", "compress = \"auto\"\n");
    c.start_all();
    let d = c.dir("origin");
    let mut text_bytes = 0;
    for i in 0..1500 {
        let page = format!("<li class=\"entry\">page {i} of the site</li>\n").repeat(20 + i % 50);
        text_bytes += page.len();
        write(
            &d,
            &format!("pages/{:02}/p{i}.html", i % 15),
            page.as_bytes(),
        );
    }
    // Streamed bodies: text past a chunk (cut-through at the relay), and noise.
    let log = "GET /index.html 200\n".repeat(300_000);
    text_bytes += log.len();
    write(&d, "logs/access.log", log.as_bytes());
    let noise_bytes = 3 << 20;
    write(&d, "img/photo.jpg", &noise(noise_bytes, 5));
    let out = c.publish_wait();
    assert!(out.contains("all 3 nodes hold release 1"), "{out}");
    c.assert_same_as_origin("leaf-1-1");

    // Each hop offered the manifest packed: its paths and sizes compressed, its digests not
    // (`release.bin` holds the release as an offer encodes it, and a few bytes more).
    let raw = fs::metadata(c.data("origin").join("release.bin"))
        .unwrap()
        .len();
    for hop in ["origin", "relay-1"] {
        let sent = offered(&c, hop);
        assert!(
            sent > raw / 3 && sent < raw * 17 / 20,
            "{hop} offered {sent} bytes for a release of {raw}"
        );
    }

    // Each hop sent the noise whole and the text in under a quarter of its size.
    for hop in ["origin", "relay-1"] {
        let sent = c.status_of(hop, hop).unwrap().sent_bytes as usize;
        assert!(
            sent >= noise_bytes && sent < noise_bytes + text_bytes / 4,
            "{hop} sent {sent} bytes for {text_bytes} of text and {noise_bytes} of noise"
        );
    }

    // A change after that travels the same way.
    write(&d, "pages/03/p3.html", b"<p>changed</p>\n");
    c.publish_wait();
    c.assert_same_as_origin("leaf-1-1");
    assert!(!c.all_logs().contains("WARN"), "{}", c.all_logs());
}

/// The bodies a node's store holds, by name (the empty body, always held, left out).
fn stored(c: &Cluster, name: &str) -> std::collections::BTreeSet<String> {
    let empty = cascade::tree::Blake3::empty().hex();
    let mut out = std::collections::BTreeSet::new();
    for fan in fs::read_dir(c.data(name).join("store/objects")).unwrap() {
        for obj in fs::read_dir(fan.unwrap().path()).unwrap() {
            let n = obj.unwrap().file_name().into_string().unwrap();
            if n != empty {
                out.insert(n);
            }
        }
    }
    out
}

/// Rewrites one byte of `rel` in place (same inode, same size).
fn poke(root: &std::path::Path, rel: &str, at: u64, byte: u8) {
    use std::io::{Seek, Write};
    let mut f = fs::OpenOptions::new()
        .write(true)
        .open(root.join(rel))
        .unwrap();
    f.seek(std::io::SeekFrom::Start(at)).unwrap();
    f.write_all(&[byte]).unwrap();
}

#[test]
fn the_origin_serves_from_dir_never_sends_a_changed_file_and_copies_it_from_then_on() {
    use cascade::status::NodeState;
    use cascade::tree::Blake3;
    let mut c = Cluster::new(2, 1);
    c.start("origin");
    c.start("relay-1");
    let d = c.dir("origin");
    // Three chunks (the middle one changes later), a page, and a file that never changes.
    let chunk = cascade::tree::CHUNK;
    let big = noise(2 * chunk as usize + 4321, 5);
    write(&d, "big.bin", &big);
    write(&d, "page.html", b"<p>first</p>");
    write(&d, "stable.txt", b"stable");
    let _ = c.publish(&[]);
    c.wait_holds("relay-1", 1);
    c.assert_same_as_origin("relay-1");
    // Nothing was copied into the origin's store: the bodies went out from `dir`.
    assert!(
        stored(&c, "origin").is_empty(),
        "{:?}",
        stored(&c, "origin")
    );

    // Each file changed after the release that names it: a child that asks for it then is
    // refused, never sent it.
    let refused = |c: &mut Cluster, version: u64, path: &str| {
        c.start("relay-2");
        c.wait(
            "relay-2 to be refused the release",
            Duration::from_secs(30),
            || {
                matches!(
                    c.status_of("origin", "relay-2").map(|s| s.state),
                    Some(NodeState::Failed { version: v, ref error }) if v == version && error.contains("did not serve")
                )
            },
        );
        c.stop("relay-2");
        let log = c.log("origin");
        let said = format!("`{path}` changed after release {version} was published");
        assert!(log.contains(&said), "{said}\n{log}");
        for f in ["big.bin", "page.html", "stable.txt"] {
            assert!(!c.dir("relay-2").join(f).exists(), "{f}");
        }
    };
    // A small body (served in a batch).
    write(&d, "page.html", b"<p>later</p>");
    refused(&mut c, 1, "page.html");

    // Release 2 carries it as it is now, and its body is copied into the store, since it
    // was found changing; the others stay in `dir`.
    let _ = c.publish(&[]);
    c.wait_holds("relay-1", 2);
    c.assert_same_as_origin("relay-1");
    assert_eq!(
        stored(&c, "origin"),
        [Blake3::of(b"<p>later</p>").hex()].into()
    );

    // A large body: its middle chunk changes in place. page.html changes again too, but its
    // copy of release 2 is still served.
    poke(&d, "big.bin", chunk + 17, big[chunk as usize + 17] ^ 0xff);
    write(&d, "page.html", b"<p>third</p>");
    refused(&mut c, 2, "big.bin");
    assert!(!c
        .log("origin")
        .contains("`page.html` changed after release 2"));

    // Release 3 reaches both, and both big.bin and page.html are copies now.
    let _ = c.publish(&[]);
    c.start("relay-2");
    c.wait_holds("relay-2", 3);
    c.wait_holds("relay-1", 3);
    c.assert_same_as_origin("relay-2");
    c.assert_same_as_origin("relay-1");
    let copies = stored(&c, "origin");
    let v3 = fs::read(d.join("big.bin")).unwrap();
    assert!(copies.contains(&Blake3::of(&v3).hex()), "{copies:?}");
    assert!(copies.contains(&Blake3::of(b"<p>third</p>").hex()));
    assert!(!copies.contains(&Blake3::of(b"stable").hex()));
}

#[test]
fn a_large_new_file_travels_while_the_origin_scans_and_is_not_asked_for_again() {
    let mut c = Cluster::new(1, 1);
    c.start_all();
    // Pushes go to the children linked when the scan reads the file (and a relay pushes
    // them on to its own).
    c.wait("relay-1 to be linked", Duration::from_secs(30), || {
        c.status_of("origin", "relay-1")
            .is_some_and(|s| s.connected)
    });
    c.wait("leaf-1-1 to be linked", Duration::from_secs(30), || {
        c.status_of("relay-1", "leaf-1-1")
            .is_some_and(|s| s.connected)
    });
    let d = c.dir("origin");
    let big = noise(24 << 20, 9);
    write(&d, "media/big.bin", &big);
    write(&d, "index.html", b"<p>small</p>");
    for version in 1..=2 {
        let out = c.publish_wait();
        assert!(
            out.contains(&format!("all 3 nodes hold release {version}")),
            "{out}"
        );
        c.assert_same_as_origin("leaf-1-1");
        // The relay hashed and stored the body as the origin read it, and the leaf as the
        // relay got it: each fetched only the small file, and took the pushed body once the
        // signed release named it.
        for node in ["relay-1", "leaf-1-1"] {
            let status = c.status_of(node, node).unwrap();
            assert!(
                status.fetched_bytes < 1 << 20,
                "release {version}: {node} fetched {} bytes\n{}",
                status.fetched_bytes,
                c.log(node)
            );
        }
        if version == 1 {
            // The next release changes the large file in its middle (and its mtime, which
            // could otherwise stay within the same second).
            poke(&d, "media/big.bin", 12 << 20, 0x5a);
            let f = fs::File::options()
                .write(true)
                .open(d.join("media/big.bin"))
                .unwrap();
            f.set_modified(std::time::SystemTime::now() + Duration::from_secs(10))
                .unwrap();
        }
    }
    // A large file renamed (same size and mtime as a file of the last release) is not
    // pushed: the relay holds its body already.
    fs::rename(d.join("media/big.bin"), d.join("media/moved.bin")).unwrap();
    let out = c.publish_wait();
    assert!(out.contains("all 3 nodes hold release 3"), "{out}");
    c.assert_same_as_origin("leaf-1-1");
    for node in ["relay-1", "leaf-1-1"] {
        let log = c.log(node);
        assert_eq!(
            log.matches("took bodies pushed during the parent's scan bodies=1")
                .count(),
            2,
            "{node}: {log}"
        );
        assert!(!log.contains("path=\"media/moved.bin\""), "{node}: {log}");
        // Nothing pushed is left outside the store.
        let tmp = c.data(node).join("store/tmp");
        let left: Vec<_> = fs::read_dir(&tmp).unwrap().flatten().collect();
        assert!(left.is_empty(), "{node}: {left:?}");
    }
    assert!(!c.all_logs().contains("WARN"), "{}", c.all_logs());
}
