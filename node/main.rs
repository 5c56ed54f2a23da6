//! The `cascade` command: parses the command line and config, then hands typed values to the
//! library. Errors are printed as one line; nothing here panics on bad input.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use cascade::admin;
use cascade::config::{NodeConfig, Overrides};
use cascade::status::NodeState;
use cascade::wire::{AdminRequest, AdminResponse};
use cascade::RunningNode;
use cascade_certs::Issued;
use cascade_topology::Topology;
use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "cascade",
    version,
    about = "Keep one directory identical on many servers through a tree of QUIC relays"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Work with topology files.
    Topology {
        #[command(subcommand)]
        command: TopologyCommand,
    },
    /// Create the deployment CA and node certificates.
    Certs {
        #[command(subcommand)]
        command: CertsCommand,
    },
    /// Run a node until SIGINT/SIGTERM.
    Node(ConfigArgs),
    /// Ask the running origin to scan its directory and publish a new release.
    Publish {
        #[command(flatten)]
        config: ConfigArgs,
        /// Wait until every node of the topology has applied the release.
        #[arg(long)]
        wait: bool,
        /// With --wait: give up after this many seconds (exit 1, naming the nodes that lag).
        #[arg(long, default_value_t = 300)]
        timeout: u64,
    },
    /// Show a running node's view of itself and its subtree.
    Status(ConfigArgs),
    /// Run a self-contained 7-node tree on 127.0.0.1, publish, change, and verify with MD5.
    Demo {
        /// Keep the demo's files (certs, configs, directories) in DIR.
        #[arg(long, value_name = "DIR")]
        keep: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum TopologyCommand {
    /// Validate a topology file and print the tree with roles and depths.
    Check { file: PathBuf },
}

#[derive(Subcommand)]
enum CertsCommand {
    /// Create DIR/ca.pem and DIR/ca.key.
    Init {
        #[arg(long)]
        dir: PathBuf,
        /// Replace an existing CA.
        #[arg(long)]
        force: bool,
    },
    /// Issue DIR/NAME.pem and DIR/NAME.key for nodes that lack them.
    Issue {
        #[arg(long)]
        dir: PathBuf,
        /// Issue for every node of this topology.
        #[arg(long, conflicts_with = "names")]
        topology: Option<PathBuf>,
        /// Node names to issue for.
        #[arg(required_unless_present = "topology")]
        names: Vec<String>,
        /// Days the certificates are valid.
        #[arg(long, default_value_t = cascade_certs::DEFAULT_DAYS)]
        days: u32,
    },
}

/// `--config FILE` plus a flag per config key.
#[derive(Args)]
struct ConfigArgs {
    /// The node's config file (TOML).
    #[arg(long, short)]
    config: Option<PathBuf>,
    #[arg(long)]
    name: Option<String>,
    #[arg(long)]
    topology: Option<PathBuf>,
    #[arg(long)]
    certs: Option<PathBuf>,
    #[arg(long)]
    dir: Option<PathBuf>,
    #[arg(long)]
    data: Option<PathBuf>,
    /// error, warn, info, debug or trace.
    #[arg(long)]
    log: Option<String>,
    /// in-place (default) or atomic.
    #[arg(long)]
    apply: Option<String>,
    /// With apply = atomic: release directories to keep (default 2).
    #[arg(long, alias = "keep_releases")]
    keep_releases: Option<usize>,
    /// Seconds the parent may be unreachable before a backup parent is used (default 10).
    #[arg(long, alias = "failover_after")]
    failover_after: Option<f64>,
    /// Seconds of silence after which a link is dead (default 15).
    #[arg(long, alias = "link_timeout")]
    link_timeout: Option<f64>,
    /// Cap on what this node sends to its children, e.g. "20MiB/s".
    #[arg(long, alias = "upload_limit")]
    upload_limit: Option<String>,
}

impl ConfigArgs {
    fn load(&self) -> Result<NodeConfig> {
        let flags = Overrides {
            name: self.name.clone(),
            topology: self.topology.clone(),
            certs: self.certs.clone(),
            dir: self.dir.clone(),
            data: self.data.clone(),
            log: self.log.clone(),
            apply: self.apply.clone(),
            keep_releases: self.keep_releases,
            failover_after: self.failover_after,
            link_timeout: self.link_timeout,
            upload_limit: self.upload_limit.clone(),
        };
        Ok(NodeConfig::load(
            self.config.as_deref(),
            std::env::vars(),
            &flags,
        )?)
    }
}

/// How often `publish --wait` repeats a fetching node's progress.
const PROGRESS_EVERY: Duration = Duration::from_secs(2);

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", one_line(&e));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes on one line, skipping causes a message already quotes.
fn one_line(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let msg = cause.to_string();
        if !line.contains(&msg) {
            if !line.is_empty() {
                line.push_str(": ");
            }
            line.push_str(&msg);
        }
    }
    line
}

