//! End-to-end trust in releases: the origin signs each release with the deployment's
//! release-signing key (`release.key`, on the origin host only); every node checks the
//! signature against the key it trusts before it stores, forwards or applies anything of a
//! release, and relays pass the signature on unchanged. What a leaf accepts is what the
//! origin signed, whatever the path: a stolen relay certificate opens links but cannot make a
//! node take a release of its own.
//!
//! # Rotating the release key
//! `cascade certs rotate-release-key` on the origin host replaces `release.key` with a new key
//! and writes `release.endorsement`: the old key's signature over the new public key. The
//! origin (re-reading its key files, or on `SIGHUP`) signs with the new key from then on and
//! attaches the endorsement to every release ([`Rotation`]). A node that trusts the old key
//! accepts such a release only if the endorsement checks against the key it trusts and the
//! release's signature against the endorsed key; it then trusts the new key alone, saved in
//! its data dir (`DATA/release.pub`, which wins over the certs dir's `release.pub` from then
//! on), so a release signed with the old key (stolen, perhaps: the reason to rotate) is
//! refused afterwards.

use std::path::PathBuf;
use std::sync::Mutex;

use cascade_certs::{ReleaseKey, ReleasePub};

use crate::tree::{Release, Rotation};

#[derive(Debug)]
pub struct Trust {
    /// The origin's signing key and its endorsement by the previous key, if it was rotated
    /// (`None` on every other node).
    signing: Mutex<Option<(ReleaseKey, Option<Vec<u8>>)>>,
    /// The key releases must be signed with (or endorsed by).
    public: Mutex<ReleasePub>,
    /// Where a key adopted through a rotation is saved.
    adopted: PathBuf,
}

impl Trust {
    /// Trust in `public`, or (on a node that does not sign) in the key this node adopted
    /// through a rotation (saved at `adopted`), which wins.
    pub fn new(
        public: ReleasePub,
        signing: Option<(ReleaseKey, Option<Vec<u8>>)>,
        adopted: PathBuf,
    ) -> Result<Self, cascade_certs::CertError> {
        let public = match &signing {
            Some((key, _)) => key.public(),
            None if adopted.exists() => ReleasePub::load_file(&adopted)?,
            None => public,
        };
        Ok(Trust {
            signing: Mutex::new(signing),
            public: Mutex::new(public),
            adopted,
        })
    }

    /// The key trusted now.
    pub fn public(&self) -> ReleasePub {
        *self.public.lock().expect("trust lock")
    }

    /// Replaces the origin's signing key (re-read after a rotation); returns whether it
    /// changed.
    pub fn set_signing(&self, key: ReleaseKey, endorsement: Option<Vec<u8>>) -> bool {
        let mut s = self.signing.lock().expect("trust lock");
        let changed = s
            .as_ref()
            .is_none_or(|(k, e)| k.public() != key.public() || *e != endorsement);
        if changed {
            *self.public.lock().expect("trust lock") = key.public();
            *s = Some((key, endorsement));
        }
        changed
    }

    /// Signs `release` (the origin), attaching the endorsement of its key if it has one.
    pub fn sign(&self, release: &mut Release) {
        if let Some((k, endorsement)) = &*self.signing.lock().expect("trust lock") {
            release.signature = k.sign(release.version, &release.signed_digest().0);
            release.rotation = endorsement.as_ref().map(|e| Rotation {
                next: k.public().0,
                endorsement: e.clone(),
            });
        }
    }

    /// Whether `release` is signed by the key trusted now (on the origin: its own), with the
    /// endorsement the origin attaches now.
    pub fn signed_now(&self, release: &Release) -> bool {
        let endorsement = self
            .signing
            .lock()
            .expect("trust lock")
            .as_ref()
            .and_then(|(_, e)| e.clone());
        release.rotation.as_ref().map(|r| &r.endorsement) == endorsement.as_ref()
            && self.public().verify(
                release.version,
                &release.signed_digest().0,
                &release.signature,
            )
    }

