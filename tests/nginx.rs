//! A real web server reading `dir`: nginx (Debian's package, installed by `.ci/run`), its
//! workers running as an unprivileged user, serves a leaf's `dir` in atomic mode (a symlink
//! into the node's data dir) and in place, before and after a release switch.

mod common;

use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{write, Cluster};

struct Nginx {
    child: Child,
    port: u16,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // TERM lets the master stop its workers; a KILLed master would leave them behind.
        let pid = rustix::process::Pid::from_child(&self.child);
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        let _ = self.child.wait();
    }
}

/// Starts nginx in the foreground, workers as `nobody`, serving `root` on a free port.
fn nginx(prefix: &Path, root: &Path) -> Nginx {
    let bin = ["/usr/sbin/nginx", "/usr/bin/nginx"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("nginx is installed (`.ci/run` installs Debian's nginx-light)");
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    fs::create_dir_all(prefix.join("logs")).unwrap();
    let conf = prefix.join("nginx.conf");
    fs::write(
        &conf,
        format!(
            "user nobody nogroup;\nworker_processes 1;\npid {p}/nginx.pid;\nerror_log {p}/logs/error.log;\nevents {{ worker_connections 64; }}\nhttp {{\n  access_log off;\n  client_body_temp_path {p}/body;\n  proxy_temp_path {p}/proxy;\n  fastcgi_temp_path {p}/fastcgi;\n  uwsgi_temp_path {p}/uwsgi;\n  scgi_temp_path {p}/scgi;\n  server {{\n    listen 127.0.0.1:{port};\n    root {root};\n  }}\n}}\n",
            p = prefix.display(),
            root = root.display()
        ),
    )
    .unwrap();
    let child = Command::new(bin)
        .args(["-p"])
        .arg(prefix)
        .arg("-c")
        .arg(&conf)
        .args(["-g", "daemon off;"])
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let n = Nginx { child, port };
    let start = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "nginx did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    n
}

/// GET `path`: status code and body.
fn get(n: &Nginx, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", n.port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let code = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out.split("\r\n\r\n").nth(1).unwrap_or("").to_owned();
    (code, body)
}

/// Lets other users pass through every directory from `/` down to `dir` (a temp dir is
/// private to its creator), as a web root's parents are on a server.
fn open_path_to(dir: &Path, base: &Path) {
    for d in dir.ancestors() {
        if d.starts_with(base) || base.starts_with(d) && d != Path::new("/") {
            let m = fs::metadata(d).unwrap().permissions().mode();
            fs::set_permissions(d, fs::Permissions::from_mode(m | 0o711)).unwrap();
        }
    }
}

#[test]
fn nginx_workers_as_nobody_serve_a_leaf_in_both_apply_modes() {
    let mut c = Cluster::new(1, 2);
    c.configure("leaf-1-2", "apply = \"atomic\"\n");
    c.start_all();
    let origin = c.dir("origin");
    write(&origin, "index.html", b"<h1>v1</h1>");
    write(&origin, "css/site.css", b"body {}");
    fs::set_permissions(origin.join("css"), fs::Permissions::from_mode(0o755)).unwrap();
    c.publish_wait();
    for (leaf, what) in [("leaf-1-1", "in place"), ("leaf-1-2", "atomic")] {
        let dir = c.dir(leaf);
        open_path_to(&dir, c.tmp.path());
        let n = nginx(&c.tmp.path().join(format!("nginx-{leaf}")), &dir);
        let now = fs::read_to_string(origin.join("index.html")).unwrap();
        assert_eq!(get(&n, "/index.html"), (200, now), "{what}");
        assert_eq!(get(&n, "/css/site.css").0, 200, "{what}");
        assert_eq!(get(&n, "/missing.html").0, 404, "{what}");
        write(
            &origin,
            "index.html",
            format!("<h1>after {leaf}</h1>").as_bytes(),
        );
        c.publish_wait();
        assert_eq!(
            get(&n, "/index.html"),
            (200, format!("<h1>after {leaf}</h1>")),
            "{what}, after a release"
        );
    }
    // Nobody but the node's user can read the store or the saved release.
    for leaf in ["leaf-1-1", "leaf-1-2"] {
        assert_eq!(common::mode(&c.data(leaf).join("store")), 0o700);
        assert_eq!(common::mode(&c.data(leaf).join("release.bin")), 0o600);
    }
}
