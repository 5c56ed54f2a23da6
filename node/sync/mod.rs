//! Moving releases through the tree. A node is two halves around one [`Shared`] state:
//!
//! - the **parent side** ([`parent`], [`session`], [`fetch`]): dial the parent (or a backup),
//!   say which release is held, take offers, fetch what is missing ([`bodies::ask`]), land
//!   it in `dir` ([`land`]) and report the subtree's state up;
//! - the **children side** ([`children`]): accept children, offer them the release held (or
//!   one still arriving, see [`flight`]), serve their body streams ([`bodies::serve`]) and
//!   collect their reports on the [`board`].
//!
//! The origin has only the children side plus the [`publish`]er; a relay has both halves
//! sharing one store; a leaf has only the parent side. What is held and offered, and its
//! copy on disk, is [`held`].

pub mod after;
pub mod board;
pub mod bodies;
pub mod children;
pub mod fetch;
pub mod flight;
pub mod follow;
pub mod held;
pub mod keys;
pub mod land;
pub mod layout;
pub mod parent;
pub mod publish;
pub mod push;
pub mod pushed;
pub mod reload;
pub mod role;
pub mod session;
pub mod shared;
pub mod trust;
pub mod verify;

pub use board::Board;
pub use held::{Held, Offer};
pub use publish::{PublishError, Publisher};
pub use shared::{HookSetup, Shared};
pub use trust::Trust;

use crate::data::{StateError, StoreError};
use crate::dir::ApplyError;
use crate::net::LinkError;
use crate::tree::Blake3;

/// Why fetching or landing a release failed.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error(transparent)]
    Link(#[from] LinkError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("apply failed: {0}")]
    Apply(ApplyError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error("parent did not serve body {0} (code {1})")]
    NotServed(Blake3, u64),
    #[error("body {0} sent by the parent is not in the block format: {1}")]
    BadBlock(Blake3, crate::wire::WireError),
    #[error("body {id} sent by the parent is {got}+ bytes, expected {size}")]
    TooLong { id: Blake3, size: u64, got: u64 },
    #[error("{path}: No space left to fetch this release: its new bodies need {need} bytes, {free} are free")]
    NoSpace {
        path: std::path::PathBuf,
        need: u64,
        free: u64,
    },
}
