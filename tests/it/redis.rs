//! Several hubs on one Redis (issue 7): a real `redis-server` of the test's
//! own on a free loopback port, two ssehub processes on it, and what their
//! clients receive. Under `CI=true` a missing `redis-server` fails the test.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use crate::harness::{id_pair, json_field, poll, unique, Event, Hub, Sub};
use crate::limits::a_slow_reader_paces_no_one_on;

/// A `redis-server` on loopback that saves nothing unless stopped with
/// `stop(true)`; killed and reaped on drop, its directory removed.
struct Redis {
    child: Option<Child>,
    port: u16,
    dir: PathBuf,
}

impl Redis {
    /// None when `redis-server` is not installed and this is not CI.
    fn start() -> Option<Redis> {
        if Command::new("redis-server")
            .arg("--version")
            .stdout(Stdio::null())
            .status()
            .is_err()
        {
            assert_ne!(
                std::env::var("CI").as_deref(),
                Ok("true"),
                "redis-server is missing (`make deps` installs it)"
            );
            eprintln!("skipped: redis-server is not installed (`make deps` installs it)");
            return None;
        }
        let dir = std::env::temp_dir().join(format!(
            "ssehub-test-redis-{}-{}",
            std::process::id(),
            unique()
        ));
        std::fs::create_dir_all(&dir).expect("redis directory");
        let mut redis = Redis {
            child: None,
            port: 0,
            dir,
        };
        // A free port can be taken between our probe and Redis's bind: try
        // a few.
        for _ in 0..5 {
            redis.port = TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("a free port")
                .port();
            if redis.spawn() {
                return Some(redis);
            }
        }
        panic!("redis-server did not start");
    }

