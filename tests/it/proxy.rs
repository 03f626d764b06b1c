//! The README's nginx configuration in front of a hub, run with the real
//! nginx: events pass through at once, heartbeats keep the stream open,
//! `Last-Event-ID` reaches the hub, and the public name forwarded in `Host`
//! is the one `--allowed-hosts` names. Needs nginx (`make test` installs
//! it); under `CI=true` a missing nginx fails the test, elsewhere the test
//! is skipped with a message.

use std::fs;
use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::harness::{json_field, poll, read_response, unique, Hub, Response, Sub, READ_TIMEOUT};

const NGINX: &str = "/usr/sbin/nginx";
const PUBLIC_NAME: &str = "events.example";

struct Nginx {
    child: Child,
    addr: SocketAddr,
    dir: PathBuf,
}

/// The ```nginx block of README.md, made to run here: the hub's address
/// upstream, plain HTTP on a free loopback port instead of TLS on 443.
fn readme_config(hub: SocketAddr, port: u16) -> String {
    let readme = include_str!("../../README.md");
    let start = readme
        .find("```nginx\n")
        .expect("README has an nginx block")
        + 9;
    let block = &readme[start..start + readme[start..].find("```").unwrap()];
    let (mut upstream, mut listen) = (false, false);
    let lines: Vec<String> = block
        .lines()
        .filter(|l| !l.contains("ssl_certificate"))
        .map(|l| {
            if l.trim_start().starts_with("server 127.0.0.1:8080;") {
                upstream = true;
                format!("    server {hub};")
            } else if l.trim_start().starts_with("listen 443 ssl") {
                listen = true;
                format!("    listen 127.0.0.1:{port};")
            } else {
                l.to_string()
            }
        })
        .collect();
    assert!(
        upstream && listen,
        "the README's nginx block changed shape:\n{block}"
    );
    lines.join("\n")
}

