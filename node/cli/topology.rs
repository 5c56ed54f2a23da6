//! `cascade topology check FILE`: validate a topology and print its tree.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use cascade_topology::Topology;
use clap::Subcommand;

#[derive(Subcommand)]
pub enum TopologyCommand {
    /// Validate a topology file and print the tree with roles and depths.
    Check { file: PathBuf },
}

pub fn run(command: TopologyCommand) -> Result<ExitCode> {
    let TopologyCommand::Check { file } = command;
    let t = Topology::load(&file).with_context(|| format!("{}", file.display()))?;
    print!("{}", t.render_tree());
    println!("{}: {} nodes, valid", file.display(), t.nodes().len());
    Ok(ExitCode::SUCCESS)
}
