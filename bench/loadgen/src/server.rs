//! The servers under test: how each is started, found ready, measured from
//! /proc and stopped. Only processes started here are ever signalled, by
//! their own pid.

use std::fs;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Ssehub,
    Nchan,
    Axum,
}

impl Kind {
    pub const ALL: [Kind; 3] = [Kind::Ssehub, Kind::Nchan, Kind::Axum];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Ssehub => "ssehub",
            Kind::Nchan => "nchan",
            Kind::Axum => "axum",
        }
    }

    /// The request target that subscribes to topic `bench`.
    pub fn subscribe_path(self) -> &'static str {
        match self {
            Kind::Nchan => "/sub?topic=bench",
            _ => "/events?topic=bench",
        }
    }

    /// The query parameter a replay's last event id goes in; `None`: the
    /// `Last-Event-ID` header (nchan reads it, as the axum server does).
    pub fn replay_query(self) -> Option<&'static str> {
        match self {
            Kind::Ssehub => Some("lastEventId"),
            _ => None,
        }
    }

    /// The request target that publishes to topic `bench`.
    pub fn publish_path(self) -> &'static str {
        match self {
            Kind::Nchan => "/pub?topic=bench",
            _ => "/events?topic=bench",
        }
    }
}

/// Where the binaries and the nchan config are.
#[derive(Clone)]
pub struct Paths {
    pub ssehub: PathBuf,
    pub redis: PathBuf,
    pub axum: PathBuf,
    pub nginx: PathBuf,
    pub nchan_conf: PathBuf,
    /// Scratch space: logs, the nginx prefix.
    pub work: PathBuf,
}

pub struct Server {
    pub kind: Kind,
    pub addr: SocketAddr,
    child: Child,
    /// Where the server's processes are charged for memory, when the
    /// machine lets us make one.
    memory: Option<MemoryCgroup>,
}

/// A memory cgroup (v1) of our own that a server starts in, with its
/// children: it is charged for the server's pages and for what the kernel
/// allocates on its behalf (kernel stacks, task and socket structures, page
/// tables), which no figure of the process itself shows.
struct MemoryCgroup {
    dir: PathBuf,
}

const MEMORY_V1: &str = "/sys/fs/cgroup/memory";

/// The memory cgroup (v1) of process `pid` ("self" for this one), as a path
/// under the hierarchy's root.
fn memory_cgroup_of(pid: &str) -> Option<String> {
    fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .ok()?
        .lines()
        .find_map(|l| {
            let mut parts = l.splitn(3, ':');
            let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
            controllers
                .split(',')
                .any(|c| c == "memory")
                .then(|| path.to_string())
        })
}

impl MemoryCgroup {
    fn create(name: &str) -> Option<MemoryCgroup> {
        // Servers run side by side (the Redis scenario's two hubs) and are
        // restarted (the storm): each gets a cgroup of its own.
        static MADE: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = MADE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // Inside our own memory cgroup, so the server stays within whatever
        // this process is held to.
        let ours = memory_cgroup_of("self")?;
        let path = format!(
            "{}/loadgen-{}-{name}-{n}",
            ours.trim_end_matches('/'),
            std::process::id()
        );
        let dir = Path::new(MEMORY_V1).join(path.trim_start_matches('/'));
        fs::create_dir(&dir).ok()?;
        Some(MemoryCgroup { dir })
    }

    /// Whether process `pid` is in this cgroup (joining it can fail).
    fn holds(&self, pid: u32) -> bool {
        let Some(theirs) = memory_cgroup_of(&pid.to_string()) else {
            return false;
        };
        Path::new(MEMORY_V1).join(theirs.trim_start_matches('/')) == self.dir
    }

    fn usage_kib(&self) -> Option<u64> {
        let bytes: u64 = fs::read_to_string(self.dir.join("memory.usage_in_bytes"))
            .ok()?
            .trim()
            .parse()
            .ok()?;
        Some(bytes / 1024)
    }

