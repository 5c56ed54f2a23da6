//! The deployment's own certificate authority and node certificates.
//!
//! A deployment keeps one directory of PEM files:
//! - `ca.pem`, `ca.key`: the private CA (`cascade certs init`);
//! - `NAME.pem`, `NAME.key`: one pair per node (`cascade certs issue`), whose only subject
//!   alternative name is the node's DNS name from the topology.
//!
//! - `release.key` (origin host only) and `release.pub` (every host): the Ed25519 key the
//!   origin signs releases with, and its public half every node checks them against (see
//!   [`ReleaseKey`], [`ReleasePub`]). A stolen relay certificate can then open links, but
//!   cannot make any node accept a release the origin did not sign.
//!
//! Key files are written with mode 0600 and [`Identity::load`] refuses a key that others can
//! read. [`Identity::server_config`] and [`Identity::client_config`] build the rustls configs for
//! mutual TLS 1.3 with the ring provider, trusting only the deployment CA and refusing at the
//! handshake any certificate whose fingerprint is in the [`Revoked`] set. Which *name* a peer
//! may have is the caller's decision: see [`peer_has_name`].
//!
//! A certificate is named by its [`Fingerprint`] (SHA-256 of its DER, what `openssl x509
//! -fingerprint -sha256` prints): that is what a revocation list holds.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use ring::signature::{Ed25519KeyPair, KeyPair as _};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls_pki_types::{ServerName, UnixTime};
use time::OffsetDateTime;

/// The CA's subject; node certificates name it as their issuer.
const CA_COMMON_NAME: &str = "Cascade deployment CA";

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("a CA already exists at {0} (use --force to replace it; every node certificate must then be issued again)")]
    CaExists(PathBuf),
    #[error("no CA at {0}: run `cascade certs init --dir {1}` first")]
    NoCa(PathBuf, PathBuf),
    #[error("{path}: not a valid PEM {what}: {reason}")]
    BadPem {
        path: PathBuf,
        what: &'static str,
        reason: String,
    },
    #[error("{0}: private key is readable by group or others (mode {1:o}); run `chmod 600 {0}`")]
    KeyExposed(PathBuf, u32),
    #[error("{0:?} is not a valid node name (DNS label)")]
    BadName(String),
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    #[error("TLS verifier: {0}")]
    Verifier(String),
    #[error("a release-signing key already exists at {0} (use --force to replace it; every host then needs the new release.pub)")]
    ReleaseKeyExists(PathBuf),
    #[error("{0}: not a release-signing key ({1})")]
    BadReleaseKey(PathBuf, String),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> CertError + '_ {
    move |source| CertError::Io {
        path: path.to_owned(),
        source,
    }
}

/// The crypto provider every TLS config of Cascade uses (one provider for the whole build).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// How long the CA is valid: as long as the longest node certificate it may sign.
pub const CA_DAYS: u32 = 36_500;

fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    // rcgen's default runs to the year 4096; a CA should end, like its certificates.
    let validity = Validity::days(CA_DAYS);
    params.not_before = OffsetDateTime::from(validity.not_before);
    params.not_after = OffsetDateTime::from(validity.not_after);
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, CA_COMMON_NAME);
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params
}

/// Creates `dir/ca.pem` and `dir/ca.key`, and the release-signing key pair
/// (`release.key`, `release.pub`). Refuses to replace an existing CA unless `force`.
pub fn init_ca(dir: &Path, force: bool) -> Result<(), CertError> {
    fs::create_dir_all(dir).map_err(io_err(dir))?;
    let cert_path = dir.join("ca.pem");
    let key_path = dir.join("ca.key");
    if !force && (cert_path.exists() || key_path.exists()) {
        return Err(CertError::CaExists(cert_path));
    }
    let key = KeyPair::generate()?;
    let cert = ca_params().self_signed(&key)?;
    write_private(&key_path, key.serialize_pem().as_bytes())?;
    write_atomic(&cert_path, cert.pem().as_bytes(), 0o644)?;
    init_release_key(dir, true)
}

