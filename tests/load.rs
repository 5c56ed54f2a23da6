//! Load: one relay serving 100 leaves, 50 publishes in quick succession, and the relay
//! restarted while its children are mid-transfer. Nodes run in this process (102 real QUIC
//! endpoints with real TLS on 127.0.0.1, real files), to keep the machine's process count sane.

use std::fs;
use std::time::{Duration, Instant};

use cascade::dir::fingerprint;
use cascade::testkit::{deploy, noise};
use cascade::RunningNode;

const LEAVES: usize = 100;

async fn wait_all(origin: &RunningNode, names: &[String], version: u64, limit: Duration) {
    let start = Instant::now();
    loop {
        let statuses = origin.statuses();
        let lagging: Vec<_> = names
            .iter()
            .filter(|n| {
                !statuses
                    .iter()
                    .any(|s| &s.name == *n && s.applied >= Some(version))
            })
            .collect();
        if lagging.is_empty() {
            return;
        }
        assert!(
            start.elapsed() < limit,
            "{} nodes lack release {version} after {limit:?}, e.g. {:?}",
            lagging.len(),
            statuses.iter().find(|s| &s.name == lagging[0])
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every node's dir has the origin's tree digest (content, types, modes, mtimes).
fn assert_all_match(origin_dir: &std::path::Path, configs: &[cascade::NodeConfig]) {
    let want = fingerprint(origin_dir).unwrap().root_digest();
    for cfg in configs {
        let got = fingerprint(cfg.dir.as_ref().unwrap())
            .unwrap()
            .root_digest();
        assert_eq!(got, want, "{}", cfg.name);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_relay_serves_100_leaves_through_50_quick_publishes_and_a_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let dep = deploy(tmp.path(), 1, LEAVES).unwrap();
    let names: Vec<String> = dep
        .topology
        .nodes()
        .iter()
        .map(|n| n.name.clone())
        .collect();
    let origin_dir = dep.configs[0].dir.clone().unwrap();
    let mut nodes = Vec::new();
    for cfg in &dep.configs {
        nodes.push(Some(RunningNode::start(cfg.clone()).await.unwrap()));
    }
    let origin = nodes[0].take().unwrap();
    let t0 = Instant::now();

    for i in 0..20 {
        fs::write(
            origin_dir.join(format!("page-{i}.html")),
            format!("page {i}"),
        )
        .unwrap();
    }
    let v = origin.publish().await.unwrap().version;
    wait_all(&origin, &names, v, Duration::from_secs(120)).await;
    eprintln!("first release on {} nodes: {:?}", names.len(), t0.elapsed());

    // 50 publishes in quick succession, each changing one file.
    let mut last = v;
    for i in 0..50 {
        fs::write(origin_dir.join("changing.txt"), format!("change {i}")).unwrap();
        last = origin.publish().await.unwrap().version;
    }
    wait_all(&origin, &names, last, Duration::from_secs(180)).await;
    eprintln!("after 50 publishes: {:?}", t0.elapsed());
    assert_all_match(&origin_dir, &dep.configs[1..]);
    for cfg in &dep.configs[1..] {
        // No stuck or leaked state: no pending apply, no temp files, a store of bounded size.
        assert!(!cfg.data.join("pending.bin").exists(), "{}", cfg.name);
        let tmp_files = fs::read_dir(cfg.data.join("store/tmp")).unwrap().count();
        assert_eq!(tmp_files, 0, "{} has leftover temp bodies", cfg.name);
        let names: Vec<String> = fs::read_dir(cfg.data.join("store/objects"))
            .unwrap()
            .flat_map(|d| fs::read_dir(d.unwrap().path()).unwrap())
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        let writing: Vec<_> = names.iter().filter(|n| n.starts_with(".tmp-")).collect();
        assert!(
            writing.is_empty(),
            "{} has bodies half written: {writing:?}",
            cfg.name
        );
        let objects = names.len();
        assert!(objects <= 20 + 2 + 1, "{} holds {objects} bodies", cfg.name);
    }
    let relay_view = nodes[1].as_ref().unwrap().statuses();
    assert_eq!(
        relay_view.iter().filter(|s| s.connected).count(),
        LEAVES + 1,
        "links lost at the relay"
    );

    // The relay restarts while its 100 children fetch a larger release from it.
    fs::write(origin_dir.join("large.bin"), noise(4 << 20, 1)).unwrap();
    let big = origin.publish().await.unwrap().version;
    let relay = nodes[1].take().unwrap();
    let start = Instant::now();
    while !relay.statuses().iter().any(|s| {
        matches!(s.state, cascade::status::NodeState::Fetching { version, .. } if version == big)
            && s.name.starts_with("leaf")
    }) {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "no leaf started fetching"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    eprintln!("leaves fetching the large release: {:?}", t0.elapsed());
    relay.shutdown().await;
    let freed = Instant::now();
    let addr = dep.topology.node("relay-1").unwrap().listen.unwrap();
    while std::net::UdpSocket::bind(addr).is_err() {
        assert!(
            freed.elapsed() < Duration::from_secs(30),
            "port never freed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!("port freed {:?} after shutdown returned", freed.elapsed());
    nodes[1] = Some(RunningNode::start(dep.configs[1].clone()).await.unwrap());
    eprintln!("relay restarted: {:?}", t0.elapsed());
    wait_all(&origin, &names, big, Duration::from_secs(180)).await;
    eprintln!("all hold the large release: {:?}", t0.elapsed());
    assert_all_match(&origin_dir, &dep.configs[1..]);

    // Stop everything at once (each stop waits for its QUIC links to drain).
    let mut stops = tokio::task::JoinSet::new();
    for n in nodes.into_iter().flatten().chain([origin]) {
        stops.spawn(n.shutdown());
    }
    while stops.join_next().await.is_some() {}
}
