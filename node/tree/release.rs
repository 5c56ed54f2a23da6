//! A release: an immutable snapshot of the origin's directory, numbered by the origin.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::manifest::Manifest;

/// A version number, the manifest of the tree it names, and the origin's signature over
/// both (Ed25519 over the version and the manifest's root digest; empty if unsigned).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Release {
    pub version: u64,
    pub manifest: Manifest,
    pub signature: Vec<u8>,
}

impl Release {
    /// A release not signed (yet).
    pub fn unsigned(version: u64, manifest: Manifest) -> Self {
        Release {
            version,
            manifest,
            signature: Vec::new(),
        }
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
