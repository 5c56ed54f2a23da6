//! Real Cascade nodes for the benchmark: one process per node (this executable started again
//! as `__node CONFIG`), each listening on its own 127.0.0.x address, with a throwaway CA.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use cascade::admin;
use cascade::config::Keys;
use cascade::testkit::Plan;
use cascade::wire::{AdminRequest, AdminResponse};
use cascade::{NodeConfig, RunningNode};

/// Runs one node until killed (the benchmark's child processes).
pub fn node_main(config: &str) -> ExitCode {
    tracing_subscriber::fmt()
        .with_max_level(match std::env::var("BENCH_LOG").as_deref() {
            Ok("info") => tracing::Level::INFO,
            Ok("debug") => tracing::Level::DEBUG,
            _ => tracing::Level::WARN,
        })
        .with_ansi(false)
        .with_writer(std::io::stderr)
        .init();
    // A node whose harness died (killed, or cut off by a shell's time limit) exits too
    // instead of running on as an orphan.
    let parent = std::os::unix::process::parent_id();
    std::thread::spawn(move || loop {
        std::thread::sleep(Duration::from_millis(500));
        if std::os::unix::process::parent_id() != parent {
            std::process::exit(1);
        }
    });
    let run = || -> Result<()> {
        let cfg = NodeConfig::load(Some(Path::new(config)), [], &Default::default())?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?;
        rt.block_on(async {
            let mut node = RunningNode::start(cfg).await?;
            let why = node.failed().await;
            bail!("node stopped: {why}")
        })
    };
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("node {config}: {e:#}");
            ExitCode::FAILURE
        }
    }
}

struct Node {
    name: String,
    config: PathBuf,
    data: PathBuf,
    dir: Option<PathBuf>,
    log: PathBuf,
    /// The network namespace the node runs in, if not this one.
    netns: Option<String>,
    process: Option<Child>,
}

/// A tree of node processes under `base`.
pub struct Cluster {
    nodes: Vec<Node>,
}

/// Time from asking the origin to publish until each target held the release.
pub struct Published {
    pub changed: bool,
    /// Until the origin had scanned and cut the release (the publish call returned).
    pub scan: Duration,
    /// Per target, in the order asked.
    pub reached: Vec<Duration>,
}

impl Cluster {
    /// Writes topology, certificates and configs for `tree` (name, parent) under `base`
    /// (wiped first), each listening node on its own 127.0.0.x address. The origin
    /// publishes `origin_dir`; leaves get their own `dir`; relays have none. Every node's
    /// uploads are capped at `upload_limit` if given.
    pub fn new(
        base: &Path,
        tree: &[(String, Option<String>)],
        origin_dir: &Path,
        upload_limit: Option<&str>,
    ) -> Result<Self> {
        Self::with_origin(base, tree, origin_dir, upload_limit, Keys::default())
    }

    /// [`Cluster::new`] with extra keys for the origin (`watch`, `exclude`...).
    pub fn with_origin(
        base: &Path,
        tree: &[(String, Option<String>)],
        origin_dir: &Path,
        upload_limit: Option<&str>,
        origin: Keys,
    ) -> Result<Self> {
        Self::from_plan(
            base,
            Self::plan(tree, origin_dir, upload_limit).origin_keys(origin),
        )
    }

    /// What [`Cluster::new`] deploys, to be changed before [`Cluster::from_plan`].
    pub fn plan(
        tree: &[(String, Option<String>)],
        origin_dir: &Path,
        upload_limit: Option<&str>,
    ) -> Plan {
        let every_node = Keys {
            log: Some("warn".into()),
            upload_limit: upload_limit.map(str::to_owned),
            ..Keys::default()
        };
        Plan::nodes(tree.to_vec())
            .spread()
            .relays_without_dir()
            .origin_dir(origin_dir)
            .every_node(every_node)
    }

