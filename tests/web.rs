//! The operator's HTTP face (`metrics = ADDR`) on a real tree: the metrics parse (with the
//! `prometheus-parse` crate) and pass Prometheus's own parser and linter (`promtool check
//! metrics`, Debian's prometheus package, installed by `.ci/run`), their byte counters match the bytes that moved, and the status page,
//! loaded in a real headless Chromium (Debian's chromium package), shows every node with its
//! state.

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{write, Cluster};

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One HTTP request; the status line and the body.
fn http(port: u16, request: &str) -> (String, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut all = String::new();
    s.read_to_string(&mut all).unwrap();
    let (head, body) = all.split_once("\r\n\r\n").unwrap_or((&all, ""));
    (
        head.lines().next().unwrap_or("").to_owned(),
        body.to_owned(),
    )
}

fn get(port: u16, path: &str) -> String {
    let (status, body) = http(port, &format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n"));
    assert_eq!(status, "HTTP/1.1 200 OK", "{body}");
    body
}

/// The samples of a Prometheus text exposition, read by a parser crate
/// (`prometheus-parse`): `name{labels}` (labels sorted by name) to value.
fn samples(text: &str) -> BTreeMap<String, f64> {
    let lines = text.lines().map(|l| Ok(l.to_owned()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("the metrics parse");
    scrape
        .samples
        .into_iter()
        .map(|s| {
            let mut labels: Vec<_> = s.labels.iter().collect();
            labels.sort();
            let labels: Vec<String> = labels
                .into_iter()
                .map(|(k, v)| format!("{k}=\"{v}\""))
                .collect();
            let key = if labels.is_empty() {
                s.metric
            } else {
                format!("{}{{{}}}", s.metric, labels.join(","))
            };
            let value = match s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => v,
                other => panic!("{key}: unexpected {other:?}"),
            };
            (key, value)
        })
        .collect()
}

/// `promtool check metrics` on `text`: Prometheus's parser and its naming rules.
fn promtool(text: &str) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool is installed (`.ci/run` installs Debian's prometheus package)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool: {}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The page as headless Chromium rendered it (its DOM after the scripts ran).
fn chromium_dom(port: u16) -> String {
    let profile = tempfile::tempdir().unwrap();
    let out = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            // Let the page's refresh (every 2 s) run once: it redraws from /status.json.
            "--virtual-time-budget=3000",
            "--dump-dom",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(format!("http://127.0.0.1:{port}/"))
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .expect("chromium is installed (`.ci/run` installs Debian's chromium package)");
    assert!(out.status.success(), "chromium exited with {}", out.status);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn metrics_count_what_moved_and_the_page_shows_every_node_in_a_real_browser() {
    let mut c = Cluster::new(1, 2);
    let (origin_port, relay_port) = (free_port(), free_port());
    c.configure(
        "origin",
        &format!("metrics = \"127.0.0.1:{origin_port}\"\n"),
    );
    c.configure(
        "relay-1",
        &format!("metrics = \"127.0.0.1:{relay_port}\"\n"),
    );
    let sizes = [300_000usize, 5 << 20, 17];
    let total: usize = sizes.iter().sum();
    for (i, n) in sizes.iter().enumerate() {
        let body: Vec<u8> = (0..*n).map(|b| (b * 7 + i) as u8).collect();
        write(&c.dir("origin"), &format!("f{i}.bin"), &body);
    }
    c.start_all();
    c.publish_wait();

    let origin = get(origin_port, "/metrics");
    promtool(&origin);
    let relay_text = get(relay_port, "/metrics");
    promtool(&relay_text);
    let (o, r) = (samples(&origin), samples(&relay_text));
    // Every byte of every body crossed each link once, and was counted on both ends.
    assert_eq!(
        o["cascade_sent_bytes_total{child=\"relay-1\"}"],
        total as f64
    );
    assert_eq!(r["cascade_received_bytes_total"], total as f64);
    assert_eq!(r["cascade_received_bodies_total"], sizes.len() as f64);
    assert_eq!(
        o["cascade_sent_bodies_total{child=\"relay-1\"}"],
        sizes.len() as f64
    );
    for leaf in ["leaf-1-1", "leaf-1-2"] {
        assert_eq!(
            r[&format!("cascade_sent_bytes_total{{child=\"{leaf}\"}}")],
            total as f64
        );
        assert_eq!(
            r[&format!("cascade_sent_bodies_total{{child=\"{leaf}\"}}")],
            sizes.len() as f64
        );
    }
    assert_eq!(o["cascade_release_held"], 1.0);
    assert_eq!(r["cascade_release_applied"], 1.0);
    assert_eq!(r["cascade_link_up{link=\"parent\",peer=\"origin\"}"], 1.0);
    assert_eq!(r["cascade_verification_failures_total{what=\"body\"}"], 0.0);
    // The origin sees the whole tree.
    for n in ["origin", "relay-1", "leaf-1-1", "leaf-1-2"] {
        assert_eq!(
            o[&format!("cascade_node_state{{node=\"{n}\",state=\"in_sync\"}}")],
            1.0,
            "{origin}"
        );
        assert_eq!(o[&format!("cascade_node_release{{node=\"{n}\"}}")], 1.0);
    }

    // A leaf stops: the metrics and the page say so.
    c.stop("leaf-1-2");
    c.wait(
        "the origin to see the leaf unreachable",
        Duration::from_secs(20),
        || {
            samples(&get(origin_port, "/metrics"))
                ["cascade_node_state{node=\"leaf-1-2\",state=\"unreachable\"}"]
                == 1.0
        },
    );
    let relay = samples(&get(relay_port, "/metrics"));
    assert_eq!(
        relay["cascade_link_up{link=\"child\",peer=\"leaf-1-2\"}"],
        0.0
    );
    assert_eq!(
        relay["cascade_link_up{link=\"child\",peer=\"leaf-1-1\"}"],
        1.0
    );

    let dom = chromium_dom(origin_port);
    for (node, state) in [
        ("origin", "in_sync"),
        ("relay-1", "in_sync"),
        ("leaf-1-1", "in_sync"),
        ("leaf-1-2", "unreachable"),
    ] {
        assert!(
            dom.contains(&format!("data-node=\"{node}\" data-state=\"{state}\"")),
            "{node} {state} in {dom}"
        );
    }
    assert!(dom.contains("3 in sync, 1 unreachable"), "{dom}");
    assert!(dom.contains(">unreachable<"), "{dom}");

    // The example Grafana dashboard asks only for metrics that exist.
    let known: Vec<&str> = origin
        .lines()
        .chain(relay_text.lines())
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .collect();
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/examples/grafana-dashboard.json"
        ))
        .unwrap(),
    )
    .unwrap();
    let mut asked = 0;
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                if word.starts_with("cascade_") {
                    assert!(known.contains(&word), "{word} (in {expr:?}) is not served");
                    asked += 1;
                }
            }
        }
    }
    assert!(asked >= 10);

    // The JSON the page refreshes from is `cascade status --json`'s document.
    let json: serde_json::Value = serde_json::from_str(&get(origin_port, "/status.json")).unwrap();
    assert_eq!(json["node"], "origin");
    assert_eq!(json["root"]["children"][0]["name"], "relay-1");
}

