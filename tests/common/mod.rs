//! Test helpers shared by the end-to-end tests: a deployment in a temp dir whose nodes run as
//! separate processes of the built `cascade` binary, over real QUIC on 127.0.0.1. Every process
//! is killed when the [`Cluster`] is dropped.
#![allow(dead_code)]

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use cascade::admin;
use cascade::dir::{fingerprint, fingerprint_with, Rules};
use cascade::status::NodeStatus;
use cascade::testkit::{deploy, Deployment};
use cascade::tree::Manifest;
use cascade::wire::{AdminRequest, AdminResponse};

pub const BIN: &str = env!("CARGO_BIN_EXE_cascade");

/// Boundary sizes, named once: empty, one byte, around the I/O buffer, several MiB.
pub const SIZES: &[usize] = &[
    0,
    1,
    256 * 1024 - 1,
    256 * 1024,
    256 * 1024 + 1,
    5 * 1024 * 1024 + 3,
];

pub fn cascade(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run cascade")
}

pub fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

pub struct Cluster {
    pub tmp: tempfile::TempDir,
    pub dep: Deployment,
    procs: HashMap<String, Child>,
}

impl Cluster {
    /// A deployment of origin → `relays` relays → `leaves` leaves each; nothing started.
    pub fn new(relays: usize, leaves: usize) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let dep = deploy(tmp.path(), relays, leaves).unwrap();
        Cluster {
            tmp,
            dep,
            procs: HashMap::new(),
        }
    }

    pub fn names(&self) -> Vec<String> {
        self.dep
            .topology
            .nodes()
            .iter()
            .map(|n| n.name.clone())
            .collect()
    }

    pub fn config(&self, name: &str) -> PathBuf {
        self.dep.base.join(name).join("node.toml")
    }

    pub fn dir(&self, name: &str) -> PathBuf {
        self.dep.base.join(name).join("dir")
    }

    pub fn data(&self, name: &str) -> PathBuf {
        self.dep.base.join(name).join("data")
    }

    pub fn log(&self, name: &str) -> String {
        fs::read_to_string(self.dep.base.join(name).join("node.log")).unwrap_or_default()
    }

    /// Appends `lines` (TOML) to a node's config file.
    pub fn configure(&self, name: &str, lines: &str) {
        let path = self.config(name);
        let mut text = fs::read_to_string(&path).unwrap();
        text.push_str(lines);
        fs::write(path, text).unwrap();
    }

    /// Adds `backup_parents` to a node in the topology file.
    pub fn add_backups(&self, name: &str, backups: &[&str]) {
        let path = self.dep.base.join("topology.toml");
        let text = fs::read_to_string(&path).unwrap();
        let marker = format!("name = \"{name}\"\n");
        let list: Vec<String> = backups.iter().map(|b| format!("\"{b}\"")).collect();
        let text = text.replace(
            &marker,
            &format!("{marker}backup_parents = [{}]\n", list.join(", ")),
        );
        fs::write(path, text).unwrap();
    }

    pub fn start(&mut self, name: &str) {
        self.start_with_env(name, &[]);
    }

    /// Starts a node with extra environment variables (e.g. `CASCADE_<KEY>` config keys).
    pub fn start_with_env(&mut self, name: &str, env: &[(&str, &str)]) {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dep.base.join(name).join("node.log"))
            .unwrap();
        let child = Command::new(BIN)
            .args(["node", "--config"])
            .arg(self.config(name))
            .args(["--log", "debug"])
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.procs.insert(name.to_owned(), child);
        // Wait for an answer on the admin socket, so the node is up before the test goes on
        // (a socket file left by a killed process does not count).
        self.wait(
            &format!("{name} to answer"),
            Duration::from_secs(20),
            || self.try_statuses(name).is_some(),
        );
    }

    pub fn start_all(&mut self) {
        for n in self.names() {
            self.start(&n);
        }
    }

    /// Stops a node with SIGTERM (clean shutdown) and waits for it to exit.
    pub fn stop(&mut self, name: &str) {
        if let Some(mut c) = self.procs.remove(name) {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(c.id().to_string())
                .status();
            let status = c.wait().unwrap();
            assert!(
                status.success(),
                "{name} exited with {status}: {}",
                self.log(name)
            );
        }
    }

    /// Sends a signal (e.g. "STOP", "CONT") to a running node.
    pub fn signal(&self, name: &str, sig: &str) {
        let pid = self.procs[name].id().to_string();
        assert!(Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(pid)
            .status()
            .unwrap()
            .success());
    }

    /// Kills a node with SIGKILL.
    pub fn kill(&mut self, name: &str) {
        if let Some(mut c) = self.procs.remove(name) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn publish(&self, extra: &[&str]) -> Output {
        let cfg = self.config("origin");
        let mut args = vec!["publish", "--config", cfg.to_str().unwrap()];
        args.extend_from_slice(extra);
        cascade(&args)
    }

    /// Writes `body` as `large.bin` on the origin and publishes it; kills node `killed` once
    /// the push of it reaching `watched` (through the relays that push it on) has 8 MiB in
    /// `watched`'s store, short of all of it. Returns how many bytes `watched` had then.
    pub fn kill_during_push(&mut self, watched: &str, killed: &str, body: &[u8]) -> u64 {
        fs::write(self.dir("origin").join("large.bin"), body).unwrap();
        let config = self.config("origin");
        let publish =
            std::thread::spawn(move || cascade(&["publish", "--config", config.to_str().unwrap()]));
        let at_kill = self.wait_for_push(watched, 8 << 20);
        self.kill(killed);
        assert!(
            at_kill < body.len() as u64,
            "the push completed before the kill"
        );
        assert!(publish.join().unwrap().status.success());
        at_kill
    }

    /// Waits until a body pushed to `name` has at least `bytes` in its store's `tmp/`, and
    /// returns how many it had then.
    fn wait_for_push(&self, name: &str, bytes: u64) -> u64 {
        let tmp = self.data(name).join("store/tmp");
        let pushed = || {
            (fs::read_dir(&tmp).into_iter().flatten().flatten())
                .filter(|e| e.file_name().to_string_lossy().ends_with(".pushed"))
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .max()
                .unwrap_or(0)
        };
        let started = Instant::now();
        loop {
            let n = pushed();
            if n >= bytes {
                return n;
            }
            if started.elapsed() > Duration::from_secs(60) {
                panic!(
                    "no push of {bytes} bytes reached {name}\n{}",
                    self.all_logs()
                );
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// `publish --wait`, asserting success.
    pub fn publish_wait(&self) -> String {
        let out = self.publish(&["--wait", "--timeout", "60"]);
        let t = text(&out);
        assert!(
            out.status.success(),
            "publish failed: {t}\n{}",
            self.all_logs()
        );
        t
    }

    /// The node's statuses, or `None` if it does not answer (not running, starting up).
    pub fn try_statuses(&self, name: &str) -> Option<Vec<NodeStatus>> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        match rt.block_on(admin::request(&self.data(name), &AdminRequest::Status)) {
            Ok(AdminResponse::Status { nodes, .. }) => Some(nodes),
            Ok(other) => panic!("unexpected {other:?}"),
            Err(_) => None,
        }
    }

    pub fn statuses(&self, name: &str) -> Vec<NodeStatus> {
        self.try_statuses(name)
            .unwrap_or_else(|| panic!("{name} does not answer\n{}", self.all_logs()))
    }

    pub fn status_of(&self, asked: &str, about: &str) -> Option<NodeStatus> {
        self.try_statuses(asked)?
            .into_iter()
            .find(|s| s.name == about)
    }

    /// Waits until `name` itself reports holding release `version` (asked over its own socket).
    pub fn wait_holds(&self, name: &str, version: u64) {
        self.wait(
            &format!("{name} to hold release {version}"),
            Duration::from_secs(30),
            || self.status_of(name, name).and_then(|s| s.applied) == Some(version),
        );
    }

    /// Polls `cond` every 50 ms until true or `limit` passes (then panics with the logs).
    pub fn wait(&self, what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
        let start = Instant::now();
        while !cond() {
            if start.elapsed() > limit {
                panic!("timed out waiting for {what}\n{}", self.all_logs());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn all_logs(&self) -> String {
        self.names()
            .iter()
            .map(|n| format!("==== {n} ====\n{}", tail(&self.log(n), 60)))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Waits until `name`'s dir holds what the origin publishes: the origin's dir without what
    /// `exclude` names, compared by MD5 fingerprint.
    pub fn wait_same_as_origin(&self, name: &str, exclude: Option<&Rules>, what: &str) {
        let (origin, dir) = (self.dir("origin"), self.dir(name));
        self.wait(what, Duration::from_secs(30), || {
            let want = fingerprint_with(&origin, exclude).map(|m| m.root_digest());
            let got = fingerprint(&dir).map(|m| m.root_digest());
            matches!((want, got), (Ok(a), Ok(b)) if a == b)
        });
    }

    /// Asserts `name`'s dir is identical to the origin's: `diff -r` and MD5 of every file.
    pub fn assert_same_as_origin(&self, name: &str) {
        assert_same_dirs(&self.dir("origin"), &self.dir(name));
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for (_, mut c) in self.procs.drain() {
            let _ = c.kill();
            let _ = c.wait();
        }
        // A panic inside a node (a task that died and was retried around) fails the test,
        // even when the tree converged anyway.
        if !std::thread::panicking() {
            for n in self.names() {
                let log = self.log(&n);
                if let Some(at) = log.find("panicked at") {
                    let what: String = log[at..].chars().take(400).collect();
                    panic!("node {n} panicked: {what}");
                }
            }
        }
    }
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<_> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// `diff -r --no-dereference` plus a full MD5 fingerprint comparison (content, types, modes,
/// mtimes, symlink targets).
pub fn assert_same_dirs(a: &Path, b: &Path) {
    // Trailing slashes: follow `dir` itself when it is a symlink (atomic mode), nothing below.
    let diff = Command::new("diff")
        .args(["-r", "--no-dereference"])
        .arg(format!("{}/", a.display()))
        .arg(format!("{}/", b.display()))
        .output()
        .unwrap();
    assert!(
        diff.status.success(),
        "diff -r {} {}:\n{}",
        a.display(),
        b.display(),
        text(&diff)
    );
    let (fa, fb) = (fingerprint(a).unwrap(), fingerprint(b).unwrap());
    assert_eq!(
        describe(&fa),
        describe(&fb),
        "{} vs {}",
        a.display(),
        b.display()
    );
    assert_eq!(fa.root_digest(), fb.root_digest());
}

fn describe(m: &Manifest) -> Vec<String> {
    m.entries()
        .iter()
        .map(|e| format!("{} {:o} {:?}", e.path, e.mode, e.kind))
        .collect()
}

/// The permission bits of `path` (`0o600` and the like).
pub fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    fs::metadata(path).unwrap().permissions().mode() & 0o777
}

pub fn write(root: &Path, rel: &str, body: &[u8]) {
    let p = root.join(rel);
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(p, body).unwrap();
}
