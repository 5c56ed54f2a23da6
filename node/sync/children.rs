//! The children side: accept this node's children, offer them every release it holds, serve
//! their body streams, and collect their reports.
//!
//! A connection is accepted only if its certificate (already verified against the deployment
//! CA) carries the name the child claims in its `Hello`, and that name is one of this node's
//! children in the topology. A child reports only for itself and its own subtree.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use quinn::{Connection, Endpoint, Incoming, RecvStream, SendStream};
use tokio::task::JoinSet;
use tracing::{debug, info, warn, Instrument};

use super::bodies::serve_body;
use super::held::Offer;
use super::layout::Layout;
use super::shared::Shared;
use crate::net::{self, LinkError};
use crate::status::now_ms;
use crate::tree::{newer, Blake3};
use crate::wire::{Compress, ErrorCode, Up};

/// Time a new connection has to send its `Hello`.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// Most connections a node holds open or in their handshake at once: far more than its
/// children ever need (one link each, a probe now and then), few enough that a flood of
/// connections (certificate or not) cannot exhaust its memory.
pub const MAX_CONNECTIONS: usize = 1024;

/// Accepts children until the endpoint closes.
pub async fn run(shared: Arc<Shared>, endpoint: Endpoint) {
    let links: Arc<Mutex<HashMap<String, Connection>>> = Arc::default();
    let mut conns = JoinSet::new();
    let mut refused = 0u64;
    while let Some(incoming) = endpoint.accept().await {
        while conns.try_join_next().is_some() {}
        if conns.len() >= MAX_CONNECTIONS {
            // Logged at the first refusal and then every thousandth: a flood must not flood
            // the log too.
            if refused % 1000 == 0 {
                warn!(
                    peer = %incoming.remote_address(),
                    "refused a connection: {MAX_CONNECTIONS} already open ({refused} refused before)"
                );
            }
            refused += 1;
            incoming.refuse();
            continue;
        }
        conns.spawn(handle(shared.clone(), incoming, links.clone()));
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
            Err(_) => return net::close(&conn, ErrorCode::Protocol, "no hello"),
        };
        let hello = tokio::time::timeout(HELLO_TIMEOUT, net::recv::<_, Up>(&mut recv)).await;
        let (name, have, root, push) = match hello {
            Ok(Ok(Some(Up::Hello {
                name,
                have,
                root,
                push,
            }))) => (name, have, root, push),
            Ok(Err(e)) => {
                warn!("refused {addr}: bad hello: {e}");
                return net::close(&conn, ErrorCode::Protocol, "bad hello");
            }
            _ => {
                warn!("refused {addr}: no hello");
                return net::close(&conn, ErrorCode::Protocol, "expected hello");
            }
        };
        if let Err(reason) = admit(&shared, &conn, &name) {
            warn!("refused {addr}: {reason}");
            redirect(&shared, &conn, &name, have.zip(root), push, send).await;
            return net::close(&conn, ErrorCode::NotAllowed, &reason);
        }
        if let Some(old) = links
            .lock()
            .expect("links lock")
            .insert(name.clone(), conn.clone())
        {
            net::close(&old, ErrorCode::Replaced, "replaced by a new connection");
        }
        info!(child = %name, have = ?have, "child connected");
        let _pushing = push.map(|c| shared.pusher.register(&conn, &name, c));
        let result = serve_child(&shared, &conn, &name, (have, root, push), send, recv)
            .instrument(tracing::info_span!("child", child = %name))
            .await;
        match result {
            Ok(()) => info!(child = %name, "child disconnected"),
            Err(e) => info!(child = %name, "child link ended: {e}"),
        }
        log_path(&conn);
        let mut links = links.lock().expect("links lock");
        if links
            .get(&name)
            .is_some_and(|c| c.stable_id() == conn.stable_id())
        {
            links.remove(&name);
            shared.board.disconnected(&name);
        }
    }
    .instrument(span)
    .await
}

