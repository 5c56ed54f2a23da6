//! Asking the parent for bodies: many requests on parallel streams, each body verified
//! against the manifest (whole, chunk by chunk, or both) before it enters the store, with
//! retries for corrupt bodies and resumption of interrupted large ones.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use quinn::Connection;
use tokio::task::JoinSet;
use tracing::{debug, warn};

use super::super::flight::FlightHandle;
use super::super::shared::Shared;
use super::super::SyncError;
use super::STREAM_ABOVE;
use crate::data::{BodyWriter, Expected, StoreError};
use crate::net::{self, LinkError};
use crate::status::NodeState;
use crate::tree::{Md5, Release};
use crate::wire::BodyRequest;

/// Requests (a large body, or a batch of small ones) in flight at once on parallel streams.
const PARALLEL_BODIES: usize = 16;
/// Attempts per body before the release is reported as failed (and retried later).
const BODY_ATTEMPTS: u32 = 3;
/// How often fetch progress is refreshed on the board while bodies are in flight.
const PROGRESS_INTERVAL: std::time::Duration = std::time::Duration::from_millis(100);

/// Fetches `wanted` (bodies not in the store) on parallel streams, then flushes the store.
/// A node with children offers `release` to them as soon as the bodies are registered in
/// flight, and serves each body's verified prefix while the rest arrives.
pub async fn fetch_all(
    shared: &Arc<Shared>,
    conn: &Connection,
    wanted: Vec<Expected>,
    release: &Release,
    done: &Arc<AtomicU64>,
) -> Result<(), SyncError> {
    let version = release.version;
    let total: u64 = wanted.iter().map(|e| e.size).sum::<u64>() + done.load(Ordering::Relaxed);
    shared.board.set_own(|s| {
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
    for group in super::plan(&sizes) {
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
                if bodies.len() == 1 && bodies[0].0.size > STREAM_ABOVE as u64 {
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
        shared.board.set_own(|s| {
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
    net::send(&mut send, req).await?;
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

/// Fetches bodies of at most [`STREAM_ABOVE`] bytes each, received whole on one stream, and stores
/// them in one blocking job (one job and one round trip for up to [`BATCH_FILES`](super::BATCH_FILES) files). A batch with a corrupt body is asked
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

/// Receives one body larger than [`STREAM_ABOVE`]. The network task only moves bytes, in batches of up to [`STREAM_ABOVE`];
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
        let mut spare = Vec::with_capacity(STREAM_ABOVE);
        type Written = Result<(BodyWriter, Vec<u8>), StoreError>;
        let mut job: Option<tokio::task::JoinHandle<Written>> = None;
        let mut writer = Some(writer);
        let mut eof = false;
        while !eof {
            let mut buf = std::mem::take(&mut spare);
            buf.clear();
            eof = read_up_to(&mut recv, &mut buf, STREAM_ABOVE)
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
