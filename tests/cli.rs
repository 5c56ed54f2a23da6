//! The command-line contract: exit codes and one clear line for each user error.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;

use common::{cascade, text, Cluster};

/// A failed command printed exactly one `error:` line, naming `what`, and no panic.
fn one_clear_error(out: &std::process::Output, what: &str) {
    let t = text(out);
    assert!(!out.status.success(), "expected failure: {t}");
    assert!(
        !t.contains("panicked") && !t.contains("RUST_BACKTRACE"),
        "{t}"
    );
    let errors: Vec<_> = t.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "{t}");
    assert!(errors[0].contains(what), "expected {what:?} in {t}");
}

#[test]
fn topology_check_prints_the_tree_or_names_the_fault() {
    let d = tempfile::tempdir().unwrap();
    let good = d.path().join("good.toml");
    fs::write(
        &good,
        "[[node]]\nname = \"origin\"\nlisten = \"10.0.0.1:7400\"\n\n[[node]]\nname = \"relay-east\"\nparent = \"origin\"\nlisten = \"10.0.1.1:7400\"\n\n[[node]]\nname = \"web-1\"\nparent = \"relay-east\"\n",
    )
    .unwrap();
    let out = cascade(&["topology", "check", good.to_str().unwrap()]);
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(
        t.contains("origin (origin, depth 0)") && t.contains("relay-east (relay, depth 1)"),
        "{t}"
    );
    assert!(t.contains("└── web-1 (leaf, depth 2)"), "{t}");

    let cases = [
        ("[[node]]\nname = \"a\"\n[[node]]\nname = \"b\"\n", "more than one root"),
        ("[[node]]\nname = \"o\"\nlisten = \"1.2.3.4:1\"\n[[node]]\nname = \"x\"\nparent = \"ghost\"\n", "unknown parent \"ghost\""),
        ("[[node]]\nname = \"o\"\n[[node]]\nname = \"x\"\nparent = \"o\"\n", "no listen address"),
        ("[[node]]\nname = \"o\"\nlisten = 127.0.0.1:1\n[[node]]\n", "line 3, column"),
        ("[[node]]\nname = \"Bad_Name\"\n", "not a valid DNS label"),
    ];
    for (i, (body, what)) in cases.iter().enumerate() {
        let f = d.path().join(format!("bad{i}.toml"));
        fs::write(&f, body).unwrap();
        one_clear_error(&cascade(&["topology", "check", f.to_str().unwrap()]), what);
    }
    one_clear_error(
        &cascade(&["topology", "check", "/nonexistent/topo.toml"]),
        "/nonexistent/topo.toml",
    );
}

#[test]
fn topology_plan_compares_with_the_running_origin_or_a_file() {
    let text_of = text;
    let mut c = Cluster::new(2, 1);
    c.start("origin");
    let current = c.dep.base.join("topology.toml");
    let text = fs::read_to_string(&current).unwrap();
    // Move leaf-2-1 under relay-1 and add a leaf under relay-1.
    let new = c.dep.base.join("new.toml");
    let moved = text.replace(
        "name = \"leaf-2-1\"\nparent = \"relay-2\"",
        "name = \"leaf-2-1\"\nparent = \"relay-1\"",
    );
    assert_ne!(
        moved, text,
        "the test's topology has leaf-2-1 under relay-2"
    );
    fs::write(
        &new,
        format!("{moved}\n[[node]]\nname = \"leaf-1-9\"\nparent = \"relay-1\"\n"),
    )
    .unwrap();
    let cfg = c.config("origin");
    let out = cascade(&[
        "topology",
        "plan",
        new.to_str().unwrap(),
        "--config",
        cfg.to_str().unwrap(),
    ]);
    let t = text_of(&out);
    assert!(out.status.success(), "{t}");
    assert!(
        t.contains("3 change(s) from the topology origin runs with"),
        "{t}"
    );
    assert!(t.contains("move leaf-2-1: relay-2 -> relay-1"), "{t}");
    assert!(t.contains("relay-2 becomes a leaf (was a relay)"), "{t}");
    assert!(t.contains("add leaf-1-9 under relay-1"), "{t}");
    assert!(t.contains("+ │   └── leaf-1-9 (leaf"), "{t}");
    // Offline, from a file; the same file again: no change.
    let plan_from = |file: &std::path::Path| {
        cascade(&[
            "topology",
            "plan",
            file.to_str().unwrap(),
            "--from",
            current.to_str().unwrap(),
        ])
    };
    let out = plan_from(&current);
    assert!(text_of(&out).contains("no change"), "{}", text_of(&out));
    // An invalid file is refused with check's error; so is a new origin.
    let bad = c.dep.base.join("bad.toml");
    fs::write(&bad, "[[node]]\nname = \"relay-1\"\n").unwrap();
    one_clear_error(&plan_from(&bad), "origin cannot change");
    fs::write(
        &bad,
        moved.replace("parent = \"relay-1\"", "parent = \"ghost\""),
    )
    .unwrap();
    one_clear_error(&plan_from(&bad), "unknown parent \"ghost\"");
}

