//! A watching origin (`watch = true`) with real inotify on real temp dirs, publishing by
//! itself through a 3-level tree: random changes, a mass change, a half-written file, exclude
//! rules, manual publish alongside, and a watched directory deleted and replaced.

mod common;

use std::fs;
use std::io::Write;
use std::time::Duration;

use cascade::dir::Rules;
use cascade::testkit::churn::{churn, Rng};
use common::{text, write, Cluster};

const EXCLUDE: &[&str] = &[
    "*.swp",
    "*~",
    ".git/",
    "/info/",
    "cache/**/*.tmp",
    "*.never-there",
];

fn exclude() -> Rules {
    Rules::new(&EXCLUDE.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
}

/// A 3-level tree whose origin watches its dir with a short settle.
fn watched(settle: &str, max_delay: &str) -> Cluster {
    let mut c = Cluster::new(1, 1);
    let list: Vec<String> = EXCLUDE.iter().map(|p| format!("{p:?}")).collect();
    c.configure(
        "origin",
        &format!(
            "watch = true\nwatch_settle = {settle:?}\nwatch_max_delay = {max_delay:?}\nexclude = [{}]\n",
            list.join(", ")
        ),
    );
    c.start_all();
    c
}

/// Waits until the deepest leaf shows what the origin publishes (its dir minus the excluded).
fn wait_leaf_matches(c: &Cluster, what: &str) {
    c.wait_same_as_origin("leaf-1-1", Some(&exclude()), what);
}

fn releases_published(c: &Cluster) -> usize {
    c.log("origin").matches("published release").count()
}

#[test]
fn a_watched_origin_follows_random_changes_and_never_sends_excluded_paths() {
    let c = watched("0.3s", "5s");
    let origin = c.dir("origin");
    write(&origin, "index.html", b"hello");
    write(&origin, "index.html.swp", b"editor swap");
    write(&origin, "notes~", b"backup");
    write(&origin, ".git/HEAD", b"ref: refs/heads/main");
    write(&origin, "info/secret", b"top-level info is private");
    write(&origin, "docs/info/page", b"a nested info/ is published");
    write(&origin, "cache/a/b/x.tmp", b"temp");
    write(&origin, "cache/a/b/x.dat", b"kept");
    wait_leaf_matches(&c, "the first release to reach the leaf");
    let leaf = c.dir("leaf-1-1");
    assert!(leaf.join("docs/info/page").exists() && leaf.join("cache/a/b/x.dat").exists());
    for gone in [
        "index.html.swp",
        "notes~",
        ".git",
        "info",
        "cache/a/b/x.tmp",
    ] {
        assert!(!leaf.join(gone).exists(), "{gone} was sent");
    }
    let mut rng = Rng::new(11);
    for round in 0..8 {
        let ops = churn(&origin, &mut rng, 3 + round);
        wait_leaf_matches(&c, &format!("round {round} to reach the leaf: {ops:#?}"));
    }
    // A pattern that matches nothing is said once, in one line.
    let log = c.log("origin");
    assert_eq!(
        log.matches("exclude pattern \"*.never-there\" matches nothing")
            .count(),
        1,
        "{log}"
    );
    // A manual publish next to the watch finds nothing new.
    let out = c.publish(&[]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("nothing changed"), "{}", text(&out));
}

#[test]
fn a_mass_change_becomes_one_or_a_few_releases() {
    let c = watched("1s", "10s");
    write(&c.dir("origin"), "seed.txt", b"seed");
    wait_leaf_matches(&c, "the first release");
    let before = releases_published(&c);
    // An unpacked archive: thousands of files in a few hundred directories, as fast as the
    // disk takes them.
    let root = c.dir("origin").join("site");
    for i in 0..3000 {
        let p = root.join(format!("d{}/e{}/f{i}.html", i % 30, i % 7));
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(&p, format!("page {i}\n")).unwrap();
    }
    wait_leaf_matches(&c, "the mass change to reach the leaf");
    let releases = releases_published(&c) - before;
    assert!(
        (1..=3).contains(&releases),
        "{releases} releases for one mass change"
    );
}

#[test]
fn a_half_written_file_is_never_published() {
    let c = watched("0.3s", "2s");
    let origin = c.dir("origin");
    write(&origin, "upload.bin", b"the old complete upload");
    wait_leaf_matches(&c, "the first release");
    // A slow upload: half written, then the writer pauses well past the settle time and the
    // max delay while other changes ship.
    let mut f = fs::File::create(origin.join("upload.bin")).unwrap();
    f.write_all(b"the new upl").unwrap();
    f.flush().unwrap();
    let mut g = fs::File::create(origin.join("fresh.bin")).unwrap();
    g.write_all(b"half").unwrap();
    write(&origin, "other.txt", b"ships meanwhile");
    let leaf = c.dir("leaf-1-1");
    c.wait("other.txt to ship", Duration::from_secs(30), || {
        leaf.join("other.txt").exists()
    });
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        fs::read(leaf.join("upload.bin")).unwrap(),
        b"the old complete upload"
    );
    assert!(!leaf.join("fresh.bin").exists());
    f.write_all(b"oad, complete").unwrap();
    g.write_all(b" and done").unwrap();
    drop((f, g));
    wait_leaf_matches(&c, "the finished files");
    assert_eq!(
        fs::read(leaf.join("upload.bin")).unwrap(),
        b"the new upload, complete"
    );
}

#[test]
fn a_deleted_or_replaced_dir_keeps_the_last_release_until_it_is_back() {
    let c = watched("0.3s", "2s");
    let origin = c.dir("origin");
    write(&origin, "a.txt", b"first tree");
    wait_leaf_matches(&c, "the first release");
    // Deleted: the leaf keeps serving the last release.
    fs::remove_dir_all(&origin).unwrap();
    c.wait(
        "the origin to report its dir gone",
        Duration::from_secs(10),
        || c.log("origin").contains("the watched directory is gone"),
    );
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        fs::read(c.dir("leaf-1-1").join("a.txt")).unwrap(),
        b"first tree"
    );
    // Back, as a new directory: watched again and published whole.
    let next = c.tmp.path().join("next");
    write(&next, "b.txt", b"second tree");
    fs::rename(&next, &origin).unwrap();
    wait_leaf_matches(&c, "the tree that came back");
    // Replaced in one rename (a deploy's `mv new www`): the new tree is followed.
    let newer = c.tmp.path().join("newer");
    write(&newer, "c.txt", b"third tree");
    let old = c.tmp.path().join("old");
    fs::rename(&origin, &old).unwrap();
    fs::rename(&newer, &origin).unwrap();
    wait_leaf_matches(&c, "the replacing tree");
    // Changes to the moved-away tree are not the origin's any more.
    write(&old, "stray.txt", b"not published");
    write(&origin, "d.txt", b"fourth");
    wait_leaf_matches(&c, "a change in the new tree");
    assert!(!c.dir("leaf-1-1").join("stray.txt").exists());
}
