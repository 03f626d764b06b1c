//! A std-only harness: starts the real `ssehub` binary on port 0, speaks raw
//! HTTP/1.1 over `TcpStream`, and parses what comes back. Every socket has a
//! read timeout, so a bug fails a test in seconds instead of hanging it.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// How long any single read may block before the test fails.
pub const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// A running hub process; killed and reaped on drop.
pub struct Hub {
    child: Option<Child>,
    pub addr: SocketAddr,
    pub args: Vec<String>,
    log: Arc<Mutex<String>>,
    /// Set when the test reads stderr only once it says so.
    stderr_gate: Option<std::sync::mpsc::Sender<()>>,
}

/// Options for starting a hub beyond its arguments.
#[derive(Default)]
pub struct Start<'a> {
    pub env: Vec<(&'a str, &'a str)>,
    /// Soft and hard RLIMIT_NOFILE for the child.
    pub open_files: Option<u64>,
    /// Bind to this exact address instead of port 0.
    pub bind: Option<SocketAddr>,
    /// Start the child in this cgroup (its `cgroup.procs`, NUL-terminated).
    pub cgroup_procs: Option<std::ffi::CString>,
    /// Stop reading the child's stderr once it is listening, until
    /// `Hub::read_stderr_again`: its pipe fills.
    pub pause_stderr: bool,
}

impl Hub {
    pub fn start(args: &[&str]) -> Hub {
        Hub::start_with(args, Start::default())
    }

