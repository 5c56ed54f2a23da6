//! Release hooks: commands a node runs around a release, as an argv (no shell unless the
//! user writes one). `on_release` runs after a release reached `dir`; `check` runs on a
//! complete atomic release directory before the switch, and a failure refuses the release.
//!
//! A hook gets `CASCADE_RELEASE` (the version), `CASCADE_DIR` (the directory it is about),
//! `CASCADE_NODE` and `CASCADE_CHANGED` (a file listing the paths the release added, changed
//! or deleted, one per line). It runs in its own process group, with stdin closed; a hook
//! still running after the timeout is killed with its whole group. Only the last
//! [`OUTPUT_TAIL`] bytes of what it prints are kept (for the log and the error), so a hook
//! printing megabytes costs no memory. A hook's failure never touches `dir`.

use std::io::{Read, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Bytes of a hook's output kept.
pub const OUTPUT_TAIL: usize = 2048;
/// How often a running hook is polled.
const POLL: Duration = Duration::from_millis(20);

/// Commands run around a release; empty when not configured.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Hooks {
    /// After a release reached `dir`.
    pub on_release: Vec<String>,
    /// Before an atomic switch; a failure refuses the release.
    pub check: Vec<String>,
    pub timeout: Duration,
}

/// What a hook is told.
#[derive(Debug, Clone, Copy)]
pub struct HookEnv<'a> {
    pub node: &'a str,
    pub release: u64,
    pub dir: &'a Path,
    /// Paths added, changed or deleted by the release.
    pub changed: &'a [String],
    /// Where the `CASCADE_CHANGED` file is written (removed after the hook).
    pub scratch: &'a Path,
}

#[derive(Debug, thiserror::Error)]
pub enum HookError {
    #[error("`{cmd}` cannot start: {source}")]
    Spawn { cmd: String, source: std::io::Error },
    #[error("`{cmd}` failed ({status}){}", tail_suffix(.tail))]
    Failed {
        cmd: String,
        status: String,
        tail: String,
    },
    #[error("`{cmd}` was killed after running {}s (hook_timeout){}", .after.as_secs(), tail_suffix(.tail))]
    TimedOut {
        cmd: String,
        after: Duration,
        tail: String,
    },
    #[error("hook scratch file in {0}: {1}")]
    Scratch(String, std::io::Error),
}

fn tail_suffix(tail: &str) -> String {
    let last = tail.trim().lines().last().unwrap_or("");
    if last.is_empty() {
        String::new()
    } else {
        format!(": {last}")
    }
}

/// Says (once, at start) if a hook's program cannot be run, so the operator learns before
/// the first release.
pub fn precheck(key: &str, argv: &[String]) {
    let Some(prog) = argv.first() else { return };
    let path = Path::new(prog);
    let found = if prog.contains('/') {
        Some(path.to_owned())
    } else {
        std::env::var_os("PATH").and_then(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join(prog))
                .find(|c| c.is_file())
        })
    };
    use std::os::unix::fs::PermissionsExt;
    match found.map(|p| (std::fs::metadata(&p), p)) {
        None => tracing::error!("{key}: `{prog}` is not found in PATH; the hook will fail"),
        Some((Err(e), p)) => {
            tracing::error!("{key}: `{}`: {e}; the hook will fail", p.display())
        }
        Some((Ok(m), p)) if !m.is_file() || m.permissions().mode() & 0o111 == 0 => {
            tracing::error!(
                "{key}: `{}` is not an executable file; the hook will fail",
                p.display()
            )
        }
        Some(_) => {}
    }
}

/// Runs `argv` with the hook environment, waiting at most `timeout`. Returns the tail of its
/// output on success.
pub fn run(argv: &[String], env: &HookEnv, timeout: Duration) -> Result<String, HookError> {
    let cmd = argv.join(" ");
    let mut changed = tempfile::Builder::new()
        .prefix(".changed-")
        .tempfile_in(env.scratch)
        .map_err(|e| HookError::Scratch(env.scratch.display().to_string(), e))?;
    for p in env.changed {
        writeln!(changed, "{p}").map_err(|e| HookError::Scratch(p.clone(), e))?;
    }
    changed
        .flush()
        .map_err(|e| HookError::Scratch(env.scratch.display().to_string(), e))?;
    let mut child = Command::new(&argv[0])
        .args(&argv[1..])
        .env("CASCADE_RELEASE", env.release.to_string())
        .env("CASCADE_DIR", env.dir)
        .env("CASCADE_NODE", env.node)
        .env("CASCADE_CHANGED", changed.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .map_err(|source| HookError::Spawn {
            cmd: cmd.clone(),
            source,
        })?;
    // Both pipes are drained on their own threads into one bounded tail.
    let (tx, rx) = mpsc::channel::<Vec<u8>>();
    for pipe in [
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    ]
    .into_iter()
    .flatten()
    {
        let tx = tx.clone();
        std::thread::spawn(move || drain(pipe, tx));
    }
    drop(tx);
    let started = Instant::now();
    let mut tail = Vec::new();
    let status = loop {
        while let Ok(chunk) = rx.try_recv() {
            keep_tail(&mut tail, &chunk);
        }
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if started.elapsed() >= timeout => break None,
            Ok(None) => std::thread::sleep(POLL),
            Err(_) => break None,
        }
    };
    let Some(status) = status else {
        let pid = rustix::process::Pid::from_child(&child);
        let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
        let _ = child.wait();
        collect(&rx, &mut tail);
        return Err(HookError::TimedOut {
            cmd,
            after: timeout,
            tail: text(&tail),
        });
    };
    collect(&rx, &mut tail);
    if status.success() {
        Ok(text(&tail))
    } else {
        Err(HookError::Failed {
            cmd,
            status: describe(status),
            tail: text(&tail),
        })
    }
}

