//! Asking the parent for bodies: many requests on parallel streams, each body verified
//! against the manifest (whole, chunk by chunk, or both) before it enters the store, with
//! retries for corrupt bodies and resumption of interrupted large ones.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use quinn::{Connection, RecvStream};
use tokio::task::{JoinHandle, JoinSet};
use tracing::{debug, info, warn};

use super::super::flight::FlightHandle;
use super::super::shared::Shared;
use super::super::SyncError;
use super::STREAM_ABOVE;
use crate::data::{BodyWriter, Expected, Stage, StoreError};
use crate::net::{self, LinkError};
use crate::status::rate::Rate;
use crate::status::render::bytes;
use crate::status::NodeState;
use crate::tree::{Blake3, Manifest, Md5, Release};
use crate::wire::blocks::{parse_header, Unpacker, BLOCK_HEADER};
use crate::wire::{Bodies, BodyRequest, Compress, ErrorCode, WireError};

/// Requests (a large body, or a batch of small ones) in flight at once on parallel streams.
const PARALLEL_BODIES: usize = 16;
/// Attempts per body before the release is reported as failed (and retried later).
const BODY_ATTEMPTS: u32 = 3;
/// How often fetch progress is refreshed on the board while bodies are in flight.
const PROGRESS_INTERVAL: Duration = Duration::from_millis(100);
/// How often a long fetch logs its progress (at `info`).
const PROGRESS_LOG_EVERY: Duration = Duration::from_secs(5);

