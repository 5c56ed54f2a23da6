//! `cascade status [--json] [--watch]`: the tree below a running node, as that node sees it.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;

use super::runtime;
use crate::admin;
use crate::status::render::{render, Paint};
use crate::status::view::TreeView;
use crate::wire::{AdminRequest, AdminResponse};

#[derive(Args)]
#[command(after_help = "\
Examples:
  cascade status --config /etc/cascade/origin.toml
  cascade status --data /var/lib/cascade --json | jq '.root.children[].state'
  cascade status --config relay.toml --watch

Asked on the origin, it shows the whole tree; on a relay, its subtree. Each node's state is
one of: in sync, fetching, applying, behind, failing, refused, unreachable, no report.
Exit status: 0 when every node is in sync, fetching or applying; 1 when any is behind,
failing, refused, unreachable or has not reported; 2 on a usage error.")]
pub struct StatusArgs {
    #[command(flatten)]
    node: super::Ask,
    /// Print the view as JSON (one document; with --watch, one per line), for scripts.
    #[arg(long)]
    json: bool,
    /// Redraw every second until interrupted (Ctrl-C).
    #[arg(long)]
    watch: bool,
}

/// How often `--watch` redraws.
const EVERY: Duration = Duration::from_secs(1);

pub fn run(args: &StatusArgs) -> Result<ExitCode> {
    let (data, _) = args.node.resolve()?;
    let rt = runtime()?;
    let mut out = std::io::stdout().lock();
    let terminal = out.is_terminal();
    let paint = Paint(terminal && std::env::var_os("NO_COLOR").is_none());
    loop {
        let answer = rt.block_on(admin::request(&data, &AdminRequest::Tree))?;
        let AdminResponse::Tree(view) = answer else {
            bail!("unexpected answer from the node: {answer:?}");
        };
        let text = if args.json {
            let mut j = serde_json::to_string(&view).context("encoding the view as JSON")?;
            j.push('\n');
            j
        } else {
            render(&view, paint)
        };
        let written = if args.watch && terminal && !args.json {
            // Home and clear, then the new frame: a redraw in place, as `watch` does.
            write!(out, "\x1b[H\x1b[2J{text}")
        } else if args.watch && !args.json {
            writeln!(out, "{text}")
        } else {
            write!(out, "{text}")
        }
        .and_then(|()| out.flush());
        match written {
            // The reader went away (`| head`): that ends the command, as it would `cat`.
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(ExitCode::SUCCESS),
            r => r?,
        }
        if !args.watch {
            return Ok(exit_code(&view));
        }
        std::thread::sleep(EVERY);
    }
}

/// 0 when nothing needs an operator's look, 1 otherwise (documented in the help).
fn exit_code(v: &TreeView) -> ExitCode {
    if v.nodes()
        .iter()
        .any(|n| n.state.is_bad() || n.state == crate::status::view::State::Behind)
    {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
