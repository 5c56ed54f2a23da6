//! CI runs the benchmark at a tiny size (seconds, no thresholds): every workload starts real
//! node processes and an rsync daemon, and checks each copy against the origin.

use std::path::PathBuf;
use std::process::Command;

/// The benchmark example next to this test's binary, built (or found up to date) by cargo
/// every time: `cargo test` does not link `examples/bench` itself, so an older binary left
/// there would otherwise be run instead of the current code.
fn bench_exe() -> PathBuf {
    let me = std::env::current_exe().expect("test executable path");
    let profile_dir = me
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>/deps/<test>");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "--example", "bench"]);
    if profile_dir.ends_with("release") {
        cmd.arg("--release");
    }
    assert!(
        cmd.status().expect("run cargo").success(),
        "building the bench failed"
    );
    profile_dir.join("examples").join("bench")
}

#[test]
fn benchmark_smoke_run() {
    let base = tempfile::tempdir().unwrap();
    let out = Command::new(bench_exe())
        .args(["--smoke", "--base"])
        .arg(base.path().join("bench"))
        .output()
        .expect("run the bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "bench failed:\n{stdout}\n{stderr}");
    for table in [
        "## 1.", "## 2.", "## 3.", "## 4.", "## 5.", "## 6.", "## 7.", "## 8.", "## 9.", "## 10.",
    ] {
        assert!(stdout.contains(table), "missing {table}:\n{stdout}");
    }
    println!("{stdout}");
}
