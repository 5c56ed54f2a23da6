//! Cascade keeps one directory identical on many servers through a tree of QUIC relays.
//!
//! # Layout
//! - [`wire`]: the protocol spec and its pure encode/decode (no sockets).
//! - [`manifest`]: releases' trees with a digest per directory; [`scan`] builds one on the
//!   origin; [`apply`] makes a directory match one.
//! - [`store`]: verified bodies by MD5.
//! - [`link`]: QUIC endpoints with mutual TLS and frame I/O; [`limit`]: the upload limit.
//! - [`upstream`] / [`downstream`]: the two halves of a node (dial the parent and receive;
//!   accept children and serve); [`flight`]: bodies a relay forwards while receiving them.
//!   [`node`] runs the halves a node's place calls for.
//! - [`admin`]: the local socket for `publish` and `status`; [`config`]: the typed config.
//! - [`demo`]: the embedded, self-contained demonstration (`cascade demo`).
//! - [`status`]: what nodes report up the tree.
//!
//! The topology and the certificates are the `cascade-topology` and `cascade-certs` crates.

pub mod admin;
pub mod apply;
pub mod config;
pub mod demo;
pub mod downstream;
pub mod flight;
pub mod limit;
pub mod link;
pub mod manifest;
pub mod node;
pub mod par;
pub mod scan;
pub mod status;
pub mod store;
pub mod upstream;
pub mod wire;

pub use config::NodeConfig;
pub use node::RunningNode;
