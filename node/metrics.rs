//! What a node counts for Prometheus (`metrics = "127.0.0.1:9400"`, served on `/metrics`).
//!
//! Counters live in [`Metrics`], shared by the node's tasks, which bump them where things
//! happen. Gauges are read when a scrape comes: this node's releases, its store, its links,
//! and one series per node of the tree below it (from the same [`TreeView`] as `cascade
//! status`), so scraping the origin alone shows the whole fleet. Encoded in the Prometheus
//! text format by the `prometheus-client` crate; names follow Prometheus conventions
//! (`cascade_` prefix, base units in the name, `_total` on counters).

use prometheus_client::encoding::prometheus_text;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};

use crate::status::view::{State, TreeView};

/// One label: its name and value.
pub type Label = Vec<(&'static str, String)>;

/// The node's counters, since it started.
#[derive(Debug)]
pub struct Metrics {
    /// Body bytes received from the parent (as they arrive).
    pub received_bytes: Counter,
    /// Bodies received from the parent and stored.
    pub received_files: Counter,
    /// Body bytes sent, by child.
    pub sent_bytes: Family<Label, Counter>,
    /// Bodies sent whole, by child.
    pub sent_bodies: Family<Label, Counter>,
    /// Bytes of offers (manifests and deltas) sent to children.
    pub offered_bytes: Counter,
    /// Releases applied (held completely).
    pub releases: Counter,
    /// Times this node attached to a backup parent.
    pub failovers: Counter,
    /// Bodies or releases that failed verification, by what (`body`, `release`).
    pub verification_failures: Family<Label, Counter>,
    /// Hook runs that failed, by hook (`check`, `on_release`).
    pub hook_failures: Family<Label, Counter>,
    /// File system events the origin's watch took in.
    pub watch_events: Counter,
    /// Files that drifted from the release and were repaired.
    pub repaired_files: Counter,
}

/// What a scrape reads besides the counters.
pub struct Now<'a> {
    pub view: &'a TreeView,
    /// The release this node holds (serves) and the one applied to its `dir`.
    pub held: Option<u64>,
    pub applied: Option<u64>,
    /// Bytes and bodies in the store, when known.
    pub store: Option<(u64, u64)>,
    /// This node's parent link: the parent's name and whether it is up (`None` on the origin).
    pub parent: Option<(String, bool)>,
}

impl Default for Metrics {
    /// Every counter at 0, with the labelled ones that are known in advance present (a
    /// failure counter that appears only after the first failure makes alerts harder).
    fn default() -> Self {
        let m = Metrics {
            received_bytes: Counter::default(),
            received_files: Counter::default(),
            sent_bytes: Family::default(),
            sent_bodies: Family::default(),
            offered_bytes: Counter::default(),
            releases: Counter::default(),
            failovers: Counter::default(),
            verification_failures: Family::default(),
            hook_failures: Family::default(),
            watch_events: Counter::default(),
            repaired_files: Counter::default(),
        };
        for what in ["body", "release"] {
            let _ = m
                .verification_failures
                .get_or_create(&vec![("what", what.to_owned())]);
        }
        for hook in ["check", "on_release"] {
            let _ = m
                .hook_failures
                .get_or_create(&vec![("hook", hook.to_owned())]);
        }
        m
    }
}

impl Metrics {
    /// The counter of bodies sent to `child`.
    pub fn bodies_to(&self, child: &str) -> Counter {
        self.sent_bodies
            .get_or_create(&vec![("child", child.to_owned())])
            .clone()
    }

    pub fn sent_to(&self, child: &str) -> Counter {
        self.sent_bytes
            .get_or_create(&vec![("child", child.to_owned())])
            .clone()
    }

    pub fn verification_failed(&self, what: &str) {
        self.verification_failures
            .get_or_create(&vec![("what", what.to_owned())])
            .inc();
    }

    pub fn hook_failed(&self, hook: &str) {
        self.hook_failures
            .get_or_create(&vec![("hook", hook.to_owned())])
            .inc();
    }

