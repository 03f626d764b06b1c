//! SPEC "Hostile input": malformed, slow, large and many requests. After
//! each, the process is alive, a canary publish reaches a live subscriber,
//! and the bad request published nothing.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use crate::harness::{poll, read_response, Hub, Start};

/// Reads one response and then expects the hub to close the connection.
fn answered_then_closed(s: &mut TcpStream) -> u16 {
    let r = read_response(s).expect("a response");
    let mut rest = Vec::new();
    match s.read_to_end(&mut rest) {
        Ok(_) => assert!(
            rest.is_empty(),
            "more after the response: {:?}",
            String::from_utf8_lossy(&rest)
        ),
        Err(e) => assert_eq!(e.kind(), ErrorKind::ConnectionReset, "{e}"),
    }
    r.status
}

fn send(hub: &Hub, raw: &[u8]) -> TcpStream {
    let mut s = hub.connect();
    s.write_all(raw).unwrap();
    s
}

/// The hub survived and published nothing.
fn unharmed(hub: &Hub, published_before: u64) {
    assert_eq!(
        hub.metric("ssehub_events_published_total"),
        published_before,
        "a bad request published"
    );
    hub.canary();
}

#[test]
fn hostile_content_lengths_on_every_route() {
    let hub = Hub::start(&[]);
    // The route comes first (404, 405), then the declared size against what
    // the route takes; a malformed length is 400 on every route.
    for (route, too_large) in [
        ("POST /events", 413),
        ("GET /events", 413),
        ("GET /nope", 404),
        ("GET /healthz", 413),
        ("PUT /", 405),
    ] {
        for (cl, status) in [
            ("100000000000000", too_large),
            ("4611686018427387904", too_large),
            ("18446744073709551616", too_large),
            ("99999999999999999999999999999999", too_large),
            ("-1", 400),
            ("0x10", 400),
            ("1e3", 400),
            ("12abc", 400),
            ("5\r\nContent-Length: 6", 400),
            ("5, 6", 400),
        ] {
            let mut s = send(
                &hub,
                format!("{route}?topic=x HTTP/1.1\r\nHost: localhost\r\nContent-Length: {cl}\r\n\r\nabc")
                    .as_bytes(),
            );
            let got = answered_then_closed(&mut s);
            assert_eq!(got, status, "{route} with Content-Length {cl:?}");
        }
    }
    unharmed(&hub, 0);
}

