//! The downstream half: accept this node's children, offer them every release it holds, serve
//! bodies from the store, and collect their reports.
//!
//! A connection is accepted only if its certificate (already verified against the deployment
//! CA) carries the name the child claims in its `Hello`, and that name is one of this node's
//! children in the topology. A child reports only for itself and its own subtree.

use std::collections::{HashMap, HashSet};
use std::io::SeekFrom;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use quinn::{Connection, Endpoint, Incoming, RecvStream, SendStream, VarInt};
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::{info, warn, Instrument};

use crate::flight::Flight;
use crate::link::{self, LinkError};
use crate::manifest::Md5;
use crate::node::Shared;
use crate::status::merge;
use crate::store::IO_BUF;
use crate::wire::{BodyRequest, ErrorCode, Up, MAX_BATCH};

/// Time a new connection has to send its `Hello`.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// Accepts children until the endpoint closes.
pub async fn run(shared: Arc<Shared>, endpoint: Endpoint) {
    let links: Arc<Mutex<HashMap<String, Connection>>> = Arc::default();
    let mut conns = JoinSet::new();
    while let Some(incoming) = endpoint.accept().await {
        conns.spawn(handle(shared.clone(), incoming, links.clone()));
        while conns.try_join_next().is_some() {}
    }
}

async fn handle(
    shared: Arc<Shared>,
    incoming: Incoming,
    links: Arc<Mutex<HashMap<String, Connection>>>,
) {
    let addr = incoming.remote_address();
    let span = tracing::info_span!("down", node = %shared.name, peer = %addr);
    async move {
        let conn = match incoming.await {
            Ok(c) => c,
            Err(e) => return warn!("refused connection from {addr}: TLS handshake failed: {e}"),
        };
        let (send, mut recv) = match tokio::time::timeout(HELLO_TIMEOUT, conn.accept_bi()).await {
            Ok(Ok(s)) => s,
            // Probes (a child checking its own parent is back) close here on purpose.
            Ok(Err(e)) => {
                return tracing::debug!("connection from {addr} closed before hello: {e}")
            }
            Err(_) => return link::close(&conn, ErrorCode::Protocol, "no hello"),
        };
        let hello = tokio::time::timeout(HELLO_TIMEOUT, link::recv::<_, Up>(&mut recv)).await;
        let (name, have) = match hello {
            Ok(Ok(Some(Up::Hello { name, have }))) => (name, have),
            Ok(Err(e)) => {
                warn!("refused {addr}: bad hello: {e}");
                return link::close(&conn, ErrorCode::Protocol, "bad hello");
            }
            _ => {
                warn!("refused {addr}: no hello");
                return link::close(&conn, ErrorCode::Protocol, "expected hello");
            }
        };
        if let Err(reason) = admit(&shared, &conn, &name) {
            warn!("refused {addr}: {reason}");
            return link::close(&conn, ErrorCode::NotAllowed, &reason);
        }
        if let Some(old) = links
            .lock()
            .expect("links lock")
            .insert(name.clone(), conn.clone())
        {
            link::close(&old, ErrorCode::Replaced, "replaced by a new connection");
        }
        info!(child = %name, have = ?have, "child connected");
        let result = serve_child(&shared, &conn, &name, have, send, recv)
            .instrument(tracing::info_span!("child", child = %name))
            .await;
        match result {
            Ok(()) => info!(child = %name, "child disconnected"),
            Err(e) => info!(child = %name, "child link ended: {e}"),
        }
        let mut links = links.lock().expect("links lock");
        if links
            .get(&name)
            .is_some_and(|c| c.stable_id() == conn.stable_id())
        {
            links.remove(&name);
            shared.board.send_modify(|b| {
                if let Some(s) = b.get_mut(&name) {
                    s.connected = false;
                }
            });
        }
    }
    .instrument(span)
    .await
}

/// Checks that `name` is one of our children and that the certificate was issued for it.
fn admit(shared: &Shared, conn: &Connection, name: &str) -> Result<(), String> {
    if !shared.topology.may_attach(name, &shared.name) {
        return Err(format!(
            "{name:?} is not a child of {:?} in the topology (nor names it as a backup parent)",
            shared.name
        ));
    }
    let cert = link::peer_certificate(conn).ok_or("no client certificate")?;
    if !cascade_certs::peer_has_name(&cert, name) {
        return Err(format!("certificate is not issued for {name:?}"));
    }
    Ok(())
}