    /// Makes `cmd`'s process join this cgroup between fork and exec.
    fn enter_on_start(&self, cmd: &mut Command) {
        use std::os::unix::process::CommandExt;
        let procs = std::ffi::CString::new(
            self.dir
                .join("cgroup.procs")
                .into_os_string()
                .into_encoded_bytes(),
        )
        .expect("a path without NUL");
        // SAFETY: the hook only makes async-signal-safe calls (open, write,
        // close) on memory prepared before the fork.
        unsafe {
            cmd.pre_exec(move || {
                let fd = libc::open(procs.as_ptr(), libc::O_WRONLY);
                if fd >= 0 {
                    // "0": the writing process itself.
                    libc::write(fd, b"0".as_ptr().cast(), 1);
                    libc::close(fd);
                }
                Ok(())
            });
        }
    }
}

impl Drop for MemoryCgroup {
    fn drop(&mut self) {
        // Empty once the server is reaped; the kernel may take a moment to
        // let go of what it still charges to it.
        for _ in 0..50 {
            if fs::remove_dir(&self.dir).is_ok() {
                return;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A directory of our own under the system's temporary directory, for a
/// durable log (ssehub's `--data`, Redis's append-only file); removed with
/// everything in it on drop, once whoever wrote there has been stopped.
pub struct TempDir {
    pub path: PathBuf,
}

impl TempDir {
    pub fn new(name: &str) -> io::Result<TempDir> {
        static MADE: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = MADE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("loadgen-{}-{name}-{n}", std::process::id()));
        fs::create_dir(&path)?;
        Ok(TempDir { path })
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if let Err(e) = fs::remove_dir_all(&self.path) {
            eprintln!("loadgen: remove {}: {e}", self.path.display());
        }
    }
}

/// A free loopback port (the kernel picks it; the listener is dropped).
pub fn free_port() -> io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

impl Server {
    /// Starts the server with `extra` options after the defaults (ssehub
    /// only: `--redis URL`, `--data DIR`).
    pub fn start_with(
        kind: Kind,
        port: u16,
        paths: &Paths,
        extra: &[String],
    ) -> io::Result<Server> {
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(paths.work.join(format!("{}.log", kind.name())))?;
        let mut cmd = match kind {
            Kind::Ssehub => {
                // Default options: only the address is ours.
                let mut c = Command::new(&paths.ssehub);
                c.arg("--bind").arg(addr.to_string());
                if let Ok(extra) = std::env::var("SSEHUB_ARGS") {
                    c.args(extra.split_whitespace());
                }
                c.args(extra);
                c
            }
            Kind::Axum => {
                let mut c = Command::new(&paths.axum);
                c.arg("--bind").arg(addr.to_string());
                c
            }
            Kind::Nchan => {
                let dir = paths.work.join("nchan");
                fs::create_dir_all(&dir)?;
                let conf = fs::read_to_string(&paths.nchan_conf)?
                    .replace("@DIR@", &dir.to_string_lossy())
                    .replace("@PORT@", &port.to_string());
                let conf_path = dir.join("nginx.conf");
                fs::write(&conf_path, conf)?;
                let mut c = Command::new(&paths.nginx);
                c.arg("-p")
                    .arg(&dir)
                    .arg("-c")
                    .arg(&conf_path)
                    .arg("-e")
                    .arg("stderr");
                c
            }
        };
        let memory = MemoryCgroup::create(kind.name());
        if let Some(m) = &memory {
            m.enter_on_start(&mut cmd);
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        // A figure from a cgroup the server is not in would read as zero.
        let memory = memory.filter(|m| m.holds(child.id()));
        let mut server = Server {
            kind,
            addr,
            child,
            memory,
        };
        server.wait_ready(Duration::from_secs(20))?;
        Ok(server)
    }

    /// Waits until `GET /healthz` answers 200 (and, for nginx, both workers
    /// run).
    fn wait_ready(&mut self, timeout: Duration) -> io::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Err(io::Error::other(format!(
                    "{} exited at startup: {status}",
                    self.kind.name()
                )));
            }
            let workers_ok = self.kind != Kind::Nchan || self.pids().len() >= 3;
            if workers_ok && healthz(self.addr) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(io::Error::other(format!(
                    "{} not ready after {timeout:?}",
                    self.kind.name()
                )));
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What the server's processes are charged for in memory, the kernel's
    /// share included; `None` where no memory cgroup could be made.
    pub fn memory_kib(&self) -> Option<u64> {
        self.memory.as_ref()?.usage_kib()
    }

    /// The server's processes: the one we started and its children (the
    /// nginx workers).
    pub fn pids(&self) -> Vec<u32> {
        let root = self.pid();
        let mut pids = vec![root];
        if let Ok(dir) = fs::read_dir("/proc") {
            for entry in dir.flatten() {
                let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
                    continue;
                };
                if let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) {
                    if stat_field(&stat, 4) == Some(u64::from(root)) {
                        pids.push(pid);
                    }
                }
            }
        }
        pids
    }

    /// Stops the server: SIGTERM, then SIGKILL after `grace`; reaps it.
    pub fn stop(&mut self, grace: Duration) {
        stop_child(&mut self.child, grace);
    }
}

/// SIGTERM to our own child, then SIGKILL after `grace`; reaps it.
fn stop_child(child: &mut Child, grace: Duration) {
    let pid = child.id() as libc::pid_t;
    if matches!(child.try_wait(), Ok(None)) {
        // SAFETY: kill on the pid of our own unreaped child.
        unsafe { libc::kill(pid, libc::SIGTERM) };
    }
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if !matches!(child.try_wait(), Ok(None)) {
            return;
        }
        thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(3));
    }
}

