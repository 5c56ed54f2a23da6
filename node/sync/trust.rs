//! End-to-end trust in releases: the origin signs each release with the deployment's
//! release-signing key (`release.key`, on the origin host only); every node checks the
//! signature against `release.pub` before it stores, forwards or applies anything of a
//! release, and relays pass the signature on unchanged. What a leaf accepts is what the
//! origin signed, whatever the path: a stolen relay certificate opens links but cannot make a
//! node take a release of its own.

use cascade_certs::{ReleaseKey, ReleasePub};

use crate::tree::Release;

#[derive(Debug)]
pub struct Trust {
    /// The origin's signing key (`None` on every other node).
    pub key: Option<ReleaseKey>,
    pub public: ReleasePub,
}

impl Trust {
    /// Signs `release` (the origin).
    pub fn sign(&self, release: &mut Release) {
        if let Some(k) = &self.key {
            release.signature = k.sign(release.version, &release.signed_digest().0);
        }
    }

    /// Whether `release` carries the origin's signature; the error says why not.
    pub fn check(&self, release: &Release) -> Result<(), String> {
        if release.signature.is_empty() {
            return Err(
                "it is not signed (every release must carry the origin's signature)".into(),
            );
        }
        if self.public.verify(
            release.version,
            &release.signed_digest().0,
            &release.signature,
        ) {
            Ok(())
        } else {
            Err("bad signature: not signed by this deployment's release key (release.pub)".into())
        }
    }
}
