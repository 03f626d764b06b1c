//! Headless Chromium driven over the DevTools protocol on
//! `--remote-debugging-pipe`: commands go to the browser's fd 3, answers and
//! events come back on its fd 4, each one JSON text ended by a NUL byte.
//! Std, `libc` and `serde_json` only: no runtime, no WebSocket, no HTTP client.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// Debian's `chromium` package, which `make deps` installs.
pub const CHROMIUM: &str = "/usr/bin/chromium";

/// A fresh profile, and nothing that reaches past loopback: this machine's
/// network refuses other connections, and a browser's background traffic
/// would only slow it down. Chromium runs as root here, hence no sandbox.
const FLAGS: &[&str] = &[
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
    "--mute-audio",
    "--remote-debugging-pipe",
];

/// How long one command may take before the test fails.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(20);

/// A headless Chromium with one tab. Dropping it kills the browser's process
/// group and removes its profile.
pub struct Page {
    child: Child,
    commands: File,
    messages: Receiver<Value>,
    session: Option<String>,
    next_id: u64,
    /// Every event the browser has sent so far, oldest first.
    events: Vec<Value>,
    /// Messages of the JavaScript dialogs (`alert`, …) the page opened; each
    /// was dismissed at once.
    pub dialogs: Vec<String>,
    stderr: Arc<Mutex<String>>,
    profile: PathBuf,
}

/// A pipe whose two ends close on exec.
fn pipe() -> (OwnedFd, OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills the array with two new descriptors that we own.
    unsafe {
        assert_eq!(libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC), 0, "pipe2");
        (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1]))
    }
}

impl Page {
    /// Starts Chromium and opens a blank tab. `None` when the browser is not
    /// installed, except under `CI=true`, where that fails the test.
    pub fn launch() -> Option<Page> {
        if !Path::new(CHROMIUM).exists() {
            if std::env::var("CI").as_deref() == Ok("true") {
                panic!("{CHROMIUM} is missing: CI must run the browser tests (`make deps` installs it)");
            }
            // Straight to fd 2: the test harness hides what `eprintln!` says.
            let _ = writeln!(
                io::stderr(),
                "browser test skipped: {CHROMIUM} is missing (`make deps` installs it)"
            );
            return None;
        }
        let profile = std::env::temp_dir().join(format!(
            "ssehub-chromium-{}-{}",
            std::process::id(),
            crate::harness::unique()
        ));
        let (browser_reads, commands) = pipe();
        let (answers, browser_writes) = pipe();
        let (r, w) = (browser_reads.as_raw_fd(), browser_writes.as_raw_fd());
        let mut cmd = Command::new(CHROMIUM);
        cmd.args(FLAGS)
            .arg(format!("--user-data-dir={}", profile.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .process_group(0);
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                // Lift both ends above 4 first, so that placing one on fd 3
                // or 4 cannot overwrite the other.
                let (r, w) = (
                    libc::fcntl(r, libc::F_DUPFD, 10),
                    libc::fcntl(w, libc::F_DUPFD, 10),
                );
                if r < 0 || w < 0 || libc::dup2(r, 3) < 0 || libc::dup2(w, 4) < 0 {
                    return Err(io::Error::last_os_error());
                }
                libc::close(r);
                libc::close(w);
                Ok(())
            });
        }
        let mut child = cmd.spawn().expect("start chromium");
        drop((browser_reads, browser_writes));