/// A `redis-server` of our own on a free loopback port, saving nothing
/// (or, for the durable-log comparison, its append-only file flushed before
/// every answer); stopped (SIGTERM, then SIGKILL) and reaped on drop.
pub struct Redis {
    pub port: u16,
    child: Child,
}

impl Redis {
    pub fn start(paths: &Paths) -> io::Result<Redis> {
        let dir = paths.work.join("redis");
        fs::create_dir_all(&dir)?;
        Redis::start_in(paths, &dir, &["--appendonly", "no"])
    }

    /// With `--appendonly yes --appendfsync always`, its files in `dir`
    /// (which the caller removes).
    pub fn start_aof(paths: &Paths, dir: &Path) -> io::Result<Redis> {
        Redis::start_in(
            paths,
            dir,
            &["--appendonly", "yes", "--appendfsync", "always"],
        )
    }

    fn start_in(paths: &Paths, dir: &Path, persistence: &[&str]) -> io::Result<Redis> {
        let mut last = io::Error::other("no attempt");
        // The free port can be taken between the probe and Redis's bind.
        for _ in 0..5 {
            let port = free_port()?;
            let child = Command::new(&paths.redis)
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--save", "", "--daemonize", "no"])
                .args(persistence)
                .arg("--dir")
                .arg(dir)
                .arg("--logfile")
                .arg(paths.work.join("redis.log"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .map_err(|e| io::Error::other(format!("{}: {e}", paths.redis.display())))?;
            let mut redis = Redis { port, child };
            match redis.wait_ready(Duration::from_secs(10)) {
                Ok(()) => return Ok(redis),
                Err(e) => last = e, // dropped: stopped and reaped
            }
        }
        Err(last)
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    fn wait_ready(&mut self, timeout: Duration) -> io::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Err(io::Error::other(format!(
                    "redis-server exited at startup: {status}"
                )));
            }
            if ping(self.port) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(io::Error::other(format!(
                    "redis-server not ready after {timeout:?}"
                )));
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, then SIGKILL after `grace`; reaped.
    pub fn stop(&mut self, grace: Duration) {
        stop_child(&mut self.child, grace);
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(3));
    }
}

/// Whether a Redis on `port` answers `PING` (inline command) with `+PONG`.
fn ping(port: u16) -> bool {
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(500)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
    if s.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 7];
    let mut n = 0;
    while n < buf.len() {
        match s.read(&mut buf[n..]) {
            Ok(0) | Err(_) => break,
            Ok(k) => n += k,
        }
    }
    buf[..n] == *b"+PONG\r\n"
}

