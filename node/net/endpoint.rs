//! QUIC endpoints with mutual TLS: transport settings, binding, dialling a parent, closing
//! with a code, and the peer's certificate (already checked against the deployment CA).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use cascade_certs::{CertError, Identity, Revoked};
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{Connection, Endpoint, TransportConfig, VarInt};
use rustls_pki_types::CertificateDer;

use super::LinkError;
use crate::wire::{self, ErrorCode};

/// How long a dial may take before the parent counts as unreachable.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Most streams a peer may have open at once on a link.
pub const MAX_STREAMS: u32 = 32;

/// Most bodies a parent may push to a child at once (one stream each).
pub const PUSH_STREAMS: u32 = 8;

/// Per-stream receive window and per-connection send window, in bytes.
const WINDOW: u32 = 8 * 1024 * 1024;

/// The largest UDP payload a link may grow to. Each link starts at 1200 bytes and finds what
/// its path carries (quinn's path MTU discovery: a probe that is lost costs nothing but the
/// probe), so an Ethernet path stays at about 1450 and loopback or a jumbo-frame LAN moves
/// 4.5 times fewer packets per byte, each one a decryption, an encryption and its share of
/// acknowledgements.
///
/// Not a jumbo frame's 8952: quinn sends up to [`GSO_BATCH`] packets of a link in one
/// segmented `sendmsg`, and the kernel refuses one whose payloads add up to more than
/// [`MAX_SEND`] bytes. quinn-udp takes that refusal for a lost MTU probe and drops the batch
/// without a word; the losses then make the link decide its path is a black hole and fall
/// back to 1200 bytes for good. At 8952, a 7 MB manifest took 210 ms instead of 40 ms on
/// loopback, and bulk transfers ran at 1200-byte packets.
const MAX_PAYLOAD: u16 = 6550;

/// Most packets quinn 0.11 puts in one segmented send (`MAX_TRANSMIT_SEGMENTS` in quinn's
/// connection driver).
const GSO_BATCH: usize = 10;

/// The most payload one UDP send may carry over IPv4 (65,535 less the IP and UDP headers).
const MAX_SEND: usize = 65_507;

const _: () = assert!(
    MAX_PAYLOAD as usize * GSO_BATCH <= MAX_SEND,
    "a full segmented send of MAX_PAYLOAD packets must fit in one UDP send"
);

/// Transport settings; a link silent for `idle` is dead (keep-alives go out five times as often).
fn transport(idle: Duration) -> TransportConfig {
    let mut t = TransportConfig::default();
    t.max_idle_timeout(Some(
        idle.try_into().expect("config caps link_timeout at a day"),
    ));
    t.keep_alive_interval(Some(idle / 5));
    // Windows: what a peer may have in flight, and so what a node may hold in memory per
    // link. 8 MiB carries ~160 MiB/s at 50 ms RTT (a stream with quinn's default 1.25 MB
    // carries 25 MB/s); a relay with many children buffers at most this much per child.
    t.stream_receive_window(VarInt::from_u32(WINDOW));
    t.receive_window(VarInt::from_u32(4 * WINDOW));
    t.send_window(u64::from(WINDOW));
    // Streams the peer may have open at once: a child asks for at most 16 bodies at a time
    // (plus its control stream); each served stream holds a buffer of up to 1 MiB, so this
    // caps what one link can make its parent hold.
    t.max_concurrent_bidi_streams(VarInt::from_u32(MAX_STREAMS));
    // Unidirectional streams carry bodies a parent pushes while it scans, one per body; the
    // connection's receive window bounds what they buffer. A parent refuses any from a child.
    t.max_concurrent_uni_streams(VarInt::from_u32(PUSH_STREAMS));
    let mut mtu = quinn::MtuDiscoveryConfig::default();
    mtu.upper_bound(MAX_PAYLOAD);
    t.mtu_discovery_config(Some(mtu));
    t
}

/// A server config for a node that has children, refusing revoked client certificates.
pub fn server_config(
    id: &Identity,
    idle: Duration,
    revoked: &Revoked,
) -> Result<quinn::ServerConfig, LinkError> {
    let tls = id.server_config(wire::ALPN, revoked)?;
    let quic = QuicServerConfig::try_from(tls).map_err(|e| CertError::Verifier(e.to_string()))?;
    let mut cfg = quinn::ServerConfig::with_crypto(Arc::new(quic));
    cfg.transport_config(Arc::new(transport(idle)));
    Ok(cfg)
}

/// A client config for dialling a parent, refusing a revoked server certificate.
pub fn client_config(
    id: &Identity,
    idle: Duration,
    revoked: &Revoked,
) -> Result<quinn::ClientConfig, LinkError> {
    let tls = id.client_config(wire::ALPN, revoked)?;
    let quic = QuicClientConfig::try_from(tls).map_err(|e| CertError::Verifier(e.to_string()))?;
    let mut cfg = quinn::ClientConfig::new(Arc::new(quic));
    cfg.transport_config(Arc::new(transport(idle)));
    Ok(cfg)
}

