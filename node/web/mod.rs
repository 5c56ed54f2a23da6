//! The node's read-only HTTP face, at the `metrics` address: Prometheus metrics on
//! `/metrics`, the status page on `/`, and the tree the page draws as JSON on
//! `/status.json` (the same document as `cascade status --json`).
//!
//! It answers GET and HEAD, one request per connection (`Connection: close`), which is all
//! a Prometheus scrape or a browser refreshing a page needs; no request body is read. A
//! client gets [`READ_TIMEOUT`] to send its request head, of at most [`MAX_HEAD`] bytes, and
//! at most [`MAX_CLIENTS`] are answered at once: a slow or hostile client costs a task and a
//! small buffer, never the node.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tracing::{debug, warn};

use crate::metrics::Now;
use crate::sync::Shared;

/// The status page: one self-contained file (no CDN, no build step).
const PAGE: &str = include_str!("page.html");
/// Longest request head read.
const MAX_HEAD: usize = 8 * 1024;
/// Time a client has to send its request head.
const READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections answered at once; more wait for a turn.
const MAX_CLIENTS: usize = 64;
/// How long a measured store size is reused (listing a large store is not free).
const STORE_FRESH: Duration = Duration::from_secs(15);

/// Listens on `addr`, with a message naming what it is for when that fails.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await.map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!("cannot serve metrics on {addr} (the `metrics` key): {e}"),
        )
    })
}

/// Answers requests until the task is aborted.
pub async fn serve(shared: Arc<Shared>, listener: TcpListener) {
    let web = Arc::new(Web {
        shared,
        store: Mutex::new(None),
    });
    let turns = Arc::new(Semaphore::new(MAX_CLIENTS));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                warn!("metrics listener: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(turn) = turns.clone().acquire_owned().await else {
            return;
        };
        let web = web.clone();
        tokio::spawn(async move {
            if let Err(e) = web.answer(stream).await {
                debug!(%peer, "metrics client: {e}");
            }
            drop(turn);
        });
    }
}

struct Web {
    shared: Arc<Shared>,
    /// The store's size, and when it was measured.
    store: Mutex<Option<(Instant, (u64, u64))>>,
}

/// One response.
struct Reply {
    status: &'static str,
    content_type: &'static str,
    body: Vec<u8>,
}

impl Reply {
    fn text(status: &'static str, body: &str) -> Self {
        Reply {
            status,
            content_type: "text/plain; charset=utf-8",
            body: body.as_bytes().to_vec(),
        }
    }
}

impl Web {
    async fn answer(&self, mut stream: TcpStream) -> std::io::Result<()> {
        let head = match tokio::time::timeout(READ_TIMEOUT, read_head(&mut stream)).await {
            Ok(head) => head?,
            Err(_) => return Ok(()),
        };
        let (method, path) = match parse_request_line(&head) {
            Some(r) => r,
            None => {
                let r = Reply::text("400 Bad Request", "bad request\n");
                return send(&mut stream, &r, true).await;
            }
        };
        let reply = match (method, path) {
            ("GET" | "HEAD", "/metrics") => self.metrics().await,
            ("GET" | "HEAD", "/" | "/index.html") => Reply {
                status: "200 OK",
                content_type: "text/html; charset=utf-8",
                body: page(&self.shared.tree_view()).into_bytes(),
            },
            ("GET" | "HEAD", "/status.json") => Reply {
                status: "200 OK",
                content_type: "application/json",
                body: serde_json::to_vec(&self.shared.tree_view()).expect("a view encodes as JSON"),
            },
            ("GET" | "HEAD", _) => Reply::text("404 Not Found", "not found: try /metrics or /\n"),
            _ => Reply::text("405 Method Not Allowed", "only GET and HEAD\n"),
        };
        send(&mut stream, &reply, method != "HEAD").await
    }

    async fn metrics(&self) -> Reply {
        let store = self.store_size().await;
        let s = &self.shared;
        let view = s.tree_view();
        let own = s.board.all().into_iter().find(|n| n.name == s.name);
        let parent = match s.role {
            cascade_topology::Role::Origin => None,
            _ => own.as_ref().map(|o| {
                let topo = s.layouts.current();
                let name = o
                    .parent
                    .clone()
                    .or_else(|| topo.node(&s.name).and_then(|n| n.parent.clone()))
                    .unwrap_or_default();
                (name, o.connected)
            }),
        };
        let (body, content_type) = s.metrics.encode(&Now {
            view: &view,
            held: s.held.version(),
            applied: own.and_then(|o| o.applied),
            store,
            parent,
        });
        Reply {
            status: "200 OK",
            content_type,
            body: body.into_bytes(),
        }
    }

