//! Cascade against rsync and against itself, on real nodes over real QUIC.
//!
//! ```text
//! cargo run --release --example bench -- [--runs N] [--base DIR] [--smoke] [WORKLOAD...]
//! ```
//! Workloads (all by default): `big` (one 1 GiB file, one hop, vs rsync), `small` (100,000
//! files of 4 KiB in 1,000 directories: first sync, nothing changed, one changed, ten deleted,
//! vs rsync), `fanout` (one file to 1, 4, 16 and 32 leaves with every uplink capped: a 3-level
//! tree, every leaf under the origin, and an rsync loop), `depth` (1 GiB to a leaf 1, 2 and 3
//! hops down), `rss` (a relay forwarding 1 GiB to 4 leaves), `watch` (a watched origin: a
//! closed file to the deepest leaf of origin → relay → leaf, p50/p99 over 100 single-file
//! changes; and CPU and memory at rest with 100,000 watched files), `topology` (leaves moved
//! between relays of a running 20-node tree), `docs` (a real site, Rust's HTML docs 1.95,
//! upgraded to nightly's, origin → relay → leaf and origin → leaf against one rsync hop, with
//! the CPU time of each side), `wan` (that site's
//! first sync over a link capped with `tc tbf` in a network namespace, per `compress` setting,
//! against `rsync -a` and `-az`; needs root) and, opt-in, `million` (a million small files:
//! RSS, a nothing-changed publish, offer bytes per hop for a one-file change), and `md5` (the
//! MD5s of that site's bodies, in memory, one at a time against several side by side, as the
//! scan and a batch of fetched bodies compute them). Each prints a
//! markdown table with medians of `--runs` runs (3 by default) and the peak RSS of the nodes.
//!
//! Nodes are separate processes (this executable started as `__node CONFIG`) on 127.0.0.x.
//! Everything lives under `--base` (default `/dev/shm/cascade-bench`, a tmpfs, so that a
//! shared disk does not decide the result; pass a directory on disk to include it). rsync is
//! installed with apt-get if missing. `--smoke` runs every workload at a tiny size, once
//! (what CI runs: seconds, no thresholds).

mod cluster;
mod rsync;
mod wan;

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use cascade::config::CompressKind;
use cascade::dir::fingerprint;
use cascade::testkit::noise;

use cluster::Cluster;

const MIB: u64 = 1024 * 1024;

struct Opts {
    runs: usize,
    base: PathBuf,
    workloads: Vec<String>,
    big: u64,
    small_files: usize,
    small_dirs: usize,
    fanout_bytes: u64,
    fanout_leaves: Vec<usize>,
    /// MiB/s per node in the fan-out workload.
    cap_mib: u64,
    rss_bytes: u64,
    /// GiB of `base` to write once and delete before measuring (see [`warm_up`]).
    warm_gib: u64,
    /// Single-file changes timed through a watched origin.
    watch_changes: usize,
    /// Files a watched origin holds at rest.
    watch_files: usize,
    /// Seconds the watched origin is left at rest while its CPU time is counted.
    idle_secs: u64,
    /// Leave the last cluster of each workload (configs, logs, data) under `base`.
    keep: bool,
    /// The real site of the `docs` and `wan` workloads, and the one it is upgraded to.
    docs_from: PathBuf,
    docs_to: PathBuf,
    /// Generate small sites instead of reading `docs_from` and `docs_to` (smoke runs).
    docs_generated: bool,
    /// The `wan` workload's cap, in Mbit/s each way.
    wan_mbit: u64,
    /// Files of the `million` workload.
    million_files: usize,
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let [mode, config] = args.as_slice() {
        if mode == "__node" {
            return cluster::node_main(config);
        }
    }
    match parse(args).and_then(run) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn parse(args: Vec<String>) -> Result<Opts> {
    let shm = Path::new("/dev/shm");
    let mut o = Opts {
        runs: 3,
        base: if shm.is_dir() {
            shm.join("cascade-bench")
        } else {
            std::env::temp_dir().join("cascade-bench")
        },
        workloads: Vec::new(),
        big: 1024 * MIB,
        small_files: 100_000,
        small_dirs: 1000,
        fanout_bytes: 128 * MIB,
        fanout_leaves: vec![1, 4, 16, 32],
        cap_mib: 50,
        rss_bytes: 1024 * MIB,
        keep: false,
        warm_gib: 12,
        watch_changes: 100,
        watch_files: 100_000,
        idle_secs: 30,
        docs_from: rust_docs("1.95.0"),
        docs_to: rust_docs("nightly"),
        docs_generated: false,
        wan_mbit: 100,
        million_files: 1_000_000,
    };
    let mut it = args.into_iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--runs" => o.runs = it.next().context("--runs N")?.parse()?,
            "--base" => o.base = it.next().context("--base DIR")?.into(),
            "--fanout-mib" => {
                o.fanout_bytes = it.next().context("--fanout-mib N")?.parse::<u64>()? * MIB
            }
            "--cap-mib" => o.cap_mib = it.next().context("--cap-mib N")?.parse()?,
            "--keep" => o.keep = true,
            "--warm-gib" => o.warm_gib = it.next().context("--warm-gib N")?.parse()?,
            "--smoke" => {
                o.runs = 1;
                o.big = 12 * MIB;
                o.small_files = 300;
                o.small_dirs = 10;
                o.fanout_bytes = 6 * MIB;
                o.fanout_leaves = vec![1, 3];
                o.cap_mib = 20;
                o.rss_bytes = 12 * MIB;
                o.warm_gib = 0;
                o.watch_changes = 5;
                o.watch_files = 2000;
                o.idle_secs = 2;
                o.docs_generated = true;
                o.million_files = 3000;
                o.base = o.base.with_file_name("cascade-bench-smoke");
            }
            "--watch-changes" => {
                o.watch_changes = it.next().context("--watch-changes N")?.parse()?
            }
            "--docs-from" => o.docs_from = it.next().context("--docs-from DIR")?.into(),
            "--docs-to" => o.docs_to = it.next().context("--docs-to DIR")?.into(),
            "--wan-mbit" => o.wan_mbit = it.next().context("--wan-mbit N")?.parse()?,
            "--million-files" => {
                o.million_files = it.next().context("--million-files N")?.parse()?
            }
            "big" | "small" | "fanout" | "depth" | "rss" | "watch" | "topology" | "docs"
            | "wan" | "million" | "md5" => o.workloads.push(a),
            "-h" | "--help" => {
                println!("usage: bench [--runs N] [--base DIR] [--smoke] [--keep] [--warm-gib N] [--fanout-mib N] [--cap-mib N] [--watch-changes N] [--docs-from DIR] [--docs-to DIR] [--wan-mbit N] [--million-files N] [big|small|fanout|depth|rss|watch|topology|docs|wan|million|md5]...\n(million is opt-in: not run by default)");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?} (try --help)"),
        }
    }
    if o.workloads.is_empty() {
        o.workloads = [
            "big", "small", "fanout", "depth", "rss", "watch", "topology", "docs", "wan", "md5",
        ]
        .map(String::from)
        .to_vec();
        if o.docs_generated {
            // A smoke run covers the opt-in workload too, at its tiny size.
            o.workloads.push("million".into());
        }
    }
    Ok(o)
}

