//! A node's role and listen address following the topology while it runs: a leaf the
//! topology makes a relay starts listening (its endpoint moves to the listen address, its
//! links with it) and serves its new children from the bodies it holds, taking them from
//! `dir` into its store as they are asked for, without fetching them again; a relay left
//! without children stops listening after [`REDIRECT_FOR`] (meanwhile it only tells former
//! children where they belong); a relay whose listen address changes moves.

use std::sync::Arc;
use std::time::Duration;

use quinn::Endpoint;
use tracing::{info, warn};

use super::children;
use super::shared::Shared;
use crate::net;

/// How long a relay left without children keeps answering, so that a former child that was
/// down during the change learns its new parent from it.
const REDIRECT_FOR: Duration = Duration::from_secs(600);

/// Follows the topology's listen address for this node until the task is aborted.
/// `children_running`: whether the accept loop was started with the node.
pub async fn run(shared: Arc<Shared>, endpoint: Endpoint, idle: Duration, children_running: bool) {
    let mut children_running = children_running;
    let mut layouts = shared.layouts.subscribe();
    let mut listen = layouts.borrow_and_update().listen(&shared.name);
    loop {
        if layouts.changed().await.is_err() {
            return;
        }
        let layout = layouts.borrow_and_update().clone();
        let now = layout.listen(&shared.name);
        if now == listen {
            continue;
        }
        match now {
            Some(addr) => {
                if let Err(e) = net::rebind(&endpoint, addr)
                    .and_then(|()| shared.keys.listen_on(&endpoint, idle))
                {
                    warn!(
                        "the topology of release {:?} has this node listen on {addr}: {e}",
                        layout.version
                    );
                    continue;
                }
                shared
                    .serves
                    .store(true, std::sync::atomic::Ordering::Relaxed);
                if let Some(a) = &shared.applier {
                    a.serving();
                }
                if !children_running {
                    tokio::spawn(children::run(shared.clone(), endpoint.clone()));
                    children_running = true;
                }
                info!(
                    "listening on {addr} for children (the topology of release {:?})",
                    layout.version
                );
            }
            None => {
                info!(
                    "no children left in the topology of release {:?}: former children that come back are sent the new topology for {} min, then this node stops listening",
                    layout.version,
                    REDIRECT_FOR.as_secs() / 60
                );
                let (shared, endpoint) = (shared.clone(), endpoint.clone());
                let version = layout.version;
                tokio::spawn(async move {
                    tokio::time::sleep(REDIRECT_FOR).await;
                    let still = shared.layouts.current();
                    if still.version == version && still.listen(&shared.name).is_none() {
                        shared.keys.stop_listening(&endpoint);
                        info!("stopped listening: no children since release {version:?}");
                    }
                });
            }
        }
        listen = now;
    }
}