/// nginx with the README's config in `dir`, listening on `port`; None if
/// it exited instead (the port was taken).
fn spawn(dir: &std::path::Path, hub: SocketAddr, port: u16) -> Option<Child> {
    let d = dir.display();
    let conf = format!(
        "worker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\nevents {{}}\n\
         http {{\naccess_log off;\nclient_body_temp_path {d}/body;\nproxy_temp_path {d}/proxy;\n\
         fastcgi_temp_path {d}/fastcgi;\nuwsgi_temp_path {d}/uwsgi;\nscgi_temp_path {d}/scgi;\n{}\n}}\n",
        readme_config(hub, port)
    );
    fs::write(dir.join("nginx.conf"), conf).unwrap();
    let mut child = Command::new(NGINX)
        .arg("-p")
        .arg(dir)
        .arg("-c")
        .arg(dir.join("nginx.conf"))
        .args(["-g", "daemon off;"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start nginx");
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut exited = false;
    let up = poll(Duration::from_secs(10), || {
        exited = matches!(child.try_wait(), Ok(Some(_)));
        exited || TcpStream::connect(addr).is_ok()
    });
    if exited {
        return None;
    }
    if !up {
        let _ = child.kill();
        let _ = child.wait();
        let log = fs::read_to_string(dir.join("error.log")).unwrap_or_default();
        panic!("nginx did not listen on {addr}: {log}");
    }
    Some(child)
}

impl Nginx {
    fn start(hub: &Hub) -> Option<Nginx> {
        if !std::path::Path::new(NGINX).exists() {
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                panic!("CI=true and {NGINX} is missing (make test installs it)");
            }
            eprintln!("skipped: {NGINX} is missing");
            return None;
        }
        let dir =
            std::env::temp_dir().join(format!("ssehub-nginx-{}-{}", std::process::id(), unique()));
        fs::create_dir_all(&dir).unwrap();
        // nginx's workers run as nobody when started by root.
        let _ = Command::new("chmod").arg("777").arg(&dir).status();
        // A free port, which another test may take before nginx binds it:
        // nginx then exits, and another port is tried.
        for _ in 0..5 {
            let port = TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            if let Some(child) = spawn(&dir, hub.addr, port) {
                return Some(Nginx {
                    child,
                    addr: SocketAddr::from(([127, 0, 0, 1], port)),
                    dir,
                });
            }
        }
        let log = fs::read_to_string(dir.join("error.log")).unwrap_or_default();
        panic!("nginx did not start: {log}");
    }

    fn error_log(&self) -> String {
        fs::read_to_string(self.dir.join("error.log")).unwrap_or_default()
    }

    fn send(&self, request: &str) -> TcpStream {
        let mut s = TcpStream::connect(self.addr).unwrap();
        s.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
        s.write_all(request.as_bytes()).unwrap();
        s
    }

    fn subscribe(&self, target: &str, headers: &str) -> Sub {
        let s = self.send(&format!(
            "GET {target} HTTP/1.1\r\nHost: {PUBLIC_NAME}\r\n{headers}\r\n"
        ));
        Sub::open(s)
    }

    fn request(&self, head: &str, body: &str) -> Response {
        let mut s = self.send(&format!(
            "{head}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ));
        read_response(&mut s).expect("a response through nginx")
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM, not SIGKILL: the master then stops its worker, which a
        // killed master would leave behind.
        // SAFETY: kill has no memory-safety preconditions.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
        }
        let child = &mut self.child;
        if !poll(Duration::from_secs(5), || {
            matches!(child.try_wait(), Ok(Some(_)))
        }) {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn the_readme_nginx_config_passes_streams_through() {
    let hub = Hub::start(&["--allowed-hosts", PUBLIC_NAME, "--heartbeat", "1"]);
    let Some(proxy) = Nginx::start(&hub) else {
        return;
    };
    let mut sub = proxy.subscribe("/events?topic=t", "");
    assert_eq!(
        sub.head.status,
        200,
        "{:?}\n{}",
        sub.head,
        proxy.error_log()
    );
    assert_eq!(sub.head.header("content-type"), Some("text/event-stream"));
    assert!(sub.next_event().retry.is_some());

    // Published through the proxy by the hub's own page: its Origin is the
    // public name nginx forwards in Host.
    let origin = format!("Origin: https://{PUBLIC_NAME}");
    let r = proxy.request(
        &format!("POST /events?topic=t HTTP/1.1\r\nHost: {PUBLIC_NAME}\r\n{origin}"),
        "through nginx",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let first = json_field(&r.text(), "id");
    // Arrives on its own, not held in a proxy buffer.
    let ev = sub.next_event();
    assert_eq!(
        (ev.id.as_deref(), ev.data.as_str()),
        (Some(first.as_str()), "through nginx")
    );
    // A quiet stream gets heartbeats through the proxy.
    assert_eq!(sub.next_block(), ":\n\n");

    // A reconnect with Last-Event-ID gets what it missed, through nginx.
    let second = hub.publish("t", "missed");
    let mut again = proxy.subscribe("/events?topic=t", &format!("Last-Event-ID: {first}\r\n"));
    assert!(again.next_event().retry.is_some());
    let ev = again.next_event();
    assert_eq!(
        (ev.id.as_deref(), ev.data.as_str()),
        (Some(second.as_str()), "missed")
    );

    // Through the same proxy under a name the hub does not serve.
    let r = proxy.request("GET /healthz HTTP/1.1\r\nHost: evil.example", "");
    assert_eq!(r.status, 403);
}

/// A `Date` field that is an HTTP-date close to now.
fn recent_date(head: &Response) -> bool {
    head.header("date")
        .and_then(|d| httpdate::parse_http_date(d).ok())
        .and_then(|t| t.elapsed().ok().or(Some(Duration::ZERO)))
        .is_some_and(|age| age < Duration::from_secs(5))
}

/// SPEC "Other routes": every response carries `Date`, a stream's head
/// included, and a stream's head says `Connection: close` (the connection
/// ends with the stream): seen by a client of the hub itself, and through
/// nginx, which keeps its connections to the hub alive otherwise.
#[test]
fn stream_heads_carry_date_and_connection_close() {
    let hub = Hub::start(&["--allowed-hosts", PUBLIC_NAME]);
    let mut direct = hub.subscribe("/events?topic=t", "");
    assert!(recent_date(&direct.head), "{:?}", direct.head);
    assert_eq!(
        direct.head.header("connection"),
        Some("close"),
        "{:?}",
        direct.head
    );
    assert!(direct.next_event().retry.is_some());
    let Some(proxy) = Nginx::start(&hub) else {
        return;
    };
    let mut through = proxy.subscribe("/events?topic=t", "");
    assert_eq!(through.head.status, 200, "{}", proxy.error_log());
    assert!(recent_date(&through.head), "{:?}", through.head);
    assert!(through.next_event().retry.is_some());
    let id = hub.publish("t", "both");
    for sub in [&mut direct, &mut through] {
        assert_eq!(sub.next_event().id.as_deref(), Some(id.as_str()));
    }
}