/// Reads a pipe to its end in chunks (a hook that prints megabytes is read, not stored).
fn drain(mut pipe: Box<dyn Read + Send>, tx: mpsc::Sender<Vec<u8>>) {
    let mut buf = vec![0u8; 8192];
    loop {
        match pipe.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if tx.send(buf[..n].to_vec()).is_err() {
                    return;
                }
            }
        }
    }
}

/// Takes what the pipes still hold: briefly, since a hook's own background children may
/// keep them open long after it exited.
fn collect(rx: &mpsc::Receiver<Vec<u8>>, tail: &mut Vec<u8>) {
    let until = Instant::now() + Duration::from_millis(500);
    while let Some(left) = until.checked_duration_since(Instant::now()) {
        match rx.recv_timeout(left) {
            Ok(chunk) => keep_tail(tail, &chunk),
            Err(_) => return,
        }
    }
}

fn keep_tail(tail: &mut Vec<u8>, chunk: &[u8]) {
    tail.extend_from_slice(chunk);
    if tail.len() > OUTPUT_TAIL {
        tail.drain(..tail.len() - OUTPUT_TAIL);
    }
}

fn text(tail: &[u8]) -> String {
    String::from_utf8_lossy(tail).into_owned()
}

fn describe(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(c), _) => format!("exit status {c}"),
        (None, Some(s)) => format!("killed by signal {s}"),
        _ => status.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(s: &[&str]) -> Vec<String> {
        s.iter().map(|s| s.to_string()).collect()
    }

    fn env<'a>(scratch: &'a Path, changed: &'a [String]) -> HookEnv<'a> {
        HookEnv {
            node: "web-1",
            release: 7,
            dir: Path::new("/srv/www"),
            changed,
            scratch,
        }
    }

    #[test]
    fn a_hook_sees_its_environment_and_the_changed_paths() {
        let t = tempfile::tempdir().unwrap();
        let changed = vec!["a.html".to_owned(), "sub/b.css".to_owned()];
        let out = run(
            &argv(&[
                "sh",
                "-c",
                "echo $CASCADE_NODE $CASCADE_RELEASE $CASCADE_DIR; cat \"$CASCADE_CHANGED\"",
            ]),
            &env(t.path(), &changed),
            Duration::from_secs(10),
        )
        .unwrap();
        assert_eq!(out, "web-1 7 /srv/www\na.html\nsub/b.css\n");
        // The scratch file is gone afterwards.
        assert_eq!(std::fs::read_dir(t.path()).unwrap().count(), 0);
    }

    #[test]
    fn failures_missing_programs_timeouts_and_floods_are_each_one_clear_error() {
        let t = tempfile::tempdir().unwrap();
        let e = env(t.path(), &[]);
        let err = run(
            &argv(&["sh", "-c", "echo no way >&2; exit 3"]),
            &e,
            Duration::from_secs(10),
        )
        .unwrap_err()
        .to_string();
        assert_eq!(
            err,
            "`sh -c echo no way >&2; exit 3` failed (exit status 3): no way"
        );
        let err = run(&argv(&["/nonexistent/hook"]), &e, Duration::from_secs(10))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("`/nonexistent/hook` cannot start:"),
            "{err}"
        );
        // A hung hook and the child it started are killed.
        let started = Instant::now();
        let err = run(
            &argv(&["sh", "-c", "sleep 30 & echo started; wait"]),
            &e,
            Duration::from_millis(300),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("killed after") && err.ends_with("started"),
            "{err}"
        );
        assert!(started.elapsed() < Duration::from_secs(10));
        // Megabytes of output: read through, the last bytes kept.
        let out = run(
            &argv(&[
                "sh",
                "-c",
                "head -c 20000000 /dev/zero | tr '\\0' x; echo; echo END",
            ]),
            &e,
            Duration::from_secs(30),
        )
        .unwrap();
        assert!(
            out.len() <= OUTPUT_TAIL && out.ends_with("END\n"),
            "{}",
            out.len()
        );
    }
}
