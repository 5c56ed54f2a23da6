//! Serving bodies to a child: from the store, or, for a body this node is still receiving,
//! from its partial file up to the verified length (cut-through), never a byte beyond it.
//! What is sent counts against the node's upload limit.

use std::io::SeekFrom;
use std::sync::Arc;
use std::time::Duration;

use quinn::{RecvStream, SendStream, VarInt};
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::sync::watch;
use tracing::warn;

use super::super::flight::Flight;
use super::super::shared::Shared;
use crate::net::{self, LinkError};
use crate::tree::hash::IO_BUF;
use crate::tree::Blake3;
use crate::wire::{BodyRequest, ErrorCode, MAX_BATCH};

/// Time a child has to send the request on a body stream it opened.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Answers one body stream: reads its request and sends what it asks for, or resets the
/// stream with [`ErrorCode::NotFound`]. A stream whose request does not come within
/// [`REQUEST_TIMEOUT`], or is malformed or over its size limit, is reset with
/// [`ErrorCode::Protocol`].
pub async fn serve_body(shared: Arc<Shared>, mut send: SendStream, mut recv: RecvStream) {
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
    let result = match &req {
        BodyRequest::One { id, offset } => {
            send_body(&shared, &mut send, *id, *offset, &mut buf).await
        }
        BodyRequest::Many(list) if list.len() > MAX_BATCH => Err(LinkError::Refused(format!(
            "{} bodies asked at once (at most {MAX_BATCH})",
            list.len()
        ))),
        BodyRequest::Many(list) => {
            let mut r = Ok(());
            for id in list {
                r = send_body(&shared, &mut send, *id, 0, &mut buf).await;
                if r.is_err() {
                    break;
                }
            }
            r
        }
    };
    match result.and_then(|()| send.finish().map_err(LinkError::from)) {
        Ok(()) => {}
        Err(e) => {
            warn!("serving {req:?}: {e}");
            let _ = send.reset(VarInt::from_u32(ErrorCode::NotFound.code()));
        }
    }
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
            let mut file = tokio::fs::File::open(&path).await.map_err(LinkError::Io)?;
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
    id: Blake3,
    offset: u64,
    buf: &mut Vec<u8>,
) -> Result<(), LinkError> {
    let mut source = Source::new(shared, id).await?;
    // One buffer per stream, grown to the largest body served on it (up to IO_BUF).
    let size = shared
        .store
        .size_hint(&id)
        .map_or(u64::MAX, |s| s.saturating_sub(offset));
    // Unknown (still arriving): a full buffer. Known: the body plus one, so its end shows.
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
        if let Some(limit) = &shared.upload {
            limit.acquire(n as u64).await;
        }
        send.write_all(&buf[..n])
            .await
            .map_err(|e| LinkError::Io(e.into()))?;
        shared.board.add_sent(n as u64);
    }
}
