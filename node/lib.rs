//! Cascade keeps one directory identical on many servers through a tree of QUIC relays.
//!
//! # Layout
//! Folders are layers; a module imports only from layers below it.
//!
//! | layer | module | what it owns |
//! |---|---|---|
//! | model | [`tree`] | MD5s and the body hasher, manifests with their hash tree, releases |
//! | | [`status`] | what a node reports about itself, and the tree view built from the reports |
//! | | [`metrics`] | the node's Prometheus counters, and their encoding with the view's gauges |
//! | protocol, disk | [`wire`] | the protocol spec: messages and framing, no sockets |
//! | | [`data`] | the data dir: content store, body writer, saved state, lock |
//! | | [`net`] | QUIC endpoints with mutual TLS, frame I/O, the upload limit |
//! | directory | [`dir`] | `dir` itself: the origin's scan and watch, a node's apply (in place or atomic), exclude and keep rules |
//! | | [`hooks`] | commands run around a release (`on_release`, `check`) |
//! | config | [`config`] | the one table of config keys (file, `CASCADE_*`, `--flags`) |
//! | sync | [`sync`] | moving releases: parent side, children side, bodies, publisher |
//! | node | [`admin`] | the local socket `publish` and `status` talk to |
//! | | [`web`] | the `metrics` address: `/metrics`, the status page, `/status.json` |
//! | | [`daemon`] | a running node: start-up wiring, tasks, shutdown |
//! | edges | [`testkit`] | real deployments for tests, the bench and the demo |
//! | | [`cli`] | the `cascade` command, one file per subcommand |
//!
//! Two exceptions, in unit tests only: they take test content from [`testkit::content`],
//! which imports nothing, and the state-file tests compare the old on-disk format with
//! [`wire::encode`].
//!
//! The topology and the certificates are the `cascade-topology` and `cascade-certs` crates.

pub mod admin;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod data;
pub mod dir;
pub mod hooks;
pub mod metrics;
pub mod net;
pub mod status;
pub mod sync;
pub mod testkit;
pub mod tree;
pub mod web;
pub mod wire;

pub use config::NodeConfig;
pub use daemon::RunningNode;
