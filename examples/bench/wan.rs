//! A WAN-like link on one machine: a network namespace joined to this one by a veth pair,
//! both directions capped with `tc tbf`. Nodes and daemons started in the namespace reach
//! the rest only through the cap (this machine has no `tc netem`, so the link has no added
//! delay: the cap is the whole difference).

use std::net::Ipv4Addr;
use std::process::Command;

use anyhow::{bail, Context, Result};

/// The namespace's name.
pub const NS: &str = "cascade-wan";
/// This side's address on the link.
pub const NEAR: Ipv4Addr = Ipv4Addr::new(10, 203, 0, 1);
/// The namespace's address.
pub const FAR: Ipv4Addr = Ipv4Addr::new(10, 203, 0, 2);

/// The namespace and its link, removed on drop.
pub struct Wan;

fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .with_context(|| format!("cannot run {}", args[0]))?;
    if !out.status.success() {
        bail!(
            "`{}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

impl Wan {
    /// Creates the namespace with its link capped at `mbit` Mbit/s each way (needs root and
    /// `ip`/`tc`; says which step failed otherwise).
    pub fn new(mbit: u64) -> Result<Self> {
        let _ = Command::new("ip").args(["netns", "del", NS]).output();
        let rate = format!("{mbit}mbit");
        // A burst of a few 64 KiB segments: veth hands tbf whole GSO segments.
        let tbf = ["tbf", "rate", &rate, "burst", "256kb", "latency", "50ms"];
        ip(&["ip", "netns", "add", NS])?;
        let wan = Wan;
        ip(&[
            "ip", "link", "add", "cw0", "type", "veth", "peer", "name", "cw1",
        ])?;
        ip(&["ip", "link", "set", "cw1", "netns", NS])?;
        ip(&["ip", "addr", "add", &format!("{NEAR}/24"), "dev", "cw0"])?;
        ip(&["ip", "link", "set", "cw0", "up"])?;
        let inside = ["ip", "netns", "exec", NS];
        let run_in = |args: &[&str]| ip(&[&inside[..], args].concat());
        run_in(&["ip", "addr", "add", &format!("{FAR}/24"), "dev", "cw1"])?;
        run_in(&["ip", "link", "set", "cw1", "up"])?;
        run_in(&["ip", "link", "set", "lo", "up"])?;
        ip(&[&["tc", "qdisc", "add", "dev", "cw0", "root"][..], &tbf].concat())?;
        run_in(&[&["tc", "qdisc", "add", "dev", "cw1", "root"][..], &tbf].concat())?;
        Ok(wan)
    }
}

impl Drop for Wan {
    fn drop(&mut self) {
        // Deleting the namespace deletes its end of the pair, and so the pair.
        let _ = Command::new("ip").args(["netns", "del", NS]).output();
    }
}
