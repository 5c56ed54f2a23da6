//! Serving bodies to a child: from the store; for a body this node is still receiving, from
//! its partial file up to the verified length (cut-through), never a byte beyond it; on the
//! origin, from the file in `dir` it was scanned from, a verified piece at a time (see
//! [`super::in_dir`]). What is sent counts against the node's upload limit.

use std::io::SeekFrom;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use prometheus_client::metrics::counter::Counter;
use quinn::{RecvStream, SendStream, VarInt};
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::sync::watch;
use tracing::warn;

use super::super::flight::Flight;
use super::super::shared::Shared;
use super::in_dir::Found;
use crate::data::dir_body::{self, DirBody, DirBodyError};
use crate::net::{self, LinkError};
use crate::tree::hash::{read_onto, IO_BUF};
use crate::tree::Blake3;
use crate::wire::blocks::{Packer, BLOCK};
use crate::wire::{Bodies, BodyRequest, Compress, ErrorCode, MAX_BATCH};

/// Time a child has to send the request on a body stream it opened.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Answers one body stream: reads its request and sends what it asks for, or resets the
/// stream with [`ErrorCode::NotFound`]. A stream whose request does not come within
/// [`REQUEST_TIMEOUT`], or is malformed or over its size limit, is reset with
/// [`ErrorCode::Protocol`].
///
/// What is sent counts into the child's counters: bytes (`cascade_sent_bytes_total`), and
/// bodies sent to their end (`cascade_sent_bodies_total`).
pub async fn serve_body(
    shared: Arc<Shared>,
    mut send: SendStream,
    mut recv: RecvStream,
    (sent, bodies): (Counter, Counter),
) {
    let req = tokio::time::timeout(REQUEST_TIMEOUT, net::recv::<_, BodyRequest>(&mut recv)).await;
    let mut refused = |why: String| {
        warn!("bad body request: {why}");
        let _ = send.reset(VarInt::from_u32(ErrorCode::Protocol.code()));
        let _ = recv.stop(VarInt::from_u32(ErrorCode::Protocol.code()));
    };
    let req = match req {
        Ok(Ok(Some(r))) => r,
        Ok(Ok(None)) => return,
        Ok(Err(e)) => return refused(e.to_string()),
        Err(_) => return refused(format!("none within {REQUEST_TIMEOUT:?}")),
    };
    let mut buf = Vec::new();
    let mut out = match Out::new(req.compress, sent) {
        Ok(out) => out,
        Err(e) => return refused(format!("cannot compress: {e}")),
    };
    let result = match &req.bodies {
        Bodies::One { id, offset } => {
            send_body(&shared, &mut send, &mut out, *id, *offset, &mut buf).await
        }
        Bodies::Many(list) if list.len() > MAX_BATCH => Err(LinkError::Refused(format!(
            "{} bodies asked at once (at most {MAX_BATCH})",
            list.len()
        ))),
        Bodies::Many(list) => send_many(&shared, &mut send, &mut out, list, &mut buf).await,
    };
    let result = match result {
        Ok(()) => out.flush(&shared, &mut send).await,
        Err(e) => Err(e),
    };
    match result.and_then(|()| send.finish().map_err(LinkError::from)) {
        Ok(()) => {
            bodies.inc_by(match &req.bodies {
                Bodies::One { .. } => 1,
                Bodies::Many(list) => list.len() as u64,
            });
        }
        Err(e) => {
            warn!("serving {}: {e}", req.bodies);
            let _ = send.reset(VarInt::from_u32(ErrorCode::NotFound.code()));
        }
    }
}

/// How served bytes leave, and what counts them.
struct Out {
    mode: Mode,
    /// Bytes put on the stream, for this child.
    sent: Counter,
}

/// Raw, or gathered into blocks that are packed (compressed where that pays) off the async
/// threads, one block at a time.
enum Mode {
    Raw,
    Packed {
        /// Lent to the blocking job that packs a block, and back after it.
        packer: Option<Packer>,
        /// Raw bytes of the block being gathered (up to [`BLOCK`]).
        pending: Vec<u8>,
    },
}

