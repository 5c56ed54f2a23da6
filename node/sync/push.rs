//! Bodies pushed while the origin scans, both sides (the Push streams of [`crate::wire`]).
//!
//! A release can only be offered once the origin has hashed every new file: the manifest it
//! signs names each body by its digests. Without pushes a child starts fetching only then,
//! so a large new file is read and hashed twice in a row, once by the origin's scan and
//! once by the child as it arrives. With them, the scan hands each large file it reads to
//! every child that asked for pushes ([`for_scan`], a [`Tee`] of the scan), and the child
//! hashes and writes it at the same time ([`receive`]); a relay pushes it on to its own
//! children as it arrives, so that a leaf several hops down has it about when the release is
//! signed, instead of one hop after the other. The child trusts none of it: a pushed
//! body stays outside its store, unnamed, until an offer names a body with the same size,
//! MD5 and BLAKE3 ([`take`]); then it is taken into the store instead of being fetched. What
//! no offer names is deleted.
//!
//! A child never holds the scan up for long: the scan of a file may wait for a child's link
//! at most as long as it has spent reading the file, plus [`GRACE`] (a child at a third of
//! the scan's speed is dropped from that push, not followed). A push given up is reset; what
//! the child got becomes the partial body its fetch resumes after ([`take`]).

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use quinn::{Connection, RecvStream, VarInt};
use tokio::sync::mpsc;
use tracing::{debug, info};

use super::bodies::ask::{pipeline, Arrived, Incoming, Piped, ReadFail};
use super::bodies::STREAM_ABOVE;
use super::pushed::{Counted, CutPush, Link, PushedBody};
use super::shared::Shared;
use super::SyncError;
use crate::data::{short_of_room, FlushAhead, Store};
use crate::dir::scan::{Tee, TeeSink};
use crate::net::{self, LinkError};
use crate::tree::hash::BodyHasher;
use crate::tree::{Blake3, EntryKind, Manifest, Release};
use crate::wire::blocks::Packer;
use crate::wire::{Compress, ErrorCode, PushHeader};

/// Files larger than this are pushed; smaller ones are fetched in batches as before (a
/// stream per small file would cost more than the round trip it saves).
pub const PUSH_ABOVE: u64 = STREAM_ABOVE as u64;
/// Blocks (of up to 1 MiB) queued for one child's push before the scan waits for it: with
/// the scan's 4 threads, at most 16 MiB per child, besides what the link's send window holds.
const QUEUE: usize = 4;
/// How long the scan of a file may wait for a child beyond the time it spent reading.
const GRACE: Duration = Duration::from_secs(1);
/// Largest push a child takes (a sanity bound: the disk decides long before).
const MAX_PUSH: u64 = 1 << 50;
/// How often the scan looks again at a child's full queue.
const POLL: Duration = Duration::from_millis(1);
/// How long a node waits, before it offers a release, for its pushes to be written out.
pub const WRITTEN: Duration = Duration::from_secs(5);
/// How long a child waits, when offered a release, for pushes still arriving.
const SETTLE: Duration = Duration::from_secs(30);

/// What one scan of `shared`'s `dir` pushes: large files, except those whose size and mtime
/// a file of the `last` release has (a file renamed, or copied with its time: the children
/// hold its body already, and a pushed body is not known to be held until all of it was sent).
pub fn for_scan<'a>(shared: &'a Arc<Shared>, last: Option<&Manifest>) -> ForScan<'a> {
    let linked = !shared
        .pusher
        .links
        .lock()
        .expect("push links lock")
        .is_empty();
    let held = match last {
        Some(m) if linked => m
            .entries()
            .iter()
            .filter_map(|e| match e.kind {
                EntryKind::File { size, mtime, .. } if size > PUSH_ABOVE => Some((size, mtime)),
                _ => None,
            })
            .collect(),
        _ => HashSet::new(),
    };
    ForScan { shared, held }
}

/// The [`Tee`] of one scan (see [`for_scan`]).
#[derive(Debug)]
pub struct ForScan<'a> {
    shared: &'a Arc<Shared>,
    /// Size and mtime of each large file of the last release.
    held: HashSet<(u64, i64)>,
}