    /// Writes `plan` under `base` (wiped first).
    pub fn from_plan(base: &Path, plan: Plan) -> Result<Self> {
        let _ = fs::remove_dir_all(base);
        let dep = plan.write(base)?;
        let nodes = dep
            .configs
            .iter()
            .map(|cfg| Node {
                name: cfg.name.clone(),
                config: dep.config_file(&cfg.name),
                data: cfg.data.clone(),
                dir: cfg.dir.clone(),
                log: dep.home(&cfg.name).join("node.log"),
                netns: None,
                process: None,
            })
            .collect();
        Ok(Cluster { nodes })
    }

    /// Runs node `name` inside network namespace `ns` (`ip netns exec`).
    pub fn in_netns(mut self, name: &str, ns: &str) -> Self {
        if let Some(n) = self.nodes.iter_mut().find(|n| n.name == name) {
            n.netns = Some(ns.to_owned());
        }
        self
    }

    fn node(&self, name: &str) -> &Node {
        self.nodes
            .iter()
            .find(|n| n.name == name)
            .unwrap_or_else(|| panic!("no node {name} in the bench cluster"))
    }

    pub fn dir(&self, name: &str) -> PathBuf {
        self.node(name).dir.clone().expect("node has a dir")
    }

    /// Starts every node and waits until each is linked to its parent.
    pub async fn start(&mut self) -> Result<()> {
        let exe = std::env::current_exe()?;
        for n in &mut self.nodes {
            let log = fs::File::create(&n.log)?;
            let mut cmd = match &n.netns {
                Some(ns) => {
                    let mut c = Command::new("ip");
                    c.args(["netns", "exec", ns]).arg(&exe);
                    c
                }
                // `BENCH_HEAPTRACK=NODE`: that node runs under heaptrack, which writes
                // `heaptrack.zst` beside its log (what holds its memory at its peak).
                None if std::env::var("BENCH_HEAPTRACK").as_deref() == Ok(n.name.as_str()) => {
                    let mut c = Command::new("heaptrack");
                    c.arg("-o").arg(n.log.with_file_name("heaptrack")).arg(&exe);
                    c
                }
                None => Command::new(&exe),
            };
            // As the systemd unit runs a node (examples/deploy/cascade-node.service).
            cmd.env("MALLOC_ARENA_MAX", malloc_arenas());
            n.process = Some(
                cmd.arg("__node")
                    .arg(&n.config)
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(log)
                    .spawn()
                    .context("cannot start a node process")?,
            );
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        for n in &self.nodes {
            loop {
                if let Ok(AdminResponse::Status { node, nodes, .. }) =
                    admin::request(&n.data, &AdminRequest::Status).await
                {
                    if nodes.iter().any(|s| s.name == node && s.connected) {
                        break;
                    }
                }
                if Instant::now() > deadline {
                    bail!(
                        "node {} did not come up: {}",
                        n.name,
                        fs::read_to_string(&n.log).unwrap_or_default()
                    );
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        Ok(())
    }

    /// The version of the release `name` holds.
    async fn held(&self, name: &str) -> Option<u64> {
        match admin::request(&self.node(name).data, &AdminRequest::Status).await {
            Ok(AdminResponse::Status { release, .. }) => release,
            _ => None,
        }
    }

    /// Publishes on the origin and waits until every target holds the release.
    pub async fn publish(&self, targets: &[&str]) -> Result<Published> {
        let origin = &self.nodes[0];
        // What earlier runs (and writing the source) left unflushed is not this run's to
        // write back: a node's flush covers its whole filesystem.
        rustix::fs::sync();
        let started = Instant::now();
        let summary = match admin::request(&origin.data, &AdminRequest::Publish).await? {
            AdminResponse::Published(s) => s,
            other => bail!("unexpected answer to publish: {other:?}"),
        };
        let scan = started.elapsed();
        let mut reached: Vec<Option<Duration>> = vec![None; targets.len()];
        while reached.iter().any(Option::is_none) {
            for (i, t) in targets.iter().enumerate() {
                if reached[i].is_none() && self.held(t).await >= Some(summary.version) {
                    reached[i] = Some(started.elapsed());
                }
            }
            if started.elapsed() > Duration::from_secs(1800) {
                bail!("release {} did not reach {targets:?}", summary.version);
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        Ok(Published {
            changed: summary.changed,
            scan,
            reached: reached.into_iter().map(|r| r.expect("all set")).collect(),
        })
    }

    /// Makes `text` the tree's topology (the origin signs it into a new release); returns
    /// that release's version.
    pub async fn apply_topology(&self, text: String) -> Result<u64> {
        match admin::request(&self.nodes[0].data, &AdminRequest::ApplyTopology(text)).await? {
            AdminResponse::Published(s) => Ok(s.version),
            other => bail!("unexpected answer to a topology apply: {other:?}"),
        }
    }

    /// Body bytes `name` has sent to its children.
    pub async fn sent_bytes(&self, name: &str) -> u64 {
        self.own_status(name).await.map_or(0, |s| s.sent_bytes)
    }

    /// Offer bytes (whole manifests or deltas) `name` has sent its children so far.
    pub async fn offered_bytes(&self, name: &str) -> u64 {
        self.own_status(name).await.map_or(0, |s| s.offered_bytes)
    }

    async fn own_status(&self, name: &str) -> Option<cascade::status::NodeStatus> {
        match admin::request(&self.node(name).data, &AdminRequest::Status).await {
            Ok(AdminResponse::Status { node, nodes, .. }) => {
                nodes.into_iter().find(|s| s.name == node)
            }
            _ => None,
        }
    }

    /// Peak resident memory of `name`'s process so far (VmHWM), in bytes.
    pub fn peak_rss(&self, name: &str) -> u64 {
        self.proc_status(name, "VmHWM:")
    }

    /// Resident memory of `name`'s process now (VmRSS), in bytes.
    pub fn rss(&self, name: &str) -> u64 {
        self.proc_status(name, "VmRSS:")
    }

    fn proc_status(&self, name: &str, field: &str) -> u64 {
        let Some(p) = &self.node(name).process else {
            return 0;
        };
        fs::read_to_string(format!("/proc/{}/status", p.id()))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix(field))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            })
            .map_or(0, |kib| kib * 1024)
    }

    /// CPU time `name`'s process has used so far (user + system, all threads).
    pub fn cpu_time(&self, name: &str) -> Duration {
        let Some(p) = &self.node(name).process else {
            return Duration::ZERO;
        };
        // utime and stime, the 14th and 15th fields of /proc/PID/stat.
        stat_time(p.id(), 14)
    }

    /// The version of the release `name` holds (`None` before the first).
    pub async fn holds(&self, name: &str) -> Option<u64> {
        self.held(name).await
    }

    /// The largest peak RSS among nodes whose name starts with `prefix`.
    pub fn peak_rss_of(&self, prefix: &str) -> u64 {
        self.nodes
            .iter()
            .filter(|n| n.name.starts_with(prefix))
            .map(|n| self.peak_rss(&n.name))
            .max()
            .unwrap_or(0)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            if let Some(mut p) = n.process.take() {
                let _ = p.kill();
                let _ = p.wait();
            }
        }
    }
}

/// glibc's malloc arenas for a node process: what the caller's `MALLOC_ARENA_MAX` says, else
/// 1, as in the systemd unit (examples/deploy/cascade-node.service says why).
pub fn malloc_arenas() -> String {
    std::env::var("MALLOC_ARENA_MAX").unwrap_or_else(|_| "1".into())
}

/// The sum of the two clock-tick fields of `/proc/PID/stat` from field `first` (counted from
/// 1: 14 and 15 are the process's own user and system time, 16 and 17 those of the children
/// it has waited for), in ticks of 1/100 s (USER_HZ). Zero if the process is gone.
pub fn stat_time(pid: u32, first: usize) -> Duration {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name, which may hold spaces, in parentheses (field 2).
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<u64> = rest
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    let at = |field: usize| f.get(field - 3).copied().unwrap_or(0);
    Duration::from_millis((at(first) + at(first + 1)) * 10)
}
