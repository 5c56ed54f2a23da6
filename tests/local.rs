//! What a node does with its own `dir` besides applying releases, with real node processes:
//! drift repair (`cascade verify`, `verify_every`), release hooks (`on_release`, a refusing
//! `check`, a hung hook) and kept paths (`keep`) in both apply modes.

mod common;

use std::fs;
use std::path::Path;
use std::time::Duration;

use common::{cascade, text, write, Cluster};

fn verify(c: &Cluster, name: &str, extra: &[&str]) -> String {
    let cfg = c.config(name);
    let mut args = vec!["verify", "--config", cfg.to_str().unwrap()];
    args.extend_from_slice(extra);
    let out = cascade(&args);
    assert!(out.status.success(), "{}\n{}", text(&out), c.all_logs());
    text(&out)
}

/// Rewrites a file with other bytes of the same length, keeping its mtime (the quick check
/// cannot see it).
fn edit_in_secret(path: &Path) {
    let mtime = fs::metadata(path).unwrap().modified().unwrap();
    let body = fs::read(path).unwrap();
    fs::write(path, body.iter().map(|b| b ^ 1).collect::<Vec<_>>()).unwrap();
    fs::File::options()
        .write(true)
        .open(path)
        .unwrap()
        .set_modified(mtime)
        .unwrap();
}

