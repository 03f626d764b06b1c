//! The durable log (`--data DIR`): a crash loses nothing answered, restarts
//! replay exactly, torn and damaged files, a full disk, retention, and one
//! process per directory. The disk-full test mounts a small tmpfs: it needs
//! root; under `CI=true` it fails without, elsewhere it skips.

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crate::harness::{json_field, poll, read_response, unique, Hub, Response, Sub, READ_TIMEOUT};

/// A data directory under the system's temporary one, removed on drop.
struct DataDir(PathBuf);

impl DataDir {
    fn new(name: &str) -> DataDir {
        let path = std::env::temp_dir().join(format!(
            "ssehub-it-{name}-{}-{}",
            std::process::id(),
            unique()
        ));
        let _ = std::fs::remove_dir_all(&path);
        DataDir(path)
    }

    fn arg(&self) -> &str {
        self.0.to_str().expect("a UTF-8 temporary path")
    }

    /// The segment files, oldest first.
    fn files(&self) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(&self.0)
            .expect("the data directory")
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "log"))
            .collect();
        files.sort();
        files
    }

    /// The files with records in them (not the next one, made ahead).
    fn written_files(&self) -> Vec<PathBuf> {
        let mut files = self.files();
        files.retain(|p| std::fs::read(p).unwrap().iter().any(|b| *b != 0));
        files
    }

    fn bytes(&self) -> u64 {
        self.files()
            .iter()
            .map(|p| p.metadata().map_or(0, |m| m.len()))
            .sum()
    }
}

impl Drop for DataDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn start(dir: &DataDir, extra: &[&str]) -> Hub {
    let mut args = vec!["--data", dir.arg(), "--heartbeat", "1"];
    args.extend_from_slice(extra);
    Hub::start(&args)
}

/// Runs ssehub with `args` until it exits (killed after 10 s): its exit
/// code and stderr.
fn run_to_exit(args: &[&str]) -> (Option<i32>, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ssehub"))
        .args(["--bind", "127.0.0.1:0"])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start ssehub");
    let deadline = Instant::now() + Duration::from_secs(10);
    while child.try_wait().expect("try_wait").is_none() && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(10));
    }
    let _ = child.kill();
    let out = child.wait_with_output().expect("reap ssehub");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// One publish on a fresh connection, without panicking: the status and
/// body, or the error of a hub that went away.
fn try_publish(addr: SocketAddr, topic: &str, data: &str) -> std::io::Result<Response> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(READ_TIMEOUT))?;
    s.set_write_timeout(Some(READ_TIMEOUT))?;
    write!(
        s,
        "POST /events?topic={topic} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\
         Content-Length: {}\r\n\r\n{data}",
        data.len()
    )?;
    read_response(&mut s)
}

/// Everything the log holds, replayed after `0-0` (an unknown id, so a gap
/// first), up to a sentinel published now: (id, data) oldest first, the
/// sentinel's id last.
fn replay_all(hub: &Hub) -> (Vec<(String, String)>, String) {
    let mut sub = stream(hub, "/events", "Last-Event-ID: 0-0\r\n");
    let sentinel = hub.publish("sentinel", "the end");
    let gap = sub.next_event();
    assert_eq!(gap.event.as_deref(), Some("ssehub:gap"), "{}", sub.tail());
    let mut events = Vec::new();
    loop {
        let ev = sub.next_event();
        let id = ev.id.clone().unwrap_or_else(|| panic!("no id: {ev:?}"));
        if id == sentinel {
            return (events, sentinel);
        }
        events.push((id, ev.data));
    }
}

/// A subscription past its `retry:` line.
fn stream(hub: &Hub, target: &str, headers: &str) -> Sub {
    let mut sub = hub.subscribe(target, headers);
    let retry = sub.next_event();
    assert!(retry.retry.is_some(), "{}", sub.tail());
    sub
}

fn pair(id: &str) -> (u64, u64) {
    crate::harness::id_pair(id)
}