impl Tee for ForScan<'_> {
    fn open(&self, rel: &str, size: u64, mtime: i64) -> Option<Box<dyn TeeSink + '_>> {
        if size <= PUSH_ABOVE || self.held.contains(&(size, mtime)) {
            return None;
        }
        let header = PushHeader {
            size,
            path: rel.to_owned(),
        };
        Some(Box::new(Push::start(self.shared, header)?))
    }
}

/// One file being pushed to every child registered when its read began.
struct Push {
    children: Vec<Child>,
    started: Instant,
    /// Time the scan spent waiting for children's links.
    waited: Duration,
    path: String,
    /// Bytes announced, and bytes given so far: a push dropped short is given up.
    size: u64,
    given: u64,
}

impl Push {
    /// A push of the body `header` announces to every child registered now (`None` if no
    /// child is).
    fn start(shared: &Arc<Shared>, header: PushHeader) -> Option<Push> {
        let links = shared.pusher.links.lock().expect("push links lock").clone();
        if links.is_empty() {
            return None;
        }
        let (path, size) = (header.path.clone(), header.size);
        let children = links
            .into_iter()
            .filter_map(|l| Child::start(shared, l, header.clone()))
            .collect();
        Some(Push {
            children,
            started: Instant::now(),
            waited: Duration::ZERO,
            path,
            size,
            given: 0,
        })
    }
}

impl Drop for Push {
    fn drop(&mut self) {
        // Short of what was announced (the file changed as it was read, or the push this
        // relay forwards broke off): reset, so a child keeps what it got as a cut push.
        if self.given != self.size {
            for c in &mut self.children {
                if c.tx.is_some() {
                    c.give_up(&self.path, "its source ended short");
                }
            }
        }
    }
}

/// One file's push to one child: the queue to the task that writes its stream.
struct Child {
    name: String,
    tx: Option<mpsc::Sender<Bytes>>,
    packer: Option<Packer>,
    /// Set when the push is given up: the stream is reset instead of finished.
    abandoned: Arc<AtomicBool>,
}

impl Child {
    fn start(shared: &Arc<Shared>, link: Link, header: PushHeader) -> Option<Child> {
        let packer = match link.compress {
            Compress::Off => None,
            c => Some(Packer::new(c).ok()?),
        };
        let (tx, rx) = mpsc::channel(QUEUE);
        let abandoned = Arc::new(AtomicBool::new(false));
        let child = Child {
            name: link.name.clone(),
            tx: Some(tx),
            packer,
            abandoned: abandoned.clone(),
        };
        let sending = Counted::new(&shared.pusher.sending);
        let shared = shared.clone();
        link.runtime.clone().spawn(async move {
            let _sending = sending;
            let (name, path) = (link.name.clone(), header.path.clone());
            if let Err(e) = send(&shared, link, header, rx, abandoned).await {
                debug!(child = %name, path, "push ended: {e}");
            }
        });
        Some(child)
    }

    fn give_up(&mut self, path: &str, why: &str) {
        self.abandoned.store(true, Ordering::Relaxed);
        self.tx = None;
        debug!(child = %self.name, path, "push given up: {why}");
    }
}

impl TeeSink for Push {
    fn block(&mut self, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        // One copy of the scan's buffer, shared by the children that take it raw (none is
        // made if every child packs it).
        let mut raw: Option<Bytes> = None;
        self.given += data.len() as u64;
        let Push {
            children,
            started,
            waited,
            path,
            ..
        } = self;
        for c in children.iter_mut() {
            let Some(tx) = c.tx.clone() else { continue };
            let bytes = match &mut c.packer {
                Some(p) => {
                    let mut out = Vec::with_capacity(data.len() + 8);
                    p.pack(data, &mut out);
                    Bytes::from(out)
                }
                None => raw
                    .get_or_insert_with(|| Bytes::copy_from_slice(data))
                    .clone(),
            };
            match tx.try_send(bytes) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Closed(_)) => c.give_up(path, "the link ended"),
                Err(mpsc::error::TrySendError::Full(mut bytes)) => {
                    // Waits, polling (this is a scan thread, not the runtime's), for as long
                    // as the file has been read so far less the time already waited, plus
                    // the grace: a child may slow the scan down, not hold it up.
                    let t = Instant::now();
                    let reading = started.elapsed().saturating_sub(*waited);
                    let budget = (reading + GRACE).saturating_sub(*waited);
                    let outcome = loop {
                        std::thread::sleep(POLL);
                        match tx.try_send(bytes) {
                            Ok(()) => break None,
                            Err(mpsc::error::TrySendError::Closed(_)) => {
                                break Some("the link ended")
                            }
                            Err(mpsc::error::TrySendError::Full(b)) if t.elapsed() < budget => {
                                bytes = b;
                            }
                            Err(mpsc::error::TrySendError::Full(_)) => {
                                break Some("the child is much slower than the scan")
                            }
                        }
                    };
                    *waited += t.elapsed();
                    if let Some(why) = outcome {
                        c.give_up(path, why);
                    }
                }
            }
        }
    }
}