#[test]
fn certs_init_and_issue() {
    let d = tempfile::tempdir().unwrap();
    let certs = d.path().join("certs");
    let c = certs.to_str().unwrap();
    assert!(cascade(&["certs", "init", "--dir", c]).status.success());
    let mode = common::mode(&certs.join("ca.key"));
    assert_eq!(mode, 0o600);
    assert_eq!(common::mode(&certs.join("release.key")), 0o600);
    assert!(certs.join("release.pub").exists());
    one_clear_error(&cascade(&["certs", "init", "--dir", c]), "already exists");
    one_clear_error(
        &cascade(&["certs", "release-key", "--dir", c]),
        "release-signing key already exists",
    );
    let before = fs::read(certs.join("release.pub")).unwrap();
    assert!(cascade(&["certs", "release-key", "--dir", c, "--force"])
        .status
        .success());
    assert_ne!(before, fs::read(certs.join("release.pub")).unwrap());
    assert!(cascade(&["certs", "init", "--dir", c, "--force"])
        .status
        .success());

    let topo = d.path().join("t.toml");
    fs::write(&topo, "[[node]]\nname = \"origin\"\nlisten = \"127.0.0.1:9\"\n[[node]]\nname = \"web-1\"\nparent = \"origin\"\n").unwrap();
    let out = cascade(&[
        "certs",
        "issue",
        "--dir",
        c,
        "--topology",
        topo.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    for n in ["origin", "web-1"] {
        assert!(certs.join(format!("{n}.pem")).exists());
        let mode = common::mode(&certs.join(format!("{n}.key")));
        assert_eq!(mode, 0o600);
    }
    // A certificate that would be expired at once, or valid past any calendar, is refused.
    for days in ["0", "4000000000"] {
        let out = cascade(&["certs", "issue", "--dir", c, "--days", days, "web-9"]);
        assert!(
            !out.status.success() && text(&out).contains("--days"),
            "{}",
            text(&out)
        );
        assert!(!text(&out).contains("panicked"));
    }
    let out = cascade(&["certs", "issue", "--dir", c, "web-1", "web-2"]);
    let t = text(&out);
    assert!(
        out.status.success() && t.contains("kept existing") && t.contains("issued"),
        "{t}"
    );
}

#[test]
fn node_start_errors_are_one_clear_line() {
    let c = Cluster::new(1, 1);
    let cfg = c.config("leaf-1-1");
    let cfg = cfg.to_str().unwrap();

    one_clear_error(
        &cascade(&["node", "--config", "/nonexistent/node.toml"]),
        "/nonexistent/node.toml",
    );

    // Missing certificate: names the file.
    fs::rename(
        c.dep.base.join("certs/leaf-1-1.pem"),
        c.dep.base.join("certs/moved.pem"),
    )
    .unwrap();
    one_clear_error(&cascade(&["node", "--config", cfg]), "leaf-1-1.pem");
    fs::rename(
        c.dep.base.join("certs/moved.pem"),
        c.dep.base.join("certs/leaf-1-1.pem"),
    )
    .unwrap();

    // No release.pub: the node cannot check releases, so it does not start.
    let pubkey = c.dep.base.join("certs/release.pub");
    fs::rename(&pubkey, c.dep.base.join("certs/moved.pub")).unwrap();
    one_clear_error(&cascade(&["node", "--config", cfg]), "release.pub");
    fs::rename(c.dep.base.join("certs/moved.pub"), &pubkey).unwrap();

    // A key others can read is refused.
    let key = c.dep.base.join("certs/leaf-1-1.key");
    fs::set_permissions(&key, fs::Permissions::from_mode(0o644)).unwrap();
    one_clear_error(&cascade(&["node", "--config", cfg]), "leaf-1-1.key");
    fs::set_permissions(&key, fs::Permissions::from_mode(0o600)).unwrap();

    // A name that is not in the topology.
    one_clear_error(
        &cascade(&["node", "--config", cfg, "--name", "nobody"]),
        "\"nobody\" is not in topology",
    );

    // Keys in the wrong place, bad patterns and hooks: named before anything starts.
    one_clear_error(
        &cascade(&["node", "--config", cfg, "--watch"]),
        "`watch` applies only on the origin",
    );
    one_clear_error(
        &cascade(&["node", "--config", cfg, "--exclude", "*.swp"]),
        "`exclude` applies only on the origin",
    );
    one_clear_error(
        &cascade(&["node", "--config", cfg, "--keep", "{a,b"]),
        "keep: pattern \"{a,b\"",
    );
    one_clear_error(
        &cascade(&["node", "--config", cfg, "--check", "true"]),
        "check needs apply = \"atomic\"",
    );
    let origin = c.config("origin");
    one_clear_error(
        &cascade(&[
            "node",
            "--config",
            origin.to_str().unwrap(),
            "--keep",
            "uploads/",
        ]),
        "`keep` applies only on a relay or a leaf",
    );

    // Port in use: the origin's listen address is taken.
    let addr = c.dep.topology.origin().listen.unwrap();
    let _taken = std::net::UdpSocket::bind(addr).unwrap();
    let origin = c.config("origin");
    one_clear_error(
        &cascade(&["node", "--config", origin.to_str().unwrap()]),
        &addr.to_string(),
    );
}

#[test]
fn publish_without_a_running_origin_or_from_a_leaf() {
    let mut c = Cluster::new(1, 1);
    one_clear_error(&c.publish(&[]), "admin.sock");
    c.start("leaf-1-1");
    let leaf = c.config("leaf-1-1");
    one_clear_error(
        &cascade(&["publish", "--config", leaf.to_str().unwrap()]),
        "only the origin can publish",
    );
    // The admin socket is private to the node's user.
    let mode = common::mode(&c.data("leaf-1-1").join("admin.sock"));
    assert_eq!(mode, 0o600);

    // Another user who can reach every file but the socket cannot publish.
    c.start("origin");
    let origin = c.config("origin");
    for d in origin.ancestors().skip(1) {
        if d == std::path::Path::new("/") || !d.starts_with(c.tmp.path()) && d != c.tmp.path() {
            break;
        }
        fs::set_permissions(d, fs::Permissions::from_mode(0o755)).unwrap();
    }
    fs::set_permissions(c.data("origin"), fs::Permissions::from_mode(0o755)).unwrap();
    let out = std::process::Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            common::BIN,
        ])
        .args(["publish", "--config", origin.to_str().unwrap()])
        .output();
    match out {
        Ok(out) if out.status.code().is_some() => {
            let t = text(&out);
            assert!(!out.status.success(), "nobody published: {t}");
            assert!(
                t.contains("admin.sock") && t.contains("ermission denied"),
                "{t}"
            );
        }
        other => {
            eprintln!("setpriv is not usable here ({other:?}): the second-user check is skipped")
        }
    }
}