async fn serve_child(
    shared: &Arc<Shared>,
    conn: &Connection,
    name: &str,
    have: Option<u64>,
    mut send: SendStream,
    mut recv: RecvStream,
) -> Result<(), LinkError> {
    // Reports may come for any node that can attach through this child (backups included).
    let mut subtree: HashSet<String> = shared.topology.reachable_below(name).into_iter().collect();
    subtree.insert(name.to_owned());
    let offers = async {
        let mut held = shared.offered.subscribe();
        let mut sent = have;
        loop {
            let current = held.borrow_and_update().clone();
            if let Some(h) = current {
                if sent.is_none_or(|v| h.release.version > v) {
                    link::send_frame(&mut send, &h.offer_frame).await?;
                    info!(version = h.release.version, "offered release");
                    sent = Some(h.release.version);
                }
            }
            if held.changed().await.is_err() {
                return Ok(());
            }
        }
    };
    let reports = async {
        while let Some(msg) = link::recv::<_, Up>(&mut recv).await? {
            match msg {
                Up::Status(list) => {
                    shared.board.send_if_modified(|b| {
                        merge(b, list.into_iter().filter(|s| subtree.contains(&s.name)))
                    });
                }
                Up::Hello { .. } => return Err(LinkError::Refused("second hello".into())),
            }
        }
        Ok(())
    };
    let bodies = async {
        let mut streams = JoinSet::new();
        loop {
            let (s, r) = conn.accept_bi().await?;
            streams.spawn(serve_body(shared.clone(), s, r));
            while streams.try_join_next().is_some() {}
        }
    };
    let r = tokio::select! {
        r = offers => r,
        r = reports => r,
        r = bodies => r,
    };
    if let Err(LinkError::Wire(e)) = &r {
        link::close(conn, ErrorCode::Protocol, &e.to_string());
    }
    r
}

async fn serve_body(shared: Arc<Shared>, mut send: SendStream, mut recv: RecvStream) {
    let req = match link::recv::<_, BodyRequest>(&mut recv).await {
        Ok(Some(r)) => r,
        Ok(None) => return,
        Err(e) => return warn!("bad body request: {e}"),
    };
    let mut buf = Vec::new();
    let result = match &req {
        BodyRequest::One { md5, offset } => {
            send_body(&shared, &mut send, *md5, *offset, &mut buf).await
        }
        BodyRequest::Many(list) if list.len() > MAX_BATCH => Err(LinkError::Refused(format!(
            "{} bodies asked at once (at most {MAX_BATCH})",
            list.len()
        ))),
        BodyRequest::Many(list) => {
            let mut r = Ok(());
            for md5 in list {
                r = send_body(&shared, &mut send, *md5, 0, &mut buf).await;
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
    fn new(shared: &Shared, md5: Md5) -> Result<Self, LinkError> {
        // The flight first: a body that lands in the store meanwhile is then still found.
        let flight = shared.flights.get(&md5);
        if flight.is_none() && !shared.store.has(&md5) {
            return Err(LinkError::Refused(format!("body {md5} is not held")));
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
        md5: Md5,
        pos: u64,
        whole: bool,
    ) -> Result<&mut tokio::fs::File, LinkError> {
        if self.file.is_none() {
            let path = if whole {
                shared.store.path(&md5)
            } else {
                shared.store.partial_path(&md5)
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

/// Sends body `md5` from `offset` to its end (without finishing the stream).
async fn send_body(
    shared: &Shared,
    send: &mut SendStream,
    md5: Md5,
    offset: u64,
    buf: &mut Vec<u8>,
) -> Result<(), LinkError> {
    let mut source = Source::new(shared, md5)?;
    // One buffer per stream, grown to the largest body served on it (up to IO_BUF).
    let size = shared
        .store
        .size_hint(&md5)
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
        let file = source.open(shared, md5, pos, limit.is_none()).await?;
        let n = file.read(&mut buf[..want]).await.map_err(LinkError::Io)?;
        if n == 0 {
            if limit.is_some() {
                return Err(LinkError::Refused(format!(
                    "body {md5} ended before its verified length"
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
        shared.sent_bytes.fetch_add(n as u64, Ordering::Relaxed);
    }
}