    /// The Prometheus text format of everything, and its content type.
    pub fn encode(&self, now: &Now) -> (String, &'static str) {
        let mut r = Registry::with_prefix("cascade");
        let gauge = |v: u64| {
            let g = Gauge::<i64>::default();
            g.set(signed(v));
            g
        };
        r.register(
            "release_held",
            "Version of the release this node holds and serves (0: none)",
            gauge(now.held.unwrap_or(0)),
        );
        r.register(
            "release_applied",
            "Version of the release applied completely to this node's dir (0: none)",
            gauge(now.applied.unwrap_or(0)),
        );
        if let Some((bytes, files)) = now.store {
            r.register_with_unit(
                "store",
                "Bytes of bodies in this node's store",
                Unit::Bytes,
                gauge(bytes),
            );
            r.register("store_bodies", "Bodies in this node's store", gauge(files));
        }
        let link = Family::<Label, Gauge>::default();
        if let Some((parent, up)) = &now.parent {
            link.get_or_create(&vec![("peer", parent.clone()), ("link", "parent".into())])
                .set(i64::from(*up));
        }
        for c in &now.view.root.children {
            let up = c.state != State::Unreachable && c.parent.as_deref() == Some(&now.view.node);
            link.get_or_create(&vec![("peer", c.name.clone()), ("link", "child".into())])
                .set(i64::from(up));
        }
        r.register(
            "link_up",
            "Whether the link to a peer is up (1) or down (0), by peer and link (parent or child)",
            link,
        );
        r.register_with_unit(
            "received",
            "Body bytes received from the parent",
            Unit::Bytes,
            self.received_bytes.clone(),
        );
        r.register(
            "received_bodies",
            "Bodies received from the parent and stored",
            self.received_files.clone(),
        );
        r.register_with_unit(
            "sent",
            "Body bytes sent to children, by child",
            Unit::Bytes,
            self.sent_bytes.clone(),
        );
        r.register(
            "sent_bodies",
            "Bodies sent to children (to their end), by child",
            self.sent_bodies.clone(),
        );
        r.register_with_unit(
            "offered",
            "Bytes of offers (manifests and deltas) sent to children",
            Unit::Bytes,
            self.offered_bytes.clone(),
        );
        r.register(
            "releases_applied",
            "Releases this node applied since it started",
            self.releases.clone(),
        );
        r.register(
            "failovers",
            "Times this node attached to a backup parent",
            self.failovers.clone(),
        );
        r.register(
            "verification_failures",
            "Bodies (what=body) or releases (what=release) from the parent that failed verification",
            self.verification_failures.clone(),
        );
        r.register(
            "hook_failures",
            "Hook runs that failed, by hook",
            self.hook_failures.clone(),
        );
        r.register(
            "watch_events",
            "File system events the origin's watch took in",
            self.watch_events.clone(),
        );
        r.register(
            "repaired_files",
            "Files that drifted from the release and were repaired",
            self.repaired_files.clone(),
        );
        self.tree(&mut r, now.view);
        let mut out = String::new();
        prometheus_text::encode(&mut out, &r).expect("writing to a String does not fail");
        (out, prometheus_text::CONTENT_TYPE)
    }

    /// One series per node of the view, labelled by node.
    fn tree(&self, r: &mut Registry, view: &TreeView) {
        let release = Family::<Label, Gauge>::default();
        let lag_releases = Family::<Label, Gauge>::default();
        let lag_seconds = Family::<Label, Gauge>::default();
        let rate = Family::<Label, Gauge>::default();
        let state = Family::<Label, Gauge>::default();
        for n in view.nodes() {
            let l = vec![("node", n.name.clone())];
            release
                .get_or_create(&l)
                .set(signed(n.release.unwrap_or(0)));
            if let Some(x) = n.lag_releases {
                lag_releases.get_or_create(&l).set(signed(x));
            }
            if let Some(x) = n.lag_seconds {
                lag_seconds.get_or_create(&l).set(signed(x));
            }
            rate.get_or_create(&l).set(signed(n.rate_bytes_per_second));
            for s in State::ALL {
                let mut l = l.clone();
                l.push(("state", s.label()));
                state.get_or_create(&l).set(i64::from(n.state == s));
            }
        }
        r.register(
            "node_release",
            "Release applied by each node of the tree below this one, as last reported (0: none)",
            release,
        );
        r.register(
            "node_lag_releases",
            "Releases each node is behind this one",
            lag_releases,
        );
        r.register_with_unit(
            "node_lag",
            "How long each node has been behind this one",
            Unit::Seconds,
            lag_seconds,
        );
        r.register(
            "node_receive_rate_bytes_per_second",
            "Body bytes per second each node is receiving now",
            rate,
        );
        r.register(
            "node_state",
            "Each node's state (1 for the state it is in, 0 for the others)",
            state,
        );
    }
}

/// A count as a gauge's value (gauges are signed; nothing here comes near the limit).
fn signed(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}