#[test]
fn unreachable_parent_is_reported_and_retried_until_it_appears() {
    let mut c = Cluster::new(1, 1);
    c.start("leaf-1-1");
    c.wait(
        "the leaf to report its parent unreachable",
        std::time::Duration::from_secs(20),
        || c.log("leaf-1-1").contains("connect to relay-1 at"),
    );
    c.start("relay-1");
    c.start("origin");
    common::write(&c.dir("origin"), "hello.txt", b"hi");
    c.publish_wait();
    c.assert_same_as_origin("leaf-1-1");
}

#[test]
fn demo_exits_zero() {
    let out = cascade(&["demo"]);
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(t.contains("PASS") && !t.contains("DIFFERS"), "{t}");
    // Nothing is wrong in the demo, so nothing is a warning (a clean stop included).
    assert!(!t.contains("WARN"), "{t}");
    assert!(t.contains("7 nodes: 7 in sync"), "{t}");
}

#[test]
fn data_dir_faults_are_one_clear_line() {
    let mut c = Cluster::new(1, 1);
    let cfg = c.config("leaf-1-1");
    let cfg = cfg.to_str().unwrap();
    // A second node on a running node's data dir.
    c.start("leaf-1-1");
    one_clear_error(&cascade(&["node", "--config", cfg]), "node.lock");
    assert!(
        c.try_statuses("leaf-1-1").is_some(),
        "the running node answers"
    );
    c.stop("leaf-1-1");

    // A saved release written by a newer Cascade (state format 7).
    let release = c.data("leaf-1-1").join("release.bin");
    let mut newer = b"CASCADE\0\x01".to_vec();
    newer.extend(7u16.to_le_bytes());
    newer.extend([0; 24]);
    fs::write(&release, &newer).unwrap();
    one_clear_error(&cascade(&["node", "--config", cfg]), "format 7");
    // A damaged one.
    fs::write(&release, b"CASCADE\0\x01\x01\x00garbage").unwrap();
    one_clear_error(&cascade(&["node", "--config", cfg]), "release.bin");
    fs::remove_file(&release).unwrap();
    c.start("leaf-1-1");
}

