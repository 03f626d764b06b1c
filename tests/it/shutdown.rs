//! SIGINT/SIGTERM: streams end cleanly and the process exits 0 in time.

use std::time::{Duration, Instant};

use std::io::Write;

use crate::harness::{read_response, Hub, Start, Sub};

#[test]
fn sigterm_with_a_thousand_streams_exits_0_within_2_seconds() {
    let mut hub = Hub::start(&[]);
    let mut subs: Vec<_> = (0..1000).map(|_| hub.subscribe("/events", "")).collect();
    for s in &mut subs {
        s.next_block();
    }
    let started = Instant::now();
    hub.signal(libc::SIGTERM);
    let status = hub.exits_within(Duration::from_secs(2));
    let took = started.elapsed();
    assert_eq!(status.code(), Some(0));
    let clean = subs
        .iter_mut()
        .map(|s| s.ends_cleanly(Duration::from_secs(1)))
        .filter(|clean| *clean)
        .count();
    assert_eq!(clean, 1000, "streams without the zero chunk");
    assert!(took < Duration::from_secs(2), "{took:?}");
}

/// Fills a subscriber that never reads, so its thread blocks in a write
/// and the hub needs its whole grace period to exit.
pub fn stuck_subscriber(hub: &Hub) -> crate::harness::Sub {
    let stuck = hub.subscribe("/events", "");
    socket2::SockRef::from(&stuck.stream)
        .set_recv_buffer_size(4096)
        .unwrap();
    let big = "x".repeat(900_000);
    for _ in 0..8 {
        hub.publish("t", &big);
    }
    stuck
}

#[test]
fn sigint_stops_accepting_at_once() {
    let mut hub = Hub::start(&["--max-event-bytes", "1000000"]);
    let addr = hub.addr;
    let stuck = stuck_subscriber(&hub);
    hub.signal(libc::SIGINT);
    assert!(hub.wait_log("shutting down", Duration::from_secs(2)));
    // Still running (its stuck stream has the grace period to end), but
    // no longer accepting.
    assert!(
        crate::harness::poll(Duration::from_millis(500), || {
            std::net::TcpStream::connect(addr).is_err()
        }),
        "still accepting after SIGINT"
    );
    assert!(
        hub.running(),
        "exited before the grace period: nothing was tested"
    );
    assert_eq!(hub.exits_within(Duration::from_secs(2)).code(), Some(0));
    drop(stuck);
}

#[test]
fn a_second_signal_exits_at_once() {
    // The stuck stream makes the first signal wait out the grace period;
    // the second must not.
    let mut hub = Hub::start_with(&["--max-event-bytes", "1000000"], Start::default());
    let stuck = stuck_subscriber(&hub);
    hub.signal(libc::SIGTERM);
    assert!(hub.wait_log("shutting down", Duration::from_secs(2)));
    let started = Instant::now();
    hub.signal(libc::SIGINT);
    let status = hub.exits_within(Duration::from_secs(1));
    assert!(started.elapsed() < Duration::from_millis(500));
    assert_eq!(status.code(), Some(130), "{}", hub.log());
    drop(stuck);
}

/// Publishes an empty event on `conn`, kept alive, until the hub answers
/// that it is shutting down (its registry closed); false if it never does.
/// A connection the hub drops fails with the hub's log (it exits once its
/// grace period is over).
pub fn until_closed(hub: &Hub, conn: &mut std::net::TcpStream) -> bool {
    crate::harness::poll(Duration::from_secs(2), || {
        let answer = conn
            .write_all(
                b"POST /events?topic=probe HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\n\r\n",
            )
            .and_then(|()| read_response(conn));
        let r = answer.unwrap_or_else(|e| panic!("publishing during shutdown: {e}\n{}", hub.log()));
        assert!(matches!(r.status, 200 | 503), "{r:?}");
        r.status == 503
    })
}

/// SPEC "Shutdown": clients reconnect elsewhere. A subscription that
/// reaches the hub while it shuts down, on a connection it accepted before
/// (a proxy's kept-alive upstream connection), gets a stream that gives
/// `retry:` and ends at once, as when replay is unavailable: EventSource
/// retries that, and gives up for good after a 503.
#[test]
fn a_subscribe_during_shutdown_is_told_to_retry() {
    let mut hub = Hub::start(&["--max-event-bytes", "1000000"]);
    let stuck = stuck_subscriber(&hub);
    let mut conn = hub.connect();
    hub.signal(libc::SIGTERM);
    assert!(until_closed(&hub, &mut conn), "publishing never refused");
    assert!(
        hub.running(),
        "exited before the subscribe: nothing was tested"
    );
    conn.write_all(b"GET /events?topic=t HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();
    let mut sub = Sub::open(conn);
    assert_eq!(sub.head.status, 200, "{:?}", sub.head);
    assert_eq!(sub.head.header("content-type"), Some("text/event-stream"));
    let first = sub.next_block();
    assert!(
        first.starts_with("retry: ") && first.ends_with("\n\n"),
        "{first:?}"
    );
    assert!(sub.ends_cleanly(Duration::from_secs(1)), "{}", sub.tail());
    assert_eq!(hub.exits_within(Duration::from_secs(2)).code(), Some(0));
    drop(stuck);
}
