//! The node's own state files (`release.bin`, `pending.bin`, `statcache.bin`) in a small
//! versioned format of their own, so the wire protocol can change without making a node
//! unable to read its state after an upgrade.
//!
//! # Format 3
//! ```text
//! magic   8 bytes   "CASCADE\0"
//! kind    1 byte    1 = release, 3 = stat cache (2: a stat cache by path, no longer read)
//! format  2 bytes   little endian; this build writes 3
//! length  8 bytes   little endian; bytes of payload
//! check  16 bytes   a release: MD5 of its version, manifest root digest and signature; a
//!                   cache: MD5 of the payload (a damaged file is refused, never half-used)
//! payload           postcard 1 of the record types below
//! ```
//! The record types are frozen: they change only with a new format number. Format 3 added
//! BLAKE3 digests to every file and chunk (bodies are named by them) and moved from bincode
//! to postcard. A release saved in an older format (0: a bare wire frame, 1, 2: bincode)
//! cannot be used as it is (its manifest has no BLAKE3 digests, and the store named bodies by
//! MD5): only its version is read ([`Loaded::Older`]), so that the origin numbers its next
//! release above it, and the release is fetched again. A stat cache of an older format is
//! simply rebuilt.
//!
//! Files are replaced atomically: written to a temporary name, flushed (releases), renamed.

use std::borrow::Cow;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use fs_err as fs;
use fs_err::os::unix::fs::OpenOptionsExt;
use md5::{Digest, Md5 as Md5Hasher};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::tree::{Blake3, Entry, EntryKind, Manifest, Md5, Release, Rotation, Sums};

const MAGIC: &[u8; 8] = b"CASCADE\0";
/// The state format this build writes (and the newest it reads).
pub const FORMAT: u16 = 3;
const HEADER: usize = 8 + 1 + 2 + 8 + 16;
/// Largest state file read (a manifest of several million entries).
const MAX_PAYLOAD: u64 = 1 << 32;

/// What a state file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    Release = 1,
    /// A stat cache of whole stats, aligned with the entries of the release it was saved for
    /// (kind 2 was keyed by path: such a file is refused, and the cache rebuilt). Read, not
    /// written.
    FullStatCache = 3,
    /// A stat cache of stat digests, aligned the same way.
    StatCache = 4,
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The file could not be read or written (the message names it).
    #[error(transparent)]
    Io(#[from] io::Error),
    #[error(
        "{path}: saved release is unreadable ({reason}); move it away to fetch the release again"
    )]
    Unreadable { path: PathBuf, reason: String },
    #[error("{path}: saved in state format {found}, newer than this Cascade reads ({FORMAT}): run the newer version, or move the file away to fetch the release again")]
    Newer { path: PathBuf, found: u16 },
}

/// Saves `release` to `path` (replacing it atomically). Encoded straight into the file: a
/// release of a million files is some 80 MB encoded, which is not held in memory first.
pub fn save_release(path: &Path, release: &Release) -> Result<(), StateError> {
    let record = ReleaseRecord::from(release);
    write_file_with(path, Kind::Release, Some(release_check(release)), |out| {
        encode_into(path, &record, out)
    })
}

/// Encodes `value` into `out`, returning the writer's own error when a write fails.
fn encode_into<T: Serialize>(path: &Path, value: &T, out: &mut dyn Write) -> io::Result<()> {
    let mut out = KeepError { out, error: None };
    // postcard writes a byte at a time: buffered here, where that is a copy into an array,
    // the writers below (dyn, hashing) see large pieces.
    let mut buffered = io::BufWriter::with_capacity(64 * 1024, &mut out);
    let done = postcard::to_io(value, &mut buffered)
        .map(|_| ())
        .and_then(|()| {
            buffered
                .flush()
                .map_err(|_| postcard::Error::SerializeBufferFull)
        });
    drop(buffered);
    // postcard reports a failed write as a full buffer: the write's own error (a full disk,
    // say) is the one to name.
    match (done, out.error) {
        (Ok(()), _) => Ok(()),
        (Err(_), Some(e)) => Err(e),
        (Err(e), None) => Err(io::Error::other(format!(
            "encoding {}: {e}",
            path.display()
        ))),
    }
}

