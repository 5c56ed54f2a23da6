//! The upstream half: dial the parent, take its offers, fetch what is missing, verify, apply,
//! hold, and report the subtree's state back up.
//!
//! One session per connection; a lost link is re-dialled with capped exponential backoff and
//! the new session starts with the same `Hello { have }`, so catch-up is the ordinary path.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use quinn::{Connection, Endpoint};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::{debug, info, warn, Instrument};

use crate::apply::{self, ApplyMode};
use crate::flight::FlightHandle;
use crate::link::{self, LinkError};
use crate::manifest::{Manifest, Md5};
use crate::node::{NodeError, Shared};
use crate::status::NodeState;
use crate::store::{Expected, StoreError};
use crate::wire::{BodyRequest, ErrorCode, RawDown, Release, Up};

const BACKOFF_MIN: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// How often the parent is probed while attached to a backup.
const PROBE_INTERVAL: Duration = Duration::from_secs(2);
/// Requests (a large body, or a batch of small ones) in flight at once on parallel streams.
const PARALLEL_BODIES: usize = 16;
/// Bodies at most this large are fetched in batches on shared streams.
const SMALL: u64 = 256 * 1024;
/// Most bodies in one batch (at most [`crate::wire::MAX_BATCH`]).
const BATCH_FILES: usize = 1024;
/// Most bytes in one batch.
const BATCH_BYTES: u64 = 8 * 1024 * 1024;
/// Attempts per body before the release is reported as failed (and retried later).
const BODY_ATTEMPTS: u32 = 3;
/// Bytes handed to a body's writer thread at a time (hashing per datagram would be slow).
const BATCH: usize = 1024 * 1024;
/// How often fetch progress is refreshed on the board while bodies are in flight.
const PROGRESS_INTERVAL: Duration = Duration::from_millis(100);
/// Least time between two status reports to the parent.
const REPORT_INTERVAL: Duration = Duration::from_millis(20);

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error(transparent)]
    Link(#[from] LinkError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Node(#[from] NodeError),
    #[error("parent did not serve body {0} (code {1})")]
    NotServed(Md5, u64),
    #[error("body {md5} sent by the parent is {got}+ bytes, expected {size}")]
    TooLong { md5: Md5, size: u64, got: u64 },
}

