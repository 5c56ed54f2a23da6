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
    ///
    /// Every key of the config file can also be given as CASCADE_<KEY> in the environment or
    /// as --<key> here; a flag wins over the environment, which wins over the file.
    #[command(after_help = "\
Examples:
  cascade node --config /etc/cascade/node.toml
  cascade node --config node.toml --log debug
  CASCADE_UPLOAD_LIMIT=20M cascade node --config node.toml

Exit status: 0 after SIGINT or SIGTERM; 1 when the node cannot start (one line names the
file, key or path) or stops on an internal failure; 2 on a usage error.")]
    Node(Box<ConfigArgs>),
    /// Ask the running origin to scan its directory and publish a new release.
    #[command(after_help = "\
Examples:
  cascade publish --config /etc/cascade/node.toml
  cascade publish --config /etc/cascade/node.toml --wait --timeout 120

Exit status: 0 when published (with --wait: every node holds the release); 1 when the
publish failed, a node refused the release, or --timeout passed first; 2 on a usage error.")]
    Publish(publish::PublishArgs),
    /// Show the tree below a running node: each node's state, release, lag and rate.
    Status(status::StatusArgs),
    /// Check a running node's directory against its release and repair what drifted.
    #[command(after_help = "\
Examples:
  cascade verify --config /etc/cascade/node.toml
  cascade verify --data /var/lib/cascade --full")]
    Verify(verify::VerifyArgs),
    /// Run a self-contained 7-node tree on 127.0.0.1, publish, change, and verify with MD5.
    #[command(after_help = "\
Examples:
  cascade demo
  cascade demo --keep /tmp/cascade-demo   # then: cascade node --config /tmp/cascade-demo/origin/node.toml")]
    Demo(demo::DemoArgs),
    /// Print a shell completion script to stdout.
    #[command(after_help = "\
Examples:
  cascade completions bash > /etc/bash_completion.d/cascade
  cascade completions zsh > \"${fpath[1]}/_cascade\"
  cascade completions fish > ~/.config/fish/completions/cascade.fish")]
    Completions {
        /// The shell: bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff) to stdout, or write one per subcommand to a directory.
    #[command(after_help = "\
Examples:
  cascade man | man -l -
  cascade man --dir /usr/local/share/man/man1")]
    Man {
        /// Write cascade.1 and a page per subcommand (cascade-node.1, ...) into DIR.
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
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

/// Which running node a command asks, through its admin socket: by its config file or by
/// its data directory. Nothing else of the config means anything to such a command.
#[derive(Args)]
pub struct Ask {
    /// The node's config file (TOML): its `data` key says where the node's admin socket is.
    #[arg(long, short, value_name = "FILE")]
    config: Option<PathBuf>,
    /// The node's data directory, instead of --config (e.g. /var/lib/cascade).
    #[arg(long, value_name = "DIR", conflicts_with = "config")]
    data: Option<PathBuf>,
}

impl Ask {
    /// The node's data directory, and its name when the config says it.
    fn resolve(&self) -> Result<(PathBuf, Option<String>)> {
        if let Some(d) = &self.data {
            return Ok((d.clone(), None));
        }
        if self.config.is_none() && std::env::var_os(format!("{ENV_PREFIX}DATA")).is_none() {
            anyhow::bail!(
                "which node? give its config file (--config FILE) or its data directory (--data DIR)"
            );
        }
        let cfg = ConfigArgs {
            config: self.config.clone(),
            keys: Keys::default(),
        }
        .load()?;
        Ok((cfg.data, Some(cfg.name)))
    }
}

impl ConfigArgs {
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
        Command::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut cmd, "cascade", &mut std::io::stdout());
            Ok(ExitCode::SUCCESS)
        }
        Command::Man { dir } => man(dir.as_deref()),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", one_line(&e));
            ExitCode::FAILURE
        }
    }
}

/// The manual pages: cascade(1) to stdout, or with `dir`, one page per command and
/// subcommand written there (cascade.1, cascade-node.1, cascade-topology-check.1, ...).
fn man(dir: Option<&std::path::Path>) -> Result<ExitCode> {
    let cmd = <Cli as clap::CommandFactory>::command();
    match dir {
        Some(dir) => {
            fs_err::create_dir_all(dir)?;
            clap_mangen::generate_to(cmd, dir)
                .with_context(|| format!("cannot write manual pages to {}", dir.display()))?;
            println!("wrote the manual pages to {}", dir.display());
        }
        None => {
            let mut out = Vec::new();
            clap_mangen::Man::new(cmd).render(&mut out)?;
            std::io::Write::write_all(&mut std::io::stdout(), &out)?;
        }
    }
    Ok(ExitCode::SUCCESS)
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

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    /// Every subcommand says what it does and shows an example; every flag and argument has
    /// a help text.
    #[test]
    fn every_flag_and_subcommand_explains_itself() {
        fn check(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            let path = format!("{path} {}", cmd.get_name()).trim().to_owned();
            if cmd.get_about().is_none() {
                missing.push(format!("{path}: no about"));
            }
            for a in cmd.get_arguments() {
                let builtin = ["help", "version"].contains(&a.get_id().as_str());
                if !builtin && a.get_help().is_none() && a.get_long_help().is_none() {
                    missing.push(format!("{path} {}: no help", a.get_id()));
                }
            }
            let subs: Vec<_> = cmd
                .get_subcommands()
                .filter(|s| s.get_name() != "help")
                .collect();
            if subs.is_empty() && path != "cascade" {
                let text = format!(
                    "{} {}",
                    cmd.get_long_about()
                        .map(|s| s.to_string())
                        .unwrap_or_default(),
                    cmd.get_after_help()
                        .map(|s| s.to_string())
                        .unwrap_or_default()
                );
                if !text.contains("Example") {
                    missing.push(format!("{path}: no example"));
                }
            }
            for s in subs {
                check(s, &path, missing);
            }
        }
        let mut missing = Vec::new();
        check(&Cli::command(), "", &mut missing);
        assert!(missing.is_empty(), "{missing:#?}");
    }

    /// Commands that only talk to a running node take only what finds it.
    #[test]
    fn status_publish_and_verify_take_no_node_config_flags() {
        for (sub, own) in [
            ("status", &["json", "watch"][..]),
            ("publish", &["wait", "timeout"]),
            ("verify", &["full"]),
        ] {
            let cmd = Cli::command();
            let cmd = cmd.find_subcommand(sub).unwrap();
            let mut flags: Vec<_> = cmd
                .get_arguments()
                .map(|a| a.get_id().as_str().to_owned())
                .filter(|f| f != "help")
                .collect();
            flags.sort();
            let mut want: Vec<_> = ["config", "data"]
                .iter()
                .chain(own)
                .map(|s| s.to_string())
                .collect();
            want.sort();
            assert_eq!(flags, want, "{sub}");
        }
        assert!(Cli::try_parse_from(["cascade", "status", "--upload_limit", "1M"]).is_err());
        assert!(Cli::try_parse_from(["cascade", "node", "--upload_limit", "1M"]).is_ok());
    }
}