#[test]
fn the_example_deployment_files_load() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/deploy");
    for f in ["origin.toml", "relay.toml", "web.toml"] {
        let cfg = cascade::NodeConfig::load(Some(&dir.join(f)), [], &Default::default())
            .unwrap_or_else(|e| panic!("{f}: {e}"));
        if f == "origin.toml" {
            assert!(cfg.watch.is_some() && !cfg.exclude.is_empty());
        }
    }
    cascade_topology::Topology::load(&dir.join("topology.toml")).unwrap();
}

/// `cascade status` (text and `--json`) on the origin, and its exit code.
fn status(c: &Cluster, json: bool) -> (String, Option<i32>) {
    let cfg = c.config("origin");
    let mut args = vec!["status", "--config", cfg.to_str().unwrap()];
    if json {
        args.push("--json");
    }
    let out = cascade(&args);
    let t = text(&out);
    assert!(!t.contains("error:"), "{t}");
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        out.status.code(),
    )
}

/// Every node of the `--json` view: name to (state, release, lag in releases).
fn states(
    c: &Cluster,
) -> std::collections::BTreeMap<String, (String, serde_json::Value, serde_json::Value)> {
    let (out, _) = status(c, true);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    let mut all = std::collections::BTreeMap::new();
    let mut stack = vec![v["root"].clone()];
    while let Some(n) = stack.pop() {
        all.insert(
            n["name"].as_str().unwrap().to_owned(),
            (
                n["state"].as_str().unwrap().to_owned(),
                n["release"].clone(),
                n["lag_releases"].clone(),
            ),
        );
        stack.extend(n["children"].as_array().unwrap().iter().cloned());
    }
    all
}

#[test]
fn status_draws_the_tree_and_follows_a_leaf_that_stops_and_comes_back() {
    let mut c = Cluster::new(1, 2);
    common::write(&c.dir("origin"), "index.html", b"v1");
    c.start_all();
    c.publish_wait();
    c.wait(
        "every node to be in sync",
        std::time::Duration::from_secs(20),
        || states(&c).values().all(|(s, ..)| s == "in_sync"),
    );
    let (text, code) = status(&c, false);
    assert_eq!(code, Some(0), "{text}");
    let want = "\
origin holds release 1 · 4 nodes: 4 in sync
origin (origin)  v1  in sync
└── relay-1 (relay)  v1  in sync
    ├── leaf-1-1 (leaf)  v1  in sync
    └── leaf-1-2 (leaf)  v1  in sync
";
    assert_eq!(text, want);
    // The JSON has the same tree: the relay's children are the two leaves.
    let (json, _) = status(&c, true);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["node"], "origin");
    assert_eq!(v["release"], 1);
    let relay = &v["root"]["children"][0];
    assert_eq!(relay["name"], "relay-1");
    assert_eq!(relay["role"], "relay");
    let leaves: Vec<_> = relay["children"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["name"].as_str().unwrap())
        .collect();
    assert_eq!(leaves, ["leaf-1-1", "leaf-1-2"]);

    // A leaf stops: it is shown as unreachable (since when), not dropped, and the exit code
    // says something needs a look.
    c.stop("leaf-1-2");
    c.wait(
        "the stopped leaf to be unreachable",
        std::time::Duration::from_secs(20),
        || states(&c)["leaf-1-2"].0 == "unreachable",
    );
    common::write(&c.dir("origin"), "index.html", b"v2");
    c.publish(&[]);
    c.wait(
        "the others to hold release 2",
        std::time::Duration::from_secs(30),
        || {
            let s = states(&c);
            ["origin", "relay-1", "leaf-1-1"]
                .iter()
                .all(|n| s[*n].0 == "in_sync" && s[*n].1 == 2)
        },
    );
    let s = states(&c);
    assert_eq!(s["leaf-1-2"].0, "unreachable");
    assert_eq!(
        (s["leaf-1-2"].1.clone(), s["leaf-1-2"].2.clone()),
        (1.into(), 1.into())
    );
    let (text, code) = status(&c, false);
    assert_eq!(code, Some(1), "{text}");
    let line = text.lines().find(|l| l.contains("leaf-1-2")).unwrap();
    assert!(
        line.contains("unreachable since") && line.contains("1 release behind"),
        "{text}"
    );

    // Back: in sync again, with nothing behind.
    c.start("leaf-1-2");
    c.wait(
        "the leaf to be back in sync",
        std::time::Duration::from_secs(30),
        || {
            states(&c)
                .values()
                .all(|(s, r, _)| s == "in_sync" && *r == 2)
        },
    );
    assert_eq!(status(&c, false).1, Some(0));
    assert_eq!(states(&c)["leaf-1-2"].2, 0);
}

