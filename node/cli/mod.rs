//! The `cascade` command: one file per subcommand. Each parses its arguments, loads the
//! config through [`crate::config`], and hands typed values to the library. Errors are
//! printed as one line; nothing here panics on bad input.

mod certs;
mod demo;
mod node;
mod publish;
mod status;
mod topology;
mod verify;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};

use crate::config::{Keys, NodeConfig, ENV_PREFIX};

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
        command: topology::TopologyCommand,
    },
    /// Create the deployment CA and node certificates.
    Certs {
        #[command(subcommand)]
        command: certs::CertsCommand,
    },
    /// Run a node until SIGINT/SIGTERM.
    Node(ConfigArgs),
    /// Ask the running origin to scan its directory and publish a new release.
    Publish(publish::PublishArgs),
    /// Show the tree below a running node: each node's state, release, lag and rate.
    Status(status::StatusArgs),
    /// Check a running node's directory against its release and repair what drifted.
    Verify(verify::VerifyArgs),
    /// Run a self-contained 7-node tree on 127.0.0.1, publish, change, and verify with MD5.
    Demo(demo::DemoArgs),
}

/// `--config FILE` plus a flag per config key.
#[derive(Args)]
pub struct ConfigArgs {
    /// The node's config file (TOML).
    #[arg(long, short)]
    config: Option<PathBuf>,
    #[command(flatten)]
    keys: Keys,
}

impl ConfigArgs {
    /// Only a config file (and the environment), no flags.
    fn file(config: Option<PathBuf>) -> Self {
        ConfigArgs {
            config,
            keys: Keys::default(),
        }
    }

    /// The config from the file, the `CASCADE_*` environment and the flags.
    fn load(&self) -> Result<NodeConfig> {
        // The binary reads the environment; the library is handed the pairs.
        let env = std::env::vars_os().filter_map(|(k, v)| {
            let k = k.into_string().ok()?;
            k.starts_with(ENV_PREFIX)
                .then(|| (k, v.to_string_lossy().into_owned()))
        });
        Ok(NodeConfig::load(self.config.as_deref(), env, &self.keys)?)
    }
}

/// Runs the command line; what `main` returns.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Topology { command } => topology::run(command),
        Command::Certs { command } => certs::run(command),
        Command::Node(args) => node::run(&args),
        Command::Publish(args) => publish::run(&args),
        Command::Status(args) => status::run(&args),
        Command::Verify(args) => verify::run(&args),
        Command::Demo(args) => demo::run(&args),
    };
    match result {
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