/// The release-signing key: the origin's private half (`release.key`).
pub const RELEASE_KEY: &str = "release.key";
/// Its public half, on every host (`release.pub`).
pub const RELEASE_PUB: &str = "release.pub";
/// The previous key's signature over the current public key, written by a rotation
/// ([`rotate_release_key`]): lets nodes that trust the previous key move to the current one.
pub const RELEASE_ENDORSEMENT: &str = "release.endorsement";
/// What a release signature covers is prefixed with this, so it can never be mistaken for
/// anything else signed with the same key. Version 2: the root is a BLAKE3 (protocol 4).
const SIGNED_PREFIX: &[u8] = b"cascade release signature v2\0";
/// What an endorsement of a next key covers is prefixed with this.
const ENDORSE_PREFIX: &[u8] = b"cascade release key endorsement v1\0";

/// Replaces the release-signing key in `dir` with a new one endorsed by the current one:
/// writes the new `release.key` and `release.pub`, `release.endorsement` (the old key's
/// signature over the new public key) and keeps the old public key as `release.pub.previous`.
/// Returns the old and new public keys.
pub fn rotate_release_key(dir: &Path) -> Result<(ReleasePub, ReleasePub), CertError> {
    let old = ReleaseKey::load(dir)?;
    let key_path = dir.join(RELEASE_KEY);
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng)
        .map_err(|_| CertError::BadReleaseKey(key_path.clone(), "key generation failed".into()))?;
    let new = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref())
        .map(ReleaseKey)
        .map_err(|e| CertError::BadReleaseKey(key_path.clone(), e.to_string()))?;
    let endorsement = old.endorse(&new.public());
    write_atomic(
        &dir.join("release.pub.previous"),
        format!("{}\n", hex(&old.public().0)).as_bytes(),
        0o644,
    )?;
    write_atomic(
        &dir.join(RELEASE_ENDORSEMENT),
        format!("{}\n", hex(&endorsement)).as_bytes(),
        0o644,
    )?;
    write_private(
        &key_path,
        pem_text("PRIVATE KEY", pkcs8.as_ref()).as_bytes(),
    )?;
    write_atomic(
        &dir.join(RELEASE_PUB),
        format!("{}\n", hex(&new.public().0)).as_bytes(),
        0o644,
    )?;
    Ok((old.public(), new.public()))
}

/// Reads `dir/release.endorsement` if there is one.
pub fn load_endorsement(dir: &Path) -> Result<Option<Vec<u8>>, CertError> {
    let path = dir.join(RELEASE_ENDORSEMENT);
    match fs::read_to_string(&path) {
        Ok(text) => unhex(text.trim())
            .filter(|b| b.len() == 64)
            .map(Some)
            .ok_or_else(|| CertError::BadReleaseKey(path, "expected 128 hex digits".into())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(CertError::Io { path, source: e }),
    }
}

/// Creates `dir/release.key` (mode 0600) and `dir/release.pub`: a new Ed25519 key pair the
/// origin signs releases with. Refuses to replace an existing key unless `force`.
pub fn init_release_key(dir: &Path, force: bool) -> Result<(), CertError> {
    fs::create_dir_all(dir).map_err(io_err(dir))?;
    let (key_path, pub_path) = (dir.join(RELEASE_KEY), dir.join(RELEASE_PUB));
    if !force && (key_path.exists() || pub_path.exists()) {
        return Err(CertError::ReleaseKeyExists(key_path));
    }
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng)
        .map_err(|_| CertError::BadReleaseKey(key_path.clone(), "key generation failed".into()))?;
    let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref())
        .map_err(|e| CertError::BadReleaseKey(key_path.clone(), e.to_string()))?;
    write_private(
        &key_path,
        pem_text("PRIVATE KEY", pkcs8.as_ref()).as_bytes(),
    )?;
    write_atomic(
        &pub_path,
        format!("{}\n", hex(pair.public_key().as_ref())).as_bytes(),
        0o644,
    )?;
    Ok(())
}

/// The origin's release-signing key.
pub struct ReleaseKey(Ed25519KeyPair);

impl std::fmt::Debug for ReleaseKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ReleaseKey(..)")
    }
}

