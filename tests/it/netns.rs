//! A test host of our own: a network namespace joined to this one by a veth
//! pair, so a test can make a client vanish without a FIN or RST (take the
//! link down). Needs root and `ip`; under `CI=true` a missing
//! piece fails the test, elsewhere the test is skipped with a message.

use std::fs::File;
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::process::Command;
use std::time::Duration;

pub struct TestNet {
    name: String,
    host_if: String,
    peer_if: String,
    /// The address of this (the test's) side of the link.
    pub host_ip: IpAddr,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl TestNet {
    /// A namespace with one veth link 10.231.N.1 (here) ↔ 10.231.N.2 (there).
    /// None (skip) when it cannot be made outside CI.
    pub fn create() -> Option<TestNet> {
        let n = std::process::id() % 250 + 1;
        let net = TestNet {
            name: format!("ssehub-t{n}"),
            host_if: format!("sshb{n}h"),
            host_ip: format!("10.231.{n}.1").parse().unwrap(),
            peer_if: format!("sshb{n}p"),
        };
        let peer_if = net.peer_if.clone();
        let setup = || -> Result<(), String> {
            ip(&["netns", "add", &net.name])?;
            ip(&[
                "link",
                "add",
                &net.host_if,
                "type",
                "veth",
                "peer",
                "name",
                &peer_if,
            ])?;
            ip(&["link", "set", &peer_if, "netns", &net.name])?;
            ip(&[
                "addr",
                "add",
                &format!("10.231.{n}.1/30"),
                "dev",
                &net.host_if,
            ])?;
            ip(&["link", "set", &net.host_if, "up"])?;
            let inside = |args: &[&str]| {
                let mut all = vec!["netns", "exec", &net.name, "ip"];
                all.extend_from_slice(args);
                ip(&all)
            };
            inside(&["addr", "add", &format!("10.231.{n}.2/30"), "dev", &peer_if])?;
            inside(&["link", "set", &peer_if, "up"])?;
            inside(&["link", "set", "lo", "up"])
        };
        match setup() {
            Ok(()) => Some(net),
            Err(e) if std::env::var("CI").as_deref() == Ok("true") => {
                panic!("cannot make a test network namespace under CI: {e}")
            }
            Err(e) => {
                // Written straight to stderr: the test runner hides prints.
                use std::io::Write;
                let _ = writeln!(
                    std::io::stderr(),
                    "skipped: no test network namespace ({e})"
                );
                None
            }
        }
    }

    /// Connects to `addr` from inside the namespace.
    pub fn connect_from_inside(&self, addr: SocketAddr) -> TcpStream {
        let ns = File::open(format!("/var/run/netns/{}", self.name)).expect("open the netns");
        std::thread::scope(|s| {
            s.spawn(|| {
                // SAFETY: setns on this thread only, with a valid namespace fd.
                let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
                assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
                let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
                    .expect("connect from the namespace");
                s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                s
            })
            .join()
            .expect("connect thread")
        })
    }

    /// Takes the namespace's end of the link down: from now on nothing
    /// reaches its clients and nothing comes back from them, with no FIN or
    /// RST, as when a phone loses its network.
    pub fn cut(&self) {
        ip(&[
            "netns",
            "exec",
            &self.name,
            "ip",
            "link",
            "set",
            &self.peer_if,
            "down",
        ])
        .expect("take the link down");
    }
}

impl Drop for TestNet {
    fn drop(&mut self) {
        let _ = ip(&["link", "del", &self.host_if]);
        let _ = ip(&["netns", "del", &self.name]);
    }
}
