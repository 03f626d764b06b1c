//! `GET /events`: head first, `retry:` with jitter, topic filters,
//! heartbeats, and dead clients released.

use std::io::Read;
use std::time::{Duration, Instant};

use crate::harness::{poll, Hub};

#[test]
fn head_arrives_at_once_then_a_retry_line() {
    let hub = Hub::start(&["--retry-ms", "2000"]);
    let started = Instant::now();
    let mut s = hub.connect();
    use std::io::Write;
    s.write_all(b"GET /events HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();
    let mut got = Vec::new();
    let mut b = [0u8; 1];
    while !got.ends_with(b"\r\n\r\n") {
        assert_eq!(s.read(&mut b).unwrap(), 1);
        got.push(b[0]);
    }
    assert!(started.elapsed() < Duration::from_secs(2));
    // The connection ends with the stream, and says so; Date as on every
    // response (RFC 9110 §6.6.1).
    let got = String::from_utf8(got).unwrap();
    let (start, rest) = got.split_once("Date: ").expect("a Date field");
    let (date, rest) = rest.split_once("\r\n").unwrap();
    assert_eq!(
        start,
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n"
    );
    let date = httpdate::parse_http_date(date).expect("an HTTP date");
    let skew = date
        .duration_since(std::time::SystemTime::now())
        .unwrap_or_else(|e| e.duration());
    assert!(skew < Duration::from_secs(5), "Date {skew:?} off");
    assert_eq!(
        rest,
        "Content-Type: text/event-stream\r\nCache-Control: no-cache\r\nX-Accel-Buffering: no\r\n\r\n"
    );
    let mut sub = crate::harness::Sub::open_after_head(s);
    let first = sub.next_block();
    let ms: u64 = first
        .strip_prefix("retry: ")
        .and_then(|r| r.strip_suffix("\n\n"))
        .expect("retry line first")
        .parse()
        .unwrap();
    assert!((2000..=3000).contains(&ms), "retry {ms}");
}

#[test]
fn retry_is_jittered_per_stream() {
    let hub = Hub::start(&["--retry-ms", "10000"]);
    let retries: Vec<u64> = (0..8)
        .map(|_| {
            let mut sub = hub.subscribe("/events", "");
            sub.next_event().retry.expect("retry")
        })
        .collect();
    assert!(
        retries.iter().all(|r| (10000..=15000).contains(r)),
        "{retries:?}"
    );
    assert!(
        retries.iter().any(|r| *r != retries[0]),
        "no jitter: {retries:?}"
    );
}

#[test]
fn topics_filter_and_repeat() {
    let hub = Hub::start(&[]);
    let mut ab = hub.subscribe("/events?topic=a&topic=b", "");
    let mut all = hub.subscribe("/events", "");
    ab.next_block();
    all.next_block();
    for t in ["a", "c", "b"] {
        hub.publish(t, t);
    }
    assert_eq!(ab.next_event().data, "a");
    assert_eq!(ab.next_event().data, "b");
    for t in ["a", "c", "b"] {
        assert_eq!(all.next_event().data, t);
    }
}

#[test]
fn topics_are_percent_decoded() {
    let hub = Hub::start(&[]);
    let mut sub = hub.subscribe("/events?topic=caf%C3%A9+bar", "");
    sub.next_block();
    let r = hub.post("/events?topic=caf%C3%A9%20bar", b"x", "");
    assert_eq!(crate::harness::json_field(&r.text(), "topic"), "café bar");
    assert_eq!(sub.next_event().data, "x");
}

#[test]
fn idle_streams_get_heartbeats() {
    let hub = Hub::start(&["--heartbeat", "1"]);
    let mut sub = hub.subscribe("/events", "");
    sub.next_block();
    let started = Instant::now();
    assert_eq!(sub.next_block(), ":\n\n");
    let waited = started.elapsed();
    assert!(
        waited > Duration::from_millis(700) && waited < Duration::from_millis(2500),
        "{waited:?}"
    );
    assert_eq!(sub.next_block(), ":\n\n");
}

#[test]
fn vanished_clients_are_released_at_once() {
    // SPEC allows two heartbeats; the hub notices a closed connection at
    // once, so even with the default 30 s heartbeat this takes well under 1 s.
    let hub = Hub::start(&[]);
    let baseline = hub.usage();
    let subs: Vec<_> = (0..50).map(|_| hub.subscribe("/events", "")).collect();
    assert_eq!(hub.metric("ssehub_subscribers"), 50);
    let open = hub.usage();
    assert!(open.threads >= baseline.threads + 50, "{open:?}");
    let closed_at = Instant::now();
    for s in subs {
        s.close();
    }
    assert!(
        poll(Duration::from_secs(2), || hub.metric("ssehub_subscribers")
            == 0),
        "subscribers left: {}",
        hub.metric("ssehub_subscribers")
    );
    assert!(
        poll(Duration::from_secs(1), || {
            let u = hub.usage();
            u.threads <= baseline.threads && u.fds <= baseline.fds
        }),
        "threads/fds not released: baseline {baseline:?}, now {:?}",
        hub.usage()
    );
    assert!(closed_at.elapsed() < Duration::from_secs(3));
}

#[test]
fn a_client_that_resets_is_released_too() {
    let hub = Hub::start(&[]);
    let sub = hub.subscribe("/events", "");
    // SO_LINGER 0: close sends RST instead of FIN.
    socket2::SockRef::from(&sub.stream)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(sub);
    assert!(poll(Duration::from_secs(2), || hub
        .metric("ssehub_subscribers")
        == 0));
}

#[test]
fn http10_subscribers_get_an_unchunked_stream_that_closes() {
    let hub = Hub::start(&[]);
    use std::io::Write;
    let mut s = hub.connect();
    s.write_all(b"GET /events?topic=t HTTP/1.0\r\n\r\n")
        .unwrap();
    let mut sub = crate::harness::Sub::open(s);
    assert_eq!(sub.head.status, 200);
    assert_eq!(sub.head.header("transfer-encoding"), None);
    assert_eq!(sub.head.header("connection"), Some("close"));
    sub.next_block();
    let id = hub.publish("t", "old client");
    assert_eq!(sub.next_block(), format!("id: {id}\ndata: old client\n\n"));
}

#[test]
fn a_peer_that_vanishes_silently_is_released_within_two_heartbeats() {
    let Some(net) = crate::netns::TestNet::create() else {
        return;
    };
    let hub = Hub::start_with(
        &["--heartbeat", "1", "--allow-anonymous-publish"],
        crate::harness::Start {
            bind: Some(std::net::SocketAddr::new(net.host_ip, 0)),
            ..Default::default()
        },
    );
    let s = net.connect_from_inside(hub.addr);
    use std::io::Write;
    (&s).write_all(b"GET /events HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();
    let mut sub = crate::harness::Sub::open(s);
    sub.next_block();
    assert_eq!(hub.metric("ssehub_subscribers"), 1);
    // No FIN, no RST: the client's packets simply stop.
    net.cut();
    let cut_at = Instant::now();
    assert!(
        poll(Duration::from_secs(6), || hub.metric("ssehub_subscribers")
            == 0),
        "a silent peer still held its slot after {:?}",
        cut_at.elapsed()
    );
    assert!(
        cut_at.elapsed() < Duration::from_secs(4),
        "{:?}",
        cut_at.elapsed()
    );
}
