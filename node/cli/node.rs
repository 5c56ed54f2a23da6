//! `cascade node`: run a node until SIGINT or SIGTERM.

use std::process::ExitCode;

use anyhow::{bail, Context, Result};

use super::{init_logging, runtime, ConfigArgs};
use crate::config::NodeConfig;
use crate::daemon::RunningNode;

pub fn run(args: &ConfigArgs) -> Result<ExitCode> {
    let cfg = args.load()?;
    init_logging(&cfg.log)?;
    runtime()?.block_on(run_node(cfg))?;
    Ok(ExitCode::SUCCESS)
}

async fn run_node(cfg: NodeConfig) -> Result<()> {
    let mut node = RunningNode::start(cfg).await?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot install the SIGTERM handler")?;
    let (failure, why) = tokio::select! {
        _ = tokio::signal::ctrl_c() => (None, "SIGINT"),
        _ = term.recv() => (None, "SIGTERM"),
        why = node.failed() => (Some(why), "failure"),
    };
    node.shutdown_because(why).await;
    match failure {
        // Exit non-zero so a supervisor (systemd Restart=on-failure) starts a fresh node.
        Some(why) => bail!("node stopped: {why}"),
        None => Ok(()),
    }
}
