//! `cascade publish [--wait]`: ask the running origin to publish, and with `--wait`, follow
//! the release down the tree until every node of the topology holds it.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::mem::Discriminant;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use cascade_topology::Topology;
use clap::Args;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::{runtime, Ask};
use crate::admin;
use crate::status::render::bytes;
use crate::status::{NodeState, NodeStatus};
use crate::wire::{AdminRequest, AdminResponse};

#[derive(Args)]
pub struct PublishArgs {
    #[command(flatten)]
    node: Ask,
    /// Wait until every node of the topology has applied the release.
    #[arg(long)]
    wait: bool,
    /// With --wait: give up after this many seconds (exit 1, naming the nodes that lag).
    #[arg(long, default_value_t = 300)]
    timeout: u64,
}

/// How often `publish --wait` repeats a fetching node's progress.
const PROGRESS_EVERY: Duration = Duration::from_secs(2);
/// How often `publish --wait` asks the origin.
const POLL: Duration = Duration::from_millis(200);

pub fn run(args: &PublishArgs) -> Result<ExitCode> {
    let (data, _) = args.node.resolve()?;
    runtime()?.block_on(publish(
        &data,
        AdminRequest::Publish,
        args.wait,
        Duration::from_secs(args.timeout),
    ))
}

/// Sends `request` (a publish, or a topology to apply) to the origin and, with `wait`,
/// follows the release it cut down the tree until every node of the topology it carries
/// holds it.
pub(super) async fn publish(
    data: &std::path::Path,
    request: AdminRequest,
    wait: bool,
    timeout: Duration,
) -> Result<ExitCode> {
    let started = Instant::now();
    let summary = match admin::request(data, &request).await? {
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
    // The nodes of the topology the origin runs under now (the one just applied, if so).
    let text = match admin::request(data, &AdminRequest::Topology).await? {
        AdminResponse::Topology(t) => t,
        other => bail!("unexpected answer from the node: {other:?}"),
    };
    let expected: Vec<String> = Topology::parse(&text)?
        .nodes()
        .iter()
        .map(|n| n.name.clone())
        .collect();
    let mut report = Report::new(summary.version, expected);
    // A live bar on a terminal; nothing but the lines below otherwise.
    let bar = if std::io::stdout().is_terminal() {
        let bar = ProgressBar::with_draw_target(
            Some(report.expected.len() as u64),
            ProgressDrawTarget::stdout(),
        );
        bar.set_style(
            ProgressStyle::with_template("{spinner} {pos}/{len} nodes [{bar:24}] {msg}")
                .expect("a valid template")
                .progress_chars("=> "),
        );
        bar.enable_steady_tick(Duration::from_millis(120));
        report.repeat_progress = false;
        bar
    } else {
        ProgressBar::hidden()
    };
    loop {
        let nodes = match admin::request(data, &AdminRequest::Status).await? {
            AdminResponse::Status { nodes, .. } => nodes,
            other => bail!("unexpected answer from the node: {other:?}"),
        };
        for line in report.changes(&nodes, Instant::now()) {
            if bar.is_hidden() {
                println!("  {line}");
            } else {
                bar.println(format!("  {line}"));
            }
        }
        let p = report.progress(&nodes);
        bar.set_position(p.done as u64);
        bar.set_message(p.to_string());
        let lagging = report.lagging(&nodes);
        let refused = report.refused(&nodes);
        if lagging.is_empty() || started.elapsed() >= timeout {
            bar.finish_and_clear();
        }
        if lagging.is_empty() {
            let hooks: Vec<_> = nodes.iter().filter(|s| s.hook_error.is_some()).collect();
            if refused.is_empty() {
                println!(
                    "all {} nodes hold release {} ({:.2} s)",
                    report.expected.len(),
                    summary.version,
                    started.elapsed().as_secs_f64()
                );
            } else {
                eprintln!(
                    "{} of {} nodes refused release {} (their check hook failed; they stay on their release):",
                    refused.len(),
                    report.expected.len(),
                    summary.version
                );
                for line in &refused {
                    eprintln!("  {line}");
                }
            }
            for s in hooks {
                eprintln!(
                    "  hook failed on {}: {}",
                    s.name,
                    s.hook_error.as_deref().unwrap_or_default()
                );
            }
            return Ok(if refused.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            });
        }
        if started.elapsed() >= timeout {
            eprintln!(
                "timed out after {} s: {} of {} nodes lack release {}:",
                timeout.as_secs(),
                lagging.len(),
                report.expected.len(),
                summary.version
            );
            for line in lagging {
                eprintln!("  {line}");
            }
            return Ok(ExitCode::FAILURE);
        }
        tokio::time::sleep(POLL).await;
    }
}

