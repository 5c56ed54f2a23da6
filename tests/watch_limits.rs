//! A watching origin past inotify's limits: the watch limit (`fs.inotify.max_user_watches`)
//! and the event queue (`fs.inotify.max_queued_events`). Both are machine-wide sysctls, so
//! this file runs its cases one after another, alone in its own test binary (cargo runs test
//! binaries one at a time), and puts the values back afterwards. Without root (the sysctls not
//! writable) it says so and checks nothing.

mod common;

use std::fs;

use common::{write, Cluster};

const WATCHES: &str = "/proc/sys/fs/inotify/max_user_watches";
const QUEUE: &str = "/proc/sys/fs/inotify/max_queued_events";

/// Sets a sysctl for as long as it lives.
struct Sysctl {
    path: &'static str,
    old: String,
}

impl Sysctl {
    fn set(path: &'static str, value: u64) -> Option<Self> {
        let old = fs::read_to_string(path).ok()?;
        fs::write(path, value.to_string()).ok()?;
        Some(Sysctl { path, old })
    }
}

impl Drop for Sysctl {
    fn drop(&mut self) {
        let _ = fs::write(self.path, self.old.trim());
    }
}

/// Inotify watches every process holds now.
fn watches_in_use() -> u64 {
    let mut n = 0;
    for p in fs::read_dir("/proc").into_iter().flatten().flatten() {
        for fd in fs::read_dir(p.path().join("fdinfo"))
            .into_iter()
            .flatten()
            .flatten()
        {
            if let Ok(t) = fs::read_to_string(fd.path()) {
                n += t.lines().filter(|l| l.starts_with("inotify wd:")).count() as u64;
            }
        }
    }
    n
}

fn cluster_with_tree(dirs: usize) -> Cluster {
    let c = Cluster::new(1, 1);
    c.configure(
        "origin",
        "watch = true\nwatch_settle = \"0.2s\"\nwatch_max_delay = \"1s\"\n",
    );
    for d in 0..dirs {
        write(&c.dir("origin"), &format!("d{d}/sub/file.txt"), b"x");
    }
    c
}

fn wait_leaf_matches(c: &Cluster, what: &str) {
    c.wait_same_as_origin("leaf-1-1", None, what);
}

#[test]
fn past_the_watch_limit_and_after_a_queue_overflow_no_change_is_missed() {
    // The watch limit: a tree of 40 directories with room for a handful of watches.
    let Some(limit) = Sysctl::set(WATCHES, watches_in_use() + 5) else {
        eprintln!("{WATCHES} is not writable here (not root?): skipped");
        return;
    };
    let mut c = cluster_with_tree(20);
    c.start_all();
    wait_leaf_matches(&c, "the first release");
    let log = c.log("origin");
    assert!(
        log.contains("fs.inotify.max_user_watches"),
        "the limit is named: {log}"
    );
    // A change in a directory that has no watch still ships, by the periodic full rescan.
    write(
        &c.dir("origin"),
        "d19/sub/file.txt",
        b"changed where nobody watches",
    );
    write(&c.dir("origin"), "d19/sub/new.txt", b"new");
    wait_leaf_matches(&c, "a change in an unwatched directory");
    drop(c);
    drop(limit);

    // The event queue: an origin whose inotify queue holds 16 events gets thousands.
    let Some(queue) = Sysctl::set(QUEUE, 16) else {
        return;
    };
    let mut c = cluster_with_tree(2);
    c.start_all();
    wait_leaf_matches(&c, "the first release");
    for i in 0..3000 {
        write(
            &c.dir("origin"),
            &format!("burst/{}/f{i}", i % 10),
            b"burst",
        );
    }
    wait_leaf_matches(&c, "the burst");
    drop(queue);
    let log = c.log("origin");
    assert!(
        log.contains("fs.inotify.max_queued_events"),
        "the overflow is named: {log}"
    );
}