fn init_logging(level: &str) -> Result<()> {
    let level: tracing::Level = level.parse().map_err(|_| {
        anyhow::anyhow!("invalid log level {level:?} (error, warn, info, debug, trace)")
    })?;
    tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(std::io::stderr)
        // A log on a full disk must not take the node down: tracing reports a failed write
        // with eprintln!, which panics when stderr itself cannot be written.
        .log_internal_errors(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .init();
    Ok(())
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Topology {
            command: TopologyCommand::Check { file },
        } => {
            let t = Topology::load(&file).with_context(|| format!("{}", file.display()))?;
            print!("{}", t.render_tree());
            println!("{}: {} nodes, valid", file.display(), t.nodes().len());
        }
        Command::Certs { command } => certs(command)?,
        Command::Node(args) => {
            let cfg = args.load()?;
            init_logging(&cfg.log)?;
            runtime()?.block_on(run_node(cfg))?;
        }
        Command::Publish {
            config,
            wait,
            timeout,
        } => {
            let cfg = config.load()?;
            return runtime()?.block_on(publish(cfg, wait, Duration::from_secs(timeout)));
        }
        Command::Status(args) => {
            let cfg = args.load()?;
            runtime()?.block_on(status(cfg))?;
        }
        Command::Demo { keep } => {
            init_logging("warn")?;
            let ok = runtime()?.block_on(cascade::demo::run(keep.as_deref()))?;
            return Ok(if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            });
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn certs(command: CertsCommand) -> Result<()> {
    match command {
        CertsCommand::Init { dir, force } => {
            cascade_certs::init_ca(&dir, force)?;
            println!(
                "created CA {}/ca.pem (key ca.key, mode 0600)",
                dir.display()
            );
        }
        CertsCommand::Issue {
            dir,
            topology,
            names,
            days,
        } => {
            let names = match topology {
                Some(t) => Topology::load(&t)?
                    .nodes()
                    .iter()
                    .map(|n| n.name.clone())
                    .collect(),
                None => names,
            };
            for r in cascade_certs::issue_with(&dir, &names, cascade_certs::Validity::days(days))? {
                match r {
                    Issued::Created(n) => {
                        println!("issued {}/{n}.pem (key {n}.key, mode 0600)", dir.display())
                    }
                    Issued::AlreadyPresent(n) => {
                        println!("kept existing {}/{n}.pem", dir.display())
                    }
                }
            }
        }
    }
    Ok(())
}

async fn run_node(cfg: NodeConfig) -> Result<()> {
    let mut node = RunningNode::start(cfg).await?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot install the SIGTERM handler")?;
    let failure = tokio::select! {
        _ = tokio::signal::ctrl_c() => { tracing::info!("SIGINT received, stopping"); None }
        _ = term.recv() => { tracing::info!("SIGTERM received, stopping"); None }
        why = node.failed() => Some(why),
    };
    node.shutdown().await;
    match failure {
        // Exit non-zero so a supervisor (systemd Restart=on-failure) starts a fresh node.
        Some(why) => bail!("node stopped: {why}"),
        None => Ok(()),
    }
}

async fn publish(cfg: NodeConfig, wait: bool, timeout: Duration) -> Result<ExitCode> {
    let started = Instant::now();
    let summary = match admin::request(&cfg.data, &AdminRequest::Publish).await? {
        AdminResponse::Published(s) => s,
        other => bail!("unexpected answer from the node: {other:?}"),
    };
    if summary.changed {
        println!(
            "published release {}: {} files, {} bytes",
            summary.version, summary.files, summary.bytes
        );
    } else {
        println!(
            "nothing changed: release {} is current ({} files, {} bytes)",
            summary.version, summary.files, summary.bytes
        );
    }
    if !wait {
        return Ok(ExitCode::SUCCESS);
    }
    let expected: Vec<String> = Topology::load(&cfg.topology)?
        .nodes()
        .iter()
        .map(|n| n.name.clone())
        .collect();
    let mut last_seen: std::collections::HashMap<String, (_, Instant)> =
        std::collections::HashMap::new();
    loop {
        let nodes = match admin::request(&cfg.data, &AdminRequest::Status).await? {
            AdminResponse::Status { nodes, .. } => nodes,
            other => bail!("unexpected answer from the node: {other:?}"),
        };
        let by_name: std::collections::HashMap<_, _> =
            nodes.iter().map(|s| (s.name.as_str(), s)).collect();
        // A line when a node's release, state or link changes; progress at most every 2 s.
        for s in &nodes {
            let key = (s.applied, std::mem::discriminant(&s.state), s.connected);
            let due = match last_seen.get(&s.name) {
                Some((k, at)) => {
                    *k != key
                        || (matches!(s.state, NodeState::Fetching { .. })
                            && at.elapsed() >= PROGRESS_EVERY)
                }
                None => true,
            };
            if due {
                println!("  {s}");
                last_seen.insert(s.name.clone(), (key, Instant::now()));
            }
        }
        let lagging: Vec<String> = expected
            .iter()
            .filter(|n| {
                by_name
                    .get(n.as_str())
                    .and_then(|s| s.applied)
                    .is_none_or(|v| v < summary.version)
            })
            .cloned()
            .collect();
        if lagging.is_empty() {
            println!(
                "all {} nodes hold release {} ({:.2} s)",
                expected.len(),
                summary.version,
                started.elapsed().as_secs_f64()
            );
            return Ok(ExitCode::SUCCESS);
        }
        if started.elapsed() >= timeout {
            eprintln!(
                "timed out after {} s: {} of {} nodes lack release {}:",
                timeout.as_secs(),
                lagging.len(),
                expected.len(),
                summary.version
            );
            for n in &lagging {
                match by_name.get(n.as_str()) {
                    Some(s) => eprintln!("  {s}"),
                    None => {
                        eprintln!("  {n}: never reported (not connected since the origin started)")
                    }
                }
            }
            return Ok(ExitCode::FAILURE);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn status(cfg: NodeConfig) -> Result<()> {
    match admin::request(&cfg.data, &AdminRequest::Status).await? {
        AdminResponse::Status {
            node,
            release,
            nodes,
        } => {
            match release {
                Some(v) => println!("{node} holds release {v}"),
                None => println!("{node} holds no release yet"),
            }
            for s in nodes {
                println!("  {s}");
            }
        }
        other => bail!("unexpected answer from the node: {other:?}"),
    }
    Ok(())
}