#[test]
fn a_kill_during_a_flood_loses_nothing_answered() {
    let dir = DataDir::new("kill");
    let mut hub = start(&dir, &["--fsync", "always"]);
    let addr = hub.addr;
    let stop = Arc::new(AtomicBool::new(false));
    // Each publisher sends p<i>-<n> for n = 0, 1, … and records what was
    // answered 200, until the hub is gone.
    let publishers: Vec<_> = (0..4)
        .map(|p| {
            let stop = stop.clone();
            thread::spawn(move || {
                let mut answered = Vec::new();
                let deadline = Instant::now() + Duration::from_secs(30);
                for n in 0..20_000 {
                    if stop.load(Ordering::Relaxed) || Instant::now() > deadline {
                        break;
                    }
                    match try_publish(addr, "flood", &format!("p{p}-{n}")) {
                        Ok(r) if r.status == 200 => answered.push(json_field(&r.text(), "id")),
                        Ok(r) => panic!("publish answered {}: {}", r.status, r.text()),
                        Err(_) => break,
                    }
                }
                answered
            })
        })
        .collect();
    assert!(poll(Duration::from_secs(20), || hub
        .metric("ssehub_events_published_total")
        >= 400));
    hub.signal(libc::SIGKILL);
    assert!(hub.wait_exit(Duration::from_secs(5)).is_some());
    stop.store(true, Ordering::Relaxed);
    let answered: Vec<Vec<String>> = publishers.into_iter().map(|p| p.join().unwrap()).collect();

    let hub = start(&dir, &[]);
    let (events, sentinel) = replay_all(&hub);
    let ids: Vec<(u64, u64)> = events.iter().map(|(id, _)| pair(id)).collect();
    assert!(
        ids.windows(2).all(|w| w[0] < w[1]),
        "not in order, or twice"
    );
    let newest = *ids.last().expect("events replayed");
    assert!(pair(&sentinel) > newest, "ids must continue above the last");
    for (p, answered) in answered.iter().enumerate() {
        // What the log holds of publisher p: p<p>-0, p<p>-1, … in order,
        // every answered one, and at most the one in flight at the kill.
        let held: Vec<&(String, String)> = events
            .iter()
            .filter(|(_, data)| data.starts_with(&format!("p{p}-")))
            .collect();
        for (n, (id, data)) in held.iter().enumerate() {
            assert_eq!(
                data,
                &format!("p{p}-{n}"),
                "a hole in publisher {p}'s events"
            );
            if let Some(answer) = answered.get(n) {
                assert_eq!(id, answer);
            }
        }
        assert!(
            held.len() == answered.len() || held.len() == answered.len() + 1,
            "publisher {p}: {} answered, {} in the log",
            answered.len(),
            held.len()
        );
    }
    assert_eq!(hub.metric("ssehub_history_events"), events.len() as u64 + 1);
}

#[test]
fn subscribers_reconnecting_after_a_restart_get_exactly_what_they_missed() {
    let dir = DataDir::new("restart");
    let mut hub = start(&dir, &[]);
    let before: Vec<String> = (0..10)
        .map(|i| hub.publish("t", &format!("a{i}")))
        .collect();
    // 50 subscribers, each having read a different number of the events.
    let mut seen: Vec<String> = Vec::new();
    let mut subs: Vec<Sub> = Vec::new();
    for i in 0..50 {
        let mut sub = stream(&hub, "/events?topic=t", "Last-Event-ID: 0-0\r\n");
        let gap = sub.next_event();
        assert_eq!(gap.event.as_deref(), Some("ssehub:gap"));
        let mut last = String::new();
        for _ in 0..=(i % 10) {
            last = sub.next_event().id.expect("an id");
        }
        seen.push(last);
        subs.push(sub);
    }
    hub.signal(libc::SIGTERM);
    assert!(hub.wait_exit(Duration::from_secs(5)).is_some());
    for sub in subs {
        sub.close();
    }

    let hub = start(&dir, &[]);
    assert_eq!(hub.metric("ssehub_history_events"), 10);
    let after: Vec<String> = (0..10)
        .map(|i| hub.publish("t", &format!("b{i}")))
        .collect();
    assert!(pair(&after[0]) > pair(&before[9]));
    for last in &seen {
        let mut sub = stream(
            &hub,
            "/events?topic=t",
            &format!("Last-Event-ID: {last}\r\n"),
        );
        let k = before.iter().position(|id| id == last).unwrap();
        for want in before[k + 1..].iter().chain(&after) {
            let ev = sub.next_event();
            assert_eq!(ev.id.as_ref(), Some(want), "after {last}: {}", sub.tail());
        }
        sub.close();
    }
}

