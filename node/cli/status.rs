//! `cascade status`: a running node's view of itself and its subtree.

use std::process::ExitCode;

use anyhow::{bail, Result};

use super::{runtime, ConfigArgs};
use crate::admin;
use crate::wire::{AdminRequest, AdminResponse};

pub fn run(args: &ConfigArgs) -> Result<ExitCode> {
    let cfg = args.load()?;
    let answer = runtime()?.block_on(admin::request(&cfg.data, &AdminRequest::Status))?;
    let AdminResponse::Status {
        node,
        release,
        nodes,
    } = answer
    else {
        bail!("unexpected answer from the node: {answer:?}");
    };
    match release {
        Some(v) => println!("{node} holds release {v}"),
        None => println!("{node} holds no release yet"),
    }
    for s in nodes {
        println!("  {s}");
    }
    Ok(ExitCode::SUCCESS)
}
