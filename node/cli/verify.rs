//! `cascade verify [--full]`: ask a running node to check its `dir` against its release and
//! repair what drifted (a file edited or deleted by hand), without a new publish.

use std::process::ExitCode;

use anyhow::{bail, Result};
use clap::Args;

use super::{runtime, Ask};
use crate::admin;
use crate::wire::{AdminRequest, AdminResponse};

#[derive(Args)]
pub struct VerifyArgs {
    #[command(flatten)]
    node: Ask,
    /// Read every file and compare MD5s (default: the node's `verify` setting, quick unless
    /// set to full: size, mtime and mode).
    #[arg(long)]
    full: bool,
}

pub fn run(args: &VerifyArgs) -> Result<ExitCode> {
    let (data, name) = args.node.resolve()?;
    let name = name.unwrap_or_else(|| data.display().to_string());
    let req = AdminRequest::Verify {
        full: args.full.then_some(true),
    };
    let answer = runtime()?.block_on(admin::request(&data, &req))?;
    let AdminResponse::Verified(s) = answer else {
        bail!("unexpected answer from the node: {answer:?}");
    };
    let how = if s.full { "full, MD5" } else { "quick" };
    if s.repaired.is_empty() {
        println!(
            "{}: dir matches release {} ({} files checked, {how})",
            name, s.version, s.checked
        );
    } else {
        println!(
            "{}: repaired {} paths to release {} ({} files checked, {how}; {} bodies fetched from the parent)",
            name,
            s.repaired.len(),
            s.version,
            s.checked,
            s.fetched
        );
        for p in &s.repaired {
            println!("  {p}");
        }
    }
    Ok(ExitCode::SUCCESS)
}