fn run(o: Opts) -> Result<()> {
    rsync::ensure_installed()?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    fs::create_dir_all(&o.base)?;
    warm_up(&o.base, o.warm_gib)?;
    println!(
        "Cascade benchmark: {} core(s), base {}, {}, {} run(s) per figure (medians), nodes with MALLOC_ARENA_MAX={}\n",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        o.base.display(),
        rsync::version(),
        o.runs,
        cluster::malloc_arenas()
    );
    for w in &o.workloads {
        let base = o.base.join(w);
        let _ = fs::remove_dir_all(&base);
        match w.as_str() {
            "big" => rt.block_on(big(&o, &base))?,
            "small" => rt.block_on(small(&o, &base))?,
            "fanout" => rt.block_on(fanout(&o, &base))?,
            "depth" => rt.block_on(depth(&o, &base))?,
            "rss" => rt.block_on(rss(&o, &base))?,
            "watch" => rt.block_on(watch(&o, &base))?,
            "topology" => rt.block_on(topology(&o, &base))?,
            "docs" => rt.block_on(docs(&o, &base))?,
            "wan" => rt.block_on(wan(&o, &base))?,
            "million" => rt.block_on(million(&o, &base))?,
            "md5" => md5(&o, &base)?,
            _ => unreachable!("checked when parsing"),
        }
        if !o.keep {
            let _ = fs::remove_dir_all(&base);
        }
    }
    if !o.keep {
        let _ = fs::remove_dir_all(&o.base);
    }
    Ok(())
}

/// Writes `gib` GiB under `base` and deletes it. On a virtual machine whose memory the host
/// backs lazily, the first write to a page of RAM is several times slower than later ones
/// (1 GiB into tmpfs: ~5 s the first time, ~0.7 s after); without this, whichever tool runs
/// first on fresh memory pays for it. A real server's memory is backed already.
fn warm_up(base: &Path, gib: u64) -> Result<()> {
    if gib == 0 {
        return Ok(());
    }
    eprintln!(
        "bench: warming up {gib} GiB of memory under {}",
        base.display()
    );
    let path = base.join("warm-up");
    let block = vec![0x5a_u8; 64 * MIB as usize];
    let mut f = fs::File::create(&path)?;
    for _ in 0..gib * 16 {
        if let Err(e) = f.write_all(&block) {
            eprintln!("bench: warm-up stopped early: {e}");
            break;
        }
    }
    drop(f);
    fs::remove_file(&path)?;
    Ok(())
}

/// `(name, parent)` pairs: the origin, then each node under its parent.
type Tree = Vec<(String, Option<String>)>;

fn chain(hops: usize) -> Tree {
    let mut t: Tree = vec![("origin".into(), None)];
    for h in 1..hops {
        t.push((format!("relay-{h}"), Some(t[h - 1].0.clone())));
    }
    t.push(("leaf".into(), Some(t[hops - 1].0.clone())));
    t
}

/// Origin → `relays` relays → `leaves` leaves spread evenly (none: leaves under the origin).
fn tree(relays: usize, leaves: usize) -> Tree {
    let mut t: Tree = vec![("origin".into(), None)];
    for r in 0..relays {
        t.push((format!("relay-{r}"), Some("origin".into())));
    }
    for l in 0..leaves {
        let parent = if relays == 0 {
            "origin".to_owned()
        } else {
            format!("relay-{}", l % relays)
        };
        t.push((format!("leaf-{l}"), Some(parent)));
    }
    t
}

fn leaves(t: &Tree) -> Vec<&str> {
    t.iter()
        .filter(|(n, _)| !t.iter().any(|(_, p)| p.as_deref() == Some(n)))
        .map(|(n, _)| n.as_str())
        .collect()
}

/// Writes `size` bytes of incompressible data (different for each `seed`).
fn write_noise(path: &Path, size: u64, seed: u64) -> Result<()> {
    fs::create_dir_all(path.parent().expect("a file path"))?;
    let mut f = std::io::BufWriter::new(fs::File::create(path)?);
    let mut left = size;
    let mut block = 0;
    while left > 0 {
        let n = left.min(16 * MIB);
        f.write_all(&noise(n as usize, seed * 100_003 + block))?;
        left -= n;
        block += 1;
    }
    f.flush()?;
    Ok(())
}

/// The peak RSS line of an origin → relay-1 → leaf chain.
fn chain_rss(c: &Cluster) -> String {
    format!(
        "\nPeak RSS: origin {}, relay {}, leaf {}.\n",
        mib(c.peak_rss("origin")),
        mib(c.peak_rss("relay-1")),
        mib(c.peak_rss("leaf"))
    )
}

/// Writes `n` small pages under `dir`, `per_dir` to a directory (`d00000/f0.html`...).
fn write_pages(dir: &Path, n: usize, per_dir: usize) -> Result<()> {
    for f in 0..n {
        let d = dir.join(format!("d{:05}", f / per_dir));
        if f % per_dir == 0 {
            fs::create_dir_all(&d)?;
        }
        fs::write(d.join(format!("f{f}.html")), format!("page {f}\n"))?;
    }
    Ok(())
}

/// Rewrites `path` with `body` and dates it 2 s after it was: an edit a while after the last
/// sync, as in real life (rsync's quick check, size and mtime in whole seconds, misses a
/// same-size edit within the second of the previous sync, which a fast run can hit).
fn edit_later(path: &Path, body: &[u8]) -> Result<()> {
    let before = fs::metadata(path)?.modified()?;
    fs::write(path, body)?;
    fs::File::options()
        .write(true)
        .open(path)?
        .set_modified(before + Duration::from_secs(2))?;
    Ok(())
}