    /// Starts the server on `self.port`; false if it exited (port taken).
    fn spawn(&mut self) -> bool {
        let port = self.port.to_string();
        let mut child = Command::new("redis-server")
            .args(["--port", &port, "--bind", "127.0.0.1", "--save", ""])
            .args(["--appendonly", "no", "--daemonize", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server");
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if child.try_wait().expect("try_wait").is_some() {
                return false;
            }
            if self.try_command(&["PING"]).as_deref() == Some("+PONG") {
                // The port may have been taken by another test's server
                // between our probe and our bind: that one answers too.
                let ours = format!("process_id:{}", child.id());
                if self
                    .bulk(&["INFO", "server"])
                    .lines()
                    .any(|l| l.trim() == ours)
                {
                    self.child = Some(child);
                    return true;
                }
                let _ = child.kill();
                let _ = child.wait();
                return false;
            }
            thread::sleep(Duration::from_millis(10));
        }
        let _ = child.kill();
        let _ = child.wait();
        false
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Sends one command and returns the first line of the reply.
    fn try_command(&self, args: &[&str]) -> Option<String> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        let mut req = format!("*{}\r\n", args.len());
        for a in args {
            req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
        }
        s.write_all(req.as_bytes()).ok()?;
        let mut reply = Vec::new();
        let mut byte = [0u8; 1];
        while !reply.ends_with(b"\r\n") {
            if s.read(&mut byte).ok()? == 0 {
                break;
            }
            reply.push(byte[0]);
        }
        Some(String::from_utf8_lossy(&reply).trim_end().to_string())
    }

    /// Sends one command whose reply is a bulk string, and returns it.
    fn bulk(&self, args: &[&str]) -> String {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).expect("connect to redis");
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut req = format!("*{}\r\n", args.len());
        for a in args {
            req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
        }
        s.write_all(req.as_bytes()).unwrap();
        let mut reply = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            if let Some(eol) = reply.windows(2).position(|w| w == b"\r\n") {
                let head = String::from_utf8_lossy(&reply[..eol]).into_owned();
                let len: usize = head
                    .strip_prefix('$')
                    .and_then(|n| n.parse().ok())
                    .expect(&head);
                if reply.len() >= eol + 2 + len {
                    return String::from_utf8_lossy(&reply[eol + 2..eol + 2 + len]).into_owned();
                }
            }
            let n = s.read(&mut buf).expect("redis replies");
            assert!(n > 0, "redis closed");
            reply.extend_from_slice(&buf[..n]);
        }
    }

    /// Sends `commands` in one write, so Redis runs them back to back, and
    /// waits until it has.
    fn pipeline(&self, commands: &[&[&str]]) {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).expect("connect to redis");
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut req = String::new();
        for args in commands.iter().chain([&["PING"][..]].iter()) {
            req.push_str(&format!("*{}\r\n", args.len()));
            for a in *args {
                req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
            }
        }
        s.write_all(req.as_bytes()).unwrap();
        let mut reply = Vec::new();
        let mut buf = [0u8; 512];
        while !reply.ends_with(b"+PONG\r\n") {
            let n = s.read(&mut buf).expect("redis replies");
            assert!(n > 0, "redis closed: {}", String::from_utf8_lossy(&reply));
            reply.extend_from_slice(&buf[..n]);
        }
    }

    /// Stops the server; with `save` it writes its data first, and `restart`
    /// loads it back.
    fn stop(&mut self, save: bool) {
        let mut child = self.child.take().expect("redis running");
        if save {
            self.try_command(&["SHUTDOWN", "SAVE"]);
        } else {
            let _ = child.kill();
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while child.try_wait().expect("try_wait").is_none() {
            assert!(Instant::now() < deadline, "redis-server did not stop");
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Starts the server again on the same port.
    fn restart(&mut self) {
        assert!(
            self.spawn(),
            "redis-server did not restart on {}",
            self.port
        );
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn hub_on(redis: &Redis) -> Hub {
    Hub::start(&["--redis", &redis.url(), "--heartbeat", "1"])
}

/// Opens a stream and reads its `retry:` line: it is registered.
fn subscribe(hub: &Hub, target: &str, headers: &str) -> Sub {
    let mut sub = hub.subscribe(target, headers);
    assert!(sub.next_event().retry.is_some(), "retry line first");
    sub
}

/// The ids of the next `n` events (heartbeats skipped).
fn next_ids(sub: &mut Sub, n: usize) -> Vec<String> {
    (0..n)
        .map(|_| sub.next_event().id.expect("an id"))
        .collect()
}

fn increasing(ids: &[String]) -> bool {
    ids.windows(2).all(|w| id_pair(&w[0]) < id_pair(&w[1]))
}

/// Publishes, retrying 503s until `timeout`; the id once accepted.
fn publish_when_up(hub: &Hub, topic: &str, data: &str, timeout: Duration) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        let r = hub.post(&format!("/events?topic={topic}"), data.as_bytes(), "");
        match r.status {
            200 => return json_field(&r.text(), "id"),
            503 if Instant::now() < deadline => thread::sleep(Duration::from_millis(20)),
            _ => panic!("publish: {} {}", r.status, r.text()),
        }
    }
}

#[test]
fn a_subscriber_on_b_gets_what_a_publishes() {
    let Some(redis) = Redis::start() else { return };
    let (a, b) = (hub_on(&redis), hub_on(&redis));
    let mut on_a = subscribe(&a, "/events?topic=orders", "");
    let mut on_b = subscribe(&b, "/events?topic=orders", "");
    let r = a.post("/events?topic=orders&event=created", b"one\ntwo", "");
    assert_eq!(r.status, 200, "{}", r.text());
    let id = json_field(&r.text(), "id");
    let (ms, _) = id_pair(&id);
    assert!(ms > 1_600_000_000_000, "a Redis stream id: {id}");
    for sub in [&mut on_b, &mut on_a] {
        assert_eq!(
            sub.next_event().raw,
            format!("id: {id}\nevent: created\ndata: one\ndata: two\n\n")
        );
    }
    assert_eq!(b.metric("ssehub_redis_up"), 1);
    assert!(poll(Duration::from_secs(5), || b
        .metric("ssehub_history_events")
        == 1));
}

#[test]
fn publishers_on_two_processes_give_every_subscriber_one_order() {
    let Some(redis) = Redis::start() else { return };
    let (a, b) = (hub_on(&redis), hub_on(&redis));
    let mut subs: Vec<Sub> = [&a, &a, &b, &b]
        .iter()
        .map(|h| subscribe(h, "/events", ""))
        .collect();
    const N: usize = 40;
    let published = Mutex::new(Vec::new());
    thread::scope(|s| {
        for hub in [&a, &b] {
            let published = &published;
            s.spawn(move || {
                for i in 0..N {
                    let id = hub.publish("t", &format!("{}-{i}", hub.addr));
                    published.lock().unwrap().push(id);
                }
            });
        }
    });
    let mut published = published.into_inner().unwrap();
    published.sort_by_key(|id| id_pair(id));
    let seen: Vec<Vec<String>> = subs.iter_mut().map(|s| next_ids(s, 2 * N)).collect();
    for ids in &seen {
        assert_eq!(ids, &published, "a subscriber saw another order");
    }
    assert!(increasing(&seen[0]));
}

#[test]
fn replay_on_b_of_what_a_published() {
    let Some(redis) = Redis::start() else { return };
    let (a, b) = (hub_on(&redis), hub_on(&redis));
    let ids: Vec<String> = (0..6)
        .map(|i| a.publish(if i % 2 == 0 { "x" } else { "y" }, &format!("e{i}")))
        .collect();

    // Replay after ids[1], topic x only, then live without a seam.
    let mut sub = b.subscribe("/events?topic=x", &format!("Last-Event-ID: {}\r\n", ids[1]));
    sub.next_event();
    let replayed: Vec<Event> = (0..2).map(|_| sub.next_event()).collect();
    assert_eq!(
        replayed
            .iter()
            .map(|e| (e.id.clone().unwrap(), e.data.clone()))
            .collect::<Vec<_>>(),
        [(ids[2].clone(), "e2".into()), (ids[4].clone(), "e4".into())]
    );
    let live = a.publish("x", "e6");
    assert_eq!(sub.next_event().id.as_deref(), Some(live.as_str()));

    // The query parameter, and the newest id: nothing owed.
    let mut sub = b.subscribe(&format!("/events?lastEventId={live}"), "");
    sub.next_event();
    let next = a.publish("y", "e7");
    assert_eq!(sub.next_event().id, Some(next));

    // An id older than the stream: a gap, then everything retained.
    let mut sub = b.subscribe("/events", "Last-Event-ID: 1-0\r\n");
    sub.next_event();
    let gap = sub.next_event();
    assert_eq!(gap.event.as_deref(), Some("ssehub:gap"), "{}", gap.raw);
    assert_eq!(gap.id, None);
    assert_eq!(
        gap.data,
        format!(
            r#"{{"last_event_id":"1-0","oldest_available":"{}"}}"#,
            ids[0]
        )
    );
    assert_eq!(next_ids(&mut sub, 6), ids);
}

/// A hub that starts on an empty Redis stream stands at `0-0`: a replay
/// from there is no gap while Redis trimmed nothing, and one once it did.
#[test]
fn a_replay_from_the_start_is_a_gap_only_once_redis_trimmed() {
    let Some(redis) = Redis::start() else { return };
    let (a, b) = (hub_on(&redis), hub_on(&redis));
    let ids: Vec<String> = (0..3).map(|i| a.publish("t", &format!("e{i}"))).collect();
    let mut sub = subscribe(&b, "/events", "Last-Event-ID: 0-0\r\n");
    let got: Vec<Event> = (0..3).map(|_| sub.next_event()).collect();
    assert_eq!(
        got.iter()
            .map(|e| (
                e.event.clone(),
                e.id.clone().unwrap_or_default(),
                e.data.clone()
            ))
            .collect::<Vec<_>>(),
        (0..3)
            .map(|i| (None, ids[i].clone(), format!("e{i}")))
            .collect::<Vec<_>>(),
        "{}",
        sub.tail()
    );
    redis.pipeline(&[&["XTRIM", "ssehub:events", "MAXLEN", "1"]]);
    reconnects_to_a_gap(&b, "0-0", &ids[2]);
}

#[test]
fn the_replay_live_seam_holds_while_another_process_publishes() {
    let Some(redis) = Redis::start() else { return };
    let (a, b) = (hub_on(&redis), hub_on(&redis));
    const N: usize = 150;
    let (tx, rx) = std::sync::mpsc::channel();
    let a = &a;
    thread::scope(|s| {
        // Moved in, so the channel ends when the publisher is done.
        s.spawn(move || {
            for i in 0..N {
                tx.send(a.publish("t", &format!("e{i}"))).unwrap();
            }
        });
        let early: Vec<String> = (0..30).map(|_| rx.recv().unwrap()).collect();
        let mut sub = b.subscribe("/events", &format!("Last-Event-ID: {}\r\n", early[19]));
        sub.next_event();
        let rest: Vec<String> = rx.iter().collect();
        let expected: Vec<String> = early[20..].iter().chain(&rest).cloned().collect();
        assert_eq!(next_ids(&mut sub, expected.len()), expected);
    });
}

#[test]
fn a_restarted_process_replays_history_from_redis() {
    let Some(redis) = Redis::start() else { return };
    let a = hub_on(&redis);
    let ids: Vec<String> = (0..3).map(|i| a.publish("t", &format!("e{i}"))).collect();
    let args = a.args[2..].to_vec();
    let bind = a.addr;
    drop(a);
    let a = Hub::start_with(
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
        crate::harness::Start {
            bind: Some(bind),
            ..Default::default()
        },
    );
    let mut sub = a.subscribe("/events", &format!("Last-Event-ID: {}\r\n", ids[0]));
    sub.next_event();
    assert_eq!(next_ids(&mut sub, 2), ids[1..]);
    let next = a.publish("t", "after restart");
    assert!(id_pair(&next) > id_pair(&ids[2]), "{next} after {ids:?}");
    assert_eq!(sub.next_event().id, Some(next));
}

#[test]
fn a_redis_outage_refuses_publishing_keeps_streams_and_resumes() {
    let Some(mut redis) = Redis::start() else {
        return;
    };
    let (a, b) = (hub_on(&redis), hub_on(&redis));
    let mut on_a = subscribe(&a, "/events", "");
    let mut on_b = subscribe(&b, "/events", "");
    let before: Vec<String> = (0..2).map(|i| a.publish("t", &format!("e{i}"))).collect();
    assert_eq!(next_ids(&mut on_a, 2), before);
    assert_eq!(next_ids(&mut on_b, 2), before);

    redis.stop(true);
    for hub in [&a, &b] {
        assert!(
            poll(Duration::from_secs(5), || hub.metric("ssehub_redis_up")
                == 0),
            "ssehub_redis_up stayed 1"
        );
        let health = hub.get("/healthz");
        assert_eq!(
            (health.status, health.text().trim()),
            (503, "event log down")
        );
    }
    let refused = a.post("/events?topic=t", b"lost", "");
    assert_eq!(refused.status, 503);
    assert_eq!(refused.error(), "redis unavailable");
    assert_eq!(refused.header("retry-after"), Some("1"));
    // A replay needs Redis: the stream only says when to come back.
    let mut replay = b.subscribe("/events", &format!("Last-Event-ID: {}\r\n", before[0]));
    assert!(replay.next_event().retry.is_some());
    assert!(
        replay.ends_cleanly(Duration::from_secs(5)),
        "replay stream not ended"
    );
    // Open streams stay open: heartbeats keep coming.
    for sub in [&mut on_a, &mut on_b] {
        assert_eq!(sub.next_block(), ":\n\n");
        assert_eq!(sub.next_block(), ":\n\n");
    }
    let mut fresh = subscribe(&b, "/events", "");

    redis.restart();
    let after = publish_when_up(&b, "t", "back", Duration::from_secs(15));
    for sub in [&mut on_a, &mut on_b, &mut fresh] {
        let ev = sub.next_event();
        assert_eq!(
            (ev.id.as_deref(), ev.data.as_str()),
            (Some(after.as_str()), "back"),
            "nothing twice, nothing lost: {}",
            String::from_utf8_lossy(&sub.received)
        );
    }
    for hub in [&a, &b] {
        assert!(poll(Duration::from_secs(5), || hub.get("/healthz").status == 200));
        assert_eq!(hub.metric("ssehub_redis_up"), 1);
    }
    // What Redis kept through the restart still replays.
    let mut late = a.subscribe("/events", &format!("Last-Event-ID: {}\r\n", before[0]));
    late.next_event();
    assert_eq!(next_ids(&mut late, 2), [before[1].clone(), after]);
}

#[test]
fn followers_resume_after_their_connections_drop() {
    let Some(redis) = Redis::start() else { return };
    let (a, b) = (hub_on(&redis), hub_on(&redis));
    let mut subs: Vec<Sub> = [&a, &b]
        .iter()
        .map(|h| subscribe(h, "/events", ""))
        .collect();
    const N: usize = 60;
    let done = AtomicUsize::new(0);
    let accepted = Mutex::new(Vec::new());
    thread::scope(|s| {
        for hub in [&a, &b] {
            let (done, accepted) = (&done, &accepted);
            s.spawn(move || {
                for i in 0..N {
                    let id = publish_when_up(hub, "t", &format!("e{i}"), Duration::from_secs(15));
                    accepted.lock().unwrap().push(id);
                    done.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
        // Drop every client connection (followers and publishers) a few
        // times while both processes publish.
        for k in 1..=4 {
            assert!(poll(Duration::from_secs(20), || done
                .load(Ordering::Relaxed)
                >= k * N / 3));
            let killed = redis.try_command(&["CLIENT", "KILL", "TYPE", "normal"]);
            assert!(
                killed.as_deref().is_some_and(|r| r.starts_with(':')),
                "{killed:?}"
            );
        }
    });
    let mut accepted = accepted.into_inner().unwrap();
    accepted.sort_by_key(|id| id_pair(id));
    let newest = accepted.last().unwrap().clone();
    // A publish cut off after Redis took it was answered 503 and is still
    // delivered: compare everything up to the newest accepted id.
    let seen: Vec<Vec<String>> = subs
        .iter_mut()
        .map(|sub| {
            let mut ids = Vec::new();
            while ids.last() != Some(&newest) {
                ids.push(sub.next_event().id.expect("an id"));
            }
            ids
        })
        .collect();
    assert_eq!(seen[0], seen[1], "both processes delivered one order");
    assert!(increasing(&seen[0]));
    for id in &accepted {
        assert!(seen[0].contains(id), "accepted {id} never delivered");
    }
}

/// A client reconnecting with `last` learns of a gap before `kept`, the
/// oldest entry left, and then gets it.
fn reconnects_to_a_gap(hub: &Hub, last: &str, kept: &str) {
    let mut sub = subscribe(hub, "/events", &format!("Last-Event-ID: {last}\r\n"));
    let gap = sub.next_event();
    assert_eq!(
        (gap.event.as_deref(), gap.data),
        (
            Some("ssehub:gap"),
            format!(r#"{{"last_event_id":"{last}","oldest_available":"{kept}"}}"#)
        ),
        "{}\n{}",
        String::from_utf8_lossy(&sub.received),
        hub.log()
    );
    assert_eq!(sub.next_event().id.as_deref(), Some(kept));
}

#[test]
fn a_follower_that_missed_trimmed_entries_ends_its_streams() {
    let Some(redis) = Redis::start() else { return };
    let a = hub_on(&redis);
    let mut sub = subscribe(&a, "/events", "");
    let seen = a.publish("t", "seen");
    assert_eq!(sub.next_event().id.as_deref(), Some(seen.as_str()));
    // While the follower is cut off, two entries arrive and the stream is
    // trimmed to the newest: it can never read the first.
    let (ms, _) = id_pair(&seen);
    let (missed, kept) = (format!("{}-0", ms + 1), format!("{}-0", ms + 2));
    redis.pipeline(&[
        &["CLIENT", "KILL", "TYPE", "normal"],
        &[
            "XADD",
            "ssehub:events",
            &missed,
            "topic",
            "t",
            "data",
            "missed",
        ],
        &["XADD", "ssehub:events", &kept, "topic", "t", "data", "kept"],
        &["XTRIM", "ssehub:events", "MAXLEN", "1"],
    ]);
    assert!(
        sub.ends_cleanly(Duration::from_secs(10)),
        "stream not ended: {}",
        String::from_utf8_lossy(&sub.received)
    );
    assert!(
        a.wait_log("were trimmed", Duration::from_secs(5)),
        "{}",
        a.log()
    );
    // The client reconnects with its last id and learns of the gap.
    reconnects_to_a_gap(&a, &seen, &kept);
    // Once the follower hands on a new event, it has looked at the stream
    // again: the streams were ended once for the one gap, not again
    // (which would end a client that had just come back, as above).
    let mut live = subscribe(&a, "/events", "");
    let after = a.publish("t", "after");
    assert_eq!(live.next_event().id.as_deref(), Some(after.as_str()));
    assert_eq!(a.log().matches("were trimmed").count(), 1, "{}", a.log());
}

/// Not only across an outage: a process that stalls while the stream moves
/// on and is trimmed must not skip what it never read.
#[test]
fn a_follower_that_fell_behind_the_trimming_ends_its_streams() {
    let Some(redis) = Redis::start() else { return };
    let a = hub_on(&redis);
    let mut sub = subscribe(&a, "/events", "");
    let seen = a.publish("t", "seen");
    assert_eq!(sub.next_event().id.as_deref(), Some(seen.as_str()));
    // Stopped while its follower waits in XREAD: the next entry is handed
    // to it, then two more arrive and the stream is trimmed to the newest.
    assert!(poll(Duration::from_secs(10), || redis
        .bulk(&["INFO", "clients"])
        .contains("blocked_clients:1")));
    a.signal(libc::SIGSTOP);
    let (ms, _) = id_pair(&seen);
    let [handed, missed, kept] = [1, 2, 3].map(|n| format!("{}-0", ms + n));
    fn xadd(id: &str) -> [&str; 7] {
        ["XADD", "ssehub:events", id, "topic", "t", "data", "x"]
    }
    redis.pipeline(&[&xadd(&handed)]);
    redis.pipeline(&[
        &xadd(&missed),
        &xadd(&kept),
        &["XTRIM", "ssehub:events", "MAXLEN", "1"],
    ]);
    a.signal(libc::SIGCONT);

    // The stream ends, with or without the entry handed over first (ending
    // it may overtake the write): never with what came after the gap.
    let mut last = seen.clone();
    while let Ok(ev) = sub.try_next_event() {
        assert_eq!(
            ev.id.as_deref(),
            Some(handed.as_str()),
            "{ev:?}\n{}",
            a.log()
        );
        last = handed.clone();
    }
    assert!(
        sub.ends_cleanly(Duration::from_secs(10)),
        "stream not ended: {}",
        String::from_utf8_lossy(&sub.received)
    );
    // The follower sees the gap on its next look, or, when the stop broke
    // its blocking read (a socket read with a timeout returns EINTR after
    // SIGCONT), on the look of its reconnection: once either way.
    assert!(
        a.wait_log("were trimmed", Duration::from_secs(5)),
        "{}",
        a.log()
    );
    reconnects_to_a_gap(&a, &last, &kept);
    let mut live = subscribe(&a, "/events", "");
    let after = a.publish("t", "after");
    assert_eq!(live.next_event().id.as_deref(), Some(after.as_str()));
    assert_eq!(a.log().matches("were trimmed").count(), 1, "{}", a.log());
}

/// A subscriber that reads slowly holds back no one through Redis: a burst
/// published on one hub reaches a prompt subscriber, on the same hub or on
/// another, at the publisher's pace rather than the slow reader's. (Stream
/// threads that are merely short of CPU are waited for; `hub.rs` tests
/// that.)
#[test]
fn a_slow_reader_holds_back_no_one_through_redis() {
    let Some(redis) = Redis::start() else { return };
    let args = ["--redis", &redis.url(), "--client-queue", "64"];
    let a = Hub::start(&args);
    let b = Hub::start(&args);
    for reader in [&a, &b] {
        a_slow_reader_paces_no_one_on(&a, reader);
    }
}

#[test]
fn unreachable_redis_at_start_exits_1_naming_it() {
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port();
    let out = Command::new(env!("CARGO_BIN_EXE_ssehub"))
        .args(["--bind", "127.0.0.1:0", "--redis"])
        .arg(format!("redis://:pw-SECRET@127.0.0.1:{port}"))
        .stdin(Stdio::null())
        .output()
        .expect("run ssehub");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!("--redis: cannot use redis at 127.0.0.1:{port}")),
        "{err}"
    );
    assert!(
        !err.contains("listening on") && !err.contains("SECRET"),
        "{err}"
    );
}

/// The seam of `pace::the_seam_loses_and_repeats_nothing` across two
/// processes: publishers on both, subscribers moving between them with
/// their last id, queues overflowing on purpose.
#[test]
fn the_seam_loses_and_repeats_nothing_across_processes() {
    let Some(redis) = Redis::start() else { return };
    let args = ["--redis", &redis.url(), "--client-queue", "4"];
    let (a, b) = (Hub::start(&args), Hub::start(&args));
    crate::pace::the_seam_loses_and_repeats_nothing(&[&a, &b]);
}

/// With `--history 0` nothing is replayed, but a client that moves to a
/// process whose follower is behind the client's own last id must still
/// never get an event at or below it: the follower's backlog is skipped.
#[test]
fn a_client_ahead_of_a_lagging_follower_gets_nothing_it_had() {
    let Some(redis) = Redis::start() else { return };
    let args = ["--redis", &redis.url(), "--history", "0"];
    let (a, mut b) = (Hub::start(&args), Hub::start(&args));
    // B stops while A publishes a backlog its follower reads on resuming
    // (less than the stream keeps, or B would rightly end its streams).
    b.signal(libc::SIGSTOP);
    let ids = crate::pace::flood(&a, "t", 600, 64, "");
    let last = ids.last().unwrap().clone();
    // The client's request waits in B's listen queue, and is served while
    // B's follower works through the backlog.
    let mut s = b.connect();
    s.write_all(
        format!("GET /events HTTP/1.1\r\nHost: localhost\r\nLast-Event-ID: {last}\r\n\r\n")
            .as_bytes(),
    )
    .unwrap();
    b.signal(libc::SIGCONT);
    assert!(b.running());
    let mut sub = Sub::open(s);
    assert_eq!(sub.head.status, 200);
    assert!(sub.next_event().retry.is_some());
    let next = a.publish("t", "after");
    let ev = sub
        .try_next_event()
        .unwrap_or_else(|e| panic!("{e}: {}", b.log()));
    assert_eq!(
        (ev.event.as_deref(), ev.id.as_deref()),
        (None, Some(next.as_str())),
        "{}",
        ev.raw
    );
}

/// `pace::replaying_non_readers_hold_a_page_each` with the log on Redis. A
/// stream whose socket is full holds the one frame it could not write (its
/// own decoded copy unless another stream holds the same one), so the
/// events are small beside a stream's idle footprint; with 60 KB events
/// each such stream holds about 60 KB more than idle.
#[test]
fn replaying_non_readers_hold_a_page_each_on_redis() {
    let Some(redis) = Redis::start() else { return };
    let hub = Hub::start(&["--redis", &redis.url()]);
    crate::pace::replaying_non_readers_hold_a_page_each(&hub, 4_000);
}

#[test]
fn an_end_on_a_ends_the_streams_of_b_and_b_answers_204() {
    let Some(redis) = Redis::start() else { return };
    let (a, b) = (hub_on(&redis), hub_on(&redis));
    let mut on_b = subscribe(&b, "/events?topic=job", "");
    let mut other_on_b = subscribe(&b, "/events?topic=job&topic=other", "");
    let end = crate::topics::end_topic(&a, "job", "done");
    let want = format!("id: {end}\nevent: ssehub:closed\ndata: done\n\n");
    assert_eq!(on_b.next_event().raw, want);
    assert!(on_b.ends_cleanly(Duration::from_secs(5)), "{}", on_b.tail());
    assert_eq!(other_on_b.next_event().raw, want);
    // B learnt it from its follower: by now it refuses too.
    crate::topics::assert_204(&b, "/events?topic=job", "");
    let r = b.post("/events?topic=job", b"late", "");
    assert_eq!(r.status, 410, "{}", r.text());
    // A process started later finds the end in the stream.
    let c = hub_on(&redis);
    crate::topics::assert_204(&c, "/events?topic=job", "");
    let r = c.post("/events?topic=job", b"late", "");
    assert_eq!(r.status, 410, "{}", r.text());
}

/// Signed tokens through Redis: a stream on one process, from a token that
/// grants `users/1/*`, replays and receives live only the events of its
/// grants, whatever process they were published on.
#[test]
fn grants_filter_replay_and_live_events_across_processes() {
    use crate::tokens::{grants, hs256, SECRET};
    let Some(redis) = Redis::start() else { return };
    let args = ["--redis", &redis.url(), "--jwt-secret", SECRET];
    let a = Hub::start(&args);
    let b = Hub::start(&args);
    let admin = format!("Authorization: Bearer {}\r\n", hs256(&grants(&["*"], &[])));
    let narrow = format!(
        "Authorization: Bearer {}\r\n",
        hs256(&grants(&[], &["users/1/*"]))
    );
    let publish = |topic: &str, data: &str| {
        let r = a.post(&format!("/events?topic={topic}"), data.as_bytes(), &admin);
        assert_eq!(r.status, 200, "{r:?}");
    };
    for (topic, data) in [
        ("users/1/a", "mine 1"),
        ("users/2/a", "theirs"),
        ("secret", "secret"),
        ("users/1/b", "mine 2"),
    ] {
        publish(topic, data);
    }
    let mut sub = b.subscribe("/events?lastEventId=0-0", &narrow);
    sub.next_block();
    let mut data = || loop {
        let ev = sub.next_event();
        if ev.event.as_deref() != Some("ssehub:gap") {
            return ev.data;
        }
    };
    assert_eq!([data(), data()], ["mine 1", "mine 2"]);
    publish("users/2/b", "live, theirs");
    publish("users/1/c", "live, mine");
    assert_eq!(data(), "live, mine");
    // Another user's topic, asked for by name, is refused on either process.
    for hub in [&a, &b] {
        let refused = hub.try_subscribe("/events?topic=users/2/a", &narrow);
        assert_eq!(refused.head.status, 403);
    }
}