/// Runs the link upward until the task is aborted. `parents` is the parent followed by the
/// backup parents. While the parent has been unreachable for `failover_after`, the first
/// reachable backup is used; the parent is probed meanwhile and taken back once it answers.
pub async fn run(
    shared: Arc<Shared>,
    endpoint: Endpoint,
    parents: Vec<(String, SocketAddr)>,
    failover_after: Duration,
) {
    let span = tracing::info_span!("up", node = %shared.name);
    async move {
        let Some((primary, backups)) = parents.split_first() else {
            return;
        };
        let mut backoff = BACKOFF_MIN;
        let mut down_since: Option<Instant> = None;
        loop {
            let started = Instant::now();
            match link::connect(&endpoint, primary.1, &primary.0).await {
                Ok(conn) => {
                    down_since = None;
                    attached(&shared, &conn, &primary.0).await;
                    down_since.get_or_insert_with(Instant::now);
                }
                Err(e) => {
                    warn!("{e}");
                    down_since.get_or_insert(started);
                }
            }
            shared.set_own(|s| s.connected = false);
            if down_since.is_some_and(|t| t.elapsed() >= failover_after) && !backups.is_empty() {
                via_backup(&shared, &endpoint, primary, backups, failover_after).await;
            }
            if started.elapsed() > BACKOFF_MAX {
                backoff = BACKOFF_MIN;
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }
    .instrument(span)
    .await
}

/// Attaches to the first reachable backup and stays until that link ends or the primary
/// parent answers again.
async fn via_backup(
    shared: &Arc<Shared>,
    endpoint: &Endpoint,
    primary: &(String, SocketAddr),
    backups: &[(String, SocketAddr)],
    down_for: Duration,
) {
    for (name, addr) in backups {
        let conn = match link::connect(endpoint, *addr, name).await {
            Ok(c) => c,
            Err(e) => {
                warn!("backup parent: {e}");
                continue;
            }
        };
        warn!(
            "parent {} unreachable for more than {:.1} s: failing over to backup parent {name}",
            primary.0,
            down_for.as_secs_f64()
        );
        tokio::select! {
            () = attached(shared, &conn, name) => {}
            () = wait_until_reachable(endpoint, primary) => {
                info!("parent {} is reachable again: leaving backup parent {name}", primary.0);
                link::close(&conn, ErrorCode::Ok, "returning to own parent");
            }
        }
        return;
    }
}

/// Returns once `peer` completes a handshake (the probe connection is closed at once).
async fn wait_until_reachable(endpoint: &Endpoint, peer: &(String, SocketAddr)) {
    loop {
        tokio::time::sleep(PROBE_INTERVAL).await;
        if let Ok(conn) = link::connect(endpoint, peer.1, &peer.0).await {
            link::close(&conn, ErrorCode::Ok, "probe");
            return;
        }
    }
}

/// Runs one session over an established link and logs how it ended.
async fn attached(shared: &Arc<Shared>, conn: &Connection, parent: &str) {
    let span = tracing::info_span!("link", parent = %parent);
    match session(shared, conn).instrument(span).await {
        Ok(()) => info!("parent {parent} closed the link"),
        Err(e) => warn!("link to parent {parent}: {e}"),
    }
}

async fn session(shared: &Arc<Shared>, conn: &Connection) -> Result<(), SyncError> {
    let (mut send, mut recv) = conn.open_bi().await.map_err(LinkError::from)?;
    let have = shared.held_release().map(|h| h.release.version);
    link::send(
        &mut send,
        &Up::Hello {
            name: shared.name.clone(),
            have,
        },
    )
    .await?;
    info!(have = ?have, "connected to parent");
    shared.set_own(|s| s.connected = true);

    let (offers_tx, offers) = watch::channel::<Option<Arc<Release>>>(None);
    let reader = async {
        while let Some(msg) = link::recv::<_, RawDown>(&mut recv).await? {
            match msg {
                RawDown::Offer(raw) => {
                    let version = raw.version;
                    match raw.validate() {
                        Ok(release) => {
                            info!(version, "offered {release}");
                            offers_tx.send_replace(Some(Arc::new(release)));
                        }
                        Err(e) => {
                            // Refused whole: the node keeps what it holds and says why.
                            warn!(version, "refused release {version} from the parent: {e}");
                            shared.set_own(|s| {
                                s.state = NodeState::Failed {
                                    version,
                                    error: format!("refused release: {e}"),
                                }
                            });
                        }
                    }
                }
            }
        }
        Ok::<(), SyncError>(())
    };
    let result = tokio::select! {
        r = reader => r,
        r = report_up(shared, &mut send) => r,
        r = follow_offers(shared, conn, offers) => r,
    };
    let _ = send.finish();
    if let Err(SyncError::Link(LinkError::Wire(e))) = &result {
        link::close(conn, ErrorCode::Protocol, &e.to_string());
    }
    // Prefer the parent's own reason (e.g. "not a child", shutting down) over a stream error.
    match (result, conn.close_reason()) {
        (Err(_), Some(quinn::ConnectionError::ApplicationClosed(c))) => {
            Err(LinkError::Refused(format!(
                "parent closed the link: {} (code {})",
                String::from_utf8_lossy(&c.reason),
                c.error_code
            ))
            .into())
        }
        (r, _) => r,
    }
}

/// Sends the subtree's statuses to the parent now and after every change. The first change
/// after a quiet spell goes up at once; bursts are rate-limited to one report per interval.
async fn report_up(shared: &Shared, send: &mut quinn::SendStream) -> Result<(), SyncError> {
    let mut board = shared.board.subscribe();
    loop {
        let statuses: Vec<_> = board.borrow_and_update().values().cloned().collect();
        link::send(send, &Up::Status(statuses)).await?;
        tokio::time::sleep(REPORT_INTERVAL).await;
        board
            .changed()
            .await
            .map_err(|_| LinkError::Refused("node stopping".into()))?;
    }
}

/// Applies the newest offer whenever it is newer than what this node holds; a failed sync is
/// reported and retried after a pause (or at once if a newer offer arrives).
async fn follow_offers(
    shared: &Arc<Shared>,
    conn: &Connection,
    mut offers: watch::Receiver<Option<Arc<Release>>>,
) -> Result<(), SyncError> {
    loop {
        let offer = offers.borrow_and_update().clone();
        let held = shared.held_release().map(|h| h.release.version);
        let Some(release) = offer.filter(|r| held.is_none_or(|h| r.version > h)) else {
            offers
                .changed()
                .await
                .map_err(|_| LinkError::Refused("link closed".into()))?;
            continue;
        };
        let span = tracing::info_span!("sync", version = release.version);
        match sync(shared, conn, &release).instrument(span).await {
            Ok(()) => {}
            Err(SyncError::Link(e)) => return Err(e.into()),
            Err(e) => {
                warn!(version = release.version, "release failed: {e}; retrying");
                shared.set_own(|s| {
                    s.state = NodeState::Failed {
                        version: release.version,
                        error: e.to_string(),
                    }
                });
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                    r = offers.changed() => r.map_err(|_| LinkError::Refused("link closed".into()))?,
                }
            }
        }
    }
}

/// Fetches every body of `release` the store lacks, verifies each, applies, and holds it.
/// A node with children offers the release to them as soon as its bodies are registered in
/// flight, and serves each body's verified prefix while the rest arrives.
async fn sync(shared: &Arc<Shared>, conn: &Connection, release: &Release) -> Result<(), SyncError> {
    let started = Instant::now();
    let version = release.version;
    let old = shared.held_release();
    let empty = Manifest::empty();
    let old_manifest = old.as_ref().map_or(&empty, |h| &h.release.manifest);
    // A node whose `dir` is the only copy of its bodies (see `Applier::keep_bodies`) finds
    // them there by the quick check; the apply confirms each by MD5, or asks for it again.
    let in_place = shared
        .applier
        .as_ref()
        .filter(|a| !a.keep_bodies && a.mode == ApplyMode::InPlace)
        .map(|a| a.dir.clone());
    let changed = release.manifest.changed_files(old_manifest);
    // For many bodies, one listing of the store is cheaper than a lookup each.
    let held = if changed.len() > 1024 {
        Some(shared.store.held()?)
    } else {
        None
    };
    let has = |md5: &Md5| {
        held.as_ref()
            .map_or_else(|| shared.store.has(md5), |h| h.contains(md5))
    };
    let mut seen = HashSet::new();
    let wanted: Vec<Expected> = changed
        .into_iter()
        .filter(|(entry, _, md5)| {
            seen.insert(*md5)
                && !has(md5)
                && !in_place
                    .as_ref()
                    .is_some_and(|dir| apply::held_in_place(dir, entry))
        })
        .map(|(entry, size, md5)| {
            expected(
                md5,
                size,
                entry.chunks(),
                shared.serves,
                shared.dir.is_some(),
            )
        })
        .collect();
    let wanted = match &in_place {
        Some(dir) => adopt_moved(shared, dir, old.as_ref(), wanted).await?,
        None => wanted,
    };
    let mut files = wanted.len() as u64;
    let mut total: u64 = wanted.iter().map(|e| e.size).sum();
    info!(files, bytes = total, "fetching");
    let done = Arc::new(AtomicU64::new(0));
    fetch_all(shared, conn, wanted, release, &done).await?;
    debug!(ms = started.elapsed().as_millis() as u64, "bodies received");
    shared.set_own(|s| s.state = NodeState::Applying { version });
    match shared.apply_and_hold(release.clone()).await {
        Err(NodeError::MissingBodies(missing)) => {
            // Files that drifted from bodies only `dir` held: fetch those and apply again.
            let mut missing: HashSet<Md5> = missing.into_iter().collect();
            let wanted: Vec<Expected> = release
                .manifest
                .files()
                .filter(|(_, _, md5)| missing.remove(md5) && !shared.store.has(md5))
                .map(|(entry, size, md5)| expected(md5, size, entry.chunks(), shared.serves, true))
                .collect();
            info!(files = wanted.len(), "fetching bodies missing from dir");
            files += wanted.len() as u64;
            total += wanted.iter().map(|e| e.size).sum::<u64>();
            fetch_all(shared, conn, wanted, release, &done).await?;
            shared.set_own(|s| s.state = NodeState::Applying { version });
            shared.apply_and_hold(release.clone()).await?;
        }
        r => r?,
    }
    // What actually crossed the link (less than `total` when transfers were resumed).
    let fetched = done.load(Ordering::Relaxed);
    shared.set_own(|s| {
        s.fetched_bytes = fetched;
        s.fetched_files = files;
    });
    info!(
        files,
        bytes = total,
        ms = started.elapsed().as_millis() as u64,
        "release {version} held"
    );
    Ok(())
}

/// For a node whose `dir` is the only copy of its bodies: takes each wanted body that the
/// previous release had at another path (a renamed or copied file) from that path, checked
/// by MD5 while copying it into the store. Returns the bodies still to fetch.
async fn adopt_moved(
    shared: &Arc<Shared>,
    dir: &std::path::Path,
    old: Option<&Arc<crate::node::Offer>>,
    wanted: Vec<Expected>,
) -> Result<Vec<Expected>, SyncError> {
    let Some(old) = old.cloned() else {
        return Ok(wanted);
    };
    let (me, dir) = (shared.clone(), dir.to_owned());
    tokio::task::spawn_blocking(move || {
        let by_body: std::collections::HashMap<Md5, &crate::manifest::Entry> = old
            .release
            .manifest
            .files()
            .map(|(e, _, md5)| (md5, e))
            .collect();
        // Adopted bodies are flushed with the fetched ones (see `Store::begin_batch`).
        me.store.begin_batch()?;
        let mut rest = Vec::new();
        for e in wanted {
            let adopted = match by_body.get(&e.md5) {
                Some(oe) if apply::held_in_place(&dir, oe) => {
                    me.store.adopt(&dir.join(&oe.path), e.md5, e.size)?
                }
                _ => false,
            };
            if !adopted {
                rest.push(e);
            }
        }
        Ok(rest)
    })
    .await
    .expect("adopting bodies does not panic")
}

/// Fetches `wanted` (bodies not in the store) on parallel streams, then flushes the store.
/// A node with children offers `release` to them as soon as the bodies are registered in
/// flight, and serves each body's verified prefix while the rest arrives.
async fn fetch_all(
    shared: &Arc<Shared>,
    conn: &Connection,
    wanted: Vec<Expected>,
    release: &Release,
    done: &Arc<AtomicU64>,
) -> Result<(), SyncError> {
    let version = release.version;
    let total: u64 = wanted.iter().map(|e| e.size).sum::<u64>() + done.load(Ordering::Relaxed);
    shared.set_own(|s| {
        s.state = NodeState::Fetching {
            version,
            done_bytes: done.load(Ordering::Relaxed),
            total_bytes: total,
        }
    });

    shared.store.begin_batch()?;
    let sizes: Vec<u64> = wanted.iter().map(|e| e.size).collect();
    let mut wanted: Vec<Option<Expected>> = wanted.into_iter().map(Some).collect();
    let mut jobs = Vec::new();
    for group in plan(&sizes) {
        let bodies: Vec<_> = group
            .into_iter()
            .map(|i| {
                let e = wanted[i].take().expect("plan uses each body once");
                let flight = shared.flights.start(e.md5);
                (e, flight)
            })
            .collect();
        jobs.push(bodies);
    }
    // Every body is registered: children may now ask for any of them.
    shared.offer_early(release);
    let mut queue = jobs.into_iter();
    let mut running = JoinSet::new();
    let mut tick = tokio::time::interval(PROGRESS_INTERVAL);
    loop {
        while running.len() < PARALLEL_BODIES {
            let Some(mut bodies) = queue.next() else {
                break;
            };
            let (shared, conn, done) = (shared.clone(), conn.clone(), done.clone());
            running.spawn(async move {
                if bodies.len() == 1 && bodies[0].0.size > BATCH as u64 {
                    let (exp, flight) = bodies.pop().expect("one body");
                    fetch_verified(&shared, &conn, exp, &flight, &done).await?;
                    flight.done();
                } else {
                    fetch_many(&shared, &conn, &bodies, &done).await?;
                    bodies.into_iter().for_each(|(_, f)| f.done());
                }
                Ok::<(), SyncError>(())
            });
        }
        if running.is_empty() {
            break;
        }
        tokio::select! {
            res = running.join_next() => {
                res.expect("the set is not empty").expect("fetch tasks do not panic")?;
            }
            _ = tick.tick() => {}
        }
        let now = done.load(Ordering::Relaxed);
        shared.set_own(|s| {
            s.state = NodeState::Fetching {
                version,
                done_bytes: now,
                total_bytes: total,
            }
        });
    }

    // Every body is on disk before anything is applied.
    let me = shared.clone();
    tokio::task::spawn_blocking(move || me.store.commit_batch())
        .await
        .expect("flushing the store does not panic")?;
    Ok(())
}

/// How a body must be checked on this node. A node with children checks each chunk as it
/// arrives so it can forward it at once; a node that applies bodies to a directory checks
/// the whole MD5 too (a relay without a directory relies on the chunks, which cover every
/// byte); a body without chunks is always checked whole.
fn expected(md5: Md5, size: u64, chunks: &[Md5], serves: bool, applies: bool) -> Expected {
    let chunks = if serves { chunks.to_vec() } else { Vec::new() };
    Expected {
        md5,
        size,
        whole: applies || chunks.is_empty(),
        chunks,
    }
}

/// Groups the bodies to fetch (by index, in order): each body above [`SMALL`] alone, smaller
/// ones together on one stream, up to [`BATCH_FILES`] bodies or [`BATCH_BYTES`] bytes.
fn plan(sizes: &[u64]) -> Vec<Vec<usize>> {
    let mut out = Vec::new();
    let mut batch = Vec::new();
    let mut batch_bytes = 0;
    for (i, &size) in sizes.iter().enumerate() {
        if size > SMALL {
            out.push(vec![i]);
            continue;
        }
        if batch.len() == BATCH_FILES || batch_bytes + size > BATCH_BYTES {
            out.push(std::mem::take(&mut batch));
            batch_bytes = 0;
        }
        batch.push(i);
        batch_bytes += size;
    }
    if !batch.is_empty() {
        out.push(batch);
    }
    out
}

/// Fetches one body, retrying when a chunk or the whole does not match; never stores a bad
/// body. A retry resumes after the last good chunk.
async fn fetch_verified(
    shared: &Arc<Shared>,
    conn: &Connection,
    exp: Expected,
    flight: &FlightHandle,
    done: &AtomicU64,
) -> Result<(), SyncError> {
    let mut attempt = 1;
    loop {
        match fetch_body(shared, conn, exp.clone(), flight, done).await {
            Ok(()) => return Ok(()),
            Err(e) if e.is_corrupt() => {
                warn!(md5 = %exp.md5, attempt, "discarded corrupt body: {e}");
                if attempt >= BODY_ATTEMPTS {
                    return Err(e);
                }
                attempt += 1;
            }
            Err(e) => return Err(e),
        }
    }
}

impl SyncError {
    /// The parent sent bytes that do not match the manifest (worth asking again).
    fn is_corrupt(&self) -> bool {
        matches!(
            self,
            SyncError::Store(StoreError::Mismatch { .. } | StoreError::ChunkMismatch { .. })
                | SyncError::TooLong { .. }
        )
    }
}

/// Opens a body stream and sends `req`.
async fn request(conn: &Connection, req: &BodyRequest) -> Result<quinn::RecvStream, SyncError> {
    let (mut send, recv) = conn.open_bi().await.map_err(LinkError::from)?;
    link::send(&mut send, req).await?;
    send.finish().map_err(LinkError::from)?;
    Ok(recv)
}

/// A failed body read: a reset means the parent could not serve it (retried with the
/// release); anything else is the link failing.
fn read_failed(md5: Md5, e: quinn::ReadError) -> SyncError {
    match e {
        quinn::ReadError::Reset(code) => SyncError::NotServed(md5, code.into_inner()),
        e => LinkError::from(e).into(),
    }
}

/// Appends received bytes to `buf` until it holds `limit` bytes or the stream ends (then
/// returns true). Takes many received chunks per call: reading a packet's worth at a time
/// contends with the connection's driver for its lock and caps a stream at ~200 MB/s.
async fn read_up_to(
    recv: &mut quinn::RecvStream,
    buf: &mut Vec<u8>,
    limit: usize,
) -> Result<bool, quinn::ReadError> {
    let mut chunks: [_; 64] = std::array::from_fn(|_| Default::default());
    while buf.len() < limit {
        let Some(n) = recv.read_chunks(&mut chunks).await? else {
            return Ok(true);
        };
        for c in &chunks[..n] {
            buf.extend_from_slice(c);
        }
    }
    Ok(false)
}

/// Receives whole bodies of `size` bytes in all, back to back on one stream, and reads the
/// stream to its end (one more byte is an error).
async fn read_whole(
    recv: &mut quinn::RecvStream,
    first: Md5,
    size: u64,
) -> Result<Vec<u8>, SyncError> {
    let mut buf = Vec::with_capacity(size as usize);
    let eof = read_up_to(recv, &mut buf, size as usize + 1)
        .await
        .map_err(|e| read_failed(first, e))?;
    if !eof || buf.len() as u64 > size {
        return Err(SyncError::TooLong {
            md5: first,
            size,
            got: buf.len() as u64,
        });
    }
    Ok(buf)
}

/// Fetches bodies of at most [`BATCH`] bytes each, received whole on one stream, and stores
/// them in one blocking job (one job and one round trip for up to [`BATCH_FILES`] files). A batch with a corrupt body is asked
/// again for the bodies not yet stored.
async fn fetch_many(
    shared: &Arc<Shared>,
    conn: &Connection,
    bodies: &[(Expected, FlightHandle)],
    done: &AtomicU64,
) -> Result<(), SyncError> {
    let mut attempt = 1;
    loop {
        let missing: Vec<(Md5, u64)> = bodies
            .iter()
            .map(|(e, _)| (e.md5, e.size))
            .filter(|(md5, _)| !shared.store.has(md5))
            .collect();
        let Some(&(first, _)) = missing.first() else {
            return Ok(());
        };
        let total = missing.iter().map(|(_, s)| s).sum();
        let req = BodyRequest::Many(missing.iter().map(|(m, _)| *m).collect());
        let mut recv = request(conn, &req).await?;
        let data = read_whole(&mut recv, first, total).await?;
        done.fetch_add(data.len() as u64, Ordering::Relaxed);
        let me = shared.clone();
        let stored = tokio::task::spawn_blocking(move || {
            let mut at = 0usize;
            for (md5, size) in missing {
                let body = data.get(at..at + size as usize).unwrap_or(&data[at..]);
                at += body.len();
                let mut w = me.store.writer(md5, size)?;
                w.write(body)?;
                w.finish()?;
            }
            Ok::<(), SyncError>(())
        })
        .await
        .expect("storing bodies does not panic");
        match stored {
            Err(e) if e.is_corrupt() && attempt < BODY_ATTEMPTS => {
                warn!(attempt, "discarded corrupt body: {e}");
                attempt += 1;
            }
            r => return r,
        }
    }
}

/// Receives one body larger than [`BATCH`]. The network task only moves bytes, in batches of up to [`BATCH`];
/// each batch is hashed and written by a short blocking job while the next batch arrives
/// (no thread waits on the network), and the verified length is published to children
/// being served from this body. Dropped midway (link lost, node stopping), the writer keeps
/// what it has for a later resume.
async fn fetch_body(
    shared: &Arc<Shared>,
    conn: &Connection,
    exp: Expected,
    flight: &FlightHandle,
    done: &AtomicU64,
) -> Result<(), SyncError> {
    let (md5, size) = (exp.md5, exp.size);
    let me = shared.clone();
    let writer = tokio::task::spawn_blocking(move || me.store.resume_writer(exp))
        .await
        .expect("opening a body does not panic")?;
    flight.progress(writer.verified());
    let offset = writer.written();
    if offset > 0 && offset < size {
        debug!(%md5, offset, size, "resuming body");
    }
    if offset < size {
        let mut recv = request(conn, &BodyRequest::One { md5, offset }).await?;
        let mut received = offset;
        // Two buffers: one filling from the network while the other is hashed and written.
        let mut spare = Vec::with_capacity(BATCH);
        type Written = Result<(crate::store::BodyWriter, Vec<u8>), crate::store::StoreError>;
        let mut job: Option<tokio::task::JoinHandle<Written>> = None;
        let mut writer = Some(writer);
        let mut eof = false;
        while !eof {
            let mut buf = std::mem::take(&mut spare);
            buf.clear();
            eof = read_up_to(&mut recv, &mut buf, BATCH)
                .await
                .map_err(|e| read_failed(md5, e))?;
            received += buf.len() as u64;
            if received > size {
                return Err(SyncError::TooLong {
                    md5,
                    size,
                    got: received,
                });
            }
            // Progress counts bytes on disk, not bytes in buffers a kill would lose.
            if let Some(j) = job.take() {
                let (w, b) = j.await.expect("writing a batch does not panic")?;
                done.fetch_add(b.len() as u64, Ordering::Relaxed);
                flight.progress(w.verified());
                writer = Some(w);
                spare = b;
            }
            let mut w = writer.take().expect("the writer is back from its last job");
            job = Some(tokio::task::spawn_blocking(move || {
                w.write(&buf).map(|()| (w, buf))
            }));
        }
        if let Some(j) = job.take() {
            let (w, b) = j.await.expect("writing a batch does not panic")?;
            done.fetch_add(b.len() as u64, Ordering::Relaxed);
            flight.progress(w.verified());
            writer = Some(w);
        }
        let writer = writer.expect("the writer is back from its last job");
        return tokio::task::spawn_blocking(move || writer.finish())
            .await
            .expect("verifying a body does not panic")
            .map_err(SyncError::from);
    }
    tokio::task::spawn_blocking(move || writer.finish())
        .await
        .expect("verifying a body does not panic")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_bodies_are_batched_and_large_ones_go_alone() {
        let big = SMALL + 1;
        assert_eq!(
            plan(&[1, 2, big, 3, SMALL]),
            vec![vec![2], vec![0, 1, 3, 4]]
        );
        assert!(plan(&[]).is_empty());
        let many = vec![1; BATCH_FILES + 1];
        assert_eq!(
            plan(&many).iter().map(Vec::len).collect::<Vec<_>>(),
            [BATCH_FILES, 1]
        );
        let heavy = vec![SMALL; (BATCH_BYTES / SMALL) as usize + 1];
        assert_eq!(plan(&heavy).len(), 2);
    }

    #[test]
    fn relays_check_chunks_and_appliers_check_the_whole_body() {
        let md5 = Md5::of(b"x");
        let chunks = [Md5::of(b"a"), Md5::of(b"b")];
        // A pure relay: chunks only.
        let e = expected(md5, 9, &chunks, true, false);
        assert_eq!((e.chunks.len(), e.whole), (2, false));
        // A relay with a directory: both.
        let e = expected(md5, 9, &chunks, true, true);
        assert_eq!((e.chunks.len(), e.whole), (2, true));
        // A leaf: the whole body.
        let e = expected(md5, 9, &chunks, false, true);
        assert_eq!((e.chunks.len(), e.whole), (0, true));
        // No chunks: always whole.
        assert!(expected(md5, 9, &[], true, false).whole);
    }
}