impl ReleaseKey {
    /// Loads `dir/release.key`; refuses one others can read.
    pub fn load(dir: &Path) -> Result<Self, CertError> {
        let path = dir.join(RELEASE_KEY);
        let meta = fs::metadata(&path).map_err(io_err(&path))?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(CertError::KeyExposed(path, mode));
        }
        let der = PrivatePkcs8KeyDer::from_pem_file(&path)
            .map_err(|e| pem_err(&path, "release-signing key", e))?;
        Ed25519KeyPair::from_pkcs8(der.secret_pkcs8_der())
            .map(ReleaseKey)
            .map_err(|e| CertError::BadReleaseKey(path, e.to_string()))
    }

    /// Signs release `version` whose manifest has root digest `root`.
    pub fn sign(&self, version: u64, root: &[u8]) -> Vec<u8> {
        self.0
            .sign(&signed_message(version, root))
            .as_ref()
            .to_vec()
    }

    /// Signs `next` as the key that follows this one.
    pub fn endorse(&self, next: &ReleasePub) -> Vec<u8> {
        let mut m = ENDORSE_PREFIX.to_vec();
        m.extend_from_slice(&next.0);
        self.0.sign(&m).as_ref().to_vec()
    }

    /// The public half.
    pub fn public(&self) -> ReleasePub {
        let mut k = [0u8; 32];
        k.copy_from_slice(self.0.public_key().as_ref());
        ReleasePub(k)
    }
}

/// The public half of the release-signing key, which every node checks releases against.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct ReleasePub(pub [u8; 32]);

impl std::fmt::Debug for ReleasePub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ReleasePub({})", hex(&self.0))
    }
}

impl std::fmt::Display for ReleasePub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&hex(&self.0))
    }
}

impl ReleasePub {
    /// Loads `dir/release.pub` (64 hex digits).
    pub fn load(dir: &Path) -> Result<Self, CertError> {
        Self::load_file(&dir.join(RELEASE_PUB))
    }

    /// Loads a public key file (64 hex digits).
    pub fn load_file(path: &Path) -> Result<Self, CertError> {
        let path = path.to_owned();
        let text = fs::read_to_string(&path).map_err(io_err(&path))?;
        let bytes = unhex(text.trim())
            .filter(|b| b.len() == 32)
            .ok_or_else(|| {
                CertError::BadReleaseKey(path.clone(), "expected 64 hex digits".into())
            })?;
        let mut k = [0u8; 32];
        k.copy_from_slice(&bytes);
        Ok(ReleasePub(k))
    }

    /// Writes this key to `path` (64 hex digits), replacing it atomically.
    pub fn save(&self, path: &Path) -> Result<(), CertError> {
        write_atomic(path, format!("{}\n", hex(&self.0)).as_bytes(), 0o600)
    }

    /// Whether `endorsement` is this key's signature over `next` (see [`ReleaseKey::endorse`]).
    pub fn endorses(&self, next: &ReleasePub, endorsement: &[u8]) -> bool {
        let mut m = ENDORSE_PREFIX.to_vec();
        m.extend_from_slice(&next.0);
        ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, &self.0)
            .verify(&m, endorsement)
            .is_ok()
    }

    /// Whether `signature` is the origin's for release `version` with manifest root `root`.
    pub fn verify(&self, version: u64, root: &[u8], signature: &[u8]) -> bool {
        ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, &self.0)
            .verify(&signed_message(version, root), signature)
            .is_ok()
    }
}

fn signed_message(version: u64, root: &[u8]) -> Vec<u8> {
    let mut m = SIGNED_PREFIX.to_vec();
    m.extend_from_slice(&version.to_be_bytes());
    m.extend_from_slice(root);
    m
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 || !s.is_ascii() {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok())
        .collect()
}

