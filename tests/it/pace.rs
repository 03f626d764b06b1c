//! "At its own pace": every stream is a cursor over the log. Readers that
//! keep reading lose nothing however far their queue overflowed, clients
//! that take nothing are ended within two heartbeats, a subscriber pushed
//! off the history is ended and replays with a gap, no publish waits for a
//! client, the seam between log and queue neither loses nor repeats, and a
//! stream's memory stays what it was idle.

use std::collections::BTreeSet;
use std::io::Write;
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crate::harness::{json_field, poll, read_response, Hub, Sub};

/// Publishes `n` events of `size` bytes on one keep-alive connection;
/// returns their ids in the order they were answered.
pub fn flood(hub: &Hub, topic: &str, n: usize, size: usize, tag: &str) -> Vec<String> {
    let mut con = hub.connect();
    let payload = "p".repeat(size);
    (0..n)
        .map(|i| {
            let body = format!("{tag}{i} {payload}");
            // One write: a request in pieces waits on Nagle and delayed ACKs.
            let request = format!(
                "POST /events?topic={topic} HTTP/1.1\r\nHost: localhost\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
            con.write_all(request.as_bytes()).unwrap();
            let r = read_response(&mut con).unwrap();
            assert_eq!(r.status, 200, "{}", r.text());
            json_field(&r.text(), "id")
        })
        .collect()
}

/// A subscriber whose client never reads: its receive buffer is as small
/// as the kernel allows.
fn non_reader(hub: &Hub, target: &str) -> Sub {
    let mut sub = hub.subscribe(target, "");
    socket2::SockRef::from(&sub.stream)
        .set_recv_buffer_size(2048)
        .unwrap();
    sub.next_block();
    sub
}

fn id_key(id: &str) -> (u64, u64) {
    crate::harness::id_pair(id)
}

/// Every id in `got` is above the one before it, and together they are
/// exactly `want`.
fn exactly_once_in_order(who: &str, got: &[String], want: &BTreeSet<(u64, u64)>) {
    let keys: Vec<(u64, u64)> = got.iter().map(|id| id_key(id)).collect();
    for pair in keys.windows(2) {
        assert!(pair[0] < pair[1], "{who}: {:?} then {:?}", pair[0], pair[1]);
    }
    let got: BTreeSet<(u64, u64)> = keys.into_iter().collect();
    let missing: Vec<_> = want.difference(&got).take(5).collect();
    let extra: Vec<_> = got.difference(want).take(5).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "{who}: {} of {} ids; missing {missing:?}…, extra {extra:?}…",
        got.len(),
        want.len()
    );
}