#[test]
fn drift_is_repaired_without_a_restart_or_a_publish() {
    let mut c = Cluster::new(1, 1);
    c.configure("relay-1", "verify_every = \"1s\"\n");
    c.start_all();
    let origin = c.dir("origin");
    write(&origin, "index.html", b"<h1>home</h1>");
    write(&origin, "about.html", b"<h1>about</h1>");
    write(&origin, "css/site.css", b"body {}");
    c.publish_wait();

    // The leaf keeps no second copy of its bodies: an edited file's body comes from the
    // parent.
    let leaf = c.dir("leaf-1-1");
    write(&leaf, "index.html", b"defaced!");
    fs::remove_file(leaf.join("css/site.css")).unwrap();
    write(&leaf, "stray.php", b"<?php evil();");
    let out = verify(&c, "leaf-1-1", &[]);
    assert!(out.contains("repaired 3 paths"), "{out}");
    for p in ["index.html", "css/site.css", "stray.php"] {
        assert!(out.contains(p), "{out}");
    }
    c.assert_same_as_origin("leaf-1-1");
    let s = c.status_of("leaf-1-1", "leaf-1-1").unwrap();
    assert_eq!(s.repaired, 3);

    // A same-size edit under the old mtime needs a full verify.
    edit_in_secret(&leaf.join("about.html"));
    assert!(verify(&c, "leaf-1-1", &[]).contains("dir matches"));
    let out = verify(&c, "leaf-1-1", &["--full"]);
    assert!(
        out.contains("repaired 1 paths") && out.contains("about.html"),
        "{out}"
    );
    c.assert_same_as_origin("leaf-1-1");

    // The relay repairs itself on schedule, from its own store.
    fs::remove_file(c.dir("relay-1").join("about.html")).unwrap();
    c.wait(
        "the relay's scheduled verify",
        Duration::from_secs(20),
        || c.dir("relay-1").join("about.html").exists(),
    );
    c.assert_same_as_origin("relay-1");
    assert!(c.log("relay-1").contains("repaired drift"));

    // The origin has nothing to verify against: a clear error, no harm.
    let cfg = c.config("origin");
    let out = cascade(&["verify", "--config", cfg.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(text(&out).contains("no dir to verify"), "{}", text(&out));
}

/// Waits until `asked` reports a hook failure of `about` that says `what`.
fn wait_hook_error(c: &Cluster, asked: &str, about: &str, what: &str) {
    c.wait(
        &format!("{about}'s hook failure `{what}` as {asked} sees it"),
        Duration::from_secs(20),
        || {
            c.status_of(asked, about)
                .and_then(|s| s.hook_error)
                .is_some_and(|e| e.contains(what))
        },
    );
}

#[test]
fn hooks_run_after_a_release_refuse_through_check_and_are_killed_when_hung() {
    let mut c = Cluster::new(1, 2);
    let marker = c.tmp.path().join("hook-ran");
    let origin_marker = c.tmp.path().join("origin-hook-ran");
    c.configure(
        "origin",
        &format!(
            "on_release = [\"sh\", \"-c\", \"echo $CASCADE_RELEASE >> {}\"]\n",
            origin_marker.display()
        ),
    );
    // A hook that cannot run: said at start, and at each release in the status.
    c.configure("relay-1", "on_release = [\"/nonexistent/purge-cdn\"]\n");
    c.configure(
        "leaf-1-1",
        &format!(
            "on_release = [\"sh\", \"-c\", \"echo $CASCADE_NODE $CASCADE_RELEASE $CASCADE_DIR > {m}.tmp; cat \\\"$CASCADE_CHANGED\\\" >> {m}.tmp; mv {m}.tmp {m}\"]\n",
            m = marker.display()
        ),
    );
    c.configure(
        "leaf-1-2",
        "apply = \"atomic\"\ncheck = [\"sh\", \"-c\", \"if grep -q bad \\\"$CASCADE_DIR/page.html\\\"; then echo page is bad >&2; exit 1; fi\"]\non_release = [\"sleep\", \"30\"]\nhook_timeout = \"1s\"\n",
    );
    c.start_all();
    let origin = c.dir("origin");
    write(&origin, "page.html", b"good");
    write(&origin, "old.html", b"to be deleted");
    c.publish_wait();
    write(&origin, "page.html", b"still good");
    fs::remove_file(origin.join("old.html")).unwrap();
    c.publish_wait();
    c.wait("the on_release hook", Duration::from_secs(20), || {
        fs::read_to_string(&marker).is_ok_and(|t| t.starts_with("leaf-1-1 2 "))
    });
    assert!(
        c.log("relay-1").contains("/nonexistent/purge-cdn"),
        "{}",
        c.log("relay-1")
    );
    wait_hook_error(&c, "origin", "relay-1", "cannot start");
    // The origin runs its hook after each publish.
    c.wait("the origin's hook", Duration::from_secs(20), || {
        fs::read_to_string(&origin_marker).is_ok_and(|t| t == "1\n2\n")
    });
    let ran = fs::read_to_string(&marker).unwrap();
    assert_eq!(
        ran,
        format!(
            "leaf-1-1 2 {}\nold.html\npage.html\n",
            c.dir("leaf-1-1").display()
        )
    );
    // The hung hook is killed and reported; the release stays applied.
    wait_hook_error(&c, "leaf-1-2", "leaf-1-2", "killed after running 1s");
    assert_eq!(
        fs::read(c.dir("leaf-1-2").join("page.html")).unwrap(),
        b"still good"
    );

    // A bad page: the atomic leaf's check refuses it, the other leaf takes it.
    write(&origin, "page.html", b"bad page");
    let out = c.publish(&["--wait", "--timeout", "60"]);
    let t = text(&out);
    assert!(!out.status.success(), "{t}");
    assert!(
        t.contains("1 of 4 nodes refused release 3") && t.contains("page is bad"),
        "{t}"
    );
    assert!(t.contains("hook failed on relay-1"), "{t}");
    assert_eq!(
        fs::read(c.dir("leaf-1-2").join("page.html")).unwrap(),
        b"still good"
    );
    assert_eq!(
        fs::read(c.dir("leaf-1-1").join("page.html")).unwrap(),
        b"bad page"
    );
    let s = c.status_of("leaf-1-2", "leaf-1-2").unwrap();
    assert_eq!(s.applied, Some(2));
    assert!(s.hook_error.unwrap().contains("page is bad"));
    // Fixed at the source: the next release passes the check.
    write(&origin, "page.html", b"fixed");
    c.publish_wait();
    assert_eq!(
        fs::read(c.dir("leaf-1-2").join("page.html")).unwrap(),
        b"fixed"
    );
}

#[test]
fn kept_paths_survive_every_release_in_both_apply_modes() {
    let mut c = Cluster::new(1, 2);
    let outside = c.tmp.path().join("outside-cache");
    fs::create_dir_all(&outside).unwrap();
    c.configure(
        "leaf-1-1",
        "keep = [\"uploads/\", \"*.local\", \"cache/\"]\n",
    );
    c.configure(
        "leaf-1-2",
        "apply = \"atomic\"\nkeep = [\"uploads/\", \"config.local\"]\n",
    );
    // Before Cascade: local content in both dirs (the atomic leaf's moves into shared/).
    for leaf in ["leaf-1-1", "leaf-1-2"] {
        write(&c.dir(leaf), "uploads/old.jpg", b"uploaded before");
        write(&c.dir(leaf), "config.local", b"db=local");
    }
    std::os::unix::fs::symlink(&outside, c.dir("leaf-1-1").join("cache")).unwrap();
    c.start_all();
    let origin = c.dir("origin");
    write(&origin, "index.html", b"v1");
    // The origin publishes paths the leaves keep as their own.
    write(&origin, "uploads/from-origin.jpg", b"origin's");
    write(&origin, "config.local", b"db=origin");
    c.publish_wait();
    for leaf in ["leaf-1-1", "leaf-1-2"] {
        let d = c.dir(leaf);
        assert_eq!(fs::read(d.join("index.html")).unwrap(), b"v1", "{leaf}");
        assert_eq!(
            fs::read(d.join("uploads/old.jpg")).unwrap(),
            b"uploaded before"
        );
        assert_eq!(fs::read(d.join("config.local")).unwrap(), b"db=local");
        assert!(!d.join("uploads/from-origin.jpg").exists(), "{leaf}");
        let s = c.status_of(leaf, leaf).unwrap();
        assert_eq!(s.kept, ["config.local", "uploads"], "{leaf}");
    }
    // The symlinked cache is left alone, not followed, not deleted, and said so at start.
    assert!(
        c.log("leaf-1-1").contains("outside dir"),
        "{}",
        c.log("leaf-1-1")
    );
    assert!(fs::symlink_metadata(c.dir("leaf-1-1").join("cache"))
        .unwrap()
        .is_symlink());
    assert_eq!(fs::read_dir(&outside).unwrap().count(), 0);
    // Atomic: kept paths live in DATA/shared, linked from the release.
    let atomic = c.dir("leaf-1-2");
    let uploads = fs::read_link(atomic.join("uploads")).unwrap();
    assert_eq!(uploads, c.data("leaf-1-2").join("shared/uploads"));

    // A local program writes between releases: nothing is lost or copied at a switch.
    for (i, v) in ["v2", "v3"].iter().enumerate() {
        for leaf in ["leaf-1-1", "leaf-1-2"] {
            write(
                &c.dir(leaf),
                &format!("uploads/user-{i}.jpg"),
                b"user upload",
            );
        }
        write(&origin, "index.html", v.as_bytes());
        fs::remove_file(origin.join("config.local")).ok();
        c.publish_wait();
        for leaf in ["leaf-1-1", "leaf-1-2"] {
            let d = c.dir(leaf);
            assert_eq!(fs::read(d.join("index.html")).unwrap(), v.as_bytes());
            for j in 0..=i {
                assert!(
                    d.join(format!("uploads/user-{j}.jpg")).exists(),
                    "{leaf} lost an upload"
                );
            }
            assert_eq!(fs::read(d.join("config.local")).unwrap(), b"db=local");
        }
    }
    // A verify leaves kept paths alone too.
    assert!(verify(&c, "leaf-1-1", &["--full"]).contains("dir matches"));
    assert!(verify(&c, "leaf-1-2", &["--full"]).contains("dir matches"));
}