/// Binds the node's endpoint: a server on `listen` if it has children, else a client socket.
/// Certificates in `revoked` are refused at every handshake, both ways.
pub fn endpoint(
    id: &Identity,
    listen: Option<SocketAddr>,
    parent: Option<SocketAddr>,
    idle: Duration,
    revoked: &Revoked,
) -> Result<Endpoint, LinkError> {
    let (addr, server) = match listen {
        Some(addr) => (addr, Some(server_config(id, idle, revoked)?)),
        None => match parent {
            Some(SocketAddr::V6(_)) => ("[::]:0".parse().expect("valid literal"), None),
            _ => ("0.0.0.0:0".parse().expect("valid literal"), None),
        },
    };
    let socket = bind_udp(addr)?;
    let runtime = quinn::default_runtime()
        .ok_or_else(|| LinkError::Refused("no async runtime to run QUIC on".into()))?;
    let mut config = quinn::EndpointConfig::default();
    config
        .max_udp_payload_size(MAX_PAYLOAD)
        .expect("a payload size between 1200 and 65527");
    let mut ep = Endpoint::new(config, server, socket, runtime)
        .map_err(|source| LinkError::Bind { addr, source })?;
    ep.set_default_client_config(client_config(id, idle, revoked)?);
    Ok(ep)
}

/// Makes every later handshake accepted by `ep` use `id` and refuse `revoked` (a certificate
/// renewed on disk, a revocation list changed), and returns the client config later dials
/// must use ([`connect_with`]); links already up keep theirs. `serves`: whether the endpoint
/// accepts connections.
pub fn reconfigure(
    ep: &Endpoint,
    id: &Identity,
    idle: Duration,
    revoked: &Revoked,
    serves: bool,
) -> Result<quinn::ClientConfig, LinkError> {
    let client = client_config(id, idle, revoked)?;
    if serves {
        ep.set_server_config(Some(server_config(id, idle, revoked)?));
    }
    Ok(client)
}

/// Moves `ep` to a socket bound to `addr` (a node told to listen there); its links move
/// with it.
pub fn rebind(ep: &Endpoint, addr: SocketAddr) -> Result<(), LinkError> {
    let socket = bind_udp(addr)?;
    ep.rebind(socket)
        .map_err(|source| LinkError::Bind { addr, source })
}

/// UDP socket buffers. The kernel default (208 KiB) drops bursts of a fast sender: each
/// drop halves QUIC's congestion window. In the benchmark's 100,000-file first sync through a
/// relay (three nodes on two cores), a 4 MiB buffer lost 1,141 of the origin's packets to
/// the relay and 519 of the relay's to the leaf; 16 MiB lost none. The kernel caps what
/// is granted at `net.core.rmem_max` / `wmem_max` unless the process may override it (root).
const SOCKET_BUFFER: usize = 16 * 1024 * 1024;

/// Binds the endpoint's UDP socket with large buffers. A socket of a node that just stopped is
/// released only when its endpoint driver next runs, so "address in use" is retried for up
/// to a second.
fn bind_udp(addr: SocketAddr) -> Result<std::net::UdpSocket, LinkError> {
    let mut tries = 0;
    let socket = loop {
        match std::net::UdpSocket::bind(addr) {
            Ok(s) => break s,
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && tries < 20 => {
                tries += 1;
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(source) => return Err(LinkError::Bind { addr, source }),
        }
    };
    use rustix::net::sockopt;
    // Best effort: a smaller buffer only costs speed.
    if sockopt::set_socket_recv_buffer_size_force(&socket, SOCKET_BUFFER).is_err() {
        let _ = sockopt::set_socket_recv_buffer_size(&socket, SOCKET_BUFFER);
    }
    if sockopt::set_socket_send_buffer_size_force(&socket, SOCKET_BUFFER).is_err() {
        let _ = sockopt::set_socket_send_buffer_size(&socket, SOCKET_BUFFER);
    }
    Ok(socket)
}

/// Dials `peer` at `addr`; the TLS handshake checks its certificate carries `peer`.
pub async fn connect(ep: &Endpoint, addr: SocketAddr, peer: &str) -> Result<Connection, LinkError> {
    connect_with(ep, None, addr, peer).await
}

/// [`connect`] with `config` instead of the endpoint's default (one made by [`reconfigure`]).
pub async fn connect_with(
    ep: &Endpoint,
    config: Option<quinn::ClientConfig>,
    addr: SocketAddr,
    peer: &str,
) -> Result<Connection, LinkError> {
    let err = |reason: String| LinkError::Connect {
        peer: peer.to_owned(),
        addr,
        reason,
    };
    let connecting = match config {
        Some(c) => ep.connect_with(c, addr, peer),
        None => ep.connect(addr, peer),
    }
    .map_err(|e| err(e.to_string()))?;
    match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
        Ok(r) => r.map_err(|e| err(e.to_string())),
        Err(_) => Err(err(format!(
            "no answer within {} s (unreachable or not running)",
            CONNECT_TIMEOUT.as_secs()
        ))),
    }
}

