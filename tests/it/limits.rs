//! `--client-queue`, `--max-subscribers` and the startup clamp.

use std::io::{Read, Write};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crate::cgroup::PidsCgroup;
use crate::harness::{poll, read_response, subscribe_many, Hub, Start, READ_TIMEOUT};

/// A subscriber that never reads is ended once it has taken no data for
/// two heartbeats (its thread waits in a write); a fast reader beside it
/// gets everything, and publishing never waits.
#[test]
fn a_stalled_subscriber_is_ended_and_others_are_not_slowed() {
    let hub = Arc::new(Hub::start(&["--heartbeat", "1"]));
    let mut slow = hub.subscribe("/events", "");
    socket2::SockRef::from(&slow.stream)
        .set_recv_buffer_size(4096)
        .unwrap();
    slow.next_block();
    let mut fast = hub.subscribe("/events", "");
    fast.next_block();
    let reader = thread::spawn(move || {
        let mut ids = Vec::new();
        while ids.len() < 2000 {
            ids.push(fast.next_event().data);
        }
        (ids, fast)
    });
    // 2,000 × 4 KiB: more than the socket buffers and the default
    // --client-queue of 1,024 can hide.
    let payload = "p".repeat(4096);
    let mut slowest = Duration::ZERO;
    for i in 0..2000 {
        let started = Instant::now();
        hub.publish("t", &format!("{i} {payload}"));
        slowest = slowest.max(started.elapsed());
    }
    let (got, _fast) = reader.join().unwrap();
    for (i, data) in got.iter().enumerate() {
        assert!(
            data.starts_with(&format!("{i} ")),
            "fast reader got {data:.20} at {i}"
        );
    }
    assert!(
        slowest < Duration::from_secs(1),
        "a publish took {slowest:?}"
    );
    // Counted and out of the gauge together, within two heartbeats of its
    // socket filling up (and a little scheduling).
    assert!(poll(Duration::from_secs(5), || hub
        .metric("ssehub_subscribers_evicted_total")
        == 1));
    assert_eq!(hub.metric("ssehub_subscribers"), 1);
    socket2::SockRef::from(&slow.stream)
        .set_recv_buffer_size(1 << 20)
        .unwrap();
    // What was written before reaches it in order, then the connection
    // ends: it reconnects with its last id and replays the rest.
    let mut n = 0;
    while let Ok(ev) = slow.try_next_event() {
        assert!(
            ev.data.starts_with(&format!("{n} ")),
            "slow reader out of order at {n}"
        );
        n += 1;
    }
    assert!(n < 2000, "the stalled subscriber was not cut off");
}

/// A subscriber that reads, but slowly, paces no one and loses nothing: a
/// burst reaches a prompt subscriber beside it at the publisher's pace, and
/// the slow one reads on from the log until it has every event, in order,
/// never disconnected.
#[test]
fn a_slow_reader_paces_no_one() {
    let hub = Hub::start(&["--client-queue", "64"]);
    a_slow_reader_paces_no_one_on(&hub, &hub);
}

const BURST: usize = 1000;