    /// The store's bytes and bodies, measured at most every [`STORE_FRESH`].
    async fn store_size(&self) -> Option<(u64, u64)> {
        if let Some((at, v)) = *self.store.lock().expect("store size lock") {
            if at.elapsed() < STORE_FRESH {
                return Some(v);
            }
        }
        let shared = self.shared.clone();
        let v = tokio::task::spawn_blocking(move || shared.store.usage())
            .await
            .expect("listing the store does not panic")
            .ok()?;
        *self.store.lock().expect("store size lock") = Some((Instant::now(), v));
        Some(v)
    }
}

/// The status page with `view` in it, so that it shows the tree at once (and without
/// scripts' network access); its script refreshes it from `/status.json`. `<`, `>` and `&`
/// are escaped inside the JSON, so no text in the view (a hook's error) can end the script.
fn page(view: &crate::status::view::TreeView) -> String {
    let json = serde_json::to_string(view)
        .expect("a view encodes as JSON")
        .replace('<', "\\u003c")
        .replace('>', "\\u003e")
        .replace('&', "\\u0026");
    PAGE.replacen("/*CASCADE_VIEW*/null", &json, 1)
}

/// Reads up to the end of the request head (a blank line), at most [`MAX_HEAD`] bytes.
async fn read_head(stream: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    loop {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Ok(head);
        }
        head.extend_from_slice(&buf[..n]);
        if head.windows(4).any(|w| w == b"\r\n\r\n") || head.windows(2).any(|w| w == b"\n\n") {
            return Ok(head);
        }
        if head.len() >= MAX_HEAD {
            return Ok(head);
        }
    }
}

/// `GET /path?query HTTP/1.1` as (method, path without the query).
fn parse_request_line(head: &[u8]) -> Option<(&str, &str)> {
    let line = head.split(|&b| b == b'\n').next()?;
    let line = std::str::from_utf8(line).ok()?.trim_end_matches('\r');
    let mut parts = line.split(' ');
    let (method, target, version) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || !version.starts_with("HTTP/1.") || !target.starts_with('/') {
        return None;
    }
    let path = target.split(['?', '#']).next().unwrap_or(target);
    Some((method, path))
}

async fn send(stream: &mut TcpStream, r: &Reply, with_body: bool) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nX-Content-Type-Options: nosniff\r\nConnection: close\r\n\r\n",
        r.status,
        r.content_type,
        r.body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    if with_body {
        stream.write_all(&r.body).await?;
    }
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_carries_the_view_and_no_text_in_it_can_end_the_script() {
        use crate::status::view::{State, TreeView, ViewNode};
        let root = ViewNode {
            hook_error: Some("</script><script>alert(1)</script> & more".into()),
            ..ViewNode::new("origin", "origin", State::InSync)
        };
        let html = page(&TreeView {
            node: "origin".into(),
            release: Some(1),
            at_ms: 0,
            root,
        });
        assert!(html.contains("let view = {\"node\":\"origin\""));
        assert_eq!(html.matches("</script>").count(), 1, "{html}");
        assert!(html.contains("\\u003c/script\\u003e"));
    }

    #[test]
    fn request_lines_parse_or_are_refused() {
        assert_eq!(
            parse_request_line(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"),
            Some(("GET", "/metrics"))
        );
        assert_eq!(
            parse_request_line(b"GET /status.json?t=1 HTTP/1.0\r\n\r\n"),
            Some(("GET", "/status.json"))
        );
        for bad in [
            &b""[..],
            b"GET\r\n\r\n",
            b"GET metrics HTTP/1.1\r\n\r\n",
            b"GET / SPDY/3\r\n\r\n",
            b"GET / HTTP/1.1 extra\r\n\r\n",
            b"\xff\xfe / HTTP/1.1\r\n\r\n",
        ] {
            assert_eq!(parse_request_line(bad), None, "{bad:?}");
        }
    }
}