/// Logs (at debug) how the link's path to the child has carried what was sent so far: the
/// packet size it found, packets lost, and whether it ever fell back to the smallest packets.
fn log_path(conn: &Connection) {
    let path = conn.stats().path;
    debug!(
        mtu = path.current_mtu,
        lost_packets = path.lost_packets,
        black_holes = path.black_holes_detected,
        rtt_us = path.rtt.as_micros() as u64,
        "path to the child"
    );
}

/// How long a node that is no longer a child here has to take the release that moves it.
const REDIRECT_GRACE: Duration = Duration::from_secs(5);

/// A node of the deployment (its certificate names it) that dials a parent it no longer has
/// (it was down when it was moved or removed, or its moving release has not reached it yet)
/// is sent this node's newest release, which carries the topology, so that it learns where
/// it belongs or that it left the tree; nothing else (no body is served). The link is closed
/// once it leaves, or after [`REDIRECT_GRACE`].
async fn redirect(
    shared: &Shared,
    conn: &Connection,
    name: &str,
    has: Option<(u64, Blake3)>,
    compress: Option<Compress>,
    mut send: SendStream,
) {
    let certified =
        net::peer_certificate(conn).is_some_and(|c| cascade_certs::peer_has_name(&c, name));
    let offered = shared.held.offers().borrow().clone();
    let Some(offer) = offered
        .or_else(|| shared.held.current())
        .filter(|o| certified && newer(o.version(), has.map(|h| h.0)))
    else {
        return;
    };
    let (frame, _) = offer_frame(offer.clone(), has, compress).await;
    if net::send_frame(&mut send, &frame).await.is_ok() {
        shared.board.add_offered(frame.len() as u64);
        let _ = send.finish();
        info!(node = %name, version = offer.version(), "sent the release with the current topology to a node that is not a child here");
        let _ = tokio::time::timeout(REDIRECT_GRACE, conn.closed()).await;
    }
}

/// Checks that `name` is one of our children and that the certificate was issued for it.
fn admit(shared: &Shared, conn: &Connection, name: &str) -> Result<(), String> {
    if !shared
        .layouts
        .current()
        .topology
        .may_attach(name, &shared.name)
    {
        return Err(format!(
            "{name:?} is not a child of {:?} in the topology (nor names it as a backup parent)",
            shared.name
        ));
    }
    let cert = net::peer_certificate(conn).ok_or("no client certificate")?;
    if !cascade_certs::peer_has_name(&cert, name) {
        return Err(format!("certificate is not issued for {name:?}"));
    }
    Ok(())
}

/// Resolves (closing `conn`) once the topology no longer lets `name` attach here: first the
/// release that carries that topology is offered to it (by the offers of [`serve_child`]),
/// so it learns where it belongs, or that it left the tree; the link is closed when it leaves
/// or after [`REDIRECT_GRACE`].
async fn no_longer_a_child(shared: &Shared, conn: &Connection, name: &str) -> LinkError {
    let mut layouts = shared.layouts.subscribe();
    let version = loop {
        if layouts.changed().await.is_err() {
            return std::future::pending().await;
        }
        let layout = layouts.borrow_and_update().clone();
        if !layout.topology.may_attach(name, &shared.name) {
            break layout.version;
        }
    };
    let mut offers = shared.held.offers();
    let offered = async {
        loop {
            let v = offers.borrow_and_update().as_ref().map(|o| o.version());
            if v >= version {
                return;
            }
            if offers.changed().await.is_err() {
                return;
            }
        }
    };
    let _ = tokio::time::timeout(2 * REDIRECT_GRACE, offered).await;
    let _ = tokio::time::timeout(REDIRECT_GRACE, conn.closed()).await;
    let why = format!(
        "{name} is no longer a child of {} in the topology",
        shared.name
    );
    net::close(conn, ErrorCode::NotAllowed, &why);
    LinkError::Refused(why)
}