#[test]
fn a_torn_tail_is_cut_off_with_a_warning() {
    let dir = DataDir::new("torn");
    let mut hub = start(&dir, &[]);
    let ids: Vec<String> = (0..5).map(|i| hub.publish("t", &format!("e{i}"))).collect();
    hub.signal(libc::SIGTERM);
    assert!(hub.wait_exit(Duration::from_secs(5)).is_some());
    // The end of the last record never reached the disk: zeros follow the
    // rest of it, as they follow the records in a file made ahead.
    let last = dir.written_files().pop().expect("a file");
    let bytes = std::fs::read(&last).unwrap();
    let end = bytes.iter().rposition(|b| *b != 0).expect("records") + 1;
    let file = std::fs::OpenOptions::new().write(true).open(&last).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&file, &[0; 3], end as u64 - 3).unwrap();

    let hub = start(&dir, &[]);
    assert!(hub.log().contains("cut off a write torn"), "{}", hub.log());
    let (events, sentinel) = replay_all(&hub);
    let got: Vec<&String> = events.iter().map(|(id, _)| id).collect();
    assert_eq!(got, ids[..4].iter().collect::<Vec<_>>());
    assert!(pair(&sentinel) > pair(&ids[3]));
}

#[test]
fn a_damaged_old_record_stops_the_start_naming_file_and_offset() {
    let dir = DataDir::new("damaged");
    let mut hub = start(&dir, &[]);
    let first = hub.publish("t", "the first event");
    for i in 0..5 {
        hub.publish("t", &format!("later {i}"));
    }
    hub.signal(libc::SIGTERM);
    assert!(hub.wait_exit(Duration::from_secs(5)).is_some());
    let file = dir.files().remove(0);
    let mut bytes = std::fs::read(&file).unwrap();
    let at = bytes
        .windows(5)
        .position(|w| w == b"first")
        .expect("the first event's data");
    bytes[at] ^= 0x01;
    std::fs::write(&file, &bytes).unwrap();

    let (code, stderr) = run_to_exit(&["--data", dir.arg()]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("damaged record in {} at offset 0", file.display())),
        "{stderr} (first event {first})"
    );
}

#[test]
fn a_second_process_on_the_directory_exits_1() {
    let dir = DataDir::new("in-use");
    let hub = start(&dir, &[]);
    let (code, stderr) = run_to_exit(&["--data", dir.arg()]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("is in use"), "{stderr}");
    hub.canary();
}

#[test]
fn retention_bounds_disk_use_and_replay_from_a_removed_id_is_a_gap() {
    let dir = DataDir::new("retention");
    let history_bytes = 64 * 1024;
    let hub = start(&dir, &["--history-bytes", "65536"]);
    let data = "r".repeat(1000);
    let ids: Vec<String> = (0..3 * history_bytes / 1000)
        .map(|_| hub.publish("t", &data))
        .collect();
    // A file rolls over at an eighth of --history-bytes; the files on disk,
    // at their full size and the next one made ahead included, take at
    // most --history-bytes and one file.
    let used = dir.bytes();
    assert!(
        (history_bytes as u64 * 6 / 8..=history_bytes as u64 * 9 / 8).contains(&used),
        "{used} bytes on disk"
    );
    let retained = hub.metric("ssehub_history_events") as usize;
    let oldest = &ids[ids.len() - retained];
    let mut sub = stream(&hub, "/events", &format!("Last-Event-ID: {}\r\n", ids[0]));
    let gap = sub.next_event();
    assert_eq!(gap.event.as_deref(), Some("ssehub:gap"));
    assert_eq!(json_field(&gap.data, "oldest_available"), *oldest);
    for want in &ids[ids.len() - retained..] {
        assert_eq!(sub.next_event().id.as_ref(), Some(want));
    }
}

