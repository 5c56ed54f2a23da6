//! The local admin socket (`DATA/admin.sock`, mode 0600): how `cascade publish` and
//! `cascade status` talk to a running node. It is never reachable over the network.
//!
//! One request frame, one response frame, per connection, in the wire encoding.

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::net::{UnixListener, UnixStream};
use tracing::warn;

use crate::data::DataDir;
use crate::net::{self, LinkError};
use crate::sync::{verify, PublishError, Publisher, Shared};
use crate::wire::{AdminRequest, AdminResponse};

/// Binds the admin socket at `path`, replacing a stale one, readable and writable by the
/// owner only from its first moment: it is bound inside a fresh directory of mode 0700, set
/// to 0600 there, and only then renamed to `path`. No other user can ever connect, whatever
/// the umask.
pub fn bind(path: &Path) -> io::Result<UnixListener> {
    let parent = path.parent().unwrap_or(Path::new("."));
    let private = tempfile::Builder::new()
        .prefix(".admin-")
        .permissions(std::fs::Permissions::from_mode(0o700))
        .tempdir_in(parent)
        .map_err(|e| {
            io::Error::new(
                e.kind(),
                format!(
                    "cannot create the admin socket in `{}`: {e}",
                    parent.display()
                ),
            )
        })?;
    let staged = private.path().join("admin.sock");
    let listener = UnixListener::bind(&staged).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("failed to listen on `{}`: {e}", path.display()),
        )
    })?;
    fs_err::set_permissions(&staged, std::fs::Permissions::from_mode(0o600))?;
    fs_err::rename(&staged, path)?;
    Ok(listener)
}

/// Answers admin requests until the task is aborted. `publisher` is the origin's; other
/// nodes refuse to publish.
pub async fn serve(shared: Arc<Shared>, publisher: Option<Arc<Publisher>>, listener: UnixListener) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(answer(shared.clone(), publisher.clone(), stream));
            }
            Err(e) => {
                warn!("admin socket: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
}

async fn answer(shared: Arc<Shared>, publisher: Option<Arc<Publisher>>, mut stream: UnixStream) {
    let resp = match net::recv::<_, AdminRequest>(&mut stream).await {
        Ok(Some(AdminRequest::Publish)) => {
            let published = match &publisher {
                Some(p) => p.publish().await,
                None => Err(PublishError::NotOrigin(shared.name.clone(), shared.role)),
            };
            match published {
                Ok(s) => AdminResponse::Published(s),
                Err(e) => AdminResponse::Error(e.to_string()),
            }
        }
        Ok(Some(AdminRequest::Verify { full })) => {
            match verify::verify(&shared, full.unwrap_or(shared.verify_full)).await {
                Ok(s) => AdminResponse::Verified(s),
                Err(e) => AdminResponse::Error(e.to_string()),
            }
        }
        Ok(Some(AdminRequest::ApplyTopology(text))) => {
            let applied = match &publisher {
                Some(p) => p.apply_topology(text).await,
                None => Err(PublishError::NotOrigin(shared.name.clone(), shared.role)),
            };
            match applied {
                Ok(s) => AdminResponse::Published(s),
                Err(e) => AdminResponse::Error(e.to_string()),
            }
        }
        Ok(Some(AdminRequest::Topology)) => {
            AdminResponse::Topology(shared.layouts.current().text.to_string())
        }
        Ok(Some(AdminRequest::Tree)) => AdminResponse::Tree(Box::new(shared.tree_view())),
        Ok(Some(AdminRequest::Status)) => AdminResponse::Status {
            node: shared.name.clone(),
            release: shared.held.version(),
            nodes: shared.board.all(),
        },
        Ok(None) => return,
        Err(e) => AdminResponse::Error(format!("bad request: {e}")),
    };
    let _ = net::send(&mut stream, &resp).await;
}

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("cannot reach the node through {path} (is `cascade node` running with this data dir?): {source}")]
    Connect { path: PathBuf, source: io::Error },
    #[error("admin socket {0}: {1}")]
    Link(PathBuf, LinkError),
    #[error("admin socket {0}: the node closed the connection without answering")]
    NoAnswer(PathBuf),
    #[error("{0}")]
    Node(String),
}

/// Sends one request to the node whose data dir is `data`.
pub async fn request(data: &Path, req: &AdminRequest) -> Result<AdminResponse, AdminError> {
    let path = DataDir::new(data).admin_socket;
    let mut stream = UnixStream::connect(&path)
        .await
        .map_err(|source| AdminError::Connect {
            path: path.clone(),
            source,
        })?;
    net::send(&mut stream, req)
        .await
        .map_err(|e| AdminError::Link(path.clone(), e))?;
    match net::recv::<_, AdminResponse>(&mut stream).await {
        Ok(Some(AdminResponse::Error(e))) => Err(AdminError::Node(e)),
        Ok(Some(r)) => Ok(r),
        Ok(None) => Err(AdminError::NoAnswer(path)),
        Err(e) => Err(AdminError::Link(path, e)),
    }
}