#[test]
fn the_http_face_refuses_what_it_does_not_serve() {
    let mut c = Cluster::new(0, 1);
    let port = free_port();
    c.configure("origin", &format!("metrics = \"127.0.0.1:{port}\"\n"));
    c.start("origin");
    let (status, _) = http(port, "POST /metrics HTTP/1.1\r\n\r\n");
    assert_eq!(status, "HTTP/1.1 405 Method Not Allowed");
    let (status, _) = http(port, "GET /etc/passwd HTTP/1.1\r\n\r\n");
    assert_eq!(status, "HTTP/1.1 404 Not Found");
    let (status, _) = http(port, "\u{1}\u{2} garbage\r\n\r\n");
    assert_eq!(status, "HTTP/1.1 400 Bad Request");
    let (status, body) = http(port, "HEAD /metrics HTTP/1.1\r\n\r\n");
    assert_eq!((status.as_str(), body.as_str()), ("HTTP/1.1 200 OK", ""));
    // A client that sends nothing does not stop the others.
    let _idle = TcpStream::connect(("127.0.0.1", port)).unwrap();
    assert!(get(port, "/metrics").contains("cascade_release_held"));
    // Its port in use: one clear line at start, naming the key.
    let d = Cluster::new(0, 1);
    d.configure("origin", &format!("metrics = \"127.0.0.1:{port}\"\n"));
    let out = common::cascade(&["node", "--config", d.config("origin").to_str().unwrap()]);
    let t = common::text(&out);
    assert!(!out.status.success(), "{t}");
    assert!(
        t.contains(&format!(
            "cannot serve metrics on 127.0.0.1:{port} (the `metrics` key)"
        )),
        "{t}"
    );
    drop(c);
}
