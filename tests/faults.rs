//! Faults injected for real into separate node processes: SIGKILL mid-apply in both apply
//! modes. What a reader of `dir` sees is checked by MD5 of every file.

mod common;

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use cascade::dir::fingerprint;
use cascade::testkit::noise;
use common::{assert_same_dirs, write, Cluster};

const FILES: usize = 1500;

/// Rewrites every small file (so the apply has many files to replace) with `round` in it.
fn round_of_changes(origin: &Path, round: usize) {
    for i in 0..FILES {
        write(
            origin,
            &format!("d{}/f{i}.txt", i % 30),
            format!("round {round} file {i}\n").as_bytes(),
        );
    }
    write(origin, "big.bin", &noise(3 * 1024 * 1024, round as u64));
}

fn copy_tree(from: &Path, to: &Path) {
    let _ = fs::remove_dir_all(to);
    let ok = Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .unwrap()
        .success();
    assert!(ok, "cp -a {} {}", from.display(), to.display());
}

/// Kills the leaf while an apply is in progress (its `pending.bin` exists), then checks what
/// its `dir` shows before and after the restart. Returns whether a kill landed mid-apply.
fn kill_leaf_mid_apply(c: &mut Cluster, version: u64, atomic: bool) -> bool {
    let origin = c.dir("origin");
    let before = c.tmp.path().join(format!("before-v{version}"));
    copy_tree(&origin, &before);
    round_of_changes(&origin, version as usize);
    let _ = c.publish(&[]);
    let pending = c.data("leaf-1-1").join("pending.bin");
    let start = Instant::now();
    let mut landed = false;
    while start.elapsed() < Duration::from_secs(30) {
        if pending.exists() {
            c.kill("leaf-1-1");
            landed = pending.exists();
            break;
        }
        if c.status_of("leaf-1-1", "leaf-1-1").and_then(|s| s.applied) == Some(version) {
            c.kill("leaf-1-1");
            break;
        }
        std::thread::sleep(Duration::from_micros(300));
    }
    if atomic {
        // Killed at any moment, the served dir is exactly one complete release.
        let now = fingerprint(&c.dir("leaf-1-1")).unwrap().root_digest();
        let old = fingerprint(&before).unwrap().root_digest();
        let new = fingerprint(&origin).unwrap().root_digest();
        assert!(
            now == old || now == new,
            "atomic dir shows a mix of releases"
        );
        if landed {
            assert_eq!(
                now, old,
                "killed before the switch, the old release must be served"
            );
        }
    }
    // Restarted with its parent down, the leaf can only get to the new release by finishing
    // the interrupted apply from what it has (roll forward), not by fetching it again.
    if landed {
        c.stop("relay-1");
    }
    c.start("leaf-1-1");
    c.wait_holds("leaf-1-1", version);
    assert_same_dirs(&origin, &c.dir("leaf-1-1"));
    if landed {
        assert!(
            c.log("leaf-1-1")
                .contains("finished the apply interrupted by the last stop"),
            "{}",
            c.log("leaf-1-1")
        );
        c.start("relay-1");
    }
    landed
}

fn kill_mid_apply(atomic: bool) {
    let mut c = Cluster::new(1, 1);
    if atomic {
        let cfg = c.config("leaf-1-1");
        let mut text = fs::read_to_string(&cfg).unwrap();
        text.push_str("apply = \"atomic\"\nkeep_releases = 2\n");
        fs::write(&cfg, text).unwrap();
    }
    c.start_all();
    round_of_changes(&c.dir("origin"), 1);
    c.publish_wait();
    let mut landed = 0;
    for version in 2..=6 {
        landed += kill_leaf_mid_apply(&mut c, version, atomic) as u32;
        if landed >= 2 {
            break;
        }
    }
    assert!(landed >= 1, "no kill landed during an apply in 5 tries");
    if atomic {
        let link = fs::read_link(c.dir("leaf-1-1")).unwrap();
        assert!(
            link.starts_with(c.data("leaf-1-1").join("releases")),
            "{}",
            link.display()
        );
        let kept = fs::read_dir(c.data("leaf-1-1").join("releases"))
            .unwrap()
            .count();
        assert!(
            kept <= 3,
            "{kept} release dirs kept (keep_releases = 2, plus the moved-aside dir)"
        );
    }
}

#[test]
fn sigkill_mid_apply_in_place_rolls_forward_on_restart() {
    kill_mid_apply(false);
}

#[test]
fn sigkill_mid_apply_atomic_serves_old_or_new_never_a_mix() {
    kill_mid_apply(true);
}

