//! The baseline: an rsync daemon serving the origin's directory on 127.0.0.1, and the client
//! runs users do today (`rsync -a`, with `--delete`, `--bwlimit`, `--checksum-choice=md5`).

use std::fs;
use std::net::{Ipv4Addr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// Makes sure `rsync` is on the PATH, installing it with apt-get if it is not (and saying so).
pub fn ensure_installed() -> Result<()> {
    if Command::new("rsync").arg("--version").output().is_ok() {
        return Ok(());
    }
    eprintln!(
        "bench: rsync is not installed; installing it with apt-get (needed for the baseline)"
    );
    let ok = Command::new("sh")
        .args([
            "-c",
            "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rsync",
        ])
        .status()
        .is_ok_and(|s| s.success());
    if !ok || Command::new("rsync").arg("--version").output().is_err() {
        bail!("rsync is missing and `apt-get install rsync` failed; install rsync and run again");
    }
    Ok(())
}

/// The installed rsync's first version line.
pub fn version() -> String {
    Command::new("rsync")
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.lines().next().map(str::to_owned))
        .unwrap_or_default()
}

/// An `rsync --daemon` serving one directory read-only as module `src`.
pub struct Daemon {
    process: Child,
    addr: Ipv4Addr,
    port: u16,
}

impl Daemon {
    pub fn start(base: &Path, src: &Path) -> Result<Self> {
        Self::start_at(base, src, Ipv4Addr::LOCALHOST, None)
    }

    /// A daemon listening on `addr`, inside network namespace `netns` if given.
    pub fn start_at(base: &Path, src: &Path, addr: Ipv4Addr, netns: Option<&str>) -> Result<Self> {
        fs::create_dir_all(base)?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let conf = base.join("rsyncd.conf");
        fs::write(
            &conf,
            format!(
                "uid = root\ngid = root\nuse chroot = no\npid file = {}\n[src]\npath = {}\nread only = yes\n",
                base.join("rsyncd.pid").display(),
                src.display()
            ),
        )?;
        let mut cmd = match netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, "rsync"]);
                c
            }
            None => Command::new("rsync"),
        };
        let process = cmd
            .args(["--daemon", "--no-detach"])
            .arg(format!("--address={addr}"))
            .arg(format!("--port={port}"))
            .arg(format!("--config={}", conf.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot start rsync --daemon")?;
        let started = Instant::now();
        while TcpStream::connect((addr, port)).is_err() {
            if started.elapsed() > Duration::from_secs(10) {
                bail!("rsync daemon did not start on port {port}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(Daemon {
            process,
            addr,
            port,
        })
    }

    /// Runs `rsync -a EXTRA rsync://…/src/ DEST/` and returns how long it took.
    pub fn pull(&self, dest: &Path, extra: &[&str]) -> Result<Duration> {
        fs::create_dir_all(dest)?;
        // What earlier runs left unflushed is not this run's to write back.
        rustix::fs::sync();
        let started = Instant::now();
        let out = Command::new("rsync")
            .arg("-a")
            .args(extra)
            .arg(format!("rsync://{}:{}/src/", self.addr, self.port))
            .arg(format!("{}/", dest.display()))
            .output()
            .context("cannot run rsync")?;
        let took = started.elapsed();
        if !out.status.success() {
            bail!("rsync failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(took)
    }

    /// [`Daemon::pull`], and the CPU time rsync used for it: the client's, and the daemon's
    /// (the process it forks per connection, counted once the daemon has reaped it).
    pub fn pull_timed(&self, dest: &Path, extra: &[&str]) -> Result<(Duration, Cpu)> {
        let daemon = self.process.id();
        let before = (children_cpu(std::process::id()), children_cpu(daemon));
        let took = self.pull(dest, extra)?;
        let client = children_cpu(std::process::id()) - before.0;
        // The daemon's side ends just after the client's, and counts once reaped.
        let waiting = Instant::now();
        let children = format!("/proc/{daemon}/task/{daemon}/children");
        while fs::read_to_string(&children).is_ok_and(|c| !c.trim().is_empty())
            && waiting.elapsed() < Duration::from_secs(5)
        {
            std::thread::sleep(Duration::from_millis(5));
        }
        let sender = children_cpu(daemon) - before.1;
        Ok((took, Cpu { sender, client }))
    }
}

/// CPU time rsync used for one pull: the daemon's side (the sender) and the client's.
#[derive(Clone, Copy, Debug, Default)]
pub struct Cpu {
    pub sender: Duration,
    pub client: Duration,
}

/// The CPU time of process `pid`'s children that it has waited for (`cutime` and `cstime`).
fn children_cpu(pid: u32) -> Duration {
    crate::cluster::stat_time(pid, 16)
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

/// A fresh, empty destination directory.
pub fn fresh(dest: &Path) -> Result<PathBuf> {
    let _ = fs::remove_dir_all(dest);
    fs::create_dir_all(dest)?;
    Ok(dest.to_owned())
}