/// Writes one push stream: the header, then each block as the scan reads it; resets it if
/// the push was given up.
async fn send(
    shared: &Shared,
    link: Link,
    header: PushHeader,
    mut rx: mpsc::Receiver<Bytes>,
    abandoned: Arc<AtomicBool>,
) -> Result<(), LinkError> {
    let sent = shared.metrics.sent_to(&link.name);
    let mut stream = link.conn.open_uni().await?;
    net::send(&mut stream, &header).await?;
    while let Some(bytes) = rx.recv().await {
        if abandoned.load(Ordering::Relaxed) {
            break;
        }
        if let Some(limit) = &shared.upload {
            limit.acquire(bytes.len() as u64).await;
        }
        let n = bytes.len() as u64;
        stream
            .write_chunk(bytes)
            .await
            .map_err(|e| LinkError::Io(e.into()))?;
        shared.board.add_sent(n);
        sent.inc_by(n);
    }
    if abandoned.load(Ordering::Relaxed) {
        let _ = stream.reset(VarInt::from_u32(ErrorCode::Abandoned.code()));
    } else {
        stream.finish().map_err(LinkError::from)?;
        shared.metrics.bodies_to(&link.name).inc();
    }
    Ok(())
}

/// On a parent: ends the link to a child that opens a push stream (only parents push).
pub async fn refuse(conn: &Connection) -> LinkError {
    match conn.accept_uni().await {
        Ok(_) => LinkError::Wire(crate::wire::WireError::Malformed(
            "a child opened a push stream".into(),
        )),
        Err(e) => e.into(),
    }
}

/// Takes the pushes the parent opens on `conn` until the link ends. Each is received by a
/// task of its own that outlives this future: when the link ends, those still arriving end
/// by themselves, keeping what they got (see [`receive`]), so that the next parent's fetch
/// resumes after it, whichever part of the session noticed the lost link first (the
/// session drops this future then).
pub async fn accept(shared: &Arc<Shared>, conn: &Connection) -> Result<(), SyncError> {
    loop {
        let recv = conn.accept_uni().await.map_err(LinkError::from)?;
        // Counted at once: an offer read from now on waits for it.
        let arriving = Counted::new(&shared.pushed.arriving);
        tokio::spawn(receive(shared.clone(), recv, arriving));
    }
}

/// Receives one pushed body, hashing it as it arrives, and keeps it for [`take`] if it came
/// whole, or its first bytes if the parent gave it up. A push too long, broken off with the
/// link, or with no room for it is deleted.
async fn receive(shared: Arc<Shared>, mut recv: RecvStream, arriving: Counted) {
    let _arriving = arriving;
    let header = match net::recv::<_, PushHeader>(&mut recv).await {
        Ok(Some(h)) => h,
        _ => return,
    };
    let path = header.path.clone();
    match receive_body(&shared, recv, header).await {
        Ok(Ok(body)) => {
            debug!(path, size = body.size, "push received");
            shared.pushed.bodies.lock().expect("pushed lock").push(body);
        }
        Ok(Err(cut)) => {
            debug!(
                path,
                "push given up by the parent, or cut off with its link: its first bytes are kept"
            );
            shared.pushed.cut.lock().expect("pushed lock").push(cut);
        }
        Err(why) => debug!(path, "push not kept: {why}"),
    }
}