/// A writer that keeps the first error its inner writer returned, for an encoder that
/// replaces it with one of its own.
struct KeepError<'a> {
    out: &'a mut dyn Write,
    error: Option<io::Error>,
}

impl Write for KeepError<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.out.write(buf).inspect_err(|e| {
            if e.kind() != io::ErrorKind::Interrupted {
                self.error
                    .get_or_insert_with(|| io::Error::new(e.kind(), e.to_string()));
            }
        })
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// Makes the release saved at `from` (by [`save_release`], so already flushed) the one at
/// `to`, atomically: the same as saving it there again, without writing it again.
pub fn promote(from: &Path, to: &Path) -> Result<(), StateError> {
    fs::rename(from, to)?;
    let dir = to.parent().filter(|p| !p.as_os_str().is_empty());
    fs::File::open(dir.unwrap_or(Path::new(".")))?.sync_all()?;
    Ok(())
}

/// What a release file held.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Loaded {
    Release(Box<Release>),
    /// A release saved by an older Cascade (state format below 3): only its version is known.
    Older {
        version: u64,
        format: u16,
    },
}

/// Loads the release saved at `path`; `None` if there is none.
pub fn load_release(path: &Path) -> Result<Option<Loaded>, StateError> {
    let Some(file) = read_file(path, Kind::Release)? else {
        return Ok(None);
    };
    let unreadable = |reason: String| StateError::Unreadable {
        path: path.to_owned(),
        reason,
    };
    if file.format < 3 {
        let version = older_version(&file.payload).ok_or_else(|| {
            unreadable(format!(
                "state format {}: no version number at its start",
                file.format
            ))
        })?;
        return Ok(Some(Loaded::Older {
            version,
            format: file.format,
        }));
    }
    let record: ReleaseRecord<EntriesIn> = decode(&file.payload).map_err(unreadable)?;
    let release = record
        .into_release()
        .map_err(|e| unreadable(e.to_string()))?;
    match file.check {
        Some(check) if check != release_check(&release) => Err(unreadable(
            "damaged: the release does not match its digest".into(),
        )),
        _ => Ok(Some(Loaded::Release(Box::new(release)))),
    }
}

/// The version a release of state format 0 to 2 starts with: bincode 2's varint (one byte
/// below 251; else 251, 252 or 253 then 2, 4 or 8 bytes little endian).
fn older_version(payload: &[u8]) -> Option<u64> {
    let le = |n: usize| -> Option<u64> {
        let bytes = payload.get(1..1 + n)?;
        let mut buf = [0u8; 8];
        buf[..n].copy_from_slice(bytes);
        Some(u64::from_le_bytes(buf))
    };
    match *payload.first()? {
        b @ 0..=250 => Some(u64::from(b)),
        251 => le(2),
        252 => le(4),
        253 => le(8),
        _ => None,
    }
}

/// A release's check digest: of its version, its signed digest, which covers every entry
/// (path, type, mode, size, mtime, digests) and the revocations, its signature and its key
/// endorsement. Costs nothing to
/// compute on save (the root is known) or on load (the hash tree is rebuilt to validate the
/// manifest anyway).
fn release_check(r: &Release) -> Md5 {
    let mut buf = r.version.to_le_bytes().to_vec();
    buf.extend_from_slice(&r.signed_digest().0);
    buf.extend_from_slice(&r.signature);
    if let Some(rot) = &r.rotation {
        buf.extend_from_slice(&rot.next);
        buf.extend_from_slice(&rot.endorsement);
    }
    Md5::of(&buf)
}