impl Out {
    fn new(compress: Compress, sent: Counter) -> std::io::Result<Self> {
        let mode = match compress {
            Compress::Off => Mode::Raw,
            c => Mode::Packed {
                packer: Some(Packer::new(c)?),
                pending: Vec::with_capacity(BLOCK),
            },
        };
        Ok(Out { mode, sent })
    }

    /// Sends `data` (raw: handed to the stream as it is, not copied), or gathers it into
    /// blocks and sends each one that fills.
    async fn put(
        &mut self,
        shared: &Shared,
        send: &mut SendStream,
        data: Bytes,
    ) -> Result<(), LinkError> {
        if let Mode::Raw = self.mode {
            return wire_out(shared, send, data, &self.sent).await;
        }
        let mut rest = &data[..];
        while let Mode::Packed { pending, .. } = &mut self.mode {
            if rest.is_empty() {
                break;
            }
            let take = (BLOCK - pending.len()).min(rest.len());
            pending.extend_from_slice(&rest[..take]);
            rest = &rest[take..];
            if pending.len() == BLOCK {
                self.flush(shared, send).await?;
            }
        }
        Ok(())
    }

    /// Packs and sends the block gathered so far, if any.
    async fn flush(&mut self, shared: &Shared, send: &mut SendStream) -> Result<(), LinkError> {
        let Mode::Packed { packer, pending } = &mut self.mode else {
            return Ok(());
        };
        if pending.is_empty() {
            return Ok(());
        }
        let mut p = packer.take().expect("the packer is back from its last job");
        let raw = std::mem::take(pending);
        let (p, mut raw, block) = tokio::task::spawn_blocking(move || {
            let mut block = Vec::with_capacity(raw.len() / 2);
            p.pack(&raw, &mut block);
            (p, raw, block)
        })
        .await
        .expect("packing a block does not panic");
        *packer = Some(p);
        raw.clear();
        *pending = raw;
        wire_out(shared, send, Bytes::from(block), &self.sent).await
    }
}

/// Puts bytes on the stream, within the upload limit, and counts them.
async fn wire_out(
    shared: &Shared,
    send: &mut SendStream,
    bytes: Bytes,
    sent: &Counter,
) -> Result<(), LinkError> {
    let n = bytes.len() as u64;
    if let Some(limit) = &shared.upload {
        limit.acquire(n).await;
    }
    send.write_chunk(bytes)
        .await
        .map_err(|e| LinkError::Io(e.into()))?;
    shared.board.add_sent(n);
    sent.inc_by(n);
    Ok(())
}

/// Most bytes of stored bodies read by one blocking job of [`send_many`].
const STORED_RUN: u64 = 1024 * 1024;

/// Sends whole bodies back to back. Runs of small bodies held in the store are read by one
/// blocking job each (a job per file would cost more than reading it); a body still
/// arriving, held only in `dir`, larger than [`super::SMALL`] or missing goes through
/// [`send_body`].
async fn send_many(
    shared: &Arc<Shared>,
    send: &mut SendStream,
    out: &mut Out,
    mut list: &[Blake3],
    buf: &mut Vec<u8>,
) -> Result<(), LinkError> {
    while !list.is_empty() {
        let me = shared.clone();
        let ids = list.to_vec();
        let (n, bytes) = tokio::task::spawn_blocking(move || read_stored(&me, &ids))
            .await
            .expect("reading bodies does not panic")
            .map_err(LinkError::Io)?;
        if !bytes.is_empty() {
            out.put(shared, send, Bytes::from(bytes)).await?;
        }
        list = &list[n..];
        if let Some(id) = list.first() {
            send_body(shared, send, out, *id, 0, buf).await?;
            list = &list[1..];
        }
    }
    Ok(())
}