/// `der` as a PEM block labelled `label`.
fn pem_text(label: &str, der: &[u8]) -> String {
    const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut b64 = String::new();
    for chunk in der.chunks(3) {
        let n = chunk.len();
        let v = (u32::from(chunk[0]) << 16)
            | (u32::from(*chunk.get(1).unwrap_or(&0)) << 8)
            | u32::from(*chunk.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= n {
                b64.push(B64[(v >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                b64.push('=');
            }
        }
    }
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// What [`issue`] did for one name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Issued {
    Created(String),
    AlreadyPresent(String),
}

/// Default lifetime of node certificates.
pub const DEFAULT_DAYS: u32 = 3650;

/// When a certificate is valid.
#[derive(Debug, Clone, Copy)]
pub struct Validity {
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

impl Validity {
    /// From an hour ago (clock skew) to `days` from now.
    pub fn days(days: u32) -> Self {
        let now = SystemTime::now();
        Validity {
            not_before: now - Duration::from_secs(3600),
            not_after: now + Duration::from_secs(u64::from(days) * 86_400),
        }
    }
}

/// Issues `dir/NAME.pem` + `dir/NAME.key` for each name that lacks them, signed by the CA in
/// `dir`, valid for [`DEFAULT_DAYS`]. Existing pairs are kept.
pub fn issue<S: AsRef<str>>(dir: &Path, names: &[S]) -> Result<Vec<Issued>, CertError> {
    issue_with(dir, names, Validity::days(DEFAULT_DAYS))
}

/// [`issue`] with an explicit validity period.
pub fn issue_with<S: AsRef<str>>(
    dir: &Path,
    names: &[S],
    validity: Validity,
) -> Result<Vec<Issued>, CertError> {
    let issuer = ca_issuer(dir)?;
    let mut out = Vec::new();
    for name in names {
        let name = name.as_ref();
        if !cascade_topology::is_dns_label(name) {
            return Err(CertError::BadName(name.to_owned()));
        }
        let cert_path = dir.join(format!("{name}.pem"));
        let key_path = dir.join(format!("{name}.key"));
        if cert_path.exists() && key_path.exists() {
            out.push(Issued::AlreadyPresent(name.to_owned()));
            continue;
        }
        issue_one(dir, &issuer, name, validity)?;
        out.push(Issued::Created(name.to_owned()));
    }
    Ok(out)
}

/// Loads the CA in `dir` as an issuer.
fn ca_issuer(dir: &Path) -> Result<Issuer<'static, KeyPair>, CertError> {
    let ca_key_path = dir.join("ca.key");
    if !ca_key_path.exists() || !dir.join("ca.pem").exists() {
        return Err(CertError::NoCa(dir.join("ca.pem"), dir.to_owned()));
    }
    let ca_key_pem = fs::read_to_string(&ca_key_path).map_err(io_err(&ca_key_path))?;
    let ca_key = KeyPair::from_pem(&ca_key_pem).map_err(|e| CertError::BadPem {
        path: ca_key_path.clone(),
        what: "private key",
        reason: e.to_string(),
    })?;
    Ok(Issuer::new(ca_params(), ca_key))
}

/// Writes a new key and certificate for `name` (replacing any), key first: a node that reads
/// the pair between the two writes finds them mismatched, keeps what it had, and reads them
/// again once the certificate is written. Returns the new certificate's fingerprint.
fn issue_one(
    dir: &Path,
    issuer: &Issuer<'_, KeyPair>,
    name: &str,
    validity: Validity,
) -> Result<Fingerprint, CertError> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(vec![name.to_owned()])?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    params.distinguished_name = dn;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.not_before = OffsetDateTime::from(validity.not_before);
    params.not_after = OffsetDateTime::from(validity.not_after);
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let cert = params.signed_by(&key, issuer)?;
    write_private(
        &dir.join(format!("{name}.key")),
        key.serialize_pem().as_bytes(),
    )?;
    write_atomic(
        &dir.join(format!("{name}.pem")),
        cert.pem().as_bytes(),
        0o644,
    )?;
    Ok(Fingerprint::of(cert.der()))
}

/// Issues `name` a new key and certificate in place of the ones it has (renewal before
/// expiry, or replacement of a stolen key): a running node picks them up without a restart.
/// Returns the old certificate's fingerprint (to revoke it if its key was stolen) and the new
/// one's.
pub fn renew(
    dir: &Path,
    name: &str,
    validity: Validity,
) -> Result<(Option<Fingerprint>, Fingerprint), CertError> {
    if !cascade_topology::is_dns_label(name) {
        return Err(CertError::BadName(name.to_owned()));
    }
    let issuer = ca_issuer(dir)?;
    let old = fingerprint_file(&dir.join(format!("{name}.pem"))).ok();
    let new = issue_one(dir, &issuer, name, validity)?;
    Ok((old, new))
}

fn write_private(path: &Path, data: &[u8]) -> Result<(), CertError> {
    write_atomic(path, data, 0o600)
}

/// Writes `data` to a temporary file created with `mode`, then renames it over `path`.
fn write_atomic(path: &Path, data: &[u8], mode: u32) -> Result<(), CertError> {
    let tmp = path.with_extension("tmp");
    let _ = fs::remove_file(&tmp);
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io_err(&tmp))?;
    f.write_all(data)
        .and_then(|()| f.sync_all())
        .map_err(io_err(&tmp))?;
    fs::rename(&tmp, path).map_err(io_err(path))?;
    // The rename must survive a crash too: flush the directory entry.
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

/// A node's certificate chain and key plus the deployment CA it trusts.
#[derive(Debug)]
pub struct Identity {
    pub name: String,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    roots: Arc<RootCertStore>,
}

impl Clone for Identity {
    fn clone(&self) -> Self {
        Identity {
            name: self.name.clone(),
            chain: self.chain.clone(),
            key: self.key.clone_key(),
            roots: self.roots.clone(),
        }
    }
}

impl Identity {
    /// Loads `dir/ca.pem`, `dir/NAME.pem` and `dir/NAME.key`; refuses a key readable by others.
    pub fn load(dir: &Path, name: &str) -> Result<Self, CertError> {
        let ca_path = dir.join("ca.pem");
        let cert_path = dir.join(format!("{name}.pem"));
        let key_path = dir.join(format!("{name}.key"));
        let ca = read_certs(&ca_path)?;
        let chain = read_certs(&cert_path)?;
        let meta = fs::metadata(&key_path).map_err(io_err(&key_path))?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(CertError::KeyExposed(key_path, mode));
        }
        let key = PrivateKeyDer::from_pem_file(&key_path)
            .map_err(|e| pem_err(&key_path, "private key", e))?;
        let mut roots = RootCertStore::empty();
        for c in ca {
            roots.add(c).map_err(|e| CertError::BadPem {
                path: ca_path.clone(),
                what: "CA certificate",
                reason: e.to_string(),
            })?;
        }
        Ok(Identity {
            name: name.to_owned(),
            chain,
            key,
            roots: Arc::new(roots),
        })
    }

    /// The fingerprint of this node's own certificate.
    pub fn fingerprint(&self) -> Fingerprint {
        Fingerprint::of(&self.chain[0])
    }

    /// A server config that requires a client certificate from the deployment CA, not in
    /// `revoked`.
    pub fn server_config(
        &self,
        alpn: &[u8],
        revoked: &Revoked,
    ) -> Result<rustls::ServerConfig, CertError> {
        let provider = provider();
        let inner =
            WebPkiClientVerifier::builder_with_provider(self.roots.clone(), provider.clone())
                .build()
                .map_err(|e| CertError::Verifier(e.to_string()))?;
        let verifier = Arc::new(Unrevoked {
            inner,
            revoked: revoked.clone(),
        });
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.chain.clone(), self.key.clone_key())?;
        cfg.alpn_protocols = vec![alpn.to_vec()];
        Ok(cfg)
    }

    /// A client config that presents this identity and trusts only the deployment CA, refusing
    /// a server certificate in `revoked`. The server name passed when connecting is what the
    /// server's certificate must carry.
    pub fn client_config(
        &self,
        alpn: &[u8],
        revoked: &Revoked,
    ) -> Result<rustls::ClientConfig, CertError> {
        let provider = provider();
        let inner =
            WebPkiServerVerifier::builder_with_provider(self.roots.clone(), provider.clone())
                .build()
                .map_err(|e| CertError::Verifier(e.to_string()))?;
        let verifier = Arc::new(Unrevoked {
            inner,
            revoked: revoked.clone(),
        });
        let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_client_auth_cert(self.chain.clone(), self.key.clone_key())?;
        cfg.alpn_protocols = vec![alpn.to_vec()];
        Ok(cfg)
    }
}