/// Writes `value` as a state file of `kind` to `path` (replacing it atomically), checked
/// by the MD5 of its payload.
pub fn write<T: Serialize>(path: &Path, kind: Kind, value: &T) -> Result<(), StateError> {
    // Encoded straight into the file, hashed on the way: the stat cache of a million files
    // is some 30 MB encoded, not held in memory first.
    write_file_with(path, kind, None, |out| encode_into(path, value, out))
}

/// Reads a state file of `kind` written by [`write`]; `None` if there is none. A file that is
/// damaged, of another kind or of another format is an error (a cache may treat it as empty).
pub fn read<T: DeserializeOwned>(path: &Path, kind: Kind) -> Result<Option<T>, StateError> {
    let Some(file) = read_file(path, kind)? else {
        return Ok(None);
    };
    let unreadable = |reason: String| StateError::Unreadable {
        path: path.to_owned(),
        reason,
    };
    match file.check {
        _ if file.format < FORMAT => {
            Err(unreadable(format!("saved in state format {}", file.format)))
        }
        None => Err(unreadable("saved before state format 1".into())),
        Some(check) if check != Md5::of(&file.payload) => Err(unreadable(
            "damaged: the payload does not match its MD5".into(),
        )),
        Some(_) => decode(&file.payload).map(Some).map_err(unreadable),
    }
}

#[cfg(test)]
fn encode<T: Serialize>(path: &Path, value: &T) -> Result<Vec<u8>, StateError> {
    Ok(postcard::to_stdvec(value)
        .map_err(|e| io::Error::other(format!("encoding {}: {e}", path.display())))?)
}

#[cfg(test)]
fn write_file(path: &Path, kind: Kind, payload: &[u8], check: Md5) -> Result<(), StateError> {
    write_file_with(path, kind, Some(check), |out| out.write_all(payload))
}

/// Where a state file's header holds the payload's length, then its check.
const LENGTH_AT: u64 = (MAGIC.len() + 1 + 2) as u64;
const CHECK_AT: u64 = LENGTH_AT + 8;

/// A writer that hashes what passes through it.
struct Hashing<'a> {
    out: &'a mut dyn Write,
    md5: Md5Hasher,
}

impl Write for Hashing<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.out.write(buf)?;
        self.md5.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// Writes a state file whose payload `payload` writes (through a buffer), then fills in its
/// length in the header, and its check: `check`, or the MD5 of the payload (`None`), taken
/// as it was written.
fn write_file_with(
    path: &Path,
    kind: Kind,
    check: Option<Md5>,
    payload: impl FnOnce(&mut dyn Write) -> io::Result<()>,
) -> Result<(), StateError> {
    use std::os::unix::fs::FileExt;
    let mut header = Vec::with_capacity(HEADER);
    header.extend_from_slice(MAGIC);
    header.push(kind as u8);
    header.extend_from_slice(&FORMAT.to_le_bytes());
    header.extend_from_slice(&0u64.to_le_bytes());
    header.extend_from_slice(&check.unwrap_or(Md5([0; 16])).0);
    let tmp = path.with_extension("tmp");
    // The node user's alone: a manifest names every path of the tree, private ones too.
    let _ = fs::remove_file(&tmp);
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(&header)?;
    let named = |e: io::Error| io::Error::new(e.kind(), format!("writing {}: {e}", tmp.display()));
    let mut out = io::BufWriter::with_capacity(256 * 1024, f.file());
    let written = match check {
        Some(_) => payload(&mut out).map(|()| None),
        None => {
            let mut hashing = Hashing {
                out: &mut out,
                md5: Md5Hasher::new(),
            };
            payload(&mut hashing).map(|()| Some(Md5(hashing.md5.finalize().into())))
        }
    };
    let hashed = written
        .and_then(|h| out.flush().map(|()| h))
        .map_err(named)?;
    drop(out);
    let len = io::Seek::stream_position(&mut f)? - HEADER as u64;
    f.file()
        .write_all_at(&len.to_le_bytes(), LENGTH_AT)
        .map_err(named)?;
    if let Some(check) = hashed {
        f.file().write_all_at(&check.0, CHECK_AT).map_err(named)?;
    }
    // A release must survive a crash once saved; a cache lost in one costs a rehash.
    if kind == Kind::Release {
        f.sync_all()?;
    }
    fs::rename(&tmp, path)?;
    if kind == Kind::Release {
        // The rename itself must survive a crash too: flush the directory entry.
        let dir = path.parent().filter(|p| !p.as_os_str().is_empty());
        fs::File::open(dir.unwrap_or(Path::new(".")))?.sync_all()?;
    }
    Ok(())
}