    /// Whether `release` carries a valid signature; the error says why not. A release signed
    /// by a key the trusted one endorsed moves this node's trust to that key.
    pub fn check(&self, release: &Release) -> Result<(), String> {
        if release.signature.is_empty() {
            return Err(
                "it is not signed (every release must carry the origin's signature)".into(),
            );
        }
        let digest = release.signed_digest();
        let mut public = self.public.lock().expect("trust lock");
        if public.verify(release.version, &digest.0, &release.signature) {
            return Ok(());
        }
        let Some(r) = &release.rotation else {
            return Err(
                "bad signature: not signed by this deployment's release key (release.pub)".into(),
            );
        };
        let next = ReleasePub(r.next);
        if !public.endorses(&next, &r.endorsement) {
            return Err(
                "bad signature: signed by a key that the trusted release key did not endorse"
                    .into(),
            );
        }
        if !next.verify(release.version, &digest.0, &release.signature) {
            return Err("bad signature: not signed by the endorsed release key".into());
        }
        next.save(&self.adopted)
            .map_err(|e| format!("cannot save the endorsed release key: {e}"))?;
        tracing::info!(
            old = %*public,
            new = %next,
            "release key rotated: releases must now be signed by the new key (saved in {})",
            self.adopted.display()
        );
        *public = next;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tree::manifest::fixtures::file;
    use crate::tree::Manifest;

    fn release(version: u64) -> Release {
        Release::unsigned(
            version,
            Manifest::from_entries(vec![file("index.html", b"x")]).unwrap(),
        )
    }

    #[test]
    fn a_rotation_moves_trust_to_the_endorsed_key_and_the_old_key_is_refused_after() {
        let d = tempfile::tempdir().unwrap();
        let certs = d.path().join("certs");
        cascade_certs::init_release_key(&certs, false).unwrap();
        let old = ReleaseKey::load(&certs).unwrap();
        let old_pub = old.public();
        let adopted = d.path().join("data-release.pub");
        let node = Trust::new(old_pub, None, adopted.clone()).unwrap();

        let sign = |key: &ReleaseKey, endorsement: Option<Vec<u8>>, version| {
            let mut r = release(version);
            r.signature = key.sign(version, &r.signed_digest().0);
            r.rotation = endorsement.map(|e| Rotation {
                next: key.public().0,
                endorsement: e,
            });
            r
        };
        assert_eq!(node.check(&sign(&old, None, 1)), Ok(()));

        // The operator rotates: the new key, endorsed by the old one.
        let (was, now) = cascade_certs::rotate_release_key(&certs).unwrap();
        assert_eq!(was, old_pub);
        let new = ReleaseKey::load(&certs).unwrap();
        assert_eq!(new.public(), now);
        let endorsement = cascade_certs::load_endorsement(&certs).unwrap().unwrap();
        // Signed by the new key without the endorsement: refused (the node trusts the old).
        assert!(node.check(&sign(&new, None, 2)).is_err());
        assert!(!adopted.exists());
        // With it: accepted, and the node trusts the new key alone from then on.
        assert_eq!(
            node.check(&sign(&new, Some(endorsement.clone()), 2)),
            Ok(())
        );
        assert_eq!(node.public(), now);
        assert_eq!(ReleasePub::load_file(&adopted).unwrap(), now);
        let e = node.check(&sign(&old, None, 3)).unwrap_err();
        assert!(e.contains("bad signature"), "{e}");
        // A thief's key claiming an endorsement it does not have: refused.
        let thief_dir = d.path().join("thief");
        cascade_certs::init_release_key(&thief_dir, false).unwrap();
        let thief = ReleaseKey::load(&thief_dir).unwrap();
        let forged = thief.endorse(&thief.public());
        let e = node.check(&sign(&thief, Some(forged), 4)).unwrap_err();
        assert!(e.contains("did not endorse"), "{e}");
        let e = node.check(&sign(&thief, Some(endorsement), 4)).unwrap_err();
        assert!(e.contains("did not endorse"), "{e}");
        // After a restart the node still trusts the new key, whatever release.pub says.
        let restarted = Trust::new(old_pub, None, adopted).unwrap();
        assert_eq!(restarted.public(), now);
        assert!(restarted.check(&sign(&old, None, 5)).is_err());
        assert_eq!(restarted.check(&sign(&new, None, 5)), Ok(()));
    }
}
