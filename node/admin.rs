//! The local admin socket (`DATA/admin.sock`, mode 0600): how `cascade publish` and
//! `cascade status` talk to a running node. It is never reachable over the network.
//!
//! One request frame, one response frame, per connection, in the wire encoding.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::net::{UnixListener, UnixStream};
use tracing::warn;

use crate::link::{self, LinkError};
use crate::node::{io_at, DataLock, NodeError, Shared};
use crate::wire::{AdminRequest, AdminResponse};

pub fn socket_path(data: &Path) -> PathBuf {
    data.join("admin.sock")
}

/// Binds the admin socket, replacing a stale one, and restricts it to the owner.
pub fn bind(data: &Path) -> Result<UnixListener, NodeError> {
    let path = socket_path(data);
    let _ = fs::remove_file(&path);
    let listener = UnixListener::bind(&path).map_err(io_at(&path))?;
    fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).map_err(io_at(&path))?;
    Ok(listener)
}

/// Answers admin requests until the task is aborted. Holds the data-dir lock meanwhile.
pub async fn serve(shared: Arc<Shared>, listener: UnixListener, _lock: DataLock) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(answer(shared.clone(), stream));
            }
            Err(e) => {
                warn!("admin socket: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
}

async fn answer(shared: Arc<Shared>, mut stream: UnixStream) {
    let resp = match link::recv::<_, AdminRequest>(&mut stream).await {
        Ok(Some(AdminRequest::Publish)) => match shared.publish().await {
            Ok(s) => AdminResponse::Published(s),
            Err(e) => AdminResponse::Error(e.to_string()),
        },
        Ok(Some(AdminRequest::Status)) => AdminResponse::Status {
            node: shared.name.clone(),
            release: shared.held_release().map(|h| h.release.version),
            nodes: shared.statuses(),
        },
        Ok(None) => return,
        Err(e) => AdminResponse::Error(format!("bad request: {e}")),
    };
    let _ = link::send(&mut stream, &resp).await;
}

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("cannot reach the node through {path} (is `cascade node` running with this data dir?): {source}")]
    Connect {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("admin socket {0}: {1}")]
    Link(PathBuf, LinkError),
    #[error("admin socket {0}: the node closed the connection without answering")]
    NoAnswer(PathBuf),
    #[error("{0}")]
    Node(String),
}

/// Sends one request to the node whose data dir is `data`.
pub async fn request(data: &Path, req: &AdminRequest) -> Result<AdminResponse, AdminError> {
    let path = socket_path(data);
    let mut stream = UnixStream::connect(&path)
        .await
        .map_err(|source| AdminError::Connect {
            path: path.clone(),
            source,
        })?;
    link::send(&mut stream, req)
        .await
        .map_err(|e| AdminError::Link(path.clone(), e))?;
    match link::recv::<_, AdminResponse>(&mut stream).await {
        Ok(Some(AdminResponse::Error(e))) => Err(AdminError::Node(e)),
        Ok(Some(r)) => Ok(r),
        Ok(None) => Err(AdminError::NoAnswer(path)),
        Err(e) => Err(AdminError::Link(path, e)),
    }
}