/// A state file's header, read and checked.
struct File {
    format: u16,
    /// The header's check digest (format 1 and later).
    check: Option<Md5>,
    payload: Vec<u8>,
}

/// The header and payload of the state file at `path`.
fn read_file(path: &Path, kind: Kind) -> Result<Option<File>, StateError> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    parse(bytes, kind).map(Some).map_err(|e| match e {
        Bad::Newer(found) => StateError::Newer {
            path: path.to_owned(),
            found,
        },
        Bad::Reason(reason) => StateError::Unreadable {
            path: path.to_owned(),
            reason,
        },
    })
}

enum Bad {
    Newer(u16),
    Reason(String),
}

/// Checks the header and splits off the payload.
fn parse(mut bytes: Vec<u8>, kind: Kind) -> Result<File, Bad> {
    let reason = |s: &str| Bad::Reason(s.to_owned());
    if !bytes.starts_with(MAGIC) {
        // Format 0: a wire frame of protocol 2, length first.
        let len = bytes
            .get(..4)
            .map(|h| u32::from_be_bytes(h.try_into().expect("four bytes")) as usize);
        return match len {
            Some(len) if kind == Kind::Release && len == bytes.len() - 4 => Ok(File {
                format: 0,
                check: None,
                payload: bytes.split_off(4),
            }),
            _ => Err(reason("not a Cascade state file")),
        };
    }
    if bytes.len() < HEADER {
        return Err(reason("truncated header"));
    }
    if bytes[8] != kind as u8 {
        return Err(Bad::Reason(format!(
            "holds state of kind {}, not {}",
            bytes[8], kind as u8
        )));
    }
    let format = u16::from_le_bytes([bytes[9], bytes[10]]);
    if format > FORMAT {
        return Err(Bad::Newer(format));
    }
    let len = u64::from_le_bytes(bytes[11..19].try_into().expect("eight bytes"));
    let check = Md5(bytes[19..35].try_into().expect("sixteen bytes"));
    let payload = bytes.split_off(HEADER);
    if len > MAX_PAYLOAD || payload.len() as u64 != len {
        return Err(Bad::Reason(format!(
            "truncated: {} of {len} payload bytes",
            payload.len()
        )));
    }
    Ok(File {
        format,
        check: Some(check),
        payload,
    })
}

fn decode<T: DeserializeOwned>(payload: &[u8]) -> Result<T, String> {
    match postcard::take_from_bytes(payload) {
        Ok((value, [])) => Ok(value),
        Ok((_, rest)) => Err(format!("{} trailing bytes", rest.len())),
        Err(e) => Err(e.to_string()),
    }
}

/// A release as format 3 stores it. Frozen: never change; add a format instead. Its
/// entries are converted one at a time as they are written or read ([`EntriesOut`],
/// [`EntriesIn`]): saving or loading a release makes no second list of its entries (at a
/// million files, some 120 MB).
#[derive(Debug, Serialize, Deserialize)]
struct ReleaseRecord<'a, E> {
    version: u64,
    entries: E,
    revoked: Cow<'a, [[u8; 32]]>,
    signature: Cow<'a, [u8]>,
    topology: Option<Cow<'a, str>>,
    rotation: Option<Rotation>,
}