/// How far a release got, for the live bar.
#[derive(Debug, PartialEq)]
struct Progress {
    /// Nodes done with it (holding it, or having refused it).
    done: usize,
    /// Body bytes moved for it, across the nodes.
    bytes: u64,
    /// Up to three of the nodes furthest from done, with how far each is.
    slowest: Vec<String>,
    /// Nodes not done.
    waiting: usize,
}

impl std::fmt::Display for Progress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} moved", bytes(self.bytes))?;
        if !self.slowest.is_empty() {
            write!(f, " · slowest: {}", self.slowest.join(", "))?;
            if self.waiting > self.slowest.len() {
                write!(f, " and {} more", self.waiting - self.slowest.len())?;
            }
        }
        Ok(())
    }
}

/// What `publish --wait` has shown so far, and what it shows next.
struct Report {
    version: u64,
    expected: Vec<String>,
    /// Per node: its last shown (release, state, link) and when it was shown.
    shown: HashMap<String, (Shown, Instant)>,
    /// Whether a fetching node's progress is repeated every [`PROGRESS_EVERY`] (off while
    /// the live bar shows it).
    repeat_progress: bool,
}

type Shown = (Option<u64>, Discriminant<NodeState>, bool, Option<String>);

impl Report {
    fn new(version: u64, expected: Vec<String>) -> Self {
        Report {
            version,
            expected,
            shown: HashMap::new(),
            repeat_progress: true,
        }
    }

    /// A line for each node whose release, state or link changed since it was last shown,
    /// and for a fetching node whose progress was last shown [`PROGRESS_EVERY`] ago.
    fn changes(&mut self, nodes: &[NodeStatus], now: Instant) -> Vec<String> {
        let mut lines = Vec::new();
        for s in nodes {
            let key = (
                s.applied,
                std::mem::discriminant(&s.state),
                s.connected,
                s.hook_error.clone(),
            );
            let due = match self.shown.get(&s.name) {
                Some((k, at)) => {
                    *k != key
                        || (self.repeat_progress
                            && matches!(s.state, NodeState::Fetching { .. })
                            && now.duration_since(*at) >= PROGRESS_EVERY)
                }
                None => true,
            };
            if due {
                lines.push(s.to_string());
                self.shown.insert(s.name.clone(), (key, now));
            }
        }
        lines
    }