/// Two readers that read in bursts with pauses beside twenty clients that
/// never read, with a queue of 8 and a history that holds the flood: the
/// readers get every event exactly once, in order, and are never
/// disconnected; the twenty are ended within two heartbeats of their
/// sockets filling up, counted and out of the gauge at that moment.
#[test]
fn readers_lose_nothing_and_non_readers_are_ended_in_two_heartbeats() {
    let hub = Hub::start(&["--client-queue", "8", "--heartbeat", "1"]);
    let stalled: Vec<Sub> = (0..20).map(|_| non_reader(&hub, "/events")).collect();
    const N: usize = 1000;
    let done = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let mut sub = hub.subscribe("/events", "");
            sub.next_block();
            let done = done.clone();
            thread::spawn(move || {
                let mut ids = Vec::new();
                while ids.len() < 2 * N {
                    ids.push(sub.next_event().id.expect("an id"));
                    // In bursts of 100, with a pause well under a heartbeat.
                    if ids.len() % 100 == 0 {
                        thread::sleep(Duration::from_millis(150));
                    }
                }
                while !done.load(Ordering::Relaxed) {
                    thread::sleep(Duration::from_millis(10));
                }
                (ids, sub)
            })
        })
        .collect();
    let published: Vec<String> = thread::scope(|s| {
        let hub = &hub;
        let handles: Vec<_> = ["a", "b"]
            .into_iter()
            // 8 MB each: more than a send buffer autotunes to (4 MiB).
            .map(|tag| s.spawn(move || flood(hub, "t", N, 4096, tag)))
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    let want: BTreeSet<(u64, u64)> = published.iter().map(|id| id_key(id)).collect();
    // The twenty took nothing for two heartbeats once their sockets filled.
    let started = Instant::now();
    assert!(
        poll(Duration::from_secs(8), || hub
            .metric("ssehub_subscribers_evicted_total")
            == 20),
        "evicted {}",
        hub.metric("ssehub_subscribers_evicted_total")
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(hub.metric("ssehub_subscribers"), 2, "the readers stay");
    done.store(true, Ordering::Relaxed);
    for (i, r) in readers.into_iter().enumerate() {
        let (ids, _sub) = r.join().expect("a reader got every event");
        exactly_once_in_order(&format!("reader {i}"), &ids, &want);
    }
    assert_eq!(hub.metric("ssehub_subscribers_evicted_total"), 20);
    drop(stalled);
}

/// A subscriber that falls behind the oldest retained event is ended; its
/// reconnect with its last id starts with `ssehub:gap` naming the oldest
/// available event, then every retained event in order.
#[test]
fn a_subscriber_pushed_off_the_history_is_ended_and_replays_a_gap() {
    let hub = Hub::start(&["--history", "50", "--client-queue", "4"]);
    let mut behind = non_reader(&hub, "/events");
    let ids = flood(&hub, "t", 400, 4096, "");
    assert!(
        poll(Duration::from_secs(5), || hub
            .metric("ssehub_subscribers_evicted_total")
            == 1),
        "not ended"
    );
    assert_eq!(hub.metric("ssehub_subscribers"), 0);
    socket2::SockRef::from(&behind.stream)
        .set_recv_buffer_size(1 << 20)
        .unwrap();
    let mut last = None;
    while let Ok(ev) = behind.try_next_event() {
        last = ev.id.or(last);
    }
    let last = last.expect("it had some events before it fell behind");
    let at = ids.iter().position(|id| *id == last).unwrap();
    assert!(at < 350, "it had {at} of 400: not behind the history");
    let mut again = hub.subscribe("/events", &format!("Last-Event-ID: {last}\r\n"));
    again.next_block();
    let gap = again.next_event();
    assert_eq!(gap.event.as_deref(), Some("ssehub:gap"), "{}", gap.raw);
    assert_eq!(
        gap.data,
        format!(
            "{{\"last_event_id\":\"{last}\",\"oldest_available\":\"{}\"}}",
            ids[350]
        )
    );
    for want in &ids[350..] {
        assert_eq!(again.next_event().id.as_ref(), Some(want));
    }
}

/// The 99th percentile of `n` publish round trips on one connection.
fn publish_p99(hub: &Hub, n: usize) -> Duration {
    let mut con = hub.connect();
    let body = "x".repeat(1024);
    let mut times: Vec<Duration> = (0..n)
        .map(|_| {
            let started = Instant::now();
            let request = format!(
                "POST /events?topic=t HTTP/1.1\r\nHost: localhost\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
            con.write_all(request.as_bytes()).unwrap();
            assert_eq!(read_response(&mut con).unwrap().status, 200);
            started.elapsed()
        })
        .collect();
    times.sort();
    times[n * 99 / 100]
}

/// Twenty subscribers whose clients never read slow no publish down: the
/// publish p99 beside them, their queues long full, against the p99 with
/// none, in one run.
#[test]
fn a_publish_is_not_slower_for_clients_that_do_not_read() {
    let hub = Hub::start(&["--client-queue", "8"]);
    let alone = publish_p99(&hub, 600);
    let stalled: Vec<Sub> = (0..20).map(|_| non_reader(&hub, "/events")).collect();
    // Fill their sockets and queues first.
    flood(&hub, "t", 300, 4096, "");
    let beside = publish_p99(&hub, 600);
    eprintln!("publish p99 alone {alone:?}, beside 20 non-readers {beside:?}");
    assert!(
        beside <= alone * 3 + Duration::from_millis(5),
        "p99 {beside:?} beside non-readers, {alone:?} alone"
    );
    drop(stalled);
}

/// Twenty subscribers that reconnect in a loop, each with its last id,
/// while two publishers send 2,000 events each and the queues overflow on
/// purpose: across its connections every subscriber sees every id exactly
/// once, in order. `hubs` are where the publishers publish and where the
/// subscribers connect, in turn.
pub fn the_seam_loses_and_repeats_nothing(hubs: &[&Hub]) {
    const N: usize = 2000;
    let stop = Arc::new(AtomicBool::new(false));
    let seen: Vec<Arc<Mutex<Vec<String>>>> =
        (0..20).map(|_| Arc::new(Mutex::new(Vec::new()))).collect();
    // Each subscriber's connections, for a failure message: the hub, the
    // last id it gave, and the ids it got there.
    type Connections = Vec<(usize, Option<String>, Vec<String>)>;
    let connections: Vec<Arc<Mutex<Connections>>> =
        (0..20).map(|_| Arc::new(Mutex::new(Vec::new()))).collect();
    // Every subscriber is registered before the first publish.
    let ready = std::sync::Barrier::new(seen.len() + 1);
    let published: Vec<String> = thread::scope(|s| {
        let ready = &ready;
        let subscribers: Vec<_> = seen
            .iter()
            .enumerate()
            .map(|(i, seen)| {
                let stop = stop.clone();
                let connections = connections[i].clone();
                s.spawn(move || {
                    let mut round = i;
                    let mut last: Option<String> = None;
                    loop {
                        let hub = hubs[round % hubs.len()];
                        connections.lock().unwrap().push((
                            round % hubs.len(),
                            last.clone(),
                            Vec::new(),
                        ));
                        let header = last
                            .as_ref()
                            .map_or(String::new(), |id| format!("Last-Event-ID: {id}\r\n"));
                        let mut sub = hub.subscribe("/events", &header);
                        sub.next_block();
                        if round == i {
                            ready.wait();
                        }
                        round += 1;
                        // A few events per connection, more as the run goes.
                        for _ in 0..(7 + round % 50) {
                            // Without an id yet, a reconnect would be a new
                            // subscriber, owed only what comes after it: a
                            // read that timed out (a loaded machine) reads
                            // on; a stream the hub ended is reconnected.
                            let next = loop {
                                match sub.try_next_event() {
                                    Err(e)
                                        if last.is_none()
                                            && !stop.load(Ordering::Relaxed)
                                            && matches!(
                                                e.kind(),
                                                std::io::ErrorKind::WouldBlock
                                                    | std::io::ErrorKind::TimedOut
                                            ) =>
                                    {
                                        continue
                                    }
                                    other => break other,
                                }
                            };
                            let Ok(ev) = next else { break };
                            assert_ne!(ev.event.as_deref(), Some("ssehub:gap"), "{}", ev.raw);
                            let id = ev.id.expect("an id");
                            seen.lock().unwrap().push(id.clone());
                            if let Some(c) = connections.lock().unwrap().last_mut() {
                                c.2.push(id.clone());
                            }
                            last = Some(id);
                            if stop.load(Ordering::Relaxed) {
                                break;
                            }
                        }
                        sub.close();
                        if stop.load(Ordering::Relaxed) {
                            return last;
                        }
                    }
                })
            })
            .collect();
        ready.wait();
        let publishers: Vec<_> = ["a", "b"]
            .iter()
            .enumerate()
            .map(|(i, tag)| {
                let hub = hubs[i % hubs.len()];
                s.spawn(move || flood(hub, "t", N, 64, tag))
            })
            .collect();
        let published: Vec<String> = publishers
            .into_iter()
            .flat_map(|p| p.join().unwrap())
            .collect();
        let newest = published
            .iter()
            .max_by_key(|id| id_key(id))
            .unwrap()
            .clone();
        // Every subscriber reads on until it has the newest.
        let deadline = Instant::now() + Duration::from_secs(60);
        while seen
            .iter()
            .any(|s| s.lock().unwrap().last() != Some(&newest))
        {
            assert!(Instant::now() < deadline, "subscribers never caught up");
            thread::sleep(Duration::from_millis(20));
        }
        stop.store(true, Ordering::Relaxed);
        // Wake any that wait for an event.
        for hub in hubs {
            hub.publish("other", "wake");
        }
        for s in subscribers {
            s.join().unwrap();
        }
        published
    });
    let want: BTreeSet<(u64, u64)> = published.iter().map(|id| id_key(id)).collect();
    for (i, seen) in seen.iter().enumerate() {
        let got: Vec<String> = seen
            .lock()
            .unwrap()
            .iter()
            .filter(|id| want.contains(&id_key(id)))
            .cloned()
            .collect();
        let have: BTreeSet<(u64, u64)> = got.iter().map(|id| id_key(id)).collect();
        let missing = want.difference(&have).next().copied();
        let context = missing.map_or(String::new(), |m| {
            let cons = connections[i].lock().unwrap();
            let at = cons
                .iter()
                .position(|c| c.2.last().is_some_and(|l| id_key(l) > m))
                .unwrap_or(cons.len().saturating_sub(1));
            cons[at.saturating_sub(2)..(at + 2).min(cons.len())]
                .iter()
                .map(|(hub, last, got)| {
                    format!(
                        "\n  hub {hub}, Last-Event-ID {last:?}: {} ids, {:?} .. {:?}",
                        got.len(),
                        got.first(),
                        got.last()
                    )
                })
                .collect::<String>()
        });
        exactly_once_in_order(&format!("subscriber {i}{context}\n"), &got, &want);
    }
}

#[test]
fn the_seam_between_log_and_queue_loses_and_repeats_nothing() {
    let hub = Hub::start(&["--client-queue", "4"]);
    the_seam_loses_and_repeats_nothing(&[&hub]);
}

/// RSS in KiB once it no longer changes much: the kernel and the allocator
/// settle after a burst.
fn settled_rss(hub: &Hub) -> u64 {
    let mut last = hub.usage().rss_kib;
    let mut steady = 0;
    for _ in 0..200 {
        thread::sleep(Duration::from_millis(25));
        let now = hub.usage().rss_kib;
        steady = if now.abs_diff(last) < 64 {
            steady + 1
        } else {
            0
        };
        if steady == 4 {
            return now;
        }
        last = now;
    }
    last
}

/// `n` streams that have read one small event each.
fn idle_streams(hub: &Hub, n: usize) -> Vec<Sub> {
    let subs: Vec<Sub> = (0..n)
        .map(|_| {
            let mut sub = hub.subscribe("/events?topic=m", "");
            sub.next_block();
            sub
        })
        .collect();
    assert!(poll(Duration::from_secs(5), || hub
        .metric("ssehub_subscribers")
        >= n as u64));
    subs
}

/// 500 streams, then a burst of 60 KB events that every one reads: the
/// memory per stream afterwards is within 1.5× of what it was idle.
#[test]
fn memory_per_stream_after_a_burst_is_what_it_was_idle() {
    // Retention small enough that the burst itself is not what we weigh;
    // heartbeats far enough apart that no stream is given up on while the
    // readers take their turns.
    let hub = Hub::start(&["--history-bytes", "1000000", "--heartbeat", "600"]);
    let base = settled_rss(&hub);
    let mut subs = idle_streams(&hub, 500);
    hub.publish("m", "warm");
    for sub in &mut subs {
        sub.next_event();
    }
    let idle = settled_rss(&hub) - base;
    let data = "b".repeat(60_000);
    thread::scope(|s| {
        let publisher = s.spawn(|| {
            for _ in 0..20 {
                hub.publish("m", &data);
            }
        });
        for chunk in subs.chunks_mut(125) {
            s.spawn(move || {
                for sub in chunk {
                    for _ in 0..20 {
                        assert_eq!(sub.next_event().data.len(), 60_000);
                    }
                }
            });
        }
        publisher.join().unwrap();
    });
    let after = settled_rss(&hub) - base;
    eprintln!(
        "500 streams: {} KiB each idle, {} KiB each after the burst",
        idle / 500,
        after / 500
    );
    assert!(
        after * 2 <= idle * 3,
        "{after} KiB after the burst against {idle} KiB idle, for 500 streams"
    );
}

/// With 200 events of `size` bytes in the log, 50 subscribers that replay
/// from the start and never read hold no more than idle ones do, within
/// 1.5×: what their sockets take, not a copy of the replay.
pub fn replaying_non_readers_hold_a_page_each(hub: &Hub, size: usize) {
    let data = "r".repeat(size);
    let first = hub.publish("m", &data);
    for _ in 1..200 {
        hub.publish("m", &data);
    }
    let base = settled_rss(hub);
    let _idle = idle_streams(hub, 50);
    let idle = settled_rss(hub) - base;
    let replaying: Vec<TcpStream> = (0..50)
        .map(|_| {
            let mut s = hub.connect();
            socket2::SockRef::from(&s)
                .set_recv_buffer_size(2048)
                .unwrap();
            s.write_all(
                format!("GET /events?lastEventId={first} HTTP/1.1\r\nHost: localhost\r\n\r\n")
                    .as_bytes(),
            )
            .unwrap();
            s
        })
        .collect();
    assert!(poll(Duration::from_secs(5), || hub
        .metric("ssehub_subscribers")
        >= 100));
    // Every replay has written what its socket takes and waits once the
    // memory stops growing.
    let replay = settled_rss(hub) - base - idle;
    eprintln!(
        "50 streams: {} KiB each idle, {} KiB each replaying",
        idle / 50,
        replay / 50
    );
    assert!(
        replay * 2 <= idle * 3,
        "{replay} KiB for 50 replaying streams against {idle} KiB for 50 idle ones"
    );
    drop(replaying);
}

#[test]
fn replaying_non_readers_hold_a_page_each_in_memory() {
    let hub = Hub::start(&[]);
    // A memory log's frames are shared by every stream, whatever their size.
    replaying_non_readers_hold_a_page_each(&hub, 60_000);
}