#[derive(Debug, Serialize, Deserialize)]
struct EntryRecord<'a> {
    path: Cow<'a, str>,
    mode: u32,
    kind: KindRecord<'a>,
}

#[derive(Debug, Serialize, Deserialize)]
enum KindRecord<'a> {
    File {
        size: u64,
        md5: [u8; 16],
        blake3: [u8; 32],
        mtime: i64,
        /// MD5 (zero since protocol 7: see [`crate::tree::Sums`]) and BLAKE3 chaining value of
        /// each chunk.
        chunks: Vec<([u8; 16], [u8; 32])>,
    },
    Dir,
    Symlink {
        target: Cow<'a, str>,
    },
}

impl<'a> From<&'a Entry> for EntryRecord<'a> {
    fn from(e: &'a Entry) -> Self {
        EntryRecord {
            path: Cow::Borrowed(&e.path),
            mode: e.mode,
            kind: match &e.kind {
                EntryKind::File {
                    size,
                    md5,
                    blake3,
                    mtime,
                    chunks,
                } => KindRecord::File {
                    size: *size,
                    md5: md5.0,
                    blake3: blake3.0,
                    mtime: *mtime,
                    chunks: chunks.iter().map(|c| (c.md5.0, c.blake3.0)).collect(),
                },
                EntryKind::Dir => KindRecord::Dir,
                EntryKind::Symlink { target } => KindRecord::Symlink {
                    target: Cow::Borrowed(target),
                },
            },
        }
    }
}

impl From<EntryRecord<'_>> for Entry {
    fn from(e: EntryRecord<'_>) -> Self {
        Entry {
            path: e.path.into_owned(),
            mode: e.mode,
            kind: match e.kind {
                KindRecord::File {
                    size,
                    md5,
                    blake3,
                    mtime,
                    chunks,
                } => EntryKind::File {
                    size,
                    md5: Md5(md5),
                    blake3: Blake3(blake3),
                    mtime,
                    chunks: chunks
                        .into_iter()
                        .map(|(md5, blake3)| Sums {
                            md5: Md5(md5),
                            blake3: Blake3(blake3),
                        })
                        .collect(),
                },
                KindRecord::Dir => EntryKind::Dir,
                KindRecord::Symlink { target } => EntryKind::Symlink {
                    target: target.into_owned(),
                },
            },
        }
    }
}

/// A release's entries written as a sequence of [`EntryRecord`]s (the same bytes as a
/// vector of them), each made as it is written.
struct EntriesOut<'a>(&'a [Arc<Entry>]);

impl Serialize for EntriesOut<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.iter().map(|e| EntryRecord::from(&**e)))
    }
}

/// A sequence of [`EntryRecord`]s read straight into entries.
struct EntriesIn(Vec<Arc<Entry>>);

impl<'de> Deserialize<'de> for EntriesIn {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Records;
        impl<'de> serde::de::Visitor<'de> for Records {
            type Value = EntriesIn;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a sequence of entries")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<EntriesIn, A::Error> {
                // (A length from the file is a hint only: capped, so a damaged one cannot
                // ask for all memory before the entries run out.)
                let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1 << 20));
                while let Some(e) = seq.next_element::<EntryRecord>()? {
                    out.push(Arc::new(Entry::from(e)));
                }
                Ok(EntriesIn(out))
            }
        }
        d.deserialize_seq(Records)
    }
}

impl<'a> From<&'a Release> for ReleaseRecord<'a, EntriesOut<'a>> {
    fn from(r: &'a Release) -> Self {
        ReleaseRecord {
            version: r.version,
            entries: EntriesOut(r.manifest.entries()),
            revoked: Cow::Borrowed(&r.revoked),
            signature: Cow::Borrowed(&r.signature),
            topology: r.topology.as_deref().map(Cow::Borrowed),
            rotation: r.rotation.clone(),
        }
    }
}

