//! A release: an immutable snapshot of the origin's directory, numbered by the origin.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::hash::Blake3;
use super::manifest::Manifest;

/// A version number, the manifest of the tree it names, the certificates the origin revokes,
/// and the origin's signature over all three (Ed25519 over the version and
/// [`Release::signed_digest`]; empty if unsigned).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Release {
    pub version: u64,
    pub manifest: Manifest,
    /// SHA-256 fingerprints of the certificates every node refuses at the handshake (the
    /// origin's topology's `revoked` list), carried with the release so that one change on
    /// the origin reaches every node.
    pub revoked: Vec<[u8; 32]>,
    pub signature: Vec<u8>,
    /// The topology the origin runs under (TOML text): every node that accepts the release
    /// runs under it (see `sync::layout`).
    pub topology: Option<String>,
    /// Set while the origin's key is a rotated one: the previous key's endorsement of it, so
    /// nodes that trust the previous key move to this one (see `sync::trust`). Not covered by
    /// the signature: it proves itself.
    pub rotation: Option<Rotation>,
}

/// A release key endorsed by the one before it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rotation {
    /// The new key's public half (Ed25519).
    pub next: [u8; 32],
    /// The previous key's signature over `next`.
    pub endorsement: Vec<u8>,
}

impl Release {
    /// A release not signed (yet), revoking nothing.
    pub fn unsigned(version: u64, manifest: Manifest) -> Self {
        Release {
            version,
            manifest,
            revoked: Vec::new(),
            signature: Vec::new(),
            topology: None,
            rotation: None,
        }
    }

    /// What the signature covers besides the version: BLAKE3 over the manifest's root digest,
    /// the revocation list and the topology.
    pub fn signed_digest(&self) -> Blake3 {
        let mut h = blake3::Hasher::new();
        h.update(b"cascade release 4\0");
        h.update(&self.manifest.root_digest().0);
        h.update(&(self.revoked.len() as u64).to_le_bytes());
        for fp in &self.revoked {
            h.update(fp);
        }
        match &self.topology {
            Some(t) => {
                h.update(&[1]);
                h.update(&(t.len() as u64).to_le_bytes());
                h.update(t.as_bytes());
            }
            None => {
                h.update(&[0]);
            }
        }
        Blake3(*h.finalize().as_bytes())
    }
}

/// Whether release `version` is newer than `held` (`None`: nothing held yet). Versions only
/// grow, so this one comparison decides what a node fetches, offers and keeps.
pub fn newer(version: u64, held: Option<u64>) -> bool {
    held.is_none_or(|h| version > h)
}

impl fmt::Display for Release {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "v{} ({} files, {} bytes)",
            self.version,
            self.manifest.file_count(),
            self.manifest.total_bytes()
        )
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn newer_means_a_higher_version_or_anything_over_nothing() {
        assert!(super::newer(1, None));
        assert!(super::newer(3, Some(2)));
        assert!(!super::newer(2, Some(2)));
        assert!(!super::newer(1, Some(2)));
    }
}
