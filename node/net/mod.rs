//! The network: QUIC [`endpoint`]s with mutual TLS, message [`frames`] over their streams,
//! and the upload [`limit`]. Nothing here decides anything: it carries bytes for the sync
//! layer and turns a peer's certificate into a checked node name.

pub mod endpoint;
pub mod frames;
pub mod limit;

pub use endpoint::{
    close, close_endpoint, connect, connect_with, endpoint, peer_certificate, rebind, reconfigure,
    CONNECT_TIMEOUT,
};
pub use frames::{recv, send, send_frame};
pub use limit::Limiter;

use std::net::SocketAddr;

use cascade_certs::CertError;

use crate::wire::WireError;

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error(transparent)]
    Cert(#[from] CertError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("connect to {peer} at {addr}: {reason}")]
    Connect {
        peer: String,
        addr: SocketAddr,
        reason: String,
    },
    #[error("connection: {0}")]
    Connection(#[from] quinn::ConnectionError),
    #[error("stream: {0}")]
    Io(std::io::Error),
    #[error("stream: {0}")]
    Read(#[from] quinn::ReadError),
    #[error("stream closed")]
    Closed(#[from] quinn::ClosedStream),
    #[error("protocol violation: {0}")]
    Wire(#[from] WireError),
    #[error("peer refused: {0}")]
    Refused(String),
}
