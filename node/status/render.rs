//! [`TreeView`] as text, for a terminal or a log: one line per node, drawn as a tree like
//! `tree` or `cargo tree` draw theirs, with colour only when asked (a terminal).

use std::fmt::Write as _;
use std::time::{Duration, UNIX_EPOCH};

use super::view::{State, TreeView, ViewNode};

/// ANSI colours, or none.
#[derive(Debug, Clone, Copy)]
pub struct Paint(pub bool);

impl Paint {
    fn wrap(self, code: &str, text: &str) -> String {
        if self.0 {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_owned()
        }
    }

    fn state(self, s: State) -> String {
        let code = match s {
            State::InSync => "32",
            State::Fetching | State::Applying | State::Behind => "33",
            _ => "1;31",
        };
        self.wrap(code, s.as_str())
    }

    fn dim(self, text: &str) -> String {
        self.wrap("2", text)
    }
}

/// The whole view: a summary line, then the tree.
pub fn render(v: &TreeView, paint: Paint) -> String {
    let mut out = String::new();
    let counts = v.counts();
    let total: usize = counts.values().sum();
    let summary: Vec<String> = counts
        .iter()
        .map(|(s, n)| format!("{n} {}", paint.state(*s)))
        .collect();
    let release = v
        .release
        .map_or("no release yet".to_owned(), |r| format!("release {r}"));
    let _ = writeln!(
        out,
        "{} holds {release} · {total} node{}: {}",
        v.node,
        if total == 1 { "" } else { "s" },
        summary.join(", ")
    );
    line(&mut out, &v.root, v.at_ms, "", "", paint);
    out
}

fn line(out: &mut String, n: &ViewNode, now_ms: u64, first: &str, rest: &str, paint: Paint) {
    let _ = write!(
        out,
        "{first}{} {}",
        n.name,
        paint.dim(&format!("({})", n.role))
    );
    match n.release {
        Some(r) => {
            let _ = write!(out, "  v{r}");
        }
        None => out.push_str("  -"),
    }
    let _ = write!(out, "  {}", paint.state(n.state));
    if let Some(p) = &n.fetching {
        let _ = write!(
            out,
            " v{}: {} of {}",
            p.version,
            bytes(p.done_bytes),
            bytes(p.total_bytes)
        );
    }
    if n.rate_bytes_per_second > 0 {
        let _ = write!(out, ", {}/s", bytes(n.rate_bytes_per_second));
    }
    if let Some(since) = n.unreachable_since_ms {
        let _ = write!(out, " since {}", when(since, now_ms));
    }
    if let Some(d) = &n.detail {
        let _ = write!(out, ": {d}");
    }
    match (n.lag_releases, n.lag_seconds) {
        (Some(l), secs) if l > 0 => {
            let _ = write!(
                out,
                " · {l} release{} behind",
                if l == 1 { "" } else { "s" }
            );
            if let Some(s) = secs {
                let _ = write!(out, " for {}", ago(Duration::from_secs(s)));
            }
        }
        _ => {}
    }
    if n.on_backup_parent {
        if let Some(p) = &n.parent {
            let _ = write!(out, " · on backup parent {p}");
        }
    }
    if let Some(h) = &n.hook_error {
        let _ = write!(
            out,
            " · {}",
            paint.wrap("1;31", &format!("hook failed: {h}"))
        );
    }
    if !n.kept.is_empty() {
        let _ = write!(out, " · keeps its own {}", n.kept.join(" "));
    }
    if n.repaired > 0 {
        let _ = write!(out, " · repaired {} drifted", n.repaired);
    }
    out.push('\n');
    let last = n.children.len().saturating_sub(1);
    for (i, c) in n.children.iter().enumerate() {
        let (f, r) = if i == last {
            ("└── ", "    ")
        } else {
            ("├── ", "│   ")
        };
        line(
            out,
            c,
            now_ms,
            &format!("{rest}{f}"),
            &format!("{rest}{r}"),
            paint,
        );
    }
}

/// `n` bytes in binary units, as rsync's `--human-readable` and `du -h` show them.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

/// A time as UTC, with how long ago it was.
fn when(ms: u64, now_ms: u64) -> String {
    let t = UNIX_EPOCH + Duration::from_millis(ms);
    format!(
        "{} ({} ago)",
        humantime::format_rfc3339_seconds(t),
        ago(Duration::from_millis(now_ms.saturating_sub(ms)))
    )
}

/// A duration to the second, like `2m 5s`.
fn ago(d: Duration) -> String {
    humantime::format_duration(Duration::from_secs(d.as_secs())).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::view::Progress;

    fn leaf(name: &str, state: State) -> ViewNode {
        ViewNode {
            release: Some(3),
            lag_releases: Some(0),
            lag_seconds: Some(0),
            parent: Some("relay-1".into()),
            last_report_ms: Some(1),
            ..ViewNode::new(name, "leaf", state)
        }
    }

    #[test]
    fn the_tree_is_drawn_with_each_nodes_state_and_no_colour_unless_asked() {
        let mut fetching = leaf("web-1", State::Fetching);
        fetching.fetching = Some(Progress {
            version: 4,
            done_bytes: 3 << 20,
            total_bytes: 10 << 20,
        });
        fetching.rate_bytes_per_second = 1 << 20;
        fetching.lag_releases = Some(1);
        fetching.lag_seconds = Some(125);
        let mut down = leaf("web-2", State::Unreachable);
        down.unreachable_since_ms = Some(1_764_590_000_000);
        let mut relay = leaf("relay-1", State::InSync);
        relay.role = "relay".into();
        relay.children = vec![fetching, down];
        let mut root = leaf("origin", State::InSync);
        root.role = "origin".into();
        root.children = vec![relay];
        let v = TreeView {
            node: "origin".into(),
            release: Some(4),
            at_ms: 1_764_590_060_000,
            root,
        };
        let text = render(&v, Paint(false));
        let want = "\
origin holds release 4 · 4 nodes: 2 in sync, 1 fetching, 1 unreachable
origin (origin)  v3  in sync
└── relay-1 (relay)  v3  in sync
    ├── web-1 (leaf)  v3  fetching v4: 3.0 MiB of 10.0 MiB, 1.0 MiB/s · 1 release behind for 2m 5s
    └── web-2 (leaf)  v3  unreachable since 2025-12-01T11:53:20Z (1m ago)
";
        assert_eq!(text, want);
        assert!(!text.contains('\x1b'));
        assert!(render(&v, Paint(true)).contains("\x1b[32min sync\x1b[0m"));
    }

    #[test]
    fn bytes_are_shown_in_binary_units() {
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(1023), "1023 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(5 << 30), "5.0 GiB");
    }
}