impl ReleaseRecord<'_, EntriesIn> {
    /// The release, with its manifest checked as one from the network would be.
    fn into_release(self) -> Result<Release, crate::tree::ManifestError> {
        Ok(Release {
            version: self.version,
            manifest: Manifest::from_shared(self.entries.0)?,
            revoked: self.revoked.into_owned(),
            signature: self.signature.into_owned(),
            topology: self.topology.map(Cow::into_owned),
            rotation: self.rotation,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tree::manifest::fixtures::{dir, file};

    fn sample() -> Release {
        let manifest = Manifest::from_entries(vec![
            dir("d"),
            file("d/a", b"a"),
            Entry {
                path: "l".into(),
                mode: 0o777,
                kind: EntryKind::Symlink {
                    target: "d/a".into(),
                },
            },
        ])
        .unwrap();
        Release {
            version: 9,
            manifest,
            revoked: vec![[7; 32]],
            signature: vec![5; 64],
            topology: Some("[[node]]\nname = \"o\"\n".into()),
            rotation: Some(Rotation {
                next: [8; 32],
                endorsement: vec![9; 64],
            }),
        }
    }

    #[test]
    fn a_failed_write_while_encoding_keeps_its_own_error() {
        /// Takes 10 bytes, then reports a full disk.
        struct Full(usize);
        impl Write for Full {
            fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
                if self.0 >= 10 {
                    return Err(io::Error::from(io::ErrorKind::StorageFull));
                }
                let n = buf.len().min(10 - self.0);
                self.0 += n;
                Ok(n)
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let r = sample();
        let record = ReleaseRecord::from(&r);
        let e = encode_into(Path::new("x"), &record, &mut Full(0)).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::StorageFull, "{e}");
        let mut all = Vec::new();
        encode_into(Path::new("x"), &record, &mut all).unwrap();
        assert_eq!(all, postcard::to_stdvec(&record).unwrap());
    }

    #[test]
    fn a_release_round_trips_and_a_missing_file_is_none() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("release.bin");
        assert!(load_release(&path).unwrap().is_none());
        save_release(&path, &sample()).unwrap();
        assert_eq!(
            load_release(&path).unwrap(),
            Some(Loaded::Release(Box::new(sample())))
        );
        assert!(fs::read(&path).unwrap().starts_with(MAGIC));
    }

    #[test]
    fn entries_written_one_at_a_time_are_the_bytes_of_the_frozen_record() {
        // Format 3 was written from a vector of records; streaming them must not change a byte.
        let r = sample();
        let listed = ReleaseRecord {
            version: r.version,
            entries: r
                .manifest
                .entries()
                .iter()
                .map(|e| EntryRecord::from(&**e))
                .collect::<Vec<_>>(),
            revoked: Cow::Borrowed(&r.revoked[..]),
            signature: Cow::Borrowed(&r.signature[..]),
            topology: r.topology.as_deref().map(Cow::Borrowed),
            rotation: r.rotation.clone(),
        };
        let path = Path::new("x");
        let streamed = encode(path, &ReleaseRecord::from(&r)).unwrap();
        assert_eq!(streamed, encode(path, &listed).unwrap());
        let back: ReleaseRecord<EntriesIn> = decode(&streamed).unwrap();
        assert_eq!(back.into_release().unwrap(), r);
    }

    #[test]
    fn older_formats_give_their_version_only() {
        // Bytes written by Cascade before format 3 (bincode 2 varints): format 0 is a bare
        // frame, formats 1 and 2 the header then the record; all start with the version.
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("release.bin");
        for (version, varint) in [
            (9u64, vec![9u8]),
            (300, vec![251, 44, 1]),
            (70_000, vec![252, 0x70, 0x11, 1, 0]),
            (1 << 40, vec![253, 0, 0, 0, 0, 0, 1, 0, 0]),
        ] {
            let mut payload = varint.clone();
            payload.extend([0u8; 5]); // the rest of the record, never read
            let mut frame = (payload.len() as u32).to_be_bytes().to_vec();
            frame.extend(&payload);
            fs::write(&path, &frame).unwrap();
            assert_eq!(
                load_release(&path).unwrap(),
                Some(Loaded::Older { version, format: 0 })
            );
            for format in [1u16, 2] {
                write_file(&path, Kind::Release, &payload, Md5::of(b"")).unwrap();
                let mut f = fs::read(&path).unwrap();
                f[9..11].copy_from_slice(&format.to_le_bytes());
                fs::write(&path, &f).unwrap();
                assert_eq!(
                    load_release(&path).unwrap(),
                    Some(Loaded::Older { version, format })
                );
            }
        }
        // An older stat cache is not used.
        write(&path, Kind::StatCache, &5u32).unwrap();
        let mut f = fs::read(&path).unwrap();
        f[9..11].copy_from_slice(&2u16.to_le_bytes());
        fs::write(&path, &f).unwrap();
        assert!(read::<u32>(&path, Kind::StatCache).is_err());
    }

    #[test]
    fn newer_damaged_and_foreign_files_say_what_they_are() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("release.bin");
        save_release(&path, &sample()).unwrap();
        let good = fs::read(&path).unwrap();

        let mut newer = good.clone();
        newer[9..11].copy_from_slice(&7u16.to_le_bytes());
        fs::write(&path, &newer).unwrap();
        let e = load_release(&path).unwrap_err().to_string();
        assert!(e.contains("format 7") && e.contains("release.bin"), "{e}");

        let mut damaged = good.clone();
        *damaged.last_mut().unwrap() ^= 1;
        fs::write(&path, &damaged).unwrap();
        let e = load_release(&path).unwrap_err().to_string();
        assert!(
            e.contains("release.bin") && e.contains("move it away"),
            "{e}"
        );
        // A flipped MD5 inside an entry decodes, but not to the saved release.
        let at = good
            .windows(16)
            .position(|w| w == Md5::of(b"a").0)
            .expect("the file's MD5 is in the payload");
        let mut flipped = good.clone();
        flipped[at] ^= 1;
        fs::write(&path, &flipped).unwrap();
        let e = load_release(&path).unwrap_err().to_string();
        assert!(e.contains("damaged"), "{e}");

        for cut in [0, 5, HEADER, good.len() - 1] {
            fs::write(&path, &good[..cut]).unwrap();
            assert!(load_release(&path).is_err(), "cut at {cut}");
        }
        fs::write(&path, b"hello, world").unwrap();
        let e = load_release(&path).unwrap_err().to_string();
        assert!(e.contains("not a Cascade state file"), "{e}");

        // A stat cache is not a release.
        write(&path, Kind::StatCache, &5u32).unwrap();
        assert!(load_release(&path).is_err());
        assert_eq!(read::<u32>(&path, Kind::StatCache).unwrap(), Some(5));
    }

    #[test]
    fn a_state_file_written_as_it_is_encoded_is_checked_by_its_payload() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("cache.bin");
        let value: Vec<u64> = (0..100_000).collect();
        write(&path, Kind::StatCache, &value).unwrap();
        let bytes = fs::read(&path).unwrap();
        let payload = encode(&path, &value).unwrap();
        assert_eq!(bytes[HEADER..], payload[..]);
        let at = CHECK_AT as usize;
        assert_eq!(bytes[at..at + 16], Md5::of(&payload).0, "the MD5 filled in");
        let len = u64::from_le_bytes(bytes[LENGTH_AT as usize..at].try_into().unwrap());
        assert_eq!(len, payload.len() as u64);
        assert_eq!(
            read::<Vec<u64>>(&path, Kind::StatCache).unwrap(),
            Some(value)
        );
        let mut damaged = bytes.clone();
        damaged[HEADER + 1000] ^= 1;
        fs::write(&path, &damaged).unwrap();
        let e = read::<Vec<u64>>(&path, Kind::StatCache)
            .unwrap_err()
            .to_string();
        assert!(e.contains("damaged"), "{e}");
    }
}