/// The frame that offers `offer` to a child known to hold `has`, packed if its hello asked
/// for compressed pushes (see [`Offer::frame_for`]), and whether it is a delta.
async fn offer_frame(
    offer: Arc<Offer>,
    has: Option<(u64, Blake3)>,
    compress: Option<Compress>,
) -> (Arc<[u8]>, bool) {
    let compress = compress.unwrap_or_default();
    tokio::task::spawn_blocking(move || offer.frame_for(has, compress))
        .await
        .expect("encoding an offer does not panic")
}

/// Serves one child: offers, its reports, its body requests. The triple is what its hello
/// said: the release it holds (version and root) and how it takes pushes.
async fn serve_child(
    shared: &Arc<Shared>,
    conn: &Connection,
    name: &str,
    (have, root, compress): (Option<u64>, Option<Blake3>, Option<Compress>),
    mut send: SendStream,
    mut recv: RecvStream,
) -> Result<(), LinkError> {
    let has = have.zip(root);
    // Reports may come for any node that can attach through this child (backups included),
    // in the topology of the moment.
    let subtree_of = |layout: &Layout| -> HashSet<String> {
        let mut s: HashSet<String> = layout.topology.reachable_below(name).into_iter().collect();
        s.insert(name.to_owned());
        s
    };
    let mut layouts = shared.layouts.subscribe();
    let mut subtree = subtree_of(&layouts.borrow_and_update());
    let offers = async {
        let mut offered = shared.held.offers();
        // The newest release the child has (its hello) or was offered here, and its root
        // when known: deltas are made against it.
        let mut sent = have;
        let mut known = has;
        loop {
            let current = offered.borrow_and_update().clone();
            if let Some(o) = current.filter(|o| newer(o.version(), sent)) {
                let (frame, delta) = offer_frame(o.clone(), known, compress).await;
                net::send_frame(&mut send, &frame).await?;
                shared.board.add_offered(frame.len() as u64);
                shared.metrics.offered_bytes.inc_by(frame.len() as u64);
                info!(
                    version = o.version(),
                    bytes = frame.len(),
                    "offered release{}",
                    if delta { " as a delta" } else { "" }
                );
                log_path(conn);
                sent = Some(o.version());
                known = Some((o.version(), o.root()));
            }
            if offered.changed().await.is_err() {
                return Ok(());
            }
        }
    };
    let reports = async {
        while let Some(msg) = net::recv::<_, Up>(&mut recv).await? {
            if layouts.has_changed().unwrap_or(false) {
                subtree = subtree_of(&layouts.borrow_and_update());
            }
            match msg {
                Up::Status(list) => {
                    let now = now_ms();
                    shared.board.merge(
                        list.into_iter()
                            .filter(|s| subtree.contains(&s.name))
                            .map(|s| s.bounded(now)),
                    );
                }
                Up::Hello { .. } => return Err(LinkError::Refused("second hello".into())),
            }
        }
        Ok(())
    };
    let bodies = async {
        let sent = shared.metrics.sent_to(name);
        let bodies = shared.metrics.bodies_to(name);
        let mut streams = JoinSet::new();
        loop {
            let (s, r) = conn.accept_bi().await?;
            streams.spawn(serve_body(
                shared.clone(),
                s,
                r,
                (sent.clone(), bodies.clone()),
            ));
            while streams.try_join_next().is_some() {}
        }
    };
    let r = tokio::select! {
        r = offers => r,
        r = reports => r,
        r = bodies => r,
        e = shared.keys.watch_peer(conn) => Err(e),
        e = no_longer_a_child(shared, conn, name) => Err(e),
        e = super::push::refuse(conn) => Err(e),
    };
    if let Err(LinkError::Wire(e)) = &r {
        net::close(conn, ErrorCode::Protocol, &e.to_string());
    }
    r
}