fn healthz(addr: SocketAddr) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(500)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
    if s.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut buf = [0u8; 64];
    let mut n = 0;
    while n < 12 {
        match s.read(&mut buf[n..]) {
            Ok(0) | Err(_) => break,
            Ok(k) => n += k,
        }
    }
    buf[..n].starts_with(b"HTTP/1.1 200")
}

/// Field `n` (1-based, as in proc(5)) of a /proc/PID/stat line.
fn stat_field(stat: &str, n: usize) -> Option<u64> {
    // The command name (field 2) may hold spaces; count from its ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split(' ').nth(n - 3)?.parse().ok()
}

/// What /proc tells about a set of processes, summed.
#[derive(Debug, Clone, Copy, Default)]
pub struct Usage {
    pub rss_kib: u64,
    /// Proportional set size: shared pages split between the processes
    /// sharing them (nginx workers share nchan's memory).
    pub pss_kib: u64,
    pub threads: u64,
    pub fds: u64,
    pub maps: u64,
}

fn ticks_per_s() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

fn status_kib(status: &str, key: &str) -> u64 {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// CPU time only: cheap enough to read around every phase.
pub fn cpu_s(pids: &[u32]) -> f64 {
    let ticks: u64 = pids
        .iter()
        .filter_map(|pid| fs::read_to_string(format!("/proc/{pid}/stat")).ok())
        .map(|s| stat_field(&s, 14).unwrap_or(0) + stat_field(&s, 15).unwrap_or(0))
        .sum();
    ticks as f64 / ticks_per_s()
}

/// Everything, including memory maps and PSS (slower with 10k threads).
pub fn usage(pids: &[u32]) -> Usage {
    let mut u = Usage::default();
    for pid in pids {
        let base = Path::new("/proc").join(pid.to_string());
        if let Ok(status) = fs::read_to_string(base.join("status")) {
            u.rss_kib += status_kib(&status, "VmRSS:");
            u.threads += status_kib(&status, "Threads:");
        }
        if let Ok(rollup) = fs::read_to_string(base.join("smaps_rollup")) {
            u.pss_kib += status_kib(&rollup, "Pss:");
        }
        u.fds += fs::read_dir(base.join("fd")).map_or(0, |d| d.count() as u64);
        u.maps += fs::read_to_string(base.join("maps")).map_or(0, |m| m.lines().count() as u64);
    }
    u
}

/// Bytes queued in the kernel on the TCP connections between `server_port`
/// and the local ports `peers` (from /proc/net/tcp): (in the server's send
/// queues, in the peers' receive queues).
pub fn socket_queues(server_port: u16, peers: &std::collections::HashSet<u16>) -> (u64, u64) {
    let Ok(table) = fs::read_to_string("/proc/net/tcp") else {
        return (0, 0);
    };
    let port = |addr: &str| {
        addr.rsplit(':')
            .next()
            .and_then(|p| u16::from_str_radix(p, 16).ok())
    };
    let (mut sent, mut received) = (0, 0);
    for line in table.lines().skip(1) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (Some(local), Some(remote), Some(queues)) = (
            fields.get(1).and_then(|a| port(a)),
            fields.get(2).and_then(|a| port(a)),
            fields.get(4),
        ) else {
            continue;
        };
        let Some((tx, rx)) = queues.split_once(':') else {
            continue;
        };
        let (tx, rx) = (
            u64::from_str_radix(tx, 16).unwrap_or(0),
            u64::from_str_radix(rx, 16).unwrap_or(0),
        );
        if local == server_port && peers.contains(&remote) {
            sent += tx;
        } else if remote == server_port && peers.contains(&local) {
            received += rx;
        }
    }
    (sent, received)
}

/// Raises this process's soft open-file limit to its hard limit (children
/// inherit it); returns the new soft limit.
pub fn raise_open_files() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read and write a struct we own.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
            libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        }
    }
    lim.rlim_cur
}