/// Fails unless `dir` holds exactly what `origin` holds (content, modes, mtimes).
fn check_same(origin: &Path, dir: &Path) -> Result<()> {
    let (a, b) = (fingerprint(origin)?, fingerprint(dir)?);
    if a.root_digest() != b.root_digest() {
        bail!("{} differs from {}", dir.display(), origin.display());
    }
    Ok(())
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

fn mbps(bytes: u64, d: Duration) -> String {
    format!("{:.0} MB/s", bytes as f64 / 1e6 / d.as_secs_f64())
}

fn mib(bytes: u64) -> String {
    format!("{:.0} MiB", bytes as f64 / MIB as f64)
}

fn ratio(a: Duration, b: Duration) -> String {
    format!("{:.2}×", a.as_secs_f64() / b.as_secs_f64())
}

/// Workload 1: one large file, origin → one leaf, against the rsync daemon.
async fn big(o: &Opts, base: &Path) -> Result<()> {
    let src = base.join("src");
    fs::create_dir_all(&src)?;
    let t = chain(1);
    let mut c = Cluster::new(&base.join("cascade"), &t, &src, None)?;
    c.start().await?;
    let daemon = rsync::Daemon::start(&base.join("rsyncd"), &src)?;
    let (mut total, mut transfer, mut plain, mut md5, mut synced) =
        (vec![], vec![], vec![], vec![], vec![]);
    // CPU time of the origin and the leaf, and of rsync md5's sender and client (last run).
    let (mut cpu, mut rs_cpu) = ([Duration::ZERO; 2], rsync::Cpu::default());
    for run in 0..o.runs {
        write_noise(&src.join("big.bin"), o.big, run as u64 + 1)?;
        let before = ["origin", "leaf"].map(|n| c.cpu_time(n));
        let p = c.publish(&["leaf"]).await?;
        cpu = [0, 1].map(|k| c.cpu_time(["origin", "leaf"][k]) - before[k]);
        total.push(p.reached[0]);
        transfer.push(p.reached[0] - p.scan);
        plain.push(daemon.pull(&rsync::fresh(&base.join("r1"))?, &[])?);
        let (t, used) =
            daemon.pull_timed(&rsync::fresh(&base.join("r2"))?, &["--checksum-choice=md5"])?;
        md5.push(t);
        rs_cpu = used;
        // Flushed to disk before it ends, as every Cascade node flushes what it stores.
        synced.push(daemon.pull(
            &rsync::fresh(&base.join("r3"))?,
            &["--checksum-choice=md5", "--fsync"],
        )?);
    }
    check_same(&src, &c.dir("leaf"))?;
    check_same(&src, &base.join("r2"))?;
    let (total, transfer, plain, md5, synced) = (
        median(total),
        median(transfer),
        median(plain),
        median(md5),
        median(synced),
    );
    println!("## 1. One {} file, origin → one leaf\n", mib(o.big));
    println!("| | time | throughput | rsync md5 time ÷ this |\n|---|---|---|---|");
    for (what, d) in [
        ("Cascade, publish → leaf holds it (scan included)", total),
        (
            "Cascade, transfer only (scan done → leaf holds it)",
            transfer,
        ),
        ("rsync daemon, default (xxh128)", plain),
        ("rsync daemon, `--checksum-choice=md5`", md5),
        ("rsync daemon, `--checksum-choice=md5 --fsync`", synced),
    ] {
        println!(
            "| {what} | {} | {} | {} |",
            secs(d),
            mbps(o.big, d),
            ratio(md5, d)
        );
    }
    println!(
        "\nCPU time (last run): Cascade's origin {} and leaf {} (publish → leaf), rsync md5's sender {} and client {}: {} of rsync's.\n",
        secs(cpu[0]),
        secs(cpu[1]),
        secs(rs_cpu.sender),
        secs(rs_cpu.client),
        ratio(cpu[0] + cpu[1], rs_cpu.sender + rs_cpu.client),
    );
    println!(
        "Peak RSS: origin {}, leaf {}.\n",
        mib(c.peak_rss("origin")),
        mib(c.peak_rss("leaf"))
    );
    Ok(())
}

/// Workload 2: many small files through origin → relay → leaf, against rsync.
async fn small(o: &Opts, base: &Path) -> Result<()> {
    let src = base.join("src");
    let per_dir = o.small_files / o.small_dirs;
    for d in 0..o.small_dirs {
        let dir = src.join(format!("d{d:04}"));
        fs::create_dir_all(&dir)?;
        for f in 0..per_dir {
            fs::write(
                dir.join(format!("f{f:03}.bin")),
                noise(4096, 2 * (d * per_dir + f) as u64),
            )?;
        }
    }
    let t = chain(2);
    let steps = [
        "first sync",
        "nothing changed",
        "one file changed",
        "ten files deleted",
    ];
    let mut times: Vec<[Vec<Duration>; 3]> = steps.iter().map(|_| Default::default()).collect();
    // Offer bytes the origin and the relay sent for each step (last run).
    let mut offers = vec![(0, 0); steps.len()];
    let mut rss = String::new();
    let mut hop: (Vec<Duration>, Vec<Duration>) = Default::default();
    // CPU time the origin and the leaf used for the one-hop first sync (last run).
    let mut hop_cpu = [Duration::ZERO; 2];
    for run in 0..o.runs {
        let mut c = Cluster::new(&base.join("cascade"), &t, &src, None)?;
        c.start().await?;
        let daemon = rsync::Daemon::start(&base.join("rsyncd"), &src)?;
        let dest = rsync::fresh(&base.join("rsync-dest"))?;
        for (i, _) in steps.iter().enumerate() {
            let delete: &[&str] = match i {
                2 => {
                    let f = src.join(format!("d{:04}/f000.bin", (run * 7) % o.small_dirs));
                    edit_later(&f, &noise(4096, 2 * (1_000_000 + run as u64)))?;
                    &[]
                }
                3 => {
                    for k in 0..10 {
                        let d = (run * 10 + k) % o.small_dirs;
                        let _ =
                            fs::remove_file(src.join(format!("d{d:04}/f{:03}.bin", per_dir - 1)));
                    }
                    &["--delete"]
                }
                _ => &[],
            };
            let before = (
                c.offered_bytes("origin").await,
                c.offered_bytes("relay-1").await,
            );
            let p = c.publish(&["relay-1", "leaf"]).await?;
            offers[i] = (
                c.offered_bytes("origin").await - before.0,
                c.offered_bytes("relay-1").await - before.1,
            );
            if i == 1 && p.changed {
                bail!("a publish with nothing changed cut a new release");
            }
            times[i][0].push(p.reached[0]);
            times[i][1].push(p.reached[1]);
            times[i][2].push(daemon.pull(&dest, delete)?);
        }
        check_same(&src, &c.dir("leaf"))?;
        check_same(&src, &dest)?;
        rss = chain_rss(&c);
        drop(c);
        // One hop as rsync makes it: the origin straight to a leaf, which writes `dir` (the
        // relay above holds bodies in its store only, and shares the two cores with the leaf
        // fetching from it).
        let mut one = Cluster::new(&base.join("cascade-1"), &chain(1), &src, None)?;
        one.start().await?;
        let before = ["origin", "leaf"].map(|n| one.cpu_time(n));
        hop.0.push(one.publish(&["leaf"]).await?.reached[0]);
        hop_cpu = [0, 1].map(|k| one.cpu_time(["origin", "leaf"][k]) - before[k]);
        check_same(&src, &one.dir("leaf"))?;
        drop(one);
        hop.1
            .push(daemon.pull(&rsync::fresh(&base.join("rsync-dest-1"))?, &[])?);
    }
    println!(
        "## 2. {} files of 4 KiB in {} directories, origin → relay → leaf\n",
        o.small_files, o.small_dirs
    );
    println!("| step | Cascade → relay (1 hop) | Cascade → leaf (2 hops) | rsync `-a` | leaf ÷ rsync | offer bytes origin → relay / relay → leaf |\n|---|---|---|---|---|---|");
    for (i, step) in steps.iter().enumerate() {
        let [relay, leaf, rs] = std::mem::take(&mut times[i]).map(median);
        let rs_name = if i == 3 { " (`--delete`)" } else { "" };
        println!(
            "| {step} | {} | {} | {}{rs_name} | {} | {} / {} |",
            secs(relay),
            secs(leaf),
            secs(rs),
            ratio(leaf, rs),
            offers[i].0,
            offers[i].1
        );
    }
    let (one, rs) = (median(std::mem::take(&mut hop.0)), median(hop.1));
    println!(
        "| first sync, origin → leaf (1 hop) | {} | | {} | {} | CPU origin {} / leaf {} |",
        secs(one),
        secs(rs),
        ratio(one, rs),
        secs(hop_cpu[0]),
        secs(hop_cpu[1])
    );
    println!("\nThe last row is one hop as rsync makes it: a tree of the origin and one leaf, which writes `dir` (the relay above keeps bodies in its store only, and shares the two cores with the leaf fetching from it); the tree as the steps above left it.\n");
    println!("{rss}");
    Ok(())
}

/// Workload 3: one file to many leaves with every node's uploads capped.
async fn fanout(o: &Opts, base: &Path) -> Result<()> {
    let src = base.join("src");
    write_noise(&src.join("data.bin"), o.fanout_bytes, 42)?;
    let cap = format!("{}MiB/s", o.cap_mib);
    let bwlimit = format!("--bwlimit={}", o.cap_mib * 1024);
    println!(
        "## 3. Fan-out: {} to N leaves, every node's uploads capped at {cap}\n",
        mib(o.fanout_bytes)
    );
    println!("One capped hop is the time for one leaf directly under the origin (first row, flat). k is the largest fan-out in the tree; the target is at most 1.3 × k × one hop.\n");
    println!("| leaves | 3-level tree (k) | tree time | ÷ (k × hop) | origin sent | flat (k = N) | flat ÷ (N × hop) | origin sent | rsync loop | rsync ÷ hop | source sent |\n|---|---|---|---|---|---|---|---|---|---|---|");
    let mut hop = None;
    let mut relay_rss = 0;
    for &n in &o.fanout_leaves {
        // Flat: every leaf under the origin.
        let flat = tree(0, n);
        let (flat_time, flat_sent, _) = fan(o, base, &flat, &src, &cap).await?;
        let hop = *hop.get_or_insert(flat_time / n as u32);
        // 3-level: about sqrt(N) relays, each with about sqrt(N) leaves.
        let relays = (n as f64).sqrt().ceil() as usize;
        let t3 = tree(relays, n);
        let k = relays.max(n.div_ceil(relays));
        let (tree_time, tree_sent, rss) = fan(o, base, &t3, &src, &cap).await?;
        relay_rss = relay_rss.max(rss);
        // rsync loop from one source.
        let daemon = rsync::Daemon::start(&base.join("rsyncd"), &src)?;
        let mut loop_time = Duration::ZERO;
        for l in 0..n {
            loop_time += daemon.pull(
                &rsync::fresh(&base.join(format!("rsync-{l}")))?,
                &[&bwlimit],
            )?;
        }
        check_same(&src, &base.join(format!("rsync-{}", n - 1)))?;
        for l in 0..n {
            let _ = fs::remove_dir_all(base.join(format!("rsync-{l}")));
        }
        println!(
            "| {n} | {relays} relays (k = {k}) | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            secs(tree_time),
            ratio(tree_time, hop * k as u32),
            mib(tree_sent),
            secs(flat_time),
            ratio(flat_time, hop * n as u32),
            mib(flat_sent),
            secs(loop_time),
            ratio(loop_time, hop),
            mib(o.fanout_bytes * n as u64),
        );
    }
    println!("\nPeak RSS of a relay: {}.\n", mib(relay_rss));
    Ok(())
}

/// Runs one fan-out shape (median over runs): time until the last leaf holds the file, bytes
/// the origin sent, and the largest relay RSS.
async fn fan(
    o: &Opts,
    base: &Path,
    t: &Tree,
    src: &Path,
    cap: &str,
) -> Result<(Duration, u64, u64)> {
    let targets = leaves(t);
    let mut times = Vec::new();
    let (mut sent, mut rss) = (0, 0);
    for _ in 0..o.runs {
        let mut c = Cluster::new(&base.join("cascade"), t, src, Some(cap))?;
        c.start().await?;
        let p = c.publish(&targets).await?;
        times.push(*p.reached.iter().max().expect("at least one leaf"));
        sent = c.sent_bytes("origin").await;
        rss = rss.max(c.peak_rss_of("relay"));
        check_same(src, &c.dir(targets[targets.len() - 1]))?;
    }
    let _ = fs::remove_dir_all(base.join("cascade"));
    Ok((median(times), sent, rss))
}

/// Workload 4: one large file to a leaf 1, 2 and 3 hops below the origin.
async fn depth(o: &Opts, base: &Path) -> Result<()> {
    let src = base.join("src");
    fs::create_dir_all(&src)?;
    println!(
        "## 4. Depth: one {} file to a leaf 1, 2 and 3 hops down\n",
        mib(o.big)
    );
    println!("| hops | publish → leaf | scan | transfer (scan done → leaf) | transfer ÷ 1 hop | peak RSS origin / relays / leaf |\n|---|---|---|---|---|---|");
    let mut one = None;
    for hops in 1..=3 {
        let t = chain(hops);
        let mut c = Cluster::new(&base.join("cascade"), &t, &src, None)?;
        c.start().await?;
        let (mut total, mut scan, mut transfer) = (vec![], vec![], vec![]);
        for run in 0..o.runs {
            write_noise(&src.join("big.bin"), o.big, 10 * hops as u64 + run as u64)?;
            let p = c.publish(&["leaf"]).await?;
            total.push(p.reached[0]);
            scan.push(p.scan);
            transfer.push(p.reached[0] - p.scan);
        }
        check_same(&src, &c.dir("leaf"))?;
        let transfer = median(transfer);
        let one = *one.get_or_insert(transfer);
        println!(
            "| {hops} | {} | {} | {} | {} | {} / {} / {} |",
            secs(median(total)),
            secs(median(scan)),
            secs(transfer),
            ratio(transfer, one),
            mib(c.peak_rss("origin")),
            if hops > 1 {
                mib(c.peak_rss_of("relay"))
            } else {
                "-".into()
            },
            mib(c.peak_rss("leaf")),
        );
        drop(c);
        let _ = fs::remove_dir_all(base.join("cascade"));
    }
    println!();
    Ok(())
}

/// Workload 5: peak memory of a relay forwarding one large file to 4 leaves.
async fn rss(o: &Opts, base: &Path) -> Result<()> {
    let src = base.join("src");
    write_noise(&src.join("big.bin"), o.rss_bytes, 5)?;
    let t = tree(1, 4);
    let mut c = Cluster::new(&base.join("cascade"), &t, &src, None)?;
    c.start().await?;
    let p = c.publish(&leaves(&t)).await?;
    check_same(&src, &c.dir("leaf-3"))?;
    println!(
        "## 5. Memory: one {} file, origin → relay → 4 leaves\n",
        mib(o.rss_bytes)
    );
    println!("| node | peak RSS |\n|---|---|");
    println!("| origin | {} |", mib(c.peak_rss("origin")));
    println!("| relay | {} |", mib(c.peak_rss("relay-0")));
    println!("| leaves (largest) | {} |", mib(c.peak_rss_of("leaf")));
    println!(
        "\nLast leaf held it {} after publish ({} to scan).\n",
        secs(*p.reached.iter().max().expect("4 leaves")),
        secs(p.scan)
    );
    Ok(())
}

/// Workload 6: a watched origin (`watch = true`, default settle and max delay).
async fn watch(o: &Opts, base: &Path) -> Result<()> {
    let src = base.join("src");
    for d in 0..10 {
        for f in 0..100 {
            fs::create_dir_all(src.join(format!("d{d}")))?;
            fs::write(
                src.join(format!("d{d}/f{f}.html")),
                format!("page {d}/{f}\n"),
            )?;
        }
    }
    let keys = cascade::config::Keys {
        watch: Some(true),
        ..Default::default()
    };
    let settle = Duration::from_secs(1);
    let t = chain(2);
    let mut c = Cluster::with_origin(&base.join("cascade"), &t, &src, None, keys.clone())?;
    c.start().await?;
    wait_for(&c, "leaf", 1).await?;
    let leaf = c.dir("leaf");
    let mut lat = latencies(&src, &leaf, o.watch_changes, 10, 100).await?;
    check_same(&src, &leaf)?;
    lat.sort();
    let pct = |p: f64| lat[((lat.len() as f64 * p).ceil() as usize).clamp(1, lat.len()) - 1];
    println!("## 6. Watched origin (`watch = true`, watch_settle 1 s)\n");
    println!(
        "A file closed on the origin, until the leaf of origin → relay → leaf shows it, over {} single-file changes (target: p50 ≤ settle + 0.5 s = {}).\n",
        lat.len(),
        secs(settle + Duration::from_millis(500))
    );
    println!("| p50 | p99 | max | p50 − settle |\n|---|---|---|---|");
    println!(
        "| {} | {} | {} | {:.0} ms |",
        secs(pct(0.5)),
        secs(pct(0.99)),
        secs(*lat.last().expect("at least one change")),
        (pct(0.5).as_secs_f64() - settle.as_secs_f64()) * 1000.0
    );
    drop(c);

    // At rest: a large tree, watched, nothing changing.
    let big = base.join("big-src");
    let per_dir = 100;
    write_pages(&big, o.watch_files, per_dir)?;
    let mut c = Cluster::with_origin(&base.join("cascade"), &t, &big, None, keys)?;
    let started = std::time::Instant::now();
    c.start().await?;
    wait_for(&c, "leaf", 1).await?;
    let first = started.elapsed();
    let after_start = c.cpu_time("origin");
    tokio::time::sleep(Duration::from_secs(o.idle_secs)).await;
    let idle = c.cpu_time("origin") - after_start;
    println!(
        "\nAt rest with {} files in {} watched directories: start to first release on the leaf {}; then over {} s idle the origin used {} of CPU ({:.2} %); RSS {} (peak {}).\n",
        o.watch_files,
        o.watch_files.div_ceil(per_dir) + 1,
        secs(first),
        o.idle_secs,
        secs(idle),
        idle.as_secs_f64() / o.idle_secs as f64 * 100.0,
        mib(c.rss("origin")),
        mib(c.peak_rss("origin"))
    );
    let n = (o.watch_changes / 5).max(1);
    let mut big_lat = latencies(&big, &c.dir("leaf"), n, o.watch_files / per_dir, per_dir).await?;
    check_same(&big, &c.dir("leaf"))?;
    big_lat.sort();
    println!(
        "In that tree, {n} single-file changes to the leaf: p50 {}, max {}.\n",
        secs(big_lat[big_lat.len() / 2]),
        secs(*big_lat.last().expect("at least one change"))
    );
    Ok(())
}

/// Rewrites `n` files of `src` (laid out as `d{dir}/f{file}.html` by the caller: `dirs`
/// directories of `per_dir` files) one at a time, each timed from its close until `leaf`
/// shows it.
async fn latencies(
    src: &Path,
    leaf: &Path,
    n: usize,
    dirs: usize,
    per_dir: usize,
) -> Result<Vec<Duration>> {
    let mut lat = Vec::new();
    for i in 0..n {
        let rel = existing_file(src, i % dirs, i % per_dir)?;
        let body = format!("change {i}\n");
        fs::write(src.join(&rel), &body)?;
        let t0 = std::time::Instant::now();
        loop {
            if fs::read(leaf.join(&rel)).is_ok_and(|b| b == body.as_bytes()) {
                break;
            }
            if t0.elapsed() > Duration::from_secs(60) {
                bail!("change {i} did not reach the leaf");
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        lat.push(t0.elapsed());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(lat)
}

/// The `k`-th file (in name order) of the `d`-th directory (in name order) under `src`.
fn existing_file(src: &Path, d: usize, k: usize) -> Result<String> {
    let mut dirs: Vec<_> = fs::read_dir(src)?
        .flatten()
        .map(|e| e.file_name())
        .collect();
    dirs.sort();
    let dir = dirs[d % dirs.len()].to_string_lossy().into_owned();
    let mut files: Vec<_> = fs::read_dir(src.join(&dir))?
        .flatten()
        .map(|e| e.file_name())
        .collect();
    files.sort();
    let file = files[k % files.len()].to_string_lossy().into_owned();
    Ok(format!("{dir}/{file}"))
}

/// Workload 7: a topology change on a running tree of 20 nodes (origin, 4 relays, 15 leaves):
/// the leaves of one relay move to another and back, `--runs` times. Measures the time from
/// asking the origin to apply the topology until every node holds the release that carries
/// it (a node runs under a topology from the moment it accepts that release's offer), and
/// the file bytes the origin and relays sent meanwhile (the move needs none).
async fn topology(o: &Opts, base: &Path) -> Result<()> {
    let src = base.join("src");
    fs::create_dir_all(&src)?;
    write_noise(&src.join("big.bin"), o.big.min(64 * MIB), 3)?;
    for i in 0..200 {
        fs::write(src.join(format!("page-{i}.html")), format!("page {i}"))?;
    }
    let t = tree(4, 15);
    let home = base.join("cascade");
    let mut c = Cluster::new(&home, &t, &src, None)?;
    c.start().await?;
    let names: Vec<&str> = t.iter().skip(1).map(|(n, _)| n.as_str()).collect();
    c.publish(&names).await?;
    let first = fs::read_to_string(home.join("topology.toml"))?;
    let movers: Vec<usize> = (0..15).filter(|l| l % 4 == 3).collect();
    let mut moved = first.clone();
    for l in &movers {
        moved = moved.replace(
            &format!("name = \"leaf-{l}\"\nparent = \"relay-3\""),
            &format!("name = \"leaf-{l}\"\nparent = \"relay-0\""),
        );
    }
    if moved == first {
        bail!("the bench topology has no leaves under relay-3");
    }
    let senders: Vec<&str> = t
        .iter()
        .filter(|(n, _)| !n.starts_with("leaf"))
        .map(|(n, _)| n.as_str())
        .collect();
    let mut times = Vec::new();
    let mut bytes = 0;
    for run in 0..o.runs.max(2) {
        let text = if run % 2 == 0 { &moved } else { &first };
        let mut before = 0;
        for s in &senders {
            before += c.sent_bytes(s).await;
        }
        let started = std::time::Instant::now();
        let version = c.apply_topology(text.clone()).await?;
        for n in &names {
            wait_for(&c, n, version).await?;
        }
        times.push(started.elapsed());
        let mut after = 0;
        for s in &senders {
            after += c.sent_bytes(s).await;
        }
        bytes = bytes.max(after - before);
    }
    check_same(&src, &c.dir(&format!("leaf-{}", movers[0])))?;
    println!(
        "## 7. Topology change on a running tree of {} nodes\n",
        t.len()
    );
    println!("| change | apply → every node holds the release carrying it (median of {}) | file bytes sent by origin and relays during a change (most) |\n|---|---|---|", times.len());
    println!(
        "| {} leaves move from relay-3 to relay-0 (and back) | {} | {bytes} |\n",
        movers.len(),
        secs(median(times))
    );
    Ok(())
}

/// Waits until `name` holds release `version` or a later one.
async fn wait_for(c: &Cluster, name: &str, version: u64) -> Result<()> {
    let t0 = std::time::Instant::now();
    while c.holds(name).await < Some(version) {
        if t0.elapsed() > Duration::from_secs(600) {
            bail!("{name} never held release {version}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

/// The HTML docs of a rustup toolchain (`1.95.0`, `nightly`...).
fn rust_docs(toolchain: &str) -> PathBuf {
    let home = std::env::var_os("RUSTUP_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".rustup")))
        .unwrap_or_else(|| "/root/.rustup".into());
    home.join(format!(
        "toolchains/{toolchain}-x86_64-unknown-linux-gnu/share/doc/rust/html"
    ))
}

/// The site of the `docs` and `wan` workloads and the one it is upgraded to, with a line
/// saying what they are: the real trees of `--docs-from` and `--docs-to`, or for a smoke
/// run two small generated ones.
fn sites(o: &Opts, base: &Path) -> Result<(PathBuf, PathBuf, String)> {
    if o.docs_generated {
        let (a, b) = (base.join("site-1"), base.join("site-2"));
        generate_site(&a, 1)?;
        generate_site(&b, 2)?;
        return Ok((a, b, "two generated sites (smoke run)".into()));
    }
    for d in [&o.docs_from, &o.docs_to] {
        if !d.is_dir() {
            bail!(
                "{} is not a directory: the docs and wan workloads read a real site there (Rust's HTML docs: `rustup toolchain install 1.95.0 nightly --component rust-docs`), or pass --docs-from DIR --docs-to DIR",
                d.display()
            );
        }
    }
    let describe = |d: &Path| {
        let (files, bytes) = tree_size(d);
        format!(
            "`{}` ({files} files, {:.0} MB)",
            d.display(),
            bytes as f64 / 1e6
        )
    };
    Ok((
        o.docs_from.clone(),
        o.docs_to.clone(),
        format!(
            "{} upgraded to {}",
            describe(&o.docs_from),
            describe(&o.docs_to)
        ),
    ))
}

/// A small site for smoke runs: pages of text in a few directories; `version` 2 edits a third
/// of them, adds some and deletes some.
fn generate_site(dir: &Path, version: u64) -> Result<()> {
    for i in 0..240u64 {
        if version == 2 && i % 12 == 5 {
            continue;
        }
        let page = dir.join(format!("sec{}/page{i}.html", i % 8));
        fs::create_dir_all(page.parent().expect("a file path"))?;
        let edit = if version == 2 && i % 3 == 0 { 2 } else { 1 };
        let body =
            format!("<p>page {i}, edition {edit}</p>\n").repeat(20 + (i as usize * 37) % 400);
        fs::write(&page, body)?;
    }
    if version == 2 {
        for i in 0..30 {
            fs::write(
                dir.join(format!("sec{}/new{i}.html", i % 8)),
                format!("new {i}\n"),
            )?;
        }
    }
    Ok(())
}

/// Files and bytes under `dir`.
fn tree_size(dir: &Path) -> (u64, u64) {
    let mut out = (0, 0);
    for e in fs::read_dir(dir).into_iter().flatten().flatten() {
        match e.file_type() {
            Ok(t) if t.is_dir() => {
                let (f, b) = tree_size(&e.path());
                out = (out.0 + f, out.1 + b);
            }
            Ok(t) if t.is_file() => {
                out = (out.0 + 1, out.1 + e.metadata().map_or(0, |m| m.len()));
            }
            _ => {}
        }
    }
    out
}

/// Makes `to` an exact copy of `from` (content, modes, times): how the bench stages a site
/// under the origin; not timed.
fn mirror(from: &Path, to: &Path) -> Result<()> {
    fs::create_dir_all(to)?;
    let ok = std::process::Command::new("rsync")
        .args(["-a", "--delete"])
        .arg(format!("{}/", from.display()))
        .arg(format!("{}/", to.display()))
        .status()
        .context("cannot run rsync")?
        .success();
    if !ok {
        bail!("copying {} to {} failed", from.display(), to.display());
    }
    Ok(())
}

/// Workload `md5`: the MD5 of every body of the docs site, read into memory first (no I/O
/// timed), one body at a time ([`Md5::of`]) against the batches a node hashes side by side
/// ([`Md5::of_many`]): the scan's groups of small files, a fetched batch of small bodies.
fn md5(o: &Opts, base: &Path) -> Result<()> {
    use cascade::tree::Md5;
    use std::time::Instant;
    let (site, _, what) = sites(o, base)?;
    let mut bodies = Vec::new();
    let mut dirs = vec![site.clone()];
    while let Some(d) = dirs.pop() {
        for e in fs::read_dir(&d)? {
            let e = e?;
            let t = e.file_type()?;
            if t.is_dir() {
                dirs.push(e.path());
            } else if t.is_file() {
                bodies.push(fs::read(e.path())?);
            }
        }
    }
    let at_most = |max: usize| -> Vec<&[u8]> {
        (bodies.iter())
            .filter(|b| b.len() <= max)
            .map(|b| b.as_slice())
            .collect()
    };
    println!(
        "## MD5 of many bodies, one core\n\nThe bodies of {}.\n",
        what.split(" upgraded").next().unwrap_or(&what)
    );
    println!("| bodies | count | MB | one at a time | side by side, groups of 256 | side by side, batches of 1024 |");
    println!("|---|---|---|---|---|---|");
    for (name, max) in [
        ("at most 256 KiB", 256 << 10),
        ("at most 1 MiB", 1 << 20),
        ("all", usize::MAX),
    ] {
        let set = at_most(max);
        let mb = set.iter().map(|b| b.len()).sum::<usize>() as f64 / 1e6;
        let rate = |f: &dyn Fn() -> Vec<Md5>| {
            let mut best = f64::MAX;
            let mut out = Vec::new();
            for _ in 0..o.runs.max(1) {
                let t = Instant::now();
                out = f();
                best = best.min(t.elapsed().as_secs_f64());
            }
            (format!("{:.0} MB/s", mb / best), out)
        };
        let (one, a) = rate(&|| set.iter().map(|b| Md5::of(b)).collect());
        let (groups, b) = rate(&|| set.chunks(256).flat_map(Md5::of_many).collect());
        let (batches, c) = rate(&|| set.chunks(1024).flat_map(Md5::of_many).collect());
        if a != b || a != c {
            bail!("the MD5s side by side differ from one at a time");
        }
        println!(
            "| {name} | {} | {mb:.0} | {one} | {groups} | {batches} |",
            set.len()
        );
    }
    println!("\n(Best of {} run(s) each.)\n", o.runs.max(1));
    Ok(())
}

/// Workload 8: a real site upgrade through origin → relay → leaf, against one rsync hop.
async fn docs(o: &Opts, base: &Path) -> Result<()> {
    let (from, to, what) = sites(o, base)?;
    let src = base.join("src");
    let steps = ["first sync", "upgrade"];
    // Per step: origin → relay → leaf and its rsync hop, then origin → leaf and its rsync hop.
    let mut two: Vec<[Vec<Duration>; 4]> = steps.iter().map(|_| Default::default()).collect();
    let mut one: Vec<[Vec<Duration>; 3]> = steps.iter().map(|_| Default::default()).collect();
    // CPU time each node, and rsync, used per step (last run).
    let mut cpu = vec![[Duration::ZERO; 3]; steps.len()];
    let mut one_cpu = vec![([Duration::ZERO; 2], rsync::Cpu::default()); steps.len()];
    let mut rss = String::new();
    for _ in 0..o.runs {
        for hops in [2, 1] {
            let _ = fs::remove_dir_all(&src);
            mirror(&from, &src)?;
            let mut c = Cluster::new(&base.join("cascade"), &chain(hops), &src, None)?;
            c.start().await?;
            let names: &[&str] = match hops {
                2 => &["origin", "relay-1", "leaf"],
                _ => &["origin", "leaf"],
            };
            let daemon = rsync::Daemon::start(&base.join("rsyncd"), &src)?;
            let dest = rsync::fresh(&base.join("rsync-dest"))?;
            for (i, _) in steps.iter().enumerate() {
                if i == 1 {
                    mirror(&to, &src)?;
                }
                let before: Vec<_> = names.iter().map(|n| c.cpu_time(n)).collect();
                let p = c.publish(&names[1..]).await?;
                let used: Vec<_> = names
                    .iter()
                    .zip(&before)
                    .map(|(n, b)| c.cpu_time(n) - *b)
                    .collect();
                let (rs, rs_cpu) = daemon.pull_timed(&dest, &["--delete"])?;
                if hops == 2 {
                    cpu[i] = [used[0], used[1], used[2]];
                    two[i][0].push(p.reached[0]);
                    two[i][1].push(p.reached[1]);
                    two[i][2].push(rs);
                    two[i][3].push(p.scan);
                } else {
                    one_cpu[i] = ([used[0], used[1]], rs_cpu);
                    one[i][0].push(p.reached[0]);
                    one[i][1].push(rs);
                    one[i][2].push(p.scan);
                }
            }
            check_same(&src, &c.dir("leaf"))?;
            check_same(&src, &dest)?;
            if hops == 2 {
                rss = chain_rss(&c);
            }
        }
    }
    println!("## 8. A real site upgrade, origin → relay → leaf\n");
    println!("{what}.\n");
    println!("| step | origin's publish (scan) | Cascade → relay (1 hop) | Cascade → leaf (2 hops) | rsync `-a --delete` (1 hop) | leaf ÷ rsync | CPU origin / relay / leaf |\n|---|---|---|---|---|---|---|");
    for (i, step) in steps.iter().enumerate() {
        let [relay, leaf, rs, scan] = std::mem::take(&mut two[i]).map(median);
        println!(
            "| {step} | {} | {} | {} | {} | {} | {} / {} / {} |",
            secs(scan),
            secs(relay),
            secs(leaf),
            secs(rs),
            ratio(leaf, rs),
            secs(cpu[i][0]),
            secs(cpu[i][1]),
            secs(cpu[i][2]),
        );
    }
    println!("{rss}");
    println!("One hop as rsync makes it: the origin straight to a leaf, which writes `dir`. CPU is each side's CPU time for the step: Cascade's origin and leaf, rsync's daemon (the sender) and client.\n");
    println!("| step | origin's publish (scan) | Cascade origin → leaf | rsync `-a --delete` | Cascade ÷ rsync | CPU origin / leaf | rsync CPU sender / client | CPU ÷ rsync's |\n|---|---|---|---|---|---|---|---|");
    for (i, step) in steps.iter().enumerate() {
        let [leaf, rs, scan] = std::mem::take(&mut one[i]).map(median);
        let ([origin, leaf_cpu], r) = one_cpu[i];
        println!(
            "| {step} | {} | {} | {} | {} | {} / {} | {} / {} | {} |",
            secs(scan),
            secs(leaf),
            secs(rs),
            ratio(leaf, rs),
            secs(origin),
            secs(leaf_cpu),
            secs(r.sender),
            secs(r.client),
            ratio(origin + leaf_cpu, r.sender + r.client),
        );
    }
    println!();
    Ok(())
}

/// Workload 9: the site's first sync over a capped link (a network namespace, `tc tbf`),
/// origin → leaf with each `compress` setting, against rsync with and without `-z`.
async fn wan(o: &Opts, base: &Path) -> Result<()> {
    let (from, _, what) = sites(o, base)?;
    let src = base.join("src");
    mirror(&from, &src)?;
    let link = wan::Wan::new(o.wan_mbit)?;
    let far = std::net::SocketAddr::new(wan::FAR.into(), 7710);
    let t = chain(1);
    let mut rows = Vec::new();
    for kind in [CompressKind::Off, CompressKind::Auto, CompressKind::Zstd] {
        let (mut times, mut scans, mut sent) = (Vec::new(), Vec::new(), 0);
        for _ in 0..o.runs {
            let leaf = cascade::config::Keys {
                compress: Some(kind),
                ..Default::default()
            };
            let plan = Cluster::plan(&t, &src, None)
                .listen("origin", far)
                .node_keys("leaf", leaf);
            let mut c =
                Cluster::from_plan(&base.join("cascade"), plan)?.in_netns("origin", wan::NS);
            c.start().await?;
            let p = c.publish(&["leaf"]).await?;
            times.push(p.reached[0]);
            scans.push(p.scan);
            sent = c.sent_bytes("origin").await;
            check_same(&src, &c.dir("leaf"))?;
        }
        let name = format!(
            "Cascade, leaf `compress = \"{}\"`",
            format!("{kind:?}").to_lowercase()
        );
        rows.push((name, median(times), Some(median(scans)), sent));
    }
    let daemon = rsync::Daemon::start_at(&base.join("rsyncd"), &src, wan::FAR, Some(wan::NS))?;
    for (name, extra) in [
        ("rsync daemon `-a`", &[][..]),
        ("rsync daemon `-az`", &["-z"][..]),
    ] {
        let mut times = Vec::new();
        for _ in 0..o.runs {
            let dest = rsync::fresh(&base.join("rsync-dest"))?;
            times.push(daemon.pull(&dest, extra)?);
            check_same(&src, &dest)?;
        }
        rows.push((name.to_owned(), median(times), None, 0));
    }
    drop(daemon);
    drop(link);
    let rsync_z = rows.last().expect("rsync -az ran").1;
    let (_, bytes) = tree_size(&src);
    println!(
        "## 9. First sync over a {} Mbit/s link (network namespace, `tc tbf` each way), one hop\n",
        o.wan_mbit
    );
    println!("{what}: the first site, {:.0} MB.\n", bytes as f64 / 1e6);
    println!("| | time | of which the origin's publish (scan) | ÷ rsync `-az` | body bytes on the link (Cascade) |\n|---|---|---|---|---|");
    for (name, d, scan, sent) in rows {
        let sent = if sent > 0 {
            format!("{:.1} MB", sent as f64 / 1e6)
        } else {
            "-".into()
        };
        let scan = scan.map_or("-".into(), secs);
        println!(
            "| {name} | {} | {scan} | {} | {sent} |",
            secs(d),
            ratio(d, rsync_z)
        );
    }
    println!();
    Ok(())
}

/// Workload 10 (opt-in): a million small files through origin → relay → leaf: each node's
/// peak RSS, a nothing-changed publish on the origin, and the offer bytes each hop sends for
/// a one-file change.
async fn million(o: &Opts, base: &Path) -> Result<()> {
    // The source, the origin's and the relay's stores and the leaf's dir: an inode each per
    // file (tmpfs often has too few: /dev/shm here has 3 million).
    let need = 5 * o.million_files as u64;
    let stat = rustix::fs::statvfs(base.parent().unwrap_or(base))?;
    if stat.f_favail < need {
        bail!(
            "{} has {} free inodes, the million workload needs about {need}: pass --base DIR on a filesystem with more (ext4, e.g. --base /var/tmp/cascade-bench)",
            base.display(),
            stat.f_favail
        );
    }
    let src = base.join("src");
    let per_dir = 100;
    write_pages(&src, o.million_files, per_dir)?;
    let t = chain(2);
    let mut c = Cluster::new(&base.join("cascade"), &t, &src, None)?;
    c.start().await?;
    // Each node's peak so far after each step: where it peaks.
    let peaks = |c: &Cluster| {
        ["origin", "relay-1", "leaf"]
            .map(|n| mib(c.peak_rss(n)))
            .join(" / ")
    };
    let first = c.publish(&["relay-1", "leaf"]).await?;
    let after_first = peaks(&c);
    let nothing = c.publish(&["relay-1", "leaf"]).await?;
    let after_nothing = peaks(&c);
    if nothing.changed {
        bail!("a publish with nothing changed cut a new release");
    }
    edit_later(&src.join("d00000/f0.html"), b"changed\n")?;
    let offered = (
        c.offered_bytes("origin").await,
        c.offered_bytes("relay-1").await,
    );
    let one = c.publish(&["relay-1", "leaf"]).await?;
    let offered = (
        c.offered_bytes("origin").await - offered.0,
        c.offered_bytes("relay-1").await - offered.1,
    );
    check_same(&src, &c.dir("leaf"))?;
    println!(
        "## 10. {} files in {} directories, origin → relay → leaf\n",
        o.million_files,
        o.million_files.div_ceil(per_dir)
    );
    println!("| step | origin's publish (scan + release) | → leaf | offer bytes origin → relay / relay → leaf | peak RSS so far, origin / relay / leaf |\n|---|---|---|---|---|");
    println!(
        "| first sync | {} | {} | - | {after_first} |",
        secs(first.scan),
        secs(first.reached[1])
    );
    println!(
        "| nothing changed | {} | - | 0 | {after_nothing} |",
        secs(nothing.scan)
    );
    println!(
        "| one file changed | {} | {} | {} / {} | {} |",
        secs(one.scan),
        secs(one.reached[1]),
        offered.0,
        offered.1,
        peaks(&c)
    );
    println!("{}", chain_rss(&c));
    Ok(())
}