/// Reads the longest run of `ids` from the start that are held in the store or, on the
/// origin, in `dir`, small and not arriving, up to about [`STORED_RUN`] bytes: how many, and
/// their bytes back to back.
fn read_stored(shared: &Shared, ids: &[Blake3]) -> std::io::Result<(usize, Vec<u8>)> {
    let mut bytes = Vec::new();
    let held = shared.in_dir.as_ref().and(shared.held.current());
    for (i, id) in ids.iter().enumerate() {
        if bytes.len() as u64 >= STORED_RUN || shared.flights.has(id) {
            return Ok((i, bytes));
        }
        // The origin holds most bodies only in `dir`: looked for there first.
        let found = (shared.in_dir.as_ref()).and_then(|d| d.find(held.clone(), id));
        if let Some(found) = found {
            if found.wanted.size > super::SMALL {
                return Ok((i, bytes));
            }
            match dir_body::read_whole_into(&found.abs, found.wanted.clone(), &mut bytes) {
                Ok(()) => continue,
                // A file that changed before may have its body copied into the store.
                Err(_) if shared.store.has(id) => {}
                Err(e) => return Err(refused_from_dir(shared, &found, e)),
            }
        }
        match read_one_stored(shared, id, &mut bytes)? {
            true => {}
            false => return Ok((i, bytes)),
        }
    }
    Ok((ids.len(), bytes))
}

/// Appends body `id` from the store to `bytes` if it is there and small: whether it was.
fn read_one_stored(shared: &Shared, id: &Blake3, bytes: &mut Vec<u8>) -> std::io::Result<bool> {
    let file = match shared.store.open_body(id) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    let size = file.metadata()?.len();
    if size > super::SMALL {
        return Ok(false);
    }
    // One read of the length it has (`read_to_end` would ask for its size twice more and
    // read once more to find the end), into room not zeroed first.
    if let Err(e) = read_onto(&file, size, bytes) {
        // Stored bodies are never rewritten: a shorter one is a broken store.
        return Err(std::io::Error::new(
            e.kind(),
            format!("body {id}: {size} bytes in the store when opened, fewer read: {e}"),
        ));
    }
    Ok(true)
}

/// Where a body is read from while it is served: the store, or the partial file of a body
/// still arriving, of which only the verified prefix is read.
struct Source {
    file: Option<tokio::fs::File>,
    flight: Option<watch::Receiver<Flight>>,
}

impl Source {
    async fn new(shared: &Arc<Shared>, id: Blake3) -> Result<Self, LinkError> {
        // The flight first: a body that lands in the store meanwhile is then still found.
        let flight = shared.flights.get(&id);
        if flight.is_none() && !shared.store.has(&id) {
            // A node that became a relay holds its bodies in `dir` until asked for them.
            let me = shared.clone();
            let adopted = shared.applier.is_some()
                && tokio::task::spawn_blocking(move || me.adopt_from_dir(&id))
                    .await
                    .unwrap_or(false);
            if !adopted {
                return Err(LinkError::Refused(format!("body {id} is not held")));
            }
        }
        Ok(Source { file: None, flight })
    }

    /// How far the body may be read now: `None` means to its end. Waits while nothing beyond
    /// `pos` is verified yet.
    async fn readable(&mut self, pos: u64) -> Result<Option<u64>, LinkError> {
        let Some(flight) = &mut self.flight else {
            return Ok(None);
        };
        loop {
            let state = *flight.borrow_and_update();
            match state {
                Flight::Done => return Ok(None),
                Flight::Receiving { verified } if verified > pos => return Ok(Some(verified)),
                Flight::Receiving { .. } => {}
                Flight::Failed => {
                    return Err(LinkError::Refused("the fetch of this body failed".into()))
                }
            }
            if flight.changed().await.is_err() {
                // The handle went away without a last word: only the store can tell.
                return Err(LinkError::Refused("the fetch of this body ended".into()));
            }
        }
    }

    /// Opens the file once: the partial one while the body is arriving (it keeps its inode
    /// when it is moved into the store), else the stored body.
    async fn open(
        &mut self,
        shared: &Shared,
        id: Blake3,
        pos: u64,
        whole: bool,
    ) -> Result<&mut tokio::fs::File, LinkError> {
        if self.file.is_none() {
            let path = if whole {
                shared.store.path(&id)
            } else {
                shared.store.partial_path(&id)
            };
            let mut file = match tokio::fs::File::open(&path).await {
                // The body completed between the check and the open: its partial file was
                // moved into the store (same inode, every byte verified).
                Err(e) if !whole && e.kind() == std::io::ErrorKind::NotFound => {
                    tokio::fs::File::open(shared.store.path(&id)).await
                }
                r => r,
            }
            .map_err(LinkError::Io)?;
            if pos > 0 {
                file.seek(SeekFrom::Start(pos))
                    .await
                    .map_err(LinkError::Io)?;
            }
            self.file = Some(file);
        }
        Ok(self.file.as_mut().expect("just opened"))
    }
}