#[test]
fn ambiguous_framing_is_400_and_the_body_is_never_a_request() {
    let hub = Hub::start(&[]);
    let smuggled = "GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n";
    for framing in [
        "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n".to_string(),
        format!(
            "Transfer-Encoding: chunked\r\nContent-Length: {}\r\n",
            smuggled.len() + 5
        ),
        "Transfer-Encoding: gzip\r\n".to_string(),
        "Transfer-Encoding: chunked, identity\r\n".to_string(),
        "Transfer-Encoding: chunked\r\nTransfer-Encoding: gzip\r\n".to_string(),
        "Transfer-Encoding: \r\n".to_string(),
    ] {
        let mut s = send(
            &hub,
            format!("POST /events HTTP/1.1\r\nHost: localhost\r\n{framing}\r\n0\r\n\r\n{smuggled}")
                .as_bytes(),
        );
        assert_eq!(answered_then_closed(&mut s), 400, "{framing:?}");
    }
    // HTTP/1.0 has no chunked coding.
    let mut s = send(
        &hub,
        b"POST /events HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    );
    assert_eq!(answered_then_closed(&mut s), 400);
    unharmed(&hub, 0);
}

#[test]
fn malformed_chunked_bodies_are_refused() {
    let hub = Hub::start(&[]);
    for body in [
        "1ffffffffffffffff\r\nx\r\n0\r\n\r\n",
        "ffffffffffffffffff\r\nx\r\n0\r\n\r\n",
        "-1\r\nx\r\n0\r\n\r\n",
        "zz\r\nx\r\n0\r\n\r\n",
        "3\r\nabcdef\r\n0\r\n\r\n",
        "3\nabc\n0\n\n",
    ] {
        let mut s = send(
            &hub,
            format!("POST /events HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n{body}")
                .as_bytes(),
        );
        assert_eq!(answered_then_closed(&mut s), 400, "{body:?}");
    }
    // A size that fits u64 but not the route: refused before it is read.
    let mut s = send(
        &hub,
        b"POST /events HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffff\r\nabc",
    );
    assert_eq!(answered_then_closed(&mut s), 413);
    unharmed(&hub, 0);
}

#[test]
fn malformed_heads_are_refused() {
    let hub = Hub::start(&[]);
    for raw in [
        &b"GET /events?topic=a\rb HTTP/1.1\r\nHost: localhost\r\n\r\n"[..],
        b"GET /events?topic=a\nb HTTP/1.1\r\nHost: localhost\r\n\r\n",
        b"GET /events\x00 HTTP/1.1\r\nHost: localhost\r\n\r\n",
        b"GET /ev\xc3\xa9nts HTTP/1.1\r\nHost: localhost\r\n\r\n",
        b"GET /events HTTP/1.1\r\nHost: localhost\r\nX-Bad: a\x7fb\r\n\r\n",
        b"GET /events HTTP/1.1\r\nHost: localhost\r\nX-Bad: caf\xc3\xa9\r\n\r\n",
        b"GET /events HTTP/1.1\r\nHost: localhost\r\nX-Bad : v\r\n\r\n",
        b"GET /events HTTP/1.1\r\nHost: localhost\r\n folded: v\r\n\r\n",
        b"GET /events HTTP/1.1\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n",
        b"GARBAGE\r\n\r\n",
    ] {
        let mut s = send(&hub, raw);
        assert_eq!(
            answered_then_closed(&mut s),
            400,
            "{:?}",
            String::from_utf8_lossy(raw)
        );
    }
    let mut s = send(&hub, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
    assert_eq!(answered_then_closed(&mut s), 505);
    unharmed(&hub, 0);
}

#[test]
fn topics_and_events_with_control_characters_are_refused() {
    let hub = Hub::start(&[]);
    for q in [
        "topic=a%0D%0Ab",
        "topic=a%00",
        "topic=%1B%5B31m",
        "event=x%0Adata:%20injected",
        "event=%7F",
        "topic=%C2%85",
        "topic=%E2%80",
    ] {
        let r = hub.post(&format!("/events?{q}"), b"x", "");
        assert_eq!(r.status, 400, "{q}");
        let s = hub.try_subscribe(&format!("/events?{q}"), "");
        let want = if q.starts_with("event") { 200 } else { 400 };
        assert_eq!(s.head.status, want, "subscribe {q}");
    }
    unharmed(&hub, 0);
}

#[test]
fn a_head_that_never_completes_is_dropped_after_10_seconds() {
    let hub = Hub::start(&[]);
    let started = Instant::now();
    let mut idle = send(&hub, b"GET /events HTTP/1.1\r\nHost: localhost\r\n");
    idle.set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    // One that dribbles a byte a second never gets past the same deadline.
    let mut dribble = send(&hub, b"GET /events HTTP/1.1\r\n");
    let dribbler = thread::spawn(move || {
        for _ in 0..14 {
            if dribble.write_all(b"X").is_err() {
                return (dribble, true);
            }
            thread::sleep(Duration::from_secs(1));
        }
        (dribble, false)
    });
    assert_eq!(answered_then_closed(&mut idle), 408);
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(9) && took < Duration::from_secs(12),
        "{took:?}"
    );
    let (mut dribble, _) = dribbler.join().unwrap();
    dribble
        .set_read_timeout(Some(Duration::from_secs(1)))
        .unwrap();
    let mut b = Vec::new();
    let _ = dribble.read_to_end(&mut b);
    assert!(
        String::from_utf8_lossy(&b).starts_with("HTTP/1.1 408 "),
        "{:?}",
        String::from_utf8_lossy(&b)
    );
    unharmed(&hub, 0);
}

/// The largest buffer TCP may give a socket (the third field of
/// `/proc/sys/net/ipv4/tcp_wmem` or `tcp_rmem`).
fn kernel_buffer_max(name: &str) -> usize {
    std::fs::read_to_string(format!("/proc/sys/net/ipv4/{name}"))
        .ok()
        .and_then(|s| s.split_whitespace().nth(2)?.parse().ok())
        .unwrap_or(64 << 20)
}

#[test]
fn heads_over_16_kib_or_with_10000_fields_are_431() {
    let hub = Hub::start(&[]);
    let long = format!(
        "GET /events HTTP/1.1\r\nHost: localhost\r\nX-Long: {}\r\n\r\n",
        "a".repeat(20 * 1024)
    );
    let mut s = send(&hub, long.as_bytes());
    assert_eq!(answered_then_closed(&mut s), 431);
    // A line that never ends is cut off at the cap too, not buffered.
    let mut s = hub.connect();
    s.write_all(b"GET /events HTTP/1.1\r\nX: ").unwrap();
    // The kernel alone may take a send and a receive buffer of it before the
    // hub has even looked (4 MiB and more with autotuning): only more than
    // both shows that the hub kept reading.
    let buffers = kernel_buffer_max("tcp_wmem") + kernel_buffer_max("tcp_rmem");
    let chunk = vec![b'a'; 64 * 1024];
    let mut written = 0;
    while written <= buffers && s.write_all(&chunk).is_ok() {
        written += chunk.len();
    }
    assert!(
        written <= buffers,
        "the hub kept reading a header of {written} bytes"
    );
    let fields: String = (0..10_000).map(|i| format!("X-{i}: v\r\n")).collect();
    let mut s = hub.connect();
    let _ =
        s.write_all(format!("GET /events HTTP/1.1\r\nHost: localhost\r\n{fields}\r\n").as_bytes());
    let r = read_response(&mut s).expect("answered");
    assert_eq!(r.status, 431);
    // 101 small fields fit in 16 KiB but are too many.
    let fields: String = (0..101).map(|i| format!("X-{i}: v\r\n")).collect();
    let mut s = send(
        &hub,
        format!("GET /healthz HTTP/1.1\r\nHost: localhost\r\n{fields}\r\n").as_bytes(),
    );
    assert_eq!(answered_then_closed(&mut s), 431);
    let usage = hub.usage();
    assert!(usage.rss_kib < 64 * 1024, "RSS {} KiB", usage.rss_kib);
    unharmed(&hub, 0);
}

fn percentile(mut v: Vec<Duration>, p: f64) -> Duration {
    v.sort();
    v[((v.len() as f64 * p).ceil() as usize).min(v.len()) - 1]
}

#[test]
fn five_hundred_slow_connections_do_not_delay_anyone() {
    let hub = Hub::start(&[]);
    let slow: Vec<TcpStream> = (0..500)
        .map(|i| {
            send(
                &hub,
                if i % 2 == 0 {
                    &b"GET /events HTTP/1.1\r\nHost: localhost\r\n"[..]
                } else {
                    &b"POST /events HTTP/1.1\r\nHost: localhost\r\nContent-Length: 100\r\n\r\nab"[..]
                },
            )
        })
        .collect();
    assert!(poll(Duration::from_secs(5), || hub
        .metric("ssehub_connections")
        >= 500));
    let mut watcher = hub.subscribe("/events?topic=w", "");
    watcher.next_block();
    let mut publish = Vec::new();
    let mut subscribe = Vec::new();
    for i in 0..100 {
        let t = Instant::now();
        hub.publish("w", &i.to_string());
        publish.push(t.elapsed());
        assert_eq!(watcher.next_event().data, i.to_string());
        if i % 5 == 0 {
            let t = Instant::now();
            let mut s = hub.subscribe("/events?topic=none", "");
            s.next_block();
            subscribe.push(t.elapsed());
        }
    }
    let (p99p, p99s) = (percentile(publish, 0.99), percentile(subscribe, 0.99));
    eprintln!("with 500 slow connections: publish p99 {p99p:?}, subscribe p99 {p99s:?}");
    assert!(p99p < Duration::from_secs(1), "publish p99 {p99p:?}");
    assert!(p99s < Duration::from_secs(1), "subscribe p99 {p99s:?}");
    drop(slow);
    unharmed(&hub, 100);
}

#[test]
fn two_thousand_subscribers_at_the_same_instant_all_get_a_head() {
    let hub = Arc::new(Hub::start(&[]));
    const THREADS: usize = 8;
    const EACH: usize = 250;
    let barrier = Arc::new(Barrier::new(THREADS));
    let workers: Vec<_> = (0..THREADS)
        .map(|_| {
            let (hub, barrier) = (hub.clone(), barrier.clone());
            thread::spawn(move || {
                let mut socks: Vec<TcpStream> = Vec::with_capacity(EACH);
                barrier.wait();
                for _ in 0..EACH {
                    let mut s = hub.connect();
                    s.write_all(b"GET /events HTTP/1.1\r\nHost: localhost\r\n\r\n")
                        .unwrap();
                    socks.push(s);
                }
                socks
                    .into_iter()
                    .map(|mut s| crate::harness::read_head(&mut s).map(|r| (r.status, s)))
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut ok = 0;
    let mut streams = Vec::new();
    for w in workers {
        for r in w.join().unwrap() {
            let (status, s) = r.expect("a response head within the read timeout");
            assert_eq!(status, 200);
            ok += 1;
            streams.push(s);
        }
    }
    assert_eq!(ok, THREADS * EACH);
    assert_eq!(hub.metric("ssehub_subscribers"), (THREADS * EACH) as u64);
    drop(streams);
    assert!(poll(Duration::from_secs(10), || hub
        .metric("ssehub_subscribers")
        == 0));
    unharmed(&hub, 0);
}

#[test]
fn running_out_of_file_descriptors_refuses_then_recovers() {
    let hub = Hub::start_with(
        &[],
        Start {
            open_files: Some(256),
            ..Start::default()
        },
    );
    let (admitted, refused, closed) = crate::harness::subscribe_many(&hub, 400);
    eprintln!(
        "open-file limit 256: {} admitted, {refused} refused (503), {closed} closed",
        admitted.len()
    );
    assert!(admitted.len() > 50, "only {} admitted", admitted.len());
    assert_eq!(admitted.len() + refused, 400, "{closed} closed unanswered");
    assert!(refused > 0);
    // Publishing still works while full.
    assert_eq!(hub.post("/events", b"full", "").status, 200);
    drop(admitted);
    // Out of the registry, and their threads gone with their descriptors
    // (stream threads run at the lowest priority: on a busy machine that
    // takes a while).
    assert!(poll(Duration::from_secs(20), || hub
        .metric("ssehub_subscribers")
        == 0
        && hub.metric("ssehub_connections") <= 1));
    let again: Vec<_> = (0..100).map(|_| hub.subscribe("/events", "")).collect();
    drop(again);
    unharmed(&hub, 1);
}

/// SO_LINGER 0: the close sends a reset instead of a FIN.
fn reset(s: &TcpStream) {
    socket2::SockRef::from(s)
        .set_linger(Some(Duration::ZERO))
        .unwrap()
}

#[test]
fn twenty_thousand_connect_close_cycles_leak_nothing() {
    let hub = Arc::new(Hub::start(&[]));
    let warm: Vec<_> = (0..50).map(|_| hub.subscribe("/events", "")).collect();
    drop(warm);
    assert!(poll(Duration::from_secs(5), || hub
        .metric("ssehub_subscribers")
        == 0));
    let settle = |hub: &Hub| {
        poll(Duration::from_secs(10), || {
            hub.metric("ssehub_connections") <= 1 && hub.usage().threads <= 6
        })
    };
    assert!(settle(&hub));
    let before = hub.usage();
    let workers: Vec<_> = (0..4)
        .map(|w| {
            let hub = hub.clone();
            thread::spawn(move || {
                for i in 0..5_000 {
                    let Ok(mut s) = TcpStream::connect(hub.addr) else {
                        continue;
                    };
                    match (i + w) % 4 {
                        // Reset at once.
                        0 => reset(&s),
                        // Reset in the middle of a head.
                        1 => {
                            let _ = s.write_all(b"GET /events HTTP/1.1\r\nHo");
                            reset(&s);
                        }
                        // A whole subscription, then a reset.
                        2 => {
                            let _ = s.write_all(b"GET /events HTTP/1.1\r\nHost: localhost\r\n\r\n");
                            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                            let mut b = [0u8; 64];
                            let _ = s.read(&mut b);
                            reset(&s);
                        }
                        // Closed (FIN) in the middle of a head.
                        _ => {
                            let _ = s.write_all(b"POST /events HTTP/1.1\r\nContent-Len");
                        }
                    }
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    assert!(poll(Duration::from_secs(5), || hub
        .metric("ssehub_subscribers")
        == 0));
    // Last, so that no request of ours is still being served when the
    // usage is read.
    assert!(
        settle(&hub),
        "connections {} usage {:?}",
        hub.metric("ssehub_connections"),
        hub.usage()
    );
    let after = hub.usage();
    eprintln!("20,000 cycles: before {before:?}, after {after:?}");
    assert!(after.fds <= before.fds, "fds {before:?} -> {after:?}");
    assert!(
        after.threads <= before.threads,
        "threads {before:?} -> {after:?}"
    );
    assert!(
        after.rss_kib < before.rss_kib + 8 * 1024,
        "RSS grew {before:?} -> {after:?}"
    );
    unharmed(&hub, 0);
}

/// Refusal lines on stderr, and how many more they say went unlogged.
fn refusal_lines(log: &str) -> (u64, u64) {
    let lines: Vec<&str> = log.lines().filter(|l| l.contains(" refused ")).collect();
    let unlogged = lines
        .iter()
        .filter_map(|l| {
            let (_, tail) = l.rsplit_once(" (")?;
            tail.strip_suffix(" similar refusals not logged)")?
                .parse::<u64>()
                .ok()
        })
        .sum();
    (lines.len() as u64, unlogged)
}

/// stderr is written synchronously: a flood of bad requests must not be a
/// flood of log lines (a full disk, or every thread waiting on a full
/// pipe). A few lines, then one a second, each saying how many it stands
/// for; the counter has every refusal.
#[test]
fn a_flood_of_bad_requests_logs_a_few_lines_that_add_up() {
    let hub = Arc::new(Hub::start(&[]));
    const CONNECTIONS: usize = 4;
    const EACH: usize = 500;
    let bad = [
        ("GET /nope HTTP/1.1\r\nHost: localhost\r\n\r\n", 404),
        ("PUT /events HTTP/1.1\r\nHost: localhost\r\n\r\n", 405),
        (
            "GET /events?topic=%00 HTTP/1.1\r\nHost: localhost\r\n\r\n",
            400,
        ),
        ("GET /healthz HTTP/1.1\r\nHost: evil.example\r\n\r\n", 403),
    ];
    let started = Instant::now();
    let flooders: Vec<_> = (0..CONNECTIONS)
        .map(|c| {
            let hub = hub.clone();
            thread::spawn(move || {
                let mut s = hub.connect();
                let requests: String = (0..EACH).map(|i| bad[(i + c) % bad.len()].0).collect();
                s.write_all(requests.as_bytes()).unwrap();
                for i in 0..EACH {
                    let r = read_response(&mut s).expect("an answer");
                    assert_eq!(r.status, bad[(i + c) % bad.len()].1);
                }
            })
        })
        .collect();
    // Responsive while it lasts.
    hub.canary();
    for f in flooders {
        f.join().unwrap();
    }
    let took = started.elapsed();
    let total = (CONNECTIONS * EACH) as u64;
    assert_eq!(hub.metric("ssehub_requests_refused_total"), total);
    let (lines, _) = refusal_lines(&hub.log());
    eprintln!("{total} refusals in {took:?}: {lines} log lines");
    assert!(lines < 10, "{lines} lines in {took:?}:\n{}", hub.log());
    // Once a line is due again it tells how many went unlogged: lines and
    // the counts they give add up to the counter.
    let adds_up = poll(Duration::from_secs(5), || {
        assert_eq!(hub.get("/nope").status, 404);
        poll(Duration::from_millis(100), || {
            let (lines, unlogged) = refusal_lines(&hub.log());
            lines + unlogged == hub.metric("ssehub_requests_refused_total")
        })
    });
    assert!(
        adds_up,
        "{:?} for {total}+:\n{}",
        refusal_lines(&hub.log()),
        hub.log()
    );
    unharmed(&hub, 1);
}

/// A stderr nobody reads (its pipe full) holds up no connection: log lines
/// past the queue are dropped, and counted once stderr is read again.
#[test]
fn a_stderr_nobody_reads_holds_up_no_one() {
    let mut hub = Hub::start_with(
        &[],
        Start {
            env: vec![("RUST_LOG", "debug")],
            pause_stderr: true,
            ..Start::default()
        },
    );
    // Each stream logs as it opens and as it closes (at debug): 3,000 of
    // them write far more than a pipe holds.
    for _ in 0..3000 {
        let mut s = hub.subscribe("/events?topic=t", "");
        s.next_block();
        s.close();
    }
    let mut sub = hub.subscribe("/events?topic=t", "");
    sub.next_block();
    hub.publish("t", "still here");
    assert_eq!(sub.next_event().data, "still here");
    hub.read_stderr_again();
    assert!(
        hub.wait_log(
            "log lines dropped: stderr was not read",
            Duration::from_secs(10)
        ),
        "{}",
        hub.log()
    );
}
