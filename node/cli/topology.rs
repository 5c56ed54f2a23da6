//! `cascade topology check FILE`: validate a topology and print its tree;
//! `cascade topology plan FILE`: what would change from the running topology to FILE.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use cascade_topology::Topology;
use clap::Subcommand;

use super::{runtime, Ask};
use crate::admin;
use crate::wire::{AdminRequest, AdminResponse};

#[derive(Subcommand)]
pub enum TopologyCommand {
    /// Validate a topology file and print the tree with roles and depths.
    ///
    /// Example: cascade topology check /etc/cascade/topology.toml
    Check {
        /// The topology file (TOML).
        file: PathBuf,
    },
    /// Print what would change from the running topology (asked of the node given by
    /// --config, usually the origin) or from --from FILE, to FILE: nodes added, removed,
    /// moved, role, listen address and backup parent changes, in words and as a marked tree.
    /// Runs every check `check` runs.
    ///
    /// Example: cascade topology plan new-topology.toml --config /etc/cascade/node.toml
    Plan {
        /// The new topology file (TOML).
        file: PathBuf,
        /// Compare with this topology file instead of asking a running node.
        #[arg(long)]
        from: Option<PathBuf>,
        #[command(flatten)]
        node: Ask,
    },
    /// Make FILE the tree's topology without restarting any node: the origin (given by
    /// --config) checks it as `plan` does, and signs it into a new release that every node
    /// takes from its parent; moved nodes dial their new parent, relays take new children and
    /// drop removed ones, removed nodes stop syncing. With --wait, report each node as it runs
    /// under the new topology.
    ///
    /// Example: cascade topology apply new-topology.toml --config /etc/cascade/node.toml --wait
    Apply {
        /// The new topology file (TOML).
        file: PathBuf,
        #[command(flatten)]
        node: Ask,
        /// Wait until every node of the new topology runs under it.
        #[arg(long)]
        wait: bool,
        /// With --wait: give up after this many seconds (exit 1, naming the nodes that lag).
        #[arg(long, default_value_t = 300)]
        timeout: u64,
    },
}

pub fn run(command: TopologyCommand) -> Result<ExitCode> {
    match command {
        TopologyCommand::Apply {
            file,
            node,
            wait,
            timeout,
        } => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("cannot read {}", file.display()))?;
            load(&file)?;
            let (data, _) = node.resolve()?;
            return runtime()?.block_on(super::publish::publish(
                &data,
                AdminRequest::ApplyTopology(text),
                wait,
                std::time::Duration::from_secs(timeout),
            ));
        }
        TopologyCommand::Check { file } => {
            let t = load(&file)?;
            print!("{}", t.render_tree());
            println!("{}: {} nodes, valid", file.display(), t.nodes().len());
        }
        TopologyCommand::Plan { file, from, node } => {
            let new = load(&file)?;
            let (old, what) = match from {
                Some(f) => (load(&f)?, f.display().to_string()),
                None => {
                    let (data, name) = node.resolve()?;
                    let name = name.unwrap_or_else(|| data.display().to_string());
                    let answer =
                        runtime()?.block_on(admin::request(&data, &AdminRequest::Topology))?;
                    let AdminResponse::Topology(text) = answer else {
                        bail!("unexpected answer from the node: {answer:?}");
                    };
                    let t = Topology::parse(&text)
                        .with_context(|| format!("the topology {name} runs with"))?;
                    (t, format!("the topology {name} runs with"))
                }
            };
            old.can_change_to(&new)
                .with_context(|| format!("{}", file.display()))?;
            let changes = old.changes_to(&new);
            if changes.is_empty() {
                println!("{}: no change from {what}", file.display());
                return Ok(ExitCode::SUCCESS);
            }
            println!(
                "{}: {} change(s) from {what}:",
                file.display(),
                changes.len()
            );
            for c in &changes {
                println!("  {c}");
            }
            println!();
            print!("{}", old.render_changes_to(&new));
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn load(file: &std::path::Path) -> Result<Topology> {
    Topology::load(file).with_context(|| format!("{}", file.display()))
}