    /// How far the release got: nodes holding it (or having refused it), body bytes moved
    /// for it, and the nodes furthest from done.
    fn progress(&self, nodes: &[NodeStatus]) -> Progress {
        let by_name: HashMap<_, _> = nodes.iter().map(|s| (s.name.as_str(), s)).collect();
        let (mut done, mut bytes) = (0, 0);
        let mut waiting: Vec<(f64, &str)> = Vec::new();
        for n in &self.expected {
            let s = by_name.get(n.as_str());
            if let Some(s) = s.filter(|s| s.applied.is_some_and(|v| v >= self.version)) {
                done += 1;
                bytes += s.fetched_bytes;
                continue;
            }
            if s.is_some_and(|s| self.has_refused(s)) {
                done += 1;
                continue;
            }
            let fraction = match s.map(|s| &s.state) {
                Some(NodeState::Fetching {
                    version,
                    done_bytes,
                    total_bytes,
                }) if *version == self.version => {
                    bytes += done_bytes;
                    if *total_bytes == 0 {
                        1.0
                    } else {
                        *done_bytes as f64 / *total_bytes as f64
                    }
                }
                Some(NodeState::Applying { version }) if *version == self.version => 1.0,
                _ => 0.0,
            };
            waiting.push((fraction, n));
        }
        waiting.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(b.1)));
        Progress {
            done,
            bytes,
            slowest: waiting
                .iter()
                .take(3)
                .map(|(f, n)| format!("{n} {:.0}%", f * 100.0))
                .collect(),
            waiting: waiting.len(),
        }
    }

    /// Whether `s` refused this release with its check hook (it will not take it).
    fn has_refused(&self, s: &NodeStatus) -> bool {
        matches!(&s.state, NodeState::Refused { version, .. } if *version == self.version)
    }

    /// The nodes whose check hook refused the release.
    fn refused(&self, nodes: &[NodeStatus]) -> Vec<String> {
        nodes
            .iter()
            .filter(|s| self.has_refused(s))
            .map(|s| s.to_string())
            .collect()
    }

    /// The nodes that do not hold the release yet (and did not refuse it), each with its
    /// last known state.
    fn lagging(&self, nodes: &[NodeStatus]) -> Vec<String> {
        let by_name: HashMap<_, _> = nodes.iter().map(|s| (s.name.as_str(), s)).collect();
        self.expected
            .iter()
            .filter_map(|n| match by_name.get(n.as_str()) {
                Some(s) if s.applied.is_some_and(|v| v >= self.version) => None,
                Some(s) if self.has_refused(s) => None,
                Some(s) => Some(s.to_string()),
                None => Some(format!(
                    "{n}: never reported (not connected since the origin started)"
                )),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(name: &str, applied: Option<u64>, state: NodeState) -> NodeStatus {
        NodeStatus {
            applied,
            state,
            connected: true,
            ..NodeStatus::new(name)
        }
    }

    #[test]
    fn progress_counts_nodes_done_bytes_moved_and_names_the_slowest() {
        let r = Report::new(2, ["o", "a", "b", "c", "d", "e"].map(String::from).to_vec());
        let mut o = status("o", Some(2), NodeState::Idle);
        o.fetched_bytes = 0;
        let mut a = status("a", Some(2), NodeState::Idle);
        a.fetched_bytes = 100;
        let fetching = |done| NodeState::Fetching {
            version: 2,
            done_bytes: done,
            total_bytes: 100,
        };
        let nodes = vec![
            o,
            a,
            status("b", Some(1), fetching(50)),
            status("c", Some(1), fetching(10)),
            status("d", Some(1), NodeState::Applying { version: 2 }),
            // e never reported.
        ];
        let p = r.progress(&nodes);
        assert_eq!(
            p,
            Progress {
                done: 2,
                bytes: 160,
                slowest: vec!["e 0%".into(), "c 10%".into(), "b 50%".into()],
                waiting: 4,
            }
        );
        assert_eq!(
            p.to_string(),
            "160 B moved · slowest: e 0%, c 10%, b 50% and 1 more"
        );
    }

    #[test]
    fn shows_each_change_once_and_progress_every_two_seconds() {
        let mut r = Report::new(2, vec!["o".into(), "a".into(), "b".into()]);
        let t0 = Instant::now();
        let fetching = |done| NodeState::Fetching {
            version: 2,
            done_bytes: done,
            total_bytes: 10,
        };
        let nodes = vec![
            status("o", Some(2), NodeState::Idle),
            status("a", Some(1), fetching(1)),
        ];
        assert_eq!(r.changes(&nodes, t0).len(), 2);
        assert!(r.changes(&nodes, t0 + Duration::from_secs(1)).is_empty());
        let later = vec![nodes[0].clone(), status("a", Some(1), fetching(5))];
        assert_eq!(
            r.changes(&later, t0 + PROGRESS_EVERY),
            ["a: applied v1, fetching v2 (5/10 bytes)"]
        );
        assert_eq!(
            r.lagging(&later),
            [
                "a: applied v1, fetching v2 (5/10 bytes)".to_owned(),
                "b: never reported (not connected since the origin started)".to_owned()
            ]
        );
        let done = vec![
            nodes[0].clone(),
            status("a", Some(2), NodeState::Idle),
            status("b", Some(3), NodeState::Idle),
        ];
        assert!(r.lagging(&done).is_empty());
    }

    #[test]
    fn a_node_that_refused_the_release_ends_the_wait_as_refused_not_lagging() {
        let r = Report::new(2, vec!["o".into(), "a".into()]);
        let refused = NodeState::Refused {
            version: 2,
            reason: "page is bad".into(),
        };
        let nodes = vec![
            status("o", Some(2), NodeState::Idle),
            status("a", Some(1), refused),
        ];
        assert!(r.lagging(&nodes).is_empty());
        assert_eq!(
            r.refused(&nodes),
            ["a: applied v1, REFUSED v2: page is bad"]
        );
        // An older refusal does not count for this release.
        let old = NodeState::Refused {
            version: 1,
            reason: "x".into(),
        };
        let nodes = vec![
            status("o", Some(2), NodeState::Idle),
            status("a", None, old),
        ];
        assert!(r.refused(&nodes).is_empty());
        assert_eq!(r.lagging(&nodes).len(), 1);
    }
}