/// Publishes `BURST` events of 4 KiB on `publisher` while two subscribers
/// of `reader` take them: a prompt one as fast as it can, and a slow one
/// that never reads past half of what the prompt one has. If the slow one
/// paced the publisher, the prompt one could get no further than the slow
/// one's queue and socket buffers ahead of it (a few hundred events at most),
/// the slow one would wait for it, and the reads would time out; however fast
/// or slow the machine is. Once the prompt one has all, the slow one reads on
/// from the log; both must get every event exactly once, in order, and no
/// one is evicted.
pub fn a_slow_reader_paces_no_one_on(publisher: &Hub, reader: &Hub) {
    let in_order = |got: &[String]| {
        assert_eq!(got.len(), BURST);
        for (i, data) in got.iter().enumerate() {
            assert!(data.starts_with(&format!("{i} ")), "got {data:.20} at {i}");
        }
    };
    let mut slow = reader.subscribe("/events", "");
    slow.next_block();
    // Small enough that the stream's writes block, large enough for prompt
    // window updates (with 4 KiB the hub waits on its zero-window probes).
    socket2::SockRef::from(&slow.stream)
        .set_recv_buffer_size(64 * 1024)
        .unwrap();
    let mut prompt = reader.subscribe("/events", "");
    prompt.next_block();
    // How many events the prompt reader has, and a signal when it changes.
    let progress = Arc::new((Mutex::new(0usize), Condvar::new()));
    let slow_reading = thread::spawn({
        let progress = progress.clone();
        move || {
            let (had, changed) = &*progress;
            let mut got = Vec::new();
            while got.len() < BURST {
                let mut prompt_had = had.lock().unwrap();
                while *prompt_had < BURST && *prompt_had < 2 * (got.len() + 1) {
                    let (next, waited) = changed.wait_timeout(prompt_had, READ_TIMEOUT).unwrap();
                    assert!(
                        !waited.timed_out(),
                        "the prompt reader stopped at {} while the slow one had {}",
                        *next,
                        got.len()
                    );
                    prompt_had = next;
                }
                drop(prompt_had);
                got.push(slow.next_event().data);
            }
            got
        }
    });
    let prompt_reading = thread::spawn({
        let progress = progress.clone();
        move || {
            let (had, changed) = &*progress;
            let mut got = Vec::new();
            while got.len() < BURST {
                got.push(prompt.next_event().data);
                *had.lock().unwrap() = got.len();
                changed.notify_all();
            }
            got
        }
    });
    let payload = "p".repeat(4096);
    let mut con = publisher.connect();
    for i in 0..BURST {
        let body = format!("{i} {payload}");
        // One write: a request in pieces waits on Nagle and delayed ACKs.
        let request = format!(
            "POST /events?topic=t HTTP/1.1\r\nHost: localhost\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        con.write_all(request.as_bytes()).unwrap();
        assert_eq!(read_response(&mut con).unwrap().status, 200);
    }
    in_order(&prompt_reading.join().expect("the prompt reader got all"));
    in_order(&slow_reading.join().expect("the slow reader got all"));
    assert_eq!(reader.metric("ssehub_subscribers_evicted_total"), 0);
}

#[test]
fn max_subscribers_answers_503_with_retry_after() {
    let hub = Hub::start(&["--max-subscribers", "3", "--heartbeat", "1"]);
    let mut subs: Vec<_> = (0..3).map(|_| hub.subscribe("/events", "")).collect();
    let refused = hub.try_subscribe("/events", "");
    assert_eq!(refused.head.status, 503);
    assert_eq!(refused.head.header("retry-after"), Some("1"));
    assert_eq!(
        String::from_utf8_lossy(&refused.head.body),
        "too many subscribers\n"
    );
    subs.pop().unwrap().close();
    assert!(poll(Duration::from_secs(3), || hub
        .try_subscribe("/events", "")
        .head
        .status
        == 200));
    hub.canary_after_close(subs);
}

#[test]
fn max_subscribers_is_clamped_to_the_open_file_limit() {
    let hub = Hub::start_with(
        &["--max-subscribers", "10000"],
        Start {
            open_files: Some(256),
            ..Start::default()
        },
    );
    let max = hub.metric("ssehub_max_subscribers");
    assert!(max > 50 && max < 256, "clamped to {max}");
    assert!(
        hub.log()
            .contains(&format!("holding at most {max} streams")),
        "{}",
        hub.log()
    );
    assert!(hub.log().contains("open files"));
}

#[test]
fn the_soft_open_file_limit_is_raised_to_the_hard_limit() {
    let hub = Hub::start(&[]);
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", hub.pid())).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    let fields: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(fields[3], fields[4], "soft != hard: {line}");
    let mut b = [0u8; 1];
    let _ = hub.connect().read(&mut b);
}

/// A container or a systemd unit may allow the process fewer threads than
/// the machine has; each stream takes one.
#[test]
fn a_pids_cgroup_clamps_streams_to_the_threads_it_allows() {
    let Some(cgroup) = PidsCgroup::create(640) else {
        return;
    };
    let hub = Hub::start_with(
        &["--max-subscribers", "10000"],
        Start {
            cgroup_procs: Some(cgroup.procs()),
            ..Start::default()
        },
    );
    // 640, less the few threads of a hub at rest and 512 kept in reserve,
    // less the tenth of the connections left for publishers.
    let max = hub.metric("ssehub_max_subscribers") as usize;
    assert!(max > 50 && max < 128, "clamped to {max}");
    let log = hub.log();
    assert!(log.contains("machine's threads (open files"), "{log}");
    assert!(
        log.contains(&format!("holding at most {max} streams")),
        "{log}"
    );

    let (admitted, refused, closed) = subscribe_many(&hub, max + 30);
    assert_eq!((admitted.len(), refused, closed), (max, 30, 0));
    assert!(cgroup.current() < 640);
    assert_eq!(hub.post("/events", b"full", "").status, 200);
    drop(admitted);
    assert!(poll(Duration::from_secs(5), || hub
        .metric("ssehub_subscribers")
        == 0));
    hub.canary();
}

/// Threads can run out after startup (others in the cgroup take them): a
/// connection whose thread cannot be started is answered, not dropped.
#[test]
fn a_connection_whose_thread_cannot_start_is_answered_503() {
    let Some(cgroup) = PidsCgroup::create(2000) else {
        return;
    };
    let hub = Hub::start_with(
        &[],
        Start {
            cgroup_procs: Some(cgroup.procs()),
            ..Start::default()
        },
    );
    assert!(hub.metric("ssehub_max_subscribers") > 1000);
    // Room for 20 more threads (give or take the one that just answered
    // the metric, which may not have ended yet).
    cgroup.set_max(cgroup.current() + 20).unwrap();

    let (admitted, refused, closed) = subscribe_many(&hub, 60);
    assert_eq!(closed, 0, "closed unanswered");
    assert!(
        (10..=21).contains(&admitted.len()),
        "{} admitted",
        admitted.len()
    );
    assert_eq!(admitted.len() + refused, 60);
    // Logged, but not once per connection: a flood would flood the log.
    let lines = hub
        .log()
        .matches("could not start a connection thread")
        .count();
    assert!(
        (1..10).contains(&lines),
        "{lines} lines for {refused} failures"
    );

    cgroup.set_max(2000).unwrap();
    drop(admitted);
    assert!(poll(Duration::from_secs(5), || hub
        .metric("ssehub_subscribers")
        == 0));
    hub.canary();
    let (again, refused, _) = subscribe_many(&hub, 50);
    assert_eq!((again.len(), refused), (50, 0));
}