/// Fetches `wanted` (bodies not in the store) on parallel streams, then flushes the store.
/// `wanted` lists the files of `release` whose bodies to fetch, by manifest index, each body
/// once: 4 bytes a body (a first sync of a million files fetches a million), each body's
/// expectation made only when its request starts. A node with children offers `release` to
/// them as soon as the bodies are expected, and serves each body's verified prefix while the
/// rest arrives. `done` counts the body bytes received (as they arrive) across calls for one
/// release. The files `stage` wants are written there, at their own paths, instead of into
/// the store.
pub async fn fetch_all(
    shared: &Arc<Shared>,
    conn: &Connection,
    wanted: Vec<u32>,
    release: &Release,
    done: &Arc<AtomicU64>,
    stage: Option<&Arc<Stage>>,
) -> Result<(), SyncError> {
    let version = release.version;
    let entries = release.manifest.entries();
    let size = |i: u32| release.manifest.body_size(i);
    let total: u64 = wanted.iter().map(|&i| size(i)).sum::<u64>() + done.load(Ordering::Relaxed);
    let files = wanted.len() as u64;
    let files_done = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut rate = Rate::default();
    let mut logged = started;
    let mut progress = |now: Instant| {
        // Corrupt bodies asked again arrive twice: never show more than the total.
        let got = done.load(Ordering::Relaxed).min(total);
        let bps = rate.sample(now, got);
        shared.board.set_own(|s| {
            s.state = NodeState::Fetching {
                version,
                done_bytes: got,
                total_bytes: total,
            };
            s.rate_bps = bps;
        });
        if now.duration_since(logged) >= PROGRESS_LOG_EVERY {
            logged = now;
            let eta = Rate::eta(total - got, bps).map_or("unknown".to_owned(), |d| {
                humantime::format_duration(d).to_string()
            });
            info!(
                "fetching release {version}: {} of {files} files, {} of {} ({}/s), {eta} left",
                files_done.load(Ordering::Relaxed),
                bytes(got),
                bytes(total),
                bytes(bps),
            );
        }
    };
    progress(started);

    shared.store.begin_batch()?;
    // A body written to the stage is never served from there (it is not in the store): it
    // has no flight.
    let staged = |i: u32| stage.is_some_and(|s| s.wants(i));
    let _expecting = match stage {
        None => shared.flights.expect(&release.manifest, &wanted),
        Some(_) => {
            let stored: Vec<u32> = wanted.iter().copied().filter(|&i| !staged(i)).collect();
            shared.flights.expect(&release.manifest, &stored)
        }
    };
    // Every body is expected: children may now ask for any of them.
    shared.offer_early(release);
    let asker = Asker {
        shared: shared.clone(),
        conn: conn.clone(),
        done: done.clone(),
        files_done: files_done.clone(),
        stage: stage.cloned().map(|s| (s, release.manifest.clone())),
    };
    let serves = shared.serves();
    let mut queue = super::plan(wanted.iter().map(|&i| (i, size(i)))).map(|group| {
        (group.into_iter())
            .filter_map(|i| super::expected(&entries[i as usize], serves).map(|e| (i, e)))
            .map(|(i, e)| {
                let flight = (!staged(i)).then(|| shared.flights.start(e.blake3));
                (i, e, flight)
            })
            .collect::<Vec<Fetched>>()
    });
    let mut running = JoinSet::new();
    let mut tick = tokio::time::interval(PROGRESS_INTERVAL);
    loop {
        while running.len() < PARALLEL_BODIES {
            let Some(bodies) = queue.next() else {
                break;
            };
            running.spawn(asker.clone().fetch(bodies));
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
        progress(Instant::now());
    }

    // Every body is on disk before anything is applied.
    let me = shared.clone();
    tokio::task::spawn_blocking(move || me.store.commit_batch())
        .await
        .expect("flushing the store does not panic")?;
    Ok(())
}

/// A body to fetch: the manifest index of a file that has it, what it must be, and its
/// flight (none for a body written to the stage).
type Fetched = (u32, Expected, Option<FlightHandle>);

/// What every request of one fetch shares: the node, the link, and the counts.
#[derive(Clone)]
struct Asker {
    shared: Arc<Shared>,
    conn: Connection,
    done: Arc<AtomicU64>,
    /// Bodies stored.
    files_done: Arc<AtomicU64>,
    /// Where the files of new directories go, and the manifest that names them.
    stage: Option<(Arc<Stage>, Manifest)>,
}

impl Asker {
    /// Fetches one group of [`super::plan`]: a body larger than [`STREAM_ABOVE`] streamed
    /// alone, or bodies received whole. A body that does not match the manifest is never
    /// stored; the group is asked again, at most [`BODY_ATTEMPTS`] times in all (a large
    /// body resumes after its last good chunk). Each flight ends once its body is stored.
    async fn fetch(self, bodies: Vec<Fetched>) -> Result<(), SyncError> {
        let streamed = bodies.len() == 1 && bodies[0].1.size > STREAM_ABOVE as u64;
        let mut attempt = 1;
        loop {
            let fetched = if streamed {
                let (_, exp, flight) = &bodies[0];
                self.streamed(exp.clone(), flight.as_ref()).await
            } else {
                self.whole(&bodies, attempt > 1).await
            };
            match fetched {
                Err(e) if e.is_corrupt() => {
                    self.shared.metrics.verification_failed("body");
                    warn!(attempt, "discarded corrupt body: {e}");
                    if attempt >= BODY_ATTEMPTS {
                        return Err(e);
                    }
                    attempt += 1;
                }
                Err(e) => return Err(e),
                Ok(()) => break,
            }
        }
        self.files_done
            .fetch_add(bodies.len() as u64, Ordering::Relaxed);
        self.shared
            .metrics
            .received_files
            .inc_by(bodies.len() as u64);
        bodies
            .into_iter()
            .flat_map(|(.., f)| f)
            .for_each(|f| f.done());
        Ok(())
    }

    /// Opens a body stream and asks for `bodies`, compressed as this node's `compress` says.
    async fn request(&self, bodies: Bodies) -> Result<Incoming, SyncError> {
        let compress = self.shared.compress;
        let (mut send, recv) = self.conn.open_bi().await.map_err(LinkError::from)?;
        net::send(&mut send, &BodyRequest { bodies, compress }).await?;
        send.finish().map_err(LinkError::from)?;
        let arrived = Arrived {
            release: self.done.clone(),
            total: self.shared.metrics.received_bytes.clone(),
        };
        Ok(Incoming::new(recv, compress, arrived).map_err(LinkError::Io)?)
    }

    /// Fetches `bodies` (each at most [`STREAM_ABOVE`]), received whole on one stream, and
    /// stores them (or stages them: see [`Stage`]) in one blocking job: one job and one round
    /// trip for up to [`super::BATCH_FILES`] files. Asked again (`again`) after a corrupt
    /// body, only those still missing: the first attempt's good bodies before the bad one
    /// were kept. (A first attempt asks for all: they were chosen as missing, and this
    /// fetch's flights own them since.)
    async fn whole(&self, bodies: &[Fetched], again: bool) -> Result<(), SyncError> {
        let stage = self.stage.clone();
        let staged = |i: u32| stage.as_ref().is_some_and(|(s, _)| s.staged(i));
        let missing: Vec<(u32, Expected)> = bodies
            .iter()
            .map(|(i, e, _)| (*i, e.clone()))
            .filter(|(i, e)| !again || !(staged(*i) || self.shared.store.has(&e.blake3)))
            .collect();
        let Some(first) = missing.first().map(|(_, e)| e.blake3) else {
            return Ok(());
        };
        let total = missing.iter().map(|(_, e)| e.size).sum();
        let bodies = Bodies::Many(missing.iter().map(|(_, e)| e.blake3).collect());
        let mut recv = self.request(bodies).await?;
        let data = read_whole(&mut recv, first, total).await?;
        let me = self.shared.clone();
        tokio::task::spawn_blocking(move || {
            let mut at = 0usize;
            let slices: Vec<&[u8]> = (missing.iter())
                .map(|(_, e)| {
                    let body = data.get(at..at + e.size as usize).unwrap_or(&data[at..]);
                    at += body.len();
                    body
                })
                .collect();
            // Every MD5 of the batch at once, several bodies side by side.
            let md5s = Md5::of_many(&slices);
            for (((i, e), body), md5) in missing.into_iter().zip(slices).zip(md5s) {
                match (&stage, &me.applier) {
                    (Some((stage, manifest)), Some(applier)) if stage.wants(i) => {
                        let entry = &manifest.entries()[i as usize];
                        stage.write(i, entry, applier.mode_of(entry), body, md5)?;
                    }
                    _ => {
                        let mut w = me.store.writer(e)?;
                        w.write_whole(body, md5)?;
                        w.finish()?;
                    }
                }
            }
            Ok(())
        })
        .await
        .expect("storing bodies does not panic")
    }

    /// Receives one body larger than [`STREAM_ABOVE`], from where an earlier attempt
    /// stopped. The network task only moves bytes, in buffers of up to [`STREAM_ABOVE`];
    /// each is hashed and written by a short blocking job while the next arrives (no thread
    /// waits on the network), and the verified length is published to children being served
    /// from this body. Dropped midway (link lost, node stopping), the writer keeps what it
    /// has for a later resume.
    async fn streamed(
        &self,
        exp: Expected,
        flight: Option<&FlightHandle>,
    ) -> Result<(), SyncError> {
        let (id, size) = (exp.blake3, exp.size);
        let me = self.shared.clone();
        let mut writer = tokio::task::spawn_blocking(move || me.store.resume_writer(exp))
            .await
            .expect("opening a body does not panic")?;
        if let Some(f) = flight {
            f.progress(writer.verified());
        }
        let offset = writer.written();
        if offset < size {
            if offset > 0 {
                debug!(%id, offset, size, "resuming body");
            }
            let mut recv = self.request(Bodies::One { id, offset }).await?;
            writer = self.receive(&mut recv, writer, id, size, flight).await?;
        }
        tokio::task::spawn_blocking(move || writer.finish())
            .await
            .expect("verifying a body does not panic")?;
        Ok(())
    }

    /// Writes what `recv` brings into `writer`, one buffer filling from the network while
    /// the other is hashed and written. Progress counts bytes as they arrive (a slow link
    /// shows them moving); what children are served is only what is on disk and verified.
    async fn receive(
        &self,
        recv: &mut Incoming,
        writer: BodyWriter,
        id: Blake3,
        size: u64,
        flight: Option<&FlightHandle>,
    ) -> Result<BodyWriter, SyncError> {
        let received = writer.written();
        let landed = |w: &BodyWriter| {
            if let Some(f) = flight {
                f.progress(w.verified());
            }
        };
        let (writer, _) = pipeline(recv, writer, received, size, |w, buf| w.write(buf), landed)
            .await
            .map_err(|e| match e {
                Piped::Read(e) => e.for_body(id),
                Piped::TooLong(got) => SyncError::TooLong { id, size, got },
                Piped::Land(e) => e.into(),
            })?;
        Ok(writer)
    }
}

/// Why [`pipeline`] stopped.
pub(in crate::sync) enum Piped<E> {
    Read(ReadFail),
    /// More than the size expected arrived (this many bytes so far).
    TooLong(u64),
    Land(E),
}

/// Receives `recv` into `state`, `received` bytes in already, at most `size` in all: one
/// buffer of up to [`STREAM_ABOVE`] fills from the network while a short blocking job passes
/// the last one to `land` (which hashes and writes it; no thread waits on the network), and
/// `landed` sees the state after each. Returns the state and the bytes received. A stream
/// that breaks off leaves every buffer received before it landed.
pub(in crate::sync) async fn pipeline<S, E>(
    recv: &mut Incoming,
    state: S,
    mut received: u64,
    size: u64,
    land: impl Fn(&mut S, &[u8]) -> Result<(), E> + Send + Sync + Copy + 'static,
    mut landed: impl FnMut(&S),
) -> Result<(S, u64), Piped<E>>
where
    S: Send + 'static,
    E: Send + 'static,
{
    type Job<S, E> = JoinHandle<Result<(S, Vec<u8>), E>>;
    let mut spare = Vec::with_capacity(STREAM_ABOVE);
    let mut job: Option<Job<S, E>> = None;
    let mut state = Some(state);
    let mut eof = false;
    while !eof {
        let mut buf = std::mem::take(&mut spare);
        buf.clear();
        eof = match recv.read_up_to(&mut buf, STREAM_ABOVE).await {
            Ok(eof) => eof,
            Err(e) => {
                // What was received stays whole on disk: the last buffer is written first.
                if let Some(j) = job.take() {
                    let _ = j.await;
                }
                return Err(Piped::Read(e));
            }
        };
        received += buf.len() as u64;
        if received > size {
            return Err(Piped::TooLong(received));
        }
        if let Some(j) = job.take() {
            let (s, b) = j
                .await
                .expect("landing a buffer does not panic")
                .map_err(Piped::Land)?;
            landed(&s);
            state = Some(s);
            spare = b;
        }
        let mut s = state.take().expect("the state is back from its last job");
        job = Some(tokio::task::spawn_blocking(move || {
            land(&mut s, &buf).map(|()| (s, buf))
        }));
    }
    let state = match job {
        Some(j) => {
            let (s, _) = j
                .await
                .expect("landing a buffer does not panic")
                .map_err(Piped::Land)?;
            landed(&s);
            s
        }
        None => state.expect("no job holds the state"),
    };
    Ok((state, received))
}

impl SyncError {
    /// The parent sent bytes that do not match the manifest (worth asking again).
    fn is_corrupt(&self) -> bool {
        matches!(
            self,
            SyncError::Store(StoreError::Mismatch { .. } | StoreError::ChunkMismatch { .. })
                | SyncError::TooLong { .. }
                | SyncError::BadBlock(..)
        )
    }
}

/// Why a body stream could not be read.
pub(in crate::sync) enum ReadFail {
    Read(quinn::ReadError),
    /// A packed stream broke the block format.
    Block(WireError),
}

impl ReadFail {
    /// A reset means the parent could not serve the body (retried with the release); a bad
    /// block, a corrupt body (asked again); anything else is the link failing.
    fn for_body(self, id: Blake3) -> SyncError {
        match self {
            ReadFail::Read(quinn::ReadError::Reset(code)) => {
                SyncError::NotServed(id, code.into_inner())
            }
            ReadFail::Read(e) => LinkError::from(e).into(),
            ReadFail::Block(e) => SyncError::BadBlock(id, e),
        }
    }
}

impl From<quinn::ReadExactError> for ReadFail {
    fn from(e: quinn::ReadExactError) -> Self {
        match e {
            quinn::ReadExactError::FinishedEarly(_) => ReadFail::Block(WireError::Truncated),
            quinn::ReadExactError::ReadError(e) => ReadFail::Read(e),
        }
    }
}

/// A body stream being received: the raw bytes, or blocks unpacked as they arrive.
pub(in crate::sync) struct Incoming {
    recv: RecvStream,
    unpacker: Option<Unpacker>,
    /// One block's stored bytes.
    stored: Vec<u8>,
    arrived: Arrived,
}

/// Body bytes counted as they arrive: for the release (what progress shows) and since the
/// node started (`cascade_received_bytes_total`).
pub(in crate::sync) struct Arrived {
    pub release: Arc<AtomicU64>,
    pub total: prometheus_client::metrics::counter::Counter,
}

impl Arrived {
    fn add(&self, n: u64) {
        self.release.fetch_add(n, Ordering::Relaxed);
        self.total.inc_by(n);
    }
}

impl Incoming {
    /// Reads `recv`, a stream of bodies sent as `compress` says.
    pub(in crate::sync) fn new(
        recv: RecvStream,
        compress: Compress,
        arrived: Arrived,
    ) -> std::io::Result<Self> {
        let unpacker = match compress {
            Compress::Off => None,
            _ => Some(Unpacker::new()?),
        };
        Ok(Incoming {
            recv,
            unpacker,
            stored: Vec::new(),
            arrived,
        })
    }

    /// Appends received (unpacked) bytes to `buf` until it holds at least `limit` bytes or
    /// the stream ends (then returns true). A packed stream may end only between blocks.
    pub(in crate::sync) async fn read_up_to(
        &mut self,
        buf: &mut Vec<u8>,
        limit: usize,
    ) -> Result<bool, ReadFail> {
        let Some(unpacker) = &mut self.unpacker else {
            return read_up_to(&mut self.recv, buf, limit, &self.arrived)
                .await
                .map_err(ReadFail::Read);
        };
        while buf.len() < limit {
            let mut header = [0; BLOCK_HEADER];
            match stalled(self.recv.read_exact(&mut header)).await? {
                Err(quinn::ReadExactError::FinishedEarly(0)) => return Ok(true),
                got => got?,
            }
            let header = parse_header(header).map_err(ReadFail::Block)?;
            self.stored.resize(header.stored, 0);
            stalled(self.recv.read_exact(&mut self.stored)).await??;
            let before = buf.len();
            unpacker
                .unpack(header, &self.stored, buf)
                .map_err(ReadFail::Block)?;
            let n = (buf.len() - before) as u64;
            self.arrived.add(n);
        }
        Ok(false)
    }
}

/// Runs one read, giving the stream up as a lost link if nothing comes within
/// [`STALL_TIMEOUT`] (dropping the stream then stops it).
async fn stalled<T>(read: impl std::future::Future<Output = T>) -> Result<T, ReadFail> {
    tokio::time::timeout(STALL_TIMEOUT, read)
        .await
        .map_err(|_| {
            ReadFail::Read(quinn::ReadError::ConnectionLost(
                quinn::ConnectionError::TimedOut,
            ))
        })
}

/// Longest a body stream may go without a byte before it is given up (and the body asked
/// again, resuming after its last good chunk): a parent that keeps the link alive but
/// stops sending never stalls a fetch for good. Long enough for a relay serving a body it
/// still receives over a slow link (one 4 MiB chunk at 40 KB/s).
const STALL_TIMEOUT: Duration = Duration::from_secs(120);

/// Appends received bytes to `buf` until it holds `limit` bytes or the stream ends (then
/// returns true). Takes many received chunks per call: reading a packet's worth at a time
/// contends with the connection's driver for its lock and caps a stream at ~200 MB/s.
async fn read_up_to(
    recv: &mut RecvStream,
    buf: &mut Vec<u8>,
    limit: usize,
    arrived: &Arrived,
) -> Result<bool, quinn::ReadError> {
    let mut chunks: [_; 64] = std::array::from_fn(|_| Default::default());
    while buf.len() < limit {
        let read = tokio::time::timeout(STALL_TIMEOUT, recv.read_chunks(&mut chunks)).await;
        let Ok(read) = read else {
            let _ = recv.stop(quinn::VarInt::from_u32(ErrorCode::Protocol.code()));
            return Err(quinn::ReadError::ConnectionLost(
                quinn::ConnectionError::TimedOut,
            ));
        };
        let Some(n) = read? else {
            return Ok(true);
        };
        for c in &chunks[..n] {
            buf.extend_from_slice(c);
            arrived.add(c.len() as u64);
        }
    }
    Ok(false)
}

/// Receives whole bodies of `size` bytes in all, back to back on one stream, and reads the
/// stream to its end (one more byte is an error).
async fn read_whole(recv: &mut Incoming, first: Blake3, size: u64) -> Result<Vec<u8>, SyncError> {
    let mut buf = Vec::with_capacity(size as usize);
    let eof = recv
        .read_up_to(&mut buf, size as usize + 1)
        .await
        .map_err(|e| e.for_body(first))?;
    if !eof || buf.len() as u64 > size {
        return Err(SyncError::TooLong {
            id: first,
            size,
            got: buf.len() as u64,
        });
    }
    Ok(buf)
}