#[test]
fn a_body_interrupted_by_sigkill_resumes_where_it_stopped() {
    let mut c = Cluster::new(1, 1);
    // The leaf fetches the large body from the relay (under an upload limit a relay does not
    // push it on while the origin scans; `a_push_interrupted_by_sigkill_...` kills a push).
    c.configure("relay-1", "upload_limit = \"64MiB/s\"\n");
    c.start_all();
    write(&c.dir("origin"), "v1.txt", b"one");
    c.publish_wait();

    const SIZE: u64 = 160 * 1024 * 1024;
    write(&c.dir("origin"), "large.bin", &noise(SIZE as usize, 11));
    let _ = c.publish(&[]);
    let mut at_kill = 0;
    c.wait(
        "leaf-1-1 to be partway through the large body",
        Duration::from_secs(120),
        || match c.status_of("leaf-1-1", "leaf-1-1").map(|s| s.state) {
            Some(cascade::status::NodeState::Fetching { done_bytes, .. })
                if done_bytes >= 8 << 20 =>
            {
                at_kill = done_bytes;
                true
            }
            _ => false,
        },
    );
    c.kill("leaf-1-1");
    assert!(at_kill < SIZE, "the body completed before the kill");
    c.start("leaf-1-1");
    c.wait_holds("leaf-1-1", 2);
    c.assert_same_as_origin("leaf-1-1");
    let s = c.status_of("leaf-1-1", "leaf-1-1").unwrap();
    // At least what was on disk at the kill was not fetched again.
    assert!(
        s.fetched_bytes <= SIZE - at_kill + (4 << 20),
        "fetched {} bytes after restart; {at_kill} of {SIZE} were already received",
        s.fetched_bytes
    );
}

#[test]
fn a_push_interrupted_by_sigkill_resumes_where_it_stopped() {
    let mut c = Cluster::new(1, 1);
    c.start_all();
    write(&c.dir("origin"), "v1.txt", b"one");
    c.publish_wait();

    // The relay pushes the file on to the leaf as the origin's scan pushes it to the relay;
    // the leaf is killed partway.
    const SIZE: u64 = 160 * 1024 * 1024;
    let at_kill = c.kill_during_push("leaf-1-1", "leaf-1-1", &noise(SIZE as usize, 12));

    // Restarted, it resumes the body after what the push had brought.
    c.start("leaf-1-1");
    c.wait_holds("leaf-1-1", 2);
    c.assert_same_as_origin("leaf-1-1");
    let log = c.log("leaf-1-1");
    assert!(
        log.contains("a push cut by the last stop is kept to resume"),
        "{log}"
    );
    let fetched = c.status_of("leaf-1-1", "leaf-1-1").unwrap().fetched_bytes;
    assert!(
        fetched <= SIZE - at_kill + (4 << 20),
        "fetched {fetched} bytes after restart; {at_kill} of {SIZE} had been pushed\n{log}"
    );
    // Nothing pushed is left outside the store.
    let tmp = c.data("leaf-1-1").join("store/tmp");
    let left: Vec<_> = fs::read_dir(&tmp).unwrap().flatten().collect();
    assert!(left.is_empty(), "{left:?}");
}

/// Unmounts (lazily) when dropped.
struct Mount(std::path::PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn a_full_disk_keeps_the_last_release_reports_and_converges_once_freed() {
    let mut c = Cluster::new(1, 1);
    // The leaf's whole home (config, dir, data) on a 24 MiB tmpfs.
    let home = c.dep.base.join("leaf-1-1");
    let config = fs::read(c.config("leaf-1-1")).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=24m", "tmpfs"])
        .arg(&home)
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        // Only a machine that cannot mount at all may skip; as root a failed mount is a
        // failure, never a silent pass.
        assert!(
            !rustix::process::getuid().is_root(),
            "cannot mount a 24 MiB tmpfs on {} as root",
            home.display()
        );
        eprintln!("SKIPPED a_full_disk_...: cannot mount a tmpfs here (needs root and mount(8))");
        return;
    }
    let _mount = Mount(home.clone());
    fs::write(c.config("leaf-1-1"), config).unwrap();
    fs::create_dir_all(c.dir("leaf-1-1")).unwrap();
    c.start_all();
    write(&c.dir("origin"), "index.html", b"release one");
    c.publish_wait();
    let before = c.tmp.path().join("v1");
    copy_tree(&c.dir("origin"), &before);

    // 40 MiB cannot fit: the leaf reports the error, which `publish --wait` shows.
    write(&c.dir("origin"), "index.html", b"release two");
    write(&c.dir("origin"), "large.bin", &noise(40 << 20, 3));
    let out = c.publish(&["--wait", "--timeout", "8"]);
    let text = common::text(&out);
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("leaf-1-1: applied v1") && text.contains("No space left to fetch"),
        "{text}"
    );
    // Refused before fetching: no partial body fills the disk.
    let partial: u64 = fs::read_dir(c.data("leaf-1-1").join("store/tmp"))
        .unwrap()
        .flatten()
        .map(|e| e.metadata().unwrap().len())
        .sum();
    assert_eq!(partial, 0, "bytes fetched for a release that cannot fit");
    // Meanwhile it still serves release 1, intact.
    assert_same_dirs(&before, &c.dir("leaf-1-1"));

    // Space is freed: it converges without any command.
    let ok = Command::new("mount")
        .args(["-o", "remount,size=256m"])
        .arg(&home)
        .status()
        .unwrap()
        .success();
    assert!(ok, "remount");
    c.publish_wait();
    c.assert_same_as_origin("leaf-1-1");
}