/// The body of a push: written to a file of the store's `tmp/` while a blocking job hashes
/// and writes each buffer as the next arrives. A push the parent reset after some bytes, or
/// whose link was lost (a relay that died as it pushed on), is kept as a [`CutPush`].
async fn receive_body(
    shared: &Arc<Shared>,
    recv: RecvStream,
    header: PushHeader,
) -> Result<Result<PushedBody, CutPush>, String> {
    let size = header.size;
    if size > MAX_PUSH {
        return Err(format!("{size} bytes announced"));
    }
    // Pushes never take more than a third of the free space: until an offer names them,
    // they are only the parent's word (a parent with a stolen key could push forever).
    let pending = &shared.pushed.pending;
    let before = pending.fetch_add(size, Ordering::Relaxed);
    let counted = Pending(pending, size);
    if let Some(free) = short_of_room(shared.store.objects(), 2 * (before + size)) {
        return Err(format!(
            "{size} bytes more than the {before} pushed do not fit ({free} free)"
        ));
    }
    let arrived = Arrived {
        release: Arc::new(AtomicU64::new(0)),
        total: shared.metrics.received_bytes.clone(),
    };
    let mut incoming = Incoming::new(recv, shared.compress, arrived).map_err(|e| e.to_string())?;
    let head = crate::wire::encode(&header);
    let (file, out) = (shared.store.push_file(&head)).map_err(|e| e.to_string())?;
    let removed = Remove(&shared.store, Some(file.clone()));
    // A relay pushes it on to its own children as it arrives, as the origin's scan does
    // (not under an upload limit, as there).
    let onward = match shared.upload {
        None => Push::start(shared, header.clone()),
        Some(_) => None,
    };
    // Each buffer is written on a thread of its own while it is hashed (MD5 and BLAKE3 run
    // on two more), and flushed ahead as a fetched body is.
    let land = |(hasher, out, ahead, onward): &mut Landing, buf: &[u8]| {
        use std::io::Write;
        std::thread::scope(|s| {
            let w = s.spawn(|| out.write_all(buf));
            hasher.update(buf);
            w.join().expect("writing a push does not panic")
        })?;
        ahead.wrote(out.file(), hasher.len());
        if let Some(p) = onward {
            p.block(buf);
        }
        Ok::<_, std::io::Error>(())
    };
    let state = (
        BodyHasher::new(true, false),
        out,
        FlushAhead::default(),
        onward,
    );
    let ((hasher, ..), received) = match pipeline(&mut incoming, state, 0, size, land, |_| {}).await
    {
        Ok(done) => done,
        Err(Piped::Read(ReadFail::Read(
            quinn::ReadError::Reset(_) | quinn::ReadError::ConnectionLost(_),
        ))) => {
            // Kept as it is: the partial body a fetch resumes from rebuilds its hash state
            // from the bytes themselves, and is flushed like any.
            std::mem::forget(counted);
            return Ok(Err(CutPush {
                file: removed.keep(),
                path: header.path,
                size,
            }));
        }
        Err(e) => {
            return Err(match e {
                Piped::Read(_) => "the stream broke off".to_owned(),
                Piped::TooLong(_) => format!("more than the {size} bytes announced"),
                Piped::Land(e) => e.to_string(),
            })
        }
    };
    if received != size {
        return Err(format!("{received} of the {size} bytes announced"));
    }
    let body = hasher.finish();
    let file = removed.keep();
    std::mem::forget(counted);
    Ok(Ok(PushedBody {
        file,
        size,
        md5: body.md5,
        blake3: body.blake3,
    }))
}

/// Where a push lands: its hashes, its file, the file's flush, the push on to this node's
/// children.
type Landing = (BodyHasher, fs_err::File, FlushAhead, Option<Push>);

/// Bytes counted as pending, uncounted when dropped (a push not kept).
struct Pending<'a>(&'a AtomicU64, u64);

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(self.1, Ordering::Relaxed);
    }
}

/// A pushed body removed when dropped, unless kept.
struct Remove<'a>(&'a Store, Option<PathBuf>);