/// The peer's leaf certificate, as verified against the CA by the handshake.
pub fn peer_certificate(conn: &Connection) -> Option<CertificateDer<'static>> {
    let any = conn.peer_identity()?;
    let chain = any.downcast::<Vec<CertificateDer<'static>>>().ok()?;
    chain.into_iter().next()
}

/// Closes a connection with a code from [`ErrorCode`] and a reason for the peer's log.
pub fn close(conn: &Connection, code: ErrorCode, reason: &str) {
    conn.close(VarInt::from_u32(code.code()), reason.as_bytes());
}

/// Closes every connection of an endpoint.
pub fn close_endpoint(ep: &Endpoint, code: ErrorCode) {
    ep.close(VarInt::from_u32(code.code()), b"shutting down");
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A parent's endpoint on 127.0.0.1 and a child's, each with its own certificate from one
    /// CA, with the node's transport settings. The directory holding the certificates must
    /// outlive them.
    fn endpoints(certs: &std::path::Path) -> (Endpoint, Endpoint) {
        cascade_certs::init_ca(certs, false).unwrap();
        cascade_certs::issue(certs, &["parent", "child"]).unwrap();
        let load = |name| Identity::load(certs, name).unwrap();
        let idle = Duration::from_secs(15);
        let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let parent = endpoint(&load("parent"), Some(any), None, idle, &Revoked::default());
        let parent = parent.unwrap();
        let at = parent.local_addr().unwrap();
        let child = endpoint(&load("child"), None, Some(at), idle, &Revoked::default()).unwrap();
        (parent, child)
    }

    /// A real link over loopback (mutual TLS, the node's transport settings) grows its packets
    /// to [`MAX_PAYLOAD`] and keeps them through a transfer at full speed: a segmented send the
    /// kernel refuses would lose its packets and drop the link to 1200 bytes.
    #[test]
    fn a_loopback_link_keeps_its_largest_packets_through_a_bulk_transfer() {
        let certs = tempfile::tempdir().unwrap();
        let rt = tokio::runtime::Runtime::new().unwrap();
        let (stats, got) = rt.block_on(async {
            let (server, client) = endpoints(certs.path());
            let addr = server.local_addr().unwrap();
            let sender = tokio::spawn(async move {
                let conn = server.accept().await.unwrap().await.unwrap();
                let (mut send, _recv) = conn.accept_bi().await.unwrap();
                let piece = vec![7u8; 1 << 20];
                for _ in 0..32 {
                    send.write_all(&piece).await.unwrap();
                }
                send.finish().unwrap();
                send.stopped().await.unwrap();
                let stats = conn.stats().path;
                (server, stats)
            });
            let conn = connect(&client, addr, "parent").await.unwrap();
            let (mut send, mut recv) = conn.open_bi().await.unwrap();
            send.write_all(b"go").await.unwrap();
            let got = recv.read_to_end(64 << 20).await.unwrap().len();
            let (_server, stats) = sender.await.unwrap();
            (stats, got)
        });
        assert_eq!(got, 32 << 20);
        assert_eq!(stats.black_holes_detected, 0, "{stats:?}");
        assert_eq!(stats.current_mtu, MAX_PAYLOAD, "{stats:?}");
    }

    /// A link closed while its congestion window is full still tells the peer why: the close
    /// is not held back behind data that will never be sent (vendor/quinn-proto/PATCHED.md).
    #[test]
    fn a_link_closed_with_a_full_congestion_window_still_sends_its_reason() {
        let certs = tempfile::tempdir().unwrap();
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let (server, client) = endpoints(certs.path());
            let addr = server.local_addr().unwrap();
            let (conn, theirs) = tokio::join!(connect(&client, addr, "parent"), async {
                server.accept().await.unwrap().await.unwrap()
            });
            let conn = conn.unwrap();
            // At the start of a link its window holds about 14 KB: 4 MiB queued fills it.
            let (mut send, _recv) = conn.open_bi().await.unwrap();
            send.write_all(&vec![7u8; 4 << 20]).await.unwrap();
            close(&conn, ErrorCode::Protocol, "malformed message: the test's");
            let why = tokio::time::timeout(Duration::from_secs(5), theirs.closed())
                .await
                .expect("the peer learns of the close within 5 s");
            match why {
                quinn::ConnectionError::ApplicationClosed(c) => {
                    assert_eq!(c.error_code, VarInt::from_u32(ErrorCode::Protocol.code()));
                    assert_eq!(&c.reason[..], b"malformed message: the test's");
                }
                other => panic!("expected the close and its reason, got {other:?}"),
            }
        });
    }
}