/// A tmpfs of a few MiB mounted for one test, unmounted on drop.
struct SmallDisk(PathBuf);

impl SmallDisk {
    fn mount(bytes: u64) -> Option<SmallDisk> {
        let path = std::env::temp_dir().join(format!("ssehub-full-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&path);
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs"])
            .arg(&path)
            .output();
        let why = match out {
            Ok(out) if out.status.success() => return Some(SmallDisk(path)),
            Ok(out) => String::from_utf8_lossy(&out.stderr).trim().to_string(),
            Err(e) => e.to_string(),
        };
        let _ = std::fs::remove_dir(&path);
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("cannot mount a small tmpfs under CI: {why}");
        }
        let _ = writeln!(std::io::stderr(), "skipped: no small tmpfs ({why})");
        None
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
        let _ = std::fs::remove_dir(&self.0);
    }
}

fn fill(path: &Path, bytes: usize) {
    std::fs::write(path, vec![0u8; bytes]).expect("write the filler");
}

#[test]
fn a_full_disk_answers_503_and_publishing_recovers_when_space_is_freed() {
    let Some(disk) = SmallDisk::mount(2 << 20) else {
        return;
    };
    let dir = DataDir(disk.0.join("data"));
    let filler = disk.0.join("filler");
    fill(&filler, 1 << 20);
    let hub = start(&dir, &["--history-bytes", "8388608"]);
    let mut sub = stream(&hub, "/events?topic=t", "");
    let data = "f".repeat(16 * 1024);
    let mut answered = Vec::new();
    let refusal = loop {
        let r = try_publish(hub.addr, "t", &data).expect("an answer");
        if r.status != 200 {
            break r;
        }
        answered.push(json_field(&r.text(), "id"));
        assert!(answered.len() < 200, "the disk never filled up");
    };
    assert_eq!(refusal.status, 503, "{}", refusal.text());
    assert!(
        refusal.error().contains("cannot write"),
        "{}",
        refusal.text()
    );
    // The stream got every answered event, and stays open.
    for id in &answered {
        assert_eq!(sub.next_event().id.as_ref(), Some(id), "{}", sub.tail());
    }
    // Still full: still refused, and nothing half-written is served.
    let r = try_publish(hub.addr, "t", &data).unwrap();
    assert_eq!(r.status, 503);
    assert_eq!(hub.metric("ssehub_disk_up"), 0);
    std::fs::remove_file(&filler).unwrap();
    let again = hub.publish("t", &data);
    assert_eq!(hub.metric("ssehub_disk_up"), 1);
    assert_eq!(sub.next_event().id, Some(again.clone()), "{}", sub.tail());
    answered.push(again);
    let (events, _) = replay_all(&hub);
    let replayed: Vec<&String> = events.iter().map(|(id, _)| id).collect();
    assert_eq!(replayed, answered.iter().collect::<Vec<_>>());
    drop(hub);
    drop(dir);
}

/// Publishes on one kept-alive connection for `secs`: the latencies.
fn publish_for(addr: SocketAddr, secs: f64) -> Vec<Duration> {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
    s.set_nodelay(true).unwrap();
    let data = "x".repeat(200);
    let request = format!(
        "POST /events?topic=bench HTTP/1.1\r\nHost: localhost\r\nContent-Length: {}\r\n\r\n{data}",
        data.len()
    );
    let started = Instant::now();
    let mut lat = Vec::new();
    while started.elapsed().as_secs_f64() < secs && lat.len() < 1_000_000 {
        let t = Instant::now();
        s.write_all(request.as_bytes()).expect("send");
        let r = read_response(&mut s).expect("an answer");
        assert_eq!(r.status, 200, "{}", r.text());
        lat.push(t.elapsed());
    }
    lat
}

/// The durable publish rate over HTTP: `cargo test --release --test it
/// disk::measure_durable_publish_rate -- --ignored --nocapture`. ssehub
/// with `--data` (`--fsync always`), with Redis (`--appendonly yes
/// --appendfsync always`) and in memory, 1 and 8 publishers.
#[test]
#[ignore]
fn measure_durable_publish_rate() {
    let dir = DataDir::new("rate");
    let redis_dir = DataDir::new("redis-aof");
    std::fs::create_dir_all(&redis_dir.0).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut redis = Command::new("redis-server")
        .args([
            "--bind",
            "127.0.0.1",
            "--port",
            &port.to_string(),
            "--save",
            "",
        ])
        .args(["--appendonly", "yes", "--appendfsync", "always"])
        .arg("--dir")
        .arg(&redis_dir.0)
        .stdout(Stdio::null())
        .spawn()
        .expect("redis-server");
    assert!(poll(Duration::from_secs(10), || TcpStream::connect((
        "127.0.0.1",
        port
    ))
    .is_ok()));
    let url = format!("redis://127.0.0.1:{port}");
    for (name, args) in [
        ("--data, --fsync always", vec!["--data", dir.arg()]),
        (
            "--data, --fsync never",
            vec!["--data", dir.arg(), "--fsync", "never"],
        ),
        ("--redis, appendfsync always", vec!["--redis", url.as_str()]),
        ("in memory", vec![]),
    ] {
        let hub = Hub::start(&args);
        for publishers in [1, 8] {
            let addr = hub.addr;
            let started = Instant::now();
            let threads: Vec<_> = (0..publishers)
                .map(|_| thread::spawn(move || publish_for(addr, 3.0)))
                .collect();
            let mut lat: Vec<Duration> = threads
                .into_iter()
                .flat_map(|t| t.join().unwrap())
                .collect();
            let secs = started.elapsed().as_secs_f64();
            lat.sort();
            println!(
                "{name}, {publishers} publishers: {:.0} publishes/s, p50 {:.2} ms, p99 {:.2} ms",
                lat.len() as f64 / secs,
                lat[lat.len() / 2].as_secs_f64() * 1e3,
                lat[lat.len() * 99 / 100].as_secs_f64() * 1e3
            );
        }
    }
    let _ = redis.kill();
    let _ = redis.wait();
}

#[test]
fn an_ended_topic_stays_ended_after_a_restart() {
    let dir = DataDir::new("ended");
    let mut hub = start(&dir, &[]);
    let first = hub.publish("job", "1");
    let end = crate::topics::end_topic(&hub, "job", "done");
    hub.signal(libc::SIGTERM);
    assert!(hub.wait_exit(Duration::from_secs(5)).is_some());

    let hub = start(&dir, &[]);
    crate::topics::assert_204(&hub, "/events?topic=job", "");
    let r = hub.post("/events?topic=job", b"late", "");
    assert_eq!(r.status, 410, "{}", r.text());
    // The end replays from the files to a client that missed it.
    let mut sub = stream(
        &hub,
        "/events?topic=job",
        &format!("Last-Event-ID: {first}\r\n"),
    );
    let ev = sub.next_event();
    assert_eq!(
        (ev.id.as_deref(), ev.event.as_deref()),
        (Some(end.as_str()), Some("ssehub:closed"))
    );
    assert!(sub.ends_cleanly(Duration::from_secs(5)), "{}", sub.tail());
}