#[test]
fn a_parent_that_stops_cleanly_is_no_warning_for_its_children() {
    let mut c = Cluster::new(1, 1);
    common::write(&c.dir("origin"), "index.html", b"v1");
    c.start_all();
    c.publish_wait();
    c.stop("relay-1");
    c.wait(
        "the leaf to see its parent stop",
        std::time::Duration::from_secs(20),
        || c.log("leaf-1-1").contains("parent relay-1 is stopping"),
    );
    // Let it fail to dial at least once, then bring the parent back.
    std::thread::sleep(std::time::Duration::from_millis(800));
    c.start("relay-1");
    common::write(&c.dir("origin"), "index.html", b"v2");
    c.publish_wait();
    let log = c.log("leaf-1-1");
    assert!(!log.contains("WARN"), "{log}");
    let relay = c.log("relay-1");
    let stops: Vec<_> = relay
        .lines()
        .filter(|l| l.contains("node stopped"))
        .collect();
    assert_eq!(stops.len(), 1, "{relay}");
    assert!(
        stops[0].contains("INFO") && stops[0].contains("SIGTERM"),
        "{relay}"
    );
    assert!(!relay.contains("WARN"), "{relay}");
}

/// The completion scripts load in the real shells (bash, zsh and fish, Debian's packages,
/// installed by `.ci/run`) and complete the subcommands; the manual pages render.
#[test]
fn completions_load_in_three_shells_and_the_man_pages_render() {
    let d = tempfile::tempdir().unwrap();
    for shell in ["bash", "zsh", "fish"] {
        let out = cascade(&["completions", shell]);
        assert!(out.status.success(), "{}", text(&out));
        let script = d.path().join(format!("cascade.{shell}"));
        fs::write(&script, &out.stdout).unwrap();
        let body = String::from_utf8_lossy(&out.stdout);
        for sub in ["node", "publish", "status", "topology", "completions"] {
            assert!(body.contains(sub), "{shell}: {sub} missing");
        }
        let s = script.display();
        // Each shell parses the script and registers the completion for `cascade`.
        let check = match shell {
            "bash" => format!("source {s} && complete -p cascade"),
            "zsh" => {
                format!("autoload -U compinit && compinit -u && source {s} && whence -w _cascade")
            }
            _ => format!("source {s}; and complete --do-complete 'cascade sta'"),
        };
        let run = std::process::Command::new(shell)
            .args(["-c", &check])
            .env("HOME", d.path())
            .output()
            .unwrap_or_else(|e| panic!("{shell} is installed (`.ci/run` installs it): {e}"));
        let t = text(&run);
        assert!(run.status.success(), "{shell}: {t}");
        match shell {
            "bash" => assert!(t.contains("cascade"), "{t}"),
            "zsh" => assert!(t.contains("_cascade: function"), "{t}"),
            _ => assert!(t.contains("status"), "{t}"),
        }
    }
    let out = cascade(&["man"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains(".TH cascade 1"));
    let pages = d.path().join("man");
    let out = cascade(&["man", "--dir", pages.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    for page in [
        "cascade.1",
        "cascade-node.1",
        "cascade-status.1",
        "cascade-topology-apply.1",
    ] {
        let roff = fs::read_to_string(pages.join(page)).unwrap();
        assert!(roff.contains(".TH"), "{page}");
    }
    let node = fs::read_to_string(pages.join("cascade-node.1")).unwrap();
    assert!(
        node.contains("upload\\-limit") && node.contains("Example"),
        "{node}"
    );
}