/// The SHA-256 of a certificate's DER encoding.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Fingerprint(pub [u8; 32]);

impl Fingerprint {
    pub fn of(cert: &CertificateDer<'_>) -> Self {
        let d = ring::digest::digest(&ring::digest::SHA256, cert.as_ref());
        Fingerprint(d.as_ref().try_into().expect("SHA-256 is 32 bytes"))
    }

    /// Parses `sha256:` followed by 64 hex digits, or the 64 digits alone; colons between
    /// bytes (as `openssl x509 -fingerprint` prints them) and either case are accepted.
    pub fn parse(text: &str) -> Option<Self> {
        let t = text.trim();
        let t = t
            .strip_prefix("sha256:")
            .or_else(|| t.strip_prefix("SHA256:"))
            .or_else(|| t.strip_prefix("sha256 Fingerprint="))
            .unwrap_or(t);
        let hex: String = t.chars().filter(|c| *c != ':').collect();
        let bytes = unhex(&hex)?;
        Some(Fingerprint(bytes.try_into().ok()?))
    }
}

impl std::fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "sha256:{}", hex(&self.0))
    }
}

impl std::fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

/// Certificates refused at every handshake, whatever CA signed them.
pub type Revoked = Arc<std::collections::BTreeSet<Fingerprint>>;