/// Sends body `id` from `offset` to its end (without finishing the stream).
async fn send_body(
    shared: &Arc<Shared>,
    send: &mut SendStream,
    out: &mut Out,
    id: Blake3,
    offset: u64,
    buf: &mut Vec<u8>,
) -> Result<(), LinkError> {
    if shared.in_dir.is_some() {
        let me = shared.clone();
        let found = tokio::task::spawn_blocking(move || me.body_in_dir(&id))
            .await
            .expect("looking a body up does not panic");
        if let Some(found) = found {
            return send_from_dir(shared, send, out, found, offset).await;
        }
    }
    let mut source = Source::new(shared, id).await?;
    // One buffer per stream, grown to the largest body served on it (up to IO_BUF). A body
    // still arriving has the size its fetch expects (many small bodies are served while
    // they arrive: a full buffer each would cost a megabyte a stream).
    let size = shared
        .store
        .size_hint(&id)
        .or_else(|| shared.flights.size(&id))
        .map_or(u64::MAX, |s| s.saturating_sub(offset));
    // Unknown: a full buffer. Known: the body plus one, so its end shows.
    let want = size.saturating_add(1).min(IO_BUF as u64) as usize;
    if buf.len() < want {
        buf.resize(want, 0);
    }
    let mut pos = offset;
    loop {
        let limit = source.readable(pos).await?;
        let want = limit.map_or(buf.len(), |l| (l - pos).min(buf.len() as u64) as usize);
        let file = source.open(shared, id, pos, limit.is_none()).await?;
        let n = file.read(&mut buf[..want]).await.map_err(LinkError::Io)?;
        if n == 0 {
            if limit.is_some() {
                return Err(LinkError::Refused(format!(
                    "body {id} ended before its verified length"
                )));
            }
            return Ok(());
        }
        pos += n as u64;
        out.put(shared, send, Bytes::copy_from_slice(&buf[..n]))
            .await?;
        if limit.is_some() {
            // A body still arriving: what is verified goes out now, not once a block fills.
            out.flush(shared, send).await?;
        }
    }
}

/// Sends a body from the file in `dir` it was scanned from, from `offset` to its end: each
/// piece (a chunk, or a small body whole) is read and checked off the async threads, the
/// next one while the last is sent. A file that no longer holds the body is reported to the
/// publisher and refused.
async fn send_from_dir(
    shared: &Arc<Shared>,
    send: &mut SendStream,
    out: &mut Out,
    found: Found,
    offset: u64,
) -> Result<(), LinkError> {
    let (path, wanted) = (found.abs.clone(), found.wanted.clone());
    let opened = tokio::task::spawn_blocking(move || DirBody::open(&path, wanted, offset))
        .await
        .expect("opening a body does not panic");
    let body = opened.map_err(|e| LinkError::Io(refused_from_dir(shared, &found, e)))?;
    let read = |mut body: DirBody, mut piece: Vec<u8>| {
        tokio::task::spawn_blocking(move || {
            let at = body.next_piece(&mut piece);
            (body, piece, at)
        })
    };
    // The next piece is read while the last is sent; each piece is handed to the stream as
    // it is (a buffer of its own, not copied again).
    let mut next = read(body, Vec::new());
    loop {
        let (body, piece, at) = next.await.expect("reading a body does not panic");
        let at = at.map_err(|e| LinkError::Io(refused_from_dir(shared, &found, e)))?;
        let Some(at) = at else {
            return Ok(());
        };
        next = read(body, Vec::new());
        let skip = offset.saturating_sub(at).min(piece.len() as u64) as usize;
        out.put(shared, send, Bytes::from(piece).slice(skip..))
            .await?;
    }
}

/// Why a body could not be served from `dir`; a changed file is reported to the publisher.
fn refused_from_dir(shared: &Shared, found: &Found, e: DirBodyError) -> std::io::Error {
    match e {
        DirBodyError::Changed { what, .. } => {
            if let Some(d) = &shared.in_dir {
                d.report(found, what.clone());
            }
            std::io::Error::other(format!(
                "`{}` changed since release {} was published ({what})",
                found.rel, found.version
            ))
        }
        DirBodyError::Io(e) => e,
    }
}
