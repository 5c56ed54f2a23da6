//! `cascade demo`: a self-contained run of a real 7-node tree on 127.0.0.1.
//!
//! It makes a throwaway CA, a topology (origin → 2 relays → 2 leaves each), one config file
//! per node (so `--keep DIR` leaves a deployment one can run by hand), sample content; starts
//! the nodes in this process over real QUIC and TLS; publishes; changes, renames and deletes
//! files; publishes again; and checks with MD5 that every node's `dir` equals the origin's.

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use cascade_topology::{Role, Topology};
use clap::Args;

use super::{init_logging, runtime};
use crate::daemon::RunningNode;
use crate::dir::fingerprint;
use crate::status::render::{render, Paint};
use crate::testkit::{deploy, noise, Deployment};

#[derive(Args)]
pub struct DemoArgs {
    /// Keep the demo's files (certs, configs, directories) in DIR.
    #[arg(long, value_name = "DIR")]
    keep: Option<PathBuf>,
}

pub fn run(args: &DemoArgs) -> Result<ExitCode> {
    init_logging("warn")?;
    let ok = runtime()?.block_on(demo(args.keep.as_deref()))?;
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

const RELAYS: usize = 2;
const LEAVES_PER_RELAY: usize = 2;
const BIG_FILE: usize = 4 * 1024 * 1024;

fn write(root: &Path, rel: &str, body: &[u8]) -> Result<()> {
    let p = root.join(rel);
    fs::create_dir_all(p.parent().expect("joined paths have a parent"))?;
    fs::write(&p, body).with_context(|| p.display().to_string())
}

fn sample_site(dir: &Path) -> Result<()> {
    write(dir, "index.html", b"<h1>Cascade demo</h1>\n")?;
    write(dir, "css/site.css", b"body { font-family: sans-serif }\n")?;
    write(dir, "js/app.js", b"console.log('v1');\n")?;
    write(dir, "empty.txt", b"")?;
    write(dir, "docs/guide/deep/nested/page.html", b"<p>deep</p>\n")?;
    write(
        dir,
        "docs/with space/ünïcödé name.txt",
        "grüße\n".as_bytes(),
    )?;
    write(dir, "poc/CVE-2026-0001.yaml", b"id: demo\n")?;
    write(dir, "assets/video.bin", &noise(BIG_FILE, 42))?;
    fs::create_dir_all(dir.join("uploads/empty-dir"))?;
    std::os::unix::fs::symlink("index.html", dir.join("home.html"))?;
    Ok(())
}

fn change_site(dir: &Path) -> Result<()> {
    write(dir, "js/app.js", b"console.log('v2');\n")?;
    fs::rename(
        dir.join("assets/video.bin"),
        dir.join("assets/renamed-video.bin"),
    )?;
    fs::remove_file(dir.join("poc/CVE-2026-0001.yaml"))?;
    write(dir, "poc/CVE-2026-0002.yaml", b"id: demo-2\n")?;
    fs::remove_file(dir.join("empty.txt"))?;
    write(dir, "empty.txt/now-a-directory.txt", b"type change\n")?;
    Ok(())
}

/// Waits until every node of the topology reports `version` applied; returns the time taken.
async fn converge(
    origin: &RunningNode,
    topology: &Topology,
    version: u64,
    limit: Duration,
) -> Result<Duration> {
    let start = Instant::now();
    loop {
        let statuses = origin.statuses();
        let lagging: Vec<_> = topology
            .nodes()
            .iter()
            .filter(|n| {
                !statuses
                    .iter()
                    .any(|s| s.name == n.name && s.applied >= Some(version))
            })
            .map(|n| n.name.clone())
            .collect();
        if lagging.is_empty() {
            return Ok(start.elapsed());
        }
        if start.elapsed() > limit {
            bail!(
                "release {version} did not reach {} within {limit:?}",
                lagging.join(", ")
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Compares every node's `dir` with the origin's by MD5 and BLAKE3; prints one line per node.
fn verify(dep: &Deployment) -> Result<bool> {
    let origin_dir = dep.configs[0].dir.clone().expect("demo nodes have a dir");
    let want = fingerprint(&origin_dir)?;
    let mut ok = true;
    for cfg in &dep.configs[1..] {
        let got = fingerprint(cfg.dir.as_ref().expect("demo nodes have a dir"))?;
        let same = got.root_digest() == want.root_digest();
        let files_ok = want
            .files()
            .all(|(e, ..)| got.get(&e.path).is_some_and(|g| g.kind == e.kind));
        println!(
            "  {:<10} {} ({} files, tree digest {})",
            cfg.name,
            if same && files_ok {
                "identical to origin, MD5 and BLAKE3 verified"
            } else {
                "DIFFERS from origin"
            },
            got.file_count(),
            got.root_digest()
        );
        ok &= same && files_ok;
    }
    Ok(ok)
}

fn traffic(nodes: &[RunningNode]) -> String {
    let statuses = nodes[0].statuses();
    let mut out = String::new();
    for s in statuses {
        let _ = writeln!(
            out,
            "  {:<10} fetched {:>2} bodies, {:>8} bytes; served {:>9} bytes of bodies, {:>7} of offers",
            s.name, s.fetched_files, s.fetched_bytes, s.sent_bytes, s.offered_bytes
        );
    }
    out
}

/// Publishes on the origin (`nodes[0]`), waits until every node holds the release, and
/// says how long each step took (after `lead`).
async fn publish_and_converge(nodes: &[RunningNode], dep: &Deployment, lead: &str) -> Result<()> {
    let t = Instant::now();
    let v = nodes[0].publish().await?;
    let scan = t.elapsed();
    let took = converge(&nodes[0], &dep.topology, v.version, Duration::from_secs(60)).await?;
    println!(
        "{lead}Release {}: {} files, {} bytes (scan {:.0} ms); all {} nodes hold it {:.0} ms after publish",
        v.version,
        v.files,
        v.bytes,
        scan.as_secs_f64() * 1e3,
        nodes.len(),
        took.as_secs_f64() * 1e3
    );
    Ok(())
}

/// Runs the demo; `keep` keeps its files there. Returns whether every check passed.
async fn demo(keep: Option<&Path>) -> Result<bool> {
    let tmp;
    let base = match keep {
        Some(dir) => {
            if dir.exists() && fs::read_dir(dir)?.next().is_some() {
                bail!("{}: --keep needs an empty or new directory", dir.display());
            }
            dir.to_owned()
        }
        None => {
            tmp = tempfile::Builder::new().prefix("cascade-demo-").tempdir()?;
            tmp.path().to_owned()
        }
    };
    let total = Instant::now();
    let dep = deploy(&base, RELAYS, LEAVES_PER_RELAY)?;
    println!("Cascade demo in {}\n\nTopology:", base.display());
    print!("{}", dep.topology.render_tree());

    let origin_dir = dep.configs[0].dir.clone().expect("demo nodes have a dir");
    sample_site(&origin_dir)?;
    let mut nodes = Vec::new();
    for cfg in &dep.configs {
        nodes.push(RunningNode::start(cfg.clone()).await?);
    }
    let mut ok = true;

    publish_and_converge(&nodes, &dep, "\n").await?;
    print!("{}", traffic(&nodes));
    ok &= verify(&dep)?;

    change_site(&origin_dir)?;
    println!("\nChanged js/app.js, renamed assets/video.bin, replaced a PoC file, turned empty.txt into a directory");
    publish_and_converge(&nodes, &dep, "").await?;
    print!("{}", traffic(&nodes));
    let big_resent = nodes[0]
        .statuses()
        .iter()
        .any(|s| s.fetched_bytes >= BIG_FILE as u64);
    if big_resent {
        println!("  FAILED: the renamed {BIG_FILE}-byte file was sent again");
    } else {
        println!(
            "  the renamed {BIG_FILE}-byte file was not sent again (its body, named by its BLAKE3, was already held)"
        );
    }
    ok &= !big_resent;
    ok &= verify(&dep)?;
    println!("\nThe tree as `cascade status` on the origin shows it:");
    print!("{}", render(&nodes[0].tree_view(), Paint(false)));

    // Leaves first, so no node sees its parent vanish.
    for n in nodes.into_iter().rev() {
        n.shutdown().await;
    }
    let leaves = dep
        .topology
        .nodes()
        .iter()
        .filter(|n| n.role == Role::Leaf)
        .count();
    println!(
        "\n{}: {} leaves and {} relays match the origin; demo took {:.2} s",
        if ok { "PASS" } else { "FAIL" },
        leaves,
        RELAYS,
        total.elapsed().as_secs_f64()
    );
    if keep.is_some() {
        println!(
            "Files kept in {}; run a node by hand with `cascade node --config {}/origin/node.toml`",
            base.display(),
            base.display()
        );
    }
    Ok(ok)
}