/// The fingerprint of the certificate in the PEM file at `path`.
pub fn fingerprint_file(path: &Path) -> Result<Fingerprint, CertError> {
    Ok(Fingerprint::of(&read_certs(path)?[0]))
}

/// A WebPKI verifier (client or server side) that also refuses revoked certificates.
#[derive(Debug)]
struct Unrevoked<V: ?Sized> {
    inner: Arc<V>,
    revoked: Revoked,
}

impl<V: ?Sized> Unrevoked<V> {
    fn check(&self, end_entity: &CertificateDer<'_>) -> Result<(), rustls::Error> {
        if self.revoked.contains(&Fingerprint::of(end_entity)) {
            return Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::Revoked,
            ));
        }
        Ok(())
    }
}

/// The handshake-signature methods both verifier traits have, passed to the inner verifier
/// unchanged (revocation is about the certificate, checked once it is verified).
macro_rules! delegate_signatures {
    () => {
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            self.inner.verify_tls12_signature(message, cert, dss)
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            self.inner.verify_tls13_signature(message, cert, dss)
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.inner.supported_verify_schemes()
        }
    };
}

impl ClientCertVerifier for Unrevoked<dyn ClientCertVerifier> {
    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let ok = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        self.check(end_entity)?;
        Ok(ok)
    }

    delegate_signatures!();
}

impl ServerCertVerifier for Unrevoked<WebPkiServerVerifier> {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let ok = self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )?;
        self.check(end_entity)?;
        Ok(ok)
    }

    delegate_signatures!();
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, CertError> {
    if !path.exists() {
        return Err(CertError::Io {
            path: path.to_owned(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "certificate file not found"),
        });
    }
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| pem_err(path, "certificate", e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_err(path, "certificate", e))?;
    if certs.is_empty() {
        return Err(CertError::BadPem {
            path: path.to_owned(),
            what: "certificate",
            reason: "no certificate in file".into(),
        });
    }
    Ok(certs)
}

fn pem_err(path: &Path, what: &'static str, e: rustls_pki_types::pem::Error) -> CertError {
    match e {
        rustls_pki_types::pem::Error::Io(source) => CertError::Io {
            path: path.to_owned(),
            source,
        },
        other => CertError::BadPem {
            path: path.to_owned(),
            what,
            reason: format!("{other:?}"),
        },
    }
}

/// Whether `cert` (already verified against the CA by the TLS handshake) is valid for `name`.
pub fn peer_has_name(cert: &CertificateDer<'_>, name: &str) -> bool {
    let Ok(ee) = webpki_end_entity(cert) else {
        return false;
    };
    let Ok(server_name) = rustls_pki_types::ServerName::try_from(name) else {
        return false;
    };
    ee.verify_is_valid_for_subject_name(&server_name).is_ok()
}