    pub fn start_with(args: &[&str], opts: Start) -> Hub {
        let bind = opts
            .bind
            .map_or("127.0.0.1:0".to_string(), |a| a.to_string());
        let mut all = vec!["--bind".to_string(), bind];
        all.extend(args.iter().map(|s| s.to_string()));
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_ssehub"));
        // Only what the test gives: no option from the caller's environment.
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("SSEHUB_") {
                cmd.env_remove(name);
            }
        }
        cmd.args(&all)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in &opts.env {
            cmd.env(k, v);
        }
        if let Some(n) = opts.open_files {
            use std::os::unix::process::CommandExt;
            // SAFETY: setrlimit is async-signal-safe and touches only our struct.
            unsafe {
                cmd.pre_exec(move || {
                    let lim = libc::rlimit {
                        rlim_cur: n,
                        rlim_max: n,
                    };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        if let Some(procs) = opts.cgroup_procs {
            use std::os::unix::process::CommandExt;
            // SAFETY: only async-signal-safe calls (getpid, open, write,
            // close) on memory owned by the closure; no allocation.
            unsafe {
                cmd.pre_exec(move || {
                    let mut digits = [0u8; 20];
                    let mut at = digits.len();
                    let mut pid = libc::getpid() as u32;
                    loop {
                        at -= 1;
                        digits[at] = b'0' + (pid % 10) as u8;
                        pid /= 10;
                        if pid == 0 {
                            break;
                        }
                    }
                    let fd = libc::open(procs.as_ptr(), libc::O_WRONLY);
                    if fd < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    let len = digits.len() - at;
                    let written = libc::write(fd, digits[at..].as_ptr().cast(), len);
                    libc::close(fd);
                    if written != len as isize {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let mut child = cmd.spawn().expect("start ssehub");
        let stderr = child.stderr.take().expect("piped stderr");
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let (gate, gated) = std::sync::mpsc::channel::<()>();
        let paused = opts.pause_stderr;
        {
            let log = log.clone();
            thread::spawn(move || {
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    if let Some(i) = line.find("listening on http://") {
                        let rest = &line[i + "listening on http://".len()..];
                        let addr = rest.split_whitespace().next().unwrap_or("").to_string();
                        let _ = tx.send(addr);
                        if paused {
                            let _ = gated.recv();
                        }
                    }
                    let mut log = log.lock().unwrap();
                    log.push_str(&line);
                    log.push('\n');
                }
            });
        }
        let addr = match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(addr) => addr.parse().expect("listening address"),
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "ssehub {all:?} did not report listening; log:\n{}",
                    log.lock().unwrap()
                );
            }
        };
        Hub {
            child: Some(child),
            addr,
            args: all,
            log,
            stderr_gate: paused.then_some(gate),
        }
    }

    /// Reads the child's stderr again (see `Start::pause_stderr`).
    pub fn read_stderr_again(&mut self) {
        if let Some(gate) = self.stderr_gate.take() {
            let _ = gate.send(());
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Waits until the log contains `needle`.
    pub fn wait_log(&self, needle: &str, timeout: Duration) -> bool {
        poll(timeout, || self.log().contains(needle))
    }

    pub fn connect(&self) -> TcpStream {
        let s = TcpStream::connect(self.addr).expect("connect to ssehub");
        s.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
        s.set_write_timeout(Some(READ_TIMEOUT)).unwrap();
        s
    }

    /// Sends raw bytes on a fresh connection and reads one response.
    pub fn raw(&self, bytes: &[u8]) -> Response {
        let mut s = self.connect();
        s.write_all(bytes).expect("send request");
        read_response(&mut s).expect("a response")
    }

    pub fn get(&self, target: &str) -> Response {
        self.raw(
            format!("GET {target} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
    }

    pub fn post(&self, target: &str, body: &[u8], headers: &str) -> Response {
        let mut req = format!(
            "POST {target} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Length: {}\r\n{headers}\r\n",
            body.len()
        )
        .into_bytes();
        req.extend_from_slice(body);
        self.raw(&req)
    }

    /// Publishes `data` and returns the id, asserting a 200.
    pub fn publish(&self, topic: &str, data: &str) -> String {
        let r = self.post(&format!("/events?topic={topic}"), data.as_bytes(), "");
        assert_eq!(r.status, 200, "publish failed: {}", r.text());
        json_field(&r.text(), "id")
    }

    /// Publishes `data` with extra header lines; the id, asserting a 200.
    pub fn publish_with(&self, topic: &str, data: &str, headers: &str) -> String {
        let r = self.post(&format!("/events?topic={topic}"), data.as_bytes(), headers);
        assert_eq!(r.status, 200, "publish failed: {}", r.text());
        json_field(&r.text(), "id")
    }

    /// Opens a stream and reads its head; panics unless it is a 200.
    pub fn subscribe(&self, target: &str, headers: &str) -> Sub {
        let sub = self.try_subscribe(target, headers);
        assert_eq!(
            sub.head.status, 200,
            "subscribe {target} failed: {:?}",
            sub.head
        );
        sub
    }

    pub fn try_subscribe(&self, target: &str, headers: &str) -> Sub {
        let mut s = self.connect();
        s.write_all(
            format!("GET {target} HTTP/1.1\r\nHost: localhost\r\n{headers}\r\n").as_bytes(),
        )
        .expect("send subscribe");
        Sub::open(s)
    }

    /// A metric's current value from `/metrics`.
    pub fn metric(&self, name: &str) -> u64 {
        let text = self.get("/metrics").text();
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no metric {name} in\n{text}"))
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: kill on our own child's pid.
        unsafe {
            libc::kill(self.pid() as i32, sig);
        }
    }

    /// True while the process has not exited.
    pub fn running(&mut self) -> bool {
        let child = self.child.as_mut().expect("not reaped yet");
        child.try_wait().expect("try_wait").is_none()
    }

    /// Waits for the process to exit within `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        let child = self.child.as_mut().expect("running");
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                self.child = None;
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(5));
        }
    }

    /// Waits for the process to exit; panics with its log if it has not
    /// within `timeout`.
    pub fn exits_within(&mut self, timeout: Duration) -> ExitStatus {
        match self.wait_exit(timeout) {
            Some(status) => status,
            None => panic!("still running after {timeout:?}; log:\n{}", self.log()),
        }
    }

    /// Threads, open fds, RSS in KiB and memory maps of the process.
    pub fn usage(&self) -> Usage {
        usage(self.pid())
    }

    /// Closes `subs`, waits until none is counted, then checks `canary`.
    pub fn canary_after_close(&self, subs: Vec<Sub>) {
        for s in subs {
            s.close();
        }
        assert!(poll(Duration::from_secs(5), || self
            .metric("ssehub_subscribers")
            == 0));
        self.canary();
    }

    /// A publish on a fresh topic reaches a fresh subscriber: the hub is
    /// alive and serving.
    pub fn canary(&self) {
        let topic = format!("canary{}", unique());
        let target = format!("/events?topic={topic}");
        // A stream out of the gauge may still hold its slot for a moment:
        // its thread ends once it notices.
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut sub = loop {
            let sub = self.try_subscribe(&target, "");
            if sub.head.status != 503 || Instant::now() > deadline {
                assert_eq!(sub.head.status, 200, "canary refused: {:?}", sub.head);
                break sub;
            }
            thread::sleep(Duration::from_millis(10));
        };
        sub.next_block();
        let id = self.publish(&topic, "still here");
        let ev = sub.next_event();
        assert_eq!(
            (ev.id.as_deref(), ev.data.as_str()),
            (Some(id.as_str()), "still here")
        );
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

pub fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// Subscribes `n` times, one connection after another: the streams that
/// were admitted, how many were refused with `503` and `Retry-After`, and
/// how many were closed unanswered.
pub fn subscribe_many(hub: &Hub, n: usize) -> (Vec<TcpStream>, usize, usize) {
    let (mut admitted, mut refused, mut closed) = (Vec::new(), 0, 0);
    for _ in 0..n {
        let mut s = hub.connect();
        s.write_all(b"GET /events HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .unwrap();
        match read_head(&mut s) {
            Ok(r) if r.status == 200 => admitted.push(s),
            Ok(r) if r.status == 503 => {
                assert_eq!(r.header("retry-after"), Some("1"));
                refused += 1;
            }
            Ok(r) => panic!("unexpected {}", r.status),
            Err(_) => closed += 1,
        }
    }
    (admitted, refused, closed)
}

/// Polls `cond` every 10 ms until it holds or `timeout` passes.
pub fn poll(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(10));
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Usage {
    pub threads: u64,
    pub fds: u64,
    pub rss_kib: u64,
    pub maps: u64,
}

pub fn usage(pid: u32) -> Usage {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    Usage {
        threads: field("Threads:"),
        rss_kib: field("VmRSS:"),
        fds: std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count() as u64),
        maps: std::fs::read_to_string(format!("/proc/{pid}/maps"))
            .map_or(0, |m| m.lines().count() as u64),
    }
}

/// A plain HTTP response.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub reason: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The `error` field of a JSON error body.
    pub fn error(&self) -> String {
        assert_eq!(
            self.header("content-type"),
            Some("application/json"),
            "{self:?}"
        );
        json_field(&self.text(), "error")
    }
}

/// The string or number value of a top-level field of a flat JSON object.
pub fn json_field(json: &str, field: &str) -> String {
    let key = format!("\"{field}\":");
    let start = json
        .find(&key)
        .unwrap_or_else(|| panic!("no {field} in {json}"))
        + key.len();
    let rest = json[start..].trim_start();
    if let Some(s) = rest.strip_prefix('"') {
        let mut out = String::new();
        let mut chars = s.chars();
        while let Some(c) = chars.next() {
            match c {
                '"' => break,
                '\\' => out.push(chars.next().unwrap()),
                c => out.push(c),
            }
        }
        out
    } else {
        rest.chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
            .collect()
    }
}

/// `read`, retried when a signal interrupts it.
pub fn read_some(s: &mut TcpStream, buf: &mut [u8]) -> std::io::Result<usize> {
    loop {
        match s.read(buf) {
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

/// Reads the head (status line and fields) of a response.
pub fn read_head(s: &mut TcpStream) -> std::io::Result<Response> {
    let mut raw = Vec::new();
    let mut byte = [0u8; 1];
    while !raw.ends_with(b"\r\n\r\n") {
        if read_some(s, &mut byte)? == 0 {
            return Err(std::io::Error::new(
                ErrorKind::UnexpectedEof,
                format!("EOF in head after {:?}", String::from_utf8_lossy(&raw)),
            ));
        }
        raw.push(byte[0]);
    }
    let text = String::from_utf8(raw).expect("ASCII head");
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap();
    let mut parts = status_line.splitn(3, ' ');
    let _version = parts.next();
    let status = parts.next().unwrap().parse().expect("status code");
    let reason = parts.next().unwrap_or("").to_string();
    let headers = lines
        .filter(|l| !l.is_empty())
        .map(|l| {
            let (k, v) = l.split_once(':').expect("header field");
            (k.to_string(), v.trim().to_string())
        })
        .collect();
    Ok(Response {
        status,
        reason,
        headers,
        body: Vec::new(),
    })
}

/// Reads one whole response (Content-Length, chunked, or to EOF).
pub fn read_response(s: &mut TcpStream) -> std::io::Result<Response> {
    let mut r = read_head(s)?;
    let status = r.status;
    if let Some(len) = r.header("content-length") {
        let mut body = vec![0; len.parse().expect("length")];
        s.read_exact(&mut body)?;
        r.body = body;
    } else if r.header("transfer-encoding").is_some() {
        let mut dec = Chunked::default();
        while let Some(bytes) = dec.next_chunk(s)? {
            r.body.extend(bytes);
        }
    } else if status != 204 && status != 100 {
        s.read_to_end(&mut r.body)?;
    }
    Ok(r)
}

/// Decodes an HTTP/1.1 chunked body one chunk at a time.
/// It buffers what it reads: use it only where nothing else reads the
/// socket afterwards (a stream, or a response on a closing connection).
#[derive(Default)]
pub struct Chunked {
    pub ended: bool,
    raw: Vec<u8>,
}

impl Chunked {
    /// Reads more raw bytes; an error at EOF.
    fn more(&mut self, s: &mut TcpStream) -> std::io::Result<()> {
        let mut b = [0u8; 65536];
        match read_some(s, &mut b)? {
            0 => Err(ErrorKind::UnexpectedEof.into()),
            n => {
                self.raw.extend_from_slice(&b[..n]);
                Ok(())
            }
        }
    }

    fn line(&mut self, s: &mut TcpStream) -> std::io::Result<String> {
        loop {
            if let Some(i) = self.raw.windows(2).position(|w| w == b"\r\n") {
                let line: Vec<u8> = self.raw.drain(..i + 2).take(i).collect();
                return Ok(String::from_utf8(line).expect("ASCII chunk line"));
            }
            self.more(s)?;
        }
    }

    /// The next chunk's data; None after the terminating zero chunk.
    pub fn next_chunk(&mut self, s: &mut TcpStream) -> std::io::Result<Option<Vec<u8>>> {
        if self.ended {
            return Ok(None);
        }
        // Nothing is consumed until the whole chunk is here: a read that
        // times out half-way leaves the reader where it was.
        let (line, size) = loop {
            if let Some(i) = self.raw.windows(2).position(|w| w == b"\r\n") {
                let size = std::str::from_utf8(&self.raw[..i])
                    .ok()
                    .and_then(|l| usize::from_str_radix(l, 16).ok())
                    .expect("chunk size");
                break (i + 2, size);
            }
            self.more(s)?;
        };
        if size == 0 {
            self.raw.drain(..line);
            assert_eq!(self.line(s)?, "", "no trailer expected");
            self.ended = true;
            return Ok(None);
        }
        while self.raw.len() < line + size + 2 {
            self.more(s)?;
        }
        let mut data: Vec<u8> = self.raw.drain(..line + size + 2).skip(line).collect();
        assert_eq!(&data[size..], b"\r\n", "chunk not followed by CRLF");
        data.truncate(size);
        Ok(Some(data))
    }
}

/// One parsed event-stream block.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Event {
    pub id: Option<String>,
    pub event: Option<String>,
    pub data: String,
    pub retry: Option<u64>,
    pub comment: bool,
    /// The block exactly as received, blank line included.
    pub raw: String,
}

/// A subscriber: the response head, then the event stream.
pub struct Sub {
    pub stream: TcpStream,
    pub head: Response,
    chunked: Option<Chunked>,
    buf: Vec<u8>,
    /// How far `buf` has been searched for a block end.
    searched: usize,
    /// The last `RECEIVED_KEPT` bytes received, for failure messages.
    pub received: Vec<u8>,
}

/// What a `Sub` keeps of what it received, for failure messages.
const RECEIVED_KEPT: usize = 64 * 1024;

impl Sub {
    pub fn open(mut stream: TcpStream) -> Sub {
        let mut head = read_head(&mut stream).expect("response head");
        let status = head.status;
        let chunked = head.header("transfer-encoding").map(|_| Chunked::default());
        if status != 200 {
            if let Some(len) = head.header("content-length") {
                let mut body = vec![0; len.parse().unwrap()];
                stream.read_exact(&mut body).expect("error body");
                head.body = body;
            }
        }
        Sub {
            stream,
            head,
            chunked,
            buf: Vec::new(),
            searched: 0,
            received: Vec::new(),
        }
    }

    /// A chunked stream whose head the caller has already read.
    pub fn open_after_head(stream: TcpStream) -> Sub {
        Sub {
            stream,
            head: Response {
                status: 200,
                reason: "OK".into(),
                headers: Vec::new(),
                body: Vec::new(),
            },
            chunked: Some(Chunked::default()),
            buf: Vec::new(),
            searched: 0,
            received: Vec::new(),
        }
    }

    fn fill(&mut self) -> std::io::Result<bool> {
        let data = match &mut self.chunked {
            Some(c) => match c.next_chunk(&mut self.stream)? {
                Some(d) => d,
                None => return Ok(false),
            },
            None => {
                let mut b = [0u8; 8192];
                let n = read_some(&mut self.stream, &mut b)?;
                if n == 0 {
                    return Ok(false);
                }
                b[..n].to_vec()
            }
        };
        self.received.extend_from_slice(&data);
        if self.received.len() > 2 * RECEIVED_KEPT {
            self.received.drain(..self.received.len() - RECEIVED_KEPT);
        }
        self.buf.extend(data);
        Ok(true)
    }

    /// The next raw block (up to and including its blank line), or an error
    /// at EOF / timeout.
    pub fn try_next_block(&mut self) -> std::io::Result<String> {
        loop {
            // Only what was not searched yet (and its last byte before).
            let from = self.searched.saturating_sub(1);
            if let Some(i) = self.buf[from..].windows(2).position(|w| w == b"\n\n") {
                let block: Vec<u8> = self.buf.drain(..from + i + 2).collect();
                self.searched = 0;
                return Ok(String::from_utf8(block).expect("UTF-8 stream"));
            }
            self.searched = self.buf.len();
            if !self.fill()? {
                return Err(std::io::Error::new(
                    ErrorKind::UnexpectedEof,
                    format!("stream ended; received {}", self.tail()),
                ));
            }
        }
    }

    pub fn next_block(&mut self) -> String {
        self.try_next_block()
            .unwrap_or_else(|e| panic!("no block: {e}; received so far {}", self.tail()))
    }

    /// The last bytes received, for failure messages.
    pub fn tail(&self) -> String {
        let from = self.received.len().saturating_sub(400);
        format!(
            "({} bytes) ...{:?}",
            self.received.len(),
            String::from_utf8_lossy(&self.received[from..])
        )
    }

    pub fn try_next_any(&mut self) -> std::io::Result<Event> {
        Ok(parse_block(&self.try_next_block()?))
    }

    /// The next block that is not a heartbeat comment.
    pub fn try_next_event(&mut self) -> std::io::Result<Event> {
        loop {
            let ev = self.try_next_any()?;
            if !ev.comment {
                return Ok(ev);
            }
        }
    }

    pub fn next_event(&mut self) -> Event {
        self.try_next_event()
            .unwrap_or_else(|e| panic!("no event: {e}"))
    }

    /// Reads to the end; true if the stream ended with the zero chunk (for
    /// chunked streams) and then EOF.
    pub fn ends_cleanly(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            // Within `timeout` in all, heartbeats or not.
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            self.stream.set_read_timeout(Some(left)).unwrap();
            match self.fill() {
                Ok(true) => continue,
                Ok(false) => break,
                Err(_) => return false,
            }
        }
        let zero_chunk = self.chunked.as_ref().is_none_or(|c| c.ended);
        let mut b = [0u8; 1];
        zero_chunk && matches!(self.stream.read(&mut b), Ok(0))
    }

    pub fn close(self) {
        let _ = self.stream.shutdown(Shutdown::Both);
    }
}

pub fn parse_block(block: &str) -> Event {
    let mut ev = Event {
        raw: block.to_string(),
        ..Event::default()
    };
    let mut data: Vec<&str> = Vec::new();
    let mut only_comments = true;
    for line in block.trim_end_matches('\n').split('\n') {
        if line.starts_with(':') {
            continue;
        }
        only_comments = false;
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "id" => ev.id = Some(value.to_string()),
            "event" => ev.event = Some(value.to_string()),
            "data" => data.push(value),
            "retry" => ev.retry = value.parse().ok(),
            _ => {}
        }
    }
    ev.comment = only_comments;
    ev.data = data.join("\n");
    ev
}

/// Parses `<ms>-<seq>`.
pub fn id_pair(id: &str) -> (u64, u64) {
    let (a, b) = id.split_once('-').expect("id form");
    (a.parse().unwrap(), b.parse().unwrap())
}