impl Remove<'_> {
    fn keep(mut self) -> PathBuf {
        self.1.take().expect("kept once")
    }
}

impl Drop for Remove<'_> {
    fn drop(&mut self) {
        if let Some(p) = self.1.take() {
            self.0.remove_pushed(&p);
        }
    }
}

/// At start: the pushes an earlier run of this node was receiving when it stopped become
/// cut pushes, which the next offer naming their files resumes (see [`take`]).
pub fn left_by_last_run(shared: &Shared) {
    for (file, head) in shared.store.leftover_pushes() {
        match crate::wire::decode_frame::<PushHeader>(&head) {
            Ok(h) if h.size <= MAX_PUSH => {
                debug!(
                    path = h.path,
                    "a push cut by the last stop is kept to resume"
                );
                shared.pushed.pending.fetch_add(h.size, Ordering::Relaxed);
                (shared.pushed.cut.lock().expect("pushed lock")).push(CutPush {
                    file,
                    path: h.path,
                    size: h.size,
                });
            }
            _ => shared.store.remove_pushed(&file),
        }
    }
}

/// Before a child works out what to fetch for `release`: waits for pushes still arriving
/// (at most [`SETTLE`]), then takes into the store each pushed body that `release` names by
/// the same size, MD5 and BLAKE3, makes the first bytes of each push given up the partial
/// body of the file at its path (if that file has its size and its body is still to fetch),
/// and deletes the others. Returns how many bodies were taken.
pub async fn take(shared: &Arc<Shared>, release: &Release) -> Result<u64, SyncError> {
    let mut arriving = shared.pushed.arriving.subscribe();
    if *arriving.borrow() > 0 {
        let waited = Instant::now();
        let _ = tokio::time::timeout(SETTLE, arriving.wait_for(|&n| n == 0)).await;
        debug!(
            ms = waited.elapsed().as_millis() as u64,
            "waited for pushes"
        );
    }
    let bodies = std::mem::take(&mut *shared.pushed.bodies.lock().expect("pushed lock"));
    let cut = std::mem::take(&mut *shared.pushed.cut.lock().expect("pushed lock"));
    if bodies.is_empty() && cut.is_empty() {
        return Ok(0);
    }
    let bytes: u64 =
        bodies.iter().map(|b| b.size).sum::<u64>() + cut.iter().map(|c| c.size).sum::<u64>();
    shared.pushed.pending.fetch_sub(bytes, Ordering::Relaxed);
    let (me, manifest) = (shared.clone(), release.manifest.clone());
    let taken = tokio::task::spawn_blocking(move || {
        let mut left: std::collections::HashMap<Blake3, PushedBody> =
            bodies.into_iter().map(|b| (b.blake3, b)).collect();
        let mut taken = 0u64;
        me.store.begin_batch()?;
        for e in manifest.entries() {
            let EntryKind::File {
                size, md5, blake3, ..
            } = &e.kind
            else {
                continue;
            };
            let Some(b) = left.get(blake3) else { continue };
            if b.size != *size || b.md5 != *md5 {
                continue;
            }
            let b = left.remove(blake3).expect("looked up just now");
            me.store.take_pushed(&b.file, blake3)?;
            taken += 1;
            if left.is_empty() {
                break;
            }
        }
        for b in left.into_values() {
            me.store.remove_pushed(&b.file);
        }
        // A cut push resumes as the partial body of the file it was for, if that body is
        // still to fetch and nothing else was kept of it.
        for c in cut {
            let resume = match manifest.get(&c.path).and_then(|e| e.body()) {
                Some((size, id)) if size == c.size => me.store.resume_pushed(&c.file, &id),
                _ => {
                    me.store.remove_pushed(&c.file);
                    false
                }
            };
            if resume {
                debug!(
                    path = c.path,
                    "a push given up becomes a partial body to resume"
                );
            }
        }
        Ok::<_, SyncError>(taken)
    })
    .await
    .expect("taking pushed bodies does not panic")?;
    if taken > 0 {
        shared.metrics.received_files.inc_by(taken);
        info!(
            bodies = taken,
            "took bodies pushed during the parent's scan"
        );
    }
    Ok(taken)
}