fn webpki_end_entity<'a>(
    cert: &'a CertificateDer<'a>,
) -> Result<webpki::EndEntityCert<'a>, webpki::Error> {
    webpki::EndEntityCert::try_from(cert)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_refuses_overwrite_without_force() {
        let d = tempfile::tempdir().unwrap();
        init_ca(d.path(), false).unwrap();
        let before = fs::read(d.path().join("ca.pem")).unwrap();
        assert!(matches!(
            init_ca(d.path(), false),
            Err(CertError::CaExists(_))
        ));
        assert_eq!(before, fs::read(d.path().join("ca.pem")).unwrap());
        init_ca(d.path(), true).unwrap();
        assert_ne!(before, fs::read(d.path().join("ca.pem")).unwrap());
        let mode = fs::metadata(d.path().join("ca.key"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn issue_creates_missing_pairs_only() {
        let d = tempfile::tempdir().unwrap();
        init_ca(d.path(), false).unwrap();
        let got = issue(d.path(), &["web-1", "web-2"]).unwrap();
        assert_eq!(
            got,
            vec![
                Issued::Created("web-1".into()),
                Issued::Created("web-2".into())
            ]
        );
        let got = issue(d.path(), &["web-1"]).unwrap();
        assert_eq!(got, vec![Issued::AlreadyPresent("web-1".into())]);
        let mode = fs::metadata(d.path().join("web-1.key"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);
        let id = Identity::load(d.path(), "web-1").unwrap();
        assert!(peer_has_name(&id.chain[0], "web-1"));
        assert!(!peer_has_name(&id.chain[0], "web-2"));
        assert!(matches!(
            issue(d.path(), &["Bad_Name"]),
            Err(CertError::BadName(_))
        ));
    }

    #[test]
    fn the_ca_ends_when_its_longest_certificates_do() {
        let d = tempfile::tempdir().unwrap();
        init_ca(d.path(), false).unwrap();
        let der = read_certs(&d.path().join("ca.pem")).unwrap().remove(0);
        let der = der.as_ref();
        // Validity is encoded as GeneralizedTime from 2050 on: "YYYYMMDDHHMMSSZ".
        let end = OffsetDateTime::from(SystemTime::now() + Duration::from_secs(36_500 * 86_400));
        let year = end.year().to_string();
        assert!(
            der.windows(4).any(|w| w == year.as_bytes()),
            "no {year} in the CA"
        );
        assert!(
            !der.windows(8).any(|w| w == b"40960101"),
            "the CA runs to 4096"
        );
    }

    #[test]
    fn issue_without_ca_names_the_fix() {
        let d = tempfile::tempdir().unwrap();
        let e = issue(d.path(), &["a"]).unwrap_err().to_string();
        assert!(e.contains("cascade certs init"), "{e}");
    }

    #[test]
    fn exposed_key_is_refused() {
        let d = tempfile::tempdir().unwrap();
        init_ca(d.path(), false).unwrap();
        issue(d.path(), &["n"]).unwrap();
        let key = d.path().join("n.key");
        fs::set_permissions(&key, fs::Permissions::from_mode(0o644)).unwrap();
        let e = Identity::load(d.path(), "n").unwrap_err().to_string();
        assert!(e.contains("n.key") && e.contains("readable"), "{e}");
    }

    #[test]
    fn releases_are_signed_by_the_origin_key_only() {
        let d = tempfile::tempdir().unwrap();
        init_ca(d.path(), false).unwrap();
        let key = ReleaseKey::load(d.path()).unwrap();
        let public = ReleasePub::load(d.path()).unwrap();
        assert_eq!(key.public(), public);
        let sig = key.sign(7, &[1; 16]);
        assert!(public.verify(7, &[1; 16], &sig));
        assert!(!public.verify(8, &[1; 16], &sig), "another version");
        assert!(!public.verify(7, &[2; 16], &sig), "another tree");
        assert!(!public.verify(7, &[1; 16], &[]), "no signature");
        // Another deployment's key signs nothing this one accepts.
        let other = tempfile::tempdir().unwrap();
        init_release_key(other.path(), false).unwrap();
        let forged = ReleaseKey::load(other.path()).unwrap().sign(7, &[1; 16]);
        assert!(!public.verify(7, &[1; 16], &forged));
        assert!(matches!(
            init_release_key(d.path(), false),
            Err(CertError::ReleaseKeyExists(_))
        ));
        let mode = fs::metadata(d.path().join(RELEASE_KEY))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);
        fs::write(d.path().join(RELEASE_PUB), "zz\n").unwrap();
        let e = ReleasePub::load(d.path()).unwrap_err().to_string();
        assert!(e.contains("release.pub") && e.contains("hex"), "{e}");
    }

    #[test]
    fn missing_certificate_names_the_path() {
        let d = tempfile::tempdir().unwrap();
        init_ca(d.path(), false).unwrap();
        let e = Identity::load(d.path(), "ghost").unwrap_err().to_string();
        assert!(e.contains("ghost.pem"), "{e}");
    }
}