        let stderr = Arc::new(Mutex::new(String::new()));
        let mut pipe_err = child.stderr.take().expect("piped stderr");
        let log = stderr.clone();
        thread::spawn(move || {
            let mut buf = [0; 4096];
            while let Ok(n @ 1..) = pipe_err.read(&mut buf) {
                log.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        let (tx, messages) = mpsc::channel();
        thread::spawn(move || {
            let mut from_browser = BufReader::new(File::from(answers));
            loop {
                let mut msg = Vec::new();
                match from_browser.read_until(0, &mut msg) {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
                msg.pop();
                let value = serde_json::from_slice(&msg).expect("DevTools message is JSON");
                if tx.send(value).is_err() {
                    return;
                }
            }
        });

        let mut page = Page {
            child,
            commands: File::from(commands),
            messages,
            session: None,
            next_id: 0,
            events: Vec::new(),
            dialogs: Vec::new(),
            stderr,
            profile,
        };
        let target = page.call("Target.createTarget", json!({ "url": "about:blank" }));
        let attached = page.call(
            "Target.attachToTarget",
            json!({ "targetId": target["targetId"], "flatten": true }),
        );
        page.session = Some(attached["sessionId"].as_str().expect("sessionId").into());
        for domain in ["Page", "Runtime", "Log"] {
            page.call(&format!("{domain}.enable"), json!({}));
        }
        Some(page)
    }

    fn send(&mut self, method: &str, params: Value) -> u64 {
        self.next_id += 1;
        let mut msg = json!({ "id": self.next_id, "method": method, "params": params });
        if let Some(session) = &self.session {
            msg["sessionId"] = session.as_str().into();
        }
        let mut bytes = msg.to_string().into_bytes();
        bytes.push(0);
        self.commands
            .write_all(&bytes)
            .unwrap_or_else(|e| panic!("send {method} to chromium: {e}\n{}", self.stderr()));
        self.next_id
    }

    /// Runs one command; its result, or the protocol's error as text.
    pub fn command(&mut self, method: &str, params: Value) -> Result<Value, String> {
        let id = self.send(method, params);
        let deadline = Instant::now() + ANSWER_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let Ok(msg) = self.messages.recv_timeout(left) else {
                panic!(
                    "chromium gave no answer to {method} within {ANSWER_TIMEOUT:?}; stderr:\n{}",
                    self.stderr()
                );
            };
            if msg["id"] == id {
                return match msg.get("error") {
                    Some(e) => Err(format!("{method}: {e}")),
                    None => Ok(msg["result"].clone()),
                };
            }
            self.note(msg);
        }
    }

    /// Runs one command that must succeed.
    pub fn call(&mut self, method: &str, params: Value) -> Value {
        self.command(method, params)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// Keeps an event; dismisses a dialog, which would otherwise block the
    /// page, and every command after it, until answered.
    fn note(&mut self, msg: Value) {
        if msg["method"] == "Page.javascriptDialogOpening" {
            let text = msg["params"]["message"].as_str().unwrap_or_default();
            self.dialogs.push(text.into());
            self.send("Page.handleJavaScriptDialog", json!({ "accept": false }));
        }
        if msg.get("method").is_some() {
            self.events.push(msg);
        }
    }

    /// Takes in what the browser has sent and nobody has read yet.
    fn drain(&mut self) {
        while let Ok(msg) = self.messages.try_recv() {
            self.note(msg);
        }
    }

    /// Loads `url` and waits for its `load` event.
    pub fn goto(&mut self, url: &str) {
        let seen = self.events.len();
        let nav = self.call("Page.navigate", json!({ "url": url }));
        assert!(nav.get("errorText").is_none(), "navigate to {url}: {nav}");
        let loaded = |events: &[Value]| {
            events[seen..]
                .iter()
                .any(|e| e["method"] == "Page.loadEventFired")
        };
        let deadline = Instant::now() + ANSWER_TIMEOUT;
        while !loaded(&self.events) {
            let left = deadline.saturating_duration_since(Instant::now());
            let msg = self
                .messages
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("{url} did not load; stderr:\n{}", self.stderr()));
            self.note(msg);
        }
    }

    /// Evaluates a JavaScript expression (awaiting it if it is a promise)
    /// and returns its value as JSON, or the exception it threw.
    pub fn eval(&mut self, expression: &str) -> Result<Value, String> {
        let r = self.command(
            "Runtime.evaluate",
            json!({ "expression": expression, "returnByValue": true, "awaitPromise": true }),
        )?;
        match r.get("exceptionDetails") {
            Some(e) => Err(format!("{expression}: {}", e["exception"]["description"])),
            None => Ok(r["result"].get("value").cloned().unwrap_or(Value::Null)),
        }
    }

    /// Like `eval`, for expressions that must not throw.
    pub fn js(&mut self, expression: &str) -> Value {
        self.eval(expression).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Polls a JavaScript condition until it is `true` or `timeout` passes.
    pub fn wait_for(&mut self, condition: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.eval(condition) == Ok(Value::Bool(true)) {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Uncaught exceptions, `console.error` calls and the browser's own
    /// error entries (refused loads, CSP violations), in order.
    pub fn errors(&mut self) -> Vec<String> {
        self.drain();
        self.events
            .iter()
            .filter_map(|e| {
                let p = &e["params"];
                match e["method"].as_str()? {
                    "Runtime.exceptionThrown" => Some(p["exceptionDetails"].to_string()),
                    "Runtime.consoleAPICalled" if p["type"] == "error" => {
                        Some(p["args"].to_string())
                    }
                    "Log.entryAdded" if p["entry"]["level"] == "error" => {
                        Some(format!("{} ({})", p["entry"]["text"], p["entry"]["url"]))
                    }
                    _ => None,
                }
            })
            .collect()
    }

    /// Sets the viewport, as a phone (`mobile`) or a desktop window.
    pub fn viewport(&mut self, width: u32, height: u32, mobile: bool) {
        self.call(
            "Emulation.setDeviceMetricsOverride",
            json!({ "width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile }),
        );
    }

    /// The viewport as PNG bytes.
    pub fn screenshot(&mut self) -> Vec<u8> {
        use base64::Engine;
        let shot = self.call("Page.captureScreenshot", json!({ "format": "png" }));
        base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().expect("screenshot data"))
            .expect("screenshot is base64")
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }
}

impl Drop for Page {
    fn drop(&mut self) {
        // The whole group, renderers and helpers included; the leader is not
        // reaped yet, so its group id cannot have been reused.
        // SAFETY: kill on the process group this test started.
        unsafe {
            libc::kill(-(self.child.id() as i32), libc::SIGKILL);
        }
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}
